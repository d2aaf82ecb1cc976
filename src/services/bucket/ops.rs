//! What the files service asks of a bucket besides listings: the facts
//! of an object, reads from an offset, the claim and checks before an
//! upload, removal, moves, and the sweep of abandoned uploads.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use super::{
    dir_entry, exists, not_found, object_entry, store_refusal, Bucket, Object, DIR_MARKER, HEADS_AT_ONCE, KNOWN_MAX,
    META_BLAKE3, META_MTIME,
};
use crate::proto::{Entry, ErrorCode};
use crate::services::files::{shown, Listing, CLAIM_WAIT};
use crate::services::root::is_partial_name;
use crate::services::Refusal;

/// The largest object the store copies in one request (S3's limit for
/// `CopyObject`); `mv` copies a larger one through the server, in parts
/// (object_store has no ranged part copy).
pub(crate) const COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// The ranges a large object is read in, and how many are read at once.
const READ_RANGE: u64 = 8 * 1024 * 1024;
const READS_AT_ONCE: usize = 4;

/// The most objects a tree upload decides against (its index is held in
/// memory, about 300 bytes an object).
pub(crate) const TREE_INDEX_MAX: usize = 2_000_000;

/// An object being read from an offset.
pub(crate) struct Reading {
    /// Its size.
    pub size: u64,
    /// The uploaded file's mtime.
    pub mtime: i64,
    /// Where the body starts.
    pub start: u64,
    /// The bytes from `start` on (of this version of the object only: the
    /// reads are conditional on its ETag).
    pub body: BoxStream<'static, object_store::Result<Bytes>>,
    /// The whole-file BLAKE3, when known.
    pub known: Option<blake3::Hash>,
    /// Otherwise, the hasher fed with the bytes before `start`.
    pub hasher: Option<blake3::Hasher>,
    key: Path,
    etag: Option<String>,
}

/// The claim on a key being uploaded through this server; dropped, the
/// key is free.
#[derive(Debug)]
pub(crate) struct Claim {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy.lock().expect("busy poisoned").remove(&self.key);
    }
}

/// Where an admitted upload goes.
#[derive(Debug)]
pub(crate) struct Target {
    /// The object's key.
    pub key: Path,
    /// Its resume record's key.
    pub record: Path,
    /// The path as messages show it.
    pub shown: String,
    _claim: Claim,
}

impl Target {
    /// Stores a small file whole (its hash verified already).
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Exists`] if an object appeared there (without
    /// `force`), the store's error.
    pub(crate) async fn put_whole(
        &self,
        bucket: &Bucket,
        body: Bytes,
        hash: blake3::Hash,
        mtime: Option<i64>,
        force: bool,
    ) -> Result<(), Refusal> {
        bucket.put_whole(&self.key, body, hash, mtime, force, &self.shown).await
    }

    /// Starts (or takes up) the multipart upload of a large file.
    ///
    /// # Errors
    ///
    /// The store's.
    pub(crate) async fn multipart(
        &self,
        bucket: &Bucket,
        size: u64,
        mtime: Option<i64>,
    ) -> Result<super::Multipart, Refusal> {
        let mtime = mtime.unwrap_or_else(super::upload::now);
        super::Multipart::start(bucket, self.key.clone(), self.record.clone(), (size, mtime), self.shown.clone()).await
    }
}

impl Bucket {
    /// The facts of the object at `key` (`HEAD`, its metadata read), or
    /// `None` if there is none.
    pub(super) async fn head(&self, key: &Path) -> object_store::Result<Option<Object>> {
        let options = GetOptions { head: true, ..GetOptions::default() };
        match self.store.get_opts(key, options).await {
            Ok(got) => Ok(Some(self.learn(key, &got.meta, &got.attributes))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An object's facts from its listing and metadata, remembered.
    fn learn(&self, key: &Path, meta: &ObjectMeta, attributes: &Attributes) -> Object {
        let get = |name: &'static str| attributes.get(&Attribute::Metadata(name.into())).map(|v| v.to_string());
        let mtime = get(META_MTIME).and_then(|v| v.parse().ok()).unwrap_or_else(|| meta.last_modified.timestamp());
        let mut blake3 = get(META_BLAKE3).and_then(|v| blake3::Hash::from_hex(v).ok());
        let mut object = Object { size: meta.size, mtime, etag: meta.e_tag.clone(), blake3: None };
        if blake3.is_none() {
            // Computed on an earlier read of this same version.
            let known = self.known.lock().expect("known poisoned");
            blake3 = known
                .get(key.as_ref())
                .filter(|k| k.size == object.size && same_etag(&k.etag, &object.etag))
                .and_then(|k| k.blake3);
        }
        object.blake3 = blake3;
        self.remember(key, object.clone());
        object
    }

    /// Remembers what is known of the object at `key`.
    pub(super) fn remember(&self, key: &Path, object: Object) {
        let mut known = self.known.lock().expect("known poisoned");
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(key.as_ref().to_owned(), object);
    }

    /// What is remembered of a listed object, if it is still that one.
    fn known_as_listed(&self, meta: &ObjectMeta) -> Option<Object> {
        let known = self.known.lock().expect("known poisoned");
        let mut object = known
            .get(meta.location.as_ref())
            .filter(|k| k.size == meta.size && same_etag(&k.etag, &meta.e_tag))
            .cloned()?;
        // As the store spells it now (conditional reads send it back).
        object.etag.clone_from(&meta.e_tag);
        Some(object)
    }

    /// The facts of listed objects: remembered, else read ([`HEADS_AT_ONCE`]
    /// at a time), in the order given.
    pub(super) async fn objects(&self, metas: Vec<ObjectMeta>, path: &str) -> Result<Vec<Object>, Refusal> {
        let asks = metas.into_iter().map(|meta| {
            let (b, path) = (self.clone(), path.to_owned());
            async move {
                if let Some(known) = b.known_as_listed(&meta) {
                    return Ok(known);
                }
                match b.head(&meta.location).await {
                    Ok(Some(object)) => Ok(object),
                    // Gone since it was listed: as listed.
                    Ok(None) => Ok(Object {
                        size: meta.size,
                        mtime: meta.last_modified.timestamp(),
                        etag: meta.e_tag.clone(),
                        blake3: None,
                    }),
                    Err(e) => Err(store_refusal(&path, e)),
                }
            }
        });
        futures_util::stream::iter(asks).buffered(HEADS_AT_ONCE).try_collect().await
    }

    /// The object at `path`, or `None`: a directory, or nothing.
    ///
    /// # Errors
    ///
    /// A bad path, the store's error.
    pub(crate) async fn object(&self, path: &str) -> Result<Option<(Path, Object)>, Refusal> {
        let (key, name) = self.key(path)?;
        if name.is_none() {
            return Ok(None);
        }
        Ok(self.head(&key).await.map_err(|e| store_refusal(path, e))?.map(|o| (key, o)))
    }

    /// The whole-file BLAKE3 of an object: from its metadata or memory,
    /// else read (and remembered for this version).
    ///
    /// # Errors
    ///
    /// The store's; [`ErrorCode::Busy`] if it changed while read.
    pub(crate) async fn hash_of(&self, key: &Path, object: &Object, path: &str) -> Result<blake3::Hash, Refusal> {
        if let Some(hash) = object.blake3 {
            return Ok(hash);
        }
        let mut hasher = blake3::Hasher::new();
        if object.size > 0 {
            let options = GetOptions { if_match: object.etag.clone(), ..GetOptions::default() };
            let got = self.store.get_opts(key, options).await.map_err(|e| read_refusal(path, e))?;
            let mut body = got.into_stream();
            while let Some(chunk) = body.try_next().await.map_err(|e| read_refusal(path, e))? {
                hasher.update(&chunk);
            }
        }
        let hash = hasher.finalize();
        self.learned(key, object, hash);
        Ok(hash)
    }

    /// Remembers the hash of an object read whole.
    pub(super) fn learned(&self, key: &Path, object: &Object, hash: blake3::Hash) {
        let mut object = object.clone();
        object.blake3 = Some(hash);
        self.remember(key, object);
    }

    /// Remembers the hash a read computed, for the version it read.
    pub(crate) fn read_hashed(&self, reading: &Reading, hash: blake3::Hash) {
        let object = Object { size: reading.size, mtime: reading.mtime, etag: reading.etag.clone(), blake3: None };
        self.learned(&reading.key, &object, hash);
    }

    /// Opens the object at `path` to send from `offset`: there, if the
    /// client's `prefix` hash is that of the object's first `offset`
    /// bytes (or no hash is given), else from the start.
    ///
    /// # Errors
    ///
    /// A bad or missing path, a directory ([`ErrorCode::IsADirectory`]),
    /// the store's error.
    pub(crate) async fn read(&self, path: &str, offset: u64, prefix: Option<&str>) -> Result<Reading, Refusal> {
        let (key, name) = self.key(path)?;
        let Some(object) = (match name {
            Some(_) => self.head(&key).await.map_err(|e| store_refusal(path, e))?,
            None => None,
        }) else {
            return match self.stat(path).await {
                Ok(_) => Err(Refusal::new(ErrorCode::IsADirectory, format!("{}: is a directory", shown(path)))),
                Err(r) => Err(r),
            };
        };
        tracing::debug!(path = %shown(path), size = object.size, hash_known = object.blake3.is_some(), "reading an object");
        let same =
            |range: Option<GetRange>| GetOptions { if_match: object.etag.clone(), range, ..GetOptions::default() };
        let mut start = 0;
        let mut hasher = None;
        if offset > 0 && offset <= object.size {
            // The client's prefix is checked (and, if the hash is not
            // known, hashed) by reading it here, not sending it.
            let got = self
                .store
                .get_opts(&key, same(Some(GetRange::Bounded(0..offset))))
                .await
                .map_err(|e| read_refusal(path, e))?;
            let mut h = blake3::Hasher::new();
            let mut body = got.into_stream();
            while let Some(chunk) = body.try_next().await.map_err(|e| read_refusal(path, e))? {
                h.update(&chunk);
            }
            if prefix.is_none_or(|p| h.finalize().to_hex().as_str() == p) {
                start = offset;
                hasher = Some(h);
            }
        }
        if object.blake3.is_some() {
            hasher = None;
        } else if hasher.is_none() {
            hasher = Some(blake3::Hasher::new());
        }
        let body = if object.size - start > READ_RANGE {
            // Large: ranges read [`READS_AT_ONCE`] at a time, sent in
            // order (one stream from an object store is slower than the
            // connection; rclone reads large objects the same way).
            let (store, key, etag) = (self.store.clone(), key.clone(), object.etag.clone());
            let ranges = (start..object.size).step_by(READ_RANGE as usize).map(move |at| {
                let (store, key) = (store.clone(), key.clone());
                let options = GetOptions {
                    if_match: etag.clone(),
                    range: Some(GetRange::Bounded(at..(at + READ_RANGE).min(object.size))),
                    ..GetOptions::default()
                };
                async move { store.get_opts(&key, options).await?.bytes().await }
            });
            futures_util::stream::iter(ranges).buffered(READS_AT_ONCE).boxed()
        } else if start < object.size {
            let range = (start > 0).then_some(GetRange::Offset(start));
            self.store.get_opts(&key, same(range)).await.map_err(|e| read_refusal(path, e))?.into_stream()
        } else {
            futures_util::stream::empty().boxed()
        };
        Ok(Reading {
            size: object.size,
            mtime: object.mtime,
            start,
            body,
            known: object.blake3,
            hasher,
            key,
            etag: object.etag,
        })
    }

    /// Claims `path` for an upload (waiting up to [`CLAIM_WAIT`] for
    /// another of it through this server to end), then checks it: not
    /// the root, not a directory, no file as a parent, nothing there
    /// unless `force`.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Busy`], [`ErrorCode::IsADirectory`],
    /// [`ErrorCode::NotADirectory`], [`ErrorCode::Exists`], a bad path,
    /// the store's error.
    pub(crate) async fn admit(&self, path: &str, force: bool) -> Result<Target, Refusal> {
        let target = self.claim(path).await?;
        let is_dir = self.store.list(Some(&target.key)).try_next().await.map_err(|e| store_refusal(path, e))?.is_some();
        if is_dir {
            return Err(Refusal::new(
                ErrorCode::IsADirectory,
                format!("{}: is a directory on the server", target.shown),
            ));
        }
        if !force && self.head(&target.key).await.map_err(|e| store_refusal(path, e))?.is_some() {
            return Err(exists(&target.shown));
        }
        let parts: Vec<String> = target.key.parts().map(|p| p.as_ref().to_owned()).collect();
        for i in self.prefix_depth() + 1..parts.len() {
            let parent = raw_path(parts[..i].iter().map(String::as_str));
            if self.head(&parent).await.map_err(|e| store_refusal(path, e))?.is_some() {
                let msg = format!("{}: a parent is a file", target.shown);
                return Err(Refusal::new(ErrorCode::NotADirectory, msg));
            }
        }
        Ok(target)
    }

    /// Claims `path` for an upload whose checks were made already (a
    /// tree's, decided against its listing).
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Busy`], a bad path.
    pub(crate) async fn claim(&self, path: &str) -> Result<Target, Refusal> {
        let (key, record, shown) = self.record_of(path)?;
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            if self.busy.lock().expect("busy poisoned").insert(key.as_ref().to_owned()) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let msg = format!("{shown}: another upload of it is under way; try again when it ends");
                return Err(Refusal::new(ErrorCode::Busy, msg));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let claim = Claim { busy: self.busy.clone(), key: key.as_ref().to_owned() };
        Ok(Target { key, record, shown, _claim: claim })
    }

    /// The key of `path`, of its resume record (`DIR/.NAME.fwpart`), and
    /// the path as messages show it.
    pub(super) fn record_of(&self, path: &str) -> Result<(Path, Path, String), Refusal> {
        let (key, name) = self.key(path)?;
        let Some(name) = name else {
            return Err(Refusal::new(ErrorCode::IsADirectory, "the served root is a directory"));
        };
        let record_name = crate::services::root::partial_name(std::ffi::OsStr::new(&name));
        let record_name = record_name.to_str().unwrap_or_default();
        let record = match key.as_ref().rsplit_once('/') {
            Some((parent, _)) => raw_path(parent.split('/').chain([record_name])),
            None => raw_path([record_name]),
        };
        Ok((key, record, shown(path)))
    }

    /// Components of the root's prefix.
    pub(super) fn prefix_depth(&self) -> usize {
        self.spec.prefix.split('/').filter(|p| !p.is_empty()).count()
    }

    /// Every object below the directory key `key` (markers and records
    /// too).
    async fn below(&self, key: &Path, path: &str) -> Result<Vec<ObjectMeta>, Refusal> {
        let base = (!key.as_ref().is_empty()).then_some(key);
        self.store.list(base).try_collect().await.map_err(|e| store_refusal(path, e))
    }

    /// Removes `path`: an object, or (if `recursive`) a directory with
    /// all below it; whether anything was there.
    ///
    /// # Errors
    ///
    /// The root ([`ErrorCode::BadPath`]), a directory without
    /// `recursive` ([`ErrorCode::IsADirectory`]), the store's error.
    pub(crate) async fn remove(&self, path: &str, recursive: bool) -> Result<bool, Refusal> {
        let (key, name) = self.key(path)?;
        if name.is_none() {
            return Err(Refusal::new(ErrorCode::BadPath, "the served root is never removed"));
        }
        if self.head(&key).await.map_err(|e| store_refusal(path, e))?.is_some() {
            self.store.delete(&key).await.map_err(|e| store_refusal(path, e))?;
            self.known.lock().expect("known poisoned").remove(key.as_ref());
            return Ok(true);
        }
        let below = self.below(&key, path).await?;
        if below.is_empty() {
            return Ok(false);
        }
        if !recursive {
            return Err(Refusal::new(ErrorCode::IsADirectory, format!("{}: is a directory (use -r)", shown(path))));
        }
        // Uploads under way below are aborted with their records.
        let records: Vec<Path> = below
            .iter()
            .filter(|m| m.location.filename().is_some_and(|n| is_partial_name(n.as_bytes())))
            .map(|m| m.location.clone())
            .collect();
        for record in records {
            self.abort_recorded(&record).await;
        }
        let keys = futures_util::stream::iter(below.into_iter().map(|m| Ok(m.location))).boxed();
        let mut deleted = self.store.delete_stream(keys);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(key) => {
                    self.known.lock().expect("known poisoned").remove(key.as_ref());
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_refusal(path, e)),
            }
        }
        Ok(true)
    }

    /// Aborts the upload a record at `record` names (if it parses), for
    /// the object beside it.
    async fn abort_recorded(&self, record: &Path) {
        let Ok(got) = self.store.get(record).await else { return };
        let Ok(body) = got.bytes().await else { return };
        let Ok(r) = serde_json::from_slice::<super::upload::Record>(&body) else { return };
        let Some(name) = record.filename().and_then(|n| n.strip_prefix('.')).and_then(|n| n.strip_suffix(".fwpart"))
        else {
            return;
        };
        let object = match record.as_ref().rsplit_once('/') {
            Some((parent, _)) => raw_path(parent.split('/').chain([name])),
            None => raw_path([name]),
        };
        self.abort(&object, &r.upload_id).await;
    }

    /// Moves `from` to `to`: a server-side copy of each object, then the
    /// delete of the originals. Not atomic (DESIGN.md): a failure part
    /// way leaves both names, never neither. Without `force`, nothing
    /// may be at `to`.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotFound`] (no `from`, or no parent of `to`),
    /// [`ErrorCode::Exists`], [`ErrorCode::BadPath`] (the root, a
    /// directory into itself), the store's error. Objects over the spec's
    /// `copy_max` are copied in parts through the server
    /// ([`copy_in_parts`](Self::copy_in_parts)).
    pub(crate) async fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Refusal> {
        let (from_key, from_name) = self.key(from)?;
        let (to_key, to_name) = self.key(to)?;
        if from_name.is_none() || to_name.is_none() {
            return Err(Refusal::new(ErrorCode::BadPath, "the served root is never moved"));
        }
        if from_key == to_key {
            return Ok(());
        }
        // The parent of `to` must be a directory (or the root).
        if let Some((parent, _)) = to.trim_end_matches('/').rsplit_once('/') {
            match self.stat(parent).await {
                Ok(e) if e.kind == crate::proto::Kind::Dir => {}
                Ok(_) => {
                    return Err(Refusal::new(ErrorCode::NotADirectory, format!("{}: a parent is a file", shown(to))))
                }
                Err(r) if r.code == ErrorCode::NotFound => {
                    return Err(Refusal::new(ErrorCode::NotFound, format!("{}: its parent does not exist", shown(to))))
                }
                Err(r) => return Err(r),
            }
        }
        let there = match self.stat(to).await {
            Ok(e) => Some(e),
            Err(r) if r.code == ErrorCode::NotFound => None,
            Err(r) => return Err(r),
        };
        if there.is_some() && !force {
            return Err(Refusal::new(
                ErrorCode::Exists,
                format!("{}: exists on the server (--force replaces it)", shown(to)),
            ));
        }
        if let Some(object) = self.head(&from_key).await.map_err(|e| store_refusal(from, e))? {
            if there.is_some_and(|e| e.kind == crate::proto::Kind::Dir) {
                return Err(Refusal::new(
                    ErrorCode::IsADirectory,
                    format!("{}: is a directory on the server", shown(to)),
                ));
            }
            return self.move_objects(vec![(from_key, to_key, object.size)], from, force).await;
        }
        let below = self.below(&from_key, from).await?;
        if below.is_empty() {
            return Err(not_found(from));
        }
        if to_key.as_ref().starts_with(&format!("{}/", from_key.as_ref())) {
            return Err(Refusal::new(
                ErrorCode::BadPath,
                format!("{}: a directory cannot move below itself", shown(to)),
            ));
        }
        if there.is_some() {
            self.remove(to, true).await?;
        }
        let depth = from_key.parts().count();
        let moves = below
            .into_iter()
            .map(|m| {
                let rest: Vec<String> = m.location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect();
                let dest = raw_path(to_key.parts().map(|p| p.as_ref().to_owned()).chain(rest));
                (m.location, dest, m.size)
            })
            .collect();
        self.move_objects(moves, from, force).await
    }

    /// Copies an object too large for one `CopyObject` through the server:
    /// ranged reads of its one version (`If-Match`), each stored as a part
    /// of a multipart upload at `to` (four at once), created with the
    /// object's mtime and BLAKE3 (when known) as metadata, completed with
    /// `If-None-Match: *` unless `force`; aborted on any failure.
    async fn copy_in_parts(&self, from: &Path, to: &Path, force: bool, path: &str) -> Result<(), Refusal> {
        let Some(object) = self.head(from).await.map_err(|e| store_refusal(path, e))? else {
            return Err(not_found(path));
        };
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(META_MTIME.into()), object.mtime.to_string().into());
        if let Some(hash) = object.blake3 {
            attributes.insert(Attribute::Metadata(META_BLAKE3.into()), hash.to_hex().to_string().into());
        }
        let options = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let id = self.store.create_multipart_opts(to, options).await.map_err(|e| store_refusal(path, e))?;
        let parts = (0..object.size).step_by(super::PART as usize).enumerate().map(|(i, at)| {
            let (store, from, to, id) = (self.store.clone(), from.clone(), to.clone(), id.clone());
            let options = GetOptions {
                if_match: object.etag.clone(),
                range: Some(GetRange::Bounded(at..(at + super::PART).min(object.size))),
                ..GetOptions::default()
            };
            async move {
                let data = store.get_opts(&from, options).await?.bytes().await?;
                store.put_part(&to, &id, i, object_store::PutPayload::from_bytes(data)).await
            }
        });
        let stored: Result<Vec<_>, _> =
            futures_util::stream::iter(parts).buffered(super::upload::PARTS_IN_FLIGHT).try_collect().await;
        let parts = match stored {
            Ok(parts) => parts,
            Err(e) => {
                self.abort(to, &id.to_string()).await;
                return Err(read_refusal(path, e));
            }
        };
        let replacing = super::upload::Replacing::new(self, id.as_ref(), force);
        let done = self.store.complete_multipart(to, &id, parts).await;
        drop(replacing);
        match done {
            Ok(done) => {
                self.remember(to, Object { etag: done.e_tag, ..object });
                Ok(())
            }
            Err(e) => {
                self.abort(to, &id.to_string()).await;
                if super::upload::is_exists(&e) {
                    return Err(exists(&shown(to.as_ref())));
                }
                Err(store_refusal(path, e))
            }
        }
    }

    /// Copies each `(from, to)`, then deletes each `from`.
    async fn move_objects(&self, moves: Vec<(Path, Path, u64)>, path: &str, force: bool) -> Result<(), Refusal> {
        let copy_max = self.spec.copy_max;
        let copies = moves.clone().into_iter().map(|(from, to, size)| {
            let (b, path) = (self.clone(), path.to_owned());
            async move {
                if size > copy_max {
                    return b.copy_in_parts(&from, &to, force, &path).await;
                }
                // `CopyObject` keeps the metadata: the hash and mtime move too.
                b.store.copy(&from, &to).await.map_err(|e| store_refusal(&path, e))?;
                let known = b.known.lock().expect("known poisoned").remove(from.as_ref());
                if let Some(mut object) = known {
                    // The copy's ETag may differ: only the hash is carried.
                    if let Ok(Some(copied)) = b.head(&to).await {
                        object.etag = copied.etag;
                        b.remember(&to, object);
                    }
                }
                Ok::<_, Refusal>(())
            }
        });
        // Copies in parts hold four parts each: fewer of them at once.
        let at_once = if moves.iter().any(|(_, _, size)| *size > copy_max) { 2 } else { HEADS_AT_ONCE };
        futures_util::stream::iter(copies).buffer_unordered(at_once).try_collect::<Vec<()>>().await?;
        let keys = futures_util::stream::iter(moves.into_iter().map(|(from, _, _)| Ok(from))).boxed();
        let mut deleted = self.store.delete_stream(keys);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_refusal(path, e)),
            }
        }
        Ok(())
    }

    /// Aborts the uploads whose records were last written more than
    /// `max_age` ago, and removes the records; returns the paths (below
    /// the root) of the files they were for, with the bytes stored.
    ///
    /// # Errors
    ///
    /// A listing that fails.
    pub(crate) async fn prune_uploads(&self, max_age: std::time::Duration) -> Result<Vec<(String, u64)>, Refusal> {
        let records = self.list("", Listing::Partials, usize::MAX).await?;
        let cutoff = chrono_cutoff(max_age);
        let mut removed = Vec::new();
        let stale: Vec<Entry> = records.into_iter().filter(|e| e.mtime < cutoff).collect();
        for e in stale {
            let (key, _) = match self.record_key(&e.name) {
                Some(k) => k,
                None => continue,
            };
            let held = match self.store.get(&key).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<super::upload::Record>(&b).ok())
                    .map_or(0, |r| r.parts.len() as u64 * super::PART),
                Err(_) => 0,
            };
            self.abort_recorded(&key).await;
            if self.store.delete(&key).await.is_ok() {
                let file = match e.name.rsplit_once('/') {
                    Some((dir, n)) => format!("{dir}/{}", original_name(n)),
                    None => original_name(&e.name),
                };
                removed.push((file, held));
            }
        }
        Ok(removed)
    }

    /// The key of a record listed by its path below the root.
    fn record_key(&self, listed: &str) -> Option<(Path, ())> {
        let joined = match self.spec.prefix.as_str() {
            "" => listed.to_owned(),
            p => format!("{p}/{listed}"),
        };
        Path::parse(joined).ok().map(|k| (k, ()))
    }

    /// Every file and directory below `path` (names relative to it), as
    /// [`Listing::Tree`] lists them, with each file's object facts: what
    /// a tree upload decides against, read once.
    ///
    /// # Errors
    ///
    /// A bad path, the store's error.
    pub(crate) async fn tree_index(&self, path: &str) -> Result<TreeIndex, Refusal> {
        let (key, name) = self.key(path)?;
        let base = name.map(|_| key.clone());
        let depth = base.as_ref().map_or(self.prefix_depth(), |b| b.parts().count());
        let mut index = TreeIndex::default();
        let mut objects = self.store.list(base.as_ref().or((!key.as_ref().is_empty()).then_some(&key)));
        while let Some(object) = objects.try_next().await.map_err(|e| store_refusal(path, e))? {
            if index.files.len() >= TREE_INDEX_MAX {
                let msg = format!(
                    "{}: more than {TREE_INDEX_MAX} objects below it; copy a smaller part of the tree",
                    shown(path)
                );
                return Err(Refusal::new(ErrorCode::TooLarge, msg));
            }
            let parts: Vec<String> = object.location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect();
            let Some((last, parents)) = parts.split_last() else { continue };
            for i in 1..=parents.len() {
                index.dirs.insert(parents[..i].join("/"));
            }
            if last == DIR_MARKER || is_partial_name(last.as_bytes()) {
                continue;
            }
            index.files.insert(parts.join("/"), object);
        }
        Ok(index)
    }

    /// The entry for an object listed in a [`TreeIndex`], with its facts.
    ///
    /// # Errors
    ///
    /// The store's.
    pub(crate) async fn entries_of(
        &self,
        listed: Vec<(String, ObjectMeta)>,
        path: &str,
    ) -> Result<Vec<(Entry, Path, Object)>, Refusal> {
        let objects = self.objects(listed.iter().map(|(_, m)| m.clone()).collect(), path).await?;
        Ok(listed.into_iter().zip(objects).map(|((name, m), o)| (object_entry(name, &o), m.location, o)).collect())
    }

    /// A directory's entry, as listings give it.
    pub(crate) fn dir_entry(name: String) -> Entry {
        dir_entry(name, 0)
    }
}

/// What is below a directory of a bucket, read with one listing.
#[derive(Debug, Default)]
pub(crate) struct TreeIndex {
    /// Files by path relative to the directory.
    pub files: BTreeMap<String, ObjectMeta>,
    /// Directories by path relative to it.
    pub dirs: std::collections::BTreeSet<String>,
}

/// `.NAME.fwpart` → `NAME`.
fn original_name(record: &str) -> String {
    record.strip_prefix('.').and_then(|n| n.strip_suffix(".fwpart")).unwrap_or(record).to_owned()
}

/// Seconds since the epoch, `age` ago.
fn chrono_cutoff(age: std::time::Duration) -> i64 {
    super::upload::now().saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
}

/// A key from segments as the store names them (raw: `Path::from_iter`
/// would percent-encode `[`, `%` and the like a second time).
fn raw_path<S: AsRef<str>>(parts: impl IntoIterator<Item = S>) -> Path {
    let joined = parts.into_iter().map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/");
    Path::parse(&joined).unwrap_or_else(|_| Path::from(joined.as_str()))
}

/// Whether two ETags are the same, however quoted (a completion's answer
/// and a listing may spell one differently).
fn same_etag(a: &Option<String>, b: &Option<String>) -> bool {
    let bare = |e: &Option<String>| e.as_deref().map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned());
    matches!((bare(a), bare(b)), (Some(a), Some(b)) if a == b)
}

/// A read's error: an object that changed meanwhile is `busy`.
fn read_refusal(path: &str, e: object_store::Error) -> Refusal {
    if super::upload::is_exists(&e) {
        let msg = format!("{}: the object changed while it was read; try again", shown(path));
        return Refusal::new(ErrorCode::Busy, msg);
    }
    store_refusal(path, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_however_quoted() {
        let e = |s: &str| Some(s.to_owned());
        assert!(same_etag(&e("\"abc-3\""), &e("abc-3")));
        assert!(same_etag(&e("W/\"abc\""), &e("\"abc\"")));
        assert!(!same_etag(&e("\"abc\""), &e("\"abd\"")));
        assert!(!same_etag(&None, &None), "no ETag says nothing");
    }
}
