//! The `shoal` binary: thin on purpose. It parses the command line and calls into the
//! library (`node/src/lib.rs`); every mode is a function of its configuration and a shutdown
//! future.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use shoal::cli::Cli;

/// jemalloc instead of glibc's malloc: under write load a server spent about a quarter of its
/// CPU in glibc's allocator (`_int_malloc`, `malloc_consolidate`, `_int_free`; perf, 64
/// clients), for the many short-lived buffers of HTTP, JSON and gRPC. (mimalloc 3 was worse:
/// it gave pages back and faulted transparent huge pages in again, zeroing 2 MiB each time.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The exit status of a failed run: 78 (sysexits' EX_CONFIG) when the Raft store cannot be
/// trusted (damaged, of another format, missing a part), so that the systemd unit's
/// `RestartPreventExitStatus=78` stops a restart loop on a server an operator must look at;
/// 70 (EX_SOFTWARE) when the Raft core stopped under a running server, so that it is
/// restarted; 1 otherwise.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.chain()
        .any(|c| c.downcast_ref::<shoal::server::CoreStopped>().is_some())
    {
        return ExitCode::from(70);
    }
    let untrusted_store = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<shoal_raft::Error>(),
            Some(shoal_raft::Error::Store(_))
        )
    });
    if untrusted_store {
        ExitCode::from(78)
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logs();
    // SHOAL_WORKER_THREADS pins the runtime's size (benchmarks run an agent on one core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("SHOAL_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(shoal::cli::run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            exit_code(&e)
        }
    }
}
