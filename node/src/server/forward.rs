//! Any server accepts writes and linearizable reads; only the leader can commit or confirm
//! leadership, so followers forward. Writes travel as the already-parsed [`Command`] (the
//! follower did the parsing and validation) to the leader's `shoal.v1.Forward` service on the
//! cluster gRPC port (mutual TLS, server certificates only: `rpc.rs`); reads ask the leader for
//! a read index (ReadIndex: the leader confirms it is still leader with a quorum) and wait
//! until the local state machine has applied it, then read locally.

use std::time::{Duration, Instant};

use shoal_model::{ApiError, Command, ErrorKind, Outcome, Reply, Resource};
use shoal_raft::{Error as RaftError, NodeInfo, WriteError};

use super::AppState;

/// How many times a write follows a leader change before giving up.
const ATTEMPTS: usize = 5;

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::ServiceUnavailable, message)
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
                            leader.raft_addr
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
    let command = serde_json::to_vec(cmd).map_err(|e| {
        Forward::Failed(ApiError::new(
            ErrorKind::InternalServerError,
            format!("cannot encode the command: {e}"),
        ))
    })?;
    let mut client = state
        .forwarder
        .client(&leader.raft_addr)
        .map_err(|e| Forward::NotSent(e.message))?;
    match client.commit(super::rpc::CommitRequest { command }).await {
        Ok(reply) => serde_json::from_slice(&reply.get_ref().outcome)
            .map_err(|e| Forward::Failed(unavailable(format!("Bad answer from the leader: {e}")))),
        // Unavailable: the leader was not reached, or answered that it did not commit (it is
        // no longer the leader): either way nothing was committed, and the write follows the
        // new leader.
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(Forward::NotSent(status.message().to_string()))
        }
        Err(status) => Err(Forward::Failed(unavailable(format!(
            "The leader did not answer: {}",
            status.message()
        )))),
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
            let mut client = state.forwarder.client(&leader.raft_addr)?;
            let index = client
                .read_index(super::rpc::ReadIndexRequest {})
                .await
                .map_err(|e| {
                    unavailable(format!(
                        "The leader at {} could not confirm a read index: {}",
                        leader.raft_addr,
                        e.message()
                    ))
                })?
                .get_ref()
                .index;
            state
                .raft
                .wait_applied(index, Duration::from_secs(5))
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
