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
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{BINDING_LEN, EXPORTER_LABEL};

/// The read half of a connection, plaintext or TLS.
pub type BoxRead = Box<dyn ReadHalf>;
/// The write half of a connection, plaintext or TLS.
pub type BoxWrite = Box<dyn WriteHalf>;

/// A connection's write half. A plaintext one also shows its socket, so
/// that file bodies can go out with `sendfile(2)`, straight from the page
/// cache (see [`send_file`]).
pub trait WriteHalf: AsyncWrite + Send + Unpin {
    /// The TCP socket, if what is written goes to it as it is.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl WriteHalf for tokio::net::tcp::OwnedWriteHalf {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_ref().as_fd())
    }
}

/// TLS: bytes are encrypted on their way, so no socket is shown.
impl<T: AsyncRead + AsyncWrite + Send> WriteHalf for tokio::io::WriteHalf<T> {}

/// A connection's read half. A plaintext one also shows its socket, so
/// that file bodies can go from it to a file with `splice(2)` (see
/// [`splice_to_file`]).
pub trait ReadHalf: AsyncRead + Send + Unpin {
    /// The TCP socket, if what is read from it comes as it is.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl ReadHalf for tokio::net::tcp::OwnedReadHalf {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_ref().as_fd())
    }
}

/// TLS: bytes are decrypted on their way, so no socket is shown.
impl<T: AsyncRead + AsyncWrite + Send> ReadHalf for tokio::io::ReadHalf<T> {}

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
pub fn send_file(
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
            io::ErrorKind::WouldBlock => wait_for(sock, libc::POLLOUT, stall, &mut waited, "the peer took nothing")?,
            _ => return Err(err),
        }
    }
    Ok(())
}

/// Waits up to 100 ms for `events` on the non-blocking socket `sock`,
/// adding the time to `waited` when nothing came; fails with
/// [`io::ErrorKind::TimedOut`] (`what`) once `waited` reaches `stall`.
/// An error on the socket is left for the next call on it to report.
#[cfg(target_os = "linux")]
fn wait_for(
    sock: BorrowedFd<'_>,
    events: libc::c_short,
    stall: Option<Duration>,
    waited: &mut Duration,
    what: &str,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const SLICE_MS: u16 = 100;
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events, revents: 0 };
    // SAFETY: one valid pollfd, for the length given.
    match unsafe { libc::poll(&mut pfd, 1, i32::from(SLICE_MS)) } {
        0 => {
            *waited += Duration::from_millis(SLICE_MS.into());
            if stall.is_some_and(|s| *waited >= s) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
            }
            Ok(())
        }
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            }
        }
        _ => Ok(()),
    }
}

/// Why [`splice_to_file`] stopped before the end.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub enum SpliceError {
    /// The connection: closed early ([`io::ErrorKind::UnexpectedEof`]),
    /// stalled ([`io::ErrorKind::TimedOut`]), cancelled
    /// ([`io::ErrorKind::Interrupted`]) or failed. Everything taken from
    /// it was written.
    Socket(io::Error),
    /// Writing the file failed (a full disk, say), or what `written`
    /// returned. The rest of the body is left in the socket.
    File(io::Error),
    /// The file system does not take `splice(2)` writes. Everything taken
    /// from the socket was written (by copying); the caller goes on
    /// another way.
    Unsupported,
}

/// Moves `len` bytes from the socket `sock` into `file` at `offset`
/// through a pipe with `splice(2)`: the kernel hands the socket's pages to
/// the pipe and copies them once, into the file's page cache; no byte
/// passes through user space. After each write, `written` gets the range
/// of the file just written (to hash it, say); an error it returns stops
/// the move as a [`SpliceError::File`].
///
/// Returns the bytes taken from the socket, whatever happened: all were
/// written unless the file failed.
///
/// Meant for a blocking thread, like [`send_file`]: the socket stays
/// non-blocking, and waits for data are `poll(2)` calls of at most
/// `stall` in a row, given up once `cancel` is set.
#[cfg(target_os = "linux")]
pub fn splice_to_file(
    sock: BorrowedFd<'_>,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    stall: Option<Duration>,
    cancel: &tokio_util::sync::CancellationToken,
    mut written: impl FnMut(u64, u64) -> io::Result<()>,
) -> (u64, Result<(), SpliceError>) {
    use std::os::fd::AsRawFd;
    let pipe = match Pipe::new() {
        Ok(pipe) => pipe,
        Err(e) => return (0, Err(SpliceError::File(e))),
    };
    let Ok(mut off) = libc::loff_t::try_from(offset) else {
        return (0, Err(SpliceError::File(io::Error::other("offset out of range"))));
    };
    let (mut taken, mut waited) = (0u64, Duration::ZERO);
    while taken < len {
        if cancel.is_cancelled() {
            return (taken, Err(SpliceError::Socket(io::Error::new(io::ErrorKind::Interrupted, "transfer cancelled"))));
        }
        let want = usize::try_from(len - taken).unwrap_or(usize::MAX).min(pipe.size);
        // SAFETY: both descriptors are open for the whole call; null
        // offsets: the socket and the pipe have none.
        let n = unsafe {
            libc::splice(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                pipe.write.as_raw_fd(),
                std::ptr::null_mut(),
                want,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n == 0 {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed inside the body");
            return (taken, Err(SpliceError::Socket(eof)));
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            let waiting = match err.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                // The pipe is empty here: it is the socket that has nothing.
                io::ErrorKind::WouldBlock => wait_for(sock, libc::POLLIN, stall, &mut waited, "the peer sent nothing"),
                _ => Err(err),
            };
            if let Err(e) = waiting {
                return (taken, Err(SpliceError::Socket(e)));
            }
            continue;
        }
        let n = n as usize; // positive
        taken += n as u64;
        waited = Duration::ZERO;
        let start = off;
        let drained = pipe.drain_into(file, &mut off, n);
        #[allow(clippy::cast_sign_loss)] // offsets only grow from a u64
        if off > start {
            if let Err(e) = written(start as u64, off as u64) {
                return (taken, Err(SpliceError::File(e)));
            }
        }
        if let Err(e) = drained {
            return (taken, Err(e));
        }
    }
    (taken, Ok(()))
}

/// A pipe for [`splice_to_file`], as large as the system lets it be.
#[cfg(target_os = "linux")]
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    size: usize,
}

#[cfg(target_os = "linux")]
impl Pipe {
    /// Bytes asked for: the default `/proc/sys/fs/pipe-max-size`. Beyond
    /// a user's pipe quota the kernel refuses and the pipe keeps its
    /// default size, which only means more calls.
    const WANT: libc::c_int = 1 << 20;

    fn new() -> io::Result<Pipe> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; the results are checked.
        let size = unsafe {
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, Self::WANT);
            libc::fcntl(fds[1], libc::F_GETPIPE_SZ)
        };
        let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
        Ok(Pipe { read, write, size })
    }

    /// Writes the `n` bytes in the pipe into `file` at `off` (moved on).
    /// A file system that takes no `splice(2)` writes gets them copied.
    fn drain_into(&self, file: &std::fs::File, off: &mut libc::loff_t, mut n: usize) -> Result<(), SpliceError> {
        use std::os::fd::AsRawFd;
        while n > 0 {
            // SAFETY: both descriptors are open; `off` is a valid loff_t.
            let m = unsafe {
                libc::splice(self.read.as_raw_fd(), std::ptr::null_mut(), file.as_raw_fd(), off, n, libc::SPLICE_F_MOVE)
            };
            match m {
                m if m > 0 => n -= m as usize,
                0 => return Err(SpliceError::File(io::Error::new(io::ErrorKind::WriteZero, "the file took nothing"))),
                _ => {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => {}
                        Some(libc::EINVAL) => return self.copy_into(file, off, n),
                        _ => return Err(SpliceError::File(err)),
                    }
                }
            }
        }
        Ok(())
    }

    /// The fallback of [`drain_into`](Self::drain_into): reads the `n`
    /// bytes out of the pipe and writes them, then says the file system
    /// wants another way.
    fn copy_into(&self, file: &std::fs::File, off: &mut libc::loff_t, n: usize) -> Result<(), SpliceError> {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; n];
        std::fs::File::from(self.read.try_clone().map_err(SpliceError::File)?)
            .read_exact(&mut buf)
            .map_err(SpliceError::File)?;
        #[allow(clippy::cast_sign_loss)] // offsets only grow from a u64
        file.write_all_at(&buf, *off as u64).map_err(SpliceError::File)?;
        *off += n as libc::loff_t;
        Err(SpliceError::Unsupported)
    }
}
