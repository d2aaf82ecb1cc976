//! The server: a listener with bounded connections, time limits, backed-off
//! accept errors and graceful shutdown; each connection in its own task.

mod conn;
mod exec;
mod files;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Key;
use crate::services::files::Sandbox;
use crate::wire::Timeouts;

/// Connections served at once by default; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long a connection may sit between requests by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a started frame head, any body read, or any write may stall by
/// default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the preface exchange may take by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for live requests by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection gets to report a killed command after the drain
/// deadline before its task is dropped.
const HARD_GRACE: Duration = Duration::from_secs(2);
/// The longest pause between accept retries after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What a server serves and its limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The served directory.
    pub root: PathBuf,
    /// Connections served at once.
    pub max_connections: usize,
    /// Idle and I/O limits on every connection.
    pub timeouts: Timeouts,
    /// Limit for the preface exchange.
    pub handshake_timeout: Duration,
    /// After shutdown is asked for, how long live requests may go on.
    pub drain_timeout: Duration,
    /// Serve `exec` requests.
    pub allow_exec: bool,
    /// The shell `exec` runs commands with (`SHELL -c COMMAND`).
    pub shell: PathBuf,
    /// Stop by itself after this long without any client connected.
    pub exit_when_idle: Option<Duration>,
    /// The shared key: with one, every connection runs over TLS 1.3 and
    /// must pass the mutual challenge-response first.
    pub key: Option<Key>,
    /// The TLS certificate and key to present, for users who have a real
    /// one; by default a self-signed one is generated at start.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Allow serving a non-loopback address, or exec, without a key.
    pub insecure: bool,
}

impl Config {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Config {
            root: root.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            timeouts: Timeouts { idle: Some(DEFAULT_IDLE_TIMEOUT), io: Some(DEFAULT_IO_TIMEOUT) },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            allow_exec: false,
            shell: PathBuf::from("/bin/sh"),
            exit_when_idle: None,
            key: None,
            tls: None,
            insecure: false,
        }
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting,
/// lets live requests finish for up to [`Config::drain_timeout`], ends the
/// rest, and returns.
///
/// A connection's errors end that connection only; they are logged with
/// the peer's address. Accept errors (out of file descriptors, …) are
/// logged and retried with backoff, never fatal.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use framewire::server::{self, Config};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// server::run(listener, Config::new("."), tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// If the root cannot be opened as a directory, or the configuration breaks
/// the policy (a non-loopback address or exec without a key, unless
/// `insecure`); nothing is served then.
pub async fn run(listener: TcpListener, mut config: Config, shutdown: impl Future) -> std::io::Result<()> {
    check_policy(&listener, &config)?;
    let sandbox = Sandbox::new(&config.root)?;
    config.root = sandbox.root().to_owned();
    let tls = match (&config.key, &config.tls) {
        (None, _) => None,
        (Some(_), Some(tls)) => Some(tls.clone()),
        (Some(_), None) => Some(crate::transport::server_config()?),
    };
    let ctx = Arc::new(conn::Context { config, sandbox, tls, throttle: conn::Throttle::default() });
    let config = &ctx.config;
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // `graceful` ends idle connections and lets busy ones finish their
    // request; `hard` ends whatever is left once the drain time is up.
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);

    loop {
        // The permit is taken before accept: at the limit, new clients wait
        // in the kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (socket, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
            _ = idle_for(config.exit_when_idle, &tracker) => {
                info!(idle = ?config.exit_when_idle, "no client for the --exit-when-idle time");
                break;
            }
        };
        let ctx = ctx.clone();
        let graceful = graceful.clone();
        let hard = hard.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = conn::serve(socket, peer, &ctx, &graceful, &hard) => {}
                // A request that ignores `hard` (none should) is dropped
                // shortly after: its process groups die with their guards.
                _ = async { hard.cancelled().await; tokio::time::sleep(HARD_GRACE).await } => {
                    warn!(%peer, "request cut off: drain timeout reached")
                }
            }
            drop(permit);
        });
    }

    drop(listener);
    info!(live = tracker.len(), "shutting down: no new connections; draining live requests");
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(config.drain_timeout, tracker.wait()).await.is_err() {
        warn!(live = tracker.len(), drain = ?config.drain_timeout, "drain timeout: ending the remaining connections");
        hard.cancel();
        tracker.wait().await;
    }
    info!("server stopped");
    Ok(())
}

/// Without a key, anyone who can reach the server can use it: allowed on
/// loopback, and for exec or other addresses only with `insecure`.
fn check_policy(listener: &TcpListener, config: &Config) -> std::io::Result<()> {
    if config.key.is_some() {
        return Ok(());
    }
    let addr = listener.local_addr()?;
    let refuse = |what: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {what} without a key: anyone who can connect could use it; give a key file (framewire keygen), or --insecure if you mean it"),
        ))
    };
    if !addr.ip().is_loopback() && !config.insecure {
        return refuse(format!("to serve {addr}"));
    }
    if config.allow_exec && !config.insecure {
        return refuse("to allow exec".to_owned());
    }
    if config.insecure && (config.allow_exec || !addr.ip().is_loopback()) {
        warn!(%addr, exec = config.allow_exec, "INSECURE: serving without a key; anyone who can connect can use this server{}", if config.allow_exec { " and run commands on it" } else { "" });
    }
    Ok(())
}

/// Completes once no connection has been live for `idle` (never if `None`).
async fn idle_for(idle: Option<Duration>, tracker: &TaskTracker) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        // The tracker counts live connection tasks; the accept loop
        // restarts this future after every accept.
        if tracker.is_empty() {
            tokio::time::sleep(idle).await;
            if tracker.is_empty() {
                return;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
