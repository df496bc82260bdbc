//! What Envoy needs of a snapshot as a whole: every name a resource refers to resolves.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source, config_source, data_source, grpc_service, ConfigSource, DataSource,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    UpstreamTlsContext,
};
use prost::{Message, Name};

use super::SDS_CLUSTER;
use crate::snapshot::{ResourceType, Snapshot};

/// The problems [`check_consistency`] found, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent snapshot: {}", .0.join("; "))]
pub struct ConsistencyError(pub Vec<String>);

/// The names a snapshot's resources refer to, and the problems seen while collecting them.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    pub clusters: BTreeSet<String>,
    pub routes: BTreeSet<String>,
    pub loads: BTreeSet<String>,
    /// Secrets served over ADS.
    pub secrets: BTreeSet<String>,
    /// Secrets fetched from the local SDS provider through [`SDS_CLUSTER`].
    pub external_secrets: BTreeSet<String>,
    /// Files the proxy reads (`file` certificates, keys and trust bundles).
    pub files: BTreeSet<String>,
    pub problems: Vec<String>,
}

fn decode<T: Message + Default + Name>(bytes: &[u8], what: &str, refs: &mut Refs) -> Option<T> {
    match T::decode(bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            refs.problems
                .push(format!("{what}: cannot decode {}: {e}", T::full_name()));
            None
        }
    }
}

impl Refs {
    fn sds(&mut self, s: &SdsSecretConfig, what: &str) {
        match s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()) {
            Some(config_source::ConfigSourceSpecifier::Ads(_)) => {
                self.secrets.insert(s.name.clone());
            }
            Some(config_source::ConfigSourceSpecifier::ApiConfigSource(a))
                if a.api_type == api_config_source::ApiType::Grpc as i32
                    && a.grpc_services.iter().all(|g| {
                        matches!(&g.target_specifier,
                            Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) if e.cluster_name == SDS_CLUSTER)
                    })
                    && !a.grpc_services.is_empty() =>
            {
                self.external_secrets.insert(s.name.clone());
            }
            _ => self.problems.push(format!(
                "{what}: secret {} comes from neither ADS nor {SDS_CLUSTER}",
                s.name
            )),
        }
    }

    fn file(&mut self, d: Option<&DataSource>) {
        if let Some(data_source::Specifier::Filename(f)) = d.and_then(|d| d.specifier.as_ref()) {
            self.files.insert(f.clone());
        }
    }

    fn common_tls(&mut self, c: &CommonTlsContext, what: &str) {
        for s in &c.tls_certificate_sds_secret_configs {
            self.sds(s, what);
        }
        for t in &c.tls_certificates {
            self.file(t.certificate_chain.as_ref());
            self.file(t.private_key.as_ref());
        }
        match &c.validation_context_type {
            Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
                self.file(v.trusted_ca.as_ref());
            }
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                s,
            )) => self.sds(s, what),
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
                if let Some(s) = &c.validation_context_sds_secret_config {
                    self.sds(s, what);
                }
                self.file(
                    c.default_validation_context
                        .as_ref()
                        .and_then(|v| v.trusted_ca.as_ref()),
                );
            }
            _ => {}
        }
    }

    fn transport_socket(&mut self, t: &TransportSocket, upstream: bool, what: &str) {
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = &t.config_type
        else {
            return;
        };
        if upstream && any.type_url == UpstreamTlsContext::type_url() {
            if let Some(c) = decode::<UpstreamTlsContext>(&any.value, what, self) {
                if let Some(common) = &c.common_tls_context {
                    self.common_tls(common, what);
                }
            }
        } else if !upstream && any.type_url == DownstreamTlsContext::type_url() {
            if let Some(c) = decode::<DownstreamTlsContext>(&any.value, what, self) {
                if let Some(common) = &c.common_tls_context {
                    self.common_tls(common, what);
                }
            }
        } else {
            self.problems.push(format!(
                "{what}: unexpected transport socket {}",
                any.type_url
            ));
        }
    }

    /// Collects what a route configuration refers to and checks what Envoy checks of it:
    /// unique virtual host domains and positive weights.
    pub(crate) fn route_config(&mut self, rc: &RouteConfiguration) {
        let what = format!("route configuration {}", rc.name);
        let mut domains = BTreeSet::new();
        for vh in &rc.virtual_hosts {
            for d in &vh.domains {
                if !domains.insert(d.to_ascii_lowercase()) {
                    self.problems
                        .push(format!("{what}: domain {d} is in two virtual hosts"));
                }
            }
            for r in &vh.routes {
                let Some(route::Action::Route(a)) = &r.action else {
                    continue;
                };
                match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => {
                        self.clusters.insert(c.clone());
                    }
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        let total: u64 = w
                            .clusters
                            .iter()
                            .map(|c| u64::from(c.weight.as_ref().map_or(0, |w| w.value)))
                            .sum();
                        if total == 0 {
                            self.problems
                                .push(format!("{what}: route {} has no weight", r.name));
                        }
                        for c in &w.clusters {
                            self.clusters.insert(c.name.clone());
                        }
                    }
                    other => self.problems.push(format!(
                        "{what}: route {} has cluster specifier {other:?}",
                        r.name
                    )),
                }
            }
        }
    }

    fn chain(&mut self, c: &FilterChain, what: &str) {
        if let Some(t) = &c.transport_socket {
            self.transport_socket(t, false, what);
        }
        for f in &c.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                self.problems
                    .push(format!("{what}: filter {} has no config", f.name));
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url() {
                let Some(h) = decode::<HttpConnectionManager>(&any.value, what, self) else {
                    continue;
                };
                match &h.route_specifier {
                    Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
                        self.config_source(r.config_source.as_ref(), what);
                        self.routes.insert(r.route_config_name.clone());
                    }
                    Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                        self.route_config(rc)
                    }
                    _ => self
                        .problems
                        .push(format!("{what}: HTTP connection manager without routes")),
                }
            } else if any.type_url == TcpProxy::type_url() {
                let Some(t) = decode::<TcpProxy>(&any.value, what, self) else {
                    continue;
                };
                match &t.cluster_specifier {
                    Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => {
                        self.clusters.insert(c.clone());
                    }
                    Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                        if w.clusters.iter().map(|c| u64::from(c.weight)).sum::<u64>() == 0 {
                            self.problems
                                .push(format!("{what}: TCP proxy has no weight"));
                        }
                        for c in &w.clusters {
                            self.clusters.insert(c.name.clone());
                        }
                    }
                    None => self
                        .problems
                        .push(format!("{what}: TCP proxy without cluster")),
                }
            } else if any.type_url == RbacFilter::type_url() {
                // Authorization by the client's certificate: only where there is one.
                if decode::<RbacFilter>(&any.value, what, self).is_some()
                    && c.transport_socket.is_none()
                {
                    self.problems
                        .push(format!("{what}: RBAC on a filter chain without TLS"));
                }
            } else {
                self.problems.push(format!(
                    "{what}: unexpected network filter {}",
                    any.type_url
                ));
            }
        }
    }

    fn config_source(&mut self, c: Option<&ConfigSource>, what: &str) {
        if !matches!(
            c.and_then(|c| c.config_source_specifier.as_ref()),
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        ) {
            self.problems
                .push(format!("{what}: a resource is fetched from outside ADS"));
        }
    }

    /// Collects what a listener refers to; checks that it has filter chains and that no two
    /// of them match the same connections.
    pub(crate) fn listener(&mut self, l: &Listener) {
        let what = format!("listener {}", l.name);
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            self.problems.push(format!("{what}: no filter chain"));
        }
        let mut matches = Vec::new();
        let mut names = BTreeSet::new();
        for c in &l.filter_chains {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            if matches.contains(&m) {
                self.problems.push(format!(
                    "{what}: filter chain {} matches what another does",
                    c.name
                ));
            }
            matches.push(m);
            if !names.insert(c.name.clone()) {
                self.problems
                    .push(format!("{what}: two filter chains are named {}", c.name));
            }
            self.chain(c, &what);
        }
        if let Some(c) = &l.default_filter_chain {
            self.chain(c, &what);
        }
    }

    /// Collects what a cluster refers to.
    pub(crate) fn cluster(&mut self, c: &Cluster) {
        let what = format!("cluster {}", c.name);
        if let Some(t) = &c.transport_socket {
            self.transport_socket(t, true, &what);
        }
        let ty = match &c.cluster_discovery_type {
            Some(cluster::ClusterDiscoveryType::Type(t)) => *t,
            _ => cluster::DiscoveryType::Static as i32,
        };
        if ty == cluster::DiscoveryType::Eds as i32 {
            let e = c.eds_cluster_config.clone().unwrap_or_default();
            self.config_source(e.eds_config.as_ref(), &what);
            let name = if e.service_name.is_empty() {
                c.name.clone()
            } else {
                e.service_name
            };
            self.loads.insert(name);
        } else if ty != cluster::DiscoveryType::OriginalDst as i32 && c.load_assignment.is_none() {
            self.problems.push(format!("{what}: no endpoints"));
        }
    }
}

/// Collects the references of every resource of `s`, with the problems found on the way.
pub(crate) fn collect(s: &Snapshot) -> Refs {
    let mut refs = Refs::default();
    for (name, r) in s.resources(ResourceType::Listener) {
        if let Some(l) = decode::<Listener>(&r.any.value, name, &mut refs) {
            if &l.name != name {
                refs.problems
                    .push(format!("listener {name} is named {}", l.name));
            }
            refs.listener(&l);
        }
    }
    for (name, r) in s.resources(ResourceType::Route) {
        if let Some(rc) = decode::<RouteConfiguration>(&r.any.value, name, &mut refs) {
            if &rc.name != name {
                refs.problems
                    .push(format!("route configuration {name} is named {}", rc.name));
            }
            refs.route_config(&rc);
        }
    }
    for (name, r) in s.resources(ResourceType::Cluster) {
        if let Some(c) = decode::<Cluster>(&r.any.value, name, &mut refs) {
            if &c.name != name {
                refs.problems
                    .push(format!("cluster {name} is named {}", c.name));
            }
            refs.cluster(&c);
        }
    }
    for (name, r) in s.resources(ResourceType::Endpoint) {
        if let Some(c) = decode::<ClusterLoadAssignment>(&r.any.value, name, &mut refs) {
            if &c.cluster_name != name {
                refs.problems
                    .push(format!("endpoints {name} are named {}", c.cluster_name));
            }
        }
    }
    for (name, r) in s.resources(ResourceType::Secret) {
        if let Some(c) = decode::<Secret>(&r.any.value, name, &mut refs) {
            if &c.name != name {
                refs.problems
                    .push(format!("secret {name} is named {}", c.name));
            }
        }
    }
    refs
}

/// The files a proxy's configuration makes its Envoy read (`file` certificates, private keys
/// and trust bundles), for the agent to check on the proxy's host: Envoy only says a file is
/// missing by refusing the configuration.
pub fn tls_files(s: &Snapshot) -> BTreeSet<String> {
    collect(s).files
}

/// Checks that `s` is consistent as a whole, as a proxy needs it to be: every resource
/// decodes and carries its own name; every cluster a route or TCP proxy names is among the
/// clusters; every EDS cluster has its endpoints; every RDS name has its route
/// configuration; every secret served over ADS is among the secrets (and secrets named for the
/// local SDS provider go through [`SDS_CLUSTER`]); nothing is sent that nothing uses; and what
/// Envoy refuses in a single resource that the translation could get wrong (a domain in two
/// virtual hosts, two filter chains with the same match, weights adding up to zero) is absent.
pub fn check_consistency(s: &Snapshot) -> Result<(), ConsistencyError> {
    let refs = collect(s);
    let mut problems = refs.problems;
    let mut missing = |kind: &str, wanted: &BTreeSet<String>, ty: ResourceType| {
        for n in wanted {
            if !s.resources(ty).contains_key(n) {
                problems.push(format!("{kind} {n} is referred to but not sent"));
            }
        }
        for n in s.resources(ty).keys() {
            if ty != ResourceType::Cluster && !wanted.contains(n) {
                problems.push(format!("{kind} {n} is sent but never used"));
            }
        }
    };
    missing("cluster", &refs.clusters, ResourceType::Cluster);
    missing("route configuration", &refs.routes, ResourceType::Route);
    missing("endpoints", &refs.loads, ResourceType::Endpoint);
    missing("secret", &refs.secrets, ResourceType::Secret);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConsistencyError(problems))
    }
}
