//! Delta transfers against a real server (issue 32, PROTOCOL.md §4.6.6):
//! each change pattern both ways, verified byte for byte and by BLAKE3,
//! the bytes on the wire counted by a proxy in the path; a cut delta
//! resumed; a receiver's file changed while its signature is in flight;
//! hostile signatures and ops refused; a bucket root (the older object
//! copied to the server's disk, the new one built beside it).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::path::Path;

use common::fake_peer;
use common::roots::RootServer;
use framewire::client::{DeltaMode, Progress, TransferOptions};
use framewire::proto::{self, AnyMessage as Message};
use framewire::wire::{FrameReader, FrameWriter, Preface};
use framewire::{Client, ClientError, ErrorCode};

/// Bytes that crossed a proxy, each way, counted as they pass; and the
/// connections still open.
#[derive(Default)]
struct Wire {
    up: AtomicU64,
    down: AtomicU64,
    open: AtomicU64,
}

impl Wire {
    /// What has been counted so far, and the count reset.
    fn take(&self) -> (u64, u64) {
        (self.up.swap(0, Ordering::SeqCst), self.down.swap(0, Ordering::SeqCst))
    }

    /// What crossed, once every connection through the proxy has ended
    /// (each side closed or gone): a connection the test let go is counted
    /// whole, however long its close takes.
    async fn settled(&self) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "a connection through the proxy did not end in 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.take()
    }
}

/// Copies `from` to `into` until `from` ends, adding each chunk to
/// `count` as it passes, then shuts `into`'s writing down.
async fn counted_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut into: tokio::net::tcp::OwnedWriteHalf,
    count: impl Fn(u64),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || into.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count(n as u64);
    }
    let _ = into.shutdown().await;
}

/// A proxy on 127.0.0.1:0 to `to`, counting what it carries.
async fn counting_proxy(to: std::net::SocketAddr) -> (String, Arc<Wire>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wire = Arc::new(Wire::default());
    let counted = wire.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            // Open before the client can have finished: it cannot move a
            // frame before this side has connected on.
            counted.open.fetch_add(1, Ordering::SeqCst);
            let wire = counted.clone();
            tokio::spawn(async move {
                if let Ok(server) = tokio::net::TcpStream::connect(to).await {
                    let ((cr, cw), (sr, sw)) = (client.into_split(), server.into_split());
                    let up = counted_copy(cr, sw, |n| {
                        wire.up.fetch_add(n, Ordering::SeqCst);
                    });
                    let down = counted_copy(sr, cw, |n| {
                        wire.down.fetch_add(n, Ordering::SeqCst);
                    });
                    tokio::join!(up, down);
                }
                wire.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, wire)
}

fn delta_options() -> TransferOptions {
    let mut o = TransferOptions::force(true);
    o.delta = DeltaMode::Always;
    o
}

fn no_progress() -> impl FnMut(Progress) + Send {
    |_| {}
}

/// Random-looking bytes from a seed (incompressible, no repeats).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u64;
    while out.len() < len {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&block.to_le_bytes());
        out.extend_from_slice(h.finalize().as_bytes());
        block += 1;
    }
    out.truncate(len);
    out
}

/// The changes of the issue's table, at a scale a test runs in a moment.
fn changes(old: &[u8]) -> Vec<(&'static str, Vec<u8>, u64)> {
    let len = old.len();
    let mut scattered = old.to_vec();
    // 1 % rewritten in runs of 2 KiB, spread over the file.
    let runs = len / 100 / 2048;
    for k in 0..runs {
        let at = k * (len / runs) + 777;
        scattered[at..at + 2048].copy_from_slice(&noise(2048, 1000 + k as u64));
    }
    let mut inserted = old[..1 << 20].to_vec();
    inserted.extend_from_slice(&noise(1000, 7));
    inserted.extend_from_slice(&old[1 << 20..]);
    let mut appended = old.to_vec();
    appended.extend_from_slice(&noise(512 << 10, 8));
    // Most bytes each may cost on the wire, both ways together, headers
    // and signature included: a fraction of the whole file's.
    vec![
        ("scattered 1 %", scattered, len as u64 / 10),
        ("1,000 bytes inserted", inserted, len as u64 / 40),
        ("512 KiB appended", appended, (512 << 10) + (16 << 10)),
    ]
}

const SIZE: usize = 6 << 20;
/// Past a bucket's largest single write (8 MiB): a multipart upload.
const BIG: usize = 20 << 20;

async fn put_each_change_as_a_delta(root: &RootServer) {
    let (proxy, wire) = counting_proxy(root.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    // A bucket stores the smaller with one write, the larger through a
    // multipart upload: both built from the older object.
    for size in [SIZE, BIG] {
        let old = noise(size, 1);
        for (what, new, most) in changes(&old) {
            root.write("f.bin", &old).await;
            std::fs::write(&local, &new).unwrap();
            let mut client = Client::connect(&proxy).await.unwrap();
            let _ = wire.take();
            let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
            drop(client);
            let (up, down) = wire.settled().await;
            assert_eq!(root.read("f.bin").await.unwrap(), new, "{what}, {size}");
            assert_eq!(done.blake3, blake3::hash(&new).to_hex().to_string(), "{what}");
            assert!(up + down <= most, "{what}, {size}: {up} up + {down} down, more than {most}");
            assert!(done.matched > 0, "{what}: nothing matched");
        }
    }
}

async fn get_each_change_as_a_delta(root: &RootServer) {
    let (proxy, wire) = counting_proxy(root.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    for size in [SIZE, BIG] {
        let old = noise(size, 2);
        for (what, new, most) in changes(&old) {
            std::fs::write(&local, &old).unwrap();
            root.write("f.bin", &new).await;
            let mut client = Client::connect(&proxy).await.unwrap();
            let _ = wire.take();
            let done = client.get("f.bin", &local, &delta_options(), &mut no_progress()).await.unwrap();
            drop(client);
            let (up, down) = wire.settled().await;
            assert_eq!(std::fs::read(&local).unwrap(), new, "{what}, {size}");
            assert_eq!(done.blake3, blake3::hash(&new).to_hex().to_string(), "{what}");
            assert!(up + down <= most, "{what}, {size}: {up} up + {down} down, more than {most}");
            assert!(done.matched > 0, "{what}: nothing matched");
            assert!(!tmp.path().join(".f.bin.fwpart").exists(), "{what}: a partial file left");
        }
    }
}

common::roots::on_both_roots!(put_each_change_as_a_delta, get_each_change_as_a_delta);

/// Same size, edited in place: aligned blocks, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_place_moves_its_blocks_only() {
    let root = RootServer::dir().await;
    let (proxy, wire) = counting_proxy(root.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(SIZE, 3);
    let mut new = old.clone();
    new[3_000_000..3_000_010].copy_from_slice(b"0123456789");
    root.write("f.bin", &old).await;
    std::fs::write(&local, &new).unwrap();
    let mut client = Client::connect(&proxy).await.unwrap();
    client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
    assert_eq!(root.read("f.bin").await.unwrap(), new);
    // Back the other way: the server's file edited, ours the old one.
    root.write("f.bin", &old).await;
    client.get("f.bin", &local, &delta_options(), &mut no_progress()).await.unwrap();
    assert_eq!(std::fs::read(&local).unwrap(), old);
    drop(client);
    let (up, down) = wire.settled().await;
    // Two signatures of 768 entries (9 KiB each), two 8 KiB blocks.
    assert!(up + down < 64 << 10, "{up} up + {down} down");
}

/// A file past 64 MiB is built with its hash made on a thread beside the
/// copy, and a sender's cut made before the other side's signature came
/// hashes the whole file only after its ops have gone: both ways, the
/// file arrives byte for byte as a delta (a wrong hash on either side
/// would fail the check and send it whole: `matched` would be 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_built_and_hashed_at_once() {
    let root = RootServer::dir().await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(72 << 20, 17);
    let mut new = old[..1 << 20].to_vec();
    new.extend_from_slice(&noise(1000, 18));
    new.extend_from_slice(&old[1 << 20..]);
    root.write("f.bin", &old).await;
    std::fs::write(&local, &new).unwrap();
    let mut client = Client::connect(&root.addr.to_string()).await.unwrap();
    let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
    assert_eq!(root.read("f.bin").await.unwrap(), new);
    assert_eq!(done.blake3, blake3::hash(&new).to_hex().to_string());
    assert!(done.matched > 70 << 20, "{}", done.matched);
    // Back the other way: the server's file is the new one, ours the old.
    std::fs::write(&local, &old).unwrap();
    let done = client.get("f.bin", &local, &delta_options(), &mut no_progress()).await.unwrap();
    assert_eq!(std::fs::read(&local).unwrap(), new);
    assert_eq!(done.blake3, blake3::hash(&new).to_hex().to_string());
    assert!(done.matched > 70 << 20, "{}", done.matched);
}

/// Without --delta, to a loopback server, files go whole (auto mode),
/// and -W keeps them whole anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_sends_whole_files_on_loopback() {
    let root = RootServer::dir().await;
    let (proxy, wire) = counting_proxy(root.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(1 << 20, 4);
    let mut new = old.clone();
    new.extend_from_slice(b"tail");
    root.write("f.bin", &old).await;
    std::fs::write(&local, &new).unwrap();
    let mut client = Client::connect(&proxy).await.unwrap();
    for mode in [DeltaMode::Auto, DeltaMode::Never] {
        let mut o = TransferOptions::force(true);
        o.delta = mode;
        o.other_len = Some(old.len() as u64);
        let done = client.put(&local, "f.bin", &o, &mut no_progress()).await.unwrap();
        assert_eq!(done.matched, 0, "{mode:?}");
        root.write("f.bin", &old).await;
    }
    drop(client);
    let (up, _) = wire.settled().await;
    assert!(up > 2 * new.len() as u64, "{up}");
}

/// The server's file changes after its signature was sent: the file built
/// from it does not hash as the client's, and the client sends it whole.
/// Whether it shrank (the copies cannot be read) or changed in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_file_changed_while_its_signature_is_in_flight() {
    let root = RootServer::dir().await;
    let served = root.dir_path().unwrap().join("f.bin");
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(SIZE, 5);
    let mut new = old.clone();
    new[100..200].fill(9);
    std::fs::write(&local, &new).unwrap();
    for shrink in [true, false] {
        root.write("f.bin", &old).await;
        // The client's first ops frame is held until the file has changed:
        // the server cannot build from the older version first.
        let (proxy, release) = holding_proxy(root.addr).await;
        let mut changed = false;
        let mut change = |_: Progress| {
            if !changed {
                changed = true;
                let f = std::fs::OpenOptions::new().write(true).open(&served).unwrap();
                if shrink {
                    f.set_len(1000).unwrap();
                } else {
                    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAA; 64 << 10], 1 << 20).unwrap();
                }
                release.send_replace(true);
            }
        };
        let mut client = Client::connect(&proxy).await.unwrap();
        let done = bounded(client.put(&local, "f.bin", &delta_options(), &mut change)).await.unwrap();
        assert!(changed, "shrink {shrink}: no progress was reported");
        assert_eq!(std::fs::read(&served).unwrap(), new, "shrink {shrink}");
        assert_eq!(done.matched, 0, "shrink {shrink}: sent whole in the end");
        assert!(!root.names("").await.iter().any(|n| n.ends_with(".fwpart")), "shrink {shrink}");
    }
    // The same on the client's side of a get.
    for shrink in [true, false] {
        std::fs::write(&local, &old).unwrap();
        root.write("f.bin", &new).await;
        let at = local.clone();
        let mut changed = false;
        let mut change = move |_: Progress| {
            if !changed {
                changed = true;
                let f = std::fs::OpenOptions::new().write(true).open(&at).unwrap();
                if shrink {
                    f.set_len(1000).unwrap();
                } else {
                    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAA; 64 << 10], 3 << 20).unwrap();
                }
            }
        };
        let mut client = Client::connect(&root.addr()).await.unwrap();
        client.get("f.bin", &local, &delta_options(), &mut change).await.unwrap();
        assert_eq!(std::fs::read(&local).unwrap(), new, "get, shrink {shrink}");
        assert!(!tmp.path().join(".f.bin.fwpart").exists());
    }
}

/// A proxy on 127.0.0.1:0 to `to` that reads the client's frames and
/// holds each connection's first `delta` frame until `release` is set
/// (it stays set); the rest it carries as it comes, both ways.
async fn holding_proxy(to: std::net::SocketAddr) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else { continue };
            let mut released = released.clone();
            let (cr, mut cw) = client.into_split();
            let (mut sr, sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
            tokio::spawn(async move {
                let (mut r, mut w) = (FrameReader::new(cr), FrameWriter::new(sw));
                let Ok(preface) = r.read_preface().await else { return };
                w.feed_preface(preface);
                if w.flush().await.is_err() {
                    return;
                }
                let mut holding = true;
                while let Ok(Some((head, _))) = r.read_head::<Message>().await {
                    let Ok(body) = r.read_body(u64::MAX).await else { return };
                    if holding && matches!(head, Message::DeltaFrame(_)) {
                        holding = false;
                        if released.wait_for(|set| *set).await.is_err() {
                            return;
                        }
                    }
                    if w.send(&head, &body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, release)
}

/// A proxy on 127.0.0.1:0 to `to` that carries `budget` bytes of each
/// connection's `up` (client to server) or down stream, then cuts the
/// connection: a transfer killed at a chosen point. For an `up` cut, the
/// receiver yields `()` once the server has closed its side after the
/// cut (it has kept what it wrote and let the path go).
async fn cutting_proxy(
    to: std::net::SocketAddr,
    up: bool,
    budget: u64,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let (mut from, mut into, mut back_from, back_into) = if up { (cr, sw, sr, cw) } else { (sr, cw, cr, sw) };
            // The other way, to its end. At the cut, its far side is let
            // go (for an up cut, the client sees it at once) and the rest
            // drained until the near side closes (the server's close).
            let (cut_tx, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
            let back = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut into = Some(back_into);
                loop {
                    tokio::select! {
                        read = back_from.read(&mut buf) => {
                            let Ok(n @ 1..) = read else { break };
                            if let Some(w) = into.as_mut() {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    into = None;
                                }
                            }
                        }
                        _ = &mut cut_rx, if into.is_some() => into = None,
                    }
                }
            });
            let mut left = budget;
            let mut buf = vec![0u8; 64 << 10];
            while left > 0 {
                let Ok(n) = from.read(&mut buf).await else { break };
                if n == 0 {
                    break;
                }
                let n = n.min(left as usize);
                if into.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                left -= n as u64;
            }
            // The cut: the server reads its end, the client loses its.
            let _ = into.shutdown().await;
            drop((from, into));
            let _ = cut_tx.send(());
            if up {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let _ = back.await;
                    let _ = closed_tx.send(());
                });
            } else {
                back.abort();
            }
        }
    });
    (addr, closed)
}

/// `transfer`'s outcome, or a failure after 60 s: a transfer through a
/// proxy that holds or cuts is never left waiting forever.
async fn bounded<T>(transfer: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), transfer).await.expect("the transfer did not end in 60 s")
}

/// Waits (30 s at most) until the server has closed a connection cut on
/// its way up.
async fn server_closed(closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>) {
    let wait = tokio::time::timeout(std::time::Duration::from_secs(30), closed.recv()).await;
    assert!(matches!(wait, Ok(Some(()))), "the server did not close a cut connection in 30 s");
}

/// A delta transfer cut at several points leaves its partial file; the
/// next one resumes from it (and still builds from the older version),
/// both ways, and the result is the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_delta_transfer_resumes() {
    let root = RootServer::dir().await;
    let dir = root.dir_path().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(SIZE, 6);
    // Half the file new: the delta has bytes to cut in.
    let mut new = old.clone();
    new[SIZE / 4..SIZE / 4 * 3].copy_from_slice(&noise(SIZE / 2, 60));
    let mut resumed_some = false;
    for budget in [100u64 << 10, 1_300_000, 2_500_000, 3_100_000] {
        root.write("f.bin", &old).await;
        std::fs::write(&local, &new).unwrap();
        let (proxy, mut closed) = cutting_proxy(root.addr, true, budget).await;
        let mut client = Client::connect(&proxy).await.unwrap();
        let cut = bounded(client.put(&local, "f.bin", &delta_options(), &mut no_progress())).await;
        assert!(cut.is_err(), "cut after {budget} bytes up: {cut:?}");
        drop(client);
        // The server notices the cut and keeps what it wrote.
        server_closed(&mut closed).await;
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), old, "cut after {budget}");
        let held = std::fs::metadata(dir.join(".f.bin.fwpart")).map(|m| m.len()).unwrap_or(0);
        let mut client = Client::connect(&root.addr()).await.unwrap();
        let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
        assert_eq!(done.resumed, held, "cut after {budget}");
        resumed_some |= held > 0;
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), new, "cut after {budget}");
        assert!(done.matched > 0, "cut after {budget}: the rest went whole");
        assert!(!dir.join(".f.bin.fwpart").exists());
    }
    assert!(resumed_some, "no cut left anything to resume");
    // Downloads, cut the same way.
    let mut resumed_some = false;
    for budget in [100u64 << 10, 1_300_000, 2_500_000] {
        std::fs::write(&local, &old).unwrap();
        let _ = std::fs::remove_file(tmp.path().join(".f.bin.fwpart"));
        root.write("f.bin", &new).await;
        let (proxy, _) = cutting_proxy(root.addr, false, budget).await;
        let mut client = Client::connect(&proxy).await.unwrap();
        let cut = client.get("f.bin", &local, &delta_options(), &mut no_progress()).await;
        assert!(cut.is_err(), "cut after {budget} bytes down: {cut:?}");
        assert_eq!(std::fs::read(&local).unwrap(), old);
        let held = std::fs::metadata(tmp.path().join(".f.bin.fwpart")).map(|m| m.len()).unwrap_or(0);
        let mut client = Client::connect(&root.addr()).await.unwrap();
        let done = client.get("f.bin", &local, &delta_options(), &mut no_progress()).await.unwrap();
        assert_eq!(done.resumed, held, "cut after {budget}");
        resumed_some |= held > 0;
        assert_eq!(std::fs::read(&local).unwrap(), new, "cut after {budget}");
        assert!(done.matched > 0, "cut after {budget}: the rest went whole");
    }
    assert!(resumed_some, "no cut download left anything to resume");
}

/// Into a bucket, a cut delta upload stores nothing (the new object is
/// built on the server's disk, and stored once verified): the object is
/// still the older one, and the next upload is a delta again, whole.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_delta_into_a_bucket_is_made_again() {
    let _env = common::seaweed::ENV.lock().await;
    let Some(weed) = common::seaweed::weed() else { return };
    let store = common::seaweed::Seaweed::start(&weed);
    let root = RootServer::bucket(&store, "cut-delta").await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(BIG, 6);
    let mut new = old.clone();
    new[BIG / 4..BIG / 2].copy_from_slice(&noise(BIG / 4, 60));
    for budget in [100u64 << 10, 3_000_000] {
        root.write("f.bin", &old).await;
        std::fs::write(&local, &new).unwrap();
        let (proxy, mut closed) = cutting_proxy(root.addr, true, budget).await;
        let mut client = Client::connect(&proxy).await.unwrap();
        let cut = bounded(client.put(&local, "f.bin", &delta_options(), &mut no_progress())).await;
        assert!(cut.is_err(), "cut after {budget} bytes up: {cut:?}");
        drop(client);
        server_closed(&mut closed).await;
        assert_eq!(root.read("f.bin").await.unwrap(), old, "cut after {budget}");
        let mut client = Client::connect(&root.addr()).await.unwrap();
        let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
        assert_eq!(done.resumed, 0, "cut after {budget}");
        assert!(done.matched > 0, "cut after {budget}: the rest went whole");
        assert_eq!(root.read("f.bin").await.unwrap(), new, "cut after {budget}");
    }
}

/// A tree's listing asked `compact` comes compressed (the client's
/// choice on a slow link, or with `--delta`), and lists the same as a
/// plain one, in a fraction of the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_listing_lists_the_same_in_fewer_bytes() {
    let root = RootServer::dir().await;
    let dir = root.dir_path().unwrap().to_owned();
    for d in 0..20 {
        std::fs::create_dir_all(dir.join(format!("src/module_{d}"))).unwrap();
        for f in 0..150 {
            std::fs::write(dir.join(format!("src/module_{d}/file_{f}.rs")), format!("// {d} {f}\n")).unwrap();
        }
    }
    let (proxy, wire) = counting_proxy(root.addr).await;
    let mut listed = Vec::new();
    for compact in [false, true] {
        let mut client = Client::connect(&proxy).await.unwrap();
        client.compact_listings(Some(compact));
        let _ = wire.take();
        let listing = client.tree_meta("src", false, true).await.unwrap();
        drop(client);
        let (_, down) = wire.settled().await;
        assert_eq!(listing.entries.len(), 20 * 151, "compact: {compact}");
        listed.push((listing.entries, down));
    }
    let ((plain, plain_bytes), (small, small_bytes)) = (&listed[0], &listed[1]);
    assert_eq!(plain, small);
    eprintln!("a listing of {} entries: {plain_bytes} bytes plain, {small_bytes} compact", plain.len());
    assert!(small_bytes * 4 < *plain_bytes, "{small_bytes} bytes compact, {plain_bytes} plain");

    // Asked for by hand, the frames say so, and their bodies expand to
    // the JSON of the plain listing.
    let (mut r, mut w) = raw(root.addr).await;
    let ask = proto::TreeList {
        path: "src".into(),
        blake3: false,
        skips: false,
        meta: false,
        owners: false,
        xattrs: false,
        acls: false,
        copy_links: false,
        compact: true,
    };
    w.send(&Message::TreeList(ask), &[]).await.unwrap();
    let mut entries = 0;
    loop {
        match r.read_head::<Message>().await.unwrap().unwrap() {
            (Message::Listing(head), _) => {
                assert!(head.zstd, "{head:?}");
                let body = r.read_body(1 << 20).await.unwrap();
                let json = framewire::wire::expand(&body, 1 << 20).unwrap();
                let part: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
                assert_eq!(part.len() as u64, head.count);
                entries += part.len();
            }
            (Message::ListingEnd(end), _) => {
                assert_eq!(end.count as usize, entries);
                break;
            }
            (other, _) => panic!("{other:?}"),
        }
    }
    assert_eq!(entries, 20 * 151);
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

/// Reads frames until an error frame (skipping signatures): its code.
async fn error_code(r: &mut RawReader) -> Option<ErrorCode> {
    loop {
        match r.read_head::<Message>().await {
            Ok(Some((Message::ErrorFrame(e), _))) => return Some(e.code),
            Ok(Some(_)) => r.skip_body().await.unwrap(),
            _ => return None,
        }
    }
}

/// A client's ops that do not fit the files are refused with a clear
/// error, the connection closed and the server's file untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ops_are_refused() {
    let root = RootServer::dir().await;
    let old = noise(1 << 20, 7);
    let size = old.len() as u64;
    let copy = |offset: u64, len: u32| {
        let mut b = vec![1u8];
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a copy past the old file's end", copy(size - 10, 100)),
        ("a copy whose end overflows", copy(u64::MAX - 5, 100)),
        ("ops past the new file's end", [copy(0, 1 << 20), copy(0, 10)].concat()),
        ("an empty copy", copy(0, 0)),
        ("an unknown tag", vec![9, 0, 0]),
        ("data cut short", vec![2, 0, 0, 0, 100, 1, 2, 3]),
        ("data over MAX_DATA", [vec![2], (2u32 << 20).to_be_bytes().to_vec()].concat()),
    ];
    for (what, body) in cases {
        root.write("f.bin", &old).await;
        let (mut r, mut w) = raw(root.addr).await;
        let put = proto::Put {
            path: "f.bin".into(),
            size,
            force: true,
            mode: None,
            mtime: None,
            mtime_ns: None,
            backup: None,
            delta: Some(proto::DeltaAsk { append: None, trust: false, stream: false }),
        };
        w.send(&Message::Put(put), &[]).await.unwrap();
        let Some((Message::PutReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!("{what}") };
        assert!(ready.basis.is_some(), "{what}: no basis offered");
        w.send(&Message::PutDelta(proto::PutDelta { offset: 0 }), &[]).await.unwrap();
        w.send(&Message::DeltaFrame(proto::DeltaFrame { len: body.len() as u64 }), &body).await.unwrap();
        assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest), "{what}");
        assert!(r.read_head::<Message>().await.map_or(true, |m| m.is_none()), "{what}: the connection stays open");
        assert_eq!(root.read("f.bin").await.unwrap(), old, "{what}");
    }
    // put_delta where no basis was offered (no file there).
    let (mut r, mut w) = raw(root.addr).await;
    let put = proto::Put {
        path: "new.bin".into(),
        size,
        force: true,
        mode: None,
        mtime: None,
        mtime_ns: None,
        backup: None,
        delta: Some(proto::DeltaAsk { append: None, trust: false, stream: false }),
    };
    w.send(&Message::Put(put), &[]).await.unwrap();
    let Some((Message::PutReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!() };
    assert!(ready.basis.is_none());
    w.send(&Message::PutDelta(proto::PutDelta { offset: 0 }), &[]).await.unwrap();
    assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest));
    assert!(root.read("new.bin").await.is_none());
}

/// A get whose signature does not fit its basis is refused, the
/// connection closed; one whose basis is not cut as the sizes say, or
/// describes a file too long to be worth it, gets the file whole, no
/// signature asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_signatures_are_refused() {
    use framewire::delta::{Layout, Params};
    let root = RootServer::dir().await;
    let data = noise(1 << 20, 8);
    root.write("f.bin", &data).await;
    let mib = 1u64 << 20;
    // As the sizes say: blocks of 1 KiB, chunks of at most 4 KiB.
    let blocks = Layout::for_sizes(mib, mib);
    let chunks = Layout::for_sizes(mib / 2, mib);
    assert_eq!((blocks, chunks), (Layout::Blocks(1024), Layout::Chunks(Params::SMALLEST)));
    let entry = |len: u32| [len.to_be_bytes().to_vec(), vec![7; 8]].concat();
    // What, the basis's length, layout and count, the frames sent.
    type Case = (&'static str, u64, Layout, u64, Vec<Vec<u8>>);
    let cases: Vec<Case> = vec![
        ("more entries than the layout allows", mib, blocks, 1 << 30, vec![]),
        ("an entry of the wrong length", mib, blocks, 1024, vec![[entry(1024), entry(100)].concat()]),
        ("a ragged frame", mib, blocks, 1024, vec![vec![1, 2, 3]]),
        ("an empty frame", mib, blocks, 1024, vec![vec![]]),
        ("entries longer than the file", mib / 2, chunks, 129, vec![(0..129).flat_map(|_| entry(4096)).collect()]),
    ];
    for (what, len, layout, count, frames) in cases {
        let (mut r, mut w) = raw(root.addr).await;
        let basis = proto::Basis {
            len,
            append: false,
            blake3: None,
            tail: None,
            layout: Some(layout),
            count,
            streamed: false,
            pipelined: false,
        };
        let get =
            proto::Get { path: "f.bin".into(), offset: 0, prefix_blake3: None, sparse: false, basis: Some(basis) };
        w.send(&Message::Get(get), &[]).await.unwrap();
        let wanted = r.read_head::<Message>().await.unwrap();
        assert!(matches!(wanted, Some((Message::SignatureWanted(_), _))), "{what}: {wanted:?}");
        for f in frames {
            w.send(&Message::SignatureFrame(proto::SignatureFrame { len: f.len() as u64, failed: false }), &f)
                .await
                .unwrap();
        }
        assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest), "{what}");
    }
    // Not cut as the sizes say, or too long: the file whole.
    for (what, len, layout) in
        [("blocks for other sizes", mib / 2, blocks), ("a basis 5 times as long", 5 * mib, chunks)]
    {
        let (mut r, mut w) = raw(root.addr).await;
        let basis = proto::Basis {
            len,
            append: false,
            blake3: None,
            tail: None,
            layout: Some(layout),
            count: 64,
            streamed: false,
            pipelined: false,
        };
        let get =
            proto::Get { path: "f.bin".into(), offset: 0, prefix_blake3: None, sparse: false, basis: Some(basis) };
        w.send(&Message::Get(get), &[]).await.unwrap();
        let Some((Message::FileReply(head), _)) = r.read_head::<Message>().await.unwrap() else { panic!("{what}") };
        assert!(!head.delta && head.len == mib, "{what}: {head:?}");
        assert_eq!(&r.read_body(mib).await.unwrap()[..], &data[..], "{what}");
    }
}

/// A server that answers with a basis nobody asked for, or a signature
/// that does not fit, is a protocol violation the client reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_signature_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        // stat, then put.
        let _ = r.read_head::<Message>().await.unwrap();
        let entry: proto::Entry =
            serde_json::from_str(r#"{"name":"f.bin","kind":"file","size":1048576,"mtime":0,"mode":0}"#).unwrap();
        w.send(&Message::StatReply(proto::StatReply { entry }), &[]).await.unwrap();
        let _ = r.read_head::<Message>().await.unwrap();
        // Blocks of 8 KiB claimed for a 1 MiB file: 128 entries, but one
        // says it is a whole MiB.
        let basis = proto::Basis {
            len: 1 << 20,
            append: false,
            blake3: None,
            tail: None,
            layout: Some(framewire::delta::Layout::Blocks(8192)),
            count: 128,
            streamed: false,
            pipelined: false,
        };
        let ready =
            proto::PutReady { offset: 0, prefix_blake3: None, backup: false, sparse: false, basis: Some(basis) };
        w.send(&Message::PutReady(ready), &[]).await.unwrap();
        let mut body = (1u32 << 20).to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 8]);
        let _ = w.send(&Message::SignatureFrame(proto::SignatureFrame { len: 12, failed: false }), &body).await;
        let _ = r.read_head::<Message>().await;
    });
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    std::fs::write(&local, noise(1 << 20, 9)).unwrap();
    let mut client = Client::connect(&addr.to_string()).await.unwrap();
    let err = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap_err();
    assert!(matches!(err, ClientError::Unexpected { .. }), "{err:?}");
    assert!(err.to_string().contains("signature"), "{err}");
    fake.await.unwrap();
}

/// A hostile server's compact listings are refused: two zstd frames in
/// one body, a frame that does not state its size, one that says it
/// expands past 1 MiB (a bomb of zeros); each ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_compact_listings_are_refused() {
    let json = br#"[{"name":"a","kind":"file","size":1,"mtime":0,"mode":420}]"#;
    let one = framewire::wire::compact(&json.repeat(20)).unwrap();
    let bomb = zstd::bulk::compress(&vec![b' '; 8 << 20], 1).unwrap();
    let mut streamed = Vec::new();
    {
        use std::io::Write;
        let mut e = zstd::stream::write::Encoder::new(&mut streamed, 1).unwrap();
        e.write_all(json).unwrap();
        e.finish().unwrap();
    }
    for (what, body) in [("two frames", [one.clone(), one.clone()].concat()), ("no size", streamed), ("a bomb", bomb)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let (mut r, mut w) = fake_peer(&listener).await;
            let _ = r.read_head::<Message>().await.unwrap();
            let head = proto::Listing { len: body.len() as u64, count: 1, zstd: true };
            w.send(&Message::Listing(head), &body).await.unwrap();
            // The client closes: nothing more is read.
            matches!(r.read_head::<Message>().await, Ok(None) | Err(_))
        });
        let mut client = Client::connect(&addr.to_string()).await.unwrap();
        client.compact_listings(Some(true));
        let err = client.tree("d").await.unwrap_err();
        assert!(matches!(err, ClientError::Unexpected { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains("zstd"), "{what}: {err}");
        assert!(client.is_closed(), "{what}: the connection is not used again");
        drop(client);
        assert!(fake.await.unwrap(), "{what}: the client went on");
    }
}

/// A server older than deltas ignores a get's basis and sends the file
/// whole: the client takes it, and the connection stays in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_sends_the_file_whole() {
    let data = noise(256 << 10, 10);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = data.clone();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        // The get, with a basis this server does not know of.
        let Some((Message::Get(get), _)) = r.read_head::<Message>().await.unwrap() else { panic!() };
        assert!(get.basis.is_some());
        let head = proto::FileReply {
            len: sent.len() as u64,
            size: sent.len() as u64,
            offset: 0,
            mtime: 0,
            mode: 0o644,
            mtime_ns: None,
            holes: None,
            delta: false,
        };
        w.send(&Message::FileReply(head), &sent).await.unwrap();
        let sum = proto::Checksum { blake3: blake3::hash(&sent).to_hex().to_string() };
        w.send(&Message::Checksum(sum), &[]).await.unwrap();
        // The next request is a stat, not a signature.
        let Some((Message::Stat(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("out of step") };
        let entry: proto::Entry =
            serde_json::from_str(r#"{"name":"f.bin","kind":"file","size":262144,"mtime":0,"mode":420}"#).unwrap();
        w.send(&Message::StatReply(proto::StatReply { entry }), &[]).await.unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let mut old = data.clone();
    old[5000..6000].fill(1);
    std::fs::write(&local, &old).unwrap();
    let mut client = Client::connect(&addr.to_string()).await.unwrap();
    let mut options = delta_options();
    options.other_len = Some(data.len() as u64);
    let done = client.get("f.bin", &local, &options, &mut no_progress()).await.unwrap();
    assert_eq!(done.matched, 0);
    assert!(std::fs::read(&local).unwrap() == data);
    assert_eq!(client.stat("f.bin").await.unwrap().size, data.len() as u64);
    fake.await.unwrap();
}

/// `put -r` and `get -r`: a tree's large changed files go as deltas (the
/// rest in the stream), and the tree comes out as the source, modes and
/// times included.
#[test]
fn trees_send_their_large_changed_files_as_deltas() {
    use std::os::unix::fs::PermissionsExt;
    let server = common::Serve::start(&["--insecure"]);
    let served = server.root.path().join("t");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("t");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&served).unwrap();
    let when = |secs: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let write = |path: &Path, data: &[u8], secs: u64, mode: u32| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when(secs)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let big = noise(3 << 20, 11);
    let mut changed = big.clone();
    changed[2_000_000..2_000_100].fill(3);
    // The receiver's older versions.
    write(&served.join("big.bin"), &big, 1_000, 0o644);
    write(&served.join("sub/log.txt"), &big[..2 << 20], 1_000, 0o644);
    write(&served.join("small.txt"), b"old", 1_000, 0o644);
    // The source: one edited in place, one appended to, a small one
    // changed, a new one.
    write(&src.join("big.bin"), &changed, 2_000, 0o600);
    write(&src.join("sub/log.txt"), &big, 2_000, 0o640);
    write(&src.join("small.txt"), b"new", 2_000, 0o644);
    write(&src.join("new.bin"), &noise(100_000, 12), 2_000, 0o644);
    let a = server.addr.as_str();
    let out = common::framewire(&["put", "-r", "--delta", a, src.to_str().unwrap(), ""]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("4 file(s)") && said.contains("the receiver had them: delta"), "{said}");
    for (name, mode) in [("big.bin", 0o600), ("sub/log.txt", 0o640), ("small.txt", 0o644), ("new.bin", 0o644)] {
        let (s, r) = (src.join(name), served.join(name));
        assert!(std::fs::read(&s).unwrap() == std::fs::read(&r).unwrap(), "{name}");
        let meta = std::fs::metadata(&r).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        assert_eq!(meta.modified().unwrap(), when(2_000), "{name}");
    }
    // Back: a copy of the old tree brought up to date by get -r.
    let back = local.path().join("back");
    write(&back.join("t/big.bin"), &big, 1_000, 0o644);
    write(&back.join("t/sub/log.txt"), &big[..2 << 20], 1_000, 0o644);
    let out = common::framewire(&["get", "-r", "--delta", a, "t", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the receiver had them: delta"), "{said}");
    for name in ["big.bin", "sub/log.txt", "small.txt", "new.bin"] {
        let (s, r) = (src.join(name), back.join("t").join(name));
        assert!(std::fs::read(&s).unwrap() == std::fs::read(&r).unwrap(), "{name}");
        assert_eq!(std::fs::metadata(&r).unwrap().modified().unwrap(), when(2_000), "{name}");
    }
    // Without --delta, on loopback, the same copy sends whole files.
    write(&served.join("big.bin"), &big, 1_000, 0o644);
    let out = common::framewire(&["put", "-r", a, src.to_str().unwrap(), ""]);
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("delta"), "{out:?}");
}

/// Text that compresses as source code does (words, not repeats of one
/// block).
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "fn", "let", "mut", "self", "match", "Some", "None", "Ok", "Err", "return", "impl", "pub", "struct", "use",
        "async", "await", "String", "Vec", "u64", "if", "else", "for", "in", "while", "{", "}", "(", ")", ";", "=",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    while out.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(WORDS[(x >> 33) as usize % WORDS.len()].as_bytes());
        out.push(if (x >> 20) % 9 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// `-z` (the library's `Endpoint::with_compress`): a text tree both ways
/// in a fraction of its bytes, random data in about its own, the files
/// the same byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_copies_move_fewer_bytes() {
    use framewire::client::tree::{self, CopyOptions, Endpoint, PlanOptions, Quiet};
    let root = RootServer::dir().await;
    let (proxy, wire) = counting_proxy(root.addr).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("t{i}.rs")), text(50_000, i)).unwrap();
    }
    std::fs::write(src.join("random.bin"), noise(2 << 20, 13)).unwrap();
    let mut moved = Vec::new();
    for (name, level) in [("plain", None), ("z", Some(1)), ("z9", Some(9))] {
        let endpoint = Endpoint::new(proxy.clone(), None).with_compress(level);
        let _ = wire.take();
        let mut client = endpoint.connect().await.unwrap();
        let plan = tree::plan_put(&mut client, std::slice::from_ref(&src), Some(name), PlanOptions::new(true, false))
            .await
            .unwrap();
        drop(client);
        let summary = tree::run(&endpoint, plan, &CopyOptions::new(false, 2), Arc::new(Quiet)).await;
        assert!(summary.failures.is_empty(), "{name}: {:?}", summary.failures);
        // The connection the copy handed back ends with its endpoint; the
        // count is read once it has.
        drop(endpoint);
        let (up, down) = wire.settled().await;
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            let there = root.dir_path().unwrap().join(name).join("src").join(f.file_name().unwrap());
            assert!(std::fs::read(&f).unwrap() == std::fs::read(&there).unwrap(), "{name}: {f:?}");
        }
        // And back, into an empty directory.
        let back = local.path().join(format!("back-{name}"));
        std::fs::create_dir_all(&back).unwrap();
        let endpoint = Endpoint::new(proxy.clone(), None).with_compress(level);
        let mut client = endpoint.connect().await.unwrap();
        let plan =
            tree::plan_get(&mut client, &[format!("{name}/src")], &back, PlanOptions::new(true, false)).await.unwrap();
        drop(client);
        let summary = tree::run(&endpoint, plan, &CopyOptions::new(false, 2), Arc::new(Quiet)).await;
        assert!(summary.failures.is_empty(), "{name} back: {:?}", summary.failures);
        drop(endpoint);
        let (up_back, down_back) = wire.settled().await;
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            let there = back.join("src").join(f.file_name().unwrap());
            assert!(std::fs::read(&f).unwrap() == std::fs::read(&there).unwrap(), "{name} back: {f:?}");
        }
        moved.push((name, up + down, up_back + down_back));
    }
    let (_, plain_up, plain_down) = moved[0];
    let text_bytes = 40 * 50_000u64;
    let random = 2u64 << 20;
    for &(name, up, down) in &moved[1..] {
        // The random file costs about itself; the text a fraction.
        assert!(up < random + text_bytes / 3, "{name}: {up} bytes up, plain {plain_up}");
        assert!(down < random + text_bytes / 3, "{name}: {down} bytes down, plain {plain_down}");
        assert!(up > random && down > random, "{name}: random data does not shrink");
    }
}

/// A server older than compression answers `compress` with
/// `unknown_type`: the client goes on uncompressed, in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_negotiated_off_with_an_older_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        // What an older server answers a type it does not know.
        let Some((Message::Compress(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!() };
        let refusal =
            proto::ErrorFrame { code: ErrorCode::UnknownType, message: "unknown message type \"compress\"".into() };
        w.send(&Message::ErrorFrame(refusal), &[]).await.unwrap();
        let Some((Message::Stat(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("out of step") };
        let entry: proto::Entry =
            serde_json::from_str(r#"{"name":"f","kind":"file","size":5,"mtime":0,"mode":420}"#).unwrap();
        w.send(&Message::StatReply(proto::StatReply { entry }), &[]).await.unwrap();
    });
    let endpoint = framewire::client::tree::Endpoint::new(addr.to_string(), None).with_compress(Some(3));
    let mut client = endpoint.connect().await.unwrap();
    assert_eq!(client.stat("f").await.unwrap().size, 5);
    fake.await.unwrap();
}

/// A peer's compressed stream that asks for a window larger than this
/// side allows is refused: the connection ends, the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_stream_with_a_huge_window_is_refused() {
    let root = RootServer::dir().await;
    let (mut r, mut w) = raw(root.addr).await;
    w.send(&Message::Compress(proto::Compress { level: 1 }), &[]).await.unwrap();
    let Some((Message::CompressReady(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!() };
    // A zstd frame header: magic, a descriptor with a window byte, and
    // the window byte for 2^31 (exponent 21 + 10), nothing of it sent.
    let header = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3];
    use tokio::io::AsyncWriteExt;
    let mut sock = w.into_inner();
    sock.write_all(&header).await.unwrap();
    sock.write_all(&[0u8; 64]).await.unwrap();
    let _ = sock.flush().await;
    // The server drops the connection: its read half sees the end.
    let mut rest = Vec::new();
    use tokio::io::AsyncReadExt;
    let mut raw_read = r.into_parts().0;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), raw_read.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the connection stays open");
    // And serves the next client.
    let mut client = Client::connect(&root.addr()).await.unwrap();
    client.echo(b"still here").await.unwrap();
}

/// A file edited in the middle and appended to ends as an append would:
/// the sample says "likely an append", the whole file says no. A put's
/// client trusts the sample (a short tail): the server answers at once,
/// the file built from its older version and the tail fails the
/// checksum, and the client puts it again without a sample, as a delta
/// by the signature (not whole). A get's server checks the prefix and
/// goes by the signature. Both build the source from the older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_is_not_one() {
    let root = RootServer::dir().await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let old = noise(1 << 20, 14);
    let mut new = old.clone();
    new[1000..1010].fill(0);
    new.extend_from_slice(&noise(100_000, 15));
    root.write("f.bin", &old).await;
    std::fs::write(&local, &new).unwrap();
    let mut client = Client::connect(&root.addr()).await.unwrap();
    let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
    assert!(root.read("f.bin").await.unwrap() == new);
    assert!(done.matched > 900_000, "{}", done.matched);
    std::fs::write(&local, &old).unwrap();
    let done = client.get("f.bin", &local, &delta_options(), &mut no_progress()).await.unwrap();
    assert!(std::fs::read(&local).unwrap() == new);
    assert!(done.matched > 900_000, "{}", done.matched);
    // A tail past TRUSTED_TAIL is not trusted to the sample: the put's
    // client checks the server's hash first, finds it is no append, and
    // asks for the signature (`signature_wanted`) on the same request.
    let mut long = new[..old.len()].to_vec();
    long.extend_from_slice(&noise((65 << 20) + 17, 16));
    root.write("f.bin", &old).await;
    std::fs::write(&local, &long).unwrap();
    let (proxy, wire) = counting_proxy(root.addr).await;
    let mut client = Client::connect(&proxy).await.unwrap();
    let done = client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap();
    drop(client);
    assert!(root.read("f.bin").await.unwrap() == long);
    assert!(done.matched > 900_000, "{}", done.matched);
    // The tail went once: a trusted guess would have sent it twice.
    let (up, _) = wire.settled().await;
    assert!(up < (66 << 20) + (1 << 20), "{up}");
}

/// A fan-out sends one file to hosts that each hold another older
/// version: each gets its own delta, and the file is cut and hashed once
/// for all (the copies share their reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_cuts_its_file_once() {
    use framewire::client::tree::{Endpoint, SharedReads};
    let new = noise(4 << 20, 16);
    let mut servers = Vec::new();
    for k in 0..3u8 {
        let root = RootServer::dir().await;
        let mut old = new.clone();
        old[(k as usize + 1) * 100_000..(k as usize + 1) * 100_000 + 5000].fill(k);
        old.truncate(new.len() - 1000 * (k as usize + 1));
        root.write("f.bin", &old).await;
        servers.push(root);
    }
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    std::fs::write(&local, &new).unwrap();
    let reads = SharedReads::new(64 << 20);
    let mut copies = Vec::new();
    for root in &servers {
        let endpoint = Endpoint::new(root.addr(), None).with_shared_reads(reads.clone());
        let local = local.clone();
        copies.push(tokio::spawn(async move {
            let mut client = endpoint.connect().await.unwrap();
            client.put(&local, "f.bin", &delta_options(), &mut no_progress()).await.unwrap()
        }));
    }
    for (copy, root) in copies.into_iter().zip(&servers) {
        let done = copy.await.unwrap();
        assert!(done.matched > 3 << 20, "{}", done.matched);
        assert!(root.read("f.bin").await.unwrap() == new);
    }
    assert_eq!(reads.files_cut(), 1);
}

/// A tree's small changed files (64 KiB to 1 MiB) go as deltas inside
/// the streamed request, both ways (PROTOCOL.md §4.6.6.1): only their
/// changed bytes cross the wire, counted by a proxy, and the tree comes
/// out as the source, byte for byte, modes and times included; a new
/// file and a file under 64 KiB still go whole in the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trees_small_changed_files_go_as_deltas_in_the_stream() {
    use std::os::unix::fs::PermissionsExt;
    let server = common::Serve::start(&["--insecure"]);
    let (proxy, wire) = counting_proxy(server.addr.parse().unwrap()).await;
    let served = server.root.path().join("t");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("t");
    let when = |secs: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let write = |path: &Path, data: &[u8], secs: u64, mode: u32| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when(secs)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // 24 files of 100–900 KiB the receiver holds older versions of, each
    // changed one of three ways; a new one; a small one.
    let mut names = Vec::new();
    let mut total = 0u64;
    for k in 0..24u64 {
        let len = (100 << 10) + (k as usize) * (35 << 10);
        let old = noise(len, 100 + k);
        let mut new = old.clone();
        match k % 3 {
            0 => new[len / 2..len / 2 + 100].fill(7),
            1 => new.splice(len / 3..len / 3, noise(300, 200 + k)).for_each(drop),
            _ => new.extend_from_slice(&noise(2000, 300 + k)),
        }
        let name = format!("d{}/f{k}.bin", k % 4);
        write(&served.join(&name), &old, 1_000, 0o644);
        write(&src.join(&name), &new, 2_000, 0o640);
        total += new.len() as u64;
        names.push(name);
    }
    write(&src.join("new.bin"), &noise(200_000, 9), 2_000, 0o644);
    write(&served.join("small.txt"), b"old", 1_000, 0o644);
    write(&src.join("small.txt"), b"new", 2_000, 0o644);
    names.extend(["new.bin".to_string(), "small.txt".to_string()]);

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || common::framewire(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let src_arg = src.to_str().unwrap().to_string();
    let out =
        run(vec!["put".into(), "-r".into(), "--delta".into(), proxy.clone(), src_arg, String::new()]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("26 file(s)") && said.contains("the receiver had them: delta"), "{said}");
    let (up, _) = wire.settled().await;
    // The new file whole, the changes, the listing; not the 12 MB.
    assert!(up < 200_000 + total / 20, "{up} bytes up for {total} bytes of changed files");
    for name in &names {
        let (s, r) = (src.join(name), served.join(name));
        assert!(std::fs::read(&s).unwrap() == std::fs::read(&r).unwrap(), "{name}");
        let meta = std::fs::metadata(&r).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, std::fs::metadata(&s).unwrap().permissions().mode() & 0o777);
        assert_eq!(meta.modified().unwrap(), when(2_000), "{name}");
    }
    let partials = walk_names(&served);
    assert!(partials.iter().all(|n| !n.ends_with(".fwpart")), "{partials:?}");

    // Back: a copy of the old tree brought up to date by get -r.
    let back = local.path().join("back");
    for (k, name) in names.iter().take(24).enumerate() {
        let len = (100 << 10) + k * (35 << 10);
        write(&back.join("t").join(name), &noise(len, 100 + k as u64), 1_000, 0o644);
    }
    let back_arg = back.to_str().unwrap().to_string();
    let out =
        run(vec!["get".into(), "-r".into(), "--delta".into(), proxy.clone(), "t".into(), back_arg]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the receiver had them: delta"), "{said}");
    let (_, down) = wire.settled().await;
    assert!(down < 200_000 + total / 20, "{down} bytes down for {total} bytes of changed files");
    for name in &names {
        let (s, r) = (src.join(name), back.join("t").join(name));
        assert!(std::fs::read(&s).unwrap() == std::fs::read(&r).unwrap(), "{name}");
        assert_eq!(std::fs::metadata(&r).unwrap().modified().unwrap(), when(2_000), "{name}");
    }
    let partials = walk_names(&back);
    assert!(partials.iter().all(|n| !n.ends_with(".fwpart")), "{partials:?}");

    // Without --delta, through the same proxy (a loopback address), the
    // files go whole.
    for (k, name) in names.iter().take(24).enumerate() {
        let len = (100 << 10) + k * (35 << 10);
        write(&served.join(name), &noise(len, 100 + k as u64), 1_000, 0o644);
    }
    let src_arg = src.to_str().unwrap().to_string();
    let out = run(vec!["put".into(), "-r".into(), proxy.clone(), src_arg, String::new()]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("delta"), "{out:?}");
    let (up, _) = wire.settled().await;
    assert!(up > total, "{up} bytes up, whole files expected");
}

/// Every file name below `dir`, recursively.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_names(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

async fn json_body<T: serde::de::DeserializeOwned>(r: &mut RawReader) -> T {
    serde_json::from_slice(&r.read_body(1 << 20).await.unwrap()).unwrap()
}

/// Reads the signature frames of a basis of `count` entries.
async fn skip_signature(r: &mut RawReader, count: u64) {
    let mut got = 0;
    while got < count {
        let Some((Message::SignatureFrame(_), _)) = r.read_head::<Message>().await.unwrap() else {
            panic!("signature")
        };
        got += r.read_body(1 << 20).await.unwrap().len() as u64 / 12;
    }
}

fn copy_op(offset: u64, len: u32) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// A `tree_put` with `delta` up to the point its one file is sent: the
/// server's `wants` for `path` (`size` bytes), its basis read past.
async fn tree_put_offered(root: &RootServer, path: &str, size: u64) -> (RawReader, RawWriter, Option<proto::Basis>) {
    let (mut r, mut w) = raw(root.addr).await;
    let put = proto::TreePut {
        path: String::new(),
        force: true,
        meta: false,
        backup: None,
        xattrs: false,
        acls: false,
        delta: true,
    };
    w.send(&Message::TreePut(put), &[]).await.unwrap();
    let Some((Message::TreeReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!("tree_ready") };
    assert!(ready.delta, "a directory root takes deltas in a tree");
    let entries = serde_json::json!([{"path": path, "size": size, "mtime": 1_700_000_000, "mode": 0o644}]);
    let body = serde_json::to_vec(&entries).unwrap();
    w.send(&Message::Manifest(proto::Manifest { len: body.len() as u64, count: 1 }), &body).await.unwrap();
    let Some((Message::Wants(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("wants") };
    let wants: proto::WantList = json_body(&mut r).await;
    assert_eq!(wants.send.len(), 1, "{wants:?}");
    let basis = wants.send[0].basis.clone();
    if let Some(b) = &basis {
        skip_signature(&mut r, b.count).await;
    }
    w.send(&Message::ManifestEnd(proto::ManifestEnd { count: 1 }), &[]).await.unwrap();
    let Some((Message::WantsEnd(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("wants_end") };
    (r, w, basis)
}

/// Deltas in a tree's stream that do not fit (PROTOCOL.md §4.6.6.1): an
/// older version changed between its signature and the ops builds
/// nothing (the entry fails `checksum_mismatch`, the file there is left
/// as it is, no partial file stays), ops past the basis or a delta for
/// a file no basis was offered for close the connection; a `tree_get`
/// basis the server did not take, too long, or whose signature does not
/// add up is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_deltas_that_do_not_fit_are_refused() {
    let root = RootServer::dir().await;
    let old = noise(300 << 10, 21);
    let size = old.len() as u64;
    let file_head = |delta: bool| proto::TreeFile {
        len: 0,
        i: 0,
        offset: 0,
        size,
        mtime: 1_700_000_000,
        mode: 0o644,
        mtime_ns: None,
        holes: None,
        delta,
    };
    // The older version changes under the ops: the same length (opened
    // again, built wrong), then another length (not opened).
    for changed in [noise(300 << 10, 22), noise(200 << 10, 23)] {
        root.write("a.bin", &old).await;
        let (mut r, mut w, basis) = tree_put_offered(&root, "a.bin", size).await;
        assert_eq!(basis.map(|b| b.len), Some(size));
        root.write("a.bin", &changed).await;
        w.send(&Message::TreeFile(file_head(true)), &[]).await.unwrap();
        let op = copy_op(0, size as u32);
        w.send(&Message::DeltaFrame(proto::DeltaFrame { len: op.len() as u64 }), &op).await.unwrap();
        let claimed = blake3::hash(&old).to_hex().to_string();
        w.send(&Message::Checksum(proto::Checksum { blake3: claimed }), &[]).await.unwrap();
        w.send(&Message::TreeEnd(proto::TreeEnd { files: 1 }), &[]).await.unwrap();
        let mut failed = Vec::new();
        loop {
            match r.read_head::<Message>().await.unwrap() {
                Some((Message::Committed(_), _)) => {
                    let list: proto::CommitList = json_body(&mut r).await;
                    assert!(list.ok.is_empty(), "{list:?}");
                    failed.extend(list.failed.iter().map(|f| f.code));
                }
                Some((Message::TreeDone(done), _)) => {
                    assert_eq!((failed, done.files), (vec![ErrorCode::ChecksumMismatch], 0));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(root.read("a.bin").await.unwrap() == changed, "left as it was");
        let names = root.names("").await;
        assert!(names.iter().all(|n| !n.contains("fwpart")), "{names:?}");
    }

    // Ops past the older version's end.
    root.write("a.bin", &old).await;
    let (mut r, mut w, basis) = tree_put_offered(&root, "a.bin", size).await;
    assert!(basis.is_some());
    w.send(&Message::TreeFile(file_head(true)), &[]).await.unwrap();
    let op = copy_op(size - 10, 100);
    w.send(&Message::DeltaFrame(proto::DeltaFrame { len: op.len() as u64 }), &op).await.unwrap();
    assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest));
    assert!(r.read_head::<Message>().await.map_or(true, |m| m.is_none()), "the connection stays open");
    assert!(root.read("a.bin").await.unwrap() == old);

    // A delta for a file no basis was offered for (nothing there).
    let (mut r, mut w, basis) = tree_put_offered(&root, "new.bin", size).await;
    assert!(basis.is_none());
    w.send(&Message::TreeFile(file_head(true)), &[]).await.unwrap();
    assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest));
    assert!(root.read("new.bin").await.is_none());

    // tree_get: bases the server must refuse.
    use framewire::delta::{Layout, Params};
    let chunks = Layout::Chunks(Params::DEFAULT);
    let basis = |len: u64, count: u64| proto::Basis {
        len,
        append: false,
        blake3: None,
        tail: None,
        layout: Some(chunks),
        count,
        streamed: false,
        pipelined: false,
    };
    let entry = |len: u64| {
        let mut e = vec![0u8; 12];
        e[..4].copy_from_slice(&(len as u32).to_be_bytes());
        e
    };
    let cases: Vec<(&str, bool, proto::Basis, Vec<u8>)> = vec![
        ("a basis without asking for deltas", false, basis(8192, 1), entry(8192)),
        ("a basis longer than a tree's", true, basis(64 << 20, 8192), entry(8192)),
        ("entries that do not add up", true, basis(8192, 1), entry(4096)),
        ("a ragged signature frame", true, basis(8192, 1), vec![0u8; 7]),
    ];
    for (what, ask, b, sig) in cases {
        let (mut r, mut w) = raw(root.addr).await;
        let get = proto::TreeGet { path: String::new(), sparse: false, delta: ask };
        w.send(&Message::TreeGet(get), &[]).await.unwrap();
        let Some((Message::TreeReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!("{what}") };
        assert_eq!(ready.delta, ask, "{what}");
        let want = proto::Want { i: 0, path: "a.bin".into(), offset: 0, prefix_blake3: None, basis: Some(b) };
        let list = proto::WantList { send: vec![want], ..proto::WantList::default() };
        let body = serde_json::to_vec(&list).unwrap();
        w.send(&Message::Wants(proto::Wants { len: body.len() as u64, count: 1 }), &body).await.unwrap();
        w.send(&Message::SignatureFrame(proto::SignatureFrame { len: sig.len() as u64, failed: false }), &sig)
            .await
            .unwrap();
        assert_eq!(error_code(&mut r).await, Some(ErrorCode::BadRequest), "{what}");
        assert!(r.read_head::<Message>().await.map_or(true, |m| m.is_none()), "{what}: the connection stays open");
    }
}

/// The signature of `data` cut as `layout` (what a server's must be).
fn signature_of(data: &[u8], layout: framewire::delta::Layout) -> framewire::delta::Signature {
    let mut indexer = framewire::delta::Indexer::new(layout).unwrap();
    indexer.feed(data).unwrap();
    indexer.finish().unwrap()
}

/// A put's signature, asked streamed, comes in several frames as the
/// server cuts its file, ended by an empty one; asked as an older client
/// asks, it comes counted. Both are the older version's signature, and
/// the server stays in step for the upload that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_signature_is_streamed_as_it_is_cut() {
    streamed_and_counted(&RootServer::dir().await).await;
}

/// The same into a bucket root (its older object spooled to disk, and
/// cut from there).
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_signature_is_streamed_as_it_is_cut_from_a_bucket() {
    let _env = common::seaweed::ENV.lock().await;
    let Some(weed) = common::seaweed::weed() else { return };
    let store = common::seaweed::Seaweed::start(&weed);
    streamed_and_counted(&RootServer::bucket(&store, "streamed").await).await;
}

async fn streamed_and_counted(root: &RootServer) {
    let old = noise(8 << 20, 21);
    let mut new = old.clone();
    new.splice(1 << 20..1 << 20, noise(1000, 22));
    let layout = framewire::delta::Layout::for_sizes(old.len() as u64, new.len() as u64);
    let want = signature_of(&old, layout);
    for stream in [true, false] {
        root.write("f.bin", &old).await;
        let (mut r, mut w) = raw(root.addr).await;
        let basis = raw_put(&mut r, &mut w, new.len(), proto::DeltaAsk { append: None, trust: false, stream }).await;
        assert_eq!((basis.streamed, basis.layout, basis.len), (stream, Some(layout), old.len() as u64));
        assert!(basis.pipelined, "the server reads the ops while its signature goes");
        let (entries, frames) = signature_frames(&mut r, &basis).await;
        assert!(entries == want.entry_frames(usize::MAX).flatten().collect::<Vec<u8>>(), "stream {stream}");
        if stream {
            assert_eq!(basis.count, 0);
            assert!(frames >= 3, "{frames} frames: sent only once made?");
        } else {
            assert_eq!(basis.count, want.entries.len() as u64);
        }
        put_whole(&mut r, &mut w, &new).await;
        assert!(root.read("f.bin").await.unwrap() == new);
    }
    // The ops sent before a byte of the streamed signature is read (a
    // client that pipelines, PROTOCOL.md §4.6.6): taken as they come, the
    // signature still sent whole, and the file built.
    root.write("f.bin", &old).await;
    let (mut r, mut w) = raw(root.addr).await;
    let ask = proto::DeltaAsk { append: None, trust: false, stream: true };
    let basis = raw_put(&mut r, &mut w, new.len(), ask).await;
    assert!(basis.streamed);
    w.send(&Message::PutDelta(proto::PutDelta { offset: 0 }), &[]).await.unwrap();
    let mut ops = copy_op(0, 1 << 20);
    framewire::delta::Op::Data(new[1 << 20..(1 << 20) + 1000].to_vec()).encode(&mut ops);
    ops.extend(copy_op(1 << 20, (old.len() - (1 << 20)) as u32));
    w.send(&Message::DeltaFrame(proto::DeltaFrame { len: ops.len() as u64 }), &ops).await.unwrap();
    let sum = proto::Checksum { blake3: blake3::hash(&new).to_hex().to_string() };
    w.send(&Message::Checksum(sum), &[]).await.unwrap();
    let (entries, _) = signature_frames(&mut r, &basis).await;
    assert!(entries == want.entry_frames(usize::MAX).flatten().collect::<Vec<u8>>(), "ops first");
    let Some((Message::PutDone(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put_done") };
    assert!(root.read("f.bin").await.unwrap() == new, "ops first");
}

/// Sends a put of `len` bytes of `f.bin` asking for a delta as `ask`:
/// the basis its `put_ready` offers.
async fn raw_put(r: &mut RawReader, w: &mut RawWriter, len: usize, ask: proto::DeltaAsk) -> proto::Basis {
    let put = proto::Put {
        path: "f.bin".into(),
        size: len as u64,
        force: true,
        mode: None,
        mtime: None,
        mtime_ns: None,
        backup: None,
        delta: Some(ask),
    };
    w.send(&Message::Put(put), &[]).await.unwrap();
    let Some((Message::PutReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put_ready") };
    ready.basis.expect("a basis")
}

/// Reads the signature `basis` announces, to its empty last frame
/// (streamed) or its count: its entries' bytes, and the frames they came
/// in. Fails on `failed`, or an empty frame in a counted one.
async fn signature_frames(r: &mut RawReader, basis: &proto::Basis) -> (Vec<u8>, usize) {
    let (mut entries, mut frames) = (Vec::new(), 0);
    while basis.streamed || (entries.len() as u64) < basis.count * 12 {
        let Some((Message::SignatureFrame(f), _)) = r.read_head::<Message>().await.unwrap() else {
            panic!("signature")
        };
        let body = r.read_body(1 << 20).await.unwrap();
        assert!(body.len() as u64 == f.len && !f.failed, "{f:?}");
        if body.is_empty() {
            assert!(basis.streamed, "an empty frame in a counted signature");
            break;
        }
        entries.extend_from_slice(&body);
        frames += 1;
    }
    (entries, frames)
}

/// Sends `data` whole after a `put_ready`, its checksum, and reads
/// `put_done`: the server is in step.
async fn put_whole(r: &mut RawReader, w: &mut RawWriter, data: &[u8]) {
    let head = proto::PutData { len: data.len() as u64, offset: 0, holes: None };
    w.send(&Message::PutData(head), data).await.unwrap();
    let sum = proto::Checksum { blake3: blake3::hash(data).to_hex().to_string() };
    w.send(&Message::Checksum(sum), &[]).await.unwrap();
    let Some((Message::PutDone(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put_done") };
}

/// A likely append that is not one (the same last 4 KiB, another first
/// byte): the client's `signature_wanted` gets the signature, streamed
/// where the put asked so and counted where not, and the upload that
/// follows completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_after_an_append_that_is_not_one_is_streamed_as_asked() {
    let root = RootServer::dir().await;
    let old = noise(4 << 20, 24);
    let mut new = old.clone();
    new[0] ^= 1;
    new.extend_from_slice(&noise(100_000, 25));
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), &new).unwrap();
    let sample = proto::Sample::of(local.as_file(), old.len() as u64).unwrap();
    let layout = framewire::delta::Layout::for_sizes(old.len() as u64, new.len() as u64);
    let want: Vec<u8> = signature_of(&old, layout).entry_frames(usize::MAX).flatten().collect();
    for stream in [true, false] {
        root.write("f.bin", &old).await;
        let (mut r, mut w) = raw(root.addr).await;
        let ask = proto::DeltaAsk { append: Some(sample.clone()), trust: false, stream };
        let basis = raw_put(&mut r, &mut w, new.len(), ask).await;
        assert!(basis.append && basis.blake3.as_deref() == Some(&*blake3::hash(&old).to_hex()), "{basis:?}");
        w.send(&Message::SignatureWanted(proto::SignatureWanted {}), &[]).await.unwrap();
        let Some((Message::PutReady(ready), _)) = r.read_head::<Message>().await.unwrap() else { panic!() };
        let basis = ready.basis.unwrap();
        assert!(!basis.append && basis.streamed == stream, "{basis:?}");
        assert!(signature_frames(&mut r, &basis).await.0 == want, "stream {stream}: not the older version's");
        put_whole(&mut r, &mut w, &new).await;
        assert!(root.read("f.bin").await.unwrap() == new);
    }
}

/// `new` written as a local file `f.bin` in a temporary directory (kept
/// while it is held), and the signature of `old` cut as a server holding
/// it cuts it for `new`.
fn local_and_signature(old: &[u8], new: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, framewire::delta::Signature) {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    std::fs::write(&local, new).unwrap();
    let sig = signature_of(old, framewire::delta::Layout::for_sizes(old.len() as u64, new.len() as u64));
    (tmp, local, sig)
}

/// A fake server's answer to a put: reads it (it must ask for a streamed
/// signature) and sends `put_ready` with a streamed basis of `len` bytes,
/// cut as the two sizes say, `pipelined` as given.
async fn streamed_ready(r: &mut RawReader, w: &mut RawWriter, (len, pipelined): (u64, bool)) {
    let Some((Message::Put(put), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put") };
    assert!(put.delta.as_ref().is_some_and(|d| d.stream), "the client asks for a streamed signature");
    let basis = proto::Basis {
        len,
        append: false,
        blake3: None,
        tail: None,
        layout: Some(framewire::delta::Layout::for_sizes(len, put.size)),
        count: 0,
        streamed: true,
        pipelined,
    };
    let ready = proto::PutReady { offset: 0, prefix_blake3: None, backup: false, sparse: false, basis: Some(basis) };
    w.send(&Message::PutReady(ready), &[]).await.unwrap();
}

/// The client sends its ops while the server's signature still comes
/// (PROTOCOL.md §4.6.6), where the basis says the server reads them so
/// (`pipelined`): a fake server sends half its entries, and sends the rest
/// only once a `put_delta` and a `delta` frame have come, which must
/// settle the inserted bytes as new and copy what came before them (a
/// client that waited for the signature's end would wait forever). To a
/// server that does not say so, nothing goes before the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_its_ops_before_the_signature_ends() {
    for pipelined in [true, false] {
        ops_while_the_signature_comes(pipelined).await;
    }
}

async fn ops_while_the_signature_comes(pipelined: bool) {
    let old = noise(24 << 20, 71);
    let mut new = old[..1 << 20].to_vec();
    new.extend_from_slice(&noise(1000, 72));
    new.extend_from_slice(&old[1 << 20..]);
    let (_tmp, local, sig) = local_and_signature(&old, &new);
    let (old_len, new_len) = (old.len() as u64, new.len() as u64);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        streamed_ready(&mut r, &mut w, (old_len, pipelined)).await;
        let frames: Vec<Vec<u8>> = sig.entry_frames(512).collect();
        let half = frames.len() / 2;
        for body in &frames[..half] {
            w.send(&Message::SignatureFrame(proto::SignatureFrame { len: body.len() as u64, failed: false }), body)
                .await
                .unwrap();
        }
        // Ops, before the rest of the signature, where pipelined; else
        // nothing.
        let mut ops = Vec::new();
        let mut covered = 0;
        if pipelined {
            let early = async {
                let Some((Message::PutDelta(_), _)) = r.read_head::<Message>().await.unwrap() else {
                    panic!("put_delta")
                };
                let Some((Message::DeltaFrame(_), _)) = r.read_head::<Message>().await.unwrap() else {
                    panic!("delta")
                };
                framewire::delta::Op::decode_all(&r.read_body(4 << 20).await.unwrap()).unwrap()
            };
            let first = tokio::time::timeout(std::time::Duration::from_secs(60), early)
                .await
                .expect("no ops came before the signature's end");
            covered = first.iter().map(framewire::delta::Op::len).sum();
            ops.extend(first);
        } else {
            let early = tokio::time::timeout(std::time::Duration::from_secs(1), r.read_head::<Message>()).await;
            assert!(early.is_err(), "not pipelined, and yet {early:?} came before the signature's end");
        }
        for body in frames[half..].iter().chain([&Vec::new()]) {
            w.send(&Message::SignatureFrame(proto::SignatureFrame { len: body.len() as u64, failed: false }), body)
                .await
                .unwrap();
        }
        if !pipelined {
            let Some((Message::PutDelta(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put_delta") };
        }
        loop {
            match r.read_head::<Message>().await.unwrap() {
                Some((Message::DeltaFrame(_), _)) => {
                    ops.extend(framewire::delta::Op::decode_all(&r.read_body(4 << 20).await.unwrap()).unwrap());
                }
                Some((Message::Checksum(sum), _)) => {
                    let built = framewire::delta::apply_in_memory(&old, new_len, &ops).unwrap();
                    assert_eq!(sum.blake3, blake3::hash(&built).to_hex().to_string());
                    w.send(&Message::PutDone(proto::PutDone { size: new_len }), &[]).await.unwrap();
                    return (covered, built);
                }
                other => panic!("{other:?}"),
            }
        }
    });
    let mut options = delta_options();
    options.other_len = Some(old_len);
    let mut client = Client::connect(&addr.to_string()).await.unwrap();
    let done = client.put(&local, "f.bin", &options, &mut no_progress()).await.unwrap();
    let (covered, built) = fake.await.unwrap();
    assert!(built == new, "the ops did not rebuild the file");
    assert!(
        covered > (1 << 20) + 1000 || !pipelined,
        "the first frame covered {covered} bytes: not past the insertion"
    );
    assert!(done.matched + 200_000 >= old_len, "{} copied", done.matched);
}

/// A server that refuses while the client's ops go (its disk filled
/// while it built), in the middle of its streamed signature or after its
/// end: the client stops at once, reports the server's reason, and does
/// not hang on the ops it still had to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_the_ops_go_is_reported() {
    for whole in [false, true] {
        refused_while_the_ops_go(whole).await;
    }
}

async fn refused_while_the_ops_go(whole: bool) {
    let old = noise(24 << 20, 73);
    // New data all through: many frames of ops for the client to send.
    let new: Vec<u8> = old.iter().enumerate().map(|(i, b)| if i % 4096 == 0 { b ^ 1 } else { *b }).chain([1]).collect();
    let (_tmp, local, sig) = local_and_signature(&old, &new);
    let old_len = old.len() as u64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        streamed_ready(&mut r, &mut w, (old_len, true)).await;
        let frames: Vec<Vec<u8>> = sig.entry_frames(512).collect();
        let sent = if whole { frames.len() + 1 } else { 3 };
        for body in frames.iter().chain([&Vec::new()]).take(sent) {
            let head = proto::SignatureFrame { len: body.len() as u64, failed: false };
            w.send(&Message::SignatureFrame(head), body).await.unwrap();
        }
        let Some((Message::PutDelta(_), _)) = r.read_head::<Message>().await.unwrap() else { panic!("put_delta") };
        let refusal = proto::ErrorFrame::new(ErrorCode::DiskFull, "the disk filled while the file was built");
        w.send(&Message::ErrorFrame(refusal), &[]).await.unwrap();
        drop(w);
        // What the client still sends is read past, until it leaves.
        while let Ok(Some(_)) = r.read_head::<Message>().await {}
    });
    let mut options = delta_options();
    options.other_len = Some(old_len);
    let mut client = Client::connect(&addr.to_string()).await.unwrap();
    let mut progress = no_progress();
    let put = client.put(&local, "f.bin", &options, &mut progress);
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), put)
        .await
        .expect("the client hung after the refusal")
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { code: ErrorCode::DiskFull, message } if message.contains("disk filled")),
        "signature whole: {whole}: {err:?}"
    );
    drop(client);
    fake.await.unwrap();
}

/// A fake server that answers a put of a 1 MiB file with a streamed
/// basis of `len` bytes and the frames `script` sends; returns what it
/// read after them (put_delta's ops, as data bytes, if it got any).
async fn streamed_fake(
    (len, pipelined): (u64, bool),
    script: impl FnOnce(RawWriter) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<RawWriter>> + Send>>
        + Send
        + 'static,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_peer(&listener).await;
        streamed_ready(&mut r, &mut w, (len, pipelined)).await;
        let mut w = script(w).await?;
        // The client's answer: put_delta, ops, checksum.
        let Ok(Some((Message::PutDelta(_), _))) = r.read_head::<Message>().await else { return None };
        let mut data = Vec::new();
        loop {
            // A client that left may have reset the connection.
            let Ok(next) = r.read_head::<Message>().await else { return None };
            match next {
                Some((Message::DeltaFrame(_), _)) => {
                    let Ok(body) = r.read_body(4 << 20).await else { return None };
                    for op in framewire::delta::Op::decode_all(&body).unwrap() {
                        let framewire::delta::Op::Data(bytes) = op else {
                            panic!("a copy of a file with no signature")
                        };
                        data.extend_from_slice(&bytes);
                    }
                }
                Some((Message::Checksum(sum), _)) => {
                    assert_eq!(sum.blake3, blake3::hash(&data).to_hex().to_string());
                    let done = proto::PutDone { size: data.len() as u64 };
                    w.send(&Message::PutDone(done), &[]).await.unwrap();
                    return Some(data);
                }
                // Left before its checksum: its ops may go before the
                // signature's end, and stop where that proves bad.
                None => return None,
                other => panic!("{other:?}"),
            }
        }
    });
    (addr, fake)
}

/// A hostile or broken server's streamed signature: entries past what
/// the layout allows, a short one before the end, entries that do not add
/// up at the end, a connection closed before it ends, `failed` on a frame
/// with entries: each refused with a clear error, for blocks and for
/// chunks (cut guided by it). One the server ends `failed` (it could not
/// cut its file to the end): every byte goes as data, and the put
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_streamed_signature_is_refused() {
    let entry = |len: u32| [len.to_be_bytes().to_vec(), vec![7; 8]].concat();
    let frame = |body: Vec<u8>| (proto::SignatureFrame { len: body.len() as u64, failed: false }, body);
    let end = |failed| (proto::SignatureFrame { len: 0, failed }, Vec::new());
    let mib: u64 = 1 << 20;
    type Case = (&'static str, Vec<(proto::SignatureFrame, Vec<u8>)>, bool);
    let cases: Vec<Case> = vec![
        ("more entries than the file has blocks", vec![frame(entry(1024).repeat(1025)), end(false)], false),
        (
            "a short block before the end",
            vec![frame([entry(1024), entry(100), entry(1024)].concat()), end(false)],
            false,
        ),
        ("entries short of the file", vec![frame(entry(1024).repeat(10)), end(false)], false),
        ("a connection closed before the end", vec![frame(entry(1024).repeat(10))], true),
        (
            "`failed` on a frame with entries",
            vec![(proto::SignatureFrame { len: 12, failed: true }, entry(1024))],
            false,
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("f.bin");
    let data = noise(mib as usize, 23);
    std::fs::write(&local, &data).unwrap();
    // The server's file as long as ours (blocks, cut beside the
    // signature), and shorter (chunks of 256 B to 4 KiB, ours cut guided
    // by it, and sent as the entries come where the server reads so):
    // 1 KiB entries fit both.
    for (len, pipelined) in [(mib, false), (mib - 4096, false), (mib - 4096, true)] {
        let mut options = delta_options();
        options.other_len = Some(len);
        for (what, frames, closes) in cases.clone() {
            let script = move |mut w: RawWriter| -> std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> {
                Box::pin(async move {
                    for (head, body) in frames {
                        w.send(&Message::SignatureFrame(head), &body).await.unwrap();
                    }
                    (!closes).then_some(w)
                })
            };
            let (addr, fake) = streamed_fake((len, pipelined), script).await;
            let mut client = Client::connect(&addr.to_string()).await.unwrap();
            let err = client.put(&local, "f.bin", &options, &mut no_progress()).await.unwrap_err();
            if closes {
                assert!(matches!(err, ClientError::Closed | ClientError::Wire(_)), "{what}, {len}: {err:?}");
            } else {
                assert!(matches!(err, ClientError::Unexpected { .. }), "{what}, {len}: {err:?}");
                assert!(err.to_string().contains("signature"), "{what}, {len}: {err}");
            }
            assert_eq!(fake.await.unwrap(), None, "{what}, {len}: the client went on");
        }
        // Ended `failed`: some entries came, then none is to be used.
        let script = move |mut w: RawWriter| -> std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> {
            Box::pin(async move {
                for (head, body) in [frame(entry(1024).repeat(10)), end(true)] {
                    w.send(&Message::SignatureFrame(head), &body).await.unwrap();
                }
                Some(w)
            })
        };
        let (addr, fake) = streamed_fake((len, pipelined), script).await;
        let mut client = Client::connect(&addr.to_string()).await.unwrap();
        let done = client.put(&local, "f.bin", &options, &mut no_progress()).await.unwrap();
        assert_eq!(done.matched, 0);
        assert!(fake.await.unwrap().unwrap() == data, "{len}: every byte, as data");
    }
}
