//! `framewire demo`: the main job, end to end on loopback with no setup.
//! A server on an ephemeral port over a temporary root; as a client:
//! commands with streamed output and a failing exit code, a generated
//! 256 MiB file and a small tree up and back with progress bars, one
//! transfer interrupted and resumed, checksums verified, a summary.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use framewire::auth::Key;
use framewire::client::tree::{self, CopyOptions, Endpoint, PlanOptions, Quiet};
use framewire::client::{ExecIo, ExecOptions, Progress, TransferOptions, WindowSize};
use framewire::server::{Config, Server};
use framewire::Client;

use super::files;

const BIG: u64 = 256 << 20;
/// Where the first upload of the big file is cut.
const CUT_AT: u64 = 96 << 20;

pub fn all() -> anyhow::Result<ExitCode> {
    let sticky = super::sticky::run()?;
    say!();
    let agent = super::block_on(agent())?;
    Ok(if sticky == ExitCode::SUCCESS { agent } else { sticky })
}

/// A rate in the binary units the progress bars and summaries use.
fn mb_s(bytes: u64, secs: f64) -> String {
    format!("{:.0} MiB/s", bytes as f64 / secs.max(1e-9) / f64::from(1 << 20))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Writes `len` pseudo-random bytes (BLAKE3 in XOF mode: fast, and not
/// compressible, unlike zeros).
fn generate(path: &Path, len: u64) -> anyhow::Result<blake3::Hash> {
    use std::io::Write;
    let mut xof = blake3::Hasher::new_derive_key("framewire demo").finalize_xof();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hasher.finalize())
}

fn file_hash(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

/// The demo's shared state: the server, the two temporary directories,
/// the key, and what went wrong so far.
struct Demo {
    addr: String,
    key: Key,
    remote_root: tempfile::TempDir,
    local: tempfile::TempDir,
    failures: Vec<String>,
}

impl Demo {
    fn check(&mut self, ok: bool, failure: &str) {
        if !ok {
            self.failures.push(failure.to_owned());
        }
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect_with(&self.addr, Some(&self.key)).await.context("connecting to the demo server")
    }
}

/// What the exec step saw, for the summary.
struct Commands {
    streamed: i32,
    failing: i32,
}

/// What the big-file step measured, for the summary.
struct BigFile {
    resumed: u64,
    sent: u64,
    up_secs: f64,
    down_secs: f64,
}

pub async fn agent() -> anyhow::Result<ExitCode> {
    say!("framewire demo: a server and a client on loopback, commands and files\n");
    let remote_root = tempfile::tempdir().context("creating the server's temporary root")?;
    let local = tempfile::tempdir().context("creating the client's temporary directory")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    // A fresh key, as `framewire keygen` writes: the server requires it,
    // every connection is TLS 1.3, and both sides prove they hold it.
    let key = Key::generate();
    let mut config = Config::new(remote_root.path());
    config.allow_exec = true;
    config.key = Some(key.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::open(config).await?.serve(listener, stopped));
    say!("server: listening on {addr}, serving {}, exec allowed, key required\n", remote_root.path().display());
    let mut demo = Demo { addr, key, remote_root, local, failures: Vec::new() };

    let mut client = authentication(&mut demo).await?;
    let commands = commands(&mut demo, &mut client).await?;
    // The cut upload leaves its connection in the middle of a frame.
    drop(client);
    let (big, mut client) = big_file(&mut demo).await?;
    let tree_files = small_tree(&mut demo, &mut client).await?;

    drop(client);
    let _ = stop.send(());
    server.await??;
    summary(&commands, &big, tree_files);
    let Demo { remote_root, local, failures, .. } = demo;
    drop((remote_root, local));
    if failures.is_empty() {
        say!("\nEverything behaved as expected.");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            say!("FAILED: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Step 0: only a client with the key gets anything; returns one that has it.
async fn authentication(demo: &mut Demo) -> anyhow::Result<Client> {
    say!("0. authentication: only a client with the key gets anything");
    match Client::connect(&demo.addr).await {
        Err(e) => say!("   without a key:  refused ({e})"),
        Ok(_) => demo.failures.push("a client without the key was let in".to_owned()),
    }
    match Client::connect_with(&demo.addr, Some(&Key::generate())).await {
        Err(e) => say!("   a wrong key:    refused ({e})"),
        Ok(_) => demo.failures.push("a client with a wrong key was let in".to_owned()),
    }
    let started = Instant::now();
    let client = demo.connect().await?;
    say!(
        "   the right key:  TLS 1.3 + mutual HMAC challenge-response in {:.1} ms\n",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(client)
}

/// Step 1, commands: output streamed as printed, exit codes passed through.
async fn commands(demo: &mut Demo, client: &mut Client) -> anyhow::Result<Commands> {
    say!("1. exec: output streamed as it is printed, stdout and stderr apart");
    let started = Instant::now();
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, cancel: None, resize: None };
    let cmd = "for i in 1 2 3; do echo \"  line $i at $(date +%T.%N | cut -c1-12)\"; sleep 0.3; done; echo '  (this line on stderr)' >&2";
    let status = client.exec(cmd, &ExecOptions::default(), io).await?;
    say!(
        "   exit code {} after {:.1} s: each line arrived as it was printed",
        status.code(),
        started.elapsed().as_secs_f64()
    );
    demo.check(status.success(), "the streaming command failed");
    let out = client.exec_output("ls /no/such/dir", &ExecOptions::default()).await?;
    say!(
        "   `ls /no/such/dir`: exit code {}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    demo.check(out.status.code() != 0, "a failing command reported success");
    terminal(demo, client).await?;
    say!();
    Ok(Commands { streamed: status.code(), failing: out.status.code() })
}

/// Step 1, terminals: a command gets no terminal unless it asks, and one
/// of the asked size when it does (`exec -t`, `shell`).
async fn terminal(demo: &mut Demo, client: &mut Client) -> anyhow::Result<()> {
    let plain = client.exec_output("tty", &ExecOptions::default()).await?;
    let plain = String::from_utf8_lossy(&plain.stdout).trim().to_owned();
    say!("   `tty` without a terminal: {plain} (a session of its own, as under ssh -T)");
    demo.check(plain == "not a tty", "a command without -t had a terminal");
    client.request_pty("xterm", WindowSize { rows: 24, cols: 80 }).await?;
    let on = client.exec_output("tty; stty size", &ExecOptions::default()).await?;
    let text = String::from_utf8_lossy(&on.stdout).replace("\r\n", " ").trim().to_owned();
    say!("   `tty; stty size` on a 24x80 pseudo-terminal (exec -t): {text}");
    demo.check(text.starts_with("/dev/pts/") && text.ends_with("24 80"), "the terminal was not the one asked for");
    Ok(())
}

/// Step 2: a big file up, cut part-way, resumed; then back down, verified.
/// Returns a fresh connection (the cut one is dropped, as a killed client
/// would be).
async fn big_file(demo: &mut Demo) -> anyhow::Result<(BigFile, Client)> {
    say!("2. a generated {} file: upload cut at {}, resumed, downloaded, verified", mib(BIG), mib(CUT_AT));
    let big = demo.local.path().join("big.bin");
    let big_hash = generate(&big, BIG)?;
    let cut = cut_upload(demo, &big).await?;
    let on_server = demo.remote_root.path().join("big.bin");
    say!(
        "   upload interrupted: {} under the final name on the server",
        if on_server.exists() { "a file IS (wrong!)" } else { "nothing" }
    );
    demo.check(cut && !on_server.exists(), "the interrupted upload was not cut cleanly");

    let mut client = demo.connect().await?;
    let bar = files::bar("big.bin (resumed)", BIG);
    let started = Instant::now();
    let up = client
        .put(&big, "big.bin", &TransferOptions::default(), &mut |p: Progress| {
            bar.set_length(p.size - p.resumed);
            bar.set_position(p.done);
        })
        .await?;
    bar.finish_and_clear();
    let up_secs = started.elapsed().as_secs_f64();
    say!(
        "   resumed: {} were already on the server, {} sent in {up_secs:.2} s ({}), checksum verified by the server",
        mib(up.resumed),
        mib(up.size - up.resumed),
        mb_s(up.size - up.resumed, up_secs)
    );
    demo.check(up.resumed > 0, "the upload did not resume");

    let back = demo.local.path().join("big.back");
    let bar = files::bar("big.bin (download)", BIG);
    let started = Instant::now();
    let down =
        client.get("big.bin", &back, &TransferOptions::default(), &mut |p: Progress| bar.set_position(p.done)).await?;
    bar.finish_and_clear();
    let down_secs = started.elapsed().as_secs_f64();
    let same = file_hash(&on_server)? == big_hash
        && file_hash(&back)? == big_hash
        && down.blake3 == big_hash.to_hex().as_str();
    say!(
        "   downloaded {} in {down_secs:.2} s ({}); BLAKE3 {}…: original, server copy and download {}",
        mib(down.size),
        mb_s(down.size, down_secs),
        &down.blake3[..16],
        if same { "all match" } else { "DIFFER" }
    );
    demo.check(same, "the big file's copies differ");
    say!();
    let figures = BigFile { resumed: up.resumed, sent: up.size - up.resumed, up_secs, down_secs };
    Ok((figures, client))
}

/// Starts uploading `big` and drops the upload once [`CUT_AT`] bytes are
/// through; returns whether it was cut (rather than finished).
async fn cut_upload(demo: &Demo, big: &Path) -> anyhow::Result<bool> {
    let mut client = demo.connect().await?;
    let bar = files::bar("big.bin (cut short)", BIG);
    let (reached, mut reached_rx) = tokio::sync::watch::channel(0u64);
    let mut progress = |p: Progress| {
        bar.set_position(p.resumed + p.done);
        let _ = reached.send(p.done);
    };
    let options = TransferOptions::default();
    let upload = client.put(big, "big.bin", &options, &mut progress);
    let cut = tokio::select! {
        done = upload => { done?; false }
        _ = reached_rx.wait_for(|&done| done >= CUT_AT) => true,
    };
    bar.abandon();
    Ok(cut)
}

/// Step 3: a small tree up and back through the library's tree copy (what
/// `put -r` and `get -r` run); returns how many files the server lists.
async fn small_tree(demo: &mut Demo, client: &mut Client) -> anyhow::Result<usize> {
    say!("3. a small tree: `put -r` then `get -r`, four connections at once");
    let tree = demo.local.path().join("tree");
    for (i, name) in ["a.txt", "docs/readme.md", "docs/deep/notes.txt", "src/main.rs", "src/lib.rs", "data/blob.bin"]
        .iter()
        .enumerate()
    {
        let path = tree.join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, format!("file {i}: {name}\n").repeat(1 + i * 5000))?;
    }
    let endpoint = Endpoint::new(demo.addr.clone(), Some(demo.key.clone()));
    let options = CopyOptions::new(true, 4);
    // `tree/` and `tree/`: the contents, as rsync reads a trailing slash.
    let plan = tree::plan_put(client, &[tree.join("")], Some("tree"), PlanOptions::new(true, true)).await?;
    let up = tree::run(&endpoint, plan, &options, Arc::new(Quiet)).await;
    let fetched = demo.local.path().join("fetched");
    let plan = tree::plan_get(client, &["tree/".to_owned()], &fetched, PlanOptions::new(true, true)).await?;
    let down = tree::run(&endpoint, plan, &options, Arc::new(Quiet)).await;
    say!(
        "   put -r: {} files in {:.0} ms; get -r: {} files in {:.0} ms",
        up.files,
        up.elapsed.as_secs_f64() * 1e3,
        down.files,
        down.elapsed.as_secs_f64() * 1e3
    );
    for f in up.failures.iter().chain(&down.failures) {
        demo.failures.push(format!("tree copy: {}: {}", f.path, f.error));
    }
    let listing = client.list("tree", true).await?;
    let mut tree_ok = listing.len() == 6;
    for e in &listing {
        let a = std::fs::read(tree.join(&e.name))?;
        let b = std::fs::read(fetched.join(&e.name)).unwrap_or_default();
        tree_ok &= a == b;
    }
    say!(
        "   {} files listed on the server; every fetched file {}",
        listing.len(),
        if tree_ok { "matches its original" } else { "DOES NOT match" }
    );
    demo.check(tree_ok, "the tree did not come back intact");
    say!();
    Ok(listing.len())
}

fn summary(commands: &Commands, big: &BigFile, tree_files: usize) {
    say!("Summary");
    say!("  security    key required; no key and a wrong key refused; TLS 1.3 on every connection");
    say!("  exec        streamed output, exit codes passed through ({} and {})", commands.streamed, commands.failing);
    say!(
        "  upload      {} resumed after a cut at {}: {} sent at {}",
        mib(BIG),
        mib(big.resumed),
        mib(big.sent),
        mb_s(big.sent, big.up_secs)
    );
    say!("  download    {} at {}", mib(BIG), mb_s(BIG, big.down_secs));
    say!("  tree        {tree_files} files up and back");
    say!("  checksums   BLAKE3 of whole files, verified by every receiver");
    say!("  cleanup     server stopped, temporary directories removed");
}

/// `demo echo`: echo round trips of growing size through a real server.
pub async fn echo() -> anyhow::Result<ExitCode> {
    say!("framewire demo echo: a real server on loopback, frames of any size\n");
    let root = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    say!("    server listening on {addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::open(Config::new(root.path())).await?.serve(listener, stopped));

    let mut client = Client::connect(&addr).await.context("connecting to the demo server")?;
    let mut all_ok = true;
    for size in [0usize, 1, 1025, 1 << 20, 64 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut back = Vec::with_capacity(size);
        let started = Instant::now();
        client.echo_stream(&mut &body[..], size as u64, &mut back, false).await?;
        let secs = started.elapsed().as_secs_f64();
        let ok = back == body;
        all_ok &= ok;
        let rate = if size >= 1 << 20 { format!(", {} each way", mb_s(size as u64, secs)) } else { String::new() };
        say!(
            "    echo {size:>9} bytes: {} in {:.1} ms{rate}",
            if ok { "every byte back" } else { "MISMATCH" },
            secs * 1e3
        );
    }
    let upper = client.echo_upper(b"hello, tutorial").await?;
    say!("    echo --upper \"hello, tutorial\": {:?}", String::from_utf8_lossy(&upper));
    all_ok &= upper == "HELLO, TUTORIAL";
    drop(client);
    let _ = stop.send(());
    server.await??;
    say!("    server shut down cleanly\n");
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
