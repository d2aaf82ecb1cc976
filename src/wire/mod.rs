//! The wire: a connection preface, then frames of
//! `u32` big-endian header length + UTF-8 JSON header + body.
//!
//! Everything here is transport-agnostic: [`decode_head`] and [`FrameCodec`]
//! work on byte buffers (sans-IO), [`FrameReader`] / [`FrameWriter`] drive any
//! `AsyncRead` / `AsyncWrite`, and [`BareCodec`] is the bare `u32` length
//! prefix the header itself rides on, for users who only need boundaries.
//! `docs/PROTOCOL.md` is the normative description of these bytes.

mod bare;
mod compact;
mod error;
mod frame;
mod io;
mod preface;

use std::time::Duration;

pub use bare::BareCodec;
pub use compact::{compact, expand};
pub use error::{Error, FramePart};
pub(crate) use frame::declared_body_len;
pub use frame::{
    decode_head, decode_head_within, encode_frame, encode_head, json_error, parse_json, Envelope, Frame, FrameCodec,
    FrameHeader, Head,
};
pub use io::{FrameReader, FrameWriter};
pub use preface::{read_preface, PartialPreface, Preface, FLAG_REFUSED, FLAG_TLS, MAGIC, VERSION};

/// Size of the big-endian `u32` that opens every frame (and every bare
/// message of [`BareCodec`]).
pub const LEN_PREFIX: usize = 4;

/// Size of the connection preface: [`MAGIC`], version, flags.
pub const PREFACE_LEN: usize = 8;

/// Largest header accepted before authentication: the handshake's frames
/// are small, and an unauthenticated peer gets no more.
pub const PREAUTH_MAX_HEADER: usize = 1024;

/// Largest JSON header accepted or sent, in bytes. Checked against the
/// length prefix before a single header byte is buffered.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Largest body held whole in memory ([`FrameCodec`],
/// [`FrameReader::read_body`]). Larger bodies must be streamed with
/// [`FrameReader::read_body_chunk`] / [`FrameWriter::write_body`], which
/// accept any length up to `u64::MAX` in bounded memory.
pub const MAX_BUFFERED_BODY: u64 = 16 * 1024 * 1024;

/// Largest payload of a [`BareCodec`] message by default.
pub const MAX_BARE_PAYLOAD: usize = 16 * 1024 * 1024;

/// How much of a streamed body is read or written at once: loopback runs
/// at ~1 GB/s with 8 KiB writes, ~2.9 GB/s with 128 KiB and ~4.7 GB/s with
/// 1 MiB on this kind of machine, and a transfer holds only a few of these.
pub const STREAM_CHUNK: usize = 1024 * 1024;

/// Time limits a [`FrameReader`] or [`FrameWriter`] enforces. `None`
/// disables a limit (library default); the server sets all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Between frames: the next frame must start within this long.
    pub idle: Option<Duration>,
    /// Inside a frame: the length prefix and header must complete within
    /// this long of their first byte, and every read of a body must make
    /// progress within this long. Also bounds every write.
    pub io: Option<Duration>,
}
