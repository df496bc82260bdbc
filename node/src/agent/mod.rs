//! Agent mode: one per host, next to the Envoys of that host.
//!
//! An agent
//! * joins gossip and publishes the instances registered on its host (by `shoal register`, the
//!   HTTP API or its config file) with the result of their health checks ([`local`]);
//! * follows the model through a server's watch stream and keeps it in memory and on disk
//!   ([`follow`], [`store`]), so it goes on serving the last model when every server is gone,
//!   also after its own restart;
//! * joins the two into the view and answers DNS from it ([`view`]).
//!
//! Servers run the same parts in-process (`shoal dev`), following their own API's watch stream.

mod api;
pub mod follow;
pub mod health;
pub mod local;
mod metrics;
pub mod store;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use shoal_gossip::{Gossip, GossipConfig, NodeMeta, Role};
use shoal_model::discovery::Instance;
use shoal_model::Model;
use tokio::sync::watch;

pub use api::routes;

/// Default DNS address of an agent.
pub fn default_dns() -> SocketAddr {
    "127.0.0.1:8600".parse().expect("literal")
}

/// Default HTTP API address of an agent (the same port as a server's: a host runs one or the
/// other, and `shoal register` finds either at the default address).
pub fn default_api() -> SocketAddr {
    "127.0.0.1:7070".parse().expect("literal")
}

fn default_ttl() -> u32 {
    5
}

/// An agent's configuration, from flags or a TOML file (`shoal agent --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name in gossip: stable across restarts, unique in the cluster (default: the
    /// host name). A restarted agent keeps its name and replaces its old state.
    #[serde(default)]
    pub name: Option<String>,
    /// Where registrations and the model cache live.
    pub data_dir: PathBuf,
    /// Gossip address (UDP).
    pub gossip: SocketAddr,
    /// Gossip addresses of existing members (servers or agents).
    #[serde(default)]
    pub join: Vec<String>,
    /// HTTP API address (registration, status, metrics); `None` when a server embeds the agent
    /// and serves its routes on its own API.
    #[serde(default = "default_api_opt")]
    pub api: Option<SocketAddr>,
    /// DNS address (UDP and TCP); `None` turns DNS off.
    #[serde(default = "default_dns_opt")]
    pub dns: Option<SocketAddr>,
    /// xDS (ADS) address the local Envoys connect to; `None` turns xDS off.
    #[serde(default = "default_xds_opt")]
    pub xds: Option<SocketAddr>,
    /// DNS servers for names outside the mesh; none: such names get REFUSED.
    #[serde(default)]
    pub recursors: Vec<SocketAddr>,
    /// TTL of DNS answers, seconds.
    #[serde(default = "default_ttl")]
    pub dns_ttl: u32,
    /// Availability zone of the host, gossiped with its metadata.
    #[serde(default)]
    pub zone: Option<String>,
    /// gRPC URLs of servers to follow besides those found through gossip.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Instances registered by the config file (re-read at every start).
    #[serde(default, rename = "instance")]
    pub instances: Vec<ConfigInstance>,
}

fn default_api_opt() -> Option<SocketAddr> {
    Some(default_api())
}

/// Default xDS address of an agent.
pub fn default_xds() -> SocketAddr {
    "127.0.0.1:18000".parse().expect("literal")
}

fn default_xds_opt() -> Option<SocketAddr> {
    Some(default_xds())
}

fn default_dns_opt() -> Option<SocketAddr> {
    Some(default_dns())
}

/// An instance in the agent's config file (`[[instance]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInstance {
    /// Cloud Map namespace.
    #[serde(default)]
    pub namespace: String,
    /// Cloud Map service.
    #[serde(default)]
    pub service: String,
    /// Mesh of the virtual node.
    #[serde(default)]
    pub mesh: String,
    /// Virtual node.
    #[serde(default)]
    pub virtual_node: String,
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: std::net::IpAddr,
    /// Port.
    pub port: u16,
    /// Custom attributes.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl ConfigInstance {
    /// The instance, checked.
    pub fn to_instance(&self) -> anyhow::Result<Instance> {
        Ok(Instance {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            mesh: self.mesh.clone(),
            virtual_node: self.virtual_node.clone(),
            id: self.id.clone(),
            address: self.address,
            port: self.port,
            attributes: self.attributes.clone(),
        }
        .normalize()?)
    }
}

impl AgentConfig {
    /// A configuration with defaults for everything but the data dir and gossip address.
    pub fn new(data_dir: PathBuf, gossip: SocketAddr) -> Self {
        AgentConfig {
            name: None,
            data_dir,
            gossip,
            join: Vec::new(),
            api: Some(default_api()),
            dns: Some(default_dns()),
            xds: Some(default_xds()),
            recursors: Vec::new(),
            dns_ttl: default_ttl(),
            zone: None,
            servers: Vec::new(),
            instances: Vec::new(),
        }
    }

    /// Checks the configuration before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.dns_ttl > 86_400 {
            bail!("--dns-ttl must be at most 86400 seconds");
        }
        if !self.join.is_empty() && (self.gossip.ip().is_unspecified() || self.gossip.port() == 0) {
            bail!(
                "--gossip must be this host's own address and a fixed port to join others, not {}",
                self.gossip
            );
        }
        for i in &self.instances {
            i.to_instance()
                .with_context(|| format!("instance {:?} in the config", i.id))?;
        }
        Ok(())
    }

    /// The gossip name: the configured one, else the host name, else `agent-<gossip addr>`.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("agent-{}", self.gossip))
    }
}

/// Everything the agent's tasks and API share. Cheap to clone.
#[derive(Clone)]
pub struct AgentState {
    /// The configuration it runs with.
    pub cfg: Arc<AgentConfig>,
    /// Gossip membership and the endpoint view.
    pub gossip: Gossip,
    /// The model, as last received (or read from the cache).
    pub model: watch::Receiver<Arc<Model>>,
    /// Where the model comes from.
    pub follow: Arc<Mutex<follow::FollowStatus>>,
    /// Instances registered on this host and their health.
    pub local: local::Local,
    /// The view DNS answers from, and its counters.
    pub view: view::View,
    /// The DNS handler's counters, when DNS is on.
    pub dns: Option<shoal_dns::DnsHandler>,
    /// The connected Envoys and their snapshots.
    pub proxies: shoal_xds::Proxies,
    /// The ADS server's counters, when xDS is on.
    pub ads: Option<shoal_xds::server::AdsServer>,
    /// Addresses actually bound (for `:0`).
    pub bound: Arc<Bound>,
}

/// Addresses an agent actually listens on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    /// HTTP API, unless embedded.
    pub api: Option<SocketAddr>,
    /// DNS (UDP and TCP), if on.
    pub dns: Option<SocketAddr>,
    /// xDS, if on.
    pub xds: Option<SocketAddr>,
    /// Gossip.
    pub gossip: SocketAddr,
}

/// The gRPC URLs of the servers to follow: the configured ones, then every server gossip knows
/// that has joined a formed cluster.
fn servers(cfg: &AgentConfig, gossip: &Gossip) -> Vec<String> {
    let mut out = cfg.servers.clone();
    for m in gossip.members() {
        if m.meta.role == Role::Server && m.meta.raft_initialized {
            if let Some(g) = &m.meta.grpc_addr {
                let url = format!("http://{g}");
                if !out.contains(&url) {
                    out.push(url);
                }
            }
        }
    }
    out
}

/// A started agent: its state and the tasks that run until the stop signal.
pub struct Started {
    /// The shared state (for the API routes).
    pub state: AgentState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Started {
    /// Waits (at most 5 s each) for the agent's tasks after the stop signal.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Starts the agent's parts until `stop` turns true: the model follower and its cache, the
/// local instances with their checks, the view, and DNS. On `gossip` when given (a server
/// embedding the agent publishes through its own member); otherwise the agent joins gossip
/// itself as an agent member. The API is not served here (see [`run`] and [`routes`]).
pub async fn start(
    cfg: AgentConfig,
    gossip: Option<Gossip>,
    api_addr: Option<SocketAddr>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let cache = store::ModelCache::new(&cfg.data_dir);
    let cached = cache
        .load()
        .context("reading the model cache (delete it to start empty)")?;
    let from_cache = cached.is_some();
    if let Some(m) = &cached {
        tracing::info!(
            revision = m.revision(),
            "serving the cached model until a server answers"
        );
    }
    let registrations = store::Registrations::new(&cfg.data_dir);
    let registered = registrations.load().context("reading the registrations")?;
    let config_instances = cfg
        .instances
        .iter()
        .map(|i| i.to_instance())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dns_sockets = match cfg.dns {
        Some(addr) => {
            let udp = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding DNS (udp) to {addr}"))?;
            let bound = udp.local_addr()?;
            let tcp = tokio::net::TcpListener::bind(bound)
                .await
                .with_context(|| format!("binding DNS (tcp) to {bound}"))?;
            Some((udp, tcp, bound))
        }
        None => None,
    };
    let xds_listener = match cfg.xds {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding xDS to {addr}"))?,
        ),
        None => None,
    };
    let xds_addr = xds_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let gossip = match gossip {
        Some(g) => g,
        None => {
            let mut meta = NodeMeta::new(Role::Agent, env!("CARGO_PKG_VERSION"));
            meta.api_addr = api_addr.map(|a| a.to_string());
            meta.dns_addr = dns_sockets.as_ref().map(|(_, _, a)| a.to_string());
            meta.xds_addr = xds_addr.map(|a| a.to_string());
            meta.zone = cfg.zone.clone();
            let mut gcfg = GossipConfig::new(cfg.node_name(), cfg.gossip);
            gcfg.seeds = cfg.join.clone();
            Gossip::start(gcfg, meta)
                .await
                .with_context(|| format!("starting gossip on {}", cfg.gossip))?
        }
    };
    let gossip_addr = gossip
        .members()
        .into_iter()
        .find(|m| m.is_self)
        .map_or(cfg.gossip, |m| m.gossip_addr);

    let cfg = Arc::new(cfg);
    let (model_tx, model_rx) = watch::channel(Arc::new(cached.unwrap_or_default()));
    let follow_status = Arc::new(Mutex::new(follow::FollowStatus {
        from_cache,
        ..Default::default()
    }));
    let local = local::Local::new(registrations, registered, config_instances);
    let view = view::View::new();
    let dns_handler = dns_sockets
        .as_ref()
        .map(|_| shoal_dns::DnsHandler::new(view.shared(), view::dns_config(&cfg)));
    let proxies = shoal_xds::Proxies::new(view.subscribe_inputs());
    let ads = xds_listener
        .as_ref()
        .map(|_| shoal_xds::server::AdsServer::new(proxies.clone()));
    let state = AgentState {
        cfg: cfg.clone(),
        gossip: gossip.clone(),
        model: model_rx.clone(),
        follow: follow_status.clone(),
        local: local.clone(),
        view: view.clone(),
        dns: dns_handler.clone(),
        proxies: proxies.clone(),
        ads: ads.clone(),
        bound: Arc::new(Bound {
            api: api_addr,
            dns: dns_sockets.as_ref().map(|(_, _, a)| *a),
            xds: xds_addr,
            gossip: gossip_addr,
        }),
    };

    let mut tasks = Vec::new();
    {
        let (cfg, g) = (cfg.clone(), gossip.clone());
        tasks.push(tokio::spawn(follow::run(
            move || servers(&cfg, &g),
            cache,
            model_tx,
            follow_status,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(local::run(
        local.clone(),
        gossip.clone(),
        model_rx.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(view::run(
        view.clone(),
        gossip.clone(),
        model_rx.clone(),
        stop_rx.clone(),
    )));
    if let (Some((udp, tcp, addr)), Some(handler)) = (dns_sockets, dns_handler) {
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = shoal_dns::serve_with(udp, tcp, handler, stopped).await {
                tracing::error!(error = %e, "the DNS server stopped");
            }
        }));
        tracing::info!(dns = %addr, "DNS ready");
    }
    tasks.push(tokio::spawn(proxies.run(stop_rx.clone())));
    if let (Some(listener), Some(ads)) = (xds_listener, ads) {
        let mut stop = stop_rx.clone();
        let addr = xds_addr;
        tasks.push(tokio::spawn(async move {
            // `serve` ends every ADS stream at shutdown (they never end by themselves).
            let served = ads
                .serve(listener, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the xDS server stopped");
            }
        }));
        tracing::info!(xds = ?addr, "xDS ready");
    }
    tracing::info!(name = %gossip.local_name(), api = ?api_addr, gossip = %gossip_addr, "agent ready");
    Ok(Started { state, tasks })
}

/// Runs an agent until `shutdown` resolves: [`start`] on its own gossip member, plus its HTTP
/// API when configured. `on_ready` gets the shared state once every port is bound (tests and
/// `shoal dev` use it).
pub async fn run<F>(
    cfg: AgentConfig,
    shutdown: F,
    on_ready: impl FnOnce(AgentState),
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    cfg.validate()?;
    let listener = match cfg.api {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the agent API to {addr}"))?,
        ),
        None => None,
    };
    let api_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let started = start(cfg, None, api_addr, stop_rx.clone()).await?;
    let state = started.state.clone();
    on_ready(state.clone());
    let mut stop = stop_rx.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = match listener {
        Some(l) => axum::serve(l, api::routes(state.clone(), true))
            .with_graceful_shutdown(stopped)
            .await
            .context("serving the agent API"),
        None => {
            stopped.await;
            Ok(())
        }
    };
    started.join().await;
    if let Err(e) = state.gossip.shutdown().await {
        tracing::warn!(error = %e, "gossip did not stop cleanly");
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_example_config_is_valid() {
        let cfg: AgentConfig = toml::from_str(include_str!("../../../deploy/agent.toml.example"))
            .expect("the example parses");
        cfg.validate().unwrap();
        assert_eq!(cfg.instances.len(), 1);
        assert_eq!(
            cfg.instances[0].to_instance().unwrap().key(),
            "apps.local/colorteller/colorteller-red-1"
        );
        assert_eq!(cfg.dns, Some("127.0.0.1:8600".parse().unwrap()));
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let mut c = AgentConfig::new("/tmp/x".into(), "0.0.0.0:7946".parse().unwrap());
        c.validate().unwrap();
        c.join = vec!["10.0.0.1:7946".into()];
        assert!(c.validate().unwrap_err().to_string().contains("--gossip"));
        c.join.clear();
        c.instances.push(ConfigInstance {
            namespace: "apps.local".into(),
            service: "web".into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: "bad/id".into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            attributes: Default::default(),
        });
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("bad/id") && e.contains("instance id"), "{e}");
        assert!(toml::from_str::<AgentConfig>(
            "data_dir = \"/x\"\ngossip = \"1.2.3.4:1\"\nnope = 1"
        )
        .is_err());
    }
}
