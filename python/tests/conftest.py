"""What the tests share: a real `framewire serve` of a temporary
directory on 127.0.0.1:0 (the binary `cargo test` or `cargo build` made,
or FRAMEWIRE_BIN), ended by its PID; and every socket the tests make
times out instead of hanging (a test that waits forever fails after 20 s
with socket.timeout)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import pytest

socket.setdefaulttimeout(20)

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

