//! The typed errors of the wire layer.

use std::{fmt, io, time::Duration};

/// Which part of a frame a byte count refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The connection preface (magic + version + flags).
    Preface,
    /// The 4-byte big-endian header length.
    LengthPrefix,
    /// The JSON header.
    Header,
    /// The body.
    Body,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::Preface => "preface",
            FramePart::LengthPrefix => "length prefix",
            FramePart::Header => "header",
            FramePart::Body => "body",
        })
    }
}

/// Everything that can go wrong reading or writing frames.
///
/// [`Error::is_recoverable`] tells the two families apart: a header that is
/// well framed but says something wrong (unknown `type`, missing or bad
/// field) leaves the stream in sync, so a peer can answer with an error
/// frame and go on; anything else (oversize, bad UTF-8, bad JSON, EOF, I/O)
/// means frame boundaries are lost and the connection must close.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The length prefix announced a header over the reader's limit:
    /// [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN), or
    /// [`PREAUTH_MAX_HEADER`](super::PREAUTH_MAX_HEADER) before
    /// authentication.
    #[error("header length {len} exceeds the limit of {max} bytes ({})", limit_name(*max))]
    HeaderTooLarge {
        /// The announced header length.
        len: u64,
        /// The limit.
        max: usize,
    },

    /// A body was declared larger than the limit of the reader that had to
    /// hold it in memory.
    #[error("body length {len} exceeds the limit of {max} bytes for a body held in memory; stream it instead")]
    BodyTooLarge {
        /// The declared body length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The header bytes are not UTF-8.
    #[error("header is not valid UTF-8 (first bad byte at offset {valid_up_to} of {len})")]
    HeaderNotUtf8 {
        /// How many leading bytes were valid.
        valid_up_to: usize,
        /// The header length.
        len: usize,
    },

    /// The header is UTF-8 but not a JSON object, or its `len` is not a
    /// non-negative integer, so the body length is unknown.
    #[error("header is not a valid JSON object: {source}")]
    HeaderNotJson {
        /// What the JSON parser said.
        source: serde_json::Error,
    },

    /// The header names a `type` this side does not know. Recoverable.
    #[error("unknown message type {kind:?}")]
    UnknownType {
        /// The `type` as sent.
        kind: String,
        /// The body length to skip.
        body_len: u64,
    },

    /// The header names a `type` the protocol defines, but not one that
    /// may come at this point (a reply sent as a request, say).
    /// Recoverable.
    #[error("`{kind}` is not expected here (expected {expected})")]
    Unexpected {
        /// The `type` as sent.
        kind: String,
        /// What was due instead.
        expected: &'static str,
        /// The body length to skip.
        body_len: u64,
    },

    /// The header lacks a field its `type` requires. Recoverable.
    #[error("header lacks required field `{field}`")]
    MissingField {
        /// The missing member.
        field: String,
        /// The body length to skip.
        body_len: u64,
    },

    /// A header field has the wrong type or value. Recoverable.
    #[error("invalid header field: {source}")]
    InvalidField {
        /// What the JSON parser said.
        source: serde_json::Error,
        /// The body length to skip.
        body_len: u64,
    },

    /// The peer closed the connection inside a frame.
    #[error("connection closed inside a frame: {got} of {expected} bytes of the {part} arrived")]
    UnexpectedEof {
        /// Which part of the frame was cut.
        part: FramePart,
        /// Bytes of it that arrived.
        got: u64,
        /// Bytes it should have had.
        expected: u64,
    },

    /// The peer did not open with the framewire preface.
    #[error("peer is not speaking framewire: it opened with {got:02x?}{}", preface_hint(got))]
    BadPreface {
        /// The bytes the peer opened with.
        got: Vec<u8>,
    },

    /// The peer speaks a protocol version this side does not.
    #[error("peer speaks framewire protocol version {theirs}; this side speaks version {ours}")]
    UnsupportedVersion {
        /// The version this side speaks.
        ours: u16,
        /// The version the peer speaks.
        theirs: u16,
    },

    /// The peer set preface flags this side does not understand.
    #[error("peer set unknown preface flags {flags:#06x}")]
    UnsupportedFlags {
        /// The flags as sent.
        flags: u16,
    },

    /// The peer sent nothing back to our preface in time: a server that
    /// waits for its client to speak first (HTTP) is silent.
    #[error("no framewire preface came back within {0:?}: the peer does not speak framewire (a server that waits for its client to speak first, as HTTP does, stays silent), or it is too busy to answer")]
    SilentPeer(Duration),

    /// No frame started within the idle timeout.
    #[error("no request for {0:?} (idle timeout)")]
    Idle(Duration),

    /// A read inside a frame, or a write, made no progress in time.
    #[error("peer stalled: no progress for {0:?} inside a frame (I/O timeout)")]
    Stalled(Duration),

    /// A body source (file, pipe) ended before the declared length.
    #[error("body source ended after {got} of {expected} declared bytes")]
    BodySourceShort {
        /// Bytes the source gave.
        got: u64,
        /// Bytes declared.
        expected: u64,
    },

    /// More body bytes were written than the header declared, or a frame
    /// was started before the previous body was complete.
    #[error("body length mismatch: header declared {declared} bytes, {actual} were given")]
    BodyLenMismatch {
        /// Bytes the header declared (left).
        declared: u64,
        /// Bytes given.
        actual: u64,
    },
}

impl Error {
    /// True when the stream is still in sync after this error: the header
    /// was consumed, and the body (of the length returned by
    /// [`Error::body_len`]) will be skipped by the next read.
    pub fn is_recoverable(&self) -> bool {
        self.body_len().is_some()
    }

    /// The body length of a frame whose header was rejected but framed.
    pub fn body_len(&self) -> Option<u64> {
        match self {
            Error::UnknownType { body_len, .. }
            | Error::Unexpected { body_len, .. }
            | Error::MissingField { body_len, .. }
            | Error::InvalidField { body_len, .. } => Some(*body_len),
            _ => None,
        }
    }
}

/// The name of a header limit, as the documents give it.
fn limit_name(max: usize) -> &'static str {
    match max {
        super::PREAUTH_MAX_HEADER => "PREAUTH_MAX_HEADER, before authentication",
        super::MAX_HEADER_LEN => "MAX_HEADER_LEN",
        _ => "this reader's limit",
    }
}

fn preface_hint(got: &[u8]) -> &'static str {
    const HTTP: [&[u8]; 7] = [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN"];
    if HTTP.iter().any(|m| got.starts_with(m)) || got.starts_with(b"HTTP") {
        " (this looks like HTTP; framewire is not an HTTP server)"
    } else if got.first() == Some(&0x16) && got.get(1) == Some(&0x03) {
        " (this looks like a TLS ClientHello)"
    } else if got.starts_with(b"SSH-") {
        " (this looks like SSH)"
    } else if !got.is_empty() && got.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        " (plain text: a tutorial-style client sending raw commands?)"
    } else {
        ""
    }
}
