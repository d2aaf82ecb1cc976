"""The examples in python/examples/, run as a user runs them: real
servers on 127.0.0.1:0 in their own processes, stopped after."""

from __future__ import annotations

import importlib.util
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
