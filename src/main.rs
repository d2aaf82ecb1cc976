//! The `framewire` binary: parses arguments and hands over to the library
//! (see `src/cli/` for each subcommand).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed, then why, outermost first.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("framewire: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
