//! The agent's DNS: the view as DNS names (pure), its settings, and the UDP and TCP servers
//! (`shoal_dns`) bound to the configured address.

use std::net::SocketAddr;

use anyhow::Context;
use shoal_dns::{DnsConfig, DnsHandler, DnsView};
use shoal_model::discovery::{dns_names, dns_zones, Endpoint};
use shoal_model::Model;
use tokio::sync::watch;

use super::AgentConfig;

/// The DNS settings of an agent's configuration.
pub fn dns_config(cfg: &AgentConfig) -> DnsConfig {
    DnsConfig {
        ttl: cfg.dns_ttl,
        recursors: cfg.recursors.clone(),
        ..DnsConfig::default()
    }
}

/// The DNS view of `model` and `endpoints` (pure).
pub fn build_dns(model: &Model, endpoints: &[Endpoint]) -> DnsView {
    let names = dns_names(model, endpoints);
    let zones = dns_zones(model, endpoints, &names);
    let mut view = DnsView::new(zones.into_iter().collect());
    for (name, eps) in &names {
        view.insert(
            name,
            eps.iter()
                .map(|e| shoal_dns::Endpoint {
                    address: e.instance.address,
                    port: e.instance.port,
                    healthy: e.healthy,
                })
                .collect(),
        );
    }
    view
}

/// The DNS sockets, bound before anything else starts so that a taken port fails the start.
pub(super) struct Sockets {
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    /// The address both listen on (resolved, for `:0`).
    pub addr: SocketAddr,
}

impl Sockets {
    /// Binds UDP on `addr`, then TCP on the same address and port.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Sockets> {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS (udp) to {addr}"))?;
        let bound = udp.local_addr()?;
        let tcp = tokio::net::TcpListener::bind(bound)
            .await
            .with_context(|| format!("binding DNS (tcp) to {bound}"))?;
        Ok(Sockets {
            udp,
            tcp,
            addr: bound,
        })
    }

    /// Serves DNS with `handler` until `stop` turns true.
    pub async fn serve(self, handler: DnsHandler, mut stop: watch::Receiver<bool>) {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = shoal_dns::serve_with(self.udp, self.tcp, handler, stopped).await {
            tracing::error!(error = %e, "the DNS server stopped");
        }
    }
}
