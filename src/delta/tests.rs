//! The delta engine on generated files: every delta rebuilds the new file
//! exactly, moves only about what changed, and a hostile signature or op
//! stream is refused.

use super::*;
use proptest::prelude::*;

/// Random bytes from a fixed seed (xorshift: no crate needed for noise).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn index(data: &[u8], layout: Layout, piece: usize) -> Signature {
    let mut indexer = Indexer::new(layout).unwrap();
    for part in data.chunks(piece.max(1)) {
        indexer.feed(part).unwrap();
    }
    indexer.finish().unwrap()
}

/// The ops for `new` against `old`'s signature (sent through frames and
/// the wire form, as they would be), and the bytes they carry as data.
fn delta(old: &[u8], new: &[u8], piece: usize) -> (Vec<Op>, u64) {
    let sig = index(old, Layout::for_sizes(old.len() as u64, new.len() as u64), piece);
    let mut reader = SignatureReader::new(sig.layout, sig.len, sig.entries.len() as u64).unwrap();
    for frame in sig.entry_frames(100) {
        reader.push(&frame).unwrap();
    }
    let sig = reader.finish().unwrap();
    let mut encoder = Encoder::new(&sig, new.len() as u64).unwrap();
    let mut ops = Vec::new();
    for part in new.chunks(piece.max(1)) {
        encoder.feed(part);
        ops.extend(encoder.take(true));
    }
    encoder.finish();
    ops.extend(encoder.take(false));
    let mut wire = Vec::new();
    for op in &ops {
        op.encode(&mut wire);
    }
    let ops = Op::decode_all(&wire).unwrap();
    let data = ops.iter().filter(|o| matches!(o, Op::Data(_))).map(Op::len).sum();
    (ops, data)
}

fn rebuilt(old: &[u8], new: &[u8], piece: usize) -> u64 {
    let (ops, data) = delta(old, new, piece);
    let out = apply_in_memory(old, new.len() as u64, &ops).unwrap();
    assert!(out == new, "rebuilt file differs");
    data
}

#[test]
fn an_insertion_moves_little_and_shifts_nothing_after_it() {
    let old = noise(4 << 20, 1);
    let mut new = old.clone();
    let at = 1 << 20;
    new.splice(at..at, noise(1000, 2));
    let data = rebuilt(&old, &new, 64 << 10);
    // The chunk it lands in and its neighbour at most, not the rest.
    assert!(data < 1000 + 2 * 32 * 1024, "{data} bytes of data for a 1,000-byte insertion");
}

#[test]
fn scattered_edits_in_place_move_about_their_blocks() {
    let old = noise(8 << 20, 3);
    let mut new = old.clone();
    // 1% of the file in 10 KiB runs, spread evenly.
    let runs = (new.len() / 100) / (10 << 10);
    for k in 0..runs {
        let at = k * (new.len() / runs) + 4321;
        new[at..at + (10 << 10)].copy_from_slice(&noise(10 << 10, 100 + k as u64));
    }
    let data = rebuilt(&old, &new, 256 << 10);
    // Each 10 KiB run touches at most three 8 KiB blocks.
    assert!(data <= (runs * 3 * (8 << 10)) as u64, "{data} bytes for {runs} runs");
}

#[test]
fn an_append_needs_no_signature() {
    let old = noise(1 << 20, 4);
    let mut new = old.clone();
    new.extend_from_slice(&noise(300_000, 5));
    let held = Held { len: old.len() as u64, blake3: *blake3::hash(&old).as_bytes() };
    let prefix = blake3::hash(&new[..old.len()]);
    let mut ops = held.appended(new.len() as u64, &prefix).unwrap();
    ops.push(Op::Data(new[old.len()..].to_vec()));
    assert_eq!(apply_in_memory(&old, new.len() as u64, &ops).unwrap(), new);
    // A changed prefix is no append.
    let other = blake3::hash(&new[1..=old.len()]);
    assert_eq!(held.appended(new.len() as u64, &other), None);
    assert_eq!(held.appended(old.len() as u64 - 1, &prefix), None);
}

#[test]
fn runs_of_equal_chunks_index_once() {
    // A VM image's zeroes: thousands of equal chunks, one entry each in
    // the signature but one in the index, and a new file of zeroes is all
    // copies.
    let old = vec![0u8; 32 << 20];
    let sig = index(&old, Layout::Chunks(Params::DEFAULT), 1 << 20);
    assert!(sig.entries.len() > 400);
    let mut new = vec![0u8; 31 << 20];
    let encoder = Encoder::new(&sig, new.len() as u64 + 4096).unwrap();
    assert_eq!(encoder.index.len(), 1);
    new.extend_from_slice(&noise(4096, 9));
    let data = rebuilt(&old, &new, 1 << 20);
    assert!(data <= 4096 + (32 << 10), "{data}");
}

#[test]
fn hostile_signatures_are_refused() {
    let layout = Layout::Chunks(Params::DEFAULT);
    assert!(matches!(SignatureReader::new(layout, 0, MAX_CHUNKS as u64 + 1), Err(DeltaError::TooManyChunks { .. })));
    let bad = Layout::Chunks(Params { min: 1, avg: 2, max: 3 });
    assert!(matches!(SignatureReader::new(bad, 10, 1), Err(DeltaError::BadParams { .. })));
    assert!(matches!(SignatureReader::new(Layout::Blocks(0), 10, 1), Err(DeltaError::BadBlockSize(0))));
    let entry = |len: u32| {
        let mut e = len.to_be_bytes().to_vec();
        e.extend_from_slice(&[7; ID_LEN]);
        e
    };
    // Odd sizes (the chunker needs even ones), a block under 8 KiB.
    let odd = Layout::Chunks(Params { min: 2049, avg: 8192, max: 32768 });
    assert!(matches!(SignatureReader::new(odd, 10, 1), Err(DeltaError::BadParams { .. })));
    assert!(matches!(SignatureReader::new(Layout::Blocks(1), 10, 10), Err(DeltaError::BadBlockSize(1))));
    // A count the layout cannot cut the file into, refused before anything
    // is held for it.
    assert!(matches!(SignatureReader::new(layout, 100_000, 3), Err(DeltaError::SignatureLength { .. })));
    assert!(matches!(SignatureReader::new(layout, 100_000, 50), Err(DeltaError::SignatureLength { .. })));
    let blocks = Layout::Blocks(Layout::BLOCK);
    assert!(matches!(SignatureReader::new(blocks, 20_000, 2), Err(DeltaError::SignatureLength { .. })));
    SignatureReader::new(blocks, 20_000, 3).unwrap();
    // A chunk longer than max, one shorter than min before the end.
    let mut r = SignatureReader::new(layout, 100_000, 4).unwrap();
    assert!(matches!(r.push(&entry(40_000)), Err(DeltaError::BadChunkLength { .. })));
    let mut r = SignatureReader::new(layout, 100_000, 4).unwrap();
    assert!(matches!(r.push(&entry(100)), Err(DeltaError::BadChunkLength { .. })));
    // More entries than announced; entries past the file; ragged.
    let mut r = SignatureReader::new(layout, 4096, 1).unwrap();
    assert!(matches!(r.push(&[entry(2048), entry(2048)].concat()), Err(DeltaError::TooManyChunks { .. })));
    let mut r = SignatureReader::new(layout, 1000, 1).unwrap();
    assert!(matches!(r.push(&entry(2048)), Err(DeltaError::SignatureLength { .. })));
    let mut r = SignatureReader::new(layout, 1000, 1).unwrap();
    assert!(matches!(r.push(&[0; 19]), Err(DeltaError::RaggedFrame { len: 19 })));
    // Short of the file.
    let mut r = SignatureReader::new(layout, 5000, 1).unwrap();
    r.push(&entry(4000)).unwrap();
    assert!(matches!(r.finish(), Err(DeltaError::SignatureLength { .. })));
}

#[test]
fn the_layout_is_the_sizes_not_the_receivers() {
    let old = noise(100_000, 11);
    // Cut as blocks, though the sizes differ: a sender refuses it; and
    // in blocks of another size than the file's.
    let sig = index(&old, Layout::for_sizes(100_000, 100_000), 4096);
    assert!(matches!(Encoder::new(&sig, 100_001), Err(DeltaError::WrongLayout { .. })));
    Encoder::new(&sig, 100_000).unwrap();
    let sig = index(&old, Layout::Blocks(Layout::BLOCK), 4096);
    assert!(matches!(Encoder::new(&sig, 100_000), Err(DeltaError::WrongLayout { .. })));
}

#[test]
fn data_runs_never_pass_max_data() {
    // A layout for a file of terabytes: pieces of 2 MiB that match nothing.
    let layout = Layout::Blocks(2 << 20);
    let mut ops = Vec::new();
    let mut matched = 0;
    let piece = noise(2 << 20, 12);
    for k in 0..2u64 {
        place(&mut ops, &mut matched, (&layout, &HashMap::new(), &[], 0), k * (2 << 20), &piece);
    }
    assert_eq!(ops.len(), 4);
    assert!(ops.iter().all(|op| matches!(op, Op::Data(d) if d.len() == MAX_DATA)));
}

#[test]
fn hostile_ops_are_refused() {
    let old = noise(1000, 6);
    let refused = |ops: &[Op], new_len: u64| apply_in_memory(&old, new_len, ops).unwrap_err();
    assert!(matches!(refused(&[Op::Copy { offset: 900, len: 200 }], 200), DeltaError::CopyOutOfRange { .. }));
    assert!(matches!(refused(&[Op::Copy { offset: u64::MAX, len: 2 }], 2), DeltaError::CopyOutOfRange { .. }));
    assert!(matches!(refused(&[Op::Copy { offset: 0, len: 0 }], 0), DeltaError::EmptyOp));
    assert!(matches!(refused(&[Op::Data(vec![1; 10])], 5), DeltaError::TooLong { new_len: 5 }));
    assert!(matches!(refused(&[Op::Data(vec![1; 10])], 11), DeltaError::TooShort { written: 10, new_len: 11 }));
    let mut near_the_end = Patcher::new(1000, u64::MAX);
    near_the_end.written = u64::MAX - 1;
    assert!(matches!(near_the_end.apply(&Op::Data(vec![1; 10])), Err(DeltaError::TooLong { .. })));
    // The wire: an unknown tag, cut short, too long, empty.
    assert!(matches!(Op::decode_all(&[9]), Err(DeltaError::BadOp { at: 0 })));
    assert!(matches!(Op::decode_all(&[TAG_COPY, 0, 0]), Err(DeltaError::BadOp { at: 0 })));
    assert!(matches!(Op::decode_all(&[TAG_DATA, 0, 0, 0, 5, 1]), Err(DeltaError::BadOp { at: 0 })));
    let huge = [&[TAG_DATA][..], &(MAX_DATA as u32 + 1).to_be_bytes()].concat();
    assert!(matches!(Op::decode_all(&huge), Err(DeltaError::DataTooLong { .. })));
    assert!(matches!(Op::decode_all(&[TAG_DATA, 0, 0, 0, 0]), Err(DeltaError::EmptyOp)));
}

#[test]
fn layouts_scale_with_the_file() {
    // About the square root of the file, as rsync's blocks.
    assert_eq!(Params::for_len(64 << 20), Params::DEFAULT);
    assert_eq!(Params::for_len(256 << 20).avg, 16 << 10);
    assert_eq!(Params::for_len(1 << 30).avg, 32 << 10);
    for len in [1u64 << 40, 1 << 50, u64::MAX] {
        let p = Params::for_len(len);
        p.check().unwrap();
        assert!(p.avg > Params::DEFAULT.avg);
    }
    let p = Params::for_len(1 << 40);
    assert!((1u64 << 40) / u64::from(p.avg) <= (MAX_CHUNKS / 2) as u64);
    // Blocks stay small unless the index would be too large.
    assert_eq!(Layout::for_sizes(1 << 30, 1 << 30), Layout::Blocks(Layout::BLOCK));
    let Layout::Blocks(big) = Layout::for_sizes(1 << 40, 1 << 40) else { panic!() };
    assert!((1u64 << 40) / u64::from(big) <= (MAX_CHUNKS / 2) as u64);
    assert!(matches!(Layout::for_sizes(10, 10), Layout::Blocks(_)));
    // Small files in small pieces: a change in a 500 KB file costs about
    // a KiB, not 8 (rsync's blocks are about 700 bytes there).
    assert_eq!(Params::for_len(500_000), Params::SMALLEST);
    assert_eq!(Params::for_len(4 << 20).avg, 2 << 10);
    assert_eq!(Params::for_len(16 << 20).avg, 4 << 10);
    assert_eq!(Layout::for_sizes(500_000, 500_000), Layout::Blocks(Layout::SMALLEST_BLOCK));
    assert_eq!(Layout::for_sizes(4 << 20, 4 << 20), Layout::Blocks(2 << 10));
    assert_eq!(Layout::for_sizes(64 << 20, 64 << 20), Layout::Blocks(Layout::BLOCK));
    for layout in [Layout::Chunks(Params::SMALLEST), Layout::Blocks(Layout::SMALLEST_BLOCK)] {
        layout.check().unwrap();
    }
    assert!(Layout::Blocks(512).check().is_err());
    assert!(matches!(Layout::for_sizes(10, 11), Layout::Chunks(_)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any old and new file, fed in any pieces: the delta rebuilds the new
    /// file exactly, and the chunks do not depend on where pieces end.
    #[test]
    fn any_delta_rebuilds_the_file(
        old_len in 0usize..200_000,
        seed in any::<u64>(),
        edits in proptest::collection::vec((0usize..200_000, 0usize..5000, 0u8..3), 0..8),
        piece in 1usize..70_000,
    ) {
        let old = noise(old_len, seed);
        let mut new = old.clone();
        for (k, (at, len, kind)) in edits.into_iter().enumerate() {
            let at = at.min(new.len());
            match kind {
                0 => { new.splice(at..at, noise(len, seed ^ k as u64)); }
                1 => { let end = (at + len).min(new.len()); new.drain(at..end); }
                _ => { let end = (at + len).min(new.len()); let n = end - at; new[at..end].copy_from_slice(&noise(n, !seed ^ k as u64)); }
            }
        }
        rebuilt(&old, &new, piece);
        // Guided by the old file's signature, given a few entries at a time.
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let theirs = index(&old, layout, usize::MAX);
        let (out, _) = built(&old, &new, &diff(&theirs, &guided(&theirs, &new, piece, 1 + piece % 5)).unwrap());
        prop_assert!(out == new, "guided: rebuilt file differs");
        let whole = index(&old, Layout::Chunks(Params::DEFAULT), usize::MAX);
        prop_assert_eq!(index(&old, Layout::Chunks(Params::DEFAULT), piece), whole);
    }
}

/// The new file's entries cut guided by `theirs`, its entries given `batch`
/// at a time as the cut asks for them, the file fed in `piece`s.
fn guided(theirs: &Signature, new: &[u8], piece: usize, batch: usize) -> Signature {
    guided_counting(theirs, new, piece, batch).0
}

/// [`guided`], and how many chunks it cut by content.
fn guided_counting(theirs: &Signature, new: &[u8], piece: usize, batch: usize) -> (Signature, u64) {
    let g = guided_cut(theirs, new, piece, batch);
    let by_content = g.by_content();
    (g.finish().unwrap(), by_content)
}

/// A guided cut driven to its end, every entry of `theirs` given.
fn guided_cut(theirs: &Signature, new: &[u8], piece: usize, batch: usize) -> Guided {
    drive(theirs, new, (piece, batch), |_, _| {})
}

/// Drives a guided cut to its end: entries of `theirs` given `batch` at
/// a time when asked, `new` fed in `piece`s. `step` sees the cut before
/// each step, told whether entries are about to be given (the rest of
/// them given at the end, after one more such call).
fn drive(
    theirs: &Signature,
    new: &[u8],
    (piece, batch): (usize, usize),
    mut step: impl FnMut(&mut Guided, bool),
) -> Guided {
    let mut g = Guided::new(theirs.layout).unwrap();
    let (mut fed, mut given) = (0, 0);
    loop {
        step(&mut g, false);
        match g.advance().unwrap() {
            Needs::Nothing => break,
            Needs::Theirs if given < theirs.entries.len() => {
                step(&mut g, true);
                let to = (given + batch.max(1)).min(theirs.entries.len());
                g.theirs(&theirs.entries[given..to]);
                given = to;
            }
            Needs::Theirs => g.theirs_ended(),
            Needs::Data if fed < new.len() => {
                let to = (fed + piece.max(1)).min(new.len());
                g.feed(&new[fed..to]);
                fed = to;
            }
            Needs::Data => g.fed_all(),
        }
    }
    if given < theirs.entries.len() {
        step(&mut g, true);
        g.theirs(&theirs.entries[given..]);
    }
    g.theirs_ended();
    g
}

/// What `pieces` build from `old` and `new`, and the bytes they copy.
fn built(old: &[u8], new: &[u8], pieces: &[Piece]) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    for p in pieces {
        match *p {
            Piece::Copy { offset, len } => out.extend_from_slice(&old[offset as usize..(offset + len) as usize]),
            Piece::Literal { at, len } => out.extend_from_slice(&new[at as usize..(at + len) as usize]),
        }
    }
    let copied = pieces.iter().filter(|p| matches!(p, Piece::Copy { .. })).map(Piece::len).sum();
    (out, copied)
}

/// A cut guided by the receiver's signature finds what a full cut finds
/// (an insertion, an edit, an append, the file unchanged, a file
/// reordered) whatever the pieces and however slowly the entries come,
/// and its diff rebuilds the new file.
#[test]
fn a_guided_cut_finds_what_a_full_cut_finds() {
    let old = noise(3_000_000, 31);
    let mut inserted = old[..1_000_000].to_vec();
    inserted.extend_from_slice(&noise(1000, 32));
    inserted.extend_from_slice(&old[1_000_000..]);
    let mut edited = old.clone();
    edited.truncate(2_900_000);
    edited[2_000_000..2_000_100].fill(7);
    let mut appended = old.clone();
    appended.extend_from_slice(&noise(300_000, 33));
    let reordered = [&old[2_000_000..], &old[..2_000_000]].concat();
    let cases = [("inserted", &inserted), ("edited", &edited), ("appended", &appended), ("reordered", &reordered)];
    for (what, new) in cases.into_iter().chain([("same", &old)]) {
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let theirs = index(&old, layout, usize::MAX);
        let full = diff(&theirs, &index(new, layout, usize::MAX)).unwrap();
        let (_, full_copied) = built(&old, new, &full);
        for (piece, batch) in [(1 << 20, usize::MAX), (7_777, 3), (100_000, 1)] {
            let ours = guided(&theirs, new, piece, batch);
            assert_eq!((ours.len, ours.layout), (new.len() as u64, layout), "{what}");
            let pieces = diff(&theirs, &ours).unwrap();
            // The same runs from the cut's own index.
            assert_eq!(guided_cut(&theirs, new, piece, batch).finish_diff().unwrap(), pieces, "{what}");
            let (out, copied) = built(&old, new, &pieces);
            assert!(out == *new, "{what}: rebuilt file differs");
            // At most a chunk or two either side of each change differs.
            let slack = 8 * layout.max() as u64;
            assert!(copied + slack >= full_copied, "{what}: {copied} copied, a full cut {full_copied}");
        }
    }
    // After an insertion or an edit, the guess takes up again within a
    // few chunks, however the entries come: the chunker runs over those
    // few alone.
    for (what, new) in [("inserted", &inserted), ("edited", &edited)] {
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let theirs = index(&old, layout, usize::MAX);
        for batch in [1, 7, usize::MAX] {
            let (ours, by_content) = guided_counting(&theirs, new, 65_536, batch);
            assert!(by_content <= 6, "{what}, {batch} at a time: {by_content} of {} by content", ours.entries.len());
        }
    }
}

/// A short piece (the old file's last) is guessed only at the new file's
/// end: guessed in the middle, it would put the blocks after it out of
/// place, and a diff would copy the wrong bytes.
#[test]
fn a_short_piece_is_guessed_only_at_the_end() {
    let block = |seed| noise(1024, seed);
    let (a, b, c, d, t, f) = (block(41), block(42), block(43), block(44), noise(100, 45), noise(924, 46));
    let old = [&a[..], &b, &c, &d, &t].concat();
    let new = [&c[..], &d, &t, &d, &t, &f].concat();
    assert_eq!(old.len(), new.len());
    let theirs = index(&old, Layout::Blocks(Layout::SMALLEST_BLOCK), usize::MAX);
    for batch in [1, usize::MAX] {
        let ours = guided(&theirs, &new, 300, batch);
        let (out, _) = built(&old, &new, &diff(&theirs, &ours).unwrap());
        assert!(out == new, "{batch} at a time: rebuilt file differs");
    }
    // In chunks too: the old file's short last chunk, found mid-file, is
    // no guess.
    let layout = Layout::Chunks(Params::SMALLEST);
    // An old file that ends in a chunk shorter than `min`.
    let data = noise(60_000, 47);
    let (old, theirs) = (50_000..60_000)
        .map(|n| (data[..n].to_vec(), index(&data[..n], layout, usize::MAX)))
        .find(|(_, sig)| sig.entries.last().unwrap().0 < 256)
        .unwrap();
    let last = theirs.entries.last().unwrap().0 as usize;
    let tail = &old[old.len() - last..];
    let new = [&old[..], tail, &old[..20_000]].concat();
    let ours = guided(&theirs, &new, 1000, 3);
    let (out, _) = built(&old, &new, &diff(&theirs, &ours).unwrap());
    assert!(out == new);
    assert!(ours.entries.iter().rev().skip(1).all(|&(l, _)| l >= 256), "a short chunk before the end");
}

/// A signature made to mislead (each real id followed by an entry that
/// names a piece the new file never has) costs the guessing side a
/// bounded amount of hashing: past an eighth of the file, it stops
/// guessing.
#[test]
fn misleading_guesses_are_bounded() {
    let layout = Layout::Chunks(Params::SMALLEST);
    let data = noise(2_000_000, 48);
    let real = index(&data, layout, usize::MAX);
    let mut entries = Vec::new();
    for &(len, id) in &real.entries {
        entries.push((len, id));
        entries.push((4096, [0xee; ID_LEN]));
    }
    let theirs = Signature { layout, len: entries.iter().map(|&(l, _)| u64::from(l)).sum(), entries };
    let mut g = Guided::new(layout).unwrap();
    g.theirs(&theirs.entries);
    g.theirs_ended();
    g.feed(&data);
    g.fed_all();
    assert_eq!(g.advance().unwrap(), Needs::Nothing);
    let bound = data.len() as u64 / 8 + 17 * 4096;
    assert!(g.missed() <= bound, "{} hashed for nothing, bound {bound}", g.missed());
    assert_eq!(g.finish().unwrap(), index(&data, layout, usize::MAX));
}

/// A cut that never waits for entries (a server's, `go_on`), given them
/// only now and then, still finds the runs a full cut finds once every
/// entry is in: it cuts by content where none has come.
#[test]
fn a_cut_that_never_waits_finds_the_same_runs() {
    let old = noise(2_000_000, 51);
    let mut new = old[..700_000].to_vec();
    new.extend_from_slice(&noise(3000, 52));
    new.extend_from_slice(&old[700_000..]);
    let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
    let theirs = index(&old, layout, usize::MAX);
    for every in [1, 3, 1000] {
        let mut g = Guided::new(layout).unwrap();
        let (mut fed, mut given, mut asked) = (0, 0, 0);
        loop {
            match g.advance().unwrap() {
                Needs::Nothing => break,
                // Entries come only every `every` asks.
                Needs::Theirs => {
                    asked += 1;
                    if asked % every == 0 && given < theirs.entries.len() {
                        let to = (given + 50).min(theirs.entries.len());
                        g.theirs(&theirs.entries[given..to]);
                        given = to;
                    } else {
                        g.go_on();
                    }
                }
                Needs::Data if fed < new.len() => {
                    let to = (fed + 65_536).min(new.len());
                    g.feed(&new[fed..to]);
                    fed = to;
                }
                Needs::Data => g.fed_all(),
            }
        }
        g.theirs(&theirs.entries[given..]);
        g.theirs_ended();
        let pieces = g.finish_diff().unwrap();
        let (out, copied) = built(&old, &new, &pieces);
        assert!(out == new, "entries every {every} asks: rebuilt file differs");
        assert!(copied + 8 * layout.max() as u64 >= old.len() as u64, "every {every}: {copied} copied");
    }
}

/// Where nothing of the old file is left, or no entry ever comes, the
/// guided cut is a full cut.
#[test]
fn a_guided_cut_without_matches_is_a_full_cut() {
    let old = noise(500_000, 34);
    let new = noise(600_000, 35);
    let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
    let theirs = index(&old, layout, usize::MAX);
    assert_eq!(guided(&theirs, &new, 65_536, 10), index(&new, layout, usize::MAX));
    let none = Signature { layout, len: 0, entries: Vec::new() };
    assert_eq!(guided(&none, &new, 65_536, 10), index(&new, layout, usize::MAX));
    // Not advanced to the end: refused.
    let mut g = Guided::new(layout).unwrap();
    g.feed(&new);
    assert!(matches!(g.finish(), Err(DeltaError::TooShort { .. })));
}

/// `diff` of two signatures makes the file an `Encoder` makes, with the
/// same copies: chunked once, matched without the bytes.
#[test]
fn a_diff_of_signatures_rebuilds_the_new_file() {
    let old: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut inserted = old[..1_000_000].to_vec();
    inserted.extend_from_slice(b"a thousand bytes, or so, inserted here");
    inserted.extend_from_slice(&old[1_000_000..]);
    let mut edited = old.clone();
    edited[2_000_000..2_000_100].fill(7);
    let mut appended = old.clone();
    appended.extend_from_slice(&old[..300_000]);
    for (what, new) in [("inserted", inserted), ("edited", edited), ("appended", appended), ("same", old.clone())] {
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let sig = |data: &[u8]| {
            let mut ix = Indexer::new(layout).unwrap();
            ix.feed(data).unwrap();
            ix.finish().unwrap()
        };
        let (old_sig, new_sig) = (sig(&old), sig(&new));
        let pieces = diff(&old_sig, &new_sig).unwrap();
        let mut built = Vec::new();
        for p in &pieces {
            match *p {
                Piece::Copy { offset, len } => built.extend_from_slice(&old[offset as usize..(offset + len) as usize]),
                Piece::Literal { at, len } => built.extend_from_slice(&new[at as usize..(at + len) as usize]),
            }
        }
        assert!(built == new, "{what}");
        let copied: u64 = pieces.iter().filter(|p| matches!(p, Piece::Copy { .. })).map(Piece::len).sum();
        let mut enc = Encoder::new(&old_sig, new.len() as u64).unwrap();
        enc.feed(&new);
        enc.finish();
        enc.take(false);
        assert_eq!(copied, enc.matched(), "{what}: as many bytes copied as the encoder finds");
        assert!(copied * 10 > new.len() as u64 * 9 || what == "appended", "{what}: {copied} copied");
    }
    // Signatures of other layouts are refused.
    let other = Signature { layout: Layout::Blocks(1 << 14), len: 3, entries: vec![(3, [0; 8])] };
    let mine = Signature { layout: Layout::for_sizes(3, 3), len: 3, entries: vec![(3, [0; 8])] };
    assert!(matches!(diff(&other, &mine), Err(DeltaError::WrongLayout { .. })));
}

#[test]
fn streamed_signatures_are_taken_as_they_are_cut_and_checked() {
    // Entries taken as an indexer makes them, in frames cut wherever,
    // end as the whole signature.
    let data = noise(300_000, 11);
    let layout = Layout::Chunks(Params::SMALLEST);
    let mut indexer = Indexer::new(layout).unwrap();
    let mut reader = SignatureReader::streamed(layout, data.len() as u64).unwrap();
    let mut sent = 0;
    for part in data.chunks(7_777) {
        indexer.feed(part).unwrap();
        let made = &indexer.entries()[sent..];
        reader.push(&entry_bytes(made)).unwrap();
        sent += made.len();
    }
    let whole = indexer.finish().unwrap();
    reader.push(&entry_bytes(&whole.entries[sent..])).unwrap();
    assert!(sent > 0 && sent < whole.entries.len());
    assert_eq!(reader.finish().unwrap(), whole);

    let entry = |len: u32| {
        let mut e = len.to_be_bytes().to_vec();
        e.extend_from_slice(&[7; ID_LEN]);
        e
    };
    let chunks = Layout::Chunks(Params::DEFAULT);
    // A short entry may only be the last: one after it is refused.
    let mut r = SignatureReader::streamed(chunks, 100_000).unwrap();
    r.push(&[entry(32_768), entry(100)].concat()).unwrap();
    assert!(matches!(r.push(&entry(8192)), Err(DeltaError::BadChunkLength { index: 1, len: 100 })));
    let mut r = SignatureReader::streamed(chunks, 100_000).unwrap();
    assert!(matches!(r.push(&[entry(100), entry(8192)].concat()), Err(DeltaError::BadChunkLength { index: 0, .. })));
    // Longer than max; past the file's end; short of it at the end.
    let mut r = SignatureReader::streamed(chunks, 100_000).unwrap();
    assert!(matches!(r.push(&entry(40_000)), Err(DeltaError::BadChunkLength { .. })));
    let mut r = SignatureReader::streamed(chunks, 10_000).unwrap();
    assert!(matches!(r.push(&[entry(8192), entry(8192)].concat()), Err(DeltaError::SignatureLength { .. })));
    let mut r = SignatureReader::streamed(chunks, 10_000).unwrap();
    r.push(&entry(8192)).unwrap();
    assert!(matches!(r.finish(), Err(DeltaError::SignatureLength { .. })));
    // No more entries than the layout cuts the file into, even where each
    // is as short as allowed: a zero-length entry is refused first, and a
    // file of 8 KiB takes at most four 2 KiB chunks.
    let mut r = SignatureReader::streamed(chunks, 8192).unwrap();
    assert!(matches!(r.push(&entry(0)), Err(DeltaError::BadChunkLength { .. })));
    let mut r = SignatureReader::streamed(chunks, 8192).unwrap();
    r.push(&[entry(2048), entry(2048), entry(2048), entry(2048)].concat()).unwrap();
    assert!(matches!(r.push(&entry(2048)), Err(DeltaError::TooManyChunks { count: 5 })));
    // Blocks: every one whole but the last.
    let blocks = Layout::Blocks(Layout::SMALLEST_BLOCK);
    let mut r = SignatureReader::streamed(blocks, 2500).unwrap();
    r.push(&[entry(1024), entry(1024), entry(452)].concat()).unwrap();
    assert_eq!(r.finish().unwrap().entries.len(), 3);
    let mut r = SignatureReader::streamed(blocks, 2500).unwrap();
    r.push(&entry(452)).unwrap();
    assert!(matches!(r.push(&entry(1024)), Err(DeltaError::BadChunkLength { index: 0, len: 452 })));
    let mut r = SignatureReader::streamed(blocks, 2500).unwrap();
    assert!(matches!(r.push(&entry(2048)), Err(DeltaError::BadChunkLength { index: 0, len: 2048 })));
    // A layout that cannot be used.
    assert!(matches!(SignatureReader::streamed(Layout::Blocks(0), 10), Err(DeltaError::BadBlockSize(0))));
}

/// A guided cut driven as a sender that pipelines drives it: entries
/// given `batch` at a time when asked, the new file fed in `piece`s, and
/// the runs taken as they settle after every step. Returns the runs in
/// order (merged where they meet), and how far they reached before the
/// receiver's last entries were given.
fn settled_cut(theirs: &Signature, new: &[u8], piece: usize, batch: usize) -> (Vec<Piece>, u64) {
    let (mut runs, mut out, mut before_last) = (Vec::new(), Vec::new(), 0);
    let g = drive(theirs, new, (piece, batch), |g, giving| {
        g.settle(&mut runs);
        for p in runs.drain(..) {
            push_piece(&mut out, p);
        }
        // What is settled goes before the cut waits.
        if giving {
            before_last = g.settled_at();
        }
    });
    for p in g.finish_diff().unwrap() {
        push_piece(&mut out, p);
    }
    (out, before_last)
}

/// Runs settle while the signature still comes: after an insertion, all
/// but the last entries' worth of the file is settled before they come,
/// the inserted bytes as new once the entries reach well past them, and
/// the runs are those of a diff of the whole signature. Blocks settle
/// block by block.
#[test]
fn runs_settle_before_the_signature_ends() {
    let old = noise(20_000_000, 61);
    let mut inserted = old[..1_000_000].to_vec();
    inserted.extend_from_slice(&noise(1000, 62));
    inserted.extend_from_slice(&old[1_000_000..]);
    let mut edited = old.clone();
    edited[5_000_000..5_000_100].fill(9);
    for (what, new) in [("inserted", &inserted), ("edited", &edited), ("same", &old)] {
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let theirs = index(&old, layout, usize::MAX);
        let whole = diff(&theirs, &index(new, layout, usize::MAX)).unwrap();
        for (piece, batch) in [(1 << 20, 50), (65_536, 7), (7_777, 200)] {
            let (runs, before_last) = settled_cut(&theirs, new, piece, batch);
            assert_eq!(runs, whole, "{what}, {piece}/{batch}: not the whole signature's runs");
            let (out, _) = built(&old, new, &runs);
            assert!(out == *new, "{what}: rebuilt file differs");
            // The last batch covers at most `batch` of the layout's
            // largest pieces, and a few more are cut past it.
            let last = (batch as u64 + 8) * layout.max() as u64;
            assert!(before_last + last >= new.len() as u64, "{what}, {piece}/{batch}: {before_last} settled early");
        }
    }
}

/// A file reordered further than [`SETTLE_AFTER`] (its halves swapped):
/// what is not found yet is settled as new only within the budget, then
/// waits for the signature's end, which finds the rest; so at most the
/// budget goes as data that a whole-signature diff would copy. A
/// signature that fails (`theirs_void`) settles the rest as new.
#[test]
fn early_new_runs_are_bounded_and_a_void_signature_copies_nothing_more() {
    let old = noise(20_000_000, 63);
    // One byte more: chunks (blocks copy only at their place).
    let new = [&old[12_000_000..], &old[..12_000_000], b"!"].concat();
    let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
    let theirs = index(&old, layout, usize::MAX);
    let whole = diff(&theirs, &index(&new, layout, usize::MAX)).unwrap();
    let (_, whole_copied) = built(&old, &new, &whole);
    for batch in [10, 500] {
        let (runs, _) = settled_cut(&theirs, &new, 65_536, batch);
        let (out, copied) = built(&old, &new, &runs);
        assert!(out == new, "{batch}: rebuilt file differs");
        let bound = SETTLE_BUDGET + new.len() as u64 / 256 + layout.max() as u64;
        assert!(copied + bound >= whole_copied, "{batch}: {copied} copied, {whole_copied} by the whole signature");
        assert!(copied < whole_copied, "{batch}: nothing settled early: the test tests nothing");
    }
    // Void after a third of the entries: what settled stays, the rest is
    // new.
    let mut g = Guided::new(layout).unwrap();
    g.theirs(&theirs.entries[..theirs.entries.len() / 3]);
    let (mut runs, mut out) = (Vec::new(), Vec::new());
    g.feed(&old);
    g.fed_all();
    while g.advance().unwrap() == Needs::Theirs {
        g.settle(&mut runs);
        out.append(&mut runs);
        g.theirs_void();
    }
    let settled = g.settled_at();
    assert!(settled > 0, "nothing settled before the signature failed");
    out.extend(g.finish_diff().unwrap_or_else(|e| panic!("{e}")));
    let (rebuilt, copied) = built(&old, &old, &out);
    assert!(rebuilt == old);
    assert_eq!(copied, settled, "copies after the signature failed");
}
