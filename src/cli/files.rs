//! `framewire ls`, `get` and `put`: listings, and transfers of files and
//! trees over several connections with progress bars.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use framewire::auth::Key;
use framewire::client::{Progress, Transfer, TransferOptions};
use framewire::proto::{Entry, Kind};
use framewire::text::printable;
use framewire::{Client, ClientError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Server address, `host[:port]` (default port 9909).
    addr: String,
    /// Path relative to the served root (default: the root).
    path: Option<String>,
    /// Every file below PATH, with paths relative to it.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// One JSON array of {name, size, kind, mtime, mode}, for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn ls(args: LsArgs, key: Option<Key>) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect_with(&args.addr, key.as_ref()).await?;
    let path = args.path.unwrap_or_default();
    let entries = client.list(&path, args.recursive).await?;
    if args.json {
        say!("{}", serde_json::to_string(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = entries.iter().map(|e| e.size.to_string().len()).max().unwrap_or(1);
    for e in &entries {
        let kind = match e.kind {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            _ => '?',
        };
        let slash = if e.kind == Kind::Dir { "/" } else { "" };
        say!("{kind} {:>width$}  {}  {}{slash}", e.size, utc(e.mtime), printable(&e.name));
    }
    Ok(ExitCode::SUCCESS)
}

/// `YYYY-MM-DD HH:MM` in UTC for seconds since the epoch (the civil-from-days
/// algorithm; a date crate would be all for this one line).
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem / 60 % 60)
}

/// Options shared by `get` and `put`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Copy directory trees.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Replace existing files.
    #[arg(short = 'f', long)]
    force: bool,
    /// Transfer up to N files at once, each over its own connection.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// No progress bars and no summary.
    #[arg(short = 'q', long)]
    quiet: bool,
}

impl TransferArgs {
    /// Recursive, forced, with progress bars: what the demo uses.
    pub fn tree() -> Self {
        TransferArgs { recursive: true, force: true, jobs: 4, quiet: false }
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Server address, `host[:port]` (default port 9909).
    addr: String,
    /// REMOTE... [LOCAL|-]: remote paths, then where to put them (default:
    /// the current directory; `-` writes one file to stdout). Like `cp`: with
    /// several sources, or if LOCAL is a directory, each lands inside it.
    #[arg(required = true, num_args = 1.., value_name = "PATHS")]
    paths: Vec<String>,
    #[command(flatten)]
    opts: TransferArgs,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Server address, `host[:port]` (default port 9909).
    addr: String,
    /// LOCAL... [REMOTE]: local files (or trees with -r), then where to put
    /// them on the server (default: the root). Like `cp`: with several
    /// sources, or if REMOTE is a directory, each lands inside it.
    #[arg(required = true, num_args = 1.., value_name = "PATHS")]
    paths: Vec<String>,
    #[command(flatten)]
    opts: TransferArgs,
}

/// One file to move: remote path, local path, size (for the total bar).
#[derive(Debug, Clone)]
struct Job {
    remote: String,
    local: PathBuf,
    size: u64,
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

fn join_remote(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

impl GetArgs {
    pub fn new(addr: String, paths: Vec<String>, opts: TransferArgs) -> Self {
        GetArgs { addr, paths, opts }
    }
}

impl PutArgs {
    pub fn new(addr: String, paths: Vec<String>, opts: TransferArgs) -> Self {
        PutArgs { addr, paths, opts }
    }
}

pub async fn get(args: GetArgs, key: Option<Key>) -> anyhow::Result<ExitCode> {
    let GetArgs { addr, mut paths, opts } = args;
    let dest = if paths.len() > 1 { paths.pop() } else { None };
    if dest.as_deref() == Some("-") {
        anyhow::ensure!(paths.len() == 1 && !opts.recursive, "`-` (stdout) takes exactly one remote file");
        let mut client = Client::connect_with(&addr, key.as_ref()).await?;
        // Stdout as a plain file descriptor: written on the transfer's own
        // thread, without tokio's per-write hand-off.
        use std::os::fd::AsFd;
        let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().context("stdout")?);
        client.get_to_writer(&paths[0], out, &mut |_| {}).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let dest = PathBuf::from(dest.unwrap_or_else(|| ".".into()));
    let into_dir = dest.is_dir() || paths.len() > 1;
    let mut client = Client::connect_with(&addr, key.as_ref()).await?;
    let mut jobs = Vec::new();
    for remote in &paths {
        let entry = client.stat(remote).await.with_context(|| format!("cannot get {remote}"))?;
        let target = if into_dir { dest.join(base_name(remote)) } else { dest.clone() };
        if entry.kind == Kind::Dir {
            anyhow::ensure!(opts.recursive, "{remote}: is a directory (use -r)");
            // Directories first, so that empty ones are recreated too; the
            // names were checked to be plain relative paths.
            let tree = client.tree(remote).await.with_context(|| format!("cannot list {remote}"))?;
            create_dir(&target)?;
            for e in tree {
                match e.kind {
                    Kind::Dir => create_dir(&target.join(&e.name))?,
                    _ => jobs.push(Job {
                        remote: join_remote(remote, &e.name),
                        local: target.join(&e.name),
                        size: e.size,
                    }),
                }
            }
        } else {
            jobs.push(Job { remote: remote.clone(), local: target, size: entry.size });
        }
    }
    for job in &jobs {
        if let Some(parent) = job.local.parent() {
            create_dir(parent)?;
        }
    }
    drop(client);
    run_jobs(&addr, key, jobs, Vec::new(), &opts, Direction::Get).await
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

pub async fn put(args: PutArgs, key: Option<Key>) -> anyhow::Result<ExitCode> {
    let PutArgs { addr, mut paths, opts } = args;
    let dest = if paths.len() > 1 { paths.pop() } else { None };
    let mut client = Client::connect_with(&addr, key.as_ref()).await?;
    let into_dir = match &dest {
        None => true,
        Some(d) if paths.len() > 1 || d.ends_with('/') || d.is_empty() => true,
        Some(d) => matches!(client.stat(d).await, Ok(Entry { kind: Kind::Dir, .. })),
    };
    let dest = dest.unwrap_or_default();
    let mut plan = Plan::default();
    for local in &paths {
        let path = Path::new(local);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot put {local}"))?;
        let name = match path.file_name() {
            None => local.clone(),
            Some(name) => name.to_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!(not_utf8(path)))?,
        };
        let target = if into_dir { join_remote(&dest, &name) } else { dest.clone() };
        if meta.is_dir() {
            anyhow::ensure!(opts.recursive, "{local}: is a directory (use -r)");
            if !plan.walk(path, &target).with_context(|| format!("cannot read {local}"))? {
                plan.mkdirs.push(target);
            }
        } else {
            plan.jobs.push(Job { remote: target, local: path.to_owned(), size: meta.len() });
        }
    }
    if !opts.quiet {
        for note in &plan.skipped {
            eprintln!("framewire: skipping {}", printable(note));
        }
    }
    // Directories with no file below them: the files create the others.
    for dir in &plan.mkdirs {
        if let Err(e) = client.mkdir(dir).await {
            plan.failures.push(format!("{dir}: {e}"));
        }
    }
    drop(client);
    run_jobs(&addr, key, plan.jobs, plan.failures, &opts, Direction::Put).await
}

fn not_utf8(path: &Path) -> String {
    format!("{}: the name is not valid UTF-8, which framewire's protocol cannot carry", path.display())
}

/// What `put -r` found in a local tree.
#[derive(Debug, Default)]
struct Plan {
    /// Regular files to send (symlinks to files are followed).
    jobs: Vec<Job>,
    /// Remote directories to create because no file below creates them.
    mkdirs: Vec<String>,
    /// Left out on purpose, with why: special files, symlinks to
    /// directories, dangling symlinks.
    skipped: Vec<String>,
    /// Left out, and the run fails: names the protocol cannot carry.
    failures: Vec<String>,
}

impl Plan {
    /// Adds what is below `dir` under `remote`; returns whether anything
    /// below will create `remote` on the server.
    fn walk(&mut self, dir: &Path, remote: &str) -> std::io::Result<bool> {
        let mut items: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        items.sort_by_key(|i| i.file_name());
        let mut creates = false;
        for item in items {
            let path = item.path();
            let Ok(name) = item.file_name().into_string() else {
                self.failures.push(not_utf8(&path));
                continue;
            };
            let child = join_remote(remote, &name);
            if item.file_type()?.is_dir() {
                if !self.walk(&path, &child)? {
                    self.mkdirs.push(child);
                }
                creates = true;
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    self.jobs.push(Job { remote: child, local: path, size: meta.len() });
                    creates = true;
                }
                Ok(meta) if meta.is_dir() => {
                    self.skipped.push(format!("{}: a symlink to a directory (not followed)", path.display()))
                }
                Ok(_) => self.skipped.push(format!("{}: not a regular file", path.display())),
                Err(e) => self.skipped.push(format!("{}: {e}", path.display())),
            }
        }
        Ok(creates)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    Get,
    Put,
}

/// Progress display: one bar per active file, a total bar when there are
/// several; nothing when stderr is not a terminal or with --quiet.
struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    style: ProgressStyle,
}

fn draw_target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// One progress bar of the kind transfers show (hidden off a terminal).
pub fn bar(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), draw_target(false));
    bar.set_style(bar_style());
    bar.set_message(printable(name).into_owned());
    bar
}

impl Bars {
    fn new(jobs: &[Job], quiet: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(draw_target(quiet));
        let style = bar_style();
        let total = (jobs.len() > 1).then(|| {
            let bar = multi.add(ProgressBar::new(jobs.iter().map(|j| j.size).sum()));
            bar.set_style(style.clone());
            bar.set_message(format!("total ({} files)", jobs.len()));
            bar
        });
        Bars { multi, total, style }
    }

    fn file(&self, name: &str, size: u64) -> ProgressBar {
        let bar = self.multi.insert_from_back(usize::from(self.total.is_some()), ProgressBar::new(size));
        bar.set_style(self.style.clone());
        bar.set_message(printable(name).into_owned());
        bar
    }
}

async fn run_jobs(
    addr: &str,
    key: Option<Key>,
    jobs: Vec<Job>,
    earlier_failures: Vec<String>,
    opts: &TransferArgs,
    dir: Direction,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bars = Arc::new(Bars::new(&jobs, opts.quiet));
    let queue = Arc::new(Mutex::new(jobs.clone()));
    let failures = Arc::new(Mutex::new(earlier_failures));
    let moved = Arc::new(Mutex::new((0usize, 0u64, 0u64))); // (files done, bytes sent, bytes resumed)
    let workers = opts.jobs.clamp(1, 64).min(jobs.len().max(1));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (addr, queue, bars, failures, moved) =
            (addr.to_owned(), queue.clone(), bars.clone(), failures.clone(), moved.clone());
        let key = key.clone();
        let force = opts.force;
        tasks.push(tokio::spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                let Some(job) = queue.lock().expect("queue").pop() else { break };
                let outcome = transfer(&addr, key.as_ref(), &mut client, &job, force, dir, &bars).await;
                match outcome {
                    Ok(t) => {
                        let mut m = moved.lock().expect("moved");
                        m.0 += 1;
                        m.1 += t.size - t.resumed;
                        m.2 += t.resumed;
                    }
                    Err(e) => {
                        // A connection that failed, or was closed because a
                        // transfer stopped half-way, is not reused.
                        let in_step = matches!(e, ClientError::Remote { .. } | ClientError::LocalExists(_));
                        if !in_step || client.as_ref().is_some_and(Client::is_closed) {
                            client = None;
                        }
                        let path = if dir == Direction::Get { &job.remote } else { &job.local.display().to_string() };
                        failures.lock().expect("failures").push(format!("{path}: {e}"));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    if let Some(total) = &bars.total {
        total.finish_and_clear();
    }
    let failures = std::mem::take(&mut *failures.lock().expect("failures"));
    let (ok, sent, resumed) = *moved.lock().expect("moved");
    if !opts.quiet && ok > 0 {
        let secs = started.elapsed().as_secs_f64();
        let resumed = if resumed > 0 { format!(", {} resumed (not sent again)", mib(resumed)) } else { String::new() };
        eprintln!(
            "{ok} file(s), {} transferred in {secs:.2} s ({:.0} MB/s){resumed}, checksums verified",
            mib(sent),
            sent as f64 / secs.max(1e-9) / 1e6
        );
    }
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failures {
        eprintln!("framewire: error: {}", printable(f));
    }
    Ok(ExitCode::FAILURE)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn transfer(
    addr: &str,
    key: Option<&Key>,
    client: &mut Option<Client>,
    job: &Job,
    force: bool,
    dir: Direction,
    bars: &Bars,
) -> Result<Transfer, ClientError> {
    if client.is_none() {
        *client = Some(Client::connect_with(addr, key).await?);
    }
    let c = client.as_mut().expect("connected");
    let name = if dir == Direction::Get { job.remote.clone() } else { job.local.display().to_string() };
    let bar = bars.file(&name, job.size);
    let total = bars.total.clone();
    let mut last = 0;
    let mut progress = |p: Progress| {
        // Only the bytes still to send count: a resumed file's bar covers
        // the rest of it.
        if p.done == 0 || last == 0 {
            bar.set_length(p.size - p.resumed);
            if p.resumed > 0 {
                bar.set_message(format!("{} (resumed)", printable(&name)));
                if let Some(t) = &total {
                    t.dec_length(p.resumed.min(t.length().unwrap_or(0)));
                }
            }
        }
        bar.set_position(p.done);
        if let Some(t) = &total {
            t.inc(p.done - last);
        }
        last = p.done;
    };
    let options = TransferOptions::force(force);
    let result = match dir {
        Direction::Get => c.get(&job.remote, &job.local, &options, &mut progress).await,
        Direction::Put => c.put(&job.local, &job.remote, &options, &mut progress).await,
    };
    bar.finish_and_clear();
    result
}
