//! Delta transfer, sans-IO: only the bytes of a file that changed cross
//! the link (issue 32).
//!
//! The receiver holds an older version of the file. It indexes it
//! ([`Indexer`]) into a [`Signature`]: the file cut into chunks, each
//! named by the first 8 bytes of its BLAKE3. The chunks are
//! content-defined (FastCDC, [`Params`]), so the cut points after an
//! insertion fall where they fell before, within a chunk or two of it;
//! where the old and new files have the same size, fixed
//! aligned blocks instead ([`Layout::Blocks`]), the fast path of a file
//! edited in place. The signature travels to the sender in bounded frames
//! ([`Signature::entry_frames`], [`SignatureReader`]). The sender cuts the
//! new file the same way ([`Encoder`]) and answers with [`Op`]s: copy this
//! run of the old file, or here are new bytes. The receiver checks every
//! op against both files' lengths ([`Patcher`]) and builds the new file
//! in its partial file (never in place); the caller still verifies the
//! whole file's BLAKE3 before it commits, and on a mismatch sends the file
//! whole.
//!
//! An append needs no signature at all: a receiver whose whole file is a
//! prefix of the new one (its length and BLAKE3, [`Held`]) is answered
//! with one copy of it and the tail ([`Held::appended`]).
//!
//! Nothing here reads or writes a file or a socket: the callers feed bytes
//! and carry out the [`Action`]s. Every decoder refuses what a hostile
//! peer could send to make it hang or allocate without bound: signatures
//! of more than [`MAX_CHUNKS`] entries, chunk lengths outside the
//! parameters, entries that do not add up to the file, copies out of
//! range, ops that overrun the new file or are empty. Equal chunk ids
//! (a VM image's runs of zeroes) are kept once, at their first offset: a
//! lookup is one hash probe, never a walk down a chain.

use std::collections::HashMap;

/// Bytes of a chunk id: BLAKE3 truncated to 64 bits. A chunk of the new
/// file takes a different old chunk's id by chance with a probability of
/// about n²/2⁶⁴ over the file, with chunks of one index sharing one about
/// half as likely: about one in three million for [`MAX_CHUNKS`] entries
/// each side. The whole file's BLAKE3 is checked after, and a file built
/// wrong is sent again whole. So the signature costs 12 bytes a chunk,
/// about what rsync's sums cost.
pub const ID_LEN: usize = 8;

/// A chunk's name: the first [`ID_LEN`] bytes of its BLAKE3.
pub type ChunkId = [u8; ID_LEN];

/// Entries a signature may hold at most (at 12 bytes each, 24 MiB). A
/// large file is cut into larger chunks, half this many on average
/// ([`Params::for_len`]); one that still needs more (hundreds of GiB of
/// data that cuts at the smallest size, or over 8 TiB) is refused with
/// [`DeltaError::TooManyChunks`], and its callers send it whole.
pub const MAX_CHUNKS: usize = 1 << 21;

/// Bytes one [`Op::Data`] carries at most; the encoder splits longer runs.
pub const MAX_DATA: usize = 1 << 20;

/// Bytes of one signature entry on the wire: its length (`u32`, big
/// endian) and its id.
pub const ENTRY_LEN: usize = 4 + ID_LEN;

/// The name of a chunk.
pub fn chunk_id(bytes: &[u8]) -> ChunkId {
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&blake3::hash(bytes).as_bytes()[..ID_LEN]);
    id
}

/// Why a delta could not be made or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// Chunking parameters outside what the chunker takes, or not
    /// `min < avg < max`.
    #[error("chunk sizes min {min}, avg {avg}, max {max} are not ones the chunker takes")]
    BadParams {
        /// The smallest chunk.
        min: u32,
        /// The average chunk.
        avg: u32,
        /// The largest chunk.
        max: u32,
    },
    /// A block size that is not a power of two from
    /// [`Layout::SMALLEST_BLOCK`] to the chunker's largest chunk.
    #[error("a block size of {0} bytes")]
    BadBlockSize(u32),
    /// A signature of more than [`MAX_CHUNKS`] entries.
    #[error("a signature of {count} chunks (at most {MAX_CHUNKS})")]
    TooManyChunks {
        /// How many there were, or would be.
        count: u64,
    },
    /// A signature entry whose length the layout does not allow.
    #[error("chunk {index} of {len} bytes, outside the layout")]
    BadChunkLength {
        /// Its place in the signature.
        index: u64,
        /// Its length.
        len: u32,
    },
    /// Entries that do not add up to the file they index.
    #[error("a signature's chunks add up to {entries} bytes, not the {declared} of its file")]
    SignatureLength {
        /// The file's length.
        declared: u64,
        /// What the entries add up to (so far).
        entries: u64,
    },
    /// A signature frame that ends a signature where none may end (an
    /// empty frame in a counted one), or says `failed` where only a
    /// streamed one's empty last frame may.
    #[error("a signature frame that ends or fails where it may not")]
    BadEnd,
    /// A frame of entries that is not a whole number of entries.
    #[error("a frame of {len} bytes is not a whole number of {ENTRY_LEN}-byte entries")]
    RaggedFrame {
        /// The frame's length.
        len: usize,
    },
    /// An op that produces no bytes.
    #[error("an op of no bytes")]
    EmptyOp,
    /// A copy of bytes the old file does not have.
    #[error("a copy of {len} bytes at {offset} from a file of {old_len}")]
    CopyOutOfRange {
        /// Where it starts in the old file.
        offset: u64,
        /// Its length.
        len: u32,
        /// The old file's length.
        old_len: u64,
    },
    /// Ops that would make the new file longer than declared.
    #[error("ops past the end of the new file ({new_len} bytes)")]
    TooLong {
        /// The new file's length.
        new_len: u64,
    },
    /// Ops that end before the new file is whole.
    #[error("ops ended after {written} of the new file's {new_len} bytes")]
    TooShort {
        /// Bytes made.
        written: u64,
        /// The new file's length.
        new_len: u64,
    },
    /// An op that cannot be read: an unknown tag, or cut short.
    #[error("an op that cannot be read at byte {at}")]
    BadOp {
        /// Where it starts in its frame.
        at: usize,
    },
    /// A signature cut otherwise than [`Layout::for_sizes`] says.
    #[error("a signature cut as {got:?}, where the files' sizes call for {want:?}")]
    WrongLayout {
        /// The signature's layout.
        got: Layout,
        /// The one for the two files' sizes.
        want: Layout,
    },
    /// A data run longer than [`MAX_DATA`].
    #[error("a data run of {len} bytes (at most {MAX_DATA})")]
    DataTooLong {
        /// Its declared length.
        len: u32,
    },
}

/// FastCDC's chunk sizes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// The smallest chunk (but a file's last).
    pub min: u32,
    /// The size chunks are cut around.
    pub avg: u32,
    /// The largest chunk.
    pub max: u32,
}

impl Params {
    /// 2 / 8 / 32 KiB: the chunks of files of 16 to 64 MiB.
    pub const DEFAULT: Params = Params { min: 2 << 10, avg: 8 << 10, max: 32 << 10 };

    /// 256 B / 1 KiB / 4 KiB: the smallest chunks used, for files up to
    /// 1 MiB.
    pub const SMALLEST: Params = Params { min: 256, avg: 1 << 10, max: 4 << 10 };

    /// [`SMALLEST`](Self::SMALLEST), scaled up by powers of two for larger
    /// files, as rsync scales its blocks: an average about the square root
    /// of the file's length (1 KiB up to 1 MiB, 8 KiB from 16 to 64 MiB,
    /// 16 KiB for 256 MiB, 32 KiB for 1 GiB), so the signature grows with
    /// the root of the file while a change still costs a chunk or two; and
    /// never so small that the index would pass [`MAX_CHUNKS`] / 2 chunks
    /// on average.
    pub fn for_len(len: u64) -> Params {
        let mut p = Params::SMALLEST;
        let too_small = |p: &Params| {
            let avg = u64::from(p.avg);
            avg.saturating_mul(avg) < len || len / avg > (MAX_CHUNKS / 2) as u64
        };
        while too_small(&p) && (p.max as usize) < fastcdc::v2020::MAXIMUM_MAX {
            p = Params { min: p.min * 2, avg: p.avg * 2, max: p.max * 2 };
        }
        p
    }

    /// Whether the chunker takes these sizes: each a power of two within
    /// its limits, `min < avg < max`.
    ///
    /// # Errors
    ///
    /// [`DeltaError::BadParams`].
    pub fn check(&self) -> Result<(), DeltaError> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        // Powers of two, as every layout this side makes: the chunker
        // needs even sizes, and cuts odd ones otherwise than it says.
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min.is_power_of_two()
            && avg.is_power_of_two()
            && max.is_power_of_two()
            && min < avg
            && avg < max;
        if ok {
            Ok(())
        } else {
            Err(DeltaError::BadParams { min: self.min, avg: self.avg, max: self.max })
        }
    }
}

/// How a file is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Content-defined chunks.
    Chunks(Params),
    /// Fixed blocks of this many bytes, compared in place: for a file
    /// edited in place (old and new of one size).
    Blocks(u32),
}

impl Layout {
    /// Block size of [`Layout::Blocks`] for files of 64 MiB and more.
    pub const BLOCK: u32 = 8 << 10;

    /// The smallest block size, for files up to 1 MiB.
    pub const SMALLEST_BLOCK: u32 = 1 << 10;

    /// The layout a receiver holding `old_len` bytes indexes them with,
    /// for a new file of `new_len`: blocks if the sizes are equal, about
    /// the square root of the file from [`SMALLEST_BLOCK`](Self::SMALLEST_BLOCK)
    /// to [`BLOCK`](Self::BLOCK) bytes (larger only where the index would
    /// pass [`MAX_CHUNKS`] / 2 entries: an edit in place costs its blocks,
    /// and small ones keep that close to the bytes edited); else
    /// content-defined chunks scaled to the file ([`Params::for_len`]).
    pub fn for_sizes(old_len: u64, new_len: u64) -> Layout {
        if old_len == new_len {
            // About the square root of the file, from 1 to 8 KiB.
            let mut block = Self::SMALLEST_BLOCK;
            while u64::from(block) * u64::from(block) < old_len && block < Self::BLOCK {
                block *= 2;
            }
            while old_len / u64::from(block) > (MAX_CHUNKS / 2) as u64 && (block as usize) < fastcdc::v2020::MAXIMUM_MAX
            {
                block *= 2;
            }
            Layout::Blocks(block)
        } else {
            Layout::Chunks(Params::for_len(old_len.max(new_len)))
        }
    }

    /// Whether this layout can be used.
    ///
    /// # Errors
    ///
    /// [`DeltaError::BadParams`], [`DeltaError::BadBlockSize`].
    pub fn check(&self) -> Result<(), DeltaError> {
        match *self {
            Layout::Chunks(p) => p.check(),
            Layout::Blocks(size)
                if !size.is_power_of_two()
                    || size < Self::SMALLEST_BLOCK
                    || size as usize > fastcdc::v2020::MAXIMUM_MAX =>
            {
                Err(DeltaError::BadBlockSize(size))
            }
            Layout::Blocks(_) => Ok(()),
        }
    }

    /// The longest piece this layout cuts.
    fn max(&self) -> usize {
        match *self {
            Layout::Chunks(p) => p.max as usize,
            Layout::Blocks(size) => size as usize,
        }
    }

    /// Whether a piece of `len` bytes may stand in a file cut this way
    /// (`last`: the file's last piece, which may be shorter).
    fn allows(&self, len: u32, last: bool) -> bool {
        match *self {
            Layout::Chunks(p) => len > 0 && len <= p.max && (last || len >= p.min),
            Layout::Blocks(size) => len > 0 && (len == size || (last && len < size)),
        }
    }
}

/// Cuts bytes fed in any pieces into chunks of a [`Layout`], the same
/// wherever the pieces end.
#[derive(Debug)]
struct Cutter {
    layout: Layout,
    pending: Vec<u8>,
    /// Offset in the file of `pending[0]`.
    at: u64,
}

impl Cutter {
    fn new(layout: Layout) -> Cutter {
        Cutter { layout, pending: Vec::new(), at: 0 }
    }

    /// Feeds `data`; `cut` gets each whole chunk (its offset and bytes).
    /// Bytes are copied only to carry a chunk begun in one piece into the
    /// next.
    fn feed(&mut self, data: &[u8], cut: &mut impl FnMut(u64, &[u8])) {
        let max = self.layout.max();
        let mut i = 0;
        // A chunk carried from the last piece: its window completed from
        // this one, cut, and what it did not use of this piece given back.
        while !self.pending.is_empty() {
            let want = (max - self.pending.len().min(max)).min(data.len() - i);
            self.pending.extend_from_slice(&data[i..i + want]);
            i += want;
            if self.pending.len() < max {
                return;
            }
            let len = cut_len(self.layout, &self.pending);
            cut(self.at, &self.pending[..len]);
            self.at += len as u64;
            self.pending.drain(..len);
            let back = want.min(self.pending.len());
            self.pending.truncate(self.pending.len() - back);
            i -= back;
        }
        let rest = &data[i..];
        let mut start = 0;
        // A cut point depends only on the bytes from the chunk's start to
        // at most `max` after: with that many, it is final.
        while rest.len() - start >= max {
            let len = cut_len(self.layout, &rest[start..]);
            cut(self.at, &rest[start..start + len]);
            self.at += len as u64;
            start += len;
        }
        self.pending.extend_from_slice(&rest[start..]);
    }

    /// The last chunks, at the end of the file.
    fn finish(&mut self, cut: &mut impl FnMut(u64, &[u8])) {
        let mut start = 0;
        while start < self.pending.len() {
            let len = cut_len(self.layout, &self.pending[start..]);
            cut(self.at, &self.pending[start..start + len]);
            self.at += len as u64;
            start += len;
        }
        self.pending.clear();
    }
}

/// The length of the chunk `bytes` starts with (all of them if they are
/// the file's end and shorter than a chunk can be).
fn cut_len(layout: Layout, bytes: &[u8]) -> usize {
    let len = match layout {
        Layout::Chunks(p) => {
            let chunker = fastcdc::v2020::FastCDC::new(bytes, p.min as usize, p.avg as usize, p.max as usize);
            chunker.cut(0, bytes.len()).1
        }
        Layout::Blocks(size) => (size as usize).min(bytes.len()),
    };
    len.clamp(1, bytes.len())
}

/// An index of a file: its layout, length, and each piece's length and
/// id in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// How the file was cut.
    pub layout: Layout,
    /// The file's length.
    pub len: u64,
    /// Each piece's length and id, in the file's order.
    pub entries: Vec<(u32, ChunkId)>,
}

impl Signature {
    /// The entries as frames of at most `per_frame` entries each
    /// ([`ENTRY_LEN`] bytes an entry), for [`SignatureReader::push`].
    pub fn entry_frames(&self, per_frame: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        entry_frames(&self.entries, per_frame)
    }
}

/// `entries` as frames of at most `per_frame` entries each, in their wire
/// form ([`entry_bytes`]).
pub fn entry_frames(entries: &[(u32, ChunkId)], per_frame: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    entries.chunks(per_frame.max(1)).map(entry_bytes)
}

/// Entries in their wire form ([`ENTRY_LEN`] bytes each), for a
/// `signature` frame's body.
pub fn entry_bytes(entries: &[(u32, ChunkId)]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for (len, id) in entries {
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(id);
    }
    frame
}

/// Indexes a file fed in pieces (the receiver's old file).
#[derive(Debug)]
pub struct Indexer {
    cutter: Cutter,
    entries: Vec<(u32, ChunkId)>,
    len: u64,
}

impl Indexer {
    /// An indexer for `layout`.
    ///
    /// # Errors
    ///
    /// A layout that cannot be used.
    pub fn new(layout: Layout) -> Result<Indexer, DeltaError> {
        layout.check()?;
        Ok(Indexer { cutter: Cutter::new(layout), entries: Vec::new(), len: 0 })
    }

    /// Feeds the next bytes of the file.
    ///
    /// # Errors
    ///
    /// [`DeltaError::TooManyChunks`]: the file needs a larger layout.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), DeltaError> {
        let entries = &mut self.entries;
        self.cutter.feed(data, &mut |_, piece| entries.push((piece.len() as u32, chunk_id(piece))));
        self.len += data.len() as u64;
        self.bounded()
    }

    /// The entries cut so far, in order: what a streamed signature sends
    /// as they come (a chunk is cut only once the bytes past it are fed,
    /// so the last entries come with [`finish`](Self::finish)).
    pub fn entries(&self) -> &[(u32, ChunkId)] {
        &self.entries
    }

    /// The signature of everything fed.
    ///
    /// # Errors
    ///
    /// As [`feed`](Self::feed).
    pub fn finish(mut self) -> Result<Signature, DeltaError> {
        let entries = &mut self.entries;
        self.cutter.finish(&mut |_, piece| entries.push((piece.len() as u32, chunk_id(piece))));
        self.bounded()?;
        Ok(Signature { layout: self.cutter.layout, len: self.len, entries: self.entries })
    }

    fn bounded(&self) -> Result<(), DeltaError> {
        if self.entries.len() > MAX_CHUNKS {
            return Err(DeltaError::TooManyChunks { count: self.entries.len() as u64 });
        }
        Ok(())
    }
}

/// A sender's cut of its new file, guided by the receiver's signature as
/// its entries come: where the new file goes on as the old one did, the
/// piece the signature says comes next is hashed and compared, and no
/// content-defined cut is made; elsewhere the file is cut as an
/// [`Indexer`] cuts it, and a chunk found among the entries come so far
/// sets the next guess. An unchanged stretch so costs one hash of each
/// chunk, not the chunker's pass as well. What it makes are the new
/// file's entries, for a [`diff`] against the whole signature
/// ([`finish_diff`](Self::finish_diff)), which finds every match wherever
/// the guess did not look: the guess only saves work. Sans-IO: the
/// caller feeds bytes and entries as [`advance`](Self::advance) asks for
/// them.
#[derive(Debug)]
pub struct Guided {
    layout: Layout,
    /// The receiver's entries come so far, and where the first of each id
    /// stands among them.
    theirs: Vec<(u32, ChunkId)>,
    index: HashMap<ChunkId, usize>,
    /// Where each of theirs starts in the old file, and the bytes they
    /// cover.
    offsets: Vec<u64>,
    covered: u64,
    /// No more of theirs will come.
    ended: bool,
    /// Where the next chunk starts in the new file.
    pos: u64,
    /// The new file's offset less the old one's at the last chunk found:
    /// where the old file holds what follows, if nothing else changed.
    drift: i128,
    /// New bytes fed and not yet cut, from `pending[start]`.
    pending: Vec<u8>,
    start: usize,
    /// Every byte of the new file was fed.
    fed_all: bool,
    len: u64,
    /// The receiver's entry guessed to come next.
    next: Option<usize>,
    /// Bytes hashed for guesses that missed: past a bound, no more
    /// guesses (a signature made to mislead costs no more than a cut).
    missed: u64,
    /// The next decision is not to wait for more of theirs
    /// ([`go_on`](Self::go_on)).
    impatient: bool,
    entries: Vec<(u32, ChunkId)>,
    by_content: u64,
    /// The new file's entries settled into runs ([`settle`](Self::settle)),
    /// and where the first not settled starts.
    settled: usize,
    settled_at: u64,
    /// Bytes settled as new before theirs ended: bounded
    /// ([`SETTLE_BUDGET`]).
    early: u64,
    /// Theirs failed: nothing of theirs is copied from here on.
    void: bool,
}

/// A piece of the new file not found among the receiver's entries come so
/// far is settled as new ([`Guided::settle`]) only once they reach this
/// far (or 64 of the layout's largest pieces, if more) past where the old
/// file would hold it: a piece moved back by more than that may be sent
/// as data (within [`SETTLE_BUDGET`]) where a diff of the whole signature
/// would copy it.
pub const SETTLE_AFTER: u64 = 8 << 20;

/// Bytes a [`Guided`] cut settles as new before the receiver's entries
/// have ended: this, and one 256th of the file cut so far. Past it, what
/// is not found waits for the signature's end: a file reordered costs at
/// most this much sent for nothing; one with much new data settles it as
/// the whole-signature diff would, at the end.
pub const SETTLE_BUDGET: u64 = 256 << 10;

/// What a [`Guided`] cut needs to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// More of the new file ([`Guided::feed`], or [`Guided::fed_all`]).
    Data,
    /// More of the receiver's entries ([`Guided::theirs`], or
    /// [`Guided::theirs_ended`]).
    Theirs,
    /// Nothing: every byte is cut ([`Guided::finish`]).
    Nothing,
}

impl Guided {
    /// A guided cut for `layout`, its first guess the receiver's first
    /// entry.
    ///
    /// # Errors
    ///
    /// A layout that cannot be used.
    pub fn new(layout: Layout) -> Result<Guided, DeltaError> {
        layout.check()?;
        Ok(Guided {
            layout,
            theirs: Vec::new(),
            index: HashMap::new(),
            offsets: Vec::new(),
            covered: 0,
            ended: false,
            pos: 0,
            drift: 0,
            pending: Vec::new(),
            start: 0,
            fed_all: false,
            len: 0,
            next: Some(0),
            missed: 0,
            impatient: false,
            entries: Vec::new(),
            by_content: 0,
            settled: 0,
            settled_at: 0,
            early: 0,
            void: false,
        })
    }

    /// The receiver's next entries, in its file's order (checked already,
    /// by a [`SignatureReader`]).
    pub fn theirs(&mut self, entries: &[(u32, ChunkId)]) {
        for &(len, id) in entries {
            self.index.entry(id).or_insert(self.theirs.len());
            self.theirs.push((len, id));
            self.offsets.push(self.covered);
            self.covered += u64::from(len);
        }
    }

    /// No more of the receiver's entries will come.
    pub fn theirs_ended(&mut self) {
        self.ended = true;
    }

    /// The receiver's signature failed before its end (it could not cut
    /// its file): no more will come, and what is not settled yet is new
    /// data, whatever the entries that came say.
    pub fn theirs_void(&mut self) {
        self.ended = true;
        self.void = true;
    }

    /// The next bytes of the new file.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.drain(..self.start);
        self.start = 0;
        self.pending.extend_from_slice(data);
        self.len += data.len() as u64;
    }

    /// Every byte of the new file was fed.
    pub fn fed_all(&mut self) {
        self.fed_all = true;
    }

    /// Where it would wait for more of the receiver's entries, goes on
    /// without them: the guess is dropped, and the next chunk cut by
    /// content and looked up among the entries come so far. For a side
    /// that must not let its peer's pace hold it (a server cutting for a
    /// client's signature).
    pub fn go_on(&mut self) {
        self.next = None;
        self.impatient = true;
    }

    /// Cuts what it can; says what it needs to go on.
    ///
    /// # Errors
    ///
    /// [`DeltaError::TooManyChunks`]: the file needs a larger layout.
    pub fn advance(&mut self) -> Result<Needs, DeltaError> {
        loop {
            let avail = &self.pending[self.start..];
            if avail.is_empty() {
                return Ok(if self.fed_all { Needs::Nothing } else { Needs::Data });
            }
            if let Some(j) = self.next {
                let Some(&(len, id)) = self.theirs.get(j) else {
                    if !self.ended {
                        return Ok(Needs::Theirs);
                    }
                    self.next = None;
                    continue;
                };
                let l = len as usize;
                // A piece shorter than the layout cuts stands only at the
                // file's end (as the old file's last): guessed anywhere
                // else, it would put every cut after it out of the
                // layout's.
                let short = !self.layout.allows(len, false);
                if (avail.len() < l || (short && avail.len() == l)) && !self.fed_all {
                    return Ok(Needs::Data);
                }
                let fits = !short || avail.len() == l;
                if fits && avail.len() >= l && chunk_id(&avail[..l]) == id {
                    self.take(l, id, Some(j + 1))?;
                    continue;
                }
                // Out of step: cut by content from here.
                self.missed += len.min(avail.len() as u32) as u64;
                self.next = None;
            }
            let max = self.layout.max();
            if avail.len() < max && !self.fed_all {
                return Ok(Needs::Data);
            }
            let l = cut_len(self.layout, avail);
            // Looked up only once theirs cover where this chunk would
            // stand in the old file, and a few chunks past: a chunk
            // after a change is most often found there, and one not
            // found would leave the guess for the rest of the file.
            let end = i128::from(self.pos + l as u64) - self.drift + 4 * max as i128;
            if !self.ended && !self.impatient && i128::from(self.covered) < end {
                return Ok(Needs::Theirs);
            }
            self.impatient = false;
            let id = chunk_id(&avail[..l]);
            let theirs = &self.theirs;
            let found = self.index.get(&id).filter(|&&k| theirs[k].0 as usize == l).map(|&k| k + 1);
            // Guesses that missed cost a hash each: past an eighth of
            // the file (and a few chunks), none are made.
            let guessing = self.missed <= self.pos / 8 + 16 * max as u64;
            self.by_content += 1;
            self.take(l, id, found.filter(|_| guessing))?;
        }
    }

    fn take(&mut self, len: usize, id: ChunkId, next: Option<usize>) -> Result<(), DeltaError> {
        self.entries.push((len as u32, id));
        if let Some(found) = next {
            self.drift = i128::from(self.pos) - i128::from(self.offsets[found - 1]);
        }
        self.start += len;
        self.pos += len as u64;
        self.next = next;
        if self.entries.len() > MAX_CHUNKS {
            return Err(DeltaError::TooManyChunks { count: self.entries.len() as u64 });
        }
        Ok(())
    }

    /// Chunks cut by content so far, not guessed: the chunker ran over
    /// these, and only these.
    pub fn by_content(&self) -> u64 {
        self.by_content
    }

    /// Bytes hashed so far for guesses that missed.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Appends to `out` the runs of the new file it is sure of so far, in
    /// order from the first not settled, each once: a sender sends them
    /// while the receiver's signature still comes, and the receiver
    /// builds while it still cuts. A piece found among the entries come so
    /// far is a copy (any copy of the same bytes is as good). One not
    /// found is new once theirs have ended, or once they reach
    /// [`SETTLE_AFTER`] past where the old file would hold it, within
    /// [`SETTLE_BUDGET`]; else it waits, and so does every piece after
    /// it. Blocks settle as soon as theirs at the same place has come (a
    /// block is copied only at its place).
    pub fn settle(&mut self, out: &mut Vec<Piece>) {
        let after = SETTLE_AFTER.max(64 * self.layout.max() as u64);
        while let Some(&(len, id)) = self.entries.get(self.settled) {
            let (at, l) = (self.settled_at, u64::from(len));
            let found = match self.layout {
                _ if self.void => None,
                Layout::Chunks(_) => {
                    self.index.get(&id).filter(|&&k| self.theirs[k].0 == len).map(|&k| self.offsets[k])
                }
                Layout::Blocks(size) => match self.theirs.get(self.settled) {
                    Some(&(tl, tid)) => {
                        (tid == id && tl == len && at == self.settled as u64 * u64::from(size)).then_some(at)
                    }
                    None if self.ended => None,
                    None => return,
                },
            };
            let piece = match found {
                Some(offset) => Piece::Copy { offset, len: l },
                None if self.ended || matches!(self.layout, Layout::Blocks(_)) => Piece::Literal { at, len: l },
                None => {
                    // It may still come: new only once theirs reach well
                    // past where it would stand, and within the budget.
                    let reach = i128::from(at + l) - self.drift + i128::from(after);
                    let budget = SETTLE_BUDGET + self.pos / 256;
                    if i128::from(self.covered) < reach || self.early + l > budget {
                        return;
                    }
                    self.early += l;
                    Piece::Literal { at, len: l }
                }
            };
            push_piece(out, piece);
            self.settled += 1;
            self.settled_at += l;
        }
    }

    /// Where the first piece not settled yet starts in the new file.
    pub fn settled_at(&self) -> u64 {
        self.settled_at
    }

    /// The runs not settled yet ([`settle`](Self::settle)), once
    /// [`advance`](Self::advance) said [`Needs::Nothing`] and every entry
    /// of theirs was given ([`theirs_ended`](Self::theirs_ended)). With
    /// nothing settled before, the [`diff`] of the new file's entries
    /// against the receiver's whole signature: the same runs, found
    /// through the index the guesses were made with rather than a second
    /// one.
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish); [`DeltaError::WrongLayout`] as
    /// [`diff`]'s (for the length theirs cover, unless they were void).
    pub fn finish_diff(mut self) -> Result<Vec<Piece>, DeltaError> {
        debug_assert!(self.ended, "finish_diff before every entry of theirs was given");
        let mut out = Vec::new();
        self.settle(&mut out);
        let (layout, covered, void) = (self.layout, self.covered, self.void);
        let ours = self.finish()?;
        // A void signature is short of the file it was cut from.
        if !void {
            fits(layout, covered, &ours)?;
        }
        Ok(out)
    }

    /// The new file's entries, once [`advance`](Self::advance) said
    /// [`Needs::Nothing`].
    ///
    /// # Errors
    ///
    /// [`DeltaError::TooShort`]: bytes fed and not cut (it was not
    /// advanced to the end).
    pub fn finish(self) -> Result<Signature, DeltaError> {
        if self.start < self.pending.len() || !self.fed_all {
            let written = self.len - (self.pending.len() - self.start) as u64;
            return Err(DeltaError::TooShort { written, new_len: self.len });
        }
        Ok(Signature { layout: self.layout, len: self.len, entries: self.entries })
    }
}

/// Takes a signature in from its frames, checking each entry as it comes
/// (the sender's side).
#[derive(Debug)]
pub struct SignatureReader {
    layout: Layout,
    len: u64,
    /// Entries announced; `None` for a streamed signature, whose end is
    /// told by its last frame.
    count: Option<u64>,
    /// The most entries taken: `count`, or as many as the layout cuts
    /// the file into at most.
    most: u64,
    /// The entries kept (since the last [`forget`](Self::forget)), and
    /// how many were taken in all.
    entries: Vec<(u32, ChunkId)>,
    taken: u64,
    sum: u64,
    /// A streamed signature's entry shorter than the layout allows
    /// anywhere but last (its index and length): no entry may follow it.
    short: Option<(u64, u32)>,
}

impl SignatureReader {
    /// A reader of the signature of a file of `len` bytes in `count`
    /// entries cut as `layout` says.
    ///
    /// # Errors
    ///
    /// A layout that cannot be used, more than [`MAX_CHUNKS`] entries.
    pub fn new(layout: Layout, len: u64, count: u64) -> Result<SignatureReader, DeltaError> {
        layout.check()?;
        if count > MAX_CHUNKS as u64 {
            return Err(DeltaError::TooManyChunks { count });
        }
        let (fewest, most) = Self::bounds(layout, len);
        if count < fewest || count > most {
            return Err(DeltaError::SignatureLength { declared: len, entries: count });
        }
        Ok(SignatureReader::with(layout, len, Some(count), count))
    }

    /// A reader of a streamed signature of a file of `len` bytes cut as
    /// `layout` says: its entries come as the sender cuts the file, their
    /// number unknown until [`finish`](Self::finish). It takes at most as
    /// many as the layout cuts such a file into (and [`MAX_CHUNKS`]),
    /// each of a length the layout allows, only the last one shorter.
    ///
    /// # Errors
    ///
    /// A layout that cannot be used.
    pub fn streamed(layout: Layout, len: u64) -> Result<SignatureReader, DeltaError> {
        layout.check()?;
        let most = Self::bounds(layout, len).1.min(MAX_CHUNKS as u64);
        Ok(SignatureReader::with(layout, len, None, most))
    }

    /// As many entries as the layout cuts a file of `len` into: exactly
    /// for blocks, between the counts of all-largest and all-smallest
    /// chunks (the last one shorter) for chunks.
    fn bounds(layout: Layout, len: u64) -> (u64, u64) {
        match layout {
            Layout::Blocks(size) => {
                let n = len.div_ceil(u64::from(size));
                (n, n)
            }
            Layout::Chunks(p) => (len.div_ceil(u64::from(p.max)), len.div_ceil(u64::from(p.min))),
        }
    }

    fn with(layout: Layout, len: u64, count: Option<u64>, most: u64) -> SignatureReader {
        // Room grows as entries come, not as announced.
        let room = (most as usize).min(1 << 14);
        SignatureReader { layout, len, count, most, entries: Vec::with_capacity(room), taken: 0, sum: 0, short: None }
    }

    /// Takes the next frame of entries.
    ///
    /// # Errors
    ///
    /// A ragged frame, more entries than announced, a length the layout
    /// does not allow, entries longer than the file.
    pub fn push(&mut self, frame: &[u8]) -> Result<(), DeltaError> {
        if frame.len() % ENTRY_LEN != 0 {
            return Err(DeltaError::RaggedFrame { len: frame.len() });
        }
        for entry in frame.chunks_exact(ENTRY_LEN) {
            let index = self.taken;
            if index >= self.most {
                return Err(DeltaError::TooManyChunks { count: index + 1 });
            }
            // A short entry was not the last after all.
            if let Some((index, len)) = self.short {
                return Err(DeltaError::BadChunkLength { index, len });
            }
            let len = u32::from_be_bytes(entry[..4].try_into().expect("4 bytes"));
            // Streamed, any entry may be the last: one only the last may
            // be is taken, and the next refused.
            let last = self.count.is_none_or(|count| index + 1 == count);
            if !self.layout.allows(len, last) {
                return Err(DeltaError::BadChunkLength { index, len });
            }
            if self.count.is_none() && !self.layout.allows(len, false) {
                self.short = Some((index, len));
            }
            self.sum += u64::from(len);
            if self.sum > self.len {
                return Err(DeltaError::SignatureLength { declared: self.len, entries: self.sum });
            }
            self.entries.push((len, entry[4..].try_into().expect("ID_LEN bytes")));
            self.taken += 1;
        }
        Ok(())
    }

    /// The entries kept, each checked: all taken, or those taken since the
    /// last [`forget`](Self::forget).
    pub fn entries(&self) -> &[(u32, ChunkId)] {
        &self.entries
    }

    /// Lets go of the entries kept, the checks going on: for a reader
    /// whose entries are handed on as they come (a guided cut holds
    /// them), so that they are held once. [`finish`](Self::finish) then
    /// gives a signature of the entries taken since.
    pub fn forget(&mut self) {
        self.entries = Vec::new();
    }

    /// The signature, once every entry came.
    ///
    /// # Errors
    ///
    /// Entries missing, or not adding up to the file.
    pub fn finish(self) -> Result<Signature, DeltaError> {
        let counted = self.count.is_none_or(|count| self.taken == count);
        if !counted || self.sum != self.len {
            return Err(DeltaError::SignatureLength { declared: self.len, entries: self.sum });
        }
        Ok(Signature { layout: self.layout, len: self.len, entries: self.entries })
    }
}

/// What the sender answers: a run of the old file, or new bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `len` bytes of the old file from `offset`.
    Copy {
        /// Where the run starts in the old file.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// New bytes.
    Data(Vec<u8>),
}

const TAG_COPY: u8 = 1;
const TAG_DATA: u8 = 2;

impl Op {
    /// Bytes of the new file it makes.
    pub fn len(&self) -> u64 {
        match self {
            Op::Copy { len, .. } => u64::from(*len),
            Op::Data(bytes) => bytes.len() as u64,
        }
    }

    /// Whether it makes no bytes (never sent).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends its wire form: a tag byte, then for a copy its offset
    /// (`u64`) and length (`u32`), for data its length (`u32`) and bytes,
    /// big endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Copy { offset, len } => {
                out.push(TAG_COPY);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Op::Data(bytes) => {
                out.push(TAG_DATA);
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }

    /// Reads the ops of one frame (whole ops only).
    ///
    /// # Errors
    ///
    /// [`DeltaError::BadOp`] for an unknown tag or an op cut short,
    /// [`DeltaError::DataTooLong`], [`DeltaError::EmptyOp`].
    pub fn decode_all(mut frame: &[u8]) -> Result<Vec<Op>, DeltaError> {
        let total = frame.len();
        let mut ops = Vec::new();
        while let Some((&tag, rest)) = frame.split_first() {
            let at = total - frame.len();
            let bad = DeltaError::BadOp { at };
            let op = match tag {
                TAG_COPY => {
                    let (fields, rest) = rest.split_at_checked(12).ok_or(bad)?;
                    let offset = u64::from_be_bytes(fields[..8].try_into().expect("8 bytes"));
                    let len = u32::from_be_bytes(fields[8..].try_into().expect("4 bytes"));
                    frame = rest;
                    Op::Copy { offset, len }
                }
                TAG_DATA => {
                    let (len, rest) = rest.split_at_checked(4).ok_or(bad.clone())?;
                    let len = u32::from_be_bytes(len.try_into().expect("4 bytes"));
                    if len as usize > MAX_DATA {
                        return Err(DeltaError::DataTooLong { len });
                    }
                    let (bytes, rest) = rest.split_at_checked(len as usize).ok_or(bad)?;
                    frame = rest;
                    Op::Data(bytes.to_vec())
                }
                _ => return Err(bad),
            };
            if op.is_empty() {
                return Err(DeltaError::EmptyOp);
            }
            ops.push(op);
        }
        Ok(ops)
    }
}

/// Makes the ops of a new file fed in pieces against a signature of the
/// old one (the sender's side).
#[derive(Debug)]
pub struct Encoder {
    cutter: Cutter,
    layout: Layout,
    /// Content-defined chunks: each id's first offset and length in the
    /// old file (equal ids kept once).
    index: HashMap<ChunkId, (u64, u32)>,
    /// Blocks: each block's id, in order.
    blocks: Vec<ChunkId>,
    old_len: u64,
    ops: Vec<Op>,
    /// Bytes of the new file that matched the old, so far.
    matched: u64,
}

impl Encoder {
    /// An encoder of a new file of `new_len` bytes against `old`.
    ///
    /// # Errors
    ///
    /// [`DeltaError::WrongLayout`]: the signature is not cut as
    /// [`Layout::for_sizes`] says for the two lengths. The layout is not
    /// the receiver's to choose: a tiny one would make the sender hash
    /// its file in one-byte pieces.
    pub fn new(old: &Signature, new_len: u64) -> Result<Encoder, DeltaError> {
        let want = Layout::for_sizes(old.len, new_len);
        if old.layout != want {
            return Err(DeltaError::WrongLayout { got: old.layout, want });
        }
        let mut index = HashMap::new();
        let mut blocks = Vec::new();
        match old.layout {
            Layout::Chunks(_) => {
                index.reserve(old.entries.len());
                let mut offset = 0u64;
                for (len, id) in &old.entries {
                    index.entry(*id).or_insert((offset, *len));
                    offset += u64::from(*len);
                }
            }
            Layout::Blocks(_) => blocks = old.entries.iter().map(|(_, id)| *id).collect(),
        }
        Ok(Encoder {
            cutter: Cutter::new(old.layout),
            layout: old.layout,
            index,
            blocks,
            old_len: old.len,
            ops: Vec::new(),
            matched: 0,
        })
    }

    /// Feeds the next bytes of the new file.
    pub fn feed(&mut self, data: &[u8]) {
        let Encoder { cutter, layout, index, blocks, old_len, ops, matched } = self;
        cutter.feed(data, &mut |at, piece| place(ops, matched, (layout, index, blocks, *old_len), at, piece));
    }

    /// The end of the new file.
    pub fn finish(&mut self) {
        let Encoder { cutter, layout, index, blocks, old_len, ops, matched } = self;
        cutter.finish(&mut |at, piece| place(ops, matched, (layout, index, blocks, *old_len), at, piece));
    }

    /// The ops made so far, taken (the last one may still grow: take
    /// them all after [`finish`](Self::finish), or all but the last
    /// before).
    pub fn take(&mut self, keep_last: bool) -> Vec<Op> {
        let keep = if keep_last { self.ops.pop() } else { None };
        let ops = std::mem::take(&mut self.ops);
        self.ops.extend(keep);
        ops
    }

    /// Bytes the last op made so far makes (it may still grow).
    pub fn pending(&self) -> u64 {
        self.ops.last().map_or(0, Op::len)
    }

    /// Bytes of the new file found in the old one so far.
    pub fn matched(&self) -> u64 {
        self.matched
    }
}

type Lookup<'a> = (&'a Layout, &'a HashMap<ChunkId, (u64, u32)>, &'a [ChunkId], u64);

/// One piece of the new file, at `at`: a copy if the old file has it, else
/// data; joined to the op before where they run on.
fn place(ops: &mut Vec<Op>, matched: &mut u64, (layout, index, blocks, old_len): Lookup<'_>, at: u64, piece: &[u8]) {
    let id = chunk_id(piece);
    let len = piece.len() as u32;
    let found = match layout {
        Layout::Chunks(_) => index.get(&id).copied().filter(|&(_, l)| l == len).map(|(offset, _)| offset),
        Layout::Blocks(size) => {
            let i = at / u64::from(*size);
            let fits = at + u64::from(len) <= old_len;
            usize::try_from(i).ok().and_then(|i| blocks.get(i)).filter(|b| fits && **b == id).map(|_| at)
        }
    };
    match (found, ops.last_mut()) {
        (Some(offset), Some(Op::Copy { offset: o, len: l }))
            if *o + u64::from(*l) == offset && u64::from(*l) + u64::from(len) <= u64::from(u32::MAX) =>
        {
            *l += len;
        }
        (Some(offset), _) => ops.push(Op::Copy { offset, len }),
        (None, _) => {
            // In runs of at most MAX_DATA, joined to the one before.
            for part in piece.chunks(MAX_DATA) {
                match ops.last_mut() {
                    Some(Op::Data(bytes)) if bytes.len() + part.len() <= MAX_DATA => bytes.extend_from_slice(part),
                    _ => ops.push(Op::Data(part.to_vec())),
                }
            }
        }
    }
    if found.is_some() {
        *matched += u64::from(len);
    }
}

/// A run of the new file in a [`diff`]: copied from the old file, or new
/// bytes the sender reads and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes of the old file from `offset`.
    Copy {
        /// Where the run starts in the old file.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// `len` bytes of the new file from `at`, to be sent.
    Literal {
        /// Where the run starts in the new file.
        at: u64,
        /// Its length.
        len: u64,
    },
}

impl Piece {
    /// Bytes of the new file it makes.
    pub fn len(&self) -> u64 {
        match *self {
            Piece::Copy { len, .. } | Piece::Literal { len, .. } => len,
        }
    }

    /// Whether it makes no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The runs of a new file against the signature `old` of the old one,
/// from `new`, the new file indexed the same way (by an [`Indexer`] of
/// the layout the two lengths call for): what an [`Encoder`] would make,
/// matched chunk for chunk, without the new file's bytes. So a sender can
/// cut and hash its file while the old signature is on its way, and a
/// file sent to many receivers is cut and hashed once for all.
///
/// # Errors
///
/// [`DeltaError::WrongLayout`]: either signature is not cut as
/// [`Layout::for_sizes`] says for the two lengths.
pub fn diff(old: &Signature, new: &Signature) -> Result<Vec<Piece>, DeltaError> {
    fits(old.layout, old.len, new)?;
    let mut index: HashMap<ChunkId, (u64, u32)> = HashMap::new();
    if let Layout::Chunks(_) = old.layout {
        index.reserve(old.entries.len());
        let mut offset = 0u64;
        for (len, id) in &old.entries {
            index.entry(*id).or_insert((offset, *len));
            offset += u64::from(*len);
        }
    }
    let found = |len: u32, id: ChunkId| match index.get(&id) {
        Some(&(offset, l)) if l == len => Some(offset),
        _ => None,
    };
    Ok(pieces(old, new, found))
}

/// Whether a signature of the old file (`layout`, `old_len` bytes) and
/// `new` are both cut as the two lengths call for.
fn fits(layout: Layout, old_len: u64, new: &Signature) -> Result<(), DeltaError> {
    let want = Layout::for_sizes(old_len, new.len);
    for got in [layout, new.layout] {
        if got != want {
            return Err(DeltaError::WrongLayout { got, want });
        }
    }
    Ok(())
}

/// The runs of [`diff`]: each of `new`'s entries a copy from where
/// `found` (its length and id; chunks) says the old file holds it,
/// or, blocks, the old block at its place if the same; else a literal.
fn pieces(old: &Signature, new: &Signature, found: impl Fn(u32, ChunkId) -> Option<u64>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let mut at = 0u64;
    for (i, &(len, id)) in new.entries.iter().enumerate() {
        let found = match old.layout {
            Layout::Chunks(_) => found(len, id),
            Layout::Blocks(size) => {
                // Only a block at its place: `new` may come from a cut
                // that is not the layout's own.
                let fits = at + u64::from(len) <= old.len && at == i as u64 * u64::from(size);
                (fits && old.entries.get(i).is_some_and(|&(l, o)| o == id && l == len)).then_some(at)
            }
        };
        let len = u64::from(len);
        push_piece(&mut out, found.map_or(Piece::Literal { at, len }, |offset| Piece::Copy { offset, len }));
        at += len;
    }
    out
}

/// Appends `piece` to `out`, as a longer last run where it goes on from
/// it.
fn push_piece(out: &mut Vec<Piece>, piece: Piece) {
    match (piece, out.last_mut()) {
        (Piece::Copy { offset, len }, Some(Piece::Copy { offset: o, len: l })) if *o + *l == offset => *l += len,
        (Piece::Literal { at, len }, Some(Piece::Literal { at: a, len: l })) if *a + *l == at => *l += len,
        (piece, _) => out.push(piece),
    }
}

/// What the receiver holds of a file, without reading it: its length and
/// whole-file BLAKE3 (from a hash cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its length.
    pub len: u64,
    /// Its whole-file BLAKE3.
    pub blake3: [u8; 32],
}

impl Held {
    /// The copies of an append, if the new file (`new_len` bytes, whose
    /// first `self.len` bytes hash to `prefix`) starts with what is held:
    /// all of it copied (in runs of at most `u32::MAX` bytes), then the
    /// tail, which the caller sends as data.
    pub fn appended(&self, new_len: u64, prefix: &blake3::Hash) -> Option<Vec<Op>> {
        if self.len == 0 || new_len < self.len || *prefix.as_bytes() != self.blake3 {
            return None;
        }
        let step = u64::from(u32::MAX);
        let copies = (0..self.len.div_ceil(step))
            .map(|k| {
                let offset = k * step;
                Op::Copy { offset, len: (self.len - offset).min(step) as u32 }
            })
            .collect();
        Some(copies)
    }
}

/// What the receiver does for one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Copy `len` bytes of the old file from `from` to the end of the new.
    Copy {
        /// Where in the old file.
        from: u64,
        /// How many bytes.
        len: u32,
    },
    /// Append these bytes.
    Write(&'a [u8]),
}

/// Checks each op a sender sent against the old file's length and the
/// new file's (the receiver's side), and says what to do for it.
#[derive(Debug, Clone)]
pub struct Patcher {
    old_len: u64,
    new_len: u64,
    written: u64,
}

impl Patcher {
    /// A patcher that builds a file of `new_len` bytes from one of
    /// `old_len`.
    pub fn new(old_len: u64, new_len: u64) -> Patcher {
        Patcher { old_len, new_len, written: 0 }
    }

    /// A patcher whose new file already holds its first `written` bytes
    /// (a resumed transfer: the ops make the rest).
    pub fn resuming(old_len: u64, new_len: u64, written: u64) -> Patcher {
        Patcher { old_len, new_len, written: written.min(new_len) }
    }

    /// What to do for `op`.
    ///
    /// # Errors
    ///
    /// An empty op, a copy out of the old file, an op past the new file's
    /// end: the transfer is refused (the caller then sends it whole).
    pub fn apply<'a>(&mut self, op: &'a Op) -> Result<Action<'a>, DeltaError> {
        let len = op.len();
        if len == 0 {
            return Err(DeltaError::EmptyOp);
        }
        if self.written.checked_add(len).is_none_or(|end| end > self.new_len) {
            return Err(DeltaError::TooLong { new_len: self.new_len });
        }
        let action = match op {
            Op::Copy { offset, len } => {
                if offset.checked_add(u64::from(*len)).is_none_or(|end| end > self.old_len) {
                    return Err(DeltaError::CopyOutOfRange { offset: *offset, len: *len, old_len: self.old_len });
                }
                Action::Copy { from: *offset, len: *len }
            }
            Op::Data(bytes) => Action::Write(bytes),
        };
        self.written += len;
        Ok(action)
    }

    /// Bytes of the new file made so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks that the new file is whole.
    ///
    /// # Errors
    ///
    /// [`DeltaError::TooShort`].
    pub fn finish(&self) -> Result<(), DeltaError> {
        if self.written != self.new_len {
            return Err(DeltaError::TooShort { written: self.written, new_len: self.new_len });
        }
        Ok(())
    }
}

/// Builds the new file in memory from `old` and `ops` (tests, fuzzing,
/// and small files).
///
/// # Errors
///
/// As [`Patcher`].
pub fn apply_in_memory(old: &[u8], new_len: u64, ops: &[Op]) -> Result<Vec<u8>, DeltaError> {
    let mut patcher = Patcher::new(old.len() as u64, new_len);
    let mut out = Vec::new();
    for op in ops {
        match patcher.apply(op)? {
            Action::Copy { from, len } => {
                let from = from as usize;
                out.extend_from_slice(&old[from..from + len as usize]);
            }
            Action::Write(bytes) => out.extend_from_slice(bytes),
        }
    }
    patcher.finish()?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
