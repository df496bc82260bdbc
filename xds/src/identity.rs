//! The workload certificates an agent holds for its proxies, served to them as SDS `Secret`
//! resources on their own ADS streams.
//!
//! A proxy is sent only its own certificate (the secret named by its SPIFFE id) and the mesh
//! CA's trust bundle (named `spiffe://<trust-domain>`), and only when its configuration names
//! them ([`crate::Snapshot::agent_secrets`]). A configuration that names another proxy's
//! identity gets nothing for it (Envoy then keeps that listener or cluster warming), so no
//! spec, however written, hands one proxy another's key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};

use crate::{ProxyId, Resource};

/// One proxy's workload certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The SPIFFE id the certificate carries, as the mesh CA issued it: the name of its
    /// secret.
    pub spiffe_id: String,
    /// The certificate chain, PEM (the certificate first).
    pub chain_pem: String,
    /// Its private key, PEM. Made on the agent's host; never leaves it but to its proxy.
    pub key_pem: String,
    /// When the certificate expires (Unix seconds).
    pub expiration: u64,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WorkloadCert")
            .field("spiffe_id", &self.spiffe_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// What the agent holds from the mesh CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// The mesh CA's trust domain (none until the first certificate arrives: until then every
    /// `sds` secret goes to the local SDS provider).
    pub trust_domain: Option<String>,
    /// The roots to trust, PEM.
    pub bundle_pem: String,
    /// Each proxy's certificate.
    pub certs: BTreeMap<ProxyId, WorkloadCert>,
}

pub use shoal_model::identity::trust_domain_id;

/// The name of a proxy's own certificate when its spec does not name it: for `acm`
/// certificates and automatic mTLS. SPIRE's name for the same thing (its agent's
/// `default_svid_name`), so a proxy's configuration reads as it would with SPIRE. Each proxy
/// has its own ADS stream, so one name serves every proxy its own certificate.
pub const OWN_CERTIFICATE: &str = "default";

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_string())),
        ..Default::default()
    })
}

impl Identities {
    /// The name of the trust bundle's secret, `spiffe://<trust-domain>`.
    pub fn bundle_name(&self) -> Option<String> {
        self.trust_domain.as_deref().map(trust_domain_id)
    }

    /// The secrets of `wanted` that `proxy` may have and the agent holds: its own certificate
    /// and the trust bundle. Names it may not have, or that are not held yet, are left out.
    pub fn secrets_for(&self, proxy: &ProxyId, wanted: &BTreeSet<String>) -> Vec<Arc<Resource>> {
        if self.trust_domain.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        // Only ever the proxy's own certificate, under the name the CA issued it for or as
        // its own certificate.
        if let Some(c) = self.certs.get(proxy) {
            for name in [c.spiffe_id.as_str(), OWN_CERTIFICATE] {
                if !wanted.contains(name) {
                    continue;
                }
                let s = Secret {
                    name: name.to_string(),
                    r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: inline(&c.chain_pem),
                        private_key: inline(&c.key_pem),
                        ..Default::default()
                    })),
                };
                out.push(Arc::new(Resource::new(name.to_string(), &s)));
            }
        }
        if let Some(bundle) = self.bundle_name().filter(|b| wanted.contains(b)) {
            if !self.bundle_pem.is_empty() {
                let s = Secret {
                    name: bundle.clone(),
                    r#type: Some(secret::Type::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: inline(&self.bundle_pem),
                            ..Default::default()
                        },
                    )),
                };
                out.push(Arc::new(Resource::new(bundle, &s)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyKind;

    fn proxy(name: &str) -> ProxyId {
        ProxyId {
            mesh: "m".into(),
            kind: ProxyKind::VirtualNode,
            name: name.into(),
        }
    }

    #[test]
    fn a_proxy_gets_its_own_certificate_and_the_bundle_only() {
        let mut ids = Identities {
            trust_domain: Some("shoal".into()),
            bundle_pem: "ROOTS".into(),
            certs: BTreeMap::new(),
        };
        for n in ["a", "b"] {
            ids.certs.insert(
                proxy(n),
                WorkloadCert {
                    spiffe_id: format!("spiffe://shoal/mesh/m/virtualNode/{n}"),
                    chain_pem: format!("CHAIN-{n}"),
                    key_pem: format!("KEY-{n}"),
                    expiration: 1,
                },
            );
        }
        let wanted: BTreeSet<String> = [
            "spiffe://shoal/mesh/m/virtualNode/a",
            "spiffe://shoal/mesh/m/virtualNode/b",
            "spiffe://shoal",
            "spiffe://other.org",
        ]
        .map(String::from)
        .into();
        let got = ids.secrets_for(&proxy("a"), &wanted);
        let names: Vec<&str> = got.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["spiffe://shoal/mesh/m/virtualNode/a", "spiffe://shoal"]
        );
        let bytes: Vec<u8> = got.iter().flat_map(|r| r.any.value.clone()).collect();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("KEY-a") && !text.contains("KEY-b"));
        // Nothing that is not wanted; nothing without a trust domain.
        assert!(ids.secrets_for(&proxy("a"), &BTreeSet::new()).is_empty());
        ids.trust_domain = None;
        assert!(ids.secrets_for(&proxy("a"), &wanted).is_empty());
        assert!(!format!("{:?}", ids).contains("KEY-"));
    }
}
