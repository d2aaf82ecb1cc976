//! The client's config file, read from a temporary HOME: aliases with
//! their address, port, key and remote directory; defaults for flags;
//! one clear error for a bad file; `config show`.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use common::{Serve, BIN};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `framewire ARGS` with HOME set to `home` and nothing else pointing
/// at a config file or key.
fn with_home(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("FRAMEWIRE_CONFIG")
        .env_remove("FRAMEWIRE_KEY_FILE")
        .output()
        .unwrap()
}

fn keygen(path: &Path) {
    let out = Command::new(BIN).arg("keygen").arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A HOME whose config file is `config` (and whose config directory
/// holds a fresh key, `box.key`).
fn home_with(config: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/framewire");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    home
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn an_alias_brings_address_port_key_and_directory() {
    let home = home_with("");
    let key = home.path().join(".config/framewire/box.key");
    keygen(&key);
    let server = Serve::start(&["--allow-exec", "--key-file", key.to_str().unwrap()]);
    std::fs::create_dir(server.root.path().join("docs")).unwrap();
    let config = format!(
        "# the test's one server\n[hosts.box]\naddress = \"127.0.0.1\"\nport = {}\nkey-file = \"box.key\"\ndir = \"docs\"\n\n\
         [hosts.fresh]\naddress = \"127.0.0.1\"\nport = {}\nkey-file = \"box.key\"\ndir = \"home\"\n\n\
         [groups]\nlab = [\"box\", \"other\"]\n",
        port(&server.addr),
        port(&server.addr)
    );
    std::fs::write(home.path().join(".config/framewire/config.toml"), config).unwrap();
    let h = home.path();
    let local = tempfile::tempdir().unwrap();
    let notes = local.path().join("notes.txt");
    std::fs::write(&notes, b"notes").unwrap();

    // put with HOST:PATH and with HOST PATH...: relative to the alias's dir.
    let out = with_home(h, &["put", "-q", notes.to_str().unwrap(), "box:"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("docs/notes.txt")).unwrap(), b"notes");
    let out = with_home(h, &["put", "-q", "box", notes.to_str().unwrap(), "copy.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("docs/copy.txt")).unwrap(), b"notes");
    // An alias's dir is a directory: with no `home` on the server, a put
    // to the alias goes into it (issue 28: it made a file named `home`).
    let out = with_home(h, &["put", "-q", notes.to_str().unwrap(), "fresh:"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(server.root.path().join("home/notes.txt")).unwrap(), b"notes");
    let out = with_home(h, &["put", "-q", "fresh", notes.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(server.root.path().join("home").is_dir());
    // A leading slash starts from the served root.
    let out = with_home(h, &["put", "-q", notes.to_str().unwrap(), "box:/top.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert!(server.root.path().join("top.txt").is_file());

    // ls, get, rm, mv and mkdir through the alias.
    let out = with_home(h, &["ls", "box"]);
    let listing = text(&out.stdout);
    assert!(listing.contains("notes.txt") && listing.contains("copy.txt") && !listing.contains("top.txt"), "{out:?}");
    let out = with_home(h, &["get", "-q", "box:copy.txt", local.path().join("back.txt").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(local.path().join("back.txt")).unwrap(), b"notes");
    assert!(with_home(h, &["mkdir", "box", "sub"]).status.success());
    assert!(with_home(h, &["mv", "box", "copy.txt", "sub/moved.txt"]).status.success());
    assert!(server.root.path().join("docs/sub/moved.txt").is_file());
    assert!(with_home(h, &["rm", "box", "sub/moved.txt"]).status.success());
    assert!(!server.root.path().join("docs/sub/moved.txt").exists());

    // exec with the alias's key; an explicit port on the command line wins.
    let out = with_home(h, &["exec", "box", "--", "echo via alias"]);
    assert_eq!(text(&out.stdout), "via alias\n", "{out:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = with_home(h, &["exec", &format!("box:{closed_port}"), "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains(&format!("127.0.0.1:{closed_port}")), "{out:?}");

    // --key-file on the command line beats the host's; the host's beats
    // FRAMEWIRE_KEY_FILE.
    let wrong = h.join("wrong.key");
    keygen(&wrong);
    let out = with_home(h, &["ls", "--key-file", wrong.to_str().unwrap(), "box"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("authentication failed"), "{out:?}");
    let out = Command::new(BIN)
        .args(["ls", "box"])
        .env("HOME", h)
        .env_remove("XDG_CONFIG_HOME")
        .env("FRAMEWIRE_KEY_FILE", &wrong)
        .output()
        .unwrap();
    assert!(out.status.success(), "the host's key wins over the environment's: {out:?}");

    // config show says what applies and where it comes from.
    let out = with_home(h, &["config", "show", "box"]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains(&format!("address      127.0.0.1:{} (port: the host's entry)", port(&server.addr))),
        "{shown}"
    );
    assert!(shown.contains(&format!("key-file     {} (the host's entry)", key.display())), "{shown}");
    assert!(shown.contains("dir          docs") && shown.contains("groups       lab"), "{shown}");
    let out = with_home(h, &["config", "show", "elsewhere:7"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("no alias") && shown.contains("address      elsewhere:7 (port: command line)"), "{shown}");
    assert!(shown.contains("key-file     none"), "{shown}");
    let out = with_home(h, &["config", "show"]);
    assert!(
        text(&out.stdout).contains("hosts        box") && text(&out.stdout).contains("groups       lab"),
        "{out:?}"
    );
}

#[test]
fn a_bad_config_file_is_one_error_with_file_and_line() {
    let home = home_with("[defaults]\njobs = 2\n\n[hosts.web]\naddress = \"127.0.0.1\"\nprot = 9910\n");
    let file = home.path().join(".config/framewire/config.toml");
    let out = with_home(home.path(), &["ls", "web"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}:6:1: unknown field `prot`", file.display())), "{err}");

    std::fs::write(&file, "[defaults]\nbwlimit = \"fast\"\n").unwrap();
    let err = text(&with_home(home.path(), &["config", "show", "x"]).stderr);
    assert!(err.contains(&format!("{}:2:11: \"fast\": a rate", file.display())), "{err}");

    std::fs::write(&file, "[hosts.web\n").unwrap();
    let err = text(&with_home(home.path(), &["exec", "web", "--", "true"]).stderr);
    assert!(err.contains(&format!("{}:1:", file.display())), "{err}");

    // The server and the commands that print text do not read it.
    let out = with_home(home.path(), &["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn config_flag_and_environment_name_the_file() {
    let home = home_with("[hosts.web]\naddress = \"127.0.0.9\"\n");
    let other = home.path().join("other.toml");
    std::fs::write(&other, "[hosts.web]\naddress = \"127.0.0.8\"\nport = 4242\n").unwrap();
    let shown = text(&with_home(home.path(), &["config", "show", "web"]).stdout);
    assert!(shown.contains("address      127.0.0.9:9909 (port: built in)"), "{shown}");
    let shown = text(&with_home(home.path(), &["--config", other.to_str().unwrap(), "config", "show", "web"]).stdout);
    assert!(shown.contains("address      127.0.0.8:4242"), "{shown}");
    let out = Command::new(BIN)
        .args(["config", "show", "web"])
        .env("HOME", home.path())
        .env("FRAMEWIRE_CONFIG", &other)
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("127.0.0.8:4242"), "{out:?}");

    // A named file must be there; the default one need not.
    let out = with_home(home.path(), &["--config", "/nonexistent/framewire.toml", "config", "show"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("cannot read the config file /nonexistent/framewire.toml"), "{out:?}");
    let empty = tempfile::tempdir().unwrap();
    let out = with_home(empty.path(), &["config", "show", "web"]);
    assert!(text(&out.stdout).contains("config file  none") && out.status.success(), "{out:?}");

    // XDG_CONFIG_HOME moves the default.
    let out = Command::new(BIN)
        .args(["config", "show", "web"])
        .env("HOME", empty.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env_remove("FRAMEWIRE_CONFIG")
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("127.0.0.9:9909"), "{out:?}");

    // serve takes no config file.
    let out = with_home(home.path(), &["serve", "--config", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--config means nothing here"), "{out:?}");
}

/// `--bwlimit` (and the config file's `bwlimit`) hold a copy's rate: a
/// limit can only make a copy slower, so this asserts the floor it sets.
#[test]
fn bwlimit_holds_the_rate_of_a_copy() {
    let server = Serve::start(&[]);
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("three-mib");
    std::fs::write(&file, common::pattern(3 << 20, 7)).unwrap();
    let home =
        home_with(&format!("[hosts.slow]\naddress = \"127.0.0.1\"\nport = {}\nbwlimit = \"1M\"\n", port(&server.addr)));

    let started = Instant::now();
    let out = with_home(home.path(), &["put", "-q", file.to_str().unwrap(), "slow:"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    // 3 MiB at 1 MiB/s, less the bucket's first quarter second.
    assert!(took.as_secs_f64() > 2.3, "{took:?}");
    assert_eq!(std::fs::read(server.root.path().join("three-mib")).unwrap(), std::fs::read(&file).unwrap());

    let started = Instant::now();
    let back = local.path().join("back");
    let out = with_home(home.path(), &["get", "-q", "--bwlimit", "2M", "slow:three-mib", back.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took.as_secs_f64() > 1.1, "--bwlimit 2M: {took:?}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());

    let out = with_home(home.path(), &["put", "--bwlimit", "10", file.to_str().unwrap(), "slow:x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("at least 1K"), "{out:?}");
}

/// `framewire hosts`: ranges with padding, the config file's groups,
/// excludes, folding, and one clear error for a malformed set.
#[test]
fn hosts_expands_and_folds_host_sets() {
    let home = home_with("[groups]\nweb = [\"web[01-04]\", \"@edge\"]\nedge = [\"edge1\", \"edge2\"]\n");
    let h = home.path();
    let out = with_home(h, &["hosts", "@web,db[1-3,7]", "-x", "web02,@edge"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "web01\nweb03\nweb04\ndb1\ndb2\ndb3\ndb7\n");
    let out = with_home(h, &["hosts", "--fold", "web01,web02,web03,web05,web07,web06,127.0.0.2,127.0.0.1"]);
    assert_eq!(text(&out.stdout), "127.0.0.[1-2],web[01-03,05-07]\n", "{out:?}");
    for (bad, says) in [("web[1-3", "without its ']'"), ("@nope", "@nope: no such group"), ("h[5-1]", "backwards")] {
        let out = with_home(h, &["hosts", bad]);
        assert_eq!(out.status.code(), Some(255), "{out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    let out = with_home(h, &["hosts", "--key-file", "k", "a"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
