//! Names of the Envoy resources shoal generates.
//!
//! Names are stable (a function of the model, never of time or order of arrival) so that a
//! recomputed snapshot replaces resources in place and Envoy keeps its connection pools and
//! stats, and readable (they show up in Envoy's stats and admin pages), in the style App Mesh
//! used: `cds_egress_<mesh>_<virtualNode>_<protocol>_<port>`, `lds_ingress_0.0.0.0_15000`,
//! `rds_egress_http_9080`. The parts come from names the model restricts to letters, digits,
//! `-`, `_` and `.`; a suffix that is not such a name uses `@`, which no model name holds, so two
//! different resources never get the same name.

use shoal_model::api::PortProtocol;

/// The protocol as it appears in names (`http`, `http2`, `grpc`, `tcp`).
pub fn protocol(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Http => "http",
        PortProtocol::Http2 => "http2",
        PortProtocol::Grpc => "grpc",
        PortProtocol::Tcp => "tcp",
    }
}

/// The listener that takes traffic into a proxy on `port`: the sidecar's ingress listener
/// (15000) or one listener of a virtual gateway.
pub fn ingress_listener(address: &str, port: u16) -> String {
    format!("lds_ingress_{address}_{port}")
}

/// The sidecar's egress listener (15001), which the application's outbound traffic reaches.
pub fn egress_listener(address: &str, port: u16) -> String {
    format!("lds_egress_{address}_{port}")
}

/// The route configuration of an ingress listener's HTTP filter chain for model listener port
/// `port` (sidecars) or of a gateway listener.
pub fn ingress_routes(protocol: PortProtocol, port: u16) -> String {
    format!("rds_ingress_{}_{port}", self::protocol(protocol))
}

/// The route configuration of the egress filter chain for destination port `port`: every
/// backend served over HTTP, HTTP/2 or gRPC on that port.
pub fn egress_routes(port: u16) -> String {
    format!("rds_egress_http_{port}")
}

/// The cluster of the local application behind model listener `port` of virtual node `node`.
pub fn ingress_cluster(mesh: &str, node: &str, protocol: PortProtocol, port: u16) -> String {
    format!(
        "cds_ingress_{mesh}_{node}_{}_{port}",
        self::protocol(protocol)
    )
}

/// The cluster that reaches virtual node `node` on its listener `port` (EDS).
pub fn egress_cluster(mesh: &str, node: &str, protocol: PortProtocol, port: u16) -> String {
    format!(
        "cds_egress_{mesh}_{node}_{}_{port}",
        self::protocol(protocol)
    )
}

/// A second cluster to the same node and port that differs in its client TLS settings (a
/// backend whose own client policy differs from another's): the base name, `@`, and the
/// virtual service whose policy it carries.
pub fn egress_cluster_variant(base: &str, virtual_service: &str) -> String {
    format!("{base}@{virtual_service}")
}

/// The original-destination cluster that ALLOW_ALL meshes send unknown destinations to.
pub const PASSTHROUGH_CLUSTER: &str = "cds_egress_passthrough";
