//! `framewire._native`: the Rust client, for the `framewire` Python
//! package. A thin layer: each call runs the library's async client on one
//! runtime shared by the process, with the GIL released while it waits
//! (`Python::detach`), and turns its errors into the exceptions of
//! `framewire._errors`. The Python-facing API (`framewire.Client`) is in
//! `framewire/client.py`.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use framewire::client::TransferOptions;
use framewire::{Client as Inner, ClientError, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The runtime every client of the process runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("framewire")
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// The `framewire._errors` class an error is raised as.
fn class_of(e: &ClientError) -> &'static str {
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
        ClientError::Connect { .. } | ClientError::Closed | ClientError::Wire(_) => "ConnectionError",
        ClientError::ConnectTimeout { .. } => "TimeoutError",
        _ => "Error",
    }
}

/// `e` as the Python exception of its class, its message the one line the
/// CLI prints.
fn raise(e: ClientError) -> PyErr {
    raise_as(class_of(&e), e.to_string(), e.code().map(|c| c.to_string()))
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
#[pyclass(module = "framewire._native")]
struct Client {
    inner: Mutex<Option<Inner>>,
}

impl Client {
    /// Runs `f` on the connection with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'c> FnOnce(
                &'c mut Inner,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ClientError>> + Send + 'c>>
            + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.inner.lock().map_err(|_| ClientError::Closed)?;
            let client = guard.as_mut().ok_or(ClientError::Closed)?;
            runtime().block_on(f(client))
        })
        .map_err(raise)
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (addr, key_file=None))]
    fn new(py: Python<'_>, addr: String, key_file: Option<PathBuf>) -> PyResult<Self> {
        let connected = py.detach(|| {
            let key = match key_file {
                Some(path) => Some(framewire::auth::Key::from_file(&path).map_err(|e| ClientError::Local {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?),
                None => None,
            };
            runtime().block_on(Inner::connect_with(&addr, key.as_ref()))
        });
        let inner = connected.map_err(raise)?;
        Ok(Client { inner: Mutex::new(Some(inner)) })
    }

    /// Runs `command`; returns (exit code, stdout, stderr, timed out).
    #[pyo3(signature = (command, timeout=None, env=None, stdin=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<f64>,
        env: Option<Vec<(String, String)>>,
        stdin: Option<Vec<u8>>,
    ) -> PyResult<(i32, Bound<'py, PyBytes>, Bound<'py, PyBytes>, bool)> {
        let timeout = timeout.map(Duration::from_secs_f64);
        let ran = self.with(py, move |c| {
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
        })?;
        let output = match ran {
            Ok(output) => output,
            Err(refused) => {
                // The names it took would reach the next command: the
                // connection is not used again.
                self.close(py);
                let message = format!(
                    "the server does not accept the variables {} (its `serve --accept-env` allows which): \
                     the command was not run, and this connection is closed",
                    refused.join(", ")
                );
                return Err(raise_as("PermissionDenied", message, Some("permission_denied".to_owned())));
            }
        };
        let timed_out = output.status.reason == framewire::proto::ExitReason::Timeout;
        Ok((output.status.code(), PyBytes::new(py, &output.stdout), PyBytes::new(py, &output.stderr), timed_out))
    }

    /// Uploads `local` to `remote`; returns (size, resumed, blake3).
    #[pyo3(signature = (local, remote, force=false))]
    fn put(&self, py: Python<'_>, local: PathBuf, remote: String, force: bool) -> PyResult<(u64, u64, String)> {
        let t = self.with(py, move |c| {
            Box::pin(async move { c.put(&local, &remote, &TransferOptions::force(force), &mut |_| {}).await })
        })?;
        Ok((t.size, t.resumed, t.blake3))
    }

    /// Downloads `remote` to `local`; returns (size, resumed, blake3).
    #[pyo3(signature = (remote, local, force=false))]
    fn get(&self, py: Python<'_>, remote: String, local: PathBuf, force: bool) -> PyResult<(u64, u64, String)> {
        let t = self.with(py, move |c| {
            Box::pin(async move { c.get(&remote, &local, &TransferOptions::force(force), &mut |_| {}).await })
        })?;
        Ok((t.size, t.resumed, t.blake3))
    }

    /// The entries of `path` as JSON (PROTOCOL.md §4.3).
    #[pyo3(signature = (path, recursive=false))]
    fn ls(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<String> {
        let entries = self.with(py, move |c| Box::pin(async move { c.list(&path, recursive).await }))?;
        Ok(serde_json::to_string(&entries).expect("entries are JSON"))
    }

    /// `path`'s entry as JSON.
    fn stat(&self, py: Python<'_>, path: String) -> PyResult<String> {
        let entry = self.with(py, move |c| Box::pin(async move { c.stat(&path).await }))?;
        Ok(serde_json::to_string(&entry).expect("an entry is JSON"))
    }

    /// Makes `path` (and its parents if `parents`); whether it was made.
    #[pyo3(signature = (path, parents=true))]
    fn mkdir(&self, py: Python<'_>, path: String, parents: bool) -> PyResult<bool> {
        self.with(py, move |c| {
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
        self.with(py, move |c| {
            Box::pin(async move {
                if recursive {
                    c.remove(&path).await
                } else {
                    c.remove_file(&path).await
                }
            })
        })
    }

    /// Renames `from` to `to` (over an existing file only if `force`).
    #[pyo3(signature = (src, dst, force=false))]
    fn rename(&self, py: Python<'_>, src: String, dst: String, force: bool) -> PyResult<()> {
        self.with(py, move |c| Box::pin(async move { c.rename(&src, &dst, force).await }))
    }

    /// Closes the connection (later calls raise `ConnectionError`).
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if let Ok(mut guard) = self.inner.lock() {
                guard.take();
            }
        });
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
