//! Transport: a TCP connection as it is, or wrapped in TLS 1.3 (rustls)
//! with the channel binding the authentication is tied to.
//!
//! No PKI: the server presents a certificate it generated itself, and the
//! client accepts any certificate whose handshake signature is valid. What
//! authenticates the server is the key, proven over the TLS exporter value
//! of this very connection: a man in the middle holds two TLS sessions with
//! different exporters and can answer neither challenge.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{BINDING_LEN, EXPORTER_LABEL};

/// The read half of a connection, plaintext or TLS.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, plaintext or TLS.
pub type BoxWrite = Box<dyn WriteHalf>;

/// A connection's write half. A plaintext one also shows its socket, so
/// that file bodies can go out with `sendfile(2)`, straight from the page
/// cache.
pub trait WriteHalf: AsyncWrite + Send + Unpin {
    /// The TCP socket, if what is written goes to it as it is.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// `bytes` went out on [`socket`](Self::socket) directly, past this
    /// writer (`sendfile(2)`): for a writer that counts what it carries.
    fn sent_aside(&self, _bytes: u64) {}
}

impl WriteHalf for tokio::net::tcp::OwnedWriteHalf {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_ref().as_fd())
    }
}

/// TLS: bytes are encrypted on their way, so no socket is shown.
impl<T: AsyncRead + AsyncWrite + Send> WriteHalf for tokio::io::WriteHalf<T> {}

/// A bandwidth limit shared by every connection it is given to (all the
/// connections of one copy): a token bucket refilled at `rate` bytes a
/// second, holding at most a quarter second's worth (at least 64 KiB).
/// Bytes read and written both count. A read or write that would run
/// past the budget goes through, and the next one waits until the debt is
/// paid, so the rate holds over time without splitting writes; a burst is
/// at most one read or write (a chunk, 1 MiB at most).
#[derive(Clone, Debug)]
pub struct Throttle(Arc<std::sync::Mutex<TokenBucket>>);

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Throttle {
    /// A limit of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        let bucket = TokenBucket { rate, burst, tokens: burst, last: tokio::time::Instant::now() };
        Throttle(Arc::new(std::sync::Mutex::new(bucket)))
    }

    /// The limit, in bytes a second.
    pub fn rate(&self) -> u64 {
        self.lock().rate as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        // The bucket holds plain numbers: one a panic left half-updated is
        // still a bucket.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long until the budget is no longer overdrawn, if it is.
    fn debt(&self) -> Option<Duration> {
        let mut b = self.lock();
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.burst);
        b.last = now;
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / b.rate))
    }

    fn charge(&self, bytes: u64) {
        self.lock().tokens -= bytes as f64;
    }

    /// `read` and `write`, each paying for what passes through them out
    /// of this budget. The write half shows no socket: a limited body is
    /// never sent with `sendfile(2)`, which the limit could not see.
    pub fn limit(&self, read: BoxRead, write: BoxWrite) -> (BoxRead, BoxWrite) {
        let meter = || Budget { throttle: self.clone(), wait: None };
        (Box::new(Metered { inner: read, meter: meter() }), Box::new(Metered { inner: write, meter: meter() }))
    }
}

/// What one connection has carried, in body and head bytes after the
/// handshake (TLS records' own overhead not included): for the server's
/// one log line per request.
#[derive(Debug, Default)]
pub struct Traffic {
    read: AtomicU64,
    written: AtomicU64,
}

impl Traffic {
    /// Bytes read and written so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.read.load(Relaxed), self.written.load(Relaxed))
    }

    /// `read` and `write`, counting what passes through them into a new
    /// [`Traffic`]. The write half still shows its socket for
    /// `sendfile(2)`, and counts what is sent that way too.
    pub fn count(read: BoxRead, write: BoxWrite) -> (BoxRead, BoxWrite, Arc<Traffic>) {
        let traffic = Arc::new(Traffic::default());
        let read = Metered { inner: read, meter: Tally { traffic: traffic.clone(), written: false } };
        let write = Metered { inner: write, meter: Tally { traffic: traffic.clone(), written: true } };
        (Box::new(read), Box::new(write), traffic)
    }
}

/// What a [`Metered`] half does around each read or write.
trait Meter: Send + Unpin {
    /// Whether the half still shows its socket for `sendfile(2)` (a
    /// meter that only counts can count what goes that way too).
    const SHOWS_SOCKET: bool;
    /// Ready when the next read or write may go.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
    /// `bytes` went through.
    fn passed(&self, bytes: u64);
}

/// A [`Throttle`]'s side of one half: it waits out the budget's debt.
struct Budget {
    throttle: Throttle,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Meter for Budget {
    const SHOWS_SOCKET: bool = false;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        use std::future::Future;
        loop {
            if let Some(wait) = self.wait.as_mut() {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.throttle.debt() {
                None => return Poll::Ready(()),
                Some(wait) => self.wait = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
    }

    fn passed(&self, bytes: u64) {
        self.throttle.charge(bytes);
    }
}

/// A [`Traffic`]'s side of one half: it counts.
struct Tally {
    traffic: Arc<Traffic>,
    written: bool,
}

impl Meter for Tally {
    const SHOWS_SOCKET: bool = true;

    fn passed(&self, bytes: u64) {
        let counter = if self.written { &self.traffic.written } else { &self.traffic.read };
        counter.fetch_add(bytes, Relaxed);
    }
}

/// One half of a connection with a [`Meter`] around its reads and writes.
struct Metered<T, M> {
    inner: T,
    meter: M,
}

impl<T: AsyncRead + Unpin, M: Meter> AsyncRead for Metered<T, M> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.meter.poll_ready(cx));
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.meter.passed((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin, M: Meter> AsyncWrite for Metered<T, M> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.meter.poll_ready(cx));
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.meter.passed(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.meter.poll_ready(cx));
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.meter.passed(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<M: Meter> WriteHalf for Metered<BoxWrite, M> {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        if M::SHOWS_SOCKET {
            self.inner.socket()
        } else {
            None
        }
    }

    fn sent_aside(&self, bytes: u64) {
        self.meter.passed(bytes);
    }
}

/// The TLS exporter value both sides prove over.
pub type Binding = [u8; BINDING_LEN];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A plaintext connection's halves.
pub fn plain(tcp: TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = tcp.into_split();
    (Box::new(r), Box::new(w))
}

/// The server's TLS configuration: TLS 1.3 only, with a certificate
/// generated now for the name "framewire" (it is never checked against
/// anything; see the module docs).
///
/// # Errors
///
/// If generating the certificate fails.
pub fn server_config() -> io::Result<Arc<rustls::ServerConfig>> {
    let cert = rcgen::generate_simple_self_signed(vec!["framewire".to_owned()]).map_err(io::Error::other)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    server_config_with(vec![cert.cert.der().clone()], key)
}

/// A server TLS configuration with the given certificate chain and key
/// (for users who have a real certificate).
///
/// # Errors
///
/// If rustls refuses the certificate or key.
pub fn server_config_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    Ok(Arc::new(config))
}

/// The client's TLS configuration: TLS 1.3 only, any server certificate
/// accepted, handshake signatures verified.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyAuthenticated(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any certificate: the server is authenticated by the key proof
/// bound to this TLS session, not by a certificate authority.
#[derive(Debug)]
struct KeyAuthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for KeyAuthenticated {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The channel binding: 32 bytes from the TLS exporter (RFC 8446 §7.5),
/// the same on both ends of one TLS session and different on any other.
fn export<D>(conn: &rustls::ConnectionCommon<D>) -> io::Result<Binding> {
    let mut binding = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, None).map_err(io::Error::other)?;
    Ok(binding)
}

/// Runs the server side of the TLS handshake; returns the halves and the
/// channel binding.
///
/// # Errors
///
/// If the handshake fails.
pub async fn accept_tls(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<(BoxRead, BoxWrite, Binding)> {
    let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    let binding = export(tls.get_ref().1)?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w), binding))
}

/// Runs the client side of the TLS handshake; returns the halves and the
/// channel binding.
///
/// # Errors
///
/// If the handshake fails.
pub async fn connect_tls(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<(BoxRead, BoxWrite, Binding)> {
    let name = ServerName::try_from("framewire").expect("a valid DNS name");
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    let binding = export(tls.get_ref().1)?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w), binding))
}

/// Closes after a refusal so that the refusal arrives: shut our side
/// (FIN), then read and drop what the peer had already sent, briefly.
/// Closing with unread bytes would make the kernel send a reset, which can
/// destroy the reply before the peer reads it.
pub async fn linger_close(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while let Ok(n) = tcp.read(&mut sink).await {
            total += n;
            if n == 0 || total > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long, and how much, a refused peer is read from before the close.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// Sends `len` bytes of `file` from `offset` to the socket `sock` with
/// `sendfile(2)`: the kernel hands page-cache pages to the socket, and no
/// byte passes through user space. After each call, `sent` gets the bytes
/// that went out.
///
/// Meant for a blocking thread: reading a file from a cold disk blocks
/// here, not on an async worker. The socket stays non-blocking (the async
/// side owns it); when its buffer is full this waits for room with
/// `poll(2)`, at most `stall` in a row, and gives up once `cancel` is set.
///
/// Like `write(2)` to a closed socket, `sendfile(2)` raises `SIGPIPE`; Rust
/// programs ignore it by default and get `EPIPE` instead.
///
/// # Errors
///
/// [`io::ErrorKind::UnexpectedEof`] if the file ends early (it shrank);
/// [`io::ErrorKind::TimedOut`] when the peer takes nothing for `stall`;
/// [`io::ErrorKind::Interrupted`] once cancelled; socket and file errors.
#[cfg(target_os = "linux")]
pub(crate) fn send_file(
    sock: BorrowedFd<'_>,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    stall: Option<Duration>,
    cancel: &tokio_util::sync::CancellationToken,
    mut sent: impl FnMut(u64),
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const MOST: u64 = 1 << 30;
    const SLICE_MS: u16 = 100;
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let (mut left, mut waited) = (len, Duration::ZERO);
    while left > 0 {
        if cancel.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "transfer cancelled"));
        }
        let want = usize::try_from(left.min(MOST)).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open for the whole call (`sock` is
        // borrowed, `file` referenced) and `off` is a valid, owned off_t.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        if n > 0 {
            left -= n as u64;
            waited = Duration::ZERO;
            sent(n as u64);
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was sent"));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd, for the length given.
                match unsafe { libc::poll(&mut pfd, 1, i32::from(SLICE_MS)) } {
                    0 => {
                        waited += Duration::from_millis(SLICE_MS.into());
                        if stall.is_some_and(|s| waited >= s) {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer took nothing"));
                        }
                    }
                    r if r < 0 => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                    // Room, or an error the next sendfile reports.
                    _ => {}
                }
            }
            _ => return Err(err),
        }
    }
    Ok(())
}

/// Whether `ip` is this machine's loopback (127.0.0.0/8, `::1`, or
/// either mapped into the other family): a peer where bytes cost nothing
/// to move, so that a delta transfer's reading and hashing would only add
/// to the time.
pub fn is_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// zstd levels `-z` takes (`--compress-level`).
pub const COMPRESS_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// The largest window a compressed stream may use, as a power of two (2
/// MiB): every sender is held to it, whatever its level, and a receiver
/// refuses more, so a peer cannot make this side hold more to decompress
/// its stream.
pub const COMPRESS_WINDOW_LOG: u32 = 21;

/// The halves of a connection, compressed from here on: what is written
/// goes through zstd at `level`, one stream for the connection's life,
/// flushed whenever the writer is (at frame boundaries), so its history
/// carries across frames and files; what is read is decompressed, within
/// [`COMPRESS_WINDOW_LOG`]. Data that does not compress goes in zstd's
/// raw blocks, which cost a few bytes a block and no work to read.
pub fn compressed(read: BoxRead, write: BoxWrite, level: i32) -> (BoxRead, BoxWrite) {
    use async_compression::tokio::{bufread::ZstdDecoder, write::ZstdEncoder};
    use async_compression::zstd::DParameter;
    let decoder = ZstdDecoder::with_params(
        tokio::io::BufReader::with_capacity(64 << 10, read),
        &[DParameter::window_log_max(COMPRESS_WINDOW_LOG)],
    );
    let level = level.clamp(*COMPRESS_LEVELS.start(), *COMPRESS_LEVELS.end());
    let encoder = ZstdEncoder::with_quality_and_params(
        write,
        async_compression::Level::Precise(level),
        &[async_compression::zstd::CParameter::window_log(COMPRESS_WINDOW_LOG)],
    );
    (Box::new(decoder), Box::new(Compressed(encoder)))
}

/// A write half whose bytes go through zstd: no socket is shown (a file
/// body cannot go out with `sendfile(2)` past the compressor).
struct Compressed(async_compression::tokio::write::ZstdEncoder<BoxWrite>);

impl AsyncWrite for Compressed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl WriteHalf for Compressed {}

/// A write half that takes everything and goes nowhere: what stands in a
/// writer's place while the writer is being wrapped.
impl WriteHalf for tokio::io::Sink {}
