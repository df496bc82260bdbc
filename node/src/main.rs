//! The `shoal` binary: thin on purpose. It parses the command line and calls into the
//! library (`node/src/lib.rs`); every mode is a function of its configuration and a shutdown
//! future.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use shoal::cli::{self, Cli, Command};
use shoal::{dev, server, shutdown_signal};

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn server_config(args: cli::ServerArgs) -> anyhow::Result<server::ServerConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<server::ServerConfig>(&text)
                .with_context(|| format!("{} is not a valid config", path.display()))?
        }
        None => {
            let node_id = args
                .node_id
                .context("--node-id is required (or --config)")?;
            let data_dir = args
                .data_dir
                .clone()
                .context("--data-dir is required (or --config)")?;
            server::ServerConfig::new(node_id, data_dir)
        }
    };
    if let Some(v) = args.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.api {
        cfg.api = v;
    }
    if let Some(v) = args.raft {
        cfg.raft = v;
    }
    if let Some(v) = args.gossip {
        cfg.gossip = Some(v);
    }
    if !args.join.is_empty() {
        cfg.join = args.join;
    }
    if let Some(v) = args.bootstrap_expect {
        cfg.bootstrap_expect = v;
    }
    if let Some(v) = args.account {
        cfg.account = v;
    }
    if let Some(v) = args.region {
        cfg.region = v;
    }
    if let Some(v) = args.dns {
        cfg.dns = Some(v);
    }
    if let Some(v) = args.xds {
        cfg.xds = Some(v);
    }
    if !args.recursor.is_empty() {
        cfg.recursors = args.recursor;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn agent_config(args: cli::AgentArgs) -> anyhow::Result<shoal::agent::AgentConfig> {
    use shoal::agent::AgentConfig;
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<AgentConfig>(&text)
                .with_context(|| format!("{} is not a valid agent config", path.display()))?
        }
        None => {
            let data_dir = args
                .data_dir
                .clone()
                .context("--data-dir is required (or --config)")?;
            let gossip = args
                .gossip
                .unwrap_or_else(|| "127.0.0.1:7946".parse().expect("literal"));
            AgentConfig::new(data_dir, gossip)
        }
    };
    if let Some(v) = args.name {
        cfg.name = Some(v);
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.gossip {
        cfg.gossip = v;
    }
    if !args.join.is_empty() {
        cfg.join = args.join;
    }
    if let Some(v) = args.api {
        cfg.api = Some(v);
    }
    if let Some(v) = args.dns {
        cfg.dns = Some(v);
    }
    if args.no_dns {
        cfg.dns = None;
    }
    if let Some(v) = args.xds {
        cfg.xds = Some(v);
    }
    if args.no_xds {
        cfg.xds = None;
    }
    if !args.recursor.is_empty() {
        cfg.recursors = args.recursor;
    }
    if let Some(v) = args.dns_ttl {
        cfg.dns_ttl = v;
    }
    if let Some(v) = args.zone {
        cfg.zone = Some(v);
    }
    if !args.server.is_empty() {
        cfg.servers = args.server;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(a) => dev::run(a).await,
        Command::Server(a) => {
            let cfg = server_config(a)?;
            server::run(cfg, shutdown_signal(), |_| tokio::spawn(async {})).await
        }
        Command::Agent(a) => {
            let cfg = agent_config(a)?;
            shoal::agent::run(cfg, shutdown_signal(), |_| {}).await
        }
        Command::Register(a) => cli::register(a).await,
        Command::Deregister(a) => cli::deregister(a).await,
        Command::Members(a) => cli::members(a).await,
        Command::Endpoints(a) => cli::endpoints(a).await,
        Command::Apply(a) => cli::apply(a).await,
        Command::Get(a) => cli::get(a).await,
        Command::Delete(a) => cli::delete(a).await,
        Command::Status(a) => cli::status(a).await,
        Command::Envoy(cli::EnvoyCommand::Bootstrap(a)) => cli::envoy_bootstrap(a),
        Command::Operator(cli::OperatorCommand::RemoveServer(a)) => cli::remove_server(a).await,
        Command::Snapshot(cli::SnapshotCommand::Save(a)) => cli::snapshot_save(a).await,
        Command::Snapshot(cli::SnapshotCommand::Restore(a)) => cli::snapshot_restore(a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
