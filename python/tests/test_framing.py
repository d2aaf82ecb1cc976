"""framewire.framing against the framing vectors the Rust codec is tested
with (tests/vectors/framing.json: one source of truth), over real
sockets, asyncio streams and the incremental decoder, in every split of
each stream; and the cases a tutorial's helper gets wrong."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import threading

import pytest

import framewire
from framewire import framing

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "tests" / "vectors" / "framing.json").read_text())


def cases(section):
    for kind in ("valid", "errors"):
        for case in VECTORS[section][kind]:
            yield pytest.param(case, id=f"{section}: {case['name']}")


def expected(case, section):
    """What each vector decodes to: the items, then the error (or None)."""
    if section == "bare":
        items = [bytes.fromhex(m) for m in case.get("messages_hex", [])]
    else:
        items = [(f["header"], bytes.fromhex(f["body_hex"])) for f in case.get("frames", [])]
    return items, case.get("error"), case.get("part")


def check_error(e, error, part):
    if error == "eof":
        assert isinstance(e, framewire.IncompleteFrame) and e.part == part, repr(e)
    elif error == "too_large":
        assert isinstance(e, framewire.FrameTooLarge) and e.what == "message", repr(e)
    elif error == "header_too_large":
        assert isinstance(e, framewire.FrameTooLarge) and e.what == "header", repr(e)
    elif error == "body_too_large":
        assert isinstance(e, framewire.FrameTooLarge) and e.what == "body", repr(e)
    elif error == "header_not_utf8":
        assert isinstance(e, framewire.BadHeader) and "UTF-8" in str(e), repr(e)
    elif error == "header_not_json":
        assert isinstance(e, framewire.BadHeader) and "JSON object" in str(e), repr(e)
    else:
        raise AssertionError(f"unknown error in the vectors: {error}")
    assert isinstance(e, framewire.Error)


def limit(case, section):
    return case.get("max_size" if section == "bare" else "max_body", framing.MAX_SIZE)


def splits(stream):
    """The stream whole, byte by byte, and in every split in two."""
    yield [stream]
    yield [stream[i : i + 1] for i in range(len(stream))]
    for at in range(1, len(stream)):
        yield [stream[:at], stream[at:]]


def over_socket(reads, receive):
    """Each read sent by a thread through a real socket pair, the stream
    closed after; ``receive`` run on the other end until None or an
    error. Returns (items, error)."""
    a, b = socket.socketpair()

    def write():
        with a:
            try:
                for r in reads:
                    a.sendall(r)
            except OSError:
                pass  # the reader stopped at an error and closed its end

    t = threading.Thread(target=write)
    t.start()
    items, error = [], None
    try:
        with b:
            while True:
                item = receive(b)
                if item is None:
                    break
                items.append(item)
    except framewire.Error as e:
        error = e
    t.join()
    return items, error


@pytest.mark.parametrize("case", list(cases("bare")))
def test_bare_vectors_over_a_socket(case):
    items, error, part = expected(case, "bare")
    stream = bytes.fromhex(case["stream_hex"])
    for reads in list(splits(stream))[:40]:
        got, e = over_socket(reads, lambda s: framing.recv_msg(s, max_size=limit(case, "bare")))
        assert got == items, case["name"]
        if error is None:
            assert e is None, repr(e)
        else:
            check_error(e, error, part)


@pytest.mark.parametrize("case", list(cases("frames")))
def test_frame_vectors_over_a_socket(case):
    items, error, part = expected(case, "frames")
    stream = bytes.fromhex(case["stream_hex"])
    for reads in list(splits(stream))[:40]:
        got, e = over_socket(reads, lambda s: framing.recv_frame(s, max_body=limit(case, "frames")))
        assert got == items, case["name"]
        if error is None:
            assert e is None, repr(e)
        else:
            check_error(e, error, part)


@pytest.mark.parametrize("section", ["bare", "frames"])
def test_vectors_through_the_decoder_in_every_split(section):
    for case in VECTORS[section]["valid"] + VECTORS[section]["errors"]:
        items, error, part = expected(case, section)
        stream = bytes.fromhex(case["stream_hex"])
        for reads in splits(stream):
            decoder = framing.FrameDecoder(max_size=limit(case, section), frames=section == "frames")
            got, e = [], None
            try:
                for r in reads:
                    got += decoder.feed(r)
                decoder.close()
            except framewire.Error as err:
                e = err
            assert got == items, (case["name"], reads)
            if error is None:
                assert e is None, (case["name"], repr(e))
            else:
                check_error(e, error, part)
                # Out of step now: more input is refused, not misread.
                with pytest.raises(framewire.Error):
                    decoder.feed(b"\x00\x00\x00\x00")


@pytest.mark.parametrize("section", ["bare", "frames"])
def test_vectors_over_asyncio_streams(section):
    async def run(case):
        reader = asyncio.StreamReader()
        reader.feed_data(bytes.fromhex(case["stream_hex"]))
        reader.feed_eof()
        receive = framing.arecv_msg if section == "bare" else framing.arecv_frame
        got, e = [], None
        try:
            while (item := await receive(reader, limit(case, section))) is not None:
                got.append(item)
        except framewire.Error as err:
            e = err
        return got, e

    for case in VECTORS[section]["valid"] + VECTORS[section]["errors"]:
        items, error, part = expected(case, section)
        got, e = asyncio.run(run(case))
        assert got == items, case["name"]
        if error is None:
            assert e is None, repr(e)
        else:
            check_error(e, error, part)


def test_what_is_sent_is_what_the_vectors_say():
    a, b = socket.socketpair()
    with a, b:
        framing.send_msg(a, b"dir")
        framing.send_msg(a, b"ipconfig")
        a.shutdown(socket.SHUT_WR)
        stream = b.recv(1 << 16)
    assert stream.hex() == VECTORS["bare"]["valid"][1]["stream_hex"]
    a, b = socket.socketpair()
    with a, b:
        framing.send_frame(a, {"type": "echo"}, b"hi")
        a.shutdown(socket.SHUT_WR)
        stream = b.recv(1 << 16)
    assert stream.hex() == VECTORS["frames"]["valid"][0]["stream_hex"]


def test_large_messages_and_frames_round_trip_in_both_apis():
    big = bytes(range(256)) * 40_000  # 10 MB: many reads, two writes
    a, b = socket.socketpair()
    with a, b:
        t = threading.Thread(target=lambda: (framing.send_msg(a, big), framing.send_frame(a, {"type": "file"}, big)))
        t.start()
        assert framing.recv_msg(b) == big
        header, body = framing.recv_frame(b)
        t.join()
    assert header == {"type": "file", "len": len(big)} and body == big

    async def pair():
        got = []

        async def serve(reader, writer):
            got.append(await framing.arecv_msg(reader))
            got.append(await framing.arecv_frame(reader))
            got.append(await framing.arecv_msg(reader))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await framing.asend_msg(writer, big)
        await framing.asend_frame(writer, {"type": "x", "n": 1}, b"body")
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return got

    assert asyncio.run(pair()) == [big, ({"type": "x", "n": 1, "len": 4}, b"body"), None]


def test_a_hostile_length_is_refused_before_anything_is_allocated():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"\xff\xff\xff\xff")
        with pytest.raises(framewire.FrameTooLarge) as e:
            framing.recv_msg(b)
        assert e.value.length == 0xFFFFFFFF and e.value.limit == framing.MAX_SIZE


def test_a_header_over_the_limit_is_refused_by_the_sender():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(framewire.FrameTooLarge):
            framing.send_frame(a, {"type": "x", "pad": "y" * framing.MAX_HEADER_LEN})
        a.shutdown(socket.SHUT_WR)
        assert b.recv(10) == b"", "nothing half-sent"


def test_the_tutorials_helper_bug_is_an_error_here():
    # The tutorial's recvall returns what it has at end of stream; here an
    # end inside a message says which part and how much was missing.
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"\x00\x00\x00\x0ashort")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(framewire.IncompleteFrame) as e:
            framing.recv_msg(b)
    assert (e.value.part, e.value.got, e.value.expected) == ("body", 5, 10)
    assert "5 of 10 bytes" in str(e.value)


def test_a_view_of_wider_items_is_sent_as_its_bytes():
    import array

    data = array.array("I", [1, 2, 3])
    a, b = socket.socketpair()
    with a, b:
        framing.send_msg(a, memoryview(data))
        framing.send_frame(a, {"type": "x"}, memoryview(data))
        assert framing.recv_msg(b) == data.tobytes()
        assert framing.recv_frame(b) == ({"type": "x", "len": 12}, data.tobytes())


def test_what_cannot_be_sent_is_refused_before_anything_is():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="len 5"):
            framing.send_frame(a, {"type": "x", "len": 5}, b"hi")
        for header in ({"type": "x", "v": float("nan")}, {"type": "x", "v": b"bytes"}, {"type": "\udcff"}):
            with pytest.raises(framewire.BadHeader):
                framing.send_frame(a, header)
        a.shutdown(socket.SHUT_WR)
        assert b.recv(10) == b"", "nothing sent"


def test_a_deeply_nested_header_is_a_bad_header_not_a_crash():
    raw = b'{"type":"x","v":' + b"[" * 30000 + b"]" * 30000 + b"}"
    a, b = socket.socketpair()
    with a, b:
        a.sendall(len(raw).to_bytes(4, "big") + raw)
        with pytest.raises(framewire.BadHeader):
            framing.recv_frame(b)


def test_limits_must_be_counts():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError):
            framing.recv_msg(b, max_size=-1)
        with pytest.raises(ValueError):
            framing.FrameDecoder(max_size=-1)
        a.sendall(b"\x00\x00\x00\x00\x00\x00\x00\x01x")
        assert framing.recv_msg(b, max_size=0) == b""
        with pytest.raises(framewire.FrameTooLarge):
            framing.recv_msg(b, max_size=0)


def test_a_frame_arriving_in_small_pieces_is_parsed_once():
    header = {"type": "x", "pad": "p" * 60000}
    raw = json.dumps(header, separators=(",", ":")).replace('"}', '","len":200000}').encode()
    stream = len(raw).to_bytes(4, "big") + raw + b"b" * 200_000
    decoder = framing.FrameDecoder(frames=True)
    calls = []
    real = framing._parse_header
    framing._parse_header = lambda raw, most: calls.append(1) or real(raw, most)
    try:
        got = []
        for i in range(0, len(stream), 100):
            got += decoder.feed(stream[i : i + 100])
    finally:
        framing._parse_header = real
    assert got == [({**header, "len": 200_000}, b"b" * 200_000)]
    assert len(calls) == 1, f"the header was parsed {len(calls)} times"
