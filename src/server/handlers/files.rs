//! File requests: list, stat, mkdir, get, put. The transfers run through
//! the session layer's [`Sender`] and [`Receiver`]; what is here is the
//! server's side of each: the sandbox, the claim on a path being written,
//! the hash cache, and the answers.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;

use super::super::context::Context;
use super::blocking;
use crate::proto::{
    Checksum, ErrorCode, FileReply, Get, List, ListReply, Mkdir, MkdirReply, Put, PutData, PutDone, PutReady, Remove,
    RemoveReply, Rename, RenameReply, Stat, StatReply,
};
use crate::services::files::{self, Listing, Sandbox};
use crate::services::Refusal;
use crate::session::{
    cut_off_by, ReceiveError, Received, Receiver, SendError, Sender, ServerSide, Session, Unproven, UntilCut,
};
use crate::wire::{Error, MAX_BUFFERED_BODY};

type S = Session<ServerSide>;

pub(in crate::server) async fn list(s: &mut S, ctx: &Context, request: List) -> Result<(), Error> {
    let List { path, recursive, dirs, blake3, partial } = request;
    let (sb, hashes) = (ctx.sandbox().clone(), ctx.hashes.clone());
    let listed = blocking(move || {
        let listing = if partial { Listing::Partials } else { Listing::of(recursive, dirs) };
        let mut entries = sb.list(&path, listing)?;
        if blake3 {
            add_hashes(&sb, &hashes, &path, &mut entries)?;
        }
        let body = serde_json::to_vec(&entries).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        if body.len() as u64 > MAX_BUFFERED_BODY {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("{path}: listing of {} entries exceeds {MAX_BUFFERED_BODY} bytes", entries.len()),
            ));
        }
        Ok(body)
    })
    .await;
    match listed {
        Ok(body) => s.send(&ListReply { len: body.len() as u64 }, &body).await,
        Err(r) => s.refuse(r).await,
    }
}

/// Gives each file entry its BLAKE3, from the cache or by reading it (and
/// caching what was read, if the file did not change meanwhile).
fn add_hashes(
    sb: &Sandbox,
    hashes: &files::HashCache,
    path: &str,
    entries: &mut [crate::proto::Entry],
) -> Result<(), Refusal> {
    // A file's own listing names it by its last component: its path is
    // the one listed.
    let listed_a_file = sb.stat(path).is_ok_and(|e| e.kind == crate::proto::Kind::File);
    for e in entries.iter_mut().filter(|e| e.kind == crate::proto::Kind::File) {
        let full = if listed_a_file {
            path.to_owned()
        } else if path.trim_end_matches('/').is_empty() {
            e.name.clone()
        } else {
            format!("{}/{}", path.trim_end_matches('/'), e.name)
        };
        if let Some(hash) = hash_of(sb, hashes, &full)? {
            e.blake3 = Some(hash.to_hex().to_string());
        }
    }
    Ok(())
}

/// The BLAKE3 of the file at `full`, from the cache or by reading it (and
/// caching what was read, if the file did not change meanwhile); `None`
/// if it cannot be opened (gone since it was listed).
pub(super) fn hash_of(sb: &Sandbox, hashes: &files::HashCache, full: &str) -> Result<Option<blake3::Hash>, Refusal> {
    let Ok((mut file, meta)) = sb.open(full) else { return Ok(None) };
    let version = files::Version::of(&meta);
    if let Some(hash) = hashes.get(version) {
        return Ok(Some(hash));
    }
    let hash = files::hash_prefix(&mut file, meta.len()).map_err(|e| Refusal::io(full, &e))?.finalize();
    if file.metadata().is_ok_and(|m| files::Version::of(&m) == version) {
        hashes.put(version, hash);
    }
    Ok(Some(hash))
}

pub(in crate::server) async fn mkdir(s: &mut S, ctx: &Context, request: Mkdir) -> Result<(), Error> {
    let sb = ctx.sandbox().clone();
    let parents = request.parents.unwrap_or(true);
    match blocking(move || sb.mkdir(&request.path, parents)).await {
        Ok(created) => s.send(&MkdirReply { created }, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn remove(s: &mut S, ctx: &Context, request: Remove) -> Result<(), Error> {
    let sb = ctx.sandbox().clone();
    let recursive = request.recursive.unwrap_or(true);
    match blocking(move || sb.remove(&request.path, recursive)).await {
        Ok(removed) => {
            if !removed {
                s.set_outcome("ok: nothing was there".to_owned());
            }
            s.send(&RemoveReply { removed }, &[]).await
        }
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn rename(s: &mut S, ctx: &Context, request: Rename) -> Result<(), Error> {
    let sb = ctx.sandbox().clone();
    let Rename { from, to, force } = request;
    match blocking(move || sb.rename(&from, &to, force)).await {
        Ok(()) => s.send(&RenameReply {}, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

pub(in crate::server) async fn stat(s: &mut S, ctx: &Context, request: Stat) -> Result<(), Error> {
    let sb = ctx.sandbox().clone();
    match blocking(move || sb.stat(&request.path)).await {
        Ok(entry) => s.send(&StatReply { entry }, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

/// A download, decided: where it starts and what is known of its hash.
pub(super) struct Download {
    pub(super) sender: Sender,
    /// Whether the file changed while it was read.
    pub(super) check: Check,
    pub(super) version: files::Version,
    pub(super) head: FileReply,
    /// The whole-file hash, if the cache has it for this version.
    pub(super) cached: Option<blake3::Hash>,
}

/// Opens the file and decides where the body starts (the client's offset,
/// if its prefix is the start of this file).
pub(super) fn plan_download(sb: &Sandbox, ctx_hashes: &files::HashCache, request: Get) -> Result<Download, Refusal> {
    let Get { path, offset, prefix_blake3 } = request;
    let (file, meta) = sb.open(&path)?;
    let path = files::shown(&path);
    match files::not_regular(&meta) {
        Some((std::io::ErrorKind::IsADirectory, why)) => {
            return Err(Refusal::new(ErrorCode::IsADirectory, format!("{path}: {why}")))
        }
        Some((_, why)) => return Err(Refusal::new(ErrorCode::BadPath, format!("{path}: {why}"))),
        None => {}
    }
    let check = Check::Open(file.try_clone().map_err(|e| Refusal::io(&path, &e))?);
    let size = meta.len();
    let mut sender = Sender::resume(file, size, offset, prefix_blake3.as_deref(), Unproven::Trust)
        .map_err(|e| Refusal::io(&path, &e))?;
    let version = files::Version::of(&meta);
    let cached = ctx_hashes.get(version);
    if cached.is_some() {
        sender.hash_known();
    }
    let head = FileReply {
        len: sender.body_len(),
        size,
        offset: sender.start(),
        mtime: files::mtime(&meta),
        mode: meta.permissions().mode() & 0o7777,
    };
    Ok(Download { sender, check, version, head, cached })
}

/// How to tell whether a file sent changed while it was read: its hash is
/// cached only if not.
pub(super) enum Check {
    /// A second descriptor of the file, to look at after sending.
    Open(File),
    /// A small body read whole when it was planned, and its file closed:
    /// whether the file was the version planned right after the read.
    Read(bool),
}

impl Download {
    /// Lets the file go if its body was read whole already (a small one):
    /// what a `tree_get` holds ahead is bodies, never descriptors. Returns
    /// whether it did.
    pub(super) fn close_if_read(&mut self) -> bool {
        if !self.sender.release_file() {
            return false;
        }
        if let Check::Open(file) = &self.check {
            self.check = Check::Read(file.metadata().is_ok_and(|m| files::Version::of(&m) == self.version));
        }
        true
    }
}

/// Streams a file from the agreed offset, then the checksum of the whole
/// file.
pub(in crate::server) async fn get(s: &mut S, ctx: &Context, request: Get) -> Result<(), Error> {
    let shown = files::shown(&request.path);
    let (sb, hashes) = (ctx.sandbox().clone(), ctx.hashes.clone());
    let Download { sender, check, version, head, cached } =
        match blocking(move || plan_download(&sb, &hashes, request)).await {
            Ok(plan) => plan,
            Err(r) => return s.refuse(r).await,
        };
    s.feed_head(&head)?;
    let computed = match sender.send(s.writer(), &mut |_| {}).await {
        Ok(computed) => computed,
        // The frame promised its length and cannot deliver it: the
        // connection must close.
        Err(SendError::File(e)) => {
            return Err(Error::Io(std::io::Error::new(e.kind(), format!("{shown}: read failed mid-transfer: {e}"))))
        }
        Err(SendError::Wire(e)) => return Err(e),
    };
    let hash = settle_hash(ctx, &check, version, cached, computed).map_err(|e| match e {
        Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}"))),
        e => e,
    })?;
    s.send(&Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}

/// The whole-file hash of a file just sent: the cached one, or the one
/// computed while sending (cached now, if the file did not change while
/// it was read).
pub(super) fn settle_hash(
    ctx: &Context,
    check: &Check,
    version: files::Version,
    cached: Option<blake3::Hash>,
    computed: Option<blake3::Hash>,
) -> Result<blake3::Hash, Error> {
    match (cached, computed) {
        (Some(hash), _) => Ok(hash),
        (None, Some(hash)) => {
            let unchanged = match check {
                Check::Open(file) => file.metadata().is_ok_and(|m| files::Version::of(&m) == version),
                Check::Read(unchanged) => *unchanged,
            };
            if unchanged {
                ctx.hashes.put(version, hash);
            }
            Ok(hash)
        }
        (None, None) => Err(Error::Io(std::io::Error::other("read ended early"))),
    }
}

/// An upload, admitted: its receiver, and the claim on the path that
/// keeps a second upload of it out until this one ends.
struct Upload {
    receiver: Receiver,
    _claim: files::Claim,
}

/// Claims the path, then checks what is there, then opens the partial
/// file: in that order, so that two uploads of one new path cannot both
/// see it free (the commit refuses to replace as well).
fn admit_upload(sb: &Sandbox, path: &str, size: u64, force: bool) -> Result<Upload, Refusal> {
    let (dir, name) = sb.for_write(path)?;
    let claim = sb.claim(&dir, &name, path)?;
    let path = files::shown(path);
    match rustix::fs::statat(&dir, name.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
            return Err(Refusal::new(ErrorCode::IsADirectory, format!("{path}: is a directory on the server")))
        }
        Ok(_) if !force => return Err(exists(&path)),
        _ => {}
    }
    let mut receiver = Receiver::open(dir, &name).map_err(|e| Refusal::io(&path, &e))?;
    receiver.fit(size).map_err(|e| Refusal::io(&path, &e))?;
    // A full disk is refused now, before a byte of the body is sent.
    if let Err(e) = receiver.check_room(receiver.held(), size) {
        receiver.discard();
        return Err(Refusal::io(&path, &e));
    }
    Ok(Upload { receiver, _claim: claim })
}

fn exists(path: &str) -> Refusal {
    Refusal::new(ErrorCode::Exists, format!("{path}: already exists on the server"))
}

/// Receives an upload into the partial file beside the target, resuming
/// what an interrupted upload left there; verifies the whole-file checksum,
/// syncs, and renames into place (never over an existing file without
/// `force`).
///
/// The drain deadline is watched here (not by dropping the request): a
/// body cut by it keeps every byte that arrived, as a cut connection's.
pub(in crate::server) async fn put(s: &mut S, ctx: &Context, request: Put) -> Result<(), Error> {
    let Put { path, size, force, mode, mtime } = request;
    let shown = files::shown(&path);
    let sb = ctx.sandbox().clone();
    let cut = s.cut_off().clone();
    let admitted = cut_off_by(&cut, async { Ok(blocking(move || admit_upload(&sb, &path, size, force)).await) });
    let Upload { mut receiver, _claim } = match admitted.await? {
        Ok(up) => up,
        Err(r) => return s.refuse(r).await,
    };
    let (offset, prefix_blake3) = receiver.offer();
    let data = cut_off_by(&cut, async {
        s.send(&PutReady { offset, prefix_blake3 }, &[]).await?;
        read_step::<PutData>(s, "put_data after put_ready").await
    })
    .await;
    let fits = |d: &PutData| d.offset.checked_add(d.len) == Some(size);
    match data {
        Ok(Some(data)) if fits(&data) && receiver.agree(data.offset)? => {}
        other => {
            // No body came into it: a new partial file is not left empty.
            if receiver.held() == 0 {
                receiver.discard();
            }
            return match other {
                Ok(Some(data)) => {
                    // Answered at once, the body unread: it may be 2^63
                    // bytes long.
                    let msg = format!(
                        "put_data covers bytes {}..{} but {offset} are held of a {size}-byte file",
                        data.offset,
                        data.offset.saturating_add(data.len)
                    );
                    s.refuse_and_close(msg).await
                }
                other => other.map(|_| ()),
            };
        }
    }
    let received = match receiver.receive(&mut UntilCut { src: s.reader(), cut: &cut }, &mut |_| {}).await {
        Ok(received) => received,
        // A cut connection leaves the partial file for a later resume.
        Err(ReceiveError::Wire(e, _)) => {
            let why = crate::text::printable(&e.to_string()).into_owned();
            s.set_outcome(format!("cut: {why}; the partial file is kept for a resume"));
            return Err(e);
        }
        Err(ReceiveError::Write(e, _)) => return write_failed(s, Refusal::io(&shown, &e)).await,
    };
    let checksum = cut_off_by(&cut, read_step::<Checksum>(s, "checksum after put_data")).await?;
    let Some(Checksum { blake3: claimed }) = checksum else {
        return Ok(());
    };
    let received = match received.verify(&claimed) {
        Ok(received) => received,
        Err(got) => {
            let msg = format!(
                "{shown}: checksum mismatch: the server received data hashing to {got}, the client's file hashes to {claimed}; nothing was kept"
            );
            return s.refuse(Refusal::new(ErrorCode::ChecksumMismatch, msg)).await;
        }
    };
    let hashes = ctx.hashes.clone();
    match blocking(move || commit_upload(received, &shown, (mode, mtime), force, &hashes)).await {
        Ok(()) => s.send(&PutDone { size }, &[]).await,
        Err(r) => s.refuse(r).await,
    }
}

/// Reads the next step of a put, which must be an `M`. `None`: the client
/// left. A frame that is not the step due ends the connection (what
/// follows it cannot be framed with certainty).
pub(super) async fn read_step<M: crate::wire::FrameHeader>(s: &mut S, due: &str) -> Result<Option<M>, Error> {
    match s.read::<M>().await {
        Ok(Some((m, _))) => Ok(Some(m)),
        Ok(None) => Ok(None),
        Err(Error::Unexpected { kind, .. }) => {
            s.refuse_and_close(format!("expected {due}, got {kind}")).await.map(|()| None)
        }
        Err(e) if e.is_recoverable() => s.refuse_and_close(format!("bad {due}: {e}")).await.map(|()| None),
        Err(e) => Err(e),
    }
}

/// A write of the upload failed. Answered at once: a client that listens
/// while it sends (ours does) stops here and closes the connection,
/// instead of sending the rest of a file that has nowhere to go. One that
/// sends on gets this as its answer, and the rest of its body and its
/// checksum are read and dropped.
pub(super) async fn write_failed(s: &mut S, refusal: Refusal) -> Result<(), Error> {
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

/// Moves a verified upload into place with the client's mode and mtime,
/// and caches its hash: a later get of it need not hash it again.
fn commit_upload(
    received: Received,
    shown: &str,
    (mode, mtime): (Option<u32>, Option<i64>),
    force: bool,
    hashes: &files::HashCache,
) -> Result<(), Refusal> {
    let hash = received.hash();
    let mode = files::received_mode(mode.unwrap_or(0o666));
    // Set before the rename, as `rsync -t` keeps it: never a whole file
    // under its name with another time.
    let received = match mtime {
        Some(mtime) => received.with_mtime(mtime),
        None => received,
    };
    let file = received.commit(mode, force).map_err(|e| match e.kind() {
        // Another upload of this path finished first.
        std::io::ErrorKind::AlreadyExists => exists(shown),
        _ => Refusal::io(shown, &e),
    })?;
    if let Ok(meta) = file.metadata() {
        hashes.put(files::Version::of(&meta), hash);
    }
    Ok(())
}
