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
                .thread_name("framewire")
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

/// Why a blocking call ended without its result.
enum Failed {
    /// The client's error.
    Client(ClientError),
    /// A Python exception: KeyboardInterrupt (or another signal's
    /// handler's) while waiting.
    Python(PyErr),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        Failed::Client(e)
    }
}

impl Failed {
    fn raise(self) -> PyErr {
        match self {
            Failed::Client(e) => raise(e),
            Failed::Python(e) => e,
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

async fn run_on(c: &mut Inner, a: RunArgs) -> Result<Ran, ClientError> {
    if let Some(vars) = a.env.filter(|v| !v.is_empty()) {
        let set = c.set_env(&vars).await?;
        if !set.refused.is_empty() {
            return Ok(Err(set.refused));
        }
    }
    if let Some((term, rows, cols)) = &a.pty {
        c.request_pty(term, framewire::client::WindowSize { rows: *rows, cols: *cols }).await?;
    }
    let options = framewire::client::ExecOptions::with_timeout(a.timeout);
    let output = match a.stdin {
        // With a terminal, stdin is what is typed: none is an empty input
        // (the terminal's end of file), not a closed pipe.
        None if a.pty.is_none() => c.exec_output(&a.command, &options).await?,
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
            let status = c.exec(&a.command, &options, io).await?;
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
        if self.0.raised.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let total = self.0.total.load(Ordering::Relaxed);
        let called = Python::attach(|py| self.0.callback.call1(py, (done.min(total.max(done)), total)).map(drop));
        if let Err(e) = called {
            *self.0.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            self.0.stop.notify_one();
        }
    }

    /// The last call, at the end of a copy that did not stop.
    fn finish(&self) {
        let total = self.0.total.load(Ordering::Relaxed);
        let done = {
            let held = self.0.done.lock().unwrap_or_else(|p| p.into_inner());
            held.0 + held.1.values().sum::<u64>()
        };
        self.report(done.max(total), true);
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
    if local.is_dir() {
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
        p.finish();
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
        p.finish();
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
    let plan = planned.map_err(|e| match e {
        tree::PlanError::Source { path, error } => {
            let class = class_of(&error);
            let code = error.code().map(|c| c.to_string());
            Failed::Python(raise_as(class, format!("cannot copy {path}: {error}"), code))
        }
        other => Failed::Python(raise_as("Error", other.to_string(), None)),
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
        p.finish();
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

/// The endpoint of `addr` with the key in `key_file`, connecting within
/// `connect_timeout` seconds.
fn endpoint_of(addr: String, key_file: Option<PathBuf>, connect_timeout: Option<f64>) -> PyResult<Endpoint> {
    let limit = seconds("connect_timeout", connect_timeout)?;
    let key = read_key(key_file).map_err(raise)?;
    let endpoint = Endpoint::new(addr, key);
    Ok(match limit {
        Some(limit) => endpoint.with_connect_timeout(limit),
        None => endpoint,
    })
}

/// `(TERM, rows, columns)` of a terminal asked for, checked.
type Pty = Option<(String, u16, u16)>;

/// A connection to a framewire server.
#[pyclass(module = "framewire._native", frozen)]
struct Client {
    inner: Mutex<Option<Inner>>,
    /// Where a tree copy's other connections go.
    endpoint: Endpoint,
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
                    let keep = !client.is_closed() && done.as_ref().is_ok_and(|t| !drop_after(t));
                    // A call stopped by a Python exception (a progress
                    // callback's) stopped part-way: not kept either.
                    let keep = keep || (!client.is_closed() && matches!(done, Err(Failed::Client(_))));
                    if keep {
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
    #[pyo3(signature = (addr, key_file=None, connect_timeout=Some(30.0)))]
    fn new(py: Python<'_>, addr: String, key_file: Option<PathBuf>, connect_timeout: Option<f64>) -> PyResult<Self> {
        let endpoint = endpoint_of(addr, key_file, connect_timeout)?;
        let connected = py.detach(|| block_on(endpoint.connect()));
        let inner = connected.map_err(Failed::raise)?;
        Ok(Client { inner: Mutex::new(Some(inner)), endpoint })
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
        let args = RunArgs::new(command, timeout, (env, stdin), pty)?;
        // Refused names: the ones it took would reach the next command,
        // so the connection is not used again.
        let done = self.with(py, move |c| Box::pin(async move { Ok(run_on(c, args).await?) }), Result::is_err)?;
        ran(done)
    }

    /// Uploads the file `local` to `remote` (into it if it is a
    /// directory), replacing what is there as the CLI does; returns
    /// (size, resumed, blake3, matched).
    #[pyo3(signature = (local, remote, progress=None))]
    fn put(&self, py: Python<'_>, local: PathBuf, remote: String, progress: Option<Py<PyAny>>) -> PyResult<FileStats> {
        let progress = Progressor::new(progress);
        self.call(py, move |c| Box::pin(put_file(c, local, remote, progress)))
    }

    /// Downloads the file `remote` to `local` (into it if it is a
    /// directory), replacing what is there as the CLI does; returns
    /// (size, resumed, blake3, matched).
    #[pyo3(signature = (remote, local, progress=None))]
    fn get(&self, py: Python<'_>, remote: String, local: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<FileStats> {
        let progress = Progressor::new(progress);
        self.call(py, move |c| Box::pin(get_file(c, remote, local, progress)))
    }

    /// Copies a tree as `put -r` (`put`) or `get -r` does, planned on
    /// this connection and run over `jobs` connections.
    #[pyo3(signature = (put, source, dest, delete=false, jobs=4, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_tree(
        &self,
        py: Python<'_>,
        put: bool,
        source: String,
        dest: String,
        delete: bool,
        jobs: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<TreeStats> {
        let (endpoint, progress) = (self.endpoint.clone(), Progressor::new(progress));
        self.call(py, move |c| {
            Box::pin(async move { copy_tree(c, &endpoint, (put, source, dest), (delete, jobs), progress).await })
        })
    }

    /// The entries of `path` as JSON (PROTOCOL.md §4.3).
    #[pyo3(signature = (path, recursive=false))]
    fn ls(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<String> {
        self.call(py, move |c| Box::pin(async move { Ok(ls_on(c, path, recursive).await?) }))
    }

    /// `path`'s entry as JSON.
    fn stat(&self, py: Python<'_>, path: String) -> PyResult<String> {
        self.call(py, move |c| Box::pin(async move { Ok(stat_on(c, path).await?) }))
    }

    /// Makes `path` (and its parents if `parents`); whether it was made.
    #[pyo3(signature = (path, parents=false))]
    fn mkdir(&self, py: Python<'_>, path: String, parents: bool) -> PyResult<bool> {
        self.call(py, move |c| Box::pin(async move { Ok(mkdir_on(c, path, parents).await?) }))
    }

    /// Removes `path` (a directory with what is in it if `recursive`).
    #[pyo3(signature = (path, recursive=false))]
    fn remove(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<bool> {
        self.call(py, move |c| Box::pin(async move { Ok(remove_on(c, path, recursive).await?) }))
    }

    /// Renames `src` to `dst` (over an existing file only if `force`).
    #[pyo3(signature = (src, dst, force=false))]
    fn rename(&self, py: Python<'_>, src: String, dst: String, force: bool) -> PyResult<()> {
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
    endpoint: Endpoint,
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
        let (inner, endpoint) = (self.inner.clone(), self.endpoint.clone());
        generic::future_into_py::<OnRuntime, _, _>(py, async move {
            let mut slot = inner.lock().await;
            let mut client = match std::mem::replace(&mut *slot, Slot::Gone) {
                Slot::Ready(client) => *client,
                Slot::Unconnected => match endpoint.connect().await {
                    Ok(client) => client,
                    // Not connected: the next call tries again.
                    Err(e) => {
                        *slot = Slot::Unconnected;
                        return settle(Err(Failed::Client(e)));
                    }
                },
                Slot::Gone => return settle(Err(Failed::Client(ClientError::Closed))),
            };
            let done = f(&mut client).await;
            let unusable = client.is_closed() || matches!(&done, Err(Failed::Python(_)));
            if !unusable && done.as_ref().map_or(true, |t| !drop_after(t)) {
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
    #[pyo3(signature = (addr, key_file=None, connect_timeout=Some(30.0)))]
    fn new(addr: String, key_file: Option<PathBuf>, connect_timeout: Option<f64>) -> PyResult<Self> {
        Ok(AsyncClient {
            inner: Arc::new(tokio::sync::Mutex::new(Slot::Unconnected)),
            endpoint: endpoint_of(addr, key_file, connect_timeout)?,
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
        let args = RunArgs::new(command, timeout, (env, stdin), pty)?;
        self.with(
            py,
            move |c| Box::pin(async move { Ok(run_on(c, args).await?) }),
            Result::is_err,
            |done| to_py(ran(done)?),
        )
    }

    #[pyo3(signature = (local, remote, progress=None))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        local: PathBuf,
        remote: String,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let progress = Progressor::new(progress);
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
        let progress = Progressor::new(progress);
        self.call(py, move |c| Box::pin(get_file(c, remote, local, progress)), to_py)
    }

    #[pyo3(signature = (put, source, dest, delete=false, jobs=4, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_tree<'py>(
        &self,
        py: Python<'py>,
        put: bool,
        source: String,
        dest: String,
        delete: bool,
        jobs: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (endpoint, progress) = (self.endpoint.clone(), Progressor::new(progress));
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
        self.call(py, move |c| Box::pin(async move { Ok(ls_on(c, path, recursive).await?) }), to_py)
    }

    fn stat<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| Box::pin(async move { Ok(stat_on(c, path).await?) }), to_py)
    }

    #[pyo3(signature = (path, parents=false))]
    fn mkdir<'py>(&self, py: Python<'py>, path: String, parents: bool) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| Box::pin(async move { Ok(mkdir_on(c, path, parents).await?) }), to_py)
    }

    #[pyo3(signature = (path, recursive=false))]
    fn remove<'py>(&self, py: Python<'py>, path: String, recursive: bool) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| Box::pin(async move { Ok(remove_on(c, path, recursive).await?) }), to_py)
    }

    #[pyo3(signature = (src, dst, force=false))]
    fn rename<'py>(&self, py: Python<'py>, src: String, dst: String, force: bool) -> PyResult<Bound<'py, PyAny>> {
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

/// A host's result: (host, exit code or None, stdout, stderr, how it
/// ended, error class or None, error message, seconds).
type HostResult = (String, Option<i32>, Py<PyBytes>, Py<PyBytes>, &'static str, Option<&'static str>, String, f64);

#[pymethods]
impl Fleet {
    #[new]
    #[pyo3(signature = (hosts, command, fanout=64, key_file=None, connect_timeout=Some(30.0), timeout=None, env=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        hosts: Vec<String>,
        command: String,
        fanout: usize,
        key_file: Option<PathBuf>,
        connect_timeout: Option<f64>,
        timeout: Option<f64>,
        env: Env,
    ) -> PyResult<Self> {
        use framewire::client::fleet;
        let mut names = Vec::new();
        for set in &hosts {
            let expanded = framewire::client::hosts::expand(set, &|_| None)
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
            names.extend(expanded);
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let key = read_key(key_file).map_err(raise)?;
        let limit = seconds("connect_timeout", connect_timeout)?;
        let hosts: Vec<fleet::Host> = names
            .into_iter()
            .map(|name| {
                let endpoint = Endpoint::new(name.clone(), key.clone());
                let endpoint = match limit {
                    Some(limit) => endpoint.with_connect_timeout(limit),
                    None => endpoint,
                };
                fleet::Host::new(name, endpoint)
            })
            .collect();
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
        let Some(events) = self.events.as_mut() else { return Ok(None) };
        let output = &mut self.output;
        let finished = py
            .detach(|| {
                interruptible(async {
                    loop {
                        match events.next().await {
                            None => return None,
                            Some(Event::Stdout { host, line }) => {
                                output.entry(host).or_default().0.extend_from_slice(&line)
                            }
                            Some(Event::Stderr { host, line }) => {
                                output.entry(host).or_default().1.extend_from_slice(&line)
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
