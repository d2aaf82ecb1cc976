//! Small-message throughput over loopback, all peers in one run:
//! framewire's bare codec and tokio-util's `LengthDelimitedCodec` (same
//! bytes on the wire), then full framewire frames with a JSON header.
//!
//! `cargo bench --bench framing` (env: FRAMEWIRE_BENCH_ROUNDS, default 7;
//! FRAMEWIRE_BENCH_MESSAGES, default 2,000,000). Each round runs every
//! peer once, in rotating order; the report gives median and min-max of
//! the rounds and the ratios of medians. Figures go to docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use bytes::Bytes;
use framewire::proto::{self, AnyMessage as Message};
use framewire::wire::{BareCodec, FrameReader, FrameWriter};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

const PAYLOAD: usize = 64;
/// Write size for the batched peers: loopback runs at several times the
/// speed with 64 KiB writes than with FramedWrite's default 8 KiB.
const BATCH: usize = 64 * 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tx = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (rx, _) = listener.accept().await.unwrap();
    tx.set_nodelay(true).unwrap();
    rx.set_nodelay(true).unwrap();
    (tx, rx)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    /// tokio-util's LengthDelimitedCodec in FramedWrite/FramedRead, defaults.
    Ldc,
    /// framewire's BareCodec in the same FramedWrite/FramedRead, defaults.
    Bare,
    /// BareCodec with 64 KiB write batches.
    BareBatched,
    /// LengthDelimitedCodec with the same 64 KiB write batches.
    LdcBatched,
    /// Full frames: JSON header `{"type":"echo","len":64}` + 64-byte body,
    /// through FrameWriter / FrameReader.
    Json,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Ldc => "LengthDelimitedCodec (FramedWrite defaults)",
            Peer::Bare => "framewire BareCodec (FramedWrite defaults)",
            Peer::LdcBatched => "LengthDelimitedCodec, 64 KiB batches",
            Peer::BareBatched => "framewire BareCodec, 64 KiB batches",
            Peer::Json => "framewire frames, JSON header + 64 B body",
        }
    }
}

/// Sends `n` messages one way and returns messages per second, timed from
/// the first send to the last message decoded.
async fn run(peer: Peer, n: usize) -> f64 {
    let (tx, rx) = pair().await;
    let payload = Bytes::from(vec![0xa5u8; PAYLOAD]);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        match peer {
            Peer::Ldc | Peer::LdcBatched => {
                let mut w = FramedWrite::new(tx, LengthDelimitedCodec::new());
                if peer == Peer::LdcBatched {
                    w.set_backpressure_boundary(BATCH);
                }
                for _ in 0..n {
                    SinkExt::<Bytes>::feed(&mut w, payload.clone()).await.unwrap();
                }
                SinkExt::<Bytes>::flush(&mut w).await.unwrap();
            }
            Peer::Bare | Peer::BareBatched => {
                let mut w = FramedWrite::new(tx, BareCodec::new());
                if peer == Peer::BareBatched {
                    w.set_backpressure_boundary(BATCH);
                }
                for _ in 0..n {
                    SinkExt::<Bytes>::feed(&mut w, payload.clone()).await.unwrap();
                }
                SinkExt::<Bytes>::flush(&mut w).await.unwrap();
            }
            Peer::Json => {
                let mut w = FrameWriter::new(tx);
                let header = Message::Echo(proto::Echo { len: PAYLOAD as u64, upper: false });
                for _ in 0..n {
                    w.feed(&header, &payload).await.unwrap();
                }
                w.flush().await.unwrap();
            }
        }
    });
    let mut got = 0usize;
    match peer {
        Peer::Ldc | Peer::LdcBatched => {
            let mut r = FramedRead::new(rx, LengthDelimitedCodec::new());
            while let Some(m) = r.next().await {
                assert_eq!(m.unwrap().len(), PAYLOAD);
                got += 1;
            }
        }
        Peer::Bare | Peer::BareBatched => {
            let mut r = FramedRead::new(rx, BareCodec::new());
            while let Some(m) = r.next().await {
                assert_eq!(m.unwrap().len(), PAYLOAD);
                got += 1;
            }
        }
        Peer::Json => {
            let mut r = FrameReader::new(rx);
            while let Some((_, len)) = r.read_head::<Message>().await.unwrap() {
                assert_eq!(len, PAYLOAD as u64);
                assert_eq!(r.read_body(PAYLOAD as u64).await.unwrap().len(), PAYLOAD);
                got += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    sender.await.unwrap();
    assert_eq!(got, n);
    n as f64 / secs
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    // `cargo test --benches` builds and runs this with `--bench` absent:
    // keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { env_or("FRAMEWIRE_BENCH_ROUNDS", 7) };
    let n = if quick { 10_000 } else { env_or("FRAMEWIRE_BENCH_MESSAGES", 2_000_000) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let peers = [Peer::Ldc, Peer::Bare, Peer::LdcBatched, Peer::BareBatched, Peer::Json];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    rt.block_on(async {
        // Warm-up: page in code and let the socket buffers grow.
        for &p in &peers {
            run(p, n.min(100_000)).await;
        }
        for round in 0..rounds {
            for k in 0..peers.len() {
                let i = (k + round) % peers.len();
                results[i].push(run(peers[i], n).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    println!("\n{n} messages of {PAYLOAD} B one way over 127.0.0.1, {rounds} rounds\n");
    println!("| peer | median M msg/s | min–max |");
    println!("|---|---|---|");
    let mut medians = Vec::new();
    for (p, r) in peers.iter().zip(results) {
        let (med, lo, hi) = stats(r);
        medians.push(med);
        println!("| {} | {:.2} | {:.2}–{:.2} |", p.name(), med / 1e6, lo / 1e6, hi / 1e6);
    }
    println!();
    println!("ratio BareCodec / LDC, same FramedWrite defaults: {:.2}x", medians[1] / medians[0]);
    println!("ratio BareCodec / LDC, both 64 KiB batches:       {:.2}x", medians[3] / medians[2]);
    println!("ratio BareCodec batched / LDC defaults:           {:.2}x", medians[3] / medians[0]);
    println!("JSON-header frames: {:.2} M frames/s", medians[4] / 1e6);
}
