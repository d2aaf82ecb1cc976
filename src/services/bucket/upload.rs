//! Uploads into a bucket: one conditional PUT for a small file, a
//! multipart upload for a large one, committed by its completion, with a
//! resume record kept in the bucket beside where the object will go.
//!
//! The record is the object `DIR/.NAME.fwpart` (the partial-file name a
//! local root uses, hidden from listings the same way): JSON with the
//! upload id, the size, time and mode of the file (what the upload was
//! created with as metadata), and for each part stored, in
//! order, its ETag (what completing the upload names it by) and its BLAKE3
//! chaining value (what the whole-file hash is merged from, see
//! [`super::hash`]). It is written when the upload is created and again
//! as each part is stored, so a cut upload, even one whose server was
//! restarted, resumes after the parts the record names.
//!
//! While the upload runs, its record carries a lease (`lease`: until
//! when, seconds since the epoch), renewed every [`LEASE_RENEW`] by a
//! task of its own, whatever the client's pace: the sweep of abandoned
//! uploads (`--partial-max-age`, by any server on the bucket) leaves a
//! record whose lease holds, as a local root's sweep leaves a partial
//! file under its upload's `flock`. A cut upload gives its lease back
//! (the record is written without one); one whose server died holds it
//! at most [`LEASE`].
//!
//! No object exists under the final name until the upload is completed,
//! and it is completed only once the whole-file BLAKE3 the parts merge to
//! equals the client's. Without `force` the completion carries
//! `If-None-Match: *` (see [`NoClobber`]), so an object that appeared
//! meanwhile, by whatever client, is never replaced.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::client::{HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::hash::{self, PART};
use super::{store_fault, Bucket, Kept, Object};
use crate::services::files::shown;
use crate::services::Fault;

/// Parts of one upload stored at once.
pub(super) const PARTS_IN_FLIGHT: usize = 4;

/// How long a running upload's lease on its record lasts from its last
/// renewal: how long the record of an upload whose server died is kept
/// from the sweep beyond `--partial-max-age`.
pub const LEASE: Duration = Duration::from_secs(300);
/// How often a running upload renews its lease (well within [`LEASE`],
/// whatever the clocks of two servers on one bucket make of it).
pub const LEASE_RENEW: Duration = Duration::from_secs(60);

/// The store's HTTP client, adding `If-None-Match: *` to each
/// `CompleteMultipartUpload` unless its upload was registered as one that
/// may replace (`--force`). object_store's `MultipartStore` never sends
/// the header itself (apache/arrow-rs-object-store#289); it is not an
/// `x-amz-*` header, so it needs no signature, and S3 (since 2024),
/// SeaweedFS, MinIO and Garage honour it.
#[derive(Debug, Default, Clone)]
pub(super) struct NoClobber {
    /// Upload ids whose completion may replace an object.
    pub(super) replacing: Arc<Mutex<HashSet<String>>>,
    /// The last client made (the store's own, made last by its builder):
    /// what our own listings are sent through.
    made: Arc<Mutex<Option<HttpClient>>>,
    /// The requests sent through every client made, by kind.
    pub(super) sent: Arc<super::Sent>,
}

impl NoClobber {
    /// The last client made.
    pub(super) fn made(&self) -> Option<HttpClient> {
        self.made.lock().expect("made poisoned").clone()
    }
}

impl HttpConnector for NoClobber {
    fn connect(&self, options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        let inner = object_store::client::ReqwestConnector::default().connect(options)?;
        let client = HttpClient::new(Completing { inner, replacing: self.replacing.clone(), sent: self.sent.clone() });
        *self.made.lock().expect("made poisoned") = Some(client.clone());
        Ok(client)
    }
}

#[derive(Debug)]
struct Completing {
    inner: HttpClient,
    replacing: Arc<Mutex<HashSet<String>>>,
    sent: Arc<super::Sent>,
}

impl HttpService for Completing {
    fn call<'a, 'b>(
        &'a self,
        mut req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.sent.count(&req);
        if req.method() == "POST" {
            let id = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("uploadId=")).map(|v| v.to_owned()));
            if let Some(id) = id {
                let decoded = String::from_utf8_lossy(&super::raw::percent_decode(&id, false)).into_owned();
                if !self.replacing.lock().expect("replacing poisoned").contains(&decoded) {
                    req.headers_mut().insert("if-none-match", "*".parse().expect("a header value"));
                }
            }
        }
        Box::pin(self.inner.execute(req))
    }
}

/// An upload registered as one whose completion may replace (`--force`)
/// for as long as this lives: a completion dropped half way (the drain's
/// cut-off) leaves nothing registered.
pub(super) struct Replacing {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Replacing {
    pub(super) fn new(bucket: &Bucket, id: &str, force: bool) -> Option<Replacing> {
        force.then(|| {
            bucket.replacing.lock().expect("replacing poisoned").insert(id.to_owned());
            Replacing { set: bucket.replacing.clone(), id: id.to_owned() }
        })
    }
}

impl Drop for Replacing {
    fn drop(&mut self) {
        self.set.lock().expect("replacing poisoned").remove(&self.id);
    }
}

/// What a resume record holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    /// The format, 1.
    pub v: u32,
    pub upload_id: String,
    pub size: u64,
    /// The mtime the upload was created with (its metadata).
    pub mtime: i64,
    /// The same to the nanosecond, if it was created with it (a record
    /// without it: by an older server, or for a `put` whose nanoseconds
    /// were not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// The permission bits it was created with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Each part stored, in order from the first.
    pub parts: Vec<Stored>,
    /// The BLAKE3 of the first part alone (the hash offered when only it
    /// is stored: a chaining value is not a file's hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    /// Until when (seconds since the epoch) a running upload holds the
    /// record: the sweep leaves it until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

impl Record {
    /// What the upload was created with as metadata.
    pub(super) fn kept(&self) -> Kept {
        Kept { mtime: self.mtime, mtime_ns: self.mtime_ns, mode: self.mode }
    }

    /// Whether it is the record of an upload of a file of `size` bytes
    /// created with `kept` as its metadata (what it may be taken up for:
    /// the metadata cannot change after).
    pub(super) fn is_for(&self, size: u64, kept: &Kept) -> bool {
        self.v == 1 && self.size == size && self.kept() == *kept
    }

    /// Whether a running upload holds it now (a lease longer than two
    /// [`LEASE`]s from now is no running upload's: another tool wrote it,
    /// and it does not keep the record from the sweep).
    pub(super) fn leased(&self) -> bool {
        let now = now();
        self.lease.is_some_and(|until| until > now && until <= now + 2 * LEASE.as_secs() as i64)
    }
}

impl Record {
    /// Bytes of whole parts stored, and their hash as a file of its own
    /// (`first`: the first part's, when only it is stored); `(0, None)`
    /// if it cannot be told.
    pub(super) fn offer(&self, first: Option<&str>) -> (u64, Option<String>) {
        let n = self.parts.len();
        let hash = match n {
            0 => None,
            1 => first.map(str::to_owned),
            _ => {
                let cvs: Option<Vec<_>> = self.parts.iter().map(|p| hash::cv_from_hex(&p.cv)).collect();
                cvs.map(|cvs| hash::root(&cvs, PART).to_hex().to_string())
            }
        };
        match hash {
            Some(h) => (n as u64 * PART, Some(h)),
            None => (0, None),
        }
    }
}

/// One part stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    pub etag: String,
    pub cv: String,
}

/// A part just stored: its index, what the record keeps of it, and (the
/// first part's) its own hash.
type PartDone = (usize, Stored, Option<String>);

/// A multipart upload under way: what is stored, and the parts being
/// stored.
pub(crate) struct Multipart {
    bucket: Bucket,
    key: Path,
    record_key: Path,
    record: Record,
    /// Parts stored past the record's contiguous run.
    ahead: BTreeMap<usize, Stored>,
    first: Option<String>,
    in_flight: JoinSet<Result<PartDone, Fault>>,
    /// Body bytes of the part being filled.
    buf: Vec<u8>,
    /// The index of the part being filled.
    next: usize,
    path: String,
    /// The record as the store is to have it, and its lease's renewal.
    held: Arc<Held>,
    renewing: tokio::task::JoinHandle<()>,
}

/// What a running upload's record writes share: the record as it is now,
/// and the lock every write is made under (`true` once the upload let
/// go of it: nothing is written after).
#[derive(Debug)]
struct Held {
    record: Mutex<Record>,
    writing: tokio::sync::Mutex<bool>,
}

impl Drop for Multipart {
    fn drop(&mut self) {
        // Dropped without ending (the request was cut off): the lease
        // lapses within LEASE.
        self.renewing.abort();
    }
}

impl Multipart {
    /// Starts the upload of `size` bytes at `key` with `kept` as its
    /// metadata, or takes up the one its record names if it is of the same
    /// size and metadata and the store still has it.
    pub(super) async fn start(
        bucket: &Bucket,
        key: Path,
        record_key: Path,
        (size, kept): (u64, Kept),
        path: String,
    ) -> Result<Self, Fault> {
        let existing = bucket.read_record(&record_key, &path).await?;
        // A record is taken up only if what it offers is its whole parts,
        // short of the file's end (else it could not be resumed right).
        let sound = |r: &Record| {
            let n = r.parts.len() as u64;
            n * PART < size && (n == 0 || r.offer(r.first.as_deref()).0 == n * PART)
        };
        let record = match existing {
            Some(r) if r.is_for(size, &kept) && sound(&r) => r,
            Some(old) => {
                bucket.abort(&key, &old.upload_id).await;
                bucket.create_upload(&key, (size, kept), &path).await?
            }
            None => bucket.create_upload(&key, (size, kept), &path).await?,
        };
        let next = record.parts.len();
        let first = record.first.clone();
        let held = Arc::new(Held { record: Mutex::new(record.clone()), writing: tokio::sync::Mutex::new(false) });
        let renewing = tokio::spawn(renew(bucket.clone(), record_key.clone(), held.clone(), path.clone()));
        let upload = Multipart {
            bucket: bucket.clone(),
            key,
            record_key,
            record,
            ahead: BTreeMap::new(),
            first,
            in_flight: JoinSet::new(),
            buf: Vec::new(),
            next,
            path,
            held,
            renewing,
        };
        if let Err(r) = upload.save().await {
            upload.bucket.abort(&upload.key, &upload.record.upload_id).await;
            return Err(r);
        }
        Ok(upload)
    }

    /// Writes the record as it is now, with a lease.
    async fn save(&self) -> Result<(), Fault> {
        *self.held.record.lock().expect("record poisoned") = self.record.clone();
        let ended = self.held.writing.lock().await;
        if *ended {
            return Ok(());
        }
        let mut record = self.record.clone();
        record.lease = Some(now() + LEASE.as_secs() as i64);
        self.bucket.write_record(&self.record_key, &record, &self.path).await
    }

    /// Ends the lease: no write after this one; with `keep`, the record is
    /// written without a lease (for a resume, and for the sweep once it is
    /// old), else left to the caller to delete.
    async fn release(&self, keep: bool) {
        let mut ended = self.held.writing.lock().await;
        if *ended {
            return;
        }
        *ended = true;
        self.renewing.abort();
        if keep {
            let mut record = self.record.clone();
            record.lease = None;
            if let Err(r) = self.bucket.write_record(&self.record_key, &record, &self.path).await {
                tracing::debug!("{}: giving the upload's lease back: {r}", shown(&self.path));
            }
        }
    }

    /// What is held: bytes of whole parts stored, and their hash as a
    /// file of its own.
    pub(crate) fn offer(&self) -> (u64, Option<String>) {
        self.record.offer(self.first.as_deref())
    }

    /// Bytes held.
    pub(crate) fn held(&self) -> u64 {
        self.offer().0
    }

    /// Whether the body may start at `from`: what is held, or 0 (the
    /// client's file differs: a new upload).
    pub(crate) async fn agree(&mut self, from: u64) -> Result<bool, Fault> {
        if from == self.held() {
            return Ok(true);
        }
        if from != 0 {
            return Ok(false);
        }
        self.bucket.abort(&self.key, &self.record.upload_id).await;
        let file = (self.record.size, self.record.kept());
        self.record = self.bucket.create_upload(&self.key, file, &self.path).await?;
        self.first = None;
        self.next = 0;
        if let Err(r) = self.save().await {
            self.bucket.abort(&self.key, &self.record.upload_id).await;
            return Err(r);
        }
        Ok(true)
    }

    /// Takes body bytes; stores each part as it fills.
    pub(crate) async fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Fault> {
        while !chunk.is_empty() {
            let room = PART as usize - self.buf.len();
            let take = room.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == PART as usize {
                self.store_part().await?;
            }
        }
        Ok(())
    }

    /// Sends the part in the buffer to the store (waiting first while
    /// [`PARTS_IN_FLIGHT`] are).
    async fn store_part(&mut self) -> Result<(), Fault> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        let data = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PART as usize)));
        let (index, store, key, id) =
            (self.next, self.bucket.store.clone(), self.key.clone(), MultipartId::from(self.record.upload_id.clone()));
        let path = self.path.clone();
        self.next += 1;
        self.in_flight.spawn(async move {
            let for_hash = data.clone();
            let hashing = tokio::task::spawn_blocking(move || {
                let cv = hash::part_cv(index as u64 * PART, &for_hash);
                let first = (index == 0).then(|| blake3::hash(&for_hash).to_hex().to_string());
                (cv, first)
            });
            let part = store.put_part(&key, &id, index, PutPayload::from_bytes(data)).await;
            let (cv, first) = hashing.await.map_err(|e| Fault::Internal { what: e.to_string() })?;
            let part = part.map_err(|e| part_fault(&path, e))?;
            Ok((index, Stored { etag: part.content_id, cv: hash::cv_hex(&cv) }, first))
        });
        Ok(())
    }

    /// Waits for one part being stored, and records the run of parts
    /// stored from the first.
    async fn settle_one(&mut self) -> Result<(), Fault> {
        let Some(joined) = self.in_flight.join_next().await else { return Ok(()) };
        let (index, stored, first) = match joined.map_err(|e| Fault::Internal { what: e.to_string() })? {
            Ok(done) => done,
            Err(r) => {
                if matches!(r, Fault::UploadGone { .. }) {
                    // The store lost the upload: its record would keep
                    // offering parts that are not there.
                    self.release(false).await;
                    let _ = self.bucket.store.delete(&self.record_key).await;
                }
                return Err(r);
            }
        };
        if first.is_some() {
            self.first = first;
        }
        self.ahead.insert(index, stored);
        let before = self.record.parts.len();
        while let Some(stored) = self.ahead.remove(&self.record.parts.len()) {
            self.record.parts.push(stored);
        }
        if self.record.parts.len() > before {
            self.record.first = self.first.clone();
            self.save().await?;
        }
        Ok(())
    }

    /// The body ended early (the connection was cut): the parts under way
    /// are let finish and recorded, for a resume, and the lease given back.
    pub(crate) async fn keep_for_resume(mut self) {
        while !self.in_flight.is_empty() {
            if self.settle_one().await.is_err() {
                break;
            }
        }
        self.release(true).await;
    }

    /// The upload is dropped: aborted in the store, its record removed.
    pub(crate) async fn discard(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.release(false).await;
        self.bucket.abort(&self.key, &self.record.upload_id).await;
        let _ = self.bucket.store.delete(&self.record_key).await;
    }

    /// Stores the last part, merges the whole-file hash and, if it is
    /// `claimed`, completes the upload (replacing an object there only if
    /// `force`), carrying the hash in the cache; else discards it.
    pub(crate) async fn finish(mut self, claimed: &str, force: bool) -> Result<blake3::Hash, Finish> {
        let stored = async {
            if !self.buf.is_empty() {
                self.store_part().await?;
            }
            while !self.in_flight.is_empty() {
                self.settle_one().await?;
            }
            Ok::<(), Fault>(())
        }
        .await;
        if let Err(r) = stored {
            self.release(true).await;
            return Err(Finish::Refused(r));
        }
        let size = self.record.size;
        let parts = self.record.parts.len();
        let expected = size.div_ceil(PART) as usize;
        let cvs: Option<Vec<_>> = self.record.parts.iter().map(|p| hash::cv_from_hex(&p.cv)).collect();
        let cvs = match cvs {
            Some(cvs) if parts == expected => cvs,
            cvs => {
                self.release(true).await;
                let what = match cvs {
                    Some(_) => format!("{}: {parts} parts stored of {expected}", shown(&self.path)),
                    None => format!("{}: a resume record that does not parse", shown(&self.path)),
                };
                return Err(Finish::Refused(Fault::Internal { what }));
            }
        };
        let got = hash::root(&cvs, size - (parts as u64 - 1) * PART);
        if got.to_hex().as_str() != claimed {
            self.discard().await;
            return Err(Finish::Mismatch(got));
        }
        let id = MultipartId::from(self.record.upload_id.clone());
        let ids: Vec<PartId> = self.record.parts.iter().map(|p| PartId { content_id: p.etag.clone() }).collect();
        let replacing = Replacing::new(&self.bucket, &self.record.upload_id, force);
        let completed = self.bucket.store.complete_multipart(&self.key, &id, ids).await;
        drop(replacing);
        // Completed or refused, the record is the caller's now (deleted,
        // or kept for a resume without a lease).
        let keep = matches!(&completed, Err(e) if !is_exists(e));
        self.release(keep).await;
        match completed {
            Ok(done) => {
                let _ = self.bucket.store.delete(&self.record_key).await;
                let Kept { mtime, mtime_ns, mode } = self.record.kept();
                let object = Object { size, mtime, mtime_ns, mode, etag: done.e_tag, blake3: Some(got) };
                self.bucket.remember(&self.key, object);
                Ok(got)
            }
            Err(e) if is_exists(&e) => {
                // The store drops an upload refused this way; the record
                // goes with it.
                self.bucket.abort(&self.key, &self.record.upload_id).await;
                let _ = self.bucket.store.delete(&self.record_key).await;
                Err(Finish::Refused(Fault::Exists { path: self.path.clone() }))
            }
            Err(e) => {
                let r = part_fault(&self.path, e);
                if matches!(r, Fault::UploadGone { .. }) {
                    let _ = self.bucket.store.delete(&self.record_key).await;
                }
                Err(Finish::Refused(r))
            }
        }
    }
}

/// Renews the lease on a running upload's record every [`LEASE_RENEW`],
/// until the upload lets go of it (or is dropped).
async fn renew(bucket: Bucket, record_key: Path, held: Arc<Held>, path: String) {
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let ended = held.writing.lock().await;
        if *ended {
            return;
        }
        let mut record = held.record.lock().expect("record poisoned").clone();
        record.lease = Some(now() + LEASE.as_secs() as i64);
        if let Err(r) = bucket.write_record(&record_key, &record, &path).await {
            tracing::warn!("{}: renewing the upload's lease on its record: {r}", shown(&path));
        }
        drop(ended);
    }
}

/// A part's or a completion's error: an upload the store no longer has
/// (aborted by a lifecycle rule or by hand, its record left behind) is
/// `busy`, and the record is dropped so that the next try starts over.
fn part_fault(path: &str, e: object_store::Error) -> Fault {
    let text = super::one_line(&e);
    if matches!(e, object_store::Error::NotFound { .. }) || text.contains("NoSuchUpload") {
        return Fault::UploadGone { path: path.to_owned() };
    }
    store_fault(path, e)
}

/// Why an upload was not completed.
#[derive(Debug)]
pub(crate) enum Finish {
    /// The parts merge to this hash, not the client's: nothing kept.
    Mismatch(blake3::Hash),
    /// Refused or failed.
    Refused(Fault),
}

/// Whether the store said an object is there already (a conditional
/// write's failure).
pub(super) fn is_exists(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => true,
        // Some stores' 412 reaches object_store as a generic error with
        // the S3 code in the body (never matched on the key's text).
        e => super::one_line(e).contains("<Code>PreconditionFailed</Code>"),
    }
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Bucket {
    /// What a resume of `path` (a file of `size` bytes, stored with
    /// `kept`) would start from: its record's offer, or nothing.
    ///
    /// # Errors
    ///
    /// A bad path, the store's error.
    pub(crate) async fn offered(&self, path: &str, size: u64, kept: &Kept) -> Result<(u64, Option<String>), Fault> {
        let (_, record_key, _) = self.record_of(path)?;
        match self.read_record(&record_key, path).await? {
            Some(r) if r.is_for(size, kept) => Ok(r.offer(r.first.as_deref())),
            _ => Ok((0, None)),
        }
    }

    /// The resume record at `record_key`, if there is one that parses.
    async fn read_record(&self, record_key: &Path, path: &str) -> Result<Option<Record>, Fault> {
        match self.store.get(record_key).await {
            Ok(got) => {
                let body = got.bytes().await.map_err(|e| store_fault(path, e))?;
                Ok(serde_json::from_slice(&body).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_fault(path, e)),
        }
    }

    /// Writes a record (of a running upload: under its [`Held`] lock).
    async fn write_record(&self, record_key: &Path, record: &Record, path: &str) -> Result<(), Fault> {
        let body = serde_json::to_vec(record).map_err(|e| Fault::Internal { what: e.to_string() })?;
        self.store.put(record_key, PutPayload::from(body)).await.map_err(|e| store_fault(path, e))?;
        Ok(())
    }

    /// A new multipart upload at `key`, and its record (for the caller to
    /// write). What it keeps of the file (`kept`: its time, its mode) is
    /// the upload's metadata (its hash is not known yet: see DESIGN.md).
    async fn create_upload(&self, key: &Path, (size, kept): (u64, Kept), path: &str) -> Result<Record, Fault> {
        let attributes = super::attributes(None, &kept);
        let options = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let id = self.store.create_multipart_opts(key, options).await.map_err(|e| store_fault(path, e))?;
        let Kept { mtime, mtime_ns, mode } = kept;
        Ok(Record {
            v: 1,
            upload_id: id.to_string(),
            size,
            mtime,
            mtime_ns,
            mode,
            parts: Vec::new(),
            first: None,
            lease: None,
        })
    }

    /// Aborts an upload (one the store forgot already is fine).
    pub(super) async fn abort(&self, key: &Path, upload_id: &str) {
        let id = MultipartId::from(upload_id.to_owned());
        if let Err(e) = self.store.abort_multipart(key, &id).await {
            tracing::debug!("aborting upload {upload_id}: {e}");
        }
    }

    /// Stores a small file whole, with one PUT carrying its BLAKE3 and
    /// what is kept of it (`kept`: its time, its mode) as metadata;
    /// without `force`, conditional (`If-None-Match: *`): an object there
    /// is never replaced.
    pub(super) async fn put_whole(
        &self,
        key: &Path,
        body: bytes::Bytes,
        hash: blake3::Hash,
        kept: Kept,
        force: bool,
        path: &str,
    ) -> Result<(), Fault> {
        let size = body.len() as u64;
        let options = PutOptions {
            mode: if force { PutMode::Overwrite } else { PutMode::Create },
            attributes: super::attributes(Some(&hash), &kept),
            ..PutOptions::default()
        };
        match self.store.put_opts(key, PutPayload::from_bytes(body), options).await {
            Ok(done) => {
                let Kept { mtime, mtime_ns, mode } = kept;
                self.remember(key, Object { size, mtime, mtime_ns, mode, etag: done.e_tag, blake3: Some(hash) });
                Ok(())
            }
            Err(e) if is_exists(&e) => Err(Fault::Exists { path: path.to_owned() }),
            Err(e) => Err(store_fault(path, e)),
        }
    }
}
