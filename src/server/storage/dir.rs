//! A local directory as a [`Storage`]: paths resolved by descriptor
//! beneath the root, `sendfile` from the page cache, partial files under
//! `flock` beside their targets, and the hash cache.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use std::collections::VecDeque;

use futures_util::{Stream, StreamExt};

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;

use super::{
    blocking, join, judge, mismatch, plain, read_checksum, skip_delta, skip_file, Body, Chunker, Decided, Decision,
    Download, Got, Needed, NotFinished, NotReceived, Part, Settled, Storage, TreeSink, Upload, WalkFlags,
};
use crate::proto::{Backup, Basis, Entry, FileReply, Get, Kind, ListingSkip, ManifestEntry, Want, TREE_PART_ENTRIES};
use crate::server::context::HandlerError;
use crate::services::attrs;
use crate::services::files::{self, HashCache, Listing, Sandbox};
use crate::services::root::{FileId, Had};
use crate::services::{Fault, Refusal};
use crate::session::delta::{self as dt, SignatureCache};
use crate::session::{
    Batch, CommitError, Guard, Place, ReceiveError, Received, Receiver, Replace, SendError, Sender, ServerSide,
    Session, Unproven, UntilCut, SMALL_BODY,
};
use crate::transport::BoxRead;
use crate::wire::{Error, FrameReader};

type S = Session<ServerSide>;

/// A local directory, resolved by descriptor, and its hash cache.
#[derive(Clone, Copy)]
pub(in crate::server) struct Dir<'a> {
    pub sb: &'a Sandbox,
    pub hashes: &'a Arc<HashCache>,
    pub signatures: &'a Arc<SignatureCache>,
}

impl Storage for Dir<'_> {
    type Download = DirFile;
    type Upload = DirUpload;
    type Sink = DirSink;
    const KEEPS_MODES: bool = true;
    const KEEPS_BACKUPS: bool = true;
    const KEEPS_ATTRS: bool = true;
    const KEEPS_HOLES: bool = true;
    const TREE_DELTAS: bool = true;
    const CUT_KEEPS: &'static str = "the partial file is kept for a resume";

    async fn stat(&self, path: &str) -> Result<Entry, Fault> {
        let (sb, path) = (self.sb.clone(), path.to_owned());
        blocking(move || sb.stat(&path)).await
    }

    async fn list(&self, path: &str, listing: Listing, blake3: bool) -> Result<Vec<Entry>, Fault> {
        let (sb, hashes, path) = (self.sb.clone(), self.hashes.clone(), path.to_owned());
        blocking(move || {
            let mut entries = sb.list(&path, listing)?;
            if blake3 {
                add_hashes(&sb, &hashes, &path, &mut entries)?;
            }
            Ok(entries)
        })
        .await
    }

    async fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Fault> {
        let (sb, path) = (self.sb.clone(), path.to_owned());
        blocking(move || sb.mkdir(&path, parents)).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<bool, Fault> {
        let (sb, path) = (self.sb.clone(), path.to_owned());
        blocking(move || sb.remove(&path, recursive)).await
    }

    async fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Fault> {
        let (sb, from, to) = (self.sb.clone(), from.to_owned(), to.to_owned());
        blocking(move || sb.rename(&from, &to, force)).await
    }

    async fn open(&self, request: Get) -> Result<DirFile, Fault> {
        let (sb, hashes) = (self.sb.clone(), self.hashes.clone());
        let download = blocking(move || plan_download(&sb, &hashes, request)).await?;
        Ok(DirFile { download, hashes: self.hashes.clone() })
    }

    async fn walk(&self, path: &str, flags: WalkFlags, tx: tokio::sync::mpsc::Sender<Part>) {
        let WalkFlags { blake3, skips, meta, wanted, copy_links } = flags;
        let (sb, hashes, path) = (self.sb.clone(), self.hashes.clone(), path.to_owned());
        let walker = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::default();
            let gone = || std::io::Error::other(HandlerError::ClientLeft);
            let mut sink = |mut e: Entry| {
                if blake3 && e.kind == Kind::File {
                    // A file that cannot be read has no hash to give: it
                    // is listed without, and its `get` says why.
                    let hash = hash_of(&sb, &hashes, &join(&path, &e.name)).ok().flatten();
                    e.blake3 = hash.map(|h| h.to_hex().to_string());
                }
                match chunker.push(e) {
                    Some(full) => tx.blocking_send(Part::Entries(full)).map_err(|_| gone()),
                    None => Ok(()),
                }
            };
            let mut skip = |rel: &str, f: Fault| {
                let r = Refusal::from(f);
                let skip = ListingSkip { path: rel.to_owned(), code: r.code, message: r.message };
                tx.blocking_send(Part::Skip(skip)).map_err(|_| gone())
            };
            let skip: Option<&mut files::Skip<'_>> = if skips { Some(&mut skip) } else { None };
            let listing = if meta { Listing::Meta(wanted, files::CopyLinks(copy_links)) } else { Listing::Tree };
            let last = match sb.walk(&path, listing, &mut sink, skip) {
                Ok(()) => Part::Entries(chunker.rest()),
                Err(r) => Part::Refused(r),
            };
            let _ = tx.blocking_send(last);
        });
        let _ = walker.await;
    }

    fn fetch(
        &self,
        base: &str,
        wants: VecDeque<(u64, Want)>,
        sparse: bool,
    ) -> impl Stream<Item = (u64, Result<DirFile, Fault>)> + Send {
        let (sb, hashes, base) = (self.sb.clone(), self.hashes.clone(), base.to_owned());
        // One group opened at a time (blocking), sent before the next.
        let groups = futures_util::stream::unfold(wants, move |left| {
            let (sb, hashes, base) = (sb.clone(), hashes.clone(), base.clone());
            async move {
                if left.is_empty() {
                    return None;
                }
                let ids: Vec<u64> = left.iter().map(|(i, _)| *i).collect();
                let opened = tokio::task::spawn_blocking(move || open_some(&sb, &hashes, (&base, sparse), left)).await;
                // A task that failed (a panic): the files it had are refused.
                let (ready, rest) = opened.unwrap_or_else(|e| {
                    let why = |_| Err(Fault::Internal { what: format!("opening files failed: {e}") });
                    (ids.into_iter().map(|i| (i, why(()))).collect(), VecDeque::new())
                });
                Some((futures_util::stream::iter(ready), rest))
            }
        });
        let hashes = self.hashes.clone();
        groups
            .flatten()
            .map(move |(i, planned)| (i, planned.map(|download| DirFile { download, hashes: hashes.clone() })))
    }

    fn tree_sink(&self, backup: Option<Backup>, covers: attrs::Wanted) -> DirSink {
        let how = attrs::Applying::here(covers);
        DirSink {
            sb: self.sb.clone(),
            hashes: self.hashes.clone(),
            signatures: self.signatures.clone(),
            batch: Batch::new(),
            in_batch: HashMap::new(),
            into: Some(Landing {
                sb: self.sb.clone(),
                dirs: HashMap::new(),
                backup: backup.clone(),
                names: attrs::Names::new(),
                how,
            }),
            backup,
            how,
        }
    }

    async fn admit(
        &self,
        path: &str,
        size: u64,
        force: bool,
        _: (Option<files::Stamp>, Option<u32>),
    ) -> Result<DirUpload, Fault> {
        let (sb, path) = (self.sb.clone(), path.to_owned());
        let (hashes, signatures) = (self.hashes.clone(), self.signatures.clone());
        blocking(move || {
            let (receiver, claim) = admit_upload(&sb, &path, size, force)?;
            Ok(DirUpload { receiver, claim, path, hashes, sb, signatures, basis: None })
        })
        .await
    }
}

/// A local file being sent.
pub(in crate::server) struct DirFile {
    download: Planned,
    hashes: Arc<HashCache>,
}

impl Download for DirFile {
    fn head(&self) -> FileReply {
        self.download.head.clone()
    }

    async fn delta_source(&mut self) -> Result<Option<File>, Fault> {
        Ok(self.download.sender.file().and_then(|f| f.try_clone().ok()))
    }

    async fn send(self, s: &mut S, shown: &str) -> Result<blake3::Hash, Error> {
        let Planned { sender, check, version, cached, .. } = self.download;
        let computed = match sender.send(s.writer(), &mut |_| {}).await {
            Ok(computed) => computed,
            Err(SendError::File(e)) => {
                return Err(HandlerError::ReadFailed { path: shown.to_owned(), source: e.into() }.into())
            }
            Err(SendError::Wire(e)) => return Err(e),
        };
        let hash = settle_hash(&self.hashes, &check, version, cached, computed);
        Ok(hash.ok_or_else(|| HandlerError::Unhashed { path: shown.to_owned() })?)
    }
}

/// Claims the path, then checks what is there, then opens the partial
/// file: in that order, so that two uploads of one new path cannot both
/// see it free (the commit refuses to replace as well).
fn admit_upload(sb: &Sandbox, path: &str, size: u64, force: bool) -> Result<(Receiver, files::Claim), Fault> {
    let (dir, name) = sb.for_write(path)?;
    let claim = sb.claim(&dir, &name, path)?;
    match rustix::fs::statat(&dir, name.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
            return Err(Fault::IsADirectory { path: path.to_owned() })
        }
        Ok(_) if !force => return Err(Fault::Exists { path: path.to_owned() }),
        _ => {}
    }
    Ok((open_partial(dir, &name, path, size)?, claim))
}

/// Opens (or takes up) the partial file of `name` in `dir` for a file of
/// `size` bytes. A full disk is refused now, before a byte of the body is
/// sent, and the partial file is not left taking the space.
fn open_partial(dir: OwnedFd, name: &std::ffi::OsStr, path: &str, size: u64) -> Result<Receiver, Fault> {
    let mut receiver = Receiver::open(dir, name).map_err(|e| Fault::io(path, e))?;
    receiver.fit(size).map_err(|e| Fault::io(path, e))?;
    if let Err(e) = receiver.check_room(receiver.held(), size) {
        receiver.discard();
        return Err(Fault::io(path, e));
    }
    Ok(receiver)
}

/// An upload into a partial file beside its target, holding the claim on
/// the path until it ends.
pub(in crate::server) struct DirUpload {
    receiver: Receiver,
    claim: files::Claim,
    path: String,
    hashes: Arc<HashCache>,
    sb: Sandbox,
    signatures: Arc<SignatureCache>,
    /// The older version a delta is built from, and its length.
    basis: Option<(File, u64)>,
}

impl Upload for DirUpload {
    type Body = DirBody;

    fn offer(&self) -> (u64, Option<String>) {
        self.receiver.offer()
    }

    fn held(&self) -> u64 {
        self.receiver.held()
    }

    async fn agree(&mut self, offset: u64) -> Result<bool, Error> {
        Ok(self.receiver.agree(offset)?)
    }

    fn holes(&mut self, holes: Option<Vec<[u64; 2]>>, size: u64) -> bool {
        self.receiver.with_holes(holes, size).is_ok()
    }

    async fn abandon(self) {
        if self.receiver.held() == 0 {
            self.receiver.discard();
        }
    }

    async fn basis(
        &mut self,
        ask: &crate::proto::DeltaAsk,
        size: u64,
    ) -> Option<(crate::proto::Basis, Option<dt::Signed>)> {
        let (sb, path, hashes, signatures) =
            (self.sb.clone(), self.path.clone(), self.hashes.clone(), self.signatures.clone());
        let ask = ask.clone();
        let found = blocking(move || Ok(find_basis(&sb, &path, (&hashes, &signatures), &ask, (size, u64::MAX)))).await;
        let (file, basis, sig) = found.ok().flatten()?;
        self.basis = Some((file, basis.len));
        Some((basis, sig))
    }

    async fn receive_delta(
        self,
        reader: &mut FrameReader<BoxRead>,
        until: (&CancellationToken, crate::session::delta::Patience),
        size: u64,
    ) -> Result<DirBody, NotReceived> {
        let DirUpload { receiver, claim, path, hashes, sb, basis, .. } = self;
        let Some((old, old_len)) = basis else {
            return Err(NotReceived::Bad("put_delta where no basis was offered".to_owned()));
        };
        let retired = old.try_clone().ok();
        let patch = dt::Patch::new(receiver, Ok(old), old_len, size);
        let failed = match dt::receive_ops_from(reader, until, patch, &mut |_| {}).await {
            Ok(patch) => match patch.finish() {
                Ok(received) => return Ok(DirBody { received, _claim: claim, path, hashes, sb, retired }),
                Err(e) => (e, None),
            },
            Err(failed) => failed,
        };
        Err(super::delta_not_received(failed, &path))
    }

    async fn receive(self, s: &mut S, cut: &CancellationToken) -> Result<DirBody, NotReceived> {
        let DirUpload { receiver, claim, path, hashes, sb, .. } = self;
        match receiver.receive(&mut UntilCut { src: s.reader(), cut }, &mut |_| {}).await {
            Ok(received) => Ok(DirBody { received, _claim: claim, path, hashes, sb, retired: None }),
            Err(ReceiveError::Wire(e, _)) => Err(NotReceived::Cut(e)),
            Err(ReceiveError::Write(e, _)) => Err(NotReceived::Write(Fault::io(&path, e))),
        }
    }
}

/// The file at `path` as the older version of an upload of `size` bytes,
/// if a delta from it may pay: an append if the client's prefix is the
/// whole of it (its hash from the cache, or read), else its signature
/// (from the cache, or to cut, and cached once cut if the file did not
/// change while it was read). Anything that cannot be opened is no
/// basis: the upload goes whole.
fn find_basis(
    sb: &Sandbox,
    path: &str,
    (hashes, signatures): (&Arc<HashCache>, &Arc<SignatureCache>),
    ask: &crate::proto::DeltaAsk,
    (size, room): (u64, u64),
) -> Option<(File, crate::proto::Basis, Option<dt::Signed>)> {
    let (mut file, meta) = sb.open(path).ok()?;
    let len = meta.len();
    if !meta.is_file() || !dt::worth(len, size) {
        return None;
    }
    let version = files::Version::of(&meta);
    let layout = crate::delta::Layout::for_sizes(len, size);
    // Not read at all if its signature cannot fit what is left.
    if dt::least_entries(layout, len) > room {
        return None;
    }
    let known = (hashes.get(version), signatures.get(version, layout));
    let offered = dt::offer_basis(&mut file, len, (ask, size), known)?;
    // Cached only if the file did not change while it was read.
    let unchanged = move |file: &File| file.metadata().is_ok_and(|m| files::Version::of(&m) == version);
    if let Some(hash) = offered.hash.filter(|_| unchanged(&file)) {
        hashes.put(version, hash);
    }
    let signature = offered.signature.map(|signed| match signed {
        dt::Signed::ToCut(cut) => {
            let signatures = signatures.clone();
            dt::Signed::ToCut(cut.keeping(Box::new(move |file, sig| {
                if unchanged(file) {
                    signatures.put(version, sig.clone());
                }
            })))
        }
        made => made,
    });
    Some((file, offered.basis, signature))
}

/// [`find_basis`] with its signature made (cut now if it is not
/// cached), its `count` set: a tree's bases, which are sent together.
fn find_made_basis(
    sb: &Sandbox,
    path: &str,
    caches: (&Arc<HashCache>, &Arc<SignatureCache>),
    ask: &crate::proto::DeltaAsk,
    sizes: (u64, u64),
) -> Option<(File, crate::proto::Basis, Option<Arc<crate::delta::Signature>>)> {
    let (file, mut basis, signed) = find_basis(sb, path, caches, ask, sizes)?;
    let sig = match signed {
        Some(signed) => Some(signed.made().ok()?),
        None => None,
    };
    if let Some(sig) = &sig {
        basis.count = sig.entries.len() as u64;
    }
    Some((file, basis, sig))
}

/// A local upload's body, in its partial file (or, small, in memory).
pub(in crate::server) struct DirBody {
    received: Received,
    _claim: files::Claim,
    path: String,
    hashes: Arc<HashCache>,
    sb: Sandbox,
    /// The older version a delta was built from, held open past the
    /// commit: the rename that replaces it then frees none of its blocks
    /// (a large file's take a tenth of a second a GiB), and they are freed
    /// on a blocking thread while the answer goes. So for that moment the
    /// old and the new file both take their space (as during the build),
    /// and on NFS the old one shows as a `.nfs…` file until it is closed.
    retired: Option<File>,
}

impl Body for DirBody {
    async fn finish(
        self,
        claimed: &str,
        meta: (Option<u32>, Option<files::Stamp>),
        replacing: (bool, Option<Backup>),
    ) -> Result<(), NotFinished> {
        // The claim is held until the file is in place.
        let DirBody { received, _claim, path, hashes, sb, retired } = self;
        let received = received.verify(claimed).map_err(NotFinished::Mismatch)?;
        let done = blocking(move || commit_upload(&sb, received, &path, meta, replacing, &hashes)).await;
        if let Some(old) = retired {
            drop(tokio::task::spawn_blocking(move || drop(old)));
        }
        done.map_err(NotFinished::Refused)
    }

    /// Dropped, a received body's partial file stays where it is.
    async fn keep(self) {}
}

/// Moves a verified upload into place with the client's mode and mtime,
/// and caches its hash: a later get of it need not hash it again.
fn commit_upload(
    sb: &Sandbox,
    received: Received,
    path: &str,
    (mode, mtime): (Option<u32>, Option<files::Stamp>),
    (force, backup): (bool, Option<Backup>),
    hashes: &HashCache,
) -> Result<(), Fault> {
    if let (true, Some(backup)) = (force, &backup) {
        sb.keep(backup, path, received.at(), false)?;
    }
    let hash = received.hash();
    let mode = files::received_mode(mode.unwrap_or(0o666));
    // Set before the rename, as `rsync -t` keeps it: never a whole file
    // under its name with another time.
    let received = match mtime {
        Some(mtime) => received.with_mtime(mtime),
        None => received,
    };
    let file = received.commit(mode, force).map_err(|e| match e.kind() {
        // Another upload of this path finished first.
        std::io::ErrorKind::AlreadyExists => Fault::Exists { path: path.to_owned() },
        _ => Fault::io(path, e),
    })?;
    if let Ok(meta) = file.metadata() {
        hashes.put(files::Version::of(&meta), hash);
    }
    Ok(())
}

/// Gives each file entry its BLAKE3, from the cache or by reading it (and
/// caching what was read, if the file did not change meanwhile).
pub(in crate::server) fn add_hashes(
    sb: &Sandbox,
    hashes: &files::HashCache,
    path: &str,
    entries: &mut [crate::proto::Entry],
) -> Result<(), Fault> {
    // A file's own listing names it by its last component: its path is
    // the one listed.
    let listed_a_file = sb.stat(path).is_ok_and(|e| e.kind == crate::proto::Kind::File);
    for e in entries.iter_mut().filter(|e| e.kind == crate::proto::Kind::File) {
        let full = if listed_a_file {
            path.to_owned()
        } else if path.trim_end_matches('/').is_empty() {
            e.name.clone()
        } else {
            format!("{}/{}", path.trim_end_matches('/'), e.name)
        };
        if let Some(hash) = hash_of(sb, hashes, &full)? {
            e.blake3 = Some(hash.to_hex().to_string());
        }
    }
    Ok(())
}

/// The BLAKE3 of the file at `full`, from the cache or by reading it (and
/// caching what was read, if the file did not change meanwhile); `None`
/// if it cannot be opened (gone since it was listed).
pub(in crate::server) fn hash_of(
    sb: &Sandbox,
    hashes: &files::HashCache,
    full: &str,
) -> Result<Option<blake3::Hash>, Fault> {
    let Ok((mut file, meta)) = sb.open(full) else { return Ok(None) };
    let version = files::Version::of(&meta);
    if let Some(hash) = hashes.get(version) {
        return Ok(Some(hash));
    }
    let hash = files::hash_prefix(&mut file, meta.len()).map_err(|e| Fault::io(full, e))?.finalize();
    if file.metadata().is_ok_and(|m| files::Version::of(&m) == version) {
        hashes.put(version, hash);
    }
    Ok(Some(hash))
}

/// A download, decided: where it starts and what is known of its hash.
pub(in crate::server) struct Planned {
    pub(in crate::server) sender: Sender,
    /// Whether the file changed while it was read.
    pub(in crate::server) check: Check,
    pub(in crate::server) version: files::Version,
    pub(in crate::server) head: FileReply,
    /// The whole-file hash, if the cache has it for this version.
    pub(in crate::server) cached: Option<blake3::Hash>,
}

/// Opens the file and decides where the body starts (the client's offset,
/// if its prefix is the start of this file).
pub(in crate::server) fn plan_download(
    sb: &Sandbox,
    ctx_hashes: &files::HashCache,
    request: Get,
) -> Result<Planned, Fault> {
    plan_download_in(sb, ctx_hashes, request, &mut None)
}

/// [`plan_download`] of one of many files, the directory of the one
/// before kept in `kept` ([`Sandbox::open_in`]).
fn plan_download_in(
    sb: &Sandbox,
    ctx_hashes: &files::HashCache,
    request: Get,
    kept: &mut Option<crate::services::root::KeptDir>,
) -> Result<Planned, Fault> {
    let Get { path, offset, prefix_blake3, sparse, .. } = request;
    let (file, meta) = sb.open_in(&path, kept)?;
    match files::not_regular(&meta) {
        Some((std::io::ErrorKind::IsADirectory, _)) => return Err(Fault::IsADirectory { path }),
        Some(_) => return Err(Fault::NotRegular { path }),
        None => {}
    }
    let size = meta.len();
    let mut sender = Sender::resume(file, size, offset, prefix_blake3.as_deref(), Unproven::Trust)
        .map_err(|e| Fault::io(&path, e))?;
    if sparse {
        sender.find_holes().map_err(|e| Fault::io(&path, e))?;
    }
    let version = files::Version::of(&meta);
    let same = |file: &File| file.metadata().is_ok_and(|m| files::Version::of(&m) == version);
    let check = match sender.file() {
        // A small body is read already: whether the file changed while it
        // was, seen now, and its descriptor let go without a second one.
        Some(file) if sender.read_whole() => Check::Read(same(file)),
        Some(file) => Check::Open(file.try_clone().map_err(|e| Fault::io(&path, e))?),
        None => Check::Read(false),
    };
    let cached = ctx_hashes.get(version);
    if cached.is_some() {
        sender.hash_known();
    }
    let head = FileReply {
        len: sender.body_len(),
        size,
        offset: sender.start(),
        mtime: files::mtime(&meta),
        mode: meta.permissions().mode() & 0o7777,
        mtime_ns: files::Stamp::of_meta(&meta).fraction_ns(),
        holes: sender.holes(),
        delta: false,
    };
    Ok(Planned { sender, check, version, head, cached })
}

/// How to tell whether a file sent changed while it was read: its hash is
/// cached only if not.
pub(in crate::server) enum Check {
    /// A second descriptor of the file, to look at after sending.
    Open(File),
    /// A small body read whole when it was planned, and its file closed:
    /// whether the file was the version planned right after the read.
    Read(bool),
}

impl Planned {
    /// Lets the file go if its body was read whole already (a small one):
    /// what a `tree_get` holds ahead is bodies, never descriptors. Returns
    /// whether it did.
    pub(in crate::server) fn close_if_read(&mut self) -> bool {
        if !self.sender.release_file() {
            return false;
        }
        if let Check::Open(file) = &self.check {
            self.check = Check::Read(file.metadata().is_ok_and(|m| files::Version::of(&m) == self.version));
        }
        true
    }
}

/// The whole-file hash of a file just sent: the cached one, or the one
/// computed while sending (cached now, if the file did not change while
/// it was read); `None` if there is neither (the read ended early).
pub(in crate::server) fn settle_hash(
    hashes: &files::HashCache,
    check: &Check,
    version: files::Version,
    cached: Option<blake3::Hash>,
    computed: Option<blake3::Hash>,
) -> Option<blake3::Hash> {
    match (cached, computed) {
        (Some(hash), _) => Some(hash),
        (None, Some(hash)) => {
            let unchanged = match check {
                Check::Open(file) => file.metadata().is_ok_and(|m| files::Version::of(&m) == version),
                Check::Read(unchanged) => *unchanged,
            };
            if unchanged {
                hashes.put(version, hash);
            }
            Some(hash)
        }
        (None, None) => None,
    }
}

/// Bytes of small files a `tree_get` reads ahead of sending them.
const READ_AHEAD: u64 = 1024 * 1024;
/// Files a `tree_get` holds open ahead of sending them (two descriptors
/// each: the one sent from, and one to see whether it changed): what
/// bounds a connection's descriptors while its client reads slowly,
/// however many files it asked for. Small files, read whole ahead, hold
/// none.
pub const OPEN_AHEAD: usize = 32;

/// Opens the wanted files in order until [`READ_AHEAD`] bytes of small
/// bodies are read or [`OPEN_AHEAD`] files are open; returns those and
/// the wants left. Blocking.
#[allow(clippy::type_complexity)]
fn open_some(
    sb: &Sandbox,
    hashes: &HashCache,
    (base, sparse): (&str, bool),
    mut wants: VecDeque<(u64, Want)>,
) -> (Vec<(u64, Result<Planned, Fault>)>, VecDeque<(u64, Want)>) {
    let mut ready = Vec::new();
    let (mut bytes, mut open) = (0, 0);
    let mut kept = None;
    while let Some((i, w)) = wants.pop_front() {
        if let Err(r) = plain(&w.path) {
            ready.push((i, Err(r)));
            continue;
        }
        let get =
            Get { path: join(base, &w.path), offset: w.offset, prefix_blake3: w.prefix_blake3, sparse, basis: None };
        match plan_download_in(sb, hashes, get, &mut kept) {
            Ok(mut d) => {
                bytes += d.head.len.min(crate::session::SMALL_BODY + 1);
                if !d.close_if_read() {
                    open += 1;
                    // Planning a large file may take long (a resumed
                    // prefix is hashed): the directory is not kept past
                    // it, so that one renamed out of the root meanwhile
                    // is not read from.
                    kept = None;
                }
                ready.push((i, Ok(d)));
            }
            Err(r) => ready.push((i, Err(r))),
        }
        if bytes >= READ_AHEAD || open >= OPEN_AHEAD || ready.len() >= TREE_PART_ENTRIES {
            break;
        }
    }
    (ready, wants)
}

/// A `tree_put` into a directory: small new files held in memory and
/// written by the batch's commit, larger or resumed ones through a
/// partial file each; the batch committed with one `syncfs` when full,
/// after a large file, and at the end.
pub(in crate::server) struct DirSink {
    sb: Sandbox,
    hashes: Arc<HashCache>,
    signatures: Arc<SignatureCache>,
    batch: Batch,
    /// Paths of the files in the batch, by index, with their size and
    /// mtime.
    in_batch: HashMap<u64, (String, u64, i64)>,
    /// Put back after each commit.
    into: Option<Landing>,
    /// Where what the files replace is kept.
    backup: Option<Backup>,
    /// What is done with the owners and extended attributes entries name.
    how: attrs::Applying,
}

impl TreeSink for DirSink {
    const REPORT_EACH_SETTLE: bool = true;

    async fn decide(
        &mut self,
        _base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Result<Vec<Decided>, Fault> {
        let (sb, hashes) = (self.sb.clone(), self.hashes.clone());
        blocking(move || {
            // A manifest frame's files are mostly of a few directories.
            let mut dirs = files::Dirs::new();
            Ok(entries
                .into_iter()
                .map(|(i, full, e)| {
                    let d = decide(&sb, &mut dirs, &hashes, &full, &e, force);
                    (i, full, e, d)
                })
                .collect())
        })
        .await
    }

    async fn receive(&mut self, s: &mut S, i: u64, need: &Needed, offset: u64, len: u64) -> Result<Got, Error> {
        let mode = files::received_mode(need.mode);
        if let Some(old_len) = need.basis {
            return self.receive_delta(s, i, need, offset, old_len).await;
        }
        if offset == 0 && need.size <= SMALL_BODY && need.holes.is_none() {
            // Small and new: held in memory and hashed, written by the
            // batch's commit.
            let body = s.reader().read_body(len).await?;
            let Some(claimed) = read_checksum(s).await? else { return Ok(Got::Later { now: false }) };
            let hash = blake3::hash(&body);
            if hash.to_hex().as_str() != claimed {
                return Ok(Got::Done(Err(mismatch(&need.path, &hash.to_hex(), &claimed))));
            }
            self.in_batch.insert(i, (need.path.clone(), need.size, need.mtime.wire_secs()));
            let meta = (mode, Some(need.mtime));
            let replace = self.replacing(need);
            // Where no partial file stood, none is taken the place of.
            let fresh = !need.partial;
            self.batch.push_body(i, need.path.clone(), body.to_vec(), hash, meta, replace, fresh);
            self.batch.with_attrs(need.attrs.clone());
            return Ok(Got::Later { now: false });
        }
        // Large or resumed: through a receiver and its partial file.
        let (sb, path, size) = (self.sb.clone(), need.path.clone(), need.size);
        let admitted = blocking(move || {
            let (dir, name) = sb.for_write(&path)?;
            let claim = sb.claim(&dir, &name, &path)?;
            Ok((open_partial(dir, &name, &path, size)?, claim))
        })
        .await;
        let (mut receiver, claim) = match admitted {
            Ok(admitted) => admitted,
            Err(r) => return skip_file(s, r).await,
        };
        if !receiver.agree(offset).map_err(Error::Io)? {
            // Most often, the partial file offered was committed since by
            // the batch of a connection that just ended, and this one is
            // new and empty: not worth keeping.
            if receiver.held() == 0 {
                receiver.discard();
            }
            return skip_file(s, Fault::OfferChanged { path: need.path.clone() }).await;
        }
        // Checked by the state already (PROTOCOL.md §4.6.5).
        if receiver.with_holes(need.holes.clone(), need.size).is_err() {
            return skip_file(s, Fault::NotKept { path: need.path.clone(), why: "holes outside the file" }).await;
        }
        let received = match receiver.receive(s.reader(), &mut |_| {}).await {
            Ok(received) => received,
            // A cut connection leaves the partial file for a resume, unless
            // the same file (its size and time) landed meanwhile: a rerun's
            // upload of it, while this connection, its client gone, still
            // read what the client had sent before it went. Nothing is
            // left to resume then, and the partial file would stay beside
            // the file.
            Err(ReceiveError::Wire(e, kept)) => {
                if self.same_there(&need.path, need.size, need.mtime.wire_secs()) {
                    kept.discard();
                }
                return Err(e);
            }
            Err(ReceiveError::Write(e, _)) => return skip_file(s, Fault::io(&need.path, e)).await,
        };
        let Some(claimed) = read_checksum(s).await? else {
            // Cut before the checksum: as above.
            if self.same_there(&need.path, need.size, need.mtime.wire_secs()) {
                received.discard();
            }
            return Ok(Got::Later { now: false });
        };
        Ok(self.take_received(i, need, (received, claim), &claimed))
    }

    async fn settle(&mut self, all: bool) -> Vec<Settled> {
        if self.batch.is_empty() || !(all || self.batch.is_full()) {
            return Vec::new();
        }
        let batch = std::mem::take(&mut self.batch);
        let mut into = self.into.take().expect("put back after each commit");
        let hashes = self.hashes.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let outcomes: Vec<_> = batch
                .commit(&mut into)
                .into_iter()
                .map(|(i, o)| {
                    let len = o.map(|(file, hash)| match file.metadata() {
                        Ok(meta) => {
                            // A later get of this file need not hash it again.
                            hashes.put(files::Version::of(&meta), hash);
                            meta.len()
                        }
                        Err(_) => 0,
                    });
                    (i, len)
                })
                .collect();
            (outcomes, into)
        })
        .await;
        let (outcomes, into) = match joined {
            Ok(done) => done,
            Err(e) => {
                let backup = self.backup.clone();
                let (names, how) = (attrs::Names::new(), self.how);
                self.into = Some(Landing { sb: self.sb.clone(), dirs: HashMap::new(), backup, names, how });
                let why = |_| Err(Fault::Internal { what: format!("commit task failed: {e}") });
                return self.in_batch.drain().map(|(i, (path, ..))| (i, path, why(()))).collect();
            }
        };
        self.into = Some(into);
        outcomes
            .into_iter()
            .map(|(i, outcome)| {
                let (path, size, mtime) = self.in_batch.remove(&i).unwrap_or_default();
                let outcome = match outcome {
                    Ok(size) => Ok(size),
                    // The same file landed meanwhile (another upload of
                    // it, such as the batch of a connection that just
                    // ended).
                    Err(CommitError::Io(e))
                        if e.kind() == std::io::ErrorKind::AlreadyExists && self.same_there(&path, size, mtime) =>
                    {
                        Ok(size)
                    }
                    Err(CommitError::Place(r)) => Err(r),
                    // Another upload of it finished first (when this one
                    // was decided, nothing was there): `busy`, so that the
                    // client asks again and gets a decision against what
                    // is there now.
                    Err(CommitError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(Fault::FinishedFirst { path: path.clone() })
                    }
                    Err(CommitError::Io(e)) => Err(Fault::io(&path, e)),
                };
                (i, path, outcome)
            })
            .collect()
    }

    async fn offer_bases(&mut self, files: Vec<(u64, String, u64)>) -> Vec<(u64, Basis, Arc<crate::delta::Signature>)> {
        let (sb, hashes, signatures) = (self.sb.clone(), self.hashes.clone(), self.signatures.clone());
        let found = blocking(move || {
            let mut entries = 0u64;
            let ask = crate::proto::DeltaAsk::default();
            let mut offered = Vec::new();
            for (i, full, size) in files {
                let room = dt::TREE_SIGNATURE_ENTRIES - entries;
                if size >= dt::TREE_DELTA_MAX || room == 0 {
                    continue;
                }
                // Without an append sample, a signature or nothing.
                let found = find_made_basis(&sb, &full, (&hashes, &signatures), &ask, (size, room));
                let Some((_, basis, Some(sig))) = found else { continue };
                if basis.count > room {
                    continue;
                }
                entries += basis.count;
                offered.push((i, basis, sig));
            }
            Ok(offered)
        });
        found.await.unwrap_or_default()
    }

    async fn apply(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Vec<(u64, String, Result<bool, Fault>)> {
        let (sb, base, backup, how) = (self.sb.clone(), base.to_owned(), self.backup.clone(), self.how);
        let ids: Vec<(u64, String)> = entries.iter().map(|(i, full, _)| (*i, full.clone())).collect();
        let applied = tokio::task::spawn_blocking(move || {
            let apply = |(i, full, e): (u64, String, ManifestEntry)| {
                let outcome = apply_one(&sb, &base, &full, &e, (force, backup.as_ref()), how);
                (i, full, outcome)
            };
            entries.into_iter().map(apply).collect()
        });
        applied.await.unwrap_or_else(|e| {
            let why = |_| Err(Fault::Internal { what: format!("applying links failed: {e}") });
            ids.into_iter().map(|(i, full)| (i, full, why(()))).collect()
        })
    }
}

/// Applies one entry without data of a `meta` upload: a symlink, a hard
/// link to another path of the upload, or a directory's attributes.
/// Blocking.
fn apply_one(
    sb: &Sandbox,
    base: &str,
    full: &str,
    e: &ManifestEntry,
    (force, backup): (bool, Option<&Backup>),
    how: attrs::Applying,
) -> Result<bool, Fault> {
    let at = files::Stamp::from_wire(e.mtime, e.mtime_ns);
    let replace = (force || e.replace, backup);
    let attrs = e.attrs.as_deref();
    let mut names = attrs::Names::new();
    match (e.kind, &e.target, &e.link) {
        (Kind::Symlink, Some(target), _) => {
            let made = sb.make_symlink(full, target, at, replace)?;
            if let Some(attrs) = attrs.filter(|_| how.owners) {
                let (dir, name) = sb.for_write(full)?;
                attrs::apply_owner_at(&dir, &name, attrs, how, &mut names).map_err(|e| Fault::io(full, e))?;
            }
            Ok(made)
        }
        (Kind::Other, ..) => match attrs {
            // A device node would open the server's disks to whoever can
            // read the tree: only a download makes them (`--devices`).
            Some(attrs) if attrs.special.is_some_and(crate::proto::Special::is_device) => {
                Err(Fault::NotKept { path: full.to_owned(), why: "a server never makes device nodes" })
            }
            Some(attrs) => sb.make_special(full, (e.mode, at), (attrs, how), replace),
            None => Err(Fault::NotKept { path: full.to_owned(), why: "a special file entry without what it is" }),
        },
        (Kind::Symlink, None, _) => {
            Err(Fault::NotKept { path: full.to_owned(), why: "a symlink entry without a target" })
        }
        (Kind::File, _, Some(to)) => sb.make_hard_link(full, &join(base, to), replace),
        (Kind::File, _, None) if e.attrs_only => sb.set_file_attrs(full, (e.size, at), e.mode, (attrs, how)),
        (Kind::Dir, ..) => sb.set_dir_attrs(full, e.mode, at, attrs.map(|a| (a, how))),
        _ => Err(Fault::NotKept { path: full.to_owned(), why: "special files are not kept" }),
    }
}

impl DirSink {
    /// Receives file `i` as `delta` frames built against its older
    /// version (`old_len` bytes when offered), opened again now: one
    /// replaced or changed meanwhile makes a file that does not verify
    /// (the client sends it again whole). Then its checksum.
    async fn receive_delta(
        &mut self,
        s: &mut S,
        i: u64,
        need: &Needed,
        offset: u64,
        old_len: u64,
    ) -> Result<Got, Error> {
        let (sb, path, size) = (self.sb.clone(), need.path.clone(), need.size);
        let admitted = blocking(move || {
            let (dir, name) = sb.for_write(&path)?;
            let claim = sb.claim(&dir, &name, &path)?;
            let receiver = open_partial(dir, &name, &path, size)?;
            // The older version as it is now, by descriptor.
            let old = match sb.open(&path) {
                Ok((file, meta)) if meta.is_file() && meta.len() == old_len => Ok(file),
                Ok(_) => Err(std::io::Error::other("it is no longer the file offered")),
                Err(r) => Err(std::io::Error::other(r.to_string())),
            };
            Ok((receiver, claim, old))
        })
        .await;
        let (mut receiver, claim, old) = match admitted {
            Ok(admitted) => admitted,
            // Nothing to build into: the ops are read past by a patch of
            // a partial file that cannot be, so the stream stays in step.
            Err(r) => return skip_delta(s, need, old_len, offset, r).await,
        };
        if !receiver.agree(offset).map_err(Error::Io)? {
            if receiver.held() == 0 {
                receiver.discard();
            }
            return skip_delta(s, need, old_len, offset, Fault::OfferChanged { path: need.path.clone() }).await;
        }
        let patch = dt::Patch::new(receiver, old, old_len, size);
        // A write that fails fails this file alone.
        let patch = patch.deferring_write_errors();
        let cut = s.cut_off().clone();
        let built = match dt::receive_ops_from(s.reader(), (&cut, dt::Patience::default()), patch, &mut |_| {}).await {
            Ok(patch) => patch.finish(),
            Err((e, patch)) => {
                return match super::delta_not_received((e, patch), &need.path) {
                    NotReceived::Cut(e) => Err(e),
                    NotReceived::Bad(why) => {
                        s.refuse_and_close(why).await?;
                        Err(Error::Io(std::io::Error::other("a bad delta in a tree_put")))
                    }
                    // The rest of the ops cannot be told from what follows.
                    NotReceived::Write(r) => {
                        s.refuse_and_close(Refusal::from(r).message).await?;
                        Err(Error::Io(std::io::Error::other("a delta that could not be written")))
                    }
                    NotReceived::Stale(why) => Err(Error::Io(std::io::Error::other(why))),
                };
            }
        };
        let Some(claimed) = read_checksum(s).await? else { return Ok(Got::Later { now: false }) };
        match built {
            Ok(received) => Ok(self.take_received(i, need, (received, claim), &claimed)),
            Err(dt::DeltaFailed::BasisChanged(e)) => {
                Ok(Got::Done(Err(mismatch(&need.path, &format!("(its older version changed: {e})"), &claimed))))
            }
            Err(dt::DeltaFailed::Io(e)) => Ok(Got::Done(Err(Fault::io(&need.path, e)))),
            Err(e) => {
                s.refuse_and_close(format!("bad delta: {e}")).await?;
                Err(Error::Io(std::io::Error::other("a bad delta in a tree_put")))
            }
        }
    }

    /// A received file verified against the client's checksum and put in
    /// the batch, or refused as a mismatch (nothing kept).
    fn take_received(
        &mut self,
        i: u64,
        need: &Needed,
        (received, claim): (Received, files::Claim),
        claimed: &str,
    ) -> Got {
        let mode = files::received_mode(need.mode);
        let hash = received.hash();
        match received.verify(claimed) {
            Ok(received) => {
                self.in_batch.insert(i, (need.path.clone(), need.size, need.mtime.wire_secs()));
                let received = received.with_mtime(need.mtime);
                let replace = self.replacing(need);
                self.batch.push_received(i, received, mode, replace, Some(Box::new(claim)));
                self.batch.with_attrs(need.attrs.clone());
                // A large file is not kept waiting for a batch to fill.
                Got::Later { now: need.size > SMALL_BODY }
            }
            Err(_) => Got::Done(Err(mismatch(&need.path, &hash.to_hex(), claimed))),
        }
    }

    /// Whether `need` may replace what is there, keeping it first if
    /// backups are kept.
    fn replacing(&self, need: &Needed) -> Replace {
        match (need.replace, &self.backup) {
            (true, Some(_)) => Replace::Keeping(need.path.clone()),
            (replace, _) => Replace::from(replace),
        }
    }

    /// Whether a regular file of `size` bytes and `mtime` is at `path` now.
    fn same_there(&self, path: &str, size: u64, mtime: i64) -> bool {
        self.sb
            .standing(path)
            .is_ok_and(|s| s.there.is_some_and(|e| e.kind == Kind::File && e.size == size && e.mtime == mtime))
    }
}

/// Decides one manifest entry against what the directory holds: wanted
/// (from the offset of a partial file held), unchanged, or refused.
/// Blocking.
fn decide(
    sb: &Sandbox,
    dirs: &mut files::Dirs,
    hashes: &HashCache,
    full: &str,
    e: &ManifestEntry,
    force: bool,
) -> Result<Decision, Fault> {
    let standing = sb.standing_among(full, dirs)?;
    let same_content =
        || Ok(hash_of(sb, hashes, full)?.is_some_and(|h| e.blake3.as_deref() == Some(h.to_hex().as_str())));
    let Some(replace) = judge(full, standing.there.as_ref(), same_content, e, force)? else {
        return Ok(None);
    };
    let (offset, prefix) = match standing.partial {
        Some((held, hash)) if held > 0 && held <= e.size => (held, Some(hash.to_hex().to_string())),
        _ => (0, None),
    };
    Ok(Some((replace, offset, prefix, standing.partial.is_some())))
}

/// Where a `tree_put`'s small files go: the sandbox, with the directory
/// of the previous file kept open (a tree's files come directory by
/// directory), and a claim on each path until it is in place.
struct Landing {
    sb: Sandbox,
    dirs: HashMap<String, (Arc<OwnedFd>, FileId)>,
    backup: Option<Backup>,
    names: attrs::Names,
    how: attrs::Applying,
}

impl Place for Landing {
    type Error = Fault;

    fn resolve(&mut self, path: &str) -> Result<(Arc<OwnedFd>, OsString, Option<Guard>), Fault> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let (dir, id) = match self.dirs.get(parent) {
            Some((dir, id)) => (dir.clone(), *id),
            None => {
                let (dir, _) = self.sb.for_write(path)?;
                let id = FileId::of_fd(&dir).map_err(|e| Fault::io(path, e))?;
                let dir = Arc::new(dir);
                if self.dirs.len() >= 64 {
                    self.dirs.clear();
                }
                self.dirs.insert(parent.to_owned(), (dir.clone(), id));
                (dir, id)
            }
        };
        let name = crate::services::names::os(name).into_owned();
        let claim = self.sb.claim_in(id, &name, path)?;
        Ok((dir, name, Some(Box::new(claim))))
    }

    fn keep(&mut self, path: &str, at: (&OwnedFd, &std::ffi::OsStr)) -> Result<(), Fault> {
        match &self.backup {
            Some(backup) => self.sb.keep(backup, path, at, false).map(drop),
            None => Ok(()),
        }
    }

    fn attrs(&mut self, file: &File, had: Had, attrs: &crate::proto::Attrs) -> std::io::Result<()> {
        attrs::apply_having(file, Some(had.owner), attrs, self.how, &mut self.names)
    }
}

#[cfg(test)]
mod tests {
    //! The basis of a delta upload, on real files: its signature taken
    //! from the cache while the file is as it was, made again once it
    //! changed.
    use super::*;

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[(i + seed as usize) % 4]).collect()
    }

    #[test]
    fn a_signature_is_cached_by_version_and_made_again_after_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.bin");
        std::fs::write(&path, noise(1 << 20, 1)).unwrap();
        let sb = Sandbox::new(tmp.path()).unwrap();
        let (hashes, signatures) = (Arc::new(HashCache::default()), Arc::new(SignatureCache::default()));
        let ask = crate::proto::DeltaAsk { append: None, trust: false, stream: false };
        let new_len = (1 << 20) + 100;
        let first = find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let first_sig = first.2.unwrap();
        // What the cache holds for this version is what is used: a planted
        // entry stands in for the file's own, proving no reading.
        let version = files::Version::of(&std::fs::metadata(&path).unwrap());
        let planted = crate::delta::Signature {
            layout: first_sig.layout,
            len: first_sig.len,
            entries: first_sig.entries.iter().map(|&(len, _)| (len, [9; 8])).collect(),
        };
        signatures.put(version, Arc::new(planted.clone()));
        let second = find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        assert_eq!(*second.2.unwrap(), planted);
        // A new mtime is a new version: read and indexed again.
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
        let third = find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        assert_eq!(*third.2.unwrap(), *first_sig);
        // An append told by its prefix: no signature at all.
        let data = std::fs::read(&path).unwrap();
        let sample = crate::proto::Sample::of(&File::open(&path).unwrap(), data.len() as u64).unwrap();
        let ask = crate::proto::DeltaAsk { append: Some(sample), trust: false, stream: false };
        let (_, basis, sig) = find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        assert!(basis.append && sig.is_none() && basis.count == 0);
        assert_eq!(basis.blake3.unwrap(), blake3::hash(&data).to_hex().to_string());
        // A sample of other bytes: a signature, as for any change.
        let other = crate::proto::Sample { len: data.len() as u64, blake3: blake3::hash(b"x").to_hex().to_string() };
        let ask = crate::proto::DeltaAsk { append: Some(other), trust: false, stream: false };
        let (_, basis, sig) = find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        assert!(!basis.append && sig.is_some());
        // A new file too small to be worth a delta, or one that the
        // older version is more than 4 times as long as: no basis (it
        // would cost more to read and describe than to send).
        assert!(find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (1000, u64::MAX)).is_none());
        assert!(find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (200 << 10, u64::MAX)).is_none());
        assert!(find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (300 << 10, u64::MAX)).is_some());
        // A tree's frame with room for fewer entries than the signature
        // must have: no basis (and the file is not read for it).
        let len = std::fs::metadata(tmp.path().join("f.bin")).unwrap().len();
        let layout = crate::delta::Layout::for_sizes(len, 300 << 10);
        let least = dt::least_entries(layout, len);
        assert!(least > 1);
        let room = |n| find_made_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (300 << 10, n));
        assert!(room(least - 1).is_none());
        assert!(room(u64::MAX).is_some_and(|(_, b, _)| b.count >= least));
    }

    #[test]
    fn a_signature_streamed_as_it_is_cut_is_cached_once_made() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f.bin"), noise(4 << 20, 2)).unwrap();
        let sb = Sandbox::new(tmp.path()).unwrap();
        let (hashes, signatures) = (Arc::new(HashCache::default()), Arc::new(SignatureCache::default()));
        let ask = crate::proto::DeltaAsk { append: None, trust: false, stream: true };
        let new_len = (4 << 20) + 100;
        let found = find_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let Some(dt::Signed::ToCut(cut)) = found.2 else { panic!("not cached yet: to cut") };
        // Sent in several frames as it is cut, ending as the whole.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (sig, frames) = std::thread::scope(|scope| {
            let cutting = scope.spawn(move || cut.stream(&tx));
            let mut frames = Vec::new();
            while let Some(frame) = rx.blocking_recv() {
                frames.push(frame);
            }
            (cutting.join().unwrap().unwrap(), frames)
        });
        assert!(frames.len() >= 2, "{} frames", frames.len());
        assert_eq!(frames.concat(), crate::delta::entry_bytes(&sig.entries));
        // The next upload against the same version takes it from the cache.
        let again = find_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let Some(dt::Signed::Made(cached)) = again.2 else { panic!("not cached") };
        assert_eq!(*cached, *sig);

        // A file whose time changes while it is cut: its signature is sent
        // (the time says nothing of the bytes cut), and not cached.
        let path = tmp.path().join("f.bin");
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000)).unwrap();
        let version = files::Version::of(&std::fs::metadata(&path).unwrap());
        let found = find_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let Some(dt::Signed::ToCut(cut)) = found.2 else { panic!("a new version: to cut") };
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3_000_000)).unwrap();
        let layout = crate::delta::Layout::for_sizes(4 << 20, new_len);
        cut.cut().unwrap();
        assert!(signatures.get(version, layout).is_none(), "cached though it changed");
        // One that shrinks: no signature, nothing cached.
        let version = files::Version::of(&std::fs::metadata(&path).unwrap());
        let found = find_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let Some(dt::Signed::ToCut(cut)) = found.2 else { panic!("to cut") };
        f.set_len(1 << 20).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let err = cut.stream(&tx).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        assert!(signatures.get(version, layout).is_none());
        // A cut whose reader left stops.
        std::fs::write(&path, noise(4 << 20, 3)).unwrap();
        let found = find_basis(&sb, "f.bin", (&hashes, &signatures), &ask, (new_len, u64::MAX)).unwrap();
        let Some(dt::Signed::ToCut(cut)) = found.2 else { panic!("to cut") };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        assert_eq!(cut.stream(&tx).unwrap_err().kind(), std::io::ErrorKind::Interrupted);
    }
}
