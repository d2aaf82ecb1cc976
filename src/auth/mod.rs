//! Keys and the mutual challenge-response: both sides prove they hold the
//! shared key with HMAC-SHA256 over a transcript that includes both nonces,
//! the role, the protocol version and the TLS channel binding; or each
//! signs such a transcript with its own key, in OpenSSH's formats
//! ([`identity`], [`authorized`], [`known_hosts`]).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::VERSION;

pub mod authorized;
pub mod identity;
pub mod known_hosts;

pub use authorized::{Authorized, AuthorizedKeys, KeyFile, Rights, Verb};
pub use identity::{Identity, IdentityError};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 32;
/// Channel-binding length in bytes (taken from the TLS exporter).
pub const BINDING_LEN: usize = 32;
/// The TLS exporter label the channel binding is derived with.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-framewire-auth-v1";

/// A shared key: 32 random bytes. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// What can be wrong with a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// It could not be read or written.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `keygen` refuses to replace a key.
    #[error("key file {} already exists; remove it first if you mean to replace it", .0.display())]
    Exists(PathBuf),
    /// Group or others may read it.
    #[error("key file {} is accessible by group or others (mode {mode:04o}); fix it with: chmod 600 {}", path.display(), path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is a directory (a key file is one file).
    #[error("key file {} is a directory; name the file `framewire keygen` wrote (e.g. {}/key)", .0.display(), .0.display())]
    Directory(PathBuf),
    /// It does not hold a key.
    #[error("key file {}: expected one line of {} hex digits (as written by `framewire keygen`), {detail}", path.display(), KEY_LEN * 2)]
    Format {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
}

impl Key {
    /// A fresh random key.
    ///
    /// # Panics
    ///
    /// If the operating system has no randomness to give.
    pub fn generate() -> Key {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).expect("the OS random number generator failed");
        Key(k)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The key as the one line a key file holds (64 hex digits). It is
    /// also the secret the legacy listeners' HMAC uses, as ASCII.
    pub fn to_line(&self) -> String {
        hex::encode(self.0)
    }

    /// Writes a new key to `path` with mode 0600, refusing to replace a file.
    ///
    /// # Errors
    ///
    /// [`KeyError::Exists`], or the write failing.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_owned())
                } else {
                    KeyError::Io { path: path.to_owned(), source: e }
                }
            })?;
        writeln!(file, "{}", self.to_line())
            .and_then(|()| file.sync_all())
            .map_err(|e| KeyError::Io { path: path.to_owned(), source: e })
    }

    /// Reads a key file, refusing one that group or others can access (as
    /// ssh refuses such private keys).
    ///
    /// # Errors
    ///
    /// [`KeyError::Directory`], [`KeyError::Permissions`],
    /// [`KeyError::Format`] (including a truncated key), or the read
    /// failing.
    pub fn from_file(path: &Path) -> Result<Key, KeyError> {
        let io = |e| KeyError::Io { path: path.to_owned(), source: e };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(KeyError::Directory(path.to_owned()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let format = |detail: String| KeyError::Format { path: path.to_owned(), detail };
        let line = text.trim_end_matches(['\n', '\r']);
        if line.len() != KEY_LEN * 2 {
            return Err(format(format!("found {} characters", line.chars().count())));
        }
        let mut k = [0u8; KEY_LEN];
        hex::decode_to_slice(line, &mut k).map_err(|e| format(format!("found {e}")))?;
        Ok(Key(k))
    }
}

/// Which side a proof speaks for: part of the MAC, so one side's proof is
/// never valid for the other (no reflection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side.
    Client,
    /// The accepting side.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
}

/// Everything a proof covers. Every part has a fixed length or a fixed set
/// of values, so the concatenation is unambiguous.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The server's nonce.
    pub server_nonce: &'a [u8; NONCE_LEN],
    /// The client's nonce.
    pub client_nonce: &'a [u8; NONCE_LEN],
    /// The TLS exporter value of this connection.
    pub binding: &'a [u8; BINDING_LEN],
}

fn mac(key: &Key, role: Role, t: &Transcript<'_>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(b"framewire-auth\0");
    mac.update(&VERSION.to_be_bytes());
    mac.update(role.label());
    mac.update(t.server_nonce);
    mac.update(t.client_nonce);
    mac.update(t.binding);
    mac
}

/// The proof `role` sends: HMAC-SHA256(key, "framewire-auth\0" ‖ version ‖
/// role ‖ server nonce ‖ client nonce ‖ binding).
pub fn prove(key: &Key, role: Role, t: &Transcript<'_>) -> [u8; 32] {
    mac(key, role, t).finalize().into_bytes().into()
}

/// Checks a proof from `role`, in constant time.
pub fn verify(key: &Key, role: Role, t: &Transcript<'_>, proof: &[u8]) -> bool {
    mac(key, role, t).verify_slice(proof).is_ok()
}

/// A fresh random nonce.
///
/// # Panics
///
/// If the operating system has no randomness to give.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random number generator failed");
    n
}

/// Decodes a hex field of exactly `N` bytes.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok().map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_nonces_and_channel() {
        let key = Key::generate();
        let (s, c, b) = (nonce(), nonce(), [7u8; BINDING_LEN]);
        let t = Transcript { server_nonce: &s, client_nonce: &c, binding: &b };
        let p = prove(&key, Role::Client, &t);
        assert!(verify(&key, Role::Client, &t, &p));
        assert!(!verify(&key, Role::Server, &t, &p), "a client proof is no server proof");
        assert!(!verify(&Key::generate(), Role::Client, &t, &p), "another key");
        let other = [8u8; BINDING_LEN];
        let t2 = Transcript { binding: &other, ..t };
        assert!(!verify(&key, Role::Client, &t2, &p), "another TLS session");
        let n2 = nonce();
        let t3 = Transcript { server_nonce: &n2, ..t };
        assert!(!verify(&key, Role::Client, &t3, &p), "another challenge");
        assert!(!verify(&key, Role::Client, &t, &p[..31]), "a truncated proof");
    }

    /// The test vectors of docs/PROTOCOL.md §2.3, computed independently
    /// (Python's `hmac`): from the key file's bytes to both proofs.
    #[test]
    fn protocol_test_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = Key::from_file(&path).unwrap();
        assert_eq!(key, Key::from_bytes(std::array::from_fn(|i| i as u8)));
        let ns: [u8; NONCE_LEN] = from_hex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f").unwrap();
        let nc: [u8; NONCE_LEN] = from_hex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f").unwrap();
        let b: [u8; BINDING_LEN] =
            from_hex("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f").unwrap();
        let t = Transcript { server_nonce: &ns, client_nonce: &nc, binding: &b };
        assert_eq!(
            hex::encode(prove(&key, Role::Client, &t)),
            "172b6388a2b68e5ef87e46476f02ef952505bb5fc7aaa62f2b328af75c69b810"
        );
        assert_eq!(
            hex::encode(prove(&key, Role::Server, &t)),
            "a2433decfd41c4e90a27774542a23fb1d49cdd30ceaab5204b28e22de9815310"
        );
        assert!(from_hex::<NONCE_LEN>("2021").is_none(), "a nonce is exactly 32 bytes");
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = Key::generate();
        key.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Key::from_file(&path).unwrap(), key);
        assert!(matches!(key.write_new(&path), Err(KeyError::Exists(_))));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Key::from_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }), "{err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, &key.to_line()[..40]).unwrap();
        let err = Key::from_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Format { .. }), "{err:?}");
        assert!(err.to_string().contains("found 40 characters"), "{err}");
        assert_eq!(format!("{key:?}"), "Key(..)");

        // A directory (mode 1777, as /tmp is) is named as one, never
        // told to chmod 600.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = Key::from_file(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::Directory(_)), "{err:?}");
        assert!(err.to_string().contains("is a directory") && !err.to_string().contains("chmod"), "{err}");
    }
}
