//! The client's side of the streamed tree transfer (PROTOCOL.md §4.6.3):
//! one request moves a share of a planned copy, the files back to back.
//! [`super::tree::run`] gives each connection its share.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::spawn_blocking;

use super::conn::Client;
use super::conversation::{unexpected, GetState, GetStep, Outcomes, PutAnswers, PutPlan, PutStep};
use super::error::ClientError;
use super::files::{join_err, local_err, Progress, Transfer, TransferOptions};
use super::job::{Job, Observer};
use super::LocalBackup;
use crate::proto::{
    Attrs, Checksum, CommitList, Manifest, ManifestEntry, TreeFile, TreeGet, TreeGetOutput, TreePut, TreePutOutput,
    TreeReady, Want, WantList, Wants, WantsEnd, TREE_PART_ENTRIES, TREE_PART_MAX,
};
use crate::services::attrs::Names;
use crate::services::files::received_mode;
use crate::services::root::{is_partial_name, partial_name, Had};
use crate::session::{
    Batch, CommitError, Guard, Place, ReceiveError, Received, Receiver, Replace, SendError, Sender, Unproven,
    SMALL_BODY,
};
use crate::wire;
use rustix::fs::OFlags;
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;

/// Bytes of small files read ahead of sending them.
const READ_AHEAD: u64 = 1024 * 1024;

/// `path` with empty and `.` components dropped (`..` is left for the
/// receiver to refuse).
fn normal(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// Sends `share` with `tree_put`. `Err` with [`ErrorCode::UnknownType`]
/// before anything moved: the server has no streamed transfer.
pub(super) async fn put(
    client: &mut Client,
    share: &[Job],
    (how, deltas): (&TransferOptions, bool),
    observer: &dyn Observer,
    ids: &[usize],
) -> Result<Outcomes, ClientError> {
    let (force, backup) = (how.force, how.backup.clone());
    let asked = backup.is_some();
    // `meta`: the server then says which attributes it keeps.
    let meta = share.iter().any(|j| j.attrs.is_some());
    let w = how.applying.wanted;
    // `delta`: the server may offer older versions of small files it
    // wants (PROTOCOL.md §4.6.6.1), if one of them is worth it.
    let delta = deltas && share.iter().any(in_stream_delta);
    let put = TreePut { path: String::new(), force, meta, backup, xattrs: w.xattrs, acls: w.acls, delta };
    client.session.send(&put, &[]).await?;
    let ready: TreeReady = client.answer().await?;
    if asked && !ready.backup {
        return Err(ClientError::NoBackups);
    }
    let ready = &ready;
    let outcomes = Mutex::new(Outcomes::new(share.len()));
    // Frames cut by entries and bytes (long paths and attributes).
    let frames = crate::proto::frames(share.iter().map(|j| crate::proto::entry_weight(&j.remote, j.attrs.as_deref())));
    let answers = Mutex::new(PutAnswers::in_frames(share.len(), frames.len()));
    let (tx, rx) = mpsc::unbounded_channel::<Option<WantList>>();
    // The server's signatures of the older versions it offered, until the
    // files are sent.
    let bases = Mutex::new(HashMap::new());
    let sending = Sending {
        share,
        ids,
        observer,
        answers: &answers,
        outcomes: &outcomes,
        shared: client.shared_reads.clone(),
        sparse: ready.sparse,
        bases: &bases,
    };
    let (reader, mut out) = client.session.halves();

    let writer = async {
        let mut rx = rx;
        let mut names = Names::new();
        let mut plan = PutPlan::in_frames(share.len(), frames.len());
        loop {
            while let Ok(answer) = rx.try_recv() {
                plan.on_answer(answer);
            }
            match plan.next_step() {
                PutStep::Manifest { frame, end } => {
                    let jobs = frames.get(frame).map_or(&[][..], |r| &share[r.clone()]);
                    let numeric = how.applying.numeric;
                    let entries: Vec<ManifestEntry> =
                        jobs.iter().map(|j| manifest_entry(j, ready, (&mut names, numeric))).collect();
                    let body = json(&entries)?;
                    out.send(&Manifest { len: body.len() as u64, count: entries.len() as u64 }, &body).await?;
                    if let Some(end) = end {
                        out.send(&end, &[]).await?;
                    }
                }
                PutStep::EmptyManifest(end) => out.send(&end, &[]).await?,
                PutStep::SendFiles => {
                    let sent = send_some(&mut out, plan.wanted(), &sending).await?;
                    plan.on_sent(sent);
                }
                PutStep::Wait => match rx.recv().await {
                    Some(answer) => plan.on_answer(answer),
                    // The reader stopped: it says why.
                    None => return Ok::<(), ClientError>(()),
                },
                PutStep::End(end) => return Ok(out.send(&end, &[]).await?),
                PutStep::Over => return Ok(()),
            }
        }
    };

    let reading = async {
        // Owned here: when the reader ends, however it ends, the writer
        // waiting for an answer is told (a server that says `tree_done`
        // early cannot leave it waiting for good).
        let tx = tx;
        loop {
            let Some((frame, _)) = reader.read_head::<TreePutOutput>().await? else { return Err(ClientError::Closed) };
            match frame {
                TreePutOutput::Wants(_) => {
                    let list: WantList = read_json(reader).await?;
                    {
                        let mut o = outcomes.lock().expect("outcomes");
                        answers.lock().expect("answers").on_wants(&list, &mut o)?;
                    }
                    read_offered(reader, &list, (share, delta), &bases).await?;
                    let _ = tx.send(Some(list));
                }
                TreePutOutput::WantsEnd(_) => {
                    let _ = tx.send(None);
                }
                TreePutOutput::Committed(_) => {
                    let list: CommitList = read_json(reader).await?;
                    let mut o = outcomes.lock().expect("outcomes");
                    let done = answers.lock().expect("answers").on_committed(list, |i| share[i].size, &o);
                    for (i, result) in done {
                        observer.finished(ids[i], &share[i], &result);
                        o.done(i, result);
                    }
                }
                TreePutOutput::TreeDone(_) => return Ok(()),
                TreePutOutput::ErrorFrame(e) => return Err(e.into()),
            }
        }
    };
    // The first error ends both: a writer that failed mid-file leaves the
    // stream out of step, a reader that failed has lost the server.
    let result = tokio::try_join!(writer, reading);
    if result.is_err() {
        client.session.abandon().await;
    }
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    match result {
        Ok(_) => outcomes.fail_unreported(),
        Err(e) => outcomes.fail_the_rest(&e),
    }
    Ok(outcomes)
}

/// A job as a manifest entry, with what of its attributes the server
/// keeps (`ready`): its owner named (through `names`) unless `numeric`.
fn manifest_entry(j: &Job, ready: &TreeReady, (names, numeric): (&mut Names, bool)) -> ManifestEntry {
    let attrs = match j.owner {
        Some((uid, gid)) if ready.owners => {
            let mut a = j.attrs.as_deref().cloned().unwrap_or_default();
            (a.uid, a.gid) = (Some(uid), Some(gid));
            if !numeric {
                (a.user, a.group) = names.names(uid, gid);
            }
            Some(Box::new(a))
        }
        _ => j.attrs.clone(),
    };
    ManifestEntry {
        path: normal(&j.remote),
        size: j.size,
        mtime: j.mtime,
        mode: j.mode,
        replace: j.replace,
        blake3: j.blake3.clone(),
        mtime_ns: j.mtime_ns,
        attrs: fit_attrs(&attrs, ready),
        ..ManifestEntry::default()
    }
}

/// Of `attrs`, what the server says it keeps (`tree_ready`): the owner
/// where it runs as root, extended attributes where it keeps them, what a
/// special file is always (the entry means nothing without).
fn fit_attrs(attrs: &Option<Box<Attrs>>, ready: &TreeReady) -> Option<Box<Attrs>> {
    let a = attrs.as_deref()?;
    let (owners, xattrs) = (ready.owners, ready.xattrs);
    let fit = Attrs {
        special: a.special,
        rdev: a.rdev,
        uid: a.uid.filter(|_| owners),
        gid: a.gid.filter(|_| owners),
        user: a.user.clone().filter(|_| owners),
        group: a.group.clone().filter(|_| owners),
        xattrs: a.xattrs.clone().filter(|_| xattrs),
    };
    (fit != Attrs::default()).then(|| Box::new(fit))
}

/// `value` as a JSON body.
fn json(value: &impl serde::Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Wire(wire::Error::Io(std::io::Error::other(e))))
}

/// A tree frame's JSON body.
async fn read_json<T: serde::de::DeserializeOwned>(
    reader: &mut crate::wire::FrameReader<crate::transport::BoxRead>,
) -> Result<T, ClientError> {
    let body = reader.read_body(TREE_PART_MAX).await?;
    Ok(serde_json::from_slice(&body)
        .map_err(|e| wire::Error::InvalidField { source: e, body_len: body.len() as u64 })?)
}

/// Whether a job may go as a delta inside the stream (PROTOCOL.md
/// §4.6.6.1): a changed file under
/// [`TREE_DELTA_MAX`](crate::session::delta::TREE_DELTA_MAX) whose
/// receiver holds an older version worth building from. Larger ones go
/// each by itself ([`super::tree`]).
pub(super) fn in_stream_delta(job: &Job) -> bool {
    use crate::session::delta::{worth, TREE_DELTA_MAX};
    job.size < TREE_DELTA_MAX && job.held.is_some_and(|held| worth(held, job.size))
}

/// Reads the signatures the server sent behind a `wants` frame, for the
/// files it offered older versions of, in the list's order: each basis
/// checked against the file (a small file we may send as a delta, cut as
/// the two sizes say), within the frame's bound.
async fn read_offered(
    reader: &mut crate::wire::FrameReader<crate::transport::BoxRead>,
    list: &WantList,
    (share, asked): (&[Job], bool),
    bases: &Mutex<HashMap<u64, Arc<crate::delta::Signature>>>,
) -> Result<(), ClientError> {
    use crate::session::delta::{self as dt, DeltaFailed};
    let mut entries = 0u64;
    for w in &list.send {
        let Some(basis) = &w.basis else { continue };
        let size = share[w.i as usize].size;
        entries = entries.saturating_add(basis.count);
        let fits = basis.layout.is_some_and(|l| dt::layout_fits(l, basis.len, size).is_ok());
        if !asked || size >= dt::TREE_DELTA_MAX || !dt::worth(basis.len, size) || !fits || basis.count == 0 {
            return Err(unexpected(
                "bases only for small files, cut as the sizes say",
                format!("{basis:?} for {size}"),
            ));
        }
        if entries > dt::TREE_SIGNATURE_ENTRIES {
            return Err(unexpected("signatures within the bound of a wants frame", entries));
        }
        let sig = match dt::read_signature_from(reader, basis).await {
            Ok(sig) => sig,
            Err(DeltaFailed::Wire(e)) => return Err(e.into()),
            Err(DeltaFailed::Closed) => return Err(ClientError::Closed),
            Err(e) => return Err(unexpected("a signature that fits", e)),
        };
        bases.lock().expect("bases").insert(w.i, Arc::new(sig));
    }
    Ok(())
}

/// A file of the share opened to send, small ones read, or why not.
type Opened = (u64, Result<Prepared, ClientError>);

/// How a wanted file goes.
enum Prepared {
    /// Its bytes.
    Whole(Box<Sender>),
    /// Ops against the server's older version, made by `plan`, from
    /// `from` (the offset offered, if its prefix is ours, or 0).
    Delta { file: std::fs::File, plan: crate::session::delta::Plan, from: u64 },
}

/// What [`send_some`] sends from and reports to.
struct Sending<'a> {
    share: &'a [Job],
    ids: &'a [usize],
    observer: &'a dyn Observer,
    answers: &'a Mutex<PutAnswers>,
    outcomes: &'a Mutex<Outcomes>,
    shared: Option<Arc<crate::session::SharedReads>>,
    /// The server takes bodies with holes (`tree_ready`).
    sparse: bool,
    /// The signatures of the older versions the server offered.
    bases: &'a Mutex<HashMap<u64, Arc<crate::delta::Signature>>>,
}

/// Opens the next wanted files (reading small ones) on a blocking thread,
/// then sends them; returns how many were sent.
async fn send_some(
    out: &mut crate::session::Outbound<'_, crate::session::ClientSide>,
    queue: &mut VecDeque<Want>,
    cx: &Sending<'_>,
) -> Result<u64, ClientError> {
    let Sending { share, ids, observer, answers, outcomes, shared, sparse, bases } = cx;
    let sparse = *sparse;
    let (share, ids, observer): (&[Job], &[usize], &dyn Observer) = (share, ids, *observer);
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(w) = queue.pop_front() {
        let job = &share[w.i as usize];
        let sig = w.basis.as_ref().and_then(|_| bases.lock().expect("bases").remove(&w.i));
        // A delta's file is read whole to cut it (under 1 MiB).
        bytes += if sig.is_some() { job.size } else { job.size.min(SMALL_BODY + 1) };
        batch.push((w, job.clone(), sig));
        if bytes >= READ_AHEAD || batch.len() >= TREE_PART_ENTRIES {
            break;
        }
    }
    let shared = (*shared).clone();
    let opened: Vec<Opened> = spawn_blocking(move || {
        let mut dir = None;
        batch
            .into_iter()
            .map(|(w, job, sig)| {
                let opened = open_one(&job, &w, (shared.as_deref(), &mut dir), (sparse, sig.as_deref()));
                (w.i, opened)
            })
            .collect()
    })
    .await
    .map_err(join_err)?;
    let mut sent = 0;
    for (i, opened) in opened {
        let job = &share[i as usize];
        let id = ids[i as usize];
        let sender = match opened {
            Ok(Prepared::Whole(sender)) => *sender,
            Ok(Prepared::Delta { file, plan, from }) => {
                observer.started(id, job);
                send_delta(out, (i, job, file), (plan, from), |p| observer.progress(id, job, p), answers).await?;
                sent += 1;
                continue;
            }
            Err(e) => {
                // Not sent: the server reports it wanted and not sent.
                observer.finished(id, job, &Err(clone_error(&e)));
                outcomes.lock().expect("outcomes").done(i as usize, Err(e));
                continue;
            }
        };
        observer.started(id, job);
        let from = sender.start();
        out.feed_head(&TreeFile {
            len: sender.body_len(),
            i,
            offset: from,
            size: job.size,
            mtime: job.mtime,
            mode: job.mode,
            mtime_ns: None,
            holes: sender.holes(),
            delta: false,
        })?;
        let size = job.size;
        let mut report = |done| observer.progress(id, job, Progress { size, resumed: from, done });
        let hash = match sender.send(out.body(), &mut report).await {
            Ok(Some(hash)) => hash,
            Ok(None) => return Err(local_err(&job.local)(std::io::Error::other("no hash"))),
            Err(SendError::File(source)) => return Err(ClientError::Local { path: job.local.clone(), source }),
            Err(SendError::Wire(e)) => return Err(e.into()),
        };
        let hex = hash.to_hex().to_string();
        out.feed(&Checksum { blake3: hex.clone() }, &[]).await?;
        answers.lock().expect("answers").on_sent(i, from, hex, 0);
        sent += 1;
    }
    out.body().flush().await?;
    Ok(sent)
}

/// Sends file `i` of the share as a delta: its head, the ops `plan` makes
/// from `from`, its checksum.
async fn send_delta(
    out: &mut crate::session::Outbound<'_, crate::session::ClientSide>,
    (i, job, file): (u64, &Job, std::fs::File),
    (plan, from): (crate::session::delta::Plan, u64),
    mut progress: impl FnMut(Progress) + Send,
    answers: &Mutex<PutAnswers>,
) -> Result<(), ClientError> {
    use crate::session::delta::{self as dt, DeltaFailed};
    let size = job.size;
    let head = TreeFile {
        len: 0,
        i,
        offset: from,
        size,
        mtime: job.mtime,
        mode: job.mode,
        mtime_ns: None,
        holes: None,
        delta: true,
    };
    out.feed(&head, &[]).await?;
    let mut report = |done| progress(Progress { size, resumed: from, done });
    let sent = match dt::send_ops(out, file, size, plan, from, &mut report).await {
        Ok(sent) => sent,
        Err(DeltaFailed::Wire(e)) => return Err(e.into()),
        // The head promised the file: the stream cannot go on.
        Err(e) => return Err(ClientError::Local { path: job.local.clone(), source: std::io::Error::other(e) }),
    };
    let hex = sent.hash.to_hex().to_string();
    out.feed(&Checksum { blake3: hex.clone() }, &[]).await?;
    answers.lock().expect("answers").on_sent(i, from, hex, sent.matched);
    Ok(())
}

/// Opens a job's file to send from the offset the receiver offered, if it
/// is the start of this file: as ops against `theirs`, the server's older
/// version, where that pays, else whole. Blocking.
fn open_one(
    job: &Job,
    w: &Want,
    (shared, dir): (Option<&crate::session::SharedReads>, &mut Option<super::job::KeptDir>),
    (sparse, theirs): (bool, Option<&crate::delta::Signature>),
) -> Result<Prepared, ClientError> {
    let (local, size) = (&job.local, job.size);
    let mut file = job.open_local_in(dir).map_err(local_err(local))?;
    let meta = file.metadata().map_err(local_err(local))?;
    if let Some((kind, why)) = crate::services::files::not_regular(&meta) {
        return Err(ClientError::Local { path: local.clone(), source: std::io::Error::new(kind, why) });
    }
    if meta.len() != size || crate::services::files::mtime(&meta) != job.mtime {
        let why = std::io::Error::other("changed since the copy was planned; run it again");
        return Err(ClientError::Local { path: local.clone(), source: why });
    }
    if let Some(theirs) = theirs {
        if let Some((plan, _)) = crate::session::delta::plan_against(&file, size, theirs) {
            let from = match w.prefix_blake3.as_deref() {
                Some(prefix) if w.offset > 0 && w.offset < size => {
                    let ours = crate::services::files::hash_prefix(&mut file, w.offset).map_err(local_err(local))?;
                    if ours.finalize().to_hex().as_str() == prefix {
                        w.offset
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            return Ok(Prepared::Delta { file, plan, from });
        }
    }
    let mut sender = Sender::resume(file, size, w.offset, w.prefix_blake3.as_deref(), Unproven::StartOver)
        .map_err(local_err(local))?;
    if sparse {
        sender.find_holes().map_err(local_err(local))?;
    }
    if let Some(reads) = shared {
        sender.share(reads).map_err(local_err(local))?;
    }
    Ok(Prepared::Whole(Box::new(sender)))
}

/// A copy of an error for an observer (errors are not `Clone`).
fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Remote { code, message } => ClientError::Remote { code: *code, message: message.clone() },
        ClientError::Local { path, source } => {
            ClientError::Local { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
        ClientError::LocalExists(p) => ClientError::LocalExists(p.clone()),
        other => ClientError::Wire(wire::Error::Io(std::io::Error::other(other.to_string()))),
    }
}

/// Where a download's small files go: each job's directory (beneath the
/// destination, by descriptor), kept open while files of it come.
struct Local {
    /// The jobs of the files in the batch being committed.
    jobs: HashMap<usize, Job>,
    dirs: HashMap<PathBuf, Arc<OwnedFd>>,
    /// Where what the files replace is kept.
    backup: Option<Arc<LocalBackup>>,
    /// What is done with the files' owners and extended attributes.
    applying: crate::services::attrs::Applying,
    names: crate::services::attrs::Names,
}

impl Place for Local {
    type Error = std::io::Error;

    fn resolve(&mut self, key: &str) -> Result<(Arc<OwnedFd>, OsString, Option<Guard>), std::io::Error> {
        let i: usize = key.parse().map_err(std::io::Error::other)?;
        let job = self.jobs.get(&i).ok_or_else(|| std::io::Error::other("not in this batch"))?;
        let parent = job.local.parent().unwrap_or(Path::new(".")).to_owned();
        if let Some(dir) = self.dirs.get(&parent) {
            let name = job.local.file_name().unwrap_or_default().to_owned();
            return Ok((dir.clone(), name, None));
        }
        let (dir, name) = job.local_parent()?;
        let dir = Arc::new(dir);
        if self.dirs.len() >= 64 {
            self.dirs.clear();
        }
        self.dirs.insert(parent, dir.clone());
        Ok((dir, name, None))
    }

    fn keep(&mut self, key: &str, at: (&OwnedFd, &std::ffi::OsStr)) -> Result<(), std::io::Error> {
        let i: usize = key.parse().map_err(std::io::Error::other)?;
        let job = self.jobs.get(&i).ok_or_else(|| std::io::Error::other("not in this batch"))?;
        match &self.backup {
            Some(backup) => backup.keep(&job.local, at, false).map(drop),
            None => Ok(()),
        }
    }

    fn attrs(&mut self, file: &std::fs::File, had: Had, attrs: &Attrs) -> std::io::Result<()> {
        crate::services::attrs::apply_having(file, Some(had.owner), attrs, self.applying, &mut self.names)
    }
}

/// What a download offers for each file: the bytes of a partial file it
/// holds and their hash, and whether a partial file stands for it at all
/// (an empty one, or one longer than the file, is not offered, but the
/// file takes its place). The partial file is opened from its directory's
/// descriptor without following a link. Blocking.
///
/// With `deltas`, also the signature of each older version held under a
/// job's name that a delta in the stream may be built from
/// ([`in_stream_delta`]), within the bound of one `wants` frame.
#[allow(clippy::type_complexity)]
fn offers(jobs: &[Job], deltas: bool) -> Vec<((u64, Option<String>, bool), Option<crate::delta::Signature>)> {
    let mut last: Option<(PathBuf, Option<OwnedFd>, Option<HashSet<OsString>>)> = None;
    let mut entries = 0u64;
    jobs.iter()
        .enumerate()
        .map(|(k, j)| {
            let partial = partial_offer(j, k, jobs, &mut last);
            let room = crate::session::delta::TREE_SIGNATURE_ENTRIES - entries;
            let sig = match &last {
                Some((_, Some(dir), _)) if deltas && in_stream_delta(j) && room > 0 => {
                    older_version(dir, j, room).filter(|sig| sig.entries.len() as u64 <= room)
                }
                _ => None,
            };
            entries += sig.as_ref().map_or(0, |sig| sig.entries.len() as u64);
            (partial, sig)
        })
        .collect()
}

/// The signature of the older version of `j` held in `dir` (by
/// descriptor, no link followed), cut as its length and the new file's
/// say, if one is worth building from. Blocking.
fn older_version(dir: &OwnedFd, j: &Job, room: u64) -> Option<crate::delta::Signature> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let name = j.local.file_name()?;
    let file = std::fs::File::from(rustix::fs::openat(dir, name, flags, rustix::fs::Mode::empty()).ok()?);
    let meta = file.metadata().ok()?;
    let len = meta.len();
    if !meta.is_file() || !crate::session::delta::worth(len, j.size) {
        return None;
    }
    let layout = crate::delta::Layout::for_sizes(len, j.size);
    // Not read at all if its signature cannot fit what the frame has left.
    if crate::session::delta::least_entries(layout, len) > room {
        return None;
    }
    crate::session::delta::index_only(&file, len, layout).ok()
}

/// The bytes of the partial file of `jobs[k]` and their hash, and whether
/// one stands for it; `last` keeps the directory of the previous job.
/// Blocking.
#[allow(clippy::type_complexity)]
fn partial_offer(
    j: &Job,
    k: usize,
    jobs: &[Job],
    last: &mut Option<(PathBuf, Option<OwnedFd>, Option<HashSet<OsString>>)>,
) -> (u64, Option<String>, bool) {
    let parent = j.local.parent().unwrap_or(Path::new("."));
    if last.as_ref().is_none_or(|(p, ..)| p != parent) {
        let dir = j.local_parent().ok().map(|(dir, _)| dir);
        // The files of this directory that follow in a row.
        let here = jobs[k..].iter().take_while(|j| j.local.parent().unwrap_or(Path::new(".")) == parent);
        let partials = dir.as_ref().and_then(|dir| partials_in(dir, here.count()));
        *last = Some((parent.to_owned(), dir, partials));
    }
    let Some((_, Some(dir), partials)) = &*last else { return (0, None, false) };
    let part = partial_name(j.local.file_name().unwrap_or_default());
    if partials.as_ref().is_some_and(|p| !p.contains(&part)) {
        return (0, None, false);
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(dir, part.as_os_str(), flags, rustix::fs::Mode::empty()) else {
        return (0, None, false);
    };
    let mut file = std::fs::File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() && m.len() > 0 && m.len() <= j.size => {
            match crate::services::files::hash_prefix(&mut file, m.len()) {
                Ok(h) => (m.len(), Some(h.finalize().to_hex().to_string()), true),
                Err(_) => (0, None, true),
            }
        }
        Ok(m) => (0, None, m.is_file()),
        Err(_) => (0, None, true),
    }
}

/// The names of the partial files in `dir`, read once for the `files`
/// files wanted in it rather than looked up one by one: `None` (look
/// each up) for a few files, or where the directory holds many more
/// entries than that (reading it all would cost more than the lookups).
fn partials_in(dir: &OwnedFd, files: usize) -> Option<HashSet<OsString>> {
    /// Files in a directory from which it is read whole.
    const READ_FROM: usize = 16;
    /// Entries read per file wanted, at most.
    const ENTRIES_PER_FILE: usize = 32;
    if files < READ_FROM {
        return None;
    }
    let mut budget = files.saturating_mul(ENTRIES_PER_FILE);
    let mut found = HashSet::new();
    for item in rustix::fs::Dir::read_from(dir).ok()? {
        let item = item.ok()?;
        budget = budget.checked_sub(1)?;
        let name = item.file_name().to_bytes();
        if is_partial_name(name) {
            found.insert(std::ffi::OsStr::from_bytes(name).to_owned());
        }
    }
    Some(found)
}

/// Fetches `share` with `tree_get`. `Err` with [`ErrorCode::UnknownType`]
/// before anything moved: the server has no streamed transfer.
pub(super) async fn get(
    client: &mut Client,
    share: &[Job],
    (how, deltas): (&TransferOptions, bool),
    observer: &dyn Observer,
    ids: &[usize],
) -> Result<Outcomes, ClientError> {
    let force = how.force;
    let delta = deltas && share.iter().any(in_stream_delta);
    client.session.send(&TreeGet { path: String::new(), sparse: true, delta }, &[]).await?;
    let ready: TreeReady = client.answer().await?;
    // Signatures only to a server that said it takes them.
    let deltas = delta && ready.delta;
    let mut outcomes = Outcomes::new(share.len());
    let (reader, mut out) = client.session.halves();
    // The files a partial file stands for (the writer finds them before
    // the server sends them).
    let partials = Mutex::new(HashSet::new());
    // The files whose older version was offered as a basis, and its
    // length then.
    let bases = Mutex::new(HashMap::new());
    let writer = async {
        let frames = crate::proto::frames(share.iter().map(|j| crate::proto::entry_weight(&j.remote, None)));
        for range in frames {
            let (first, chunk) = (range.start, &share[range]);
            let jobs = chunk.to_vec();
            let offered = spawn_blocking(move || offers(&jobs, deltas)).await.map_err(join_err)?;
            let mut signatures = Vec::new();
            let send = {
                let mut standing = partials.lock().expect("partials poisoned");
                let mut based = bases.lock().expect("bases poisoned");
                chunk
                    .iter()
                    .zip(offered)
                    .enumerate()
                    .map(|(k, (j, ((offset, prefix_blake3, partial), sig)))| {
                        let i = (first + k) as u64;
                        if partial {
                            standing.insert(i);
                        }
                        let basis = sig.map(|sig| {
                            based.insert(i, sig.len);
                            let basis = crate::session::delta::basis_of(&sig, None, None);
                            signatures.push(sig);
                            basis
                        });
                        Want { i, path: normal(&j.remote), offset, prefix_blake3, basis }
                    })
                    .collect()
            };
            let list = WantList { send, ..WantList::default() };
            let body = json(&list)?;
            out.feed(&Wants { len: body.len() as u64, count: list.send.len() as u64 }, &body).await?;
            // The signatures right behind, in the list's order.
            for sig in &signatures {
                crate::session::delta::feed_signature(&mut out, sig).await?;
            }
            out.body().flush().await?;
        }
        out.send(&WantsEnd { count: share.len() as u64 }, &[]).await?;
        Ok::<(), ClientError>(())
    };
    let reading = async {
        let mut state = GetState::new(share.len());
        let mut landing = Landing {
            batch: Batch::new(),
            place: Some(Local {
                jobs: HashMap::new(),
                dirs: HashMap::new(),
                backup: how.local_backup.clone(),
                applying: how.applying,
                names: crate::services::attrs::Names::new(),
            }),
            held: HashMap::new(),
        };
        loop {
            let Some((frame, _)) = reader.read_head::<TreeGetOutput>().await? else { return Err(ClientError::Closed) };
            let head = match state.on_frame(frame)? {
                GetStep::File(head) => head,
                GetStep::Skip(i, why) => {
                    let failed = Err(why);
                    observer.finished(ids[i], &share[i], &failed);
                    outcomes.done(i, failed);
                    continue;
                }
                GetStep::Done => return landing.commit(share, ids, observer, &mut outcomes).await,
                GetStep::Checksum(_) => unreachable!("a checksum is asked for after a file's body only"),
            };
            let (i, size) = (head.i as usize, head.size);
            let (job, id) = (&share[i], ids[i]);
            observer.started(id, job);
            let replace = match (force || job.replace, &how.local_backup) {
                (true, Some(_)) => Replace::Keeping(head.i.to_string()),
                (replace, _) => Replace::from(replace),
            };
            let fresh = !partials.lock().expect("partials poisoned").remove(&head.i);
            let basis = if head.delta { bases.lock().expect("bases poisoned").remove(&head.i) } else { None };
            if head.delta && basis.is_none() {
                return Err(unexpected("a delta only of a file we offered an older version of", head.i));
            }
            let how = (replace, fresh, basis);
            if let Err(failed) = receive_one(reader, &mut state, head, job, id, observer, how, &mut landing).await? {
                observer.finished(id, job, &Err(clone_error(&failed)));
                outcomes.done(i, Err(failed));
                continue;
            }
            if landing.batch.is_full() || size > SMALL_BODY {
                landing.commit(share, ids, observer, &mut outcomes).await?;
            }
        }
    };
    let result = tokio::try_join!(writer, reading);
    if result.is_err() {
        client.session.abandon().await;
    }
    match result {
        Ok(_) => outcomes.fail_unreported(),
        Err(e) => outcomes.fail_the_rest(&e),
    }
    Ok(outcomes)
}

type Reader = crate::wire::FrameReader<crate::transport::BoxRead>;

/// Receives the body of the file `head` announced and its checksum (the
/// frame [`GetState`] checks), and puts the file in `landing`'s batch:
/// `Ok(Err)` when this file failed and the transfer goes on (a checksum
/// mismatch), `Err` when the stream cannot.
#[allow(clippy::too_many_arguments)]
async fn receive_one(
    reader: &mut Reader,
    state: &mut GetState,
    head: TreeFile,
    job: &Job,
    id: usize,
    observer: &dyn Observer,
    (replace, fresh, basis): (Replace, bool, Option<u64>),
    landing: &mut Landing,
) -> Result<Result<(), ClientError>, ClientError> {
    let TreeFile { len, i, offset, size, mtime, mode, mtime_ns, holes, .. } = head;
    let mode = received_mode(if mode == 0 { 0o666 } else { mode });
    let mtime = (mtime != 0 || mtime_ns.is_some()).then(|| crate::services::files::Stamp::from_wire(mtime, mtime_ns));
    let mismatch = |expected, got| ClientError::ChecksumMismatch { path: job.remote.clone(), expected, got };
    if let Some(old_len) = basis {
        let mut at = Progress { size, resumed: offset, done: 0 };
        let mut report = |n: u64| {
            at.done = n.saturating_sub(offset);
            observer.progress(id, job, at);
        };
        let (built, matched) = match receive_delta(reader, job, (offset, size), old_len, &mut report).await? {
            Ok(built) => built,
            Err(failed) => {
                let expected = checksum(reader, state).await?;
                return Ok(Err(match failed {
                    ClientError::ChecksumMismatch { got, .. } => mismatch(expected, got),
                    other => other,
                }));
            }
        };
        let expected = checksum(reader, state).await?;
        let received = match built.verify(&expected) {
            Ok(r) => r,
            Err(got) => return Ok(Err(mismatch(expected, got))),
        };
        let received = match mtime {
            Some(t) => received.with_mtime(t),
            None => received,
        };
        landing.held.insert(i as usize, (offset, matched));
        landing.batch.push_received(i, received, mode, replace, None);
        landing.batch.with_attrs(job.attrs.clone());
        return Ok(Ok(()));
    }
    if offset == 0 && size <= SMALL_BODY && holes.is_none() {
        let body = reader.read_body(len).await?;
        let expected = checksum(reader, state).await?;
        let hash = blake3::hash(&body);
        if hash.to_hex().as_str() != expected {
            return Ok(Err(mismatch(expected, hash.to_hex().to_string())));
        }
        landing.held.insert(i as usize, (0, 0));
        landing.batch.push_body(i, i.to_string(), body.to_vec(), hash, (mode, mtime), replace, fresh);
        landing.batch.with_attrs(job.attrs.clone());
        return Ok(Ok(()));
    }
    let j = job.clone();
    let mut receiver = spawn_blocking(move || {
        let (dir, name) = j.local_parent()?;
        Receiver::open(dir, &name)
    })
    .await
    .map_err(join_err)?
    .map_err(local_err(&job.local))?;
    if !receiver.agree(offset).map_err(local_err(&job.local))? {
        return Err(unexpected("a file from our offset or 0", offset));
    }
    if let Err(why) = receiver.with_holes(holes, size) {
        return Err(unexpected("holes within the file", why));
    }
    let mut at = Progress { size, resumed: offset, done: 0 };
    let mut report = |n| {
        at.done = n;
        observer.progress(id, job, at);
    };
    let received = match receiver.receive(&mut *reader, &mut report).await {
        Ok(received) => received,
        Err(ReceiveError::Wire(e, _)) => return Err(e.into()),
        // The rest of the body has nowhere to go: the stream stops here.
        Err(ReceiveError::Write(e, _)) => return Err(local_err(&job.local)(e)),
    };
    let expected = checksum(reader, state).await?;
    let received = match received.verify(&expected) {
        Ok(r) => r,
        Err(got) => return Ok(Err(mismatch(expected, got))),
    };
    let received = match mtime {
        Some(t) => received.with_mtime(t),
        None => received,
    };
    landing.held.insert(i as usize, (offset, 0));
    landing.batch.push_received(i, received, mode, replace, None);
    landing.batch.with_attrs(job.attrs.clone());
    Ok(Ok(()))
}

/// Builds a file of `size` bytes sent as `delta` frames from `offset`,
/// in its partial file, from the older version under its name (`old_len`
/// bytes when its signature was sent), opened again by descriptor:
/// `Ok(Err)` if that version changed meanwhile (a checksum mismatch: the
/// ops were read past; the file is to be fetched whole) or the partial
/// file could not be written, else the file built and the bytes copied
/// from the older version. `Err` when the stream cannot go on.
async fn receive_delta(
    reader: &mut Reader,
    job: &Job,
    (offset, size): (u64, u64),
    old_len: u64,
    report: &mut (dyn FnMut(u64) + Send),
) -> Result<Result<(Received, u64), ClientError>, ClientError> {
    use crate::session::delta::{self as dt, DeltaFailed};
    let j = job.clone();
    let (mut receiver, old) = spawn_blocking(move || {
        let (dir, name) = j.local_parent()?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let old = match rustix::fs::openat(&dir, name.as_os_str(), flags, rustix::fs::Mode::empty()) {
            Ok(fd) => {
                let file = std::fs::File::from(fd);
                match file.metadata() {
                    Ok(m) if m.is_file() && m.len() == old_len => Ok(file),
                    _ => Err(std::io::Error::other("it changed since its signature was sent")),
                }
            }
            Err(e) => Err(e.into()),
        };
        Ok::<_, std::io::Error>((Receiver::open(dir, &name)?, old))
    })
    .await
    .map_err(join_err)?
    .map_err(local_err(&job.local))?;
    if !receiver.agree(offset).map_err(local_err(&job.local))? {
        return Err(unexpected("a file from our offset or 0", offset));
    }
    let patch = dt::Patch::new(receiver, old, old_len, size);
    // A write that fails fails this file alone.
    let patch = patch.deferring_write_errors();
    let never = tokio_util::sync::CancellationToken::new();
    let patch = match dt::receive_ops_from(reader, (&never, dt::Patience::default()), patch, report).await {
        Ok(patch) => patch,
        // Cut: the partial file keeps what was built, for a resume.
        Err((DeltaFailed::Wire(e), _)) => return Err(e.into()),
        Err((DeltaFailed::Closed, _)) => return Err(ClientError::Closed),
        Err((DeltaFailed::Bad(e), patch)) => {
            if let Some(patch) = patch {
                patch.discard();
            }
            return Err(unexpected("ops that fit the files", e));
        }
        Err((e, _)) => return Err(local_err(&job.local)(std::io::Error::other(e))),
    };
    let matched = patch.copied();
    Ok(match patch.finish() {
        Ok(built) => Ok((built, matched)),
        Err(DeltaFailed::Io(e)) => Err(local_err(&job.local)(e)),
        Err(e) => {
            let got = format!("(not built: {e})");
            Err(ClientError::ChecksumMismatch { path: job.remote.clone(), expected: String::new(), got })
        }
    })
}

/// The checksum frame due after a file's body.
async fn checksum(reader: &mut Reader, state: &mut GetState) -> Result<String, ClientError> {
    let Some((frame, _)) = reader.read_head::<TreeGetOutput>().await? else { return Err(ClientError::Closed) };
    match state.on_frame(frame)? {
        GetStep::Checksum(blake3) => Ok(blake3),
        other => Err(unexpected("checksum", format!("{other:?}"))),
    }
}

/// Where a download's files gather before they are committed.
struct Landing {
    batch: Batch,
    /// Put back after each commit.
    place: Option<Local>,
    /// The files in the batch, and the bytes of each resumed and built
    /// from an older version.
    held: HashMap<usize, (u64, u64)>,
}

impl Landing {
    /// Commits the batch on this thread (the files are local and the
    /// batch bounded), reporting each file.
    async fn commit(
        &mut self,
        share: &[Job],
        ids: &[usize],
        observer: &dyn Observer,
        outcomes: &mut Outcomes,
    ) -> Result<(), ClientError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.batch);
        let mut p = self.place.take().expect("put back after each commit");
        // Only this batch's paths go to the committing thread.
        p.jobs = self.held.keys().map(|&i| (i, share[i].clone())).collect();
        let (results, p) = spawn_blocking(move || (b.commit(&mut p), p)).await.map_err(join_err)?;
        self.place = Some(p);
        for (i, result) in results {
            let i = i as usize;
            let job = &share[i];
            let done = match result {
                Ok((_, hash)) => {
                    let (resumed, matched) = self.held.get(&i).copied().unwrap_or_default();
                    Ok(Transfer { size: job.size, resumed, blake3: hash.to_hex().to_string(), matched })
                }
                Err(CommitError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ClientError::LocalExists(job.local.clone()))
                }
                Err(CommitError::Io(e) | CommitError::Place(e)) => Err(local_err(&job.local)(e)),
            };
            self.held.remove(&i);
            observer.finished(ids[i], job, &done);
            outcomes.done(i, done);
        }
        Ok(())
    }
}

/// The next frame of a `tree_put`'s answers; an error frame as the error.
async fn next_put_frame(
    reader: &mut crate::wire::FrameReader<crate::transport::BoxRead>,
) -> Result<TreePutOutput, ClientError> {
    match reader.read_head::<TreePutOutput>().await? {
        Some((TreePutOutput::ErrorFrame(e), _)) => Err(ClientError::from(e)),
        Some((frame, _)) => Ok(frame),
        None => Err(ClientError::Closed),
    }
}

/// Applies entries without data on the server (a `tree_put` with `meta`,
/// PROTOCOL.md §4.6.3.2): every frame sent at once, the answers read
/// beside. Returns, for each entry, `None` if applied (or already so) or
/// why not; every entry fails alike if the server does not take them (an
/// older server: nothing is sent).
pub(super) async fn put_meta(
    client: &mut Client,
    entries: &[ManifestEntry],
    backup: Option<&crate::proto::Backup>,
    covers: crate::services::attrs::Wanted,
) -> Result<Vec<Option<ClientError>>, ClientError> {
    let (asked, backup) = (backup.is_some(), backup.cloned());
    let (xattrs, acls) = (covers.xattrs, covers.acls);
    let put = TreePut { path: String::new(), force: false, meta: true, backup, xattrs, acls, delta: false };
    client.session.send(&put, &[]).await?;
    let older = || ClientError::Remote {
        code: crate::proto::ErrorCode::UnknownType,
        message: "the server is older than links in trees (upgrade it to keep them)".into(),
    };
    // An older server: its directories keep the attributes they have (as
    // before), and each link fails, named.
    let as_before = |entries: &[ManifestEntry]| -> Vec<Option<ClientError>> {
        entries.iter().map(|e| (e.kind != crate::proto::Kind::Dir).then(older)).collect()
    };
    let ready = match client.answer::<TreeReady>().await {
        Ok(TreeReady { backup: false, .. }) if asked => {
            return Ok(entries.iter().map(|_| Some(ClientError::NoBackups)).collect())
        }
        Ok(ready) => ready,
        Err(ClientError::Remote { code: crate::proto::ErrorCode::UnknownType, .. }) => return Ok(as_before(entries)),
        Err(e) => return Err(e),
    };
    let meta = ready.meta;
    let mut outcome: Vec<Option<ClientError>> =
        if meta { (0..entries.len()).map(|_| None).collect() } else { as_before(entries) };
    // What the server keeps, sent; special files it cannot make, left out
    // (named, not failed).
    let mut sent_as = Vec::new();
    let mut sendable = Vec::new();
    for (n, e) in entries.iter().enumerate().filter(|_| meta) {
        if e.kind == crate::proto::Kind::Other && !ready.specials {
            outcome[n] = Some(ClientError::NotKept("a special file (kept only by a server running as root)"));
            continue;
        }
        sent_as.push(n);
        sendable.push(ManifestEntry { attrs: fit_attrs(&e.attrs, &ready), ..e.clone() });
    }
    let weight = |e: &ManifestEntry| {
        let link = e.target.as_ref().or(e.link.as_ref()).map_or(0, String::len);
        crate::proto::entry_weight(&e.path, e.attrs.as_deref()) + link
    };
    let mut frames = Vec::new();
    for range in crate::proto::frames(sendable.iter().map(weight)) {
        let chunk = &sendable[range.clone()];
        let body = json(&chunk)?;
        frames.push((range, body));
    }
    // Each frame goes once the one before is answered (a frame of a
    // thousand entries may keep a slow server busy a while: the next one
    // does not wait in the connection meanwhile), the end of the pass
    // right behind the last, the answers read beside the writing: one
    // round trip for a pass of one frame, and no deadlock however many
    // refusals come back.
    let answered = tokio::sync::Semaphore::new(1);
    let (reader, mut out) = client.session.halves();
    let write = async {
        for (range, body) in &frames {
            let room = match answered.try_acquire() {
                Ok(room) => room,
                Err(_) => {
                    out.body().flush().await?;
                    answered.acquire().await.map_err(|_| ClientError::Closed)?
                }
            };
            room.forget();
            out.feed(&Manifest { len: body.len() as u64, count: range.len() as u64 }, body).await?;
        }
        out.feed(&crate::proto::ManifestEnd { count: sendable.len() as u64 }, &[]).await?;
        out.feed(&crate::proto::TreeEnd { files: 0 }, &[]).await?;
        out.body().flush().await.map_err(ClientError::from)
    };
    let read = async {
        for (range, _) in &frames {
            let list: WantList = match next_put_frame(reader).await? {
                TreePutOutput::Wants(_) => read_json(reader).await?,
                other => return Err(unexpected("wants", other.kind())),
            };
            if !list.send.is_empty() || list.count() != range.len() {
                return Err(unexpected("every entry applied, kept or refused", format!("{list:?}")));
            }
            for failed in list.refused {
                let at = usize::try_from(failed.i).ok().and_then(|i| i.checked_sub(range.start));
                let Some(at) = at.filter(|&i| i < range.len()) else {
                    return Err(unexpected("an index of this frame", failed.i));
                };
                outcome[sent_as[range.start + at]] =
                    Some(ClientError::Remote { code: failed.code, message: failed.message });
            }
            answered.add_permits(1);
        }
        match next_put_frame(reader).await? {
            TreePutOutput::WantsEnd(_) => {}
            other => return Err(unexpected("wants_end", other.kind())),
        }
        loop {
            match next_put_frame(reader).await? {
                TreePutOutput::TreeDone(_) => return Ok(()),
                TreePutOutput::Committed(_) => {
                    let _: CommitList = read_json(reader).await?;
                }
                other => return Err(unexpected("tree_done", other.kind())),
            }
        }
    };
    tokio::try_join!(write, read)?;
    Ok(outcome)
}
