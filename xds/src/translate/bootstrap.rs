//! A snapshot as a static Envoy bootstrap: what `envoy --mode validate` checks, and a way to
//! run a proxy on a fixed configuration without an agent.

use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, Address, Node, Pipe};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use prost::{Message, Name};

use super::{consistency, util, SDS_CLUSTER};
use crate::snapshot::{ResourceType, Snapshot};

/// Where the static bootstrap's [`SDS_CLUSTER`] points: the SPIRE agent's usual socket.
pub const SDS_SOCKET: &str = "/run/spire/sockets/agent.sock";

fn inline_routes(chain: &mut FilterChain, s: &Snapshot) -> Result<(), prost::DecodeError> {
    for f in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            continue;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let mut h = HttpConnectionManager::decode(any.value.as_slice())?;
        if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &h.route_specifier {
            let rc = match s.resources(ResourceType::Route).get(&rds.route_config_name) {
                Some(r) => RouteConfiguration::decode(r.any.value.as_slice())?,
                None => RouteConfiguration {
                    name: rds.route_config_name.clone(),
                    ..Default::default()
                },
            };
            h.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
        }
        *any = util::any(&h);
    }
    Ok(())
}

/// `s` as a bootstrap with only static resources, for node `node_id`: route configurations
/// inlined into their HTTP connection managers, EDS clusters turned static with their
/// endpoints inlined, secrets as static secrets, and the [`SDS_CLUSTER`] (to [`SDS_SOCKET`])
/// when the configuration fetches secrets from the local SDS provider.
pub fn static_bootstrap(s: &Snapshot, node_id: &str) -> Result<Bootstrap, prost::DecodeError> {
    let mut resources = bootstrap::StaticResources::default();
    for r in s.resources(ResourceType::Listener).values() {
        let mut l = Listener::decode(r.any.value.as_slice())?;
        for c in &mut l.filter_chains {
            inline_routes(c, s)?;
        }
        if let Some(c) = &mut l.default_filter_chain {
            inline_routes(c, s)?;
        }
        resources.listeners.push(l);
    }
    for r in s.resources(ResourceType::Cluster).values() {
        let mut c = Cluster::decode(r.any.value.as_slice())?;
        if c.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ))
        {
            let load = match s.resources(ResourceType::Endpoint).get(&c.name) {
                Some(e) => ClusterLoadAssignment::decode(e.any.value.as_slice())?,
                None => ClusterLoadAssignment {
                    cluster_name: c.name.clone(),
                    ..Default::default()
                },
            };
            c.eds_cluster_config = None;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            ));
            c.load_assignment = Some(load);
        }
        resources.clusters.push(c);
    }
    for r in s.resources(ResourceType::Secret).values() {
        resources
            .secrets
            .push(Secret::decode(r.any.value.as_slice())?);
    }
    if !consistency::collect(s).external_secrets.is_empty() {
        let mut sds = Cluster {
            name: SDS_CLUSTER.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: SDS_CLUSTER.into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::Pipe(Pipe {
                                    path: SDS_SOCKET.into(),
                                    mode: 0,
                                })),
                            }),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let h2 = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Default::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        sds.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            util::any(&h2),
        );
        resources.clusters.push(sds);
    }
    Ok(Bootstrap {
        node: Some(Node {
            id: node_id.to_string(),
            cluster: node_id.to_string(),
            ..Default::default()
        }),
        static_resources: Some(resources),
        ..Default::default()
    })
}
