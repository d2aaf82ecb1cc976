//! Fuzz the connection preface: arbitrary bytes, read by `read_preface`
//! in read sizes the input chooses and by `FrameReader::read_preface`,
//! must agree with `Preface::decode` of the first 8 bytes and with
//! `Preface::check_partial` of every shorter prefix; a preface never
//! reads a byte past its 8; what decodes encodes back to the same bytes;
//! every error displays (the hints for HTTP, TLS, SSH and text peers).
//!
//! Input: read sizes (a length byte, then at most 8), then the stream.
#![no_main]

mod common;

use std::mem::discriminant;

use common::{block_on, Chunked, Input};
use framewire::wire::{read_preface, Error, FramePart, FrameReader, Preface, FLAG_TLS, MAGIC, PREFACE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let sizes = input.field(8);
    let stream = input.rest();

    // What the bytes are, judged whole.
    let mut partial = None;
    for n in 0..=stream.len().min(PREFACE_LEN) {
        match Preface::check_partial(&stream[..n]) {
            Ok(whole) => assert_eq!(whole, n == PREFACE_LEN),
            Err(e) => {
                assert!(matches!(&e, Error::BadPreface { got } if got == &stream[..n]), "{e}");
                assert_ne!(stream[..n.min(MAGIC.len())], MAGIC[..n.min(MAGIC.len())]);
                let _ = e.to_string();
                partial = Some(n);
                break;
            }
        }
    }
    let whole = stream.get(..PREFACE_LEN).map(|b| <[u8; PREFACE_LEN]>::try_from(b).unwrap());
    let decoded = whole.map(|b| Preface::decode(&b));
    if let (Some(bytes), Some(Ok(p))) = (whole, &decoded) {
        assert_eq!(p.encode(), bytes);
        assert_eq!(p.tls(), p.flags & FLAG_TLS != 0);
        if p.flags & !FLAG_TLS == 0 {
            assert_eq!(Preface::new(p.tls()), *p);
        }
    }

    // What a reader makes of them, in pieces.
    let mut r = Chunked::new(stream, sizes);
    let got = block_on(read_preface(&mut r));
    assert!(r.consumed <= PREFACE_LEN, "read_preface read past the preface");
    match (&got, &decoded) {
        (Ok(p), Some(Ok(q))) => {
            assert_eq!(p, q);
            assert_eq!(r.consumed, PREFACE_LEN);
        }
        (Ok(p), _) => panic!("read_preface accepted {p:?} from {stream:02x?}"),
        (Err(Error::Io(_)), _) => assert!(sizes.contains(&0xFE)),
        (Err(Error::BadPreface { got: seen }), _) => {
            // Refused on the first piece that shows a wrong magic byte.
            let n = partial.expect("a wrong magic is refused");
            assert!(seen.len() >= n && stream.starts_with(seen), "{seen:02x?}");
        }
        (Err(Error::UnexpectedEof { part: FramePart::Preface, got: n, expected }), _) => {
            assert_eq!(*expected, PREFACE_LEN as u64);
            assert_eq!(*n as usize, stream.len());
            assert!(stream.len() < PREFACE_LEN && partial.is_none());
        }
        (Err(e), Some(Err(d))) => assert_eq!(discriminant(e), discriminant(d), "{e} / {d}"),
        (Err(e), _) => panic!("{e} from {stream:02x?}"),
    }
    if let Err(e) = &got {
        let _ = e.to_string();
    }

    // The same through a FrameReader, which must leave the rest unread.
    let mut reader = FrameReader::new(Chunked::new(stream, sizes));
    let again = block_on(reader.read_preface());
    match (&got, &again) {
        (Ok(p), Ok(q)) => assert_eq!(p, q),
        (Err(e), Err(d)) => assert_eq!(discriminant(e), discriminant(d), "{e} / {d}"),
        _ => panic!("{got:?} / {again:?}"),
    }
    let (r, buffered) = reader.into_parts();
    assert!(buffered.is_empty() && r.consumed <= PREFACE_LEN);
});
