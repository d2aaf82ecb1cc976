#!/usr/bin/env python3
"""A delay line: a TCP proxy that holds every byte for DELAY milliseconds
each way, for bench/wan.py (this kernel has tbf but no netem).

Usage: python3 bench/delayline.py --delay-ms 20 --queue BYTES
           --map LISTEN_PORT:HOST:PORT [--map ...] --stats FILE [--listen ADDR]

Listens on ADDR:LISTEN_PORT (127.0.0.1 by default) for each --map and
forwards to HOST:PORT.
Each direction of each connection is a queue of (release time, bytes):
a chunk read now is written DELAY ms later. The queue holds at most
QUEUE bytes (the link's bandwidth-delay product): when it is full the
proxy stops reading, so TCP's flow control, not this process's memory,
absorbs a sender faster than the link. On each connection's end it
appends a JSON line to FILE: {"port", "up", "down"} (bytes client to
server, server to client). Ends on SIGTERM.
"""

import argparse
import asyncio
import collections
import json
import signal
import time


async def pump(reader, writer, delay, queue_max, count, key):
    """Copies reader to writer, each chunk released `delay` s after it was
    read, at most `queue_max` bytes waiting."""
    q = collections.deque()
    held = 0
    room = asyncio.Event()
    room.set()
    more = asyncio.Event()
    done = False

    async def take():
        nonlocal held, done
        try:
            while True:
                await room.wait()
                data = await reader.read(min(65536, max(1024, queue_max - held)))
                if not data:
                    break
                q.append((time.monotonic() + delay, data))
                held += len(data)
                count[key] += len(data)
                if held >= queue_max:
                    room.clear()
                more.set()
        finally:
            done = True
            more.set()

    async def give():
        nonlocal held
        while True:
            if not q:
                if done:
                    break
                more.clear()
                await more.wait()
                continue
            due, data = q[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            q.popleft()
            writer.write(data)
            await writer.drain()
            held -= len(data)
            if held < queue_max:
                room.set()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    await asyncio.gather(take(), give(), return_exceptions=True)


async def serve(listen_host, listen_port, host, port, delay, queue_max, stats):
    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        for w in (cw, sw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        count = {"up": 0, "down": 0}
        await asyncio.gather(
            pump(cr, sw, delay, queue_max, count, "up"),
            pump(sr, cw, delay, queue_max, count, "down"),
            return_exceptions=True,
        )
        for w in (cw, sw):
            w.close()
        with open(stats, "a") as f:
            f.write(json.dumps({"port": listen_port, **count}) + "\n")

    return await asyncio.start_server(handle, listen_host, listen_port)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--queue", type=int, required=True, help="bytes held per direction at most")
    ap.add_argument("--map", action="append", required=True, help="LISTEN_PORT:HOST:PORT")
    ap.add_argument("--stats", required=True)
    ap.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    args = ap.parse_args()
    servers = []
    for m in args.map:
        lport, host, port = m.split(":")
        servers.append(await serve(args.listen, int(lport), host, int(port), args.delay_ms / 1000, args.queue,
                                   args.stats))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
