//! Command-line interface: the flags of every subcommand, and the client commands' output
//! (readable tables, or `-o json`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use shoal_model::Kind;

mod layered;
pub use layered::layered;

use crate::client::{self, Client};

/// shoal: a self-hosted App Mesh control plane.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One process with a single-node server and an example mesh, for trying shoal out.
    Dev(DevArgs),
    /// Run a server (Raft member and API).
    Server(ServerArgs),
    /// Run an agent (one per host): instances, health checks, gossip, the model cache, DNS.
    Agent(AgentArgs),
    /// Register a service instance with the local agent.
    Register(RegisterArgs),
    /// Deregister a service instance from the local agent.
    Deregister(DeregisterArgs),
    /// List the gossip members (servers and agents) a node sees.
    Members(MembersArgs),
    /// List the endpoints (every host's instances and their health) a node sees.
    Endpoints(MembersArgs),
    /// Create or update resources from JSON files in the API's request shape.
    Apply(ApplyArgs),
    /// Show resources.
    Get(GetArgs),
    /// Delete resources.
    Delete(DeleteArgs),
    /// Show the cluster's Raft status.
    Status(StatusArgs),
    /// Envoy helpers.
    #[command(subcommand)]
    Envoy(EnvoyCommand),
    /// Cluster operations.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Back up and restore the whole model.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `shoal envoy …`.
#[derive(Debug, Subcommand)]
pub enum EnvoyCommand {
    /// Print a bootstrap (JSON, which Envoy also reads as YAML) that a stock Envoy starts with
    /// to be configured by the local agent.
    Bootstrap(BootstrapArgs),
}

/// `shoal envoy bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The mesh.
    #[arg(long)]
    pub mesh: String,
    /// The virtual node this Envoy is the sidecar of.
    #[arg(
        long,
        conflicts_with = "virtual_gateway",
        required_unless_present = "virtual_gateway"
    )]
    pub virtual_node: Option<String>,
    /// The virtual gateway this Envoy is.
    #[arg(long)]
    pub virtual_gateway: Option<String>,
    /// The agent's xDS address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: String,
    /// Envoy's admin address.
    #[arg(long, default_value = "127.0.0.1")]
    pub admin_address: String,
    /// Envoy's admin port.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Port of the ingress listener.
    #[arg(long, default_value_t = 15000)]
    pub ingress_port: u16,
    /// Port of the egress listener.
    #[arg(long, default_value_t = 15001)]
    pub egress_port: u16,
    /// Address the local application listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub app_address: String,
    /// Address Envoy's listeners bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: String,
    /// Incremental xDS (DELTA_GRPC) instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// The local SDS provider's Unix socket (a SPIRE agent's), for certificates the mesh names
    /// by SDS secret.
    #[arg(long, default_value = shoal_xds::translate::SDS_SOCKET)]
    pub sds_socket: String,
}

/// `shoal envoy bootstrap`.
pub fn envoy_bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    use shoal_xds::{ProxyId, ProxyKind, ProxyOptions};
    let (kind, name) = match (&args.virtual_node, &args.virtual_gateway) {
        (Some(n), None) => (ProxyKind::VirtualNode, n.clone()),
        (None, Some(g)) => (ProxyKind::VirtualGateway, g.clone()),
        _ => bail!("give --virtual-node or --virtual-gateway"),
    };
    if args.mesh.is_empty() || name.is_empty() || args.mesh.contains('/') || name.contains('/') {
        bail!("mesh and resource names must be non-empty and hold no '/'");
    }
    let params = shoal_xds::bootstrap::BootstrapParams {
        proxy: ProxyId {
            mesh: args.mesh,
            kind,
            name,
        },
        options: ProxyOptions {
            ingress_port: args.ingress_port,
            egress_port: args.egress_port,
            app_address: args.app_address,
            listen_address: args.listen_address,
        },
        xds: args.xds,
        admin_address: args.admin_address,
        admin_port: args.admin_port,
        delta: args.delta,
        sds_socket: args.sds_socket,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&shoal_xds::bootstrap::bootstrap(&params))?
    );
    Ok(())
}

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

/// Where the client commands send their requests.
#[derive(Debug, Args)]
pub struct Target {
    /// Server API address.
    #[arg(long, env = "SHOAL_ADDR", default_value = "http://127.0.0.1:7070")]
    pub addr: String,
}

/// `shoal agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Read the configuration from this TOML file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This host's gossip name (default: the host name); keep it across restarts.
    #[arg(long)]
    pub name: Option<String>,
    /// Where registrations and the model cache live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Gossip address (UDP).
    #[arg(long)]
    pub gossip: Option<SocketAddr>,
    /// Gossip address of an existing member (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// HTTP API address [default: 127.0.0.1:7070].
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// DNS address, UDP and TCP [default: 127.0.0.1:8600].
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    /// Do not serve DNS.
    #[arg(long)]
    pub no_dns: bool,
    /// xDS (ADS) address for the local Envoys [default: 127.0.0.1:18000].
    #[arg(long)]
    pub xds: Option<SocketAddr>,
    /// Do not serve xDS.
    #[arg(long)]
    pub no_xds: bool,
    /// DNS server for names outside the mesh, `ip:port` (repeatable); none: REFUSED.
    #[arg(long)]
    pub recursor: Vec<SocketAddr>,
    /// TTL of DNS answers in seconds [default: 5].
    #[arg(long)]
    pub dns_ttl: Option<u32>,
    /// Availability zone of this host.
    #[arg(long)]
    pub zone: Option<String>,
    /// gRPC URL of a server to follow besides those gossip finds (repeatable).
    #[arg(long)]
    pub server: Vec<String>,
}

/// `shoal register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Cloud Map namespace (e.g. apps.local).
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// Cloud Map service.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Mesh of the virtual node (instead of or besides a namespace and service).
    #[arg(long, default_value = "")]
    pub mesh: String,
    /// Virtual node the instance belongs to.
    #[arg(long, default_value = "")]
    pub virtual_node: String,
    /// Instance id, unique within the service.
    #[arg(long)]
    pub instance_id: String,
    /// Address the instance listens on.
    #[arg(long)]
    pub address: std::net::IpAddr,
    /// Port the instance listens on.
    #[arg(long)]
    pub port: u16,
    /// Custom attribute `KEY=VALUE` (repeatable).
    #[arg(long = "attr")]
    pub attrs: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

/// `shoal deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// Cloud Map namespace.
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// Cloud Map service.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Mesh of the virtual node.
    #[arg(long, default_value = "")]
    pub mesh: String,
    /// Virtual node.
    #[arg(long, default_value = "")]
    pub virtual_node: String,
    /// Instance id.
    #[arg(long)]
    pub instance_id: String,
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

/// `shoal dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep data here (default: a fresh temporary directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Raft address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub raft: SocketAddr,
    /// Gossip address of the embedded agent.
    #[arg(long, default_value = "127.0.0.1:7946")]
    pub gossip: SocketAddr,
    /// DNS address of the embedded agent (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub dns: SocketAddr,
    /// xDS (ADS) address of the embedded agent, for local Envoys.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// DNS server for names outside the mesh (repeatable).
    #[arg(long)]
    pub recursor: Vec<SocketAddr>,
    /// Do not load the example mesh.
    #[arg(long)]
    pub no_example: bool,
}

/// `shoal server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML file with the same keys as the flags (`node_id`, `data_dir`, `api`, …); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Raft id of this server (unique, never reused).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API address (default 127.0.0.1:7070).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Raft address (default 127.0.0.1:7071).
    #[arg(long)]
    pub raft: Option<SocketAddr>,
    /// Gossip address.
    #[arg(long)]
    pub gossip: Option<SocketAddr>,
    /// Gossip address of an existing member (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// Servers to wait for before forming the cluster.
    #[arg(long)]
    pub bootstrap_expect: Option<u32>,
    /// Account id written into ARNs (12 digits).
    #[arg(long)]
    pub account: Option<String>,
    /// Region written into ARNs.
    #[arg(long)]
    pub region: Option<String>,
    /// DNS address of the agent role a clustered server runs (UDP and TCP); none: no DNS.
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    /// xDS address of the agent role a clustered server runs; none: no xDS.
    #[arg(long)]
    pub xds: Option<SocketAddr>,
    /// DNS server for names outside the mesh (repeatable).
    #[arg(long)]
    pub recursor: Vec<SocketAddr>,
}

/// `shoal apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories of `*.json` documents (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// `shoal get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// meshes, virtual-nodes (vn), virtual-routers (vr), routes, virtual-services (vs),
    /// virtual-gateways (vg), gateway-routes (gr).
    pub kind: String,
    /// One resource to describe; all of the kind when absent.
    pub name: Option<String>,
    /// The mesh (all kinds but meshes).
    #[arg(long, short = 'm')]
    pub mesh: Option<String>,
    /// The virtual router of routes.
    #[arg(long)]
    pub virtual_router: Option<String>,
    /// The virtual gateway of gateway routes.
    #[arg(long)]
    pub virtual_gateway: Option<String>,
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
    /// The mesh.
    #[arg(long, short = 'm')]
    pub mesh: Option<String>,
    /// The virtual router of a route.
    #[arg(long)]
    pub virtual_router: Option<String>,
    /// The virtual gateway of a gateway route.
    #[arg(long)]
    pub virtual_gateway: Option<String>,
    /// Delete what these files describe, in reverse dependency order.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
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

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).with_context(|| {
        format!("unknown kind {s:?}: use meshes, virtual-nodes, virtual-routers, routes, virtual-services, virtual-gateways or gateway-routes")
    })
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
    let (mesh, parent) = scope(
        kind,
        &args.mesh,
        &args.virtual_router,
        &args.virtual_gateway,
    )?;
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

/// A one-line summary of a spec for tables.
pub fn summary(kind: Kind, spec: &Value) -> String {
    let listeners = |v: &Value| -> String {
        v.get("listeners")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        let pm = &l["portMapping"];
                        format!("{}:{}", pm["protocol"].as_str().unwrap_or("?"), pm["port"])
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let targets = |r: &Value| -> String {
        r["action"]["weightedTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}={}",
                            t["virtualNode"].as_str().unwrap_or("?"),
                            t["weight"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match kind {
        Kind::Mesh => format!(
            "egress={}",
            spec["egressFilter"]["type"].as_str().unwrap_or("DROP_ALL")
        ),
        Kind::VirtualNode => {
            let sd = &spec["serviceDiscovery"];
            let disc = if let Some(h) = sd["dns"]["hostname"].as_str() {
                format!("dns={h}")
            } else if sd["awsCloudMap"].is_object() {
                format!(
                    "cloudmap={}.{}",
                    sd["awsCloudMap"]["serviceName"].as_str().unwrap_or("?"),
                    sd["awsCloudMap"]["namespaceName"].as_str().unwrap_or("?")
                )
            } else {
                "no-discovery".into()
            };
            let backends = spec["backends"].as_array().map(|b| b.len()).unwrap_or(0);
            format!(
                "listeners={} {} backends={}",
                listeners(spec),
                disc,
                backends
            )
        }
        Kind::VirtualRouter | Kind::VirtualGateway => format!("listeners={}", listeners(spec)),
        Kind::Route => {
            for t in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
                if spec[t].is_object() {
                    return format!("{} -> {}", t.trim_end_matches("Route"), targets(&spec[t]));
                }
            }
            String::new()
        }
        Kind::VirtualService => {
            let p = &spec["provider"];
            if let Some(n) = p["virtualNode"]["virtualNodeName"].as_str() {
                format!("node={n}")
            } else if let Some(r) = p["virtualRouter"]["virtualRouterName"].as_str() {
                format!("router={r}")
            } else {
                "no-provider".into()
            }
        }
        Kind::GatewayRoute => {
            for t in ["httpRoute", "http2Route", "grpcRoute"] {
                if let Some(vs) =
                    spec[t]["action"]["target"]["virtualService"]["virtualServiceName"].as_str()
                {
                    return format!("{} -> {vs}", t.trim_end_matches("Route"));
                }
            }
            String::new()
        }
    }
}

/// Renders described resources as aligned columns.
pub fn table(kind: Kind, items: &[Value]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let parent_col = match kind {
        Kind::Route => Some("ROUTER"),
        Kind::GatewayRoute => Some("GATEWAY"),
        _ => None,
    };
    let mut header = vec!["NAME".to_string()];
    if kind != Kind::Mesh {
        header.push("MESH".into());
    }
    if let Some(p) = parent_col {
        header.push(p.into());
    }
    header.extend(["VERSION", "STATUS", "SPEC"].map(String::from));
    rows.push(header);
    for it in items {
        let mut row = vec![it[kind.name_member()]
            .as_str()
            .unwrap_or_default()
            .to_string()];
        if kind != Kind::Mesh {
            row.push(it["meshName"].as_str().unwrap_or_default().to_string());
        }
        match kind {
            Kind::Route => row.push(
                it["virtualRouterName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            Kind::GatewayRoute => row.push(
                it["virtualGatewayName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => {}
        }
        row.push(it["metadata"]["version"].to_string());
        row.push(
            it["status"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        row.push(summary(kind, &it["spec"]));
        rows.push(row);
    }
    align(&rows)
}

fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
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
    let (mesh, parent) = scope(
        kind,
        &args.mesh,
        &args.virtual_router,
        &args.virtual_gateway,
    )?;
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

/// `shoal register`.
pub async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let mut attributes = serde_json::Map::new();
    for a in &args.attrs {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--attr takes KEY=VALUE, got {a:?}");
        };
        attributes.insert(k.to_string(), Value::String(v.to_string()));
    }
    let body = serde_json::json!({
        "namespace": args.namespace, "service": args.service,
        "mesh": args.mesh, "virtualNode": args.virtual_node,
        "instanceId": args.instance_id, "address": args.address, "port": args.port,
        "attributes": attributes,
    });
    let c = Client::new(&args.target.addr)?;
    let v = c
        .call(reqwest::Method::PUT, &agent_instances(), &[], Some(body))
        .await?;
    println!("registered {}", v["key"].as_str().unwrap_or_default());
    Ok(())
}

fn agent_instances() -> Vec<String> {
    ["v1", "agent", "instances"].map(String::from).to_vec()
}

/// `shoal deregister`.
pub async fn deregister(args: DeregisterArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    let query = [
        ("namespace", args.namespace.as_str()),
        ("service", args.service.as_str()),
        ("mesh", args.mesh.as_str()),
        ("virtualNode", args.virtual_node.as_str()),
        ("instanceId", args.instance_id.as_str()),
    ];
    let v = c
        .call(reqwest::Method::DELETE, &agent_instances(), &query, None)
        .await?;
    println!("deregistered {}", v["key"].as_str().unwrap_or_default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_table_shows_targets_and_parent() {
        let item = json!({
            "routeName": "r1", "meshName": "m", "virtualRouterName": "vr",
            "metadata": {"version": 3}, "status": {"status": "ACTIVE"},
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": "a", "weight": 60}, {"virtualNode": "b", "weight": 40}]}}}
        });
        assert_eq!(
            table(Kind::Route, &[item]),
            "NAME  MESH  ROUTER  VERSION  STATUS  SPEC\n\
             r1    m     vr      3        ACTIVE  http -> a=60,b=40\n"
        );
    }

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
