//! The client's config file as the `framewire` command uses it: the
//! library's [`framewire::config`] (parsing, aliases, groups, what applies
//! to a host), and here what only the command does with it: keys read
//! with the command line's words in their errors, passphrases asked on
//! the terminal, endpoints and connections made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use framewire::auth::Key;
use framewire::client::tree::Endpoint;
use framewire::client::{Credentials, HostKeys};
use framewire::transport::Throttle;
use framewire::Client;

pub use framewire::config::{parse_rate, KeyFlags, Origin, DEFAULT_JOBS};

/// The config file as read, with what the command line says over it.
#[derive(Debug, Default)]
pub struct Settings(framewire::config::Settings);

impl Settings {
    /// Reads the config file the command line, the environment or the
    /// default location names.
    ///
    /// # Errors
    ///
    /// A named file that cannot be read, or any file that does not parse:
    /// one error with the file, line and column.
    pub fn load(config: Option<&Path>, cli_key: Option<PathBuf>, env_key: Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(Settings(framewire::config::Settings::load(config, cli_key, env_key)?))
    }

    /// These settings, with the command line's flags about keys.
    pub fn with_keys(self, keys: KeyFlags) -> Self {
        Settings(self.0.with_keys(keys))
    }

    /// These settings, with every connection's connect and handshake
    /// limited to `limit`.
    pub fn with_connect_timeout(self, limit: std::time::Duration) -> Self {
        Settings(self.0.with_connect_timeout(limit))
    }

    /// The group NAME's members as written, if the file has that group.
    pub fn group(&self, name: &str) -> Option<Vec<&str>> {
        self.0.group(name)
    }

    /// What `arg` resolves to, without reading its key.
    pub fn resolve(&self, arg: &str) -> Target {
        Target(self.0.resolve(arg))
    }

    /// What `config show HOST` prints.
    pub fn show(&self, arg: Option<&str>) -> String {
        self.0.show(arg)
    }
}

/// What a `HOST` argument resolves to ([`framewire::config::Target`]),
/// and how the command connects to it.
#[derive(Debug, Clone)]
pub struct Target(framewire::config::Target);

impl std::ops::Deref for Target {
    type Target = framewire::config::Target;

    fn deref(&self) -> &framewire::config::Target {
        &self.0
    }
}

impl Target {
    /// Reads this host's key, if it has one.
    ///
    /// # Errors
    ///
    /// The key file cannot be read, is open to others, or is not a key.
    pub fn key(&self) -> anyhow::Result<Option<Key>> {
        let Some((path, origin)) = &self.key_file else { return Ok(None) };
        let key = Key::from_file(path).with_context(|| match origin {
            Origin::CommandLine | Origin::Environment => "the key file".to_owned(),
            o => format!("the key file of {o} in the config file"),
        })?;
        Ok(Some(key))
    }

    /// The endpoint of a copy to or from this host: its address, key and
    /// bandwidth limit (`bwlimit` overrides the config file's).
    pub fn endpoint(&self, bwlimit: Option<u64>) -> anyhow::Result<Endpoint> {
        self.one_host()?;
        let key = self.key()?;
        self.credentials(key.clone())?;
        Ok(self.endpoint_with_key(key, bwlimit))
    }

    /// How this host is authenticated with: the shared key `key`, and keys
    /// of one's own: `-i` (or the config file's `identity`); without it
    /// and without a shared key, ssh-agent's keys and `~/.ssh/id_ed25519`,
    /// as ssh looks for them. Each identity is read once per process (a
    /// passphrase asked once).
    ///
    /// # Errors
    ///
    /// The identity file cannot be read or decrypted.
    pub fn credentials(&self, key: Option<Key>) -> anyhow::Result<Credentials> {
        let (identities, find) = match &self.identity {
            Some((path, origin)) => (
                vec![identity_file(path).with_context(|| match origin {
                    Origin::CommandLine => "the identity (-i)".to_owned(),
                    o => format!("the identity of {o} in the config file"),
                })?],
                false,
            ),
            None => (Vec::new(), key.is_none()),
        };
        let (file, accept_new) = self.host_keys();
        let file = file.map(Path::to_owned);
        use std::io::IsTerminal;
        let ask = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        let creds = Credentials::shared(key).with_identities(identities, HostKeys::new(file, accept_new, ask));
        let finder = framewire::client::Finder(std::sync::Arc::new(default_identities));
        Ok(if find { creds.finding(finder) } else { creds })
    }

    /// As [`endpoint`](Self::endpoint), with this host's key already read.
    pub fn endpoint_with_key(&self, key: Option<Key>, bwlimit: Option<u64>) -> Endpoint {
        let mut endpoint = Endpoint::new(self.addr.clone(), key.clone());
        match self.credentials(key) {
            Ok(creds) => endpoint = endpoint.with_credentials(creds),
            Err(e) => tracing::warn!("{e:#}"),
        }
        if let Some(limit) = self.connect_timeout {
            endpoint = endpoint.with_connect_timeout(limit);
        }
        let endpoint = endpoint.with_compress(self.compress);
        match bwlimit.or(self.bwlimit) {
            Some(rate) => endpoint.with_bwlimit(Throttle::new(rate)),
            None => endpoint,
        }
    }

    /// Opens one connection to this host (with no bandwidth limit: that
    /// is for copies).
    ///
    /// # Errors
    ///
    /// The key cannot be read, or the connection or its authentication
    /// fails.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.one_host()?;
        let key = self.key()?;
        let mut endpoint = Endpoint::new(self.addr.clone(), key.clone()).with_credentials(self.credentials(key)?);
        if let Some(limit) = self.connect_timeout {
            endpoint = endpoint.with_connect_timeout(limit);
        }
        Ok(endpoint.connect().await?)
    }
}

/// Identities read so far, by file: a fleet's hosts share one (and its
/// passphrase is asked once).
static IDENTITIES: std::sync::Mutex<BTreeMap<PathBuf, framewire::auth::Identity>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The identity in `path`, asking for its passphrase if it has one.
fn identity_file(path: &Path) -> anyhow::Result<framewire::auth::Identity> {
    let mut known = IDENTITIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(id) = known.get(path) {
        return Ok(id.clone());
    }
    let id = framewire::auth::Identity::from_file(path, || passphrase(path))?;
    known.insert(path.to_owned(), id.clone());
    Ok(id)
}

/// What ssh would find without `-i`: the agent's Ed25519 keys
/// (`SSH_AUTH_SOCK`), then `~/.ssh/id_ed25519` if it is there and not in
/// the agent (its passphrase asked only if the agent has no key).
fn default_identities() -> Vec<framewire::auth::Identity> {
    static FOUND: std::sync::OnceLock<Vec<framewire::auth::Identity>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let mut found = Vec::new();
            if let Some(socket) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
                match framewire::auth::Identity::from_agent(Path::new(&socket)) {
                    Ok(keys) => found.extend(keys),
                    Err(e) => tracing::debug!("{e}"),
                }
            }
            let own = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/id_ed25519"));
            if let Some(path) = own.filter(|p| p.exists()) {
                let agent_has = |id: &framewire::auth::Identity| {
                    found.iter().any(|f: &framewire::auth::Identity| f.public().key_data() == id.public().key_data())
                };
                let ask = found.is_empty();
                match framewire::auth::Identity::from_file(&path, || if ask { passphrase(&path) } else { None }) {
                    Ok(id) if !agent_has(&id) => found.push(id),
                    Ok(_) => {}
                    Err(e) => tracing::debug!("{e}"),
                }
            }
            found
        })
        .clone()
}

/// A key file's passphrase: from `SSH_ASKPASS` where ssh would run it
/// (`SSH_ASKPASS_REQUIRE=force`, or no terminal), else asked on the
/// terminal without echo.
fn passphrase(path: &Path) -> Option<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let prompt = format!("Enter passphrase for key '{}': ", path.display());
    let askpass = std::env::var_os("SSH_ASKPASS").filter(|a| !a.is_empty());
    let force = std::env::var("SSH_ASKPASS_REQUIRE").is_ok_and(|v| v == "force");
    if let Some(program) = askpass.filter(|_| force || !std::io::stdin().is_terminal()) {
        let out =
            std::process::Command::new(program).arg(&prompt).stderr(std::process::Stdio::inherit()).output().ok()?;
        return out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end_matches(['\n', '\r']).to_owned());
    }
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok()?;
    let old = rustix::termios::tcgetattr(&tty).ok()?;
    let mut quiet = old.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &quiet).ok()?;
    let _ = (&tty).write_all(prompt.as_bytes());
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &old);
    let _ = (&tty).write_all(b"\n");
    read.ok().map(|_| line.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_set_is_not_one_host() {
        let s = Settings::default();
        for set in ["@web", "@nodes:7", "a,b", "web[1-3]"] {
            let e = s.resolve(set).endpoint(None).unwrap_err().to_string();
            assert!(e.contains("is a host set, not one host: give it with -w"), "{set}: {e}");
        }
    }
}
