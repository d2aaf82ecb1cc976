//! What the server does for a request, apart from the wire: files in a
//! sandboxed root and processes. Nothing here knows about sockets or frames.

pub mod attrs;
#[cfg(feature = "s3")]
pub mod bucket;
pub mod exec;
pub mod fault;
pub mod files;
pub mod names;
pub mod root;
pub mod sync;

use crate::proto::ErrorCode;

pub use fault::{Fault, PathRule};

/// A request refused or failed, as the client will be told: a code and a
/// message naming what failed and why. The services say why in a
/// [`Fault`], which becomes one through `From`; handlers build one
/// directly only for what is not about a path (a count over a limit).
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
}
