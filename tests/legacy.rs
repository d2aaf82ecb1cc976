//! The legacy listeners driven by small Python 3 clients written the
//! tutorial's way (`struct.pack('i', …)`, `recv(1024)`), against a real
//! `framewire serve` process.

mod common;

use std::process::{Command, Output};

use common::{Serve, BIN};

fn have_python() -> bool {
    let ok = Command::new("python3").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipping: python3 not found; the legacy tests drive the listeners with Python clients");
    }
    ok
}

/// Runs a Python client with `HOST`, `PORT` (and any `extra` variables)
/// defined before `body`.
fn python(addr: &str, body: &str, extra: &str) -> Output {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        "import socket, struct, json, hashlib, hmac, pickle, sys, os\nHOST = {host:?}\nPORT = {port}\n{extra}\n{body}"
    );
    Command::new("python3").arg("-c").arg(script).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts a server with all four legacy listeners; returns it and their
/// addresses by mode.
fn legacy_server(extra: &[&str]) -> (Serve, std::collections::HashMap<String, String>) {
    let mut args = vec![
        "--legacy",
        "exec-simple=127.0.0.1:0",
        "--legacy",
        "exec-json=127.0.0.1:0",
        "--legacy",
        "upload=127.0.0.1:0",
    ];
    args.extend(["--legacy", "download=127.0.0.1:0", "--allow-exec"]);
    args.extend_from_slice(extra);
    let mut server = Serve::start(&args);
    let mut addrs = std::collections::HashMap::new();
    for _ in 0..4 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut server.out, &mut line).unwrap();
        // "legacy MODE listening on ADDR"
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts[0], "legacy", "{line:?}");
        addrs.insert(parts[1].to_owned(), parts[4].to_owned());
    }
    (server, addrs)
}

const EXEC_SIMPLE: &str = r#"
s = socket.socket(); s.connect((HOST, PORT))
for cmd in CMDS:
    s.send(cmd.encode('utf-8'))
    total = struct.unpack('i', s.recv(4))[0]
    data = bytearray()
    while len(data) < total:
        data += s.recv(1024)
    sys.stdout.write(repr(data.decode()) + '\n')
s.close()
"#;

const EXEC_JSON: &str = r#"
s = socket.socket(); s.connect((HOST, PORT))
s.send(CMD.encode('utf-8'))
hlen = struct.unpack('i', s.recv(4))[0]
header = json.loads(s.recv(hlen).decode('utf-8'))
data = bytearray()
while len(data) < header['total_size']:
    data += s.recv(1024)
ok = hashlib.md5(data).hexdigest() == header['md5']
print(header['filename'], header['total_size'], len(data), ok, bytes(data[:12]))
"#;

#[test]
fn exec_simple_and_json() {
    if !have_python() {
        return;
    }
    let (server, addrs) = legacy_server(&["--insecure"]);
    let out = python(&addrs["exec-simple"], EXEC_SIMPLE, "CMDS = ['echo hello; echo oops >&2', 'pwd', 'exit 3']");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "'hello\\noops\\n'", "stdout then stderr");
    let root = server.root.path().canonicalize().unwrap();
    assert_eq!(lines[1], format!("'{}\\n'", root.display()), "runs in the served root");
    assert_eq!(lines[2], "''", "no output is a size of 0");

    // 10 MiB read in 1024-byte pieces, with a real MD5.
    let out = python(&addrs["exec-json"], EXEC_JSON, "CMD = 'head -c 10485760 /dev/zero | tr \"\\\\0\" a'");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "stdout+stderr 10485760 10485760 True b'aaaaaaaaaaaa'");
}

/// A tutorial client's upload, up to its close: the header, then `SEND`
/// bytes of `DATA`.
macro_rules! upload_sent {
    () => {
        r#"
s = socket.socket(); s.connect((HOST, PORT))
header = json.dumps({'filepath': FILEPATH, 'filename': FILENAME, 'filesize': len(DATA)}).encode('utf-8')
s.send(struct.pack('i', len(header)))
s.send(header)
s.sendall(DATA[:SEND])
"#
    };
}

const UPLOAD: &str = concat!(upload_sent!(), "s.close()\n");

/// [`UPLOAD`], then its end told and the server's close waited for: the
/// server has handled the upload when it returns.
const UPLOAD_AND_WAIT: &str = concat!(
    upload_sent!(),
    r#"s.shutdown(socket.SHUT_WR)
s.settimeout(10)
try:
    while s.recv(1024):
        pass
except ConnectionResetError:
    pass
s.close()
"#
);

const DOWNLOAD: &str = r#"
s = socket.socket(); s.connect((HOST, PORT))
files = pickle.loads(s.recv(1024))
print(sorted(files.items()))
for choice in CHOICES:
    s.send(choice.encode())
    if choice == 'q':
        break
    size = struct.unpack('i', s.recv(4))[0]
    data = b''
    while len(data) < size:
        data += s.recv(1024)
    print(files[int(choice)], size, hashlib.md5(data).hexdigest())
s.close()
"#;

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

#[test]
fn upload_and_download() {
    if !have_python() {
        return;
    }
    let (server, addrs) = legacy_server(&["--insecure"]);
    let root = server.root.path().to_owned();
    let vars = "FILEPATH = '/home/tutorial/report.txt'\nFILENAME = 'report.txt'\nDATA = b'x' * 300000 + b'end'\nSEND = len(DATA)";
    let out = python(&addrs["upload"], UPLOAD, vars);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(|| root.join("report.txt").exists()));
    assert_eq!(std::fs::read(root.join("report.txt")).unwrap().len(), 300_003);

    // Only the final component of `filename` is used; `filepath` never.
    let vars = "FILEPATH = '/etc/passwd'\nFILENAME = 'C:\\\\Users\\\\me\\\\notes.txt'\nDATA = b'n'\nSEND = 1";
    assert!(python(&addrs["upload"], UPLOAD, vars).status.success());
    assert!(wait_until(|| root.join("notes.txt").exists()));

    // A partial file that another transfer holds locked is left alone.
    let partial = root.join(".locked.txt.fwpart");
    std::fs::write(&partial, b"theirs").unwrap();
    let held = {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&partial).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        file
    };
    let vars = "FILEPATH = ''\nFILENAME = 'locked.txt'\nDATA = b'mine' * 1000\nSEND = len(DATA)";
    assert!(python(&addrs["upload"], UPLOAD, vars).status.success());
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(std::fs::read(&partial).unwrap(), b"theirs", "a locked partial file is not written");
    assert!(!root.join("locked.txt").exists());
    drop(held);
    assert!(python(&addrs["upload"], UPLOAD, vars).status.success());
    assert!(wait_until(|| root.join("locked.txt").exists()));
    assert_eq!(std::fs::read(root.join("locked.txt")).unwrap(), b"mine".repeat(1000));
    std::fs::remove_file(root.join("locked.txt")).unwrap();

    std::fs::write(root.join("b.bin"), vec![7u8; 5000]).unwrap();
    let out = python(&addrs["download"], DOWNLOAD, "CHOICES = ['1', '2', '3', 'q']");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "[(1, 'b.bin'), (2, 'notes.txt'), (3, 'report.txt')]");
    let md5 = |data: &[u8]| format!("{:x}", <md5::Md5 as md5::Digest>::digest(data));
    assert_eq!(lines[1], format!("b.bin 5000 {}", md5(&[7u8; 5000])));
    assert_eq!(lines[3], format!("report.txt 300003 {}", md5(&std::fs::read(root.join("report.txt")).unwrap())));
}

/// Bad input on every listener is logged and the connection closed; the
/// server goes on serving.
#[test]
fn bad_input_is_logged_and_closed() {
    if !have_python() {
        return;
    }
    let (server, addrs) = legacy_server(&["--insecure"]);
    let root = server.root.path().to_owned();
    let closed = r#"
s = socket.socket(); s.connect((HOST, PORT))
for part in PARTS:
    try:
        s.send(part)
    except OSError:
        break
s.settimeout(5)
try:
    first = s.recv(1024)
    if WANT_LISTING:
        first = s.recv(1024)
    print('closed' if first == b'' else 'open:' + repr(first))
except ConnectionResetError:
    print('closed')
"#;
    let cases: [(&str, &str, bool); 6] = [
        ("upload", "PARTS = [struct.pack('i', -5)]", false),
        ("upload", "PARTS = [struct.pack('i', 1000000000)]", false),
        ("upload", "PARTS = [struct.pack('i', 9), b'not json!']", false),
        (
            "upload",
            "H = json.dumps({'filename': '..', 'filesize': 1}).encode()\nPARTS = [struct.pack('i', len(H)), H]",
            false,
        ),
        ("download", "PARTS = [b'99']", true),
        ("download", "PARTS = [b'abc']", true),
    ];
    std::fs::write(root.join("only.txt"), b"1").unwrap();
    for (mode, parts, listing) in cases {
        let vars = format!("{parts}\nWANT_LISTING = {}", if listing { "True" } else { "False" });
        let out = python(&addrs[mode], closed, &vars);
        assert_eq!(text(&out.stdout).trim(), "closed", "{mode} {parts}: {out:?}");
    }
    // A short upload leaves nothing, neither file nor partial.
    let vars = "FILEPATH = 'x'\nFILENAME = 'short.txt'\nDATA = b'y' * 1000\nSEND = 10";
    assert!(python(&addrs["upload"], UPLOAD_AND_WAIT, vars).status.success());
    let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["only.txt"], "nothing kept from bad or short uploads");

    // Still serving.
    let out = python(&addrs["exec-simple"], EXEC_SIMPLE, "CMDS = ['echo alive']");
    assert_eq!(text(&out.stdout).trim(), "'alive\\n'");
    let (_, log) = server.terminate();
    for needle in [
        "bad length -5",
        "bad length 1000000000",
        "bad header: not JSON",
        "refused file name",
        "out of range",
        "is not a number",
        "short upload: 10 of 1000",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
}

#[test]
fn hmac_challenge() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    assert!(Command::new(BIN).args(["keygen", key.to_str().unwrap()]).status().unwrap().success());
    let secret = std::fs::read_to_string(&key).unwrap().trim().to_owned();
    let (_server, addrs) = legacy_server(&["--key-file", key.to_str().unwrap(), "--legacy-hmac"]);
    let client = r#"
s = socket.socket(); s.connect((HOST, PORT))
challenge = s.recv(32)
s.send(hmac.new(SECRET, challenge, 'md5').hexdigest().encode())
s.send(b'echo authenticated')
raw = s.recv(4)
if len(raw) < 4:
    print('closed')
else:
    total = struct.unpack('i', raw)[0]
    data = b''
    while len(data) < total:
        data += s.recv(1024)
    print(data.decode().strip())
"#;
    let out = python(&addrs["exec-simple"], client, &format!("SECRET = {:?}.encode()", secret));
    assert_eq!(text(&out.stdout).trim(), "authenticated", "{out:?}");
    let out = python(&addrs["exec-simple"], client, "SECRET = b'not the key'");
    assert_eq!(text(&out.stdout).trim(), "closed", "{out:?}");
}

#[test]
fn legacy_policy() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--legacy", "exec-simple=127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("needs --allow-exec"), "{out:?}");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-exec",
            "--insecure",
            "--legacy",
            "exec-simple=127.0.0.1:0",
            "--legacy-hmac",
        ])
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("--legacy-hmac needs a key file"), "{out:?}");
    // Off loopback without the HMAC challenge: refused (the listener is
    // bound and closed again at once; nothing is served).
    let out =
        Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0", "--legacy", "upload=0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("without --legacy-hmac"), "{out:?}");
    let out =
        Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0", "--legacy", "ftp=127.0.0.1:0"]).output().unwrap();
    assert!(text(&out.stderr).contains("unknown legacy mode `ftp`"), "{out:?}");
}

/// The listing is cut to what one recv(1024) can take; a file too large
/// for 'i' is refused, logged and the connection closed.
#[test]
fn download_limits() {
    if !have_python() {
        return;
    }
    let (server, addrs) = legacy_server(&["--insecure"]);
    let root = server.root.path().to_owned();
    // Sparse: 2.5 GiB of apparent size, no disk used.
    std::fs::File::create(root.join("a-huge.bin")).unwrap().set_len(5 << 29).unwrap();
    for i in 0..60 {
        std::fs::write(root.join(format!("file-with-a-rather-long-name-{i:03}.txt")), b"x").unwrap();
    }
    let client = r#"
s = socket.socket(); s.connect((HOST, PORT))
raw = s.recv(1024)
files = pickle.loads(raw)
print(len(raw) <= 1024, len(files), files[1])
s.send(b'1')
s.settimeout(5)
try:
    print('closed' if s.recv(4) == b'' else 'open')
except ConnectionResetError:
    print('closed')
"#;
    let out = python(&addrs["download"], client, "");
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields[0], "True", "the listing fits one recv(1024)");
    let shown: usize = fields[1].parse().unwrap();
    assert!(shown > 5 && shown < 61, "listing cut to what fits: {shown}");
    assert_eq!(fields[2], "a-huge.bin");
    assert_eq!(lines[1], "closed");
    let (_, log) = server.terminate();
    assert!(log.contains("listing cut to fit"), "{log}");
    assert!(log.contains("a-huge.bin is 2684354560 bytes, more than a signed 32-bit length can announce"), "{log}");
}

/// A link planted at the partial file's name (by any local user who can
/// write the root) is never written through: the upload lands under its
/// own name and the link's target is untouched.
#[test]
fn legacy_upload_never_writes_through_a_planted_link() {
    if !have_python() {
        return;
    }
    let (server, addrs) = legacy_server(&["--insecure"]);
    let root = server.root.path().to_owned();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, root.join(".report.txt.fwpart")).unwrap();
    let vars = "FILEPATH = 'report.txt'\nFILENAME = 'report.txt'\nDATA = b'uploaded'\nSEND = len(DATA)";
    assert!(python(&addrs["upload"], UPLOAD, vars).status.success());
    assert!(wait_until(|| root.join("report.txt").exists()));
    assert_eq!(std::fs::read_to_string(root.join("report.txt")).unwrap(), "uploaded");
    assert!(std::fs::symlink_metadata(root.join("report.txt")).unwrap().is_file(), "not a link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}
