//! The `MeshCa` protocol between agents and servers: an agent asks a server to sign a
//! workload certificate for one of its proxies (`SignWorkload`) and fetches the mesh CA's trust
//! bundle (`TrustBundle`). Payloads are JSON in a protobuf field, as the other services'.
//! The server side is `server::mesh_ca`, the agent side `agent::identity`; this module is the
//! wire both share, so neither role imports the other.

use serde::{Deserialize, Serialize};

/// What a proxy's certificate is asked for with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SignInput {
    /// The proxy's mesh.
    pub mesh: String,
    /// Its virtual node (or else its virtual gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_node: Option<String>,
    /// Its virtual gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_gateway: Option<String>,
    /// PEM certificate signing request for the proxy's key.
    pub csr: String,
    /// The lifetime asked for (default a day; at least 20 s, at most a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
}

/// A signed workload certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignOutput {
    /// The SPIFFE id the certificate carries.
    pub spiffe_id: String,
    /// The mesh CA's trust domain.
    pub trust_domain: String,
    /// The certificate, then the intermediates up to the root (not included), PEM.
    pub certificate_chain: String,
    /// The roots to trust, PEM.
    pub trust_bundle: String,
    /// Unix seconds.
    pub expiration: u64,
}

/// `shoal.v1.MeshCa/SignWorkload`: a [`SignInput`] as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignRequest {
    /// The request's JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub request: Vec<u8>,
}

/// Its answer: `Result<SignOutput, ApiError>` as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignReply {
    /// The outcome's JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub outcome: Vec<u8>,
}

/// `shoal.v1.MeshCa/TrustBundle`: what agents trust, fetched before any proxy needs it and
/// again every minute (a rotation's new root reaches every proxy without a renewal).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrustBundleRequest {}

/// Its answer: `Result<TrustBundle, ApiError>` as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrustBundleReply {
    /// The outcome's JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub outcome: Vec<u8>,
}

/// The mesh CA's trust domain and the roots to trust now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrustBundle {
    /// The trust domain.
    pub trust_domain: String,
    /// The roots, PEM.
    pub trust_bundle: String,
}

/// Generated client and server stubs.
pub mod grpc {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/shoal.v1.MeshCa.rs"));
}
