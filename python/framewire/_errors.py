"""framewire's exceptions: one tree under :class:`Error`.

Framing errors come from :mod:`framewire.framing` (pure Python); the
others from the client, with the message the CLI prints.
"""

from __future__ import annotations


__all__ = [
    "Error",
    "FramingError",
    "IncompleteFrame",
    "FrameTooLarge",
    "BadHeader",
]


class Error(Exception):
    """Every error framewire raises."""


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

