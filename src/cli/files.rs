//! `framewire ls`, `get` and `put`: listings, and transfers of files and
//! trees over several connections with progress bars.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use super::config::Settings;
use anyhow::Context;
use clap::Args;
use framewire::client::filter::Filter;
use framewire::client::tree::{
    self, CopyOptions, Direction, Endpoint, Job, Observer, Plan, PlanError, PlanOptions, Summary,
};
use framewire::client::Wanted;
use framewire::client::{BackupOptions, Progress, Transfer};
use framewire::proto::Kind;
use framewire::text::printable;
use framewire::ClientError;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,
    /// Path relative to the served root, or to the alias's `dir` (default:
    /// there).
    path: Option<String>,
    /// Every file below PATH, with paths relative to it.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// One JSON array of {name, size, kind, mtime, mode}, for scripts.
    #[arg(long)]
    json: bool,
    /// The partial files below PATH (left by cut transfers; the next
    /// transfer of that file resumes from one), with size and age.
    #[arg(long, conflicts_with = "recursive")]
    partial: bool,
}

pub async fn ls(args: LsArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = settings.resolve(&args.addr);
    let mut client = target.connect().await?;
    let path = target.path(&args.path.unwrap_or_default());
    if args.partial {
        let entries = client.list_partials(&path).await?;
        let entries: Vec<_> =
            entries.into_iter().filter(|e| framewire::client::is_partial_name(base(&e.name))).collect();
        if args.json {
            say!("{}", serde_json::to_string(&entries)?);
            return Ok(ExitCode::SUCCESS);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        for e in &entries {
            let age = (now - e.mtime).max(0);
            say!("{:>12}  {:>9}  {}", e.size, ago(age), printable(&e.name));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (entries, skipped) = if args.recursive {
        listed_below(&mut client, &path).await?
    } else {
        (client.list(&path, false).await?, Vec::new())
    };
    // What could not be read is named on stderr (the rest is listed), and
    // the exit code says it, as a copy's does for its failures.
    for skip in skipped.iter().cloned() {
        let error = ClientError::Remote { code: skip.code, message: skip.message };
        eprintln!("framewire: error: {}", printable(&error.to_string()));
    }
    let code = if skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if args.json {
        say!("{}", serde_json::to_string(&entries)?);
        return Ok(code);
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
    Ok(code)
}

/// Every file below `path` (`ls -r`), through the streamed tree listing,
/// which goes on past a directory the server cannot read and names it;
/// a file at `path` lists itself.
async fn listed_below(
    client: &mut framewire::Client,
    path: &str,
) -> anyhow::Result<(Vec<framewire::proto::Entry>, Vec<framewire::proto::ListingSkip>)> {
    match client.tree_with_skips(path, false).await {
        Ok(listed) => {
            let files = listed.entries.into_iter().filter(|e| e.kind == Kind::File).collect();
            Ok((files, listed.skipped))
        }
        Err(ClientError::Remote { code: framewire::ErrorCode::NotADirectory, .. }) => {
            Ok((client.list(path, true).await?, Vec::new()))
        }
        Err(e) => Err(e.into()),
    }
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
    /// Replace what differs whatever its age, even under --update, and a
    /// symlink or special file holding a file's name.
    #[arg(short = 'f', long)]
    force: bool,
    /// Keep receiver files that differ and are newer than the source's (or
    /// as new), listing them (exit 3); by default the source wins.
    #[arg(short = 'u', long, conflicts_with = "ignore_existing")]
    update: bool,
    /// Leave alone every file the receiver already has, however it
    /// differs: only new files are copied.
    #[arg(long)]
    ignore_existing: bool,
    /// Follow a symlink to a file inside the copied tree and copy the file
    /// under the link's name, instead of copying the link as a link (the
    /// default); both ways. A link leading out of the tree, to a
    /// directory or nowhere is left out, named.
    #[arg(short = 'L', long)]
    copy_links: bool,
    /// As rsync users type it: -r with links, hard links, modes and times
    /// kept, which -r does already.
    #[arg(short = 'a', long)]
    archive: bool,
    /// Transfer up to N files at once, each over its own connection
    /// (default 4, or the config file's `jobs`). To a server that is not
    /// on this machine, one connection and one more for each whole 4 MiB
    /// of files, up to N.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    jobs: Option<u16>,
    /// Keep the copy's traffic (all its connections together) under RATE
    /// bytes a second: `10M` is 10 MiB/s (K, M, G are powers of 1024; KB,
    /// MB, GB of 1000).
    #[arg(long, value_name = "RATE", value_parser = super::config::parse_rate)]
    bwlimit: Option<u64>,
    /// No progress bars and no summary.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print what would change (sent, replaced, created, deleted, kept
    /// under --update; with -v the unchanged too), and change nothing; the
    /// exit code is the one the copy would have.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// One line on stdout per change made, in rsync's form (`<f+++++++++
    /// new.txt`, `>f.st...... changed.txt`, `cd+++++++++ dir/`,
    /// `*deleting   old.txt`); unchanged files print nothing. (`-i` is the
    /// identity file, as in ssh.)
    #[arg(long)]
    itemize_changes: bool,
    /// Leave out paths of a copied tree matching PATTERN (gitignore-style:
    /// `*.o`, `/build`, `cache/`, `docs/**/*.tmp`). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Take paths matching PATTERN even if an --exclude matches them.
    /// Repeatable.
    #[arg(long, value_name = "PATTERN")]
    include: Vec<String>,
    /// Exclude the patterns in FILE, one a line (`#` comments).
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// Send a changed file as a delta (only the bytes the receiver's older
    /// version lacks) even to this machine, and ask a tree's listing
    /// compressed; by default both are done to any other host, where the
    /// link costs more than the reading.
    #[arg(long, conflicts_with = "whole_file")]
    delta: bool,
    /// Send changed files whole, never as deltas (rsync's -W).
    #[arg(short = 'W', long)]
    whole_file: bool,
    /// Compress the copy's connections both ways with zstd (rsync's -z):
    /// for slow links; level 1 unless --compress-level. A server older
    /// than this is copied to uncompressed. `compress = true` in the
    /// config file does the same for a host.
    #[arg(short = 'z', long)]
    compress: bool,
    /// zstd level for -z (and gives -z): 1, fast, the default, to 19,
    /// smallest (a server compresses its own side at 3 at most).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    compress_level: Option<i32>,
    /// Tell files apart by BLAKE3 instead of size and modification time
    /// (the server reads files its hash cache lacks).
    #[arg(short = 'c', long)]
    checksum: bool,
    /// Mirror: remove what the destination has below a copied directory
    /// and the source lacks (never outside it, never through a link;
    /// excluded paths and the directories holding them are kept; nothing
    /// is removed if a file failed).
    #[arg(long)]
    delete: bool,
    /// With --delete: if the mirror would remove more than N paths,
    /// remove none and fail (exit 1); the files are still copied.
    #[arg(long, value_name = "N", requires = "delete")]
    max_delete: Option<usize>,
    /// Keep what the copy replaces or --delete removes, as NAME~ beside it
    /// (or under --backup-dir); an older backup of the same name is
    /// replaced.
    #[arg(short = 'b', long)]
    backup: bool,
    /// With or without -b: keep backups in DIR, each at its path below the
    /// destination (DIR relative to the destination directory; put: `/DIR`
    /// from the served root). A mirror never removes DIR.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<String>,
    /// Backups' suffix (default `~`, or none with --backup-dir).
    #[arg(long, value_name = "SUFFIX")]
    suffix: Option<String>,
    /// With -r: keep extended attributes of the `user` namespace (never
    /// `security.*` nor `trusted.*`).
    #[arg(short = 'X', long)]
    xattrs: bool,
    /// With -r: keep POSIX ACLs (as their extended attributes).
    #[arg(short = 'A', long)]
    acls: bool,
    /// Keep owners by user and group id, not by name (owners are kept
    /// where the receiver runs as root).
    #[arg(long)]
    numeric_ids: bool,
    /// get -r as root: copy device files too (a server never makes them).
    /// FIFOs and sockets are copied always where the receiver runs as
    /// root.
    #[arg(long)]
    devices: bool,
    /// The same as --devices (rsync's -D: devices and special files).
    #[arg(short = 'D')]
    devices_and_specials: bool,
}

impl TransferArgs {
    /// The zstd level -z or --compress-level ask for, if either does:
    /// `--compress-level`'s, else with `-z` the host's from the config
    /// file (`configured`), else 1.
    fn compress(&self, configured: Option<i32>) -> Option<i32> {
        self.compress_level.or(self.compress.then(|| configured.unwrap_or(1)))
    }

    /// When changed files go as deltas (`--delta`, `-W`).
    fn delta_mode(&self) -> framewire::client::DeltaMode {
        use framewire::client::DeltaMode;
        match (self.delta, self.whole_file) {
            (true, _) => DeltaMode::Always,
            (_, true) => DeltaMode::Never,
            _ => DeltaMode::Auto,
        }
    }

    /// How to plan the copy these options ask for.
    fn plan_options(&self) -> anyhow::Result<PlanOptions> {
        let mut exclude = self.exclude.clone();
        for file in &self.exclude_from {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            exclude.extend(Filter::patterns_from(&text));
        }
        let filter = Filter::new(&exclude, &self.include)?;
        let existing = if self.update {
            tree::Existing::Update
        } else if self.ignore_existing {
            tree::Existing::Ignore
        } else {
            tree::Existing::Replace
        };
        anyhow::ensure!(
            self.suffix.is_none() || self.backup || self.backup_dir.is_some(),
            "--suffix is for backups: give -b or --backup-dir too"
        );
        let backup = (self.backup || self.backup_dir.is_some())
            .then(|| BackupOptions { dir: self.backup_dir.clone(), suffix: self.suffix.clone() });
        if let Some(b) = &backup {
            b.remote("").check().map_err(|why| anyhow::anyhow!("--backup: {why}"))?;
        }
        let attrs = Wanted { owners: true, numeric: self.numeric_ids, xattrs: self.xattrs, acls: self.acls };
        Ok(PlanOptions::new(self.recursive || self.archive, self.force)
            .with_attrs(attrs)
            .with_devices(self.devices || self.devices_and_specials)
            .with_backup(backup)
            .with_copy_links(self.copy_links)
            .with_itemize(self.itemize_changes)
            .with_max_delete(self.max_delete)
            .with_existing(existing)
            .with_filter(filter)
            .with_delete(self.delete)
            .with_checksum(self.checksum))
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Server address, `host[:port]` (default port 9909); or, scp's way, the
    /// first remote source as `HOST:PATH` (`get web:logs/app.log .`). With
    /// -w: the first remote path.
    addr: String,
    /// REMOTE... [LOCAL|-]: remote paths (each `HOST:PATH` in scp's form),
    /// then where to put them (default: the current directory; `-` writes
    /// one file to stdout). Like `cp`: with several sources, or if LOCAL is
    /// a directory, each lands inside it.
    /// With -w: REMOTE... [DIR], each host's files landing in DIR/HOST/.
    #[arg(num_args = 0.., value_name = "PATHS")]
    paths: Vec<String>,
    #[command(flatten)]
    opts: TransferArgs,
    #[command(flatten)]
    fleet: FleetCopyArgs,
}

/// `-w` and its company on `get` and `put`.
#[derive(Debug, Args)]
pub struct FleetCopyArgs {
    #[command(flatten)]
    hosts: super::fleet::HostArgs,
    /// With -w: hosts at once (default 64). (`-f` is --force here.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    fanout: Option<u16>,
    /// With -w: one JSON object a line on stdout for each host as it ends
    /// (host, status, error, files, bytes_sent, bytes_resumed, unchanged,
    /// deleted, skipped, refused, failures, duration).
    #[arg(long)]
    json: bool,
}

impl FleetCopyArgs {
    /// Refuses the fan-out's flags on a one-host copy.
    fn check_single(&self) -> anyhow::Result<()> {
        self.hosts.check_single()?;
        for (given, flag) in [(self.fanout.is_some(), "--fanout"), (self.json, "--json")] {
            anyhow::ensure!(!given, "{flag} is for a host set: give one with -w or --hostfile");
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Server address, `host[:port]` (default port 9909); or, scp's way,
    /// the first local source, with the destination last as `HOST:PATH`
    /// (`put notes.txt web:docs/`; `web:` is the served root). With -w:
    /// the first local source.
    addr: String,
    /// LOCAL... [REMOTE]: local files (or trees with -r), then where to put
    /// them on the server (default: the root). Like `cp`: with several
    /// sources, or if REMOTE is a directory, each lands inside it. With
    /// -w: LOCAL... [REMOTE], the same on every host.
    #[arg(num_args = 0.., value_name = "PATHS")]
    paths: Vec<String>,
    #[command(flatten)]
    opts: TransferArgs,
    #[command(flatten)]
    fleet: FleetCopyArgs,
}

/// `put -w` and `get -w`: the copy on every host of the set.
async fn on_hosts(
    all: Vec<String>,
    put: bool,
    opts: &TransferArgs,
    fleet: FleetCopyArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!opts.dry_run, "--dry-run is for one host (run it on one host of the set)");
    let (paths, last) = super::fleet::split_last(all);
    anyhow::ensure!(
        last.as_deref() != Some("-") && !paths.iter().any(|p| p == "-"),
        "`-` (stdin or stdout) is for one host"
    );
    let names = fleet.hosts.names(settings)?;
    let mut hosts = super::fleet::resolve(names, settings, opts.bwlimit, None)?;
    if opts.compress || opts.compress_level.is_some() {
        for host in &mut hosts {
            let level = opts.compress(host.compress_level());
            host.compress(level.unwrap_or(1));
        }
    }
    let what = if put {
        super::fleet::Copying::Put { sources: paths.iter().map(PathBuf::from).collect(), dest: last }
    } else {
        super::fleet::Copying::Get { paths, dir: PathBuf::from(last.unwrap_or_else(|| ".".into())) }
    };
    let jobs = opts.jobs.map_or(super::config::DEFAULT_JOBS, usize::from);
    let copy = CopyOptions::new(opts.force, jobs).with_delta(opts.delta_mode());
    let fanout = fleet.fanout.map_or(framewire::client::fleet::DEFAULT_FANOUT, usize::from);
    let shown = super::fleet::CopyShown { json: fleet.json, quiet: opts.quiet };
    super::fleet::copy(hosts, what, opts.plan_options()?, copy, fanout, shown).await
}

/// A plan that could not be made, in the CLI's words.
fn plan_error(e: PlanError, verb: &str) -> anyhow::Error {
    anyhow::anyhow!("{}", super::plan_words(&e, verb))
}

/// The last component of a listed path, as bytes.
fn base(name: &str) -> &[u8] {
    name.rsplit('/').next().unwrap_or(name).as_bytes()
}

/// An age, as `ls --partial` shows it: `42s`, `5m`, `3h`, `2d`.
fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `HOST:PATH` as scp and rsync write it, if `arg` is one: a colon before
/// any slash (so `./a:b` and `/x:y` are local files), the host possibly
/// `[IPv6]`, possibly with `:PORT` before the path (`host:9909:docs/`).
/// `host:9909` alone is an address with a port, as in the `HOST PATH...`
/// form, not a file named `9909` (write `host:./9909` for that). Returns
/// the address and the path (empty: the served root).
pub fn remote_arg(arg: &str) -> Option<(String, String)> {
    let (host, rest) = if let Some(inner) = arg.strip_prefix('[') {
        let end = inner.find(']')?;
        (&arg[..end + 2], inner[end + 1..].strip_prefix(':')?)
    } else {
        let colon = arg.find(':')?;
        if arg.find('/').is_some_and(|slash| slash < colon) {
            return None;
        }
        (&arg[..colon], &arg[colon + 1..])
    };
    if host.is_empty() || host.starts_with('-') {
        return None;
    }
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once(':') {
        Some((port, path)) if is_port(port) => Some((format!("{host}:{port}"), path.to_owned())),
        _ if is_port(rest) => None,
        _ => Some((host.to_owned(), rest.to_owned())),
    }
}

/// The two ways of naming a copy: `HOST REMOTE... [LOCAL]` (and for put
/// `HOST LOCAL... [REMOTE]`), or scp's, with the remote side written
/// `HOST:PATH` (`get web:logs/app.log .`, `put notes.txt web:docs/`).
/// Returns the address, the sources, and the destination if one was
/// given.
fn copy_form(addr: String, mut paths: Vec<String>, put: bool) -> anyhow::Result<(String, Vec<String>, Option<String>)> {
    let mut all = vec![addr];
    all.append(&mut paths);
    let scp_form = if put {
        all.len() >= 2 && remote_arg(all.last().expect("two")).is_some()
    } else {
        remote_arg(&all[0]).is_some()
    };
    if !scp_form {
        let mut paths = all.split_off(1);
        anyhow::ensure!(
            !paths.is_empty(),
            "nothing to copy: give HOST then paths, or write the remote side as HOST:PATH"
        );
        let dest = if paths.len() > 1 { paths.pop() } else { None };
        return Ok((all.pop().expect("the address"), paths, dest));
    }
    if put {
        let (addr, dest) = remote_arg(&all.pop().expect("two")).expect("checked");
        if let Some(other) = all.iter().find(|a| remote_arg(a).is_some()) {
            anyhow::bail!("{other}: a remote source; put copies local files (write ./{other} for a local one)");
        }
        return Ok((addr, all, Some(dest).filter(|d| !d.is_empty())));
    }
    let dest = if all.len() > 1 && remote_arg(all.last().expect("two")).is_none() { all.pop() } else { None };
    let mut addr = None;
    let mut sources = Vec::with_capacity(all.len());
    for arg in all {
        let Some((host, path)) = remote_arg(&arg) else {
            anyhow::bail!("{arg}: a local path among the remote sources (the destination comes last)");
        };
        match &addr {
            Some(first) if *first != host => anyhow::bail!("sources on two hosts ({first}, {host}): one at a time"),
            Some(_) => {}
            None => addr = Some(host),
        }
        sources.push(path);
    }
    Ok((addr.expect("one source at least"), sources, dest))
}

pub async fn get(args: GetArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let GetArgs { addr, paths, opts, fleet } = args;
    if fleet.hosts.given() {
        return on_hosts(std::iter::once(addr).chain(paths).collect(), false, &opts, fleet, settings).await;
    }
    fleet.check_single()?;
    let (addr, paths, dest) = copy_form(addr, paths, false)?;
    let target = settings.resolve(&addr);
    let paths: Vec<String> = paths.iter().map(|p| target.path(p)).collect();
    let endpoint = target.endpoint(opts.bwlimit)?;
    let endpoint = match opts.compress(target.compress) {
        Some(level) => endpoint.with_compress(Some(level)),
        None => endpoint,
    };
    if dest.as_deref() == Some("-") {
        anyhow::ensure!(paths.len() == 1 && !opts.recursive, "`-` (stdout) takes exactly one remote file");
        let mut client = endpoint.connect().await?;
        // Stdout as a plain file descriptor: written on the transfer's own
        // thread, without tokio's per-write hand-off.
        use std::os::fd::AsFd;
        let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().context("stdout")?);
        client.get_to_writer(&paths[0], out, &mut |_| {}).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let dest = PathBuf::from(dest.unwrap_or_else(|| ".".into()));
    let mut client = endpoint.connect().await?;
    // --delta: as over a slow link, the listing compressed too.
    if opts.delta {
        client.compact_listings(Some(true));
    }
    let since = std::time::Instant::now();
    let plan =
        tree::plan_get(&mut client, &paths, &dest, opts.plan_options()?).await.map_err(|e| plan_error(e, "get"))?;
    // The planning connection carries on into the copy.
    client.compact_listings(None);
    endpoint.keep_spare(client, since);
    copy(&endpoint, plan, &opts, target.jobs).await
}

pub async fn put(args: PutArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let PutArgs { addr, paths, opts, fleet } = args;
    if fleet.hosts.given() {
        return on_hosts(std::iter::once(addr).chain(paths).collect(), true, &opts, fleet, settings).await;
    }
    fleet.check_single()?;
    let (addr, paths, dest) = copy_form(addr, paths, true)?;
    let target = settings.resolve(&addr);
    // No destination: into the alias's directory (or the root).
    let dest = framewire::client::fleet::put_destination(target.dir.as_deref(), dest.as_deref());
    let endpoint = target.endpoint(opts.bwlimit)?;
    let endpoint = match opts.compress(target.compress) {
        Some(level) => endpoint.with_compress(Some(level)),
        None => endpoint,
    };
    let mut client = endpoint.connect().await?;
    if opts.delta {
        client.compact_listings(Some(true));
    }
    let sources: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let since = std::time::Instant::now();
    let plan = tree::plan_put(&mut client, &sources, dest.as_deref(), opts.plan_options()?)
        .await
        .map_err(|e| plan_error(e, "put"))?;
    // The planning connection carries on into the copy.
    client.compact_listings(None);
    endpoint.keep_spare(client, since);
    copy(&endpoint, plan, &opts, target.jobs).await
}

/// What a copy would do, one line a change on stdout (and, with `-v`, a
/// line for each file left unchanged), changing nothing; the exit code is
/// the one the copy would end with.
fn dry_run(plan: &Plan, itemize: bool) -> ExitCode {
    let direction = plan.direction;
    if itemize {
        for change in &plan.changes {
            say!("{}", printable(&change.to_string()));
        }
    } else {
        for change in plan.changes.iter().filter(|c| c.code.starts_with("cd")) {
            say!("mkdir      {}", printable(&change.path));
        }
        for job in &plan.jobs {
            let verb = if job.replace { "replace  " } else { "send     " };
            say!("{verb}  {} ({} bytes)", printable(&job.source(direction)), job.size);
        }
        for change in plan.changes.iter().filter(|c| c.code.starts_with('*')) {
            say!("delete     {}", printable(&change.path));
        }
    }
    if super::verbose() {
        for job in &plan.unchanged {
            say!("unchanged  {}", printable(&job.source(direction)));
        }
    }
    for job in &plan.refused {
        say!("keep       {} (differs and is not older: --update)", printable(&job.source(direction)));
    }
    for f in &plan.failures {
        say!("fail       {}: {}", printable(&f.path), printable(&super::explained(&f.error)));
    }
    match (plan.failures.is_empty(), plan.refused.is_empty()) {
        (true, true) => ExitCode::SUCCESS,
        (true, false) => ExitCode::from(REFUSED),
        _ => ExitCode::FAILURE,
    }
}

/// A BLAKE3 as `-v` shows it: its first 16 hex digits.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// What `-v` says of a file once its copy ended.
fn log_outcome(name: &str, outcome: &Result<Transfer, ClientError>) {
    match outcome {
        Ok(t) if t.resumed > 0 => tracing::debug!(
            "resumed {name}: {} held, {} sent, BLAKE3 {} verified",
            HumanBytes(t.resumed),
            HumanBytes(t.size - t.resumed),
            short(&t.blake3)
        ),
        Ok(t) => tracing::debug!("sent {name}: {}, BLAKE3 {} verified", HumanBytes(t.size), short(&t.blake3)),
        Err(e) => tracing::debug!("failed {name}: {}", printable(&super::explained(e))),
    }
}

/// What `-v` says of a plan before the copy starts: what goes, what is
/// left alone and why.
fn log_decisions(plan: &Plan, checksum: bool) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let direction = plan.direction;
    let why_same = if checksum { "same BLAKE3" } else { "same size and modification time" };
    for job in &plan.unchanged {
        tracing::debug!("skipping {}: unchanged ({why_same})", printable(&job.source(direction)));
    }
    for job in &plan.refused {
        tracing::debug!("not replacing {}: differs and is not older (--update)", printable(&job.source(direction)));
    }
    for job in &plan.jobs {
        let verb = if job.replace { "replacing" } else { "sending" };
        tracing::debug!("{verb} {} ({})", printable(&job.source(direction)), HumanBytes(job.size));
    }
    tracing::trace!(
        "plan: {} to copy, {} unchanged, {} refused",
        plan.jobs.len(),
        plan.unchanged.len(),
        plan.refused.len()
    );
}

/// Runs a planned copy with progress bars, then the summary and one line
/// per failure.
async fn copy(endpoint: &Endpoint, plan: Plan, opts: &TransferArgs, jobs: Option<usize>) -> anyhow::Result<ExitCode> {
    // Both ways: what the plan leaves out on purpose, one line each.
    if !opts.quiet {
        for note in &plan.skipped {
            eprintln!("framewire: skipping {}", printable(note));
        }
    }
    if opts.dry_run {
        return Ok(dry_run(&plan, opts.itemize_changes));
    }
    log_decisions(&plan, opts.checksum);
    let changes = if opts.itemize_changes { plan.changes.clone() } else { Vec::new() };
    let bars = Arc::new(Bars::new(&plan, opts.quiet));
    let jobs = opts.jobs.map(usize::from).or(jobs).unwrap_or(super::config::DEFAULT_JOBS);
    let options = CopyOptions::new(opts.force, jobs).with_delta(opts.delta_mode());
    let summary = tree::run(endpoint, plan, &options, bars.clone()).await;
    if let Some(total) = &bars.total {
        total.finish_and_clear();
    }
    let Summary {
        files,
        sent,
        resumed,
        matched,
        elapsed,
        failures,
        unchanged,
        refused,
        deleted,
        skipped,
        replaced,
        not_kept,
    } = summary;
    if !opts.quiet {
        for note in &not_kept {
            eprintln!("framewire: skipping {}", printable(note));
        }
    }
    // What was done, not what failed; a mirror deletes nothing after a
    // failure.
    let failed: std::collections::HashSet<&str> = failures.iter().map(|f| f.path.as_str()).collect();
    for change in &changes {
        let deletion = change.code.starts_with('*');
        if !failed.contains(change.source.as_str()) && (!deletion || failures.is_empty()) {
            say!("{}", printable(&change.to_string()));
        }
    }
    for path in &replaced {
        eprintln!(
            "framewire: replaced {} with a directory (a copy never follows a link below its destination)",
            printable(&path.display().to_string())
        );
    }
    if !opts.quiet && files > 0 {
        let secs = elapsed.as_secs_f64();
        let resumed =
            if resumed > 0 { format!(", {} resumed (not sent again)", HumanBytes(resumed)) } else { String::new() };
        let matched = if matched > 0 {
            format!(", {} not sent (the receiver had them: delta)", HumanBytes(matched))
        } else {
            String::new()
        };
        let rate = HumanBytes((sent as f64 / secs.max(1e-3)) as u64);
        eprintln!(
            "{files} file(s), {} transferred in {secs:.2} s ({rate}/s){resumed}{matched}, checksums verified",
            HumanBytes(sent)
        );
    }
    if !opts.quiet && unchanged > 0 {
        let why = if opts.ignore_existing {
            "already there (--ignore-existing)"
        } else if opts.checksum {
            "unchanged (same BLAKE3)"
        } else {
            "unchanged (same size and modification time)"
        };
        eprintln!("{unchanged} file(s) {why}, not sent");
    }
    if !opts.quiet && deleted > 0 {
        eprintln!("{deleted} path(s) deleted (not in the source)");
    }
    if !opts.quiet && skipped > 0 {
        eprintln!("{skipped} path(s) skipped (each named above)");
    }
    if !opts.quiet
        && files == 0
        && unchanged == 0
        && deleted == 0
        && skipped == 0
        && failures.is_empty()
        && refused.is_empty()
    {
        eprintln!("nothing to copy");
    }
    for f in &failures {
        eprintln!("framewire: error: {}", printable(&format!("{}: {}", f.path, super::explained(&f.error))));
    }
    if !refused.is_empty() {
        eprintln!(
            "framewire: {} file(s) not replaced: the receiver's differ and are not older (--update keeps them; --force replaces them):",
            refused.len()
        );
        for path in &refused {
            eprintln!("  {}", printable(path));
        }
    }
    Ok(match (failures.is_empty(), refused.is_empty()) {
        (true, true) => ExitCode::SUCCESS,
        (true, false) => ExitCode::from(REFUSED),
        _ => ExitCode::FAILURE,
    })
}

/// The exit code of a copy that did everything but replace receiver files
/// that differ and are not older (1 is for failures).
pub const REFUSED: u8 = 3;

/// Progress display: one bar per active file, a total bar when there are
/// several; nothing when stderr is not a terminal or with --quiet.
struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    style: ProgressStyle,
    direction: Direction,
    /// The bar of each file under way (none for small files), and the
    /// bytes it showed last.
    active: Mutex<HashMap<usize, (Option<ProgressBar>, u64)>>,
    /// Files ended, of all planned.
    done: std::sync::atomic::AtomicUsize,
    planned: usize,
}

/// Files smaller than this get no bar of their own (a tree of small files
/// would only flicker): the total shows them.
const WATCHABLE: u64 = 1 << 20;

/// A bar that fits the terminal: a short label (the file's name, not its
/// path), a bar taking what the figures leave, binary units throughout.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:24!} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:>3}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// The label of a file's bar: its name.
fn label(path: &str) -> String {
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path);
    printable(name).into_owned()
}

/// One progress bar of the kind transfers show (hidden off a terminal).
pub fn bar(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), super::draw_target(false));
    bar.set_style(bar_style());
    bar.set_message(label(name));
    bar
}

impl Bars {
    fn new(plan: &Plan, quiet: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(super::draw_target(quiet));
        let style = bar_style();
        let total = (plan.jobs.len() > 1).then(|| {
            let bar = multi.add(ProgressBar::new(plan.total_size()));
            bar.set_style(style.clone());
            bar.set_message(format!("total ({} files)", plan.jobs.len()));
            bar
        });
        let planned = plan.jobs.len();
        Bars {
            multi,
            total,
            style,
            direction: plan.direction,
            active: Mutex::default(),
            done: Default::default(),
            planned,
        }
    }
}

impl Observer for Bars {
    fn started(&self, id: usize, job: &Job) {
        let bar = (job.size >= WATCHABLE || self.total.is_none()).then(|| {
            let bar = self.multi.insert_from_back(usize::from(self.total.is_some()), ProgressBar::new(job.size));
            bar.set_style(self.style.clone());
            // Until the first bytes move, a partial file may be being
            // checked (hashed, here or on the server).
            bar.set_message(format!("{} (checking)", label(&job.source(self.direction))));
            bar
        });
        // `u64::MAX`: no progress yet.
        self.active.lock().expect("bars").insert(id, (bar, u64::MAX));
    }

    fn progress(&self, id: usize, job: &Job, p: Progress) {
        let mut active = self.active.lock().expect("bars");
        let Some((bar, last)) = active.get_mut(&id) else { return };
        // A resumed file's bar shows its whole size, the part already held
        // counted as done (and left out of the rate).
        let first = *last == u64::MAX;
        if first {
            let name = label(&job.source(self.direction));
            if let Some(bar) = bar {
                bar.set_length(p.size);
                bar.set_position(p.resumed);
                bar.reset_eta();
                bar.set_message(if p.resumed > 0 { format!("{name} (resumed)") } else { name });
            }
            if let Some(t) = &self.total {
                t.inc(p.resumed);
            }
            *last = 0;
        }
        if let Some(bar) = bar {
            bar.set_position(p.resumed + p.done);
        }
        if let Some(t) = &self.total {
            t.inc(p.done.saturating_sub(*last));
        }
        *last = p.done;
    }

    fn finished(&self, id: usize, job: &Job, outcome: &Result<Transfer, ClientError>) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_outcome(&printable(&job.source(self.direction)), outcome);
        }
        if let Some((Some(bar), _)) = self.active.lock().expect("bars").remove(&id) {
            bar.finish_and_clear();
        }
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(t) = &self.total {
            t.set_message(format!("total ({done}/{} files)", self.planned));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_form, remote_arg};

    fn r(host: &str, path: &str) -> Option<(String, String)> {
        Some((host.to_owned(), path.to_owned()))
    }

    #[test]
    fn a_colon_before_any_slash_is_a_remote_argument() {
        assert_eq!(remote_arg("web:docs/"), r("web", "docs/"));
        assert_eq!(remote_arg("127.0.0.1:"), r("127.0.0.1", ""));
        assert_eq!(remote_arg("web:9909:a.txt"), r("web:9909", "a.txt"));
        assert_eq!(remote_arg("[::1]:logs/x"), r("[::1]", "logs/x"));
        assert_eq!(remote_arg("[::1]:9909:"), r("[::1]:9909", ""));
        assert_eq!(remote_arg("web:./9909"), r("web", "./9909"));
        // Local files, and addresses of the HOST PATH... form.
        for local in ["./a:b", "/x:y", "dir/a:b", "notes.txt", "web:9909", "[::1]", "[::1]:9909", ":x", "-v:x"] {
            assert_eq!(remote_arg(local), None, "{local}");
        }
    }

    #[test]
    fn both_forms_give_the_same_copy() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let form = |all: &[&str], put| copy_form(all[0].to_owned(), s(&all[1..]), put).unwrap();
        let want = |addr: &str, src: &[&str], dest: Option<&str>| (addr.to_owned(), s(src), dest.map(str::to_owned));
        assert_eq!(form(&["web", "notes.txt", "docs/"], true), want("web", &["notes.txt"], Some("docs/")));
        assert_eq!(form(&["notes.txt", "web:docs/"], true), want("web", &["notes.txt"], Some("docs/")));
        assert_eq!(form(&["a", "b", "127.0.0.1:"], true), want("127.0.0.1", &["a", "b"], None));
        assert_eq!(form(&["web:9909", "a"], true), want("web:9909", &["a"], None));
        assert_eq!(form(&["web", "logs/app.log", "."], false), want("web", &["logs/app.log"], Some(".")));
        assert_eq!(form(&["web:logs/app.log", "."], false), want("web", &["logs/app.log"], Some(".")));
        assert_eq!(form(&["web:logs/app.log"], false), want("web", &["logs/app.log"], None));
        assert_eq!(form(&["web:a", "web:b", "out"], false), want("web", &["a", "b"], Some("out")));
        let err = |all: &[&str], put| copy_form(all[0].to_owned(), s(&all[1..]), put).unwrap_err().to_string();
        assert!(err(&["web:a", "db:b", "out"], false).contains("two hosts"));
        assert!(err(&["web:a", "local", "out"], false).contains("a local path among"));
        assert!(err(&["db:x", "web:docs/"], true).contains("a remote source"));
        assert!(err(&["web"], false).contains("nothing to copy"));
    }
}
