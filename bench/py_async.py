#!/usr/bin/env python3
"""framewire.AsyncClient.run("true") x 1000 over 16 connections against
paramiko's exec_command("true") x 1000 over 16 connections to a local
sshd, in the same run (issue 33's target: at least 10x paramiko's rate).

Usage: python3 bench/py_async.py [--commands 1000] [--conns 16] [--rounds 3] [--python PY]

Starts a `framewire serve --allow-exec` (target/release/framewire, a key
file) and an sshd (its own host key and authorized key, on 127.0.0.1,
a free port), both ended by PID at the end. PY is a Python with the
package installed (`pip install ./python`; default: target/pyenv) and
paramiko (installed into it if missing). Each round, in turn: framewire
(one asyncio program: 16 AsyncClients, connected first, then the
commands gathered) and paramiko (16 SSHClients, connected first, one
thread each, the commands shared out). Connecting is not timed for
either; each command's exit status is checked. Prints commands per
second, median and min-max, and the ratio.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "framewire")

FRAMEWIRE = r"""
import asyncio, sys, time, framewire
addr, key, n, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
async def main():
    clients = [framewire.AsyncClient(addr, key_file=key) for _ in range(conns)]
    await asyncio.gather(*(c.connect() for c in clients))
    t = time.perf_counter()
    done = await asyncio.gather(*(clients[i % conns].run("true") for i in range(n)))
    took = time.perf_counter() - t
    assert all(r.returncode == 0 for r in done)
    for c in clients:
        await c.close()
    print(took)
asyncio.run(main())
"""

PARAMIKO = r"""
import sys, threading, time, paramiko
port, ident, n, conns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
clients = []
for _ in range(conns):
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    c.connect("127.0.0.1", port=port, username="root", key_filename=ident, look_for_keys=False, allow_agent=False)
    clients.append(c)
codes = []
def work(c, count):
    for _ in range(count):
        _, out, _ = c.exec_command("true")
        codes.append(out.channel.recv_exit_status())
t = time.perf_counter()
threads = [threading.Thread(target=work, args=(c, n // conns + (1 if k < n % conns else 0))) for k, c in enumerate(clients)]
for th in threads: th.start()
for th in threads: th.join()
took = time.perf_counter() - t
assert codes == [0] * n, codes[:5]
for c in clients: c.close()
print(took)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=os.path.join(ROOT, "target", "pyenv", "bin", "python"))
    args = ap.parse_args()
    if subprocess.run([args.python, "-c", "import paramiko"], capture_output=True).returncode != 0:
        subprocess.run([args.python, "-m", "pip", "install", "-q", "paramiko"], check=True)
    work = tempfile.mkdtemp(prefix="fw-pyasync-")
    procs = []
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        key = os.path.join(work, "key")
        subprocess.run([BIN, "keygen", key], check=True, capture_output=True)
        fw = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--root", root, "--allow-exec",
                               "--key-file", key], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(fw)
        while "listening on" not in (line := fw.stdout.readline()):
            if not line:
                raise SystemExit("framewire serve did not start")
        addr = line.split("listening on", 1)[1].split()[0]
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(work, name)], check=True)
        shutil.copy(os.path.join(work, "client.pub"), os.path.join(work, "authorized_keys"))
        port = free_port()
        with open(os.path.join(work, "sshd_config"), "w") as f:
            f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host\n"
                    f"AuthorizedKeysFile {work}/authorized_keys\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nMaxSessions 64\n"
                    "MaxStartups 64\n")
        os.makedirs("/run/sshd", exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        procs.append(subprocess.Popen([sshd, "-D", "-e", "-f", os.path.join(work, "sshd_config")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                import time
                time.sleep(0.1)
        n, c = str(args.commands), str(args.conns)
        peers = [
            ("framewire AsyncClient", [args.python, "-c", FRAMEWIRE, addr, key, n, c]),
            ("paramiko exec_command", [args.python, "-c", PARAMIKO, str(port), os.path.join(work, "client"), n, c]),
        ]
        times = {name: [] for name, _ in peers}
        for r in range(args.rounds):
            order = peers[r % 2:] + peers[:r % 2]
            for name, cmd in order:
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
                times[name].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        print(f"\n{args.commands} commands over {args.conns} connections, {args.rounds} rounds\n")
        print("| peer | commands/s, median (min-max) | seconds, median |\n|---|---|---|")
        rate = {}
        for name, ts in times.items():
            rates = [args.commands / t for t in ts]
            rate[name] = statistics.median(rates)
            print(f"| {name} | {rate[name]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(ts):.2f} |")
        ratio = rate["framewire AsyncClient"] / rate["paramiko exec_command"]
        print(f"\nframewire / paramiko: {ratio:.1f}x the commands per second (target: at least 10x)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
