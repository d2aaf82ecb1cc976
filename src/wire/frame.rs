//! Frames, sans-IO: parse a frame head from a buffer, encode one into a
//! buffer, and the `tokio_util::codec` pair for frames held in memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::error::Category;
use tokio_util::codec::{Decoder, Encoder};

use super::{Error, FramePart, LEN_PREFIX, MAX_BUFFERED_BODY, MAX_HEADER_LEN};

/// A header type that can ride in a frame: any serde type whose JSON form
/// is an object carrying the body length as `"len"` (absent means 0).
pub trait FrameHeader: Serialize + Sized {
    /// The number of body bytes that follow this header.
    fn body_len(&self) -> u64;

    /// Parses a header from its JSON text. [`parse_json`] does it for any
    /// `Deserialize` type; a type may add a faster path for its most
    /// frequent forms, or refuse types that are not due.
    ///
    /// # Errors
    ///
    /// A recoverable [`Error`] (unknown type, missing or invalid field, a
    /// type not due here) when the header is a JSON object whose `len` is
    /// known, [`Error::HeaderNotJson`] otherwise.
    fn from_json(text: &str) -> Result<Self, Error>;
}

/// Parses `text` as `H` with serde, errors worded as
/// [`FrameHeader::from_json`] says.
///
/// # Errors
///
/// As [`FrameHeader::from_json`].
pub fn parse_json<H: DeserializeOwned>(text: &str) -> Result<H, Error> {
    serde_json::from_str(text).map_err(|e| json_error(text, e))
}

/// The error for a header `text` that serde refused with `e`.
pub fn json_error(text: &str, e: serde_json::Error) -> Error {
    // A `type` of the wrong JSON type is a syntax error to serde (an enum
    // expects a string): what decides is whether `len` can be read.
    if e.classify() == Category::Data || declared_body_len(text).is_ok() {
        reject(text, e)
    } else {
        Error::HeaderNotJson { source: e }
    }
}

/// The two fields the wire itself reads from every header, whatever its
/// type: used to keep frames in sync when a header is rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message type (`"type"`), if present.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The body length (`"len"`), 0 when absent.
    #[serde(default)]
    pub len: u64,
}

impl FrameHeader for Envelope {
    fn body_len(&self) -> u64 {
        self.len
    }

    fn from_json(text: &str) -> Result<Self, Error> {
        parse_json(text)
    }
}

/// A parsed frame head: the header and where its body starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Head<H> {
    /// The typed header.
    pub header: H,
    /// Body bytes that follow.
    pub body_len: u64,
    /// Bytes of the buffer the head took (length prefix + header).
    pub head_len: usize,
}

/// A frame with its whole body in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<H> {
    /// The header.
    pub header: H,
    /// The body; its length is the header's [`FrameHeader::body_len`].
    pub body: Bytes,
}

/// Parses the head (length prefix + JSON header) at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds less than a whole head: incomplete
/// input is "need more", never an error. Allocates nothing but the header
/// value itself.
///
/// # Errors
///
/// [`Error::HeaderTooLarge`] as soon as the prefix is seen, before the
/// header is buffered; [`Error::HeaderNotUtf8`] and [`Error::HeaderNotJson`]
/// when the header cannot be read at all (framing is lost); and the
/// recoverable [`Error::UnknownType`], [`Error::MissingField`] and
/// [`Error::InvalidField`] when it is a well-formed object that `H` rejects.
///
/// # Examples
///
/// ```
/// use framewire::wire::{decode_head, Envelope};
///
/// let mut buf = Vec::new();
/// let header = br#"{"type":"echo","len":2}"#;
/// buf.extend_from_slice(&(header.len() as u32).to_be_bytes());
/// buf.extend_from_slice(header);
/// buf.extend_from_slice(b"hi");
///
/// // A split anywhere before the end of the header is "need more".
/// assert!(decode_head::<Envelope>(&buf[..10]).unwrap().is_none());
///
/// let head = decode_head::<Envelope>(&buf).unwrap().unwrap();
/// assert_eq!(head.header.kind.as_deref(), Some("echo"));
/// assert_eq!(head.body_len, 2);
/// assert_eq!(&buf[head.head_len..], b"hi");
/// ```
pub fn decode_head<H: FrameHeader>(buf: &[u8]) -> Result<Option<Head<H>>, Error> {
    decode_head_within(buf, MAX_HEADER_LEN)
}

/// As [`decode_head`], with a header limit of `max_header` (at most
/// [`MAX_HEADER_LEN`]).
///
/// # Errors
///
/// As [`decode_head`].
pub fn decode_head_within<H: FrameHeader>(buf: &[u8], max_header: usize) -> Result<Option<Head<H>>, Error> {
    let Some(head_len) = head_len_within(buf, max_header)? else {
        return Ok(None);
    };
    if buf.len() < head_len {
        return Ok(None);
    }
    let header: H = parse_header(&buf[LEN_PREFIX..head_len])?;
    Ok(Some(Head { body_len: header.body_len(), header, head_len }))
}

/// The total head length announced by the prefix at the start of `buf`,
/// checked against [`MAX_HEADER_LEN`]; `None` until the prefix is there.
pub(crate) fn head_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    head_len_within(buf, MAX_HEADER_LEN)
}

pub(crate) fn head_len_within(buf: &[u8], max_header: usize) -> Result<Option<usize>, Error> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes"));
    let max = max_header.min(MAX_HEADER_LEN);
    if len as usize > max {
        return Err(Error::HeaderTooLarge { len: len.into(), max });
    }
    Ok(Some(LEN_PREFIX + len as usize))
}

fn parse_header<H: FrameHeader>(raw: &[u8]) -> Result<H, Error> {
    let text =
        std::str::from_utf8(raw).map_err(|e| Error::HeaderNotUtf8 { valid_up_to: e.valid_up_to(), len: raw.len() })?;
    tracing::trace!("frame in: {}", crate::text::printable(text));
    H::from_json(text)
}

/// A header that is valid JSON but that `H` refused: find its body length
/// through the [`Envelope`] so the stream can stay in sync, and say
/// precisely what was wrong. Runs only on the error path.
fn reject(text: &str, e: serde_json::Error) -> Error {
    let body_len = match declared_body_len(text) {
        Ok(len) => len,
        // Not an object, or `len` itself unusable: the body length is
        // unknown and framing is lost.
        Err(_) => return Error::HeaderNotJson { source: e },
    };
    // serde's messages for these two cases are fixed strings
    // ("unknown variant `x`", "missing field `x`"); anything else stays
    // the generic, still recoverable, InvalidField.
    let msg = e.to_string();
    if let Some(field) = msg.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
        return Error::MissingField { field: field.to_owned(), body_len };
    }
    match serde_json::from_str::<Envelope>(text) {
        Ok(Envelope { kind: Some(kind), .. }) if msg.starts_with("unknown variant") => {
            Error::UnknownType { kind, body_len }
        }
        Ok(Envelope { kind: Some(_), .. }) => Error::InvalidField { source: e, body_len },
        // `type` is there but not one string (`5`, `null`, given twice):
        // the frame's length is known, so the frame is answered and
        // skipped like any other member of the wrong type.
        _ => {
            let why = "`type` must be one JSON string, the message type, given once";
            Error::InvalidField { source: serde::de::Error::custom(why), body_len }
        }
    }
}

/// `len` alone: what framing needs of every header, whatever else it
/// holds (members of any type, a `type` given twice).
#[derive(Deserialize)]
struct BodyLen {
    #[serde(default)]
    len: u64,
}

/// The body length a JSON object header declares, whatever else it says.
///
/// # Errors
///
/// It is not a JSON object, or its `len` is not one non-negative integer
/// (absent is 0): framing is lost then.
pub(crate) fn declared_body_len(text: &str) -> Result<u64, serde_json::Error> {
    serde_json::from_str::<BodyLen>(text).map(|b| b.len)
}

/// Appends the head of a frame (length prefix + JSON of `header`) to `dst`.
///
/// # Errors
///
/// [`Error::HeaderTooLarge`] if the JSON would exceed [`MAX_HEADER_LEN`]:
/// nothing is sent that the peer would refuse. `dst` is left as it was.
pub fn encode_head<H: Serialize>(header: &H, dst: &mut BytesMut) -> Result<(), Error> {
    let start = dst.len();
    dst.put_u32(0);
    if let Err(source) = serde_json::to_writer(ExtendWriter(dst), header) {
        dst.truncate(start);
        return Err(Error::InvalidField { source, body_len: 0 });
    }
    let len = dst.len() - start - LEN_PREFIX;
    if len > MAX_HEADER_LEN {
        dst.truncate(start);
        return Err(Error::HeaderTooLarge { len: len as u64, max: MAX_HEADER_LEN });
    }
    tracing::trace!("frame out: {}", crate::text::printable(&String::from_utf8_lossy(&dst[start + LEN_PREFIX..])));
    dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// `io::Write` into a `BytesMut`. `bytes::buf::Writer` would do, but it
/// has no `write_all` and serde_json writes in many tiny pieces: this one
/// encodes a small header in less than half the time.
struct ExtendWriter<'a>(&'a mut BytesMut);

impl std::io::Write for ExtendWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends a whole frame (head + body) to `dst`, so that it can go out in
/// one write.
///
/// # Errors
///
/// As [`encode_head`], plus [`Error::BodyLenMismatch`] when `body` is not
/// the length the header declares.
pub fn encode_frame<H: FrameHeader>(header: &H, body: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
    let declared = header.body_len();
    if declared != body.len() as u64 {
        return Err(Error::BodyLenMismatch { declared, actual: body.len() as u64 });
    }
    dst.reserve(LEN_PREFIX + 64 + body.len());
    encode_head(header, dst)?;
    dst.extend_from_slice(body);
    Ok(())
}

/// A `tokio_util::codec` Decoder/Encoder for frames whose body is held in
/// memory, up to a limit ([`MAX_BUFFERED_BODY`] by default).
///
/// For bodies of any size, use [`FrameReader`](super::FrameReader) and
/// [`FrameWriter`](super::FrameWriter), which stream them.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use framewire::wire::{Envelope, Frame, FrameCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::<Envelope>::new();
/// let mut buf = BytesMut::new();
/// let header = Envelope { kind: Some("note".into()), len: 5 };
/// codec.encode(Frame { header: header.clone(), body: "hello".into() }, &mut buf).unwrap();
/// codec.encode(Frame { header: Envelope::default(), body: "".into() }, &mut buf).unwrap();
///
/// // Two frames in one buffer ("sticky") come out as two frames.
/// let first = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(first.header, header);
/// assert_eq!(first.body, "hello");
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body, "");
/// assert!(codec.decode(&mut buf).unwrap().is_none());
/// ```
#[derive(Debug)]
pub struct FrameCodec<H> {
    max_body: u64,
    /// A head already parsed whose body has not fully arrived: kept so a
    /// header is parsed once however the body trickles in.
    pending: Option<(H, usize)>,
}

impl<H> FrameCodec<H> {
    /// A codec holding bodies up to [`MAX_BUFFERED_BODY`].
    pub fn new() -> Self {
        Self::with_max_body(MAX_BUFFERED_BODY)
    }

    /// A codec holding bodies up to `max_body` bytes.
    pub fn with_max_body(max_body: u64) -> Self {
        FrameCodec { max_body, pending: None }
    }
}

impl<H> Default for FrameCodec<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: FrameHeader> Decoder for FrameCodec<H> {
    type Item = Frame<H>;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<H>>, Error> {
        if self.pending.is_none() {
            let Some(head_len) = head_len(src)? else {
                return Ok(None);
            };
            if src.len() < head_len {
                src.reserve(head_len - src.len());
                return Ok(None);
            }
            let head = decode_head::<H>(src)?.expect("whole head is buffered");
            if head.body_len > self.max_body {
                return Err(Error::BodyTooLarge { len: head.body_len, max: self.max_body });
            }
            src.advance(head.head_len);
            self.pending = Some((head.header, head.body_len as usize));
        }
        let body_len = self.pending.as_ref().map_or(0, |p| p.1);
        if src.len() < body_len {
            src.reserve(body_len - src.len());
            return Ok(None);
        }
        let (header, _) = self.pending.take().expect("pending head");
        let body = src.split_to(body_len).freeze();
        Ok(Some(Frame { header, body }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame<H>>, Error> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match &self.pending {
            Some((_, body_len)) => {
                Err(Error::UnexpectedEof { part: FramePart::Body, got: src.len() as u64, expected: *body_len as u64 })
            }
            None if src.is_empty() => Ok(None),
            None => Err(eof_in_head(src)),
        }
    }
}

/// The error for EOF with `buf` holding part of a head.
pub(crate) fn eof_in_head(buf: &[u8]) -> Error {
    match head_len(buf) {
        Ok(Some(total)) => Error::UnexpectedEof {
            part: FramePart::Header,
            got: (buf.len() - LEN_PREFIX) as u64,
            expected: (total - LEN_PREFIX) as u64,
        },
        Ok(None) => {
            Error::UnexpectedEof { part: FramePart::LengthPrefix, got: buf.len() as u64, expected: LEN_PREFIX as u64 }
        }
        Err(e) => e,
    }
}

impl<H: FrameHeader> Encoder<Frame<H>> for FrameCodec<H> {
    type Error = Error;

    fn encode(&mut self, frame: Frame<H>, dst: &mut BytesMut) -> Result<(), Error> {
        encode_frame(&frame.header, &frame.body, dst)
    }
}

impl<H: FrameHeader> Encoder<&Frame<H>> for FrameCodec<H> {
    type Error = Error;

    fn encode(&mut self, frame: &Frame<H>, dst: &mut BytesMut) -> Result<(), Error> {
        encode_frame(&frame.header, &frame.body, dst)
    }
}
