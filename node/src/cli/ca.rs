//! `shoal ca …`: the mesh CA that signs the proxies' workload certificates. `show` prints the
//! trust domain and the roots with their expiry (or the bundle, for a file to give clients);
//! `rotate` makes a new root with the previous one trusted for an overlap; `import` makes an
//! operator's intermediate the signer. Signed with `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` when the server checks credentials (`shoal:RotateMeshCa` for
//! `rotate` and `import`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::Target;
use crate::client::Client;

/// `shoal ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the trust domain, the roots trusted now (the signing one first) and when each
    /// ends.
    Show(ShowArgs),
    /// Make a new root that signs from now on; the previous one stays trusted for the overlap.
    Rotate(RotateArgs),
    /// Sign with an operator's intermediate from now on (its chain must reach the root given);
    /// the previous root stays trusted for the overlap.
    Import(ImportArgs),
}

/// `shoal ca show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print the trust bundle (PEM) only, for a client's CA file.
    #[arg(long)]
    pub bundle: bool,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal ca rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// How long the previous root stays trusted, in seconds (default two days: longer than
    /// any workload certificate lives, so every proxy renews from the new root meanwhile).
    #[arg(long)]
    pub overlap_seconds: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal ca import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The intermediate's certificate, PEM (followed by any intermediates above it).
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key, PEM (sent to the servers, which keep it in their replicated state).
    #[arg(long)]
    pub key: PathBuf,
    /// The root the chain ends at: what every proxy will trust.
    #[arg(long)]
    pub root: PathBuf,
    /// How long the previous root stays trusted, in seconds (default two days).
    #[arg(long)]
    pub overlap_seconds: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

fn path(tail: &[&str]) -> Vec<String> {
    ["v1", "ca", "mesh"]
        .iter()
        .chain(tail)
        .map(|s| s.to_string())
        .collect()
}

fn read(p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// Runs `shoal ca …`.
pub async fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Show(a) => {
            let v = Client::new(&a.target.addr)?
                .call(Method::GET, &path(&[]), &[], None)
                .await
                .context("reading the mesh CA")?;
            if a.bundle {
                print!("{}", v["TrustBundle"].as_str().unwrap_or_default());
            } else {
                print!("{}", describe(&v, crate::unix_now()));
            }
            Ok(())
        }
        CaCommand::Rotate(a) => {
            let body = json!({ "OverlapSeconds": a.overlap_seconds });
            let v = Client::new(&a.target.addr)?
                .call(Method::POST, &path(&["rotate"]), &[], Some(body))
                .await
                .context("rotating the mesh CA's root")?;
            print!("{}", describe(&v, crate::unix_now()));
            Ok(())
        }
        CaCommand::Import(a) => {
            let body = json!({
                "CertificateChain": read(&a.cert)?,
                "PrivateKey": read(&a.key)?,
                "RootCertificate": read(&a.root)?,
                "OverlapSeconds": a.overlap_seconds,
            });
            let v = Client::new(&a.target.addr)?
                .call(Method::POST, &path(&["import"]), &[], Some(body))
                .await
                .context("importing an intermediate into the mesh CA")?;
            print!("{}", describe(&v, crate::unix_now()));
            Ok(())
        }
    }
}

/// The answer of `GET /v1/ca/mesh` as lines for people: the trust domain, the signer's expiry,
/// and one line per root.
fn describe(v: &Value, now: u64) -> String {
    let when = |t: &Value| match t.as_u64() {
        Some(t) if t >= now => format!("{t} (in {})", span(t - now)),
        Some(t) => format!("{t} (ended {} ago)", span(now - t)),
        None => "-".into(),
    };
    let mut out = format!(
        "trust domain  {}\nsigner ends   {}\n",
        v["TrustDomain"].as_str().unwrap_or("?"),
        when(&v["SigningNotAfter"])
    );
    for r in v["Roots"].as_array().into_iter().flatten() {
        let role = if r["Signing"].as_bool() == Some(true) {
            "signing".to_string()
        } else {
            format!("trusted until {}", when(&r["TrustedUntil"]))
        };
        out.push_str(&format!(
            "root          ends {}, {role}\n",
            when(&r["NotAfter"])
        ));
    }
    out
}

/// `s` seconds as days, hours or minutes, roughly.
fn span(s: u64) -> String {
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_described_with_their_ends() {
        let v = json!({"TrustDomain": "shoal", "SigningNotAfter": 1000 + 3 * 86_400,
            "Roots": [{"Signing": true, "NotAfter": 1000 + 3650 * 86_400},
                {"Signing": false, "TrustedUntil": 1000 + 7200, "NotAfter": 900}]});
        assert_eq!(
            describe(&v, 1000),
            "trust domain  shoal\nsigner ends   260200 (in 3 days)\n\
             root          ends 315361000 (in 3650 days), signing\n\
             root          ends 900 (ended 100 s ago), trusted until 8200 (in 2 hours)\n"
        );
    }
}
