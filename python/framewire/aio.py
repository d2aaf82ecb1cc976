"""framewire's client for asyncio: the calls of :class:`framewire.Client`,
as coroutines on the caller's event loop.

::

    import asyncio
    import framewire

    async def main():
        async with framewire.AsyncClient("127.0.0.1:9909", key_file="key") as c:
            done = await c.run("uname -a", check=True)
            print(done.stdout.decode())

    asyncio.run(main())

Each call runs on framewire's own threads (the Rust client, no GIL held
while it works) and its result is handed to the loop: the loop is never
blocked. A client is one connection, so its calls take turns; to run
many at once, use many clients (connections are cheap)::

    clients = [framewire.AsyncClient(addr) for _ in range(16)]
    results = await asyncio.gather(*(clients[i % 16].run("true") for i in range(1000)))

A call cancelled part-way (``asyncio.wait_for`` timing out, a task
cancelled) closes its client's connection, since the conversation
stopped in the middle; later calls on it raise
:class:`framewire.ConnectionError`.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, List, Mapping, Optional

from . import _shared
from ._native import AsyncClient as _NativeAsyncClient
from ._shared import PathLike, Progress

__all__ = ["AsyncClient"]


class AsyncClient:
    """A connection to a framewire server at ``addr`` (``host:port``),
    made by the first call (or :meth:`connect`, or ``async with``).

    ``key_file`` and ``connect_timeout`` as for :class:`framewire.Client`.
    Its methods are those of :class:`framewire.Client`, each a coroutine.
    """

    def __init__(
        self,
        addr: str,
        *,
        key_file: Optional[PathLike] = None,
        connect_timeout: Optional[float] = 30.0,
        identity: Optional[PathLike] = None,
        passphrase: Optional[str] = None,
        known_hosts: Optional[PathLike] = None,
        accept_new: bool = False,
        config: Optional[PathLike] = None,
    ) -> None:
        self.addr = addr
        self._native = _NativeAsyncClient(addr, **_shared.auth_args(key_file, connect_timeout, identity, passphrase, known_hosts, accept_new, config))

    async def connect(self) -> "AsyncClient":
        """Connects now, rather than at the first call: errors
        (:class:`framewire.ConnectionError`,
        :class:`framewire.AuthenticationError`) come here."""
        await self._native.connect()
        return self

    async def run(
        self,
        cmd: str,
        check: bool = False,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[bytes] = None,
        pty: bool = False,
    ) -> "subprocess.CompletedProcess[bytes]":
        """As :meth:`framewire.Client.run`."""
        native = await self._native.run(cmd, timeout, _shared.env_args(env), stdin, _shared.pty_args(pty))
        return _shared.run_result(cmd, native, check, timeout)

    async def put(
        self,
        local: PathLike,
        remote: str = "",
        recursive: bool = False,
        progress: Optional[Progress] = None,
        delete: bool = False,
    ) -> Dict[str, Any]:
        """As :meth:`framewire.Client.put` (``progress`` is called from
        framewire's threads, not the loop's: keep it short, or hand over
        with ``loop.call_soon_threadsafe``)."""
        local, remote = _shared.put_args(local, remote, recursive, delete)
        if recursive:
            stats = await self._native.copy_tree(True, local, remote, delete, _shared.JOBS, progress)
            return _shared.tree_stats(stats, f"put {local}")
        return _shared.file_stats(await self._native.put(local, remote, progress))

    async def get(
        self,
        remote: str,
        local: PathLike = ".",
        recursive: bool = False,
        progress: Optional[Progress] = None,
        delete: bool = False,
    ) -> Dict[str, Any]:
        """As :meth:`framewire.Client.get` (``progress`` as for
        :meth:`put`)."""
        remote, local = _shared.get_args(remote, local, recursive, delete)
        if recursive:
            stats = await self._native.copy_tree(False, remote, local, delete, _shared.JOBS, progress)
            return _shared.tree_stats(stats, f"get {remote}")
        return _shared.file_stats(await self._native.get(remote, local, progress))

    async def ls(self, path: str = "", recursive: bool = False) -> List[Dict[str, Any]]:
        """As :meth:`framewire.Client.ls`."""
        return json.loads(await self._native.ls(path, recursive))

    async def stat(self, path: str) -> Dict[str, Any]:
        """As :meth:`framewire.Client.stat`."""
        return json.loads(await self._native.stat(path))

    async def mkdir(self, path: str, parents: bool = False) -> bool:
        """As :meth:`framewire.Client.mkdir`."""
        return await self._native.mkdir(path, parents)

    async def remove(self, path: str, recursive: bool = False) -> bool:
        """As :meth:`framewire.Client.remove`."""
        return await self._native.remove(path, recursive)

    async def rename(self, src: str, dst: str, force: bool = False) -> None:
        """As :meth:`framewire.Client.rename`."""
        await self._native.rename(src, dst, force)

    async def close(self) -> None:
        """Closes the connection once a call under way ends; later calls
        raise :class:`framewire.ConnectionError`."""
        await self._native.close()

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
