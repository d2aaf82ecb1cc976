//! Fuzz the delta engine's decoders (src/delta): what a sender makes of a
//! receiver's signature frames (`SignatureReader`, counted or streamed),
//! and what a receiver makes of a sender's ops (`Op::decode_all`, then `Patcher` against an
//! old file of the input's choosing). Oracles: nothing panics (debug
//! assertions included); an accepted signature adds up to its file, and
//! an encoder takes it exactly when its layout is the one the sizes call
//! for, making ops for every byte of the new file, none over `MAX_DATA`;
//! accepted ops survive a round trip through their wire form; a patch
//! that is accepted makes exactly the new file's length; a cut guided by
//! an old file's signature (`Guided`) diffs into pieces that rebuild the
//! new file, whatever the layout, pieces and pace of the entries, and
//! wherever its runs are taken as they settle (`Guided::settle`).
//!
//! Input: a mode byte; for a signature, a layout (a byte, its top bit for
//! a streamed signature, then sizes), lengths, then frames (each a length
//! byte and at most 255 bytes); for ops, an old file and an op stream; for
//! a guided cut, the layout, the pace, an old file (a field repeated) and
//! the new one (each byte 16 times).
#![no_main]

mod common;

use common::Input;
use framewire::delta::{
    apply_in_memory, diff, Guided, Indexer, Layout, Needs, Op, Params, Piece, SignatureReader, DeltaError, Encoder,
    ENTRY_LEN,
};
use libfuzzer_sys::fuzz_target;

fn u32_of(input: &mut Input<'_>) -> u32 {
    u32::from_be_bytes([input.byte(), input.byte(), input.byte(), input.byte()])
}

fn signature(mut input: Input<'_>) {
    let mode = input.byte();
    let layout = match mode % 3 {
        0 => Layout::Chunks(Params::DEFAULT),
        1 => Layout::Chunks(Params { min: u32_of(&mut input), avg: u32_of(&mut input), max: u32_of(&mut input) }),
        _ => Layout::Blocks(u32_of(&mut input) % (1 << 20)),
    };
    let len = u64::from(u32_of(&mut input));
    let count = u64::from(u32_of(&mut input));
    // A streamed signature (its end told by the frames' end, not a
    // count) for half the mode bytes.
    let streamed = mode & 0x80 != 0;
    let made = if streamed { SignatureReader::streamed(layout, len) } else { SignatureReader::new(layout, len, count) };
    let Ok(mut reader) = made else { return };
    for _ in 0..16 {
        let frame = input.field(255);
        if frame.is_empty() {
            break;
        }
        match reader.push(frame) {
            Ok(()) => assert_eq!(frame.len() % ENTRY_LEN, 0),
            Err(_) => return,
        }
    }
    if let Ok(sig) = reader.finish() {
        let sum: u64 = sig.entries.iter().map(|(l, _)| u64::from(*l)).sum();
        assert_eq!(sum, sig.len);
        // An encoder takes any accepted signature.
        let new = input.rest();
        // Only the layout the sizes call for is taken.
        let Ok(mut encoder) = Encoder::new(&sig, new.len() as u64) else {
            assert_ne!(sig.layout, Layout::for_sizes(sig.len, new.len() as u64));
            return;
        };
        encoder.feed(new);
        encoder.finish();
        let ops = encoder.take(false);
        assert!(ops.iter().all(|op| !matches!(op, Op::Data(d) if d.len() > framewire::delta::MAX_DATA)));
        let made: u64 = ops.iter().map(Op::len).sum();
        assert_eq!(made, new.len() as u64);
    }
}

fn ops(mut input: Input<'_>) {
    let old = input.field(255).to_vec();
    let new_len = u64::from(input.byte()) * 4;
    let frame = input.rest();
    match Op::decode_all(frame) {
        Ok(ops) => {
            let mut wire = Vec::new();
            for op in &ops {
                assert!(!op.is_empty());
                op.encode(&mut wire);
            }
            assert_eq!(wire, frame, "a round trip");
            match apply_in_memory(&old, new_len, &ops) {
                Ok(out) => assert_eq!(out.len() as u64, new_len),
                Err(
                    DeltaError::CopyOutOfRange { .. }
                    | DeltaError::TooLong { .. }
                    | DeltaError::TooShort { .. }
                    | DeltaError::EmptyOp,
                ) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A sender's cut guided by an old file's signature (`Guided`), its
/// entries given in batches of the input's choosing and the new file fed
/// in pieces of its choosing: the diff against the whole signature always
/// rebuilds the new file, with runs taken as they settle or not.
fn guided(mut input: Input<'_>) {
    let mode = input.byte();
    let blocks = mode & 1 == 1;
    // A cut that never waits for entries (a server's) goes on by content
    // where none has come, for the asks the input's bits choose.
    let impatient = mode >> 1;
    let batch = usize::from(input.byte()) + 1;
    let piece = usize::from(input.byte()) * 64 + 1;
    let old = input.field(255).repeat(usize::from(input.byte() % 64) + 1);
    let mut new: Vec<u8> = input.rest().iter().flat_map(|&b| [b; 16]).collect();
    // Blocks are for files of one size: the new one made as long.
    let layout = match blocks {
        true => {
            new.resize(old.len(), 0);
            Layout::Blocks(Layout::SMALLEST_BLOCK)
        }
        false => Layout::Chunks(Params::SMALLEST),
    };
    let mut ix = Indexer::new(layout).unwrap();
    ix.feed(&old).unwrap();
    let theirs = ix.finish().unwrap();
    let mut g = Guided::new(layout).unwrap();
    let (mut fed, mut given, mut asked) = (0, 0, 0u32);
    // Runs taken as they settle (a sender that pipelines), at the steps
    // the input's bits choose.
    let (mut pieces, mut steps) = (Vec::new(), 0u32);
    loop {
        steps += 1;
        if (batch >> (steps % 8)) & 1 == 1 {
            g.settle(&mut pieces);
        }
        match g.advance().unwrap() {
            Needs::Nothing => break,
            Needs::Theirs if (impatient >> (asked % 7)) & 1 == 1 => {
                asked += 1;
                g.go_on();
            }
            Needs::Theirs if given < theirs.entries.len() => {
                asked += 1;
                let to = (given + batch).min(theirs.entries.len());
                g.theirs(&theirs.entries[given..to]);
                given = to;
            }
            Needs::Theirs => g.theirs_ended(),
            Needs::Data if fed < new.len() => {
                let to = (fed + piece).min(new.len());
                g.feed(&new[fed..to]);
                fed = to;
            }
            Needs::Data => g.fed_all(),
        }
    }
    g.theirs(&theirs.entries[given..]);
    g.theirs_ended();
    // The runs from the cut's own index, those settled before first.
    let Ok(rest) = g.finish_diff() else {
        assert_ne!(layout, Layout::for_sizes(old.len() as u64, new.len() as u64));
        return;
    };
    pieces.extend(rest);
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Copy { offset, len } => out.extend_from_slice(&old[offset as usize..(offset + len) as usize]),
            Piece::Literal { at, len } => out.extend_from_slice(&new[at as usize..(at + len) as usize]),
        }
    }
    assert!(out == new, "rebuilt file differs");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    match input.byte() % 3 {
        0 => signature(input),
        1 => ops(input),
        _ => guided(input),
    }
});
