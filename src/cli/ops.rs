//! `framewire rm`, `mv` and `mkdir`: file operations on the server, under
//! the same sandbox rules as transfers (paths relative to the served root,
//! resolved by descriptor, partial files' names refused).

use std::process::ExitCode;

use super::config::Settings;
use clap::Args;
use framewire::text::printable;
use framewire::{Client, ClientError, ErrorCode};

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,
    /// Paths relative to the served root.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    /// Remove directories with everything below them.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// No error for a path that is not there.
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,
    /// The path to move, relative to the served root.
    from: String,
    /// Its new path (its parent must exist).
    to: String,
    /// Replace what is at TO.
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// The server: an alias from the config file, or `host[:port]`
    /// (default port 9909).
    addr: String,
    /// Directories to create, relative to the served root.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    /// Create missing parents, and accept a directory that exists.
    #[arg(short = 'p', long)]
    parents: bool,
}

/// Runs `each` on every path, saying in one line why one failed (with
/// the flags of `hints`, where one would change it); exit 1 when some did
/// (as for a copy), 0 otherwise. Neither `rm` nor `mkdir` has a `--force`
/// that replaces: none is suggested.
async fn each_path<F>(
    client: &mut Client,
    paths: &[String],
    (verb, hints): (&str, super::Hints),
    mut each: F,
) -> anyhow::Result<ExitCode>
where
    F: for<'c> FnMut(
        &'c mut Client,
        &'c str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send + 'c>>,
{
    let mut failed = 0;
    for path in paths {
        if let Err(e) = each(client, path).await {
            if e.code().is_none() {
                // The connection is gone: the rest cannot be done either.
                return Err(e.into());
            }
            let why = super::explained_for(&e, hints);
            eprintln!("framewire: error: cannot {verb} {}", printable(&format!("{path}: {why}")));
            failed += 1;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn rm(args: RmArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = settings.resolve(&args.addr);
    let mut client = target.connect().await?;
    let paths: Vec<String> = args.paths.iter().map(|p| target.path(p)).collect();
    let (recursive, force) = (args.recursive, args.force);
    let hints = super::Hints { recursive: !recursive, ..super::Hints::default() };
    each_path(&mut client, &paths, ("remove", hints), |c, p| {
        Box::pin(async move {
            let removed = if recursive { c.remove(p).await? } else { c.remove_file(p).await? };
            if !removed && !force {
                let message = format!("{p}: no such file or directory");
                return Err(ClientError::Remote { code: ErrorCode::NotFound, message });
            }
            Ok(())
        })
    })
    .await
}

pub async fn mkdir(args: MkdirArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = settings.resolve(&args.addr);
    let mut client = target.connect().await?;
    let paths: Vec<String> = args.paths.iter().map(|p| target.path(p)).collect();
    let parents = args.parents;
    let hints = super::Hints { parents: !parents, ..super::Hints::default() };
    each_path(&mut client, &paths, ("create", hints), |c, p| {
        Box::pin(async move {
            if parents {
                c.mkdir(p).await?;
            } else {
                c.mkdir_one(p).await?;
            }
            Ok(())
        })
    })
    .await
}

pub async fn mv(args: MvArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = settings.resolve(&args.addr);
    let mut client = target.connect().await?;
    match client.rename(&target.path(&args.from), &target.path(&args.to), args.force).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ClientError::Remote { code: ErrorCode::UnknownType, .. }) => {
            anyhow::bail!("this server predates `mv` (no rename request); nothing was moved")
        }
        Err(e) => Err(anyhow::anyhow!("{}", super::explained(&e)).context(format!("cannot move {}", args.from))),
    }
}
