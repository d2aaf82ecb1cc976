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
/// send more), so decoding goes through the flat [`raw::Raw`]: serde's own
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
            Message::Error { .. } => "error",
        }
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Message::Error {
            code,
            message: message.into(),
        }
    }
}

impl FrameHeader for Message {
    fn body_len(&self) -> u64 {
        match self {
            Message::Echo { len, .. } | Message::EchoReply { len } => *len,
            Message::Error { .. } => 0,
        }
    }
}

mod raw {
    //! The flat form every header is decoded through: one pass, no
    //! buffering; the `type` picks which fields must be present.

    use serde::Deserialize;

    use super::{ErrorCode, Message};

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Echo,
        EchoReply,
        Error,
    }

    #[derive(Deserialize)]
    pub struct Raw {
        #[serde(rename = "type")]
        kind: Kind,
        #[serde(default)]
        len: u64,
        #[serde(default)]
        upper: bool,
        code: Option<ErrorCode>,
        message: Option<String>,
    }

    /// Worded as serde words it, so the wire layer reports
    /// [`MissingField`](crate::wire::Error::MissingField) whichever way a
    /// field went missing.
    pub struct Missing(&'static str);

    impl std::fmt::Display for Missing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "missing field `{}`", self.0)
        }
    }

    fn need<T>(field: Option<T>, name: &'static str) -> Result<T, Missing> {
        field.ok_or(Missing(name))
    }

    impl TryFrom<Raw> for Message {
        type Error = Missing;

        fn try_from(r: Raw) -> Result<Message, Missing> {
            Ok(match r.kind {
                Kind::Echo => Message::Echo {
                    len: r.len,
                    upper: r.upper,
                },
                Kind::EchoReply => Message::EchoReply { len: r.len },
                Kind::Error => Message::Error {
                    code: need(r.code, "code")?,
                    message: need(r.message, "message")?,
                },
            })
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
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
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
        let m: Message =
            serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"x"}"#).unwrap();
        assert_eq!(m, Message::error(ErrorCode::Unknown, "x"));
    }

    #[test]
    fn echo_header_is_compact() {
        let m = Message::Echo {
            len: 5,
            upper: false,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"echo","len":5}"#
        );
    }
}
