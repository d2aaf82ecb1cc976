//! The `framewire` binary as a user runs it: real processes, real sockets.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_framewire");

fn framewire(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `framewire serve` on an ephemeral port; ended by SIGTERM on drop.
struct Serve {
    child: Child,
    addr: String,
    _root: tempfile::TempDir,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        Self::start_under("", extra)
    }

    /// Starts the server through `sh -c "PREFIX exec framewire serve ..."`,
    /// e.g. to lower a resource limit first.
    fn start_under(prefix: &str, extra: &[&str]) -> Serve {
        let root = tempfile::tempdir().unwrap();
        let script =
            format!("{prefix} root=\"$1\"; shift; exec \"$0\" serve --listen 127.0.0.1:0 --root \"$root\" \"$@\"");
        let mut child = Command::new("sh")
            .args(["-c", &script, BIN])
            .arg(root.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        Serve { child, addr, _root: root }
    }

    /// Sends SIGTERM to our own child, by PID, and waits for it.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
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

#[test]
fn echo_text_stdin_and_upper_through_a_served_process() {
    let server = Serve::start(&[]);
    let out = framewire(&["echo", &server.addr, "hello world"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello world\n");

    let out = framewire(&["echo", "--upper", &server.addr, "make me loud"]);
    assert_eq!(out.stdout, b"MAKE ME LOUD\n");

    // A file on stdin (3 MiB, not a multiple of any buffer size) streams.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    let data: Vec<u8> = (0..3_000_017u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let out = Command::new(BIN)
        .args(["echo", &server.addr, "-"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout == data, "file echo differs");

    // A pipe on stdin.
    let mut child = Command::new(BIN)
        .args(["echo", &server.addr, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"through a pipe").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"through a pipe");

    let (status, log) = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("SIGTERM received") && log.contains("server stopped"), "{log}");
}

/// Out of file descriptors, accept fails: the server logs it, backs off,
/// and serves again once descriptors are free.
#[test]
fn accept_errors_are_survived() {
    let server = Serve::start_under("ulimit -n 24;", &[]);
    let hogs: Vec<_> = (0..40).map(|_| std::net::TcpStream::connect(&server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = framewire(&["echo", &server.addr, "back in business"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.stdout, b"back in business\n", "{out:?}");
    let (status, log) = server.terminate();
    assert!(status.success());
    assert!(log.contains("accept failed") && log.contains("retry_in"), "{log}");
}

#[test]
fn client_error_is_one_line_and_nonzero() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = framewire(&["echo", &addr, "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("framewire: error: cannot connect to"), "{err}");
}

#[test]
fn serve_refuses_a_missing_root() {
    let out = framewire(&["serve", "--listen", "127.0.0.1:0", "--root", "/nonexistent/framewire-test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve /nonexistent/framewire-test"), "{err}");
}

#[test]
fn demo_sticky_reproduces_all_four_cases() {
    let out = framewire(&["demo", "sticky"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for case in ["(a) Sticky packets", "(b) Half packets", "(c) The same traffic", "(d) UDP"] {
        assert!(text.contains(case), "{case} missing:\n{text}");
    }
    assert_eq!(text.matches("[as expected]").count(), 4, "{text}");
    assert!(text.contains("ipconfig's output bled into the reply to `dir`"), "{text}");
    assert!(text.contains(r#"decoded: ["ls", "pwd", "whoami", "date", "uptime"]"#), "{text}");
}

#[test]
fn help_and_version() {
    let out = framewire(&["--version"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("framewire {}", env!("CARGO_PKG_VERSION")));
    for sub in [&["serve"][..], &["echo"], &["demo"], &["demo", "sticky"], &["demo", "echo"]] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = framewire(&args);
        assert!(out.status.success(), "{sub:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: framewire"), "{sub:?}");
    }
}
