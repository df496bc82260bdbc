//! The cluster's mutual TLS, as configured: the files a server or agent is given
//! (`--tls-ca`, `--tls-cert`, `--tls-key`), checked at start, and the tonic settings and checks
//! built from them. Certificates come from `shoal tls` (`cli/tls.rs`) and `shoal_pki`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use shoal_pki::Role;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
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

    /// The gRPC server side: this member's certificate, and a client certificate from the CA
    /// required during the handshake, before any RPC code runs.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(std::time::Duration::from_secs(10))
    }

    /// The gRPC client side: this member's certificate, and a server certificate from the CA
    /// required of whatever address is dialled.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(shoal_pki::SERVER_NAME)
    }

    /// The HTTPS side of the API (`--api-tls`): this member's certificate, no client
    /// certificate asked (API clients authenticate with SigV4). Clients verify it against the
    /// cluster CA (`--ca-bundle` for the AWS CLI), so it must be valid for the address they
    /// dial (`shoal tls cert create --ip`).
    pub fn api_server_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("reading the certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("reading the private key PEM")?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and key do not go together")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(cfg))
    }

    /// The cluster CA certificate (PEM), which clients of the HTTPS API trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
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
