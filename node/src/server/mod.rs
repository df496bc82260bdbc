//! Server mode: open the Raft store, form (today: bootstrap) the cluster, serve the HTTP API
//! until shutdown. Configuration is plain data, checked before any port is bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use shoal_raft::RaftNode;
use tokio::net::TcpListener;

mod admin;
mod appmesh;
mod auth;
pub use auth::bootstrap_keys;
mod cluster;
mod config;
mod forward;
mod join;
mod mesh_ca;
mod metrics;
pub mod rpc;
mod state;

pub use config::ServerConfig;
pub use state::{AppState, Identity};

use crate::watch::{WatchHub, WatchService};
use metrics::Metrics;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// Change batches a server keeps for watchers that resume (about one snapshot interval).
pub const WATCH_HISTORY: usize = 10_000;

/// A running server, for `dev` mode and tests that need the handle.
pub struct Running {
    /// The store.
    pub raft: RaftNode,
    /// The address the API listens on (resolved, for `:0`).
    pub api_addr: SocketAddr,
    /// The address the gRPC services (Raft, watch) listen on.
    pub grpc_addr: SocketAddr,
}

/// The server ended because its Raft core stopped by itself (a panic or a fatal storage
/// error); `shoal` exits with status 70 (sysexits' EX_SOFTWARE) so that systemd restarts it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CoreStopped(pub String);

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
    crate::http::raise_descriptor_limit();
    let mut cfg = cfg;
    // The name and addresses this server's certificate is for, when it joins with a token.
    let tls_name = format!("server-{}", cfg.node_id);
    let mut tls_ips: Vec<std::net::IpAddr> = [cfg.api.ip(), cfg.raft.ip()]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    if cfg.api.ip().is_unspecified() {
        // Renewals (and local clients) dial the API on loopback then.
        tls_ips.push(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let joined = match crate::enroll::JoinWith::from_flags(
        cfg.tls_cert.as_ref(),
        cfg.join_token_file.as_ref(),
        cfg.join_api.as_ref(),
        cfg.tls_ca.as_ref(),
        cfg.insecure,
    ) {
        Some(with) => {
            let (cert, key) = crate::enroll::enroll(
                &cfg.data_dir,
                with,
                shoal_pki::Role::Server,
                &tls_name,
                &tls_ips,
            )
            .await?;
            cfg.tls_cert = Some(cert);
            cfg.tls_key = Some(key);
            true
        }
        None => false,
    };
    let founded = if cfg.tls_bootstrap {
        let f = crate::enroll::found(
            &cfg.data_dir,
            &tls_name,
            &tls_ips,
            Duration::from_secs(cfg.tls_cert_ttl_seconds),
        )?;
        cfg.tls_ca = Some(f.ca.clone());
        cfg.tls_cert = Some(f.cert.clone());
        cfg.tls_key = Some(f.key.clone());
        Some(f)
    } else {
        None
    };
    let tls = crate::tls::Material::load(
        cfg.tls_ca.as_ref(),
        cfg.tls_cert.as_ref(),
        cfg.tls_key.as_ref(),
        shoal_pki::Role::Server,
    )?;
    if tls.is_none() && !cfg.raft.ip().is_loopback() {
        // Only with --insecure (validate refused it otherwise): say so at every start.
        tracing::warn!(
            raft = %cfg.raft,
            "--insecure: the cluster gRPC port (Raft, watch) listens beyond loopback without \
             TLS; anyone who reaches it can forge Raft messages and read the model"
        );
    }
    let api_protected = cfg.api_auth && cfg.api_tls;
    if !(cfg.api.ip().is_loopback() || api_protected) {
        // Only with --insecure, as above.
        tracing::warn!(
            api = %cfg.api,
            auth = cfg.api_auth,
            https = cfg.api_tls,
            "--insecure: the API listens beyond loopback without both --api-auth and \
             --api-tls; whoever reaches it can read or change the mesh, or read the traffic"
        );
    }
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
    rcfg.tls = tls.as_ref().map(crate::tls::Material::raft_client);
    let live = tls.clone().map(crate::tls::Live::new).transpose()?;
    let raft = match RaftNode::open(rcfg.clone()).await {
        Err(shoal_raft::Error::Store(reason)) if cfg.discard_untrusted_store => {
            // The operator asked for it: keep the damaged store aside for inspection and start
            // as a new incarnation, which the cluster re-adds and re-replicates.
            let raft_dir = cfg.data_dir.join("raft");
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = cfg.data_dir.join(format!("raft.untrusted-{stamp}"));
            tracing::error!(%reason, aside = %aside.display(), "the Raft store cannot be trusted; --discard-untrusted-store: moving it aside and starting empty, as a new member");
            std::fs::rename(&raft_dir, &aside).with_context(|| {
                format!("moving {} aside to {}", raft_dir.display(), aside.display())
            })?;
            RaftNode::open(rcfg)
                .await
                .context("opening a new Raft store")?
        }
        opened => opened.context("opening the Raft store")?,
    };
    let mut gossip_keys = None;
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
            gossip_keys = crate::gossip_keys::open_for(
                &cfg.data_dir,
                cfg.gossip_key_file.as_deref(),
                addr,
                cfg.insecure,
            )?;
            gcfg.keyring = gossip_keys.as_ref().map(|k| k.keyring.clone());
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
            acfg.servers = vec![crate::tls::grpc_url(grpc_addr, tls.is_some())];
            acfg.tls_ca.clone_from(&cfg.tls_ca);
            acfg.tls_cert.clone_from(&cfg.tls_cert);
            acfg.tls_key.clone_from(&cfg.tls_key);
            acfg.insecure = cfg.insecure;
            // It follows this server's watch stream with the server's own certificate.
            let started = crate::agent::start(
                acfg,
                Some((g.clone(), gossip_keys.clone())),
                Some(api_addr),
                live.clone(),
                stop_rx.clone(),
            )
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
        forwarder: Arc::new(rpc::Forwarder::new(live.clone())),
        members: gossip.clone().or(agent_gossip),
        gossip: gossip.clone(),
        removed: cluster::Removed::default(),
        auth: cfg.api_auth,
        cert_ttl: Duration::from_secs(cfg.tls_cert_ttl_seconds),
    };
    let removed = state.removed.clone();
    // A server that joined with a token renews its own certificate, through the server it
    // joined; the server that founded the cluster's CA, through its own API.
    let renew_through = if joined {
        cfg.join_api.clone()
    } else if founded.is_some() {
        let host = match api_addr.ip() {
            ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip => ip,
        };
        let scheme = if cfg.api_tls { "https" } else { "http" };
        Some(format!(
            "{scheme}://{}",
            SocketAddr::new(host, api_addr.port())
        ))
    } else {
        None
    };
    if let (Some(l), Some(api)) = (&live, renew_through) {
        let renewal = crate::enroll::Renewal {
            data_dir: cfg.data_dir.clone(),
            api,
            role: shoal_pki::Role::Server,
            name: tls_name,
            ips: tls_ips,
            raft: Some(raft.clone()),
        };
        tokio::spawn(crate::enroll::renew(renewal, l.clone(), stop_rx.clone()));
    }
    tokio::spawn(mesh_ca::ensure(
        state.clone(),
        cfg.trust_domain.clone(),
        stop_rx.clone(),
    ));
    if let Some(key) = &cfg.tls_ca_key {
        let ca = read_cluster_ca(cfg.tls_ca.as_deref(), key)?;
        tokio::spawn(join::import_ca(state.clone(), ca, stop_rx.clone()));
    }
    if let Some((ca, ca_key)) = founded.and_then(|f| Some((f.to_import?, f.ca_key))) {
        let (st, stop) = (state.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if !join::import_ca(st, ca, stop).await {
                return;
            }
            // The servers sign from the replicated copy now: the key leaves this disk.
            match crate::enroll::forget_ca_key(&ca_key) {
                Ok(()) => tracing::info!(
                    "--tls-bootstrap: the cluster CA is replicated; its key's file is deleted"
                ),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot delete the CA key's file; delete it by hand")
                }
            }
        });
    }
    // Authentication in front of everything this API serves, the embedded agent's routes too.
    let app = extra
        .merge(router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    tracing::info!(node_id = cfg.node_id, api = %api_addr, data_dir = %cfg.data_dir.display(), "server ready");
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let manager = gossip.clone().map(|g| {
        tokio::spawn(cluster::run(
            raft.clone(),
            g,
            cfg.dns,
            cfg.expect(),
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
    // With TLS, the handshake (ours, so that a renewed certificate is presented without a
    // restart) already refused any client without a certificate from the cluster CA; the Raft
    // service further takes server certificates only.
    let (raft_plain, raft_guarded) = if tls.is_some() {
        let guarded = tonic::service::interceptor::InterceptedService::new(
            raft.grpc_service(),
            crate::tls::require_server_peer,
        );
        (None, Some(guarded))
    } else {
        (Some(raft.grpc_service()), None)
    };
    // The leader's Forward service takes server certificates only, as Raft does.
    let forward = rpc::forward::forward_server::ForwardServer::new(rpc::ForwardService::new(
        raft.clone(),
        gossip.clone(),
        removed.clone(),
    ));
    let (forward_plain, forward_guarded) = if tls.is_some() {
        let guarded = tonic::service::interceptor::InterceptedService::new(
            forward,
            crate::tls::require_server_peer,
        );
        (None, Some(guarded))
    } else {
        (Some(forward), None)
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(WatchService::new(hub).into_server())
        // Any member's certificate (the handshake required one from the cluster CA) may ask
        // for its proxies' certificates.
        .add_service(crate::watch::ca::grpc::mesh_ca_server::MeshCaServer::new(
            mesh_ca::MeshCaService::new(state.clone()),
        ))
        .add_optional_service(raft_plain)
        .add_optional_service(raft_guarded)
        .add_optional_service(forward_plain)
        .add_optional_service(forward_guarded);
    let grpc_stop = stopped(stop_rx.clone());
    let grpc: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &live {
            Some(l) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::grpc_incoming(grpc_listener, l.grpc_server_config()?),
                grpc_stop,
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener).map(|conn| {
                    // Raft RPCs are small and latency-bound: without NODELAY, Nagle's
                    // algorithm holds replies back for up to 40 ms.
                    if let Ok(c) = &conn {
                        let _ = c.set_nodelay(true);
                    }
                    conn
                }),
                grpc_stop,
            )),
        };
    let grpc = tokio::spawn(grpc);
    tracing::info!(grpc = %grpc_addr, "gRPC (Raft, watch) ready");
    let ready = on_ready(Running {
        raft: raft.clone(),
        api_addr,
        grpc_addr,
    });
    let limits = crate::http::Limits::from_process();
    let api_tls = match (&live, cfg.api_tls) {
        (Some(l), true) => Some(l.api_server_config()?),
        _ => None,
    };
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        "API connection limits"
    );
    tokio::select! {
        () = crate::http::serve("server API", listener, app, limits, api_tls, stopped(stop_rx)) => {}
        why = raft.core_stopped() => {
            // Nothing can be written or read any more: leave, so that the supervisor restarts
            // this server on its store (verified again at start) instead of it answering
            // "healthy" with a dead core.
            tracing::error!(reason = %why, "the Raft core stopped; exiting");
            ready.abort();
            return Err(CoreStopped(why).into());
        }
    };
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
    raft.shutdown().await.context("stopping Raft")
}

/// The CA to import (`--tls-ca` and `--tls-ca-key`), checked to be a usable CA now.
fn read_cluster_ca(
    cert: Option<&std::path::Path>,
    key: &std::path::Path,
) -> anyhow::Result<shoal_model::ClusterCa> {
    let cert = cert.context("--tls-ca-key needs --tls-ca (the CA certificate)")?;
    let cert_pem =
        std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    shoal_pki::Ca::from_pem(&cert_pem, &key_pem).with_context(|| {
        format!(
            "{} and {} are not a CA and its key",
            cert.display(),
            key.display()
        )
    })?;
    Ok(shoal_model::ClusterCa { cert_pem, key_pem })
}

/// The whole HTTP surface of a server: the App Mesh API, status and metrics.
pub fn router(state: AppState) -> Router {
    appmesh::routes()
        .merge(admin::routes())
        .merge(auth::routes())
        .merge(join::routes())
        .merge(mesh_ca::routes())
        .fallback(crate::http::no_such_operation)
        .with_state(state)
}
