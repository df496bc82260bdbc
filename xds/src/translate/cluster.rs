//! Clusters and their endpoints: the local application behind a sidecar's ingress, and the
//! virtual nodes a proxy sends traffic to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check, HealthCheck, Http1ProtocolOptions, Http2ProtocolOptions,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    endpoint, lb_endpoint, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use shoal_model::api::{self, PortProtocol};
use shoal_model::discovery::Endpoint;

use super::util::{self, ClientTls};
use std::sync::Arc;

use super::{names, Ctx, TranslateError};
use crate::snapshot::{Resource, ResourceType};

/// Envoy's default circuit breakers (1,024 connections, requests, pending requests; 3
/// retries) are far below what App Mesh configured: App Mesh left circuit breaking effectively
/// off unless a listener's connection pool said otherwise. This is the threshold used for
/// "off".
pub const UNLIMITED: u32 = 2_147_483_647;

/// Circuit breaker limits (App Mesh's connection pool settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
        }
    }
}

impl Limits {
    /// The limits a virtual node listener's connection pool sets (the rest stay unlimited).
    pub fn of_node(pool: Option<&api::VirtualNodeConnectionPool>) -> Limits {
        let mut l = Limits::default();
        match pool {
            Some(api::VirtualNodeConnectionPool::Http(p)) => {
                l.max_connections = util::clamp_u32(p.max_connections.into());
                if let Some(m) = p.max_pending_requests {
                    l.max_pending_requests = util::clamp_u32(m.into());
                }
            }
            Some(api::VirtualNodeConnectionPool::Http2(p)) => {
                l.max_requests = util::clamp_u32(p.max_requests.into())
            }
            Some(api::VirtualNodeConnectionPool::Grpc(p)) => {
                l.max_requests = util::clamp_u32(p.max_requests.into())
            }
            Some(api::VirtualNodeConnectionPool::Tcp(p)) => {
                l.max_connections = util::clamp_u32(p.max_connections.into())
            }
            None => {}
        }
        l
    }

    /// The limits a virtual gateway listener's connection pool sets.
    pub fn of_gateway(pool: Option<&api::VirtualGatewayConnectionPool>) -> Limits {
        let mut l = Limits::default();
        match pool {
            Some(api::VirtualGatewayConnectionPool::Http(p)) => {
                l.max_connections = util::clamp_u32(p.max_connections.into());
                if let Some(m) = p.max_pending_requests {
                    l.max_pending_requests = util::clamp_u32(m.into());
                }
            }
            Some(api::VirtualGatewayConnectionPool::Http2(p)) => {
                l.max_requests = util::clamp_u32(p.max_requests.into())
            }
            Some(api::VirtualGatewayConnectionPool::Grpc(p)) => {
                l.max_requests = util::clamp_u32(p.max_requests.into())
            }
            None => {}
        }
        l
    }

    fn breakers(self) -> CircuitBreakers {
        CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_connections: util::u32v(self.max_connections),
                max_pending_requests: util::u32v(self.max_pending_requests),
                max_requests: util::u32v(self.max_requests),
                max_retries: util::u32v(UNLIMITED),
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}

/// Whether a protocol is carried by Envoy's HTTP connection manager.
pub(crate) fn http_like(p: PortProtocol) -> bool {
    !matches!(p, PortProtocol::Tcp)
}

/// Sets the upstream HTTP version of a cluster: HTTP/2 for http2 and grpc targets, HTTP/1.1
/// for http; nothing for tcp.
fn protocol_options(c: &mut Cluster, p: PortProtocol) {
    let config = match p {
        PortProtocol::Tcp => return,
        PortProtocol::Http => {
            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )
        }
        PortProtocol::Http2 | PortProtocol::Grpc => {
            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )
        }
    };
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(config),
                },
            ),
        ),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        util::any(&opts),
    );
}

/// ALPN a TLS client offers to a target of protocol `p` (Envoy's HTTP codec detection over TLS
/// relies on it).
pub(crate) fn client_alpn(p: PortProtocol) -> &'static [&'static str] {
    match p {
        PortProtocol::Tcp => &[],
        PortProtocol::Http => &["http/1.1"],
        PortProtocol::Http2 | PortProtocol::Grpc => &["h2"],
    }
}

/// An active health check of the local application. Envoy checks gRPC health only over
/// HTTP/2, so a gRPC health check of an application the listener reaches over HTTP/1.1 or
/// TCP becomes a TCP connect check (Envoy would refuse the configuration otherwise).
fn health_check(hc: &api::HealthCheckPolicy, listener: PortProtocol) -> HealthCheck {
    let grpc_ok = matches!(listener, PortProtocol::Http2 | PortProtocol::Grpc);
    let protocol = match hc.protocol {
        PortProtocol::Grpc if !grpc_ok => PortProtocol::Tcp,
        p => p,
    };
    let checker = match protocol {
        PortProtocol::Http | PortProtocol::Http2 => {
            health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: hc.path.clone().unwrap_or_else(|| "/".into()),
                codec_client_type: if hc.protocol == PortProtocol::Http2 {
                    1
                } else {
                    0
                },
                ..Default::default()
            })
        }
        PortProtocol::Grpc => {
            health_check::HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck::default())
        }
        PortProtocol::Tcp => {
            health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
        }
    };
    HealthCheck {
        timeout: Some(util::millis(hc.timeout_millis.max(1))),
        interval: Some(util::millis(hc.interval_millis.max(1))),
        unhealthy_threshold: util::u32v(util::clamp_u32(hc.unhealthy_threshold.into())),
        healthy_threshold: util::u32v(util::clamp_u32(hc.healthy_threshold.into())),
        health_checker: Some(checker),
        ..Default::default()
    }
}

fn outlier_detection(od: &api::OutlierDetection) -> OutlierDetection {
    // Envoy requires positive durations; a zero or empty model duration keeps Envoy's default.
    let positive = |d: &api::Duration| util::duration(d).filter(|d| !util::is_zero(d));
    OutlierDetection {
        consecutive_5xx: util::u32v(util::clamp_u32(od.max_server_errors)),
        interval: positive(&od.interval),
        base_ejection_time: positive(&od.base_ejection_duration),
        max_ejection_percent: util::u32v(util::clamp_u32(od.max_ejection_percent.into()).min(100)),
        enforcing_consecutive_5xx: util::u32v(100),
        // Only the model's detector: success-rate ejection is Envoy's own default and App
        // Mesh did not expose it.
        enforcing_success_rate: util::u32v(0),
        ..Default::default()
    }
}

fn lb_endpoint(address: &str, port: u16, health_port: Option<u16>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(util::socket(address, port)),
            health_check_config: health_port.map(|p| endpoint::HealthCheckConfig {
                port_value: u32::from(p),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The cluster of the local application behind model listener `l` of virtual node `node`:
/// static, at the proxy's application address and the listener's port, with the listener's
/// connection pool as circuit breakers and its health check as an active health check.
pub(crate) fn ingress_cluster(ctx: &mut Ctx<'_>, node: &str, l: &api::Listener) -> String {
    let port = port_of(l.port_mapping.port);
    let proto = l.port_mapping.protocol;
    let name = names::ingress_cluster(ctx.mesh, node, proto, port);
    let health_port = l
        .health_check
        .as_ref()
        .and_then(|hc| hc.port)
        .map(port_of)
        .filter(|p| *p != port);
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(&ctx.opts.app_address, port, health_port)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        circuit_breakers: Some(Limits::of_node(l.connection_pool.as_ref()).breakers()),
        health_checks: l
            .health_check
            .iter()
            .map(|hc| health_check(hc, proto))
            .collect(),
        ..Default::default()
    };
    protocol_options(&mut c, proto);
    ctx.out.clusters.insert(name.clone(), c);
    name
}

/// A model port (1–65535 by the model's constraints) as a `u16`.
pub(crate) fn port_of(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// What an egress cluster's content depends on besides the view: its name (which holds the
/// mesh, the target node, protocol and port, and the variant), its client TLS and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SharedKey {
    name: String,
    tls: Option<ClientTls>,
    limits: Limits,
}

/// An encoded egress cluster and its endpoints (EDS clusters only).
pub(crate) type SharedCluster = (Arc<Resource>, Option<Arc<Resource>>);

/// What distinguishes one egress cluster from another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EgressKey {
    node: String,
    port: u16,
    tls: Option<ClientTls>,
}

/// The egress clusters of one proxy, deduplicated by target and TLS settings.
#[derive(Debug, Default)]
pub(crate) struct EgressClusters {
    by_key: BTreeMap<EgressKey, String>,
    taken: BTreeSet<String>,
}

/// The listener of virtual node `spec` that a target reaches: the one on `port` when given;
/// otherwise the only one, or the first whose protocol is `protocol`, or the first.
pub(crate) fn target_listener(
    spec: &api::VirtualNodeSpec,
    port: Option<u16>,
    protocol: Option<PortProtocol>,
) -> Option<&api::Listener> {
    let listeners = spec.listeners.as_deref().unwrap_or_default();
    if let Some(p) = port {
        return listeners.iter().find(|l| port_of(l.port_mapping.port) == p);
    }
    if listeners.len() == 1 {
        return listeners.first();
    }
    protocol
        .and_then(|proto| listeners.iter().find(|l| l.port_mapping.protocol == proto))
        .or_else(|| listeners.first())
}

/// The node's service discovery hostname: its `dns` hostname or its Cloud Map
/// `<service>.<namespace>`. Used as the TLS server name (the name its certificate is
/// usually issued for).
fn discovery_name(spec: &api::VirtualNodeSpec) -> String {
    match &spec.service_discovery {
        Some(api::ServiceDiscovery::Dns(d)) => d.hostname.trim_end_matches('.').to_string(),
        Some(api::ServiceDiscovery::AwsCloudMap(cm)) => {
            format!("{}.{}", cm.service_name, cm.namespace_name)
        }
        None => String::new(),
    }
}

fn ip_preference(ctx: &Ctx<'_>, spec: &api::VirtualNodeSpec) -> Option<api::IpPreference> {
    let own = match &spec.service_discovery {
        Some(api::ServiceDiscovery::Dns(d)) => d.ip_preference,
        Some(api::ServiceDiscovery::AwsCloudMap(cm)) => cm.ip_preference,
        None => None,
    };
    own.or_else(|| {
        ctx.mesh_spec
            .service_discovery
            .as_ref()
            .and_then(|s| s.ip_preference)
    })
}

/// The instances EDS lists for a virtual node: those `discovery` selects for it (as DNS does),
/// restricted to one address family when the node's (or mesh's) IP preference says
/// `IPv4_ONLY`/`IPv6_ONLY`; the healthy ones, or all of them when none is healthy (Cloud
/// Map's HEALTHY_OR_ELSE_ALL, as DNS answers). Sorted by address and port.
pub(crate) fn node_instances<'e>(
    ctx: &Ctx<'e>,
    node: &str,
    spec: &api::VirtualNodeSpec,
) -> Vec<&'e Endpoint> {
    let family = ip_preference(ctx, spec);
    let mut all: Vec<&Endpoint> = ctx
        .node_endpoints(node)
        .into_iter()
        .filter(|e| match family {
            Some(api::IpPreference::IPv4Only) => e.instance.address.is_ipv4(),
            Some(api::IpPreference::IPv6Only) => e.instance.address.is_ipv6(),
            _ => true,
        })
        .collect();
    if all.iter().any(|e| e.healthy) {
        all.retain(|e| e.healthy);
    }
    all.sort_by(|a, b| {
        (a.instance.address, a.instance.port, &a.instance.id).cmp(&(
            b.instance.address,
            b.instance.port,
            &b.instance.id,
        ))
    });
    all.dedup_by(|a, b| {
        a.instance.address == b.instance.address && a.instance.port == b.instance.port
    });
    all
}

/// Every address an instance of virtual node `node` has, healthy or not (what a client may
/// have been told by DNS).
pub(crate) fn node_addresses(ctx: &Ctx<'_>, node: &str) -> BTreeSet<IpAddr> {
    ctx.node_endpoints(node)
        .into_iter()
        .map(|e| e.instance.address)
        .collect()
}

impl Ctx<'_> {
    /// The egress cluster that reaches virtual node `node` on the listener [`target_listener`]
    /// picks, with client TLS `tls` when it applies to that port; `None` when the node does
    /// not exist or has no such listener (the target then gets no traffic). `via` names the
    /// virtual service whose policy a variant cluster carries.
    pub(crate) fn egress_cluster(
        &mut self,
        node: &str,
        port: Option<u16>,
        protocol: Option<PortProtocol>,
        tls: Option<&ClientTls>,
        via: &str,
        limits: Limits,
    ) -> Result<Option<(String, PortProtocol)>, TranslateError> {
        let Some(spec) = self.node_spec(node) else {
            return Ok(None);
        };
        let Some(l) = target_listener(spec, port, protocol) else {
            return Ok(None);
        };
        let port = port_of(l.port_mapping.port);
        let proto = l.port_mapping.protocol;
        let tls = tls
            .filter(|t| t.applies_to(port))
            .cloned()
            .map(|t| t.for_target(self.mesh, node, self.trust_domain));
        if let Some(t) = &tls {
            self.out.want_agent_secrets(t.agent_secrets());
        }
        let key = EgressKey {
            node: node.to_string(),
            port,
            tls: tls.clone(),
        };
        if let Some(name) = self.egress.by_key.get(&key) {
            return Ok(Some((name.clone(), proto)));
        }
        let base = names::egress_cluster(self.mesh, node, proto, port);
        let name = if self.egress.taken.contains(&base) {
            names::egress_cluster_variant(&base, via)
        } else {
            base
        };
        if !self.egress.taken.insert(name.clone()) {
            return Err(TranslateError::NameCollision(name));
        }
        self.egress.by_key.insert(key, name.clone());

        // Another proxy of this view may have built the very same cluster.
        let shared_key = SharedKey {
            name: name.clone(),
            tls: tls.clone(),
            limits,
        };
        if let Some((c, load)) = self.shared.cluster(&shared_key) {
            self.out.encoded.push((ResourceType::Cluster, c));
            if let Some(load) = load {
                self.out.encoded.push((ResourceType::Endpoint, load));
            }
            return Ok(Some((name, proto)));
        }

        let spec = spec.clone();
        let listener = l.clone();
        let instances = node_instances(self, node, &spec);
        let single_listener = spec.listeners.as_deref().unwrap_or_default().len() <= 1;
        let mut c = Cluster {
            name: name.clone(),
            lb_policy: cluster::LbPolicy::RoundRobin as i32,
            circuit_breakers: Some(limits.breakers()),
            outlier_detection: listener.outlier_detection.as_ref().map(outlier_detection),
            ..Default::default()
        };
        let mut load = None;
        let dns = match &spec.service_discovery {
            Some(api::ServiceDiscovery::Dns(d)) if instances.is_empty() => Some(d.clone()),
            _ => None,
        };
        if let Some(d) = dns {
            // A DNS-discovered node that no registered instance backs (an external service):
            // Envoy resolves its hostname itself, as App Mesh's Envoy did.
            let ty = match d.response_type {
                Some(api::DnsResponseType::Loadbalancer) => cluster::DiscoveryType::LogicalDns,
                _ => cluster::DiscoveryType::StrictDns,
            };
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(ty as i32));
            c.dns_lookup_family = match ip_preference(self, &spec) {
                Some(api::IpPreference::IPv4Only) => cluster::DnsLookupFamily::V4Only,
                Some(api::IpPreference::IPv6Only) => cluster::DnsLookupFamily::V6Only,
                Some(api::IpPreference::IPv4Preferred) => cluster::DnsLookupFamily::V4Preferred,
                Some(api::IpPreference::IPv6Preferred) => cluster::DnsLookupFamily::Auto,
                None => cluster::DnsLookupFamily::V4Preferred,
            } as i32;
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![lb_endpoint(d.hostname.trim_end_matches('.'), port, None)],
                    ..Default::default()
                }],
                ..Default::default()
            });
        } else {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(util::ads()),
                service_name: String::new(),
            });
            let lb_endpoints: Vec<LbEndpoint> = instances
                .iter()
                .map(|e| {
                    // An instance registers one port; for a node with several listeners it
                    // is reached on each listener's port.
                    let p = if single_listener {
                        e.instance.port
                    } else {
                        port
                    };
                    lb_endpoint(&e.instance.address.to_string(), p, None)
                })
                .collect();
            let cla = ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: if lb_endpoints.is_empty() {
                    Vec::new()
                } else {
                    vec![LocalityLbEndpoints {
                        lb_endpoints,
                        ..Default::default()
                    }]
                },
                ..Default::default()
            };
            load = Some(Arc::new(Resource::new(name.clone(), &cla)));
        }
        protocol_options(&mut c, proto);
        if let Some(tls) = &tls {
            c.transport_socket = Some(util::upstream_tls(
                tls,
                &discovery_name(&spec),
                client_alpn(proto),
            ));
        }
        let c = Arc::new(Resource::new(name.clone(), &c));
        self.shared
            .remember_cluster(shared_key, (c.clone(), load.clone()));
        self.out.encoded.push((ResourceType::Cluster, c));
        if let Some(load) = load {
            self.out.encoded.push((ResourceType::Endpoint, load));
        }
        Ok(Some((name, proto)))
    }
}
