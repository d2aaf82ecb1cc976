//! Streamed tree transfers (PROTOCOL.md §4.6.3): `tree_list` streams a
//! tree's listing; `tree_put` takes a manifest, answers what it wants,
//! receives the files back to back and commits them in batches;
//! `tree_get` sends the files a client wants back to back.

use super::super::context::HandlerError;
use super::super::storage::{Download, Got, Part, Storage, TreeSink, WalkFlags};
use super::conversation::{GetAction, PutAction, TreeGetState, TreePutState};
use crate::proto::{
    Checksum, Committed, Listing, ListingEnd, TreeFile, TreeGet, TreeGetInput, TreeList, TreePut, TreePutInput,
    TreeReady, TreeSkip, WantList, Wants, TREE_PART_MAX,
};
use crate::services::files::Sandbox;
use crate::services::Refusal;
use crate::session::{ServerSide, Session};
use crate::wire::Error;
use futures_util::{FutureExt, StreamExt};

type S = Session<ServerSide>;

/// Streams the tree at `path` as `listing` frames (directories first,
/// then what is below them), then `listing_end`: a listing of any length,
/// in frames of at most [`TREE_PART_ENTRIES`] entries. Asked with `skips`,
/// a path below that cannot be read is a `listing_skip` frame, in step,
/// and the listing goes on; without, it ends the listing with an error
/// frame naming it.
pub(in crate::server) async fn tree_list<St: Storage>(s: &mut S, st: &St, request: TreeList) -> Result<(), Error> {
    let TreeList { path, blake3, skips, meta, owners, xattrs, acls, copy_links, compact } = request;
    let wanted = crate::services::attrs::Wanted { owners, numeric: false, xattrs, acls };
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
                    let body = json(&entries)?;
                    count += entries.len() as u64;
                    let (body, zstd) = match compact.then(|| crate::wire::compact(&body)).flatten() {
                        Some(smaller) => (smaller, true),
                        None => (body, false),
                    };
                    let head = Listing { len: body.len() as u64, count: entries.len() as u64, zstd };
                    s.feed(&head, &body).await?;
                }
                Part::Skip(skip) => s.feed(&skip, &[]).await?,
                // Before the first frame or after some: an error frame
                // ends the listing either way.
                Part::Refused(r) => return s.refuse(r).await,
            }
        }
        // What a `tree_put` here would do with modes and owners, for a
        // client deciding whether an unchanged file's differ.
        let owners = St::KEEPS_ATTRS && crate::services::attrs::is_root();
        let umask = St::KEEPS_ATTRS.then(crate::services::files::umask);
        s.send(&ListingEnd { count, owners, umask }, &[]).await
    };
    // The walk stops when the sender does (its channel closed).
    let ((), sent) = tokio::join!(st.walk(&path, WalkFlags { blake3, skips, meta, wanted, copy_links }, tx), send);
    sent
}

/// The JSON body of a tree frame (`what`, its size checked already), or
/// the `bad_request` that closes the connection if it is not JSON of `T`.
async fn tree_part<T: serde::de::DeserializeOwned>(
    s: &mut S,
    len: u64,
    what: &str,
    should_be: &str,
) -> Result<Result<T, Refusal>, Error> {
    let body = s.reader().read_body(len.min(TREE_PART_MAX)).await?;
    Ok(serde_json::from_slice(&body).map_err(|e| bad_request(format!("a {what} body that is not {should_be}: {e}"))))
}

/// `value` as a JSON body.
fn json(value: &impl serde::Serialize) -> Result<Vec<u8>, Error> {
    Ok(serde_json::to_vec(value).map_err(HandlerError::from)?)
}

/// Receives a whole tree (PROTOCOL.md §4.6.3.2): each manifest frame
/// answered with what is wanted, the wanted files received back to back
/// and put in place by the storage's [`TreeSink`], and what was stored or
/// failed reported in `committed` frames as it is. What each frame means
/// is [`TreePutState`]'s to say; this loop does the I/O it asks for.
pub(in crate::server) async fn tree_put<St: Storage>(s: &mut S, st: &St, request: TreePut) -> Result<(), Error> {
    let TreePut { path: base, force, meta, backup, xattrs, acls, delta } = request;
    // Bases are offered only to a key that may read them (a signature
    // tells of the contents), and only where the root makes deltas.
    let deltas = delta && St::TREE_DELTAS && st.reads_allowed();
    // The namespaces whose extended attributes entries list in full.
    let covers = crate::services::attrs::Wanted { owners: true, numeric: false, xattrs, acls };
    if let Err(r) = Sandbox::relative(&base) {
        return s.refuse(r).await;
    }
    if let Some(backup) = &backup {
        if let Err(r) = super::files::backup_refusal::<St>(backup) {
            return s.refuse(r).await;
        }
    }
    let root = St::KEEPS_ATTRS && crate::services::attrs::is_root();
    let ready = TreeReady {
        meta,
        backup: backup.is_some(),
        owners: meta && root,
        specials: meta && root,
        xattrs: meta && St::KEEPS_ATTRS,
        sparse: St::KEEPS_HOLES,
        delta: deltas,
    };
    s.send(&ready, &[]).await?;
    let mut state = TreePutState::new(base, force, meta).with_sparse(St::KEEPS_HOLES);
    let mut sink = st.tree_sink(backup, covers);
    let ended = put_frames(s, &mut state, &mut sink, deltas).await;
    if !matches!(ended, Ok(Ended::Done)) {
        // Cut, refused or failed: what was received and verified is put
        // in place (a rerun would otherwise send it again), before the
        // refusal is sent: a client that reruns on reading it finds it
        // there.
        sink.settle(true).await;
    }
    match ended? {
        Ended::Refused(r) => s.close_with(r).await,
        Ended::Done | Ended::Left => Ok(()),
    }
}

/// How the frames of a `tree_put` ended.
enum Ended {
    /// Done and answered.
    Done,
    /// The client left.
    Left,
    /// Refused: the connection closes with this, once what was verified
    /// is in place.
    Refused(Refusal),
}

/// The frames of one `tree_put`, until it ends.
async fn put_frames<K: TreeSink>(
    s: &mut S,
    state: &mut TreePutState,
    sink: &mut K,
    deltas: bool,
) -> Result<Ended, Error> {
    loop {
        let frame = match s.read::<TreePutInput>().await {
            Ok(Some((frame, _))) => frame,
            Ok(None) => return Ok(Ended::Left),
            Err(e) if e.is_recoverable() => {
                return Ok(Ended::Refused(bad_request(format!("bad frame in a tree_put: {e}"))))
            }
            Err(e) => return Err(e),
        };
        match state.on_frame(frame) {
            PutAction::ReadManifest(len) => {
                let entries = match tree_part(s, len, "manifest", "a list of entries").await? {
                    Ok(entries) => entries,
                    Err(r) => return Ok(Ended::Refused(r)),
                };
                let screened = match state.on_manifest(entries) {
                    Ok(screened) => screened,
                    Err(r) => return Ok(Ended::Refused(r)),
                };
                let decided = match sink.decide(state.base(), state.force(), screened.to_decide).await {
                    Ok(decided) => decided,
                    // Frames the client pipelined after this one follow:
                    // the connection cannot stay in step.
                    Err(r) => return Ok(Ended::Refused(bad_request(Refusal::from(r).message))),
                };
                let mut answer = state.on_decided(screened.answer, decided);
                if !screened.to_apply.is_empty() {
                    // Links to files of this upload find them in place.
                    settle(s, state, sink, true, true).await?;
                    let applied = sink.apply(state.base(), state.force(), screened.to_apply).await;
                    state.on_applied(&mut answer, applied);
                }
                // Older versions of small wanted files offered as bases,
                // their signatures right behind the answer, in its order
                // (PROTOCOL.md §4.6.6.1).
                let candidates = if deltas { state.basis_candidates(&answer) } else { Vec::new() };
                let bases = if candidates.is_empty() { Vec::new() } else { sink.offer_bases(candidates).await };
                let mut signatures = Vec::with_capacity(bases.len());
                if !bases.is_empty() {
                    let mut at: std::collections::HashMap<u64, usize> =
                        answer.send.iter().enumerate().map(|(k, w)| (w.i, k)).collect();
                    for (i, basis, sig) in bases {
                        let Some(k) = at.remove(&i) else { continue };
                        state.offered(i, basis.len);
                        answer.send[k].basis = Some(basis);
                        signatures.push((k, sig));
                    }
                    signatures.sort_by_key(|(k, _)| *k);
                }
                let body = json(&answer)?;
                s.feed(&Wants { len: body.len() as u64, count: answer.count() as u64 }, &body).await?;
                for (_, sig) in &signatures {
                    crate::session::delta::feed_signature(&mut s.halves().1, sig).await?;
                }
                s.flush().await?;
            }
            PutAction::EndWants(end) => s.send(&end, &[]).await?,
            PutAction::Receive { i, need, offset, len } => {
                let (wait, now) = match sink.receive(s, i, &need, offset, len).await? {
                    Got::Later { now } => (now, now),
                    // In place already: told at once, nothing else waited
                    // for.
                    Got::Done(outcome) => {
                        let stored = outcome.is_ok();
                        state.settled(i, &need.path, outcome);
                        (false, stored)
                    }
                };
                settle(s, state, sink, wait, now).await?;
            }
            PutAction::Finish => {
                settle(s, state, sink, true, true).await?;
                let done = state.done();
                s.set_outcome(format!("ok: {} files, {} bytes of them", done.files, done.bytes));
                return s.send(&done, &[]).await.map(|()| Ended::Done);
            }
            PutAction::Close(r) => return Ok(Ended::Refused(r)),
        }
    }
}

fn bad_request(message: String) -> Refusal {
    Refusal::new(crate::proto::ErrorCode::BadRequest, message)
}

/// Takes in what the sink put in place (all of it, waited for, if `wait`)
/// and reports it: at once if `now` (or `wait`), or if the sink commits in
/// batches, else every [`REPORT_EVERY`](super::super::storage::REPORT_EVERY)
/// files.
async fn settle<K: TreeSink>(
    s: &mut S,
    state: &mut TreePutState,
    sink: &mut K,
    wait: bool,
    now: bool,
) -> Result<(), Error> {
    let settled = sink.settle(wait).await;
    let some = !settled.is_empty();
    for (i, path, outcome) in settled {
        state.settled(i, &path, outcome);
    }
    let Some(list) = state.report(now || wait || (K::REPORT_EACH_SETTLE && some)) else { return Ok(()) };
    let body = json(&list)?;
    s.send(&Committed { len: body.len() as u64 }, &body).await
}

/// Sends the files a client wants, back to back (PROTOCOL.md §4.6.3.3),
/// the storage opening them a bounded number ahead; what is sent is
/// flushed whenever the next file is not ready yet.
pub(in crate::server) async fn tree_get<St: Storage>(s: &mut S, st: &St, request: TreeGet) -> Result<(), Error> {
    let TreeGet { path: base, sparse, delta } = request;
    if let Err(r) = Sandbox::relative(&base) {
        return s.refuse(r).await;
    }
    let deltas = delta && St::TREE_DELTAS;
    let ready = TreeReady {
        meta: false,
        backup: false,
        owners: false,
        specials: false,
        xattrs: false,
        sparse: false,
        delta: deltas,
    };
    s.send(&ready, &[]).await?;
    let mut state = TreeGetState::default();
    loop {
        let frame = match s.read::<TreeGetInput>().await {
            Ok(Some((frame, _))) => frame,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => return s.refuse_and_close(format!("bad frame in a tree_get: {e}")).await,
            Err(e) => return Err(e),
        };
        let (wants, mut bases) = match state.on_frame(frame) {
            GetAction::ReadWants(len) => match tree_part::<WantList>(s, len, "wants", "a want list").await? {
                Ok(list) => {
                    let wants = state.on_wants(list.send);
                    // The signatures of the client's older versions
                    // follow, in the wants' order (PROTOCOL.md §4.6.6.1).
                    match read_bases(s, &wants, deltas).await? {
                        Ok(bases) => (wants, bases),
                        Err(r) => return s.close_with(r).await,
                    }
                }
                Err(r) => return s.close_with(r).await,
            },
            GetAction::Finish(done) => {
                s.set_outcome(format!("ok: {} files, {} bytes of them", done.files, done.bytes));
                return s.send(&done, &[]).await;
            }
            GetAction::Close(r) => return s.close_with(r).await,
        };
        let fetched = st.fetch(&base, wants, sparse);
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
                Some((i, Ok(mut d))) => {
                    let size = d.head().size;
                    let sent_as_delta = match bases.remove(&i) {
                        Some((basis, sig)) => send_delta(s, i, &mut d, &basis, &sig).await?,
                        None => false,
                    };
                    if !sent_as_delta {
                        send_one(s, i, d).await?;
                    }
                    state.on_sent(size);
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

/// The older versions a `tree_get`'s `wants` frame names as bases, and
/// their signatures, read from behind it: each checked as it comes, the
/// frame's in all within
/// [`TREE_SIGNATURE_ENTRIES`](crate::session::delta::TREE_SIGNATURE_ENTRIES).
/// `Ok(Err)`: refused (the connection closes).
#[allow(clippy::type_complexity)]
async fn read_bases(
    s: &mut S,
    wants: &std::collections::VecDeque<(u64, crate::proto::Want)>,
    deltas: bool,
) -> Result<Result<std::collections::HashMap<u64, (crate::proto::Basis, crate::delta::Signature)>, Refusal>, Error> {
    use crate::session::delta::{self as dt, DeltaFailed};
    let mut bases = std::collections::HashMap::new();
    let mut entries = 0u64;
    for (i, w) in wants {
        let Some(basis) = &w.basis else { continue };
        if !deltas {
            return Ok(Err(bad_request("a basis in a tree_get whose tree_ready did not take them".into())));
        }
        entries = entries.saturating_add(basis.count);
        // A signature, nothing else (no append in a stream).
        let only_signature = basis.layout.is_some() && !basis.append && basis.blake3.is_none() && basis.tail.is_none();
        if !only_signature || basis.count == 0 || basis.len == 0 || basis.len > dt::TREE_BASIS_MAX {
            let msg = format!(
                "a basis of {} bytes in {} entries (most in a tree: {})",
                basis.len,
                basis.count,
                dt::TREE_BASIS_MAX
            );
            return Ok(Err(bad_request(msg)));
        }
        if entries > dt::TREE_SIGNATURE_ENTRIES {
            let most = dt::TREE_SIGNATURE_ENTRIES;
            return Ok(Err(bad_request(format!("signatures of over {most} entries behind one wants frame"))));
        }
        match dt::read_signature(s, basis).await {
            Ok(sig) => {
                bases.insert(*i, (basis.clone(), sig));
            }
            Err(DeltaFailed::Wire(e)) => return Err(e),
            Err(DeltaFailed::Closed) => return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) => return Ok(Err(bad_request(format!("bad signature for want {i}: {e}")))),
        }
    }
    Ok(Ok(bases))
}

/// One file of a `tree_get` as `delta` frames against the client's older
/// version (its checksum after them), where one pays: `false` if it did
/// not (nothing sent; the file goes whole).
async fn send_delta(
    s: &mut S,
    i: u64,
    d: &mut impl Download,
    basis: &crate::proto::Basis,
    theirs: &crate::delta::Signature,
) -> Result<bool, Error> {
    use crate::session::delta::{self as dt, DeltaFailed};
    let head = d.head();
    let size = head.size;
    // Cut as the sizes say now (a file that changed size since it was
    // listed may not be), worth a delta, and small enough for a stream.
    let fits = basis.layout.is_some_and(|l| dt::layout_fits(l, basis.len, size).is_ok());
    if !fits || !dt::worth(basis.len, size) || size >= dt::TREE_BASIS_MAX {
        return Ok(false);
    }
    let Ok(Some(file)) = d.delta_source().await else { return Ok(false) };
    let theirs = theirs.clone();
    let planned = tokio::task::spawn_blocking(move || dt::plan_against(&file, size, &theirs).map(|p| (file, p)));
    let Ok(Some((file, (plan, _)))) = planned.await else { return Ok(false) };
    let crate::proto::FileReply { offset, mtime, mode, mtime_ns, .. } = head;
    s.feed_head(&TreeFile { len: 0, i, offset, size, mtime, mode, mtime_ns, holes: None, delta: true })?;
    match dt::send_ops(&mut s.halves().1, file, size, plan, offset, &mut |_| {}).await {
        Ok(sent) => s.feed(&Checksum { blake3: sent.hash.to_hex().to_string() }, &[]).await.map(|()| true),
        Err(DeltaFailed::Wire(e)) => Err(e),
        // The head promised the file: the connection ends.
        Err(e) => Err(Error::Io(std::io::Error::other(format!("cannot send entry {i}: {e}")))),
    }
}

/// One file of a `tree_get`: its head, body and checksum, buffered (the
/// caller flushes).
async fn send_one(s: &mut S, i: u64, d: impl Download) -> Result<(), Error> {
    let crate::proto::FileReply { len, size, offset, mtime, mode, mtime_ns, holes, .. } = d.head();
    s.feed_head(&TreeFile { len, i, offset, size, mtime, mode, mtime_ns, holes, delta: false })?;
    let hash = d.send(s, &format!("entry {i}")).await?;
    s.feed(&Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}
