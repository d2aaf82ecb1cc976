#!/usr/bin/env python3
"""The door under a flood: how long a keyed client waits while thousands of
sockets that never speak are held open against the server, each reopened
as soon as the server closes it; and whether a burst of honest keyed
clients at once is all served.

Usage: python3 bench/door.py [--baseline OLD_BINARY] [--silent 2000]
                             [--clients 20] [--rounds 3] [--burst 500]
                             [--baseline-rounds 1] [--binary BIN]
                             [--hello] [--no-build]

For each binary (target/release/framewire or --binary, and the baseline
if given, in the same run), for each flood below, starts a fresh `framewire serve
--allow-exec --key-file KEY` on 127.0.0.1, opens SILENT sockets that send
nothing (a process of its own, non-blocking sockets bound to their source
address before connecting), waits until all are connected and 1 s more,
then runs CLIENTS keyed clients in a row, each `framewire exec -n
--key-file KEY 127.0.0.1:PORT -- true` from 127.0.0.1, the current
client whichever server is measured (a fresh process:
start, TCP, the prefaces, TLS 1.3, the key proof, the exec), timing each
from start to exit. Every flood socket the server closes is reopened at
once, as an attacker would. The floods:

  none             no flood (the floor);
  own address      SILENT sockets from 127.0.0.1, the client's own;
  4 others         spread over 127.0.0.2 ... 127.0.0.5;
  100 others       spread over 127.0.1.1 ... 127.0.1.100;
  own, 1,024 fds   from 127.0.0.1, against a server started with an
                   open-file limit of 1,024, soft and hard (so that the
                   flood does not fit: the server must make room).

With --hello, every flood socket sends, the moment it connects, a keyed
preface and a whole TLS 1.3 ClientHello (made by Python's ssl module),
then nothing more: each passes both silent sets and waits for a place in
the handshake table, where the server answers its hello and waits for
the rest (the review of issue 28's flood; "own, 1,024 fds" is then left
out, the silent sets being what it tests).

Reported per flood and binary: clients served (exit 0 within the client's
own 10 s handshake limit), the median, min-max and p99 (nearest rank)
seconds over all rounds' clients, and how often the flood reopened a
socket per second (how hard the server churned), and the server's
largest RSS, read after each round's clients with the flood still on.
Then the burst: BURST
keyed clients at once, `framewire exec -f BURST -w 'h[001-BURST]' --
true` with every alias naming the same server (a config file), no flood:
the wall time, and how many the server's request log shows served (the
current client against each server).

The baseline runs BASELINE_ROUNDS rounds (its floods may make each client
wait its whole 10 s). Raises its own open-file limit to the hard limit
(the servers inherit it, but for the 1,024 case). Every process it starts,
it ends, by PID; every socket goes to 127.0.0.0/8 only.
"""

import argparse
import math
import multiprocessing
import os
import re
import resource
import selectors
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, Procs, free_port  # noqa: E402

CLIENT = [BIN]  # the client every flood is measured with: --binary
FLOODS = [
    ("none", 0, None, None),
    ("own address", 1, lambda i: "127.0.0.1", None),
    ("4 others", 4, lambda i: f"127.0.0.{2 + i}", None),
    ("100 others", 100, lambda i: f"127.0.1.{1 + i}", None),
    ("own, 1,024 fds", 1, lambda i: "127.0.0.1", 1024),
]
# The longest a flood may run (each scenario ends it well before).
FLOOD_LIMIT = 900


def client_hello():
    """A keyed framewire preface and a whole TLS 1.3 ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="framewire")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[0] == 22, "a handshake record"
    return bytes([0x89, ord("F"), ord("W"), ord("R"), 0, 1, 0, 1]) + hello


def flood(port, sources, n, ready, stop, reopened, say=b""):
    """Holds `n` sockets to 127.0.0.1:`port` open from `sources`, each
    sending `say` once connected and nothing more, reopening each as soon
    as the server closes it, until `stop` is set (or FLOOD_LIMIT seconds).
    Sets `ready` once all are connected."""
    sel = selectors.DefaultSelector()
    connected = 0
    pending = {}  # socket -> slot, until its connect completes

    def open_slot(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        s.connect_ex(("127.0.0.1", port))
        pending[s] = i
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)

    for i in range(n):
        open_slot(i)
    end = time.time() + FLOOD_LIMIT
    count = 0
    while not stop.is_set() and time.time() < end:
        for key, events in sel.select(0.05):
            s, i = key.fileobj, key.data
            if s in pending and events & selectors.EVENT_WRITE:
                del pending[s]
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    if say:
                        try:
                            s.send(say)  # fits an empty socket buffer
                        except OSError:
                            pass
                    sel.modify(s, selectors.EVENT_READ, i)
                    connected += 1
                    if connected == n:
                        ready.set()
                    continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a refusal on its way: read it to its end
            sel.unregister(s)
            s.close()
            pending.pop(s, None)
            count += 1
            open_slot(i)
        reopened.value = count
    for key in list(sel.get_map().values()):
        # No TIME_WAIT left behind on the flood's ports.
        key.fileobj.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        key.fileobj.close()


def start_server(procs, binary, port, root, key, logpath, nofile=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = open(logpath, "ab")
    p = procs.start([binary, "serve", "--listen", f"127.0.0.1:{port}", "--root", root, "--allow-exec",
                     "--key-file", key], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    preexec_fn=limit if nofile else None)
    log.close()
    line = p.stdout.readline().decode(errors="replace")
    if not line.startswith("listening on"):
        raise RuntimeError(f"{binary} serve did not start: {line!r} {open(logpath).read()[-1000:]}")
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    p.stdout.close()


def one_client(key, port):
    """Seconds a keyed `exec -- true` took (the current client, whichever
    server), and whether it succeeded."""
    t = time.perf_counter()
    try:
        r = subprocess.run([CLIENT[0], "exec", "-n", "--key-file", key, f"127.0.0.1:{port}", "--", "true"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        ok = r.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return time.perf_counter() - t, ok


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def p99(xs):
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def scenario(procs, binary, work, key, fl, args, rounds):
    name, nsources, source, nofile = fl
    times, served, total, rates, rss = [], 0, 0, [], []
    for _ in range(rounds):
        port = free_port()
        log = os.path.join(work, f"serve-{os.path.basename(binary)}-{port}.log")
        srv = start_server(procs, binary, port, work, key, log, nofile)
        try:
            one_client(key, port)  # warm: page cache, the server's first TLS
            fproc = None
            if nsources:
                ready, halt = multiprocessing.Event(), multiprocessing.Event()
                reopened = multiprocessing.Value("q", 0)
                sources = [source(i) for i in range(nsources)]
                say = client_hello() if args.hello else b""
                fproc = multiprocessing.Process(target=flood,
                                                args=(port, sources, args.silent, ready, halt, reopened, say))
                fproc.start()
                if not ready.wait(120):
                    raise RuntimeError(f"{name}: the flood did not connect in 120 s")
                time.sleep(1)
                r0, t0 = reopened.value, time.perf_counter()
            try:
                for _ in range(args.clients):
                    secs, ok = one_client(key, port)
                    total += 1
                    if ok:
                        served += 1
                        times.append(secs)
                rss.append(rss_mib(srv.pid))
            finally:
                if fproc:
                    rates.append((reopened.value - r0) / (time.perf_counter() - t0))
                    halt.set()
                    fproc.join(30)
                    if fproc.is_alive():
                        fproc.kill()
                        fproc.join()
        finally:
            stop(srv)
    return times, served, total, rates, rss


def burst(procs, binary, work, key, n):
    port = free_port()
    log = os.path.join(work, f"burst-{os.path.basename(binary)}-{port}.log")
    srv = start_server(procs, binary, port, work, key, log)
    config = os.path.join(work, f"burst-{port}.toml")
    with open(config, "w") as f:
        f.write(f'[defaults]\nkey-file = "{key}"\nport = {port}\n')
        for i in range(1, n + 1):
            f.write(f'[hosts.h{i:03}]\naddress = "127.0.0.1"\n')
    env = dict(os.environ, FRAMEWIRE_CONFIG=config)
    env.pop("FRAMEWIRE_KEY_FILE", None)
    try:
        t = time.perf_counter()
        r = subprocess.run([CLIENT[0], "exec", "-f", str(n), "-w", f"h[001-{n:03}]", "--", "true"], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        secs = time.perf_counter() - t
    finally:
        stop(srv)
    served = sum(1 for ln in open(log, errors="replace") if 'request="exec"' in ln and "result=exit 0" in ln)
    return secs, r.returncode, served


def fmt(xs):
    if not xs:
        return "–", "–", "–"
    return f"{statistics.median(xs):.3f}", f"{min(xs):.3f}–{max(xs):.3f}", f"{p99(xs):.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="an older framewire binary, measured in the same run")
    ap.add_argument("--silent", type=int, default=2000, help="sockets in each flood")
    ap.add_argument("--clients", type=int, default=20, help="keyed clients in a row, each round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-rounds", type=int, default=1)
    ap.add_argument("--burst", type=int, default=500, help="keyed clients at once (0: none)")
    ap.add_argument("--binary", default=BIN, help="the current binary (default: target/release/framewire)")
    ap.add_argument("--hello", action="store_true",
                    help="flood sockets send a preface and a whole TLS hello, then stall")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    args = ap.parse_args()
    floods = [fl for fl in FLOODS if not (args.hello and fl[3])]
    CLIENT[0] = os.path.abspath(args.binary)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * args.silent + 2 * args.burst + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        raise SystemExit(f"the open-file hard limit ({hard}) is below the {want} this run needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))
    binaries = [("current", CLIENT[0], args.rounds)]
    if args.baseline:
        binaries.append(("baseline", os.path.abspath(args.baseline), args.baseline_rounds))

    work = tempfile.mkdtemp(prefix="fw-door-", dir="/dev/shm")
    procs = Procs()
    results = {}
    try:
        key = os.path.join(work, "fw.key")
        subprocess.run([CLIENT[0], "keygen", key], check=True, stderr=subprocess.DEVNULL)
        for fl in floods:
            for label, binary, rounds in binaries:
                t = time.time()
                results[(fl[0], label)] = scenario(procs, binary, work, key, fl, args, rounds)
                times, served, total, _, _ = results[(fl[0], label)]
                print(f"# {fl[0]}, {label}: {served}/{total} served, median {fmt(times)[0]} s "
                      f"({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
        bursts = {}
        if args.burst:
            for label, binary, _ in binaries:
                bursts[label] = burst(procs, binary, work, key, args.burst)
    finally:
        procs.stop()
        subprocess.run(["rm", "-rf", work])

    kind = "sockets sending a preface and a TLS hello, then stalling" if args.hello else "silent sockets"
    print(f"\n{args.silent} {kind}, reopened as closed; {args.clients} keyed clients in a row "
          f"(`exec -- true`), {args.rounds} rounds (baseline {args.baseline_rounds}):\n")
    print("| flood | binary | served | median s | min–max s | p99 s | reopened /s | server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for fl in floods:
        for label, _, _ in binaries:
            times, served, total, rates, rss = results[(fl[0], label)]
            med, rng, q = fmt(times)
            rate = f"{statistics.median(rates):,.0f}" if rates else "–"
            print(f"| {fl[0]} | {label} | {served}/{total} | {med} | {rng} | {q} | {rate} | {max(rss):.0f} |")
    if bursts:
        print(f"\nA burst of {args.burst} keyed clients at once (`exec -f {args.burst} -- true`), no flood:\n")
        print("| binary | exit | served (server log) | wall s |")
        print("|---|---|---|---|")
        for label, (secs, code, served) in bursts.items():
            print(f"| {label} | {code} | {served}/{args.burst} | {secs:.2f} |")


if __name__ == "__main__":
    main()
