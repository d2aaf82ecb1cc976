//! The write side and the door, tried as an attacker would, against a real
//! server: links planted at partial-file names, directories swapped for
//! symlinks by a second process mid-request, uploads racing for one name,
//! hostile paths and frames, and sockets that hold the handshake open.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::roots::RootServer;
use common::TestServer;
use framewire::auth::Key;
use framewire::client::{Progress, TransferOptions};
use framewire::proto::{self, AnyMessage as Message};
use framewire::server::Resolver;
use framewire::wire::{FrameReader, FrameWriter, Preface};
use framewire::{Client, ClientError, ErrorCode};
use tokio::io::AsyncWriteExt;

fn no_progress() -> impl FnMut(Progress) + Send {
    |_| {}
}

fn opts() -> TransferOptions {
    TransferOptions::default()
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// A victim file outside every root, and what it holds.
fn victim() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("victim.txt");
    std::fs::write(&path, "precious").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, path)
}

fn assert_untouched(victim: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "precious", "written through the link");
    assert_eq!(std::fs::metadata(victim).unwrap().permissions().mode() & 0o777, 0o600, "chmod-ed through the link");
}

#[tokio::test]
async fn put_never_writes_through_a_link_planted_at_the_partial_name() {
    for resolver in [Resolver::Openat2, Resolver::Walk] {
        let (_keep, victim) = victim();
        let server = TestServer::start_with(|c| c.resolver = Some(resolver)).await;
        let root = server.root.path();
        symlink(&victim, root.join(".report.txt.fwpart")).unwrap();
        symlink(&victim, root.join(".empty.txt.fwpart")).unwrap();
        let local = tempfile::tempdir().unwrap();
        std::fs::write(local.path().join("report.txt"), "the upload").unwrap();
        std::fs::write(local.path().join("empty.txt"), "").unwrap();
        let mut client = Client::connect(&server.addr()).await.unwrap();
        for name in ["report.txt", "empty.txt"] {
            client.put(&local.path().join(name), name, &opts(), &mut no_progress()).await.unwrap();
            let meta = std::fs::symlink_metadata(root.join(name)).unwrap();
            assert!(meta.is_file(), "{name} is a regular file, not a link ({resolver:?})");
        }
        assert_eq!(std::fs::read_to_string(root.join("report.txt")).unwrap(), "the upload");
        assert_untouched(&victim);
        assert!(root.join(".report.txt.fwpart").is_symlink(), "the planted link is left alone");
    }
}

#[tokio::test]
async fn get_never_writes_through_a_link_planted_at_the_partial_name() {
    let (_keep, victim) = victim();
    let server = TestServer::start().await;
    std::fs::write(server.root.path().join("plain.txt"), "downloaded").unwrap();
    let dest = tempfile::tempdir().unwrap();
    symlink(&victim, dest.path().join(".plain.txt.fwpart")).unwrap();
    let mut client = Client::connect(&server.addr()).await.unwrap();
    client.get("plain.txt", &dest.path().join("plain.txt"), &opts(), &mut no_progress()).await.unwrap();
    assert_eq!(std::fs::read_to_string(dest.path().join("plain.txt")).unwrap(), "downloaded");
    assert!(std::fs::symlink_metadata(dest.path().join("plain.txt")).unwrap().is_file());
    assert_untouched(&victim);
}

#[tokio::test]
async fn hard_links_fifos_and_directories_at_the_partial_name_are_not_partial_files() {
    let (_keep, victim) = victim();
    let server = TestServer::start().await;
    let root = server.root.path();
    // A hard link to a file of ours outside the root (same file system).
    let outside = tempfile::tempdir_in(root.parent().unwrap()).unwrap();
    let linked = outside.path().join("linked.txt");
    std::fs::write(&linked, "keep me").unwrap();
    std::fs::hard_link(&linked, root.join(".h.txt.fwpart")).unwrap();
    assert!(Command::new("mkfifo").arg(root.join(".f.txt.fwpart")).status().unwrap().success());
    std::fs::create_dir(root.join(".b.fwpart")).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("x"), "new data").unwrap();
    let mut client = Client::connect(&server.addr()).await.unwrap();
    for name in ["h.txt", "f.txt", "b"] {
        client.put(&local.path().join("x"), name, &opts(), &mut no_progress()).await.unwrap();
        assert_eq!(std::fs::read_to_string(root.join(name)).unwrap(), "new data", "{name}");
    }
    assert_eq!(std::fs::read_to_string(&linked).unwrap(), "keep me");
    assert_untouched(&victim);
    // The directory is an ordinary directory: listed, not hidden.
    let names: Vec<_> = client.list("", false).await.unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&".b.fwpart".to_owned()), "{names:?}");
}

/// Swaps `root/race` (a directory) and `root/race.link` (a symlink to
/// `outside`) atomically with `renameat2(RENAME_EXCHANGE)`, in a second
/// process, `rounds` times or until `limit` passed; `race` is never
/// missing, so nothing the test does can recreate it. Prints how many
/// swaps it made.
fn swapper(root: &Path, outside: &Path, rounds: u32, limit: Duration) -> std::process::Child {
    let script = r#"
import ctypes, os, sys, time
root, outside, rounds, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
def swap():
    if libc.renameat2(AT_FDCWD, b'race', AT_FDCWD, b'race.link', RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
os.chdir(root)
os.symlink(outside, 'race.link')
n, end = 0, time.time() + limit
while n < rounds and time.time() < end:
    swap()
    n += 1
if os.path.islink('race'):
    swap()
print(n)
"#;
    Command::new("python3")
        .args(["-c", script])
        .arg(root)
        .arg(outside)
        .arg(rounds.to_string())
        .arg(limit.as_secs_f64().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 drives the race")
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_mid_request_never_leads_out() {
    for resolver in [Resolver::Openat2, Resolver::Walk] {
        let server = TestServer::start_with(|c| c.resolver = Some(resolver)).await;
        let root = server.root.path();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "OUTSIDE").unwrap();
        std::fs::create_dir(root.join("race")).unwrap();
        std::fs::write(root.join("race/secret.txt"), "inside").unwrap();
        let swap = swapper(root, outside.path(), 1_000_000, Duration::from_secs(3));
        let local = tempfile::tempdir().unwrap();
        std::fs::write(local.path().join("up"), "uploaded").unwrap();
        let mut client = Client::connect(&server.addr()).await.unwrap();
        let (mut served, mut refused) = (0, 0);
        let start = Instant::now();
        for i in 0..20_000 {
            if start.elapsed() > Duration::from_secs(3) {
                break;
            }
            let dest = local.path().join(format!("got-{i}"));
            match client.get("race/secret.txt", &dest, &opts(), &mut no_progress()).await {
                Ok(_) => {
                    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "inside", "{resolver:?} leaked");
                    std::fs::remove_file(&dest).unwrap();
                    served += 1;
                }
                Err(e) => {
                    assert!(matches!(code(&e), Some(ErrorCode::NotFound | ErrorCode::BadPath)), "{resolver:?}: {e}");
                    refused += 1;
                }
            }
            let _ = client.put(&local.path().join("up"), &format!("race/new-{i}"), &opts(), &mut no_progress()).await;
            let _ = client.mkdir(&format!("race/d-{i}")).await;
        }
        let out = swap.wait_with_output().unwrap();
        assert!(out.status.success(), "the swapper ran to its end: {out:?}");
        let swaps: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(swaps > 1_000, "{swaps} swaps");
        assert!(served > 0 && refused > 0, "the race was run both ways: {served} served, {refused} refused");
        let outside_now: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside_now, ["secret.txt"], "{resolver:?}: nothing created outside");
    }
}

#[tokio::test]
async fn a_put_waiting_for_the_path_never_replaces_the_upload_it_waited_for() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("second"), "second").unwrap();
    for round in 0..3 {
        let path = format!("new-{round}");
        // The first upload is under way, and holds the path...
        let (mut r, mut w) = raw(server.addr).await;
        w.send(
            &Message::Put(proto::Put {
                path: path.clone(),
                size: 5,
                force: false,
                mode: None,
                mtime: None,
                mtime_ns: None,
                backup: None,
                delta: None,
            }),
            &[],
        )
        .await
        .unwrap();
        assert!(matches!(next(&mut r).await, Some(Message::PutReady(proto::PutReady { .. }))));
        // ...while a second waits for it (up to 2 s)...
        let (addr, l, p) = (server.addr(), local.path().join("second"), path.clone());
        let second = tokio::spawn(async move {
            let mut c = Client::connect(&addr).await.unwrap();
            c.put(&l, &p, &opts(), &mut no_progress()).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and the first completes within that time.
        w.send(&Message::PutData(proto::PutData { len: 5, offset: 0, holes: None }), b"first").await.unwrap();
        w.send(&Message::Checksum(proto::Checksum { blake3: blake3::hash(b"first").to_hex().to_string() }), &[])
            .await
            .unwrap();
        assert!(matches!(next(&mut r).await, Some(Message::PutDone(proto::PutDone { size: 5 }))));
        let err = second.await.unwrap().expect_err("the second upload must not replace the first");
        assert_eq!(code(&err), Some(ErrorCode::Exists), "{err}");
        assert_eq!(std::fs::read_to_string(server.root.path().join(&path)).unwrap(), "first", "round {round}");
    }
}

type RawReader = FrameReader<tokio::net::tcp::OwnedReadHalf>;
type RawWriter = FrameWriter<tokio::net::tcp::OwnedWriteHalf>;

async fn raw(addr: std::net::SocketAddr) -> (RawReader, RawWriter) {
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, write) = sock.into_split();
    let (mut r, mut w) = (FrameReader::new(read), FrameWriter::new(write));
    w.feed_preface(Preface::default());
    w.flush().await.unwrap();
    r.read_preface().await.unwrap();
    (r, w)
}

async fn next(r: &mut RawReader) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(5), r.read_head::<Message>())
        .await
        .expect("answered at once")
        .ok()
        .flatten()
        .map(|(m, _)| m)
}

fn error_code(m: Option<Message>) -> ErrorCode {
    match m {
        Some(Message::ErrorFrame(proto::ErrorFrame { code, .. })) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

common::roots::on_both_roots!(
    a_file_appearing_under_the_name_mid_upload_is_not_replaced,
    put_data_that_contradicts_the_put_is_answered_at_once_and_closed,
    hostile_paths_get_short_clear_refusals_and_touch_nothing,
    hostile_tree_frames_are_refused_and_store_nothing,
    hostile_meta_entries_stay_data_or_are_refused,
    hostile_backups_are_refused_and_lead_nowhere,
);

async fn a_file_appearing_under_the_name_mid_upload_is_not_replaced(root: &RootServer) {
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::Put(proto::Put {
            path: "late".into(),
            size: 5,
            force: false,
            mode: None,
            mtime: None,
            mtime_ns: None,
            backup: None,
            delta: None,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::PutReady(proto::PutReady { .. }))));
    // Another process writes the name while the upload is under way.
    root.write("late", b"theirs").await;
    w.send(&Message::PutData(proto::PutData { len: 5, offset: 0, holes: None }), b"hello").await.unwrap();
    w.send(&Message::Checksum(proto::Checksum { blake3: blake3::hash(b"hello").to_hex().to_string() }), &[])
        .await
        .unwrap();
    assert_eq!(error_code(next(&mut r).await), ErrorCode::Exists);
    assert_eq!(root.read("late").await.unwrap(), b"theirs");
    assert_eq!(root.names("").await, ["late"], "the loser's partial is gone");
}

async fn put_data_that_contradicts_the_put_is_answered_at_once_and_closed(root: &RootServer) {
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::Put(proto::Put {
            path: "x".into(),
            size: 5,
            force: false,
            mode: None,
            mtime: None,
            mtime_ns: None,
            backup: None,
            delta: None,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::PutReady(proto::PutReady { .. }))));
    w.feed_head(&Message::PutData(proto::PutData { len: 1 << 63, offset: 0, holes: None })).unwrap();
    w.flush().await.unwrap();
    assert_eq!(error_code(next(&mut r).await), ErrorCode::BadRequest);
    assert!(next(&mut r).await.is_none(), "closed");

    // A put_data header with a member of the wrong type.
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::Put(proto::Put {
            path: "y".into(),
            size: 5,
            force: false,
            mode: None,
            mtime: None,
            mtime_ns: None,
            backup: None,
            delta: None,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::PutReady(proto::PutReady { .. }))));
    let bad = br#"{"type":"put_data","len":5,"offset":"zero"}"#;
    w.get_mut().write_all(&(bad.len() as u32).to_be_bytes()).await.unwrap();
    w.get_mut().write_all(bad).await.unwrap();
    assert_eq!(error_code(next(&mut r).await), ErrorCode::BadRequest);
    assert!(next(&mut r).await.is_none(), "closed");
    // Nothing was written: no empty partial file is left (issue 28).
    let left = root.names("").await;
    assert!(left.is_empty(), "left on {}: {left:?}", root.kind());
}

#[tokio::test]
async fn a_stdin_frame_over_the_limit_gets_too_large() {
    let server = TestServer::start_with(|c| {
        c.allow_exec = true;
        c.insecure = true;
    })
    .await;
    let (mut r, mut w) = raw(server.addr).await;
    w.send(&Message::Exec(proto::Exec { command: "cat".into(), timeout_ms: None, login: false }), &[]).await.unwrap();
    w.feed_head(&Message::Stdin(proto::Stdin { len: 2 << 20, eof: false })).unwrap();
    w.flush().await.unwrap();
    assert_eq!(error_code(next(&mut r).await), ErrorCode::TooLarge);
}

async fn hostile_paths_get_short_clear_refusals_and_touch_nothing(root: &RootServer) {
    root.write("f.txt", b"f").await;
    let mut client = Client::connect(&root.addr()).await.unwrap();
    let err = client.mkdir(&"a/".repeat(32_000)).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::BadPath), "{err}");
    assert!(err.to_string().len() < 400, "{} bytes", err.to_string().len());

    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("x"), "x").unwrap();
    let err = client.put(&local.path().join("x"), "newdir/", &opts(), &mut no_progress()).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::IsADirectory), "{err}");
    let err = client.get("f.txt/", &local.path().join("g"), &opts(), &mut no_progress()).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NotADirectory), "{err}");
    assert!(!local.path().join("g").exists());
    let err = client.stat("f.txt/").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NotADirectory), "stat f.txt/ on {}: {err}", root.kind());
    // A name's byte that is not UTF-8 travels escaped (PROTOCOL.md
    // §4.7.1), in one form only: a partial file's name spelled another
    // way, a valid byte escaped, a bare NUL, all refused.
    for spelled in [".f.txt.fwpar\u{0}74", "f\u{0}2etxt", "f.txt\u{0}", "caf\u{0}c3\u{0}a9"] {
        let err = client.stat(spelled).await.unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::BadPath), "{spelled:?} on {}: {err}", root.kind());
    }
    let stat = client.stat("").await.unwrap();
    assert_eq!(stat.name, ".", "the served root's own name is not told");
    assert_eq!(root.names("").await, ["f.txt"], "nothing created on {}", root.kind());
}

/// A `tree_put` with a path leading out and a path named twice (refused in
/// the answer), a file whose checksum is wrong (reported failed, nothing
/// stored), then a `tree_file` never wanted and a manifest after its end
/// (refused, closed: the connection cannot stay in step).
async fn hostile_tree_frames_are_refused_and_store_nothing(root: &RootServer) {
    let entry =
        |path: &str, size: u64| serde_json::json!({"path": path, "size": size, "mtime": 1_600_000_000, "mode": 0o644});
    async fn manifest(w: &mut RawWriter, entries: &[serde_json::Value]) {
        let body = serde_json::to_vec(entries).unwrap();
        let m = proto::Manifest { len: body.len() as u64, count: entries.len() as u64 };
        w.send(&Message::Manifest(m), &body).await.unwrap();
    }
    async fn body_of<T: serde::de::DeserializeOwned>(r: &mut RawReader) -> T {
        serde_json::from_slice(&r.read_body(1 << 20).await.unwrap()).unwrap()
    }
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::TreePut(proto::TreePut {
            path: "t".into(),
            force: false,
            meta: false,
            backup: None,
            xattrs: false,
            acls: false,
            delta: false,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::TreeReady(_))));
    manifest(&mut w, &[entry("../out", 3), entry("a", 3), entry("a", 3)]).await;
    assert!(matches!(next(&mut r).await, Some(Message::Wants(_))));
    let wants: proto::WantList = body_of(&mut r).await;
    let refused: Vec<_> = wants.refused.iter().map(|f| (f.i, f.code)).collect();
    let send: Vec<_> = wants.send.iter().map(|w| (w.i, w.offset)).collect();
    assert_eq!((send, refused), (vec![(1, 0)], vec![(0, ErrorCode::BadPath), (2, ErrorCode::BadRequest)]));
    w.send(&Message::ManifestEnd(proto::ManifestEnd { count: 3 }), &[]).await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::WantsEnd(proto::WantsEnd { count: 3 }))));
    let file = proto::TreeFile {
        len: 3,
        i: 1,
        offset: 0,
        size: 3,
        mtime: 1_600_000_000,
        mode: 0o644,
        mtime_ns: None,
        holes: None,
        delta: false,
    };
    w.send(&Message::TreeFile(file), b"abc").await.unwrap();
    let wrong = blake3::hash(b"xyz").to_hex().to_string();
    w.send(&Message::Checksum(proto::Checksum { blake3: wrong }), &[]).await.unwrap();
    w.send(&Message::TreeEnd(proto::TreeEnd { files: 1 }), &[]).await.unwrap();
    let mut failed = Vec::new();
    loop {
        match next(&mut r).await {
            Some(Message::Committed(_)) => {
                let list: proto::CommitList = body_of(&mut r).await;
                assert!(list.ok.is_empty(), "{:?}", list.ok);
                failed.extend(list.failed.iter().map(|f| (f.i, f.code)));
            }
            Some(Message::TreeDone(done)) => {
                assert_eq!((failed, done.files), (vec![(1, ErrorCode::ChecksumMismatch)], 0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(root.read("t/a").await.is_none(), "nothing stored on {}", root.kind());

    for late_manifest in [false, true] {
        let (mut r, mut w) = raw(root.addr).await;
        w.send(
            &Message::TreePut(proto::TreePut {
                path: "u".into(),
                force: false,
                meta: false,
                backup: None,
                xattrs: false,
                acls: false,
                delta: false,
            }),
            &[],
        )
        .await
        .unwrap();
        assert!(matches!(next(&mut r).await, Some(Message::TreeReady(_))));
        manifest(&mut w, &[entry("b", 1)]).await;
        assert!(matches!(next(&mut r).await, Some(Message::Wants(_))));
        let _: proto::WantList = body_of(&mut r).await;
        if late_manifest {
            w.send(&Message::ManifestEnd(proto::ManifestEnd { count: 1 }), &[]).await.unwrap();
            assert!(matches!(next(&mut r).await, Some(Message::WantsEnd(_))));
            manifest(&mut w, &[entry("c", 1)]).await;
        } else {
            let file = proto::TreeFile {
                len: 1,
                i: 7,
                offset: 0,
                size: 1,
                mtime: 1,
                mode: 0o644,
                mtime_ns: None,
                holes: None,
                delta: false,
            };
            w.send(&Message::TreeFile(file), b"z").await.unwrap();
        }
        let what = if late_manifest { "manifest after manifest_end" } else { "tree_file not wanted" };
        assert_eq!(error_code(next(&mut r).await), ErrorCode::BadRequest, "{what}");
        assert!(next(&mut r).await.is_none(), "{what}: closed");
    }
    let left: Vec<String> = root.names("").await;
    assert!(left.iter().all(|n| n == "t" || n == "u") && root.names("u").await.is_empty(), "{left:?}");
}

/// Opens `n` sockets to `addr` that never send a byte, from 127.0.0.`first`
/// on, spread over `sources` addresses (any 127/8 address is this machine).
async fn silent_sockets(addr: std::net::SocketAddr, n: usize, first: u8, sources: u8) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, first + (i % sources as usize) as u8);
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr)).await {
            held.push(stream);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_lock_out_a_keyed_client() {
    let _alone = DOOR_TESTS.lock().await;
    let key = Key::generate();
    let k = key.clone();
    let server = TestServer::start_with(move |c| {
        c.key = Some(k);
        c.max_connections = 8;
    })
    .await;
    // 10 x --max-connections silent sockets: first from one address (the
    // per-source cap refuses most), then spread over many (eviction).
    for (sources, first) in [(1u8, 2u8), (40, 10)] {
        let held = silent_sockets(server.addr, 80, first, sources).await;
        assert_eq!(held.len(), 80, "sockets opened");
        // Held open: older than a fresh burst is allowed to be.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let start = Instant::now();
        let mut client = Client::connect_with(&server.addr(), Some(&key)).await.unwrap();
        assert_eq!(client.echo(b"still here").await.unwrap(), "still here", "from {sources} source(s)");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "served in {took:?} with {} silent sockets", held.len());
        drop(held);
    }
}

/// The door's flood tests run one at a time: each measures how soon a
/// client is served while thousands of sockets churn, and several floods
/// at once on two cores (the server and its clients share this process)
/// would make each other's clients late, which is not what they test.
static DOOR_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a socket of a flood sends before it goes quiet for good.
#[derive(Debug, Clone, Copy)]
enum Quiet {
    /// Nothing at all.
    Silent,
    /// The first two bytes of a preface.
    HalfPreface,
    /// A whole preface with the key flag (and then no TLS hello).
    Preface,
    /// A whole preface, then the first byte of a TLS record (the review's
    /// H1: one byte was taken for a client that speaks).
    TlsByte,
    /// A whole preface, then a TLS handshake record's header promising
    /// 512 bytes, and 100 of them.
    TlsPart,
    /// A whole preface and a real TLS ClientHello, then nothing: the
    /// server answers it and waits for the rest of the handshake.
    Hello,
}

/// A TLS ClientHello as framewire's client sends it, whole.
fn client_hello() -> Vec<u8> {
    let name = "framewire".try_into().unwrap();
    let mut tls = rustls::ClientConnection::new(framewire::transport::client_config(), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 22, "a handshake record");
    hello
}

/// A flood of `n` sockets to `addr` that never speak a whole handshake,
/// each reopened as soon as the server closes it (as an attacker would),
/// from `sources` addresses (`source(i)` is the i-th), the `kinds` of
/// [`Quiet`] in turn. Bounded: each socket is reopened at most 500 times,
/// and all stop when the flood is dropped.
struct Flood {
    stop: tokio_util::sync::CancellationToken,
    reopened: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Flood {
    async fn start(
        addr: std::net::SocketAddr,
        n: usize,
        kinds: &'static [Quiet],
        sources: usize,
        source: fn(usize) -> std::net::IpAddr,
    ) -> Flood {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::AsyncReadExt;
        let stop = tokio_util::sync::CancellationToken::new();
        let reopened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (opened_tx, mut opened) = tokio::sync::mpsc::channel::<()>(n);
        let hello = std::sync::Arc::new(client_hello());
        for i in 0..n {
            let hello = hello.clone();
            let (stop, reopened, mut opened_tx) = (stop.clone(), reopened.clone(), Some(opened_tx.clone()));
            let ip = source(i % sources);
            let quiet = kinds[i % kinds.len()];
            tokio::spawn(async move {
                for _ in 0..500 {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
                    let connect = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr));
                    let connected = tokio::select! {
                        connected = connect => connected,
                        () = stop.cancelled() => return,
                    };
                    let Ok(Ok(mut stream)) = connected else { continue };
                    let preface = Preface::new(true).encode();
                    let mut said: Vec<u8> = match quiet {
                        Quiet::Silent => Vec::new(),
                        Quiet::HalfPreface => preface[..2].to_vec(),
                        Quiet::Preface | Quiet::TlsByte | Quiet::TlsPart | Quiet::Hello => preface.to_vec(),
                    };
                    match quiet {
                        Quiet::TlsByte => said.push(22),
                        Quiet::Hello => said.extend_from_slice(&hello),
                        Quiet::TlsPart => {
                            said.extend([22, 3, 1, 2, 0]);
                            said.extend([1u8; 100]);
                        }
                        _ => {}
                    }
                    let _ = stream.write_all(&said).await;
                    // Opened once (a first connect may time out while the
                    // server's backlog is full), reopened after.
                    if let Some(opened_tx) = opened_tx.take() {
                        let _ = opened_tx.send(()).await;
                    } else {
                        reopened.fetch_add(1, Relaxed);
                    }
                    // Held until the server closes it (whatever it says).
                    let mut sink = [0u8; 256];
                    loop {
                        tokio::select! {
                            read = stream.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { break },
                            () = stop.cancelled() => return,
                        }
                    }
                }
            });
        }
        drop(opened_tx);
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(10), opened.recv()).await.expect("the flood opens in time");
        }
        Flood { stop, reopened }
    }

    fn reopened(&self) -> u64 {
        self.reopened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

const ALL_QUIET: [Quiet; 5] = [Quiet::Silent, Quiet::HalfPreface, Quiet::Preface, Quiet::TlsByte, Quiet::TlsPart];

/// A keyed client connects and is served 5 times in a row, each within a
/// generous 2 s.
async fn served_5_in_a_row(addr: &str, key: &Key, what: &str) {
    // The client runs on a thread and runtime of its own, as a client
    // process would: in the test's runtime, the flood's hundreds of tasks
    // (the attacker, on a machine of its own in real life) could hold
    // back its write of the preface it sends the moment it connects.
    let (addr, key, what) = (addr.to_owned(), key.clone(), what.to_owned());
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for round in 0..5 {
            let start = Instant::now();
            let served = async {
                let mut client = Client::connect_with(&addr, Some(&key)).await?;
                client.echo(b"still here").await
            };
            let served = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await });
            let took = start.elapsed();
            let served = served.unwrap_or_else(|_| panic!("{what}, round {round}: not served in 5 s"));
            assert_eq!(served.unwrap_or_else(|e| panic!("{what}, round {round}: {e}")), "still here");
            assert!(took < Duration::from_secs(2), "{what}, round {round}: served in {took:?}");
        }
    });
    while !client.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(panic) = client.join() {
        std::panic::resume_unwind(panic);
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Issue 28, point 1: about 1,100 silent sockets reopened as they were
/// closed kept the handshake queue full, and every new connection, a good
/// keyed client's included, was closed at once ("0 of 8 bytes of the
/// preface arrived"); fewer made it wait seconds. A client that speaks is
/// never turned away by connections that do not: 1,200 such sockets (more
/// than the old queue, MAX_WAITING, and the table together), from the
/// client's own address, from 4 others and from 100 others, default
/// limits, and a keyed client is served 5 times in a row, each well within
/// 2 s (the time target is in bench/door.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_cannot_keep_a_keyed_client_out() {
    let _alone = DOOR_TESTS.lock().await;
    framewire::client::fleet::raise_open_files(8192).expect("the flood needs 2 descriptors a socket");
    let key = Key::generate();
    let k = key.clone();
    let server = TestServer::start_with(move |c| c.key = Some(k)).await;
    let own: fn(usize) -> std::net::IpAddr = |_| [127, 0, 0, 1].into();
    let four: fn(usize) -> std::net::IpAddr = |i| [127, 0, 0, 2 + i as u8].into();
    let hundred: fn(usize) -> std::net::IpAddr = |i| [127, 0, 1, 1 + i as u8].into();
    for (what, sources, source) in [("its own address", 1, own), ("4 others", 4, four), ("100 others", 100, hundred)] {
        let flood = Flood::start(server.addr, 1200, &ALL_QUIET, sources, source).await;
        served_5_in_a_row(&server.addr(), &key, what).await;
        eprintln!("{what}: the flood's sockets were reopened {} times", flood.reopened());
    }
}

/// The review of issue 28: sockets that send a whole TLS hello and then
/// stall pass both silent sets and wait for a place in the handshake
/// table; past 1,024 waiting (MAX_WAITING), every newcomer was closed at
/// once, a good client's included. Now a full queue makes the oldest
/// waiter of the source with the most waiters give up, never the
/// newcomer, and a freed place goes to the source holding the fewest: 1,300
/// such sockets (more than the table and the queue together), reopened as
/// they are closed, from 4 and from 100 other addresses, and a keyed
/// client is served 5 times in a row, each within 2 s. (From the
/// client's own address nothing tells it from the flood: docs/SECURITY.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_stall_after_their_hello_cannot_keep_a_keyed_client_out() {
    let _alone = DOOR_TESTS.lock().await;
    framewire::client::fleet::raise_open_files(8192).expect("the flood needs 2 descriptors a socket");
    let key = Key::generate();
    let k = key.clone();
    let server = TestServer::start_with(move |c| c.key = Some(k)).await;
    let four: fn(usize) -> std::net::IpAddr = |i| [127, 0, 3, 2 + i as u8].into();
    let hundred: fn(usize) -> std::net::IpAddr = |i| [127, 0, 4, 1 + i as u8].into();
    for (what, sources, source) in [("4 others", 4, four), ("100 others", 100, hundred)] {
        let flood = Flood::start(server.addr, 1300, &[Quiet::Hello], sources, source).await;
        served_5_in_a_row(&server.addr(), &key, what).await;
        eprintln!("{what}: the flood's sockets were reopened {} times", flood.reopened());
        assert!(flood.reopened() > 0, "{what}: the queue overflowed and churned");
    }
}

/// Silent sets small enough for the flood to churn them: every new
/// connection evicts the oldest silent one (of its address when that
/// address has its share), and a keyed client from inside the flood, or
/// from beside it, is never the one evicted: its preface is in the
/// moment it is accepted. (A flood of sockets that send a whole preface
/// and then stall churns the second set, where a client waits one round
/// trip for its TLS hello: that it outlasts only as long as the set
/// holds more than such a flood opens in one round trip; see
/// docs/SECURITY.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_silent_set_evicts_its_oldest_never_a_client_that_speaks() {
    let _alone = DOOR_TESTS.lock().await;
    framewire::client::fleet::raise_open_files(4096).expect("the flood needs 2 descriptors a socket");
    let key = Key::generate();
    let k = key.clone();
    let server = TestServer::start_with(move |c| {
        c.key = Some(k);
        c.max_silent = 64;
        c.max_silent_per_source = 16;
    })
    .await;
    let own: fn(usize) -> std::net::IpAddr = |_| [127, 0, 0, 1].into();
    let many: fn(usize) -> std::net::IpAddr = |i| [127, 0, 2, 1 + i as u8].into();
    for (what, sources, source) in [("its own address", 1, own), ("20 others", 20, many)] {
        let flood = Flood::start(server.addr, 200, &[Quiet::Silent, Quiet::HalfPreface], sources, source).await;
        served_5_in_a_row(&server.addr(), &key, what).await;
        assert!(flood.reopened() > 100, "{what}: the set churned ({} reopened)", flood.reopened());
    }
}

/// The review of issue 28's fix (H2): a legacy listener with the HMAC
/// challenge speaks first, so its connections cannot be told apart by
/// silence, and they shared the native listener's handshake table and
/// queue: 1,200 silent sockets on the legacy port, from 4 addresses,
/// closed every native keyed client at once. The legacy listeners have a
/// table of their own now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_a_legacy_port_keeps_no_native_client_out() {
    let _alone = DOOR_TESTS.lock().await;
    framewire::client::fleet::raise_open_files(8192).expect("the flood needs 2 descriptors a socket");
    let key = Key::generate();
    let root = tempfile::tempdir().unwrap();
    let mut config = framewire::server::Config::new(root.path());
    config.key = Some(key.clone());
    config.legacy_hmac = true;
    let native = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, legacy_addr) = (native.local_addr().unwrap(), legacy.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        framewire::server::Server::open(config).await.unwrap().legacy(framewire::legacy::Mode::Download, legacy);
    let task = tokio::spawn(server.serve(native, stop.clone().cancelled_owned()));
    let four: fn(usize) -> std::net::IpAddr = |i| [127, 0, 0, 2 + i as u8].into();
    let flood = Flood::start(legacy_addr, 1200, &[Quiet::Silent], 4, four).await;
    served_5_in_a_row(&addr.to_string(), &key, "a legacy port flooded from 4 addresses").await;
    drop(flood);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// A burst of honest keyed clients at once: all served (they wait for
/// handshake places and session slots, none is turned away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_300_keyed_clients_is_all_served() {
    let _alone = DOOR_TESTS.lock().await;
    framewire::client::fleet::raise_open_files(4096).expect("2 descriptors a client");
    let key = Key::generate();
    let k = key.clone();
    let server = TestServer::start_with(move |c| c.key = Some(k)).await;
    let start = Instant::now();
    let clients: Vec<_> = (0..300)
        .map(|i| {
            let (addr, key) = (server.addr(), key.clone());
            tokio::spawn(async move {
                let mut client = Client::connect_with(&addr, Some(&key)).await?;
                client.echo(format!("client {i}").as_bytes()).await
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let echoed = tokio::time::timeout(Duration::from_secs(20), c).await.expect("served in time").unwrap();
        assert_eq!(echoed.unwrap_or_else(|e| panic!("client {i}: {e}")), format!("client {i}"));
    }
    eprintln!("300 keyed clients served in {:?}", start.elapsed());
}

#[tokio::test]
async fn a_source_over_its_silent_share_evicts_its_own_oldest_which_is_told_why() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start_with(|c| c.max_silent_per_source = 2).await;
    let mut oldest = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _next = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A third from the same address (a good client behind the same NAT,
    // say) is let in at once, and the oldest silent one makes room...
    let start = Instant::now();
    let mut client = Client::connect(&server.addr()).await.unwrap();
    assert_eq!(client.echo(b"in").await.unwrap(), "in");
    assert!(start.elapsed() < Duration::from_millis(500), "no wait for the silent ones to age");
    // ...told why, in a refusing preface and one plaintext frame.
    let mut preface = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), oldest.read_exact(&mut preface)).await.unwrap().unwrap();
    let preface = framewire::wire::Preface::decode(&preface).unwrap();
    assert!(preface.refused(), "{preface:?}");
    let mut r = FrameReader::new(oldest);
    match r.read_head::<Message>().await.unwrap() {
        Some((Message::ErrorFrame(proto::ErrorFrame { code: ErrorCode::Busy, message }), _)) => {
            assert_eq!(message, "server busy: 2 silent connections from 127.0.0.1")
        }
        other => panic!("{other:?}"),
    }
}

/// What a client reports when the server refuses it at the door.
#[tokio::test]
async fn a_refusing_preface_is_reported_as_busy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        // Once for a client without a key, once for one with.
        for _ in 0..2 {
            let (sock, _) = listener.accept().await.unwrap();
            let (read, write) = sock.into_split();
            let mut w = FrameWriter::new(write);
            w.feed_preface(Preface::refusal());
            let busy = Message::ErrorFrame(proto::ErrorFrame::new(
                ErrorCode::Busy,
                "server busy: 64 connections are in their handshake",
            ));
            w.send(&busy, &[]).await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop((read, w));
            });
        }
    });
    for key in [None, Some(Key::generate())] {
        let err = Client::connect_with(&addr, key.as_ref()).await.unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::Busy), "{err}");
        assert!(err.to_string().contains("server busy: 64 connections"), "{err}");
    }
}

#[tokio::test]
async fn sessions_past_the_limit_are_told_the_server_is_busy() {
    let server = TestServer::start_with(|c| c.max_connections = 1).await;
    let mut first = Client::connect(&server.addr()).await.unwrap();
    assert_eq!(first.echo(b"one").await.unwrap(), "one");
    let start = Instant::now();
    let mut second = Client::connect(&server.addr()).await.unwrap();
    let err = second.echo(b"two").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Busy), "{err}");
    assert!(err.to_string().contains("server busy: 1 connections"), "{err}");
    assert!(start.elapsed() >= Duration::from_secs(4), "it waited for a slot first");
    drop(first);
    // A slot freed is served again.
    let mut third = Client::connect(&server.addr()).await.unwrap();
    assert_eq!(third.echo(b"three").await.unwrap(), "three");
}

/// `remove` (a mirror's `--delete`) never leaves the root and never goes
/// through a symlink: not the root itself, not `..`, not a parent that is a
/// link (even one that stays inside); a link at the path is removed as a
/// link; a directory goes with everything below it.
#[tokio::test]
async fn remove_stays_inside_and_never_follows_links() {
    let server = TestServer::start().await;
    let root = server.root.path();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), b"v").unwrap();
    std::fs::create_dir_all(root.join("inner/deep")).unwrap();
    std::fs::write(root.join("inner/deep/f"), b"f").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
    std::os::unix::fs::symlink("inner", root.join("inlink")).unwrap();
    let mut client = Client::connect(&server.addr()).await.unwrap();

    for (path, code) in [("", ErrorCode::BadPath), ("../x", ErrorCode::BadPath), ("/etc/passwd", ErrorCode::BadPath)] {
        let err = client.remove(path).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{path:?}: {err}");
    }
    for path in ["out/victim", "inlink/deep"] {
        let err = client.remove(path).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotADirectory), "{path}: {err}");
    }
    assert!(outside.path().join("victim").exists() && root.join("inner/deep/f").exists());
    assert!(client.remove("out").await.unwrap(), "the link itself");
    assert!(std::fs::symlink_metadata(root.join("out")).is_err());
    assert!(outside.path().join("victim").exists(), "its target untouched");
    assert!(client.remove("inner").await.unwrap());
    assert!(!root.join("inner").exists());
    assert!(!client.remove("inner").await.unwrap(), "nothing there any more");
}

/// Resident memory of process `pid`, in KiB.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One connection announcing files it never sends, with the longest paths
/// there are, until the server refuses: returns how much the server's
/// resident memory grew at most (KiB) while it held them, and checks the
/// refusal is the typed one and comes well before 5,000 entries.
async fn announce_until_refused(addr: &str, pid: u32) -> u64 {
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, write) = sock.into_split();
    let (mut r, mut w) = (FrameReader::new(read), FrameWriter::new(write));
    w.feed_preface(Preface::default());
    w.send(
        &Message::TreePut(proto::TreePut {
            path: "up".into(),
            force: false,
            meta: false,
            backup: None,
            xattrs: false,
            acls: false,
            delta: false,
        }),
        &[],
    )
    .await
    .unwrap();
    r.read_preface().await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::TreeReady(_))));
    let before = rss_of(pid);

    // Paths of about 4,000 bytes (16 components of 250), 240 a frame
    // (just under the 1 MiB a manifest frame may hold), up to 11,520.
    let seg = "a".repeat(250);
    let long = |k: usize| format!("{}/f{k}", vec![seg.as_str(); 15].join("/"));
    let (mut sent, mut most, mut refused) = (0usize, 0u64, None);
    for frame in 0..48 {
        let part: Vec<_> = (0..240)
            .map(|k| serde_json::json!({"path": long(frame * 240 + k), "size": 1, "mtime": 1_000_000_000, "mode": 0o644}))
            .collect();
        let body = serde_json::to_vec(&part).unwrap();
        w.send(&Message::Manifest(proto::Manifest { len: body.len() as u64, count: 240 }), &body).await.unwrap();
        match next(&mut r).await {
            Some(Message::Wants(_)) => {
                let list: proto::WantList =
                    serde_json::from_slice(&r.read_body(proto::TREE_PART_MAX).await.unwrap()).unwrap();
                assert_eq!(list.send.len(), 240, "all wanted: {:?}", list.refused.first());
                sent += 240;
            }
            Some(Message::ErrorFrame(e)) => {
                refused = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
        most = most.max(rss_of(pid));
    }
    let refused = refused.unwrap_or_else(|| panic!("{sent} files announced and never sent, all held"));
    assert_eq!(refused.code, framewire::ErrorCode::TooLarge, "{refused:?}");
    assert!(refused.message.contains("MiB of their paths"), "{refused:?}");
    assert!(sent < 5_000, "{sent} entries of ~4 KB held before the refusal");
    assert!(next(&mut r).await.is_none(), "closed after the refusal");
    most.saturating_sub(before)
}

/// A key-holder announcing files it never sends, with the longest paths
/// there are, pins a bounded amount of the server's memory, which the
/// server gives back when the connection ends (issue 28, point 10:
/// 10,320 such entries held 82 MB that stayed after the close). Measured
/// on a `framewire serve` process of its own.
///
/// "Given back" is judged by what the process can reuse, not by what the
/// allocator returns to the kernel: glibc keeps some freed pages of its
/// thread arenas, so the resident size after one close says little (it
/// once stayed 17 MiB above the start on CI with nothing held). Three
/// connections in a row do tell: memory a closed connection kept would add
/// up, three rounds' worth; memory given back is reused by the next one.
#[tokio::test]
async fn announced_files_never_sent_pin_bounded_memory_given_back_after() {
    let server = tokio::task::spawn_blocking(|| common::Serve::start(&[])).await.unwrap();
    let pid = server.child.id();
    let start = rss_of(pid);
    let mut grew = 0;
    for round in 0..3 {
        let this = announce_until_refused(&server.addr, pid).await;
        assert!(this < 64 << 10, "round {round}: the server grew by {this} KiB for one connection's manifest");
        grew = grew.max(this);
    }
    // Let the last connection's task end before measuring.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let kept = rss_of(pid).saturating_sub(start);
        if kept < grew || Instant::now() >= deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        kept < grew,
        "after three connections each holding up to {grew} KiB, the server still holds {kept} KiB more than at the start"
    );
}

/// The names and contents of everything below `dir`, links as links.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                todo.push(path);
                out.push((format!("{name}/"), Vec::new()));
            } else if meta.is_file() {
                out.push((name, std::fs::read(&path).unwrap()));
            } else {
                out.push((name, std::fs::read_link(&path).unwrap().display().to_string().into_bytes()));
            }
        }
    }
    out.sort();
    out
}

/// Issue 28, point 2: a local user who can write the download directory
/// plants a symlink to the victim's directory where a directory of the
/// tree belongs (the copied directory itself, or one below it); the
/// victim's `get -r` (`tree` and `tree/`, with and without `--delete`,
/// streamed and file by file) neither writes nor deletes anything there:
/// the link is replaced by a directory, which receives the files. A file
/// where a directory belongs is refused without `force` and replaced with
/// it. Only the destination the user named is followed.
#[tokio::test]
async fn links_planted_in_a_download_destination_are_replaced_never_followed() {
    use framewire::client::tree::{self, CopyOptions, Endpoint, PlanOptions, Quiet};
    use std::sync::Arc;

    let server = TestServer::start().await;
    let root = server.root.path();
    std::fs::create_dir_all(root.join("tree/sub/deeper")).unwrap();
    std::fs::write(root.join("tree/r.txt"), b"r").unwrap();
    std::fs::write(root.join("tree/sub/s.txt"), b"s").unwrap();
    std::fs::write(root.join("tree/sub/deeper/d.txt"), b"d").unwrap();
    let endpoint = Endpoint::new(server.addr(), None);
    let mut client = endpoint.connect().await.unwrap();

    // (source, where the link is planted below the destination, what the
    // link's directory must hold afterwards)
    let cases: [(&str, &str, &[&str]); 4] = [
        ("tree", "tree", &["r.txt", "sub/s.txt", "sub/deeper/d.txt"]),
        ("tree", "tree/sub", &["s.txt", "deeper/d.txt"]),
        ("tree/", "sub", &["s.txt", "deeper/d.txt"]),
        ("tree/", "sub/deeper", &["d.txt"]),
    ];
    for streamed in [true, false] {
        for delete in [false, true] {
            for (source, planted, holds) in cases {
                let what = format!("{source} with {planted} planted, delete {delete}, streamed {streamed}");
                let victim = tempfile::tempdir().unwrap();
                std::fs::write(victim.path().join("r.txt"), b"the victim's own").unwrap();
                std::fs::write(victim.path().join("precious"), b"p").unwrap();
                std::fs::create_dir(victim.path().join("deeper")).unwrap();
                std::fs::write(victim.path().join("deeper/keep"), b"k").unwrap();
                let before = snapshot(victim.path());
                let shared = tempfile::tempdir().unwrap();
                let link = shared.path().join(planted);
                std::fs::create_dir_all(link.parent().unwrap()).unwrap();
                symlink(victim.path(), &link).unwrap();

                let options = PlanOptions::new(true, false).with_delete(delete);
                let plan = tree::plan_get(&mut client, &[source.to_owned()], shared.path(), options).await.unwrap();
                assert!(plan.delete_local.is_empty(), "{what}: nothing to delete through the link: {plan:?}");
                let copy = CopyOptions::new(false, 2).with_streamed(streamed);
                let summary = tree::run(&endpoint, plan, &copy, Arc::new(Quiet)).await;
                assert!(summary.failures.is_empty(), "{what}: {:?}", summary.failures);
                assert_eq!(summary.replaced, std::slice::from_ref(&link), "{what}");
                assert_eq!(snapshot(victim.path()), before, "{what}: the victim's directory is untouched");
                assert!(std::fs::symlink_metadata(&link).unwrap().is_dir(), "{what}: a directory now");
                for file in holds {
                    assert!(link.join(file).is_file(), "{what}: {file}");
                }
            }
        }
    }

    // A file where a directory belongs: refused, then replaced with force.
    let shared = tempfile::tempdir().unwrap();
    std::fs::create_dir(shared.path().join("tree")).unwrap();
    std::fs::write(shared.path().join("tree/sub"), b"mine").unwrap();
    let plan =
        tree::plan_get(&mut client, &["tree".to_owned()], shared.path(), PlanOptions::new(true, false)).await.unwrap();
    let summary = tree::run(&endpoint, plan, &CopyOptions::default(), Arc::new(Quiet)).await;
    let failed: Vec<&str> = summary.failures.iter().map(|f| f.path.as_str()).collect();
    assert!(failed.iter().any(|p| p.ends_with("tree/sub")), "{failed:?}");
    // The library says what is in the way; the CLI says --force replaces it.
    let in_the_way =
        |f: &&tree::Failure| f.error.to_string().contains("a file stands where the copy needs a directory");
    assert!(summary.failures.iter().any(|f| in_the_way(&f)), "{:?}", summary.failures);
    assert!(summary.failures.iter().all(|f| !f.error.to_string().contains("--force")), "{:?}", summary.failures);
    assert_eq!(std::fs::read(shared.path().join("tree/sub")).unwrap(), b"mine");
    assert!(shared.path().join("tree/r.txt").is_file(), "the rest is copied");
    let plan =
        tree::plan_get(&mut client, &["tree".to_owned()], shared.path(), PlanOptions::new(true, true)).await.unwrap();
    let summary = tree::run(&endpoint, plan, &CopyOptions::new(true, 4), Arc::new(Quiet)).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert!(shared.path().join("tree/sub/deeper/d.txt").is_file());

    // The destination the user named is followed, as cp and rsync do.
    let elsewhere = tempfile::tempdir().unwrap();
    let named = shared.path().join("named");
    symlink(elsewhere.path(), &named).unwrap();
    let plan = tree::plan_get(&mut client, &["tree/".to_owned()], &named, PlanOptions::new(true, false)).await.unwrap();
    let summary = tree::run(&endpoint, plan, &CopyOptions::default(), Arc::new(Quiet)).await;
    assert!(summary.failures.is_empty() && summary.replaced.is_empty(), "{summary:?}");
    assert!(elsewhere.path().join("sub/deeper/d.txt").is_file());
}

/// Issue 30: a `tree_put` with `meta` whose entries try to lead out. A
/// symlink climbing out of the root is stored as data (a directory root)
/// or refused (a bucket keeps no links), and never followed; a hard link
/// naming a path outside the request's directory, a symlink with no
/// target and a link entry in a request without `meta` are refused, entry
/// by entry; a directory entry is applied (or, on a bucket, kept as it is).
async fn hostile_meta_entries_stay_data_or_are_refused(root: &RootServer) {
    root.write("secret", b"s").await;
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::TreePut(proto::TreePut {
            path: "t".into(),
            force: false,
            meta: true,
            backup: None,
            xattrs: false,
            acls: false,
            delta: false,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::TreeReady(proto::TreeReady { meta: true, .. }))));
    let entries = serde_json::json!([
        {"path": "s", "size": 0, "mtime": 1, "mode": 0, "kind": "symlink", "target": "../../etc"},
        {"path": "h", "size": 0, "mtime": 1, "mode": 0, "link": "../secret"},
        {"path": "e", "size": 0, "mtime": 1, "mode": 0, "kind": "symlink", "target": ""},
        {"path": "d", "size": 0, "mtime": 1, "mode": 0o700, "kind": "dir"},
    ]);
    let body = serde_json::to_vec(&entries).unwrap();
    w.send(&Message::Manifest(proto::Manifest { len: body.len() as u64, count: 4 }), &body).await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::Wants(_))));
    let wants: proto::WantList = serde_json::from_slice(&r.read_body(1 << 20).await.unwrap()).unwrap();
    assert!(wants.send.is_empty(), "{wants:?}");
    // In no particular order: screened ones come first.
    let mut refused: Vec<_> = wants.refused.iter().map(|f| (f.i, f.code)).collect();
    refused.sort_by_key(|(i, _)| *i);
    if root.has_links() {
        assert_eq!(refused, [(1, ErrorCode::BadPath), (2, ErrorCode::BadRequest)], "{wants:?}");
        assert_eq!(wants.done, [0, 3], "{wants:?}");
        let dir = root.dir_path().unwrap();
        assert_eq!(std::fs::read_link(dir.join("t/s")).unwrap(), std::path::Path::new("../../etc"));
    } else {
        let want = [(0, ErrorCode::BadRequest), (1, ErrorCode::BadPath), (2, ErrorCode::BadRequest)];
        assert_eq!(refused, want, "{wants:?}");
        assert_eq!(wants.unchanged, [3], "{wants:?}");
    }
    w.send(&Message::ManifestEnd(proto::ManifestEnd { count: 4 }), &[]).await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::WantsEnd(_))));
    w.send(&Message::TreeEnd(proto::TreeEnd { files: 0 }), &[]).await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::TreeDone(_))));
    assert_eq!(root.read("secret").await.as_deref(), Some(&b"s"[..]), "untouched on {}", root.kind());

    // Followed through the server, the stored link leads out: refused.
    let mut client = Client::connect(&root.addr()).await.unwrap();
    let err = client.stat("t/s/passwd").await.unwrap_err();
    assert!(matches!(code(&err), Some(ErrorCode::BadPath | ErrorCode::NotFound)), "{err}");

    // Without `meta`, a link entry is not understood: refused, by entry.
    let (mut r, mut w) = raw(root.addr).await;
    w.send(
        &Message::TreePut(proto::TreePut {
            path: "u".into(),
            force: false,
            meta: false,
            backup: None,
            xattrs: false,
            acls: false,
            delta: false,
        }),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::TreeReady(proto::TreeReady { meta: false, .. }))));
    let body = serde_json::to_vec(
        &serde_json::json!([{"path": "l", "size": 0, "mtime": 1, "mode": 0, "kind": "symlink", "target": "x"}]),
    )
    .unwrap();
    w.send(&Message::Manifest(proto::Manifest { len: body.len() as u64, count: 1 }), &body).await.unwrap();
    assert!(matches!(next(&mut r).await, Some(Message::Wants(_))));
    let wants: proto::WantList = serde_json::from_slice(&r.read_body(1 << 20).await.unwrap()).unwrap();
    assert_eq!(wants.refused.iter().map(|f| (f.i, f.code)).collect::<Vec<_>>(), [(0, ErrorCode::BadRequest)]);
}

/// `backup` in a `put` (PROTOCOL.md §4.6.4): a directory climbing out, a
/// suffix with `/`, and a backup directory that is a symlink leading out
/// are refused, the file left as it was and nothing written outside; a
/// bucket root refuses backups, clearly, before any byte.
async fn hostile_backups_are_refused_and_lead_nowhere(root: &RootServer) {
    let (outside, victim) = victim();
    root.write("f", b"orig").await;
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("x"), b"replacement").unwrap();
    let mut client = Client::connect(&root.addr()).await.unwrap();
    let backup = |dir: Option<&str>, suffix: &str| proto::Backup {
        dir: dir.map(str::to_owned),
        of: String::new(),
        suffix: suffix.to_owned(),
    };
    let mut tries = vec![backup(Some("../out"), ""), backup(None, "/x"), backup(None, "")];
    if let Some(dir) = root.dir_path() {
        std::os::unix::fs::symlink(outside.path(), dir.join("evil")).unwrap();
        tries.push(backup(Some("evil"), ""));
    }
    for b in tries {
        let options = TransferOptions::force(true).with_backups(Some(b.clone()), None);
        let err = client.put(&local.path().join("x"), "f", &options, &mut no_progress()).await.unwrap_err();
        let expected = [ErrorCode::BadPath, ErrorCode::BadRequest, ErrorCode::NotADirectory];
        assert!(code(&err).is_some_and(|c| expected.contains(&c)), "{b:?} on {}: {err}", root.kind());
        assert_eq!(root.read("f").await.as_deref(), Some(&b"orig"[..]), "{b:?}: left as it was");
        assert_untouched(&victim);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside the root");
        client = Client::connect(&root.addr()).await.unwrap();
    }
    if root.dir_path().is_none() {
        let options = TransferOptions::force(true).with_backups(Some(backup(None, "~")), None);
        let err = client.put(&local.path().join("x"), "f", &options, &mut no_progress()).await.unwrap_err();
        assert!(err.to_string().contains("keeps no backups"), "{err}");
    }
}
