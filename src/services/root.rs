//! Paths beneath a served root, resolved by file descriptor with the kernel
//! refusing escapes, and the partial files that transfers write.
//!
//! Nothing here checks a path string and then opens it: a path a peer
//! names is handed to `openat2(2)` with `RESOLVE_BENEATH` from a descriptor
//! of the root (or, on kernels before 5.6, walked one component at a time
//! with `O_NOFOLLOW`, symlinks expanded by hand), and what was opened is
//! `fstat`-ed, never looked up by name again. A process that swaps a
//! directory for a symlink mid-request gets the kernel's refusal, not a
//! file outside.

use super::names;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// Suffix of the partial file a transfer writes before it is verified and
/// renamed into place: `.NAME.fwpart` beside `NAME`.
pub const PARTIAL_SUFFIX: &str = ".fwpart";

/// The longest path a peer may name, in bytes (Linux's `PATH_MAX` less its
/// NUL). Checked before anything touches the disk.
pub const MAX_PATH_BYTES: usize = 4095;

/// The most components a path a peer names may have. Checked before
/// anything touches the disk, so a `mkdir` of `a/a/a/…` cannot build a
/// tree no tool can remove.
pub const MAX_PATH_DEPTH: usize = 255;

/// How many symlinks one resolution may expand (Linux's own limit).
pub const MAX_SYMLINKS: usize = 40;

/// The most components one walk resolves, symlink targets included.
const MAX_WALK_STEPS: usize = 4096;

/// How often a resolution tries again when the file system changed under
/// it (`EAGAIN` from `openat2`, a link gone between open and read).
const MAX_RETRIES: usize = 8;

/// How the served root resolves paths beneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// One `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`
    /// (Linux 5.6 and later): the kernel refuses absolute symlinks and
    /// `..` past the root.
    Openat2,
    /// One `openat(2)` with `O_NOFOLLOW` per component, symlinks read and
    /// expanded here by the same rules, `..` tracked on a stack of
    /// descriptors: for kernels without `openat2`.
    Walk,
}

/// Which symlinks a resolution beneath a [`Root`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Those that stay beneath the root (a served root, the source tree of
    /// an upload); one leading out is refused (`EXDEV`).
    Inside,
    /// None at all, not even one that stays beneath (`ELOOP`): the
    /// destination of a download, where whoever else can write it could
    /// plant a link where a directory belongs. Only the root itself, the
    /// directory the user named, was followed when it was opened.
    Never,
}

/// A directory that paths are resolved beneath, held open by descriptor.
#[derive(Debug, Clone)]
pub struct Root {
    fd: Arc<OwnedFd>,
    resolver: Resolver,
    links: Links,
}

/// Whether `name` has the exact form of a partial file's name:
/// `.NAME.fwpart` with a non-empty `NAME`. Only a regular file with such a
/// name is a partial file; a directory so named is an ordinary directory.
pub fn is_partial_name(name: &[u8]) -> bool {
    name.len() > 1 + PARTIAL_SUFFIX.len() && name.starts_with(b".") && name.ends_with(PARTIAL_SUFFIX.as_bytes())
}

/// The partial file's name for the final name `name`: `.NAME.fwpart`,
/// or, where that would be longer than a name may be (255 bytes, for a
/// `NAME` over 247), `.START~HASH.fwpart`: the first 230 bytes of the
/// name and 16 hex digits of its BLAKE3, the same for the same name (a
/// resume finds it) and 255 bytes in all.
pub fn partial_name(name: &OsStr) -> OsString {
    partial_with(name, "")
}

/// `.NAME` + `tail` + `.fwpart`, shortened as [`partial_name`] says to fit
/// in 255 bytes.
fn partial_with(name: &OsStr, tail: &str) -> OsString {
    let raw = name.as_encoded_bytes();
    let mut part = OsString::from(".");
    if 1 + raw.len() + tail.len() + PARTIAL_SUFFIX.len() <= NAME_MAX {
        part.push(name);
    } else {
        let hash = blake3::hash(raw).to_hex();
        let keep = NAME_MAX - 1 - 1 - 16 - tail.len() - PARTIAL_SUFFIX.len();
        // A prefix of a name's bytes is a name too: no NUL, no `/`.
        part.push(std::ffi::OsStr::from_bytes(&raw[..keep.min(raw.len())]));
        part.push("~");
        part.push(&hash.as_str()[..16]);
    }
    part.push(tail);
    part.push(PARTIAL_SUFFIX);
    part
}

/// The most bytes of one name (Linux's `NAME_MAX`).
const NAME_MAX: usize = 255;

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// Whether `e` is the refusal of a path leading outside the root.
pub fn is_escape(e: &io::Error) -> bool {
    errno(e) == Some(Errno::XDEV)
}

fn escape() -> io::Error {
    io::Error::from(Errno::XDEV)
}

impl Root {
    /// Opens `path` as a root, resolving with `openat2` where the kernel
    /// has it and walking otherwise.
    ///
    /// # Errors
    ///
    /// If `path` cannot be opened as a directory.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let probe = rustix::fs::openat2(&fd, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), beneath());
        let resolver = match probe {
            Ok(_) => Resolver::Openat2,
            // ENOSYS: before Linux 5.6; EPERM: a seccomp filter that does
            // not know the call.
            Err(Errno::NOSYS | Errno::PERM) => Resolver::Walk,
            Err(e) => return Err(e.into()),
        };
        Ok(Root { fd: Arc::new(fd), resolver, links: Links::Inside })
    }

    /// A root over the directory open as `fd` (links inside it
    /// followed), resolving with `resolver`.
    pub fn beneath_fd(fd: OwnedFd, resolver: Resolver) -> Root {
        Root { fd: Arc::new(fd), resolver, links: Links::Inside }
    }

    /// The same root, following no symlink beneath it at all (see
    /// [`Links::Never`]): `openat2(2)` with `RESOLVE_NO_SYMLINKS` too, or
    /// the walk refusing the first link it meets.
    pub fn without_links(mut self) -> Root {
        self.links = Links::Never;
        self
    }

    /// The same root, resolving with `resolver` (tests use it to run the
    /// fallback on kernels that have `openat2`).
    pub fn with_resolver(mut self, resolver: Resolver) -> Root {
        self.resolver = resolver;
        self
    }

    /// How this root resolves paths.
    pub fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// Opens `rel` (relative, already checked: no `..`, not absolute)
    /// beneath the root with `flags`, following symlinks that stay inside,
    /// the last component's too (none at all under [`Links::Never`]). An
    /// empty `rel` is the root itself.
    ///
    /// # Errors
    ///
    /// `EXDEV` for a path leading outside (an absolute symlink, or `..`
    /// past the root), `ELOOP` past [`MAX_SYMLINKS`] (at the first link
    /// under [`Links::Never`]), and those of `openat(2)`.
    pub fn open_beneath(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        // The bytes the string carries (a name that is not UTF-8).
        let raw = names::decode(rel);
        // openat2 refuses O_PATH with flags that do not go with it.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        match self.resolver {
            Resolver::Openat2 => {
                // The kernel may refuse a resolution it could not keep safe
                // against a concurrent rename: try again a few times.
                let mut tries = 0;
                let how = match self.links {
                    Links::Inside => beneath(),
                    Links::Never => beneath() | ResolveFlags::NO_SYMLINKS,
                };
                loop {
                    match rustix::fs::openat2(&*self.fd, &*raw, flags, Mode::empty(), how) {
                        Err(Errno::AGAIN) if tries < MAX_RETRIES => tries += 1,
                        done => return Ok(done?),
                    }
                }
            }
            Resolver::Walk => self.walk(&raw, flags),
        }
    }

    /// The file `rel` opened read-only and without waiting on a FIFO, by
    /// its name in its directory, that directory kept in `kept` for the
    /// next file (a tree's files come directory by directory, so most
    /// opens skip the walk from the root); a symlink at the name is not
    /// followed. `None` where that fails (a symlink there, a directory on
    /// the way that cannot be opened so, a name that is not there): the
    /// caller opens `rel` with [`open_beneath`](Self::open_beneath), as it
    /// would have.
    pub fn open_by_name(&self, rel: &str, kept: &mut Option<KeptDir>) -> Option<OwnedFd> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if name.is_empty() {
            return None;
        }
        if kept.as_ref().is_none_or(|k| k.parent != parent) {
            *kept = Some(KeptDir { parent: parent.to_owned(), dir: self.open_dir(parent).ok() });
        }
        let dir = kept.as_ref()?.dir.as_ref()?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
        rustix::fs::openat(dir, &*names::os(name), flags, Mode::empty()).ok()
    }

    /// Opens the directory `rel` beneath the root, readable (usable as the
    /// base of `*at` calls and for `fsync`).
    ///
    /// # Errors
    ///
    /// As [`open_beneath`](Self::open_beneath); `ENOTDIR` for a file.
    pub fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The directory `parts` names, creating what is missing one component
    /// at a time (`mkdir -p`), each opened beneath the root before the next
    /// is made in it: a component that is a symlink leading out, or that
    /// another process swaps for one, is refused, never created through.
    ///
    /// # Errors
    ///
    /// As [`open_dir`](Self::open_dir), and those of `mkdirat(2)`.
    pub fn make_dirs(&self, parts: &[&str]) -> io::Result<OwnedFd> {
        let joined = parts.join("/");
        match self.open_dir(&joined) {
            Err(e) if errno(&e) == Some(Errno::NOENT) => {}
            done => return done,
        }
        let mut dir = self.open_dir("")?;
        let mut prefix = String::with_capacity(joined.len());
        for part in parts {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            // EEXIST: there already, or made by another upload just now;
            // either way it is opened and checked like any other.
            match rustix::fs::mkdirat(&dir, &*names::decode(part), Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = self.open_dir(&prefix)?;
        }
        Ok(dir)
    }

    /// The directory `parts` names, created as [`make_dirs`](Self::make_dirs)
    /// creates it, for a root that follows no link ([`Links::Never`]): each
    /// component is opened from the one before with `O_NOFOLLOW`, and a
    /// symlink standing where a directory belongs is removed (the link
    /// itself, never followed) and replaced by a directory, as rsync does
    /// by default; so is any other file there when `replace_files`, and
    /// without it that is refused. Each path replaced (relative, `/`
    /// joined) is added to `replaced`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::AlreadyExists`] for a file in the way without
    /// `replace_files`; those of `openat(2)`, `mkdirat(2)` and
    /// `unlinkat(2)`; a component that keeps changing past
    /// [`MAX_RETRIES`].
    pub fn make_dirs_replacing(
        &self,
        parts: &[&str],
        replace_files: bool,
        replaced: &mut Vec<String>,
    ) -> io::Result<OwnedFd> {
        use rustix::fs::FileType;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir = rustix::fs::openat(&*self.fd, ".", flags, Mode::empty())?;
        for (k, shown) in parts.iter().enumerate() {
            let raw = names::decode(shown);
            let part: &[u8] = &raw;
            let mut tries = 0;
            dir = loop {
                let in_the_way = match rustix::fs::openat(&dir, part, flags, Mode::empty()) {
                    Ok(sub) => break sub,
                    Err(e) if tries >= MAX_RETRIES => return Err(e.into()),
                    Err(Errno::NOENT) => false,
                    // A symlink (ELOOP, or ENOTDIR with O_DIRECTORY) or a
                    // file: looked at, never followed.
                    Err(Errno::LOOP | Errno::NOTDIR) => true,
                    Err(e) => return Err(e.into()),
                };
                tries += 1;
                if in_the_way {
                    let kind = match rustix::fs::statat(&dir, part, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => FileType::from_raw_mode(st.st_mode),
                        // Gone or changed since the open: look again.
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if kind == FileType::Directory {
                        continue;
                    }
                    if kind != FileType::Symlink && !replace_files {
                        let msg = format!("{}: a file stands where the copy needs a directory", parts[..=k].join("/"));
                        return Err(io::Error::new(io::ErrorKind::AlreadyExists, msg));
                    }
                    match rustix::fs::unlinkat(&dir, part, AtFlags::empty()) {
                        Ok(()) => replaced.push(parts[..=k].join("/")),
                        Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            };
        }
        Ok(dir)
    }

    /// Removes `rel` beneath the root, and if it is a directory everything
    /// below it ([`remove_at`]): its parent is opened one component at a
    /// time with `O_NOFOLLOW` ([`open_no_links`]), so no symlink on the
    /// way is followed, and one at `rel` is removed as a link.
    ///
    /// # Errors
    ///
    /// Those of [`open_no_links`] and [`remove_at`]; `EINVAL` for the root
    /// itself.
    pub fn remove(&self, rel: &str) -> io::Result<()> {
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let Some((name, parents)) = parts.split_last() else { return Err(Errno::INVAL.into()) };
        let parent = open_no_links(&self.fd, parents)?;
        remove_at(&parent, &names::os(name))
    }

    /// The component-by-component resolution (see [`Resolver::Walk`]).
    fn walk(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // stack[0] is the root; each `..` pops one, and popping the root
        // is an escape.
        let mut stack: Vec<OwnedFd> = vec![rustix::fs::openat(&*self.fd, ".", dir_flags, Mode::empty())?];
        let mut todo: std::collections::VecDeque<Vec<u8>> = components(rel).collect();
        let (mut links, mut retries, mut steps) = (0, 0, 0);
        while let Some(part) = todo.pop_front() {
            // Bounded work and descriptors, whatever the links expand to.
            steps += 1;
            if steps > MAX_WALK_STEPS || stack.len() > MAX_PATH_DEPTH {
                return Err(Errno::NAMETOOLONG.into());
            }
            match part.as_slice() {
                b"." => {
                    if todo.is_empty() {
                        let cur = stack.last().expect("the root stays");
                        return Ok(rustix::fs::openat(cur, ".", flags, Mode::empty())?);
                    }
                    continue;
                }
                b".." => {
                    if stack.len() == 1 {
                        return Err(escape());
                    }
                    stack.pop();
                    if todo.is_empty() {
                        let cur = stack.last().expect("the root stays");
                        return Ok(rustix::fs::openat(cur, ".", flags, Mode::empty())?);
                    }
                    continue;
                }
                _ => {}
            }
            let cur = stack.last().expect("the root stays");
            let last = todo.is_empty();
            let want = if last { flags | OFlags::NOFOLLOW } else { dir_flags };
            let opened = rustix::fs::openat(cur, part.as_slice(), want, Mode::empty());
            // A symlink shows as ELOOP, as ENOTDIR (with O_DIRECTORY), or,
            // opened with O_PATH, as a descriptor of the link itself.
            let link = match &opened {
                Err(Errno::LOOP | Errno::NOTDIR) => true,
                Ok(fd) if want.contains(OFlags::PATH) => {
                    rustix::fs::fstat(fd).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_symlink())
                }
                _ => false,
            };
            if !link {
                let fd = opened?;
                if last {
                    return Ok(fd);
                }
                stack.push(fd);
                continue;
            }
            let target = match rustix::fs::readlinkat(cur, part.as_slice(), Vec::new()) {
                Ok(target) => target.into_bytes(),
                // Not a symlink any more: another process swapped it back
                // since the open. Open it again, a few times at most; a
                // plain file mid-path is not worth another try.
                Err(Errno::INVAL) if retries < MAX_RETRIES && !is_file_at(cur, &part) => {
                    retries += 1;
                    todo.push_front(part);
                    continue;
                }
                Err(Errno::INVAL) => return Err(opened.err().unwrap_or(Errno::LOOP).into()),
                Err(e) => return Err(e.into()),
            };
            links += 1;
            if links > MAX_SYMLINKS || self.links == Links::Never {
                return Err(Errno::LOOP.into());
            }
            if target.starts_with(b"/") {
                return Err(escape());
            }
            for (i, c) in components(&target).enumerate() {
                todo.insert(i, c);
            }
        }
        // Only reached for a path of nothing but `.` / `..` handled above.
        Ok(rustix::fs::openat(stack.last().expect("the root stays"), ".", flags, Mode::empty())?)
    }
}

/// Whether `name` in `dir` is a regular file now (not followed).
fn is_file_at(dir: &OwnedFd, name: &[u8]) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// The non-empty components of a `/`-separated path.
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec)
}

/// A directory of a [`Root`] kept open while files in it are opened one
/// after another ([`Root::open_by_name`]).
#[derive(Debug)]
pub struct KeptDir {
    /// Its path below the root.
    parent: String,
    /// `None`: it could not be opened so.
    dir: Option<OwnedFd>,
}

/// The file a transfer writes before it is verified and committed.
///
/// Normally `.NAME.fwpart` beside the target, kept after a cut transfer so
/// that the next one resumes from it. It is opened without following a
/// symlink and taken as a partial file only if it is a regular file with
/// one link, owned by this process's user: anything else standing at that
/// name (a planted symlink or hard link, a directory, a FIFO, another
/// user's file) is left alone, and the transfer writes an unnamed
/// temporary file (`O_TMPFILE`) in the same directory instead, which
/// cannot be resumed. No byte is ever written through a link the transfer
/// did not create.
///
/// The file is owner-only (0600) until [`commit`](Self::commit) gives it
/// its final bits, and held with an exclusive `flock(2)` so that two
/// transfers never write one partial file at once. A whole body in memory
/// may instead be written to a file that has no name at all until it is
/// placed ([`unnamed`](Self::unnamed)): nobody else can open that one, so
/// it is made with its final bits and needs no lock.
#[derive(Debug)]
pub struct Partial {
    dir: Arc<OwnedFd>,
    name: OsString,
    /// The partial file's own name, or `None` for an unnamed one.
    part: Option<OsString>,
    file: File,
    /// The file's identity and its length when opened, from the one
    /// `fstat(2)` at open.
    id: FileId,
    opened_len: u64,
    /// Its owner and permission bits at open (that `fstat`): what need
    /// not be set again.
    had: Had,
}

/// A file's owner and permission bits, as `fstat(2)` gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Had {
    /// `st_uid`, `st_gid`.
    pub owner: (u32, u32),
    /// `st_mode & 0o7777`.
    pub bits: u32,
}

impl Had {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn of(st: &rustix::fs::Stat) -> Had {
        Had { owner: (st.st_uid as u32, st.st_gid as u32), bits: st.st_mode as u32 & 0o7777 }
    }
}

/// A file's device and inode: what a name must still lead to before a
/// rename takes it, and which file system a sync is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> FileId {
        // st_dev is u64 on every Linux target rustix supports, but not
        // the same type everywhere.
        #[allow(clippy::useless_conversion)]
        FileId { dev: u64::from(st.st_dev), ino: u64::from(st.st_ino) }
    }

    /// The identity of what `fd` is open on.
    ///
    /// # Errors
    ///
    /// Those of `fstat(2)`.
    pub fn of_fd(fd: impl AsFd) -> io::Result<FileId> {
        Ok(FileId::of(&rustix::fs::fstat(fd)?))
    }
}

impl Partial {
    /// Opens (or creates) the partial file for `name` in `dir`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::ResourceBusy`] if another transfer holds it; I/O
    /// errors (among them, where the name is taken by something that is
    /// not a partial file and the file system has no `O_TMPFILE`, a clear
    /// refusal naming what stands there).
    pub fn open(dir: impl Into<Arc<OwnedFd>>, name: &OsStr) -> io::Result<Partial> {
        let dir = dir.into();
        let part = partial_name(name);
        let (file, part) = match open_ours(&dir, &part)? {
            Ok(file) => (file, Some(part)),
            Err(what) => (anonymous(&dir, &part, what)?, None),
        };
        lock(&file)?;
        let st = rustix::fs::fstat(&file)?;
        let mut had = Had::of(&st);
        // A partial file left by an older version may be open to others.
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))?;
            had.bits = 0o600;
        }
        let opened_len = u64::try_from(st.st_size).unwrap_or(0);
        Ok(Partial { dir, name: name.to_owned(), part, file, id: FileId::of(&st), opened_len, had })
    }

    /// A new file for `name` in `dir` that has no name at all until it is
    /// placed (`O_TMPFILE`), made with its final permission bits `mode`
    /// (already masked): for a whole body in memory, written at once,
    /// which nothing could resume. Nobody else can open it, so it needs no
    /// lock and cannot be swapped, and placing it is one `linkat(2)` that
    /// never replaces anything (or, to replace, a link under a random name
    /// and a rename). `Ok(None)` where the file system has no `O_TMPFILE`:
    /// use [`open`](Self::open).
    ///
    /// A partial file left under the name by a cut transfer is not
    /// touched: callers use this only where none was seen.
    ///
    /// # Errors
    ///
    /// Those of `open(2)` and `fstat(2)`.
    pub fn unnamed(dir: impl Into<Arc<OwnedFd>>, name: &OsStr, mode: u32) -> io::Result<Option<Partial>> {
        if !can_link_unnamed() {
            return Ok(None);
        }
        let dir = dir.into();
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(&*dir, ".", flags, Mode::from_raw_mode(mode & 0o777)) {
            Ok(fd) => File::from(fd),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&file)?;
        let (id, had) = (FileId::of(&st), Had::of(&st));
        Ok(Some(Partial { dir, name: name.to_owned(), part: None, file, id, opened_len: 0, had }))
    }

    /// Its owner and bits when opened.
    pub fn had(&self) -> Had {
        self.had
    }

    /// How many bytes the partial file held when it was opened (0 for a
    /// new one).
    pub fn opened_len(&self) -> u64 {
        self.opened_len
    }

    /// The file's device and inode.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The open partial file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open partial file, to write it.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Where it goes: its directory and final name.
    pub fn at(&self) -> (&OwnedFd, &OsStr) {
        (&self.dir, &self.name)
    }

    /// Whether a later transfer can resume from this file (it has a name).
    #[cfg(test)]
    pub fn resumable(&self) -> bool {
        self.part.is_some()
    }

    /// Splits off the file (to move it to a writer thread); [`rejoin`]
    /// puts it back.
    ///
    /// [`rejoin`]: PartialName::rejoin
    pub fn take_file(self) -> (File, PartialName) {
        let Partial { dir, name, part, file, id, opened_len, had } = self;
        (file, PartialName { dir, name, part, id, opened_len, had })
    }

    /// Removes the partial file (a failed or refused transfer).
    pub fn discard(self) {
        self.take_file().1.discard();
    }

    /// Moves the verified file into place: gives it the permission bits
    /// `mode` (already masked), syncs the data, renames it to its final
    /// name, and syncs the directory, so that after a crash the file is
    /// either absent or whole. Without `replace`, an existing file of that
    /// name is never replaced (`renameat2(RENAME_NOREPLACE)`, or `link` and
    /// `unlink` where the file system lacks it): the commit fails with
    /// [`io::ErrorKind::AlreadyExists`] and the partial file is removed.
    ///
    /// # Errors
    ///
    /// Those of each step; on any but `AlreadyExists` the partial file is
    /// left for a later try. Returns the file, now under its final name.
    pub fn commit(self, mode: u32, replace: bool) -> io::Result<File> {
        let (file, name) = self.take_file();
        name.commit(file, mode, replace)
    }

    /// Gives the file its permission bits `mode` (already masked), the
    /// first step of a commit; a batch does it before it syncs.
    ///
    /// # Errors
    ///
    /// Those of `fchmod(2)`.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        if self.had.bits == mode & 0o7777 {
            return Ok(());
        }
        Ok(rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode & 0o7777))?)
    }

    /// [`PartialName::place`] for this file, whose bits are set and data
    /// synced by the caller (a batch).
    ///
    /// # Errors
    ///
    /// As [`Partial::commit`].
    pub fn place(self, replace: bool) -> io::Result<(File, FileId)> {
        let (file, name) = self.take_file();
        name.place(&file, replace)?;
        Ok((file, name.id))
    }
}

/// Where a [`Partial`] lives, while its file is away being written.
#[derive(Debug)]
pub struct PartialName {
    dir: Arc<OwnedFd>,
    name: OsString,
    part: Option<OsString>,
    id: FileId,
    opened_len: u64,
    had: Had,
}

impl PartialName {
    /// The partial again, with its file.
    pub fn rejoin(self, file: File) -> Partial {
        let PartialName { dir, name, part, id, opened_len, had } = self;
        Partial { dir, name, part, file, id, opened_len, had }
    }

    /// Removes the partial file, if it has a name.
    pub fn discard(self) {
        if let Some(part) = &self.part {
            let _ = rustix::fs::unlinkat(&self.dir, part.as_os_str(), AtFlags::empty());
        }
    }

    /// [`Partial::commit`] for a file that was split off.
    ///
    /// # Errors
    ///
    /// As [`Partial::commit`].
    pub fn commit(self, file: File, mode: u32, replace: bool) -> io::Result<File> {
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))?;
        file.sync_all()?;
        self.place(&file, replace)?;
        rustix::fs::fsync(&self.dir)?;
        Ok(file)
    }

    /// The rename step of [`commit`](Self::commit) alone, for a file whose
    /// bits are set and whose data is synced already (a batch syncs many
    /// at once): renames it into place, never over an existing file
    /// without `replace`. The directory is not synced.
    ///
    /// # Errors
    ///
    /// As [`Partial::commit`].
    pub fn place(&self, file: &File, replace: bool) -> io::Result<()> {
        let part = match &self.part {
            Some(part) => part.clone(),
            // Nothing may be replaced: the link is the placing, and fails
            // if anything stands at the name.
            None if !replace => return link_unnamed(file, &self.dir, &self.name),
            None => {
                // An unnamed file gets a name of its own first: a hidden,
                // random one that no later transfer will take for its own.
                let temp = temp_name(&self.name)?;
                link_unnamed(file, &self.dir, &temp)?;
                temp
            }
        };
        let unnamed = self.part.is_none();
        // Whoever else can write this directory could have put something
        // else at the partial file's name meanwhile: rename only our file.
        debug_assert_eq!(FileId::of_fd(file).ok(), Some(self.id), "the file opened as this partial");
        match rustix::fs::statat(&self.dir, part.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileId::of(&st) == self.id => {}
            Ok(_) => {
                return Err(io::Error::other("the partial file was replaced by another process; nothing was kept"))
            }
            Err(e) => return Err(e.into()),
        }
        let placed = if replace {
            rustix::fs::renameat(&self.dir, part.as_os_str(), &self.dir, self.name.as_os_str()).map_err(io::Error::from)
        } else {
            rename_noreplace(&self.dir, &part, &self.name)
        };
        if let Err(e) = placed {
            if e.kind() == io::ErrorKind::AlreadyExists || unnamed {
                let _ = rustix::fs::unlinkat(&self.dir, part.as_os_str(), AtFlags::empty());
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Renames `from` to `to` in `dir` unless `to` exists.
fn rename_noreplace(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: link(2) never replaces
        // either; then the old name goes.
        // (EPERM too: a seccomp filter that does not know renameat2.)
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
            rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?;
            // The file is in place now, whatever happens to the old name.
            if let Err(e) = rustix::fs::unlinkat(dir, from, AtFlags::empty()) {
                tracing::warn!("{}: committed, but the partial name stays: {e}", to.to_string_lossy());
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Keeps what stands at `name` in `dir` under the name `to` (rsync's
/// backup; neither name followed if a symlink), before a copy replaces it
/// or a mirror removes it. Before a replacement (`moving` false) a
/// directory is left alone (no copy replaces one), and anything else gets
/// its backup as a hard link, so that its own name never stands empty
/// (renamed where the file system has no hard links, or they cross
/// devices). Before a removal (`moving`) it is renamed, a directory with
/// all below it. An older backup at `to` is removed first. Returns
/// whether anything was kept.
///
/// # Errors
///
/// Those of `linkat(2)`, `renameat(2)` and removing the older backup.
pub fn keep_at(dir: &OwnedFd, name: &OsStr, to: (&OwnedFd, &OsStr), moving: bool) -> io::Result<bool> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
    if is_dir && !moving {
        return Ok(false);
    }
    // The backup's name may not be the thing's own (a backup directory
    // that leads back to the destination, say).
    if FileId::of_fd(dir)? == FileId::of_fd(to.0)? && name == to.1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the backup would be the file itself"));
    }
    match rustix::fs::statat(to.0, to.1, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(old) if FileId::of(&old) == FileId::of(&st) && !moving => return Ok(true),
        // An older backup that is a directory is replaced only by what a
        // mirror moves aside, never to keep a file.
        Ok(old) if rustix::fs::FileType::from_raw_mode(old.st_mode).is_dir() && !moving => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a directory stands at the backup's name"));
        }
        Ok(_) => remove_at(to.0, to.1)?,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    if !is_dir && !moving {
        match rustix::fs::linkat(dir, name, to.0, to.1, AtFlags::empty()) {
            Ok(()) => return Ok(true),
            Err(Errno::XDEV | Errno::PERM | Errno::MLINK | Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::renameat(dir, name, to.0, to.1)?;
    Ok(true)
}

/// `.NAME.RANDOM.fwpart`: a name for an unnamed partial file on its way
/// into place.
fn temp_name(name: &OsStr) -> io::Result<OsString> {
    let mut rand = [0u8; 6];
    getrandom::fill(&mut rand).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(partial_with(name, &format!(".{}", hex::encode(rand))))
}

/// Whether an unnamed file can be given a name here: by `linkat(2)` with
/// `AT_EMPTY_PATH` (root, who has `CAP_DAC_READ_SEARCH` as a rule) or
/// through `/proc/self/fd` (everyone else). Neither, as in a chroot
/// without `/proc`: files are written under their partial names.
fn can_link_unnamed() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| rustix::process::geteuid().is_root() || std::path::Path::new("/proc/self/fd").is_dir())
}

/// Gives the unnamed (`O_TMPFILE`) `file` the name `name` in `dir`, never
/// over anything there (`AlreadyExists`): `linkat(AT_EMPTY_PATH)` where
/// this process may (it needs `CAP_DAC_READ_SEARCH`), else through its
/// `/proc/self/fd` link, as linkat(2) documents for everyone else.
fn link_unnamed(file: &File, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Whether AT_EMPTY_PATH was refused once: not tried again.
    static REFUSED: AtomicBool = AtomicBool::new(false);
    let trying = !REFUSED.load(Ordering::Relaxed);
    if trying {
        match rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(()),
            // Without the capability: ENOENT (as if the path were empty).
            Err(Errno::NOENT | Errno::PERM | Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(rustix::fs::CWD, proc.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)?;
    if trying {
        // The way that works, and the other refused: not tried again.
        REFUSED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Opens the partial file `part` in `dir`, or creates it, if it is ours;
/// `Ok(Err(what))` says what else stands at that name. It is looked at
/// (`O_PATH`, never followed) before anything is opened for writing, so a
/// FIFO or a device there is never opened, and an open for writing that
/// the kernel refuses (another user's file, a socket) means "not ours",
/// not a failed transfer.
fn open_ours(dir: &OwnedFd, part: &OsStr) -> io::Result<Result<File, &'static str>> {
    let look = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..MAX_RETRIES {
        // Most often there is nothing there: create it. O_EXCL never
        // follows a link nor opens what stands at the name.
        match rustix::fs::openat(dir, part, create, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok(Ok(File::from(fd))),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let seen = match rustix::fs::openat(dir, part, look, Mode::empty()) {
            Ok(fd) => rustix::fs::fstat(&fd)?,
            // Gone meanwhile: try again.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(what) = foreign(&seen) {
            return Ok(Err(what));
        }
        let write = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::openat(dir, part, write, Mode::empty()) {
            Ok(fd) => {
                let now = rustix::fs::fstat(&fd)?;
                if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino) {
                    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
                    return Ok(Ok(File::from(fd)));
                }
                // Replaced between the look and the open: look again.
            }
            Err(Errno::NOENT) => {}
            Err(_) => return Ok(Err("a file this process may not write")),
        }
    }
    Ok(Err("a name that keeps changing"))
}

/// Removes the partial file `name` in `dir` if it is one of ours, last
/// written before `cutoff` (seconds since the epoch), and no transfer
/// holds its lock; returns its size. It is opened without following a
/// link, checked through the descriptor, locked, and unlinked only while
/// the name still leads to it.
///
/// # Errors
///
/// Why it was left ([`Left`]): not ours, too recent, in use, replaced
/// meanwhile.
pub fn remove_stale_partial(dir: &OwnedFd, name: &OsStr, cutoff: i64) -> Result<u64, Left> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(io::Error::from)?);
    let st = rustix::fs::fstat(&file).map_err(io::Error::from)?;
    if let Some(what) = foreign(&st) {
        return Err(Left::Foreign(what));
    }
    if st.st_mtime >= cutoff {
        return Err(Left::Recent);
    }
    lock(&file)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(now) if FileId::of(&now) == FileId::of(&st) => {}
        _ => return Err(Left::Replaced),
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io::Error::from)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Why [`remove_stale_partial`] left a file where it was.
#[derive(Debug, thiserror::Error)]
pub enum Left {
    /// Not one of our partial files: what it is.
    #[error("{0}, not a partial file of ours")]
    Foreign(&'static str),
    /// Written since the cutoff.
    #[error("written recently")]
    Recent,
    /// Another file took its name between the check and the removal.
    #[error("replaced meanwhile")]
    Replaced,
    /// It could not be opened, locked (a transfer holds it) or removed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why what `st` describes, found at a partial file's name, is not one of
/// ours, if it is not: only a regular file with one link, owned by this
/// process's user, is taken for a partial file.
fn foreign(st: &rustix::fs::Stat) -> Option<&'static str> {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => return Some("a symlink"),
        FileType::Directory => return Some("a directory"),
        _ => return Some("a FIFO, socket or device"),
    }
    if st.st_nlink != 1 {
        Some("a file with other hard links")
    } else if st.st_uid != rustix::process::geteuid().as_raw() {
        Some("another user's file")
    } else {
        None
    }
}

/// An unnamed temporary file in `dir`, for a transfer whose partial-file
/// name `part` is taken by `what`.
fn anonymous(dir: &OwnedFd, part: &OsStr, what: &str) -> io::Result<File> {
    tracing::warn!(
        "{}: {what} stands at the partial file's name; writing an unnamed file instead (no resume)",
        part.to_string_lossy()
    );
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Err(io::Error::other(format!(
            "{what} stands at the partial file's name {}; remove it (this file system cannot write around it)",
            part.to_string_lossy()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Takes the exclusive `flock(2)` of a partial file; on a file system that
/// has no locks the file is used unlocked.
fn lock(file: &File) -> io::Result<()> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(Errno::WOULDBLOCK) => {
            Err(io::Error::new(io::ErrorKind::ResourceBusy, "another transfer is writing this file"))
        }
        // NFS without its lock service, say: the transfer goes on,
        // unguarded as before.
        Err(e @ (Errno::NOLCK | Errno::OPNOTSUPP | Errno::INVAL)) => {
            tracing::debug!("no lock on the partial file ({e})");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `dir`, and if it is a directory everything below
/// it, by descriptor: each directory is opened with `O_NOFOLLOW` from its
/// parent, and a symlink is removed as a link, never followed, so nothing
/// outside `dir` can be reached whatever is swapped in meanwhile. Depth is
/// bounded by [`MAX_PATH_DEPTH`].
///
/// # Errors
///
/// Those of `unlinkat(2)`, `openat(2)` and reading directories; `ELOOP`
/// past the depth limit.
pub fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    remove_within(dir, name, 0)
}

fn remove_within(dir: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    if depth > MAX_PATH_DEPTH {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(&sub)? {
        let item = item?;
        let raw = item.file_name().to_bytes();
        if raw != b"." && raw != b".." {
            names.push(OsStr::from_bytes(raw).to_owned());
        }
    }
    for child in names {
        remove_within(&sub, &child, depth + 1)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Opens the directory `parts` names below `dir`, one component at a
/// time with `O_NOFOLLOW`: a symlink anywhere on the way is refused
/// (`ELOOP` or `ENOTDIR`), even one that stays inside.
///
/// # Errors
///
/// Those of `openat(2)`.
pub fn open_no_links(dir: &OwnedFd, parts: &[&str]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut at = rustix::fs::openat(dir, ".", flags, Mode::empty())?;
    for part in parts {
        at = rustix::fs::openat(&at, &*names::decode(part), flags, Mode::empty())?;
    }
    Ok(at)
}

/// The final component of a local path and a descriptor of its directory
/// (opened as the user named it: the user's own symlinks are followed),
/// for a transfer that writes `path`.
///
/// # Errors
///
/// A path with no final name (`/`, `..`), and those of `open(2)`.
pub fn local_parent(path: &Path) -> io::Result<(OwnedFd, OsString)> {
    let name = match path.file_name() {
        Some(name) if !path.as_os_str().as_bytes().ends_with(b"/") => name.to_owned(),
        _ => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "names a directory, not a file"));
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    Ok((fd, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn roots(dir: &Path) -> [Root; 2] {
        let root = Root::open(dir).unwrap();
        [root.clone().with_resolver(Resolver::Openat2), root.with_resolver(Resolver::Walk)]
    }

    #[test]
    fn both_resolvers_follow_inner_links_and_refuse_escapes() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "f").unwrap();
        symlink("a/b", r.join("ab")).unwrap();
        symlink("../b/f", r.join("a/b/up")).unwrap();
        symlink("../../..", r.join("a/b/out")).unwrap();
        symlink(outside.path(), r.join("abs")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        for root in roots(r) {
            let read = |p: &str| {
                root.open_beneath(p, OFlags::RDONLY).map(|fd| std::io::read_to_string(File::from(fd)).unwrap())
            };
            assert_eq!(read("a/b/f").unwrap(), "f", "{:?}", root.resolver);
            assert_eq!(read("ab/f").unwrap(), "f");
            assert_eq!(read("ab/up").unwrap(), "f", "a relative link with .. that stays inside");
            assert!(is_escape(&read("a/b/out/etc").unwrap_err()), "{:?}", root.resolver);
            assert!(is_escape(&read("abs/secret").unwrap_err()));
            assert!(is_escape(&read("abs").unwrap_err()));
            assert_eq!(errno(&read("loop").unwrap_err()), Some(Errno::LOOP));
            assert_eq!(errno(&read("a/b/f/x").unwrap_err()), Some(Errno::NOTDIR));
            assert!(root.open_dir("a/b/f").is_err());
            assert!(root.open_dir("").is_ok());
        }
    }

    #[test]
    fn make_dirs_never_creates_through_a_link() {
        let outside = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        symlink(outside.path(), tmp.path().join("out")).unwrap();
        symlink(outside.path().join("new"), tmp.path().join("dangling")).unwrap();
        for root in roots(tmp.path()) {
            assert!(root.make_dirs(&["x", "y"]).is_ok());
            assert!(tmp.path().join("x/y").is_dir());
            assert!(is_escape(&root.make_dirs(&["out", "deep"]).unwrap_err()));
            assert!(is_escape(&root.make_dirs(&["dangling", "deep"]).unwrap_err()));
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside");
    }

    #[test]
    fn a_root_without_links_follows_none_and_replaces_them_by_directories() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "p").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for root in roots(r) {
            let root = root.without_links();
            std::fs::create_dir_all(r.join("a/b")).unwrap();
            std::fs::write(r.join("a/b/f"), "f").unwrap();
            std::fs::write(r.join("file"), "x").unwrap();
            symlink("a/b", r.join("inner")).unwrap();
            symlink(outside.path(), r.join("out")).unwrap();
            assert!(root.open_dir("a/b").is_ok());
            for linked in ["inner", "inner/f", "out", "out/precious"] {
                let err = root.open_beneath(linked, OFlags::RDONLY).unwrap_err();
                assert_eq!(errno(&err), Some(Errno::LOOP), "{linked}: {:?}", root.resolver);
            }
            let mut replaced = Vec::new();
            root.make_dirs_replacing(&["out", "deep"], false, &mut replaced).unwrap();
            root.make_dirs_replacing(&["inner", "x"], false, &mut replaced).unwrap();
            assert_eq!(replaced, ["out", "inner"]);
            assert!(r.join("out/deep").is_dir() && !r.join("out").is_symlink());
            assert!(r.join("a/b/f").is_file(), "an inner link's target is left alone");
            let err = root.make_dirs_replacing(&["file", "y"], false, &mut replaced).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
            assert!(err.to_string().contains("a file stands where") && !err.to_string().contains("--"), "{err}");
            assert_eq!(std::fs::read_to_string(r.join("file")).unwrap(), "x", "a file is replaced only when asked");
            root.make_dirs_replacing(&["file", "y"], true, &mut replaced).unwrap();
            assert!(r.join("file/y").is_dir());
            symlink(outside.path(), r.join("a/b/out")).unwrap();
            root.remove("a/b/out").unwrap();
            root.remove("out").unwrap();
            assert!(matches!(root.remove("inner/x"), Ok(())));
            for name in ["a", "inner", "file"] {
                std::fs::remove_dir_all(r.join(name)).unwrap();
            }
        }
        let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["precious"], "nothing outside created or removed");
    }

    #[test]
    fn a_planted_link_at_the_partial_name_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        symlink(&victim, tmp.path().join(".r.txt.fwpart")).unwrap();
        let dir = Root::open(tmp.path()).unwrap().open_dir("").unwrap();
        let mut p = Partial::open(dir, OsStr::new("r.txt")).unwrap();
        assert!(!p.resumable());
        p.file_mut().write_all(b"upload").unwrap();
        p.commit(0o644, false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(tmp.path().join("r.txt")).unwrap(), "upload");
        assert!(!tmp.path().join("r.txt").is_symlink());
        assert!(tmp.path().join(".r.txt.fwpart").is_symlink(), "the planted link is left alone");
    }

    #[test]
    fn commit_without_replace_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let mut first = Partial::open(root.open_dir("").unwrap(), OsStr::new("f")).unwrap();
        first.file_mut().write_all(b"first").unwrap();
        std::fs::write(tmp.path().join("f"), "there").unwrap();
        let err = first.commit(0o644, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "there");
        assert!(!tmp.path().join(".f.fwpart").exists(), "the loser's partial is removed");
        let mut second = Partial::open(root.open_dir("").unwrap(), OsStr::new("f")).unwrap();
        second.file_mut().write_all(b"second").unwrap();
        second.commit(0o600, true).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "second");
    }

    #[test]
    fn an_unnamed_file_is_linked_into_place_never_over_anything() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let names = |p: &std::path::Path| {
            let mut n: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            n.sort();
            n
        };
        let dir = || Arc::new(root.open_dir("").unwrap());
        // Made with its bits, invisible until placed.
        let new = Partial::unnamed(dir(), OsStr::new("f"), 0o640).unwrap().expect("tmpfs and ext4 have O_TMPFILE");
        new.file().write_all_at(b"new", 0).unwrap();
        assert!(names(tmp.path()).is_empty(), "no name before it is placed");
        assert_eq!(new.had().bits, 0o640 & !crate::services::files::umask());
        new.place(false).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "new");
        // Something there: not replaced, and nothing left beside it.
        let loser = Partial::unnamed(dir(), OsStr::new("f"), 0o600).unwrap().unwrap();
        loser.file().write_all_at(b"loser", 0).unwrap();
        assert_eq!(loser.place(false).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "new");
        assert_eq!(names(tmp.path()), ["f"]);
        // Replacing: through a hidden name of its own, renamed over.
        let winner = Partial::unnamed(dir(), OsStr::new("f"), 0o600).unwrap().unwrap();
        winner.file().write_all_at(b"winner", 0).unwrap();
        winner.place(true).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "winner");
        assert_eq!(names(tmp.path()), ["f"]);
    }

    #[test]
    fn partial_names() {
        assert!(is_partial_name(b".a.fwpart"));
        assert!(!is_partial_name(b"a.fwpart"));
        assert!(!is_partial_name(b"..fwpart"));
        assert!(!is_partial_name(b".fwpart"));
        assert_eq!(partial_name(OsStr::new("x")), OsString::from(".x.fwpart"));
        // A name of up to 255 bytes has a partial name that fits too, the
        // same each time (a resume finds it), and distinct from another's.
        let (long, other) = ("é".repeat(125) + "x", "é".repeat(125) + "y");
        let part = partial_name(OsStr::new(&long));
        assert_eq!(part.len(), 255);
        assert!(is_partial_name(part.as_encoded_bytes()));
        assert_eq!(part, partial_name(OsStr::new(&long)));
        assert_ne!(part, partial_name(OsStr::new(&other)));
        assert_eq!(partial_name(OsStr::new(&"a".repeat(247))).len(), 255, "the longest kept whole");
        let temp = temp_name(OsStr::new(&long)).unwrap();
        assert_eq!(temp.len(), 255);
        assert!(is_partial_name(temp.as_encoded_bytes()));
    }
}
