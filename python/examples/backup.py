"""Back up a directory of a framewire server into a local one, keeping a
dated snapshot per run, as `framewire get -r` copies a tree: only what
changed since the last snapshot crosses the link (each snapshot starts
with hard links to the files of the one before that have not changed,
rsync --link-dest's way, and older snapshots are never changed), every
file checked by BLAKE3.

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
import stat
import sys

import framewire


def snapshot_base(c: framewire.Client, remote: str, backups: pathlib.Path) -> pathlib.Path:
    """A new snapshot directory, with hard links to the files of the
    latest one that the server still lists alike (size, modification time,
    permission bits, and owner where listed), as rsync's --link-dest: those
    cost nothing, and the copy leaves them as they are. Every other file is
    copied anew, so nothing is ever changed through a link: a file the
    copy replaces goes to a new inode (framewire renames a finished
    partial file into place), and one whose bits or owner differ is not
    linked at all (setting them would change the older snapshots too)."""
    name = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    new = backups / name
    new.mkdir(parents=True)
    latest = backups / "latest"
    top = remote.rstrip("/").rsplit("/", 1)[-1]
    old = latest.resolve() / top if latest.exists() else None
    if old is None or not old.is_dir():
        return new
    listed = {e["name"]: e for e in c.ls(remote, recursive=True) if e["kind"] == "file"}
    for dirpath, _, files in os.walk(old):
        for f in files:
            path = pathlib.Path(dirpath) / f
            rel = str(path.relative_to(old))
            e = listed.get(rel)
            st = path.lstat()
            if e is None or not stat.S_ISREG(st.st_mode):
                continue
            owner = e.get("attrs") or {}
            alike = (
                e["size"] == st.st_size
                and e["mtime"] == int(st.st_mtime)
                and e["mode"] & 0o7777 == st.st_mode & 0o7777
                and owner.get("uid", st.st_uid) == st.st_uid
                and owner.get("gid", st.st_gid) == st.st_gid
            )
            if alike:
                target = new / top / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr")
    ap.add_argument("remote", help="the server's directory to back up")
    ap.add_argument("backups", type=pathlib.Path, help="where the snapshots go")
    ap.add_argument("--key-file")
    args = ap.parse_args(argv)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done * 100 // max(total, 1):3d} %  {done:,} of {total:,} bytes", end="", file=sys.stderr)

    status = 0
    with framewire.Client(args.addr, key_file=args.key_file) as c:
        snapshot = snapshot_base(c, args.remote, args.backups)
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
