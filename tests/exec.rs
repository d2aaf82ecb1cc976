//! Remote command execution against a real server: streaming, stdin, exit
//! codes, and the process group killed on timeout, cancel, disconnect and
//! shutdown.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{rss_kib, wait_gone, TestServer};
use framewire::client::{ExecIo, ExecOptions};
use framewire::proto::ExitReason;
use framewire::proto::{self, AnyMessage as Message};
use framewire::wire::{FrameReader, FrameWriter, Preface};
use framewire::{Client, ErrorCode};
use tokio::io::AsyncWrite;

async fn exec_server() -> TestServer {
    TestServer::start_with(|c| {
        c.allow_exec = true;
        c.insecure = true;
    })
    .await
}

/// An output sink that notes when each piece arrived.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<Piece>>>);

/// When a piece of output arrived, and what it was.
type Piece = (Instant, Vec<u8>);

impl AsyncWrite for Timeline {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().push((Instant::now(), buf.to_vec()));
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Timeline {
    /// Everything written so far.
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().iter().flat_map(|(_, b)| b.clone()).collect()
    }

    /// Waits (10 s at most) until what was written satisfies `done`.
    async fn until(&self, done: impl Fn(&[u8]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.bytes()) {
            assert!(Instant::now() < deadline, "not written within 10 s: {:?}", String::from_utf8_lossy(&self.bytes()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A sink that counts bytes and keeps none.
#[derive(Default)]
struct Count(u64);

impl AsyncWrite for Count {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn stdout_stderr_apart_and_exit_code() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let out = client.exec_output("echo out; echo err >&2; pwd; exit 3", &ExecOptions::default()).await.unwrap();
    let root = server.root.path().canonicalize().unwrap();
    assert_eq!(out.stdout, format!("out\n{}\n", root.display()).into_bytes(), "runs in the served root");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!((out.status.status, out.status.reason, out.status.code()), (Some(3), ExitReason::Exited, 3));

    // A signal is reported as 128 + N, as shells do.
    let out = client.exec_output("kill -TERM $$", &ExecOptions::default()).await.unwrap();
    assert_eq!((out.status.signal, out.status.code()), (Some(15), 143));

    // Non-UTF-8 output passes through as bytes.
    let out = client.exec_output(r"printf '\377\376\000x'", &ExecOptions::default()).await.unwrap();
    assert_eq!(out.stdout, b"\xff\xfe\x00x");

    // Several commands on one connection, one after another.
    let out = client.exec_output("true", &ExecOptions::default()).await.unwrap();
    assert!(out.status.success());
}

/// Each line reaches the client when it is printed, not at the end: the
/// command prints its second line only once the client has received its
/// first (it waits for a line of stdin, sent only then). Output gathered
/// until the end would never come.
#[tokio::test]
async fn output_streams_while_the_command_runs() {
    use tokio::io::AsyncWriteExt;
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let out = Timeline::default();
    let (mut o, mut e) = (out.clone(), Count::default());
    let (mut stdin, mut feed) = tokio::io::duplex(64);
    let seen = out.clone();
    let go = tokio::spawn(async move {
        seen.until(|b| b.starts_with(b"one\n")).await;
        feed.write_all(b"go\n").await.unwrap();
    });
    let io = ExecIo { stdin: Some(&mut stdin), stdout: &mut o, stderr: &mut e, cancel: None, resize: None };
    let options = ExecOptions::default();
    let run = client.exec("echo one; read x; echo two", &options, io);
    let status = tokio::time::timeout(Duration::from_secs(20), run).await.expect("the output was held back").unwrap();
    assert!(status.success());
    go.await.unwrap();
    assert_eq!(out.bytes(), b"one\ntwo\n");
}

#[tokio::test]
async fn stdin_is_forwarded_with_eof() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let input: Vec<u8> = (0..3_000_001u32).map(|i| (i % 256) as u8).collect();
    let mut stdin = &input[..];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo { stdin: Some(&mut stdin), stdout: &mut out, stderr: &mut err, cancel: None, resize: None };
    let status = client.exec("wc -c; cat >/dev/null", &ExecOptions::default(), io).await.unwrap();
    assert!(status.success(), "{status:?} {}", String::from_utf8_lossy(&err));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "3000001");

    // A command that ignores its stdin still finishes, and the connection
    // stays usable for the next request.
    let mut stdin = &input[..];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo { stdin: Some(&mut stdin), stdout: &mut out, stderr: &mut err, cancel: None, resize: None };
    let status = client.exec("echo ignored", &ExecOptions::default(), io).await.unwrap();
    assert!(status.success());
    assert_eq!(client.echo(b"after").await.unwrap(), "after");
}

/// 200 MiB of output streams through with bounded memory on both sides
/// (both run in this process: its resident memory must not grow by
/// anything near the output's size).
#[tokio::test]
async fn large_output_streams_in_bounded_memory() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let before = rss_kib();
    let (mut out, mut err) = (Count::default(), Count::default());
    let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, cancel: None, resize: None };
    let status = client.exec("head -c 209715200 /dev/zero", &ExecOptions::default(), io).await.unwrap();
    assert!(status.success());
    assert_eq!(out.0, 200 << 20);
    let grew = rss_kib().saturating_sub(before);
    // Other tests run in this process at the same time: the margin is wide,
    // but far below the 200 MiB that buffering would take.
    assert!(grew < 100 * 1024, "resident memory grew by {grew} KiB for 200 MiB of output");
}

/// Parses the pids a command printed, one per line.
fn pids(bytes: &[u8]) -> Vec<u32> {
    String::from_utf8_lossy(bytes).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let started = Instant::now();
    let out = client
        .exec_output(
            "sleep 100 & echo $!; echo $$; sleep 100",
            // Long enough for the shell to have printed both pids.
            &ExecOptions::with_timeout(Some(Duration::from_secs(2))),
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.reason, ExitReason::Timeout);
    assert_eq!(out.status.code(), 137, "killed by SIGKILL");
    let pids = pids(&out.stdout);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(wait_gone(pid, Duration::from_secs(5)).await, "process {pid} survived the timeout");
    }
}

#[tokio::test]
async fn cancel_kills_the_whole_group() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let out = Timeline::default();
    let (mut o, mut e) = (out.clone(), Count::default());
    // Cancelled once the background process's pid has come.
    let printed = out.clone();
    let mut cancel = std::pin::pin!(async move { printed.until(|b| pids(b).len() == 1 && b.ends_with(b"\n")).await });
    let io = ExecIo { stdin: None, stdout: &mut o, stderr: &mut e, cancel: Some(cancel.as_mut()), resize: None };
    let status = client.exec("sleep 100 & echo $!; sleep 100", &ExecOptions::default(), io).await.unwrap();
    assert_eq!(status.reason, ExitReason::Cancelled);
    let pid = pids(&out.bytes())[0];
    assert!(wait_gone(pid, Duration::from_secs(5)).await, "background process survived the cancel");
    assert_eq!(client.echo(b"still usable").await.unwrap(), "still usable");
}

#[tokio::test]
async fn dropped_connection_kills_the_whole_group() {
    let server = exec_server().await;
    let sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (read, write) = sock.into_split();
    let mut w = FrameWriter::new(write);
    let mut r = FrameReader::new(read);
    w.feed_preface(Preface::default());
    w.send(
        &Message::Exec(proto::Exec {
            command: "sleep 100 & echo $!; echo $$; sleep 100".into(),
            timeout_ms: None,
            login: false,
        }),
        &[],
    )
    .await
    .unwrap();
    r.read_preface().await.unwrap();
    let mut seen = Vec::new();
    while pids(&seen).len() < 2 {
        let (m, _) = r.read_head::<Message>().await.unwrap().unwrap();
        assert!(matches!(m, Message::Stdout(proto::Stdout { .. })), "{m:?}");
        seen.extend_from_slice(&r.read_body(1 << 20).await.unwrap());
    }
    drop((r, w));
    for pid in pids(&seen) {
        assert!(wait_gone(pid, Duration::from_secs(5)).await, "process {pid} survived the client leaving");
    }
}

/// At the drain deadline a running command is killed and the client told.
#[tokio::test]
async fn shutdown_kills_running_commands_after_the_drain() {
    let mut server = TestServer::start_with(|c| {
        c.allow_exec = true;
        c.insecure = true;
        c.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    // Shut down once the command runs (it has written its pid).
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let command = format!("echo $$; echo $$ > {}; sleep 100", pidfile.display());
    let run = tokio::spawn(async move { client.exec_output(&command, &ExecOptions::default()).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read(&pidfile).is_ok_and(|b| b.ends_with(b"\n")) {
        assert!(Instant::now() < deadline, "the command did not start within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.unwrap().unwrap().unwrap();
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.status.reason, ExitReason::Shutdown);
    let pid = pids(&out.stdout)[0];
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn exec_is_refused_unless_allowed() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let err = client.exec_output("touch pwned", &ExecOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExecDisabled));
    // The library's words name no CLI flag (the CLI adds its own hint).
    assert!(err.to_string().contains("exec is not allowed on this server"), "{err}");
    assert!(!err.to_string().contains("--"), "{err}");
    assert!(!server.root.path().join("pwned").exists());
    assert_eq!(client.echo(b"ok").await.unwrap(), "ok");
}

/// A command whose own stdin is a large file it reads slowly: the client's
/// stdin stream is throttled by TCP, nothing is buffered without bound,
/// and every byte arrives.
#[tokio::test]
async fn slow_reader_of_stdin_gets_every_byte() {
    let server = exec_server().await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let input = vec![b'x'; 20 << 20];
    let mut stdin = &input[..];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo { stdin: Some(&mut stdin), stdout: &mut out, stderr: &mut err, cancel: None, resize: None };
    let status = client.exec("sleep 0.5; wc -c", &ExecOptions::default(), io).await.unwrap();
    assert!(status.success());
    assert_eq!(String::from_utf8_lossy(&out).trim(), (20 << 20).to_string());
}

/// A server that predates terminals answers their requests `unknown_type`:
/// the library says so in a typed error and the connection goes on; the
/// CLI says "this server has no terminal support" (exec -t fails with
/// 255; shell falls back to one command a line).
#[tokio::test]
async fn a_server_without_terminals_is_told_apart() {
    let server = TestServer::start_with(|c| {
        c.allow_exec = true;
        c.insecure = true;
        c.terminal_requests = false;
    })
    .await;
    let mut client = Client::connect(&server.addr()).await.unwrap();
    let size = framewire::client::WindowSize { rows: 24, cols: 80 };
    let e = client.request_pty("xterm", size).await.unwrap_err();
    assert!(matches!(e, framewire::ClientError::NoTerminalSupport), "{e:?}");
    let e = client.set_env(&[("LANG".into(), "C".into())]).await.unwrap_err();
    assert!(matches!(e, framewire::ClientError::NoTerminalSupport), "{e:?}");
    let out = client.exec_output("tty", &ExecOptions::default()).await.unwrap();
    assert_eq!(out.stdout, b"not a tty\n", "the connection is still usable");

    let addr = server.addr();
    let out = tokio::task::spawn_blocking(move || common::framewire(&["exec", "-tt", "-n", &addr, "--", "tty"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("this server has no terminal support"), "{out:?}");

    // `shell` on a terminal: the notice, then the line mode.
    let addr = server.addr();
    let seen = tokio::task::spawn_blocking(move || {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["shell", &addr]).env("HOME", home.path()).env("TERM", "xterm");
        let (mut tty, mut child) = common::Pty::spawn(&mut cmd);
        tty.expect("this server has no terminal support");
        tty.expect(">>> ");
        tty.send(b"echo $((6*7))\r");
        tty.expect("42");
        tty.send(b"exit\r");
        tty.wait(&mut child)
    })
    .await
    .unwrap();
    assert!(seen.success(), "{seen:?}");
}

/// The variables of `env`'s output, by name.
fn env_of(out: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A command gets a clean login environment as sshd gives (PATH, HOME,
/// USER, LOGNAME, SHELL, the accepted `env` names, TERM only on a
/// terminal), never the server's own variables: a server holding an
/// object store's secret in its environment (issue 28, point 4) does not
/// hand it to `exec -- env`.
#[tokio::test]
async fn commands_get_a_login_environment_not_the_servers() {
    let server = tokio::task::spawn_blocking(|| {
        common::Serve::start_under(
            "export AWS_SECRET_ACCESS_KEY=s3cr3t FW_SERVER_ONLY=mine TERM=server-term LANG=C.UTF-8;",
            &["--allow-exec", "--insecure", "--accept-env", "FOO"],
        )
    })
    .await
    .unwrap();
    let mut client = Client::connect(&server.addr).await.unwrap();
    let out = client.exec_output("env", &ExecOptions::default()).await.unwrap();
    let env = env_of(&out.stdout);
    for secret in ["AWS_SECRET_ACCESS_KEY", "FW_SERVER_ONLY", "TERM", "LANG"] {
        assert!(!env.contains_key(secret), "{secret} leaked from the server: {env:?}");
    }
    let names: Vec<_> = env.keys().filter(|k| !matches!(k.as_str(), "PWD" | "SHLVL" | "_" | "OLDPWD")).collect();
    assert_eq!(names, ["HOME", "LOGNAME", "PATH", "SHELL", "USER"], "{env:?}");
    let me = framewire_user();
    assert_eq!((env["USER"].as_str(), env["LOGNAME"].as_str()), (me.0.as_str(), me.0.as_str()));
    assert_eq!(env["HOME"], me.1);
    assert!(env["PATH"].split(':').any(|d| d == "/usr/bin"), "{env:?}");

    // Names the client sends and the server accepts are added; on a
    // terminal, TERM is the terminal's.
    let set = client.set_env(&[("FOO".into(), "bar".into()), ("LANG".into(), "C".into())]).await.unwrap();
    assert_eq!(set.accepted, ["FOO", "LANG"]);
    let size = framewire::client::WindowSize { rows: 24, cols: 80 };
    client.request_pty("xterm-test", size).await.unwrap();
    let out = client.exec_output("env", &ExecOptions::default()).await.unwrap();
    let env = env_of(&out.stdout);
    assert_eq!(env.get("TERM").map(String::as_str), Some("xterm-test"), "{env:?}");
    assert_eq!(env.get("FOO").map(String::as_str), Some("bar"), "{env:?}");
    assert_eq!(env.get("LANG").map(String::as_str), Some("C"), "{env:?}");
    assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"), "{env:?}");
    // What the env request set was for that exec only.
    let out = client.exec_output("env", &ExecOptions::default()).await.unwrap();
    assert!(!env_of(&out.stdout).contains_key("FOO"), "{out:?}");
}

/// The name and home directory of the user this test runs as, from the
/// password database (`getent passwd UID`).
fn framewire_user() -> (String, String) {
    let uid = rustix::process::geteuid().as_raw().to_string();
    let out = std::process::Command::new("getent").args(["passwd", &uid]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<_> = line.trim().split(':').collect();
    (fields[0].to_owned(), fields[5].to_owned())
}

/// `env_set` lists names in byte order (a JSON object's member order
/// means nothing), and a name given twice in one `env` is set once, to the
/// last value (PROTOCOL.md §4.4.1, issue 28: the spec said "in the order
/// sent" and did not say which duplicate wins).
#[tokio::test]
async fn env_set_lists_names_sorted_and_the_last_duplicate_wins() {
    let server = exec_server().await;
    let sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (read, write) = sock.into_split();
    use tokio::io::AsyncWriteExt;
    let (mut r, mut w) = (FrameReader::new(read), FrameWriter::new(write));
    let header = br#"{"type":"env","vars":{"LC_B":"1","LANG":"C","LC_B":"2","NOPE":"x"}}"#;
    w.get_mut().write_all(&Preface::default().encode()).await.unwrap();
    let mut raw = (header.len() as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(header);
    w.get_mut().write_all(&raw).await.unwrap();
    r.read_preface().await.unwrap();
    match r.read_head::<Message>().await.unwrap().unwrap().0 {
        Message::EnvSet(proto::EnvSet { accepted, refused }) => {
            assert_eq!((accepted, refused), (vec!["LANG".to_owned(), "LC_B".to_owned()], vec!["NOPE".to_owned()]));
        }
        other => panic!("{other:?}"),
    }
    let exec = proto::Exec { command: "echo \"$LC_B\"".into(), timeout_ms: None, login: false };
    w.send(&Message::Exec(exec), &[]).await.unwrap();
    w.send(&Message::Stdin(proto::Stdin { len: 0, eof: true }), &[]).await.unwrap();
    let mut out = Vec::new();
    loop {
        match r.read_head::<Message>().await.unwrap().unwrap().0 {
            Message::Stdout(_) => out.extend_from_slice(&r.read_body(1 << 20).await.unwrap()),
            Message::Exit(_) => break,
            _ => {}
        }
    }
    assert_eq!(out, b"2\n");
}
