//! `shoal envoy bootstrap`: the bootstrap a stock Envoy starts with to be configured by the
//! local agent.

use anyhow::bail;
use clap::{Args, Subcommand};

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
    /// The agent's proxy-token key (`<agent data dir>/proxy-token.key`), for an agent run with
    /// `--xds-auth`: the bootstrap then carries this proxy's token, and only this proxy's.
    #[arg(long)]
    pub proxy_token_key: Option<std::path::PathBuf>,
}

/// `shoal envoy bootstrap`.
pub(super) fn bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    use shoal_xds::{ProxyId, ProxyKind, ProxyOptions};
    let (kind, name) = match (&args.virtual_node, &args.virtual_gateway) {
        (Some(n), None) => (ProxyKind::VirtualNode, n.clone()),
        (None, Some(g)) => (ProxyKind::VirtualGateway, g.clone()),
        _ => bail!("give --virtual-node or --virtual-gateway"),
    };
    if args.mesh.is_empty() || name.is_empty() || args.mesh.contains('/') || name.contains('/') {
        bail!("mesh and resource names must be non-empty and hold no '/'");
    }
    let proxy = ProxyId {
        mesh: args.mesh,
        kind,
        name,
    };
    let proxy_token = match &args.proxy_token_key {
        None => None,
        Some(path) => {
            let secret = crate::agent::read_proxy_token_key(path)?;
            Some(shoal_xds::proxy::proxy_token(&secret, &proxy))
        }
    };
    let params = shoal_xds::bootstrap::BootstrapParams {
        proxy,
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
        proxy_token,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&shoal_xds::bootstrap::bootstrap(&params))?
    );
    Ok(())
}
