#!/usr/bin/env python3
"""File transfer benchmark: framewire against iperf3, the rsync daemon and
scp, all on 127.0.0.1, all in the same run.

Usage: python3 bench/transfer.py [--size-mib 1024] [--rounds 5]
                                 [--baseline OLD_BINARY] [--only-framewire]

With --baseline, an older framewire binary's server and client are
measured in the same rounds beside the current one (plaintext and TLS,
get and put), with the ratio current / baseline: the same-run A/B that
shows whether a change made anything slower. --only-framewire leaves
iperf3, rsync and scp out.

Installs iperf3, rsync and openssh (Debian packages) if missing, starts
sshd and rsyncd on high loopback ports with throwaway configs, moves a
random file between directories in /dev/shm (so the disk is not what is
measured), and prints Markdown tables: each peer's median and min-max
rate over the rounds, the CPU-seconds per GiB its client and its server
used (median), and the ratios the issues set targets on. Every process it
starts, it ends.
"""

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "framewire")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools():
    need = [t for t in ("iperf3", "rsync", "sshd", "scp") if not shutil.which(t) and not os.path.exists("/usr/sbin/" + t)]
    if need:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "iperf3", "rsync", "openssh-server", "openssh-client"],
                       check=True, env=env, stdout=subprocess.DEVNULL)


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU-seconds of process `pid` and of its children it has reaped (a
    daemon's per-connection processes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime


def children_cpu():
    """CPU-seconds of this script's children that have been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=subprocess.PIPE, **kw)
    return time.perf_counter() - t


class Procs:
    """Processes this script started; ended by PID on exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


def wait_port(port, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_rsyncd(procs, work, module_root):
    port = free_port()
    conf = os.path.join(work, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\nuid = root\ngid = root\n[bench]\n  path = {module_root}\n  read only = no\n")
    srv = procs.start(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                       "--address=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return port, srv


def start_sshd(procs, work):
    """sshd with a throwaway host key and client key; returns the options
    for ssh and for scp."""
    port = free_port()
    keys = os.path.join(work, "ssh")
    os.mkdir(keys, 0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(keys, name)], check=True)
    shutil.copy(os.path.join(keys, "client.pub"), os.path.join(keys, "authorized_keys"))
    os.makedirs("/run/sshd", exist_ok=True)
    sshd_conf = os.path.join(keys, "sshd_config")
    with open(sshd_conf, "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys}/host\n"
                f"AuthorizedKeysFile {keys}/authorized_keys\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nSubsystem sftp internal-sftp\n")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    srv = procs.start([sshd, "-D", "-f", sshd_conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    common = ["-i", f"{keys}/client", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
              "-c", "aes128-gcm@openssh.com"]
    return ["-p", str(port)] + common, ["-P", str(port)] + common, srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=30)
    ap.add_argument("--baseline", help="an older framewire binary, measured in the same rounds")
    ap.add_argument("--only-framewire", action="store_true", help="leave iperf3, rsync and scp out")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)

    work = tempfile.mkdtemp(prefix="fw-bench-", dir="/dev/shm")
    procs = Procs()
    try:
        src = os.path.join(work, "src")
        remote = os.path.join(work, "remote")
        dst = os.path.join(work, "dst")
        for d in (src, remote, dst):
            os.mkdir(d)
        big = os.path.join(src, "big.bin")
        size = args.size_mib << 20
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        shutil.copy(big, os.path.join(remote, "big.bin"))

        # framewire
        fw_port = free_port()
        fw_srv = procs.start([BIN, "serve", "--listen", f"127.0.0.1:{fw_port}", "--root", remote],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(fw_port)
        fw = f"127.0.0.1:{fw_port}"

        # framewire with a key: TLS 1.3 + authentication
        key = os.path.join(work, "fw.key")
        subprocess.run([BIN, "keygen", key], check=True, stderr=subprocess.DEVNULL)
        fwk_port = free_port()
        fwk_srv = procs.start([BIN, "serve", "--listen", f"127.0.0.1:{fwk_port}", "--root", remote, "--key-file", key,
                     "--allow-exec"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(fwk_port)
        fwk = f"127.0.0.1:{fwk_port}"

        # iperf3
        ip_port = free_port()
        ip_srv = procs.start(["iperf3", "-s", "-p", str(ip_port), "-B", "127.0.0.1"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
        wait_port(ip_port)

        # rsync daemon, and sshd with a throwaway host key and client key
        rs_port, rs_srv = start_rsyncd(procs, work, remote)
        ssh_base, ssh_opts, ssh_srv = start_sshd(procs, work)

        def clean(path):
            if os.path.exists(path):
                os.remove(path)

        def fw_get():
            out = os.path.join(dst, "big.bin")
            clean(out)
            return timed([BIN, "get", "-q", fw, "big.bin", out])

        def fw_put():
            clean(os.path.join(remote, "up.bin"))
            return timed([BIN, "put", "-q", fw, big, "up.bin"])

        def fwk_get():
            out = os.path.join(dst, "big.bin")
            clean(out)
            return timed([BIN, "get", "-q", "--key-file", key, fwk, "big.bin", out])

        def fwk_put():
            clean(os.path.join(remote, "up.bin"))
            return timed([BIN, "put", "-q", "--key-file", key, fwk, big, "up.bin"])

        def fw_null():
            with open("/dev/null", "wb") as null:
                return timed([BIN, "get", "-q", fw, "big.bin", "-"], stdout=null)

        def iperf():
            r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(ip_port), "-l", "1M", "-n", str(size), "-J"],
                               check=True, capture_output=True, text=True)
            import json
            return size / json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] * 8

        def rsync_get():
            clean(os.path.join(dst, "big.bin"))
            return timed(["rsync", "-q", "--whole-file", f"rsync://127.0.0.1:{rs_port}/bench/big.bin", dst + "/"])

        def rsync_put():
            clean(os.path.join(remote, "up.bin"))
            return timed(["rsync", "-q", "--whole-file", big, f"rsync://127.0.0.1:{rs_port}/bench/up.bin"])

        def scp_get():
            clean(os.path.join(dst, "big.bin"))
            return timed(["scp", "-q"] + ssh_opts + [f"root@127.0.0.1:{remote}/big.bin", dst + "/"])

        def scp_put():
            clean(os.path.join(remote, "up.bin"))
            return timed(["scp", "-q"] + ssh_opts + [big, f"root@127.0.0.1:{remote}/up.bin"])

        def framewire_peers(binary, tag):
            """The four framewire rows for `binary`, each with its own pair
            of servers."""
            port, kport = free_port(), free_port()
            srv = procs.start([binary, "serve", "--listen", f"127.0.0.1:{port}", "--root", remote],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ksrv = procs.start([binary, "serve", "--listen", f"127.0.0.1:{kport}", "--root", remote, "--key-file",
                                key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            wait_port(kport)
            addr, kaddr = f"127.0.0.1:{port}", f"127.0.0.1:{kport}"

            def get(extra, a):
                out = os.path.join(dst, "big.bin")
                clean(out)
                return timed([binary, "get", "-q"] + extra + [a, "big.bin", out])

            def put(extra, a):
                clean(os.path.join(remote, "up.bin"))
                return timed([binary, "put", "-q"] + extra + [a, big, "up.bin"])

            k = ["--key-file", key]
            return [
                (f"{tag} get, file → file", lambda: get([], addr), srv),
                (f"{tag} put, file → file", lambda: put([], addr), srv),
                (f"{tag} get, TLS + key, file → file", lambda: get(k, kaddr), ksrv),
                (f"{tag} put, TLS + key, file → file", lambda: put(k, kaddr), ksrv),
            ]

        peers = [
            ("framewire get, file → file", fw_get, fw_srv),
            ("framewire put, file → file", fw_put, fw_srv),
            ("framewire get → /dev/null", fw_null, fw_srv),
            ("framewire get, TLS + key, file → file", fwk_get, fwk_srv),
            ("framewire put, TLS + key, file → file", fwk_put, fwk_srv),
            ("iperf3 -l 1M (loopback limit)", iperf, ip_srv),
            ("rsync daemon get", rsync_get, rs_srv),
            ("rsync daemon put", rsync_put, rs_srv),
            ("scp -c aes128-gcm get", scp_get, ssh_srv),
            ("scp -c aes128-gcm put", scp_put, ssh_srv),
        ]
        if args.only_framewire:
            peers = [p for p in peers if p[0].startswith("framewire")]
        if args.baseline:
            peers += framewire_peers(args.baseline, "baseline")
        rates = {name: [] for name, _, _ in peers}
        cpu = {name: [] for name, _, _ in peers}
        for r in range(args.rounds):
            for k in range(len(peers)):
                name, fn, server = peers[(k + r) % len(peers)]
                c0, s0 = children_cpu(), proc_cpu(server.pid)
                secs = fn()
                time.sleep(0.1)  # let a daemon reap its per-connection process
                cpu[name].append((children_cpu() - c0, proc_cpu(server.pid) - s0))
                rates[name].append(size / secs / 1e9)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        med = {n: statistics.median(v) for n, v in rates.items()}
        print(f"\n{args.size_mib} MiB random file, /dev/shm → /dev/shm over 127.0.0.1, {args.rounds} rounds\n")
        print("| peer | median GB/s | min–max |")
        print("|---|---|---|")
        for n, v in rates.items():
            print(f"| {n} | {med[n]:.2f} | {min(v):.2f}–{max(v):.2f} |")
        print()
        if args.baseline:
            print("| current / baseline (same rounds) | ratio of medians |")
            print("|---|---|")
            for n in list(rates):
                if n.startswith("baseline "):
                    cur = n.replace("baseline ", "framewire ", 1)
                    print(f"| {cur.removeprefix('framewire ')} | {med[cur] / med[n]:.3f}x |")
            print()
        ratios = [
            ("framewire get → /dev/null / iperf3", "framewire get → /dev/null", "iperf3 -l 1M (loopback limit)", "≥ 0.8x"),
            ("framewire get / rsync daemon get", "framewire get, file → file", "rsync daemon get", "≥ 1.5x"),
            ("framewire put / rsync daemon put", "framewire put, file → file", "rsync daemon put", "≥ 1.5x"),
            ("framewire get / scp get", "framewire get, file → file", "scp -c aes128-gcm get", ""),
            ("framewire put / scp put", "framewire put, file → file", "scp -c aes128-gcm put", ""),
            ("framewire TLS get / scp get", "framewire get, TLS + key, file → file", "scp -c aes128-gcm get", "≥ 2.5x"),
            ("framewire TLS get / framewire plaintext get", "framewire get, TLS + key, file → file",
             "framewire get, file → file", "≥ 0.7x"),
            ("framewire TLS put / scp put", "framewire put, TLS + key, file → file", "scp -c aes128-gcm put", ""),
        ]
        gib = size / (1 << 30)
        print("CPU-seconds per GiB moved (medians; client = the command run, server = the daemon and the")
        print("per-connection processes it reaped; clock ticks of 10 ms, so small figures are coarse):\n")
        print("| peer | client | server | both |")
        print("|---|---|---|---|")
        for n, v in cpu.items():
            c = statistics.median(x[0] for x in v) / gib
            sv = statistics.median(x[1] for x in v) / gib
            b = statistics.median(x[0] + x[1] for x in v) / gib
            print(f"| {n} | {c:.2f} | {sv:.2f} | {b:.2f} |")
        print()
        print("| ratio of medians | value | target |")
        print("|---|---|---|")
        for label, a, b, target in ratios:
            if a in med and b in med:
                print(f"| {label} | {med[a] / med[b]:.2f}x | {target} |")

        if args.only_framewire:
            return
        # New connection + login + `true`, each a fresh process, alternating.
        ssh_cmd = ["ssh"] + ssh_base + ["root@127.0.0.1", "true"]
        fw_cmd = [BIN, "exec", "-n", "--key-file", key, fwk, "--", "true"]
        lat = {"ssh host true": [], "framewire exec --key-file (connect + TLS + auth + exec true)": []}
        for _ in range(args.connects):
            lat["ssh host true"].append(timed(ssh_cmd))
            lat["framewire exec --key-file (connect + TLS + auth + exec true)"].append(timed(fw_cmd))
        print(f"\nNew connection + authentication + `true`, a fresh process each, {args.connects} runs each\n")
        print("| what | p50 ms | min–max ms |")
        print("|---|---|---|")
        for n, v in lat.items():
            print(f"| {n} | {statistics.median(v) * 1e3:.1f} | {min(v) * 1e3:.1f}–{max(v) * 1e3:.1f} |")
        vals = list(lat.values())
        print(f"\nratio framewire / ssh (p50): {statistics.median(vals[1]) / statistics.median(vals[0]):.3f} (target ≤ 0.05)")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
