//! Shared by the ADS tests: a snapshot source the test drives, an in-process server on
//! 127.0.0.1:0, and thin state-of-the-world and delta clients with bounded waits.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, GenericSecret, Secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use shoal_xds::{AdsServer, ProxyId, ProxyOptions, ResourceType, Snapshot, SnapshotSource};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// The proxy the tests connect as, unless they say otherwise.
pub const NODE: &str = "mesh/m/virtualNode/a";

/// A snapshot source the test drives: one watch per proxy, created on first use.
#[derive(Default)]
pub struct TestSource {
    senders: Mutex<HashMap<ProxyId, watch::Sender<Arc<Snapshot>>>>,
    /// Every subscription, with the options the node carried.
    pub subscriptions: Mutex<Vec<(ProxyId, ProxyOptions)>>,
}

impl TestSource {
    fn sender(&self, proxy: &ProxyId) -> watch::Sender<Arc<Snapshot>> {
        self.senders
            .lock()
            .unwrap()
            .entry(proxy.clone())
            .or_insert_with(|| watch::Sender::new(Arc::new(Snapshot::default())))
            .clone()
    }

    /// Replaces `node`'s snapshot (a new `Arc` even if equal in content).
    pub fn set(&self, node: &str, snap: Snapshot) {
        self.sender(&ProxyId::parse(node).unwrap())
            .send_replace(Arc::new(snap));
    }

    /// Whether a stream of `node` still holds its watch.
    pub fn watched(&self, node: &str) -> bool {
        self.sender(&ProxyId::parse(node).unwrap()).receiver_count() > 0
    }
}

impl SnapshotSource for TestSource {
    fn subscribe(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
        _node: &Node,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, Status> {
        if proxy.name == "refused" {
            return Err(Status::not_found("no such virtual node"));
        }
        self.subscriptions
            .lock()
            .unwrap()
            .push((proxy.clone(), opts.clone()));
        Ok(self.sender(proxy).subscribe())
    }
}

/// An in-process ADS server.
pub struct Harness {
    pub ads: AdsServer,
    pub source: Arc<TestSource>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), shoal_xds::server::AdsError>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A server on `addr` (e.g. the address of one that was stopped).
    pub async fn start_on(addr: SocketAddr) -> Harness {
        let source = Arc::new(TestSource::default());
        let ads = AdsServer::new(source.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ads.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Harness {
            ads,
            source,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
    }

    /// Stops the server the way the agent does and waits (bounded) until it has stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("the server stops within the bound")
            .unwrap()
            .unwrap();
    }

    /// Waits (bounded) until `f` holds of the server's counters.
    pub async fn until(&self, what: &str, f: impl Fn(&shoal_xds::server::AdsStats) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stats = self.ads.stats();
            if f(&stats) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "test".into(),
        ..Default::default()
    }
}

/// A snapshot from `(type, name, variant)`: the variant changes the content (and so the
/// version) without changing the name.
pub fn snap(items: &[(ResourceType, &str, u32)]) -> Snapshot {
    let mut s = Snapshot::default();
    for &(ty, name, v) in items {
        match ty {
            ResourceType::Cluster => s.add(
                ty,
                name,
                &Cluster {
                    name: name.into(),
                    alt_stat_name: format!("v{v}"),
                    ..Default::default()
                },
            ),
            ResourceType::Endpoint => s.add(
                ty,
                name,
                &ClusterLoadAssignment {
                    cluster_name: name.into(),
                    endpoints: vec![LocalityLbEndpoints {
                        priority: v,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            ResourceType::Listener => s.add(
                ty,
                name,
                &Listener {
                    name: name.into(),
                    stat_prefix: format!("v{v}"),
                    ..Default::default()
                },
            ),
            ResourceType::Route => s.add(
                ty,
                name,
                &RouteConfiguration {
                    name: name.into(),
                    virtual_hosts: vec![VirtualHost {
                        name: format!("v{v}"),
                        domains: vec!["*".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            ResourceType::Secret => s.add(
                ty,
                name,
                &Secret {
                    name: name.into(),
                    r#type: Some(secret::Type::GenericSecret(GenericSecret {
                        secret: Some(DataSource {
                            specifier: Some(data_source::Specifier::InlineString(format!("v{v}"))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                },
            ),
        }
    }
    s
}

/// The standard small mesh: one of each type, all at variant `v`, with two clusters.
pub fn mesh(v: u32) -> Snapshot {
    use ResourceType::*;
    snap(&[
        (Secret, "cert", v),
        (Cluster, "c1", v),
        (Cluster, "c2", v),
        (Endpoint, "c1", v),
        (Endpoint, "c2", v),
        (Listener, "egress", v),
        (Route, "egress", v),
    ])
}

/// The name and the variant of a packed resource.
pub fn describe(any: &Any) -> (String, String) {
    let ty = ResourceType::from_type_url(&any.type_url).expect("a type shoal serves");
    let b = any.value.as_slice();
    match ty {
        ResourceType::Cluster => {
            let c = Cluster::decode(b).unwrap();
            (c.name, c.alt_stat_name)
        }
        ResourceType::Endpoint => {
            let c = ClusterLoadAssignment::decode(b).unwrap();
            (c.cluster_name, format!("v{}", c.endpoints[0].priority))
        }
        ResourceType::Listener => {
            let l = Listener::decode(b).unwrap();
            (l.name, l.stat_prefix)
        }
        ResourceType::Route => {
            let r = RouteConfiguration::decode(b).unwrap();
            (r.name, r.virtual_hosts[0].name.clone())
        }
        ResourceType::Secret => {
            let s = Secret::decode(b).unwrap();
            let Some(secret::Type::GenericSecret(g)) = s.r#type else {
                panic!("not a generic secret")
            };
            let Some(data_source::Specifier::InlineString(v)) = g.secret.unwrap().specifier else {
                panic!("not inline")
            };
            (s.name, v)
        }
    }
}

/// `name=variant` of every resource of a state-of-the-world response, sorted.
pub fn contents(resp: &DiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = resp
        .resources
        .iter()
        .map(|a| {
            let (n, v) = describe(a);
            format!("{n}={v}")
        })
        .collect();
    v.sort();
    v
}

pub fn type_of(url: &str) -> ResourceType {
    ResourceType::from_type_url(url).expect("a type shoal serves")
}

/// A state-of-the-world client stream.
pub struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    /// Opens a stream whose first request is `first` (which should carry the node).
    pub async fn open(h: &Harness, first: DiscoveryRequest) -> Result<Sotw, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).unwrap();
        let resp = tokio::time::timeout(
            WAIT,
            h.client()
                .await
                .stream_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .expect("the server answers the stream within the bound")?;
        Ok(Sotw {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).unwrap();
    }

    /// An initial or follow-up request for `ty`.
    pub fn request(&self, ty: ResourceType, names: &[&str], version: &str, nonce: &str) {
        self.send(req(ty, names, version, nonce));
    }

    /// ACKs `resp`, keeping the subscription `names`.
    pub fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(req(
            type_of(&resp.type_url),
            names,
            &resp.version_info,
            &resp.nonce,
        ));
    }

    /// NACKs `resp` (Envoy then reports the previous accepted version, here `previous`).
    pub fn nack(&self, resp: &DiscoveryResponse, names: &[&str], previous: &str, why: &str) {
        let mut r = req(type_of(&resp.type_url), names, previous, &resp.nonce);
        r.error_detail = Some(RpcStatus {
            code: 3,
            message: why.into(),
            details: vec![],
        });
        self.send(r);
    }

    /// The next response; fails the test if none comes within the bound.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response within the bound")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The next `n` responses.
    pub async fn recv_n(&mut self, n: usize) -> Vec<DiscoveryResponse> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.recv().await);
        }
        v
    }

    /// Fails the test if a response arrives within [`QUIET`].
    pub async fn silence(&mut self) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected nothing, got {m:?}");
        }
    }

    /// How the stream ended (bounded).
    pub async fn end(&mut self) -> Option<Status> {
        loop {
            match tokio::time::timeout(WAIT, self.rx.message())
                .await
                .expect("the stream ends within the bound")
            {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    }
}

pub fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: Some(node(NODE)),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: ty.type_url(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A delta client stream.
pub struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub async fn open(h: &Harness, first: DeltaDiscoveryRequest) -> Result<Delta, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).unwrap();
        let resp = tokio::time::timeout(
            WAIT,
            h.client()
                .await
                .delta_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .expect("the server answers the stream within the bound")?;
        Ok(Delta {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).unwrap();
    }

    /// Subscribes to and unsubscribes from names of `ty`.
    pub fn subscribe(&self, ty: ResourceType, sub: &[&str], unsub: &[&str]) {
        self.send(dreq(ty, sub, unsub, ""));
    }

    pub fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(dreq(type_of(&resp.type_url), &[], &[], &resp.nonce));
    }

    pub fn nack(&self, resp: &DeltaDiscoveryResponse, why: &str) {
        let mut r = dreq(type_of(&resp.type_url), &[], &[], &resp.nonce);
        r.error_detail = Some(RpcStatus {
            code: 3,
            message: why.into(),
            details: vec![],
        });
        self.send(r);
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response within the bound")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    pub async fn silence(&mut self) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected nothing, got {m:?}");
        }
    }
}

pub fn dreq(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(NODE)),
        type_url: ty.type_url(),
        resource_names_subscribe: sub.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// `name=variant` of the resources of a delta response, sorted, then `-name` for each removal.
pub fn delta_contents(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = resp
        .resources
        .iter()
        .map(|r| {
            let (n, var) = describe(r.resource.as_ref().unwrap());
            assert_eq!(n, r.name);
            format!("{n}={var}")
        })
        .collect();
    v.sort();
    let mut removed: Vec<String> = resp
        .removed_resources
        .iter()
        .map(|n| format!("-{n}"))
        .collect();
    removed.sort();
    v.extend(removed);
    v
}
