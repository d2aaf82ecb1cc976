//! The server's side of the tree conversations (PROTOCOL.md §4.6.3) as
//! state machines without sockets, quinn-proto's way: each frame read is
//! handed to [`TreePutState::on_frame`] or [`TreeGetState::on_frame`],
//! which checks it against what came before and says what to do next
//! ([`PutAction`], [`GetAction`]); the I/O loops in `tree.rs` only read,
//! call the storage, and write what they are told. Every count, the set of
//! held paths, [`MAX_OUTSTANDING`] and the end checks live here, and are
//! unit-tested below without a socket.

use std::collections::{HashMap, HashSet};

use super::super::storage::{join, plain, Decided, Needed, REPORT_EVERY};
use crate::proto::{
    CommitList, ErrorCode, Failed, Kind, ManifestEntry, TreeDone, TreeGetInput, TreePutInput, Want, WantList, WantsEnd,
    TREE_PART_MAX,
};
use crate::services::files;
use crate::services::{Fault, Refusal};

/// Files a `tree_put` may have announced and not yet sent (wanted, or
/// not yet answered) at once: with [`MAX_OUTSTANDING_BYTES`], what
/// bounds the server's memory for one upload, whatever the manifest's
/// length. Our client keeps far fewer in flight (PROTOCOL.md §4.6.3.2).
pub const MAX_OUTSTANDING: usize = 65_536;

/// Bytes the files a `tree_put` announced and has not yet received may
/// hold at once, counted as [`HeldPaths`] does: long paths reach it before
/// [`MAX_OUTSTANDING`] (65,536 paths of 4,095 bytes would be 512 MiB).
pub const MAX_OUTSTANDING_BYTES: usize = 32 << 20;

/// What one held entry costs beside its path: its slots in the maps, its
/// record, the allocator's rounding.
const ENTRY_COST: usize = 256;

/// A `tree_put` that held more than this gives the allocator's free
/// memory back to the system when it ends (glibc keeps it otherwise).
const GIVE_BACK_AFTER: usize = 4 << 20;

/// The paths a `tree_put` holds: wanted, or received and not yet
/// committed. A manifest naming one twice is refused the second time, and
/// the bytes they take are counted, so that a client announcing files it
/// never sends pins at most [`MAX_OUTSTANDING_BYTES`]; that memory is
/// given back to the system when the upload ends.
#[derive(Debug, Default)]
pub(super) struct HeldPaths {
    paths: HashSet<String>,
    bytes: usize,
    most: usize,
}

impl HeldPaths {
    /// What holding `path` costs: it is kept twice (here, and in the
    /// record of the file wanted).
    fn cost(path: &str) -> usize {
        2 * path.len() + ENTRY_COST
    }

    /// Holds `path`; false if it is held already.
    fn insert(&mut self, path: String) -> bool {
        let cost = Self::cost(&path);
        if !self.paths.insert(path) {
            return false;
        }
        self.bytes += cost;
        self.most = self.most.max(self.bytes);
        true
    }

    /// Lets `path` go.
    fn remove(&mut self, path: &str) {
        if self.paths.remove(path) {
            self.bytes -= Self::cost(path);
        }
    }

    /// Whether `entries` (under `base`) may be taken on top of `wanted`
    /// files announced and not yet sent; the refusal says which limit.
    fn admit(&self, wanted: usize, base: &str, entries: &[ManifestEntry]) -> Result<(), Refusal> {
        let more: usize = entries.iter().map(|e| Self::cost(&e.path) + 2 * (base.len() + 1)).sum();
        if wanted + entries.len() <= MAX_OUTSTANDING && self.bytes + more <= MAX_OUTSTANDING_BYTES {
            return Ok(());
        }
        let msg = format!(
            "more than {MAX_OUTSTANDING} files or {} MiB of their paths announced and not yet sent ({} files, {} KiB held, {} entries more); send the wanted files before more manifest",
            MAX_OUTSTANDING_BYTES >> 20,
            wanted,
            self.bytes >> 10,
            entries.len()
        );
        Err(Refusal::new(ErrorCode::TooLarge, msg))
    }
}

impl Drop for HeldPaths {
    fn drop(&mut self) {
        if self.most >= GIVE_BACK_AFTER {
            // The maps are freed with the upload, just after this.
            crate::server::give_back_memory_soon(|| {});
        }
    }
}

/// What an entry without data is, in a message.
fn kind_name(e: &ManifestEntry) -> &'static str {
    match e.kind {
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::File if e.link.is_some() => "hard link",
        Kind::File if e.attrs_only => "file's attributes",
        _ => "special file",
    }
}

/// A file refused or failed, logged as a refused request is.
pub(super) fn failed(i: u64, r: impl Into<Refusal>) -> Failed {
    let r = r.into();
    tracing::info!(code = %r.code, "refused: {}", crate::text::printable(&r.message));
    Failed { i, code: r.code, message: r.message }
}

/// A frame that breaks the conversation: refused, and the connection
/// closed (it cannot stay in step).
fn broken(msg: String) -> Refusal {
    Refusal::new(ErrorCode::BadRequest, msg)
}

/// A tree frame's body over [`TREE_PART_MAX`]: `too_large`, left unread.
fn too_large(what: &str, len: u64) -> Option<Refusal> {
    (len > TREE_PART_MAX)
        .then(|| Refusal::new(ErrorCode::TooLarge, format!("a {what} frame of {len} bytes (most: {TREE_PART_MAX})")))
}

/// What the I/O loop of a `tree_put` does next.
#[derive(Debug)]
pub(super) enum PutAction {
    /// Read the `manifest` body of this many bytes and hand its entries
    /// to [`TreePutState::on_manifest`].
    ReadManifest(u64),
    /// Send this `wants_end`.
    EndWants(WantsEnd),
    /// Receive the body of entry `i` (`len` bytes from `offset`) into the
    /// sink, then report what became of it ([`TreePutState::settled`]).
    Receive {
        /// The manifest index.
        i: u64,
        /// The file as decided.
        need: Needed,
        /// Where the body starts.
        offset: u64,
        /// The body's length.
        len: u64,
    },
    /// Put in place all that was received, report it, and send this
    /// `tree_done`.
    Finish,
    /// Refuse with this and close the connection.
    Close(Refusal),
}

/// One manifest frame screened: the entries refused already (a path not
/// plain, a path listed twice), and those left for the storage to decide.
#[derive(Debug, Default)]
pub(super) struct Screened {
    /// The answer so far: its `refused`.
    pub answer: WantList,
    /// Index, full path and entry of each entry to decide.
    pub to_decide: Vec<(u64, String, ManifestEntry)>,
    /// Index, full path and entry of each entry without data to apply
    /// (a request with `meta`: symlinks, hard links, directories).
    pub to_apply: Vec<(u64, String, ManifestEntry)>,
}

/// The state of one `tree_put`, whatever the storage and the socket.
#[derive(Debug)]
pub(super) struct TreePutState {
    base: String,
    force: bool,
    /// The request takes entries without data.
    meta: bool,
    /// Bodies may leave holes out (the storage writes them so).
    sparse: bool,
    /// The next manifest index.
    next: u64,
    manifest_done: bool,
    /// Wanted and not received yet, by manifest index.
    needed: HashMap<u64, Needed>,
    /// Paths wanted, or received and not yet in place.
    held: HeldPaths,
    /// What was stored or failed since the last `committed` frame.
    report: CommitList,
    files: u64,
    bytes: u64,
}

impl TreePutState {
    /// A `tree_put` into `base` (checked already), replacing what differs
    /// if `force`.
    pub(super) fn new(base: String, force: bool, meta: bool) -> Self {
        TreePutState {
            base,
            force,
            meta,
            sparse: false,
            next: 0,
            manifest_done: false,
            needed: HashMap::new(),
            held: HeldPaths::default(),
            report: CommitList::default(),
            files: 0,
            bytes: 0,
        }
    }

    /// The same, taking bodies with holes (PROTOCOL.md §4.6.5) if
    /// `sparse`; without, a body with holes closes the connection.
    pub(super) fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// The destination, as the request named it.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// Whether differing files are replaced whatever their age.
    pub(super) fn force(&self) -> bool {
        self.force
    }

    /// What to do with the next frame.
    pub(super) fn on_frame(&mut self, frame: TreePutInput) -> PutAction {
        match frame {
            TreePutInput::Manifest(m) => {
                if self.manifest_done {
                    return PutAction::Close(broken("manifest after manifest_end".into()));
                }
                match too_large("manifest", m.len) {
                    Some(r) => PutAction::Close(r),
                    None => PutAction::ReadManifest(m.len),
                }
            }
            TreePutInput::ManifestEnd(end) => {
                if self.manifest_done || end.count != self.next {
                    let msg = format!("manifest_end counts {} entries, {} were sent", end.count, self.next);
                    return PutAction::Close(broken(msg));
                }
                self.manifest_done = true;
                PutAction::EndWants(WantsEnd { count: self.next })
            }
            TreePutInput::TreeFile(head) => {
                let (i, offset, len) = (head.i, head.offset, head.len);
                let Some(mut need) = self.needed.remove(&i) else {
                    return PutAction::Close(broken(format!(
                        "tree_file for entry {i}, which is not wanted (or was sent already)"
                    )));
                };
                if head.delta {
                    // Ops against the basis offered, from the offset
                    // offered or 0; no body of its own.
                    let fits = need.basis.is_some()
                        && len == 0
                        && head.holes.is_none()
                        && (offset == 0 || offset == need.offset)
                        && offset < need.size;
                    if !fits {
                        let msg = format!(
                            "tree_file {i} as a delta (len {len}, from {offset}) where no basis was offered for it or it does not fit"
                        );
                        return PutAction::Close(broken(msg));
                    }
                    return PutAction::Receive { i, need, offset, len };
                }
                // A whole body: the basis offered is not used.
                need.basis = None;
                let holes = head.holes.filter(|h| !h.is_empty());
                if holes.is_some() && !self.sparse {
                    return PutAction::Close(broken(format!("tree_file {i} with holes, not taken")));
                }
                let covered = match crate::session::sparse::covers(holes.as_deref(), (offset, len), need.size) {
                    Ok(covered) => covered,
                    Err(why) => return PutAction::Close(broken(format!("tree_file {i}: {why}"))),
                };
                need.holes = holes;
                if !covered || (offset != 0 && offset != need.offset) {
                    let msg = format!(
                        "tree_file {i} covers bytes {offset}..{} of a {}-byte file, {} held",
                        offset.saturating_add(len),
                        need.size,
                        need.offset
                    );
                    return PutAction::Close(broken(msg));
                }
                PutAction::Receive { i, need, offset, len }
            }
            TreePutInput::Checksum(_) => PutAction::Close(broken("checksum without a tree_file".into())),
            TreePutInput::TreeEnd(_) => {
                if !self.manifest_done {
                    return PutAction::Close(broken("tree_end before manifest_end".into()));
                }
                let mut never: Vec<(u64, Needed)> = self.needed.drain().collect();
                never.sort_unstable_by_key(|(i, _)| *i);
                for (i, need) in never {
                    let msg = format!("{}: wanted, but not sent", files::shown(&need.path));
                    self.fail(i, &need.path, Refusal::new(ErrorCode::BadRequest, msg));
                }
                PutAction::Finish
            }
        }
    }

    /// Screens one manifest frame's entries: numbers them, refuses paths
    /// that are not plain or are held already. `Err`: the frame would
    /// take the upload over [`MAX_OUTSTANDING`] or
    /// [`MAX_OUTSTANDING_BYTES`]; the connection closes with it.
    pub(super) fn on_manifest(&mut self, entries: Vec<ManifestEntry>) -> Result<Screened, Refusal> {
        self.held.admit(self.needed.len(), &self.base, &entries)?;
        let first = self.next;
        self.next += entries.len() as u64;
        let mut screened = Screened {
            answer: WantList::default(),
            to_decide: Vec::with_capacity(entries.len()),
            to_apply: Vec::new(),
        };
        for (i, e) in (first..).zip(entries) {
            let full = join(&self.base, &e.path);
            // A file whose contents the receiver has (`attrs_only`) comes
            // with the links and directories, never with data.
            let data = e.kind == Kind::File && e.link.is_none() && !e.attrs_only;
            if let Err(r) = plain(&e.path) {
                screened.answer.refused.push(failed(i, r));
            } else if !data && !self.meta {
                // An older client never sends these; one that does without
                // asking is not understood, entry by entry.
                let msg = format!("{}: a {} entry in a tree_put without meta", files::shown(&e.path), kind_name(&e));
                screened.answer.refused.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
            } else if let Some(r) = e.link.as_deref().and_then(|l| plain(l).err()) {
                screened.answer.refused.push(failed(i, r));
            } else if !self.held.insert(full.clone()) {
                let msg = format!("{}: listed twice in one manifest", files::shown(&e.path));
                screened.answer.refused.push(failed(i, Refusal::new(ErrorCode::BadRequest, msg)));
            } else if data {
                screened.to_decide.push((i, full, e));
            } else {
                screened.to_apply.push((i, full, e));
            }
        }
        Ok(screened)
    }

    /// Adds to `answer` what became of the entries without data: applied
    /// (`done`), already so (`unchanged`), or refused.
    pub(super) fn on_applied(&mut self, answer: &mut WantList, applied: Vec<(u64, String, Result<bool, Fault>)>) {
        for (i, full, outcome) in applied {
            self.held.remove(&full);
            match outcome {
                Ok(true) => answer.done.push(i),
                Ok(false) => answer.unchanged.push(i),
                Err(r) => answer.refused.push(failed(i, r)),
            }
        }
    }

    /// The answer to a manifest frame, once the storage has decided what
    /// it screened: wanted files are remembered until they come.
    pub(super) fn on_decided(&mut self, mut answer: WantList, decided: Vec<Decided>) -> WantList {
        for (i, full, e, d) in decided {
            match d {
                Ok(Some((replace, offset, prefix, partial))) => {
                    answer.send.push(Want { i, path: String::new(), offset, prefix_blake3: prefix, basis: None });
                    let replace = replace || self.force;
                    let mtime = files::Stamp::from_wire(e.mtime, e.mtime_ns);
                    let attrs = e.attrs;
                    let need = Needed {
                        path: full,
                        size: e.size,
                        mtime,
                        mode: e.mode,
                        replace,
                        offset,
                        attrs,
                        holes: None,
                        partial,
                        basis: None,
                    };
                    self.needed.insert(i, need);
                }
                Ok(None) => {
                    self.held.remove(&full);
                    answer.unchanged.push(i);
                }
                Err(r) => {
                    self.held.remove(&full);
                    answer.refused.push(failed(i, r));
                }
            }
        }
        answer
    }

    /// The files `answer` wants that a basis may be offered for:
    /// `(index, full path, size)`, under
    /// [`TREE_DELTA_MAX`](crate::session::delta::TREE_DELTA_MAX).
    pub(super) fn basis_candidates(&self, answer: &WantList) -> Vec<(u64, String, u64)> {
        let small = |n: &&Needed| n.size < crate::session::delta::TREE_DELTA_MAX;
        answer
            .send
            .iter()
            .filter_map(|w| self.needed.get(&w.i).filter(small).map(|n| (w.i, n.path.clone(), n.size)))
            .collect()
    }

    /// A basis of `len` bytes was offered for wanted file `i`: its body
    /// may come as a delta.
    pub(super) fn offered(&mut self, i: u64, len: u64) {
        if let Some(need) = self.needed.get_mut(&i) {
            need.basis = Some(len);
        }
    }

    /// What became of entry `i` (at `path`): stored (its size) or failed.
    pub(super) fn settled(&mut self, i: u64, path: &str, outcome: Result<u64, Fault>) {
        match outcome {
            Ok(size) => {
                self.held.remove(path);
                self.files += 1;
                self.bytes += size;
                self.report.ok.push(i);
            }
            Err(r) => self.fail(i, path, r),
        }
    }

    fn fail(&mut self, i: u64, path: &str, r: impl Into<Refusal>) {
        self.held.remove(path);
        self.report.failed.push(failed(i, r));
    }

    /// The `committed` frame due now, if any: at once if `now`, else once
    /// [`REPORT_EVERY`] outcomes have gathered.
    pub(super) fn report(&mut self, now: bool) -> Option<CommitList> {
        let n = self.report.ok.len() + self.report.failed.len();
        (n > 0 && (now || n >= REPORT_EVERY)).then(|| std::mem::take(&mut self.report))
    }

    /// The `tree_done` of an upload that ended well.
    pub(super) fn done(&self) -> TreeDone {
        TreeDone { files: self.files, bytes: self.bytes }
    }
}

/// What the I/O loop of a `tree_get` does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GetAction {
    /// Read the `wants` body of this many bytes and hand what it asks for
    /// to [`TreeGetState::on_wants`].
    ReadWants(u64),
    /// Send this `tree_done`: the conversation is over.
    Finish(TreeDone),
    /// Refuse with this and close the connection.
    Close(Refusal),
}

/// The state of one `tree_get`, whatever the storage and the socket.
#[derive(Debug, Default)]
pub(super) struct TreeGetState {
    /// The next want's index.
    next: u64,
    files: u64,
    bytes: u64,
}

impl TreeGetState {
    /// What to do with the next frame.
    pub(super) fn on_frame(&mut self, frame: TreeGetInput) -> GetAction {
        match frame {
            TreeGetInput::Wants(w) => match too_large("wants", w.len) {
                Some(r) => GetAction::Close(r),
                None => GetAction::ReadWants(w.len),
            },
            TreeGetInput::WantsEnd(end) if end.count != self.next => {
                GetAction::Close(broken(format!("wants_end counts {} files, {} were asked", end.count, self.next)))
            }
            TreeGetInput::WantsEnd(_) => GetAction::Finish(TreeDone { files: self.files, bytes: self.bytes }),
        }
    }

    /// Numbers what one `wants` frame asks for.
    pub(super) fn on_wants(&mut self, wants: Vec<Want>) -> std::collections::VecDeque<(u64, Want)> {
        let first = self.next;
        self.next += wants.len() as u64;
        (first..).zip(wants).collect()
    }

    /// A file of `size` bytes was sent.
    pub(super) fn on_sent(&mut self, size: u64) {
        self.files += 1;
        self.bytes += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Checksum, Manifest, ManifestEnd, TreeEnd, TreeFile, Wants};

    fn entry(path: &str, size: u64) -> ManifestEntry {
        ManifestEntry { path: path.into(), size, mtime: 1, mode: 0o644, ..ManifestEntry::default() }
    }

    fn manifest(n: usize) -> TreePutInput {
        TreePutInput::Manifest(Manifest { len: 10, count: n as u64 })
    }

    fn end(count: u64) -> TreePutInput {
        TreePutInput::ManifestEnd(ManifestEnd { count })
    }

    fn file(i: u64, offset: u64, len: u64) -> TreePutInput {
        TreePutInput::TreeFile(TreeFile {
            len,
            i,
            offset,
            size: offset + len,
            mtime: 1,
            mode: 0o644,
            mtime_ns: None,
            holes: None,
            delta: false,
        })
    }

    fn tree_end() -> TreePutInput {
        TreePutInput::TreeEnd(TreeEnd { files: 0 })
    }

    /// Every entry screened through wanted whole (as a storage with
    /// nothing there decides).
    fn want_all(st: &mut TreePutState, entries: Vec<ManifestEntry>) -> WantList {
        assert!(matches!(st.on_frame(manifest(entries.len())), PutAction::ReadManifest(10)));
        let screened = st.on_manifest(entries).unwrap();
        let decided =
            screened.to_decide.into_iter().map(|(i, full, e)| (i, full, e, Ok(Some((false, 0, None, false)))));
        st.on_decided(screened.answer, decided.collect())
    }

    fn closed(action: PutAction) -> Refusal {
        match action {
            PutAction::Close(r) => r,
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }

    #[test]
    fn a_whole_upload_goes_manifest_files_end() {
        let mut st = TreePutState::new("dst".into(), false, false);
        let answer = want_all(&mut st, vec![entry("a", 3), entry("b/c", 0)]);
        assert_eq!(answer.send.iter().map(|w| w.i).collect::<Vec<_>>(), [0, 1]);
        assert!(matches!(st.on_frame(end(2)), PutAction::EndWants(WantsEnd { count: 2 })));
        let PutAction::Receive { i, need, offset, len } = st.on_frame(file(1, 0, 0)) else { panic!() };
        assert_eq!((i, need.path.as_str(), offset, len), (1, "dst/b/c", 0, 0));
        st.settled(1, "dst/b/c", Ok(0));
        let PutAction::Receive { need, .. } = st.on_frame(file(0, 0, 3)) else { panic!() };
        st.settled(0, &need.path, Ok(3));
        assert!(matches!(st.on_frame(tree_end()), PutAction::Finish));
        assert_eq!(st.report(true).unwrap().ok, [1, 0]);
        assert_eq!(st.done(), TreeDone { files: 2, bytes: 3 });
        assert_eq!(st.held.bytes, 0, "nothing held once all is in place");
    }

    #[test]
    fn a_path_listed_twice_is_refused_the_second_time_even_across_frames() {
        let mut st = TreePutState::new(String::new(), false, false);
        let first = want_all(&mut st, vec![entry("x", 1), entry("x", 1)]);
        assert_eq!(first.send.len(), 1);
        assert_eq!(first.refused.len(), 1);
        assert_eq!((first.refused[0].i, first.refused[0].code), (1, ErrorCode::BadRequest));
        assert!(first.refused[0].message.contains("listed twice"), "{}", first.refused[0].message);
        // Still wanted: a later frame naming it again is refused too.
        let second = want_all(&mut st, vec![entry("y", 1), entry("x", 1)]);
        assert_eq!(second.send.iter().map(|w| w.i).collect::<Vec<_>>(), [2]);
        assert_eq!(second.refused.iter().map(|f| f.i).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn paths_that_are_not_plain_are_refused_and_hold_nothing() {
        let mut st = TreePutState::new(String::new(), false, false);
        let answer = want_all(&mut st, vec![entry("../up", 1), entry("/abs", 1), entry("ok", 1)]);
        assert_eq!(answer.refused.iter().map(|f| f.i).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(answer.send.iter().map(|w| w.i).collect::<Vec<_>>(), [2]);
        assert_eq!(st.held.paths.len(), 1);
    }

    #[test]
    fn unchanged_and_refused_decisions_let_their_paths_go() {
        let mut st = TreePutState::new(String::new(), false, false);
        st.on_frame(manifest(2));
        let screened = st.on_manifest(vec![entry("same", 1), entry("newer", 1)]).unwrap();
        let mut decided: Vec<Decided> = Vec::new();
        for (i, full, e) in screened.to_decide {
            let d = if i == 0 { Ok(None) } else { Err(Fault::Exists { path: full.clone() }) };
            decided.push((i, full, e, d));
        }
        let answer = st.on_decided(screened.answer, decided);
        assert_eq!((answer.unchanged, answer.refused.len(), answer.send.len()), (vec![0], 1, 0));
        assert!(st.held.paths.is_empty() && st.held.bytes == 0);
        // Not held any more: the same path may be announced again.
        assert_eq!(want_all(&mut st, vec![entry("same", 1)]).send.len(), 1);
    }

    #[test]
    fn a_manifest_after_manifest_end_closes() {
        let mut st = TreePutState::new(String::new(), false, false);
        want_all(&mut st, vec![entry("a", 1)]);
        st.on_frame(end(1));
        assert!(closed(st.on_frame(manifest(1))).message.contains("manifest after manifest_end"));
        assert!(closed(st.on_frame(end(1))).message.contains("manifest_end counts"), "a second manifest_end");
    }

    #[test]
    fn count_mismatches_close() {
        let mut st = TreePutState::new(String::new(), false, false);
        want_all(&mut st, vec![entry("a", 1), entry("b", 1)]);
        let r = closed(st.on_frame(end(3)));
        assert_eq!(r.code, ErrorCode::BadRequest);
        assert!(r.message.contains("counts 3 entries, 2 were sent"), "{}", r.message);
        let mut st = TreePutState::new(String::new(), false, false);
        assert!(closed(st.on_frame(tree_end())).message.contains("tree_end before manifest_end"));
    }

    #[test]
    fn files_not_wanted_sent_twice_or_of_the_wrong_extent_close() {
        let mut st = TreePutState::new(String::new(), false, false);
        want_all(&mut st, vec![entry("a", 4), entry("b", 4)]);
        assert!(closed(st.on_frame(file(7, 0, 4))).message.contains("not wanted"));
        assert!(matches!(st.on_frame(file(0, 0, 4)), PutAction::Receive { i: 0, .. }));
        assert!(closed(st.on_frame(file(0, 0, 4))).message.contains("sent already"));
        // A body from an offset never offered.
        let r = closed(st.on_frame(file(1, 2, 2)));
        assert!(r.message.contains("covers bytes 2..4 of a 4-byte file, 0 held"), "{}", r.message);
        let mut st = TreePutState::new(String::new(), false, false);
        want_all(&mut st, vec![entry("a", 4)]);
        assert!(closed(st.on_frame(file(0, 0, 5))).message.contains("covers bytes 0..5"));
        let mut st = TreePutState::new(String::new(), false, false);
        assert!(closed(st.on_frame(TreePutInput::Checksum(Checksum { blake3: String::new() })))
            .message
            .contains("checksum without a tree_file"));
    }

    #[test]
    fn wanted_files_never_sent_fail_at_the_end_each_once() {
        let mut st = TreePutState::new("d".into(), false, false);
        want_all(&mut st, vec![entry("a", 1), entry("b", 1), entry("c", 1)]);
        st.on_frame(end(3));
        let PutAction::Receive { need, .. } = st.on_frame(file(1, 0, 1)) else { panic!() };
        st.settled(1, &need.path, Ok(1));
        assert!(matches!(st.on_frame(tree_end()), PutAction::Finish));
        assert!(st.report(false).is_none(), "3 outcomes are not due by themselves");
        let report = st.report(true).expect("outcomes due at the end");
        assert_eq!(report.ok, [1]);
        let failed: Vec<_> = report.failed.iter().map(|f| (f.i, f.code)).collect();
        assert_eq!(failed, [(0, ErrorCode::BadRequest), (2, ErrorCode::BadRequest)]);
        assert!(report.failed[0].message.contains("d/a: wanted, but not sent"), "{}", report.failed[0].message);
        assert_eq!(st.done(), TreeDone { files: 1, bytes: 1 });
        assert!(st.held.paths.is_empty());
    }

    #[test]
    fn reports_gather_until_due() {
        let mut st = TreePutState::new(String::new(), false, false);
        assert!(st.report(true).is_none(), "nothing to report");
        for i in 0..REPORT_EVERY as u64 - 1 {
            st.settled(i, "p", Ok(1));
            assert!(st.report(false).is_none());
        }
        st.settled(999, "q", Err(Fault::NotFound { path: "q".into() }));
        let report = st.report(false).expect("due at REPORT_EVERY");
        assert_eq!((report.ok.len(), report.failed.len()), (REPORT_EVERY - 1, 1));
        assert!(st.report(true).is_none(), "taken");
    }

    #[test]
    fn a_frame_too_large_closes_before_its_body_is_read() {
        let mut st = TreePutState::new(String::new(), false, false);
        let big = TreePutInput::Manifest(Manifest { len: TREE_PART_MAX + 1, count: 1 });
        assert_eq!(closed(st.on_frame(big)).code, ErrorCode::TooLarge);
        let mut get = TreeGetState::default();
        let GetAction::Close(r) = get.on_frame(TreeGetInput::Wants(Wants { len: TREE_PART_MAX + 1, count: 1 })) else {
            panic!()
        };
        assert_eq!(r.code, ErrorCode::TooLarge);
    }

    #[test]
    fn announcing_more_than_may_be_held_is_refused_whole() {
        let mut st = TreePutState::new(String::new(), false, false);
        let many: Vec<_> = (0..MAX_OUTSTANDING).map(|i| entry(&format!("f{i}"), 1)).collect();
        assert_eq!(want_all(&mut st, many).send.len(), MAX_OUTSTANDING);
        st.on_frame(manifest(1));
        let r = st.on_manifest(vec![entry("one-more", 1)]).unwrap_err();
        assert_eq!(r.code, ErrorCode::TooLarge);
        assert_eq!(st.next, MAX_OUTSTANDING as u64, "the refused frame is not counted");
        // Long paths reach the byte bound first.
        let mut st = TreePutState::new(String::new(), false, false);
        let long = "x".repeat(4000);
        let n = MAX_OUTSTANDING_BYTES / (2 * long.len() + ENTRY_COST + 2) + 1;
        let entries: Vec<_> = (0..n).map(|i| entry(&format!("{long}{i}"), 1)).collect();
        st.on_frame(manifest(n));
        assert_eq!(st.on_manifest(entries).unwrap_err().code, ErrorCode::TooLarge);
    }

    /// Every prefix of a good conversation, cut there: no step panics,
    /// what is still wanted is what was wanted and not received, and the
    /// held paths are exactly those and the ones received and not settled.
    #[test]
    fn a_cut_at_every_step_leaves_a_consistent_state() {
        let steps: Vec<TreePutInput> = vec![manifest(2), end(2), file(0, 0, 1), file(1, 0, 2), tree_end()];
        for cut in 0..=steps.len() {
            let mut st = TreePutState::new(String::new(), false, false);
            let mut received = Vec::new();
            for frame in steps.iter().take(cut).cloned() {
                match st.on_frame(frame) {
                    PutAction::ReadManifest(_) => {
                        let screened = st.on_manifest(vec![entry("a", 1), entry("b", 2)]).unwrap();
                        let d = screened
                            .to_decide
                            .into_iter()
                            .map(|(i, f, e)| (i, f, e, Ok(Some((false, 0, None, false)))));
                        st.on_decided(screened.answer, d.collect());
                    }
                    PutAction::Receive { i, need, .. } => received.push((i, need.path)),
                    PutAction::EndWants(_) | PutAction::Finish => {}
                    PutAction::Close(r) => panic!("step {cut}: {}", r.message),
                }
            }
            let wanted = if cut == 0 { 0 } else { 2 };
            assert_eq!(st.needed.len(), wanted - received.len(), "cut after {cut} frames");
            // Received files stay held until the sink settles them.
            assert_eq!(st.held.paths.len(), wanted, "cut after {cut}");
            let n = received.len();
            for (i, path) in received {
                st.settled(i, &path, Ok(1));
            }
            assert_eq!(st.held.paths.len(), wanted - n, "cut after {cut}");
            assert_eq!(st.report(true).map_or(0, |r| r.ok.len()), n);
        }
    }

    #[test]
    fn a_tree_get_numbers_its_wants_and_checks_the_end_count() {
        let want = |p: &str| Want { i: 0, path: p.into(), offset: 0, prefix_blake3: None, basis: None };
        let mut st = TreeGetState::default();
        assert_eq!(st.on_frame(TreeGetInput::Wants(Wants { len: 5, count: 2 })), GetAction::ReadWants(5));
        let numbered = st.on_wants(vec![want("a"), want("b")]);
        assert_eq!(numbered.iter().map(|(i, w)| (*i, w.path.as_str())).collect::<Vec<_>>(), [(0, "a"), (1, "b")]);
        assert_eq!(st.on_wants(vec![want("c")])[0].0, 2);
        st.on_sent(10);
        st.on_sent(5);
        let end = |count| TreeGetInput::WantsEnd(WantsEnd { count });
        let GetAction::Close(r) = st.on_frame(end(2)) else { panic!() };
        assert!(r.message.contains("wants_end counts 2 files, 3 were asked"), "{}", r.message);
        assert_eq!(st.on_frame(end(3)), GetAction::Finish(TreeDone { files: 2, bytes: 15 }));
    }
}
