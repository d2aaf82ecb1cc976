//! `framewire._native`: the Rust client, for the `framewire` Python
//! package. A thin layer: each call runs the library's async client on one
//! runtime shared by the process, with the GIL released while it waits
//! (`Python::detach`), and turns its errors into the exceptions of
//! `framewire._errors`. The Python-facing API (`framewire.Client`) is in
//! `framewire/client.py`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framewire::client::tree::Endpoint;
use framewire::client::{Transfer, TransferOptions};
use framewire::{Client as Inner, ClientError, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::{generic, TaskLocals};

/// The runtime every client of the process runs on, made again in a
/// child after `fork()` (whose copy has no threads to drive it; clients
/// made before the fork cannot be used there).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let mut held = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    match *held {
        Some((made_in, runtime)) if made_in == pid => runtime,
        _ => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(THREADS)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            // The parent's, if any, is left as it is: its threads are not
            // in this process.
            let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
            *held = Some((pid, runtime));
            runtime
        }
    }
}

tokio::task_local! {
    /// The Python event loop and context of the call an async task runs
    /// for (pyo3-async-runtimes' task locals).
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

/// [`runtime`] as pyo3-async-runtimes drives it: `AsyncClient`'s calls
/// run as tasks there, and their results reach the caller's event loop.
/// Its own tokio runtime is not used: this one is made again after a
/// fork.
struct OnRuntime;

impl generic::Runtime for OnRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // From a task of ours (pyo3-async-runtimes spawns from inside
        // one): on its runtime, without the lock `runtime()` takes (a
        // fork at that moment would leave it locked in the child).
        if std::thread::current().name() == Some(THREADS) {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                return handle.spawn(fut);
            }
        }
        runtime().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        runtime().spawn_blocking(f)
    }
}

impl generic::ContextExt for OnRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn std::future::Future<Output = R> + Send>>
    where
        F: std::future::Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|c| c.get().cloned()).unwrap_or_default()
    }
}

/// The name of the runtime's threads.
const THREADS: &str = "framewire";

/// Why a blocking call ended without its result.
enum Failed {
    /// The client's error.
    Client(ClientError),
    /// The client's error, after which the connection is not used again:
    /// it holds what the failed call set for the next command (variables,
    /// a terminal).
    Spent(ClientError),
    /// A Python exception that stopped the call part-way: KeyboardInterrupt
    /// (or another signal's handler's) while waiting, or a progress
    /// callback's. The connection is not used again.
    Python(PyErr),
    /// A Python exception raised with the connection in step (a progress
    /// callback's on its last call, a copy that could not be planned).
    Raised(PyErr),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        Failed::Client(e)
    }
}

impl Failed {
    fn raise(self) -> PyErr {
        match self {
            Failed::Client(e) | Failed::Spent(e) => raise(e),
            Failed::Python(e) | Failed::Raised(e) => e,
        }
    }
}

/// Runs `future` to its end on the runtime, checking every 100 ms for a
/// signal Python must handle (Ctrl-C): then it is dropped, and the
/// handler's exception returned. Called with the GIL released.
fn block_on<T>(future: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, Failed> {
    interruptible(future)?.map_err(Failed::Client)
}

/// `future`'s output, or the exception of a signal's handler that ran
/// while waiting for it (it is then dropped).
fn interruptible<R>(future: impl std::future::Future<Output = R>) -> Result<R, Failed> {
    runtime().block_on(async {
        tokio::pin!(future);
        loop {
            tokio::select! {
                done = &mut future => return Ok(done),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    Python::attach(|py| py.check_signals()).map_err(Failed::Python)?;
                }
            }
        }
    })
}

/// Seconds given by Python as a duration: a `ValueError` for a negative,
/// infinite or NaN number.
fn seconds(what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "{what} must be a finite number of seconds of 0 or more, not {s}"
            ))
        })
    })
    .transpose()
}

/// The `framewire._errors` class an error is raised as.
fn class_of(e: &ClientError) -> &'static str {
    use framewire::wire::Error as Wire;
    match e {
        ClientError::AuthFailed
        | ClientError::AuthRequired
        | ClientError::AuthUnavailable
        | ClientError::ServerAuthFailed
        | ClientError::HostKey(_)
        | ClientError::Identity(_) => "AuthenticationError",
        ClientError::Remote { code, .. } => match code {
            ErrorCode::NotFound => "NotFound",
            ErrorCode::PermissionDenied => "PermissionDenied",
            ErrorCode::AuthRequired | ErrorCode::AuthUnavailable | ErrorCode::AuthFailed => "AuthenticationError",
            ErrorCode::Timeout => "TimeoutError",
            _ => "RemoteError",
        },
        ClientError::ConnectTimeout { .. }
        | ClientError::Wire(Wire::SilentPeer(_) | Wire::Idle(_) | Wire::Stalled(_)) => "TimeoutError",
        ClientError::Wire(Wire::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => "TimeoutError",
        ClientError::Connect { .. } | ClientError::Closed | ClientError::Wire(_) => "ConnectionError",
        ClientError::ChecksumMismatch { .. } | ClientError::NoTerminalSupport => "RemoteError",
        ClientError::Unexpected { .. } | ClientError::UnsafeName(_) => "ProtocolError",
        _ => "Error",
    }
}

/// `e` as the Python exception of its class, its message the one line the
/// CLI prints. A local file's error is a `framewire.LocalError`, an
/// `OSError` with its errno and file name.
fn raise(e: ClientError) -> PyErr {
    let local = match &e {
        ClientError::Local { path, source } => Some((source.raw_os_error().unwrap_or(0), source.to_string(), path)),
        ClientError::LocalExists(path) => Some((libc_eexist(), "already exists".to_owned(), path)),
        _ => None,
    };
    if let Some((errno, why, path)) = local {
        return Python::attach(|py| {
            let made = (|| {
                let class = py.import("framewire._errors")?.getattr("LocalError")?;
                Ok::<_, PyErr>(PyErr::from_value(class.call1((errno, why, path.display().to_string()))?))
            })();
            made.unwrap_or_else(|err| err)
        });
    }
    let message = match &e {
        ClientError::Closed => "the connection is closed (by the server, or by close())".to_owned(),
        e => e.to_string(),
    };
    raise_as(class_of(&e), message, e.code().map(|c| c.to_string()))
}

/// `EEXIST`, without a dependency for one number (it is 17 on every
/// Linux architecture).
fn libc_eexist() -> i32 {
    std::io::Error::from(std::io::ErrorKind::AlreadyExists).raw_os_error().unwrap_or(17)
}

/// An exception of `framewire._errors.CLASS` with `message`, its `code`
/// attribute the protocol's error code, if any.
fn raise_as(class: &str, message: String, code: Option<String>) -> PyErr {
    Python::attach(|py| {
        let made = (|| {
            let class = py.import("framewire._errors")?.getattr(class)?;
            let error = class.call1((message,))?;
            error.setattr("code", code)?;
            Ok::<_, PyErr>(PyErr::from_value(error))
        })();
        made.unwrap_or_else(|err| err)
    })
}

// ---------------------------------------------------------------------
// The calls, each an async function on a connection: the same for
// `Client` (run on the runtime while the calling thread waits) and
// `AsyncClient` (awaited on the caller's event loop).
// ---------------------------------------------------------------------

/// Variables for a command, as given.
type Env = Option<Vec<(String, String)>>;

/// What `run` is asked.
struct RunArgs {
    command: String,
    timeout: Option<Duration>,
    env: Option<Vec<(String, String)>>,
    stdin: Option<Vec<u8>>,
    /// A terminal: its `TERM`, rows and columns.
    pty: Option<(String, u16, u16)>,
}

impl RunArgs {
    fn new(
        command: String,
        timeout: Option<f64>,
        (env, stdin): (Env, Option<Vec<u8>>),
        pty: Option<(String, u16, u16)>,
    ) -> PyResult<Self> {
        Ok(RunArgs { command, timeout: seconds("timeout", timeout)?, env, stdin, pty })
    }
}

/// A command's output, or the variables the server refused (the command
/// then not run).
type Ran = Result<framewire::client::Output, Vec<String>>;

async fn run_on(c: &mut Inner, a: RunArgs) -> Result<Ran, Failed> {
    // Once variables or a terminal are set for the next command, a
    // failure leaves them set: the connection is not used again.
    let mut primed = false;
    let spent = |primed: bool| move |e: ClientError| if primed { Failed::Spent(e) } else { Failed::Client(e) };
    if let Some(vars) = a.env.filter(|v| !v.is_empty()) {
        let set = c.set_env(&vars).await?;
        if !set.refused.is_empty() {
            return Ok(Err(set.refused));
        }
        primed = true;
    }
    if let Some((term, rows, cols)) = &a.pty {
        let size = framewire::client::WindowSize { rows: *rows, cols: *cols };
        c.request_pty(term, size).await.map_err(spent(primed))?;
        primed = true;
    }
    let options = framewire::client::ExecOptions::with_timeout(a.timeout);
    let output = match a.stdin {
        // With a terminal, stdin is what is typed: none is an empty input
        // (the terminal's end of file), not a closed pipe.
        None if a.pty.is_none() => c.exec_output(&a.command, &options).await.map_err(spent(primed))?,
        input => {
            let input = input.unwrap_or_default();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut input = &input[..];
            let io = framewire::client::ExecIo {
                stdin: Some(&mut input),
                stdout: &mut out,
                stderr: &mut err,
                cancel: None,
                resize: None,
            };
            let status = c.exec(&a.command, &options, io).await.map_err(spent(primed))?;
            framewire::client::Output { status, stdout: out, stderr: err }
        }
    };
    Ok(Ok(output))
}

/// What `run` returns to Python: (exit code, stdout, stderr, how it
/// ended).
type RunResult = (i32, Py<PyBytes>, Py<PyBytes>, &'static str);

/// A command's output for Python, or the refusal of its variables.
fn ran(ran: Ran) -> PyResult<RunResult> {
    let output = ran.map_err(|refused| {
        let message = format!(
            "the server does not accept the variables {} (see its `serve --accept-env`): \
             the command was not run, and this connection is closed",
            refused.join(", ")
        );
        raise_as("PermissionDenied", message, Some("permission_denied".to_owned()))
    })?;
    use framewire::proto::ExitReason;
    let how = match output.status.reason {
        ExitReason::Exited => "exited",
        ExitReason::Timeout => "timeout",
        ExitReason::Cancelled => "cancelled",
        ExitReason::Shutdown => "shutdown",
        ExitReason::Revoked => "revoked",
        _ => "unknown",
    };
    let code = match (output.status.status, output.status.signal) {
        (Some(status), _) => status,
        (None, Some(signal)) => -signal,
        (None, None) => output.status.code(),
    };
    Python::attach(|py| {
        Ok((code, PyBytes::new(py, &output.stdout).unbind(), PyBytes::new(py, &output.stderr).unbind(), how))
    })
}

/// A copy's progress reported to a Python callable as `(done, total)`
/// bytes, at most every 100 ms and once at the end; if the callable
/// raises, the copy stops ([`Progressor::stopped`]) and that exception is
/// raised.
#[derive(Clone)]
struct Progressor(Arc<ProgressState>);

struct ProgressState {
    callback: Py<PyAny>,
    total: AtomicU64,
    /// Bytes of files finished, and of each file under way.
    done: Mutex<(u64, std::collections::HashMap<usize, u64>)>,
    last: Mutex<Option<Instant>>,
    /// The callable's exception, once it raised.
    raised: Mutex<Option<PyErr>>,
    /// Set once it raised: it is not called again, whatever is still
    /// winding down.
    stopped: std::sync::atomic::AtomicBool,
    /// The most `done` reported: reports never go back.
    reported: AtomicU64,
    stop: tokio::sync::Notify,
}

impl Progressor {
    fn new(callback: Option<Py<PyAny>>) -> Option<Self> {
        callback.map(|callback| {
            Progressor(Arc::new(ProgressState {
                callback,
                total: AtomicU64::new(0),
                done: Mutex::new((0, Default::default())),
                last: Mutex::new(None),
                raised: Mutex::new(None),
                stopped: std::sync::atomic::AtomicBool::new(false),
                reported: AtomicU64::new(0),
                stop: tokio::sync::Notify::new(),
            }))
        })
    }

    fn set_total(&self, total: u64) {
        self.0.total.store(total, Ordering::Relaxed);
    }

    /// File `id` has `done` bytes (of this copy) now.
    fn file(&self, id: usize, done: u64) {
        let sum = {
            let mut held = self.0.done.lock().unwrap_or_else(|p| p.into_inner());
            held.1.insert(id, done);
            held.0 + held.1.values().sum::<u64>()
        };
        self.report(sum, false);
    }

    /// File `id` ended, `size` bytes of it counted as done.
    fn file_done(&self, id: usize, size: u64) {
        let sum = {
            let mut held = self.0.done.lock().unwrap_or_else(|p| p.into_inner());
            held.1.remove(&id);
            held.0 += size;
            held.0 + held.1.values().sum::<u64>()
        };
        self.report(sum, false);
    }

    /// Calls back with `done` bytes, if it is time (or `now`).
    fn report(&self, done: u64, now: bool) {
        {
            let mut last = self.0.last.lock().unwrap_or_else(|p| p.into_inner());
            if !now && last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
                return;
            }
            *last = Some(Instant::now());
        }
        if self.0.stopped.load(Ordering::Relaxed) {
            return;
        }
        let total = self.0.total.load(Ordering::Relaxed);
        // Within the total (a file may grow after it was planned), and
        // never less than reported before (workers report out of order).
        let done = if total > 0 { done.min(total) } else { done };
        let done = self.0.reported.fetch_max(done, Ordering::Relaxed).max(done);
        let called = Python::attach(|py| {
            // Checked again with the GIL: another thread's call may have
            // raised meanwhile, or reported more.
            if self.0.stopped.load(Ordering::Relaxed) {
                return Ok(());
            }
            let done = self.0.reported.load(Ordering::Relaxed).max(done);
            self.0.callback.call1(py, (done, total)).map(drop)
        });
        if let Err(e) = called {
            self.0.stopped.store(true, Ordering::Relaxed);
            *self.0.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            self.0.stop.notify_one();
        }
    }

    /// The last call, at the end of a copy that did not stop: `Err` with
    /// the callable's exception if it raised there (the copy is done,
    /// the connection in step).
    fn finish(&self) -> Result<(), Failed> {
        let total = self.0.total.load(Ordering::Relaxed);
        let done = {
            let held = self.0.done.lock().unwrap_or_else(|p| p.into_inner());
            held.0 + held.1.values().sum::<u64>()
        };
        self.report(done.max(total), true);
        self.raised().map_or(Ok(()), |e| Err(Failed::Raised(e)))
    }

    /// Resolves once the callable raised.
    async fn stopped(&self) {
        self.0.stop.notified().await;
    }

    /// The callable's exception, if it raised.
    fn raised(&self) -> Option<PyErr> {
        self.0.raised.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl framewire::client::tree::Observer for Progressor {
    fn progress(&self, id: usize, _job: &framewire::client::tree::Job, p: framewire::client::Progress) {
        self.file(id, p.resumed + p.done);
    }

    fn finished(&self, id: usize, job: &framewire::client::tree::Job, _outcome: &Result<Transfer, ClientError>) {
        self.file_done(id, job.size);
    }
}

/// Runs `copy` unless `progress`'s callable raises first: then the copy
/// is dropped (the connection with it) and `Err` says so.
async fn watched<T>(
    progress: &Option<Progressor>,
    copy: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    let Some(p) = progress else { return copy.await };
    let done = tokio::select! {
        done = copy => done,
        () = p.stopped() => Err(Failed::Python(p.raised().unwrap_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("the progress callback failed")
        }))),
    };
    // A callable that raised on the last report.
    match (done, p.raised()) {
        (_, Some(e)) => Err(Failed::Python(e)),
        (done, None) => done,
    }
}

/// A file copy's stats for Python: (size, resumed, blake3, matched).
type FileStats = (u64, u64, String, u64);

/// `remote` for an upload of `local`: into it if it is a directory (or
/// ends with `/`, or is empty: the root), as `framewire put` does.
async fn upload_target(c: &mut Inner, local: &std::path::Path, remote: String) -> Result<String, ClientError> {
    let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if remote.is_empty() || remote.ends_with('/') {
        return Ok(format!("{remote}{name}"));
    }
    match c.stat(&remote).await {
        Ok(entry) if entry.kind == framewire::proto::Kind::Dir => Ok(format!("{remote}/{name}")),
        Ok(_) => Ok(remote),
        Err(ClientError::Remote { code: ErrorCode::NotFound, .. }) => Ok(remote),
        Err(e) => Err(e),
    }
}

/// `local` for a download of `remote`: into it if it is a directory.
fn download_target(remote: &str, local: PathBuf) -> PathBuf {
    if local.is_dir() || local.as_os_str().as_encoded_bytes().ends_with(b"/") {
        local.join(remote.trim_end_matches('/').rsplit('/').next().unwrap_or(remote))
    } else {
        local
    }
}

async fn put_file(
    c: &mut Inner,
    local: PathBuf,
    remote: String,
    progress: Option<Progressor>,
) -> Result<FileStats, Failed> {
    let remote = upload_target(c, &local, remote).await?;
    if let Some(p) = &progress {
        p.set_total(std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0));
    }
    let copy = async {
        let mut report = |at: framewire::client::Progress| {
            if let Some(p) = &progress {
                p.file(0, at.resumed + at.done);
            }
        };
        Ok(c.put(&local, &remote, &TransferOptions::force(true), &mut report).await?)
    };
    let t = watched(&progress, copy).await?;
    if let Some(p) = &progress {
        p.finish()?;
    }
    Ok((t.size, t.resumed, t.blake3, t.matched))
}

async fn get_file(
    c: &mut Inner,
    remote: String,
    local: PathBuf,
    progress: Option<Progressor>,
) -> Result<FileStats, Failed> {
    let local = download_target(&remote, local);
    if let Some(p) = &progress {
        p.set_total(c.stat(&remote).await?.size);
    }
    let copy = async {
        let mut report = |at: framewire::client::Progress| {
            if let Some(p) = &progress {
                p.file(0, at.resumed + at.done);
            }
        };
        Ok(c.get(&remote, &local, &TransferOptions::force(true), &mut report).await?)
    };
    let t = watched(&progress, copy).await?;
    if let Some(p) = &progress {
        p.finish()?;
    }
    Ok((t.size, t.resumed, t.blake3, t.matched))
}

/// A tree copy's stats for Python: (files, sent, resumed, matched,
/// unchanged, deleted, failures as (path, class, message, code)).
type TreeStats = (usize, u64, u64, u64, usize, usize, Vec<(String, &'static str, String, Option<String>)>);

/// Copies a tree as `framewire put -r`/`get -r` does, planned on this
/// connection and run over `jobs` connections to `endpoint`.
async fn copy_tree(
    c: &mut Inner,
    endpoint: &Endpoint,
    (put, source, dest): (bool, String, String),
    (delete, jobs): (bool, usize),
    progress: Option<Progressor>,
) -> Result<TreeStats, Failed> {
    use framewire::client::tree;
    let options = tree::PlanOptions::new(true, false).with_delete(delete);
    let planned = if put {
        let dest = (!dest.is_empty()).then_some(dest);
        tree::plan_put(c, &[PathBuf::from(source)], dest.as_deref(), options).await
    } else {
        tree::plan_get(c, &[source], std::path::Path::new(&dest), options).await
    };
    // Nothing copied yet, the connection in step.
    let plan = planned.map_err(|e| match e {
        tree::PlanError::Source { error, .. } => Failed::Client(error),
        other => Failed::Raised(raise_as("Error", other.to_string(), None)),
    })?;
    if let Some(p) = &progress {
        p.set_total(plan.total_size());
    }
    let observer: Arc<dyn framewire::client::tree::Observer> = match &progress {
        Some(p) => Arc::new(p.clone()),
        None => Arc::new(framewire::client::tree::Quiet),
    };
    let options = tree::CopyOptions::new(false, jobs.max(1));
    let summary = watched(&progress, async { Ok(tree::run(endpoint, plan, &options, observer).await) }).await?;
    if let Some(p) = &progress {
        p.finish()?;
    }
    let failures = summary
        .failures
        .iter()
        .map(|f| (f.path.clone(), class_of(&f.error), f.error.to_string(), f.error.code().map(|c| c.to_string())))
        .collect();
    let s = summary;
    Ok((s.files, s.sent, s.resumed, s.matched, s.unchanged, s.deleted, failures))
}

async fn ls_on(c: &mut Inner, path: String, recursive: bool) -> Result<String, ClientError> {
    let entries = c.list(&path, recursive).await?;
    Ok(serde_json::to_string(&entries).expect("entries are JSON"))
}

async fn stat_on(c: &mut Inner, path: String) -> Result<String, ClientError> {
    let entry = c.stat(&path).await?;
    Ok(serde_json::to_string(&entry).expect("an entry is JSON"))
}

async fn mkdir_on(c: &mut Inner, path: String, parents: bool) -> Result<bool, ClientError> {
    if parents {
        c.mkdir(&path).await
    } else {
        c.mkdir_one(&path).await
    }
}

async fn remove_on(c: &mut Inner, path: String, recursive: bool) -> Result<bool, ClientError> {
    if recursive {
        c.remove(&path).await
    } else {
        c.remove_file(&path).await
    }
}

/// The key in `key_file`, read.
fn read_key(key_file: Option<PathBuf>) -> Result<Option<framewire::auth::Key>, ClientError> {
    key_file
        .map(|path| {
            framewire::auth::Key::from_file(&path).map_err(|e| ClientError::Local {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })
        })
        .transpose()
}

/// An async call on a client's connection.
type Call<'c, T> = Pin<Box<dyn std::future::Future<Output = Result<T, Failed>> + Send + 'c>>;

/// How a client authenticates: the shared key's file, or keys of one's
/// own (an identity file and its passphrase; or, with neither, the
/// agent's keys and `~/.ssh/id_ed25519`, as ssh finds them), and where
/// the server's host key is checked.
#[derive(Clone, Default)]
struct Auth {
    key_file: Option<PathBuf>,
    identity: Option<PathBuf>,
    passphrase: Option<String>,
    known_hosts: Option<PathBuf>,
    accept_new: bool,
    /// The config file (`None`: `$FRAMEWIRE_CONFIG`, else the default
    /// one, as the CLI finds it).
    config: Option<PathBuf>,
}

/// A host as the CLI resolves it through its config file: the endpoint
/// (address, keys, compression), and the alias's directory, command
/// timeout and number of connections for copies.
struct Resolved {
    endpoint: Endpoint,
    dir: Option<String>,
    timeout: Option<f64>,
    jobs: Option<usize>,
}

/// The config file's settings, with what the call gave over them (as the
/// CLI's command line is over the file).
fn settings_of(auth: &Auth) -> PyResult<framewire::config::Settings> {
    let config = auth
        .config
        .clone()
        .or_else(|| std::env::var_os("FRAMEWIRE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let env_key = std::env::var_os("FRAMEWIRE_KEY_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let settings =
        framewire::config::Settings::load(config.as_deref(), auth.key_file.clone(), env_key).map_err(|e| {
            let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            raise_as("Error", format!("{e}{why}"), None)
        })?;
    let keys = framewire::config::KeyFlags {
        identity: auth.identity.clone(),
        known_hosts: auth.known_hosts.clone(),
        accept_new: auth.accept_new,
    };
    Ok(settings.with_keys(keys))
}

/// `host` (an address, or an alias of the config file) resolved, with
/// its credentials read.
fn resolve(
    settings: &framewire::config::Settings,
    host: &str,
    auth: &Auth,
    limit: Option<Duration>,
) -> PyResult<Resolved> {
    let target = settings.resolve(host);
    target.one_host().map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let resolved = Auth {
        key_file: target.key_file.as_ref().map(|(path, _)| path.clone()),
        identity: target.identity.as_ref().map(|(path, _)| path.clone()),
        passphrase: auth.passphrase.clone(),
        known_hosts: target.host_keys().0.map(std::path::Path::to_owned),
        accept_new: target.host_keys().1,
        config: None,
    };
    let mut endpoint = endpoint_with(target.addr.clone(), credentials_of(&resolved)?, limit);
    endpoint = endpoint.with_compress(target.compress);
    if let Some(rate) = target.bwlimit {
        endpoint = endpoint.with_bwlimit(framewire::transport::Throttle::new(rate));
    }
    Ok(Resolved { endpoint, dir: target.dir.clone(), timeout: target.timeout, jobs: target.jobs })
}

/// The identity in `path`, decrypted with `passphrase` if it needs one
/// (none is asked for: a script has no one to ask).
fn identity_file(path: &std::path::Path, passphrase: Option<String>) -> Result<framewire::auth::Identity, ClientError> {
    framewire::auth::Identity::from_file(path, || passphrase).map_err(|e| ClientError::Local {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// What ssh would find without an identity given: the agent's Ed25519
/// keys (`SSH_AUTH_SOCK`), then `~/.ssh/id_ed25519` if the agent does not
/// hold it (decrypted with `passphrase`, if it needs one). Looked for only
/// when a server requires a key.
fn found_identities(passphrase: Option<String>) -> Vec<framewire::auth::Identity> {
    let mut found = Vec::new();
    if let Some(socket) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
        if let Ok(keys) = framewire::auth::Identity::from_agent(std::path::Path::new(&socket)) {
            found.extend(keys);
        }
    }
    let own = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/id_ed25519"));
    if let Some(path) = own.filter(|p| p.exists()) {
        if let Ok(id) = framewire::auth::Identity::from_file(&path, || passphrase) {
            if !found.iter().any(|f| f.public().key_data() == id.public().key_data()) {
                found.push(id);
            }
        }
    }
    found
}

/// The shared key and credentials `auth` says.
fn credentials_of(auth: &Auth) -> PyResult<(Option<framewire::auth::Key>, framewire::client::Credentials)> {
    let key = read_key(auth.key_file.clone()).map_err(raise)?;
    let identities = match &auth.identity {
        Some(path) => vec![identity_file(path, auth.passphrase.clone()).map_err(raise)?],
        None => Vec::new(),
    };
    // No terminal to ask on: a host key not known yet is taken only with
    // `accept_new` (as ssh's StrictHostKeyChecking=accept-new).
    let host_keys = framewire::client::HostKeys::new(auth.known_hosts.clone(), auth.accept_new, false);
    let mut creds = framewire::client::Credentials::shared(key.clone()).with_identities(identities, host_keys);
    if key.is_none() && auth.identity.is_none() {
        let passphrase = auth.passphrase.clone();
        creds = creds.finding(framewire::client::Finder(Arc::new(move || found_identities(passphrase.clone()))));
    }
    Ok((key, creds))
}

/// The endpoint of `addr` with `key` and `creds`, connecting within
/// `limit`.
fn endpoint_with(
    addr: String,
    (key, creds): (Option<framewire::auth::Key>, framewire::client::Credentials),
    limit: Option<Duration>,
) -> Endpoint {
    let endpoint = Endpoint::new(addr, key).with_credentials(creds);
    match limit {
        Some(limit) => endpoint.with_connect_timeout(limit),
        None => endpoint,
    }
}

/// `addr` (an address or an alias) resolved and authenticated as `auth`
/// and the config file say, connecting within `connect_timeout` seconds.
fn resolved_of(addr: &str, auth: &Auth, connect_timeout: Option<f64>) -> PyResult<Resolved> {
    let limit = seconds("connect_timeout", connect_timeout)?;
    resolve(&settings_of(auth)?, addr, auth, limit)
}

/// `(TERM, rows, columns)` of a terminal asked for, checked.
type Pty = Option<(String, u16, u16)>;

/// A connection to a framewire server.
#[pyclass(module = "framewire._native", frozen)]
struct Client {
    inner: Mutex<Option<Inner>>,
    /// Where a tree copy's other connections go, and what the config
    /// file's alias says.
    host: Host,
    /// The process it was made in.
    pid: u32,
}

/// A client's host: its endpoint and what its alias says of paths,
/// commands and copies.
#[derive(Clone)]
struct Host {
    endpoint: Endpoint,
    /// The alias's directory: relative remote paths start there.
    dir: Option<String>,
    /// The alias's command timeout, for `run` without one.
    timeout: Option<f64>,
    /// The alias's connections for a copy.
    jobs: Option<usize>,
}

impl Host {
    fn of(r: Resolved) -> Host {
        Host { endpoint: r.endpoint, dir: r.dir, timeout: r.timeout, jobs: r.jobs }
    }

    /// A remote path as the server takes it (see
    /// [`framewire::client::fleet::remote_path`]).
    fn path(&self, path: &str) -> String {
        framewire::client::fleet::remote_path(self.dir.as_deref(), path)
    }

    /// Where an upload to `dest` goes (`""`: the alias's directory, or
    /// the root), as `framewire put` says.
    fn put_dest(&self, dest: &str) -> String {
        let dest = (!dest.is_empty()).then_some(dest);
        framewire::client::fleet::put_destination(self.dir.as_deref(), dest).unwrap_or_default()
    }

    /// A tree copy's source and destination, the remote one as the alias
    /// says.
    fn tree_paths(&self, put: bool, source: String, dest: String) -> (String, String) {
        if put {
            (source, self.put_dest(&dest))
        } else {
            (self.path(&source), dest)
        }
    }

    fn timeout(&self, given: Option<f64>) -> Option<f64> {
        given.or(self.timeout)
    }

    fn jobs(&self, given: Option<usize>) -> usize {
        given.or(self.jobs).unwrap_or(framewire::config::DEFAULT_JOBS).max(1)
    }
}

/// Whether a connection is kept after a call that ended with `done`: not
/// if the client found it closed, the call stopped part-way (a Python
/// exception while it ran), it left settings for the next command, or
/// `drop_after` says so of the result.
fn keeps<T>(client: &Inner, done: &Result<T, Failed>, drop_after: impl FnOnce(&T) -> bool) -> bool {
    !client.is_closed()
        && match done {
            Ok(t) => !drop_after(t),
            Err(Failed::Client(_) | Failed::Raised(_)) => true,
            Err(Failed::Spent(_) | Failed::Python(_)) => false,
        }
}

/// Refuses a call that cannot work here: on a client made in another
/// process (before a `fork()`: its connection belongs to the parent's
/// runtime, whose threads are not in this process), or made from one of
/// framewire's own threads (a progress callback), which are what would
/// run it.
fn usable_here(pid: u32) -> Result<(), Failed> {
    if pid != std::process::id() {
        let message = "this client was made in another process (before a fork): make a new one here";
        return Err(Failed::Raised(raise_as("ConnectionError", message.to_owned(), None)));
    }
    on_our_thread()
}

/// Refuses a blocking call from one of framewire's own threads.
fn on_our_thread() -> Result<(), Failed> {
    if tokio::runtime::Handle::try_current().is_ok() {
        let message =
            "framewire's blocking calls cannot be made from a progress callback (it runs on framewire's own threads)";
        return Err(Failed::Raised(pyo3::exceptions::PyRuntimeError::new_err(message)));
    }
    Ok(())
}

impl Client {
    /// Runs `f` on the connection with the GIL released, interruptible by
    /// Ctrl-C. The connection is dropped, with the lock still held, when
    /// the call was interrupted (the stream is out of step), when the
    /// client found it unusable, or when `drop_after` says so of the
    /// result.
    fn with<T: Send + 'static>(
        &self,
        py: Python<'_>,
        f: impl for<'c> FnOnce(&'c mut Inner) -> Call<'c, T> + Send + 'static,
        drop_after: impl FnOnce(&T) -> bool + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            usable_here(self.pid)?;
            let mut guard = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut client = guard.take().ok_or(Failed::Client(ClientError::Closed))?;
            // On the runtime's threads, as the CLI's calls run (driven
            // from this thread, a transfer's every wake-up would cross
            // threads); the connection goes with the task, and comes
            // back with its result.
            let task = runtime().spawn(async move {
                let done = f(&mut client).await;
                (client, done)
            });
            let abort = task.abort_handle();
            match interruptible(task) {
                Ok(Ok((client, done))) => {
                    if keeps(&client, &done, drop_after) {
                        *guard = Some(client);
                    }
                    done
                }
                // A panic in the call: the connection is gone with it.
                Ok(Err(joined)) => Err(Failed::Client(ClientError::Local {
                    path: PathBuf::new(),
                    source: std::io::Error::other(format!("the call failed inside: {joined}")),
                })),
                // Interrupted: the task and its connection are dropped.
                Err(e) => {
                    abort.abort();
                    Err(e)
                }
            }
        })
        .map_err(Failed::raise)
    }

    /// [`with`](Self::with), keeping the connection unless the call was
    /// interrupted or the client found it unusable.
    fn call<T: Send + 'static>(
        &self,
        py: Python<'_>,
        f: impl for<'c> FnOnce(&'c mut Inner) -> Call<'c, T> + Send + 'static,
    ) -> PyResult<T> {
        self.with(py, f, |_| false)
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (addr, key_file=None, connect_timeout=Some(30.0), identity=None, passphrase=None, known_hosts=None, accept_new=false, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addr: String,
        key_file: Option<PathBuf>,
        connect_timeout: Option<f64>,
        identity: Option<PathBuf>,
        passphrase: Option<String>,
        known_hosts: Option<PathBuf>,
        accept_new: bool,
        config: Option<PathBuf>,
    ) -> PyResult<Self> {
        let auth = Auth { key_file, identity, passphrase, known_hosts, accept_new, config };
        on_our_thread().map_err(Failed::raise)?;
        let host = Host::of(py.detach(|| resolved_of(&addr, &auth, connect_timeout))?);
        let connected = py.detach(|| block_on(host.endpoint.connect()));
        let inner = connected.map_err(Failed::raise)?;
        Ok(Client { inner: Mutex::new(Some(inner)), host, pid: std::process::id() })
    }

    /// Runs `command`; returns (exit code, stdout, stderr, how it ended:
    /// `exited`, `timeout`, `cancelled`, `shutdown`, `revoked` or
    /// `unknown`). The code is the status, or minus the signal that ended
    /// it, as `subprocess` gives them.
    #[pyo3(signature = (command, timeout=None, env=None, stdin=None, pty=None))]
    fn run(
        &self,
        py: Python<'_>,
        command: String,
        timeout: Option<f64>,
        env: Env,
        stdin: Option<Vec<u8>>,
        pty: Pty,
    ) -> PyResult<RunResult> {
        let args = RunArgs::new(command, self.host.timeout(timeout), (env, stdin), pty)?;
        // Refused names: the ones it took would reach the next command,
        // so the connection is not used again.
        let done = self.with(py, move |c| Box::pin(run_on(c, args)), Result::is_err)?;
        ran(done)
    }

    /// Uploads the file `local` to `remote` (into it if it is a
    /// directory), replacing what is there as the CLI does; returns
    /// (size, resumed, blake3, matched).
    #[pyo3(signature = (local, remote, progress=None))]
    fn put(&self, py: Python<'_>, local: PathBuf, remote: String, progress: Option<Py<PyAny>>) -> PyResult<FileStats> {
        let (remote, progress) = (self.host.put_dest(&remote), Progressor::new(progress));
        self.call(py, move |c| Box::pin(put_file(c, local, remote, progress)))
    }

    /// Downloads the file `remote` to `local` (into it if it is a
    /// directory), replacing what is there as the CLI does; returns
    /// (size, resumed, blake3, matched).
    #[pyo3(signature = (remote, local, progress=None))]
    fn get(&self, py: Python<'_>, remote: String, local: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<FileStats> {
        let (remote, progress) = (self.host.path(&remote), Progressor::new(progress));
        self.call(py, move |c| Box::pin(get_file(c, remote, local, progress)))
    }

    /// Copies a tree as `put -r` (`put`) or `get -r` does, planned on
    /// this connection and run over `jobs` connections.
    #[pyo3(signature = (put, source, dest, delete=false, jobs=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_tree(
        &self,
        py: Python<'_>,
        put: bool,
        source: String,
        dest: String,
        delete: bool,
        jobs: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<TreeStats> {
        let (source, dest) = self.host.tree_paths(put, source, dest);
        let jobs = self.host.jobs(jobs);
        let (endpoint, progress) = (self.host.endpoint.clone(), Progressor::new(progress));
        self.call(py, move |c| {
            Box::pin(async move { copy_tree(c, &endpoint, (put, source, dest), (delete, jobs), progress).await })
        })
    }

    /// The entries of `path` as JSON (PROTOCOL.md §4.3).
    #[pyo3(signature = (path, recursive=false))]
    fn ls(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<String> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(ls_on(c, path, recursive).await?) }))
    }

    /// `path`'s entry as JSON.
    fn stat(&self, py: Python<'_>, path: String) -> PyResult<String> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(stat_on(c, path).await?) }))
    }

    /// Makes `path` (and its parents if `parents`); whether it was made.
    #[pyo3(signature = (path, parents=false))]
    fn mkdir(&self, py: Python<'_>, path: String, parents: bool) -> PyResult<bool> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(mkdir_on(c, path, parents).await?) }))
    }

    /// Removes `path` (a directory with what is in it if `recursive`).
    #[pyo3(signature = (path, recursive=false))]
    fn remove(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<bool> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(remove_on(c, path, recursive).await?) }))
    }

    /// Renames `src` to `dst` (over an existing file only if `force`).
    #[pyo3(signature = (src, dst, force=false))]
    fn rename(&self, py: Python<'_>, src: String, dst: String, force: bool) -> PyResult<()> {
        let (src, dst) = (self.host.path(&src), self.host.path(&dst));
        self.call(py, move |c| Box::pin(async move { Ok(c.rename(&src, &dst, force).await?) }))
    }

    /// Closes the connection (later calls raise `ConnectionError`). Waits
    /// for a call under way in another thread to end.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        });
    }
}

/// A connection to a framewire server whose calls are awaited on the
/// caller's asyncio event loop: each runs as a task on the runtime, and
/// its result is handed to the loop. Connected by its first call; calls
/// on one client take turns (one connection), calls on several run at
/// once. A call cancelled part-way closes the connection.
#[pyclass(module = "framewire._native", frozen)]
struct AsyncClient {
    /// Held for the whole of a call: calls take turns.
    inner: Arc<tokio::sync::Mutex<Slot>>,
    host: Host,
    /// The process it was made in.
    pid: u32,
}

/// An `AsyncClient`'s connection.
enum Slot {
    /// Not made yet: the next call makes it.
    Unconnected,
    Ready(Box<Inner>),
    /// Closed (by `close`), left unusable by a call, or taken by a call
    /// under way (a call dropped part-way, cancelled, leaves it so):
    /// calls raise `ConnectionError`.
    Gone,
}

/// Converts what an async call made into Python's result or exception.
fn settle<T>(done: Result<T, Failed>) -> PyResult<T> {
    done.map_err(Failed::raise)
}

impl AsyncClient {
    /// Awaits `f` on the connection (made first if this is the first
    /// call), on the runtime; the connection is put back unless the call
    /// left it unusable, `drop_after` says so, or the call was cancelled
    /// (dropped part-way: the connection goes with it).
    fn with<'py, T>(
        &self,
        py: Python<'py>,
        f: impl for<'c> FnOnce(&'c mut Inner) -> Call<'c, T> + Send + 'static,
        drop_after: impl FnOnce(&T) -> bool + Send + 'static,
        convert: impl FnOnce(T) -> PyResult<Py<PyAny>> + Send + 'static,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: Send + 'static,
    {
        if self.pid != std::process::id() {
            let message = "this client was made in another process (before a fork): make a new one here";
            return Err(raise_as("ConnectionError", message.to_owned(), None));
        }
        let (inner, endpoint) = (self.inner.clone(), self.host.endpoint.clone());
        generic::future_into_py::<OnRuntime, _, _>(py, async move {
            let mut slot = inner.lock().await;
            // Connected first, the slot left as it is meanwhile: a call
            // cancelled while it connects has spoken to nobody.
            if matches!(*slot, Slot::Unconnected) {
                match endpoint.connect().await {
                    Ok(client) => *slot = Slot::Ready(Box::new(client)),
                    Err(e) => return settle(Err(Failed::Client(e))),
                }
            }
            // Taken out while the call runs: one cancelled part-way
            // leaves it gone.
            let Slot::Ready(client) = std::mem::replace(&mut *slot, Slot::Gone) else {
                return settle(Err(Failed::Client(ClientError::Closed)));
            };
            let mut client = *client;
            let done = f(&mut client).await;
            if keeps(&client, &done, drop_after) {
                *slot = Slot::Ready(Box::new(client));
            }
            drop(slot);
            convert(settle(done)?)
        })
    }

    fn call<'py, T: Send + 'static>(
        &self,
        py: Python<'py>,
        f: impl for<'c> FnOnce(&'c mut Inner) -> Call<'c, T> + Send + 'static,
        convert: impl FnOnce(T) -> PyResult<Py<PyAny>> + Send + 'static,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.with(py, f, |_| false, convert)
    }
}

/// `value` as a Python object.
fn to_py<T: for<'py> IntoPyObject<'py>>(value: T) -> PyResult<Py<PyAny>> {
    Python::attach(|py| pyo3::IntoPyObjectExt::into_py_any(value, py))
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (addr, key_file=None, connect_timeout=Some(30.0), identity=None, passphrase=None, known_hosts=None, accept_new=false, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addr: String,
        key_file: Option<PathBuf>,
        connect_timeout: Option<f64>,
        identity: Option<PathBuf>,
        passphrase: Option<String>,
        known_hosts: Option<PathBuf>,
        accept_new: bool,
        config: Option<PathBuf>,
    ) -> PyResult<Self> {
        let auth = Auth { key_file, identity, passphrase, known_hosts, accept_new, config };
        Ok(AsyncClient {
            inner: Arc::new(tokio::sync::Mutex::new(Slot::Unconnected)),
            host: Host::of(py.detach(|| resolved_of(&addr, &auth, connect_timeout))?),
            pid: std::process::id(),
        })
    }

    /// Connects now (a later call would otherwise): awaitable.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, |_| Box::pin(async { Ok(()) }), to_py)
    }

    #[pyo3(signature = (command, timeout=None, env=None, stdin=None, pty=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<f64>,
        env: Env,
        stdin: Option<Vec<u8>>,
        pty: Pty,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = RunArgs::new(command, self.host.timeout(timeout), (env, stdin), pty)?;
        self.with(py, move |c| Box::pin(run_on(c, args)), Result::is_err, |done| to_py(ran(done)?))
    }

    #[pyo3(signature = (local, remote, progress=None))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        local: PathBuf,
        remote: String,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (remote, progress) = (self.host.put_dest(&remote), Progressor::new(progress));
        self.call(py, move |c| Box::pin(put_file(c, local, remote, progress)), to_py)
    }

    #[pyo3(signature = (remote, local, progress=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        remote: String,
        local: PathBuf,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (remote, progress) = (self.host.path(&remote), Progressor::new(progress));
        self.call(py, move |c| Box::pin(get_file(c, remote, local, progress)), to_py)
    }

    #[pyo3(signature = (put, source, dest, delete=false, jobs=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_tree<'py>(
        &self,
        py: Python<'py>,
        put: bool,
        source: String,
        dest: String,
        delete: bool,
        jobs: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (source, dest) = self.host.tree_paths(put, source, dest);
        let jobs = self.host.jobs(jobs);
        let (endpoint, progress) = (self.host.endpoint.clone(), Progressor::new(progress));
        self.call(
            py,
            move |c| {
                Box::pin(async move { copy_tree(c, &endpoint, (put, source, dest), (delete, jobs), progress).await })
            },
            to_py,
        )
    }

    #[pyo3(signature = (path, recursive=false))]
    fn ls<'py>(&self, py: Python<'py>, path: String, recursive: bool) -> PyResult<Bound<'py, PyAny>> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(ls_on(c, path, recursive).await?) }), to_py)
    }

    fn stat<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(stat_on(c, path).await?) }), to_py)
    }

    #[pyo3(signature = (path, parents=false))]
    fn mkdir<'py>(&self, py: Python<'py>, path: String, parents: bool) -> PyResult<Bound<'py, PyAny>> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(mkdir_on(c, path, parents).await?) }), to_py)
    }

    #[pyo3(signature = (path, recursive=false))]
    fn remove<'py>(&self, py: Python<'py>, path: String, recursive: bool) -> PyResult<Bound<'py, PyAny>> {
        let path = self.host.path(&path);
        self.call(py, move |c| Box::pin(async move { Ok(remove_on(c, path, recursive).await?) }), to_py)
    }

    #[pyo3(signature = (src, dst, force=false))]
    fn rename<'py>(&self, py: Python<'py>, src: String, dst: String, force: bool) -> PyResult<Bound<'py, PyAny>> {
        let (src, dst) = (self.host.path(&src), self.host.path(&dst));
        self.call(py, move |c| Box::pin(async move { Ok(c.rename(&src, &dst, force).await?) }), to_py)
    }

    /// Closes the connection once the call under way (if any) ends:
    /// awaitable. Later calls raise `ConnectionError`.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        generic::future_into_py::<OnRuntime, _, _>(py, async move {
            *inner.lock().await = Slot::Gone;
            Ok(())
        })
    }
}

/// A fan-out of one command over many hosts under way: each `next`
/// waits (the GIL released) for the next host to finish and returns its
/// result; dropped or closed, it cancels the hosts still running.
#[pyclass(module = "framewire._native")]
struct Fleet {
    events: Option<framewire::client::fleet::Events<framewire::client::ExitStatus>>,
    /// Output gathered per host until it finishes.
    output: std::collections::HashMap<Arc<str>, (Vec<u8>, Vec<u8>)>,
}

/// The most of one host's stdout (and of its stderr) a fleet keeps: past
/// it, the rest is dropped and a line says so at the end.
const MAX_OUTPUT: usize = 64 << 20;

/// Adds `line` to a host's output, within [`MAX_OUTPUT`].
fn keep_output(out: &mut Vec<u8>, line: &[u8]) {
    const CUT: &[u8] = b"\n[framewire: output cut at 64 MiB]\n";
    if out.len() >= MAX_OUTPUT {
        return;
    }
    let room = MAX_OUTPUT - out.len();
    if line.len() <= room {
        out.extend_from_slice(line);
    } else {
        out.extend_from_slice(&line[..room]);
        out.extend_from_slice(CUT);
    }
}

/// A host's result: (host, exit code or None, stdout, stderr, how it
/// ended, error class or None, error message, seconds).
type HostResult = (String, Option<i32>, Py<PyBytes>, Py<PyBytes>, &'static str, Option<&'static str>, String, f64);

#[pymethods]
impl Fleet {
    #[new]
    #[pyo3(signature = (hosts, command, fanout=64, key_file=None, connect_timeout=Some(30.0), timeout=None, env=None, identity=None, passphrase=None, known_hosts=None, accept_new=false, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        hosts: Vec<String>,
        command: String,
        fanout: usize,
        key_file: Option<PathBuf>,
        connect_timeout: Option<f64>,
        timeout: Option<f64>,
        env: Env,
        identity: Option<PathBuf>,
        passphrase: Option<String>,
        known_hosts: Option<PathBuf>,
        accept_new: bool,
        config: Option<PathBuf>,
    ) -> PyResult<Self> {
        use framewire::client::fleet;
        let auth = Auth { key_file, identity, passphrase, known_hosts, accept_new, config };
        let limit = seconds("connect_timeout", connect_timeout)?;
        let hosts = py.detach(|| -> PyResult<Vec<fleet::Host>> {
            let settings = settings_of(&auth)?;
            // Host sets as the CLI expands them, `@group` from the config
            // file; each host once.
            let groups = |name: &str| settings.group(name).map(|m| m.into_iter().map(str::to_owned).collect());
            let mut names = Vec::new();
            for set in &hosts {
                let expanded = framewire::client::hosts::expand(set, &groups)
                    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
                names.extend(expanded);
            }
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            // Each resolved as one host is (its alias's address, keys and
            // timeout); the same identity file is read once.
            let mut read: std::collections::HashMap<(Option<PathBuf>, Option<PathBuf>), _> = Default::default();
            names
                .into_iter()
                .map(|name| {
                    let target = settings.resolve(&name);
                    let key_file = target.key_file.as_ref().map(|(p, _)| p.clone());
                    let identity = target.identity.as_ref().map(|(p, _)| p.clone());
                    let creds = match read.get(&(key_file.clone(), identity.clone())) {
                        Some(creds) => Clone::clone(creds),
                        None => {
                            let one = Auth {
                                key_file: key_file.clone(),
                                identity: identity.clone(),
                                passphrase: auth.passphrase.clone(),
                                known_hosts: target.host_keys().0.map(std::path::Path::to_owned),
                                accept_new: target.host_keys().1,
                                config: None,
                            };
                            // A key file or identity that cannot be read is
                            // raised as it is (it names the file).
                            let creds = credentials_of(&one)?;
                            read.insert((key_file, identity), creds.clone());
                            creds
                        }
                    };
                    let mut endpoint = endpoint_with(target.addr.clone(), creds, limit).with_compress(target.compress);
                    if let Some(rate) = target.bwlimit {
                        endpoint = endpoint.with_bwlimit(framewire::transport::Throttle::new(rate));
                    }
                    let host = fleet::Host::new(name, endpoint).with_dir(target.dir.clone());
                    let host_timeout = timeout.or(target.timeout).map(|t| seconds("timeout", Some(t))).transpose()?;
                    Ok(host.with_timeout(host_timeout.flatten()))
                })
                .collect()
        })?;
        let exec = framewire::client::ExecOptions::with_timeout(seconds("timeout", timeout)?);
        let options = fleet::FleetOptions::new(fanout.max(1));
        let _entered = runtime().enter();
        let events = fleet::exec(hosts, command, exec, env.unwrap_or_default(), options);
        Ok(Fleet { events: Some(events), output: Default::default() })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<HostResult>> {
        use framewire::client::fleet::{Event, HostError};
        on_our_thread().map_err(Failed::raise)?;
        let Some(events) = self.events.as_mut() else { return Ok(None) };
        let output = &mut self.output;
        let finished = py
            .detach(|| {
                interruptible(async {
                    loop {
                        match events.next().await {
                            None => return None,
                            Some(Event::Stdout { host, line }) => {
                                keep_output(&mut output.entry(host).or_default().0, &line)
                            }
                            Some(Event::Stderr { host, line }) => {
                                keep_output(&mut output.entry(host).or_default().1, &line)
                            }
                            Some(Event::Finished { host, outcome, elapsed }) => return Some((host, outcome, elapsed)),
                            Some(_) => {}
                        }
                    }
                })
            })
            .map_err(Failed::raise)?;
        let Some((host, outcome, elapsed)) = finished else {
            self.events = None;
            return Ok(None);
        };
        let (out, err) = self.output.remove(&host).unwrap_or_default();
        let (code, how, class, message) = match outcome {
            Ok(status) => {
                use framewire::proto::ExitReason;
                let how = match status.reason {
                    ExitReason::Exited => "exited",
                    ExitReason::Timeout => "timeout",
                    ExitReason::Cancelled => "cancelled",
                    ExitReason::Shutdown => "shutdown",
                    ExitReason::Revoked => "revoked",
                    _ => "unknown",
                };
                let code = match (status.status, status.signal) {
                    (Some(s), _) => s,
                    (None, Some(signal)) => -signal,
                    (None, None) => status.code(),
                };
                (Some(code), how, None, String::new())
            }
            Err(e) => {
                let class = match &e {
                    HostError::KeyRefused(_) => "AuthenticationError",
                    HostError::Unreachable(c) | HostError::Failed(c) => class_of(c),
                    HostError::NotStarted | HostError::Cancelled => "Error",
                    _ => "Error",
                };
                (None, "failed", Some(class), e.to_string())
            }
        };
        let (out, err) = (PyBytes::new(py, &out).unbind(), PyBytes::new(py, &err).unbind());
        Ok(Some((host.to_string(), code, out, err, how, class, message, elapsed.as_secs_f64())))
    }

    /// Cancels the hosts still running (their commands killed) and those
    /// not started.
    fn close(&mut self) {
        if let Some(events) = self.events.take() {
            events.cancel();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            events.cancel();
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<AsyncClient>()?;
    m.add_class::<Fleet>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
