//! Reads of one local file shared by the copies that send it at the same
//! time: a fan-out `put` to many hosts reads each chunk of a file once
//! for the whole window, not once per host.
//!
//! Each file being sent by several copies at once has a ring of recent
//! chunks ([`CHUNK`] bytes each, at most [`RING`] bytes per file, at most
//! [`SharedReads::new`]'s budget in all). The copy that needs a chunk
//! first reads it (`pread` on its own descriptor of the same file) and
//! puts it in the ring; the others take it from there. Before the oldest
//! chunk leaves a full ring, the leader waits for the copies still
//! reading it: so copies that move at about the same speed stay within
//! one ring of each other and the file is read once, whatever the page
//! cache holds, while a copy that is slower (or stuck) is let go once the
//! waits for it add up to [`PATIENCE`], and reads on its own. A copy that starts far from the ring (a
//! resume) reads on its own too.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// The size of a chunk.
pub const CHUNK: usize = 1 << 20;

/// The most one file's ring holds.
pub const RING: usize = 64 * CHUNK;

/// How long the leader waits for a copy still reading the oldest chunk
/// before it lets that copy go on alone.
pub const PATIENCE: Duration = Duration::from_secs(2);

/// Bodies smaller than this are not shared (each copy reads them; they
/// are gone in one or two reads).
pub const SHARE_MIN: u64 = 4 * CHUNK as u64;

/// The files being read, shared by every copy that holds this registry.
#[derive(Debug)]
pub struct SharedReads {
    files: Mutex<HashMap<FileId, Weak<SharedFile>>>,
    /// Bytes held in all rings, and the most they may hold.
    held: Arc<AtomicUsize>,
    budget: usize,
    /// Chunks read from files, by all readers.
    reads: Arc<AtomicU64>,
    /// Files cut and hashed for deltas, by version and layout: each
    /// once, whichever copy asks first, the others waiting for it.
    chunked: Mutex<HashMap<(FileId, crate::delta::Layout), Arc<OnceChunked>>>,
    /// Files cut and hashed for deltas so far.
    cut: AtomicU64,
}

/// A file's cuts and hash, made once.
type OnceChunked = tokio::sync::OnceCell<Chunked>;

/// A file cut and hashed: its signature and whole-file hash.
pub type Chunked = (Arc<crate::delta::Signature>, blake3::Hash);

/// What cuts and hashes a file (`session::delta::index`), given by the
/// caller: this module stays below the delta exchange.
pub type Cut =
    fn(&std::fs::File, u64, crate::delta::Layout) -> std::io::Result<(crate::delta::Signature, blake3::Hash)>;

/// A file as the kernel knows it, and the version of it (a file changed
/// in between is another file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

impl SharedReads {
    /// A registry holding at most `budget` bytes of chunks in all.
    pub fn new(budget: usize) -> Arc<SharedReads> {
        Arc::new(SharedReads {
            files: Mutex::default(),
            held: Arc::default(),
            budget,
            reads: Arc::default(),
            chunked: Mutex::default(),
            cut: AtomicU64::new(0),
        })
    }

    /// `file` (`size` bytes) cut as `layout` and hashed for a delta
    /// (by `cutter`): once for every copy of this version of
    /// it, whichever asks first, on a blocking thread (a fan-out sends one
    /// file to many hosts, each with its own older version, and so its
    /// own signature, but the new file's cuts are the same for all).
    /// Kept while the registry lives (one copy job).
    pub(crate) async fn chunks(
        &self,
        file: std::fs::File,
        size: u64,
        layout: crate::delta::Layout,
        cutter: Cut,
    ) -> std::io::Result<(std::fs::File, Chunked)> {
        let id = FileId::of(&file.metadata()?);
        if id.size != size {
            // Not the length this copy was planned with (the file is
            // changing): cut for this copy alone, never shared.
            return tokio::task::spawn_blocking(move || {
                let (sig, hash) = cutter(&file, size, layout)?;
                Ok((file, (Arc::new(sig), hash)))
            })
            .await
            .map_err(std::io::Error::other)?;
        }
        let cell = self.chunked.lock().expect("chunked poisoned").entry((id, layout)).or_default().clone();
        let file = Arc::new(file);
        let reading = file.clone();
        let cut = &self.cut;
        let done = cell
            .get_or_try_init(|| async move {
                cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cut = tokio::task::spawn_blocking(move || cutter(&reading, size, layout)).await;
                let (sig, hash) = cut.map_err(std::io::Error::other)??;
                Ok::<_, std::io::Error>((Arc::new(sig), hash))
            })
            .await
            .cloned()?;
        // The one cutting it has let go of it by now, or never took it.
        let file = match Arc::try_unwrap(file) {
            Ok(file) => file,
            Err(shared) => shared.try_clone()?,
        };
        Ok((file, done))
    }

    /// Files cut and hashed for deltas so far: once each, however many
    /// copies sent it.
    pub fn files_cut(&self) -> u64 {
        self.cut.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Joins the readers of the file `meta` describes, from `start`.
    pub(crate) fn join(&self, meta: &std::fs::Metadata, start: u64) -> SharedReader {
        let id = FileId::of(meta);
        let mut files = self.files.lock().expect("shared reads");
        files.retain(|_, f| f.strong_count() > 0);
        let file = match files.get(&id).and_then(Weak::upgrade) {
            Some(file) => file,
            None => {
                let file = Arc::new(SharedFile {
                    ring: Mutex::default(),
                    changed: Notify::new(),
                    held: self.held.clone(),
                    budget: self.budget,
                    reads: self.reads.clone(),
                });
                files.insert(id, Arc::downgrade(&file));
                file
            }
        };
        drop(files);
        let id = {
            let mut ring = file.ring.lock().expect("ring");
            ring.next_id += 1;
            let id = ring.next_id;
            ring.readers.insert(id, Place { at: start, alone: false, started: false, held_back: Duration::ZERO });
            id
        };
        SharedReader { file, id }
    }

    /// Bytes in all rings now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Chunks (of up to 1 MiB) read from files so far, by every copy:
    /// with copies in step, each chunk of each file once.
    pub fn chunks_read(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// One file's ring and its readers.
#[derive(Debug)]
struct SharedFile {
    ring: Mutex<Ring>,
    /// A chunk came or went, or a reader moved or left.
    changed: Notify,
    held: Arc<AtomicUsize>,
    budget: usize,
    reads: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The index of `chunks[0]`.
    first: u64,
    chunks: VecDeque<Bytes>,
    /// A reader is reading the chunk after the last.
    reading: bool,
    readers: HashMap<u64, Place>,
    next_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    /// The next byte it wants.
    at: u64,
    /// Let go: the ring no longer waits for it.
    alone: bool,
    /// It has asked for a chunk (a copy that opened the file and has not
    /// started sending it yet holds nothing back).
    started: bool,
    /// How long leaders have waited for it, in all.
    held_back: Duration,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.chunks.len() as u64
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Whether a reader the ring waits for still wants the oldest chunk.
    fn oldest_wanted(&self) -> bool {
        let end_of_oldest = (self.first + 1) * CHUNK as u64;
        self.readers.values().any(|p| p.holds(self.first, end_of_oldest))
    }

    /// The readers the ring waits for before dropping its oldest chunk.
    fn holders(&self) -> Vec<u64> {
        let end_of_oldest = (self.first + 1) * CHUNK as u64;
        self.readers.iter().filter(|(_, p)| p.holds(self.first, end_of_oldest)).map(|(id, _)| *id).collect()
    }

    /// Counts `waited` against the readers `ids` the ring waited for,
    /// letting go of those that have held it back for [`PATIENCE`] in
    /// all: a copy that is slow but keeps moving does not pace the
    /// others for ever.
    fn held_back(&mut self, ids: &[u64], waited: Duration) {
        for id in ids {
            if let Some(p) = self.readers.get_mut(id) {
                p.held_back += waited;
                if p.held_back >= PATIENCE {
                    p.alone = true;
                }
            }
        }
    }

    /// Lets go of the readers still on the oldest chunk.
    fn let_go(&mut self) {
        let end_of_oldest = (self.first + 1) * CHUNK as u64;
        for p in self.readers.values_mut() {
            if p.at < end_of_oldest {
                p.alone = true;
            }
        }
    }
}

impl Place {
    /// Whether the ring waits for this reader before dropping the chunk
    /// `first` (whose bytes end at `end`).
    fn holds(&self, first: u64, end: u64) -> bool {
        self.started && !self.alone && self.at < end && self.at >= first * CHUNK as u64
    }
}

/// One copy's place among a file's readers; leaves them when dropped.
#[derive(Debug)]
pub(crate) struct SharedReader {
    file: Arc<SharedFile>,
    id: u64,
}

/// What the ring says a reader should do for a chunk.
enum Step {
    Take(Bytes),
    /// Read it and put it in the ring.
    Lead,
    /// Read it alone, keeping it out of the ring.
    Alone,
    /// Another reader is reading it.
    Wait,
    /// The ring is full and a reader is still on its oldest chunk.
    WaitForOldest,
}

impl SharedReader {
    /// The chunk holding byte `at` of the file, and the offset of its
    /// first byte, from the ring or read from `file` (the same file, the
    /// caller's own descriptor). Shorter than [`CHUNK`] only at the end
    /// of the file.
    ///
    /// # Errors
    ///
    /// Reading the file.
    pub(crate) async fn chunk(&self, file: &Arc<File>, at: u64) -> io::Result<(u64, Bytes)> {
        let index = at / CHUNK as u64;
        let from = index * CHUNK as u64;
        let mut waited = Duration::ZERO;
        loop {
            let notified = self.file.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = self.step(index, at, waited >= PATIENCE);
            match step {
                Step::Take(bytes) => return Ok((from, bytes)),
                Step::Alone => {
                    self.file.reads.fetch_add(1, Ordering::Relaxed);
                    return Ok((from, read_chunk(file, from).await?));
                }
                Step::Lead => {
                    // Whatever becomes of this future, the ring is not
                    // left waiting for a read that no one makes.
                    let mut reading = Reading(Some(&self.file));
                    self.file.reads.fetch_add(1, Ordering::Relaxed);
                    let read = read_chunk(file, from).await;
                    reading.0 = None;
                    let mut ring = self.file.ring.lock().expect("ring");
                    ring.reading = false;
                    if let Ok(bytes) = &read {
                        if ring.chunks.is_empty() {
                            ring.first = index;
                        }
                        if ring.end() == index && !bytes.is_empty() {
                            self.file.held.fetch_add(bytes.len(), Ordering::Relaxed);
                            ring.chunks.push_back(bytes.clone());
                        }
                    }
                    drop(ring);
                    self.file.changed.notify_waiters();
                    return Ok((from, read?));
                }
                Step::Wait | Step::WaitForOldest => {
                    let holders = match step {
                        Step::WaitForOldest => self.file.ring.lock().expect("ring").holders(),
                        _ => Vec::new(),
                    };
                    let started = tokio::time::Instant::now();
                    let left = PATIENCE.saturating_sub(waited).max(Duration::from_millis(1));
                    let _ = tokio::time::timeout(left, notified).await;
                    let this_time = started.elapsed();
                    waited += this_time;
                    if !holders.is_empty() {
                        self.file.ring.lock().expect("ring").held_back(&holders, this_time);
                    }
                }
            }
        }
    }

    /// Decides how to get chunk `index`; a reader that moved on to
    /// another chunk wakes a leader that may be waiting for it.
    fn step(&self, index: u64, at: u64, impatient: bool) -> Step {
        let (step, moved) = self.decide(index, at, impatient);
        if moved {
            self.file.changed.notify_waiters();
        }
        step
    }

    /// [`step`](Self::step) under the lock, and whether this reader moved
    /// to another chunk.
    fn decide(&self, index: u64, at: u64, impatient: bool) -> (Step, bool) {
        let mut ring = self.file.ring.lock().expect("ring");
        let mut moved = false;
        if let Some(me) = ring.readers.get_mut(&self.id) {
            moved = me.at / CHUNK as u64 != index || !me.started;
            me.at = at;
            me.started = true;
        }
        (Self::choose(&mut ring, &self.file, index, impatient), moved)
    }

    fn choose(ring: &mut Ring, file: &SharedFile, index: u64, impatient: bool) -> Step {
        if index >= ring.first && index < ring.end() {
            return Step::Take(ring.chunks[(index - ring.first) as usize].clone());
        }
        let over_budget = file.held.load(Ordering::Relaxed) + CHUNK > file.budget;
        if ring.chunks.is_empty() && !ring.reading {
            if over_budget {
                return Step::Alone;
            }
            ring.reading = true;
            return Step::Lead;
        }
        if index != ring.end() {
            // Behind the ring (let go, or late), or far ahead of it.
            return Step::Alone;
        }
        if ring.reading {
            // Another reader is reading it; not for ever.
            return if impatient { Step::Alone } else { Step::Wait };
        }
        // Room for the next chunk: make it, waiting a while for readers
        // still on the oldest; over the budget, read alone.
        let full = ring.bytes() + CHUNK > RING;
        if full || over_budget {
            if ring.oldest_wanted() && !impatient {
                return Step::WaitForOldest;
            }
            if impatient {
                ring.let_go();
            }
            if ring.chunks.is_empty() {
                return Step::Alone;
            }
            let oldest = ring.chunks.pop_front().expect("not empty");
            file.held.fetch_sub(oldest.len(), Ordering::Relaxed);
            ring.first += 1;
            if file.held.load(Ordering::Relaxed) + CHUNK > file.budget {
                return Step::Alone;
            }
        }
        ring.reading = true;
        Step::Lead
    }
}

/// Clears a file's `reading` mark if its leader's read was dropped.
struct Reading<'a>(Option<&'a SharedFile>);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            file.ring.lock().expect("ring").reading = false;
            file.changed.notify_waiters();
        }
    }
}

impl Drop for SharedReader {
    fn drop(&mut self) {
        let mut ring = self.file.ring.lock().expect("ring");
        ring.readers.remove(&self.id);
        if ring.readers.is_empty() {
            let bytes = ring.bytes();
            ring.chunks.clear();
            self.file.held.fetch_sub(bytes, Ordering::Relaxed);
        }
        drop(ring);
        self.file.changed.notify_waiters();
    }
}

/// Reads the chunk at `from` (shorter at the end of the file), on a
/// blocking thread.
async fn read_chunk(file: &Arc<File>, from: u64) -> io::Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = BytesMut::zeroed(CHUNK);
        let mut got = 0;
        while got < CHUNK {
            match file.read_at(&mut buf[got..], from + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf.freeze())
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    async fn read_all(reads: &SharedReads, path: &std::path::Path, delay: Duration) -> Vec<u8> {
        let file = Arc::new(File::open(path).unwrap());
        let meta = file.metadata().unwrap();
        let reader = reads.join(&meta, 0);
        let mut out = Vec::new();
        while (out.len() as u64) < meta.len() {
            let (from, bytes) = reader.chunk(&file, out.len() as u64).await.unwrap();
            out.extend_from_slice(&bytes[(out.len() as u64 - from) as usize..]);
            tokio::time::sleep(delay).await;
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_in_step_read_each_chunk_once() {
        // Larger than a ring, so the ring must wait for the slower ones.
        let (f, data) = file(3 * RING / 2 + 12_345);
        let reads = SharedReads::new(1 << 30);
        // Seven at about a millisecond a chunk (the timer's grain), one
        // as fast as it can: the ring holds the fast one back.
        let all: Vec<_> = (0..8)
            .map(|i| {
                let (reads, path) = (reads.clone(), f.path().to_owned());
                tokio::spawn(async move { read_all(&reads, &path, Duration::from_micros(50 * i)).await })
            })
            .collect();
        for r in all {
            assert!(r.await.unwrap() == data, "every reader gets the file");
        }
        let chunks = data.len().div_ceil(CHUNK) as u64;
        assert_eq!(reads.chunks_read(), chunks, "each chunk read once for all eight");
        assert_eq!(reads.held(), 0, "nothing held once they are done");
    }

    /// A full ring waits for a reader still on its oldest chunk only while
    /// that reader is there (a move on wakes the waiting leader), never for
    /// the whole patience, and nothing is read twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_waits_only_as_long_as_the_slower_reader_takes() {
        let (f, data) = file(RING + 8 * CHUNK);
        let reads = SharedReads::new(1 << 30);
        let file = Arc::new(File::open(f.path()).unwrap());
        let (first_tx, first) = tokio::sync::oneshot::channel();
        let slow = {
            let (reads, file) = (reads.clone(), file.clone());
            tokio::spawn(async move {
                let reader = reads.join(&file.metadata().unwrap(), 0);
                let mut out = Vec::new();
                let mut first_tx = Some(first_tx);
                while out.len() < RING + 8 * CHUNK {
                    let (from, bytes) = reader.chunk(&file, out.len() as u64).await.unwrap();
                    out.extend_from_slice(&bytes[(out.len() as u64 - from) as usize..]);
                    if out.len() == CHUNK {
                        // On the oldest chunk while the other fills the ring.
                        if let Some(tx) = first_tx.take() {
                            let _ = tx.send(());
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
                out
            })
        };
        // The fast one starts once the slow one holds the first chunk.
        first.await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(read_all(&reads, f.path(), Duration::ZERO).await == data);
        let took = started.elapsed();
        assert!(slow.await.unwrap() == data);
        assert!(took < PATIENCE / 2, "the fast reader took {took:?}");
        assert_eq!(reads.chunks_read(), (RING / CHUNK + 8) as u64, "each chunk once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_reader_is_let_go_and_the_others_go_on() {
        let (f, data) = file(RING + 3 * CHUNK);
        let reads = SharedReads::new(1 << 30);
        let file = Arc::new(File::open(f.path()).unwrap());
        // Reads its first chunk, then never another.
        let stuck = reads.join(&file.metadata().unwrap(), 0);
        stuck.chunk(&file, 0).await.unwrap();
        let started = tokio::time::Instant::now();
        let got = read_all(&reads, f.path(), Duration::ZERO).await;
        assert!(got == data);
        let waited = started.elapsed();
        assert!(waited >= PATIENCE && waited < PATIENCE * 4, "{waited:?}");
    }

    /// A copy that opened the file and has not started sending it holds
    /// nothing back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_not_started_holds_nothing_back() {
        let (f, data) = file(RING + 3 * CHUNK);
        let reads = SharedReads::new(1 << 30);
        let file = Arc::new(File::open(f.path()).unwrap());
        let _waiting = reads.join(&file.metadata().unwrap(), 0);
        let started = tokio::time::Instant::now();
        assert!(read_all(&reads, f.path(), Duration::ZERO).await == data);
        assert!(started.elapsed() < PATIENCE / 2, "{:?}", started.elapsed());
    }

    /// A reader that keeps moving but holds the others back is let go once
    /// it has held them back for the patience in all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_moving_reader_is_let_go_after_the_patience_in_all() {
        let (f, data) = file(RING + 40 * CHUNK);
        let reads = SharedReads::new(1 << 30);
        let file = Arc::new(File::open(f.path()).unwrap());
        let slow = {
            let (reads, file) = (reads.clone(), file.clone());
            tokio::spawn(async move {
                let reader = reads.join(&file.metadata().unwrap(), 0);
                // 100 ms a chunk: the other would wait 4 s in all.
                for i in 0..40u64 {
                    reader.chunk(&file, i * CHUNK as u64).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = tokio::time::Instant::now();
        assert!(read_all(&reads, f.path(), Duration::ZERO).await == data);
        let took = started.elapsed();
        assert!(took < PATIENCE + Duration::from_millis(1500), "held back for {took:?}");
        slow.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_budget_bounds_what_is_held() {
        let (f, data) = file(8 * CHUNK);
        let reads = SharedReads::new(2 * CHUNK);
        let (a, b) = (reads.clone(), reads.clone());
        let (pa, pb) = (f.path().to_owned(), f.path().to_owned());
        let one = tokio::spawn(async move { read_all(&a, &pa, Duration::ZERO).await });
        let two = tokio::spawn(async move { read_all(&b, &pb, Duration::ZERO).await });
        assert!(one.await.unwrap() == data && two.await.unwrap() == data);
        assert_eq!(reads.held(), 0);
    }
}
