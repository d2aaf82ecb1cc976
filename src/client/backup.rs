//! rsync's `--backup` for copies: what a copy replaces, or a mirror
//! removes, is kept instead of lost. On the server, by the server, as the
//! upload asks (`backup` in `put` and `tree_put`, PROTOCOL.md §4.6.4; a
//! mirror's removals become renames); on the client, here.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::proto::Backup;
use crate::services::root::{is_partial_name, keep_at, Root};

/// What the user asked: `--backup`, `--backup-dir DIR`, `--suffix S`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupOptions {
    /// Where backups go: relative to the copy's destination directory (a
    /// remote one starting with `/` is relative to the served root, a
    /// local one is absolute); none, beside what each keeps.
    pub dir: Option<String>,
    /// Added to each backup's name: by default `~` without `dir`, nothing
    /// with it (as rsync).
    pub suffix: Option<String>,
}

impl BackupOptions {
    /// The suffix used.
    pub fn suffix(&self) -> &str {
        self.suffix.as_deref().unwrap_or(if self.dir.is_some() { "" } else { "~" })
    }

    /// What an upload into the server directory `dest` (relative to the
    /// root) asks of the server.
    pub fn remote(&self, dest: &str) -> Backup {
        let dest = dest.trim_matches('/');
        let dir = self.dir.as_deref().map(|d| match d.strip_prefix('/') {
            Some(from_root) => from_root.trim_matches('/').to_owned(),
            None if dest.is_empty() => d.trim_end_matches('/').to_owned(),
            None => format!("{dest}/{}", d.trim_end_matches('/')),
        });
        Backup { dir, of: dest.to_owned(), suffix: self.suffix().to_owned() }
    }

    /// How a download into the local directory `dest` keeps what it
    /// replaces.
    pub fn local(&self, dest: &Path) -> LocalBackup {
        LocalBackup {
            dest: dest.to_owned(),
            dir: self.dir.as_ref().map(|d| dest.join(d)),
            suffix: OsString::from(self.suffix()),
        }
    }
}

/// Where a download keeps what it replaces or removes.
#[derive(Debug, Clone)]
pub struct LocalBackup {
    /// The copy's destination directory: paths below it keep their place
    /// below `dir`.
    dest: PathBuf,
    /// Where backups go, if not beside what they keep.
    dir: Option<PathBuf>,
    suffix: OsString,
}

impl LocalBackup {
    /// The directory backups go to, if not beside what they keep.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Keeps what stands at the local `path` (the name `at.1` in the
    /// directory `at.0`) before a copy replaces it or (`moving`) a mirror
    /// removes it (`services::root::keep_at`). The backup directory and its missing
    /// directories are made as needed, none through a symlink. Returns
    /// whether anything was kept.
    ///
    /// # Errors
    ///
    /// A backup name that a partial file's takes; I/O errors.
    pub fn keep(&self, path: &Path, at: (&OwnedFd, &OsStr), moving: bool) -> io::Result<bool> {
        match rustix::fs::statat(at.0, at.1, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let mut name = at.1.to_owned();
        name.push(&self.suffix);
        if is_partial_name(name.as_encoded_bytes()) {
            return Err(io::Error::other(format!("{}: its backup's name would be a partial file's", path.display())));
        }
        let Some(dir) = &self.dir else { return keep_at(at.0, at.1, (at.0, &name), moving) };
        let rel = path.strip_prefix(&self.dest).unwrap_or(Path::new(at.1));
        let parts: Vec<String> = match rel.parent() {
            Some(parent) => parent
                .components()
                .map(|c| crate::services::names::encode(c.as_os_str().as_encoded_bytes()).into_owned())
                .collect(),
            None => Vec::new(),
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        std::fs::create_dir_all(dir)?;
        let root = Root::open(dir)?.without_links();
        let into = root.make_dirs(&parts)?;
        keep_at(at.0, at.1, (&into, &name), moving)
    }
}

/// Whether a mirror must leave `path` alone because backups go to `dir`
/// (both relative to the same root): it is the backup directory, below
/// it, or above it (removing it would remove the backups).
pub fn guards(dir: &str, path: &str) -> bool {
    let (dir, path) = (dir.trim_matches('/'), path.trim_matches('/'));
    let below = |a: &str, b: &str| a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
    dir == path || below(path, dir) || below(dir, path) || dir.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_backups_go_below_the_destination_or_the_root() {
        let b = BackupOptions { dir: Some("old".into()), suffix: None };
        let r = b.remote("web/site/");
        assert_eq!(r, Backup { dir: Some("web/site/old".into()), of: "web/site".into(), suffix: String::new() });
        assert_eq!(r.path_for("web/site/a/b.txt").unwrap(), "web/site/old/a/b.txt");
        assert!(r.path_for("elsewhere/b.txt").is_err());
        let rooted = BackupOptions { dir: Some("/attic/".into()), suffix: Some(".bak".into()) }.remote("web");
        assert_eq!(rooted.path_for("web/x").unwrap(), "attic/x.bak");
        let beside = BackupOptions::default().remote("web");
        assert_eq!(beside.path_for("web/x").unwrap(), "web/x~");
        let empty = BackupOptions { dir: None, suffix: Some(String::new()) }.remote("web");
        assert!(empty.path_for("web/x").is_err(), "a backup beside the file needs a suffix");
        // Never the path itself, nor above or below it.
        let itself = BackupOptions { dir: Some(".".into()), suffix: None }.remote("site");
        assert!(itself.path_for("site/x").is_err(), "{:?}", itself.path_for("site/x"));
        let root = BackupOptions { dir: Some("/".into()), suffix: None }.remote("");
        assert!(root.path_for("x").is_err());
        let above = crate::proto::Backup { dir: Some(String::new()), of: "a".into(), suffix: String::new() };
        assert!(above.path_for("a/a").is_err(), "the backup of a/a would be the directory a");
        let below = crate::proto::Backup { dir: Some("a/b".into()), of: "".into(), suffix: String::new() };
        assert!(below.path_for("a").is_err(), "the backup of a would be below it");
    }

    #[test]
    fn a_mirror_leaves_the_backup_directory_alone() {
        assert!(guards("d/old", "d/old"));
        assert!(guards("d/old", "d/old/x"));
        assert!(guards("d/old/deep", "d/old"));
        assert!(!guards("d/old", "d/older"));
        assert!(!guards("d/old", "d/x"));
    }
}
