//! The mesh CA on the servers: made by the first leader, kept in the replicated state, and
//! signing workload certificates for proxies' keys: for agents over the cluster port
//! (`shoal.v1.MeshCa/SignWorkload`, behind the cluster's mutual TLS, which any member's
//! certificate passes), for operators over the API (`POST /v1/ca/mesh/sign`, authorized as
//! `shoal:IssueWorkloadCertificate`).
//!
//! The identity a certificate carries comes from the model, never from the request's CSR: the
//! virtual node or gateway must exist (a removed one gets nothing more, which is what revokes
//! it), and the DNS names are what its callers dial
//! ([`shoal_model::discovery::workload_dns_names`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_model::{ApiError, Command, Kind, MeshAuthority, MeshCa, ResourceKey};
use shoal_pki::mesh::{SpiffeId, WorkloadKind, MIN_WORKLOAD_VALIDITY, WORKLOAD_VALIDITY};

use super::AppState;
use crate::http::error_response;
use crate::unix_now as now;
use crate::watch::ca::{
    grpc, SignInput, SignOutput, SignReply, SignRequest, TrustBundle, TrustBundleReply,
    TrustBundleRequest,
};

/// The mesh CA routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ca/mesh", get(show))
        .route("/v1/ca/mesh/sign", post(sign))
        .route("/v1/ca/mesh/rotate", post(rotate))
        .route("/v1/ca/mesh/import", post(import))
}

/// Makes the mesh CA once this server leads, unless the replicated state holds one: retried
/// every second until it is there (made by this server or another) or the server stops.
pub async fn ensure(
    state: AppState,
    trust_domain: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Some(held) = state
            .raft
            .read(|m| m.mesh_ca().map(|ca| ca.trust_domain.clone()))
        {
            if held != trust_domain {
                tracing::warn!(
                    configured = %trust_domain,
                    replicated = %held,
                    "the mesh CA's trust domain was set when it was made; the configured one is not used"
                );
            }
            return;
        }
        let st = state.raft.status();
        if st.leader_id == Some(st.node_id) {
            match make(&trust_domain) {
                Err(e) => {
                    tracing::error!(error = %e, "cannot make the mesh CA");
                    return;
                }
                Ok(ca) => {
                    match super::forward::commit_reply(&state, Command::InitMeshCa { ca }).await {
                        Ok(_) => {
                            tracing::info!(trust_domain = %trust_domain, "the mesh CA is made");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e.message, "making the mesh CA failed; will retry")
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

fn make(trust_domain: &str) -> Result<MeshCa, shoal_pki::PkiError> {
    Ok(MeshCa {
        trust_domain: trust_domain.to_string(),
        signing: own_root(trust_domain, now())?,
        previous: Vec::new(),
    })
}

/// A new root of shoal's own for `trust_domain`, signing from `since`.
fn own_root(trust_domain: &str, since: u64) -> Result<MeshAuthority, shoal_pki::PkiError> {
    let root = shoal_pki::mesh::generate_root(trust_domain)?;
    Ok(MeshAuthority {
        cert_pem: root.cert_pem().to_string(),
        key_pem: root.key_pem().to_string(),
        root_pem: root.cert_pem().to_string(),
        since,
    })
}

fn no_ca() -> ApiError {
    ApiError::not_found("This cluster has no mesh CA yet: its leader makes one when it starts")
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Root {
    certificate_pem: String,
    signing: bool,
    /// Unix seconds; none for the signing root.
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_until: Option<u64>,
    /// The certificate's own expiry, Unix seconds.
    not_after: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ShowOutput {
    trust_domain: String,
    /// The roots to trust now, PEM, the signing one first.
    trust_bundle: String,
    roots: Vec<Root>,
    /// The signing authority's certificate expiry (an imported intermediate may end before
    /// its root), Unix seconds.
    signing_not_after: Option<u64>,
}

/// `GET /v1/ca/mesh`: the trust domain and the roots (never a key).
async fn show(State(s): State<AppState>) -> Response {
    match s.raft.read(|m| m.mesh_ca().cloned()) {
        Some(ca) => Json(describe(&ca)).into_response(),
        None => error_response(&no_ca()),
    }
}

fn describe(ca: &MeshCa) -> ShowOutput {
    let now = now();
    let expiry = |pem: &str| shoal_pki::validity_of(pem).map(|(end, _)| end);
    let mut roots = vec![Root {
        certificate_pem: ca.signing.root_pem.clone(),
        signing: true,
        trusted_until: None,
        not_after: expiry(&ca.signing.root_pem),
    }];
    roots.extend(
        ca.previous
            .iter()
            .filter(|r| r.trusted_until > now)
            .map(|r| Root {
                certificate_pem: r.root_pem.clone(),
                signing: false,
                trusted_until: Some(r.trusted_until),
                not_after: expiry(&r.root_pem),
            }),
    );
    ShowOutput {
        trust_domain: ca.trust_domain.clone(),
        trust_bundle: ca.bundle(now),
        roots,
        signing_not_after: expiry(&ca.signing.cert_pem),
    }
}

/// How long the previous root stays trusted after a rotation unless asked otherwise: two
/// days, longer than the longest workload certificate (a day), so every proxy renews from the
/// new root while both are trusted.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(2 * 24 * 3600);

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RotateInput {
    /// How long the previous root stays trusted, seconds (0: at once, for a root that must not
    /// be trusted any more; proxies holding its certificates fail until they renew).
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

/// `POST /v1/ca/mesh/rotate`: a new root signs from now on; the previous one stays in every
/// trust bundle for the overlap (agents fetch bundles every minute).
async fn rotate(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: RotateInput = if body.is_empty() {
        RotateInput::default()
    } else {
        match shoal_model::request::json(&body) {
            Ok(r) => r,
            Err(e) => return error_response(&e),
        }
    };
    let overlap = req
        .overlap_seconds
        .unwrap_or(DEFAULT_OVERLAP.as_secs())
        .min(365 * 24 * 3600);
    if let Err(e) = super::forward::linearize(&s).await {
        return error_response(&e);
    }
    let Some(td) = s.raft.read(|m| m.mesh_ca().map(|c| c.trust_domain.clone())) else {
        return error_response(&no_ca());
    };
    let now = now();
    let authority = match own_root(&td, now) {
        Ok(a) => a,
        Err(e) => {
            return error_response(&ApiError::new(
                shoal_model::ErrorKind::InternalServerError,
                format!("making a new root: {e}"),
            ))
        }
    };
    let cmd = Command::RotateMeshCa {
        authority,
        overlap_until: now + overlap,
        now,
    };
    if let Err(e) = super::forward::commit_reply(&s, cmd).await {
        return error_response(&e);
    }
    tracing::info!(overlap_seconds = overlap, "the mesh CA's root is rotated");
    match s.raft.read(|m| m.mesh_ca().cloned()) {
        Some(ca) => Json(describe(&ca)).into_response(),
        None => error_response(&no_ca()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ImportInput {
    /// The operator's issuing CA certificate, PEM, followed by any intermediates above it.
    certificate_chain: String,
    /// Its private key, PEM. Replicated to the servers (as the mesh CA's own is); never
    /// logged or shown.
    private_key: String,
    /// The root the chain ends at: what every proxy will trust.
    root_certificate: String,
    /// How long the previous root stays trusted, seconds (as for a rotation).
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

/// `POST /v1/ca/mesh/import`: an operator's intermediate signs from now on (the mesh CA
/// becomes part of their PKI); the previous root stays trusted for the overlap, as in a
/// rotation. Refused unless a certificate it signs verifies against the given root now.
async fn import(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: ImportInput = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let overlap = req
        .overlap_seconds
        .unwrap_or(DEFAULT_OVERLAP.as_secs())
        .min(365 * 24 * 3600);
    if let Err(e) = super::forward::linearize(&s).await {
        return error_response(&e);
    }
    let Some(td) = s.raft.read(|m| m.mesh_ca().map(|c| c.trust_domain.clone())) else {
        return error_response(&no_ca());
    };
    let now = now();
    if let Err(e) = shoal_pki::mesh::check_authority(
        &td,
        &req.certificate_chain,
        &req.private_key,
        &req.root_certificate,
        now,
    ) {
        return error_response(&ApiError::bad_request(format!(
            "The certificate, key and root do not make an issuing CA for the mesh: {e}"
        )));
    }
    let cmd = Command::RotateMeshCa {
        authority: MeshAuthority {
            cert_pem: req.certificate_chain,
            key_pem: req.private_key,
            root_pem: req.root_certificate,
            since: now,
        },
        overlap_until: now + overlap,
        now,
    };
    if let Err(e) = super::forward::commit_reply(&s, cmd).await {
        return error_response(&e);
    }
    tracing::info!(
        overlap_seconds = overlap,
        "an intermediate is imported into the mesh CA"
    );
    match s.raft.read(|m| m.mesh_ca().cloned()) {
        Some(ca) => Json(describe(&ca)).into_response(),
        None => error_response(&no_ca()),
    }
}

/// The cluster-port side, for agents.
#[derive(Clone)]
pub struct MeshCaService {
    state: AppState,
}

impl MeshCaService {
    /// Signs with `state`'s replicated mesh CA.
    pub fn new(state: AppState) -> Self {
        MeshCaService { state }
    }
}

#[tonic::async_trait]
impl grpc::mesh_ca_server::MeshCa for MeshCaService {
    async fn sign_workload(
        &self,
        req: tonic::Request<SignRequest>,
    ) -> Result<tonic::Response<SignReply>, tonic::Status> {
        let outcome = match shoal_model::request::json::<SignInput>(&req.get_ref().request) {
            Ok(input) => issue(&self.state, input).await,
            Err(e) => Err(e),
        };
        let outcome = serde_json::to_vec(&outcome)
            .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?;
        Ok(tonic::Response::new(SignReply { outcome }))
    }

    async fn trust_bundle(
        &self,
        _req: tonic::Request<TrustBundleRequest>,
    ) -> Result<tonic::Response<TrustBundleReply>, tonic::Status> {
        let outcome = serde_json::to_vec(&self.bundle())
            .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?;
        Ok(tonic::Response::new(TrustBundleReply { outcome }))
    }
}

impl MeshCaService {
    fn bundle(&self) -> Result<TrustBundle, ApiError> {
        let ca = self
            .state
            .raft
            .read(|m| m.mesh_ca().cloned())
            .ok_or_else(no_ca)?;
        Ok(TrustBundle {
            trust_domain: ca.trust_domain.clone(),
            trust_bundle: ca.bundle(now()),
        })
    }
}

/// `POST /v1/ca/mesh/sign`.
async fn sign(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: SignInput = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    match issue(&s, req).await {
        Ok(out) => (StatusCode::OK, Json(out)).into_response(),
        Err(e) => error_response(&e),
    }
}

/// A workload certificate for a proxy of a virtual node or gateway that exists now, after a
/// linearizable read (a node removed a moment ago gets nothing).
pub(super) async fn issue(s: &AppState, req: SignInput) -> Result<SignOutput, ApiError> {
    let out = issue_counted(s, req).await;
    s.metrics.observe_workload_certificate(out.is_ok());
    out
}

async fn issue_counted(s: &AppState, req: SignInput) -> Result<SignOutput, ApiError> {
    let (kind, wkind, name) = match (&req.virtual_node, &req.virtual_gateway) {
        (Some(n), None) => (Kind::VirtualNode, WorkloadKind::VirtualNode, n.clone()),
        (None, Some(g)) => (
            Kind::VirtualGateway,
            WorkloadKind::VirtualGateway,
            g.clone(),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "Name exactly one of VirtualNode and VirtualGateway",
            ))
        }
    };
    if req.csr.len() > 16 << 10 {
        return Err(ApiError::bad_request("The CSR is larger than 16 KiB"));
    }
    let valid_for = Duration::from_secs(
        req.validity_seconds
            .unwrap_or(WORKLOAD_VALIDITY.as_secs())
            .clamp(MIN_WORKLOAD_VALIDITY.as_secs(), WORKLOAD_VALIDITY.as_secs()),
    );
    super::forward::linearize(s).await?;
    let key = ResourceKey::in_mesh(&req.mesh, kind, &name);
    let found = s.raft.read(|m| {
        let exists = m.get(&key).is_some();
        let dns = match kind {
            Kind::VirtualNode => shoal_model::discovery::workload_dns_names(m, &req.mesh, &name),
            _ => Vec::new(),
        };
        (exists, dns, m.mesh_ca().cloned())
    });
    let (exists, dns, ca) = found;
    let ca = ca.ok_or_else(no_ca)?;
    if !exists {
        return Err(ApiError::not_found(format!(
            "{} {name} not found in mesh {}",
            if kind == Kind::VirtualNode {
                "Virtual node"
            } else {
                "Virtual gateway"
            },
            req.mesh
        )));
    }
    let id = SpiffeId::new(&ca.trust_domain, &req.mesh, wkind, &name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Names that are not DNS names (a virtual service named like a path) are left out of the
    // certificate rather than refusing the proxy its identity.
    let dns: Vec<String> = dns
        .into_iter()
        .filter(|d| shoal_pki::mesh::is_dns_name(d))
        .collect();
    let signer =
        shoal_pki::Ca::from_pem(&ca.signing.cert_pem, &ca.signing.key_pem).map_err(|e| {
            tracing::error!(error = %e, "the replicated mesh CA does not load");
            ApiError::new(
                shoal_model::ErrorKind::InternalServerError,
                "The mesh CA does not load",
            )
        })?;
    let leaf = signer
        .issue_workload_for_csr(&req.csr, &id, &dns, valid_for)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let expiration = shoal_pki::validity_of(&leaf).map_or(0, |(end, _)| end);
    // The chain: the leaf, then the signing certificate when it is an intermediate.
    let mut chain = leaf;
    if ca.signing.cert_pem != ca.signing.root_pem {
        chain.push_str(&ca.signing.cert_pem);
    }
    tracing::info!(spiffe_id = %id, expiration, "workload certificate issued");
    Ok(SignOutput {
        spiffe_id: id.uri(),
        trust_domain: ca.trust_domain.clone(),
        certificate_chain: chain,
        trust_bundle: ca.bundle(now()),
        expiration,
    })
}
