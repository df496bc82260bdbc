//! Agent mode: one per host, next to the Envoys of that host.
//!
//! An agent
//! * joins gossip and publishes the instances registered on its host (by `shoal register`, the
//!   HTTP API or its config file) with the result of their health checks ([`local`]);
//! * follows the model through a server's watch stream and keeps it in memory and on disk
//!   ([`follow`], [`store`]), so it goes on serving the last model when every server is gone,
//!   also after its own restart;
//! * joins the two into the view ([`view`]) that DNS ([`dns`]) answers from and the local
//!   Envoys' snapshots (`shoal_xds::Proxies`, served over ADS) are translated from.
//!
//! `Pipeline` (below) names every channel between these parts.
//!
//! Servers run the same parts in-process (`shoal dev`), following their own API's watch stream.

mod api;
mod config;
mod dns;
mod follow;
mod health;
mod identity;
mod local;
mod metrics;
mod store;
mod tls_files;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use shoal_gossip::{Gossip, GossipConfig, NodeMeta, Role};
use shoal_model::Model;
use tokio::sync::watch;

pub use api::routes;
pub use config::AgentConfig;
pub use follow::FollowStatus;
pub use store::ModelCache;

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
    /// The gossip keyring and its file, when gossip is sealed.
    pub gossip_keys: Option<crate::gossip_keys::GossipKeys>,
    /// The proxies' workload certificates.
    pub identity: Arc<Mutex<identity::IdentityStatus>>,
    /// Files connected proxies' configurations name that this host cannot read.
    pub missing_files: tls_files::Missing,
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

/// The file of the agent's proxy-token key, in its data dir.
pub const PROXY_TOKEN_KEY: &str = "proxy-token.key";

/// The agent's proxy-token key (`--xds-auth`): 32 random bytes, hex, in
/// `<data dir>/proxy-token.key`, made readable by its owner only at first start and kept.
fn proxy_token_key(data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(PROXY_TOKEN_KEY);
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        crate::files::write_new(
            &path,
            format!("{}\n", hex::encode(secret)).as_bytes(),
            0o600,
        )?;
    }
    read_proxy_token_key(&path)
}

/// Reads a proxy-token key file (`shoal envoy bootstrap --proxy-token-key`).
pub fn read_proxy_token_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the proxy-token key {}", path.display()))?;
    let key = hex::decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .with_context(|| {
            format!(
                "{} is not a proxy-token key (64 hex digits)",
                path.display()
            )
        })?;
    Ok(key)
}

/// The gRPC URLs of the servers to follow: the configured ones, then every server gossip knows
/// that has joined a formed cluster.
fn servers(cfg: &AgentConfig, gossip: &Gossip, tls: bool) -> Vec<String> {
    // The scheme follows this agent's TLS settings, whatever a configured URL says.
    let mut out: Vec<String> = cfg
        .servers
        .iter()
        .map(|s| crate::tls::grpc_url(s.split_once("://").map_or(s.as_str(), |(_, a)| a), tls))
        .collect();
    for m in gossip.members() {
        if m.meta.role == Role::Server && m.meta.raft_initialized {
            if let Some(g) = &m.meta.grpc_addr {
                let url = crate::tls::grpc_url(g, tls);
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

/// The agent's data path, hop by hop: the one place that names every channel from a server's
/// watch stream to DNS answers and Envoy configuration.
///
/// ```text
///  server Watch ──▶ follow::run ──[model: watch<Arc<Model>>]──┬──▶ view::run ──┬─[dns: SharedView]──▶ DNS handler
///  (model.json/.log written first)                             │       ▲        └─[inputs: watch<Inputs>]──▶ Proxies::run ──▶ ADS
///                                                              │       │ gossip endpoints (every host's instances + health)
///                                                              └──▶ local::run ──▶ health checks ──▶ gossip inst:<key>
/// ```
///
/// A route change therefore travels: API → Raft → the server's watch hub → `follow::run`
/// (cache written) → `model` → `view::run` (joined with the endpoints) → `inputs` →
/// `shoal_xds::Proxies::refresh` (translated per proxy, interned) → the ADS stream of each Envoy.
struct Pipeline {
    /// Hop 1, written by [`follow::run`]: the model as last received (or read from the cache).
    model: watch::Sender<Arc<Model>>,
    /// Hop 2, written by [`view::run`]: the model joined with the endpoints, published as the
    /// DNS view and as the xDS [`shoal_xds::Inputs`].
    view: view::View,
    /// Hop 3, fed by the view's inputs: one snapshot per connected Envoy.
    proxies: shoal_xds::Proxies,
}

impl Pipeline {
    /// The channels, starting from `model` (the cached one, or empty).
    fn new(model: Model) -> Self {
        let (model, _) = watch::channel(Arc::new(model));
        let view = view::View::new();
        let proxies = shoal_xds::Proxies::new(view.subscribe_inputs());
        Pipeline {
            model,
            view,
            proxies,
        }
    }
}

/// Starts the agent's parts until `stop` turns true: the model follower and its cache, the
/// local instances with their checks, the view, DNS and xDS (see [`Pipeline`] for how they
/// connect). On `gossip` when given (a server embedding the agent publishes through its own
/// member); otherwise the agent joins gossip itself as an agent member. The API is not served
/// here (see [`run`] and [`routes`]).
pub async fn start(
    cfg: AgentConfig,
    gossip: Option<(Gossip, Option<crate::gossip_keys::GossipKeys>)>,
    api_addr: Option<SocketAddr>,
    tls: Option<crate::tls::Live>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // Damaged kept certificates refuse the start, as a damaged model cache does: serving
    // none would silently break every mutual-TLS listener after a restart.
    let kept_identities = identity::load(&cfg.data_dir).context(
        "reading the kept workload certificates (delete the file to have them issued again)",
    )?;
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
        .collect::<Result<Vec<_>, _>>()?;
    // Every port is bound before anything starts, so that a taken one fails the start.
    let dns_sockets = match cfg.dns {
        Some(addr) => Some(dns::Sockets::bind(addr).await?),
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
    let dns_addr = dns_sockets.as_ref().map(|d| d.addr);
    let (gossip, gossip_keys) = match gossip {
        Some(g) => g,
        None => {
            let mut meta = NodeMeta::new(Role::Agent, env!("CARGO_PKG_VERSION"));
            meta.api_addr = api_addr.map(|a| a.to_string());
            meta.dns_addr = dns_addr.map(|a| a.to_string());
            meta.xds_addr = xds_addr.map(|a| a.to_string());
            meta.zone = cfg.zone.clone();
            let mut gcfg = GossipConfig::new(cfg.node_name(), cfg.gossip);
            gcfg.seeds = cfg.join.clone();
            let keys = crate::gossip_keys::open_for(
                &cfg.data_dir,
                cfg.gossip_key_file.as_deref(),
                cfg.gossip,
                cfg.insecure,
            )?;
            gcfg.keyring = keys.as_ref().map(|k| k.keyring.clone());
            let g = Gossip::start(gcfg, meta)
                .await
                .with_context(|| format!("starting gossip on {}", cfg.gossip))?;
            (g, keys)
        }
    };
    let gossip_addr = gossip
        .members()
        .into_iter()
        .find(|m| m.is_self)
        .map_or(cfg.gossip, |m| m.gossip_addr);

    let cfg = Arc::new(cfg);
    let pipeline = Pipeline::new(cached.unwrap_or_default());
    pipeline
        .view
        .set_identities(Arc::new(kept_identities.identities()));
    let identity_status = Arc::new(Mutex::new(identity::IdentityStatus::default()));
    let follow_status = Arc::new(Mutex::new(follow::FollowStatus {
        from_cache,
        ..Default::default()
    }));
    // A node's health probe of its own mutual-TLS listener presents the node's certificate,
    // as this agent holds it for the node's proxy.
    let inputs = pipeline.view.subscribe_inputs();
    let certs: health::ClientCertSource = Arc::new(move |mesh: &str, node: &str| {
        let proxy = shoal_xds::ProxyId {
            mesh: mesh.to_string(),
            kind: shoal_xds::ProxyKind::VirtualNode,
            name: node.to_string(),
        };
        inputs
            .borrow()
            .identities
            .certs
            .get(&proxy)
            .map(|c| health::ClientCert {
                chain_pem: c.chain_pem.clone(),
                key_pem: c.key_pem.clone(),
            })
    });
    let local = local::Local::new(registrations, registered, config_instances, Some(certs));
    let dns_handler = dns_sockets
        .as_ref()
        .map(|_| shoal_dns::DnsHandler::new(pipeline.view.shared(), dns::dns_config(&cfg)));
    let ads = match (&xds_listener, cfg.xds_auth) {
        (None, _) => None,
        (Some(_), false) => Some(shoal_xds::server::AdsServer::new(pipeline.proxies.clone())),
        (Some(_), true) => {
            let secret = proxy_token_key(&cfg.data_dir)?;
            Some(shoal_xds::server::AdsServer::with_proxy_tokens(
                pipeline.proxies.clone(),
                secret,
            ))
        }
    };
    let missing_files = tls_files::Missing::default();
    let state = AgentState {
        cfg: cfg.clone(),
        gossip: gossip.clone(),
        gossip_keys,
        identity: identity_status.clone(),
        missing_files: missing_files.clone(),
        model: pipeline.model.subscribe(),
        follow: follow_status.clone(),
        local: local.clone(),
        view: pipeline.view.clone(),
        dns: dns_handler.clone(),
        proxies: pipeline.proxies.clone(),
        ads: ads.clone(),
        bound: Arc::new(Bound {
            api: api_addr,
            dns: dns_addr,
            xds: xds_addr,
            gossip: gossip_addr,
        }),
    };

    let Pipeline {
        model,
        view,
        proxies,
    } = pipeline;
    let model_rx = model.subscribe();
    let mut tasks = Vec::new();
    {
        let (c, g) = (cfg.clone(), gossip.clone());
        let secure = tls.is_some();
        let manager = identity::Manager {
            path: cfg.data_dir.join(identity::FILE),
            kept: kept_identities,
            servers: Box::new(move || servers(&c, &g, secure)),
            tls: tls.clone(),
            proxies: proxies.clone(),
            view: view.clone(),
            validity: Duration::from_secs(cfg.workload_cert_ttl),
            status: identity_status,
        };
        tasks.push(tokio::spawn(manager.run(stop_rx.clone())));
    }
    {
        let (cfg, g) = (cfg.clone(), gossip.clone());
        let secure = tls.is_some();
        tasks.push(tokio::spawn(follow::run(
            move || servers(&cfg, &g, secure),
            tls,
            cache,
            model,
            follow_status,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(local::run(
        local,
        gossip.clone(),
        model_rx.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(view::run(
        view,
        gossip.clone(),
        model_rx,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(tls_files::run(
        proxies.clone(),
        missing_files,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(proxies.run(stop_rx.clone())));
    if let (Some(sockets), Some(handler)) = (dns_sockets, dns_handler) {
        tracing::info!(dns = %sockets.addr, "DNS ready");
        tasks.push(tokio::spawn(sockets.serve(handler, stop_rx.clone())));
    }
    if let (Some(listener), Some(ads)) = (xds_listener, ads) {
        let mut stop = stop_rx.clone();
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
        tracing::info!(xds = ?xds_addr, "xDS ready");
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
    crate::http::raise_descriptor_limit();
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
    let mut cfg = cfg;
    let joined = match crate::enroll::JoinWith::from_flags(
        cfg.tls_cert.as_ref(),
        cfg.join_token_file.as_ref(),
        cfg.join_api.as_ref(),
        cfg.tls_ca.as_ref(),
        cfg.insecure,
    ) {
        Some(with) => {
            let name = cfg.node_name();
            let (cert, key) =
                crate::enroll::enroll(&cfg.data_dir, with, shoal_pki::Role::Agent, &name, &[])
                    .await?;
            cfg.tls_cert = Some(cert);
            cfg.tls_key = Some(key);
            true
        }
        None => false,
    };
    let tls = crate::tls::Material::load(
        cfg.tls_ca.as_ref(),
        cfg.tls_cert.as_ref(),
        cfg.tls_key.as_ref(),
        shoal_pki::Role::Agent,
    )?;
    if tls.is_none() && !cfg.gossip.ip().is_loopback() {
        // Only with --insecure (validate refused it otherwise): say so at every start.
        tracing::warn!(
            gossip = %cfg.gossip,
            "--insecure: following servers beyond this host without TLS"
        );
    }
    if let Some(xds) = cfg.xds.filter(|a| !a.ip().is_loopback() && !cfg.xds_auth) {
        tracing::warn!(%xds, "--insecure: xDS listens beyond this host without --xds-auth; any client that names a proxy gets its configuration");
    }
    if let Some(api) = cfg.api.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(%api, "--insecure: the agent API (registrations) listens beyond this host without credentials");
    }
    let live = tls.map(crate::tls::Live::new).transpose()?;
    // An agent that joined with a token renews its own certificate.
    if let (true, Some(live), Some(api)) = (joined, &live, &cfg.join_api) {
        let renewal = crate::enroll::Renewal {
            data_dir: cfg.data_dir.clone(),
            api: api.clone(),
            role: shoal_pki::Role::Agent,
            name: cfg.node_name(),
            ips: Vec::new(),
            raft: None,
        };
        tokio::spawn(crate::enroll::renew(renewal, live.clone(), stop_rx.clone()));
    }
    let started = start(cfg, None, api_addr, live, stop_rx.clone()).await?;
    let state = started.state.clone();
    on_ready(state.clone());
    let mut stop = stop_rx.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match listener {
        Some(l) => {
            let limits = crate::http::Limits::from_process();
            crate::http::serve(
                "agent API",
                l,
                api::routes(state.clone(), true),
                limits,
                None,
                stopped,
            )
            .await;
        }
        None => stopped.await,
    }
    started.join().await;
    if let Err(e) = state.gossip.shutdown().await {
        tracing::warn!(error = %e, "gossip did not stop cleanly");
    }
    Ok(())
}
