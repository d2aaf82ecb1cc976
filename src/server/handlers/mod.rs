//! The request handlers, one function per request, all of one shape:
//!
//! ```text
//! async fn NAME(s: &mut Session<ServerSide>, ctx: &Context, request: REQUEST) -> Result<(), wire::Error>
//! ```
//!
//! File requests (`files`) take the root's [`Storage`](super::storage::Storage)
//! in place of the context, and are written once for a directory and a
//! bucket. The tree requests are still each root's own (`tree` and
//! `bucket`) until they move onto the seam too (issue 29). A handler
//! answers its request in full (a refusal is an answer) and returns `Ok`;
//! an `Err` means the connection must close. Only the dispatcher
//! (`super::dispatch`) calls them.

#[cfg(feature = "s3")]
pub(super) mod bucket;
pub(super) mod echo;
pub(super) mod exec;
pub(super) mod files;
pub(super) mod tree;
