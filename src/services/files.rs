//! Files under a served root: path checks, listings, and the partial files
//! that make uploads atomic and resumable.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use crate::proto::{Entry, ErrorCode, Kind};

use super::Refusal;

/// Suffix of the partial file an upload or download writes before it is
/// verified and renamed into place. Names ending in it are reserved.
pub const PARTIAL_SUFFIX: &str = ".fwpart";

/// How long an upload waits for an earlier upload of the same path to end.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The served directory. Every path a client names is resolved through it.
///
/// Paths are relative to the root, `/`-separated; absolute paths, `..`
/// components, NUL bytes, names ending in [`PARTIAL_SUFFIX`], and symlinks
/// whose target lies outside the root are refused.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    busy: Arc<Mutex<HashSet<PathBuf>>>,
}

fn bad_path(path: &str, why: &str) -> Refusal {
    Refusal::new(ErrorCode::BadPath, format!("{path:?}: {why}"))
}

impl Sandbox {
    /// A sandbox over `root`, which must be a directory.
    ///
    /// # Errors
    ///
    /// If `root` does not exist or is not a directory.
    pub fn new(root: &Path) -> io::Result<Sandbox> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", root.display())));
        }
        Ok(Sandbox { root, busy: Arc::default() })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks a client's path without touching the file system and returns
    /// it as a relative path (empty for the root itself).
    ///
    /// # Errors
    ///
    /// [`ErrorCode::BadPath`] for NUL bytes, absolute paths, `..`, and
    /// reserved names.
    pub fn relative(path: &str) -> Result<PathBuf, Refusal> {
        if path.contains('\0') {
            return Err(bad_path(path, "contains a NUL byte"));
        }
        if path.starts_with('/') {
            return Err(bad_path(path, "absolute paths are refused; paths are relative to the served root"));
        }
        let mut rel = PathBuf::new();
        for part in Path::new(path).components() {
            match part {
                Component::Normal(name) => rel.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(bad_path(path, "`..` is refused; paths stay inside the served root"))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(bad_path(path, "absolute paths are refused; paths are relative to the served root"))
                }
            }
        }
        if rel.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            return Err(bad_path(path, "names ending in .fwpart are reserved for partial transfers"));
        }
        Ok(rel)
    }

    /// Fails unless `real` (canonical) is inside the root.
    fn inside(&self, path: &str, real: &Path) -> Result<(), Refusal> {
        if real.starts_with(&self.root) {
            Ok(())
        } else {
            Err(bad_path(path, "leads outside the served root (through a symlink)"))
        }
    }

    /// Resolves an existing path, following symlinks that stay inside.
    ///
    /// # Errors
    ///
    /// As [`relative`](Self::relative); [`ErrorCode::NotFound`] and other
    /// I/O refusals; [`ErrorCode::BadPath`] for a symlink leading outside.
    pub fn existing(&self, path: &str) -> Result<PathBuf, Refusal> {
        let full = self.root.join(Self::relative(path)?);
        let real = full.canonicalize().map_err(|e| Refusal::io(path, &e))?;
        self.inside(path, &real)?;
        Ok(real)
    }

    /// Resolves a path to be written, creating its missing parent
    /// directories one by one, each checked to stay inside the root.
    /// Returns the final path (its last component unresolved: renaming
    /// onto a symlink replaces the link, never its target).
    ///
    /// # Errors
    ///
    /// As [`relative`](Self::relative), plus an empty path, a parent that
    /// is a file, or a parent leading outside the root.
    pub fn for_write(&self, path: &str) -> Result<PathBuf, Refusal> {
        let rel = Self::relative(path)?;
        let Some(name) = rel.file_name().map(ToOwned::to_owned) else {
            return Err(bad_path(path, "names the served root, not a file"));
        };
        let mut dir = self.root.clone();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            // Another upload may create the same directory at the same
            // moment: EEXIST means "exists", checked like any other.
            let created = match fs::create_dir(&dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refusal::io(path, &e)),
                Err(_) => false,
            };
            if created {
                continue;
            }
            match fs::symlink_metadata(&dir) {
                Ok(_) => {
                    let real = dir.canonicalize().map_err(|e| Refusal::io(path, &e))?;
                    self.inside(path, &real)?;
                    if !real.is_dir() {
                        return Err(Refusal::new(
                            ErrorCode::NotADirectory,
                            format!(
                                "{path}: {} is not a directory",
                                real.strip_prefix(&self.root).unwrap_or(&real).display()
                            ),
                        ));
                    }
                    dir = real;
                }
                Err(e) => return Err(Refusal::io(path, &e)),
            }
        }
        Ok(dir.join(name))
    }

    /// Marks `path` as being uploaded until the guard drops; a second
    /// upload of the same path meanwhile is refused. Blocking: waits up to
    /// [`CLAIM_WAIT`] for an earlier upload to let go, since a client that
    /// was killed and restarted at once can arrive before the server has
    /// seen its old connection close.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Busy`] if the path is still being uploaded after that.
    pub fn claim(&self, path: &Path, shown: &str) -> Result<Claim, Refusal> {
        let deadline = std::time::Instant::now() + CLAIM_WAIT;
        loop {
            if self.busy.lock().expect("busy set poisoned").insert(path.to_owned()) {
                return Ok(Claim { busy: self.busy.clone(), path: path.to_owned() });
            }
            if std::time::Instant::now() >= deadline {
                let msg = format!("{shown}: another upload to this path is in progress");
                return Err(Refusal::new(ErrorCode::Busy, msg));
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
    /// As [`existing`](Self::existing).
    pub fn list(&self, path: &str, listing: Listing) -> Result<Vec<Entry>, Refusal> {
        self.list_within(path, listing, crate::wire::MAX_BUFFERED_BODY as usize)
    }

    /// [`list`](Self::list), giving up with [`ErrorCode::TooLarge`] as
    /// soon as the entries would take more than about `budget` bytes of
    /// JSON: a listing too large to send is not built in memory first.
    fn list_within(&self, path: &str, listing: Listing, budget: usize) -> Result<Vec<Entry>, Refusal> {
        let real = self.existing(path)?;
        let meta = fs::metadata(&real).map_err(|e| Refusal::io(path, &e))?;
        if !meta.is_dir() {
            let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(vec![entry(name, &meta)]);
        }
        let (mut out, mut left) = (Vec::new(), budget);
        match Self::walk(&real, Path::new(""), listing, &mut out, &mut left) {
            Ok(()) => {}
            Err(_) if left == 0 => {
                let msg = format!("{path}: the listing exceeds {budget} bytes; list a smaller part of the tree");
                return Err(Refusal::new(ErrorCode::TooLarge, msg));
            }
            Err(e) => return Err(Refusal::io(path, &e)),
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Adds the entries below `dir`; `left` is what remains of the byte
    /// budget (each entry counts its name and ~64 bytes of JSON around
    /// it), and is 0 when the walk stopped for it.
    fn walk(dir: &Path, prefix: &Path, listing: Listing, out: &mut Vec<Entry>, left: &mut usize) -> io::Result<()> {
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            if name.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                continue;
            }
            let meta = item.metadata()?;
            let rel = prefix.join(&name);
            let keep = match listing {
                Listing::Entries => true,
                Listing::Files => meta.is_file(),
                Listing::Tree => meta.is_file() || meta.is_dir(),
            };
            if keep {
                let name = rel.to_string_lossy().into_owned();
                let cost = name.len() + 64;
                if cost >= *left {
                    *left = 0;
                    return Err(io::Error::other("listing budget spent"));
                }
                *left -= cost;
                out.push(entry(name, &meta));
            }
            if listing != Listing::Entries && meta.is_dir() {
                Self::walk(&item.path(), &rel, listing, out, left)?;
            }
        }
        Ok(())
    }

    /// Makes sure `path` is a directory, creating it and any missing
    /// parents (each checked to stay inside the root). Returns whether it
    /// was created; an existing directory (or a symlink to one inside the
    /// root) is fine.
    ///
    /// # Errors
    ///
    /// As [`for_write`](Self::for_write); [`ErrorCode::Exists`] when
    /// something other than a directory is there.
    pub fn mkdir(&self, path: &str) -> Result<bool, Refusal> {
        if Self::relative(path)?.as_os_str().is_empty() {
            return Ok(false);
        }
        let target = self.for_write(path)?;
        match fs::create_dir(&target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let real = target.canonicalize().map_err(|e| Refusal::io(path, &e))?;
                self.inside(path, &real)?;
                if real.is_dir() {
                    Ok(false)
                } else {
                    Err(Refusal::new(ErrorCode::Exists, format!("{path}: exists on the server and is not a directory")))
                }
            }
            Err(e) => Err(Refusal::io(path, &e)),
        }
    }
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
fn umask() -> u32 {
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
    busy: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.path);
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
    Entry { name, size: meta.len(), kind, mtime: mtime(meta), mode: meta.permissions().mode() & 0o7777 }
}

/// Modification time in seconds since the epoch (negative before it).
pub fn mtime(meta: &fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        },
        Err(_) => 0,
    }
}

/// The partial file beside `target`: `.NAME.fwpart` in the same directory,
/// so the final rename never crosses file systems.
pub fn partial_path(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"))
}

/// Opens (or creates) the partial file at `path` to write a transfer into
/// it: readable and writable by its owner only until it is complete (its
/// final permission bits are set when it is committed), and locked with
/// `flock(2)` so that two transfers, in this process or in any other that
/// opens partial files this way, never write one partial file at once.
/// The lock goes with the file's last descriptor. On a file system that
/// has no locks the file is opened unlocked.
///
/// # Errors
///
/// [`io::ErrorKind::ResourceBusy`] if another transfer holds the partial
/// file; I/O errors.
pub fn open_partial(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    // SAFETY: flock on a descriptor we own; the result is checked.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => {
                return Err(io::Error::new(io::ErrorKind::ResourceBusy, "another transfer is writing this file"))
            }
            // A file system with no locks (NFS without its lock service,
            // say) still takes the transfer, unguarded as before.
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL) => {
                tracing::debug!("{}: no lock on the partial file ({e})", path.display());
            }
            _ => return Err(e),
        }
    }
    // A partial file left by an older version may be open to others.
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
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
        Some((io::ErrorKind::IsADirectory, "is a directory (use -r)"))
    } else if !meta.is_file() {
        Some((io::ErrorKind::InvalidInput, "not a regular file (a FIFO, socket or device)"))
    } else {
        None
    }
}

/// Moves a verified partial file into place: give it its final permission
/// bits (it was owner-only, see [`open_partial`]): the sender's `mode`
/// through [`received_mode`], or with no mode what a new file gets here;
/// then fsync the data, rename, fsync the directory, so that after a crash
/// the file is either absent or whole.
///
/// # Errors
///
/// I/O errors of any step; the partial file is left where it was.
pub fn commit(file: &File, mode: Option<u32>, partial: &Path, target: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(received_mode(mode.unwrap_or(0o666))))?;
    file.sync_all()?;
    fs::rename(partial, target)?;
    if let Some(dir) = target.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// file, or verifying an upload), by path and [`Version`]: a repeated
/// `get` of an unchanged file reads and sends it without hashing it again.
/// Bounded: at [`HASH_CACHE_ENTRIES`] it starts over.
#[derive(Debug, Default)]
pub struct HashCache(Mutex<std::collections::HashMap<PathBuf, (Version, blake3::Hash)>>);

/// Most hashes the cache holds.
pub const HASH_CACHE_ENTRIES: usize = 4096;

impl HashCache {
    /// The hash of `path` if it was computed for this very version.
    pub fn get(&self, path: &Path, version: Version) -> Option<blake3::Hash> {
        let map = self.0.lock().expect("hash cache poisoned");
        map.get(path).filter(|(v, _)| *v == version).map(|(_, h)| *h)
    }

    /// Records the hash of `path` at `version`.
    pub fn put(&self, path: &Path, version: Version, hash: blake3::Hash) {
        let mut map = self.0.lock().expect("hash cache poisoned");
        if map.len() >= HASH_CACHE_ENTRIES {
            map.clear();
        }
        map.insert(path.to_owned(), (version, hash));
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

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(Sandbox::relative("a/./b/c.txt").unwrap(), PathBuf::from("a/b/c.txt"));
        assert_eq!(Sandbox::relative("").unwrap(), PathBuf::new());
        for (bad, why) in [
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a\0b", "NUL"),
            ("x.fwpart", "reserved"),
        ] {
            let err = Sandbox::relative(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadPath, "{bad}");
            assert!(err.message.contains(why), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn symlinks_may_not_lead_out() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink("inner.txt", root.path().join("alias")).unwrap();
        fs::write(root.path().join("inner.txt"), "i").unwrap();
        let sandbox = Sandbox::new(root.path()).unwrap();
        assert_eq!(sandbox.existing("out/secret").unwrap_err().code, ErrorCode::BadPath);
        assert_eq!(sandbox.for_write("out/new").unwrap_err().code, ErrorCode::BadPath);
        assert!(!outside.path().join("new").exists());
        assert_eq!(sandbox.for_write("out/deep/new").unwrap_err().code, ErrorCode::BadPath);
        assert!(!outside.path().join("deep").exists(), "nothing created outside");
        assert!(sandbox.existing("alias").unwrap().ends_with("inner.txt"));
    }

    #[test]
    fn for_write_creates_parents_inside() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(root.path()).unwrap();
        let p = sandbox.for_write("a/b/c.txt").unwrap();
        assert!(root.path().join("a/b").is_dir());
        assert!(p.ends_with("a/b/c.txt"));
        fs::write(root.path().join("file"), "").unwrap();
        assert_eq!(sandbox.for_write("file/x").unwrap_err().code, ErrorCode::NotADirectory);
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
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("list a smaller part"), "{}", err.message);
        // What fits is listed as before.
        assert_eq!(sb.list_within("d7", Listing::Files, 100).unwrap().len(), 1);
    }

    #[test]
    fn claims_are_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(root.path()).unwrap();
        let p = root.path().join("x");
        let claim = sandbox.claim(&p, "x").unwrap();
        assert_eq!(sandbox.claim(&p, "x").unwrap_err().code, ErrorCode::Busy);
        drop(claim);
        assert!(sandbox.claim(&p, "x").is_ok());
    }
}
