//! One connection to a server: connecting, the handshake, and the
//! requests that are not about files or commands (echo).

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::error::ClientError;
use crate::auth::{self, Key, Role, Transcript};
use crate::proto::{
    with_default_port, Answer, AuthChallenge, AuthOk, AuthResponse, Echo, EchoReply, ErrorCode, ErrorFrame, Message,
};
use crate::session::{ClientSide, Session};
use crate::transport::{self, Binding, BoxRead, BoxWrite};
use crate::wire::{
    self, read_preface, FrameReader, FrameWriter, Preface, Timeouts, MAX_BUFFERED_BODY, PREAUTH_MAX_HEADER,
};

/// How long a server may take to answer the preface, TLS and
/// authentication included.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a server may take to send its preface back: a framewire
/// server answers a client that speaks within a second even under a
/// flood (docs/SECURITY.md, "The door"), while a server of another
/// protocol that waits for its client to speak first (HTTP) never does;
/// a wrong first byte is refused at once.
pub const PREFACE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a started frame, or a write, may stall before the client gives up.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
/// Copies of whole trees, over several connections at once, are
/// [`client::tree`](crate::client::tree)'s job (what `framewire get -r`
/// and `put -r` run).
///
/// After an error the connection stays usable, unless
/// [`is_closed`](Self::is_closed) says a transfer had to stop half-way.
/// Names and messages from the server are the server's text: show them
/// through [`text::printable`](crate::text::printable).
pub struct Client {
    pub(super) session: Session<ClientSide>,
    peer: SocketAddr,
    /// Reads of local files shared with other copies (a fan-out's).
    pub(super) shared_reads: Option<std::sync::Arc<crate::session::SharedReads>>,
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
        Self::connect_limited(addr, key, None).await
    }

    /// As [`connect_with`](Self::connect_with), with the connection's
    /// traffic after the handshake paid out of `throttle`'s budget (shared
    /// by every connection given the same one).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect_limited(
        addr: &str,
        key: Option<&Key>,
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        let addr = with_default_port(addr);
        tracing::debug!("connecting to {addr}");
        let started = std::time::Instant::now();
        let socket = TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr, source })?;
        if let Ok(peer) = socket.peer_addr() {
            tracing::debug!("connected to {peer} in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake_limited(socket, key, throttle)).await {
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
    pub async fn handshake(socket: TcpStream, key: Option<&Key>) -> Result<Client, ClientError> {
        Self::handshake_limited(socket, key, None).await
    }

    /// As [`handshake`](Self::handshake), with what the connection carries
    /// afterwards paid out of `throttle`'s budget.
    ///
    /// # Errors
    ///
    /// As [`handshake`](Self::handshake).
    pub async fn handshake_limited(
        mut socket: TcpStream,
        key: Option<&Key>,
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        socket.set_nodelay(true).map_err(wire::Error::Io)?;
        let peer = socket.peer_addr().map_err(wire::Error::Io)?;
        socket.write_all(&Preface::new(key.is_some()).encode()).await.map_err(wire::Error::Io)?;
        let theirs = match tokio::time::timeout(PREFACE_TIMEOUT, read_preface(&mut socket)).await {
            Ok(theirs) => theirs?,
            Err(_) => return Err(wire::Error::SilentPeer(PREFACE_TIMEOUT).into()),
        };
        tracing::debug!(
            "the server speaks framewire {}, {}",
            theirs.version,
            if theirs.tls() { "with a key (TLS)" } else { "without a key (plaintext)" }
        );
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
                tracing::debug!("TLS 1.3 established; proving the key (challenge-response over the channel binding)");
                let mut reader = FrameReader::new(read);
                reader.set_max_header(PREAUTH_MAX_HEADER);
                let mut writer = FrameWriter::new(write);
                authenticate(&mut reader, &mut writer, key, &binding).await?;
                tracing::debug!("authenticated: both sides proved they hold the key");
                let (read, buffered) = reader.into_parts();
                debug_assert!(buffered.is_empty(), "the server sends nothing after auth_ok unasked");
                (read, writer.into_inner())
            }
        };
        let (read, write) = match throttle {
            Some(throttle) => throttle.limit(read, write),
            None => (read, write),
        };
        // A reply may be long in coming (a command that prints nothing for
        // an hour): no idle limit; but a frame, once started, must move.
        Ok(Client { session: Session::new(read, write, timeouts, CancellationToken::new()), peer, shared_reads: None })
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
        self.session.is_closed()
    }

    /// The answer to the request just sent: the message `T` due, or the
    /// server's refusal as [`ClientError::Remote`].
    pub(super) async fn answer<T: Message>(&mut self) -> Result<T, ClientError> {
        match self.session.read::<Answer<T>>().await? {
            Some((Answer::Ok(m), _)) => Ok(m),
            Some((Answer::Refused(e), _)) => Err(e.into()),
            None => Err(ClientError::Closed),
        }
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
        let (reader, mut writer) = self.session.halves();
        // Send and receive concurrently: the server echoes as it reads, so
        // a client that sent everything before reading would deadlock once
        // both sockets' buffers fill.
        let send = async {
            writer.feed_head(&Echo { len, upper })?;
            writer.body().copy_body_from(src).await?;
            writer.body().flush().await?;
            Ok::<_, ClientError>(())
        };
        let recv = async {
            match reader.read_head::<Answer<EchoReply>>().await? {
                Some((Answer::Ok(EchoReply { len: got }), _)) if got == len => Ok(reader.copy_body(dst).await?),
                Some((Answer::Ok(EchoReply { len: got }), _)) => {
                    Err(wire::Error::BodyLenMismatch { declared: len, actual: got }.into())
                }
                Some((Answer::Refused(e), _)) => Err(e.into()),
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
    let server_nonce = match reader.read_head::<Answer<AuthChallenge>>().await? {
        Some((Answer::Ok(AuthChallenge { nonce }), 0)) => {
            auth::from_hex::<{ auth::NONCE_LEN }>(&nonce).ok_or(ClientError::ServerAuthFailed)?
        }
        Some((Answer::Ok(_), _)) => return Err(ClientError::ServerAuthFailed),
        Some((Answer::Refused(e), _)) => return Err(e.into()),
        None => return Err(ClientError::Closed),
    };
    tracing::debug!("got the server's challenge; sending our proof");
    let client_nonce = auth::nonce();
    let transcript = Transcript { server_nonce: &server_nonce, client_nonce: &client_nonce, binding };
    let proof = auth::prove(key, Role::Client, &transcript);
    let response = AuthResponse { nonce: hex::encode(client_nonce), proof: hex::encode(proof) };
    writer.send(&response, &[]).await?;
    match reader.read_head::<Answer<AuthOk>>().await {
        Ok(Some((Answer::Ok(AuthOk { proof }), 0))) => {
            let proof = auth::from_hex::<32>(&proof).ok_or(ClientError::ServerAuthFailed)?;
            if auth::verify(key, Role::Server, &transcript, &proof) {
                Ok(())
            } else {
                tracing::debug!("the server accepted our proof, but its own proof is wrong: it does not hold our key");
                Err(ClientError::ServerAuthFailed)
            }
        }
        Ok(Some((Answer::Refused(ErrorFrame { code: ErrorCode::AuthFailed, .. }), _))) => {
            tracing::debug!("the server refused our proof: its key is not ours");
            Err(ClientError::AuthFailed)
        }
        Ok(Some((Answer::Refused(e), _))) => Err(e.into()),
        Ok(Some((Answer::Ok(_), _))) => Err(ClientError::ServerAuthFailed),
        // A server that drops us here did not accept the proof.
        Ok(None) | Err(_) => Err(ClientError::AuthFailed),
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
    match reader.read_head::<ErrorFrame>().await {
        Ok(Some((e, _))) => e.into(),
        Ok(None) => ClientError::Closed,
        Err(e) => e.into(),
    }
}
