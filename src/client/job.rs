//! The units of a copy: one file to move ([`Job`]), which way
//! ([`Direction`]), and what a copy tells as it goes ([`Observer`]).
//! Shared by [`super::tree`], which plans and runs copies, and the
//! streamed transfer that moves them.

use std::path::PathBuf;

use super::error::ClientError;
use super::files::{Progress, Transfer};

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the server.
    Get,
    /// To the server.
    Put,
}

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its path on the server.
    pub remote: String,
    /// Its local path.
    pub local: PathBuf,
    /// Its size, as planned (for a total).
    pub size: u64,
    /// Its modification time at the source (seconds since the epoch).
    pub mtime: i64,
    /// Its permission bits at the source.
    pub mode: u32,
    /// The receiver has a different, older file under the name (or the
    /// copy is forced): replace it.
    pub replace: bool,
    /// The source's BLAKE3 (hex), when `checksum` asked the server for it.
    pub blake3: Option<String>,
}

impl Job {
    /// The path to name the file by: where it comes from.
    pub fn source(&self, direction: Direction) -> String {
        match direction {
            Direction::Get => self.remote.clone(),
            Direction::Put => self.local.display().to_string(),
        }
    }
}

/// What a copy tells as it goes. Called from the copy's tasks, so it must
/// be cheap; `id` tells apart the files under way at once.
pub trait Observer: Send + Sync {
    /// A file starts.
    fn started(&self, _id: usize, _job: &Job) {}
    /// A file moved on (see [`Progress`]).
    fn progress(&self, _id: usize, _job: &Job, _progress: Progress) {}
    /// A file ended, copied or not.
    fn finished(&self, _id: usize, _job: &Job, _outcome: &Result<Transfer, ClientError>) {}
}

/// An observer that observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Observer for Quiet {}
