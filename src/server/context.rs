//! What every connection of a server shares: the configuration, the
//! sandboxed root, the TLS setup, the failed-login penalties and the hash
//! cache. Handlers take it beside their session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::Config;
use crate::services::files::{HashCache, Sandbox};

/// The served root, opened: a local directory or a bucket, each a
/// [`Storage`](super::storage::Storage) (DESIGN.md, "The storage seam").
pub(crate) enum Served {
    /// A local directory, resolved by descriptor.
    Dir(Sandbox),
    /// A bucket of an object store.
    #[cfg(feature = "s3")]
    Bucket(crate::services::bucket::Bucket),
}

/// What every connection of a server shares.
pub(crate) struct Context {
    pub config: Config,
    pub root: Served,
    /// TLS configuration, when the server has a key.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub failed_logins: FailedLogins,
    /// Whole-file hashes already computed, by file version.
    pub hashes: Arc<HashCache>,
    /// Signatures of files uploads replaced, by file version.
    pub signatures: Arc<crate::session::delta::SignatureCache>,
    /// [`Config::accept_env`] as a matcher, built once.
    pub accept_env: globset::GlobSet,
}

/// Who a connection proved to be.
#[derive(Debug, Clone)]
pub(crate) enum Who {
    /// Nobody in particular: a server without a key.
    Anyone,
    /// A holder of the shared key (every right).
    SharedKey,
    /// A key of the `authorized_keys` file, as it stood then (its
    /// generation: a later one may have removed or narrowed it).
    Key(Arc<crate::auth::Authorized>, u64),
}

impl Who {
    /// How the log names it.
    pub(crate) fn name(&self) -> String {
        match self {
            Who::Anyone => "-".into(),
            Who::SharedKey => "shared-key".into(),
            Who::Key(k, _) => k.name(),
        }
    }

    /// What it may do.
    pub(crate) fn rights(&self) -> crate::auth::Rights {
        match self {
            Who::Key(k, _) => k.rights.clone(),
            _ => crate::auth::Rights::default(),
        }
    }
}

/// What one connection may do and where: its key's rights, and the root
/// it reaches (`dir=`: a directory below the served root, opened as a
/// root of its own, so that nothing outside it, links included, can be
/// reached; the kernel refuses the escape).
pub(crate) struct Scope {
    /// What the key may do.
    pub rights: crate::auth::Rights,
    /// The narrowed root, if the key has `dir=`.
    pub root: Option<Served>,
    /// Cancelled when the key is revoked while the session runs (the
    /// session's cut-off is cancelled with it): what tells a revocation
    /// from a shutdown.
    pub revoked: tokio_util::sync::CancellationToken,
}

impl Scope {
    /// The scope of `who` on `ctx`'s root: `Err` if its `dir=` cannot be
    /// opened (missing, not a directory, a symlink).
    pub(crate) fn of(ctx: &Context, who: &Who) -> Result<Scope, String> {
        let rights = who.rights();
        let root = match (&rights.dir, &ctx.root) {
            (None, _) => None,
            (Some(dir), Served::Dir(sb)) => Some(Served::Dir(
                sb.beneath(dir).map_err(|e| format!("the key's directory (dir=\"{dir}\") cannot be opened: {e}"))?,
            )),
            #[cfg(feature = "s3")]
            (Some(dir), Served::Bucket(b)) => Some(Served::Bucket(b.beneath(dir))),
        };
        Ok(Scope { rights, root, revoked: tokio_util::sync::CancellationToken::new() })
    }

    /// The root this connection's requests reach.
    pub(crate) fn served<'a>(&'a self, ctx: &'a Context) -> &'a Served {
        self.root.as_ref().unwrap_or(&ctx.root)
    }
}

/// Authentication failures per address: each failure from an address
/// makes that address's next failure wait longer before it is answered
/// (100 ms, doubling, up to [`MAX_PENALTY`]). The wait holds only the
/// failing connection, so other clients, even from the same address, are
/// served meanwhile; a client with the right key never waits.
#[derive(Debug, Default)]
pub(crate) struct FailedLogins(Mutex<HashMap<IpAddr, (u32, Instant)>>);

/// The longest an authentication failure is held before it is answered.
pub const MAX_PENALTY: Duration = Duration::from_secs(3);
/// The most sources whose failures are remembered at once.
const MAX_FAILING_SOURCES: usize = 16_384;
/// Failures older than this are forgotten.
const PENALTY_MEMORY: Duration = Duration::from_secs(600);

impl FailedLogins {
    pub(crate) fn penalty(&self, ip: IpAddr) -> Duration {
        let mut map = self.0.lock().expect("failed logins poisoned");
        let now = Instant::now();
        map.retain(|_, (_, last)| now.duration_since(*last) < PENALTY_MEMORY);
        // Bounded: failing from more sources than this at once only
        // forgets the older penalties (guessing a 256-bit key stays
        // hopeless without them).
        if map.len() >= MAX_FAILING_SOURCES {
            map.clear();
        }
        let entry = map.entry(super::admission::source(ip)).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        (Duration::from_millis(100) * 2u32.saturating_pow(entry.0 - 1)).min(MAX_PENALTY)
    }
}

/// Why a handler (or the storage under it) stopped with the connection
/// still unanswered: not a refusal, which is an answer, but what the
/// server failed at while it spoke. It ends the connection as a
/// [`wire::Error::Io`](crate::wire::Error::Io) whose inner error it is
/// (logged with the connection's end).
#[derive(Debug, thiserror::Error)]
pub(in crate::server) enum HandlerError {
    /// A reply could not be encoded as JSON.
    #[error("a reply could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The client is gone: what was being made for it has no one to go to.
    #[error("the client left")]
    ClientLeft,
    /// Reading a file (an object) being sent failed after its frame began.
    #[error("{path}: read failed mid-transfer: {source}")]
    ReadFailed {
        /// The path, as messages show it.
        path: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An object being sent grew past the length its frame announced.
    #[cfg(feature = "s3")]
    #[error("{path}: the object grew while it was read")]
    Grew {
        /// The path, as messages show it.
        path: String,
    },
    /// An object being sent ended before the length its frame announced.
    #[cfg(feature = "s3")]
    #[error("{path}: the object ended at {at} of {size} bytes")]
    EndedEarly {
        /// The path, as messages show it.
        path: String,
        /// Where it ended.
        at: u64,
        /// The size announced.
        size: u64,
    },
    /// A file was sent without its whole-file hash made on the way (nor
    /// known before).
    #[error("{path}: read ended early, with no hash of the whole file")]
    Unhashed {
        /// The path, as messages show it.
        path: String,
    },
}

impl From<HandlerError> for crate::wire::Error {
    fn from(e: HandlerError) -> Self {
        // The kind of a read's own I/O error is kept: a peer that went
        // away is told from a server failure by it.
        let kind = match &e {
            HandlerError::ReadFailed { source, .. } => {
                source.downcast_ref::<std::io::Error>().map_or(std::io::ErrorKind::Other, std::io::Error::kind)
            }
            _ => std::io::ErrorKind::Other,
        };
        crate::wire::Error::Io(std::io::Error::new(kind, e))
    }
}
