//! Files as frame bodies, hashed on the way: [`send_body`] (what the
//! [`Sender`](super::Sender) runs) and [`receive_body`] (what the
//! [`Receiver`](super::Receiver) runs).
//!
//! On a plaintext connection a sent body goes out with `sendfile(2)` (see
//! [`crate::transport::send_file`]), straight from the page cache, while
//! another thread hashes the file through a small cached buffer; the
//! sender's CPU then goes to hashing alone, not to copying each byte twice.
//! Over TLS every byte must pass through user space to be encrypted: a
//! blocking thread reads and hashes into a ring of four 256 KiB buffers
//! while the async side writes the previous ones. A received body moves
//! through the same kind of ring: the socket fills a buffer, a blocking
//! thread writes and hashes it.

use std::fs::File;
use std::io::{self, Read, Seek};

use tokio::sync::mpsc;
use tokio::task::{spawn_blocking, JoinError};

use crate::transport::BoxWrite;
use crate::wire::{Error, FrameReader, FrameWriter};

/// Where a received body comes from: the current frame's body, or the
/// bytes a legacy upload announced.
pub trait BodySource {
    /// Body bytes still to come.
    fn body_left(&self) -> u64;
    /// Appends up to the spare capacity of `buf` of the body (at least one
    /// byte unless it is all read). What arrived before an error is kept
    /// in `buf`.
    fn read_body_into(&mut self, buf: &mut Vec<u8>) -> impl std::future::Future<Output = Result<(), Error>> + Send;
}

impl<R: tokio::io::AsyncRead + Unpin + Send> BodySource for FrameReader<R> {
    fn body_left(&self) -> u64 {
        FrameReader::body_left(self)
    }

    fn read_body_into(&mut self, buf: &mut Vec<u8>) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        FrameReader::read_body_into(self, buf)
    }
}

/// A body source that ends with `Interrupted` once `cut` is cancelled
/// (the server's drain deadline): the chunk being filled is kept, as a
/// cut connection's is, where dropping the read would lose it.
pub struct UntilCut<'a, B> {
    /// Where the body comes from.
    pub src: &'a mut B,
    /// What ends it early.
    pub cut: &'a tokio_util::sync::CancellationToken,
}

impl<B: BodySource + Send> BodySource for UntilCut<'_, B> {
    fn body_left(&self) -> u64 {
        self.src.body_left()
    }

    async fn read_body_into(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        tokio::select! {
            biased;
            read = self.src.read_body_into(buf) => read,
            // The read is cancel-safe: what it appended stays in `buf`.
            () = self.cut.cancelled() => {
                Err(Error::Io(io::Error::new(io::ErrorKind::Interrupted, "cut off at the drain deadline")))
            }
        }
    }
}

/// Why a body could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Reading the file failed (it may have shrunk).
    #[error("reading the file failed: {0}")]
    File(#[source] io::Error),
    /// The connection failed.
    #[error(transparent)]
    Wire(Error),
}

fn joined(e: JoinError) -> SendError {
    SendError::Wire(Error::Io(io::Error::other(e)))
}

/// Sends the rest of the body `writer` has started (with
/// [`FrameWriter::feed_head`]) from `file` at `start`. Hashes what is sent
/// into `hasher` (fed with whatever precedes `start`) and returns the
/// whole-file hash; with no hasher (the hash is known) nothing is hashed.
/// `progress` gets the bytes of the body sent so far, now and then.
///
/// On an error the body is incomplete and the connection out of step: it
/// must be closed.
///
/// # Errors
///
/// [`SendError::File`] for read errors, [`SendError::Wire`] for the
/// connection's.
pub async fn send_body(
    writer: &mut FrameWriter<BoxWrite>,
    file: File,
    start: u64,
    hasher: Option<blake3::Hasher>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<blake3::Hash>, SendError> {
    #[cfg(target_os = "linux")]
    if let Some(sock) = writer.get_ref().socket() {
        match sock.try_clone_to_owned() {
            Ok(sock) => return zero_copy(writer, sock, file, start, hasher, progress).await,
            // Out of descriptors, say: the copying path needs none.
            Err(e) => tracing::debug!("no zero-copy send ({e}); copying instead"),
        }
    }
    buffered(writer, file, start, hasher, progress).await
}

/// Sends the rest of the body as [`send_body`] does, its chunks taken
/// from (or read into) the ring `shared` keeps for every copy sending
/// this file, hashing each as it goes.
///
/// # Errors
///
/// As [`send_body`]; a file shorter than promised is
/// [`SendError::File`].
pub(crate) async fn send_shared(
    writer: &mut FrameWriter<BoxWrite>,
    file: File,
    start: u64,
    mut hasher: Option<blake3::Hasher>,
    shared: super::shared::SharedReader,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<blake3::Hash>, SendError> {
    let file = std::sync::Arc::new(file);
    let end = start + writer.body_left();
    let (mut at, mut done) = (start, 0);
    while at < end {
        let (from, chunk) = shared.chunk(&file, at).await.map_err(SendError::File)?;
        let (lo, hi) = ((at - from) as usize, chunk.len().min((end - from) as usize));
        if hi <= lo {
            return Err(SendError::File(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was read")));
        }
        let piece = chunk.slice(lo..hi);
        if let Some(h) = hasher.as_mut() {
            h.update(&piece);
        }
        writer.write_body(&piece).await.map_err(SendError::Wire)?;
        at += piece.len() as u64;
        done += piece.len() as u64;
        progress(done);
    }
    Ok(hasher.map(|h| h.finalize()))
}

/// A zero-copy send reports its progress at most once per this many bytes.
#[cfg(target_os = "linux")]
const PROGRESS_STEP: u64 = 1 << 20;

#[cfg(target_os = "linux")]
async fn zero_copy(
    writer: &mut FrameWriter<BoxWrite>,
    sock: std::os::fd::OwnedFd,
    file: File,
    start: u64,
    hasher: Option<blake3::Hasher>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<blake3::Hash>, SendError> {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use crate::services::files::hash_range;
    use crate::transport::send_file;

    let stall = writer.io_timeout();
    let len = writer.take_body().await.map_err(SendError::Wire)?;
    // Both threads stop if this future is dropped (the connection ends).
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let file = Arc::new(file);
    let hashing = hasher.map(|hasher| {
        let (file, cancel) = (file.clone(), cancel.clone());
        spawn_blocking(move || hash_range(&file, start, len, hasher, &cancel))
    });
    // The sending thread publishes how far it got; no timer is needed.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
    let mut sending = {
        let cancel = cancel.clone();
        spawn_blocking(move || {
            let (mut done, mut told) = (0, 0);
            send_file(sock.as_fd(), &file, start, len, stall, &cancel, |n| {
                done += n;
                if done - told >= PROGRESS_STEP {
                    told = done;
                    done_tx.send_replace(done);
                }
            })
        })
    };
    let sent = loop {
        tokio::select! {
            sent = &mut sending => break sent.map_err(joined)?,
            Ok(()) = done_rx.changed() => progress(*done_rx.borrow_and_update()),
        }
    };
    if let Err(e) = sent {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => SendError::File(e),
            _ if e.raw_os_error() == Some(libc::EIO) => SendError::File(e),
            io::ErrorKind::TimedOut => SendError::Wire(Error::Stalled(stall.unwrap_or_default())),
            _ => SendError::Wire(Error::Io(e)),
        });
    }
    writer.get_ref().sent_aside(len);
    progress(len);
    match hashing {
        None => Ok(None),
        Some(hashing) => hashing.await.map_err(joined)?.map(Some).map_err(SendError::File),
    }
}

async fn buffered(
    writer: &mut FrameWriter<BoxWrite>,
    file: File,
    start: u64,
    hasher: Option<blake3::Hasher>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<blake3::Hash>, SendError> {
    let len = writer.body_left();
    let hashed = hasher.is_some();
    // Buffers go round as on the receiving side: read and hashed on the
    // blocking thread, written here, and back.
    let (full_tx, mut full_rx) = mpsc::channel::<io::Result<Vec<u8>>>(BUFS);
    let (empty_tx, mut empty_rx) = buffer_ring();
    let reading = spawn_blocking(move || {
        let (mut file, mut hasher, mut left) = (file, hasher, len);
        let send = |item| full_tx.blocking_send(item).is_ok();
        if let Err(e) = file.seek(io::SeekFrom::Start(start)) {
            send(Err(e));
            return None;
        }
        while left > 0 {
            let mut buf = empty_rx.blocking_recv()?;
            buf.clear();
            let want = (buf.capacity() as u64).min(left);
            // read_to_end fills spare capacity without zeroing it first.
            match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => {
                    send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was read")));
                    return None;
                }
                Ok(n) => left -= n as u64,
                Err(e) => {
                    send(Err(e));
                    return None;
                }
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&buf);
            }
            if !send(Ok(buf)) {
                return None; // the connection is gone
            }
        }
        hasher.map(|h| h.finalize())
    });
    let mut done = 0;
    while let Some(buf) = full_rx.recv().await {
        let buf = buf.map_err(SendError::File)?;
        writer.write_body(&buf).await.map_err(SendError::Wire)?;
        done += buf.len() as u64;
        progress(done);
        // The reader may be done with the buffers already.
        let _ = empty_tx.send(buf).await;
    }
    match reading.await.map_err(joined)? {
        None if hashed => Err(SendError::File(io::Error::other("the file could not be read to its end"))),
        hash => Ok(hash),
    }
}

/// How many buffers a body moves through, and their size: few and small,
/// so that they stay in the CPU cache between the read that fills them and
/// the write and hash that empty them.
const BUFS: usize = 4;
const BUF: usize = 256 * 1024;

/// [`BUFS`] empty buffers of [`BUF`] bytes' capacity, ready to be taken
/// from the receiver and given back through the sender.
fn buffer_ring() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(BUFS);
    for _ in 0..BUFS {
        tx.try_send(Vec::with_capacity(BUF)).expect("the channel has room for every buffer");
    }
    (tx, rx)
}

/// Receives the rest of the current body into `dst`: the async side reads
/// from the connection into a few reused buffers while a blocking thread
/// writes each to `dst` and hashes it into `hasher` (fed with whatever
/// came before). `progress` gets the body bytes received so far.
///
/// Returns what the blocking thread reports: `dst` and the whole-file hash,
/// or its first write error. After a write error the rest of the body is
/// left unread, so a disk that filled up is reported at once, not after
/// the rest has arrived: skip it (`FrameReader::skip_body`) to answer in
/// step, or close the connection.
///
/// # Errors
///
/// The connection's (the body is then incomplete; what was written is in
/// `dst`, e.g. a partial file kept for a resume).
pub async fn receive_body<B, W>(
    reader: &mut B,
    dst: W,
    hasher: blake3::Hasher,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<io::Result<(W, blake3::Hash)>, Error>
where
    B: BodySource,
    W: io::Write + Send + 'static,
{
    let (full_tx, mut full_rx) = mpsc::channel::<Vec<u8>>(BUFS);
    let (empty_tx, mut empty_rx) = buffer_ring();
    let sink = spawn_blocking(move || {
        let (mut dst, mut hasher) = (dst, hasher);
        while let Some(mut buf) = full_rx.blocking_recv() {
            dst.write_all(&buf)?;
            hasher.update(&buf);
            buf.clear();
            // Once the reading side is done, the buffer is just dropped.
            let _ = empty_tx.blocking_send(buf);
        }
        dst.flush()?;
        Ok((dst, hasher.finalize()))
    });
    let mut done = 0;
    let received = async {
        while reader.body_left() > 0 {
            // None: the blocking thread failed and let go of the buffers.
            let Some(mut buf) = empty_rx.recv().await else { break };
            let read = reader.read_body_into(&mut buf).await;
            done += buf.len() as u64;
            // What arrived before an error is kept too (for a resume).
            if full_tx.send(buf).await.is_err() {
                break;
            }
            read?;
            progress(done);
        }
        Ok::<_, Error>(())
    }
    .await;
    drop(full_tx);
    let written = sink.await.map_err(|e| Error::Io(io::Error::other(e)))?;
    received?;
    Ok(written)
}
