//! `serve --authorized-keys FILE`: who may connect, and what each key may
//! do, in OpenSSH's `authorized_keys` syntax (sshd(8), "AUTHORIZED_KEYS
//! FILE FORMAT"): options, then the key as `id_ed25519.pub` has it, then a
//! comment. Options only ever narrow a key; one this server does not know
//! refuses the whole line, with a warning naming it, rather than being
//! ignored (which could leave a key wider than its owner meant).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ssh_key::{Algorithm, PublicKey};

/// One thing a key may do; [`Rights`] holds a set of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Verb {
    /// `list`, `stat`, `tree_list`: see names, sizes, times.
    List = 1,
    /// `get`, `tree_get`: read contents.
    Get = 2,
    /// `put`, `tree_put`: write new files (and links) that are not there,
    /// making the missing directories they go into.
    Put = 4,
    /// Replace or change what is there (an upload over a file, a rename
    /// over one, an existing file's attributes).
    Overwrite = 8,
    /// `remove`, and a mirror's removals.
    Delete = 16,
    /// `rename`.
    Rename = 32,
    /// `mkdir` requests, and a tree upload's directory entries (an
    /// upload's files make the directories they need under `put`).
    Mkdir = 64,
    /// `exec`: run commands.
    Exec = 128,
    /// `pty`, `env`: a terminal.
    Pty = 256,
}

impl Verb {
    /// Every verb, as `permit=` spells them.
    pub const ALL: [(&'static str, Verb); 9] = [
        ("list", Verb::List),
        ("get", Verb::Get),
        ("put", Verb::Put),
        ("overwrite", Verb::Overwrite),
        ("delete", Verb::Delete),
        ("rename", Verb::Rename),
        ("mkdir", Verb::Mkdir),
        ("exec", Verb::Exec),
        ("pty", Verb::Pty),
    ];

    /// As `permit=` spells it.
    pub fn name(self) -> &'static str {
        Verb::ALL.iter().find(|(_, v)| *v == self).map_or("?", |(n, _)| n)
    }
}

/// What one key may do: a set of [`Verb`]s, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    verbs: u16,
    /// `dir=`: the key's root, a plain relative directory beneath the
    /// served root (checked); `None`: the served root.
    pub dir: Option<String>,
}

impl Default for Rights {
    /// Every right, at the served root: a key without options, and the
    /// shared key.
    fn default() -> Self {
        Rights { verbs: u16::MAX, dir: None }
    }
}

impl Rights {
    /// Whether `verb` is granted.
    pub fn allows(&self, verb: Verb) -> bool {
        self.verbs & verb as u16 != 0
    }

    /// Whether every right is granted, at the served root.
    pub fn is_full(&self) -> bool {
        Verb::ALL.iter().all(|(_, v)| self.allows(*v)) && self.dir.is_none()
    }

    fn only(&mut self, verbs: u16) {
        self.verbs &= verbs;
    }

    /// The verbs granted, as `permit=` would spell them.
    pub fn names(&self) -> String {
        let names: Vec<&str> = Verb::ALL.iter().filter(|(_, v)| self.allows(*v)).map(|(n, _)| *n).collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(",")
        }
    }
}

/// One key of the file and what narrows it.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The key.
    pub key: PublicKey,
    /// Its `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Its comment (often the person's name or address).
    pub comment: String,
    /// What it may do.
    pub rights: Rights,
    /// `from=`: where it may connect from (`None`: anywhere).
    pub from: Option<Patterns>,
    /// `expiry-time=`: when it stops being accepted.
    pub expires: Option<SystemTime>,
}

impl Authorized {
    /// Whether it may be used now from `ip`: `Err` says why not.
    pub fn admits(&self, ip: IpAddr, now: SystemTime) -> Result<(), String> {
        if let Some(at) = self.expires {
            if now >= at {
                return Err("the key has expired (expiry-time)".into());
            }
        }
        if let Some(from) = &self.from {
            if !from.matches(ip) {
                return Err(format!("the key may not connect from {ip} (from=)"));
            }
        }
        Ok(())
    }

    /// How the log names it: its comment and fingerprint.
    pub fn name(&self) -> String {
        if self.comment.is_empty() {
            self.fingerprint.clone()
        } else {
            format!("{} {}", self.comment, self.fingerprint)
        }
    }
}

/// The keys of one `authorized_keys` file, by their 32 public bytes: a
/// keyed lookup, however many there are.
#[derive(Debug, Default)]
pub struct AuthorizedKeys {
    keys: HashMap<[u8; 32], Arc<Authorized>>,
}

/// A line of the file refused, and why (each is logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its line number, from 1.
    pub line: usize,
    /// Why.
    pub why: String,
}

impl AuthorizedKeys {
    /// Parses a file's text: the keys taken, and each line refused.
    pub fn parse(text: &str) -> (AuthorizedKeys, Vec<Refused>) {
        let mut keys = HashMap::new();
        let mut refused = Vec::new();
        // Every line of each key, to find keys listed twice.
        let mut lines: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A key's line refused still counts as one of its lines.
            let bytes = key_part(line);
            if let Some(bytes) = bytes {
                lines.entry(bytes).or_default().push(i + 1);
            }
            match parse_line(line) {
                Ok(entry) => {
                    if let Some(bytes) = ed25519_bytes(&entry.key) {
                        keys.insert(bytes, Arc::new(entry));
                    }
                }
                Err(why) => refused.push(Refused { line: i + 1, why }),
            }
        }
        // A key listed twice is refused on every line: which of its
        // lines was meant (sshd takes the first, an editor's habit may
        // add the narrow one above or below) is not for the server to
        // guess, and guessing wrong would widen it.
        for (bytes, at) in lines.into_iter().filter(|(_, at)| at.len() > 1) {
            keys.remove(&bytes);
            let list = at.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            for &line in &at {
                refused.push(Refused { line, why: format!("the same key is on lines {list}: each is refused") });
            }
        }
        refused.sort_by_key(|r| r.line);
        (AuthorizedKeys { keys }, refused)
    }

    /// Reads `path`.
    ///
    /// # Errors
    ///
    /// If it cannot be read.
    pub fn read(path: &Path) -> std::io::Result<(AuthorizedKeys, Vec<Refused>)> {
        Ok(AuthorizedKeys::parse(&std::fs::read_to_string(path)?))
    }

    /// The entry for `key`, if it is listed.
    pub fn get(&self, key: &PublicKey) -> Option<&Arc<Authorized>> {
        self.keys.get(&ed25519_bytes(key)?)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn ed25519_bytes(key: &PublicKey) -> Option<[u8; 32]> {
    key.key_data().ed25519().map(|k| k.0)
}

/// The Ed25519 key a line names, whatever its options say (to find a key
/// listed twice, even on a line refused for its options).
fn key_part(line: &str) -> Option<[u8; 32]> {
    let mut fields = line[line.find("ssh-ed25519 ")?..].split_ascii_whitespace();
    let (kind, data) = (fields.next()?, fields.next()?);
    ed25519_bytes(&PublicKey::from_openssh(&format!("{kind} {data}")).ok()?)
}

/// Key types a line may name (OpenSSH's), whether this server takes them
/// or not: what tells the options from the key.
const KEY_TYPES: [&str; 9] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com",
];

/// One line: options (if any), then the key and its comment.
fn parse_line(line: &str) -> Result<Authorized, String> {
    let first = line.split_ascii_whitespace().next().unwrap_or_default();
    let (options, rest) = if KEY_TYPES.contains(&first) {
        ("", line)
    } else {
        let end = options_end(line)?;
        (&line[..end], line[end..].trim_start())
    };
    let mut fields = rest.splitn(3, |c: char| c.is_ascii_whitespace());
    let (kind, data) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
    let comment = fields.next().unwrap_or_default().trim().to_owned();
    let key = PublicKey::from_openssh(&format!("{kind} {data}")).map_err(|e| format!("not a public key ({e})"))?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!("a {} key: this server takes Ed25519 keys only", key.algorithm()));
    }
    let fingerprint = super::identity::fingerprint(&key);
    let mut entry = Authorized { key, fingerprint, comment, rights: Rights::default(), from: None, expires: None };
    apply_options(&mut entry, options)?;
    Ok(entry)
}

/// Where the options end: at the first space outside double quotes.
fn options_end(line: &str) -> Result<usize, String> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_ascii_whitespace() && !quoted => return Ok(i),
            _ => {}
        }
    }
    Err(if quoted { "an unterminated quote in the options".into() } else { "no key after the options".into() })
}

/// Splits options at commas outside quotes: `(name, value)`, the value's
/// quotes taken off (`\"` inside it is a quote).
fn split_options(options: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let (mut name, mut value, mut in_value, mut quoted, mut escaped) =
        (String::new(), String::new(), false, false, false);
    let mut push = |name: &mut String, value: &mut String, in_value: bool| {
        out.push((std::mem::take(name).to_ascii_lowercase(), in_value.then(|| std::mem::take(value))));
    };
    for c in options.chars() {
        if escaped {
            value.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' if in_value => quoted = !quoted,
            ',' if !quoted => {
                push(&mut name, &mut value, in_value);
                in_value = false;
            }
            '=' if !in_value => in_value = true,
            c if in_value => value.push(c),
            c => name.push(c),
        }
    }
    if !name.is_empty() {
        push(&mut name, &mut value, in_value);
    }
    if out.iter().any(|(n, _)| n.is_empty()) {
        return Err("an empty option".into());
    }
    Ok(out)
}

/// OpenSSH options that only take away what framewire never gives
/// (forwarding, X11, `~/.ssh/rc`): accepted, as they narrow nothing here.
const NARROWING_NOOPS: [&str; 6] = [
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-user-rc",
    "no-touch-required",
    "cert-authority-off",
];

fn apply_options(entry: &mut Authorized, options: &str) -> Result<(), String> {
    if options.is_empty() {
        return Ok(());
    }
    let all = u16::MAX;
    let mut permit: Option<u16> = None;
    let mut restrict = false;
    let mut narrow = all;
    for (name, value) in split_options(options)? {
        let need = |v: Option<String>| v.ok_or_else(|| format!("option {name} needs a value ({name}=\"…\")"));
        match name.as_str() {
            "restrict" => restrict = true,
            "read-only" => narrow &= Verb::List as u16 | Verb::Get as u16,
            "no-exec" => narrow &= !(Verb::Exec as u16 | Verb::Pty as u16),
            "no-pty" => narrow &= !(Verb::Pty as u16),
            "permit" => {
                let mut verbs = 0;
                for word in need(value)?.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let (_, verb) = Verb::ALL.iter().find(|(n, _)| *n == word).ok_or_else(|| {
                        format!("permit=: unknown verb {word:?} (list,get,put,overwrite,delete,rename,mkdir,exec,pty)")
                    })?;
                    verbs |= *verb as u16;
                }
                permit = Some(permit.map_or(verbs, |p| p | verbs));
            }
            "dir" => {
                let dir = need(value)?;
                let dir = dir.trim_matches('/');
                let plain = !dir.is_empty()
                    && dir.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                    && !dir.contains('\0');
                if !plain {
                    return Err(format!("dir=\"{dir}\": a directory below the served root, without . or .."));
                }
                entry.rights.dir = Some(dir.to_owned());
            }
            "from" => entry.from = Some(Patterns::parse(&need(value)?)?),
            "expiry-time" => entry.expires = Some(expiry(&need(value)?)?),
            n if NARROWING_NOOPS.contains(&n) => {}
            other => return Err(format!("unknown option {other:?}: the line is refused rather than the key widened")),
        }
    }
    let granted = match (restrict, permit) {
        (_, Some(p)) => p,
        (true, None) => 0,
        (false, None) => all,
    };
    entry.rights.only(granted & narrow);
    Ok(())
}

/// `expiry-time="YYYYMMDD[HHMM[SS]]"`, in this system's time zone (as
/// sshd reads it), or UTC with a trailing `Z`.
fn expiry(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("expiry-time=\"{text}\": expected YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (text, false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).map_or(0, |s| s.parse::<i32>().unwrap_or(0));
    // SAFETY: a zeroed `tm` is a valid value; `timegm`/`mktime` read
    // and normalise it and touch nothing else.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = num(0..4) - 1900;
    tm.tm_mon = num(4..6) - 1;
    tm.tm_mday = num(6..8);
    tm.tm_hour = num(8..10);
    tm.tm_min = num(10..12);
    tm.tm_sec = num(12..14);
    tm.tm_isdst = -1;
    if !(0..12).contains(&tm.tm_mon) || !(1..=31).contains(&tm.tm_mday) || tm.tm_hour > 23 || tm.tm_min > 59 {
        return Err(bad());
    }
    // SAFETY: `tm` is a valid, initialised value owned here.
    let secs = unsafe {
        if utc {
            libc::timegm(&mut tm)
        } else {
            libc::mktime(&mut tm)
        }
    };
    if secs < 0 {
        return Err(bad());
    }
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64))
}

/// `from="PATTERNS"`: addresses, with `*` and `?` wildcards, or CIDR
/// blocks (`10.0.0.0/8`, `fd00::/8`), comma-separated; one starting with
/// `!` refuses what it matches whatever else matches. Host names are not
/// looked up (a name pattern matches nothing): write addresses.
#[derive(Debug, Clone)]
pub struct Patterns(Vec<(bool, Pattern)>);

#[derive(Debug, Clone)]
enum Pattern {
    Cidr(IpAddr, u8),
    Glob(globset::GlobMatcher),
}

impl Patterns {
    fn parse(text: &str) -> Result<Patterns, String> {
        let mut out = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let (negated, word) = match word.strip_prefix('!') {
                Some(w) => (true, w),
                None => (false, word),
            };
            let pattern = match word.split_once('/') {
                Some((addr, bits)) => {
                    let addr: IpAddr = addr.parse().map_err(|_| format!("from=: {word:?} is not an address/bits"))?;
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| format!("from=: {word:?}"))?;
                    // `::ffff:10.0.0.0/104` is the IPv4 block it spells.
                    match addr {
                        IpAddr::V6(v6) if bits >= 96 && v6.to_ipv4_mapped().is_some() => {
                            Pattern::Cidr(IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")), bits - 96)
                        }
                        _ => Pattern::Cidr(addr, bits),
                    }
                }
                // An address, however spelled, is that one address.
                None => match word.parse::<IpAddr>() {
                    Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
                        Pattern::Cidr(IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")), 32)
                    }
                    Ok(ip) => Pattern::Cidr(ip, if ip.is_ipv4() { 32 } else { 128 }),
                    // Wildcards over an address's text, as written
                    // lower-case (how addresses are shown); a host name
                    // would need a lookup, which a server never makes
                    // here: refused rather than never matching.
                    Err(_) if word.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '*' | '?')) => {
                        Pattern::Glob(
                            globset::GlobBuilder::new(&word.to_ascii_lowercase())
                                .literal_separator(false)
                                .build()
                                .map_err(|e| format!("from=: {word:?}: {e}"))?
                                .compile_matcher(),
                        )
                    }
                    Err(_) => {
                        return Err(format!(
                            "from=: {word:?} is a host name; names are not looked up: write addresses (CIDR, * and ?)"
                        ))
                    }
                },
            };
            out.push((negated, pattern));
        }
        if out.is_empty() {
            return Err("from=\"\": no pattern".into());
        }
        Ok(Patterns(out))
    }

    /// Whether `ip` may connect: some pattern matches and no negated one.
    pub fn matches(&self, ip: IpAddr) -> bool {
        // An IPv4 client on an IPv6 socket is named as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let text = ip.to_string();
        let hit = |p: &Pattern| match p {
            Pattern::Cidr(net, bits) => in_block(ip, *net, *bits),
            Pattern::Glob(g) => g.is_match(&text),
        };
        let mut any = false;
        for (negated, p) in &self.0 {
            if hit(p) {
                if *negated {
                    return false;
                }
                any = true;
            }
        }
        any
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The file the server reads its keys from, and what it read last: read
/// again when it changes (its size, time or inode), so a key added,
/// removed or narrowed counts from the next connection, without a
/// restart. A file that cannot be read refuses every key (as sshd's
/// `RevokedKeys`), said once in the log.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    state: std::sync::Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    /// What identified the file when it was read (`None`: unreadable).
    stamp: Option<(u64, u64, i64, i64)>,
    keys: Arc<AuthorizedKeys>,
    /// Bumped on every change: live sessions compare it.
    generation: u64,
    /// Whether the last read failed (logged once).
    failed: bool,
}

impl KeyFile {
    /// Reads `path` a first time.
    ///
    /// # Errors
    ///
    /// If it cannot be read now (a server does not start on a file it
    /// cannot read).
    pub fn open(path: &Path) -> std::io::Result<KeyFile> {
        let file = KeyFile { path: path.to_owned(), state: std::sync::Mutex::new(Loaded::default()) };
        std::fs::metadata(path)?;
        file.current();
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys as the file says now (read again if it changed), and the
    /// generation they belong to.
    pub fn current(&self) -> (Arc<AuthorizedKeys>, u64) {
        let mut state = self.state.lock().expect("key file state");
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.size(), m.mtime(), m.mtime_nsec())
        });
        if stamp.is_some() && stamp == state.stamp {
            return (state.keys.clone(), state.generation);
        }
        let read = stamp.and_then(|_| AuthorizedKeys::read(&self.path).map_err(|e| (e, ())).ok());
        match read {
            Some((keys, refused)) => {
                for r in &refused {
                    tracing::warn!(file = %self.path.display(), line = r.line, "authorized key refused: {}", r.why);
                }
                tracing::info!(file = %self.path.display(), keys = keys.len(), "authorized keys read");
                state.keys = Arc::new(keys);
                state.failed = false;
            }
            None => {
                if !state.failed {
                    tracing::error!(file = %self.path.display(), "authorized keys cannot be read: every key is refused");
                }
                state.keys = Arc::new(AuthorizedKeys::default());
                state.failed = true;
            }
        }
        state.stamp = stamp;
        state.generation += 1;
        (state.keys.clone(), state.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLVfl3gvj7pzd3ZbDIvBk7vuCWfdpVof9Czdyo5ISR2";

    fn one(line: &str) -> Result<Authorized, String> {
        parse_line(line)
    }

    #[test]
    fn options_narrow_a_key_and_unknown_ones_refuse_it() {
        let full = one(&format!("{KEY} alice@laptop")).unwrap();
        assert!(full.rights.is_full());
        assert_eq!(full.comment, "alice@laptop");
        let ro = one(&format!("read-only {KEY} backup")).unwrap();
        assert!(ro.rights.allows(Verb::List) && ro.rights.allows(Verb::Get));
        assert!(!ro.rights.allows(Verb::Put) && !ro.rights.allows(Verb::Exec) && !ro.rights.allows(Verb::Delete));
        let drop = one(&format!("restrict,permit=\"put,mkdir\",dir=\"incoming\" {KEY} dropbox")).unwrap();
        assert_eq!(drop.rights.names(), "put,mkdir");
        assert_eq!(drop.rights.dir.as_deref(), Some("incoming"));
        let restricted = one(&format!("restrict {KEY}")).unwrap();
        assert_eq!(restricted.rights.names(), "nothing");
        let no_exec = one(&format!("no-exec,no-port-forwarding {KEY}")).unwrap();
        assert!(
            !no_exec.rights.allows(Verb::Exec) && !no_exec.rights.allows(Verb::Pty) && no_exec.rights.allows(Verb::Put)
        );
        assert!(one(&format!("permit=\"put\",read-only {KEY}")).unwrap().rights.names() == "nothing");
        for bad in [
            format!("command=\"ls\" {KEY}"),
            format!("frobnicate {KEY}"),
            format!("permit=\"put,fly\" {KEY}"),
            format!("dir=\"../up\" {KEY}"),
            format!("dir=\"/\" {KEY}"),
            format!("expiry-time=\"2020\" {KEY}"),
            format!("from=\"10.0.0.0/99\" {KEY}"),
            format!("permit=\"put {KEY}"),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC nope".to_owned(),
        ] {
            assert!(one(&bad).is_err(), "{bad}");
        }
        let e = one(&format!("command=\"ls\" {KEY}")).unwrap_err();
        assert!(e.contains("command") && e.contains("refused"), "{e}");
    }

    #[test]
    fn exclusions_match_however_the_address_is_spelled() {
        let k = one(&format!("from=\"*,!2001:DB8::5,!::ffff:10.0.0.9,!10.1.0.0/16\" {KEY}")).unwrap();
        let now = SystemTime::now();
        for refused in ["2001:db8::5", "2001:db8:0::5", "10.0.0.9", "::ffff:10.0.0.9", "10.1.2.3"] {
            assert!(k.admits(refused.parse().unwrap(), now).is_err(), "{refused}");
        }
        assert!(k.admits("10.0.0.8".parse().unwrap(), now).is_ok());
        assert!(one(&format!("from=\"!gateway.lan\" {KEY}")).is_err(), "a host name never matches: refused");
        let mapped = one(&format!("from=\"::ffff:10.0.0.0/104\" {KEY}")).unwrap();
        assert!(mapped.admits("10.9.9.9".parse().unwrap(), now).is_ok());
        assert!(mapped.admits("11.0.0.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn a_key_listed_twice_is_refused_on_each_line() {
        let text = format!("read-only {KEY} narrow\n{KEY} wide\n");
        let (keys, refused) = AuthorizedKeys::parse(&text);
        assert!(keys.is_empty());
        assert_eq!(refused.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2]);
        // Even when one of its lines is refused for an option.
        let (keys, refused) = AuthorizedKeys::parse(&format!("typo {KEY}\n{KEY}\n"));
        assert!(keys.is_empty() && refused.len() >= 2, "{refused:?}");
    }

    #[test]
    fn from_and_expiry() {
        let k = one(&format!("from=\"127.0.0.*,!127.0.0.9,10.1.0.0/16\" {KEY}")).unwrap();
        let now = SystemTime::now();
        assert!(k.admits("127.0.0.1".parse().unwrap(), now).is_ok());
        assert!(k.admits("::ffff:127.0.0.2".parse().unwrap(), now).is_ok(), "v4 on a v6 socket");
        assert!(k.admits("127.0.0.9".parse().unwrap(), now).is_err(), "negated");
        assert!(k.admits("10.1.200.3".parse().unwrap(), now).is_ok());
        assert!(k.admits("10.2.0.1".parse().unwrap(), now).is_err());
        let old = one(&format!("expiry-time=\"20200101\" {KEY}")).unwrap();
        let e = old.admits("127.0.0.1".parse().unwrap(), now).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let later = one(&format!("expiry-time=\"29991231235959Z\" {KEY}")).unwrap();
        assert!(later.admits("127.0.0.1".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn a_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, format!("# people\n{KEY} alice\nfly ssh-rsa AAAA bob\n")).unwrap();
        let file = KeyFile::open(&path).unwrap();
        let (keys, generation) = file.current();
        assert_eq!(keys.len(), 1);
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(keys.get(&key).unwrap().comment, "alice");
        assert_eq!(file.current().1, generation, "unchanged: not read again");
        std::fs::write(&path, "").unwrap();
        let (keys, later) = file.current();
        assert!(keys.get(&key).is_none() && later > generation);
        std::fs::remove_file(&path).unwrap();
        assert!(file.current().0.is_empty(), "unreadable: every key refused");
    }
}
