//! The bodies of the streamed tree transfer's frames (PROTOCOL.md §4.6.3):
//! JSON, at most [`TREE_PART_MAX`] bytes and [`TREE_PART_ENTRIES`]
//! entries each, so that a tree of any size moves in bounded frames.

use serde::{Deserialize, Serialize};

use super::{ErrorCode, Kind};

/// The most bytes one `manifest`, `listing`, `wants` or `committed` body
/// may hold.
pub const TREE_PART_MAX: u64 = 1024 * 1024;

/// The most entries a sender puts in one such body (a receiver takes up
/// to what fits in [`TREE_PART_MAX`]).
pub const TREE_PART_ENTRIES: usize = 1000;

/// One entry of a `tree_put` manifest, its path relative to the request's
/// directory: a file (whose data is sent if wanted), or, in a request with
/// `meta`, a symlink, a hard link, or a directory's attributes, which the
/// receiver applies at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// `/`-separated, relative, no `.` or `..` component.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch: given to the file.
    pub mtime: i64,
    /// Permission bits (masked by the receiver).
    #[serde(default)]
    pub mode: u32,
    /// The sender saw an older or different file there and means to
    /// replace it (as `force` does for this one file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// BLAKE3 (hex), when the sender knows it: the receiver then compares
    /// contents instead of size and mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// What it is (`meta` requests only; default `file`): `symlink`
    /// (made with `target`), `dir` (an existing directory given `mode` and
    /// the time, made if missing), or a `file` with `link` (a hard link).
    #[serde(default, skip_serializing_if = "is_file")]
    pub kind: Kind,
    /// The modification time in nanoseconds since the Unix epoch, exact;
    /// it wins over `mtime` where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// A symlink's target: stored as given, never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A hard link: the path (relative to the request's directory, plain)
    /// of the file this entry is another name of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

fn is_file(kind: &Kind) -> bool {
    *kind == Kind::File
}

/// One file a receiver wants: by manifest index (`tree_put`, the server
/// answering) or by path (`tree_get`, the client asking), with the bytes
/// it holds of it already.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Want {
    /// The manifest index (`tree_put`); in a `tree_get`, the sender
    /// numbers wants in the order they come and ignores this.
    #[serde(default)]
    pub i: u64,
    /// The path, relative to the request's directory (`tree_get`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Bytes held in a partial file: the sender starts there if they are
    /// the start of its file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// BLAKE3 (hex) of those bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_blake3: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An entry that failed or was refused, by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// Its index.
    pub i: u64,
    /// Why, as an error frame's code.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

/// A `wants` body: what the receiver wants sent, and (`tree_put`) what it
/// leaves out: entries it has already, entries it refuses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WantList {
    /// Send these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<Want>,
    /// Indices the receiver holds already (same size and mtime, or the
    /// same BLAKE3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<u64>,
    /// Indices refused (a different, not older file without `replace`;
    /// a bad path; …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Failed>,
    /// Indices of entries without data (`meta`: links, directories)
    /// applied now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<u64>,
}

impl WantList {
    /// Entries this answer covers.
    pub fn count(&self) -> usize {
        self.send.len() + self.unchanged.len() + self.refused.len() + self.done.len()
    }
}

/// A `committed` body: files now in place under their names, synced, and
/// files that failed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommitList {
    /// Indices committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ok: Vec<u64>,
    /// Indices that failed, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failed>,
}
