//! The Aggregated Discovery Service: Envoy's one gRPC stream for every resource type, in both the
//! state-of-the-world (`StreamAggregatedResources`) and the incremental
//! (`DeltaAggregatedResources`) variants.
//!
//! The server computes nothing. Whoever embeds it (the agent) implements [`SnapshotSource`]: for
//! each connecting proxy it hands over a [`tokio::sync::watch`] channel of that proxy's
//! [`Snapshot`], and replaces the value whenever the proxy's view changes. Each stream compares
//! what the proxy was sent with the current snapshot, per type, and sends only what differs:
//! a proxy whose resources did not change is sent nothing.
//!
//! # Protocol decisions
//!
//! * **One response in flight per type.** After a response of type T the stream waits for
//!   Envoy's ACK or NACK of it before sending T again (changes in between are coalesced into the
//!   next response). This keeps ACK accounting unambiguous and is natural flow control: a slow
//!   Envoy never queues up versions.
//! * **Order.** Types are considered in [`ResourceType::ALL`] order (secrets, clusters,
//!   endpoints, listeners, routes), and a type is held back until the types it depends on are
//!   in place: clusters wait until secrets are sent, endpoints until clusters are sent,
//!   listeners until secrets, clusters and endpoints are sent *and* secrets and clusters are
//!   acknowledged, and routes for the same plus listeners sent. Envoy delays its CDS ACK until new clusters have warmed
//!   (received their endpoints), so waiting for that ACK means a listener or route is never
//!   applied before the clusters it names exist. Endpoints do not wait for the CDS ACK: warming
//!   clusters need them to finish warming.
//! * **NACK.** A NACK is logged (`warn`, with Envoy's message), counted, recorded per proxy, and
//!   not retried: the rejected version stays "sent", so it is not sent again; the next different
//!   version is. While a cluster or secret version is rejected, listeners and routes are held
//!   back (they could name the rejected clusters), so Envoy stays on its last consistent
//!   configuration; endpoints keep flowing. A rejection is remembered per stream only: an Envoy
//!   that reconnects while the rejected version is still current is sent it once more.
//! * **Missing snapshot.** The server always has a snapshot (the watch holds one); a source
//!   that knows nothing for a proxy yet (its virtual node does not exist) hands over an empty
//!   [`Snapshot`]: Envoy is answered with no resources and runs with no listeners until the
//!   node exists, which is what App Mesh did for an unknown node. Nothing is sent until the
//!   first request of each type, and a resuming Envoy whose versions are current is sent nothing.
//! * **End of stream.** Streams end with `UNAVAILABLE` when [`AdsServer::shutdown`] is called
//!   (also from [`AdsServer::serve`]'s shutdown), or when the source drops the proxy's watch
//!   sender; Envoy reconnects with backoff, and resumes from the versions it has (nothing is
//!   resent when they are current).
//! * **Types shoal does not serve** (VHDS, SRDS, ECDS, …) are logged and ignored: Envoy only
//!   asks for them when configured to, and shoal's configuration never does.
//! * **Identity.** The first request of a stream must carry the node; its id is parsed with
//!   [`ProxyId::parse`] and its metadata with [`parse_node`]; a bad one is refused with
//!   `INVALID_ARGUMENT` and a message that says what to fix.

mod delta;
mod grpc;
mod node;
mod sotw;
mod stats;
mod wire;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Status, Streaming};

pub use self::grpc::AdsService;
pub use self::node::{parse_node, NodeError};
use self::stats::{lock, Stats, StreamGuard};

/// Concurrent gRPC streams one connection may open (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
pub use self::stats::{AdsStats, NackRecord, Protocol, ProxyStatus, TypeCounts};
use crate::proxy::{ProxyId, ProxyOptions};
use crate::snapshot::{ResourceType, Snapshot};

/// The channel through which a [`SnapshotSource`] hands one proxy's configuration to its stream.
pub type SnapshotWatch = watch::Receiver<Arc<Snapshot>>;

/// Largest request the server decodes: Envoy's delta reconnect lists every resource it has.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Largest response a client should accept (the limit of shoal-bench's load generator): a
/// state-of-the-world CDS or EDS response carries every cluster or assignment of the proxy at once.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// What the ADS server needs from its embedder: each proxy's configuration, kept current.
///
/// The agent implements it over its view (model + endpoints) and the translation.
pub trait SnapshotSource: Send + Sync + 'static {
    /// Called once per stream, when Envoy's first request names the proxy. Returns the watch
    /// the agent keeps current for that proxy (replacing the value whenever the proxy's
    /// resources may have changed; an identical snapshot sends nothing). Dropping the receiver,
    /// which the server does when the stream ends, tells the agent the proxy is gone (see
    /// [`watch::Sender::is_closed`] / [`watch::Sender::closed`]). An error refuses the stream
    /// with that status.
    fn subscribe(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
        node: &Node,
    ) -> Result<SnapshotWatch, Status>;
}

/// A shared source: the embedder keeps a handle to update it while the server holds another.
impl<T: SnapshotSource> SnapshotSource for Arc<T> {
    fn subscribe(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
        node: &Node,
    ) -> Result<SnapshotWatch, Status> {
        (**self).subscribe(proxy, opts, node)
    }
}

/// Why [`AdsServer::serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    /// The gRPC transport failed (the listener, or the HTTP/2 server).
    #[error("xDS server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("xDS server: {0}")]
    Io(#[from] std::io::Error),
}

struct Inner {
    source: Box<dyn SnapshotSource>,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    /// With it, a stream gets its proxy's configuration only with that proxy's token
    /// ([`crate::proxy::proxy_token`]).
    token_secret: Option<Vec<u8>>,
}

/// The ADS server: a cheap handle (clone it freely) on the source, the counters and the
/// shutdown switch shared by every stream.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    /// A server that asks `source` for each connecting proxy's configuration.
    pub fn new(source: impl SnapshotSource) -> AdsServer {
        AdsServer {
            inner: Arc::new(Inner {
                source: Box::new(source),
                stats: Arc::default(),
                shutdown: watch::Sender::new(false),
                token_secret: None,
            }),
        }
    }

    /// A server that asks `source` for configurations and serves one only to a stream that
    /// carries the proxy's token under `secret` (in the [`crate::proxy::PROXY_TOKEN_HEADER`]
    /// metadata); any other is refused with `PERMISSION_DENIED`.
    pub fn with_proxy_tokens(source: impl SnapshotSource, secret: Vec<u8>) -> AdsServer {
        AdsServer {
            inner: Arc::new(Inner {
                source: Box::new(source),
                stats: Arc::default(),
                shutdown: watch::Sender::new(false),
                token_secret: Some(secret),
            }),
        }
    }

    /// The gRPC service to add to a tonic server (`Server::builder().add_service(…)`): ADS,
    /// both methods, requests up to [`MAX_REQUEST_BYTES`]. Clone the server first to keep a
    /// handle for [`AdsServer::stats`] and [`AdsServer::shutdown`]. It is not tonic's generated
    /// `AggregatedDiscoveryServiceServer`, only for memory (see [`AdsService`]).
    pub fn into_service(self) -> AdsService {
        AdsService { server: self }
    }

    /// Serves ADS on `listener` until `shutdown` completes, then ends every stream and waits for
    /// the connections to close. HTTP/2 and TCP keepalives are on, so a vanished Envoy's stream
    /// is noticed (and its watch dropped) within about 40 s.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AdsError> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "xDS (ADS) server listening");
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let handle = self.clone();
        tonic::transport::Server::builder()
            // An Envoy opens one ADS stream (a few once SDS comes): more on one connection is
            // a client misbehaving, and each stream costs a subscription.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                handle.shutdown();
            })
            .await?;
        tracing::info!(%addr, "xDS (ADS) server stopped");
        Ok(())
    }

    /// Ends every open stream (and every stream opened from now on) with `UNAVAILABLE`. A
    /// graceful HTTP/2 shutdown waits for streams to finish, and ADS streams never finish on
    /// their own, so this is what lets a server stop.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// The counters: open streams, responses, ACKs and NACKs per type, the last NACK.
    pub fn stats(&self) -> AdsStats {
        self.inner.stats.read()
    }

    /// Streams open now.
    pub fn streams_open(&self) -> u64 {
        self.stats().streams_open
    }

    /// What each connected proxy last accepted and rejected, ordered by proxy id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let map = lock(&self.inner.stats.proxies);
        let mut v: Vec<ProxyStatus> = map.values().map(|s| lock(s).clone()).collect();
        drop(map);
        v.sort_by(|a, b| (&a.proxy, a.since).cmp(&(&b.proxy, b.since)));
        v
    }

    /// Reads the first request of a stream, which names the node; gives up when the server
    /// shuts down first.
    async fn first<T: prost::Message + Default + 'static>(
        &self,
        requests: &mut Streaming<T>,
    ) -> Result<T, Status> {
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Err(shutting_down()),
            msg = requests.message() => match msg? {
                Some(m) => Ok(m),
                None => Err(Status::cancelled("the stream ended before its first request")),
            },
        }
    }

    /// Identifies the proxy and subscribes to its snapshots, or refuses the stream.
    fn open(
        &self,
        node: Option<&Node>,
        protocol: Protocol,
        token: Option<&str>,
    ) -> Result<(StreamGuard, SnapshotWatch), Status> {
        let refused = |status: Status| {
            self.inner
                .stats
                .streams_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = node.map(|n| n.id.as_str()).unwrap_or("");
            tracing::warn!(node = %shoal_model::logsafe::LogSafe(id), error = %shoal_model::logsafe::LogSafe(status.message()), "xDS stream refused");
            status
        };
        let (proxy, opts) =
            parse_node(node).map_err(|e| refused(Status::invalid_argument(e.to_string())))?;
        if let Some(secret) = &self.inner.token_secret {
            let valid = token.is_some_and(|t| crate::proxy::proxy_token_valid(secret, &proxy, t));
            if !valid {
                return Err(refused(Status::permission_denied(format!(
                    "no valid proxy token for {proxy}: bootstrap this Envoy with `shoal envoy \
                     bootstrap --proxy-token-key <the agent's data dir>/proxy-token.key`"
                ))));
            }
        }
        let node = node.expect("parse_node refuses a missing node");
        let watch = self
            .inner
            .source
            .subscribe(&proxy, &opts, node)
            .map_err(refused)?;
        tracing::info!(proxy = %proxy, ?protocol, "xDS stream opened");
        Ok((self.inner.stats.open(proxy, protocol), watch))
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the xDS server is shutting down")
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AdsServer {
    /// Opens one ADS stream: reads the first request, identifies and subscribes the proxy (or
    /// refuses it), and returns the stream of responses.
    async fn stream<S: Session>(
        &self,
        mut requests: Streaming<S::Req>,
        token: Option<String>,
    ) -> Result<BoxStream<S::Resp>, Status> {
        let first = self.first(&mut requests).await?;
        let (guard, watch) = self.open(S::node(&first), S::PROTOCOL, token.as_deref())?;
        let driver = Driver::new(
            S::new(guard),
            requests,
            watch,
            self.inner.shutdown.subscribe(),
            first,
        );
        Ok(driver.into_stream())
    }
}

/// How one protocol variant keeps the state of one stream. The [`Driver`] feeds it requests and
/// snapshot changes and asks it, after each, what to send.
pub(crate) trait Session: Send + Sized + 'static {
    /// A request of the protocol.
    type Req: prost::Message + Default + Send + 'static;
    /// A response of the protocol.
    type Resp: prost::Message + Send + 'static;
    /// Which protocol this is.
    const PROTOCOL: Protocol;
    /// A session for the stream `guard` counts.
    fn new(guard: StreamGuard) -> Self;
    /// The node of a request (the first one names the proxy).
    fn node(req: &Self::Req) -> Option<&Node>;
    /// Records a request (subscription change, ACK, NACK, or resumption).
    fn on_request(&mut self, req: Self::Req);
    /// The snapshot was replaced: forget whatever was cached about the old one.
    fn on_snapshot(&mut self);
    /// Appends to `out` the responses that are due now, in push order.
    fn push(&mut self, snap: &Snapshot, out: &mut VecDeque<Self::Resp>);
}

/// Runs one stream: waits for requests, snapshot changes and shutdown, and yields the responses
/// its session decides on. It is polled as the response stream itself (no task, no channel), so
/// an idle stream costs only its state, and a client that stops reading stops being read.
struct Driver<S: Session> {
    session: S,
    requests: Streaming<S::Req>,
    snapshots: SnapshotWatch,
    current: Arc<Snapshot>,
    shutdown: watch::Receiver<bool>,
    out: VecDeque<S::Resp>,
    finished: bool,
}

impl<S: Session> Driver<S> {
    fn new(
        mut session: S,
        requests: Streaming<S::Req>,
        mut snapshots: SnapshotWatch,
        shutdown: watch::Receiver<bool>,
        first: S::Req,
    ) -> Self {
        let current = snapshots.borrow_and_update().clone();
        session.on_request(first);
        let mut out = VecDeque::new();
        session.push(&current, &mut out);
        Driver {
            session,
            requests,
            snapshots,
            current,
            shutdown,
            out,
            finished: false,
        }
    }

    fn into_stream(self) -> BoxStream<S::Resp> {
        Box::pin(futures::stream::unfold(self, |mut d| async move {
            d.next().await.map(|item| (item, d))
        }))
    }

    async fn next(&mut self) -> Option<Result<S::Resp, Status>> {
        loop {
            if let Some(r) = self.out.pop_front() {
                return Some(Ok(r));
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|s| *s) => {
                    self.finished = true;
                    return Some(Err(shutting_down()));
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                        tracing::info!("the snapshot source dropped this proxy; closing its stream");
                        return Some(Err(Status::unavailable(
                            "this proxy's configuration source went away; reconnect",
                        )));
                    }
                    let snap = self.snapshots.borrow_and_update().clone();
                    if Arc::ptr_eq(&snap, &self.current) {
                        continue;
                    }
                    self.current = snap;
                    self.session.on_snapshot();
                }
                msg = self.requests.next() => match msg {
                    Some(Ok(req)) => self.session.on_request(req),
                    Some(Err(status)) => {
                        tracing::debug!(error = %status, "xDS request stream failed");
                        self.finished = true;
                        return None;
                    }
                    None => {
                        tracing::debug!("xDS request stream ended");
                        self.finished = true;
                        return None;
                    }
                },
            }
            self.session.push(&self.current, &mut self.out);
        }
    }
}

/// How a session sees one type, for [`may_send`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TypeView {
    /// Envoy has asked for the type on this stream.
    pub requested: bool,
    /// Nothing is due: the proxy was sent what the current snapshot holds for its subscription.
    pub up_to_date: bool,
    /// A response of the type awaits its ACK or NACK.
    pub in_flight: bool,
    /// The last response of the type was NACKed.
    pub nacked: bool,
}

/// Whether a response of `ty` may be sent now, given how every type stands (indexed as
/// [`ResourceType::ALL`]). See the module docs for why these rules.
pub(crate) fn may_send(ty: ResourceType, views: &[TypeView; 5]) -> bool {
    let v = |t: ResourceType| views[stats::idx(t)];
    // Sent: nothing of the type is waiting to go out (or Envoy does not use the type).
    let sent = |t: ResourceType| !v(t).requested || v(t).up_to_date;
    // Settled: sent, acknowledged, and what Envoy holds is what it was sent.
    let settled =
        |t: ResourceType| !v(t).requested || (v(t).up_to_date && !v(t).in_flight && !v(t).nacked);
    match ty {
        ResourceType::Secret => true,
        ResourceType::Cluster => sent(ResourceType::Secret),
        ResourceType::Endpoint => sent(ResourceType::Secret) && sent(ResourceType::Cluster),
        ResourceType::Listener => {
            settled(ResourceType::Secret)
                && settled(ResourceType::Cluster)
                && sent(ResourceType::Endpoint)
        }
        ResourceType::Route => {
            settled(ResourceType::Secret)
                && settled(ResourceType::Cluster)
                && sent(ResourceType::Endpoint)
                && sent(ResourceType::Listener)
        }
    }
}

/// Per-stream nonces: a counter is enough, since a nonce only has to differ from the previous
/// ones on the same stream.
#[derive(Debug, Default)]
pub(crate) struct Nonces(u64);

impl Nonces {
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(f: impl Fn(ResourceType) -> TypeView) -> [TypeView; 5] {
        ResourceType::ALL.map(f)
    }

    #[test]
    fn listeners_wait_for_acknowledged_clusters_endpoints_do_not() {
        let done = TypeView {
            requested: true,
            up_to_date: true,
            ..Default::default()
        };
        let cds_in_flight = views(|t| match t {
            ResourceType::Cluster => TypeView {
                in_flight: true,
                ..done
            },
            _ => done,
        });
        assert!(may_send(ResourceType::Endpoint, &cds_in_flight));
        assert!(!may_send(ResourceType::Listener, &cds_in_flight));
        assert!(!may_send(ResourceType::Route, &cds_in_flight));

        let cds_nacked = views(|t| match t {
            ResourceType::Cluster => TypeView {
                nacked: true,
                ..done
            },
            _ => done,
        });
        assert!(may_send(ResourceType::Endpoint, &cds_nacked));
        assert!(!may_send(ResourceType::Route, &cds_nacked));

        let eds_nacked_in_flight = views(|t| match t {
            ResourceType::Endpoint => TypeView {
                nacked: true,
                in_flight: true,
                ..done
            },
            _ => done,
        });
        assert!(may_send(ResourceType::Route, &eds_nacked_in_flight));

        let cds_due = views(|t| match t {
            ResourceType::Cluster => TypeView {
                up_to_date: false,
                ..done
            },
            _ => done,
        });
        assert!(!may_send(ResourceType::Endpoint, &cds_due));
        assert!(!may_send(ResourceType::Listener, &cds_due));

        let lds_due = views(|t| match t {
            ResourceType::Listener => TypeView {
                up_to_date: false,
                ..done
            },
            _ => done,
        });
        assert!(!may_send(ResourceType::Route, &lds_due));

        let nothing_requested = views(|_| TypeView::default());
        for t in ResourceType::ALL {
            assert!(may_send(t, &nothing_requested));
        }
    }
}
