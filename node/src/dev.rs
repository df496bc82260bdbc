//! `shoal dev`: a single-node server on localhost with an embedded agent (gossip, DNS, the
//! registration API on the server's API) and an example mesh, for a first look.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::agent::{self, AgentConfig};
use crate::client::{Client, Doc};
use crate::server::{self, ServerConfig};

/// `shoal dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep data here (default: a fresh temporary directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Raft address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub raft: SocketAddr,
    /// Gossip address of the embedded agent.
    #[arg(long, default_value = "127.0.0.1:7946")]
    pub gossip: SocketAddr,
    /// DNS address of the embedded agent (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub dns: SocketAddr,
    /// xDS (ADS) address of the embedded agent, for local Envoys.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// DNS server for names outside the mesh (repeatable).
    #[arg(long)]
    pub recursor: Vec<SocketAddr>,
    /// Do not load the example mesh.
    #[arg(long)]
    pub no_example: bool,
}

/// The example mesh: a gateway, a router with weighted and header routes across three
/// versions of a service, and a TCP backend.
pub const EXAMPLE: &str = include_str!("../examples/colorapp.json");

/// Parses [`EXAMPLE`] into documents in apply order.
pub fn example_docs() -> anyhow::Result<Vec<Doc>> {
    let v: serde_json::Value = serde_json::from_str(EXAMPLE).context("example JSON")?;
    let mut docs = v
        .as_array()
        .context("example is an array")?
        .iter()
        .enumerate()
        .map(|(i, d)| Doc::from_json(d, &format!("example[{i}]")))
        .collect::<anyhow::Result<Vec<Doc>>>()?;
    docs.sort_by_key(|d| shoal_model::Kind::ALL.iter().position(|k| *k == d.kind));
    Ok(docs)
}

/// Runs the dev server until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let temp;
    let data_dir: PathBuf = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("shoal-dev-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut cfg = ServerConfig::new(1, data_dir.clone());
    cfg.api = args.api;
    cfg.raft = args.raft;
    let load = !args.no_example;

    // The agent follows the server's own watch stream and serves its routes on the server's
    // API, so `shoal register` works against the default address.
    let mut acfg = AgentConfig::new(data_dir.join("agent"), args.gossip);
    acfg.name = Some("dev".into());
    acfg.api = None;
    acfg.dns = Some(args.dns);
    acfg.xds = Some(args.xds);
    acfg.recursors = args.recursor.clone();
    acfg.servers = vec![format!("http://{}", args.raft)];
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let agent = tokio::spawn(agent::run(acfg, crate::shutdown_signal(), move |st| {
        let _ = ready_tx.send(st);
    }));
    let state = match ready_rx.await {
        Ok(st) => st,
        Err(_) => {
            return match agent.await {
                Ok(Err(e)) => Err(e.context("starting the embedded agent")),
                _ => Err(anyhow::anyhow!("the embedded agent did not start")),
            }
        }
    };
    let dns = state.bound.dns;
    let gossip = state.gossip.clone();
    let routes = agent::routes(state, false);
    server::run_with(cfg, crate::shutdown_signal(), move |running| {
        tokio::spawn(async move {
            let empty = running.raft.read(|m| m.iter().next().is_none());
            let addr = format!("http://{}", running.api_addr);
            if load && empty {
                if let Err(e) = load_example(&addr).await {
                    tracing::error!(error = %format!("{e:#}"), "loading the example mesh failed");
                    return;
                }
                tracing::info!("example mesh `colorapp` loaded");
            }
            println!("shoal dev is ready: API {addr}  (try: SHOAL_ADDR={addr} shoal get virtual-nodes --mesh colorapp)");
            if let Some(d) = dns {
                println!("DNS on {d}  (try: dig @{} -p {} colorteller.colorapp.local)", d.ip(), d.port());
            }
        })
    }, routes, Some(gossip))
    .await?;
    let _ = agent.await;
    Ok(())
}

async fn load_example(addr: &str) -> anyhow::Result<()> {
    let c = Client::new(addr)?;
    for d in example_docs()? {
        c.apply(&d).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_model::Kind;

    #[test]
    fn example_parses_in_dependency_order() {
        let docs = example_docs().unwrap();
        let order: Vec<usize> = docs
            .iter()
            .map(|d| Kind::ALL.iter().position(|k| *k == d.kind).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
        assert_eq!(
            docs.iter()
                .filter(|d| d.kind == Kind::VirtualGateway)
                .count(),
            1
        );
    }
}
