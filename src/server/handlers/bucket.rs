//! File requests on a bucket root: the same requests, frames and answers
//! as on a local root (`files`, `tree`), over the object store
//! (DESIGN.md, "A bucket as the served root", says what each means on
//! objects). The dispatcher routes here when the root is a bucket.

use std::collections::HashMap;

use futures_util::StreamExt;
use tokio::task::JoinSet;

use super::super::storage::bucket::receive_parts;
use super::super::storage::{join, plain};
use super::files::mismatch;
use super::tree::{failed, judge, manifest_entries, Held};
use crate::proto::{
    Checksum, CommitList, Committed, ErrorCode, ManifestEntry, TreeDone, TreeFile, TreePut, TreePutInput, TreeReady,
    Want, WantList, Wants, WantsEnd,
};
use crate::services::bucket::{Bucket, Finish, TreeIndex, WHOLE_MAX};
use crate::services::files::{shown, Sandbox};
use crate::services::Refusal;
use crate::session::{ServerSide, Session};
use crate::wire::Error;

type S = Session<ServerSide>;

/// Small files of one `tree_put` being stored at once, in the background.
const STORES_AT_ONCE: usize = 32;
/// Files up to this size are stored in the background: what one
/// `tree_put` holds is at most [`STORES_AT_ONCE`] of them, plus one file
/// of up to `WHOLE_MAX` stored before the next frame is read.
const STORED_AHEAD: u64 = 1024 * 1024;
/// Files stored in a `tree_put` before a `committed` frame says so.
const REPORT_EVERY: usize = 256;
fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Internal, e.to_string())
}

/// One file a bucket `tree_put` wants and has not received yet.
#[derive(Debug)]
struct Needed {
    path: String,
    size: u64,
    mtime: i64,
    replace: bool,
    offset: u64,
}

/// The state of one `tree_put` into a bucket.
struct TreeUpload {
    base: String,
    force: bool,
    next: u64,
    manifest_done: bool,
    needed: HashMap<u64, Needed>,
    pending: Held,
    /// What is below the parts of the destination the manifest named, as
    /// it was when they were first named: what is decided against (a
    /// conditional write guards what changes since).
    index: TreeIndex,
    storing: JoinSet<(u64, String, Result<u64, Refusal>)>,
    report: CommitList,
    files: u64,
    bytes: u64,
}

/// Receives a whole tree into the bucket (PROTOCOL.md §4.6.3.2): the
/// manifest decided against one listing of the tree, small files stored
/// [`STORES_AT_ONCE`] at a time, each reported once it is an object.
pub(in crate::server) async fn tree_put(s: &mut S, b: &Bucket, request: TreePut) -> Result<(), Error> {
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
        index: TreeIndex::default(),
        storing: JoinSet::new(),
        report: CommitList::default(),
        files: 0,
        bytes: 0,
    };
    loop {
        let frame = match s.read::<TreePutInput>().await {
            Ok(Some((frame, _))) => frame,
            // The client left: what is being stored is let finish.
            Ok(None) => {
                up.settle(true).await;
                return Ok(());
            }
            Err(e) if e.is_recoverable() => {
                up.settle(true).await;
                return s.refuse_and_close(format!("bad frame in a tree_put: {e}")).await;
            }
            Err(e) => {
                up.settle(true).await;
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
                    up.settle(true).await;
                    return s.close_with(r).await;
                }
                let answer = match up.decide_all(b, entries).await {
                    Ok(answer) => answer,
                    // Frames the client pipelined after this one follow:
                    // the connection cannot stay in step.
                    Err(r) => {
                        up.settle(true).await;
                        return s.refuse_and_close(r.message).await;
                    }
                };
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
                up.receive(s, b, head).await?;
                up.settle(false).await;
                up.report(s, false).await?;
            }
            TreePutInput::Checksum(_) => return s.refuse_and_close("checksum without a tree_file".into()).await,
            TreePutInput::TreeEnd(_) => {
                if !up.manifest_done {
                    return s.refuse_and_close("tree_end before manifest_end".into()).await;
                }
                for (i, need) in std::mem::take(&mut up.needed) {
                    let msg = format!("{}: wanted, but not sent", shown(&need.path));
                    up.report.failed.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
                }
                up.settle(true).await;
                up.report(s, true).await?;
                s.set_outcome(format!("ok: {} files, {} bytes of them", up.files, up.bytes));
                return s.send(&TreeDone { files: up.files, bytes: up.bytes }, &[]).await;
            }
        }
    }
}

impl TreeUpload {
    /// Answers one manifest frame.
    async fn decide_all(&mut self, b: &Bucket, entries: Vec<ManifestEntry>) -> Result<WantList, Refusal> {
        let first = self.next;
        self.next += entries.len() as u64;
        let mut answer = WantList::default();
        let mut to_decide = Vec::new();
        for (n, e) in entries.into_iter().enumerate() {
            let i = first + n as u64;
            let full = join(&self.base, &e.path);
            if let Err(r) = plain(&e.path) {
                answer.refused.push(failed(i, r));
            } else if !self.pending.insert(full.clone()) {
                let msg = format!("{}: listed twice in one manifest", shown(&e.path));
                answer.refused.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
            } else {
                to_decide.push((i, full, e));
            }
        }
        b.index_for(&mut self.index, &self.base, to_decide.iter().map(|(_, _, e)| e.path.as_str())).await?;
        let (force, index) = (self.force, &self.index);
        let decided: Vec<_> = futures_util::stream::iter(to_decide.into_iter().map(|(i, full, e)| {
            let b = b.clone();
            async move {
                let d = decide(&b, index, &full, &e, force).await;
                (i, full, e, d)
            }
        }))
        .buffered(STORES_AT_ONCE)
        .collect()
        .await;
        for (i, full, e, d) in decided {
            match d {
                Ok(Some((replace, offset, prefix))) => {
                    answer.send.push(Want { i, path: String::new(), offset, prefix_blake3: prefix });
                    self.needed.insert(i, Needed { path: full, size: e.size, mtime: e.mtime, replace, offset });
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

    /// Receives one file: a small one is stored in the background, a
    /// large one through a multipart upload before the next frame.
    async fn receive(&mut self, s: &mut S, b: &Bucket, head: TreeFile) -> Result<(), Error> {
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
        let replace = self.force || need.replace;
        if need.size <= WHOLE_MAX {
            // Up to STORED_AHEAD, stored in the background; a larger
            // one before the next frame (bounding what one upload holds).
            let background = need.size <= STORED_AHEAD;
            let body = s.reader().read_body(len).await?;
            let Some(claimed) = self.checksum(s).await? else { return Ok(()) };
            let hash = blake3::hash(&body);
            if hash.to_hex().as_str() != claimed {
                self.fail(i, &need.path, mismatch(&shown(&need.path), &hash.to_hex(), &claimed));
                return Ok(());
            }
            let target = match b.claim(&need.path).await {
                Ok(target) => target,
                Err(r) => {
                    self.fail(i, &need.path, r);
                    return Ok(());
                }
            };
            if !background {
                let stored = target.put_whole(b, body, hash, Some(need.mtime), replace).await.map(|()| need.size);
                self.stored(i, &need.path, stored);
                return Ok(());
            }
            while self.storing.len() >= STORES_AT_ONCE {
                self.settle_one().await;
            }
            let (b, path, size, mtime) = (b.clone(), need.path, need.size, need.mtime);
            self.storing.spawn(async move {
                let stored = target.put_whole(&b, body, hash, Some(mtime), replace).await.map(|()| size);
                (i, path, stored)
            });
            return Ok(());
        }
        let started = async {
            let target = b.claim(&need.path).await?;
            let upload = target.multipart(b, need.size, Some(need.mtime)).await?;
            Ok::<_, Refusal>((target, upload))
        }
        .await;
        let (_target, mut upload) = match started {
            Ok(started) => started,
            Err(r) => return self.skip(s, i, &need, r).await,
        };
        if !matches!(upload.agree(offset).await, Ok(true)) {
            let msg = format!("{}: the upload's parts changed since they were offered", shown(&need.path));
            return self.skip(s, i, &need, Refusal::new(ErrorCode::Busy, msg)).await;
        }
        match receive_parts(s, &mut upload).await {
            Ok(Ok(())) => {}
            Ok(Err(r)) => {
                upload.keep_for_resume().await;
                return self.skip(s, i, &need, r).await;
            }
            Err(e) => {
                upload.keep_for_resume().await;
                return Err(e);
            }
        }
        let Some(claimed) = self.checksum(s).await? else {
            upload.keep_for_resume().await;
            return Ok(());
        };
        match upload.finish(&claimed, replace).await {
            Ok(_) => self.stored(i, &need.path, Ok(need.size)),
            Err(Finish::Mismatch(got)) => {
                self.fail(i, &need.path, mismatch(&shown(&need.path), &got.to_hex(), &claimed))
            }
            Err(Finish::Refused(r)) => self.fail(i, &need.path, r),
        }
        self.report(s, true).await
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

    /// Records a file that cannot be received, and reads past its body
    /// and checksum to stay in step.
    async fn skip(&mut self, s: &mut S, i: u64, need: &Needed, r: Refusal) -> Result<(), Error> {
        self.fail(i, &need.path, r);
        s.reader().skip_body().await?;
        self.checksum(s).await.map(|_| ())
    }

    fn fail(&mut self, i: u64, path: &str, r: Refusal) {
        self.pending.remove(path);
        self.report.failed.push(failed(i, r));
    }

    fn stored(&mut self, i: u64, path: &str, outcome: Result<u64, Refusal>) {
        self.pending.remove(path);
        match outcome {
            Ok(size) => {
                self.files += 1;
                self.bytes += size;
                self.report.ok.push(i);
            }
            Err(r) => self.report.failed.push(failed(i, r)),
        }
    }

    async fn settle_one(&mut self) {
        if let Some(joined) = self.storing.join_next().await {
            match joined {
                Ok((i, path, outcome)) => self.stored(i, &path, outcome),
                Err(e) => tracing::warn!("a store task failed: {e}"),
            }
        }
    }

    /// Takes in the stores that are done (`all`: waits for every one).
    async fn settle(&mut self, all: bool) {
        if all {
            while !self.storing.is_empty() {
                self.settle_one().await;
            }
            return;
        }
        while let Some(joined) = self.storing.try_join_next() {
            match joined {
                Ok((i, path, outcome)) => self.stored(i, &path, outcome),
                Err(e) => tracing::warn!("a store task failed: {e}"),
            }
        }
    }

    /// Tells the client what was stored or failed: every
    /// [`REPORT_EVERY`] files, or now if `now` and there is any.
    async fn report(&mut self, s: &mut S, now: bool) -> Result<(), Error> {
        let n = self.report.ok.len() + self.report.failed.len();
        if n == 0 || (!now && n < REPORT_EVERY) {
            return Ok(());
        }
        let list = std::mem::take(&mut self.report);
        let body = serde_json::to_vec(&list).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        s.send(&Committed { len: body.len() as u64 }, &body).await
    }
}

/// Decides one manifest entry against the tree's index: `None`,
/// unchanged; else wanted (replacing or not) from an offset.
async fn decide(
    b: &Bucket,
    index: &TreeIndex,
    full: &str,
    e: &ManifestEntry,
    force: bool,
) -> Result<Option<(bool, u64, Option<String>)>, Refusal> {
    let rel = e.path.as_str();
    // A parent that is a file makes this no path at all.
    if index.parent_is_file(rel) {
        let msg = format!("{}: a parent is a file", shown(full));
        return Err(Refusal::new(ErrorCode::NotADirectory, msg));
    }
    let mut content = None;
    let there = if index.is_dir(rel) {
        Some(Bucket::dir_entry(rel.to_owned()))
    } else if let Some(meta) = index.file(rel) {
        let (entry, key, object) = b
            .entries_of(vec![(rel.to_owned(), meta.clone())], full)
            .await?
            .pop()
            .ok_or_else(|| internal("no entry"))?;
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
    let (offset, prefix) = if e.size > WHOLE_MAX { b.offered(full, e.size, e.mtime).await? } else { (0, None) };
    Ok(Some((replace, offset, prefix)))
}
