//! Workload identities: the SPIFFE id of every virtual node's and virtual gateway's proxy.
//!
//! Every virtual node and virtual gateway has an identity,
//! `spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>` (or `virtualGateway/<name>`),
//! which its proxy's certificate carries as its only URI name (an X.509-SVID, as a SPIRE agent
//! served App Mesh users). The form is defined here, once, because three parts need it: the
//! mesh CA issues it (`shoal-pki`), the translation names a proxy's own secret and the callers
//! its listener admits by it (`shoal-xds`), and the server decides who may have which.

use std::collections::{BTreeMap, BTreeSet};

use crate::api;
use crate::resource::{Kind, ResourceKey, Spec};
use crate::store::Model;

/// What kind of proxy an identity is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// A virtual node's proxy (a sidecar).
    VirtualNode,
    /// A virtual gateway's proxy.
    VirtualGateway,
}

impl WorkloadKind {
    /// The path segment of the SPIFFE id: `virtualNode` or `virtualGateway` (App Mesh's names).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::VirtualNode => "virtualNode",
            WorkloadKind::VirtualGateway => "virtualGateway",
        }
    }
}

/// Why a name cannot be part of a SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The trust domain is not one SPIFFE allows.
    #[error("trust domain {0:?}: lowercase letters, digits, '.', '-' and '_', at most 255")]
    TrustDomain(String),
    /// A mesh or proxy name is not a SPIFFE path segment.
    #[error("{0:?} is not a SPIFFE path segment (letters, digits, '.', '-', '_')")]
    Segment(String),
}

/// A proxy's identity: a SPIFFE id in the mesh's trust domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The trust domain (`shoal` unless configured).
    pub trust_domain: String,
    /// The mesh's name.
    pub mesh: String,
    /// A virtual node's or a virtual gateway's.
    pub kind: WorkloadKind,
    /// The virtual node's or gateway's name.
    pub name: String,
}

impl SpiffeId {
    /// The identity of `kind` `name` in `mesh`, checked: every part must be a valid SPIFFE
    /// path segment (letters, digits, `.`, `-`, `_`; App Mesh's names are all of that).
    pub fn new(
        trust_domain: &str,
        mesh: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<SpiffeId, IdentityError> {
        check_trust_domain(trust_domain)?;
        for part in [mesh, name] {
            check_segment(part)?;
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            mesh: mesh.to_string(),
            kind,
            name: name.to_string(),
        })
    }

    /// `spiffe://<trust-domain>/mesh/<mesh>/<virtualNode|virtualGateway>/<name>`.
    pub fn uri(&self) -> String {
        format!(
            "{}/mesh/{}/{}/{}",
            trust_domain_id(&self.trust_domain),
            self.mesh,
            self.kind.as_str(),
            self.name
        )
    }

    /// Reads a workload SPIFFE id back (`None` for anything else, such as the cluster's own
    /// `spiffe://shoal/server/<name>` identities).
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (td, m, mesh, kind, name) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || m != "mesh" {
            return None;
        }
        let kind = match kind {
            "virtualNode" => WorkloadKind::VirtualNode,
            "virtualGateway" => WorkloadKind::VirtualGateway,
            _ => return None,
        };
        SpiffeId::new(td, mesh, kind, name).ok()
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Checks a trust domain as SPIFFE defines it: lowercase letters, digits, `.`, `-` and `_`,
/// at most 255 characters.
pub fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(td.to_string()))
    }
}

fn check_segment(s: &str) -> Result<(), IdentityError> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment(s.to_string()))
    }
}

/// The trust domain's own SPIFFE id, `spiffe://<trust-domain>`: the mesh root's URI name, the
/// name Envoy asks for the trust bundle by, and the prefix of every workload's id.
pub fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// The mesh tag that turns on automatic mutual TLS for every proxy of a mesh (shoal's
/// extension: tags are where shoal keeps what App Mesh's wire shape has no field for, so specs
/// and `aws appmesh` stay exact, and `aws appmesh tag-resource` sets it).
pub const MTLS_TAG: &str = "shoal:mtls";

/// A mesh's automatic mutual TLS, from its [`MTLS_TAG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MtlsMode {
    /// No tag (or `DISABLED`): only what specs say.
    #[default]
    Off,
    /// Every listener without TLS of its own accepts mutual TLS with the mesh CA and plain text;
    /// every backend without a client policy is called over mutual TLS; authorization is
    /// evaluated but not enforced (Envoy counts what it would deny).
    Permissive,
    /// As `Permissive`, but listeners take mutual TLS only and admit only the callers the model
    /// declares ([`callers`]).
    Strict,
}

impl MtlsMode {
    /// The mode a tag value names (`None` for a value that is not one).
    pub fn parse(value: &str) -> Option<MtlsMode> {
        match value {
            "DISABLED" => Some(MtlsMode::Off),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "STRICT" => Some(MtlsMode::Strict),
            _ => None,
        }
    }

    /// The mode of mesh `mesh` in `model`: its [`MTLS_TAG`] (values the API refuses never get
    /// there; anything else reads as off).
    pub fn of_mesh(model: &Model, mesh: &str) -> MtlsMode {
        model
            .get(&ResourceKey::mesh(mesh))
            .and_then(|r| r.tags.iter().find(|t| t.key == MTLS_TAG))
            .and_then(|t| MtlsMode::parse(&t.value))
            .unwrap_or_default()
    }
}

/// Who calls whom, as the model declares it: for each virtual node of `mesh`, the proxies
/// that may open connections to it. A virtual node may be called by every virtual node that
/// lists, as a backend, a virtual service it serves (as the service's provider, or as a target
/// of any route of the service's router, whatever the weight: shifting traffic to a canary must
/// not wait for a new rule), and by every virtual gateway with a gateway route to such a
/// service. This is the authorization `STRICT` enforces; nodes nobody calls are absent.
pub fn callers(model: &Model, mesh: &str) -> BTreeMap<String, BTreeSet<(WorkloadKind, String)>> {
    // The nodes behind each service, computed once per service.
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out: BTreeMap<String, BTreeSet<(WorkloadKind, String)>> = BTreeMap::new();
    for r in model.in_mesh(mesh) {
        let (caller, services): ((WorkloadKind, &str), Vec<&str>) = match (&r.key.kind, &r.spec) {
            (Kind::VirtualNode, Spec::VirtualNode(spec)) => (
                (WorkloadKind::VirtualNode, &r.key.name),
                spec.backends
                    .iter()
                    .flatten()
                    .map(|b| match b {
                        api::Backend::VirtualService(vs) => vs.virtual_service_name.as_str(),
                    })
                    .collect(),
            ),
            (Kind::GatewayRoute, spec) => (
                (WorkloadKind::VirtualGateway, &r.key.parent),
                crate::check::gateway_target(spec).into_iter().collect(),
            ),
            _ => continue,
        };
        for service in services {
            let nodes = served
                .entry(service.to_string())
                .or_insert_with(|| crate::discovery::service_nodes(model, mesh, service, true));
            for node in nodes.iter() {
                out.entry(node.clone())
                    .or_default()
                    .insert((caller.0, caller.1.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_refuse_what_is_not_a_segment() {
        let id =
            SpiffeId::new("shoal", "app", WorkloadKind::VirtualNode, "colorteller-red").unwrap();
        assert_eq!(
            id.uri(),
            "spiffe://shoal/mesh/app/virtualNode/colorteller-red"
        );
        assert_eq!(SpiffeId::parse(&id.uri()), Some(id));
        let gw = SpiffeId::new(
            "example.org",
            "m",
            WorkloadKind::VirtualGateway,
            "ingress_gw",
        )
        .unwrap();
        assert_eq!(
            gw.uri(),
            "spiffe://example.org/mesh/m/virtualGateway/ingress_gw"
        );
        for bad in [
            "spiffe://shoal/server/s1",
            "spiffe://shoal/mesh/app/virtualNode",
            "spiffe://shoal/mesh/app/virtualRouter/r",
            "spiffe://shoal/mesh/app/virtualNode/a/b",
            "spiffe://Shoal/mesh/app/virtualNode/a",
            "https://shoal/mesh/app/virtualNode/a",
            "spiffe://shoal/mesh/../virtualNode/a",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
        for (td, mesh, name) in [
            ("", "m", "n"),
            ("UPPER", "m", "n"),
            ("shoal", "", "n"),
            ("shoal", "m", "a b"),
            ("shoal", "m", "a/b"),
            ("shoal", "..", "n"),
        ] {
            assert!(
                SpiffeId::new(td, mesh, WorkloadKind::VirtualNode, name).is_err(),
                "{td:?} {mesh:?} {name:?}"
            );
        }
    }
}
