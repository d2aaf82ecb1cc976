//! `framewire._native`: the Rust client, for the `framewire` Python
//! package. A thin layer: each call runs the library's async client on one
//! runtime shared by the process, with the GIL released while it waits
//! (`Python::detach`), and turns its errors into the exceptions of
//! `framewire._errors`. The Python-facing API (`framewire.Client`) is in
//! `framewire/client.py`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use framewire::client::TransferOptions;
use framewire::{Client as Inner, ClientError, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

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

/// A connection to a framewire server.
#[pyclass(module = "framewire._native", frozen)]
struct Client {
    inner: Mutex<Option<Inner>>,
}

/// An async call on a client's connection.
type Call<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ClientError>> + Send + 'c>>;

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
                    let keep = !client.is_closed() && !done.as_ref().is_ok_and(drop_after);
                    if keep {
                        *guard = Some(client);
                    }
                    done.map_err(Failed::Client)
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
        let limit = seconds("connect_timeout", connect_timeout)?;
        let connected = py.detach(|| {
            let key = match key_file {
                Some(path) => Some(framewire::auth::Key::from_file(&path).map_err(|e| ClientError::Local {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                })?),
                None => None,
            };
            block_on(async {
                let connect = Inner::connect_with(&addr, key.as_ref());
                match limit {
                    None => connect.await,
                    Some(after) => tokio::time::timeout(after, connect)
                        .await
                        .unwrap_or_else(|_| Err(ClientError::ConnectTimeout { addr: addr.clone(), after })),
                }
            })
        });
        let inner = connected.map_err(Failed::raise)?;
        Ok(Client { inner: Mutex::new(Some(inner)) })
    }

    /// Runs `command`; returns (exit code, stdout, stderr, how it ended:
    /// `exited`, `timeout`, `cancelled`, `shutdown`, `revoked` or
    /// `unknown`). The code is the status, or minus the signal that ended
    /// it, as `subprocess` gives them.
    #[pyo3(signature = (command, timeout=None, env=None, stdin=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<f64>,
        env: Option<Vec<(String, String)>>,
        stdin: Option<Vec<u8>>,
    ) -> PyResult<(i32, Bound<'py, PyBytes>, Bound<'py, PyBytes>, &'static str)> {
        let timeout = seconds("timeout", timeout)?;
        let ran = self.with(
            py,
            move |c| {
                Box::pin(async move {
                    if let Some(vars) = env.filter(|v| !v.is_empty()) {
                        let set = c.set_env(&vars).await?;
                        if !set.refused.is_empty() {
                            return Ok(Err(set.refused));
                        }
                    }
                    let options = framewire::client::ExecOptions::with_timeout(timeout);
                    let output = match stdin {
                        None => c.exec_output(&command, &options).await?,
                        Some(input) => {
                            let (mut out, mut err) = (Vec::new(), Vec::new());
                            let mut input = &input[..];
                            let io = framewire::client::ExecIo {
                                stdin: Some(&mut input),
                                stdout: &mut out,
                                stderr: &mut err,
                                cancel: None,
                                resize: None,
                            };
                            let status = c.exec(&command, &options, io).await?;
                            framewire::client::Output { status, stdout: out, stderr: err }
                        }
                    };
                    Ok(Ok(output))
                })
            },
            // Refused names: the ones it took would reach the next
            // command, so the connection is not used again.
            Result::is_err,
        )?;
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
        Ok((code, PyBytes::new(py, &output.stdout), PyBytes::new(py, &output.stderr), how))
    }

    /// Uploads the file `local` to the file `remote`, replacing what is
    /// there as the CLI does; returns (size, resumed, blake3, matched).
    fn put(&self, py: Python<'_>, local: PathBuf, remote: String) -> PyResult<(u64, u64, String, u64)> {
        let t = self.call(py, move |c| {
            Box::pin(async move { c.put(&local, &remote, &TransferOptions::force(true), &mut |_| {}).await })
        })?;
        Ok((t.size, t.resumed, t.blake3, t.matched))
    }

    /// Downloads the file `remote` to the file `local`, replacing what is
    /// there as the CLI does; returns (size, resumed, blake3, matched).
    fn get(&self, py: Python<'_>, remote: String, local: PathBuf) -> PyResult<(u64, u64, String, u64)> {
        let t = self.call(py, move |c| {
            Box::pin(async move { c.get(&remote, &local, &TransferOptions::force(true), &mut |_| {}).await })
        })?;
        Ok((t.size, t.resumed, t.blake3, t.matched))
    }

    /// The entries of `path` as JSON (PROTOCOL.md §4.3).
    #[pyo3(signature = (path, recursive=false))]
    fn ls(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<String> {
        let entries = self.call(py, move |c| Box::pin(async move { c.list(&path, recursive).await }))?;
        Ok(serde_json::to_string(&entries).expect("entries are JSON"))
    }

    /// `path`'s entry as JSON.
    fn stat(&self, py: Python<'_>, path: String) -> PyResult<String> {
        let entry = self.call(py, move |c| Box::pin(async move { c.stat(&path).await }))?;
        Ok(serde_json::to_string(&entry).expect("an entry is JSON"))
    }

    /// Makes `path` (and its parents if `parents`); whether it was made.
    #[pyo3(signature = (path, parents=false))]
    fn mkdir(&self, py: Python<'_>, path: String, parents: bool) -> PyResult<bool> {
        self.call(py, move |c| {
            Box::pin(async move {
                if parents {
                    c.mkdir(&path).await
                } else {
                    c.mkdir_one(&path).await
                }
            })
        })
    }

    /// Removes `path` (a directory with what is in it if `recursive`).
    #[pyo3(signature = (path, recursive=false))]
    fn remove(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<bool> {
        self.call(py, move |c| {
            Box::pin(async move {
                if recursive {
                    c.remove(&path).await
                } else {
                    c.remove_file(&path).await
                }
            })
        })
    }

    /// Renames `src` to `dst` (over an existing file only if `force`).
    #[pyo3(signature = (src, dst, force=false))]
    fn rename(&self, py: Python<'_>, src: String, dst: String, force: bool) -> PyResult<()> {
        self.call(py, move |c| Box::pin(async move { c.rename(&src, &dst, force).await }))
    }

    /// Closes the connection (later calls raise `ConnectionError`). Waits
    /// for a call under way in another thread to end.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        });
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
