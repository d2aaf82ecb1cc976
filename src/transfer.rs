//! Files as frame bodies, hashed on the way, shared by the server and the
//! client: [`send_body`] (server `get`, client `put`) and [`receive_body`]
//! (client `get`, server `put`).
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

use crate::transport::{BoxRead, BoxWrite};
use crate::wire::{Error, FrameReader, FrameWriter};

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

/// Receives the rest of the current body into `file` from its current
/// position, as [`receive_body`] does, and returns the same.
///
/// On a plaintext connection on Linux a large body goes from the socket to
/// the file with `splice(2)` ([`crate::transport::splice_to_file`]): the
/// kernel copies each byte once, from the socket's pages into the file's,
/// and the hash reads the bytes just written through a read-only map of
/// the file, without copying them into user space.
///
/// # Errors
///
/// As [`receive_body`].
pub async fn receive_file(
    reader: &mut FrameReader<BoxRead>,
    file: File,
    hasher: blake3::Hasher,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<io::Result<(File, blake3::Hash)>, Error> {
    #[cfg(target_os = "linux")]
    if reader.body_left() >= SPLICE_MIN {
        if let Some(sock) = reader.get_ref().socket() {
            match sock.try_clone_to_owned() {
                Ok(sock) => return spliced(reader, sock, file, hasher, progress).await,
                Err(e) => tracing::debug!("no zero-copy receive ({e}); copying instead"),
            }
        }
    }
    receive_body(reader, file, hasher, progress).await
}

/// Bodies smaller than this are copied: a pipe and a map are not worth
/// setting up for them.
#[cfg(target_os = "linux")]
const SPLICE_MIN: u64 = 1 << 20;

#[cfg(target_os = "linux")]
async fn spliced(
    reader: &mut FrameReader<BoxRead>,
    sock: std::os::fd::OwnedFd,
    file: File,
    hasher: blake3::Hasher,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<io::Result<(File, blake3::Hash)>, Error> {
    use std::io::Write;
    use std::os::fd::AsFd;

    use tokio_util::sync::CancellationToken;

    use crate::transport::{splice_to_file, SpliceError};

    let stall = reader.io_timeout();
    // What the frame reader holds already goes first; the rest comes
    // straight from the socket.
    let head = reader.take_buffered_body();
    let head_len = head.len() as u64;
    let len = reader.body_left();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
    let mut moving = {
        let cancel = cancel.clone();
        spawn_blocking(move || {
            let (mut file, mut hasher) = (file, hasher);
            let at = match file.stream_position().and_then(|at| file.write_all(&head).map(|()| at)) {
                Ok(at) => at,
                Err(e) => return (0, Err(SpliceError::File(e)), file, hasher),
            };
            hasher.update(&head);
            let start = at + head.len() as u64;
            let (mut map, mut told) = (MappedHash::default(), at);
            let (taken, moved) = splice_to_file(sock.as_fd(), &file, start, len, stall, &cancel, |from, to| {
                map.update(&file, from, to, &mut hasher)?;
                if to - told >= PROGRESS_STEP {
                    told = to;
                    done_tx.send_replace(to - at);
                }
                Ok(())
            });
            if let Err(SpliceError::Unsupported) = moved {
                // The caller goes on by copying, from where this stopped.
                if let Err(e) = file.seek(io::SeekFrom::Start(start + taken)) {
                    return (taken, Err(SpliceError::File(e)), file, hasher);
                }
            }
            (taken, moved, file, hasher)
        })
    };
    let (taken, moved, file, hasher) = loop {
        tokio::select! {
            moved = &mut moving => break moved.map_err(|e| Error::Io(io::Error::other(e)))?,
            Ok(()) = done_rx.changed() => progress(*done_rx.borrow_and_update()),
        }
    };
    reader.body_read_elsewhere(taken);
    let done = head_len + taken;
    match moved {
        Ok(()) => {
            progress(done);
            Ok(Ok((file, hasher.finalize())))
        }
        Err(SpliceError::File(e)) => Ok(Err(e)),
        Err(SpliceError::Unsupported) => {
            tracing::debug!("the file system takes no splice writes; copying instead");
            receive_body(reader, file, hasher, &mut |n| progress(done + n)).await
        }
        Err(SpliceError::Socket(e)) => Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => reader.body_eof(),
            io::ErrorKind::TimedOut => Error::Stalled(stall.unwrap_or_default()),
            _ => Error::Io(e),
        }),
    }
}

/// Hashes a file as it is written, reading the bytes just written in
/// place through a read-only map of a 64 MiB window of the file (the page
/// cache, hot from the write), with no copy into user space. Where a file
/// cannot be mapped, it reads them back with `pread(2)` instead.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct MappedHash {
    window: Option<(u64, memmap2::Mmap)>,
    unmappable: Option<Vec<u8>>,
}

#[cfg(target_os = "linux")]
impl MappedHash {
    const WINDOW: u64 = 64 << 20;

    /// Hashes bytes `from..to` of `file` into `hasher`; they must have
    /// been written.
    fn update(&mut self, file: &File, mut from: u64, to: u64, hasher: &mut blake3::Hasher) -> io::Result<()> {
        while from < to {
            if let Some(buf) = self.unmappable.as_mut() {
                use std::os::unix::fs::FileExt;
                let n = usize::try_from(to - from).unwrap_or(usize::MAX).min(buf.len());
                file.read_exact_at(&mut buf[..n], from)?;
                hasher.update(&buf[..n]);
                from += n as u64;
                continue;
            }
            let base = from - from % Self::WINDOW;
            if self.window.as_ref().map(|w| w.0) != Some(base) {
                self.window = None;
                // SAFETY: a map of a file is sound while nobody shrinks the
                // file under it (reading a page past the end raises
                // SIGBUS). This file is the receiver's own partial file:
                // owner-only, locked against other transfers, and only the
                // bytes just written are read. The window may reach past
                // the end of the file; those pages are never touched.
                match unsafe { memmap2::MmapOptions::new().offset(base).len(Self::WINDOW as usize).map(file) } {
                    Ok(map) => self.window = Some((base, map)),
                    Err(e) => {
                        tracing::debug!("cannot map the file to hash it ({e}); reading it back instead");
                        self.unmappable = Some(vec![0; BUF]);
                        continue;
                    }
                }
            }
            let (base, map) = self.window.as_ref().expect("mapped just above");
            let end = to.min(base + Self::WINDOW);
            #[allow(clippy::cast_possible_truncation)] // within one window
            hasher.update(&map[(from - base) as usize..(end - base) as usize]);
            from = end;
        }
        Ok(())
    }
}

/// Receives the rest of the current body into `dst`: the async side reads
/// from the connection into a few reused buffers while a blocking thread
/// writes each to `dst` and hashes it into `hasher` (fed with whatever
/// came before). `progress` gets the body bytes received so far.
///
/// Returns what the blocking thread reports: `dst` and the whole-file hash,
/// or its first write error. After a write error the rest of the body is
/// left unread, so a disk that filled up is reported at once, not after
/// the rest has arrived: skip it ([`FrameReader::skip_body`]) to answer in
/// step, or close the connection.
///
/// # Errors
///
/// The connection's (the body is then incomplete; what was written is in
/// `dst`, e.g. a partial file kept for a resume).
pub async fn receive_body<R, W>(
    reader: &mut FrameReader<R>,
    dst: W,
    hasher: blake3::Hasher,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<io::Result<(W, blake3::Hash)>, Error>
where
    R: tokio::io::AsyncRead + Unpin,
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
