//! The request handlers, one function per request, all of one shape:
//!
//! ```text
//! async fn NAME(s: &mut Session<ServerSide>, ctx: &Context, request: REQUEST) -> Result<(), wire::Error>
//! ```
//!
//! (the file handlers of a bucket root, in `bucket`, take the bucket in
//! place of the context). A handler answers its request in full (a
//! refusal is an answer) and returns `Ok`; an `Err` means the connection
//! must close. Only the dispatcher (`super::dispatch`) calls them, and it
//! routes file requests by the root's storage.

#[cfg(feature = "s3")]
pub(super) mod bucket;
pub(super) mod echo;
pub(super) mod exec;
pub(super) mod files;
pub(super) mod tree;

use tokio::task::spawn_blocking;

use crate::proto::ErrorCode;
use crate::services::Refusal;

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Refusal> + Send + 'static) -> Result<T, Refusal> {
    spawn_blocking(f).await.unwrap_or_else(|e| Err(Refusal::new(ErrorCode::Internal, format!("file task failed: {e}"))))
}
