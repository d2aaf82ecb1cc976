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
    server without a key. ``connect_timeout``: seconds to connect and
    finish the handshake (``None``: no limit of our own).

    Calls can be interrupted with Ctrl-C (``KeyboardInterrupt``); the
    connection is then closed, since it stopped part-way. Clients do not
    survive a ``fork()``: make new ones in the child.
    """

    def __init__(
        self,
        addr: str,
        *,
        key_file: Optional[PathLike] = None,
        connect_timeout: Optional[float] = 30.0,
    ) -> None:
        self.addr = addr
        key = None if key_file is None else os.fspath(key_file)
        self._native = _NativeClient(addr, key, connect_timeout)

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
        ``capture_output=True`` does (a command ended by a signal has
        minus that signal as its ``returncode``).

        ``timeout`` (seconds): the server kills the command's process
        group after it, and :class:`framewire.TimeoutError` is raised (its
        ``result`` what the command printed). ``env``: variables set for
        the command, which the server must accept (``serve --accept-env``,
        as sshd's ``AcceptEnv``; a name it refuses raises
        :class:`framewire.PermissionDenied`, the command not run and the
        connection closed). ``stdin``: bytes given as its input (none: its
        stdin is closed at once). ``check``: raise
        :class:`framewire.ProcessError` if it exits with another status
        than 0.
        """
        variables = sorted(env.items()) if env else None
        code, out, err, how = self._native.run(cmd, timeout, variables, stdin)
        result = subprocess.CompletedProcess(cmd, code, out, err)
        if how != "exited":
            raise _ended(cmd, how, timeout, result)
        if check and code != 0:
            raise _errors.ProcessError(result)
        return result

    def put(self, local: PathLike, remote: str) -> Dict[str, Any]:
        """Uploads the file ``local`` to ``remote`` as ``framewire put``
        does: into ``remote`` if it is a directory (or ends with ``/``),
        replacing a file there (the source wins), resumed if an earlier
        upload was cut, checked end to end by BLAKE3, in place only once
        whole. Returns ``{"size", "resumed", "matched", "blake3"}``
        (``matched``: bytes a delta took from the server's older version,
        not sent)."""
        local = os.fspath(local)
        name = os.path.basename(local)
        if remote == "" or remote.endswith("/"):
            remote = remote + name
        else:
            try:
                if self.stat(remote).get("kind") == "dir":
                    remote = remote + "/" + name
            except _errors.NotFound:
                pass
        size, resumed, blake3, matched = self._native.put(local, remote)
        return {"size": size, "resumed": resumed, "matched": matched, "blake3": blake3}

    def get(self, remote: str, local: PathLike = ".") -> Dict[str, Any]:
        """Downloads the file ``remote`` to ``local`` as ``framewire get``
        does: into ``local`` if it is a directory (the current one by
        default), replacing a file there, resumed, checked by BLAKE3,
        under its name only once whole. Returns
        ``{"size", "resumed", "matched", "blake3"}``."""
        local = os.fspath(local)
        if os.path.isdir(local):
            local = os.path.join(local, remote.rstrip("/").rsplit("/", 1)[-1])
        size, resumed, blake3, matched = self._native.get(remote, local)
        return {"size": size, "resumed": resumed, "matched": matched, "blake3": blake3}

    def ls(self, path: str = "", recursive: bool = False) -> List[Dict[str, Any]]:
        """The entries of the directory ``path`` (or of the file), each a
        dict: ``name``, ``kind`` (``file``, ``dir``, ``symlink``...),
        ``size``, ``mtime``, ``mode`` and more (PROTOCOL.md §4.3)."""
        return json.loads(self._native.ls(path, recursive))

    def stat(self, path: str) -> Dict[str, Any]:
        """``path``'s entry, as :meth:`ls` gives entries."""
        return json.loads(self._native.stat(path))

    def mkdir(self, path: str, parents: bool = False) -> bool:
        """Makes the directory ``path`` (with its parents if ``parents``,
        as ``mkdir -p``); returns whether it was made."""
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


def _ended(cmd: str, how: str, timeout: Optional[float], result: Any) -> _errors.Error:
    """The error of a command the server ended (``result``: what it
    printed until then)."""
    e: _errors.Error
    if how == "timeout":
        e = _errors.TimeoutError(f"command {cmd!r} ran past its timeout of {timeout} s and was killed")
    elif how == "revoked":
        e = _errors.AuthenticationError(f"command {cmd!r} was killed: the key it ran with was revoked")
    else:
        why = {"shutdown": "the server shut down", "cancelled": "it was cancelled"}.get(how, how)
        e = _errors.ConnectionError(f"command {cmd!r} was killed: {why}")
    e.result = result  # type: ignore[attr-defined]
    return e
