//! The errors of the public API, shaped for what a caller does next: forward to the leader,
//! retry later, or give up.

use std::path::PathBuf;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError};

use crate::NodeInfo;

/// Why opening, bootstrapping, reading from or stopping a node failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store could not be opened or cannot be trusted: locked by another process, damaged,
    /// of another format, or missing a part. The message names the file (and the offset).
    #[error("cannot use the Raft store: {0}")]
    Store(String),
    /// The data directory was created by another node id; reusing it under a new id would
    /// corrupt the cluster.
    #[error("the Raft store in {path} belongs to node {stored}, not node {configured}")]
    NodeIdMismatch {
        /// The database directory.
        path: PathBuf,
        /// The id recorded in the store.
        stored: u64,
        /// The id in the configuration.
        configured: u64,
    },
    /// The timings in [`crate::Config`] are inconsistent.
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// Reading or writing the store failed.
    #[error("Raft storage: {0}")]
    Storage(#[from] openraft::StorageError<u64>),
    /// Raft has stopped: shut down, or halted by a storage error or a panic.
    #[error("Raft stopped: {0}")]
    Fatal(#[from] Fatal<u64>),
    /// This server is not the leader: a linearizable read or a membership change must go to
    /// the leader.
    #[error("this server is not the Raft leader{}", leader_hint(*.leader_id))]
    ForwardToLeader {
        /// The leader, if known.
        leader_id: Option<u64>,
        /// How to reach it, if known.
        leader: Option<NodeInfo>,
    },
    /// The leader could not confirm it still has a quorum.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Initializing the cluster was refused.
    #[error("cannot initialize the cluster: {0}")]
    Initialize(String),
    /// A membership change was refused: another one is in progress (retry), a new voter is
    /// not a member yet, or the change would leave no voter.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The gRPC server failed.
    #[error("Raft gRPC server: {0}")]
    Serve(String),
    /// A wait did not finish in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// Raft is shutting down.
    #[error("Raft is shutting down")]
    ShuttingDown,
}

/// Why a write was not committed. Only [`WriteError::ForwardToLeader`] means "not here, try
/// elsewhere"; the others mean the write may be retried later (or never succeed, for storage).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This server is not the leader. `leader_id` is `None` while no leader is known (an
    /// election is under way): retry shortly.
    #[error("this server is not the Raft leader{}", leader_hint(*.leader_id))]
    ForwardToLeader {
        /// The leader, if known.
        leader_id: Option<u64>,
        /// How to reach it, if known.
        leader: Option<NodeInfo>,
    },
    /// Raft has shut down or panicked; the write was not committed.
    #[error("Raft stopped: {0}")]
    Stopped(String),
    /// The log or state machine storage failed; the node has stopped.
    #[error("Raft storage: {0}")]
    Storage(openraft::StorageError<u64>),
    /// Anything else openraft reported (not expected for model commands).
    #[error("Raft write failed: {0}")]
    Internal(String),
}

fn leader_hint(leader_id: Option<u64>) -> String {
    match leader_id {
        Some(id) => format!(" (node {id} is)"),
        None => " and no leader is known".to_string(),
    }
}

impl From<RaftError<u64, ClientWriteError<u64, NodeInfo>>> for WriteError {
    fn from(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_id,
                leader_node,
            })) => WriteError::ForwardToLeader {
                leader_id,
                leader: leader_node,
            },
            RaftError::APIError(e) => WriteError::Internal(e.to_string()),
            RaftError::Fatal(Fatal::StorageError(e)) => WriteError::Storage(e),
            RaftError::Fatal(e) => WriteError::Stopped(e.to_string()),
        }
    }
}

impl From<RaftError<u64, ClientWriteError<u64, NodeInfo>>> for Error {
    fn from(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_id,
                leader_node,
            })) => Error::ForwardToLeader {
                leader_id,
                leader: leader_node,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Error::Membership(e.to_string())
            }
            RaftError::Fatal(e) => Error::Fatal(e),
        }
    }
}

impl From<RaftError<u64, CheckIsLeaderError<u64, NodeInfo>>> for Error {
    fn from(e: RaftError<u64, CheckIsLeaderError<u64, NodeInfo>>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(ForwardToLeader {
                leader_id,
                leader_node,
            })) => Error::ForwardToLeader {
                leader_id,
                leader: leader_node,
            },
            RaftError::APIError(e) => Error::NoQuorum(e.to_string()),
            RaftError::Fatal(e) => Error::Fatal(e),
        }
    }
}
