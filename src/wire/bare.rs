//! The bare layer: a `u32` big-endian length, then that many payload bytes.
//! No header, no preface: message boundaries and nothing else.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Error, FramePart, LEN_PREFIX, MAX_BARE_PAYLOAD};

/// A `tokio_util::codec` Decoder/Encoder for `u32` big-endian
/// length-prefixed messages: the same bytes as
/// `LengthDelimitedCodec`'s defaults, with the limit checked before
/// anything is reserved.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use framewire::wire::BareCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = BareCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(&b"one"[..], &mut buf).unwrap();
/// codec.encode(&b"two"[..], &mut buf).unwrap();
/// assert_eq!(&buf[..7], b"\0\0\0\x03one");
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "one");
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "two");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BareCodec {
    max_payload: usize,
}

impl BareCodec {
    /// A codec accepting payloads up to [`MAX_BARE_PAYLOAD`] bytes.
    pub fn new() -> Self {
        Self::with_max_payload(MAX_BARE_PAYLOAD)
    }

    /// A codec accepting payloads up to `max_payload` bytes (at most
    /// `u32::MAX`).
    pub fn with_max_payload(max_payload: usize) -> Self {
        BareCodec { max_payload: max_payload.min(u32::MAX as usize) }
    }
}

impl Default for BareCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for BareCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > self.max_payload {
            return Err(Error::BodyTooLarge { len: len as u64, max: self.max_payload as u64 });
        }
        let total = LEN_PREFIX + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None if src.len() < LEN_PREFIX => Err(Error::UnexpectedEof {
                part: FramePart::LengthPrefix,
                got: src.len() as u64,
                expected: LEN_PREFIX as u64,
            }),
            None => Err(Error::UnexpectedEof {
                part: FramePart::Body,
                got: (src.len() - LEN_PREFIX) as u64,
                expected: u32::from_be_bytes(src[..LEN_PREFIX].try_into().expect("4 bytes")).into(),
            }),
        }
    }
}

impl Encoder<&[u8]> for BareCodec {
    type Error = Error;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        if payload.len() > self.max_payload {
            return Err(Error::BodyTooLarge { len: payload.len() as u64, max: self.max_payload as u64 });
        }
        dst.reserve(LEN_PREFIX + payload.len());
        dst.put_u32(payload.len() as u32);
        dst.extend_from_slice(payload);
        Ok(())
    }
}

impl Encoder<Bytes> for BareCodec {
    type Error = Error;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode(&payload[..], dst)
    }
}
