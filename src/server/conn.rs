//! One connection: the preface exchange, then requests one at a time until
//! the peer leaves, a limit is hit, or the server shuts down.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Config;
use crate::proto::{ErrorCode, Message};
use crate::services::files::Sandbox;
use crate::wire::{Error, FrameReader, FrameWriter, Preface, Timeouts};

pub(super) type Reader = FrameReader<OwnedReadHalf>;
pub(super) type Writer = FrameWriter<OwnedWriteHalf>;

/// What every connection of a server shares.
#[derive(Debug)]
pub(super) struct Context {
    pub config: Config,
    pub sandbox: Sandbox,
}

const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n\
this is a framewire server, not an HTTP server\n";

/// Serves one connection; never panics, logs how it ended.
pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) {
    debug!(%peer, "connection opened");
    match serve_inner(socket, ctx, shutdown, hard).await {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(e @ (Error::Idle(_) | Error::Stalled(_))) => info!(%peer, "connection dropped: {e}"),
        Err(e) => warn!(%peer, "connection failed: {e}"),
    }
}

async fn serve_inner(
    socket: TcpStream,
    ctx: &Context,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
) -> Result<(), Error> {
    let config = &ctx.config;
    // Replies are single frames written in one go; NODELAY keeps the last
    // segment of each from waiting on the peer's delayed ACK.
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let handshake = Timeouts { idle: None, io: Some(config.handshake_timeout) };
    let mut reader = FrameReader::with_timeouts(read, handshake);
    let mut writer = FrameWriter::with_timeouts(write, config.timeouts);

    match reader.read_preface().await {
        Ok(_) => {
            writer.feed_preface(Preface::default());
            writer.flush().await?;
        }
        Err(e) => return refuse_preface(&mut writer, e).await,
    }
    reader.set_timeouts(config.timeouts);

    loop {
        let head = tokio::select! {
            // Between requests, a shutdown ends the connection at once; a
            // request already started runs to its end (up to the drain).
            biased;
            _ = shutdown.cancelled() => {
                let bye = Message::error(ErrorCode::ShuttingDown, "server is shutting down");
                let _ = writer.send(&bye, &[]).await;
                return Ok(());
            }
            head = reader.read_head::<Message>() => head,
        };
        match head {
            Ok(Some((request, _))) => handle(request, ctx, &mut reader, &mut writer, hard).await?,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                let code = match e {
                    Error::UnknownType { .. } => ErrorCode::UnknownType,
                    _ => ErrorCode::BadRequest,
                };
                debug!("rejected request: {e}");
                writer.send(&Message::error(code, e.to_string()), &[]).await?;
            }
            Err(e) => {
                let code = match e {
                    Error::Idle(_) | Error::Stalled(_) => ErrorCode::Timeout,
                    _ => ErrorCode::BadFrame,
                };
                // Best effort: the peer may be gone or not reading.
                let _ = writer.send(&Message::error(code, e.to_string()), &[]).await;
                return Err(e);
            }
        }
    }
}

/// Answers a peer that is not speaking framewire (or not our version) in
/// the way it is most likely to understand, then closes.
async fn refuse_preface(writer: &mut Writer, e: Error) -> Result<(), Error> {
    match &e {
        Error::BadPreface { got }
            if got.starts_with(b"GET ") || got.starts_with(b"POST") || got.starts_with(b"HEAD") =>
        {
            let _ = writer.get_mut().write_all(HTTP_REFUSAL).await;
        }
        Error::UnexpectedEof { .. } | Error::Io(_) | Error::Stalled(_) => {}
        _ => {
            let code = match e {
                Error::UnsupportedVersion { .. } | Error::UnsupportedFlags { .. } => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::BadPreface,
            };
            writer.feed_preface(Preface::default());
            let _ = writer.send(&Message::error(code, e.to_string()), &[]).await;
        }
    }
    Err(e)
}

/// Runs one request to its end, reply included.
async fn handle(
    request: Message,
    ctx: &Context,
    reader: &mut Reader,
    writer: &mut Writer,
    hard: &CancellationToken,
) -> Result<(), Error> {
    let sandbox = &ctx.sandbox;
    match request {
        Message::Echo { len, upper } => echo(len, upper, reader, writer).await,
        Message::Exec { command, timeout_ms } => {
            super::exec::exec(&ctx.config, command, timeout_ms, reader, writer, hard).await
        }
        Message::List { path, recursive } => super::files::list(sandbox, path, recursive, writer).await,
        Message::Stat { path } => super::files::stat(sandbox, path, writer).await,
        Message::Get { path, offset, prefix_blake3 } => {
            super::files::get(sandbox, path, offset, prefix_blake3, writer).await
        }
        Message::Put { path, size, force, mode } => {
            super::files::put(sandbox, path, size, force, mode, reader, writer).await
        }
        // Leftovers of an exec that has just ended (the client may have
        // been sending stdin, or pressed Ctrl-C, as the exit went out):
        // harmless, and their bodies are skipped.
        Message::Stdin { .. } | Message::Cancel => Ok(()),
        other => {
            let msg = format!("`{}` is not a request", other.kind());
            writer.send(&Message::error(ErrorCode::BadRequest, msg), &[]).await
        }
    }
}

/// Streams the body back as it arrives: memory stays at one chunk whatever
/// the length, and the reply starts before the request has fully arrived.
async fn echo(len: u64, upper: bool, reader: &mut Reader, writer: &mut Writer) -> Result<(), Error> {
    writer.feed_head(&Message::EchoReply { len })?;
    while let Some(chunk) = reader.read_body_chunk().await? {
        if upper {
            writer.write_body(&chunk.to_ascii_uppercase()).await?;
        } else {
            writer.write_body(&chunk).await?;
        }
    }
    writer.flush().await
}
