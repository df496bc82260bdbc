//! The cluster's mutual TLS, as configured: the files a server or agent is given
//! (`--tls-ca`, `--tls-cert`, `--tls-key`), checked at start, and the tonic settings and checks
//! built from them. Certificates come from `shoal tls` (`cli/tls.rs`) and `shoal_pki`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{bail, Context};
use shoal_pki::Role;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// The CA, certificate and key a member presents and trusts.
#[derive(Clone)]
pub struct Material {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

impl Material {
    /// Reads `ca`, `cert` and `key` (all three or none: none is `Ok(None)`), and checks that the
    /// certificate was issued for `role`, so that a server is not started with an agent's
    /// certificate (its peers would refuse it) or the other way round.
    pub fn load(
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        role: Role,
    ) -> anyhow::Result<Option<Material>> {
        let (ca, cert, key) = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (Some(a), Some(c), Some(k)) => (a, c, k),
            _ => bail!("--tls-ca, --tls-cert and --tls-key go together: give all three or none"),
        };
        let m = Material {
            ca_pem: read(ca, "CA certificate")?,
            cert_pem: read(cert, "certificate")?,
            key_pem: read(key, "private key")?,
        };
        let der = shoal_pki::first_cert_der(&m.cert_pem)
            .with_context(|| format!("{} holds no PEM certificate", cert.display()))?;
        match shoal_pki::role_of(&der) {
            Some(r) if r == role => Ok(Some(m)),
            Some(r) => bail!(
                "{} is {} certificate, and this is {} {}: issue one with `shoal tls cert create --role {}`",
                cert.display(),
                article(r),
                article(role),
                role.as_str(),
                role.as_str()
            ),
            None => bail!(
                "{} is not a certificate from `shoal tls cert create` (valid for neither {} nor {})",
                cert.display(),
                shoal_pki::SERVER_NAME,
                shoal_pki::AGENT_NAME
            ),
        }
    }

    /// The gRPC client side: this member's certificate, and a server certificate from the CA
    /// required of whatever address is dialled.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(shoal_pki::SERVER_NAME)
    }

    /// The cluster CA certificate (PEM), which clients of the HTTPS API trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// This member's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Its private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The same CA and key with a renewed certificate.
    pub fn with_certificate(&self, cert_pem: String) -> Material {
        Material {
            cert_pem,
            ..self.clone()
        }
    }

    /// The same, for the Raft client.
    pub fn raft_client(&self) -> shoal_raft::ClientTls {
        shoal_raft::ClientTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            server_name: shoal_pki::SERVER_NAME.to_string(),
        }
    }
}

fn article(r: Role) -> &'static str {
    match r {
        Role::Server => "a server",
        Role::Agent => "an agent",
    }
}

/// The interceptor in front of the Raft service when TLS is on: only a server's certificate
/// may send Raft RPCs (an agent's certificate, valid for the watch stream, is refused).
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_server_peer(req: Request<()>) -> Result<Request<()>, Status> {
    let is_server = req.peer_certs().is_some_and(|certs| {
        certs
            .first()
            .is_some_and(|c| shoal_pki::role_of(c.as_ref()) == Some(Role::Server))
    });
    if is_server {
        Ok(req)
    } else {
        Err(Status::permission_denied(
            "Raft RPCs are taken from server certificates only",
        ))
    }
}

/// The scheme of gRPC URLs to servers: `https` with TLS, `http` without.
pub fn grpc_url(addr: impl std::fmt::Display, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// A member's TLS material while it runs: what it presents can change (a renewed
/// certificate) without a restart. The HTTPS API and the cluster gRPC port take their
/// certificate from it at every handshake; clients build new connections from
/// [`Live::current`], and the Raft client is told by the renewal.
#[derive(Clone)]
pub struct Live {
    current: Arc<RwLock<Material>>,
    resolver: Arc<Resolver>,
    /// Bumped by every [`Live::set`]: clients that cache connections rebuild them.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Hands rustls the current certificate at every handshake.
#[derive(Debug)]
struct Resolver {
    key: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(m: &Material) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading the certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes())
        .context("reading the private key PEM")?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .context("loading the private key")?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match()
        .context("the certificate and key do not go together")?;
    Ok(Arc::new(ck))
}

impl Live {
    /// Starts from `m`.
    pub fn new(m: Material) -> anyhow::Result<Live> {
        let key = certified_key(&m)?;
        Ok(Live {
            current: Arc::new(RwLock::new(m)),
            resolver: Arc::new(Resolver {
                key: RwLock::new(key),
            }),
            generation: Arc::default(),
        })
    }

    /// The material in force now.
    pub fn current(&self) -> Material {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the certificate and key (a renewal): new handshakes present the new one.
    pub fn set(&self, m: Material) -> anyhow::Result<()> {
        let key = certified_key(&m)?;
        *self
            .resolver
            .key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = m;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many times the material was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The cluster gRPC port: the current certificate, and a client certificate from the CA
    /// required during the handshake, before any RPC code runs.
    pub fn grpc_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pki_types::CertificateDer::pem_slice_iter(self.current().ca_pem.as_bytes())
        {
            roots
                .add(ca.context("reading the CA certificate PEM")?)
                .context("the CA certificate")?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .context("the client certificate verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The HTTPS side of the API (`--api-tls`): the current certificate, no client certificate
    /// asked (API clients authenticate with SigV4). Clients verify it against the cluster CA,
    /// so it must be valid for the address they dial (`shoal tls cert create --ip`).
    pub fn api_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepts TLS connections for the cluster gRPC port: each TCP connection's handshake runs on
/// its own task (10 s at most), and finished ones are handed to tonic, which reads the peer's
/// certificate from them (for [`require_server_peer`]).
pub fn grpc_incoming(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            // Stops (and releases the port) once tonic no longer takes connections.
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a gRPC connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Raft RPCs are small and latency-bound: no Nagle.
            let _ = stream.set_nodelay(true);
            let (acceptor, handshaken) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(tls)) => {
                        let _ = handshaken.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
