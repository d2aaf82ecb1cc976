//! Keys, mutual authentication and encryption against a real server:
//! right and wrong keys, a recording relay, a TLS-terminating man in the
//! middle, a replayed handshake, throttling, and the handshake deadline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pattern, TestServer};
use framewire::auth::Key;
use framewire::client::{ExecOptions, TransferOptions};
use framewire::transport;
use framewire::wire::{read_preface, Preface};
use framewire::{Client, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MARKER: &str = "SECRET-MARKER-7f3a9c";

async fn keyed(key: &Key) -> TestServer {
    let key = key.clone();
    TestServer::start_with(move |c| {
        c.key = Some(key);
        c.allow_exec = true;
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await
}

#[tokio::test]
async fn right_key_works_for_exec_get_put() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let mut client = Client::connect_with(&server.addr(), Some(&key)).await.unwrap();
    let out = client.exec_output("echo hi; exit 4", &ExecOptions::default()).await.unwrap();
    assert_eq!((out.stdout.as_slice(), out.status.code()), (&b"hi\n"[..], 4));
    let local = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 6);
    std::fs::write(local.path().join("f"), &data).unwrap();
    client.put(&local.path().join("f"), "f", &TransferOptions::default(), &mut |_| {}).await.unwrap();
    client.get("f", &local.path().join("g"), &TransferOptions::default(), &mut |_| {}).await.unwrap();
    assert!(std::fs::read(local.path().join("g")).unwrap() == data);
}

#[tokio::test]
async fn no_key_and_wrong_key_get_nothing() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let err = Client::connect(&server.addr()).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRequired), "{err:?}");
    assert!(err.to_string().contains("requires a key"), "{err}");

    let err = Client::connect_with(&server.addr(), Some(&Key::generate())).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthFailed), "{err:?}");
    assert_eq!(err.to_string(), "authentication failed");

    // A keyed client never talks plaintext to a server without a key.
    let plain = TestServer::start().await;
    let err = Client::connect_with(&plain.addr(), Some(&key)).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthUnavailable), "{err:?}");
}

/// Copies `from` to `to`, appending every byte to `rec`.
async fn pump<R, W>(mut from: R, mut to: W, rec: Arc<Mutex<Vec<u8>>>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        rec.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown().await;
}

/// A TCP relay to `target` that records what each client sent (`up`) and
/// what came back (`down`).
struct Relay {
    addr: String,
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, down) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone()));
                tokio::spawn(pump(sr, cw, d.clone()));
            }
        });
        Relay { addr, up, down }
    }

    fn seen(&self) -> Vec<u8> {
        let mut all = self.up.lock().unwrap().clone();
        all.extend_from_slice(&self.down.lock().unwrap());
        all
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A session through the relay: a file up and back, a command's output.
async fn session(addr: &str, key: Option<&Key>, dir: &std::path::Path) {
    let mut client = Client::connect_with(addr, key).await.unwrap();
    let file = dir.join("secret.txt");
    std::fs::write(&file, format!("top {MARKER} secret\n").repeat(100)).unwrap();
    client.put(&file, "secret.txt", &TransferOptions::force(true), &mut |_| {}).await.unwrap();
    client.get("secret.txt", &dir.join("back.txt"), &TransferOptions::force(true), &mut |_| {}).await.unwrap();
    let out =
        client.exec_output(&format!("echo {}-{}", &MARKER[..6], &MARKER[7..]), &ExecOptions::default()).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
}

/// An eavesdropper sees no file content and no command output with a key;
/// the same relay does see them on a plaintext server (so it would notice).
#[tokio::test]
async fn recording_relay_sees_no_marker() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let relay = Relay::start(server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    session(&relay.addr, Some(&key), dir.path()).await;
    let seen = relay.seen();
    assert!(seen.len() > 2000, "the relay carried the session ({} bytes)", seen.len());
    assert!(!contains(&seen, MARKER), "the marker crossed the wire in the clear");
    assert!(!contains(&seen, "secret.txt"), "file names are encrypted too");

    let plain = TestServer::start_with(|c| {
        c.allow_exec = true;
        c.insecure = true;
    })
    .await;
    let relay = Relay::start(plain.addr).await;
    session(&relay.addr, None, dir.path()).await;
    assert!(contains(&relay.seen(), MARKER), "control: without a key the relay sees the marker");
}

/// A man in the middle that terminates TLS toward both sides, with its own
/// certificate, and passes the frames through: the challenge-response is
/// bound to each TLS session, so the proofs do not match.
#[tokio::test]
async fn tls_terminating_man_in_the_middle_fails() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = listener.local_addr().unwrap().to_string();
    let target = server.addr;
    let saw_plaintext = Arc::new(Mutex::new(Vec::new()));
    let rec = saw_plaintext.clone();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        read_preface(&mut client).await.unwrap();
        client.write_all(&Preface::new(true).encode()).await.unwrap();
        let (cr, cw, _) = transport::accept_tls(client, transport::server_config().unwrap()).await.unwrap();
        let mut upstream = TcpStream::connect(target).await.unwrap();
        upstream.write_all(&Preface::new(true).encode()).await.unwrap();
        read_preface(&mut upstream).await.unwrap();
        let (sr, sw, _) = transport::connect_tls(upstream, transport::client_config()).await.unwrap();
        tokio::spawn(pump(cr, sw, rec.clone()));
        tokio::spawn(pump(sr, cw, rec));
    });
    let err = Client::connect_with(&mitm_addr, Some(&key)).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthFailed | ClientError::ServerAuthFailed), "{err:?}");
    // The man in the middle did read the handshake frames, so it was really
    // in the path; it never got further.
    let seen = saw_plaintext.lock().unwrap().clone();
    assert!(contains(&seen, "auth_challenge") && contains(&seen, "auth_response"), "the MITM relayed the handshake");
    assert!(!contains(&seen, "auth_ok"));
}

/// A recorded successful session, replayed byte for byte to the server,
/// runs nothing: TLS and the fresh nonces make every handshake unique.
#[tokio::test]
async fn replayed_handshake_fails() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let relay = Relay::start(server.addr).await;
    let mut client = Client::connect_with(&relay.addr, Some(&key)).await.unwrap();
    let out = client.exec_output("touch replayed-marker", &ExecOptions::default()).await.unwrap();
    assert!(out.status.success());
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let marker = server.root.path().join("replayed-marker");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    let recorded = relay.up.lock().unwrap().clone();
    let mut replay = TcpStream::connect(server.addr).await.unwrap();
    let _ = replay.write_all(&recorded).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), replay.read_to_end(&mut reply)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the replayed session ran its command again");
}

/// A group-readable key file is refused, with the fix in the message.
#[test]
fn group_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    Key::generate().write_new(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Key::from_file(&path).unwrap_err();
    assert!(err.to_string().contains(&format!("chmod 600 {}", path.display())), "{err}");
}

/// 200 connections with wrong keys at once: throttled, and a client with
/// the right key is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_flood_does_not_stop_a_good_client() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let addr = server.addr();
        attackers.push(tokio::spawn(async move { Client::connect_with(&addr, Some(&Key::generate())).await.err() }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut good = Client::connect_with(&server.addr(), Some(&key)).await.unwrap();
    let out = good.exec_output("echo served", &ExecOptions::default()).await.unwrap();
    assert_eq!(out.stdout, b"served\n");
    assert!(started.elapsed() < Duration::from_secs(5), "good client waited {:?}", started.elapsed());
    // Every wrong key was refused: told so after the penalty, or, when
    // newer connections from the same address took its handshake slot
    // while it served the penalty, closed.
    let (mut told, mut refused) = (0, 0);
    for a in attackers {
        match a.await.unwrap() {
            Some(ClientError::AuthFailed) => told += 1,
            Some(_) => refused += 1,
            None => panic!("a wrong key got in"),
        }
    }
    assert_eq!(told + refused, 200);
    assert!(told >= 1, "{told} told, {refused} closed");
}

/// Failures from one address are answered more and more slowly.
#[tokio::test]
async fn repeated_failures_are_slowed_down() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let mut times = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let err = Client::connect_with(&server.addr(), Some(&Key::generate())).await.unwrap_err();
        assert!(matches!(err, ClientError::AuthFailed));
        times.push(started.elapsed());
    }
    // 100, 200, 400, 800 ms of penalty.
    assert!(times[3] >= Duration::from_millis(800), "{times:?}");
    assert!(times[3] > times[0] * 3, "{times:?}");
}

/// A peer that starts the handshake and stalls is dropped at the deadline.
#[tokio::test]
async fn stalled_handshake_is_dropped() {
    let key = Key::generate();
    let server = keyed(&key).await;
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(&Preface::new(true).encode()).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(buf, Preface::new(true).encode(), "nothing but the preface before authentication");
}
