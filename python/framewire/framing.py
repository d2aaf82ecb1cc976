"""Message boundaries on a TCP stream, done correctly, in plain Python.

TCP keeps no message boundaries: two ``send`` calls can arrive as one
``recv`` (a "sticky packet"), and one large ``send`` over many (a "half
packet"). The fix is a length before each message. This module is that
fix, with the cases tutorials leave out: a stream that ends *between*
messages is a clean end (``None``), one that ends *inside* a message is
an error (:class:`~framewire.IncompleteFrame`), never a short buffer
handed back as if it were whole, and a length over the limit is refused
before a byte of it is read (:class:`~framewire.FrameTooLarge`).

Two layers, both in docs/PROTOCOL.md:

- **bare messages** (§7): a ``u32`` big-endian length, then that many
  bytes. :func:`send_msg` / :func:`recv_msg` on a blocking socket,
  :func:`asend_msg` / :func:`arecv_msg` on asyncio streams,
  :class:`FrameDecoder` for bytes that arrive however they arrive.
- **framewire frames** (§3): a ``u32`` big-endian header length (at most
  65,536), a JSON object header, then ``header["len"]`` body bytes.
  :func:`send_frame` / :func:`recv_frame`, :func:`asend_frame` /
  :func:`arecv_frame`, and ``FrameDecoder(frames=True)``.

The tutorial clients' ``struct.pack('i', ...)`` is a *native-endian
signed* 4-byte length (little-endian on x86 and ARM); this module uses
network order, as ``struct.pack('!I', ...)`` writes it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple, Union

from ._errors import BadHeader, FrameTooLarge, IncompleteFrame

__all__ = [
    "MAX_SIZE",
    "MAX_HEADER_LEN",
    "send_msg",
    "recv_msg",
    "send_frame",
    "recv_frame",
    "asend_msg",
    "arecv_msg",
    "asend_frame",
    "arecv_frame",
    "FrameDecoder",
]

#: The default limit on a message or a frame body held in memory: 16 MiB.
MAX_SIZE = 16 * 1024 * 1024
#: The largest frame header (PROTOCOL.md §3.2).
MAX_HEADER_LEN = 65536

_LEN = struct.Struct("!I")
# Below this, the length and the bytes go in one write: two small writes
# with Nagle's algorithm on cost a delayed ACK (about 40 ms) each.
_COALESCE = 64 * 1024

Header = Dict[str, Any]
Frame = Tuple[Header, bytes]
Buffer = Union[bytes, bytearray, memoryview]


# -- the blocking socket layer ------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int, part: str, clean_end: bool = False) -> Optional[bytes]:
    """Exactly ``n`` bytes from ``sock``; ``None`` if the stream ends
    before the first of them and ``clean_end``; :class:`IncompleteFrame`
    if it ends after some (or before any, without ``clean_end``)."""
    if n == 0:
        return b""
    first = sock.recv(n)
    if len(first) == n:
        return first
    if not first:
        if clean_end:
            return None
        raise IncompleteFrame(part, 0, n)
    buf = bytearray(n)
    view = memoryview(buf)
    got = len(first)
    view[:got] = first
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise IncompleteFrame(part, got, n)
        got += k
    return bytes(buf)


def _prefixed(data: Buffer) -> Tuple[bytes, Optional[Buffer]]:
    n = len(data)
    if n > 0xFFFFFFFF:
        raise FrameTooLarge("message", n, 0xFFFFFFFF)
    if n <= _COALESCE:
        return _LEN.pack(n) + bytes(data), None
    return _LEN.pack(n), data


def send_msg(sock: socket.socket, data: Buffer) -> None:
    """Sends ``data`` as one message: its length (``u32`` big-endian),
    then its bytes. Small messages go in one write."""
    head, rest = _prefixed(data)
    sock.sendall(head)
    if rest is not None:
        sock.sendall(rest)


def recv_msg(sock: socket.socket, max_size: int = MAX_SIZE) -> Optional[bytes]:
    """The next whole message from ``sock``, or ``None`` if the stream
    ended cleanly before it.

    Raises :class:`~framewire.IncompleteFrame` if the stream ends inside
    a message, and :class:`~framewire.FrameTooLarge` (before reading it)
    if its length is over ``max_size``.
    """
    head = _recv_exactly(sock, 4, "length prefix", clean_end=True)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > max_size:
        raise FrameTooLarge("message", n, max_size)
    return _recv_exactly(sock, n, "body")


def _encode_header(header: Header, body: Buffer) -> bytes:
    header = dict(header)
    if body or "len" in header:
        header["len"] = len(body)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_HEADER_LEN:
        raise FrameTooLarge("header", len(raw), MAX_HEADER_LEN)
    return _LEN.pack(len(raw)) + raw


def send_frame(sock: socket.socket, header: Header, body: Buffer = b"") -> None:
    """Sends one framewire frame: ``header`` (a dict, given its ``len``
    from ``body``) as JSON, then ``body``."""
    head = _encode_header(header, body)
    if len(body) <= _COALESCE:
        sock.sendall(head + bytes(body))
    else:
        sock.sendall(head)
        sock.sendall(body)


def _parse_header(raw: bytes, max_body: int) -> Tuple[Header, int]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadHeader(f"header is not valid UTF-8 (first bad byte at offset {e.start} of {len(raw)})") from None
    try:
        header = json.loads(text)
    except ValueError as e:
        raise BadHeader(f"header is not a valid JSON object: {e}") from None
    if not isinstance(header, dict):
        raise BadHeader(f"header is not a valid JSON object: a JSON {type(header).__name__}")
    n = header.get("len", 0)
    # bool is an int in Python, not in JSON.
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n >= 1 << 64:
        raise BadHeader(f"header is not a valid JSON object: len {n!r} is not an integer from 0 to 2^64 - 1")
    if n > max_body:
        raise FrameTooLarge("body", n, max_body)
    return header, n


def recv_frame(sock: socket.socket, max_body: int = MAX_SIZE) -> Optional[Frame]:
    """The next frame from ``sock`` as ``(header, body)``, or ``None`` if
    the stream ended cleanly before it.

    Raises :class:`~framewire.IncompleteFrame` if the stream ends inside
    the frame, :class:`~framewire.FrameTooLarge` for a header over 65,536
    bytes or a body over ``max_body`` (before reading them), and
    :class:`~framewire.BadHeader` for a header that is not a JSON object
    with a non-negative integer ``len``.
    """
    prefix = _recv_exactly(sock, 4, "length prefix", clean_end=True)
    if prefix is None:
        return None
    (h,) = _LEN.unpack(prefix)
    if h > MAX_HEADER_LEN:
        raise FrameTooLarge("header", h, MAX_HEADER_LEN)
    raw = _recv_exactly(sock, h, "header")
    assert raw is not None
    header, n = _parse_header(raw, max_body)
    body = _recv_exactly(sock, n, "body")
    assert body is not None
    return header, body


# -- asyncio streams ----------------------------------------------------------


async def _read_exactly(reader: asyncio.StreamReader, n: int, part: str, clean_end: bool = False) -> Optional[bytes]:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        if clean_end and not e.partial:
            return None
        raise IncompleteFrame(part, len(e.partial), n) from None


async def asend_msg(writer: asyncio.StreamWriter, data: Buffer) -> None:
    """:func:`send_msg` on an asyncio stream (waits for the buffer to
    drain)."""
    head, rest = _prefixed(data)
    writer.write(head)
    if rest is not None:
        writer.write(bytes(rest))
    await writer.drain()


async def arecv_msg(reader: asyncio.StreamReader, max_size: int = MAX_SIZE) -> Optional[bytes]:
    """:func:`recv_msg` on an asyncio stream."""
    head = await _read_exactly(reader, 4, "length prefix", clean_end=True)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > max_size:
        raise FrameTooLarge("message", n, max_size)
    return await _read_exactly(reader, n, "body")


async def asend_frame(writer: asyncio.StreamWriter, header: Header, body: Buffer = b"") -> None:
    """:func:`send_frame` on an asyncio stream."""
    writer.write(_encode_header(header, body) + bytes(body))
    await writer.drain()


async def arecv_frame(reader: asyncio.StreamReader, max_body: int = MAX_SIZE) -> Optional[Frame]:
    """:func:`recv_frame` on an asyncio stream."""
    prefix = await _read_exactly(reader, 4, "length prefix", clean_end=True)
    if prefix is None:
        return None
    (h,) = _LEN.unpack(prefix)
    if h > MAX_HEADER_LEN:
        raise FrameTooLarge("header", h, MAX_HEADER_LEN)
    raw = await _read_exactly(reader, h, "header")
    assert raw is not None
    header, n = _parse_header(raw, max_body)
    body = await _read_exactly(reader, n, "body")
    assert body is not None
    return header, body


# -- bytes as they come -------------------------------------------------------


class FrameDecoder:
    """Whole messages out of bytes fed as they arrive, for non-blocking
    code (``selectors``, a protocol's ``data_received``)::

        decoder = FrameDecoder()
        for message in decoder.feed(chunk):
            ...
        decoder.close()  # at the end of the stream

    ``feed`` returns every message the bytes complete (none, one or
    many), and keeps what is left for the next call. With
    ``frames=True`` it decodes framewire frames and returns
    ``(header, body)`` pairs. After an error the decoder is out of step
    with the stream and refuses more input.
    """

    def __init__(self, max_size: int = MAX_SIZE, frames: bool = False) -> None:
        self.max_size = max_size
        self.frames = frames
        self._buf = bytearray()
        self._pos = 0
        self._broken: Optional[Exception] = None

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole message yet."""
        return len(self._buf) - self._pos

    def feed(self, data: Buffer) -> List[Any]:
        """Takes ``data``; returns the messages it completes."""
        if self._broken is not None:
            raise self._broken
        self._buf += data
        out: List[Any] = []
        try:
            while True:
                item = self._next()
                if item is None:
                    break
                out.append(item)
        except Exception as e:
            self._broken = e
            raise
        finally:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
        return out

    def _next(self) -> Any:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (n,) = _LEN.unpack_from(buf, pos)
        if not self.frames:
            if n > self.max_size:
                raise FrameTooLarge("message", n, self.max_size)
            if len(buf) - pos - 4 < n:
                return None
            self._pos = pos + 4 + n
            return bytes(buf[pos + 4 : pos + 4 + n])
        if n > MAX_HEADER_LEN:
            raise FrameTooLarge("header", n, MAX_HEADER_LEN)
        if len(buf) - pos - 4 < n:
            return None
        header, body_len = _parse_header(bytes(buf[pos + 4 : pos + 4 + n]), self.max_size)
        start = pos + 4 + n
        if len(buf) - start < body_len:
            return None
        self._pos = start + body_len
        return header, bytes(buf[start : start + body_len])

    def close(self) -> None:
        """The stream has ended: raises :class:`~framewire.IncompleteFrame`
        if it ended inside a message (what it held and what it lacked)."""
        if self._broken is not None:
            raise self._broken
        try:
            self._check_end()
        except Exception as e:
            self._broken = e
            raise

    def _check_end(self) -> None:
        left = self.pending
        if left == 0:
            return
        buf = self._buf
        if left < 4:
            raise IncompleteFrame("length prefix", left, 4)
        (n,) = _LEN.unpack_from(buf, 0)
        if not self.frames:
            raise IncompleteFrame("body", left - 4, n)
        if left - 4 < n:
            raise IncompleteFrame("header", left - 4, n)
        _, body_len = _parse_header(bytes(buf[4 : 4 + n]), self.max_size)
        raise IncompleteFrame("body", left - 4 - n, body_len)
