//! Raft RPC between servers.
//!
//! Today shoal runs single-server clusters only, and a cluster of one never sends a Raft RPC:
//! it votes for itself and commits alone. So every connection here reports the target as
//! unreachable, which openraft handles by backing off. Multi-server networking replaces this
//! module (a transport that forwards `append_entries`, `vote` and `install_snapshot` to the
//! peer's [`openraft::Raft`]) without touching storage or the public API.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{NodeInfo, TypeConfig};

/// Creates connections to other servers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Network;

/// Why an RPC could not be sent.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach Raft node {target} at {addr}: this build has no Raft transport between servers \
     (only single-server clusters are supported)"
)]
pub(crate) struct NoTransport {
    target: u64,
    addr: String,
}

/// A "connection" to one server that can carry nothing.
#[derive(Debug)]
pub(crate) struct Connection {
    target: u64,
    addr: String,
}

impl Connection {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, NodeInfo, E> {
        let e = NoTransport {
            target: self.target,
            addr: self.addr.clone(),
        };
        tracing::debug!(error = %e, "Raft RPC not sent");
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Connection {
        Connection {
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(self.unreachable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_rpc_is_unreachable() {
        let mut net = Network;
        let node = NodeInfo {
            raft_addr: "127.0.0.2:7071".into(),
            api_addr: "127.0.0.2:7070".into(),
        };
        let mut conn = net.new_client(2, &node).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = conn
            .vote(vote, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)));
        assert!(err.to_string().contains("127.0.0.2:7071"), "{err}");
    }
}
