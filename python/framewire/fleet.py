"""Run one command on many hosts at once, as ``framewire exec -w`` does
(pdsh's job).

::

    import framewire.fleet

    for r in framewire.fleet.run("web[01-20]:9909", "uptime", key_file="key"):
        if r.ok:
            print(r.host, r.stdout.decode().strip())
        else:
            print(r.host, "failed:", r.error or r.returncode)

Hosts run ``fanout`` at a time (64 by default), each over its own
connection, and each result is yielded as its host finishes, fastest
first. A host that cannot be reached, refuses the key or fails on the
way is a result too (its ``error`` says why): one bad host never stops
the others. Leaving the loop early (``break``, an exception, Ctrl-C)
cancels the hosts still running, their commands killed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Union

from . import _errors
from ._native import Fleet as _NativeFleet
from ._shared import PathLike, auth_args

__all__ = ["run", "HostResult"]


@dataclass
class HostResult:
    """What one host gave."""

    #: The host, as expanded (``web07:9909``).
    host: str
    #: Its command's exit code (minus the signal that ended it), or
    #: ``None`` if it did not run to its end (see ``error``).
    returncode: Optional[int]
    stdout: bytes
    stderr: bytes
    #: Why the host gave no exit code: a :class:`framewire.Error`
    #: (:class:`framewire.ConnectionError` for an unreachable host,
    #: :class:`framewire.AuthenticationError` for a key refused,
    #: :class:`framewire.TimeoutError` for a command past ``timeout``...).
    error: Optional[_errors.Error]
    #: Seconds from its start to its end.
    elapsed: float

    @property
    def ok(self) -> bool:
        """Whether its command ran and exited with status 0."""
        return self.error is None and self.returncode == 0


def run(
    hosts: Union[str, Iterable[str]],
    cmd: str,
    fanout: int = 64,
    *,
    key_file: Optional[PathLike] = None,
    connect_timeout: Optional[float] = 30.0,
    timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
    identity: Optional[PathLike] = None,
    passphrase: Optional[str] = None,
    known_hosts: Optional[PathLike] = None,
    accept_new: bool = False,
    config: Optional[PathLike] = None,
) -> Iterator[HostResult]:
    """Runs ``cmd`` on every host of ``hosts`` and yields each host's
    :class:`HostResult` as it finishes.

    ``hosts``: a host set as ``framewire -w`` takes it (``node[1-3]``,
    ``10.0.0.[1-9]:9909``, ``a,b``), or several of them; each host once,
    in order of first mention; ``@name`` is a group of the CLI's config
    file, and each host may be an alias of it (``config`` as for
    :class:`framewire.Client`). ``key_file``,
    ``connect_timeout``, ``identity``, ``passphrase``, ``known_hosts``,
    ``accept_new``: as for :class:`framewire.Client`, for every host (an
    identity read once).
    ``timeout``: each host's command is killed after it (its result then
    a :class:`framewire.TimeoutError`). ``env``: variables for every
    command (each server must accept them; a refusal is said on that
    host's stderr).
    """
    sets = [hosts] if isinstance(hosts, str) else list(hosts)
    variables = sorted(env.items()) if env else None
    auth = auth_args(key_file, connect_timeout, identity, passphrase, known_hosts, accept_new, config)
    fleet = _NativeFleet(sets, cmd, fanout, timeout=timeout, env=variables, **auth)
    try:
        for host, code, out, err, how, cls, message, elapsed in fleet:
            error: Optional[_errors.Error] = None
            if cls is not None:
                error = getattr(_errors, cls)(f"{host}: {message}")
            elif how == "timeout":
                limit = f"its timeout of {timeout} s" if timeout is not None else "its host's timeout"
                error = _errors.TimeoutError(f"{host}: command {cmd!r} ran past {limit}")
            elif how != "exited":
                error = _errors.ConnectionError(f"{host}: command {cmd!r} was killed ({how})")
            yield HostResult(host, code if error is None else None, out, err, error, elapsed)
    finally:
        fleet.close()
