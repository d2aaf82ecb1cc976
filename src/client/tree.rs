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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::Client;
use super::error::ClientError;
use super::files::{local_directory, Progress, Transfer, TransferOptions};
use super::filter::Filter;
pub use super::job::{Direction, Job, Observer, Quiet};
use crate::auth::Key;
use crate::proto::{Entry, ErrorCode, Kind};
use crate::services::root::is_partial_name;
pub use crate::session::SharedReads;

/// Where a copy's connections go: the server's address and the key, if
/// any. Every connection of a copy is opened from it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: String,
    key: Option<Key>,
    throttle: Option<crate::transport::Throttle>,
    connect_timeout: Option<Duration>,
    shared_reads: Option<Arc<SharedReads>>,
}

impl Endpoint {
    /// The server at `addr` (as [`Client::connect`] takes it), with `key`.
    pub fn new(addr: impl Into<String>, key: Option<Key>) -> Self {
        Endpoint { addr: addr.into(), key, throttle: None, connect_timeout: None, shared_reads: None }
    }

    /// Every connection opened from here must be connected, and its
    /// handshake (TLS and the key proof) done, within `limit`, or fails
    /// with [`ClientError::ConnectTimeout`] (`--connect-timeout`). Without
    /// one, the TCP connect waits as long as the system does and the
    /// handshake [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT).
    pub fn with_connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
        self
    }

    /// Every connection opened from here shares `throttle`'s bandwidth
    /// budget (`--bwlimit`).
    pub fn with_bwlimit(mut self, throttle: crate::transport::Throttle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Uploads over connections opened from here share their reads of
    /// each local file with every other copy given the same `reads` (a
    /// fan-out `put`): the copies sending a file at once read each chunk
    /// of it once between them. Bodies of 4 MiB or more only; such a body
    /// then goes from memory rather than with `sendfile(2)`.
    pub fn with_shared_reads(mut self, reads: Arc<SharedReads>) -> Self {
        self.shared_reads = Some(reads);
        self
    }

    /// The server's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens one connection.
    ///
    /// # Errors
    ///
    /// As [`Client::connect_with`], and [`ClientError::ConnectTimeout`]
    /// past the connect timeout.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let connecting = Client::connect_limited(&self.addr, self.key.as_ref(), self.throttle.as_ref());
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
    /// (uploads).
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
    /// Left out on purpose, with why: special files, symlinks to
    /// directories, dangling symlinks.
    pub skipped: Vec<String>,
    /// Left out, and the copy fails: names the protocol cannot carry.
    pub failures: Vec<Failure>,
    /// Left out because the receiver has them already: the same size and
    /// modification time (rsync's quick check).
    pub unchanged: Vec<Job>,
    /// Left out because the receiver's file differs and is not older than
    /// the source's; replaced only with `force`.
    pub refused: Vec<Job>,
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
            skipped: Vec::new(),
            failures: Vec::new(),
            unchanged: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Sorts a planned job by what the receiver holds under its name
    /// (`None`: nothing, or not a regular file: size and mtime of one).
    /// `same`, when known, says whether the contents are the same (by
    /// BLAKE3, for `checksum`); otherwise the same size and mtime mean
    /// the same file.
    fn decide(&mut self, mut job: Job, receiver: Option<Option<(u64, i64)>>, force: bool, same: Option<bool>) {
        let unchanged = match (&receiver, same) {
            (Some(Some(_)), Some(same)) => same,
            (Some(Some(held)), None) => *held == (job.size, job.mtime),
            _ => false,
        };
        match receiver {
            None => self.jobs.push(job),
            Some(Some(_)) if unchanged => self.unchanged.push(job),
            Some(Some((_, mtime))) if force || mtime < job.mtime => {
                job.replace = true;
                self.jobs.push(job);
            }
            Some(None) if force => {
                job.replace = true;
                self.jobs.push(job);
            }
            Some(_) => self.refused.push(job),
        }
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
    /// Replace receiver files that differ even when they are not older.
    pub force: bool,
    /// What to leave out of the directories copied.
    pub filter: Filter,
    /// Mirror: remove what the receiver has below a copied directory and
    /// the source lacks (what the filter leaves out is kept).
    pub delete: bool,
    /// Tell files apart by their BLAKE3 instead of size and mtime (the
    /// server reads what its hash cache lacks; this side reads its own
    /// files of the same size).
    pub checksum: bool,
}

impl PlanOptions {
    /// Options as given, nothing left out.
    pub fn new(recursive: bool, force: bool) -> Self {
        PlanOptions { recursive, force, filter: Filter::default(), delete: false, checksum: false }
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

/// A regular file's size and mtime; `None` for anything else.
type Held = Option<(u64, i64)>;

/// The BLAKE3 (hex) of a local file, read on a blocking thread; `None` if
/// it cannot be read.
async fn local_hash(path: &Path) -> Option<String> {
    let path = path.to_owned();
    let hash = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        Ok::<_, std::io::Error>(hasher.finalize())
    });
    Some(hash.await.ok()?.ok()?.to_hex().to_string())
}

/// What the receiver has under a name: `None` if nothing, `Some(None)` if
/// something that is not a regular file, else its size and mtime.
fn held_locally(path: &Path) -> Option<Option<(u64, i64)>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some(meta.is_file().then(|| (meta.len(), crate::services::files::mtime(&meta))))
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
    let PlanOptions { recursive, force, filter, delete, checksum } = options;
    let slash = dest.as_os_str().as_encoded_bytes().ends_with(b"/");
    let mut local_dirs = Vec::new();
    let mut delete_local = Vec::new();
    let into_dir = dest.is_dir() || sources.len() > 1 || slash;
    let mut found = Vec::new();
    for remote in sources {
        let source = |error| PlanError::Source { path: remote.clone(), error };
        let mut entry = client.stat(remote).await.map_err(source)?;
        if checksum && entry.kind == Kind::File {
            entry = client.stat_with_hash(remote).await.map_err(source)?;
        }
        if entry.kind != Kind::Dir {
            let target = if into_dir { dest.join(base_name(remote)) } else { dest.to_owned() };
            // As `cp`: the directory a file goes into must be there.
            let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                let why = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
                return Err(source(ClientError::Local { path: parent.to_owned(), source: why }));
            }
            found.push(Job {
                remote: remote.clone(),
                local: target,
                size: entry.size,
                mtime: entry.mtime,
                mode: entry.mode,
                replace: false,
                blake3: entry.blake3.clone(),
            });
            continue;
        }
        if !recursive {
            return Err(PlanError::IsADirectory(remote.clone()));
        }
        // rsync's rule: `DIR/` copies what is in DIR, `DIR` the directory
        // itself, into the destination (created if missing).
        let target =
            if remote.ends_with('/') || remote.is_empty() { dest.to_owned() } else { dest.join(base_name(remote)) };
        // Directories first, so that empty ones are recreated too.
        let tree = if checksum { client.tree_with_hashes(remote).await } else { client.tree(remote).await };
        let tree = tree.map_err(source)?;
        if delete {
            let there: std::collections::HashSet<&str> = tree.iter().map(|e| e.name.as_str()).collect();
            let mut extra = Vec::new();
            local_extras(&target, "", &there, &filter, &mut extra);
            delete_local.extend(extra.into_iter().map(|rel| (target.clone(), rel)));
        }
        local_dirs.push(target.clone());
        for e in tree {
            if !filter.allows(&e.name, e.kind == Kind::Dir) {
                continue;
            }
            match e.kind {
                Kind::Dir => local_dirs.push(target.join(&e.name)),
                _ => found.push(Job {
                    remote: join_remote(remote, &e.name),
                    local: target.join(&e.name),
                    size: e.size,
                    mtime: e.mtime,
                    mode: e.mode,
                    replace: false,
                    blake3: e.blake3.clone(),
                }),
            }
        }
    }
    let mut plan = Plan::new(Direction::Get);
    plan.local_dirs = local_dirs;
    plan.delete_local = delete_local;
    for job in found {
        if std::fs::symlink_metadata(&job.local).is_ok_and(|m| m.is_dir()) {
            // Never replaced by a file, `force` or not (as cp refuses): the
            // download could never be put in place.
            let error = ClientError::Local { path: job.local.clone(), source: local_directory() };
            plan.failures.push(Failure { path: job.remote, error });
            continue;
        }
        let held = held_locally(&job.local);
        let same = match (&held, &job.blake3) {
            (Some(Some((size, _))), Some(theirs)) if *size == job.size => {
                Some(local_hash(&job.local).await.as_deref() == Some(theirs.as_str()))
            }
            _ => None,
        };
        plan.decide(job, held, force, same);
    }
    Ok(plan)
}

/// The paths below `root/rel` that the source (`there`, paths relative to
/// `root`) lacks and the filter takes, into `out`, outermost first: a
/// directory to remove is not looked into, nor is a symlink ever followed.
/// Partial files are left alone (they are resumes).
fn local_extras(
    root: &Path,
    rel: &str,
    there: &std::collections::HashSet<&str>,
    filter: &Filter,
    out: &mut Vec<String>,
) {
    let Ok(items) = std::fs::read_dir(root.join(rel)) else { return };
    let mut items: Vec<_> = items.filter_map(Result::ok).collect();
    items.sort_by_key(|i| i.file_name());
    for item in items {
        let Ok(name) = item.file_name().into_string() else { continue };
        if crate::services::root::is_partial_name(name.as_bytes()) {
            continue;
        }
        let child = join_remote(rel, &name);
        let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
        if !filter.allows(&child, is_dir) {
            continue;
        }
        if !there.contains(child.as_str()) {
            out.push(child);
        } else if is_dir {
            local_extras(root, &child, there, filter, out);
        }
    }
}

/// What the server holds below `target` (a directory being uploaded to):
/// each file's size and mtime by its remote path; other kinds as `None`.
async fn held_remotely(client: &mut Client, target: &str, hashed: bool) -> Result<Vec<Entry>, ClientError> {
    let listed = if hashed { client.tree_with_hashes(target).await } else { client.tree(target).await };
    match listed {
        Ok(entries) => Ok(entries),
        Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The entries of a server listing (paths relative to the copied
/// directory) that the source lacks (`seen`) and the filter takes,
/// outermost first; what is below a removed directory goes with it.
/// Partial files are left alone (they are resumes).
fn remote_extras<'a>(entries: &'a [Entry], seen: &std::collections::HashSet<String>, filter: &Filter) -> Vec<&'a str> {
    let mut names: Vec<&Entry> = entries.iter().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let mut gone: Vec<&str> = Vec::new();
    for e in names {
        let below = |d: &&str| e.name.starts_with(*d) && e.name.as_bytes().get(d.len()) == Some(&b'/');
        if seen.contains(e.name.as_str()) || gone.iter().any(below) {
            continue;
        }
        let base = e.name.rsplit('/').next().unwrap_or("");
        if !filter.allows(&e.name, e.kind == Kind::Dir) || is_partial_name(base.as_bytes()) {
            continue;
        }
        gone.push(&e.name);
    }
    gone
}

/// Plans an upload of the local `sources` to `dest` on the server (the
/// root when `None`), walking directories (with `recursive`). Symlinks to
/// files are followed; symlinks to directories and special files are
/// skipped, with a note in [`Plan::skipped`]. What the server already has
/// is compared as [`plan_get`] compares local files (one listing per
/// source directory, one `stat` per source file).
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
    let PlanOptions { recursive, force, filter, delete, checksum } = options;
    let into_dir = match dest {
        None => true,
        Some(d) if sources.len() > 1 || d.ends_with('/') || d.is_empty() => true,
        Some(d) => matches!(client.stat(d).await, Ok(Entry { kind: Kind::Dir, .. })),
    };
    let dest = dest.unwrap_or_default();
    let dest = dest.trim_end_matches('/');
    let mut plan = Plan::new(Direction::Put);
    for path in sources {
        let shown = path.display().to_string();
        let source = |error| PlanError::Source { path: shown.clone(), error };
        let meta = std::fs::metadata(path).map_err(|e| source(ClientError::Local { path: path.clone(), source: e }))?;
        let name = match path.file_name() {
            None => shown.clone(),
            Some(name) => match name.to_str() {
                Some(name) => name.to_owned(),
                None => return Err(source(not_utf8(path))),
            },
        };
        if !meta.is_dir() {
            let target = if into_dir { join_remote(dest, &name) } else { dest.to_owned() };
            let (held, theirs) = match client.stat(&target).await {
                Ok(e) if checksum && e.kind == Kind::File && e.size == meta.len() => {
                    let hashed = client.stat_with_hash(&target).await.map_err(source)?;
                    (Some(Some((e.size, e.mtime))), hashed.blake3)
                }
                Ok(e) => (Some((e.kind == Kind::File).then_some((e.size, e.mtime))), None),
                Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => (None, None),
                Err(e) => return Err(source(e)),
            };
            let same = match theirs {
                Some(theirs) => Some(local_hash(path).await.as_deref() == Some(theirs.as_str())),
                None => None,
            };
            let mtime = crate::services::files::mtime(&meta);
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
            let job = Job {
                remote: target,
                local: path.clone(),
                size: meta.len(),
                mtime,
                mode,
                replace: false,
                blake3: None,
            };
            plan.decide(job, held, force, same);
            continue;
        }
        if !recursive {
            return Err(PlanError::IsADirectory(shown));
        }
        // rsync's rule, as for downloads: `DIR/` copies what is in DIR,
        // `DIR` the directory itself.
        let contents = path.as_os_str().as_encoded_bytes().ends_with(b"/");
        let target = if contents { dest.to_owned() } else { join_remote(dest, &name) };
        let entries = held_remotely(client, &target, checksum).await.map_err(source)?;
        let mut found = Vec::new();
        // Only a mirror needs to know every path the source holds.
        let mut seen = delete.then(std::collections::HashSet::new);
        let creates = walk(&mut plan, (&mut found, &mut seen), (path, ""), &target, &filter)
            .map_err(|e| source(ClientError::Local { path: path.clone(), source: e }))?;
        if let Some(seen) = seen {
            plan.delete_remote
                .extend(remote_extras(&entries, &seen, &filter).into_iter().map(|rel| join_remote(&target, rel)));
        }
        // By the name relative to the target (the listing's own strings):
        // one string less per file of a large tree.
        let held: HashMap<String, (Held, Option<String>)> = entries
            .into_iter()
            .map(|e| (e.name, ((e.kind == Kind::File).then_some((e.size, e.mtime)), e.blake3)))
            .collect();

        if !creates && !target.is_empty() {
            plan.mkdirs.push(target.clone());
        }
        for job in found {
            let (receiver, theirs) = match held.get(below(&target, &job.remote)) {
                Some((state, hash)) => (Some(*state), hash.as_deref()),
                None => (None, None),
            };
            let same = match (receiver, theirs) {
                (Some(Some((size, _))), Some(theirs)) if size == job.size => {
                    Some(local_hash(&job.local).await.as_deref() == Some(theirs))
                }
                _ => None,
            };
            plan.decide(job, receiver, force, same);
        }
    }
    Ok(plan)
}

/// `remote` relative to the directory `target` it is below.
fn below<'a>(target: &str, remote: &'a str) -> &'a str {
    if target.is_empty() {
        return remote;
    }
    remote.strip_prefix(target).and_then(|r| r.strip_prefix('/')).unwrap_or(remote)
}

fn not_utf8(path: &Path) -> ClientError {
    ClientError::Local {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the name is not valid UTF-8, which framewire's protocol cannot carry",
        ),
    }
}

/// Adds what is below `dir` under `remote`; returns whether anything
/// below will create `remote` on the server.
fn walk(
    plan: &mut Plan,
    (found, seen): (&mut Vec<Job>, &mut Option<std::collections::HashSet<String>>),
    (dir, rel): (&Path, &str),
    remote: &str,
    filter: &Filter,
) -> std::io::Result<bool> {
    let mut items: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    items.sort_by_key(|i| i.file_name());
    let mut creates = false;
    for item in items {
        let path = item.path();
        let Ok(name) = item.file_name().into_string() else {
            plan.failures.push(Failure { path: path.display().to_string(), error: not_utf8(&path) });
            continue;
        };
        let child = join_remote(remote, &name);
        let child_rel = join_remote(rel, &name);
        let is_dir = item.file_type()?.is_dir();
        if !filter.allows(&child_rel, is_dir) {
            continue;
        }
        // Whatever is here, copied or skipped, is not removed by a mirror.
        if let Some(seen) = seen.as_mut() {
            seen.insert(child_rel.clone());
        }
        if is_dir {
            if !walk(plan, (&mut *found, &mut *seen), (&path, &child_rel), &child, filter)? {
                plan.mkdirs.push(child);
            }
            creates = true;
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let mtime = crate::services::files::mtime(&meta);
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
                found.push(Job {
                    remote: child,
                    local: path,
                    size: meta.len(),
                    mtime,
                    mode,
                    replace: false,
                    blake3: None,
                });
                creates = true;
            }
            Ok(meta) if meta.is_dir() => {
                plan.skipped.push(format!("{}: a symlink to a directory (not followed)", path.display()))
            }
            Ok(_) => plan.skipped.push(format!("{}: not a regular file", path.display())),
            Err(e) => plan.skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(creates)
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
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { force: false, jobs: 4, streamed: true }
    }
}

impl CopyOptions {
    /// Options with `force` and `jobs` as given, streamed.
    pub fn new(force: bool, jobs: usize) -> Self {
        CopyOptions { force, jobs, streamed: true }
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
        jobs,
        mkdirs,
        local_dirs,
        skipped: _,
        failures,
        unchanged,
        refused,
        delete_remote,
        delete_local,
    } = plan;
    let refused = refused.iter().map(|j| j.source(direction)).collect();
    let mut summary = Summary { failures, unchanged: unchanged.len(), refused, ..Summary::default() };
    summary.failures.extend(make_dirs(endpoint, &mkdirs).await);
    for dir in &local_dirs {
        if let Err(source) = std::fs::create_dir_all(dir) {
            let error = ClientError::Local { path: dir.clone(), source };
            summary.failures.push(Failure { path: dir.display().to_string(), error });
        }
    }
    let workers = options.jobs.clamp(1, 64).min(jobs.len().max(1));
    let totals = Arc::new(Mutex::new(Summary::default()));
    let mut tasks = tokio::task::JoinSet::new();
    // A copy of one file gains nothing from a manifest: it goes as a
    // single `get` or `put` (the same checks, resume and commit, one round
    // trip less).
    let streamed = options.streamed && jobs.len() > 1;
    if !jobs.is_empty() {
        for share in split(jobs, workers) {
            let (endpoint, totals, observer) = (endpoint.clone(), totals.clone(), observer.clone());
            let force = options.force;
            tasks.spawn(async move {
                share_worker(&endpoint, direction, share, (force, streamed), &*observer, &totals).await
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
    summary.failures.extend(done.failures);
    summary.unchanged += done.unchanged;
    summary.refused.extend(done.refused);
    // A mirror removes only once every file is across: after a failure
    // the receiver keeps what it has (as rsync skips deletions after an
    // I/O error).
    if summary.failures.is_empty() {
        summary.deleted += delete_remotely(endpoint, &delete_remote, &mut summary.failures).await;
        for (root, rel) in &delete_local {
            match delete_locally(root, rel) {
                Ok(()) => summary.deleted += 1,
                Err(source) => {
                    let path = root.join(rel);
                    summary
                        .failures
                        .push(Failure { path: path.display().to_string(), error: ClientError::Local { path, source } });
                }
            }
        }
    }
    summary.elapsed = started.elapsed();
    summary
}

/// Removes server paths over one connection; returns how many were there.
async fn delete_remotely(endpoint: &Endpoint, paths: &[String], failures: &mut Vec<Failure>) -> usize {
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
    for path in paths {
        match client.remove(path).await {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(error) => failures.push(Failure { path: path.clone(), error }),
        }
    }
    removed
}

/// Removes `rel` below the local directory `root`, by descriptor: no
/// symlink on the way is followed, one at `rel` is removed as a link.
fn delete_locally(root: &Path, rel: &str) -> std::io::Result<()> {
    let dir: std::os::fd::OwnedFd = std::fs::File::open(root)?.into();
    let parts: Vec<&str> = rel.split('/').collect();
    let (name, parents) = parts.split_last().expect("split gives one part at least");
    let parent = crate::services::root::open_no_links(&dir, parents)?;
    crate::services::root::remove_at(&parent, std::ffi::OsStr::new(name))
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
    for dir in dirs {
        if let Err(error) = client.mkdir(dir).await {
            failures.push(Failure { path: dir.clone(), error });
        }
    }
    failures
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
async fn share_worker(
    endpoint: &Endpoint,
    direction: Direction,
    share: Vec<(usize, Job)>,
    (force, streamed): (bool, bool),
    observer: &dyn Observer,
    totals: &Mutex<Summary>,
) {
    let (mut ids, mut jobs): (Vec<usize>, Vec<Job>) = share.into_iter().unzip();
    let mut client = match endpoint.connect().await {
        Ok(client) => Some(client),
        Err(e) => {
            let mut t = totals.lock().expect("totals");
            let message = e.to_string();
            t.failures.push(Failure { path: jobs[0].source(direction), error: e });
            for job in &jobs[1..] {
                let error = ClientError::Wire(crate::wire::Error::Io(std::io::Error::other(message.clone())));
                t.failures.push(Failure { path: job.source(direction), error });
            }
            return;
        }
    };
    if streamed {
        let c = client.as_mut().expect("connected");
        let mut outcome = Err(ClientError::Closed);
        // A file found busy (another upload of it was under way, e.g. the
        // server still committing the batch of a client just killed) is
        // tried again, in a second request of its own.
        for attempt in 0..3 {
            outcome = match direction {
                Direction::Get => super::stream::get(c, &jobs, force, observer, &ids).await,
                Direction::Put => super::stream::put(c, &jobs, force, observer, &ids).await,
            };
            let Ok(outcomes) = &mut outcome else { break };
            let busy = |e: &ClientError| matches!(e, ClientError::Remote { code: ErrorCode::Busy, .. });
            if attempt == 2 || !outcomes.failed.iter().any(|(_, e)| busy(e)) {
                break;
            }
            let (again, failed): (Vec<_>, Vec<_>) =
                std::mem::take(&mut outcomes.failed).into_iter().partition(|(_, e)| busy(e));
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
                return;
            }
            // An older server: file by file, below.
            Err(ClientError::Remote { code: ErrorCode::UnknownType, .. }) => {}
            Err(e) => {
                let mut t = totals.lock().expect("totals");
                let message = e.to_string();
                for job in &jobs {
                    let error = ClientError::Wire(crate::wire::Error::Io(std::io::Error::other(message.clone())));
                    t.failures.push(Failure { path: job.source(direction), error });
                }
                return;
            }
        }
    }
    for (id, job) in ids.into_iter().zip(&jobs) {
        observer.started(id, job);
        let outcome =
            copy_one(endpoint, &mut client, direction, job, force, &mut |p| observer.progress(id, job, p)).await;
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
}

/// Adds a streamed request's outcomes to the totals.
fn settle(t: &mut Summary, jobs: &[Job], direction: Direction, o: super::stream::Outcomes) {
    t.files += o.files;
    t.sent += o.sent;
    t.resumed += o.resumed;
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
            t.sent += done.size - done.resumed;
            t.resumed += done.resumed;
        }
        Err(error) => t.failures.push(Failure { path: job.source(direction), error }),
    }
}

async fn copy_one(
    endpoint: &Endpoint,
    client: &mut Option<Client>,
    direction: Direction,
    job: &Job,
    force: bool,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Transfer, ClientError> {
    if client.is_none() {
        *client = Some(endpoint.connect().await?);
    }
    let c = client.as_mut().expect("connected");
    let options = TransferOptions::force(force || job.replace);
    match direction {
        Direction::Get => c.get(&job.remote, &job.local, &options, progress).await,
        Direction::Put => c.put(&job.local, &job.remote, &options, progress).await,
    }
}
