//! File requests: list, stat, get, put. The data path runs file I/O and
//! hashing on a blocking thread and socket I/O on the async side, joined by
//! a small bounded channel, so reading, hashing and sending overlap.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;

use tokio::task::spawn_blocking;

use super::conn::{Context, Reader, Writer};
use crate::proto::{ErrorCode, Message};
use crate::services::files::{self, commit, hash_prefix, partial_path, Listing, Sandbox};
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
    let stat = blocking(move || {
        let real = sb.existing(&path)?;
        let meta = fs::metadata(&real).map_err(|e| Refusal::io(&path, &e))?;
        let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(files::entry(name, &meta))
    })
    .await;
    match stat {
        Ok(entry) => writer.send(&Message::StatReply { entry }, &[]).await,
        Err(r) => refuse(writer, r).await,
    }
}

struct Download {
    file: File,
    real: std::path::PathBuf,
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
    let shown = path.clone();
    let cache = hashes.clone();
    let plan = blocking(move || {
        let real = sb.existing(&path)?;
        let mut file = files::open_to_send(&real).map_err(|e| Refusal::io(&path, &e))?;
        let meta = file.metadata().map_err(|e| Refusal::io(&path, &e))?;
        match files::not_regular(&meta) {
            Some((std::io::ErrorKind::IsADirectory, why)) => {
                return Err(Refusal::new(ErrorCode::IsADirectory, format!("{path}: {why}")))
            }
            Some((_, why)) => return Err(Refusal::new(ErrorCode::BadPath, format!("{path}: {why}"))),
            None => {}
        }
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
        let cached = cache.get(&real, version);
        let hasher = if cached.is_some() { None } else { Some(hasher) };
        let (mtime, mode) = (files::mtime(&meta), meta.permissions().mode() & 0o7777);
        Ok(Download { file, real, version, size, start, cached, hasher, mtime, mode })
    })
    .await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(r) => return refuse(writer, r).await,
    };
    let Download { file, real, version, size, start, cached, hasher, mtime, mode } = plan;
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
            if std::fs::metadata(&real).is_ok_and(|m| files::Version::of(&m) == version) {
                hashes.put(&real, version, hash);
            }
            hash
        }
        (None, None) => return Err(Error::Io(std::io::Error::other(format!("{shown}: read ended early")))),
    };
    writer.send(&Message::Checksum { blake3: hash.to_hex().to_string() }, &[]).await
}

struct Upload {
    target: std::path::PathBuf,
    partial: std::path::PathBuf,
    file: File,
    held: u64,
    hasher: blake3::Hasher,
    _claim: files::Claim,
}

/// Receives an upload into the partial file beside the target, resuming
/// what an interrupted upload left there; verifies the whole-file checksum,
/// syncs, and renames into place.
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
    let shown = path.clone();
    let plan = blocking(move || {
        let target = sb.for_write(&path)?;
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                return Err(Refusal::new(ErrorCode::IsADirectory, format!("{path}: is a directory on the server")))
            }
            Ok(_) if !force => {
                return Err(Refusal::new(
                    ErrorCode::Exists,
                    format!("{path}: already exists on the server (use --force to replace it)"),
                ))
            }
            _ => {}
        }
        let claim = sb.claim(&target, &path)?;
        let partial = partial_path(&target);
        let mut file = files::open_partial(&partial).map_err(|e| Refusal::io(&path, &e))?;
        let mut held = file.metadata().map_err(|e| Refusal::io(&path, &e))?.len();
        if held > size {
            file.set_len(0).map_err(|e| Refusal::io(&path, &e))?;
            held = 0;
        }
        // A full disk is refused now, before a byte of the body is sent.
        if let Err(e) = files::check_room(&file, held, size) {
            let _ = fs::remove_file(&partial);
            return Err(Refusal::io(&path, &e));
        }
        let hasher = hash_prefix(&mut file, held).map_err(|e| Refusal::io(&path, &e))?;
        Ok(Upload { target, partial, file, held, hasher, _claim: claim })
    })
    .await;
    let mut up = match plan {
        Ok(up) => up,
        Err(r) => return refuse(writer, r).await,
    };
    let prefix = (up.held > 0).then(|| up.hasher.clone().finalize().to_hex().to_string());
    writer.send(&Message::PutReady { offset: up.held, prefix_blake3: prefix }, &[]).await?;

    let (len, from) = match reader.read_head::<Message>().await? {
        Some((Message::PutData { len, offset }, _)) => (len, offset),
        Some((other, _)) => {
            let msg = format!("expected put_data after put_ready, got {}", other.kind());
            return refuse(writer, Refusal::new(ErrorCode::BadRequest, msg)).await;
        }
        None => return Ok(()),
    };
    if (from != 0 && from != up.held) || from.checked_add(len) != Some(size) {
        let msg = format!(
            "put_data covers bytes {from}..{} but {} are held of a {size}-byte file",
            from.saturating_add(len),
            up.held
        );
        reader.skip_body().await?;
        return refuse(writer, Refusal::new(ErrorCode::BadRequest, msg)).await;
    }
    if from == 0 && up.held > 0 {
        // The client's file does not start with what we hold: start over.
        up.file.set_len(0)?;
        up.hasher = blake3::Hasher::new();
    }

    let Upload { target, partial, file, hasher, _claim, .. } = up;
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
                let _ = fs::remove_file(&partial);
            }
            refuse(writer, refusal).await?;
            reader.skip_body().await?;
            if let Some((other, _)) = reader.read_head::<Message>().await? {
                if !matches!(other, Message::Checksum { .. }) {
                    let msg = format!("expected checksum after put_data, got {}", other.kind());
                    return refuse(writer, Refusal::new(ErrorCode::BadRequest, msg)).await;
                }
            }
            return Ok(());
        }
    };

    let claimed = match reader.read_head::<Message>().await? {
        Some((Message::Checksum { blake3 }, _)) => blake3,
        Some((other, _)) => {
            let msg = format!("expected checksum after put_data, got {}", other.kind());
            return refuse(writer, Refusal::new(ErrorCode::BadRequest, msg)).await;
        }
        None => return Ok(()),
    };
    if hash.to_hex().as_str() != claimed {
        let _ = fs::remove_file(&partial);
        let msg = format!(
            "{shown}: checksum mismatch: the server received data hashing to {}, the client's file hashes to {claimed}; nothing was kept",
            hash.to_hex()
        );
        return refuse(writer, Refusal::new(ErrorCode::ChecksumMismatch, msg)).await;
    }
    let cache = hashes.clone();
    let done = blocking(move || {
        commit(&file, mode, &partial, &target).map_err(|e| Refusal::io(&shown, &e))?;
        // The verified hash of what is now in place: a later get of it
        // need not hash it again.
        if let Ok(meta) = fs::metadata(&target) {
            cache.put(&target, files::Version::of(&meta), hash);
        }
        Ok(())
    })
    .await;
    match done {
        Ok(()) => writer.send(&Message::PutDone { size }, &[]).await,
        Err(r) => refuse(writer, r).await,
    }
}
