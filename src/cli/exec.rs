//! `framewire exec` and `framewire shell`: remote commands with their
//! output streamed back, stdin forwarded, Ctrl-C passed on as a cancel.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use framewire::auth::Key;
use framewire::client::{shell_join, ExecIo, ExecOptions, ExitStatus};
use framewire::proto::ExitReason;
use framewire::text::printable;
use framewire::{Client, ClientError};

/// framewire's own failures during exec exit with this code, as ssh does,
/// so they stand apart from the remote command's codes.
pub const OWN_FAILURE: u8 = 255;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Server address, `host[:port]` (default port 9909).
    addr: String,

    /// Kill the remote command and everything it started after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,

    /// Do not forward stdin: the remote command's stdin is closed at once
    /// (like `ssh -n`).
    #[arg(short = 'n', long)]
    no_stdin: bool,

    /// The command. One argument is a shell command line as it stands
    /// (pipes, `;`, redirections work); several are quoted so that exactly
    /// that argv runs. Put `--` before it.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    command: Vec<String>,
}

fn timeout(secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    secs.map(|s| Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--timeout {s}: not a number of seconds")))
        .transpose()
}

/// Waits for Ctrl-C; a second one ends this process at once.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        return std::future::pending().await;
    }
    eprintln!("framewire: interrupting the remote command (Ctrl-C again to quit at once)");
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
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
        _ => eprintln!("framewire: the remote command ended ({:?})", status.reason),
    }
    ExitCode::from(status.code().clamp(0, 255) as u8)
}

pub async fn run(args: ExecArgs, key: Option<Key>) -> anyhow::Result<ExitCode> {
    let timeout = timeout(args.timeout)?;
    let command = if args.command.len() == 1 { args.command[0].clone() } else { shell_join(&args.command) };
    let mut client = Client::connect_with(&args.addr, key.as_ref()).await?;
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut stdin = tokio::io::stdin();
    let mut cancel = std::pin::pin!(interrupted());
    let io = ExecIo {
        stdin: if args.no_stdin { None } else { Some(&mut stdin) },
        stdout: &mut stdout,
        stderr: &mut stderr,
        cancel: Some(cancel.as_mut()),
    };
    let status = client.exec(&command, &ExecOptions::with_timeout(timeout), io).await?;
    Ok(report(status, timeout))
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Server address, `host[:port]` (default port 9909).
    addr: String,

    /// Kill each command and everything it started after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

/// Runs one line of the shell; Ctrl-C meanwhile cancels it (the process
/// group is killed), not the shell.
async fn run_line(client: &mut Client, command: &str, timeout: Option<Duration>) -> Result<ExitStatus, ClientError> {
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut cancel = std::pin::pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let io = ExecIo { stdin: None, stdout: &mut stdout, stderr: &mut stderr, cancel: Some(cancel.as_mut()) };
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

/// The tutorial's `>>>` loop, made right: line editing and history, `exit`
/// or Ctrl-D to leave, Ctrl-C interrupts the running command (not the
/// shell), non-zero exit codes shown.
pub fn shell(args: ShellArgs, rt: &tokio::runtime::Runtime, key: Option<Key>) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;

    let timeout = timeout(args.timeout)?;
    let mut client = rt.block_on(Client::connect_with(&args.addr, key.as_ref()))?;
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
        match rt.block_on(run_line(&mut client, command, timeout)) {
            Ok(status) => last = report_line(&status),
            Err(e) if e.code().is_some() => eprintln!("framewire: {}", printable(&super::explained(&e))),
            Err(e) => {
                eprintln!("framewire: connection lost: {}", printable(&e.to_string()));
                last = OWN_FAILURE;
                match rt.block_on(Client::connect_with(&args.addr, key.as_ref())) {
                    Ok(c) => {
                        eprintln!("framewire: reconnected");
                        client = c;
                    }
                    Err(e) => {
                        eprintln!("framewire: cannot reconnect: {}", printable(&super::explained(&e)));
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
