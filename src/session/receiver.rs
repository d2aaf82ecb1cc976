//! The receiving end of a file transfer.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use super::body::{receive_body, BodySource};
use crate::services::files::{at, check_room, hash_prefix};
use crate::services::root::{Partial, PartialName};
use crate::wire::Error;

/// The receiving end of one file: its partial file, what that holds, and
/// the hash of what it holds. The steps, in order: [`open`](Self::open)
/// (or [`fresh`](Self::fresh)), [`offer`](Self::offer) what is held,
/// [`agree`](Self::agree) where the sender starts, [`receive`](Self::receive)
/// the body, then [`Received::verify`] and [`Received::commit`] (or
/// [`Received::discard`]). The blocking steps (`open`, `fresh`, `commit`)
/// run on a blocking thread.
#[derive(Debug)]
pub struct Receiver {
    partial: Partial,
    held: u64,
    hasher: blake3::Hasher,
    /// Holes the body leaves out, and the file's size
    /// ([`with_holes`](Self::with_holes)).
    holes: Option<(super::sparse::Holes, u64)>,
}

/// Why a body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The connection failed: the partial file is kept for a resume.
    #[error("{0}")]
    Wire(Error, Kept),
    /// Writing failed; the rest of the body is left unread. On a full
    /// disk the partial file is removed (it would only keep the disk
    /// full), otherwise kept.
    #[error("{0}")]
    Write(io::Error, Option<Kept>),
}

impl ReceiveError {
    /// The error (the connection's, or the write's) and the partial file
    /// if it was kept.
    pub fn into_parts(self) -> (Result<Error, io::Error>, Option<Kept>) {
        match self {
            ReceiveError::Wire(e, kept) => (Ok(e), Some(kept)),
            ReceiveError::Write(e, kept) => (Err(e), kept),
        }
    }
}

/// A partial file kept after a failed transfer, for a resume. Dropping it
/// keeps the file; [`discard`](Self::discard) removes it (for formats with
/// no resume).
#[derive(Debug)]
pub struct Kept(PartialName);

impl Kept {
    /// Removes the partial file.
    pub fn discard(self) {
        self.0.discard();
    }
}

impl Receiver {
    /// The partial file for `name` in `dir`, resuming what an earlier
    /// transfer left there (see [`Partial::open`]), hashed.
    ///
    /// # Errors
    ///
    /// Opening or reading the partial file.
    pub fn open(dir: OwnedFd, name: &OsStr) -> io::Result<Receiver> {
        let mut partial = Partial::open(dir, name)?;
        let held = partial.opened_len();
        let hasher = hash_prefix(partial.file_mut(), held)?;
        Ok(Receiver { partial, held, hasher, holes: None })
    }

    /// As [`open`](Self::open), but dropping what is held: for formats with
    /// no resume (the legacy upload).
    ///
    /// # Errors
    ///
    /// Opening or truncating the partial file.
    pub fn fresh(dir: OwnedFd, name: &OsStr) -> io::Result<Receiver> {
        let partial = Partial::open(dir, name)?;
        if partial.opened_len() != 0 {
            partial.file().set_len(0)?;
        }
        Ok(Receiver { partial, held: 0, hasher: blake3::Hasher::new(), holes: None })
    }

    /// A receiver writing a file with no name in `dir` (`O_TMPFILE`), for
    /// a file built only to be read back (a bucket's delta): nothing is
    /// ever left behind, whatever stops it. `None` where the file system
    /// has no unnamed files.
    ///
    /// # Errors
    ///
    /// Those of `open(2)`.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn unnamed(dir: OwnedFd) -> io::Result<Option<Receiver>> {
        let partial = Partial::unnamed(dir, OsStr::new("built"), 0o600)?;
        Ok(partial.map(|partial| Receiver { partial, held: 0, hasher: blake3::Hasher::new(), holes: None }))
    }

    /// Bytes held from an earlier transfer.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// What to offer the sender: the bytes held and, if any, their BLAKE3
    /// (hex), for it to check they are the start of its file.
    pub fn offer(&self) -> (u64, Option<String>) {
        let prefix = (self.held > 0).then(|| self.hasher.clone().finalize().to_hex().to_string());
        (self.held, prefix)
    }

    /// Drops what is held if it is longer than a file of `size` bytes (it
    /// cannot be the start of it).
    ///
    /// # Errors
    ///
    /// Truncating the partial file.
    pub fn fit(&mut self, size: u64) -> io::Result<()> {
        if self.held > size {
            self.start_over()?;
        }
        Ok(())
    }

    /// Checks the disk has room for the bytes `from..size` (so that a full
    /// disk is refused before the body comes).
    ///
    /// # Errors
    ///
    /// `StorageFull` if it has not; errors of `fstatvfs`.
    pub fn check_room(&self, from: u64, size: u64) -> io::Result<()> {
        check_room(self.partial.file(), from, size)
    }

    /// Takes the sender's answer to the offer: the body starts at `from`,
    /// which is the offset held (resume) or 0 (start over: what is held is
    /// dropped). Returns `false`, leaving everything as it was, for any
    /// other offset.
    ///
    /// # Errors
    ///
    /// Truncating the partial file.
    pub fn agree(&mut self, from: u64) -> io::Result<bool> {
        if from == self.held {
            Ok(true)
        } else if from == 0 {
            self.start_over()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn start_over(&mut self) -> io::Result<()> {
        self.partial.file().set_len(0)?;
        self.held = 0;
        self.hasher = blake3::Hasher::new();
        Ok(())
    }

    /// Removes the partial file.
    pub fn discard(self) {
        self.partial.discard();
    }

    /// Its partial file, the bytes held and their hash: for a body built
    /// otherwise than received (a delta's patch).
    pub(super) fn into_parts(self) -> (Partial, u64, blake3::Hasher) {
        (self.partial, self.held, self.hasher)
    }

    /// The body (of the file of `size` bytes, starting where agreed)
    /// leaves out these holes, checked ([`super::sparse::check`]): its
    /// data runs are written where they belong, the holes left unwritten.
    /// With `None` or none, the body is the file's bytes as they are.
    ///
    /// # Errors
    ///
    /// Holes out of order, touching, empty or outside the body, or more
    /// than [`super::sparse::MAX_HOLES`].
    pub fn with_holes(&mut self, holes: Option<Vec<[u64; 2]>>, size: u64) -> Result<u64, &'static str> {
        let Some(holes) = holes.filter(|h| !h.is_empty()) else {
            self.holes = None;
            return Ok(0);
        };
        let total = super::sparse::check(&holes, self.held, size)?;
        self.holes = Some((holes, size));
        Ok(total)
    }

    /// Receives the body from `src` after what is held, written and hashed
    /// on a blocking thread while the next bytes arrive. `progress` gets
    /// the body bytes received so far.
    ///
    /// # Errors
    ///
    /// [`ReceiveError`]: the partial file is kept for a resume after a
    /// connection failure, removed after a full disk.
    pub async fn receive<B: BodySource>(
        mut self,
        src: &mut B,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Received, ReceiveError> {
        if let Some((holes, size)) = self.holes.take() {
            return self.receive_sparse(src, (&holes, size), progress).await;
        }
        if src.body_left() <= SMALL_BODY {
            return self.receive_small(src, progress).await;
        }
        let Receiver { partial, held, hasher, .. } = self;
        let (file, name) = partial.take_file();
        let file = match at(file, held) {
            Ok(file) => file,
            Err(e) => return Err(ReceiveError::Write(e, Some(Kept(name)))),
        };
        // A cut connection returns here and leaves the partial file.
        match receive_body(src, file, hasher, progress).await {
            Err(e) => Err(ReceiveError::Wire(e, Kept(name))),
            Ok(Ok((file, hash))) => Ok(Received { partial: name.rejoin(file), hash, pending: None, mtime: None }),
            Ok(Err(e)) if matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => {
                name.discard();
                Err(ReceiveError::Write(e, None))
            }
            Ok(Err(e)) => Err(ReceiveError::Write(e, Some(Kept(name)))),
        }
    }
}

/// Bodies up to this size are read into memory and hashed as they come,
/// and written by the commit: a small file then costs no hand-off to a
/// writing thread of its own (a tree of small files is bound by such
/// per-file costs).
pub const SMALL_BODY: u64 = 64 * 1024;

impl Receiver {
    /// [`receive`](Self::receive) of a body with holes: each data run
    /// written where it belongs, the holes left unwritten and hashed as
    /// zeros, the file given its length at the end.
    async fn receive_sparse<B: BodySource>(
        self,
        src: &mut B,
        (holes, size): (&[[u64; 2]], u64),
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Received, ReceiveError> {
        let Receiver { partial, held, hasher, .. } = self;
        let (file, name) = partial.take_file();
        let writer = super::sparse::SparseWriter::new(file, (held, size), holes, hasher);
        // The hash is the writer's, holes and all; receive_body's own is
        // of the data alone.
        match receive_body(src, writer, blake3::Hasher::new(), progress).await {
            Err(e) => Err(ReceiveError::Wire(e, Kept(name))),
            // A trailing hole is hashed off the async threads.
            Ok(Ok((writer, _))) => match tokio::task::spawn_blocking(move || writer.finish()).await {
                Ok(Ok((file, hash))) => Ok(Received { partial: name.rejoin(file), hash, pending: None, mtime: None }),
                Ok(Err(e)) => Err(ReceiveError::Write(e, Some(Kept(name)))),
                Err(e) => Err(ReceiveError::Write(io::Error::other(e), Some(Kept(name)))),
            },
            Ok(Err(e)) if matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => {
                name.discard();
                Err(ReceiveError::Write(e, None))
            }
            Ok(Err(e)) => Err(ReceiveError::Write(e, Some(Kept(name)))),
        }
    }

    async fn receive_small<B: BodySource>(
        self,
        src: &mut B,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Received, ReceiveError> {
        let Receiver { partial, held, mut hasher, .. } = self;
        let mut body = Vec::with_capacity(src.body_left() as usize);
        while src.body_left() > 0 {
            if let Err(e) = src.read_body_into(&mut body).await {
                // What arrived is kept for a resume, as a large body's is.
                let (file, name) = partial.take_file();
                let written = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(&body, held).map(|()| file)
                })
                .await;
                return match written {
                    Ok(Ok(_)) => Err(ReceiveError::Wire(e, Kept(name))),
                    Ok(Err(w)) => Err(ReceiveError::Write(w, Some(Kept(name)))),
                    Err(j) => Err(ReceiveError::Write(io::Error::other(j), Some(Kept(name)))),
                };
            }
            progress(body.len() as u64);
        }
        hasher.update(&body);
        Ok(Received { partial, hash: hasher.finalize(), pending: Some((held, body)), mtime: None })
    }
}

/// A file received whole into its partial file (or, if small, held in
/// memory for the commit to write), not yet in place.
#[derive(Debug)]
pub struct Received {
    partial: Partial,
    hash: blake3::Hash,
    /// A small body not yet written, and where it goes.
    pending: Option<(u64, Vec<u8>)>,
    /// The modification time to give the file before it goes into place.
    mtime: Option<crate::services::files::Stamp>,
}

impl Received {
    /// A file built in its partial file (a delta), whose bytes hash to
    /// `hash`.
    pub(super) fn built(partial: Partial, hash: blake3::Hash) -> Received {
        Received { partial, hash, pending: None, mtime: None }
    }

    /// The file as built, to be read: `None` for a body still held in
    /// memory (a small one received whole).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn built_file(&self) -> Option<&File> {
        self.pending.is_none().then(|| self.partial.file())
    }

    /// The BLAKE3 of the whole file as received.
    pub fn hash(&self) -> blake3::Hash {
        self.hash
    }

    /// Removes the partial file: nothing to resume (the same file landed
    /// meanwhile).
    pub fn discard(self) {
        self.partial.discard();
    }

    /// Compares the received data's hash with the sender's (hex); on a
    /// mismatch the partial file is removed and the received hash
    /// returned.
    ///
    /// # Errors
    ///
    /// The received hash (hex), when it differs.
    pub fn verify(self, claimed: &str) -> Result<Received, String> {
        if self.hash.to_hex().as_str() == claimed {
            Ok(self)
        } else {
            let got = self.hash.to_hex().to_string();
            self.partial.discard();
            Err(got)
        }
    }

    /// Gives the file this modification time (seconds since the epoch)
    /// when it is committed: set on the partial file after its last write
    /// and before the rename, so that no file is ever under its final
    /// name with another time (a copy killed in between would otherwise
    /// leave a whole file that looks changed).
    pub fn with_mtime(mut self, at: impl Into<crate::services::files::Stamp>) -> Self {
        self.mtime = Some(at.into());
        self
    }

    /// Where the file goes: its directory and final name.
    pub fn at(&self) -> (&std::os::fd::OwnedFd, &std::ffi::OsStr) {
        self.partial.at()
    }

    /// Writes what is held in memory and sets the time: all a commit does
    /// before its sync (a [`Batch`](super::Batch) syncs many at once).
    pub(super) fn write_out(self) -> io::Result<(Partial, blake3::Hash)> {
        if let Some((at, body)) = &self.pending {
            use std::os::unix::fs::FileExt;
            if let Err(e) = self.partial.file().write_all_at(body, *at) {
                // On a full disk the partial file would only keep it full.
                if matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) {
                    self.partial.discard();
                }
                return Err(e);
            }
        }
        if let Some(at) = self.mtime {
            // A time the file system refuses leaves the time of the write.
            let _ = crate::services::files::set_mtime(self.partial.file(), at);
        }
        Ok((self.partial, self.hash))
    }

    /// Syncs the file and moves it into place with `mode`, never over an
    /// existing file unless `replace` (see [`Partial::commit`]). Blocking.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if something appeared under the name meanwhile;
    /// I/O errors.
    pub fn commit(self, mode: u32, replace: bool) -> io::Result<File> {
        let (partial, _) = self.write_out()?;
        partial.commit(mode, replace)
    }
}

#[cfg(test)]
mod tests {
    //! The receiver's steps on real files in a temporary directory, the
    //! body coming from memory instead of a socket.

    use std::ffi::OsStr;
    use std::fs::File;

    use super::*;
    use crate::services::root::partial_name;

    /// A body held in memory, handed out in reads of at most `step` bytes.
    struct Bytes<'a> {
        rest: &'a [u8],
        step: usize,
        /// Fail with a cut connection after this many bytes.
        cut_after: Option<usize>,
        given: usize,
    }

    impl<'a> Bytes<'a> {
        fn new(body: &'a [u8]) -> Self {
            Bytes { rest: body, step: 7, cut_after: None, given: 0 }
        }
    }

    impl BodySource for Bytes<'_> {
        fn body_left(&self) -> u64 {
            self.rest.len() as u64
        }

        async fn read_body_into(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
            if self.cut_after.is_some_and(|n| self.given >= n) {
                let (got, expected) = (self.given as u64, (self.given + self.rest.len()) as u64);
                return Err(Error::UnexpectedEof { part: crate::wire::FramePart::Body, got, expected });
            }
            let n = self.step.min(self.rest.len()).min(buf.capacity() - buf.len());
            buf.extend_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            self.given += n;
            Ok(())
        }
    }

    fn dir(tmp: &tempfile::TempDir) -> OwnedFd {
        File::open(tmp.path()).unwrap().into()
    }

    fn hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    const NAME: &str = "f.bin";

    fn partial(tmp: &tempfile::TempDir) -> std::path::PathBuf {
        tmp.path().join(partial_name(OsStr::new(NAME)))
    }

    #[tokio::test]
    async fn a_fresh_file_is_received_verified_and_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let body = b"hello, receiver".repeat(100);
        let mut r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        assert_eq!(r.offer(), (0, None));
        assert!(r.agree(0).unwrap());
        let mut seen = 0;
        let received = r.receive(&mut Bytes::new(&body), &mut |n| seen = n).await.unwrap();
        assert_eq!(seen, body.len() as u64);
        assert!(!tmp.path().join(NAME).exists(), "nothing under the final name before the commit");
        let received = received.verify(&hex(&body)).unwrap();
        received.commit(0o640, false).unwrap();
        assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), body);
        assert!(!partial(&tmp).exists());
    }

    #[tokio::test]
    async fn a_cut_transfer_resumes_from_what_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        let mut cut = Bytes::new(&body);
        cut.cut_after = Some(2100);
        let err = r.receive(&mut cut, &mut |_| {}).await.unwrap_err();
        assert!(matches!(err, ReceiveError::Wire(Error::UnexpectedEof { .. }, _)), "{err:?}");
        drop(err); // keeps the partial file
        let held = std::fs::metadata(partial(&tmp)).unwrap().len();
        assert!(held >= 2100, "{held}");

        // The next receiver offers what is held, with its hash.
        let mut r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        let (offset, prefix) = r.offer();
        assert_eq!(offset, held);
        assert_eq!(prefix.as_deref(), Some(hex(&body[..held as usize]).as_str()));
        assert!(!r.agree(held - 1).unwrap(), "an offset that is neither 0 nor the one held is refused");
        assert!(r.agree(held).unwrap());
        let received = r.receive(&mut Bytes::new(&body[held as usize..]), &mut |_| {}).await.unwrap();
        received.verify(&hex(&body)).unwrap().commit(0o600, false).unwrap();
        assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), body);
    }

    #[tokio::test]
    async fn starting_over_drops_what_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(partial(&tmp), b"stale bytes of another file").unwrap();
        let mut r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        assert_eq!(r.held(), 27);
        r.fit(10).unwrap();
        assert_eq!(r.offer(), (0, None), "more than the whole file cannot be its start");
        drop(r); // its lock too: one transfer at a time writes a partial file
        std::fs::write(partial(&tmp), b"stale").unwrap();
        let mut r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        assert!(r.agree(0).unwrap(), "the sender's file does not start with it: start over");
        let received = r.receive(&mut Bytes::new(b"fresh"), &mut |_| {}).await.unwrap();
        received.verify(&hex(b"fresh")).unwrap().commit(0o600, false).unwrap();
        assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), b"fresh");
    }

    #[tokio::test]
    async fn a_mismatch_keeps_nothing_and_a_commit_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        let received = r.receive(&mut Bytes::new(b"data"), &mut |_| {}).await.unwrap();
        assert_eq!(received.verify(&hex(b"other")).unwrap_err(), hex(b"data"));
        assert!(!partial(&tmp).exists() && !tmp.path().join(NAME).exists());

        std::fs::write(tmp.path().join(NAME), b"there first").unwrap();
        let r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        let received = r.receive(&mut Bytes::new(b"data"), &mut |_| {}).await.unwrap();
        let err = received.commit(0o600, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), b"there first");
    }

    /// A large body goes through the writing thread, a small one is held
    /// for the commit; both end the same, and a small one cut short keeps
    /// what arrived.
    #[tokio::test]
    async fn small_and_large_bodies_end_alike() {
        for len in [SMALL_BODY as usize, SMALL_BODY as usize + 1] {
            let tmp = tempfile::tempdir().unwrap();
            let body: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
            let mut src = Bytes::new(&body);
            src.step = 8192;
            let received = r.receive(&mut src, &mut |_| {}).await.unwrap();
            received.verify(&hex(&body)).unwrap().commit(0o600, false).unwrap();
            assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), body, "{len}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let r = Receiver::open(dir(&tmp), OsStr::new(NAME)).unwrap();
        let mut cut = Bytes::new(b"0123456789");
        cut.step = 4;
        cut.cut_after = Some(8);
        assert!(matches!(r.receive(&mut cut, &mut |_| {}).await, Err(ReceiveError::Wire(..))));
        assert_eq!(std::fs::read(partial(&tmp)).unwrap(), b"01234567", "what arrived is kept");
    }

    #[tokio::test]
    async fn fresh_always_starts_from_zero() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(partial(&tmp), b"old").unwrap();
        let r = Receiver::fresh(dir(&tmp), OsStr::new(NAME)).unwrap();
        assert_eq!(r.offer(), (0, None));
        let received = r.receive(&mut Bytes::new(b"new"), &mut |_| {}).await.unwrap();
        received.commit(0o600, true).unwrap();
        assert_eq!(std::fs::read(tmp.path().join(NAME)).unwrap(), b"new");
    }
}
