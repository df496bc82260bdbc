//! The bootstrap a stock Envoy starts with to be configured by a shoal agent
//! (`shoal envoy bootstrap`). Pure: the same arguments always give the same JSON (which Envoy
//! reads as YAML).

use serde_json::{json, Value};

use crate::proxy::{ProxyId, ProxyOptions};

/// What goes into a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    /// The proxy's identity (its node id).
    pub proxy: ProxyId,
    /// Ports and addresses the agent builds the listeners with (sent as node metadata).
    pub options: ProxyOptions,
    /// The agent's xDS address, `host:port` (an IP address or a DNS name).
    pub xds: String,
    /// Envoy's admin address.
    pub admin_address: String,
    /// Envoy's admin port (App Mesh: 9901).
    pub admin_port: u16,
    /// Use incremental xDS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
    /// The local SDS provider's Unix socket (a SPIRE agent's), which the bootstrap cluster
    /// [`crate::translate::SDS_CLUSTER`] reaches, for certificates the model names by SDS
    /// secret. Envoy connects only when a listener or cluster asks for such a secret.
    pub sds_socket: String,
    /// The proxy's token for an agent run with `--xds-auth`, sent as gRPC initial metadata
    /// on the ADS stream ([`crate::proxy::PROXY_TOKEN_HEADER`]).
    pub proxy_token: Option<String>,
}

/// The ADS gRPC service of the bootstrap, with the proxy token as initial metadata if any.
fn grpc_service(token: Option<&str>) -> Value {
    match token {
        None => json!({"envoy_grpc": {"cluster_name": "shoal-xds"}}),
        Some(t) => json!({
            "envoy_grpc": {"cluster_name": "shoal-xds"},
            "initial_metadata": [{"key": crate::proxy::PROXY_TOKEN_HEADER, "value": t}],
        }),
    }
}

/// The bootstrap for `p`: node id and metadata, the admin listener, ADS over gRPC to the agent
/// (HTTP/2 with keepalives, so a dead agent is noticed and Envoy reconnects with backoff while
/// it keeps serving its last configuration), CDS and LDS from ADS.
pub fn bootstrap(p: &BootstrapParams) -> Value {
    let (host, port) = split_host_port(&p.xds);
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "node": {
            "id": p.proxy.to_string(),
            "cluster": format!("{}/{}", p.proxy.mesh, p.proxy.name),
            "metadata": {
                "shoal.ingress_port": p.options.ingress_port.to_string(),
                "shoal.egress_port": p.options.egress_port.to_string(),
                "shoal.app_address": p.options.app_address,
                "shoal.listen_address": p.options.listen_address,
            },
        },
        "admin": {
            "address": {"socket_address": {"address": p.admin_address, "port_value": p.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if p.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [grpc_service(p.proxy_token.as_deref())],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": "shoal-xds",
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "shoal-xds",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": host, "port_value": port},
                    }}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "5s", "timeout": "5s"},
                        }},
                    },
                },
            }, {
                "name": crate::translate::SDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": crate::translate::SDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "pipe": {"path": p.sds_socket},
                    }}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
            }],
        },
    })
}

/// `host:port` or `[v6]:port` → (host, port); port 18000 when none is given.
fn split_host_port(addr: &str) -> (String, u16) {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().unwrap_or(18000)),
        _ => (addr.to_string(), 18000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(xds: &str) -> BootstrapParams {
        BootstrapParams {
            proxy: ProxyId::parse("mesh/colorapp/virtualNode/red").unwrap(),
            options: ProxyOptions::default(),
            xds: xds.into(),
            admin_address: "127.0.0.1".into(),
            admin_port: 9901,
            delta: false,
            sds_socket: crate::translate::SDS_SOCKET.into(),
            proxy_token: None,
        }
    }

    #[test]
    fn a_bootstrap_points_envoy_at_its_agent() {
        let b = bootstrap(&params("127.0.0.1:18000"));
        assert_eq!(b["node"]["id"], "mesh/colorapp/virtualNode/red");
        assert_eq!(b["node"]["metadata"]["shoal.egress_port"], "15001");
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        let sa = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(sa["address"], "127.0.0.1");
        assert_eq!(sa["port_value"], 18000);
        let sds = &b["static_resources"]["clusters"][1];
        assert_eq!(sds["name"], crate::translate::SDS_CLUSTER);
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            crate::translate::SDS_SOCKET
        );
        let named = bootstrap(&BootstrapParams {
            delta: true,
            ..params("agent.local:19000")
        });
        assert_eq!(
            named["static_resources"]["clusters"][0]["type"],
            "STRICT_DNS"
        );
        assert_eq!(
            named["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }
}
