"""framewire's client for scripts: run commands and move files on a
framewire server, as the ``framewire`` command does.

::

    import framewire

    with framewire.Client("127.0.0.1:9909", key_file="key") as c:
        done = c.run("uname -a", check=True)
        print(done.stdout.decode())
        c.put("report.csv", "in/report.csv")
        c.get("out/result.csv", "result.csv")

Every call blocks until it is done, with the GIL released, so threads
can use several clients at once. A client is one connection: one call at
a time (a second thread's call waits for the first).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Union

from . import _errors
from ._native import Client as _NativeClient

__all__ = ["Client"]

PathLike = Union[str, "os.PathLike[str]"]


class Client:
    """A connection to a framewire server at ``addr`` (``host:port``).

    ``key_file``: the shared key file the server was started with
    (``serve --key-file``); without it the connection is plaintext, for a
    server without a key.
    """

    def __init__(self, addr: str, *, key_file: Optional[PathLike] = None) -> None:
        self.addr = addr
        self._native = _NativeClient(addr, None if key_file is None else os.fspath(key_file))

    def run(
        self,
        cmd: str,
        check: bool = False,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[bytes] = None,
    ) -> "subprocess.CompletedProcess[bytes]":
        """Runs ``cmd`` with the server's shell; returns its exit code and
        everything it printed, as :func:`subprocess.run` with
        ``capture_output=True`` does.

        ``timeout`` (seconds): the server kills the command's process
        group after it, and :class:`framewire.TimeoutError` is raised (its
        ``result`` what the command printed). ``env``: variables set for
        the command. ``stdin``: bytes given as its input (none: its stdin
        is closed at once). ``check``: raise :class:`framewire.ProcessError`
        if it exits with another status than 0.
        """
        variables = sorted(env.items()) if env else None
        code, out, err, timed_out = self._native.run(cmd, timeout, variables, stdin)
        result = subprocess.CompletedProcess(cmd, code, out, err)
        if timed_out:
            e = _errors.TimeoutError(f"command {cmd!r} ran past its timeout of {timeout} s and was killed")
            e.result = result
            raise e
        if check and code != 0:
            raise _errors.ProcessError(result)
        return result

    def put(self, local: PathLike, remote: str, force: bool = False) -> Dict[str, Any]:
        """Uploads the file ``local`` to ``remote``, as ``framewire put``
        does: resumed if an earlier upload was cut, checked end to end by
        BLAKE3, never over an existing file unless ``force``. Returns
        ``{"size", "resumed", "blake3"}``."""
        size, resumed, blake3 = self._native.put(os.fspath(local), remote, force)
        return {"size": size, "resumed": resumed, "blake3": blake3}

    def get(self, remote: str, local: PathLike, force: bool = False) -> Dict[str, Any]:
        """Downloads ``remote`` to the file ``local``, as ``framewire get``
        does (resumed, checked, written under its name only once whole).
        Returns ``{"size", "resumed", "blake3"}``."""
        size, resumed, blake3 = self._native.get(remote, os.fspath(local), force)
        return {"size": size, "resumed": resumed, "blake3": blake3}

    def ls(self, path: str = "", recursive: bool = False) -> List[Dict[str, Any]]:
        """The entries of the directory ``path`` (or of the file), each a
        dict: ``name``, ``kind`` (``file``, ``dir``, ``symlink``...),
        ``size``, ``mtime``, ``mode`` and more (PROTOCOL.md §4.3)."""
        return json.loads(self._native.ls(path, recursive))

    def stat(self, path: str) -> Dict[str, Any]:
        """``path``'s entry, as :meth:`ls` gives entries."""
        return json.loads(self._native.stat(path))

    def mkdir(self, path: str, parents: bool = True) -> bool:
        """Makes the directory ``path`` (and its parents unless
        ``parents=False``); returns whether it was made."""
        return self._native.mkdir(path, parents)

    def remove(self, path: str, recursive: bool = False) -> bool:
        """Removes ``path`` (a directory only with ``recursive``, then with
        all it holds); returns whether something was there."""
        return self._native.remove(path, recursive)

    def rename(self, src: str, dst: str, force: bool = False) -> None:
        """Renames ``src`` to ``dst`` atomically (over an existing file only
        with ``force``)."""
        self._native.rename(src, dst, force)

    def close(self) -> None:
        """Closes the connection; later calls raise
        :class:`framewire.ConnectionError`."""
        self._native.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
