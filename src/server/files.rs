//! File requests: list, stat, get, put. The data path runs file I/O and
//! hashing on a blocking thread and socket I/O on the async side, joined by
//! a small bounded channel, so reading, hashing and sending overlap.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;

use tokio::task::spawn_blocking;

use super::conn::{Context, Reader, Writer};
use crate::proto::{ErrorCode, Message};
use crate::services::files::{self, hash_prefix, Listing, Sandbox};
use crate::services::root::Partial;
use crate::services::Refusal;
use crate::transfer::{receive_body, send_body, SendError};
use crate::wire::{Error, MAX_BUFFERED_BODY};

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Refusal> + Send + 'static) -> Result<T, Refusal> {
    spawn_blocking(f).await.unwrap_or_else(|e| Err(Refusal::new(ErrorCode::Internal, format!("file task failed: {e}"))))
}

pub(super) async fn refuse(writer: &mut Writer, r: Refusal) -> Result<(), Error> {
    tracing::info!(code = %r.code, "refused: {}", crate::text::printable(&r.message));
    writer.send(&Message::error(r.code, r.message), &[]).await
}

pub(super) async fn list(sandbox: &Sandbox, path: String, listing: Listing, writer: &mut Writer) -> Result<(), Error> {
    let sb = sandbox.clone();
    let listed = blocking(move || {
        let entries = sb.list(&path, listing)?;
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
        Ok(body) => writer.send(&Message::ListReply { len: body.len() as u64 }, &body).await,
        Err(r) => refuse(writer, r).await,
    }
}

pub(super) async fn mkdir(sandbox: &Sandbox, path: String, writer: &mut Writer) -> Result<(), Error> {
    let sb = sandbox.clone();
    match blocking(move || sb.mkdir(&path)).await {
        Ok(created) => writer.send(&Message::MkdirReply { created }, &[]).await,
        Err(r) => refuse(writer, r).await,
    }
}

pub(super) async fn stat(sandbox: &Sandbox, path: String, writer: &mut Writer) -> Result<(), Error> {
    let sb = sandbox.clone();
    match blocking(move || sb.stat(&path)).await {
        Ok(entry) => writer.send(&Message::StatReply { entry }, &[]).await,
        Err(r) => refuse(writer, r).await,
    }
}

struct Download {
    file: File,
    /// A second descriptor of the file, to see after sending whether it
    /// changed meanwhile.
    check: File,
    version: files::Version,
    size: u64,
    start: u64,
    /// The whole-file hash, if the cache has it for this version.
    cached: Option<blake3::Hash>,
    /// Otherwise the hasher, fed with the skipped prefix.
    hasher: Option<blake3::Hasher>,
    mtime: i64,
    mode: u32,
}

/// Streams a file from `offset` (if the client's prefix matches), then the
/// checksum of the whole file.
pub(super) async fn get(
    ctx: &Context,
    path: String,
    offset: u64,
    prefix: Option<String>,
    writer: &mut Writer,
) -> Result<(), Error> {
    let (sb, hashes) = (ctx.sandbox.clone(), &ctx.hashes);
    let shown = files::shown(&path);
    let cache = hashes.clone();
    let plan = blocking(move || {
        let (mut file, meta) = sb.open(&path)?;
        let path = files::shown(&path);
        match files::not_regular(&meta) {
            Some((std::io::ErrorKind::IsADirectory, why)) => {
                return Err(Refusal::new(ErrorCode::IsADirectory, format!("{path}: {why}")))
            }
            Some((_, why)) => return Err(Refusal::new(ErrorCode::BadPath, format!("{path}: {why}"))),
            None => {}
        }
        let check = file.try_clone().map_err(|e| Refusal::io(&path, &e))?;
        let size = meta.len();
        let mut start = if offset <= size { offset } else { 0 };
        let mut hasher = blake3::Hasher::new();
        if start > 0 {
            hasher = hash_prefix(&mut file, start).map_err(|e| Refusal::io(&path, &e))?;
            if prefix.is_some_and(|p| p != hasher.clone().finalize().to_hex().as_str()) {
                // The client's partial copy is not the start of this file.
                start = 0;
                hasher = blake3::Hasher::new();
            }
        }
        let version = files::Version::of(&meta);
        let cached = cache.get(version);
        let hasher = if cached.is_some() { None } else { Some(hasher) };
        let (mtime, mode) = (files::mtime(&meta), meta.permissions().mode() & 0o7777);
        Ok(Download { file, check, version, size, start, cached, hasher, mtime, mode })
    })
    .await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(r) => return refuse(writer, r).await,
    };
    let Download { file, check, version, size, start, cached, hasher, mtime, mode } = plan;
    writer.feed_head(&Message::File { len: size - start, size, offset: start, mtime, mode })?;

    let computed = match send_body(writer, file, start, hasher, &mut |_| {}).await {
        Ok(computed) => computed,
        // The frame promised `size - start` bytes and cannot deliver
        // them: the connection must close.
        Err(SendError::File(e)) => {
            return Err(Error::Io(std::io::Error::new(e.kind(), format!("{shown}: read failed mid-transfer: {e}"))))
        }
        Err(SendError::Wire(e)) => return Err(e),
    };
    let hash = match (cached, computed) {
        (Some(hash), _) => hash,
        (None, Some(hash)) => {
            // Cache it only if the file did not change while it was read.
            if check.metadata().is_ok_and(|m| files::Version::of(&m) == version) {
                hashes.put(version, hash);
            }
            hash
        }
        (None, None) => return Err(Error::Io(std::io::Error::other(format!("{shown}: read ended early")))),
    };
    writer.send(&Message::Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}

struct Upload {
    partial: Partial,
    held: u64,
    hasher: blake3::Hasher,
    _claim: files::Claim,
}

/// Claims the path, then checks what is there, then opens the partial
/// file: in that order, so that two uploads of one new path cannot both
/// see it free (the commit refuses to replace as well).
fn plan_upload(sb: &Sandbox, path: &str, size: u64, force: bool) -> Result<Upload, Refusal> {
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
    let mut partial = Partial::open(dir, &name).map_err(|e| Refusal::io(&path, &e))?;
    let mut held = partial.held().map_err(|e| Refusal::io(&path, &e))?;
    if held > size {
        partial.file().set_len(0).map_err(|e| Refusal::io(&path, &e))?;
        held = 0;
    }
    // A full disk is refused now, before a byte of the body is sent.
    if let Err(e) = files::check_room(partial.file(), held, size) {
        partial.discard();
        return Err(Refusal::io(&path, &e));
    }
    let hasher = hash_prefix(partial.file_mut(), held).map_err(|e| Refusal::io(&path, &e))?;
    Ok(Upload { partial, held, hasher, _claim: claim })
}

fn exists(path: &str) -> Refusal {
    Refusal::new(ErrorCode::Exists, format!("{path}: already exists on the server (use --force to replace it)"))
}

/// Ends a put whose client broke the protocol: says why, then closes the
/// connection (what the client sends next cannot be framed with
/// certainty, and a body it declared may be endless).
async fn refuse_and_close(writer: &mut Writer, msg: String) -> Result<(), Error> {
    refuse(writer, Refusal::new(ErrorCode::BadRequest, msg.clone())).await?;
    Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, msg)))
}

/// Receives an upload into the partial file beside the target, resuming
/// what an interrupted upload left there; verifies the whole-file checksum,
/// syncs, and renames into place (never over an existing file without
/// `force`).
pub(super) async fn put(
    ctx: &Context,
    path: String,
    size: u64,
    force: bool,
    mode: Option<u32>,
    reader: &mut Reader,
    writer: &mut Writer,
) -> Result<(), Error> {
    let (sb, hashes) = (ctx.sandbox.clone(), &ctx.hashes);
    let shown = files::shown(&path);
    let plan = blocking(move || plan_upload(&sb, &path, size, force)).await;
    let mut up = match plan {
        Ok(up) => up,
        Err(r) => return refuse(writer, r).await,
    };
    let prefix = (up.held > 0).then(|| up.hasher.clone().finalize().to_hex().to_string());
    writer.send(&Message::PutReady { offset: up.held, prefix_blake3: prefix }, &[]).await?;

    let (len, from) = match reader.read_head::<Message>().await {
        Ok(Some((Message::PutData { len, offset }, _))) => (len, offset),
        Ok(Some((other, _))) => {
            return refuse_and_close(writer, format!("expected put_data after put_ready, got {}", other.kind())).await
        }
        Ok(None) => return Ok(()),
        Err(e) if e.is_recoverable() => return refuse_and_close(writer, format!("bad put_data: {e}")).await,
        Err(e) => return Err(e),
    };
    if (from != 0 && from != up.held) || from.checked_add(len) != Some(size) {
        // Answered at once, the body unread: it may be 2^63 bytes long.
        let msg = format!(
            "put_data covers bytes {from}..{} but {} are held of a {size}-byte file",
            from.saturating_add(len),
            up.held
        );
        return refuse_and_close(writer, msg).await;
    }
    if from == 0 && up.held > 0 {
        // The client's file does not start with what we hold: start over.
        up.partial.file().set_len(0)?;
        up.hasher = blake3::Hasher::new();
    }

    let Upload { partial, hasher, _claim, .. } = up;
    let (file, name) = partial.take_file();
    // A cut connection returns here and leaves the partial file for a
    // later resume.
    let written = receive_body(reader, files::at(file, from)?, hasher, &mut |_| {}).await?;
    let (file, hash) = match written {
        Ok(done) => done,
        Err(e) => {
            // Answer at once: a client that listens while it sends (ours
            // does) stops here and closes the connection, instead of
            // sending the rest of a file that has nowhere to go. One that
            // sends on gets this as its answer after the checksum.
            let refusal = Refusal::io(&shown, &e);
            if refusal.code == ErrorCode::DiskFull {
                name.discard();
            }
            refuse(writer, refusal).await?;
            reader.skip_body().await?;
            if let Some((other, _)) = reader.read_head::<Message>().await? {
                if !matches!(other, Message::Checksum { .. }) {
                    let msg = format!("expected checksum after put_data, got {}", other.kind());
                    return refuse_and_close(writer, msg).await;
                }
            }
            return Ok(());
        }
    };
    let partial = name.rejoin(file);

    let claimed = match reader.read_head::<Message>().await {
        Ok(Some((Message::Checksum { blake3 }, _))) => blake3,
        Ok(Some((other, _))) => {
            return refuse_and_close(writer, format!("expected checksum after put_data, got {}", other.kind())).await
        }
        Ok(None) => return Ok(()),
        Err(e) if e.is_recoverable() => return refuse_and_close(writer, format!("bad checksum: {e}")).await,
        Err(e) => return Err(e),
    };
    if hash.to_hex().as_str() != claimed {
        partial.discard();
        let msg = format!(
            "{shown}: checksum mismatch: the server received data hashing to {}, the client's file hashes to {claimed}; nothing was kept",
            hash.to_hex()
        );
        return refuse(writer, Refusal::new(ErrorCode::ChecksumMismatch, msg)).await;
    }
    let cache = hashes.clone();
    let done = blocking(move || {
        let mode = files::received_mode(mode.unwrap_or(0o666));
        let file = partial.commit(mode, force).map_err(|e| match e.kind() {
            // Another upload of this path finished first.
            std::io::ErrorKind::AlreadyExists => exists(&shown),
            _ => Refusal::io(&shown, &e),
        })?;
        // The verified hash of what is now in place: a later get of it
        // need not hash it again.
        if let Ok(meta) = file.metadata() {
            cache.put(files::Version::of(&meta), hash);
        }
        Ok(())
    })
    .await;
    match done {
        Ok(()) => writer.send(&Message::PutDone { size }, &[]).await,
        Err(r) => refuse(writer, r).await,
    }
}
