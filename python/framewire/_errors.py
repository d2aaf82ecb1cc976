"""framewire's exceptions: one tree under :class:`Error`.

Framing errors come from :mod:`framewire.framing` (pure Python); the
others from the client, with the message the CLI prints.
"""

from __future__ import annotations

import builtins
import os
from typing import Any, Optional


__all__ = [
    "Error",
    "FramingError",
    "IncompleteFrame",
    "FrameTooLarge",
    "BadHeader",
    "AuthenticationError",
    "ConnectionError",
    "TimeoutError",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "ProcessError",
    "CopyError",
    "ProtocolError",
    "LocalError",
]


class Error(Exception):
    """Every error framewire raises. ``code``: the protocol's error code
    (``not_found``, ``exists``...) where the server gave one."""

    code: Optional[str] = None


class FramingError(Error):
    """A stream that does not hold the frames it should."""


class IncompleteFrame(FramingError):
    """The stream ended inside a frame: ``part`` ("length prefix",
    "header" or "body") had ``got`` of its ``expected`` bytes.

    An end of stream *between* frames is not an error: the receiving
    function returns ``None``.
    """

    def __init__(self, part: str, got: int, expected: int) -> None:
        self.part = part
        self.got = got
        self.expected = expected
        super().__init__(f"the stream ended inside a frame's {part}: {got} of {expected} bytes")


class FrameTooLarge(FramingError):
    """A length over the receiver's limit, refused before anything of it
    was read (so a hostile length cannot make the receiver allocate)."""

    def __init__(self, what: str, length: int, limit: int) -> None:
        self.what = what
        self.length = length
        self.limit = limit
        super().__init__(f"{what} length {length} exceeds the limit of {limit} bytes")


class BadHeader(FramingError):
    """A frame header that is not a UTF-8 JSON object with a non-negative
    integer ``len``: the body's length is unknown, so the stream cannot be
    read past it."""



class AuthenticationError(Error):
    """The server refused this side's key, wants one, or could not prove
    its own (a changed host key, someone in the middle)."""


class ConnectionError(Error, builtins.ConnectionError):
    """No connection could be made, or it was lost. Also a builtin
    :class:`ConnectionError`."""


class TimeoutError(Error, builtins.TimeoutError):
    """Something took longer than it was given: connecting, or a command
    run with ``timeout=`` (then ``result`` is what it printed). Also a
    builtin :class:`TimeoutError`."""

    result: Any = None


class NotFound(Error):
    """The server has no such path."""


class PermissionDenied(Error):
    """The server refused: the file system's permissions, or what this
    key may do."""


class RemoteError(Error):
    """Another refusal by the server; ``code`` names it (``exists``,
    ``is_a_directory``, ``bad_path``...)."""


class ProcessError(Error):
    """A command run with ``check=True`` exited with a status other than
    0: ``result`` is its :class:`subprocess.CompletedProcess`."""

    def __init__(self, result: Any) -> None:
        self.result = result
        super().__init__(f"command {result.args!r} exited with status {result.returncode}")

    def __reduce__(self) -> Any:
        # Pickled with its result (for multiprocessing), not its message.
        return (type(self), (self.result,))


class CopyError(Error):
    """A recursive copy copied what it could, and some files failed:
    ``result`` is its stats (as a copy that succeeded returns them),
    ``failures`` a list of ``(path, error)``, each error the exception
    that file alone would have raised."""

    def __init__(self, message: str, result: Any, failures: Any) -> None:
        super().__init__(message)
        self.result = result
        self.failures = failures

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.result, self.failures))


class ProtocolError(Error):
    """The server sent what the protocol does not allow there: it is not
    a framewire server of this version, or something is wrong with it.
    The connection is not used again."""


class LocalError(Error, builtins.OSError):
    """A local file could not be read or written: an :class:`OSError`
    with its ``errno``, ``strerror`` and ``filename``."""

    def __init__(self, errno: int, strerror: str, filename: str) -> None:
        # The system's own words for an errno, as OSError has them.
        super().__init__(errno, os.strerror(errno) if errno else strerror, filename)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"
