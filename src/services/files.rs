//! Files under a served root: paths a peer names, resolved beneath the root
//! by descriptor (see [`super::root`]), listings, and what uploads claim.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use rustix::fs::{AtFlags, OFlags};
use rustix::io::Errno;

use super::attrs::Applying;
use super::root::{is_escape, is_partial_name, keep_at, FileId, Resolver, Root, MAX_PATH_BYTES, MAX_PATH_DEPTH};
use super::{Fault, PathRule};
use crate::proto::{Attrs, Backup, Entry, Kind, Special};

/// How long an upload waits for an earlier upload of the same path to end.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The served directory. Every path a client names is resolved beneath it
/// by descriptor, the kernel refusing escapes.
///
/// Paths are relative to the root, `/`-separated, at most
/// [`MAX_PATH_BYTES`] long and [`MAX_PATH_DEPTH`] components deep;
/// absolute paths, `..` components, NUL bytes, and symlinks leading
/// outside the root (absolute ones, or `..` past it) are refused. A
/// trailing `/` means a directory, as in POSIX. Partial files
/// (`.NAME.fwpart`, regular files only) are neither listed nor served.
#[derive(Debug, Clone)]
pub struct Sandbox {
    path: PathBuf,
    root: Root,
    busy: Arc<Mutex<HashSet<ClaimKey>>>,
}

/// A path a peer named, checked but not yet resolved: `/`-separated plain
/// components, and whether it ended in `/` (a directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<String>,
    dir: bool,
}

impl RelPath {
    /// Whether the path was written with a trailing `/` (names a
    /// directory). Asked by a bucket root.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn names_dir(&self) -> bool {
        self.dir
    }

    /// The components joined with `/`; empty for the root.
    pub fn joined(&self) -> String {
        self.parts.join("/")
    }

    /// The last component, if any.
    pub fn name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// Whether the path ended in `/`.
    #[cfg(test)]
    pub fn is_dir(&self) -> bool {
        self.dir
    }

    /// Whether this is the root itself.
    #[cfg(test)]
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    fn parent(&self) -> &[String] {
        &self.parts[..self.parts.len().saturating_sub(1)]
    }
}

/// At most this much of a peer's path is quoted back in a message.
pub const SHOWN_PATH: usize = 160;

/// `path` as messages quote it: cut short past [`SHOWN_PATH`] bytes.
pub fn shown(path: &str) -> String {
    if path.len() <= SHOWN_PATH {
        return path.to_owned();
    }
    let mut end = SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &path[..end], path.len())
}

/// The fault of an error resolving or opening `path`: an escape through a
/// symlink is a [`Fault::BadPath`], the rest a [`Fault::Io`].
pub fn fault(path: &str, e: io::Error) -> Fault {
    let rule = match e.raw_os_error().map(Errno::from_raw_os_error) {
        _ if is_escape(&e) => PathRule::Escapes,
        Some(Errno::LOOP) => PathRule::SymlinkLoop,
        Some(Errno::NAMETOOLONG) => PathRule::NameTooLong,
        _ => return Fault::io(path, e),
    };
    Fault::bad_path(path, rule)
}

/// Why the parent of `path` could not be opened ([`Sandbox::existing_parent`]).
fn parent_fault(path: &str, e: io::Error) -> Fault {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => Fault::ParentNotPlain { path: path.to_owned() },
        _ => fault(path, e),
    }
}

fn reserved(path: &str) -> Fault {
    Fault::bad_path(path, PathRule::Reserved)
}

impl Sandbox {
    /// A sandbox over `root`, which must be a directory.
    ///
    /// # Errors
    ///
    /// If `root` does not exist or is not a directory.
    pub fn new(root: &Path) -> io::Result<Sandbox> {
        let path = root.canonicalize()?;
        let root = Root::open(&path)?;
        Ok(Sandbox { path, root, busy: Arc::default() })
    }

    /// A sandbox over the directory `dir` below this one's root (a key's
    /// `dir=`): reached without following any symlink on the way, then a
    /// root of its own, so that nothing outside it is reachable from it;
    /// uploads claim paths in the same table as this sandbox's.
    ///
    /// # Errors
    ///
    /// If `dir` is not a plain relative path, or not a directory there
    /// (a symlink is not followed).
    pub fn beneath(&self, dir: &str) -> io::Result<Sandbox> {
        let rel = Self::relative(dir).map_err(|f| io::Error::new(io::ErrorKind::InvalidInput, f.to_string()))?;
        let fd = self.root.clone().without_links().open_dir(&rel.joined())?;
        let root = Root::beneath_fd(fd, self.root.resolver());
        Ok(Sandbox { path: self.path.join(super::names::path(dir)), root, busy: self.busy.clone() })
    }

    /// The same sandbox resolving with `resolver` (tests run the fallback
    /// walk on kernels that have `openat2`).
    pub fn with_resolver(mut self, resolver: Resolver) -> Sandbox {
        self.root = self.root.with_resolver(resolver);
        self
    }

    /// How paths are resolved here.
    pub fn resolver(&self) -> Resolver {
        self.root.resolver()
    }

    /// The canonical root, as it was when the sandbox was made (commands
    /// run there; files are reached through the descriptor).
    pub fn root(&self) -> &Path {
        &self.path
    }

    /// Checks a client's path without touching the file system.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::BadPath`] for NUL bytes, absolute paths, `..`, and
    /// paths over [`MAX_PATH_BYTES`] or [`MAX_PATH_DEPTH`].
    pub fn relative(path: &str) -> Result<RelPath, Fault> {
        if path.len() > MAX_PATH_BYTES {
            return Err(Fault::bad_path(path, PathRule::TooLong));
        }
        // A NUL only as a name's escaped byte, in its one form.
        if !super::names::is_canonical(path) {
            return Err(Fault::bad_path(path, PathRule::Nul));
        }
        if path.starts_with('/') {
            return Err(Fault::bad_path(path, PathRule::Absolute));
        }
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(Fault::bad_path(path, PathRule::DotDot)),
                name => parts.push(name.to_owned()),
            }
            if parts.len() > MAX_PATH_DEPTH {
                return Err(Fault::bad_path(path, PathRule::TooDeep));
            }
        }
        let dir = !parts.is_empty() && (path.ends_with('/') || path.ends_with("/."));
        Ok(RelPath { parts, dir })
    }

    /// Opens an existing path to read it (a file to send, a directory to
    /// list), following symlinks that stay inside, and returns it with
    /// what `fstat` says of it. A FIFO is opened without waiting for a
    /// writer; callers check the type ([`not_regular`]).
    ///
    /// # Errors
    ///
    /// As [`relative`](Self::relative); [`ErrorCode::NotFound`] and other
    /// I/O refusals; [`ErrorCode::NotADirectory`] for `file/`;
    /// [`ErrorCode::BadPath`] for a symlink leading outside, or a partial
    /// file.
    pub fn open(&self, path: &str) -> Result<(File, fs::Metadata), Fault> {
        let (_, file, meta) = self.open_with(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        Ok((file, meta))
    }

    /// [`open`](Self::open), the file's directory kept open in `kept` for
    /// the next file (a tree's files come directory by directory): the
    /// file opened by its name there, a symlink not followed; where that
    /// fails (a symlink inside the root, which `open` follows; a name
    /// that is not there), as `open` opens it, with its error.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_in(&self, path: &str, kept: &mut Option<super::root::KeptDir>) -> Result<(File, fs::Metadata), Fault> {
        let rel = Self::relative(path)?;
        if let (Some(name), false) = (rel.name(), rel.dir) {
            if let Some(fd) = self.root.open_by_name(&rel.joined(), kept) {
                let file = File::from(fd);
                let meta = file.metadata().map_err(|e| fault(path, e))?;
                if meta.is_file() && is_partial_name(name.as_bytes()) {
                    return Err(reserved(path));
                }
                return Ok((file, meta));
            }
        }
        self.open(path)
    }

    /// Opens an existing `path` with `flags` (and `O_DIRECTORY` for a
    /// trailing `/`), `fstat`s it, and refuses a partial file: what
    /// [`open`](Self::open), [`stat`](Self::stat) and listings share.
    fn open_with(&self, path: &str, mut flags: OFlags) -> Result<(RelPath, File, fs::Metadata), Fault> {
        let rel = Self::relative(path)?;
        if rel.dir {
            flags |= OFlags::DIRECTORY;
        }
        let file = File::from(self.root.open_beneath(&rel.joined(), flags).map_err(|e| fault(path, e))?);
        let meta = file.metadata().map_err(|e| fault(path, e))?;
        if meta.is_file() && rel.name().is_some_and(|n| is_partial_name(n.as_bytes())) {
            return Err(reserved(path));
        }
        Ok((rel, file, meta))
    }

    /// Describes `path` (symlinks inside followed). Its `name` is the last
    /// component of `path` as given, `.` for the root: never the name of
    /// the served directory itself.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn stat(&self, path: &str) -> Result<Entry, Fault> {
        let (rel, _, meta) = self.open_with(path, OFlags::PATH)?;
        let mut e = entry(rel.name().unwrap_or(".").to_owned(), &meta);
        // The exact time where whole seconds would lose something (a copy
        // of a directory gives it its source's).
        e.mtime_ns = Stamp::of_meta(&meta).fraction_ns();
        Ok(e)
    }

    /// Resolves a path to be written: its directory, created with its
    /// missing parents one component at a time beneath the root, and its
    /// last component, which is not resolved (a commit renames onto it,
    /// replacing a symlink there, never writing through it).
    ///
    /// # Errors
    ///
    /// As [`relative`](Self::relative), plus the root itself, a trailing
    /// `/` ([`ErrorCode::IsADirectory`]), a partial file's name, a parent
    /// that is a file, or a parent leading outside the root.
    pub fn for_write(&self, path: &str) -> Result<(OwnedFd, OsString), Fault> {
        let rel = Self::relative(path)?;
        let Some(name) = rel.name() else {
            return Err(Fault::bad_path(path, PathRule::Root));
        };
        if rel.dir {
            return Err(Fault::TrailingSlash { path: path.to_owned() });
        }
        if is_partial_name(name.as_bytes()) {
            return Err(reserved(path));
        }
        let dir = self.parent_dir(path, &rel)?;
        Ok((dir, super::names::os(name).into_owned()))
    }

    /// What stands at `path`, a file to be written, and what a partial
    /// file beside it holds, creating nothing: what a streamed upload's
    /// receiver decides by (PROTOCOL.md §4.6.3.2). The last component is not
    /// followed (a symlink there is reported as one).
    ///
    /// # Errors
    ///
    /// As [`for_write`](Self::for_write), except that a missing parent is
    /// not an error (nothing stands there).
    pub fn standing(&self, path: &str) -> Result<Standing, Fault> {
        self.standing_among(path, &mut Dirs::new())
    }

    /// [`standing`](Self::standing) for many paths in a row: `dirs` keeps
    /// the directories looked up so far open (and remembers those that
    /// are not there), so that the files of one directory cost one lookup
    /// of it. What it remembers may be out of date by the time it is
    /// used: a standing is a hint for what to send, and what is written
    /// never relies on it (a commit never replaces a file it was not told
    /// to).
    ///
    /// # Errors
    ///
    /// As [`standing`](Self::standing).
    pub fn standing_among(&self, path: &str, dirs: &mut Dirs) -> Result<Standing, Fault> {
        let rel = Self::relative(path)?;
        let Some(name) = rel.name() else {
            return Err(Fault::bad_path(path, PathRule::Root));
        };
        if is_partial_name(name.as_bytes()) {
            return Err(reserved(path));
        }
        let parent = rel.parent().join("/");
        let nothing = Standing { there: None, partial: None };
        if !dirs.contains_key(&parent) {
            if dirs.len() >= 64 {
                dirs.clear();
            }
            match self.root.open_dir(&parent) {
                Ok(dir) => dirs.insert(parent.clone(), Some(dir)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => dirs.insert(parent.clone(), None),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(Fault::ParentNotADirectory { path: path.to_owned() });
                }
                Err(e) => return Err(fault(path, e)),
            };
        }
        let Some(Some(dir)) = dirs.get(&parent) else {
            return Ok(nothing);
        };
        let there = match rustix::fs::statat(dir, &*super::names::os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(entry_of(String::new(), &st, kind_of(st.st_mode))),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(fault(path, e.into())),
        };
        let part = super::root::partial_name(&super::names::os(name));
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let partial = match rustix::fs::openat(dir, part.as_os_str(), flags, rustix::fs::Mode::empty()) {
            Ok(fd) => {
                let mut file = File::from(fd);
                match file.metadata() {
                    Ok(meta) if meta.is_file() && meta.len() == 0 => Some((0, blake3::hash(b""))),
                    Ok(meta) if meta.is_file() => {
                        let hash = hash_prefix(&mut file, meta.len()).map_err(|e| fault(path, e))?.finalize();
                        Some((meta.len(), hash))
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        Ok(Standing { there, partial })
    }

    /// The directory `rel` is in, created with its missing parents.
    fn parent_dir(&self, path: &str, rel: &RelPath) -> Result<OwnedFd, Fault> {
        let parent: Vec<&str> = rel.parent().iter().map(String::as_str).collect();
        self.root.make_dirs(&parent).map_err(|e| match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::NOTDIR | Errno::EXIST) => Fault::ParentNotADirectory { path: path.to_owned() },
            _ => fault(path, e),
        })
    }

    /// Removes `path`, and if it is a directory everything below it,
    /// never through a symlink: each component of its parent is opened with
    /// `O_NOFOLLOW` from the root, and a symlink at `path` is removed as a
    /// link. Returns whether something was there.
    ///
    /// # Errors
    ///
    /// A path refused as for [`for_write`](Self::for_write) (the root itself
    /// included), [`ErrorCode::NotADirectory`] if a parent is not a
    /// directory or is a symlink, I/O errors.
    /// Unless `recursive`, a directory is refused with
    /// [`ErrorCode::IsADirectory`] (`unlinkat` without `AT_REMOVEDIR`, so
    /// the kernel tells a directory from a file at the moment of removal).
    pub fn remove(&self, path: &str, recursive: bool) -> Result<bool, Fault> {
        let rel = Self::relative(path)?;
        let Some(name) = rel.name() else {
            return Err(Fault::bad_path(path, PathRule::RootRemoved));
        };
        let dir = match self.existing_parent(&rel) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(parent_fault(path, e)),
        };
        let removed = if recursive {
            super::root::remove_at(&dir, &super::names::os(name))
        } else {
            match rustix::fs::unlinkat(&dir, &*super::names::os(name), AtFlags::empty()) {
                Err(Errno::ISDIR | Errno::PERM)
                    if rustix::fs::statat(&dir, &*super::names::os(name), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()) =>
                {
                    return Err(Fault::IsADirectory { path: path.to_owned() });
                }
                done => done.map_err(io::Error::from),
            }
        };
        match removed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(fault(path, e)),
        }
    }

    /// Removes the partial files below the root last written more than
    /// `max_age` ago, and not held by a transfer (its `flock`): what cut
    /// transfers left and nobody resumed. Each is opened by descriptor,
    /// taken only if it is a regular single-linked file of ours, and
    /// removed only while its name still leads to the file checked.
    /// Returns the paths removed, with their sizes. Blocking.
    ///
    /// # Errors
    ///
    /// A walk that cannot start; files that cannot be checked are left,
    /// and a directory that cannot be read is logged (a warning naming
    /// it) and passed over.
    pub fn prune_partials(&self, max_age: std::time::Duration) -> io::Result<Vec<(String, u64)>> {
        let mut found = Vec::new();
        let root = self.root.open_dir("")?;
        let mut sink = |e: Entry| {
            found.push(e);
            Ok(())
        };
        // A directory the server cannot read is named and passed over:
        // the rest is still pruned.
        let mut unreadable = |rel: &str, e: io::Error| {
            let rel = if rel.is_empty() { "." } else { rel };
            tracing::warn!("looking for abandoned partial files: {}: {e}; skipped", crate::text::printable(rel));
            Ok(())
        };
        walk(root, ("", None), 0, Listing::Partials, (&mut sink, &mut unreadable, &mut super::attrs::Names::new()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let cutoff = i64::try_from(now.saturating_sub(max_age.as_secs())).unwrap_or(i64::MAX);
        let mut removed = Vec::new();
        for e in found.into_iter().filter(|e| e.mtime < cutoff) {
            let Ok(rel) = Self::relative(&e.name) else { continue };
            let Some(name) = rel.name() else { continue };
            let Ok(dir) = self.root.open_dir(&rel.parent().join("/")) else { continue };
            if let Ok(size) = super::root::remove_stale_partial(&dir, &super::names::os(name), cutoff) {
                removed.push((e.name, size));
            }
        }
        Ok(removed)
    }

    /// The directory `rel` is in, every component opened from the root
    /// without following a symlink (none is created).
    fn existing_parent(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        let root = self.root.open_dir("")?;
        let parent: Vec<&str> = rel.parent().iter().map(String::as_str).collect();
        super::root::open_no_links(&root, &parent)
    }

    /// Makes `path` a symlink to `target` (stored as given, never
    /// followed) with the time `at`, replacing what is there (not a
    /// directory) if `replace` ([`symlink_at`]). Returns whether anything
    /// changed (`false`: the same link with the same time was there).
    ///
    /// # Errors
    ///
    /// As [`for_write`](Self::for_write); [`Fault::Exists`] without
    /// `replace`, [`Fault::IsADirectory`], a target that is empty or holds
    /// a NUL ([`Fault::NotKept`]), I/O errors.
    pub fn make_symlink(
        &self,
        path: &str,
        target: &str,
        at: Stamp,
        (replace, backup): (bool, Option<&Backup>),
    ) -> Result<bool, Fault> {
        if target.is_empty() || !super::names::is_canonical(target) || target.len() > 4095 {
            return Err(Fault::NotKept {
                path: path.to_owned(),
                why: "a symlink target must be 1 to 4095 bytes, no NUL",
            });
        }
        let (dir, name) = self.for_write(path)?;
        let mut kept = None;
        let made = {
            let mut keep = self.keeper(backup, path, (&dir, &name), &mut kept);
            symlink_at(&dir, &name, target, at, (replace, &mut keep))
        };
        made.map_err(|e| kept.take().unwrap_or_else(|| placing_fault(path, e)))
    }

    /// What [`symlink_at`] and [`hard_link_at`] call before they replace
    /// what stands at `at`: keeps it as `backup` says (nothing without
    /// one); a failure is put in `kept` and the link is not made.
    fn keeper<'a>(
        &'a self,
        backup: Option<&'a Backup>,
        full: &'a str,
        at: (&'a OwnedFd, &'a OsStr),
        kept: &'a mut Option<Fault>,
    ) -> impl FnMut() -> io::Result<()> + 'a {
        move || match backup.map(|b| self.keep(b, full, at, false)) {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(fault)) => {
                let e = io::Error::other(fault.to_string());
                *kept = Some(fault);
                Err(e)
            }
        }
    }

    /// Keeps what stands at the root path `full` (open as the name
    /// `at.1` in the directory `at.0`) where `backup` says, before it is
    /// replaced or (`moving`) removed ([`keep_at`]): beside it, or below
    /// `backup.dir`, whose missing directories are made, never through a
    /// link. Returns whether anything was kept.
    ///
    /// # Errors
    ///
    /// [`Fault::NotKept`] for a backup that cannot be (see
    /// [`Backup::path_for`]), a backup name that is a partial file's or
    /// too long; [`Fault::NotBackedUp`] when keeping it fails.
    pub fn keep(&self, backup: &Backup, full: &str, at: (&OwnedFd, &OsStr), moving: bool) -> Result<bool, Fault> {
        if standing_at(at.0, at.1).map_err(|e| fault(full, e))?.is_none() {
            return Ok(false);
        }
        let to = backup.path_for(full).map_err(|why| Fault::NotKept { path: full.to_owned(), why })?;
        let failed = |source| Fault::NotBackedUp { path: full.to_owned(), to: to.clone(), source };
        let kept = if backup.dir.is_none() {
            let name = to.rsplit('/').next().unwrap_or_default();
            if is_partial_name(name.as_bytes()) {
                return Err(reserved(&to));
            }
            keep_at(at.0, at.1, (at.0, &super::names::os(name)), moving)
        } else {
            let (dir, name) = self.for_write(&to)?;
            keep_at(at.0, at.1, (&dir, &name), moving)
        };
        kept.map_err(failed)
    }

    /// Makes `path` another name of the regular file `to` (a hard link;
    /// neither followed if a symlink), replacing what is there (not a
    /// directory) if `replace` ([`hard_link_at`]). Returns whether
    /// anything changed (`false`: `path` was that file already).
    ///
    /// # Errors
    ///
    /// As [`for_write`](Self::for_write) for both; [`Fault::NotFound`] if
    /// `to` is missing, [`Fault::NotRegular`] if it is not a regular file,
    /// [`Fault::Exists`] without `replace`, I/O errors (`EXDEV`, `EMLINK`).
    pub fn make_hard_link(
        &self,
        path: &str,
        to: &str,
        (replace, backup): (bool, Option<&Backup>),
    ) -> Result<bool, Fault> {
        let to_rel = Self::relative(to)?;
        let Some(to_name) = to_rel.name() else { return Err(Fault::bad_path(to, PathRule::Root)) };
        let from = self.existing_parent(&to_rel).map_err(|e| parent_fault(to, e))?;
        let (dir, name) = self.for_write(path)?;
        let mut kept = None;
        let made = {
            let mut keep = self.keeper(backup, path, (&dir, &name), &mut kept);
            hard_link_at((&from, &super::names::os(to_name)), &dir, &name, (replace, &mut keep))
        };
        made.map_err(|e| match (kept.take(), e.kind()) {
            (Some(fault), _) => fault,
            (None, io::ErrorKind::NotFound) => Fault::NotFound { path: to.to_owned() },
            (None, io::ErrorKind::InvalidInput) => Fault::NotRegular { path: to.to_owned() },
            (None, _) => placing_fault(path, e),
        })
    }

    /// Gives the directory `path` (made, with its parents, if missing)
    /// the permission bits `mode` and the time `at` ([`dir_attrs`]); a
    /// symlink there is not followed. Returns whether anything changed.
    ///
    /// # Errors
    ///
    /// As [`mkdir`](Self::mkdir); [`Fault::ExistsNotADirectory`] for a
    /// file or a symlink there; I/O errors.
    pub fn set_dir_attrs(
        &self,
        path: &str,
        mode: u32,
        at: Stamp,
        attrs: Option<(&Attrs, Applying)>,
    ) -> Result<bool, Fault> {
        let made = self.mkdir(path, true)?;
        let rel = Self::relative(path)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = self.root.open_beneath(&rel.joined(), flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => Fault::ExistsNotADirectory { path: path.to_owned() },
            _ => fault(path, e),
        })?;
        if let Some((attrs, how)) = attrs {
            super::attrs::apply(&dir, attrs, how, &mut super::attrs::Names::new()).map_err(|e| fault(path, e))?;
        }
        Ok(dir_attrs(&dir, mode, at).map_err(|e| fault(path, e))? || made)
    }

    /// Gives the regular file `path` the permission bits and attributes
    /// of an entry whose contents it has already ([`file_attrs_at`]); a
    /// symlink there is not followed. Returns whether anything was set.
    ///
    /// # Errors
    ///
    /// [`Fault::NotAFile`] for something else than a regular file there,
    /// [`Fault::NotOlder`] for a file that changed since the plan; I/O
    /// errors.
    pub fn set_file_attrs(
        &self,
        path: &str,
        (size, at): (u64, Stamp),
        mode: u32,
        attrs: (Option<&Attrs>, Applying),
    ) -> Result<bool, Fault> {
        let (dir, name) = self.for_write(path)?;
        let mut names = super::attrs::Names::new();
        file_attrs_at(&dir, &name, (size, at), mode, attrs, &mut names).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => Fault::NotAFile { path: path.to_owned() },
            io::ErrorKind::AlreadyExists => Fault::NotOlder { path: path.to_owned() },
            _ => fault(path, e),
        })
    }

    /// Makes `path` the special file `attrs.special` names (a FIFO, a
    /// socket's name, a device), with the permission bits `mode` (masked
    /// by the umask), the owner `attrs` names (as `how` allows) and the
    /// time `at`: made under a temporary name, then renamed into place,
    /// over what is there (not a directory) only if `replace`. Returns
    /// whether anything changed (`false`: the same special file with the
    /// same time was there).
    ///
    /// # Errors
    ///
    /// [`Fault::NotKept`] where this process may not make it (not root) or
    /// `attrs` says no kind; as [`make_symlink`](Self::make_symlink).
    pub fn make_special(
        &self,
        path: &str,
        (mode, at): (u32, Stamp),
        (attrs, how): (&Attrs, Applying),
        (replace, backup): (bool, Option<&Backup>),
    ) -> Result<bool, Fault> {
        let Some(special) = attrs.special else {
            return Err(Fault::NotKept { path: path.to_owned(), why: "a special file entry without what it is" });
        };
        let (dir, name) = self.for_write(path)?;
        let mut kept = None;
        let made = {
            let mut keep = self.keeper(backup, path, (&dir, &name), &mut kept);
            special_at(&dir, &name, (special, attrs, how), (mode, at), (replace, &mut keep))
        };
        made.map_err(|e| match (kept.take(), e.kind()) {
            (Some(fault), _) => fault,
            (None, io::ErrorKind::PermissionDenied) => {
                Fault::NotKept { path: path.to_owned(), why: "special files are kept only by a server running as root" }
            }
            (None, _) => placing_fault(path, e),
        })
    }

    /// Renames `from` to `to` (both relative to the root, never the root
    /// itself nor a partial file's name), atomically; without `force`
    /// never over an existing name (`RENAME_NOREPLACE`). Both parents are
    /// opened by descriptor without following symlinks; `to`'s parent
    /// must exist.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotFound`] (no `from`, or no parent for `to`),
    /// [`ErrorCode::Exists`], [`ErrorCode::BadPath`] (escapes, the root,
    /// partial names, a directory into itself), I/O errors.
    pub fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Fault> {
        let open_parent = |path: &str| -> Result<(OwnedFd, String), Fault> {
            let rel = Self::relative(path)?;
            let Some(name) = rel.name() else {
                return Err(Fault::bad_path(path, PathRule::RootMoved));
            };
            if is_partial_name(name.as_bytes()) {
                return Err(reserved(path));
            }
            let dir = self.existing_parent(&rel).map_err(|e| parent_fault(path, e))?;
            Ok((dir, name.to_owned()))
        };
        let (from_dir, from_name) = open_parent(from)?;
        let (to_dir, to_name) = open_parent(to)?;
        let flags = if force { rustix::fs::RenameFlags::empty() } else { rustix::fs::RenameFlags::NOREPLACE };
        let (from_os, to_os) = (super::names::os(&from_name), super::names::os(&to_name));
        match rustix::fs::renameat_with(&from_dir, &*from_os, &to_dir, &*to_os, flags) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => Err(Fault::Exists { path: to.to_owned() }),
            Err(Errno::INVAL) => Err(Fault::bad_path(to, PathRule::BelowItself)),
            Err(e) => Err(fault(from, e.into())),
        }
    }

    /// Makes sure `path` is a directory, with `parents` creating it and
    /// its missing parents (an existing directory is fine); without, as
    /// `mkdir` without `-p`: the parent must exist ([`ErrorCode::NotFound`])
    /// and the path must not ([`ErrorCode::Exists`]). Returns whether it
    /// was created.
    ///
    /// # Errors
    ///
    /// As [`for_write`](Self::for_write); [`ErrorCode::Exists`] if a file
    /// is there.
    pub fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Fault> {
        let rel = Self::relative(path)?;
        let Some(name) = rel.name() else {
            // The root as the client named it ("" says nothing: ".").
            let path = if path.is_empty() { "." } else { path };
            return if parents { Ok(false) } else { Err(Fault::Exists { path: path.to_owned() }) };
        };
        // A directory may have any name, `.b.fwpart` included: only
        // regular files of that form are partial files.
        let dir = if parents {
            self.parent_dir(path, &rel)?
        } else {
            self.existing_parent(&rel).map_err(|e| parent_fault(path, e))?
        };
        if !parents {
            return match rustix::fs::mkdirat(&dir, &*super::names::os(name), rustix::fs::Mode::from_raw_mode(0o777)) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST) => Err(Fault::Exists { path: path.to_owned() }),
                Err(e) => Err(fault(path, e.into())),
            };
        }
        match rustix::fs::mkdirat(&dir, &*super::names::os(name), rustix::fs::Mode::from_raw_mode(0o777)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => match self.root.open_dir(&rel.joined()) {
                Ok(_) => Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    Err(Fault::ExistsNotADirectory { path: path.to_owned() })
                }
                Err(e) => Err(fault(path, e)),
            },
            Err(e) => Err(fault(path, e.into())),
        }
    }

    /// Marks `name` in `dir` as being uploaded until the guard drops; a
    /// second upload of it meanwhile (through any path that leads to the
    /// same directory) is refused. Blocking: waits up to [`CLAIM_WAIT`]
    /// for an earlier upload to let go, since a client that was killed and
    /// restarted at once can arrive before the server has seen its old
    /// connection close.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Busy`] if the path is still being uploaded after that.
    pub fn claim(&self, dir: &OwnedFd, name: &OsStr, shown_as: &str) -> Result<Claim, Fault> {
        let id = FileId::of_fd(dir).map_err(|e| fault(shown_as, e))?;
        self.claim_in(id, name, shown_as)
    }

    /// [`claim`](Self::claim) in the directory whose identity is `dir`
    /// (one that the caller keeps open, and so has stat'ed once).
    ///
    /// # Errors
    ///
    /// As [`claim`](Self::claim).
    pub fn claim_in(&self, dir: FileId, name: &OsStr, shown_as: &str) -> Result<Claim, Fault> {
        let key = ClaimKey { dev: dir.dev, ino: dir.ino, name: name.to_owned() };
        let deadline = std::time::Instant::now() + CLAIM_WAIT;
        loop {
            if self.busy.lock().expect("busy set poisoned").insert(key.clone()) {
                return Ok(Claim { busy: self.busy.clone(), key });
            }
            if std::time::Instant::now() >= deadline {
                return Err(Fault::Busy { path: shown_as.to_owned() });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Lists `path`: a directory as `listing` says (sorted by name;
    /// partial files hidden; below the directory, names are relative to
    /// `path` and symlinked directories are not followed), or a file
    /// itself.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn list(&self, path: &str, listing: Listing) -> Result<Vec<Entry>, Fault> {
        self.list_within(path, listing, crate::wire::MAX_BUFFERED_BODY as usize)
    }

    /// [`list`](Self::list), giving up with [`ErrorCode::TooLarge`] as
    /// soon as the entries would take more than about `budget` bytes of
    /// JSON: a listing too large to send is not built in memory first.
    fn list_within(&self, path: &str, listing: Listing, budget: usize) -> Result<Vec<Entry>, Fault> {
        let (rel, file, meta) = self.open_with(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        if !meta.is_dir() {
            return Ok(vec![entry(rel.name().unwrap_or(".").to_owned(), &meta)]);
        }
        let (mut out, mut left) = (Vec::new(), budget);
        let mut sink = |e: Entry| {
            // Each entry counts its name and ~64 bytes of JSON around it.
            let cost = e.name.len() + 64;
            if cost >= left {
                return Err(io::Error::other(Stop::BudgetSpent));
            }
            left -= cost;
            out.push(e);
            Ok(())
        };
        // One listing, one answer: a path below that cannot be read
        // refuses it, named.
        let mut unreadable = None;
        let mut skip = |rel: &str, e: io::Error| {
            unreadable = Some(fault(&join_below(path, rel), e));
            Err(io::Error::other(Stop::Unreadable))
        };
        let walked =
            walk(OwnedFd::from(file), ("", None), 0, listing, (&mut sink, &mut skip, &mut super::attrs::Names::new()));
        match walked {
            Ok(()) => {}
            Err(e) if Stop::is(&e, Stop::BudgetSpent) => {
                return Err(Fault::ListingTooLarge { path: path.to_owned(), budget: budget as u64 });
            }
            Err(_) if unreadable.is_some() => return Err(unreadable.expect("checked")),
            Err(e) => return Err(fault(path, e)),
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl Sandbox {
    /// Walks the tree at `path` as [`list`](Self::list) does, handing each
    /// entry to `sink` as it is found (in directory order, a directory
    /// before what is below it) instead of building the listing: for trees
    /// of any size. A `sink` error stops the walk and is returned.
    ///
    /// A path below that cannot be read (a directory that cannot be opened
    /// or read, an entry that cannot be looked at) goes to `skip` with why,
    /// its path relative to `path`, and the walk goes on past it; without
    /// `skip` (or when it fails), the walk stops there with that refusal.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); a file at `path` is refused with
    /// [`ErrorCode::NotADirectory`].
    pub fn walk(
        &self,
        path: &str,
        listing: Listing,
        sink: &mut dyn FnMut(Entry) -> io::Result<()>,
        mut skip: Option<&mut Skip<'_>>,
    ) -> Result<(), Fault> {
        // Looked at first without opening it for reading: a FIFO or a
        // device named here is never opened (that alone may wake its
        // writer, or rewind a tape); a directory is then opened for
        // reading through the same descriptor, so it is the one looked at.
        let (_, probe, meta) = self.open_with(path, OFlags::PATH)?;
        if !meta.is_dir() {
            return Err(Fault::NotADirectory { path: path.to_owned() });
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(
            rustix::fs::openat(&probe, ".", flags, rustix::fs::Mode::empty()).map_err(|e| fault(path, e.into()))?,
        );
        let mut stopped = None;
        let mut unreadable = |rel: &str, e: io::Error| {
            let f = fault(&join_below(path, rel), e);
            match skip.as_mut() {
                Some(skip) => skip(rel, f),
                None => {
                    stopped = Some(f);
                    Err(io::Error::other(Stop::Unreadable))
                }
            }
        };
        // Hard links: the first path of each file with several names, by
        // device and inode (the walk marks such files with that key).
        let mut firsts: HashMap<String, String> = HashMap::new();
        let mut marking = |mut e: Entry| {
            if let Some(key) = e.link.take() {
                match firsts.get(&key) {
                    Some(first) => e.link = Some(first.clone()),
                    None if firsts.len() < MAX_LINK_GROUPS => {
                        firsts.insert(key, e.name.clone());
                    }
                    None => {}
                }
            }
            sink(e)
        };
        let mut names = super::attrs::Names::new();
        let sinks = (&mut marking as &mut dyn FnMut(Entry) -> io::Result<()>, &mut unreadable as _, &mut names);
        let file = OwnedFd::from(file);
        // -L: links are resolved beneath the walked directory itself.
        let tree = match listing {
            Listing::Meta(_, CopyLinks(true)) => {
                Some(Root::beneath_fd(file.try_clone().map_err(|e| fault(path, e))?, self.root.resolver()))
            }
            _ => None,
        };
        let walked = walk(file, ("", tree.as_ref()), 0, listing, sinks);
        match (walked, stopped) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(f)) => Err(f),
            (Err(e), None) => Err(fault(path, e)),
        }
    }
}

/// Why a walk was stopped by what it reports to: control flow, carried
/// through the walk's `io::Error` and never shown to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Stop {
    /// A listing outgrew its budget.
    #[error("the listing outgrew its budget")]
    BudgetSpent,
    /// A path below could not be read, and that ends the walk (its fault
    /// is kept beside).
    #[error("a path below cannot be read")]
    Unreadable,
}

impl Stop {
    /// Whether `e` is the stop `which`.
    fn is(e: &io::Error, which: Stop) -> bool {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Stop>()) == Some(&which)
    }
}

/// A walk that went deeper than [`MAX_PATH_DEPTH`] levels.
#[derive(Debug, thiserror::Error)]
#[error("the tree is deeper than {MAX_PATH_DEPTH} levels (MAX_PATH_DEPTH)")]
struct TooDeep;

/// What [`Sandbox::walk`] hands a path below that cannot be read: its path
/// relative to the walked one, and the fault naming it. An error stops
/// the walk.
pub type Skip<'a> = dyn FnMut(&str, Fault) -> io::Result<()> + 'a;

/// `base/rel`, or `base` alone for an empty `rel` (the path a message
/// names for something `rel` below `base`).
fn join_below(base: &str, rel: &str) -> String {
    let base = base.trim_end_matches('/');
    match (base.is_empty(), rel.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => rel.to_owned(),
        (false, false) => format!("{base}/{rel}"),
    }
}

/// What a walk reports to: each entry, and each path below that cannot be
/// read (relative, with why). An error from either stops the walk.
type Sinks<'a> = (
    &'a mut dyn FnMut(Entry) -> io::Result<()>,
    &'a mut dyn FnMut(&str, io::Error) -> io::Result<()>,
    &'a mut super::attrs::Names,
);

/// Hands the sink the entries below `dir` (a descriptor: each subdirectory
/// is opened from its parent with `O_NOFOLLOW`, so a directory swapped for
/// a symlink mid-walk is skipped, never followed). A directory that cannot
/// be opened or read, and an entry that cannot be looked at, go to the
/// second sink (a directory that cannot be searched, once), and the walk
/// goes on with the next.
fn walk(
    dir: OwnedFd,
    (prefix, tree): (&str, Option<&Root>),
    depth: usize,
    listing: Listing,
    sinks: Sinks<'_>,
) -> io::Result<()> {
    let (sink, unreadable, names) = sinks;
    // Two descriptors and a stack frame a level: bounded.
    if depth > MAX_PATH_DEPTH {
        return Err(io::Error::other(TooDeep));
    }
    let entries = match rustix::fs::Dir::read_from(&dir) {
        Ok(entries) => entries,
        Err(e) => return unreadable(prefix, e.into()),
    };
    for item in entries {
        let item = match item {
            Ok(item) => item,
            Err(e) => return unreadable(prefix, e.into()),
        };
        let raw = item.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let name = super::names::encode(raw);
        let rel = if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") };
        let st = match rustix::fs::statat(&dir, item.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the directory was read.
            Err(Errno::NOENT) => continue,
            // A directory that can be read and not searched: none of its
            // entries can be looked at; it is reported once.
            Err(e @ (Errno::ACCESS | Errno::PERM)) => return unreadable(prefix, e.into()),
            Err(e) => {
                unreadable(&rel, e.into())?;
                continue;
            }
        };
        let kind = kind_of(st.st_mode);
        let partial = kind == Kind::File && is_partial_name(raw);
        if partial != (listing == Listing::Partials) && kind != Kind::Dir {
            continue;
        }
        let keep = match listing {
            Listing::Entries => true,
            Listing::Files => kind == Kind::File,
            Listing::Tree => kind == Kind::File || kind == Kind::Dir,
            Listing::Meta(..) => true,
            Listing::Partials => partial,
        };
        if let (true, Listing::Meta(wanted, copy_links)) = (keep, listing) {
            // -L: a link to a file inside the tree is listed as that file
            // (its attributes, as a followed link's, not read).
            if let (Kind::Symlink, CopyLinks(true), Some(tree)) = (kind, copy_links, tree) {
                if let Some(target) = followed(tree, &rel) {
                    let mut e = entry_of(rel.clone(), &target, Kind::File);
                    e.mtime_ns = Stamp::of_stat(&target).wire_ns();
                    let owner = super::attrs::Wanted { xattrs: false, acls: false, ..wanted };
                    e.attrs = super::attrs::read(&dir, OsStr::from_bytes(raw), &target, owner, names);
                    sink(e)?;
                    continue;
                }
            }
            let mut e = entry_of(rel.clone(), &st, kind);
            e.mtime_ns = Stamp::of_stat(&st).wire_ns();
            e.attrs = super::attrs::read(&dir, OsStr::from_bytes(raw), &st, wanted, names);
            if kind == Kind::Symlink {
                match rustix::fs::readlinkat(&dir, item.file_name(), Vec::new()) {
                    Ok(target) => e.target = Some(super::names::encode(target.as_bytes()).into_owned()),
                    Err(Errno::NOENT) => continue,
                    Err(e) => {
                        unreadable(&rel, e.into())?;
                        continue;
                    }
                }
            }
            #[allow(clippy::unnecessary_cast)] // the field types differ between targets
            if kind == Kind::File && st.st_nlink as u64 > 1 {
                // Turned into the first path of the group by `Sandbox::walk`.
                e.link = Some(format!("{}:{}", st.st_dev, st.st_ino));
            }
            sink(e)?;
        } else if keep {
            sink(entry_of(rel.clone(), &st, kind))?;
        }
        if listing != Listing::Entries && kind == Kind::Dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&dir, item.file_name(), flags, rustix::fs::Mode::empty()) {
                Ok(sub) => walk(sub, (&rel, tree), depth + 1, listing, (&mut *sink, &mut *unreadable, &mut *names))?,
                // Gone, or swapped for a symlink, since it was read.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => unreadable(&rel, e.into())?,
            }
        }
    }
    Ok(())
}

/// Whether a walk follows symlinks to files inside the walked tree (`-L`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyLinks(pub bool);

/// What the symlink `rel` (below the walked directory `tree`) leads to,
/// if it is a regular file beneath `tree`: never one outside it (an
/// absolute link, `..` past it), a directory, or a dangling link.
fn followed(tree: &Root, rel: &str) -> Option<rustix::fs::Stat> {
    let fd = tree.open_beneath(rel, OFlags::PATH).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (kind_of(st.st_mode) == Kind::File).then_some(st)
}

fn kind_of(mode: u32) -> Kind {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// A name for a link made before it is renamed into place: unique in this
/// process, and not a partial file's name.
fn temp_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unguessable: nobody else can put something at it first.
    let mut rand = [0u8; 8];
    let _ = getrandom::fill(&mut rand);
    format!(".fwlink-{}-{n}-{}", std::process::id(), hex::encode(rand))
}

/// Renames `temp` to `name` in `dir`: over what is there if `replace`,
/// else never (`RENAME_NOREPLACE`); `temp` is removed if that fails.
fn place(dir: &OwnedFd, temp: &str, name: &OsStr, replace: bool) -> io::Result<()> {
    let flags = if replace { rustix::fs::RenameFlags::empty() } else { rustix::fs::RenameFlags::NOREPLACE };
    rustix::fs::renameat_with(dir, temp, dir, name, flags).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
        io::Error::from(e)
    })
}

/// What placing a link at `path` failed with, as a fault: something in
/// the way that may not be replaced, a directory, or the error.
fn placing_fault(path: &str, e: io::Error) -> Fault {
    match e.kind() {
        io::ErrorKind::AlreadyExists => Fault::Exists { path: path.to_owned() },
        io::ErrorKind::IsADirectory => Fault::IsADirectory { path: path.to_owned() },
        _ => fault(path, e),
    }
}

/// What stands at `name` in `dir`, not followed, if anything; an error
/// other than its absence.
fn standing_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether what stands there may give way to a link: never a directory
/// (`IsADirectory`), anything else only if `replace` (`AlreadyExists`).
fn may_replace(st: &rustix::fs::Stat, replace: bool) -> io::Result<()> {
    if kind_of(st.st_mode) == Kind::Dir {
        return Err(io::ErrorKind::IsADirectory.into());
    }
    if !replace {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    Ok(())
}

/// Whether a link may replace what stands at its name, and what to call
/// first when it does (to keep a backup of it; `&mut || Ok(())` for
/// nothing): an error there leaves everything as it was.
pub type Replacing<'a> = (bool, &'a mut dyn FnMut() -> io::Result<()>);

/// Makes `name` in `dir` a symlink to `target` (stored as given, never
/// followed) with the time `at`: atomically, a new link under a
/// temporary name, given its time, then renamed into place (over what is
/// there if `replace`). Returns whether anything changed (`false`: the
/// same link with the same time was there; the same link with another
/// time only has its time set). What both sides of a copy use.
///
/// # Errors
///
/// `IsADirectory` for a directory there, `AlreadyExists` for anything
/// else there without `replace`; I/O errors.
pub fn symlink_at(dir: &OwnedFd, name: &OsStr, target: &str, at: Stamp, replacing: Replacing<'_>) -> io::Result<bool> {
    let (replace, keep) = replacing;
    if let Some(st) = standing_at(dir, name)? {
        let same = kind_of(st.st_mode) == Kind::Symlink
            && rustix::fs::readlinkat(dir, name, Vec::new())
                .is_ok_and(|t| t.as_bytes() == &*super::names::decode(target));
        if same {
            if Stamp::of_stat(&st) == at {
                return Ok(false);
            }
            set_link_time(dir, name, at)?;
            return Ok(true);
        }
        may_replace(&st, replace)?;
        keep()?;
    }
    let temp = temp_name();
    rustix::fs::symlinkat(&*super::names::decode(target), dir, &temp)?;
    // The time before the rename: the link is never under its name with
    // another.
    let _ = set_link_time(dir, temp.as_str(), at);
    place(dir, &temp, name, replace)?;
    Ok(true)
}

/// Makes `name` in `dir` the special file `special` (see
/// [`Sandbox::make_special`]), with its owner as `how` allows, its bits
/// and its time, under a temporary name renamed into place. What both
/// sides of a copy use.
///
/// # Errors
///
/// `PermissionDenied` unless root; otherwise as [`symlink_at`].
pub fn special_at(
    dir: &OwnedFd,
    name: &OsStr,
    (special, attrs, how): (Special, &Attrs, Applying),
    (mode, at): (u32, Stamp),
    replacing: Replacing<'_>,
) -> io::Result<bool> {
    let (replace, keep) = replacing;
    if let Some(st) = standing_at(dir, name)? {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let rdev = [rustix::fs::major(st.st_rdev.into()), rustix::fs::minor(st.st_rdev.into())];
        #[allow(clippy::unnecessary_cast)]
        let same = super::attrs::special_of(st.st_mode as u32) == Some(special)
            && (!special.is_device() || attrs.rdev == Some(rdev))
            && Stamp::of_stat(&st) == at;
        if same {
            return Ok(false);
        }
        may_replace(&st, replace)?;
        keep()?;
    }
    let temp = temp_name();
    // Its bits as mknod gives them (masked by the umask, as a received
    // file's are): no chmod by name, which would follow a symlink another
    // process put at the temporary name meanwhile.
    super::attrs::make_special(dir, &temp, special, attrs.rdev, received_mode(mode))?;
    let finish = || -> io::Result<()> {
        super::attrs::apply_owner_at(dir, OsStr::new(&temp), attrs, how, &mut super::attrs::Names::new())?;
        super::attrs::apply_xattrs_at(dir, OsStr::new(&temp), attrs, how)?;
        set_link_time(dir, temp.as_str(), at)
    };
    if let Err(e) = finish() {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
        return Err(e);
    }
    place(dir, &temp, name, replace)?;
    Ok(true)
}

/// Makes `name` in `dir` another name of the regular file `from` (a
/// directory and a name in it; a hard link, neither followed if a
/// symlink): linked under a temporary name, then renamed into place (over
/// what is there if `replace`). Returns whether anything changed
/// (`false`: `name` was that file already).
///
/// # Errors
///
/// `NotFound` if `from` is missing, `InvalidInput` if it is not a regular
/// file, otherwise as [`symlink_at`]; `EXDEV`, `EMLINK`.
pub fn hard_link_at(
    from: (&OwnedFd, &OsStr),
    dir: &OwnedFd,
    name: &OsStr,
    replacing: Replacing<'_>,
) -> io::Result<bool> {
    let (replace, keep) = replacing;
    let Some(source) = standing_at(from.0, from.1)? else { return Err(io::ErrorKind::NotFound.into()) };
    if kind_of(source.st_mode) != Kind::File {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if let Some(st) = standing_at(dir, name)? {
        if st.st_dev == source.st_dev && st.st_ino == source.st_ino {
            return Ok(false);
        }
        may_replace(&st, replace)?;
        keep()?;
    }
    let temp = temp_name();
    rustix::fs::linkat(from.0, from.1, dir, &temp, AtFlags::empty())?;
    place(dir, &temp, name, replace)?;
    Ok(true)
}

/// Gives the directory open as `dir` the permission bits `mode` (masked
/// by the umask, as for files) and the time `at`. Returns whether
/// anything changed.
///
/// # Errors
///
/// Those of `fchmod(2)` and `futimens(2)`.
pub fn dir_attrs(dir: &OwnedFd, mode: u32, at: Stamp) -> io::Result<bool> {
    let st = rustix::fs::fstat(dir)?;
    let mode = received_mode(mode);
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let changed_mode = st.st_mode as u32 & 0o7777 != mode;
    if changed_mode {
        rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(mode as _))?;
    }
    let changed_time = Stamp::of_stat(&st) != at;
    if changed_time {
        rustix::fs::futimens(dir, &at.timestamps())?;
    }
    Ok(changed_mode || changed_time)
}

/// Gives the regular file `name` in `dir` the permission bits a received
/// file gets from `mode` ([`received_mode`]) and the owner and extended
/// attributes `attrs` names, as `how` allows, if it is still the file a
/// plan found unchanged: a regular file of `size` bytes and time `at`
/// (what a re-sync does to a file whose contents are the same and whose
/// attributes are not). Reached through an `O_PATH` descriptor, never
/// opened: its bits need not let this process read it. Returns whether
/// anything was set.
///
/// # Errors
///
/// `InvalidInput` for something else than a regular file there (a
/// symlink is not followed), `AlreadyExists` for a file whose size or
/// time differ now; those of `chmod(2)`, `fchownat(2)`, `setxattr(2)`.
pub fn file_attrs_at(
    dir: &OwnedFd,
    name: &OsStr,
    (size, at): (u64, Stamp),
    mode: u32,
    (attrs, how): (Option<&Attrs>, Applying),
    names: &mut super::attrs::Names,
) -> io::Result<bool> {
    let fd =
        rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    if st.st_size as u64 != size || Stamp::of_stat(&st) != at {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "changed since the copy was planned"));
    }
    if let Some(attrs) = attrs {
        // The owner first: changing it clears setuid bits.
        super::attrs::apply_through(&fd, attrs, how, names)?;
    }
    let mode = received_mode(mode);
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let changed_mode = st.st_mode as u32 & 0o7777 != mode;
    if changed_mode {
        super::attrs::chmod_through(&fd, mode)?;
    }
    Ok(changed_mode || attrs.is_some())
}

/// Gives the link `name` in `dir` the time `at` (`lutimes`: the link's
/// own, not its target's).
pub fn set_link_time(dir: &OwnedFd, name: impl rustix::path::Arg, at: Stamp) -> io::Result<()> {
    Ok(rustix::fs::utimensat(dir, name, &at.timestamps(), AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The most groups of hard links one listing tells apart; past it, further
/// files with several names are listed as plain files (copied, not
/// linked).
pub const MAX_LINK_GROUPS: usize = 1 << 20;

/// An [`Entry`] from what `statat` said.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
fn entry_of(name: String, st: &rustix::fs::Stat, kind: Kind) -> Entry {
    Entry::new(name, st.st_size as u64, kind, Stamp::of_stat(st).wire_secs(), st.st_mode as u32 & 0o7777)
}

/// Directories kept open by [`Sandbox::standing_among`], by path (`None`:
/// not there); at most 64.
pub type Dirs = HashMap<String, Option<OwnedFd>>;

/// What [`Sandbox::standing`] found.
#[derive(Debug, Clone)]
pub struct Standing {
    /// What is at the path (its `name` empty), not followed.
    pub there: Option<Entry>,
    /// The bytes a partial file beside it holds, and their BLAKE3 (an
    /// empty one too: it holds 0 bytes).
    pub partial: Option<(u64, blake3::Hash)>,
}

/// What identifies a path being uploaded: its directory (by device and
/// inode, however it was reached) and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClaimKey {
    dev: u64,
    ino: u64,
    name: OsString,
}

/// The permission bits a received file gets from the sender's `mode`:
/// its `rwx` bits masked by this process's umask, as `cp` does without
/// `-p`. A sender cannot make the receiver's file setuid, or writable by
/// others where the receiver's umask says no.
pub fn received_mode(mode: u32) -> u32 {
    mode & 0o777 & !umask()
}

/// This process's umask, read from `/proc/self/status` (setting it to
/// read it back would race with other threads creating files); 0o022 if
/// the kernel does not show it.
pub fn umask() -> u32 {
    // Read once: a tree of small files would otherwise read it per file.
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(read_umask)
}

fn read_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(line.trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

/// What a listing of a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Its own entries, of every kind.
    Entries,
    /// Every regular file below it.
    Files,
    /// Every regular file and directory below it.
    Tree,
    /// As [`Listing::Tree`], and symlinks (with their targets) and
    /// special files (what each is in its `attrs`), each entry with its
    /// exact time and what else the receiver wants of it (owners,
    /// extended attributes), and each file that is another name of a file
    /// listed before it marked with that file's path (a hard link). With
    /// `copy_links` (`-L`), a symlink leading to a regular file beneath
    /// the walked directory is listed as that file under the link's name.
    Meta(super::attrs::Wanted, CopyLinks),
    /// Only the partial files below it, which the others hide.
    Partials,
}

impl Listing {
    /// The listing a `list` request asks for.
    pub fn of(recursive: bool, dirs: bool) -> Listing {
        match (recursive, dirs) {
            (false, _) => Listing::Entries,
            (true, false) => Listing::Files,
            (true, true) => Listing::Tree,
        }
    }
}

/// An upload in progress; dropping it frees the path.
#[derive(Debug)]
pub struct Claim {
    busy: Arc<Mutex<HashSet<ClaimKey>>>,
    key: ClaimKey,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.key);
        }
    }
}

/// An [`Entry`] from metadata (symlinks reported as such when not followed).
pub fn entry(name: String, meta: &fs::Metadata) -> Entry {
    use std::os::unix::fs::PermissionsExt;
    let kind = if meta.is_file() {
        Kind::File
    } else if meta.is_dir() {
        Kind::Dir
    } else if meta.file_type().is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    Entry::new(name, meta.len(), kind, mtime(meta), meta.permissions().mode() & 0o7777)
}

/// A modification time to the nanosecond: whole seconds since the Unix
/// epoch, rounded down (negative before it), and the nanoseconds after
/// them, as `stat(2)` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Stamp {
    /// Seconds since the epoch, rounded down.
    pub secs: i64,
    /// Nanoseconds after `secs` (below 10^9).
    pub nsec: u32,
}

impl From<i64> for Stamp {
    /// Whole seconds.
    fn from(secs: i64) -> Stamp {
        Stamp { secs, nsec: 0 }
    }
}

impl Stamp {
    /// As `stat` reports it.
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    pub fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp { secs: st.st_mtime as i64, nsec: (st.st_mtime_nsec as i64).clamp(0, 999_999_999) as u32 }
    }

    /// As a file's metadata reports it.
    pub fn of_meta(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp { secs: meta.mtime(), nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32 }
    }

    /// From the protocol's two members: `mtime_ns` when given (exact),
    /// else the whole seconds of `mtime`.
    pub fn from_wire(mtime: i64, mtime_ns: Option<i64>) -> Stamp {
        match mtime_ns {
            Some(ns) => Stamp { secs: ns.div_euclid(1_000_000_000), nsec: ns.rem_euclid(1_000_000_000) as u32 },
            None => Stamp::from(mtime),
        }
    }

    /// The protocol's `mtime`: whole seconds, rounded towards zero (as
    /// framewire has always sent them).
    pub fn wire_secs(self) -> i64 {
        if self.secs < 0 && self.nsec > 0 {
            self.secs + 1
        } else {
            self.secs
        }
    }

    /// The protocol's `mtime_ns`: nanoseconds since the epoch, if they fit
    /// an `i64` (years 1678 to 2262).
    pub fn wire_ns(self) -> Option<i64> {
        self.secs.checked_mul(1_000_000_000)?.checked_add(i64::from(self.nsec))
    }

    /// The protocol's `mtime_ns` where whole seconds would lose something
    /// (`put` and `file` leave it out otherwise: `mtime` is then exact).
    pub fn fraction_ns(self) -> Option<i64> {
        self.wire_ns().filter(|_| self.nsec != 0)
    }

    fn timespec(self) -> rustix::fs::Timespec {
        rustix::fs::Timespec { tv_sec: self.secs as _, tv_nsec: self.nsec as _ }
    }

    /// Timestamps that set the modification time and leave the access
    /// time as it is.
    pub fn timestamps(self) -> rustix::fs::Timestamps {
        let omit = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT as _ };
        rustix::fs::Timestamps { last_access: omit, last_modification: self.timespec() }
    }
}

/// Gives `file` the modification time `at` (whole seconds, or a
/// [`Stamp`] to the nanosecond), through its descriptor; the access time
/// is left alone.
///
/// # Errors
///
/// Those of `futimens(2)`.
pub fn set_mtime(file: &File, at: impl Into<Stamp>) -> io::Result<()> {
    Ok(rustix::fs::futimens(file, &at.into().timestamps())?)
}

/// Modification time in whole seconds since the Unix epoch (negative
/// before it).
pub fn mtime(meta: &fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        },
        Err(_) => 0,
    }
}

/// A BLAKE3 hasher fed with the first `len` bytes of `file` (read from its
/// start), for resuming: the checksum of a resumed transfer still covers
/// the whole file.
///
/// # Errors
///
/// Read errors, or the file holding fewer than `len` bytes.
pub fn hash_prefix(file: &mut File, len: u64) -> io::Result<blake3::Hasher> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    let copied = io::copy(&mut file.take(len), &mut hasher)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than the prefix to hash"));
    }
    Ok(hasher)
}

/// Opens a file to send it. Without blocking: a FIFO opened for reading
/// would otherwise wait for a writer, forever. The caller checks the
/// file type (see [`not_regular`]).
///
/// # Errors
///
/// Those of `open(2)`.
pub fn open_to_send(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

/// Why `meta` cannot be sent as a file's contents, if it cannot: a
/// directory, or anything else that is not a regular file (a FIFO, a
/// socket, a device), whose size says nothing about what reading it gives.
pub fn not_regular(meta: &fs::Metadata) -> Option<(io::ErrorKind, &'static str)> {
    if meta.is_dir() {
        Some((io::ErrorKind::IsADirectory, "is a directory"))
    } else if !meta.is_file() {
        Some((io::ErrorKind::InvalidInput, "not a regular file (a FIFO, socket or device)"))
    } else {
        None
    }
}

/// Hashes `len` bytes of `file` from `offset` into `hasher` (fed with
/// what comes before them) and returns the whole-file hash. Reads with
/// `pread` through one small buffer that stays in the CPU cache, so the
/// file's own position is not moved: another thread may send from the same
/// file meanwhile. Stops early, with [`io::ErrorKind::Interrupted`], once
/// `cancel` is set.
///
/// # Errors
///
/// Read errors; [`io::ErrorKind::UnexpectedEof`] if the file is shorter.
pub fn hash_range(
    file: &File,
    offset: u64,
    len: u64,
    mut hasher: blake3::Hasher,
    cancel: &tokio_util::sync::CancellationToken,
) -> io::Result<blake3::Hash> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; HASH_BUF];
    let (mut at, end) = (offset, offset + len);
    while at < end {
        if cancel.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "transfer cancelled"));
        }
        let want = buf.len().min(usize::try_from(end - at).unwrap_or(usize::MAX));
        match file.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was read")),
            Ok(n) => {
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize())
}

/// The read buffer of [`hash_range`]: small enough to stay in a core's L2
/// cache, large enough for BLAKE3's widest SIMD path.
const HASH_BUF: usize = 256 * 1024;

/// What identifies one version of a file's contents: any write changes
/// its size, mtime or (unforgeably) ctime; a replacement changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Version {
    /// The version `meta` describes.
    pub fn of(meta: &fs::Metadata) -> Version {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Whole-file BLAKE3 hashes the server has already computed (sending a
/// file, or verifying an upload), by file (device and inode, however it is
/// reached) and [`Version`]: a repeated `get` of an unchanged file reads
/// and sends it without hashing it again. Bounded: at
/// [`HASH_CACHE_ENTRIES`] it starts over.
#[derive(Debug, Default)]
pub struct HashCache(Mutex<std::collections::HashMap<(u64, u64), (Version, blake3::Hash)>>);

/// Most hashes the cache holds.
pub const HASH_CACHE_ENTRIES: usize = 4096;

impl HashCache {
    /// The hash of the file at `version`, if it was computed for that very
    /// version.
    pub fn get(&self, version: Version) -> Option<blake3::Hash> {
        let map = self.0.lock().expect("hash cache poisoned");
        map.get(&(version.dev, version.ino)).filter(|(v, _)| *v == version).map(|(_, h)| *h)
    }

    /// Records the hash of the file at `version`.
    pub fn put(&self, version: Version, hash: blake3::Hash) {
        let mut map = self.0.lock().expect("hash cache poisoned");
        if map.len() >= HASH_CACHE_ENTRIES {
            map.clear();
        }
        map.insert((version.dev, version.ino), (version, hash));
    }
}

/// `file`, positioned at `from` for writing.
///
/// # Errors
///
/// If the seek fails.
pub fn at(mut file: File, from: u64) -> std::io::Result<File> {
    file.seek(SeekFrom::Start(from))?;
    Ok(file)
}

/// Fails with `ENOSPC` if the file system holding `file` has clearly no
/// room for bytes `from..to`, so that a full disk shows before a transfer
/// rather than in its middle. It reserves nothing (`fallocate` would, but
/// on tmpfs it costs a serial pass before the data flows, and a cut
/// transfer would keep space it never filled): two transfers that each
/// fit alone may still meet a full disk, which their writes then report.
/// Root may use the blocks reserved for it, so it is checked against
/// those too.
///
/// # Errors
///
/// [`io::ErrorKind::StorageFull`] when `to - from` bytes are more than
/// the file system has free.
pub fn check_room(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid descriptor and a buffer of the right type; read only
    // if the call succeeded.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Ok(());
    }
    let st = unsafe { st.assume_init() };
    // SAFETY: no arguments, cannot fail.
    let blocks = if unsafe { libc::geteuid() } == 0 { st.f_bfree } else { st.f_bavail };
    // Narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(blocks).saturating_mul(u64::from(st.f_frsize));
    if to.saturating_sub(from) > free {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;

    fn sandboxes(dir: &Path) -> [Sandbox; 2] {
        let sb = Sandbox::new(dir).unwrap();
        [sb.clone().with_resolver(Resolver::Openat2), sb.with_resolver(Resolver::Walk)]
    }

    #[test]
    fn an_unchanged_file_s_bits_are_set_only_if_it_is_still_that_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"abc").unwrap();
        // Unreadable: set through O_PATH, never opened.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("link")).unwrap();
        let dir: OwnedFd = File::open(tmp.path()).unwrap().into();
        let at = Stamp::of_meta(&fs::metadata(&f).unwrap());
        let how = Applying::default();
        let mut names = super::super::attrs::Names::new();
        let mut set =
            |name: &str, size| file_attrs_at(&dir, OsStr::new(name), (size, at), 0o640, (None, how), &mut names);
        assert_eq!(set("link", 3).unwrap_err().kind(), io::ErrorKind::InvalidInput, "a symlink is never followed");
        assert_eq!(set("f", 4).unwrap_err().kind(), io::ErrorKind::AlreadyExists, "another size: changed");
        assert!(set("f", 3).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o7777, received_mode(0o640));
        assert!(!set("f", 3).unwrap(), "nothing left to set");
    }

    #[test]
    fn relative_paths_are_checked() {
        let rel = Sandbox::relative("a/./b//c.txt").unwrap();
        assert_eq!((rel.joined().as_str(), rel.is_dir()), ("a/b/c.txt", false));
        assert!(Sandbox::relative("").unwrap().is_root());
        assert!(Sandbox::relative("d/").unwrap().is_dir());
        assert!(Sandbox::relative("d/.").unwrap().is_dir());
        assert!(!Sandbox::relative("./").unwrap().is_dir(), "the root is the root");
        let deep = "a/".repeat(MAX_PATH_DEPTH + 1);
        let long = "x".repeat(MAX_PATH_BYTES + 1);
        for (bad, why) in [
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a\0b", "NUL"),
            (deep.as_str(), "MAX_PATH_DEPTH"),
            (long.as_str(), "MAX_PATH_BYTES"),
        ] {
            let err = Sandbox::relative(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadPath, "{bad}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
            assert!(err.to_string().len() < 400, "messages stay short: {} bytes", err.to_string().len());
        }
    }

    #[test]
    fn a_huge_mkdir_is_refused_before_touching_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(root.path()).unwrap();
        let err = sb.mkdir(&"a/".repeat(32_000), true).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadPath);
        assert!(err.to_string().len() < 400, "{} bytes", err.to_string().len());
        assert!(!root.path().join("a").exists(), "nothing created");
        assert!(sb.mkdir(&"a/".repeat(MAX_PATH_DEPTH), true).unwrap());
    }

    #[test]
    fn symlinks_may_not_lead_out() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink("../../", root.path().join("up")).unwrap();
        std::os::unix::fs::symlink("inner.txt", root.path().join("alias")).unwrap();
        fs::write(root.path().join("inner.txt"), "i").unwrap();
        for sb in sandboxes(root.path()) {
            assert_eq!(sb.open("out/secret").unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.open("up/etc/passwd").unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.stat("out").unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.list("out", Listing::Entries).unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.for_write("out/new").unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.for_write("out/deep/new").unwrap_err().code(), ErrorCode::BadPath);
            assert_eq!(sb.mkdir("out/d", true).unwrap_err().code(), ErrorCode::BadPath);
            let (mut f, _) = sb.open("alias").unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "i");
            assert_eq!(sb.stat("alias").unwrap().name, "alias", "the name asked for, not the target's");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "nothing created outside");
    }

    #[test]
    fn stat_of_the_root_names_no_directory() {
        let root = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(root.path()).unwrap();
        for p in ["", ".", "./"] {
            let e = sb.stat(p).unwrap();
            assert_eq!((e.name.as_str(), e.kind), (".", Kind::Dir), "{p:?}");
        }
    }

    #[test]
    fn a_trailing_slash_means_a_directory() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("f.txt"), "x").unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        for sb in sandboxes(root.path()) {
            assert_eq!(sb.open("f.txt/").unwrap_err().code(), ErrorCode::NotADirectory);
            assert_eq!(sb.stat("f.txt/").unwrap_err().code(), ErrorCode::NotADirectory);
            assert!(sb.open("d/").unwrap().1.is_dir());
            assert_eq!(sb.for_write("newdir/").unwrap_err().code(), ErrorCode::IsADirectory);
        }
        assert!(!root.path().join("newdir").exists());
    }

    #[test]
    fn for_write_creates_parents_inside() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(root.path()).unwrap();
        let (_, name) = sandbox.for_write("a/b/c.txt").unwrap();
        assert!(root.path().join("a/b").is_dir());
        assert_eq!(name, "c.txt");
        fs::write(root.path().join("file"), "").unwrap();
        assert_eq!(sandbox.for_write("file/x").unwrap_err().code(), ErrorCode::NotADirectory);
        assert_eq!(sandbox.for_write("").unwrap_err().code(), ErrorCode::BadPath);
        assert_eq!(sandbox.for_write("d/.x.fwpart").unwrap_err().code(), ErrorCode::BadPath);
        assert!(sandbox.for_write("x.fwpart").is_ok(), "only .NAME.fwpart is reserved");
    }

    #[test]
    fn only_regular_files_are_partial_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(".b.fwpart")).unwrap();
        fs::write(root.path().join(".b.fwpart/inside"), "i").unwrap();
        fs::write(root.path().join(".c.fwpart"), "partial").unwrap();
        let sb = Sandbox::new(root.path()).unwrap();
        let names: Vec<_> = sb.list("", Listing::Tree).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, [".b.fwpart", ".b.fwpart/inside"]);
        assert!(sb.open(".b.fwpart/inside").is_ok());
        assert_eq!(sb.open(".c.fwpart").unwrap_err().code(), ErrorCode::BadPath);
        assert_eq!(sb.stat(".c.fwpart").unwrap_err().code(), ErrorCode::BadPath);
    }

    #[test]
    fn a_listing_stops_at_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            fs::create_dir_all(dir.path().join(format!("d{i}"))).unwrap();
            fs::write(dir.path().join(format!("d{i}/file-{i}")), b"x").unwrap();
        }
        let sb = Sandbox::new(dir.path()).unwrap();
        let all = sb.list_within("", Listing::Tree, 1 << 20).unwrap();
        assert_eq!(all.len(), 100);
        let err = sb.list_within("", Listing::Tree, 40 * 70).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert!(err.to_string().contains("list a smaller part"), "{}", err.to_string());
        // What fits is listed as before.
        assert_eq!(sb.list_within("d7", Listing::Files, 100).unwrap().len(), 1);
    }

    #[test]
    fn claims_are_exclusive_by_directory_not_by_spelling() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", root.path().join("alias")).unwrap();
        let sandbox = Sandbox::new(root.path()).unwrap();
        let (dir, name) = sandbox.for_write("d/x").unwrap();
        let claim = sandbox.claim(&dir, &name, "d/x").unwrap();
        let (other, name2) = sandbox.for_write("alias/x").unwrap();
        assert_eq!(sandbox.claim(&other, &name2, "alias/x").unwrap_err().code(), ErrorCode::Busy);
        drop(claim);
        assert!(sandbox.claim(&other, &name2, "alias/x").is_ok());
    }
}
