//! One connection: the preface exchange, then requests one at a time until
//! the peer leaves, a limit is hit, or the server shuts down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::Startup;
use super::{Config, SESSION_WAIT};
use crate::auth::{self, Key, Role, Transcript};
use crate::proto::{ErrorCode, Message};
use crate::services::files::{HashCache, Listing, Sandbox};
use crate::text::printable;
use crate::transport::{self, Binding, BoxRead, BoxWrite};
use crate::wire::{
    self, encode_frame, read_preface, Error, FrameReader, FrameWriter, Preface, MAX_HEADER_LEN, PREAUTH_MAX_HEADER,
};

pub(super) type Reader = FrameReader<BoxRead>;
pub(super) type Writer = FrameWriter<BoxWrite>;

/// What every connection of a server shares.
pub(super) struct Context {
    pub config: Config,
    pub sandbox: Sandbox,
    /// TLS configuration, when the server has a key.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub throttle: Throttle,
    /// Whole-file hashes already computed, by file version.
    pub hashes: Arc<HashCache>,
}

/// Authentication failures per address: each failure from an address
/// makes that address's next failure wait longer before it is answered
/// (100 ms, doubling, up to [`MAX_PENALTY`]). The wait holds only the
/// failing connection, so other clients, even from the same address, are
/// served meanwhile; a client with the right key never waits.
#[derive(Debug, Default)]
pub(super) struct Throttle(Mutex<HashMap<IpAddr, (u32, Instant)>>);

/// The longest an authentication failure is held before it is answered.
pub const MAX_PENALTY: Duration = Duration::from_secs(3);
/// The most sources whose failures are remembered at once.
const MAX_THROTTLED: usize = 16_384;
/// Failures older than this are forgotten.
const PENALTY_MEMORY: Duration = Duration::from_secs(600);

impl Throttle {
    fn penalty(&self, ip: IpAddr) -> Duration {
        let mut map = self.0.lock().expect("throttle poisoned");
        let now = Instant::now();
        map.retain(|_, (_, last)| now.duration_since(*last) < PENALTY_MEMORY);
        // Bounded: failing from more sources than this at once only
        // forgets the older penalties (guessing a 256-bit key stays
        // hopeless without them).
        if map.len() >= MAX_THROTTLED {
            map.clear();
        }
        let entry = map.entry(super::admission::source(ip)).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        (Duration::from_millis(100) * 2u32.saturating_pow(entry.0 - 1)).min(MAX_PENALTY)
    }
}

const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n\
this is a framewire server, not an HTTP server\n";

/// What a native connection is admitted with: its place in the handshake
/// table, and the session slots it must take one of once authenticated.
pub(super) struct Gate<'a> {
    pub startup: Startup,
    pub sessions: &'a Arc<Semaphore>,
}

/// Serves one connection; never panics, logs how it ended.
pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    gate: Gate<'_>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) {
    debug!(%peer, "connection opened");
    match serve_inner(socket, peer, ctx, gate, shutdown, hard).await {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(e) if dropped_by_peer(&e) => info!(%peer, "connection dropped: {}", printable(&e.to_string())),
        Err(e) => warn!(%peer, "connection failed: {}", printable(&e.to_string())),
    }
}

/// A peer that went quiet, stopped half-way (killed, or gave up on an
/// upload the server refused) or closed its end while the server wrote
/// (`framewire exec HOST -- yes | head`): not a server failure.
fn dropped_by_peer(e: &Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match e {
        Error::Idle(_) | Error::Stalled(_) | Error::UnexpectedEof { .. } => true,
        Error::Io(io) => matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted),
        _ => false,
    }
}

/// How a handshake ended, when it did not end in a session.
enum Refused {
    /// Nothing more to say; the error is logged.
    Quietly(Error),
    /// A newer connection took its place in the full handshake table.
    Evicted,
    /// The client failed to prove it holds the key: tell it, on the
    /// writer, after the penalty.
    AuthFailed(String, Box<Writer>),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Quietly(e)
    }
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Quietly(Error::Io(e))
    }
}

/// Writes one frame straight to a socket, before any reader or writer
/// exists (refusals during the handshake).
async fn send_raw(tcp: &mut TcpStream, prefix: &[u8], frame: &Message) {
    let mut buf = BytesMut::from(prefix);
    if encode_frame(frame, &[], &mut buf).is_ok() {
        let _ = tcp.write_all(&buf).await;
    }
}

/// The preface exchange, then (with a key) TLS and the challenge-response.
/// Returns the connection's halves, ready for requests. Nothing but the
/// handshake is served before it succeeds.
async fn handshake(mut tcp: TcpStream, ctx: &Context, startup: &Startup) -> Result<(BoxRead, BoxWrite), Refused> {
    let theirs = tokio::select! {
        theirs = read_preface(&mut tcp) => theirs,
        () = startup.evicted() => {
            // Still before our preface: the client can be told why (in
            // one write, not waited on: this peer may not be reading).
            let (preface, busy) = (Preface::refusal().encode(), Message::error(ErrorCode::Busy, startup.reason()));
            let _ = tokio::time::timeout(Duration::from_millis(100), send_raw(&mut tcp, &preface, &busy)).await;
            return Err(Refused::Evicted);
        }
    };
    let theirs = match theirs {
        Ok(p) if p.refused() => {
            let e = Error::UnsupportedFlags { flags: p.flags };
            return Err(refuse_preface(&mut tcp, e, ctx.tls.is_some()).await.into());
        }
        Ok(p) => p,
        Err(e) => return Err(refuse_preface(&mut tcp, e, ctx.tls.is_some()).await.into()),
    };
    tokio::select! {
        done = handshake_rest(tcp, theirs, ctx) => done,
        // TLS or authentication under way: nothing to say in the clear.
        () = startup.evicted() => Err(Refused::Evicted),
    }
}

/// The handshake after the client's preface was read.
async fn handshake_rest(mut tcp: TcpStream, theirs: Preface, ctx: &Context) -> Result<(BoxRead, BoxWrite), Refused> {
    let keyed = ctx.tls.is_some();
    let ours = Preface::new(keyed).encode();
    if theirs.tls() != keyed {
        // Say so in plaintext: a client on the other side of this mismatch
        // cannot read anything else.
        let (code, msg) = if keyed {
            (
                ErrorCode::AuthRequired,
                "this server requires a key: run the client with --key-file FILE (or FRAMEWIRE_KEY_FILE)",
            )
        } else {
            (
                ErrorCode::AuthUnavailable,
                "this server has no key and speaks plaintext only; run the client without a key file",
            )
        };
        send_raw(&mut tcp, &ours, &Message::error(code, msg)).await;
        transport::linger_close(&mut tcp).await;
        return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)).into());
    }
    tcp.write_all(&ours).await?;
    let (Some(tls), Some(key)) = (&ctx.tls, &ctx.config.key) else {
        return Ok(transport::plain(tcp));
    };
    let (read, write, binding) = transport::accept_tls(tcp, tls.clone()).await?;
    let mut reader = FrameReader::new(read);
    let mut writer = FrameWriter::new(write);
    reader.set_max_header(PREAUTH_MAX_HEADER);
    if let Err(why) = authenticate(&mut reader, &mut writer, key, &binding).await? {
        return Err(Refused::AuthFailed(why, Box::new(writer)));
    }
    reader.set_max_header(MAX_HEADER_LEN);
    let (read, buffered) = reader.into_parts();
    debug_assert!(buffered.is_empty(), "the client waits for auth_ok before sending requests");
    Ok((read, writer.into_inner()))
}

/// The server's side of the challenge-response (docs/SECURITY.md): it
/// challenges first and proves itself only after the client has. The
/// inner error says why the client failed.
async fn authenticate(
    reader: &mut Reader,
    writer: &mut Writer,
    key: &Key,
    binding: &Binding,
) -> Result<Result<(), String>, Error> {
    let server_nonce = auth::nonce();
    writer.send(&Message::AuthChallenge { nonce: hex::encode(server_nonce) }, &[]).await?;
    let (nonce, proof) = match reader.read_head::<Message>().await? {
        Some((Message::AuthResponse { nonce, proof }, 0)) => (nonce, proof),
        Some((other, _)) => return Ok(Err(format!("sent `{}` instead of auth_response", other.kind()))),
        None => return Err(Error::UnexpectedEof { part: wire::FramePart::Header, got: 0, expected: 1 }),
    };
    let Some(client_nonce) = auth::from_hex::<{ auth::NONCE_LEN }>(&nonce) else {
        return Ok(Err("malformed nonce".into()));
    };
    let Some(proof) = auth::from_hex::<32>(&proof) else {
        return Ok(Err("malformed proof".into()));
    };
    let transcript = Transcript { server_nonce: &server_nonce, client_nonce: &client_nonce, binding };
    if !auth::verify(key, Role::Client, &transcript, &proof) {
        return Ok(Err("wrong proof (wrong key, or a man in the middle)".into()));
    }
    let ours = auth::prove(key, Role::Server, &transcript);
    writer.send(&Message::AuthOk { proof: hex::encode(ours) }, &[]).await?;
    Ok(Ok(()))
}

async fn serve_inner(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    gate: Gate<'_>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) -> Result<(), Error> {
    let config = &ctx.config;
    // Replies are single frames written in one go; NODELAY keeps the last
    // segment of each from waiting on the peer's delayed ACK.
    socket.set_nodelay(true)?;
    let Gate { startup, sessions } = gate;
    let handshake = tokio::time::timeout(config.handshake_timeout, handshake(socket, ctx, &startup)).await;
    let (read, write) = match handshake {
        Err(_) => return Err(Error::Stalled(config.handshake_timeout)),
        Ok(Ok(halves)) => {
            drop(startup);
            halves
        }
        Ok(Err(Refused::Quietly(e))) => return Err(e),
        Ok(Err(Refused::Evicted)) => {
            info!(%peer, "handshake ended: a newer connection took its place (the handshake table is full)");
            return Ok(());
        }
        Ok(Err(Refused::AuthFailed(why, mut writer))) => {
            warn!(%peer, "authentication failed: {why}");
            // The penalty is served in the handshake table: a client that
            // fails over and over holds a slot there, not a free task.
            tokio::select! {
                () = tokio::time::sleep(ctx.throttle.penalty(peer.ip())) => {
                    let _ = writer.send(&Message::error(ErrorCode::AuthFailed, "authentication failed"), &[]).await;
                }
                () = startup.evicted() => {}
            }
            return Ok(());
        }
    };
    let mut reader = FrameReader::with_timeouts(read, config.timeouts);
    let mut writer = FrameWriter::with_timeouts(write, config.timeouts);
    // Held until the connection ends, however it ends.
    let Some(_session) = session_slot(sessions, shutdown).await else {
        let msg = format!("server busy: {} connections", config.max_connections);
        info!(%peer, "refused: {msg}");
        let _ = writer.send(&Message::error(ErrorCode::Busy, msg), &[]).await;
        linger(&mut reader, &mut writer).await;
        return Ok(());
    };

    loop {
        let head = tokio::select! {
            // Between requests, a shutdown ends the connection at once; a
            // request already started runs to its end (up to the drain).
            biased;
            _ = shutdown.cancelled() => {
                let bye = Message::error(ErrorCode::ShuttingDown, "server is shutting down");
                let _ = writer.send(&bye, &[]).await;
                return Ok(());
            }
            head = reader.read_head::<Message>() => head,
        };
        match head {
            Ok(Some((request, _))) => {
                if let Err(e) = handle(request, ctx, &mut reader, &mut writer, hard).await {
                    // Cut off at the drain deadline: no time to linger.
                    if !hard.is_cancelled() {
                        linger(&mut reader, &mut writer).await;
                    }
                    return Err(e);
                }
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                let code = match e {
                    Error::UnknownType { .. } => ErrorCode::UnknownType,
                    _ => ErrorCode::BadRequest,
                };
                debug!(%peer, "rejected request: {}", printable(&e.to_string()));
                writer.send(&Message::error(code, e.to_string()), &[]).await?;
            }
            Err(e) => {
                let code = match e {
                    Error::Idle(_) | Error::Stalled(_) => ErrorCode::Timeout,
                    _ => ErrorCode::BadFrame,
                };
                // Best effort: the peer may be gone or not reading.
                let _ = writer.send(&Message::error(code, e.to_string()), &[]).await;
                return Err(e);
            }
        }
    }
}

/// Before a connection closes on an error: ends our side (FIN, or TLS
/// `close_notify`), then reads and drops what the peer still sends for a
/// moment, so that the error frame just sent is not destroyed by the reset
/// a close with unread input causes (a client may be streaming a body).
async fn linger(reader: &mut Reader, writer: &mut Writer) {
    // A frame left half-way (its head still buffered, say) is not sent:
    // the peer would take a head for a promise of its body.
    let end = async {
        if writer.body_left() > 0 {
            let _ = writer.get_mut().shutdown().await;
        } else {
            let _ = writer.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(LINGER, end).await;
    let _ = tokio::time::timeout(LINGER, reader.drain(LINGER_BYTES)).await;
}

/// How long [`linger`] waits, at most, for each of its steps.
const LINGER: Duration = Duration::from_millis(500);
/// How much [`linger`] reads, at most.
const LINGER_BYTES: usize = 4 << 20;

/// A session slot, waiting up to [`SESSION_WAIT`] for one (a burst of
/// clients is absorbed rather than refused); `None` if none came free, or
/// the server is shutting down.
async fn session_slot(sessions: &Arc<Semaphore>, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = sessions.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::select! {
        permit = tokio::time::timeout(SESSION_WAIT, sessions.clone().acquire_owned()) => permit.ok()?.ok(),
        () = shutdown.cancelled() => None,
    }
}

/// Answers a peer that is not speaking framewire (or not our version) in
/// the way it is most likely to understand, then closes.
async fn refuse_preface(tcp: &mut TcpStream, e: Error, keyed: bool) -> Error {
    match &e {
        Error::BadPreface { got }
            if got.starts_with(b"GET ") || got.starts_with(b"POST") || got.starts_with(b"HEAD") =>
        {
            let _ = tcp.write_all(HTTP_REFUSAL).await;
            transport::linger_close(tcp).await;
        }
        Error::UnexpectedEof { .. } | Error::Io(_) | Error::Stalled(_) => {}
        _ => {
            let code = match e {
                Error::UnsupportedVersion { .. } | Error::UnsupportedFlags { .. } => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::BadPreface,
            };
            send_raw(tcp, &Preface::new(keyed).encode(), &Message::error(code, e.to_string())).await;
            transport::linger_close(tcp).await;
        }
    }
    e
}

/// Runs `request` unless the drain deadline passes first (`hard`): then
/// the request is dropped, with its threads (see `transfer`), and the
/// connection ends.
async fn cut_off_by(
    hard: &CancellationToken,
    request: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    tokio::select! {
        done = request => done,
        () = hard.cancelled() => {
            Err(Error::Io(std::io::Error::new(std::io::ErrorKind::Interrupted, "cut off at the drain deadline")))
        }
    }
}

/// Runs one request to its end, reply included.
async fn handle(
    request: Message,
    ctx: &Context,
    reader: &mut Reader,
    writer: &mut Writer,
    hard: &CancellationToken,
) -> Result<(), Error> {
    let sandbox = &ctx.sandbox;
    match request {
        Message::Echo { len, upper } => cut_off_by(hard, echo(len, upper, reader, writer)).await,
        // exec watches `hard` itself: it kills the process group and
        // tells the client why.
        Message::Exec { command, timeout_ms } => {
            super::exec::exec(&ctx.config, command, timeout_ms, reader, writer, hard).await
        }
        Message::List { path, recursive, dirs } => {
            cut_off_by(hard, super::files::list(sandbox, path, Listing::of(recursive, dirs), writer)).await
        }
        Message::Mkdir { path } => cut_off_by(hard, super::files::mkdir(sandbox, path, writer)).await,
        Message::Stat { path } => cut_off_by(hard, super::files::stat(sandbox, path, writer)).await,
        Message::Get { path, offset, prefix_blake3 } => {
            cut_off_by(hard, super::files::get(ctx, path, offset, prefix_blake3, writer)).await
        }
        Message::Put { path, size, force, mode } => {
            // A cut upload leaves its partial file for a resume.
            cut_off_by(hard, super::files::put(ctx, path, size, force, mode, reader, writer)).await
        }
        // Leftovers of an exec that has just ended (the client may have
        // been sending stdin, or pressed Ctrl-C, as the exit went out):
        // harmless, and their bodies are skipped.
        Message::Stdin { .. } | Message::Cancel => Ok(()),
        other => {
            let msg = format!("`{}` is not a request", other.kind());
            writer.send(&Message::error(ErrorCode::BadRequest, msg), &[]).await
        }
    }
}

/// Streams the body back as it arrives: memory stays at one chunk whatever
/// the length, and the reply starts before the request has fully arrived.
async fn echo(len: u64, upper: bool, reader: &mut Reader, writer: &mut Writer) -> Result<(), Error> {
    writer.feed_head(&Message::EchoReply { len })?;
    while let Some(chunk) = reader.read_body_chunk().await? {
        if upper {
            writer.write_body(&chunk.to_ascii_uppercase()).await?;
        } else {
            writer.write_body(&chunk).await?;
        }
    }
    writer.flush().await
}
