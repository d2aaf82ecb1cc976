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

/// About how many bytes of JSON an entry of a listing or manifest takes
/// with `path` and `attrs` (a sender's estimate, to cut frames well
/// within [`TREE_PART_MAX`]): a name's escaped byte is 8 bytes of JSON.
pub fn entry_weight(path: &str, attrs: Option<&super::Attrs>) -> usize {
    let escaped = path.bytes().filter(|&b| b == 0 || b < 0x20 || b == b'"' || b == b'\\').count();
    let attrs = attrs.map_or(0, |a| {
        let names = a.user.as_ref().map_or(0, String::len) + a.group.as_ref().map_or(0, String::len);
        let x = a.xattrs.as_ref().map_or(0, |x| x.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
        96 + names + x
    });
    // Entry members besides the path (a target or link path is counted by
    // the caller).
    192 + path.len() + 6 * escaped + attrs
}

/// Cuts entries of these weights ([`entry_weight`]) into frames: at most
/// [`TREE_PART_ENTRIES`] entries and about half of [`TREE_PART_MAX`] of
/// JSON each (one heavier entry alone in its frame). Returns each frame's
/// range of entries.
pub fn frames(weights: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut n, mut bytes) = (0, 0, 0);
    for w in weights {
        if n > 0 && (n - start >= TREE_PART_ENTRIES || bytes + w > (TREE_PART_MAX / 2) as usize) {
            out.push(start..n);
            start = n;
            bytes = 0;
        }
        bytes += w;
        n += 1;
    }
    if n > start {
        out.push(start..n);
    }
    out
}

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
    /// What a special file is (`kind` `other`, in a `meta` request), the
    /// owner, extended attributes: as the server's `tree_ready` said it
    /// keeps them (PROTOCOL.md §4.6.3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Box<super::Attrs>>,
    /// A `file` entry of a `meta` request whose contents the receiver has
    /// already (the same size and modification time): only its `mode`,
    /// owner and extended attributes are set, and only if a regular file
    /// of that `size` and time is still there (PROTOCOL.md §4.6.3.2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attrs_only: bool,
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
    /// The receiver's older version of the file, whose signature follows
    /// the `wants` frame (PROTOCOL.md §4.6.6.1): `len`, `layout` and
    /// `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<super::Basis>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_entries_and_by_bytes() {
        assert_eq!(frames([200; 2500]), [0..1000, 1000..2000, 2000..2500]);
        // Long paths: a frame holds what fits in half of TREE_PART_MAX.
        let long = 4095 + 192;
        let per = (TREE_PART_MAX / 2) as usize / long;
        assert_eq!(frames(vec![long; 300])[0], 0..per);
        // One entry heavier than a frame's budget goes alone.
        assert_eq!(frames([100, 600_000, 100]), [0..1, 1..2, 2..3]);
        assert!(frames(std::iter::empty()).is_empty());
        assert_eq!(entry_weight("a\u{0}ff", None), 192 + 4 + 6);
    }
}
