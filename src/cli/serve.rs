//! `framewire serve`: run a server until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use framewire::auth::Key;
use framewire::legacy::Mode;
use framewire::server::{self, Config, Root, S3Options, Server};

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`host:port`; port 0 picks a free one).
    #[arg(help_heading = "Where", long, default_value = "127.0.0.1:9909")]
    listen: String,

    /// Directory to serve, or a bucket of an S3-compatible object store:
    /// `s3://BUCKET[/PREFIX]` (credentials and region from the usual AWS
    /// environment variables or profile; see docs/DESIGN.md for what
    /// each request means on objects).
    #[arg(help_heading = "Where", long, default_value = ".")]
    root: PathBuf,

    /// The S3 endpoint of an `s3://` root, for stores other than AWS
    /// (SeaweedFS, MinIO, Garage, Ceph RGW; path-style requests). Default:
    /// AWS_ENDPOINT_URL, else AWS's own.
    #[arg(help_heading = "Where", long, value_name = "URL")]
    s3_endpoint: Option<String>,

    /// Allow a plain `http://` S3 endpoint (for a test server on
    /// loopback; credentials and data then cross unencrypted).
    #[arg(help_heading = "Where", long)]
    s3_allow_http: bool,

    /// Where exec commands run, instead of the root. Needed for exec on
    /// an `s3://` root, which has no directory to run them in.
    #[arg(help_heading = "Commands", long, value_name = "DIR")]
    exec_dir: Option<PathBuf>,

    /// Authenticated connections served at once; one more waits up to 5 s
    /// for a slot, then is told "server busy".
    #[arg(help_heading = "Limits", long, default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Connections in TLS and the key proof (they have spoken, not yet
    /// authenticated) at once; when full, a new one evicts the oldest
    /// that has taken over 0.5 s, or waits for a place.
    #[arg(help_heading = "Limits", long, value_name = "N", default_value_t = server::DEFAULT_MAX_STARTUPS)]
    max_startups: usize,

    /// Connections in their handshake from one address (an IPv6 /64) at
    /// once; a new one from it evicts that address's oldest.
    #[arg(help_heading = "Limits", long, value_name = "N", default_value_t = server::DEFAULT_MAX_STARTUPS_PER_SOURCE)]
    max_startups_per_source: usize,

    /// Connections that have not spoken yet (no whole preface, or with a
    /// key no TLS hello after it) held at once, in each of the two
    /// stages; when full, a new one is let in and the oldest silent one
    /// closed. At most a quarter of the open-file limit.
    #[arg(help_heading = "Limits", long, value_name = "N", default_value_t = server::DEFAULT_MAX_SILENT)]
    max_silent: usize,

    /// Connections that have not spoken yet from one address (an IPv6
    /// /64) at once; a new one from it closes that address's oldest.
    #[arg(help_heading = "Limits", long, value_name = "N", default_value_t = server::DEFAULT_MAX_SILENT_PER_SOURCE)]
    max_silent_per_source: usize,

    /// The listen backlog: connections the kernel holds before they are
    /// accepted (capped by net.core.somaxconn).
    #[arg(help_heading = "Where", long, value_name = "N", default_value_t = server::DEFAULT_BACKLOG)]
    backlog: u32,

    /// Seconds a connection may sit between requests.
    #[arg(help_heading = "Limits", long, value_name = "SECS", default_value_t = server::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,

    /// Seconds a started frame, any body read or any write may stall.
    #[arg(help_heading = "Limits", long, value_name = "SECS", default_value_t = server::DEFAULT_IO_TIMEOUT.as_secs())]
    io_timeout: u64,

    /// Seconds live requests may go on after SIGINT/SIGTERM; running
    /// commands are killed after that.
    #[arg(help_heading = "Limits", long, value_name = "SECS", default_value_t = server::DEFAULT_DRAIN_TIMEOUT.as_secs())]
    drain_timeout: u64,

    /// Serve `exec` (remote commands) too. Off by default.
    #[arg(help_heading = "Commands", long)]
    allow_exec: bool,

    /// The shell that runs exec commands (`SHELL -c COMMAND`).
    #[arg(help_heading = "Commands", long, default_value = "/bin/sh")]
    shell: PathBuf,

    /// The shell of interactive sessions (`framewire shell`), run as a
    /// login shell on a terminal. Default: the server user's login shell
    /// from the password database (as sshd does), else --shell.
    #[arg(help_heading = "Commands", long, value_name = "SHELL")]
    login_shell: Option<PathBuf>,

    /// Remove partial files (`.NAME.fwpart`, left by cut transfers) last
    /// written longer ago than DUR, at start and every hour, logging each:
    /// `90s`, `30m`, `12h`, `7d`, or `off` to keep them.
    #[arg(help_heading = "Files", long, value_name = "DUR", default_value = "7d", value_parser = parse_age)]
    partial_max_age: Age,

    /// Also let clients set environment variables matching PATTERN (`*`
    /// and `?`, like sshd's AcceptEnv) for their commands with `-e`;
    /// repeatable. TERM, LANG and LC_* are always accepted.
    #[arg(help_heading = "Commands", long, value_name = "PATTERN")]
    accept_env: Vec<String>,

    /// Allow serving a non-loopback address, or --allow-exec, without a
    /// key. Anyone who can connect can then use the server.
    #[arg(help_heading = "Keys and TLS", long)]
    insecure: bool,

    /// Keys per person: an OpenSSH `authorized_keys` file (a line as
    /// `id_ed25519.pub` has it, options before it narrow the key:
    /// read-only, dir="SUB", permit="list,get,put,…", no-exec, no-pty,
    /// from="…", expiry-time="…", restrict). Read again when it changes;
    /// a key removed ends its sessions. Needs --host-key. May be given
    /// beside --key-file.
    #[arg(help_heading = "Keys and TLS", long, value_name = "FILE", requires = "host_key")]
    authorized_keys: Option<PathBuf>,

    /// The server's own key (an OpenSSH Ed25519 private key: `framewire
    /// keygen --ssh FILE` or `ssh-keygen -t ed25519 -N '' -f FILE`), which
    /// clients keep in their known_hosts.
    #[arg(help_heading = "Keys and TLS", long, value_name = "FILE")]
    host_key: Option<PathBuf>,

    /// A PEM certificate chain to present instead of the generated one
    /// (needs --tls-key and --key-file; the key still authenticates).
    #[arg(help_heading = "Keys and TLS", long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(help_heading = "Keys and TLS", long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Also serve a tutorial format: MODE=ADDR, MODE one of exec-simple,
    /// exec-json, upload, download (repeatable; see docs/LEGACY.md).
    #[arg(help_heading = "Tutorial formats", long, value_name = "MODE=ADDR", value_parser = parse_legacy)]
    legacy: Vec<(Mode, String)>,

    /// Challenge every legacy connection with the tutorial's HMAC-MD5
    /// (needs --key-file; the secret is the key file's line).
    #[arg(help_heading = "Tutorial formats", long)]
    legacy_hmac: bool,

    /// Stop by itself after SECS seconds without any client connected.
    #[arg(help_heading = "Limits", long, value_name = "SECS")]
    exit_when_idle: Option<u64>,

    /// How log lines are written on stderr: `text` for people, `json`
    /// (one object a line: timestamp, level, fields, message) for log
    /// pipelines.
    #[arg(help_heading = "Logging", long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn load_tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{}: no certificate found", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    framewire::transport::server_config_with(chain, key_der)
        .context("the certificate and key do not make a TLS configuration")
}

fn parse_legacy(spec: &str) -> Result<(Mode, String), String> {
    let (mode, addr) = spec.split_once('=').ok_or_else(|| format!("`{spec}`: expected MODE=ADDR"))?;
    Ok((mode.parse()?, addr.to_owned()))
}

pub async fn run(args: ServeArgs, key: Option<Key>) -> anyhow::Result<ExitCode> {
    let exec_dir = match &args.exec_dir {
        Some(dir) => {
            let dir = dir.canonicalize().with_context(|| format!("--exec-dir {}", dir.display()))?;
            anyhow::ensure!(dir.is_dir(), "--exec-dir {}: not a directory", dir.display());
            Some(dir)
        }
        None => None,
    };
    let root = args.root.to_str().unwrap_or_default();
    anyhow::ensure!(
        root.starts_with("s3://") || (args.s3_endpoint.is_none() && !args.s3_allow_http),
        "--s3-endpoint and --s3-allow-http are for an s3:// root"
    );
    let s3 = S3Options::new(args.s3_endpoint.clone(), args.s3_allow_http);
    let mut config = Config::for_root(Root::open(&args.root, s3).await?);
    config.exec_dir = exec_dir;
    // Every connection holds a descriptor, silent ones included: take all
    // the hard limit allows (the silent set is sized from it).
    match server::raise_open_files() {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    config.max_connections = args.max_connections;
    config.max_startups = args.max_startups;
    config.max_startups_per_source = args.max_startups_per_source;
    config.max_silent = args.max_silent;
    config.max_silent_per_source = args.max_silent_per_source;
    config.timeouts.idle = Some(Duration::from_secs(args.idle_timeout));
    config.timeouts.io = Some(Duration::from_secs(args.io_timeout));
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.allow_exec = args.allow_exec;
    config.shell = args.shell;
    config.login_shell = args.login_shell;
    config.partial_max_age = args.partial_max_age.0;
    config.accept_env.extend(args.accept_env);
    config.exit_when_idle = args.exit_when_idle.map(Duration::from_secs);
    config.insecure = args.insecure;
    config.key = key;
    // A key file the server would serve could be read or rewritten by
    // the keys it lists.
    for (flag, file) in [("--authorized-keys", &args.authorized_keys), ("--host-key", &args.host_key)] {
        if let (Some(file), Ok(root)) = (file, args.root.canonicalize()) {
            let file = file.canonicalize().unwrap_or_else(|_| file.clone());
            anyhow::ensure!(
                !file.starts_with(&root),
                "{flag} {} is inside the served root {}: the keys it lets in could read or rewrite it; keep it outside (e.g. /etc/framewire/)",
                file.display(),
                root.display()
            );
        }
    }
    anyhow::ensure!(
        args.legacy.is_empty() || args.legacy_hmac || args.authorized_keys.is_none(),
        "--legacy listeners know no keys per person: anyone who reaches them would have every right; add --legacy-hmac (the shared key) or leave them out"
    );
    if let Some(path) = &args.authorized_keys {
        let file = framewire::auth::KeyFile::open(path)
            .with_context(|| format!("cannot read the authorized keys {}", path.display()))?;
        config.authorized_keys = Some(std::sync::Arc::new(file));
    }
    if let Some(path) = &args.host_key {
        let host = framewire::auth::Identity::from_file(path, || None)
            .context("the host key (--host-key; it must not have a passphrase)")?;
        tracing::info!(fingerprint = %framewire::auth::identity::fingerprint(host.public()), "host key");
        config.host_key = Some(std::sync::Arc::new(host));
    }
    config.legacy_hmac = args.legacy_hmac;
    if let (Some(cert), Some(tls_key)) = (&args.tls_cert, &args.tls_key) {
        anyhow::ensure!(
            config.key.is_some() || config.authorized_keys.is_some(),
            "--tls-cert needs --key-file or --authorized-keys: TLS is used only with keys"
        );
        config.tls = Some(load_tls(cert, tls_key)?);
    }
    let drain = config.drain_timeout;
    // The root opened (and logged: `serving`) before anything listens.
    let mut server = Server::open(config).await?;
    let listener =
        server::bind(&args.listen, args.backlog).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut legacy = Vec::new();
    for (mode, addr) in &args.legacy {
        let l = server::bind(addr, args.backlog)
            .await
            .with_context(|| format!("cannot listen on {addr} for legacy {mode}"))?;
        legacy.push((*mode, l.local_addr()?));
        server = server.legacy(*mode, l);
    }
    // Scripts read the bound address (useful with port 0) from this line.
    say!("listening on {}", listener.local_addr()?);
    for (mode, addr) in &legacy {
        say!("legacy {mode} listening on {addr}");
    }
    // The first SIGINT or SIGTERM starts the drain, and says how long it
    // may take; a second one ends it at once.
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second) = tokio::sync::oneshot::channel::<()>();
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    let (Ok(mut int), Ok(mut term)) = signals else {
        anyhow::bail!("cannot watch SIGINT and SIGTERM");
    };
    tokio::spawn(async move {
        let name = stop_signal(&mut int, &mut term).await;
        tracing::info!(
            "{name} received: no new connections; live requests may go on for up to {} s (--drain-timeout); \
             SIGINT or SIGTERM again stops at once",
            drain.as_secs()
        );
        let _ = first_tx.send(());
        let name = stop_signal(&mut int, &mut term).await;
        tracing::info!("{name} received again: stopping now");
        let _ = second_tx.send(());
    });
    server.stop_now_on(second).serve(listener, first).await?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM; returns which came.
async fn stop_signal(int: &mut tokio::signal::unix::Signal, term: &mut tokio::signal::unix::Signal) -> &'static str {
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A refused server configuration, with the flags that change it.
pub fn explained(e: &framewire::server::PolicyError) -> String {
    use framewire::server::PolicyError;
    match e {
        PolicyError::OpenAddress(_) | PolicyError::OpenExec => {
            format!("{e}; give a key file (framewire keygen, then --key-file), or --insecure if you mean it")
        }
        PolicyError::LegacyHmacWithoutKey => "--legacy-hmac needs a key file (--key-file)".to_owned(),
        PolicyError::LegacyExecNotAllowed { mode, addr } => {
            format!("legacy {mode} on {addr} runs commands: it needs --allow-exec")
        }
        PolicyError::OpenLegacy { mode, addr } => format!(
            "refusing legacy {mode} on {addr} without --legacy-hmac: anyone who can connect could use it; --insecure if you mean it"
        ),
        _ => e.to_string(),
    }
}

/// A bucket root that cannot be opened, with the flag that changes it.
#[cfg(feature = "s3")]
pub fn explained_bucket(e: &framewire::server::BucketError) -> String {
    use framewire::server::BucketError;
    match e {
        BucketError::PlainHttp { .. } => format!("{e}; --s3-allow-http if you mean it"),
        _ => e.to_string(),
    }
}

/// `--partial-max-age`: a duration, or none.
#[derive(Debug, Clone, Copy)]
pub struct Age(Option<Duration>);

fn parse_age(s: &str) -> Result<Age, String> {
    if s == "off" {
        return Ok(Age(None));
    }
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: expected a number and s, m, h or d (or `off`)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Age(Some(Duration::from_secs(n.saturating_mul(secs)))))
}
