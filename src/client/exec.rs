//! `Client::exec`: run a command on the server, its output streamed back
//! as it is produced, stdin forwarded, cancel on request.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::Client;
use super::error::ClientError;
use crate::proto::{
    Cancel, Env, EnvSet, ErrorCode, Exec, ExecOutput, Exit, ExitReason, Pty, PtyReady, Resize, Stderr, Stdin, Stdout,
};
use crate::wire;

/// Stdin is sent in frames of at most this many bytes.
const STDIN_CHUNK: usize = 64 * 1024;

/// How a remote command is run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExecOptions {
    /// Kill the command's process group after this long.
    pub timeout: Option<Duration>,
    /// Run the server user's login shell, interactive, instead of the
    /// command (which is then ignored): `framewire shell`, after
    /// [`Client::request_pty`].
    pub login: bool,
}

impl ExecOptions {
    /// Options with a timeout.
    pub fn with_timeout(timeout: Option<Duration>) -> Self {
        ExecOptions { timeout, login: false }
    }

    /// These options, for a login shell (see [`login`](Self::login)).
    pub fn login_shell(mut self) -> Self {
        self.login = true;
        self
    }
}

/// A terminal's window: rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Where a remote command's streams go, and what can cancel it.
pub struct ExecIo<'a> {
    /// Forwarded to the command's stdin until EOF; `None` closes its stdin
    /// at once (like `ssh -n`).
    pub stdin: Option<&'a mut (dyn AsyncRead + Unpin + Send)>,
    /// Receives the command's stdout as it comes.
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Receives the command's stderr as it comes.
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// When this completes, the server kills the command's process group
    /// (the exec then ends with [`ExitReason::Cancelled`]).
    pub cancel: Option<Pin<&'a mut (dyn Future<Output = ()> + Send)>>,
    /// New window sizes, sent as they come (for a command on a terminal,
    /// [`Client::request_pty`]; a server without one ignores them).
    pub resize: Option<&'a mut tokio::sync::mpsc::Receiver<WindowSize>>,
}

impl<'a> ExecIo<'a> {
    /// Output to `stdout` and `stderr`, no stdin, no cancel, no resize.
    pub fn output(
        stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
        stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    ) -> Self {
        ExecIo { stdin: None, stdout, stderr, cancel: None, resize: None }
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Its exit status, if it exited.
    pub status: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: ExitReason,
}

impl ExitStatus {
    /// The exit code a shell would report: the status, or 128 + signal.
    pub fn code(&self) -> i32 {
        match (self.status, self.signal) {
            (Some(s), _) => s,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }

    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.reason == ExitReason::Exited && self.status == Some(0)
    }
}

/// A finished command with its output gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Client {
    /// Asks for a pseudo-terminal for the next [`exec`](Self::exec) on
    /// this connection, of `size`, with `TERM` set to `term`: the command
    /// then has it as its controlling terminal, its stdout and stderr
    /// both come as stdout, and what is sent as stdin is typed into it.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoTerminalSupport`] from a server that predates
    /// terminals; its refusal ([`ErrorCode::ExecDisabled`],
    /// [`ErrorCode::BadRequest`] for a bad `term`); wire errors.
    pub async fn request_pty(&mut self, term: &str, size: WindowSize) -> Result<(), ClientError> {
        self.session.send(&Pty { term: term.to_owned(), rows: size.rows, cols: size.cols }, &[]).await?;
        let PtyReady {} = self.answer().await.map_err(no_terminal)?;
        Ok(())
    }

    /// Sends environment variables for the next [`exec`](Self::exec) on
    /// this connection. The server sets those its `--accept-env` allows;
    /// the answer names which were accepted and which refused.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoTerminalSupport`] from a server that predates
    /// them; its refusal ([`ErrorCode::ExecDisabled`],
    /// [`ErrorCode::TooLarge`] for more than 64); wire errors.
    pub async fn set_env(&mut self, vars: &[(String, String)]) -> Result<EnvSet, ClientError> {
        let vars = vars.iter().cloned().collect();
        self.session.send(&Env { vars }, &[]).await?;
        self.answer().await.map_err(no_terminal)
    }

    /// Runs `command` (a shell command line) on the server, streaming its
    /// stdout and stderr into `io` as they are produced and `io.stdin` to
    /// it, until it ends. Memory stays bounded whatever the output size.
    ///
    /// # Errors
    ///
    /// The server's refusal ([`crate::ErrorCode::ExecDisabled`],
    /// [`crate::ErrorCode::SpawnFailed`]), wire errors (a lost connection),
    /// and write errors of the output sinks.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: &mut framewire::Client) -> Result<(), framewire::ClientError> {
    /// use framewire::client::{ExecIo, ExecOptions};
    ///
    /// let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    /// let io = ExecIo::output(&mut out, &mut err);
    /// let status = client.exec("ls -l; exit 3", &ExecOptions::default(), io).await?;
    /// assert_eq!(status.code(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn exec(
        &mut self,
        command: &str,
        options: &ExecOptions,
        io: ExecIo<'_>,
    ) -> Result<ExitStatus, ClientError> {
        let ExecIo { stdin, stdout, stderr, mut cancel, mut resize } = io;
        let timeout_ms = options.timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
        self.session.send(&Exec { command: command.to_owned(), timeout_ms, login: options.login }, &[]).await?;

        let (reader, mut writer) = self.session.halves();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();

        let output = async move {
            let result = async {
                loop {
                    match reader.read_head::<ExecOutput>().await? {
                        Some((ExecOutput::Stdout(Stdout { .. }), _)) => {
                            reader.copy_body(stdout).await?;
                            stdout.flush().await.map_err(wire::Error::Io)?;
                        }
                        Some((ExecOutput::Stderr(Stderr { .. }), _)) => {
                            reader.copy_body(stderr).await?;
                            stderr.flush().await.map_err(wire::Error::Io)?;
                        }
                        Some((ExecOutput::Exit(Exit { status, signal, reason }), _)) => {
                            return Ok(ExitStatus { status, signal, reason })
                        }
                        Some((ExecOutput::ErrorFrame(e), _)) => return Err(e.into()),
                        None => return Err(ClientError::Closed),
                    }
                }
            }
            .await;
            drop(done_tx);
            result
        };

        let input = async move {
            let mut stdin = stdin;
            if stdin.is_none() {
                writer.send(&Stdin { len: 0, eof: true }, &[]).await?;
            }
            let mut buf = vec![0u8; STDIN_CHUNK];
            let mut cancel_sent = false;
            loop {
                // Whole frames only: a branch's body runs to its end, so
                // the writer is never left inside a frame.
                tokio::select! {
                    biased;
                    _ = &mut done_rx => return Ok::<_, ClientError>(()),
                    _ = async { cancel.as_mut().expect("guarded").await }, if cancel.is_some() && !cancel_sent => {
                        writer.send(&Cancel {}, &[]).await?;
                        cancel_sent = true;
                    }
                    size = async { resize.as_mut().expect("guarded").recv().await }, if resize.is_some() => {
                        match size {
                            Some(WindowSize { rows, cols }) => writer.send(&Resize { rows, cols }, &[]).await?,
                            None => resize = None,
                        }
                    }
                    n = async { stdin.as_mut().expect("guarded").read(&mut buf).await }, if stdin.is_some() => {
                        // A local read error ends our stdin like EOF would.
                        let n = n.unwrap_or(0);
                        writer.send(&Stdin { len: n as u64, eof: n == 0 }, &buf[..n]).await?;
                        if n == 0 {
                            stdin = None;
                        }
                    }
                }
            }
        };

        let (status, sent) = tokio::join!(output, input);
        let status = status?;
        // A failed send after the command ended does not matter; one before
        // would have ended the output too.
        let _ = sent;
        Ok(status)
    }

    /// Runs `command` and gathers its output in memory (use
    /// [`exec`](Self::exec) for output of any size).
    ///
    /// # Errors
    ///
    /// As [`exec`](Self::exec).
    pub async fn exec_output(&mut self, command: &str, options: &ExecOptions) -> Result<Output, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self.exec(command, options, ExecIo::output(&mut stdout, &mut stderr)).await?;
        Ok(Output { status, stdout, stderr })
    }
}

/// A server's `unknown_type` to a terminal request: it predates them.
fn no_terminal(e: ClientError) -> ClientError {
    match e {
        ClientError::Remote { code: ErrorCode::UnknownType, .. } => ClientError::NoTerminalSupport,
        e => e,
    }
}
