//! The server: a listener with bounded connections, time limits, backed-off
//! accept errors and graceful shutdown; each connection in its own task.

mod admission;
mod config;
mod conn;
mod context;
mod dispatch;
mod handlers;
mod storage;

#[cfg(feature = "s3")]
pub use crate::services::bucket::{Bucket, BucketError, BucketSpec, StoreRequests};

#[cfg(feature = "s3")]
pub use crate::services::files::Listing;
pub use crate::services::root::Resolver;
/// Why a file request failed (what [`Bucket`]'s operations return, and
/// what a refusal's code and words come from).
pub use crate::services::{Fault, PathRule};
pub use config::{
    Config, PolicyError, Root, S3Options, ServeError, DEFAULT_ACCEPT_ENV, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_IO_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SILENT,
    DEFAULT_MAX_SILENT_PER_SOURCE, DEFAULT_MAX_STARTUPS, DEFAULT_MAX_STARTUPS_PER_SOURCE, SESSION_WAIT,
};

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::legacy::{self, Mode};
use crate::services::files::Sandbox;

/// How long a connection gets to report a killed command after the drain
/// deadline before its task is dropped.
const HARD_GRACE: Duration = Duration::from_secs(2);
/// The longest pause between accept retries after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A server, opened: its root held open (a directory by descriptor, a
/// bucket checked), its TLS configuration made. [`serve`](Self::serve)
/// runs it on a listener.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), framewire::server::ServeError> {
/// use framewire::server::{Config, Server};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(framewire::server::ServeError::Listener)?;
/// Server::open(Config::new(".")).await?.serve(listener, tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    config: Config,
    served: context::Served,
    tls: Option<Arc<rustls::ServerConfig>>,
    legacy: Vec<(Mode, TcpListener)>,
    now: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("root", &self.config.root).field("legacy", &self.legacy).finish_non_exhaustive()
    }
}

impl Server {
    /// Opens what `config` serves: the directory (made canonical in the
    /// configuration) or the bucket, and the TLS configuration with a key
    /// (a self-signed certificate unless [`Config::tls`] gives one).
    ///
    /// # Errors
    ///
    /// [`ServeError::Dir`] if the root cannot be opened as a directory,
    /// [`ServeError::Tls`], or [`PolicyError::LegacyHmacWithoutKey`].
    pub async fn open(mut config: Config) -> Result<Server, ServeError> {
        if config.legacy_hmac && config.key.is_none() {
            return Err(PolicyError::LegacyHmacWithoutKey.into());
        }
        let served = served(&mut config)?;
        if config.authorized_keys.is_some() && config.host_key.is_none() {
            return Err(PolicyError::KeysWithoutHostKey.into());
        }
        let keyed = config.key.is_some() || config.authorized_keys.is_some();
        let tls = match (keyed, &config.tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls.clone()),
            (true, None) => Some(crate::transport::server_config().map_err(ServeError::Tls)?),
        };
        Ok(Server { config, served, tls, legacy: Vec::new(), now: Box::pin(std::future::pending()) })
    }

    /// The configuration, as opened (a directory root made canonical).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Also serves the tutorial's `mode` on `listener` (see
    /// [`crate::legacy`]), sharing the root, the connection limit, logging
    /// and shutdown. Checked when [`serve`](Self::serve) starts: legacy
    /// exec needs [`Config::allow_exec`], a listener off loopback needs
    /// [`Config::legacy_hmac`] unless [`Config::insecure`], and the root
    /// must be a directory.
    pub fn legacy(mut self, mode: Mode, listener: TcpListener) -> Self {
        self.legacy.push((mode, listener));
        self
    }

    /// When `now` completes during the drain (a second Ctrl-C, say), the
    /// drain ends at once: running commands are killed and the remaining
    /// connections ended, as when [`Config::drain_timeout`] passes.
    pub fn stop_now_on(mut self, now: impl Future + Send + 'static) -> Self {
        self.now = Box::pin(async move {
            now.await;
        });
        self
    }

    /// Serves `listener` (and the legacy ones) until `shutdown` completes,
    /// then stops accepting, lets live requests finish for up to
    /// [`Config::drain_timeout`], ends the rest, and returns.
    ///
    /// A connection's errors end that connection only; they are logged
    /// with the peer's address. Accept errors (out of file descriptors, …)
    /// are logged and retried with backoff, never fatal.
    ///
    /// # Errors
    ///
    /// [`ServeError::Policy`] if the configuration would let anyone who
    /// can connect use the server (a non-loopback address or exec without
    /// a key, unless [`Config::insecure`]; the legacy listeners' rules
    /// above); nothing is served then.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future) -> Result<(), ServeError> {
        let Server { config, served, tls, legacy, now } = self;
        check_policy(&listener, &config)?;
        check_legacy_policy(&legacy, &config)?;
        if config.root.is_bucket() {
            if let Some((mode, _)) = legacy.first() {
                return Err(PolicyError::LegacyOnBucket { mode: mode.to_string() }.into());
            }
        }
        run(listener, legacy, config, served, tls, shutdown, now).await.map_err(ServeError::Listener)
    }
}

async fn run(
    listener: TcpListener,
    legacy: Vec<(Mode, TcpListener)>,
    config: Config,
    served: context::Served,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future,
    now: impl Future,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let startups = Arc::new(admission::Startups::new(config.max_startups, config.max_startups_per_source));
    // The legacy listeners' challenged connections have a table of their
    // own: the server speaks first there, so silence cannot tell a flood
    // from a client, and a flood on a legacy port must not take the places
    // native clients need.
    let legacy_startups = Arc::new(admission::Startups::new(config.max_startups, config.max_startups_per_source));
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    // Each of the two sets of connections that have not spoken fits in a
    // quarter of the descriptors; the other half is for the handshake
    // table, its queue and the sessions.
    let (max, per_source) = (config.max_silent, config.max_silent_per_source);
    let door = Arc::new(admission::Door {
        silent: Arc::new(admission::Silent::sized(max, per_source, open_files / 4, "silent connections")),
        answered: Arc::new(admission::Silent::sized(
            max,
            per_source,
            open_files / 4,
            "connections silent after their preface",
        )),
    });
    let (max_silent, per_source) = door.silent.bounds();
    if max_silent < config.max_silent {
        warn!(
            open_files,
            max_silent, per_source, "few file descriptors: fewer silent connections are held (raise `ulimit -n`)"
        );
    }
    let ctx = Arc::new(context::Context {
        accept_env: config.accept_env_set(),
        config,
        root: served,
        tls,
        failed_logins: context::FailedLogins::default(),
        hashes: Arc::default(),
        signatures: Arc::default(),
    });
    let shared = Arc::new(Shared {
        ctx,
        limit,
        startups,
        legacy_startups,
        door,
        graceful: CancellationToken::new(),
        hard: CancellationToken::new(),
        tracker: TaskTracker::new(),
        last_active: std::sync::Mutex::new(std::time::Instant::now()),
        live: Arc::default(),
    });
    let config = &shared.ctx.config;
    for (mode, l) in &legacy {
        info!(%mode, addr = %l.local_addr()?, "legacy listener");
    }

    let stop = CancellationToken::new();
    if let Some(age) = config.partial_max_age {
        tokio::spawn(prune_partials(shared.ctx.clone(), age, stop.clone()));
    }
    let loops: Vec<_> = legacy
        .into_iter()
        .map(|(mode, l)| tokio::spawn(accept_loop(l, Some(mode), shared.clone(), stop.clone())))
        .collect();
    let native = accept_loop(listener, None, shared.clone(), stop.clone());
    tokio::select! {
        _ = native => {}
        _ = shutdown => {}
        _ = idle_for(config.exit_when_idle, &shared) => {
            info!(idle = ?config.exit_when_idle, "no client for the exit-when-idle time");
        }
    }
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }

    let tracker = &shared.tracker;
    info!(live = tracker.len(), "shutting down: no new connections; draining live requests");
    shared.graceful.cancel();
    tracker.close();
    let drained = tokio::select! {
        done = tokio::time::timeout(config.drain_timeout, tracker.wait()) => {
            if done.is_err() {
                warn!(live = tracker.len(), drain = ?config.drain_timeout, "drain timeout: ending the remaining connections");
            }
            done.is_ok()
        }
        _ = now => {
            warn!(live = tracker.len(), "stopping at once: ending the remaining connections");
            false
        }
    };
    if !drained {
        shared.hard.cancel();
        tracker.wait().await;
    }
    info!("server stopped");
    Ok(())
}

/// How often abandoned partial files are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Removes partial files older than `age` at start and every
/// [`PRUNE_EVERY`] (on a bucket: aborts the uploads whose records are
/// that old), logging each, until `stop`.
async fn prune_partials(ctx: Arc<context::Context>, age: Duration, stop: CancellationToken) {
    loop {
        let removed = match &ctx.root {
            context::Served::Dir(sb) => {
                let sb = sb.clone();
                match tokio::task::spawn_blocking(move || sb.prune_partials(age)).await {
                    Ok(Ok(removed)) => Ok(removed),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            #[cfg(feature = "s3")]
            context::Served::Bucket(b) => b.prune_uploads(age).await.map_err(|f| f.to_string()),
        };
        match removed {
            Ok(removed) => {
                for (path, size) in removed {
                    info!(path = %crate::text::printable(&path), size, max_age = ?age, "removed an abandoned partial file");
                }
            }
            Err(e) => warn!("looking for abandoned partial files: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// The most open files [`raise_open_files`] asks for: Linux's default
/// `fs.nr_open`, the ceiling when the hard limit says "unlimited".
const MAX_OPEN_FILES: u64 = 1 << 20;

/// Raises this process's soft open-file limit to its hard limit, as a
/// server needs (Go's runtime and nginx do the same): each silent
/// connection, handshake and session holds descriptors, and each of the
/// two silent sets is cut to a quarter of the limit in force when a server
/// starts (the 1,024 many systems give by default would hold 256).
/// Commands run by exec get the limit the process started with back.
/// Returns the limit now in force.
///
/// # Errors
///
/// If the limit cannot be set.
pub fn raise_open_files() -> std::io::Result<u64> {
    let at_start = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = at_start.maximum.unwrap_or(MAX_OPEN_FILES).min(MAX_OPEN_FILES);
    crate::services::exec::keep_open_files_for_commands(at_start);
    crate::client::fleet::raise_open_files(hard)
}

/// What every listener of a server shares.
struct Shared {
    ctx: Arc<context::Context>,
    /// Session slots, native and legacy together.
    limit: Arc<Semaphore>,
    /// Handshake slots of the native listener.
    startups: Arc<admission::Startups>,
    /// The legacy listeners' own handshake table (`--legacy-hmac`).
    legacy_startups: Arc<admission::Startups>,
    /// Native connections that have not spoken yet.
    door: Arc<admission::Door>,

    /// Ends idle connections and lets busy ones finish their request.
    graceful: CancellationToken,
    /// Ends whatever is left once the drain time is up.
    hard: CancellationToken,
    tracker: TaskTracker,
    /// When the last connection ended (for --exit-when-idle).
    last_active: std::sync::Mutex<std::time::Instant>,
    /// Connections live now, and the most since memory was last given back.
    live: Arc<Live>,
}

/// Counts live connections, and gives the allocator's free memory back to
/// the system once a burst is over.
///
/// glibc's allocator keeps what a burst of connections freed in its
/// per-thread arenas: without this, a server that served 5,000 clients at
/// once stays near that peak's size for good (docs/BENCHMARKS.md, "Memory
/// after a burst", has the figures). `malloc_trim(3)` hands the free pages
/// back. It runs on a blocking thread, at most once a second (a trim due
/// sooner waits for its second), whenever the live count has fallen to a
/// quarter of a peak of at least [`TRIM_AFTER`] connections.
#[derive(Debug, Default)]
struct Live {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// The smallest burst worth giving memory back after.
const TRIM_AFTER: usize = 64;
/// The least time between two trims.
const TRIM_EVERY: Duration = Duration::from_secs(1);

impl Live {
    fn opened(&self) {
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
    }

    fn closed(self: &Arc<Self>) {
        let now = self.now.fetch_sub(1, Relaxed) - 1;
        let peak = self.peak.load(Relaxed);
        if peak < TRIM_AFTER || now * 4 > peak {
            return;
        }
        let live = self.clone();
        give_back_memory_soon(move || live.peak.store(live.now.load(Relaxed), Relaxed));
    }
}

/// A trim is scheduled (one allocator per process, so one flag).
static TRIM_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Gives the allocator's free memory back to the system in a moment (at
/// most once every [`TRIM_EVERY`]: what goes in a rush, a burst's
/// connections or a large upload's state, is given back in one trim
/// after it), calling `before` just before. A trim already scheduled
/// covers this one: `before` is then dropped. Outside a runtime (a
/// server's state dropped by a unit test), nothing is scheduled.
pub(crate) fn give_back_memory_soon(before: impl FnOnce() + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    if TRIM_PENDING.swap(true, Relaxed) {
        return;
    }
    runtime.spawn(async move {
        tokio::time::sleep(TRIM_EVERY).await;
        before();
        let _ = tokio::task::spawn_blocking(give_back_memory).await;
        TRIM_PENDING.store(false, Relaxed);
    });
}

/// Returns the allocator's free memory to the system (glibc only; other
/// allocators return it themselves or not at all).
fn give_back_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Accepts on one listener until `stop`, each connection in its own task.
/// One loop serves the native listener and every legacy one.
///
/// It accepts whatever arrives, so the kernel's backlog never fills with
/// clients nobody will look at: a native connection joins the silent set
/// at once (evicting its oldest if full), a handshake slot once it has
/// spoken (see [`admission`]) and, once authenticated, a session slot; a
/// legacy connection, which has no handshake, a session slot at once.
async fn accept_loop(listener: TcpListener, mode: Option<Mode>, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (socket, peer) = tokio::select! {
            accepted = accept(&listener, &shared.door) => accepted,
            _ = stop.cancelled() => return,
        };
        let admitted = match mode {
            // In the silent set before its task exists: the set's bound
            // holds however far behind the tasks are.
            None => Admitted::Native(shared.door.silent.enter(peer.ip())),
            // With the HMAC challenge, a legacy connection is unproven
            // until it answers: it waits in a handshake table too (the
            // legacy listeners' own).
            Some(mode) if shared.ctx.config.legacy_hmac => Admitted::LegacyChallenged(mode),
            Some(mode) => match shared.limit.clone().try_acquire_owned() {
                Ok(permit) => Admitted::Legacy(mode, permit),
                Err(_) => {
                    warn!(%peer, %mode, max = shared.ctx.config.max_connections, "legacy connection refused: server busy");
                    continue;
                }
            },
        };
        let s = shared.clone();
        s.live.opened();
        shared.tracker.spawn(async move {
            let ctx = &s.ctx;
            // Every line logged for this connection carries the peer.
            let span = tracing::info_span!("conn", %peer);
            tokio::select! {
                _ = async {
                    match admitted {
                        Admitted::Native(silent) => {
                            let gate = conn::Gate { silent, door: &s.door, startups: &s.startups, sessions: &s.limit };
                            conn::serve(socket, peer, ctx, gate, &s.graceful, &s.hard).await
                        }
                        // The slot goes back when the task ends, however
                        // it ends. Boxed, as the native connection's later
                        // stages are: a task is as small as a silent one.
                        Admitted::Legacy(mode, _permit) => {
                            if let Some(lctx) = legacy_context(ctx) {
                                Box::pin(legacy::serve(mode, socket, peer, lctx)).await
                            }
                        }
                        // Boxed too.
                        Admitted::LegacyChallenged(mode) => Box::pin(async {
                            // The server speaks first here (the challenge):
                            // a place in the legacy listeners' handshake
                            // table, waiting for one in a burst (within the
                            // handshake deadline).
                            let deadline = tokio::time::Instant::now() + ctx.config.handshake_timeout;
                            let startup = tokio::select! {
                                admitted = s.legacy_startups.admit(peer.ip(), deadline) => admitted,
                                () = s.graceful.cancelled() => return,
                            };
                            let Some(startup) = startup else {
                                info!(%peer, "closed: no place in the handshake table came free in time");
                                return;
                            };
                            let mut socket = socket;
                            let Some(lctx) = legacy_context(ctx) else { return };
                            let key = lctx.hmac.expect("legacy_hmac has a key (checked at start)");
                            let passed = tokio::select! {
                                passed = legacy::authenticate(mode, &mut socket, peer, key, lctx.io_timeout) => passed,
                                () = startup.evicted() => false,
                            };
                            drop(startup);
                            if !passed {
                                return;
                            }
                            let Ok(_permit) = s.limit.clone().try_acquire_owned() else {
                                warn!(%peer, %mode, max = ctx.config.max_connections, "legacy connection refused: server busy");
                                return;
                            };
                            legacy::serve(mode, socket, peer, legacy::Legacy { hmac: None, ..lctx }).await
                        }).await,
                    }
                }.instrument(span) => {}
                // A request that ignores `hard` (none should) is dropped
                // shortly after: its process groups die with their guards.
                _ = async { s.hard.cancelled().await; tokio::time::sleep(HARD_GRACE).await } => {
                    warn!(%peer, "request cut off: drain timeout reached")
                }
            }
            *s.last_active.lock().expect("poisoned") = std::time::Instant::now();
            s.live.closed();
        });
    }
}

/// How a new connection is let in.
enum Admitted {
    /// Through the silent set, the handshake table (with a key), then a
    /// session slot.
    Native(admission::SilentPlace),
    /// With the session slot it took at once (no handshake).
    Legacy(Mode, tokio::sync::OwnedSemaphorePermit),
    /// A legacy connection that must answer the HMAC challenge first, in
    /// the handshake table.
    LegacyChallenged(Mode),
}

/// A listener on `addr` with a listen backlog of `backlog` (the standard
/// library's, and so `TcpListener::bind`'s, is 128: a burst of clients
/// past that waits for SYN retries, a second or more).
///
/// # Errors
///
/// If `addr` does not resolve, or binding fails.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(backlog),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")))
}

/// What a legacy listener serves: a directory (a bucket root is refused
/// legacy listeners at start, so `None` never comes to pass).
fn legacy_context(ctx: &context::Context) -> Option<legacy::Legacy<'_>> {
    let c = &ctx.config;
    #[allow(irrefutable_let_patterns)]
    let context::Served::Dir(sandbox) = &ctx.root
    else {
        return None;
    };
    Some(legacy::Legacy {
        sandbox,
        shell: &c.shell,
        allow_exec: c.allow_exec,
        hmac: if c.legacy_hmac { c.key.as_ref() } else { None },
        io_timeout: c.timeouts.io.unwrap_or(DEFAULT_IO_TIMEOUT),
        idle_timeout: c.timeouts.idle.unwrap_or(DEFAULT_IDLE_TIMEOUT),
    })
}

/// What the files service works on: the bucket, if the root is one, else
/// the directory (made canonical in `config.root`).
fn served(config: &mut Config) -> Result<context::Served, ServeError> {
    let dir = match &config.root {
        #[cfg(feature = "s3")]
        Root::Bucket(bucket) => {
            info!(root = %bucket.spec().url(), exec_dir = ?config.exec_dir, "serving a bucket");
            return Ok(context::Served::Bucket(bucket.clone()));
        }
        Root::Dir(dir) => dir,
    };
    let mut sandbox = Sandbox::new(dir).map_err(|source| ServeError::Dir { path: dir.clone(), source })?;
    if let Some(resolver) = config.resolver {
        sandbox = sandbox.with_resolver(resolver);
    }
    info!(root = %sandbox.root().display(), resolver = ?sandbox.resolver(), "serving");
    config.root = Root::Dir(sandbox.root().to_owned());
    Ok(context::Served::Dir(sandbox))
}

/// Legacy listeners follow the native exec policy, and without the HMAC
/// challenge they authenticate no one.
fn check_legacy_policy(legacy: &[(Mode, TcpListener)], config: &Config) -> Result<(), ServeError> {
    for (mode, l) in legacy {
        let addr = l.local_addr().map_err(ServeError::Listener)?;
        let (exec, mode) = (mode.is_exec(), mode.to_string());
        if exec && !config.allow_exec {
            return Err(PolicyError::LegacyExecNotAllowed { mode, addr }.into());
        }
        if !config.legacy_hmac && !addr.ip().is_loopback() && !config.insecure {
            return Err(PolicyError::OpenLegacy { mode, addr }.into());
        }
        if !config.legacy_hmac && exec {
            warn!(%mode, %addr, "legacy exec without the HMAC challenge: any local user can run commands through it");
        }
    }
    Ok(())
}

/// Without a key, anyone who can reach the server can use it: allowed on
/// loopback, and for exec or other addresses only with `insecure`.
fn check_policy(listener: &TcpListener, config: &Config) -> Result<(), ServeError> {
    if config.key.is_some() || config.authorized_keys.is_some() {
        return Ok(());
    }
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    if !addr.ip().is_loopback() && !config.insecure {
        return Err(PolicyError::OpenAddress(addr).into());
    }
    if config.allow_exec && !config.insecure {
        return Err(PolicyError::OpenExec.into());
    }
    if config.insecure && (config.allow_exec || !addr.ip().is_loopback()) {
        warn!(%addr, exec = config.allow_exec, "INSECURE: serving without a key; anyone who can connect can use this server{}", if config.allow_exec { " and run commands on it" } else { "" });
    }
    Ok(())
}

/// Completes once no connection has been live for `idle` (never if `None`).
async fn idle_for(idle: Option<Duration>, shared: &Shared) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        let quiet = shared.last_active.lock().expect("poisoned").elapsed();
        if shared.tracker.is_empty() && quiet >= idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100).min(idle)).await;
    }
}

/// The next connection on `listener`. Out of file descriptors (`EMFILE`,
/// `ENFILE`), the oldest silent connection is evicted to make room and
/// the accept retried: the kernel's backlog, where a good client would
/// otherwise wait behind sockets that never speak, keeps moving.
async fn accept(listener: &TcpListener, door: &admission::Door) -> (TcpStream, std::net::SocketAddr) {
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && door.evict_oldest("server busy: out of file descriptors") {
                    // Its task closes it when it next runs.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
