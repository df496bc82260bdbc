//! `shoal tls ca create` and `shoal tls cert create`: the cluster CA and the certificates of
//! servers and agents, as files an operator hands to `--tls-ca`, `--tls-cert`, `--tls-key`.
//! Private keys are written readable by their owner only, and never overwritten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use shoal_pki::{Ca, Role};

/// `shoal tls …`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The cluster CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Server and agent certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Join tokens: a new server or agent presents one (`--join-token-file`) to have its
    /// certificate signed by the servers (the CA must be in the replicated state: a server
    /// started once with `--tls-ca-key`).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `shoal tls token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints it (shown only now).
    Create(TokenCreateArgs),
    /// List the tokens (ids, roles, expiry; never secrets).
    List(super::Target),
    /// Revoke a token.
    Revoke(TokenRevokeArgs),
}

/// `shoal tls token create`.
#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// What joins with it: `agent` or `server`.
    #[arg(long)]
    pub role: String,
    /// How long it can be used, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl_seconds: u64,
    /// What it is for.
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub target: super::Target,
}

/// `shoal tls token revoke`.
#[derive(Debug, clap::Args)]
pub struct TokenRevokeArgs {
    /// The token's id (the part before the dot).
    pub id: String,
    #[command(flatten)]
    pub target: super::Target,
}

/// Runs `shoal tls token …` against a server's API.
async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let segs = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match cmd {
        TokenCommand::Create(a) => {
            let c = crate::client::Client::new(&a.target.addr)?;
            let v = c
                .call(
                    Method::POST,
                    &segs(&["v1", "tls", "tokens"]),
                    &[],
                    Some(serde_json::json!({
                        "Role": a.role,
                        "TtlSeconds": a.ttl_seconds,
                        "Description": a.description,
                    })),
                )
                .await?;
            println!("{}", v["Token"].as_str().unwrap_or_default());
        }
        TokenCommand::List(t) => {
            let v = crate::client::Client::new(&t.addr)?
                .call(Method::GET, &segs(&["v1", "tls", "tokens"]), &[], None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        TokenCommand::Revoke(a) => {
            crate::client::Client::new(&a.target.addr)?
                .call(
                    Method::DELETE,
                    &segs(&["v1", "tls", "tokens", &a.id]),
                    &[],
                    None,
                )
                .await?;
            println!("revoked {}", a.id);
        }
    }
    Ok(())
}

/// `shoal tls ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: `shoal-ca.pem` (give it to every server and agent) and `shoal-ca-key.pem`
    /// (keep it where certificates are issued, nowhere else).
    Create(CaCreateArgs),
}

/// `shoal tls cert …`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a certificate and key for one server or agent: `<name>.pem`, `<name>-key.pem`.
    Create(CertCreateArgs),
}

/// `shoal tls ca create`.
#[derive(Debug, Args)]
pub struct CaCreateArgs {
    /// Directory to write the CA files into.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "shoal cluster CA")]
    pub common_name: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// A server: Raft and the watch stream, as client and server.
    Server,
    /// An agent: follows the watch stream.
    Agent,
}

/// `shoal tls cert create`.
#[derive(Debug, Args)]
pub struct CertCreateArgs {
    /// Server or agent.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// The member's name (letters, digits, `-`, `_`): the files' name and part of the
    /// certificate's names.
    #[arg(long)]
    pub name: String,
    /// Directory holding `shoal-ca.pem` and `shoal-ca-key.pem`.
    #[arg(long, default_value = ".")]
    pub ca_dir: PathBuf,
    /// Directory to write the certificate and key into.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Another DNS name the certificate is valid for (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// An address the certificate is valid for (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// Validity, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}

const CA_CERT: &str = "shoal-ca.pem";
const CA_KEY: &str = "shoal-ca-key.pem";

/// Writes `bytes` to a new file `path` (refusing to replace one), mode 0600 for keys.
fn write_new(path: &Path, bytes: &str, private: bool) -> anyhow::Result<()> {
    crate::files::write_new(path, bytes.as_bytes(), if private { 0o600 } else { 0o644 })
}

/// Runs `shoal tls …`.
pub async fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Token(t) => token(t).await,
        TlsCommand::Ca(CaCommand::Create(a)) => {
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("creating {}", a.dir.display()))?;
            let ca = Ca::generate(&a.common_name).context("creating the CA")?;
            let (cert, key) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
            write_new(&key, ca.key_pem(), true)?;
            write_new(&cert, ca.cert_pem(), false)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        TlsCommand::Cert(CertCommand::Create(a)) => {
            let read = |name: &str| {
                let p = a.ca_dir.join(name);
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
            };
            let ca = Ca::from_pem(&read(CA_CERT)?, &read(CA_KEY)?).context("loading the CA")?;
            let role = match a.role {
                RoleArg::Server => Role::Server,
                RoleArg::Agent => Role::Agent,
            };
            let issued = ca
                .issue(
                    role,
                    &a.name,
                    &a.dns,
                    &a.ips,
                    Duration::from_secs(a.days.max(1) * 24 * 3600),
                )
                .context("issuing the certificate")?;
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("creating {}", a.dir.display()))?;
            let cert = a.dir.join(format!("{}.pem", a.name));
            let key = a.dir.join(format!("{}-key.pem", a.name));
            write_new(&key, &issued.key_pem, true)?;
            write_new(&cert, &issued.cert_pem, false)?;
            println!(
                "wrote {} and {} ({} certificate, valid {} days)",
                cert.display(),
                key.display(),
                role.as_str(),
                a.days
            );
            Ok(())
        }
    }
}
