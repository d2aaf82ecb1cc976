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
    /// Tree listings asked compressed: `None`, where bytes cost something
    /// (see [`Client::compact_listings`]).
    pub(super) compact: Option<bool>,
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
        let creds = Credentials { key: key.cloned(), ..Credentials::default() };
        Self::connect_as(addr, &creds, throttle).await
    }

    /// Connects to `addr` with `creds`: the shared key, keys of one's own
    /// (a file's, the agent's) and how the server's host key is checked
    /// (PROTOCOL.md §2.3). With either kind of key the connection runs
    /// over TLS 1.3, never in plaintext.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with), plus
    /// [`ClientError::HostKey`] (a changed or unknown host key refused).
    pub async fn connect_as(
        addr: &str,
        creds: &Credentials,
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        // Keys found rather than asked for (the agent's, ~/.ssh's) do not
        // make a client refuse a server without keys: it is spoken to in
        // plaintext, as before; only a server that requires a key is
        // connected to again, with them.
        if let (Some(find), None) = (&creds.find, &creds.key) {
            let plain = Credentials { find: None, ..creds.clone() };
            match Self::connect_once(addr, &plain, throttle).await {
                Err(ClientError::AuthRequired) => {}
                done => return done,
            }
            let found = tokio::task::spawn_blocking({
                let find = find.clone();
                move || (find.0)()
            })
            .await
            .unwrap_or_default();
            tracing::debug!("the server requires a key: connecting again with the {} key(s) found", found.len());
            if found.is_empty() {
                return Err(ClientError::AuthRequired);
            }
            let keyed = Credentials { identities: found, find: None, ..creds.clone() };
            return Self::connect_once(addr, &keyed, throttle).await;
        }
        Self::connect_once(addr, creds, throttle).await
    }

    async fn connect_once(
        addr: &str,
        creds: &Credentials,
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        let addr = with_default_port(addr);
        let host = host_and_port(&addr);
        tracing::debug!("connecting to {addr}");
        let started = std::time::Instant::now();
        let socket = TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr, source })?;
        if let Ok(peer) = socket.peer_addr() {
            tracing::debug!("connected to {peer} in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        }
        let shake = Self::handshake_as(socket, (creds, &host), throttle);
        // Asking on the terminal about a host key waits for the person.
        let limit = if creds.host_keys.ask { HANDSHAKE_TIMEOUT * 30 } else { HANDSHAKE_TIMEOUT };
        match tokio::time::timeout(limit, shake).await {
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
        socket: TcpStream,
        key: Option<&Key>,
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        let host = socket.peer_addr().map(|a| (a.ip().to_string(), a.port())).unwrap_or_default();
        let creds = Credentials { key: key.cloned(), ..Credentials::default() };
        Self::handshake_as(socket, (&creds, &host), throttle).await
    }

    async fn handshake_as(
        mut socket: TcpStream,
        (creds, host): (&Credentials, &(String, u16)),
        throttle: Option<&transport::Throttle>,
    ) -> Result<Client, ClientError> {
        let keyed = creds.key.is_some() || !creds.identities.is_empty();
        socket.set_nodelay(true).map_err(wire::Error::Io)?;
        let peer = socket.peer_addr().map_err(wire::Error::Io)?;
        socket.write_all(&Preface::new(keyed).encode()).await.map_err(wire::Error::Io)?;
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
        match (keyed, theirs.tls()) {
            (true, false) => return Err(ClientError::AuthUnavailable),
            (false, true) => return Err(ClientError::AuthRequired),
            _ => {}
        }
        let timeouts = Timeouts { idle: None, io: Some(IO_TIMEOUT) };
        let (read, write) = match keyed {
            false => transport::plain(socket),
            true => {
                let (read, write, binding) =
                    transport::connect_tls(socket, transport::client_config()).await.map_err(wire::Error::Io)?;
                tracing::debug!("TLS 1.3 established; authenticating over the channel binding");
                let mut reader = FrameReader::new(read);
                reader.set_max_header(PREAUTH_MAX_HEADER);
                let mut writer = FrameWriter::new(write);
                authenticate(&mut reader, &mut writer, (creds, host), &binding).await?;
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
        Ok(Client {
            session: Session::new(read, write, timeouts, CancellationToken::new()),
            peer,
            shared_reads: None,
            compact: None,
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
        self.session.is_closed()
    }

    /// Whether the server has said nothing unasked on this connection,
    /// idle between requests: no message, no end (an idle timeout's
    /// farewell is both). Whatever it did say is read and dropped: after
    /// `false`, the connection is not to be used.
    pub(crate) fn is_quiet(&mut self) -> bool {
        use futures_util::FutureExt;
        !self.is_closed() && self.session.reader().drain(1).now_or_never().is_none()
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

    /// Whether tree listings (`tree_list`) are asked with their bodies
    /// compressed (PROTOCOL.md §4.6.3.1, `compact`): `Some(true)` always,
    /// `Some(false)` never, `None` (the default) to any peer but a
    /// loopback address, where bytes cost something. Never over a
    /// connection compressed already ([`compress`](Self::compress)). A
    /// server older than this sends them plain.
    pub fn compact_listings(&mut self, compact: Option<bool>) {
        self.compact = compact;
    }

    /// Asks the server to compress this connection both ways with zstd
    /// (its own direction at `level`, the server's at `level` up to the
    /// server's limit), one stream each way for the connection's life:
    /// what `-z` does. Returns whether it is compressed now: a server
    /// older than compression answers `unknown_type`, and the connection
    /// goes on as it was.
    ///
    /// # Errors
    ///
    /// Wire errors, or another refusal.
    pub async fn compress(&mut self, level: i32) -> Result<bool, ClientError> {
        if self.session.is_compressed() {
            return Ok(true);
        }
        self.session.send(&crate::proto::Compress { level }, &[]).await?;
        match self.answer::<crate::proto::CompressReady>().await {
            Ok(_) => {
                self.session.compress(level)?;
                Ok(true)
            }
            Err(ClientError::Remote { code: crate::proto::ErrorCode::UnknownType, .. }) => Ok(false),
            Err(e) => Err(e),
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

/// The host and port of `addr` (`host:port`, `[v6]:port`), as
/// `known_hosts` names them.
fn host_and_port(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().unwrap_or(0))
        }
        None => (addr.to_owned(), crate::proto::DEFAULT_PORT),
    }
}

/// How a client proves who it is and checks who the server is: the
/// shared key, keys of its own (tried in order, after asking the server
/// which it takes when there are several), and the host key check.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Credentials {
    /// The shared key (`--key-file`).
    pub key: Option<Key>,
    /// Keys of one's own (`-i`, `~/.ssh/id_ed25519`, the agent's).
    pub identities: Vec<auth::Identity>,
    /// How the server's host key is checked when one of `identities` is
    /// used.
    pub host_keys: HostKeys,
    /// Without a shared key or identities given: where to find keys (the
    /// agent's, `~/.ssh/id_ed25519`) if the server requires one. They are
    /// looked for only then (a passphrase asked only then): a server
    /// without keys is spoken to in plaintext, as before.
    pub find: Option<Finder>,
}

/// How a client finds keys of its own when a server requires one (see
/// [`Credentials::find`]).
#[derive(Clone)]
pub struct Finder(pub std::sync::Arc<dyn Fn() -> Vec<auth::Identity> + Send + Sync>);

impl std::fmt::Debug for Finder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finder(..)")
    }
}

impl Credentials {
    /// The shared key only.
    pub fn shared(key: Option<Key>) -> Credentials {
        Credentials { key, ..Credentials::default() }
    }

    /// The same, with keys of one's own and how host keys are checked.
    pub fn with_identities(mut self, identities: Vec<auth::Identity>, host_keys: HostKeys) -> Credentials {
        self.identities = identities;
        self.host_keys = host_keys;
        self
    }

    /// The same, finding keys with `find` if the server requires one and
    /// none was given (see [`Credentials::find`]).
    pub fn finding(mut self, find: Finder) -> Credentials {
        self.find = Some(find);
        self
    }
}

/// How a client checks a server's host key against `known_hosts`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HostKeys {
    /// The file (`--known-hosts`; default
    /// [`known_hosts::default_file`](auth::known_hosts::default_file)).
    pub file: Option<std::path::PathBuf>,
    /// Record a key not known yet (`--accept-new`); a changed one is still
    /// refused.
    pub accept_new: bool,
    /// Ask on the terminal about a key not known yet, showing its
    /// fingerprint, as ssh does.
    pub ask: bool,
}

impl HostKeys {
    /// Checked against `file` (`None`: the default one).
    pub fn new(file: Option<std::path::PathBuf>, accept_new: bool, ask: bool) -> HostKeys {
        HostKeys { file, accept_new, ask }
    }

    /// Whether the host key `key` of `host` is accepted: recorded for it,
    /// or not known and accepted now (asked, or `accept_new`).
    fn check(&self, (host, port): &(String, u16), key: &ssh_key::PublicKey) -> Result<(), ClientError> {
        use auth::known_hosts::{self, HostKeyError, Known};
        let name = known_hosts::host_name(host, *port);
        let file = self.file.clone().or_else(known_hosts::default_file).unwrap_or_else(|| "known_hosts".into());
        let got = auth::identity::fingerprint(key);
        match known_hosts::check(&file, &name, key)? {
            Known::Match => Ok(()),
            Known::Changed { expected, line } => {
                Err(HostKeyError::Changed { host: name, expected, got, file, line }.into())
            }
            Known::Unknown if self.accept_new => {
                known_hosts::record(&file, &name, key)?;
                tracing::info!("recorded the host key of {name} ({got}) in {}", file.display());
                Ok(())
            }
            Known::Unknown if self.ask => {
                let question = format!(
                    "The authenticity of host {name} can't be established.\nED25519 key fingerprint is {got}.\nAre you sure you want to continue connecting (yes/no)? "
                );
                if ask_yes(&question) {
                    known_hosts::record(&file, &name, key)?;
                    eprintln!("Warning: permanently added {name} (ED25519) to {}.", file.display());
                    Ok(())
                } else {
                    Err(HostKeyError::Declined { host: name }.into())
                }
            }
            Known::Unknown => Err(HostKeyError::Unknown { host: name, got }.into()),
        }
    }
}

/// Asks `question` on the terminal (`/dev/tty`), as ssh does; `yes` is
/// yes.
fn ask_yes(question: &str) -> bool {
    use std::io::{BufRead, Write};
    let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else { return false };
    let mut out = &tty;
    if out.write_all(question.as_bytes()).and_then(|()| out.flush()).is_err() {
        return false;
    }
    let mut answer = String::new();
    std::io::BufReader::new(&tty).read_line(&mut answer).is_ok() && answer.trim().eq_ignore_ascii_case("yes")
}

/// The client's side of authentication (PROTOCOL.md §2.3): with keys of
/// its own and a server that takes them, the server's host key is checked
/// (its signature, then `known_hosts`) before the client signs; else the
/// shared key's challenge-response, which proves both sides.
async fn authenticate(
    reader: &mut FrameReader<BoxRead>,
    writer: &mut FrameWriter<BoxWrite>,
    (creds, host): (&Credentials, &(String, u16)),
    binding: &Binding,
) -> Result<(), ClientError> {
    let challenge = match reader.read_head::<Answer<AuthChallenge>>().await? {
        Some((Answer::Ok(challenge), 0)) => challenge,
        Some((Answer::Ok(_), _)) => return Err(ClientError::ServerAuthFailed),
        Some((Answer::Refused(e), _)) => return Err(e.into()),
        None => return Err(ClientError::Closed),
    };
    let server_nonce = auth::from_hex::<{ auth::NONCE_LEN }>(&challenge.nonce).ok_or(ClientError::ServerAuthFailed)?;
    // An older server names no methods: the shared key only.
    let takes =
        |m: &str| if challenge.methods.is_empty() { m == "key" } else { challenge.methods.iter().any(|x| x == m) };
    if !creds.identities.is_empty() && takes("publickey") {
        return by_identity(reader, writer, (creds, host), (&challenge, &server_nonce, binding)).await;
    }
    let Some(key) = creds.key.as_ref().filter(|_| takes("key")) else {
        tracing::debug!("the server takes {:?}; this client has no key of that kind", challenge.methods);
        return Err(ClientError::AuthFailed);
    };
    tracing::debug!("got the server's challenge; sending our proof");
    let client_nonce = auth::nonce();
    let transcript = Transcript { server_nonce: &server_nonce, client_nonce: &client_nonce, binding };
    let proof = auth::prove(key, Role::Client, &transcript);
    let response = AuthResponse { nonce: hex::encode(client_nonce), proof: hex::encode(proof) };
    writer.send(&response, &[]).await?;
    match reader.read_head::<Answer<AuthOk>>().await {
        Ok(Some((Answer::Ok(AuthOk { proof, .. }), 0))) => {
            let proof = auth::from_hex::<32>(&proof).ok_or(ClientError::ServerAuthFailed)?;
            if auth::verify(key, Role::Server, &transcript, &proof) {
                tracing::debug!("authenticated: both sides proved they hold the key");
                Ok(())
            } else {
                tracing::debug!("the server accepted our proof, but its own proof is wrong: it does not hold our key");
                Err(ClientError::ServerAuthFailed)
            }
        }
        refused => Err(refusal(refused, "our proof: its key is not ours")),
    }
}

/// What an answer other than `auth_ok` means (`what` we offered: "our
/// proof: its key is not ours", "our key").
fn refusal(answer: Result<Option<(Answer<AuthOk>, u64)>, wire::Error>, what: &str) -> ClientError {
    match answer {
        Ok(Some((Answer::Refused(ErrorFrame { code: ErrorCode::AuthFailed, .. }), _))) => {
            tracing::debug!("the server refused {what}");
            ClientError::AuthFailed
        }
        Ok(Some((Answer::Refused(e), _))) => e.into(),
        Ok(Some((Answer::Ok(_), _))) => ClientError::ServerAuthFailed,
        // A server that drops us here did not accept the proof.
        Ok(None) | Err(_) => ClientError::AuthFailed,
    }
}

/// Authentication with a key of one's own: the host key checked, the key
/// to use chosen (the server asked, if there are several), the transcript
/// signed.
async fn by_identity(
    reader: &mut FrameReader<BoxRead>,
    writer: &mut FrameWriter<BoxWrite>,
    (creds, host): (&Credentials, &(String, u16)),
    (challenge, server_nonce, binding): (&AuthChallenge, &[u8; auth::NONCE_LEN], &Binding),
) -> Result<(), ClientError> {
    use crate::auth::identity;
    use crate::proto::{AuthOffer, AuthOfferReply, AuthPublickey};
    let host_key = challenge.host_key.as_deref().and_then(identity::from_wire).ok_or(ClientError::ServerAuthFailed)?;
    let sig = challenge.host_signature.as_deref().and_then(|s| hex::decode(s).ok()).unwrap_or_default();
    if !identity::verify(&host_key, &identity::server_transcript(server_nonce, binding, &host_key), &sig) {
        tracing::debug!("the server's host key signature is wrong: someone may be in the middle");
        return Err(ClientError::ServerAuthFailed);
    }
    creds.host_keys.check(host, &host_key)?;
    tracing::debug!("the server's host key is {}", identity::fingerprint(&host_key));
    let chosen = match creds.identities.as_slice() {
        [one] => one.clone(),
        many => {
            // As many as fit the handshake's 1 KiB headers (16 at most).
            let mut room = PREAUTH_MAX_HEADER - 64;
            let offered: Vec<&auth::Identity> = many
                .iter()
                .take(16)
                .take_while(|i| {
                    let len = identity::to_wire(i.public()).len() + 3;
                    room = room.saturating_sub(len);
                    room > 0
                })
                .collect();
            let keys = offered.iter().map(|i| identity::to_wire(i.public())).collect();
            writer.send(&AuthOffer { keys }, &[]).await?;
            match reader.read_head::<Answer<AuthOfferReply>>().await {
                Ok(Some((Answer::Ok(AuthOfferReply { key: Some(i) }), 0))) => {
                    (*offered.get(i as usize).ok_or(ClientError::ServerAuthFailed)?).clone()
                }
                Ok(Some((Answer::Ok(_), _))) => {
                    tracing::debug!("the server takes none of the {} keys offered", offered.len());
                    return Err(ClientError::AuthFailed);
                }
                Ok(Some((Answer::Refused(e), _))) if e.code != ErrorCode::AuthFailed => return Err(e.into()),
                _ => return Err(ClientError::AuthFailed),
            }
        }
    };
    tracing::debug!("offering key {}", chosen.describe());
    let client_nonce = auth::nonce();
    let signed = identity::client_transcript((server_nonce, &client_nonce), binding, &host_key, chosen.public());
    let signer = chosen.clone();
    let signature = tokio::task::spawn_blocking(move || signer.sign(&signed))
        .await
        .map_err(|e| ClientError::Wire(wire::Error::Io(io::Error::other(e))))??;
    let request = AuthPublickey {
        nonce: hex::encode(client_nonce),
        key: identity::to_wire(chosen.public()),
        signature: hex::encode(signature),
    };
    writer.send(&request, &[]).await?;
    match reader.read_head::<Answer<AuthOk>>().await {
        Ok(Some((Answer::Ok(AuthOk { rights, .. }), 0))) => {
            tracing::debug!(
                "authenticated with key {}; it may: {}",
                chosen.describe(),
                rights.as_deref().unwrap_or("(not said)")
            );
            Ok(())
        }
        refused => Err(refusal(refused, "our key (not in its authorized keys, or not from here, or expired)")),
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
