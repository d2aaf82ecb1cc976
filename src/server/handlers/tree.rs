//! Streamed tree transfers (PROTOCOL.md §4.6.3): `tree_list` streams a
//! tree's listing; `tree_put` takes a manifest, answers what it wants,
//! receives the files back to back and commits them in batches;
//! `tree_get` sends the files a client wants back to back.

use std::collections::{HashMap, HashSet};

use super::super::context::HandlerError;
use super::super::storage::{join, plain, Download, Got, Needed, Part, Storage, TreeSink, REPORT_EVERY};
use crate::proto::{
    Checksum, CommitList, Committed, ErrorCode, Failed, Listing, ListingEnd, ManifestEntry, TreeDone, TreeFile,
    TreeGet, TreeGetInput, TreeList, TreePut, TreePutInput, TreeReady, TreeSkip, Want, WantList, Wants, WantsEnd,
    TREE_PART_MAX,
};
use crate::services::files::{self, Sandbox};
use crate::services::{Fault, Refusal};
use crate::session::{ServerSide, Session};
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

/// Streams the tree at `path` as `listing` frames (directories first,
/// then what is below them), then `listing_end`: a listing of any length,
/// in frames of at most [`TREE_PART_ENTRIES`] entries. Asked with `skips`,
/// a path below that cannot be read is a `listing_skip` frame, in step,
/// and the listing goes on; without, it ends the listing with an error
/// frame naming it.
pub(in crate::server) async fn tree_list<St: Storage>(s: &mut S, st: &St, request: TreeList) -> Result<(), Error> {
    let TreeList { path, blake3, skips } = request;
    let (tx, rx) = tokio::sync::mpsc::channel::<Part>(4);
    let send = async {
        // Owned here: when the sending stops, early or not, the channel
        // closes and the walk stops.
        let mut rx = rx;
        let mut count = 0u64;
        while let Some(part) = rx.recv().await {
            match part {
                Part::Entries(entries) if entries.is_empty() => {}
                Part::Entries(entries) => {
                    let body = serde_json::to_vec(&entries).map_err(HandlerError::from)?;
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

/// A file refused or failed, logged as a refused request is.
pub(super) fn failed(i: u64, r: impl Into<Refusal>) -> Failed {
    let r = r.into();
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

/// Receives a whole tree (PROTOCOL.md §4.6.3.2): each manifest frame
/// answered with what is wanted, the wanted files received back to back
/// and put in place by the storage's [`TreeSink`], and what was stored or
/// failed reported in `committed` frames as it is.
pub(in crate::server) async fn tree_put<St: Storage>(s: &mut S, st: &St, request: TreePut) -> Result<(), Error> {
    let TreePut { path: base, force } = request;
    if let Err(r) = Sandbox::relative(&base) {
        return s.refuse(r).await;
    }
    s.send(&TreeReady {}, &[]).await?;
    let mut up = TreeUpload {
        base,
        force,
        next: 0,
        manifest_done: false,
        needed: HashMap::new(),
        pending: Held::default(),
        sink: st.tree_sink(),
        report: CommitList::default(),
        files: 0,
        bytes: 0,
    };
    loop {
        let frame = match s.read::<TreePutInput>().await {
            Ok(Some((frame, _))) => frame,
            // The client left: what was received and verified is put in
            // place (a later rerun would otherwise send it again).
            Ok(None) => {
                up.sink.settle(true).await;
                return Ok(());
            }
            Err(e) if e.is_recoverable() => {
                up.sink.settle(true).await;
                return s.refuse_and_close(format!("bad frame in a tree_put: {e}")).await;
            }
            Err(e) => {
                up.sink.settle(true).await;
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
                    up.sink.settle(true).await;
                    return s.close_with(r).await;
                }
                let answer = match up.decide_all(entries).await {
                    Ok(answer) => answer,
                    // Frames the client pipelined after this one follow:
                    // the connection cannot stay in step.
                    Err(r) => {
                        up.sink.settle(true).await;
                        return s.refuse_and_close(r.message).await;
                    }
                };
                let body = serde_json::to_vec(&answer).map_err(HandlerError::from)?;
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
                if let Err(e) = up.receive(s, head).await {
                    // Cut mid-file: what was verified is still put in
                    // place (a rerun would otherwise send it again).
                    up.sink.settle(true).await;
                    return Err(e);
                }
            }
            TreePutInput::Checksum(_) => return s.refuse_and_close("checksum without a tree_file".into()).await,
            TreePutInput::TreeEnd(_) => {
                if !up.manifest_done {
                    return s.refuse_and_close("tree_end before manifest_end".into()).await;
                }
                for (i, need) in std::mem::take(&mut up.needed) {
                    let msg = format!("{}: wanted, but not sent", files::shown(&need.path));
                    up.fail(i, &need.path, Refusal::new(ErrorCode::BadRequest, msg));
                }
                up.settle(s, true, true).await?;
                s.set_outcome(format!("ok: {} files, {} bytes of them", up.files, up.bytes));
                return s.send(&TreeDone { files: up.files, bytes: up.bytes }, &[]).await;
            }
        }
    }
}

/// The state of one `tree_put`, whatever the storage.
struct TreeUpload<K> {
    base: String,
    force: bool,
    /// The next manifest index.
    next: u64,
    manifest_done: bool,
    /// Wanted and not received yet, by manifest index.
    needed: HashMap<u64, Needed>,
    /// Paths wanted, or received and not yet in place.
    pending: Held,
    sink: K,
    /// What was stored or failed since the last `committed` frame.
    report: CommitList,
    files: u64,
    bytes: u64,
}

impl<K: TreeSink> TreeUpload<K> {
    /// Answers one manifest frame.
    async fn decide_all(&mut self, entries: Vec<ManifestEntry>) -> Result<WantList, Refusal> {
        let first = self.next;
        self.next += entries.len() as u64;
        let mut answer = WantList::default();
        let mut to_decide = Vec::with_capacity(entries.len());
        for (i, e) in (first..).zip(entries) {
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
        for (i, full, e, d) in self.sink.decide(&self.base, self.force, to_decide).await? {
            match d {
                Ok(Some((replace, offset, prefix))) => {
                    answer.send.push(Want { i, path: String::new(), offset, prefix_blake3: prefix });
                    let replace = replace || self.force;
                    let need = Needed { path: full, size: e.size, mtime: e.mtime, mode: e.mode, replace, offset };
                    self.needed.insert(i, need);
                }
                Ok(None) => {
                    self.pending.remove(&full);
                    answer.unchanged.push(i);
                }
                Err(r) => {
                    self.pending.remove(&full);
                    answer.refused.push(failed(i, r));
                }
            }
        }
        Ok(answer)
    }

    /// Receives one file, if it is wanted and covers what it must, then
    /// settles and reports what is due.
    async fn receive(&mut self, s: &mut S, head: TreeFile) -> Result<(), Error> {
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
        let (wait, now) = match self.sink.receive(s, i, &need, offset, len).await? {
            Got::Later { now } => (now, now),
            // In place already: told at once, nothing else waited for.
            Got::Done(outcome) => {
                let stored = outcome.is_ok();
                self.settled(i, &need.path, outcome);
                (false, stored)
            }
        };
        self.settle(s, wait, now).await
    }

    /// Takes in what the sink put in place (all of it, waited for, if
    /// `wait`) and reports it: at once if `now` (or `wait`), or if the sink
    /// commits in batches, else every [`REPORT_EVERY`] files.
    async fn settle(&mut self, s: &mut S, wait: bool, now: bool) -> Result<(), Error> {
        let now = now || wait;
        let settled = self.sink.settle(wait).await;
        let some = !settled.is_empty();
        for (i, path, outcome) in settled {
            self.settled(i, &path, outcome);
        }
        let n = self.report.ok.len() + self.report.failed.len();
        let due = now || (K::REPORT_EACH_SETTLE && some) || n >= REPORT_EVERY;
        if n == 0 || !due {
            return Ok(());
        }
        let list = std::mem::take(&mut self.report);
        let body = serde_json::to_vec(&list).map_err(HandlerError::from)?;
        s.send(&Committed { len: body.len() as u64 }, &body).await
    }

    fn settled(&mut self, i: u64, path: &str, outcome: Result<u64, Fault>) {
        match outcome {
            Ok(size) => {
                self.pending.remove(path);
                self.files += 1;
                self.bytes += size;
                self.report.ok.push(i);
            }
            Err(r) => self.fail(i, path, r),
        }
    }

    fn fail(&mut self, i: u64, path: &str, r: impl Into<Refusal>) {
        self.pending.remove(path);
        self.report.failed.push(failed(i, r));
    }
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
                Some((i, Err(f))) => {
                    let r = Refusal::from(f);
                    s.feed(&TreeSkip { i, code: r.code, message: r.message }, &[]).await?
                }
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
