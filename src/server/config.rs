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
    /// What is served: a directory or a bucket.
    pub root: Root,
    /// Where commands run: by default the served directory; a bucket root
    /// has none, and exec is refused there unless this names a local
    /// directory.
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
    /// `--authorized-keys`: keys per person, each with its rights, read
    /// again when the file changes (issue 31). With it, every connection
    /// runs over TLS 1.3, and [`host_key`](Self::host_key) is required.
    pub authorized_keys: Option<Arc<crate::auth::KeyFile>>,
    /// `--host-key`: the server's own key (OpenSSH's format), which it
    /// signs each handshake with and clients keep in `known_hosts`.
    pub host_key: Option<Arc<crate::auth::Identity>>,
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

    /// Defaults for serving the directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::for_root(Root::Dir(dir.into()))
    }

    /// Defaults for serving `root`.
    pub fn for_root(root: Root) -> Self {
        Config {
            root,
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
            authorized_keys: None,
            host_key: None,
            tls: None,
            insecure: false,
            legacy_hmac: false,
        }
    }
}

/// What a server serves: one directory, or one bucket of an object store,
/// never both.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Root {
    /// A local directory; every path is resolved beneath it by descriptor.
    Dir(PathBuf),
    /// A bucket (below a prefix), opened: its store answered and took the
    /// credentials.
    #[cfg(feature = "s3")]
    Bucket(crate::services::bucket::Bucket),
}

impl Root {
    /// Opens the root `name` names, as `serve --root` takes it:
    /// `s3://BUCKET[/PREFIX]` is a bucket (at `s3`'s endpoint, with the
    /// credentials of the usual AWS variables or profile), anything else
    /// a directory (opened when the server starts).
    ///
    /// # Errors
    ///
    /// [`ServeError::Bucket`] for an `s3://` name that is not a bucket's,
    /// or a bucket that cannot be opened; [`ServeError::NoBuckets`] for an
    /// `s3://` name when this framewire was built without the `s3`
    /// feature.
    pub async fn open(name: &std::path::Path, s3: S3Options) -> Result<Root, ServeError> {
        let Some(url) = name.to_str().filter(|n| n.starts_with("s3://")) else {
            return Ok(Root::Dir(name.to_owned()));
        };
        #[cfg(feature = "s3")]
        {
            use crate::services::bucket::{Bucket, BucketSpec};
            let bucket = |source| ServeError::Bucket { url: url.to_owned(), source };
            let spec =
                BucketSpec::parse(url).map_err(bucket)?.with_endpoint(s3.endpoint).with_allow_http(s3.allow_http);
            Ok(Root::Bucket(Bucket::open(spec).await.map_err(bucket)?))
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = s3;
            Err(ServeError::NoBuckets(url.to_owned()))
        }
    }

    /// Whether this is a bucket.
    pub fn is_bucket(&self) -> bool {
        !matches!(self, Root::Dir(_))
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Dir(path) => write!(f, "{}", path.display()),
            #[cfg(feature = "s3")]
            Root::Bucket(b) => f.write_str(&b.spec().url()),
        }
    }
}

/// How an `s3://` root is reached (see [`Root::open`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct S3Options {
    /// The S3 endpoint, for stores other than AWS (path-style requests);
    /// `None`: `AWS_ENDPOINT_URL`, else AWS's own for the region.
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint (a test store on loopback).
    pub allow_http: bool,
}

impl S3Options {
    /// At `endpoint`, `http://` allowed or not.
    pub fn new(endpoint: Option<String>, allow_http: bool) -> Self {
        S3Options { endpoint, allow_http }
    }
}

/// Why a server did not start: nothing was served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration would let anyone who can connect use the server.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The directory root cannot be served.
    #[error("cannot serve {}: {source}", path.display())]
    Dir {
        /// The root as given.
        path: PathBuf,
        /// Why (not there, not a directory, no permission…).
        #[source]
        source: std::io::Error,
    },
    /// The bucket root cannot be opened.
    #[cfg(feature = "s3")]
    #[error("cannot serve {url}: {source}")]
    Bucket {
        /// The root as given.
        url: String,
        /// Why.
        #[source]
        source: crate::services::bucket::BucketError,
    },
    /// An `s3://` root, and this framewire was built without the `s3`
    /// feature.
    #[error("cannot serve {0}: this framewire was built without the `s3` feature")]
    NoBuckets(String),
    /// The TLS configuration (the generated certificate) cannot be made.
    #[error("cannot make the TLS configuration: {0}")]
    Tls(#[source] std::io::Error),
    /// A listener's address cannot be read.
    #[error("the listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// A configuration the server refuses to run with: it would let anyone who
/// can connect use it ([`ServeError::Policy`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A non-loopback address without a key ([`Config::insecure`] allows it).
    #[error("refusing to serve {0} without a key: anyone who can connect could use it")]
    OpenAddress(std::net::SocketAddr),
    /// Exec without a key ([`Config::insecure`] allows it).
    #[error("refusing to allow exec without a key: anyone who can connect could run commands")]
    OpenExec,
    /// [`Config::authorized_keys`] without [`Config::host_key`].
    #[error("--authorized-keys needs --host-key: the server proves itself to clients with its own key (make one with: framewire keygen --ssh FILE, or ssh-keygen -t ed25519 -N '' -f FILE)")]
    KeysWithoutHostKey,
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
