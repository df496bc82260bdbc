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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_xds::{Identities, ProxyId, ProxyKind, WorkloadCert};
use tokio::sync::watch;

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
    chain_pem: String,
    key_pem: String,
    expiration: u64,
    /// When to renew (Unix seconds): half the certificate's life after it was issued.
    renew_at: u64,
}

/// The file's contents.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Stored {
    trust_domain: Option<String>,
    bundle_pem: String,
    certs: Vec<Held>,
}

fn proxy_of(h: &Held) -> ProxyId {
    ProxyId {
        mesh: h.mesh.clone(),
        kind: if h.gateway {
            ProxyKind::VirtualGateway
        } else {
            ProxyKind::VirtualNode
        },
        name: h.name.clone(),
    }
}

impl Stored {
    fn read(path: &Path) -> anyhow::Result<Stored> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an identities file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn identities(&self) -> Identities {
        Identities {
            trust_domain: self.trust_domain.clone(),
            bundle_pem: self.bundle_pem.clone(),
            certs: self
                .certs
                .iter()
                .map(|h| {
                    (
                        proxy_of(h),
                        WorkloadCert {
                            chain_pem: h.chain_pem.clone(),
                            key_pem: h.key_pem.clone(),
                            expiration: h.expiration,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// What the manager needs.
pub struct Manager {
    /// The data dir's identities file.
    pub path: PathBuf,
    /// The servers' gRPC URLs, re-read before every request.
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

/// Reads the kept identities (fail-static: served before any server answers). A damaged
/// file is an error: the caller refuses to start rather than hand out nothing silently.
pub fn load(data_dir: &Path) -> anyhow::Result<Identities> {
    Ok(Stored::read(&data_dir.join(FILE))?.identities())
}

impl Manager {
    /// Runs until `stop`: keeps a certificate for every connected proxy.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut stored = match Stored::read(&self.path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "workload certificates are not kept across restarts until the file is fixed");
                Stored::default()
            }
        };
        self.report(&stored);
        let mut next = 0usize;
        let mut bundle_at: Option<tokio::time::Instant> = None;
        // Proxies whose last request failed: not asked again before their time (1 s doubling
        // to a minute), so a proxy of a deleted node does not cost a request a second.
        let mut retry: HashMap<ProxyId, (tokio::time::Instant, Duration)> = HashMap::new();
        loop {
            let now = now();
            // The trust domain and bundle first, before any proxy asks: a proxy's first
            // configuration then takes its secrets from this agent from the start.
            let list = (self.servers)();
            if !list.is_empty() && bundle_at.is_none_or(|t| t.elapsed() >= BUNDLE_EVERY) {
                let server = list[next % list.len()].clone();
                next = next.wrapping_add(1);
                match self.bundle(&server).await {
                    Ok(b) => {
                        bundle_at = Some(tokio::time::Instant::now());
                        if stored.trust_domain.as_deref() != Some(b.trust_domain.as_str())
                            || stored.bundle_pem != b.trust_bundle
                        {
                            stored.trust_domain = Some(b.trust_domain);
                            stored.bundle_pem = b.trust_bundle;
                            self.keep(&stored);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(server = %server, error = %format!("{e:#}"), "cannot fetch the mesh CA's trust bundle; will retry")
                    }
                }
            }
            let due: Vec<ProxyId> = self
                .proxies
                .connected()
                .into_iter()
                .filter(|p| {
                    stored
                        .certs
                        .iter()
                        .find(|h| proxy_of(h) == *p)
                        .is_none_or(|h| h.renew_at <= now)
                })
                .filter(|p| {
                    retry
                        .get(p)
                        .is_none_or(|(at, _)| *at <= tokio::time::Instant::now())
                })
                .collect();
            let connected = self.proxies.connected();
            retry.retain(|p, _| connected.contains(p));
            let mut changed = false;
            for proxy in due {
                let list = (self.servers)();
                if list.is_empty() {
                    break;
                }
                let server = list[next % list.len()].clone();
                next = next.wrapping_add(1);
                match self.issue(&server, &proxy, &stored).await {
                    Ok((held, out)) => {
                        tracing::info!(proxy = %proxy, expiration = held.expiration, "workload certificate issued");
                        stored.trust_domain = Some(out.trust_domain);
                        stored.bundle_pem = out.trust_bundle;
                        stored.certs.retain(|h| proxy_of(h) != proxy);
                        stored.certs.push(held);
                        changed = true;
                        retry.remove(&proxy);
                        self.status.lock().expect("identity status").issued += 1;
                    }
                    Err(e) => {
                        let delay = retry
                            .get(&proxy)
                            .map_or(TICK, |(_, d)| (*d * 2).min(Duration::from_secs(60)));
                        retry.insert(proxy.clone(), (tokio::time::Instant::now() + delay, delay));
                        tracing::warn!(proxy = %proxy, server = %server, error = %format!("{e:#}"), retry_in = ?delay, "cannot get a workload certificate; will retry");
                        let mut st = self.status.lock().expect("identity status");
                        st.failures += 1;
                        st.last_error = Some(format!("{proxy}: {e:#}"));
                    }
                }
            }
            // Certificates that ended a day ago belong to proxies long gone: forget them.
            let before = stored.certs.len();
            stored.certs.retain(|h| h.expiration + 86_400 > now);
            changed |= stored.certs.len() != before;
            if changed {
                self.keep(&stored);
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Writes `stored` (before it is served: a restart serves what the proxies had), then
    /// publishes it.
    fn keep(&self, stored: &Stored) {
        let bytes = serde_json::to_vec(stored).unwrap_or_default();
        if let Err(e) = crate::files::replace(&self.path, &bytes, 0o600) {
            tracing::error!(error = %format!("{e:#}"), "cannot keep the workload certificates; serving them anyway");
        }
        self.report(stored);
    }

    fn report(&self, stored: &Stored) {
        self.view.set_identities(Arc::new(stored.identities()));
        let mut st = self.status.lock().expect("identity status");
        st.held = stored.certs.len();
        st.trust_domain = stored.trust_domain.clone();
        st.soonest_expiry = stored.certs.iter().map(|h| h.expiration).min();
    }

    async fn client(
        &self,
        server: &str,
    ) -> anyhow::Result<MeshCaClient<tonic::transport::Channel>> {
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

    async fn bundle(&self, server: &str) -> anyhow::Result<TrustBundle> {
        let reply = self
            .client(server)
            .await?
            .trust_bundle(TrustBundleRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{server}: {}", s.message()))?
            .into_inner();
        let outcome: Result<TrustBundle, shoal_model::ApiError> =
            serde_json::from_slice(&reply.outcome).context("the server's answer")?;
        outcome.map_err(|e| anyhow::anyhow!("{}: {}", e.kind.code(), e.message))
    }

    /// A certificate for `proxy` from `server`, for its kept key (a renewal) or a new one.
    async fn issue(
        &self,
        server: &str,
        proxy: &ProxyId,
        stored: &Stored,
    ) -> anyhow::Result<(Held, SignOutput)> {
        let kept = stored.certs.iter().find(|h| proxy_of(h) == *proxy);
        let (csr, key_pem) = match kept {
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
        let reply = self
            .client(server)
            .await?
            .sign_workload(SignRequest {
                request: serde_json::to_vec(&input)?,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{server}: {}", s.message()))?
            .into_inner();
        let outcome: Result<SignOutput, shoal_model::ApiError> =
            serde_json::from_slice(&reply.outcome).context("the server's answer")?;
        let out = outcome.map_err(|e| anyhow::anyhow!("{}: {}", e.kind.code(), e.message))?;
        let issued = now();
        let held = Held {
            mesh: proxy.mesh.clone(),
            gateway: proxy.kind == ProxyKind::VirtualGateway,
            name: proxy.name.clone(),
            chain_pem: out.certificate_chain.clone(),
            key_pem,
            expiration: out.expiration,
            renew_at: issued + out.expiration.saturating_sub(issued) / 2,
        };
        Ok((held, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(load(dir.path()).unwrap(), Identities::default());
        let s = Stored {
            trust_domain: Some("shoal".into()),
            bundle_pem: "ROOT".into(),
            certs: vec![Held {
                mesh: "m".into(),
                gateway: true,
                name: "gw".into(),
                chain_pem: "CHAIN".into(),
                key_pem: "KEY".into(),
                expiration: 100,
                renew_at: 50,
            }],
        };
        std::fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
        let ids = load(dir.path()).unwrap();
        let p = ProxyId::parse("mesh/m/virtualGateway/gw").unwrap();
        assert_eq!(ids.certs[&p].key_pem, "KEY");
        assert_eq!(ids.trust_domain.as_deref(), Some("shoal"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
