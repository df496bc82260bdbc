//! Server mode: open the Raft store, form (today: bootstrap) the cluster, serve the HTTP API
//! until shutdown. Configuration is plain data, checked before any port is bound.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use serde::Deserialize;
use shoal_raft::RaftNode;
use tokio::net::TcpListener;

mod admin;
mod appmesh;
pub(crate) mod cluster;
mod forward;
mod metrics;
mod state;

pub use state::{AppState, Identity};

use crate::watch::{WatchHub, WatchService};
use metrics::Metrics;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// Change batches a server keeps for watchers that resume (about one snapshot interval).
pub const WATCH_HISTORY: usize = 10_000;

/// A server's configuration, from flags or a TOML file (`shoal server --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This server's Raft id, unique in the cluster and never reused.
    pub node_id: u64,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// HTTP API address.
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// Raft RPC address.
    #[serde(default = "default_raft")]
    pub raft: SocketAddr,
    /// Gossip address (used by the cluster issue; unused by a single server).
    #[serde(default)]
    pub gossip: Option<SocketAddr>,
    /// Gossip addresses of existing members.
    #[serde(default)]
    pub join: Vec<String>,
    /// Servers to wait for before bootstrapping.
    #[serde(default = "one")]
    pub bootstrap_expect: u32,
    /// Account id written into ARNs.
    #[serde(default = "default_account")]
    pub account: String,
    /// Region written into ARNs.
    #[serde(default = "default_region")]
    pub region: String,
    /// Raft heartbeat interval.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Raft election timeout, lower bound.
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    /// Raft election timeout, upper bound.
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    /// Log entries between snapshots.
    #[serde(default = "default_snapshot")]
    pub snapshot_after_logs: u64,
    /// DNS address of the agent a clustered server embeds (servers run the agent role too:
    /// registration API, health checks, gossip of instances); `None`: no DNS.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// Recursors of the embedded agent's DNS.
    #[serde(default)]
    pub recursors: Vec<SocketAddr>,
    /// xDS address of the embedded agent, for Envoys on the server's host; `None`: no xDS.
    #[serde(default)]
    pub xds: Option<SocketAddr>,
}

fn default_api() -> SocketAddr {
    "127.0.0.1:7070".parse().expect("literal")
}
fn default_raft() -> SocketAddr {
    "127.0.0.1:7071".parse().expect("literal")
}
fn one() -> u32 {
    1
}
/// The account id shoal uses when none is configured.
pub fn default_account() -> String {
    "000000000000".into()
}
/// The region shoal uses when none is configured.
pub fn default_region() -> String {
    "us-east-1".into()
}
// Failover takes about election_timeout_max (openraft's leader lease) plus a random election
// timeout after the last heartbeat: 600 + 400..600 ms keeps it near one second, and a
// heartbeat every 100 ms leaves four missed heartbeats before anyone moves.
fn default_heartbeat() -> u64 {
    100
}
fn default_election_min() -> u64 {
    400
}
fn default_election_max() -> u64 {
    600
}
fn default_snapshot() -> u64 {
    5000
}

impl ServerConfig {
    /// A single-server configuration with defaults for everything else.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        ServerConfig {
            node_id,
            data_dir,
            api: default_api(),
            raft: default_raft(),
            gossip: None,
            join: Vec::new(),
            bootstrap_expect: 1,
            account: default_account(),
            region: default_region(),
            heartbeat_ms: default_heartbeat(),
            election_timeout_min_ms: default_election_min(),
            election_timeout_max_ms: default_election_max(),
            snapshot_after_logs: default_snapshot(),
            dns: None,
            recursors: Vec::new(),
            xds: None,
        }
    }

    /// Checks the configuration before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("--node-id must be at least 1");
        }
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account must be 12 digits, got {:?}", self.account);
        }
        if self.region.is_empty() || self.region.contains([':', '/']) {
            bail!("region {:?} cannot appear in an ARN", self.region);
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            bail!("need heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
        }
        if self.bootstrap_expect == 0 {
            bail!("--bootstrap-expect must be at least 1");
        }
        if let Some(g) = self.gossip {
            // Other servers dial these addresses as they are: 0.0.0.0 would make a peer dial
            // itself (openraft's leader must never replicate to itself).
            for (flag, addr) in [("--api", self.api), ("--raft", self.raft), ("--gossip", g)] {
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    bail!("in a cluster {flag} must be this host's own address and a fixed port, not {addr}");
                }
            }
        }
        if self.gossip.is_none() && (self.dns.is_some() || self.xds.is_some()) {
            bail!("--dns and --xds need --gossip: the agent a server embeds gossips its instances");
        }
        if self.gossip.is_none() && (self.bootstrap_expect > 1 || !self.join.is_empty()) {
            bail!("a multi-server cluster needs --gossip (servers find each other through gossip)");
        }
        Ok(())
    }
}

/// A running server, for `dev` mode and tests that need the handle.
pub struct Running {
    /// The store.
    pub raft: RaftNode,
    /// The address the API listens on (resolved, for `:0`).
    pub api_addr: SocketAddr,
    /// The address the gRPC services (Raft, watch) listen on.
    pub grpc_addr: SocketAddr,
}

/// Opens the store, bootstraps, binds the API, then serves until `shutdown` resolves.
/// `on_ready` runs once the API accepts requests (used by `shoal dev` to load its example).
pub async fn run<F, R>(cfg: ServerConfig, shutdown: F, on_ready: R) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
    R: FnOnce(Running) -> tokio::task::JoinHandle<()>,
{
    run_with(cfg, shutdown, on_ready, Router::new(), None).await
}

/// [`run`], with an embedded agent: its `routes` are served on the same API, and its `gossip`
/// members are listed when the server has no gossip of its own.
pub async fn run_with<F, R>(
    cfg: ServerConfig,
    shutdown: F,
    on_ready: R,
    extra: Router,
    agent_gossip: Option<shoal_gossip::Gossip>,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
    R: FnOnce(Running) -> tokio::task::JoinHandle<()>,
{
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let listener = TcpListener::bind(cfg.api)
        .await
        .with_context(|| format!("binding the API to {}", cfg.api))?;
    let api_addr = listener.local_addr()?;
    let grpc_listener = TcpListener::bind(cfg.raft)
        .await
        .with_context(|| format!("binding the gRPC (Raft and watch) address {}", cfg.raft))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let mut rcfg = shoal_raft::Config::new(
        cfg.node_id,
        cfg.data_dir.clone(),
        grpc_addr.to_string(),
        api_addr.to_string(),
    );
    rcfg.heartbeat_ms = cfg.heartbeat_ms;
    rcfg.election_timeout_min_ms = cfg.election_timeout_min_ms;
    rcfg.election_timeout_max_ms = cfg.election_timeout_max_ms;
    rcfg.snapshot_after_logs = cfg.snapshot_after_logs;
    let raft = RaftNode::open(rcfg)
        .await
        .context("opening the Raft store")?;
    let gossip = match cfg.gossip {
        None => {
            // A lone server without gossip: bootstrap alone and wait for its own election.
            raft.bootstrap_single()
                .await
                .context("bootstrapping the cluster")?;
            raft.wait_leader(Duration::from_secs(30))
                .await
                .context("waiting for a Raft leader")?;
            None
        }
        Some(addr) => {
            let mut gcfg = shoal_gossip::GossipConfig::new(format!("server-{}", cfg.node_id), addr);
            gcfg.seeds = cfg.join.clone();
            let initialized = raft
                .is_initialized()
                .await
                .context("reading the Raft store")?;
            let g = shoal_gossip::Gossip::start(
                gcfg,
                cluster::server_meta(&raft, initialized, cfg.dns),
            )
            .await
            .with_context(|| format!("starting gossip on {addr}"))?;
            Some(g)
        }
    };
    // One shutdown signal, two servers: broadcast it through a watch channel.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // A clustered server runs the agent role too, on its own gossip member, following its own
    // watch stream.
    let embedded = match (&gossip, cfg.gossip) {
        (Some(g), Some(gaddr)) => {
            let mut acfg = crate::agent::AgentConfig::new(cfg.data_dir.join("agent"), gaddr);
            acfg.name = Some(g.local_name().to_string());
            acfg.api = None;
            acfg.dns = cfg.dns;
            acfg.xds = cfg.xds;
            acfg.recursors = cfg.recursors.clone();
            acfg.servers = vec![format!("http://{grpc_addr}")];
            let started =
                crate::agent::start(acfg, Some(g.clone()), Some(api_addr), stop_rx.clone())
                    .await
                    .context("starting the embedded agent")?;
            Some(started)
        }
        _ => None,
    };
    let extra = match &embedded {
        Some(a) => extra.merge(crate::agent::routes(a.state.clone(), false)),
        None => extra,
    };
    let state = AppState {
        raft: raft.clone(),
        identity: Arc::new(Identity {
            account: cfg.account.clone(),
            region: cfg.region.clone(),
        }),
        metrics: Arc::new(Metrics::new()),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .context("building the HTTP client")?,
        members: gossip.clone().or(agent_gossip),
        gossip: gossip.clone(),
        removed: cluster::Removed::default(),
    };
    let removed = state.removed.clone();
    let app = extra.merge(router(state));
    tracing::info!(node_id = cfg.node_id, api = %api_addr, data_dir = %cfg.data_dir.display(), "server ready");
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let manager = gossip.clone().map(|g| {
        tokio::spawn(cluster::run(
            raft.clone(),
            g,
            cfg.dns,
            cfg.bootstrap_expect as usize,
            removed.clone(),
            stop_rx.clone(),
        ))
    });
    let hub = WatchHub::start(
        raft.clone(),
        WATCH_HISTORY,
        Duration::from_secs(5),
        stop_rx.clone(),
    );
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(WatchService::new(hub).into_server())
        .add_service(raft.grpc_service())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(grpc_listener).map(|conn| {
                // Raft RPCs are small and latency-bound: without NODELAY, Nagle's algorithm
                // holds replies back for up to 40 ms.
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            }),
            stopped(stop_rx.clone()),
        );
    let grpc = tokio::spawn(grpc);
    tracing::info!(grpc = %grpc_addr, "gRPC (Raft, watch) ready");
    let ready = on_ready(Running {
        raft: raft.clone(),
        api_addr,
        grpc_addr,
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
    ready.abort();
    if let Ok(Err(e)) = grpc.await {
        tracing::warn!(error = %e, "gRPC server ended with an error");
    }
    if let Some(m) = manager {
        let _ = m.await;
    }
    if let Some(a) = embedded {
        a.join().await;
    }
    if let Some(g) = gossip {
        if let Err(e) = g.shutdown().await {
            tracing::warn!(error = %e, "gossip did not stop cleanly");
        }
    }
    raft.shutdown().await.context("stopping Raft")?;
    served.context("serving the API")
}

/// The whole HTTP surface of a server: the App Mesh API, status and metrics.
pub fn router(state: AppState) -> Router {
    appmesh::routes()
        .merge(forward::routes())
        .merge(admin::routes())
        .fallback(crate::http::no_such_operation)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_example_config_is_valid() {
        let text = include_str!("../../../deploy/server.toml.example");
        let cfg: ServerConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.api.port(), 7070);
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.validate().unwrap();
        c.node_id = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--node-id must be at least 1"
        );
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.account = "123".into();
        assert!(c.validate().unwrap_err().to_string().contains("12 digits"));
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.election_timeout_min_ms = 100;
        assert!(c.validate().is_err());
        let e = toml::from_str::<ServerConfig>("node_id = 1\ndata_dir = \"/d\"\nbogus = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.gossip = Some("10.0.0.1:7946".parse().unwrap());
        c.api = "0.0.0.0:7070".parse().unwrap();
        c.raft = "10.0.0.1:7071".parse().unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "in a cluster --api must be this host's own address and a fixed port, not 0.0.0.0:7070"
        );
        c.api = "10.0.0.1:7070".parse().unwrap();
        c.validate().unwrap();
    }
}
