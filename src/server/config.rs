//! What a server serves and its limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Key;
use crate::wire::Timeouts;

/// Authenticated connections (sessions) served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Connections in their handshake (not yet authenticated) at once by
/// default; when full, a new one evicts the oldest (see
/// `docs/SECURITY.md`).
pub const DEFAULT_MAX_STARTUPS: usize = 64;
/// Connections in their handshake from one address at once by default; a
/// new one from it evicts that address's oldest.
pub const DEFAULT_MAX_STARTUPS_PER_SOURCE: usize = 16;
/// Connections held before they have spoken (sent their preface and,
/// with a key, their first TLS bytes) at once by default: a socket and a
/// small task each, so many can be, and a flood of a few thousand idle
/// sockets churns nothing. When full, a newcomer evicts the oldest (see
/// `docs/SECURITY.md`). Cut at start to a quarter of the open-file limit
/// (as is the set of those silent after their preface).
pub const DEFAULT_MAX_SILENT: usize = 4096;
/// Connections held before they have spoken from one address at once by
/// default: a quarter of [`DEFAULT_MAX_SILENT`], as a source's handshake
/// share is a quarter of [`DEFAULT_MAX_STARTUPS`]; a new one from an
/// address at its share evicts that address's oldest.
pub const DEFAULT_MAX_SILENT_PER_SOURCE: usize = 1024;
/// The listen backlog [`bind`](super::bind) asks for by default (the kernel caps it at
/// `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: u32 = 1024;
/// How long an authenticated connection waits for a session slot before
/// it is told the server is busy.
pub const SESSION_WAIT: Duration = Duration::from_secs(5);
/// How long a connection may sit between requests by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a started frame head, any body read, or any write may stall by
/// default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the preface exchange may take by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for live requests by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a server serves and its limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The served directory (unless [`bucket`](Self::bucket) is set).
    pub root: PathBuf,
    /// A bucket of an object store served as the root instead of
    /// [`root`](Self::root) (`serve --root s3://BUCKET[/PREFIX]`).
    #[cfg(feature = "s3")]
    pub bucket: Option<crate::services::bucket::Bucket>,
    /// Where commands run: by default the served directory; with a bucket
    /// root there is none, and exec is refused unless this names a local
    /// directory (`--exec-dir`).
    pub exec_dir: Option<PathBuf>,
    /// Authenticated connections (sessions) served at once, native and
    /// legacy together.
    pub max_connections: usize,
    /// Connections in their handshake at once; when full, a new one
    /// evicts the oldest.
    pub max_startups: usize,
    /// Connections in their handshake from one address (an IPv6 /64) at
    /// once; a new one from it evicts that address's oldest.
    pub max_startups_per_source: usize,
    /// Connections that have not spoken yet, held at once (at most half
    /// the open-file limit); a new one always gets in, and the oldest
    /// silent one is evicted.
    pub max_silent: usize,
    /// Connections that have not spoken yet from one address (an IPv6
    /// /64) at once; a new one from it evicts that address's oldest.
    pub max_silent_per_source: usize,
    /// How paths are resolved beneath the root; `None` picks `openat2`
    /// where the kernel has it.
    pub resolver: Option<crate::services::root::Resolver>,
    /// Idle and I/O limits on every connection.
    pub timeouts: Timeouts,
    /// Limit for the preface exchange.
    pub handshake_timeout: Duration,
    /// After shutdown is asked for, how long live requests may go on.
    pub drain_timeout: Duration,
    /// Serve `exec` requests.
    pub allow_exec: bool,
    /// Serve the streamed tree requests (`tree_list`, `tree_put`,
    /// `tree_get`; on by default). Off, they are answered `unknown_type`,
    /// as a server older than them answers: clients then copy trees one
    /// request per file. For testing that fallback.
    pub tree_streaming: bool,
    /// Remove partial files older than this at start and every hour
    /// (`None`: keep them); 7 days by default.
    pub partial_max_age: Option<Duration>,
    /// Serve the terminal requests (`pty`, `env`; on by default). Off,
    /// they are answered `unknown_type`, as a server older than them
    /// answers. For testing what clients do then.
    pub terminal_requests: bool,
    /// The shell `exec` runs commands with (`SHELL -c COMMAND`).
    pub shell: PathBuf,
    /// The shell of an interactive session (`exec` with `login`, what
    /// `framewire shell` asks for); `None`: the server user's login shell
    /// from the password database, or [`shell`](Self::shell).
    pub login_shell: Option<PathBuf>,
    /// Environment variables a client may set for its commands, as
    /// patterns (`*` and `?`, like sshd's `AcceptEnv`); by default `TERM`,
    /// `LANG` and `LC_*`.
    pub accept_env: Vec<String>,
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
    /// Challenge every legacy connection with HMAC-MD5 over the key's line.
    pub legacy_hmac: bool,
}

/// The variables a client may set by default.
pub const DEFAULT_ACCEPT_ENV: &[&str] = &["TERM", "LANG", "LC_*"];

impl Config {
    /// [`accept_env`](Self::accept_env) as a matcher; a pattern that is
    /// not a valid glob matches only itself.
    pub fn accept_env_set(&self) -> globset::GlobSet {
        let mut set = globset::GlobSetBuilder::new();
        for p in &self.accept_env {
            let glob = globset::Glob::new(p).or_else(|_| globset::Glob::new(&globset::escape(p)));
            if let Ok(glob) = glob {
                set.add(glob);
            }
        }
        set.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }

    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Config {
            root: root.into(),
            #[cfg(feature = "s3")]
            bucket: None,
            exec_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_startups: DEFAULT_MAX_STARTUPS,
            max_startups_per_source: DEFAULT_MAX_STARTUPS_PER_SOURCE,
            max_silent: DEFAULT_MAX_SILENT,
            max_silent_per_source: DEFAULT_MAX_SILENT_PER_SOURCE,
            resolver: None,
            timeouts: Timeouts { idle: Some(DEFAULT_IDLE_TIMEOUT), io: Some(DEFAULT_IO_TIMEOUT) },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            allow_exec: false,
            tree_streaming: true,
            terminal_requests: true,
            partial_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            shell: PathBuf::from("/bin/sh"),
            login_shell: None,
            accept_env: DEFAULT_ACCEPT_ENV.iter().map(|p| (*p).to_owned()).collect(),
            exit_when_idle: None,
            key: None,
            tls: None,
            insecure: false,
            legacy_hmac: false,
        }
    }
}

/// A configuration the server refuses to run with: it would let anyone who
/// can connect use it. Returned inside the `PermissionDenied` I/O error of
/// [`run`](super::run) (`io::Error::get_ref` gives it back).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A non-loopback address without a key ([`Config::insecure`] allows it).
    #[error("refusing to serve {0} without a key: anyone who can connect could use it")]
    OpenAddress(std::net::SocketAddr),
    /// Exec without a key ([`Config::insecure`] allows it).
    #[error("refusing to allow exec without a key: anyone who can connect could run commands")]
    OpenExec,
    /// [`Config::legacy_hmac`] without [`Config::key`].
    #[error("the legacy HMAC challenge needs a key")]
    LegacyHmacWithoutKey,
    /// A legacy exec listener while [`Config::allow_exec`] is off.
    #[error("legacy {mode} on {addr} runs commands, and exec is not allowed")]
    LegacyExecNotAllowed {
        /// The listener's format.
        mode: String,
        /// Its address.
        addr: std::net::SocketAddr,
    },
    /// A legacy listener with a bucket root (the tutorial formats serve
    /// a local directory only).
    #[error("legacy {mode} serves a local directory only, and the root is a bucket")]
    LegacyOnBucket {
        /// The listener's format.
        mode: String,
    },
    /// A legacy listener on a non-loopback address without the HMAC
    /// challenge.
    #[error("refusing legacy {mode} on {addr} without the HMAC challenge: anyone who can connect could use it")]
    OpenLegacy {
        /// The listener's format.
        mode: String,
        /// Its address.
        addr: std::net::SocketAddr,
    },
}
