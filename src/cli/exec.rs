//! `framewire exec` and `framewire shell`: remote commands with their
//! output streamed back, stdin forwarded, Ctrl-C passed on as a cancel.

use std::process::ExitCode;
use std::time::Duration;

use super::config::{Settings, Target};
use clap::Args;
use framewire::client::{shell_join, ExecIo, ExecOptions, ExitStatus, WindowSize};
use framewire::proto::ExitReason;
use framewire::text::printable;
use framewire::{Client, ClientError};

use super::term;

/// framewire's own failures during exec exit with this code, as ssh does,
/// so they stand apart from the remote command's codes.
pub const OWN_FAILURE: u8 = 255;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909). Not with -w or --hostfile.
    #[arg(required_unless_present_any = ["hosts", "hostfile"])]
    addr: Option<String>,

    #[command(flatten)]
    fleet: super::fleet::HostArgs,

    /// With -w: hosts at once (default 64); the next starts as soon as
    /// any running one ends.
    #[arg(short = 'f', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    fanout: Option<u16>,

    /// With -w: gather each host's output and print identical outputs
    /// (same stdout, stderr and exit) once, under the folded set of hosts
    /// that gave them, as `clush -b` and `dshbak -c` do.
    #[arg(short = 'b', long = "gather", conflicts_with = "json")]
    gather: bool,

    /// With -w: one JSON object a line on stdout for each host as it ends
    /// (host, status, exit_code, signal, error, stdout, stderr, truncated,
    /// duration).
    #[arg(long)]
    json: bool,

    /// Kill the remote command and everything it started after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,

    /// Do not forward stdin: the remote command's stdin is closed at once
    /// (like `ssh -n`).
    #[arg(short = 'n', long)]
    no_stdin: bool,

    /// Run the command on a pseudo-terminal on the server (when stdin is
    /// a terminal; `-tt` forces one even when it is not), as `ssh -t`.
    #[arg(short = 't', action = clap::ArgAction::Count, conflicts_with = "no_tty")]
    tty: u8,

    /// Never a pseudo-terminal (the default for commands), as `ssh -T`.
    #[arg(short = 'T', long = "no-tty")]
    no_tty: bool,

    #[command(flatten)]
    env: EnvArgs,

    /// The command. One argument is a shell command line as it stands
    /// (pipes, `;`, redirections work); several are quoted so that exactly
    /// that argv runs. Put `--` before it.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Waits for Ctrl-C, from the moment it is called; a second one ends this
/// process at once.
fn interrupted() -> impl std::future::Future<Output = ()> + Send {
    let mut interrupts = super::Interrupts::from_now();
    async move {
        interrupts.next().await;
        tokio::spawn(async move {
            interrupts.next().await;
            std::process::exit(130);
        });
        eprintln!("framewire: interrupting the remote command (Ctrl-C again to quit at once)");
    }
}

/// Says how the command ended when it did not end by itself, and turns
/// the status into this process's exit code.
fn report(status: ExitStatus, timeout: Option<Duration>) -> ExitCode {
    match status.reason {
        ExitReason::Exited => {}
        ExitReason::Timeout => eprintln!(
            "framewire: remote command timed out after {:?}; its process group was killed",
            timeout.unwrap_or_default()
        ),
        ExitReason::Cancelled => {
            eprintln!("framewire: interrupted; the remote process group was killed");
            return ExitCode::from(130);
        }
        ExitReason::Shutdown => eprintln!("framewire: the server shut down; the remote command was killed"),
        ExitReason::Revoked => {
            eprintln!("framewire: the key was revoked on the server; the remote command was killed")
        }
        _ => eprintln!("framewire: the remote command ended ({:?})", status.reason),
    }
    ExitCode::from(status.code().clamp(0, 255) as u8)
}

/// `-e NAME=VALUE`, shared by exec and shell.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Set NAME to VALUE for the remote command (repeatable). The server
    /// sets only the names its --accept-env allows (TERM, LANG and LC_*
    /// by default) and names the others, refused, in one line.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    vars: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

/// Sends `vars` for the next exec and says, in one line, which the server
/// refused.
async fn send_env(client: &mut Client, vars: &[(String, String)]) -> Result<(), ClientError> {
    if vars.is_empty() {
        return Ok(());
    }
    let answer = client.set_env(vars).await?;
    if !answer.refused.is_empty() {
        let names: Vec<String> = answer.refused.iter().map(|n| printable(n).into_owned()).collect();
        eprintln!("framewire: the server refused to set {} (see its --accept-env)", names.join(", "));
    }
    Ok(())
}

/// Whether a command gets a pseudo-terminal: ssh's rule. `-T` never;
/// `-tt` always; `-t` when stdin is a terminal (else a note, and none);
/// none by default.
fn wants_tty(t: u8, no_tty: bool, stdin_tty: bool) -> bool {
    match (no_tty, t) {
        (true, _) | (false, 0) => false,
        (false, 1) if !stdin_tty => {
            eprintln!("framewire: not allocating a terminal: stdin is not one (use -tt to force it)");
            false
        }
        _ => true,
    }
}

/// Asks for a terminal of our window's size (24x80 if we have none).
async fn request_pty(client: &mut Client) -> Result<(), ClientError> {
    let size = term::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 });
    client.request_pty(&term::term(), size).await
}

/// One command line: one argument as it stands, several quoted.
fn command_line(words: &[String]) -> String {
    if words.len() == 1 {
        words[0].clone()
    } else {
        shell_join(words)
    }
}

/// `exec -w`: the command on every host of the set.
async fn on_hosts(args: ExecArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.tty == 0, "-t: a terminal is for one host; run without -t on a host set");
    let words: Vec<String> = args.addr.into_iter().chain(args.command).collect();
    anyhow::ensure!(!words.is_empty(), "no command: give it after the hosts (framewire exec -w HOSTS -- CMD)");
    let names = args.fleet.names(settings)?;
    let hosts = super::fleet::resolve(names, settings, None, args.timeout)?;
    let shown = match (args.gather, args.json) {
        (true, _) => super::fleet::Shown::Gathered,
        (false, true) => super::fleet::Shown::Json,
        (false, false) => super::fleet::Shown::Lines,
    };
    let fanout = args.fanout.map_or(framewire::client::fleet::DEFAULT_FANOUT, usize::from);
    super::fleet::exec(hosts, command_line(&words), args.env.vars, fanout, shown).await
}

pub async fn run(args: ExecArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    if args.fleet.given() {
        return on_hosts(args, settings).await;
    }
    args.fleet.check_single()?;
    for (given, flag) in [(args.fanout.is_some(), "-f"), (args.gather, "-b"), (args.json, "--json")] {
        anyhow::ensure!(!given, "{flag} is for a host set: give one with -w or --hostfile");
    }
    let addr = args.addr.as_deref().expect("clap requires the address without -w");
    anyhow::ensure!(!args.command.is_empty(), "no command: give it after the host (framewire exec HOST -- CMD)");
    let target = settings.resolve(addr);
    let timeout = super::timeout(args.timeout.or(target.timeout))?;
    let command = command_line(&args.command);
    let stdin_tty = term::stdin_is_tty();
    let tty = wants_tty(args.tty, args.no_tty, stdin_tty);
    let mut client = target.connect().await?;
    if tty {
        request_pty(&mut client).await?;
    }
    send_env(&mut client, &args.env.vars).await?;
    let options = ExecOptions::with_timeout(timeout);
    let status = if tty && stdin_tty && !args.no_stdin {
        on_terminal(&mut client, &command, &options).await?
    } else {
        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        let mut stdin = tokio::io::stdin();
        let mut cancel = std::pin::pin!(interrupted());
        let io = ExecIo {
            stdin: if args.no_stdin { None } else { Some(&mut stdin) },
            stdout: &mut stdout,
            stderr: &mut stderr,
            cancel: Some(cancel.as_mut()),
            resize: None,
        };
        client.exec(&command, &options, io).await?
    };
    Ok(report(status, timeout))
}

/// Runs the exec (a pty was asked for) with the local terminal in raw
/// mode: every key goes to the remote program, window changes follow, and
/// SIGTERM or SIGHUP end the remote command. The terminal's settings are
/// restored however this returns.
async fn on_terminal(client: &mut Client, command: &str, options: &ExecOptions) -> Result<ExitStatus, ClientError> {
    let mut stderr = tokio::io::stderr();
    let mut resizes = term::resizes().ok();
    let mut cancel = std::pin::pin!(term::terminated());
    let raw = term::Raw::enter().map_err(|e| ClientError::Local { path: "stdin".into(), source: e })?;
    // Keys and output straight through the reactor, no thread hand-off
    // per read and write (where the descriptors allow it).
    let mut stdin: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match term::Nonblocking::new(rustix::stdio::stdin()) {
        Ok(fd) => Box::new(fd),
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let mut stdout: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match term::Nonblocking::new(rustix::stdio::stdout())
    {
        Ok(fd) => Box::new(fd),
        Err(_) => Box::new(tokio::io::stdout()),
    };
    let io = ExecIo {
        stdin: Some(&mut stdin),
        stdout: &mut stdout,
        stderr: &mut stderr,
        cancel: Some(cancel.as_mut()),
        resize: resizes.as_mut(),
    };
    let status = client.exec(command, options, io).await;
    // Blocking again before the settings go back and anything is printed;
    // in the reverse order of their making, since both may share one
    // description (the second saw the first's O_NONBLOCK).
    drop(stdout);
    drop(stdin);
    drop(raw);
    status
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,

    /// Kill the session (in line mode, each command) and everything it
    /// started after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,

    /// The tutorial's line mode: a local `>>>` prompt, each line run as
    /// its own command (what `shell` does when stdin is not a terminal).
    #[arg(long)]
    lines: bool,

    #[command(flatten)]
    env: EnvArgs,
}

/// Runs one line of the shell; Ctrl-C meanwhile cancels it (the process
/// group is killed), not the shell.
async fn run_line(
    client: &mut Client,
    command: &str,
    timeout: Option<Duration>,
    env: &[(String, String)],
) -> Result<ExitStatus, ClientError> {
    send_env(client, env).await?;
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut interrupts = super::Interrupts::from_now();
    let mut cancel = std::pin::pin!(async move { interrupts.next().await });
    let io =
        ExecIo { stdin: None, stdout: &mut stdout, stderr: &mut stderr, cancel: Some(cancel.as_mut()), resize: None };
    client.exec(command, &ExecOptions::with_timeout(timeout), io).await
}

/// Says how a line's command ended, unless it ended well; returns its
/// exit code.
fn report_line(status: &ExitStatus) -> u8 {
    match status.reason {
        ExitReason::Exited if status.code() != 0 => eprintln!("[exit {}]", status.code()),
        ExitReason::Exited => {}
        ExitReason::Timeout => eprintln!("[timed out: process group killed, exit {}]", status.code()),
        ExitReason::Cancelled => eprintln!("[interrupted: process group killed]"),
        _ => eprintln!("[{:?}, exit {}]", status.reason, status.code()),
    }
    status.code().clamp(0, 255) as u8
}

/// `framewire shell`: on a terminal, the server user's login shell on a
/// pseudo-terminal of its own (`cd` persists, job control, full-screen
/// programs; the exit code is the shell's); otherwise, or with `--lines`,
/// the tutorial's `>>>` loop.
pub fn shell(args: ShellArgs, rt: &tokio::runtime::Runtime, settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = settings.resolve(&args.addr);
    // Only the flag: the config file's `timeout` is for commands, and an
    // interactive session ended by it would surprise.
    let timeout = super::timeout(args.timeout)?;
    let mut client = rt.block_on(target.connect())?;
    if !args.lines && term::stdin_is_tty() {
        let session = rt.block_on(async {
            request_pty(&mut client).await?;
            send_env(&mut client, &args.env.vars).await?;
            on_terminal(&mut client, "", &ExecOptions::with_timeout(timeout).login_shell()).await
        });
        match session {
            Ok(status) => return Ok(report(status, timeout)),
            Err(ClientError::NoTerminalSupport) => {
                eprintln!("framewire: this server has no terminal support; one command a line instead");
            }
            Err(e) => return Err(e.into()),
        }
    }
    lines(args, rt, &target, client, timeout)
}

/// The tutorial's `>>>` loop, made right: line editing and history, `exit`
/// or Ctrl-D to leave, Ctrl-C interrupts the running command (not the
/// shell), non-zero exit codes shown.
fn lines(
    args: ShellArgs,
    rt: &tokio::runtime::Runtime,
    target: &Target,
    mut client: Client,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".framewire_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let prompt = format!("{}>>> ", client.peer_addr());
    let mut last = 0u8;
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue, // Ctrl-C at the prompt: a fresh line
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(command);
        if command == "exit" || command == "quit" {
            break;
        }
        match rt.block_on(run_line(&mut client, command, timeout, &args.env.vars)) {
            Ok(status) => last = report_line(&status),
            Err(e) if e.code().is_some() => eprintln!("framewire: {}", printable(&super::explained(&e))),
            Err(e) => {
                eprintln!("framewire: connection lost: {}", printable(&e.to_string()));
                last = OWN_FAILURE;
                match rt.block_on(target.connect()) {
                    Ok(c) => {
                        eprintln!("framewire: reconnected");
                        client = c;
                    }
                    Err(e) => {
                        eprintln!("framewire: cannot reconnect: {}", super::one_line(&e));
                        break;
                    }
                }
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::from(last))
}
