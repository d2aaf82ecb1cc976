//! Keys per person, in OpenSSH's formats (issue 31; PROTOCOL.md §2.3.1):
//! an Ed25519 private key from a file (`ssh-keygen`'s, passphrase-protected
//! or not) or held by `ssh-agent`, the signatures each side makes over the
//! handshake's transcript, and the host key a server proves itself with.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use signature::{Signer, Verifier};
use ssh_encoding::{Decode, Encode};
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, Signature};

use super::{BINDING_LEN, NONCE_LEN};
use crate::wire::VERSION;

/// What can be wrong with an identity (a key file, the agent).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read.
    #[error("identity {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read it (as ssh refuses such keys).
    #[error("identity {} is accessible by group or others (mode {mode:04o}); fix it with: chmod 600 {}", path.display(), path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not an OpenSSH private key framewire can use.
    #[error("identity {}: {why}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// It is encrypted and no passphrase (or a wrong one) was given.
    #[error("identity {}: {why}", path.display())]
    Passphrase {
        /// The file.
        path: PathBuf,
        /// What happened.
        why: &'static str,
    },
    /// The agent could not be asked, or refused.
    #[error("ssh-agent ({}): {why}", socket.display())]
    Agent {
        /// Its socket (`SSH_AUTH_SOCK`).
        socket: PathBuf,
        /// Why.
        why: String,
    },
}

/// A key this side can sign with: a private key read from a file, or one
/// `ssh-agent` holds (it signs; the private half never leaves it).
#[derive(Clone)]
pub enum Identity {
    /// Read from a file (decrypted, if it was).
    File {
        /// The key.
        key: Box<PrivateKey>,
        /// Where it came from, as messages name it.
        path: PathBuf,
    },
    /// Held by the agent listening on `socket`.
    Agent {
        /// Its public half.
        public: Box<PublicKey>,
        /// The agent's socket.
        socket: PathBuf,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.describe())
    }
}

impl Identity {
    /// Reads the OpenSSH private key at `path`, refusing one that group or
    /// others can read; an encrypted one is decrypted with what
    /// `passphrase` gives (asked only if it is encrypted; `None`: none to
    /// give). Only Ed25519 keys are taken.
    ///
    /// # Errors
    ///
    /// [`IdentityError`]: unreadable, too open, not a key, not Ed25519, no
    /// or a wrong passphrase.
    pub fn from_file(path: &Path, passphrase: impl FnOnce() -> Option<String>) -> Result<Identity, IdentityError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| IdentityError::Io { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let format = |why: String| IdentityError::Format { path: path.to_owned(), why };
        let mut key = PrivateKey::from_openssh(text.trim_start())
            .map_err(|e| format(format!("not an OpenSSH private key ({e}); make one with ssh-keygen -t ed25519")))?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(format(format!(
                "a {} key; framewire takes Ed25519 keys (ssh-keygen -t ed25519)",
                key.algorithm()
            )));
        }
        if key.is_encrypted() {
            let Some(pass) = passphrase() else {
                return Err(IdentityError::Passphrase {
                    path: path.to_owned(),
                    why: "encrypted, and no passphrase given",
                });
            };
            key = key
                .decrypt(pass.as_bytes())
                .map_err(|_| IdentityError::Passphrase { path: path.to_owned(), why: "wrong passphrase" })?;
        }
        Ok(Identity::File { key: Box::new(key), path: path.to_owned() })
    }

    /// The Ed25519 keys the agent at `socket` holds (others are left out).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Agent`] if it cannot be reached or answers wrong.
    pub fn from_agent(socket: &Path) -> Result<Vec<Identity>, IdentityError> {
        let keys = agent::identities(socket)
            .map_err(|why| IdentityError::Agent { socket: socket.to_owned(), why: why.to_string() })?;
        Ok(keys
            .into_iter()
            .filter(|k| k.algorithm() == Algorithm::Ed25519)
            .map(|public| Identity::Agent { public: Box::new(public), socket: socket.to_owned() })
            .collect())
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        match self {
            Identity::File { key, .. } => key.public_key(),
            Identity::Agent { public, .. } => public,
        }
    }

    /// How messages name it: its fingerprint and where it is.
    pub fn describe(&self) -> String {
        match self {
            Identity::File { path, .. } => format!("{} ({})", fingerprint(self.public()), path.display()),
            Identity::Agent { .. } => format!("{} (ssh-agent)", fingerprint(self.public())),
        }
    }

    /// Signs `data`: the signature in SSH's encoding (`string
    /// "ssh-ed25519"`, `string` 64 bytes). Blocking, for the agent.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Agent`] if the agent cannot sign.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, IdentityError> {
        match self {
            Identity::File { key, path } => {
                let sig: Signature = key
                    .try_sign(data)
                    .map_err(|e| IdentityError::Format { path: path.clone(), why: format!("cannot sign: {e}") })?;
                Ok(encode_signature(&sig))
            }
            Identity::Agent { public, socket } => agent::sign(socket, public, data)
                .map_err(|why| IdentityError::Agent { socket: socket.clone(), why: why.to_string() }),
        }
    }
}

/// A public key's fingerprint as ssh shows it: `SHA256:` and the base64
/// of its SHA-256, unpadded.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A public key as the protocol carries it: `ssh-ed25519 AAAA…`, the key
/// part of an `id_ed25519.pub` line (no comment).
pub fn to_wire(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_default().trim().to_owned()
}

/// A public key from the protocol: `ssh-ed25519 AAAA…` (a comment after
/// it is ignored). `None` for anything else or another algorithm.
pub fn from_wire(text: &str) -> Option<PublicKey> {
    let key = PublicKey::from_openssh(text).ok()?;
    (key.algorithm() == Algorithm::Ed25519).then_some(key)
}

fn encode_signature(sig: &Signature) -> Vec<u8> {
    let mut out = Vec::with_capacity(83);
    sig.encode(&mut out).expect("a signature encodes into a Vec");
    out
}

/// Checks `sig` (SSH's encoding) over `data` with `key`: Ed25519 only.
pub fn verify(key: &PublicKey, data: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = Signature::decode(&mut &sig[..]) else { return false };
    key.algorithm() == Algorithm::Ed25519
        && sig.algorithm() == Algorithm::Ed25519
        && Verifier::verify(key, data, &sig).is_ok()
}

/// What the server's host key signs (PROTOCOL.md §2.3.1): the context
/// `"framewire-sign" 0x00`, the version (u16 big-endian), `"server"`, the
/// server's nonce, the TLS binding, then the host key (SSH wire blob)
/// with its length (u32 big-endian).
pub fn server_transcript(ns: &[u8; NONCE_LEN], binding: &[u8; BINDING_LEN], host: &PublicKey) -> Vec<u8> {
    let mut t = head(b"server");
    t.extend_from_slice(ns);
    t.extend_from_slice(binding);
    blob(&mut t, host);
    t
}

/// What the client's key signs: the context, the version, `"client"`,
/// both nonces, the TLS binding, the host key and the client's key (each
/// a length-prefixed SSH wire blob).
pub fn client_transcript(
    (ns, nc): (&[u8; NONCE_LEN], &[u8; NONCE_LEN]),
    binding: &[u8; BINDING_LEN],
    host: &PublicKey,
    user: &PublicKey,
) -> Vec<u8> {
    let mut t = head(b"client");
    t.extend_from_slice(ns);
    t.extend_from_slice(nc);
    t.extend_from_slice(binding);
    blob(&mut t, host);
    blob(&mut t, user);
    t
}

fn head(role: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(256);
    t.extend_from_slice(b"framewire-sign\0");
    t.extend_from_slice(&VERSION.to_be_bytes());
    t.extend_from_slice(role);
    t
}

fn blob(t: &mut Vec<u8>, key: &PublicKey) {
    let bytes = key.to_bytes().unwrap_or_default();
    t.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    t.extend_from_slice(&bytes);
}

/// Writes a new Ed25519 key pair: the private key to `path` (mode 0600,
/// OpenSSH's format, unencrypted) and the public one to `path.pub`, as
/// `ssh-keygen -t ed25519 -N ''` does; refuses to replace either.
///
/// # Errors
///
/// The files existing, or the writes failing.
pub fn generate(path: &Path, comment: &str) -> std::io::Result<PublicKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rng = ssh_key::rand_core::OsRng;
    let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(std::io::Error::other)?;
    key.set_comment(comment);
    let text = key.to_openssh(ssh_key::LineEnding::LF).map_err(std::io::Error::other)?;
    let public = key.public_key().to_openssh().map_err(std::io::Error::other)?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    if pub_path.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} exists", pub_path.display())));
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&pub_path)?;
    writeln!(file, "{public}")?;
    Ok(key.public_key().clone())
}

/// The two messages of the ssh-agent protocol a client needs
/// (draft-miller-ssh-agent §4.4, §4.5): list the keys, sign with one.
/// Written here rather than with an agent crate: the one there is pulls
/// every key algorithm (RSA, three ECDSA curves) into the build for two
/// length-prefixed messages.
mod agent {
    use super::*;
    use std::os::unix::net::UnixStream;

    const REQUEST_IDENTITIES: u8 = 11;
    const IDENTITIES_ANSWER: u8 = 12;
    const SIGN_REQUEST: u8 = 13;
    const SIGN_RESPONSE: u8 = 14;
    /// The most an answer may take (a listing of many keys fits).
    const MAX_ANSWER: usize = 256 * 1024;

    fn ask(socket: &Path, message: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let mut framed = Vec::with_capacity(4 + message.len());
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        s.write_all(&framed)?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_ANSWER {
            return Err(std::io::Error::other(format!("an answer of {len} bytes")));
        }
        let mut answer = vec![0u8; len];
        s.read_exact(&mut answer)?;
        Ok(answer)
    }

    fn bad(why: impl std::fmt::Display) -> std::io::Error {
        std::io::Error::other(format!("a malformed answer: {why}"))
    }

    pub(super) fn identities(socket: &Path) -> std::io::Result<Vec<PublicKey>> {
        let answer = ask(socket, &[REQUEST_IDENTITIES])?;
        let (&kind, mut rest) = answer.split_first().ok_or_else(|| bad("empty"))?;
        if kind != IDENTITIES_ANSWER {
            return Err(std::io::Error::other(format!("answered {kind} to a request for its keys")));
        }
        let n = u32::decode(&mut rest).map_err(bad)?;
        let mut keys = Vec::new();
        for _ in 0..n.min(1024) {
            let blob = Vec::<u8>::decode(&mut rest).map_err(bad)?;
            let comment = String::decode(&mut rest).map_err(bad)?;
            // A key of a kind this build cannot read is left out.
            if let Ok(mut key) = PublicKey::from_bytes(&blob) {
                key.set_comment(comment);
                keys.push(key);
            }
        }
        Ok(keys)
    }

    pub(super) fn sign(socket: &Path, key: &PublicKey, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut message = vec![SIGN_REQUEST];
        let blob = key.to_bytes().map_err(std::io::Error::other)?;
        blob.encode(&mut message).map_err(std::io::Error::other)?;
        data.encode(&mut message).map_err(std::io::Error::other)?;
        0u32.encode(&mut message).map_err(std::io::Error::other)?;
        let answer = ask(socket, &message)?;
        let (&kind, mut rest) = answer.split_first().ok_or_else(|| bad("empty"))?;
        if kind != SIGN_RESPONSE {
            return Err(std::io::Error::other("the agent refused to sign (is the key still in it?)"));
        }
        let sig = Vec::<u8>::decode(&mut rest).map_err(bad)?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(dir: &Path) -> (PathBuf, PublicKey) {
        let path = dir.join("id_ed25519");
        let public = generate(&path, "alice@test").unwrap();
        (path, public)
    }

    #[test]
    fn signatures_bind_the_transcript() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = key_at(dir.path());
        let id = Identity::from_file(&path, || None).unwrap();
        assert_eq!(id.public().key_data(), public.key_data());
        let host = {
            let (p, _) = key_at(&dir.path().join("h").tap_mkdir());
            Identity::from_file(&p, || None).unwrap().public().clone()
        };
        let (ns, nc, b) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN], [3u8; BINDING_LEN]);
        let t = client_transcript((&ns, &nc), &b, &host, &public);
        let sig = id.sign(&t).unwrap();
        assert!(verify(&public, &t, &sig));
        let other_binding = client_transcript((&ns, &nc), &[4u8; BINDING_LEN], &host, &public);
        assert!(!verify(&public, &other_binding, &sig), "another TLS session");
        assert!(!verify(&host, &t, &sig), "another key");
        assert!(!verify(&public, &t, &sig[..sig.len() - 1]), "truncated");
        assert_eq!(from_wire(&to_wire(&public)).unwrap().key_data(), public.key_data());
        assert!(!to_wire(&public).contains("alice"), "no comment on the wire");
        assert!(fingerprint(&public).starts_with("SHA256:"));
    }

    /// The test vectors of PROTOCOL.md §2.3.1, computed independently
    /// (Python's `cryptography`): keys from fixed seeds, both transcripts,
    /// both signatures (Ed25519 is deterministic).
    #[test]
    fn protocol_test_vectors() {
        use ssh_key::private::{Ed25519Keypair, KeypairData};
        let key = |first: u8| {
            let seed: [u8; 32] = std::array::from_fn(|i| first + i as u8);
            let pair = Ed25519Keypair::from_seed(&seed);
            PrivateKey::new(KeypairData::Ed25519(pair), "").unwrap()
        };
        let (host, user) = (key(0x80), key(0xa0));
        assert_eq!(
            to_wire(host.public_key()),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM0Us3+VbpUxlP9/tzs9gdzFYdYadTgJS3w+GmQ+5fOq"
        );
        assert_eq!(
            to_wire(user.public_key()),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE/QmczUfXiT3+nsJEFOyw2bVCAjKq0w2RxGW+M8vmXE"
        );
        let ns: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x20 + i as u8);
        let nc: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x40 + i as u8);
        let b: [u8; BINDING_LEN] = std::array::from_fn(|i| 0x60 + i as u8);
        let ts = server_transcript(&ns, &b, host.public_key());
        let tc = client_transcript((&ns, &nc), &b, host.public_key(), user.public_key());
        assert_eq!((ts.len(), tc.len()), (142, 229));
        let sign = |k: &PrivateKey, t: &[u8]| {
            Identity::File { key: Box::new(k.clone()), path: PathBuf::new() }.sign(t).map(hex::encode).unwrap()
        };
        assert_eq!(sign(&host, &ts), "0000000b7373682d65643235353139000000402651fb9dee8b8358b39de9678bc9aaed58456ee43308ae2d49d104abe64f0ff749297f0d5c425fc33e9563889a988b6b56cb5596f8854662d3c0aad8d9e83f05");
        assert_eq!(sign(&user, &tc), "0000000b7373682d656432353531390000004095a8a9afc7fac395c0761e4532a48f8645ded66258d411d0301fbf70c4891bcfc66f818956f0175200fdc23166751964fc410db1a8571afc5e534b9807c3b606");
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = key_at(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::from_file(&path, || None).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        let e = Identity::from_file(&path, || None).unwrap_err();
        assert!(matches!(e, IdentityError::Format { .. }), "{e}");
        assert!(generate(&dir.path().join("id_ed25519"), "x").is_err(), "never replaced");
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> Self;
    }

    impl TapMkdir for PathBuf {
        fn tap_mkdir(self) -> Self {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
