//! A key's rights, checked in one place on the storage seam (issue 31,
//! point 5): [`Guarded`] is a [`Storage`] over another one that lets
//! through only what the connection's key may do, for a directory root
//! and a bucket root alike. Every path a request names (a tree's entries,
//! links, both ends of a rename, a mirror's removals) reaches the storage
//! through here; where (`dir=`) is the root's own business: the storage a
//! narrowed key is given is rooted at its directory already.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::Stream;
use tokio::sync::mpsc::Sender;

use super::{Decided, Got, Needed, Part, Settled, Storage, TreeSink, WalkFlags, S};
use crate::auth::{Rights, Verb};
use crate::proto::{Backup, Entry, Get, Kind, ManifestEntry, Want};
use crate::services::files::Listing;
use crate::services::Fault;
use crate::wire::Error;

/// `inner`, as far as `rights` let a connection use it.
pub(in crate::server) struct Guarded<'a, St> {
    pub inner: &'a St,
    pub rights: &'a Rights,
}

/// Refuses `verb` on `path` unless `rights` allow it.
fn may(rights: &Rights, verb: Verb, path: &str) -> Result<(), Fault> {
    if rights.allows(verb) {
        Ok(())
    } else {
        Err(Fault::NotPermitted { path: path.to_owned(), verb: verb.name() })
    }
}

/// An upload that would replace what is there (`force`, or an entry's
/// `replace`) needs `overwrite` besides `put`.
fn may_write(rights: &Rights, path: &str, replace: bool) -> Result<(), Fault> {
    may(rights, Verb::Put, path)?;
    if replace {
        may(rights, Verb::Overwrite, path)?;
    }
    Ok(())
}

impl<St: Storage> Storage for Guarded<'_, St> {
    type Download = St::Download;
    type Upload = St::Upload;
    type Sink = GuardedSink<St::Sink>;
    const KEEPS_MODES: bool = St::KEEPS_MODES;
    const CUT_KEEPS: &'static str = St::CUT_KEEPS;
    const KEEPS_BACKUPS: bool = St::KEEPS_BACKUPS;
    const KEEPS_ATTRS: bool = St::KEEPS_ATTRS;
    const KEEPS_HOLES: bool = St::KEEPS_HOLES;
    const TREE_DELTAS: bool = St::TREE_DELTAS;

    async fn stat(&self, path: &str) -> Result<Entry, Fault> {
        may(self.rights, Verb::List, path)?;
        self.inner.stat(path).await
    }

    async fn list(&self, path: &str, listing: Listing, blake3: bool) -> Result<Vec<Entry>, Fault> {
        may(self.rights, Verb::List, path)?;
        self.inner.list(path, listing, blake3).await
    }

    async fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Fault> {
        may(self.rights, Verb::Mkdir, path)?;
        self.inner.mkdir(path, parents).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<bool, Fault> {
        may(self.rights, Verb::Delete, path)?;
        self.inner.remove(path, recursive).await
    }

    async fn rename(&self, from: &str, to: &str, force: bool) -> Result<(), Fault> {
        may(self.rights, Verb::Rename, from)?;
        if force {
            may(self.rights, Verb::Overwrite, to)?;
        }
        self.inner.rename(from, to, force).await
    }

    async fn open(&self, request: Get) -> Result<Self::Download, Fault> {
        may(self.rights, Verb::Get, &request.path)?;
        self.inner.open(request).await
    }

    fn walk(&self, path: &str, flags: WalkFlags, tx: Sender<Part>) -> impl Future<Output = ()> + Send {
        let refused = may(self.rights, Verb::List, path).err();
        let walk = refused.is_none().then(|| self.inner.walk(path, flags, tx.clone()));
        async move {
            match (refused, walk) {
                (Some(r), _) => drop(tx.send(Part::Refused(r)).await),
                (None, Some(walk)) => walk.await,
                (None, None) => {}
            }
        }
    }

    fn fetch(
        &self,
        base: &str,
        wants: VecDeque<(u64, Want)>,
        sparse: bool,
    ) -> impl Stream<Item = (u64, Result<Self::Download, Fault>)> + Send {
        use futures_util::StreamExt;
        let allowed = self.rights.allows(Verb::Get);
        let refused: Vec<_> = if allowed {
            Vec::new()
        } else {
            let no = |path: &str| Err(Fault::NotPermitted { path: path.to_owned(), verb: Verb::Get.name() });
            wants.iter().map(|(i, w)| (*i, no(&w.path))).collect()
        };
        let inner = allowed.then(|| self.inner.fetch(base, wants, sparse));
        futures_util::stream::iter(refused).chain(futures_util::stream::iter(inner).flatten())
    }

    fn tree_sink(&self, backup: Option<Backup>, covers: crate::services::attrs::Wanted) -> Self::Sink {
        GuardedSink { inner: self.inner.tree_sink(backup, covers), rights: self.rights.clone() }
    }

    fn reads_allowed(&self) -> bool {
        self.rights.allows(Verb::Get) && self.inner.reads_allowed()
    }

    async fn admit(
        &self,
        path: &str,
        size: u64,
        force: bool,
        kept: (Option<crate::services::files::Stamp>, Option<u32>),
    ) -> Result<Self::Upload, Fault> {
        may_write(self.rights, path, force)?;
        self.inner.admit(path, size, force, kept).await
    }
}

/// A `tree_put`'s sink, as far as the key's rights go: each entry is
/// decided or applied only if the key may write it (and replace what is
/// there, if it asks to), else refused on its own, the rest going on.
pub(in crate::server) struct GuardedSink<K> {
    inner: K,
    rights: Rights,
}

impl<K: TreeSink> GuardedSink<K> {
    /// What an entry without data needs: a directory `mkdir`; an existing
    /// file's attributes `overwrite`; a link or special file `put` (and
    /// `overwrite` to replace what is there).
    fn check_meta(&self, full: &str, e: &ManifestEntry, force: bool) -> Result<(), Fault> {
        match e.kind {
            Kind::Dir => may(&self.rights, Verb::Mkdir, full),
            // A hard link is made whatever else the entry says.
            Kind::File if e.link.is_some() => may_write(&self.rights, full, force || e.replace),
            Kind::File if e.attrs_only => may(&self.rights, Verb::Overwrite, full),
            _ => may_write(&self.rights, full, force || e.replace),
        }
    }
}

impl<K: TreeSink> TreeSink for GuardedSink<K> {
    const REPORT_EACH_SETTLE: bool = K::REPORT_EACH_SETTLE;

    async fn decide(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Result<Vec<Decided>, Fault> {
        let (mut allowed, mut refused) = (Vec::with_capacity(entries.len()), Vec::new());
        for (i, full, e) in entries {
            match may_write(&self.rights, &full, force || e.replace) {
                Ok(()) => allowed.push((i, full, e)),
                Err(r) => refused.push((i, full, e, Err(r))),
            }
        }
        // Without `overwrite`, nothing is replaced: an entry that does
        // not ask to replace is decided as the no-clobber rule says.
        let overwrite = self.rights.allows(Verb::Overwrite);
        let force = force && overwrite;
        let mut decided = if allowed.is_empty() { Vec::new() } else { self.inner.decide(base, force, allowed).await? };
        // An entry that did not ask to replace may still be decided so (a
        // file there that is older than the entry says): without
        // `overwrite`, never.
        if !overwrite {
            for (_, full, _, d) in &mut decided {
                if matches!(d, Ok(Some((true, ..)))) {
                    *d = Err(Fault::NotPermitted { path: full.clone(), verb: Verb::Overwrite.name() });
                }
            }
        }
        decided.extend(refused);
        decided.sort_by_key(|d| d.0);
        Ok(decided)
    }

    fn receive(
        &mut self,
        s: &mut S,
        i: u64,
        need: &Needed,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Got, Error>> + Send {
        self.inner.receive(s, i, need, offset, len)
    }

    fn settle(&mut self, all: bool) -> impl Future<Output = Vec<Settled>> + Send {
        self.inner.settle(all)
    }

    fn offer_bases(
        &mut self,
        mut files: Vec<(u64, String, u64)>,
    ) -> impl Future<Output = Vec<(u64, crate::proto::Basis, std::sync::Arc<crate::delta::Signature>)>> + Send {
        // A signature tells of the contents: only of what the key may get.
        files.retain(|(_, full, _)| may(&self.rights, Verb::Get, full).is_ok());
        self.inner.offer_bases(files)
    }

    async fn apply(
        &mut self,
        base: &str,
        force: bool,
        entries: Vec<(u64, String, ManifestEntry)>,
    ) -> Vec<(u64, String, Result<bool, Fault>)> {
        let (mut allowed, mut out) = (Vec::with_capacity(entries.len()), Vec::new());
        let overwrite = self.rights.allows(Verb::Overwrite);
        for (i, full, e) in entries {
            match self.check_meta(&full, &e, force) {
                // Without `overwrite`, an existing directory's bits, owner,
                // attributes and time are never changed: a directory entry
                // is left as it is (the directory itself is made by the
                // upload's `mkdir`s).
                Ok(()) if e.kind == Kind::Dir && !overwrite => out.push((i, full, Ok(false))),
                Ok(()) => allowed.push((i, full, e)),
                Err(r) => out.push((i, full, Err(r))),
            }
        }
        let force = force && self.rights.allows(Verb::Overwrite);
        if !allowed.is_empty() {
            out.extend(self.inner.apply(base, force, allowed).await);
        }
        out.sort_by_key(|o| o.0);
        out
    }
}
