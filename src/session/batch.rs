//! Commits in batches: what a tree transfer does instead of one `fsync`
//! per file.
//!
//! A file is still never under its final name before it is whole and
//! verified; only the syncs are shared. [`Batch::commit`] takes every
//! verified file of the batch through the same steps, each step for all
//! of them before the next:
//!
//! 1. written out (a small body held in memory goes to its partial file
//!    now), given its mtime and permission bits;
//! 2. synced, by one `syncfs(2)` per file system;
//! 3. renamed into place (never over an existing file without `replace`);
//! 4. synced again, so that the renames are on disk when the batch is
//!    reported committed.
//!
//! What a crash at each point leaves is in docs/DESIGN.md ("Batched
//! durability"): before step 3, partial files only (resumed by the next
//! transfer); after it, whole verified files under their names.

use crate::services::files::Stamp;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::receiver::Received;
use crate::services::root::{FileId, Had, Partial};

/// Something held until a file is in place (a server's claim on its path).
pub type Guard = Box<dyn Send>;

/// Files in a batch at most.
pub const BATCH_FILES: usize = 256;

/// Bytes of small bodies held in memory by a batch at most.
pub const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Where a batch's files go: resolves a path to its directory and name,
/// creating missing directories, the kernel keeping it inside whatever
/// root the implementation has (see `Sandbox::for_write`).
pub trait Place {
    /// Why a path cannot be resolved.
    type Error;

    /// The directory `path` goes into, its last component, and a guard
    /// to hold until the file is in place.
    ///
    /// # Errors
    ///
    /// A path that cannot be written.
    fn resolve(&mut self, path: &str) -> Result<(Arc<OwnedFd>, OsString, Option<Guard>), Self::Error>;

    /// Keeps what stands at `path` (the name `at.1` in the directory
    /// `at.0`) before a file replaces it ([`Replace::Keeping`]): its
    /// backup. An error leaves both as they are (the new file stays a
    /// partial file, for a later try).
    ///
    /// # Errors
    ///
    /// A backup that could not be made.
    fn keep(&mut self, path: &str, at: (&OwnedFd, &std::ffi::OsStr)) -> Result<(), Self::Error>;

    /// Gives the file (written, before its permission bits are set and it
    /// is renamed into place) the owner and extended attributes `attrs`
    /// names, as far as this receiver keeps them.
    ///
    /// # Errors
    ///
    /// Those of setting them: the file is then not committed.
    /// `had` is what `file` has now (an owner already right is not set
    /// again).
    fn attrs(&mut self, file: &File, had: Had, attrs: &crate::proto::Attrs) -> io::Result<()>;
}

/// Whether a file of a batch may replace what stands at its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Never: a file there (one that appeared meanwhile) stays, and this
    /// one fails with `AlreadyExists`.
    No,
    /// Yes.
    Yes,
    /// Yes, once what stands there is kept ([`Place::keep`], given this
    /// path).
    Keeping(String),
}

impl From<bool> for Replace {
    fn from(replace: bool) -> Replace {
        if replace {
            Replace::Yes
        } else {
            Replace::No
        }
    }
}

/// Why one file of a batch was not committed.
#[derive(Debug)]
pub enum CommitError<E> {
    /// Its path could not be resolved ([`Place::resolve`]).
    Place(E),
    /// Writing, syncing or renaming it failed (`AlreadyExists`: a file
    /// appeared under the name meanwhile, and was not replaced).
    Io(io::Error),
}

/// A file committed: its id, and the file (under its final name) with its
/// hash, or why not.
pub type Outcome<E> = (u64, Result<(File, blake3::Hash), CommitError<E>>);

enum What {
    /// Received through a [`crate::session::Receiver`]: its partial file
    /// is open (a large body, or a resumed one).
    Received(Received, Option<Guard>),
    /// A whole small body in memory, not yet in any file; `fresh`: no
    /// partial file was seen for it (see [`Batch::push_body`]).
    Body { path: String, body: Vec<u8>, hash: blake3::Hash, mtime: Option<Stamp>, fresh: bool },
}

struct Item {
    id: u64,
    what: What,
    mode: u32,
    replace: Replace,
    attrs: Option<Box<crate::proto::Attrs>>,
}

/// Verified files waiting to be committed together.
#[derive(Default)]
pub struct Batch {
    items: Vec<Item>,
    bytes: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("files", &self.items.len()).field("bytes", &self.bytes).finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a verified file received into its partial file, to be given
    /// `mode` and put in place (over an existing file only if `replace`);
    /// `guard` is dropped once it is.
    pub fn push_received(&mut self, id: u64, received: Received, mode: u32, replace: Replace, guard: Option<Guard>) {
        self.items.push(Item { id, what: What::Received(received, guard), mode, replace, attrs: None });
    }

    /// Gives the file added last the owner and extended attributes
    /// `attrs` names, at commit ([`Place::attrs`]).
    pub fn with_attrs(&mut self, attrs: Option<Box<crate::proto::Attrs>>) {
        if let Some(item) = self.items.last_mut() {
            item.attrs = attrs;
        }
    }

    /// Adds a whole, verified small file held in memory (`hash` is its
    /// BLAKE3), to be written to a file for `path` at commit: its own
    /// allocation, of its own size (a slice of a connection's buffer
    /// would keep the whole buffer alive until the commit). `fresh`
    /// says that no partial file for `path` was seen when it was decided:
    /// the file is then written unnamed ([`Partial::unnamed`]: no lock, no
    /// rename, one link), else to the partial file, which it replaces.
    #[allow(clippy::too_many_arguments)]
    pub fn push_body(
        &mut self,
        id: u64,
        path: String,
        body: Vec<u8>,
        hash: blake3::Hash,
        meta: (u32, Option<Stamp>),
        replace: Replace,
        fresh: bool,
    ) {
        self.bytes += body.len() as u64;
        let (mode, mtime) = meta;
        let what = What::Body { path, body, hash, mtime, fresh };
        self.items.push(Item { id, what, mode, replace, attrs: None });
    }

    /// Files in the batch.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether it is time to commit ([`BATCH_FILES`], [`BATCH_BYTES`]).
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES
    }

    /// Commits every file (see the module's steps). Blocking. Returns one
    /// outcome per file, in the order they were added.
    pub fn commit<P: Place>(self, place: &mut P) -> Vec<Outcome<P::Error>> {
        let mut outcomes = Vec::with_capacity(self.items.len());
        let mut staged = Vec::with_capacity(self.items.len());
        for Item { id, what, mode, replace, attrs } in self.items {
            match stage(what, (mode, attrs.as_deref()), place) {
                Ok((partial, hash, guard)) => staged.push((id, partial, hash, replace, guard)),
                Err(e) => outcomes.push((id, Err(e))),
            }
        }
        // Step 2: the data of every file, at once.
        let synced = sync_all(staged.iter().map(|(_, p, ..)| (p.id(), p.file())));
        let mut placed = Vec::with_capacity(staged.len());
        for (id, partial, hash, replace, guard) in staged {
            if let Err(e) = &synced {
                // Not known to be on disk: left as a partial file, which
                // the next transfer resumes (and verifies); an unnamed one
                // (a small body) is let go, leaving nothing.
                outcomes.push((id, Err(CommitError::Io(io::Error::new(e.kind(), e.to_string())))));
                continue;
            }
            if let Replace::Keeping(path) = &replace {
                if let Err(e) = place.keep(path, partial.at()) {
                    // Left as a partial file (an unnamed one is let go):
                    // nothing is lost, and a rerun resumes or sends it.
                    outcomes.push((id, Err(CommitError::Place(e))));
                    continue;
                }
            }
            match partial.place(replace != Replace::No) {
                Ok((file, fid)) => placed.push((id, file, fid, hash, guard)),
                Err(e) => outcomes.push((id, Err(CommitError::Io(e)))),
            }
        }
        // Step 4: the renames.
        let synced = sync_all(placed.iter().map(|(_, f, fid, ..)| (*fid, f)));
        for (id, file, _, hash, guard) in placed {
            drop(guard);
            match &synced {
                Ok(()) => outcomes.push((id, Ok((file, hash)))),
                Err(e) => outcomes.push((id, Err(CommitError::Io(io::Error::new(e.kind(), e.to_string()))))),
            }
        }
        outcomes
    }
}

/// Step 1 for one file: its partial file written, timed and given its bits.
fn stage<P: Place>(
    what: What,
    (mode, attrs): (u32, Option<&crate::proto::Attrs>),
    place: &mut P,
) -> Result<(Partial, blake3::Hash, Option<Guard>), CommitError<P::Error>> {
    let (partial, hash, guard) = match what {
        What::Received(received, guard) => {
            let (partial, hash) = received.write_out().map_err(CommitError::Io)?;
            (partial, hash, guard)
        }
        What::Body { path, body, hash, mtime, fresh } => {
            let (dir, name, guard) = place.resolve(&path).map_err(CommitError::Place)?;
            // Unnamed where no partial file stands to be replaced (and
            // so kept from littering).
            let unnamed = if fresh { Partial::unnamed(dir.clone(), &name, mode) } else { Ok(None) };
            let partial = match unnamed.map_err(CommitError::Io)? {
                Some(partial) => partial,
                None => Partial::open(dir, &name).map_err(CommitError::Io)?,
            };
            let emptied = if partial.opened_len() == 0 { Ok(()) } else { partial.file().set_len(0) };
            let written = emptied.and_then(|()| partial.file().write_all_at(&body, 0));
            if let Err(e) = written {
                // Nothing worth resuming: the body was all in memory.
                partial.discard();
                return Err(CommitError::Io(e));
            }
            if let Some(at) = mtime {
                let _ = crate::services::files::set_mtime(partial.file(), at);
            }
            (partial, hash, guard)
        }
    };
    if let Some(attrs) = attrs {
        place.attrs(partial.file(), partial.had(), attrs).map_err(CommitError::Io)?;
    }
    partial.set_mode(mode).map_err(CommitError::Io)?;
    Ok((partial, hash, guard))
}

/// Syncs the file systems the files are on, one `syncfs(2)` each.
fn sync_all<'a>(files: impl Iterator<Item = (FileId, &'a File)>) -> io::Result<()> {
    let mut done = HashSet::new();
    for (id, file) in files {
        if done.insert(id.dev) {
            rustix::fs::syncfs(file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A batch on real files in a temporary directory.

    use super::*;
    use crate::services::root::partial_name;

    struct Dir(std::path::PathBuf);

    impl Place for Dir {
        type Error = io::Error;
        fn resolve(&mut self, path: &str) -> Result<(Arc<OwnedFd>, OsString, Option<Guard>), io::Error> {
            let full = self.0.join(path);
            std::fs::create_dir_all(full.parent().unwrap())?;
            let (dir, name) = crate::services::root::local_parent(&full)?;
            Ok((Arc::new(dir), name, None))
        }
        fn keep(&mut self, path: &str, at: (&OwnedFd, &std::ffi::OsStr)) -> Result<(), io::Error> {
            let name = format!("{}~", path.rsplit('/').next().unwrap());
            crate::services::root::keep_at(at.0, at.1, (at.0, std::ffi::OsStr::new(&name)), false).map(drop)
        }
        fn attrs(&mut self, _: &File, _: Had, _: &crate::proto::Attrs) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_file_lands_whole_and_a_taken_name_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("taken"), b"first").unwrap();
        std::fs::write(tmp.path().join("old"), b"older").unwrap();
        let mut batch = Batch::new();
        for (id, name) in [(0, "a/x"), (1, "a/y"), (2, "taken"), (3, "old")] {
            let body = format!("body of {name}").into_bytes();
            let hash = blake3::hash(&body);
            // The one replaced keeps what it replaces (as `old~`).
            let replace = if name == "old" { Replace::Keeping(name.into()) } else { Replace::No };
            let meta = (0o640, Some(Stamp::from(1_000_000_000)));
            batch.push_body(id, name.into(), body, hash, meta, replace, id % 2 == 0);
        }
        assert_eq!(batch.len(), 4);
        let outcomes = batch.commit(&mut Dir(tmp.path().to_owned()));
        let by_id: std::collections::HashMap<u64, bool> = outcomes.iter().map(|(id, r)| (*id, r.is_ok())).collect();
        assert_eq!(by_id, [(0, true), (1, true), (2, false), (3, true)].into_iter().collect());
        assert!(
            matches!(&outcomes.iter().find(|o| o.0 == 2).unwrap().1, Err(CommitError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(tmp.path().join("a/x")).unwrap(), b"body of a/x");
        assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"first", "not replaced");
        assert_eq!(std::fs::read(tmp.path().join("old")).unwrap(), b"body of old", "replaced, as asked");
        assert_eq!(std::fs::read(tmp.path().join("old~")).unwrap(), b"older", "and kept as its backup");
        assert!(!tmp.path().join("taken~").exists(), "nothing kept of what was not replaced");
        let meta = std::fs::metadata(tmp.path().join("a/y")).unwrap();
        assert_eq!(crate::services::files::mtime(&meta), 1_000_000_000);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        for name in ["a/x", "a/y", "taken", "old"] {
            let p = tmp.path().join(name);
            let part = p.with_file_name(partial_name(p.file_name().unwrap()));
            assert!(!part.exists(), "no partial file left for {name}");
        }
    }

    #[test]
    fn a_path_that_cannot_be_placed_fails_alone() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        let mut batch = Batch::new();
        let body = b"x".to_vec();
        let hash = blake3::hash(&body);
        batch.push_body(0, "file/under".into(), body.clone(), hash, (0o600, None), Replace::No, true);
        batch.push_body(1, "fine".into(), body, hash, (0o600, None), Replace::No, true);
        let outcomes = batch.commit(&mut Dir(tmp.path().to_owned()));
        assert!(matches!(outcomes[0], (0, Err(CommitError::Place(_)))), "{:?}", outcomes[0].1.as_ref().err());
        assert!(matches!(outcomes[1], (1, Ok(_))));
        assert_eq!(std::fs::read(tmp.path().join("fine")).unwrap(), b"x");
    }
}
