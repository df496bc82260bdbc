//! What every server handler shares.

use std::sync::Arc;

use shoal_raft::RaftNode;

use super::cluster::Removed;
use super::metrics::Metrics;

/// Who owns what this control plane creates: the account and region written into ARNs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// 12-digit account id (`meshOwner`, `resourceOwner`).
    pub account: String,
    /// Region in ARNs.
    pub region: String,
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The replicated store.
    pub raft: RaftNode,
    /// Account and region for new resources.
    pub identity: Arc<Identity>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Calls to the leader's `shoal.v1.Forward` service (commits, read indexes, removals).
    pub forwarder: Arc<super::rpc::Forwarder>,
    /// Gossip membership, when this server runs in a cluster.
    pub gossip: Option<shoal_gossip::Gossip>,
    /// Servers removed by an operator, kept out until they restart.
    pub removed: Removed,
    /// Whose gossip members `/v1/members` lists: the server's own, else an embedded agent's.
    pub members: Option<shoal_gossip::Gossip>,
    /// Whether the API requires SigV4 signatures with keys shoal issued (`--api-auth`).
    pub auth: bool,
    /// How long the certificates this server signs for joining or renewing members are valid.
    pub cert_ttl: std::time::Duration,
}
