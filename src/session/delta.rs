//! Delta transfers over a session (PROTOCOL.md §4.6.6): the receiver's
//! older version indexed ([`index`]), its signature sent and read in
//! bounded frames ([`send_signature`], [`read_signature`]), the new file
//! encoded into `delta` frames on a blocking thread while the frames go
//! out ([`send_ops`]), and the frames applied into the partial file on the
//! other side ([`Patch`], [`receive_ops`]). The engine itself is
//! [`crate::delta`], which does no I/O; this is where its bytes meet
//! files and the connection.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use tokio::sync::mpsc;

use super::receiver::Received;
use super::{cut_off_by, Outbound, Sends, Session};
use crate::delta::{Action, DeltaError, Indexer, Layout, Op, Patcher, Signature, SignatureReader, ENTRY_LEN};

/// The longest older version a receiver's signature may describe, for a
/// new file of `new_len` bytes: four times as long (a file cut to less
/// than a quarter goes whole), so that what a sender holds of a signature
/// is bounded by its own file, not by what the receiver claims.
pub fn longest_basis(new_len: u64) -> u64 {
    new_len.saturating_mul(4)
}
use crate::proto::{Answer, Basis, DeltaFrame, SignatureFrame};
use crate::services::root::PartialName;
use crate::transport::BoxRead;
use crate::wire::{Error, FrameReader};

/// Signature entries a `signature` frame carries at most (384 KiB).
pub const SIGNATURE_FRAME_ENTRIES: usize = 1 << 15;

/// The largest `delta` frame body a receiver takes. A sender fills frames
/// to about 1 MiB; one op of new bytes is at most
/// [`crate::delta::MAX_DATA`].
pub const DELTA_FRAME_MAX: u64 = 4 << 20;

/// A sender sends its frame once it holds this many bytes of ops.
const DELTA_FRAME_TARGET: usize = 1 << 20;

/// A frame covers at most this much of the file, and a copy is at most
/// this long: a large unchanged file goes as a steady run of frames
/// (neither side waits for the other to read it all), each a bounded
/// amount of work for the receiver.
const MAX_RUN: u64 = 64 << 20;

/// New files smaller than this are sent whole: a delta saves at most
/// what such a file costs, and costs a round trip and both sides'
/// reading.
pub const DELTA_MIN: u64 = 64 << 10;

/// The longest tail a put's client trusts a likely append for
/// (`DeltaAsk::trust`): the server answers at once, without reading its
/// file, and the append is checked by the whole file's checksum alone.
/// A wrong guess (the same bytes at the sample, others before) costs
/// this tail sent for nothing, then a delta as any other file's.
pub const TRUSTED_TAIL: u64 = 64 << 20;

/// Bytes read at a time.
const PIECE: usize = 1 << 20;

/// A tree's changed files smaller than this go as deltas inside the
/// streamed request (PROTOCOL.md §4.6.6.1); larger ones each by itself.
/// A peer offers or takes a basis in the stream only for such files.
pub const TREE_DELTA_MAX: u64 = 1 << 20;

/// The longest older version a basis in a tree's stream may describe:
/// that of the largest file sent in the stream ([`longest_basis`]).
pub const TREE_BASIS_MAX: u64 = 4 * TREE_DELTA_MAX;

/// Signature entries the bases of one `wants` frame may carry in all
/// (6 MiB; small files are cut in 1 KiB chunks, so about 512 MiB of older
/// versions read to make them): what a peer holds of them until the files
/// are sent. A sender of bases offers none past it for the rest of the
/// frame.
pub const TREE_SIGNATURE_ENTRIES: u64 = 1 << 19;

/// The fewest entries a signature of `len` bytes cut as `layout` has:
/// what a sender of bases checks against what is left of
/// [`TREE_SIGNATURE_ENTRIES`] before it reads the file.
pub fn least_entries(layout: Layout, len: u64) -> u64 {
    match layout {
        Layout::Blocks(block) => len.div_ceil(u64::from(block.max(1))),
        Layout::Chunks(p) => len.div_ceil(u64::from(p.max.max(1))),
    }
}

/// Whether a new file of `new_len` bytes is worth sending as a delta
/// from an older one of `old_len`.
pub fn worth(old_len: u64, new_len: u64) -> bool {
    old_len > 0 && new_len >= DELTA_MIN && old_len <= longest_basis(new_len)
}

/// Why a delta transfer did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DeltaFailed {
    /// The connection failed or was cut (the partial file keeps what was
    /// built, for a resume).
    #[error("{0}")]
    Wire(#[from] Error),
    /// The peer left.
    #[error("the connection closed")]
    Closed,
    /// The peer sent what the engine refuses: a signature or ops that do
    /// not fit the files.
    #[error("{0}")]
    Bad(#[from] DeltaError),
    /// This side's file could not be read or written.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The older version changed while the delta was built from it (it
    /// is shorter than it was): the file must be sent whole.
    #[error("the file the delta was built from changed meanwhile: {0}")]
    BasisChanged(io::Error),
    /// The peer could not finish the signature it streamed (its file
    /// changed or could not be read): there is none to build against.
    #[error("the peer could not finish its signature")]
    NoSignature,
    /// The peer refused in the signature's place (a put's server that
    /// could not take the ops sent before its end).
    #[error("{}", .0.message)]
    Refused(crate::proto::ErrorFrame),
}

/// Indexes the first `len` bytes of `file` cut as `layout`, and hashes
/// them whole. Blocking.
///
/// # Errors
///
/// Reading; a file shorter than `len` (it shrank); a layout the engine
/// refuses or a file it would index past its limits.
pub fn index(file: &File, len: u64, layout: Layout) -> io::Result<(Signature, blake3::Hash)> {
    let (sig, hash) = cut(file, len, layout, &std::sync::atomic::AtomicBool::new(false), true)?;
    Ok((sig, hash.expect("hashed")))
}

/// [`index_only`], given up (`Interrupted`) between two 1 MiB pieces
/// once `stop` is set: a sender's cut made while the receiver's
/// signature comes, whose requester may leave ([`StopOnDrop`]). The
/// whole-file hash is left for later ([`Plan::Pieces`] without one): made
/// after the ops have gone, while the receiver builds, it is off the
/// path the two sides wait on.
///
/// # Errors
///
/// As [`index`]; `Interrupted`.
pub fn index_until(
    file: &File,
    len: u64,
    layout: Layout,
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<Signature> {
    Ok(cut(file, len, layout, stop, false)?.0)
}

/// [`index`] without the whole-file hash, for an older version about to
/// be replaced (a put's basis): one pass over the file instead of two.
/// Blocking.
///
/// # Errors
///
/// As [`index`].
pub fn index_only(file: &File, len: u64, layout: Layout) -> io::Result<Signature> {
    Ok(cut(file, len, layout, &std::sync::atomic::AtomicBool::new(false), false)?.0)
}

fn cut(
    file: &File,
    len: u64,
    layout: Layout,
    stop: &std::sync::atomic::AtomicBool,
    whole: bool,
) -> io::Result<(Signature, Option<blake3::Hash>)> {
    let mut indexer = Indexer::new(layout).map_err(invalid_data)?;
    let mut hasher = whole.then(blake3::Hasher::new);
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    each_piece(file, (0, len), "indexed", stopped, |_, piece| {
        indexer.feed(piece).map_err(invalid_data)?;
        if let Some(h) = hasher.as_mut() {
            h.update(piece);
        }
        Ok::<(), io::Error>(())
    })?;
    Ok((indexer.finish().map_err(invalid_data)?, hasher.map(|h| h.finalize())))
}

/// Reads `file` from `from` to `to` in pieces of at most [`PIECE`] bytes,
/// giving each to `each` with its offset; `Interrupted` between two
/// pieces once `stop` says so; a file that ends before `to` is
/// `UnexpectedEof` ("the file shrank while it was {what}"). Blocking: the
/// one read loop of an index, an encoding and a hash made after.
fn each_piece<E: From<io::Error>>(
    file: &File,
    (from, to): (u64, u64),
    what: &str,
    mut stop: impl FnMut() -> bool,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = vec![0u8; PIECE];
    let mut at = from;
    while at < to {
        if stop() {
            return Err(io::Error::from(io::ErrorKind::Interrupted).into());
        }
        let want = usize::try_from(to - at).unwrap_or(PIECE).min(PIECE);
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            let why = format!("the file shrank while it was {what}");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why).into());
        }
        each(at, &buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// A flag set when dropped: what stops an [`index_until`] whose requester
/// left (its handler returned, the connection ended) instead of letting
/// it read the rest of a large file for nobody.
#[derive(Debug, Default)]
pub struct StopOnDrop(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a receiver offers from its older version, `file` of `len` bytes,
/// for an upload of `size` bytes asked as `ask` (PROTOCOL.md §4.6.6): an
/// append basis if the client's sample is this file's end (with the
/// file's whole hash), else its signature cut as the two lengths say:
/// the one `known` (a cache's), or the file to cut ([`Signed::ToCut`]:
/// cut by the caller, whole or while it is sent). `known`: its whole hash
/// and signature where a cache holds them. Returns the basis (its
/// `count` set once the signature is made), the signature, and the hash
/// to cache where it was made here. Blocking. `None`: nothing worth a
/// delta (too short, too long, unreadable).
pub fn offer_basis(
    file: &mut File,
    len: u64,
    (ask, size): (&crate::proto::DeltaAsk, u64),
    known: (Option<blake3::Hash>, Option<std::sync::Arc<Signature>>),
) -> Option<Offered> {
    if !worth(len, size) {
        return None;
    }
    // A likely append: this file ends as the client's sample does. Its
    // whole hash (known, or read) goes to the client, which checks it
    // against its own prefix; an insertion or an edit is told by the
    // sample alone, without reading the file twice.
    // A client that trusts the sample (`ask.trust`) checks by the whole
    // file's checksum alone: the file is not read for it.
    let sample = ask.append.as_ref().filter(|s| s.len == len && len < size);
    if sample.is_some_and(|s| crate::proto::Sample::of(file, len).is_ok_and(|ours| ours == *s)) {
        let hash = match known.0 {
            Some(hash) => Some(hash),
            None if ask.trust => None,
            None => Some(crate::services::files::hash_prefix(file, len).ok()?.finalize()),
        };
        let blake3 = hash.map(|h| h.to_hex().to_string());
        let basis =
            Basis { len, append: true, blake3, tail: None, layout: None, count: 0, streamed: false, pipelined: false };
        return Some(Offered { basis, signature: None, hash });
    }
    let layout = Layout::for_sizes(len, size);
    let signed = match known.1.filter(|sig| sig.layout == layout) {
        Some(sig) => Signed::Made(sig),
        None => Signed::ToCut(ToCut { file: file.try_clone().ok()?, len, layout, keep: None }),
    };
    let basis = Basis {
        len,
        append: false,
        blake3: None,
        tail: None,
        layout: Some(layout),
        count: 0,
        streamed: false,
        pipelined: false,
    };
    Some(Offered { basis, signature: Some(signed), hash: None })
}

/// A receiver's offer of its older version ([`offer_basis`]).
#[derive(Debug)]
pub struct Offered {
    /// What `put_ready.basis` says.
    pub basis: Basis,
    /// The signature that follows it, if any.
    pub signature: Option<Signed>,
    /// The older version's whole hash, where made (an append's).
    pub hash: Option<blake3::Hash>,
}

/// An offered basis's signature: made already, or still to cut.
#[derive(Debug)]
pub enum Signed {
    /// Made (a cache's).
    Made(std::sync::Arc<Signature>),
    /// To cut from the older version.
    ToCut(ToCut),
}

impl Signed {
    /// The signature, cut now if it is not made. Blocking.
    ///
    /// # Errors
    ///
    /// As [`index`].
    pub fn made(self) -> io::Result<std::sync::Arc<Signature>> {
        match self {
            Signed::Made(sig) => Ok(sig),
            Signed::ToCut(cut) => cut.cut(),
        }
    }
}

/// What a root keeps of a signature once it is made: its cache's entry,
/// given the file it was cut from (to tell whether it changed meanwhile).
pub type Keep = Box<dyn FnOnce(&File, &std::sync::Arc<Signature>) + Send>;

/// An older version's signature still to cut: cut whole before it is
/// sent ([`ToCut::cut`]), or sent as it is cut ([`Streaming`]).
/// Cut without a whole-file hash: this version is about to be replaced,
/// and the hash would cost a second pass over it.
pub struct ToCut {
    file: File,
    len: u64,
    layout: Layout,
    keep: Option<Keep>,
}

impl std::fmt::Debug for ToCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToCut").field("len", &self.len).field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl ToCut {
    /// The same cut, giving the signature to `keep` once made.
    pub fn keeping(self, keep: Keep) -> ToCut {
        ToCut { keep: Some(keep), ..self }
    }

    /// Cuts the file whole. Blocking.
    ///
    /// # Errors
    ///
    /// As [`index`].
    pub fn cut(self) -> io::Result<std::sync::Arc<Signature>> {
        self.cut_giving(|_| Ok(()), || false)
    }

    /// Cuts the file, handing each run of at least
    /// [`STREAMED_FRAME_ENTRIES`] new entries to `tx` as a frame's body
    /// as it is made, and the last ones at the end: never waiting for the
    /// connection (the frames wait in `tx`, at most the signature). Stops
    /// (`Interrupted`) once `tx`'s receiver is gone. Blocking.
    ///
    /// # Errors
    ///
    /// As [`index`]; `Interrupted`.
    pub(crate) fn stream(self, tx: &mpsc::UnboundedSender<Vec<u8>>) -> io::Result<std::sync::Arc<Signature>> {
        let send = |entries: &[(u32, crate::delta::ChunkId)]| {
            for frame in crate::delta::entry_frames(entries, SIGNATURE_FRAME_ENTRIES) {
                tx.send(frame).map_err(|_| io::ErrorKind::Interrupted)?;
            }
            Ok(())
        };
        self.cut_giving(send, || tx.is_closed())
    }

    /// The one cut of [`cut`](Self::cut) and [`stream`](Self::stream):
    /// `made` gets the entries made since it was last called, each time
    /// there are [`STREAMED_FRAME_ENTRIES`] of them and at the end;
    /// `stop` is asked between pieces. Fills the cache once made.
    fn cut_giving(
        self,
        mut made: impl FnMut(&[(u32, crate::delta::ChunkId)]) -> io::Result<()>,
        stop: impl FnMut() -> bool,
    ) -> io::Result<std::sync::Arc<Signature>> {
        let mut indexer = Indexer::new(self.layout).map_err(invalid_data)?;
        let mut given = 0;
        each_piece(&self.file, (0, self.len), "indexed", stop, |_, piece| {
            indexer.feed(piece).map_err(invalid_data)?;
            let new = &indexer.entries()[given..];
            if new.len() >= STREAMED_FRAME_ENTRIES {
                made(new)?;
                given += new.len();
            }
            Ok::<(), io::Error>(())
        })?;
        let sig = indexer.finish().map_err(invalid_data)?;
        made(&sig.entries[given..])?;
        let sig = std::sync::Arc::new(sig);
        if let Some(keep) = self.keep {
            keep(&self.file, &sig);
        }
        Ok(sig)
    }
}

/// A streamed signature goes in frames of at least this many entries
/// (6 KiB; the last one fewer): each a few milliseconds on a slow link,
/// and few enough frames that their heads cost under 1 %.
pub const STREAMED_FRAME_ENTRIES: usize = 512;

/// A signature sent streamed (PROTOCOL.md §4.6.6): entries in
/// `signature` frames as a blocking thread cuts the file, so the
/// signature's time on the wire is spent while it is made, not after;
/// then an empty frame, `failed` if the file could not be cut to its end
/// (it shrank, or could not be read). The client may send its ops before
/// that end: [`alongside`](Self::alongside) reads them while the frames
/// go. Dropped before its end, it stops the cut.
#[derive(Debug)]
pub struct Streaming {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    worker: Option<tokio::task::JoinHandle<io::Result<std::sync::Arc<Signature>>>>,
    /// The end frame went.
    ended: bool,
    /// Why a frame could not be written: nothing more is.
    broken: Option<Error>,
    /// Told `true` once the signature has gone (or cannot go on).
    over: tokio::sync::watch::Sender<bool>,
    /// A counted signature (made already): no empty frame ends it.
    counted: bool,
}

impl Streaming {
    /// Starts cutting `cut` on a blocking thread.
    pub fn start(cut: ToCut) -> Streaming {
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let worker = tokio::task::spawn_blocking(move || cut.stream(&tx));
        let over = tokio::sync::watch::Sender::new(false);
        Streaming { rx, worker: Some(worker), ended: false, broken: None, over, counted: false }
    }

    /// A signature made already, sent counted (its `count` in the basis,
    /// no empty frame after it), the same way: the client may answer
    /// before it has all gone.
    pub fn counted(sig: std::sync::Arc<Signature>) -> Streaming {
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        // Its frames made off the runtime (up to 24 MiB), stopped once
        // nobody takes them.
        tokio::task::spawn_blocking(move || {
            for frame in sig.entry_frames(SIGNATURE_FRAME_ENTRIES) {
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        let over = tokio::sync::watch::Sender::new(false);
        Streaming { rx, worker: None, ended: false, broken: None, over, counted: true }
    }

    /// What tells a reader of the other half that the signature has gone
    /// ([`read_patiently`]): until then, the peer may rightly say nothing
    /// (it waits for the signature), and no idle limit applies.
    pub fn patience(&self) -> Patience {
        Patience(Some(self.over.subscribe()))
    }

    /// Records the outcome of a frame's sending.
    fn sent(&mut self, sent: Result<bool, Error>) {
        match sent {
            Ok(ended) => self.ended = ended,
            Err(e) => {
                self.broken = Some(e);
                // Nothing more goes: the cut stops.
                self.rx.close();
            }
        }
        if self.ended || self.broken.is_some() {
            self.over.send_replace(true);
        }
    }

    /// Runs `work` (reading the connection's other half) while the
    /// signature's frames go out on `out` as they are cut, each frame
    /// written whole: the signature is left where it stands when `work`
    /// is done, to go on with [`finish`](Self::finish). A frame that
    /// cannot be written ends the sending, not `work`; `finish` says why.
    pub async fn alongside<S: Sends<SignatureFrame>, T>(
        &mut self,
        out: &mut Outbound<'_, S>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        while !self.ended && self.broken.is_none() {
            let frame = tokio::select! {
                done = &mut work => return done,
                frame = self.rx.recv() => frame,
            };
            let (sent, done) = {
                let mut sending = std::pin::pin!(send_frame((&mut self.worker, self.counted), out, frame));
                let mut done = None;
                let sent = loop {
                    tokio::select! {
                        sent = &mut sending => break sent,
                        d = &mut work, if done.is_none() => done = Some(d),
                    }
                };
                (sent, done)
            };
            self.sent(sent);
            if let Some(done) = done {
                return done;
            }
        }
        work.await
    }

    /// Sends the rest of the signature and its end.
    ///
    /// # Errors
    ///
    /// The connection's (the cut stops with it).
    pub async fn finish<S: Sends<SignatureFrame>>(mut self, out: &mut Outbound<'_, S>) -> Result<(), Error> {
        while !self.ended && self.broken.is_none() {
            let frame = self.rx.recv().await;
            let sent = send_frame((&mut self.worker, self.counted), out, frame).await;
            self.sent(sent);
        }
        self.broken.map_or(Ok(()), Err)
    }
}

/// What tells whether a signature the reader's peer waits for has gone
/// ([`Streaming::patience`]); none: it has (or there is none).
#[derive(Debug, Default)]
pub struct Patience(Option<tokio::sync::watch::Receiver<bool>>);

impl Patience {
    /// Whether the signature has gone (or will not go on).
    fn over(&self) -> bool {
        // Its sender dropped: the signature will not go on either.
        self.0.as_ref().is_none_or(|rx| *rx.borrow() || rx.has_changed().is_err())
    }

    /// Waits until it has.
    async fn wait(&mut self) {
        if let Some(rx) = self.0.as_mut() {
            // Its sender dropped: the signature will not go on either.
            let _ = rx.wait_for(|&over| over).await;
        }
    }
}

/// Reads the next frame's head as [`FrameReader::read_head`] does, but
/// with no idle limit while `patience` says the peer waits for a
/// signature this side still sends (the peer may rightly be silent that
/// long: a server cutting a large file); once it has gone, the read is
/// made again with the reader's limits. Cancel-safe.
///
/// # Errors
///
/// As [`FrameReader::read_head`].
pub async fn read_patiently<H: crate::wire::FrameHeader>(
    reader: &mut FrameReader<BoxRead>,
    patience: &mut Patience,
) -> Result<Option<(H, u64)>, Error> {
    while !patience.over() {
        let limits = reader.timeouts();
        reader.set_timeouts(crate::wire::Timeouts { idle: None, ..limits });
        let head = tokio::select! {
            head = reader.read_head::<H>() => Some(head),
            () = patience.wait() => None,
        };
        reader.set_timeouts(limits);
        if let Some(head) = head {
            return head;
        }
    }
    reader.read_head::<H>().await
}

/// Sends a signature's next frame, or (`frame` is `None`: the cut is
/// done, or a counted signature has all gone) a streamed one's end,
/// `failed` unless the cut made the signature. Returns whether it was the
/// end.
async fn send_frame<S: Sends<SignatureFrame>>(
    (worker, counted): (&mut Option<tokio::task::JoinHandle<io::Result<std::sync::Arc<Signature>>>>, bool),
    out: &mut Outbound<'_, S>,
    frame: Option<Vec<u8>>,
) -> Result<bool, Error> {
    match frame {
        Some(frame) => {
            out.send(&SignatureFrame { len: frame.len() as u64, failed: false }, &frame).await?;
            Ok(false)
        }
        None if counted => Ok(true),
        None => {
            let made = match worker.take() {
                Some(worker) => worker.await.ok().and_then(Result::ok).is_some(),
                None => false,
            };
            out.send(&SignatureFrame { len: 0, failed: !made }, &[]).await?;
            Ok(true)
        }
    }
}

/// The head of a signature's `basis` for the older version `sig` indexes.
pub fn basis_of(sig: &Signature, blake3: Option<String>, tail: Option<String>) -> Basis {
    let count = sig.entries.len() as u64;
    Basis {
        len: sig.len,
        append: false,
        blake3,
        tail,
        layout: Some(sig.layout),
        count,
        streamed: false,
        pipelined: false,
    }
}

/// Sends a signature's entries in `signature` frames, buffered, and
/// flushes them.
///
/// # Errors
///
/// The connection's.
pub async fn send_signature<S: Sends<SignatureFrame>>(s: &mut Session<S>, sig: &Signature) -> Result<(), Error> {
    for frame in sig.entry_frames(SIGNATURE_FRAME_ENTRIES) {
        s.feed(&SignatureFrame { len: frame.len() as u64, failed: false }, &frame).await?;
    }
    s.flush().await
}

/// Reads the signature `basis` announces, entry by entry as its frames
/// come, each checked ([`SignatureReader`]): the peer never makes this
/// side hold more than the layout allows for the file's length.
///
/// # Errors
///
/// [`DeltaFailed::Bad`] for a basis without a layout, a frame with no
/// entries or a ragged one, entries that do not fit; wire errors.
pub async fn read_signature<S>(s: &mut Session<S>, basis: &Basis) -> Result<Signature, DeltaFailed> {
    read_signature_from(s.reader(), basis).await
}

/// [`read_signature`] from a connection's reading half (a streamed
/// tree's, which reads while it writes).
///
/// # Errors
///
/// As [`read_signature`].
pub async fn read_signature_from(reader: &mut FrameReader<BoxRead>, basis: &Basis) -> Result<Signature, DeltaFailed> {
    read_entries(reader, basis, false, None).await
}

/// What takes a signature's entries as they are checked.
type HandOn<'a> = dyn FnMut(&[(u32, crate::delta::ChunkId)]) + Send + 'a;

/// Reads a signature's frames, counted or `streamed` (until an empty
/// frame), each checked as it comes ([`SignatureReader`]); `taken` gets
/// each frame's entries once checked. With a `taken`, the entries are
/// handed on, not kept: the signature returned has none.
async fn read_entries(
    reader: &mut FrameReader<BoxRead>,
    basis: &Basis,
    streamed: bool,
    mut taken: Option<&mut HandOn<'_>>,
) -> Result<Signature, DeltaFailed> {
    let declared = DeltaError::SignatureLength { declared: basis.len, entries: basis.count };
    let layout = basis.layout.ok_or(declared)?;
    let mut sig = match streamed {
        true => SignatureReader::streamed(layout, basis.len)?,
        false => SignatureReader::new(layout, basis.len, basis.count)?,
    };
    let mut got = 0;
    while streamed || (got as u64) < basis.count {
        let (SignatureFrame { len, failed }, _) = match reader.read_head::<Answer<SignatureFrame>>().await? {
            Some((Answer::Ok(frame), n)) => (frame, n),
            // A refusal in its place: the peer stopped (a put's server
            // that could not write the ops sent before the end).
            Some((Answer::Refused(e), _)) => return Err(DeltaFailed::Refused(e)),
            None => return Err(DeltaFailed::Closed),
        };
        match (len, streamed, failed) {
            (0, true, true) => return Err(DeltaFailed::NoSignature),
            (0, true, false) => break,
            // `failed` ends a streamed signature, and says nothing else.
            (0, false, _) | (_, _, true) => return Err(DeltaError::BadEnd.into()),
            _ => {}
        }
        let body = reader.read_body((SIGNATURE_FRAME_ENTRIES * ENTRY_LEN) as u64).await?;
        sig.push(&body)?;
        if let Some(taken) = taken.as_mut() {
            taken(sig.entries());
            sig.forget();
        }
        got += body.len() / ENTRY_LEN;
    }
    Ok(sig.finish()?)
}

/// Reads the signature a `put_ready`'s `basis` offers: counted as
/// [`read_signature`] reads it, or streamed where the basis says so,
/// until its empty last frame. A streamed one is checked entry by entry
/// as a counted one is, and takes at most as many entries as the layout
/// cuts the file into ([`SignatureReader::streamed`]).
///
/// # Errors
///
/// As [`read_signature`]; [`DeltaFailed::NoSignature`] where the server
/// ended it `failed`.
pub async fn read_offered<S>(s: &mut Session<S>, basis: &Basis) -> Result<Signature, DeltaFailed> {
    read_entries(s.reader(), basis, basis.streamed, None).await
}

/// What [`read_guiding`] gives back: whether the signature was read
/// whole and sound, and the sender's file with the runs of its delta
/// against it and its whole hash, or why they were not made.
pub type Guiding =
    (Result<(), DeltaFailed>, Result<(File, io::Result<(Vec<crate::delta::Piece>, blake3::Hash)>), DeltaFailed>);

/// Reads a signature as [`read_offered`] does (`streamed` as the caller
/// takes it: a put's client as the basis says, a get's server never),
/// while a blocking thread cuts `file` (`size` bytes) guided by the
/// entries as they come ([`crate::delta::Guided`]) and hashes it whole in
/// the same pass: when the signature ends, the new file's entries are
/// made but for what follows its last entries, and nothing of the file
/// is left to read. `wait`: the cut waits for entries it guesses are
/// coming (a put's client, paced by the server's cut); else it goes on
/// by content where none has come (a server, which a client's pace must
/// not hold). Returns whether the signature was sound, and `file` with
/// the runs of the delta ([`crate::delta::Guided::finish_diff`]) and the
/// hash (the cut is given up, `Interrupted`, if the signature fails).
pub async fn read_guiding<S>(
    s: &mut Session<S>,
    (basis, streamed): (&Basis, bool),
    (file, size): (File, u64),
    wait: bool,
) -> Guiding {
    let Some(layout) = basis.layout else {
        let declared = DeltaError::SignatureLength { declared: basis.len, entries: basis.count };
        return (Err(declared.into()), Ok((file, Err(io::ErrorKind::InvalidInput.into()))));
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = StopOnDrop::default();
    let flag = stop.0.clone();
    let cutting = tokio::task::spawn_blocking(move || {
        let cut = guided_cut((&file, size), layout, (&mut rx, wait), &flag);
        (file, cut, rx)
    });
    // The entries go to the cut, which holds them: only whether the
    // signature was sound is kept here.
    let mut hand_on = |entries: &[(u32, crate::delta::ChunkId)]| drop(tx.send(entries.to_vec()));
    let theirs = read_entries(s.reader(), basis, streamed, Some(&mut hand_on)).await.map(drop);
    drop(tx);
    if theirs.is_err() {
        drop(stop);
    }
    let ours = match cutting.await {
        Ok((file, Ok((mut guided, hash)), mut rx)) if theirs.is_ok() => {
            // The entries the cut did not wait for (a server's, nearly
            // all of them where the client's came slowly), then the runs:
            // a blocking thread's work.
            let diffed = tokio::task::spawn_blocking(move || {
                while let Ok(entries) = rx.try_recv() {
                    guided.theirs(&entries);
                }
                guided.theirs_ended();
                guided.finish_diff()
            });
            match diffed.await {
                Ok(pieces) => Ok((file, pieces.map(|pieces| (pieces, hash)).map_err(invalid_data))),
                Err(e) => Err(DeltaFailed::Io(io::Error::other(e))),
            }
        }
        Ok((file, Ok(_), _)) => Ok((file, Err(io::ErrorKind::Interrupted.into()))),
        Ok((file, Err(e), _)) => Ok((file, Err(e))),
        Err(e) => Err(DeltaFailed::Io(io::Error::other(e))),
    };
    (theirs, ours)
}

fn invalid_data(e: DeltaError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A [`crate::delta::Guided`] cut of `file` (`size` bytes) as `layout`
/// says, the receiver's entries taken from `rx` as it asks for them (its
/// end when `rx` closes; waited for only where `wait`), the file read
/// once and hashed whole on the way: the cut, every byte taken, and the
/// hash. Blocking; `Interrupted` once `stop` is set.
fn guided_cut(
    (file, size): (&File, u64),
    layout: Layout,
    (rx, wait): (&mut mpsc::UnboundedReceiver<Vec<(u32, crate::delta::ChunkId)>>, bool),
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<(crate::delta::Guided, blake3::Hash)> {
    use crate::delta::Needs;
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut guided = crate::delta::Guided::new(layout).map_err(invalid_data)?;
    let mut hasher = blake3::Hasher::new();
    // Cuts what it can, taking entries as it asks for them, until it
    // needs more of the file (or has cut it all).
    let mut go_on = |guided: &mut crate::delta::Guided| loop {
        if stopped() {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        match guided.advance().map_err(invalid_data)? {
            Needs::Data | Needs::Nothing => return Ok(()),
            Needs::Theirs => {
                // Err(true): no more will come; Err(false): none yet.
                let next = match wait {
                    true => rx.blocking_recv().ok_or(true),
                    false => rx.try_recv().map_err(|e| e == mpsc::error::TryRecvError::Disconnected),
                };
                match next {
                    Ok(entries) => guided.theirs(&entries),
                    Err(true) => guided.theirs_ended(),
                    Err(false) => guided.go_on(),
                }
            }
        }
    };
    each_piece(file, (0, size), "indexed", stopped, |_, piece| {
        hasher.update(piece);
        guided.feed(piece);
        go_on(&mut guided)
    })?;
    guided.fed_all();
    go_on(&mut guided)?;
    Ok((guided, hasher.finalize()))
}

/// What [`send_guided`] gives back.
#[derive(Debug)]
pub struct GuidedSent<A> {
    /// Whether the signature was read whole and sound; `None`: it was not
    /// read to its end, as the ops stopped first (`sent` says why).
    pub theirs: Option<Result<(), DeltaFailed>>,
    /// Where the ops began (what the receiver held, if it is the start
    /// of this file), and what was sent: every op of the file from
    /// there, its whole hash and the bytes copied; the connection's error
    /// where sending failed.
    pub sent: (u64, Result<Sent, DeltaFailed>),
    /// An answer the peer sent before the ops were through (a refusal):
    /// the sending stopped there.
    pub early: Option<Result<Option<(A, u64)>, Error>>,
}

/// Where an upload of `file` (`size` bytes) resumes: the receiver's
/// `offset` if what it holds (`prefix_blake3`) is the start of this
/// file, else 0. Blocking (hashes that prefix).
pub fn resume_offset(file: &File, size: u64, (offset, prefix_blake3): (u64, Option<&str>)) -> u64 {
    resume_offset_until(file, size, (offset, prefix_blake3), &std::sync::atomic::AtomicBool::new(false))
}

/// [`resume_offset`], given up (0) once `stop` is set.
fn resume_offset_until(
    file: &File,
    size: u64,
    (offset, prefix_blake3): (u64, Option<&str>),
    stop: &std::sync::atomic::AtomicBool,
) -> u64 {
    let Some(theirs) = prefix_blake3.filter(|_| offset > 0 && offset <= size) else { return 0 };
    let mut hasher = blake3::Hasher::new();
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let hashed = each_piece(file, (0, offset), "hashed", stopped, |_, piece| {
        hasher.update(piece);
        Ok::<(), io::Error>(())
    });
    if hashed.is_ok() && hasher.finalize().to_hex().as_str() == theirs {
        offset
    } else {
        0
    }
}

/// Sends `put_delta` and `file` (`size` bytes) as `delta` frames made
/// against a signature while it still comes (PROTOCOL.md §4.6.6, "ops
/// before the signature's end"), from where the receiver's `held` prefix
/// (its offset and hash) leaves off if it is this file's start: a
/// blocking thread checks that prefix, then cuts the file guided by the
/// entries as they are read ([`crate::delta::Guided`]), hashes it in the
/// same pass, and hands on the runs it is sure of
/// ([`crate::delta::Guided::settle`]) as ops, so the receiver builds
/// while it still cuts its older version. The signature is read to its
/// end whatever is sent meanwhile (`streamed` as the caller takes it).
/// The caller sends the checksum after. `progress` gets where the ops
/// began and the bytes of the new file covered past it.
///
/// If the signature fails (`failed`), what is not sent yet goes as data;
/// if it breaks the protocol, the cut stops, and the caller abandons the
/// connection. Once the signature is read, an answer of type `A` is
/// listened for while the last ops go (a receiver that could not write).
pub async fn send_guided<S, A>(
    s: &mut Session<S>,
    (basis, streamed): (&Basis, bool),
    (file, size): (File, u64),
    held: (u64, Option<String>),
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> GuidedSent<A>
where
    S: Sends<DeltaFrame> + Sends<crate::proto::PutDelta>,
    A: crate::wire::FrameHeader,
{
    let Some(layout) = basis.layout else {
        let declared = DeltaError::SignatureLength { declared: basis.len, entries: basis.count };
        let sent = (0, Err(io::Error::from(io::ErrorKind::InvalidInput).into()));
        return GuidedSent { theirs: Some(Err(declared.into())), sent, early: None };
    };
    let (entries_tx, mut entries_rx) = mpsc::unbounded_channel();
    // The offset the ops start from, then the frames.
    let (from_tx, from_rx) = tokio::sync::oneshot::channel();
    let (frames_tx, frames_rx) = mpsc::channel::<(Vec<u8>, u64)>(4);
    let stop = StopOnDrop::default();
    let void = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut worker = {
        let (stop, void) = (stop.0.clone(), void.clone());
        tokio::task::spawn_blocking(move || {
            let from = resume_offset_until(&file, size, (held.0, held.1.as_deref()), &stop);
            // Gone only when the sending has stopped: its error is the one
            // reported.
            let _ = from_tx.send(from);
            let mut out = Framer {
                buf: Vec::with_capacity(DELTA_FRAME_TARGET * 2),
                pos: 0,
                from,
                matched: 0,
                sent: from,
                tx: &frames_tx,
            };
            let hash = guided_send((&file, size), layout, (&mut entries_rx, &void), &stop, &mut out)?;
            Ok::<_, DeltaFailed>(Sent { hash, matched: out.matched })
        })
    };
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let mut from = 0;
    // The cut's outcome, where it was known before the signature's end.
    let mut made = None;
    let (theirs, frames, early) = {
        let (reader, mut out) = s.halves();
        // Owns the frames' receiving end: once it is done or dropped, a
        // frame the cut would send finds the channel closed.
        let sending = async {
            let mut frames_rx = frames_rx;
            let Ok(start) = from_rx.await else { return Ok(()) };
            from = start;
            out.send(&crate::proto::PutDelta { offset: start }, &[]).await?;
            while let Some((frame, upto)) = frames_rx.recv().await {
                out.send(&DeltaFrame { len: frame.len() as u64 }, &frame).await?;
                progress(start, upto.saturating_sub(start));
            }
            Ok::<(), Error>(())
        };
        let mut sending = std::pin::pin!(sending);
        // The signature to its end, the ops going meanwhile.
        let (theirs, frames) = {
            let reading = async {
                let mut hand_on = |entries: &[(u32, crate::delta::ChunkId)]| drop(entries_tx.send(entries.to_vec()));
                let theirs = read_entries(reader, basis, streamed, Some(&mut hand_on)).await.map(drop);
                match &theirs {
                    Ok(()) => {}
                    // What is not sent yet goes as data.
                    Err(DeltaFailed::NoSignature) => void.store(true, relaxed),
                    Err(_) => stop.0.store(true, relaxed),
                }
                // Their end, for the cut.
                drop(entries_tx);
                theirs
            };
            let mut reading = std::pin::pin!(reading);
            tokio::select! {
                theirs = &mut reading => (Some(theirs), None),
                frames = &mut sending => {
                    // The cut is done (or sending failed): the rest of the
                    // signature is read only if the ops all went, to stay
                    // in step; else the connection is given up.
                    let sound = match &frames {
                        Ok(()) => {
                            let done = (&mut worker).await;
                            let ok = matches!(done, Ok(Ok(_)));
                            made = Some(done);
                            ok
                        }
                        Err(_) => false,
                    };
                    let theirs = match sound {
                        true => Some(reading.await),
                        false => None,
                    };
                    (theirs, Some(frames))
                }
            }
        };
        // The last ops, an early answer listened for meanwhile; none after
        // a signature that broke (the connection is given up).
        match frames {
            Some(frames) => (theirs, Some(frames), None),
            None if theirs.as_ref().is_some_and(Result::is_err) && !void.load(relaxed) => (theirs, None, None),
            None => tokio::select! {
                frames = &mut sending => (theirs, Some(frames), None),
                early = reader.read_head::<A>() => (theirs, None, Some(early)),
            },
        }
    };
    // Sending stopped (its frames' receiving end is gone): so does the cut.
    drop(stop);
    let sent = match made {
        Some(done) => done,
        None => worker.await,
    };
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => Err(DeltaFailed::Io(io::Error::other(e))),
    };
    let sent = match frames {
        Some(Err(e)) => Err(DeltaFailed::Wire(e)),
        _ => sent,
    };
    GuidedSent { theirs, sent: (from, sent), early }
}

/// The blocking half of [`send_guided`]: cuts `file` guided by the
/// entries from `rx` as they come (waiting for them), hashes it whole in
/// the same pass, and pushes the runs into `out` as they settle (the
/// last one held while it may grow, so an unchanged stretch goes as one
/// copy); what is settled goes as a frame each time the cut must wait
/// for entries. Where its own file cuts into more chunks than the engine
/// takes, the rest goes as data; where the signature ends `void`, what
/// is not settled. Returns the whole file's hash. `Interrupted` once
/// `stop` is set.
fn guided_send(
    (file, size): (&File, u64),
    layout: Layout,
    (rx, void): (&mut mpsc::UnboundedReceiver<Vec<(u32, crate::delta::ChunkId)>>, &std::sync::atomic::AtomicBool),
    stop: &std::sync::atomic::AtomicBool,
    out: &mut Framer<'_>,
) -> Result<blake3::Hash, DeltaFailed> {
    use crate::delta::{Guided, Needs, Piece};
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let stopped = || stop.load(relaxed);
    let mut guided = Guided::new(layout)?;
    let mut hasher = blake3::Hasher::new();
    let mut runs: Vec<Piece> = Vec::new();
    // What is settled, as ops: all of it (`all`), or all but a last run
    // shorter than a frame's stretch, which the next may lengthen.
    let settle = |guided: &mut Guided, runs: &mut Vec<Piece>, out: &mut Framer<'_>, all: bool| {
        // A signature that broke: nothing more goes.
        if stopped() {
            return Err(DeltaFailed::Io(io::ErrorKind::Interrupted.into()));
        }
        guided.settle(runs);
        let keep = match runs.last() {
            Some(last) if !all && last.len() < MAX_RUN => runs.pop(),
            _ => None,
        };
        runs.drain(..).try_for_each(|p| out.piece(p, file))?;
        runs.extend(keep);
        Ok::<(), DeltaFailed>(())
    };
    // Their next entries, or their end; waited for once what is settled
    // has gone.
    let mut theirs = |guided: &mut Guided, runs: &mut Vec<Piece>, out: &mut Framer<'_>| {
        let next = match rx.try_recv() {
            Ok(entries) => Some(entries),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                settle(guided, runs, out, true)?;
                out.send()?;
                rx.blocking_recv()
            }
        };
        match &next {
            Some(entries) => guided.theirs(entries),
            None if void.load(relaxed) => guided.theirs_void(),
            None => guided.theirs_ended(),
        }
        Ok::<bool, DeltaFailed>(next.is_some())
    };
    // Cuts what it can, until it needs more of the file (or has cut it all).
    let mut go_on = |guided: &mut Guided, runs: &mut Vec<Piece>, out: &mut Framer<'_>| loop {
        if stopped() {
            return Err(DeltaFailed::Io(io::ErrorKind::Interrupted.into()));
        }
        match guided.advance()? {
            Needs::Data | Needs::Nothing => return Ok(()),
            Needs::Theirs => drop(theirs(guided, runs, out)?),
        }
    };
    let mut hashed = 0;
    let cut = each_piece(file, (0, size), "sent", stopped, |at, piece| {
        hasher.update(piece);
        hashed = at + piece.len() as u64;
        guided.feed(piece);
        go_on(&mut guided, &mut runs, out)?;
        settle(&mut guided, &mut runs, out, false)
    })
    .and_then(|()| {
        guided.fed_all();
        go_on(&mut guided, &mut runs, out)
    });
    match cut {
        Ok(()) => {
            // The rest of theirs, to settle what was not found yet.
            while theirs(&mut guided, &mut runs, out)? {}
            settle(&mut guided, &mut runs, out, true)?;
            if guided.settled_at() != size {
                return Err(DeltaError::TooShort { written: guided.settled_at(), new_len: size }.into());
            }
        }
        // Our own file cuts into more chunks than the engine takes: the
        // rest goes as data.
        Err(DeltaFailed::Bad(DeltaError::TooManyChunks { .. })) => {
            runs.drain(..).try_for_each(|p| out.piece(p, file))?;
            let at = guided.settled_at();
            out.piece(Piece::Literal { at, len: size - at }, file)?;
            each_piece(file, (hashed, size), "sent", stopped, |_, piece| {
                hasher.update(piece);
                Ok::<(), io::Error>(())
            })?;
        }
        Err(e) => return Err(e),
    }
    if out.pos != size {
        return Err(DeltaError::TooShort { written: out.pos, new_len: size }.into());
    }
    out.send()?;
    Ok(hasher.finalize())
}

/// Feeds a signature's entries in `signature` frames (the caller
/// flushes): a streamed tree's, behind its `wants` frame.
///
/// # Errors
///
/// The connection's.
pub async fn feed_signature<S: Sends<SignatureFrame>>(out: &mut Outbound<'_, S>, sig: &Signature) -> Result<(), Error> {
    for frame in sig.entry_frames(SIGNATURE_FRAME_ENTRIES) {
        out.feed(&SignatureFrame { len: frame.len() as u64, failed: false }, &frame).await?;
    }
    Ok(())
}

/// The plan of a delta of `file` (`size` bytes) against the receiver's
/// signature `theirs`: the file cut as `theirs` is, and hashed, in one
/// pass, then the two compared. `None` where nothing of the receiver's
/// version is used (the file is better sent whole) or the file cannot be
/// read as planned. Blocking.
pub fn plan_against(file: &File, size: u64, theirs: &Signature) -> Option<(Plan, u64)> {
    let (ours, hash) = index(file, size, theirs.layout).ok()?;
    let pieces = crate::delta::diff(theirs, &ours).ok()?;
    let matched: u64 = pieces
        .iter()
        .map(|p| match p {
            crate::delta::Piece::Copy { len, .. } => *len,
            crate::delta::Piece::Literal { .. } => 0,
        })
        .sum();
    (matched > 0).then_some((Plan::Pieces(pieces, Some(hash)), matched))
}

pub use super::shared::Chunked;

/// How the sender makes its ops.
#[derive(Debug)]
pub enum Plan {
    /// The receiver's whole file (this many bytes) is the start of the
    /// new one: copied, and the tail sent. With the hasher of those
    /// bytes where it was made to check the append: the new file is read
    /// from their end only. Without (an append trusted to the sample,
    /// checked by the whole file's checksum alone), the tail goes first
    /// and the whole file is hashed after it, while the receiver builds.
    Append(u64, Option<Box<blake3::Hasher>>),
    /// Nothing of the receiver's file is used: every byte is sent (an
    /// append that was not one, a signature the server could not finish,
    /// a file the layout cannot cut within the engine's bounds).
    Fresh,
    /// Runs found already (of the receiver's signature and the new
    /// file's entries, cut while the first came: [`crate::delta::diff`],
    /// or a guided cut's [`crate::delta::Guided::finish_diff`]), and the
    /// new file's hash if it was read then (if not, it is read after the
    /// ops are sent, while the receiver builds).
    Pieces(Vec<crate::delta::Piece>, Option<blake3::Hash>),
}

impl Plan {
    /// Whether this plan can make a file of `new_len` bytes.
    ///
    /// # Errors
    ///
    /// An append longer than the new file (the runs of
    /// [`Plan::Pieces`] were checked when they were found).
    pub fn check(&self, new_len: u64) -> Result<(), DeltaError> {
        match self {
            Plan::Append(old_len, _) if *old_len > new_len => Err(DeltaError::TooLong { new_len }),
            Plan::Append(..) | Plan::Fresh | Plan::Pieces(..) => Ok(()),
        }
    }
}

/// Whether a signature of an older version of `old_len` bytes cut as
/// `layout` may be used for a new one of `new_len`: the layout is the
/// two lengths' ([`Layout::for_sizes`]), never the receiver's choice.
///
/// # Errors
///
/// [`DeltaError::WrongLayout`].
pub fn layout_fits(layout: Layout, old_len: u64, new_len: u64) -> Result<(), DeltaError> {
    let want = Layout::for_sizes(old_len, new_len);
    if layout == want {
        Ok(())
    } else {
        Err(DeltaError::WrongLayout { got: layout, want })
    }
}

/// What a delta's sender did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// The whole new file's BLAKE3.
    pub hash: blake3::Hash,
    /// Bytes of it the receiver built from what it held (not sent).
    pub matched: u64,
}

/// Sends `file` (`new_len` bytes) as `delta` frames made by `plan`, the
/// part from `from` on (what a resumed receiver lacks), while a blocking
/// thread reads, hashes and encodes the next. `progress` gets the bytes
/// of the new file covered so far past `from`.
///
/// # Errors
///
/// The connection's; reading the file (one that changed size while it
/// was sent is an error: the frames no longer add up).
pub async fn send_ops<S: Sends<DeltaFrame>>(
    out: &mut Outbound<'_, S>,
    file: File,
    new_len: u64,
    plan: Plan,
    from: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Sent, DeltaFailed> {
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, u64)>(4);
    let worker = tokio::task::spawn_blocking(move || encode(&file, new_len, &plan, from, &tx));
    while let Some((frame, upto)) = rx.recv().await {
        out.send(&DeltaFrame { len: frame.len() as u64 }, &frame).await?;
        progress(upto.saturating_sub(from));
    }
    worker.await.map_err(|e| DeltaFailed::Io(io::Error::other(e)))?
}

/// Cuts ops into frames, leaving out what lies before `from`.
struct Framer<'a> {
    buf: Vec<u8>,
    /// Where in the new file the next op starts.
    pos: u64,
    from: u64,
    matched: u64,
    /// Where in the new file the last frame sent ended.
    sent: u64,
    tx: &'a mpsc::Sender<(Vec<u8>, u64)>,
}

impl Framer<'_> {
    fn push(&mut self, op: Op) -> Result<(), DeltaFailed> {
        match op {
            // Long copies in runs of MAX_RUN, each perhaps its frame's last.
            Op::Copy { offset, len } if u64::from(len) > MAX_RUN => {
                let mut done = 0u64;
                while done < u64::from(len) {
                    let run = (u64::from(len) - done).min(MAX_RUN);
                    self.push_one(Op::Copy { offset: offset + done, len: run as u32 })?;
                    done += run;
                }
                Ok(())
            }
            op => self.push_one(op),
        }
    }

    fn push_one(&mut self, op: Op) -> Result<(), DeltaFailed> {
        let start = self.pos;
        self.pos += op.len();
        if self.pos <= self.from {
            return Ok(());
        }
        let op = match op {
            _ if start >= self.from => op,
            Op::Copy { offset, len } => {
                let k = self.from - start;
                Op::Copy { offset: offset + k, len: len - k as u32 }
            }
            Op::Data(bytes) => Op::Data(bytes[(self.from - start) as usize..].to_vec()),
        };
        if let Op::Copy { len, .. } = op {
            self.matched += u64::from(len);
        }
        op.encode(&mut self.buf);
        if self.buf.len() >= DELTA_FRAME_TARGET || self.pos - self.sent >= MAX_RUN {
            self.send()?;
        }
        Ok(())
    }

    /// Pushes the ops of a run: copies of at most [`MAX_RUN`], new bytes
    /// read from `file` in ops of at most [`crate::delta::MAX_DATA`].
    fn piece(&mut self, piece: crate::delta::Piece, file: &File) -> Result<(), DeltaFailed> {
        match piece {
            _ if self.pos + piece.len() <= self.from => self.pos += piece.len(),
            crate::delta::Piece::Copy { offset, len } => {
                let mut done = 0;
                while done < len {
                    let run = (len - done).min(MAX_RUN);
                    self.push(Op::Copy { offset: offset + done, len: run as u32 })?;
                    done += run;
                }
            }
            crate::delta::Piece::Literal { at: start, len } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(crate::delta::MAX_DATA as u64) as usize;
                    let mut bytes = vec![0; n];
                    file.read_exact_at(&mut bytes, start + done)?;
                    self.push(Op::Data(bytes))?;
                    done += n as u64;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), DeltaFailed> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = std::mem::take(&mut self.buf);
        self.sent = self.pos;
        // The receiving end is gone only when the sending failed: its
        // error is the one reported.
        self.tx.blocking_send((frame, self.pos)).map_err(|_| DeltaFailed::Closed)
    }
}

/// Reads, hashes and encodes the new file. Blocking.
fn encode(
    file: &File,
    new_len: u64,
    plan: &Plan,
    from: u64,
    tx: &mpsc::Sender<(Vec<u8>, u64)>,
) -> Result<Sent, DeltaFailed> {
    let mut out = Framer { buf: Vec::with_capacity(DELTA_FRAME_TARGET * 2), pos: 0, from, matched: 0, sent: from, tx };
    let mut hasher = blake3::Hasher::new();
    match plan {
        Plan::Pieces(pieces, hash) => {
            for piece in pieces {
                out.piece(*piece, file)?;
            }
            if out.pos != new_len {
                return Err(DeltaError::TooShort { written: out.pos, new_len }.into());
            }
            out.send()?;
            let hash = match hash {
                Some(hash) => *hash,
                // The ops are on their way: the receiver builds while the
                // file is hashed here.
                None => hash_after(file, new_len, tx)?,
            };
            return Ok(Sent { hash, matched: out.matched });
        }
        Plan::Append(..) | Plan::Fresh => {
            // Read from the receiver's end: its part hashed already, or
            // to be hashed with the rest once the tail has gone.
            let (old_len, later) = match plan {
                Plan::Append(len, Some(prefix)) => {
                    hasher = (**prefix).clone();
                    (*len, false)
                }
                Plan::Append(len, None) => (*len, true),
                _ => (0, false),
            };
            let step = u64::from(u32::MAX);
            let mut copied = 0;
            while copied < old_len {
                let len = (old_len - copied).min(step);
                out.push(Op::Copy { offset: copied, len: len as u32 })?;
                copied += len;
            }
            // The tail, in ops of at most MAX_DATA bytes.
            each_piece(
                file,
                (old_len, new_len),
                "sent",
                || false,
                |_, piece| {
                    if !later {
                        hasher.update(piece);
                    }
                    for part in piece.chunks(crate::delta::MAX_DATA) {
                        out.push(Op::Data(part.to_vec()))?;
                    }
                    Ok::<(), DeltaFailed>(())
                },
            )?;
            if later {
                out.send()?;
                return Ok(Sent { hash: hash_after(file, new_len, tx)?, matched: out.matched });
            }
        }
    }
    out.send()?;
    Ok(Sent { hash: hasher.finalize(), matched: out.matched })
}

/// The whole new file's hash, made once its ops have all gone (the
/// receiver building meanwhile); given up if the frames' receiving end is
/// gone (the request ended). Blocking.
fn hash_after(file: &File, new_len: u64, tx: &mpsc::Sender<(Vec<u8>, u64)>) -> Result<blake3::Hash, DeltaFailed> {
    let mut hasher = blake3::Hasher::new();
    let hashed = each_piece(
        file,
        (0, new_len),
        "sent",
        || tx.is_closed(),
        |_, piece| {
            hasher.update(piece);
            Ok::<(), io::Error>(())
        },
    );
    match hashed {
        Ok(()) => Ok(hasher.finalize()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted && tx.is_closed() => Err(DeltaFailed::Closed),
        Err(e) => Err(e.into()),
    }
}

/// A file being built from `delta` frames in its partial file, from the
/// older version `old`: every op checked ([`Patcher`]) before it is
/// carried out, the new bytes hashed as they are written.
#[derive(Debug)]
pub struct Patch {
    file: File,
    name: PartialName,
    /// `None`: the older version could not be opened again.
    old: Option<File>,
    patcher: Patcher,
    hasher: Hashing,
    new_len: u64,
    /// Bytes copied from the older version.
    copied: u64,
    /// Why the older version could not be read, if it could not: the
    /// ops are still checked and taken, to stay in step, but nothing
    /// more is written.
    broken: Option<io::Error>,
    /// Whether a failed write is kept for [`finish`](Self::finish) rather
    /// than returned at once ([`Patch::deferring_write_errors`]).
    defer_writes: bool,
    /// The write that failed, so deferred.
    write_failed: Option<io::Error>,
}

/// Past this many bytes to build, a patch hashes on a thread of its own
/// while it copies: a large file's build is a read, a write and a hash
/// of every byte, and the hash need not wait for the write.
const HASH_BESIDE: u64 = 64 << 20;

/// Pieces in flight to a patch's hashing thread (each at most [`PIECE`]).
const HASH_QUEUE: usize = 4;

/// Where a patch's new bytes are hashed.
#[derive(Debug)]
enum Hashing {
    /// Here, with the buffer last filled, to be filled again.
    Here(Box<blake3::Hasher>, Vec<u8>),
    /// On a thread of its own, pieces sent in order, and given back to be
    /// filled again.
    Beside {
        pieces: std::sync::mpsc::SyncSender<Vec<u8>>,
        back: std::sync::mpsc::Receiver<Vec<u8>>,
        done: std::thread::JoinHandle<blake3::Hash>,
    },
    /// The thread's hash, the file whole ([`Hashing::settle`]).
    Done(blake3::Hash),
}

impl Hashing {
    fn new(hasher: blake3::Hasher, to_build: u64) -> Hashing {
        if to_build < HASH_BESIDE {
            return Hashing::Here(Box::new(hasher), Vec::new());
        }
        let (pieces, inbox) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (give_back, back) = std::sync::mpsc::sync_channel(HASH_QUEUE + 2);
        let fallback = hasher.clone();
        let hashing = move || {
            let mut hasher = hasher;
            for piece in inbox {
                hasher.update(&piece);
                // Not given back once the patch is full of them or gone.
                let _ = give_back.try_send(piece);
            }
            hasher.finalize()
        };
        match std::thread::Builder::new().name("framewire-hash".into()).spawn(hashing) {
            Ok(done) => Hashing::Beside { pieces, back, done },
            // No thread to be had: hashed here, as small builds are.
            Err(_) => Hashing::Here(Box::new(fallback), Vec::new()),
        }
    }

    /// A buffer of `len` bytes to fill (one given back, if there is one).
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = match self {
            Hashing::Beside { back, .. } => back.try_recv().unwrap_or_default(),
            Hashing::Here(_, spare) => std::mem::take(spare),
            Hashing::Done(_) => Vec::new(),
        };
        // Filled whole by the read that takes it: not cleared first.
        buf.resize(len, 0);
        buf
    }

    /// Hashes `bytes`, the next of the file (a literal run: copied only
    /// to go to the thread).
    fn update_from(&mut self, bytes: &[u8]) {
        match self {
            Hashing::Here(h, _) => {
                h.update(bytes);
            }
            _ => {
                let mut piece = self.buffer(0);
                piece.extend_from_slice(bytes);
                self.update(piece);
            }
        }
    }

    /// Hashes `piece`, the next bytes of the file.
    fn update(&mut self, piece: Vec<u8>) {
        match self {
            Hashing::Here(h, spare) => {
                h.update(&piece);
                *spare = piece;
            }
            Hashing::Beside { pieces, .. } => {
                // The thread ends only when this side hangs up.
                let _ = pieces.send(piece);
            }
            // Nothing comes after the last byte (the ops are checked
            // first); if it did, the hash would not match: a failed
            // check, not a wrong file.
            Hashing::Done(_) => {}
        }
    }

    /// Waits for the thread, if there is one, to hash what it was sent:
    /// done once the file is whole, on the building (blocking) thread,
    /// so that [`finalize`](Self::finalize) never waits.
    fn settle(&mut self) {
        if matches!(self, Hashing::Beside { .. }) {
            let beside = std::mem::replace(self, Hashing::Done(blake3::Hash::from_bytes([0; 32])));
            *self = Hashing::Done(beside.finalize());
        }
    }

    fn finalize(self) -> blake3::Hash {
        match self {
            Hashing::Here(h, _) => h.finalize(),
            Hashing::Beside { pieces, done, .. } => {
                drop(pieces);
                done.join().expect("the hashing thread does not panic")
            }
            Hashing::Done(hash) => hash,
        }
    }
}

impl Patch {
    /// The body of `receiver`'s file comes as a delta from `old`
    /// (`old_len` bytes, the older version): a patch that builds the file
    /// of `new_len` bytes after what is held (agreed already). If the
    /// older version could not be opened again (gone, or changed since its
    /// signature was made: `old` is why), the ops are still checked and
    /// read, to stay in step, and [`finish`](Self::finish) says
    /// [`DeltaFailed::BasisChanged`].
    pub fn new(receiver: super::Receiver, old: Result<File, io::Error>, old_len: u64, new_len: u64) -> Patch {
        let (partial, held, hasher) = receiver.into_parts();
        let (file, name) = partial.take_file();
        let patcher = Patcher::resuming(old_len, new_len, held);
        let (old, broken) = match old {
            Ok(old) => (Some(old), None),
            Err(why) => (None, Some(why)),
        };
        let hasher = Hashing::new(hasher, if old.is_some() { new_len.saturating_sub(held) } else { 0 });
        Patch { file, name, old, patcher, hasher, new_len, copied: 0, broken, defer_writes: false, write_failed: None }
    }

    /// The same patch, which on a write that fails (a full disk) goes on
    /// checking and taking the ops without writing, and says so at
    /// [`finish`](Self::finish) (removing the partial file): for a tree's
    /// stream, where one file that cannot be written fails alone and the
    /// stream stays in step.
    pub fn deferring_write_errors(mut self) -> Patch {
        self.defer_writes = true;
        self
    }

    /// Bytes of the new file made so far.
    pub fn written(&self) -> u64 {
        self.patcher.written()
    }

    /// Bytes of the new file copied from the older version so far.
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Whether the new file is whole.
    pub fn is_whole(&self) -> bool {
        self.patcher.written() == self.new_len
    }

    /// Carries out the ops of one `delta` frame. Blocking.
    ///
    /// # Errors
    ///
    /// [`DeltaFailed::Bad`]: an op the engine refuses; [`DeltaFailed::Io`]:
    /// writing the partial file failed.
    pub fn apply(&mut self, frame: &[u8]) -> Result<(), DeltaFailed> {
        let ops = Op::decode_all(frame)?;
        if ops.is_empty() {
            return Err(DeltaError::EmptyOp.into());
        }
        for op in &ops {
            let at = self.patcher.written();
            let action = self.patcher.apply(op)?;
            let writing = self.broken.is_none() && self.write_failed.is_none();
            let Some(old) = self.old.as_ref().filter(|_| writing) else { continue };
            match action {
                Action::Write(bytes) => {
                    if let Err(e) = self.file.write_all_at(bytes, at) {
                        if !self.defer_writes {
                            return Err(e.into());
                        }
                        self.write_failed = Some(e);
                        continue;
                    }
                    self.hasher.update_from(bytes);
                }
                Action::Copy { from, len } => {
                    let mut done = 0u64;
                    while done < u64::from(len) {
                        let n = (u64::from(len) - done).min(PIECE as u64) as usize;
                        let mut buf = self.hasher.buffer(n);
                        if let Err(e) = old.read_exact_at(&mut buf, from + done) {
                            self.broken = Some(e);
                            break;
                        }
                        if let Err(e) = self.file.write_all_at(&buf, at + done) {
                            if !self.defer_writes {
                                return Err(e.into());
                            }
                            self.write_failed = Some(e);
                            break;
                        }
                        self.hasher.update(buf);
                        done += n as u64;
                    }
                    self.copied += done;
                }
            }
        }
        if self.is_whole() {
            self.hasher.settle();
        }
        Ok(())
    }

    /// The file built, to be verified and committed as any received one.
    ///
    /// # Errors
    ///
    /// [`DeltaFailed::Bad`]: the ops did not make the whole file;
    /// [`DeltaFailed::BasisChanged`]: the older version changed under it
    /// (the partial file is removed: what it holds is no use);
    /// [`DeltaFailed::Io`]: a write failed, deferred (the partial file is
    /// removed).
    pub fn finish(self) -> Result<Received, DeltaFailed> {
        self.patcher.finish()?;
        if let Some(e) = self.write_failed {
            self.name.discard();
            return Err(DeltaFailed::Io(e));
        }
        if let Some(e) = self.broken {
            self.name.discard();
            return Err(DeltaFailed::BasisChanged(e));
        }
        let hash = self.hasher.finalize();
        Ok(Received::built(self.name.rejoin(self.file), hash))
    }

    /// Removes the partial file.
    pub fn discard(self) {
        self.name.discard();
    }
}

/// Receives `delta` frames and applies them until the file is whole (or
/// the session's cut-off), each frame on a blocking thread. `progress`
/// gets the bytes of the new file made so far.
///
/// # Errors
///
/// The patch back with why it stopped: the caller keeps its partial file
/// for a resume (a cut connection) or removes it.
pub async fn receive_ops<S>(
    s: &mut Session<S>,
    patch: Patch,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Patch, (DeltaFailed, Option<Box<Patch>>)> {
    let cut = s.cut_off().clone();
    receive_ops_from(s.reader(), (&cut, Patience::default()), patch, progress).await
}

/// [`receive_ops`] from a connection's reading half, until `cut`; with
/// no idle limit while `patience` says the peer waits for this side's
/// signature ([`read_patiently`]: ops that come before its end).
///
/// # Errors
///
/// As [`receive_ops`].
pub async fn receive_ops_from(
    reader: &mut FrameReader<BoxRead>,
    (cut, mut patience): (&tokio_util::sync::CancellationToken, Patience),
    mut patch: Patch,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Patch, (DeltaFailed, Option<Box<Patch>>)> {
    while !patch.is_whole() {
        let head = cut_off_by(cut, read_patiently::<DeltaFrame>(reader, &mut patience)).await;
        match head {
            Ok(Some(_)) => {}
            Ok(None) => return Err((DeltaFailed::Closed, Some(Box::new(patch)))),
            Err(e) => return Err((e.into(), Some(Box::new(patch)))),
        }
        let body = match cut_off_by(cut, reader.read_body(DELTA_FRAME_MAX)).await {
            Ok(body) => body,
            Err(e) => return Err((e.into(), Some(Box::new(patch)))),
        };
        let applied = tokio::task::spawn_blocking(move || {
            let r = patch.apply(&body);
            (patch, r)
        })
        .await;
        match applied {
            Ok((p, Ok(()))) => patch = p,
            Ok((p, Err(e))) => return Err((e, Some(Box::new(p)))),
            Err(e) => return Err((DeltaFailed::Io(io::Error::other(e)), None)),
        }
        progress(patch.written());
    }
    Ok(patch)
}

/// Signatures the server has made of files uploads replaced, by file
/// [`Version`](crate::services::files::Version) (device, inode, size,
/// times) and layout: a file re-sent as a delta is not read again to
/// index it while it stays as it was. Bounded: past
/// [`SIGNATURE_CACHE_ENTRIES`] entries in all, or
/// [`SIGNATURE_CACHE_FILES`] files, it starts over.
#[derive(Debug, Default)]
pub struct SignatureCache(std::sync::Mutex<Signatures>);

/// The cache's signatures, and their entries in all.
#[derive(Debug, Default)]
struct Signatures {
    by_version: std::collections::HashMap<(crate::services::files::Version, Layout), std::sync::Arc<Signature>>,
    entries: usize,
}

/// Signature entries the cache holds at most (12 bytes each).
pub const SIGNATURE_CACHE_ENTRIES: usize = 1 << 21;

/// Files' signatures the cache holds at most.
pub const SIGNATURE_CACHE_FILES: usize = 1024;

impl SignatureCache {
    /// The signature of the file at `version` cut as `layout`, if made.
    pub fn get(&self, version: crate::services::files::Version, layout: Layout) -> Option<std::sync::Arc<Signature>> {
        self.0.lock().expect("signature cache poisoned").by_version.get(&(version, layout)).cloned()
    }

    /// Records the signature of the file at `version`.
    pub fn put(&self, version: crate::services::files::Version, sig: std::sync::Arc<Signature>) {
        let mut held = self.0.lock().expect("signature cache poisoned");
        let Signatures { by_version, entries } = &mut *held;
        if *entries + sig.entries.len() > SIGNATURE_CACHE_ENTRIES || by_version.len() >= SIGNATURE_CACHE_FILES {
            by_version.clear();
            *entries = 0;
        }
        *entries += sig.entries.len();
        if let Some(old) = by_version.insert((version, sig.layout), sig) {
            *entries -= old.entries.len();
        }
    }
}

/// How a sender holding `file` (`size` bytes) answers a receiver's
/// `basis`: an append if the receiver's whole file hashes as this one's
/// start, else its signature if the basis is cut as the two lengths say
/// and not too long; `None`: the file goes whole. Blocking.
pub fn plan_for(file: &File, size: u64, basis: &Basis) -> Option<Want> {
    if !may_pay(basis, size) {
        return None;
    }
    // A likely append (the last bytes of theirs are ours at the same
    // place) is checked in full; anything else goes by the signature
    // without reading the prefix twice.
    let tail_same = |theirs: &str| crate::proto::Sample::of(file, basis.len).is_ok_and(|ours| ours.blake3 == theirs);
    let likely = basis.tail.as_deref().is_none_or(tail_same);
    if let Some(theirs) = basis.blake3.as_deref().filter(|_| basis.len < size && likely) {
        let mut dup = file.try_clone().ok()?;
        let prefix = crate::services::files::hash_prefix(&mut dup, basis.len).ok()?;
        if prefix.finalize().to_hex().as_str() == theirs {
            return Some(Want::Append(basis.len, Box::new(prefix)));
        }
    }
    let layout = basis.layout?;
    (basis.count > 0 && layout_fits(layout, basis.len, size).is_ok()).then_some(Want::Signature)
}

/// Whether a receiver's `basis` may be answered with a delta of a file of
/// `size` bytes at all, before the file is read: worth one, not too
/// long, and either a likely append or a signature cut as the sizes say.
pub fn may_pay(basis: &Basis, size: u64) -> bool {
    let append = basis.blake3.is_some() && basis.len < size;
    let cut = basis.layout.is_some_and(|l| basis.count > 0 && layout_fits(l, basis.len, size).is_ok());
    worth(basis.len, size) && basis.len <= longest_basis(size) && (append || cut)
}

/// What a sender answers a receiver's `basis` with.
#[derive(Debug, Clone)]
pub enum Want {
    /// The receiver's whole file (this many bytes) is the start of the
    /// new one: no signature needed. With the hasher of those bytes.
    Append(u64, Box<blake3::Hasher>),
    /// Its signature, to make ops against.
    Signature,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A put's cut that fails before the signature's end (its file ends
    /// before the length it was sent as: it shrank) is reported as this
    /// side's failure, not as the peer's signature: the signature is left
    /// unread, and `sent` says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_that_fails_before_the_signatures_end_is_this_sides_failure() {
        let old = crate::delta::tests::noise(4 << 20, 1);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &old).unwrap();
        // Sent as a file 1 MiB longer than it is.
        let (old_len, size) = (old.len() as u64, old.len() as u64 + (1 << 20));
        let layout = Layout::for_sizes(old_len, size);
        let mut indexer = Indexer::new(layout).unwrap();
        indexer.feed(&old).unwrap();
        let sig = indexer.finish().unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(ours);
        let timeouts = crate::wire::Timeouts { idle: None, io: Some(std::time::Duration::from_secs(30)) };
        let cut = tokio_util::sync::CancellationToken::new();
        let mut session = Session::<super::super::ClientSide>::new(Box::new(read), Box::new(write), timeouts, cut);
        // The peer: every entry of its signature, but not its end; what
        // the client sends is read past.
        let (mut peer_read, peer_write) = tokio::io::split(theirs);
        let mut writer = crate::wire::FrameWriter::new(peer_write);
        for frame in sig.entry_frames(512) {
            writer.send(&SignatureFrame { len: frame.len() as u64, failed: false }, &frame).await.unwrap();
        }
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut peer_read, &mut sink).await;
            drop(writer);
        });
        let basis = Basis {
            len: old_len,
            append: false,
            blake3: None,
            tail: None,
            layout: Some(layout),
            count: 0,
            streamed: true,
            pipelined: true,
        };
        let mut progress = |_, _| {};
        let got = send_guided::<_, crate::proto::Answer<crate::proto::PutDone>>(
            &mut session,
            (&basis, true),
            (file, size),
            (0, None),
            &mut progress,
        );
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), got).await.expect("it waited");
        assert!(got.theirs.is_none(), "{:?}", got.theirs);
        assert!(
            matches!(&got.sent.1, Err(DeltaFailed::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{:?}",
            got.sent.1
        );
        drop(session);
        drain.await.unwrap();
    }

    /// While the signature this side sends still goes, a peer's silence
    /// longer than the idle limit is no error (it may wait for the
    /// signature); once it has gone, the read is made again with the
    /// limit, and the frame that then comes is read.
    /// On a paused clock: the limits are told apart by their order, not
    /// by how fast this machine is.
    #[tokio::test(start_paused = true)]
    async fn no_idle_limit_while_the_signature_goes() {
        let (theirs, ours) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(Box::new(ours) as BoxRead);
        let idle = std::time::Duration::from_millis(100);
        reader.set_timeouts(crate::wire::Timeouts { idle: Some(idle), io: Some(idle) });
        let (over, rx) = tokio::sync::watch::channel(false);
        let mut patience = Patience(Some(rx));
        let mut writer = crate::wire::FrameWriter::new(theirs);
        let peer = async {
            // Silent for three idle limits while the signature goes, then
            // its end, then a frame.
            tokio::time::sleep(3 * idle).await;
            over.send_replace(true);
            tokio::time::sleep(idle / 4).await;
            writer.send(&DeltaFrame { len: 1 }, &[7]).await.unwrap();
        };
        let (head, ()) = tokio::join!(read_patiently::<DeltaFrame>(&mut reader, &mut patience), peer);
        assert_eq!(head.unwrap().map(|(h, _)| h.len), Some(1));
        assert_eq!(reader.timeouts().idle, Some(idle), "the limit is back");
        // Gone: silence past the limit is an error again.
        reader.read_body(1).await.unwrap();
        let started = tokio::time::Instant::now();
        let late = read_patiently::<DeltaFrame>(&mut reader, &mut patience).await;
        assert!(matches!(late, Err(Error::Idle(_))), "{late:?}");
        assert!(started.elapsed() < 10 * idle);
        // No signature at all: the reader's limits from the start.
        let late = read_patiently::<DeltaFrame>(&mut reader, &mut Patience::default()).await;
        assert!(matches!(late, Err(Error::Idle(_))), "{late:?}");
    }

    /// A build's hash made on a thread of its own (a large one) is the
    /// file's, as one made inline (a small one) is: from a held prefix,
    /// through copied pieces and a literal run, settled before it is read.
    #[test]
    fn a_hash_beside_the_build_is_the_files() {
        let data: Vec<u8> = (0..3 * PIECE + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        for to_build in [0, HASH_BESIDE] {
            let mut held = blake3::Hasher::new();
            held.update(&data[..1000]);
            let mut hashing = Hashing::new(held, to_build);
            assert_eq!(matches!(hashing, Hashing::Beside { .. }), to_build >= HASH_BESIDE);
            hashing.update_from(&data[1000..1777]);
            let mut at = 1777;
            while at < data.len() {
                let n = (data.len() - at).min(PIECE);
                let mut piece = hashing.buffer(n);
                piece.copy_from_slice(&data[at..at + n]);
                hashing.update(piece);
                at += n;
            }
            hashing.settle();
            assert!(!matches!(hashing, Hashing::Beside { .. }));
            assert_eq!(hashing.finalize(), blake3::hash(&data), "{to_build}");
        }
    }
}
