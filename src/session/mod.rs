//! The session layer: an established connection and the transfer steps
//! both ends of it share.
//!
//! - [`Session`]: the framed reader and writer of one authenticated
//!   connection, its time limits, its cut-off at a server's drain deadline,
//!   and what it may send: a [`Session<ServerSide>`] sends only
//!   [`ToClient`] messages, a [`Session<ClientSide>`] only [`ToServer`]
//!   ones, so a reply cannot go out as a request.
//! - [`Receiver`]: the receiving end of a file (server `put`, client
//!   `get`, legacy upload). It owns the partial file: offers what is held,
//!   agrees the offset, receives and hashes, verifies, then commits or
//!   discards.
//! - [`Sender`]: the sending end (server `get`, client `put`): checks the
//!   receiver's offer against its own file, then streams the rest and
//!   hashes the whole.
//! - [`SharedReads`]: the reads of a local file shared by the copies
//!   that send it at once (a fan-out `put`), so it is read once for all.

mod batch;
mod body;
pub mod delta;
mod receiver;
mod sender;
mod shared;
pub mod sparse;

pub use batch::{Batch, CommitError, Guard, Place, Replace};
pub use body::{receive_body, BodySource, SendError, UntilCut};
pub use receiver::{ReceiveError, Received, Receiver, SMALL_BODY};
pub use sender::{Sender, Unproven};
pub use shared::SharedReads;

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::proto::{ErrorCode, ErrorFrame, Message, ToClient, ToServer};
use crate::services::Refusal;
use crate::transport::{BoxRead, BoxWrite};
use crate::wire::{Error, FrameHeader, FrameReader, FrameWriter, Timeouts};

/// The server's end of a session: it sends [`ToClient`] messages.
#[derive(Debug)]
pub struct ServerSide;
/// The client's end of a session: it sends [`ToServer`] messages.
#[derive(Debug)]
pub struct ClientSide;

/// Which messages the end `Self` of a session may send.
pub trait Sends<M> {}
impl<M: ToClient> Sends<M> for ServerSide {}
impl<M: ToServer> Sends<M> for ClientSide {}

/// One established connection, as one end `S` of it sees it.
pub struct Session<S> {
    reader: FrameReader<BoxRead>,
    writer: FrameWriter<BoxWrite>,
    timeouts: Timeouts,
    cut_off: CancellationToken,
    /// A frame was left half-way and the connection shut down.
    closed: bool,
    /// Whether the connection goes through zstd ([`Session::compress`]).
    compressed: bool,
    /// How the request under way ended, when not simply well: set by a
    /// refusal or by the handler, for the server's log line.
    outcome: Option<String>,
    side: PhantomData<S>,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl<S> Session<S> {
    /// A session over the halves of an authenticated connection, with
    /// `timeouts` on its frames. `cut_off` ends whatever the session is
    /// doing when it is cancelled (a server's drain deadline).
    pub fn new(read: BoxRead, write: BoxWrite, timeouts: Timeouts, cut_off: CancellationToken) -> Self {
        Session {
            reader: FrameReader::with_timeouts(read, timeouts),
            writer: FrameWriter::with_timeouts(write, timeouts),
            timeouts,
            cut_off,
            closed: false,
            compressed: false,
            outcome: None,
            side: PhantomData,
        }
    }

    /// Sends one whole frame.
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn send<M: Message>(&mut self, message: &M, body: &[u8]) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.halves().1.send(message, body).await
    }

    /// Buffers one whole frame, sent with the next `send` or
    /// [`flush`](Self::flush) (or when the buffer fills): for runs of
    /// frames with no answer between them.
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn feed<M: Message>(&mut self, message: &M, body: &[u8]) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.halves().1.feed(message, body).await
    }

    /// Writes out what is buffered.
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.writer.flush().await
    }

    /// Starts a frame whose body follows (through a [`Sender`] or
    /// [`Session::writer`]).
    ///
    /// # Errors
    ///
    /// The header cannot be encoded.
    pub fn feed_head<M: Message>(&mut self, message: &M) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.halves().1.feed_head(message)
    }

    /// Reads the next frame's head as one of the set `H` (its body, if
    /// any, is then read from [`Session::reader`]); `None` at a clean end
    /// of the stream.
    ///
    /// # Errors
    ///
    /// As [`FrameReader::read_head`]; a message outside `H` is the
    /// recoverable [`Error::Unexpected`].
    pub async fn read<H: FrameHeader>(&mut self) -> Result<Option<(H, u64)>, Error> {
        self.reader.read_head::<H>().await
    }

    /// The reader, for bodies.
    pub fn reader(&mut self) -> &mut FrameReader<BoxRead> {
        &mut self.reader
    }

    /// The writer, for the body of a frame started with
    /// [`feed_head`](Self::feed_head) (headers go through `send` and
    /// `feed_head`, which check the direction).
    pub fn writer(&mut self) -> &mut FrameWriter<BoxWrite> {
        &mut self.writer
    }

    /// Both halves at once, for an end that reads while it writes (an
    /// exec's streams, an upload listening for an early refusal). The
    /// writing half still sends only what this end may send.
    pub fn halves(&mut self) -> (&mut FrameReader<BoxRead>, Outbound<'_, S>) {
        (&mut self.reader, Outbound { writer: &mut self.writer, side: PhantomData })
    }

    /// Reads with no idle limit (a command may run silent for an hour)
    /// until [`restore_timeouts`](Self::restore_timeouts).
    pub fn without_idle_limit(&mut self) {
        self.reader.set_timeouts(Timeouts { idle: None, ..self.timeouts });
    }

    /// The session's own time limits again.
    pub fn restore_timeouts(&mut self) {
        self.reader.set_timeouts(self.timeouts);
    }

    /// From here on, both directions go through zstd at `level`
    /// ([`crate::transport::compressed`]): called right after the
    /// `compress` / `compress_ready` exchange, when nothing is buffered
    /// either way.
    ///
    /// # Errors
    ///
    /// `InvalidData` if bytes are buffered (the peer sent frames after
    /// its `compress` without waiting for the answer).
    pub fn compress(&mut self, level: i32) -> Result<(), Error> {
        if self.reader.buffered() > 0 || self.writer.buffered() > 0 {
            let why = "frames sent past a compress without waiting for its answer";
            return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
        }
        let read = std::mem::replace(self.reader.get_mut(), Box::new(tokio::io::empty()));
        let write = std::mem::replace(self.writer.get_mut(), Box::new(tokio::io::sink()));
        let (read, write) = crate::transport::compressed(read, write, level);
        *self.reader.get_mut() = read;
        *self.writer.get_mut() = write;
        self.compressed = true;
        Ok(())
    }

    /// Whether the connection goes through zstd.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// The token that cuts this session off.
    pub fn cut_off(&self) -> &CancellationToken {
        &self.cut_off
    }

    /// Whether a frame was left half-way and the connection shut down.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Shuts the connection down after a frame was left half-way: the
    /// stream is out of step for both ends.
    pub async fn abandon(&mut self) {
        self.closed = true;
        let _ = self.writer.get_mut().shutdown().await;
    }

    /// Before a connection closes on an error: ends our side, then reads
    /// and drops what the peer still sends for a moment, so that the error
    /// frame just sent is not destroyed by the reset a close with unread
    /// input causes (a client may be streaming a body). A frame left
    /// half-way is not completed: the peer would take its head for a
    /// promise of its body.
    pub async fn linger(&mut self) {
        let end = async {
            if self.writer.body_left() > 0 {
                let _ = self.writer.get_mut().shutdown().await;
            } else {
                let _ = self.writer.shutdown().await;
            }
        };
        let _ = tokio::time::timeout(LINGER, end).await;
        let _ = tokio::time::timeout(LINGER, self.reader.drain(LINGER_BYTES)).await;
    }
}

/// The writing half of a [`Session`] beside its reader
/// ([`Session::halves`]): headers only of the messages end `S` may send.
pub struct Outbound<'a, S> {
    writer: &'a mut FrameWriter<BoxWrite>,
    side: PhantomData<S>,
}

impl<S> Outbound<'_, S> {
    /// As [`Session::send`].
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn send<M: Message>(&mut self, message: &M, body: &[u8]) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.writer.send(message, body).await
    }

    /// As [`Session::feed`].
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn feed<M: Message>(&mut self, message: &M, body: &[u8]) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.writer.feed(message, body).await
    }

    /// As [`Session::feed_head`].
    ///
    /// # Errors
    ///
    /// The header cannot be encoded.
    pub fn feed_head<M: Message>(&mut self, message: &M) -> Result<(), Error>
    where
        S: Sends<M>,
    {
        self.writer.feed_head(message)
    }

    /// The writer, for the body of a frame started with
    /// [`feed_head`](Self::feed_head).
    pub fn body(&mut self) -> &mut FrameWriter<BoxWrite> {
        self.writer
    }
}

/// How long [`Session::linger`] waits, at most, for each of its steps.
const LINGER: Duration = Duration::from_millis(500);
/// How much [`Session::linger`] reads, at most.
const LINGER_BYTES: usize = 4 << 20;

impl Session<ServerSide> {
    /// Answers the request with an error frame (and logs it).
    ///
    /// # Errors
    ///
    /// The connection's.
    pub async fn refuse(&mut self, r: impl Into<Refusal>) -> Result<(), Error> {
        let r = r.into();
        self.outcome = Some(format!("refused ({}): {}", r.code, crate::text::printable(&r.message)));
        self.send(&ErrorFrame::new(r.code, r.message), &[]).await
    }

    /// Says how the request under way ended (`exit 3`, `timeout`), for
    /// the server's log line.
    pub fn set_outcome(&mut self, outcome: String) {
        self.outcome = Some(outcome);
    }

    /// How the request under way ended, if a refusal or the handler said;
    /// cleared for the next one.
    pub fn take_outcome(&mut self) -> Option<String> {
        self.outcome.take()
    }

    /// Ends a request whose client broke the protocol: says why, then
    /// fails, so the connection closes (what the client sends next cannot
    /// be framed with certainty, and a body it declared may be endless).
    ///
    /// # Errors
    ///
    /// Always: the connection's, or `InvalidData` with `msg`.
    pub async fn refuse_and_close(&mut self, msg: String) -> Result<(), Error> {
        self.close_with(Refusal::new(ErrorCode::BadRequest, msg)).await
    }

    /// As [`refuse_and_close`](Self::refuse_and_close), with the refusal's
    /// own code (`too_large` for a frame over a limit, whose body is left
    /// unread).
    ///
    /// # Errors
    ///
    /// Always: the connection's, or `InvalidData` with the message.
    pub async fn close_with(&mut self, r: impl Into<Refusal>) -> Result<(), Error> {
        let r = r.into();
        let msg = r.message.clone();
        self.refuse(r).await?;
        Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, msg)))
    }
}

/// Runs `work` unless `cut_off` is cancelled first: then `work` is dropped,
/// with its threads (see `send_body`), and the session ends.
///
/// # Errors
///
/// `work`'s, or `Interrupted` at the cut-off.
pub async fn cut_off_by<T>(
    cut_off: &CancellationToken,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::select! {
        done = work => done,
        () = cut_off.cancelled() => {
            Err(Error::Io(std::io::Error::new(std::io::ErrorKind::Interrupted, "cut off at the drain deadline")))
        }
    }
}
