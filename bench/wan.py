#!/usr/bin/env python3
"""A link in a box (issue 32, point 4): framewire against the rsync daemon
and rsync over ssh (-z) on a shaped link, in the same run.

Usage: python3 bench/wan.py [--mib 64] [--rounds 3] [--links 20,100]
                            [--rtt-ms 40] [--no-build] [--skip-validate]
                            [--only WORDS] [--peers WORDS] [--each]
                            [--hold-reporting] [--baseline BIN]
                            [--trees | --only-trees] [--tree-cases WORDS]

`--baseline BIN` runs another framewire build (an older one, kept aside)
as one more file-case peer, `framewire baseline`, with its own server on
the same link and root, in the same rotation: a same-run A/B, reported
as the ratio of the two medians.

This machine is a VM that hands free memory back to its host at once
(free page reporting): a run that writes a GiB into pages just handed
back pays a fault on the host for each, charged to it as system time,
up to ten times the copy's cost. Which peer draws such a run is chance;
`--each` prints every run's CPU, user and system apart, and the MiB
handed back during it, so that such runs can be told
(docs/BENCHMARKS.md "The slow rounds found"); `--hold-reporting` delays
the reporting to two minutes for the run (`min_free_ms` in
/sys/module/page_reporting/parameters, set back to what it was after),
so that fewer runs draw them: memory freed in the two minutes before
the run (a build just before it) is still handed back during it.

The link: two network namespaces made by this script, joined by a veth
pair with a `tbf` rate limit on each end (this kernel has tbf and htb,
no netem), and a delay line (bench/delayline.py) in the client's
namespace that holds every byte RTT/2 each way, its queue bounded by the
link's bandwidth-delay product. Every peer's client runs in the client
namespace and talks to 127.0.0.1 there (the delay line), which forwards
across the veth to the servers in the server namespace. The addresses
on the veth (10.250.0.1/30, 10.250.0.2/30) exist only inside these two
namespaces; nothing here leaves the machine.

Validation first (skipped with --skip-validate): iperf3 through the link
(throughput against the rate) and a TCP ping-pong of 1-byte messages
(round trip against the RTT).

Then, per link and round, in rotating order, for each change to a file
of MIB MiB (random bytes): 1 % rewritten in scattered 10 KiB runs, 1,000
bytes inserted 1 MiB in, 4 MiB appended; the server already holds the
old version and the client puts the new one:

  framewire   `framewire put --force`: a delta, as to any host that is
              not a loopback address (the client reaches the server at
              its link address, 10.250.0.1 -> 10.250.0.2)
  rsync       the rsync daemon: `rsync -I --no-whole-file NEW rsync://..`
  rsync ssh   rsync over ssh with -z: `rsync -I -z -e 'ssh -p ..' NEW ..`

Reported per case: wall time (median, min-max), bytes on the wire (both
ways, counted by the delay line), CPU-seconds of the client and of the
server (framewire's server process; rsyncd's and sshd's with the
per-connection children they reaped), and the ratios. Every copy is checked (the server's file must hash as the new
one). Needs root (namespaces, tc); installs iperf3, rsync and openssh
(Debian) if missing. Every process and namespace it makes, it removes.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, Procs, ensure_tools  # noqa: E402

SRV_IP, CLI_IP = "10.250.0.2", "10.250.0.1"


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, **kw)


class Link:
    """Two namespaces, a veth pair shaped with tbf, a delay line."""

    def __init__(self, mbit, rtt_ms, work):
        tag = f"{os.getpid() % 100000}"
        self.c, self.s = f"fwwan-c{tag}", f"fwwan-s{tag}"
        self.mbit, self.rtt_ms, self.work = mbit, rtt_ms, work
        self.procs = Procs()
        self.stats = os.path.join(work, f"wire-{mbit}.jsonl")

    def __enter__(self):
        va, vb = f"fwc{os.getpid() % 100000}", f"fws{os.getpid() % 100000}"
        sh("ip", "netns", "add", self.c)
        sh("ip", "netns", "add", self.s)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", self.c)
        sh("ip", "link", "set", vb, "netns", self.s)
        for ns, dev, ip in ((self.c, va, CLI_IP), (self.s, vb, SRV_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            rate = self.mbit * 1_000_000 // 8  # bytes/s
            burst = max(16_000, rate // 250 * 2)
            # The shaper's own queue: a few milliseconds; the delay line
            # holds the bandwidth-delay product.
            limit = max(64_000, rate * 5 // 1000 + burst)
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
               "rate", f"{self.mbit}mbit", "burst", str(burst), "limit", str(limit))
        self.bdp = max(64 << 10, self.mbit * 1_000_000 // 8 * self.rtt_ms // 1000)
        return self

    def delay(self, maps):
        """Starts the delay line in the client namespace: each (local port,
        server port) pair forwards CLI_IP:local to the server's port. The
        clients reach it at the client's own link address, not loopback:
        framewire's auto mode sees a peer across a link (deltas on), as it
        would the server's own address."""
        args = ["ip", "netns", "exec", self.c, sys.executable, os.path.join(ROOT, "bench", "delayline.py"),
                "--delay-ms", str(self.rtt_ms / 2), "--queue", str(self.bdp), "--stats", self.stats,
                "--listen", CLI_IP]
        for local, remote in maps:
            args += ["--map", f"{local}:{SRV_IP}:{remote}"]
        p = self.procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().strip() == "ready"

    def in_server(self, cmd, **kw):
        return self.procs.start(["ip", "netns", "exec", self.s] + cmd, **kw)

    def in_client(self, cmd):
        return ["ip", "netns", "exec", self.c] + cmd

    def wire_bytes(self):
        """Bytes the delay line has carried on connections that ended."""
        total = 0
        if os.path.exists(self.stats):
            with open(self.stats) as f:
                for line in f:
                    d = json.loads(line)
                    total += d["up"] + d["down"]
        return total

    def __exit__(self, *exc):
        self.procs.stop()
        sh("ip", "netns", "del", self.c, check=False)
        sh("ip", "netns", "del", self.s, check=False)


def wait_in(ns, port, limit=10):
    deadline = time.time() + limit
    probe = f"import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('{SRV_IP}', {port})))"
    while time.time() < deadline:
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {SRV_IP}:{port} in {ns}")


def validate(link):
    """iperf3's throughput and a 1-byte ping-pong's round trip, through the
    whole path."""
    link.in_server(["iperf3", "-s", "-B", SRV_IP, "-p", "5301"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    echo = ("import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('{SRV_IP}',5302));s.listen()\n"
            "while True:\n c,_=s.accept();c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
            " while (b:=c.recv(1)): c.sendall(b)\n c.close()\n")
    link.in_server([sys.executable, "-c", echo])
    wait_in(link.s, 5301)
    wait_in(link.s, 5302)
    link.delay([(15301, 5301), (15302, 5302)])
    out = subprocess.run(link.in_client(["iperf3", "-c", CLI_IP, "-p", "15301", "-t", "6", "-O", "2", "-J"]),
                         capture_output=True, text=True, check=True)
    mbit = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    ping = (f"import socket,time\ns=socket.create_connection(('{CLI_IP}',15302))\n"
            "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\nts=[]\n"
            "for _ in range(20):\n t=time.perf_counter();s.sendall(b'x');s.recv(1);ts.append(time.perf_counter()-t)\n"
            "ts.sort();print(ts[len(ts)//2]*1000)\n")
    out = subprocess.run(link.in_client([sys.executable, "-c", ping]), capture_output=True, text=True, check=True)
    return mbit, float(out.stdout)


def proc_cpu(pid):
    """CPU-seconds of a process and of the children it has waited for
    (rsyncd and sshd fork one a connection and reap it)."""
    user, system = proc_cpu_split(pid)
    return user + system


REPORTED = "/sys/module/page_reporting/parameters/reported_kib"
MIN_FREE_MS = "/sys/module/page_reporting/parameters/min_free_ms"


def hold_reporting():
    """Delays this VM's free page reporting to two minutes for the run
    (`--hold-reporting`): memory freed during it stays the guest's, so no
    run pays the host's faults for pages handed back and written again.
    Returns the setting to put back, or None where there is none."""
    try:
        with open(MIN_FREE_MS) as f:
            was = f.read()
        with open(MIN_FREE_MS, "w") as f:
            f.write("120000")
    except OSError as e:
        print(f"free page reporting: not held ({e})", file=sys.stderr)
        return None
    print(f"free page reporting: min_free_ms {was.strip()} -> 120000 for the run", file=sys.stderr)
    return was


def reported_kib():
    """KiB of free memory this VM has handed back to its host so far (free
    page reporting, where the kernel counts it), or None."""
    try:
        with open(REPORTED) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def proc_cpu_split(pid):
    """User and system CPU-seconds, as `proc_cpu` counts them."""
    with open(f"/proc/{pid}/stat") as f:
        fields = [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[0] + fields[2]) / tick, (fields[1] + fields[3]) / tick


def noise(n, seed):
    rng = random.Random(seed)
    step = 64 << 20  # randbytes takes at most 2^31 bits at once
    return b"".join(rng.randbytes(min(step, n - i)) for i in range(0, n, step))


def changes(old, seed):
    size = len(old)
    scattered = bytearray(old)
    run = 10 << 10
    runs = max(1, size // 100 // run)
    for k in range(runs):
        at = k * (size // runs) + 4321
        scattered[at:at + run] = noise(run, seed + k)
    inserted = old[:1 << 20] + noise(1000, seed + 7) + old[1 << 20:]
    appended = old + noise(4 << 20, seed + 8)
    return [("scattered 1 %", bytes(scattered)), ("insert 1,000 B", inserted), ("append 4 MiB", appended)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64, help="size of the file changed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--links", default="20,100", help="Mbit/s, comma-separated")
    ap.add_argument("--rtt-ms", type=int, default=40)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--skip-validate", action="store_true")
    ap.add_argument("--trees", action="store_true", help="also the tree cases (text tree, source tree, "
                    "compressed data), with -z")
    ap.add_argument("--only-trees", action="store_true", help="the tree cases alone")
    ap.add_argument("--each", action="store_true", help="print every run's wall time and CPU, user and "
                    "system apart, as it ends")
    ap.add_argument("--hold-reporting", action="store_true", help="delay this VM's free page reporting for "
                    "the run (set back after): see the docstring")
    ap.add_argument("--peers", default="", help="file-case peers whose name contains one of these words, "
                    "comma-separated (all three by default)")
    ap.add_argument("--baseline", default="", help="another framewire binary (an older build) run as one more "
                    "file-case peer, `framewire baseline`, with its own server: a same-run A/B")
    ap.add_argument("--only", default="", help="file cases whose name contains one of these words, comma-separated")
    ap.add_argument("--tree-cases", default="", help="tree cases whose name contains one of these words, "
                    "comma-separated")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/wan.py needs root (network namespaces, tc)")
    ensure_tools()
    if not args.no_build:
        sh("cargo", "build", "--release", "-q", cwd=ROOT)
    work = tempfile.mkdtemp(prefix="fw-wan-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    held = hold_reporting() if args.hold_reporting else None
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if held is not None:
            with open(MIN_FREE_MS, "w") as f:
                f.write(held)
            print(f"free page reporting: min_free_ms set back to {held.strip()}", file=sys.stderr)


def run(args, work):
    old = noise(args.mib << 20, 1)
    cases = changes(old, 100)
    if args.only:
        cases = [c for c in cases if any(w in c[0] for w in args.only.split(","))]
    src, remote = os.path.join(work, "src"), os.path.join(work, "remote")
    os.makedirs(src)
    os.makedirs(remote)
    keys = os.path.join(work, "ssh")
    os.makedirs(keys, mode=0o700)
    for name in ("host", "client"):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(keys, name))
    shutil.copy(os.path.join(keys, "client.pub"), os.path.join(keys, "authorized_keys"))
    os.makedirs("/run/sshd", exist_ok=True)
    with open(os.path.join(keys, "sshd_config"), "w") as f:
        f.write(f"Port 5322\nListenAddress {SRV_IP}\nHostKey {keys}/host\nAuthorizedKeysFile {keys}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
                "PidFile none\n")
    with open(os.path.join(work, "rsyncd.conf"), "w") as f:
        f.write(f"use chroot = no\nuid = root\ngid = root\n[bench]\n  path = {remote}\n  read only = no\n")
    ssh = (f"ssh -p 15322 -i {keys}/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o LogLevel=ERROR -o BatchMode=yes")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    results = {}
    validation = {}
    for mbit in [int(x) for x in args.links.split(",")]:
        with Link(mbit, args.rtt_ms, work) as link:
            if not args.skip_validate:
                validation[mbit] = validate(link)
            # `ip netns exec` execs its command: these are the servers' PIDs.
            fw = link.in_server([BIN, "serve", "--listen", f"{SRV_IP}:5300", "--root", remote, "--insecure"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rsd = link.in_server(["rsync", "--daemon", "--no-detach", f"--config={work}/rsyncd.conf",
                                  "--port=5373", f"--address={SRV_IP}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ssd = link.in_server([sshd, "-D", "-f", os.path.join(keys, "sshd_config")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ports = [(15300, 5300), (15373, 5373), (15322, 5322)]
            base = None
            if args.baseline:
                base = link.in_server([args.baseline, "serve", "--listen", f"{SRV_IP}:5310", "--root", remote,
                                       "--insecure"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ports.append((15310, 5310))
            for _, port in ports:
                wait_in(link.s, port)
            link.delay(ports)
            peers = [
                ("framewire", fw.pid, lambda new: [BIN, "put", "--force", "-q", f"{CLI_IP}:15300", new, "f"]),
                ("rsync daemon", rsd.pid, lambda new: ["rsync", "-I", "--no-whole-file", new,
                                                       f"rsync://{CLI_IP}:15373/bench/f"]),
                ("rsync ssh -z", ssd.pid, lambda new: ["rsync", "-I", "-z", "-e", ssh, new,
                                                       f"root@{CLI_IP}:{remote}/f"]),
            ]
            if base is not None:
                peers.append(("framewire baseline", base.pid,
                              lambda new: [args.baseline, "put", "--force", "-q", f"{CLI_IP}:15310", new, "f"]))
            if args.peers:
                peers = [p for p in peers if any(w in p[0] for w in args.peers.split(","))]
                if not peers:
                    sys.exit(f"--peers {args.peers}: no peer named so (framewire, rsync daemon, rsync ssh -z)")
            if args.trees or args.only_trees:
                tree_rounds(args, link, work, (fw.pid, rsd.pid, ssd.pid), ssh, results)
            for r in range(0 if args.only_trees else args.rounds):
                for ci, (case, new) in enumerate(cases):
                    new_path = os.path.join(src, "f")
                    with open(new_path, "wb") as f:
                        f.write(new)
                    want = hashlib.blake2b(new).hexdigest()
                    order = peers[(r + ci) % len(peers):] + peers[:(r + ci) % len(peers)]
                    for name, server_pid, cmd in order:
                        with open(os.path.join(remote, "f"), "wb") as f:
                            f.write(old)
                        # The server's version is a day older, as an older
                        # version is: each tool's quick check sends it.
                        day_ago = time.time() - 86400
                        os.utime(os.path.join(remote, "f"), (day_ago, day_ago))
                        before = link.wire_bytes()
                        t0 = time.perf_counter()
                        ru0 = os.times()
                        s0 = proc_cpu_split(server_pid)
                        k0 = reported_kib()
                        out = subprocess.run(link.in_client(cmd(new_path)), capture_output=True, timeout=1800)
                        wall = time.perf_counter() - t0
                        ru1 = os.times()
                        if out.returncode != 0:
                            raise RuntimeError(f"{name}: {out.stderr.decode(errors='replace')}")
                        time.sleep(0.2)  # the delay line writes its count when the connection ends
                        wire = link.wire_bytes() - before
                        s1 = proc_cpu_split(server_pid)
                        server_cpu = (s1[0] - s0[0]) + (s1[1] - s0[1])
                        cpu = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
                        if args.each:
                            k1 = reported_kib()
                            handed = (f", {(k1 - k0) >> 10} MiB handed back to the host"
                                      if k0 is not None and k1 is not None else "")
                            print(f"{mbit} Mbit/s round {r + 1} {case} {name}: wall {wall:.2f} s, "
                                  f"server user {s1[0] - s0[0]:.2f} s sys {s1[1] - s0[1]:.2f} s, "
                                  f"client user {ru1.children_user - ru0.children_user:.2f} s "
                                  f"sys {ru1.children_system - ru0.children_system:.2f} s{handed}",
                                  file=sys.stderr, flush=True)
                        with open(os.path.join(remote, "f"), "rb") as f:
                            if hashlib.blake2b(f.read()).hexdigest() != want:
                                raise RuntimeError(f"{name}: the server's copy differs")
                        results.setdefault((mbit, case, name), []).append((wall, wire, cpu, server_cpu))
                print(f"{mbit} Mbit/s: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    report(args, results, validation)
    report_trees(results)


def words(n, seed):
    """Text that compresses as source code does."""
    vocab = ("fn let mut self match Some None Ok Err return impl pub struct use async await String Vec u64 if "
             "else for in while { } ( ) ; = -> => :: & * + 0 1 2 a b c i j k n x y").split()
    rng = random.Random(seed)
    out, size = [], 0
    while size < n:
        w = rng.choice(vocab)
        out.append(w)
        size += len(w) + 1
    text = " ".join(out)
    return "\n".join(text[i:i + 72] for i in range(0, len(text), 72)).encode()[:n]


def same_tree(a, b):
    for dirpath, _, names in os.walk(a):
        for name in names:
            p = os.path.join(dirpath, name)
            q = os.path.join(b, os.path.relpath(p, a))
            with open(p, "rb") as f, open(q, "rb") as g:
                if f.read() != g.read():
                    return False
    return True


def tree_rounds(args, link, work, pids, ssh, results):
    """The tree cases, with -z where the issue asks for it: a fresh text
    tree, a source tree of 10,000 files with 5 edited, and already
    compressed data (a random file, fresh), each peer in turn."""
    fw_pid, rsd_pid, ssd_pid = pids
    remote = os.path.join(work, "remote")
    base = os.path.join(work, "trees")
    if not os.path.isdir(base):
        text = os.path.join(base, "text", "t")
        for i in range(2000):
            d = os.path.join(text, f"d{i % 50}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}.rs"), "wb") as f:
                f.write(words(16_000, i))
        src = os.path.join(base, "source", "t")
        for i in range(10_000):
            d = os.path.join(src, f"d{i % 100}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}.rs"), "wb") as f:
                f.write(words(2_000, 50_000 + i))
        old = os.path.join(base, "source-old", "t")
        shutil.copytree(src, old)  # copy2: times kept
        for i in range(0, 10_000, 2_000):
            p = os.path.join(src, f"d{i % 100}", f"f{i}.rs")
            with open(p, "ab") as f:
                f.write(b"\n// edited\n")
            os.utime(p, (time.time() + 60, time.time() + 60))
        packed = os.path.join(base, "packed", "t")
        os.makedirs(packed)
        with open(os.path.join(packed, "data.zst"), "wb") as f:
            f.write(noise(64 << 20, 77))
        # Medium files (64 KiB to 1 MiB, 150 MB in all), 20 of 300 edited
        # a little: what deltas inside the tree's stream are for.
        medium = os.path.join(base, "medium", "t")
        medium_old = os.path.join(base, "medium-old", "t")
        for i in range(300):
            data = bytearray(noise((64 << 10) + (i * 3203 % 900) * 1024, 90_000 + i))
            for tree in (medium_old, medium):
                d = os.path.join(tree, f"d{i % 10}")
                os.makedirs(d, exist_ok=True)
                p = os.path.join(d, f"m{i}.bin")
                if tree == medium and i % 15 == 0:
                    mid = len(data) // 2
                    data[mid:mid + 200] = noise(200, 95_000 + i)
                    data = data[:mid // 2] + noise(100, 96_000 + i) + data[mid // 2:]
                with open(p, "wb") as f:
                    f.write(data)
                os.utime(p, (1_700_000_000, 1_700_000_000) if tree == medium_old
                         else (1_700_000_000 + (60 if i % 15 == 0 else 0),) * 2)
    fw = f"{CLI_IP}:15300"
    rsd = f"rsync://{CLI_IP}:15373/bench/"
    rss = f"root@{CLI_IP}:{remote}/"

    def fresh():
        shutil.rmtree(os.path.join(remote, "t"), ignore_errors=True)

    def stale():
        fresh()
        shutil.copytree(os.path.join(base, "source-old", "t"), os.path.join(remote, "t"))

    def stale_medium():
        fresh()
        shutil.copytree(os.path.join(base, "medium-old", "t"), os.path.join(remote, "t"))

    cases = [
        ("text tree 32 MB, fresh, -z", "text", fresh, [
            ("framewire -z", fw_pid, [BIN, "put", "-r", "-z", "-q", fw, "SRC", ""]),
            # zstd's level 3, rsync's own for zstd (framewire's default is 1).
            ("framewire -z level 3", fw_pid, [BIN, "put", "-r", "-z", "--compress-level", "3", "-q", fw, "SRC", ""]),
            # The densest level whose CPU still hides behind the 20 Mbit/s
            # link (BENCHMARKS.md, "No zstd level reaches 0.8x").
            ("framewire -z level 12", fw_pid, [BIN, "put", "-r", "-z", "--compress-level", "12", "-q", fw, "SRC", ""]),
            ("rsync daemon -z", rsd_pid, ["rsync", "-rtz", "SRC", rsd]),
            ("rsync ssh -z", ssd_pid, ["rsync", "-rtz", "-e", ssh, "SRC", rss]),
        ]),
        ("source tree, 5 of 10,000 edited", "source", stale, [
            ("framewire", fw_pid, [BIN, "put", "-r", "-q", fw, "SRC", ""]),
            ("framewire -z", fw_pid, [BIN, "put", "-r", "-z", "-q", fw, "SRC", ""]),
            ("rsync daemon", rsd_pid, ["rsync", "-rt", "SRC", rsd]),
            ("rsync ssh -z", ssd_pid, ["rsync", "-rtz", "-e", ssh, "SRC", rss]),
        ]),
        ("compressed data 64 MiB, fresh", "packed", fresh, [
            ("framewire", fw_pid, [BIN, "put", "-r", "-q", fw, "SRC", ""]),
            ("framewire -z", fw_pid, [BIN, "put", "-r", "-z", "-q", fw, "SRC", ""]),
            ("rsync ssh -z", ssd_pid, ["rsync", "-rtz", "-e", ssh, "SRC", rss]),
        ]),
        ("medium tree, 20 of 300 files (64 KiB-1 MiB) edited", "medium", stale_medium, [
            ("framewire", fw_pid, [BIN, "put", "-r", "-q", fw, "SRC", ""]),
            ("framewire -W", fw_pid, [BIN, "put", "-r", "-W", "-q", fw, "SRC", ""]),
            ("rsync daemon", rsd_pid, ["rsync", "-rt", "SRC", rsd]),
            ("rsync ssh -z", ssd_pid, ["rsync", "-rtz", "-e", ssh, "SRC", rss]),
        ]),
    ]
    if args.tree_cases:
        cases = [c for c in cases if any(w in c[0] for w in args.tree_cases.split(","))]
    for r in range(args.rounds):
        for ci, (case, tree, reset, peers) in enumerate(cases):
            src = os.path.join(base, tree, "t")
            order = peers[(r + ci) % len(peers):] + peers[:(r + ci) % len(peers)]
            for name, server_pid, cmd in order:
                reset()
                cmd = [src if c == "SRC" else c for c in cmd]
                before = link.wire_bytes()
                t0 = time.perf_counter()
                ru0 = os.times()
                s0 = proc_cpu(server_pid)
                out = subprocess.run(link.in_client(cmd), capture_output=True, timeout=1800)
                wall = time.perf_counter() - t0
                ru1 = os.times()
                if out.returncode != 0:
                    raise RuntimeError(f"{name}: {out.stderr.decode(errors='replace')}")
                time.sleep(0.3)
                wire = link.wire_bytes() - before
                server_cpu = proc_cpu(server_pid) - s0
                cpu = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
                if not same_tree(src, os.path.join(remote, "t")):
                    raise RuntimeError(f"{name}: the server's tree differs")
                results.setdefault((link.mbit, case, name), []).append((wall, wire, cpu, server_cpu))
        print(f"{link.mbit} Mbit/s: tree round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)


def report(args, results, validation):
    print(f"\nA file of {args.mib} MiB changed three ways, put to a server holding the old one, "
          f"RTT {args.rtt_ms} ms, {args.rounds} rounds\n")
    if validation:
        print("| link | iperf3 Mbit/s | ping-pong RTT ms |\n|---|---|---|")
        for mbit, (got, rtt) in validation.items():
            print(f"| {mbit} Mbit/s | {got:.1f} | {rtt:.1f} |")
        print()
    print("| link | change | peer | wall s, median (min–max) | bytes on the wire | client CPU s | server CPU s |")
    print("|---|---|---|---|---|---|---|")
    for (mbit, case, name), rows in sorted(results.items()):
        walls = [r[0] for r in rows]
        wire = statistics.median([r[1] for r in rows])
        cpu = statistics.median([r[2] for r in rows])
        scpu = statistics.median([r[3] for r in rows])
        print(f"| {mbit} Mbit/s | {case} | {name} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) "
              f"| {int(wire):,} | {cpu:.2f} | {scpu:.2f} |")
    print("\n| link | change | framewire / rsync daemon, time | framewire / rsync ssh -z, time | "
          "framewire / rsync daemon, bytes |\n|---|---|---|---|---|")
    for (mbit, case, name) in sorted(results):
        if name != "framewire" or (mbit, case, "rsync daemon") not in results:
            continue
        names = [n for n in ("framewire", "rsync daemon", "rsync ssh -z") if (mbit, case, n) in results]
        med = {n: statistics.median([r[0] for r in results[(mbit, case, n)]]) for n in names}
        wb = {n: statistics.median([r[1] for r in results[(mbit, case, n)]]) for n in ("framewire", "rsync daemon")}
        ssh_ratio = f"{med['framewire'] / med['rsync ssh -z']:.2f}x" if "rsync ssh -z" in med else "-"
        print(f"| {mbit} Mbit/s | {case} | {med['framewire'] / med['rsync daemon']:.2f}x "
              f"| {ssh_ratio} | {wb['framewire'] / max(1, wb['rsync daemon']):.1f}x |")
    ab = [(mbit, case) for (mbit, case, name) in sorted(results)
          if name == "framewire" and (mbit, case, "framewire baseline") in results]
    if ab:
        print("\n| link | change | framewire / framewire baseline, time (median) | baseline / rsync daemon |\n"
              "|---|---|---|---|")
        for mbit, case in ab:
            t = statistics.median([r[0] for r in results[(mbit, case, "framewire")]])
            tb = statistics.median([r[0] for r in results[(mbit, case, "framewire baseline")]])
            daemon = results.get((mbit, case, "rsync daemon"))
            to_daemon = f"{tb / statistics.median([r[0] for r in daemon]):.2f}x" if daemon else "-"
            print(f"| {mbit} Mbit/s | {case} | {t / tb:.2f}x | {to_daemon} |")


def report_trees(results):
    """Ratios of the tree cases: each framewire peer to each rsync one."""
    rows = []
    for (mbit, case, name) in sorted(results):
        if not name.startswith("framewire"):
            continue
        for other in ("rsync daemon", "rsync daemon -z", "rsync ssh -z", "framewire"):
            if other == name or (mbit, case, other) not in results:
                continue
            t = statistics.median([r[0] for r in results[(mbit, case, name)]])
            to = statistics.median([r[0] for r in results[(mbit, case, other)]])
            b = statistics.median([r[1] for r in results[(mbit, case, name)]])
            bo = statistics.median([r[1] for r in results[(mbit, case, other)]])
            rows.append(f"| {mbit} Mbit/s | {case} | {name} / {other} | {t / to:.2f}x | {b / max(1, bo):.2f}x |")
    if rows:
        print("\n| link | case | peers | time | bytes |\n|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
