//! The `shoal` command line: every subcommand's flags and what it does. `main.rs` only parses
//! and calls [`run`].
//!
//! - [`roles`]: `shoal server`, `shoal agent` and `shoal dev` (their flags are the role's
//!   configuration type, merged over a TOML file by `crate::config::layered`).
//! - [`resources`]: `apply`, `get`, `delete` against the App Mesh API; [`output`] their tables.
//! - [`instances`]: `register` and `deregister` against the local agent.
//! - [`cluster`]: `status`, `members`, `endpoints`, `operator`, `snapshot`.
//! - [`envoy`]: `envoy bootstrap`.
//! - [`acl`]: `acl bootstrap|create|list|revoke` (the API's access keys).
//! - [`gossip`]: `gossip keygen`, `gossip keyring list|step` (the gossip encryption keys).
//! - [`tls`]: `tls ca create`, `tls cert create` (the cluster CA and member certificates).
//! - [`ca`]: `ca show|rotate|import` (the mesh CA that signs the proxies' certificates).
//!
//! The HTTP client they use is `crate::client` (shared with `shoal dev` and `shoal-bench`).

mod acl;
mod ca;
mod cluster;
mod envoy;
mod gossip;
mod instances;
mod output;
mod resources;
mod roles;
mod tls;

use clap::{Args, Parser, Subcommand, ValueEnum};

use cluster::{MembersArgs, OperatorCommand, SnapshotCommand, StatusArgs};
use envoy::EnvoyCommand;
use instances::{DeregisterArgs, RegisterArgs};
use resources::{ApplyArgs, DeleteArgs, GetArgs};
use roles::{AgentArgs, ServerArgs};

/// shoal: a self-hosted App Mesh control plane.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One process with a single-node server and an example mesh, for trying shoal out.
    Dev(crate::dev::DevArgs),
    /// Run a server (Raft member and API).
    Server(ServerArgs),
    /// Run an agent (one per host): instances, health checks, gossip, the model cache, DNS.
    Agent(AgentArgs),
    /// Register a service instance with the local agent.
    Register(RegisterArgs),
    /// Deregister a service instance from the local agent.
    Deregister(DeregisterArgs),
    /// List the gossip members (servers and agents) a node sees.
    Members(MembersArgs),
    /// List the endpoints (every host's instances and their health) a node sees.
    Endpoints(MembersArgs),
    /// Create or update resources from JSON files in the API's request shape.
    Apply(ApplyArgs),
    /// Show resources.
    Get(GetArgs),
    /// Delete resources.
    Delete(DeleteArgs),
    /// Show the cluster's Raft status.
    Status(StatusArgs),
    /// Envoy helpers.
    #[command(subcommand)]
    Envoy(EnvoyCommand),
    /// Cluster operations.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Back up and restore the whole model.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The cluster CA and the certificates of servers and agents (mutual TLS on the cluster
    /// gRPC port).
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// The API's access keys (with `shoal server --api-auth`).
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// The mesh CA (the proxies' workload certificates): show, rotate, import an
    /// intermediate.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The gossip encryption key: make one, list and rotate a member's keyring.
    #[command(subcommand)]
    Gossip(gossip::GossipCommand),
}

/// Where the client commands send their requests.
#[derive(Debug, Args)]
pub struct Target {
    /// Server API address.
    #[arg(long, env = "SHOAL_ADDR", default_value = "http://127.0.0.1:7070")]
    pub addr: String,
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// Runs the command `cli` parsed from `matches` (the matches tell which flags were given, for
/// configurations layered over a file) until it ends or `shutdown` resolves.
pub async fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .expect("the parsed subcommand")
    };
    match cli.command {
        Command::Dev(a) => crate::dev::run(a).await,
        Command::Server(a) => {
            let cfg = roles::server_config(a, sub("server"))?;
            crate::server::run(cfg, crate::shutdown_signal(), |_| tokio::spawn(async {})).await
        }
        Command::Agent(a) => {
            let cfg = roles::agent_config(a, sub("agent"))?;
            crate::agent::run(cfg, crate::shutdown_signal(), |_| {}).await
        }
        Command::Register(a) => instances::register(a).await,
        Command::Deregister(a) => instances::deregister(a).await,
        Command::Members(a) => cluster::members(a).await,
        Command::Endpoints(a) => cluster::endpoints(a).await,
        Command::Apply(a) => resources::apply(a).await,
        Command::Get(a) => resources::get(a).await,
        Command::Delete(a) => resources::delete(a).await,
        Command::Status(a) => cluster::status(a).await,
        Command::Envoy(EnvoyCommand::Bootstrap(a)) => envoy::bootstrap(a),
        Command::Operator(OperatorCommand::RemoveServer(a)) => cluster::remove_server(a).await,
        Command::Snapshot(SnapshotCommand::Save(a)) => cluster::snapshot_save(a).await,
        Command::Snapshot(SnapshotCommand::Restore(a)) => cluster::snapshot_restore(a).await,
        Command::Tls(c) => tls::run(c).await,
        Command::Acl(c) => acl::run(c).await,
        Command::Ca(c) => ca::run(c).await,
        Command::Gossip(c) => gossip::run(c).await,
    }
}
