//! The sending end of a file transfer.

use std::fs::File;
use std::io;

use super::body::{send_body, send_shared, SendError};
use super::shared::{SharedReader, SharedReads, SHARE_MIN};
use crate::services::files::hash_prefix;
use crate::transport::BoxWrite;
use crate::wire::FrameWriter;

/// What a [`Sender`] does with an offer of held bytes that comes without
/// their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unproven {
    /// Trust the offset (a `get` with an offset and no `prefix_blake3`:
    /// the client says it checked).
    Trust,
    /// Start from 0.
    StartOver,
}

/// The sending end of one file: where the body starts, and the hash of
/// what precedes it.
#[derive(Debug)]
pub struct Sender {
    /// `None` once a small body read whole let it go
    /// ([`release_file`](Self::release_file)).
    file: Option<File>,
    size: u64,
    start: u64,
    hasher: Option<blake3::Hasher>,
    /// A small body, read (and hashed) already by [`resume`](Self::resume).
    body: Option<Vec<u8>>,
    /// Its chunks shared with other copies sending the same file.
    shared: Option<SharedReader>,
    /// Holes of the file the body leaves out ([`find_holes`](Self::find_holes)).
    holes: super::sparse::Holes,
}

/// Bodies up to this size are read whole by [`Sender::resume`] on its
/// blocking thread and written from memory: no threads of their own.
pub const SMALL_BODY: u64 = 64 * 1024;

impl Sender {
    /// Decides where to start sending `file` (of `size` bytes) given the
    /// receiver's offer: it holds `offset` bytes whose BLAKE3 is `prefix`.
    /// The body starts there if those bytes are the start of this file,
    /// else at 0. Blocking (it hashes the prefix).
    ///
    /// # Errors
    ///
    /// Reading the file.
    pub fn resume(
        mut file: File,
        size: u64,
        offset: u64,
        prefix: Option<&str>,
        unproven: Unproven,
    ) -> io::Result<Sender> {
        let fresh = |file| Sender {
            file: Some(file),
            size,
            start: 0,
            hasher: Some(blake3::Hasher::new()),
            body: None,
            shared: None,
            holes: Vec::new(),
        };
        let sender = if offset == 0 || offset > size || (prefix.is_none() && unproven == Unproven::StartOver) {
            fresh(file)
        } else {
            let hasher = hash_prefix(&mut file, offset)?;
            match prefix {
                Some(p) if p != hasher.clone().finalize().to_hex().as_str() => fresh(file),
                _ => Sender {
                    file: Some(file),
                    size,
                    start: offset,
                    hasher: Some(hasher),
                    body: None,
                    shared: None,
                    holes: Vec::new(),
                },
            }
        };
        sender.read_small()
    }

    /// A small body read now, on this blocking thread, and hashed.
    fn read_small(mut self) -> io::Result<Sender> {
        let len = self.size - self.start;
        if len > SMALL_BODY {
            return Ok(self);
        }
        use std::os::unix::fs::FileExt;
        let mut body = vec![0; len as usize];
        // A file that shrank since its size was taken: an error now,
        // before any frame promises its length.
        self.file.as_ref().expect("held until released").read_exact_at(&mut body, self.start)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&body);
        }
        self.body = Some(body);
        Ok(self)
    }

    /// Whether the body was read whole already (a small one).
    pub fn read_whole(&self) -> bool {
        self.body.is_some()
    }

    /// The file sent from, until it is released.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Closes the file if its body was read whole already (a small one):
    /// what sends it is in memory. Returns whether it did. A sender of
    /// many files holds their bodies ahead, never their descriptors.
    pub fn release_file(&mut self) -> bool {
        if self.body.is_some() {
            self.file = None;
        }
        self.file.is_none()
    }

    /// Where the body starts.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The body's length: what the file holds from [`start`](Self::start),
    /// its holes left out.
    pub fn body_len(&self) -> u64 {
        self.size - self.start - self.holes.iter().map(|h| h[1]).sum::<u64>()
    }

    /// Finds the holes of the file past where the body starts, for a
    /// receiver that takes a body without them (a body read whole, a
    /// small one, has none). Blocking.
    ///
    /// # Errors
    ///
    /// Those of `lseek(2)`.
    pub fn find_holes(&mut self) -> io::Result<()> {
        if let (None, Some(file)) = (&self.body, &self.file) {
            self.holes = super::sparse::find_holes(file, self.start, self.size)?;
            if !self.holes.is_empty() {
                self.shared = None;
            }
        }
        Ok(())
    }

    /// The holes the body leaves out, if any: what its head lists.
    pub fn holes(&self) -> Option<Vec<[u64; 2]>> {
        (!self.holes.is_empty()).then(|| self.holes.clone())
    }

    /// Shares the reads of this file with the other copies sending it
    /// through `reads` (a body under [`SHARE_MIN`] is not shared). The
    /// body then goes from memory rather than with `sendfile(2)`.
    ///
    /// # Errors
    ///
    /// The file's metadata cannot be read.
    pub(crate) fn share(&mut self, reads: &SharedReads) -> io::Result<()> {
        if let (None, Some(file), true) = (&self.body, &self.file, self.holes.is_empty()) {
            if self.body_len() < SHARE_MIN {
                return Ok(());
            }
            let meta = file.metadata()?;
            self.shared = Some(reads.join(&meta, self.start));
        }
        Ok(())
    }

    /// The whole-file hash is known already (a cache has it): send
    /// without hashing.
    pub fn hash_known(&mut self) {
        self.hasher = None;
    }

    /// Sends the body of the frame `writer` has started (a small body may
    /// stay in the writer's buffer until the next frame is sent or the
    /// writer flushed), and returns the whole-file hash (`None` after [`hash_known`](Self::hash_known)).
    /// `progress` gets the body bytes sent so far, now and then.
    ///
    /// # Errors
    ///
    /// As [`send_body`]: the frame is then incomplete and the connection
    /// must close.
    pub async fn send(
        self,
        writer: &mut FrameWriter<BoxWrite>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Option<blake3::Hash>, SendError> {
        if let Some(body) = self.body {
            // Left in the writer's buffer: the checksum that follows goes
            // out in the same write (both callers send it next).
            writer.write_body(&body).await.map_err(SendError::Wire)?;
            progress(body.len() as u64);
            return Ok(self.hasher.map(|h| h.finalize()));
        }
        if !self.holes.is_empty() {
            let file = self.file.expect("a body not in memory keeps its file");
            let range = (self.start, self.size);
            return super::sparse::send_sparse(writer, file, range, &self.holes, self.hasher, progress).await;
        }
        if let Some(shared) = self.shared {
            let file = self.file.expect("a body not in memory keeps its file");
            return send_shared(writer, file, self.start, self.hasher, shared, progress).await;
        }
        let file = self.file.expect("a body not in memory keeps its file");
        send_body(writer, file, self.start, self.hasher, progress).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    fn hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    #[test]
    fn an_offer_whose_prefix_matches_is_resumed() {
        let data = b"0123456789";
        let s = Sender::resume(file(data), 10, 4, Some(&hex(b"0123")), Unproven::StartOver).unwrap();
        assert_eq!((s.start(), s.body_len()), (4, 6));
        // A small body is read and hashed at once: the hasher holds the
        // prefix and the rest, so it gives the whole file's hash.
        assert_eq!(s.body.as_deref(), Some(&b"456789"[..]));
        assert_eq!(s.hasher.clone().unwrap().finalize(), blake3::hash(data));
    }

    #[test]
    fn a_large_body_is_left_to_send_and_a_shrunk_file_refused_at_once() {
        let data = vec![7u8; (SMALL_BODY + 1) as usize];
        let s = Sender::resume(file(&data), data.len() as u64, 0, None, Unproven::Trust).unwrap();
        assert!(s.body.is_none(), "streamed by send_body, not read whole");
        // The size taken is more than the file holds: refused before any
        // frame would promise it.
        let err = Sender::resume(file(b"short"), 10, 0, None, Unproven::Trust).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn offers_that_do_not_fit_start_from_zero() {
        let data = b"0123456789";
        let cases = [
            (4, Some(hex(b"abcd")), Unproven::Trust), // another file's start
            (11, Some(hex(b"x")), Unproven::Trust),   // longer than the file
            (4, None, Unproven::StartOver),           // unproven, not trusted
            (0, None, Unproven::Trust),               // nothing held
        ];
        for (offset, prefix, unproven) in cases {
            let s = Sender::resume(file(data), 10, offset, prefix.as_deref(), unproven).unwrap();
            assert_eq!((s.start(), s.body_len()), (0, 10), "{offset} {prefix:?} {unproven:?}");
        }
        let trusted = Sender::resume(file(data), 10, 4, None, Unproven::Trust).unwrap();
        assert_eq!(trusted.start(), 4);
        let mut known = Sender::resume(file(data), 10, 0, None, Unproven::Trust).unwrap();
        known.hash_known();
        assert!(known.hasher.is_none());
    }
}
