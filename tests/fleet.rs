//! Fleets: `exec -w`, `put -w`, `get -w` against many real servers, each
//! on its own loopback address and port, reached through the config
//! file's aliases; one down, one that accepts TCP and never answers, one
//! with another key; network namespaces with their own `framewire serve`;
//! 1,000 hosts in a window of 64.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, BIN};
use framewire::auth::Key;
use framewire::client::fleet::{self, Event, FleetOptions, Host, HostError};
use framewire::client::tree::Endpoint;
use framewire::server::{self, Config};
use tokio::sync::oneshot;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Servers in this process, one per host, and the config file naming them.
struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Each served root, by host (empty for hosts that serve nothing).
    roots: Vec<(String, PathBuf)>,
    stops: Vec<oneshot::Sender<()>>,
    /// Listeners that accept TCP (the kernel does) and never answer.
    _silent: Vec<std::net::TcpListener>,
    toml: String,
}

impl Fleet {
    /// An empty fleet: a key (`key`) and a config file using it by default.
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        Key::generate().write_new(&dir.path().join("key")).unwrap();
        let config = dir.path().join("config.toml");
        let toml = "[defaults]\nkey-file = \"key\"\n".to_owned();
        Fleet { dir, config, roots: Vec::new(), stops: Vec::new(), _silent: Vec::new(), toml }
    }

    fn key(&self) -> Key {
        Key::from_file(&self.dir.path().join("key")).unwrap()
    }

    fn alias(&mut self, name: &str, addr: std::net::SocketAddr) {
        let entry = format!("[hosts.{name}]\naddress = \"{}\"\nport = {}\n", addr.ip(), addr.port());
        self.toml.push_str(&entry);
        std::fs::write(&self.config, &self.toml).unwrap();
    }

    /// A host `name` served on `ip` (port 0: its own), its root holding a
    /// file `name` with its name; `root` shared if given.
    async fn serve(&mut self, name: &str, ip: &str, key: Option<Key>, root: Option<&Path>) {
        let root = match root {
            Some(r) => r.to_owned(),
            None => {
                let r = self.dir.path().join("roots").join(name);
                std::fs::create_dir_all(&r).unwrap();
                std::fs::write(r.join("name"), name).unwrap();
                r
            }
        };
        let mut config = Config::new(&root);
        config.allow_exec = true;
        config.key = key.or_else(|| Some(self.key()));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::Server::open(config).await.unwrap().serve(listener, async {
            let _ = stopped.await;
        }));
        self.stops.push(stop);
        self.roots.push((name.to_owned(), root));
        self.alias(name, addr);
    }

    /// A host whose address has nothing listening.
    fn down(&mut self, name: &str, ip: &str) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        self.alias(name, addr);
    }

    /// A host that accepts connections and never says a word.
    fn silent(&mut self, name: &str, ip: &str) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        self.alias(name, listener.local_addr().unwrap());
        self._silent.push(listener);
    }

    fn root(&self, name: &str) -> &Path {
        &self.roots.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("FRAMEWIRE_CONFIG", &self.config).env_remove("FRAMEWIRE_KEY_FILE");
        cmd
    }

    /// `framewire ARGS` with this fleet's config file, to its end.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }
}

/// Sorted lines, for output whose order across hosts is the network's.
fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = text(bytes).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// h01..h05 fine, h06 with another key, h07 down, h08 silent.
async fn eight() -> Fleet {
    let mut f = Fleet::new();
    for i in 1..=5 {
        f.serve(&format!("h0{i}"), &format!("127.0.0.{}", i + 1), None, None).await;
    }
    f.serve("h06", "127.0.0.7", Some(Key::generate()), None).await;
    f.down("h07", "127.0.0.8");
    f.silent("h08", "127.0.0.9");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_hosts_reports_each_outcome_apart() {
    let f = eight().await;
    let all = ["--connect-timeout", "2", "exec", "-w", "h[01-08]", "--"];
    let out = f.run(&[&all[..], &["echo out-$(cat name); echo err-$(cat name) >&2"]].concat());
    assert_eq!(out.status.code(), Some(255), "a host unreachable or refusing the key: {out:?}");
    let want: Vec<String> = (1..=5).map(|i| format!("h0{i}: out-h0{i}")).collect();
    assert_eq!(sorted_lines(&out.stdout), want, "stdout: each line prefixed, stderr apart");
    let err = text(&out.stderr);
    for i in 1..=5 {
        assert!(err.contains(&format!("h0{i}: err-h0{i}\n")), "{err}");
    }
    assert!(err.contains("framewire: h06: key refused: "), "{err}");
    assert!(err.contains("framewire: h07: unreachable: cannot connect"), "{err}");
    assert!(
        err.contains("framewire: h08: unreachable: cannot connect to 127.0.0.9:")
            && err.contains("no answer within 2s"),
        "{err}"
    );
    assert!(err.contains("framewire: 8 hosts: 5 ok, 2 unreachable, 1 key refused\n"), "{err}");
    assert!(err.contains("framewire: unreachable: h[07-08]\n"), "{err}");
    assert!(err.contains("framewire: key refused: h06\n"), "{err}");

    // The largest remote exit code when every host answered.
    for (host, code) in [("h02", "3"), ("h03", "7")] {
        std::fs::write(f.root(host).join("code"), code).unwrap();
    }
    let out = f.run(&["exec", "-w", "h[01-05]", "--", "exit $(cat code 2>/dev/null || echo 0)"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("framewire: h02: exit code 3\n") && err.contains("framewire: h03: exit code 7\n"), "{err}");
    assert!(err.contains("framewire: failed: h[02-03]\n"), "{err}");

    // All well: silent on stderr, exit 0.
    let out = f.run(&["exec", "-w", "h[01-05]", "--", "true"]);
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_each_remote_process_group() {
    let f = eight().await;
    let start = std::time::Instant::now();
    let out = f.run(&["exec", "-w", "h[01-03]", "--timeout", "1", "--", "sleep 60 & echo $! > pid; wait"]);
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(137), "killed, 128 + SIGKILL: {out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("framewire: timed out (process group killed): h[01-03]\n"), "{err}");
    for host in ["h01", "h02", "h03"] {
        assert!(err.contains(&format!("framewire: {host}: timed out after")), "{err}");
        let pid: u32 = std::fs::read_to_string(f.root(host).join("pid")).unwrap().trim().parse().unwrap();
        assert!(common::wait_gone(pid, Duration::from_secs(5)).await, "{host}'s sleep {pid} still runs");
    }

    // The shell exits 0 at once, its background sleep holds the output
    // open past the timeout: timed out, so not 0.
    let out = f.run(&["exec", "-w", "h01", "--timeout", "1", "--", "sleep 60 & echo started"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("framewire: timed out (process group killed): h01\n"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_output_is_folded_by_identical_results() {
    let f = eight().await;
    for (host, say) in [("h01", "A"), ("h02", "A"), ("h03", "A"), ("h04", "B"), ("h05", "B")] {
        std::fs::write(f.root(host).join("say"), format!("{say}\nsecond line\n")).unwrap();
    }
    std::fs::write(f.root("h05").join("code"), "1").unwrap();
    std::fs::write(f.root("h02").join("warn"), "").unwrap();
    let cmd = "cat say; test -e warn && echo careful >&2; exit $(cat code 2>/dev/null || echo 0)";
    let out = f.run(&["--connect-timeout", "2", "exec", "-b", "-w", "h[01-08]", "--", cmd]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let want = "\
------------------
h[01,03] (2 hosts)
------------------
A
second line
---------------
h02 (1 host)
---------------
A
second line
---------------
h04 (1 host)
---------------
B
second line
-------------------------
h05 (1 host, exit code 1)
-------------------------
B
second line
";
    assert_eq!(text(&out.stdout), want);
    let err = text(&out.stderr);
    assert!(err.contains("-------------------\nh02 (1 host) stderr\n-------------------\ncareful\n"), "{err}");
    assert!(err.contains("framewire: failed: h05\n"), "{err}");
    assert!(err.contains("framewire: unreachable: h[07-08]\n"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gives_one_object_per_host() {
    let f = eight().await;
    std::fs::write(f.root("h04").join("code"), "4").unwrap();
    let out = f.run(&[
        "--connect-timeout",
        "2",
        "exec",
        "--json",
        "-w",
        "h[01-08]",
        "--",
        "cat name; echo e >&2; exit $(cat code 2>/dev/null || echo 0)",
    ]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let mut seen = std::collections::BTreeMap::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        seen.insert(v["host"].as_str().unwrap().to_owned(), v);
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    for i in [1, 2, 3, 5] {
        let v = &seen[&format!("h0{i}")];
        assert_eq!(v["status"], "ok");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["stdout"], format!("h0{i}"));
        assert_eq!(v["stderr"], "e\n");
        assert!(v["error"].is_null() && v["duration"].as_f64().unwrap() >= 0.0, "{v}");
    }
    assert_eq!(seen["h04"]["status"], "failed");
    assert_eq!(seen["h04"]["exit_code"], 4);
    assert_eq!(seen["h06"]["status"], "key_refused");
    assert_eq!(seen["h07"]["status"], "unreachable");
    assert_eq!(seen["h08"]["status"], "unreachable");
    for h in ["h06", "h07", "h08"] {
        assert!(seen[h]["exit_code"].is_null() && seen[h]["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_sets_from_files_stdin_groups_and_excludes() {
    let mut f = eight().await;
    f.toml.push_str("[groups]\nodd = [\"h01\", \"h03\", \"h05\"]\n");
    std::fs::write(&f.config, &f.toml).unwrap();
    let list = f.dir.path().join("hosts.txt");
    std::fs::write(&list, "# the first two\nh01\nh02   # and a comment\n\n@odd\n").unwrap();
    let hosts_of = |out: &Output| -> Vec<String> {
        assert!(out.status.success(), "{out:?}");
        let mut h: Vec<String> = text(&out.stdout).lines().map(|l| l.split(':').next().unwrap().to_owned()).collect();
        h.sort();
        h
    };
    let out = f.run(&["exec", "--hostfile", list.to_str().unwrap(), "-x", "h03", "--", "true; echo"]);
    assert_eq!(hosts_of(&out), ["h01", "h02", "h05"]);

    let mut child = f
        .cmd(&["exec", "-w", "-", "-w", "h04", "--", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"h02\n@odd # a group\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(hosts_of(&out), ["h01", "h02", "h03", "h04", "h05"]);

    // Each malformed set is one clear line, before anything connects.
    for (set, why) in [
        ("h[01-", "without its ']'"),
        ("h[05-01]", "runs backwards"),
        ("@nope", "no such group"),
        ("h,,x", "empty item"),
    ] {
        let out = f.run(&["exec", "-w", set, "--", "true"]);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.lines().count() == 1 && err.contains(why), "{set}: {err}");
    }
    let out = f.run(&["exec", "-w", "h[01-02]", "-x", "h[01-02]", "--", "true"]);
    assert!(text(&out.stderr).contains("no hosts: -x left out all of them"), "{out:?}");
    let out = f.run(&["exec", "-x", "h01", "h01", "--", "true"]);
    assert!(text(&out.stderr).contains("-x leaves hosts out of a host set"), "{out:?}");
    let out = f.run(&["exec", "-w", "h01", "-t", "--", "true"]);
    assert!(text(&out.stderr).contains("a terminal is for one host"), "{out:?}");

    // The open-file limit raised to what -f needs, or one clear error.
    let out = Command::new("sh")
        .args(["-c", "ulimit -Sn 64; exec \"$0\" exec -f 400 -w 'h[01-05]' -- true", BIN])
        .env("FRAMEWIRE_CONFIG", &f.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "the soft limit raised: {out:?}");
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 64; exec \"$0\" exec -f 400 -w 'h[01-05]' -- true", BIN])
        .env("FRAMEWIRE_CONFIG", &f.config)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("needs 464 open files") && err.contains("at most 64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_on_twenty_hosts_verified_on_each() {
    let mut f = Fleet::new();
    for i in 1..=20 {
        f.serve(&format!("n{i:02}"), &format!("127.0.2.{i}"), None, None).await;
    }
    f.down("n21", "127.0.2.21");
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(src.join("site/css")).unwrap();
    let big = pattern(5 * 1024 * 1024 + 1, 7);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("site/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(src.join("site/css/a.css"), pattern(70_000, 3)).unwrap();

    let big_arg = src.join("big.bin");
    // The trailing slash: the directory's contents into www/, as rsync.
    let site = PathBuf::from(format!("{}/", src.join("site").display()));
    let out = f.run(&["put", "-w", "n[01-20]", "--fanout", "8", big_arg.to_str().unwrap(), "inbox/"]);
    assert!(out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.matches("1 file(s), 5.00 MiB sent").count(), 20, "{err}");
    let out = f.run(&["put", "-w", "n[01-20]", "-r", site.to_str().unwrap(), "www"]);
    assert!(out.status.success(), "{out:?}");
    for i in 1..=20 {
        let root = f.root(&format!("n{i:02}")).to_owned();
        assert!(std::fs::read(root.join("inbox/big.bin")).unwrap() == big, "n{i:02}: big.bin differs");
        assert_eq!(std::fs::read(root.join("www/index.html")).unwrap(), b"<h1>hi</h1>");
        assert_eq!(std::fs::read(root.join("www/css/a.css")).unwrap(), pattern(70_000, 3));
    }

    // Again, with the down host: nothing resent, that host named, 255.
    let out = f.run(&["put", "-w", "n[01-21]", "--json", "-r", site.to_str().unwrap(), "www"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let records: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 21);
    for r in &records {
        if r["host"] == "n21" {
            assert_eq!(r["status"], "unreachable", "{r}");
        } else {
            assert_eq!(
                (r["status"].as_str(), r["files"].as_u64(), r["unchanged"].as_u64()),
                (Some("ok"), Some(0), Some(2)),
                "{r}"
            );
        }
    }
    assert!(text(&out.stderr).contains("framewire: unreachable: n21\n"), "{out:?}");

    // A file that differs on one host and is not older: kept there only
    // under --update; replaced by default (the source wins).
    let n05 = f.root("n05").join("www/index.html");
    std::fs::write(&n05, "changed there").unwrap();
    let out = f.run(&["put", "-w", "n[01-20]", "-r", "-c", "-u", site.to_str().unwrap(), "www"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("framewire: n05: 1 file(s) not replaced"), "{err}");
    assert!(err.contains("framewire: files not replaced (--force replaces them): n05\n"), "{err}");
    assert_eq!(std::fs::read(&n05).unwrap(), b"changed there");
    let out = f.run(&["put", "-w", "n[01-20]", "-r", "-c", site.to_str().unwrap(), "www"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&n05).unwrap(), b"<h1>hi</h1>");

    // get -w: each host's file into DIR/HOST/; a link planted at one
    // host's directory (issue 28) is replaced, never followed.
    let back = f.dir.path().join("back");
    let victim = f.dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("big.bin"), b"the victim's own").unwrap();
    std::fs::create_dir_all(&back).unwrap();
    std::os::unix::fs::symlink(&victim, back.join("n03")).unwrap();
    let out = f.run(&["get", "-w", "n[01-20]", "inbox/big.bin", "www/css/a.css", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(victim.join("big.bin")).unwrap(), b"the victim's own");
    assert!(!victim.join("a.css").exists() && !back.join("n03").is_symlink(), "{out:?}");
    assert!(text(&out.stderr).contains("framewire: n03: replaced "), "{out:?}");
    for i in 1..=20 {
        let mine = back.join(format!("n{i:02}"));
        assert!(std::fs::read(mine.join("big.bin")).unwrap() == big, "n{i:02}");
        assert_eq!(std::fs::read(mine.join("a.css")).unwrap(), pattern(70_000, 3));
    }
    let out = f.run(&["get", "-w", "n[01-02]", "--dry-run", "inbox/big.bin", back.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("--dry-run is for one host"), "{out:?}");
    let out = f.run(&["get", "-w", "n[01-02]", "inbox/big.bin", "-"]);
    assert!(text(&out.stderr).contains("is for one host"), "{out:?}");
}

/// The window holds: never more than `fanout` hosts at once, the next
/// starting as one ends; every host finishes exactly once; a cancel
/// stops what runs and starts nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_slides_and_a_cancel_stops_it() {
    let mut f = Fleet::new();
    f.serve("one", "127.0.0.1", None, None).await;
    let addr = f.toml.lines().find_map(|l| l.strip_prefix("port = ")).unwrap().to_owned();
    let endpoint = Endpoint::new(format!("127.0.0.1:{addr}"), Some(f.key()));
    let hosts: Vec<Host> = (0..40).map(|i| Host::new(format!("x{i}"), endpoint.clone())).collect();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Counted as each host's job starts (it holds its place in the
    // window from before); the first hold on until 8 run at once (10 s
    // at most, however slowly they come), then each connects. A window of
    // 9 would start a 9th job at once, long before any of the 8 can end.
    let filled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (n, m, full) = (now.clone(), most.clone(), filled.clone());
    let mut events = fleet::each(hosts, FleetOptions::new(8), move |run| {
        let (now, most, filled) = (n.clone(), m.clone(), full.clone());
        async move {
            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(at_once, Ordering::SeqCst);
            if at_once >= 8 {
                filled.store(true, Ordering::SeqCst);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !filled.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let connected = run.connect().await;
            now.fetch_sub(1, Ordering::SeqCst);
            let _client = connected?;
            Ok(run.name().to_owned())
        }
    });
    let (mut started, mut finished) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    while let Some(event) = events.next().await {
        match event {
            Event::Started { host } => assert!(started.insert(host.to_string())),
            Event::Finished { host, outcome, .. } => {
                assert!(started.contains(&*host), "{host} finished before it started");
                assert_eq!(outcome.unwrap(), &*host);
                assert!(finished.insert(host.to_string()), "{host} finished twice");
            }
            _ => {}
        }
    }
    assert_eq!(finished.len(), 40);
    assert_eq!(most.load(Ordering::SeqCst), 8, "the window is full, and never over");

    // Cancelled once two run their command (each has said so): those two
    // end cancelled, the rest never start.
    let hosts: Vec<Host> = (0..10).map(|i| Host::new(format!("y{i}"), endpoint.clone())).collect();
    let mut events = fleet::exec(hosts, "echo started; sleep 30", Default::default(), Vec::new(), FleetOptions::new(2));
    let (mut running, mut said, mut cancelled, mut never) = (0, 0, 0, 0);
    while let Some(event) = events.next().await {
        match event {
            Event::Started { .. } => running += 1,
            Event::Stdout { line, .. } => {
                assert_eq!(&line[..], b"started\n");
                said += 1;
                if said == 2 {
                    events.cancel();
                }
            }
            Event::Finished { outcome: Ok(status), .. } => {
                assert_eq!(status.reason, framewire::proto::ExitReason::Cancelled);
                cancelled += 1;
            }
            Event::Finished { outcome: Err(HostError::NotStarted), .. } => never += 1,
            Event::Finished { outcome: Err(e), .. } => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!((running, cancelled, never), (2, 2, 8));
}

/// A line far over MAX_LINE comes in pieces that add up to it, and the
/// last line without a newline comes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_come_in_bounded_pieces() {
    let mut f = Fleet::new();
    f.serve("one", "127.0.0.1", None, None).await;
    let port = f.toml.lines().find_map(|l| l.strip_prefix("port = ")).unwrap().to_owned();
    let host = Host::new("one", Endpoint::new(format!("127.0.0.1:{port}"), Some(f.key())));
    let cmd = "head -c 300000 /dev/zero | tr '\\0' x; echo; printf 'a\\nb\\nlast'";
    let mut events = fleet::exec(vec![host], cmd, Default::default(), Vec::new(), FleetOptions::default());
    let mut pieces = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Stdout { line, .. } => pieces.push(line),
            Event::Finished { outcome, .. } => assert!(outcome.unwrap().success()),
            _ => {}
        }
    }
    assert!(
        pieces.iter().all(|p| p.len() <= fleet::MAX_LINE),
        "{:?}",
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    let all: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let mut want = vec![b'x'; 300_000];
    want.extend_from_slice(b"\na\nb\nlast");
    assert!(all == want, "the pieces add up");
    let tail: Vec<&[u8]> = pieces.iter().rev().take(3).map(|p| &p[..]).collect();
    assert_eq!(tail, [&b"last"[..], b"b\n", b"a\n"]);
}

/// 1,000 hosts, 64 at once: every one answers, the gathered output is one
/// group under the folded set, and the client's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hosts_in_a_window_of_64() {
    fleet::raise_open_files(8192).unwrap();
    let mut f = Fleet::new();
    let shared = f.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for i in 0..1000 {
        let ip = format!("127.0.{}.{}", 10 + i / 250, 1 + i % 250);
        f.serve(&format!("m{:04}", i + 1), &ip, None, Some(&shared)).await;
    }
    let mut cmd = f.cmd(&["exec", "-b", "-f", "64", "-w", "m[0001-1000]", "--", "echo up"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (out, peak_kib) = tokio::task::spawn_blocking(move || wait_with_peak(child)).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rule = "-".repeat(25);
    assert_eq!(text(&out.stdout), format!("{rule}\nm[0001-1000] (1000 hosts)\n{rule}\nup\n"));
    // Far less than a megabyte a host: the window's connections, not
    // every host's.
    assert!(peak_kib < 128 * 1024, "client peak RSS {peak_kib} KiB");
    eprintln!("1,000 hosts, -f 64: client peak RSS {} MiB", peak_kib / 1024);
}

/// Waits for `child`, with its peak resident memory (KiB) from wait4.
fn wait_with_peak(mut child: std::process::Child) -> (Output, u64) {
    use std::io::Read;
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        se.read_to_end(&mut b).unwrap();
        b
    });
    let mut stdout = Vec::new();
    so.read_to_end(&mut stdout).unwrap();
    let stderr = err.join().unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    use std::os::unix::process::ExitStatusExt;
    let out = Output { status: std::process::ExitStatus::from_raw(status), stdout, stderr };
    (out, usage.ru_maxrss as u64)
}

/// Hosts in network namespaces made here, each with its own veth pair,
/// address and `framewire serve`: the fan-out across real interfaces.
#[test]
fn hosts_in_network_namespaces() {
    let Some(net) = Namespaces::make(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    Key::generate().write_new(&key).unwrap();
    let mut toml = format!("[defaults]\nkey-file = \"{}\"\nport = 9909\n", key.display());
    let mut servers = Vec::new();
    for (i, ns) in net.names.iter().enumerate() {
        let root = dir.path().join(format!("root{i}"));
        std::fs::create_dir_all(&root).unwrap();
        let addr = net.addr(i);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "serve", "--allow-exec", "--listen"])
            .arg(format!("{addr}:9909"))
            .arg("--root")
            .arg(&root)
            .arg("--key-file")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        servers.push(Killed(child));
        toml.push_str(&format!("[hosts.ns{i}]\naddress = \"{addr}\"\n"));
    }
    for s in &mut servers {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s.0.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, toml).unwrap();
    let run = |args: &[&str]| Command::new(BIN).args(args).env("FRAMEWIRE_CONFIG", &config).output().unwrap();

    // Each command runs in its host's namespace: it sees its own address.
    let out = run(&["exec", "-w", "ns[0-2]", "--", "ip -o -4 addr show scope global | awk '{print $4}'"]);
    assert!(out.status.success(), "{out:?}");
    let want: Vec<String> = (0..3).map(|i| format!("ns{i}: {}/30", net.addr(i))).collect();
    assert_eq!(sorted_lines(&out.stdout), want);

    let file = dir.path().join("payload");
    std::fs::write(&file, pattern(1 << 20, 9)).unwrap();
    let out = run(&["put", "-w", "ns[0-2]", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..3 {
        assert_eq!(std::fs::read(dir.path().join(format!("root{i}/payload"))).unwrap(), pattern(1 << 20, 9));
    }

    // One host's server gone: that host unreachable, the others fine.
    drop(servers.remove(1));
    let out = run(&["--connect-timeout", "2", "exec", "-w", "ns[0-2]", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("framewire: unreachable: ns1\n"), "{out:?}");
}

/// A child killed, by PID, and waited for on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Network namespaces made for one test, each joined to this one by a
/// veth pair on its own /30; deleted on drop.
struct Namespaces {
    names: Vec<String>,
    tag: u32,
}

impl Namespaces {
    /// `n` namespaces, or `None` (after saying why) where this machine
    /// cannot make them (no `ip`, no privilege).
    fn make(n: usize) -> Option<Namespaces> {
        let tag = std::process::id() % 200;
        let mut net = Namespaces { names: Vec::new(), tag };
        for i in 0..n {
            let ns = format!("fwtest{}-{i}", std::process::id());
            let (host_if, ns_if) = (format!("fwh{}x{i}", tag), format!("fwn{}x{i}", tag));
            let steps = [
                format!("ip netns add {ns}"),
                format!("ip link add {host_if} type veth peer name {ns_if}"),
                format!("ip link set {ns_if} netns {ns}"),
                format!("ip addr add {}/30 dev {host_if}", net.host_side(i)),
                format!("ip link set {host_if} up"),
                format!("ip netns exec {ns} ip addr add {}/30 dev {ns_if}", net.addr(i)),
                format!("ip netns exec {ns} ip link set {ns_if} up"),
                format!("ip netns exec {ns} ip link set lo up"),
            ];
            for (k, step) in steps.iter().enumerate() {
                let out = Command::new("sh").args(["-c", step]).output();
                let ok = out.as_ref().is_ok_and(|o| o.status.success());
                if k == 0 && ok {
                    net.names.push(ns.clone());
                }
                if !ok {
                    eprintln!("skipping: cannot make network namespaces here ({step}: {out:?})");
                    return None;
                }
            }
        }
        Some(net)
    }

    /// The address of namespace `i`'s server (on its own /30, a range
    /// that exists only on these veth pairs).
    fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.tag, 4 * i + 2)
    }

    fn host_side(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.tag, 4 * i + 1)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for (i, ns) in self.names.iter().enumerate() {
            // The veth pair goes with its namespace.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = Command::new("ip").args(["link", "del", &format!("fwh{}x{i}", self.tag)]).status();
        }
    }
}

/// Copies of one local file to eight hosts at once read it about once
/// between them, not once each, and every host gets it whole: one big
/// file (a request of its own) and a tree of two (streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_reads_each_local_file_once() {
    use framewire::client::tree::{self, CopyOptions, PlanOptions, Quiet, SharedReads};
    let mut f = Fleet::new();
    for i in 1..=8 {
        f.serve(&format!("r{i}"), &format!("127.0.3.{i}"), None, None).await;
    }
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(src.join("tree")).unwrap();
    let (one, a, b) = (pattern(24 << 20, 1), pattern(9 << 20, 2), pattern((7 << 20) + 5, 3));
    std::fs::write(src.join("one.bin"), &one).unwrap();
    std::fs::write(src.join("tree/a.bin"), &a).unwrap();
    std::fs::write(src.join("tree/b.bin"), &b).unwrap();
    let ports: Vec<u16> =
        f.toml.lines().filter_map(|l| l.strip_prefix("port = ")).map(|p| p.parse().unwrap()).collect();
    for (sources, recursive, chunks) in [(vec![src.join("one.bin")], false, 24), (vec![src.join("tree")], true, 9 + 8)]
    {
        let reads = SharedReads::new(256 << 20);
        let copies: Vec<_> = (1..=8)
            .map(|i| {
                let endpoint = Endpoint::new(format!("127.0.3.{i}:{}", ports[i - 1]), Some(f.key()))
                    .with_shared_reads(reads.clone());
                let sources = sources.clone();
                tokio::spawn(async move {
                    let mut client = endpoint.connect().await.unwrap();
                    let plan =
                        tree::plan_put(&mut client, &sources, None, PlanOptions::new(recursive, false)).await.unwrap();
                    drop(client);
                    tree::run(&endpoint, plan, &CopyOptions::new(false, 2), Arc::new(Quiet)).await
                })
            })
            .collect();
        for copy in copies {
            let summary = copy.await.unwrap();
            assert!(summary.failures.is_empty(), "{:?}", summary.failures);
        }
        let read = reads.chunks_read();
        eprintln!("{chunks} chunks to eight hosts: {read} chunk reads");
        assert!(read >= chunks && read < 2 * chunks, "{read} chunk reads for {chunks} chunks to 8 hosts");
        assert_eq!(reads.held(), 0);
    }
    for i in 1..=8 {
        let root = f.root(&format!("r{i}")).to_owned();
        assert!(std::fs::read(root.join("one.bin")).unwrap() == one, "r{i}");
        assert!(std::fs::read(root.join("tree/a.bin")).unwrap() == a, "r{i}");
        assert!(std::fs::read(root.join("tree/b.bin")).unwrap() == b, "r{i}");
    }
}
