"""framewire.fleet.run over real servers on 127.0.0.1:0 (and a closed
port): each host's result as it finishes, failures among them."""

from __future__ import annotations

import os
import socket
import time

import pytest

import framewire
import framewire.fleet

from conftest import Server


@pytest.fixture
def servers(tmp_path):
    started = []
    for k in range(3):
        root = tmp_path / f"root{k}"
        root.mkdir()
        (root / "id").write_text(str(k))
        started.append(Server(root, "--allow-exec", "--insecure"))
    yield started
    for s in started:
        s.stop()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_a_command_runs_on_every_host_and_each_result_comes_as_it_ends(servers):
    addrs = [s.addr for s in servers]
    dead = closed_port()
    # Host 0 is slow: it comes last.
    cmd = 'if [ "$(cat id)" = 0 ]; then sleep 1; fi; cat id; echo err >&2'
    results = list(framewire.fleet.run(addrs + [dead], cmd, fanout=8, timeout=20))
    assert sorted(r.host for r in results) == sorted(addrs + [dead])
    assert results[-1].host == addrs[0], [r.host for r in results]
    for r in results:
        if r.host == dead:
            assert not r.ok and r.returncode is None and isinstance(r.error, framewire.ConnectionError)
        else:
            k = addrs.index(r.host)
            assert r.ok and (r.stdout, r.stderr) == (str(k).encode(), b"err\n"), r
            assert r.elapsed >= 0
    # One host set, as the CLI writes it: each host once.
    expanded = list(framewire.fleet.run(",".join(addrs + addrs[:1]), "true"))
    assert sorted(r.host for r in expanded) == sorted(addrs)
    with pytest.raises(ValueError):
        list(framewire.fleet.run("node[9-1]", "true"))


def test_a_host_past_its_timeout_and_one_leaving_early(servers):
    addrs = [s.addr for s in servers]
    started = time.monotonic()
    results = list(framewire.fleet.run(addrs[:1], "sleep 30", timeout=0.5))
    assert time.monotonic() - started < 10
    assert isinstance(results[0].error, framewire.TimeoutError) and not results[0].ok
    # Leaving the loop after the first host cancels the others' commands:
    # their processes are gone soon after, not 30 s later. The first host
    # answers only once the others' commands run (their roots are its
    # siblings; at most 10 s): else the loop could be left before they
    # start, and they would never write their pid.
    cmd = (
        'if [ "$(cat id)" = 0 ]; then for i in $(seq 200); do '
        "[ -s ../root1/pid ] && [ -s ../root2/pid ] && exit 0; sleep 0.05; done; exit 0; fi; "
        "echo $$ > pid; exec sleep 30"
    )
    for r in framewire.fleet.run(addrs, cmd):
        assert r.host == addrs[0]
        break
    pids = []
    for s in servers[1:]:
        deadline = time.monotonic() + 10
        while not (s.root / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids.append(int((s.root / "pid").read_text()))
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "the other hosts' commands still run"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by its server is gone too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
