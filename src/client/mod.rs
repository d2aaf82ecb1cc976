//! The client: a typed async API over one connection to a framewire server.

mod exec;
mod files;

pub use exec::{ExecIo, ExecOptions, ExitStatus, Output};
pub use files::{parse_listing, Progress, Transfer, TransferOptions};

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{self, Key, Role, Transcript};
use crate::proto::{with_default_port, ErrorCode, Message};
use crate::transport::{self, Binding, BoxRead, BoxWrite};
use crate::wire::{
    self, read_preface, FrameReader, FrameWriter, Preface, Timeouts, MAX_BUFFERED_BODY, PREAUTH_MAX_HEADER,
};

/// How long a server may take to answer the preface.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a started frame, or a write, may stall before the client gives up.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given, with the default port added.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Framing or transport failed; the connection is unusable.
    #[error(transparent)]
    Wire(#[from] wire::Error),
    /// The server answered with an error frame.
    #[error("server refused: {message} ({code})")]
    Remote {
        /// The error frame's code.
        code: ErrorCode,
        /// The error frame's message.
        message: String,
    },
    /// The server sent a message that makes no sense here.
    #[error("protocol violation: server sent `{got}` where `{expected}` was due")]
    Unexpected {
        /// The message type that was due.
        expected: &'static str,
        /// The one that came.
        got: &'static str,
    },
    /// A listing named a path that is not plain and relative (`..`, an
    /// absolute path…): using it could write outside the destination, so
    /// the whole listing is refused.
    #[error("the server listed {0:?}, which is not a plain relative path; refusing the listing")]
    UnsafeName(String),
    /// The server closed the connection instead of answering.
    #[error("server closed the connection")]
    Closed,
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Local {
        /// The local path.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The local target exists and `force` was not set.
    #[error("{}: already exists (use --force to replace it)", .0.display())]
    LocalExists(std::path::PathBuf),
    /// The server did not accept our proof: the keys differ.
    #[error("authentication failed")]
    AuthFailed,
    /// The server could not prove it holds the key.
    #[error("the server could not prove it holds the key: it has a different key, or someone is in the middle")]
    ServerAuthFailed,
    /// The server requires a key and we have none.
    #[error("the server requires a key: use --key-file FILE (or set FRAMEWIRE_KEY_FILE)")]
    AuthRequired,
    /// We have a key and the server has none: we refuse plaintext.
    #[error("the server has no key and speaks plaintext; refusing to talk to it in the clear with a key configured")]
    AuthUnavailable,
    /// Received data did not match the sender's whole-file checksum;
    /// nothing was kept.
    #[error(
        "{path}: checksum mismatch: received data hashes to {got}, the server's file to {expected}; nothing was kept"
    )]
    ChecksumMismatch {
        /// The remote path.
        path: String,
        /// The sender's BLAKE3.
        expected: String,
        /// What was received.
        got: String,
    },
}

impl ClientError {
    /// The error frame's code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One connection to a framewire server, requests answered one at a time.
/// Open more clients for parallel work.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), framewire::ClientError> {
/// let mut client = framewire::Client::connect("127.0.0.1:9909").await?;
/// let reply = client.echo(b"hello").await?;
/// assert_eq!(reply, "hello");
/// # Ok(()) }
/// ```
///
/// Copying a tree down, as `framewire get -r` does (the names a listing
/// returns are checked to be plain relative paths, so joining them onto a
/// local directory stays inside it):
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use framewire::client::TransferOptions;
/// use framewire::proto::Kind;
///
/// let mut client = framewire::Client::connect("127.0.0.1:9909").await?;
/// let dest = std::path::Path::new("backup");
/// std::fs::create_dir_all(dest)?;
/// for entry in client.tree("photos").await? {
///     let local = dest.join(&entry.name);
///     if entry.kind == Kind::Dir {
///         std::fs::create_dir_all(&local)?;
///         continue;
///     }
///     if let Some(parent) = local.parent() {
///         std::fs::create_dir_all(parent)?;
///     }
///     let remote = format!("photos/{}", entry.name);
///     client.get(&remote, &local, &TransferOptions::default(), &mut |_| {}).await?;
/// }
/// # Ok(()) }
/// ```
///
/// After an error the connection stays usable, unless
/// [`is_closed`](Self::is_closed) says a transfer had to stop half-way.
/// Names and messages from the server are the server's text: show them
/// through [`text::printable`](crate::text::printable).
pub struct Client {
    reader: FrameReader<BoxRead>,
    writer: FrameWriter<BoxWrite>,
    peer: SocketAddr,
    /// A request was abandoned mid-frame and the connection shut down.
    closed: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `addr` (`host`, `host:port`, `[v6]:port`; the port
    /// defaults to [`DEFAULT_PORT`](crate::proto::DEFAULT_PORT)) without a
    /// key: plaintext, for servers that have none.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if no connection can be made; a wire error
    /// if the peer is not a framewire server of this version;
    /// [`ClientError::AuthRequired`] if the server requires a key.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Self::connect_with(addr, None).await
    }

    /// Connects to `addr` with `key` if given: TLS 1.3, then the mutual
    /// challenge-response (docs/SECURITY.md). With a key, the client never
    /// falls back to plaintext.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), plus [`ClientError::AuthFailed`] (the
    /// server did not accept our proof), [`ClientError::ServerAuthFailed`]
    /// (the server could not prove it holds the key) and
    /// [`ClientError::AuthUnavailable`] (the server has no key).
    pub async fn connect_with(addr: &str, key: Option<&Key>) -> Result<Client, ClientError> {
        let addr = with_default_port(addr);
        let socket = TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr, source })?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(socket, key)).await {
            Ok(result) => result,
            Err(_) => Err(wire::Error::Stalled(HANDSHAKE_TIMEOUT).into()),
        }
    }

    /// Runs the preface exchange, and with a key TLS and authentication,
    /// over an open socket (no time limit: wrap it in one).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with), without the connect step.
    pub async fn handshake(mut socket: TcpStream, key: Option<&Key>) -> Result<Client, ClientError> {
        socket.set_nodelay(true).map_err(wire::Error::Io)?;
        let peer = socket.peer_addr().map_err(wire::Error::Io)?;
        socket.write_all(&Preface::new(key.is_some()).encode()).await.map_err(wire::Error::Io)?;
        let theirs = read_preface(&mut socket).await?;
        if theirs.refused() {
            return Err(read_refusal(socket).await);
        }
        // Either side's mismatch is decided here, from the prefaces: a
        // client holding a key never sends a byte in the clear.
        match (key, theirs.tls()) {
            (Some(_), false) => return Err(ClientError::AuthUnavailable),
            (None, true) => return Err(ClientError::AuthRequired),
            _ => {}
        }
        let timeouts = Timeouts { idle: None, io: Some(IO_TIMEOUT) };
        let (read, write) = match key {
            None => transport::plain(socket),
            Some(key) => {
                let (read, write, binding) =
                    transport::connect_tls(socket, transport::client_config()).await.map_err(wire::Error::Io)?;
                let mut reader = FrameReader::new(read);
                reader.set_max_header(PREAUTH_MAX_HEADER);
                let mut writer = FrameWriter::new(write);
                authenticate(&mut reader, &mut writer, key, &binding).await?;
                let (read, buffered) = reader.into_parts();
                debug_assert!(buffered.is_empty(), "the server sends nothing after auth_ok unasked");
                (read, writer.into_inner())
            }
        };
        // A reply may be long in coming (a command that prints nothing for
        // an hour): no idle limit; but a frame, once started, must move.
        Ok(Client {
            reader: FrameReader::with_timeouts(read, timeouts),
            writer: FrameWriter::with_timeouts(write, timeouts),
            peer,
            closed: false,
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether this connection was closed because a request had to stop
    /// half-way through a frame (a local write or read failed, or the
    /// server refused an upload before its end). Errors that leave the
    /// connection in step, such as most of the server's refusals, do not
    /// close it; after this, open a new `Client`.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Shuts the connection down: a frame was left half-way, so the
    /// stream is out of step for both sides.
    async fn abandon(&mut self) {
        self.closed = true;
        let _ = self.writer.shutdown().await;
    }

    /// Sends `body` to be echoed and returns the reply (at most
    /// [`MAX_BUFFERED_BODY`] bytes; use [`echo_stream`](Self::echo_stream)
    /// for more).
    ///
    /// # Errors
    ///
    /// Wire errors, the server's error frame, or a body over the limit.
    pub async fn echo(&mut self, body: &[u8]) -> Result<Bytes, ClientError> {
        self.echo_with(body, false).await
    }

    /// As [`echo`](Self::echo), with ASCII letters upper-cased by the server.
    ///
    /// # Errors
    ///
    /// As [`echo`](Self::echo).
    pub async fn echo_upper(&mut self, body: &[u8]) -> Result<Bytes, ClientError> {
        self.echo_with(body, true).await
    }

    async fn echo_with(&mut self, body: &[u8], upper: bool) -> Result<Bytes, ClientError> {
        let len = body.len() as u64;
        if len > MAX_BUFFERED_BODY {
            return Err(wire::Error::BodyTooLarge { len, max: MAX_BUFFERED_BODY }.into());
        }
        let mut out = BytesMut::with_capacity(body.len());
        let mut src = body;
        self.echo_stream(&mut src, len, &mut BufSink(&mut out), upper).await?;
        Ok(out.freeze())
    }

    /// Streams `len` bytes from `src` to the server and its echo into
    /// `dst`, both at once and in bounded memory, whatever `len` is.
    /// Returns the bytes echoed.
    ///
    /// # Errors
    ///
    /// Wire errors (including [`wire::Error::BodySourceShort`] if `src`
    /// ends early), the server's error frame, write errors of `dst`.
    pub async fn echo_stream<R, W>(
        &mut self,
        src: &mut R,
        len: u64,
        dst: &mut W,
        upper: bool,
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        // Send and receive concurrently: the server echoes as it reads, so
        // a client that sent everything before reading would deadlock once
        // both sockets' buffers fill.
        let send = async {
            writer.feed_head(&Message::Echo { len, upper })?;
            writer.copy_body_from(src).await?;
            writer.flush().await?;
            Ok::<_, ClientError>(())
        };
        let recv = async {
            match reader.read_head::<Message>().await? {
                Some((Message::EchoReply { len: got }, _)) if got == len => Ok(reader.copy_body(dst).await?),
                Some((Message::EchoReply { len: got }, _)) => {
                    Err(wire::Error::BodyLenMismatch { declared: len, actual: got }.into())
                }
                Some((reply, _)) => Err(unexpected("echo_reply", reply)),
                None => Err(ClientError::Closed),
            }
        };
        // An error frame can arrive while we are still sending (the server
        // refused the request): report it rather than the broken pipe.
        let (sent, received) = tokio::join!(send, recv);
        let echoed = received?;
        sent?;
        Ok(echoed)
    }
}

/// The client's side of the challenge-response: answer the server's
/// challenge with our proof, then check the server's.
async fn authenticate(
    reader: &mut FrameReader<BoxRead>,
    writer: &mut FrameWriter<BoxWrite>,
    key: &Key,
    binding: &Binding,
) -> Result<(), ClientError> {
    let server_nonce = match reader.read_head::<Message>().await? {
        Some((Message::AuthChallenge { nonce }, 0)) => {
            auth::from_hex::<{ auth::NONCE_LEN }>(&nonce).ok_or(ClientError::ServerAuthFailed)?
        }
        Some((other, _)) => return Err(unexpected("auth_challenge", other)),
        None => return Err(ClientError::Closed),
    };
    let client_nonce = auth::nonce();
    let transcript = Transcript { server_nonce: &server_nonce, client_nonce: &client_nonce, binding };
    let proof = auth::prove(key, Role::Client, &transcript);
    let response = Message::AuthResponse { nonce: hex::encode(client_nonce), proof: hex::encode(proof) };
    writer.send(&response, &[]).await?;
    match reader.read_head::<Message>().await {
        Ok(Some((Message::AuthOk { proof }, 0))) => {
            let proof = auth::from_hex::<32>(&proof).ok_or(ClientError::ServerAuthFailed)?;
            if auth::verify(key, Role::Server, &transcript, &proof) {
                Ok(())
            } else {
                Err(ClientError::ServerAuthFailed)
            }
        }
        Ok(Some((Message::Error { code: ErrorCode::AuthFailed, .. }, _))) => Err(ClientError::AuthFailed),
        Ok(Some((other, _))) => Err(unexpected("auth_ok", other)),
        // A server that drops us here did not accept the proof.
        Ok(None) | Err(_) => Err(ClientError::AuthFailed),
    }
}

pub(crate) fn unexpected(expected: &'static str, got: Message) -> ClientError {
    match got {
        Message::Error { code, message } => ClientError::Remote { code, message },
        other => ClientError::Unexpected { expected, got: other.kind() },
    }
}

/// An `AsyncWrite` into a `BytesMut`.
struct BufSink<'a>(&'a mut BytesMut);

impl AsyncWrite for BufSink<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.get_mut().0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The error frame a server sends in plaintext behind a refusing preface
/// (it is busy), as the error to report.
async fn read_refusal(socket: TcpStream) -> ClientError {
    let mut reader = FrameReader::new(socket);
    reader.set_max_header(PREAUTH_MAX_HEADER);
    match reader.read_head::<Message>().await {
        Ok(Some((Message::Error { code, message }, _))) => ClientError::Remote { code, message },
        Ok(Some((other, _))) => unexpected("error", other),
        Ok(None) => ClientError::Closed,
        Err(e) => e.into(),
    }
}
