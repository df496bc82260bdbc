//! Service instances (the Cloud Map model) and which of them stand behind a virtual node or a
//! virtual service.
//!
//! Agents register [`Instance`]s and gossip them with their health; every node then joins the
//! replicated [`Model`] with the instances it sees. The join is here, as pure functions, so
//! that DNS answers and Envoy endpoints (EDS) pick exactly the same instances:
//!
//! * a virtual node selects the instances registered for it by name (`mesh` + `virtual_node`),
//!   those matching its `awsCloudMap` discovery (namespace, service and every listed attribute,
//!   as Cloud Map's `DiscoverInstances` filters), and those whose `<service>.<namespace>` equals
//!   its `dns` discovery hostname (so DNS-discovered nodes resolve through the same path);
//! * a virtual service is backed by its provider: a virtual node, or every virtual node that a
//!   route of its virtual router sends traffic to with a weight above zero.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::api;
use crate::check::targets_of;
use crate::resource::{Kind, ResourceKey, Spec};
use crate::store::Model;

/// Cloud Map's reserved attribute for an instance's IPv4 address.
pub const ATTR_IPV4: &str = "AWS_INSTANCE_IPV4";
/// Cloud Map's reserved attribute for an instance's IPv6 address.
pub const ATTR_IPV6: &str = "AWS_INSTANCE_IPV6";
/// Cloud Map's reserved attribute for an instance's port.
pub const ATTR_PORT: &str = "AWS_INSTANCE_PORT";

/// Most custom attributes on one instance (Cloud Map's `RegisterInstance` limit).
pub const MAX_ATTRIBUTES: usize = 30;
/// Longest attribute key, in bytes (Cloud Map's limit).
pub const MAX_ATTR_KEY: usize = 255;
/// Longest attribute value, in bytes (Cloud Map's limit).
pub const MAX_ATTR_VALUE: usize = 1024;
/// Longest instance id, namespace, service, mesh or virtual node name, in bytes. Instance ids
/// and names travel inside gossip keys (at most 255 bytes), so they are kept shorter than
/// Cloud Map's 1,024.
pub const MAX_NAME: usize = 64;
/// Largest encoded instance record, in bytes. Every record travels whole in gossip datagrams,
/// so this is far below the 8 KiB a gossip value may take.
pub const MAX_RECORD: usize = 4096;

/// One registered service instance: where it listens and what it is.
///
/// An instance belongs to a Cloud Map service (`namespace` + `service`), to a virtual node
/// (`mesh` + `virtual_node`), or to both; at least one of the pairs is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    /// Cloud Map namespace name (a DNS domain such as `apps.local`), lowercase.
    #[serde(rename = "ns", default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Cloud Map service name within the namespace, lowercase.
    #[serde(rename = "svc", default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Mesh of the virtual node this instance is registered for.
    #[serde(rename = "mesh", default, skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    /// Virtual node this instance is registered for.
    #[serde(rename = "vn", default, skip_serializing_if = "String::is_empty")]
    pub virtual_node: String,
    /// Instance id, unique within its service (or virtual node).
    pub id: String,
    /// Address the instance listens on.
    #[serde(rename = "ip")]
    pub address: IpAddr,
    /// Port the instance listens on.
    pub port: u16,
    /// Custom attributes (Cloud Map's `Attributes`, without the reserved `AWS_INSTANCE_*`).
    #[serde(rename = "attrs", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The key of an instance (see [`Instance::key`]) from its parts as a deregistration names
/// them; the namespace and service are lowercased as [`Instance::normalize`] does.
pub fn instance_key(
    namespace: &str,
    service: &str,
    mesh: &str,
    virtual_node: &str,
    id: &str,
) -> String {
    if namespace.is_empty() {
        format!("@{mesh}/{virtual_node}/{id}")
    } else {
        format!(
            "{}/{}/{id}",
            namespace.to_ascii_lowercase(),
            service.to_ascii_lowercase()
        )
    }
}

/// Why an instance registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInstance(pub String);

fn valid_name(what: &str, value: &str, dns: bool) -> Result<(), InvalidInstance> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(InvalidInstance(format!(
            "{what} must be 1 to {MAX_NAME} bytes long"
        )));
    }
    let ok = |c: char| {
        if dns {
            c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
        } else {
            c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
        }
    };
    if !value.chars().all(ok) || value.starts_with('.') || value.ends_with('.') {
        return Err(InvalidInstance(format!(
            "{what} {value:?} may only hold letters, digits, '-', '_' and inner '.'"
        )));
    }
    if value.contains("..") {
        return Err(InvalidInstance(format!(
            "{what} {value:?} has an empty label"
        )));
    }
    Ok(())
}

impl Instance {
    /// A Cloud Map instance of `service` in `namespace` with no custom attributes (not yet
    /// checked: see [`Instance::normalize`]).
    pub fn cloud_map(
        namespace: &str,
        service: &str,
        id: &str,
        address: IpAddr,
        port: u16,
    ) -> Instance {
        Instance {
            namespace: namespace.into(),
            service: service.into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: id.into(),
            address,
            port,
            attributes: BTreeMap::new(),
        }
    }

    /// Checks the registration: a service or virtual node (or both) named with valid names,
    /// a nonzero port, at most [`MAX_ATTRIBUTES`] custom attributes within Cloud Map's sizes,
    /// no reserved attribute that disagrees with the address or port, and an encoded size of at
    /// most [`MAX_RECORD`]. Lowercases the namespace and service (DNS names are
    /// case-insensitive) and drops reserved attributes that agree.
    pub fn normalize(mut self) -> Result<Instance, InvalidInstance> {
        self.namespace = self.namespace.to_ascii_lowercase();
        self.service = self.service.to_ascii_lowercase();
        let cloud_map = !self.namespace.is_empty() || !self.service.is_empty();
        let node = !self.mesh.is_empty() || !self.virtual_node.is_empty();
        if !cloud_map && !node {
            return Err(InvalidInstance(
                "an instance needs a namespace and service, or a mesh and virtual node".into(),
            ));
        }
        if cloud_map {
            valid_name("namespace", &self.namespace, true)?;
            valid_name("service", &self.service, true)?;
        }
        if node {
            valid_name("mesh", &self.mesh, false)?;
            valid_name("virtual node", &self.virtual_node, false)?;
        }
        valid_name("instance id", &self.id, false)?;
        if self.port == 0 {
            return Err(InvalidInstance("port must be 1 to 65535".into()));
        }
        let reserved: Vec<(String, String)> = self
            .attributes
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_INSTANCE_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in reserved {
            let agrees = match key.as_str() {
                ATTR_IPV4 | ATTR_IPV6 => value.parse::<IpAddr>().ok() == Some(self.address),
                ATTR_PORT => value.parse::<u16>().ok() == Some(self.port),
                _ => false,
            };
            if !agrees {
                return Err(InvalidInstance(format!(
                    "attribute {key}={value:?} is reserved and must match the address and port"
                )));
            }
            self.attributes.remove(&key);
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(InvalidInstance(format!(
                "at most {MAX_ATTRIBUTES} custom attributes are allowed"
            )));
        }
        for (k, v) in &self.attributes {
            if k.is_empty() || k.len() > MAX_ATTR_KEY || !k.is_ascii() {
                return Err(InvalidInstance(format!(
                    "attribute key {k:?} must be 1 to {MAX_ATTR_KEY} ASCII bytes"
                )));
            }
            if v.len() > MAX_ATTR_VALUE {
                return Err(InvalidInstance(format!(
                    "attribute {k} is longer than {MAX_ATTR_VALUE} bytes"
                )));
            }
        }
        let len = self.encode().len();
        if len > MAX_RECORD {
            return Err(InvalidInstance(format!(
                "the instance record takes {len} bytes; at most {MAX_RECORD} are allowed"
            )));
        }
        Ok(self)
    }

    /// The instance's identity on its host: `<namespace>/<service>/<id>` for a Cloud Map
    /// instance, `@<mesh>/<virtual node>/<id>` for one registered only for a virtual node.
    pub fn key(&self) -> String {
        instance_key(
            &self.namespace,
            &self.service,
            &self.mesh,
            &self.virtual_node,
            &self.id,
        )
    }

    /// `<service>.<namespace>`, the DNS name of the Cloud Map service, if any.
    pub fn service_name(&self) -> Option<String> {
        (!self.namespace.is_empty()).then(|| format!("{}.{}", self.service, self.namespace))
    }

    /// The value of attribute `key` as Cloud Map reports it, reserved attributes included.
    pub fn attribute(&self, key: &str) -> Option<String> {
        match key {
            ATTR_IPV4 => self.address.is_ipv4().then(|| self.address.to_string()),
            ATTR_IPV6 => self.address.is_ipv6().then(|| self.address.to_string()),
            ATTR_PORT => Some(self.port.to_string()),
            _ => self.attributes.get(key).cloned(),
        }
    }

    /// Compact JSON, the form gossiped and persisted.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an instance always serializes")
    }

    /// Parses [`Instance::encode`]'s output and checks it as [`Instance::normalize`] does.
    pub fn decode(raw: &str) -> Result<Instance, InvalidInstance> {
        if raw.len() > MAX_RECORD {
            return Err(InvalidInstance("record too large".into()));
        }
        let inst: Instance =
            serde_json::from_str(raw).map_err(|e| InvalidInstance(e.to_string()))?;
        inst.normalize()
    }
}

/// An instance as some node sees it: where it is registered and whether it passes its checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The instance.
    pub instance: Instance,
    /// Name of the host (gossip member) that registered it and runs its health checks.
    pub host: String,
    /// Result of its health checks (true when it has none and its host is alive).
    pub healthy: bool,
}

/// True if the virtual node `key` (with `spec`) selects `inst`.
pub fn selects(key: &ResourceKey, spec: &api::VirtualNodeSpec, inst: &Instance) -> bool {
    if !inst.mesh.is_empty() && inst.mesh == key.mesh && inst.virtual_node == key.name {
        return true;
    }
    match &spec.service_discovery {
        Some(api::ServiceDiscovery::AwsCloudMap(cm)) => {
            inst.namespace.eq_ignore_ascii_case(&cm.namespace_name)
                && inst.service.eq_ignore_ascii_case(&cm.service_name)
                && cm
                    .attributes
                    .iter()
                    .flatten()
                    .all(|a| inst.attribute(&a.key).as_deref() == Some(a.value.as_str()))
        }
        Some(api::ServiceDiscovery::Dns(dns)) => inst
            .service_name()
            .is_some_and(|name| name.eq_ignore_ascii_case(dns.hostname.trim_end_matches('.'))),
        None => false,
    }
}

/// Endpoints grouped by what can select them, so that finding a virtual node's endpoints costs
/// what it returns rather than a pass over every endpoint: translation asks once per cluster,
/// per proxy. Holds indices into the endpoint slice it was built from; pass the same slice to
/// [`EndpointIndex::for_node`].
#[derive(Debug, Clone, Default)]
pub struct EndpointIndex {
    by_service: std::collections::HashMap<(String, String), Vec<usize>>,
    by_node: std::collections::HashMap<(String, String), Vec<usize>>,
    by_name: std::collections::HashMap<String, Vec<usize>>,
}

impl EndpointIndex {
    /// The index of `endpoints`.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let mut ix = EndpointIndex::default();
        for (i, e) in endpoints.iter().enumerate() {
            let inst = &e.instance;
            if !inst.namespace.is_empty() {
                ix.by_service
                    .entry((inst.namespace.clone(), inst.service.clone()))
                    .or_default()
                    .push(i);
                if let Some(name) = inst.service_name() {
                    ix.by_name.entry(name).or_default().push(i);
                }
            }
            if !inst.mesh.is_empty() {
                ix.by_node
                    .entry((inst.mesh.clone(), inst.virtual_node.clone()))
                    .or_default()
                    .push(i);
            }
        }
        ix
    }

    /// The endpoints of `endpoints` (the slice the index was built from) that virtual node
    /// `key` with `spec` selects, in slice order: the same as filtering with [`selects`].
    pub fn for_node<'e>(
        &self,
        endpoints: &'e [Endpoint],
        key: &ResourceKey,
        spec: &api::VirtualNodeSpec,
    ) -> Vec<&'e Endpoint> {
        self.indices_for_node(endpoints, key, spec)
            .into_iter()
            .map(|i| &endpoints[i])
            .collect()
    }

    /// [`EndpointIndex::for_node`] as positions in the slice.
    pub fn indices_for_node(
        &self,
        endpoints: &[Endpoint],
        key: &ResourceKey,
        spec: &api::VirtualNodeSpec,
    ) -> Vec<usize> {
        let mut idx: Vec<usize> = Vec::new();
        if let Some(v) = self.by_node.get(&(key.mesh.clone(), key.name.clone())) {
            idx.extend(v);
        }
        match &spec.service_discovery {
            Some(api::ServiceDiscovery::AwsCloudMap(cm)) => {
                let k = (
                    cm.namespace_name.to_ascii_lowercase(),
                    cm.service_name.to_ascii_lowercase(),
                );
                if let Some(v) = self.by_service.get(&k) {
                    idx.extend(v);
                }
            }
            Some(api::ServiceDiscovery::Dns(dns)) => {
                let host = dns.hostname.trim_end_matches('.').to_ascii_lowercase();
                if let Some(v) = self.by_name.get(&host) {
                    idx.extend(v);
                }
            }
            None => {}
        }
        idx.sort_unstable();
        idx.dedup();
        idx.retain(|i| {
            endpoints
                .get(*i)
                .is_some_and(|e| selects(key, spec, &e.instance))
        });
        idx
    }
}

/// The endpoints behind virtual node `name` in `mesh`, in `endpoints`' order; empty when the
/// node does not exist.
pub fn virtual_node_endpoints<'a>(
    model: &Model,
    mesh: &str,
    name: &str,
    endpoints: &'a [Endpoint],
) -> Vec<&'a Endpoint> {
    let key = ResourceKey::in_mesh(mesh, Kind::VirtualNode, name);
    let Some(Spec::VirtualNode(spec)) = model.get(&key).map(|r| &r.spec) else {
        return Vec::new();
    };
    endpoints
        .iter()
        .filter(|e| selects(&key, spec, &e.instance))
        .collect()
}

/// The virtual nodes that serve virtual service `name` in `mesh`: its provider node, or every
/// node a route of its provider router targets with a positive weight. Sorted, deduplicated.
pub fn virtual_service_nodes(model: &Model, mesh: &str, name: &str) -> Vec<String> {
    service_nodes(model, mesh, name, false)
}

/// [`virtual_service_nodes`], with route targets of weight 0 too when `idle_targets`.
pub(crate) fn service_nodes(
    model: &Model,
    mesh: &str,
    name: &str,
    idle_targets: bool,
) -> Vec<String> {
    let key = ResourceKey::in_mesh(mesh, Kind::VirtualService, name);
    let Some(Spec::VirtualService(spec)) = model.get(&key).map(|r| &r.spec) else {
        return Vec::new();
    };
    let mut nodes = BTreeSet::new();
    match &spec.provider {
        Some(api::VirtualServiceProvider::VirtualNode(p)) => {
            nodes.insert(p.virtual_node_name.clone());
        }
        Some(api::VirtualServiceProvider::VirtualRouter(p)) => {
            for route in model.children(mesh, Kind::Route, &p.virtual_router_name) {
                for t in targets_of(&route.spec) {
                    if t.weight > 0 || idle_targets {
                        nodes.insert(t.virtual_node.clone());
                    }
                }
            }
        }
        None => {}
    }
    nodes.into_iter().collect()
}

/// Every DNS name the view answers, with the endpoints behind it: `<service>.<namespace>` of
/// every registered Cloud Map instance, every virtual node's `dns` hostname, and every virtual
/// service name (its provider's endpoints). Names are lowercase without a trailing dot; an
/// endpoint appears once per name even when several paths select it.
pub fn dns_names<'a>(
    model: &Model,
    endpoints: &'a [Endpoint],
) -> BTreeMap<String, Vec<&'a Endpoint>> {
    let mut names: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        if let Some(name) = e.instance.service_name() {
            names.entry(name).or_default().insert(i);
        }
    }
    // Endpoint indices of every virtual node, computed once.
    let mut node_eps: BTreeMap<(&str, &str), BTreeSet<usize>> = BTreeMap::new();
    for r in model.iter().filter(|r| r.key.kind == Kind::VirtualNode) {
        let Spec::VirtualNode(spec) = &r.spec else {
            continue;
        };
        let set: BTreeSet<usize> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| selects(&r.key, spec, &e.instance))
            .map(|(i, _)| i)
            .collect();
        if let Some(api::ServiceDiscovery::Dns(dns)) = &spec.service_discovery {
            let host = dns.hostname.trim_end_matches('.').to_ascii_lowercase();
            names.entry(host).or_default().extend(set.iter().copied());
        }
        node_eps.insert((r.key.mesh.as_str(), r.key.name.as_str()), set);
    }
    for r in model.iter().filter(|r| r.key.kind == Kind::VirtualService) {
        let entry = names
            .entry(r.key.name.trim_end_matches('.').to_ascii_lowercase())
            .or_default();
        for node in virtual_service_nodes(model, &r.key.mesh, &r.key.name) {
            if let Some(set) = node_eps.get(&(r.key.mesh.as_str(), node.as_str())) {
                entry.extend(set.iter().copied());
            }
        }
    }
    names
        .into_iter()
        .map(|(name, set)| (name, set.into_iter().map(|i| &endpoints[i]).collect()))
        .collect()
}

/// The DNS zones the view is authoritative for: every Cloud Map namespace named by an instance
/// or a virtual node's `awsCloudMap` discovery, and each name of `names` outside them (a
/// virtual service name or `dns` hostname in some other domain is a zone of its own, so that
/// its siblings still go to the recursors).
pub fn dns_zones(
    model: &Model,
    endpoints: &[Endpoint],
    names: &BTreeMap<String, Vec<&Endpoint>>,
) -> BTreeSet<String> {
    let mut zones: BTreeSet<String> = endpoints
        .iter()
        .filter(|e| !e.instance.namespace.is_empty())
        .map(|e| e.instance.namespace.clone())
        .collect();
    for r in model.iter() {
        if let Spec::VirtualNode(spec) = &r.spec {
            if let Some(api::ServiceDiscovery::AwsCloudMap(cm)) = &spec.service_discovery {
                zones.insert(cm.namespace_name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let inside = |name: &str, zones: &BTreeSet<String>| {
        zones
            .iter()
            .any(|z| name == z || name.ends_with(&format!(".{z}")))
    };
    let outside: Vec<String> = names
        .keys()
        .filter(|n| !inside(n, &zones))
        .cloned()
        .collect();
    zones.extend(outside);
    zones
}

/// The DNS names callers use to reach virtual node `node` of `mesh`, for its workload
/// certificate: its `dns` hostname or Cloud Map `service.namespace`, and every virtual service
/// it provides (directly or through a router's routes, with any weight: shifting traffic to a
/// canary must not wait for its certificate's renewal). Lowercase, without a trailing dot,
/// sorted, each once; names that are not valid DNS names are left out (the caller checks).
pub fn workload_dns_names(model: &Model, mesh: &str, node: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    let mut add = |n: &str| {
        let n = n.trim_end_matches('.').to_ascii_lowercase();
        if !n.is_empty() {
            names.insert(n);
        }
    };
    let key = ResourceKey::in_mesh(mesh, Kind::VirtualNode, node);
    if let Some(Spec::VirtualNode(spec)) = model.get(&key).map(|r| &r.spec) {
        match &spec.service_discovery {
            Some(api::ServiceDiscovery::Dns(dns)) => add(&dns.hostname),
            Some(api::ServiceDiscovery::AwsCloudMap(cm)) => {
                add(&format!("{}.{}", cm.service_name, cm.namespace_name))
            }
            None => {}
        }
    }
    for r in model
        .iter()
        .filter(|r| r.key.kind == Kind::VirtualService && r.key.mesh == mesh)
    {
        if service_nodes(model, mesh, &r.key.name, true)
            .iter()
            .any(|n| n == node)
        {
            add(&r.key.name);
        }
    }
    names.into_iter().collect()
}
