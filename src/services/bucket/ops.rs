//! What the files service asks of a bucket besides listings: the facts
//! of an object, reads from an offset, the claim and checks before an
//! upload, removal, moves, and the sweep of abandoned uploads.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

use super::{
    dir_entry, not_found, object_entry, store_fault, Bucket, Kept, Key, Object, DIR_MARKER, HEADS_AT_ONCE, KNOWN_MAX,
    META_BLAKE3,
};
use crate::proto::{Entry, Kind};
use crate::services::files::{shown, Sandbox, CLAIM_WAIT};
use crate::services::root::is_partial_name;
use crate::services::{Fault, PathRule};

/// The largest object the store copies in one request (S3's limit for
/// `CopyObject`); `mv` copies a larger one through the server, in parts
/// (object_store has no ranged part copy).
pub(crate) const COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// The ranges a large object is read in, and how many are read at once.
const READ_RANGE: u64 = 8 * 1024 * 1024;
const READS_AT_ONCE: usize = 4;

/// The most objects a tree upload decides against (its index is held in
/// memory, about 300 bytes an object).
pub const TREE_INDEX_MAX: usize = 2_000_000;

/// An object being read from an offset.
pub(crate) struct Reading {
    /// Its size.
    pub size: u64,
    /// The uploaded file's mtime.
    pub mtime: i64,
    /// The same to the nanosecond, where stored.
    pub mtime_ns: Option<i64>,
    /// The uploaded file's permission bits, where stored.
    pub mode: Option<u32>,
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
pub(crate) struct KeyClaim {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for KeyClaim {
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
    /// The path as the client named it.
    pub path: String,
    _claim: KeyClaim,
}

impl Target {
    /// Stores a small file whole (its hash verified already), keeping
    /// `kept` as its metadata.
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
        kept: Kept,
        force: bool,
    ) -> Result<(), Fault> {
        bucket.put_whole(&self.key, body, hash, kept, force, &self.path).await
    }

    /// Starts (or takes up) the multipart upload of a large file, created
    /// with `kept` as its metadata (taken up only if its record was
    /// created with the same).
    ///
    /// # Errors
    ///
    /// The store's.
    pub(crate) async fn multipart(&self, bucket: &Bucket, size: u64, kept: Kept) -> Result<super::Multipart, Fault> {
        super::Multipart::start(bucket, self.key.clone(), self.record.clone(), (size, kept), self.path.clone()).await
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
        let Kept { mtime, mtime_ns, mode } = Kept::read(get, meta.last_modified.timestamp());
        let mut blake3 = get(META_BLAKE3).and_then(|v| blake3::Hash::from_hex(v).ok());
        let mut object = Object { size: meta.size, mtime, mtime_ns, mode, etag: meta.e_tag.clone(), blake3: None };
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
    pub(super) async fn objects(&self, metas: Vec<ObjectMeta>, path: &str) -> Result<Vec<Object>, Fault> {
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
                        mtime_ns: None,
                        mode: None,
                        etag: meta.e_tag.clone(),
                        blake3: None,
                    }),
                    Err(e) => Err(store_fault(&path, e)),
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
    pub(crate) async fn object(&self, path: &str) -> Result<Option<(Path, Object)>, Fault> {
        let (key, name) = self.key(path)?;
        if name.is_none() {
            return Ok(None);
        }
        Ok(self.head(&key).await.map_err(|e| store_fault(path, e))?.map(|o| (key, o)))
    }

    /// The whole-file BLAKE3 of an object: from its metadata or memory,
    /// else read (and remembered for this version).
    ///
    /// # Errors
    ///
    /// The store's; [`ErrorCode::Busy`] if it changed while read.
    pub(crate) async fn hash_of(&self, key: &Path, object: &Object, path: &str) -> Result<blake3::Hash, Fault> {
        if let Some(hash) = object.blake3 {
            return Ok(hash);
        }
        let mut hasher = blake3::Hasher::new();
        if object.size > 0 {
            let options = GetOptions { if_match: object.etag.clone(), ..GetOptions::default() };
            let got = self.store.get_opts(key, options).await.map_err(|e| read_fault(path, e))?;
            let mut body = got.into_stream();
            while let Some(chunk) = body.try_next().await.map_err(|e| read_fault(path, e))? {
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
        let object = Object {
            size: reading.size,
            mtime: reading.mtime,
            mtime_ns: reading.mtime_ns,
            mode: reading.mode,
            etag: reading.etag.clone(),
            blake3: None,
        };
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
    pub(crate) async fn read(&self, path: &str, offset: u64, prefix: Option<&str>) -> Result<Reading, Fault> {
        let (key, name) = self.key(path)?;
        let Some(object) = (match name {
            Some(_) => self.head(&key).await.map_err(|e| store_fault(path, e))?,
            None => None,
        }) else {
            return match self.stat(path).await {
                Ok(_) => Err(Fault::IsADirectory { path: path.to_owned() }),
                Err(r) => Err(r),
            };
        };
        super::file_found(path)?;
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
                .map_err(|e| read_fault(path, e))?;
            let mut h = blake3::Hasher::new();
            let mut body = got.into_stream();
            while let Some(chunk) = body.try_next().await.map_err(|e| read_fault(path, e))? {
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
            self.store.get_opts(&key, same(range)).await.map_err(|e| read_fault(path, e))?.into_stream()
        } else {
            futures_util::stream::empty().boxed()
        };
        Ok(Reading {
            size: object.size,
            mtime: object.mtime,
            mtime_ns: object.mtime_ns,
            mode: object.mode,
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
    pub(crate) async fn admit(&self, path: &str, force: bool) -> Result<Target, Fault> {
        if Sandbox::relative(path)?.names_dir() {
            return Err(Fault::TrailingSlash { path: path.to_owned() });
        }
        let target = self.claim(path).await?;
        if self.first_below(&target.key).await.map_err(|e| store_fault(path, e))?.is_some() {
            return Err(Fault::IsADirectory { path: path.to_owned() });
        }
        if !force && self.head(&target.key).await.map_err(|e| store_fault(path, e))?.is_some() {
            return Err(Fault::Exists { path: path.to_owned() });
        }
        let parts: Vec<String> = target.key.parts().map(|p| p.as_ref().to_owned()).collect();
        for i in self.prefix_depth() + 1..parts.len() {
            let parent = raw_path(parts[..i].iter().map(String::as_str));
            if self.head(&parent).await.map_err(|e| store_fault(path, e))?.is_some() {
                return Err(Fault::ParentNotADirectory { path: path.to_owned() });
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
    pub(crate) async fn claim(&self, path: &str) -> Result<Target, Fault> {
        let (key, record, path) = self.record_of(path)?;
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            if self.busy.lock().expect("busy poisoned").insert(key.as_ref().to_owned()) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Fault::Busy { path });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let claim = KeyClaim { busy: self.busy.clone(), key: key.as_ref().to_owned() };
        Ok(Target { key, record, path, _claim: claim })
    }

    /// The key of `path`, of its resume record (`DIR/.NAME.fwpart`), and
    /// the path itself.
    pub(super) fn record_of(&self, path: &str) -> Result<(Path, Path, String), Fault> {
        let (key, name) = self.key(path)?;
        let Some(name) = name else {
            return Err(Fault::IsADirectory { path: path.to_owned() });
        };
        let record_name = crate::services::root::partial_name(std::ffi::OsStr::new(&name));
        let record_name = record_name.to_str().unwrap_or_default();
        let record = match key.as_ref().rsplit_once('/') {
            Some((parent, _)) => raw_path(parent.split('/').chain([record_name])),
            None => raw_path([record_name]),
        };
        Ok((key, record, path.to_owned()))
    }

    /// Components of the root's prefix.
    pub(super) fn prefix_depth(&self) -> usize {
        self.spec.prefix.split('/').filter(|p| !p.is_empty()).count()
    }

    /// Removes `path`: an object, or (if `recursive`) a directory with
    /// all below it, a page of keys at a time (markers, another tool's
    /// `DIR/` ones too, and records, aborting those uploads); whether
    /// anything was there. Keys no path names are left (each was named in
    /// a warning when listed).
    ///
    /// # Errors
    ///
    /// The root ([`ErrorCode::BadPath`]), a directory without
    /// `recursive` ([`ErrorCode::IsADirectory`]), the store's error.
    pub(crate) async fn remove(&self, path: &str, recursive: bool) -> Result<bool, Fault> {
        let (key, name) = self.key(path)?;
        if name.is_none() {
            return Err(Fault::bad_path(path, PathRule::RootRemoved));
        }
        if self.head(&key).await.map_err(|e| store_fault(path, e))?.is_some() {
            self.store.delete(&key).await.map_err(|e| store_fault(path, e))?;
            self.known.lock().expect("known poisoned").remove(key.as_ref());
            return Ok(true);
        }
        if !recursive {
            // One key says it is a directory: nothing more is listed.
            return match self.first_below(&key).await.map_err(|e| store_fault(path, e))? {
                Some(_) => Err(Fault::IsADirectory { path: path.to_owned() }),
                None => Ok(false),
            };
        }
        let mut removed = false;
        let mut pages = self.pages(&key, false);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault(path, e))? {
            removed |= !page.is_empty();
            let (mut objects, mut markers) = (Vec::new(), Vec::new());
            for listed in page {
                match listed {
                    Key::Object(m) => objects.push(m.location),
                    Key::Marker { raw, .. } => markers.push(raw),
                    Key::Dir(_) | Key::Unnameable => {}
                }
            }
            self.delete_objects(objects, path).await?;
            // A marker after what it marks (a store keeping directories
            // may refuse to delete one with something in it).
            for raw in markers.iter().rev() {
                self.raw.delete(raw).await.map_err(|e| store_fault(path, e))?;
            }
        }
        Ok(removed)
    }

    /// Deletes objects (one page's), aborting first the uploads that
    /// records among them name; forgets them.
    async fn delete_objects(&self, keys: Vec<Path>, path: &str) -> Result<(), Fault> {
        for record in keys.iter().filter(|k| k.filename().is_some_and(|n| is_partial_name(n.as_bytes()))) {
            self.abort_recorded(record).await;
        }
        let keys = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(keys);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(key) => {
                    self.known.lock().expect("known poisoned").remove(key.as_ref());
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_fault(path, e)),
            }
        }
        Ok(())
    }

    /// Aborts the upload a record at `record` names (if it parses), for
    /// the object beside it.
    async fn abort_recorded(&self, record: &Path) {
        if let Some(r) = self.record_at(record).await {
            self.abort(&recorded_object(record), &r.upload_id).await;
        }
    }

    /// The record at `record`, if there is one that parses.
    async fn record_at(&self, record: &Path) -> Option<super::upload::Record> {
        let body = self.store.get(record).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Moves `from` to `to` with the answers a local root's `renameat2`
    /// gives (PROTOCOL.md §4.6.2.1): without `force` nothing at `to` is
    /// replaced (`exists`); with it a file replaces a file, and a
    /// directory takes the place only of an empty directory (`exists`
    /// otherwise: an ancestor of `from` is never empty); a file onto a
    /// directory is `is_a_directory`, a directory onto a file
    /// `not_a_directory`, a directory below itself `bad_path`.
    ///
    /// Each object is copied server-side, the copy checked (`HEAD`: there,
    /// at its size), and only then the original deleted; a directory so, a
    /// page of keys at a time. Not atomic (DESIGN.md): a failure part way
    /// leaves some objects under the old name and the rest under the new,
    /// never one under neither.
    ///
    /// # Errors
    ///
    /// As above; [`ErrorCode::NotFound`] (no `from`, or no parent of
    /// `to`), the store's error. Objects over the spec's `copy_max` are
    /// copied in parts through the server
    /// ([`copy_in_parts`](Self::copy_in_parts)).
    pub(crate) async fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Fault> {
        let (from_key, from_name) = self.key(from)?;
        let (to_key, to_name) = self.key(to)?;
        if from_name.is_none() {
            return Err(Fault::bad_path(from, PathRule::RootMoved));
        }
        if to_name.is_none() {
            return Err(Fault::bad_path(to, PathRule::RootMoved));
        }
        // The parent of `to` must be a directory (or the root).
        if let Some((parent, _)) = to.trim_end_matches('/').rsplit_once('/') {
            match self.stat(parent).await {
                Ok(e) if e.kind == Kind::Dir => {}
                Ok(_) => return Err(Fault::ParentNotADirectory { path: to.to_owned() }),
                Err(Fault::NotFound { .. }) => return Err(Fault::NoParent { path: to.to_owned() }),
                Err(r) => return Err(r),
            }
        }
        let file = self.head(&from_key).await.map_err(|e| store_fault(from, e))?;
        if file.is_none() && self.first_below(&from_key).await.map_err(|e| store_fault(from, e))?.is_none() {
            return Err(not_found(from));
        }
        let there = match self.stat(to).await {
            Ok(e) => Some(e.kind),
            Err(Fault::NotFound { .. }) => None,
            Err(r) => return Err(r),
        };
        let exists = || Fault::Exists { path: to.to_owned() };
        if there.is_some() && !force {
            return Err(exists());
        }
        if from_key == to_key {
            return Ok(());
        }
        if let Some(object) = file {
            if there == Some(Kind::Dir) {
                return Err(Fault::IsADirectory { path: to.to_owned() });
            }
            let moved = self.move_objects(vec![(from_key.clone(), to_key, object.size)], from, force).await?;
            return self.delete_objects(moved, from).await;
        }
        if to_key.as_ref().starts_with(&format!("{}/", from_key.as_ref())) {
            return Err(Fault::bad_path(to, PathRule::BelowItself));
        }
        match there {
            Some(Kind::Dir) if !self.is_empty_dir(&to_key).await.map_err(|e| store_fault(to, e))? => {
                return Err(exists());
            }
            Some(Kind::Dir) | None => {}
            Some(_) => return Err(Fault::NotADirectory { path: to.to_owned() }),
        }
        self.move_dir(&from_key, &to_key, from, force).await
    }

    /// Whether the directory key `dir` holds nothing but its own markers
    /// (`DIR/.fwdir`, another tool's `DIR/`): what a directory may replace.
    async fn is_empty_dir(&self, dir: &Path) -> object_store::Result<bool> {
        // Its own markers are at most two: a third key, if any, is listed.
        let page = self.raw.list(&self.dir_prefix(dir), false, &super::raw::From::Start, Some(3)).await?;
        let own = dir.clone().join(DIR_MARKER);
        Ok(self.classify(page).into_iter().all(|k| match k {
            Key::Object(m) => m.location == own,
            Key::Marker { dir: d, .. } => &d == dir,
            Key::Dir(_) | Key::Unnameable => false,
        }))
    }

    /// Moves every key below the directory key `from` to below `to`, a
    /// page at a time: the page's objects copied and checked, then
    /// deleted; another tool's `DIR/` markers become `.fwdir` ones; the
    /// uploads recorded there are aborted (an upload cannot move), their
    /// records deleted. Keys no path names stay where they are.
    async fn move_dir(&self, from: &Path, to: &Path, path: &str, force: bool) -> Result<(), Fault> {
        let depth = from.parts().count();
        let dest = |p: &Path| {
            raw_path(
                to.parts().map(|p| p.as_ref().to_owned()).chain(p.parts().skip(depth).map(|p| p.as_ref().to_owned())),
            )
        };
        let mut pages = self.pages(from, false);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault(path, e))? {
            let (mut moves, mut records, mut markers) = (Vec::new(), Vec::new(), Vec::new());
            for listed in page {
                match listed {
                    Key::Object(m) if m.location.filename().is_some_and(|n| is_partial_name(n.as_bytes())) => {
                        records.push(m.location)
                    }
                    Key::Object(m) => moves.push((m.location.clone(), dest(&m.location), m.size)),
                    Key::Marker { dir, raw, .. } => markers.push((raw, dest(&dir).join(DIR_MARKER))),
                    Key::Dir(_) | Key::Unnameable => {}
                }
            }
            let mut done = self.move_objects(moves, path, force).await?;
            for (_, marker) in &markers {
                self.store.put(marker, PutPayload::new()).await.map_err(|e| store_fault(path, e))?;
            }
            done.extend(records);
            self.delete_objects(done, path).await?;
            for (raw, _) in markers.iter().rev() {
                self.raw.delete(raw).await.map_err(|e| store_fault(path, e))?;
            }
        }
        Ok(())
    }

    /// Copies an object too large for one `CopyObject` through the server:
    /// ranged reads of its one version (`If-Match`), each stored as a part
    /// of a multipart upload at `to` (four at once), created with the
    /// object's metadata (its mtime, to the nanosecond where stored, its
    /// mode where stored, its BLAKE3 when known), completed with
    /// `If-None-Match: *` unless `force`; aborted on any failure.
    async fn copy_in_parts(&self, from: &Path, to: &Path, force: bool, path: &str) -> Result<(), Fault> {
        let Some(object) = self.head(from).await.map_err(|e| store_fault(path, e))? else {
            return Err(not_found(path));
        };
        let attributes = super::attributes(object.blake3.as_ref(), &object.kept());
        let options = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let id = self.store.create_multipart_opts(to, options).await.map_err(|e| store_fault(path, e))?;
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
                return Err(read_fault(path, e));
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
                    return Err(Fault::Exists { path: to.as_ref().to_owned() });
                }
                Err(store_fault(path, e))
            }
        }
    }

    /// Copies each `(from, to, size)` and checks each copy (there, at its
    /// size); returns the `from`s, for the caller to delete once all are.
    async fn move_objects(&self, moves: Vec<(Path, Path, u64)>, path: &str, force: bool) -> Result<Vec<Path>, Fault> {
        let copy_max = self.spec.copy_max;
        // Copies in parts hold four parts each: fewer of them at once.
        let at_once = if moves.iter().any(|(_, _, size)| *size > copy_max) { 2 } else { HEADS_AT_ONCE };
        let copies = moves.into_iter().map(|(from, to, size)| {
            let (b, path) = (self.clone(), path.to_owned());
            async move {
                let known = b.known.lock().expect("known poisoned").get(from.as_ref()).cloned();
                if size > copy_max {
                    b.copy_in_parts(&from, &to, force, &path).await?;
                } else {
                    // `CopyObject` keeps the metadata: the hash, the time
                    // and the mode move too.
                    b.store.copy(&from, &to).await.map_err(|e| store_fault(&path, e))?;
                }
                // The original goes only once its copy is there, whole.
                let copied = b.head(&to).await.map_err(|e| store_fault(&path, e))?;
                let Some(copied) = copied.filter(|c| c.size == size) else {
                    return Err(Fault::CopyIncomplete { path: from.as_ref().to_owned() });
                };
                // The copy's ETag may differ: only the hash is carried.
                if let (None, Some(hash)) = (copied.blake3, known.and_then(|k| k.blake3)) {
                    b.remember(&to, Object { blake3: Some(hash), ..copied });
                }
                Ok::<_, Fault>(from)
            }
        });
        futures_util::stream::iter(copies).buffer_unordered(at_once).try_collect().await
    }

    /// Aborts the uploads whose records were last written more than
    /// `max_age` ago and that no running upload holds (this server's own,
    /// by its claim; any server's, by the lease in the record), and
    /// removes the records; returns the paths (below the root) of the
    /// files they were for, with the bytes stored.
    ///
    /// # Errors
    ///
    /// A listing that fails.
    pub(crate) async fn prune_uploads(&self, max_age: std::time::Duration) -> Result<Vec<(String, u64)>, Fault> {
        let cutoff = chrono_cutoff(max_age);
        let depth = self.prefix_depth();
        let mut removed = Vec::new();
        // A page of keys at a time, whatever is below the root (the walk
        // goes on from the last key, past the records deleted).
        let mut pages = self.pages(&self.prefix, false);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault("", e))? {
            for listed in page {
                let Key::Object(m) = listed else { continue };
                let Some(name) = m.location.filename().filter(|n| is_partial_name(n.as_bytes())) else { continue };
                if m.last_modified.timestamp() >= cutoff {
                    continue;
                }
                let name = name.to_owned();
                if let Some(held) = self.prune_record(&m.location).await {
                    let dir: Vec<String> = m.location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect();
                    let file = match dir.split_last() {
                        Some((_, parents)) if !parents.is_empty() => {
                            format!("{}/{}", parents.join("/"), original_name(&name))
                        }
                        _ => original_name(&name),
                    };
                    removed.push((file, held));
                }
            }
        }
        Ok(removed)
    }

    /// Aborts the upload of the record at `key` and removes the record,
    /// unless a running upload holds it; the bytes it held, if removed.
    async fn prune_record(&self, key: &Path) -> Option<u64> {
        let object = recorded_object(key);
        // Claimed for the prune, as an upload claims it: an upload through
        // this server that starts meanwhile waits for the prune to end (and
        // then starts over), rather than having its record aborted under it.
        if !self.busy.lock().expect("busy poisoned").insert(object.as_ref().to_owned()) {
            return None;
        }
        let _claim = KeyClaim { busy: self.busy.clone(), key: object.as_ref().to_owned() };
        // A record that cannot be read now is left for the next sweep;
        // one that does not parse is no upload's.
        let got = self.store.get(key).await.ok()?;
        let body = got.bytes().await.ok()?;
        let record: Option<super::upload::Record> = serde_json::from_slice(&body).ok();
        if record.as_ref().is_some_and(|r| r.leased()) {
            return None;
        }
        if let Some(r) = &record {
            self.abort(&object, &r.upload_id).await;
        }
        self.store.delete(key).await.ok()?;
        Some(record.map_or(0, |r| r.parts.len() as u64 * super::PART))
    }

    /// Reads into `index` what a tree upload into `base` decides its
    /// entries `paths` (relative to `base`) against, where it has not read
    /// it yet. The base and each parent of it are checked (`HEAD`) to be no
    /// file once. The entries are grouped by their first component; for
    /// each group the subtree of the deepest directory holding all of it is
    /// listed once, every component of it below the base checked to be no
    /// file, [`HEADS_AT_ONCE`] groups at once. Past [`SUBTREES_APART`]
    /// groups in all, the base's own level is listed once instead (its
    /// names, not what is below them), and only the groups whose first
    /// component is a directory there are read further. So the requests
    /// grow with the directories an upload touches, not its files, and the
    /// index holds what is below the destination the upload names, never
    /// the rest of the root.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::TooLarge`] past the spec's `index_max` keys listed
    /// (files, directories, markers, records alike), a bad path, the
    /// store's error.
    pub(crate) async fn index_for<'a>(
        &self,
        index: &mut TreeIndex,
        base: &str,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Fault> {
        let (base_key, _) = self.key(base)?;
        let base_parts: Vec<String> = base_key.parts().map(|p| p.as_ref().to_owned()).collect();
        if !index.based {
            for i in self.prefix_depth() + 1..=base_parts.len() {
                let at = raw_path(&base_parts[..i]);
                if self.head(&at).await.map_err(|e| store_fault(base, e))?.is_some() {
                    index.blocked = true;
                    break;
                }
            }
            index.based = true;
        }
        // A file at or above the base: every entry is refused for it.
        if index.blocked {
            return Ok(());
        }
        let paths: Vec<&str> = paths.into_iter().collect();
        // Keys listed, across the reads at once: what the limit bounds.
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(index.held));
        let mut groups = index.groups(&paths);
        if !index.level && index.apart + groups.len() > SUBTREES_APART {
            let read = self.read_level(&base_key, base, &held).await;
            index.held = held.load(std::sync::atomic::Ordering::Relaxed);
            let (files, dirs) = read?;
            index.files.extend(files);
            index.dirs.extend(dirs);
            index.level = true;
            groups = index.groups(&paths);
        }
        index.apart += groups.len();
        // Owned before any await (a borrow held across one would make the
        // future `Send` only for some lifetimes).
        let rels: Vec<String> = groups.into_values().map(|common| common.join("/")).collect();
        let (level, depth) = (index.level, base_parts.len());
        let reads = rels.into_iter().map(|rel| {
            let (b, base, held) = (self.clone(), base.to_owned(), held.clone());
            async move { b.read_subtree(&base, depth, rel, level, &held).await }
        });
        let read: Result<Vec<Subtree>, Fault> =
            futures_util::stream::iter(reads).buffer_unordered(HEADS_AT_ONCE).try_collect().await;
        index.held = held.load(std::sync::atomic::Ordering::Relaxed);
        for subtree in read? {
            index.files.extend(subtree.files);
            index.dirs.extend(subtree.dirs);
            index.read.insert(subtree.rel);
        }
        Ok(())
    }

    /// Counts one key listed for an index against the spec's `index_max`.
    fn hold(&self, held: &std::sync::atomic::AtomicUsize, full: &str) -> Result<(), Fault> {
        if held.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= self.spec.index_max {
            return Err(Fault::TooManyObjects { path: full.to_owned(), max: self.spec.index_max });
        }
        Ok(())
    }

    /// The names at the level of the base `key` (`base` as the peer named
    /// it): its files, and its directories (common prefixes and markers).
    async fn read_level(
        &self,
        key: &Path,
        base: &str,
        held: &std::sync::atomic::AtomicUsize,
    ) -> Result<(Vec<(String, ObjectMeta)>, Vec<String>), Fault> {
        let depth = key.parts().count();
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        let mut pages = self.pages(key, true);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault(base, e))? {
            for listed in page {
                self.hold(held, base)?;
                let (location, object) = match listed {
                    Key::Object(m) => (m.location.clone(), Some(m)),
                    Key::Dir(dir) | Key::Marker { dir, .. } => (dir, None),
                    Key::Unnameable => continue,
                };
                let name = location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/");
                match object {
                    None => dirs.push(name),
                    Some(_) if name == DIR_MARKER || is_partial_name(name.as_bytes()) => {}
                    Some(object) => files.push((name, object)),
                }
            }
        }
        Ok((files, dirs))
    }

    /// What is at and below `rel` (below the base `base`, whose key has
    /// `depth` components), and whether a component of it below the base
    /// is a file; with `level`, its first component is known to be a
    /// directory (the base's level was read). `held` counts the keys read
    /// by every read of one [`index_for`](Self::index_for).
    async fn read_subtree(
        &self,
        base: &str,
        depth: usize,
        rel: String,
        level: bool,
        held: &std::sync::atomic::AtomicUsize,
    ) -> Result<Subtree, Fault> {
        let full = match base.trim_matches('/') {
            "" | "." => rel.clone(),
            b => format!("{b}/{rel}"),
        };
        let (key, _) = self.key(&full)?;
        let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_owned()).collect();
        let mut subtree = Subtree { rel, ..Subtree::default() };
        for i in depth + 1 + usize::from(level)..=parts.len() {
            let at = raw_path(&parts[..i]);
            if let Some(object) = self.head(&at).await.map_err(|e| store_fault(&full, e))? {
                self.hold(held, &full)?;
                let meta = ObjectMeta {
                    location: at,
                    last_modified: chrono::DateTime::from_timestamp(object.mtime, 0).unwrap_or_default(),
                    size: object.size,
                    e_tag: object.etag,
                    version: None,
                };
                subtree.files.push((parts[depth..i].join("/"), meta));
                // Nothing is below a file.
                return Ok(subtree);
            }
        }
        let mut pages = self.pages(&key, false);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault(&full, e))? {
            if !page.is_empty() {
                add_dir(&mut subtree.dirs, &parts[depth..]);
            }
            for listed in page {
                self.hold(held, &full)?;
                let (location, object) = match listed {
                    Key::Object(m) => (m.location.clone(), Some(m)),
                    Key::Marker { dir, .. } => (dir, None),
                    Key::Dir(_) | Key::Unnameable => continue,
                };
                let below: Vec<String> = location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect();
                let Some((last, parents)) = below.split_last() else { continue };
                add_dir(&mut subtree.dirs, parents);
                let Some(object) = object else {
                    add_dir(&mut subtree.dirs, &below);
                    continue;
                };
                if last == DIR_MARKER || is_partial_name(last.as_bytes()) {
                    continue;
                }
                subtree.files.push((below.join("/"), object));
            }
        }
        Ok(subtree)
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
    ) -> Result<Vec<(Entry, Path, Object)>, Fault> {
        let objects = self.objects(listed.iter().map(|(_, m)| m.clone()).collect(), path).await?;
        Ok(listed.into_iter().zip(objects).map(|((name, m), o)| (object_entry(name, &o), m.location, o)).collect())
    }

    /// A directory's entry, as listings give it.
    pub(crate) fn dir_entry(name: String) -> Entry {
        dir_entry(name, 0)
    }
}

/// One subtree read for a [`TreeIndex`].
#[derive(Debug, Default)]
struct Subtree {
    rel: String,
    files: Vec<(String, ObjectMeta)>,
    dirs: BTreeSet<String>,
}

/// Adds the directory `parts` and each parent of it to `dirs` (the
/// parents of one added before are there already: a page names its
/// directories again and again).
fn add_dir(dirs: &mut BTreeSet<String>, parts: &[String]) {
    for i in (1..=parts.len()).rev() {
        if !dirs.insert(parts[..i].join("/")) {
            break;
        }
    }
}

/// Subtrees of a tree upload's destination read one at a time (a `HEAD`
/// of each component below the base, then one listing: two requests or
/// more each) before the base's own level is listed instead, once (a
/// request for each 1,000 names at it), which answers at once every group
/// whose first component is no directory there: a flat directory of 10,000
/// files uploaded into the base costs 10 listings, not 20,000 requests.
const SUBTREES_APART: usize = 64;

/// What a tree upload decides against: the files and directories below
/// the parts of its destination that its manifest named, read as they
/// are first named ([`Bucket::index_for`]); paths relative to the
/// upload's base.
#[derive(Debug, Default)]
pub(crate) struct TreeIndex {
    files: BTreeMap<String, ObjectMeta>,
    dirs: BTreeSet<String>,
    /// Paths whose subtree, and every parent, was read.
    read: BTreeSet<String>,
    /// The base and its parents were checked.
    based: bool,
    /// The base, or a parent of it, is a file.
    blocked: bool,
    /// The base's own level was listed.
    level: bool,
    /// Subtrees read one at a time.
    apart: usize,
    /// Keys listed into it: what the spec's `index_max` bounds.
    held: usize,
}

impl TreeIndex {
    /// Whether what `rel` is was read.
    fn covers(&self, rel: &str) -> bool {
        let first = rel.split('/').next().unwrap_or(rel);
        // The base's level says what its names are; below one that is no
        // directory there, nothing is.
        if self.level && (first == rel || !self.dirs.contains(first)) {
            return true;
        }
        let mut at = rel;
        loop {
            if self.read.contains(at) {
                return true;
            }
            match at.rsplit_once('/') {
                Some((up, _)) => at = up,
                None => return false,
            }
        }
    }

    /// The paths of `paths` not read yet, by first component: the
    /// components all of a group's paths share.
    fn groups<'a>(&self, paths: &[&'a str]) -> BTreeMap<&'a str, Vec<&'a str>> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &path in paths {
            if self.covers(path) {
                continue;
            }
            let parts: Vec<&str> = path.split('/').collect();
            match groups.get_mut(parts[0]) {
                Some(common) => {
                    let same = common.iter().zip(&parts).take_while(|(a, b)| a == b).count();
                    common.truncate(same);
                }
                None => {
                    groups.insert(parts[0], parts);
                }
            }
        }
        groups
    }

    /// Whether a parent of `rel` (the base and above it too) is a file.
    pub(crate) fn parent_is_file(&self, rel: &str) -> bool {
        let mut parent = rel;
        while let Some((p, _)) = parent.rsplit_once('/') {
            if self.files.contains_key(p) {
                return true;
            }
            parent = p;
        }
        self.blocked
    }

    /// Whether `rel` is a directory.
    pub(crate) fn is_dir(&self, rel: &str) -> bool {
        self.dirs.contains(rel)
    }

    /// The object at `rel`, as listed.
    pub(crate) fn file(&self, rel: &str) -> Option<&ObjectMeta> {
        self.files.get(rel)
    }
}

/// The key of the object a record at `record` is for.
fn recorded_object(record: &Path) -> Path {
    let name = record.filename().map(original_name).unwrap_or_default();
    match record.as_ref().rsplit_once('/') {
        Some((parent, _)) => raw_path(parent.split('/').chain([name.as_str()])),
        None => raw_path([name]),
    }
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
fn read_fault(path: &str, e: object_store::Error) -> Fault {
    if super::upload::is_exists(&e) {
        return Fault::ChangedWhileRead { path: path.to_owned() };
    }
    store_fault(path, e)
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
