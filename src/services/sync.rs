//! The sync rule: what a copy does with a file the receiver may already
//! hold under its name. One rule for both directions and both roots: the
//! client's plan (`client::tree`) and the server's `tree_put` (a
//! directory's and a bucket's) call it, so they cannot drift apart.
//!
//! As rsync's default quick check, with `--update`'s caution: a receiver
//! file that is the same (the same size and modification time, or the
//! same BLAKE3 when contents are compared) is left alone; one that differs
//! is replaced only when it is older than the source, or when asked
//! (`--force`, or a sender that compared the contents already).

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
    /// A file that differs and is not older, not asked to be replaced.
    NotOlder,
    /// A directory holds the name: a file never replaces it.
    IsDir,
    /// A symlink or special file holds the name, not asked to be replaced.
    NotAFile,
}

/// The rule for a source file of `size` and `mtime` against what the
/// receiver `held`; `same` says what is known of the contents (asked only
/// of a file of the same size, when contents are compared); `force`
/// replaces what differs, older or not, and what is not a file.
pub fn decide(held: Held, size: u64, mtime: i64, same: impl FnOnce() -> Same, force: bool) -> Verdict {
    match held {
        Held::Nothing => Verdict::Send { replace: false },
        Held::Dir => Verdict::IsDir,
        Held::File { size: theirs, mtime: their_mtime } => {
            let same = match same() {
                Same::Known(same) => same,
                Same::Unknown => theirs == size && their_mtime == mtime,
            };
            if same {
                Verdict::Unchanged
            } else if force || their_mtime < mtime {
                Verdict::Send { replace: true }
            } else {
                Verdict::NotOlder
            }
        }
        Held::Other if force => Verdict::Send { replace: true },
        Held::Other => Verdict::NotAFile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: Held = Held::File { size: 10, mtime: 100 };

    #[test]
    fn the_rule_both_sides_follow() {
        let unknown = || Same::Unknown;
        // Nothing there: sent, replacing nothing.
        assert_eq!(decide(Held::Nothing, 10, 100, unknown, false), Verdict::Send { replace: false });
        // The quick check: same size and mtime is the same file.
        assert_eq!(decide(FILE, 10, 100, unknown, false), Verdict::Unchanged);
        // Newer source: replaces; not newer: refused unless forced.
        assert_eq!(decide(FILE, 11, 101, unknown, false), Verdict::Send { replace: true });
        assert_eq!(decide(FILE, 11, 100, unknown, false), Verdict::NotOlder);
        assert_eq!(decide(FILE, 11, 99, unknown, false), Verdict::NotOlder);
        assert_eq!(decide(FILE, 11, 99, unknown, true), Verdict::Send { replace: true });
        // Contents compared: they decide, whatever the times say.
        assert_eq!(decide(FILE, 10, 100, || Same::Known(false), false), Verdict::NotOlder);
        assert_eq!(decide(FILE, 10, 5, || Same::Known(true), false), Verdict::Unchanged);
        assert_eq!(decide(FILE, 10, 100, || Same::Known(false), true), Verdict::Send { replace: true });
        // A directory is never replaced by a file, forced or not.
        assert_eq!(decide(Held::Dir, 10, 100, unknown, true), Verdict::IsDir);
        // A link or special file: only when forced, as a name.
        assert_eq!(decide(Held::Other, 10, 100, unknown, false), Verdict::NotAFile);
        assert_eq!(decide(Held::Other, 10, 100, unknown, true), Verdict::Send { replace: true });
    }

    #[test]
    fn contents_are_asked_only_of_a_file() {
        let asked = std::cell::Cell::new(false);
        let ask = || {
            asked.set(true);
            Same::Unknown
        };
        decide(Held::Nothing, 1, 1, ask, false);
        decide(Held::Dir, 1, 1, ask, false);
        decide(Held::Other, 1, 1, ask, false);
        assert!(!asked.get());
        decide(FILE, 1, 1, ask, false);
        assert!(asked.get());
    }
}
