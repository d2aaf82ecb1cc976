//! The typed messages of the native protocol, one struct per message
//! ([`Echo`], [`Put`], [`FileReply`]…), each marked with the direction it
//! goes ([`ToServer`], [`ToClient`]), and the sets of them that may arrive
//! at each point of a conversation ([`Request`], [`ExecInput`],
//! [`ExecOutput`], [`Answer`]). Every message is one entry of one table
//! (`messages.rs`): its tag, direction, body, decoding and round-trip test
//! come from there.

mod decode;
mod message;
mod messages;
mod set;
mod sets;
mod tree;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use message::{Message, ToBoth, ToClient, ToServer};
pub use messages::*;
pub use sets::{
    Answer, AuthInput, ExecInput, ExecOutput, GetOutput, ListingOutput, PutInput, Request, TreeGetInput, TreeGetOutput,
    TreePutInput, TreePutOutput,
};
pub use tree::{
    entry_weight, frames, CommitList, Failed, ManifestEntry, Want, WantList, TREE_PART_ENTRIES, TREE_PART_MAX,
};

/// The port a bare host name means.
pub const DEFAULT_PORT: u16 = 9909;

/// Why an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExitReason {
    /// The command ended by itself (exit or signal).
    Exited,
    /// The timeout passed; the process group was killed.
    Timeout,
    /// The client cancelled; the process group was killed.
    Cancelled,
    /// The server shut down; the process group was killed.
    Shutdown,
    /// The key the session authenticated with was revoked (removed,
    /// narrowed or expired); the process group was killed.
    Revoked,
    /// A reason this build does not know.
    #[serde(other)]
    Unknown,
}

/// What kind of thing a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (inside the root).
    Symlink,
    /// Anything else (socket, device, fifo).
    Other,
}

/// Where what an upload replaces is kept (rsync's `--backup`,
/// PROTOCOL.md §4.6.4): beside it with `suffix` added to its name, or,
/// with `dir`, at the same path below `dir` as it has below `of`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Backup {
    /// The directory backups go to, relative to the root (made as
    /// needed); absent: each backup beside what it keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// With `dir`: the directory, relative to the root, whose paths are
    /// kept below `dir` (the copy's destination); empty: the root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub of: String,
    /// Added to each backup's name (rsync's `--suffix`; `~` by default
    /// without `dir`, nothing with it).
    #[serde(default)]
    pub suffix: String,
}

/// A delta transfer asked for in a `put` (PROTOCOL.md §4.6.6): the
/// server may answer that it holds an older version of the file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeltaAsk {
    /// Where the server's file is `len` bytes long and shorter than the
    /// new one: the BLAKE3 of the client's bytes just before `len` (a
    /// [`Sample`]). If the server's file ends with the same bytes, the
    /// new file is likely an append, and the server says so with its
    /// whole file's BLAKE3 for the client to check against its prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<Sample>,
    /// The client checks a likely append by the whole file's `checksum`
    /// alone: the server may answer an append as soon as the sample
    /// matches, without `blake3` (and without reading its file). Sent
    /// only where what a wrong guess costs, the tail sent for nothing, is
    /// small. Older servers ignore it and send `blake3`, as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust: bool,
    /// The client takes the server's signature streamed (`basis.streamed`):
    /// sent as the server cuts its file, its end told by an empty
    /// `signature` frame. Older servers ignore it and send a counted one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// The last [`Sample::LEN`] bytes (or all, if fewer) before `len` of a
/// file, by their BLAKE3 (hex): what tells a likely append for the cost
/// of one small read on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Where the sampled bytes end.
    pub len: u64,
    /// BLAKE3 of bytes `len - min(len, Sample::LEN) .. len`, lower-case
    /// hex.
    pub blake3: String,
}

impl Sample {
    /// Bytes sampled at most.
    pub const LEN: u64 = 4096;

    /// The sample of `file` ending at `len`. Blocking.
    ///
    /// # Errors
    ///
    /// Reading; a file shorter than `len`.
    pub fn of(file: &std::fs::File, len: u64) -> std::io::Result<Sample> {
        use std::os::unix::fs::FileExt;
        let take = len.min(Self::LEN);
        let mut buf = vec![0; take as usize];
        file.read_exact_at(&mut buf, len - take)?;
        Ok(Sample { len, blake3: blake3::hash(&buf).to_hex().to_string() })
    }
}

/// The receiver's older version of a file, which a delta transfer builds
/// the new one from (PROTOCOL.md §4.6.6): `put_ready.basis` (the server
/// receives) and `get.basis` (the client receives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    /// Its length.
    pub len: u64,
    /// `put_ready`: it ends as the client's sample does
    /// (`put.delta.append`), so it is likely the start of the new file:
    /// no signature follows, and `blake3` is its whole-file hash, for the
    /// client to check against its own first `len` bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    /// Its whole-file BLAKE3 (hex): in `get`, so that the server can tell
    /// an append without a signature; in `put_ready` with `append`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// `get`: the BLAKE3 of its last bytes (a [`Sample`] ending at
    /// `len`): the server reads its own prefix to check `blake3` only
    /// where its bytes there are the same, a likely append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
    /// How it is cut (absent with `append`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<crate::delta::Layout>,
    /// Entries of its signature, which follow in `signature` frames.
    #[serde(default)]
    pub count: u64,
    /// `put_ready`, where `put.delta.stream` asked: the signature follows
    /// as the server cuts its file, `count` left 0, until an empty
    /// `signature` frame (PROTOCOL.md §4.6.6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streamed: bool,
    /// `put_ready`, with a signature: the server reads the client's
    /// `put_delta` and ops while its signature still goes (and builds the
    /// file meanwhile), so the client may send them before the
    /// signature's end (PROTOCOL.md §4.6.6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pipelined: bool,
}

/// `parts` joined by `/`, without empty or `.` components.
fn plain_join(parts: &[&str]) -> String {
    let kept: Vec<&str> = parts.iter().flat_map(|p| p.split('/')).filter(|c| !c.is_empty() && *c != ".").collect();
    kept.join("/")
}

impl Backup {
    /// The most bytes of a suffix.
    pub const MAX_SUFFIX: usize = 64;

    /// Whether backups can be made as this says.
    ///
    /// # Errors
    ///
    /// A suffix with `/` or NUL or longer than [`Backup::MAX_SUFFIX`]; an
    /// empty suffix without `dir` (the backup would be the file itself).
    pub fn check(&self) -> Result<(), &'static str> {
        let suffix = &self.suffix;
        if suffix.contains(['/', '\0']) || suffix.len() > Self::MAX_SUFFIX {
            return Err("a backup suffix must be at most 64 bytes, without '/' or NUL");
        }
        if self.dir.is_none() && suffix.is_empty() {
            return Err("a backup beside the file needs a suffix");
        }
        Ok(())
    }

    /// Where the backup of the root path `full` goes (relative to the
    /// root, its last component not yet checked by the caller), or why
    /// there is none.
    ///
    /// # Errors
    ///
    /// A suffix with `/` or NUL or longer than [`Backup::MAX_SUFFIX`]; an
    /// empty suffix without `dir` (the backup would be the file itself);
    /// `full` not below `of`.
    pub fn path_for(&self, full: &str) -> Result<String, &'static str> {
        self.check()?;
        let suffix = &self.suffix;
        let full = full.trim_matches('/');
        let Some(dir) = &self.dir else {
            return Ok(format!("{}{suffix}", plain_join(&[full])));
        };
        let of = self.of.trim_matches('/');
        let rest = if of.is_empty() {
            full
        } else if full == of {
            return Err("the destination itself is not backed up");
        } else {
            match full.strip_prefix(of).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => rest,
                None => return Err("a path outside the backup's destination"),
            }
        };
        let to = plain_join(&[dir, &format!("{rest}{suffix}")]);
        let full = plain_join(&[full]);
        // Never the path itself, nor a directory above or below it (an
        // older backup there would be removed, and the path with it).
        let above = |a: &str, b: &str| b.strip_prefix(a).is_some_and(|r| r.starts_with('/'));
        if to == full || above(&to, &full) || above(&full, &to) {
            return Err("the backup would be the path itself, or a directory above or below it");
        }
        Ok(to)
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Entry {
    /// Name (or path relative to the listed directory, when recursive).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// What it is.
    pub kind: Kind,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Unix permission bits.
    #[serde(default)]
    pub mode: u32,
    /// BLAKE3 (hex) of a file's content, when the listing asked for it
    /// (`list` with `blake3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The modification time in nanoseconds since the Unix epoch, exact
    /// (`tree_list` with `meta`; absent where it does not fit an `i64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// A symlink's target, as stored: data, never followed
    /// (`tree_list` with `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A file that is a hard link to a file listed before it in the same
    /// listing: that file's path (`tree_list` with `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// What a special file is, its owner, its extended attributes
    /// (`tree_list` with `meta`, as asked: PROTOCOL.md §4.6.3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Box<Attrs>>,
}

/// What `-r` keeps beside contents, times and permission bits where both
/// sides can (PROTOCOL.md §4.6.3.5): what a special file is, the owner,
/// extended attributes. Absent members are not known or not asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attrs {
    /// A special file (its `kind` is `other`): what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Special>,
    /// A device's major and minor numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// The owner's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The owner's name, where the sender knows one (the receiver maps
    /// owners by name, unless told to keep ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group's name, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Extended attributes: name, and value in lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<std::collections::BTreeMap<String, String>>,
}

/// What a special file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Special {
    /// A named pipe.
    Fifo,
    /// A Unix socket's name (made without a listener, as rsync makes it).
    Socket,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

impl Special {
    /// Whether it is a device (kept only with `--devices`).
    pub fn is_device(self) -> bool {
        matches!(self, Special::Char | Special::Block)
    }
}

impl Entry {
    /// An entry with these members and nothing else known.
    pub fn new(name: String, size: u64, kind: Kind, mtime: i64, mode: u32) -> Entry {
        Entry { name, size, kind, mtime, mode, ..Entry::default() }
    }
}

/// Why a request failed, as carried by an error frame's `"code"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The connection did not open with a framewire preface. Closes.
    BadPreface,
    /// The peer's protocol version is not supported. Closes.
    UnsupportedVersion,
    /// Framing is lost (oversize header, bad UTF-8, bad JSON, EOF). Closes.
    BadFrame,
    /// A well-framed header with an unknown `type`. Connection stays usable.
    UnknownType,
    /// A well-framed header with a missing or invalid field, or a message
    /// that is not a request. Connection stays usable.
    BadRequest,
    /// A declared size is over a limit. Connection stays usable if the
    /// frame itself was intact.
    TooLarge,
    /// The server is shutting down and takes no new request. Closes.
    ShuttingDown,
    /// No such file or directory.
    NotFound,
    /// The operating system refused access.
    PermissionDenied,
    /// The target exists and `force` was not given.
    Exists,
    /// A directory was given where a file is needed.
    IsADirectory,
    /// A file was given where a directory is needed.
    NotADirectory,
    /// The path is absolute, contains `..` or NUL, or leads outside the
    /// served root.
    BadPath,
    /// The server does not allow exec (`serve --allow-exec`).
    ExecDisabled,
    /// The command could not be started.
    SpawnFailed,
    /// Another upload to the same path is in progress.
    Busy,
    /// The data did not match its checksum; nothing was kept.
    ChecksumMismatch,
    /// The server's disk is full; nothing was kept.
    DiskFull,
    /// Another I/O error on the server.
    Io,
    /// The server requires a key; the client came without one. Closes.
    AuthRequired,
    /// The client came with a key; the server has none. Closes.
    AuthUnavailable,
    /// The client's proof was wrong (wrong key, or a man in the middle). Closes.
    AuthFailed,
    /// The peer was too slow or idle too long. Closes.
    Timeout,
    /// Something failed inside the server.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wire spelling, so logs and messages match PROTOCOL.md.
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("unknown"))
    }
}

/// Turns `host`, `host:port`, `IP`, `IP:port`, `[IPv6]` or `[IPv6]:port`
/// into a `host:port` string, adding [`DEFAULT_PORT`] where none is given.
///
/// # Examples
///
/// ```
/// use framewire::proto::with_default_port;
///
/// assert_eq!(with_default_port("example.org"), "example.org:9909");
/// assert_eq!(with_default_port("127.0.0.1:80"), "127.0.0.1:80");
/// assert_eq!(with_default_port("::1"), "[::1]:9909");
/// assert_eq!(with_default_port("[::1]"), "[::1]:9909");
/// assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
/// ```
pub fn with_default_port(addr: &str) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if let Ok(std::net::IpAddr::V6(ip)) = addr.parse() {
        return format!("[{ip}]:{DEFAULT_PORT}");
    }
    if addr.ends_with(']') || !addr.contains(':') {
        return format!("{addr}:{DEFAULT_PORT}");
    }
    addr.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Error, FrameHeader};

    #[test]
    fn error_code_display_is_wire_spelling() {
        assert_eq!(ErrorCode::UnknownType.to_string(), "unknown_type");
        assert_eq!(ErrorCode::ShuttingDown.to_string(), "shutting_down");
    }

    #[test]
    fn unknown_error_code_from_newer_peer_decodes() {
        let m = AnyMessage::from_json(r#"{"type":"error","code":"brand_new","message":"x"}"#).unwrap();
        assert_eq!(m, AnyMessage::ErrorFrame(ErrorFrame::new(ErrorCode::Unknown, "x")));
    }

    /// One of each message (the table's examples) survives encoding and
    /// decoding, and its tag is the one the table gives.
    #[test]
    fn every_message_round_trips() {
        let all = messages::examples();
        assert_eq!(all.len(), KINDS.len());
        for m in all {
            let text = serde_json::to_string(&m).unwrap();
            assert!(text.starts_with(&format!(r#"{{"type":"{}""#, m.kind())), "{text}");
            assert_eq!(AnyMessage::from_json(&text).unwrap(), m, "{text}");
        }
    }

    /// The fast parse of the data-path frames and the full parse agree,
    /// also with members in another order and members they ignore.
    #[test]
    fn fast_and_full_parses_agree() {
        let cases = [
            r#"{"type":"echo","len":5}"#,
            r#"{"len":5,"upper":true,"type":"echo"}"#,
            r#"{"type":"echo_reply","len":0,"future":[1,2]}"#,
            r#"{"type":"stdin","len":3,"eof":true}"#,
            r#"{"type":"stdout","len":7}"#,
            r#"{"type":"stderr","len":7}"#,
            r#"{"type":"put_data","len":9,"offset":4}"#,
            r#"{"type":"stat","path":"x"}"#,
            r#"{"type":"stat","path":"x","offset":"not a number"}"#,
        ];
        for text in cases {
            let fast = AnyMessage::from_json(text).unwrap();
            let full = match &fast {
                AnyMessage::Echo(_) => AnyMessage::Echo(serde_json::from_str(text).unwrap()),
                AnyMessage::EchoReply(_) => AnyMessage::EchoReply(serde_json::from_str(text).unwrap()),
                AnyMessage::Stdin(_) => AnyMessage::Stdin(serde_json::from_str(text).unwrap()),
                AnyMessage::Stdout(_) => AnyMessage::Stdout(serde_json::from_str(text).unwrap()),
                AnyMessage::Stderr(_) => AnyMessage::Stderr(serde_json::from_str(text).unwrap()),
                AnyMessage::PutData(_) => AnyMessage::PutData(serde_json::from_str(text).unwrap()),
                AnyMessage::Stat(_) => AnyMessage::Stat(serde_json::from_str(text).unwrap()),
                other => panic!("not a case: {other:?}"),
            };
            assert_eq!(fast, full, "{text}");
        }
        for bad in [r#"{"type":"echo","len":-1}"#, r#"{"type":"echo","upper":"yes"}"#, r#"{"len":1}"#] {
            assert!(AnyMessage::from_json(bad).is_err(), "{bad}");
        }
    }

    /// A known message where another set is due is `Unexpected` (with its
    /// body length, so the stream stays in step); an unknown one is
    /// `UnknownType`; a body on a body-less type is refused.
    #[test]
    fn sets_refuse_what_is_not_due() {
        match Request::from_json(r#"{"type":"stdout","len":3}"#) {
            Err(Error::Unexpected { kind, body_len: 3, .. }) => assert_eq!(kind, "stdout"),
            other => panic!("{other:?}"),
        }
        match Answer::<FileReply>::from_json(r#"{"type":"put_done","size":1}"#) {
            Err(Error::Unexpected { kind, expected: "file", body_len: 0 }) => assert_eq!(kind, "put_done"),
            other => panic!("{other:?}"),
        }
        match ExecInput::from_json(r#"{"type":"brand_new","len":2}"#) {
            Err(Error::UnknownType { kind, body_len: 2 }) => assert_eq!(kind, "brand_new"),
            other => panic!("{other:?}"),
        }
        let e = Request::from_json(r#"{"type":"stat","path":"x","len":5}"#).unwrap_err();
        assert_eq!(e.body_len(), Some(5));
        assert!(e.to_string().contains("`stat` carries no body"), "{e}");
        let refused = Answer::<PutDone>::from_json(r#"{"type":"error","code":"exists","message":"m"}"#).unwrap();
        assert_eq!(refused, Answer::Refused(ErrorFrame::new(ErrorCode::Exists, "m")));
    }

    #[test]
    fn echo_header_is_compact() {
        let m = Echo { len: 5, upper: false };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"echo","len":5}"#);
        assert_eq!(serde_json::to_string(&Cancel {}).unwrap(), r#"{"type":"cancel"}"#);
    }
}
