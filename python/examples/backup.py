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
    and permission bits as this side's umask leaves them), as rsync's
    --link-dest: those cost nothing, and the copy leaves them as they are.
    Every other file is copied anew, so nothing is ever changed through a
    link: a file the copy replaces goes to a new inode (framewire renames
    a finished partial file into place), and one whose bits differ is not
    linked at all (setting them would change the older snapshots too).
    Run as root, where the copy also sets owners (which the listing does
    not show), nothing is linked."""
    name = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    new = backups / name
    new.mkdir(parents=True)
    latest = backups / "latest"
    # `dir/` (or the root) copies the directory's contents into the
    # snapshot; `dir` copies it under its name.
    contents = remote.endswith("/") or remote in ("", ".")
    top = "" if contents else remote.rstrip("/").rsplit("/", 1)[-1]
    old = latest.resolve() / top if latest.exists() else None
    if old is None or not old.is_dir() or os.geteuid() == 0:
        return new
    try:
        listed = {e["name"]: e for e in c.ls(remote, recursive=True) if e["kind"] == "file"}
    except framewire.Error as e:
        # A listing too large for one answer: no links, every file copied.
        print(f"backup.py: not linking from the last snapshot: {e}", file=sys.stderr)
        return new
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, _, files in os.walk(old):
        for f in files:
            path = pathlib.Path(dirpath) / f
            rel = str(path.relative_to(old))
            e = listed.get(rel)
            st = path.lstat()
            if e is None or not stat.S_ISREG(st.st_mode):
                continue
            alike = (
                e["size"] == st.st_size
                and e["mtime"] == st.st_mtime_ns // 10**9
                and st.st_mode & 0o7777 == e["mode"] & 0o777 & ~umask
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
