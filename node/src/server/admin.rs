//! The operator's endpoints of a server: `/v1/status`, `/v1/members`, `/metrics`,
//! `/v1/operator/remove-server`, and `/v1/snapshot` (save and restore).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use shoal_model::ApiError;

use super::AppState;
use crate::http::error_response;

/// The operator's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/operator/remove-server", post(remove_server))
        .route("/v1/snapshot", get(snapshot_save))
        .route(
            "/v1/snapshot/restore",
            post(snapshot_restore).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics))
}

async fn status(State(s): State<AppState>) -> Response {
    let st = s.raft.status();
    let members: Vec<_> = st
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id,
                "api_addr": m.api_addr,
                "raft_addr": m.raft_addr,
                "role": m.role,
                "healthy": m.healthy,
                "lag": m.lag,
            })
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({
            "node_id": st.node_id,
            "leader_id": st.leader_id,
            "term": st.term,
            "commit_index": st.commit_index,
            "applied_index": st.applied_index,
            "revision": st.revision,
            "members": members,
        })),
    )
        .into_response()
}

async fn members(State(s): State<AppState>) -> Response {
    crate::http::members(s.members.as_ref())
}

async fn metrics(State(s): State<AppState>) -> Response {
    crate::http::openmetrics(s.metrics.render(&s.raft))
}

#[derive(Deserialize)]
struct RemoveServer {
    node_id: u64,
}

/// `POST /v1/operator/remove-server?node_id=N`: removes a (dead) member from the Raft
/// configuration, on the leader (followers forward the request once).
async fn remove_server(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<RemoveServer>,
) -> Response {
    super::cluster::mark_removed(s.gossip.as_ref(), &s.removed, q.node_id);
    match s.raft.remove_node(q.node_id).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({ "removed": q.node_id }))).into_response(),
        Err(shoal_raft::Error::ForwardToLeader {
            leader: Some(l), ..
        }) => {
            let forwarded = match s.forwarder.client(&l.raft_addr) {
                Ok(mut c) => c
                    .remove_server(super::rpc::RemoveServerRequest { node_id: q.node_id })
                    .await
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(e.message),
            };
            match forwarded {
                Ok(_) => {
                    (StatusCode::OK, axum::Json(json!({ "removed": q.node_id }))).into_response()
                }
                Err(e) => error_response(&ApiError::new(
                    shoal_model::ErrorKind::ServiceUnavailable,
                    format!("The leader could not remove server {}: {e}", q.node_id),
                )),
            }
        }
        Err(e) => error_response(&ApiError::new(
            shoal_model::ErrorKind::ServiceUnavailable,
            format!("Cannot remove server {}: {e}", q.node_id),
        )),
    }
}

/// `GET /v1/snapshot`: the whole model (linearizable unless `?stale=true`), for backups.
async fn snapshot_save(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(e) = super::appmesh::read_barrier(&s, &q).await {
        return error_response(&e);
    }
    let body = s.raft.read(serde_json::to_vec);
    match body {
        Ok(b) => (StatusCode::OK, [("content-type", "application/json")], b).into_response(),
        Err(e) => error_response(&ApiError::new(
            shoal_model::ErrorKind::InternalServerError,
            format!("Cannot encode the snapshot: {e}"),
        )),
    }
}

/// Largest snapshot `POST /v1/snapshot/restore` takes. The restore is one Raft entry that
/// every server holds in memory and writes to its log: 64 MiB is some 30,000 resources of
/// App Mesh's largest size, past any mesh App Mesh itself allowed (its quotas stop at a few
/// thousand resources per mesh).
pub const MAX_RESTORE_BYTES: usize = 64 << 20;

/// Reads `body` whole, but refuses it once it passes `max` bytes.
pub(super) async fn read_capped(
    body: axum::body::Body,
    max: usize,
) -> Result<axum::body::Bytes, shoal_model::ApiError> {
    use http_body_util::BodyExt;
    let too_big = || {
        shoal_model::ApiError::new(
            shoal_model::ErrorKind::LimitExceeded,
            format!("The snapshot is larger than {max} bytes, the most a restore takes"),
        )
    };
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(shoal_model::ApiError::bad_request(format!(
            "Cannot read the snapshot: {e}"
        ))),
    }
}

/// `POST /v1/snapshot/restore`: replaces the whole model with a saved one, as one Raft
/// command (every server applies it at the same revision; watchers get the difference).
/// Every resource is checked as a create would be before anything is committed.
///
/// The body is read as it arrives and refused (`LimitExceededException`) as soon as it passes
/// [`MAX_RESTORE_BYTES`] (or announces more), rather than buffered whole first.
async fn snapshot_restore(State(s): State<AppState>, body: axum::body::Body) -> Response {
    let body = match read_capped(body, MAX_RESTORE_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let model: shoal_model::Model = match shoal_model::request::json(&body) {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    let resources: Vec<shoal_model::Resource> = model.iter().cloned().collect();
    for r in &resources {
        let checked = shoal_model::check::name(r.key.kind, &r.key.name)
            .and_then(|()| shoal_model::check::into_result(shoal_model::check::spec(&r.spec)));
        if let Err(mut e) = checked {
            e.message = format!("{}: {}", r.key, e.message);
            return error_response(&e);
        }
    }
    match super::forward::commit_reply(&s, shoal_model::Command::Restore { resources }).await {
        Ok(reply) => {
            // On a follower the restore may not be applied here yet: catch up first, so the
            // revision reported is the restore's (or later).
            if let Err(e) = super::forward::linearize(&s).await {
                tracing::warn!(error = %e, "restore committed; reporting this server's revision");
            }
            let revision = s.raft.read(|m| m.revision());
            let count = match reply {
                shoal_model::Reply::Restored { resources } => resources,
                shoal_model::Reply::Resource(_)
                | shoal_model::Reply::Batch(_)
                | shoal_model::Reply::AccessKeys { .. }
                | shoal_model::Reply::ClusterCa
                | shoal_model::Reply::MeshCa
                | shoal_model::Reply::JoinTokens { .. } => 0,
            };
            (
                StatusCode::OK,
                axum::Json(json!({ "resources": count, "revision": revision })),
            )
                .into_response()
        }
        Err(e) => error_response(&e),
    }
}
