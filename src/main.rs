//! The `framewire` binary: parses arguments and hands over to the library
//! (see `src/cli/` for each subcommand).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_allocator();
    let args = cli::parse();
    cli::init_logging(&args);
    let outcome = cli::run(args);
    if let Some(code) = cli::stdout_failure() {
        return code;
    }
    match outcome {
        Ok(code) => code,
        Err(e) if cli::stdout_gone(&e) => ExitCode::from(cli::READER_GONE),
        // framewire's own failures (cannot connect, authentication, a
        // request the server refused, a source that is not there): 255 for
        // every subcommand, as ssh's (README, "Exit codes").
        Err(e) => {
            eprintln!("framewire: error: {}", cli::one_line(&e));
            ExitCode::from(cli::OWN_FAILURE)
        }
    }
}

/// Transfers move 1 MiB chunks between threads. glibc serves allocations
/// that large with a fresh mmap each time, so every chunk cost ~256 page
/// faults and their zeroing (~14% of a download's CPU, measured with perf).
/// Raising the mmap threshold keeps them in the heap, where freed chunks
/// are reused.
///
/// glibc also gives each thread that allocates an arena of its own (up to
/// 8 per core): a tree copy plans on one thread and streams on others, so
/// the plan's freed memory sat in one arena while the others grew. Two
/// arenas: a 100,000-file upload's client peak went from 87 to ~45 MiB
/// (docs/BENCHMARKS.md, "Streamed trees").
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
