//! `shoal acl …`: the API's access keys (with `shoal server --api-auth`). `bootstrap` creates
//! the first key, once per cluster, without credentials; the others are signed with a key
//! allowed `shoal:ManageAccessKeys` (from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::Target;
use crate::client::Client;

/// `shoal acl …`.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the first access key (every action), once per cluster. Prints it as an AWS
    /// credentials profile, or writes it to `--credentials-file` (mode 0600).
    Bootstrap(BootstrapArgs),
    /// Create an access key with a policy; prints its secret (shown only now).
    Create(CreateArgs),
    /// List the access keys (without secrets).
    List(ListArgs),
    /// Revoke an access key.
    Revoke(RevokeArgs),
}

/// Where a new key goes: printed as an AWS credentials profile, or written to a new file.
#[derive(Debug, Args)]
pub struct KeyOut {
    /// Write the key to this AWS credentials file (a new file, mode 0600) as profile
    /// `--profile`.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// The profile name.
    #[arg(long, default_value = "shoal")]
    pub profile: String,
}

/// `shoal acl bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub out: KeyOut,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal acl create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// `admin` (every action), `read-only` (App Mesh Describe* and List*), or a policy
    /// document file (IAM's JSON shape).
    #[arg(long)]
    pub policy: String,
    /// What the key is for.
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub out: KeyOut,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal acl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: Target,
}

/// `shoal acl revoke ID`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The access key id.
    pub id: String,
    #[command(flatten)]
    pub target: Target,
}

fn segs(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn profile_text(profile: &str, key: &Value) -> anyhow::Result<String> {
    let id = key["AccessKeyId"]
        .as_str()
        .context("no AccessKeyId in the answer")?;
    let secret = key["SecretAccessKey"]
        .as_str()
        .context("no SecretAccessKey in the answer")?;
    Ok(format!(
        "[{profile}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"
    ))
}

fn emit(out: &KeyOut, key: &Value) -> anyhow::Result<()> {
    let profile = out.profile.as_str();
    let text = profile_text(profile, key)?;
    match out.credentials_file.as_ref() {
        None => print!("{text}"),
        Some(path) => {
            crate::files::write_new(path, text.as_bytes(), 0o600)?;
            println!(
                "wrote profile {profile} ({}) to {}",
                key["AccessKeyId"].as_str().unwrap_or_default(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Runs `shoal acl …`.
pub async fn run(cmd: AclCommand) -> anyhow::Result<()> {
    match cmd {
        AclCommand::Bootstrap(a) => {
            // Bootstrap commits on the leader: ask any server where it is.
            let any = Client::new(&a.target.addr)?;
            let status = any.status().await?;
            let leader = status["leader_id"].as_u64();
            let api = status["members"]
                .as_array()
                .and_then(|ms| {
                    ms.iter()
                        .find(|m| m["node_id"].as_u64() == leader)
                        .and_then(|m| m["api_addr"].as_str())
                })
                .map(|leader| {
                    // The leader is reached the way the server asked was (http or https).
                    let scheme = a.target.addr.split_once("://").map_or("http", |(s, _)| s);
                    format!("{scheme}://{leader}")
                })
                .unwrap_or_else(|| a.target.addr.clone());
            let mut c = Client::new(&api)?;
            c.credentials = None;
            let key = c
                .call(Method::POST, &segs(&["v1", "acl", "bootstrap"]), &[], None)
                .await?;
            emit(&a.out, &key)
        }
        AclCommand::Create(a) => {
            let policy: Value = match a.policy.as_str() {
                "admin" => serde_json::to_value(shoal_auth::policy::Policy::admin())?,
                "read-only" => serde_json::to_value(shoal_auth::policy::Policy::read_only())?,
                file => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("reading the policy file {file}"))?;
                    serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))?
                }
            };
            let c = Client::new(&a.target.addr)?;
            if c.credentials.is_none() {
                bail!("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key allowed shoal:ManageAccessKeys");
            }
            let key = c
                .call(
                    Method::POST,
                    &segs(&["v1", "acl", "keys"]),
                    &[],
                    Some(json!({ "Policy": policy, "Description": a.description })),
                )
                .await?;
            emit(&a.out, &key)
        }
        AclCommand::List(a) => {
            let c = Client::new(&a.target.addr)?;
            let v = c
                .call(Method::GET, &segs(&["v1", "acl", "keys"]), &[], None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        AclCommand::Revoke(a) => {
            let c = Client::new(&a.target.addr)?;
            c.call(
                Method::DELETE,
                &segs(&["v1", "acl", "keys", &a.id]),
                &[],
                None,
            )
            .await?;
            println!("revoked {}", a.id);
            Ok(())
        }
    }
}
