//! The sync rule: what a copy does with a file the receiver may already
//! hold under its name. One rule for both directions and both roots: the
//! client's plan (`client::tree`) and the server's `tree_put` (a
//! directory's and a bucket's) call it, so they cannot drift apart.
//!
//! As rsync's: a receiver file that is the same (the same size and
//! modification time, or the same BLAKE3 when contents are compared) is
//! left alone; one that differs is replaced, the source wins
//! ([`Existing::Replace`], the default, as rsync, scp and cp do). With
//! `--update` ([`Existing::Update`]) a receiver file that differs and is
//! not older is kept; with `--ignore-existing` ([`Existing::Ignore`])
//! anything the receiver holds is.

/// What the receiver holds under the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nothing.
    Nothing,
    /// A regular file of this size and modification time (whole seconds).
    File {
        /// Its size in bytes.
        size: u64,
        /// Its modification time, seconds since the epoch.
        mtime: i64,
    },
    /// A directory.
    Dir,
    /// Anything else: a symlink, a FIFO, a device.
    Other,
}

/// Whether the contents are known to be the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Same {
    /// Not compared: the same size and modification time mean the same.
    Unknown,
    /// Compared (by BLAKE3), or known to differ.
    Known(bool),
}

/// What a copy does with a receiver file that differs from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// The source wins: it is replaced (rsync's, scp's and cp's default).
    #[default]
    Replace,
    /// `--update`: replaced only when older than the source; a newer (or
    /// as new) one is kept and reported.
    Update,
    /// `--ignore-existing`: whatever is there is left alone.
    Ignore,
}

/// What the rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Copy it: over what is there when `replace` (never through it).
    Send {
        /// Something is under the name and is replaced.
        replace: bool,
    },
    /// The receiver has it already.
    Unchanged,
    /// The receiver holds something under the name and
    /// `--ignore-existing` leaves it alone.
    Kept,
    /// A file that differs and is not older, not asked to be replaced.
    NotOlder,
    /// A directory holds the name: a file never replaces it.
    IsDir,
    /// A symlink or special file holds the name, not asked to be replaced.
    NotAFile,
}

/// The rule for a source file of `size` and `mtime` against what the
/// receiver `held`; `same` says what is known of the contents (asked only
/// of a file of the same size, when contents are compared); `existing`
/// says who wins when they differ; `force` replaces what differs, older or
/// not, and what is not a file, whatever `existing` says short of
/// [`Existing::Ignore`].
pub fn decide(
    held: Held,
    (size, mtime): (u64, i64),
    same: impl FnOnce() -> Same,
    existing: Existing,
    force: bool,
) -> Verdict {
    match held {
        Held::Nothing => Verdict::Send { replace: false },
        Held::Dir => Verdict::IsDir,
        _ if existing == Existing::Ignore => Verdict::Kept,
        Held::File { size: theirs, mtime: their_mtime } => {
            let same = match same() {
                Same::Known(same) => same,
                Same::Unknown => theirs == size && their_mtime == mtime,
            };
            if same {
                Verdict::Unchanged
            } else if force || existing == Existing::Replace || their_mtime < mtime {
                Verdict::Send { replace: true }
            } else {
                Verdict::NotOlder
            }
        }
        Held::Other if force || existing == Existing::Replace => Verdict::Send { replace: true },
        Held::Other => Verdict::NotAFile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: Held = Held::File { size: 10, mtime: 100 };

    #[test]
    fn under_update_the_newer_receiver_file_is_kept() {
        let unknown = || Same::Unknown;
        let up =
            |held, size, mtime, same: fn() -> Same, force| decide(held, (size, mtime), same, Existing::Update, force);
        // Nothing there: sent, replacing nothing.
        assert_eq!(up(Held::Nothing, 10, 100, unknown, false), Verdict::Send { replace: false });
        // The quick check: same size and mtime is the same file.
        assert_eq!(up(FILE, 10, 100, unknown, false), Verdict::Unchanged);
        // Newer source: replaces; not newer: refused unless forced.
        assert_eq!(up(FILE, 11, 101, unknown, false), Verdict::Send { replace: true });
        assert_eq!(up(FILE, 11, 100, unknown, false), Verdict::NotOlder);
        assert_eq!(up(FILE, 11, 99, unknown, false), Verdict::NotOlder);
        assert_eq!(up(FILE, 11, 99, unknown, true), Verdict::Send { replace: true });
        // Contents compared: they decide, whatever the times say.
        assert_eq!(up(FILE, 10, 100, || Same::Known(false), false), Verdict::NotOlder);
        assert_eq!(up(FILE, 10, 5, || Same::Known(true), false), Verdict::Unchanged);
        assert_eq!(up(FILE, 10, 100, || Same::Known(false), true), Verdict::Send { replace: true });
        // A directory is never replaced by a file, forced or not.
        assert_eq!(up(Held::Dir, 10, 100, unknown, true), Verdict::IsDir);
        // A link or special file: only when forced, as a name.
        assert_eq!(up(Held::Other, 10, 100, unknown, false), Verdict::NotAFile);
        assert_eq!(up(Held::Other, 10, 100, unknown, true), Verdict::Send { replace: true });
    }

    #[test]
    fn by_default_the_source_wins() {
        let wins = |held, size, mtime, same: fn() -> Same| decide(held, (size, mtime), same, Existing::Replace, false);
        assert_eq!(wins(FILE, 10, 100, || Same::Unknown), Verdict::Unchanged);
        // Older or newer, a receiver file that differs is replaced: a
        // rollback propagates.
        assert_eq!(wins(FILE, 11, 99, || Same::Unknown), Verdict::Send { replace: true });
        assert_eq!(wins(FILE, 10, 100, || Same::Known(false)), Verdict::Send { replace: true });
        assert_eq!(wins(Held::Other, 10, 100, || Same::Unknown), Verdict::Send { replace: true });
        assert_eq!(wins(Held::Dir, 10, 100, || Same::Unknown), Verdict::IsDir);
    }

    #[test]
    fn ignore_existing_leaves_anything_there_alone() {
        let ignore = |held, force| decide(held, (11, 200), || Same::Known(false), Existing::Ignore, force);
        assert_eq!(ignore(FILE, true), Verdict::Kept);
        assert_eq!(ignore(Held::Other, true), Verdict::Kept);
        assert_eq!(ignore(Held::Nothing, false), Verdict::Send { replace: false });
        assert_eq!(ignore(Held::Dir, false), Verdict::IsDir);
    }

    #[test]
    fn contents_are_asked_only_of_a_file() {
        let asked = std::cell::Cell::new(false);
        let ask = || {
            asked.set(true);
            Same::Unknown
        };
        decide(Held::Nothing, (1, 1), ask, Existing::Replace, false);
        decide(Held::Dir, (1, 1), ask, Existing::Replace, false);
        decide(Held::Other, (1, 1), ask, Existing::Replace, false);
        decide(FILE, (1, 1), ask, Existing::Ignore, false);
        assert!(!asked.get());
        decide(FILE, (1, 1), ask, Existing::Replace, false);
        assert!(asked.get());
    }
}
