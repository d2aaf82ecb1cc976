//! A bucket as a [`Storage`]: ranged reads of one object version, small
//! files stored whole with one conditional write, large ones through a
//! multipart upload whose record lets a later attempt resume.

use tokio_util::sync::CancellationToken;

use futures_util::{StreamExt, TryStreamExt};

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc::Sender;

use tokio::task::JoinSet;

use super::{
    join, judge, mismatch, plain, read_checksum, skip_file, Body, Chunker, Decided, Decision, Download, Got, Needed,
    NotFinished, NotReceived, Part, Settled, Storage, TreeSink, Upload, WalkFlags,
};
use crate::proto::{Entry, FileReply, Get, Kind, ManifestEntry, Want};
use crate::server::context::HandlerError;
use crate::services::bucket::{Bucket, Finish, Kept, Multipart, Reading, Target, TreeIndex, FILE_MODE, WHOLE_MAX};
use crate::services::files::{self, Listing};
use crate::services::Fault;
use crate::session::{cut_off_by, ServerSide, Session};
use crate::transport::BoxRead;
use crate::wire::{Error, FrameReader, MAX_BUFFERED_BODY};

type S = Session<ServerSide>;

/// Small files of one `tree_put` being stored at once, in the background.
const STORES_AT_ONCE: usize = 32;
/// Files up to this size are stored in the background: what one
/// `tree_put` holds is at most [`STORES_AT_ONCE`] of them, plus one file
/// of up to `WHOLE_MAX` stored before the next frame is read.
const STORED_AHEAD: u64 = 1024 * 1024;
/// Objects whose hashes a listing asks for at once.
const HASHES_AT_ONCE: usize = 16;
/// Objects of one `tree_get` being fetched ahead of sending.
const FETCHES_AT_ONCE: usize = 16;
/// A `tree_get`'s objects up to this size are fetched whole ahead of
/// their turn; larger ones are streamed when it comes.
const FETCH_WHOLE: u64 = 1024 * 1024;
/// What a `tree_list` of a bucket may hold while it sorts the tree: a
/// budget in bytes of names (each entry counts 64 more), about two
/// million objects (the store lists them flat; a local root streams).
const TREE_LIST_BUDGET: usize = 256 << 20;

impl Storage for Bucket {
    type Download = BucketFile;
    type Upload = BucketUpload;
    type Sink = BucketSink;
    // Kept as metadata, unmasked (a `put` over `WHOLE_MAX` excepted: its
    // upload is created before its mode is told).
    const KEEPS_MODES: bool = true;
    const KEEPS_BACKUPS: bool = false;
    const KEEPS_ATTRS: bool = false;
    const KEEPS_HOLES: bool = false;
    const TREE_DELTAS: bool = false;
    const CUT_KEEPS: &'static str = "the parts stored, if any, are kept for a resume";

    async fn stat(&self, path: &str) -> Result<Entry, Fault> {
        Bucket::stat(self, path).await
    }

    async fn list(&self, path: &str, listing: Listing, blake3: bool) -> Result<Vec<Entry>, Fault> {
        let mut entries = Bucket::list(self, path, listing, MAX_BUFFERED_BODY as usize).await?;
        if blake3 {
            let listed_a_file = self.object(path).await?.is_some();
            add_hashes(self, path, listed_a_file, &mut entries, true).await?;
        }
        Ok(entries)
    }

    async fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Fault> {
        Bucket::mkdir(self, path, parents).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<bool, Fault> {
        Bucket::remove(self, path, recursive).await
    }

    async fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Fault> {
        Bucket::rename(self, from, to, force).await
    }

    async fn open(&self, request: Get) -> Result<BucketFile, Fault> {
        // An object has no holes: `sparse` changes nothing.
        let Get { path, offset, prefix_blake3, .. } = request;
        let reading = self.read(&path, offset, prefix_blake3.as_deref()).await?;
        Ok(BucketFile { reading, bucket: self.clone(), path, spooled: None })
    }

    async fn walk(&self, path: &str, flags: WalkFlags, tx: Sender<Part>) {
        // A bucket has no links, and its entries carry their time to the
        // nanosecond wherever it is stored: `meta` adds nothing.
        let blake3 = flags.blake3;
        // The store lists a prefix flat, with nothing unreadable below it:
        // the whole tree is listed and sorted first (bounded by
        // TREE_LIST_BUDGET), then framed.
        let listed = async {
            let mut entries = self.list(path, Listing::Tree, TREE_LIST_BUDGET).await?;
            if blake3 {
                let listed_a_file = self.object(path).await?.is_some();
                add_hashes(self, path, listed_a_file, &mut entries, false).await?;
            }
            Ok::<_, Fault>(entries)
        };
        let entries = match listed.await {
            Ok(entries) => entries,
            Err(r) => {
                let _ = tx.send(Part::Refused(r)).await;
                return;
            }
        };
        let mut chunker = Chunker::default();
        for e in entries {
            if let Some(full) = chunker.push(e) {
                if tx.send(Part::Entries(full)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Part::Entries(chunker.rest())).await;
    }

    fn fetch(
        &self,
        base: &str,
        wants: VecDeque<(u64, Want)>,
        _: bool,
    ) -> impl Stream<Item = (u64, Result<BucketFile, Fault>)> + Send {
        let (bucket, base) = (self.clone(), base.to_owned());
        futures_util::stream::iter(wants)
            .map(move |(i, w)| {
                let (bucket, base) = (bucket.clone(), base.clone());
                async move { (i, fetch_one(bucket, &base, w).await) }
            })
            .buffered(FETCHES_AT_ONCE)
    }

    fn tree_sink(&self, _: Option<crate::proto::Backup>, _: crate::services::attrs::Wanted) -> BucketSink {
        BucketSink { bucket: self.clone(), index: TreeIndex::default(), storing: JoinSet::new(), done: Vec::new() }
    }

    async fn admit(
        &self,
        path: &str,
        size: u64,
        force: bool,
        (stamp, mode): (Option<crate::services::files::Stamp>, Option<u32>),
    ) -> Result<BucketUpload, Fault> {
        let target = Bucket::admit(self, path, force).await?;
        // A large file's upload is created now, with what its metadata will
        // be (its time to the nanosecond and its mode, as the request
        // gives them); a small one is stored whole at the end, with them.
        let parts = if size <= WHOLE_MAX {
            None
        } else {
            Some(Box::new(target.multipart(self, size, Kept::of(stamp, mode)).await?))
        };
        Ok(BucketUpload { target, bucket: self.clone(), size, parts, spool: None })
    }
}

/// Opens an object a `tree_get` wants; one up to [`FETCH_WHOLE`] is read
/// whole ahead of its turn, a larger one streamed when it comes.
async fn fetch_one(bucket: Bucket, base: &str, w: Want) -> Result<BucketFile, Fault> {
    plain(&w.path)?;
    let path = join(base, &w.path);
    let mut reading = bucket.read(&path, w.offset, w.prefix_blake3.as_deref()).await?;
    if reading.size - reading.start <= FETCH_WHOLE {
        let chunks: Vec<Bytes> = reading
            .body
            .try_collect()
            .await
            .map_err(|e| Fault::StoreFailed { path: path.clone(), why: e.to_string() })?;
        reading.body = futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed();
    }
    Ok(BucketFile { reading, bucket, path, spooled: None })
}

/// An object being sent: ranged reads of the version first looked at.
pub(in crate::server) struct BucketFile {
    reading: Reading,
    bucket: Bucket,
    /// The path, as the client named it.
    path: String,
    /// The object copied to the server's disk for a delta, and its hash.
    spooled: Option<(std::fs::File, blake3::Hash, SpoolRoom)>,
}

impl Download for BucketFile {
    fn head(&self) -> FileReply {
        let r = &self.reading;
        let (len, size, offset, mtime) = (r.size - r.start, r.size, r.start, r.mtime);
        let mode = r.mode.unwrap_or(FILE_MODE);
        // As a directory root's: the nanoseconds where whole seconds would
        // lose something.
        let mtime_ns = r.mtime_ns.and_then(|ns| files::Stamp::from_wire(mtime, Some(ns)).fraction_ns());
        FileReply { len, size, offset, mtime, mode, mtime_ns, holes: None, delta: false }
    }

    async fn delta_source(&mut self) -> Result<Option<std::fs::File>, Fault> {
        if self.reading.start != 0 || self.spooled.is_some() {
            return Ok(None);
        }
        let size = self.reading.size;
        // No room: the object goes whole, its stream untouched.
        let Some(room) = SpoolRoom::take(size) else { return Ok(None) };
        let Some(file) = spool_file(size) else { return Ok(None) };
        // Read part-way, it can no longer be sent whole: refused.
        let (file, hash) = spool_reading(&self.bucket, &mut self.reading, file)
            .await
            .map_err(|why| Fault::StoreFailed { path: self.path.clone(), why })?;
        let source = file.try_clone().map_err(|e| Fault::io(&self.path, e))?;
        self.spooled = Some((file, hash, room));
        Ok(Some(source))
    }

    async fn send(self, s: &mut S, shown: &str) -> Result<blake3::Hash, Error> {
        let Some((file, hash, _room)) = self.spooled else {
            return send_reading(s, &self.bucket, self.reading, shown).await;
        };
        // Sent from the copy made for a delta that did not pay.
        let size = self.reading.size;
        let mut at = 0;
        while at < size {
            let n = (size - at).min(SPOOL_PIECE);
            let piece = read_spooled(&file, at, n as usize)
                .await
                .map_err(|e| HandlerError::ReadFailed { path: shown.to_owned(), source: e.into() })?;
            s.writer().write_body(&piece).await?;
            at += n;
        }
        Ok(hash)
    }
}

/// An upload into a bucket, holding the claim on its key: up to
/// `WHOLE_MAX`, held in memory and stored with one conditional PUT;
/// larger, stored part by part in a multipart upload whose record names
/// the parts a later attempt resumes from.
pub(in crate::server) struct BucketUpload {
    target: Target,
    bucket: Bucket,
    size: u64,
    parts: Option<Box<Multipart>>,
    /// The older version a delta is built from, on the server's disk.
    spool: Option<Spool>,
}

impl BucketUpload {
    fn body(self, data: Data) -> BucketBody {
        let BucketUpload { target, bucket, .. } = self;
        BucketBody { target, bucket, data }
    }
}

/// An object's older version copied to the server's disk, for a delta
/// upload to be built against (PROTOCOL.md §4.6.6): a store reads no
/// 2 KiB run at an offset cheaply enough to copy a file's unchanged
/// chunks from it. The new file is built beside it, verified, then
/// stored as a whole upload's would be. Both are unnamed temporary files
/// (`O_TMPFILE` under `TMPDIR`): nothing is left behind, whatever stops
/// the transfer, the server itself included.
struct Spool {
    old: std::fs::File,
    len: u64,
    hash: blake3::Hash,
    _room: SpoolRoom,
}

/// Bytes all of a server's spools may hold at once: past it, files go
/// whole (a client cannot make the server copy more, however many
/// transfers it starts).
const SPOOL_BUDGET: u64 = 8 << 30;

/// Bytes the server's spools hold now.
static SPOOLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A share of [`SPOOL_BUDGET`], given back when dropped.
struct SpoolRoom(u64);

impl SpoolRoom {
    /// `bytes` of the budget, if that many are free.
    fn take(bytes: u64) -> Option<SpoolRoom> {
        use std::sync::atomic::Ordering;
        SPOOLED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= SPOOL_BUDGET)
            })
            .ok()
            .map(|_| SpoolRoom(bytes))
    }
}

impl Drop for SpoolRoom {
    fn drop(&mut self) {
        SPOOLED.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// An unnamed temporary file for a spool, if the disk under `TMPDIR` has
/// room for `room` bytes.
fn spool_file(room: u64) -> Option<std::fs::File> {
    let file = tempfile::tempfile().ok()?;
    files::check_room(&file, 0, room).ok()?;
    Some(file)
}

/// Copies what is left of `reading` into `file`, checked and hashed as
/// [`send_reading`] does.
async fn spool_reading(
    b: &Bucket,
    reading: &mut Reading,
    file: std::fs::File,
) -> Result<(std::fs::File, blake3::Hash), String> {
    use tokio::io::AsyncWriteExt;
    let want = reading.size - reading.start;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut got = 0u64;
    while let Some(chunk) = reading.body.try_next().await.map_err(|e| e.to_string())? {
        got += chunk.len() as u64;
        if got > want {
            return Err("the object grew while it was read".to_owned());
        }
        if let Some(h) = reading.hasher.as_mut() {
            h.update(&chunk);
        }
        out.write_all(&chunk).await.map_err(|e| format!("cannot copy it to the server's disk: {e}"))?;
    }
    if got != want {
        return Err("the object ended early while it was read".to_owned());
    }
    out.flush().await.map_err(|e| format!("cannot copy it to the server's disk: {e}"))?;
    let file = out.into_inner().into_std().await;
    let hash = match (reading.known, reading.hasher.take()) {
        (Some(hash), _) => hash,
        (None, Some(h)) => {
            let hash = h.finalize();
            b.read_hashed(reading, hash);
            hash
        }
        (None, None) => return Err("its hash is unknown".to_owned()),
    };
    Ok((file, hash))
}

/// Reads `len` bytes of `file` from `at`, on a blocking thread.
async fn read_spooled(file: &std::fs::File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, at).map(|()| buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Bytes of a spooled file read and sent or stored at a time.
const SPOOL_PIECE: u64 = 1 << 20;

impl Upload for BucketUpload {
    type Body = BucketBody;

    fn offer(&self) -> (u64, Option<String>) {
        self.parts.as_ref().map_or((0, None), |upload| upload.offer())
    }

    fn held(&self) -> u64 {
        self.parts.as_ref().map_or(0, |upload| upload.held())
    }

    async fn agree(&mut self, offset: u64) -> Result<bool, Error> {
        Ok(match self.parts.as_mut() {
            None => offset == 0,
            Some(upload) => matches!(upload.agree(offset).await, Ok(true)),
        })
    }

    fn holes(&mut self, holes: Option<Vec<[u64; 2]>>, _: u64) -> bool {
        holes.is_none_or(|h| h.is_empty())
    }

    async fn abandon(self) {
        if let Some(upload) = self.parts {
            upload.keep_for_resume().await;
        }
    }

    async fn basis(
        &mut self,
        ask: &crate::proto::DeltaAsk,
        size: u64,
    ) -> Option<(crate::proto::Basis, Option<crate::session::delta::Signed>)> {
        let ask = ask.clone();
        // Asked again (an append that was not one): the same copy.
        if let Some(spool) = &self.spool {
            let (mut old, len, hash) = (spool.old.try_clone().ok()?, spool.len, spool.hash);
            let offer = move || crate::session::delta::offer_basis(&mut old, len, (&ask, size), (Some(hash), None));
            let offered = tokio::task::spawn_blocking(offer).await.ok()??;
            return Some((offered.basis, offered.signature));
        }
        // Parts stored by an interrupted upload are resumed instead (if
        // their record turns out stale, this attempt goes whole).
        if self.held() > 0 {
            return None;
        }
        let path = self.target.path.clone();
        let (_, object) = self.bucket.object(&path).await.ok()??;
        if !crate::session::delta::worth(object.size, size) {
            return None;
        }
        // Room for the older version and the new file built beside it.
        let room = object.size.saturating_add(size);
        let taken = SpoolRoom::take(room)?;
        let file = spool_file(room)?;
        let mut reading = self.bucket.read(&path, 0, None).await.ok()?;
        // Replaced since it was looked at: what was reserved may not fit it.
        if reading.size != object.size {
            return None;
        }
        let (mut old, hash) = spool_reading(&self.bucket, &mut reading, file).await.ok()?;
        let len = reading.size;
        let offered = tokio::task::spawn_blocking(move || {
            crate::session::delta::offer_basis(&mut old, len, (&ask, size), (Some(hash), None)).map(|o| (old, o))
        })
        .await
        .ok()??;
        let (old, offered) = offered;
        self.spool = Some(Spool { old, len, hash, _room: taken });
        Some((offered.basis, offered.signature))
    }

    async fn receive_delta(
        mut self,
        reader: &mut FrameReader<BoxRead>,
        until: (&CancellationToken, crate::session::delta::Patience),
        size: u64,
    ) -> Result<BucketBody, NotReceived> {
        let Some(spool) = self.spool.take() else {
            return Err(NotReceived::Bad("put_delta where no basis was offered".to_owned()));
        };
        let path = self.target.path.clone();
        let opened = (|| {
            let dir = std::fs::File::open(std::env::temp_dir())?;
            let receiver = crate::session::Receiver::unnamed(dir.into())?
                .ok_or_else(|| std::io::Error::other("the server's temporary directory takes no unnamed files"))?;
            Ok::<_, std::io::Error>((receiver, spool.old.try_clone()?))
        })();
        let (receiver, old) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(upload) = self.parts.take() {
                    upload.keep_for_resume().await;
                }
                return Err(NotReceived::Write(Fault::io(&path, e)));
            }
        };
        let patch = crate::session::delta::Patch::new(receiver, Ok(old), spool.len, size);
        let failed = match crate::session::delta::receive_ops_from(reader, until, patch, &mut |_| {}).await {
            Ok(patch) => match patch.finish() {
                Ok(received) => {
                    let parts = self.parts.take();
                    return Ok(self.body(Data::Built(Box::new(Built { received, parts, _spool: spool }))));
                }
                Err(e) => (e, None),
            },
            Err(failed) => failed,
        };
        // Nothing was stored: a later attempt builds the delta again.
        if let Some(upload) = self.parts.take() {
            upload.keep_for_resume().await;
        }
        Err(super::delta_not_received(failed, &path))
    }

    async fn receive(mut self, s: &mut S, cut: &CancellationToken) -> Result<BucketBody, NotReceived> {
        // A basis offered and not taken: its copy is not kept meanwhile.
        self.spool = None;
        let Some(mut upload) = self.parts.take() else {
            let body = cut_off_by(cut, s.reader().read_body(self.size)).await.map_err(NotReceived::Cut)?;
            return Ok(self.body(Data::Whole(body)));
        };
        match cut_off_by(cut, receive_parts(s, &mut upload)).await {
            Ok(Ok(())) => Ok(self.body(Data::Parts(upload))),
            // The parts stored stay, for a resume.
            Ok(Err(r)) => {
                upload.keep_for_resume().await;
                Err(NotReceived::Write(r))
            }
            Err(e) => {
                upload.keep_for_resume().await;
                Err(NotReceived::Cut(e))
            }
        }
    }
}

/// A bucket upload's body, received.
pub(in crate::server) struct BucketBody {
    target: Target,
    bucket: Bucket,
    data: Data,
}

/// A file built from a delta in its spool.
struct Built {
    received: crate::session::Received,
    parts: Option<Box<Multipart>>,
    _spool: Spool,
}

enum Data {
    Whole(bytes::Bytes),
    Parts(Box<Multipart>),
    /// Built from a delta in its spool, to be stored whole (at most
    /// `WHOLE_MAX`) or through the upload made for it.
    Built(Box<Built>),
}

impl Body for BucketBody {
    async fn finish(
        self,
        claimed: &str,
        (mode, stamp): (Option<u32>, Option<crate::services::files::Stamp>),
        (force, _): (bool, Option<crate::proto::Backup>),
    ) -> Result<(), NotFinished> {
        let BucketBody { target, bucket, data } = self;
        match data {
            Data::Whole(body) => {
                let hash = blake3::hash(&body);
                if hash.to_hex().as_str() != claimed {
                    return Err(NotFinished::Mismatch(hash.to_hex().to_string()));
                }
                let kept = Kept::of(stamp, mode);
                target.put_whole(&bucket, body, hash, kept, force).await.map_err(NotFinished::Refused)
            }
            // Its metadata was set when its upload was created (admit).
            Data::Parts(upload) => finish_parts(*upload, claimed, force).await,
            Data::Built(built) => {
                let Built { received, parts, _spool } = *built;
                let path = target.path.clone();
                let received = match received.verify(claimed) {
                    Ok(received) => received,
                    Err(got) => {
                        if let Some(upload) = parts {
                            upload.discard().await;
                        }
                        return Err(NotFinished::Mismatch(got));
                    }
                };
                let hash = received.hash();
                let file = received.built_file().map(std::fs::File::try_clone);
                let file = match file {
                    Some(Ok(file)) => file,
                    Some(Err(e)) => return Err(kept_for_resume(parts, Fault::io(&path, e)).await),
                    None => {
                        return Err(
                            kept_for_resume(parts, Fault::Internal { what: "a delta built no file".into() }).await
                        )
                    }
                };
                let size = match file.metadata() {
                    Ok(meta) => meta.len(),
                    Err(e) => return Err(kept_for_resume(parts, Fault::io(&path, e)).await),
                };
                match parts {
                    None => {
                        let body = read_spooled(&file, 0, size as usize)
                            .await
                            .map_err(|e| NotFinished::Refused(Fault::io(&path, e)))?;
                        // What is stored is what was checked, read back.
                        let stored = blake3::hash(&body);
                        if stored != hash {
                            return Err(NotFinished::Mismatch(stored.to_hex().to_string()));
                        }
                        let kept = Kept::of(stamp, mode);
                        target.put_whole(&bucket, body.into(), hash, kept, force).await.map_err(NotFinished::Refused)
                    }
                    // The upload hashes what it is fed and checks it.
                    Some(mut upload) => {
                        let mut at = 0;
                        while at < size {
                            let n = (size - at).min(SPOOL_PIECE);
                            let piece = match read_spooled(&file, at, n as usize).await {
                                Ok(piece) => piece,
                                Err(e) => {
                                    upload.discard().await;
                                    return Err(NotFinished::Refused(Fault::io(&path, e)));
                                }
                            };
                            if let Err(r) = upload.feed(&piece).await {
                                upload.discard().await;
                                return Err(NotFinished::Refused(r));
                            }
                            at += n;
                        }
                        finish_parts(*upload, claimed, force).await
                    }
                }
            }
        }
    }

    async fn keep(self) {
        match self.data {
            Data::Parts(upload) => upload.keep_for_resume().await,
            Data::Built(built) => {
                if let Some(upload) = built.parts {
                    upload.keep_for_resume().await;
                }
            }
            _ => {}
        }
    }
}

/// `why` a built file was not stored, its upload (if any) kept as it was
/// for a later attempt.
async fn kept_for_resume(parts: Option<Box<Multipart>>, why: Fault) -> NotFinished {
    if let Some(upload) = parts {
        upload.keep_for_resume().await;
    }
    NotFinished::Refused(why)
}

/// Completes a multipart upload, checked against the client's BLAKE3.
async fn finish_parts(upload: Multipart, claimed: &str, force: bool) -> Result<(), NotFinished> {
    match upload.finish(claimed, force).await {
        Ok(_) => Ok(()),
        Err(Finish::Mismatch(got)) => Err(NotFinished::Mismatch(got.to_hex().to_string())),
        Err(Finish::Refused(r)) => Err(NotFinished::Refused(r)),
    }
}

/// Gives each file entry its BLAKE3: from metadata or memory, else read.
/// A file whose hash cannot be read fails the whole listing if `strict`
/// (`list`, as on a local root); else it is listed without one, and its
/// `get` says why (`tree_list`, PROTOCOL.md §4.6.3.1, as on a local root).
pub(in crate::server) async fn add_hashes(
    b: &Bucket,
    path: &str,
    listed_a_file: bool,
    entries: &mut [Entry],
    strict: bool,
) -> Result<(), Fault> {
    let wanted: Vec<(usize, String)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::File)
        .map(|(i, e)| (i, if listed_a_file { path.to_owned() } else { join(path, &e.name) }))
        .collect();
    let asks = wanted.into_iter().map(|(i, full)| {
        let b = b.clone();
        async move {
            let hash = match b.object(&full).await {
                Ok(Some((key, object))) => b.hash_of(&key, &object, &full).await.map(Some),
                Ok(None) => Ok(None),
                Err(r) => Err(r),
            };
            match hash {
                Ok(hash) => Ok((i, hash)),
                Err(r) if strict => Err(r),
                Err(_) => Ok((i, None)),
            }
        }
    });
    let hashes: Vec<(usize, Option<blake3::Hash>)> =
        futures_util::stream::iter(asks).buffered(HASHES_AT_ONCE).try_collect().await?;
    for (i, hash) in hashes {
        entries[i].blake3 = hash.map(|h| h.to_hex().to_string());
    }
    Ok(())
}

/// Sends a reading's body (its frame head sent) and returns the
/// whole-file hash: known, or computed on the way and remembered. A read
/// that fails or ends early ends the connection (the frame promised its
/// length).
pub(in crate::server) async fn send_reading(
    s: &mut S,
    b: &Bucket,
    mut reading: Reading,
    shown: &str,
) -> Result<blake3::Hash, Error> {
    let want = reading.size - reading.start;
    let mut sent = 0u64;
    while let Some(chunk) = reading
        .body
        .try_next()
        .await
        .map_err(|e| HandlerError::ReadFailed { path: shown.to_owned(), source: e.into() })?
    {
        sent += chunk.len() as u64;
        if sent > want {
            return Err(HandlerError::Grew { path: shown.to_owned() }.into());
        }
        if let Some(h) = reading.hasher.as_mut() {
            h.update(&chunk);
        }
        s.writer().write_body(&chunk).await?;
    }
    if sent != want {
        let (at, size) = (reading.start + sent, reading.size);
        return Err(HandlerError::EndedEarly { path: shown.to_owned(), at, size }.into());
    }
    match (reading.known, reading.hasher.take()) {
        (Some(hash), _) => Ok(hash),
        (None, Some(h)) => {
            let hash = h.finalize();
            b.read_hashed(&reading, hash);
            Ok(hash)
        }
        (None, None) => Err(HandlerError::Unhashed { path: shown.to_owned() }.into()),
    }
}

/// Feeds the frame's body into the upload. Outer error: the connection's;
/// inner: the store's (the rest of the body unread).
pub(in crate::server) async fn receive_parts(s: &mut S, upload: &mut Multipart) -> Result<Result<(), Fault>, Error> {
    while let Some(chunk) = s.reader().read_body_chunk().await? {
        if let Err(r) = upload.feed(&chunk).await {
            return Ok(Err(r));
        }
    }
    Ok(Ok(()))
}

/// A `tree_put` into a bucket: a manifest frame decided against an index
/// of what is below the parts of the destination it names, small files
/// stored [`STORES_AT_ONCE`] at a time in the background (a conditional
/// write each), larger ones before the next frame, through a multipart
/// upload past `WHOLE_MAX`.
pub(in crate::server) struct BucketSink {
    bucket: Bucket,
    /// What is below the parts of the destination the manifest named, as
    /// it was when they were first named: what is decided against (a
    /// conditional write guards what changes since).
    index: TreeIndex,
    storing: JoinSet<Settled>,
    /// Stores finished while waiting for room among [`STORES_AT_ONCE`].
    done: Vec<Settled>,
}

impl TreeSink for BucketSink {
    const REPORT_EACH_SETTLE: bool = false;

    async fn decide(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Result<Vec<Decided>, Fault> {
        let b = &self.bucket;
        b.index_for(&mut self.index, base, entries.iter().map(|(_, _, e)| e.path.as_str())).await?;
        let index = &self.index;
        let decided = futures_util::stream::iter(entries.into_iter().map(|(i, full, e)| async move {
            let d = decide(b, index, &full, &e, force).await;
            (i, full, e, d)
        }))
        .buffered(STORES_AT_ONCE)
        .collect()
        .await;
        Ok(decided)
    }

    async fn receive(&mut self, s: &mut S, i: u64, need: &Needed, offset: u64, len: u64) -> Result<Got, Error> {
        let b = self.bucket.clone();
        if need.size <= WHOLE_MAX {
            // Up to STORED_AHEAD, stored in the background; a larger one
            // before the next frame (bounding what one upload holds).
            let body = s.reader().read_body(len).await?;
            let Some(claimed) = read_checksum(s).await? else { return Ok(Got::Later { now: false }) };
            let hash = blake3::hash(&body);
            if hash.to_hex().as_str() != claimed {
                return Ok(Got::Done(Err(mismatch(&need.path, &hash.to_hex(), &claimed))));
            }
            let target = match b.claim(&need.path).await {
                Ok(target) => target,
                Err(r) => return Ok(Got::Done(Err(r))),
            };
            // The time to the nanosecond and the mode, as metadata.
            let (size, kept, replace) = (need.size, need_kept(need), need.replace);
            if size > STORED_AHEAD {
                let stored = target.put_whole(&b, body, hash, kept, replace).await;
                return Ok(Got::Done(stored.map(|()| size)));
            }
            while self.storing.len() >= STORES_AT_ONCE {
                if let Some(settled) = self.settle_one().await {
                    self.done.push(settled);
                }
            }
            let path = need.path.clone();
            self.storing.spawn(async move {
                let stored = target.put_whole(&b, body, hash, kept, replace).await.map(|()| size);
                (i, path, stored)
            });
            return Ok(Got::Later { now: false });
        }
        let started = async {
            let target = b.claim(&need.path).await?;
            let upload = target.multipart(&b, need.size, need_kept(need)).await?;
            Ok::<_, Fault>((target, upload))
        }
        .await;
        let (_target, mut upload) = match started {
            Ok(started) => started,
            Err(r) => return skip_file(s, r).await,
        };
        if !matches!(upload.agree(offset).await, Ok(true)) {
            return skip_file(s, Fault::OfferChanged { path: need.path.clone() }).await;
        }
        match receive_parts(s, &mut upload).await {
            Ok(Ok(())) => {}
            // The parts stored stay, for a resume.
            Ok(Err(r)) => {
                upload.keep_for_resume().await;
                return skip_file(s, r).await;
            }
            Err(e) => {
                upload.keep_for_resume().await;
                return Err(e);
            }
        }
        let Some(claimed) = read_checksum(s).await? else {
            upload.keep_for_resume().await;
            return Ok(Got::Later { now: false });
        };
        Ok(Got::Done(match upload.finish(&claimed, need.replace).await {
            Ok(_) => Ok(need.size),
            Err(Finish::Mismatch(got)) => Err(mismatch(&need.path, &got.to_hex(), &claimed)),
            Err(Finish::Refused(r)) => Err(r),
        }))
    }

    async fn apply(
        &mut self,
        _base: &str,
        _force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Vec<(u64, String, Result<bool, Fault>)> {
        // A bucket has objects only: a directory's mode and time have
        // nowhere to go (it exists through what is below it), and links are
        // refused, each one named, rather than stored as something else.
        entries
            .into_iter()
            .map(|(i, full, e)| {
                let why = match e.kind {
                    // Nor a file's mode or owner (a client never asks: a
                    // bucket's listing gives no umask).
                    Kind::Dir => return (i, full, Ok(false)),
                    Kind::File if e.attrs_only => return (i, full, Ok(false)),
                    Kind::Symlink => "a bucket root keeps no symlinks",
                    _ if e.link.is_some() => "a bucket root keeps no hard links",
                    _ => "a bucket root keeps no special files",
                };
                (i, full.clone(), Err(Fault::NotKept { path: full, why }))
            })
            .collect()
    }

    async fn settle(&mut self, all: bool) -> Vec<Settled> {
        let mut settled = std::mem::take(&mut self.done);
        if all {
            while !self.storing.is_empty() {
                settled.extend(self.settle_one().await);
            }
        }
        while let Some(joined) = self.storing.try_join_next() {
            match joined {
                Ok(one) => settled.push(one),
                Err(e) => tracing::warn!("a store task failed: {e}"),
            }
        }
        settled
    }
}

impl BucketSink {
    async fn settle_one(&mut self) -> Option<Settled> {
        match self.storing.join_next().await? {
            Ok(one) => Some(one),
            Err(e) => {
                tracing::warn!("a store task failed: {e}");
                None
            }
        }
    }
}

/// Decides one manifest entry against the tree's index: `None`,
/// unchanged; else wanted (replacing or not) from an offset.
async fn decide(b: &Bucket, index: &TreeIndex, full: &str, e: &ManifestEntry, force: bool) -> Result<Decision, Fault> {
    let rel = e.path.as_str();
    // A parent that is a file makes this no path at all.
    if index.parent_is_file(rel) {
        return Err(Fault::ParentNotADirectory { path: full.to_owned() });
    }
    let mut content = None;
    let there = if index.is_dir(rel) {
        Some(Bucket::dir_entry(rel.to_owned()))
    } else if let Some(meta) = index.file(rel) {
        let (entry, key, object) = b
            .entries_of(vec![(rel.to_owned(), meta.clone())], full)
            .await?
            .pop()
            .ok_or_else(|| Fault::Internal { what: format!("{}: no entry listed", files::shown(full)) })?;
        if e.blake3.is_some() && entry.size == e.size {
            content = Some(b.hash_of(&key, &object, full).await?);
        }
        Some(entry)
    } else {
        None
    };
    let same = || Ok(content.is_some_and(|h| e.blake3.as_deref() == Some(h.to_hex().as_str())));
    let Some(replace) = judge(full, there.as_ref(), same, e, force)? else {
        return Ok(None);
    };
    let (offset, prefix) = if e.size > WHOLE_MAX {
        // What `receive` takes the upload up with (`need_kept` of the
        // `Needed` made of this entry): a record created otherwise is not.
        let kept = Kept::of(Some(files::Stamp::from_wire(e.mtime, e.mtime_ns)), Some(e.mode));
        b.offered(full, e.size, &kept).await?
    } else {
        (0, None)
    };
    Ok(Some((replace, offset, prefix, offset > 0)))
}

/// What a `tree_put`'s file keeps in its object's metadata: its time to
/// the nanosecond, and its permission bits (`mode & 0o777`, unmasked).
fn need_kept(need: &Needed) -> Kept {
    Kept::of(Some(need.mtime), Some(need.mode))
}
