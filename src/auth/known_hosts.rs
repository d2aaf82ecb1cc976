//! The client's `known_hosts`: each server's host key, keyed by host and
//! port, in OpenSSH's line format (`[host]:port ssh-ed25519 AAAA…`), so a
//! key that changed is refused (issue 31, point 2). Default file:
//! `~/.config/framewire/known_hosts`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ssh_key::PublicKey;

use super::identity::{fingerprint, to_wire};

/// What a `known_hosts` file says of a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// The key recorded for it.
    Match,
    /// None is recorded.
    Unknown,
    /// Another key is recorded, at this line.
    Changed {
        /// The recorded key's fingerprint.
        expected: String,
        /// Its line in the file, from 1.
        line: usize,
    },
}

/// Why a host key is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// The recorded key differs: someone may be in the middle.
    #[error(
        "the host key of {host} has CHANGED: expected {expected}, got {got}. Someone may be intercepting the \
         connection, or the server's key was replaced; if you know it was, remove line {line} of {} \
         (framewire known-hosts --remove '{host}') and connect again",
        file.display()
    )]
    Changed {
        /// `[host]:port`.
        host: String,
        /// The recorded key's fingerprint.
        expected: String,
        /// The offered key's.
        got: String,
        /// The file.
        file: PathBuf,
        /// The recorded key's line.
        line: usize,
    },
    /// Unknown, and not to be recorded without asking.
    #[error(
        "the host key of {host} is not known ({got}); check it with the server's admin, then connect from a \
         terminal to be asked, or give --accept-new to record it"
    )]
    Unknown {
        /// `[host]:port`.
        host: String,
        /// Its fingerprint.
        got: String,
    },
    /// Asked on the terminal and refused.
    #[error("the host key of {host} was not accepted")]
    Declined {
        /// `[host]:port`.
        host: String,
    },
    /// The file could not be read or written.
    #[error("known hosts {}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How `host` and `port` are named in the file: `[host]:port`, as ssh
/// names a host on another port than 22.
pub fn host_name(host: &str, port: u16) -> String {
    format!("[{}]:{port}", host.trim_start_matches('[').trim_end_matches(']'))
}

/// The default file: `$XDG_CONFIG_HOME/framewire/known_hosts`, or
/// `~/.config/framewire/known_hosts`.
pub fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("framewire").join("known_hosts"))
}

/// What `text` (a file's contents) says of `name`'s key `key`.
pub fn lookup(text: &str, name: &str, key: &PublicKey) -> Known {
    let mut changed = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(hosts), Some(kind), Some(data)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if !hosts.split(',').any(|h| h == name) {
            continue;
        }
        let Ok(recorded) = PublicKey::from_openssh(&format!("{kind} {data}")) else { continue };
        if recorded.key_data() == key.key_data() {
            return Known::Match;
        }
        changed.get_or_insert(Known::Changed { expected: fingerprint(&recorded), line: i + 1 });
    }
    changed.unwrap_or(Known::Unknown)
}

/// Checks `key` for `name` against `file` (`Known`, and the file's line
/// count); a file that is not there knows no host.
///
/// # Errors
///
/// [`HostKeyError::Io`] if the file cannot be read.
pub fn check(file: &Path, name: &str, key: &PublicKey) -> Result<Known, HostKeyError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(lookup(&text, name, key)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Known::Unknown),
        Err(source) => Err(HostKeyError::Io { file: file.to_owned(), source }),
    }
}

/// Records `key` for `name` at the end of `file` (made, with its
/// directory, if missing), unless a line for `name` is there by then (a
/// fleet's connections record each host once). One process at a time.
///
/// # Errors
///
/// [`HostKeyError::Io`] if the file cannot be written;
/// [`HostKeyError::Changed`] if another key was recorded meanwhile.
pub fn record(file: &Path, name: &str, key: &PublicKey) -> Result<(), HostKeyError> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let io = |source| HostKeyError::Io { file: file.to_owned(), source };
    match check(file, name, key)? {
        Known::Match => return Ok(()),
        Known::Changed { expected, line } => {
            let (host, got, file) = (name.to_owned(), fingerprint(key), file.to_owned());
            return Err(HostKeyError::Changed { host, expected, got, file, line });
        }
        Known::Unknown => {}
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).map_err(io)?;
    writeln!(f, "{name} {}", to_wire(key)).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Removes every line for `name` from `file`; returns how many.
///
/// # Errors
///
/// [`HostKeyError::Io`] if the file cannot be read or written.
pub fn remove(file: &Path, name: &str) -> Result<usize, HostKeyError> {
    let io = |source| HostKeyError::Io { file: file.to_owned(), source };
    let text = std::fs::read_to_string(file).map_err(io)?;
    let mut removed = 0;
    let kept: String = text
        .lines()
        .filter(|line| {
            let hit = line.split_ascii_whitespace().next().is_some_and(|hosts| hosts.split(',').any(|h| h == name));
            removed += usize::from(hit);
            !hit
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(kept.as_bytes()).map_err(io)?;
    tmp.persist(file).map_err(|e| io(e.error))?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recorded_once_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fw/known_hosts");
        let key = |n: &str| super::super::identity::generate(&dir.path().join(n), n).unwrap();
        let (a, b) = (key("a"), key("b"));
        let name = host_name("127.0.0.1", 9909);
        assert_eq!(name, "[127.0.0.1]:9909");
        assert_eq!(check(&file, &name, &a).unwrap(), Known::Unknown);
        record(&file, &name, &a).unwrap();
        record(&file, &name, &a).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1, "once");
        assert_eq!(check(&file, &name, &a).unwrap(), Known::Match);
        assert_eq!(check(&file, &host_name("127.0.0.1", 9910), &a).unwrap(), Known::Unknown, "by port too");
        let Known::Changed { expected, line } = check(&file, &name, &b).unwrap() else { panic!("changed") };
        assert_eq!((expected, line), (fingerprint(&a), 1));
        let e = record(&file, &name, &b).unwrap_err();
        assert!(e.to_string().contains("CHANGED") && e.to_string().contains("--remove"), "{e}");
        assert_eq!(remove(&file, &name).unwrap(), 1);
        assert_eq!(check(&file, &name, &b).unwrap(), Known::Unknown);
    }
}
