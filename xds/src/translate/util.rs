//! Small builders shared by the node and gateway translations: durations, wrappers, config
//! sources, addresses, access logs and TLS contexts.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source, config_source, data_source, grpc_service, socket_address,
    transport_socket, Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource,
    DataSource, GrpcService, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    SdsSecretConfig, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{value, Any, BoolValue, Duration, UInt32Value, Value};
use prost::{Message, Name};
use shoal_model::api;

use super::{TranslateError, SDS_CLUSTER};
use crate::identity::{trust_domain_id, OWN_CERTIFICATE};
use shoal_model::identity::{SpiffeId, WorkloadKind};

/// Packs a message into Envoy's `Any`.
pub(crate) fn any<T: Message + Name>(msg: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A wrapped `u32`.
pub(crate) fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// A wrapped `bool`.
pub(crate) fn boolv(v: bool) -> Option<BoolValue> {
    Some(BoolValue { value: v })
}

/// A model count (an `i32` or `i64` the model keeps non-negative) as Envoy's `u32`, clamped.
pub(crate) fn clamp_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

/// A duration of `ms` milliseconds.
pub(crate) fn millis(ms: i64) -> Duration {
    Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A model duration, or `None` when it has no value or unit (the model allows an empty one;
/// the caller then applies its default).
pub(crate) fn duration(d: &api::Duration) -> Option<Duration> {
    let (value, unit) = (d.value?, d.unit?);
    let value = value.max(0);
    Some(match unit {
        api::DurationUnit::S => Duration {
            seconds: value,
            nanos: 0,
        },
        api::DurationUnit::Ms => millis(value),
    })
}

/// [`duration`] of an optional model duration.
pub(crate) fn opt_duration(d: &Option<api::Duration>) -> Option<Duration> {
    d.as_ref().and_then(duration)
}

/// Whether a duration is zero (Envoy rejects zero where it requires a positive duration).
pub(crate) fn is_zero(d: &Duration) -> bool {
    d.seconds == 0 && d.nanos == 0
}

/// Resources of the proxy's own ADS stream (RDS, EDS): `{ads: {}, resource_api_version: V3}`.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A secret the agent serves on the proxy's ADS stream (its workload certificate, the mesh
/// CA's bundle).
pub(crate) fn ads_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// Secrets named by the model's `sds` members: fetched, as App Mesh's Envoy did, from the
/// local SDS provider (a SPIRE agent) through the bootstrap cluster [`SDS_CLUSTER`].
pub(crate) fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: api_config_source::ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

/// A TCP socket address.
pub(crate) fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A file on the proxy's host.
pub(crate) fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Exact string matcher.
pub(crate) fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_string())),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Access logs
// ---------------------------------------------------------------------------------------------

/// `FileAccessLog`, encoded with its JSON format's keys in sorted order. The generated type
/// keeps a JSON format in a `HashMap`, whose encoding order changes from one map to the next;
/// the same model must give the same bytes (the resource's version is a hash of them), so
/// the access log is encoded through these mirrors of the same wire format instead.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedFileAccessLog {
    /// `FileAccessLog.path`.
    #[prost(string, tag = "1")]
    pub path: String,
    /// `FileAccessLog.log_format`.
    #[prost(message, optional, tag = "5")]
    pub log_format: Option<SortedFormat>,
}

/// `SubstitutionFormatString` with a sorted JSON format (see [`SortedFileAccessLog`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedFormat {
    /// `json_format`.
    #[prost(message, optional, tag = "2")]
    pub json_format: Option<SortedStruct>,
    /// `text_format_source`.
    #[prost(message, optional, tag = "5")]
    pub text_format_source: Option<DataSource>,
}

/// `google.protobuf.Struct` as a list of entries, in order.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedStruct {
    /// Map entries.
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<StructEntry>,
}

/// One `Struct` entry.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StructEntry {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

/// The access loggers for a model `file` access log: Envoy's default format when the model
/// gives none, the text format (with a newline added when it lacks one, so entries stay one
/// per line), or the JSON format (keys sorted; a repeated key keeps its last value).
pub(crate) fn access_logs(path: &str, format: Option<&api::LoggingFormat>) -> Vec<AccessLog> {
    let log_format = format.map(|f| match f {
        api::LoggingFormat::Text(t) => {
            let mut t = t.clone();
            if !t.ends_with('\n') {
                t.push('\n');
            }
            SortedFormat {
                json_format: None,
                text_format_source: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(t)),
                    ..Default::default()
                }),
            }
        }
        api::LoggingFormat::Json(pairs) => {
            let mut map = std::collections::BTreeMap::new();
            for p in pairs {
                map.insert(p.key.clone(), p.value.clone());
            }
            SortedFormat {
                json_format: Some(SortedStruct {
                    fields: map
                        .into_iter()
                        .map(|(key, v)| StructEntry {
                            key,
                            value: Some(Value {
                                kind: Some(value::Kind::StringValue(v)),
                            }),
                        })
                        .collect(),
                }),
                text_format_source: None,
            }
        }
    });
    let log = SortedFileAccessLog {
        path: path.to_string(),
        log_format,
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: FileAccessLog::type_url(),
            value: log.encode_to_vec(),
        })),
        ..Default::default()
    }]
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// Where a certificate and its key come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum CertSource {
    /// PEM files on the proxy's host.
    File {
        /// Certificate chain.
        chain: String,
        /// Private key.
        key: String,
    },
    /// A secret of the local SDS provider.
    Sds(String),
    /// A secret the agent serves over ADS: the proxy's own workload certificate from the mesh
    /// CA (named by its SPIFFE id, or [`OWN_CERTIFICATE`] for `acm` and automatic mTLS).
    Agent(String),
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TrustSource {
    /// A PEM bundle on the proxy's host.
    File(String),
    /// A validation-context secret of the local SDS provider.
    Sds(String),
    /// The mesh CA's trust bundle, served by the agent over ADS (named `spiffe://<trust-domain>`).
    Agent(String),
}

/// Whether the agent serves secret `name` itself: names in the mesh CA's trust domain
/// (`spiffe://<td>` for its bundle, `spiffe://<td>/…` for workload certificates). Any other
/// `sds` name still goes to the local SDS provider (a SPIRE agent), as with App Mesh.
fn agent_served(name: &str, trust_domain: Option<&str>) -> bool {
    let Some(td) = trust_domain else {
        return false;
    };
    name.strip_prefix(&trust_domain_id(td))
        .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
}

impl CertSource {
    fn served_by(self, trust_domain: Option<&str>) -> Self {
        match self {
            CertSource::Sds(n) if agent_served(&n, trust_domain) => CertSource::Agent(n),
            other => other,
        }
    }

    fn agent_secret(&self) -> Option<&str> {
        match self {
            CertSource::Agent(n) => Some(n),
            _ => None,
        }
    }
}

impl TrustSource {
    fn served_by(self, trust_domain: Option<&str>) -> Self {
        match self {
            TrustSource::Sds(n) if agent_served(&n, trust_domain) => TrustSource::Agent(n),
            other => other,
        }
    }

    fn agent_secret(&self) -> Option<&str> {
        match self {
            TrustSource::Agent(n) => Some(n),
            _ => None,
        }
    }
}

/// A resolved client TLS policy (backend defaults or a backend's own client policy).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClientTls {
    /// Client certificate, for mutual TLS.
    pub cert: Option<CertSource>,
    /// How the server's certificate is checked.
    pub trust: TrustSource,
    /// Subject alternative names the server's certificate must carry one of (none: any).
    pub sans: Vec<String>,
    /// Target ports the policy applies to (empty: every port).
    pub ports: Vec<u16>,
    /// Automatic mTLS: each target must present its own SPIFFE id (added per cluster by
    /// [`ClientTls::for_target`]).
    pub verify_target: bool,
}

impl ClientTls {
    /// The same, for the cluster of virtual node `node` in `mesh`: with automatic mTLS, the
    /// node's own SPIFFE id is the one name its certificate must carry.
    pub fn for_target(mut self, mesh: &str, node: &str, trust_domain: Option<&str>) -> Self {
        if self.verify_target {
            if let Some(id) = trust_domain
                .and_then(|td| SpiffeId::new(td, mesh, WorkloadKind::VirtualNode, node).ok())
            {
                self.sans = vec![id.uri()];
            }
        }
        self
    }

    /// The same, with the `sds` secrets of the mesh CA's `trust_domain` served by the agent.
    fn served_by(self, trust_domain: Option<&str>) -> Self {
        ClientTls {
            cert: self.cert.map(|c| c.served_by(trust_domain)),
            trust: self.trust.served_by(trust_domain),
            ..self
        }
    }

    /// The secrets the agent must serve for this policy.
    pub fn agent_secrets(&self) -> impl Iterator<Item = &str> {
        self.cert
            .iter()
            .filter_map(CertSource::agent_secret)
            .chain(self.trust.agent_secret())
    }

    /// Whether the policy applies to a target listening on `port`.
    pub fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// Server-side TLS of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerTls {
    /// STRICT (TLS only) or PERMISSIVE (TLS and plain text). DISABLED listeners get `None`.
    pub strict: bool,
    /// The listener's certificate.
    pub cert: CertSource,
    /// Client certificate validation (mutual TLS), if any.
    pub validation: Option<(TrustSource, Vec<String>)>,
}

impl ServerTls {
    /// Whether the listener checks clients against the mesh CA and names no SANs of its own:
    /// the model then says who may call ([`shoal_model::identity::callers`]).
    pub fn admits_by_model(&self) -> bool {
        matches!(&self.validation, Some((TrustSource::Agent(_), sans)) if sans.is_empty())
    }

    /// The same, with the `sds` secrets of the mesh CA's `trust_domain` served by the agent.
    fn served_by(self, trust_domain: Option<&str>) -> Self {
        ServerTls {
            cert: self.cert.served_by(trust_domain),
            validation: self
                .validation
                .map(|(t, sans)| (t.served_by(trust_domain), sans)),
            ..self
        }
    }

    /// The secrets the agent must serve for this listener.
    pub fn agent_secrets(&self) -> impl Iterator<Item = &str> {
        self.cert
            .agent_secret()
            .into_iter()
            .chain(self.validation.iter().filter_map(|(t, _)| t.agent_secret()))
    }
}

/// The proxy's own certificate from the mesh CA, for an `acm` certificate or automatic mTLS.
fn mesh_ca_cert(
    resource: &str,
    trust_domain: Option<&str>,
    what: &str,
) -> Result<CertSource, TranslateError> {
    match trust_domain {
        Some(_) => Ok(CertSource::Agent(OWN_CERTIFICATE.to_string())),
        None => Err(no_mesh_ca(resource, what)),
    }
}

/// The mesh CA's trust bundle, for `acm` trust or automatic mTLS.
fn mesh_ca_trust(
    resource: &str,
    trust_domain: Option<&str>,
    what: &str,
) -> Result<TrustSource, TranslateError> {
    match trust_domain {
        Some(td) => Ok(TrustSource::Agent(trust_domain_id(td))),
        None => Err(no_mesh_ca(resource, what)),
    }
}

fn no_mesh_ca(resource: &str, what: &str) -> TranslateError {
    TranslateError::NoMeshCa {
        resource: resource.to_string(),
        what: what.to_string(),
    }
}

/// The client TLS automatic mTLS gives a backend without a client policy: the proxy's own
/// certificate, the mesh CA's bundle, and each target's own SPIFFE id.
pub(crate) fn auto_client_tls(
    resource: &str,
    trust_domain: Option<&str>,
) -> Result<ClientTls, TranslateError> {
    Ok(ClientTls {
        cert: Some(mesh_ca_cert(resource, trust_domain, "automatic mTLS")?),
        trust: mesh_ca_trust(resource, trust_domain, "automatic mTLS")?,
        sans: Vec::new(),
        ports: Vec::new(),
        verify_target: true,
    })
}

/// The listener TLS automatic mTLS gives a listener without TLS of its own: the proxy's own
/// certificate and client certificates from the mesh CA, required (`strict`) or optional
/// beside plain text.
pub(crate) fn auto_server_tls(
    resource: &str,
    strict: bool,
    trust_domain: Option<&str>,
) -> Result<ServerTls, TranslateError> {
    Ok(ServerTls {
        strict,
        cert: mesh_ca_cert(resource, trust_domain, "automatic mTLS")?,
        validation: Some((
            mesh_ca_trust(resource, trust_domain, "automatic mTLS")?,
            Vec::new(),
        )),
    })
}

fn sans_of(s: &Option<api::SubjectAlternativeNames>) -> Vec<String> {
    s.as_ref()
        .map(|s| s.r#match.exact.clone())
        .unwrap_or_default()
}

/// Resolves a virtual node's client policy. `None` when there is none or it is not enforced.
/// `acm` trust is the mesh CA's bundle (every certificate authority ARN maps to it).
pub(crate) fn client_tls(
    resource: &str,
    policy: Option<&api::ClientPolicy>,
    trust_domain: Option<&str>,
) -> Result<Option<ClientTls>, TranslateError> {
    let Some(tls) = policy.and_then(|p| p.tls.as_ref()) else {
        return Ok(None);
    };
    if tls.enforce == Some(false) {
        return Ok(None);
    }
    let cert = match &tls.certificate {
        None => None,
        Some(api::ClientTlsCertificate::File(f)) => Some(CertSource::File {
            chain: f.certificate_chain.clone(),
            key: f.private_key.clone(),
        }),
        Some(api::ClientTlsCertificate::Sds(s)) => Some(CertSource::Sds(s.secret_name.clone())),
    };
    let trust = match &tls.validation.trust {
        api::TlsValidationContextTrust::File(f) => TrustSource::File(f.certificate_chain.clone()),
        api::TlsValidationContextTrust::Sds(s) => TrustSource::Sds(s.secret_name.clone()),
        api::TlsValidationContextTrust::Acm(_) => {
            mesh_ca_trust(resource, trust_domain, "ACM certificate authorities")?
        }
    };
    Ok(Some(
        ClientTls {
            cert,
            trust,
            sans: sans_of(&tls.validation.subject_alternative_names),
            ports: ports(&tls.ports),
            verify_target: false,
        }
        .served_by(trust_domain),
    ))
}

fn ports(p: &Option<Vec<i32>>) -> Vec<u16> {
    let mut v: Vec<u16> = p
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(*p).ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Resolves a virtual gateway's client policy (the same shape under other names).
pub(crate) fn gateway_client_tls(
    resource: &str,
    policy: Option<&api::VirtualGatewayClientPolicy>,
    trust_domain: Option<&str>,
) -> Result<Option<ClientTls>, TranslateError> {
    let Some(tls) = policy.and_then(|p| p.tls.as_ref()) else {
        return Ok(None);
    };
    if tls.enforce == Some(false) {
        return Ok(None);
    }
    let cert = match &tls.certificate {
        None => None,
        Some(api::VirtualGatewayClientTlsCertificate::File(f)) => Some(CertSource::File {
            chain: f.certificate_chain.clone(),
            key: f.private_key.clone(),
        }),
        Some(api::VirtualGatewayClientTlsCertificate::Sds(s)) => {
            Some(CertSource::Sds(s.secret_name.clone()))
        }
    };
    let trust = match &tls.validation.trust {
        api::VirtualGatewayTlsValidationContextTrust::File(f) => {
            TrustSource::File(f.certificate_chain.clone())
        }
        api::VirtualGatewayTlsValidationContextTrust::Sds(s) => {
            TrustSource::Sds(s.secret_name.clone())
        }
        api::VirtualGatewayTlsValidationContextTrust::Acm(_) => {
            mesh_ca_trust(resource, trust_domain, "ACM certificate authorities")?
        }
    };
    Ok(Some(
        ClientTls {
            cert,
            trust,
            sans: sans_of(&tls.validation.subject_alternative_names),
            ports: ports(&tls.ports),
            verify_target: false,
        }
        .served_by(trust_domain),
    ))
}

/// Resolves a virtual node listener's TLS. `None` for DISABLED. An `acm` certificate is the
/// proxy's own certificate from the mesh CA.
pub(crate) fn listener_tls(
    resource: &str,
    tls: Option<&api::ListenerTls>,
    trust_domain: Option<&str>,
) -> Result<Option<ServerTls>, TranslateError> {
    let Some(tls) = tls else { return Ok(None) };
    let strict = match tls.mode {
        api::ListenerTlsMode::Disabled => return Ok(None),
        api::ListenerTlsMode::Strict => true,
        api::ListenerTlsMode::Permissive => false,
    };
    let cert = match &tls.certificate {
        api::ListenerTlsCertificate::File(f) => CertSource::File {
            chain: f.certificate_chain.clone(),
            key: f.private_key.clone(),
        },
        api::ListenerTlsCertificate::Sds(s) => CertSource::Sds(s.secret_name.clone()),
        api::ListenerTlsCertificate::Acm(_) => {
            mesh_ca_cert(resource, trust_domain, "an ACM certificate")?
        }
    };
    let validation = tls.validation.as_ref().map(|v| {
        let trust = match &v.trust {
            api::ListenerTlsValidationContextTrust::File(f) => {
                TrustSource::File(f.certificate_chain.clone())
            }
            api::ListenerTlsValidationContextTrust::Sds(s) => {
                TrustSource::Sds(s.secret_name.clone())
            }
        };
        (trust, sans_of(&v.subject_alternative_names))
    });
    Ok(Some(
        ServerTls {
            strict,
            cert,
            validation,
        }
        .served_by(trust_domain),
    ))
}

/// Resolves a virtual gateway listener's TLS. `None` for DISABLED.
pub(crate) fn gateway_listener_tls(
    resource: &str,
    tls: Option<&api::VirtualGatewayListenerTls>,
    trust_domain: Option<&str>,
) -> Result<Option<ServerTls>, TranslateError> {
    let Some(tls) = tls else { return Ok(None) };
    let strict = match tls.mode {
        api::VirtualGatewayListenerTlsMode::Disabled => return Ok(None),
        api::VirtualGatewayListenerTlsMode::Strict => true,
        api::VirtualGatewayListenerTlsMode::Permissive => false,
    };
    let cert = match &tls.certificate {
        api::VirtualGatewayListenerTlsCertificate::File(f) => CertSource::File {
            chain: f.certificate_chain.clone(),
            key: f.private_key.clone(),
        },
        api::VirtualGatewayListenerTlsCertificate::Sds(s) => CertSource::Sds(s.secret_name.clone()),
        api::VirtualGatewayListenerTlsCertificate::Acm(_) => {
            mesh_ca_cert(resource, trust_domain, "an ACM certificate")?
        }
    };
    let validation = tls.validation.as_ref().map(|v| {
        let trust = match &v.trust {
            api::VirtualGatewayListenerTlsValidationContextTrust::File(f) => {
                TrustSource::File(f.certificate_chain.clone())
            }
            api::VirtualGatewayListenerTlsValidationContextTrust::Sds(s) => {
                TrustSource::Sds(s.secret_name.clone())
            }
        };
        (trust, sans_of(&v.subject_alternative_names))
    });
    Ok(Some(
        ServerTls {
            strict,
            cert,
            validation,
        }
        .served_by(trust_domain),
    ))
}

fn common_tls(
    cert: Option<&CertSource>,
    validation: Option<(&TrustSource, &[String])>,
) -> CommonTlsContext {
    let mut ctx = CommonTlsContext::default();
    match cert {
        Some(CertSource::File { chain, key }) => ctx.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..Default::default()
        }),
        Some(CertSource::Sds(name)) => ctx.tls_certificate_sds_secret_configs.push(sds(name)),
        Some(CertSource::Agent(name)) => ctx
            .tls_certificate_sds_secret_configs
            .push(ads_secret(name)),
        None => {}
    }
    if let Some((trust, sans)) = validation {
        // A SAN in the model is matched whatever its type: as a DNS name and as a URI
        // (SPIFFE ids are URIs).
        let matchers: Vec<SubjectAltNameMatcher> = sans
            .iter()
            .flat_map(|s| {
                [2, 3].map(|san_type| SubjectAltNameMatcher {
                    san_type,
                    matcher: Some(exact(s)),
                    ..Default::default()
                })
            })
            .collect();
        // A secret's validation context, with the SANs checked on top of what it holds.
        let combined = |secret: SdsSecretConfig, matchers: Vec<SubjectAltNameMatcher>| {
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: matchers,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(secret),
                    ..Default::default()
                },
            )
        };
        ctx.validation_context_type = Some(match trust {
            TrustSource::File(path) => {
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(path)),
                        match_typed_subject_alt_names: matchers,
                        ..Default::default()
                    },
                )
            }
            TrustSource::Sds(name) => combined(sds(name), matchers),
            TrustSource::Agent(name) => combined(ads_secret(name), matchers),
        });
    }
    ctx
}

/// The transport socket of a cluster that speaks TLS to its endpoints, with `sni`.
pub(crate) fn upstream_tls(tls: &ClientTls, sni: &str, alpn: &[&str]) -> TransportSocket {
    let mut common = common_tls(tls.cert.as_ref(), Some((&tls.trust, &tls.sans)));
    common.alpn_protocols = alpn.iter().map(|s| s.to_string()).collect();
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: sni.to_string(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// The transport socket of a filter chain that terminates TLS; with a validation context,
/// clients must present a certificate (mutual TLS).
pub(crate) fn downstream_tls(tls: &ServerTls, alpn: &[&str]) -> TransportSocket {
    let mut common = common_tls(
        Some(&tls.cert),
        tls.validation.as_ref().map(|(t, s)| (t, s.as_slice())),
    );
    common.alpn_protocols = alpn.iter().map(|s| s.to_string()).collect();
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: tls.validation.as_ref().map(|_| BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}
