//! The units of a copy: one file to move ([`Job`]), which way
//! ([`Direction`]), and what a copy tells as it goes ([`Observer`]).
//! Shared by [`super::tree`], which plans and runs copies, and the
//! streamed transfer that moves them.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::error::ClientError;
use super::files::{Progress, Transfer};
use crate::services::root::Root;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the server.
    Get,
    /// To the server.
    Put,
}

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its path on the server.
    pub remote: String,
    /// Its local path.
    pub local: PathBuf,
    /// Its size, as planned (for a total).
    pub size: u64,
    /// Its modification time at the source (seconds since the epoch).
    pub mtime: i64,
    /// The same, exact: nanoseconds since the epoch, where known.
    pub mtime_ns: Option<i64>,
    /// Its permission bits at the source.
    pub mode: u32,
    /// The receiver has a different, older file under the name (or the
    /// copy is forced): replace it.
    pub replace: bool,
    /// The length of the regular file the receiver holds under the name,
    /// as planned: an older version a delta may be built from.
    pub held: Option<u64>,
    /// The source's BLAKE3 (hex), when `checksum` asked the server for it.
    pub blake3: Option<String>,
    /// Its owner and extended attributes at the source, as the copy
    /// keeps them (PROTOCOL.md §4.6.3.5); for an upload, the owner is in
    /// [`Job::owner`] instead.
    pub attrs: Option<Box<crate::proto::Attrs>>,
    /// Uploads: its owner's user and group ids at the source, named (or
    /// not, `--numeric-ids`) only when a manifest that keeps owners is
    /// sent: planning costs nothing for them.
    pub owner: Option<(u32, u32)>,
    /// The directory `local` is reached beneath by descriptor: the source
    /// tree of an upload, the destination of a download. `None`: `local`
    /// is opened as the user named it (a single file).
    pub(crate) base: Option<Base>,
}

/// A local directory a copy reads or writes beneath, named by the user and
/// opened once (following that name, as `cp` and `rsync` do); each job's
/// path below it is resolved from its descriptor. For an upload, symlinks
/// that stay inside the tree are followed and none leading out
/// ([`crate::services::root::Links::Inside`]); for a download, none at all
/// ([`crate::services::root::Links::Never`]).
#[derive(Debug, Clone)]
pub(crate) struct Base(Arc<(PathBuf, Root)>);

/// A directory of a source tree kept open while its files are opened
/// ([`Job::open_local_in`]).
#[derive(Debug)]
pub(crate) struct KeptDir {
    base: Base,
    kept: Option<crate::services::root::KeptDir>,
}

impl PartialEq for Base {
    fn eq(&self, other: &Self) -> bool {
        self.0 .0 == other.0 .0
    }
}

impl Eq for Base {}

impl Base {
    /// `root`, opened from `path`.
    pub(crate) fn new(path: PathBuf, root: Root) -> Base {
        Base(Arc::new((path, root)))
    }

    /// The directory as the user named it.
    pub(crate) fn path(&self) -> &Path {
        &self.0 .0
    }

    /// The root it is open as.
    pub(crate) fn root(&self) -> &Root {
        &self.0 .1
    }

    /// `local` relative to the directory, `/`-separated.
    ///
    /// # Errors
    ///
    /// A path not below it, or not UTF-8 (neither is ever planned).
    pub(crate) fn rel(&self, local: &Path) -> io::Result<String> {
        rel_below(self.path(), local)
    }
}

/// `path` relative to the directory `dir` it is below, `/`-separated
/// (empty for `dir` itself; `.` components dropped).
///
/// # Errors
///
/// A path not below `dir`, or not UTF-8 (neither is ever planned).
pub(crate) fn rel_below(dir: &Path, path: &Path) -> io::Result<String> {
    use std::path::Component;
    // `name` is below `.` as `./name` is (a file got into the current
    // directory under a name of its own).
    let below = match path.strip_prefix(dir) {
        Ok(below) => below,
        Err(_) if dir == Path::new(".") && path.is_relative() => path,
        Err(_) => return Err(io::Error::other("not below the copy's directory")),
    };
    let mut parts = Vec::new();
    for c in below.components() {
        match c {
            Component::Normal(name) => parts.push(crate::services::names::encode(name.as_encoded_bytes())),
            Component::CurDir => {}
            _ => return Err(io::Error::other("not a plain path below the copy's directory")),
        }
    }
    Ok(parts.join("/"))
}

impl Job {
    /// The path to name the file by: where it comes from.
    pub fn source(&self, direction: Direction) -> String {
        match direction {
            Direction::Get => self.remote.clone(),
            Direction::Put => crate::text::shown_path(&self.local),
        }
    }

    /// The directory the local file is in, and its name: by descriptor
    /// beneath [`Job::base`] when there is one (a symlink on the way is
    /// refused, never followed, for a download), else as the user named it.
    /// Blocking.
    pub(crate) fn local_parent(&self) -> io::Result<(OwnedFd, OsString)> {
        let Some(base) = &self.base else { return crate::services::root::local_parent(&self.local) };
        let rel = base.rel(&self.local)?;
        let (parent, name) = match rel.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", rel.as_str()),
        };
        if name.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "names a directory, not a file"));
        }
        Ok((base.root().open_dir(parent)?, crate::services::names::os(name).into_owned()))
    }

    /// The local file opened to send it, without waiting on a FIFO: beneath
    /// [`Job::base`] when there is one (a symlink leading out of the tree
    /// refused, `EXDEV`), else as the user named it. The caller checks the
    /// type. Blocking.
    pub(crate) fn open_local(&self) -> io::Result<File> {
        self.open_local_in(&mut None)
    }

    /// [`open_local`](Self::open_local), the file's directory kept open in
    /// `last` for the next file (most share it with the one before; the
    /// directory is the same only in the same source tree): the file
    /// opened by its name in it, a symlink there not followed; where that
    /// fails (a symlink `-L` follows, a directory that is one on the way),
    /// as `open_local` opens it.
    pub(crate) fn open_local_in(&self, last: &mut Option<KeptDir>) -> io::Result<File> {
        let Some(base) = &self.base else { return crate::services::files::open_to_send(&self.local) };
        let rel = base.rel(&self.local)?;
        if last.as_ref().is_none_or(|k| !Arc::ptr_eq(&k.base.0, &base.0)) {
            *last = Some(KeptDir { base: base.clone(), kept: None });
        }
        let kept = &mut last.as_mut().expect("set just above").kept;
        if let Some(fd) = base.root().open_by_name(&rel, kept) {
            return Ok(File::from(fd));
        }
        Ok(File::from(base.root().open_beneath(&rel, OFlags::RDONLY | OFlags::NONBLOCK)?))
    }
}

/// What a copy tells as it goes. Called from the copy's tasks, so it must
/// be cheap; `id` tells apart the files under way at once.
pub trait Observer: Send + Sync {
    /// A file starts.
    fn started(&self, _id: usize, _job: &Job) {}
    /// A file moved on (see [`Progress`]).
    fn progress(&self, _id: usize, _job: &Job, _progress: Progress) {}
    /// A file ended, copied or not.
    fn finished(&self, _id: usize, _job: &Job, _outcome: &Result<Transfer, ClientError>) {}
}

/// An observer that observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Observer for Quiet {}
