"""The examples in python/examples/, run as a user runs them: real
servers on 127.0.0.1:0 in their own processes, stopped after."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def start():
    started = []

    def run(*args):
        p = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, text=True)
        started.append(p)
        line = p.stdout.readline()
        return int(line.rsplit(":", 1)[1])

    yield run
    for p in started:
        p.kill()
        p.wait()


def test_the_echo_server_answers_each_message_whole(start):
    port = start(EXAMPLES / "echo_server.py", "serve", "127.0.0.1", 0)
    words = ["hello", "world", "x" * 100_000, ""]
    out = subprocess.run(
        [sys.executable, EXAMPLES / "echo_server.py", "send", "127.0.0.1", str(port), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.split("\n")[:-1] == [w.upper() for w in words]


def test_a_movie_is_picked_by_number_and_arrives_whole(start, tmp_path):
    movies, downloads = tmp_path / "movies", tmp_path / "downloads"
    movies.mkdir()
    downloads.mkdir()
    (movies / "a.mp4").write_bytes(b"first" * 1000)
    (movies / "b.mp4").write_bytes(bytes(range(256)) * 5000)
    port = start(EXAMPLES / "movie_download.py", "serve", "127.0.0.1", 0, movies)
    spec = importlib.util.spec_from_file_location("movie_download", EXAMPLES / "movie_download.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.fetch("127.0.0.1", port, str(downloads), number=2)
    assert pathlib.Path(path).read_bytes() == (movies / "b.mp4").read_bytes()
    assert sorted(p.name for p in downloads.iterdir()) == ["b.mp4"], "no partial file left"
    with pytest.raises(SystemExit, match="no movie number 3"):
        module.fetch("127.0.0.1", port, str(downloads), number=3)


def test_the_fleet_example_gathers_every_host(tmp_path):
    from conftest import Server

    servers = []
    for k in range(2):
        root = tmp_path / f"r{k}"
        root.mkdir()
        servers.append(Server(root, "--allow-exec", "--insecure"))
    try:
        hosts = ",".join(s.addr for s in servers)
        out = subprocess.run(
            [sys.executable, EXAMPLES / "fleet_run.py", hosts, "echo hi"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out
        assert sorted(out.stdout.splitlines()[:2]) == sorted(f"{s.addr}: hi" for s in servers)
        assert out.stdout.splitlines()[-1] == "2 ok, 0 failed"
        out = subprocess.run(
            [sys.executable, EXAMPLES / "fleet_run.py", hosts, "exit 4"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 1 and "FAILED exit status 4" in out.stdout, out
    finally:
        for s in servers:
            s.stop()


def test_the_backup_example_keeps_snapshots_and_moves_only_changes(tmp_path):
    from conftest import Server

    root = tmp_path / "root"
    (root / "projects" / "sub").mkdir(parents=True)
    (root / "projects" / "a.txt").write_bytes(b"alpha")
    (root / "projects" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4000)
    s = Server(root, "--insecure")
    backups = tmp_path / "backups"
    try:
        run = lambda: subprocess.run(  # noqa: E731
            [sys.executable, EXAMPLES / "backup.py", s.addr, "projects", backups],
            capture_output=True, text=True, timeout=60,
        )
        first = run()
        assert first.returncode == 0 and "2 file(s) copied" in first.stdout, first
        latest = backups / "latest" / "projects"
        assert (latest / "sub" / "b.bin").read_bytes() == (root / "projects" / "sub" / "b.bin").read_bytes()
        old = (backups / "latest").resolve()
        import time as _time

        _time.sleep(1.1)  # a new snapshot name
        (root / "projects" / "a.txt").write_bytes(b"changed")
        second = run()
        # Root links nothing (the copy sets owners, which the listing
        # does not show): every file is copied again.
        root_user = os.geteuid() == 0
        moved = "2 file(s) copied" if root_user else "1 file(s) copied"
        assert second.returncode == 0 and moved in second.stdout, second
        assert root_user or "1 unchanged" in second.stdout, second
        new = (backups / "latest").resolve()
        assert new != old
        assert (new / "projects" / "a.txt").read_bytes() == b"changed"
        assert (old / "projects" / "a.txt").read_bytes() == b"alpha", "the older snapshot is kept as it was"
        same_inode = (new / "projects" / "sub" / "b.bin").stat().st_ino == (old / "projects" / "sub" / "b.bin").stat().st_ino
        # Linked, unless run as root (where the copy sets owners, which
        # the listing does not show: nothing is linked then).
        assert same_inode == (not root_user)
        # Only the permission bits change on the server: the file is not
        # linked (setting them would change the older snapshots too).
        _time.sleep(1.1)
        os.chmod(root / "projects" / "sub" / "b.bin", 0o600)
        third = run()
        assert third.returncode == 0, third
        newest = (backups / "latest").resolve()
        assert (newest / "projects" / "sub" / "b.bin").stat().st_mode & 0o777 == 0o600
        assert (new / "projects" / "sub" / "b.bin").stat().st_mode & 0o777 == 0o644, "an older snapshot changed"
        assert (newest / "projects" / "sub" / "b.bin").stat().st_ino != (new / "projects" / "sub" / "b.bin").stat().st_ino
    finally:
        s.stop()
