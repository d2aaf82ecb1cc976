"""framewire.AsyncClient against a real `framewire serve` on 127.0.0.1:0:
its calls awaited on the event loop, many at once, cancelled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

import framewire

from conftest import Server, binary


def test_calls_are_coroutines_on_the_callers_loop(server, tmp_path):
    async def main():
        async with framewire.AsyncClient(server.addr) as c:
            done = await c.run("echo out; echo err >&2; exit 3")
            assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
            with pytest.raises(framewire.ProcessError):
                await c.run("false", check=True)
            assert (await c.run("tr a-z A-Z", stdin=b"up\n")).stdout == b"UP\n"
            assert (await c.run("tty", pty=True)).stdout.startswith(b"/dev/pts/")
            assert await c.mkdir("d") is True
            data = os.urandom(1 << 20)
            (tmp_path / "f.bin").write_bytes(data)
            up = await c.put(tmp_path / "f.bin", "d/")
            assert up["size"] == len(data) and (server.root / "d" / "f.bin").read_bytes() == data
            await c.get("d/f.bin", tmp_path / "g.bin")
            assert (tmp_path / "g.bin").read_bytes() == data
            assert [e["name"] for e in await c.ls("d")] == ["f.bin"]
            assert (await c.stat("d/f.bin"))["size"] == len(data)
            await c.rename("d/f.bin", "d/h.bin")
            with pytest.raises(framewire.NotFound):
                await c.stat("d/f.bin")
            back = tmp_path / "back"
            back.mkdir()
            tree = await c.get("d", back, recursive=True)
            assert tree["files"] == 1 and (back / "d" / "h.bin").read_bytes() == data
            assert await c.remove("d", recursive=True) is True
        with pytest.raises(framewire.ConnectionError):
            await c.run("true")

    asyncio.run(main())


def test_many_calls_run_at_once_and_the_loop_is_never_blocked(server):
    async def main():
        clients = [framewire.AsyncClient(server.addr) for _ in range(8)]
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.05)

        t = asyncio.create_task(ticker())
        started = time.monotonic()
        # 8 clients each sleeping 1 s on the server: together, about 1 s.
        slept = await asyncio.gather(*(c.run("sleep 1", timeout=20) for c in clients))
        took = time.monotonic() - started
        assert [r.returncode for r in slept] == [0] * 8
        # One after the other they would take 8 s.
        assert took < 6, f"{took:.1f} s: the calls ran one after the other"
        assert ticks >= 5, f"the loop ticked {ticks} times in {took:.1f} s: it was blocked"
        # 200 calls over the 8 (each client's take turns).
        done = await asyncio.gather(*(clients[i % 8].run(f"echo {i}") for i in range(200)))
        assert [r.stdout for r in done] == [f"{i}\n".encode() for i in range(200)]
        stop.set()
        await t
        for c in clients:
            await c.close()

    asyncio.run(main())


def test_a_cancelled_call_closes_its_connection(server):
    async def main():
        c = framewire.AsyncClient(server.addr)
        await c.connect()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.run("sleep 30"), 0.5)
        assert time.monotonic() - started < 10
        with pytest.raises(framewire.ConnectionError):
            await c.run("true")

    asyncio.run(main())


def test_connection_errors_come_at_connect_or_the_first_call(tmp_path):
    key = tmp_path / "key"
    subprocess.run([binary(), "keygen", str(key)], check=True, capture_output=True)
    root = tmp_path / "root"
    root.mkdir()
    s = Server(root, "--allow-exec", "--key-file", str(key))
    try:

        async def main():
            with pytest.raises(framewire.AuthenticationError):
                await framewire.AsyncClient(s.addr).run("true")
            with pytest.raises(framewire.AuthenticationError):
                await framewire.AsyncClient(s.addr).connect()
            async with framewire.AsyncClient(s.addr, key_file=key) as c:
                assert (await c.run("echo keyed")).stdout == b"keyed\n"

        asyncio.run(main())
    finally:
        s.stop()
