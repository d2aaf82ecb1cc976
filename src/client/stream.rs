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
use super::error::ClientError;
use super::files::{join_err, local_err, Progress, Transfer};
use super::job::{Job, Observer};
use crate::proto::{
    Checksum, CommitList, ErrorCode, Manifest, ManifestEnd, ManifestEntry, TreeEnd, TreeFile, TreeGet, TreeGetOutput,
    TreePut, TreePutOutput, TreeReady, Want, WantList, Wants, WantsEnd, TREE_PART_ENTRIES, TREE_PART_MAX,
};
use crate::services::files::received_mode;
use crate::services::root::partial_name;
use crate::session::{
    Batch, CommitError, Guard, Place, ReceiveError, Receiver, SendError, Sender, Unproven, SMALL_BODY,
};
use crate::wire;
use rustix::fs::OFlags;

/// Manifest frames sent and not yet answered, at most.
const IN_FLIGHT_FRAMES: usize = 8;
/// Wanted files queued to send before more manifest goes out: what keeps
/// the server's list of wanted files short.
const QUEUED_WANTS: usize = 4096;
/// Bytes of small files read ahead of sending them.
const READ_AHEAD: u64 = 1024 * 1024;

/// What one streamed request did with its files: totals for the ones
/// copied (a tree of 100,000 files keeps no record per file), and each
/// one that failed or was left out.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    /// Which files have an outcome, by index into the share.
    known: Vec<bool>,
    /// Files copied.
    pub files: usize,
    /// Their bytes sent.
    pub sent: u64,
    /// Their bytes resumed (not sent again).
    pub resumed: u64,
    /// Files that failed, by index, and why.
    pub failed: Vec<(usize, ClientError)>,
    /// Files the receiver had already.
    pub unchanged: usize,
    /// Indices refused as differing and not older.
    pub refused: Vec<usize>,
}

impl Outcomes {
    fn new(len: usize) -> Self {
        Outcomes { known: vec![false; len], ..Outcomes::default() }
    }

    fn ok(&mut self, i: usize, t: &Transfer) {
        self.known[i] = true;
        self.files += 1;
        self.sent += t.size - t.resumed;
        self.resumed += t.resumed;
    }

    fn fail(&mut self, i: usize, e: ClientError) {
        self.known[i] = true;
        self.failed.push((i, e));
    }

    fn done(&mut self, i: usize, r: Result<Transfer, ClientError>) {
        match r {
            Ok(t) => self.ok(i, &t),
            Err(e) => self.fail(i, e),
        }
    }
}

/// `path` with empty and `.` components dropped (`..` is left for the
/// receiver to refuse).
fn normal(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

fn remote_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Remote { code, message }
}

/// Sends `share` with `tree_put`. `Err` with [`ErrorCode::UnknownType`]
/// before anything moved: the server has no streamed transfer.
pub(super) async fn put(
    client: &mut Client,
    share: &[Job],
    force: bool,
    observer: &dyn Observer,
    ids: &[usize],
) -> Result<Outcomes, ClientError> {
    client.session.send(&TreePut { path: String::new(), force }, &[]).await?;
    let TreeReady {} = client.answer().await?;
    let outcomes = Mutex::new(Outcomes::new(share.len()));
    let hashes: Mutex<HashMap<u64, (u64, String)>> = Mutex::new(HashMap::new());
    let (tx, rx) = mpsc::unbounded_channel::<Option<WantList>>();
    let sending =
        Sending { share, ids, observer, hashes: &hashes, outcomes: &outcomes, shared: client.shared_reads.clone() };
    let (reader, mut out) = client.session.halves();

    let writer = async {
        let mut rx = rx;
        let frames: Vec<&[Job]> = share.chunks(TREE_PART_ENTRIES).collect();
        let (mut next, mut answered, mut ended) = (0usize, 0usize, false);
        let mut queue: VecDeque<Want> = VecDeque::new();
        let mut sent = 0u64;
        loop {
            while let Ok(w) = rx.try_recv() {
                match w {
                    Some(w) => {
                        answered += 1;
                        queue.extend(w.send);
                    }
                    None => ended = true,
                }
            }
            if next < frames.len() && next - answered < IN_FLIGHT_FRAMES && queue.len() < QUEUED_WANTS {
                let entries: Vec<ManifestEntry> = frames[next]
                    .iter()
                    .map(|j| ManifestEntry {
                        path: normal(&j.remote),
                        size: j.size,
                        mtime: j.mtime,
                        mode: j.mode,
                        replace: j.replace,
                        blake3: j.blake3.clone(),
                    })
                    .collect();
                let body = serde_json::to_vec(&entries).map_err(|e| wire::Error::Io(std::io::Error::other(e)))?;
                out.send(&Manifest { len: body.len() as u64, count: entries.len() as u64 }, &body).await?;
                next += 1;
                if next == frames.len() {
                    out.send(&ManifestEnd { count: share.len() as u64 }, &[]).await?;
                }
                continue;
            }
            if !queue.is_empty() {
                sent += send_some(&mut out, &mut queue, &sending).await?;
                continue;
            }
            if frames.is_empty() && next == 0 {
                out.send(&ManifestEnd { count: 0 }, &[]).await?;
                next = usize::MAX;
            }
            if ended {
                break;
            }
            match rx.recv().await {
                Some(Some(w)) => {
                    answered += 1;
                    queue.extend(w.send);
                }
                Some(None) => ended = true,
                // The reader stopped: it says why.
                None => return Ok::<(), ClientError>(()),
            }
        }
        out.send(&TreeEnd { files: sent }, &[]).await?;
        Ok(())
    };

    let reading = async {
        let mut offsets: HashMap<u64, u64> = HashMap::new();
        loop {
            let Some((frame, _)) = reader.read_head::<TreePutOutput>().await? else { return Err(ClientError::Closed) };
            match frame {
                TreePutOutput::Wants(_) => {
                    let body = reader.read_body(TREE_PART_MAX).await?;
                    let list: WantList = serde_json::from_slice(&body)
                        .map_err(|e| wire::Error::InvalidField { source: e, body_len: body.len() as u64 })?;
                    let mut o = outcomes.lock().expect("outcomes");
                    for w in &list.send {
                        if w.i as usize >= share.len() {
                            return Err(unexpected("a wanted index within the manifest", w.i));
                        }
                        offsets.insert(w.i, w.offset);
                    }
                    for &i in list.unchanged.iter().filter(|&&i| (i as usize) < share.len()) {
                        o.known[i as usize] = true;
                        o.unchanged += 1;
                    }
                    for f in list.refused.iter().filter(|f| (f.i as usize) < share.len()) {
                        if f.code == ErrorCode::Exists {
                            o.known[f.i as usize] = true;
                            o.refused.push(f.i as usize);
                        } else {
                            o.fail(f.i as usize, remote_error(f.code, f.message.clone()));
                        }
                    }
                    drop(o);
                    let _ = tx.send(Some(list));
                }
                TreePutOutput::WantsEnd(_) => {
                    let _ = tx.send(None);
                }
                TreePutOutput::Committed(_) => {
                    let body = reader.read_body(TREE_PART_MAX).await?;
                    let list: CommitList = serde_json::from_slice(&body)
                        .map_err(|e| wire::Error::InvalidField { source: e, body_len: body.len() as u64 })?;
                    let mut o = outcomes.lock().expect("outcomes");
                    let mut h = hashes.lock().expect("hashes");
                    for i in list.ok.into_iter().filter(|&i| (i as usize) < share.len()) {
                        let job = &share[i as usize];
                        let offered = offsets.remove(&i).unwrap_or(0);
                        let (resumed, blake3) = h.remove(&i).unwrap_or((offered, String::new()));
                        let done = Ok(Transfer { size: job.size, resumed, blake3 });
                        observer.finished(ids[i as usize], job, &done);
                        o.done(i as usize, done);
                    }
                    for f in list.failed.into_iter().filter(|f| (f.i as usize) < share.len()) {
                        offsets.remove(&f.i);
                        h.remove(&f.i);
                        let failed = Err(remote_error(f.code, f.message));
                        observer.finished(ids[f.i as usize], &share[f.i as usize], &failed);
                        o.done(f.i as usize, failed);
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
    if let Err(e) = result {
        fail_the_rest(&mut outcomes, &e);
    }
    Ok(outcomes)
}

/// Every file of the share with no outcome yet fails with (a copy of) `e`.
fn fail_the_rest(outcomes: &mut Outcomes, e: &ClientError) {
    let left: Vec<usize> = outcomes.known.iter().enumerate().filter(|(_, k)| !**k).map(|(i, _)| i).collect();
    for i in left {
        let why = ClientError::Wire(wire::Error::Io(std::io::Error::other(format!("the tree transfer stopped: {e}"))));
        outcomes.fail(i, why);
    }
}

fn unexpected(expected: &'static str, got: impl std::fmt::Display) -> ClientError {
    ClientError::Unexpected { expected, got: got.to_string() }
}

/// A file of the share opened to send, small ones read, or why not.
type Opened = (u64, Result<Sender, ClientError>);

/// What [`send_some`] sends from and reports to.
struct Sending<'a> {
    share: &'a [Job],
    ids: &'a [usize],
    observer: &'a dyn Observer,
    hashes: &'a Mutex<HashMap<u64, (u64, String)>>,
    outcomes: &'a Mutex<Outcomes>,
    shared: Option<Arc<crate::session::SharedReads>>,
}

/// Opens the next wanted files (reading small ones) on a blocking thread,
/// then sends them; returns how many were sent.
async fn send_some(
    out: &mut crate::session::Outbound<'_, crate::session::ClientSide>,
    queue: &mut VecDeque<Want>,
    cx: &Sending<'_>,
) -> Result<u64, ClientError> {
    let Sending { share, ids, observer, hashes, outcomes, shared } = cx;
    let (share, ids, observer): (&[Job], &[usize], &dyn Observer) = (share, ids, *observer);
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(w) = queue.pop_front() {
        let job = &share[w.i as usize];
        bytes += job.size.min(SMALL_BODY + 1);
        batch.push((w, job.clone()));
        if bytes >= READ_AHEAD || batch.len() >= TREE_PART_ENTRIES {
            break;
        }
    }
    let shared = (*shared).clone();
    let opened: Vec<Opened> = spawn_blocking(move || {
        batch
            .into_iter()
            .map(|(w, job)| {
                let opened = open_one(&job, &w, shared.as_deref());
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
            Ok(sender) => sender,
            Err(e) => {
                // Not sent: the server reports it wanted and not sent.
                observer.finished(id, job, &Err(clone_error(&e)));
                outcomes.lock().expect("outcomes").fail(i as usize, e);
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
        hashes.lock().expect("hashes").insert(i, (from, hex));
        sent += 1;
    }
    out.body().flush().await?;
    Ok(sent)
}

/// Opens a job's file to send from the offset the receiver offered, if it
/// is the start of this file. Blocking.
fn open_one(job: &Job, w: &Want, shared: Option<&crate::session::SharedReads>) -> Result<Sender, ClientError> {
    let (local, size) = (&job.local, job.size);
    let file = job.open_local().map_err(local_err(local))?;
    let meta = file.metadata().map_err(local_err(local))?;
    if let Some((kind, why)) = crate::services::files::not_regular(&meta) {
        return Err(ClientError::Local { path: local.clone(), source: std::io::Error::new(kind, why) });
    }
    if meta.len() != size || crate::services::files::mtime(&meta) != job.mtime {
        let why = std::io::Error::other("changed since the copy was planned; run it again");
        return Err(ClientError::Local { path: local.clone(), source: why });
    }
    let mut sender = Sender::resume(file, size, w.offset, w.prefix_blake3.as_deref(), Unproven::StartOver)
        .map_err(local_err(local))?;
    if let Some(reads) = shared {
        sender.share(reads).map_err(local_err(local))?;
    }
    Ok(sender)
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
}

/// What a download offers for each file: the bytes of a partial file it
/// holds, and their hash. The partial file is opened from its directory's
/// descriptor without following a link. Blocking.
fn offers(jobs: &[Job]) -> Vec<(u64, Option<String>)> {
    let mut last: Option<(PathBuf, Option<OwnedFd>)> = None;
    jobs.iter()
        .map(|j| {
            let parent = j.local.parent().unwrap_or(Path::new("."));
            if last.as_ref().is_none_or(|(p, _)| p != parent) {
                last = Some((parent.to_owned(), j.local_parent().ok().map(|(dir, _)| dir)));
            }
            let Some((_, Some(dir))) = &last else { return (0, None) };
            let part = partial_name(j.local.file_name().unwrap_or_default());
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let Ok(fd) = rustix::fs::openat(dir, part.as_os_str(), flags, rustix::fs::Mode::empty()) else {
                return (0, None);
            };
            let mut file = std::fs::File::from(fd);
            match file.metadata() {
                Ok(m) if m.is_file() && m.len() > 0 && m.len() <= j.size => {
                    match crate::services::files::hash_prefix(&mut file, m.len()) {
                        Ok(h) => (m.len(), Some(h.finalize().to_hex().to_string())),
                        Err(_) => (0, None),
                    }
                }
                _ => (0, None),
            }
        })
        .collect()
}

/// Fetches `share` with `tree_get`. `Err` with [`ErrorCode::UnknownType`]
/// before anything moved: the server has no streamed transfer.
pub(super) async fn get(
    client: &mut Client,
    share: &[Job],
    force: bool,
    observer: &dyn Observer,
    ids: &[usize],
) -> Result<Outcomes, ClientError> {
    client.session.send(&TreeGet { path: String::new() }, &[]).await?;
    let TreeReady {} = client.answer().await?;
    let mut outcomes = Outcomes::new(share.len());
    let (reader, mut out) = client.session.halves();
    let writer = async {
        for (n, chunk) in share.chunks(TREE_PART_ENTRIES).enumerate() {
            let jobs = chunk.to_vec();
            let offered = spawn_blocking(move || offers(&jobs)).await.map_err(join_err)?;
            let send = chunk
                .iter()
                .zip(offered)
                .enumerate()
                .map(|(k, (j, (offset, prefix_blake3)))| Want {
                    i: (n * TREE_PART_ENTRIES + k) as u64,
                    path: normal(&j.remote),
                    offset,
                    prefix_blake3,
                })
                .collect();
            let list = WantList { send, ..WantList::default() };
            let body = serde_json::to_vec(&list).map_err(|e| wire::Error::Io(std::io::Error::other(e)))?;
            out.send(&Wants { len: body.len() as u64, count: list.send.len() as u64 }, &body).await?;
        }
        out.send(&WantsEnd { count: share.len() as u64 }, &[]).await?;
        Ok::<(), ClientError>(())
    };
    let reading = async {
        let mut batch = Batch::new();
        let mut place = Some(Local { jobs: HashMap::new(), dirs: HashMap::new() });
        let mut held: HashMap<usize, u64> = HashMap::new();
        loop {
            let Some((frame, _)) = reader.read_head::<TreeGetOutput>().await? else { return Err(ClientError::Closed) };
            let head = match frame {
                TreeGetOutput::TreeFile(head) => head,
                TreeGetOutput::TreeSkip(skip) => {
                    let i = skip.i as usize;
                    if i >= share.len() {
                        return Err(unexpected("a skipped index within the wants", skip.i));
                    }
                    let failed = Err(remote_error(skip.code, skip.message));
                    observer.finished(ids[i], &share[i], &failed);
                    outcomes.done(i, failed);
                    continue;
                }
                TreeGetOutput::TreeDone(_) => {
                    commit(&mut batch, &mut place, share, ids, observer, &mut held, &mut outcomes).await?;
                    return Ok(());
                }
                TreeGetOutput::Checksum(_) => return Err(unexpected("tree_file", "checksum")),
                TreeGetOutput::ErrorFrame(e) => return Err(e.into()),
            };
            let TreeFile { len, i, offset, size, mtime, mode } = head;
            let Some(job) = share.get(i as usize) else { return Err(unexpected("a file index within the wants", i)) };
            let id = ids[i as usize];
            if offset.checked_add(len) != Some(size) {
                return Err(unexpected(
                    "a tree_file whose body is the rest of the file",
                    format!("{offset}+{len} of {size}"),
                ));
            }
            observer.started(id, job);
            let mode = received_mode(if mode == 0 { 0o666 } else { mode });
            let mtime = (mtime != 0).then_some(mtime);
            let replace = force || job.replace;
            if offset == 0 && size <= SMALL_BODY {
                let body = reader.read_body(len).await?;
                let expected = checksum(reader).await?;
                let hash = blake3::hash(&body);
                if hash.to_hex().as_str() != expected {
                    let got = hash.to_hex().to_string();
                    let failed = Err(ClientError::ChecksumMismatch { path: job.remote.clone(), expected, got });
                    observer.finished(id, job, &failed);
                    outcomes.done(i as usize, failed);
                    continue;
                }
                held.insert(i as usize, 0);
                batch.push_body(i, i.to_string(), body.to_vec(), hash, (mode, mtime), replace);
            } else {
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
                let mut at = Progress { size, resumed: offset, done: 0 };
                let received = match receiver
                    .receive(&mut *reader, &mut |n| {
                        at.done = n;
                        observer.progress(id, job, at);
                    })
                    .await
                {
                    Ok(received) => received,
                    Err(ReceiveError::Wire(e, _)) => return Err(e.into()),
                    // The rest of the body has nowhere to go: the stream
                    // stops here.
                    Err(ReceiveError::Write(e, _)) => return Err(local_err(&job.local)(e)),
                };
                let expected = checksum(reader).await?;
                let received = match received.verify(&expected) {
                    Ok(r) => r,
                    Err(got) => {
                        let failed = Err(ClientError::ChecksumMismatch { path: job.remote.clone(), expected, got });
                        observer.finished(id, job, &failed);
                        outcomes.done(i as usize, failed);
                        continue;
                    }
                };
                let received = match mtime {
                    Some(t) => received.with_mtime(t),
                    None => received,
                };
                held.insert(i as usize, offset);
                batch.push_received(i, received, mode, replace, None);
            }
            if batch.is_full() || size > SMALL_BODY {
                commit(&mut batch, &mut place, share, ids, observer, &mut held, &mut outcomes).await?;
            }
        }
    };
    let result = tokio::try_join!(writer, reading);
    if result.is_err() {
        client.session.abandon().await;
    }
    if let Err(e) = result {
        fail_the_rest(&mut outcomes, &e);
    }
    Ok(outcomes)
}

async fn checksum(reader: &mut crate::wire::FrameReader<crate::transport::BoxRead>) -> Result<String, ClientError> {
    match reader.read_head::<TreeGetOutput>().await? {
        Some((TreeGetOutput::Checksum(Checksum { blake3 }), _)) => Ok(blake3),
        Some((other, _)) => Err(unexpected("checksum", other.kind())),
        None => Err(ClientError::Closed),
    }
}

/// Commits a download's batch on this thread (the files are local and the
/// batch bounded), reporting each file.
async fn commit(
    batch: &mut Batch,
    place: &mut Option<Local>,
    share: &[Job],
    ids: &[usize],
    observer: &dyn Observer,
    held: &mut HashMap<usize, u64>,
    outcomes: &mut Outcomes,
) -> Result<(), ClientError> {
    if batch.is_empty() {
        return Ok(());
    }
    let b = std::mem::take(batch);
    let mut p = place.take().expect("put back after each commit");
    // Only this batch's paths go to the committing thread.
    p.jobs = held.keys().map(|&i| (i, share[i].clone())).collect();
    let (results, p) = spawn_blocking(move || (b.commit(&mut p), p)).await.map_err(join_err)?;
    *place = Some(p);
    for (i, result) in results {
        let i = i as usize;
        let job = &share[i];
        let done = match result {
            Ok((_, hash)) => Ok(Transfer {
                size: job.size,
                resumed: held.get(&i).copied().unwrap_or(0),
                blake3: hash.to_hex().to_string(),
            }),
            Err(CommitError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(ClientError::LocalExists(job.local.clone()))
            }
            Err(CommitError::Io(e) | CommitError::Place(e)) => Err(local_err(&job.local)(e)),
        };
        held.remove(&i);
        observer.finished(ids[i], job, &done);
        outcomes.done(i, done);
    }
    Ok(())
}
