"""framewire.Client against a real `framewire serve` on 127.0.0.1:0 (the
binary `cargo test` or `cargo build` made, or FRAMEWIRE_BIN), over real
files in temporary directories."""

from __future__ import annotations

import _thread
import builtins
import errno
import pickle
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import pytest

import framewire
import framewire.fleet

from conftest import Server, binary


def test_run_gives_what_subprocess_run_gives(server):
    with framewire.Client(server.addr) as c:
        done = c.run("echo out; echo err >&2; exit 3")
        assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
        assert done.args == "echo out; echo err >&2; exit 3"
        assert c.run("true").returncode == 0
        with pytest.raises(framewire.ProcessError) as e:
            c.run("echo partial; false", check=True)
        assert e.value.result.returncode == 1 and e.value.result.stdout == b"partial\n"
        assert c.run("printf %s \"$GREETING\"", env={"GREETING": "hello there"}).stdout == b"hello there"
        assert c.run("tr a-z A-Z", stdin=b"shout\n").stdout == b"SHOUT\n"
        assert c.run("cat", timeout=20).stdout == b"", "no stdin: closed at once"
        # Ended by a signal: minus the signal, as subprocess has it.
        assert c.run("kill -TERM $$", timeout=20).returncode == -15
        with pytest.raises(ValueError):
            c.run("true", timeout=-1)
        with pytest.raises(ValueError):
            c.run("true", timeout=float("nan"))
        # A variable the server does not accept (as sshd's AcceptEnv):
        # the command is not run without it, and the connection closes.
        with pytest.raises(framewire.PermissionDenied, match="SECRET"):
            c.run("touch ran", env={"GREETING": "hi", "SECRET": "x"})
        assert not (server.root / "ran").exists()
        with pytest.raises(framewire.ConnectionError):
            c.run("true")


def test_a_command_past_its_timeout_is_killed_and_raised(server):
    with framewire.Client(server.addr) as c:
        started = time.monotonic()
        with pytest.raises(framewire.TimeoutError) as e:
            c.run("echo started; sleep 30", timeout=0.5)
        assert time.monotonic() - started < 20
        assert isinstance(e.value, builtins.TimeoutError)
        assert e.value.result.stdout == b"started\n"
        # The connection goes on.
        assert c.run("echo again").stdout == b"again\n"


def test_files_go_up_and_down_whole_and_checked(server, tmp_path):
    data = os.urandom(3 << 20)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    with framewire.Client(server.addr) as c:
        assert c.mkdir("d") is True
        up = c.put(local, "d/up.bin")
        assert up == {"size": len(data), "resumed": 0, "matched": 0, "blake3": up["blake3"]}
        assert len(up["blake3"]) == 64
        assert (server.root / "d" / "up.bin").read_bytes() == data
        down = c.get("d/up.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == data and down["blake3"] == up["blake3"]
        # The source wins, as with the CLI: a file there is replaced.
        local.write_bytes(b"second")
        c.put(local, "d/up.bin")
        assert (server.root / "d" / "up.bin").read_bytes() == b"second"
        c.get("d/up.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == b"second"
        # Into directories, under the source's name.
        c.put(local, "d")
        assert c.mkdir("e") is True
        c.put(local, "e/")
        assert (server.root / "d" / "up.bin").read_bytes() == b"second"
        assert (server.root / "e" / "up.bin").read_bytes() == b"second"
        into = tmp_path / "into"
        into.mkdir()
        c.get("e/up.bin", into)
        assert (into / "up.bin").read_bytes() == b"second"
        # What is missing, here or there.
        with pytest.raises(framewire.NotFound) as e:
            c.get("no/such.bin", tmp_path / "x.bin")
        assert e.value.code == "not_found"
        assert not (tmp_path / "x.bin").exists()
        with pytest.raises(framewire.LocalError) as e:
            c.put(tmp_path / "missing.bin", "m.bin")
        assert isinstance(e.value, OSError) and e.value.errno == errno.ENOENT
        assert e.value.filename == str(tmp_path / "missing.bin")
        # The connection goes on after each.
        assert c.stat("d/up.bin")["size"] == 6


def test_listing_and_changing_the_tree(server):
    (server.root / "a.txt").write_bytes(b"hello")
    with framewire.Client(server.addr) as c:
        with pytest.raises(framewire.NotFound):
            c.mkdir("x/y")
        assert c.mkdir("x/y", parents=True) is True
        assert c.mkdir("x/y", parents=True) is False
        entry = c.stat("a.txt")
        assert (entry["name"], entry["kind"], entry["size"]) == ("a.txt", "file", 5)
        assert sorted(e["name"] for e in c.ls("")) == ["a.txt", "x"]
        c.rename("a.txt", "x/b.txt")
        assert [e["name"] for e in c.ls("x")] == ["b.txt", "y"]
        with pytest.raises(framewire.RemoteError):
            c.remove("x")
        assert c.remove("x", recursive=True) is True
        assert c.ls("") == []
        with pytest.raises(framewire.NotFound):
            c.stat("x")


def test_keys_and_connections(tmp_path):
    key, wrong = tmp_path / "key", tmp_path / "wrong"
    for k in (key, wrong):
        subprocess.run([binary(), "keygen", str(k)], check=True, capture_output=True)
    root = tmp_path / "root"
    root.mkdir()
    s = Server(root, "--allow-exec", "--key-file", str(key))
    try:
        with pytest.raises(framewire.AuthenticationError):
            framewire.Client(s.addr)
        with pytest.raises(framewire.AuthenticationError):
            framewire.Client(s.addr, key_file=wrong)
        with framewire.Client(s.addr, key_file=key) as c:
            assert c.run("echo keyed").stdout == b"keyed\n"
        c.close()
        with pytest.raises(framewire.ConnectionError):
            c.run("true")
    finally:
        s.stop()
    # A closed port on loopback: refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(framewire.ConnectionError) as e:
        framewire.Client(f"127.0.0.1:{port}")
    assert isinstance(e.value, builtins.ConnectionError) and isinstance(e.value, framewire.Error)


def test_calls_release_the_gil(server):
    # Two clients in two threads, each running `sleep 2`: together in
    # about 2 s if the GIL is released while they wait, 4 s if not.
    clients = [framewire.Client(server.addr) for _ in range(2)]
    codes = []
    threads = [threading.Thread(target=lambda c=c: codes.append(c.run("sleep 2", timeout=20).returncode)) for c in clients]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    for c in clients:
        c.close()
    assert codes == [0, 0]
    assert 1.9 <= took < 3.5, f"{took:.1f} s: the calls ran one after the other"


def test_ctrl_c_interrupts_a_call_and_closes_its_connection(server):
    # Ctrl-C as a terminal's: a run started in the background of a
    # script inherits SIGINT ignored, and Python then leaves it ignored
    # (interrupt_main would do nothing).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        c = framewire.Client(server.addr)
        timer = threading.Timer(0.5, _thread.interrupt_main)
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            c.run("sleep 30")
        assert time.monotonic() - started < 10
        with pytest.raises(framewire.ConnectionError):
            c.run("true")
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_process_error_survives_pickling():
    result = subprocess.CompletedProcess("false", 1, b"out", b"err")
    again = pickle.loads(pickle.dumps(framewire.ProcessError(result)))
    assert isinstance(again, framewire.ProcessError)
    assert (again.result.returncode, again.result.stdout) == (1, b"out")
    assert str(again) == "command 'false' exited with status 1"


def test_run_on_a_terminal(server):
    with framewire.Client(server.addr) as c:
        assert c.run("tty").returncode != 0, "no terminal unless asked"
        on = c.run("tty; echo to-stderr >&2", pty=True, timeout=20)
        assert on.returncode == 0 and on.stdout.startswith(b"/dev/pts/"), on
        assert b"to-stderr" in on.stdout and on.stderr == b"", "a terminal has one output"
        typed = c.run("read line; echo got:$line", pty=True, stdin=b"hello\n", timeout=20)
        assert b"got:hello" in typed.stdout
        # The connection goes on, without a terminal again.
        assert c.run("tty").returncode != 0


def make_tree(top: pathlib.Path) -> None:
    (top / "sub" / "deep").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"alpha")
    (top / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (top / "sub" / "deep" / "c.txt").write_bytes(b"")
    (top / "link").symlink_to("a.txt")
    os.chmod(top / "a.txt", 0o640)
    os.utime(top / "a.txt", (1_600_000_000, 1_600_000_000))


def same_tree(a: pathlib.Path, b: pathlib.Path) -> None:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    for name in names:
        pa, pb = a / name, b / name
        if pa.is_symlink():
            assert pb.is_symlink() and os.readlink(pa) == os.readlink(pb), name
        elif pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), name
            assert pa.stat().st_mode & 0o777 == pb.stat().st_mode & 0o777, name
            assert int(pa.stat().st_mtime) == int(pb.stat().st_mtime), name


def test_trees_go_up_and_down_as_put_r_and_get_r(server, tmp_path):
    src = tmp_path / "t"
    make_tree(src)
    calls = []
    with framewire.Client(server.addr) as c:
        up = c.put(src, "backup", recursive=True, progress=lambda done, total: calls.append((done, total)))
        assert (up["files"], up["failures"], up["unchanged"]) == (3, [], 0)
        same_tree(src, server.root / "backup" / "t")
        total = 5 + 300_000
        assert calls and calls[-1] == (total, total), calls
        assert all(d <= t == total for d, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)
        # Again: nothing to send.
        again = c.put(src, "backup", recursive=True)
        assert (again["files"], again["unchanged"]) == (0, 3)
        # Down, into a new directory; then a mirror of a changed tree.
        back = tmp_path / "back"
        back.mkdir()
        down = c.get("backup/t", back, recursive=True)
        assert down["files"] == 3
        same_tree(src, back / "t")
        (server.root / "backup" / "t" / "sub" / "b.bin").unlink()
        (back / "t" / "extra.txt").write_bytes(b"not on the server")
        mirrored = c.get("backup/t/", back / "t", recursive=True, delete=True)
        assert mirrored["deleted"] == 2 and not (back / "t" / "extra.txt").exists()
        assert not (back / "t" / "sub" / "b.bin").exists()
        with pytest.raises(ValueError):
            c.get("backup/t", back, delete=True)
        # A file that cannot go: the rest goes, and CopyError says which.
        (server.root / "backup" / "t" / "a.txt").unlink()
        (server.root / "backup" / "t" / "a.txt").mkdir()
        (src / "new.txt").write_bytes(b"new")
        with pytest.raises(framewire.CopyError) as e:
            c.put(src, "backup", recursive=True)
        assert [p for p, _ in e.value.failures] == [str(src / "a.txt")], e.value.failures
        assert isinstance(e.value.failures[0][1], framewire.Error)
        assert e.value.result["files"] >= 1
        assert (server.root / "backup" / "t" / "new.txt").read_bytes() == b"new"
        # The connection goes on.
        assert c.stat("backup/t/new.txt")["size"] == 3
        # A copy that cannot be planned raises as the single file would,
        # and the connection goes on too.
        with pytest.raises(framewire.NotFound):
            c.get("no/such/dir", back, recursive=True)
        with pytest.raises(framewire.LocalError):
            c.put(tmp_path / "no-such-dir", "backup", recursive=True)
        assert c.stat("backup/t/new.txt")["size"] == 3

        # A callback that raises on the last call (nothing to send: the
        # only call) raises, the copy done and the connection in step.
        class Last(Exception):
            pass

        def last(done, total):
            raise Last()

        (src / "a.txt").unlink()
        c.put(src, "backup2", recursive=True)
        with pytest.raises(Last):
            c.put(src, "backup2", recursive=True, progress=last)
        assert c.stat("backup2/t/new.txt")["size"] == 3


def test_progress_is_reported_and_a_raising_callback_stops_the_copy(server, tmp_path):
    data = os.urandom(8 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    seen = []
    with framewire.Client(server.addr) as c:
        c.put(tmp_path / "big.bin", "big.bin", progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (len(data), len(data))
        seen.clear()
        c.get("big.bin", tmp_path / "back.bin", progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (len(data), len(data)) and (tmp_path / "back.bin").read_bytes() == data

        class Enough(Exception):
            pass

        def stop(done, total):
            raise Enough(done)

        with pytest.raises(Enough):
            c.put(tmp_path / "big.bin", "again.bin", progress=stop)
        assert not (server.root / "again.bin").exists()
        with pytest.raises(framewire.ConnectionError):
            c.stat("big.bin")
    # framewire's own calls from a callback (which runs on its threads)
    # are refused clearly, not a hang.
    with framewire.Client(server.addr) as c:
        with pytest.raises(RuntimeError, match="progress callback"):
            c.put(tmp_path / "big.bin", "third.bin", progress=lambda d, t: c.stat("big.bin"))


def ssh_keygen(path: pathlib.Path, passphrase: str = "") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name, "-f", str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text().strip()


@pytest.mark.skipif(subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode != 0, reason="no ssh-keygen")
def test_keys_of_ones_own_and_the_servers_host_key(tmp_path, monkeypatch):
    host = tmp_path / "host"
    ssh_keygen(host)
    alice = tmp_path / "alice"
    alice_pub = ssh_keygen(alice)
    locked = tmp_path / "locked"
    locked_pub = ssh_keygen(locked, "secret words")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(f"{alice_pub}\n{locked_pub}\n")
    root = tmp_path / "root"
    root.mkdir()
    s = Server(root, "--allow-exec", "--authorized-keys", str(authorized), "--host-key", str(host))
    known = tmp_path / "known_hosts"
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    try:
        # A host key not known yet: refused unless accepted, then known.
        with pytest.raises(framewire.AuthenticationError, match="(?i)host key"):
            framewire.Client(s.addr, identity=alice, known_hosts=known)
        with framewire.Client(s.addr, identity=alice, known_hosts=known, accept_new=True) as c:
            assert c.run("echo alice").stdout == b"alice\n"
        assert known.read_text().strip()
        with framewire.Client(s.addr, identity=alice, known_hosts=known) as c:
            assert c.run("true").returncode == 0
        # An encrypted identity: its passphrase, or a clear error.
        with pytest.raises(framewire.LocalError):
            framewire.Client(s.addr, identity=locked, known_hosts=known)
        with framewire.Client(s.addr, identity=locked, passphrase="secret words", known_hosts=known) as c:
            assert c.run("echo locked").stdout == b"locked\n"
        # Neither key file nor identity: ~/.ssh/id_ed25519, as ssh finds it.
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        for suffix in ("", ".pub"):
            (home / ".ssh" / ("id_ed25519" + suffix)).write_bytes((tmp_path / ("alice" + suffix)).read_bytes())
        os.chmod(home / ".ssh" / "id_ed25519", 0o600)
        monkeypatch.setenv("HOME", str(home))
        with framewire.Client(s.addr, known_hosts=known) as c:
            assert c.run("echo found").stdout == b"found\n"

        async def via_async():
            async with framewire.AsyncClient(s.addr, identity=alice, known_hosts=known) as c:
                return (await c.run("echo async")).stdout

        import asyncio

        assert asyncio.run(via_async()) == b"async\n"
        [r] = list(framewire.fleet.run(s.addr, "echo fleet", identity=alice, known_hosts=known))
        assert r.ok and r.stdout == b"fleet\n", r
        # A key the server does not list.
        stranger = tmp_path / "stranger"
        ssh_keygen(stranger)
        with pytest.raises(framewire.AuthenticationError):
            framewire.Client(s.addr, identity=stranger, known_hosts=known)
    finally:
        s.stop()


def test_a_host_alias_from_the_config_file(server, tmp_path, monkeypatch):
    host, port = server.addr.rsplit(":", 1)
    (server.root / "sub").mkdir()
    (server.root / "top.txt").write_bytes(b"top")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[hosts.web]\naddress = "{host}"\nport = {port}\ndir = "sub"\ntimeout = 0.5\n'
        f'[hosts.web2]\naddress = "{host}"\nport = {port}\n'
        '[groups]\nall = ["web", "web2"]\n'
    )
    (tmp_path / "f.txt").write_bytes(b"into the alias's dir")
    with framewire.Client("web", config=config) as c:
        c.put(tmp_path / "f.txt")
        assert (server.root / "sub" / "f.txt").read_bytes() == b"into the alias's dir"
        assert [e["name"] for e in c.ls("")] == ["f.txt"]
        assert c.stat("/top.txt")["size"] == 3, "a leading / is from the served root"
        c.get("f.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_bytes() == b"into the alias's dir"
        # The alias's timeout, unless the call gives one.
        with pytest.raises(framewire.TimeoutError):
            c.run("sleep 5")
        assert c.run("sleep 1", timeout=20).returncode == 0
    # $FRAMEWIRE_CONFIG, as the CLI reads it.
    monkeypatch.setenv("FRAMEWIRE_CONFIG", str(config))
    with framewire.Client("web2") as c:
        assert c.stat("top.txt")["size"] == 3
    results = list(framewire.fleet.run("@all", "pwd"))
    assert sorted(r.host for r in results) == ["web", "web2"] and all(r.ok for r in results), results
    # A config file that does not parse: one clear error, nothing connects.
    bad = tmp_path / "bad.toml"
    bad.write_text("[hosts.web]\nprot = 1\n")
    with pytest.raises(framewire.Error, match="bad.toml:2:1: unknown field `prot`"):
        framewire.Client("web", config=bad)


def test_a_client_made_before_a_fork_is_refused_in_the_child(server):
    c = framewire.Client(server.addr)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            c.stat("")
        except framewire.ConnectionError as e:
            code = 0 if "another process" in str(e) else 2
        except BaseException:
            code = 3
        try:
            # A new client in the child works (the runtime made again).
            with framewire.Client(server.addr) as fresh:
                fresh.run("true")
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, status
    assert c.run("echo parent").stdout == b"parent\n"
    c.close()
