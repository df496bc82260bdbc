//! `shoal apply`, `get` and `delete`: App Mesh resources through the API, from JSON files in the
//! API's request shape (or its `describe` output).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use shoal_model::Kind;

use super::output::table;
use super::{Output, Target};
use crate::client::{self, Client};

/// `shoal apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories of `*.json` documents (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

/// Where a resource of a kind lives: its mesh, and the router or gateway of routes.
#[derive(Debug, Args, Default)]
pub struct Scope {
    /// The mesh (all kinds but meshes).
    #[arg(long, short = 'm')]
    pub mesh: Option<String>,
    /// The virtual router of routes.
    #[arg(long)]
    pub virtual_router: Option<String>,
    /// The virtual gateway of gateway routes.
    #[arg(long)]
    pub virtual_gateway: Option<String>,
}

/// `shoal get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// meshes, virtual-nodes (vn), virtual-routers (vr), routes, virtual-services (vs),
    /// virtual-gateways (vg), gateway-routes (gr).
    pub kind: String,
    /// One resource to describe; all of the kind when absent.
    pub name: Option<String>,
    #[command(flatten)]
    pub scope: Scope,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Read from the server's local copy without asking the leader (faster, may lag).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kind, as for `get` (or use `-f`).
    pub kind: Option<String>,
    /// Name of the resource.
    pub name: Option<String>,
    #[command(flatten)]
    pub scope: Scope,
    /// Delete what these files describe, in reverse dependency order.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).with_context(|| {
        format!("unknown kind {s:?}: use meshes, virtual-nodes, virtual-routers, routes, virtual-services, virtual-gateways or gateway-routes")
    })
}

impl Scope {
    /// The mesh and parent `kind` needs, from the flags.
    fn resolve(&self, kind: Kind) -> anyhow::Result<(String, String)> {
        scope(
            kind,
            &self.mesh,
            &self.virtual_router,
            &self.virtual_gateway,
        )
    }
}

/// Resolves the mesh and parent a kind needs from the flags.
fn scope(
    kind: Kind,
    mesh: &Option<String>,
    vr: &Option<String>,
    vg: &Option<String>,
) -> anyhow::Result<(String, String)> {
    if kind == Kind::Mesh {
        return Ok((String::new(), String::new()));
    }
    let mesh = mesh.clone().context("--mesh is required for this kind")?;
    let parent = match kind {
        Kind::Route => vr
            .clone()
            .context("--virtual-router is required for routes")?,
        Kind::GatewayRoute => vg
            .clone()
            .context("--virtual-gateway is required for gateway routes")?,
        _ => String::new(),
    };
    Ok((mesh, parent))
}

/// `shoal apply`.
pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let docs = client::read_docs(&args.files)?;
    if docs.is_empty() {
        bail!("no JSON documents found");
    }
    let c = Client::new(&args.target.addr)?;
    for d in &docs {
        let what = c.apply(d).await?;
        let verb = match what {
            client::Applied::Created => "created",
            client::Applied::Updated => "updated",
        };
        println!(
            "{} {} {}",
            d.kind,
            display_name(d.kind, &d.mesh, &d.parent, &d.name),
            verb
        );
    }
    Ok(())
}

fn display_name(kind: Kind, mesh: &str, parent: &str, name: &str) -> String {
    match kind {
        Kind::Mesh => name.to_string(),
        Kind::Route | Kind::GatewayRoute => format!("{mesh}/{parent}/{name}"),
        _ => format!("{mesh}/{name}"),
    }
}

/// `shoal get`.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind)?;
    let (mesh, parent) = args.scope.resolve(kind)?;
    let mut c = Client::new(&args.target.addr)?;
    c.stale = args.stale;
    let items: Vec<Value> = match &args.name {
        Some(name) => {
            let mesh = if kind == Kind::Mesh {
                name.clone()
            } else {
                mesh.clone()
            };
            vec![c.describe(kind, &mesh, &parent, name).await?]
        }
        None => {
            let refs = c.list(kind, &mesh, &parent).await?;
            let mut full = Vec::with_capacity(refs.len());
            for r in refs {
                let name = r
                    .get(kind.name_member())
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mesh = r
                    .get("meshName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                full.push(c.describe(kind, mesh, &parent, name).await?);
            }
            full
        }
    };
    match args.output {
        Output::Json => {
            let v = if args.name.is_some() {
                items[0].clone()
            } else {
                Value::Array(items)
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => print!("{}", table(kind, &items)),
    }
    Ok(())
}

/// `shoal delete`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    if !args.files.is_empty() {
        let mut docs = client::read_docs(&args.files)?;
        docs.reverse();
        for d in &docs {
            c.delete(d.kind, &d.mesh, &d.parent, &d.name)
                .await
                .map_err(|e| e.context(d.source.clone()))?;
            println!(
                "{} {} deleted",
                d.kind,
                display_name(d.kind, &d.mesh, &d.parent, &d.name)
            );
        }
        return Ok(());
    }
    let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
        bail!("say what to delete: KIND NAME, or -f FILE");
    };
    let kind = parse_kind(kind)?;
    let (mesh, parent) = args.scope.resolve(kind)?;
    let mesh = if kind == Kind::Mesh {
        name.clone()
    } else {
        mesh
    };
    c.delete(kind, &mesh, &parent, name).await?;
    println!(
        "{} {} deleted",
        kind,
        display_name(kind, &mesh, &parent, name)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_requires_the_parent_of_routes() {
        let e = scope(Kind::Route, &Some("m".into()), &None, &None).unwrap_err();
        assert_eq!(e.to_string(), "--virtual-router is required for routes");
        assert_eq!(
            scope(Kind::Mesh, &None, &None, &None).unwrap(),
            (String::new(), String::new())
        );
    }
}
