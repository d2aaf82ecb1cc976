//! The request handlers, one function per request, all of one shape:
//!
//! ```text
//! async fn NAME(s: &mut Session<ServerSide>, ctx: &Context, request: REQUEST) -> Result<(), wire::Error>
//! ```
//!
//! File requests (`files`, `tree`) take the root's
//! [`Storage`](super::storage::Storage) in place of the context, and are
//! written once for a directory and a bucket. A handler
//! answers its request in full (a refusal is an answer) and returns `Ok`;
//! an `Err` means the connection must close. Only the dispatcher
//! (`super::dispatch`) calls them.

mod conversation;
pub(super) mod echo;
pub(super) mod exec;
pub(super) mod files;
pub(super) mod tree;
