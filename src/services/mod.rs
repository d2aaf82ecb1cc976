//! What the server does for a request, apart from the wire: files in a
//! sandboxed root and processes. Nothing here knows about sockets or frames.

#[cfg(feature = "s3")]
pub mod bucket;
pub mod exec;
pub mod files;
pub mod root;
pub mod sync;

use std::io;

use crate::proto::ErrorCode;

/// A request refused or failed, as the client will be told: a code and a
/// message naming what failed and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Machine-readable cause.
    pub code: ErrorCode,
    /// For people: what failed and why.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }

    /// An I/O error on `what` (a path, as the client named it), classified.
    pub fn io(what: &str, e: &io::Error) -> Self {
        let code = match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::AlreadyExists => ErrorCode::Exists,
            io::ErrorKind::IsADirectory => ErrorCode::IsADirectory,
            io::ErrorKind::NotADirectory => ErrorCode::NotADirectory,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::DiskFull,
            io::ErrorKind::ResourceBusy => ErrorCode::Busy,
            _ => ErrorCode::Io,
        };
        let why = match code {
            ErrorCode::NotFound => "no such file or directory".to_owned(),
            ErrorCode::PermissionDenied => "permission denied".to_owned(),
            ErrorCode::DiskFull => "disk full on the server".to_owned(),
            _ => e.to_string(),
        };
        Refusal { code, message: format!("{what}: {why}") }
    }
}
