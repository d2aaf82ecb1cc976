//! Streamed tree transfers (PROTOCOL.md §4.6.3): `tree_list` streams a
//! tree's listing; `tree_put` takes a manifest, answers what it wants,
//! receives the files back to back and commits them in batches;
//! `tree_get` sends the files a client wants back to back.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::super::context::Context;
use super::super::storage::dir::hash_of;
use super::super::storage::{blocking, join, plain, Download, Part, Storage};
use crate::proto::{
    Checksum, CommitList, Committed, Entry, ErrorCode, Failed, Kind, Listing, ListingEnd, ManifestEntry, TreeDone,
    TreeFile, TreeGet, TreeGetInput, TreeList, TreePut, TreePutInput, TreeReady, TreeSkip, Want, WantList, Wants,
    WantsEnd, TREE_PART_MAX,
};
use crate::services::files::{self, Sandbox};
use crate::services::root::FileId;
use crate::services::Refusal;
use crate::session::{Batch, CommitError, Guard, Place, ReceiveError, Receiver, ServerSide, Session};
use crate::wire::Error;
use futures_util::{FutureExt, StreamExt};

type S = Session<ServerSide>;

/// Files a `tree_put` may have announced and not yet sent (wanted, or
/// not yet answered) at once: with [`MAX_OUTSTANDING_BYTES`], what
/// bounds the server's memory for one upload, whatever the manifest's
/// length. Our client keeps far fewer in flight (PROTOCOL.md §4.6.3.2).
pub const MAX_OUTSTANDING: usize = 65_536;

/// Bytes the files a `tree_put` announced and has not yet received may
/// hold at once, counted as [`Held`] does: long paths reach it before
/// [`MAX_OUTSTANDING`] (65,536 paths of 4,095 bytes would be 512 MiB).
pub const MAX_OUTSTANDING_BYTES: usize = 32 << 20;

/// What one held entry costs beside its path: its slots in the maps, its
/// record, the allocator's rounding.
const ENTRY_COST: usize = 256;

/// A `tree_put` that held more than this gives the allocator's free
/// memory back to the system when it ends (glibc keeps it otherwise).
const GIVE_BACK_AFTER: usize = 4 << 20;

/// The paths a `tree_put` holds: wanted, or received and not yet
/// committed. A manifest naming one twice is refused the second time, and
/// the bytes they take are counted, so that a client announcing files it
/// never sends pins at most [`MAX_OUTSTANDING_BYTES`]; that memory is
/// given back to the system when the upload ends.
#[derive(Debug, Default)]
pub(super) struct Held {
    paths: HashSet<String>,
    bytes: usize,
    most: usize,
}

impl Held {
    /// What holding `path` costs: it is kept twice (here, and in the
    /// record of the file wanted).
    fn cost(path: &str) -> usize {
        2 * path.len() + ENTRY_COST
    }

    /// Holds `path`; false if it is held already.
    pub(super) fn insert(&mut self, path: String) -> bool {
        let cost = Self::cost(&path);
        if !self.paths.insert(path) {
            return false;
        }
        self.bytes += cost;
        self.most = self.most.max(self.bytes);
        true
    }

    /// Lets `path` go.
    pub(super) fn remove(&mut self, path: &str) {
        if self.paths.remove(path) {
            self.bytes -= Self::cost(path);
        }
    }

    /// Whether `entries` (under `base`) may be taken on top of `wanted`
    /// files announced and not yet sent; the refusal says which limit.
    pub(super) fn admit(&self, wanted: usize, base: &str, entries: &[ManifestEntry]) -> Result<(), Refusal> {
        let more: usize = entries.iter().map(|e| Self::cost(&e.path) + 2 * (base.len() + 1)).sum();
        if wanted + entries.len() <= MAX_OUTSTANDING && self.bytes + more <= MAX_OUTSTANDING_BYTES {
            return Ok(());
        }
        let msg = format!(
            "more than {MAX_OUTSTANDING} files or {} MiB of their paths announced and not yet sent ({} files, {} KiB held, {} entries more); send the wanted files before more manifest",
            MAX_OUTSTANDING_BYTES >> 20,
            wanted,
            self.bytes >> 10,
            entries.len()
        );
        Err(Refusal::new(ErrorCode::TooLarge, msg))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.most >= GIVE_BACK_AFTER {
            // The maps are freed with the upload, just after this.
            crate::server::give_back_memory_soon(|| {});
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Internal, e.to_string())
}

/// Streams the tree at `path` as `listing` frames (directories first,
/// then what is below them), then `listing_end`: a listing of any length,
/// in frames of at most [`TREE_PART_ENTRIES`] entries. Asked with `skips`,
/// a path below that cannot be read is a `listing_skip` frame, in step,
/// and the listing goes on; without, it ends the listing with an error
/// frame naming it.
pub(in crate::server) async fn tree_list<St: Storage>(s: &mut S, st: &St, request: TreeList) -> Result<(), Error> {
    let TreeList { path, blake3, skips } = request;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Part>(4);
    let send = async {
        let mut count = 0u64;
        while let Some(part) = rx.recv().await {
            match part {
                Part::Entries(entries) if entries.is_empty() => {}
                Part::Entries(entries) => {
                    let body = serde_json::to_vec(&entries).map_err(|e| Error::Io(std::io::Error::other(e)))?;
                    count += entries.len() as u64;
                    s.feed(&Listing { len: body.len() as u64, count: entries.len() as u64 }, &body).await?;
                }
                Part::Skip(skip) => s.feed(&skip, &[]).await?,
                // Before the first frame or after some: an error frame
                // ends the listing either way.
                Part::Refused(r) => return s.refuse(r).await,
            }
        }
        s.send(&ListingEnd { count }, &[]).await
    };
    // The walk stops when the sender does (its channel closed).
    let ((), sent) = tokio::join!(st.walk(&path, blake3, skips, tx), send);
    sent
}

/// One file a `tree_put` wants and has not received yet.
#[derive(Debug)]
struct Needed {
    path: String,
    size: u64,
    mtime: i64,
    mode: u32,
    replace: bool,
    /// The offset offered (bytes of a partial file held).
    offset: u64,
}

/// Decides one manifest entry: wanted (from an offset), unchanged, or
/// refused. Blocking.
fn decide(
    sb: &Sandbox,
    dirs: &mut files::Dirs,
    hashes: &files::HashCache,
    full: &str,
    e: &ManifestEntry,
    force: bool,
) -> Result<Decision, Refusal> {
    let standing = sb.standing_among(full, dirs)?;
    let same_content =
        || Ok(hash_of(sb, hashes, full)?.is_some_and(|h| e.blake3.as_deref() == Some(h.to_hex().as_str())));
    let Some(replace) = judge(full, standing.there.as_ref(), same_content, e, force)? else {
        return Ok(Decision::Unchanged);
    };
    let (offset, prefix) = match standing.partial {
        Some((held, hash)) if held <= e.size => (held, Some(hash.to_hex().to_string())),
        _ => (0, None),
    };
    Ok(Decision::Send { offset, prefix, replace })
}

/// What is `there` (a local root's or a bucket's entry) means for a
/// manifest entry: `None`, unchanged; `Some(replace)`, wanted, replacing
/// what is there or not. `same_content` is asked only when the entry has
/// a BLAKE3 and the sizes agree.
pub(super) fn judge(
    full: &str,
    there: Option<&Entry>,
    same_content: impl FnOnce() -> Result<bool, Refusal>,
    e: &ManifestEntry,
    force: bool,
) -> Result<Option<bool>, Refusal> {
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
    // `replace` in an entry asks for this one file what `force` asks for all.
    let verdict = sync::decide(held, e.size, e.mtime, same, force || e.replace);
    if let Some(r) = failed {
        return Err(r);
    }
    let shown = files::shown(full);
    match verdict {
        Verdict::Send { replace } => Ok(Some(replace)),
        Verdict::Unchanged => Ok(None),
        Verdict::IsDir => Err(Refusal::new(ErrorCode::IsADirectory, format!("{shown}: is a directory on the server"))),
        Verdict::NotOlder => {
            Err(Refusal::new(ErrorCode::Exists, format!("{shown}: exists on the server, differs and is not older")))
        }
        Verdict::NotAFile => {
            Err(Refusal::new(ErrorCode::Exists, format!("{shown}: exists on the server and is not a regular file")))
        }
    }
}

enum Decision {
    Send { offset: u64, prefix: Option<String>, replace: bool },
    Unchanged,
}

/// Where a `tree_put`'s small files go: the sandbox, with the directory
/// of the previous file kept open (a tree's files come directory by
/// directory), and a claim on each path until it is in place.
struct Landing {
    sb: Sandbox,
    dirs: HashMap<String, (Arc<OwnedFd>, FileId)>,
}

impl Place for Landing {
    type Error = Refusal;

    fn resolve(&mut self, path: &str) -> Result<(Arc<OwnedFd>, OsString, Option<Guard>), Refusal> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let (dir, id) = match self.dirs.get(parent) {
            Some((dir, id)) => (dir.clone(), *id),
            None => {
                let (dir, _) = self.sb.for_write(path)?;
                let id = FileId::of_fd(&dir).map_err(|e| Refusal::io(path, &e))?;
                let dir = Arc::new(dir);
                if self.dirs.len() >= 64 {
                    self.dirs.clear();
                }
                self.dirs.insert(parent.to_owned(), (dir.clone(), id));
                (dir, id)
            }
        };
        let name = OsString::from(name);
        let claim = self.sb.claim_in(id, &name, path)?;
        Ok((dir, name, Some(Box::new(claim))))
    }
}

/// The state of one `tree_put`.
struct Upload {
    base: String,
    force: bool,
    /// The next manifest index.
    next: u64,
    manifest_done: bool,
    needed: HashMap<u64, Needed>,
    /// Paths wanted or in the batch.
    pending: Held,
    batch: Batch,
    /// Paths of the files in the batch, by index, with their size and
    /// mtime.
    in_batch: HashMap<u64, (String, u64, i64)>,
    into: Option<Landing>,
    /// Failures since the last `committed` frame.
    failed: Vec<Failed>,
    files: u64,
    bytes: u64,
}

/// A file refused or failed, logged as a refused request is.
pub(super) fn failed(i: u64, r: Refusal) -> Failed {
    tracing::info!(code = %r.code, "refused: {}", crate::text::printable(&r.message));
    Failed { i, code: r.code, message: r.message }
}

/// The entries of a `manifest` frame of `len` bytes; `None` once a frame
/// too large or a body that is not a list of entries has been refused
/// and the connection is closing.
pub(super) async fn manifest_entries(s: &mut S, len: u64) -> Result<Option<Vec<ManifestEntry>>, Error> {
    tree_part(s, len, "manifest", "a list of entries").await
}

/// The files a `tree_get`'s `wants` frame of `len` bytes asks for, as
/// [`manifest_entries`] reads a manifest.
pub(super) async fn wanted(s: &mut S, len: u64) -> Result<Option<Vec<Want>>, Error> {
    Ok(tree_part::<WantList>(s, len, "wants", "a want list").await?.map(|list| list.send))
}

/// The JSON body of a tree frame (`what`): over [`TREE_PART_MAX`] it is
/// `too_large`, left unread, and not JSON of `T` `bad_request`; both close
/// the connection (`None`).
async fn tree_part<T: serde::de::DeserializeOwned>(
    s: &mut S,
    len: u64,
    what: &str,
    should_be: &str,
) -> Result<Option<T>, Error> {
    if len > TREE_PART_MAX {
        let msg = format!("a {what} frame of {len} bytes (most: {TREE_PART_MAX})");
        return s.close_with(Refusal::new(ErrorCode::TooLarge, msg)).await.map(|()| None);
    }
    let body = s.reader().read_body(TREE_PART_MAX).await?;
    match serde_json::from_slice(&body) {
        Ok(part) => Ok(Some(part)),
        Err(e) => s.refuse_and_close(format!("a {what} body that is not {should_be}: {e}")).await.map(|()| None),
    }
}

/// Receives a whole tree (PROTOCOL.md §4.6.3.2).
pub(in crate::server) async fn tree_put(s: &mut S, ctx: &Context, request: TreePut) -> Result<(), Error> {
    let TreePut { path: base, force } = request;
    if let Err(r) = Sandbox::relative(&base) {
        return s.refuse(r).await;
    }
    s.send(&TreeReady {}, &[]).await?;
    let mut up = Upload {
        base,
        force,
        next: 0,
        manifest_done: false,
        needed: HashMap::new(),
        pending: Held::default(),
        batch: Batch::new(),
        in_batch: HashMap::new(),
        into: Some(Landing { sb: ctx.sandbox().clone(), dirs: HashMap::new() }),
        failed: Vec::new(),
        files: 0,
        bytes: 0,
    };
    loop {
        let frame = match s.read::<TreePutInput>().await {
            Ok(Some((frame, _))) => frame,
            // The client left: what is in the batch is verified, and is
            // committed (a later rerun would otherwise send it again).
            Ok(None) => {
                up.commit(ctx).await;
                return Ok(());
            }
            Err(e) if e.is_recoverable() => {
                up.commit(ctx).await;
                return s.refuse_and_close(format!("bad frame in a tree_put: {e}")).await;
            }
            Err(e) => {
                up.commit(ctx).await;
                return Err(e);
            }
        };
        match frame {
            TreePutInput::Manifest(m) => {
                if up.manifest_done {
                    return s.refuse_and_close("manifest after manifest_end".into()).await;
                }
                let Some(entries) = manifest_entries(s, m.len).await? else { return Ok(()) };
                if let Err(r) = up.pending.admit(up.needed.len(), &up.base, &entries) {
                    up.commit(ctx).await;
                    return s.close_with(r).await;
                }
                let answer = up.decide_all(ctx, entries).await;
                let body = serde_json::to_vec(&answer).map_err(|e| Error::Io(std::io::Error::other(e)))?;
                s.send(&Wants { len: body.len() as u64, count: answer.count() as u64 }, &body).await?;
            }
            TreePutInput::ManifestEnd(end) => {
                if up.manifest_done || end.count != up.next {
                    let msg = format!("manifest_end counts {} entries, {} were sent", end.count, up.next);
                    return s.refuse_and_close(msg).await;
                }
                up.manifest_done = true;
                s.send(&WantsEnd { count: up.next }, &[]).await?;
            }
            TreePutInput::TreeFile(head) => {
                up.receive(s, ctx, head).await?;
                if up.batch.is_full() {
                    up.commit_and_report(s, ctx).await?;
                }
            }
            TreePutInput::Checksum(_) => return s.refuse_and_close("checksum without a tree_file".into()).await,
            TreePutInput::TreeEnd(_) => {
                if !up.manifest_done {
                    return s.refuse_and_close("tree_end before manifest_end".into()).await;
                }
                for (i, need) in std::mem::take(&mut up.needed) {
                    let msg = format!("{}: wanted, but not sent", files::shown(&need.path));
                    up.failed.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
                }
                up.commit_and_report(s, ctx).await?;
                s.set_outcome(format!("ok: {} files, {} bytes of them", up.files, up.bytes));
                return s.send(&TreeDone { files: up.files, bytes: up.bytes }, &[]).await;
            }
        }
    }
}

impl Upload {
    /// Answers one manifest frame.
    async fn decide_all(&mut self, ctx: &Context, entries: Vec<ManifestEntry>) -> WantList {
        let first = self.next;
        self.next += entries.len() as u64;
        let mut answer = WantList::default();
        let mut to_decide = Vec::with_capacity(entries.len());
        for (n, e) in entries.into_iter().enumerate() {
            let i = first + n as u64;
            let full = join(&self.base, &e.path);
            if let Err(r) = plain(&e.path) {
                answer.refused.push(failed(i, r));
            } else if !self.pending.insert(full.clone()) {
                let msg = format!("{}: listed twice in one manifest", files::shown(&e.path));
                answer.refused.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
            } else {
                to_decide.push((i, full, e));
            }
        }
        let (sb, hashes, force) = (ctx.sandbox().clone(), ctx.hashes.clone(), self.force);
        let decided = tokio::task::spawn_blocking(move || {
            // A manifest frame's files are mostly of a few directories.
            let mut dirs = files::Dirs::new();
            to_decide
                .into_iter()
                .map(|(i, full, e)| {
                    let d = decide(&sb, &mut dirs, &hashes, &full, &e, force);
                    (i, full, e, d)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (i, full, e, d) in decided {
            match d {
                Ok(Decision::Send { offset, prefix, replace }) => {
                    answer.send.push(Want { i, path: String::new(), offset, prefix_blake3: prefix });
                    let need = Needed { path: full, size: e.size, mtime: e.mtime, mode: e.mode, replace, offset };
                    self.needed.insert(i, need);
                }
                Ok(Decision::Unchanged) => {
                    self.pending.remove(&full);
                    answer.unchanged.push(i);
                }
                Err(r) => {
                    self.pending.remove(&full);
                    answer.refused.push(failed(i, r));
                }
            }
        }
        answer
    }

    /// Receives one file into the batch (or records why not).
    async fn receive(&mut self, s: &mut S, ctx: &Context, head: TreeFile) -> Result<(), Error> {
        let TreeFile { len, i, offset, .. } = head;
        let Some(need) = self.needed.remove(&i) else {
            return s
                .refuse_and_close(format!("tree_file for entry {i}, which is not wanted (or was sent already)"))
                .await;
        };
        if offset.checked_add(len) != Some(need.size) || (offset != 0 && offset != need.offset) {
            let msg = format!(
                "tree_file {i} covers bytes {offset}..{} of a {}-byte file, {} held",
                offset.saturating_add(len),
                need.size,
                need.offset
            );
            return s.refuse_and_close(msg).await;
        }
        let mode = files::received_mode(need.mode);
        if offset == 0 && need.size <= crate::session::SMALL_BODY {
            // Small and new: held in memory and hashed, written by the
            // batch's commit.
            let body = s.reader().read_body(len).await?;
            let Some(claimed) = self.checksum(s).await? else { return Ok(()) };
            let hash = blake3::hash(&body);
            if hash.to_hex().as_str() != claimed {
                self.mismatch(i, &need, &hash, &claimed);
                return Ok(());
            }
            self.in_batch.insert(i, (need.path.clone(), need.size, need.mtime));
            self.batch.push_body(i, need.path, body.to_vec(), hash, (mode, Some(need.mtime)), need.replace);
            return Ok(());
        }
        // Large or resumed: through a receiver and its partial file.
        let (sb, path, size) = (ctx.sandbox().clone(), need.path.clone(), need.size);
        let admitted = blocking(move || {
            let (dir, name) = sb.for_write(&path)?;
            let claim = sb.claim(&dir, &name, &path)?;
            let mut receiver = Receiver::open(dir, &name).map_err(|e| Refusal::io(&path, &e))?;
            receiver.fit(size).map_err(|e| Refusal::io(&path, &e))?;
            // A full disk is refused now, and the partial file is not
            // left taking the space.
            if let Err(e) = receiver.check_room(receiver.held(), size) {
                receiver.discard();
                return Err(Refusal::io(&path, &e));
            }
            Ok((receiver, claim))
        })
        .await;
        let (mut receiver, claim) = match admitted {
            Ok(admitted) => admitted,
            Err(r) => return self.skip(s, i, &need, r).await,
        };
        let agreed = receiver.agree(offset).map_err(Error::Io)?;
        if !agreed {
            // Most often, the partial file offered was committed since by
            // the batch of a connection that just ended, and this one is
            // new and empty: not worth keeping.
            if receiver.held() == 0 {
                receiver.discard();
            }
            let msg = format!("{}: the partial file changed since it was offered", files::shown(&need.path));
            return self.skip(s, i, &need, Refusal::new(ErrorCode::Busy, msg)).await;
        }
        let received = match receiver.receive(s.reader(), &mut |_| {}).await {
            Ok(received) => received,
            // A cut connection leaves the partial file for a resume.
            Err(ReceiveError::Wire(e, _)) => return Err(e),
            Err(ReceiveError::Write(e, _)) => {
                let r = Refusal::io(&files::shown(&need.path), &e);
                return self.skip(s, i, &need, r).await;
            }
        };
        let Some(claimed) = self.checksum(s).await? else { return Ok(()) };
        let hash = received.hash();
        match received.verify(&claimed) {
            Ok(received) => {
                self.in_batch.insert(i, (need.path.clone(), need.size, need.mtime));
                let received = received.with_mtime(need.mtime);
                self.batch.push_received(i, received, mode, need.replace, Some(Box::new(claim)));
                // A large file is not kept waiting for a batch to fill.
                if need.size > crate::session::SMALL_BODY {
                    self.commit_and_report(s, ctx).await?;
                }
            }
            Err(_) => self.mismatch(i, &need, &hash, &claimed),
        }
        Ok(())
    }

    /// Reads the checksum that follows a body; `None` after the
    /// connection ended (or was refused and is closing).
    async fn checksum(&mut self, s: &mut S) -> Result<Option<String>, Error> {
        match s.read::<TreePutInput>().await {
            Ok(Some((TreePutInput::Checksum(Checksum { blake3 }), _))) => Ok(Some(blake3)),
            Ok(Some((other, _))) => s
                .refuse_and_close(format!("expected checksum after tree_file, got {}", other.kind()))
                .await
                .map(|()| None),
            Ok(None) => Ok(None),
            Err(e) if e.is_recoverable() => s.refuse_and_close(format!("bad checksum: {e}")).await.map(|()| None),
            Err(e) => Err(e),
        }
    }

    fn mismatch(&mut self, i: u64, need: &Needed, got: &blake3::Hash, claimed: &str) {
        self.pending.remove(&need.path);
        let msg = format!(
            "{}: checksum mismatch: the server received data hashing to {}, the client's file hashes to {claimed}; nothing was kept",
            files::shown(&need.path),
            got.to_hex()
        );
        self.failed.push(failed(i, Refusal::new(ErrorCode::ChecksumMismatch, msg)));
    }

    /// Records a file that cannot be received, and reads past its body
    /// and checksum to stay in step.
    async fn skip(&mut self, s: &mut S, i: u64, need: &Needed, r: Refusal) -> Result<(), Error> {
        self.pending.remove(&need.path);
        self.failed.push(failed(i, r));
        s.reader().skip_body().await?;
        self.checksum(s).await.map(|_| ())
    }

    /// Commits the batch; returns what it did as a `committed` body.
    async fn commit(&mut self, ctx: &Context) -> CommitList {
        let mut list = CommitList { ok: Vec::new(), failed: std::mem::take(&mut self.failed) };
        if self.batch.is_empty() {
            return list;
        }
        let batch = std::mem::take(&mut self.batch);
        let mut into = self.into.take().expect("put back after each commit");
        let hashes = ctx.hashes.clone();
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
                for (i, _) in self.in_batch.drain() {
                    list.failed.push(failed(i, internal(&e)));
                }
                self.into = Some(Landing { sb: ctx.sandbox().clone(), dirs: HashMap::new() });
                return list;
            }
        };
        self.into = Some(into);
        for (i, outcome) in outcomes {
            let (path, size, mtime) = self.in_batch.remove(&i).unwrap_or_default();
            self.pending.remove(&path);
            match outcome {
                Ok(size) => {
                    self.files += 1;
                    self.bytes += size;
                    list.ok.push(i);
                }
                // The same file landed meanwhile (another upload of it,
                // such as the batch of a connection that just ended).
                Err(CommitError::Io(e))
                    if e.kind() == std::io::ErrorKind::AlreadyExists && same_there(ctx, &path, size, mtime) =>
                {
                    list.ok.push(i);
                }
                Err(CommitError::Place(r)) => list.failed.push(failed(i, r)),
                Err(CommitError::Io(e)) => {
                    let r = match e.kind() {
                        // Another upload of it finished first (when this
                        // one was decided, nothing was there): `busy`, so
                        // that the client asks again and gets a decision
                        // against what is there now.
                        std::io::ErrorKind::AlreadyExists => Refusal::new(
                            ErrorCode::Busy,
                            format!("{}: another upload of this path finished first", files::shown(&path)),
                        ),
                        _ => Refusal::io(&files::shown(&path), &e),
                    };
                    list.failed.push(failed(i, r));
                }
            }
        }
        list
    }

    /// Commits the batch and tells the client.
    async fn commit_and_report(&mut self, s: &mut S, ctx: &Context) -> Result<(), Error> {
        let list = self.commit(ctx).await;
        if list.ok.is_empty() && list.failed.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&list).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        s.send(&Committed { len: body.len() as u64 }, &body).await
    }
}

/// Whether a regular file of `size` bytes and `mtime` is at `path` now.
fn same_there(ctx: &Context, path: &str, size: u64, mtime: i64) -> bool {
    ctx.sandbox()
        .standing(path)
        .is_ok_and(|s| s.there.is_some_and(|e| e.kind == Kind::File && e.size == size && e.mtime == mtime))
}

/// Sends the files a client wants, back to back (PROTOCOL.md §4.6.3.3),
/// the storage opening them a bounded number ahead; what is sent is
/// flushed whenever the next file is not ready yet.
pub(in crate::server) async fn tree_get<St: Storage>(s: &mut S, st: &St, request: TreeGet) -> Result<(), Error> {
    let TreeGet { path: base } = request;
    if let Err(r) = Sandbox::relative(&base) {
        return s.refuse(r).await;
    }
    s.send(&TreeReady {}, &[]).await?;
    let (mut next, mut sent_files, mut sent_bytes) = (0u64, 0u64, 0u64);
    loop {
        let frame = match s.read::<TreeGetInput>().await {
            Ok(Some((frame, _))) => frame,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => return s.refuse_and_close(format!("bad frame in a tree_get: {e}")).await,
            Err(e) => return Err(e),
        };
        let wants = match frame {
            TreeGetInput::Wants(w) => match wanted(s, w.len).await? {
                Some(wants) => wants,
                None => return Ok(()),
            },
            TreeGetInput::WantsEnd(end) => {
                if end.count != next {
                    return s
                        .refuse_and_close(format!("wants_end counts {} files, {next} were asked", end.count))
                        .await;
                }
                s.set_outcome(format!("ok: {sent_files} files, {sent_bytes} bytes of them"));
                return s.send(&TreeDone { files: sent_files, bytes: sent_bytes }, &[]).await;
            }
        };
        let first = next;
        next += wants.len() as u64;
        let fetched = st.fetch(&base, (first..).zip(wants).collect());
        tokio::pin!(fetched);
        loop {
            let item = match fetched.next().now_or_never() {
                Some(item) => item,
                None => {
                    s.flush().await?;
                    fetched.next().await
                }
            };
            match item {
                None => break,
                Some((i, Ok(d))) => {
                    let size = d.head().size;
                    send_one(s, i, d).await?;
                    sent_files += 1;
                    sent_bytes += size;
                }
                Some((i, Err(r))) => s.feed(&TreeSkip { i, code: r.code, message: r.message }, &[]).await?,
            }
        }
        s.flush().await?;
    }
}

/// One file of a `tree_get`: its head, body and checksum, buffered (the
/// caller flushes).
async fn send_one(s: &mut S, i: u64, d: impl Download) -> Result<(), Error> {
    let crate::proto::FileReply { len, size, offset, mtime, mode } = d.head();
    s.feed_head(&TreeFile { len, i, offset, size, mtime, mode })?;
    let hash = d.send(s, &format!("entry {i}")).await?;
    s.feed(&Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}
