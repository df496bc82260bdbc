//! Raft RPC between servers, over gRPC: the service `shoal.raft.v1.Raft` (see `proto.rs`).
//!
//! Client side: [`Network`] is openraft's connection factory. Connections are tonic channels,
//! one per peer address, shared by every replication stream and election and connected
//! lazily, so creating one never fails and a peer that is down only costs a failed request.
//! Server side: [`RaftGrpc`] hands each request to the local [`openraft::Raft`] after
//! checking that it was meant for this very server.
//!
//! # Incarnations
//! Every request names the node id and the *incarnation* of its target as the sender's
//! membership records them. A server whose data directory was wiped comes back with a new
//! incarnation; it refuses requests addressed to its former self, because accepting them would
//! let a leader count its votes or acknowledgements as if it still held the log it lost. The
//! sender sees the refusal as "unreachable" until the node is removed from the membership
//! and added again under its new incarnation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::proto::raft_client::RaftClient;
use crate::proto::RaftMessage;
use crate::{NodeInfo, TypeConfig};

/// The largest gRPC message sent or accepted: an AppendEntries of up to
/// `max_payload_entries` model commands, or a snapshot chunk.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// How long opening a TCP connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings on idle connections, so that a peer that vanished (host down, network
/// partition) is noticed without waiting for the kernel's TCP timeouts.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait before retrying a peer that cannot be reached (openraft's default).
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(500);

/// How long to wait before retrying a peer that refused us for a wrong incarnation: that only
/// changes when an operator removes and re-adds it (which starts a new replication stream),
/// so retrying often would only fill the logs.
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the client side knows about the peers, shared by every connection and read by
/// [`crate::RaftNode::status`].
#[derive(Debug)]
pub(crate) struct Peers {
    inner: Mutex<PeersInner>,
    /// This store's cluster id, sent with every request.
    pub(crate) cluster: Arc<crate::cluster_id::ClusterId>,
    /// Mutual TLS for every connection, when configured (replaced by a renewal).
    tls: Mutex<Option<crate::ClientTls>>,
}

#[derive(Debug, Default)]
struct PeersInner {
    /// One channel per peer address (tonic multiplexes concurrent requests over it).
    channels: HashMap<String, Channel>,
    /// When each peer last answered an RPC.
    last_answer: HashMap<u64, Instant>,
    /// Per peer, the incarnation whose refusal was already logged as a warning.
    warned: HashMap<u64, String>,
}

impl Peers {
    /// When `id` last answered an RPC from this server, if ever.
    pub(crate) fn last_answer(&self, id: u64) -> Option<Instant> {
        lock(&self.inner).last_answer.get(&id).copied()
    }

    fn answered(&self, id: u64) {
        let mut inner = lock(&self.inner);
        inner.last_answer.insert(id, Instant::now());
        inner.warned.remove(&id);
    }

    /// Records that `id` refused a request meant for `incarnation`; true the first time.
    fn refused(&self, id: u64, incarnation: &str) -> bool {
        let mut inner = lock(&self.inner);
        if inner.warned.get(&id).is_some_and(|w| w == incarnation) {
            return false;
        }
        inner.warned.insert(id, incarnation.to_string());
        true
    }

    /// Whether `id` refused the last request meant for `incarnation`.
    fn is_refused(&self, id: u64, incarnation: &str) -> bool {
        lock(&self.inner)
            .warned
            .get(&id)
            .is_some_and(|w| w == incarnation)
    }

    /// Peers reached over mutual TLS with `tls` (none: plain HTTP/2).
    pub(crate) fn new(
        tls: Option<crate::ClientTls>,
        cluster: Arc<crate::cluster_id::ClusterId>,
    ) -> Peers {
        Peers {
            inner: Mutex::default(),
            cluster,
            tls: Mutex::new(tls),
        }
    }

    /// Presents `tls` from the next connection on: the cached channels are dropped (RPCs in
    /// flight finish on theirs).
    pub(crate) fn set_tls(&self, tls: crate::ClientTls) {
        *lock(&self.tls) = Some(tls);
        lock(&self.inner).channels.clear();
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut inner = lock(&self.inner);
        if let Some(ch) = inner.channels.get(addr) {
            return Ok(ch.clone());
        }
        let tls = lock(&self.tls).clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let uri = format!("{scheme}://{host}");
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("invalid Raft address {addr:?}: {e}"))?;
        if let Some(tls) = &tls {
            let cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    &tls.cert_pem,
                    &tls.key_pem,
                ))
                .domain_name(tls.server_name.clone());
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| format!("TLS settings for {addr:?}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let ch = endpoint.connect_lazy();
        inner.channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// Creates connections to other servers (openraft calls it for each replication stream and
/// each round of votes or leadership checks).
#[derive(Debug, Clone)]
pub(crate) struct Network {
    peers: Arc<Peers>,
}

impl Network {
    pub(crate) fn new(peers: Arc<Peers>) -> Network {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Connection {
        Connection {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Why an RPC got no answer from the peer's Raft.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("cannot reach Raft node {target} at {addr}: {reason}")]
    Transport {
        target: u64,
        addr: String,
        reason: String,
    },
    #[error("Raft node {target} at {addr} did not answer within {ttl:?}")]
    Timeout {
        target: u64,
        addr: String,
        ttl: Duration,
    },
    #[error("Raft node {target} at {addr} refused the request: {reason}")]
    Refused {
        target: u64,
        addr: String,
        reason: String,
    },
    #[error("Raft node {target} at {addr} is not running Raft: {fatal}")]
    Stopped {
        target: u64,
        addr: String,
        fatal: Fatal<u64>,
    },
    #[error("bad Raft message to or from node {target}: {reason}")]
    Codec { target: u64, reason: String },
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A connection to one server, as openraft's `RaftNetwork`.
#[derive(Debug)]
pub(crate) struct Connection {
    target: u64,
    node: NodeInfo,
    peers: Arc<Peers>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

impl Connection {
    fn transport(&self, reason: String) -> SendError {
        SendError::Transport {
            target: self.target,
            addr: self.node.raft_addr.clone(),
            reason,
        }
    }

    /// Sends one request and decodes the `Result` the peer's Raft answered.
    ///
    /// Errors map to what openraft should do next: `Unreachable` (back off before trying this
    /// peer again) when the peer cannot be reached, refuses us for a wrong incarnation, or
    /// has stopped Raft; `Network` (retry at the next occasion) for timeouts and garbled
    /// messages; `RemoteError` for an error of the peer's Raft API.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        chunk: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        E: std::error::Error,
        Result<Resp, RaftError<u64, E>>: DeserializeOwned,
    {
        // The channel is looked up per RPC (a map lookup): after a certificate renewal the
        // cache is emptied, and the next RPC connects with the new certificate.
        let client = self.peers.channel(&self.node.raft_addr).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        });
        let mut client = match &client {
            Ok(c) => c.clone(),
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &self.transport(reason.clone()),
                )))
            }
        };
        let payload = crate::codec::to_bytes(req).map_err(|e| {
            RPCError::Network(NetworkError::new(&SendError::Codec {
                target: self.target,
                reason: e.to_string(),
            }))
        })?;
        let ttl = option.hard_ttl();
        let mut request = Request::new(RaftMessage {
            target_node_id: self.target,
            target_incarnation: self.node.incarnation.clone(),
            payload,
            chunk,
            cluster_id: self.peers.cluster.get().unwrap_or_default(),
        });
        request.set_timeout(ttl);
        let sent = tokio::time::timeout(ttl, async move {
            match method {
                Method::AppendEntries => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::InstallSnapshot => client.install_snapshot(request).await,
            }
        })
        .await;
        let msg = match sent {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&SendError::Timeout {
                    target: self.target,
                    addr: self.node.raft_addr.clone(),
                    ttl,
                })))
            }
            Ok(Err(status)) => return Err(self.status_error(status)),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let result: Result<Resp, RaftError<u64, E>> = crate::codec::from_bytes(&msg.payload)
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&SendError::Codec {
                    target: self.target,
                    reason: e.to_string(),
                }))
            })?;
        match result {
            Ok(resp) => {
                self.peers.answered(self.target);
                Ok(resp)
            }
            // The peer's Raft has stopped (shut down, or halted by a storage error): for this
            // server that is as good as unreachable, and backing off is the right reaction.
            Err(RaftError::Fatal(fatal)) => Err(RPCError::Unreachable(Unreachable::new(
                &SendError::Stopped {
                    target: self.target,
                    addr: self.node.raft_addr.clone(),
                    fatal,
                },
            ))),
            Err(e) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))),
        }
    }

    fn status_error<E: std::error::Error>(
        &self,
        status: Status,
    ) -> RPCError<u64, NodeInfo, RaftError<u64, E>> {
        let addr = self.node.raft_addr.clone();
        match status.code() {
            Code::FailedPrecondition => {
                let err = SendError::Refused {
                    target: self.target,
                    addr,
                    reason: status.message().to_string(),
                };
                if self.peers.refused(self.target, &self.node.incarnation) {
                    tracing::warn!(
                        target_id = self.target,
                        incarnation = %self.node.incarnation,
                        error = %err,
                        "a peer refuses Raft RPCs addressed to it: remove it from the membership \
                         and add it again under its current incarnation"
                    );
                }
                RPCError::Unreachable(Unreachable::new(&err))
            }
            Code::DeadlineExceeded
            | Code::Cancelled
            | Code::InvalidArgument
            | Code::ResourceExhausted => RPCError::Network(NetworkError::new(&SendError::Codec {
                target: self.target,
                reason: format!("{}: {}", status.code(), status.message()),
            })),
            // Connection refused or reset, no such service at that address, broken HTTP/2.
            _ => RPCError::Unreachable(Unreachable::new(&self.transport(format!(
                "{}: {}",
                status.code(),
                status.message()
            )))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(Method::AppendEntries, &rpc, Vec::new(), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let chunk = std::mem::take(&mut rpc.data);
        self.call(Method::InstallSnapshot, &rpc, chunk, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(Method::Vote, &rpc, Vec::new(), &option).await
    }

    fn backoff(&self) -> Backoff {
        let delay = if self.peers.is_refused(self.target, &self.node.incarnation) {
            REFUSED_BACKOFF
        } else {
            UNREACHABLE_BACKOFF
        };
        Backoff::new(std::iter::repeat(delay))
    }
}

/// When this server last heard from a leader that it accepted as such; its own health on a
/// follower or learner is judged by it.
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    at: Mutex<Option<Instant>>,
}

impl LeaderContact {
    /// How long ago a leader last reached this server, if ever.
    pub(crate) fn age(&self) -> Option<Duration> {
        lock(&self.at).map(|t| t.elapsed())
    }

    fn touch(&self) {
        *lock(&self.at) = Some(Instant::now());
    }
}

/// The server side of `shoal.raft.v1.Raft`: checks that each request is addressed to this
/// server's node id and incarnation, then hands it to the local Raft. Obtained from
/// [`crate::RaftNode::grpc_service`].
#[derive(Clone)]
pub struct RaftGrpc {
    raft: openraft::Raft<TypeConfig>,
    node_id: u64,
    incarnation: Arc<str>,
    /// Accept requests that name no incarnation (stores older than incarnations).
    accept_unnamed: bool,
    contact: Arc<LeaderContact>,
    cluster: Arc<crate::cluster_id::ClusterId>,
}

impl std::fmt::Debug for RaftGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGrpc")
            .field("node_id", &self.node_id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl RaftGrpc {
    pub(crate) fn new(
        raft: openraft::Raft<TypeConfig>,
        node_id: u64,
        incarnation: &str,
        accept_unnamed: bool,
        contact: Arc<LeaderContact>,
        cluster: Arc<crate::cluster_id::ClusterId>,
    ) -> RaftGrpc {
        RaftGrpc {
            raft,
            node_id,
            incarnation: incarnation.into(),
            accept_unnamed,
            contact,
            cluster,
        }
    }

    /// Decodes a request after checking it is meant for this server.
    fn accept<T: DeserializeOwned>(&self, msg: &RaftMessage) -> Result<T, Status> {
        if msg.target_node_id != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is Raft node {}, not node {}",
                self.node_id, msg.target_node_id
            )));
        }
        let unnamed_ok = self.accept_unnamed && msg.target_incarnation.is_empty();
        if msg.target_incarnation != *self.incarnation && !unnamed_ok {
            tracing::debug!(
                expected = %msg.target_incarnation,
                "refused a Raft RPC for another incarnation of this node"
            );
            // Not naming the current incarnation: the answer goes to whoever asked.
            return Err(Status::failed_precondition(format!(
                "Raft node {} is another incarnation than the one addressed: its data was \
                 reset, so it must be removed from the cluster and added again before it takes \
                 part",
                self.node_id
            )));
        }
        match self.cluster.admit(&msg.cluster_id) {
            Ok(crate::cluster_id::Admission::Same) => {}
            Ok(crate::cluster_id::Admission::Adopted) => {
                tracing::info!(cluster_id = %msg.cluster_id, "this server joined a cluster");
            }
            Ok(crate::cluster_id::Admission::Foreign { ours }) => {
                tracing::error!(
                    ours = %ours,
                    theirs = %shoal_model::logsafe::LogSafe(&msg.cluster_id),
                    "refused a Raft RPC from a server of another cluster (two clusters share a \
                     gossip pool: separate them)"
                );
                return Err(Status::failed_precondition(format!(
                    "Raft node {} belongs to another cluster",
                    self.node_id
                )));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot save the cluster id");
                return Err(Status::unavailable("cannot save the cluster id"));
            }
        }
        crate::codec::from_bytes(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("malformed Raft request: {e}")))
    }

    fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = crate::codec::to_bytes(result)
            .map_err(|e| Status::internal(format!("cannot encode the Raft response: {e}")))?;
        Ok(Response::new(RaftMessage {
            payload,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl crate::proto::raft_server::Raft for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.accept(request.get_ref())?;
        let result = self.raft.append_entries(req).await;
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.contact.touch();
        }
        Self::reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<u64> = self.accept(request.get_ref())?;
        Self::reply(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        let mut req: InstallSnapshotRequest<TypeConfig> = self.accept(&msg)?;
        req.data = msg.chunk;
        Self::reply(&self.raft.install_snapshot(req).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str) -> NodeInfo {
        NodeInfo {
            raft_addr: addr.into(),
            api_addr: "127.0.0.1:7070".into(),
            incarnation: "inc".into(),
        }
    }

    async fn vote_to(addr: &str) -> RPCError<u64, NodeInfo, RaftError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Arc::new(crate::cluster_id::ClusterId::open(dir.path()).unwrap());
        let mut net = Network::new(Arc::new(Peers::new(None, cluster)));
        let mut conn = net.new_client(2, &node(addr)).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        conn.vote(vote, RPCOption::new(Duration::from_secs(5)))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_closed_port_or_a_bad_address_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = vote_to(&addr).await;
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");

        let err = vote_to("not a uri").await;
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("invalid Raft address"), "{err}");
    }
}
