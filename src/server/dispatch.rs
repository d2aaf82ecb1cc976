//! Request dispatch: the one place that knows every handler.

use super::context::{Context, Scope, Served};
use super::storage::guard::Guarded;
use super::storage::Dir;
use crate::auth::Verb;

use super::handlers::{echo, exec, files, tree};
use crate::proto::Request;
use crate::session::{cut_off_by, ServerSide, Session};
use crate::wire::Error;

/// What a connection keeps between requests for its next exec.
pub(super) use super::handlers::exec::ExecSetup;

/// Who a request comes from and what its connection has carried, for
/// the request's log line.
pub(super) struct Peer<'a> {
    pub addr: std::net::SocketAddr,
    pub traffic: &'a crate::transport::Traffic,
    /// The key it authenticated with, as the log names it (its comment
    /// and fingerprint; `shared-key`; `-` without a key).
    pub key: String,
}

/// Runs one request to its end, reply included, then logs one INFO line
/// for it: the peer, what was asked (the command, or the path and the
/// direction), how it ended, the bytes the connection carried meanwhile
/// each way, and how long it took.
pub(super) async fn handle(
    s: &mut Session<ServerSide>,
    (ctx, scope): (&Context, &Scope),
    request: Request,
    setup: &mut ExecSetup,
    peer: &Peer<'_>,
) -> Result<(), Error> {
    let kind = request.kind();
    let what = What::of(&request);
    // A `stat` that finds nothing answers the question asked (every put
    // asks, to plan): not a refusal.
    let lookup = matches!(request, Request::Stat(_));
    let (started, (read, written)) = (std::time::Instant::now(), peer.traffic.totals());
    let result = run(s, (ctx, scope), request, setup).await;
    let (now_read, now_written) = peer.traffic.totals();
    let outcome = match (&result, s.take_outcome()) {
        (Ok(()), Some(outcome)) if lookup && outcome.starts_with("refused (not_found)") => "not found".to_owned(),
        (Ok(()), Some(outcome)) => outcome,
        (Ok(()), None) => "ok".to_owned(),
        // Said by the handler: a cut upload keeps its partial file.
        (Err(_), Some(outcome)) => outcome,
        (Err(e), _) => format!("failed: {}", crate::text::printable(&e.to_string())),
    };
    let ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    tracing::info!(
        peer = %peer.addr,
        key = %crate::text::printable(&peer.key),
        request = kind,
        command = what.command.as_deref(),
        path = what.path.as_deref(),
        to = what.to.as_deref(),
        direction = what.direction,
        result = %outcome,
        bytes_in = now_read - read,
        bytes_out = now_written - written,
        ms,
        "request"
    );
    result
}

/// What a request's log line names.
#[derive(Default)]
struct What {
    command: Option<String>,
    path: Option<String>,
    to: Option<String>,
    direction: Option<&'static str>,
}

impl What {
    fn of(request: &Request) -> What {
        use crate::services::files::shown;
        let path = |p: &str| Some(crate::text::printable(&shown(p)).into_owned());
        let (up, down) = (Some("upload"), Some("download"));
        match request {
            Request::Exec(r) => {
                What { command: Some(crate::text::printable(&shown(&r.command)).into_owned()), ..What::default() }
            }
            Request::List(r) => What { path: path(&r.path), ..What::default() },
            Request::Stat(r) => What { path: path(&r.path), ..What::default() },
            Request::Mkdir(r) => What { path: path(&r.path), ..What::default() },
            Request::Remove(r) => What { path: path(&r.path), ..What::default() },
            Request::Rename(r) => What { path: path(&r.from), to: path(&r.to), ..What::default() },
            Request::Get(r) => What { path: path(&r.path), direction: down, ..What::default() },
            Request::Put(r) => What { path: path(&r.path), direction: up, ..What::default() },
            Request::TreeList(r) => What { path: path(&r.path), ..What::default() },
            Request::TreePut(r) => What { path: path(&r.path), direction: up, ..What::default() },
            Request::TreeGet(r) => What { path: path(&r.path), direction: down, ..What::default() },
            Request::Echo(_) | Request::Pty(_) | Request::Env(_) | Request::Compress(_) => What::default(),
        }
    }
}

/// Runs one request to its end, reply included. Every request but exec is
/// dropped at the drain deadline (the session's cut-off); exec watches it
/// itself, to kill the process group and tell the client why.
async fn run(
    s: &mut Session<ServerSide>,
    (ctx, scope): (&Context, &Scope),
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
    // Commands and terminals are not on the storage seam: their rights
    // are checked here (paths are, in `Guarded`).
    let verb = match &request {
        Request::Exec(_) => Some(Verb::Exec),
        Request::Pty(_) | Request::Env(_) => Some(Verb::Pty),
        _ => None,
    };
    if let Some(verb) = verb.filter(|v| !scope.rights.allows(*v)) {
        let msg = format!("this key may not {} (its options in the server's authorized keys)", verb.name());
        return s.refuse(crate::services::Refusal::new(crate::proto::ErrorCode::PermissionDenied, msg)).await;
    }
    let rights = &scope.rights;
    let served = scope.served(ctx);
    match request {
        Request::Echo(r) => cut_off_by(&cut, echo::echo(s, ctx, r)).await,
        Request::Compress(r) => compress(s, r).await,
        Request::Exec(r) => exec::exec(s, (ctx, served, &scope.revoked), r, setup).await,
        Request::Pty(r) => cut_off_by(&cut, exec::pty(s, ctx, r, setup)).await,
        Request::Env(r) => cut_off_by(&cut, exec::env(s, ctx, r, setup)).await,
        Request::List(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::list(s, st, r)).await),
        Request::Stat(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::stat(s, st, r)).await),
        Request::Mkdir(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::mkdir(s, st, r)).await),
        Request::Remove(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::remove(s, st, r)).await),
        Request::Rename(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::rename(s, st, r)).await),
        Request::Get(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, files::get(s, st, r)).await),
        // A cut upload leaves what arrived for a resume: put watches the
        // cut-off itself.
        Request::Put(r) => on_root!(ctx, served, rights, st => files::put(s, st, r).await),
        Request::TreeList(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, tree::tree_list(s, st, r)).await),
        // A cut tree upload commits what it verified, and leaves the
        // partial file of the one under way.
        Request::TreePut(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, tree::tree_put(s, st, r)).await),
        Request::TreeGet(r) => on_root!(ctx, served, rights, st => cut_off_by(&cut, tree::tree_get(s, st, r)).await),
    }
}

/// Runs `$body` with `$st` bound to the root's [`Storage`]: each file
/// request is one generic handler, made for each kind of root here.
macro_rules! on_root {
    ($ctx:expr, $served:expr, $rights:expr, $st:ident => $body:expr) => {
        match $served {
            Served::Dir(sb) => {
                let $st = &Guarded {
                    inner: &Dir { sb, hashes: &$ctx.hashes, signatures: &$ctx.signatures },
                    rights: $rights,
                };
                $body
            }
            #[cfg(feature = "s3")]
            Served::Bucket(b) => {
                let $st = &Guarded { inner: b, rights: $rights };
                $body
            }
        }
    };
}
use on_root;

/// The highest zstd level a server compresses with, whatever its client
/// asks: higher levels cost the server's CPU for every byte it sends, and
/// memory (level 3, with the 2 MiB window: about 3 MiB a connection, its
/// decoder's window besides).
pub(crate) const SERVER_MAX_LEVEL: i32 = 3;

/// `compress`: answered, then both directions go through zstd.
async fn compress(s: &mut Session<ServerSide>, r: crate::proto::Compress) -> Result<(), Error> {
    if s.is_compressed() {
        return s.refuse_and_close("compress on a connection compressed already".to_owned()).await;
    }
    let level = r.level.clamp(*crate::transport::COMPRESS_LEVELS.start(), SERVER_MAX_LEVEL);
    s.send(&crate::proto::CompressReady { level }, &[]).await?;
    s.compress(level)
}
