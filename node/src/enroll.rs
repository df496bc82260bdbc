//! Getting this member's certificate with a join token (`--join-token-file`, `--join-api`).
//!
//! The key is made here and never leaves the host: only a certificate signing request goes to
//! the server, over HTTPS that trusts the cluster CA (`--tls-ca`, the CA certificate the
//! operator hands out with the token). The signed certificate and the key are kept in
//! `<data-dir>/tls` (key 0600, written and fsynced before the certificate, whose presence marks
//! a finished join), and a restart uses them without the token.

use std::io::Write;
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
    let ca_pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&ca_pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
        )
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let (csr, key_pem) = shoal_pki::new_csr(name)?;
    let endpoint = url.join("/v1/tls/join")?;
    let answer = http
        .post(endpoint.clone())
        .json(&json!({ "Token": token.trim(), "Name": name, "Csr": csr, "Ips": ips }))
        .send()
        .await
        .with_context(|| format!("joining through {endpoint}"))?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{endpoint} refused the join ({status}): {}",
            body["message"]
                .as_str()
                .or(body["Message"].as_str())
                .unwrap_or("no reason given")
        );
    }
    let signed = body["Certificate"]
        .as_str()
        .context("the join answer holds no certificate")?;
    let dir = cert.parent().expect("a file in the tls dir");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_synced(&key, key_pem.as_bytes(), 0o600)?;
    write_synced(&cert, signed.as_bytes(), 0o644)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    tracing::info!(role = role.as_str(), %name, cert = %cert.display(), "joined with a token: certificate signed by the cluster CA");
    Ok((cert, key))
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path); // a key left by a join that failed before its certificate
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
