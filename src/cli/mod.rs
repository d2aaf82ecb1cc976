//! Command-line interface: argument definitions (clap derive) and the
//! dispatch to each subcommand.

/// `println!` for what framewire itself prints on stdout (listings, the
/// demo), without its panic when stdout fails: `framewire ls HOST | head`
/// must not end in a panic. See [`say_line`].
macro_rules! say {
    () => { $crate::cli::say_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::say_line(format_args!($($arg)*)) };
}

mod config;
mod demo;
mod echo;
mod exec;
mod files;
mod fleet;
mod ops;
mod serve;
mod sticky;
mod term;

pub use exec::OWN_FAILURE;
pub use files::REFUSED;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Length-prefixed framing over TCP done properly, and a small agent for
/// commands and files built on it.
#[derive(Debug, Parser)]
#[command(name = "framewire", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// The shared key (from `framewire keygen`): the server requires it,
    /// clients prove they hold it; the connection is then encrypted.
    #[arg(long, global = true, env = "FRAMEWIRE_KEY_FILE", value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,

    /// A key of your own (an OpenSSH Ed25519 private key, as ssh's -i):
    /// for servers that take keys per person (`serve --authorized-keys`).
    /// Without it (and without --key-file), the keys in ssh-agent and
    /// ~/.ssh/id_ed25519 are tried, as ssh does. A host's `identity` in
    /// the config file sets it too.
    #[arg(short = 'i', long = "identity", global = true, value_name = "FILE")]
    identity: Option<std::path::PathBuf>,

    /// The file of servers' host keys (default
    /// ~/.config/framewire/known_hosts), checked when a key of your own is
    /// used.
    #[arg(long, global = true, value_name = "FILE")]
    known_hosts: Option<std::path::PathBuf>,

    /// Record the host key of a server not known yet, without asking (a
    /// changed key is still refused): for scripts and fleets.
    #[arg(long, global = true)]
    accept_new: bool,

    /// Whether the key file came from FRAMEWIRE_KEY_FILE rather than the
    /// command line (a host's entry in the config file sits between).
    #[arg(skip)]
    key_file_from_env: bool,

    /// The config file (host aliases, groups, defaults for flags); default
    /// ~/.config/framewire/config.toml.
    #[arg(long, global = true, env = "FRAMEWIRE_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Give up on a server that has not connected and finished the
    /// handshake (TLS, key proof) within SECS seconds: a host down, or one
    /// that accepts and never answers (each host of a fan-out apart).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    connect_timeout: f64,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG, if set,
    /// takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the native protocol on a TCP address.
    #[command(
        after_help = "Examples:\n  framewire keygen /etc/framewire/key\n  framewire serve --listen 0.0.0.0:9909 --root /srv/files --key-file /etc/framewire/key\n  framewire serve --root . --allow-exec --key-file key --log-format json"
    )]
    Serve(serve::ServeArgs),
    /// Send TEXT (or stdin with `-`) to a server and print what comes back.
    #[command(after_help = "Examples:\n  framewire echo 127.0.0.1 hello\n  framewire echo web - < big.bin")]
    Echo(echo::EchoArgs),
    /// Run a command on the server: output streamed back, stdin forwarded,
    /// the remote exit code returned.
    #[command(
        after_help = "Examples:\n  framewire exec web -- uptime\n  framewire exec web --timeout 30 -- 'make -j4 && make test'\n  framewire exec -t web -- top\n  framewire exec -e LANG=C.UTF-8 web -- locale\n  framewire exec -w 'web[01-20]' -x web07 -- uptime\n  framewire exec -w @db -b --timeout 60 -- 'df -h /'\n  framewire exec --hostfile hosts.txt -f 200 --json -- 'uname -r'"
    )]
    Exec(exec::ExecArgs),
    /// An interactive prompt running each line on the server.
    #[command(after_help = "Examples:\n  framewire shell web\n  framewire shell --lines 127.0.0.1:9909")]
    Shell(exec::ShellArgs),
    /// List files on the server.
    #[command(
        after_help = "Examples:\n  framewire ls web\n  framewire ls -r web logs --json\n  framewire ls --partial web"
    )]
    Ls(files::LsArgs),
    /// Download files (or trees with -r) from the server.
    #[command(
        after_help = "Examples:\n  framewire get web:logs/app.log .\n  framewire get web logs/app.log logs/old.log backup/\n  framewire get -r --bwlimit 10M web:photos ./photos\n  framewire get web:report.csv - | head\n  framewire get -w 'web[01-20]' logs/app.log ./logs    (./logs/web01/app.log, ...)"
    )]
    Get(files::GetArgs),
    /// Upload files (or trees with -r) to the server.
    #[command(
        after_help = "Examples:\n  framewire put notes.txt web:docs/\n  framewire put web notes.txt docs/\n  framewire put -r --delete --exclude target/ ./site web:www\n  framewire put -w 'web[01-20]' -r ./site www"
    )]
    Put(files::PutArgs),
    /// Remove files (directories with -r) on the server.
    #[command(after_help = "Examples:\n  framewire rm web old.log\n  framewire rm -r web build/")]
    Rm(ops::RmArgs),
    /// Rename a path on the server, atomically (--force to replace).
    #[command(
        after_help = "Examples:\n  framewire mv web upload.tmp release.tar\n  framewire mv --force web next current"
    )]
    Mv(ops::MvArgs),
    /// Create directories on the server (-p: with their parents).
    #[command(after_help = "Examples:\n  framewire mkdir web incoming\n  framewire mkdir -p web a/b/c")]
    Mkdir(ops::MkdirArgs),
    /// Show what framewire does, end to end on loopback, with no setup.
    Demo(DemoArgs),
    /// Write a new random key to FILE (mode 0600) for --key-file; with
    /// --ssh, an OpenSSH Ed25519 key pair (FILE and FILE.pub) instead.
    #[command(
        after_help = "Examples:\n  framewire keygen ~/.config/framewire/key\n  framewire keygen --ssh /etc/framewire/host_key\n  framewire keygen --ssh ~/.ssh/id_ed25519 -C alice@laptop"
    )]
    Keygen(KeygenArgs),
    /// The known hosts file: list its entries, or remove a host's.
    #[command(
        after_help = "Examples:\n  framewire known-hosts\n  framewire known-hosts --remove '[web.example]:9909'"
    )]
    KnownHosts(KnownHostsArgs),
    /// Print a completion script for SHELL (e.g. `framewire completions
    /// bash > /etc/bash_completion.d/framewire`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print framewire's man page (roff; `framewire man | man -l -`).
    Man,
    /// Print the hosts a host set names, one a line (`web[01-20]`,
    /// `db[1-3,7]`, `@group`, comma lists), or with --fold the set folded.
    #[command(
        after_help = "Examples:\n  framewire hosts 'web[01-04],db[1-2]'\n  framewire hosts @web -x 'web[03-04]'\n  framewire hosts --fold web01,web02,web03,web07"
    )]
    Hosts(HostsArgs),
    /// The config file: `config show HOST` prints what applies to HOST.
    #[command(
        subcommand,
        after_help = "Examples:\n  framewire config show web\n  framewire --config ./lab.toml config show"
    )]
    Config(ConfigWhich),
}

#[derive(Debug, Args)]
struct HostsArgs {
    /// The host set: names with `[N-M,K]` ranges (zero padding kept),
    /// `@group` from the config file, separated by commas.
    hosts: String,
    /// Leave out these hosts (a host set too).
    #[arg(short = 'x', long, value_name = "HOSTS")]
    exclude: Option<String>,
    /// Print the set folded (`web[01-03,07]`) instead of one host a line.
    #[arg(long)]
    fold: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigWhich {
    /// Print the address, port, key file, remote directory and defaults
    /// that apply to HOST, and where each comes from (without HOST: the
    /// file's hosts and groups).
    Show {
        /// An alias from the config file, or any host argument.
        host: Option<String>,
    },
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the key; an existing file is never replaced.
    file: std::path::PathBuf,
    /// An OpenSSH Ed25519 key pair, as `ssh-keygen -t ed25519 -N ''`
    /// makes (a host key for --host-key, or a key of your own for -i).
    #[arg(long)]
    ssh: bool,
    /// The public key's comment (with --ssh).
    #[arg(short = 'C', long, requires = "ssh", default_value = "")]
    comment: String,
}

#[derive(Debug, Args)]
struct KnownHostsArgs {
    /// Remove every entry of this host (`[host]:port`, as listed).
    #[arg(long, value_name = "HOST")]
    remove: Option<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(subcommand)]
    which: Option<DemoWhich>,
}

#[derive(Debug, Subcommand)]
enum DemoWhich {
    /// Reproduce sticky and half packets on loopback, and show framing fix them.
    Sticky,
    /// Start a server on an ephemeral loopback port and echo through it.
    Echo,
}

/// `-v` given this many times.
static VERBOSE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether `-v` was given: log lines then take the place of progress
/// bars, which they would tear.
pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Logs go to stderr, so stdout stays for the command's own output.
/// The server's lines carry a time stamp and where they come from; a
/// client's `-v` lines are only the level and what happened, as a tool's
/// own report.
pub fn init_logging(cli: &Cli) {
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    let default = match (cli.verbose, &cli.command) {
        (0, Command::Serve(_)) => "info",
        // The demo reports what happens itself; the server inside it cuts
        // a transfer on purpose and would warn about it.
        (0, Command::Demo(_)) => "error",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match &cli.command {
        Command::Serve(args) if args.log_format == serve::LogFormat::Json => {
            // One JSON object a line: timestamp, level, fields, message.
            builder.json().flatten_event(true).with_current_span(false).init();
        }
        Command::Serve(_) => builder.with_ansi(ansi).init(),
        _ => builder.with_ansi(ansi).without_time().with_target(false).init(),
    }
}

/// Parses the command line. A `--key-file` or `--config` given on the
/// command line to a subcommand that uses neither (`keygen`, `demo`,
/// `serve` for `--config`) is a usage error rather than silently ignored;
/// the environment's (`FRAMEWIRE_KEY_FILE`, `FRAMEWIRE_CONFIG`) are left
/// alone there, as the environment is meant for every command.
pub fn parse() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches.subcommand().map(|(_, m)| m);
    let source = |id: &str| sub.and_then(|m| m.value_source(id)).or_else(|| matches.value_source(id));
    cli.key_file_from_env = source("key_file") == Some(ValueSource::EnvVariable);
    let given = |id: &str| source(id) == Some(ValueSource::CommandLine);
    let no_key = match &cli.command {
        Command::Keygen(_) => Some("keygen writes a new key to FILE; it reads none"),
        Command::Demo(_) => Some("the demo makes its own key"),
        Command::Completions { .. } | Command::Man => Some("it only prints text"),
        Command::Hosts(_) => Some("it only expands host sets"),
        Command::KnownHosts(_) => Some("it only reads and edits the known hosts file"),
        _ => None,
    };
    let no_config = match &cli.command {
        Command::Serve(_) => Some("the config file is the client's; the server takes flags"),
        // Its groups come from the config file.
        Command::Hosts(_) => None,
        _ => no_key,
    };
    for (id, flag, why) in [("key_file", "--key-file", no_key), ("config", "--config", no_config)] {
        if let Some(why) = why.filter(|_| given(id)) {
            let msg = format!("{flag} means nothing here: {why}");
            Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit();
        }
    }
    cli
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(KeygenArgs { file, ssh: true, comment }) => {
            let public = framewire::auth::identity::generate(&file, &comment)
                .with_context(|| format!("cannot write a key pair to {}", file.display()))?;
            eprintln!(
                "wrote an Ed25519 key pair: {} (mode 0600) and {}.pub\nits fingerprint: {}",
                file.display(),
                file.display(),
                framewire::auth::identity::fingerprint(&public)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::KnownHosts(KnownHostsArgs { remove }) => {
            let file = cli
                .known_hosts
                .or_else(framewire::auth::known_hosts::default_file)
                .context("no known hosts file: give --known-hosts")?;
            match remove {
                Some(host) => {
                    let n = framewire::auth::known_hosts::remove(&file, &host)?;
                    eprintln!("removed {n} entr{} of {host} from {}", if n == 1 { "y" } else { "ies" }, file.display());
                }
                None => match std::fs::read_to_string(&file) {
                    Ok(text) => print!("{text}"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(KeygenArgs { file, .. }) => {
            framewire::auth::Key::generate().write_new(&file)?;
            eprintln!(
                "wrote a new key to {} (mode 0600); give it to the server and clients with --key-file",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "framewire", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let key = cli.key_file.as_deref().map(framewire::auth::Key::from_file).transpose()?;
            block_on(serve::run(args, key))
        }
        Command::Demo(DemoArgs { which: Some(DemoWhich::Sticky) }) => sticky::run(),
        Command::Demo(DemoArgs { which: Some(DemoWhich::Echo) }) => block_on(demo::echo()),
        Command::Demo(DemoArgs { which: None }) => demo::all(),
        command => {
            let (cli_key, env_key) = match cli.key_file {
                Some(k) if cli.key_file_from_env => (None, Some(k)),
                k => (k, None),
            };
            let keys =
                config::KeyFlags { identity: cli.identity, known_hosts: cli.known_hosts, accept_new: cli.accept_new };
            let settings = config::Settings::load(cli.config.as_deref(), cli_key, env_key)?
                .with_connect_timeout(std::time::Duration::from_secs_f64(cli.connect_timeout))
                .with_keys(keys);
            client_command(command, &settings)
        }
    }
}

/// Runs a subcommand that talks to servers (or reads the config file's
/// groups), with the config file's settings.
fn client_command(command: Command, s: &config::Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config(ConfigWhich::Show { host }) => {
            print!("{}", s.show(host.as_deref()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Hosts(HostsArgs { hosts, exclude, fold }) => {
            let groups = |name: &str| s.group(name).map(|m| m.into_iter().map(str::to_owned).collect());
            let hosts = framewire::client::hosts::expand_excluding(&hosts, exclude.as_deref(), &groups)?;
            if fold {
                say!("{}", framewire::client::hosts::fold(&hosts));
            } else {
                for host in &hosts {
                    say!("{}", framewire::text::printable(host));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo(args) => block_on(echo::run(args, s)),
        Command::Exec(args) => block_on(exec::run(args, s)),
        Command::Shell(args) => {
            let rt = interactive_runtime()?;
            let code = exec::shell(args, &rt, s);
            rt.shutdown_background();
            code
        }
        Command::Ls(args) => block_on(files::ls(args, s)),
        Command::Get(args) => block_on(files::get(args, s)),
        Command::Put(args) => block_on(files::put(args, s)),
        Command::Rm(args) => block_on(ops::rm(args, s)),
        Command::Mv(args) => block_on(ops::mv(args, s)),
        Command::Mkdir(args) => block_on(ops::mkdir(args, s)),
        _ => unreachable!("run() takes the others"),
    }
}

/// `--timeout SECS` as a duration.
pub fn timeout(secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    secs.map(|s| Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--timeout {s}: not a number of seconds")))
        .transpose()
}

/// A positive, finite number of seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?}: a positive number of seconds")),
    }
}

/// The first failed write to stdout, if one failed.
static STDOUT_FAILED: std::sync::OnceLock<std::io::ErrorKind> = std::sync::OnceLock::new();

/// Ctrl-Cs from the moment this is made. The handler is in place when
/// [`Interrupts::from_now`] returns, so a Ctrl-C that comes before the
/// first wait (while a request is still being sent) is not lost to the
/// default action, the process's death by SIGINT; one that comes between
/// two waits is kept for the second.
pub struct Interrupts(Option<tokio::signal::unix::Signal>);

impl Interrupts {
    pub fn from_now() -> Interrupts {
        use tokio::signal::unix::{signal, SignalKind};
        Interrupts(signal(SignalKind::interrupt()).ok())
    }

    /// The next Ctrl-C; never, if no handler could be set.
    pub async fn next(&mut self) {
        if let Some(interrupts) = &mut self.0 {
            if interrupts.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Writes one line to stdout. Once a write has failed, later lines are
/// dropped and the command goes on to its end (so the demo still cleans
/// up); [`stdout_failure`] then decides the exit.
pub fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_FAILED.get().is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        let _ = STDOUT_FAILED.set(e.kind());
    }
}

/// How a failed write to stdout ends the process, if one failed: quietly
/// with [`READER_GONE`] when the reader went away, else with one error
/// line.
pub fn stdout_failure() -> Option<ExitCode> {
    let kind = *STDOUT_FAILED.get()?;
    if kind == std::io::ErrorKind::BrokenPipe {
        return Some(ExitCode::from(READER_GONE));
    }
    eprintln!("framewire: error: writing stdout: {}", std::io::Error::from(kind));
    Some(ExitCode::FAILURE)
}

/// The exit code of a process ended by SIGPIPE (128 + 13), which is how
/// framewire ends when whatever reads its stdout has gone away.
pub const READER_GONE: u8 = 141;

/// Whether `e` comes from writing to a stdout nobody reads any more
/// (`framewire exec HOST -- cat log | head`): a broken pipe, and stdout is a
/// pipe without a reader. The reader has had all it wanted, so framewire
/// then ends quietly with [`READER_GONE`], as tools killed by SIGPIPE do
/// (the remote command, if any, is killed as for a lost connection). A
/// broken pipe toward the server is still an error.
pub fn stdout_gone(e: &anyhow::Error) -> bool {
    let broken = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
    broken && stdout_has_no_reader()
}

fn stdout_has_no_reader() -> bool {
    let mut stdout = libc::pollfd { fd: libc::STDOUT_FILENO, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd, no wait. A pipe whose readers are all gone
    // polls as POLLERR on its write end.
    let ready = unsafe { libc::poll(&mut stdout, 1, 0) };
    ready == 1 && stdout.revents & libc::POLLERR != 0
}

/// An error as one line: what failed, then why, outermost first. A cause
/// whose text the line already ends with (an error that prints its source
/// and also returns it as its source) is not repeated. Control characters
/// (a server's message may carry names it chose) are escaped, so the line
/// stays one line and cannot drive the terminal.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let plain = cause.to_string();
        let cause = explain_cause(cause);
        if line.ends_with(&cause) {
            continue;
        }
        // Said already by the error it is the source of: said again only
        // if the CLI has more to say of it (a flag), in place.
        if line.ends_with(&plain) {
            line.truncate(line.len() - plain.len());
            line.push_str(&cause);
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    framewire::text::printable(&line).into_owned()
}

/// One cause of an error, with what to do about it in the CLI's terms
/// where the library's error names a situation a flag changes.
fn explain_cause(cause: &(dyn std::error::Error + 'static)) -> String {
    if let Some(e) = cause.downcast_ref::<framewire::ClientError>() {
        return explained(e);
    }
    if let Some(framewire::server::ServeError::Policy(policy)) = cause.downcast_ref() {
        return serve::explained(policy);
    }
    #[cfg(feature = "s3")]
    if let Some(e) = cause.downcast_ref::<framewire::server::BucketError>() {
        return serve::explained_bucket(e);
    }
    cause.to_string()
}

/// A copy that could not be planned, in the CLI's words: `cannot VERB
/// PATH: why`, or what to do about a directory.
pub fn plan_words(e: &framewire::client::tree::PlanError, verb: &str) -> String {
    use framewire::client::tree::PlanError;
    match e {
        PlanError::IsADirectory(path) => format!("{path}: is a directory (use -r)"),
        PlanError::Source { path, error } => format!("cannot {verb} {path}: {}", explained(error)),
        e => e.to_string(),
    }
}

/// Where progress bars go: stderr when it is a terminal, nowhere with
/// `quiet` or `-v` (log lines would tear them).
pub fn draw_target(quiet: bool) -> indicatif::ProgressDrawTarget {
    if quiet || verbose() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    }
}

/// A client error, with the flag that changes the situation where one does.
pub fn explained(e: &framewire::ClientError) -> String {
    explained_for(e, Hints::COPY)
}

/// The flags a command has (and was not given) that change a refusal:
/// what [`explained_for`] may suggest. The server's words name none
/// (DESIGN.md, "The public surface"); the CLI's hint is keyed on the code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    /// `--force` replaces what exists (a copy, `mv`; not `rm -f` nor
    /// `mkdir`).
    pub force: bool,
    /// `-r` removes a directory (`rm` without it).
    pub recursive: bool,
    /// `-p` accepts a directory that exists (`mkdir` without it).
    pub parents: bool,
}

impl Hints {
    /// A copy's or `mv`'s: `--force`.
    pub const COPY: Hints = Hints { force: true, recursive: false, parents: false };
}

/// [`explained`] for a command with the flags `hints` names: each is
/// suggested only where it applies.
pub fn explained_for(e: &framewire::ClientError, hints: Hints) -> String {
    use framewire::{ClientError, ErrorCode};
    match e {
        ClientError::AuthRequired => format!("{e}: use --key-file FILE (or set FRAMEWIRE_KEY_FILE)"),
        ClientError::AuthUnavailable => format!("{e} (run the client without --key-file)"),
        ClientError::TooManyDeletions { .. } => format!("{e} (--max-delete)"),
        ClientError::LocalExists(_) | ClientError::Remote { code: ErrorCode::Exists, .. } if hints.force => {
            format!("{e} (use --force to replace it)")
        }
        ClientError::Local { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists && hints.force => {
            format!("{e} (use --force to replace it)")
        }
        ClientError::Remote { code: ErrorCode::Exists, .. } if hints.parents => {
            format!("{e} (-p accepts a directory that exists)")
        }
        ClientError::Remote { code: ErrorCode::IsADirectory, .. } if hints.recursive => format!("{e} (use -r)"),
        ClientError::Remote { code: ErrorCode::ExecDisabled, message } if message.contains("exec directory") => {
            format!("{e}: the server must be started with --exec-dir DIR")
        }
        ClientError::Remote { code: ErrorCode::ExecDisabled, .. } => {
            format!("{e}: the server must be started with --allow-exec")
        }
        _ => e.to_string(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// One thread for an interactive session: a keystroke and its echo each
/// wake the one task that forwards them, and no wake-up crosses threads.
fn interactive_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Runs `fut` to completion on a fresh runtime, then leaves without waiting
/// for blocking threads: one may sit in a read of the terminal (forwarded
/// stdin) that nothing will ever answer.
pub fn block_on<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = runtime()?;
    let out = rt.block_on(fut);
    rt.shutdown_background();
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// clap's own checks of the definitions (unique names, valid
    /// requirements), which it otherwise makes only when a debug build
    /// parses that subcommand.
    #[test]
    fn the_command_line_is_well_defined() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[derive(Debug, thiserror::Error)]
    #[error("I/O error: {0}")]
    struct Shows(#[from] std::io::Error);

    #[test]
    fn one_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "Broken pipe");
        let e = anyhow::Error::new(Shows(io)).context("writing stdout");
        assert_eq!(one_line(&e), "writing stdout: I/O error: Broken pipe");
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(one_line(&plain), "outer: root cause");
        let forged = anyhow::anyhow!("no such file: x\n\x1b[2Kframewire: all good").context("get");
        assert_eq!(one_line(&forged), "get: no such file: x\\n\\x1b[2Kframewire: all good");
    }

    /// The library says a plain http endpoint is refused; the CLI names
    /// the flag, once, in place of the cause the line already gave.
    #[cfg(feature = "s3")]
    #[test]
    fn a_plain_http_endpoint_names_the_flag_once() {
        use framewire::server::{BucketError, ServeError};
        let source = BucketError::PlainHttp { endpoint: "http://127.0.0.1:9".into() };
        assert!(!source.to_string().contains("--"), "{source}");
        let e = anyhow::Error::new(ServeError::Bucket { url: "s3://b".into(), source }).context("serve");
        let line = one_line(&e);
        assert_eq!(line.matches("plain http is refused").count(), 1, "{line}");
        assert_eq!(line.matches("--s3-allow-http").count(), 1, "{line}");
        assert!(line.starts_with("serve: cannot serve s3://b: http://127.0.0.1:9: plain http"), "{line}");
    }

    /// The hints a command's flags give, keyed on the code, never doubled
    /// (the server's words name no flag).
    #[test]
    fn hints_follow_the_command_and_the_code() {
        use super::{explained, explained_for, Hints};
        use framewire::{ClientError, ErrorCode};
        let remote = |code, message: &str| ClientError::Remote { code, message: message.to_owned() };
        let exists = remote(ErrorCode::Exists, "f: already exists on the server");
        let said = exists.to_string();
        assert_eq!(explained(&exists), format!("{said} (use --force to replace it)"));
        let mkdir = Hints { parents: true, ..Hints::default() };
        assert_eq!(explained_for(&exists, mkdir), format!("{said} (-p accepts a directory that exists)"));
        assert_eq!(explained_for(&exists, Hints::default()), said);
        let dir = remote(ErrorCode::IsADirectory, "d: is a directory on the server");
        let said = dir.to_string();
        let rm = Hints { recursive: true, ..Hints::default() };
        assert_eq!(explained_for(&dir, rm), format!("{said} (use -r)"));
        assert_eq!(explained(&dir), said, "a copy onto a directory: -r is no answer");
    }
}
