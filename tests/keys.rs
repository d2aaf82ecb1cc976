//! Issue 31: keys per person, in OpenSSH's formats, made by the real
//! `ssh-keygen` and held by the real `ssh-agent` (Debian's openssh-client,
//! installed by `.ci/run`), against a real `framewire serve
//! --authorized-keys`: what each key may do, where, from where and until
//! when; a key removed while its session runs; the server's host key in
//! `known_hosts`; the shared key beside them; the log naming each key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Serve, BIN};

/// A person's (or a host's) key pair, made by `ssh-keygen`.
struct Pair {
    private: PathBuf,
    public: String,
}

fn ssh_keygen(dir: &Path, name: &str, passphrase: &str) -> Option<Pair> {
    let private = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"])
        .arg(&private)
        .output()
        .ok()?;
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap().trim().to_owned();
    Some(Pair { private, public })
}

/// A client's world: its own HOME (no ~/.ssh, no config, its own
/// known_hosts), no agent unless given.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home { dir: tempfile::tempdir().unwrap() }
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join(".config/framewire/known_hosts")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("HOME", self.dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("FRAMEWIRE_KEY_FILE")
            .env_remove("FRAMEWIRE_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The keys of one test: a host key, and people.
struct Keys {
    dir: tempfile::TempDir,
    host: Pair,
}

impl Keys {
    /// `None` where ssh-keygen is missing (said once).
    fn new() -> Option<Keys> {
        let dir = tempfile::tempdir().unwrap();
        let Some(host) = ssh_keygen(dir.path(), "host", "") else {
            eprintln!("no ssh-keygen: skipped (.ci/run installs openssh-client)");
            return None;
        };
        Some(Keys { dir, host })
    }

    fn person(&self, name: &str) -> Pair {
        ssh_keygen(self.dir.path(), name, "").unwrap()
    }

    fn file(&self, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join("authorized_keys");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    fn serve(&self, authorized: &Path, extra: &[&str]) -> Serve {
        let mut args = vec![
            "--authorized-keys",
            authorized.to_str().unwrap(),
            "--host-key",
            self.host.private.to_str().unwrap(),
            "--allow-exec",
        ];
        args.extend_from_slice(extra);
        Serve::start(&args)
    }
}

fn id(pair: &Pair) -> &str {
    pair.private.to_str().unwrap()
}

#[test]
fn each_key_may_do_what_its_options_say() {
    let Some(keys) = Keys::new() else { return };
    let (alice, backup, drop_box, boxed) =
        (keys.person("alice"), keys.person("backup"), keys.person("dropbox"), keys.person("boxed"));
    let file = keys.file(&[
        format!("{} alice", alice.public),
        format!("read-only {}", backup.public),
        format!("restrict,permit=\"put,mkdir\",dir=\"incoming\" {}", drop_box.public),
        format!("dir=\"jail\",no-exec {}", boxed.public),
    ]);
    let server = keys.serve(&file, &[]);
    let root = server.root.path();
    std::fs::create_dir_all(root.join("incoming")).unwrap();
    std::fs::create_dir_all(root.join("jail/in")).unwrap();
    std::fs::write(root.join("secret"), b"secret").unwrap();
    std::fs::write(root.join("jail/in/mine"), b"mine").unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("jail/in/out")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("jail/abs")).unwrap();
    let home = Home::new();
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let note = local.path().join("note.txt");
    std::fs::write(&note, b"note").unwrap();
    let note = note.to_str().unwrap();

    // A key without options may do everything; the host key is recorded.
    let out = home.run(&["exec", "-i", id(&alice), "--accept-new", a, "--", "echo", "hi"]);
    assert_eq!(text(&out.stdout), "hi\n", "{out:?}");
    let out = home.run(&["put", "-i", id(&alice), a, note, "n.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(root.join("n.txt")).unwrap(), b"note");

    // read-only: lists and reads, nothing else.
    let ro = |args: &[&str]| home.run(&[&args[..1], &["-i", id(&backup)], &args[1..]].concat());
    assert!(ro(&["ls", a]).status.success());
    let out = ro(&["get", a, "secret", "-"]);
    assert_eq!(out.stdout, b"secret", "{out:?}");
    for args in [
        &["put", a, note, "x"][..],
        &["rm", a, "n.txt"],
        &["mv", a, "n.txt", "m.txt"],
        &["mkdir", a, "d"],
        &["exec", a, "--", "true"],
    ] {
        let out = ro(args);
        assert!(!out.status.success(), "{args:?} refused: {out:?}");
        assert!(text(&out.stderr).contains("may not") && text(&out.stderr).contains("permission_denied"), "{out:?}");
    }
    let mirror = local.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let out = ro(&["put", "-r", "--delete", a, &format!("{}/", mirror.display()), "incoming"]);
    assert!(!out.status.success(), "a mirror with a read-only key: {out:?}");
    assert!(root.join("n.txt").exists() && !root.join("x").exists() && !root.join("d").exists());

    // A drop box: new files only, into its directory; it cannot read,
    // list or overwrite.
    let dropped = |args: &[&str]| home.run(&[&args[..1], &["-i", id(&drop_box)], &args[1..]].concat());
    let out = dropped(&["put", a, note, "report.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(root.join("incoming/report.txt")).unwrap(), b"note");
    std::fs::write(local.path().join("note.txt"), b"changed").unwrap();
    let out = dropped(&["put", a, note, "report.txt"]);
    assert!(!out.status.success(), "no overwrite: {out:?}");
    assert_eq!(std::fs::read(root.join("incoming/report.txt")).unwrap(), b"note");
    for args in [&["get", a, "report.txt", "-"][..], &["ls", a], &["rm", a, "report.txt"]] {
        assert!(!dropped(args).status.success(), "{args:?}");
    }
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a"), b"a").unwrap();
    let out = dropped(&["put", "-r", a, tree.to_str().unwrap(), "t"]);
    assert!(root.join("incoming/t/tree/sub/a").exists(), "a tree into the drop box: {out:?}");

    // Nor by a tree upload, whatever the existing file's age (the source
    // wins elsewhere), nor by changing an existing directory's bits.
    std::fs::create_dir_all(root.join("incoming/t2/sub")).unwrap();
    std::fs::write(root.join("incoming/t2/sub/a"), b"theirs").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    std::fs::File::options().write(true).open(root.join("incoming/t2/sub/a")).unwrap().set_modified(old).unwrap();
    std::fs::set_permissions(root.join("incoming/t2/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    std::fs::set_permissions(tree.join("sub"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = dropped(&["put", "-r", a, &format!("{}/", tree.display()), "t2"]);
    assert!(!out.status.success() && text(&out.stderr).contains("may not overwrite"), "{out:?}");
    assert_eq!(std::fs::read(root.join("incoming/t2/sub/a")).unwrap(), b"theirs", "never replaced");
    let bits = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("incoming/t2/sub")).unwrap().permissions(),
    );
    assert_eq!(bits & 0o777, 0o755, "an existing directory's bits are not changed");

    // dir=: nothing outside is visible or reachable, links included.
    let jailed = |args: &[&str]| home.run(&[&args[..1], &["-i", id(&boxed)], &args[1..]].concat());
    let out = jailed(&["ls", "-r", a]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("in/mine") && !text(&out.stdout).contains("secret"), "{out:?}");
    for path in ["../secret", "/secret", "in/out", "abs"] {
        let out = jailed(&["get", a, path, "-"]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{path}: {out:?}");
    }
    let out = jailed(&["mv", a, "in/mine", "../stolen"]);
    assert!(!out.status.success() && !root.join("stolen").exists(), "{out:?}");
    let out = jailed(&["put", a, note, "../escaped"]);
    assert!(!out.status.success() && !root.join("escaped").exists(), "{out:?}");
    let out = jailed(&["put", "-r", a, tree.to_str().unwrap(), "in"]);
    assert!(out.status.success() && root.join("jail/in/tree/sub/a").exists(), "{out:?}");
    let back = local.path().join("back");
    let out = jailed(&["get", "-r", a, "in/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(back.join("out")).unwrap().file_type().is_symlink(), "a link is data");
    assert!(!back.join("out").exists(), "never followed out of the jail");
    assert!(!jailed(&["exec", a, "--", "true"]).status.success(), "no-exec");

    // Every request's log line names its key.
    let (_, log) = server.terminate();
    let fingerprint = |pair: &Pair| {
        let out = Command::new("ssh-keygen").args(["-l", "-f"]).arg(&pair.private).output().unwrap();
        text(&out.stdout).split_whitespace().nth(1).unwrap().to_owned()
    };
    for (who, pair) in [("alice", &alice), ("backup", &backup), ("dropbox", &drop_box)] {
        let print = fingerprint(pair);
        assert!(log.lines().any(|l| l.contains("request") && l.contains(&print)), "{who} ({print}) in the log");
    }
}

/// A delta upload shows the uploader the signature of the file it
/// replaces: a key that may write but not read gets none, and its file
/// goes whole; a key that may read gets a delta.
#[test]
fn a_key_that_may_not_read_gets_no_delta() {
    let Some(keys) = Keys::new() else { return };
    let (alice, writer) = (keys.person("alice"), keys.person("writer"));
    let file = keys.file(&[
        format!("{} alice", alice.public),
        format!("restrict,permit=\"put,overwrite,list,mkdir\" {}", writer.public),
    ]);
    let server = keys.serve(&file, &[]);
    let root = server.root.path();
    let home = Home::new();
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big.bin");
    let old: Vec<u8> = (0..(1u32 << 20)).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
    for (who, delta) in [(&writer, false), (&alice, true)] {
        std::fs::write(root.join("big.bin"), &old).unwrap();
        let mut new = old.clone();
        new[1000..1010].fill(0);
        std::fs::write(&big, &new).unwrap();
        // Another time than the server's copy: not "unchanged".
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options().write(true).open(&big).unwrap().set_modified(when).unwrap();
        let args = ["put", "--delta", "--accept-new", "-i", id(who), a, big.to_str().unwrap(), "big.bin"];
        let out = home.run(&args);
        assert!(out.status.success(), "{out:?}");
        assert!(std::fs::read(root.join("big.bin")).unwrap() == new, "{out:?}");
        assert_eq!(text(&out.stderr).contains("the receiver had them: delta"), delta, "{out:?}");
    }
    // Nor in a tree's stream (PROTOCOL.md §4.6.6.1): two small changed
    // files, each under 1 MiB.
    let tree = local.path().join("t");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(root.join("t")).unwrap();
    for (who, delta) in [(&writer, false), (&alice, true)] {
        for name in ["a.bin", "b.bin"] {
            std::fs::write(root.join("t").join(name), &old[..300_000]).unwrap();
            let mut new = old[..300_000].to_vec();
            new[1000..1010].fill(0);
            std::fs::write(tree.join(name), &new).unwrap();
            let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            std::fs::File::options().write(true).open(tree.join(name)).unwrap().set_modified(when).unwrap();
        }
        let args = ["put", "-r", "--delta", "--accept-new", "-i", id(who), a, tree.to_str().unwrap(), ""];
        let out = home.run(&args);
        assert!(out.status.success(), "{out:?}");
        for name in ["a.bin", "b.bin"] {
            assert!(std::fs::read(root.join("t").join(name)).unwrap() == std::fs::read(tree.join(name)).unwrap());
        }
        assert_eq!(text(&out.stderr).contains("the receiver had them: delta"), delta, "{out:?}");
    }
}

#[test]
fn keys_are_refused_by_origin_time_and_absence() {
    let Some(keys) = Keys::new() else { return };
    let (near, far, old, stranger) = (keys.person("near"), keys.person("far"), keys.person("old"), keys.person("x"));
    let file = keys.file(&[
        format!("from=\"127.0.0.0/8,!127.0.0.9\" {}", near.public),
        format!("from=\"10.*\" {}", far.public),
        format!("expiry-time=\"20200101\" {}", old.public),
        format!("frobnicate {}", stranger.public),
    ]);
    let server = keys.serve(&file, &[]);
    let home = Home::new();
    let a = server.addr.as_str();
    assert!(home.run(&["ls", "-i", id(&near), "--accept-new", a]).status.success());
    for (who, pair) in [("far", &far), ("old", &old), ("unknown option", &stranger)] {
        let out = home.run(&["ls", "-i", id(pair), a]);
        assert!(!out.status.success(), "{who}: {out:?}");
        assert!(text(&out.stderr).contains("authentication failed"), "{who}: {out:?}");
    }
    let unlisted = keys.person("unlisted");
    assert!(!home.run(&["ls", "-i", id(&unlisted), a]).status.success());
    let (_, log) = server.terminate();
    assert!(log.contains("unknown option \"frobnicate\""), "the line refused, named: {log}");
    assert!(log.contains("expired"), "{log}");
    assert!(log.contains("may not connect from 127.0.0.1"), "{log}");
}

#[test]
fn passphrases_and_the_agent() {
    let Some(keys) = Keys::new() else { return };
    let dir = keys.dir.path();
    let locked = ssh_keygen(dir, "locked", "open sesame").unwrap();
    let agent_key = keys.person("agent");
    let file = keys.file(&[locked.public.clone(), agent_key.public.clone()]);
    let server = keys.serve(&file, &[]);
    let home = Home::new();
    let a = server.addr.as_str();
    // The passphrase from SSH_ASKPASS, as ssh takes it without a terminal.
    let askpass = dir.join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'open sesame'\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&askpass).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = home
        .command(&["ls", "-i", id(&locked), "--accept-new", a])
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "#!/bin/sh\necho nope\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = home
        .command(&["ls", "-i", id(&locked), a])
        .env("SSH_ASKPASS", &wrong)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("wrong passphrase"), "{out:?}");

    // ssh-agent, started here (by PID, stopped after), holding two keys of
    // which the server takes one: no -i, no key file.
    let socket = dir.join("agent.sock");
    let Ok(mut agent) = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).spawn() else {
        eprintln!("no ssh-agent: the agent part is skipped");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = keys.person("other");
    for pair in [&other, &agent_key] {
        let out = Command::new("ssh-add").arg(&pair.private).env("SSH_AUTH_SOCK", &socket).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = home.command(&["-v", "ls", a]).env("SSH_AUTH_SOCK", &socket).output().unwrap();
    // Keys in the agent change nothing for a server without keys: it is
    // spoken to in plaintext, as before.
    let plain = Serve::start(&[]);
    let plain_out = home.command(&["ls", &plain.addr]).env("SSH_AUTH_SOCK", &socket).output().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("authenticated with key"), "-v says which key: {out:?}");
    assert!(plain_out.status.success(), "a plaintext server with an agent about: {plain_out:?}");
}

#[test]
fn a_key_removed_ends_its_session_and_its_next_connection() {
    let Some(keys) = Keys::new() else { return };
    let (alice, bob) = (keys.person("alice"), keys.person("bob"));
    let file = keys.file(&[alice.public.clone(), bob.public.clone()]);
    let server = keys.serve(&file, &[]);
    let home = Home::new();
    let a = server.addr.as_str();
    assert!(home.run(&["ls", "-i", id(&alice), "--accept-new", a]).status.success());
    // Revoked only once the session runs its command (it has said so).
    let mut long = home
        .command(&["exec", "-i", id(&alice), a, "--", "echo started; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = long.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first);
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    if first.as_deref() != Ok("started\n") {
        let _ = long.kill();
        let _ = long.wait();
        panic!("the session did not start within 10 s: {first:?}");
    }
    // Revoked: bob's line alone is left, written as editors do (a new
    // file renamed over the old).
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, format!("{}\n", bob.public)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = long.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = long.kill();
    let _ = long.wait();
    let status = status.expect("the session ends within seconds of the revocation");
    assert!(!status.success());
    let mut said = String::new();
    std::io::Read::read_to_string(long.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(said.contains("the key was revoked"), "{said}");
    assert!(!home.run(&["ls", "-i", id(&alice), a]).status.success(), "the next connection is refused");
    assert!(home.run(&["ls", "-i", id(&bob), a]).status.success(), "bob is still in");
    // An unreadable file refuses every key.
    std::fs::remove_file(&file).unwrap();
    assert!(!home.run(&["ls", "-i", id(&bob), a]).status.success());
    let (_, log) = server.terminate();
    assert!(log.contains("session ended: the key was removed"), "{log}");
    assert!(log.contains("cannot be read: every key is refused"), "{log}");
}

#[test]
fn host_keys_are_checked_against_known_hosts() {
    let Some(keys) = Keys::new() else { return };
    let alice = keys.person("alice");
    let file = keys.file(std::slice::from_ref(&alice.public));
    let server = keys.serve(&file, &[]);
    let home = Home::new();
    let addr = server.addr.clone();
    let a = addr.as_str();
    // First contact, not on a terminal: refused unless --accept-new.
    let out = home.run(&["ls", "-i", id(&alice), a]);
    assert!(!out.status.success() && text(&out.stderr).contains("is not known"), "{out:?}");
    assert!(home.run(&["ls", "-i", id(&alice), "--accept-new", a]).status.success());
    let known = std::fs::read_to_string(home.known_hosts()).unwrap();
    let port = a.rsplit(':').next().unwrap();
    assert!(known.starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 ")), "{known}");
    assert!(home.run(&["ls", "-i", id(&alice), a]).status.success(), "known now");
    // The same address with another host key: a hard refusal, even with
    // --accept-new, naming the old key and how to remove it.
    drop(server);
    let other = ssh_keygen(keys.dir.path(), "host2", "").unwrap();
    let args =
        ["--authorized-keys", file.to_str().unwrap(), "--host-key", other.private.to_str().unwrap(), "--listen", a];
    let mut second = Command::new(BIN)
        .arg("serve")
        .args(args)
        .arg("--root")
        .arg(home.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(second.stdout.take().unwrap()), &mut line).unwrap();
    let out = home.run(&["ls", "-i", id(&alice), "--accept-new", a]);
    let _ = second.kill();
    let _ = second.wait();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("CHANGED") && err.contains("known-hosts --remove"), "{out:?}");
    let out = home.run(&["known-hosts", "--remove", &format!("[127.0.0.1]:{port}")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(home.known_hosts()).unwrap(), "");
}

/// On a terminal, as ssh: the key file's passphrase asked without echo,
/// and a host key not known yet asked about, its fingerprint shown.
#[test]
fn on_a_terminal_the_passphrase_and_the_host_key_are_asked() {
    let Some(keys) = Keys::new() else { return };
    let locked = ssh_keygen(keys.dir.path(), "locked", "tty secret").unwrap();
    let file = keys.file(std::slice::from_ref(&locked.public));
    let server = keys.serve(&file, &[]);
    std::fs::write(server.root.path().join("seen.txt"), b"x").unwrap();
    let home = Home::new();
    let mut cmd = home.command(&["ls", "-i", id(&locked), &server.addr]);
    let (mut pty, mut child) = common::Pty::spawn(&mut cmd);
    pty.expect("Enter passphrase for key");
    pty.send(b"tty secret\n");
    pty.expect("ED25519 key fingerprint is SHA256:");
    pty.expect("(yes/no)?");
    pty.send(b"yes\n");
    pty.expect("seen.txt");
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", pty.all);
    assert!(!pty.all.contains("tty secret"), "the passphrase is not echoed: {}", pty.all);
    assert_eq!(std::fs::read_to_string(home.known_hosts()).unwrap().lines().count(), 1);
}

/// A host's `identity` in the config file is its key, as `-i` would be.
#[test]
fn a_host_s_identity_comes_from_the_config_file() {
    let Some(keys) = Keys::new() else { return };
    let alice = keys.person("alice");
    let file = keys.file(std::slice::from_ref(&alice.public));
    let server = keys.serve(&file, &[]);
    let home = Home::new();
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let config = home.dir.path().join(".config/framewire/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("[hosts.lab]\naddress = \"{host}\"\nport = {port}\nidentity = \"{}\"\n", id(&alice)),
    )
    .unwrap();
    let out = home.run(&["config", "show", "lab"]);
    assert!(text(&out.stdout).contains(&format!("identity     {}", id(&alice))), "{out:?}");
    let out = home.run(&["exec", "--accept-new", "lab", "--", "echo", "configured"]);
    assert_eq!(text(&out.stdout), "configured\n", "{out:?}");
}

/// A fleet with `--accept-new` records each host once, however many
/// connections it makes to it.
#[test]
fn a_fleet_records_each_host_once() {
    let Some(keys) = Keys::new() else { return };
    let alice = keys.person("alice");
    let file = keys.file(std::slice::from_ref(&alice.public));
    let (one, two) = (keys.serve(&file, &[]), keys.serve(&file, &[]));
    let home = Home::new();
    let hosts = format!("{},{}", one.addr, two.addr);
    for _ in 0..2 {
        let out = home.run(&["exec", "-w", &hosts, "-i", id(&alice), "--accept-new", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
        let out = home.run(&["put", "-w", &hosts, "-i", id(&alice), "--accept-new", id(&alice), "copy"]);
        assert!(out.status.success(), "{out:?}");
    }
    let known = std::fs::read_to_string(home.known_hosts()).unwrap();
    assert_eq!(known.lines().count(), 2, "{known}");
}

/// A key file the server would serve, and legacy listeners that know no
/// keys per person, are refused at start.
#[test]
fn the_server_refuses_key_files_it_would_serve() {
    let Some(keys) = Keys::new() else { return };
    let alice = keys.person("alice");
    let inside = keys.dir.path().join("authorized_keys");
    std::fs::write(&inside, format!("{}\n", alice.public)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(keys.dir.path())
        .arg("--authorized-keys")
        .arg(&inside)
        .arg("--host-key")
        .arg(&keys.host.private)
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("inside the served root"), "{out:?}");
}

#[test]
fn the_shared_key_alone_and_beside_keys() {
    let Some(keys) = Keys::new() else { return };
    let alice = keys.person("alice");
    let file = keys.file(std::slice::from_ref(&alice.public));
    let shared = keys.dir.path().join("shared");
    assert!(common::framewire(&["keygen", shared.to_str().unwrap()]).status.success());
    let server = keys.serve(&file, &["--key-file", shared.to_str().unwrap()]);
    let home = Home::new();
    let a = server.addr.as_str();
    let out = home.run(&["--key-file", shared.to_str().unwrap(), "exec", a, "--", "echo", "shared"]);
    assert_eq!(text(&out.stdout), "shared\n", "{out:?}");
    let out = home.run(&["exec", "-i", id(&alice), "--accept-new", a, "--", "echo", "own"]);
    assert_eq!(text(&out.stdout), "own\n", "{out:?}");
    // A key of one's own against a server with the shared key only.
    let only_shared = Serve::start(&["--key-file", shared.to_str().unwrap()]);
    let out = home.run(&["ls", "-i", id(&alice), &only_shared.addr]);
    assert!(!out.status.success() && text(&out.stderr).contains("authentication failed"), "{out:?}");
    let (_, log) = server.terminate();
    assert!(log.contains("key=shared-key"), "{log}");
}
