//! The codec against any split and any coalescing of the byte stream, and
//! every class of malformed input against its typed error.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use framewire::proto::{self, AnyMessage as Message};
use framewire::wire::{
    BareCodec, Envelope, Error, Frame, FrameCodec, FramePart, FrameReader, FrameWriter, MAX_HEADER_LEN,
};
use framewire::ErrorCode;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

fn arb_frame() -> impl Strategy<Value = Frame<Envelope>> {
    (
        proptest::option::of("[a-z_]{0,12}"),
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 0..5000),
        ],
    )
        .prop_map(|(kind, body)| Frame { header: Envelope { kind, len: body.len() as u64 }, body: body.into() })
}

fn encode_all(frames: &[Frame<Envelope>]) -> BytesMut {
    let mut codec = FrameCodec::<Envelope>::new();
    let mut buf = BytesMut::new();
    for f in frames {
        codec.encode(f, &mut buf).unwrap();
    }
    buf
}

/// Cuts `bytes` into reads of the given sizes (cycled), the last one
/// whatever is left.
fn split(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - at);
        out.push(bytes[at..at + n].to_vec());
        at += n;
        i += 1;
    }
    out
}

/// An `AsyncRead` handing out exactly the given reads, one per poll, then EOF:
/// the shape of a TCP stream that splits and coalesces at those points.
struct Reads(std::collections::VecDeque<Vec<u8>>);

impl AsyncRead for Reads {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(mut chunk) = self.0.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any frames, cut at any points (1-byte reads included) and glued in
    /// any way, decode to the same frames.
    #[test]
    fn codec_any_split_any_coalescing(
        frames in proptest::collection::vec(arb_frame(), 0..40),
        sizes in proptest::collection::vec(prop_oneof![Just(1usize), 1usize..16, 1usize..4096], 1..20),
    ) {
        let wire = encode_all(&frames);
        let mut codec = FrameCodec::<Envelope>::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for read in split(&wire, &sizes) {
            buf.extend_from_slice(&read);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(got, frames);
    }

    /// The same through `FrameReader`, bodies read whole, in chunks, or
    /// into a reused buffer.
    #[test]
    fn reader_any_split(
        frames in proptest::collection::vec(arb_frame(), 0..20),
        sizes in proptest::collection::vec(prop_oneof![Just(1usize), 1usize..4096], 1..10),
        how in 0..3u8,
        cap in 1usize..5000,
    ) {
        let wire = encode_all(&frames);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(async {
            let mut r = FrameReader::new(Reads(split(&wire, &sizes).into()));
            let mut got = Vec::new();
            while let Some((header, len)) = r.read_head::<Envelope>().await.unwrap() {
                assert_eq!(len, header.len);
                let body = match how {
                    0 => r.read_body(u64::MAX).await.unwrap(),
                    1 => {
                        let mut b = BytesMut::new();
                        while let Some(c) = r.read_body_chunk().await.unwrap() { b.extend_from_slice(&c); }
                        b.freeze()
                    }
                    _ => {
                        // One reused buffer of `cap`, never grown.
                        let (mut b, mut buf) = (BytesMut::new(), Vec::with_capacity(cap));
                        let cap = buf.capacity();
                        while r.body_left() > 0 {
                            buf.clear();
                            r.read_body_into(&mut buf).await.unwrap();
                            assert!(!buf.is_empty() && buf.capacity() == cap);
                            assert!(buf.len() == cap || r.body_left() == 0, "only the last piece is short");
                            b.extend_from_slice(&buf);
                        }
                        b.freeze()
                    }
                };
                got.push(Frame { header, body });
            }
            got
        });
        prop_assert_eq!(got, frames);
    }

    /// Bare messages too.
    #[test]
    fn bare_any_split(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
        sizes in proptest::collection::vec(1usize..600, 1..10),
    ) {
        let mut codec = BareCodec::new();
        let mut wire = BytesMut::new();
        for m in &msgs { codec.encode(&m[..], &mut wire).unwrap(); }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for read in split(&wire, &sizes) {
            buf.extend_from_slice(&read);
            while let Some(m) = codec.decode(&mut buf).unwrap() { got.push(m.to_vec()); }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(got, msgs);
    }

    /// Arbitrary bytes never panic the decoder: they decode, need more, or
    /// fail with a typed error.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut codec = FrameCodec::<Message>::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
        let _ = codec.decode_eof(&mut buf);
    }

    /// A truncated stream is always an UnexpectedEof naming the right part.
    #[test]
    fn truncation_is_eof_error(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
        let wire = encode_all(std::slice::from_ref(&frame));
        let keep = cut.index(wire.len());
        prop_assume!(keep > 0);
        let mut codec = FrameCodec::<Envelope>::new();
        let mut buf = BytesMut::from(&wire[..keep]);
        let res = codec.decode_eof(&mut buf);
        let is_eof = matches!(res, Err(Error::UnexpectedEof { .. }));
        prop_assert!(is_eof, "{:?}", res);
    }
}

fn raw_frame(header: &[u8], body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(header.len() as u32);
    b.extend_from_slice(header);
    b.extend_from_slice(body);
    b
}

fn decode(bytes: &[u8]) -> Result<Option<Frame<Message>>, Error> {
    FrameCodec::<Message>::new().decode(&mut BytesMut::from(bytes))
}

#[test]
fn oversize_header_length_is_refused_before_buffering() {
    let err = decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
    assert!(matches!(err, Error::HeaderTooLarge { len: 0xffff_ffff, max: MAX_HEADER_LEN }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("4294967295") && msg.contains("65536") && msg.contains("(MAX_HEADER_LEN)"), "{msg}");
    assert!(!err.is_recoverable());

    // Before authentication the limit is 1 KiB, and named as that one
    // (issue 28: it was logged as MAX_HEADER_LEN).
    let mut head = 2000u32.to_be_bytes().to_vec();
    head.extend([b' '; 8]);
    let err = framewire::wire::decode_head_within::<Message>(&head, framewire::wire::PREAUTH_MAX_HEADER).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("limit of 1024 bytes (PREAUTH_MAX_HEADER, before authentication)"), "{msg}");
}

#[test]
fn header_not_utf8() {
    let err = decode(&raw_frame(b"{\"type\":\"\xff\"}", b"")).unwrap_err();
    assert!(matches!(err, Error::HeaderNotUtf8 { valid_up_to: 9, len: 12 }), "{err:?}");
}

#[test]
fn header_not_json() {
    let err = decode(&raw_frame(b"{type: echo}", b"")).unwrap_err();
    assert!(matches!(err, Error::HeaderNotJson { .. }), "{err:?}");
    // Valid JSON that is not an object: the body length cannot be known.
    let err = decode(&raw_frame(b"[1,2]", b"")).unwrap_err();
    assert!(matches!(err, Error::HeaderNotJson { .. }), "{err:?}");
    let err = decode(&raw_frame(br#"{"type":"echo","len":-1}"#, b"")).unwrap_err();
    assert!(matches!(err, Error::HeaderNotJson { .. }), "{err:?}");
    assert!(!err.is_recoverable());
}

#[test]
fn missing_field_names_the_field() {
    let err = decode(&raw_frame(br#"{"type":"error","message":"x"}"#, b"")).unwrap_err();
    assert!(matches!(&err, Error::MissingField { field, body_len: 0 } if field == "code"), "{err:?}");
    assert!(err.to_string().contains("`code`"));
    assert!(err.is_recoverable());
    let err = decode(&raw_frame(br#"{"len":3}"#, b"abc")).unwrap_err();
    assert!(matches!(&err, Error::MissingField { field, body_len: 3 } if field == "type"), "{err:?}");
}

#[test]
fn unknown_type_is_recoverable_with_its_body_length() {
    let err = decode(&raw_frame(br#"{"type":"teleport","len":7}"#, b"payload")).unwrap_err();
    assert!(matches!(&err, Error::UnknownType { kind, body_len: 7 } if kind == "teleport"), "{err:?}");
}

#[test]
fn invalid_field_is_recoverable() {
    let err = decode(&raw_frame(br#"{"type":"echo","len":2,"upper":"yes"}"#, b"ab")).unwrap_err();
    assert!(matches!(err, Error::InvalidField { body_len: 2, .. }), "{err:?}");
}

#[test]
fn body_over_the_in_memory_limit() {
    let mut codec = FrameCodec::<Envelope>::with_max_body(10);
    let err = codec.decode(&mut raw_frame(br#"{"len":11}"#, b"")).unwrap_err();
    assert!(matches!(err, Error::BodyTooLarge { len: 11, max: 10 }), "{err:?}");
}

#[test]
fn eof_in_each_part_is_named() {
    let wire = raw_frame(br#"{"type":"echo","len":4}"#, b"body");
    let cases = [(2, FramePart::LengthPrefix, 2, 4), (10, FramePart::Header, 6, 23), (29, FramePart::Body, 2, 4)];
    for (keep, part, got, expected) in cases {
        let err = FrameCodec::<Message>::new().decode_eof(&mut BytesMut::from(&wire[..keep])).unwrap_err();
        match err {
            Error::UnexpectedEof { part: p, got: g, expected: e } => {
                assert_eq!((p, g, e), (part, got, expected), "cut at {keep}")
            }
            other => panic!("cut at {keep}: {other:?}"),
        }
    }
}

#[test]
fn bare_oversize_and_eof() {
    let mut codec = BareCodec::with_max_payload(100);
    let err = codec.decode(&mut BytesMut::from(&[0, 0, 1, 0][..])).unwrap_err();
    assert!(matches!(err, Error::BodyTooLarge { len: 256, max: 100 }), "{err:?}");
    let err = codec.decode_eof(&mut BytesMut::from(&[0, 0, 0, 9, 1, 2][..])).unwrap_err();
    assert!(matches!(err, Error::UnexpectedEof { part: FramePart::Body, got: 2, expected: 9 }), "{err:?}");
}

#[test]
fn encoder_refuses_a_body_that_does_not_match_the_header() {
    let mut buf = BytesMut::new();
    let frame = Frame { header: Envelope { kind: None, len: 3 }, body: Bytes::from_static(b"ab") };
    let err = FrameCodec::new().encode(frame, &mut buf).unwrap_err();
    assert!(matches!(err, Error::BodyLenMismatch { declared: 3, actual: 2 }), "{err:?}");
    assert!(buf.is_empty());
}

#[test]
fn encoder_refuses_a_header_over_the_limit() {
    let mut buf = BytesMut::new();
    let header = Message::ErrorFrame(proto::ErrorFrame::new(ErrorCode::Internal, "x".repeat(MAX_HEADER_LEN)));
    let err = framewire::wire::encode_head(&header, &mut buf).unwrap_err();
    assert!(matches!(err, Error::HeaderTooLarge { max: MAX_HEADER_LEN, .. }), "{err:?}");
    assert!(buf.is_empty(), "nothing half-encoded is left behind");
}

/// A rejected header leaves the reader in step: its body is skipped and
/// the next frame reads normally.
#[tokio::test]
async fn reader_recovers_after_a_rejected_header() {
    let mut wire = raw_frame(br#"{"type":"teleport","len":5}"#, b"xxxxx");
    wire.extend_from_slice(&raw_frame(br#"{"type":"echo","len":2}"#, b"ok"));
    let mut r = FrameReader::new(&wire[..]);
    let err = r.read_head::<Message>().await.unwrap_err();
    assert!(err.is_recoverable());
    let (m, _) = r.read_head::<Message>().await.unwrap().unwrap();
    assert_eq!(m, Message::Echo(proto::Echo { len: 2, upper: false }));
    assert_eq!(r.read_body(10).await.unwrap(), "ok");
    assert!(r.read_head::<Message>().await.unwrap().is_none());
}

/// A writer batches fed frames and refuses to start a frame while a
/// streamed body is incomplete.
#[tokio::test]
async fn writer_streams_bodies_and_guards_their_length() {
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out);
    w.feed_head(&Message::EchoReply(proto::EchoReply { len: 4 })).unwrap();
    w.write_body(b"ab").await.unwrap();
    let err = w.feed(&Message::EchoReply(proto::EchoReply { len: 0 }), b"").await.unwrap_err();
    assert!(matches!(err, Error::BodyLenMismatch { declared: 2, .. }), "{err:?}");
    let err = w.write_body(b"cde").await.unwrap_err();
    assert!(matches!(err, Error::BodyLenMismatch { declared: 2, actual: 3 }), "{err:?}");
    w.write_body(b"cd").await.unwrap();
    w.send(&Message::EchoReply(proto::EchoReply { len: 0 }), b"").await.unwrap();
    let mut codec = FrameCodec::<Message>::new();
    let mut buf = BytesMut::from(&out[..]);
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body, "abcd");
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body, "");
}

/// The hex dump in docs/PROTOCOL.md §3.3 is what the implementation sends.
#[test]
fn protocol_md_example_bytes() {
    let preface = framewire::wire::Preface::default().encode();
    assert_eq!(preface, [0x89, 0x46, 0x57, 0x52, 0x00, 0x01, 0x00, 0x00]);
    let mut buf = BytesMut::new();
    framewire::wire::encode_frame(&Message::Echo(proto::Echo { len: 2, upper: false }), b"hi", &mut buf).unwrap();
    let expected = b"\x00\x00\x00\x17{\"type\":\"echo\",\"len\":2}hi";
    assert_eq!(&buf[..], &expected[..]);
    let doc = include_str!("../docs/PROTOCOL.md");
    assert!(doc.contains("00 00 00 17 7b 22 74 79 70 65 22 3a 22 65 63 68"));
}

/// `len` is every frame's body length: a type without a body that declares
/// one is refused, and its body skipped, rather than read as frames.
#[test]
fn bodiless_type_with_a_len_is_refused_in_step() {
    let err = decode(&raw_frame(br#"{"type":"stat","path":"x","len":3}"#, b"abc")).unwrap_err();
    assert!(matches!(err, Error::InvalidField { body_len: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("`stat` carries no body"), "{err}");
}

/// A body cut short: `read_body_into` fails with the typed EOF and keeps
/// what did arrive (a receiver writes it out for a resume).
#[tokio::test]
async fn read_body_into_keeps_what_arrived_before_eof() {
    let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = encode_all(&[Frame {
        header: Envelope { kind: Some("blob".into()), len: body.len() as u64 },
        body: body.clone().into(),
    }]);
    wire.truncate(wire.len() - 300);
    let mut r = FrameReader::new(Reads(split(&wire, &[64]).into()));
    r.read_head::<Envelope>().await.unwrap().unwrap();
    let mut buf = Vec::with_capacity(4096);
    let err = r.read_body_into(&mut buf).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedEof { part: FramePart::Body, got: 700, expected: 1000 }), "{err:?}");
    assert_eq!(buf, body[..700]);
}

/// The framing vectors shared with the Python package
/// (`tests/vectors/framing.json`, read by `python/tests/test_framing.py`
/// too): each stream fed whole, byte by byte and in every split in two,
/// decodes to the listed messages or frames, then to the listed error.
#[test]
fn shared_vectors_decode_alike_in_every_split() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/framing.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let unhex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let error_name = |e: &Error| match e {
        Error::UnexpectedEof { part, .. } => format!("eof/{part}"),
        Error::BodyTooLarge { .. } => "too_large".to_owned(),
        Error::HeaderTooLarge { .. } => "header_too_large".to_owned(),
        Error::HeaderNotUtf8 { .. } => "header_not_utf8".to_owned(),
        Error::HeaderNotJson { .. } => "header_not_json".to_owned(),
        other => format!("{other:?}"),
    };
    let expected_error = |case: &serde_json::Value| {
        case.get("error").map(|e| match (e.as_str().unwrap(), case.get("part")) {
            ("eof", Some(part)) => format!("eof/{}", part.as_str().unwrap()),
            ("body_too_large", _) => "too_large".to_owned(),
            (other, _) => other.to_owned(),
        })
    };
    // Every way of cutting `stream` into reads.
    let cuts = |stream: &[u8]| {
        let mut ways = vec![vec![stream.to_vec()], stream.iter().map(|&b| vec![b]).collect()];
        for at in 1..stream.len() {
            ways.push(vec![stream[..at].to_vec(), stream[at..].to_vec()]);
        }
        ways
    };
    for (section, cases) in [("bare", "valid"), ("bare", "errors"), ("frames", "valid"), ("frames", "errors")] {
        for case in doc[section][cases].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let stream = unhex(&case["stream_hex"]);
            for reads in cuts(&stream) {
                let (got, failed) = if section == "bare" {
                    let max = case.get("max_size").map_or(16 << 20, |m| m.as_u64().unwrap() as usize);
                    feed_all(BareCodec::with_max_payload(max), &reads, |m| (None, m.to_vec()))
                } else {
                    let max = case.get("max_body").map_or(16 << 20, |m| m.as_u64().unwrap());
                    feed_all(FrameCodec::<Envelope>::with_max_body(max), &reads, |f: Frame<Envelope>| {
                        (Some(serde_json::json!({"type": f.header.kind, "len": f.header.len})), f.body.to_vec())
                    })
                };
                let failed = failed.as_ref().map(error_name);
                assert_eq!(failed, expected_error(case), "{section}: {name}: {} reads", reads.len());
                if section == "bare" {
                    let want: Vec<Vec<u8>> =
                        case.get("messages_hex").map_or(vec![], |m| m.as_array().unwrap().iter().map(unhex).collect());
                    let got: Vec<Vec<u8>> = got.into_iter().map(|(_, m)| m).collect();
                    assert_eq!(got, want, "{section}: {name}");
                } else {
                    let want = case.get("frames").map_or(vec![], |f| f.as_array().unwrap().clone());
                    assert_eq!(got.len(), want.len(), "{section}: {name}");
                    for ((head, body), w) in got.iter().zip(&want) {
                        let head = head.as_ref().unwrap();
                        assert_eq!(head["type"], w["header"]["type"], "{name}");
                        assert_eq!(head["len"], w["header"].get("len").cloned().unwrap_or(0.into()), "{name}");
                        assert_eq!(*body, unhex(&w["body_hex"]), "{name}");
                    }
                }
            }
        }
    }
}

/// A decoded message or frame: the frame's header (`type` and `len`), and
/// the bytes.
type Decoded = (Option<serde_json::Value>, Vec<u8>);

/// `reads` fed one by one to `codec` (the last with end of stream): the
/// items it decoded, each as `item` makes it, and the error it stopped at.
fn feed_all<D: Decoder<Error = Error>>(
    mut codec: D,
    reads: &[Vec<u8>],
    item: impl Fn(D::Item) -> Decoded,
) -> (Vec<Decoded>, Option<Error>) {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for (k, read) in reads.iter().enumerate() {
        buf.extend_from_slice(read);
        loop {
            let step = if k + 1 == reads.len() { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            match step {
                Ok(Some(decoded)) => got.push(item(decoded)),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}
