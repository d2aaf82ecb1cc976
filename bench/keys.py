#!/usr/bin/env python3
"""Keys per person (issue 31): what a handshake with an Ed25519 key costs
against the shared key's, and against ssh, in the same run; and how long a
server takes to read an authorized_keys file of 10,000 keys.

Usage: python3 bench/keys.py [--connects 30] [--keys 10000] [--no-ssh]

One `framewire serve` (release build) takes both the shared key and an
authorized_keys file; each round runs, alternating, a fresh
`framewire exec -- true` with the shared key, one with a key file, and
(unless --no-ssh) `ssh host true` against a throwaway sshd on a high
loopback port (bench/transfer.py's). Prints the median and min-max of
each and the ratios the issue sets targets on. Then it writes 10,000
keys (made with Python's `cryptography` if installed, else by
ssh-keygen, slower) into the file, touches it, and times the server's
re-read from its own log line. Every process it starts, it ends.
"""

import argparse
import base64
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transfer  # noqa: E402  (its process handling and sshd)

BIN = transfer.BIN


def keygen(path, comment):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    with open(path + ".pub") as f:
        return f.read().strip()


def many_keys(n):
    """`n` authorized_keys lines of distinct Ed25519 public keys."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        Ed25519PrivateKey = None
    lines = []
    for i in range(n):
        if Ed25519PrivateKey:
            raw = Ed25519PrivateKey.generate().public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = os.urandom(32)  # not a point check: the server parses, never verifies, a listed key
        blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + raw
        lines.append(f"ssh-ed25519 {base64.b64encode(blob).decode()} person{i}")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=30)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--no-ssh", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=transfer.ROOT, check=True)
    procs = transfer.Procs()
    work = tempfile.mkdtemp(prefix="fw-keys-")
    try:
        home = os.path.join(work, "home")
        os.makedirs(home)
        env = dict(os.environ, HOME=home)
        env.pop("SSH_AUTH_SOCK", None)
        shared = os.path.join(work, "shared")
        subprocess.run([BIN, "keygen", shared], check=True, stderr=subprocess.DEVNULL)
        host = os.path.join(work, "host")
        keygen(host, "host")
        alice = os.path.join(work, "alice")
        alice_pub = keygen(alice, "alice")
        authorized = os.path.join(work, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(alice_pub + "\n")
        log = open(os.path.join(work, "serve.log"), "w")
        port = transfer.free_port()
        procs.start([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--root", work, "--allow-exec",
                     "--key-file", shared, "--authorized-keys", authorized, "--host-key", host],
                    stdout=subprocess.DEVNULL, stderr=log)
        transfer.wait_port(port)
        addr = f"127.0.0.1:{port}"
        shared_cmd = [BIN, "exec", "--key-file", shared, addr, "--", "true"]
        key_cmd = [BIN, "exec", "-i", alice, "--accept-new", addr, "--", "true"]
        subprocess.run(key_cmd, check=True, env=env)  # records the host key
        lat = {"framewire, shared key": [], "framewire, Ed25519 key (-i)": []}
        ssh_cmd = None
        if not args.no_ssh and (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
            ssh_base, _, _ = transfer.start_sshd(procs, work)
            ssh_cmd = ["ssh"] + ssh_base + ["root@127.0.0.1", "true"]
            lat["ssh host true"] = []
        for _ in range(args.connects):
            lat["framewire, shared key"].append(transfer.timed(shared_cmd, env=env))
            lat["framewire, Ed25519 key (-i)"].append(transfer.timed(key_cmd, env=env))
            if ssh_cmd:
                lat["ssh host true"].append(transfer.timed(ssh_cmd))
        print(f"New connection + TLS + authentication + `exec true`, a fresh process each, {args.connects} runs each\n")
        print("| what | p50 ms | min–max ms |")
        print("|---|---|---|")
        for n, v in lat.items():
            print(f"| {n} | {statistics.median(v) * 1e3:.1f} | {min(v) * 1e3:.1f}–{max(v) * 1e3:.1f} |")
        med = {n: statistics.median(v) for n, v in lat.items()}
        print()
        print(f"ratio Ed25519 key / shared key (p50): {med['framewire, Ed25519 key (-i)'] / med['framewire, shared key']:.2f} (target ≤ 1.5)")
        if ssh_cmd:
            print(f"ratio Ed25519 key / ssh (p50): {med['framewire, Ed25519 key (-i)'] / med['ssh host true']:.3f} (target ≤ 0.05)")

        # 10,000 keys: the re-read, as the server logs it.
        lines = many_keys(args.keys) + [alice_pub]
        with open(authorized + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        reads = []
        for _ in range(5):
            os.replace(authorized + ".new", authorized) if os.path.exists(authorized + ".new") else None
            os.utime(authorized)
            start = time.perf_counter()
            subprocess.run(key_cmd, check=True, env=env)  # the connection that finds the file changed
            reads.append(time.perf_counter() - start)
            time.sleep(1.1)
        # The same file, unchanged: the keyed lookup alone.
        unchanged = [transfer.timed(key_cmd, env=env) for _ in range(args.connects)]
        log.flush()
        with open(os.path.join(work, "serve.log")) as f:
            read_lines = [l for l in f if "authorized keys read" in l and f"keys={len(lines)}" in l]
        print(f"\n{len(lines)} keys in authorized_keys: a connection that finds the file changed (re-read + handshake"
              f" + exec true), 5 runs: median {statistics.median(reads) * 1e3:.1f} ms, "
              f"min–max {min(reads) * 1e3:.1f}–{max(reads) * 1e3:.1f} ms; against an unchanged file "
              f"{med['framewire, Ed25519 key (-i)'] * 1e3:.1f} ms with one key (target: the re-read ≤ 100 ms); re-reads logged: {len(read_lines)}")
        print(f"the same {len(lines)} keys, file unchanged, {args.connects} runs: median {statistics.median(unchanged) * 1e3:.1f} ms, "
              f"min–max {min(unchanged) * 1e3:.1f}–{max(unchanged) * 1e3:.1f} ms")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
