//! The echo request.

use super::super::context::Context;
use crate::proto::{Echo, EchoReply};
use crate::session::{ServerSide, Session};
use crate::wire::Error;

/// Streams the body back as it arrives: memory stays at one chunk whatever
/// the length. Each chunk is the part of the body one read of the socket
/// brought, so the reply starts before the request has fully arrived for
/// bodies larger than the socket's receive buffer (smaller ones come in
/// one read).
pub(in crate::server) async fn echo(s: &mut Session<ServerSide>, _ctx: &Context, request: Echo) -> Result<(), Error> {
    let Echo { len, upper } = request;
    s.feed_head(&EchoReply { len })?;
    while let Some(chunk) = s.reader().read_body_chunk().await? {
        if upper {
            s.writer().write_body(&chunk.to_ascii_uppercase()).await?;
        } else {
            s.writer().write_body(&chunk).await?;
        }
    }
    s.writer().flush().await
}
