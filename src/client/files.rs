//! `Client::list`, `stat`, `get` and `put`: whole-file checksums, atomic
//! writes through a partial file, and automatic resume.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::task::spawn_blocking;

use super::conn::Client;
use super::error::ClientError;
use crate::proto::{
    Answer, Checksum, Entry, ErrorCode, FileReply, Get, List, ListReply, ListingOutput, ListingSkip, Mkdir, MkdirReply,
    Put, PutData, PutDone, PutReady, Remove, RemoveReply, Rename, RenameReply, Stat, StatReply, TreeList,
    TREE_PART_MAX,
};
use crate::services::attrs::Wanted;
use crate::services::files::{not_regular, open_to_send, received_mode};
use crate::services::root::{local_parent, partial_name};
use crate::session::{delta, receive_body, ReceiveError, Receiver, SendError, Sender, Unproven};
use crate::wire::{self, MAX_BUFFERED_BODY};

/// Options of a transfer.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Replace an existing target.
    pub force: bool,
    /// Uploads: what the server keeps of what they replace (rsync's
    /// `--backup`); a server that cannot is [`ClientError::NoBackups`],
    /// before anything is sent.
    pub backup: Option<crate::proto::Backup>,
    /// Downloads: where this side keeps what they replace.
    pub local_backup: Option<std::sync::Arc<super::LocalBackup>>,
    /// Downloads in a tree: what this side does with the owners and
    /// extended attributes listed for each file.
    pub applying: crate::services::attrs::Applying,
    /// Whether a file the receiver holds an older version of goes as a
    /// delta (PROTOCOL.md §4.6.6).
    pub delta: DeltaMode,
    /// The length of the file on the other side, as a plan found it: an
    /// upload's receiver's (the file it replaces), a download's source's;
    /// `Some(0)`: nothing there. `None`: not planned, and asked of the
    /// server (a `stat`) where a delta is wanted.
    pub other_len: Option<u64>,
}

/// When a changed file goes as a delta: only the bytes the receiver's
/// older version lacks cross the link (PROTOCOL.md §4.6.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeltaMode {
    /// Where the link is slower than building a delta: to any peer but
    /// this machine (a loopback address), where bytes cost nothing.
    #[default]
    Auto,
    /// Always (`--delta`).
    Always,
    /// Never: files go whole (`-W`, `--whole-file`).
    Never,
}

impl TransferOptions {
    /// Options with `force` set as given.
    pub fn force(force: bool) -> Self {
        TransferOptions { force, ..TransferOptions::default() }
    }

    /// The same, keeping backups (see [`TransferOptions::backup`] and
    /// [`TransferOptions::local_backup`]).
    pub fn with_backups(
        mut self,
        backup: Option<crate::proto::Backup>,
        local_backup: Option<std::sync::Arc<super::LocalBackup>>,
    ) -> Self {
        self.backup = backup;
        self.local_backup = local_backup;
        self
    }
}

/// Where a transfer stands, passed to the progress callback after every
/// chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Whole file size.
    pub size: u64,
    /// Bytes the receiver already held when the transfer started (resume).
    pub resumed: u64,
    /// Bytes moved by this transfer so far (excluding `resumed`).
    pub done: u64,
}

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Whole file size.
    pub size: u64,
    /// Bytes that were already there and not sent again.
    pub resumed: u64,
    /// BLAKE3 of the whole file, verified by the receiver (hex).
    pub blake3: String,
    /// Bytes the receiver built from its older version of the file (a
    /// delta), not sent.
    pub matched: u64,
}

pub(super) fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Local { path: path.to_owned(), source }
}

/// Whether `name` is a non-empty relative path made of plain names only:
/// no `..`, `.`, root, empty component or NUL byte.
pub(crate) fn is_plain_relative(name: &str) -> bool {
    !name.is_empty()
        && crate::services::names::is_canonical(name)
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Parses a `list_reply` body: a JSON array of entries whose names are all
/// plain relative paths.
///
/// # Errors
///
/// [`wire::Error::InvalidField`] if it is no such array;
/// [`ClientError::UnsafeName`] for the first name that is not plain.
pub fn parse_listing(body: &[u8]) -> Result<Vec<Entry>, ClientError> {
    let entries: Vec<Entry> = serde_json::from_slice(body)
        .map_err(|e| wire::Error::InvalidField { source: e, body_len: body.len() as u64 })?;
    // Callers join these names onto local paths: a server must not be able
    // to name `../x` or `/etc/x` and so write outside the destination
    // (scp's CVE-2019-6111).
    // A hard link's other name is joined the same way.
    let bad = |e: &Entry| !is_plain_relative(&e.name) || e.link.as_deref().is_some_and(|l| !is_plain_relative(l));
    match entries.iter().find(|e| bad(e)) {
        Some(bad) if !is_plain_relative(&bad.name) => Err(ClientError::UnsafeName(bad.name.clone())),
        Some(bad) => Err(ClientError::UnsafeName(bad.link.clone().unwrap_or_default())),
        None => Ok(entries),
    }
}

/// The most paths one listing may report it could not read
/// ([`Client::tree_with_skips`]): a server that reports more is taken to be
/// lying, as one whose count is wrong.
pub const MAX_SKIPS: usize = 65_536;

/// Whether a refusal with `code` ends the connection it comes on
/// (PROTOCOL.md §4.9): what is asked behind it goes unanswered.
fn ends_connection(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::ShuttingDown | ErrorCode::AuthFailed | ErrorCode::BadFrame | ErrorCode::Timeout)
}

/// `mkdir`s [`Client::mkdirs`] sends ahead of their answers at most
/// (about 15 KiB of requests).
pub const MKDIR_WINDOW: usize = 256;

/// A tree as [`Client::tree_with_skips`] lists it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TreeListing {
    /// Every regular file and directory listed, sorted by name.
    pub entries: Vec<Entry>,
    /// Each path below the listed one that the server could not read
    /// (relative to it), and why; what is below it is not listed.
    pub skipped: Vec<ListingSkip>,
    /// An upload to this server sets the owners it names (its
    /// `listing_end` says it runs as root).
    pub owners: bool,
    /// The permission bits an upload's files and directories lose there
    /// (its umask), where it keeps modes and says so; `None` otherwise.
    pub umask: Option<u32>,
}

pub(super) fn join_err(e: tokio::task::JoinError) -> ClientError {
    ClientError::Wire(wire::Error::Io(std::io::Error::other(e)))
}

/// Why a transfer ended: with an error, or to be tried again whole (a
/// delta that could not be built, or was built wrong).
pub(super) enum Retry {
    Whole,
    /// A trusted append was not one: again, without a sample.
    NoAppend,
    Failed(ClientError),
}

impl From<ClientError> for Retry {
    fn from(e: ClientError) -> Self {
        Retry::Failed(e)
    }
}

impl From<wire::Error> for Retry {
    fn from(e: wire::Error) -> Self {
        Retry::Failed(e.into())
    }
}

impl From<Retry> for ClientError {
    fn from(r: Retry) -> Self {
        match r {
            Retry::Failed(e) => e,
            // Asked for only once; a second attempt goes whole.
            Retry::Whole | Retry::NoAppend => {
                ClientError::Unexpected { expected: "a file sent whole", got: "a retry".into() }
            }
        }
    }
}

/// The file `name` in `dir` as the older version of one the sender has
/// `theirs` bytes of, indexed for a delta (and hashed whole, so that the
/// sender can tell an append): `None` if it is no regular file, or too
/// small to be worth it, or cannot be read.
fn older_version(
    dir: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    theirs: u64,
) -> Option<(std::fs::File, crate::delta::Signature, blake3::Hash)> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = std::fs::File::from(rustix::fs::openat(dir, name, flags, Mode::empty()).ok()?);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || !delta::worth(meta.len(), theirs) {
        return None;
    }
    let layout = crate::delta::Layout::for_sizes(meta.len(), theirs);
    let (sig, hash) = delta::index(&file, meta.len(), layout).ok()?;
    Some((file, sig, hash))
}

/// `file` (`size` bytes) cut as `layout` and hashed, on a blocking
/// thread: once for all the copies of a fan-out that share their reads
/// (they send the same file), else for this one.
async fn chunks_of(
    shared: Option<std::sync::Arc<crate::session::SharedReads>>,
    file: std::fs::File,
    size: u64,
    layout: crate::delta::Layout,
) -> Result<std::io::Result<(std::fs::File, delta::Chunked)>, ClientError> {
    match shared {
        Some(shared) => Ok(shared.chunks(file, size, layout, delta::index).await),
        None => spawn_blocking(move || {
            let (sig, hash) = delta::index(&file, size, layout)?;
            Ok((file, (std::sync::Arc::new(sig), hash)))
        })
        .await
        .map_err(join_err),
    }
}

/// A file's signature, and its whole hash if it was made with it.
type Cut = (std::sync::Arc<crate::delta::Signature>, Option<blake3::Hash>);

/// An upload's file being cut for a delta before the server's signature
/// comes, as `layout` (the sizes' layout for an older version of `held`
/// bytes); stopped if dropped unused.
pub(super) struct EarlyCut {
    layout: crate::delta::Layout,
    held: u64,
    task: tokio::task::JoinHandle<std::io::Result<crate::delta::Signature>>,
    _stop: delta::StopOnDrop,
}

impl EarlyCut {
    /// Starts cutting `file` (`size` bytes) on a blocking thread.
    fn start(file: std::fs::File, size: u64, layout: crate::delta::Layout, held: u64) -> EarlyCut {
        let stop = delta::StopOnDrop::default();
        let flag = stop.0.clone();
        let task = spawn_blocking(move || delta::index_until(&file, size, layout, &flag));
        EarlyCut { layout, held, task, _stop: stop }
    }

    /// Its result, with `file` handed back as [`chunks_of`] gives it, but
    /// without the whole file's hash: that is made after the ops have
    /// gone, while the server builds ([`delta::index_until`]).
    async fn finish(self, file: std::fs::File) -> Result<std::io::Result<(std::fs::File, Cut)>, ClientError> {
        let EarlyCut { task, _stop, .. } = self;
        let cut = task.await.map_err(join_err)?;
        Ok(cut.map(|sig| (file, (std::sync::Arc::new(sig), None))))
    }
}

/// What an upload's answer before its checksum means: the server
/// refused while the body was still going out (a write failed on its
/// side), or broke the protocol, or left.
fn early_answer(answer: Option<(Answer<PutDone>, u64)>) -> ClientError {
    match answer {
        Some((Answer::Refused(e), _)) => e.into(),
        Some((Answer::Ok(_), _)) => {
            ClientError::Unexpected { expected: "no answer before the checksum", got: "put_done".into() }
        }
        None => ClientError::Closed,
    }
}

/// Why a download is refused where a directory has the file's name.
pub(super) fn local_directory() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory; a file cannot replace it")
}

impl Client {
    /// Lists `path` on the server (empty for the root): a directory's
    /// entries, a file's own entry, or with `recursive` every file below.
    ///
    /// # Errors
    ///
    /// The server's refusal (no such path, outside the root…), wire errors.
    pub async fn list(&mut self, path: &str, recursive: bool) -> Result<Vec<Entry>, ClientError> {
        self.list_request(List { path: path.to_owned(), recursive, dirs: false, blake3: false, partial: false }).await
    }

    /// The partial files below `path` (left by cut transfers, resumed by
    /// the next one), under their own names (`d/.x.iso.fwpart`), with
    /// size and mtime. A server older than this lists the ordinary
    /// entries instead (its answer has no partial names: check them with
    /// [`is_partial_name`](crate::client::is_partial_name)).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn list_partials(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        self.list_request(List { path: path.to_owned(), recursive: true, dirs: false, blake3: false, partial: true })
            .await
    }

    /// As [`tree`](Self::tree), with each file's BLAKE3 (read by the
    /// server if its cache lacks it: a cost of its own). A server older
    /// than this gives none (`Entry::blake3` is `None`).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn tree_with_hashes(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        Ok(self.tree_listing(path, true, false, None).await?.entries)
    }

    /// As [`stat`](Self::stat) of a file, with its BLAKE3 (see
    /// [`tree_with_hashes`](Self::tree_with_hashes)).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn stat_with_hash(&mut self, path: &str) -> Result<Entry, ClientError> {
        let entries = self
            .list_request(List { path: path.to_owned(), recursive: false, dirs: false, blake3: true, partial: false })
            .await?;
        match entries.into_iter().next() {
            Some(e) => Ok(e),
            None => self.stat(path).await,
        }
    }

    /// Every regular file and every directory below `path`, names relative
    /// to it: what a copy of the tree needs, empty directories included.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list); one directory below that the server cannot
    /// read fails the whole listing, named ([`tree_with_skips`](Self::tree_with_skips)
    /// goes on past it).
    pub async fn tree(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        Ok(self.tree_listing(path, false, false, None).await?.entries)
    }

    /// As [`tree`](Self::tree) (with each file's BLAKE3 if `blake3`), going
    /// on past what the server cannot read below `path`: each such path is
    /// in [`TreeListing::skipped`] (PROTOCOL.md §4.6.3.1), and the rest is
    /// listed. A directory that cannot be read is itself listed, with
    /// nothing below it. From a server older than this, the first one
    /// fails the whole listing, as [`tree`](Self::tree) does.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn tree_with_skips(&mut self, path: &str, blake3: bool) -> Result<TreeListing, ClientError> {
        self.tree_listing(path, blake3, true, None).await
    }

    /// As [`tree_with_skips`](Self::tree_with_skips), and with `meta` the
    /// symlinks too (each with its target), files that are hard links to
    /// one listed before marked with its path (`link`), and exact times
    /// (`mtime_ns`), where the server keeps them (PROTOCOL.md §4.6.3.1).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn tree_meta(&mut self, path: &str, blake3: bool, meta: bool) -> Result<TreeListing, ClientError> {
        self.tree_listing(path, blake3, true, meta.then_some((Wanted::default(), false))).await
    }

    /// [`tree_meta`](Self::tree_meta) with `meta`, each entry with what
    /// `wanted` asks of it besides (owners, extended attributes, in
    /// `attrs`; PROTOCOL.md §4.6.3.5).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn tree_meta_with(
        &mut self,
        path: &str,
        blake3: bool,
        wanted: Wanted,
    ) -> Result<TreeListing, ClientError> {
        self.tree_listing(path, blake3, true, Some((wanted, false))).await
    }

    /// [`tree_meta_with`](Self::tree_meta_with), with each symlink that
    /// leads to a regular file inside the tree listed as that file under
    /// the link's name (`-L`; a server older than this lists links as
    /// links).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn tree_meta_following(
        &mut self,
        path: &str,
        blake3: bool,
        wanted: Wanted,
    ) -> Result<TreeListing, ClientError> {
        self.tree_listing(path, blake3, true, Some((wanted, true))).await
    }

    /// The tree through `tree_list`, streamed in frames (no size limit),
    /// sorted by name; from a server without it, through `list`.
    async fn tree_listing(
        &mut self,
        path: &str,
        blake3: bool,
        skips: bool,
        meta: Option<(Wanted, bool)>,
    ) -> Result<TreeListing, ClientError> {
        let list = self.tree_list_request(path, blake3, skips, meta);
        self.session.send(&list, &[]).await?;
        match self.read_listing().await? {
            Some(listed) => Ok(listed),
            None => self.older_listing(path, blake3).await,
        }
    }

    /// [`tree_meta_with`](Self::tree_meta_with) (or, with `copy_links`,
    /// [`tree_meta_following`](Self::tree_meta_following)) of `path`
    /// and its [`stat`](Self::stat), the two requests sent at once and
    /// answered in turn (PROTOCOL.md §1): a directory's own mode and time
    /// beside what is below it, in one round trip. Each answer is its own
    /// result; a refusal of one leaves the other as it is.
    ///
    /// # Errors
    ///
    /// Wire errors, after which neither answer can be read.
    pub async fn tree_meta_and_stat(
        &mut self,
        path: &str,
        blake3: bool,
        (wanted, copy_links): (Wanted, bool),
    ) -> Result<(Result<TreeListing, ClientError>, Result<Entry, ClientError>), ClientError> {
        let list = self.tree_list_request(path, blake3, true, Some((wanted, copy_links)));
        self.session.feed(&list, &[]).await?;
        self.session.send(&Stat { path: path.to_owned() }, &[]).await?;
        // A refusal is the listing's whole answer; anything else that
        // fails leaves the connection out of step.
        let listed = match self.read_listing().await {
            Err(e) if !matches!(e, ClientError::Remote { .. }) => return Err(e),
            listed => listed,
        };
        let stat = match self.answer::<StatReply>().await {
            Ok(StatReply { entry }) => Ok(entry),
            Err(e @ ClientError::Remote { .. }) => Err(e),
            // A server that refused the listing and closed (shutting
            // down, a revoked key) said why in the refusal.
            Err(e) => return Err(listed.err().unwrap_or(e)),
        };
        let listed = match listed {
            Ok(Some(listed)) => Ok(listed),
            Ok(None) => self.older_listing(path, blake3).await,
            Err(e) => Err(e),
        };
        Ok((listed, stat))
    }

    /// A `tree_list` request, its body compressed where bytes cost
    /// something.
    fn tree_list_request(&self, path: &str, blake3: bool, skips: bool, meta: Option<(Wanted, bool)>) -> TreeList {
        let (w, copy_links) = meta.unwrap_or_default();
        let (owners, xattrs, acls) = (w.owners, w.xattrs, w.acls);
        // Compressed where bytes cost something: not on this machine, and
        // not over a connection compressed already (`-z`).
        let far = || !crate::transport::is_local(self.peer_addr().ip());
        let compact = self.compact.unwrap_or_else(far) && !self.session.is_compressed();
        TreeList {
            path: path.to_owned(),
            blake3,
            skips,
            meta: meta.is_some(),
            owners,
            xattrs,
            acls,
            copy_links,
            compact,
        }
    }

    /// The same tree from a server without `tree_list`, through `list`.
    async fn older_listing(&mut self, path: &str, blake3: bool) -> Result<TreeListing, ClientError> {
        let list = List { path: path.to_owned(), recursive: true, dirs: true, blake3, partial: false };
        let entries = self.list_request(list).await?;
        Ok(TreeListing { entries, skipped: Vec::new(), owners: false, umask: None })
    }

    /// The answer to a `tree_list` just sent, sorted by name; `None` if
    /// the server does not know the request (`unknown_type`).
    async fn read_listing(&mut self) -> Result<Option<TreeListing>, ClientError> {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let (owners, umask);
        loop {
            match self.session.read::<ListingOutput>().await? {
                Some((ListingOutput::Listing(head), _)) => {
                    let body = self.session.reader().read_body(TREE_PART_MAX).await?;
                    let body = if head.zstd {
                        match crate::wire::expand(&body, TREE_PART_MAX as usize) {
                            Ok(body) => body,
                            Err(e) => {
                                // Out of step with the listing: the
                                // connection is not used again.
                                self.session.abandon().await;
                                return Err(ClientError::Unexpected {
                                    expected: "a listing body of one zstd frame of at most 1 MiB",
                                    got: e.to_string(),
                                });
                            }
                        }
                    } else {
                        body.to_vec()
                    };
                    entries.extend(parse_listing(&body)?);
                }
                Some((ListingOutput::ListingSkip(skip), _)) => {
                    // Joined onto local paths in messages only, but checked
                    // as the listing's names are.
                    if !is_plain_relative(&skip.path) && !skip.path.is_empty() {
                        return Err(ClientError::UnsafeName(skip.path));
                    }
                    if skipped.len() >= MAX_SKIPS {
                        return Err(ClientError::Unexpected {
                            expected: "at most MAX_SKIPS listing_skip frames",
                            got: format!("more than {MAX_SKIPS}"),
                        });
                    }
                    skipped.push(skip);
                }
                Some((ListingOutput::ListingEnd(end), _)) => {
                    if end.count != entries.len() as u64 {
                        return Err(ClientError::Unexpected {
                            expected: "as many entries as listing_end counts",
                            got: format!("{} of {}", entries.len(), end.count),
                        });
                    }
                    (owners, umask) = (end.owners, end.umask.map(|m| m & 0o777));
                    break;
                }
                Some((ListingOutput::ErrorFrame(e), _)) if e.code == ErrorCode::UnknownType => return Ok(None),
                Some((ListingOutput::ErrorFrame(e), _)) => return Err(e.into()),
                None => return Err(ClientError::Closed),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(TreeListing { entries, skipped, owners, umask }))
    }

    async fn list_request(&mut self, request: List) -> Result<Vec<Entry>, ClientError> {
        self.session.send(&request, &[]).await?;
        let ListReply { .. } = self.answer().await?;
        parse_listing(&self.session.reader().read_body(MAX_BUFFERED_BODY).await?)
    }

    /// Makes sure `path` is a directory on the server, creating it and
    /// its missing parents as `mkdir -p` does. Returns whether it was
    /// created.
    ///
    /// # Errors
    ///
    /// The server's refusal: [`ErrorCode::Exists`](crate::ErrorCode::Exists)
    /// if a file is there, a path outside the root…; wire errors.
    pub async fn mkdir(&mut self, path: &str) -> Result<bool, ClientError> {
        self.session.send(&Mkdir { path: path.to_owned(), parents: None }, &[]).await?;
        let MkdirReply { created } = self.answer().await?;
        Ok(created)
    }

    /// Makes sure each of `paths` is a directory, as [`mkdir`](Self::mkdir)
    /// does, the requests pipelined (PROTOCOL.md §1): up to
    /// [`MKDIR_WINDOW`] sent ahead of their answers, half a window at a
    /// time, read beside the writing. A tree of many empty directories costs a round trip for
    /// each window of them, not one each (seconds on a far link); the
    /// window keeps what waits in the connection small, so the writing
    /// never stalls on a slow server. Returns each one's outcome, in
    /// order.
    ///
    /// # Errors
    ///
    /// Wire errors (each refusal is its directory's outcome).
    pub async fn mkdirs(&mut self, paths: &[String]) -> Result<Vec<Result<bool, ClientError>>, ClientError> {
        let window = tokio::sync::Semaphore::new(MKDIR_WINDOW);
        let (reader, mut out) = self.session.halves();
        let write = async {
            // Half a window at a time, in one write each.
            for part in paths.chunks(MKDIR_WINDOW / 2) {
                let n = u32::try_from(part.len()).expect("half a window");
                window.acquire_many(n).await.map_err(|_| ClientError::Closed)?.forget();
                for path in part {
                    out.feed(&Mkdir { path: path.clone(), parents: None }, &[]).await?;
                }
                out.body().flush().await?;
            }
            Ok::<(), ClientError>(())
        };
        let read = async {
            let mut outcomes: Vec<Result<bool, ClientError>> = Vec::with_capacity(paths.len());
            for _ in paths {
                outcomes.push(match reader.read_head::<Answer<MkdirReply>>().await? {
                    Some((Answer::Ok(MkdirReply { created }), _)) => Ok(created),
                    Some((Answer::Refused(e), _)) => Err(e.into()),
                    // A refusal that ended the connection (the server
                    // shutting down, the key revoked) says why.
                    None => match outcomes.pop() {
                        Some(Err(e)) if e.code().is_some_and(ends_connection) => return Err(e),
                        _ => return Err(ClientError::Closed),
                    },
                });
                window.add_permits(1);
            }
            Ok(outcomes)
        };
        let ((), outcomes) = tokio::try_join!(write, read)?;
        Ok(outcomes)
    }

    /// Creates the directory `path` on the server, as `mkdir` does: its
    /// parent must exist and it must not (a server that predates this
    /// creates parents and accepts an existing directory, as
    /// [`mkdir`](Self::mkdir)). Returns whether it was created.
    ///
    /// # Errors
    ///
    /// The server's refusal: [`crate::ErrorCode::Exists`],
    /// [`crate::ErrorCode::NotFound`] (no parent), escapes.
    pub async fn mkdir_one(&mut self, path: &str) -> Result<bool, ClientError> {
        self.session.send(&Mkdir { path: path.to_owned(), parents: Some(false) }, &[]).await?;
        let MkdirReply { created } = self.answer().await?;
        Ok(created)
    }

    /// Removes `path` on the server unless it is a directory (`rm`
    /// without `-r`): the kernel refuses a directory at the moment of
    /// removal, answered [`crate::ErrorCode::IsADirectory`]. Returns
    /// whether something was there.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove).
    pub async fn remove_file(&mut self, path: &str) -> Result<bool, ClientError> {
        self.session.send(&Remove { path: path.to_owned(), recursive: Some(false) }, &[]).await?;
        let RemoveReply { removed } = self.answer().await?;
        Ok(removed)
    }

    /// Renames `from` to `to` on the server, atomically, inside the root;
    /// never over an existing name unless `force`.
    ///
    /// # Errors
    ///
    /// The server's refusal ([`crate::ErrorCode::Exists`],
    /// [`crate::ErrorCode::NotFound`], escapes and partial names as
    /// [`crate::ErrorCode::BadPath`]); [`crate::ErrorCode::UnknownType`]
    /// from a server that predates `rename`.
    pub async fn rename(&mut self, from: &str, to: &str, force: bool) -> Result<(), ClientError> {
        self.session.send(&Rename { from: from.to_owned(), to: to.to_owned(), force }, &[]).await?;
        let RenameReply {} = self.answer().await?;
        Ok(())
    }

    /// Removes `path` on the server: a file, a symlink (the link itself),
    /// or a directory with everything below it, never through a symlink.
    /// Returns whether something was there.
    ///
    /// # Errors
    ///
    /// The server's refusal (the root itself, a path outside it, a parent
    /// that is a symlink…); [`ErrorCode::UnknownType`](crate::ErrorCode::UnknownType)
    /// from a server older than this request; wire errors.
    pub async fn remove(&mut self, path: &str) -> Result<bool, ClientError> {
        self.session.send(&Remove { path: path.to_owned(), recursive: None }, &[]).await?;
        let RemoveReply { removed } = self.answer().await?;
        Ok(removed)
    }

    /// Describes one path on the server.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn stat(&mut self, path: &str) -> Result<Entry, ClientError> {
        self.session.send(&Stat { path: path.to_owned() }, &[]).await?;
        let StatReply { entry } = self.answer().await?;
        Ok(entry)
    }

    /// Downloads `remote` to the local file `local`.
    ///
    /// Data goes to `.NAME.fwpart` beside `local`; the whole-file BLAKE3
    /// sent by the server is checked, then the file is synced and renamed
    /// into place, so `local` never holds a partial or corrupt file. If a
    /// partial file is there from an interrupted download, only the rest is
    /// fetched (after the server checks the partial is the start of its
    /// file).
    ///
    /// # Errors
    ///
    /// [`ClientError::LocalExists`] without `force`; the server's refusal;
    /// [`ClientError::ChecksumMismatch`] (nothing kept); local I/O errors
    /// (a write that fails mid-transfer, e.g. a full disk, is reported at
    /// once and closes this connection: open a new `Client`); wire errors
    /// (the partial file is kept for a resume).
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        options: &TransferOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        let l = local.to_owned();
        self.get_into(remote, local, move || local_parent(&l), options, progress).await
    }

    /// [`get`](Self::get) of `remote` to the local file `local` (as shown),
    /// whose directory and name `place` opens (on a blocking thread): the
    /// name is never followed as a link, and a tree copy resolves the
    /// directory beneath its destination.
    pub(super) async fn get_into(
        &mut self,
        remote: &str,
        local: &Path,
        place: impl FnOnce() -> std::io::Result<(std::os::fd::OwnedFd, std::ffi::OsString)> + Send + Clone + 'static,
        options: &TransferOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        let delta = match self.other_len(remote, options).await? {
            Some(theirs) if theirs >= delta::DELTA_MIN => Some(theirs),
            _ => None,
        };
        match self.get_once(remote, local, place.clone(), options, delta, progress).await {
            // A delta that could not be built, or built wrong: the file
            // again, whole, on the same connection.
            Err(Retry::Whole) => {
                self.get_once(remote, local, place, options, None, progress).await.map_err(Retry::into)
            }
            other => other.map_err(Retry::into),
        }
    }

    /// The length of `remote` on the server, for a delta, if one is
    /// wanted: as the plan found it, or asked now (a `stat`, one round
    /// trip) if it did not. `None`: no delta (not wanted, or no regular
    /// file there).
    async fn other_len(&mut self, remote: &str, options: &TransferOptions) -> Result<Option<u64>, ClientError> {
        if !self.wants_delta(options.delta) || options.other_len == Some(0) {
            return Ok(None);
        }
        if let Some(len) = options.other_len {
            return Ok(Some(len));
        }
        match self.stat(remote).await {
            Ok(e) if e.kind == crate::proto::Kind::File => Ok(Some(e.size)),
            Ok(_) | Err(ClientError::Remote { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `file` answering a `get`, sending the signature of our older
    /// version first if the server asks for it (`signature_wanted`: it
    /// will answer with a delta). A server that does not build deltas
    /// answers with the file whole.
    async fn file_reply(&mut self, sig: Option<&crate::delta::Signature>) -> Result<FileReply, ClientError> {
        use crate::proto::GetOutput;
        let mut sig = sig;
        loop {
            match self.session.read::<GetOutput>().await? {
                Some((GetOutput::FileReply(head), _)) => return Ok(head),
                Some((GetOutput::SignatureWanted(_), _)) => {
                    // Sent once at most.
                    let Some(sig) = sig.take() else {
                        self.session.abandon().await;
                        let got = "signature_wanted".into();
                        return Err(ClientError::Unexpected { expected: "file (no basis was sent)", got });
                    };
                    delta::send_signature(&mut self.session, sig).await?;
                }
                Some((GetOutput::ErrorFrame(e), _)) => return Err(e.into()),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Whether a transfer in `mode` goes as a delta to this server.
    pub(crate) fn wants_delta(&self, mode: DeltaMode) -> bool {
        match mode {
            DeltaMode::Always => true,
            DeltaMode::Never => false,
            DeltaMode::Auto => !crate::transport::is_local(self.peer_addr().ip()),
        }
    }

    /// [`get_into`](Self::get_into), once: as a delta from what is held
    /// locally if `delta` (the source's length) says so.
    async fn get_once(
        &mut self,
        remote: &str,
        local: &Path,
        place: impl FnOnce() -> std::io::Result<(std::os::fd::OwnedFd, std::ffi::OsString)> + Send + 'static,
        options: &TransferOptions,
        delta: Option<u64>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, Retry> {
        // Named in messages; the file itself is reached through its
        // directory's descriptor, its name never followed as a link.
        let shown = local.with_file_name(partial_name(local.file_name().unwrap_or_default()));
        let force = options.force;
        let target = local.to_owned();
        let opened = spawn_blocking(move || {
            let (dir, name) = place()?;
            match rustix::fs::statat(&dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                // Never replaced by a file, `force` or not (as cp refuses):
                // a download into it could never be committed.
                Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
                    return Ok(Err(ClientError::Local { path: target, source: local_directory() }));
                }
                Ok(_) if !force => return Ok(Err(ClientError::LocalExists(target))),
                _ => {}
            }
            // The older version, indexed, for a delta: read through its
            // directory, never following a link.
            let basis = delta.and_then(|theirs| older_version(&dir, &name, theirs));
            Receiver::open(dir, &name).map(|r| Ok((r, basis)))
        })
        .await
        .map_err(join_err)?
        .map_err(local_err(&shown))?;
        let (mut receiver, basis) = opened?;
        let (offset, prefix_blake3) = receiver.offer();
        let asked = basis.as_ref().map(|(file, sig, hash)| {
            let tail = crate::proto::Sample::of(file, sig.len).ok().map(|s| s.blake3);
            delta::basis_of(sig, Some(hash.to_hex().to_string()), tail)
        });
        let get = Get { path: remote.to_owned(), offset, prefix_blake3, sparse: true, basis: asked };
        self.session.send(&get, &[]).await?;
        let head: FileReply = match self.file_reply(basis.as_ref().map(|(_, sig, _)| sig)).await {
            Ok(head) => head,
            Err(e) => {
                // Nothing of this file was fetched: an empty partial file
                // is not worth keeping.
                if receiver.held() == 0 {
                    receiver.discard();
                }
                return Err(e.into());
            }
        };
        let FileReply { size, offset, mode, mtime, mtime_ns, holes, delta: is_delta, .. } = head;
        if is_delta && basis.is_none() {
            self.session.abandon().await;
            return Err(ClientError::Unexpected {
                expected: "a file whole (no basis was sent)",
                got: "a delta".into(),
            }
            .into());
        }
        if !receiver.agree(offset).map_err(local_err(&shown))? {
            self.session.abandon().await;
            return Err(ClientError::Unexpected { expected: "a file from our offset or 0", got: "file".into() }.into());
        }
        if let Err(why) = receiver.with_holes(holes, size) {
            self.session.abandon().await;
            return Err(ClientError::Unexpected { expected: "holes within the file", got: why.into() }.into());
        }
        // A full disk shows now rather than in the middle: the body is
        // coming, so the connection is given up. Holes are counted as
        // if written, as a server counts them: it bounds what a peer can
        // make this side hash by the room there is.
        if let Err(e) = receiver.check_room(offset, size) {
            receiver.discard();
            self.session.abandon().await;
            return Err(local_err(&shown)(e).into());
        }
        let mut at = Progress { size, resumed: offset, done: 0 };
        let mut matched = 0;
        let received = match basis {
            Some((old, sig, _)) if is_delta => {
                let patch = delta::Patch::new(receiver, Ok(old), sig.len, size);
                let built = delta::receive_ops(&mut self.session, patch, &mut |n| {
                    at.done = n.saturating_sub(offset);
                    progress(at);
                })
                .await;
                let finished = built.and_then(|p| {
                    matched = p.copied();
                    p.finish().map_err(|e| (e, None))
                });
                let finished = finished.map_err(|(e, p)| (e, p.map(|p| *p)));
                match finished {
                    Ok(received) => received,
                    Err((delta::DeltaFailed::BasisChanged(_), _)) => {
                        // Our older version changed under the delta: the
                        // checksum is read (in step still), and the file
                        // fetched again whole.
                        let Checksum { .. } = self.answer().await?;
                        return Err(Retry::Whole);
                    }
                    Err((delta::DeltaFailed::Wire(e), _)) => return Err(ClientError::from(e).into()),
                    Err((delta::DeltaFailed::Closed, _)) => return Err(ClientError::Closed.into()),
                    // Only a signature's reader meets the last two
                    // (a get's client reads no signature).
                    Err((
                        e @ (delta::DeltaFailed::Bad(_)
                        | delta::DeltaFailed::NoSignature
                        | delta::DeltaFailed::Refused(_)),
                        _,
                    )) => {
                        self.session.abandon().await;
                        return Err(
                            ClientError::Unexpected { expected: "a delta that fits", got: e.to_string() }.into()
                        );
                    }
                    Err((delta::DeltaFailed::Io(e), patch)) => {
                        if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
                            if let Some(patch) = patch {
                                patch.discard();
                            }
                        }
                        self.session.abandon().await;
                        return Err(local_err(&shown)(e).into());
                    }
                }
            }
            _ => {
                let received = receiver
                    .receive(self.session.reader(), &mut |n| {
                        at.done = n;
                        progress(at);
                    })
                    .await;
                match received {
                    Ok(received) => received,
                    Err(ReceiveError::Wire(e, _)) => return Err(ClientError::from(e).into()),
                    Err(ReceiveError::Write(e, _)) => {
                        // The rest of the body is not worth fetching: this
                        // connection is out of step now, and closing it says so to
                        // both sides.
                        self.session.abandon().await;
                        return Err(local_err(&shown)(e).into());
                    }
                }
            }
        };
        let Checksum { blake3: expected } = self.answer().await?;
        let received = match received.verify(&expected) {
            Ok(received) => received,
            // Built wrong (a chunk id that collided): fetched again whole.
            Err(_) if is_delta => return Err(Retry::Whole),
            Err(got) => {
                return Err(
                    ClientError::ChecksumMismatch { path: remote.to_owned(), expected: expected.clone(), got }.into()
                )
            }
        };
        let got = received.hash().to_hex().to_string();
        // A server that sends no mode sends 0.
        let mode = received_mode(if mode == 0 { 0o666 } else { mode });
        let force = options.force;
        // The server's mtime, set before the rename (as `scp -p` keeps it);
        // a server that sends none sends 0, and the file keeps the time it
        // was written.
        let received = if mtime != 0 || mtime_ns.is_some() {
            received.with_mtime(crate::services::files::Stamp::from_wire(mtime, mtime_ns))
        } else {
            received
        };
        let (backup, target) = (options.local_backup.clone(), local.to_owned());
        let commit = move || {
            if let (true, Some(backup)) = (force, backup) {
                backup.keep(&target, received.at(), false)?;
            }
            received.commit(mode, force).map(|_| ())
        };
        match spawn_blocking(commit).await.map_err(join_err)? {
            Ok(()) => Ok(Transfer { size, resumed: offset, blake3: got, matched }),
            // Something appeared under the name meanwhile: never replaced
            // without `force`.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(ClientError::LocalExists(local.to_owned()).into())
            }
            Err(e) => Err(local_err(local)(e).into()),
        }
    }

    /// Downloads `remote` into `dst` (e.g. stdout), written and hashed on
    /// a blocking thread while the next bytes arrive: no partial file, no
    /// resume; the checksum is verified at the end, after the data was
    /// written, and a mismatch is reported as an error.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), and write errors of `dst`.
    pub async fn get_to_writer<W: std::io::Write + Send + 'static>(
        &mut self,
        remote: &str,
        dst: W,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        // A stream has no holes: the body comes whole (`sparse` unasked).
        let get = Get { path: remote.to_owned(), offset: 0, prefix_blake3: None, sparse: false, basis: None };
        self.session.send(&get, &[]).await?;
        let FileReply { size, .. } = self.answer().await?;
        let mut at = Progress { size, resumed: 0, done: 0 };
        let written = receive_body(self.session.reader(), dst, blake3::Hasher::new(), &mut |n| {
            at.done = n;
            progress(at);
        })
        .await?;
        let (_, hash) = match written {
            Ok(done) => done,
            Err(e) => {
                self.session.abandon().await;
                return Err(wire::Error::Io(e).into());
            }
        };
        let Checksum { blake3: expected } = self.answer().await?;
        let got = hash.to_hex().to_string();
        if got != expected {
            return Err(ClientError::ChecksumMismatch { path: remote.to_owned(), expected, got });
        }
        Ok(Transfer { size, resumed: 0, blake3: got, matched: 0 })
    }

    /// Uploads the local file `local` to `remote`.
    ///
    /// The server writes to a partial file, verifies the whole-file BLAKE3,
    /// syncs and renames into place; a cut upload leaves nothing under the
    /// final name, and the next upload of the same file sends only the rest
    /// (after checking the server's partial is the start of this file).
    ///
    /// # Errors
    ///
    /// Local I/O errors (a read that fails mid-transfer, e.g. the file
    /// shrank, closes this connection: open a new `Client`); the server's
    /// refusal ([`crate::ErrorCode::Exists`] without `force`,
    /// [`crate::ErrorCode::ChecksumMismatch`],
    /// [`crate::ErrorCode::DiskFull`], …); wire errors.
    pub async fn put(
        &mut self,
        local: &Path,
        remote: &str,
        options: &TransferOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        let file = open_to_send(local).map_err(local_err(local))?;
        self.put_file(file, local, remote, options, progress).await
    }

    /// [`put`](Self::put) of `file`, opened already (a tree copy opens it
    /// beneath its source tree), shown as `local`.
    pub(super) async fn put_file(
        &mut self,
        file: std::fs::File,
        local: &Path,
        remote: &str,
        options: &TransferOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        self.put_file_sampled(file, (local, remote), options, true, progress).await
    }

    /// [`put_file`](Self::put_file), with a sample for a likely append
    /// (`appends`) where the server's file is shorter.
    async fn put_file_sampled(
        &mut self,
        file: std::fs::File,
        (local, remote): (&Path, &str),
        options: &TransferOptions,
        appends: bool,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, ClientError> {
        let meta = file.metadata().map_err(local_err(local))?;
        if let Some((kind, why)) = not_regular(&meta) {
            return Err(ClientError::Local { path: local.to_owned(), source: std::io::Error::new(kind, why) });
        }
        let size = meta.len();
        let mode = meta.permissions().mode() & 0o777;
        let stamp = crate::services::files::Stamp::of_meta(&meta);
        let (mtime, mtime_ns) = (Some(stamp.wire_secs()), stamp.fraction_ns());
        let backup = options.backup.clone();
        let asked = backup.is_some();
        // A delta, where the receiver holds an older version worth one:
        // with a sample of our bytes where its file ends, if it is
        // shorter, for it to tell a likely append.
        // A file too small for a delta costs no stat to find out.
        let held = if size >= delta::DELTA_MIN { self.other_len(remote, options).await? } else { None };
        let (file, ask) = match held {
            Some(held) if delta::worth(held, size) => {
                let (file, append) = spawn_blocking(move || {
                    let append = (appends && held < size).then(|| crate::proto::Sample::of(&file, held)).transpose();
                    (file, append)
                })
                .await
                .map_err(join_err)?;
                let append = append.map_err(local_err(local))?;
                // A short tail: the append trusted to the sample, checked by
                // the checksum (the server answers without reading its file).
                let trust = append.is_some() && size - held <= delta::TRUSTED_TAIL;
                // The server's signature streamed while it is cut.
                (file, Some(crate::proto::DeltaAsk { append, trust, stream: true }))
            }
            _ => (file, None),
        };
        // Our file cut as the server's signature will be, started now:
        // while the server indexes its older version, not after (the two
        // sides' reading at once, on two cores). Dropped unused if the
        // answer is an append or no basis.
        let early = match (held, &ask) {
            (Some(held), Some(_)) if self.shared_reads.is_none() => {
                let file = file.try_clone().map_err(local_err(local))?;
                Some(EarlyCut::start(file, size, crate::delta::Layout::for_sizes(held, size), held))
            }
            _ => None,
        };
        let put = Put {
            path: remote.to_owned(),
            size,
            force: options.force,
            mode: Some(mode),
            mtime,
            mtime_ns,
            backup,
            delta: ask.clone(),
        };
        self.session.send(&put, &[]).await?;
        let PutReady { offset, prefix_blake3, backup: kept, sparse, basis } = self.answer().await?;
        if asked && !kept {
            // The body cannot be left unsent on this connection.
            self.session.abandon().await;
            return Err(ClientError::NoBackups);
        }
        if let Some(basis) = basis {
            let Some(ask) = ask else {
                self.session.abandon().await;
                return Err(ClientError::Unexpected { expected: "put_ready without a basis", got: "a basis".into() });
            };
            let again = file.try_clone().map_err(local_err(local))?;
            let held = (offset, prefix_blake3);
            match self.put_delta(file, (local, size), held, (basis, ask, early), progress).await {
                Ok(done) => return Ok(done),
                // Built wrong, or from a file that changed meanwhile: sent
                // again whole, on the same connection.
                Err(Retry::Whole) => {
                    let whole = TransferOptions { delta: DeltaMode::Never, ..options.clone() };
                    return Box::pin(self.put_file(again, local, remote, &whole, progress)).await;
                }
                // A trusted append that was not one: a delta as any
                // other file's (whole, if that fails too).
                Err(Retry::NoAppend) => {
                    return Box::pin(self.put_file_sampled(again, (local, remote), options, false, progress)).await;
                }
                Err(Retry::Failed(e)) => return Err(e),
            }
        }
        // No basis offered (a server older than deltas, a key that may not
        // read the file): the early cut stops before the body goes.
        drop(early);
        let shared = self.shared_reads.clone();
        let sender = spawn_blocking(move || {
            let mut sender = Sender::resume(file, size, offset, prefix_blake3.as_deref(), Unproven::StartOver)?;
            if sparse {
                sender.find_holes()?;
            }
            if let Some(reads) = shared {
                sender.share(&reads)?;
            }
            Ok::<_, std::io::Error>(sender)
        })
        .await
        .map_err(join_err)?
        .map_err(local_err(local))?;
        let from = sender.start();
        self.session.feed_head(&PutData { len: sender.body_len(), offset: from, holes: sender.holes() })?;
        // The server may refuse before the body is through (a write
        // failed on its side): listen while sending, and stop at once if
        // it does.
        let mut report = |done| progress(Progress { size, resumed: from, done });
        let outcome = {
            let (reader, mut writer) = self.session.halves();
            let sending = sender.send(writer.body(), &mut report);
            let answer = reader.read_head::<Answer<PutDone>>();
            tokio::select! {
                sent = sending => Ok(sent),
                early = answer => Err(early),
            }
        };
        let sent = match outcome {
            Ok(sent) => sent,
            Err(early) => {
                self.session.abandon().await;
                return Err(early_answer(early?));
            }
        };
        let hash = match sent {
            Ok(Some(hash)) => hash,
            // The sender hashes unless told the hash is known.
            Ok(None) => {
                return Err(ClientError::Local { path: local.to_owned(), source: std::io::Error::other("no hash") })
            }
            Err(SendError::File(source)) => {
                // The body is cut short: the connection cannot go on.
                self.session.abandon().await;
                return Err(ClientError::Local { path: local.to_owned(), source });
            }
            Err(SendError::Wire(e)) => return Err(e.into()),
        };
        let hash = hash.to_hex().to_string();
        self.session.send(&Checksum { blake3: hash.clone() }, &[]).await?;
        let PutDone { .. } = self.answer().await?;
        Ok(Transfer { size, resumed: from, blake3: hash, matched: 0 })
    }

    /// The body of an upload as a delta from the server's older version
    /// (`basis`, answering `ask`), from where what it holds of an earlier
    /// attempt (`held`: its length and hash) leaves off, if that is the
    /// start of this file.
    async fn put_delta(
        &mut self,
        file: std::fs::File,
        (local, size): (&Path, u64),
        (offset, prefix_blake3): (u64, Option<String>),
        (basis, ask, early): (crate::proto::Basis, crate::proto::DeltaAsk, Option<EarlyCut>),
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, Retry> {
        let (file, plan) = if basis.append {
            // No signature to compare with (yet): the early cut stops.
            drop(early);
            if ask.append.as_ref().is_none_or(|p| p.len != basis.len) {
                self.session.abandon().await;
                let got = format!("an append to {} bytes", basis.len);
                return Err(ClientError::Unexpected { expected: "an append to the sample we sent", got }.into());
            }
            // Trusted (we asked so, and a short tail is at stake): the
            // checksum alone tells, whether or not the server sent its
            // hash (from its cache): checking it would hash our prefix
            // before the tail goes.
            if ask.trust {
                let plan = delta::Plan::Append(basis.len, None);
                return self.send_delta(file, (local, size), (offset, prefix_blake3), plan, progress).await;
            }
            // Likely an append: sure if our first bytes hash as its file
            // does; if not (the same last bytes, others before), its
            // signature after all.
            let (len, theirs) = (basis.len, basis.blake3.clone().unwrap_or_default());
            let (file, same) = spawn_blocking(move || {
                let mut file = file;
                let ours = crate::services::files::hash_prefix(&mut file, len).ok();
                let same = ours.filter(|h| h.finalize().to_hex().as_str() == theirs);
                (file, same)
            })
            .await
            .map_err(join_err)?;
            // The file's hash goes on from there: its prefix is not read
            // again.
            if let Some(prefix) = same {
                (file, delta::Plan::Append(len, Some(Box::new(prefix))))
            } else {
                self.session.send(&crate::proto::SignatureWanted {}, &[]).await?;
                let PutReady { basis: again, .. } = self.answer().await?;
                match again {
                    // It could not index its file: every byte is sent.
                    Some(b) if b.append => (file, delta::Plan::Fresh),
                    Some(b) if b.pipelined && self.guides(&b, None) => {
                        let held = (offset, prefix_blake3);
                        return self.send_guided(file, (local, size), held, &b, progress).await;
                    }
                    Some(b) => self.against_signature(file, local, size, &b, None).await?,
                    None => {
                        self.session.abandon().await;
                        let got = "put_ready without a basis".into();
                        return Err(ClientError::Unexpected { expected: "a signature", got }.into());
                    }
                }
            }
        } else if basis.pipelined && self.guides(&basis, early.as_ref()) {
            drop(early);
            return self.send_guided(file, (local, size), (offset, prefix_blake3), &basis, progress).await;
        } else {
            self.against_signature(file, local, size, &basis, early).await?
        };
        if let Err(e) = plan.check(size) {
            self.session.abandon().await;
            return Err(ClientError::Unexpected { expected: "a signature that fits", got: e.to_string() }.into());
        }
        self.send_delta(file, (local, size), (offset, prefix_blake3), plan, progress).await
    }

    /// Whether an upload against `basis` is cut guided by its entries (and
    /// sent while they come, [`send_guided`](Self::send_guided), where
    /// the server says it reads the ops before the signature's end: the
    /// basis is `pipelined`; else once it has ended): chunks
    /// of a signature streamed as it is made, or of one made already with
    /// no early cut (a counted one comes only once the server has cut its
    /// whole file: the early cut, begun with the request, is further on
    /// by then); not for a fan-out, whose copies cut and hash the file
    /// once for all.
    fn guides(&self, basis: &crate::proto::Basis, early: Option<&EarlyCut>) -> bool {
        let chunks = matches!(basis.layout, Some(crate::delta::Layout::Chunks(_)));
        let early = early.filter(|e| Some(e.layout) == basis.layout && e.held == basis.len);
        self.shared_reads.is_none() && chunks && (basis.streamed || early.is_none())
    }

    /// The layout of the server's signature (`basis`, for our file of
    /// `size` bytes), if it is the one the sizes call for; else the
    /// connection, out of step, is abandoned.
    async fn layout_of(&mut self, basis: &crate::proto::Basis, size: u64) -> Result<crate::delta::Layout, Retry> {
        let fits = |l: &crate::delta::Layout| {
            let entries = basis.count > 0 || basis.streamed;
            delta::layout_fits(*l, basis.len, size).is_ok() && entries && delta::worth(basis.len, size)
        };
        match basis.layout.filter(fits) {
            Some(layout) => Ok(layout),
            None => {
                self.session.abandon().await;
                let got = format!("{:?} for {} and {size} bytes", basis.layout, basis.len);
                Err(ClientError::Unexpected { expected: "a signature cut as the sizes say", got }.into())
            }
        }
    }

    /// An upload sent while the server's signature (`basis`, its frames
    /// next on the connection) still comes ([`delta::send_guided`]): our
    /// file cut guided by its entries and hashed in the same pass, each
    /// run sent once sure, so the server builds while it still cuts.
    async fn send_guided(
        &mut self,
        file: std::fs::File,
        (local, size): (&Path, u64),
        (offset, prefix_blake3): (u64, Option<String>),
        basis: &crate::proto::Basis,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, Retry> {
        self.layout_of(basis, size).await?;
        let mut report = |resumed, done| progress(Progress { size, resumed, done });
        let read = delta::send_guided::<_, Answer<PutDone>>(
            &mut self.session,
            (basis, basis.streamed),
            (file, size),
            (offset, prefix_blake3),
            &mut report,
        );
        let delta::GuidedSent { theirs, sent: (from, sent), early } = read.await;
        if let Some(early) = early {
            self.session.abandon().await;
            return Err(early_answer(early?).into());
        }
        match theirs {
            // A streamed signature the server could not finish: what was
            // not sent went as data.
            Some(Ok(()) | Err(delta::DeltaFailed::NoSignature)) => {}
            // Refused in the signature's place (a write failed there):
            // the ops sent leave the connection out of step.
            Some(Err(delta::DeltaFailed::Refused(e))) => {
                self.session.abandon().await;
                return Err(ClientError::from(e).into());
            }
            Some(Err(e)) => {
                let failed = self.signature_failed(e).await;
                // Ops went: the connection is out of step whatever failed.
                self.session.abandon().await;
                return Err(failed);
            }
            // Not read to its end: the ops stopped first, and `sent` says
            // why (below).
            None => {}
        }
        let sent = match sent {
            Ok(sent) => sent,
            Err(delta::DeltaFailed::Wire(e)) => {
                self.session.abandon().await;
                return Err(e.into());
            }
            Err(e) => {
                // The frames cannot be finished: the connection cannot go on.
                self.session.abandon().await;
                return Err(ClientError::Local { path: local.to_owned(), source: std::io::Error::other(e) }.into());
            }
        };
        self.checked(sent, size, from, false).await
    }

    /// The plan of an upload against the server's signature (`basis`, its
    /// frames next on the connection), our file cut while they come (the
    /// early cut, whose whole-file hash is made after the ops), or taken
    /// from the copies of a fan-out, which cut and hash it once for all.
    async fn against_signature(
        &mut self,
        file: std::fs::File,
        local: &Path,
        size: u64,
        basis: &crate::proto::Basis,
        early: Option<EarlyCut>,
    ) -> Result<(std::fs::File, delta::Plan), Retry> {
        let layout = self.layout_of(basis, size).await?;
        let shared = self.shared_reads.clone();
        // Cut guided by the entries as they come, and hashed in the same
        // pass; the ops sent once the signature has ended (a server that
        // does not say it reads them before).
        if self.guides(basis, early.as_ref()) {
            drop(early);
            let read = delta::read_guiding(&mut self.session, (basis, basis.streamed), (file, size), true);
            let (theirs, ours) = read.await;
            let (file, made) = match ours {
                Ok(got) => got,
                // The cut's thread failed: the file is lost to this put.
                Err(e) => {
                    self.session.abandon().await;
                    let source = std::io::Error::other(e);
                    return Err(ClientError::Local { path: local.to_owned(), source }.into());
                }
            };
            match theirs {
                Ok(()) => {}
                // A streamed signature the server could not finish: every
                // byte goes, as new data.
                Err(delta::DeltaFailed::NoSignature) => return Ok((file, delta::Plan::Fresh)),
                Err(e) => return Err(self.signature_failed(e).await),
            }
            return match made {
                Ok((pieces, hash)) => Ok((file, delta::Plan::Pieces(pieces, Some(hash)))),
                // A file the layout would cut into more chunks than the
                // engine takes (the layout was checked): it goes whole,
                // as data.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok((file, delta::Plan::Fresh)),
                Err(source) => {
                    self.session.abandon().await;
                    Err(ClientError::Local { path: local.to_owned(), source }.into())
                }
            };
        }
        // The early cut, if it is the one the signature takes.
        let early = early.filter(|e| e.layout == layout && e.held == basis.len);
        let chunking = async move {
            match early {
                Some(early) => early.finish(file).await,
                None => Ok(chunks_of(shared, file, size, layout)
                    .await?
                    .map(|(file, (sig, hash))| (file, (sig, Some(hash))))),
            }
        };
        let (theirs, ours) = tokio::join!(delta::read_offered(&mut self.session, basis), chunking);
        let theirs = match theirs {
            Ok(sig) => sig,
            // A streamed signature the server could not finish, for a cut
            // not guided (blocks, a fan-out's): every byte goes, as new
            // data, once the cut that had begun hands the file back.
            Err(delta::DeltaFailed::NoSignature) => {
                let file = match ours? {
                    Ok((file, _)) => file,
                    Err(source) => {
                        self.session.abandon().await;
                        return Err(ClientError::Local { path: local.to_owned(), source }.into());
                    }
                };
                return Ok((file, delta::Plan::Fresh));
            }
            Err(e) => return Err(self.signature_failed(e).await),
        };
        let (file, (ours, hash)) = match ours? {
            Ok(done) => done,
            Err(source) => {
                self.session.abandon().await;
                return Err(ClientError::Local { path: local.to_owned(), source }.into());
            }
        };
        match crate::delta::diff(&theirs, &ours) {
            Ok(pieces) => Ok((file, delta::Plan::Pieces(pieces, hash))),
            Err(e) => Err(self.misfit(e.to_string()).await),
        }
    }

    /// A server's signature that could not be read: the connection's
    /// error, or a signature that breaks the protocol ([`misfit`]).
    ///
    /// [`misfit`]: Self::misfit
    async fn signature_failed(&mut self, why: delta::DeltaFailed) -> Retry {
        match why {
            delta::DeltaFailed::Wire(e) => e.into(),
            delta::DeltaFailed::Closed => ClientError::Closed.into(),
            why => self.misfit(why.to_string()).await,
        }
    }

    /// A server's signature that does not fit the files (`got` says how):
    /// the connection, out of step, is abandoned.
    async fn misfit(&mut self, got: String) -> Retry {
        self.session.abandon().await;
        ClientError::Unexpected { expected: "a signature that fits", got }.into()
    }

    /// The body of an upload as a delta made by `plan`, from where what
    /// the server holds of an earlier attempt (`held`: its length and
    /// hash) leaves off, if that is the start of this file.
    async fn send_delta(
        &mut self,
        file: std::fs::File,
        (local, size): (&Path, u64),
        (offset, prefix_blake3): (u64, Option<String>),
        plan: delta::Plan,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Transfer, Retry> {
        let trusted = matches!(plan, delta::Plan::Append(_, None));
        // Resumed only if what the server holds is the start of this file.
        let (file, from) = spawn_blocking(move || {
            let from = delta::resume_offset(&file, size, (offset, prefix_blake3.as_deref()));
            (file, from)
        })
        .await
        .map_err(join_err)?;
        self.session.send(&crate::proto::PutDelta { offset: from }, &[]).await?;
        let mut report = |done| progress(Progress { size, resumed: from, done });
        let outcome = {
            let (reader, mut writer) = self.session.halves();
            let sending = delta::send_ops(&mut writer, file, size, plan, from, &mut report);
            let answer = reader.read_head::<Answer<PutDone>>();
            tokio::select! {
                sent = sending => Ok(sent),
                early = answer => Err(early),
            }
        };
        let sent = match outcome {
            Ok(Ok(sent)) => sent,
            Ok(Err(delta::DeltaFailed::Wire(e))) => return Err(e.into()),
            Ok(Err(e)) => {
                // The frames cannot be finished: the connection cannot go on.
                self.session.abandon().await;
                return Err(ClientError::Local { path: local.to_owned(), source: std::io::Error::other(e) }.into());
            }
            Err(early) => {
                self.session.abandon().await;
                return Err(early_answer(early?).into());
            }
        };
        self.checked(sent, size, from, trusted).await
    }

    /// The checksum of a delta upload sent (`sent`, of a file of `size`
    /// bytes from `from`), and the server's answer: on a mismatch, the
    /// retry it calls for (`trusted`: after an append trusted to its
    /// sample).
    async fn checked(&mut self, sent: delta::Sent, size: u64, from: u64, trusted: bool) -> Result<Transfer, Retry> {
        let hash = sent.hash.to_hex().to_string();
        self.session.send(&Checksum { blake3: hash.clone() }, &[]).await?;
        match self.answer::<PutDone>().await {
            Ok(_) => Ok(Transfer { size, resumed: from, blake3: hash, matched: sent.matched }),
            Err(ClientError::Remote { code: crate::proto::ErrorCode::ChecksumMismatch, .. }) if trusted => {
                Err(Retry::NoAppend)
            }
            Err(ClientError::Remote { code: crate::proto::ErrorCode::ChecksumMismatch, .. }) => Err(Retry::Whole),
            Err(e) => Err(e.into()),
        }
    }
}
