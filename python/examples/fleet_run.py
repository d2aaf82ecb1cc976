"""Run one command on many framewire servers at once and gather what each
said, as pdsh and `framewire exec -w` do.

    python fleet_run.py 'web[01-20]:9909' uptime --key-file key

One line per host as it finishes (`host: output`, or `host: FAILED why`),
then a summary; the exit status is 0 only if every host ran the command
and it exited 0.
"""

from __future__ import annotations

import argparse
import sys

import framewire.fleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hosts", help="a host set: node[1-3]:9909, a,b, ...")
    ap.add_argument("command")
    ap.add_argument("--key-file")
    ap.add_argument("--fanout", type=int, default=64)
    ap.add_argument("--timeout", type=float, help="seconds each host's command may run")
    args = ap.parse_args(argv)
    ok, failed = [], []
    results = framewire.fleet.run(
        args.hosts, args.command, args.fanout, key_file=args.key_file, timeout=args.timeout
    )
    for r in results:
        if r.ok:
            ok.append(r.host)
            out = r.stdout.decode(errors="replace").rstrip("\n")
            print(f"{r.host}: {out}", flush=True)
        else:
            failed.append(r.host)
            why = r.error if r.error is not None else f"exit status {r.returncode}"
            print(f"{r.host}: FAILED {why}", flush=True)
    print(f"{len(ok)} ok, {len(failed)} failed" + (f": {', '.join(sorted(failed))}" if failed else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
