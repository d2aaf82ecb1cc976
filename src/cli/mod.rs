//! Command-line interface: argument definitions (clap derive) and the
//! dispatch to each subcommand.

mod demo;
mod echo;
mod serve;
mod sticky;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Length-prefixed framing over TCP done properly, and a small agent for
/// commands and files built on it.
#[derive(Debug, Parser)]
#[command(name = "framewire", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG, if set,
    /// takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the native protocol on a TCP address.
    Serve(serve::ServeArgs),
    /// Send TEXT (or stdin with `-`) to a server and print what comes back.
    Echo(echo::EchoArgs),
    /// Show what framewire does, end to end on loopback, with no setup.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(subcommand)]
    which: Option<DemoWhich>,
}

#[derive(Debug, Subcommand)]
enum DemoWhich {
    /// Reproduce sticky and half packets on loopback, and show framing fix them.
    Sticky,
    /// Start a server on an ephemeral loopback port and echo through it.
    Echo,
}

/// Logs go to stderr, so stdout stays for the command's own output.
pub fn init_logging(cli: &Cli) {
    let default = match (cli.verbose, &cli.command) {
        (0, Command::Serve(_)) => "info",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve::run(args)),
        Command::Echo(args) => runtime()?.block_on(echo::run(args)),
        Command::Demo(DemoArgs {
            which: Some(DemoWhich::Sticky),
        }) => sticky::run(),
        Command::Demo(DemoArgs {
            which: Some(DemoWhich::Echo),
        }) => runtime()?.block_on(demo::echo()),
        Command::Demo(DemoArgs { which: None }) => demo::all(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
