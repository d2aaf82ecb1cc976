//! `-w HOSTS` on `exec`, `put` and `get`: the fan-out of
//! [`framewire::client::fleet`], with output for people (lines prefixed
//! `host: ` as they come, `-b` gathered and folded, `--json` per host) and
//! exit codes that hide no failure.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use framewire::auth::Key;
use framewire::client::fleet::{self, Event, Events, FleetOptions, Host, HostError};
use framewire::client::hosts;
use framewire::client::tree::{CopyOptions, PlanError, PlanOptions, Summary};
use framewire::client::{ExecOptions, ExitStatus};
use framewire::proto::ExitReason;
use framewire::text::printable;
use framewire::ClientError;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::Settings;
use super::OWN_FAILURE;

/// Which hosts a fan-out runs on: `-w`, `--hostfile`, `-x`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Run on every host of HOSTS at once: a host set (`web[01-20]`,
    /// `10.0.0.[1-9]`, `db[1-3,7]`, `@group` from the config file, comma
    /// lists), or `-` to read hosts from stdin, one a line. Repeatable.
    #[arg(short = 'w', long = "hosts", value_name = "HOSTS")]
    hosts: Vec<String>,
    /// Run on the hosts listed in FILE, one a line (each line may be a
    /// host set; `#` starts a comment). Repeatable.
    #[arg(long, value_name = "FILE")]
    hostfile: Vec<PathBuf>,
    /// Leave out these hosts (a host set). Repeatable.
    #[arg(short = 'x', long = "exclude-hosts", value_name = "HOSTS")]
    exclude_hosts: Vec<String>,
}

impl HostArgs {
    /// Whether the command runs on a host set rather than one host.
    pub fn given(&self) -> bool {
        !self.hosts.is_empty() || !self.hostfile.is_empty()
    }

    /// Refuses `-x` without a host set (it would be silently ignored).
    pub fn check_single(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.exclude_hosts.is_empty(),
            "-x leaves hosts out of a host set: give one with -w or --hostfile"
        );
        Ok(())
    }

    /// The hosts named, in order, each once, without the excluded ones.
    ///
    /// # Errors
    ///
    /// A malformed host set (one error naming it, and the file and line
    /// it came from), an unreadable host file, or no host left.
    pub fn names(&self, settings: &Settings) -> anyhow::Result<Vec<String>> {
        let groups = |name: &str| settings.group(name).map(|m| m.into_iter().map(str::to_owned).collect());
        let mut set = Ordered::default();
        let mut stdin_read = false;
        for expr in &self.hosts {
            if expr != "-" {
                set.extend(hosts::expand(expr, &groups)?);
                continue;
            }
            anyhow::ensure!(!stdin_read, "-w - given twice: stdin is read once");
            stdin_read = true;
            let text = std::io::read_to_string(std::io::stdin()).context("cannot read hosts from stdin")?;
            for (n, line) in listed(&text) {
                set.extend(hosts::expand(line, &groups).with_context(|| format!("stdin, line {n}"))?);
            }
        }
        for file in &self.hostfile {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the host file {}", file.display()))?;
            for (n, line) in listed(&text) {
                set.extend(hosts::expand(line, &groups).with_context(|| format!("{}:{n}", file.display()))?);
            }
        }
        let mut gone = HashSet::new();
        for expr in &self.exclude_hosts {
            gone.extend(hosts::expand(expr, &groups)?);
        }
        let all = set.hosts.len();
        let mut names = set.hosts;
        names.retain(|h| !gone.contains(h));
        anyhow::ensure!(names.len() <= hosts::MAX_HOSTS, "more than {} hosts", hosts::MAX_HOSTS);
        anyhow::ensure!(
            !names.is_empty(),
            "no hosts: {}",
            if all > 0 { "-x left out all of them" } else { "the set is empty" }
        );
        Ok(names)
    }
}

/// Hosts in the order first named, each once.
#[derive(Default)]
struct Ordered {
    hosts: Vec<String>,
    seen: HashSet<String>,
}

impl Ordered {
    fn extend(&mut self, hosts: Vec<String>) {
        for host in hosts {
            if self.seen.insert(host.clone()) {
                self.hosts.push(host);
            }
        }
    }
}

/// The lines of a host list with their numbers: `#` to the end of a line
/// is a comment, blank lines are skipped.
fn listed(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split('#').next().unwrap_or_default().trim()))
        .filter(|(_, line)| !line.is_empty())
}

/// Each host as its config file entry says (an alias carries its own
/// address, port, key, directory and timeout), each key file read once.
/// `timeout` (`--timeout`) is over the config file's.
///
/// # Errors
///
/// A key file that cannot be read, or a timeout that is no duration.
pub fn resolve(
    names: Vec<String>,
    settings: &Settings,
    bwlimit: Option<u64>,
    timeout: Option<f64>,
) -> anyhow::Result<Vec<Host>> {
    let mut keys: HashMap<PathBuf, Option<Key>> = HashMap::new();
    names
        .into_iter()
        .map(|name| {
            let target = settings.resolve(&name);
            let key = match &target.key_file {
                None => None,
                Some((path, _)) => match keys.get(path) {
                    Some(key) => key.clone(),
                    None => {
                        let key = target.key().with_context(|| format!("host {}", printable(&name)))?;
                        keys.insert(path.clone(), key.clone());
                        key
                    }
                },
            };
            let timeout = super::timeout(timeout.or(target.timeout))?;
            let endpoint = target.endpoint_with_key(key, bwlimit);
            Ok(Host::new(name, endpoint).with_dir(target.dir.clone()).with_timeout(timeout))
        })
        .collect()
}

/// Raises the open-file limit to what `fanout` hosts at once need, at
/// `per_host` descriptors each (plus some for the process itself).
///
/// # Errors
///
/// One error saying what `-f` needs and what the limit allows.
pub fn open_files_for(fanout: usize, per_host: usize) -> anyhow::Result<()> {
    let want = (fanout * per_host + 64) as u64;
    let limit = fleet::raise_open_files(want).with_context(|| format!("{fanout} hosts at once"))?;
    tracing::debug!("open-file limit {limit} ({fanout} hosts at once, {per_host} each)");
    Ok(())
}

/// Cancels `cancel` on the first Ctrl-C (what runs is stopped, hosts not
/// yet started are not started); a second ends this process at once.
fn on_interrupt(cancel: CancellationToken, what: &'static str) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // In place before a host is started.
    let mut interrupts = super::Interrupts::from_now();
    tokio::spawn(async move {
        interrupts.next().await;
        flag.store(true, Ordering::SeqCst);
        eprintln!("framewire: interrupted: {what} (Ctrl-C again to quit at once)");
        cancel.cancel();
        interrupts.next().await;
        std::process::exit(130);
    });
    interrupted
}

/// The next event; flushes `out` first whenever none is ready at once, so
/// output is written in batches while events pour in and without delay
/// when they trickle.
async fn next_event<T>(events: &mut Events<T>, out: &mut Out) -> Option<Event<T>> {
    let ready = std::future::poll_fn(|cx| Poll::Ready(events.poll_next(cx))).await;
    match ready {
        Poll::Ready(event) => event,
        Poll::Pending => {
            out.flush();
            events.next().await
        }
    }
}

/// stdout and stderr, buffered; a stdout nobody reads any more stops the
/// fan-out quietly, as a tool killed by SIGPIPE stops.
struct Out {
    stdout: std::io::BufWriter<std::io::Stdout>,
    stderr: std::io::BufWriter<std::io::Stderr>,
    /// The first failed write to stdout.
    failed: Option<std::io::Error>,
}

impl Out {
    fn new() -> Self {
        Out {
            stdout: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            stderr: std::io::BufWriter::with_capacity(16 * 1024, std::io::stderr()),
            failed: None,
        }
    }

    fn out(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.stdout.write_all(bytes) {
                self.failed = Some(e);
            }
        }
    }

    fn err(&mut self, bytes: &[u8]) {
        let _ = self.stderr.write_all(bytes);
    }

    /// `record` as one JSON line on stdout; whether stdout still works.
    fn json(&mut self, record: &impl Serialize) -> anyhow::Result<bool> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.out(&line);
        Ok(self.failed.is_none())
    }

    /// One line of framewire's own on stderr.
    fn note(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.stderr, "framewire: {line}");
    }

    fn flush(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.stdout.flush() {
                self.failed = Some(e);
            }
        }
        let _ = self.stderr.flush();
    }

    /// How a failed stdout ends the process, if it failed.
    fn failure(&mut self) -> Option<ExitCode> {
        let e = self.failed.take()?;
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Some(ExitCode::from(super::READER_GONE));
        }
        self.note(format_args!("error: writing stdout: {e}"));
        self.flush();
        Some(ExitCode::FAILURE)
    }
}

/// How `exec -w` shows what the hosts print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Each line as it comes, `host: ` before it.
    Lines,
    /// Gathered; identical outputs once, under the hosts that gave them.
    Gathered,
    /// One JSON object a host, as it ends.
    Json,
}

/// Output kept of one stream of one host for `-b` and `--json`; what is
/// past it is cut (and said to be).
pub const GATHER_MAX: usize = 4 << 20;

/// What all hosts' gathered output (running hosts', and each distinct
/// result `-b` keeps to the end) may take: past it, output is cut (and
/// said to be), so 1,000 hosts printing megabytes each cannot take the
/// client's memory.
pub const GATHER_TOTAL: usize = 512 << 20;

/// One host's output, gathered.
#[derive(Default)]
struct Gathered {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cut: bool,
}

impl Gathered {
    /// Keeps `line` as far as this stream's cap and `left` (what all
    /// hosts' gathered output may still take) allow.
    fn push(&mut self, stderr: bool, line: &[u8], left: &mut usize) {
        let buf = if stderr { &mut self.stderr } else { &mut self.stdout };
        let room = GATHER_MAX.saturating_sub(buf.len()).min(*left);
        if line.len() > room {
            self.cut = true;
        }
        let kept = line.len().min(room);
        buf.extend_from_slice(&line[..kept]);
        *left -= kept;
    }

    fn len(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }
}

/// How a host's job ended, as summaries sort them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Ok,
    Failed,
    Refused,
    TimedOut,
    Interrupted,
    Unreachable,
    KeyRefused,
    Error,
    NotStarted,
}

impl Class {
    /// Its name in `--json`'s `status`.
    fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Failed => "failed",
            Class::Refused => "refused",
            Class::TimedOut => "timed_out",
            Class::Interrupted => "interrupted",
            Class::Unreachable => "unreachable",
            Class::KeyRefused => "key_refused",
            Class::Error => "error",
            Class::NotStarted => "not_started",
        }
    }

    /// Its name in the closing summary's counts.
    fn words(self) -> &'static str {
        match self {
            Class::TimedOut => "timed out",
            Class::KeyRefused => "key refused",
            Class::NotStarted => "not started",
            Class::Refused => "refused",
            c => c.name(),
        }
    }

    /// What the closing summary calls its hosts.
    fn summary(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Failed => "failed",
            Class::Refused => "files not replaced (--force replaces them)",
            Class::TimedOut => "timed out (process group killed)",
            Class::Interrupted => "interrupted (process group killed)",
            Class::Unreachable => "unreachable",
            Class::KeyRefused => "key refused",
            Class::Error => "error",
            Class::NotStarted => "not started (interrupted)",
        }
    }

    fn of_error(e: &HostError) -> Class {
        match e {
            HostError::Unreachable(_) => Class::Unreachable,
            HostError::KeyRefused(_) => Class::KeyRefused,
            HostError::NotStarted => Class::NotStarted,
            HostError::Cancelled => Class::Interrupted,
            // The connection lost while planning is framewire's failure,
            // not a file's.
            HostError::Plan(PlanError::Source {
                error: ClientError::Wire(_) | ClientError::Closed | ClientError::Unexpected { .. },
                ..
            }) => Class::Error,
            HostError::Plan(_) => Class::Failed,
            _ => Class::Error,
        }
    }

    fn of_status(status: &ExitStatus) -> Class {
        match status.reason {
            ExitReason::Timeout => Class::TimedOut,
            ExitReason::Cancelled => Class::Interrupted,
            _ if status.success() => Class::Ok,
            _ => Class::Failed,
        }
    }

    /// framewire could not do its part on that host (as opposed to a
    /// command or a file that failed there).
    fn own_failure(self) -> bool {
        matches!(self, Class::Unreachable | Class::KeyRefused | Class::Error)
    }
}

/// A host error as one line, with the flag that changes it where one
/// does.
fn error_line(e: &HostError) -> String {
    let text = match e {
        HostError::Unreachable(c) => format!("unreachable: {}", super::explained(c)),
        HostError::KeyRefused(c) => format!("key refused: {}", super::explained(c)),
        HostError::Failed(c) => super::explained(c),
        HostError::Plan(p) => super::plan_words(p, "copy"),
        e => e.to_string(),
    };
    printable(&text).into_owned()
}

/// How a command ended, in words (`exit code 3`, `killed by signal 9`).
fn status_words(status: &ExitStatus) -> String {
    match (status.status, status.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "no exit status".to_owned(),
    }
}

/// Every host's class, for the closing summary and the exit code.
struct Tally {
    hosts: usize,
    classes: HashMap<Class, Vec<String>>,
}

impl Tally {
    fn new(hosts: usize) -> Self {
        Tally { hosts, classes: HashMap::new() }
    }

    fn add(&mut self, class: Class, host: &str) {
        self.classes.entry(class).or_default().push(host.to_owned());
    }

    fn any(&self, class: Class) -> bool {
        self.classes.contains_key(&class)
    }

    /// The closing lines on stderr, when any host did not end well: the
    /// counts, then each class's hosts as a folded set.
    fn summary(&self, out: &mut Out) {
        if self.classes.keys().all(|&c| c == Class::Ok) {
            return;
        }
        let mut classes: Vec<_> = self.classes.iter().collect();
        classes.sort_by_key(|(c, _)| **c);
        let counts: Vec<String> = classes.iter().map(|(c, h)| format!("{} {}", h.len(), c.words())).collect();
        out.note(format_args!("{} hosts: {}", self.hosts, counts.join(", ")));
        for (class, hosts) in classes.into_iter().filter(|(c, _)| **c != Class::Ok) {
            out.note(format_args!("{}: {}", class.summary(), printable(&hosts::fold(hosts))));
        }
    }
}

/// One host's end in `exec -w --json`.
#[derive(Serialize)]
struct ExecRecord<'a> {
    host: &'a str,
    status: &'static str,
    /// The command's exit code, if it exited.
    exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    signal: Option<i32>,
    /// Why there is no exit status (unreachable, key refused, …).
    error: Option<String>,
    /// Its output, UTF-8 (invalid bytes replaced), cut at [`GATHER_MAX`].
    stdout: String,
    stderr: String,
    /// Whether either was cut.
    truncated: bool,
    /// Seconds from its start to its end.
    duration: f64,
}

/// Hosts that gave the same output and ended the same way.
struct Group {
    /// The first host's place in the host list: groups print in list
    /// order.
    first: usize,
    hosts: Vec<String>,
}

/// `exec -w`: `command` on every host, `fanout` at once; the exit code
/// is [`OWN_FAILURE`] if any host could not be reached, authenticated or
/// run on, 130 if interrupted, else the largest remote exit code.
pub async fn exec(
    hosts: Vec<Host>,
    command: String,
    env: Vec<(String, String)>,
    fanout: usize,
    shown: Shown,
) -> anyhow::Result<ExitCode> {
    open_files_for(fanout, 1)?;
    let order: HashMap<String, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name().to_owned(), i)).collect();
    let cancel = CancellationToken::new();
    let interrupted = on_interrupt(cancel.clone(), "killing the remote commands");
    let options = FleetOptions::new(fanout).with_cancel(cancel);
    let mut tally = Tally::new(hosts.len());
    let mut events = fleet::exec(hosts, command, ExecOptions::default(), env, options);
    let mut out = Out::new();
    let mut gathering: HashMap<Arc<str>, Gathered> = HashMap::new();
    let mut left = GATHER_TOTAL;
    let mut groups: HashMap<(Vec<u8>, Vec<u8>, bool, String), Group> = HashMap::new();
    let mut highest = 0;
    while let Some(event) = next_event(&mut events, &mut out).await {
        match event {
            Event::Started { host } if shown != Shown::Lines => {
                gathering.insert(host, Gathered::default());
            }
            Event::Stdout { host, line } if shown != Shown::Lines => {
                gathering.entry(host).or_default().push(false, &line, &mut left);
            }
            Event::Stderr { host, line } if shown != Shown::Lines => {
                gathering.entry(host).or_default().push(true, &line, &mut left);
            }
            Event::Stdout { host, line } => {
                out.out(&prefixed(&host, &line));
                if out.failed.is_some() {
                    events.cancel();
                }
            }
            Event::Stderr { host, line } => out.err(&prefixed(&host, &line)),
            Event::Finished { host, outcome, elapsed } => {
                let gathered = gathering.remove(&host).unwrap_or_default();
                // Given back; a new group below takes it again.
                left += gathered.len();
                let name = printable(&host).into_owned();
                let class = match &outcome {
                    Ok(status) => Class::of_status(status),
                    Err(e) => Class::of_error(e),
                };
                tally.add(class, &host);
                if let Ok(status) = &outcome {
                    // A host that did not end well never counts as 0 (a
                    // timed-out command whose shell had exited 0, say).
                    let code = status.code().clamp(0, 255);
                    highest = highest.max(if class == Class::Ok { code } else { code.max(1) });
                }
                if shown == Shown::Json {
                    let (status, error) = match &outcome {
                        Ok(status) => (Some(*status), None),
                        Err(e) => (None, Some(error_line(e))),
                    };
                    let record = ExecRecord {
                        host: &host,
                        status: class.name(),
                        exit_code: status.and_then(|s| s.status),
                        signal: status.and_then(|s| s.signal),
                        error,
                        stdout: String::from_utf8_lossy(&gathered.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&gathered.stderr).into_owned(),
                        truncated: gathered.cut,
                        duration: elapsed.as_secs_f64(),
                    };
                    if !out.json(&record)? {
                        events.cancel();
                    }
                    continue;
                }
                match &outcome {
                    Ok(_) if class == Class::TimedOut => out
                        .note(format_args!("{name}: timed out after {}; its process group was killed", secs(elapsed))),
                    Ok(status) if class == Class::Failed => out.note(format_args!("{name}: {}", status_words(status))),
                    Ok(_) => {}
                    Err(HostError::NotStarted) => {}
                    Err(e) => out.note(format_args!("{name}: {}", error_line(e))),
                }
                if let (Shown::Gathered, Ok(status)) = (shown, &outcome) {
                    let ending = match class {
                        Class::Ok => String::new(),
                        Class::TimedOut => ", timed out".to_owned(),
                        Class::Interrupted => ", interrupted".to_owned(),
                        _ => format!(", {}", status_words(status)),
                    };
                    let first = order.get(&*host).copied().unwrap_or(usize::MAX);
                    let size = gathered.len();
                    let key = (gathered.stdout, gathered.stderr, gathered.cut, ending);
                    let group = groups.entry(key).or_insert_with(|| {
                        left = left.saturating_sub(size);
                        Group { first, hosts: Vec::new() }
                    });
                    group.first = group.first.min(first);
                    group.hosts.push(host.to_string());
                }
            }
            _ => {}
        }
    }
    if shown == Shown::Gathered {
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by_key(|(_, g)| g.first);
        for ((stdout, stderr, cut, ending), group) in groups {
            let set = printable(&hosts::fold(&group.hosts)).into_owned();
            let n = group.hosts.len();
            let label = format!("{set} ({n} host{}{ending})", if n == 1 { "" } else { "s" });
            // A group without output is not shown: its hosts were named as
            // they ended if they failed, and are in the summary.
            if !stdout.is_empty() {
                out.out(header(&label).as_bytes());
                out.out(&ended(&stdout, cut));
            }
            if !stderr.is_empty() {
                out.err(header(&format!("{label} stderr")).as_bytes());
                out.err(&ended(&stderr, cut));
            }
        }
    }
    tally.summary(&mut out);
    out.flush();
    if let Some(code) = out.failure() {
        return Ok(code);
    }
    let own = tally.classes.keys().any(|c| c.own_failure());
    Ok(match (own, interrupted.load(Ordering::SeqCst) || tally.any(Class::NotStarted)) {
        (true, _) => ExitCode::from(OWN_FAILURE),
        (false, true) => ExitCode::from(130),
        (false, false) => ExitCode::from(highest as u8),
    })
}

/// `host: line`, with a newline at its end whether or not the piece had
/// one (a last line without one, or a piece of a line over
/// [`fleet::MAX_LINE`]).
fn prefixed(host: &str, line: &[u8]) -> Vec<u8> {
    let host = printable(host);
    let mut buf = Vec::with_capacity(host.len() + 2 + line.len() + 1);
    buf.extend_from_slice(host.as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        buf.push(b'\n');
    }
    buf
}

/// The lines `-b` prints above a group's output, as `clush -b` does.
fn header(label: &str) -> String {
    let rule = "-".repeat(label.chars().count().clamp(15, 72));
    format!("{rule}\n{label}\n{rule}\n")
}

/// Gathered output ending in a newline, and a line saying it was cut if
/// it was.
fn ended(bytes: &[u8], cut: bool) -> Vec<u8> {
    let mut buf = bytes.to_vec();
    if !buf.is_empty() && !buf.ends_with(b"\n") {
        buf.push(b'\n');
    }
    if cut {
        buf.extend_from_slice(format!("[framewire: output cut at {}]\n", HumanBytes(GATHER_MAX as u64)).as_bytes());
    }
    buf
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// What `put -w` or `get -w` copies.
pub enum Copying {
    /// Local sources to a destination on every host.
    Put { sources: Vec<PathBuf>, dest: Option<String> },
    /// Remote paths from every host into `dir/HOST/`.
    Get { paths: Vec<String>, dir: PathBuf },
}

/// One host's end in `put -w --json` and `get -w --json`.
#[derive(Serialize)]
struct CopyRecord<'a> {
    host: &'a str,
    status: &'static str,
    /// Why the host's copy did not run (unreachable, key refused, …).
    error: Option<String>,
    files: usize,
    bytes_sent: u64,
    bytes_resumed: u64,
    unchanged: usize,
    deleted: usize,
    /// Paths left out on purpose (special files, symlinks not followed).
    skipped: usize,
    /// Files not replaced: the receiver's differ and are not older.
    refused: Vec<String>,
    failures: Vec<FailureRecord>,
    duration: f64,
}

#[derive(Serialize)]
struct FailureRecord {
    path: String,
    error: String,
}

/// How a fan-out copy looks on stderr and stdout.
pub struct CopyShown {
    pub json: bool,
    pub quiet: bool,
}

/// `put -w` and `get -w`: the copy on every host, `fanout` at once, each
/// verified as a single-host copy is. Exit: [`OWN_FAILURE`] if any host
/// could not be reached, authenticated or copied to; 130 if interrupted;
/// 1 if files failed; [`super::REFUSED`] if files were only not
/// replaced; else 0.
pub async fn copy(
    hosts: Vec<Host>,
    what: Copying,
    plan: PlanOptions,
    copy: CopyOptions,
    fanout: usize,
    shown: CopyShown,
) -> anyhow::Result<ExitCode> {
    // Per host: its connections, a file open on each, and the planning
    // connection.
    open_files_for(fanout, 2 * copy.jobs + 1)?;
    let cancel = CancellationToken::new();
    let interrupted = on_interrupt(cancel.clone(), "stopping the copies (partial files are kept for a resume)");
    let options = FleetOptions::new(fanout).with_cancel(cancel);
    let mut tally = Tally::new(hosts.len());
    let bar = hosts_bar(hosts.len(), shown.quiet || shown.json);
    let mut events = match what {
        Copying::Put { sources, dest } => fleet::put(hosts, sources, dest, plan, copy, options),
        Copying::Get { paths, dir } => fleet::get(hosts, paths, dir, plan, copy, options),
    };
    let mut out = Out::new();
    while let Some(event) = next_event(&mut events, &mut out).await {
        let Event::Finished { host, outcome, elapsed } = event else { continue };
        bar.inc(1);
        let name = printable(&host).into_owned();
        let class = match &outcome {
            Ok(s) if !s.failures.is_empty() => Class::Failed,
            Ok(s) if !s.refused.is_empty() => Class::Refused,
            Ok(_) => Class::Ok,
            Err(e) => Class::of_error(e),
        };
        tally.add(class, &host);
        if shown.json {
            if !out.json(&copy_record(&host, class, &outcome, elapsed))? {
                events.cancel();
            }
            continue;
        }
        let lines = match &outcome {
            Ok(summary) => copy_lines(&name, summary, shown.quiet),
            Err(HostError::NotStarted) => Vec::new(),
            Err(e) => vec![format!("framewire: {name}: {}", error_line(e))],
        };
        for line in lines {
            if bar.is_hidden() {
                out.err(format!("{line}\n").as_bytes());
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish_and_clear();
    tally.summary(&mut out);
    out.flush();
    if let Some(code) = out.failure() {
        return Ok(code);
    }
    let own = tally.classes.keys().any(|c| c.own_failure());
    let stopped = interrupted.load(Ordering::SeqCst) || tally.any(Class::NotStarted) || tally.any(Class::Interrupted);
    Ok(if own {
        ExitCode::from(OWN_FAILURE)
    } else if stopped {
        ExitCode::from(130)
    } else if tally.any(Class::Failed) {
        ExitCode::FAILURE
    } else if tally.any(Class::Refused) {
        ExitCode::from(super::REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

fn copy_record<'a>(
    host: &'a str,
    class: Class,
    outcome: &Result<Summary, HostError>,
    elapsed: Duration,
) -> CopyRecord<'a> {
    let mut record = CopyRecord {
        host,
        status: class.name(),
        error: None,
        files: 0,
        bytes_sent: 0,
        bytes_resumed: 0,
        unchanged: 0,
        deleted: 0,
        skipped: 0,
        refused: Vec::new(),
        failures: Vec::new(),
        duration: elapsed.as_secs_f64(),
    };
    match outcome {
        Ok(s) => {
            record.files = s.files;
            record.bytes_sent = s.sent;
            record.bytes_resumed = s.resumed;
            record.unchanged = s.unchanged;
            record.deleted = s.deleted;
            record.skipped = s.skipped;
            record.refused = s.refused.clone();
            record.failures = s
                .failures
                .iter()
                .map(|f| FailureRecord { path: f.path.clone(), error: super::explained(&f.error) })
                .collect();
        }
        Err(e) => record.error = Some(error_line(e)),
    }
    record
}

/// What a host's copy did, in lines for stderr: one summary (unless
/// quiet), then each failure.
fn copy_lines(name: &str, s: &Summary, quiet: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if !quiet {
        let mut parts = vec![format!("{} file(s), {} sent", s.files, HumanBytes(s.sent))];
        if s.resumed > 0 {
            parts.push(format!("{} resumed", HumanBytes(s.resumed)));
        }
        if s.unchanged > 0 {
            parts.push(format!("{} unchanged", s.unchanged));
        }
        if s.deleted > 0 {
            parts.push(format!("{} deleted", s.deleted));
        }
        if s.skipped > 0 {
            parts.push(format!("{} skipped", s.skipped));
        }
        let verified = if s.files > 0 { ", checksums verified" } else { "" };
        lines.push(format!("{name}: {} in {}{verified}", parts.join(", "), secs(s.elapsed)));
    }
    for path in &s.replaced {
        let path = path.display().to_string();
        lines.push(format!(
            "framewire: {name}: replaced {} with a directory (links below a destination are never followed)",
            printable(&path)
        ));
    }
    for f in &s.failures {
        lines.push(format!(
            "framewire: {name}: error: {}",
            printable(&format!("{}: {}", f.path, super::explained(&f.error)))
        ));
    }
    if !s.refused.is_empty() {
        lines.push(format!(
            "framewire: {name}: {} file(s) not replaced: the receiver's differ and are not older (--update keeps them; --force replaces them)",
            s.refused.len()
        ));
    }
    lines
}

/// A bar of hosts done, on a terminal's stderr only.
fn hosts_bar(hosts: usize, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(hosts as u64), super::draw_target(quiet));
    bar.set_style(
        ProgressStyle::with_template("hosts [{wide_bar}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// The paths of `put -w` (sources, then the destination if more than
/// one is given) or `get -w` (remote paths, then the local directory).
pub fn split_last(mut all: Vec<String>) -> (Vec<String>, Option<String>) {
    let last = if all.len() > 1 { all.pop() } else { None };
    (all, last)
}

#[cfg(test)]
mod tests {
    use super::{header, listed, prefixed, split_last, Class};
    use framewire::client::fleet::HostError;
    use framewire::client::tree::PlanError;
    use framewire::ClientError;

    #[test]
    fn a_connection_lost_while_planning_is_framewires_failure() {
        let plan = |error| HostError::Plan(PlanError::Source { path: "x".into(), error });
        assert_eq!(Class::of_error(&plan(ClientError::Closed)), Class::Error);
        assert!(Class::of_error(&plan(ClientError::Closed)).own_failure(), "exits 255");
        assert_eq!(Class::of_error(&plan(ClientError::LocalExists("x".into()))), Class::Failed);
        assert_eq!(Class::of_error(&HostError::Plan(PlanError::IsADirectory("d".into()))), Class::Failed);
        assert_eq!(Class::of_error(&HostError::NotStarted), Class::NotStarted);
    }

    #[test]
    fn host_lists_skip_comments_and_blank_lines() {
        let text = "web01\n# all of db\n  db[1-3]  # three\n\n\tweb02\n#\n";
        let got: Vec<_> = listed(text).collect();
        assert_eq!(got, vec![(1, "web01"), (3, "db[1-3]"), (5, "web02")]);
    }

    #[test]
    fn lines_get_their_host_and_one_newline() {
        assert_eq!(prefixed("web01", b"up 3 days\n"), b"web01: up 3 days\n");
        assert_eq!(prefixed("web01", b"no newline"), b"web01: no newline\n");
        assert_eq!(prefixed("we\x1bb", b"x\n"), b"we\\x1bb: x\n");
    }

    #[test]
    fn headers_frame_the_label() {
        assert_eq!(
            header("web[01-05,07] (6 hosts)"),
            "-----------------------\nweb[01-05,07] (6 hosts)\n-----------------------\n"
        );
        assert_eq!(header("a (1 host)"), "---------------\na (1 host)\n---------------\n");
    }

    #[test]
    fn the_last_path_is_the_destination_when_there_are_several() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(split_last(s(&["a"])), (s(&["a"]), None));
        assert_eq!(split_last(s(&["a", "b", "c/"])), (s(&["a", "b"]), Some("c/".to_owned())));
    }
}
