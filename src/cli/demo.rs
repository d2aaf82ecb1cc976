//! `framewire demo`: everything that exists so far, end to end on loopback
//! with no setup: the sticky-packet demonstrator, then a real server on an
//! ephemeral port and echo round trips through it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use framewire::server::{self, Config};
use framewire::Client;

pub fn all() -> anyhow::Result<ExitCode> {
    let sticky = super::sticky::run()?;
    println!();
    let echo = super::block_on(echo())?;
    Ok(if sticky == ExitCode::SUCCESS { echo } else { sticky })
}

/// Sizes echoed by the demo: empty, one byte, the tutorial's whole 1 KiB
/// buffer plus one, 1 MiB, and 64 MiB (streamed).
const SIZES: [usize; 5] = [0, 1, 1025, 1 << 20, 64 << 20];

pub async fn echo() -> anyhow::Result<ExitCode> {
    println!("framewire demo echo: a real server on loopback, frames of any size\n");
    let root = std::env::temp_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    println!("    server listening on {addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, Config::new(root), stopped));

    let mut client = Client::connect(&addr).await.context("connecting to the demo server")?;
    let mut all_ok = true;
    for size in SIZES {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut back = Vec::with_capacity(size);
        let started = Instant::now();
        client.echo_stream(&mut &body[..], size as u64, &mut back, false).await?;
        let secs = started.elapsed().as_secs_f64();
        let ok = back == body;
        all_ok &= ok;
        let rate =
            if size >= 1 << 20 { format!(", {:.0} MB/s each way", size as f64 / secs / 1e6) } else { String::new() };
        println!(
            "    echo {:>9} bytes: {} in {:.1} ms{rate}",
            size,
            if ok { "every byte back" } else { "MISMATCH" },
            secs * 1e3
        );
    }
    let upper = client.echo_upper(b"hello, tutorial").await?;
    println!("    echo --upper \"hello, tutorial\": {:?}", String::from_utf8_lossy(&upper));
    all_ok &= upper == "HELLO, TUTORIAL";

    drop(client);
    let _ = stop.send(());
    server.await??;
    println!("    server shut down cleanly\n");
    if all_ok {
        println!("Echo: every frame came back whole, from 0 bytes to 64 MiB.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Echo: some frames did not come back intact.");
        Ok(ExitCode::FAILURE)
    }
}
