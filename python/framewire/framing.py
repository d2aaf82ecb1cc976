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

Headers are read as framewire's Rust peers read them: strict JSON (no
``NaN``, no member given twice), ``len`` an integer. Every error the
bytes of a stream can cause is a :class:`framewire.Error`; a header this
side cannot send (a value JSON cannot carry) is :class:`~framewire.BadHeader`
too, raised before anything is sent.

Caveats, as with any framing over a socket:

- A receive that stops part-way (a socket timeout, a non-blocking socket
  with no data yet, an asyncio task cancelled) has taken part of a frame
  off the stream: the stream is out of step, and the connection should be
  closed. On non-blocking sockets, use :class:`FrameDecoder`.
- One socket shared by threads needs a lock around each send: a large
  message is written with two ``sendall`` calls.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ._errors import BadHeader, FrameTooLarge, FramingError, IncompleteFrame

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


# A body is read into pieces of at most this much, so that a length alone
# (four bytes from a peer) does not make the receiver commit its whole
# limit in memory before a byte of the body has come.
_PIECE = 1 << 20


def _recv_exactly(sock: socket.socket, n: int, part: str, clean_end: bool = False) -> Optional[bytes]:
    """Exactly ``n`` bytes from ``sock``; ``None`` if the stream ends
    before the first of them and ``clean_end``; :class:`IncompleteFrame`
    if it ends after some (or before any, without ``clean_end``)."""
    if n == 0:
        return b""
    first = sock.recv(min(n, _PIECE))
    if len(first) == n:
        return first
    if not first:
        if clean_end:
            return None
        raise IncompleteFrame(part, 0, n)
    pieces = [first]
    got = len(first)
    while got < n:
        want = min(n - got, _PIECE)
        buf = bytearray(want)
        view = memoryview(buf)
        k = 0
        while k < want:
            r = sock.recv_into(view[k:], want - k)
            if r == 0:
                raise IncompleteFrame(part, got + k, n)
            k += r
        pieces.append(buf)
        got += want
    return b"".join(pieces)


def _as_bytes(data: Buffer) -> memoryview:
    """``data`` as a view of bytes (a ``memoryview`` of wider items counts
    its bytes, not its items)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_limit(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer of 0 or more, not {value!r}")


def _prefixed(data: Buffer) -> Tuple[bytes, Optional[memoryview]]:
    view = _as_bytes(data)
    n = view.nbytes
    if n > 0xFFFFFFFF:
        raise FrameTooLarge("message", n, 0xFFFFFFFF)
    if n <= _COALESCE:
        return _LEN.pack(n) + view.tobytes(), None
    return _LEN.pack(n), view


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
    _check_limit("max_size", max_size)
    head = _recv_exactly(sock, 4, "length prefix", clean_end=True)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > max_size:
        raise FrameTooLarge("message", n, max_size)
    return _recv_exactly(sock, n, "body")


def _encode_header(header: Mapping[str, Any], body_len: int) -> bytes:
    given = header.get("len")
    if given is not None and given != body_len:
        raise ValueError(f"the header says len {given!r} but the body is {body_len} bytes")
    header = dict(header)
    if body_len or "len" in header:
        header["len"] = body_len
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        # A value JSON cannot carry (NaN, bytes, a lone surrogate...): a
        # peer could not read it, so it is not sent.
        raise BadHeader(f"the header cannot be sent as JSON: {e}") from None
    if len(raw) > MAX_HEADER_LEN:
        raise FrameTooLarge("header", len(raw), MAX_HEADER_LEN)
    return _LEN.pack(len(raw)) + raw


def send_frame(sock: socket.socket, header: Mapping[str, Any], body: Buffer = b"") -> None:
    """Sends one framewire frame: ``header`` (a mapping, given its ``len``
    from ``body``; a ``len`` it has already must be the body's) as JSON,
    then ``body``.

    Raises :class:`~framewire.BadHeader` for a header JSON cannot carry,
    and :class:`~framewire.FrameTooLarge` for one over 65,536 bytes: in
    both cases nothing is sent.
    """
    view = _as_bytes(body)
    head = _encode_header(header, view.nbytes)
    if view.nbytes <= _COALESCE:
        sock.sendall(head + view.tobytes())
    else:
        sock.sendall(head)
        sock.sendall(view)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _int_or_negative_zero(text: str) -> Any:
    # JSON's -0 is a float to framewire's Rust peers (and so no len).
    return -0.0 if text == "-0" else int(text)


def _parse_header(raw: bytes, max_body: int) -> Tuple[Header, int]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadHeader(f"header is not valid UTF-8 (first bad byte at offset {e.start} of {len(raw)})") from None
    try:
        header = json.loads(
            text,
            parse_constant=_refuse_constant,
            object_pairs_hook=_no_duplicates,
            parse_int=_int_or_negative_zero,
        )
    except (ValueError, RecursionError) as e:
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
    _check_limit("max_body", max_body)
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
        writer.write(rest)
    await writer.drain()


async def arecv_msg(reader: asyncio.StreamReader, max_size: int = MAX_SIZE) -> Optional[bytes]:
    """:func:`recv_msg` on an asyncio stream."""
    _check_limit("max_size", max_size)
    head = await _read_exactly(reader, 4, "length prefix", clean_end=True)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > max_size:
        raise FrameTooLarge("message", n, max_size)
    return await _read_exactly(reader, n, "body")


async def asend_frame(writer: asyncio.StreamWriter, header: Mapping[str, Any], body: Buffer = b"") -> None:
    """:func:`send_frame` on an asyncio stream."""
    view = _as_bytes(body)
    writer.write(_encode_header(header, view.nbytes))
    writer.write(view)
    await writer.drain()


async def arecv_frame(reader: asyncio.StreamReader, max_body: int = MAX_SIZE) -> Optional[Frame]:
    """:func:`recv_frame` on an asyncio stream."""
    _check_limit("max_body", max_body)
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
    ``(header, body)`` pairs. Bad input (a length over the limit, a bad
    header) raises once the messages before it are returned: from the
    same ``feed`` if none came before it in that call, else from the next
    call. After that the decoder is out of step with the stream and
    refuses more input. It holds at most one message (or one header and
    its body) beyond what it has returned.
    """

    def __init__(self, max_size: int = MAX_SIZE, frames: bool = False) -> None:
        _check_limit("max_size", max_size)
        self.max_size = max_size
        self.frames = frames
        self._buf = bytearray()
        self._pos = 0
        # A frame's header, parsed once while its body arrives: its
        # header, body length and where the body starts.
        self._head: Optional[Tuple[Header, int, int]] = None
        self._broken: Optional[Exception] = None

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole message yet."""
        return len(self._buf) - self._pos

    def feed(self, data: Buffer) -> List[Any]:
        """Takes ``data``; returns the messages it completes."""
        if self._broken is not None:
            raise self._broken
        self._buf += _as_bytes(data)
        out: List[Any] = []
        try:
            while True:
                item = self._next()
                if item is None:
                    break
                out.append(item)
        except FramingError as e:
            self._broken = e
            if not out:
                raise
        finally:
            if self._pos:
                del self._buf[: self._pos]
                if self._head is not None:
                    header, body_len, start = self._head
                    self._head = (header, body_len, start - self._pos)
                self._pos = 0
        return out

    def _next(self) -> Any:
        buf, pos = self._buf, self._pos
        if self._head is None:
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
            self._head = (header, body_len, pos + 4 + n)
        header, body_len, start = self._head
        if len(buf) - start < body_len:
            return None
        self._head = None
        self._pos = start + body_len
        return header, bytes(buf[start : start + body_len])

    def close(self) -> None:
        """The stream has ended: raises :class:`~framewire.IncompleteFrame`
        if it ended inside a message (what it held and what it lacked),
        or the error a ``feed`` held back."""
        if self._broken is not None:
            raise self._broken
        try:
            self._check_end()
        except FramingError as e:
            self._broken = e
            raise

    def _check_end(self) -> None:
        left = self.pending
        if left == 0:
            return
        if self._head is not None:
            _, body_len, start = self._head
            raise IncompleteFrame("body", len(self._buf) - start, body_len)
        if left < 4:
            raise IncompleteFrame("length prefix", left, 4)
        (n,) = _LEN.unpack_from(self._buf, self._pos)
        raise IncompleteFrame("body" if not self.frames else "header", left - 4, n)
