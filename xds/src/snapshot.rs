//! The resources one proxy is sent.
//!
//! Every resource is encoded once (an `Any`) with a version that is a hash of its bytes, so two
//! proxies sent the same cluster share one `Arc<Resource>`, and comparing two snapshots per type
//! tells exactly what changed (the ADS server sends nothing for a type whose version is the same).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The xDS resource types shoal serves, in the order a change is pushed: clusters and their
/// endpoints before the listeners and routes that point at them, so that a proxy never holds a
/// route to a cluster it has not been sent (Envoy warms clusters before listeners use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    Secret,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL Envoy asks for.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
            ResourceType::Secret => Secret::type_url(),
        }
    }

    /// The type of a type URL, if shoal serves it.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether Envoy subscribes to every resource of this type (LDS, CDS) rather than to named
    /// ones (RDS, EDS, SDS). A state-of-the-world response of a wildcard type carries them all.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    fn index(self) -> usize {
        match self {
            ResourceType::Cluster => 0,
            ResourceType::Endpoint => 1,
            ResourceType::Listener => 2,
            ResourceType::Route => 3,
            ResourceType::Secret => 4,
        }
    }
}

/// One encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its name (what routes, listeners and Envoy's subscriptions refer to).
    pub name: String,
    /// Hash of its bytes: equal versions mean equal resources.
    pub version: String,
    /// The resource, packed.
    pub any: Any,
}

impl Resource {
    /// Encodes `msg` under `name`.
    pub fn new<T: Message + Name>(name: impl Into<String>, msg: &T) -> Resource {
        let value = msg.encode_to_vec();
        let mut h = std::hash::DefaultHasher::new();
        value.hash(&mut h);
        Resource {
            name: name.into(),
            version: format!("{:016x}", h.finish()),
            any: Any {
                type_url: T::type_url(),
                value,
            },
        }
    }
}

/// The resources of one type, by name, with the version of the whole set (computed once).
///
/// Sets are shared (`Arc`) between snapshots: a thousand sidecars with the same backends hold
/// one set of clusters, so a proxy costs the agent a few pointers per type, not a map.
#[derive(Debug, Default)]
pub struct ResourceSet {
    map: BTreeMap<String, Arc<Resource>>,
    version: OnceLock<String>,
}

impl Clone for ResourceSet {
    fn clone(&self) -> Self {
        ResourceSet {
            map: self.map.clone(),
            version: self.version.clone(),
        }
    }
}

impl PartialEq for ResourceSet {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl ResourceSet {
    /// The resources, by name.
    pub fn map(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.map
    }

    /// The version of the whole set (a hash of every name and version): what a
    /// state-of-the-world response carries as `version_info`.
    pub fn version(&self) -> &str {
        self.version.get_or_init(|| {
            let mut h = std::hash::DefaultHasher::new();
            for (name, r) in &self.map {
                name.hash(&mut h);
                r.version.hash(&mut h);
            }
            format!("{:016x}", h.finish())
        })
    }
}

/// Everything one proxy is sent, by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    by_type: [Arc<ResourceSet>; 5],
    /// Secrets the configuration takes from the agent over ADS: names, not resources (the
    /// agent adds the proxy's own, never another's).
    agent_secrets: Arc<std::collections::BTreeSet<String>>,
}

impl Snapshot {
    /// The secrets the configuration takes from the agent over ADS, by name.
    pub fn agent_secrets(&self) -> &std::collections::BTreeSet<String> {
        &self.agent_secrets
    }

    /// Adds `names` to [`Snapshot::agent_secrets`].
    pub fn want_agent_secrets(&mut self, names: impl IntoIterator<Item = String>) {
        let mut names = names.into_iter().peekable();
        if names.peek().is_some() {
            Arc::make_mut(&mut self.agent_secrets).extend(names);
        }
    }

    /// Adds (or replaces) a resource of type `ty`.
    pub fn insert(&mut self, ty: ResourceType, resource: Arc<Resource>) {
        let set = Arc::make_mut(&mut self.by_type[ty.index()]);
        set.version = OnceLock::new();
        set.map.insert(resource.name.clone(), resource);
    }

    /// Encodes and adds `msg` as a resource of type `ty` named `name`.
    pub fn add<T: Message + Name>(&mut self, ty: ResourceType, name: &str, msg: &T) {
        self.insert(ty, Arc::new(Resource::new(name, msg)));
    }

    /// The resources of type `ty`, by name.
    pub fn resources(&self, ty: ResourceType) -> &BTreeMap<String, Arc<Resource>> {
        &self.by_type[ty.index()].map
    }

    /// The set of type `ty`, to share it with another snapshot ([`Snapshot::set`]).
    pub fn set(&self, ty: ResourceType) -> &Arc<ResourceSet> {
        &self.by_type[ty.index()]
    }

    /// Replaces the set of type `ty` with `set`, typically an equal one another snapshot
    /// already holds (see [`Snapshot::set`]), so that both share it.
    pub fn share(&mut self, ty: ResourceType, set: Arc<ResourceSet>) {
        self.by_type[ty.index()] = set;
    }

    /// The version of the whole set of type `ty` (a hash of every name and version): what a
    /// state-of-the-world response carries as `version_info`.
    pub fn version(&self, ty: ResourceType) -> String {
        self.by_type[ty.index()].version().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_content() {
        let c = |name: &str| Cluster {
            name: name.into(),
            ..Default::default()
        };
        let mut a = Snapshot::default();
        a.add(ResourceType::Cluster, "x", &c("x"));
        let mut b = Snapshot::default();
        b.add(ResourceType::Cluster, "x", &c("x"));
        assert_eq!(
            a.version(ResourceType::Cluster),
            b.version(ResourceType::Cluster)
        );
        b.add(ResourceType::Cluster, "y", &c("y"));
        assert_ne!(
            a.version(ResourceType::Cluster),
            b.version(ResourceType::Cluster)
        );
        assert_eq!(
            a.version(ResourceType::Route),
            b.version(ResourceType::Route)
        );
        assert_eq!(
            ResourceType::from_type_url(&ResourceType::Endpoint.type_url()),
            Some(ResourceType::Endpoint)
        );
        assert!(ResourceType::Listener.is_wildcard() && !ResourceType::Route.is_wildcard());
    }
}
