#!/usr/bin/env python3
"""Server memory after a burst: does RSS come back once the clients leave?

Usage: python3 bench/memory.py [--baseline OLD_BINARY] [--idle 5000]
                               [--active 200] [--rounds 3]

For each binary (target/release/framewire, and the baseline if given, in
the same run, alternating), starts `framewire serve` on 127.0.0.1 and
measures its RSS (VmRSS from /proc) at four points:

  idle    after start, before any client;
  active  while ACTIVE clients each echo 1 MiB through it at once;
  peak    while IDLE further connections sit idle after the preface;
  after   2 s after every client has gone.

Prints a Markdown table: median and min-max of each point over the rounds,
and the ratio after/idle. Every process it starts, it ends; every socket
goes to 127.0.0.1 only.
"""

import argparse
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "framewire")
PREFACE = b"\x89FWR" + struct.pack(">HH", 1, 0)


def raise_nofile():
    """As many descriptors as the hard limit allows (the idle connections
    need one each, on both sides)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def frame(header, body=b""):
    import json

    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(h)) + h + body


def read_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed")
        buf += chunk
    return bytes(buf)


def connect(addr):
    s = socket.create_connection(addr, timeout=30)
    s.sendall(PREFACE)
    if read_exact(s, 8)[:4] != PREFACE[:4]:
        raise RuntimeError("not a framewire server")
    return s


def echo(addr, size, barrier):
    s = connect(addr)
    body = b"x" * size
    barrier.wait(timeout=60)
    s.sendall(frame({"type": "echo", "len": size}, body))
    hlen = struct.unpack(">I", read_exact(s, 4))[0]
    read_exact(s, hlen)
    read_exact(s, size)
    return s


def start(binary, root):
    flags = ["--max-connections", "20000"]
    # Older builds have no handshake table and take their backlog from tokio.
    if "--max-startups" in subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout:
        flags += ["--max-startups", "20000", "--max-startups-per-source", "20000", "--backlog", "4096"]
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--root", root] + flags,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         preexec_fn=raise_nofile)
    line = p.stdout.readline().strip()
    host, port = line.removeprefix("listening on ").rsplit(":", 1)
    return p, (host, int(port))


def one_round(binary, idle, active, root):
    p, addr = start(binary, root)
    try:
        time.sleep(0.3)
        points = {"idle": rss_kib(p.pid)}
        barrier = threading.Barrier(active)
        held = []
        lock = threading.Lock()

        def client():
            s = echo(addr, 1 << 20, barrier)
            with lock:
                held.append(s)

        threads = [threading.Thread(target=client) for _ in range(active)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        points["active"] = rss_kib(p.pid)
        for _ in range(idle):
            held.append(connect(addr))
        time.sleep(0.5)
        points["peak"] = rss_kib(p.pid)
        for s in held:
            s.close()
        time.sleep(2.0)
        points["after"] = rss_kib(p.pid)
        return points
    finally:
        p.terminate()
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="an older framewire binary to compare in the same run")
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--active", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    raise_nofile()
    import tempfile

    root = tempfile.mkdtemp(prefix="fw-mem-")
    binaries = [("framewire", BIN)] + ([("baseline", args.baseline)] if args.baseline else [])
    results = {name: [] for name, _ in binaries}
    for r in range(args.rounds):
        for name, binary in binaries:
            pts = one_round(binary, args.idle, args.active, root)
            results[name].append(pts)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in pts.items()),
                  file=sys.stderr)
    print(f"\n{args.active} clients echoing 1 MiB at once, then {args.idle} idle connections, "
          f"then all gone; RSS in MiB, median (min-max) of {args.rounds} rounds\n")
    print("| binary | idle | active | peak | after 2 s | after / idle |")
    print("|---|---|---|---|---|---|")
    for name, _ in binaries:
        cells = []
        for key in ("idle", "active", "peak", "after"):
            v = [p[key] / 1024 for p in results[name]]
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        ratio = statistics.median(p["after"] / p["idle"] for p in results[name])
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
