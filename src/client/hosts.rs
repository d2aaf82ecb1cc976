//! Host sets as pdsh and ClusterShell write them: `web[01-20]`,
//! `10.0.0.[1-9]`, `db[1-3,7]`, comma lists, `@group`; and the reverse,
//! folding a list of hosts back into the shortest such set
//! (`web[01-05,07]`), for output that names many hosts at once.
//!
//! ```
//! use framewire::client::hosts::{expand, fold};
//! let hosts = expand("web[01-03],db[1,3]", &|_| None).unwrap();
//! assert_eq!(hosts, ["web01", "web02", "web03", "db1", "db3"]);
//! assert_eq!(fold(&hosts), "db[1,3],web[01-03]");
//! ```

use std::collections::{BTreeMap, HashSet};

/// At most this many hosts in one set: a typo like `h[1-999999999]`
/// is refused rather than filling memory.
pub const MAX_HOSTS: usize = 100_000;

/// At most this many steps (a host made from a pattern, a group's member
/// read) to expand one set, repeats included: each group is expanded
/// once however often it is named, but groups that name the same large
/// ranges over and over could still take long for few hosts.
pub const MAX_EXPANSION_STEPS: usize = 10 * MAX_HOSTS;

/// A host set that cannot be expanded, with the pattern at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostSetError {
    /// Brackets that do not pair, an empty item, a bad range.
    #[error("{pattern:?}: {why}")]
    Malformed {
        /// The item at fault.
        pattern: String,
        /// What is wrong with it.
        why: String,
    },
    /// `@NAME` with no such group.
    #[error("@{0}: no such group (groups are in the config file's [groups])")]
    UnknownGroup(String),
    /// A group that contains itself, through others or directly.
    #[error("@{0}: the group contains itself")]
    GroupCycle(String),
    /// More than [`MAX_HOSTS`].
    #[error("{pattern:?}: more than {MAX_HOSTS} hosts")]
    TooMany {
        /// The item that went over.
        pattern: String,
    },
    /// More than [`MAX_EXPANSION_STEPS`] to expand the set.
    #[error("{pattern:?}: expanding the set takes more than {MAX_EXPANSION_STEPS} steps (groups naming the same hosts over and over)")]
    TooMuchWork {
        /// The item that went over.
        pattern: String,
    },
}

fn malformed(pattern: &str, why: impl Into<String>) -> HostSetError {
    HostSetError::Malformed { pattern: pattern.to_owned(), why: why.into() }
}

/// Expands `expr` into hosts, in order, each once. `groups` answers
/// `@NAME` with the group's members (each itself a host set).
///
/// # Errors
///
/// [`HostSetError`] for a malformed item, an unknown group, a group that
/// contains itself, or more than [`MAX_HOSTS`] hosts.
pub fn expand(expr: &str, groups: &dyn Fn(&str) -> Option<Vec<String>>) -> Result<Vec<String>, HostSetError> {
    let mut x =
        Expansion { groups, stack: Vec::new(), done: HashSet::new(), out: Vec::new(), seen: HashSet::new(), steps: 0 };
    x.expand(expr)?;
    Ok(x.out)
}

/// `expr` without the hosts of `exclude` (`-x`).
///
/// # Errors
///
/// As [`expand`], for either.
pub fn expand_excluding(
    expr: &str,
    exclude: Option<&str>,
    groups: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<String>, HostSetError> {
    let mut hosts = expand(expr, groups)?;
    if let Some(exclude) = exclude {
        let gone: HashSet<String> = expand(exclude, groups)?.into_iter().collect();
        hosts.retain(|h| !gone.contains(h));
    }
    Ok(hosts)
}

/// One expansion under way.
struct Expansion<'a> {
    groups: &'a dyn Fn(&str) -> Option<Vec<String>>,
    /// The groups being expanded, outermost first: one named again
    /// inside itself is a cycle.
    stack: Vec<String>,
    /// The groups expanded already: their hosts are all in `out`, so a
    /// group named again adds nothing and is not expanded again (40
    /// levels that each name the next group twice would otherwise take
    /// 2^40 expansions).
    done: HashSet<String>,
    out: Vec<String>,
    seen: HashSet<String>,
    /// Steps taken, against [`MAX_EXPANSION_STEPS`].
    steps: usize,
}

impl Expansion<'_> {
    fn step(&mut self, n: usize, pattern: &str) -> Result<(), HostSetError> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_EXPANSION_STEPS {
            return Err(HostSetError::TooMuchWork { pattern: pattern.to_owned() });
        }
        Ok(())
    }

    fn expand(&mut self, expr: &str) -> Result<(), HostSetError> {
        for item in split_top(expr)? {
            let item = item.trim();
            if item.is_empty() {
                return Err(malformed(expr, "an empty item (two commas, or one at an end)"));
            }
            if let Some(name) = item.strip_prefix('@') {
                if self.stack.iter().any(|g| g == name) {
                    return Err(HostSetError::GroupCycle(name.to_owned()));
                }
                if self.done.contains(name) {
                    continue;
                }
                let members = (self.groups)(name).ok_or_else(|| HostSetError::UnknownGroup(name.to_owned()))?;
                self.step(members.len(), item)?;
                self.stack.push(name.to_owned());
                for member in &members {
                    self.expand(member)?;
                }
                self.stack.pop();
                self.done.insert(name.to_owned());
                continue;
            }
            let hosts = expand_item(item)?;
            self.step(hosts.len(), item)?;
            for host in hosts {
                if self.seen.insert(host.clone()) {
                    if self.out.len() == MAX_HOSTS {
                        return Err(HostSetError::TooMany { pattern: item.to_owned() });
                    }
                    self.out.push(host);
                }
            }
        }
        Ok(())
    }
}

/// Splits at the commas outside brackets.
fn split_top(expr: &str) -> Result<Vec<&str>, HostSetError> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in expr.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(|| malformed(expr, "a ']' without its '['"))?,
            ',' if depth == 0 => {
                parts.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed(expr, "a '[' without its ']'"));
    }
    parts.push(&expr[start..]);
    Ok(parts)
}

/// One item: text with zero or more `[ranges]`, their product in order.
/// A bracket holding anything but digits, `-` and `,` is text (an IPv6
/// address, `[::1]:9909`).
fn expand_item(item: &str) -> Result<Vec<String>, HostSetError> {
    let mut hosts = vec![String::new()];
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']').ok_or_else(|| malformed(item, "a '[' without its ']'"))?;
        let inner = &rest[open + 1..close];
        let prefix = &rest[..open];
        if inner.contains('[') {
            return Err(malformed(item, "brackets inside brackets"));
        }
        if !inner.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b',') {
            // Literal text, brackets included.
            hosts.iter_mut().for_each(|h| h.push_str(&rest[..=close]));
            rest = &rest[close + 1..];
            continue;
        }
        let numbers = ranges(item, inner)?;
        if hosts.len().saturating_mul(numbers.len()) > MAX_HOSTS {
            return Err(HostSetError::TooMany { pattern: item.to_owned() });
        }
        hosts = hosts.iter().flat_map(|h| numbers.iter().map(move |n| format!("{h}{prefix}{n}"))).collect();
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err(malformed(item, "a ']' without its '['"));
    }
    hosts.iter_mut().for_each(|h| h.push_str(rest));
    Ok(hosts)
}

/// `01-03,7` as `["01", "02", "03", "7"]`: a range keeps the zero
/// padding of its start (`[01-10]` is 01…10, `[8-10]` is 8, 9, 10).
fn ranges(item: &str, inner: &str) -> Result<Vec<String>, HostSetError> {
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if lo.is_empty() || hi.is_empty() || hi.contains('-') {
            return Err(malformed(item, format!("[{inner}]: {part:?} is not N or N-M")));
        }
        let too_long = || malformed(item, format!("[{inner}]: numbers of at most 9 digits"));
        let a: u64 = if lo.len() > 9 { return Err(too_long()) } else { lo.parse().map_err(|_| too_long())? };
        let b: u64 = if hi.len() > 9 { return Err(too_long()) } else { hi.parse().map_err(|_| too_long())? };
        if a > b {
            return Err(malformed(item, format!("[{inner}]: {part} runs backwards")));
        }
        if out.len() as u64 + (b - a + 1) > MAX_HOSTS as u64 {
            return Err(HostSetError::TooMany { pattern: item.to_owned() });
        }
        let width = if lo.len() > 1 && lo.starts_with('0') { lo.len() } else { 0 };
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

/// Folds hosts into the shortest set that expands to them (ignoring
/// order and repeats): hosts alike but for their last number share one
/// bracket (`web01`, `web02`, `web04` → `web[01-02,04]`); the others
/// stay as they are. Sets are sorted by their text.
pub fn fold(hosts: &[String]) -> String {
    // (prefix, suffix) -> the width of the zero-padded numbers among them.
    let mut padded: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let split: Vec<Option<(&str, &str, &str)>> = hosts.iter().map(|h| last_number(h)).collect();
    for (prefix, digits, suffix) in split.iter().flatten() {
        if digits.len() > 1 && digits.starts_with('0') {
            let w = padded.entry((prefix, suffix)).or_default();
            *w = (*w).max(digits.len());
        }
    }
    // (prefix, suffix, width) -> numbers; width 0 means unpadded.
    let mut groups: BTreeMap<(&str, &str, usize), std::collections::BTreeSet<u64>> = BTreeMap::new();
    let mut plain = std::collections::BTreeSet::new();
    for (host, parts) in hosts.iter().zip(&split) {
        let Some((prefix, digits, suffix)) = parts else {
            plain.insert(host.clone());
            continue;
        };
        let Ok(n) = digits.parse::<u64>() else {
            plain.insert(host.clone());
            continue;
        };
        let w = padded.get(&(*prefix, *suffix)).copied().unwrap_or(0);
        let width = match (digits.starts_with('0') && digits.len() > 1, digits.len() >= w) {
            (true, _) => digits.len(),
            (false, true) => w,
            (false, false) => 0,
        };
        groups.entry((prefix, suffix, width)).or_default().insert(n);
    }
    let mut sets: Vec<String> = plain.into_iter().collect();
    for ((prefix, suffix, width), numbers) in groups {
        let numbers: Vec<u64> = numbers.into_iter().collect();
        if numbers.len() == 1 {
            sets.push(format!("{prefix}{:0width$}{suffix}", numbers[0]));
            continue;
        }
        let mut runs = Vec::new();
        let mut i = 0;
        while i < numbers.len() {
            let mut j = i;
            while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
                j += 1;
            }
            runs.push(if i == j {
                format!("{:0width$}", numbers[i])
            } else {
                format!("{:0width$}-{:0width$}", numbers[i], numbers[j])
            });
            i = j + 1;
        }
        sets.push(format!("{prefix}[{}]{suffix}", runs.join(",")));
    }
    sets.sort();
    sets.join(",")
}

/// A host's last run of digits, with what comes before and after it.
fn last_number(host: &str) -> Option<(&str, &str, &str)> {
    let end = host.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = host[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    if end - start > 9 || host.contains(['[', ']', ',']) {
        return None;
    }
    Some((&host[..start], &host[start..end], &host[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_groups(_: &str) -> Option<Vec<String>> {
        None
    }

    fn x(expr: &str) -> Vec<String> {
        expand(expr, &no_groups).unwrap()
    }

    #[test]
    fn ranges_padding_and_products() {
        assert_eq!(x("web[01-03]"), ["web01", "web02", "web03"]);
        assert_eq!(x("web[8-10]"), ["web8", "web9", "web10"]);
        assert_eq!(x("web[098-100]"), ["web098", "web099", "web100"]);
        assert_eq!(x("db[1-3,7]"), ["db1", "db2", "db3", "db7"]);
        assert_eq!(x("127.0.0.[1-3]"), ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        assert_eq!(x("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(x("a,b,a"), ["a", "b"], "each host once");
        assert_eq!(x("web[1-2]:9910"), ["web1:9910", "web2:9910"]);
        assert_eq!(x("[::1]:9909,h"), ["[::1]:9909", "h"], "IPv6 brackets are text");
        assert_eq!(x("h[5]"), ["h5"]);
    }

    #[test]
    fn groups_and_excludes() {
        let groups = |name: &str| match name {
            "web" => Some(vec!["web[1-3]".to_owned(), "@db".to_owned()]),
            "db" => Some(vec!["db1".to_owned()]),
            "loop" => Some(vec!["@loop2".to_owned()]),
            "loop2" => Some(vec!["@loop".to_owned()]),
            _ => None,
        };
        assert_eq!(expand("@web,x", &groups).unwrap(), ["web1", "web2", "web3", "db1", "x"]);
        assert_eq!(expand_excluding("@web", Some("web2,@db"), &groups).unwrap(), ["web1", "web3"]);
        assert_eq!(expand("@nope", &groups), Err(HostSetError::UnknownGroup("nope".into())));
        assert!(matches!(expand("@loop", &groups), Err(HostSetError::GroupCycle(_))));
    }

    /// 40 levels of groups that each name the next twice (issue 28, point
    /// 11): 41 hosts, found at once, each group expanded once; never
    /// 2^40 expansions.
    #[test]
    fn nested_groups_naming_the_next_twice_expand_once_each() {
        let asked = std::cell::Cell::new(0usize);
        let groups = |name: &str| {
            asked.set(asked.get() + 1);
            let level: usize = name.strip_prefix('g')?.parse().ok()?;
            if level == 40 {
                return Some(vec!["leaf".to_owned()]);
            }
            let next = format!("@g{}", level + 1);
            Some(vec![format!("h{level}"), next.clone(), next])
        };
        let started = std::time::Instant::now();
        let hosts = expand("@g0,@g0", &groups).unwrap();
        assert_eq!(hosts.len(), 41, "{hosts:?}");
        assert_eq!((hosts[0].as_str(), hosts[40].as_str()), ("h0", "leaf"));
        assert_eq!(asked.get(), 41, "each group looked up once");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

        // Different groups naming the same big range over and over: the
        // work is bounded too, with its own error.
        let wide = |name: &str| {
            let n: usize = name.strip_prefix('w')?.parse().ok()?;
            Some(if n == 0 { (1..=20).map(|k| format!("@w{k}")).collect() } else { vec!["h[1-99999]".to_owned()] })
        };
        let e = expand("@w0", &wide).unwrap_err();
        assert!(matches!(e, HostSetError::TooMuchWork { .. }), "{e:?}");
        assert!(e.to_string().contains("more than 1000000 steps"), "{e}");
    }

    #[test]
    fn malformed_sets_are_one_clear_error() {
        for (bad, says) in [
            ("web[1-3", "without its ']'"),
            ("web1-3]", "without its '['"),
            ("a,,b", "empty item"),
            ("web[3-1]", "runs backwards"),
            ("web[1-]", "is not N or N-M"),
            ("web[1-2-3]", "is not N or N-M"),
            ("web[[1]]", "inside brackets"),
            ("web[1-9999999999]", "at most 9 digits"),
        ] {
            let e = expand(bad, &no_groups).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(matches!(expand("h[1-999999]", &no_groups), Err(HostSetError::TooMany { .. })));
        assert!(matches!(expand("a[1-400]b[1-400]", &no_groups), Err(HostSetError::TooMany { .. })));
    }

    #[test]
    fn folding_is_the_inverse() {
        let hosts = x("web[01-05,07],db1,db2,db3,mail,web10");
        assert_eq!(fold(&hosts), "db[1-3],mail,web[01-05,07,10]");
        assert_eq!(fold(&x("n[8-11]")), "n[8-11]");
        assert_eq!(fold(&x("n5,n05")), "n05,n5");
        assert_eq!(fold(&x("127.0.0.[1-3,9]")), "127.0.0.[1-3,9]");
        assert_eq!(fold(&x("r1n1,r1n2,r2n1")), "r1n[1-2],r2n1");
        assert_eq!(fold(&["solo".to_owned()]), "solo");
        assert_eq!(fold(&[]), "");
        for expr in ["web[01-05,07]", "a[1-3],b[10-12],c", "h[001-100]"] {
            let hosts = x(expr);
            let mut again = x(&fold(&hosts));
            let mut sorted = hosts.clone();
            again.sort();
            sorted.sort();
            assert_eq!(again, sorted, "{expr}");
        }
    }
}
