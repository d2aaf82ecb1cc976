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
Prints the median and min-max seconds (wall, the client's CPU, and for
Python the connect and call alone, without the interpreter's start) and
the ratios. Every process it
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
    """Wall seconds of `cmd`, and the CPU seconds (user + system) of the
    client process: the work done, which this machine's noise does not
    change as it changes the wall time."""
    before = os.times()
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    # A Python peer prints the seconds of its connect and call alone.
    call = float(out.split()[-1]) if out.strip() else wall
    return wall, cpu, call


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
        py = lambda call: [args.python, "-c", "import time, framewire; t = time.perf_counter(); "
                           f"c = framewire.Client({addr!r}); {call}; print(time.perf_counter() - t)"]
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
        print("| peer | wall s, median (min–max) | client CPU s, median (min–max) | connect and call s, median |")
        print("|---|---|---|---|")
        for k in names:
            walls = [w for w, _, _ in times[k]]
            cpus = [c for _, c, _ in times[k]]
            calls = [c for _, _, c in times[k]]
            print(f"| {k} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) "
                  f"| {statistics.median(cpus):.2f} ({min(cpus):.2f}–{max(cpus):.2f}) | {statistics.median(calls):.2f} |")
        print("\n| ratio of medians | wall | client CPU | connect and call against the CLI's wall | target |")
        print("|---|---|---|---|---|")
        for op in ("put", "get"):
            med = {k: [statistics.median([t[j] for t in times[k]]) for j in range(3)]
                   for k in (f"Client.{op}", f"CLI {op}")}
            ours, cli = med[f"Client.{op}"], med[f"CLI {op}"]
            print(f"| Client.{op} / CLI {op} | {ours[0] / cli[0]:.2f}x | {ours[1] / cli[1]:.2f}x "
                  f"| {ours[2] / cli[0]:.2f}x | ≤ 1.10x |")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
