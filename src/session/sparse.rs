//! Sparse files (PROTOCOL.md §4.6.5): the holes of a file, found with
//! `SEEK_DATA`/`SEEK_HOLE`, are neither sent nor written. A body with
//! holes carries the file's data only; its head lists the holes
//! (`[start, length]` each, in order), and the receiver writes each data
//! run where it belongs, leaving the holes unwritten (the file system
//! keeps them as holes), and gives the file its length at the end. Both
//! sides hash the whole file, holes as the zeros they read as, so the
//! BLAKE3 checked is the whole file's as before.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use tokio::task::spawn_blocking;

use super::body::SendError;
use crate::transport::BoxWrite;
use crate::wire::{Error, FrameWriter};

/// Holes of a body: `[start, length]` each, in order, not touching.
pub type Holes = Vec<[u64; 2]>;

/// The most holes one body lists (past it, the rest of the file is sent
/// as data, zeros and all).
pub const MAX_HOLES: usize = 4096;

/// Holes shorter than this are sent as data: not worth a member.
pub const MIN_HOLE: u64 = 64 * 1024;

/// Bytes read or written at a time.
const CHUNK: usize = 256 * 1024;

/// Zeros, hashed in place of a hole.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The holes of `file` between `from` and `size` (its length as planned),
/// as `SEEK_DATA`/`SEEK_HOLE` find them: none on a file system that does
/// not tell (the whole file is then data), at most [`MAX_HOLES`], each at
/// least [`MIN_HOLE`] long. Blocking.
///
/// # Errors
///
/// Those of `lseek(2)` other than "not supported".
pub fn find_holes(file: &File, from: u64, size: u64) -> io::Result<Holes> {
    use rustix::fs::{seek, SeekFrom};
    let mut holes = Holes::new();
    let mut at = from;
    while at < size && holes.len() < MAX_HOLES {
        let hole = match seek(file, SeekFrom::Hole(at)) {
            Ok(h) => h.min(size),
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok(Holes::new()),
            Err(e) => return Err(e.into()),
        };
        if hole >= size {
            break;
        }
        let data = match seek(file, SeekFrom::Data(hole)) {
            Ok(d) => d.min(size),
            // No data after it: a hole to the end.
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if data - hole >= MIN_HOLE {
            holes.push([hole, data - hole]);
        }
        at = data.max(hole + 1);
    }
    Ok(holes)
}

/// Checks holes a peer listed for a body of the bytes `from..size`: in
/// order, not touching, each non-empty and within the range, at most
/// [`MAX_HOLES`]. Returns the bytes they leave out.
///
/// # Errors
///
/// What is wrong, in a few words.
pub fn check(holes: &[[u64; 2]], from: u64, size: u64) -> Result<u64, &'static str> {
    if holes.len() > MAX_HOLES {
        return Err("more holes than MAX_HOLES");
    }
    let (mut at, mut total) = (from, 0u64);
    for &[start, len] in holes {
        let end = start.checked_add(len).ok_or("a hole past the end")?;
        if len == 0 || start < at || end > size || (start == at && at != from) {
            return Err("holes out of order, touching, empty or outside the body");
        }
        at = end;
        total += len;
    }
    Ok(total)
}

/// Whether a body of `len` bytes from `offset` that leaves out `holes`
/// (checked as [`check`] does; none, or an empty list, is no hole) is
/// exactly the rest of a file of `size` bytes: what every receiver of a
/// head checks before any byte.
///
/// # Errors
///
/// Holes that are not well formed ([`check`]).
pub fn covers(holes: Option<&[[u64; 2]]>, (offset, len): (u64, u64), size: u64) -> Result<bool, &'static str> {
    let left_out = match holes {
        Some(h) if !h.is_empty() => check(h, offset, size)?,
        _ => 0,
    };
    Ok(offset.checked_add(len).and_then(|n| n.checked_add(left_out)) == Some(size))
}

/// Feeds `hasher` `len` zeros.
fn hash_zeros(hasher: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// The runs of `from..size`: each `(start, length, data)`.
fn runs(holes: &[[u64; 2]], from: u64, size: u64) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::with_capacity(holes.len() * 2 + 1);
    let mut at = from;
    for &[start, len] in holes {
        if start > at {
            out.push((at, start - at, true));
        }
        out.push((start, len, false));
        at = start + len;
    }
    if size > at {
        out.push((at, size - at, true));
    }
    out
}

/// Sends the data of `file` between `from` and `size` but its `holes`
/// (checked), as the body `writer` has started, hashing the whole into
/// `hasher` (fed with what precedes `from`), holes as zeros. Returns the
/// whole file's hash.
///
/// # Errors
///
/// As [`super::send_body`]: a file that changed under it (shorter than
/// promised) is [`SendError::File`].
pub async fn send_sparse(
    writer: &mut FrameWriter<BoxWrite>,
    file: File,
    (from, size): (u64, u64),
    holes: &[[u64; 2]],
    mut hasher: Option<blake3::Hasher>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<blake3::Hash>, SendError> {
    let file = std::sync::Arc::new(file);
    let mut sent = 0;
    for (start, len, data) in runs(holes, from, size) {
        if !data {
            // Off the async threads: a hole may be gigabytes of zeros.
            if let Some(mut h) = hasher.take() {
                let hashed = spawn_blocking(move || {
                    hash_zeros(&mut h, len);
                    h
                });
                hasher = Some(hashed.await.map_err(|e| SendError::Wire(Error::Io(io::Error::other(e))))?);
            }
            continue;
        }
        let mut at = start;
        while at < start + len {
            let n = (start + len - at).min(CHUNK as u64) as usize;
            let f = file.clone();
            let buf = spawn_blocking(move || {
                let mut buf = vec![0; n];
                f.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(|e| SendError::Wire(Error::Io(io::Error::other(e))))?
            .map_err(SendError::File)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf);
            }
            writer.write_body(&buf).await.map_err(SendError::Wire)?;
            at += n as u64;
            sent += n as u64;
            progress(sent);
        }
    }
    Ok(hasher.map(|h| h.finalize()))
}

/// What a body with holes is written through: each data byte to its place
/// in the file, holes skipped (left unwritten) and hashed as zeros; the
/// file gets its length once all is in ([`SparseWriter::finish`]).
#[derive(Debug)]
pub struct SparseWriter {
    file: File,
    runs: std::collections::VecDeque<(u64, u64, bool)>,
    size: u64,
    hasher: blake3::Hasher,
}

impl SparseWriter {
    /// Writes the body of `from..size` with `holes` (checked) into `file`,
    /// hashing into `hasher` (fed with what precedes `from`).
    pub fn new(file: File, (from, size): (u64, u64), holes: &[[u64; 2]], hasher: blake3::Hasher) -> SparseWriter {
        SparseWriter { file, runs: runs(holes, from, size).into(), size, hasher }
    }

    /// Skips the holes that come next (hashed as zeros).
    fn skip_holes(&mut self) {
        while let Some(&(_, len, false)) = self.runs.front() {
            hash_zeros(&mut self.hasher, len);
            self.runs.pop_front();
        }
    }

    /// The file with its length, and the whole file's hash, once every
    /// data byte came.
    ///
    /// # Errors
    ///
    /// Data missing; setting the length.
    pub fn finish(mut self) -> io::Result<(File, blake3::Hash)> {
        self.skip_holes();
        if !self.runs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended before its data"));
        }
        if self.file.metadata()?.len() < self.size {
            self.file.set_len(self.size)?;
        }
        Ok((self.file, self.hasher.finalize()))
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.skip_holes();
        let Some(&(start, len, true)) = self.runs.front() else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more data than the body's runs hold"));
        };
        let n = len.min(buf.len() as u64) as usize;
        self.file.write_all_at(&buf[..n], start)?;
        self.hasher.update(&buf[..n]);
        let front = self.runs.front_mut().expect("there");
        front.0 += n as u64;
        front.1 -= n as u64;
        if front.1 == 0 {
            self.runs.pop_front();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found_and_checked() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"data", 1 << 20).unwrap();
        f.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        let holes = find_holes(&f, 0, 8 << 20).unwrap();
        if holes.is_empty() {
            eprintln!("this file system tells no holes: skipped");
            return;
        }
        assert_eq!(holes[0][0], 0, "{holes:?}");
        let total = check(&holes, 0, 8 << 20).unwrap();
        assert!(total >= 6 << 20, "{holes:?}");
        assert!(check(&[[10, 5], [12, 5]], 0, 100).is_err(), "overlapping");
        assert!(check(&[[10, 5], [15, 5]], 0, 100).is_err(), "touching");
        assert!(check(&[[90, 20]], 0, 100).is_err(), "past the end");
        assert!(check(&[[5, 0]], 0, 100).is_err(), "empty");
        assert!(check(&[[0, 5]], 10, 100).is_err(), "before the body");
        assert!(check(&[[u64::MAX, 2]], 0, u64::MAX).is_err(), "overflow");
        assert_eq!(check(&[[10, 5], [20, 5]], 0, 100), Ok(10));
    }

    #[test]
    fn a_body_with_holes_lands_sparse_and_hashes_whole() {
        let size = 4u64 << 20;
        let mut whole = vec![0u8; size as usize];
        whole[..3].copy_from_slice(b"abc");
        whole[(2 << 20)..(2 << 20) + 3].copy_from_slice(b"mid");
        let holes = vec![[3 << 10, (2 << 20) - (3 << 10)], [(2 << 20) + 4096, size - (2 << 20) - 4096]];
        let runs = runs(&holes, 0, size);
        let mut w = SparseWriter::new(tempfile::tempfile().unwrap(), (0, size), &holes, blake3::Hasher::new());
        for (start, len, data) in runs {
            if data {
                w.write_all(&whole[start as usize..(start + len) as usize]).unwrap();
            }
        }
        let (file, hash) = w.finish().unwrap();
        assert_eq!(hash, blake3::hash(&whole));
        assert_eq!(file.metadata().unwrap().len(), size);
        let mut back = vec![0; size as usize];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == whole);
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 < size / 2, "holes left unwritten");
        // Too much or too little data is an error, not a wrong file.
        let mut w = SparseWriter::new(tempfile::tempfile().unwrap(), (0, 100), &[[10, 80]], blake3::Hasher::new());
        assert!(w.write_all(&[1; 30]).is_err());
        let w = SparseWriter::new(tempfile::tempfile().unwrap(), (0, 100), &[[10, 80]], blake3::Hasher::new());
        assert!(w.finish().is_err());
    }
}
