//! shoal-pki: the cluster's certificate authority, the certificates it issues to servers and
//! agents, and who a peer is by its certificate.
//!
//! The cluster's gRPC port (Raft between servers, the watch stream agents follow) takes mutual
//! TLS only: both sides present a certificate from the cluster CA. What a peer may do depends on
//! its **role**, written into its certificate as a DNS name, `server.shoal` or `agent.shoal`:
//! a client checks that the server it dialled holds a server certificate (it verifies the name
//! `server.shoal`, whatever address it dialled), and the Raft service takes RPCs only from
//! server certificates, so an agent's certificate follows the watch stream but never forges a
//! Raft message. Checking a role is asking the certificate, already verified by the TLS
//! handshake against the CA, whether it is valid for that name ([`role_of`]).
//!
//! Keys are ECDSA P-256 (rcgen's default, what every TLS stack and Envoy take); serials are
//! random, so re-issuing never repeats one.

pub mod mesh;

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// What a certificate's holder is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server: takes part in Raft, serves the watch stream.
    Server,
    /// An agent: follows the watch stream.
    Agent,
}

impl Role {
    /// The DNS name a certificate of this role is valid for.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Server => SERVER_NAME,
            Role::Agent => AGENT_NAME,
        }
    }

    /// `server` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// The name every server certificate is valid for, and the name a client verifies when it
/// dials a server (by whatever address).
pub const SERVER_NAME: &str = "server.shoal";
/// The name every agent certificate is valid for.
pub const AGENT_NAME: &str = "agent.shoal";

/// How long a CA certificate is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server or agent certificate is valid by default: one year.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the PEM.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name given for the certificate is not a valid DNS name or address.
    #[error("invalid name {0:?} for a certificate")]
    Name(String),
    /// A name that cannot be part of a workload's SPIFFE id.
    #[error(transparent)]
    Identity(#[from] shoal_model::identity::IdentityError),
    /// A certificate signing request that does not parse or whose signature fails.
    #[error("certificate signing request: {0}")]
    Csr(String),
    /// A renewal that does not prove who asks.
    #[error("renewal refused: {0}")]
    Renewal(String),
    /// A workload certificate that does not chain to the bundle, is not valid now, or names
    /// no workload.
    #[error("workload certificate refused: {0}")]
    Untrusted(String),
}

/// A certificate authority: its certificate and private key, both PEM.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

pub(crate) fn validity(p: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little in the past, for clocks a bit behind the issuer's: an hour, or a quarter of a
    // short lifetime (minutes-long certificates in tests keep most of their life).
    let back = std::cmp::min(Duration::from_secs(3600), valid_for / 4);
    p.not_before = now - back;
    p.not_after = now + valid_for;
}

/// A CA certificate's parameters: `common_name` (organization shoal), signing certificates
/// down `path_len` levels of intermediates below it.
pub(crate) fn ca_params(common_name: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "shoal");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Ca, PkiError> {
        let mut p = ca_params(common_name, 0);
        p.serial_number = Some(random_serial());
        validity(&mut p, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from its certificate and key (as [`Ca::cert_pem`] and [`Ca::key_pem`] wrote them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        // Parse both now, so a bad file is reported when it is loaded, not at first issue.
        let key = KeyPair::from_pem(key_pem)?;
        Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate (what every member trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key. Whoever has it can issue certificates: keep it off the wire and
    /// out of logs.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `name` in `role`, valid for `valid_for`: valid for the role's
    /// name, `<name>.<role>.shoal`, and the extra `dns` names and `ips` (for clients that
    /// verify an address), with a SPIFFE-style URI `spiffe://shoal/<role>/<name>`. The key is
    /// made here (for `shoal tls cert create`, which writes both).
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        let p = leaf_params(role, name, dns, ips, valid_for)?;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the same certificate as [`Ca::issue`] for the public key of a certificate signing
    /// request (whose own signature is verified, proving its sender holds the key): what a
    /// member that joins with a token gets, its key never leaving its host. Only the CSR's key
    /// is used; the names come from the caller (what the token allows), never from the CSR.
    pub fn issue_for_csr(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let signed = rcgen::CertificateSigningRequestParams {
            params: leaf_params(role, name, dns, ips, valid_for)?,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)?;
        Ok(signed.pem())
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(
            &self.cert_pem,
            KeyPair::from_pem(&self.key_pem)?,
        )?)
    }
}

/// A new key pair and a certificate signing request for it (PEM, PKCS#8 key), which a member
/// sends to be signed while the key stays with it.
pub fn new_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// A certificate signing request for an existing key (a renewal keeps the member's key).
pub fn csr_for_key(name: &str, key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    Ok(p.serialize_request(&key)?.pem()?)
}

fn leaf_params(
    role: Role,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
    valid_for: Duration,
) -> Result<CertificateParams, PkiError> {
    let valid_label = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_label {
        return Err(PkiError::Name(name.to_string()));
    }
    let mut names = vec![
        role.dns_name().to_string(),
        format!("{}.{}", name.replace('_', "-"), role.dns_name()),
    ];
    names.extend(dns.iter().cloned());
    let mut p = CertificateParams::new(names).map_err(|e| PkiError::Name(e.to_string()))?;
    for ip in ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let uri = format!("spiffe://shoal/{}/{name}", role.as_str());
    p.subject_alt_names.push(SanType::URI(
        uri.clone().try_into().map_err(|_| PkiError::Name(uri))?,
    ));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name}.{}", role.dns_name()));
    dn.push(DnType::OrganizationName, "shoal");
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    validity(&mut p, valid_for);
    Ok(p)
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The role a peer's certificate (DER, already verified against the cluster CA by the TLS
/// handshake) was issued for, if any.
pub fn role_of(cert_der: &[u8]) -> Option<Role> {
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    [Role::Server, Role::Agent].into_iter().find(|role| {
        rustls_pki_types::ServerName::try_from(role.dns_name())
            .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
    })
}

/// Checks a renewal request: `cert_pem` chains to the CA `ca_pem` and is valid at `now_secs`
/// (Unix seconds), it was issued for `name` in its role (valid for `<name>.<role>.shoal`), and
/// the certificate signing request `csr_pem` (whose own signature proves its sender holds the
/// key) is for the same key. Returns the role, for the renewed certificate.
pub fn check_renewal(
    ca_pem: &str,
    cert_pem: &str,
    csr_pem: &str,
    name: &str,
    now_secs: u64,
) -> Result<Role, PkiError> {
    use rcgen::PublicKeyData;
    let refused = |why: &str| PkiError::Renewal(why.to_string());
    let ca_der =
        first_cert_der(ca_pem).ok_or_else(|| refused("the CA is not a PEM certificate"))?;
    let ca_der = rustls_pki_types::CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|_| refused("the CA certificate does not parse"))?;
    let der = first_cert_der(cert_pem).ok_or_else(|| refused("no PEM certificate presented"))?;
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|_| refused("the presented certificate does not parse"))?;
    cert.verify_for_usage(
        &[
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
        ],
        &[anchor],
        &[],
        rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now_secs)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| PkiError::Renewal(format!("the presented certificate is not valid now: {e}")))?;
    let role = role_of(&der).ok_or_else(|| refused("the certificate has no role"))?;
    let own_name = format!("{}.{}", name.replace('_', "-"), role.dns_name());
    let subject = rustls_pki_types::ServerName::try_from(own_name.as_str())
        .map_err(|_| PkiError::Name(name.to_string()))?;
    cert.verify_is_valid_for_subject_name(&subject)
        .map_err(|_| refused("the certificate was issued for another name"))?;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    if csr.public_key.subject_public_key_info() != cert.subject_public_key_info().as_ref() {
        return Err(refused(
            "the request is for another key than the certificate's",
        ));
    }
    Ok(role)
}

/// The end of a certificate's validity, in Unix seconds, and its length in seconds.
pub fn validity_of(cert_pem: &str) -> Option<(u64, u64)> {
    use x509_parser::prelude::FromDer;
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    let start = cert.validity().not_before.timestamp();
    let end = cert.validity().not_after.timestamp();
    Some((u64::try_from(end).ok()?, u64::try_from(end - start).ok()?))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_whose_role_is_read_back() {
        let ca = Ca::generate("shoal test CA").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let server = again
            .issue(
                Role::Server,
                "s1",
                &[],
                &["127.0.0.1".parse().unwrap()],
                LEAF_VALIDITY,
            )
            .unwrap();
        let agent = ca
            .issue(Role::Agent, "host-1", &[], &[], LEAF_VALIDITY)
            .unwrap();
        assert_eq!(
            role_of(&first_cert_der(&server.cert_pem).unwrap()),
            Some(Role::Server)
        );
        assert_eq!(
            role_of(&first_cert_der(&agent.cert_pem).unwrap()),
            Some(Role::Agent)
        );
        assert!(server.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        assert_eq!(role_of(b"not a certificate"), None);
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = Ca::generate("shoal test CA").unwrap();
        for bad in ["", "a.b", "x y", "über", &"n".repeat(64)] {
            assert!(
                matches!(
                    ca.issue(Role::Agent, bad, &[], &[], LEAF_VALIDITY),
                    Err(PkiError::Name(_))
                ),
                "{bad:?}"
            );
        }
        assert!(Ca::from_pem("garbage", ca.key_pem()).is_err());
    }

    #[test]
    fn a_csr_is_signed_for_the_callers_names_and_its_key_stays_with_the_sender() {
        let ca = Ca::generate("test CA").unwrap();
        let (csr, key) = new_csr("whatever-the-sender-asks").unwrap();
        let cert = ca
            .issue_for_csr(
                &csr,
                Role::Agent,
                "ip-10-0-1-23",
                &[],
                &[],
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = first_cert_der(&cert).unwrap();
        assert_eq!(role_of(&der), Some(Role::Agent));
        // The certificate carries the CSR's public key: the sender's key matches it.
        let kp = KeyPair::from_pem(&key).unwrap();
        let pk = kp.public_key_raw().to_vec();
        assert!(der.windows(pk.len()).any(|w| w == pk.as_slice()));
        // A damaged request is refused.
        let bad = csr.replace("A", "B");
        assert!(matches!(
            ca.issue_for_csr(&bad, Role::Agent, "x", &[], &[], Duration::from_secs(60)),
            Err(PkiError::Csr(_))
        ));
    }

    #[test]
    fn a_renewal_needs_a_valid_certificate_for_the_name_and_the_same_key() {
        let ca = Ca::generate("test CA").unwrap();
        let other_ca = Ca::generate("other CA").unwrap();
        let (csr, _key) = new_csr("a1").unwrap();
        let cert = ca
            .issue_for_csr(&csr, Role::Agent, "a1", &[], &[], Duration::from_secs(3600))
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            check_renewal(ca.cert_pem(), &cert, &csr, "a1", now).unwrap(),
            Role::Agent
        );
        let (end, len) = validity_of(&cert).unwrap();
        assert_eq!(len, 3600 + 900, "an hour, backdated by a quarter");
        assert!(end > now && end <= now + 3600);
        // Another name, another key, another CA, an expired certificate: refused.
        assert!(check_renewal(ca.cert_pem(), &cert, &csr, "a2", now).is_err());
        let (other_csr, _) = new_csr("a1").unwrap();
        assert!(check_renewal(ca.cert_pem(), &cert, &other_csr, "a1", now).is_err());
        assert!(check_renewal(other_ca.cert_pem(), &cert, &csr, "a1", now).is_err());
        assert!(check_renewal(ca.cert_pem(), &cert, &csr, "a1", now + 7200).is_err());
    }
}
