#!/usr/bin/env python3
"""framewire.Client's put and get of a large file against the CLI's, in
the same run (issue 33's target: within 10 %).

Usage: python3 bench/py_client.py [--mib 1024] [--rounds 5] [--python PY]

A `framewire serve` (target/release/framewire) of a directory in
/dev/shm; a random file there and in /dev/shm; per round, in rotating
order: `framewire put`/`get` (the CLI, as a process) and
`framewire.Client.put`/`get` (in a Python process started per copy, so
both sides pay a process start and a connection). PY is a Python with the
package installed (`pip install ./python`; default: target/pyenv).
Prints the median and min-max seconds and the ratios. Every process it
starts, it ends.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "framewire")


def timed(cmd):
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=os.path.join(ROOT, "target", "pyenv", "bin", "python"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(dir="/dev/shm", prefix="fw-pyclient-")
    server = None
    try:
        remote = os.path.join(work, "remote")
        os.mkdir(remote)
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        shutil.copy(big, os.path.join(remote, "big.bin"))
        server = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--root", remote],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while "listening on" not in (line := server.stdout.readline()):
            if not line:
                raise SystemExit("the server did not start")
        addr = line.split("listening on", 1)[1].split()[0]
        out = os.path.join(work, "out.bin")
        py = lambda call: [args.python, "-c", f"import framewire; c = framewire.Client({addr!r}); {call}"]
        peers = {
            "CLI put": lambda: timed([BIN, "put", "-q", addr, big, "up.bin"]),
            "Client.put": lambda: timed(py(f"c.put({big!r}, 'up.bin')")),
            "CLI get": lambda: timed([BIN, "get", "-q", addr, "big.bin", out]),
            "Client.get": lambda: timed(py(f"c.get('big.bin', {out!r})")),
        }
        times = {k: [] for k in peers}
        names = list(peers)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for leftover in (out, os.path.join(remote, "up.bin")):
                    if os.path.exists(leftover):
                        os.remove(leftover)
                times[name].append(peers[name]())
        print(f"\n{args.mib} MiB, /dev/shm to /dev/shm over 127.0.0.1, {args.rounds} rounds, rotating order\n")
        print("| peer | median s | min–max |")
        print("|---|---|---|")
        for k in names:
            print(f"| {k} | {statistics.median(times[k]):.2f} | {min(times[k]):.2f}–{max(times[k]):.2f} |")
        print("\n| ratio of medians | value | target |")
        print("|---|---|---|")
        for op in ("put", "get"):
            ratio = statistics.median(times[f"Client.{op}"]) / statistics.median(times[f"CLI {op}"])
            print(f"| Client.{op} / CLI {op} | {ratio:.2f}x | ≤ 1.10x |")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
