//! Any server accepts writes and linearizable reads; only the leader can commit or confirm
//! leadership, so followers forward. Writes travel as the already-parsed [`Command`] (the
//! follower did the parsing and validation) to the leader's internal endpoint; reads ask the
//! leader for a read index (ReadIndex: the leader confirms it is still leader with a quorum)
//! and wait until the local state machine has applied it, then read locally.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_model::{ApiError, Command, ErrorKind, Outcome, Reply, Resource};
use shoal_raft::{Error as RaftError, NodeInfo, WriteError};

use super::AppState;
use crate::http::error_response;

/// Path of the leader's commit endpoint.
const COMMIT: &str = "/internal/v1/commit";
/// Path of the leader's read-index endpoint.
const READ_INDEX: &str = "/internal/v1/read-index";
/// How many times a write follows a leader change before giving up.
const ATTEMPTS: usize = 5;

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::ServiceUnavailable, message)
}

/// Sends `req` to another server, signed with the servers' internal key when the API requires
/// signatures (the leader's internal endpoints take that key only).
pub(super) async fn send_signed(
    state: &AppState,
    req: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let mut req = req.build()?;
    if let Some(creds) = state.internal_credentials() {
        if let Err(e) = crate::sign::sign(&mut req, &creds) {
            // Sent unsigned, it is refused and reported as such.
            tracing::error!(error = %e, "cannot sign a forwarded request");
        }
    }
    state.http.execute(req).await
}

/// Commits `cmd` on the leader, wherever it is, and returns the resource it answers with.
pub async fn commit(state: &AppState, cmd: Command) -> Result<Resource, ApiError> {
    commit_reply(state, cmd)
        .await?
        .into_resource()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InternalServerError,
                "The command answered without a resource",
            )
        })
}

/// Commits `cmd` on the leader, wherever it is, and returns the state machine's answer.
pub async fn commit_reply(state: &AppState, cmd: Command) -> Result<Reply, ApiError> {
    let started = Instant::now();
    let result = commit_inner(state, cmd).await;
    state.metrics.observe_apply(started.elapsed());
    result
}

async fn commit_inner(state: &AppState, cmd: Command) -> Result<Reply, ApiError> {
    let mut last_error = unavailable("No Raft leader is known; retry shortly");
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        }
        match state.raft.write(cmd.clone()).await {
            Ok(w) => return w.outcome,
            Err(WriteError::ForwardToLeader {
                leader: Some(leader),
                ..
            }) => {
                match forward_commit(state, &leader, &cmd).await {
                    Ok(outcome) => return outcome,
                    // Only a request that never reached the leader is retried: one that did
                    // may have been committed (creates carry client tokens, so the caller
                    // can retry those safely).
                    Err(Forward::NotSent(e)) => {
                        last_error = unavailable(format!(
                            "Cannot reach the leader at {}: {e}",
                            leader.api_addr
                        ))
                    }
                    Err(Forward::Failed(e)) => return Err(e),
                }
            }
            Err(WriteError::ForwardToLeader { leader: None, .. }) => {}
            Err(e) => {
                return Err(unavailable(format!(
                    "The write could not be committed: {e}"
                )))
            }
        }
    }
    Err(last_error)
}

enum Forward {
    NotSent(String),
    Failed(ApiError),
}

async fn forward_commit(
    state: &AppState,
    leader: &NodeInfo,
    cmd: &Command,
) -> Result<Outcome, Forward> {
    let url = format!("{}://{}{COMMIT}", state.api_scheme, leader.api_addr);
    let resp = send_signed(state, state.http.post(&url).json(cmd))
        .await
        .map_err(|e| {
            if e.is_connect() {
                Forward::NotSent(e.to_string())
            } else {
                Forward::Failed(unavailable(format!("The leader did not answer: {e}")))
            }
        })?;
    if resp.status().is_success() {
        resp.json::<Outcome>()
            .await
            .map_err(|e| Forward::Failed(unavailable(format!("Bad answer from the leader: {e}"))))
    } else {
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let message = body["message"]
            .as_str()
            .unwrap_or("the leader refused the write")
            .to_string();
        Err(Forward::Failed(unavailable(message)))
    }
}

/// Blocks until this server's model reflects every write acknowledged before the call.
pub async fn linearize(state: &AppState) -> Result<(), ApiError> {
    match state.raft.read_index().await {
        Ok(_) => Ok(()),
        Err(RaftError::ForwardToLeader {
            leader: Some(leader),
            ..
        }) => {
            let url = format!("{}://{}{READ_INDEX}", state.api_scheme, leader.api_addr);
            let resp = send_signed(state, state.http.get(&url))
                .await
                .map_err(|e| {
                    unavailable(format!(
                        "Cannot reach the leader at {}: {e}",
                        leader.api_addr
                    ))
                })?;
            if !resp.status().is_success() {
                return Err(unavailable(
                    "The leader could not confirm a read index; retry shortly",
                ));
            }
            let ri: ReadIndex = resp
                .json()
                .await
                .map_err(|e| unavailable(format!("Bad answer from the leader: {e}")))?;
            state
                .raft
                .wait_applied(ri.index, Duration::from_secs(5))
                .await
                .map_err(|e| unavailable(format!("This server is too far behind the leader: {e}")))
        }
        Err(RaftError::ForwardToLeader { leader: None, .. }) => Err(unavailable(
            "No Raft leader is known; retry shortly or read with stale=true",
        )),
        Err(e) => Err(unavailable(format!(
            "A linearizable read needs the Raft leader: {e}"
        ))),
    }
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Log index a follower must have applied to read linearizably.
    pub index: u64,
}

/// A follower's forwarded write. Checked again here, as the follower should have checked it:
/// the leader never commits a command no API request could have produced.
async fn commit_endpoint(State(s): State<AppState>, Json(cmd): Json<Command>) -> Response {
    if let Err(e) = shoal_model::check::command(&cmd) {
        tracing::warn!(error = %shoal_model::logsafe::LogSafe(&e.message), "refused a forwarded command");
        return (StatusCode::OK, Json(Outcome::Err(e))).into_response();
    }
    match s.raft.write(cmd).await {
        Ok(w) => (StatusCode::OK, Json(w.outcome)).into_response(),
        Err(e) => error_response(&unavailable(format!("Not committed here: {e}"))),
    }
}

async fn read_index_endpoint(State(s): State<AppState>) -> Response {
    match s.raft.read_index().await {
        Ok(index) => (StatusCode::OK, Json(ReadIndex { index })).into_response(),
        Err(e) => error_response(&unavailable(format!("No read index here: {e}"))),
    }
}

/// The internal endpoints followers call on the leader.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(COMMIT, post(commit_endpoint))
        .route(READ_INDEX, get(read_index_endpoint))
}
