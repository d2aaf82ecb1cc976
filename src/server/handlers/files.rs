//! File requests: list, stat, mkdir, remove, rename, get, put, each
//! written once over the root's [`Storage`]: the frames, their order and
//! every answer's wording are here; how a file is read, held, claimed and
//! put in place is the storage's (`server::storage`).

use super::super::storage::{mismatch, Body, Download as _, NotFinished, NotReceived, Storage, Upload};
use crate::proto::{
    Backup, Checksum, Get, List, ListReply, Mkdir, MkdirReply, Put, PutDone, PutInput, PutReady, Remove, RemoveReply,
    Rename, RenameReply, SignatureWanted, Stat, StatReply,
};
use crate::services::files::{self, Listing, Sandbox};
use crate::services::Fault;
use crate::session::delta;
use crate::session::{cut_off_by, ServerSide, Session};
use crate::wire::{Error, MAX_BUFFERED_BODY};

type S = Session<ServerSide>;

pub(in crate::server) async fn list<St: Storage>(s: &mut S, st: &St, request: List) -> Result<(), Error> {
    let List { path, recursive, dirs, blake3, partial } = request;
    let listing = if partial { Listing::Partials } else { Listing::of(recursive, dirs) };
    let listed = async {
        let entries = st.list(&path, listing, blake3).await?;
        let body = serde_json::to_vec(&entries).map_err(|e| Fault::Internal { what: e.to_string() })?;
        if body.len() as u64 > MAX_BUFFERED_BODY {
            return Err(Fault::ListingTooLarge { path: path.clone(), budget: MAX_BUFFERED_BODY });
        }
        Ok(body)
    };
    match listed.await {
        Ok(body) => s.send(&ListReply { len: body.len() as u64 }, &body).await,
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn mkdir<St: Storage>(s: &mut S, st: &St, request: Mkdir) -> Result<(), Error> {
    match st.mkdir(&request.path, request.parents.unwrap_or(true)).await {
        Ok(created) => s.send(&MkdirReply { created }, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn remove<St: Storage>(s: &mut S, st: &St, request: Remove) -> Result<(), Error> {
    match st.remove(&request.path, request.recursive.unwrap_or(true)).await {
        Ok(removed) => {
            if !removed {
                s.set_outcome("ok: nothing was there".to_owned());
            }
            s.send(&RemoveReply { removed }, &[]).await
        }
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn rename<St: Storage>(s: &mut S, st: &St, request: Rename) -> Result<(), Error> {
    let Rename { from, to, force } = request;
    match st.rename(&from, &to, force).await {
        Ok(()) => s.send(&RenameReply {}, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn stat<St: Storage>(s: &mut S, st: &St, request: Stat) -> Result<(), Error> {
    match st.stat(&request.path).await {
        Ok(entry) => s.send(&StatReply { entry }, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

/// Streams a file from the agreed offset, then the checksum of the whole
/// file.
pub(in crate::server) async fn get<St: Storage>(s: &mut S, st: &St, mut request: Get) -> Result<(), Error> {
    let shown = files::shown(&request.path);
    // The client's older version (PROTOCOL.md §4.6.6): its signature is
    // asked for only once the file is open and the basis fits it.
    let basis = request.basis.take();
    let mut download = match st.open(request).await {
        Ok(download) => download,
        Err(r) => return s.refuse(r).await,
    };
    // Read for a delta only where one may pay (a bucket's object is
    // copied to the server's disk for it).
    let basis = basis.filter(|b| delta::may_pay(b, download.head().size));
    let source = match &basis {
        Some(_) => match cut_off_by(&s.cut_off().clone(), async { Ok(download.delta_source().await) }).await? {
            Ok(source) => source,
            Err(r) => return s.refuse(r).await,
        },
        None => None,
    };
    if let (Some(basis), Some(file)) = (basis, source) {
        let head = download.head();
        let size = head.size;
        let cut = s.cut_off().clone();
        let b = basis.clone();
        let want = tokio::task::spawn_blocking(move || delta::plan_for(&file, size, &b).map(|w| (file, w)));
        let chosen = match cut_off_by(&cut, async { Ok(want.await.ok().flatten()) }).await? {
            Some((file, delta::Want::Append(len, prefix))) => Some((file, delta::Plan::Append(len, Some(prefix)))),
            Some((file, delta::Want::Signature)) => {
                s.send(&SignatureWanted {}, &[]).await?;
                let layout = basis.layout.unwrap_or(crate::delta::Layout::for_sizes(basis.len, size));
                // Chunks: ours cut guided by theirs as it comes, and hashed
                // in the same pass, never waiting for the client's entries.
                // Blocks: ours cut while theirs comes, the hash made after
                // the ops (while the client builds). Either is given up if
                // this handler returns first (the client left, or sent a
                // bad signature).
                let (theirs, guided, chunking) = if matches!(layout, crate::delta::Layout::Chunks(_)) {
                    let read = delta::read_guiding(s, (&basis, false), (file, size), false);
                    let (theirs, ours) = cut_off_by(&cut, async { Ok(read.await) }).await?;
                    (theirs.map(|()| None), Some(ours), None)
                } else {
                    let stop = delta::StopOnDrop::default();
                    let flag = stop.0.clone();
                    let chunking = tokio::task::spawn_blocking(move || {
                        delta::index_until(&file, size, layout, &flag).map(|sig| (file, sig))
                    });
                    let theirs = cut_off_by(&cut, async { Ok(delta::read_signature(s, &basis).await) }).await?;
                    (theirs.map(Some), None, Some((chunking, stop)))
                };
                let theirs = match theirs {
                    Ok(sig) => sig,
                    Err(delta::DeltaFailed::Wire(e)) => return Err(e),
                    Err(delta::DeltaFailed::Closed) => return Ok(()),
                    Err(e) => return s.refuse_and_close(format!("bad signature: {e}")).await,
                };
                // Not read (or not cut as the sizes say): the file goes as a
                // whole one would.
                match (guided, chunking, theirs) {
                    (Some(Ok((file, Ok((pieces, hash))))), _, _) => {
                        Some((file, delta::Plan::Pieces(pieces, Some(hash))))
                    }
                    (None, Some((chunking, _stop)), Some(theirs)) => {
                        let chunked = cut_off_by(&cut, async { Ok(chunking.await) }).await?;
                        chunked.ok().and_then(Result::ok).and_then(|(file, ours)| {
                            let pieces = crate::delta::diff(&theirs, &ours).ok()?;
                            Some((file, delta::Plan::Pieces(pieces, None)))
                        })
                    }
                    _ => None,
                }
            }
            None => None,
        };
        if let Some((file, plan)) = chosen {
            let head = crate::proto::FileReply { len: 0, holes: None, delta: true, ..head };
            s.send(&head, &[]).await?;
            // The whole file's hash is made after the ops (while the
            // client builds): a session cut off stops it too.
            let ops = async {
                let (_, mut out) = s.halves();
                Ok(delta::send_ops(&mut out, file, size, plan, head.offset, &mut |_| {}).await)
            };
            let sent = cut_off_by(&cut, ops).await?;
            drop(download);
            return match sent {
                Ok(sent) => s.send(&Checksum { blake3: sent.hash.to_hex().to_string() }, &[]).await,
                Err(delta::DeltaFailed::Wire(e)) => Err(e),
                // The frames promised the file: the connection ends.
                Err(e) => Err(Error::Io(std::io::Error::other(format!("cannot send {shown}: {e}")))),
            };
        }
    }
    s.feed_head(&download.head())?;
    let hash = download.send(s, &shown).await?;
    s.send(&Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}

/// Why backups cannot be kept as `backup` says on this root, if they
/// cannot: a root that keeps none, a suffix or a directory that cannot be.
pub(in crate::server) fn backup_refusal<St: Storage>(backup: &Backup) -> Result<(), Fault> {
    let refused = |why| Fault::NotKept { path: backup.dir.clone().unwrap_or_default(), why };
    if !St::KEEPS_BACKUPS {
        return Err(refused("a bucket root keeps no backups"));
    }
    backup.check().map_err(refused)?;
    if let Some(dir) = &backup.dir {
        Sandbox::relative(dir)?;
    }
    Sandbox::relative(&backup.of).map(drop)
}

/// A put's basis as `put_ready` offers it: a signature to cut is streamed
/// to a client that takes it so (`streamed`, no count), and cut whole
/// now for any other (its count in the head; no basis if it cannot be
/// read, as before the cut was deferred).
async fn settled(
    basis: Option<(crate::proto::Basis, Option<delta::Signed>)>,
    streams: bool,
) -> Option<(crate::proto::Basis, Option<delta::Signed>)> {
    // A signature goes while the client's answer is read.
    let pipelined = |b: Option<(crate::proto::Basis, Option<delta::Signed>)>| {
        b.map(|(head, signed)| (crate::proto::Basis { pipelined: signed.is_some(), ..head }, signed))
    };
    pipelined(match basis {
        Some((mut head, Some(delta::Signed::ToCut(to_cut)))) if !streams => {
            let sig = tokio::task::spawn_blocking(move || to_cut.cut()).await.ok()?.ok()?;
            head.count = sig.entries.len() as u64;
            Some((head, Some(delta::Signed::Made(sig))))
        }
        Some((mut head, Some(delta::Signed::ToCut(to_cut)))) => {
            (head.count, head.streamed) = (0, true);
            Some((head, Some(delta::Signed::ToCut(to_cut))))
        }
        Some((mut head, Some(delta::Signed::Made(sig)))) => {
            head.count = sig.entries.len() as u64;
            Some((head, Some(delta::Signed::Made(sig))))
        }
        other => other,
    })
}

/// Receives an upload, resuming what an interrupted upload of the path
/// left; verifies the whole-file checksum and puts the file in place
/// (never over an existing file without `force`).
///
/// The drain deadline is watched here (not by dropping the request): a
/// body cut by it keeps every byte that arrived, as a cut connection's.
pub(in crate::server) async fn put<St: Storage>(s: &mut S, st: &St, request: Put) -> Result<(), Error> {
    let Put { path, size, force, mode, mtime, mtime_ns, backup, delta } = request;
    if let Some(backup) = &backup {
        if let Err(r) = backup_refusal::<St>(backup) {
            return s.refuse(r).await;
        }
    }
    let stamp = mtime.map(|secs| crate::services::files::Stamp::from_wire(secs, mtime_ns));
    let cut = s.cut_off().clone();
    let admitted = cut_off_by(&cut, async { Ok(st.admit(&path, size, force, (stamp, mode)).await) }).await?;
    let mut upload = match admitted {
        Ok(upload) => upload,
        Err(r) => return s.refuse(r).await,
    };
    let (offset, prefix_blake3) = upload.offer();
    // The older version, for a delta (PROTOCOL.md §4.6.6): only to a key
    // that may read it, as its signature tells of its contents.
    // A client that takes the signature streamed gets it while it is
    // cut; any other, cut whole first (none, if it cannot be read).
    let streams = delta.as_ref().is_some_and(|ask| ask.stream);
    let basis = match &delta {
        Some(ask) if st.reads_allowed() => {
            match cut_off_by(&cut, async { Ok(settled(upload.basis(ask, size).await, streams).await) }).await {
                Ok(basis) => basis,
                Err(e) => {
                    upload.abandon().await;
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let mut basis = basis;
    // Whether the last put_ready offered a basis.
    let mut offered = false;
    let mut asked_again = false;
    // A signature still on its way (streamed as it is cut, or counted):
    // the client may send its ops before its end (PROTOCOL.md §4.6.6),
    // and they are read (and the file built) while it goes.
    let mut streaming: Option<delta::Streaming> = None;
    let due = "put_data or put_delta after put_ready";
    let data = loop {
        let step = cut_off_by(&cut, async {
            let (head, signed) = match basis.as_mut() {
                Some((b, signed)) => (Some(b.clone()), signed.take()),
                None => (None, None),
            };
            offered = head.is_some();
            let (prefix_blake3, backup) = (prefix_blake3.clone(), backup.is_some());
            let ready = PutReady { offset, prefix_blake3, backup, sparse: St::KEEPS_HOLES, basis: head };
            s.send(&ready, &[]).await?;
            match signed {
                // The signature (a streamed one the server could not finish
                // leaves the basis offered: the client sends every byte as
                // new), with the client's step read while it goes, with no
                // idle limit until its end (a client may read it all
                // before it says a word): the basis says `pipelined`.
                Some(signed) => {
                    let mut going = match signed {
                        delta::Signed::Made(sig) => delta::Streaming::counted(sig),
                        delta::Signed::ToCut(to_cut) => delta::Streaming::start(to_cut),
                    };
                    let mut patience = going.patience();
                    let (reader, mut out) = s.halves();
                    let step = going.alongside(&mut out, delta::read_patiently::<PutInput>(reader, &mut patience));
                    let step = step.await;
                    streaming = Some(going);
                    Ok(step)
                }
                None => Ok(s.read::<PutInput>().await),
            }
        })
        .await;
        let step = match step {
            Ok(Ok(step)) => Ok(step.map(|(m, _)| m)),
            Ok(Err(e)) => {
                // Refused (or the client gone): the signature stops.
                streaming = None;
                step_failed(s, e, due).await
            }
            Err(e) => Err(e),
        };
        let appended = basis.as_ref().is_some_and(|(b, _)| b.append);
        match step {
            // A likely append that the client found was not one: the
            // signature after all, once.
            Ok(Some(PutInput::SignatureWanted(_))) if appended && !asked_again => {
                asked_again = true;
                let ask = crate::proto::DeltaAsk { stream: streams, ..Default::default() };
                // Unless the file cannot be indexed: then the append basis
                // again, for the client to send every byte against.
                let old = basis.take();
                let again = async { Ok(settled(upload.basis(&ask, size).await, streams).await) };
                basis = match cut_off_by(&cut, again).await {
                    Ok(basis) => basis.filter(|(b, _)| !b.append).or(old),
                    Err(e) => {
                        upload.abandon().await;
                        return Err(e);
                    }
                };
            }
            Ok(Some(PutInput::SignatureWanted(_))) => {
                drop(streaming.take());
                upload.abandon().await;
                return s.refuse_and_close("signature_wanted where no likely append was offered".to_owned()).await;
            }
            other => break other,
        }
    };
    let agreed = match &data {
        Ok(Some(PutInput::PutData(d))) => {
            // Holes left out (PROTOCOL.md §4.6.5), only where offered.
            let taken = St::KEEPS_HOLES || d.holes.is_none();
            let covered = crate::session::sparse::covers(d.holes.as_deref(), (d.offset, d.len), size) == Ok(true);
            taken && covered && upload.agree(d.offset).await? && upload.holes(d.holes.clone(), size)
        }
        Ok(Some(PutInput::PutDelta(d))) => offered && upload.agree(d.offset).await?,
        _ => false,
    };
    if !agreed {
        // Refused: the signature stops.
        drop(streaming.take());
        let held = upload.held();
        cut_off_by(&cut, async {
            upload.abandon().await;
            Ok(())
        })
        .await?;
        return match data {
            Ok(Some(PutInput::PutData(data))) => {
                // Answered at once, the body unread: it may be 2^63
                // bytes long.
                let msg = format!(
                    "put_data covers bytes {}..{} but {held} are held of a {size}-byte file",
                    data.offset,
                    data.offset.saturating_add(data.len)
                );
                s.refuse_and_close(msg).await
            }
            Ok(Some(PutInput::PutDelta(d))) if !offered => {
                s.refuse_and_close(format!("put_delta from byte {} but no basis was offered", d.offset)).await
            }
            Ok(Some(PutInput::PutDelta(d))) => {
                s.refuse_and_close(format!("put_delta from byte {} but {held} are held", d.offset)).await
            }
            other => other.map(|_| ()),
        };
    }
    let is_delta = matches!(data, Ok(Some(PutInput::PutDelta(_))));
    let received = match streaming.as_mut() {
        // The file built while the signature still goes.
        Some(going) if is_delta => {
            let patience = going.patience();
            let (reader, mut out) = s.halves();
            going.alongside(&mut out, upload.receive_delta(reader, (&cut, patience), size)).await
        }
        _ if is_delta => upload.receive_delta(s.reader(), (&cut, delta::Patience::default()), size).await,
        // The whole body, once the signature has gone.
        _ => {
            if let Some(going) = streaming.take() {
                let (_, mut out) = s.halves();
                if let Err(e) = cut_off_by(&cut, going.finish(&mut out)).await {
                    upload.abandon().await;
                    return Err(e);
                }
            }
            upload.receive(s, &cut).await
        }
    };
    // The signature's end goes before any answer: what is left of it, for
    // a file built or one whose older version changed meanwhile (answered
    // in step); any other outcome ends the connection, and the cut stops.
    if let (Some(going), Ok(_) | Err(NotReceived::Stale(_))) = (streaming.take(), &received) {
        let (_, mut out) = s.halves();
        if let Err(e) = cut_off_by(&cut, going.finish(&mut out)).await {
            if let Ok(body) = received {
                cut_off_by(&cut, async {
                    body.keep().await;
                    Ok(())
                })
                .await?;
            }
            return Err(e);
        }
    }
    let body = match received {
        Ok(body) => body,
        Err(NotReceived::Cut(e)) => {
            let why = crate::text::printable(&e.to_string()).into_owned();
            s.set_outcome(format!("cut: {why}; {}", St::CUT_KEEPS));
            return Err(e);
        }
        // The delta's frames cannot be read past: the connection ends.
        Err(NotReceived::Write(r)) if is_delta => return s.close_with(r).await,
        Err(NotReceived::Write(r)) => return cut_off_by(&cut, write_failed(s, r)).await,
        Err(NotReceived::Bad(msg)) => return s.refuse_and_close(msg).await,
        Err(NotReceived::Stale(why)) => {
            // In step still: the checksum comes, and is answered as a
            // mismatch (the client then sends the file whole).
            return match cut_off_by(&cut, read_step::<Checksum>(s, "checksum after the delta")).await? {
                Some(Checksum { blake3 }) => s.refuse(mismatch(&path, &format!("none ({why})"), &blake3)).await,
                None => Ok(()),
            };
        }
    };
    let claimed = match cut_off_by(&cut, read_step::<Checksum>(s, "checksum after put_data")).await {
        Ok(Some(Checksum { blake3 })) => blake3,
        other => {
            cut_off_by(&cut, async {
                body.keep().await;
                Ok(())
            })
            .await?;
            return other.map(|_| ());
        }
    };
    match body.finish(&claimed, (mode, stamp), (force, backup)).await {
        Ok(()) => {
            if mode.is_some() && !St::KEEPS_MODES {
                s.set_outcome("ok: stored; the mode is not kept (an object store has no permission bits)".to_owned());
            }
            s.send(&PutDone { size }, &[]).await
        }
        Err(NotFinished::Mismatch(got)) => s.refuse(mismatch(&path, &got, &claimed)).await,
        Err(NotFinished::Refused(r)) => s.refuse(r).await,
    }
}

/// Reads the next step of a put, which must be an `M`. `None`: the client
/// left. A frame that is not the step due ends the connection (what
/// follows it cannot be framed with certainty).
pub(super) async fn read_step<M: crate::wire::FrameHeader>(s: &mut S, due: &str) -> Result<Option<M>, Error> {
    match s.read::<M>().await {
        Ok(step) => Ok(step.map(|(m, _)| m)),
        Err(e) => step_failed(s, e, due).await,
    }
}

/// A step of a put that could not be read (`due` says what was due): a
/// frame that is not it, or one that cannot be read, is refused and the
/// connection ends.
async fn step_failed<M>(s: &mut S, e: Error, due: &str) -> Result<Option<M>, Error> {
    match e {
        Error::Unexpected { kind, .. } => {
            s.refuse_and_close(format!("expected {due}, got {kind}")).await.map(|()| None)
        }
        e if e.is_recoverable() => s.refuse_and_close(format!("bad {due}: {e}")).await.map(|()| None),
        e => Err(e),
    }
}

/// A write of the upload failed. Answered at once: a client that listens
/// while it sends (ours does) stops here and closes the connection,
/// instead of sending the rest of a file that has nowhere to go. One that
/// sends on gets this as its answer, and the rest of its body and its
/// checksum are read and dropped.
pub(super) async fn write_failed(s: &mut S, refusal: Fault) -> Result<(), Error> {
    s.refuse(refusal).await?;
    s.reader().skip_body().await?;
    match s.read::<Checksum>().await {
        Ok(_) => Ok(()),
        Err(Error::Unexpected { kind, .. }) => {
            s.refuse_and_close(format!("expected checksum after put_data, got {kind}")).await
        }
        Err(e) => Err(e),
    }
}
