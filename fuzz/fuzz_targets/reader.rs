//! Fuzz the streaming `FrameReader`: arbitrary bytes, delivered in read
//! sizes the input chooses (some reads pending first, some failing), read
//! as heads and bodies in an order the input chooses (`read_body` with a
//! limit, `read_body_chunk`, `read_body_into`, `copy_body`, `skip_body`)
//! until an error or EOF. It must never panic; every body byte it hands
//! out must be the stream's byte at that place; the body counters must
//! add up; and no allocation may exceed what the limits allow, whatever
//! length a header declares.
//!
//! Input: `cfg` (limit, header limit), read sizes (a length byte, then at
//! most 16), operations (a length byte, then at most 16, cycled), then
//! the stream.
#![no_main]

mod common;

use common::{block_on, measured, reset, Chunked, Input};
use framewire::wire::{
    decode_head_within, Envelope, Error, FrameHeader, FrameReader, LEN_PREFIX, MAX_BUFFERED_BODY, MAX_HEADER_LEN,
    PREAUTH_MAX_HEADER, STREAM_CHUNK,
};
use framewire::proto::AnyMessage as Message;
use libfuzzer_sys::fuzz_target;

/// The limits `read_body` is called with: the server's and a few small ones.
const LIMITS: [u64; 8] = [0, 1, 2, 100, 4096, 64 * 1024, 1 << 20, MAX_BUFFERED_BODY];
/// Capacities of the buffer `read_body_into` fills.
const CAPS: [usize; 4] = [0, 1, 7, 4096];
/// The reader's own buffer (io.rs `READ_BUF`).
const READ_BUF: usize = 64 * 1024;

/// Where the reader stands in the stream, tracked from the outside.
struct Model<'a> {
    stream: &'a [u8],
    /// The next stream byte the frame layer has not handed out or skipped.
    pos: usize,
    max_header: usize,
}

impl Model<'_> {
    /// A head was read (or framed and rejected) at `pos`, after the rest of
    /// the previous body, `skipped`, was skipped.
    fn head(&mut self, skipped: u64) -> usize {
        self.pos += skipped as usize;
        let prefix = self.stream.get(self.pos..self.pos + LEN_PREFIX).expect("a head past the stream's end");
        let prefix: [u8; LEN_PREFIX] = prefix.try_into().unwrap();
        let head_len = LEN_PREFIX + u32::from_be_bytes(prefix) as usize;
        assert!(head_len - LEN_PREFIX <= self.max_header);
        let at = self.pos;
        self.pos += head_len;
        at
    }

    /// Body bytes handed out: they must be the stream's next ones.
    fn body(&mut self, got: &[u8]) {
        let want = self.stream.get(self.pos..self.pos + got.len()).expect("a body past the stream's end");
        assert_eq!(got, want, "body bytes out of place");
        self.pos += got.len();
    }
}

fn eof_is_short(e: &Error) {
    if let Error::UnexpectedEof { got, expected, .. } = e {
        assert!(got < expected, "{e}");
    }
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let cfg = input.byte();
    let limit = LIMITS[(cfg & 7) as usize];
    let max_header = if cfg & 8 != 0 { PREAUTH_MAX_HEADER } else { MAX_HEADER_LEN };
    let envelope = cfg & 16 != 0;
    let sizes = input.field(16);
    let ops = input.field(16);
    let stream = input.rest();
    let ops: &[u8] = if ops.is_empty() { &[0, 1] } else { ops };

    let mut reader = FrameReader::new(Chunked::new(stream, sizes));
    reader.set_max_header(max_header);
    let mut model = Model { stream, pos: 0, max_header };
    // Every step either moves through the stream or cannot, so this
    // bounds the run whatever the operations.
    for step in 0..4 * (stream.len() + 16) {
        let op = ops[step % ops.len()];
        let left = reader.body_left();
        match op % 6 {
            0 => {
                let res = if envelope {
                    block_on(reader.read_head::<Envelope>()).map(|h| h.map(|(h, len)| (h.body_len(), len)))
                } else {
                    block_on(reader.read_head::<Message>()).map(|h| {
                        h.map(|(h, len)| {
                            assert_eq!(h.body_len(), len);
                            (len, len)
                        })
                    })
                };
                match res {
                    Ok(Some((declared, len))) => {
                        assert_eq!(declared, len);
                        let at = model.head(left);
                        assert_eq!(reader.body_left(), len);
                        // The streaming parse agrees with the one-shot one.
                        if !envelope {
                            let once = decode_head_within::<Message>(&stream[at..], max_header).unwrap().unwrap();
                            assert_eq!(once.body_len, len);
                        }
                    }
                    Ok(None) => {
                        assert_eq!(model.pos + left as usize, stream.len(), "EOF before the stream's end");
                        return;
                    }
                    Err(e) if e.is_recoverable() => {
                        let _ = e.to_string();
                        model.head(left);
                        assert_eq!(Some(reader.body_left()), e.body_len());
                    }
                    Err(e) => {
                        let _ = e.to_string();
                        eof_is_short(&e);
                        return;
                    }
                }
            }
            1 => match block_on(reader.read_body(limit)) {
                Ok(body) => {
                    assert!(left <= limit);
                    assert_eq!(body.len() as u64, left);
                    assert_eq!(reader.body_left(), 0);
                    model.body(&body);
                }
                Err(Error::BodyTooLarge { len, max }) => {
                    assert_eq!((len, max), (left, limit));
                    assert!(len > max);
                    assert_eq!(reader.body_left(), left, "a refused body is left for read_head to skip");
                }
                Err(e) => {
                    assert!(matches!(e, Error::UnexpectedEof { .. } | Error::Io(_)), "{e}");
                    eof_is_short(&e);
                    return;
                }
            },
            2 => match block_on(reader.read_body_chunk()) {
                Ok(None) => assert_eq!(left, 0),
                Ok(Some(chunk)) => {
                    assert!(!chunk.is_empty());
                    assert_eq!(reader.body_left(), left - chunk.len() as u64);
                    model.body(&chunk);
                }
                Err(e) => {
                    assert!(left > 0);
                    eof_is_short(&e);
                    return;
                }
            },
            3 => {
                let cap = CAPS[(op >> 3) as usize % CAPS.len()];
                let mut buf = Vec::with_capacity(cap);
                let cap = buf.capacity();
                let res = block_on(reader.read_body_into(&mut buf));
                assert_eq!(buf.capacity(), cap, "read_body_into grew the buffer");
                assert_eq!(reader.body_left(), left - buf.len() as u64);
                model.body(&buf);
                match res {
                    Ok(()) => assert!(buf.len() == cap || reader.body_left() == 0),
                    Err(e) => {
                        eof_is_short(&e);
                        return;
                    }
                }
            }
            4 => {
                let mut out = Vec::new();
                match block_on(reader.copy_body(&mut out)) {
                    Ok(n) => {
                        assert_eq!(n, left);
                        assert_eq!(out.len() as u64, n);
                        assert_eq!(reader.body_left(), 0);
                        model.body(&out);
                    }
                    Err(e) => {
                        eof_is_short(&e);
                        return;
                    }
                }
            }
            _ => match block_on(reader.skip_body()) {
                Ok(()) => {
                    assert_eq!(reader.body_left(), 0);
                    model.pos += left as usize;
                }
                Err(e) => {
                    eof_is_short(&e);
                    return;
                }
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = reset();
    run(data);
    let (largest, peak) = measured(base);
    // A body is reserved whole up to `limit`, streamed pieces take at most
    // STREAM_CHUNK, and the buffer holds at most the stream; BytesMut may
    // double what it had. Nothing may follow a declared length past that.
    let limit = LIMITS[(data.first().copied().unwrap_or(0) & 7) as usize] as usize;
    let bound = 2 * (limit.max(STREAM_CHUNK) + READ_BUF + data.len()) + 4096;
    assert!(largest <= bound, "an allocation of {largest} bytes (bound {bound})");
    assert!(peak <= 2 * bound, "{peak} bytes live at once (bound {})", 2 * bound);
});
