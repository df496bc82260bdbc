//! `shoal status`, `members`, `endpoints`, `operator remove-server` and `snapshot save|restore`:
//! the cluster as an operator sees it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::align;
use super::{Output, Target};
use crate::client::Client;

/// `shoal operator …`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Remove a (dead) server from the Raft configuration.
    RemoveServer(RemoveServerArgs),
}

/// `shoal operator remove-server`.
#[derive(Debug, Args)]
pub struct RemoveServerArgs {
    /// Raft id of the server to remove.
    #[arg(long)]
    pub node_id: u64,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal snapshot …`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write the whole model (every resource, linearizable) to FILE.
    Save(SnapshotArgs),
    /// Replace the whole model with FILE's, through Raft (every server applies it).
    Restore(SnapshotArgs),
}

/// `shoal snapshot save|restore FILE`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The snapshot file.
    pub file: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal members` and `shoal endpoints`.
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    let s = c.status().await?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if s["role"] == "agent" {
        println!(
            "agent {}  revision {}  following {}  from cache {}  members {}  local instances {}  endpoints {} ({} healthy)",
            s["name"].as_str().unwrap_or_default(),
            s["revision"],
            s["server"].as_str().unwrap_or("none"),
            s["from_cache"],
            s["members"],
            s["local_instances"],
            s["endpoints"],
            s["healthy_endpoints"],
        );
        return Ok(());
    }
    let leader = s["leader_id"]
        .as_u64()
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "node {}  leader {}  term {}  commit {}  applied {}  revision {}",
        s["node_id"], leader, s["term"], s["commit_index"], s["applied_index"], s["revision"]
    );
    let mut rows = vec![vec!["NODE", "ROLE", "API", "RAFT", "HEALTHY", "LAG"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
    for m in s["members"].as_array().into_iter().flatten() {
        rows.push(vec![
            m["node_id"].to_string(),
            m["role"].as_str().unwrap_or_default().to_string(),
            m["api_addr"].as_str().unwrap_or_default().to_string(),
            m["raft_addr"].as_str().unwrap_or_default().to_string(),
            m["healthy"].to_string(),
            // Entries behind the leader; known only when asking the leader.
            m["lag"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |l| l.to_string()),
        ]);
    }
    print!("{}", align(&rows));
    Ok(())
}

/// `GET /v1/<what>` of `args`' node; `None` once printed as JSON (`-o json`).
async fn fetch_table_source(args: &MembersArgs, what: &str) -> anyhow::Result<Option<Value>> {
    let c = Client::new(&args.target.addr)?;
    let v = c
        .call(reqwest::Method::GET, &["v1".into(), what.into()], &[], None)
        .await?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    Ok(Some(v))
}

/// `shoal members`.
pub async fn members(args: MembersArgs) -> anyhow::Result<()> {
    let Some(v) = fetch_table_source(&args, "members").await? else {
        return Ok(());
    };
    let mut rows = vec![["NAME", "ROLE", "GOSSIP", "API", "DNS", "ZONE", "VERSION"]
        .map(String::from)
        .to_vec()];
    let text = |m: &Value, k: &str| m[k].as_str().unwrap_or("-").to_string();
    for m in v["members"].as_array().into_iter().flatten() {
        rows.push(
            [
                "name",
                "role",
                "gossip_addr",
                "api_addr",
                "dns_addr",
                "zone",
                "version",
            ]
            .map(|k| text(m, k))
            .to_vec(),
        );
    }
    print!("{}", align(&rows));
    Ok(())
}

/// `shoal endpoints`.
pub async fn endpoints(args: MembersArgs) -> anyhow::Result<()> {
    let Some(v) = fetch_table_source(&args, "endpoints").await? else {
        return Ok(());
    };
    let mut rows = vec![["INSTANCE", "ADDRESS", "PORT", "HOST", "HEALTHY"]
        .map(String::from)
        .to_vec()];
    for e in v["endpoints"].as_array().into_iter().flatten() {
        rows.push(vec![
            e["key"].as_str().unwrap_or_default().to_string(),
            e["instance"]["ip"].as_str().unwrap_or_default().to_string(),
            e["instance"]["port"].to_string(),
            e["host"].as_str().unwrap_or_default().to_string(),
            e["healthy"].to_string(),
        ]);
    }
    print!("{}", align(&rows));
    Ok(())
}

/// `shoal operator remove-server`.
pub async fn remove_server(args: RemoveServerArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    let id = args.node_id.to_string();
    c.call(
        reqwest::Method::POST,
        &["v1".into(), "operator".into(), "remove-server".into()],
        &[("node_id", &id)],
        None,
    )
    .await?;
    println!("server {id} removed from the Raft configuration");
    Ok(())
}

/// `shoal snapshot save`.
pub async fn snapshot_save(args: SnapshotArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    let v = c
        .call(
            reqwest::Method::GET,
            &["v1".into(), "snapshot".into()],
            &[],
            None,
        )
        .await?;
    let n = v["resources"].as_array().map_or(0, Vec::len);
    let text = serde_json::to_vec(&v)?;
    std::fs::write(&args.file, text).with_context(|| format!("writing {}", args.file.display()))?;
    println!(
        "saved {n} resources at revision {} to {}",
        v["revision"],
        args.file.display()
    );
    Ok(())
}

/// `shoal snapshot restore`.
pub async fn snapshot_restore(args: SnapshotArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let v: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a snapshot", args.file.display()))?;
    let c = Client::new(&args.target.addr)?;
    let r = c
        .call(
            reqwest::Method::POST,
            &["v1".into(), "snapshot".into(), "restore".into()],
            &[],
            Some(v),
        )
        .await?;
    println!(
        "restored {} resources; revision {}",
        r["resources"], r["revision"]
    );
    Ok(())
}
