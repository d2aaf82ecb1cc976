//! Shared helpers: a real server on 127.0.0.1:0 that a test can stop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framewire::server::{self, Config};

pub mod roots;
#[cfg(feature = "s3")]
pub mod seaweed;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), server::ServeError>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` has adjusted its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::new(root.path());
        tweak(&mut config);
        let (addr, stop, task) = spawn_server(config).await;
        TestServer { addr, root, stop: Some(stop), task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Asks for shutdown and returns the task, to await when the test wants.
    pub fn shutdown(&mut self) -> &mut JoinHandle<Result<(), server::ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        &mut self.task
    }

    /// Shuts down and waits, failing the test if that takes over `limit`.
    pub async fn stop_within(mut self, limit: Duration) {
        tokio::time::timeout(limit, self.shutdown()).await.expect("server stops in time").unwrap().unwrap();
    }
}

/// A server of `config` on 127.0.0.1:0, running until the sender is sent
/// to or dropped.
pub async fn spawn_server(
    config: Config,
) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<Result<(), server::ServeError>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = server::Server::open(config).await.unwrap();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Deterministic test data: not all zeros, not periodic on a power of two.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(seed).wrapping_mul(31)).collect()
}

/// Whether process `pid` is gone (or a zombie that will never run again).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub async fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_gone(pid)
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_framewire");

/// Runs the `framewire` binary to completion.
pub fn framewire(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

/// `framewire serve` on an ephemeral port; ended by SIGTERM on drop.
pub struct Serve {
    pub child: Child,
    /// The rest of the server's stdout, after the `listening on` line.
    pub out: BufReader<std::process::ChildStdout>,
    pub addr: String,
    pub root: tempfile::TempDir,
}

impl Serve {
    pub fn start(extra: &[&str]) -> Serve {
        Self::start_under("", extra)
    }

    /// Starts the server through `sh -c "PREFIX exec framewire serve ..."`,
    /// e.g. to lower a resource limit first.
    pub fn start_under(prefix: &str, extra: &[&str]) -> Serve {
        Self::start_wrapped(prefix, "", extra)
    }

    /// Starts the server as `WRAPPER framewire serve ...` (after
    /// `PREFIX`), e.g. `setpriv ...` to run it as another user.
    pub fn start_wrapped(prefix: &str, wrapper: &str, extra: &[&str]) -> Serve {
        let root = tempfile::tempdir().unwrap();
        let script = format!(
            "{prefix} root=\"$1\"; shift; exec {wrapper} \"$0\" serve --listen 127.0.0.1:0 --root \"$root\" \"$@\""
        );
        let mut child = Command::new("sh")
            .args(["-c", &script, BIN])
            .arg(root.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        Serve { child, out, addr, root }
    }

    /// Sends SIGTERM to our own child, by PID, and waits for it.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut log).unwrap();
        (status, log)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` under `sh` in a private mount namespace (`unshare -rm`:
/// a user namespace too, so no privilege is needed where the kernel
/// allows it), where `$1` is a fresh 4 MiB tmpfs: a real full disk.
pub fn on_small_disk(dir: &std::path::Path, script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    let setup = format!("mount -t tmpfs -o size=4m framewire-test \"$1\" || exit 99; {script}");
    cmd.args(["-rm", "sh", "-c", &setup, BIN]).arg(dir);
    cmd
}

/// `framewire serve` whose root is a 4 MiB tmpfs ([`on_small_disk`]);
/// killed, by PID, on drop.
pub struct SmallDiskServer {
    child: Child,
    pub addr: String,
    root: tempfile::TempDir,
}

impl SmallDiskServer {
    pub fn start() -> SmallDiskServer {
        let root = tempfile::tempdir().unwrap();
        let mut child = on_small_disk(root.path(), "exec \"$0\" serve --listen 127.0.0.1:0 --root \"$1\"")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no server: {line:?}")).to_owned();
        SmallDiskServer { child, addr, root }
    }

    /// The served root as the server sees it, through its own mount
    /// namespace.
    pub fn served(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root{}", self.child.id(), self.root.path().display()))
    }
}

impl Drop for SmallDiskServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A terminal for a child: the master side, read with a deadline, and a
/// copy of the slave side (to read its settings with `stty -g`).
pub struct Pty {
    pub master: std::fs::File,
    slave: std::os::fd::OwnedFd,
    pub seen: String,
    /// Everything the terminal showed, never drained.
    pub all: String,
}

impl Pty {
    /// Opens a pseudo-terminal of 24x80 and starts `cmd` on it as a
    /// session leader with the terminal as its controlling terminal, so
    /// that Ctrl-C typed there becomes SIGINT for its foreground process
    /// group, and a resize SIGWINCH, as in a real terminal.
    pub fn spawn(cmd: &mut Command) -> (Pty, Child) {
        let pty = Pty::open(24, 80);
        let child = pty.start(cmd);
        (pty, child)
    }

    /// A new pseudo-terminal of `rows` x `cols`, nothing on it yet.
    pub fn open(rows: u16, cols: u16) -> Pty {
        use rustix::pty::OpenptFlags;
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags).unwrap();
        let fl = rustix::fs::fcntl_getfl(&master).unwrap();
        rustix::fs::fcntl_setfl(&master, fl | rustix::fs::OFlags::NONBLOCK).unwrap();
        let pty = Pty { master: std::fs::File::from(master), slave, seen: String::new(), all: String::new() };
        pty.resize(rows, cols);
        pty
    }

    /// Starts `cmd` on this terminal (see [`spawn`](Self::spawn)).
    pub fn start(&self, cmd: &mut Command) -> Child {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::from(self.slave.try_clone().unwrap()))
            .stdout(Stdio::from(self.slave.try_clone().unwrap()))
            .stderr(Stdio::from(self.slave.try_clone().unwrap()));
        // SAFETY: only raw system calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    /// Gives the terminal a new size (its foreground group gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(&self.master, size).unwrap();
    }

    /// The terminal's settings, as `stty -g` prints them.
    pub fn stty_g(&self) -> String {
        let out = Command::new("stty").arg("-g").stdin(Stdio::from(self.slave.try_clone().unwrap())).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.master, bytes).unwrap();
    }

    /// Reads until `needle` has appeared after what earlier calls consumed.
    pub fn expect(&mut self, needle: &str) {
        self.expect_within(needle, Duration::from_secs(10));
    }

    /// The rest of the line after `needle`.
    pub fn line_after(&mut self, needle: &str) -> String {
        self.expect(needle);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.seen.find("\r\n") {
                let line = self.seen[..end].to_owned();
                self.seen.drain(..end + 2);
                return line;
            }
            assert!(Instant::now() < deadline, "no end of line after {needle:?}: {:?}", self.seen);
            if !self.pump() {
                panic!("the terminal ended before the line after {needle:?}: {:?}", self.seen);
            }
        }
    }

    /// [`expect`](Self::expect) with a deadline of its own.
    pub fn expect_within(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.seen.find(needle) {
                self.seen.drain(..at + needle.len());
                return;
            }
            let tail = self.seen.chars().rev().take(1500).collect::<Vec<_>>().into_iter().rev().collect::<String>();
            assert!(Instant::now() < deadline, "{needle:?} did not appear; the terminal ends with {tail:?}");
            if !self.pump() {
                panic!("{needle:?} did not appear before the end; the terminal ends with {tail:?}");
            }
        }
    }

    /// Reads what is there (or waits a little); false once nothing more
    /// can come.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(&mut self.master, &mut buf) {
            Ok(0) => false,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                self.seen.push_str(&text);
                self.all.push_str(&text);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                true
            }
            // EIO: every process closed its side of the terminal.
            Err(_) => false,
        }
    }

    /// Waits for `child` to end (within 10 s), reading the terminal
    /// meanwhile so that it never blocks on a full one.
    pub fn wait(&mut self, child: &mut Child) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // What it wrote last may still be in the terminal.
                for _ in 0..20 {
                    let before = self.seen.len();
                    self.pump();
                    if self.seen.len() == before {
                        break;
                    }
                }
                return status;
            }
            assert!(Instant::now() < deadline, "the client did not end; the terminal shows {:?}", self.seen);
            self.pump();
        }
    }
}

/// The widest progress bar (a line ending in its `ETA` field) a terminal
/// transcript drew, in characters: escape
/// sequences left out, lines split at `\r` and `\n` (a redraw starts at
/// the line's start).
pub fn widest_bar(transcript: &str) -> (usize, String) {
    let mut plain = String::new();
    let mut chars = transcript.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte; other escapes: one more char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            plain.push(c);
        }
    }
    // A bar exactly as wide as the terminal is followed by the next with
    // no newline (the terminal wraps there by itself): a bar ends with its
    // `ETA 12s` field.
    let mut lines = String::new();
    let mut rest = plain.as_str();
    while let Some(at) = rest.find("ETA") {
        let after = &rest[at + 3..];
        let field = after.len() - after.trim_start_matches(' ').trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let end = at + 3 + field + usize::from(after[field..].starts_with(['s', 'm', 'h', 'd']));
        lines.push_str(&rest[..end]);
        lines.push('\n');
        rest = &rest[end..];
    }
    lines.push_str(rest);
    lines
        .split(['\r', '\n'])
        .filter(|l| l.contains("ETA"))
        .map(|l| (l.chars().count(), l.to_owned()))
        .max()
        .unwrap_or_default()
}

/// `mv` of directories onto, into and below each other, through the
/// protocol, on whatever root the server at `addr` serves (issue 28,
/// point 3: a bucket root must answer as a local one, and never lose a
/// byte): each case's answer, then every file still where it should be.
pub async fn rename_cases(addr: &str) {
    use framewire::client::TransferOptions;
    use framewire::proto::{ErrorCode, Kind};
    let mut client = framewire::Client::connect(addr).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    for name in ["a/b/x.txt", "a/y.txt", "src/s.txt", "src/sub/t.txt", "dst/d.txt", "f.txt", "g.txt"] {
        let file = local.path().join("up");
        std::fs::write(&file, name.as_bytes()).unwrap();
        client.put(&file, name, &TransferOptions::default(), &mut |_| {}).await.unwrap();
    }
    assert!(client.mkdir("empty").await.unwrap());
    let refused = [
        // Onto an ancestor: a non-empty directory, with --force too.
        ("a/b", "a", false, ErrorCode::Exists),
        ("a/b", "a", true, ErrorCode::Exists),
        // Onto a directory with something in it.
        ("src", "dst", false, ErrorCode::Exists),
        ("src", "dst", true, ErrorCode::Exists),
        // Below itself.
        ("a", "a/new", false, ErrorCode::BadPath),
        ("a", "a/b/new", true, ErrorCode::BadPath),
        ("a", "a/b", true, ErrorCode::BadPath),
        ("a", "a/b", false, ErrorCode::Exists),
        // A file onto a directory, a directory onto a file.
        ("f.txt", "dst", true, ErrorCode::IsADirectory),
        ("dst", "g.txt", true, ErrorCode::NotADirectory),
        // Nothing there; no parent.
        ("nope", "new", false, ErrorCode::NotFound),
        ("f.txt", "no/parent", false, ErrorCode::NotFound),
    ];
    for (from, to, force, code) in refused {
        let e = client.rename(from, to, force).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "mv{} {from} {to}: {e}", if force { " -f" } else { "" });
    }
    // Onto an empty directory, with --force: it takes its place.
    client.rename("src", "empty", true).await.unwrap();
    let mut files: Vec<String> =
        client.tree("").await.unwrap().into_iter().filter(|e| e.kind == Kind::File).map(|e| e.name).collect();
    files.sort();
    assert_eq!(
        files,
        ["a/b/x.txt", "a/y.txt", "dst/d.txt", "empty/s.txt", "empty/sub/t.txt", "f.txt", "g.txt"],
        "every file where it was, or where it moved"
    );
    assert_eq!(client.stat("src").await.unwrap_err().code(), Some(ErrorCode::NotFound));
}

/// A fake server's side of the next connection to `listener`, the
/// prefaces exchanged.
pub async fn fake_peer(
    listener: &tokio::net::TcpListener,
) -> (
    framewire::wire::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    framewire::wire::FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let (sock, _) = listener.accept().await.unwrap();
    let (read, write) = sock.into_split();
    let (mut r, mut w) = (framewire::wire::FrameReader::new(read), framewire::wire::FrameWriter::new(write));
    r.read_preface().await.unwrap();
    w.feed_preface(framewire::wire::Preface::default());
    w.flush().await.unwrap();
    (r, w)
}
