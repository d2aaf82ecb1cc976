//! Why a request on a served root failed, typed: [`Fault`] says the kind
//! and the path as the client named it, and one conversion into a
//! [`Refusal`] picks the wire code and writes each wording, once.
//!
//! No wording names a CLI flag: what to type about a refusal is the CLI's
//! to say (`cli::explained_for`), keyed on the code.

use std::io;

use super::files::shown;
use super::root::{MAX_PATH_BYTES, MAX_PATH_DEPTH};
use super::Refusal;
use crate::proto::ErrorCode;

/// Why a request on a served root (a directory or a bucket) failed. Each
/// variant is one kind of failure, with the path as the client named it
/// (quoted back cut short) and what its message needs;
/// `Refusal::from` turns it into what the client is told.
#[derive(Debug, thiserror::Error)]
#[error("{}", Refusal::from_fault(self).message)]
#[non_exhaustive]
pub enum Fault {
    /// Nothing is at `path`.
    NotFound {
        /// The path.
        path: String,
    },
    /// The directory `path` would be in does not exist.
    NoParent {
        /// The path.
        path: String,
    },
    /// Something is at `path`, and nothing may replace it (no `force`, or
    /// a directory made without parents).
    Exists {
        /// The path.
        path: String,
    },
    /// A file at `path` differs from the one sent and is not older than
    /// it: a sync does not replace it.
    NotOlder {
        /// The path.
        path: String,
    },
    /// A file (not a directory) is at `path`, which was to be a directory
    /// (`mkdir` with parents, in a directory root; a bucket says
    /// [`NotADirectory`](Fault::NotADirectory)).
    ExistsNotADirectory {
        /// The path.
        path: String,
    },
    /// What is at `path` is not a regular file (a symlink, a FIFO…) and a
    /// file was to be written there.
    NotAFile {
        /// The path.
        path: String,
    },
    /// A file was to be written or read at `path`, and it is a directory.
    IsADirectory {
        /// The path.
        path: String,
    },
    /// `path` ends in `/` and names a file to write.
    TrailingSlash {
        /// The path.
        path: String,
    },
    /// `path` was to be a directory, and it is not.
    NotADirectory {
        /// The path.
        path: String,
    },
    /// A component above `path` is not a directory.
    ParentNotADirectory {
        /// The path.
        path: String,
    },
    /// A component above `path` is not a directory, or is a symlink (what
    /// is removed or moved is reached without following any).
    ParentNotPlain {
        /// The path.
        path: String,
    },
    /// `path` breaks a rule of the paths a client may name.
    BadPath {
        /// The path.
        path: String,
        /// The rule.
        why: PathRule,
    },
    /// A `get` of something that is not a regular file nor a directory (a
    /// FIFO, a socket, a device).
    NotRegular {
        /// The path.
        path: String,
    },
    /// What the root cannot keep: a symlink or hard link on a bucket, a
    /// symlink target it cannot store.
    NotKept {
        /// The path.
        path: String,
        /// What was refused, in a few words ("a bucket root keeps no
        /// symlinks").
        why: &'static str,
    },
    /// The connection's key may not do this (`authorized_keys` options).
    NotPermitted {
        /// The path.
        path: String,
        /// What it may not do, as `permit=` spells it (`put`,
        /// `overwrite`…).
        verb: &'static str,
    },
    /// Another upload of `path` holds it.
    Busy {
        /// The path.
        path: String,
    },
    /// Another upload of `path` was committed first; the client asks again.
    FinishedFirst {
        /// The path.
        path: String,
    },
    /// What the server held of `path` (a partial file, stored parts)
    /// changed between its offer and the upload.
    OfferChanged {
        /// The path.
        path: String,
    },
    /// The store forgot the multipart upload a resume of `path` continued.
    UploadGone {
        /// The path.
        path: String,
    },
    /// The object at `path` changed while it was read.
    ChangedWhileRead {
        /// The path.
        path: String,
    },
    /// A listing of `path` would take more than `budget` bytes.
    ListingTooLarge {
        /// The path.
        path: String,
        /// The bytes a listing may take.
        budget: u64,
    },
    /// More than `max` objects are below `path` to copy.
    TooManyObjects {
        /// The path.
        path: String,
        /// The most an index holds.
        max: usize,
    },
    /// The data received for `path` did not hash to the client's checksum.
    ChecksumMismatch {
        /// The path.
        path: String,
        /// The BLAKE3 of what arrived.
        got: String,
        /// The BLAKE3 the client claimed.
        claimed: String,
    },
    /// What stands at `path` could not be kept as its backup asked, so it
    /// was neither replaced nor removed.
    NotBackedUp {
        /// The path.
        path: String,
        /// Where its backup was to go.
        to: String,
        /// The error.
        source: io::Error,
    },
    /// An I/O error on `path`, told by its kind.
    Io {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The object store refused a request about `path` (credentials,
    /// permissions).
    StoreRefused {
        /// The path.
        path: String,
        /// What the store said.
        why: String,
    },
    /// The object store failed a request about `path`.
    StoreFailed {
        /// The path.
        path: String,
        /// What the store said.
        why: String,
    },
    /// A move of `path` copied it, and the copy is not there whole; the
    /// original is kept.
    CopyIncomplete {
        /// The path.
        path: String,
    },
    /// The server failed inside (a task that panicked, a record that does
    /// not parse): what, in a few words.
    Internal {
        /// What failed.
        what: String,
    },
}

/// Which rule a path a client named breaks ([`Fault::BadPath`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathRule {
    /// Longer than a path may be (4,095 bytes).
    TooLong,
    /// A NUL byte in it.
    Nul,
    /// It starts with `/`.
    Absolute,
    /// A `..` component.
    DotDot,
    /// Deeper than a path may be (255 components).
    TooDeep,
    /// A symlink on the way leads outside the served root.
    Escapes,
    /// Symlinks on the way loop.
    SymlinkLoop,
    /// A component is over the file system's limit.
    NameTooLong,
    /// It names the root where a file is needed.
    Root,
    /// It names the root, to remove.
    RootRemoved,
    /// It names the root, to move (or to move onto).
    RootMoved,
    /// It has a partial file's name (`.NAME.fwpart`).
    Reserved,
    /// A directory moved below itself.
    BelowItself,
    /// Not a tree's path: empty, with an empty, `.` or `..` component.
    NotPlain,
    /// Not a valid object key (why, as the store's library says).
    NotAKey(String),
}

impl std::fmt::Display for PathRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathRule::TooLong => write!(f, "longer than {MAX_PATH_BYTES} bytes (MAX_PATH_BYTES)"),
            PathRule::Nul => f.write_str("contains a NUL byte"),
            PathRule::Absolute => f.write_str("absolute paths are refused; paths are relative to the served root"),
            PathRule::DotDot => f.write_str("`..` is refused; paths stay inside the served root"),
            PathRule::TooDeep => write!(f, "deeper than {MAX_PATH_DEPTH} components (MAX_PATH_DEPTH)"),
            PathRule::Escapes => f.write_str("leads outside the served root (through a symlink)"),
            PathRule::SymlinkLoop => f.write_str("too many levels of symlinks"),
            PathRule::NameTooLong => f.write_str("a name in it is too long"),
            PathRule::Root => f.write_str("names the served root, not a file"),
            PathRule::RootRemoved => f.write_str("names the served root, which is never removed"),
            PathRule::RootMoved => f.write_str("names the served root, which is never moved"),
            PathRule::Reserved => f.write_str("names of the form .NAME.fwpart are reserved for partial transfers"),
            PathRule::BelowItself => f.write_str("a directory cannot move below itself"),
            PathRule::NotPlain => f.write_str("not a plain relative path"),
            PathRule::NotAKey(why) => write!(f, "not a key: {why}"),
        }
    }
}

impl Fault {
    /// A [`Fault::BadPath`].
    pub fn bad_path(path: &str, why: PathRule) -> Fault {
        Fault::BadPath { path: path.to_owned(), why }
    }

    /// A [`Fault::Io`] on `path`.
    pub fn io(path: &str, source: io::Error) -> Fault {
        Fault::Io { path: path.to_owned(), source }
    }

    /// The code the client is told: what a caller that tells refusals
    /// apart (a missing path from a failed store) looks at.
    pub fn code(&self) -> ErrorCode {
        match self {
            Fault::NotFound { .. } | Fault::NoParent { .. } => ErrorCode::NotFound,
            Fault::Exists { .. }
            | Fault::ExistsNotADirectory { .. }
            | Fault::NotOlder { .. }
            | Fault::NotAFile { .. } => ErrorCode::Exists,
            Fault::IsADirectory { .. } | Fault::TrailingSlash { .. } => ErrorCode::IsADirectory,
            Fault::NotADirectory { .. } | Fault::ParentNotADirectory { .. } | Fault::ParentNotPlain { .. } => {
                ErrorCode::NotADirectory
            }
            Fault::BadPath { .. } | Fault::NotRegular { .. } => ErrorCode::BadPath,
            Fault::NotKept { .. } => ErrorCode::BadRequest,
            Fault::Busy { .. }
            | Fault::FinishedFirst { .. }
            | Fault::OfferChanged { .. }
            | Fault::UploadGone { .. }
            | Fault::ChangedWhileRead { .. } => ErrorCode::Busy,
            Fault::ListingTooLarge { .. } | Fault::TooManyObjects { .. } => ErrorCode::TooLarge,
            Fault::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            Fault::Io { source, .. } | Fault::NotBackedUp { source, .. } => io_code(source),
            Fault::StoreRefused { .. } | Fault::NotPermitted { .. } => ErrorCode::PermissionDenied,
            Fault::CopyIncomplete { .. } => ErrorCode::Io,
            Fault::StoreFailed { .. } | Fault::Internal { .. } => ErrorCode::Internal,
        }
    }
}

/// The code of an I/O error, by its kind.
fn io_code(e: &io::Error) -> ErrorCode {
    match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorCode::Exists,
        io::ErrorKind::IsADirectory => ErrorCode::IsADirectory,
        io::ErrorKind::NotADirectory => ErrorCode::NotADirectory,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::DiskFull,
        io::ErrorKind::ResourceBusy => ErrorCode::Busy,
        _ => ErrorCode::Io,
    }
}

impl Refusal {
    /// The one place a [`Fault`]'s words are written.
    fn from_fault(fault: &Fault) -> Refusal {
        let code = fault.code();
        let message = match fault {
            Fault::NotFound { path } => format!("{}: no such file or directory", shown(path)),
            Fault::NoParent { path } => format!("{}: its parent does not exist", shown(path)),
            Fault::Exists { path } => format!("{}: already exists on the server", shown(path)),
            Fault::ExistsNotADirectory { path } => {
                format!("{}: exists on the server and is not a directory", shown(path))
            }
            Fault::NotOlder { path } => format!("{}: exists on the server, differs and is not older", shown(path)),
            Fault::NotAFile { path } => format!("{}: exists on the server and is not a regular file", shown(path)),
            Fault::IsADirectory { path } => format!("{}: is a directory on the server", shown(path)),
            Fault::TrailingSlash { path } => {
                format!("{}: a trailing / names a directory; name the file to write", shown(path))
            }
            Fault::NotADirectory { path } => format!("{}: not a directory", shown(path)),
            Fault::ParentNotADirectory { path } => format!("{}: a parent is not a directory", shown(path)),
            Fault::ParentNotPlain { path } => {
                format!("{}: a parent is not a directory, or is a symlink", shown(path))
            }
            Fault::BadPath { path, why } => format!("{:?}: {why}", shown(path)),
            Fault::NotRegular { path } => {
                format!("{}: not a regular file (a FIFO, socket or device)", shown(path))
            }
            Fault::NotKept { path, why } => format!("{}: {why}", shown(path)),
            Fault::NotPermitted { path, verb } => {
                format!("{}: this key may not {verb} (its options in the server's authorized keys)", shown(path))
            }
            Fault::Busy { path } => format!("{}: another upload to this path is in progress", shown(path)),
            Fault::FinishedFirst { path } => {
                format!("{}: another upload of this path finished first", shown(path))
            }
            Fault::OfferChanged { path } => {
                format!("{}: what the server held of it changed since it was offered", shown(path))
            }
            Fault::UploadGone { path } => format!(
                "{}: the store no longer has the upload this resumed; try again, it starts over",
                shown(path)
            ),
            Fault::ChangedWhileRead { path } => {
                format!("{}: the object changed while it was read; try again", shown(path))
            }
            Fault::ListingTooLarge { path, budget } => {
                format!("{}: the listing exceeds {budget} bytes; list a smaller part of the tree", shown(path))
            }
            Fault::TooManyObjects { path, max } => {
                format!("{}: more than {max} objects below it; copy a smaller part of the tree", shown(path))
            }
            Fault::ChecksumMismatch { path, got, claimed } => format!(
                "{}: checksum mismatch: the server received data hashing to {got}, the client's file hashes to {claimed}; nothing was kept",
                shown(path)
            ),
            Fault::Io { path, source } => {
                let why = match code {
                    ErrorCode::NotFound => "no such file or directory".to_owned(),
                    ErrorCode::PermissionDenied => "permission denied".to_owned(),
                    ErrorCode::DiskFull => "disk full on the server".to_owned(),
                    _ => source.to_string(),
                };
                format!("{}: {why}", shown(path))
            }
            Fault::NotBackedUp { path, to, source } => format!(
                "{}: left as it was: its backup {} could not be made: {source}",
                shown(path),
                shown(to)
            ),
            Fault::StoreRefused { path, why } => format!("{}: the object store refused: {why}", shown(path)),
            Fault::StoreFailed { path, why } => format!("{}: the object store failed: {why}", shown(path)),
            Fault::CopyIncomplete { path } => {
                format!("{}: the copy of it is not there whole; the original is kept", shown(path))
            }
            Fault::Internal { what } => what.clone(),
        };
        Refusal { code, message }
    }
}

impl From<Fault> for Refusal {
    fn from(fault: Fault) -> Refusal {
        Refusal::from_fault(&fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_fault() -> Vec<(Fault, ErrorCode, &'static str)> {
        let p = || "d/f.txt".to_owned();
        vec![
            (Fault::NotFound { path: p() }, ErrorCode::NotFound, "d/f.txt: no such file or directory"),
            (Fault::NoParent { path: p() }, ErrorCode::NotFound, "d/f.txt: its parent does not exist"),
            (Fault::Exists { path: p() }, ErrorCode::Exists, "d/f.txt: already exists on the server"),
            (
                Fault::ExistsNotADirectory { path: p() },
                ErrorCode::Exists,
                "d/f.txt: exists on the server and is not a directory",
            ),
            (
                Fault::NotOlder { path: p() },
                ErrorCode::Exists,
                "d/f.txt: exists on the server, differs and is not older",
            ),
            (
                Fault::NotAFile { path: p() },
                ErrorCode::Exists,
                "d/f.txt: exists on the server and is not a regular file",
            ),
            (Fault::IsADirectory { path: p() }, ErrorCode::IsADirectory, "d/f.txt: is a directory on the server"),
            (
                Fault::TrailingSlash { path: p() },
                ErrorCode::IsADirectory,
                "d/f.txt: a trailing / names a directory; name the file to write",
            ),
            (Fault::NotADirectory { path: p() }, ErrorCode::NotADirectory, "d/f.txt: not a directory"),
            (
                Fault::ParentNotADirectory { path: p() },
                ErrorCode::NotADirectory,
                "d/f.txt: a parent is not a directory",
            ),
            (
                Fault::ParentNotPlain { path: p() },
                ErrorCode::NotADirectory,
                "d/f.txt: a parent is not a directory, or is a symlink",
            ),
            (
                Fault::bad_path("../x", PathRule::DotDot),
                ErrorCode::BadPath,
                "\"../x\": `..` is refused; paths stay inside the served root",
            ),
            (
                Fault::bad_path("", PathRule::RootRemoved),
                ErrorCode::BadPath,
                "\"\": names the served root, which is never removed",
            ),
            (
                Fault::bad_path("k", PathRule::NotAKey("bad".into())),
                ErrorCode::BadPath,
                "\"k\": not a key: bad",
            ),
            (
                Fault::NotRegular { path: p() },
                ErrorCode::BadPath,
                "d/f.txt: not a regular file (a FIFO, socket or device)",
            ),
            (Fault::Busy { path: p() }, ErrorCode::Busy, "d/f.txt: another upload to this path is in progress"),
            (
                Fault::FinishedFirst { path: p() },
                ErrorCode::Busy,
                "d/f.txt: another upload of this path finished first",
            ),
            (
                Fault::OfferChanged { path: p() },
                ErrorCode::Busy,
                "d/f.txt: what the server held of it changed since it was offered",
            ),
            (
                Fault::UploadGone { path: p() },
                ErrorCode::Busy,
                "d/f.txt: the store no longer has the upload this resumed; try again, it starts over",
            ),
            (
                Fault::ChangedWhileRead { path: p() },
                ErrorCode::Busy,
                "d/f.txt: the object changed while it was read; try again",
            ),
            (
                Fault::ListingTooLarge { path: p(), budget: 100 },
                ErrorCode::TooLarge,
                "d/f.txt: the listing exceeds 100 bytes; list a smaller part of the tree",
            ),
            (
                Fault::TooManyObjects { path: p(), max: 7 },
                ErrorCode::TooLarge,
                "d/f.txt: more than 7 objects below it; copy a smaller part of the tree",
            ),
            (
                Fault::ChecksumMismatch { path: p(), got: "aa".into(), claimed: "bb".into() },
                ErrorCode::ChecksumMismatch,
                "d/f.txt: checksum mismatch: the server received data hashing to aa, the client's file hashes to bb; nothing was kept",
            ),
            (
                Fault::io("d/f.txt", io::Error::from(io::ErrorKind::NotFound)),
                ErrorCode::NotFound,
                "d/f.txt: no such file or directory",
            ),
            (
                Fault::io("d/f.txt", io::Error::from(io::ErrorKind::PermissionDenied)),
                ErrorCode::PermissionDenied,
                "d/f.txt: permission denied",
            ),
            (
                Fault::io("d/f.txt", io::Error::from(io::ErrorKind::StorageFull)),
                ErrorCode::DiskFull,
                "d/f.txt: disk full on the server",
            ),
            (
                Fault::io("d/f.txt", io::Error::new(io::ErrorKind::AlreadyExists, "a file stands there")),
                ErrorCode::Exists,
                "d/f.txt: a file stands there",
            ),
            (Fault::io("d/f.txt", io::Error::other("odd")), ErrorCode::Io, "d/f.txt: odd"),
            (
                Fault::StoreRefused { path: p(), why: "AccessDenied".into() },
                ErrorCode::PermissionDenied,
                "d/f.txt: the object store refused: AccessDenied",
            ),
            (
                Fault::StoreFailed { path: p(), why: "SlowDown".into() },
                ErrorCode::Internal,
                "d/f.txt: the object store failed: SlowDown",
            ),
            (
                Fault::CopyIncomplete { path: p() },
                ErrorCode::Io,
                "d/f.txt: the copy of it is not there whole; the original is kept",
            ),
            (Fault::Internal { what: "file task failed".into() }, ErrorCode::Internal, "file task failed"),
        ]
    }

    #[test]
    fn each_fault_has_its_code_and_one_wording() {
        for (fault, code, words) in every_fault() {
            assert_eq!(fault.code(), code, "{fault:?}");
            assert_eq!(fault.to_string(), words, "{fault:?}");
            assert_eq!(Refusal::from(fault), Refusal::new(code, words));
        }
    }

    /// What to type is the CLI's to say: no wording names a flag.
    #[test]
    fn no_wording_names_a_cli_flag() {
        let rules = [
            PathRule::TooLong,
            PathRule::Nul,
            PathRule::Absolute,
            PathRule::DotDot,
            PathRule::TooDeep,
            PathRule::Escapes,
            PathRule::SymlinkLoop,
            PathRule::NameTooLong,
            PathRule::Root,
            PathRule::RootRemoved,
            PathRule::RootMoved,
            PathRule::Reserved,
            PathRule::BelowItself,
            PathRule::NotPlain,
        ];
        let faults = every_fault().into_iter().map(|(f, ..)| f);
        let words: Vec<String> = faults.map(|f| Refusal::from(f).message).chain(rules.map(|r| r.to_string())).collect();
        for w in words {
            let flag = w.split([' ', '(', ';']).any(|t| t.starts_with('-') && t.len() > 1);
            assert!(!flag && !w.contains("force") && !w.contains("use -"), "{w}");
        }
    }

    #[test]
    fn a_long_path_is_quoted_cut_short() {
        let long = "x".repeat(300);
        let r = Refusal::from(Fault::NotFound { path: long });
        assert!(r.message.starts_with(&"x".repeat(160)) && r.message.contains("(300 bytes)"), "{}", r.message);
    }
}
