//! Joining with a token: the cluster CA in the replicated state, the join tokens operators
//! make, and the endpoint that signs a joining member's certificate request.
//!
//! - A server started with `--tls-ca-key` puts the CA (its `--tls-ca` certificate and that
//!   key) into the replicated state when it leads and there is none ([`import_ca`]); the key
//!   can then leave every disk: the servers sign from the replicated copy.
//! - `POST /v1/tls/tokens` makes a token (`shoal tls token create`), `GET` lists them,
//!   `DELETE /v1/tls/tokens/{id}` revokes one; with `--api-auth`, `shoal:ManageJoinTokens`.
//! - `POST /v1/tls/join` `{"Token", "Name", "Csr", "Ips"}` answers `{"Certificate", "Ca"}`: the
//!   token (checked after a linearizable read, so a revocation anywhere counts) says the role;
//!   the key stays on the joining host (only its CSR travels). Open: the token is the
//!   credential. `GET /v1/tls/ca` answers the CA certificate (public).
//! - `POST /v1/tls/renew` `{"Certificate", "Name", "Csr", "Ips"}`: a new certificate for a
//!   member whose certificate is still valid, for the same key (the CSR proves it holds it).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shoal_auth::join_token;
use shoal_model::{ApiError, ClusterCa, Command, JoinToken};

use super::AppState;
use crate::http::error_response;
use crate::unix_now as now;

/// Default lifetime of a token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The join routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tls/ca", get(ca))
        .route("/v1/tls/join", post(join))
        .route("/v1/tls/renew", post(renew))
        .route("/v1/tls/tokens", post(create).get(list))
        .route("/v1/tls/tokens/{id}", delete(revoke))
}

/// Puts the CA into the replicated state once this server leads, unless one is there: retried
/// every second until it is in (a follower waits for its turn or for the leader's import).
/// Whether the state now holds this very CA (false: another one, or stopped before).
pub async fn import_ca(
    state: AppState,
    ca: ClusterCa,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        if let Some(same) = state
            .raft
            .read(|m| m.cluster_ca().map(|held| held.cert_pem == ca.cert_pem))
        {
            return same;
        }
        let st = state.raft.status();
        if st.leader_id == Some(st.node_id) {
            match super::forward::commit_reply(&state, Command::ImportClusterCa { ca: ca.clone() })
                .await
            {
                Ok(_) => {
                    tracing::info!("the cluster CA is in the replicated state: servers sign joining members' certificates");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "importing the cluster CA failed; will retry")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return false,
        }
    }
}

async fn ca(State(s): State<AppState>) -> Response {
    match s.raft.read(|m| m.cluster_ca().map(|c| c.cert_pem.clone())) {
        Some(pem) => (StatusCode::OK, pem).into_response(),
        None => error_response(&ApiError::not_found(
            "This cluster has no CA in its replicated state (its first server starts with --tls-bootstrap, or one with --tls-ca-key imports one)",
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct JoinRequest {
    token: String,
    name: String,
    csr: String,
    /// Addresses a server's certificate must be valid for (its API is dialled by address);
    /// ignored for agents.
    #[serde(default)]
    ips: Vec<std::net::IpAddr>,
}

async fn join(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: JoinRequest = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Err(e) = super::forward::linearize(&s).await {
        return error_response(&e);
    }
    let id = join_token::parse(&req.token).map(|(id, _)| id.to_string());
    let (stored, ca) = s.raft.read(|m| {
        let stored = id.as_ref().ok().and_then(|id| m.join_token(id)).cloned();
        (stored, m.cluster_ca().cloned())
    });
    let checked = join_token::check(
        &req.token,
        stored
            .as_ref()
            .map(|t| (t.secret_sha256.as_str(), t.expires_at)),
        now(),
    );
    let token = match (checked, stored) {
        (Ok(()), Some(t)) => t,
        (Err(e), _) => {
            tracing::warn!(reason = %e, name = %shoal_model::logsafe::LogSafe(&req.name), "join refused");
            return crate::http::aws_error(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                &e.to_string(),
            );
        }
        (Ok(()), None) => unreachable!("check refuses a token without a stored record"),
    };
    let Some(ca) = ca else {
        return error_response(&ApiError::not_found(
            "This cluster has no CA in its replicated state (its first server starts with --tls-bootstrap, or one with --tls-ca-key imports one)",
        ));
    };
    let role = match token.role.as_str() {
        "server" => shoal_pki::Role::Server,
        _ => shoal_pki::Role::Agent,
    };
    tracing::info!(token = %token.id, role = %token.role, name = %shoal_model::logsafe::LogSafe(&req.name), "a member joins with a token");
    sign(&s, &ca, &req.csr, role, &req.name, &req.ips)
}

/// Signs `csr` for `role` and `name` (and `ips`, for a server) with the cluster CA: the
/// answer of a join and of a renewal.
fn sign(
    s: &AppState,
    ca: &ClusterCa,
    csr: &str,
    role: shoal_pki::Role,
    name: &str,
    ips: &[std::net::IpAddr],
) -> Response {
    let ips = if role == shoal_pki::Role::Server {
        ips
    } else {
        &[]
    };
    match shoal_pki::Ca::from_pem(&ca.cert_pem, &ca.key_pem)
        .and_then(|c| c.issue_for_csr(csr, role, name, &[], ips, s.cert_ttl))
    {
        Ok(cert) => {
            tracing::info!(role = role.as_str(), name = %shoal_model::logsafe::LogSafe(name), "certificate signed");
            (
                StatusCode::OK,
                Json(json!({ "Certificate": cert, "Ca": ca.cert_pem })),
            )
                .into_response()
        }
        Err(e) => error_response(&ApiError::bad_request(e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RenewRequest {
    /// The member's current certificate, still valid.
    certificate: String,
    name: String,
    /// A request for the same key.
    csr: String,
    #[serde(default)]
    ips: Vec<std::net::IpAddr>,
}

/// `POST /v1/tls/renew`: a new certificate for a member whose certificate is still valid,
/// proven by a CSR for the same key (only its holder can sign one). Open: the proof is the
/// credential. Same role and name; servers may name their addresses again.
async fn renew(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: RenewRequest = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let Some(ca) = s.raft.read(|m| m.cluster_ca().cloned()) else {
        return error_response(&ApiError::not_found(
            "This cluster has no CA in its replicated state (its first server starts with --tls-bootstrap, or one with --tls-ca-key imports one)",
        ));
    };
    let role = match shoal_pki::check_renewal(
        &ca.cert_pem,
        &req.certificate,
        &req.csr,
        &req.name,
        now(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(reason = %e, name = %shoal_model::logsafe::LogSafe(&req.name), "renewal refused");
            return crate::http::aws_error(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                &e.to_string(),
            );
        }
    };
    sign(&s, &ca, &req.csr, role, &req.name, &req.ips)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CreateToken {
    role: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    description: String,
}

async fn create(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: CreateToken = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL.as_secs());
    if ttl == 0 || ttl > 365 * 24 * 3600 {
        return error_response(&ApiError::bad_request(
            "TtlSeconds must be between 1 and one year",
        ));
    }
    let (id, secret, secret_sha256) = join_token::generate();
    let token = JoinToken {
        id: id.clone(),
        secret_sha256,
        role: req.role,
        expires_at: now() + ttl,
        description: req.description,
    };
    let expires_at = token.expires_at;
    match super::forward::commit_reply(&s, Command::PutJoinToken { token }).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "Id": id, "Token": format!("{id}.{secret}"), "ExpiresAt": expires_at })),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn list(State(s): State<AppState>) -> Response {
    if let Err(e) = super::forward::linearize(&s).await {
        return error_response(&e);
    }
    let now = now();
    let tokens: Vec<serde_json::Value> = s.raft.read(|m| {
        m.join_tokens()
            .map(|t| {
                json!({
                    "Id": t.id,
                    "Role": t.role,
                    "ExpiresAt": t.expires_at,
                    "Expired": now >= t.expires_at,
                    "Description": t.description,
                })
            })
            .collect()
    });
    (StatusCode::OK, Json(json!({ "Tokens": tokens }))).into_response()
}

async fn revoke(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match super::forward::commit_reply(&s, Command::RevokeJoinToken { id: id.clone() }).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "Id": id }))).into_response(),
        Err(e) => error_response(&e),
    }
}
