//! The client's side of the streamed tree conversations (PROTOCOL.md
//! §4.6.3) as state machines without sockets: [`PutPlan`] says when the
//! writer of a `tree_put` sends manifest frames, wanted files and the end;
//! [`PutAnswers`] checks what the server answers against the share and
//! turns it into outcomes; [`GetState`] checks each frame of a `tree_get`
//! before a byte is written. The I/O loops in `stream.rs` read, write and
//! call the observer; every count and end check is here, unit-tested below
//! without a socket.

use std::collections::{HashMap, VecDeque};

use super::error::ClientError;
use super::files::Transfer;
#[cfg(test)]
use crate::proto::TREE_PART_ENTRIES;
use crate::proto::{CommitList, ErrorCode, ManifestEnd, TreeEnd, TreeFile, TreeGetOutput, Want, WantList};

/// Manifest frames sent and not yet answered, at most.
pub(super) const IN_FLIGHT_FRAMES: usize = 8;
/// Wanted files queued to send before more manifest goes out: what keeps
/// the server's list of wanted files short.
pub(super) const QUEUED_WANTS: usize = 4096;

/// What one streamed request did with its files: totals for the ones
/// copied (a tree of 100,000 files keeps no record per file), and each
/// one that failed or was left out. A file's first outcome is its only
/// one.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    /// Which files have an outcome, by index into the share.
    known: Vec<bool>,
    /// Files copied.
    pub files: usize,
    /// Their bytes sent.
    pub sent: u64,
    /// Their bytes resumed (not sent again).
    pub resumed: u64,
    /// Their bytes the receiver built from its older versions (deltas).
    pub matched: u64,
    /// Files that failed, by index, and why.
    pub failed: Vec<(usize, ClientError)>,
    /// Files the receiver had already.
    pub unchanged: usize,
    /// Indices refused as differing and not older.
    pub refused: Vec<usize>,
}

impl Outcomes {
    pub(super) fn new(len: usize) -> Self {
        Outcomes { known: vec![false; len], ..Outcomes::default() }
    }

    /// Whether file `i` has an outcome already.
    pub(super) fn known(&self, i: usize) -> bool {
        self.known[i]
    }

    /// Marks `i` known; false if it was.
    fn first(&mut self, i: usize) -> bool {
        !std::mem::replace(&mut self.known[i], true)
    }

    /// File `i` copied, or why not; ignored if it has an outcome already.
    pub(super) fn done(&mut self, i: usize, r: Result<Transfer, ClientError>) {
        if !self.first(i) {
            return;
        }
        match r {
            Ok(t) => {
                self.files += 1;
                self.sent += (t.size - t.resumed).saturating_sub(t.matched);
                self.resumed += t.resumed;
                self.matched += t.matched;
            }
            Err(e) => self.failed.push((i, e)),
        }
    }

    /// File `i` was there already.
    fn unchanged(&mut self, i: usize) {
        if self.first(i) {
            self.unchanged += 1;
        }
    }

    /// File `i` differs there and is not older: left alone.
    fn refused(&mut self, i: usize) {
        if self.first(i) {
            self.refused.push(i);
        }
    }

    /// After a conversation that ended well: a file the server never
    /// reported (not answered, not committed, not sent) fails, never
    /// counted as neither copied nor failed.
    pub(super) fn fail_unreported(&mut self) {
        self.fail_the_rest(&unexpected("an outcome for every file before tree_done", "tree_done"));
    }

    /// Every file with no outcome yet fails with (a copy of) `e`.
    pub(super) fn fail_the_rest(&mut self, e: &ClientError) {
        for i in 0..self.known.len() {
            if !self.known[i] {
                let why = std::io::Error::other(format!("the tree transfer stopped: {e}"));
                self.done(i, Err(ClientError::Wire(crate::wire::Error::Io(why))));
            }
        }
    }
}

fn remote_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Remote { code, message }
}

pub(super) fn unexpected(expected: &'static str, got: impl std::fmt::Display) -> ClientError {
    ClientError::Unexpected { expected, got: got.to_string() }
}

/// What the writer of a `tree_put` does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PutStep {
    /// Send manifest frame `frame` (entries `frame * TREE_PART_ENTRIES`
    /// on), then this `manifest_end` if it is the last.
    Manifest { frame: usize, end: Option<ManifestEnd> },
    /// Send `manifest_end` for an empty share.
    EmptyManifest(ManifestEnd),
    /// Send some of the wanted files ([`PutPlan::wanted`]).
    SendFiles,
    /// Wait for the next answer ([`PutPlan::on_answer`]).
    Wait,
    /// Send this `tree_end`: all was answered and sent.
    End(TreeEnd),
    /// Nothing more: `tree_end` went out.
    Over,
}

/// The writer's side of one `tree_put`: manifest frames go out at most
/// [`IN_FLIGHT_FRAMES`] ahead of their answers and while fewer than
/// [`QUEUED_WANTS`] files wait to be sent; wanted files go out as they are
/// asked for; `tree_end` once `wants_end` came and every wanted file went.
#[derive(Debug)]
pub(super) struct PutPlan {
    files: usize,
    frames: usize,
    /// The next manifest frame.
    next: usize,
    answered: usize,
    /// `wants_end` came.
    ended: bool,
    queue: VecDeque<Want>,
    sent: u64,
    over: bool,
}

impl PutPlan {
    /// The plan for a share of `files` files, in manifest frames of
    /// [`TREE_PART_ENTRIES`] each.
    #[cfg(test)]
    pub(super) fn new(files: usize) -> Self {
        PutPlan::in_frames(files, files.div_ceil(TREE_PART_ENTRIES))
    }

    /// The plan for a share of `files` files sent in `frames` manifest
    /// frames (see [`crate::proto::frames`]).
    pub(super) fn in_frames(files: usize, frames: usize) -> Self {
        PutPlan { files, frames, next: 0, answered: 0, ended: false, queue: VecDeque::new(), sent: 0, over: false }
    }

    /// A `wants` frame (`Some`, checked by [`PutAnswers`]) or `wants_end`.
    pub(super) fn on_answer(&mut self, answer: Option<WantList>) {
        match answer {
            Some(list) => {
                self.answered += 1;
                self.queue.extend(list.send);
            }
            None => self.ended = true,
        }
    }

    /// The wanted files not sent yet, first asked first.
    pub(super) fn wanted(&mut self) -> &mut VecDeque<Want> {
        &mut self.queue
    }

    /// `n` wanted files went out.
    pub(super) fn on_sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// What to do now.
    pub(super) fn next_step(&mut self) -> PutStep {
        if self.over {
            return PutStep::Over;
        }
        let room = self.next.saturating_sub(self.answered) < IN_FLIGHT_FRAMES && self.queue.len() < QUEUED_WANTS;
        if self.next < self.frames && room {
            let frame = self.next;
            self.next += 1;
            let end = (self.next == self.frames).then_some(ManifestEnd { count: self.files as u64 });
            return PutStep::Manifest { frame, end };
        }
        if !self.queue.is_empty() {
            return PutStep::SendFiles;
        }
        if self.frames == 0 && self.next == 0 {
            self.next = 1;
            return PutStep::EmptyManifest(ManifestEnd { count: 0 });
        }
        if self.ended {
            self.over = true;
            return PutStep::End(TreeEnd { files: self.sent });
        }
        PutStep::Wait
    }
}

/// The reader's side of one `tree_put`: each answer checked against the
/// share of `len` files, and turned into outcomes.
#[derive(Debug)]
pub(super) struct PutAnswers {
    len: usize,
    /// Manifest frames sent for it.
    frames: usize,
    /// `wants` frames answered so far: at most one a manifest frame.
    answered: usize,
    /// Files asked for already: each may be asked for once.
    asked: Vec<bool>,
    /// The offset each wanted file was asked from.
    offsets: HashMap<u64, u64>,
    /// What was sent of each file: the offset it went from, its hash,
    /// and the bytes the server built from its older version.
    hashes: HashMap<u64, (u64, String, u64)>,
}

impl PutAnswers {
    #[cfg(test)]
    pub(super) fn new(len: usize) -> Self {
        PutAnswers::in_frames(len, len.div_ceil(TREE_PART_ENTRIES))
    }

    /// The answers to a share of `len` files sent in `frames` manifest
    /// frames.
    pub(super) fn in_frames(len: usize, frames: usize) -> Self {
        PutAnswers {
            len,
            frames,
            answered: 0,
            asked: vec![false; len],
            offsets: HashMap::new(),
            hashes: HashMap::new(),
        }
    }

    /// A `wants` frame: the files wanted are remembered, the unchanged and
    /// refused ones recorded. An index outside the manifest is the server
    /// out of step.
    pub(super) fn on_wants(&mut self, list: &WantList, outcomes: &mut Outcomes) -> Result<(), ClientError> {
        self.answered += 1;
        if self.answered > self.frames {
            return Err(unexpected("a wants frame for each manifest frame", self.answered));
        }
        let outside = list.send.iter().map(|w| w.i).chain(list.unchanged.iter().copied());
        if let Some(i) = outside.chain(list.refused.iter().map(|f| f.i)).find(|&i| i as usize >= self.len) {
            return Err(unexpected("an index within the manifest", i));
        }
        for w in &list.send {
            if std::mem::replace(&mut self.asked[w.i as usize], true) {
                return Err(unexpected("each file asked for once", w.i));
            }
            self.offsets.insert(w.i, w.offset);
        }
        for &i in &list.unchanged {
            outcomes.unchanged(i as usize);
        }
        for f in &list.refused {
            if f.code == ErrorCode::Exists {
                outcomes.refused(f.i as usize);
            } else {
                outcomes.done(f.i as usize, Err(remote_error(f.code, f.message.clone())));
            }
        }
        Ok(())
    }

    /// File `i` went out from `offset`, hashing to `blake3`.
    pub(super) fn on_sent(&mut self, i: u64, offset: u64, blake3: String, matched: u64) {
        self.hashes.insert(i, (offset, blake3, matched));
    }

    /// A `committed` frame: each file it names, and what became of it,
    /// for the observer; those with an outcome already (a file that failed
    /// here before it was sent, which the server reports wanted and not
    /// sent) are left out. Indices outside the share are ignored.
    pub(super) fn on_committed(
        &mut self,
        list: CommitList,
        sizes: impl Fn(usize) -> u64,
        outcomes: &Outcomes,
    ) -> Vec<(usize, Result<Transfer, ClientError>)> {
        let mut done = Vec::with_capacity(list.ok.len() + list.failed.len());
        for i in list.ok {
            let offered = self.offsets.remove(&i).unwrap_or(0);
            let (resumed, blake3, matched) = self.hashes.remove(&i).unwrap_or((offered, String::new(), 0));
            if (i as usize) < self.len && !outcomes.known(i as usize) {
                done.push((i as usize, Ok(Transfer { size: sizes(i as usize), resumed, blake3, matched })));
            }
        }
        for f in list.failed {
            self.offsets.remove(&f.i);
            self.hashes.remove(&f.i);
            if (f.i as usize) < self.len && !outcomes.known(f.i as usize) {
                done.push((f.i as usize, Err(remote_error(f.code, f.message))));
            }
        }
        done
    }
}

/// What the reader of a `tree_get` does with a frame.
#[derive(Debug)]
pub(super) enum GetStep {
    /// Receive this file (checked: wanted, not sent before, its body the
    /// rest of the file), then its checksum.
    File(TreeFile),
    /// The checksum of the file just received.
    Checksum(String),
    /// File `i` cannot be sent: why.
    Skip(usize, ClientError),
    /// The server sent all it could.
    Done,
}

/// The reader's side of one `tree_get` of a share of `len` files.
#[derive(Debug)]
pub(super) struct GetState {
    /// Files whose `tree_file` or `tree_skip` came.
    came: Vec<bool>,
    /// A file's body came and its checksum is due.
    checksum_due: bool,
}

impl GetState {
    pub(super) fn new(len: usize) -> Self {
        GetState { came: vec![false; len], checksum_due: false }
    }

    /// Marks `i` come; the error if it is outside the share or came before.
    fn arrive(&mut self, i: u64, what: &'static str) -> Result<usize, ClientError> {
        match self.came.get_mut(i as usize) {
            Some(came) if !*came => {
                *came = true;
                Ok(i as usize)
            }
            _ => Err(unexpected(what, i)),
        }
    }

    /// What `frame` means here.
    pub(super) fn on_frame(&mut self, frame: TreeGetOutput) -> Result<GetStep, ClientError> {
        if std::mem::take(&mut self.checksum_due) {
            return match frame {
                TreeGetOutput::Checksum(c) => Ok(GetStep::Checksum(c.blake3)),
                TreeGetOutput::ErrorFrame(e) => Err(e.into()),
                other => Err(unexpected("checksum", other.kind())),
            };
        }
        match frame {
            TreeGetOutput::TreeFile(head) if head.delta => {
                self.arrive(head.i, "a file index within the wants, each once")?;
                // Ops from the offset, no body (PROTOCOL.md §4.6.6.1); the
                // basis is checked by the reader, which offered it.
                let small = head.size < crate::session::delta::TREE_BASIS_MAX;
                if head.len != 0 || head.holes.is_some() || head.offset >= head.size || !small {
                    let got = format!("{}+{} of {}", head.offset, head.len, head.size);
                    return Err(unexpected("a delta tree_file from an offset within the file, no body", got));
                }
                self.checksum_due = true;
                Ok(GetStep::File(head))
            }
            TreeGetOutput::TreeFile(head) => {
                self.arrive(head.i, "a file index within the wants, each once")?;
                // Holes the body leaves out (PROTOCOL.md §4.6.5), checked.
                let covered = crate::session::sparse::covers(head.holes.as_deref(), (head.offset, head.len), head.size);
                if covered != Ok(true) {
                    let got = format!("{}+{} of {}", head.offset, head.len, head.size);
                    return Err(unexpected("a tree_file whose body is the rest of the file", got));
                }
                self.checksum_due = true;
                Ok(GetStep::File(head))
            }
            TreeGetOutput::TreeSkip(skip) => {
                let i = self.arrive(skip.i, "a skipped index within the wants, each once")?;
                Ok(GetStep::Skip(i, remote_error(skip.code, skip.message)))
            }
            TreeGetOutput::TreeDone(_) => Ok(GetStep::Done),
            TreeGetOutput::Checksum(_) => Err(unexpected("tree_file", "checksum")),
            TreeGetOutput::ErrorFrame(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Checksum, Failed, TreeDone, TreeSkip};

    fn want(i: u64) -> Want {
        Want { i, path: String::new(), offset: 0, prefix_blake3: None, basis: None }
    }

    fn wants(is: &[u64]) -> WantList {
        WantList { send: is.iter().map(|&i| want(i)).collect(), ..WantList::default() }
    }

    #[test]
    fn an_empty_share_sends_one_manifest_end_then_tree_end() {
        let mut plan = PutPlan::new(0);
        assert_eq!(plan.next_step(), PutStep::EmptyManifest(ManifestEnd { count: 0 }));
        assert_eq!(plan.next_step(), PutStep::Wait);
        plan.on_answer(None);
        assert_eq!(plan.next_step(), PutStep::End(TreeEnd { files: 0 }));
        assert_eq!(plan.next_step(), PutStep::Over);
    }

    #[test]
    fn manifest_frames_run_at_most_in_flight_ahead_of_their_answers() {
        let frames = IN_FLIGHT_FRAMES + 3;
        let mut plan = PutPlan::new(frames * TREE_PART_ENTRIES - 1);
        for f in 0..IN_FLIGHT_FRAMES {
            assert_eq!(plan.next_step(), PutStep::Manifest { frame: f, end: None });
        }
        assert_eq!(plan.next_step(), PutStep::Wait, "{IN_FLIGHT_FRAMES} frames unanswered");
        plan.on_answer(Some(wants(&[])));
        assert_eq!(plan.next_step(), PutStep::Manifest { frame: IN_FLIGHT_FRAMES, end: None });
        for _ in 0..3 {
            plan.on_answer(Some(wants(&[])));
        }
        assert_eq!(plan.next_step(), PutStep::Manifest { frame: IN_FLIGHT_FRAMES + 1, end: None });
        let last = PutStep::Manifest {
            frame: frames - 1,
            end: Some(ManifestEnd { count: (frames * TREE_PART_ENTRIES - 1) as u64 }),
        };
        assert_eq!(plan.next_step(), last);
        assert_eq!(plan.next_step(), PutStep::Wait);
    }

    #[test]
    fn wanted_files_go_before_more_manifest_once_enough_are_queued() {
        let mut plan = PutPlan::new(3 * TREE_PART_ENTRIES);
        assert!(matches!(plan.next_step(), PutStep::Manifest { frame: 0, .. }));
        let many: Vec<u64> = (0..QUEUED_WANTS as u64).collect();
        plan.on_answer(Some(wants(&many)));
        assert_eq!(plan.next_step(), PutStep::SendFiles, "a full queue holds the manifest back");
        plan.wanted().drain(..10);
        plan.on_sent(10);
        assert!(matches!(plan.next_step(), PutStep::Manifest { frame: 1, .. }));
    }

    #[test]
    fn tree_end_waits_for_wants_end_and_every_wanted_file() {
        let mut plan = PutPlan::new(2);
        assert!(matches!(plan.next_step(), PutStep::Manifest { frame: 0, end: Some(ManifestEnd { count: 2 }) }));
        plan.on_answer(Some(wants(&[0, 1])));
        plan.on_answer(None);
        assert_eq!(plan.next_step(), PutStep::SendFiles);
        plan.wanted().clear();
        plan.on_sent(2);
        assert_eq!(plan.next_step(), PutStep::End(TreeEnd { files: 2 }));
    }

    #[test]
    fn answers_outside_the_manifest_are_the_server_out_of_step() {
        let mut answers = PutAnswers::new(2);
        let mut outcomes = Outcomes::new(2);
        assert!(answers.on_wants(&wants(&[0, 2]), &mut outcomes).is_err());
        let unchanged = WantList { unchanged: vec![5], ..WantList::default() };
        assert!(answers.on_wants(&unchanged, &mut outcomes).is_err());
        let failed = Failed { i: 9, code: ErrorCode::Io, message: String::new() };
        let refused = WantList { refused: vec![failed], ..WantList::default() };
        assert!(answers.on_wants(&refused, &mut outcomes).is_err());
    }

    #[test]
    fn more_wants_frames_than_manifest_frames_or_a_file_asked_twice_are_refused() {
        let mut answers = PutAnswers::new(1);
        let mut outcomes = Outcomes::new(1);
        answers.on_wants(&wants(&[]), &mut outcomes).unwrap();
        assert!(answers.on_wants(&wants(&[]), &mut outcomes).is_err(), "one manifest frame, two answers");
        let mut answers = PutAnswers::new(0);
        assert!(answers.on_wants(&wants(&[]), &mut Outcomes::new(0)).is_err(), "an empty share sends no manifest");
        let mut answers = PutAnswers::new(TREE_PART_ENTRIES + 1);
        let mut outcomes = Outcomes::new(TREE_PART_ENTRIES + 1);
        answers.on_wants(&wants(&[3]), &mut outcomes).unwrap();
        assert!(answers.on_wants(&wants(&[3]), &mut outcomes).is_err(), "asked twice");
        // The writer's window holds whatever the answers say.
        let mut plan = PutPlan::new(1);
        plan.next_step();
        plan.on_answer(Some(wants(&[])));
        plan.on_answer(Some(wants(&[])));
        assert_eq!(plan.next_step(), PutStep::Wait);
    }

    #[test]
    fn files_never_reported_fail_when_the_conversation_ends() {
        let mut outcomes = Outcomes::new(3);
        outcomes.unchanged(1);
        outcomes.fail_unreported();
        let failed: Vec<usize> = outcomes.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [0, 2]);
        assert!(outcomes.failed[0].1.to_string().contains("an outcome for every file"), "{}", outcomes.failed[0].1);
    }

    #[test]
    fn each_file_gets_one_outcome() {
        let mut answers = PutAnswers::new(4);
        let mut outcomes = Outcomes::new(4);
        let exists = Failed { i: 2, code: ErrorCode::Exists, message: "newer".into() };
        let bad = Failed { i: 3, code: ErrorCode::BadPath, message: "bad".into() };
        let list =
            WantList { send: vec![want(0), want(1)], unchanged: vec![], refused: vec![exists, bad], done: vec![] };
        answers.on_wants(&list, &mut outcomes).unwrap();
        assert_eq!((outcomes.refused.clone(), outcomes.failed.len()), (vec![2], 1));
        // File 1 fails here before it is sent; the server then reports it
        // wanted and not sent: it stays one failure.
        outcomes.done(1, Err(ClientError::Closed));
        answers.on_sent(0, 0, "h0".into(), 0);
        let never = Failed { i: 1, code: ErrorCode::BadRequest, message: "wanted, but not sent".into() };
        let done = answers.on_committed(CommitList { ok: vec![0, 7], failed: vec![never] }, |_| 10, &outcomes);
        assert_eq!(done.len(), 1, "index 7 is outside the share, 1 is known");
        for (i, r) in done {
            let t = r.as_ref().unwrap();
            assert_eq!((i, t.size, t.resumed, t.blake3.as_str()), (0, 10, 0, "h0"));
            outcomes.done(i, r);
        }
        assert_eq!((outcomes.files, outcomes.failed.len()), (1, 2));
        outcomes.fail_the_rest(&ClientError::Closed);
        assert_eq!(outcomes.failed.len(), 2, "every file had an outcome");
    }

    #[test]
    fn a_stop_fails_exactly_the_files_without_an_outcome() {
        let mut outcomes = Outcomes::new(3);
        outcomes.unchanged(0);
        outcomes.fail_the_rest(&ClientError::Closed);
        let failed: Vec<usize> = outcomes.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!((outcomes.unchanged, failed), (1, vec![1, 2]));
        assert!(outcomes.failed[0].1.to_string().contains("the tree transfer stopped"));
    }

    fn file(i: u64, offset: u64, len: u64, size: u64) -> TreeGetOutput {
        TreeGetOutput::TreeFile(TreeFile {
            len,
            i,
            offset,
            size,
            mtime: 0,
            mode: 0,
            mtime_ns: None,
            holes: None,
            delta: false,
        })
    }

    fn checksum() -> TreeGetOutput {
        TreeGetOutput::Checksum(Checksum { blake3: "h".into() })
    }

    #[test]
    fn a_tree_get_checks_every_frame() {
        let mut st = GetState::new(2);
        assert!(matches!(st.on_frame(file(0, 2, 3, 5)), Ok(GetStep::File(_))));
        assert!(st.on_frame(file(1, 0, 1, 1)).is_err(), "a file where its checksum is due");
        let mut st = GetState::new(2);
        st.on_frame(file(0, 0, 1, 1)).unwrap();
        assert!(matches!(st.on_frame(checksum()), Ok(GetStep::Checksum(h)) if h == "h"));
        assert!(st.on_frame(checksum()).is_err(), "a checksum without a file");
        assert!(st.on_frame(file(0, 0, 1, 1)).is_err(), "a file sent twice");
        assert!(st.on_frame(file(2, 0, 1, 1)).is_err(), "outside the wants");
        assert!(st.on_frame(file(1, 0, 1, 2)).is_err(), "a body that is not the rest of the file");
        let mut st = GetState::new(2);
        let skip = |i| TreeGetOutput::TreeSkip(TreeSkip { i, code: ErrorCode::NotFound, message: "gone".into() });
        assert!(matches!(st.on_frame(skip(1)), Ok(GetStep::Skip(1, ClientError::Remote { .. }))));
        assert!(st.on_frame(skip(1)).is_err(), "skipped twice");
        assert!(st.on_frame(skip(3)).is_err(), "outside the wants");
        assert!(matches!(st.on_frame(TreeGetOutput::TreeDone(TreeDone { files: 0, bytes: 0 })), Ok(GetStep::Done)));
    }
}
