#!/usr/bin/env python3
"""Tree benchmark: copying many small files with framewire against the
rsync daemon, tar over ssh and scp -r, all on 127.0.0.1, all in the same
run.

Usage: python3 bench/tree.py [--files 10000] [--dirs 100] [--rounds 5]
                             [--jobs 4] [--baseline OLD_BINARY]
                             [--only-framewire] [--no-build]

Makes, once, a tree of FILES files of 1-16 KiB (sizes from a fixed seed,
random content) spread over DIRS directories in /dev/shm (so the disk is
not what is measured), and copies it between directories in /dev/shm,
the destination removed before each timed copy:

  framewire put / get   `put -r -q -j 4 ADDR SRC/ up`, `get -r -q -j 4
                        ADDR tree/ DST` (the tree was put on the server
                        once), plaintext, and TLS with a `framewire keygen`
                        key (--key-file on server and client);
  rsync daemon          `rsync -r --whole-file SRC/ rsync://.../up/` and
                        the reverse;
  tar over ssh          `tar -C SRC -cf - . | ssh HOST 'tar -C DEST -xf -'`
                        and the reverse;
  scp -r                put only, over the same sshd;
  no-op re-sync         framewire put of the unchanged tree into a
                        destination that already has it (size and mtime
                        match: nothing moves, exit 0) against
                        `rsync -rt --whole-file` doing the same (its first
                        copy made with -t too, or its quick check would
                        not skip).

Each copy is checked afterwards (untimed): the destination must hold
every file of the tree at its size. The peer order turns by one each
round. With --baseline, an older framewire binary's servers and client are
measured in the same rounds beside the current ones, with the ratio
current / baseline. --only-framewire leaves rsync, ssh and scp out (and
does not install them). --no-build uses target/release/framewire as it is
instead of running `cargo build --release -q` first.

Installs rsync and openssh (Debian packages) if missing, starts sshd and
rsyncd on high loopback ports with throwaway configs and keys, and prints
Markdown tables: each peer's median and min-max files per second over the
rounds, the ratios the issue sets targets on with the targets beside them,
and the peak RSS of each client (as /usr/bin/time reports it) and of the
framewire server (VmHWM from /proc, reset before each run through
clear_refs) during each run. Every process it starts, it ends.
"""

import argparse
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, Procs, free_port, start_rsyncd, start_sshd, wait_port  # noqa: E402


TIME = "/usr/bin/time"


def ensure_tools(only_framewire):
    """rsync, sshd, ssh, scp (unless only framewire is measured) and
    /usr/bin/time (for the clients' peak RSS; without it, n/a)."""
    pkgs = []
    if not only_framewire and any(not shutil.which(t) and not os.path.exists("/usr/sbin/" + t)
                                  for t in ("rsync", "sshd", "ssh", "scp", "tar")):
        pkgs += ["rsync", "openssh-server", "openssh-client", "tar"]
    if not os.access(TIME, os.X_OK):
        pkgs.append("time")
    if pkgs:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq"] + pkgs, check=True, env=env, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError):
            if pkgs != ["time"]:
                raise
            print(f"could not install {TIME}: client peak RSS will be n/a", file=sys.stderr)


def run(cmd, timeout):
    """Runs `cmd` (stdin and stdout /dev/null), fails if it fails; returns
    (seconds, peak RSS in KiB or None). The peak is what /usr/bin/time
    reports for the command (for a pipeline, its largest process): the
    rusage this script could read itself would count its own RSS too,
    which a child inherits at fork. Every command runs so, for the same
    small cost to all. The command gets its own session, so that a run
    over the time limit is ended with everything it started."""
    with tempfile.NamedTemporaryFile(mode="r") as rss, tempfile.TemporaryFile() as err:
        wrap = [TIME, "-f", "%M", "-o", rss.name] if os.access(TIME, os.X_OK) else []
        t = time.perf_counter()
        p = subprocess.Popen(wrap + cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True)
        # A blocking wait: Popen.wait(timeout) polls with sleeps of up to
        # 50 ms, which would round the times. The limit is a timer instead.
        late = threading.Event()

        def overtime():
            late.set()
            os.killpg(p.pid, signal.SIGKILL)  # the session this command leads, not yet reaped

        timer = threading.Timer(timeout, overtime)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
        secs = time.perf_counter() - t
        if late.is_set():
            raise RuntimeError(f"{shlex.join(cmd)} took over {timeout} s")
        if p.returncode != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode} after {secs:.1f} s: {msg}")
        lines = rss.read().split()
        return secs, int(lines[-1]) if wrap and lines and lines[-1].isdigit() else None


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_hwm(pid):
    """Sets VmHWM of `pid` back to its current RSS; False if the kernel
    does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_tree(root, files, dirs, seed):
    """FILES files of 1-16 KiB over DIRS directories; returns the manifest
    {relative path: size}."""
    rng = random.Random(seed)
    manifest = {}
    for d in range(dirs):
        os.mkdir(os.path.join(root, f"d{d:03d}"))
    for i in range(files):
        rel = os.path.join(f"d{i % dirs:03d}", f"f{i:06d}.bin")
        size = rng.randint(1 << 10, 16 << 10)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(os.urandom(size))
        manifest[rel] = size
    return manifest


def manifest_of(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p).st_size
    return out


def identities(root):
    """{relative path: (inode, mtime)}: what a no-op run must leave as it is."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_ino, st.st_mtime_ns)
    return out


def check(root, want, what):
    got = manifest_of(root)
    if got != want:
        missing = len(set(want) - set(got))
        extra = len(set(got) - set(want))
        wrong = sum(1 for k in set(want) & set(got) if want[k] != got[k])
        sample = sorted(set(got) - set(want))[:3]
        raise RuntimeError(f"{what}: {root} does not hold the tree: {missing} missing, {extra} extra "
                           f"(e.g. {sample}), {wrong} of the wrong size")


def fresh(path, make=False):
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        raise RuntimeError(f"could not remove {path}")
    if make:
        os.mkdir(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=4, help="framewire -j")
    ap.add_argument("--seed", type=int, default=1, help="seed of the file sizes")
    ap.add_argument("--timeout", type=float, default=900, help="seconds any one command may take")
    ap.add_argument("--baseline", help="an older framewire binary, measured in the same rounds")
    ap.add_argument("--only-framewire", action="store_true", help="leave rsync, tar over ssh and scp out")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    args = ap.parse_args()
    if args.files < 1 or args.dirs < 1 or args.rounds < 1:
        ap.error("--files, --dirs and --rounds must be at least 1")
    if args.baseline and not os.access(args.baseline, os.X_OK):
        ap.error(f"--baseline {args.baseline}: not an executable")
    ensure_tools(args.only_framewire)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)
    n = args.files
    jobs = ["-j", str(args.jobs)]

    work = tempfile.mkdtemp(prefix="fw-tree-", dir="/dev/shm")
    procs = Procs()
    try:
        src = os.path.join(work, "src")      # the tree, local side
        remote = os.path.join(work, "remote")  # the servers' root
        dst = os.path.join(work, "dst")      # where gets land
        for d in (src, remote):
            os.mkdir(d)
        want = make_tree(src, args.files, args.dirs, args.seed)
        total = sum(want.values())
        up = os.path.join(remote, "up")      # where puts land
        tree = os.path.join(remote, "tree")  # what gets read
        key = os.path.join(work, "fw.key")
        subprocess.run([BIN, "keygen", key], check=True, stderr=subprocess.DEVNULL)
        T = args.timeout

        # Peak RSS of each framewire server: the figure of each run (VmHWM
        # reset before it), and over the server's whole life.
        can_reset = [True]
        life_hwm = {}  # pid -> KiB
        idle_rss = {}  # pid -> KiB, just after start

        def fold_hwm(srv):
            life_hwm[srv.pid] = max(life_hwm.get(srv.pid, 0), status_kib(srv.pid, "VmHWM"))

        def fw_servers(binary):
            port, kport = free_port(), free_port()
            srv = procs.start([binary, "serve", "--listen", f"127.0.0.1:{port}", "--root", remote],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ksrv = procs.start([binary, "serve", "--listen", f"127.0.0.1:{kport}", "--root", remote,
                                "--key-file", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            wait_port(kport)
            for s in (srv, ksrv):
                idle_rss[s.pid] = status_kib(s.pid, "VmRSS")
            return f"127.0.0.1:{port}", srv, f"127.0.0.1:{kport}", ksrv

        def framewire_peers(binary, tag):
            """The framewire rows for `binary`, with its own pair of servers:
            put, get (plaintext and TLS) and the no-op re-sync."""
            addr, srv, kaddr, ksrv = fw_servers(binary)
            k = ["--key-file", key]
            noop_rel = f"noop-{tag}"
            noop = os.path.join(remote, noop_rel)

            def put(extra, a):
                fresh(up)
                return run([binary, "put", "-r", "-q"] + jobs + extra + [a, src + "/", "up"], T)

            def get(extra, a):
                fresh(dst, make=True)  # a get into a missing directory fails, as cp
                return run([binary, "get", "-r", "-q"] + jobs + extra + [a, "tree/", dst], T)

            def noop_put():
                return run([binary, "put", "-r", "-q"] + jobs + [addr, src + "/", noop_rel], T)

            fresh(noop)
            noop_put()  # the first copy; the timed runs find everything in place
            check(noop, want, f"{tag} put into {noop_rel}")
            noops.append((f"{tag} put, no-op re-sync", noop))
            addrs[tag] = addr
            return [
                (f"{tag} put", lambda: put([], addr), srv, up),
                (f"{tag} get", lambda: get([], addr), srv, dst),
                (f"{tag} put, TLS + key", lambda: put(k, kaddr), ksrv, up),
                (f"{tag} get, TLS + key", lambda: get(k, kaddr), ksrv, dst),
                (f"{tag} put, no-op re-sync", noop_put, srv, noop),
            ]

        noops = []  # (peer, directory) whose files no timed run may rewrite
        addrs = {}  # tag -> plaintext server address
        peers = framewire_peers(BIN, "framewire")
        # The tree the gets read, put on the server once by the current binary.
        run([BIN, "put", "-r", "-q"] + jobs + [addrs["framewire"], src + "/", "tree"], T)
        check(tree, want, "framewire put into tree")
        if args.baseline:
            peers += framewire_peers(args.baseline, "baseline")

        if not args.only_framewire:
            rs_port, _ = start_rsyncd(procs, work, remote)  # ended with the rest by procs.stop()
            ssh_opts, scp_opts, _ = start_sshd(procs, work)
            rs = f"rsync://127.0.0.1:{rs_port}/bench"
            host = "root@127.0.0.1"
            ssh = shlex.join(["ssh"] + ssh_opts + [host])
            noop_rs = os.path.join(remote, "noop-rsync")

            def rsync_put():
                fresh(up)
                return run(["rsync", "-r", "--whole-file", src + "/", f"{rs}/up/"], T)

            def rsync_get():
                fresh(dst)
                return run(["rsync", "-r", "--whole-file", f"{rs}/tree/", dst + "/"], T)

            def rsync_noop():
                return run(["rsync", "-rt", "--whole-file", src + "/", f"{rs}/noop-rsync/"], T)

            def tar_put():
                fresh(up)
                remote_cmd = shlex.quote(f"mkdir {shlex.quote(up)} && tar -C {shlex.quote(up)} -xf -")
                return run(["bash", "-o", "pipefail", "-c",
                            f"tar -C {shlex.quote(src)} -cf - . | {ssh} {remote_cmd}"], T)

            def tar_get():
                fresh(dst, make=True)
                remote_cmd = shlex.quote(f"tar -C {shlex.quote(tree)} -cf - .")
                return run(["bash", "-o", "pipefail", "-c",
                            f"{ssh} {remote_cmd} | tar -C {shlex.quote(dst)} -xf -"], T)

            def scp_put():
                fresh(up)
                return run(["scp", "-r", "-q"] + scp_opts + [src, f"{host}:{up}"], T)

            fresh(noop_rs)
            rsync_noop()  # the first copy, with -t, so that the quick check skips later
            check(noop_rs, want, "rsync -rt into noop-rsync")
            noops.append(("rsync daemon put, no-op re-sync (-rt)", noop_rs))
            peers += [
                ("rsync daemon put", rsync_put, None, up),
                ("rsync daemon get", rsync_get, None, dst),
                ("rsync daemon put, no-op re-sync (-rt)", rsync_noop, None, noop_rs),
                ("tar over ssh put", tar_put, None, up),
                ("tar over ssh get", tar_get, None, dst),
                ("scp -r put", scp_put, None, up),
            ]
        before = {d: identities(d) for _, d in noops}

        for _, _, srv, _ in peers:
            if srv is not None:
                fold_hwm(srv)
        rates = {name: [] for name, _, _, _ in peers}
        client_rss = {name: [] for name in rates}
        server_rss = {name: [] for name, _, srv, _ in peers if srv is not None}
        for r in range(args.rounds):
            for k in range(len(peers)):
                name, fn, srv, out = peers[(k + r) % len(peers)]
                if srv is not None:
                    fold_hwm(srv)
                    if can_reset[0] and not reset_hwm(srv.pid):
                        can_reset[0] = False
                secs, rss = fn()
                if rss is not None:
                    client_rss[name].append(rss)
                if srv is not None:
                    server_rss[name].append(status_kib(srv.pid, "VmHWM"))
                    fold_hwm(srv)
                check(out, want, name)
                rates[name].append(n / secs)
                time.sleep(0.1)  # let a daemon reap its per-connection process
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        servers = {}
        for name, _, srv, _ in peers:
            if srv is not None:
                fold_hwm(srv)  # the end, before stopping
                servers.setdefault(srv.pid, name)
        rewritten = {name: sum(1 for p, v in identities(d).items() if before[d].get(p) != v) for name, d in noops}

        med = {name: statistics.median(v) for name, v in rates.items()}
        print(f"\n{n} files of 1–16 KiB ({total / (1 << 20):.1f} MiB) in {args.dirs} directories, "
              f"/dev/shm → /dev/shm over 127.0.0.1, framewire -j {args.jobs}, {args.rounds} rounds\n")
        print("| peer | median files/s | min–max |")
        print("|---|---|---|")
        for name, v in rates.items():
            print(f"| {name} | {med[name]:.0f} | {min(v):.0f}–{max(v):.0f} |")
        print()
        if args.baseline:
            print("| current / baseline (same rounds) | ratio of medians |")
            print("|---|---|")
            for name in rates:
                if name.startswith("baseline "):
                    cur = name.replace("baseline ", "framewire ", 1)
                    print(f"| {cur.removeprefix('framewire ')} | {med[cur] / med[name]:.3f}x |")
            print()
        ratios = [
            ("framewire put / rsync daemon put", "framewire put", "rsync daemon put", 1.5),
            ("framewire get / rsync daemon get", "framewire get", "rsync daemon get", 1.5),
            ("framewire put / tar over ssh put", "framewire put", "tar over ssh put", 2.0),
            ("framewire get / tar over ssh get", "framewire get", "tar over ssh get", None),
            ("framewire TLS put / scp -r put", "framewire put, TLS + key", "scp -r put", 3.0),
            ("framewire no-op / rsync no-op", "framewire put, no-op re-sync",
             "rsync daemon put, no-op re-sync (-rt)", 2.0),
            ("framewire TLS put / framewire plaintext put", "framewire put, TLS + key", "framewire put", None),
            ("framewire TLS get / framewire plaintext get", "framewire get, TLS + key", "framewire get", None),
        ]
        print("| ratio of medians (files/s) | value | target | met |")
        print("|---|---|---|---|")
        for label, a, b, target in ratios:
            if a in med and b in med:
                v = med[a] / med[b]
                t, ok = (f"≥ {target:g}x", "yes" if v >= target else "no") if target else ("", "")
                print(f"| {label} | {v:.2f}x | {t} | {ok} |")
        print()
        def kib(v, f):
            return f"{f(v):.0f}" if v else "n/a"

        print("Peak RSS, KiB, median and max over the rounds. Client: the command's own peak, as")
        print(f"/usr/bin/time -f %M reports it (for tar over ssh, the largest process of the pipeline)"
              + ("." if os.access(TIME, os.X_OK) else f"; {TIME} is missing here, so n/a."))
        print("Server: the framewire server process's VmHWM over that one run"
              + (" (reset before it through /proc/PID/clear_refs)" if can_reset[0] else
                 " (could not be reset here: the peak since the server started, so cumulative)")
              + "; rsyncd and sshd fork a process a connection and are not measured.")
        print()
        print("| peer | client median | client max | framewire server median | framewire server max |")
        print("|---|---|---|---|---|")
        for name in rates:
            c, sv = client_rss[name], server_rss.get(name, [])
            srv_cols = f"{kib(sv, statistics.median)} | {kib(sv, max)}" if name in server_rss else "— | —"
            print(f"| {name} | {kib(c, statistics.median)} | {kib(c, max)} | {srv_cols} |")
        print()
        print("| framewire server | RSS just after start | peak over its life (VmHWM, read at the end) |")
        print("|---|---|---|")
        for pid, name in servers.items():
            kind = "TLS + key" if "TLS" in name else "plaintext"
            tag = name.split(" ")[0]
            print(f"| {tag} {kind} (pid {pid}) | {idle_rss[pid]} | {life_hwm[pid]} |")
        print()
        for name, count in rewritten.items():
            print(f"{name}: {count} of {n} files rewritten by the timed runs (inode or mtime changed)")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
