//! What the targets share: an in-memory `AsyncRead` whose read sizes (and
//! the odd pending or failing read) the input chooses, an executor for the
//! futures it drives (nothing here waits on time or a socket), a cursor
//! over the input, and an allocator that records the largest allocation.
#![allow(dead_code)] // each target uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

/// The global allocator of every target: `System`, recording the largest
/// single allocation and the peak of live bytes since the last [`reset`].
pub struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize, live: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        grew(new_size, live);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Starts measuring: the largest allocation and the peak are counted from
/// here, the peak above what is live now.
pub fn reset() -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The largest single allocation since [`reset`], and the peak of live
/// bytes above `base` (what [`reset`] returned).
pub fn measured(base: usize) -> (usize, usize) {
    (LARGEST.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Runs a future to completion. The readers here never wait on anything
/// (a pending read has already woken its task), so this polls in a loop,
/// bounded so that a future that never ends is a crash, not a hang.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a future made no progress in 1,000,000 polls");
}

/// Bytes delivered the way a socket might: each read returns at most the
/// next of `sizes` (cycled; none means as much as asked). A size of 0 is a
/// read that is pending once (its task woken at once) before it goes on;
/// 0xFE is a read that fails (`ConnectionReset`); 0xFF is unlimited.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
    was_pending: bool,
    /// Bytes handed out so far.
    pub consumed: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], sizes: &'a [u8]) -> Self {
        Chunked { data, sizes, turn: 0, was_pending: false, consumed: 0 }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = match this.sizes.get(this.turn % this.sizes.len().max(1)) {
            None | Some(0xFF) => usize::MAX,
            Some(0) if !this.was_pending => {
                this.was_pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Some(0) => usize::MAX,
            Some(0xFE) => {
                this.turn += 1;
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            Some(&n) => n.into(),
        };
        this.turn += 1;
        this.was_pending = false;
        let n = size.min(buf.remaining()).min(this.data.len() - this.consumed);
        buf.put_slice(&this.data[this.consumed..this.consumed + n]);
        this.consumed += n;
        Poll::Ready(Ok(()))
    }
}

/// A cursor over the input: fields first, the stream last.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next byte, 0 once the input is used up.
    pub fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }

    /// A field of at most `max` bytes, its length in the byte before it.
    pub fn field(&mut self, max: usize) -> &'a [u8] {
        let len = (self.byte() as usize % (max + 1)).min(self.0.len());
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        field
    }

    /// Whatever is left.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}
