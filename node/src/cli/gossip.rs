//! `shoal gossip …`: the gossip encryption key. `keygen` prints a new key; `keyring` lists a
//! member's keys (fingerprints) or applies one rotation step to each member named, in order.
//!
//! A rotation without downtime is three passes over every member: `install` the new key
//! (members still seal with the old one and now accept both), `use` it (each member seals with
//! it; the others already accept it), then `remove` the old one. A standalone agent takes these
//! from its own host only; a server with `--api-auth` takes them signed by a key allowed
//! `shoal:ManageGossipKeyring`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::gossip_keys::KeyOp;

/// `shoal gossip …`.
#[derive(Debug, Subcommand)]
pub enum GossipCommand {
    /// Print a new random gossip key (32 bytes, base64): save it to a file readable by shoal
    /// only and give it to every member with `--gossip-key-file`.
    Keygen,
    /// A member's gossip keyring.
    #[command(subcommand)]
    Keyring(KeyringCommand),
}

/// `shoal gossip keyring …`.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// List each member's keys by fingerprint, the primary (the one it seals with) first.
    List(Members),
    /// Step 1 of a rotation: each member accepts the key too (still sealing with its
    /// primary).
    Install(StepArgs),
    /// Step 2: each member seals with the key (installed everywhere first).
    Use(StepArgs),
    /// Step 3: each member stops accepting the key (no member may still seal with it).
    Remove(StepArgs),
}

/// The members a keyring command talks to.
#[derive(Debug, Args)]
pub struct Members {
    /// API address of a member, server or agent (repeatable; each is changed in the order
    /// given).
    #[arg(
        long = "addr",
        env = "SHOAL_ADDR",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ','
    )]
    pub addrs: Vec<String>,
}

/// `shoal gossip keyring install|use|remove`.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// A file holding the key (base64), as `shoal gossip keygen` printed it.
    #[arg(long)]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub members: Members,
}

fn path() -> Vec<String> {
    ["v1", "agent", "gossip", "keyring"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs `shoal gossip …`.
pub async fn run(cmd: GossipCommand) -> anyhow::Result<()> {
    match cmd {
        GossipCommand::Keygen => {
            println!("{}", shoal_gossip::GossipKey::generate().to_base64());
            Ok(())
        }
        GossipCommand::Keyring(KeyringCommand::List(m)) => {
            for addr in &m.addrs {
                let v = Client::new(addr)?
                    .call(Method::GET, &path(), &[], None)
                    .await
                    .with_context(|| format!("listing the keyring of {addr}"))?;
                println!("{addr}: {}", serde_json::to_string(&v)?);
            }
            Ok(())
        }
        GossipCommand::Keyring(KeyringCommand::Install(a)) => step(KeyOp::Install, a).await,
        GossipCommand::Keyring(KeyringCommand::Use(a)) => step(KeyOp::Use, a).await,
        GossipCommand::Keyring(KeyringCommand::Remove(a)) => step(KeyOp::Remove, a).await,
    }
}

/// Applies one step to each member in order, stopping at the first that fails.
async fn step(op: KeyOp, a: StepArgs) -> anyhow::Result<()> {
    let key = crate::gossip_keys::read_key_file(&a.key_file)?;
    let body = json!({ "op": op, "key": key.to_base64() });
    let name = body["op"].as_str().unwrap_or_default().to_string();
    for (done, addr) in a.members.addrs.iter().enumerate() {
        let answer = Client::new(addr)?
            .call(Method::POST, &path(), &[], Some(body.clone()))
            .await
            .with_context(|| {
                format!(
                    "{name} {} failed on {addr} ({done} of {} members done before it)",
                    key.fingerprint(),
                    a.members.addrs.len()
                )
            })?;
        println!(
            "{addr}: {name} {}: {}",
            key.fingerprint(),
            serde_json::to_string(&answer)?
        );
    }
    Ok(())
}
