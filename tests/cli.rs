//! The `framewire` binary as a user runs it: real processes, real sockets.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{framewire, Serve, BIN};

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
/// and serves again once descriptors are free. (The hogs send their
/// preface and hold sessions: silent ones would be evicted to make room.)
#[test]
fn accept_errors_are_survived() {
    let server = Serve::start_under("ulimit -n 24;", &[]);
    let preface = framewire::wire::Preface::default().encode();
    let hogs: Vec<_> = (0..40)
        .map(|_| {
            let mut hog = std::net::TcpStream::connect(&server.addr).unwrap();
            let _ = hog.write_all(&preface);
            hog
        })
        .collect();
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

/// `serve` takes every descriptor its hard limit allows (every silent
/// connection at the door is one, and the silent sets are sized from the
/// limit), and a command it runs gets the limit it was started with.
#[test]
fn serve_raises_its_open_file_limit_and_commands_get_the_original_back() {
    let server = Serve::start_under("ulimit -Sn 256;", &["--allow-exec", "--insecure"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "raised to the hard limit: {line}");
    assert_ne!(soft, "256", "{line}");
    let out = framewire(&["exec", &server.addr, "--", "ulimit -Sn"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "256\n", "{out:?}");
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

/// Completion scripts for every shell clap_complete knows, the bash one
/// accepted by `bash -n` and naming the subcommands; a man page that
/// `man -l` renders without warnings (where man is installed).
/// Every subcommand's --help ends with examples; serve's options come
/// in groups; --bwlimit and -j only where a copy is made.
#[test]
fn help_has_examples_and_groups() {
    for sub in ["serve", "echo", "exec", "shell", "ls", "get", "put", "rm", "mv", "mkdir", "keygen", "config"] {
        let out = framewire(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub}: {out:?}");
        let examples = help.split_once("Examples:\n").map(|(_, e)| e).unwrap_or_else(|| panic!("{sub}: {help}"));
        let first = examples.lines().next().unwrap();
        assert!(first.starts_with("  framewire "), "{sub}: {first}");
    }
    let serve = String::from_utf8_lossy(&framewire(&["serve", "--help"]).stdout).into_owned();
    for heading in ["Where:", "Limits:", "Commands:", "Files:", "Keys and TLS:", "Tutorial formats:", "Logging:"] {
        assert!(serve.contains(&format!("\n{heading}\n")), "no {heading} in {serve}");
    }
    for sub in ["get", "put"] {
        let help = String::from_utf8_lossy(&framewire(&[sub, "--help"]).stdout).into_owned();
        assert!(help.contains("--bwlimit <RATE>") && help.contains("--jobs <N>"), "{help}");
    }
    for sub in ["ls", "exec", "rm"] {
        let help = String::from_utf8_lossy(&framewire(&[sub, "--help"]).stdout).into_owned();
        assert!(!help.contains("--bwlimit"), "{sub}: {help}");
    }
}

#[test]
fn completions_and_the_man_page() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = framewire(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}: {out:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("framewire.bash");
    std::fs::write(&script, framewire(&["completions", "bash"]).stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "{check:?}");
    let text = std::fs::read_to_string(&script).unwrap();
    for sub in ["exec", "shell", "put", "get", "rm", "mv", "mkdir", "serve"] {
        assert!(text.contains(sub), "{sub} completed");
    }

    let out = framewire(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = dir.path().join("framewire.1");
    std::fs::write(&page, &out.stdout).unwrap();
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("man is not installed: the page is not rendered");
        return;
    }
    let shown = Command::new("man").args(["--warnings", "-l"]).arg(&page).env("MANWIDTH", "80").output().unwrap();
    assert!(shown.status.success(), "{shown:?}");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("framewire"), "{shown:?}");
    assert!(shown.stderr.is_empty(), "man warned: {}", String::from_utf8_lossy(&shown.stderr));
}

/// The systemd unit in contrib/ passes `systemd-analyze verify` (with its
/// ExecStart pointed at this build), where systemd is installed.
#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed: contrib/framewire.service is not verified");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/framewire.service")).unwrap();
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"), "hardened");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("framewire.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/framewire", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}
