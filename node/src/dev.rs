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
    /// Turn the security machinery on, locally: a cluster CA and certificates in
    /// `<data-dir>/tls`, the API over HTTPS with SigV4 required, mutual TLS on Raft and the
    /// watch stream, gossip sealed with a key in `<data-dir>/tls/gossip.key`; writes the CA to `<data-dir>/ca.pem` and an AWS credentials file with a
    /// profile `shoal` to `<data-dir>/credentials`.
    #[arg(long)]
    pub secure: bool,
}

/// What `shoal dev --secure` makes in the data dir: the CA and the certificates of the server
/// and its agent (kept across restarts on the same data dir).
struct DevPki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    agent: (PathBuf, PathBuf),
}

fn dev_pki(data_dir: &std::path::Path, ips: &[std::net::IpAddr]) -> anyhow::Result<DevPki> {
    let dir = data_dir.join("tls");
    let pki = DevPki {
        ca: data_dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server-key.pem")),
        agent: (dir.join("agent.pem"), dir.join("agent-key.pem")),
    };
    if pki.ca.exists() {
        return Ok(pki);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = shoal_pki::Ca::generate("shoal dev CA").context("creating the dev CA")?;
    let validity = shoal_pki::LEAF_VALIDITY;
    let server = ca.issue(shoal_pki::Role::Server, "dev", &[], ips, validity)?;
    let agent = ca.issue(shoal_pki::Role::Agent, "dev", &[], &[], validity)?;
    crate::files::write_new(&dir.join("ca-key.pem"), ca.key_pem().as_bytes(), 0o600)?;
    crate::files::write_new(&pki.server.1, server.key_pem.as_bytes(), 0o600)?;
    crate::files::write_new(&pki.server.0, server.cert_pem.as_bytes(), 0o644)?;
    crate::files::write_new(&pki.agent.1, agent.key_pem.as_bytes(), 0o600)?;
    crate::files::write_new(&pki.agent.0, agent.cert_pem.as_bytes(), 0o644)?;
    crate::files::write_new(&pki.ca, ca.cert_pem().as_bytes(), 0o644)?;
    Ok(pki)
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
    let secure = args.secure;
    let pki = if secure {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let pki = dev_pki(&data_dir, &[args.api.ip(), args.raft.ip()])?;
        cfg.tls_ca = Some(pki.ca.clone());
        cfg.tls_cert = Some(pki.server.0.clone());
        cfg.tls_key = Some(pki.server.1.clone());
        cfg.api_auth = true;
        cfg.api_tls = true;
        Some(pki)
    } else {
        None
    };

    // The agent follows the server's own watch stream and serves its routes on the server's
    // API, so `shoal register` works against the default address.
    let mut acfg = AgentConfig::new(data_dir.join("agent"), args.gossip);
    acfg.name = Some("dev".into());
    acfg.api = None;
    acfg.dns = Some(args.dns);
    acfg.xds = Some(args.xds);
    acfg.recursors = args.recursor.clone();
    acfg.servers = vec![crate::tls::grpc_url(args.raft, secure)];
    if let Some(p) = &pki {
        acfg.tls_ca = Some(p.ca.clone());
        acfg.tls_cert = Some(p.agent.0.clone());
        acfg.tls_key = Some(p.agent.1.clone());
        // Sealed gossip too, with a key made at first start.
        let key = data_dir.join("tls").join("gossip.key");
        if !key.exists() {
            let text = format!("{}\n", shoal_gossip::GossipKey::generate().to_base64());
            crate::files::write_new(&key, text.as_bytes(), 0o600)?;
        }
        acfg.gossip_key_file = Some(key);
    }
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
    let ca_path = pki.as_ref().map(|p| p.ca.clone());
    let creds_path = data_dir.join("credentials");
    let region = cfg.region.clone();
    server::run_with(cfg, crate::shutdown_signal(), move |running| {
        tokio::spawn(async move {
            let empty = running.raft.read(|m| m.iter().next().is_none());
            let scheme = if secure { "https" } else { "http" };
            let addr = format!("{scheme}://{}", running.api_addr);
            let client = match &ca_path {
                None => Client::unsigned(&addr),
                Some(ca) => match dev_credentials(&running.raft, &creds_path, &region).await {
                    Ok(creds) => std::fs::read_to_string(ca)
                        .context("reading the dev CA")
                        .and_then(|pem| Client::with_tls(&addr, &pem, Some(creds))),
                    Err(e) => Err(e),
                },
            };
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "shoal dev --secure could not set up its key");
                    return;
                }
            };
            if load && empty {
                if let Err(e) = load_example(&client).await {
                    tracing::error!(error = %format!("{e:#}"), "loading the example mesh failed");
                    return;
                }
                tracing::info!("example mesh `colorapp` loaded");
            }
            match &ca_path {
                None => println!("shoal dev is ready: API {addr}  (try: SHOAL_ADDR={addr} shoal get virtual-nodes --mesh colorapp)"),
                Some(ca) => {
                    println!("shoal dev --secure is ready: API {addr} (HTTPS, SigV4 required), CA {}, credentials {} (profile shoal)", ca.display(), creds_path.display());
                    println!("  try: AWS_SHARED_CREDENTIALS_FILE={} aws --profile shoal appmesh list-meshes --endpoint-url {addr} --ca-bundle {}", creds_path.display(), ca.display());
                }
            }
            if let Some(d) = dns {
                println!("DNS on {d}  (try: dig @{} -p {} colorteller.colorapp.local)", d.ip(), d.port());
            }
        })
    }, routes, Some(gossip))
    .await?;
    let _ = agent.await;
    Ok(())
}

/// The dev server's key: bootstrapped on first start and written as profile `shoal` to
/// `path` (0600); read back from there on later starts with the same data dir.
async fn dev_credentials(
    raft: &shoal_raft::RaftNode,
    path: &std::path::Path,
    region: &str,
) -> anyhow::Result<crate::sign::Credentials> {
    if !path.exists() {
        let key = server::bootstrap_keys(raft)
            .await
            .context("committing the dev keys")?
            .map_err(|e| anyhow::anyhow!("bootstrapping the dev keys: {e}"))?;
        crate::files::write_new(
            path,
            format!(
                "[shoal]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                key.id, key.secret
            )
            .as_bytes(),
            0o600,
        )?;
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("{} has no {k}", path.display()))
    };
    Ok(crate::sign::Credentials {
        access_key: field("aws_access_key_id =")?,
        secret: field("aws_secret_access_key =")?,
        region: region.to_string(),
    })
}

async fn load_example(c: &Client) -> anyhow::Result<()> {
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
