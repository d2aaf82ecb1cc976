//! The typed messages of the native protocol: requests, replies and error
//! frames, as they appear in frame headers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::FrameHeader;

/// The port a bare host name means.
pub const DEFAULT_PORT: u16 = 9909;

/// Every header the native protocol sends, tagged by its `"type"`.
///
/// Fields a message type does not define are ignored (a newer peer may
/// send more), so decoding goes through a flat struct (`proto::raw`): serde's own
/// internally-tagged decoding buffers every field first and takes over
/// twice as long per header, and a header is parsed per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "raw::Raw")]
#[non_exhaustive]
pub enum Message {
    /// Request: send the body back unchanged (or ASCII upper-cased, as the
    /// tutorial's first server did, when `upper` is set).
    Echo {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Upper-case ASCII letters of the reply.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        upper: bool,
    },
    /// Reply to [`Message::Echo`]: the body follows.
    EchoReply {
        /// Body length.
        #[serde(default)]
        len: u64,
    },

    /// Request: run `command` through the server's shell in its root.
    Exec {
        /// A shell command line.
        command: String,
        /// Kill the process group after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// During an exec, client to server: bytes for the command's stdin;
    /// `eof` closes it.
    Stdin {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Close the command's stdin after this body.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        eof: bool,
    },
    /// During an exec, client to server: kill the command's process group.
    Cancel,
    /// During an exec, server to client: bytes the command wrote to stdout.
    Stdout {
        /// Body length.
        #[serde(default)]
        len: u64,
    },
    /// During an exec, server to client: bytes the command wrote to stderr.
    Stderr {
        /// Body length.
        #[serde(default)]
        len: u64,
    },
    /// Ends an exec: how the command ended.
    Exit {
        /// Exit status, if it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
        /// The signal that ended it, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Why it ended.
        reason: ExitReason,
    },

    /// Request: list a directory (or describe a file).
    List {
        /// Path relative to the served root; empty for the root.
        #[serde(default)]
        path: String,
        /// List every file below, with paths relative to `path`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recursive: bool,
        /// With `recursive`: list the directories below too, so that a copy
        /// of the tree can recreate empty ones.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dirs: bool,
    },
    /// Reply to [`Message::List`]: the body is a JSON array of [`Entry`].
    ListReply {
        /// Body length.
        #[serde(default)]
        len: u64,
    },
    /// Request: describe one path.
    Stat {
        /// Path relative to the served root.
        path: String,
    },
    /// Reply to [`Message::Stat`].
    StatReply {
        /// What is there.
        entry: Entry,
    },

    /// Request: download a file, from `offset` on.
    Get {
        /// Path relative to the served root.
        path: String,
        /// Resume from this byte.
        #[serde(default)]
        offset: u64,
        /// BLAKE3 (hex) of the first `offset` bytes the client holds; the
        /// server starts from 0 if its file does not begin with them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_blake3: Option<String>,
    },
    /// Reply to [`Message::Get`]: bytes `offset..size` follow as the body,
    /// then a [`Message::Checksum`] of the whole file.
    File {
        /// Body length (`size - offset`).
        #[serde(default)]
        len: u64,
        /// Whole file size.
        size: u64,
        /// Where the body starts in the file.
        #[serde(default)]
        offset: u64,
        /// Modification time, seconds since the Unix epoch.
        #[serde(default)]
        mtime: i64,
        /// Unix permission bits.
        #[serde(default)]
        mode: u32,
    },
    /// Trailer of a transfer: BLAKE3 (hex) of the whole file.
    Checksum {
        /// Lower-case hex.
        blake3: String,
    },

    /// Request: upload `size` bytes to `path`.
    Put {
        /// Path relative to the served root.
        path: String,
        /// Whole file size.
        size: u64,
        /// Replace an existing file.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// Unix permission bits for the new file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Request: create a directory and any missing parents (`mkdir -p`).
    Mkdir {
        /// Path relative to the served root.
        path: String,
    },
    /// Reply to [`Message::Mkdir`]: the directory is there.
    MkdirReply {
        /// Whether this request created it (false: it already existed).
        created: bool,
    },

    /// Reply to [`Message::Put`]: the server holds `offset` bytes of an
    /// earlier, interrupted upload of this path.
    PutReady {
        /// Bytes already held.
        offset: u64,
        /// BLAKE3 (hex) of those bytes, so the client can check they are
        /// the start of its file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_blake3: Option<String>,
    },
    /// Upload data: bytes `offset..size` of the file, then a
    /// [`Message::Checksum`] of the whole file.
    PutData {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Where the body starts: the `PutReady` offset, or 0 to start over.
        #[serde(default)]
        offset: u64,
    },
    /// Reply: the upload is verified, synced and in place.
    PutDone {
        /// Final size.
        size: u64,
    },

    /// Authentication, server to client, first frame over TLS: the
    /// server's nonce (64 hex digits).
    AuthChallenge {
        /// 32 random bytes, hex.
        nonce: String,
    },
    /// Authentication, client to server: the client's nonce and its proof.
    AuthResponse {
        /// 32 random bytes, hex.
        nonce: String,
        /// HMAC-SHA256 proof, hex (docs/SECURITY.md).
        proof: String,
    },
    /// Authentication, server to client: the client is accepted, and the
    /// server's own proof.
    AuthOk {
        /// HMAC-SHA256 proof, hex.
        proof: String,
    },

    /// Reply: the request failed. Never carries a body.
    Error {
        /// Machine-readable cause.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

impl Message {
    /// The `"type"` string of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Echo { .. } => "echo",
            Message::EchoReply { .. } => "echo_reply",
            Message::Exec { .. } => "exec",
            Message::Stdin { .. } => "stdin",
            Message::Cancel => "cancel",
            Message::Stdout { .. } => "stdout",
            Message::Stderr { .. } => "stderr",
            Message::Exit { .. } => "exit",
            Message::List { .. } => "list",
            Message::ListReply { .. } => "list_reply",
            Message::Stat { .. } => "stat",
            Message::StatReply { .. } => "stat_reply",
            Message::Get { .. } => "get",
            Message::File { .. } => "file",
            Message::Checksum { .. } => "checksum",
            Message::Put { .. } => "put",
            Message::PutReady { .. } => "put_ready",
            Message::PutData { .. } => "put_data",
            Message::PutDone { .. } => "put_done",
            Message::Mkdir { .. } => "mkdir",
            Message::MkdirReply { .. } => "mkdir_reply",
            Message::AuthChallenge { .. } => "auth_challenge",
            Message::AuthResponse { .. } => "auth_response",
            Message::AuthOk { .. } => "auth_ok",
            Message::Error { .. } => "error",
        }
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Message::Error { code, message: message.into() }
    }
}

impl FrameHeader for Message {
    /// The frames of the data paths (echo, exec output and input, upload
    /// data) parse through a five-field struct; every other type, and
    /// anything the small parse does not accept, through the full one
    /// (`raw::Raw`), which alone reports errors. Moving the full struct
    /// around cost more than parsing a rare header twice (perf: memmove was
    /// a quarter of the decode). Members a type does not define are
    /// ignored by both, as docs/PROTOCOL.md §3.1 says.
    fn from_json(text: &str) -> serde_json::Result<Self> {
        if let Ok(hot) = serde_json::from_str::<raw::Hot>(text) {
            if let Some(message) = hot.message() {
                return Ok(message);
            }
        }
        serde_json::from_str(text)
    }

    fn body_len(&self) -> u64 {
        match self {
            Message::Echo { len, .. }
            | Message::EchoReply { len }
            | Message::Stdin { len, .. }
            | Message::Stdout { len }
            | Message::Stderr { len }
            | Message::ListReply { len }
            | Message::File { len, .. }
            | Message::PutData { len, .. } => *len,
            _ => 0,
        }
    }
}

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
    /// A reason this build does not know.
    #[serde(other)]
    Unknown,
}

/// What kind of thing a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (inside the root).
    Symlink,
    /// Anything else (socket, device, fifo).
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

mod raw {
    //! The flat form every header is decoded through: one pass, no
    //! buffering; the `type` picks which fields must be present.

    use serde::Deserialize;

    use super::{Entry, ErrorCode, ExitReason, Message};

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Type {
        Echo,
        EchoReply,
        Exec,
        Stdin,
        Cancel,
        Stdout,
        Stderr,
        Exit,
        List,
        ListReply,
        Stat,
        StatReply,
        Get,
        File,
        Checksum,
        Put,
        PutReady,
        PutData,
        PutDone,
        Mkdir,
        MkdirReply,
        AuthChallenge,
        AuthResponse,
        AuthOk,
        Error,
    }

    /// The types of the data paths, whose fields [`Hot`] holds.
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum HotType {
        Echo,
        EchoReply,
        Stdin,
        Stdout,
        Stderr,
        PutData,
        #[serde(other)]
        Other,
    }

    /// A small parse for the frequent frames; see `FrameHeader::from_json`.
    #[derive(Deserialize)]
    pub struct Hot {
        #[serde(rename = "type")]
        kind: HotType,
        #[serde(default)]
        len: u64,
        #[serde(default)]
        upper: bool,
        #[serde(default)]
        eof: bool,
        #[serde(default)]
        offset: u64,
    }

    impl Hot {
        /// The message, if it is one of the frequent types.
        pub fn message(self) -> Option<Message> {
            let Hot { len, upper, eof, offset, .. } = self;
            Some(match self.kind {
                HotType::Echo => Message::Echo { len, upper },
                HotType::EchoReply => Message::EchoReply { len },
                HotType::Stdin => Message::Stdin { len, eof },
                HotType::Stdout => Message::Stdout { len },
                HotType::Stderr => Message::Stderr { len },
                HotType::PutData => Message::PutData { len, offset },
                HotType::Other => return None,
            })
        }
    }

    #[derive(Deserialize)]
    pub struct Raw {
        #[serde(rename = "type")]
        kind: Type,
        #[serde(default)]
        len: u64,
        #[serde(default)]
        upper: bool,
        command: Option<String>,
        timeout_ms: Option<u64>,
        #[serde(default)]
        eof: bool,
        status: Option<i32>,
        signal: Option<i32>,
        reason: Option<ExitReason>,
        path: Option<String>,
        #[serde(default)]
        recursive: bool,
        #[serde(default)]
        dirs: bool,
        created: Option<bool>,
        entry: Option<Box<Entry>>,
        #[serde(default)]
        offset: u64,
        prefix_blake3: Option<String>,
        size: Option<u64>,
        #[serde(default)]
        mtime: i64,
        mode: Option<u32>,
        blake3: Option<String>,
        #[serde(default)]
        force: bool,
        nonce: Option<String>,
        proof: Option<String>,
        code: Option<ErrorCode>,
        message: Option<String>,
    }

    /// Why a header was refused. A missing field is worded as serde words
    /// it, so the wire layer reports
    /// [`MissingField`](crate::wire::Error::MissingField) whichever way a
    /// field went missing.
    pub enum Missing {
        Field(&'static str),
        /// A type that carries no body declared one; its body is skipped.
        Body(&'static str, u64),
    }

    impl std::fmt::Display for Missing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Missing::Field(name) => write!(f, "missing field `{name}`"),
                Missing::Body(kind, len) => write!(f, "`{kind}` carries no body, but `len` is {len}"),
            }
        }
    }

    fn need<T>(field: Option<T>, name: &'static str) -> Result<T, Missing> {
        field.ok_or(Missing::Field(name))
    }

    impl TryFrom<Raw> for Message {
        type Error = Missing;

        fn try_from(r: Raw) -> Result<Message, Missing> {
            let len = r.len;
            let message = match r.kind {
                Type::Echo => Message::Echo { len: r.len, upper: r.upper },
                Type::EchoReply => Message::EchoReply { len: r.len },
                Type::Exec => Message::Exec { command: need(r.command, "command")?, timeout_ms: r.timeout_ms },
                Type::Stdin => Message::Stdin { len: r.len, eof: r.eof },
                Type::Cancel => Message::Cancel,
                Type::Stdout => Message::Stdout { len: r.len },
                Type::Stderr => Message::Stderr { len: r.len },
                Type::Exit => Message::Exit { status: r.status, signal: r.signal, reason: need(r.reason, "reason")? },
                Type::List => Message::List { path: r.path.unwrap_or_default(), recursive: r.recursive, dirs: r.dirs },
                Type::ListReply => Message::ListReply { len: r.len },
                Type::Stat => Message::Stat { path: need(r.path, "path")? },
                Type::StatReply => Message::StatReply { entry: *need(r.entry, "entry")? },
                Type::Get => {
                    Message::Get { path: need(r.path, "path")?, offset: r.offset, prefix_blake3: r.prefix_blake3 }
                }
                Type::File => Message::File {
                    len: r.len,
                    size: need(r.size, "size")?,
                    offset: r.offset,
                    mtime: r.mtime,
                    mode: r.mode.unwrap_or(0),
                },
                Type::Checksum => Message::Checksum { blake3: need(r.blake3, "blake3")? },
                Type::Put => Message::Put {
                    path: need(r.path, "path")?,
                    size: need(r.size, "size")?,
                    force: r.force,
                    mode: r.mode,
                },
                Type::PutReady => Message::PutReady { offset: r.offset, prefix_blake3: r.prefix_blake3 },
                Type::PutData => Message::PutData { len: r.len, offset: r.offset },
                Type::PutDone => Message::PutDone { size: need(r.size, "size")? },
                Type::Mkdir => Message::Mkdir { path: need(r.path, "path")? },
                Type::MkdirReply => Message::MkdirReply { created: need(r.created, "created")? },
                Type::AuthChallenge => Message::AuthChallenge { nonce: need(r.nonce, "nonce")? },
                Type::AuthResponse => {
                    Message::AuthResponse { nonce: need(r.nonce, "nonce")?, proof: need(r.proof, "proof")? }
                }
                Type::AuthOk => Message::AuthOk { proof: need(r.proof, "proof")? },
                Type::Error => Message::Error { code: need(r.code, "code")?, message: need(r.message, "message")? },
            };
            // `len` is the body length of every frame: a type without a
            // body may not declare one.
            if len != 0 && crate::wire::FrameHeader::body_len(&message) == 0 {
                return Err(Missing::Body(message.kind(), len));
            }
            Ok(message)
        }
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

    #[test]
    fn error_code_display_is_wire_spelling() {
        assert_eq!(ErrorCode::UnknownType.to_string(), "unknown_type");
        assert_eq!(ErrorCode::ShuttingDown.to_string(), "shutting_down");
    }

    #[test]
    fn unknown_error_code_from_newer_peer_decodes() {
        let m: Message = serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"x"}"#).unwrap();
        assert_eq!(m, Message::error(ErrorCode::Unknown, "x"));
    }

    /// The fast parse of the data-path frames and the full parse agree,
    /// also with members in another order and members they ignore.
    #[test]
    fn hot_and_full_parses_agree() {
        let cases = [
            r#"{"type":"echo","len":5}"#,
            r#"{"len":5,"upper":true,"type":"echo"}"#,
            r#"{"type":"echo_reply","len":0,"future":[1,2]}"#,
            r#"{"type":"stdin","len":3,"eof":true}"#,
            r#"{"type":"stdout","len":7}"#,
            r#"{"type":"stderr","len":7}"#,
            r#"{"type":"put_data","len":9,"offset":4}"#,
            r#"{"type":"stat","path":"x"}"#,
        ];
        for text in cases {
            let full: Message = serde_json::from_str(text).unwrap();
            assert_eq!(<Message as FrameHeader>::from_json(text).unwrap(), full, "{text}");
        }
        for bad in [r#"{"type":"echo","len":-1}"#, r#"{"type":"echo","upper":"yes"}"#, r#"{"len":1}"#] {
            assert!(<Message as FrameHeader>::from_json(bad).is_err(), "{bad}");
        }
    }

    /// One of each message survives encoding and decoding: the flat form
    /// knows every type and member the enum has.
    #[test]
    fn every_message_round_trips() {
        let entry = Entry { name: "a".into(), size: 1, kind: Kind::File, mtime: 2, mode: 0o644 };
        let all = [
            Message::Echo { len: 1, upper: true },
            Message::EchoReply { len: 1 },
            Message::Exec { command: "true".into(), timeout_ms: Some(5) },
            Message::Stdin { len: 1, eof: true },
            Message::Cancel,
            Message::Stdout { len: 1 },
            Message::Stderr { len: 1 },
            Message::Exit { status: Some(3), signal: None, reason: ExitReason::Exited },
            Message::List { path: "d".into(), recursive: true, dirs: true },
            Message::ListReply { len: 1 },
            Message::Stat { path: "a".into() },
            Message::StatReply { entry },
            Message::Get { path: "a".into(), offset: 4, prefix_blake3: Some("ab".into()) },
            Message::File { len: 1, size: 5, offset: 4, mtime: 2, mode: 0o644 },
            Message::Checksum { blake3: "cd".into() },
            Message::Put { path: "a".into(), size: 5, force: true, mode: Some(0o600) },
            Message::PutReady { offset: 4, prefix_blake3: Some("ab".into()) },
            Message::PutData { len: 1, offset: 4 },
            Message::PutDone { size: 5 },
            Message::Mkdir { path: "d/e".into() },
            Message::MkdirReply { created: true },
            Message::AuthChallenge { nonce: "00".into() },
            Message::AuthResponse { nonce: "01".into(), proof: "02".into() },
            Message::AuthOk { proof: "03".into() },
            Message::error(ErrorCode::Exists, "there"),
        ];
        for m in all {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(<Message as FrameHeader>::from_json(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn echo_header_is_compact() {
        let m = Message::Echo { len: 5, upper: false };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"echo","len":5}"#);
    }
}
