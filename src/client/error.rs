//! What a client call can fail with.

use std::io;

use crate::proto::{ErrorCode, ErrorFrame};
use crate::wire;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given, with the default port added.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// No connection, or no framewire handshake over it, within the
    /// connect timeout (a host that is down, filtered, or accepts TCP and
    /// never answers).
    #[error("cannot connect to {addr}: no answer within {after:?}")]
    ConnectTimeout {
        /// The address, with the default port added.
        addr: String,
        /// The limit that ran out.
        after: std::time::Duration,
    },
    /// Framing or transport failed; the connection is unusable.
    #[error(transparent)]
    Wire(wire::Error),
    /// The server answered with an error frame.
    #[error("server refused: {message} ({code})")]
    Remote {
        /// The error frame's code.
        code: ErrorCode,
        /// The error frame's message.
        message: String,
    },
    /// The server sent a message that makes no sense here.
    #[error("protocol violation: server sent `{got}` where {expected} was due")]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// The message type that came.
        got: String,
    },
    /// A listing named a path that is not plain and relative (`..`, an
    /// absolute path…): using it could write outside the destination, so
    /// the whole listing is refused.
    #[error("the server listed {0:?}, which is not a plain relative path; refusing the listing")]
    UnsafeName(String),
    /// The server closed the connection instead of answering.
    #[error("server closed the connection")]
    Closed,
    /// The server does not know the terminal requests (`pty`, `env`): it
    /// predates them. The connection is still usable.
    #[error("this server has no terminal support (it predates `pty` and `env`)")]
    NoTerminalSupport,
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Local {
        /// The local path.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The local target exists and `force` was not set.
    #[error("{}: already exists", .0.display())]
    LocalExists(std::path::PathBuf),
    /// The server did not accept our proof: the keys differ.
    #[error("authentication failed")]
    AuthFailed,
    /// The server could not prove it holds the key.
    #[error("the server could not prove it holds the key: it has a different key, or someone is in the middle")]
    ServerAuthFailed,
    /// The server's host key was refused: it changed, or it is not known
    /// and was not accepted.
    #[error(transparent)]
    HostKey(Box<crate::auth::known_hosts::HostKeyError>),
    /// A key of one's own could not be used (its file, its passphrase,
    /// the agent).
    #[error(transparent)]
    Identity(Box<crate::auth::IdentityError>),
    /// The server requires a key and we have none.
    #[error("the server requires a key")]
    AuthRequired,
    /// We have a key and the server has none: we refuse plaintext.
    #[error("the server has no key and speaks plaintext; refusing to talk to it in the clear with a key configured")]
    AuthUnavailable,
    /// Received data did not match the sender's whole-file checksum;
    /// nothing was kept.
    #[error(
        "{path}: checksum mismatch: received data hashes to {got}, the server's file to {expected}; nothing was kept"
    )]
    ChecksumMismatch {
        /// The remote path.
        path: String,
        /// The sender's BLAKE3.
        expected: String,
        /// What was received.
        got: String,
    },
    /// A mirror would remove more paths than its limit allows
    /// ([`PlanOptions::max_delete`](super::tree::PlanOptions::max_delete)):
    /// it removes none.
    #[error("the mirror would delete {would} paths, more than its limit of {limit}: none were deleted")]
    TooManyDeletions {
        /// Paths it would have removed.
        would: usize,
        /// The limit.
        limit: usize,
    },
    /// Backups were asked for (`--backup`) and the server does not keep
    /// them (older than them, or a bucket root): nothing was sent.
    #[error("the server keeps no backups of what a copy replaces (it is older than --backup): nothing was sent")]
    NoBackups,
    /// What the receiver does not keep, left out on purpose (a special
    /// file for a server not running as root): not a failure of the copy.
    #[error("{0}")]
    NotKept(&'static str),
}

impl ClientError {
    /// The error frame's code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<wire::Error> for ClientError {
    fn from(e: wire::Error) -> Self {
        match e {
            // A message of the protocol, but not one due here.
            wire::Error::Unexpected { kind, expected, .. } => ClientError::Unexpected { expected, got: kind },
            e => ClientError::Wire(e),
        }
    }
}

impl From<ErrorFrame> for ClientError {
    fn from(e: ErrorFrame) -> Self {
        ClientError::Remote { code: e.code, message: e.message }
    }
}

impl From<crate::auth::known_hosts::HostKeyError> for ClientError {
    fn from(e: crate::auth::known_hosts::HostKeyError) -> Self {
        ClientError::HostKey(Box::new(e))
    }
}

impl From<crate::auth::IdentityError> for ClientError {
    fn from(e: crate::auth::IdentityError) -> Self {
        ClientError::Identity(Box::new(e))
    }
}
