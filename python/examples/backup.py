"""Back up a directory of a framewire server into a local one, keeping a
dated snapshot per run, as `framewire get -r` copies a tree: only what
changed since the last snapshot crosses the link (each snapshot starts as
a hard-linked copy of the one before, rsync --link-dest's way), every
file checked by BLAKE3, a cut run resumed by the next.

    python backup.py 127.0.0.1:9909 projects /srv/backups --key-file key

makes /srv/backups/2026-12-07T10-00-00/projects and points
/srv/backups/latest at it. Exits 1 if a file could not be copied (the
others are), naming it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import sys

import framewire


def snapshot_base(backups: pathlib.Path) -> pathlib.Path:
    """A new snapshot directory, filled with hard links to the latest one:
    unchanged files cost nothing, changed ones are replaced (never written
    through the link: framewire puts a new file in place)."""
    name = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    new = backups / name
    latest = backups / "latest"
    if latest.exists():
        shutil.copytree(latest.resolve(), new, copy_function=os.link, symlinks=True)
    else:
        new.mkdir(parents=True)
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr")
    ap.add_argument("remote", help="the server's directory to back up")
    ap.add_argument("backups", type=pathlib.Path, help="where the snapshots go")
    ap.add_argument("--key-file")
    args = ap.parse_args(argv)
    snapshot = snapshot_base(args.backups)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done * 100 // max(total, 1):3d} %  {done:,} of {total:,} bytes", end="", file=sys.stderr)

    status = 0
    with framewire.Client(args.addr, key_file=args.key_file) as c:
        try:
            stats = c.get(args.remote, snapshot, recursive=True, progress=progress, delete=True)
        except framewire.CopyError as e:
            stats = e.result
            for path, error in e.failures:
                print(f"backup.py: {path}: {error}", file=sys.stderr)
            status = 1
    latest = args.backups / "latest"
    tmp = args.backups / ".latest.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(snapshot.name)
    tmp.replace(latest)
    print(
        f"{snapshot}: {stats['files']} file(s) copied ({stats['sent']:,} bytes sent), "
        f"{stats['unchanged']} unchanged, {stats['deleted']} removed"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
