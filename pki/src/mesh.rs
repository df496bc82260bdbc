//! The mesh CA's side: workload identities for the proxies of a mesh.
//!
//! Every virtual node and virtual gateway has an identity, a SPIFFE id (its form is
//! [`shoal_model::identity`]'s), which its proxy's certificate carries as its only URI name.
//! The mesh CA is a **sibling** of the cluster CA, not its child: a workload's
//! key lives next to an application, and a certificate issued to it must never chain to the
//! authority the servers and agents trust each other by; the mesh CA can also be replaced by an
//! operator's intermediate, or rotated, without touching the control plane's trust.
//!
//! Pure: names in, certificates out; the caller decides who may have which identity.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};

use crate::{random_serial, validity, Ca, PkiError, CA_VALIDITY};

/// How long a workload certificate is valid unless configured: a day (renewed at half-life).
pub const WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The shortest workload certificate lifetime shoal issues (tests rotate every 30 s or so).
pub const MIN_WORKLOAD_VALIDITY: Duration = Duration::from_secs(20);

pub use shoal_model::identity::{
    check_trust_domain, trust_domain_id, IdentityError, SpiffeId, WorkloadKind,
};

/// Whether `name` may be a DNS name in a workload certificate (what rustls verifies against).
pub fn is_dns_name(name: &str) -> bool {
    rustls_pki_types::DnsName::try_from(name).is_ok()
}

/// A new mesh CA root for `trust_domain`: self-signed, ECDSA P-256, valid ten years, with
/// the trust domain's own SPIFFE id (`spiffe://<trust-domain>`) as its URI name. It may sign
/// one level of intermediates (an operator's issuing CA) as well as workloads.
pub fn generate_root(trust_domain: &str) -> Result<Ca, PkiError> {
    check_trust_domain(trust_domain)?;
    let mut p = crate::ca_params(&format!("shoal mesh CA {trust_domain}"), 1);
    let uri = trust_domain_id(trust_domain);
    p.subject_alt_names.push(SanType::URI(
        uri.clone().try_into().map_err(|_| PkiError::Name(uri))?,
    ));
    p.serial_number = Some(random_serial());
    validity(&mut p, CA_VALIDITY);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ca::from_pem(&cert.pem(), &key.serialize_pem())
}

impl Ca {
    /// Signs a workload certificate for the public key of `csr_pem` (its signature verified:
    /// the sender holds the key, which never leaves its host): the SPIFFE id `id` as its only
    /// URI name, the `dns` names its callers use, valid for `valid_for` (at least
    /// [`MIN_WORKLOAD_VALIDITY`]). Only the CSR's key is used; every name comes from the
    /// caller, never from the CSR.
    pub fn issue_workload_for_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        dns: &[String],
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        if let Some(bad) = dns.iter().find(|d| !is_dns_name(d)) {
            return Err(PkiError::Name(bad.clone()));
        }
        let mut p = CertificateParams::new(dns.to_vec())
            .map_err(|e| PkiError::Name(format!("{dns:?}: {e}")))?;
        let uri = id.uri();
        p.subject_alt_names.push(SanType::URI(
            uri.clone().try_into().map_err(|_| PkiError::Name(uri))?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shoal");
        dn.push(DnType::CommonName, id.name.clone());
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial());
        validity(&mut p, valid_for.max(MIN_WORKLOAD_VALIDITY));
        let signed = rcgen::CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)?;
        Ok(signed.pem())
    }
}

/// The workload SPIFFE id the first certificate of `cert_pem` names, if it names one.
pub fn spiffe_id_of(cert_pem: &str) -> Option<SpiffeId> {
    use x509_parser::prelude::{FromDer, GeneralName};
    let der = crate::first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    // An SVID has exactly one URI name.
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(uri)
}

/// Checks that `cert_pem` (with any intermediates after it) chains to one of the roots in
/// `bundle_pem`, is valid at `now_secs` for both TLS server and client use, and names a
/// workload; returns the identity.
pub fn verify_workload(
    bundle_pem: &str,
    cert_pem: &str,
    now_secs: u64,
) -> Result<SpiffeId, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let refused = PkiError::Untrusted;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(refused("the trust bundle holds no certificate".into()));
    }
    let mut chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).filter_map(Result::ok);
    let leaf = chain
        .next()
        .ok_or_else(|| refused("no PEM certificate".into()))?;
    let intermediates: Vec<CertificateDer<'static>> = chain.collect();
    let cert = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| refused(format!("the certificate does not parse: {e}")))?;
    let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now_secs));
    let algs = &[
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
    ];
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        cert.verify_for_usage(algs, &anchors, &intermediates, time, usage, None, None)
            .map_err(|e| refused(format!("the certificate is not valid now: {e}")))?;
    }
    spiffe_id_of(cert_pem).ok_or_else(|| refused("the certificate names no workload".into()))
}

/// Checks an operator's issuing CA before the mesh CA signs with it: `chain_pem` (its
/// certificate, then any intermediates above it) and `key_pem` load, and a workload
/// certificate it signs for `trust_domain` verifies against `root_pem` now. That one test
/// covers what matters: the key is the certificate's, the certificate may sign certificates
/// (webpki checks it is a CA and its usages), and the chain reaches the root the proxies will
/// trust. ECDSA P-256 and P-384 keys, as Envoy and the agents verify them.
pub fn check_authority(
    trust_domain: &str,
    chain_pem: &str,
    key_pem: &str,
    root_pem: &str,
    now_secs: u64,
) -> Result<(), PkiError> {
    let signer = Ca::from_pem(chain_pem, key_pem)?;
    let (csr, _) = crate::new_csr("check")?;
    let id = SpiffeId::new(trust_domain, "check", WorkloadKind::VirtualNode, "check")?;
    let leaf = signer.issue_workload_for_csr(&csr, &id, &[], MIN_WORKLOAD_VALIDITY)?;
    verify_workload(root_pem, &format!("{leaf}{chain_pem}"), now_secs).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_csr, validity_of};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_workload_certificate_names_its_identity_and_the_callers_names_only() {
        let root = generate_root("shoal").unwrap();
        let id = SpiffeId::new("shoal", "app", WorkloadKind::VirtualNode, "front").unwrap();
        // The CSR asks for a name of its own: it is not used.
        let (csr, _key) = new_csr("admin.server.shoal").unwrap();
        let cert = root
            .issue_workload_for_csr(
                &csr,
                &id,
                &["front.app.local".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(spiffe_id_of(&cert), Some(id.clone()));
        assert_eq!(verify_workload(root.cert_pem(), &cert, now()).unwrap(), id);
        let other = generate_root("shoal").unwrap();
        assert!(verify_workload(other.cert_pem(), &cert, now()).is_err());
        assert!(verify_workload(root.cert_pem(), &cert, now() + 7200).is_err());
        // A bundle with both roots (a rotation's overlap) takes either's certificates.
        let both = format!("{}{}", other.cert_pem(), root.cert_pem());
        assert!(verify_workload(&both, &cert, now()).is_ok());
        let der = crate::first_cert_der(&cert).unwrap();
        assert_eq!(crate::role_of(&der), None, "never a cluster role");
        let (end, len) = validity_of(&cert).unwrap();
        assert_eq!(len, 3600 + 900);
        assert!(end > now() && end <= now() + 3600);
        // The root names the trust domain and is not a workload.
        assert_eq!(spiffe_id_of(root.cert_pem()), None);
        assert!(root.cert_pem().contains("CERTIFICATE"));
        // Too short a lifetime is raised to the minimum; a bad DNS name is refused.
        let short = root
            .issue_workload_for_csr(&csr, &spiffe("n"), &[], Duration::from_secs(1))
            .unwrap();
        assert_eq!(validity_of(&short).unwrap().1, 20 + 5);
        assert!(root
            .issue_workload_for_csr(&csr, &spiffe("n"), &["bad name".into()], WORKLOAD_VALIDITY)
            .is_err());
        assert!(matches!(
            root.issue_workload_for_csr("garbage", &spiffe("n"), &[], WORKLOAD_VALIDITY),
            Err(PkiError::Csr(_))
        ));
        assert!(generate_root("Not A Domain").is_err());
    }

    #[test]
    fn an_operators_intermediate_is_checked_against_its_root() {
        let root = generate_root("shoal").unwrap();
        // An intermediate the root signs (as an operator's PKI would make one).
        let mut p = crate::ca_params("operator issuing CA", 0);
        crate::validity(&mut p, Duration::from_secs(3600 * 24 * 30));
        let key = rcgen::KeyPair::generate().unwrap();
        let inter = p.signed_by(&key, &root.issuer().unwrap()).unwrap().pem();
        let key = key.serialize_pem();
        check_authority("shoal", &inter, &key, root.cert_pem(), now()).unwrap();
        // Its certificates chain to the root through it.
        let signer = Ca::from_pem(&inter, &key).unwrap();
        let (csr, _) = new_csr("x").unwrap();
        let leaf = signer
            .issue_workload_for_csr(&csr, &spiffe("n"), &[], WORKLOAD_VALIDITY)
            .unwrap();
        assert!(verify_workload(root.cert_pem(), &format!("{leaf}{inter}"), now()).is_ok());
        // Another root, a key that is not the certificate's, a leaf as a CA: refused.
        let other = generate_root("shoal").unwrap();
        assert!(check_authority("shoal", &inter, &key, other.cert_pem(), now()).is_err());
        let stranger_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(check_authority("shoal", &inter, &stranger_key, root.cert_pem(), now()).is_err());
        let not_ca = root
            .issue_workload_for_csr(&csr, &spiffe("leaf"), &[], WORKLOAD_VALIDITY)
            .unwrap();
        assert!(check_authority("shoal", &not_ca, &key, root.cert_pem(), now()).is_err());
        assert!(check_authority("shoal", "garbage", &key, root.cert_pem(), now()).is_err());
    }

    fn spiffe(name: &str) -> SpiffeId {
        SpiffeId::new("shoal", "m", WorkloadKind::VirtualNode, name).unwrap()
    }
}
