from typing import Any, Awaitable, Callable, Iterator, List, Optional, Tuple

__version__: str

_Progress = Optional[Callable[[int, int], Any]]
_Pty = Optional[Tuple[str, int, int]]
_Env = Optional[List[Tuple[str, str]]]
_RunResult = Tuple[int, bytes, bytes, str]
_FileStats = Tuple[int, int, str, int]
_TreeStats = Tuple[int, int, int, int, int, int, List[Tuple[str, str, str, Optional[str]]]]

class Client:
    def __init__(
        self,
        addr: str,
        key_file: Optional[str] = None,
        connect_timeout: Optional[float] = 30.0,
        identity: Optional[str] = None,
        passphrase: Optional[str] = None,
        known_hosts: Optional[str] = None,
        accept_new: bool = False,
        config: Optional[str] = None,
    ) -> None: ...
    def run(
        self,
        command: str,
        timeout: Optional[float] = None,
        env: _Env = None,
        stdin: Optional[bytes] = None,
        pty: _Pty = None,
    ) -> _RunResult: ...
    def put(self, local: str, remote: str, progress: _Progress = None) -> _FileStats: ...
    def get(self, remote: str, local: str, progress: _Progress = None) -> _FileStats: ...
    def copy_tree(
        self, put: bool, source: str, dest: str, delete: bool = False, jobs: Optional[int] = None, progress: _Progress = None
    ) -> _TreeStats: ...
    def ls(self, path: str, recursive: bool = False) -> str: ...
    def stat(self, path: str) -> str: ...
    def mkdir(self, path: str, parents: bool = False) -> bool: ...
    def remove(self, path: str, recursive: bool = False) -> bool: ...
    def rename(self, src: str, dst: str, force: bool = False) -> None: ...
    def close(self) -> None: ...

class AsyncClient:
    def __init__(
        self,
        addr: str,
        key_file: Optional[str] = None,
        connect_timeout: Optional[float] = 30.0,
        identity: Optional[str] = None,
        passphrase: Optional[str] = None,
        known_hosts: Optional[str] = None,
        accept_new: bool = False,
        config: Optional[str] = None,
    ) -> None: ...
    def connect(self) -> Awaitable[None]: ...
    def run(
        self,
        command: str,
        timeout: Optional[float] = None,
        env: _Env = None,
        stdin: Optional[bytes] = None,
        pty: _Pty = None,
    ) -> Awaitable[_RunResult]: ...
    def put(self, local: str, remote: str, progress: _Progress = None) -> Awaitable[_FileStats]: ...
    def get(self, remote: str, local: str, progress: _Progress = None) -> Awaitable[_FileStats]: ...
    def copy_tree(
        self, put: bool, source: str, dest: str, delete: bool = False, jobs: Optional[int] = None, progress: _Progress = None
    ) -> Awaitable[_TreeStats]: ...
    def ls(self, path: str, recursive: bool = False) -> Awaitable[str]: ...
    def stat(self, path: str) -> Awaitable[str]: ...
    def mkdir(self, path: str, parents: bool = False) -> Awaitable[bool]: ...
    def remove(self, path: str, recursive: bool = False) -> Awaitable[bool]: ...
    def rename(self, src: str, dst: str, force: bool = False) -> Awaitable[None]: ...
    def close(self) -> Awaitable[None]: ...

class Fleet:
    def __init__(
        self,
        hosts: List[str],
        command: str,
        fanout: int = 64,
        key_file: Optional[str] = None,
        connect_timeout: Optional[float] = 30.0,
        timeout: Optional[float] = None,
        env: _Env = None,
        identity: Optional[str] = None,
        passphrase: Optional[str] = None,
        known_hosts: Optional[str] = None,
        accept_new: bool = False,
        config: Optional[str] = None,
    ) -> None: ...
    def __iter__(self) -> Iterator[Tuple[str, Optional[int], bytes, bytes, str, Optional[str], str, float]]: ...
    def __next__(self) -> Tuple[str, Optional[int], bytes, bytes, str, Optional[str], str, float]: ...
    def close(self) -> None: ...
