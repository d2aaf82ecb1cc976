#!/usr/bin/env python3
"""Fleet benchmark: framewire's fan-out (`exec -w`, `put -w`) against pdsh,
pdcp and ClusterShell's clush over ssh, on many loopback addresses, all in
the same run.

Usage: python3 bench/fleet.py [--rounds 5] [--hosts 100] [--put-hosts 20]
                              [--put-mib 64] [--big 1000] [--fanout 64]
                              [--ssh-kex curve25519-sha256]
                              [--only-framewire] [--no-build]

Every "host" is a loopback address of its own (127.0.0.2 ... for the
HOSTS hosts, 127.0.1.1 ... 127.0.4.250 for the BIG ones), all on the same
port. Each of the HOSTS and BIG addresses gets a `framewire serve
--allow-exec --key-file KEY` process of its own (TLS + key, as a fleet
would run), started once before the rounds; the clients name them through
a config file (`[defaults] key-file, port`, FRAMEWIRE_CONFIG) and a host
set (`-w 127.0.0.[2-101]`). sshd, with a throwaway config, host key and
client key, listens on the same HOSTS addresses (one ListenAddress line
each, a port of its own); as one sshd listens on 16 sockets at most
(MAX_LISTEN_SOCKS), the addresses are shared out among ceil(HOSTS / 16)
sshd processes with the same config, each only accepting and forking as
one would. Measured, each run's wall time:

  exec on HOSTS hosts   `framewire exec -f 64 -w HOSTS -- true` against
                        `pdsh -R ssh -S -f 64 -w HOSTS true` and
                        `clush --maxrc -f 64 -w HOSTS true` (-S and
                        --maxrc only make the exit status the largest
                        remote one, so that a failed host fails the run);
  put to PUT_HOSTS      a PUT_MIB MiB random file: `framewire put -w
                        PUT_HOSTS FILE dest/` against `pdcp -R ssh -f 64
                        -w PUT_HOSTS FILE dest/` and `clush --maxrc -f 64
                        -w PUT_HOSTS --copy FILE --dest dest/`;
  exec on BIG hosts     `framewire exec -f 64 -w BIG -- true`, framewire
                        alone, with the client's peak RSS.

The ssh tools get what makes ssh quickest here, as bench/transfer.py gives
scp: `-c aes128-gcm@openssh.com` and (--ssh-kex, `default` for OpenSSH's
own sntrup761x25519) `KexAlgorithms curve25519-sha256`; no connection
sharing. sshd runs as root; root's ~/.bashrc, which a Debian bash started
by sshd reads and which here runs `pyenv init`, is kept out (sshd sets
SHLVL=1) so that this VM's shell setup is not what is measured. Each
sshd ListenAddress has a `Match LocalAddress` whose ForceCommand changes
to that host's directory before running the command: the same directory
the host's framewire server serves, so that every tool's relative `dest/`
lands in a directory of that host's own, as it would on separate machines.
That directory holds /dev/shm (the disk is not what is measured), and its
`dest/` is emptied before each put.

Every run is checked (untimed): its exit status; on the server side, that
each host served it exactly once (each framewire server's request log; the
sshd log's `Connection from ... on ADDR`, at LogLevel VERBOSE); after a
put, every host's copy at its size and one host's (in turn) by SHA-256.
Before the rounds, each exec peer runs `echo x` once and must print
exactly one `HOST: x` line for every host. The peer order turns by one
each round.

Installs openssh-server, openssh-client, pdsh, clustershell and time
(Debian packages) if missing, raises its open-file limit for the servers'
pipes, checks that the BIG servers fit in memory (and takes fewer, saying
so, if not), and prints Markdown tables: each peer's median and min-max
seconds over the rounds, its client's peak RSS (as /usr/bin/time reports
it: for pdsh and clush, their largest process), CPU seconds (the client's,
as /usr/bin/time reports them for the command and what it reaped; and the
whole machine's from /proc/stat, from the run's start to 0.3 s after its
end: clients, servers, sshd and anything else), and the ratios, with the
targets beside them. --only-framewire leaves sshd, pdsh and clush out (and does not
install them). --no-build uses target/release/framewire as it is instead
of running `cargo build --release -q` first. Every process it starts, it
ends, by PID.
"""

import argparse
import collections
import hashlib
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import BIN, ROOT, TICK, free_port  # noqa: E402

TIME = "/usr/bin/time"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def ensure_tools(only_framewire):
    """sshd, ssh, pdsh, pdcp, clush (unless only framewire is measured) and
    /usr/bin/time (for the clients' peak RSS)."""
    pkgs = []
    if not only_framewire:
        for tool, pkg in (("sshd", "openssh-server"), ("ssh", "openssh-client"), ("pdsh", "pdsh"),
                          ("pdcp", "pdsh"), ("clush", "clustershell")):
            if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool) and pkg not in pkgs:
                pkgs.append(pkg)
    if not os.access(TIME, os.X_OK):
        pkgs.append("time")
    if pkgs:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + pkgs, check=True, env=env, stdout=subprocess.DEVNULL)


class Procs:
    """Processes this script started; ended by PID on exit, all signalled
    first and then waited for (a thousand servers, one after the other,
    would take long)."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in self.procs:
            if p.stdout:
                p.stdout.close()


def run(cmd, timeout, env=None, capture=False):
    """Runs `cmd` (stdin /dev/null) in a session of its own, fails if it
    fails; returns (seconds, peak RSS KiB, client CPU seconds, stdout or
    None, stderr). RSS and CPU are what /usr/bin/time reports for the
    command and what it reaped: every command runs so, for the same small
    cost to all. A run over the time limit is ended with everything it
    started."""
    with tempfile.NamedTemporaryFile(mode="r") as res, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        wrap = [TIME, "-f", "%M %U %S", "-o", res.name]
        t = time.perf_counter()
        p = subprocess.Popen(wrap + cmd, stdin=subprocess.DEVNULL, stdout=out if capture else subprocess.DEVNULL,
                             stderr=err, env=env, start_new_session=True)
        late = threading.Event()

        def overtime():
            late.set()
            os.killpg(p.pid, signal.SIGKILL)  # the session this command leads, not yet reaped

        timer = threading.Timer(timeout, overtime)
        timer.start()
        try:
            p.wait()  # a blocking wait: Popen.wait(timeout) polls, which would round the times
        finally:
            timer.cancel()
        secs = time.perf_counter() - t
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if late.is_set():
            raise RuntimeError(f"{shlex.join(cmd)} took over {timeout} s")
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode} after {secs:.1f} s: {stderr.strip()[-2000:]}")
        fields = res.read().split()[-3:]
        rss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
        stdout = None
        if capture:
            out.seek(0)
            stdout = out.read().decode(errors="replace")
        return secs, rss, cpu, stdout, stderr


class Log:
    """A file others append to; `new()` is what was added since the last call."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def new(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


def status_kib(pid, field, name="status"):
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def meminfo_kib(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def big_addresses(n):
    """127.0.1.1 ... 127.0.1.250, 127.0.2.1 ...: n addresses, and the host
    set naming them."""
    addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
    full, rest = divmod(n, 250)
    sets = []
    if full:
        sets.append(f"127.0.[1-{full}].[1-250]" if full > 1 else "127.0.1.[1-250]")
    if rest:
        sets.append(f"127.0.{full + 1}.[1-{rest}]")
    return addrs, sets


def wflags(sets):
    out = []
    for s in sets:
        out += ["-w", s]
    return out


class Servers:
    """`framewire serve` processes, one per address, each with its own log."""

    def __init__(self, procs, key, port, logdir):
        self.procs, self.key, self.port, self.logdir = procs, key, port, logdir
        self.by_addr = {}  # addr -> (Popen, Log)

    def start(self, addrs, root_of):
        started = []
        for a in addrs:
            path = os.path.join(self.logdir, a + ".log")
            with open(path, "wb") as log:
                p = self.procs.start([BIN, "serve", "--listen", f"{a}:{self.port}", "--root", root_of(a),
                                      "--allow-exec", "--key-file", self.key],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            started.append((a, p, Log(path)))
        for a, p, log in started:  # each says `listening on ADDR` when ready
            line = p.stdout.readline().decode(errors="replace")
            if not line.startswith("listening on"):
                raise RuntimeError(f"framewire serve on {a}:{self.port} did not start: {line!r} "
                                   f"{open(log.path).read()[-1000:]}")
            self.by_addr[a] = (p, log)

    def check(self, addrs, request, result, exactly_once, what):
        """Each of `addrs` logged `request` with `result` since the last
        check (exactly once if `exactly_once`), and nothing else failed."""
        bad = []
        for a in addrs:
            lines = [ln for ln in self.by_addr[a][1].new().splitlines() if " request=" in ln]
            ok = sum(1 for ln in lines if f'request="{request}"' in ln and f"result={result}" in ln)
            if ok == 0 or (exactly_once and ok != 1):
                bad.append(f"{a}: {ok} x {request} {result} in {lines[-3:]}")
        if bad:
            raise RuntimeError(f"{what}: {len(bad)} of {len(addrs)} hosts not served as expected: {bad[:3]}")


# sshd listens on at most 16 sockets (MAX_LISTEN_SOCKS in its source: "Too
# many listen sockets"), so the addresses are shared out among as many
# sshd processes as that takes, each with the same config but its own
# ListenAddress lines and log. Each listener only accepts and forks; the
# work of a connection is in the process it forks, as with one sshd.
SSHD_MAX_LISTEN = 16


def start_sshd(procs, work, addrs, port, dir_of, kex):
    """sshd on every address of `addrs`, port `port`, its commands run in
    dir_of(local address); returns (ssh options as one string, the sshd
    processes, their logs)."""
    keys = os.path.join(work, "ssh")
    os.mkdir(keys, 0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(keys, name)], check=True)
    shutil.copy(os.path.join(keys, "client.pub"), os.path.join(keys, "authorized_keys"))
    os.makedirs("/run/sshd", exist_ok=True)
    srvs, logs = [], []
    for i in range(0, len(addrs), SSHD_MAX_LISTEN):
        mine = addrs[i:i + SSHD_MAX_LISTEN]
        conf = os.path.join(keys, f"sshd_config.{i // SSHD_MAX_LISTEN}")
        log = os.path.join(keys, f"sshd.{i // SSHD_MAX_LISTEN}.log")
        with open(conf, "w") as f:
            f.write("".join(f"ListenAddress {a}:{port}\n" for a in mine))
            f.write(f"HostKey {keys}/host\nAuthorizedKeysFile {keys}/authorized_keys\nPermitRootLogin yes\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                    "PidFile none\nUseDNS no\nPrintMotd no\nPrintLastLog no\nPermitUserRC no\nX11Forwarding no\n"
                    "MaxStartups 1000\nMaxSessions 100\nLogLevel VERBOSE\nSetEnv SHLVL=1\n"
                    "Subsystem sftp /usr/lib/openssh/sftp-server\n")
            for a in mine:
                cmd = f'cd {shlex.quote(dir_of(a))} && eval "$SSH_ORIGINAL_COMMAND"'
                f.write(f"Match LocalAddress {a}\n  ForceCommand {cmd}\n")
        subprocess.run([SSHD, "-t", "-f", conf], check=True)
        srv = procs.start([SSHD, "-D", "-f", conf, "-E", log], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex((mine[-1], port)) == 0:
                    break
            if time.time() > deadline or srv.poll() is not None:
                raise RuntimeError(f"sshd did not start: {open(log).read()[-1000:] if os.path.exists(log) else ''}")
            time.sleep(0.05)
        srvs.append(srv)
        logs.append(Log(log))
    time.sleep(0.3)
    for log in logs:
        log.new()  # the readiness probes' connections
    opts = [f"-oPort={port}", f"-oIdentityFile={keys}/client", "-oStrictHostKeyChecking=no",
            "-oUserKnownHostsFile=/dev/null", "-oBatchMode=yes", "-oLogLevel=ERROR", "-oControlMaster=no",
            "-oControlPath=none", "-oCiphers=aes128-gcm@openssh.com"]
    if kex != "default":
        opts.append(f"-oKexAlgorithms={kex}")
    return " ".join(opts), srvs, logs


CONN_RE = re.compile(r"Connection from \S+ port \d+ on (\S+) port (\d+)")


def check_sshd(logs, port, addrs, what):
    """Each of `addrs` took exactly one ssh connection since the last check,
    and each connection authenticated."""
    text = "".join(log.new() for log in logs)
    per = collections.Counter(m.group(1) for m in CONN_RE.finditer(text) if int(m.group(2)) == port)
    accepted = text.count("Accepted publickey for root")
    want = collections.Counter(addrs)
    if per != want or accepted != len(addrs):
        missing = sorted(set(want) - set(per))[:3]
        twice = sorted(a for a, c in per.items() if c > 1)[:3]
        raise RuntimeError(f"{what}: sshd saw {sum(per.values())} connections on {len(per)} of {len(addrs)} "
                           f"addresses ({accepted} authenticated; missing e.g. {missing}, more than once e.g. "
                           f"{twice})")


def check_echo(out, addrs, what):
    """`echo x` printed one `HOST: x` line for every host, and nothing else."""
    lines = out.splitlines()
    got = collections.Counter(ln.split(": ", 1)[0] for ln in lines if ln.endswith(": x"))
    if len(lines) != len(addrs) or got != collections.Counter(addrs):
        raise RuntimeError(f"{what}: {len(lines)} lines for {len(addrs)} hosts, {len(got)} hosts said x "
                           f"(first lines {lines[:3]})")


def machine_cpu():
    """CPU-seconds the whole machine has been busy (all CPUs, all processes:
    the client, the servers or sshd, and anything else), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / TICK  # user nice system, irq softirq steal


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hosts", type=int, default=100, help="hosts of the exec comparison (127.0.0.2 ...)")
    ap.add_argument("--put-hosts", type=int, default=20, help="hosts of the put comparison (the first of --hosts)")
    ap.add_argument("--put-mib", type=int, default=64, help="size of the file put")
    ap.add_argument("--big", type=int, default=1000, help="hosts of the framewire-alone exec (0: none)")
    ap.add_argument("--fanout", type=int, default=64, help="-f of every tool")
    ap.add_argument("--ssh-kex", default="curve25519-sha256",
                    help="KexAlgorithms for the ssh tools; `default` for OpenSSH's own")
    ap.add_argument("--timeout", type=float, default=300, help="seconds any one command may take")
    ap.add_argument("--only-framewire", action="store_true", help="leave sshd, pdsh and clush out")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    args = ap.parse_args()
    if args.rounds < 1 or not 1 <= args.hosts <= 250 or not 1 <= args.put_hosts <= args.hosts \
            or args.put_mib < 1 or not 0 <= args.big <= 250 * 250 or args.fanout < 1:
        ap.error("--rounds, --put-mib, --fanout at least 1; 1 <= --put-hosts <= --hosts <= 250; --big <= 62500")
    ensure_tools(args.only_framewire)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], check=True, cwd=ROOT)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_fds = 4 * (args.hosts + args.big) + 256  # a pipe and a log a server, and the clients' windows
    if hard != resource.RLIM_INFINITY and hard < want_fds:
        raise SystemExit(f"the open-file hard limit ({hard}) is below the {want_fds} this run needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want_fds, hard))
    T = args.timeout
    F = str(args.fanout)

    work = tempfile.mkdtemp(prefix="fw-fleet-", dir="/dev/shm")
    procs = Procs()
    try:
        key = os.path.join(work, "fw.key")
        subprocess.run([BIN, "keygen", key], check=True, stderr=subprocess.DEVNULL)
        port = free_port()
        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(f'[defaults]\nkey-file = "{key}"\nport = {port}\n')
        fw_env = dict(os.environ, FRAMEWIRE_CONFIG=config)
        fw_env.pop("FRAMEWIRE_KEY_FILE", None)
        logdir = os.path.join(work, "logs")
        hostdirs = os.path.join(work, "hosts")
        for d in (logdir, hostdirs):
            os.mkdir(d)

        hosts = [f"127.0.0.{2 + i}" for i in range(args.hosts)]
        hosts_set = [f"127.0.0.[2-{1 + args.hosts}]" if args.hosts > 1 else "127.0.0.2"]
        put_hosts = hosts[:args.put_hosts]
        put_set = f"127.0.0.[2-{1 + args.put_hosts}]" if args.put_hosts > 1 else "127.0.0.2"

        def dir_of(a):
            return os.path.join(hostdirs, a)

        for a in hosts:
            os.mkdir(dir_of(a))
            os.mkdir(os.path.join(dir_of(a), "dest"))
        servers = Servers(procs, key, port, logdir)
        avail0 = meminfo_kib("MemAvailable")
        t0 = time.perf_counter()
        servers.start(hosts, dir_of)
        start_secs = time.perf_counter() - t0
        time.sleep(0.5)
        avail1 = meminfo_kib("MemAvailable")
        # At least 2 MiB a server: MemAvailable moves for other reasons too.
        per_server_kib = max(2048, (avail0 - avail1) / len(hosts))
        print(f"{len(hosts)} framewire servers up in {start_secs:.1f} s; MemAvailable fell "
              f"{(avail0 - avail1) / 1024:.0f} MiB ({per_server_kib / 1024:.1f} MiB a server)", file=sys.stderr)

        big_note = ""
        big_n = args.big
        if big_n:
            # Room for them, with a third of what is available left over.
            fits = int(avail1 * 2 / 3 / per_server_kib)
            if fits < big_n:
                big_note = (f"--big {args.big} servers would take about {big_n * per_server_kib / 1024:.0f} MiB of "
                            f"the {avail1 / 1024:.0f} MiB available; {fits} taken instead")
                print(big_note, file=sys.stderr)
                big_n = fits
        big, big_sets = big_addresses(big_n)
        big_mem = None
        if big:
            big_root = os.path.join(work, "big-root")
            os.mkdir(big_root)
            t0 = time.perf_counter()
            servers.start(big, lambda a: big_root)
            big_start = time.perf_counter() - t0
            time.sleep(1)
            avail2 = meminfo_kib("MemAvailable")
            rss = [status_kib(servers.by_addr[a][0].pid, "VmRSS") for a in big]
            pss = [status_kib(servers.by_addr[a][0].pid, "Pss", "smaps_rollup") for a in big]
            big_mem = (big_start, (avail1 - avail2) / 1024, statistics.median(rss) / 1024, sum(pss) / 1024,
                       avail2 / 1024)
            print(f"{len(big)} more framewire servers up in {big_start:.1f} s; MemAvailable fell "
                  f"{(avail1 - avail2) / 1024:.0f} MiB, {avail2 / 1024:.0f} MiB left", file=sys.stderr)

        # The file put, made once.
        src = os.path.join(work, "src")
        os.mkdir(src)
        blob = os.path.join(src, "big.bin")
        size = args.put_mib << 20
        with open(blob, "wb") as f:
            for _ in range(args.put_mib):
                f.write(os.urandom(1 << 20))
        blob_sha = sha256(blob)

        if not args.only_framewire:
            ssh_port = free_port()
            ssh_opts, sshds, sshd_logs = start_sshd(procs, work, hosts, ssh_port, dir_of, args.ssh_kex)
            ssh_env = dict(os.environ, PDSH_SSH_ARGS_APPEND=ssh_opts)
            ssh_env.pop("PDSH_SSH_ARGS", None)
            ssh_env.pop("PDSH_RCMD_TYPE", None)

        # The peers: (name, group, command(the remote command word), env, verify(what)).
        fw_exec = lambda word, sets: [BIN, "exec", "-f", F] + wflags(sets) + ["--", word]  # noqa: E731
        peers = []
        exec_name = f"framewire exec -f {F}, {len(hosts)} hosts"
        big_name = f"framewire exec -f {F}, {len(big)} hosts"
        fw_put_name = f"framewire put -w, {args.put_mib} MiB × {len(put_hosts)} hosts"

        def fw_check(addrs, request, result, once):
            return lambda what: servers.check(addrs, request, result, once, what)

        peers.append((exec_name, "exec", lambda w: fw_exec(w, hosts_set), fw_env,
                      fw_check(hosts, "exec", "exit 0", True)))
        if not args.only_framewire:
            ssh_check = lambda addrs: (lambda what: check_sshd(sshd_logs, ssh_port, addrs, what))  # noqa: E731
            peers.append((f"pdsh -R ssh -S -f {F}, {len(hosts)} hosts", "exec",
                          lambda w: ["pdsh", "-R", "ssh", "-S", "-f", F] + wflags(hosts_set) + [w], ssh_env,
                          ssh_check(hosts)))
            peers.append((f"clush --maxrc -f {F}, {len(hosts)} hosts", "exec",
                          lambda w: ["clush", "--maxrc", "-f", F] + wflags(hosts_set) + ["-o", ssh_opts, w],
                          ssh_env, ssh_check(hosts)))
        peers.append((fw_put_name, "put", lambda _: [BIN, "put", "--fanout", F, "-w", put_set, blob, "dest/"],
                      fw_env, fw_check(put_hosts, "put", "ok", True)))
        if not args.only_framewire:
            peers.append((f"pdcp -R ssh -f {F}, {args.put_mib} MiB × {len(put_hosts)} hosts", "put",
                          lambda _: ["pdcp", "-R", "ssh", "-f", F, "-w", put_set, blob, "dest/"], ssh_env,
                          ssh_check(put_hosts)))
            peers.append((f"clush -f {F} --copy, {args.put_mib} MiB × {len(put_hosts)} hosts", "put",
                          lambda _: ["clush", "--maxrc", "-f", F, "-w", put_set, "-o", ssh_opts, "--copy", blob,
                                     "--dest", "dest/"], ssh_env, ssh_check(put_hosts)))
        if big:
            peers.append((big_name, "big", lambda w: fw_exec(w, big_sets), fw_env,
                          fw_check(big, "exec", "exit 0", True)))

        # Untimed: every exec peer prints `HOST: x` once for every host.
        for name, group, cmd, env, verify in peers:
            if group == "put":
                continue
            addrs = big if group == "big" else hosts
            _, _, _, out, _ = run(cmd("echo x"), T, env=env, capture=True)
            check_echo(out, addrs, f"{name}, echo x")
            time.sleep(0.3)
            verify(f"{name}, echo x")
            print(f"checked: {name} printed x once for each of {len(addrs)} hosts", file=sys.stderr)

        secs = {p[0]: [] for p in peers}
        rss = {p[0]: [] for p in peers}
        ccpu = {p[0]: [] for p in peers}
        mcpu = {p[0]: [] for p in peers}
        warnings = collections.Counter()
        turn = 0
        for r in range(args.rounds):
            for k in range(len(peers)):
                name, group, cmd, env, verify = peers[(k + r) % len(peers)]
                if group == "put":
                    for a in put_hosts:
                        fresh(os.path.join(dir_of(a), "dest"))
                m0 = machine_cpu()
                t, m, c, _, err = run(cmd("true"), T, env=env)
                time.sleep(0.3)  # let sshd reap its per-connection processes, the servers log
                mcpu[name].append(machine_cpu() - m0)
                verify(name)
                if group == "put":
                    for a in put_hosts:
                        got = os.path.getsize(os.path.join(dir_of(a), "dest", "big.bin"))
                        if got != size:
                            raise RuntimeError(f"{name}: {a} holds {got} bytes of {size}")
                    one = put_hosts[turn % len(put_hosts)]
                    turn += 1
                    if sha256(os.path.join(dir_of(one), "dest", "big.bin")) != blob_sha:
                        raise RuntimeError(f"{name}: {one}'s copy differs from the source")
                # framewire put says one line a host; clush --copy draws a counter (`clush: 13/20`)
                if name.startswith("framewire put"):
                    err = ""
                err = re.sub(r"clush:\s+\d+/\d+\s*", "", err)
                if err.strip():
                    warnings[name] += 1
                    if warnings[name] == 1:
                        print(f"{name} wrote on stderr: {err.strip()[:300]}", file=sys.stderr)
                secs[name].append(t)
                rss[name].append(m)
                ccpu[name].append(c)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        med = {n: statistics.median(v) for n, v in secs.items()}

        def row(n, extra=""):
            v = secs[n]
            return (f"| {n} | {med[n]:.3f} | {min(v):.3f}–{max(v):.3f} |{extra} {statistics.median(rss[n]) / 1024:.1f} | "
                    f"{statistics.median(ccpu[n]):.2f} | {statistics.median(mcpu[n]):.2f} |")

        kex = "OpenSSH's default" if args.ssh_kex == "default" else args.ssh_kex
        ssh_note = "" if args.only_framewire else (
            f"; sshd (aes128-gcm, kex {kex}) on the same {len(hosts)} addresses, "
            f"{len(sshds)} sshd processes of {SSHD_MAX_LISTEN} addresses at most")
        print(f"\nLoopback addresses, one host each, TLS + key for framewire{ssh_note}; {args.rounds} rounds, "
              "the order turned each round\n")
        print("Client RSS: the command's peak as /usr/bin/time reports it (pdsh, clush: their largest process).")
        print("CPU, medians: client = the command and what it reaped (/usr/bin/time); machine = every CPU-second")
        print("the machine was busy from the run's start to 0.3 s after its end (/proc/stat: client, servers or")
        print("sshd, and anything else), so machine − client is mostly the servers' side.\n")
        print(f"`true` on {len(hosts)} hosts:\n")
        print("| peer | median s | min–max s | client peak RSS MiB | client CPU s | machine CPU s |")
        print("|---|---|---|---|---|---|")
        for n, g, *_ in peers:
            if g == "exec":
                print(row(n))
        print()
        print(f"{args.put_mib} MiB random file to {len(put_hosts)} hosts (each host's own dest/, /dev/shm):\n")
        print("| peer | median s | min–max s | GB/s, all hosts (median) | client peak RSS MiB | client CPU s | "
              "machine CPU s |")
        print("|---|---|---|---|---|---|---|")
        for n, g, *_ in peers:
            if g == "put":
                print(row(n, f" {size * len(put_hosts) / med[n] / 1e9:.2f} |"))
        print()
        ratios = []
        if not args.only_framewire:
            pd, cl = [p[0] for p in peers if p[1] == "exec"][1:]
            pc, cc = [p[0] for p in peers if p[1] == "put"][1:]
            ratios = [
                (f"pdsh / framewire, exec on {len(hosts)} hosts", pd, exec_name, 10.0),
                (f"clush / framewire, exec on {len(hosts)} hosts", cl, exec_name, 10.0),
                (f"pdcp / framewire, put to {len(put_hosts)} hosts", pc, fw_put_name, None),
                (f"clush --copy / framewire, put to {len(put_hosts)} hosts", cc, fw_put_name, None),
            ]
            print("| ratio of median wall times (higher: framewire faster) | value | target | met |")
            print("|---|---|---|---|")
            for label, a, b, target in ratios:
                v = med[a] / med[b]
                t, ok = (f"≥ {target:g}x", "yes" if v >= target else "no") if target else ("", "")
                print(f"| {label} | {v:.2f}x | {t} | {ok} |")
            print()
        if big:
            print(f"`true` on {len(big)} hosts, framewire alone:\n")
            print("| peer | median s | min–max s | hosts/s (median) | client peak RSS MiB, median (max) | "
                  "client CPU s | machine CPU s |")
            print("|---|---|---|---|---|---|---|")
            v = secs[big_name]
            print(f"| {big_name} | {med[big_name]:.3f} | {min(v):.3f}–{max(v):.3f} | {len(big) / med[big_name]:.0f} | "
                  f"{statistics.median(rss[big_name]) / 1024:.1f} ({max(rss[big_name]) / 1024:.1f}) | "
                  f"{statistics.median(ccpu[big_name]):.2f} | {statistics.median(mcpu[big_name]):.2f} |")
            print()
            bs, fell, rss_med, pss_sum, left = big_mem
            print(f"The {len(big)} servers: started in {bs:.1f} s; MemAvailable fell {fell:.0f} MiB "
                  f"({fell / len(big):.1f} MiB a server; RSS of one {rss_med:.1f} MiB, mostly the shared binary; "
                  f"PSS of all {pss_sum:.0f} MiB); {left:.0f} MiB still available.")
            if big_note:
                print(big_note)
            print()
        if warnings:
            for n, c in warnings.items():
                print(f"{n}: wrote on stderr in {c} of {args.rounds} runs")
        # Anything the servers found wrong, over the whole run.
        bad = []
        for a, (_, log) in servers.by_addr.items():
            with open(log.path, errors="replace") as f:
                bad += [f"{a}: {ln.strip()}" for ln in f if " WARN " in ln or " ERROR " in ln]
        print(f"framewire servers' logs: {len(bad)} WARN or ERROR lines" + (f", e.g. {bad[:3]}" if bad else ""))
        if not args.only_framewire:
            bad = []
            for log in sshd_logs:
                with open(log.path, errors="replace") as f:
                    bad += [ln.strip() for ln in f if "error" in ln.lower() or "fatal" in ln.lower()]
            print(f"sshd logs: {len(bad)} error or fatal lines" + (f", e.g. {bad[:3]}" if bad else ""))
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
