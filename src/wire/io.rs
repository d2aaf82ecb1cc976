//! Frames over any `AsyncRead` / `AsyncWrite`: heads parsed from a buffer,
//! bodies of any length streamed through in bounded memory, frames
//! batched into few writes, and the time limits that keep a stalled peer
//! from holding a connection forever.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frame::{decode_head_within, eof_in_head, head_len_within};
use super::{
    encode_frame, encode_head, Error, FrameHeader, FramePart, Preface, Timeouts, MAX_HEADER_LEN, STREAM_CHUNK,
};

/// Initial read buffer: room for many small frames per read.
const READ_BUF: usize = 64 * 1024;

/// Frames are gathered in the write buffer up to this size before they go
/// out; body chunks larger than this are written straight from the
/// caller's slice instead of being copied.
const WRITE_COALESCE: usize = 64 * 1024;

async fn with_deadline<T>(
    deadline: Option<Instant>,
    on_timeout: impl FnOnce() -> Error,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, Error> {
    match deadline {
        None => Ok(fut.await?),
        Some(at) => match tokio::time::timeout_at(at, fut).await {
            Ok(res) => Ok(res?),
            Err(_) => Err(on_timeout()),
        },
    }
}

/// A read of the connection, with a deadline; `Ok(0)` is its end. A TLS
/// peer that closed without `close_notify` (rustls reports it as
/// `UnexpectedEof`, with a URL) has ended it as surely as a plain one:
/// the same end, so that a cut inside a frame reads "connection closed
/// inside a frame" over TLS too. Nothing can be truncated unnoticed: a
/// frame's own length tells a cut inside one.
async fn read_socket(
    deadline: Option<Instant>,
    on_timeout: impl FnOnce() -> Error,
    read: impl std::future::Future<Output = std::io::Result<usize>>,
) -> Result<usize, Error> {
    match with_deadline(deadline, on_timeout, read).await {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        read => read,
    }
}

fn after(d: Option<Duration>) -> Option<Instant> {
    d.map(|d| Instant::now() + d)
}

/// Reads frames from `R`: the head of each, then its body whole (if small)
/// or in chunks (any size).
///
/// A body the caller does not read is skipped by the next
/// [`read_head`](FrameReader::read_head), so the stream never falls out of
/// step. A header that is well framed but rejected (see
/// [`Error::is_recoverable`]) leaves the reader ready for the next frame.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    body_len: u64,
    body_left: u64,
    timeouts: Timeouts,
    max_header: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with no time limits.
    pub fn new(inner: R) -> Self {
        Self::with_timeouts(inner, Timeouts::default())
    }

    /// A reader enforcing `timeouts`.
    pub fn with_timeouts(inner: R, timeouts: Timeouts) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_BUF),
            body_len: 0,
            body_left: 0,
            timeouts,
            max_header: MAX_HEADER_LEN,
        }
    }

    /// Changes the time limits.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Lowers the header limit (e.g. to [`PREAUTH_MAX_HEADER`](super::PREAUTH_MAX_HEADER)
    /// before authentication); at most [`MAX_HEADER_LEN`].
    pub fn set_max_header(&mut self, max_header: usize) {
        self.max_header = max_header.min(MAX_HEADER_LEN);
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (to wrap it: see
    /// [`buffered`](Self::buffered)).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes read from the underlying reader and not consumed yet: none
    /// where the stream may change form (compression begins).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying reader and the bytes read from it but not consumed.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// Reads into the buffer once; `Ok(0)` is EOF.
    async fn fill(&mut self, deadline: Option<Instant>, on_timeout: impl FnOnce() -> Error) -> Result<usize, Error> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_BUF);
        }
        read_socket(deadline, on_timeout, self.inner.read_buf(&mut self.buf)).await
    }

    /// Reads the peer's preface (see [`read_preface`](super::read_preface)):
    /// straight from the underlying reader, never a byte past it, so it
    /// must come before any frame is read.
    ///
    /// # Errors
    ///
    /// As [`read_preface`](super::read_preface).
    pub async fn read_preface(&mut self) -> Result<Preface, Error> {
        debug_assert!(self.buf.is_empty(), "the preface comes before any frame");
        super::read_preface(&mut self.inner).await
    }

    /// Reads the next frame's head, first skipping whatever is left of the
    /// previous body. Returns the header and its body length, or `Ok(None)`
    /// on a clean EOF between frames.
    ///
    /// # Errors
    ///
    /// Those of [`decode_head`](super::decode_head); [`Error::UnexpectedEof`] for EOF inside
    /// the head; [`Error::Idle`] if no frame starts within the idle
    /// timeout; [`Error::Stalled`] if a started head does not complete
    /// within the I/O timeout.
    pub async fn read_head<H: FrameHeader>(&mut self) -> Result<Option<(H, u64)>, Error> {
        self.skip_body().await?;
        if self.buf.is_empty() {
            let idle = self.timeouts.idle;
            // The end between frames is a normal close (a TLS peer's
            // without `close_notify` too: see `read_socket`).
            if self.fill(after(idle), || Error::Idle(idle.unwrap_or_default())).await? == 0 {
                return Ok(None);
            }
        }
        let io = self.timeouts.io;
        let deadline = after(io);
        loop {
            match decode_head_within::<H>(&self.buf, self.max_header) {
                Ok(Some(head)) => {
                    self.buf.advance(head.head_len);
                    self.start_body(head.body_len);
                    return Ok(Some((head.header, head.body_len)));
                }
                Ok(None) => {}
                Err(e) => {
                    if let Some(body_len) = e.body_len() {
                        let head_len =
                            head_len_within(&self.buf, self.max_header)?.expect("a rejected header was whole");
                        self.buf.advance(head_len);
                        self.start_body(body_len);
                    }
                    return Err(e);
                }
            }
            if self.fill(deadline, || Error::Stalled(io.unwrap_or_default())).await? == 0 {
                return Err(eof_in_head(&self.buf));
            }
        }
    }

    fn start_body(&mut self, len: u64) {
        self.body_len = len;
        self.body_left = len;
    }

    /// Body bytes of the current frame not yet read.
    pub fn body_left(&self) -> u64 {
        self.body_left
    }

    fn body_eof(&self) -> Error {
        Error::UnexpectedEof {
            part: FramePart::Body,
            got: self.body_len - self.body_left + self.buf.len() as u64,
            expected: self.body_len,
        }
    }

    /// Reads the rest of the current body into memory.
    ///
    /// # Errors
    ///
    /// [`Error::BodyTooLarge`] if more than `max` bytes are left (nothing
    /// is read; the next [`read_head`](Self::read_head) skips the body);
    /// [`Error::UnexpectedEof`], [`Error::Stalled`].
    pub async fn read_body(&mut self, max: u64) -> Result<Bytes, Error> {
        let len = self.body_left;
        if len > max {
            return Err(Error::BodyTooLarge { len, max });
        }
        let len = len as usize;
        if self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
        }
        while self.buf.len() < len {
            let io = self.timeouts.io;
            if self.fill(after(io), || Error::Stalled(io.unwrap_or_default())).await? == 0 {
                return Err(self.body_eof());
            }
        }
        self.body_left = 0;
        Ok(self.buf.split_to(len).freeze())
    }

    /// The next piece of the current body, `Ok(None)` once it is all read.
    /// Pieces are at most [`STREAM_CHUNK`] bytes beyond what was already
    /// buffered, so memory stays bounded whatever the body's length.
    ///
    /// # Errors
    ///
    /// [`Error::UnexpectedEof`], [`Error::Stalled`], [`Error::Io`].
    pub async fn read_body_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        if self.body_left == 0 {
            return Ok(None);
        }
        if self.buf.is_empty() {
            self.buf.reserve(STREAM_CHUNK.min(self.body_left as usize));
            let io = self.timeouts.io;
            if self.fill(after(io), || Error::Stalled(io.unwrap_or_default())).await? == 0 {
                return Err(self.body_eof());
            }
        }
        let n = (self.buf.len() as u64).min(self.body_left) as usize;
        self.body_left -= n as u64;
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// Appends the next piece of the current body to `buf`, until `buf`
    /// is at its capacity or the body ends (it never grows `buf`). Bytes
    /// already buffered come first; the rest is read from the connection
    /// straight into `buf`, so a caller that reuses a few buffers keeps
    /// them warm in the CPU cache.
    ///
    /// On an error, what was read before it is in `buf` (a receiver can
    /// keep it, e.g. for a resume); the same holds when the future is
    /// dropped.
    ///
    /// # Errors
    ///
    /// As [`read_body_chunk`](Self::read_body_chunk).
    pub async fn read_body_into(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        let room =
            |buf: &Vec<u8>, left: u64| (buf.capacity() - buf.len()).min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.buf.len().min(room(buf, self.body_left));
        buf.extend_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        self.body_left -= n as u64;
        loop {
            let want = room(buf, self.body_left);
            if want == 0 {
                return Ok(());
            }
            let io = self.timeouts.io;
            let mut part = (&mut *buf).limit(want);
            let read = self.inner.read_buf(&mut part);
            let got = read_socket(after(io), || Error::Stalled(io.unwrap_or_default()), read).await?;
            if got == 0 {
                return Err(self.body_eof());
            }
            self.body_left -= got as u64;
        }
    }

    /// Copies the rest of the current body into `dst`, through one reused
    /// buffer of [`STREAM_CHUNK`] bytes. Returns the bytes copied.
    ///
    /// # Errors
    ///
    /// As [`read_body_chunk`](Self::read_body_chunk); a failure of `dst`
    /// is [`Error::Io`].
    pub async fn copy_body<W: AsyncWrite + Unpin + ?Sized>(&mut self, dst: &mut W) -> Result<u64, Error> {
        let mut copied = 0;
        // What is already buffered goes first, then the rest bypasses the
        // frame buffer: one allocation for the whole body.
        let n = (self.buf.len() as u64).min(self.body_left) as usize;
        if n > 0 {
            dst.write_all(&self.buf[..n]).await?;
            self.buf.advance(n);
            self.body_left -= n as u64;
            copied += n as u64;
        }
        let mut chunk = vec![0u8; STREAM_CHUNK.min(self.body_left as usize)];
        while self.body_left > 0 {
            let want = chunk.len().min(self.body_left as usize);
            let io = self.timeouts.io;
            let read = self.inner.read(&mut chunk[..want]);
            let got = read_socket(after(io), || Error::Stalled(io.unwrap_or_default()), read).await?;
            if got == 0 {
                return Err(self.body_eof());
            }
            dst.write_all(&chunk[..got]).await?;
            self.body_left -= got as u64;
            copied += got as u64;
        }
        Ok(copied)
    }

    /// Reads and drops the rest of the current body.
    pub async fn skip_body(&mut self) -> Result<(), Error> {
        while self.read_body_chunk().await?.is_some() {}
        Ok(())
    }

    /// Reads and drops whatever the peer still sends, framed or not, up to
    /// `max` bytes or its end of stream; returns how much. For a closing
    /// side that has just sent its last frame: a socket closed with unread
    /// input is reset, and the reset can destroy that frame before the
    /// peer reads it. No time limit: wrap it in one.
    pub async fn drain(&mut self, max: usize) -> usize {
        let mut total = self.buf.len();
        self.buf.clear();
        self.body_left = 0;
        while total < max {
            self.buf.clear();
            self.buf.reserve(READ_BUF);
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        self.buf.clear();
        total
    }
}

/// Writes frames to `W`, gathering small frames into few writes.
///
/// Nothing reaches the peer until [`flush`](FrameWriter::flush) (or a
/// 64 KiB buffer fills up): send a request with
/// [`send`](FrameWriter::send), which flushes, and a batch with several
/// [`feed`](FrameWriter::feed) and one `flush`. Header and body go out in
/// one write, so Nagle's algorithm never holds half a frame back.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    body_left: u64,
    /// Where the frame under way starts in `buf`, while none of it has
    /// been written out.
    frame_at: Option<usize>,
    io: Option<Duration>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer with no time limit.
    pub fn new(inner: W) -> Self {
        Self::with_timeouts(inner, Timeouts::default())
    }

    /// A writer whose every write must complete within `timeouts.io`.
    pub fn with_timeouts(inner: W, timeouts: Timeouts) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(WRITE_COALESCE),
            body_left: 0,
            frame_at: None,
            io: timeouts.io,
        }
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying writer, mutably: bytes written to it directly bypass
    /// (and precede) anything still buffered.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Bytes of the current body not yet written.
    pub fn body_left(&self) -> u64 {
        self.body_left
    }

    /// Bytes buffered, not yet written out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How long a write may stall, if limited.
    pub fn io_timeout(&self) -> Option<Duration> {
        self.io
    }

    /// The underlying writer (unflushed frames are dropped).
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn ready_for_frame(&self) -> Result<(), Error> {
        if self.body_left > 0 {
            return Err(Error::BodyLenMismatch { declared: self.body_left, actual: 0 });
        }
        Ok(())
    }

    /// Buffers our preface.
    pub fn feed_preface(&mut self, preface: Preface) {
        self.buf.extend_from_slice(&preface.encode());
    }

    /// Buffers a whole frame, writing out the buffer if it is full.
    ///
    /// # Errors
    ///
    /// Those of [`encode_frame`]; [`Error::BodyLenMismatch`] if a streamed
    /// body is still incomplete; write errors.
    pub async fn feed<H: FrameHeader>(&mut self, header: &H, body: &[u8]) -> Result<(), Error> {
        self.ready_for_frame()?;
        encode_frame(header, body, &mut self.buf)?;
        if self.buf.len() >= WRITE_COALESCE {
            self.write_buf().await?;
        }
        Ok(())
    }

    /// Writes a whole frame and flushes.
    ///
    /// # Errors
    ///
    /// As [`feed`](Self::feed) and [`flush`](Self::flush).
    pub async fn send<H: FrameHeader>(&mut self, header: &H, body: &[u8]) -> Result<(), Error> {
        self.feed(header, body).await?;
        self.flush().await
    }

    /// Starts a frame whose body follows through
    /// [`write_body`](Self::write_body) or [`copy_body_from`](Self::copy_body_from).
    ///
    /// # Errors
    ///
    /// Those of [`encode_head`]; [`Error::BodyLenMismatch`] if the previous
    /// body is incomplete.
    pub fn feed_head<H: FrameHeader>(&mut self, header: &H) -> Result<(), Error> {
        self.ready_for_frame()?;
        let at = self.buf.len();
        encode_head(header, &mut self.buf)?;
        self.body_left = header.body_len();
        self.frame_at = Some(at);
        Ok(())
    }

    /// Whether another frame may be sent now: none is half-way, or the
    /// one under way has not had a byte written out, and is dropped (the
    /// peer never sees it). A frame partly written cannot be taken back:
    /// false then, and the connection must close without another frame.
    pub fn unsend_frame(&mut self) -> bool {
        if self.body_left == 0 {
            return true;
        }
        match self.frame_at.take() {
            Some(at) => {
                self.buf.truncate(at);
                self.body_left = 0;
                true
            }
            None => false,
        }
    }

    /// Writes the next piece of the current body. Small pieces are
    /// gathered; large ones go straight from `chunk`.
    ///
    /// # Errors
    ///
    /// [`Error::BodyLenMismatch`] if `chunk` goes past the declared length;
    /// write errors.
    pub async fn write_body(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if chunk.len() as u64 > self.body_left {
            return Err(Error::BodyLenMismatch { declared: self.body_left, actual: chunk.len() as u64 });
        }
        self.body_left -= chunk.len() as u64;
        if self.buf.len() + chunk.len() <= WRITE_COALESCE {
            self.buf.extend_from_slice(chunk);
            return Ok(());
        }
        self.write_buf().await?;
        self.write_all(chunk).await
    }

    /// Writes the rest of the current body from `src`, which must yield at
    /// least that many bytes; returns the bytes written.
    ///
    /// # Errors
    ///
    /// [`Error::BodySourceShort`] if `src` ends early (the connection is
    /// then out of step and must be closed); read and write errors.
    pub async fn copy_body_from<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> Result<u64, Error> {
        let expected = self.body_left;
        let mut chunk = vec![0u8; STREAM_CHUNK.min(expected as usize)];
        while self.body_left > 0 {
            let want = chunk.len().min(self.body_left as usize);
            let got = src.read(&mut chunk[..want]).await?;
            if got == 0 {
                return Err(Error::BodySourceShort { got: expected - self.body_left, expected });
            }
            self.write_body(&chunk[..got]).await?;
        }
        Ok(expected)
    }

    /// Hands the rest of the current body to the caller, who writes it
    /// past this writer, straight to the transport (e.g. with
    /// `sendfile(2)`): flushes what is buffered (the head), counts the
    /// body as written, and returns its length.
    ///
    /// The caller must then write exactly that many bytes before the next
    /// frame; if it cannot, the stream is out of step and the connection
    /// must be closed.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    pub async fn take_body(&mut self) -> Result<u64, Error> {
        self.flush().await?;
        Ok(std::mem::take(&mut self.body_left))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let io = self.io;
        with_deadline(after(io), || Error::Stalled(io.unwrap_or_default()), self.inner.write_all(bytes)).await
    }

    async fn write_buf(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        self.frame_at = None;
        let res = self.write_all(&buf).await;
        self.buf = buf;
        self.buf.clear();
        res
    }

    /// Writes out everything buffered and flushes the underlying writer.
    ///
    /// # Errors
    ///
    /// Write errors; [`Error::Stalled`] past the I/O timeout.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.write_buf().await?;
        let io = self.io;
        with_deadline(after(io), || Error::Stalled(io.unwrap_or_default()), self.inner.flush()).await
    }

    /// Flushes and shuts the write side down (TCP FIN): the peer sees EOF.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.flush().await?;
        let io = self.io;
        with_deadline(after(io), || Error::Stalled(io.unwrap_or_default()), self.inner.shutdown()).await
    }
}
