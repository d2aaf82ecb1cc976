"""What :class:`framewire.Client` and :class:`framewire.AsyncClient` share:
their arguments made ready for the native calls, and the native results
made into what the methods return or raise."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import _errors

PathLike = Union[str, "os.PathLike[str]"]

#: A progress callback: called with ``(done, total)`` bytes of the copy,
#: at most every 100 ms and once at the end; if it raises, the copy stops
#: (the connection is closed) and its exception is raised.
Progress = Callable[[int, int], Any]

#: Connections a recursive copy runs over, as the CLI's ``--jobs``:
#: ``None`` is the config file's ``jobs`` for the host, or 4.
JOBS = None


def auth_args(
    key_file: Optional[PathLike],
    connect_timeout: Optional[float],
    identity: Optional[PathLike],
    passphrase: Optional[str],
    known_hosts: Optional[PathLike],
    accept_new: bool,
    config: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """How the native clients take their connection options."""
    path = lambda p: None if p is None else os.fspath(p)  # noqa: E731
    return {
        "key_file": path(key_file),
        "connect_timeout": connect_timeout,
        "identity": path(identity),
        "passphrase": passphrase,
        "known_hosts": path(known_hosts),
        "accept_new": accept_new,
        "config": path(config),
    }


def pty_args(pty: bool) -> Optional[Tuple[str, int, int]]:
    """A terminal for ``run(pty=True)``: this side's ``TERM`` (``xterm``
    if none) and the size of this side's terminal (80x24 if none)."""
    if not pty:
        return None
    cols, rows = shutil.get_terminal_size((80, 24))
    return (os.environ.get("TERM") or "xterm", max(1, min(rows, 65535)), max(1, min(cols, 65535)))


def env_args(env: Optional[Mapping[str, str]]) -> Optional[List[Tuple[str, str]]]:
    return sorted(env.items()) if env else None


def run_result(
    cmd: str, native: Tuple[int, bytes, bytes, str], check: bool, timeout: Optional[float]
) -> "subprocess.CompletedProcess[bytes]":
    """A command's result as :func:`subprocess.run` gives it, or the
    error it ended with."""
    code, out, err, how = native
    result = subprocess.CompletedProcess(cmd, code, out, err)
    if how != "exited":
        raise ended(cmd, how, timeout, result)
    if check and code != 0:
        raise _errors.ProcessError(result)
    return result


def ended(cmd: str, how: str, timeout: Optional[float], result: Any) -> _errors.Error:
    """The error of a command the server ended (``result``: what it
    printed until then)."""
    e: _errors.Error
    if how == "timeout":
        limit = f"its timeout of {timeout} s" if timeout is not None else "its host's timeout (the config file's)"
        e = _errors.TimeoutError(f"command {cmd!r} ran past {limit} and was killed")
    elif how == "revoked":
        e = _errors.AuthenticationError(f"command {cmd!r} was killed: the key it ran with was revoked")
    else:
        why = {"shutdown": "the server shut down", "cancelled": "it was cancelled"}.get(how, how)
        e = _errors.ConnectionError(f"command {cmd!r} was killed: {why}")
    e.result = result  # type: ignore[attr-defined]
    return e


def file_stats(native: Tuple[int, int, str, int]) -> Dict[str, Any]:
    size, resumed, blake3, matched = native
    return {"size": size, "resumed": resumed, "matched": matched, "blake3": blake3}


def tree_stats(native: Tuple[Any, ...], what: str) -> Dict[str, Any]:
    """A tree copy's stats, or :class:`framewire.CopyError` if a file
    failed."""
    files, sent, resumed, matched, unchanged, deleted, failed = native
    failures = []
    for path, cls, message, code in failed:
        error = getattr(_errors, cls)(message)
        error.code = code
        failures.append((path, error))
    stats = {
        "files": files,
        "sent": sent,
        "resumed": resumed,
        "matched": matched,
        "unchanged": unchanged,
        "deleted": deleted,
        "failures": failures,
    }
    if failures:
        first = f"{failures[0][0]}: {failures[0][1]}"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise _errors.CopyError(f"{what}: {len(failures)} file(s) failed: {first}{more}", stats, failures)
    return stats


def put_args(local: PathLike, remote: str, recursive: bool, delete: bool) -> Tuple[str, str]:
    if delete and not recursive:
        raise ValueError("delete=True is for recursive copies")
    return os.fspath(local), remote


def get_args(remote: str, local: PathLike, recursive: bool, delete: bool) -> Tuple[str, str]:
    if delete and not recursive:
        raise ValueError("delete=True is for recursive copies")
    return remote, os.fspath(local)
