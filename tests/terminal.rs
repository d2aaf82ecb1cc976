//! Remote terminals as ssh users expect them (`exec -t`, `shell`), on real
//! pseudo-terminals driven by the test: the client runs on one the test
//! made (its controlling terminal, as in a terminal emulator), against a
//! real `framewire serve`, which gives the remote command a terminal of
//! its own.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{framewire, process_gone, Pty, Serve, BIN};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The session id in a `/proc/PID/stat` line (after the parenthesised
/// command name).
fn session_of(stat: &str) -> i32 {
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// A server for commands whose interactive shell is bash, interactive
/// (job control on), with a plain prompt to wait for and none of the
/// machine's start-up files.
fn exec_server() -> Serve {
    let dir = tempfile::tempdir().unwrap().keep();
    let shell = dir.join("fwsh");
    std::fs::write(&shell, "#!/bin/sh\nPS1='fw$ ' exec bash --noprofile --norc -i\n").unwrap();
    std::fs::set_permissions(&shell, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Serve::start(&["--allow-exec", "--insecure", "--login-shell", shell.to_str().unwrap()])
}

/// `framewire shell ADDR` on a fresh 24x80 terminal, at its first prompt.
fn shell_session(server: &Serve, extra: &[&str]) -> (Pty, std::process::Child) {
    let mut cmd = Command::new(BIN);
    cmd.arg("shell").args(extra).arg(&server.addr).env("TERM", "xterm");
    let (mut tty, child) = Pty::spawn(&mut cmd);
    tty.expect("fw$ ");
    (tty, child)
}

#[test]
fn without_a_terminal_a_command_has_none_and_a_session_of_its_own() {
    let server = exec_server();
    let out = framewire(&["exec", &server.addr, "--", "tty; cat /proc/$$/stat; echo x >/dev/tty && echo wrote"]);
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("not a tty"), "{out:?}");
    let remote = session_of(lines.next().unwrap());
    let own = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
    assert_ne!(remote, session_of(&own), "the command runs in a session of its own, not the server's");
    assert!(!stdout.contains("wrote"), "/dev/tty fails at once: {out:?}");
    assert!(text(&out.stderr).contains("/dev/tty"), "{out:?}");

    // -t with stdin not a terminal: none, and a note; -T: none.
    let out = framewire(&["exec", "-t", &server.addr, "--", "tty"]);
    assert_eq!(text(&out.stdout), "not a tty\n", "{out:?}");
    assert!(text(&out.stderr).contains("use -tt"), "{out:?}");
    let out = framewire(&["exec", "-T", &server.addr, "--", "tty"]);
    assert_eq!(text(&out.stdout), "not a tty\n", "{out:?}");
    // -tt forces one, with the default 24x80 and the exit code passed on.
    let out = framewire(&["exec", "-tt", "-n", &server.addr, "--", "tty; stty size; exit 5"]);
    let shown = text(&out.stdout);
    assert!(shown.starts_with("/dev/pts/") && shown.contains("24 80"), "{out:?}");
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn exec_t_gives_a_terminal_of_the_client_window_and_puts_the_settings_back() {
    let server = exec_server();
    let mut tty = Pty::open(30, 100);
    let before = tty.stty_g();
    let mut child = tty.start(Command::new(BIN).args(["exec", "-t", &server.addr, "--", "tty; stty size; exit 3"]));
    tty.expect("/dev/pts/");
    tty.expect("30 100");
    let status = tty.wait(&mut child);
    assert_eq!(status.code(), Some(3), "the remote exit code");
    assert_eq!(tty.stty_g(), before, "the local terminal's settings are restored");
}

#[test]
fn a_real_shell_cd_persists_resizes_follow_ctrl_c_interrupts_exit_code_returns() {
    let server = exec_server();
    let before = Pty::open(24, 80).stty_g();
    let (mut tty, mut child) = shell_session(&server, &[]);
    // A terminal of the client's size, and the state of a real shell.
    // Each answer read up to the prompt after it, so that the next
    // `expect` cannot match a prompt left over from before; what the
    // commands print is told from their echo by shell arithmetic and
    // quotes the echo does not expand.
    tty.send(b"tty; stty size\r");
    tty.expect("/dev/pts/");
    tty.expect("24 80");
    tty.expect("fw$ ");
    tty.send(b"cd /tmp\r");
    tty.expect("fw$ ");
    tty.send(b"pwd\r");
    tty.expect("\r/tmp\r\n");
    tty.expect("fw$ ");
    // The local window changes: the remote one follows (a frame away:
    // asked again until it has come, 10 s at most).
    tty.resize(40, 120);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tty.send(b"echo \"s\"\"z\" $(stty size) \"e\"\"nd\"\r");
        let size = tty.line_after("sz ");
        tty.expect("fw$ ");
        if size == "40 120 end" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the remote terminal is still {size:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C is a character for the remote terminal: it interrupts the
    // remote command once it runs, and the prompt comes back.
    // The process that says it runs is the one interrupted (it becomes
    // `sleep`), so the Ctrl-C cannot come before the command.
    tty.send(b"sh -c 'echo started-$((2+3)); exec sleep 100'; echo not-$((6*7))-interrupted\r");
    tty.expect("started-5");
    tty.send(b"\x03");
    tty.expect_within("fw$ ", Duration::from_secs(5));
    tty.send(b"echo done-$((1+1))\r");
    tty.expect("done-2");
    tty.expect("fw$ ");
    assert!(!tty.all.contains("not-42-interrupted"), "{:?}", tty.all);
    // A full-screen program starts and quits.
    std::fs::write(server.root.path().join("page.txt"), "a page for less\n".repeat(100)).unwrap();
    tty.send(b"cd - >/dev/null; less page.txt\r");
    tty.expect("a page for less");
    tty.send(b"q");
    tty.send(b"echo back-from-less\r");
    tty.expect("back-from-less");
    tty.send(b"exit 3\r");
    let status = tty.wait(&mut child);
    assert_eq!(status.code(), Some(3), "`exit 3` ends the client with 3: {:?}", tty.seen);
    assert_eq!(tty.stty_g(), before, "the local terminal's settings are restored");
}

#[test]
fn a_killed_server_leaves_the_local_terminal_as_it_was() {
    let mut server = exec_server();
    let (mut tty, mut child) = shell_session(&server, &[]);
    let before = Pty::open(24, 80).stty_g();
    tty.send(b"echo alive\r");
    tty.expect("alive");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let status = tty.wait(&mut child);
    assert_eq!(status.code(), Some(255), "framewire's own failure: {:?}", tty.seen);
    assert_eq!(tty.stty_g(), before, "the local terminal's settings are restored");
}

#[test]
fn a_terminated_client_kills_the_remote_session_with_its_jobs() {
    let server = exec_server();
    let (mut tty, mut child) = shell_session(&server, &[]);
    // A background job: bash gives it a process group of its own.
    let before = Pty::open(24, 80).stty_g();
    tty.send(b"sleep 100 & echo job=$!\r");
    // The echo of the typed line first, then the output.
    tty.expect("job=$!");
    let pid: u32 = tty.line_after("job=").trim().parse().unwrap();
    assert!(!process_gone(pid));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    tty.wait(&mut child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(std::time::Instant::now() < deadline, "the remote job {pid} outlived its session");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tty.stty_g(), before, "the local terminal's settings are restored");
}

#[test]
fn environment_variables_only_where_the_server_accepts_them() {
    let server = exec_server();
    let a = server.addr.as_str();
    let out = framewire(&["exec", "-e", "LC_ALL=C", "-e", "FOO=bar", a, "--", "echo \"[$LC_ALL][$FOO]\""]);
    assert_eq!(text(&out.stdout), "[C][]\n", "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("refused to set FOO"), "{err:?}");

    let server = Serve::start(&["--allow-exec", "--insecure", "--accept-env", "FO?"]);
    let out = framewire(&["exec", "-e", "FOO=bar", "-e", "BAD-NAME=x", &server.addr, "--", "echo \"[$FOO]\""]);
    assert_eq!(text(&out.stdout), "[bar]\n", "{out:?}");
    assert!(text(&out.stderr).contains("refused to set BAD-NAME"), "{out:?}");

    let out = framewire(&["exec", "-e", "novalue", &server.addr, "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
}

#[test]
fn shell_lines_keeps_the_tutorial_loop_and_is_what_a_pipe_gets() {
    let server = exec_server();
    let out = Command::new(BIN)
        .args(["shell", &server.addr])
        .env("HOME", server.root.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"cd /tmp\npwd\n")?;
            c.wait_with_output()
        })
        .unwrap();
    // One exec per line: `cd` does not carry over, as in the tutorial.
    assert_ne!(text(&out.stdout).trim(), "/tmp", "{out:?}");
    assert!(out.status.success(), "{out:?}");
}
