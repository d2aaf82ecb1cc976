//! `exec true` on an open connection against spawning `sh -c true`
//! locally, in the same run: p50 and p99 of each and their ratio.
//!
//! `cargo bench --bench exec_latency` (env FRAMEWIRE_BENCH_EXECS, default
//! 300). Figures go to docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use framewire::client::ExecOptions;
use framewire::server::{self, Config};
use framewire::Client;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = if quick {
        10
    } else {
        std::env::var("FRAMEWIRE_BENCH_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (remote, local) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = Config::new(root.path());
        config.allow_exec = true;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::Server::open(config).await.unwrap().serve(listener, stopped));
        let mut client = Client::connect(&addr).await.unwrap();
        let (mut remote, mut local) = (Vec::new(), Vec::new());
        for i in 0..n * 2 {
            // Alternate, so both see the same machine state.
            if i % 2 == 0 {
                let t = Instant::now();
                let out = client.exec_output("true", &ExecOptions::default()).await.unwrap();
                remote.push(t.elapsed());
                assert!(out.status.success());
            } else {
                let t = Instant::now();
                let status = tokio::process::Command::new("sh").args(["-c", "true"]).status().await.unwrap();
                local.push(t.elapsed());
                assert!(status.success());
            }
        }
        drop(client);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        (remote, local)
    });
    let (mut remote, mut local) = (remote, local);
    let (r50, r99) = (percentile(&mut remote, 0.5), percentile(&mut remote, 0.99));
    let (l50, l99) = (percentile(&mut local, 0.5), percentile(&mut local, 0.99));
    println!("\n{n} runs each, alternating, one open connection\n");
    println!("| what | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| framewire `exec true` (open connection) | {:.0} µs | {:.0} µs |",
        r50.as_secs_f64() * 1e6,
        r99.as_secs_f64() * 1e6
    );
    println!(
        "| local `sh -c true` (spawn + wait) | {:.0} µs | {:.0} µs |",
        l50.as_secs_f64() * 1e6,
        l99.as_secs_f64() * 1e6
    );
    println!(
        "\nratio framewire / local: p50 {:.2}x, p99 {:.2}x",
        r50.as_secs_f64() / l50.as_secs_f64(),
        r99.as_secs_f64() / l99.as_secs_f64()
    );
}
