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
a time (a second thread's call waits for the first). For asyncio, the
same calls as coroutines: :class:`framewire.AsyncClient`.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, List, Mapping, Optional

from . import _shared
from ._native import Client as _NativeClient
from ._shared import PathLike, Progress

__all__ = ["Client"]


class Client:
    """A connection to a framewire server at ``addr`` (``host:port``).

    ``key_file``: the shared key file the server was started with
    (``serve --key-file``). Keys of one's own, for a server with
    ``--authorized-keys`` (PROTOCOL.md §2.3.1), as ssh takes them:
    ``identity``, an OpenSSH private key file (Ed25519), ``passphrase``
    if it is encrypted; with neither ``key_file`` nor ``identity``, the
    agent's keys (``SSH_AUTH_SOCK``) and ``~/.ssh/id_ed25519`` are tried
    if the server requires a key (else the connection is plaintext, for a
    server without keys). The server's host key is checked against
    ``known_hosts`` (default ``~/.ssh/known_hosts``'s framewire
    counterpart, as the CLI's ``--known-hosts``); one not known yet is
    refused unless ``accept_new=True`` records it (nobody is asked: a
    script has no terminal). ``connect_timeout``: seconds to connect and
    finish the handshake (``None``: no limit of our own).

    ``addr`` may be an alias of the CLI's config file (README "The config
    file"): ``config``, else ``$FRAMEWIRE_CONFIG``, else
    ``~/.config/framewire/config.toml``, read as ``framewire`` reads it.
    The alias gives the address and port, the key file (``key_file``
    wins, then the alias's, then ``$FRAMEWIRE_KEY_FILE``, then
    ``[defaults]``), the identity, a directory that relative remote paths
    start from (``/path`` is from the served root), a default ``run``
    timeout, the connections of a recursive copy, compression and a
    bandwidth limit.

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
        identity: Optional[PathLike] = None,
        passphrase: Optional[str] = None,
        known_hosts: Optional[PathLike] = None,
        accept_new: bool = False,
        config: Optional[PathLike] = None,
    ) -> None:
        self.addr = addr
        self._native = _NativeClient(addr, **_shared.auth_args(key_file, connect_timeout, identity, passphrase, known_hosts, accept_new, config))

    def run(
        self,
        cmd: str,
        check: bool = False,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[bytes] = None,
        pty: bool = False,
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
        than 0. ``pty``: run it on a pseudo-terminal, as ``ssh -t`` does
        (``TERM`` and the size of this side's terminal, or ``xterm`` and
        80x24): its stdout and stderr then both come as ``stdout``, and
        ``stdin`` is what is typed.
        """
        native = self._native.run(cmd, timeout, _shared.env_args(env), stdin, _shared.pty_args(pty))
        return _shared.run_result(cmd, native, check, timeout)

    def put(
        self,
        local: PathLike,
        remote: str = "",
        recursive: bool = False,
        progress: Optional[Progress] = None,
        delete: bool = False,
    ) -> Dict[str, Any]:
        """Uploads ``local`` to ``remote`` as ``framewire put`` does.

        A file: into ``remote`` if it is a directory (or ends with ``/``,
        or is empty: the root), replacing a file there (the source wins),
        resumed if an earlier upload was cut, checked end to end by
        BLAKE3, in place only once whole. Returns ``{"size", "resumed",
        "matched", "blake3"}`` (``matched``: bytes a delta took from the
        server's older version, not sent).

        ``recursive=True``: the directory ``local`` as ``put -r`` copies
        it (into ``remote`` as ``remote/NAME``; ``local/`` with a slash:
        its contents), files that are there with the same size and time
        left alone, links, modes and times kept, over 4 connections;
        ``delete=True`` removes what the source lacks, as ``--delete``.
        Returns ``{"files", "sent", "resumed", "matched", "unchanged",
        "deleted", "failures"}``; if a file failed, the others are still
        copied and :class:`framewire.CopyError` is raised, with these
        stats as its ``result``.

        ``progress``: called with ``(done, total)`` bytes, at most every
        100 ms and once at the end (if it raises, the copy stops and the
        exception is raised).
        """
        local, remote = _shared.put_args(local, remote, recursive, delete)
        if recursive:
            stats = self._native.copy_tree(True, local, remote, delete, _shared.JOBS, progress)
            return _shared.tree_stats(stats, f"put {local}")
        return _shared.file_stats(self._native.put(local, remote, progress))

    def get(
        self,
        remote: str,
        local: PathLike = ".",
        recursive: bool = False,
        progress: Optional[Progress] = None,
        delete: bool = False,
    ) -> Dict[str, Any]:
        """Downloads ``remote`` to ``local`` as ``framewire get`` does.

        A file: into ``local`` if it is a directory (the current one by
        default), replacing a file there, resumed, checked by BLAKE3,
        under its name only once whole. Returns ``{"size", "resumed",
        "matched", "blake3"}``.

        ``recursive=True``: the directory ``remote`` as ``get -r`` copies
        it (into ``local`` as ``local/NAME``; ``remote/`` with a slash: its
        contents), with the stats, ``delete`` and errors of
        :meth:`put`. ``progress`` as for :meth:`put`.
        """
        remote, local = _shared.get_args(remote, local, recursive, delete)
        if recursive:
            stats = self._native.copy_tree(False, remote, local, delete, _shared.JOBS, progress)
            return _shared.tree_stats(stats, f"get {remote}")
        return _shared.file_stats(self._native.get(remote, local, progress))

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
