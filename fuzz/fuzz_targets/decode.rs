//! Fuzz the frame decoder: arbitrary bytes, fed whole and in the split the
//! first byte chooses, must decode identically or fail with a typed error,
//! never panic and never allocate past the limits.
#![no_main]

use bytes::BytesMut;
use framewire::wire::{BareCodec, FrameCodec};
use framewire::proto::AnyMessage as Message;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn decode_all<D: Decoder>(mut codec: D, chunks: &[&[u8]]) -> (Vec<D::Item>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    let failed = codec.decode_eof(&mut buf).is_err();
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = (cut as usize).min(rest.len());
    let (a, b) = rest.split_at(at);

    let (whole, whole_err) = decode_all(FrameCodec::<Message>::with_max_body(1 << 20), &[rest]);
    let (split, split_err) = decode_all(FrameCodec::<Message>::with_max_body(1 << 20), &[a, b]);
    assert_eq!(whole, split);
    assert_eq!(whole_err, split_err);

    let (whole, _) = decode_all(BareCodec::with_max_payload(1 << 20), &[rest]);
    let (split, _) = decode_all(BareCodec::with_max_payload(1 << 20), &[a, b]);
    assert_eq!(whole, split);
});
