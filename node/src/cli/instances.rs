//! `shoal register` and `shoal deregister`: instances registered with the local agent (the same
//! record as the agent API's bodies and its config's `[[instance]]`, see `crate::registration`).

use clap::Args;

use super::Target;
use crate::client::Client;
use crate::registration::{InstanceName, Registration};

/// `shoal register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub registration: Registration,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    #[command(flatten)]
    pub name: InstanceName,
    #[command(flatten)]
    pub target: Target,
}

fn agent_instances() -> Vec<String> {
    ["v1", "agent", "instances"].map(String::from).to_vec()
}

/// `shoal register`.
pub(super) async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let body = serde_json::to_value(&args.registration)?;
    let c = Client::new(&args.target.addr)?;
    let v = c
        .call(reqwest::Method::PUT, &agent_instances(), &[], Some(body))
        .await?;
    println!("registered {}", v["key"].as_str().unwrap_or_default());
    Ok(())
}

/// `shoal deregister`.
pub(super) async fn deregister(args: DeregisterArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    // The query names the instance with the same keys as a registration's body.
    let fields = serde_json::to_value(&args.name)?;
    let query: Vec<(&str, &str)> = fields
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    let v = c
        .call(reqwest::Method::DELETE, &agent_instances(), &query, None)
        .await?;
    println!("deregistered {}", v["key"].as_str().unwrap_or_default());
    Ok(())
}
