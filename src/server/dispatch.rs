//! Request dispatch: the one place that knows every handler.

use super::context::Context;
use super::handlers::{echo, exec, files, tree};
use crate::proto::Request;
use crate::session::{cut_off_by, ServerSide, Session};
use crate::wire::Error;

/// What a connection keeps between requests for its next exec.
pub(super) use super::handlers::exec::ExecSetup;

/// Runs one request to its end, reply included. Every request but exec is
/// dropped at the drain deadline (the session's cut-off); exec watches it
/// itself, to kill the process group and tell the client why.
pub(super) async fn handle(
    s: &mut Session<ServerSide>,
    ctx: &Context,
    request: Request,
    setup: &mut ExecSetup,
) -> Result<(), Error> {
    let cut = s.cut_off().clone();
    let streamed = matches!(request, Request::TreeList(_) | Request::TreePut(_) | Request::TreeGet(_));
    let terminal = matches!(request, Request::Pty(_) | Request::Env(_));
    if (streamed && !ctx.config.tree_streaming) || (terminal && !ctx.config.terminal_requests) {
        // What a server that predates them answers.
        let msg = format!("unknown message type {:?}", request.kind());
        return s.refuse(crate::services::Refusal::new(crate::proto::ErrorCode::UnknownType, msg)).await;
    }
    match request {
        Request::Echo(r) => cut_off_by(&cut, echo::echo(s, ctx, r)).await,
        Request::Exec(r) => exec::exec(s, ctx, r, setup).await,
        Request::Pty(r) => cut_off_by(&cut, exec::pty(s, ctx, r, setup)).await,
        Request::Env(r) => cut_off_by(&cut, exec::env(s, ctx, r, setup)).await,
        Request::List(r) => cut_off_by(&cut, files::list(s, ctx, r)).await,
        Request::Stat(r) => cut_off_by(&cut, files::stat(s, ctx, r)).await,
        Request::Mkdir(r) => cut_off_by(&cut, files::mkdir(s, ctx, r)).await,
        Request::Remove(r) => cut_off_by(&cut, files::remove(s, ctx, r)).await,
        Request::Rename(r) => cut_off_by(&cut, files::rename(s, ctx, r)).await,
        Request::Get(r) => cut_off_by(&cut, files::get(s, ctx, r)).await,
        // A cut upload leaves its partial file for a resume.
        Request::Put(r) => cut_off_by(&cut, files::put(s, ctx, r)).await,
        Request::TreeList(r) => cut_off_by(&cut, tree::tree_list(s, ctx, r)).await,
        // A cut tree upload commits what it verified, and leaves the
        // partial file of the one under way.
        Request::TreePut(r) => cut_off_by(&cut, tree::tree_put(s, ctx, r)).await,
        Request::TreeGet(r) => cut_off_by(&cut, tree::tree_get(s, ctx, r)).await,
    }
}
