//! The exec request: a command's stdout and stderr streamed as they come,
//! stdin forwarded, and the whole process group killed on timeout, cancel,
//! a lost client, or shutdown.

use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::context::Context;
use crate::proto::{
    Cancel, Env, EnvSet, ErrorCode, ErrorFrame, Exec, ExecInput, Exit, ExitReason, Pty, PtyReady, Resize, Stderr,
    Stdin, Stdout,
};
use crate::services::exec::{account, spawn, status_parts, Master, Running, Spec};
use crate::services::Refusal;
use crate::session::{Outbound, ServerSide, Session};
use crate::transport::BoxRead;
use crate::wire::{Error, FrameReader};

type Reader = FrameReader<BoxRead>;
type Writer<'a> = Outbound<'a, ServerSide>;

/// Largest stdin frame accepted (clients send up to 64 KiB).
pub const MAX_STDIN_FRAME: u64 = 1024 * 1024;
/// Largest output frame sent: a read of the pipe, as it comes.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// Stdin chunks queued for a command that is slow to read them.
const STDIN_QUEUE: usize = 4;

/// How long the output of a terminal is still forwarded once its shell
/// has exited, while something else it started holds the terminal open
/// and silent.
const PTY_LINGER: Duration = Duration::from_millis(100);

/// Reads the terminal once, or never returns if there is none.
async fn read_master(pty: &Option<Master>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pty {
        Some(m) => m.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads a pipe once, or never returns if it is gone.
async fn read_pipe<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// What `pty` and `env` requests set for the next exec on a connection.
#[derive(Debug, Default)]
pub(in crate::server) struct ExecSetup {
    /// `TERM`, rows and columns of the terminal asked for.
    pty: Option<(String, u16, u16)>,
    /// Accepted variables.
    env: Vec<(String, String)>,
}

/// Longest `TERM` accepted.
const MAX_TERM: usize = 64;
/// Variables one `env` request may carry.
pub const MAX_ENV_VARS: usize = 64;
/// Longest variable name, and value, accepted.
const MAX_ENV_NAME: usize = 256;
const MAX_ENV_VALUE: usize = 32 * 1024;

/// The answer to exec, `pty` and `env` on a server without `--allow-exec`.
/// Where commands run: [`Config::exec_dir`](crate::server::Config::exec_dir), else a local root; `None` on a
/// bucket root without one.
fn exec_dir<'a>(ctx: &'a Context, served: &'a crate::server::context::Served) -> Option<&'a std::path::Path> {
    // The key's root (`dir=`) where it has one, before --exec-dir.
    let narrowed = !std::ptr::eq(served, &ctx.root);
    if let (true, crate::server::context::Served::Dir(sb)) = (narrowed, served) {
        return Some(sb.root());
    }
    if let Some(dir) = &ctx.config.exec_dir {
        return Some(dir);
    }
    match served {
        crate::server::context::Served::Dir(sb) => Some(sb.root()),
        #[cfg(feature = "s3")]
        crate::server::context::Served::Bucket(_) => None,
    }
}

fn no_exec_dir(ctx: &Context) -> Refusal {
    Refusal::new(
        ErrorCode::ExecDisabled,
        format!(
            "exec is refused: the served root is an object store ({}), where commands cannot run, and the server has no {NO_EXEC_DIR} for them",
            ctx.config.root
        ),
    )
}

/// What [`no_exec_dir`] says is missing: a client's explanation looks for
/// it (`serve --exec-dir` sets one).
const NO_EXEC_DIR: &str = "exec directory";

fn exec_disabled() -> Refusal {
    Refusal::new(ErrorCode::ExecDisabled, "exec is not allowed on this server")
}

/// A `pty` request: the next exec runs on a terminal of that size.
pub(in crate::server) async fn pty(
    s: &mut Session<ServerSide>,
    ctx: &Context,
    request: Pty,
    setup: &mut ExecSetup,
) -> Result<(), Error> {
    if !ctx.config.allow_exec {
        return s.refuse(exec_disabled()).await;
    }
    let Pty { term, rows, cols } = request;
    if term.is_empty() || term.len() > MAX_TERM || !term.bytes().all(|b| b.is_ascii_graphic()) {
        let msg = format!("TERM must be 1 to {MAX_TERM} printable ASCII characters");
        return s.refuse(Refusal::new(ErrorCode::BadRequest, msg)).await;
    }
    setup.pty = Some((term, rows, cols));
    s.send(&PtyReady {}, &[]).await
}

/// An `env` request: the variables the server accepts are kept for the
/// next exec, and the client told which were and which were not.
pub(in crate::server) async fn env(
    s: &mut Session<ServerSide>,
    ctx: &Context,
    request: Env,
    setup: &mut ExecSetup,
) -> Result<(), Error> {
    if !ctx.config.allow_exec {
        return s.refuse(exec_disabled()).await;
    }
    if request.vars.len() > MAX_ENV_VARS {
        let msg = format!("{} variables; at most {MAX_ENV_VARS} may be sent", request.vars.len());
        return s.refuse(Refusal::new(ErrorCode::TooLarge, msg)).await;
    }
    let mut answer = EnvSet { accepted: Vec::new(), refused: Vec::new() };
    for (name, value) in request.vars {
        let valid = valid_env_name(&name) && value.len() <= MAX_ENV_VALUE && !value.contains('\0');
        if valid && ctx.accept_env.is_match(&name) {
            setup.env.retain(|(n, _)| *n != name);
            answer.accepted.push(name.clone());
            setup.env.push((name, value));
        } else {
            answer.refused.push(name);
        }
    }
    s.send(&answer, &[]).await
}

/// A portable variable name: a letter or `_`, then letters, digits, `_`.
fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_ENV_NAME
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Runs the command, streams its output until it has exited and closed
/// its output (or was killed), and reports how it ended. Watches the
/// session's cut-off itself: at the drain deadline the process group is
/// killed and the client told why.
pub(in crate::server) async fn exec(
    s: &mut Session<ServerSide>,
    (ctx, served, revoked): (&Context, &crate::server::context::Served, &CancellationToken),
    request: Exec,
    setup: &mut ExecSetup,
) -> Result<(), Error> {
    let Exec { command, timeout_ms, login } = request;
    let ExecSetup { pty, env } = std::mem::take(setup);
    let config = &ctx.config;
    if !config.allow_exec {
        return s.refuse(exec_disabled()).await;
    }
    // What a login runs is the user's shell, and so `SHELL` for any
    // command, as under sshd.
    let account = account();
    let user_shell = config.login_shell.clone().unwrap_or_else(|| account.login_shell(&config.shell));
    let shell = if login { user_shell.clone() } else { config.shell.clone() };
    let Some(dir) = exec_dir(ctx, served) else {
        return s.refuse(no_exec_dir(ctx)).await;
    };
    let spec = Spec {
        shell: &shell,
        command: &command,
        login,
        dir,
        account: &account,
        user_shell: &user_shell,
        env: &env,
        pty: pty.as_ref().map(|(term, rows, cols)| (term.as_str(), *rows, *cols)),
    };
    let mut run = match spawn(&spec) {
        Ok(run) => run,
        Err(e) => {
            let what = if pty.is_some() { "a terminal for " } else { "" };
            let r = Refusal::new(ErrorCode::SpawnFailed, format!("cannot start {what}{}: {e}", shell.display()));
            return s.refuse(r).await;
        }
    };
    tracing::debug!(?command, login, pty = pty.is_some(), pid = run.child.id(), "exec started");

    // The client may stay silent for as long as the command runs: no idle
    // limit on its frames meanwhile (the I/O limit still bounds a started
    // frame). Restored on every way out.
    s.without_idle_limit();
    let cut = s.cut_off().clone();
    let (reader, mut writer) = s.halves();
    let result = pump(&mut run, timeout_ms, reader, &mut writer, (&cut, revoked)).await;
    s.restore_timeouts();
    let reason = match result {
        Ok(reason) => reason,
        Err(e) => {
            // The client is gone or broke the protocol: nobody to report
            // to; the group dies with the guard.
            run.group.kill();
            return Err(e);
        }
    };
    let status = run.child.wait().await?;
    let (status, signal) = status_parts(status);
    if reason == ExitReason::Exited {
        run.group.disarm();
    }
    tracing::debug!(?command, ?status, ?signal, ?reason, "exec ended");
    s.set_outcome(match (reason, status, signal) {
        (ExitReason::Exited, Some(code), _) => format!("exit {code}"),
        (ExitReason::Exited, None, Some(sig)) => format!("killed by signal {sig}"),
        (ExitReason::Timeout, ..) => "timed out: process group killed".to_owned(),
        (ExitReason::Cancelled, ..) => "cancelled by the client: process group killed".to_owned(),
        (ExitReason::Shutdown, ..) => "server shut down: process group killed".to_owned(),
        (ExitReason::Revoked, ..) => "the key was revoked: process group killed".to_owned(),
        (reason, ..) => format!("{reason:?}"),
    });
    s.send(&Exit { status, signal, reason }, &[]).await
}

/// The command's stdin: a small queue written by a task of its own (a
/// command that does not read its stdin must not stop its output from
/// being forwarded), and room in it reserved before a stdin frame is read,
/// so that a frame never waits for room with other frames unread.
struct StdinQueue {
    /// `None` once stdin is closed (EOF from the client, or the command
    /// closed it).
    tx: Option<mpsc::Sender<bytes::Bytes>>,
    permit: Option<mpsc::OwnedPermit<bytes::Bytes>>,
    /// A stdin frame whose head is read but body not yet (`Some(eof)`):
    /// reading the body is cancel-safe, so the select may interrupt it.
    pending: Option<bool>,
    /// On a terminal: the master, written at once while the writing task
    /// has nothing left (`backlog`, bytes handed to it and not yet
    /// written, is 0), so that a keystroke costs no hand-off; what does
    /// not fit goes through the queue, after which bytes keep their order.
    direct: Option<(Master, Arc<AtomicUsize>)>,
}

impl StdinQueue {
    fn start(run: &mut Running) -> Self {
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(STDIN_QUEUE);
        if let Some(mut stdin) = run.stdin.take() {
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if stdin.write_all(&chunk).await.is_err() {
                        break; // the command closed its stdin; drop the rest
                    }
                }
            });
        } else if let Some(master) = run.pty.clone() {
            let backlog = Arc::new(AtomicUsize::new(0));
            let (m, left) = (master.clone(), backlog.clone());
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    let written = m.write_all(&chunk).await;
                    left.fetch_sub(chunk.len(), Ordering::AcqRel);
                    if written.is_err() {
                        break; // the terminal is gone
                    }
                }
                // End of input on a terminal is its EOF character.
                let _ = m.write_all(&[m.eof_char()]).await;
            });
            return StdinQueue { tx: Some(tx), permit: None, pending: None, direct: Some((master, backlog)) };
        }
        StdinQueue { tx: Some(tx), permit: None, pending: None, direct: None }
    }

    /// Whether room must be reserved before the next frame is read.
    fn needs_room(&self) -> bool {
        self.permit.is_none() && self.tx.is_some()
    }

    /// Whether the next frame may be read.
    fn may_read(&self) -> bool {
        self.permit.is_some() || self.tx.is_none()
    }

    async fn reserve(tx: Option<mpsc::Sender<bytes::Bytes>>) -> Option<mpsc::OwnedPermit<bytes::Bytes>> {
        tx?.reserve_owned().await.ok()
    }

    fn reserved(&mut self, permit: Option<mpsc::OwnedPermit<bytes::Bytes>>) {
        if permit.is_none() {
            self.tx = None; // the writing task ended: the command closed stdin
        }
        self.permit = permit;
    }

    fn deliver(&mut self, mut body: bytes::Bytes, eof: bool) {
        if let Some((master, backlog)) = &self.direct {
            if backlog.load(Ordering::Acquire) == 0 {
                // Full, or gone: the rest goes to the task, which finds out.
                if let Ok(n) = master.try_write(&body) {
                    let _ = body.split_to(n);
                }
            }
            if !body.is_empty() {
                backlog.fetch_add(body.len(), Ordering::AcqRel);
            }
        }
        if let Some(p) = self.permit.take() {
            if !body.is_empty() {
                p.send(body);
            }
        }
        if eof {
            self.tx = None;
            self.permit = None;
        }
    }
}

/// Moves bytes until the command has exited and closed its output, or was
/// killed. Returns why it ended.
async fn pump(
    run: &mut Running,
    timeout_ms: Option<u64>,
    reader: &mut Reader,
    writer: &mut Writer<'_>,
    (hard, revoked): (&CancellationToken, &CancellationToken),
) -> Result<ExitReason, Error> {
    let mut stdin = StdinQueue::start(run);
    let deadline = timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut out_buf = vec![0u8; OUTPUT_CHUNK];
    let mut err_buf = vec![0u8; OUTPUT_CHUNK];
    let mut reason = ExitReason::Exited;
    let mut exited = false;
    let mut pty = run.pty.clone();
    let mut pty_buf = if pty.is_some() { vec![0u8; OUTPUT_CHUNK] } else { Vec::new() };

    while !(exited && run.stdout.is_none() && run.stderr.is_none() && pty.is_none()) {
        tokio::select! {
            n = read_master(&pty, &mut pty_buf) => match n? {
                0 => pty = None,
                n => writer.send(&Stdout { len: n as u64 }, &pty_buf[..n]).await?,
            },
            // The shell is gone but something it left holds the terminal:
            // what it has written is sent, and then the exec ends (as an
            // ssh session ends with its shell).
            _ = tokio::time::sleep(PTY_LINGER), if exited && pty.is_some() => pty = None,
            n = read_pipe(&mut run.stdout, &mut out_buf) => match n? {
                0 => run.stdout = None,
                n => writer.send(&Stdout { len: n as u64 }, &out_buf[..n]).await?,
            },
            n = read_pipe(&mut run.stderr, &mut err_buf) => match n? {
                0 => run.stderr = None,
                n => writer.send(&Stderr { len: n as u64 }, &err_buf[..n]).await?,
            },
            status = run.child.wait(), if !exited => {
                status?;
                exited = true;
            }
            p = StdinQueue::reserve(stdin.tx.clone()), if stdin.needs_room() => stdin.reserved(p),
            frame = next_frame(reader, &mut stdin.pending), if stdin.may_read() => {
                if let Some(why) = take_frame(frame, run, &mut stdin, writer).await? {
                    reason = why;
                }
            }
            _ = sleep_until(deadline), if reason == ExitReason::Exited => {
                run.group.kill();
                reason = ExitReason::Timeout;
            }
            _ = hard.cancelled(), if reason == ExitReason::Exited => {
                run.group.kill();
                reason = if revoked.is_cancelled() { ExitReason::Revoked } else { ExitReason::Shutdown };
            }
        }
    }
    Ok(reason)
}

/// Acts on one frame from the client during an exec: stdin goes to the
/// queue, a cancel kills the group (and says why the exec will end); a
/// lost client, a bad frame or one that is not stdin or cancel ends the
/// exec with an error (told to the client where it can be).
async fn take_frame(
    frame: Result<Incoming, Error>,
    run: &mut Running,
    stdin: &mut StdinQueue,
    writer: &mut Writer<'_>,
) -> Result<Option<ExitReason>, Error> {
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) => {
            refuse_mid_exec(writer, &e).await;
            return Err(e);
        }
    };
    match frame {
        Incoming::Stdin(body, eof) => stdin.deliver(body, eof),
        Incoming::Resize(rows, cols) => {
            // Without a terminal there is nothing to resize.
            if let Some(master) = &run.pty {
                if let Err(e) = master.resize(rows, cols) {
                    tracing::debug!("resize: {e}");
                }
            }
        }
        Incoming::Cancel => {
            run.group.kill();
            return Ok(Some(ExitReason::Cancelled));
        }
        Incoming::Gone => {
            let e = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "client left during exec");
            return Err(Error::Io(e));
        }
        Incoming::Other(kind) => {
            let why = format!("`{kind}` sent during exec; only stdin, resize and cancel may be");
            let e = Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
            refuse_mid_exec(writer, &e).await;
            return Err(e);
        }
    }
    Ok(None)
}

/// Tells the client why its exec is being ended for what it sent (a
/// `stdin` frame over [`MAX_STDIN_FRAME`], a frame that is not `stdin` or
/// `cancel`), before the connection closes and the command is killed:
/// after such a frame the stream of stdin is not what the client meant.
async fn refuse_mid_exec(writer: &mut Writer<'_>, e: &Error) {
    let code = match e {
        Error::BodyTooLarge { .. } => ErrorCode::TooLarge,
        Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => ErrorCode::BadRequest,
        e if e.is_recoverable() => ErrorCode::BadRequest,
        _ => return,
    };
    let _ = writer.send(&ErrorFrame::new(code, e.to_string()), &[]).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Incoming {
    Stdin(bytes::Bytes, bool),
    Resize(u16, u16),
    Cancel,
    Gone,
    Other(String),
}

/// The client's next frame during an exec. Cancel-safe: an interrupted
/// head leaves its bytes buffered; an interrupted stdin body is resumed
/// through `pending`.
async fn next_frame(reader: &mut Reader, pending: &mut Option<bool>) -> Result<Incoming, Error> {
    if pending.is_none() {
        match reader.read_head::<ExecInput>().await {
            Ok(Some((ExecInput::Stdin(Stdin { eof, len }), _))) => {
                if len > MAX_STDIN_FRAME {
                    return Err(Error::BodyTooLarge { len, max: MAX_STDIN_FRAME });
                }
                *pending = Some(eof);
            }
            Ok(Some((ExecInput::Cancel(Cancel {}), _))) => return Ok(Incoming::Cancel),
            Ok(Some((ExecInput::Resize(Resize { rows, cols }), _))) => return Ok(Incoming::Resize(rows, cols)),
            Err(Error::Unexpected { kind, .. }) => return Ok(Incoming::Other(kind)),
            Ok(None) => return Ok(Incoming::Gone),
            Err(e) => return Err(e),
        }
    }
    let body = reader.read_body(MAX_STDIN_FRAME).await?;
    let eof = pending.take().unwrap_or(false);
    Ok(Incoming::Stdin(body, eof))
}
