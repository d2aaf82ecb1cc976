//! The client's config file: host aliases, host groups and defaults for
//! flags, in TOML (README "The config file"), as the `framewire` command
//! reads it and as other programs (the Python package) resolve a host
//! argument the same way. Behind the `config` feature.
//!
//! Found at `--config FILE`, else `$FRAMEWIRE_CONFIG`, else
//! `$XDG_CONFIG_HOME/framewire/config.toml` (`~/.config/…` when that is
//! unset); only the first of those that is given is read, and a missing
//! file is an error unless it is the default one. Unknown keys and bad
//! values are one error naming the file, line and column, before anything
//! connects.
//!
//! What applies to a host, most specific first: the command line (an
//! explicit `HOST:PORT`, `--key-file`, a flag), then the host's own entry,
//! then `FRAMEWIRE_KEY_FILE`, then `[defaults]`, then framewire's own
//! defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::proto::DEFAULT_PORT;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// How many files a copy moves at once unless `-j` or the config file says.
pub const DEFAULT_JOBS: usize = 4;

/// A config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Flags,
    #[serde(default)]
    hosts: BTreeMap<Name, HostEntry>,
    #[serde(default)]
    groups: BTreeMap<Name, Vec<Member>>,
}

/// Defaults for flags, in `[defaults]` or a host's entry; named as the
/// long flags are.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Flags {
    port: Option<Port>,
    key_file: Option<PathBuf>,
    identity: Option<PathBuf>,
    jobs: Option<Jobs>,
    bwlimit: Option<Rate>,
    timeout: Option<Seconds>,
    compress: Option<bool>,
    compress_level: Option<Level>,
}

/// `[hosts.NAME]`: where the alias NAME leads, and its own defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HostEntry {
    address: Option<Address>,
    dir: Option<RemoteDir>,
    port: Option<Port>,
    key_file: Option<PathBuf>,
    identity: Option<PathBuf>,
    jobs: Option<Jobs>,
    bwlimit: Option<Rate>,
    timeout: Option<Seconds>,
    compress: Option<bool>,
    compress_level: Option<Level>,
}

impl HostEntry {
    fn flags(&self) -> Flags {
        Flags {
            port: self.port,
            key_file: self.key_file.clone(),
            identity: self.identity.clone(),
            jobs: self.jobs,
            bwlimit: self.bwlimit,
            timeout: self.timeout,
            compress: self.compress,
            compress_level: self.compress_level,
        }
    }
}

/// Refuses a value with `why`; the parser adds where it stands.
fn invalid<E: de::Error>(why: impl fmt::Display) -> E {
    E::custom(why)
}

/// An alias or group name: letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let fine = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if s.is_empty() || s.starts_with('-') || !s.bytes().all(fine) {
            return Err(invalid(format!("{s:?}: a name is letters, digits, '.', '_' and '-'")));
        }
        Ok(Name(s))
    }
}

/// A group member: a host name, alias or address (pattern syntax, ranges
/// and `@group`, is the fan-out's).
#[derive(Debug, Clone)]
struct Member(String);

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(invalid(format!("{s:?}: one host per string, no spaces or commas")));
        }
        Ok(Member(s))
    }
}

/// A host name or IP address, without a port.
#[derive(Debug, Clone)]
struct Address(String);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("{s:?}: not a host name or address")));
        }
        let v6 = s.parse::<std::net::Ipv6Addr>().is_ok();
        if !v6 && (s.contains(':') || s.starts_with('[')) {
            return Err(invalid(format!("{s:?}: the address without a port (put the port in `port`)")));
        }
        Ok(Address(s))
    }
}

/// A TCP port, 1–65535.
#[derive(Debug, Clone, Copy)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(invalid(format!("{n}: a port is 1 to 65535"))),
        }
    }
}

/// A number of parallel transfers, at least 1.
#[derive(Debug, Clone, Copy)]
struct Jobs(usize);

impl<'de> Deserialize<'de> for Jobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(j) if (1..=1024).contains(&j) => Ok(Jobs(j)),
            _ => Err(invalid(format!("{n}: jobs is 1 to 1024"))),
        }
    }
}

/// A zstd level, as `--compress-level` takes it.
#[derive(Debug, Clone, Copy)]
struct Level(i32);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match i32::try_from(n) {
            Ok(l) if crate::transport::COMPRESS_LEVELS.contains(&l) => Ok(Level(l)),
            _ => Err(invalid(format!("{n}: compress-level is 1 to 19"))),
        }
    }
}

/// A command time limit in seconds.
#[derive(Debug, Clone, Copy)]
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = f64::deserialize(d)?;
        if !(s.is_finite() && s > 0.0) {
            return Err(invalid(format!("{s}: a timeout is a positive number of seconds")));
        }
        Ok(Seconds(s))
    }
}

/// A transfer rate, as `--bwlimit` takes it (`"10M"`, or a number of
/// bytes per second).
#[derive(Debug, Clone, Copy)]
struct Rate(u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        };
        parse_rate(&text).map(Rate).map_err(invalid)
    }
}

/// A relative directory on the server that an alias's remote paths start
/// from.
#[derive(Debug, Clone)]
struct RemoteDir(String);

impl<'de> Deserialize<'de> for RemoteDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let trimmed = s.trim_matches('/');
        if trimmed.split('/').any(|c| c == "..") || s.contains('\0') {
            return Err(invalid(format!("{s:?}: a directory below the served root, without `..`")));
        }
        Ok(RemoteDir(trimmed.to_owned()))
    }
}

/// `--bwlimit RATE`: bytes per second, with an optional binary suffix as
/// curl and rsync write them (`K`/`KiB` = 1024, `M`/`MiB`, `G`/`GiB`; `KB`,
/// `MB`, `GB` are powers of 1000); `10M` is 10 MiB/s. At least 1 KiB/s.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("{text:?}: a rate is a number with K, M or G (e.g. 10M: 10 MiB/s)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?}: a rate is a number with K, M or G (e.g. 10M)"))?;
    let rate = value * scale as f64;
    if !(rate.is_finite() && rate >= 1024.0) {
        return Err(format!("{text:?}: at least 1K (1 KiB/s)"));
    }
    Ok(rate.min(u64::MAX as f64) as u64)
}

/// Where a setting came from, as `config show` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A flag, or an explicit `HOST:PORT`.
    CommandLine,
    /// The host's entry in the file.
    Host,
    /// `FRAMEWIRE_KEY_FILE`.
    Environment,
    /// The file's `[defaults]`.
    Defaults,
    /// framewire's own default.
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::CommandLine => "command line",
            Origin::Host => "the host's entry",
            Origin::Environment => "FRAMEWIRE_KEY_FILE",
            Origin::Defaults => "[defaults]",
            Origin::BuiltIn => "built in",
        })
    }
}

/// The config file as read, with what the command line says over it.
#[derive(Debug, Default)]
pub struct Settings {
    /// The file read, if any.
    path: Option<PathBuf>,
    file: File,
    /// `--key-file` on the command line.
    cli_key: Option<PathBuf>,
    /// `FRAMEWIRE_KEY_FILE`.
    env_key: Option<PathBuf>,
    /// `--connect-timeout`.
    connect_timeout: Option<std::time::Duration>,
    /// `-i`/`--identity`, `--known-hosts`, `--accept-new`.
    keys: KeyFlags,
}

/// The command line's flags about keys of one's own.
#[derive(Debug, Default, Clone)]
pub struct KeyFlags {
    /// `-i FILE`.
    pub identity: Option<PathBuf>,
    /// `--known-hosts FILE`.
    pub known_hosts: Option<PathBuf>,
    /// `--accept-new`.
    pub accept_new: bool,
}

/// What a `HOST` argument resolves to: where to connect, with which key,
/// and the defaults that apply to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// The alias the argument named, if it named one.
    pub alias: Option<String>,
    /// The key file, and where that came from.
    pub key_file: Option<(PathBuf, Origin)>,
    /// The alias's remote directory (relative remote paths start there).
    pub dir: Option<String>,
    /// `-j` for transfers, if set in the config file.
    pub jobs: Option<usize>,
    /// `--bwlimit` in bytes per second, if set in the config file.
    pub bwlimit: Option<u64>,
    /// `-z` at this level, if the config file says `compress = true`
    /// (at `compress-level`, or 1).
    pub compress: Option<i32>,
    /// `--timeout` for exec (never for `shell`), if set in the config
    /// file.
    pub timeout: Option<f64>,
    /// `--connect-timeout`.
    pub connect_timeout: Option<std::time::Duration>,
    /// The identity file (`-i`, a host's or the defaults' `identity`),
    /// and where that came from.
    pub identity: Option<(PathBuf, Origin)>,
    /// `--known-hosts`, `--accept-new`.
    host_keys: (Option<PathBuf>, bool),
    port_origin: Origin,
    /// The argument, when it names a host set (`@group`, a list, a
    /// range) rather than one host: refused before any lookup.
    host_set: Option<String>,
}

/// Whether `host` (no alias) is written as a host set: a group, a comma
/// list or a `[N-M]` range (an IPv6 address in brackets is one host).
fn is_host_set(host: &str) -> bool {
    host.starts_with('@') || host.contains(',') || (!host.starts_with('[') && host.contains('['))
}

impl Settings {
    /// Reads the config file the command line, the environment or the
    /// default location names.
    ///
    /// # Errors
    ///
    /// A named file that cannot be read, or any file that does not parse:
    /// one error with the file, line and column.
    pub fn load(
        config: Option<&Path>,
        cli_key: Option<PathBuf>,
        env_key: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let (path, required) = match config {
            Some(p) => (Some(p.to_owned()), true),
            None => (default_path(), false),
        };
        let mut settings = Settings { cli_key, env_key, ..Settings::default() };
        let Some(path) = path else { return Ok(settings) };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(settings),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        settings.file = parse(&text).map_err(|message| ConfigError::Parse { path: path.clone(), message })?;
        tracing::debug!("config file {}", path.display());
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        settings.absolutize(&base);
        settings.path = Some(path);
        Ok(settings)
    }

    /// These settings, with the command line's flags about keys.
    pub fn with_keys(mut self, keys: KeyFlags) -> Self {
        self.keys = keys;
        self
    }

    /// These settings, with every connection's connect and handshake
    /// limited to `limit`.
    pub fn with_connect_timeout(mut self, limit: std::time::Duration) -> Self {
        self.connect_timeout = Some(limit);
        self
    }

    /// Key files as the file writes them: `~/` is the home directory, and
    /// a relative path is relative to the config file's directory.
    fn absolutize(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut() {
                *path = expand(path, base);
            }
        };
        fix(&mut self.file.defaults.key_file);
        fix(&mut self.file.defaults.identity);
        for host in self.file.hosts.values_mut() {
            fix(&mut host.key_file);
            fix(&mut host.identity);
        }
    }

    /// The group NAME's members as written, if the file has that group.
    pub fn group(&self, name: &str) -> Option<Vec<&str>> {
        self.file.groups.get(&Name(name.to_owned())).map(|m| m.iter().map(|m| m.0.as_str()).collect())
    }

    /// The groups whose members name `host` as written.
    fn groups_of(&self, host: &str) -> Vec<&str> {
        let groups = self.file.groups.iter();
        groups.filter(|(_, members)| members.iter().any(|m| m.0 == host)).map(|(n, _)| n.0.as_str()).collect()
    }

    /// What `arg` (`NAME`, `NAME:PORT`, `host`, `host:port`, `[v6]:port`)
    /// resolves to, without reading its key.
    pub fn resolve(&self, arg: &str) -> Target {
        let (host, port) = split_port(arg);
        let entry = if host.starts_with('[') { None } else { self.file.hosts.get(&Name(host.to_owned())) };
        let own = entry.map(HostEntry::flags).unwrap_or_default();
        let defaults = &self.file.defaults;
        let (port, port_origin) = match (port, own.port, defaults.port) {
            (Some(p), _, _) => (p, Origin::CommandLine),
            (None, Some(p), _) => (p.0, Origin::Host),
            (None, None, Some(p)) => (p.0, Origin::Defaults),
            (None, None, None) => (DEFAULT_PORT, Origin::BuiltIn),
        };
        let address = entry.and_then(|e| e.address.as_ref()).map_or(host, |a| a.0.as_str());
        let addr = if address.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let key_file = match (&self.cli_key, &own.key_file, &self.env_key, &defaults.key_file) {
            (Some(k), ..) => Some((k.clone(), Origin::CommandLine)),
            (None, Some(k), ..) => Some((k.clone(), Origin::Host)),
            (None, None, Some(k), _) => Some((k.clone(), Origin::Environment)),
            (None, None, None, Some(k)) => Some((k.clone(), Origin::Defaults)),
            (None, None, None, None) => None,
        };
        match entry {
            Some(_) => tracing::debug!("{host}: an alias for {addr}"),
            None => tracing::trace!("{host}: no alias; {addr}"),
        }
        if let Some((path, origin)) = &key_file {
            tracing::debug!("key file {} (from {origin})", path.display());
        }
        Target {
            addr,
            alias: entry.map(|_| host.to_owned()),
            key_file,
            dir: entry.and_then(|e| e.dir.as_ref()).map(|d| d.0.clone()).filter(|d| !d.is_empty()),
            jobs: own.jobs.or(defaults.jobs).map(|j| j.0),
            bwlimit: own.bwlimit.or(defaults.bwlimit).map(|r| r.0),
            compress: (own.compress.or(defaults.compress) == Some(true))
                .then(|| own.compress_level.or(defaults.compress_level).map_or(1, |l| l.0)),
            timeout: own.timeout.or(defaults.timeout).map(|s| s.0),
            connect_timeout: self.connect_timeout,
            identity: match (&self.keys.identity, &own.identity, &defaults.identity) {
                (Some(i), ..) => Some((i.clone(), Origin::CommandLine)),
                (None, Some(i), _) => Some((i.clone(), Origin::Host)),
                (None, None, Some(i)) => Some((i.clone(), Origin::Defaults)),
                (None, None, None) => None,
            },
            host_keys: (self.keys.known_hosts.clone(), self.keys.accept_new),
            port_origin,
            host_set: (entry.is_none() && is_host_set(host)).then(|| arg.to_owned()),
        }
    }

    /// What `config show HOST` prints: every setting that applies to
    /// `arg`, and where each came from.
    pub fn show(&self, arg: Option<&str>) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let file = self.path.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        let _ = writeln!(out, "config file  {file}");
        let Some(arg) = arg else {
            let names = |it: Vec<&str>| if it.is_empty() { "none".to_owned() } else { it.join(", ") };
            let _ = writeln!(out, "hosts        {}", names(self.file.hosts.keys().map(|n| n.0.as_str()).collect()));
            let _ = writeln!(out, "groups       {}", names(self.file.groups.keys().map(|n| n.0.as_str()).collect()));
            return out;
        };
        let t = self.resolve(arg);
        let defaults = &self.file.defaults;
        let own = t.alias.as_ref().and_then(|a| self.file.hosts.get(&Name(a.clone()))).map(HostEntry::flags);
        let origin = |host: bool, default: bool| match (host, default) {
            (true, _) => Origin::Host,
            (false, true) => Origin::Defaults,
            (false, false) => Origin::BuiltIn,
        };
        let own = own.unwrap_or_default();
        match &t.alias {
            Some(a) => _ = writeln!(out, "host         {a} (an alias)"),
            None => _ = writeln!(out, "host         {arg} (no alias: a host name or address)"),
        }
        let _ = writeln!(out, "address      {} (port: {})", t.addr, t.port_origin);
        match &t.key_file {
            Some((path, from)) => _ = writeln!(out, "key-file     {} ({from})", path.display()),
            None => _ = writeln!(out, "key-file     none (plaintext, for a server without a key)"),
        }
        match &t.identity {
            Some((path, from)) => _ = writeln!(out, "identity     {} ({from})", path.display()),
            None => _ = writeln!(out, "identity     none (ssh-agent and ~/.ssh/id_ed25519 if a server requires a key)"),
        }
        let _ = writeln!(out, "dir          {}", t.dir.as_deref().unwrap_or("the served root"));
        let from = origin(own.jobs.is_some(), defaults.jobs.is_some());
        let _ = writeln!(out, "jobs         {} ({from})", t.jobs.unwrap_or(DEFAULT_JOBS));
        let from = origin(own.bwlimit.is_some(), defaults.bwlimit.is_some());
        match t.bwlimit {
            Some(rate) => _ = writeln!(out, "bwlimit      {}/s ({from})", human_bytes(rate)),
            None => _ = writeln!(out, "bwlimit      none"),
        }
        let from = origin(own.compress.is_some(), defaults.compress.is_some());
        match t.compress {
            Some(level) => _ = writeln!(out, "compress     zstd level {level} ({from})"),
            None => _ = writeln!(out, "compress     no (-z compresses a copy)"),
        }
        let from = origin(own.timeout.is_some(), defaults.timeout.is_some());
        match t.timeout {
            Some(s) => _ = writeln!(out, "timeout      {s}s ({from})"),
            None => _ = writeln!(out, "timeout      none"),
        }
        let groups = self.groups_of(t.alias.as_deref().unwrap_or(arg));
        let _ = writeln!(out, "groups       {}", if groups.is_empty() { "none".to_owned() } else { groups.join(", ") });
        out
    }
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It could not be read (a missing default file is not an error).
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse: `message` starts with `LINE:COLUMN:`.
    #[error("{}:{message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        message: String,
    },
}

/// A host set given where one host goes.
#[derive(Debug, thiserror::Error)]
#[error("{0} is a host set, not one host: give it with -w (exec, put and get run on every host of -w '{0}')")]
pub struct NotOneHost(pub String);

/// `bytes` as `10.00 MiB`, binary prefixes (as `config show` writes a
/// rate).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

impl Target {
    /// `--known-hosts` and `--accept-new`, as the command line gave them.
    pub fn host_keys(&self) -> (Option<&Path>, bool) {
        (self.host_keys.0.as_deref(), self.host_keys.1)
    }

    /// Refuses a host set given where one host goes, before it is looked
    /// up as a name (`exec @nodes` asked DNS for `@nodes`).
    ///
    /// # Errors
    ///
    /// [`NotOneHost`], naming the set.
    pub fn one_host(&self) -> Result<(), NotOneHost> {
        match &self.host_set {
            Some(set) => Err(NotOneHost(set.clone())),
            None => Ok(()),
        }
    }

    /// A remote path as the server takes it: with an alias's `dir`,
    /// relative ones start there and a leading `/` means from the served
    /// root; without one, the path as given (the server refuses absolute
    /// ones).
    pub fn path(&self, path: &str) -> String {
        crate::client::fleet::remote_path(self.dir.as_deref(), path)
    }
}

/// `~/.config/framewire/config.toml`, or under `$XDG_CONFIG_HOME`.
fn default_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(dir.join("framewire").join("config.toml"))
}

fn expand(path: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    if path.is_relative() {
        return base.join(path);
    }
    path.to_owned()
}

/// A host argument's host and port, if it gives one: `name:9910`,
/// `[::1]:9910`, `127.0.0.1:9910`. A bare IPv6 address has no port.
fn split_port(arg: &str) -> (&str, Option<u16>) {
    if arg.parse::<std::net::Ipv6Addr>().is_ok() {
        return (arg, None);
    }
    match arg.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            match port.parse::<u16>() {
                Ok(p) => (host, Some(p)),
                Err(_) => (arg, None),
            }
        }
        _ => (arg, None),
    }
}

/// Parses a config file's text; an error is `LINE:COLUMN: message`.
fn parse(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().replace('\n', "; ");
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{line}:{column}: {message}")
            }
            None => format!(" {message}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_and_column() {
        let e = parse("[defaults]\nport = 9910\n\n[hosts.web]\nprot = 1\n").unwrap_err();
        assert!(e.starts_with("5:1: unknown field `prot`"), "{e}");
        let e = parse("[hosts.web]\naddress = \"h\"\nport = 70000\n").unwrap_err();
        assert!(e.starts_with("3:8: 70000: a port is 1 to 65535"), "{e}");
        let e = parse("[defaults]\nbwlimit = \"10Q\"\n").unwrap_err();
        assert!(e.starts_with("2:11: \"10Q\": a rate"), "{e}");
        let e = parse("[hosts.\"bad name\"]\n").unwrap_err();
        assert!(e.starts_with("1:8:"), "{e}");
        let e = parse("[hosts.web]\naddress = \"h:99\"\n").unwrap_err();
        assert!(e.contains("without a port"), "{e}");
        let e = parse("[groups]\nweb = [\"a b\"]\n").unwrap_err();
        assert!(e.starts_with("2:7: \"a b\": one host per string"), "{e}");
        let e = parse("[hosts.web]\ndir = \"../up\"\n").unwrap_err();
        assert!(e.starts_with("2:7:"), "{e}");
        assert!(parse("port = 1\n").unwrap_err().contains("unknown field `port`"));
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml example") + "```toml\n".len();
        let example = &readme[start..start + readme[start..].find("```").expect("its end")];
        let s = Settings { file: parse(example).unwrap(), ..Settings::default() };
        assert_eq!(s.resolve("web").addr, "web1.example.internal:9910");
        assert_eq!(s.group("web").unwrap(), ["web", "web2", "web3"]);
    }

    #[test]
    fn rates_show_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 20), "10.00 MiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }

    #[test]
    fn rates_are_binary_unless_written_in_thousands() {
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("1.5K"), Ok(1536));
        assert_eq!(parse_rate("2MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("1GiB"), Ok(1 << 30));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("10").is_err(), "below 1 KiB/s");
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10X").is_err());
    }

    #[test]
    fn a_host_argument_resolves_through_its_alias() {
        let text = "[defaults]\nport = 7000\n[hosts.web]\naddress = \"::1\"\nport = 7001\ndir = \"/srv/www/\"\n\
                    [hosts.db]\n[groups]\nall = [\"web\", \"db\"]\n";
        let s = Settings { file: parse(text).unwrap(), ..Settings::default() };
        let web = s.resolve("web");
        assert_eq!((web.addr.as_str(), web.alias.as_deref()), ("[::1]:7001", Some("web")));
        assert_eq!(web.path("logs/a"), "srv/www/logs/a");
        assert_eq!(web.path(""), "srv/www");
        assert_eq!(web.path("/etc"), "etc");
        assert_eq!(s.resolve("web:7005").addr, "[::1]:7005");
        assert_eq!(s.resolve("db").addr, "db:7001".replace("7001", "7000"));
        assert_eq!(s.resolve("other").addr, "other:7000");
        assert_eq!(s.resolve("[::1]:9").addr, "[::1]:9");
        assert_eq!(s.resolve("::1").addr, "[::1]:7000");
        assert_eq!(s.resolve("127.0.0.9:5").alias, None);
        // Host sets are not one host; an IPv6 address in brackets is.
        for set in ["@web", "@nodes:7", "a,b", "web[1-3]"] {
            let e = s.resolve(set).one_host().unwrap_err().to_string();
            assert!(e.contains("is a host set, not one host: give it with -w"), "{set}: {e}");
        }
        for one in ["[::1]:9", "web", "127.0.0.1"] {
            assert!(s.resolve(one).one_host().is_ok(), "{one}");
        }
        assert_eq!(s.groups_of("web"), ["all"]);
    }
}
