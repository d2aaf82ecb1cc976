//! Shared helpers: a real server on 127.0.0.1:0 that a test can stop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use framewire::server::{self, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` has adjusted its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::new(root.path());
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestServer { addr, root, stop: Some(stop), task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Asks for shutdown and returns the task, to await when the test wants.
    pub fn shutdown(&mut self) -> &mut JoinHandle<std::io::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        &mut self.task
    }

    /// Shuts down and waits, failing the test if that takes over `limit`.
    pub async fn stop_within(mut self, limit: Duration) {
        tokio::time::timeout(limit, self.shutdown()).await.expect("server stops in time").unwrap().unwrap();
    }
}

/// Deterministic test data: not all zeros, not periodic on a power of two.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(seed).wrapping_mul(31)).collect()
}

/// Whether process `pid` is gone (or a zombie that will never run again).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub async fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_gone(pid)
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
