//! Copies of files and trees over several connections at once: what
//! `framewire get -r` and `put -r` run.
//!
//! A copy is planned first ([`plan_get`], [`plan_put`]): the sources are
//! expanded into one [`Job`] per file (a remote tree through one listing,
//! a local tree by walking it), local directories are created, and what
//! cannot be copied is set aside. Then [`run`] moves the jobs over up to
//! [`CopyOptions::jobs`] connections, each opened when first needed and
//! reused while it stays in step, and reports each file to an
//! [`Observer`] (progress bars, logs) as it starts, moves and ends.
//!
//! The rules are `cp`'s: with several sources, or a destination that is a
//! directory (or, for an upload, ends in `/`), each source lands inside
//! it; otherwise the one source is copied to the destination itself. The
//! names a remote listing returns are checked to be plain relative paths
//! ([`parse_listing`](super::parse_listing)), so joining them onto a local
//! directory stays inside it.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use framewire::client::tree::{self, CopyOptions, Endpoint, PlanOptions, Quiet};
//!
//! let endpoint = Endpoint::new("127.0.0.1:9909", None);
//! let mut client = endpoint.connect().await?;
//! let options = PlanOptions::new(true, false);
//! let plan = tree::plan_get(&mut client, &["photos".to_owned()], "backup".as_ref(), options).await?;
//! let summary = tree::run(&endpoint, plan, &CopyOptions::default(), std::sync::Arc::new(Quiet)).await;
//! assert!(summary.failures.is_empty(), "{:?}", summary.failures);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::OFlags;

use super::backup::{BackupOptions, LocalBackup};
use super::conn::Client;
use super::error::ClientError;
use super::files::{local_directory, Progress, Transfer, TransferOptions};
use super::filter::Filter;
use super::job::Base;
pub use super::job::{Direction, Job, Observer, Quiet};
use crate::auth::Key;
use crate::proto::{Attrs, Backup, Entry, ErrorCode, Kind};
use crate::services::attrs::{Differs, Wanted};
use crate::services::files::Stamp;
use crate::services::root::{is_partial_name, Root};
pub use crate::services::sync::Existing;
pub use crate::session::SharedReads;

/// Where a copy's connections go: the server's address and the key, if
/// any. Every connection of a copy is opened from it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: String,
    creds: super::conn::Credentials,
    throttle: Option<crate::transport::Throttle>,
    connect_timeout: Option<Duration>,
    shared_reads: Option<Arc<SharedReads>>,
    compress: Option<i32>,
    /// A connection made from here and handed back idle
    /// ([`keep_spare`](Self::keep_spare)), and since when it may have been
    /// idle at most. Shared by clones, not by an endpoint a `with_`
    /// method made (another key, compression or budget).
    spare: Arc<Mutex<Option<(Client, Instant)>>>,
}

/// How long a spare connection may have been idle and still be taken by
/// [`Endpoint::connect`]: well inside a server's idle timeout (5 minutes
/// by default). One the server ended meanwhile (a shorter timeout) is
/// told by what it sent before it closed, and not taken.
const SPARE_FRESH: Duration = Duration::from_secs(60);

impl Endpoint {
    /// The server at `addr` (as [`Client::connect`] takes it), with `key`.
    pub fn new(addr: impl Into<String>, key: Option<Key>) -> Self {
        let creds = super::conn::Credentials::shared(key);
        Endpoint {
            addr: addr.into(),
            creds,
            throttle: None,
            connect_timeout: None,
            shared_reads: None,
            compress: None,
            spare: Arc::default(),
        }
    }

    /// Hands back `client`, a connection opened by [`connect`](Self::connect)
    /// (so with this endpoint's key, compression and bandwidth budget),
    /// between requests, its last one sent no earlier than `since`: the
    /// next `connect` takes it instead of opening one, if `since` was less
    /// than a minute ago and the server has said nothing since (an idle
    /// timeout's farewell). What a copy's planning connection is carried
    /// into the copy by: one connection and handshake less (a round trip
    /// or more on a far link). A second spare replaces the first.
    pub fn keep_spare(&self, client: Client, since: Instant) {
        let mut spare = self.spare.lock().expect("spare");
        *spare = Some((client, since));
    }

    /// Every connection opened from here asks the server to compress it
    /// both ways with zstd at `level` (`-z`, [`Client::compress`]); one to
    /// a server that cannot goes uncompressed.
    pub fn with_compress(mut self, level: Option<i32>) -> Self {
        self.compress = level;
        self.spare = Arc::default();
        self
    }

    /// The same server, authenticated with `creds` (keys of one's own, how
    /// host keys are checked) instead of the shared key alone.
    pub fn with_credentials(mut self, creds: super::conn::Credentials) -> Self {
        self.creds = creds;
        self.spare = Arc::default();
        self
    }

    /// Every connection opened from here must be connected, and its
    /// handshake (TLS and the key proof) done, within `limit`, or fails
    /// with [`ClientError::ConnectTimeout`] (`--connect-timeout`). Without
    /// one, the TCP connect waits as long as the system does and the
    /// handshake [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT).
    pub fn with_connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
        self.spare = Arc::default();
        self
    }

    /// Every connection opened from here shares `throttle`'s bandwidth
    /// budget (`--bwlimit`).
    pub fn with_bwlimit(mut self, throttle: crate::transport::Throttle) -> Self {
        self.throttle = Some(throttle);
        self.spare = Arc::default();
        self
    }

    /// Uploads over connections opened from here share their reads of
    /// each local file with every other copy given the same `reads` (a
    /// fan-out `put`): the copies sending a file at once read each chunk
    /// of it once between them. Bodies of 4 MiB or more only; such a body
    /// then goes from memory rather than with `sendfile(2)`.
    pub fn with_shared_reads(mut self, reads: Arc<SharedReads>) -> Self {
        self.shared_reads = Some(reads);
        self.spare = Arc::default();
        self
    }

    /// The zstd level its connections ask for, if they are compressed.
    pub fn compress_level(&self) -> Option<i32> {
        self.compress
    }

    /// The server's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the server is this machine: every address its name
    /// resolves to is a loopback one (where auto mode sends files whole).
    pub async fn is_local(&self) -> bool {
        match tokio::net::lookup_host(crate::proto::with_default_port(&self.addr)).await {
            Ok(addrs) => {
                let addrs: Vec<std::net::SocketAddr> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| crate::transport::is_local(a.ip()))
            }
            Err(_) => false,
        }
    }

    /// Opens one connection.
    ///
    /// # Errors
    ///
    /// As [`Client::connect_with`], and [`ClientError::ConnectTimeout`]
    /// past the connect timeout.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let spare = self.spare.lock().expect("spare").take();
        if let Some((mut client, since)) = spare.filter(|(_, since)| since.elapsed() < SPARE_FRESH) {
            if client.is_quiet() {
                tracing::trace!(idle = ?since.elapsed(), "the spare connection taken");
                return Ok(client);
            }
        }
        let connecting = Client::connect_as(&self.addr, &self.creds, self.throttle.as_ref());
        let mut client = match self.connect_timeout {
            None => connecting.await?,
            Some(limit) => match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result?,
                Err(_) => {
                    let addr = crate::proto::with_default_port(&self.addr);
                    return Err(ClientError::ConnectTimeout { addr, after: limit });
                }
            },
        };
        client.shared_reads = self.shared_reads.clone();
        if let Some(level) = self.compress {
            client.compress(level).await?;
        }
        Ok(client)
    }
}

/// A file or directory that could not be copied, and why.
#[derive(Debug)]
pub struct Failure {
    /// Its source path.
    pub path: String,
    /// Why.
    pub error: ClientError,
}

/// A planned copy.
#[derive(Debug)]
pub struct Plan {
    /// Which way it goes.
    pub direction: Direction,
    /// The files to copy, in order.
    pub jobs: Vec<Job>,
    /// Remote directories to create because no file below creates them
    /// and the server does not hold them (uploads).
    pub mkdirs: Vec<String>,
    /// Local directories to create, empty ones too (downloads); planning
    /// itself changes nothing, [`run`] creates them first.
    pub local_dirs: Vec<PathBuf>,
    /// With `delete`, uploads: server paths the source lacks, removed
    /// (directories with what is below them) once every file is copied.
    pub delete_remote: Vec<String>,
    /// With `delete`, downloads: local paths the source lacks, as the
    /// copied directory and the path below it.
    pub delete_local: Vec<(PathBuf, String)>,
    /// Downloads: the local directory everything lands beneath, as the
    /// user named it (followed, as `cp` and `rsync` follow it); [`run`]
    /// opens it once and reaches everything below by descriptor, never
    /// through a symlink.
    pub dest_dir: Option<PathBuf>,
    /// Left out on purpose, with why: special files, symlinks to
    /// directories, dangling symlinks, symlinks leading out of the tree.
    pub skipped: Vec<String>,
    /// Left out, and the copy fails: names the protocol cannot carry.
    pub failures: Vec<Failure>,
    /// Left out because the receiver has them already: the same size and
    /// modification time (rsync's quick check).
    pub unchanged: Vec<Job>,
    /// Left out under [`Existing::Update`] because the receiver's file
    /// differs and is not older than the source's; replaced with `force`.
    pub refused: Vec<Job>,
    /// What the copy makes or sets on the receiver once its files are in
    /// place: symlinks and hard links first, then directories' modes and
    /// times, deepest first (see [`Meta`]).
    pub meta: Vec<Meta>,
    /// Files with several names met so far (uploads): the path of the
    /// first, by device and inode.
    inodes: HashMap<(u64, u64), String>,
    /// Symlinks are followed (`-L`), not copied as links.
    copy_links: bool,
    /// Files sent are itemized too ([`PlanOptions::itemize`]).
    itemize: bool,
    /// What the copy changes on the receiver, in rsync's
    /// `--itemize-changes` form: directories created, links made, files
    /// sent (in the order of [`Plan::jobs`]; only with
    /// [`PlanOptions::itemize`]), paths deleted (see [`Change`]).
    pub changes: Vec<Change>,
    /// Uploads: where the server keeps what the copy replaces or removes.
    pub backup_remote: Option<crate::proto::Backup>,
    /// Downloads: where this side keeps what the copy replaces or removes.
    pub backup_local: Option<Arc<LocalBackup>>,
    /// Downloads: what this side does with the owners and extended
    /// attributes it receives.
    pub applying: crate::services::attrs::Applying,
    /// Uploads: what is read of each path besides (owners, extended
    /// attributes), and whether devices are copied.
    wanted: Wanted,
    devices: bool,
    /// Uploads: names of owners, looked up once each.
    names: crate::services::attrs::Names,
    /// How the receiver sets permission bits and attributes, as the plan
    /// compares them with what it holds.
    receiver: Receiver,
}

/// Something a copy makes or sets on the receiver without sending data,
/// once its files are in place. Paths are the server's for an upload, and
/// relative to the destination directory for a download.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Meta {
    /// A symlink, stored as it is (never followed on either side).
    Symlink {
        /// Where it goes.
        path: String,
        /// What it points to, as stored.
        target: String,
        /// Its own modification time.
        mtime: Stamp,
        /// Something the plan saw there is replaced.
        replace: bool,
        /// Its source, as failures name it.
        shown: String,
        /// Its owner, as the copy keeps it.
        attrs: Option<Box<Attrs>>,
    },
    /// A special file: a FIFO, a socket's name, a device (`--devices`).
    Special {
        /// Where it goes.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// Its modification time.
        mtime: Stamp,
        /// What it is (`special`, `rdev`), its owner.
        attrs: Box<Attrs>,
        /// Its source, as failures name it.
        shown: String,
    },
    /// Another name of a file of the same copy (a hard link).
    HardLink {
        /// The new name.
        path: String,
        /// The file it names (copied, or there, by then).
        to: String,
        /// Something the plan saw there is replaced.
        replace: bool,
        /// Its source, as failures name it.
        shown: String,
    },
    /// The permission bits, owner and extended attributes of a file the
    /// receiver has already (the same size and time) but whose attributes
    /// differ: set, nothing sent.
    File {
        /// The file.
        path: String,
        /// Its size, as the plan saw it (it is left alone if it changed).
        size: u64,
        /// Its permission bits (masked by the receiver's umask).
        mode: u32,
        /// Its modification time, as the plan saw it.
        mtime: Stamp,
        /// Its owner and extended attributes, as the copy keeps them.
        attrs: Option<Box<Attrs>>,
        /// Its source, as failures name it.
        shown: String,
    },
    /// A directory's permission bits and time, set after what is below
    /// it.
    Dir {
        /// The directory.
        path: String,
        /// Its permission bits (masked by the receiver's umask).
        mode: u32,
        /// Its modification time.
        mtime: Stamp,
        /// Its owner and extended attributes, as the copy keeps them.
        attrs: Option<Box<Attrs>>,
    },
}

impl Meta {
    /// The path it is applied to.
    pub fn path(&self) -> &str {
        match self {
            Meta::Symlink { path, .. }
            | Meta::HardLink { path, .. }
            | Meta::Dir { path, .. }
            | Meta::File { path, .. }
            | Meta::Special { path, .. } => path,
        }
    }

    /// As a `meta` manifest entry (PROTOCOL.md §4.6.3.2), its path as
    /// given (relative to the root, the request's directory).
    fn entry(&self) -> crate::proto::ManifestEntry {
        use crate::proto::ManifestEntry;
        match self {
            Meta::Symlink { path, target, mtime, replace, attrs, .. } => ManifestEntry {
                path: path.clone(),
                kind: Kind::Symlink,
                target: Some(target.clone()),
                mtime: mtime.wire_secs(),
                mtime_ns: mtime.wire_ns(),
                replace: *replace,
                attrs: attrs.clone(),
                ..ManifestEntry::default()
            },
            Meta::Special { path, mode, mtime, attrs, .. } => ManifestEntry {
                path: path.clone(),
                kind: Kind::Other,
                mode: *mode,
                mtime: mtime.wire_secs(),
                mtime_ns: mtime.wire_ns(),
                replace: true,
                attrs: Some(attrs.clone()),
                ..ManifestEntry::default()
            },
            Meta::HardLink { path, to, replace, .. } => ManifestEntry {
                path: path.clone(),
                link: Some(to.clone()),
                replace: *replace,
                ..ManifestEntry::default()
            },
            Meta::File { path, size, mode, mtime, attrs, .. } => ManifestEntry {
                path: path.clone(),
                size: *size,
                mode: *mode,
                mtime: mtime.wire_secs(),
                mtime_ns: mtime.wire_ns(),
                attrs: attrs.clone(),
                attrs_only: true,
                ..ManifestEntry::default()
            },
            Meta::Dir { path, mode, mtime, attrs } => ManifestEntry {
                path: path.clone(),
                kind: Kind::Dir,
                mode: *mode,
                mtime: mtime.wire_secs(),
                mtime_ns: mtime.wire_ns(),
                attrs: attrs.clone(),
                ..ManifestEntry::default()
            },
        }
    }

    /// What a failure of it names.
    fn shown(&self) -> String {
        match self {
            Meta::Symlink { shown, .. }
            | Meta::HardLink { shown, .. }
            | Meta::Special { shown, .. }
            | Meta::File { shown, .. } => shown.clone(),
            Meta::Dir { path, .. } => path.clone(),
        }
    }

    /// Links first, then directories, deepest first: a directory's time
    /// is set once nothing below it changes any more.
    fn order(meta: &mut [Meta]) {
        meta.sort_by_key(|m| match m {
            Meta::Dir { path, .. } => (1, std::cmp::Reverse(path.matches('/').count())),
            _ => (0, std::cmp::Reverse(0usize)),
        });
    }
}

/// One change a copy makes to the receiver, as rsync's
/// `--itemize-changes` writes it: an 11-character code `YXcstpoguax` and
/// the path. `Y` is `<` (sent to the server) or `>` (received), `c` for
/// a directory or link created, `*` for a message (`*deleting`); `X` the
/// kind (`f` file, `d` directory, `L` symlink, `D` special); then one
/// letter per attribute that differs (`c` contents compared and
/// different, `s` size, `t` modification time, `p` permissions) or `.`,
/// and all `+` for something new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The code, 11 characters (or `*deleting`).
    pub code: String,
    /// The receiver's path: the server's for an upload, the local one for
    /// a download.
    pub path: String,
    /// The source path, as failures name it.
    pub source: String,
}

impl Change {
    /// A file copied over `held` (nothing, or a file of that size and
    /// mtime); `differs` when contents were compared and differ.
    fn file(direction: Direction, job: &Job, held: Option<Held>, differs: bool) -> Change {
        let y = match direction {
            Direction::Put => '<',
            Direction::Get => '>',
        };
        let code = match held {
            None => format!("{y}f+++++++++"),
            Some(Some((size, mtime, ns))) => {
                let flag = |on: bool, c: char| if on { c } else { '.' };
                let time = mtime != job.mtime || matches!((ns, job.mtime_ns), (Some(a), Some(b)) if a != b);
                format!("{y}f{}{}{}......", flag(differs, 'c'), flag(size != job.size, 's'), flag(time, 't'))
            }
            // A link or special file replaced by a file.
            Some(None) => format!("{y}f+++++++++"),
        };
        let path = match direction {
            Direction::Put => job.remote.clone(),
            Direction::Get => crate::text::shown_path(&job.local),
        };
        Change { code, path, source: job.source(direction) }
    }

    /// What is there already, its attributes set (`.f...p.....`): `kind`
    /// `f` or `d` (a directory's `path` as shown, a `/` added), `time` if
    /// its time is set too, then which attributes differ.
    fn attrs(kind: char, path: &str, source: &str, time: bool, (mode, d): (bool, Differs)) -> Change {
        let flag = |on: bool, c: char| if on { c } else { '.' };
        let code = format!(
            ".{kind}..{}{}{}{}.{}{}",
            flag(time, 't'),
            flag(mode, 'p'),
            flag(d.owner, 'o'),
            flag(d.group, 'g'),
            flag(d.acls, 'a'),
            flag(d.xattrs, 'x'),
        );
        let path = if kind == 'd' { format!("{}/", path.trim_end_matches('/')) } else { path.to_owned() };
        Change { code, path, source: source.to_owned() }
    }

    /// A directory created (`path` as shown, a `/` added).
    pub fn mkdir(path: &str) -> Change {
        Change { code: "cd+++++++++".into(), path: format!("{}/", path.trim_end_matches('/')), source: path.into() }
    }

    /// A path a mirror removes.
    pub fn deleting(path: &str) -> Change {
        Change { code: "*deleting  ".into(), path: path.into(), source: path.into() }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.path)
    }
}

impl Plan {
    fn new(direction: Direction) -> Self {
        Plan {
            direction,
            jobs: Vec::new(),
            mkdirs: Vec::new(),
            local_dirs: Vec::new(),
            delete_remote: Vec::new(),
            delete_local: Vec::new(),
            backup_remote: None,
            backup_local: None,
            applying: crate::services::attrs::Applying::default(),
            wanted: Wanted::default(),
            devices: false,
            names: crate::services::attrs::Names::new(),
            receiver: Receiver::default(),
            dest_dir: None,
            skipped: Vec::new(),
            failures: Vec::new(),
            unchanged: Vec::new(),
            refused: Vec::new(),
            changes: Vec::new(),
            meta: Vec::new(),
            inodes: HashMap::new(),
            copy_links: false,
            itemize: false,
        }
    }

    /// Sorts a planned job by what the receiver holds under its name
    /// (`None`: nothing, or not a regular file: size and mtime of one).
    /// `same`, when known, says whether the contents are the same (by
    /// BLAKE3, for `checksum`); otherwise the same size and mtime mean
    /// the same file.
    /// Returns whether the job was left out as unchanged (the last of
    /// [`Plan::unchanged`]).
    fn decide(&mut self, mut job: Job, receiver: Option<Held>, rule: Rule, same: Option<bool>) -> bool {
        use crate::services::sync::{self, Held, Same, Verdict};
        // Contents compared, and different (itemized `c`).
        let differs = same == Some(false);
        // Where both times are known to the nanosecond, they tell files
        // apart as the seconds do.
        let same = match (same, receiver) {
            (None, Some(Some((size, mtime, Some(ns)))))
                if size == job.size && mtime == job.mtime && job.mtime_ns.is_some_and(|ours| ours != ns) =>
            {
                Some(false)
            }
            (same, _) => same,
        };
        let Rule { existing, force } = rule;
        let held = match receiver {
            None => Held::Nothing,
            Some(Some((size, mtime, _))) => Held::File { size, mtime },
            Some(None) => Held::Other,
        };
        let same = || same.map_or(Same::Unknown, Same::Known);
        match sync::decide(held, (job.size, job.mtime), same, existing, force) {
            Verdict::Send { replace } => {
                job.replace |= replace;
                job.held = receiver.flatten().map(|(size, ..)| size);
                if self.itemize {
                    self.changes.push(Change::file(self.direction, &job, receiver, differs));
                }
                self.jobs.push(job);
            }
            Verdict::Unchanged => {
                self.unchanged.push(job);
                return true;
            }
            Verdict::Kept => self.unchanged.push(job),
            Verdict::NotOlder | Verdict::IsDir | Verdict::NotAFile => self.refused.push(job),
        }
        false
    }

    /// The file [`Plan::decide`] just left out as unchanged, if its
    /// permission bits or attributes differ from what the receiver holds
    /// (`held`: its bits, attributes and time, as the receiver's listing
    /// or this side's `stat` gave them): they are set once the files are
    /// in place (nothing is sent), and itemized. `path` is where: the
    /// server's path for an upload, the path below the destination for a
    /// download.
    fn set_unchanged_attrs(&mut self, path: String, held: (u32, Option<&Attrs>, Stamp)) {
        let Some(job) = self.unchanged.last() else { return };
        let sent = match (self.direction, job.owner) {
            // An upload names owners only in manifests: named here for the
            // few whose bits or attributes are compared.
            (Direction::Put, Some((uid, gid))) if self.receiver.how.owners => {
                let mut a = job.attrs.as_deref().cloned().unwrap_or_default();
                (a.uid, a.gid) = (Some(uid), Some(gid));
                if !self.receiver.how.numeric {
                    (a.user, a.group) = self.names.names(uid, gid);
                }
                Some(Box::new(a))
            }
            _ => job.attrs.clone(),
        };
        let Some(differs) = self.receiver.differs((job.mode, sent.as_deref()), (held.0, held.1)) else { return };
        let shown = match self.direction {
            Direction::Put => job.remote.clone(),
            Direction::Get => crate::text::shown_path(&job.local),
        };
        let source = job.source(self.direction);
        if self.itemize {
            self.changes.push(Change::attrs('f', &shown, &source, false, differs));
        }
        let (size, mode) = (job.size, job.mode);
        self.meta.push(Meta::File { path, size, mode, mtime: held.2, attrs: sent, shown: source });
    }

    /// Holds a mirror to `limit`: one that would remove more removes
    /// nothing, and that is a failure of the copy.
    fn limit_deletions(&mut self, limit: Option<usize>) {
        let would = self.delete_remote.len() + self.delete_local.len();
        let Some(limit) = limit.filter(|&limit| would > limit) else { return };
        self.delete_remote.clear();
        self.delete_local.clear();
        self.failures.push(Failure { path: "--delete".into(), error: ClientError::TooManyDeletions { would, limit } });
    }

    /// Adds the mirror's removals to [`Plan::changes`].
    fn itemize_deletions(&mut self) {
        let remote = self.delete_remote.iter().map(|p| Change::deleting(p));
        let local = self
            .delete_local
            .iter()
            .map(|(root, rel)| Change::deleting(&crate::text::shown_path(&root.join(local(rel)))));
        let gone: Vec<Change> = remote.chain(local).collect();
        self.changes.extend(gone);
    }

    /// Bytes of all the jobs.
    pub fn total_size(&self) -> u64 {
        self.jobs.iter().map(|j| j.size).sum()
    }
}

/// How a copy is planned.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Copy directories, and everything below them.
    pub recursive: bool,
    /// Replace receiver files that differ even when they are not older
    /// (under [`Existing::Update`]), and symlinks and special files that
    /// hold a file's name.
    pub force: bool,
    /// Who wins when the receiver's file differs: the source (the
    /// default), the newer file (`--update`), or the receiver whatever it
    /// holds (`--ignore-existing`).
    pub existing: Existing,
    /// What to leave out of the directories copied.
    pub filter: Filter,
    /// Mirror: remove what the receiver has below a copied directory and
    /// the source lacks (what the filter leaves out is kept).
    pub delete: bool,
    /// Tell files apart by their BLAKE3 instead of size and mtime (the
    /// server reads what its hash cache lacks; this side reads its own
    /// files of the same size).
    pub checksum: bool,
    /// Uploads: follow a symlink to a file inside the tree and send the
    /// file under the link's name (`-L`), instead of copying the link as a
    /// link (the default, rsync's `-l`).
    pub copy_links: bool,
    /// Itemize each file sent in [`Plan::changes`] too (directories,
    /// links and removals always are): `--itemize-changes`.
    pub itemize: bool,
    /// A mirror that would remove more paths than this removes none, and
    /// the copy fails with [`ClientError::TooManyDeletions`] (rsync's
    /// `--max-delete`; the files are still copied).
    pub max_delete: Option<usize>,
    /// Keep what the copy replaces or a mirror removes (rsync's
    /// `--backup`, `--backup-dir`, `--suffix`); a mirror never removes the
    /// backup directory.
    pub backup: Option<BackupOptions>,
    /// What is kept besides contents, times and modes, where the receiver
    /// can: owners (by default; set only by a receiver running as root,
    /// by name unless `numeric`), extended attributes (`-X`), ACLs
    /// (`-A`).
    pub attrs: Wanted,
    /// Devices are copied too (`--devices`; made only by a download run
    /// as root: a server never makes them). FIFOs and sockets are copied
    /// always, made where the receiver runs as root.
    pub devices: bool,
}

/// Whether a download keeps the special file `attrs` describes, or why
/// not.
fn special_kept(attrs: &Attrs, devices: bool, root: bool) -> Result<(), &'static str> {
    match attrs.special {
        Some(s) if s.is_device() && !devices => Err("a device (copied with --devices)"),
        Some(_) if !root => Err("a special file (kept only by a receiver running as root)"),
        Some(_) => Ok(()),
        None => Err("not a regular file"),
    }
}

impl PlanOptions {
    /// Options as given, nothing left out.
    pub fn new(recursive: bool, force: bool) -> Self {
        PlanOptions {
            recursive,
            force,
            existing: Existing::Replace,
            filter: Filter::default(),
            delete: false,
            checksum: false,
            copy_links: false,
            itemize: false,
            max_delete: None,
            backup: None,
            attrs: Wanted { owners: true, ..Wanted::default() },
            devices: false,
        }
    }

    /// The same, keeping these attributes (see [`PlanOptions::attrs`]).
    pub fn with_attrs(mut self, attrs: Wanted) -> Self {
        self.attrs = attrs;
        self
    }

    /// The same, copying devices (see [`PlanOptions::devices`]).
    pub fn with_devices(mut self, devices: bool) -> Self {
        self.devices = devices;
        self
    }

    /// The same, keeping backups (see [`PlanOptions::backup`]).
    pub fn with_backup(mut self, backup: Option<BackupOptions>) -> Self {
        self.backup = backup;
        self
    }

    /// The same, with a limit on what a mirror removes (see
    /// [`PlanOptions::max_delete`]).
    pub fn with_max_delete(mut self, max_delete: Option<usize>) -> Self {
        self.max_delete = max_delete;
        self
    }

    /// The same, itemizing files (see [`PlanOptions::itemize`]).
    pub fn with_itemize(mut self, itemize: bool) -> Self {
        self.itemize = itemize;
        self
    }

    /// The same, following symlinks (see [`PlanOptions::copy_links`]).
    pub fn with_copy_links(mut self, copy_links: bool) -> Self {
        self.copy_links = copy_links;
        self
    }

    /// The same, with `existing` deciding who wins (see
    /// [`PlanOptions::existing`]).
    pub fn with_existing(mut self, existing: Existing) -> Self {
        self.existing = existing;
        self
    }

    fn rule(&self) -> Rule {
        Rule { existing: self.existing, force: self.force }
    }

    /// The same, comparing contents (see [`PlanOptions::checksum`]).
    pub fn with_checksum(mut self, checksum: bool) -> Self {
        self.checksum = checksum;
        self
    }

    /// The same, mirroring (see [`PlanOptions::delete`]).
    pub fn with_delete(mut self, delete: bool) -> Self {
        self.delete = delete;
        self
    }

    /// The same, leaving out what `filter` leaves out.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
}

/// A regular file's size, mtime (whole seconds) and exact mtime
/// (nanoseconds, where known); `None` for anything else.
type Held = Option<(u64, i64, Option<i64>)>;

/// How a plan decides a file the receiver holds: [`PlanOptions::existing`]
/// and [`PlanOptions::force`].
#[derive(Debug, Clone, Copy)]
struct Rule {
    existing: Existing,
    force: bool,
}

/// The BLAKE3 (hex) of a local file, read on a blocking thread; `None` if
/// it cannot be read.
async fn local_hash(path: &Path) -> Option<String> {
    let path = path.to_owned();
    hash_of(move || std::fs::File::open(path)).await
}

/// The BLAKE3 (hex) of what `open` opens, read on a blocking thread;
/// `None` if it cannot be read.
async fn hash_of(open: impl FnOnce() -> std::io::Result<std::fs::File> + Send + 'static) -> Option<String> {
    let hash = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(open()?)?;
        Ok::<_, std::io::Error>(hasher.finalize())
    });
    Some(hash.await.ok()?.ok()?.to_hex().to_string())
}

/// What a receiver does with the permission bits and attributes a copy
/// sends it, as a plan compares them with what it holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Receiver {
    /// The bits its files and directories lose (its umask); `None`: not
    /// known (a bucket root, an older server), and nothing is compared.
    umask: Option<u32>,
    /// What of owners and extended attributes it sets.
    how: crate::services::attrs::Applying,
}

impl Receiver {
    /// What of `sent` (permission bits, attributes) differs from `held`'s:
    /// the bits (as the receiver masks them), and the rest; `None` if
    /// nothing does or nothing is known.
    fn differs(&self, sent: (u32, Option<&Attrs>), held: (u32, Option<&Attrs>)) -> Option<(bool, Differs)> {
        let umask = self.umask?;
        let mode = held.0 & 0o7777 != sent.0 & 0o777 & !umask;
        let d = Differs::of(sent.1, held.1, self.how);
        (mode || d.any()).then_some((mode, d))
    }

    /// What of a receiver's owners and extended attributes is read to
    /// compare them: what it sets.
    fn reads(&self) -> Wanted {
        Wanted { owners: self.how.owners, ..self.how.wanted }
    }
}

/// What the receiver holds under a path, as a plan compares the source
/// with it.
#[derive(Debug, Clone, Default)]
struct There {
    kind: Kind,
    size: u64,
    /// Whole seconds, as the protocol's `mtime`.
    secs: i64,
    /// Exact, in nanoseconds, where known.
    ns: Option<i64>,
    mode: u32,
    /// A symlink's target.
    target: Option<String>,
    /// Which file it is, the same for all its names (hard links).
    id: Option<FileId>,
    /// Its owner and extended attributes, where read.
    attrs: Option<Box<Attrs>>,
}

/// Which file a name is, to tell hard links apart: by the first name the
/// server's listing gave it, or by device and inode locally.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileId {
    Named(String),
    Inode(u64, u64),
}

impl There {
    /// As the server's listing (or `stat`) gives it.
    fn listed(e: &Entry) -> There {
        There {
            kind: e.kind,
            size: e.size,
            secs: e.mtime,
            ns: e.mtime_ns,
            mode: e.mode,
            target: e.target.clone(),
            id: (e.kind == Kind::File).then(|| FileId::Named(e.link.clone().unwrap_or_else(|| e.name.clone()))),
            attrs: e.attrs.clone(),
        }
    }

    /// What a download's destination holds under `rel` (beneath `root`,
    /// the destination itself if empty; no symlink followed): `None` if
    /// nothing, or if a symlink or file stands where a directory on the
    /// way belongs (a directory replaces it); with what `wanted` asks of
    /// its owner and extended attributes (a file's or a directory's).
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn local_with(dirs: &LocalDirs<'_>, rel: &str, wanted: Wanted) -> Option<There> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let dir = dirs.open(parent)?;
        let dir: &OwnedFd = &dir;
        let name_os = crate::services::names::os(name);
        let name: &OsStr = &name_os;
        let st = if rel.is_empty() {
            rustix::fs::fstat(dir).ok()?
        } else {
            rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?
        };
        let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        let target = (kind == Kind::Symlink)
            .then(|| {
                let to = rustix::fs::readlinkat(dir, name, Vec::new()).ok()?;
                Some(crate::services::names::encode(to.as_bytes()).into_owned())
            })
            .flatten();
        Some(There {
            kind,
            size: st.st_size as u64,
            secs: stat_mtime(&st),
            ns: Stamp::of_stat(&st).wire_ns(),
            mode: st.st_mode as u32 & 0o7777,
            target,
            id: Some(FileId::Inode(st.st_dev as u64, st.st_ino as u64)),
            attrs: (wanted != Wanted::default() && matches!(kind, Kind::File | Kind::Dir))
                .then(|| {
                    // Names looked up once per owner, not once per file.
                    thread_local! {
                        static NAMES: std::cell::RefCell<crate::services::attrs::Names> =
                            std::cell::RefCell::new(crate::services::attrs::Names::new());
                    }
                    let at: &OsStr = if rel.is_empty() { OsStr::new(".") } else { name };
                    NAMES.with(|names| crate::services::attrs::read(dir, at, &st, wanted, &mut names.borrow_mut()))
                })
                .flatten(),
        })
    }

    /// As a plan decides a file against it: a regular file's size and
    /// times, or `None` for anything else.
    fn held(&self) -> Held {
        (self.kind == Kind::File).then_some((self.size, self.secs, self.ns))
    }
}

/// The directories of a download's destination that a plan looks in,
/// each opened once (beneath the destination, no symlink followed) and
/// kept while the plan looks, a missing one remembered as missing: a plan
/// looks at every file, and most files share their directory with the
/// one before. Nothing is made while a plan is made.
struct LocalDirs<'a> {
    root: Option<&'a Root>,
    open: Mutex<HashMap<String, Option<Arc<OwnedFd>>>>,
}

impl<'a> LocalDirs<'a> {
    /// Directories kept open at most.
    const KEPT: usize = 64;

    fn new(root: Option<&'a Root>) -> Self {
        LocalDirs { root, open: Mutex::new(HashMap::new()) }
    }

    /// The directory `parent` (`""`: the destination), if it is one.
    fn open(&self, parent: &str) -> Option<Arc<OwnedFd>> {
        let root = self.root?;
        let mut open = self.open.lock().expect("directories poisoned");
        if let Some(dir) = open.get(parent) {
            return dir.clone();
        }
        let dir = root.open_dir(parent).ok().map(Arc::new);
        if open.len() >= Self::KEPT {
            open.clear();
        }
        open.insert(parent.to_owned(), dir.clone());
        dir
    }
}

/// The entry a server's listing (sorted by name) has for `rel`.
fn listed<'a>(entries: &'a [Entry], rel: &str) -> Option<&'a Entry> {
    entries.binary_search_by(|e| e.name.as_str().cmp(rel)).ok().map(|i| &entries[i])
}

/// The directory `path` is in (`""` for one at the top).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The directories `paths` are in, each once.
fn parents<'a>(paths: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let mut out = HashSet::new();
    for path in paths {
        let parent = parent_of(path);
        if !out.contains(parent) {
            out.insert(parent.to_owned());
        }
    }
    out
}

/// What the receiver holds under a path (see [`There`]).
type Looking<'a> = &'a dyn Fn(&str) -> Option<There>;

/// Settles the links and directories a plan found (`plan.meta[first..]`)
/// against what the receiver holds (`there`, by their paths), once its
/// files are decided (`written`: the paths the copy writes): a link that is
/// there already is left out, others replace what is there; a directory
/// is set only if it is new, its mode or time differ, or something in it
/// changes (a file written or a path deleted in it, `touched`, or a link
/// or directory made). Each link made, directory created and directory
/// whose time or attributes differ (as the `receiver` compares them) is
/// itemized at `at` in the plan's changes, its path as `show` shows it.
fn settle_meta(
    (meta, changes): (&mut Vec<Meta>, &mut Vec<Change>),
    (first, at): (usize, usize),
    (there, receiver): (Looking<'_>, &Receiver),
    (written, mut touched): (&HashSet<&str>, HashSet<String>),
    show: &dyn Fn(&str) -> String,
) {
    touched.extend(parents(written.iter().copied()));
    let (mut dirs, links): (Vec<Meta>, Vec<Meta>) =
        meta.split_off(first).into_iter().partition(|m| matches!(m, Meta::Dir { .. }));
    let (mut made, mut linked, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for mut m in links {
        let here = there(m.path());
        let id = |path: &str| there(path).and_then(|t| t.id);
        let (same, code, shown) = match &m {
            Meta::Symlink { path, target, .. } => (
                here.as_ref().is_some_and(|h| h.target.as_ref() == Some(target)),
                "cL+++++++++",
                format!("{} -> {target}", show(path)),
            ),
            // The same file, unless the copy writes a new one under the
            // name it links to.
            Meta::HardLink { path, to, .. } => (
                !written.contains(to.as_str()) && id(path).is_some() && id(path) == id(to),
                "hf+++++++++",
                format!("{} => {}", show(path), show(to)),
            ),
            Meta::Special { path, mtime, .. } => (
                here.as_ref().is_some_and(|h| h.kind == Kind::Other && h.ns == mtime.wire_ns()),
                "cD+++++++++",
                show(path),
            ),
            Meta::Dir { .. } => continue,
            // Decided already, with the files.
            Meta::File { .. } => {
                kept.push(m);
                continue;
            }
        };
        if same {
            // A symlink whose own time differs only has it set.
            if let (Meta::Symlink { mtime, .. }, Some(h)) = (&m, &here) {
                if h.ns != mtime.wire_ns() {
                    kept.push(m);
                }
            }
            continue;
        }
        if let Meta::Symlink { replace, .. } | Meta::HardLink { replace, .. } = &mut m {
            *replace = here.is_some();
        }
        touched.insert(parent_of(m.path()).to_owned());
        linked.push(Change { code: code.into(), path: shown, source: m.shown() });
        kept.push(m);
    }
    // Deepest first: a directory made touches the one it is in.
    Meta::order(&mut dirs);
    for m in dirs {
        let Meta::Dir { path, mode, mtime, attrs } = &m else { continue };
        match there(path) {
            None => {
                touched.insert(parent_of(path).to_owned());
                made.push(Change::mkdir(&show(path)));
            }
            Some(h) if h.kind == Kind::Dir => {
                let time = h.ns != mtime.wire_ns();
                match receiver.umask {
                    // Compared as the receiver will set them, and itemized.
                    Some(_) => {
                        let differs = receiver.differs((*mode, attrs.as_deref()), (h.mode, h.attrs.as_deref()));
                        if time || differs.is_some() {
                            made.push(Change::attrs('d', &show(path), path, time, differs.unwrap_or_default()));
                        } else if !touched.contains(path.as_str()) {
                            continue;
                        }
                    }
                    // A receiver that does not say how it masks them.
                    None if !time && h.mode == *mode && !touched.contains(path.as_str()) => continue,
                    None => {}
                }
            }
            Some(_) => {}
        }
        kept.push(m);
    }
    made.sort_by(|a, b| a.path.cmp(&b.path));
    meta.extend(kept);
    changes.splice(at..at, made.into_iter().chain(linked));
}

/// A `stat`'s mtime in whole seconds, as [`crate::services::files::mtime`]
/// gives it for the same file (rounded towards zero before the epoch).
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
fn stat_mtime(st: &rustix::fs::Stat) -> i64 {
    let (secs, nsec) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    if secs < 0 && nsec > 0 {
        secs + 1
    } else {
        secs
    }
}

/// Why a copy could not be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A source is a directory and the copy is not recursive.
    #[error("{0}: is a directory (a recursive copy is needed)")]
    IsADirectory(String),
    /// A source could not be looked at.
    #[error("cannot copy {path}: {error}")]
    Source {
        /// The source as given.
        path: String,
        /// Why.
        error: ClientError,
    },
}

/// The last component of a remote path.
fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

/// `dir/name`, or `name` in the root.
fn join_remote(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Plans a download of the remote `sources` to `dest`, expanding
/// directories (with `recursive`) through one listing each, and creates
/// the local directories the files go to (empty ones too). A local file
/// with the same size and mtime is left out ([`Plan::unchanged`]); an
/// older one is replaced; one that differs and is not older is left out
/// ([`Plan::refused`]) unless `force`.
///
/// # Errors
///
/// [`PlanError::IsADirectory`] for a directory without `recursive`;
/// [`PlanError::Source`] if a source cannot be looked at or a local
/// directory cannot be made.
pub async fn plan_get(
    client: &mut Client,
    sources: &[String],
    dest: &Path,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    let rule = options.rule();
    let PlanOptions {
        recursive,
        filter,
        delete,
        checksum,
        itemize,
        max_delete,
        backup,
        attrs,
        devices,
        copy_links,
        ..
    } = options;
    // What this side keeps of what it receives: owners only as root.
    let wanted = Wanted { owners: attrs.owners && crate::services::attrs::is_root(), ..attrs };
    let slash = dest.as_os_str().as_encoded_bytes().ends_with(b"/");
    let mut plan = Plan::new(Direction::Get);
    plan.applying = crate::services::attrs::Applying::here(wanted);
    plan.receiver = Receiver { umask: Some(crate::services::files::umask()), how: plan.applying };
    plan.itemize = itemize;
    let into_dir = dest.is_dir() || sources.len() > 1 || slash;
    // Everything lands beneath the directory the user named: `dest`, or
    // for one file copied to a name, the directory that name is in.
    // Opened here if it is there (following it, as cp and rsync do);
    // what is below it is looked at by descriptor, no symlink followed.
    plan.dest_dir = Some(dest.to_owned());
    let mut below: Option<Option<Root>> = None;
    let mut found = Vec::new();
    for remote in sources {
        let source = |error| PlanError::Source { path: remote.clone(), error };
        // In a recursive copy, a directory's listing is asked with its
        // `stat`, at once (a file's is not used).
        let (mut entry, listed) = if recursive {
            let (listed, stat) =
                client.tree_meta_and_stat(remote, checksum, (wanted, copy_links)).await.map_err(source)?;
            (stat.map_err(source)?, Some(listed))
        } else {
            (client.stat(remote).await.map_err(source)?, None)
        };
        if checksum && entry.kind == Kind::File {
            entry = client.stat_with_hash(remote).await.map_err(source)?;
        }
        if entry.kind != Kind::Dir {
            let target = if into_dir { dest.join(local(base_name(remote))) } else { dest.to_owned() };
            // As `cp`: the directory a file goes into must be there.
            let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                let why = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
                return Err(source(ClientError::Local { path: parent.to_owned(), source: why }));
            }
            if !into_dir {
                plan.dest_dir = Some(parent.to_owned());
            }
            found.push(Job {
                remote: remote.clone(),
                local: target,
                size: entry.size,
                mtime: entry.mtime,
                mtime_ns: entry.mtime_ns,
                mode: entry.mode,
                replace: false,
                held: None,
                blake3: entry.blake3.clone(),
                attrs: None,
                owner: None,
                base: None,
            });
            continue;
        }
        let Some(listed) = listed else {
            return Err(PlanError::IsADirectory(remote.clone()));
        };
        // rsync's rule: `DIR/` copies what is in DIR, `DIR` the directory
        // itself, into the destination (created if missing).
        let target = if remote.ends_with('/') || remote.is_empty() {
            dest.to_owned()
        } else {
            dest.join(local(base_name(remote)))
        };
        // Directories first, so that empty ones are recreated too.
        let listed = listed.map_err(source)?;
        for skip in listed.skipped {
            let path = join_remote(remote, &skip.path);
            let error = ClientError::Remote { code: skip.code, message: skip.message };
            plan.failures.push(Failure { path, error });
        }
        let tree = listed.entries;
        if delete {
            let root = below.get_or_insert_with(|| open_below(dest)).as_ref();
            let target_rel = rel_below(dest, &target).unwrap_or_default();
            let there: std::collections::HashSet<&str> = tree.iter().map(|e| e.name.as_str()).collect();
            let held = root.map(|root| local_tree(root, &target_rel, &filter)).unwrap_or_default();
            let gone = extras(held.iter().map(|(n, d)| (n.as_str(), *d)), |n| there.contains(n), &filter);
            plan.delete_local.extend(gone.into_iter().map(|rel| (target.clone(), rel.to_owned())));
        }
        plan.local_dirs.push(target.clone());
        // Links and directories' attributes are set beneath the
        // destination, by their paths below it; the copied directory's
        // own too (its `stat`).
        let rel_of = |name: &str| rel_below(dest, &target.join(local(name)));
        if let Some(path) = rel_below(dest, &target) {
            let mtime = Stamp::from_wire(entry.mtime, entry.mtime_ns);
            // Its owner and attributes came with no listing: as the
            // directory's own entry lists it, from its parent, if asked.
            plan.meta.push(Meta::Dir { path, mode: entry.mode, mtime, attrs: None });
        }
        for e in tree {
            if !filter.allows(&e.name, e.kind == Kind::Dir) {
                continue;
            }
            let at = Stamp::from_wire(e.mtime, e.mtime_ns);
            match (e.kind, &e.target, &e.link) {
                (Kind::Dir, ..) => {
                    plan.local_dirs.push(target.join(local(&e.name)));
                    if let Some(path) = rel_of(&e.name) {
                        plan.meta.push(Meta::Dir { path, mode: e.mode, mtime: at, attrs: e.attrs.clone() });
                    }
                }
                // -L: what the server did not list as a file is not
                // followed (a link to a directory, out of the tree,
                // dangling), as an upload's -L leaves them out.
                (Kind::Symlink, Some(_), _) if copy_links => plan.skipped.push(format!(
                    "{}: a symlink to a directory, out of the tree or dangling (not followed)",
                    join_remote(remote, &e.name)
                )),
                (Kind::Symlink, Some(to), _) => {
                    if let Some(path) = rel_of(&e.name) {
                        let shown = crate::text::shown_path(&target.join(local(&e.name)));
                        let attrs = e.attrs.clone();
                        plan.meta.push(Meta::Symlink {
                            path,
                            target: to.clone(),
                            mtime: at,
                            replace: false,
                            shown,
                            attrs,
                        });
                    }
                }
                (Kind::File, _, Some(to)) => {
                    if let (Some(path), Some(to)) = (rel_of(&e.name), rel_of(to)) {
                        let shown = crate::text::shown_path(&target.join(local(&e.name)));
                        plan.meta.push(Meta::HardLink { path, to, replace: false, shown });
                    }
                }
                (Kind::Other, ..) => {
                    let shown = join_remote(remote, &e.name);
                    match e.attrs.clone().filter(|a| a.special.is_some()) {
                        Some(attrs) => match special_kept(&attrs, devices, crate::services::attrs::is_root()) {
                            Ok(()) => {
                                if let Some(path) = rel_of(&e.name) {
                                    let mode = e.mode;
                                    plan.meta.push(Meta::Special { path, mode, mtime: at, attrs, shown });
                                }
                            }
                            Err(why) => plan.skipped.push(format!("{shown}: {why}")),
                        },
                        None => plan.skipped.push(format!("{shown}: not a regular file")),
                    }
                }
                (Kind::Symlink, None, _) => {
                    plan.skipped.push(format!("{}: not a regular file", join_remote(remote, &e.name)))
                }
                (Kind::File, ..) => found.push(Job {
                    remote: join_remote(remote, &e.name),
                    local: target.join(local(&e.name)),
                    size: e.size,
                    mtime: e.mtime,
                    mtime_ns: e.mtime_ns,
                    mode: e.mode,
                    replace: false,
                    held: None,
                    blake3: e.blake3.clone(),
                    attrs: e.attrs.clone(),
                    owner: None,
                    base: None,
                }),
            }
        }
    }
    let dest_dir = plan.dest_dir.clone().unwrap_or_default();
    let root = match below {
        Some(root) if dest_dir == dest => root,
        _ => open_below(&dest_dir),
    };
    decide_gets(&mut plan, found, root.as_ref(), &dest_dir, rule).await;
    if let Some(backup) = backup {
        let kept = backup.local(&dest_dir);
        match kept.dir() {
            // A mirror never removes the backups.
            Some(dir) => {
                let guarded = |p: &Path| p == dir || p.starts_with(dir) || dir.starts_with(p);
                plan.delete_local.retain(|(copied, rel)| !guarded(&copied.join(local(rel))));
            }
            None => plan.delete_local.retain(|(_, rel)| !rel.ends_with(backup.suffix())),
        }
        plan.backup_local = Some(Arc::new(kept));
    }
    let written: Vec<String> = plan.jobs.iter().filter_map(|j| rel_below(&dest_dir, &j.local)).collect();
    let written: HashSet<&str> = written.iter().map(String::as_str).collect();
    let deleted: Vec<String> =
        plan.delete_local.iter().filter_map(|(copied, rel)| rel_below(&dest_dir, &copied.join(local(rel)))).collect();
    let touched = parents(deleted.iter().map(String::as_str));
    let read = plan.receiver.reads();
    let dirs = LocalDirs::new(root.as_ref());
    let there = |rel: &str| There::local_with(&dirs, rel, read);
    let show = |rel: &str| crate::text::shown_path(&dest_dir.join(local(rel)));
    let receiver = plan.receiver;
    settle_meta((&mut plan.meta, &mut plan.changes), (0, 0), (&there, &receiver), (&written, touched), &show);
    plan.limit_deletions(max_delete);
    plan.itemize_deletions();
    Ok(plan)
}

/// Decides each file a download found against what `dest_dir` (opened as
/// `root`) holds: a directory in the way fails it, an equal file (by hash
/// where both are known) leaves it out.
async fn decide_gets(plan: &mut Plan, found: Vec<Job>, root: Option<&Root>, dest_dir: &Path, rule: Rule) {
    let dirs = LocalDirs::new(root);
    for job in found {
        let rel = rel_below(dest_dir, &job.local);
        let here = rel.as_deref().and_then(|rel| There::local_with(&dirs, rel, plan.receiver.reads()));
        if here.as_ref().is_some_and(|h| h.kind == Kind::Dir) {
            // Never replaced by a file, `force` or not (as cp refuses): the
            // download could never be put in place.
            let error = ClientError::Local { path: job.local.clone(), source: local_directory() };
            plan.failures.push(Failure { path: job.remote, error });
            continue;
        }
        let held = here.as_ref().map(There::held);
        let same = match (&held, &job.blake3, root, rel.clone()) {
            (Some(Some((size, ..))), Some(theirs), Some(root), Some(rel)) if *size == job.size => {
                let root = root.clone();
                let open = move || {
                    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK;
                    Ok(std::fs::File::from(root.open_beneath(&rel, flags)?))
                };
                Some(hash_of(open).await.as_deref() == Some(theirs.as_str()))
            }
            _ => None,
        };
        if plan.decide(job, held, rule, same) {
            if let (Some(h), Some(rel)) = (here, rel) {
                plan.set_unchanged_attrs(rel, (h.mode, h.attrs.as_deref(), Stamp::from_wire(h.secs, h.ns)));
            }
        }
    }
}

/// The directory a download lands beneath, as the user named it, opened
/// to look below it without following any symlink; `None` if it is not
/// there (yet).
fn open_below(dir: &Path) -> Option<Root> {
    Root::open(dir).ok().map(Root::without_links)
}

/// What a download's destination holds below `rel` (beneath `root`, no
/// symlink followed, nothing below an excluded directory): each path
/// relative to `rel` and whether it is a directory. A link where `rel`
/// belongs holds nothing (a directory replaces it); what cannot be read is
/// left out (and so never removed).
fn local_tree(root: &Root, rel: &str, filter: &Filter) -> Vec<(String, bool)> {
    fn below(dir: &OwnedFd, prefix: &str, depth: usize, filter: &Filter, out: &mut Vec<(String, bool)>) {
        let Ok(items) = rustix::fs::Dir::read_from(dir) else { return };
        if depth > crate::services::root::MAX_PATH_DEPTH {
            return;
        }
        for item in items {
            let Ok(item) = item else { return };
            let raw = item.file_name().to_bytes();
            // A name the protocol cannot carry is never in the source.
            let name = crate::services::names::encode(raw);
            if name == "." || name == ".." {
                continue;
            }
            let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            let Ok(st) = rustix::fs::statat(dir, item.file_name(), flags) else { continue };
            let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
            let rel = join_remote(prefix, &name);
            if is_dir && filter.allows(&rel, true) {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if let Ok(sub) = rustix::fs::openat(dir, item.file_name(), flags, rustix::fs::Mode::empty()) {
                    below(&sub, &rel, depth + 1, filter, out);
                }
            }
            out.push((rel, is_dir));
        }
    }
    let mut out = Vec::new();
    if let Ok(dir) = root.open_dir(rel) {
        below(&dir, "", 0, filter, &mut out);
    }
    out
}

/// `path` relative to the directory `dir` it is below, `/`-separated
/// (empty for `dir` itself); `None` if it is not below it or not UTF-8.
fn rel_below(dir: &Path, path: &Path) -> Option<String> {
    super::job::rel_below(dir, path).ok()
}

/// What a mirror removes from the receiver: of what it holds below a
/// copied directory (`held`, each path relative to it and whether it is a
/// directory), what the source lacks (`in_source`) and the filter takes,
/// outermost first; what is below a removed directory goes with it. What
/// the filter leaves out is kept, always, and so is every directory above
/// it, as rsync keeps it ("cannot delete non-empty directory"): what else
/// is below such a directory is judged one path at a time. Partial files
/// are left alone (they are resumes).
fn extras<'a>(
    held: impl IntoIterator<Item = (&'a str, bool)>,
    in_source: impl Fn(&str) -> bool,
    filter: &Filter,
) -> Vec<&'a str> {
    use std::collections::HashSet;
    let mut held: Vec<(&str, bool)> = held.into_iter().collect();
    // A directory sorts before what is below it.
    held.sort_unstable();
    let mut keeps: HashSet<&str> = HashSet::new();
    for &(name, is_dir) in &held {
        if filter.allows(name, is_dir) {
            continue;
        }
        let mut at = name;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if !keeps.insert(parent) {
                break;
            }
            at = parent;
        }
    }
    let mut gone: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (name, is_dir) in held {
        let mut above = name.rmatch_indices('/').map(|(i, _)| &name[..i]);
        if in_source(name) || above.any(|d| gone.contains(d)) {
            continue;
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        let partial = !is_dir && is_partial_name(base.as_bytes());
        if partial || !filter.allows(name, is_dir) || (is_dir && keeps.contains(name)) {
            continue;
        }
        gone.insert(name);
        out.push(name);
    }
    out
}

/// What the server holds at `target` (a directory being uploaded to), if
/// anything, and below it.
/// With `delete`, a directory the server could not read is a failure
/// (what it holds is unknown, so the mirror removes nothing); without, it
/// only holds nothing known (a file sent into it fails on its own).
async fn held_remotely(
    client: &mut Client,
    target: &str,
    (hashed, wanted): (bool, Wanted),
    (delete, failures): (bool, &mut Vec<Failure>),
) -> Result<(Option<Entry>, Vec<Entry>, Receiver), ClientError> {
    // A named directory's own mode and time come with what is below it,
    // asked at once.
    let (listed, own) = match target {
        "" => (client.tree_meta_with(target, hashed, wanted).await, None),
        _ => {
            let (listed, own) = client.tree_meta_and_stat(target, hashed, (wanted, false)).await?;
            (listed, Some(own))
        }
    };
    match listed {
        Ok(listed) => {
            if delete {
                for skip in listed.skipped {
                    let error = ClientError::Remote { code: skip.code, message: skip.message };
                    failures.push(Failure { path: join_remote(target, &skip.path), error });
                }
            }
            // Its own mode and time (the listing gives what is below);
            // `stat` leaves out the nanoseconds of a time in whole seconds.
            let own = match own {
                None => None,
                Some(own) => {
                    let mut own = own?;
                    own.mtime_ns = Stamp::from_wire(own.mtime, own.mtime_ns).wire_ns();
                    Some(own)
                }
            };
            // What the server does with what an upload sends, as its
            // listing says.
            let how = crate::services::attrs::Applying {
                owners: listed.owners && wanted.owners,
                numeric: wanted.numeric,
                wanted,
            };
            Ok((own, listed.entries, Receiver { umask: listed.umask, how }))
        }
        Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => Ok((None, Vec::new(), Receiver::default())),
        // A key that may write and not look (a drop box): planned as if
        // nothing were there; the server refuses to replace what is.
        Err(ClientError::Remote { code: ErrorCode::PermissionDenied, .. }) if !delete => {
            Ok((None, Vec::new(), Receiver::default()))
        }
        Err(e) => Err(e),
    }
}

/// Plans an upload of the local `sources` to `dest` on the server (the
/// root when `None`), walking directories (with `recursive`) by
/// descriptor. In a tree, a symlink to a file that stays inside the tree
/// is followed (the file is sent under the link's name); a symlink leading
/// out of the tree (an absolute one included) is never followed, nor is
/// one to a directory, a dangling one or a special file: each is skipped
/// with a note in [`Plan::skipped`]. A directory that cannot be read is a
/// failure of its own ([`Plan::failures`]); the rest is planned. What the
/// server already has is compared as [`plan_get`] compares local files
/// (one listing per source directory, one `stat` per source file).
///
/// # Errors
///
/// As [`plan_get`].
pub async fn plan_put(
    client: &mut Client,
    sources: &[PathBuf],
    dest: Option<&str>,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    let rule = options.rule();
    let PlanOptions {
        recursive,
        filter,
        delete,
        checksum,
        copy_links,
        itemize,
        max_delete,
        backup,
        attrs,
        devices,
        ..
    } = options;
    // A single source's destination, stat'ed to know if it is a
    // directory: that answer is also the target's, if it is not.
    let mut dest_stat = None;
    let into_dir = match dest {
        None => true,
        Some(d) if sources.len() > 1 || d.ends_with('/') || d.is_empty() => true,
        Some(d) => {
            let stat = client.stat(d).await;
            let dir = matches!(stat, Ok(Entry { kind: Kind::Dir, .. }));
            dest_stat = Some(stat);
            dir
        }
    };
    let dest = dest.unwrap_or_default();
    let dest = dest.trim_end_matches('/');
    let mut plan = Plan::new(Direction::Put);
    (plan.wanted, plan.devices) = (attrs, devices);
    // What the server is told the entries list in full.
    plan.applying.numeric = attrs.numeric;
    plan.applying.wanted = attrs;
    // Backups keep their paths below the directory the copy lands in.
    let of = if into_dir { dest } else { dest.rsplit_once('/').map_or("", |(parent, _)| parent) };
    plan.backup_remote = backup.map(|b| b.remote(of));
    plan.copy_links = copy_links;
    plan.itemize = itemize;
    for path in sources {
        let shown = crate::text::shown_path(path);
        let source = |error| PlanError::Source { path: shown.clone(), error };
        let meta = std::fs::metadata(path).map_err(|e| source(ClientError::Local { path: path.clone(), source: e }))?;
        let name = match path.file_name() {
            None => shown.clone(),
            Some(name) => crate::services::names::encode(name.as_bytes()).into_owned(),
        };
        if !meta.is_dir() {
            let (target, known) =
                if into_dir { (join_remote(dest, &name), None) } else { (dest.to_owned(), dest_stat.take()) };
            let job = plan_one_put(client, path, &meta, (target, known), checksum).await.map_err(source)?;
            plan.decide(job.0, job.1, rule, job.2);
            continue;
        }
        if !recursive {
            return Err(PlanError::IsADirectory(shown));
        }
        // rsync's rule, as for downloads: `DIR/` copies what is in DIR,
        // `DIR` the directory itself.
        let contents = path.as_os_str().as_encoded_bytes().ends_with(b"/");
        let target = if contents { dest.to_owned() } else { join_remote(dest, &name) };
        let (held_target, entries, receiver) =
            held_remotely(client, &target, (checksum, plan.wanted), (delete, &mut plan.failures))
                .await
                .map_err(source)?;
        // Nothing there yet: nothing to compare (a server that has nothing
        // under the target says nothing of itself).
        if receiver.umask.is_some() {
            plan.receiver = receiver;
        }
        // The tree as the user named it (followed, as cp and rsync do);
        // everything below is opened beneath it.
        let root = Root::open(path).map_err(|e| source(ClientError::Local { path: path.clone(), source: e }))?;
        let base = Base::new(path.clone(), root);
        let mut found = Vec::new();
        // Only a mirror needs to know every path the source holds.
        let mut seen = delete.then(std::collections::HashSet::new);
        let first_mkdir = plan.mkdirs.len();
        let first_meta = plan.meta.len();
        let first_change = plan.changes.len();
        let first_job = plan.jobs.len();
        if !target.is_empty() {
            let at = Stamp::of_meta(&meta);
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            let (wanted, names) = (plan.wanted, &mut plan.names);
            let attrs = base.root().open_dir("").ok().and_then(|fd| {
                let st = rustix::fs::fstat(&fd).ok()?;
                crate::services::attrs::read(&fd, std::ffi::OsStr::new("."), &st, wanted, names)
            });
            plan.meta.push(Meta::Dir { path: target.clone(), mode, mtime: at, attrs });
        }
        let creates = walk(&mut plan, (&mut found, &mut seen), (&base, path, ""), &target, &filter);
        if let Some(seen) = seen {
            let held = entries.iter().map(|e| (e.name.as_str(), e.kind == Kind::Dir));
            let gone = extras(held, |n| seen.contains(n), &filter);
            plan.delete_remote.extend(gone.into_iter().map(|rel| join_remote(&target, rel)));
        }
        if !creates && !target.is_empty() {
            plan.mkdirs.push(target.clone());
        }
        // What the server holds, by path: `entries` is its listing of the
        // target, sorted by name.
        let entry =
            |path: &str| if path == target { held_target.as_ref() } else { listed(&entries, below(&target, path)) };
        let there = |path: &str| entry(path).map(There::listed);
        // A directory the server holds is not made again.
        let mkdirs = plan.mkdirs.split_off(first_mkdir);
        plan.mkdirs.extend(mkdirs.into_iter().filter(|d| !entry(d).is_some_and(|e| e.kind == Kind::Dir)));
        for job in found {
            let here = entry(&job.remote);
            let same = match here {
                Some(e) if e.kind == Kind::File && e.size == job.size && e.blake3.is_some() => {
                    let j = job.clone();
                    Some(hash_of(move || j.open_local()).await == e.blake3)
                }
                _ => None,
            };
            let held = here.map(|e| (e.kind == Kind::File).then_some((e.size, e.mtime, e.mtime_ns)));
            let remote = job.remote.clone();
            if plan.decide(job, held, rule, same) {
                if let Some(e) = here {
                    let at = Stamp::from_wire(e.mtime, e.mtime_ns);
                    plan.set_unchanged_attrs(remote, (e.mode, e.attrs.as_deref(), at));
                }
            }
        }
        let written: HashSet<&str> = plan.jobs[first_job..].iter().map(|j| j.remote.as_str()).collect();
        let touched = parents(plan.delete_remote.iter().map(String::as_str));
        let show = |p: &str| p.to_owned();
        let into = (&mut plan.meta, &mut plan.changes);
        let receiver = plan.receiver;
        settle_meta(into, (first_meta, first_change), (&there, &receiver), (&written, touched), &show);
    }
    // A mirror never removes the backups (beside: rsync's `P *~`).
    match &plan.backup_remote {
        Some(Backup { dir: Some(dir), .. }) => plan.delete_remote.retain(|p| !super::backup::guards(dir, p)),
        Some(Backup { dir: None, suffix, .. }) => plan.delete_remote.retain(|p| !p.ends_with(suffix.as_str())),
        None => {}
    }
    plan.limit_deletions(max_delete);
    plan.itemize_deletions();
    Ok(plan)
}

/// One file to upload to `target`: its job, what the receiver holds there,
/// and (with `checksum`, where sizes match) whether the contents are the
/// same.
async fn plan_one_put(
    client: &mut Client,
    path: &Path,
    meta: &std::fs::Metadata,
    (target, known): (String, Option<Result<Entry, ClientError>>),
    checksum: bool,
) -> Result<(Job, Option<Held>, Option<bool>), ClientError> {
    // The target's stat, unless it was made already.
    let stat = match known {
        Some(stat) => stat,
        None => client.stat(&target).await,
    };
    let (held, theirs) = match stat {
        Ok(e) if checksum && e.kind == Kind::File && e.size == meta.len() => {
            let hashed = client.stat_with_hash(&target).await?;
            (Some(Some((e.size, e.mtime, None))), hashed.blake3)
        }
        Ok(e) => (Some((e.kind == Kind::File).then_some((e.size, e.mtime, None))), None),
        Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => (None, None),
        // A key that may write and not look (a drop box): nothing is known
        // of what is there, and the server refuses to replace anything.
        Err(ClientError::Remote { code: ErrorCode::PermissionDenied, .. }) => (None, None),
        Err(e) => return Err(e),
    };
    let same = match theirs {
        Some(theirs) => Some(local_hash(path).await.as_deref() == Some(theirs.as_str())),
        None => None,
    };
    let mtime = crate::services::files::mtime(meta);
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
    let job = Job {
        remote: target,
        local: path.to_owned(),
        size: meta.len(),
        mtime,
        mtime_ns: Stamp::of_meta(meta).wire_ns(),
        mode,
        replace: false,
        held: None,
        blake3: None,
        attrs: None,
        owner: None,
        base: None,
    };
    Ok((job, held, same))
}

/// `remote` relative to the directory `target` it is below.
fn below<'a>(target: &str, remote: &'a str) -> &'a str {
    if target.is_empty() {
        return remote;
    }
    remote.strip_prefix(target).and_then(|r| r.strip_prefix('/')).unwrap_or(remote)
}

/// A local path from a string that carries it (a name that is not UTF-8
/// escaped, PROTOCOL.md §4.7.1).
fn local(s: &str) -> std::borrow::Cow<'_, Path> {
    crate::services::names::path(s)
}

/// Adds what is below the directory `rel` of the source tree `base`
/// (`dir`, as shown) under `remote`; returns whether anything below will
/// create `remote` on the server. Each entry is looked at without
/// following it; a symlink is resolved beneath the tree, and one leading
/// out of it is skipped, never followed. A directory that cannot be read
/// is a failure, and the walk goes on.
fn walk(
    plan: &mut Plan,
    (found, seen): (&mut Vec<Job>, &mut Option<std::collections::HashSet<String>>),
    (base, dir, rel): (&Base, &Path, &str),
    remote: &str,
    filter: &Filter,
) -> bool {
    use rustix::fs::FileType;
    let listed = base.root().open_dir(rel).and_then(|fd| {
        let mut names = Vec::new();
        for item in rustix::fs::Dir::read_from(&fd)? {
            let item = item?;
            let raw = item.file_name().to_bytes();
            if raw != b"." && raw != b".." {
                names.push(std::ffi::OsStr::from_bytes(raw).to_owned());
            }
        }
        Ok((fd, names))
    });
    let (fd, mut names) = match listed {
        Ok(listed) => listed,
        Err(source) => {
            let error = ClientError::Local { path: dir.to_owned(), source };
            plan.failures.push(Failure { path: crate::text::shown_path(dir), error });
            return false;
        }
    };
    names.sort();
    let mut creates = false;
    for os_name in names {
        let path = dir.join(&os_name);
        // Carried as the protocol carries a name that is not UTF-8.
        let encoded = crate::services::names::encode(os_name.as_bytes()).into_owned();
        let name = encoded.as_str();
        let child = join_remote(remote, name);
        let child_rel = join_remote(rel, name);
        let st = match rustix::fs::statat(&fd, &os_name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the directory was read.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                let error = ClientError::Local { path: path.clone(), source: e.into() };
                plan.failures.push(Failure { path: crate::text::shown_path(&path), error });
                continue;
            }
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        if !filter.allows(&child_rel, kind == FileType::Directory) {
            continue;
        }
        // Whatever is here, copied or skipped, is not removed by a mirror.
        if let Some(seen) = seen.as_mut() {
            seen.insert(child_rel.clone());
        }
        // A file's owner is kept as ids until a manifest names it.
        let wanted = match kind {
            FileType::RegularFile => Wanted { owners: false, ..plan.wanted },
            _ => plan.wanted,
        };
        let attrs = crate::services::attrs::read(&fd, &os_name, &st, wanted, &mut plan.names);
        if kind == FileType::Directory {
            #[allow(clippy::unnecessary_cast)] // the field types differ between targets
            let mode = st.st_mode as u32 & 0o7777;
            plan.meta.push(Meta::Dir { path: child.clone(), mode, mtime: Stamp::of_stat(&st), attrs });
            if !walk(plan, (&mut *found, &mut *seen), (base, &path, &child_rel), &child, filter) {
                plan.mkdirs.push(child);
            }
            creates = true;
            continue;
        }
        // A symlink, copied as a link: its target is data, never followed.
        if kind == FileType::Symlink && !plan.copy_links {
            match rustix::fs::readlinkat(&fd, &os_name, Vec::new()) {
                Ok(to) => {
                    let to = crate::services::names::encode(to.as_bytes()).into_owned();
                    let shown = crate::text::shown_path(&path);
                    plan.meta.push(Meta::Symlink {
                        path: child,
                        target: to,
                        mtime: Stamp::of_stat(&st),
                        replace: false,
                        shown,
                        attrs,
                    });
                    creates = true;
                }
                Err(e) => {
                    let error = ClientError::Local { path: path.clone(), source: e.into() };
                    plan.failures.push(Failure { path: crate::text::shown_path(&path), error });
                }
            }
            continue;
        }
        // Another name of a file met already: a hard link to it.
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        if kind == FileType::RegularFile && st.st_nlink as u64 > 1 {
            let key = (st.st_dev as u64, st.st_ino as u64);
            if let Some(first) = plan.inodes.get(&key) {
                let to = first.clone();
                let shown = crate::text::shown_path(&path);
                plan.meta.push(Meta::HardLink { path: child, to, replace: false, shown });
                creates = true;
                continue;
            }
            plan.inodes.insert(key, child.clone());
        }
        // -L: what a symlink leads to beneath the tree, never out of it.
        let st = if kind == FileType::Symlink {
            match base.root().open_beneath(&child_rel, OFlags::PATH).and_then(|fd| Ok(rustix::fs::fstat(&fd)?)) {
                Ok(st) => st,
                Err(e) if crate::services::root::is_escape(&e) => {
                    plan.skipped.push(format!(
                        "{}: a symlink leading out of the tree (not followed)",
                        crate::text::shown_path(&path)
                    ));
                    continue;
                }
                Err(e) => {
                    plan.skipped.push(format!("{}: {e}", crate::text::shown_path(&path)));
                    continue;
                }
            }
        } else {
            st
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                found.push(Job {
                    remote: child,
                    local: path,
                    size: st.st_size as u64,
                    mtime: stat_mtime(&st),
                    mtime_ns: Stamp::of_stat(&st).wire_ns(),
                    mode: st.st_mode as u32 & 0o777,
                    replace: false,
                    held: None,
                    blake3: None,
                    // Those of what a link (-L) leads to are not read.
                    attrs: if kind == FileType::Symlink { None } else { attrs },
                    owner: (kind != FileType::Symlink && plan.wanted.owners).then_some((st.st_uid, st.st_gid)),
                    base: Some(base.clone()),
                });
                creates = true;
            }
            FileType::Directory => plan
                .skipped
                .push(format!("{}: a symlink to a directory (not followed)", crate::text::shown_path(&path))),
            // A special file, itself (never what -L finds).
            _ if kind != FileType::Symlink => match attrs {
                // The server says whether it makes them, when it is asked.
                Some(attrs) if special_kept(&attrs, plan.devices, true).is_ok() => {
                    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
                    let mode = st.st_mode as u32 & 0o7777;
                    let shown = crate::text::shown_path(&path);
                    plan.meta.push(Meta::Special { path: child, mode, mtime: Stamp::of_stat(&st), attrs, shown });
                    creates = true;
                }
                Some(attrs) => {
                    let why = special_kept(&attrs, plan.devices, true).err().unwrap_or_default();
                    plan.skipped.push(format!("{}: {why}", crate::text::shown_path(&path)));
                }
                None => plan.skipped.push(format!("{}: not a regular file", crate::text::shown_path(&path))),
            },
            _ => plan.skipped.push(format!("{}: not a regular file", crate::text::shown_path(&path))),
        }
    }
    creates
}

/// How a copy runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Replace existing files.
    pub force: bool,
    /// Connections at once (1 to 64); the files are split over them by
    /// size.
    pub jobs: usize,
    /// Stream each connection's files with one request (PROTOCOL.md
    /// §4.6.3; the default), or copy them one request each, as a server
    /// without streamed transfers is copied to anyway.
    pub streamed: bool,
    /// When a changed file goes as a delta.
    pub delta: super::DeltaMode,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { force: false, jobs: 4, streamed: true, delta: super::DeltaMode::Auto }
    }
}

impl CopyOptions {
    /// Options with `force` and `jobs` as given, streamed.
    pub fn new(force: bool, jobs: usize) -> Self {
        CopyOptions { force, jobs, streamed: true, delta: super::DeltaMode::Auto }
    }

    /// The same, sending changed files as deltas as `delta` says.
    pub fn with_delta(mut self, delta: super::DeltaMode) -> Self {
        self.delta = delta;
        self
    }

    /// The same, streamed or one request per file (see
    /// [`CopyOptions::streamed`]).
    pub fn with_streamed(mut self, streamed: bool) -> Self {
        self.streamed = streamed;
        self
    }
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files copied.
    pub files: usize,
    /// Bytes sent over the network.
    pub sent: u64,
    /// Bytes the receiver built from its older versions (deltas), not
    /// sent.
    pub matched: u64,
    /// Bytes that were already there (resumed) and not sent again.
    pub resumed: u64,
    /// How long the copy took.
    pub elapsed: Duration,
    /// What could not be copied: the plan's own failures, then the
    /// directories and files that failed.
    pub failures: Vec<Failure>,
    /// Files left out because the receiver had them already.
    pub unchanged: usize,
    /// Paths a mirror removed from the receiver.
    pub deleted: usize,
    /// Files left out because the receiver's differ and are not older (by
    /// their source paths); `force` replaces them.
    pub refused: Vec<String>,
    /// Paths left out on purpose ([`Plan::skipped`], and
    /// [`Summary::not_kept`]).
    pub skipped: usize,
    /// Paths the receiver left out on purpose, with why (special files
    /// sent to a server that does not run as root).
    pub not_kept: Vec<String>,
    /// Symlinks (or, with `force`, files) that stood in a download's
    /// destination where a directory belongs, replaced by a directory
    /// (never followed), by their local paths.
    pub replaced: Vec<PathBuf>,
}

/// Runs `plan` over up to `options.jobs` connections to `endpoint`, each
/// worker a task of its own. Directories to create go first, over one
/// connection; then each worker takes the next file as soon as it is done
/// with one. A connection that failed, or was closed because a transfer
/// stopped half-way, is replaced by a new one for the next file.
pub async fn run(endpoint: &Endpoint, plan: Plan, options: &CopyOptions, observer: Arc<dyn Observer>) -> Summary {
    let started = Instant::now();
    let Plan {
        direction,
        mut jobs,
        mkdirs,
        local_dirs,
        skipped,
        failures,
        unchanged,
        refused,
        delete_remote,
        delete_local,
        dest_dir,
        changes: _,
        mut meta,
        inodes: _,
        copy_links: _,
        itemize: _,
        backup_remote,
        backup_local,
        applying,
        wanted: _,
        devices: _,
        mut names,
        receiver,
    } = plan;
    let refused = refused.iter().map(|j| j.source(direction)).collect();
    let mut summary =
        Summary { failures, unchanged: unchanged.len(), refused, skipped: skipped.len(), ..Summary::default() };
    summary.failures.extend(make_dirs(endpoint, &mkdirs).await);
    let mut dest = None;
    if let (Direction::Get, Some(dir)) = (direction, &dest_dir) {
        match open_dest(dir, &local_dirs, options.force) {
            Ok((root, failures, replaced)) => {
                summary.failures.extend(failures);
                summary.replaced = replaced;
                let base = Base::new(dir.clone(), root);
                for job in &mut jobs {
                    job.base = Some(base.clone());
                }
                dest = Some(base);
            }
            Err(failure) => {
                // Nowhere to write: every file would fail the same way.
                summary.failures.push(failure);
                summary.elapsed = started.elapsed();
                return summary;
            }
        }
    }
    let on_this_machine = endpoint.is_local().await;
    let deltas_on = match options.delta {
        super::DeltaMode::Never => false,
        super::DeltaMode::Always => true,
        super::DeltaMode::Auto => !on_this_machine,
    };
    let workers = options.jobs.clamp(1, 64).min(jobs.len().max(1));
    let workers = if on_this_machine { workers } else { workers.min(far_lanes(&jobs, deltas_on)) };
    let totals = Arc::new(Mutex::new(Summary::default()));
    let mut tasks = tokio::task::JoinSet::new();
    // A copy of one file gains nothing from a manifest: it goes as a
    // single `get` or `put` (the same checks, resume and commit, one round
    // trip less).
    // Owners and extended attributes travel in manifests only.
    let streamed = options.streamed && (jobs.len() > 1 || jobs.iter().any(|j| j.attrs.is_some() || j.owner.is_some()));
    // A tree's large changed files go one by one as deltas, out of the
    // stream, where a worker's connection wants deltas: their owners and
    // attributes are set once they are in place, as a file's left
    // unchanged are (the stream would have carried them).
    let deltas = streamed && deltas_on;
    if deltas {
        for job in jobs.iter().filter(|j| goes_as_delta(j)) {
            meta.extend(attrs_after_delta(direction, job, &receiver, &mut names));
        }
    }
    if !jobs.is_empty() {
        for share in split(jobs, workers) {
            let (endpoint, totals, observer) = (endpoint.clone(), totals.clone(), observer.clone());
            let mut how =
                TransferOptions::force(options.force).with_backups(backup_remote.clone(), backup_local.clone());
            how.applying = applying;
            how.delta = options.delta;
            tasks.spawn(async move {
                share_worker(&endpoint, direction, share, (&how, streamed, deltas), &*observer, &totals).await
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            let error = ClientError::Local { path: PathBuf::new(), source: std::io::Error::other(e) };
            summary.failures.push(Failure { path: "(a copy worker)".into(), error });
        }
    }
    let done = std::mem::take(&mut *totals.lock().expect("totals"));
    summary.files = done.files;
    summary.sent = done.sent;
    summary.resumed = done.resumed;
    summary.matched = done.matched;
    summary.failures.extend(done.failures);
    summary.unchanged += done.unchanged;
    summary.refused.extend(done.refused);
    // A mirror removes only once every file is across: after a failure
    // the receiver keeps what it has (as rsync skips deletions after an
    // I/O error).
    if summary.failures.is_empty() {
        let backup = backup_remote.as_ref();
        summary.deleted += delete_remotely(endpoint, &delete_remote, backup, &mut summary.failures).await;
        for (root, rel) in &delete_local {
            match delete_locally(dest.as_ref(), root, rel, backup_local.as_deref()) {
                Ok(()) => summary.deleted += 1,
                Err(source) => {
                    let path = root.join(local(rel));
                    summary.failures.push(Failure {
                        path: crate::text::shown_path(&path),
                        error: ClientError::Local { path, source },
                    });
                }
            }
        }
    }
    // A file that failed is reported once: not again by the owner and
    // attributes queued for it (a tree's delta sent by itself).
    if !summary.failures.is_empty() {
        let failed: HashSet<&str> = summary.failures.iter().map(|f| f.path.as_str()).collect();
        meta.retain(|m| !matches!(m, Meta::File { shown, .. } if failed.contains(shown.as_str())));
    }
    // Links, then directories' modes and times, deepest first: once every
    // file is in place, so that nothing changes a directory after.
    if !meta.is_empty() {
        Meta::order(&mut meta);
        let failed = match direction {
            Direction::Put => {
                let (failed, not_kept): (Vec<Failure>, Vec<Failure>) =
                    apply_remotely(endpoint, &meta, backup_remote.as_ref(), applying.wanted)
                        .await
                        .into_iter()
                        .partition(|f| !matches!(f.error, ClientError::NotKept(_)));
                summary.skipped += not_kept.len();
                summary.not_kept.extend(not_kept.into_iter().map(|f| format!("{}: {}", f.path, f.error)));
                failed
            }
            Direction::Get => match &dest {
                Some(dest) => apply_locally(dest, &meta, backup_local.as_deref(), applying),
                None => Vec::new(),
            },
        };
        summary.failures.extend(failed);
    }
    summary.elapsed = started.elapsed();
    summary
}

/// Makes the links and sets the directories' attributes of an upload on
/// the server, over one connection.
async fn apply_remotely(
    endpoint: &Endpoint,
    meta: &[Meta],
    backup: Option<&crate::proto::Backup>,
    covers: Wanted,
) -> Vec<Failure> {
    let entries: Vec<crate::proto::ManifestEntry> = meta.iter().map(Meta::entry).collect();
    let applied = match endpoint.connect().await {
        Ok(mut client) => super::stream::put_meta(&mut client, &entries, backup, covers).await,
        Err(e) => Err(e),
    };
    match applied {
        Ok(outcomes) => {
            meta.iter().zip(outcomes).filter_map(|(m, o)| o.map(|error| Failure { path: m.shown(), error })).collect()
        }
        Err(e) => {
            let message = e.to_string();
            let mut failures = vec![Failure { path: meta[0].shown(), error: e }];
            for m in &meta[1..] {
                let error = ClientError::Wire(crate::wire::Error::Io(std::io::Error::other(message.clone())));
                failures.push(Failure { path: m.shown(), error });
            }
            failures
        }
    }
}

/// Makes the links and sets the directories' attributes of a download
/// beneath its destination, by descriptor: no symlink on the way is
/// followed, and a link is made under a temporary name and renamed into
/// place.
fn apply_locally(
    dest: &Base,
    meta: &[Meta],
    backup: Option<&LocalBackup>,
    how: crate::services::attrs::Applying,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    let mut names = crate::services::attrs::Names::new();
    for m in meta {
        if let Err(source) = apply_one_locally(dest, m, backup, (how, &mut names)) {
            let path = dest.path().join(local(m.path()));
            failures.push(Failure { path: m.shown(), error: ClientError::Local { path, source } });
        }
    }
    failures
}

fn apply_one_locally(
    dest: &Base,
    m: &Meta,
    backup: Option<&LocalBackup>,
    (how, names): (crate::services::attrs::Applying, &mut crate::services::attrs::Names),
) -> std::io::Result<()> {
    use crate::services::attrs;
    use crate::services::files::{dir_attrs, file_attrs_at, hard_link_at, special_at, symlink_at};
    let root = dest.root();
    let (parent, name) = m.path().rsplit_once('/').unwrap_or(("", m.path()));
    let dir = root.open_dir(parent)?;
    let name_os = crate::services::names::os(name);
    let name: &OsStr = &name_os;
    let local = dest.path().join(local(m.path()));
    let mut keep = || match backup {
        Some(backup) => backup.keep(&local, (&dir, name), false).map(drop),
        None => Ok(()),
    };
    // The plan saw what is there: the source wins over it.
    match m {
        Meta::Symlink { target, mtime, attrs, .. } => {
            symlink_at(&dir, name, target, *mtime, (true, &mut keep))?;
            match attrs {
                Some(attrs) => attrs::apply_owner_at(&dir, name, attrs, how, names),
                None => Ok(()),
            }
        }
        Meta::Special { mode, mtime, attrs, .. } => {
            let Some(special) = attrs.special else { return Ok(()) };
            special_at(&dir, name, (special, attrs, how), (*mode, *mtime), (true, &mut keep)).map(drop)
        }
        Meta::File { size, mode, mtime, attrs, .. } => {
            file_attrs_at(&dir, name, (*size, *mtime), *mode, (attrs.as_deref(), how), names).map(drop)
        }
        Meta::HardLink { to, .. } => {
            let (to_parent, to_name) = to.rsplit_once('/').unwrap_or(("", to));
            let from = root.open_dir(to_parent)?;
            hard_link_at((&from, &crate::services::names::os(to_name)), &dir, name, (true, &mut keep)).map(drop)
        }
        // The destination itself, or a directory below it, never through
        // a link.
        Meta::Dir { path, mode, mtime, attrs } => {
            let fd = if path.is_empty() {
                dir
            } else {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                rustix::fs::openat(&dir, name, flags, rustix::fs::Mode::empty())?
            };
            if let Some(attrs) = attrs {
                attrs::apply(&fd, attrs, how, names)?;
            }
            dir_attrs(&fd, *mode, *mtime).map(drop)
        }
    }
}

/// Removes server paths over one connection; returns how many were there.
async fn delete_remotely(
    endpoint: &Endpoint,
    paths: &[String],
    backup: Option<&crate::proto::Backup>,
    failures: &mut Vec<Failure>,
) -> usize {
    if paths.is_empty() {
        return 0;
    }
    let mut client = match endpoint.connect().await {
        Ok(client) => client,
        Err(error) => {
            failures.push(Failure { path: paths.join(", "), error });
            return 0;
        }
    };
    let mut removed = 0;
    let mut in_step = true;
    for path in paths {
        let done = match backup {
            Some(backup) => move_aside(&mut client, path, backup).await,
            None => client.remove(path).await,
        };
        match done {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(error) => {
                // A refusal is the whole answer; any other failure may
                // leave one half read.
                in_step &= matches!(error, ClientError::Remote { .. });
                failures.push(Failure { path: path.clone(), error });
            }
        }
    }
    if in_step && !client.is_closed() {
        endpoint.keep_spare(client, Instant::now());
    }
    removed
}

/// What a mirror that keeps backups does instead of removing `path` on
/// the server: renames it (a directory with all below it) to its backup,
/// made as `backup` says, with `rename` and `mkdir`, so that any server
/// that has them keeps it (an older one included). An older backup there
/// is replaced (a directory removed first). Whether anything was there.
async fn move_aside(client: &mut Client, path: &str, backup: &crate::proto::Backup) -> Result<bool, ClientError> {
    let to = backup.path_for(path).map_err(|why| ClientError::Local {
        path: PathBuf::from(path),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    })?;
    if let Some((parent, _)) = to.rsplit_once('/') {
        client.mkdir(parent).await?;
    }
    match client.rename(path, &to, true).await {
        Ok(()) => Ok(true),
        Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => Ok(false),
        // A directory, or a non-empty older backup directory, there.
        Err(ClientError::Remote { code: ErrorCode::Exists | ErrorCode::IsADirectory, .. }) => {
            client.remove(&to).await?;
            client.rename(path, &to, true).await.map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// Opens a download's destination `dir` as the user named it (created
/// with its parents first if a tree lands in it and it is missing, as
/// `mkdir -p`; followed, as `cp` and `rsync` follow it), then makes each of
/// `local_dirs` beneath it by descriptor, a symlink where a directory
/// belongs replaced by a directory, never followed (so is a file with
/// `force`). Returns the destination, the directories that could not be
/// made, and what was replaced.
fn open_dest(dir: &Path, local_dirs: &[PathBuf], force: bool) -> Result<(Root, Vec<Failure>, Vec<PathBuf>), Failure> {
    let local = |path: &Path, source| Failure {
        path: crate::text::shown_path(path),
        error: ClientError::Local { path: path.to_owned(), source },
    };
    if !local_dirs.is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| local(dir, e))?;
    }
    let root = Root::open(dir).map_err(|e| local(dir, e))?.without_links();
    let (mut failures, mut replaced) = (Vec::new(), Vec::new());
    for made in local_dirs {
        let Some(rel) = rel_below(dir, made) else {
            failures.push(local(made, std::io::Error::other("not below the destination")));
            continue;
        };
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let mut now = Vec::new();
        if let Err(e) = root.make_dirs_replacing(&parts, force, &mut now) {
            failures.push(local(made, e));
        }
        replaced.extend(now.iter().map(|r| dir.join(crate::services::names::path(r))));
    }
    Ok((root, failures, replaced))
}

/// Removes `rel` below the local directory `copied` of a download's
/// destination `dest`, by descriptor: no symlink on the way is followed,
/// one at `rel` is removed as a link.
fn delete_locally(dest: Option<&Base>, copied: &Path, rel: &str, backup: Option<&LocalBackup>) -> std::io::Result<()> {
    let dest = dest.ok_or_else(|| std::io::Error::other("no destination"))?;
    let copied = rel_below(dest.path(), copied).ok_or_else(|| std::io::Error::other("not below the destination"))?;
    let path = join_remote(&copied, rel);
    let Some(backup) = backup else { return dest.root().remove(&path) };
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
    let dir = dest.root().open_dir(parent)?;
    backup.keep(&dest.path().join(local(&path)), (&dir, &crate::services::names::os(name)), true).map(drop)
}

/// Creates remote directories no file creates, over one connection.
async fn make_dirs(endpoint: &Endpoint, dirs: &[String]) -> Vec<Failure> {
    let mut failures = Vec::new();
    if dirs.is_empty() {
        return failures;
    }
    let mut client = match endpoint.connect().await {
        Ok(client) => client,
        Err(error) => {
            failures.push(Failure { path: dirs.join(", "), error });
            return failures;
        }
    };
    match client.mkdirs(dirs).await {
        Ok(outcomes) => {
            // Each refusal is its own answer: the connection is in step,
            // and goes on to the copy.
            for (dir, outcome) in dirs.iter().zip(outcomes) {
                if let Err(error) = outcome {
                    failures.push(Failure { path: dir.clone(), error });
                }
            }
            if !client.is_closed() {
                endpoint.keep_spare(client, Instant::now());
            }
        }
        Err(error) => failures.push(Failure { path: dirs.join(", "), error }),
    }
    failures
}

/// Bytes of files for each connection a copy over a far link (not this
/// machine) opens beyond its first, up to `-j` ([`run`]).
pub const FAR_LANE_BYTES: u64 = 4 << 20;

/// How many connections a copy over a far link (not this machine) opens
/// at most: one, and one more for each whole [`FAR_LANE_BYTES`] of its
/// files. A connection costs round trips before its first byte (its
/// handshake, its request), which a few small files never win back on a
/// far link, where one connection carries them at the link's rate; a
/// large copy still spreads over several. A small file with an older
/// version to send a delta against inside the tree's stream (`deltas`,
/// under [`TREE_DELTA_MIN`]) counts for nothing: it moves what changed.
/// A large one counts whole: it goes by itself, and its reading and
/// hashing are a connection's work whatever crosses the link. On this
/// machine, files are sent whole and the connections share the hashing
/// among the cores: every one is used.
fn far_lanes(jobs: &[Job], deltas: bool) -> usize {
    let small_delta = |j: &Job| {
        deltas && j.size < TREE_DELTA_MIN && j.held.is_some_and(|held| crate::session::delta::worth(held, j.size))
    };
    let whole = jobs.iter().filter(|j| !small_delta(j)).fold(0u64, |sum, j| sum.saturating_add(j.size));
    usize::try_from(whole / FAR_LANE_BYTES).unwrap_or(usize::MAX).saturating_add(1)
}

/// Splits the jobs over `n` connections by size, each file going to the
/// share with the fewest bytes so far (largest first); each share keeps
/// the plan's order, so that a directory's files go together.
fn split(jobs: Vec<Job>, n: usize) -> Vec<Vec<(usize, Job)>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].size));
    let mut load = vec![(0u64, 0usize); n];
    let mut owner = vec![0; jobs.len()];
    for i in order {
        let (k, _) = load.iter().enumerate().min_by_key(|(_, l)| **l).expect("n is at least 1");
        load[k].0 += jobs[i].size.max(1);
        load[k].1 += 1;
        owner[i] = k;
    }
    let mut shares: Vec<Vec<(usize, Job)>> = (0..n).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        shares[owner[i]].push((i, job));
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// One connection's share of a copy: streamed with one request, or, from
/// a server that has no streamed transfer (or when asked), one request
/// per file.
/// Files of a tree at least this large that the receiver holds an older
/// version of are sent as deltas, each by itself (PROTOCOL.md §4.6.6),
/// where the connection wants deltas; smaller ones go as deltas inside
/// the stream (§4.6.6.1), where a file costs no round trip of its own.
pub const TREE_DELTA_MIN: u64 = crate::session::delta::TREE_DELTA_MAX;

/// Whether a tree's file goes by itself as a delta (if its connection
/// wants deltas).
fn goes_as_delta(job: &Job) -> bool {
    job.size >= TREE_DELTA_MIN && job.held.is_some_and(|held| crate::session::delta::worth(held, job.size))
}

/// The owner and attributes a file sent as a delta out of a tree's
/// stream is given once it is in place (the stream would have carried
/// them): a [`Meta::File`] for the file as the copy leaves it, `None` if
/// the copy keeps none.
fn attrs_after_delta(
    direction: Direction,
    job: &Job,
    receiver: &Receiver,
    names: &mut crate::services::attrs::Names,
) -> Option<Meta> {
    let attrs = match (direction, job.owner) {
        (Direction::Put, Some((uid, gid))) if receiver.how.owners => {
            let mut a = job.attrs.as_deref().cloned().unwrap_or_default();
            (a.uid, a.gid) = (Some(uid), Some(gid));
            if !receiver.how.numeric {
                (a.user, a.group) = names.names(uid, gid);
            }
            Some(Box::new(a))
        }
        _ => job.attrs.clone(),
    }?;
    let path = match direction {
        Direction::Put => job.remote.clone(),
        Direction::Get => job.base.as_ref()?.rel(&job.local).ok()?,
    };
    let mtime = Stamp::from_wire(job.mtime, job.mtime_ns);
    Some(Meta::File { path, size: job.size, mode: job.mode, mtime, attrs: Some(attrs), shown: job.source(direction) })
}

/// A worker's files, each with its place in the plan.
type Share = Vec<(usize, Job)>;

async fn share_worker(
    endpoint: &Endpoint,
    direction: Direction,
    share: Share,
    (how, streamed, deltas): (&TransferOptions, bool, bool),
    observer: &dyn Observer,
    totals: &Mutex<Summary>,
) {
    let mut client = match endpoint.connect().await {
        Ok(client) => Some(client),
        Err(e) => {
            let mut t = totals.lock().expect("totals");
            let message = e.to_string();
            t.failures.push(Failure { path: share[0].1.source(direction), error: e });
            for (_, job) in &share[1..] {
                let error = ClientError::Wire(crate::wire::Error::Io(std::io::Error::other(message.clone())));
                t.failures.push(Failure { path: job.source(direction), error });
            }
            return;
        }
    };
    // Large changed files by themselves as deltas, after the stream.
    let deltas = deltas && client.as_ref().is_some_and(|c| c.wants_delta(how.delta));
    let (by_itself, share): (Share, Share) = share.into_iter().partition(|(_, job)| deltas && goes_as_delta(job));
    let (mut ids, mut jobs): (Vec<usize>, Vec<Job>) = share.into_iter().unzip();
    if streamed && !jobs.is_empty() {
        let c = client.as_mut().expect("connected");
        let mut outcome = Err(ClientError::Closed);
        // A file found busy (another upload of it was under way, e.g. the
        // server still committing the batch of a client just killed) is
        // tried again, in a second request of its own; so is one whose
        // delta did not verify (its older version changed meanwhile),
        // then whole.
        let mut in_stream = deltas;
        for attempt in 0..3 {
            let with = (how, in_stream);
            outcome = match direction {
                Direction::Get => super::stream::get(c, &jobs, with, observer, &ids).await,
                Direction::Put => super::stream::put(c, &jobs, with, observer, &ids).await,
            };
            let Ok(outcomes) = &mut outcome else { break };
            let again = |e: &ClientError| match e {
                ClientError::Remote { code: ErrorCode::Busy, .. } => true,
                ClientError::Remote { code: ErrorCode::ChecksumMismatch, .. }
                | ClientError::ChecksumMismatch { .. } => in_stream,
                _ => false,
            };
            if attempt == 2 || !outcomes.failed.iter().any(|(_, e)| again(e)) {
                break;
            }
            let (again, failed): (Vec<_>, Vec<_>) =
                std::mem::take(&mut outcomes.failed).into_iter().partition(|(_, e)| again(e));
            in_stream = false;
            outcomes.failed = failed;
            settle(&mut totals.lock().expect("totals"), &jobs, direction, std::mem::take(outcomes));
            let keep: Vec<usize> = again.into_iter().map(|(i, _)| i).collect();
            ids = keep.iter().map(|&i| ids[i]).collect();
            jobs = keep.into_iter().map(|i| jobs[i].clone()).collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match outcome {
            Ok(outcomes) => {
                settle(&mut totals.lock().expect("totals"), &jobs, direction, outcomes);
                (ids, jobs) = (Vec::new(), Vec::new());
            }
            // An older server: file by file, below.
            Err(ClientError::Remote { code: ErrorCode::UnknownType, .. }) => {}
            Err(e) => {
                let mut t = totals.lock().expect("totals");
                let message = e.to_string();
                for job in jobs.iter().chain(by_itself.iter().map(|(_, j)| j)) {
                    let error = ClientError::Wire(crate::wire::Error::Io(std::io::Error::other(message.clone())));
                    t.failures.push(Failure { path: job.source(direction), error });
                }
                return;
            }
        }
    }
    let (more_ids, more_jobs): (Vec<usize>, Vec<Job>) = by_itself.into_iter().unzip();
    ids.extend(more_ids);
    jobs.extend(more_jobs);
    for (id, job) in ids.into_iter().zip(&jobs) {
        observer.started(id, job);
        let mut outcome = Err(ClientError::Closed);
        // A file found busy is tried again, as the stream's are.
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome =
                copy_one(endpoint, &mut client, direction, job, how, &mut |p| observer.progress(id, job, p)).await;
            if !matches!(outcome, Err(ClientError::Remote { code: ErrorCode::Busy, .. })) {
                break;
            }
        }
        observer.finished(id, job, &outcome);
        if let Err(error) = &outcome {
            // A connection that failed, or was closed because a
            // transfer stopped half-way, is not reused.
            let in_step = matches!(error, ClientError::Remote { .. } | ClientError::LocalExists(_));
            if !in_step || client.as_ref().is_some_and(Client::is_closed) {
                client = None;
            }
        }
        tally(&mut totals.lock().expect("totals"), job, direction, outcome);
    }
    // Handed back, in step: what comes after the copy (deletions, links
    // and directories' times) or a worker that lost its connection takes
    // it instead of opening one.
    if let Some(c) = client.filter(|c| !c.is_closed()) {
        endpoint.keep_spare(c, Instant::now());
    }
}

/// Adds a streamed request's outcomes to the totals.
fn settle(t: &mut Summary, jobs: &[Job], direction: Direction, o: super::conversation::Outcomes) {
    t.files += o.files;
    t.sent += o.sent;
    t.resumed += o.resumed;
    t.matched += o.matched;
    t.unchanged += o.unchanged;
    t.refused.extend(o.refused.iter().map(|&i| jobs[i].source(direction)));
    for (i, error) in o.failed {
        t.failures.push(Failure { path: jobs[i].source(direction), error });
    }
}

/// Adds one file's outcome to the totals.
fn tally(t: &mut Summary, job: &Job, direction: Direction, outcome: Result<Transfer, ClientError>) {
    match outcome {
        Ok(done) => {
            t.files += 1;
            t.sent += (done.size - done.resumed).saturating_sub(done.matched);
            t.resumed += done.resumed;
            t.matched += done.matched;
        }
        Err(error) => t.failures.push(Failure { path: job.source(direction), error }),
    }
}

async fn copy_one(
    endpoint: &Endpoint,
    client: &mut Option<Client>,
    direction: Direction,
    job: &Job,
    how: &TransferOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Transfer, ClientError> {
    if client.is_none() {
        *client = Some(endpoint.connect().await?);
    }
    let c = client.as_mut().expect("connected");
    // A delta's other length: the receiver's file for an upload, the
    // source's for a download.
    let other_len = match direction {
        // Planned: nothing there (or no regular file) is no basis.
        Direction::Put => Some(job.held.unwrap_or(0)),
        Direction::Get => Some(job.size),
    };
    let options = TransferOptions { force: how.force || job.replace, other_len, ..how.clone() };
    match direction {
        Direction::Get => {
            let j = job.clone();
            c.get_into(&job.remote, &job.local, move || j.local_parent(), &options, progress).await
        }
        Direction::Put => {
            let file = job.open_local().map_err(|source| ClientError::Local { path: job.local.clone(), source })?;
            c.put_file(file, &job.local, &job.remote, &options, progress).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_copy_opens_a_connection_for_each_few_mib_it_sends_whole() {
        let job = |size: u64, held: Option<u64>| Job {
            remote: String::new(),
            local: PathBuf::new(),
            size,
            mtime: 0,
            mtime_ns: None,
            mode: 0o644,
            replace: held.is_some(),
            held,
            blake3: None,
            attrs: None,
            owner: None,
            base: None,
        };
        // A few small files: one connection.
        assert_eq!(far_lanes(&[job(2_000, None), job(2_000, None)], true), 1);
        // Twenty changed files of half a MiB each, with older versions:
        // deltas in the stream, one connection; sent whole, 10 MiB, three.
        let changed: Vec<Job> = (0..20).map(|_| job(512 << 10, Some(512 << 10))).collect();
        assert_eq!(far_lanes(&changed, true), 1);
        assert_eq!(far_lanes(&changed, false), 3);
        // Large changed files go as deltas by themselves, each a
        // connection's work: they count whole.
        let large: Vec<Job> = (0..8).map(|_| job(1 << 30, Some(1 << 30))).collect();
        assert_eq!(far_lanes(&large, true), 2049);
        // An older version more than four times as long is no basis.
        let no_basis: Vec<Job> = (0..20).map(|_| job(512 << 10, Some(4 << 20))).collect();
        assert_eq!(far_lanes(&no_basis, true), 3);
        assert_eq!(far_lanes(&[job(8 << 20, Some(40 << 20))], true), 3);
        // Exactly 4 MiB: one whole, so two.
        assert_eq!(far_lanes(&[job(4 << 20, None)], true), 2);
        assert_eq!(far_lanes(&[job(u64::MAX, None), job(u64::MAX, None)], true), (u64::MAX / (4 << 20)) as usize + 1);
        assert_eq!(far_lanes(&[], true), 1);
    }

    fn gone(held: &[(&'static str, bool)], source: &[&str], exclude: &[&str]) -> Vec<&'static str> {
        let filter = Filter::new(exclude, &[]).unwrap();
        extras(held.iter().copied(), |n| source.contains(&n), &filter)
    }

    #[test]
    fn a_mirror_keeps_what_is_excluded_and_the_directories_above_it() {
        let held = [
            ("keep.txt", false),
            ("old", true),
            ("old/keep.log", false),
            ("old/stale.txt", false),
            ("old/deep", true),
            ("old/deep/x", false),
            ("gone", true),
            ("gone/y", false),
            ("stale.txt", false),
            (".a.fwpart", false),
        ];
        assert_eq!(gone(&held, &["keep.txt"], &[]), ["gone", "old", "stale.txt"], "whole directories, outermost");
        assert_eq!(
            gone(&held, &["keep.txt"], &["keep.log"]),
            ["gone", "old/deep", "old/stale.txt", "stale.txt"],
            "old stays for its excluded file; the rest of it goes one by one"
        );
        assert_eq!(gone(&held, &["keep.txt"], &["old/deep/"]), ["gone", "old/keep.log", "old/stale.txt", "stale.txt"]);
        assert_eq!(gone(&held, &["keep.txt", "old", "old/keep.log"], &["*.txt"]), ["gone", "old/deep"]);
    }
}
