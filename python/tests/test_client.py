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
import socket
import subprocess
import threading
import time

import pytest

import framewire

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary() -> str:
    if os.environ.get("FRAMEWIRE_BIN"):
        return os.environ["FRAMEWIRE_BIN"]
    built = [p for p in (ROOT / "target" / "debug" / "framewire", ROOT / "target" / "release" / "framewire") if p.exists()]
    if not built:
        pytest.fail("no framewire binary: run `cargo build` first, or set FRAMEWIRE_BIN")
    return str(max(built, key=lambda p: p.stat().st_mtime))


class Server:
    """A `framewire serve` of a temporary directory, ended by its PID."""

    def __init__(self, root: pathlib.Path, *args: str) -> None:
        self.root = root
        self.proc = subprocess.Popen(
            [binary(), "serve", "--listen", "127.0.0.1:0", "--root", str(root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line:
                self.addr = line.split("listening on", 1)[1].split()[0]
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail("framewire serve did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    s = Server(root, "--allow-exec", "--insecure", "--accept-env", "GREETING")
    yield s
    s.stop()


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
    c = framewire.Client(server.addr)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        c.run("sleep 30")
    assert time.monotonic() - started < 10
    with pytest.raises(framewire.ConnectionError):
        c.run("true")


def test_a_process_error_survives_pickling():
    result = subprocess.CompletedProcess("false", 1, b"out", b"err")
    again = pickle.loads(pickle.dumps(framewire.ProcessError(result)))
    assert isinstance(again, framewire.ProcessError)
    assert (again.result.returncode, again.result.stdout) == (1, b"out")
    assert str(again) == "command 'false' exited with status 1"
