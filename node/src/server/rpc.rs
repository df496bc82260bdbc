//! The servers' own gRPC service on the cluster port, `shoal.v1.Forward`: what a follower asks
//! of the leader (a commit, a read index, the removal of a server). It sits behind the same
//! mutual TLS as Raft and takes **server** certificates only ([`crate::tls::require_server_peer`]),
//! so no API client, however authorized, reaches it. The leader checks every forwarded command
//! again (`model::check::command`): it never commits one no API request could have produced.
//! Payloads are the model's JSON, as in the Raft log.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_model::{ApiError, Command, ErrorKind, Outcome};
use shoal_raft::RaftNode;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A forwarded command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitRequest {
    /// The command's JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub command: Vec<u8>,
}

/// The leader's answer to a forwarded command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitReply {
    /// The outcome's JSON (`Result<Reply, ApiError>`).
    #[prost(bytes = "vec", tag = "1")]
    pub outcome: Vec<u8>,
}

/// A request for a read index.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadIndexRequest {}

/// The log index a follower must have applied to read linearizably.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadIndexReply {
    /// The index.
    #[prost(uint64, tag = "1")]
    pub index: u64,
}

/// Removes a server from the Raft membership (`shoal operator remove-server` on a follower).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveServerRequest {
    /// Its Raft id.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
}

/// Done.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveServerReply {}

/// Generated client and server stubs.
pub mod forward {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/shoal.v1.Forward.rs"));
}

/// The leader side.
#[derive(Clone)]
pub struct ForwardService {
    raft: RaftNode,
    gossip: Option<shoal_gossip::Gossip>,
    removed: super::cluster::Removed,
}

impl ForwardService {
    /// Serves `raft`'s leader role; removals are recorded in `removed` (with the generation
    /// `gossip` shows), as the API's own removals are.
    pub fn new(
        raft: RaftNode,
        gossip: Option<shoal_gossip::Gossip>,
        removed: super::cluster::Removed,
    ) -> ForwardService {
        ForwardService {
            raft,
            gossip,
            removed,
        }
    }
}

#[tonic::async_trait]
impl forward::forward_server::Forward for ForwardService {
    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitReply>, Status> {
        let cmd: Command = serde_json::from_slice(&request.get_ref().command)
            .map_err(|e| Status::invalid_argument(format!("malformed command: {e}")))?;
        let outcome: Outcome = match shoal_model::check::command(&cmd) {
            Err(e) => {
                tracing::warn!(error = %shoal_model::logsafe::LogSafe(&e.message), "refused a forwarded command");
                Err(e)
            }
            Ok(()) => match self.raft.write(cmd).await {
                Ok(w) => w.outcome,
                Err(e) => return Err(Status::unavailable(format!("Not committed here: {e}"))),
            },
        };
        let outcome = serde_json::to_vec(&outcome)
            .map_err(|e| Status::internal(format!("cannot encode the outcome: {e}")))?;
        Ok(Response::new(CommitReply { outcome }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        match self.raft.read_index().await {
            Ok(index) => Ok(Response::new(ReadIndexReply { index })),
            Err(e) => Err(Status::unavailable(format!("No read index here: {e}"))),
        }
    }

    async fn remove_server(
        &self,
        request: Request<RemoveServerRequest>,
    ) -> Result<Response<RemoveServerReply>, Status> {
        let node_id = request.get_ref().node_id;
        super::cluster::mark_removed(self.gossip.as_ref(), &self.removed, node_id);
        match self.raft.remove_node(node_id).await {
            Ok(()) => Ok(Response::new(RemoveServerReply {})),
            Err(e) => Err(Status::unavailable(format!(
                "Cannot remove server {}: {e}",
                request.get_ref().node_id
            ))),
        }
    }
}

/// The follower side: one channel per leader address, over the cluster's mutual TLS with this
/// server's current certificate (rebuilt after a renewal).
#[derive(Debug)]
pub struct Forwarder {
    tls: Option<crate::tls::Live>,
    channels: Mutex<HashMap<String, (u64, Channel)>>,
}

impl Forwarder {
    /// Forwarding with `tls` (none: plain gRPC, as the cluster port is then).
    pub fn new(tls: Option<crate::tls::Live>) -> Forwarder {
        Forwarder {
            tls,
            channels: Mutex::default(),
        }
    }

    /// A client of the server whose Raft (cluster gRPC) address is `addr`.
    pub fn client(
        &self,
        addr: &str,
    ) -> Result<forward::forward_client::ForwardClient<Channel>, ApiError> {
        let generation = self.tls.as_ref().map_or(0, crate::tls::Live::generation);
        let mut channels = self.channels.lock().expect("forward channels lock");
        if let Some((g, ch)) = channels.get(addr) {
            if *g == generation {
                return Ok(forward::forward_client::ForwardClient::new(ch.clone()));
            }
        }
        let url = crate::tls::grpc_url(addr, self.tls.is_some());
        let mut endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| unavailable(format!("invalid leader address {addr:?}: {e}")))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.current().client_config())
                .map_err(|e| unavailable(format!("TLS settings for {addr:?}: {e}")))?;
        }
        let ch = endpoint
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), (generation, ch.clone()));
        Ok(forward::forward_client::ForwardClient::new(ch))
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::ServiceUnavailable, message)
}
