//! Fan-out: one job on many hosts at once, in a sliding window, each
//! host's events streamed back as they happen (what `framewire exec -w`,
//! `put -w` and `get -w` run).
//!
//! [`each`] runs any job: at most [`FleetOptions::fanout`] hosts at once,
//! the next host starting as soon as any running one ends. [`exec`] runs
//! a command on every host, its output coming back a line at a time;
//! [`put`] and [`get`] copy files and trees, each host's copy planned,
//! resumed and verified as a single-host copy is.
//!
//! ```no_run
//! # async fn demo() {
//! use framewire::client::fleet::{self, Event, FleetOptions, Host};
//! use framewire::client::tree::Endpoint;
//! use framewire::client::ExecOptions;
//!
//! let hosts = ["127.0.0.2:9909", "127.0.0.3:9909"].map(|a| Host::new(a, Endpoint::new(a, None))).to_vec();
//! let mut events = fleet::exec(hosts, "uname -n", ExecOptions::default(), Vec::new(), FleetOptions::default());
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Stdout { host, line } => print!("{host}: {}", String::from_utf8_lossy(&line)),
//!         Event::Finished { host, outcome: Err(e), .. } => eprintln!("{host}: {e}"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::{CancellationToken, PollSender};

use super::error::ClientError;
use super::exec::{ExecIo, ExecOptions, ExitStatus};
use super::tree::{self, CopyOptions, Endpoint, PlanError, PlanOptions, Quiet, SharedReads, Summary};
use super::Client;
use crate::services::root::Root;
use crate::text::printable;

/// Hosts at once unless told otherwise: enough that 1,000 hosts take
/// seconds, few enough for the open-file limit of most systems.
pub const DEFAULT_FANOUT: usize = 64;

/// A line longer than this is passed on in pieces of this size (so one
/// host printing without newlines cannot fill memory).
pub const MAX_LINE: usize = 64 * 1024;

/// Events waiting for the consumer, of all hosts together; a consumer
/// that falls behind slows the hosts down rather than filling memory.
const QUEUE: usize = 1024;

/// One host of a fan-out: the name it goes by in output, and where its
/// connections go.
#[derive(Debug, Clone)]
pub struct Host {
    name: Arc<str>,
    endpoint: Endpoint,
    dir: Option<Arc<str>>,
    timeout: Option<Duration>,
}

impl Host {
    /// The host `name` (as events name it), reached at `endpoint`.
    pub fn new(name: impl Into<Arc<str>>, endpoint: Endpoint) -> Self {
        Host { name: name.into(), endpoint, dir: None, timeout: None }
    }

    /// Its copies' connections compressed with zstd at `level` (`-z`).
    pub fn compress(&mut self, level: i32) {
        self.endpoint = self.endpoint.clone().with_compress(Some(level));
    }

    /// The zstd level its copies ask for (the config file's
    /// `compress-level` where `compress = true`), if any.
    pub fn compress_level(&self) -> Option<i32> {
        self.endpoint.compress_level()
    }

    /// The same, with relative remote paths of [`put`] and [`get`] taken
    /// from `dir` on this host (see [`remote_path`]), as a config file
    /// alias's `dir` does.
    pub fn with_dir(mut self, dir: Option<String>) -> Self {
        self.dir = dir.filter(|d| !d.is_empty()).map(Arc::from);
        self
    }

    /// The same, with this host's commands killed after `timeout`, over
    /// the fan-out's [`ExecOptions::timeout`] (`None`: that one).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its connections go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// How a fan-out runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// Hosts at once (at least 1).
    pub fanout: usize,
    /// Cancelling it stops the fan-out: commands running are cancelled
    /// (their process groups killed), hosts not yet started end with
    /// [`HostError::NotStarted`].
    pub cancel: CancellationToken,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions { fanout: DEFAULT_FANOUT, cancel: CancellationToken::new() }
    }
}

impl FleetOptions {
    /// `fanout` hosts at once.
    pub fn new(fanout: usize) -> Self {
        FleetOptions { fanout, ..FleetOptions::default() }
    }

    /// The same, stopped by `cancel`.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }
}

/// What happens on one host, in order: `Started`, any output, then
/// `Finished` (always, exactly once per host, whatever happened).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<T> {
    /// The host's turn came: its job starts (it connects first).
    Started {
        /// The host.
        host: Arc<str>,
    },
    /// A line of the command's stdout, with its `\n` (the last one may
    /// lack it; a line over [`MAX_LINE`] comes in pieces).
    Stdout {
        /// The host.
        host: Arc<str>,
        /// The bytes.
        line: Bytes,
    },
    /// A line of its stderr, as [`Event::Stdout`].
    Stderr {
        /// The host.
        host: Arc<str>,
        /// The bytes.
        line: Bytes,
    },
    /// The host's job ended.
    Finished {
        /// The host.
        host: Arc<str>,
        /// What it gave, or why it gave nothing.
        outcome: Result<T, HostError>,
        /// From its start to its end.
        elapsed: Duration,
    },
}

/// Why a host's job gave no result, sorted the way a summary reports them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No connection, or no framewire answer within the connect timeout.
    #[error("unreachable: {0}")]
    Unreachable(ClientError),
    /// The keys do not match (either side's proof failed), or one side
    /// has a key and the other none.
    #[error("key refused: {0}")]
    KeyRefused(ClientError),
    /// Connected, then failed (the server refused, the connection was
    /// lost).
    #[error("{0}")]
    Failed(ClientError),
    /// The copy could not be planned.
    #[error("{0}")]
    Plan(PlanError),
    /// The fan-out was cancelled before this host's turn.
    #[error("not started: cancelled")]
    NotStarted,
    /// The fan-out was cancelled while this host's job ran (a copy's
    /// partial files are kept for a resume).
    #[error("cancelled")]
    Cancelled,
    /// The host's task panicked (a bug).
    #[error("internal error: {0}")]
    Crashed(String),
}

impl HostError {
    /// A failure to connect, sorted: key trouble apart from the rest.
    pub fn connecting(e: ClientError) -> Self {
        match e {
            ClientError::AuthFailed
            | ClientError::ServerAuthFailed
            | ClientError::AuthRequired
            | ClientError::AuthUnavailable => HostError::KeyRefused(e),
            e => HostError::Unreachable(e),
        }
    }

    /// The client error behind it, if one is.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            HostError::Unreachable(e) | HostError::KeyRefused(e) | HostError::Failed(e) => Some(e),
            HostError::Plan(PlanError::Source { error, .. }) => Some(error),
            _ => None,
        }
    }
}

/// A host's job as it runs: its name, its endpoint, where its output goes
/// and what cancels it.
pub struct HostRun<T> {
    host: Arc<str>,
    endpoint: Endpoint,
    dir: Option<Arc<str>>,
    timeout: Option<Duration>,
    events: mpsc::Sender<Event<T>>,
    cancel: CancellationToken,
}

impl<T: Send + 'static> HostRun<T> {
    /// The host's name.
    pub fn name(&self) -> &str {
        &self.host
    }

    /// Where its connections go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A remote path as this host's server takes it: relative to the
    /// host's directory if it has one ([`remote_path`]).
    pub fn remote_path(&self, path: &str) -> String {
        remote_path(self.dir.as_deref(), path)
    }

    /// Opens a connection to the host, its failure sorted
    /// ([`HostError::connecting`]).
    ///
    /// # Errors
    ///
    /// [`HostError::Unreachable`] or [`HostError::KeyRefused`].
    pub async fn connect(&self) -> Result<Client, HostError> {
        self.endpoint.connect().await.map_err(HostError::connecting)
    }

    /// Cancelled when the fan-out is.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// A sink whose bytes become [`Event::Stdout`] lines.
    pub fn stdout(&self) -> Lines<T> {
        Lines::new(self.host.clone(), Stream::Stdout, self.events.clone())
    }

    /// A sink whose bytes become [`Event::Stderr`] lines.
    pub fn stderr(&self) -> Lines<T> {
        Lines::new(self.host.clone(), Stream::Stderr, self.events.clone())
    }
}

/// The events of a fan-out, as they happen.
#[derive(Debug)]
pub struct Events<T> {
    rx: mpsc::Receiver<Event<T>>,
    cancel: CancellationToken,
}

impl<T> Events<T> {
    /// The next event; `None` once every host has finished.
    pub async fn next(&mut self) -> Option<Event<T>> {
        self.rx.recv().await
    }

    /// The next event if one is ready, as a `Stream`'s `poll_next`:
    /// `Ready(None)` once every host has finished.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event<T>>> {
        self.rx.poll_recv(cx)
    }

    /// Stops the fan-out (see [`FleetOptions::cancel`]); the events of
    /// its end still come.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl<T> Drop for Events<T> {
    /// Nobody listens any more: stop.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs `job` on every host, at most `options.fanout` at once, each
/// host's turn coming as soon as an earlier one ends. Must be called
/// within a tokio runtime.
pub fn each<T, F, Fut>(hosts: Vec<Host>, options: FleetOptions, job: F) -> Events<T>
where
    T: Send + 'static,
    F: Fn(HostRun<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HostError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let cancel = options.cancel.clone();
    let job = Arc::new(job);
    tokio::spawn(drive(hosts, options, tx, job));
    Events { rx, cancel }
}

async fn drive<T, F, Fut>(hosts: Vec<Host>, options: FleetOptions, tx: mpsc::Sender<Event<T>>, job: Arc<F>)
where
    T: Send + 'static,
    F: Fn(HostRun<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HostError>> + Send + 'static,
{
    let FleetOptions { fanout, cancel } = options;
    let window = Arc::new(Semaphore::new(fanout.max(1)));
    let mut running = tokio::task::JoinSet::new();
    let mut hosts = hosts.into_iter();
    for host in hosts.by_ref() {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            permit = window.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            let _ = tx.send(not_started(host)).await;
            break;
        };
        // Ended hosts' tasks, out of the set: it holds the window, not
        // every host seen.
        while running.try_join_next().is_some() {}
        let Host { name, endpoint, dir, timeout } = host;
        let run = HostRun { host: name.clone(), endpoint, dir, timeout, events: tx.clone(), cancel: cancel.clone() };
        let (tx, job) = (tx.clone(), job.clone());
        running.spawn(async move {
            let started = Instant::now();
            let _ = tx.send(Event::Started { host: name.clone() }).await;
            // Its own task, so that a panic is this host's failure, not
            // a host that never finishes.
            let outcome = match tokio::spawn(job(run)).await {
                Ok(outcome) => outcome,
                Err(e) => Err(HostError::Crashed(e.to_string())),
            };
            let _ = tx.send(Event::Finished { host: name, outcome, elapsed: started.elapsed() }).await;
            drop(permit);
        });
    }
    for host in hosts {
        let _ = tx.send(not_started(host)).await;
    }
    while running.join_next().await.is_some() {}
}

fn not_started<T>(host: Host) -> Event<T> {
    Event::Finished { host: host.name, outcome: Err(HostError::NotStarted), elapsed: Duration::ZERO }
}

/// Runs `command` (a shell command line) on every host, with `env` sent
/// first if any (names a server refuses are said in a line on that
/// host's stderr, `framewire: the server refused to set NAME`), stdin
/// closed; its output comes as line events, its end
/// as the host's [`ExitStatus`]. The host's timeout ([`Host::with_timeout`])
/// or else `exec.timeout` kills each host's process group once past it;
/// cancelling kills those running.
pub fn exec(
    hosts: Vec<Host>,
    command: impl Into<String>,
    exec: ExecOptions,
    env: Vec<(String, String)>,
    options: FleetOptions,
) -> Events<ExitStatus> {
    let command: Arc<str> = command.into().into();
    let env = Arc::new(env);
    each(hosts, options, move |run| {
        let (command, exec, env) = (command.clone(), exec.clone(), env.clone());
        async move {
            let mut client = unless_cancelled(run.cancel(), run.connect()).await?;
            let (mut out, mut err) = (run.stdout(), run.stderr());
            if !env.is_empty() {
                let answer =
                    unless_cancelled(run.cancel(), async { client.set_env(&env).await.map_err(HostError::Failed) })
                        .await?;
                if !answer.refused.is_empty() {
                    // Said on the host's stderr, where its user looks.
                    let names: Vec<String> = answer.refused.iter().map(|n| printable(n).into_owned()).collect();
                    // The server's configuration names what it accepts; the
                    // library names no flag of it.
                    let note = format!(
                        "framewire: the server refused to set {} (not among the names it accepts)\n",
                        names.join(", ")
                    );
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut err, note.as_bytes()).await;
                }
            }
            let mut cancel = std::pin::pin!(run.cancel().clone().cancelled_owned());
            let io =
                ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, cancel: Some(cancel.as_mut()), resize: None };
            let mut exec = exec;
            exec.timeout = run.timeout.or(exec.timeout);
            let status = client.exec(&command, &exec, io).await.map_err(HostError::Failed)?;
            out.finish().await;
            err.finish().await;
            Ok(status)
        }
    })
}

/// The most memory [`put`] holds of local files for the hosts of its
/// window to share (a ring of up to 64 MiB per file being sent).
pub const SHARED_READS: usize = 256 << 20;

/// Copies local `sources` to `dest` on every host (as [`tree::plan_put`]
/// and [`tree::run`] do for one: skip-unchanged, resumed, each file
/// verified by BLAKE3); each host's result is its copy's [`Summary`].
/// The hosts sending a file at once share its reads
/// ([`Endpoint::with_shared_reads`]): each chunk of it is read once for
/// the window, while hosts keep within 64 MiB of each other (one much
/// slower, or stuck, is let go after two seconds and reads alone).
/// `dest` is taken from each host's directory ([`Host::with_dir`]); none
/// is that directory, or the served root.
pub fn put(
    hosts: Vec<Host>,
    sources: Vec<PathBuf>,
    dest: Option<String>,
    plan: PlanOptions,
    copy: CopyOptions,
    options: FleetOptions,
) -> Events<Summary> {
    let shared = Arc::new((sources, dest, plan, copy));
    // The copies of the window read each local file once between them.
    let reads = SharedReads::new(SHARED_READS);
    let hosts = hosts
        .into_iter()
        .map(|host| Host { endpoint: host.endpoint.with_shared_reads(reads.clone()), ..host })
        .collect();
    each(hosts, options, move |run| {
        let shared = shared.clone();
        async move {
            let (sources, dest, plan, copy) = &*shared;
            let dest = put_destination(run.dir.as_deref(), dest.as_deref());
            let plan = unless_cancelled(run.cancel(), async {
                let mut client = run.connect().await?;
                compact_with_delta(&mut client, copy);
                tree::plan_put(&mut client, sources, dest.as_deref(), plan.clone()).await.map_err(HostError::Plan)
            })
            .await?;
            cancellable(run.cancel(), tree::run(run.endpoint(), plan, copy, Arc::new(Quiet))).await
        }
    })
}

/// `step` (a connection, a plan), unless `cancel` comes first.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    step: impl Future<Output = Result<T, HostError>>,
) -> Result<T, HostError> {
    tokio::select! {
        done = step => done,
        () = cancel.cancelled() => Err(HostError::Cancelled),
    }
}

/// `copy`, unless `cancel` comes first: then the copy is dropped where it
/// is (its partial files kept for a resume).
async fn cancellable(cancel: &CancellationToken, copy: impl Future<Output = Summary>) -> Result<Summary, HostError> {
    tokio::select! {
        summary = copy => Ok(summary),
        () = cancel.cancelled() => Err(HostError::Cancelled),
    }
}

/// `--delta` treats a host as over a slow link: its listings come
/// compact too, as the CLI's single-host copies ask them.
fn compact_with_delta(client: &mut crate::Client, copy: &CopyOptions) {
    if copy.delta == super::DeltaMode::Always {
        client.compact_listings(Some(true));
    }
}

/// Copies remote `paths` from every host into `dir/HOST/` (the host's
/// name as the directory's; see [`host_dir`]), as [`put`] does the other
/// way; relative `paths` start in each host's directory.
pub fn get(
    hosts: Vec<Host>,
    paths: Vec<String>,
    dir: PathBuf,
    plan: PlanOptions,
    copy: CopyOptions,
    options: FleetOptions,
) -> Events<Summary> {
    let shared = Arc::new((paths, dir, plan, copy));
    each(hosts, options, move |run| {
        let shared = shared.clone();
        async move {
            let (paths, dir, plan, copy) = &*shared;
            let host = host_dir(run.name());
            let dest = dir.join(&host);
            // DIR is the destination the user named (followed, as cp
            // follows it); the host's directory is made beneath it by
            // descriptor, a symlink planted there replaced, never followed.
            let failed = |source| HostError::Failed(ClientError::Local { path: dest.clone(), source });
            std::fs::create_dir_all(dir).map_err(failed)?;
            let name = host.to_str().unwrap_or_default();
            let mut replaced = Vec::new();
            Root::open(dir)
                .and_then(|root| root.without_links().make_dirs_replacing(&[name], false, &mut replaced))
                .map_err(failed)?;
            let paths: Vec<String> = paths.iter().map(|p| run.remote_path(p)).collect();
            let mut plan = unless_cancelled(run.cancel(), async {
                let mut client = run.connect().await?;
                compact_with_delta(&mut client, copy);
                tree::plan_get(&mut client, &paths, &dest, plan.clone()).await.map_err(HostError::Plan)
            })
            .await?;
            // Everything the copy writes, the host's directory included,
            // is reached from DIR's descriptor.
            plan.dest_dir = Some(dir.clone());
            let mut summary = cancellable(run.cancel(), tree::run(run.endpoint(), plan, copy, Arc::new(Quiet))).await?;
            summary.replaced.splice(0..0, replaced.iter().map(|r| dir.join(crate::services::names::path(r))));
            Ok(summary)
        }
    })
}

/// A remote path as a server takes it, for a host whose relative paths
/// start in `dir`: relative ones are joined to it, a leading `/` means
/// from the served root; without a directory, the path as given (the
/// server refuses absolute ones).
pub fn remote_path(dir: Option<&str>, path: &str) -> String {
    let Some(dir) = dir.filter(|d| !d.is_empty()) else { return path.to_owned() };
    if let Some(from_root) = path.strip_prefix('/') {
        return from_root.trim_start_matches('/').to_owned();
    }
    match path {
        "" | "." => dir.to_owned(),
        _ => format!("{dir}/{path}"),
    }
}

/// Where a `put` to a host goes: `dest` as [`remote_path`] gives it;
/// with no destination (or `.`), the alias's `dir` *as a directory*
/// (`dir/`: the files go into it, created if missing), never a file of
/// that name; `None` for the served root.
pub fn put_destination(dir: Option<&str>, dest: Option<&str>) -> Option<String> {
    let dest = dest.unwrap_or("");
    let path = remote_path(dir, dest);
    match (dest, path.is_empty()) {
        (_, true) => None,
        ("" | ".", false) => Some(format!("{}/", path.trim_end_matches('/'))),
        _ => Some(path),
    }
}

/// The directory `get` gives a host's files: its name, with any `/`
/// (which no host name has, but an alias's could not either) and a
/// leading `.` replaced by `_`, so it is always one plain component.
pub fn host_dir(name: &str) -> PathBuf {
    let mut dir: String = name.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    if dir.is_empty() || dir.starts_with('.') {
        dir.insert(0, '_');
    }
    Path::new(&dir).to_owned()
}

/// Raises this process's soft open-file limit to `want` if it is lower
/// (up to the hard limit), as a fan-out of many hosts needs. Returns the
/// limit now in force.
///
/// # Errors
///
/// The hard limit is below `want` (the message says what to change), or
/// the limit cannot be set.
pub fn raise_open_files(want: u64) -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let current = current.unwrap_or(u64::MAX);
    if current >= want {
        return Ok(current);
    }
    let hard = maximum.unwrap_or(u64::MAX);
    if hard < want {
        return Err(std::io::Error::other(format!(
            "needs {want} open files, and this process may have at most {hard} (the hard limit of `ulimit -n`): \
             lower the fan-out, or raise the hard limit"
        )));
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum })?;
    Ok(want)
}

/// Which of a command's streams a [`Lines`] sink carries.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// An `AsyncWrite` that turns what is written into line events of one
/// host and stream. Holds at most one partial line ([`MAX_LINE`]) and one
/// event waiting for room in the queue.
pub struct Lines<T> {
    host: Arc<str>,
    stream: Stream,
    tx: PollSender<Event<T>>,
    partial: BytesMut,
    /// Lines cut from `partial`, not yet in the queue.
    cut: std::collections::VecDeque<Bytes>,
}

impl<T: Send + 'static> Lines<T> {
    fn new(host: Arc<str>, stream: Stream, tx: mpsc::Sender<Event<T>>) -> Self {
        Lines { host, stream, tx: PollSender::new(tx), partial: BytesMut::new(), cut: Default::default() }
    }

    /// Passes on what is left, a last line without its `\n`.
    pub async fn finish(&mut self) {
        if !self.partial.is_empty() {
            let rest = self.partial.split().freeze();
            self.cut.push_back(rest);
        }
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
    }

    fn event(&self, line: Bytes) -> Event<T> {
        let host = self.host.clone();
        match self.stream {
            Stream::Stdout => Event::Stdout { host, line },
            Stream::Stderr => Event::Stderr { host, line },
        }
    }

    /// Queues the lines cut so far; pending while the queue is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.cut.is_empty() {
            if ready!(self.tx.poll_reserve(cx)).is_err() {
                // Nobody listens: the output goes nowhere, as to /dev/null.
                self.cut.clear();
                break;
            }
            let line = self.cut.pop_front().expect("not empty");
            let event = self.event(line);
            let _ = self.tx.send_item(event);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Send + 'static> AsyncWrite for Lines<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // Take up to the end of the first line, or what fits.
        let room = MAX_LINE - this.partial.len();
        let take = match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => i + 1,
            _ => buf.len().min(room),
        };
        this.partial.extend_from_slice(&buf[..take]);
        if this.partial.ends_with(b"\n") || this.partial.len() == MAX_LINE {
            let line = this.partial.split().freeze();
            this.cut.push_back(line);
            // Queued now if there is room, else on the next call.
            let _ = this.poll_drain(cx);
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }
}
