//! The proxies' workload certificates, as a SPIRE agent kept them for App Mesh's Envoys: for
//! every Envoy connected to this agent, a private key made here (it never leaves the host but
//! to that Envoy, over its own ADS stream), a certificate from the mesh CA for it (a CSR sent
//! to a server, `shoal.v1.MeshCa/SignWorkload`, over the cluster's mutual TLS), renewed at
//! half its life, and the mesh CA's trust bundle. They are handed to the xDS view
//! ([`shoal_xds::Identities`]), which serves each proxy its own.
//!
//! **Fail-static**: every certificate is written to `<data-dir>/identities.json` (mode 0600,
//! it holds the keys) before it is served, and read back at start, so an Envoy that restarts
//! while every server is down still gets its certificate from its agent; renewal resumes when
//! a server answers.
//!
//! **Revocation**: a server signs only for a virtual node or gateway that exists (after a
//! linearizable read); once one is deleted, its proxy's certificate is not renewed, and ends.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_xds::{Identities, ProxyId, ProxyKind, WorkloadCert};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::unix_now as now;
use crate::watch::ca::grpc::mesh_ca_client::MeshCaClient;
use crate::watch::ca::{SignInput, SignOutput, SignRequest, TrustBundle, TrustBundleRequest};

/// The file the identities are kept in, in the agent's data dir.
pub const FILE: &str = "identities.json";

/// How often the agent looks for proxies without a certificate, or due for renewal.
const TICK: Duration = Duration::from_secs(1);

/// How often the agent fetches the trust bundle (a rotation's new root reaches every proxy
/// within this, without waiting for renewals).
const BUNDLE_EVERY: Duration = Duration::from_secs(60);

/// What the agent reports about its workload certificates (`/v1/agent/status`, metrics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityStatus {
    /// Certificates issued to this agent's proxies since start (renewals included).
    pub issued: u64,
    /// Requests that failed since start.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The soonest expiry among the certificates held (Unix seconds).
    pub soonest_expiry: Option<u64>,
    /// Certificates held.
    pub held: usize,
    /// The mesh CA's trust domain, once known.
    pub trust_domain: Option<String>,
}

/// One proxy's certificate as kept on disk.
#[derive(Clone, Serialize, Deserialize)]
struct Held {
    mesh: String,
    gateway: bool,
    name: String,
    /// The SPIFFE id the certificate carries, as the server issued it.
    spiffe_id: String,
    chain_pem: String,
    key_pem: String,
    expiration: u64,
    /// When to renew (Unix seconds): half the certificate's life after it was issued.
    renew_at: u64,
}

impl Held {
    fn proxy(&self) -> ProxyId {
        ProxyId {
            mesh: self.mesh.clone(),
            kind: if self.gateway {
                ProxyKind::VirtualGateway
            } else {
                ProxyKind::VirtualNode
            },
            name: self.name.clone(),
        }
    }
}

/// The file's contents.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    trust_domain: Option<String>,
    bundle_pem: String,
    certs: Vec<Held>,
}

/// What the agent holds: read from `identities.json` at start ([`load`]), kept up to date by
/// the [`Manager`]. The certificates are by proxy in memory, a list on disk.
#[derive(Default)]
pub struct Kept {
    trust_domain: Option<String>,
    bundle_pem: String,
    certs: BTreeMap<ProxyId, Held>,
}

impl Kept {
    /// The xDS view of it.
    pub fn identities(&self) -> Identities {
        Identities {
            trust_domain: self.trust_domain.clone(),
            bundle_pem: self.bundle_pem.clone(),
            certs: self
                .certs
                .iter()
                .map(|(p, h)| {
                    (
                        p.clone(),
                        WorkloadCert {
                            spiffe_id: h.spiffe_id.clone(),
                            chain_pem: h.chain_pem.clone(),
                            key_pem: h.key_pem.clone(),
                            expiration: h.expiration,
                        },
                    )
                })
                .collect(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            trust_domain: self.trust_domain.clone(),
            bundle_pem: self.bundle_pem.clone(),
            certs: self.certs.values().cloned().collect(),
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }
}

/// Reads the kept identities (fail-static: served before any server answers). A damaged
/// file is an error: the caller refuses to start rather than hand out nothing silently.
pub fn load(data_dir: &Path) -> anyhow::Result<Kept> {
    let path = data_dir.join(FILE);
    let stored: Stored = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an identities file", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(Kept {
        trust_domain: stored.trust_domain,
        bundle_pem: stored.bundle_pem,
        certs: stored.certs.into_iter().map(|h| (h.proxy(), h)).collect(),
    })
}

/// What the manager needs.
pub struct Manager {
    /// The data dir's identities file.
    pub path: PathBuf,
    /// What [`load`] read at start (and the view already serves).
    pub kept: Kept,
    /// The servers' gRPC URLs, re-read at every tick.
    pub servers: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The cluster's mutual TLS (none: plain gRPC, as the cluster port is then).
    pub tls: Option<crate::tls::Live>,
    /// The proxies connected to this agent.
    pub proxies: shoal_xds::Proxies,
    /// Where the identities are published for xDS.
    pub view: super::view::View,
    /// The lifetime asked for.
    pub validity: Duration,
    /// Shared with the status endpoint.
    pub status: Arc<Mutex<IdentityStatus>>,
}

impl Manager {
    /// Runs until `stop`: keeps a certificate for every connected proxy. Each tick that has
    /// something to ask (a proxy without a certificate or due for renewal, or the bundle)
    /// asks one server, over one connection.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.report_status();
        let mut next = 0usize;
        let mut bundle_at: Option<tokio::time::Instant> = None;
        // Proxies whose last request failed: not asked again before their time (1 s doubling
        // to a minute), so a proxy of a deleted node does not cost a request a second.
        let mut retry: HashMap<ProxyId, (tokio::time::Instant, Duration)> = HashMap::new();
        loop {
            let now = now();
            let tick = tokio::time::Instant::now();
            let connected = self.proxies.connected();
            retry.retain(|p, _| connected.binary_search(p).is_ok());
            let due: Vec<ProxyId> = connected
                .into_iter()
                .filter(|p| self.kept.certs.get(p).is_none_or(|h| h.renew_at <= now))
                .filter(|p| retry.get(p).is_none_or(|(at, _)| *at <= tick))
                .collect();
            // The trust domain and bundle first, before any proxy asks: a proxy's first
            // configuration then takes its secrets from this agent from the start.
            let bundle_due = bundle_at.is_none_or(|t| t.elapsed() >= BUNDLE_EVERY);
            let list = (self.servers)();
            let mut changed = false;
            if !list.is_empty() && (bundle_due || !due.is_empty()) {
                let server = list[next % list.len()].clone();
                next = next.wrapping_add(1);
                match self.client(&server).await {
                    Err(e) => {
                        tracing::debug!(server = %server, error = %format!("{e:#}"), "cannot reach a server for workload certificates; will retry")
                    }
                    Ok(mut client) => {
                        if bundle_due {
                            match bundle(&mut client).await {
                                Ok(b) => {
                                    bundle_at = Some(tokio::time::Instant::now());
                                    changed |= self.take_bundle(b.trust_domain, b.trust_bundle);
                                }
                                Err(e) => {
                                    tracing::debug!(server = %server, error = %format!("{e:#}"), "cannot fetch the mesh CA's trust bundle; will retry")
                                }
                            }
                        }
                        for proxy in due {
                            match self.issue(&mut client, &proxy).await {
                                Ok((held, out)) => {
                                    tracing::info!(proxy = %proxy, expiration = held.expiration, "workload certificate issued");
                                    self.take_bundle(out.trust_domain, out.trust_bundle);
                                    self.kept.certs.insert(proxy.clone(), held);
                                    changed = true;
                                    retry.remove(&proxy);
                                    self.status.lock().expect("identity status").issued += 1;
                                }
                                Err(e) => {
                                    let delay = retry.get(&proxy).map_or(TICK, |(_, d)| {
                                        (*d * 2).min(Duration::from_secs(60))
                                    });
                                    retry.insert(
                                        proxy.clone(),
                                        (tokio::time::Instant::now() + delay, delay),
                                    );
                                    tracing::warn!(proxy = %proxy, server = %server, error = %format!("{e:#}"), retry_in = ?delay, "cannot get a workload certificate; will retry");
                                    let mut st = self.status.lock().expect("identity status");
                                    st.failures += 1;
                                    st.last_error = Some(format!("{proxy}: {e:#}"));
                                }
                            }
                        }
                    }
                }
            }
            // Certificates that ended a day ago belong to proxies long gone: forget them.
            let before = self.kept.certs.len();
            self.kept.certs.retain(|_, h| h.expiration + 86_400 > now);
            changed |= self.kept.certs.len() != before;
            if changed {
                self.keep();
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Takes the trust domain and bundle a server sent; whether they changed.
    fn take_bundle(&mut self, trust_domain: String, bundle_pem: String) -> bool {
        let changed = self.kept.trust_domain.as_deref() != Some(trust_domain.as_str())
            || self.kept.bundle_pem != bundle_pem;
        self.kept.trust_domain = Some(trust_domain);
        self.kept.bundle_pem = bundle_pem;
        changed
    }

    /// Writes what is kept (before it is served: a restart serves what the proxies had),
    /// then publishes it.
    fn keep(&self) {
        if let Err(e) = crate::files::replace(&self.path, &self.kept.to_bytes(), 0o600) {
            tracing::error!(error = %format!("{e:#}"), "cannot keep the workload certificates; serving them anyway");
        }
        self.view.set_identities(Arc::new(self.kept.identities()));
        self.report_status();
    }

    fn report_status(&self) {
        let mut st = self.status.lock().expect("identity status");
        st.held = self.kept.certs.len();
        st.trust_domain = self.kept.trust_domain.clone();
        st.soonest_expiry = self.kept.certs.values().map(|h| h.expiration).min();
    }

    async fn client(&self, server: &str) -> anyhow::Result<MeshCaClient<Channel>> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
            .with_context(|| format!("server address {server}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.current().client_config())?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {server}"))?;
        Ok(MeshCaClient::new(channel))
    }

    /// A certificate for `proxy`, for its kept key (a renewal) or a new one.
    async fn issue(
        &self,
        client: &mut MeshCaClient<Channel>,
        proxy: &ProxyId,
    ) -> anyhow::Result<(Held, SignOutput)> {
        let (csr, key_pem) = match self.kept.certs.get(proxy) {
            Some(h) => (
                shoal_pki::csr_for_key(&proxy.name, &h.key_pem)?,
                h.key_pem.clone(),
            ),
            None => shoal_pki::new_csr(&proxy.name)?,
        };
        let input = SignInput {
            mesh: proxy.mesh.clone(),
            virtual_node: (proxy.kind == ProxyKind::VirtualNode).then(|| proxy.name.clone()),
            virtual_gateway: (proxy.kind == ProxyKind::VirtualGateway).then(|| proxy.name.clone()),
            csr,
            validity_seconds: Some(self.validity.as_secs()),
        };
        let reply = client
            .sign_workload(SignRequest {
                request: serde_json::to_vec(&input)?,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let out: SignOutput = outcome(&reply.outcome)?;
        let issued = now();
        let held = Held {
            mesh: proxy.mesh.clone(),
            gateway: proxy.kind == ProxyKind::VirtualGateway,
            name: proxy.name.clone(),
            spiffe_id: out.spiffe_id.clone(),
            chain_pem: out.certificate_chain.clone(),
            key_pem,
            expiration: out.expiration,
            renew_at: issued + out.expiration.saturating_sub(issued) / 2,
        };
        Ok((held, out))
    }
}

async fn bundle(client: &mut MeshCaClient<Channel>) -> anyhow::Result<TrustBundle> {
    let reply = client
        .trust_bundle(TrustBundleRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    outcome(&reply.outcome)
}

/// A server's answer: `Result<T, ApiError>` as JSON.
fn outcome<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    let outcome: Result<T, shoal_model::ApiError> =
        serde_json::from_slice(bytes).context("the server's answer")?;
    outcome.map_err(|e| anyhow::anyhow!("{}: {}", e.kind.code(), e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(
            load(dir.path()).unwrap().identities(),
            Identities::default()
        );
        let s = Stored {
            trust_domain: Some("shoal".into()),
            bundle_pem: "ROOT".into(),
            certs: vec![Held {
                mesh: "m".into(),
                gateway: true,
                name: "gw".into(),
                spiffe_id: "spiffe://shoal/mesh/m/virtualGateway/gw".into(),
                chain_pem: "CHAIN".into(),
                key_pem: "KEY".into(),
                expiration: 100,
                renew_at: 50,
            }],
        };
        std::fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
        let kept = load(dir.path()).unwrap();
        let ids = kept.identities();
        let p = ProxyId::parse("mesh/m/virtualGateway/gw").unwrap();
        assert_eq!(ids.certs[&p].key_pem, "KEY");
        assert_eq!(ids.trust_domain.as_deref(), Some("shoal"));
        // Written back, it reads the same.
        std::fs::write(&path, kept.to_bytes()).unwrap();
        assert_eq!(load(dir.path()).unwrap().identities(), ids);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
