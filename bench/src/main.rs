//! `shoal-bench`: benchmarks of running shoal processes that print their figures. They used
//! to be `shoal bench …`; they live in their own binary so that the product carries no etcd
//! client, no kill -9 driver and no load generator.
//!
//! ```text
//! shoal-bench writes --addr http://127.0.0.1:7070 --clients 1 --clients 16   # API writes
//! shoal-bench writes --target both --addr … --etcd-addr …                    # vs etcd
//! shoal-bench reads --target both --addr … --etcd-addr …                     # linearizable reads
//! shoal-bench failover --target shoal --addr … --pids-file F                 # kill -9 the leader
//! shoal-bench peers --join 127.0.0.51:7946 --agent-api http://127.0.0.51:7070
//! shoal-bench xds --agent-api http://127.0.0.72:7070 --xds http://127.0.0.72:18000
//! shoal-bench mesh-ca --cluster http://127.0.0.81:7071 --nodes 1000
//! ```
//!
//! The `scripts/bench-*` scripts start the processes under test and run these. Logs go to
//! stderr; `SHOAL_LOG` filters them (as for `shoal`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod etcd;
mod failover;
mod fair;
mod mesh_ca;
mod peers;
mod stats;
mod system;
mod writes;
mod xds;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    version,
    about = "Benchmarks of running shoal processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed-loop writes against running shoal servers and/or etcd members: writes/s and
    /// latency percentiles, side by side with `--target both` (medians of `--runs`).
    Writes(writes::LoadArgs),
    /// Closed-loop linearizable reads (shoal's ReadIndex GET, etcd's default Range), in the
    /// same shape as `writes`.
    Reads(writes::LoadArgs),
    /// Kill -9 the leader of a running cluster, time until writes succeed again, restart it.
    Failover(failover::FailoverArgs),
    /// Many gossip peers in this process against one running agent: convergence through the
    /// agent's view, and the agent's memory.
    Peers(peers::PeersArgs),
    /// One route change fanned out through one agent to many simulated ADS clients: time to
    /// the last ACK, agent CPU and memory per proxy.
    Xds(xds::XdsBenchArgs),
    /// The mesh CA: certificates per second one server signs, and how long many simulated
    /// agents' proxies take to get theirs after a cold start.
    MeshCa(mesh_ca::MeshCaArgs),
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Writes(a) => writes::run(a, writes::Op::Write).await,
        Command::Reads(a) => writes::run(a, writes::Op::Read).await,
        Command::Failover(a) => failover::failover(a).await,
        Command::Peers(a) => peers::run(a).await,
        Command::Xds(a) => xds::run(a).await,
        Command::MeshCa(a) => mesh_ca::run(a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
