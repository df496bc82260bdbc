//! Authorization from the model: which proxies a virtual node's inbound listener admits.
//!
//! App Mesh only filtered egress (a node reaches only its declared backends). Under automatic
//! mTLS every connection carries its caller's SPIFFE id, so shoal also filters ingress: with a
//! mesh's `shoal:mtls` tag at `STRICT`, a listener that checks clients against the mesh CA
//! (and names no SANs of its own) runs Envoy's network RBAC filter admitting exactly the
//! callers the model declares ([`shoal_model::identity::callers`]) and the node itself (its
//! agent's health probe presents the node's certificate); anyone else's connection is
//! closed and counted (`ingress_authz.rbac.denied`). At `PERMISSIVE` the same rules run as
//! shadow rules: nothing is refused, and what would be is counted
//! (`ingress_authz.rbac.shadow_denied`), so an operator sees the effect before switching.
//!
//! The filter decides on the connection's first bytes from the client, which is when every
//! HTTP, HTTP/2 and gRPC client speaks; a TCP protocol in which the server speaks first would
//! see its greeting reach an unauthorized caller before the connection is closed.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacFilter;
use shoal_model::identity::{SpiffeId, WorkloadKind};

use super::util;

/// The stat prefix of the ingress authorization filter: Envoy counts under
/// `ingress_authz.rbac.` (`allowed`, `denied`, `shadow_allowed`, `shadow_denied`).
pub(crate) const STAT_PREFIX: &str = "ingress_authz.";

/// The network RBAC filter admitting `callers` of `mesh` in `trust_domain`: enforced when
/// `enforce`, else as shadow rules only (counted, never refused).
pub(crate) fn filter(
    trust_domain: &str,
    mesh: &str,
    callers: &BTreeSet<(WorkloadKind, String)>,
    enforce: bool,
) -> Filter {
    let principals: Vec<Principal> = callers
        .iter()
        .filter_map(|(kind, name)| SpiffeId::new(trust_domain, mesh, *kind, name).ok())
        .map(|id| Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(util::exact(&id.uri())),
                },
            )),
        })
        .collect();
    // One policy (a map of one entry encodes the same every time: the snapshot's version is a
    // hash of it). No callers: no policy, and an ALLOW with no policy admits nobody.
    let mut policies = HashMap::new();
    if !principals.is_empty() {
        policies.insert(
            "model-callers".to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals,
                ..Default::default()
            },
        );
    }
    let rules = Rbac {
        action: rbac::Action::Allow as i32,
        policies,
        ..Default::default()
    };
    let config = if enforce {
        RbacFilter {
            stat_prefix: STAT_PREFIX.into(),
            rules: Some(rules),
            ..Default::default()
        }
    } else {
        RbacFilter {
            stat_prefix: STAT_PREFIX.into(),
            shadow_rules: Some(rules),
            ..Default::default()
        }
    };
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(util::any(&config))),
    }
}
