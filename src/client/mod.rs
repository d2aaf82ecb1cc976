//! The client: a typed async API over one connection to a framewire
//! server ([`Client`]), and tree copies over several ([`tree`]).

mod backup;
mod conn;
mod conversation;
mod error;
mod exec;
mod files;
mod job;
mod stream;

pub mod filter;
pub mod fleet;
pub mod hosts;
pub mod tree;

pub use crate::services::attrs::{Applying, Wanted};
pub use backup::{BackupOptions, LocalBackup};
pub use conn::{Client, Credentials, Finder, HostKeys, HANDSHAKE_TIMEOUT, IO_TIMEOUT};
pub use error::ClientError;
pub use exec::{ExecIo, ExecOptions, ExitStatus, Output, WindowSize};
pub use files::{parse_listing, DeltaMode, Progress, Transfer, TransferOptions, TreeListing, MAX_SKIPS, MKDIR_WINDOW};

pub use crate::services::exec::shell_join;
pub use crate::services::root::is_partial_name;
