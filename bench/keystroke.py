#!/usr/bin/env python3
"""Keystroke round trip through a remote terminal: framewire `shell`
against `ssh -t` to a local sshd, both on 127.0.0.1, in the same run.

Usage: python3 bench/keystroke.py [--keys 200] [--rounds 5] [--no-build]

Each client runs on a pseudo-terminal this script makes (its controlling
terminal, 40x200, as in a terminal emulator) and opens an interactive
login shell on the server side (framewire: `shell ADDR` with a key, so
over TLS as ssh is encrypted; ssh: `ssh -t HOST` with aes128-gcm). Once
the prompt has come and gone quiet, one character at a time is written to
the terminal's master side and the time until its echo comes back is
measured: the byte goes through the client, the network, the server, the
remote terminal's line editing (bash's readline, the same for both),
and all the way back. KEYS keys a round, ROUNDS rounds, the order of the
peers turned each round. Prints p50 and p99 of each, and the ratio.

Installs openssh if missing, starts sshd and `framewire serve` on high
loopback ports with throwaway keys; every process it starts, it ends.
"""

import argparse
import fcntl
import os
import select
import statistics
import subprocess
import sys
import tempfile
import termios
import time
import struct

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, Procs, free_port, start_sshd, wait_port  # noqa: E402
from tree import ensure_tools  # noqa: E402


def on_pty(cmd, env):
    """Starts `cmd` as a session leader on a new 40x200 terminal; returns
    (process, master fd)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))

    def ctty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=ctty, close_fds=True)
    os.close(slave)
    return p, master


def drain(master, quiet, limit):
    """Reads until nothing has come for `quiet` seconds (at most `limit`)."""
    seen = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], quiet)
        if not r:
            return seen
        try:
            seen += os.read(master, 65536)
        except OSError:
            return seen
    raise RuntimeError(f"the terminal never went quiet: {seen[-200:]!r}")


def round_trips(master, keys):
    """Seconds from writing each key until its echo has come back."""
    times = []
    for i in range(keys):
        key = b"abcdefghij"[i % 10:i % 10 + 1]
        t = time.perf_counter()
        os.write(master, key)
        got = b""
        while key not in got:
            r, _, _ = select.select([master], [], [], 5)
            if not r:
                raise RuntimeError(f"no echo of {key!r} within 5 s")
            got += os.read(master, 4096)
        times.append(time.perf_counter() - t)
        if i % 50 == 49:
            os.write(master, b"\x15")  # Ctrl-U: keep the line short
            drain(master, 0.05, 5)
    return times


def session(cmd, env, keys):
    p, master = on_pty(cmd, env)
    try:
        drain(master, 0.5, 20)  # the prompt, and whatever start-up prints
        times = round_trips(master, keys)
        os.write(master, b"\x15exit\r")
        drain(master, 0.2, 10)
        p.wait(10)
        return times
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    ensure_tools(False)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)
    work = tempfile.mkdtemp(prefix="fw-keys-", dir="/dev/shm")
    procs = Procs()
    try:
        key = os.path.join(work, "fw.key")
        subprocess.run([BIN, "keygen", key], check=True, stderr=subprocess.DEVNULL)
        port = free_port()
        procs.start([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--root", work, "--allow-exec",
                     "--key-file", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        ssh_opts, _, _ = start_sshd(procs, work)
        env = dict(os.environ, TERM="xterm")
        peers = {
            "framewire shell (TLS + key)": [BIN, "--key-file", key, "shell", f"127.0.0.1:{port}"],
            "ssh -t": ["ssh", "-t"] + ssh_opts + ["127.0.0.1"],
        }
        names = list(peers)
        times = {n: [] for n in names}
        p50s = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                t = session(peers[n], env, args.keys)
                times[n] += t
                p50s[n].append(statistics.median(t))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        print(f"\nKeystroke round trip, {args.keys} keys x {args.rounds} rounds, 127.0.0.1, 40x200 terminal\n")
        print("| peer | p50 ms | p99 ms | per-round p50 min–max ms |")
        print("|---|---|---|---|")
        for n in names:
            ms = [x * 1e3 for x in times[n]]
            rounds = [x * 1e3 for x in p50s[n]]
            print(f"| {n} | {pct(ms, 0.5):.3f} | {pct(ms, 0.99):.3f} | {min(rounds):.3f}–{max(rounds):.3f} |")
        fw, ssh = (sorted(times[n]) for n in names)
        print(f"\n| ratio (ssh / framewire; above 1: framewire faster) | p50 {pct(ssh, .5) / pct(fw, .5):.2f}x "
              f"| p99 {pct(ssh, .99) / pct(fw, .99):.2f}x | target ≥ 1x |")
    finally:
        procs.stop()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
