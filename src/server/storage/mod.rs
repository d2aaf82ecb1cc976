//! The storage seam: what a file request needs of the root it is served
//! from, at the level of transfer steps, so that each request is written
//! once for a local directory and for a bucket (DESIGN.md, "The storage
//! seam").
//!
//! Steps, not bytes: a download is *opened* (its head decided: where the
//! body starts, what is known of its hash) and then *sent*; an upload is
//! *admitted* (the path claimed, what is held offered), *agreed* (the
//! client's offset), *received*, and *finished* (verified against the
//! client's checksum, then committed), or *kept* for a resume. How each
//! step is done stays the storage's own: a directory keeps `sendfile`,
//! `flock`'d partial files and its hash cache; a bucket keeps ranged reads
//! of one object version, multipart uploads and conditional writes. A
//! byte-level trait (a reader and a writer per file) would box both and
//! lose the first.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use tokio::task::spawn_blocking;

use std::collections::VecDeque;

use futures_util::Stream;
use tokio::sync::mpsc::Sender;

use crate::proto::{
    Backup, Checksum, Entry, FileReply, Get, ListingSkip, ManifestEntry, TreePutInput, Want, TREE_PART_ENTRIES,
    TREE_PART_MAX,
};
use crate::services::files::{Listing, Sandbox};
use crate::services::{Fault, PathRule};
use crate::session::{ServerSide, Session};
use crate::transport::BoxRead;
use crate::wire::{Error, FrameReader};

pub(in crate::server) type S = Session<ServerSide>;

#[cfg(feature = "s3")]
pub(in crate::server) mod bucket;
pub(in crate::server) mod dir;
pub(in crate::server) mod guard;

pub(in crate::server) use dir::Dir;

/// `base/rel`, or `rel` when `base` is the root.
pub(in crate::server) fn join(base: &str, rel: &str) -> String {
    let base = base.trim_matches('/');
    if base.is_empty() || base == "." {
        rel.to_owned()
    } else {
        format!("{base}/{rel}")
    }
}

/// A manifest path must be plain: relative, `/`-separated, no empty, `.`
/// or `..` component, not a partial file's name. The sandbox refuses
/// escapes again when the path is opened; this refuses what is not a
/// tree's path at all.
pub(in crate::server) fn plain(path: &str) -> Result<(), Fault> {
    let ok = !path.is_empty()
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && crate::services::names::is_canonical(path)
        && !crate::services::root::is_partial_name(path.rsplit('/').next().unwrap_or("").as_bytes());
    if ok {
        Sandbox::relative(path).map(|_| ())
    } else {
        Err(Fault::bad_path(path, PathRule::NotPlain))
    }
}

/// Runs blocking file work off the async threads.
pub(in crate::server) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fault> + Send + 'static,
) -> Result<T, Fault> {
    spawn_blocking(f).await.unwrap_or_else(|e| Err(Fault::Internal { what: format!("file task failed: {e}") }))
}

/// A served root, as the file requests see it.
pub(in crate::server) trait Storage: Sync {
    /// A download, opened.
    type Download: Download;
    /// An upload, admitted.
    type Upload: Upload;
    /// A `tree_put`'s files, decided, received and put in place.
    type Sink: TreeSink;
    /// Whether a file's permission bits are kept.
    const KEEPS_MODES: bool;
    /// What a cut upload leaves, as its log line says.
    const CUT_KEEPS: &'static str;
    /// Whether it keeps backups of what uploads replace (`backup` in
    /// `put` and `tree_put`); one that does not refuses them.
    const KEEPS_BACKUPS: bool;
    /// Whether it keeps owners, extended attributes and special files
    /// (where it runs as root, for the first and last).
    const KEEPS_ATTRS: bool;
    /// Whether it takes bodies with holes and writes files sparse.
    const KEEPS_HOLES: bool;
    /// Whether its streamed trees carry deltas (PROTOCOL.md §4.6.6.1): a
    /// bucket's do not (each older object would be copied to the
    /// server's disk for a file of at most 1 MiB).
    const TREE_DELTAS: bool;

    fn stat(&self, path: &str) -> impl Future<Output = Result<Entry, Fault>> + Send;

    /// The entries `listing` asks for at `path`, each file with its BLAKE3
    /// if `blake3`; a file whose hash cannot be read fails the listing.
    fn list(
        &self,
        path: &str,
        listing: Listing,
        blake3: bool,
    ) -> impl Future<Output = Result<Vec<Entry>, Fault>> + Send;

    /// Whether it created the directory (`false`: it was there).
    fn mkdir(&self, path: &str, parents: bool) -> impl Future<Output = Result<bool, Fault>> + Send;

    /// Whether there was anything to remove.
    fn remove(&self, path: &str, recursive: bool) -> impl Future<Output = Result<bool, Fault>> + Send;

    fn rename(&self, from: &str, to: &str, force: bool) -> impl Future<Output = Result<(), Fault>> + Send;

    /// Opens the file a `get` asks for, deciding where its body starts
    /// (the client's offset, if its prefix is the start of this file).
    fn open(&self, request: Get) -> impl Future<Output = Result<Self::Download, Fault>> + Send;

    /// Walks the tree at `path` for a `tree_list`, handing `tx` its
    /// entries a frame's worth at a time ([`Chunker`]; directories before
    /// what is below them), each file with its BLAKE3 if `blake3` (one that
    /// cannot be read is listed without). A path below that cannot be read
    /// is a [`Part::Skip`] if `skips`, else the walk stops; a walk that
    /// stops ends with [`Part::Refused`]. Ends early, quietly, if `tx` is
    /// closed (the client left). With `meta`, symlinks too, exact times
    /// and hard links marked ([`Listing::Meta`]), where the root has them.
    fn walk(&self, path: &str, flags: WalkFlags, tx: Sender<Part>) -> impl Future<Output = ()> + Send;

    /// Opens the files a `tree_get` wants (`wants`, numbered, below
    /// `base`) in order, each ready to send or refused, a bounded number
    /// ahead of the one being sent (small ones read whole ahead).
    fn fetch(
        &self,
        base: &str,
        wants: VecDeque<(u64, Want)>,
        sparse: bool,
    ) -> impl Stream<Item = (u64, Result<Self::Download, Fault>)> + Send;

    /// Where a `tree_put`'s files are decided and go, keeping what they
    /// replace as `backup` says.
    fn tree_sink(&self, backup: Option<Backup>, covers: crate::services::attrs::Wanted) -> Self::Sink;

    /// Whether the connection may read what it uploads over: a delta
    /// upload shows it the signature of the file it replaces, so a key
    /// that may not `get` is never offered one.
    fn reads_allowed(&self) -> bool {
        true
    }

    /// Admits an upload of `size` bytes to `path`: claims the path (a
    /// second upload of it waits or is refused until this one ends),
    /// refuses an existing file without `force`, and takes up what an
    /// interrupted upload of it left. `kept` is the file's time and mode,
    /// as the request gives them (a store that fixes metadata when an
    /// upload starts takes them now).
    fn admit(
        &self,
        path: &str,
        size: u64,
        force: bool,
        kept: (Option<crate::services::files::Stamp>, Option<u32>),
    ) -> impl Future<Output = Result<Self::Upload, Fault>> + Send;
}

/// What a `tree_list` asks of its walk.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::server) struct WalkFlags {
    /// Each file's BLAKE3.
    pub blake3: bool,
    /// Unreadable paths skipped and reported, not ending the walk.
    pub skips: bool,
    /// Symlinks, exact times, hard links, special files.
    pub meta: bool,
    /// With `meta`: owners, extended attributes.
    pub wanted: crate::services::attrs::Wanted,
    /// With `meta`: symlinks to files inside the tree listed as those
    /// files (`-L`).
    pub copy_links: bool,
}

/// What a tree's walk hands the `tree_list` sender, in order.
pub(in crate::server) enum Part {
    /// Entries found (one `listing` frame).
    Entries(Vec<Entry>),
    /// A path that could not be read.
    Skip(ListingSkip),
    /// The walk stopped.
    Refused(Fault),
}

/// Cuts a listing into `listing` frames: at most [`TREE_PART_ENTRIES`]
/// entries, and about half of [`TREE_PART_MAX`] of JSON, a frame.
#[derive(Default)]
pub(in crate::server) struct Chunker {
    chunk: Vec<Entry>,
    bytes: u64,
}

impl Chunker {
    /// Adds `e`; a frame's worth when one is full.
    pub(in crate::server) fn push(&mut self, e: Entry) -> Option<Vec<Entry>> {
        let link = e.target.as_ref().or(e.link.as_ref()).map_or(0, String::len);
        self.bytes += (crate::proto::entry_weight(&e.name, e.attrs.as_deref()) + link) as u64;
        self.chunk.push(e);
        if self.chunk.len() >= TREE_PART_ENTRIES || self.bytes >= TREE_PART_MAX / 2 {
            self.bytes = 0;
            return Some(std::mem::take(&mut self.chunk));
        }
        None
    }

    /// What is left (perhaps nothing).
    pub(in crate::server) fn rest(self) -> Vec<Entry> {
        self.chunk
    }
}

/// A download, opened: its head, then its body and whole-file hash.
pub(in crate::server) trait Download: Send {
    /// What the `file` frame says (its `len` is the body's).
    fn head(&self) -> FileReply;

    /// Sends the body (the head fed already) and returns the whole file's
    /// BLAKE3. An error ends the connection: the frame promised its length.
    fn send(self, s: &mut S, shown: &str) -> impl Future<Output = Result<blake3::Hash, Error>> + Send;

    /// The file, to be read for a delta (PROTOCOL.md §4.6.6): a bucket's
    /// object is copied to the server's disk first, and then sent from
    /// that copy if it goes whole after all. `None`: no delta, the file
    /// goes whole (the body was read already, or there is no room for a
    /// copy). An error: the object could not be read, refused before
    /// anything is sent.
    fn delta_source(&mut self) -> impl Future<Output = Result<Option<std::fs::File>, Fault>> + Send {
        std::future::ready(Ok(None))
    }
}

/// One file a `tree_put` wants and has not received yet.
#[derive(Debug)]
pub(in crate::server) struct Needed {
    /// Its path below the root.
    pub path: String,
    pub size: u64,
    pub mtime: crate::services::files::Stamp,
    pub mode: u32,
    /// Whether it may replace what is there (decided, or `force`).
    pub replace: bool,
    /// The offset offered (bytes held from an earlier attempt).
    pub offset: u64,
    /// The owner and extended attributes to give it, as sent.
    pub attrs: Option<Box<crate::proto::Attrs>>,
    /// Holes its body leaves out (checked).
    pub holes: Option<Vec<[u64; 2]>>,
    /// Whether a partial file stood for it when it was decided.
    pub partial: bool,
    /// The length of the older version offered as its basis, while its
    /// body may come as a delta (PROTOCOL.md §4.6.6.1); `None` once a
    /// whole body comes.
    pub basis: Option<u64>,
}

/// A manifest entry decided: `None`, unchanged; else wanted, replacing
/// what is there or not, from an offset, with the BLAKE3 of what is held
/// before it, and whether a partial file stands for it (in a directory:
/// any, resumable or not, which the file then takes over; a bucket tells
/// only of one it resumes, and keeps no others).
pub(in crate::server) type Decision = Option<(bool, u64, Option<String>, bool)>;

/// A manifest entry and its decision: `(index, full path, entry, decision
/// or refusal)`.
pub(in crate::server) type Decided = (u64, String, ManifestEntry, Result<Decision, Fault>);

/// What became of a file a `tree_put` received.
pub(in crate::server) enum Got {
    /// Taken in, to be put in place with others (a batch, a background
    /// store), or the connection ended before its checksum (its partial
    /// data kept for a resume): a later [`TreeSink::settle`] says. `now`:
    /// settle at once (a large file is not kept waiting for a batch).
    Later { now: bool },
    /// In place (its size) or failed, now.
    Done(Result<u64, Fault>),
}

/// What became of a file put in place: its manifest index, its path, its
/// size or why it failed.
pub(in crate::server) type Settled = (u64, String, Result<u64, Fault>);

/// A `tree_put` as the storage sees it: a manifest frame's entries
/// decided against what is there, each wanted file received, and the
/// files put in place, reported as they are. The conversation (frames,
/// counts, bounds, reports) is the handler's.
pub(in crate::server) trait TreeSink: Send {
    /// Whether every settle that put files in place is reported at once
    /// (a batch committed), rather than every [`REPORT_EVERY`] files.
    const REPORT_EACH_SETTLE: bool;

    /// Decides the entries of one manifest frame (`(index, full path,
    /// entry)`, each plain and held once). An error refuses the frame.
    fn decide(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> impl Future<Output = Result<Vec<Decided>, Fault>> + Send;

    /// Receives file `i` (its `tree_file` head checked: `len` bytes from
    /// `offset`), its body and its checksum. An error ends the connection.
    fn receive(
        &mut self,
        s: &mut S,
        i: u64,
        need: &Needed,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Got, Error>> + Send;

    /// What has been put in place (or failed) since the last call: with
    /// `all`, everything taken in, waited for.
    fn settle(&mut self, all: bool) -> impl Future<Output = Vec<Settled>> + Send;

    /// The older versions of wanted files (`(index, full path, new
    /// size)`, each under [`TREE_DELTA_MAX`](crate::session::delta::TREE_DELTA_MAX))
    /// worth offering as bases, with their signatures, within
    /// [`TREE_SIGNATURE_ENTRIES`](crate::session::delta::TREE_SIGNATURE_ENTRIES)
    /// in all. None by default.
    fn offer_bases(
        &mut self,
        files: Vec<(u64, String, u64)>,
    ) -> impl Future<Output = Vec<(u64, crate::proto::Basis, std::sync::Arc<crate::delta::Signature>)>> + Send {
        drop(files);
        std::future::ready(Vec::new())
    }

    /// Applies entries without data (a `meta` request: symlinks, hard
    /// links, directories' attributes), in order, once every file taken
    /// in so far is in place: for each, whether it changed anything
    /// (`false`: it was so already), or why not.
    fn apply(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> impl Future<Output = Vec<(u64, String, Result<bool, Fault>)>> + Send;
}

/// A `tree_put` reports what it stored at least every this many files.
pub(in crate::server) const REPORT_EVERY: usize = 256;

/// Reads the checksum that follows a `tree_file` body; `None` after the
/// connection ended (or was refused and is closing).
pub(in crate::server) async fn read_checksum(s: &mut S) -> Result<Option<String>, Error> {
    match s.read::<TreePutInput>().await {
        Ok(Some((TreePutInput::Checksum(Checksum { blake3 }), _))) => Ok(Some(blake3)),
        Ok(Some((other, _))) => {
            s.refuse_and_close(format!("expected checksum after tree_file, got {}", other.kind())).await.map(|()| None)
        }
        Ok(None) => Ok(None),
        Err(e) if e.is_recoverable() => s.refuse_and_close(format!("bad checksum: {e}")).await.map(|()| None),
        Err(e) => Err(e),
    }
}

/// A file of a `tree_put` that cannot be received: its body and checksum
/// read past to stay in step, and `r` its outcome.
pub(in crate::server) async fn skip_file(s: &mut S, r: Fault) -> Result<Got, Error> {
    s.reader().skip_body().await?;
    read_checksum(s).await?;
    Ok(Got::Done(Err(r)))
}

/// A file of a `tree_put` sent as a delta that cannot be received (its
/// partial file cannot be had): its ops read past, each checked as a
/// patch would (so that what follows is known to be the next frame), and
/// its checksum, and `r` its outcome.
pub(in crate::server) async fn skip_delta(
    s: &mut S,
    need: &Needed,
    old_len: u64,
    offset: u64,
    r: Fault,
) -> Result<Got, Error> {
    let mut patcher = crate::delta::Patcher::resuming(old_len, need.size, offset);
    while patcher.written() < need.size {
        let Some(_) = s.read::<crate::proto::DeltaFrame>().await? else { return Ok(Got::Done(Err(r))) };
        let body = s.reader().read_body(crate::session::delta::DELTA_FRAME_MAX).await?;
        let checked = crate::delta::Op::decode_all(&body).and_then(|ops| {
            if ops.is_empty() {
                return Err(crate::delta::DeltaError::EmptyOp);
            }
            ops.iter().try_for_each(|op| patcher.apply(op).map(drop))
        });
        if let Err(e) = checked {
            s.refuse_and_close(format!("bad delta: {e}")).await?;
            return Err(Error::Io(std::io::Error::other("a bad delta in a tree_put")));
        }
    }
    read_checksum(s).await?;
    Ok(Got::Done(Err(r)))
}

/// The fault of a file whose data does not hash to the client's checksum.
pub(in crate::server) fn mismatch(path: &str, got: &str, claimed: &str) -> Fault {
    Fault::ChecksumMismatch { path: path.to_owned(), got: got.to_owned(), claimed: claimed.to_owned() }
}

/// What is `there` (a directory's or a bucket's entry) means for a
/// manifest entry: `None`, unchanged; `Some(replace)`, wanted, replacing
/// what is there or not. `same_content` is asked only when the entry has
/// a BLAKE3 and the sizes agree.
pub(in crate::server) fn judge(
    full: &str,
    there: Option<&Entry>,
    same_content: impl FnOnce() -> Result<bool, Fault>,
    e: &ManifestEntry,
    force: bool,
) -> Result<Option<bool>, Fault> {
    use crate::proto::Kind;
    use crate::services::sync::{self, Held, Same, Verdict};
    let held = match there {
        None => Held::Nothing,
        Some(t) if t.kind == Kind::Dir => Held::Dir,
        Some(t) if t.kind == Kind::File => Held::File { size: t.size, mtime: t.mtime },
        Some(_) => Held::Other,
    };
    // Reading the receiver's hash may fail: that failure is the answer.
    let mut failed = None;
    let same = || match &e.blake3 {
        Some(_) if matches!(held, Held::File { size, .. } if size == e.size) => match same_content() {
            Ok(same) => Same::Known(same),
            Err(r) => {
                failed = Some(r);
                Same::Known(false)
            }
        },
        Some(_) => Same::Known(false),
        // The sender compared already (by checksum, perhaps) and found
        // them different: no quick check overrides it.
        None if e.replace => Same::Known(false),
        None => Same::Unknown,
    };
    // `replace` in an entry asks for this one file what `force` asks for
    // all. An entry without it named a path the sender saw empty (or
    // older): what appeared there meanwhile is replaced only if older, as
    // `--update` would (the sender's own rule was applied to what it saw).
    let verdict = sync::decide(held, (e.size, e.mtime), same, sync::Existing::Update, force || e.replace);
    if let Some(r) = failed {
        return Err(r);
    }
    let path = full.to_owned();
    match verdict {
        Verdict::Send { replace } => Ok(Some(replace)),
        Verdict::Unchanged | Verdict::Kept => Ok(None),
        Verdict::IsDir => Err(Fault::IsADirectory { path }),
        Verdict::NotOlder => Err(Fault::NotOlder { path }),
        Verdict::NotAFile => Err(Fault::NotAFile { path }),
    }
}

/// Why a body was not received whole.
pub(in crate::server) enum NotReceived {
    /// The connection failed or was cut: what arrived is kept for a resume.
    Cut(Error),
    /// The storage failed; the rest of the body is left unread.
    Write(Fault),
    /// The client broke the protocol (a delta that does not fit the
    /// files): answered, and the connection closed.
    Bad(String),
    /// The older version a delta was built from changed meanwhile: the
    /// file could not be built (nothing kept; the client sends it whole).
    Stale(String),
}

/// Why a received upload was not committed.
pub(in crate::server) enum NotFinished {
    /// The data hashes to this (hex), not to the client's checksum:
    /// nothing was kept.
    Mismatch(String),
    Refused(Fault),
}

/// An upload, admitted.
pub(in crate::server) trait Upload: Send + Sized {
    /// Its body, received whole and not yet verified.
    type Body: Body;

    /// Where the body may start, and the BLAKE3 of what is held before it.
    fn offer(&self) -> (u64, Option<String>);

    /// Bytes held from an earlier attempt.
    fn held(&self) -> u64;

    /// Whether the client's body may start at `offset`. An error ends
    /// the connection.
    fn agree(&mut self, offset: u64) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The body (agreed already) leaves out `holes` (checked) of the file
    /// of `size` bytes: whether this upload takes them (only a storage
    /// that [`Storage::KEEPS_HOLES`]).
    fn holes(&mut self, holes: Option<Vec<[u64; 2]>>, size: u64) -> bool;

    /// Given up before a body came: a new partial file is not left empty;
    /// held data stays for a resume.
    fn abandon(self) -> impl Future<Output = ()> + Send;

    /// Receives the body frame's bytes, until the body ends or `cut`.
    fn receive(
        self,
        s: &mut S,
        cut: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Body, NotReceived>> + Send;

    /// The older version of the file, for a delta upload of `size` bytes
    /// the client `ask`ed for (PROTOCOL.md §4.6.6): what `put_ready`
    /// says of it and, unless the new file is an append, its signature,
    /// made already or to be cut by the caller (whole, or while it is
    /// sent). The upload keeps it open for
    /// [`receive_delta`](Self::receive_delta). `None`: nothing worth a
    /// delta there (the upload goes whole).
    fn basis(
        &mut self,
        ask: &crate::proto::DeltaAsk,
        size: u64,
    ) -> impl Future<Output = Option<(crate::proto::Basis, Option<crate::session::delta::Signed>)>> + Send {
        let _ = (ask, size);
        std::future::ready(None)
    }

    /// Receives the body as `delta` frames built from the
    /// [`basis`](Self::basis), from the agreed offset until the file of
    /// `size` bytes is whole, or the session's cut-off (`until`, with
    /// what says whether the signature still goes: the ops may come
    /// before its end, and no idle limit applies until then).
    fn receive_delta(
        self,
        reader: &mut FrameReader<BoxRead>,
        until: (&CancellationToken, crate::session::delta::Patience),
        size: u64,
    ) -> impl Future<Output = Result<Self::Body, NotReceived>> + Send {
        let _ = (reader, until, size);
        drop(self);
        std::future::ready(Err(NotReceived::Bad("put_delta where no basis was offered".to_owned())))
    }
}

/// What a delta upload that stopped means (PROTOCOL.md §4.6.6), for
/// every root: a cut connection keeps what was built for a resume, a bad
/// op ends the connection, an older version that changed in flight is
/// answered as a mismatch (the client sends the file whole), and a write
/// that failed on a full disk removes the partial file (it would only
/// keep the disk full).
pub(in crate::server) fn delta_not_received(
    (failed, patch): (crate::session::delta::DeltaFailed, Option<Box<crate::session::delta::Patch>>),
    path: &str,
) -> NotReceived {
    use crate::session::delta::DeltaFailed;
    match failed {
        DeltaFailed::Wire(e) => NotReceived::Cut(e),
        DeltaFailed::Closed => NotReceived::Cut(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
        DeltaFailed::Bad(e) => NotReceived::Bad(format!("bad delta: {e}")),
        DeltaFailed::BasisChanged(e) => NotReceived::Stale(e.to_string()),
        // Only a signature's reader meets these.
        DeltaFailed::NoSignature => NotReceived::Bad("no signature".to_owned()),
        DeltaFailed::Refused(e) => NotReceived::Bad(format!("an error frame in a delta: {}", e.message)),
        DeltaFailed::Io(e) => {
            if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
                if let Some(patch) = patch {
                    patch.discard();
                }
            }
            NotReceived::Write(Fault::io(path, e))
        }
    }
}

/// An upload's body, received whole.
pub(in crate::server) trait Body: Send + Sized {
    /// Verifies it against the client's `claimed` BLAKE3 (hex), then puts
    /// it in place with `mtime` and (where kept) `mode`, never over a file
    /// that appeared meanwhile without `force`, and keeping what it
    /// replaces as `backup` says.
    fn finish(
        self,
        claimed: &str,
        meta: (Option<u32>, Option<crate::services::files::Stamp>),
        replacing: (bool, Option<Backup>),
    ) -> impl Future<Output = Result<(), NotFinished>> + Send;

    /// The client left before its checksum: what arrived is kept for a
    /// resume.
    fn keep(self) -> impl Future<Output = ()> + Send;
}
