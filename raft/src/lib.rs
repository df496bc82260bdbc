//! shoal-raft: replication of the App Mesh model through openraft.
//!
//! Every write of the model goes through Raft, even on a single server, so that a write
//! acknowledged to a client is on disk (fsynced in the Raft log) before the client hears about
//! it, and so that adding servers later changes nothing about how writes flow.
//!
//! # Layout
//! - [`RaftNode`] (in `node.rs`): the handle the server uses: open, form or join a cluster,
//!   change its membership, write, read (linearizably, also on followers), watch, status,
//!   shutdown, and the gRPC service other servers call.
//! - `log_store.rs`: the Raft log, vote and commit index, in memory and in the write-ahead log
//!   (`wal.rs`), synced before openraft counts them (group commit: one sync per batch).
//! - `state_machine.rs`: the in-memory [`shoal_model::Model`], fed by committed entries, with
//!   snapshots persisted as checksummed files (`snapshot_store.rs`).
//! - `store_dir.rs`: the store's directory, its identity file, and the checks that refuse a
//!   store a crash cannot explain (missing log, missing identity, older format).
//! - `codec.rs`: the versioned JSON records everything on disk is stored as.
//! - `network.rs`: Raft RPC between servers over gRPC (service `shoal.raft.v1.Raft`, declared
//!   in `build.rs`, wire types in [`proto`]), and the incarnation check that keeps a server
//!   whose data was wiped out of the cluster until it is added again.
//!
//! Elections follow standard Raft: at most one leader per term (openraft's `single-term-leader`
//! feature, set in the workspace manifest). openraft's default lets a second candidate win the
//! same term with a greater node id, which the chaos suite saw as two leaders in one term on a
//! five-server cluster.
//!
//! Everything is stored as JSON (not bincode) because the model's types skip absent optional
//! members when serialized, which only a self-describing format can read back.

#![warn(missing_docs)]
// openraft's storage traits prescribe `StorageError` (over 200 bytes) as their error type; the
// helpers around them return it too, rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

mod cluster_id;
mod codec;
mod error;
mod log_store;
mod network;
mod node;
pub mod proto;
mod snapshot_store;
mod state_machine;
mod store_dir;
mod wal;

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod election_tests {
    use openraft::LeaderId;

    /// A server that voted for candidate 3 in term 2 must not also grant candidate 5 in term
    /// 2: the two leader ids are not comparable, so neither replaces the other and term 2 has
    /// one leader at most. (Without `single-term-leader`, (2, 5) > (2, 3) and both could lead
    /// term 2, one after the other.)
    #[test]
    fn a_term_has_one_leader_at_most() {
        let a = LeaderId::<u64>::new(2, 3);
        let b = LeaderId::<u64>::new(2, 5);
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!(b.partial_cmp(&a), None);
        assert!(LeaderId::<u64>::new(3, 1) > b);
    }
}

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use error::{Error, WriteError};
pub use network::RaftGrpc;
pub use node::{GrpcService, Member, RaftNode, Role, Status, Written};

/// The openraft version this crate is built against, re-exported so that callers of
/// [`RaftNode::raft`] can name its types without pinning a second copy.
pub use openraft;

/// How to run one Raft server. Build it with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This server's Raft id: unique in the cluster, stable across restarts, never reused.
    pub node_id: u64,
    /// The server's data directory; the Raft store lives in its `raft` subdirectory.
    pub data_dir: PathBuf,
    /// Where other servers reach this one's Raft RPC (recorded in the membership).
    pub raft_addr: String,
    /// Where clients reach this server's HTTP API (recorded in the membership, so followers
    /// can tell clients where the leader is).
    pub api_addr: String,
    /// Leader heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// A snapshot is built once this many entries have been applied since the last one; the
    /// log before a snapshot can then be purged, which bounds disk use and restart time.
    pub snapshot_after_logs: u64,
    /// How many log entries already covered by a snapshot are kept (the rest is purged). A
    /// follower that falls further behind than this is sent the snapshot instead of entries.
    pub logs_kept_after_snapshot: u64,
    /// How long sending one snapshot chunk (and installing the last one) to a follower may
    /// take, in milliseconds.
    pub install_snapshot_timeout_ms: u64,
    /// Mutual TLS for the RPCs this server sends; none: plain HTTP/2 (`--insecure`).
    pub tls: Option<ClientTls>,
    /// Fault injection for tests: every sync of the Raft log takes this much longer, as on a
    /// slow disk (the write is answered only after it). Zero otherwise; no flag sets it.
    pub sync_delay: std::time::Duration,
}

/// What a server presents and trusts when it dials another: the cluster CA, its own
/// certificate and key (PEM), and the name the peer's certificate must be valid for (every
/// server's certificate is valid for the same role name, whatever address it is dialled by).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// This server's certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The name verified in the peer's certificate.
    pub server_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with the default timings: heartbeat 100 ms, election timeout
    /// 400–600 ms (failover in about a second on a LAN), a snapshot
    /// every 5000 entries keeping 1000 entries of log behind it, and 10 s per snapshot chunk
    /// (openraft's default of 200 ms is too short for a chunk of a few megabytes).
    pub fn new(
        node_id: u64,
        data_dir: impl Into<PathBuf>,
        raft_addr: impl Into<String>,
        api_addr: impl Into<String>,
    ) -> Config {
        Config {
            node_id,
            data_dir: data_dir.into(),
            raft_addr: raft_addr.into(),
            api_addr: api_addr.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 600,
            snapshot_after_logs: 5000,
            logs_kept_after_snapshot: 1000,
            install_snapshot_timeout_ms: 10_000,
            tls: None,
            sync_delay: std::time::Duration::ZERO,
        }
    }
}

/// What the cluster membership records about each server: how to reach it, and which
/// incarnation of it is the member. This is the openraft `Node` type, so it is stored in the
/// log and replicated with membership changes. Get a server's own from
/// [`RaftNode::node_info`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The server's Raft RPC address (`host:port`, or a URL).
    pub raft_addr: String,
    /// The server's HTTP API address.
    pub api_addr: String,
    /// The incarnation of the server that is the member (see [`RaftNode::incarnation`]);
    /// empty in memberships written before incarnations existed.
    #[serde(default)]
    pub incarnation: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} incarnation={}",
            self.raft_addr, self.api_addr, self.incarnation
        )
    }
}

/// What applying one log entry answers, returned to the writer by openraft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The outcome of a [`shoal_model::Command`]; `None` for the entries openraft writes
    /// itself (blank entries of a new leader, membership changes).
    pub outcome: Option<shoal_model::Outcome>,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of shoal: the log carries [`shoal_model::Command`]s,
    /// servers are numbered by `u64` and described by [`NodeInfo`], and snapshots are JSON
    /// documents held in memory.
    pub TypeConfig:
        D = shoal_model::Command,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// The changes one log entry (or one installed snapshot) made to the model, as published
/// to [`RaftNode::subscribe`]rs: watchers (agents, caches) follow the model by applying
/// these in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The model revision after this change: the log index of the entry that made it.
    pub revision: u64,
    /// What changed, in order.
    pub changes: Vec<shoal_model::Change>,
}
