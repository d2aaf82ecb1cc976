//! The agent commands as a user runs them: `serve`, `exec`, `shell`, `ls`,
//! `get`, `put` as real processes on loopback.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{framewire, on_small_disk, pattern, process_gone, Pty, Serve, SmallDiskServer, BIN};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_streams_codes_and_quoting() {
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let a = server.addr.as_str();

    let out = framewire(&["exec", a, "--", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");

    let out = framewire(&["exec", a, "--", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "128 + SIGTERM");

    // Several arguments: exactly that argv, whatever the quotes.
    let out = framewire(&["exec", a, "--", "printf", "%s|", "a b", "it's", "$HOME", ";"]);
    assert_eq!(text(&out.stdout), "a b|it's|$HOME|;|");

    // One argument: a shell command line with pipes.
    let out = framewire(&["exec", a, "--", "printf 'x\\ny\\nz\\n' | wc -l"]);
    assert_eq!(text(&out.stdout).trim(), "3");

    // stdin from a file, EOF passed on.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, pattern(2_000_003, 1)).unwrap();
    let out = Command::new(BIN)
        .args(["exec", a, "--", "wc", "-c"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "2000003", "{out:?}");

    // -n: stdin not forwarded, the command sees EOF at once.
    let out = Command::new(BIN).args(["exec", "-n", a, "--", "cat"]).stdin(Stdio::piped()).output().unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    let out = framewire(&["exec", a, "--timeout", "0.5", "--", "sleep 100"]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(text(&out.stderr).contains("timed out after 500ms; its process group was killed"), "{out:?}");
}

#[test]
fn exec_refused_and_unreachable_exit_255() {
    let server = Serve::start(&[]);
    let out = framewire(&["exec", &server.addr, "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("exec is not allowed on this server"), "{err}");
    assert!(err.contains("the server must be started with --allow-exec"), "{err}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = framewire(&["exec", &addr, "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("cannot connect to"), "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "each cause once: {err}");
}

/// `framewire get ADDR FILE - | head -c 1000`: the closed pipe ends the
/// download at once (not after the rest of the file has come), with one
/// line naming the cause and a non-zero exit.
/// Runs framewire with `args`, reads the first `n` bytes of its stdout,
/// then closes it (the reader goes away, as `head` does) and waits.
fn read_then_close(args: &[&str], n: usize) -> std::process::Output {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    std::io::Read::read_exact(&mut stdout, &mut vec![0u8; n]).unwrap();
    drop(stdout);
    child.wait_with_output().unwrap()
}

#[test]
fn get_into_a_closed_pipe_stops_at_once() {
    let server = Serve::start(&[]);
    // 16 GiB, sparse: reading all of it would take far longer than the
    // limit below.
    std::fs::File::create(server.root.path().join("big")).unwrap().set_len(16 << 30).unwrap();
    let started = Instant::now();
    let out = read_then_close(&["get", "-q", &server.addr, "big", "-"], 1000);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    // Quietly, with the status of a process ended by SIGPIPE.
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// `framewire ls HOST | head` ends quietly with 141 too (it used to panic
/// in `println!`).
#[test]
fn ls_into_a_closed_pipe_ends_quietly() {
    let server = Serve::start(&[]);
    // Far more than a pipe holds.
    for i in 0..4000 {
        std::fs::write(server.root.path().join(format!("{i:05}-{}", "n".repeat(120))), b"").unwrap();
    }
    for json in [false, true] {
        let mut args = vec!["ls", server.addr.as_str()];
        if json {
            args.push("--json");
        }
        let out = read_then_close(&args, 100);
        assert_eq!(out.status.code(), Some(141), "json {json}: {out:?}");
        assert!(out.stderr.is_empty(), "json {json}: {}", text(&out.stderr));
    }
}

/// `framewire exec HOST -- yes | head` ends as `yes | head` does: quietly,
/// 141, and the remote command is killed.
#[test]
fn exec_into_a_closed_pipe_ends_quietly() {
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let out = read_then_close(&["exec", "-n", &server.addr, "--", "echo $$ > pid; exec yes"], 1000);
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let pid: u32 = std::fs::read_to_string(server.root.path().join("pid")).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "the remote `yes` still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, log) = server.terminate();
    assert!(!log.contains("connection failed"), "a reader going away is not a server failure: {log}");
}

/// Ctrl-C (SIGINT to the client process) kills the remote process group,
/// and the client says so and exits 130.
#[test]
fn ctrl_c_interrupts_the_remote_command() {
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let child = Command::new(BIN)
        .args(["exec", "-n", &server.addr, "--", &format!("echo $$ > {}; sleep 100", pidfile.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let remote_pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "remote command never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(text(&out.stderr).contains("interrupted; the remote process group was killed"), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(remote_pid) {
        assert!(Instant::now() < deadline, "remote sleep survived Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shell_runs_lines_and_shows_failures() {
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let mut child = Command::new(BIN)
        .args(["shell", &server.addr])
        .env("HOME", server.root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"echo hello\n\nfalse\necho $((6*7))\nexit\necho never\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("hello\n") && stdout.contains("42\n"), "{stdout}");
    assert!(!stdout.contains("never"), "`exit` leaves the shell: {stdout}");
    assert!(text(&out.stderr).contains("[exit 1]"), "{out:?}");
    assert!(out.status.success(), "the last command succeeded: {out:?}");

    // Ctrl-D (EOF) leaves too.
    let out = Command::new(BIN)
        .args(["shell", &server.addr])
        .env("HOME", server.root.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn ls_get_put_trees_and_several_sources() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    for (i, name) in ["one.txt", "sub/two.txt", "sub/deep/three.bin"].iter().enumerate() {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pattern(1000 * (i + 1) * (i + 1) + 7, i as u8)).unwrap();
    }
    std::fs::write(local.path().join("x.txt"), b"x").unwrap();
    std::fs::write(local.path().join("y.txt"), b"yy").unwrap();

    // put -r of a tree, -j 3; not a terminal, so no progress bars.
    // `tree/`: what is in it (rsync's trailing-slash rule).
    let contents = format!("{}/", tree.display());
    let out = framewire(&["put", "-r", "-j", "3", a, &contents, "up"]);
    assert!(out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("3 file(s)") && err.contains("checksums verified"), "{err}");
    assert!(!err.contains('\r') && !err.contains("[="), "no progress bars off a terminal: {err:?}");
    assert_eq!(
        std::fs::read(server.root.path().join("up/sub/deep/three.bin")).unwrap(),
        std::fs::read(tree.join("sub/deep/three.bin")).unwrap()
    );

    // Several sources at once land in the destination directory.
    let out = framewire(&[
        "put",
        "-q",
        a,
        local.path().join("x.txt").to_str().unwrap(),
        local.path().join("y.txt").to_str().unwrap(),
        "many/",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "--quiet prints nothing: {out:?}");
    assert_eq!(std::fs::read(server.root.path().join("many/y.txt")).unwrap(), b"yy");

    // ls, plain and --json.
    let out = framewire(&["ls", a, "up"]);
    let listing = text(&out.stdout);
    assert!(listing.contains("one.txt") && listing.contains("sub/"), "{listing}");
    let out = framewire(&["ls", "--json", "-r", a, "up"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = entries.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["one.txt", "sub/deep/three.bin", "sub/two.txt"]);
    assert!(entries[0]["size"].as_u64().unwrap() > 0 && entries[0]["mtime"].as_i64().unwrap() > 0);
    assert_eq!(entries[0]["kind"], "file");

    // get -r back, then again: unchanged, skipped; a local edit (newer)
    // is kept under --update (exit 3, named), and replaced by default: the
    // source wins.
    let back = local.path().join("back");
    let out = framewire(&["get", "-r", a, "up/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in ["one.txt", "sub/two.txt", "sub/deep/three.bin"] {
        assert_eq!(std::fs::read(back.join(name)).unwrap(), std::fs::read(tree.join(name)).unwrap(), "{name}");
    }
    let out = framewire(&["get", a, "up/one.txt", back.join("one.txt").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("1 file(s) unchanged"), "{out:?}");
    std::fs::write(back.join("one.txt"), b"a local edit").unwrap();
    let out = framewire(&["get", "-u", a, "up/one.txt", back.join("one.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("1 file(s) not replaced") && err.contains("--force replaces them"), "{err}");
    assert!(err.contains("up/one.txt"), "{err}");
    assert_eq!(std::fs::read(back.join("one.txt")).unwrap(), b"a local edit");
    let out = framewire(&["get", "--ignore-existing", a, "up/one.txt", back.join("one.txt").to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stderr).contains("already there"), "{out:?}");
    assert_eq!(std::fs::read(back.join("one.txt")).unwrap(), b"a local edit");
    let out = framewire(&["get", a, "up/one.txt", back.join("one.txt").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(back.join("one.txt")).unwrap(), std::fs::read(tree.join("one.txt")).unwrap());

    // Several remote sources into a directory, and one to stdout.
    let out = framewire(&["get", "-q", a, "many/x.txt", "many/y.txt", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(back.join("x.txt")).unwrap(), b"x");
    let out = framewire(&["get", a, "many/y.txt", "-"]);
    assert_eq!(out.stdout, b"yy");

    // Errors: one clear line each, non-zero.
    for (args, needle) in [
        (vec!["get", a, "nope.txt", "-"], "nope.txt: no such file or directory"),
        (vec!["get", a, "../etc/passwd", "-"], "`..` is refused"),
        (vec!["get", a, "up", back.to_str().unwrap()], "is a directory (use -r)"),
        (vec!["ls", a, "/etc"], "absolute paths are refused"),
    ] {
        let out = framewire(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // The server logs each refusal with the peer's address.
    let (_, log) = server.terminate();
    assert!(
        log.lines().any(|l| l.contains("peer=127.0.0.1:") && l.contains("refused (not_found): nope.txt: no such file")),
        "{log}"
    );
}

/// A client killed mid-upload leaves no file under the final name, and the
/// next upload resumes from what the server holds.
#[test]
fn killed_upload_leaves_no_final_file_and_resumes() {
    let server = Serve::start(&[]);
    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big.bin");
    std::fs::write(&big, pattern(256 << 20, 9)).unwrap();
    let mut child = Command::new(BIN)
        .args(["put", "-q", &server.addr, big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = server.root.path().join(".big.bin.fwpart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 8 << 20 {
        assert!(Instant::now() < deadline, "upload never started");
        assert!(child.try_wait().unwrap().is_none(), "upload finished before it could be killed");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!server.root.path().join("big.bin").exists(), "no file under the final name");

    let out = framewire(&["put", &server.addr, big.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("resumed (not sent again)"), "{out:?}");
    assert!(std::fs::read(server.root.path().join("big.bin")).unwrap() == std::fs::read(&big).unwrap());
    assert!(!partial.exists());
}

#[test]
fn exit_when_idle_stops_the_server() {
    let mut server = Serve::start(&["--exit-when-idle", "1"]);
    // While a client is connected, the server stays.
    let client = std::net::TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(server.child.try_wait().unwrap().is_none(), "stopped with a client connected");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not stop when idle");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

fn keygen(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let out = framewire(&["keygen", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    path
}

#[test]
fn keys_on_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let line = std::fs::read_to_string(&key).unwrap();
    assert_eq!(line.trim_end().len(), 64, "one line of hex: {line:?}");
    let out = framewire(&["keygen", key.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("already exists"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), line, "never overwritten");

    let k = key.to_str().unwrap();
    let server = Serve::start(&["--allow-exec", "--key-file", k]);
    let a = server.addr.as_str();

    // --key-file, and FRAMEWIRE_KEY_FILE in the environment.
    let out = framewire(&["exec", "--key-file", k, a, "--", "echo keyed"]);
    assert_eq!(text(&out.stdout), "keyed\n", "{out:?}");
    let out = Command::new(BIN).args(["exec", a, "--", "echo via env"]).env("FRAMEWIRE_KEY_FILE", k).output().unwrap();
    assert_eq!(text(&out.stdout), "via env\n", "{out:?}");

    // No key: one clear line.
    let out = framewire(&["ls", a]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the server requires a key: use --key-file"), "{err}");

    // A wrong key.
    let wrong = keygen(dir.path(), "wrong");
    let out = framewire(&["ls", "--key-file", wrong.to_str().unwrap(), a]);
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr).trim(), "framewire: error: authentication failed");

    // A truncated key file.
    let short = dir.path().join("short");
    std::fs::write(&short, &line[..20]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = framewire(&["ls", "--key-file", short.to_str().unwrap(), a]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("expected one line of 64 hex digits"), "{out:?}");

    // A key file others can read.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = framewire(&["ls", "--key-file", wrong.to_str().unwrap(), a]);
    assert!(text(&out.stderr).contains("chmod 600"), "{out:?}");

    // A directory given as the key file is named as one (it was told to
    // `chmod 600 /tmp`).
    let out = framewire(&["ls", "--key-file", "/tmp", a]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("key file /tmp is a directory") && !err.contains("chmod"), "{err}");

    // A keyed client meeting a plaintext server refuses to talk in the clear.
    let plain = Serve::start(&[]);
    let out = framewire(&["ls", "--key-file", k, &plain.addr]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the server has no key and speaks plaintext"), "{out:?}");

    let (status, log) = server.terminate();
    assert!(status.success());
    assert!(log.contains("authentication failed") && log.contains("127.0.0.1"), "failures logged with the peer: {log}");
}

#[test]
fn keyless_policy() {
    let out = framewire(&["serve", "--listen", "127.0.0.1:0", "--allow-exec"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("refusing to allow exec without a key"), "{out:?}");
    let out = framewire(&["serve", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("without a key"), "{out:?}");
    // With --insecure, exec on loopback is served, with a loud warning.
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let out = framewire(&["exec", &server.addr, "--", "true"]);
    assert!(out.status.success());
    let (_, log) = server.terminate();
    assert!(log.contains("INSECURE"), "{log}");
}

/// A real certificate can replace the generated one; the key still
/// authenticates, and a bad certificate file is a clear error.
#[test]
fn own_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let cert = rcgen::generate_simple_self_signed(vec!["files.example".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let server = Serve::start(&[
        "--key-file",
        key.to_str().unwrap(),
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ]);
    let out = framewire(&["ls", "--key-file", key.to_str().unwrap(), &server.addr]);
    assert!(out.status.success(), "{out:?}");

    let out = framewire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        key.to_str().unwrap(),
        "--tls-cert",
        key.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no certificate found") || text(&out.stderr).contains("cannot read certificates"),
        "{out:?}"
    );
}

/// Names and messages a peer chose are shown with their control characters
/// escaped: a file name cannot retitle the terminal, erase a line, or forge
/// lines of a listing, an error, or the server's log. The bytes themselves
/// go through untouched.
#[test]
fn peer_chosen_names_cannot_drive_the_terminal() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let evil = "evil\x1b]0;owned\x07\nforged line\r\u{202e}txt.exe";
    std::fs::create_dir(server.root.path().join("d")).unwrap();
    std::fs::write(server.root.path().join("d").join(evil), b"payload").unwrap();
    std::fs::write(server.root.path().join("d/plain.txt"), b"p").unwrap();
    let shown = "evil\\x1b]0;owned\\x07\\nforged line\\r\\u{202e}txt.exe";

    let out = framewire(&["ls", a, "d"]);
    assert!(out.status.success(), "{out:?}");
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 2, "one line per entry: {listing:?}");
    assert!(listing.contains(shown) && listing.contains("plain.txt"), "{listing:?}");
    assert!(!listing.contains(['\x1b', '\x07', '\r', '\u{202e}']), "{listing:?}");

    // --json gives the name exactly, for scripts.
    let out = framewire(&["ls", "--json", a, "d"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(entries.as_array().unwrap().iter().any(|e| e["name"] == evil), "{entries}");

    // The file itself arrives under its real name, bytes intact.
    let local = tempfile::tempdir().unwrap();
    let out = framewire(&["get", "-r", a, "d/", local.path().join("d").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(local.path().join("d").join(evil)).unwrap(), b"payload");

    // An error naming it (the server's message repeats the name) is one
    // escaped line.
    let out = framewire(&["get", a, &format!("d/{evil}.missing"), "-"]);
    assert_eq!(out.status.code(), Some(255), "framewire's own failure: {out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(&format!("{shown}.missing")) && err.contains("no such file"), "{err:?}");
    assert!(!err.contains(['\x1b', '\x07', '\r', '\u{202e}']), "{err:?}");

    // And so is the server's log of that refusal.
    let (_, log) = server.terminate();
    let refusal: Vec<&str> = log.lines().filter(|l| l.contains("result=refused (")).collect();
    assert_eq!(refusal.len(), 1, "{log}");
    assert!(refusal[0].contains("owned") && !log.contains(['\x07', '\r', '\u{202e}']), "{log:?}");
    assert!(!log.lines().any(|l| l.starts_with("forged")), "{log}");
}

/// `put -r` and `get -r` recreate empty directories, copy a name that is
/// not UTF-8 exactly, make a FIFO where the receiver runs as root, and say
/// what they leave out (with -L symlinks to directories, dangling links).
#[test]
fn trees_keep_empty_directories_and_say_what_they_skip() {
    use std::os::unix::ffi::OsStrExt;
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    for dir in ["a/empty1", "empty2", "b"] {
        std::fs::create_dir_all(t.join(dir)).unwrap();
    }
    std::fs::write(t.join("f.txt"), b"f").unwrap();
    std::fs::write(t.join("b/g.txt"), b"gg").unwrap();
    std::os::unix::fs::symlink("b", t.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("nowhere", t.join("dangling")).unwrap();
    let fifo = t.join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let bad = t.join(std::ffi::OsStr::from_bytes(b"bad\xff"));
    std::fs::write(&bad, b"b").unwrap();

    // -L: links are followed, not copied as links (the default since
    // issue 30, tests/fidelity.rs), and those that cannot be are named.
    let contents = format!("{}/", t.display());
    let out = framewire(&["put", "-r", "-L", a, &contents, "up"]);
    assert!(out.status.success(), "skips are not failures: {out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("dirlink: a symlink to a directory (not followed)"), "{err}");
    assert!(err.contains("dangling: No such file or directory"), "{err}");
    assert!(err.contains("3 file(s)"), "the name that is not UTF-8 is sent too: {err}");
    let up = server.root.path().join("up");
    assert!(up.join("a/empty1").is_dir() && up.join("empty2").is_dir(), "empty directories recreated");
    assert_eq!(std::fs::read(up.join("b/g.txt")).unwrap(), b"gg");
    assert_eq!(std::fs::read(up.join(std::ffi::OsStr::from_bytes(b"bad\xff"))).unwrap(), b"b", "named exactly");
    assert!(!up.join("dirlink").exists() && !up.join("dangling").exists());
    // A FIFO is made where the receiver runs as root (the server here),
    // and otherwise named and skipped.
    use std::os::unix::fs::FileTypeExt;
    if rustix::process::geteuid().is_root() {
        assert!(err.contains("2 path(s) skipped"), "{err}");
        assert!(std::fs::symlink_metadata(up.join("pipe")).unwrap().file_type().is_fifo());
    } else {
        assert!(err.contains("pipe: a special file (kept only by a server running as root)"), "{err}");
        assert!(err.contains("3 path(s) skipped"), "{err}");
    }

    // -q leaves the notes out, not the errors.
    std::fs::remove_file(&bad).unwrap();
    let out = framewire(&["put", "-r", "-q", "--force", a, &contents, "up"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");

    let back = local.path().join("back");
    let out = framewire(&["get", "-r", "-q", a, "up/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(back.join("a/empty1").is_dir() && back.join("empty2").is_dir(), "empty directories recreated");
    assert_eq!(std::fs::read(back.join("f.txt")).unwrap(), b"f");

    // An empty tree on its own.
    let lone = local.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    let out = framewire(&["put", "-r", a, lone.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(server.root.path().join("lone").is_dir());
    let out = framewire(&["get", "-r", a, "lone", local.path().join("lone2").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(local.path().join("lone2").is_dir());
}

/// Issue 28, point 6: `put -r` never follows a symlink out of the tree
/// (here to a file standing for `/etc/hostname`, relative and absolute):
/// each is skipped with one line naming it, escaped, and counted, and the
/// copy exits 0 (a skip is not a failure, as for special files). A link to
/// a file inside the tree is still sent as that file.
#[test]
fn put_never_follows_a_link_out_of_the_tree() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let secret = local.path().join("hostname");
    std::fs::write(&secret, b"secret-host").unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::write(t.join("sub/real.txt"), b"real").unwrap();
    std::os::unix::fs::symlink("../../hostname", t.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(&secret, t.join("abs")).unwrap();
    std::os::unix::fs::symlink("../sub/./real.txt", t.join("sub/inner")).unwrap();
    std::os::unix::fs::symlink("sub/real.txt", t.join("odd\x1b]0;name")).unwrap();
    std::os::unix::fs::symlink("../hostname", t.join("out\x1b[31m")).unwrap();

    // -L follows links to files inside the tree (by default they are
    // copied as links, issue 30; tests/fidelity.rs).
    let contents = format!("{}/", t.display());
    let out = framewire(&["put", "-r", "-L", a, &contents, "up"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = text(&out.stderr);
    let skips: Vec<&str> =
        err.lines().filter(|l| l.contains("a symlink leading out of the tree (not followed)")).collect();
    assert_eq!(skips.len(), 3, "{err}");
    for name in ["sub/up:", "/abs:", "out\\x1b[31m:"] {
        assert!(skips.iter().any(|l| l.starts_with("framewire: skipping ") && l.contains(name)), "{name}: {err}");
    }
    assert!(!err.contains('\x1b'), "names are escaped: {err:?}");
    assert!(err.contains("3 path(s) skipped"), "{err}");
    let up = server.root.path().join("up");
    for name in ["sub/up", "abs", "out\x1b[31m"] {
        assert!(std::fs::symlink_metadata(up.join(name)).is_err(), "{name} is not on the server");
    }
    let all = std::process::Command::new("grep").args(["-r", "secret-host"]).arg(server.root.path()).output().unwrap();
    assert!(all.stdout.is_empty(), "the outside file's bytes never reached the server");
    assert_eq!(std::fs::read(up.join("sub/inner")).unwrap(), b"real", "an inner link is sent as its file");
    assert_eq!(std::fs::read(up.join("odd\x1b]0;name")).unwrap(), b"real");
    assert_eq!(std::fs::read(up.join("sub/real.txt")).unwrap(), b"real");
}

/// Issue 28, point 5: `--delete` with `--exclude`, both ways, keeps an
/// excluded file inside a directory the source lacks, and that directory
/// (rsync: "cannot delete non-empty directory"); what else is in it goes.
#[test]
fn delete_keeps_excluded_files_and_their_directories() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("keep.txt"), b"k").unwrap();
    let contents = format!("{}/", t.display());
    let extras = |base: &Path| {
        std::fs::create_dir_all(base.join("old/deep")).unwrap();
        std::fs::create_dir_all(base.join("gone")).unwrap();
        for name in ["old/keep.log", "old/stale.txt", "old/deep/x", "gone/y", "stale.txt"] {
            std::fs::write(base.join(name), b"x").unwrap();
        }
    };
    let check = |base: &Path, out: &std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(base.join("old/keep.log")).unwrap(), b"x", "the excluded file is kept: {out:?}");
        for gone in ["old/stale.txt", "old/deep", "gone", "stale.txt"] {
            assert!(std::fs::symlink_metadata(base.join(gone)).is_err(), "{gone} is gone: {out:?}");
        }
        assert!(base.join("keep.txt").is_file());
    };

    // Upward: the server's copy has the extras.
    extras(&root.join("m"));
    let out = framewire(&["put", "-r", "-n", "--delete", "--exclude", "keep.log", a, &contents, "m"]);
    let said = text(&out.stdout);
    assert!(said.contains("delete     m/old/stale.txt") && !said.contains("delete     m/old\n"), "{said}");
    let out = framewire(&["put", "-r", "--delete", "--exclude", "keep.log", a, &contents, "m"]);
    check(&root.join("m"), &out);

    // Downward: the local copy has them.
    let dest = local.path().join("dest");
    extras(&dest);
    let out = framewire(&["get", "-r", "--delete", "--exclude", "keep.log", a, "m/", dest.to_str().unwrap()]);
    check(&dest, &out);
}

/// Also found in issue 28: one directory that cannot be read fails
/// neither a whole `get -r` nor `ls -r` on the server's side, nor a
/// `put -r` on the client's: everything else is copied or listed, each
/// unreadable path is named (not the root), the exit code is 1 ("some
/// files failed", rsync's 23), and a mirror then removes nothing. The
/// server (or the client) runs as `nobody` when the tests run as root.
#[test]
fn an_unreadable_directory_is_named_and_the_rest_is_copied() {
    use std::os::unix::fs::PermissionsExt;
    let as_root = unsafe { libc::geteuid() } == 0;
    let wrapper = if as_root { "setpriv --reuid=nobody --regid=nogroup --clear-groups" } else { "" };
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let server = Serve::start_wrapped("", wrapper, &[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    mode(root, 0o777);
    for dir in ["tree/locked", "tree/z", "tree/noexec"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for file in ["tree/a.txt", "tree/locked/hidden.txt", "tree/z/b.txt", "tree/noexec/c.txt"] {
        std::fs::write(root.join(file), b"x").unwrap();
    }
    for dir in ["tree", "tree/z"] {
        mode(&root.join(dir), 0o777);
    }
    mode(&root.join("tree/locked"), 0o000);
    mode(&root.join("tree/noexec"), 0o666);

    let out = framewire(&["ls", "-r", a, "tree"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let listed = text(&out.stdout);
    assert!(listed.contains("a.txt") && listed.contains("z/b.txt") && !listed.contains("hidden"), "{listed}");
    let err = text(&out.stderr);
    assert!(err.contains("tree/locked: permission denied") && err.contains("tree/noexec: permission denied"), "{err}");
    assert_eq!(err.lines().count(), 2, "one line each: {err}");

    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("dest");
    let out = framewire(&["get", "-r", a, "tree", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("tree/locked") && err.contains("permission denied"), "the unreadable path is named: {err}");
    assert!(!err.contains("cannot get : "), "not the root: {err}");
    assert!(dest.join("tree/a.txt").is_file() && dest.join("tree/z/b.txt").is_file(), "the rest is copied: {err}");
    assert!(dest.join("tree/locked").is_dir() && !dest.join("tree/locked/hidden.txt").exists());
    // A mirror removes nothing after such a failure.
    std::fs::write(dest.join("tree/extra"), b"e").unwrap();
    let out = framewire(&["get", "-r", "--delete", a, "tree", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(dest.join("tree/extra").exists(), "{out:?}");

    // The client's own walk, as `nobody` when root.
    let src = local.path().join("src");
    for dir in ["locked", "ok"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::write(src.join("locked/hidden.txt"), b"h").unwrap();
    std::fs::write(src.join("ok/f.txt"), b"f").unwrap();
    for p in [local.path(), &src, &src.join("ok")] {
        mode(p, 0o755);
    }
    mode(&src.join("ok/f.txt"), 0o644);
    mode(&src.join("locked"), 0o000);
    std::fs::create_dir_all(root.join("up/locked")).unwrap();
    std::fs::write(root.join("up/locked/theirs"), b"t").unwrap();
    mode(&root.join("up"), 0o777);
    mode(&root.join("up/locked"), 0o777);
    let contents = format!("{}/", src.display());
    let script = format!("exec {wrapper} \"$0\" put -r --delete \"$1\" \"$2\" up");
    // The client's own config directory is root's: point it elsewhere.
    let out = Command::new("sh")
        .args(["-c", &script, BIN, a, &contents])
        .env("XDG_CONFIG_HOME", local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("src/locked") && err.contains("Permission denied"), "{err}");
    assert_eq!(std::fs::read(root.join("up/ok/f.txt")).unwrap(), b"f", "the rest is sent: {err}");
    assert!(root.join("up/locked/theirs").exists(), "a mirror removes nothing after a failure: {err}");
    mode(&src.join("locked"), 0o755);
    mode(&root.join("tree/locked"), 0o755);
    mode(&root.join("tree/noexec"), 0o755);
}

/// In `shell --lines` on a real terminal, Ctrl-C interrupts the running
/// command, not the shell: the remote command is killed, the prompt comes
/// back, and the next line runs.
#[test]
fn ctrl_c_in_the_shell_interrupts_only_the_command() {
    let server = Serve::start(&["--allow-exec", "--insecure"]);
    let marker = server.root.path().join("ran-after");
    let (mut tty, mut child) = Pty::spawn(
        Command::new(BIN).args(["shell", "--lines", &server.addr]).env("HOME", server.root.path()).env("TERM", "xterm"),
    );
    tty.expect(">>> ");
    let started = Instant::now();
    tty.send(b"sleep 30; touch ran-after\r");
    tty.expect("sleep 30; touch ran-after");
    std::thread::sleep(Duration::from_millis(500));
    tty.send(b"\x03");
    tty.expect("[interrupted: process group killed]");
    tty.expect(">>> ");
    assert!(started.elapsed() < Duration::from_secs(10), "the command was cut short");
    tty.send(b"echo $((40+2))\r");
    tty.expect("42");
    tty.expect(">>> ");
    tty.send(b"exit\r");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the shell did not leave on `exit`");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!marker.exists(), "the rest of the interrupted command line never ran");
}

/// On a terminal (80 columns), transfers draw progress bars that fit it:
/// per file with bytes and rate, and a total for several files; the
/// summary counts resumed bytes apart. (The bar's own "(resumed)" label is drawn only if a refresh
/// falls within that file's short transfer, so it is not asserted.)
#[test]
fn progress_bars_on_a_terminal() {
    let server = Serve::start(&[]);
    let data = pattern(24 << 20, 9);
    for name in ["one", "two"] {
        std::fs::write(server.root.path().join(name), &data).unwrap();
    }
    let local = tempfile::tempdir().unwrap();
    // Half of `one` is already here, from an interrupted download.
    std::fs::write(local.path().join(".one.fwpart"), &data[..12 << 20]).unwrap();
    let (mut tty, mut child) =
        Pty::spawn(Command::new(BIN).args(["get", &server.addr, "one", "two", local.path().to_str().unwrap()]));
    tty.expect("total (2 files)");
    tty.expect("/24.00 MiB");
    tty.expect("/s ETA");
    tty.expect("2 file(s), 36.00 MiB transferred");
    tty.expect("MiB/s), 12.00 MiB resumed (not sent again), checksums verified");
    assert!(tty.wait(&mut child).success());
    // On an 80-column terminal, no bar is wider than the terminal (the
    // label is the file's name, not its path), and one unit family.
    let (width, line) = common::widest_bar(&tty.all);
    assert!(width > 40, "bars were drawn: {:?}", tty.all);
    assert!(width <= 80, "a line {width} columns wide on an 80-column terminal: {line:?}");
    assert!(!tty.all.contains(local.path().to_str().unwrap()), "labels are names, not paths");
    assert!(!tty.all.contains("MB/s"), "binary units everywhere: {:?}", tty.all);
    for name in ["one", "two"] {
        assert_eq!(std::fs::read(local.path().join(name)).unwrap(), data, "{name}");
    }
}

/// A full disk on either side is one clear line and a non-zero exit, with
/// nothing under the final name, and the other side serves on.
#[test]
fn a_full_disk_is_reported_and_leaves_nothing() {
    let server = SmallDiskServer::start();
    let (addr, served) = (server.addr.clone(), server.served());

    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big");
    std::fs::write(&big, pattern(16 << 20, 4)).unwrap();
    let out = framewire(&["put", &addr, big.to_str().unwrap(), "big"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("big: disk full on the server (disk_full)"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&served).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "no final file and no partial taking the space: {left:?}");
    // The space is back: a small upload fits.
    std::fs::write(local.path().join("small"), b"fits").unwrap();
    let out = framewire(&["put", &addr, local.path().join("small").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(served.join("small")).unwrap(), b"fits");

    drop(server);

    // The client's disk is full: it says so, and keeps nothing final.
    let server = Serve::start(&[]);
    std::fs::write(server.root.path().join("bigger"), pattern(8 << 20, 2)).unwrap();
    let here = tempfile::tempdir().unwrap();
    let script = format!("\"$0\" get {} bigger \"$1/bigger\"; code=$?; ls -A \"$1\" >&2; exit $code", server.addr);
    let out = on_small_disk(here.path(), &script).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.lines().next().unwrap().contains("No space left on device"), "{err}");
    assert_eq!(err.lines().count(), 1, "nothing under the final name, and no partial file filling the disk: {err}");
    // The server serves on.
    assert_eq!(framewire(&["get", &server.addr, "bigger", "-"]).stdout.len(), 8 << 20);
}

/// Permission denied on the server is one clear line for the client, and
/// the server logs it with the peer's address. The server runs as `nobody`
/// when the tests run as root (root reads everything), as the test's own
/// user otherwise.
#[test]
fn permission_denied_is_one_clear_line() {
    use std::os::unix::fs::PermissionsExt;
    let as_root = unsafe { libc::geteuid() } == 0;
    let wrapper = if as_root { "setpriv --reuid=nobody --regid=nogroup --clear-groups" } else { "" };
    // A directory the server cannot read, for the prune at its start.
    let unreadable = r#"chmod 755 "$1"; mkdir -p "$1/sub/locked"; chmod 000 "$1/sub/locked";"#;
    let server = Serve::start_wrapped(unreadable, wrapper, &[]);
    let root = server.root.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("secret"), b"s").unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::create_dir(root.join("locked")).unwrap();
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("x"), b"x").unwrap();
    let a = server.addr.as_str();

    let out = framewire(&["get", a, "secret", "-"]);
    assert_eq!(out.status.code(), Some(255), "framewire's own failure: {out:?}");
    assert_eq!(
        text(&out.stderr).trim(),
        "framewire: error: server refused: secret: permission denied (permission_denied)"
    );
    let out = framewire(&["put", a, local.path().join("x").to_str().unwrap(), "locked/x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.lines().count() == 1 && err.contains("locked/x: permission denied (permission_denied)"), "{err}");
    assert!(framewire(&["ls", a, "locked"]).status.success(), "reading the directory is allowed");

    let (_, log) = server.terminate();
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("permission denied")).collect();
    assert_eq!(denied.len(), 2, "{log}");
    assert!(denied.iter().all(|l| l.contains("peer=127.0.0.1:")), "{log}");
    // The prune names the directory it could not read (issue 28: a bare
    // "Permission denied").
    let prune = log.lines().find(|l| l.contains("abandoned partial files")).unwrap_or_else(|| panic!("{log}"));
    assert!(prune.contains("sub/locked: Permission denied"), "{prune}");
}

/// rsync's trailing-slash rule, the same both ways: `DIR/` copies what is
/// in DIR, `DIR` the directory itself; so a rerun of the same command lands
/// in the same place and moves nothing. A single file into a directory
/// that does not exist fails as `cp` fails, creating nothing.
#[test]
fn trailing_slash_rule_both_ways() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(t.join("s")).unwrap();
    std::fs::write(t.join("f.txt"), b"f").unwrap();
    std::fs::write(t.join("s/g.txt"), b"g").unwrap();
    let (with_slash, without) = (format!("{}/", t.display()), t.display().to_string());
    let root = server.root.path();

    let out = framewire(&["put", "-r", a, &with_slash, "one"]);
    assert!(out.status.success(), "{out:?}");
    assert!(root.join("one/f.txt").is_file() && root.join("one/s/g.txt").is_file() && !root.join("one/t").exists());
    let mut rerun = None;
    for _ in 0..2 {
        let out = framewire(&["put", "-r", a, &without, "two"]);
        assert!(out.status.success(), "{out:?}");
        assert!(root.join("two/t/f.txt").is_file() && !root.join("two/t/t").exists(), "{out:?}");
        rerun = Some(out);
    }
    let rerun = rerun.unwrap();
    assert!(text(&rerun.stderr).contains("2 file(s) unchanged"), "the rerun moved nothing: {rerun:?}");

    let g1 = local.path().join("g1");
    let out = framewire(&["get", "-r", a, "one/", g1.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(g1.join("f.txt").is_file() && g1.join("s/g.txt").is_file());
    let g2 = local.path().join("g2");
    for _ in 0..2 {
        let out = framewire(&["get", "-r", a, "one", g2.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert!(g2.join("one/f.txt").is_file() && !g2.join("one/one").exists(), "{out:?}");
    }

    for dest in ["missing/", "missing/f.txt"] {
        let target = local.path().join(dest);
        let out = framewire(&["get", a, "one/f.txt", target.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(255), "framewire's own failure: {dest}: {out:?}");
        assert!(text(&out.stderr).contains("no such directory"), "{dest}: {out:?}");
        assert!(!local.path().join("missing").exists(), "{dest}: nothing created");
    }
}

/// --exclude, --include and --exclude-from (gitignore-style), both ways;
/// --dry-run prints what would move and changes nothing on either side.
#[test]
fn selection_and_dry_run() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    for (name, body) in [("a.rs", "fn main() {}"), ("notes.txt", "n"), ("target/out.o", "o"), ("docs/x.md", "x")] {
        std::fs::create_dir_all(t.join(name).parent().unwrap()).unwrap();
        std::fs::write(t.join(name), body).unwrap();
    }
    std::fs::create_dir_all(t.join("cache")).unwrap();
    let contents = format!("{}/", t.display());
    let root = server.root.path();

    let out = framewire(&["put", "-r", "-n", a, &contents, "dry"]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(
        said.contains("send       ") && said.contains("a.rs (12 bytes)") && said.contains("mkdir      dry/cache"),
        "{said}"
    );
    assert!(!root.join("dry").exists(), "a dry run changes nothing");

    let out = framewire(&["put", "-r", "-q", "--exclude", "target/", "--exclude", "*.txt", a, &contents, "f1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(root.join("f1/a.rs").is_file() && root.join("f1/docs/x.md").is_file() && root.join("f1/cache").is_dir());
    assert!(!root.join("f1/notes.txt").exists() && !root.join("f1/target").exists());

    let g = local.path().join("g");
    let out = framewire(&[
        "get",
        "-r",
        "-q",
        "--include",
        "*/",
        "--include",
        "*.rs",
        "--exclude",
        "*",
        a,
        "f1/",
        g.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(g.join("a.rs").is_file() && !g.join("docs/x.md").exists(), "only the Rust file");

    let ignore = local.path().join("ignore");
    std::fs::write(&ignore, "# docs stay home\ndocs/\n").unwrap();
    let h = local.path().join("h");
    let out =
        framewire(&["get", "-r", "-q", "--exclude-from", ignore.to_str().unwrap(), a, "f1/", h.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(h.join("a.rs").is_file() && !h.join("docs").exists(), "{out:?}");

    let d = local.path().join("dryget");
    let out = framewire(&["get", "-r", "-n", a, "f1/", d.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("f1/docs/x.md"), "{out:?}");
    assert!(!d.exists(), "a dry run creates no directory");

    let out = framewire(&["put", "-r", "--exclude", "a[", a, &contents, "f2"]);
    assert_eq!(out.status.code(), Some(255), "framewire's own failure: {out:?}");
    assert!(text(&out.stderr).contains("bad pattern \"a[\""), "{out:?}");
}

/// --delete mirrors, both ways: what the source lacks goes (a name that
/// looks like a pattern is a name), what is excluded stays, a symlink in
/// the destination is removed as a link and never leads the removal
/// outside; a dry run lists the removals and removes nothing.
#[test]
fn delete_mirrors_and_never_leaves_the_destination() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::write(t.join("keep.txt"), b"k").unwrap();
    std::fs::write(t.join("sub/a"), b"a").unwrap();
    let contents = format!("{}/", t.display());

    // The server's copy has extras, an excluded file, and a link out.
    std::fs::create_dir_all(root.join("mirror/sub")).unwrap();
    std::fs::create_dir_all(root.join("mirror/olddir/deep")).unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    for name in [
        "mirror/stale.txt",
        "mirror/*.txt",
        "mirror/sub/old",
        "mirror/olddir/deep/x",
        "mirror/keep.log",
        "outside/victim",
    ] {
        std::fs::write(root.join(name), b"x").unwrap();
    }
    std::os::unix::fs::symlink("../outside", root.join("mirror/link")).unwrap();

    let out = framewire(&["put", "-r", "-n", "--delete", "--exclude", "*.log", a, &contents, "mirror"]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains("delete     mirror/stale.txt") && said.contains("delete     mirror/olddir"), "{said}");
    assert!(!said.contains("mirror/olddir/deep"), "what is below a removed directory goes with it: {said}");
    assert!(root.join("mirror/stale.txt").exists(), "a dry run removes nothing");

    let out = framewire(&["put", "-r", "--delete", "--exclude", "*.log", a, &contents, "mirror"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("path(s) deleted"), "{out:?}");
    for gone in ["stale.txt", "*.txt", "sub/old", "olddir"] {
        assert!(std::fs::symlink_metadata(root.join("mirror").join(gone)).is_err(), "{gone} is gone");
    }
    // A symlink the source lacks goes too (a mirror's listing shows links
    // since issue 30), removed as a link: what it led to is untouched.
    assert!(std::fs::symlink_metadata(root.join("mirror/link")).is_err());
    for kept in ["mirror/keep.txt", "mirror/sub/a", "mirror/keep.log", "outside/victim"] {
        assert!(root.join(kept).exists(), "{kept} is kept");
    }

    // Downward: the local destination has extras and a link out.
    let elsewhere = local.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("precious"), b"p").unwrap();
    let dest = local.path().join("dest");
    std::fs::create_dir_all(dest.join("gone/deeper")).unwrap();
    std::fs::write(dest.join("gone/deeper/f"), b"f").unwrap();
    std::fs::write(dest.join("extra"), b"e").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dest.join("link")).unwrap();
    let out = framewire(&["get", "-r", "--delete", a, "mirror/", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for gone in ["gone", "extra", "link"] {
        assert!(std::fs::symlink_metadata(dest.join(gone)).is_err(), "{gone} is gone: {out:?}");
    }
    assert!(dest.join("keep.txt").is_file() && dest.join("sub/a").is_file());
    assert_eq!(std::fs::read(elsewhere.join("precious")).unwrap(), b"p", "never followed out");
}

/// --checksum tells files apart by BLAKE3: a same-size edit with its mtime
/// put back escapes the quick check but not -c; identical contents with
/// another mtime are unchanged under -c.
#[test]
fn checksum_compares_contents() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("f.txt");
    std::fs::write(&f, b"aaaa").unwrap();
    let out = framewire(&["put", "-q", a, f.to_str().unwrap(), "f.txt"]);
    assert!(out.status.success(), "{out:?}");
    let when = std::fs::metadata(&f).unwrap().modified().unwrap();

    // Same size, same mtime, other bytes.
    std::fs::write(&f, b"bbbb").unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(when).unwrap();
    let out = framewire(&["put", a, f.to_str().unwrap(), "f.txt"]);
    assert!(out.status.success() && text(&out.stderr).contains("1 file(s) unchanged"), "{out:?}");
    let out = framewire(&["put", "-c", "-u", a, f.to_str().unwrap(), "f.txt"]);
    assert_eq!(out.status.code(), Some(3), "differs, and not older: kept under --update: {out:?}");
    let out = framewire(&["put", "-c", "-q", a, f.to_str().unwrap(), "f.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("f.txt")).unwrap(), b"bbbb");

    // The same bytes, another mtime: unchanged for -c, both ways.
    let later = when + std::time::Duration::from_secs(60);
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(later).unwrap();
    let out = framewire(&["put", "-c", a, f.to_str().unwrap(), "f.txt"]);
    assert!(out.status.success() && text(&out.stderr).contains("1 file(s) unchanged"), "{out:?}");
    let out = framewire(&["get", "-c", a, "f.txt", f.to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stderr).contains("1 file(s) unchanged"), "{out:?}");
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped,
/// so a failing test leaves no server behind.
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `framewire serve --root ROOT` on an ephemeral port: the child and its
/// address (for a server restarted on the same root).
fn serve_on(root: &std::path::Path) -> (Killed, String) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    (Killed(child), addr)
}

/// Every file below `a` is in `b` with the same bytes, and `b` holds
/// nothing else (no partial file either).
fn same_tree(a: &std::path::Path, b: &std::path::Path) {
    fn files(root: &std::path::Path, rel: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                files(root, &r, out);
            } else {
                out.push(r);
            }
        }
    }
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    files(a, std::path::Path::new(""), &mut fa);
    files(b, std::path::Path::new(""), &mut fb);
    fa.sort();
    fb.sort();
    assert_eq!(fa, fb, "the same files");
    for f in &fa {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{}", f.display());
    }
}

/// Waits (bounded) until `path` is in place, or `child` has ended.
fn until_exists(path: &std::path::Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{} did not land in 10 s", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL of the client, and of the server, in the middle of a tree
/// copy, both ways: a rerun of the same command completes with identical
/// trees and exits 0 (the partial files resumed, the complete ones
/// skipped), and a rerun after that moves nothing.
#[test]
fn sigkill_mid_tree_then_a_rerun_completes() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("big/a{i}.bin")), pattern(6 << 20, i as u8)).unwrap();
    }
    std::fs::create_dir_all(src.join("z")).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("z/f{i}.txt")), pattern(20_000, 7)).unwrap();
    }
    std::fs::write(src.join("z000.txt"), b"lands last, in the root of the copy").unwrap();
    let contents = format!("{}/", src.display());
    let root = tempfile::tempdir().unwrap();
    let (mut server, addr) = serve_on(root.path());

    // put, client killed: with -j 1 the big files go first; killed as soon
    // as one of them is in place, at a different one each time (each
    // leaves 6 MiB or more still to go, so the cut is before the end).
    for point in ["big/a0.bin", "big/a2.bin", "big/a4.bin"] {
        let dst = format!("cut-{}", point.replace('/', "-"));
        let mut put = Command::new(BIN)
            .args(["put", "-r", "-q", "-j", "1", &addr, &contents, &dst])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        until_exists(&root.path().join(&dst).join(point), &mut put);
        put.kill().unwrap();
        put.wait().unwrap();
        assert!(!root.path().join(&dst).join("z000.txt").exists(), "{point}: cut before its end");
        let out = framewire(&["put", "-r", &addr, &contents, &dst]);
        assert!(out.status.success(), "{point}: {out:?}");
        same_tree(&src, &root.path().join(&dst));
    }
    let out = framewire(&["put", "-r", "-q", &addr, &contents, "up"]);
    assert!(out.status.success(), "{out:?}");

    // get, server killed mid-way, then restarted on the same root.
    let dest = local.path().join("dest");
    let mut get = Command::new(BIN)
        .args(["get", "-r", "-q", "-j", "1", &addr, "up/", dest.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_exists(&dest.join("big/a0.bin"), &mut get);
    server.kill().unwrap();
    server.wait().unwrap();
    let status = get.wait().unwrap();
    assert!(!status.success() && !dest.join("z000.txt").exists(), "a cut copy fails: {status:?}");
    let (mut server, addr) = serve_on(root.path());
    let out = framewire(&["get", "-r", &addr, "up/", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    same_tree(&src, &dest);

    // get, client killed; put, server killed: the same.
    let dest2 = local.path().join("dest2");
    let mut get = Command::new(BIN)
        .args(["get", "-r", "-q", "-j", "1", &addr, "up/", dest2.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_exists(&dest2.join("big/a0.bin"), &mut get);
    get.kill().unwrap();
    get.wait().unwrap();
    assert!(!dest2.join("z000.txt").exists(), "the copy was cut before its end");
    let out = framewire(&["get", "-r", &addr, "up/", dest2.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    same_tree(&src, &dest2);

    let up2 = root.path().join("up2");
    let mut put = Command::new(BIN)
        .args(["put", "-r", "-q", "-j", "1", &addr, &contents, "up2"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_exists(&up2.join("big/a0.bin"), &mut put);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!put.wait().unwrap().success() && !up2.join("z000.txt").exists(), "cut before its end");
    let (mut server, addr) = serve_on(root.path());
    let out = framewire(&["put", "-r", &addr, &contents, "up2"]);
    assert!(out.status.success(), "{out:?}");
    same_tree(&src, &up2);

    // And once more: nothing moves.
    let out = framewire(&["put", "-r", &addr, &contents, "up2"]);
    assert!(out.status.success() && text(&out.stderr).contains("57 file(s) unchanged"), "{out:?}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// SIGKILL at random points of a streamed tree of many small files (and a
/// few larger ones), of the client or of the server, both ways: every file
/// present under its final name is whole (batched syncs never show a file
/// before it is verified), and a rerun completes the rest and exits 0.
/// The points come from the clock; a failure prints them.
#[test]
fn sigkill_at_random_points_leaves_only_whole_files() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    for d in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for f in 0..100 {
            let len = 1024 + (d * 100 + f) * 37 % 15000;
            std::fs::write(src.join(format!("d{d:02}/f{f:03}")), pattern(len, (d + f) as u8)).unwrap();
        }
    }
    for i in 0..3 {
        std::fs::write(src.join(format!("d10/big{i}")), pattern(3 << 20, i as u8)).unwrap();
    }
    let contents = format!("{}/", src.display());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Every file below `dir` is whole: the same bytes as its source.
    let whole = |dir: &std::path::Path, what: &str| {
        let mut n = 0;
        for d in std::fs::read_dir(dir).into_iter().flatten() {
            let d = d.unwrap();
            for f in std::fs::read_dir(d.path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().into_string().unwrap();
                if name.ends_with(".fwpart") {
                    continue;
                }
                let rel = format!("{}/{name}", d.file_name().to_str().unwrap());
                assert_eq!(std::fs::read(f.path()).unwrap(), std::fs::read(src.join(&rel)).unwrap(), "{what}: {rel}");
                n += 1;
            }
        }
        n
    };
    let root = tempfile::tempdir().unwrap();
    let (mut server, mut addr) = serve_on(root.path());
    for round in 0..4 {
        let delay = Duration::from_millis(20 + next() % 150);
        let kill_server = round % 2 == 1;
        let (up, back) = (format!("up{round}"), local.path().join(format!("back{round}")));
        let what = format!("seed {seed}, round {round}, {delay:?}, {}", if kill_server { "server" } else { "client" });
        // put, cut at the random point.
        let mut put = Command::new(BIN)
            .args(["put", "-r", "-q", "-j", "2", &addr, &contents, &up])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if kill_server {
            server.kill().unwrap();
            server.wait().unwrap();
            (server, addr) = serve_on(root.path());
        } else {
            put.kill().unwrap();
        }
        put.wait().unwrap();
        let landed = whole(&root.path().join(&up), &what);
        let out = framewire(&["put", "-r", &addr, &contents, &up]);
        assert!(out.status.success(), "{what}: {landed} files had landed: {out:?}");
        same_tree(&src, &root.path().join(&up));

        // get, cut at another point.
        let delay = Duration::from_millis(20 + next() % 150);
        let mut get = Command::new(BIN)
            .args(["get", "-r", "-q", "-j", "2", &addr, &format!("{up}/"), back.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if kill_server {
            server.kill().unwrap();
            server.wait().unwrap();
            (server, addr) = serve_on(root.path());
        } else {
            get.kill().unwrap();
        }
        get.wait().unwrap();
        let landed = whole(&back, &what);
        let out = framewire(&["get", "-r", &addr, &format!("{up}/"), back.to_str().unwrap()]);
        assert!(out.status.success(), "{what}: {landed} files had landed: {out:?}");
        same_tree(&src, &back);
    }
}

/// Peak RSS (KiB) of the child `pid`, waited for with `wait4`, which
/// reports that one child's usage alone; and whether it exited 0.
fn wait_with_peak(child: std::process::Child) -> (bool, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; `pid` is our
    // child, not yet waited for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    // Reaped: dropping a `Child` neither waits nor kills.
    drop(child);
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, usage.ru_maxrss)
}

/// 100,000 tiny files up and back down in bounded memory: the manifest,
/// the wants and the commits stream in frames, so neither side builds
/// the tree in one message. The bound here is twice the benchmark's
/// target (64 MiB, measured by `bench/tree.py --files 100000`, figures in
/// BENCHMARKS.md): what it catches is memory that grows with the tree.
#[test]
fn a_hundred_thousand_tiny_files_in_bounded_memory() {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let local = tempfile::tempdir_in(base).unwrap();
    let src = local.path().join("src");
    for d in 0..200 {
        let dir = src.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
    let root = tempfile::tempdir_in(base).unwrap();
    let (server, addr) = serve_on(root.path());
    let contents = format!("{}/", src.display());
    let put = Command::new(BIN).args(["put", "-r", "-q", &addr, &contents, "t"]).spawn().unwrap();
    let (ok, put_peak) = wait_with_peak(put);
    assert!(ok, "put -r of 100,000 files");
    let back = local.path().join("back");
    let get = Command::new(BIN).args(["get", "-r", "-q", &addr, "t/", back.to_str().unwrap()]).spawn().unwrap();
    let (ok, get_peak) = wait_with_peak(get);
    assert!(ok, "get -r of 100,000 files");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    let server_peak: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    drop(server);
    for (what, peak) in [("put client", put_peak), ("get client", get_peak), ("server", server_peak)] {
        assert!(peak < 128 * 1024, "{what}: peak RSS {peak} KiB");
    }
    for (d, f) in [(0, 0), (123, 456), (199, 499)] {
        let rel = format!("d{d:03}/f{f:03}");
        assert_eq!(std::fs::read_to_string(root.path().join("t").join(&rel)).unwrap(), format!("{d}/{f}"));
        assert_eq!(std::fs::read_to_string(back.join(&rel)).unwrap(), format!("{d}/{f}"));
    }
    eprintln!("100,000 files: put client {put_peak} KiB, get client {get_peak} KiB, server {server_peak} KiB");
}

/// A keyed session that ends normally (the client leaves between
/// requests, over TLS, without waiting to send `close_notify`) is a
/// normal close in the server's log, as it is in the clear: no warning.
#[test]
fn a_clean_keyed_session_logs_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let k = key.to_str().unwrap();
    let server = Serve::start(&["--allow-exec", "--key-file", k, "-v"]);
    let a = server.addr.as_str();
    std::fs::write(server.root.path().join("f.txt"), b"data").unwrap();
    let local = dir.path().join("back.txt");
    for args in [
        vec!["ls", a],
        vec!["exec", a, "--", "true"],
        vec!["get", "-q", a, "f.txt", local.to_str().unwrap()],
        vec!["put", "-q", a, local.to_str().unwrap(), "again.txt"],
    ] {
        let out = Command::new(BIN).args(&args).env("FRAMEWIRE_KEY_FILE", k).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let (_, log) = server.terminate();
    assert!(!log.contains("WARN"), "a clean session warned: {log}");
}

/// The server's one INFO line per request, as JSON: peer, request, the
/// command or the path and direction, result, bytes, duration; for exec,
/// put, get, rm and mv, refusals included.
#[test]
fn every_request_is_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let k = key.to_str().unwrap();
    let server = Serve::start(&["--allow-exec", "--key-file", k, "--log-format", "json"]);
    let a = server.addr.as_str();
    let body = pattern(100_000, 3);
    let local = dir.path().join("up.bin");
    std::fs::write(&local, &body).unwrap();
    let back = dir.path().join("back.bin");
    for (args, ok) in [
        (vec!["exec", a, "--", "echo hi; exit 4"], false),
        (vec!["put", "-q", local.to_str().unwrap(), &format!("{a}:up.bin")], true),
        (vec!["get", "-q", &format!("{a}:up.bin"), back.to_str().unwrap()], true),
        (vec!["mv", a, "up.bin", "moved.bin"], true),
        (vec!["rm", a, "moved.bin"], true),
        (vec!["rm", a, "../escape"], false),
    ] {
        let out = Command::new(BIN).args(&args).env("FRAMEWIRE_KEY_FILE", k).output().unwrap();
        assert_eq!(out.status.success(), ok, "{args:?}: {out:?}");
    }
    let (_, log) = server.terminate();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    let find = |kind: &str, key: &str, value: &str| {
        *requests
            .iter()
            .find(|l| l["request"] == kind && l[key] == value)
            .unwrap_or_else(|| panic!("no {kind} {key}={value} line in {log}"))
    };
    for l in &requests {
        assert_eq!(l["level"], "INFO", "{l}");
        assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
        assert!(l["ms"].as_f64().is_some() && l["timestamp"].is_string(), "{l}");
    }
    let exec = find("exec", "command", "echo hi; exit 4");
    assert_eq!(exec["result"], "exit 4");
    assert!(exec["bytes_out"].as_u64().unwrap() >= 3, "{exec}");
    let put = find("put", "path", "up.bin");
    assert_eq!((put["direction"].as_str(), put["result"].as_str()), (Some("upload"), Some("ok")));
    assert!(put["bytes_in"].as_u64().unwrap() >= 100_000, "{put}");
    let get = find("get", "path", "up.bin");
    assert_eq!((get["direction"].as_str(), get["result"].as_str()), (Some("download"), Some("ok")));
    assert!(get["bytes_out"].as_u64().unwrap() >= 100_000, "{get}");
    let mv = find("rename", "path", "up.bin");
    assert_eq!((mv["to"].as_str(), mv["result"].as_str()), (Some("moved.bin"), Some("ok")));
    assert_eq!(find("remove", "path", "moved.bin")["result"], "ok");
    let refused = find("remove", "path", "../escape");
    assert!(refused["result"].as_str().unwrap().starts_with("refused (bad_path)"), "{refused}");
    assert!(!log.contains("WARN"), "{log}");
}

/// The client's `-v`: connect, TLS, authentication, and what it decided
/// for each file; a wrong key says which side refused.
#[test]
fn client_verbose_says_what_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let k = key.to_str().unwrap();
    let server = Serve::start(&["--key-file", k]);
    let a = server.addr.as_str();
    let local = dir.path().join("tree");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("a.txt"), b"a").unwrap();
    let run = |args: &[&str]| Command::new(BIN).args(args).env("FRAMEWIRE_KEY_FILE", k).output().unwrap();
    let out = run(&["put", "-v", "-r", local.to_str().unwrap(), &format!("{a}:")]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    for line in [
        &format!("DEBUG connecting to {a}"),
        "DEBUG TLS 1.3 established",
        "DEBUG authenticated: both sides proved they hold the key",
        "DEBUG sending ",
        "DEBUG sent ",
    ] {
        assert!(err.contains(line), "no {line:?} in {err}");
    }
    std::fs::write(local.join("b.txt"), b"b").unwrap();
    let out = run(&["put", "-v", "-r", local.to_str().unwrap(), &format!("{a}:")]);
    let err = text(&out.stderr);
    assert!(err.contains("skipping") && err.contains("a.txt: unchanged"), "{err}");
    assert!(err.contains("b.txt"), "{err}");

    // -vv shows the frames.
    let out = run(&["ls", "-vv", a]);
    assert!(text(&out.stderr).contains("TRACE frame out: {\"type\":\"list\""), "{out:?}");

    let wrong = keygen(dir.path(), "wrong");
    let out = framewire(&["ls", "-v", "--key-file", wrong.to_str().unwrap(), a]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(err.contains("DEBUG the server refused our proof: its key is not ours"), "{err}");
}

/// `keygen` and `demo` use no key: `--key-file` on their command line is a
/// usage error (exit 2) naming why, while `FRAMEWIRE_KEY_FILE` in the
/// environment, meant for every command, is no obstacle.
#[test]
fn a_key_file_where_it_means_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let k = key.to_str().unwrap();
    let fresh = dir.path().join("fresh");
    let out = framewire(&["keygen", "--key-file", k, fresh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--key-file means nothing here"), "{out:?}");
    assert!(!fresh.exists(), "no key written");
    let out = framewire(&["--key-file", k, "demo", "sticky"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out =
        Command::new(BIN).args(["keygen", fresh.to_str().unwrap()]).env("FRAMEWIRE_KEY_FILE", k).output().unwrap();
    assert!(out.status.success() && fresh.exists(), "{out:?}");
}

/// scp's way of naming the remote side, `HOST:PATH`, both ways, beside
/// the `HOST PATH...` form; a colon before any slash makes an argument
/// remote, so `./a:b` is a local file.
#[test]
fn host_colon_path_arguments_both_ways() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"notes").unwrap();
    let n = notes.to_str().unwrap();

    let out = framewire(&["put", "-q", n, &format!("{a}:")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("notes.txt")).unwrap(), b"notes");
    let out = framewire(&["put", "-q", n, &format!("{a}:copy.txt")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("copy.txt")).unwrap(), b"notes");

    // A local file whose name has a colon, written the scp way.
    std::fs::write(dir.path().join("a:b"), b"colon").unwrap();
    let out =
        Command::new(BIN).current_dir(dir.path()).args(["put", "-q", "./a:b", &format!("{a}:")]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("a:b")).unwrap(), b"colon");

    // And back, into a directory and under a new name.
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let out = framewire(&["get", "-q", &format!("{a}:copy.txt"), back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(back.join("copy.txt")).unwrap(), b"notes");
    let out = framewire(&["get", "-q", &format!("{a}:notes.txt"), &format!("{a}:a:b"), back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(back.join("a:b")).unwrap(), b"colon");

    // Sources on two hosts are refused in one line.
    let out = framewire(&["get", &format!("{a}:x"), "other:y", back.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("two hosts"), "{out:?}");
}

/// The first SIGINT starts the drain and says how long it may take; a
/// second stops the server at once, the running command killed with it.
#[test]
fn a_second_signal_stops_the_server_at_once() {
    let mut server = Serve::start(&["--allow-exec", "--insecure", "--drain-timeout", "60"]);
    let mut exec = Command::new(BIN)
        .args(["exec", &server.addr, "--", "echo $$; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(exec.stdout.take().unwrap()), &mut line).unwrap();
    let remote: u32 = line.trim().parse().unwrap();
    let pid = server.child.id().to_string();
    let int = || assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    int();
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.child.try_wait().unwrap().is_none(), "the first signal drains; the exec is still running");
    let started = Instant::now();
    int();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the second signal did not stop the server");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("up to 60 s") && log.contains("again stops at once"), "{log}");
    assert!(log.contains("received again: stopping now"), "{log}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(remote) {
        assert!(Instant::now() < deadline, "the remote command outlived the server");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = exec.wait();
}

/// `rm`, `mv` and `mkdir` on a real server, under the sandbox's rules.
#[test]
fn remote_rm_mv_and_mkdir() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    std::fs::write(root.join("f.txt"), b"f").unwrap();
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("d/sub/x"), b"x").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();

    // mkdir: a parent must exist and the directory must not, unless -p.
    let out = framewire(&["mkdir", a, "new/deep"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no such file or directory"), "{out:?}");
    let out = framewire(&["mkdir", "-p", a, "new/deep"]);
    assert!(out.status.success() && root.join("new/deep").is_dir(), "{out:?}");
    let out = framewire(&["mkdir", a, "new"]);
    assert!(!out.status.success() && text(&out.stderr).contains("exists"), "{out:?}");
    assert!(framewire(&["mkdir", "-p", a, "new"]).status.success());
    let out = framewire(&["mkdir", "-p", a, "link/escaped"]);
    assert!(!out.status.success() && !outside.path().join("escaped").exists(), "{out:?}");

    // mv: atomic, never over a name without --force.
    let out = framewire(&["mv", a, "f.txt", "new/g.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.join("f.txt").exists() && root.join("new/g.txt").is_file());
    std::fs::write(root.join("other"), b"o").unwrap();
    let out = framewire(&["mv", a, "other", "new/g.txt"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("exists"), "{out:?}");
    assert_eq!(std::fs::read(root.join("new/g.txt")).unwrap(), b"f", "not replaced");
    let out = framewire(&["mv", "--force", a, "other", "new/g.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(root.join("new/g.txt")).unwrap(), b"o");
    for (from, to) in [
        ("new/g.txt", "../out"),
        ("new/g.txt", "link/out"),
        ("new/g.txt", "new/.g.fwpart"),
        ("", "x"),
        ("d", "d/sub/d"),
    ] {
        let out = framewire(&["mv", a, from, to]);
        assert_eq!(out.status.code(), Some(255), "{from} -> {to}: {out:?}");
    }
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside the root");

    // rm: files; directories only with -r; a missing path is an error but with -f.
    let out = framewire(&["rm", a, "d"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("d: is a directory on the server") && root.join("d/sub/x").exists(), "{out:?}");
    assert_eq!(err.matches("(use -r)").count(), 1, "the hint is the CLI's, once: {err}");
    let out = framewire(&["rm", a, "new/g.txt", "missing"]);
    assert_eq!(out.status.code(), Some(1), "one of two failed: {out:?}");
    assert!(!root.join("new/g.txt").exists());
    assert!(framewire(&["rm", "-f", a, "missing"]).status.success());
    let out = framewire(&["rm", "-r", a, "d", "link"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.join("d").exists() && !root.join("link").exists(), "the link itself goes");
    assert!(outside.path().exists(), "never through it");

    let (_, log) = server.terminate();
    assert!(log.contains("rename") && log.contains("remove"), "one log line per operation: {log}");
}

/// Abandoned partial files: `ls --partial` shows them with size and age,
/// and the server removes those older than `--partial-max-age` at start
/// (logging each), leaving fresh ones, directories so named, and
/// anything that is not a regular file of its own.
#[test]
fn abandoned_partial_files_are_shown_and_pruned() {
    let old = std::time::SystemTime::now() - Duration::from_secs(8 * 86_400);
    let make = |root: &std::path::Path| {
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join(".old.bin.fwpart"), vec![7u8; 1000]).unwrap();
        std::fs::File::options().write(true).open(root.join(".old.bin.fwpart")).unwrap().set_modified(old).unwrap();
        std::fs::write(root.join("d/.fresh.bin.fwpart"), vec![1u8; 123]).unwrap();
        std::fs::create_dir(root.join(".dir.fwpart")).unwrap();
        std::fs::write(root.join("plain.txt"), b"p").unwrap();
        std::fs::File::options().write(true).open(root.join("plain.txt")).unwrap().set_modified(old).unwrap();
    };
    // `off` keeps every one.
    let keep = Serve::start(&["--partial-max-age", "off"]);
    make(keep.root.path());
    let out = framewire(&["ls", "--partial", &keep.addr]);
    assert!(out.status.success(), "{out:?}");
    let shown = text(&out.stdout);
    assert!(shown.contains(".old.bin.fwpart") && shown.contains("d/.fresh.bin.fwpart"), "{shown}");
    assert!(shown.contains("123") && shown.contains("8d ago"), "size and age: {shown}");
    assert!(!shown.contains("plain.txt") && !shown.contains(".dir.fwpart"), "only partial files: {shown}");
    let plain = framewire(&["ls", "-r", &keep.addr]);
    assert!(!text(&plain.stdout).contains("fwpart"), "other listings still hide them: {plain:?}");
    drop(keep);

    // The default, 7 days: the old one goes at start, nothing else does.
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let server = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.path().join(".old.bin.fwpart").exists() {
        assert!(Instant::now() < deadline, "the old partial file was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let out = server.wait_with_output().unwrap();
    let log = text(&out.stderr);
    assert!(log.contains("removed an abandoned partial file") && log.contains(".old.bin.fwpart"), "{log}");
    assert!(dir.path().join("d/.fresh.bin.fwpart").exists(), "a fresh one stays");
    assert!(dir.path().join(".dir.fwpart").is_dir() && dir.path().join("plain.txt").exists());
}

/// A host set given where one host goes (`exec @nodes` without `-w`) is
/// named as a set, with the flag that takes it, before any lookup (it was
/// looked up in DNS as the name `@nodes`).
#[test]
fn a_host_set_without_w_is_refused_before_any_lookup() {
    for args in [&["exec", "@nodes", "--", "true"][..], &["ls", "web[1-3]"], &["exec", "a,b", "--", "true"]] {
        let out = framewire(args);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is a host set, not one host: give it with -w"), "{args:?}: {err}");
    }
}

/// A port whose server waits for its client to speak first (HTTP does)
/// is named as not speaking framewire after a short preface deadline
/// (3 s), not after the 10 s handshake limit as "peer stalled".
#[test]
fn a_server_waiting_for_its_client_to_speak_is_told_apart_soon() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let http = std::thread::spawn(move || {
        // Like an HTTP server: reads the request, waiting for its end.
        let (mut sock, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        while std::io::Read::read(&mut sock, &mut buf).is_ok_and(|n| n > 0) {}
    });
    let started = std::time::Instant::now();
    let out = framewire(&["ls", &addr]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("the peer does not speak framewire") && !err.contains("stalled"), "{err}");
    assert!(took < Duration::from_secs(8), "told after {took:?}");
    http.join().unwrap();
}

/// The server's log after a client's Ctrl-C mid-upload over TLS says the
/// client left and the partial file is kept (no WARN about TLS
/// `close_notify` with a URL); a put's planning `stat` of a new name is
/// "not found", not a refusal; the root is logged once (issue 28).
#[test]
fn a_killed_keyed_upload_is_logged_as_the_client_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "key");
    let k = key.to_str().unwrap();
    let server = Serve::start(&["--key-file", k]);
    let big = dir.path().join("big.bin");
    std::fs::write(&big, pattern(64 << 20, 4)).unwrap();
    let mut put = Command::new(BIN);
    put.args(["put", "-q", "--bwlimit", "8M", &server.addr, big.to_str().unwrap()])
        .env("FRAMEWIRE_KEY_FILE", k)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SIGINT as a terminal's Ctrl-C finds it: a test run started in the
    // background of a script ignores SIGINT, and its children inherit
    // that (the upload then finished instead of being cut).
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut put, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = put.spawn().unwrap();
    let partial = server.root.path().join(".big.bin.fwpart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(Instant::now() < deadline, "upload never started");
        assert!(child.try_wait().unwrap().is_none(), "upload finished before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGINT, as Ctrl-C sends, to our own child by its PID.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(partial.exists(), "kept");
    let (_, log) = server.terminate();
    assert!(!log.contains("WARN") && !log.contains("https://"), "{log}");
    let put = log.lines().find(|l| l.contains("request=\"put\"")).unwrap_or_else(|| panic!("{log}"));
    assert!(put.contains("the partial file is kept for a resume"), "{put}");
    let stat = log.lines().find(|l| l.contains("request=\"stat\"")).unwrap_or_else(|| panic!("{log}"));
    assert!(stat.contains("not found") && !stat.contains("refused"), "{stat}");
    assert_eq!(log.lines().filter(|l| l.contains("serving")).count(), 1, "{log}");
}

/// `--force` is suggested only where it applies: not by `mkdir` (which
/// has none), not for a `get` whose destination is a local directory
/// (which `--force` cannot replace: it then left a partial file that could
/// never resume), and still for a file that exists (issue 28).
#[test]
fn force_is_suggested_only_where_it_applies() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    std::fs::write(server.root.path().join("f.txt"), b"server").unwrap();
    let out = framewire(&["mkdir", a, "f.txt"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("cannot create f.txt") && !err.contains("--force"), "{err}");

    let here = tempfile::tempdir().unwrap();
    std::fs::create_dir(here.path().join("f.txt")).unwrap();
    for force in [&[][..], &["--force"]] {
        let out =
            Command::new(BIN).arg("get").args(force).args([a, "f.txt"]).current_dir(here.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{force:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("f.txt: is a directory; a file cannot replace it") && !err.contains("--force"), "{err}");
        let left: Vec<_> = std::fs::read_dir(here.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["f.txt"], "no partial file left: {left:?}");
        assert!(here.path().join("f.txt").is_dir());
    }

    // A newer file in the way under --update still suggests it, and
    // --force replaces it.
    std::fs::write(here.path().join("g.txt"), b"local, newer").unwrap();
    std::fs::write(server.root.path().join("g.txt"), b"server").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(server.root.path().join("g.txt")).unwrap().set_modified(old).unwrap();
    let out = Command::new(BIN).args(["get", "-u", a, "g.txt"]).current_dir(here.path()).output().unwrap();
    assert!(text(&out.stderr).contains("--force"), "{out:?}");
    let out = Command::new(BIN).args(["get", "-u", "--force", a, "g.txt"]).current_dir(here.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(here.path().join("g.txt")).unwrap(), b"server");
}

/// Issue 30, points 9 and 10: the source wins by default (a rollback
/// propagates), `--update` keeps newer receiver files (exit 3, also in a
/// dry run), `--ignore-existing` copies only what is new; a dry run shows
/// changes only, an existing empty directory is not "created" again, and
/// `--itemize-changes` prints one rsync-style line per change.
#[test]
fn the_source_wins_and_changes_are_itemized() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(t.join("empty")).unwrap();
    std::fs::create_dir_all(t.join("sub")).unwrap();
    for (name, body) in [("a.txt", "a"), ("sub/b.txt", "b"), ("sub/c.txt", "c")] {
        std::fs::write(t.join(name), body).unwrap();
    }
    let contents = format!("{}/", t.display());

    let out = framewire(&["put", "-r", "-n", "--itemize-changes", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    for line in ["cd+++++++++ m/\n", "cd+++++++++ m/empty/\n", "<f+++++++++ m/a.txt\n", "<f+++++++++ m/sub/b.txt\n"] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    let out = framewire(&["put", "-r", "-q", "--itemize-changes", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).lines().count(), 6, "3 directories, 3 files: {out:?}");

    // Nothing changed: nothing printed, the empty directory included.
    for args in [&["put", "-r", "-n", "--itemize-changes"][..], &["put", "-r", "-n"][..]] {
        let out = framewire(&[args, &[a, contents.as_str(), "m"]].concat());
        assert!(out.status.success() && out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let out = framewire(&["-v", "put", "-r", "-n", a, &contents, "m"]);
    assert!(text(&out.stdout).contains("unchanged"), "-v shows the unchanged: {out:?}");

    // One file rolled back on the source (older, another size): one line,
    // and the copy replaces it.
    std::fs::write(t.join("sub/b.txt"), b"an older b").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(t.join("sub/b.txt")).unwrap().set_modified(old).unwrap();
    let out = framewire(&["put", "-r", "-n", "--itemize-changes", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "<f.st...... m/sub/b.txt\n");
    let out = framewire(&["put", "-r", "-u", "-n", a, &contents, "m"]);
    assert_eq!(out.status.code(), Some(3), "--update keeps the newer server file, and says so: {out:?}");
    let out = framewire(&["put", "-r", "-u", "-q", a, &contents, "m"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(std::fs::read(root.join("m/sub/b.txt")).unwrap(), b"b");
    let out = framewire(&["put", "-r", "--ignore-existing", "-q", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(root.join("m/sub/b.txt")).unwrap(), b"b", "--ignore-existing");
    let out = framewire(&["put", "-r", "-q", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(root.join("m/sub/b.txt")).unwrap(), b"an older b", "the source wins");

    // Downward, and a mirror's removals.
    let back = local.path().join("back");
    let out = framewire(&["get", "-r", "-q", a, "m/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(back.join("extra"), b"x").unwrap();
    std::fs::write(root.join("m/a.txt"), b"a, changed on the server").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options().write(true).open(root.join("m/a.txt")).unwrap().set_modified(later).unwrap();
    let out = framewire(&["get", "-r", "-n", "--delete", "--itemize-changes", a, "m/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    // `extra` written into `back` moved its time: the run sets it back,
    // and says so, as rsync does.
    let want = format!(
        ".d..t...... {}/\n>f.st...... {}\n*deleting   {}\n",
        back.display(),
        back.join("a.txt").display(),
        back.join("extra").display()
    );
    assert_eq!(said, want);
}

/// Issue 30, point 11: `--max-delete N` stops a mirror that would remove
/// more than N paths: it removes none, copies the files, says why and
/// exits 1 (a dry run too); with a limit it stays within, it removes.
#[test]
fn max_delete_stops_a_mirror_that_would_remove_too_much() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("keep.txt"), b"k").unwrap();
    std::fs::create_dir_all(root.join("m")).unwrap();
    for name in ["x1", "x2", "x3"] {
        std::fs::write(root.join("m").join(name), b"x").unwrap();
    }
    let contents = format!("{}/", t.display());
    for dry in [true, false] {
        let mut args = vec!["put", "-r", "-q", "--delete", "--max-delete", "2", a, &contents, "m"];
        if dry {
            args.insert(2, "-n");
        }
        let out = framewire(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            said.contains("would delete 3 paths, more than its limit of 2") && said.contains("--max-delete"),
            "{said}"
        );
        for name in ["x1", "x2", "x3"] {
            assert!(root.join("m").join(name).exists(), "{name} kept (dry run: {dry})");
        }
    }
    assert!(root.join("m/keep.txt").exists(), "the files are still copied");
    let out = framewire(&["put", "-r", "-q", "--delete", "--max-delete", "3", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.join("m/x1").exists() && root.join("m/keep.txt").exists());
}

/// Issue 30, point 11: `--backup`/`--backup-dir` keep what a copy replaces
/// and what a mirror removes, both ways: files, links and whole
/// directories, each at its path below the backup directory (which the
/// mirror itself leaves alone), or beside it with a suffix.
#[test]
fn backups_keep_what_a_copy_replaces_or_removes() {
    use std::os::unix::fs::symlink;
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let root = server.root.path();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::write(t.join("a.txt"), b"new a").unwrap();
    std::fs::write(t.join("sub/b.txt"), b"new b").unwrap();
    std::fs::write(t.join("same.txt"), b"same").unwrap();
    symlink("a.txt", t.join("link")).unwrap();
    let m = root.join("m");
    std::fs::create_dir_all(m.join("sub")).unwrap();
    std::fs::create_dir_all(m.join("gonedir")).unwrap();
    std::fs::create_dir_all(m.join("old")).unwrap();
    std::fs::write(m.join("a.txt"), b"old a, longer").unwrap();
    std::fs::write(m.join("sub/b.txt"), b"old b, longer").unwrap();
    std::fs::write(m.join("gone.txt"), b"gone").unwrap();
    std::fs::write(m.join("gonedir/x"), b"gx").unwrap();
    std::fs::write(m.join("old/stale"), b"an older backup").unwrap();
    symlink("elsewhere", m.join("link")).unwrap();
    let contents = format!("{}/", t.display());
    let out = framewire(&["put", "-r", "-q", "--delete", "--backup-dir", "old", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(&m.join("a.txt")), b"new a");
    assert_eq!(read(&m.join("old/a.txt")), b"old a, longer", "a replaced file is kept");
    assert_eq!(read(&m.join("old/sub/b.txt")), b"old b, longer", "at its path below the backup directory");
    assert_eq!(read(&m.join("old/gone.txt")), b"gone", "a removed file is kept");
    assert_eq!(read(&m.join("old/gonedir/x")), b"gx", "a removed directory is kept whole");
    assert_eq!(std::fs::read_link(m.join("old/link")).unwrap(), std::path::Path::new("elsewhere"));
    assert_eq!(std::fs::read_link(m.join("link")).unwrap(), std::path::Path::new("a.txt"));
    assert_eq!(read(&m.join("old/stale")), b"an older backup", "the mirror leaves the backup directory alone");
    assert!(!m.join("old/same.txt").exists(), "nothing kept of what was not replaced");
    assert!(!m.join("gone.txt").exists() && !m.join("gonedir").exists());

    // -b: beside, with `~`; a single file too; an older backup replaced.
    std::fs::write(t.join("a.txt"), b"newer a").unwrap();
    let out = framewire(&["put", "-r", "-q", "-b", a, &contents, "m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&m.join("a.txt~")), b"new a");
    std::fs::write(t.join("a.txt"), b"newest a, longer").unwrap();
    let file = t.join("a.txt").display().to_string();
    let out = framewire(&["put", "-q", "-b", a, &file, "m/a.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&m.join("a.txt")), b"newest a, longer");
    assert_eq!(read(&m.join("a.txt~")), b"newer a", "the older backup is replaced");

    // Downloads keep theirs on this side.
    let d = local.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.txt"), b"local a, longer than that").unwrap();
    std::fs::write(d.join("extra.txt"), b"extra").unwrap();
    symlink("nowhere", d.join("link")).unwrap();
    let out = framewire(&["get", "-r", "-q", "--delete", "-b", "--suffix", ".bak", a, "m/", &d.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&d.join("a.txt")), b"newest a, longer");
    assert_eq!(read(&d.join("a.txt.bak")), b"local a, longer than that");
    assert_eq!(read(&d.join("extra.txt.bak")), b"extra");
    assert!(!d.join("extra.txt").exists());
    // A mirror keeping backups beside (no --backup-dir) leaves the
    // backups alone, as rsync's `P *~` rule does.
    let out = framewire(&["get", "-r", "-q", "--delete", "-b", "--suffix", ".bak", a, "m/", &d.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&d.join("extra.txt.bak")), b"extra");
    assert_eq!(std::fs::read_link(d.join("link.bak")).unwrap(), std::path::Path::new("nowhere"));
    assert_eq!(std::fs::read_link(d.join("link")).unwrap(), std::path::Path::new("a.txt"));

    // A suffix without a backup, or one that cannot be, is refused before anything moves.
    let out = framewire(&["put", "-r", "-q", "--suffix", ".x", a, &contents, "m"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--suffix is for backups"), "{out:?}");
    let out = framewire(&["put", "-r", "-q", "-b", "--suffix", "a/b", a, &contents, "m"]);
    assert!(!out.status.success() && text(&out.stderr).contains("suffix"), "{out:?}");
}

/// Issue 30, point 3: a sparse file's holes are neither sent nor written,
/// both ways, one file alone and in a tree, and the copy is the same
/// file (its BLAKE3 checked whole). Also: a file got into the current
/// directory under a name of its own (`get HOST f f`), which once failed.
#[test]
fn sparse_files_stay_sparse_both_ways() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let t = local.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    let size = 64u64 << 20;
    let f = std::fs::File::create(t.join("disk.img")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
    f.write_all_at(b"end", size - 3).unwrap();
    drop(f);
    let allocated = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
    if allocated(&t.join("disk.img")) > 1 << 20 {
        eprintln!("this file system keeps no holes: skipped");
        return;
    }
    std::fs::copy(t.join("disk.img"), local.path().join("alone.img")).unwrap();
    let alone = local.path().join("alone.img");
    // std::fs::copy keeps holes on Linux (copy_file_range); make sure.
    if allocated(&alone) > 1 << 20 {
        let g = std::fs::File::create(&alone).unwrap();
        g.set_len(size).unwrap();
        g.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        g.write_all_at(b"end", size - 3).unwrap();
    }
    let same = |x: &std::path::Path, y: &std::path::Path| std::fs::read(x).unwrap() == std::fs::read(y).unwrap();

    let out = framewire(&["put", "-r", "-q", a, &format!("{}/", t.display()), "t"]);
    assert!(out.status.success(), "{out:?}");
    let up = server.root.path().join("t/disk.img");
    assert!(same(&t.join("disk.img"), &up));
    assert!(allocated(&up) < 1 << 20, "put -r: {} bytes allocated", allocated(&up));
    let out = framewire(&["put", "-q", a, alone.to_str().unwrap(), "alone.img"]);
    assert!(out.status.success(), "{out:?}");
    assert!(allocated(&server.root.path().join("alone.img")) < 1 << 20, "put");

    let back = local.path().join("back");
    let out = framewire(&["get", "-r", "-q", a, "t/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(same(&t.join("disk.img"), &back.join("disk.img")));
    assert!(allocated(&back.join("disk.img")) < 1 << 20, "get -r");
    let here = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["get", "-q", a, "alone.img", "alone.img"])
        .current_dir(here.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "get into the current directory: {out:?}");
    assert!(same(&alone, &here.path().join("alone.img")));
    assert!(allocated(&here.path().join("alone.img")) < 1 << 20, "get");
}
