//! One connection: the preface exchange, then requests one at a time until
//! the peer leaves, a limit is hit, or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Door, SilentPlace, Startup, Startups};
use super::config::SESSION_WAIT;
use super::context::{Context, Who};
use super::dispatch;
use crate::auth::{self, Key, Role, Transcript};
use crate::proto::{AuthChallenge, AuthOk, AuthResponse, ErrorCode, ErrorFrame, Request};
use crate::session::{ServerSide, Session};
use crate::text::printable;
use crate::transport::{self, Binding, BoxRead, BoxWrite};
use crate::wire::{
    self, encode_frame, Error, FrameReader, FrameWriter, PartialPreface, Preface, MAX_HEADER_LEN, PREAUTH_MAX_HEADER,
};

type Reader = FrameReader<BoxRead>;
type Writer = FrameWriter<BoxWrite>;

const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n\
this is a framewire server, not an HTTP server\n";

/// What a native connection is admitted with: its place in the silent
/// set, the handshake table it takes a place in once it has spoken (with
/// a key), and the session slots it must take one of once authenticated.
pub(super) struct Gate<'a> {
    pub silent: SilentPlace,
    pub door: &'a Door,
    pub startups: &'a Arc<Startups>,
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
    /// Evicted from the door's sets before it had spoken (told "server
    /// busy" if it had not had the server's preface yet).
    Silenced,
    /// A newer connection took its place in the full handshake table.
    Evicted,
    /// No place in the handshake table came free in time.
    NoPlace,
    /// The peer closed after its preface, before its TLS hello.
    Left,
    /// The client failed to prove it holds the key: tell it, on the
    /// writer, after the penalty, served in its place in the table.
    AuthFailed(String, Box<Writer>, Startup),
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
async fn send_raw(tcp: &mut TcpStream, prefix: &[u8], frame: &ErrorFrame) {
    let mut buf = BytesMut::from(prefix);
    if encode_frame(frame, &[], &mut buf).is_ok() {
        let _ = tcp.write_all(&buf).await;
    }
}

/// The preface exchange, then (with a key) TLS and the challenge-response.
/// Returns the connection's halves, ready for requests. Nothing but the
/// handshake is served before it succeeds.
///
/// Until the client has spoken, the connection is in one of the door's
/// two sets and may be evicted (`server::admission`): the silent set
/// until its preface is in, then (with a key) the answered set from our
/// preface until its TLS hello is in. Both cost the server nothing but
/// the socket; only TLS and the key proof take a place in the handshake
/// table.
async fn handshake(
    mut tcp: TcpStream,
    ip: std::net::IpAddr,
    ctx: &Context,
    gate: (SilentPlace, &Door, &Arc<Startups>),
    deadline: tokio::time::Instant,
) -> Result<(BoxRead, BoxWrite, Who), Refused> {
    let (silent, door, startups) = gate;
    let keyed = ctx.tls.is_some();
    let Some(theirs) = client_preface(&mut tcp, &silent).await else {
        // Still before our preface: the client can be told why (in one
        // write, not waited on: this peer may not be reading).
        let (preface, busy) = (Preface::refusal().encode(), ErrorFrame::new(ErrorCode::Busy, silent.reason()));
        let _ = tokio::time::timeout(Duration::from_millis(100), send_raw(&mut tcp, &preface, &busy)).await;
        return Err(Refused::Silenced);
    };
    let theirs = match theirs {
        Ok(p) if p.refused() => Err(Error::UnsupportedFlags { flags: p.flags }),
        theirs => theirs,
    };
    // A peer that does not speak our framewire is answered while still in
    // the silent set: a flood of them is evicted as silent ones are, which
    // cuts the answer's linger short.
    let theirs = match theirs {
        Ok(p) => p,
        Err(e) => {
            tokio::select! {
                () = Box::pin(refuse_preface(&mut tcp, &e, keyed)) => {}
                () = silent.evicted() => {}
            }
            return Err(e.into());
        }
    };
    let ours = Preface::new(keyed).encode();
    if theirs.tls() != keyed {
        // Say so in plaintext: a client on the other side of this mismatch
        // cannot read anything else.
        let (code, msg) = if keyed {
            (
                ErrorCode::AuthRequired,
                "this server requires a key: connect over TLS and prove you hold it (docs/SECURITY.md)",
            )
        } else {
            (
                ErrorCode::AuthUnavailable,
                "this server has no key and speaks plaintext only; run the client without a key file",
            )
        };
        let refuse = async {
            send_raw(&mut tcp, &ours, &ErrorFrame::new(code, msg)).await;
            transport::linger_close(&mut tcp).await;
        };
        tokio::select! {
            () = Box::pin(refuse) => {}
            () = silent.evicted() => {}
        }
        return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)).into());
    }
    // It has spoken: out of the silent set. 8 bytes into an empty socket
    // buffer: this write does not wait.
    drop(silent);
    tcp.write_all(&ours).await?;
    let Some(tls) = &ctx.tls else {
        let (read, write) = transport::plain(tcp);
        return Ok((read, write, Who::Anyone));
    };
    let answered = door.answered.enter(ip);
    // A real client sends its TLS hello as soon as it has our preface, in
    // one record: it leaves the answered set once that whole record is in
    // (one byte would not do: a flood sending one and stalling would take
    // the places real clients wait for).
    tokio::select! {
        arrived = hello(&tcp) => match arrived? {
            // (`hello` never answers `Nothing`.)
            Arrived::Bytes | Arrived::Nothing => {}
            Arrived::Closed => return Err(Refused::Left),
        },
        // Its hello may have come before its task ran: then it goes on.
        () = answered.evicted() => match hello_now(&tcp) {
            Arrived::Bytes => {}
            Arrived::Nothing => return Err(Refused::Silenced),
            Arrived::Closed => return Err(Refused::Left),
        },
    }
    drop(answered);
    // Boxed: what TLS and the proof need is allocated only for
    // connections that get this far, not for every silent one.
    Box::pin(tls_and_proof(tcp, ip, (tls, ctx), startups, deadline)).await
}

/// TLS and the key proof, in a place in the handshake table.
async fn tls_and_proof(
    tcp: TcpStream,
    ip: std::net::IpAddr,
    (tls, ctx): (&Arc<rustls::ServerConfig>, &Context),
    startups: &Arc<Startups>,
    deadline: tokio::time::Instant,
) -> Result<(BoxRead, BoxWrite, Who), Refused> {
    let Some(startup) = startups.admit(ip, deadline).await else {
        return Err(Refused::NoPlace);
    };
    let rest = async {
        let (read, write, binding) = transport::accept_tls(tcp, tls.clone()).await?;
        let mut reader = FrameReader::new(read);
        let mut writer = FrameWriter::new(write);
        reader.set_max_header(PREAUTH_MAX_HEADER);
        let config = &ctx.config;
        let material = Material {
            key: config.key.as_ref(),
            keys: config.authorized_keys.as_deref(),
            host: config.host_key.as_deref(),
        };
        let who = match authenticate(&mut reader, &mut writer, material, (&binding, ip)).await? {
            Ok(who) => who,
            Err(why) => return Ok(Err((why, writer))),
        };
        reader.set_max_header(MAX_HEADER_LEN);
        let (read, buffered) = reader.into_parts();
        debug_assert!(buffered.is_empty(), "the client waits for auth_ok before sending requests");
        Ok::<_, Error>(Ok((read, writer.into_inner(), who)))
    };
    tokio::select! {
        done = rest => match done? {
            Ok(halves) => Ok(halves),
            Err((why, writer)) => Err(Refused::AuthFailed(why, Box::new(writer), startup)),
        },
        // TLS or authentication under way: nothing to say in the clear.
        () = startup.evicted() => Err(Refused::Evicted),
    }
}

/// Reads the client's preface while the connection is in the silent set:
/// `None` if it was evicted before the preface was whole. An eviction
/// first takes whatever has arrived meanwhile (the task may not have run
/// since): a client whose preface is in goes on.
async fn client_preface(tcp: &mut TcpStream, silent: &SilentPlace) -> Option<Result<Preface, Error>> {
    use tokio::io::AsyncReadExt;
    let mut partial = PartialPreface::default();
    loop {
        // A TcpStream read given up in a select! has read nothing.
        let read = tokio::select! {
            read = tcp.read(partial.unfilled()) => read,
            () = silent.evicted() => return read_now(tcp, &mut partial),
        };
        match read.map_err(Error::Io).and_then(|n| partial.advance(n)) {
            Ok(None) => continue,
            Ok(Some(preface)) => return Some(Ok(preface)),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The rest of `partial` from what the socket holds now, without waiting:
/// `None` if it is not all there.
fn read_now(tcp: &TcpStream, partial: &mut PartialPreface) -> Option<Result<Preface, Error>> {
    use rustix::net::{recv, RecvFlags};
    loop {
        let read = match recv(tcp, partial.unfilled(), RecvFlags::DONTWAIT) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return None,
            Err(e) => return Some(Err(Error::Io(e.into()))),
        };
        match partial.advance(read) {
            Ok(None) => continue,
            done => return done.transpose(),
        }
    }
}

/// Whether the peer's first TLS record (its hello) is in, asked of the
/// socket itself rather than of the runtime's readiness, which lags
/// behind a task that has not run.
enum Arrived {
    /// The whole record (or bytes that are not a TLS record at all, which
    /// TLS then refuses at once).
    Bytes,
    /// Not yet: nothing, or only part of the record.
    Nothing,
    /// Closed (or reset).
    Closed,
}

/// The largest TLS record there is: a 5-byte header and up to 2^14 bytes
/// of plaintext plus what encryption may add (RFC 8446 §5.2).
const MAX_TLS_RECORD: u64 = 5 + (1 << 14) + 256;

/// Waits until the peer's first TLS record is in whole (or it closed, or
/// sent something that is not one). Nothing is read: the record stays
/// for TLS.
async fn hello(tcp: &TcpStream) -> std::io::Result<Arrived> {
    loop {
        let ready = tcp.ready(tokio::io::Interest::READABLE).await?;
        // Asked inside `try_io`, so that "not yet" clears the readiness
        // only if nothing arrived meanwhile: the next bytes wake us again.
        let asked = tcp.try_io(tokio::io::Interest::READABLE, || match hello_now(tcp) {
            Arrived::Nothing => Err(std::io::ErrorKind::WouldBlock.into()),
            arrived => Ok(arrived),
        });
        match asked {
            Ok(arrived) => return Ok(arrived),
            // Part of a record, then the end: nothing more will come (and
            // a closed socket stays ready, so waiting again would spin).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Ok(Arrived::Closed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`hello`] without waiting: the record's header peeked, and the bytes
/// the socket holds counted (`FIONREAD`), none copied.
fn hello_now(tcp: &TcpStream) -> Arrived {
    use rustix::net::{recv, RecvFlags};
    let mut head = [0u8; 5];
    let peeked = loop {
        match recv(tcp, &mut head[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Arrived::Nothing,
            Err(_) => return Arrived::Closed,
        }
    };
    if peeked == 0 {
        return Arrived::Closed;
    }
    // 22 is a handshake record: anything else is not a TLS hello, and
    // TLS says so at once.
    if head[0] != 22 {
        return Arrived::Bytes;
    }
    if peeked < head.len() {
        return Arrived::Nothing;
    }
    let need = 5 + u64::from(u16::from_be_bytes([head[3], head[4]]));
    if need > MAX_TLS_RECORD {
        return Arrived::Bytes;
    }
    match rustix::io::ioctl_fionread(tcp) {
        Ok(held) if held >= need => Arrived::Bytes,
        Ok(_) => Arrived::Nothing,
        Err(_) => Arrived::Closed,
    }
}

/// What a server authenticates clients with.
#[derive(Clone, Copy)]
struct Material<'a> {
    key: Option<&'a Key>,
    keys: Option<&'a auth::KeyFile>,
    host: Option<&'a auth::Identity>,
}

/// The most keys one `auth_offer` may name.
const MAX_OFFER: usize = 16;

/// The server's side of the handshake's authentication (PROTOCOL.md
/// §2.3): it challenges first, with its host key's signature when it takes
/// keys per person; then either the shared key's proof (the server proves
/// itself after the client has) or a key of `authorized_keys` that signs
/// the transcript (after, perhaps, an offer of several). The inner error
/// says why the client failed.
async fn authenticate(
    reader: &mut Reader,
    writer: &mut Writer,
    material: Material<'_>,
    (binding, ip): (&Binding, std::net::IpAddr),
) -> Result<Result<Who, String>, Error> {
    use crate::auth::identity;
    use crate::proto::{AuthInput, AuthOfferReply};
    let server_nonce = auth::nonce();
    let mut methods = Vec::new();
    if material.key.is_some() {
        methods.push("key".to_owned());
    }
    let (mut host_key, mut host_signature) = (None, None);
    if let (Some(_), Some(host)) = (material.keys, material.host) {
        methods.push("publickey".to_owned());
        let signed = identity::server_transcript(&server_nonce, binding, host.public());
        let sig = host.sign(&signed).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        (host_key, host_signature) = (Some(identity::to_wire(host.public())), Some(hex::encode(sig)));
    }
    // An older client reads only `nonce`: with the shared key it goes on
    // as before.
    let methods = if methods == ["key"] { Vec::new() } else { methods };
    writer.send(&AuthChallenge { nonce: hex::encode(server_nonce), methods, host_key, host_signature }, &[]).await?;
    let mut offered = false;
    loop {
        let input = match reader.read_head::<AuthInput>().await {
            Ok(Some((input, 0))) => input,
            Ok(Some((input, len))) => return Ok(Err(format!("sent an {} with a body of {len} bytes", input.kind()))),
            Err(Error::Unexpected { kind, .. }) => return Ok(Err(format!("sent `{kind}` instead of authenticating"))),
            Err(e) => return Err(e),
            Ok(None) => return Err(Error::UnexpectedEof { part: wire::FramePart::Header, got: 0, expected: 1 }),
        };
        match input {
            AuthInput::AuthResponse(AuthResponse { nonce, proof }) => {
                let Some(key) = material.key else {
                    return Ok(Err("offered the shared key's proof; this server takes keys per person only".into()));
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
                writer.send(&AuthOk { proof: hex::encode(ours), rights: None }, &[]).await?;
                return Ok(Ok(Who::SharedKey));
            }
            AuthInput::AuthOffer(offer) => {
                let Some(file) = material.keys.filter(|_| !offered) else {
                    return Ok(Err("sent an auth_offer this server does not take (no keys, or a second)".into()));
                };
                offered = true;
                if offer.keys.len() > MAX_OFFER {
                    return Ok(Err(format!("offered {} keys (at most {MAX_OFFER})", offer.keys.len())));
                }
                let (keys, _) = file.current();
                let now = std::time::SystemTime::now();
                let taken = offer.keys.iter().position(|k| {
                    identity::from_wire(k)
                        .and_then(|k| keys.get(&k).cloned())
                        .is_some_and(|a| a.admits(ip, now).is_ok())
                });
                writer.send(&AuthOfferReply { key: taken.map(|i| i as u32) }, &[]).await?;
                if taken.is_none() {
                    return Ok(Err(format!("none of the {} keys offered is authorized", offer.keys.len())));
                }
            }
            AuthInput::AuthPublickey(p) => {
                let (Some(file), Some(host)) = (material.keys, material.host) else {
                    return Ok(Err("offered a key; this server takes the shared key only".into()));
                };
                let Some(client_nonce) = auth::from_hex::<{ auth::NONCE_LEN }>(&p.nonce) else {
                    return Ok(Err("malformed nonce".into()));
                };
                let Some(key) = identity::from_wire(&p.key) else {
                    return Ok(Err("a key that is not ssh-ed25519".into()));
                };
                let print = identity::fingerprint(&key);
                let (keys, generation) = file.current();
                let Some(entry) = keys.get(&key).cloned() else {
                    return Ok(Err(format!("key {print} is not in the authorized keys")));
                };
                if let Err(why) = entry.admits(ip, std::time::SystemTime::now()) {
                    return Ok(Err(format!("key {}: {why}", entry.name())));
                }
                let Ok(sig) = hex::decode(&p.signature) else {
                    return Ok(Err("malformed signature".into()));
                };
                let signed = identity::client_transcript((&server_nonce, &client_nonce), binding, host.public(), &key);
                if !identity::verify(&key, &signed, &sig) {
                    return Ok(Err(format!("key {}: wrong signature (or a man in the middle)", entry.name())));
                }
                let rights = Some(entry.rights.names());
                writer.send(&AuthOk { proof: String::new(), rights }, &[]).await?;
                return Ok(Ok(Who::Key(entry, generation)));
            }
        }
    }
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
    let Gate { silent, door, startups, sessions } = gate;
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let handshake = handshake(socket, peer.ip(), ctx, (silent, door, startups), deadline);
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(deadline, handshake) => done,
        // Nothing is served yet: a shutdown ends a handshake at once (a
        // flood's silent connections would otherwise hold the drain).
        () = shutdown.cancelled() => {
            debug!(%peer, "handshake ended: the server is shutting down");
            return Ok(());
        }
    };
    let (read, write, who) = match handshake {
        Err(_) => return Err(Error::Stalled(config.handshake_timeout)),
        Ok(Ok(halves)) => halves,
        Ok(Err(Refused::Quietly(e))) => return Err(e),
        Ok(Err(Refused::Silenced)) => {
            // Under a flood, one line per socket would drown the log.
            debug!(%peer, "closed before it spoke: a newer connection took its place (the silent set is full)");
            return Ok(());
        }
        Ok(Err(Refused::Evicted)) => {
            info!(%peer, "handshake ended: a newer connection took its place (the handshake table is full)");
            return Ok(());
        }
        Ok(Err(Refused::Left)) => {
            debug!(%peer, "closed by the peer after its preface");
            return Ok(());
        }
        Ok(Err(Refused::NoPlace)) => {
            info!(%peer, "closed: no place in the handshake table came free in time");
            return Ok(());
        }
        Ok(Err(Refused::AuthFailed(why, mut writer, startup))) => {
            warn!(%peer, "authentication failed: {why}");
            // The penalty is served in the handshake table: a client that
            // fails over and over holds a slot there, not a free task.
            let tell = async {
                tokio::time::sleep(ctx.failed_logins.penalty(peer.ip())).await;
                let _ = writer.send(&ErrorFrame::new(ErrorCode::AuthFailed, "authentication failed"), &[]).await;
            };
            tokio::select! {
                () = Box::pin(tell) => {}
                () = startup.evicted() => {}
            }
            return Ok(());
        }
    };
    // Boxed, as the handshake's TLS part is: a silent connection's task
    // holds only the little it needs.
    Box::pin(session((read, write), (peer, who), ctx, sessions, shutdown, hard)).await
}

/// An authenticated connection: a session slot, then its requests.
async fn session(
    (read, write): (BoxRead, BoxWrite),
    (peer, who): (SocketAddr, Who),
    ctx: &Context,
    sessions: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) -> Result<(), Error> {
    let config = &ctx.config;
    if !matches!(who, Who::Anyone) {
        info!(%peer, key = %printable(&who.name()), rights = %who.rights().names(), "authenticated");
    }
    // What this key reaches: the served root, or (dir=) a directory below
    // it, opened as a root of its own.
    let scope = match super::context::Scope::of(ctx, &who) {
        Ok(scope) => scope,
        Err(why) => {
            warn!(%peer, key = %printable(&who.name()), "refused: {why}");
            let (read, write, _) = transport::Traffic::count(read, write);
            let mut s = Session::<ServerSide>::new(read, write, config.timeouts, hard.clone());
            let _ = s.send(&ErrorFrame::new(ErrorCode::PermissionDenied, why), &[]).await;
            return Ok(());
        }
    };
    // A key removed, narrowed or expired while its session runs ends it:
    // its requests are cut as at the drain deadline.
    let cut = hard.child_token();
    let _watch = revocation_watch(ctx, &who, peer, (cut.clone(), scope.revoked.clone()));
    let (read, write, traffic) = transport::Traffic::count(read, write);
    let mut s = Session::<ServerSide>::new(read, write, config.timeouts, cut.clone());
    // Held until the connection ends, however it ends.
    let Some(_session) = session_slot(sessions, shutdown).await else {
        let msg = format!("server busy: {} connections", config.max_connections);
        info!(%peer, "refused: {msg}");
        let _ = s.send(&ErrorFrame::new(ErrorCode::Busy, msg), &[]).await;
        s.linger().await;
        return Ok(());
    };
    let peer = dispatch::Peer { addr: peer, traffic: &traffic, key: who.name() };
    requests(&mut s, &peer, (ctx, &scope), shutdown, &cut).await
}

/// How often a live session's key is looked at again.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// Watches the key a session authenticated with: once it is no longer in
/// the file as it was (removed, its options changed) or no longer admits
/// its client (expired), `cut` is cancelled. Stops when dropped.
fn revocation_watch(
    ctx: &Context,
    who: &Who,
    peer: SocketAddr,
    (cut, revoked): (CancellationToken, CancellationToken),
) -> Option<AbortOnDrop> {
    let (Who::Key(entry, generation), Some(file)) = (who, ctx.config.authorized_keys.clone()) else { return None };
    let (mut entry, mut generation) = (entry.clone(), *generation);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(REVOCATION_CHECK).await;
            let now = std::time::SystemTime::now();
            let (keys, current) = tokio::task::spawn_blocking({
                let file = file.clone();
                move || file.current()
            })
            .await
            .unwrap_or_default();
            let gone = if current == generation {
                entry.admits(peer.ip(), now).err()
            } else {
                generation = current;
                match keys.get(&entry.key) {
                    None => Some("the key was removed from the authorized keys".to_owned()),
                    Some(now_entry) if now_entry.rights != entry.rights => Some("the key's rights changed".to_owned()),
                    Some(now_entry) => {
                        // Its line as it stands now (a new expiry-time,
                        // from=) is what later checks hold it to.
                        entry = now_entry.clone();
                        entry.admits(peer.ip(), now).err()
                    }
                }
            };
            if let Some(why) = gone {
                warn!(%peer, key = %printable(&entry.name()), "session ended: {why}");
                revoked.cancel();
                cut.cancel();
                return;
            }
        }
    });
    Some(AbortOnDrop(task))
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requests one at a time, until the peer leaves, breaks the framing, or
/// the server shuts down.
async fn requests(
    s: &mut Session<ServerSide>,
    peer: &dispatch::Peer<'_>,
    (ctx, scope): (&Context, &super::context::Scope),
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) -> Result<(), Error> {
    // What `pty` and `env` requests set for the next exec.
    let mut setup = dispatch::ExecSetup::default();
    loop {
        let head = tokio::select! {
            // Between requests, a shutdown ends the connection at once; a
            // request already started runs to its end (up to the drain).
            biased;
            _ = shutdown.cancelled() => {
                let _ = s.send(&ErrorFrame::new(ErrorCode::ShuttingDown, "server is shutting down"), &[]).await;
                return Ok(());
            }
            // The key was revoked between requests.
            () = scope.revoked.cancelled() => {
                let _ = s.send(&ErrorFrame::new(ErrorCode::AuthFailed, "the key was revoked"), &[]).await;
                return Ok(());
            }
            head = s.read::<Request>() => head,
        };
        let e = match head {
            Ok(Some((request, _))) => match dispatch::handle(s, (ctx, scope), request, &mut setup, peer).await {
                Ok(()) => continue,
                Err(e) => {
                    // Cut off at the drain deadline: no time to linger.
                    if !hard.is_cancelled() {
                        stalled_in_request(s, &e).await;
                        s.linger().await;
                    }
                    return Err(e);
                }
            },
            Ok(None) => return Ok(()),
            // Leftovers of an exec that has just ended (the client may
            // have been sending stdin, or pressed Ctrl-C, as the exit went
            // out): harmless; their bodies are skipped.
            Err(Error::Unexpected { kind, .. }) if ["stdin", "cancel", "resize"].contains(&kind.as_str()) => continue,
            Err(e) => e,
        };
        if e.is_recoverable() {
            let (code, msg) = match &e {
                Error::UnknownType { .. } => (ErrorCode::UnknownType, e.to_string()),
                Error::Unexpected { kind, .. } => (ErrorCode::BadRequest, format!("`{kind}` is not a request")),
                _ => (ErrorCode::BadRequest, e.to_string()),
            };
            debug!(peer = %peer.addr, "rejected request: {}", printable(&msg));
            s.send(&ErrorFrame::new(code, msg), &[]).await?;
            continue;
        }
        let code = match e {
            Error::Idle(_) | Error::Stalled(_) => ErrorCode::Timeout,
            _ => ErrorCode::BadFrame,
        };
        // Best effort: the peer may be gone or not reading.
        let _ = s.send(&ErrorFrame::new(code, e.to_string()), &[]).await;
        return Err(e);
    }
}

/// How long the `timeout` frame after a stall inside a request may take
/// to go out: the peer may be the one not reading.
const STALL_NOTICE: Duration = Duration::from_millis(500);

/// A request's frame stalled (a `put_data` head or body, an `echo` body):
/// says so with a `timeout` frame, as a stall between frames is, unless a
/// frame of ours is partly written out (the client would read the error
/// frame as the rest of its body); one only buffered is dropped for it
/// (PROTOCOL.md §3.2).
async fn stalled_in_request(s: &mut Session<ServerSide>, e: &Error) {
    if matches!(e, Error::Idle(_) | Error::Stalled(_)) && s.writer().unsend_frame() {
        let frame = ErrorFrame::new(ErrorCode::Timeout, e.to_string());
        let _ = tokio::time::timeout(STALL_NOTICE, s.send(&frame, &[])).await;
    }
}

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
async fn refuse_preface(tcp: &mut TcpStream, e: &Error, keyed: bool) {
    match e {
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
            send_raw(tcp, &Preface::new(keyed).encode(), &ErrorFrame::new(code, e.to_string())).await;
            transport::linger_close(tcp).await;
        }
    }
}
