//! Getting this member's certificate with a join token (`--join-token-file`, `--join-api`).
//!
//! The key is made here and never leaves the host: only a certificate signing request goes to
//! the server, over HTTPS that trusts the cluster CA (`--tls-ca`, the CA certificate the
//! operator hands out with the token). The signed certificate and the key are kept in
//! `<data-dir>/tls` (key 0600, written and fsynced before the certificate, whose presence marks
//! a finished join), and a restart uses them without the token.
//!
//! [`renew`] keeps the certificate current: after two thirds of its lifetime it asks for a new
//! one for the same key (`/v1/tls/renew`, the CSR proving it holds the key), saves it, and
//! puts it in force without a restart (new handshakes present it, new connections use it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where a joined member keeps its certificate and key.
pub fn paths(data_dir: &Path, role: shoal_pki::Role) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (
        dir.join(format!("{}.pem", role.as_str())),
        dir.join(format!("{}-key.pem", role.as_str())),
    )
}

/// How to join: the flags of a member that joins with a token.
#[derive(Debug, Clone, Copy)]
pub struct JoinWith<'a> {
    /// The cluster CA certificate (`--tls-ca`), trusted for the call.
    pub ca: &'a Path,
    /// The file holding the token (`--join-token-file`).
    pub token_file: &'a Path,
    /// A server's API URL (`--join-api`).
    pub api: &'a str,
    /// `--insecure`: allow a plain-HTTP API beyond loopback.
    pub insecure: bool,
}

impl<'a> JoinWith<'a> {
    /// The join a member's flags ask for: a token file, a server's API and the CA, and no
    /// certificate of its own (`tls_cert`); none otherwise.
    pub fn from_flags(
        tls_cert: Option<&PathBuf>,
        token_file: Option<&'a PathBuf>,
        api: Option<&'a String>,
        ca: Option<&'a PathBuf>,
        insecure: bool,
    ) -> Option<JoinWith<'a>> {
        match (tls_cert, token_file, api, ca) {
            (None, Some(token_file), Some(api), Some(ca)) => Some(JoinWith {
                ca,
                token_file,
                api,
                insecure,
            }),
            _ => None,
        }
    }
}

/// This member's certificate and key files: the ones a previous join left, or new ones signed
/// through `with.api` for the token.
pub async fn enroll(
    data_dir: &Path,
    with: JoinWith<'_>,
    role: shoal_pki::Role,
    name: &str,
    ips: &[IpAddr],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let JoinWith {
        ca,
        token_file,
        api,
        insecure,
    } = with;
    let (cert, key) = paths(data_dir, role);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let url = reqwest::Url::parse(api).with_context(|| {
        format!("--join-api {api:?} is not a URL (like https://10.0.0.11:7070)")
    })?;
    let local = url
        .host_str()
        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    if url.scheme() != "https" && !local && !insecure {
        bail!("--join-api {api} is not HTTPS: the token would cross the network in the clear (servers serve HTTPS with --api-tls), or --insecure");
    }
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the join token {}", token_file.display()))?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let (csr, key_pem) = shoal_pki::new_csr(name)?;
    let signed = ask_to_sign(
        &ca_pem,
        &url,
        "/v1/tls/join",
        json!({ "Token": token.trim(), "Name": name, "Csr": csr, "Ips": ips }),
    )
    .await?;
    let dir = cert.parent().expect("a file in the tls dir");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_synced(&key, key_pem.as_bytes(), 0o600)?;
    write_synced(&cert, signed.as_bytes(), 0o644)?;
    crate::files::sync_dir(dir)?;
    tracing::info!(role = role.as_str(), %name, cert = %cert.display(), "joined with a token: certificate signed by the cluster CA");
    Ok((cert, key))
}

/// The TLS files of a server started with `--tls-bootstrap`, in `<data-dir>/tls`.
pub struct Founded {
    /// The cluster CA certificate (`ca.pem`): what every other member and client trusts.
    pub ca: PathBuf,
    /// This server's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA (certificate and key) still to put into the replicated state: its key's file
    /// (`ca-key.pem`) stays until that commits ([`forget_ca_key`]), so a crash before it loses
    /// nothing.
    pub to_import: Option<shoal_model::ClusterCa>,
    /// That file.
    pub ca_key: PathBuf,
}

/// The cluster CA and this server's certificate, made at the first start of a server founding
/// its cluster (`--tls-bootstrap`), or the ones that start left. A store that already belongs
/// to a cluster without them is refused: a new CA would not be trusted by its peers.
pub fn found(
    data_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    valid_for: std::time::Duration,
) -> anyhow::Result<Founded> {
    let (cert, key) = paths(data_dir, shoal_pki::Role::Server);
    let dir = cert.parent().expect("a file in the tls dir").to_path_buf();
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    if !(cert.exists() && key.exists() && ca.exists()) {
        if data_dir.join("raft").exists() {
            bail!(
                "--tls-bootstrap: {} already holds a Raft store, but {} does not hold the CA and \
                 certificate its first start made: put them back, or start with --tls-ca, \
                 --tls-cert and --tls-key",
                data_dir.display(),
                dir.display()
            );
        }
        let made = shoal_pki::Ca::generate("shoal cluster CA")?;
        let issued = made.issue(shoal_pki::Role::Server, name, &[], ips, valid_for)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The server's certificate last: its presence marks a finished start.
        write_synced(&ca_key, made.key_pem().as_bytes(), 0o600)?;
        write_synced(&ca, made.cert_pem().as_bytes(), 0o644)?;
        write_synced(&key, issued.key_pem.as_bytes(), 0o600)?;
        write_synced(&cert, issued.cert_pem.as_bytes(), 0o644)?;
        crate::files::sync_dir(&dir)?;
        tracing::info!(ca = %ca.display(), cert = %cert.display(), "--tls-bootstrap: made the cluster CA and this server's certificate; hand out the CA certificate to members and clients");
    }
    let to_import = if ca_key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Some(shoal_model::ClusterCa {
            cert_pem: read(&ca)?,
            key_pem: read(&ca_key)?,
        })
    } else {
        None
    };
    Ok(Founded {
        ca,
        cert,
        key,
        to_import,
        ca_key,
    })
}

/// Deletes the CA key's file (`Founded::ca_key`) a founding server kept until the CA was in
/// the replicated state.
pub fn forget_ca_key(ca_key: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(ca_key).with_context(|| format!("deleting {}", ca_key.display()))?;
    crate::files::sync_dir(ca_key.parent().unwrap_or(Path::new(".")))
}

/// Writes a new file of this member's TLS material, replacing one a failed earlier attempt
/// left (a key written before its certificate was refused).
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    crate::files::write_new(path, bytes, mode)
}

/// What a member renews: its certificate in `<data_dir>/tls`, through `api`, for `role` and
/// `name` (and `ips`, for a server); a server also hands the new certificate to its Raft client.
pub struct Renewal {
    /// The member's data dir.
    pub data_dir: PathBuf,
    /// A server's API URL (`--join-api`).
    pub api: String,
    /// The member's role.
    pub role: shoal_pki::Role,
    /// The name its certificate is for.
    pub name: String,
    /// A server's addresses.
    pub ips: Vec<IpAddr>,
    /// A server's Raft node, whose client presents the certificate to peers.
    pub raft: Option<shoal_raft::RaftNode>,
}

/// Renews the certificate in `live` after two thirds of its lifetime, until `stop`; retries a
/// failed renewal every tenth of the time left (at least every second, at most every minute).
pub async fn renew(
    r: Renewal,
    live: crate::tls::Live,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (cert_path, _) = paths(&r.data_dir, r.role);
    loop {
        let m = live.current();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let wait = match shoal_pki::validity_of(m.cert_pem()) {
            Some((end, len)) => (end.saturating_sub(len / 3)).saturating_sub(now),
            None => {
                tracing::error!(cert = %cert_path.display(), "cannot read the certificate's validity; not renewing it");
                return;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            _ = stop.changed() => return,
        }
        match renew_once(&r, &m).await {
            Ok(renewed) => {
                if let Err(e) =
                    crate::files::replace(&cert_path, renewed.cert_pem().as_bytes(), 0o644)
                {
                    tracing::error!(error = %format!("{e:#}"), "cannot save the renewed certificate; keeping the current one");
                } else if let Err(e) = live.set(renewed.clone()) {
                    tracing::error!(error = %format!("{e:#}"), "the renewed certificate cannot be used");
                } else {
                    if let Some(raft) = &r.raft {
                        raft.set_client_tls(renewed.raft_client());
                    }
                    tracing::info!(cert = %cert_path.display(), "certificate renewed and in force");
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; will retry")
            }
        }
        let left =
            shoal_pki::validity_of(m.cert_pem()).map_or(60, |(end, _)| end.saturating_sub(now));
        let retry = (left / 10).clamp(1, 60);
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(retry)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn renew_once(r: &Renewal, m: &crate::tls::Material) -> anyhow::Result<crate::tls::Material> {
    let csr = shoal_pki::csr_for_key(&r.name, m.key_pem())?;
    let base = reqwest::Url::parse(&r.api)?;
    let cert = ask_to_sign(
        m.ca_pem(),
        &base,
        "/v1/tls/renew",
        json!({ "Certificate": m.cert_pem(), "Name": r.name, "Csr": csr, "Ips": r.ips }),
    )
    .await?;
    Ok(m.with_certificate(cert))
}

/// POSTs `body` to `path` of the server at `base` over HTTPS trusting only the cluster CA
/// `ca_pem`, and returns the certificate it signed (or why it refused).
async fn ask_to_sign(
    ca_pem: &str,
    base: &reqwest::Url,
    path: &str,
    body: Value,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes())
                .context("the cluster CA is not a PEM certificate")?,
        )
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let url = base.join(path)?;
    let answer = http
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{url} refused ({status}): {}",
            body["message"]
                .as_str()
                .or(body["Message"].as_str())
                .unwrap_or("no reason given")
        );
    }
    Ok(body["Certificate"]
        .as_str()
        .context("the answer holds no certificate")?
        .to_string())
}
