//! Which paths of a tree a copy takes: gitignore-style globs, matched with
//! `globset`.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The paths a tree copy leaves out. A path (relative to the directory
/// being copied, `/`-separated) is left out if it, or a directory above
/// it, matches an exclude pattern and no include pattern: includes win,
/// so `--include '*.rs' --exclude '*'` copies the Rust files of every
/// directory (directories are matched too: add `--include '*/'` to keep
/// descending, as with rsync).
///
/// Patterns are gitignore's: one without a `/` matches a name at any
/// depth (`*.o`, `target`); one with a `/` inside or at its start is
/// anchored at the copied directory (`docs/*.md`, `/build`); a trailing
/// `/` matches directories only (`cache/`); `*` stays within one
/// component, `**` crosses them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    exclude: Rules,
    include: Rules,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    /// Patterns that match any path.
    any: Option<GlobSet>,
    /// Patterns that match directories only.
    dirs: Option<GlobSet>,
}

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("bad pattern {pattern:?}: {source}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// Why.
    #[source]
    pub source: globset::Error,
}

impl Rules {
    fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Rules, PatternError> {
        let (mut any, mut dirs) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut n_any, mut n_dirs) = (0, 0);
        for p in patterns {
            let p = p.as_ref();
            let dir_only = p.ends_with('/');
            let body = p.trim_end_matches('/');
            let anchored = body.contains('/');
            let body = body.trim_start_matches('/');
            let glob = if anchored { body.to_owned() } else { format!("**/{body}") };
            let glob = GlobBuilder::new(&glob)
                .literal_separator(true)
                .build()
                .map_err(|source| PatternError { pattern: p.to_owned(), source })?;
            if dir_only {
                dirs.add(glob);
                n_dirs += 1;
            } else {
                any.add(glob);
                n_any += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize, p: &str| -> Result<Option<GlobSet>, PatternError> {
            if n == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|source| PatternError { pattern: p.to_owned(), source })
        };
        Ok(Rules { any: build(any, n_any, "(all)")?, dirs: build(dirs, n_dirs, "(all)")? })
    }

    fn matches(&self, rel: &str, is_dir: bool) -> bool {
        self.any.as_ref().is_some_and(|s| s.is_match(rel))
            || (is_dir && self.dirs.as_ref().is_some_and(|s| s.is_match(rel)))
    }
}

impl Filter {
    /// A filter from exclude and include patterns.
    ///
    /// # Errors
    ///
    /// The first pattern that is not a valid glob.
    pub fn new<S: AsRef<str>>(exclude: &[S], include: &[S]) -> Result<Filter, PatternError> {
        Ok(Filter { exclude: Rules::new(exclude)?, include: Rules::new(include)? })
    }

    /// Exclude patterns from a file, one a line; blank lines and lines
    /// starting with `#` are skipped (as `.gitignore`).
    pub fn patterns_from(text: &str) -> Vec<String> {
        text.lines().map(str::trim_end).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
    }

    /// Whether nothing is ever left out.
    pub fn is_empty(&self) -> bool {
        self.exclude.any.is_none() && self.exclude.dirs.is_none()
    }

    fn one(&self, rel: &str, is_dir: bool) -> bool {
        !self.exclude.matches(rel, is_dir) || self.include.matches(rel, is_dir)
    }

    /// Whether the copy takes `rel` (a file, or with `is_dir` a
    /// directory): neither it nor a directory above it is left out.
    pub fn allows(&self, rel: &str, is_dir: bool) -> bool {
        if self.is_empty() {
            return true;
        }
        let mut at = 0;
        while let Some(slash) = rel[at..].find('/') {
            if !self.one(&rel[..at + slash], true) {
                return false;
            }
            at += slash + 1;
        }
        self.one(rel, is_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_style_patterns() {
        let f = Filter::new(&["*.o", "/build", "cache/", "docs/**/*.tmp"], &[]).unwrap();
        assert!(!f.allows("a.o", false) && !f.allows("x/y/a.o", false), "a name at any depth");
        assert!(f.allows("a.oo", false));
        assert!(!f.allows("build", true) && !f.allows("build/x.c", false), "anchored, and what is below");
        assert!(f.allows("src/build", true), "anchored at the copied directory only");
        assert!(!f.allows("cache", true) && !f.allows("a/cache/z", false) && f.allows("cache", false), "dirs only");
        assert!(!f.allows("docs/a/b/c.tmp", false) && f.allows("c.tmp", false));
        assert!(Filter::default().allows("anything/at/all", false));
        assert!(Filter::new(&["a[", "b"], &[] as &[&str]).is_err());
    }

    #[test]
    fn includes_win() {
        let f = Filter::new(&["*"], &["*/", "*.rs"]).unwrap();
        assert!(f.allows("src/main.rs", false) && f.allows("src", true));
        assert!(!f.allows("src/notes.txt", false) && !f.allows("README", false));
        assert_eq!(Filter::patterns_from("# c\n\n*.o\ntarget/  \n"), ["*.o", "target/"]);
    }
}
