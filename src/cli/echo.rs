//! `framewire echo`: send text or stdin, print the echo.

use std::process::ExitCode;

use super::config::Settings;
use anyhow::Context;
use clap::Args;
use framewire::wire::MAX_BUFFERED_BODY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,

    /// Text to send; `-` reads stdin (a file of any size streams; a pipe is
    /// read up to 16 MiB). Without it, an empty body.
    text: Option<String>,

    /// Ask the server to upper-case ASCII letters, as the tutorial's server did.
    #[arg(long)]
    upper: bool,
}

pub async fn run(args: EchoArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut client = settings.resolve(&args.addr).connect().await?;
    let mut out = tokio::io::stdout();
    match args.text.as_deref() {
        Some("-") => {
            // A regular file on stdin has a known length and streams in
            // bounded memory; a pipe's length is unknown until EOF, so it is
            // gathered first, up to the in-memory body limit.
            let mut stdin = tokio::fs::File::from_std(stdin_file()?);
            let meta = stdin.metadata().await?;
            if meta.is_file() {
                let len = meta.len();
                client.echo_stream(&mut stdin, len, &mut out, args.upper).await?;
            } else {
                let mut body = Vec::new();
                (&mut stdin).take(MAX_BUFFERED_BODY + 1).read_to_end(&mut body).await?;
                anyhow::ensure!(
                    body.len() as u64 <= MAX_BUFFERED_BODY,
                    "stdin is a pipe longer than {MAX_BUFFERED_BODY} bytes; redirect a file instead (`< FILE`)"
                );
                let len = body.len() as u64;
                client.echo_stream(&mut &body[..], len, &mut out, args.upper).await?;
            }
        }
        text => {
            let mut body = text.unwrap_or_default().as_bytes().to_vec();
            if !body.is_empty() {
                body.push(b'\n');
            }
            let len = body.len() as u64;
            client.echo_stream(&mut &body[..], len, &mut out, args.upper).await?;
        }
    }
    out.flush().await.context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Stdin as a `File`, so its metadata says whether it is a regular file.
fn stdin_file() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().context("stdin")?;
    Ok(std::fs::File::from(fd))
}
