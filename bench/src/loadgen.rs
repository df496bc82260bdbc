//! A load generator for ADS servers: many simulated Envoys, each with its own connection and
//! node id, that subscribe the way Envoy does, ACK every response, and record when each
//! response arrived.
//!
//! It exists for the fan-out benchmarks (`bench/benches/fanout.rs`: how long until every proxy
//! has a change, and what each stream costs the server; `shoal-bench xds`, the same through a
//! running agent): it works against any ADS server.
//!
//! Each simulated proxy subscribes to clusters and listeners (wildcard), then to the endpoints
//! of the EDS clusters and the route configurations the listeners' HTTP connection managers
//! name, as Envoy does. It ACKs a response as soon as it arrives; the recorded arrival time is
//! therefore also, within microseconds, the time its ACK was sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use prost::{Message, Name};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;
use tonic::Streaming;

pub use shoal_xds::server::Protocol;
use shoal_xds::server::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use shoal_xds::ResourceType;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The ADS server, e.g. `http://127.0.0.1:18000`.
    pub endpoint: String,
    /// One simulated proxy per node id (`mesh/<mesh>/virtualNode/<name>`).
    pub node_ids: Vec<String>,
    /// State of the world or delta.
    pub protocol: Protocol,
    /// How many streams are opened at once (opening thousands at once only measures the
    /// accept queue).
    pub connect_parallelism: usize,
}

impl LoadConfig {
    /// `node_ids` against `endpoint`, 32 connections opened at a time.
    pub fn new(endpoint: impl Into<String>, node_ids: Vec<String>, protocol: Protocol) -> Self {
        LoadConfig {
            endpoint: endpoint.into(),
            node_ids,
            protocol,
            connect_parallelism: 32,
        }
    }
}

/// Why the load could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The endpoint is not a usable URI.
    #[error("bad xDS endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// A connection could not be made.
    #[error("{node}: cannot connect: {source}")]
    Connect {
        /// The simulated proxy.
        node: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server refused a stream.
    #[error("{node}: stream refused: {status}")]
    Refused {
        /// The simulated proxy.
        node: String,
        /// The server's status.
        status: tonic::Status,
    },
}

/// One response as a simulated proxy saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it was read off the stream (its ACK was sent right after).
    pub at: Instant,
    /// Its type.
    pub ty: ResourceType,
    /// `version_info` (state of the world) or `system_version_info` (delta).
    pub version: String,
    /// How many resources it carried.
    pub resources: usize,
    /// How many removals it carried (delta).
    pub removed: usize,
}

/// Which response a [`LoadGen::wait`] looks for in each stream.
#[derive(Debug, Clone)]
pub enum Marker {
    /// The first response of a type.
    Any(ResourceType),
    /// The first response of a type with this version.
    Version(ResourceType, String),
    /// The first response of a type that arrived at or after an instant (e.g. the moment a
    /// change was made).
    After(ResourceType, Instant),
}

impl Marker {
    fn matches(&self, a: &Arrival) -> bool {
        match self {
            Marker::Any(ty) => a.ty == *ty,
            Marker::Version(ty, v) => a.ty == *ty && a.version == *v,
            Marker::After(ty, t) => a.ty == *ty && a.at >= *t,
        }
    }
}

/// Per stream, when the marked response arrived (`None`: not within the wait).
#[derive(Debug, Clone)]
pub struct Arrivals {
    /// Indexed like [`LoadConfig::node_ids`].
    pub at: Vec<Option<Instant>>,
}

impl Arrivals {
    /// Streams whose marked response did not arrive.
    pub fn missing(&self) -> usize {
        self.at.iter().filter(|a| a.is_none()).count()
    }

    /// Percentiles of the arrival times, measured from `t0`.
    pub fn summary(&self, t0: Instant) -> Summary {
        let mut d: Vec<Duration> = self
            .at
            .iter()
            .flatten()
            .map(|a| a.saturating_duration_since(t0))
            .collect();
        d.sort_unstable();
        let pct = |p: f64| -> Duration {
            if d.is_empty() {
                return Duration::ZERO;
            }
            let i = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
            d[i]
        };
        Summary {
            streams: self.at.len(),
            missing: self.missing(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: d.last().copied().unwrap_or_default(),
        }
    }
}

/// Percentiles over streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Streams considered.
    pub streams: usize,
    /// Streams without the marked response.
    pub missing: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The last stream.
    pub max: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} streams",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.streams
        )?;
        if self.missing > 0 {
            write!(f, " ({} missing)", self.missing)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Record {
    arrivals: Mutex<Vec<Arrival>>,
    error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Running simulated proxies. Dropping it closes every stream.
#[derive(Debug)]
pub struct LoadGen {
    nodes: Vec<String>,
    records: Vec<Arc<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl LoadGen {
    /// Opens every stream (each on its own connection) and starts following it. Fails on the
    /// first stream that cannot be opened.
    pub async fn start(cfg: LoadConfig) -> Result<LoadGen, LoadError> {
        let endpoint =
            Endpoint::from_shared(cfg.endpoint.clone()).map_err(|source| LoadError::Endpoint {
                endpoint: cfg.endpoint.clone(),
                source,
            })?;
        let endpoint = endpoint.tcp_nodelay(true);
        let protocol = cfg.protocol;
        let opened: Vec<Result<Opened, LoadError>> =
            futures::stream::iter(cfg.node_ids.iter().cloned())
                .map(|node| {
                    let endpoint = endpoint.clone();
                    async move { open(endpoint, node, protocol).await }
                })
                .buffered(cfg.connect_parallelism.max(1))
                .collect()
                .await;
        let mut records = Vec::with_capacity(opened.len());
        let mut tasks = Vec::with_capacity(opened.len());
        let mut first_error = None;
        for o in opened {
            match o {
                Ok((r, t)) => {
                    records.push(r);
                    tasks.push(t);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let gen = LoadGen {
            nodes: cfg.node_ids,
            records,
            tasks,
        };
        match first_error {
            Some(e) => Err(e), // dropping `gen` closes the streams that did open
            None => Ok(gen),
        }
    }

    /// How many simulated proxies run.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none run.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every response stream `i` has received.
    pub fn arrivals(&self, i: usize) -> Vec<Arrival> {
        lock(&self.records[i].arrivals).clone()
    }

    /// The streams that ended, with why.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.records
            .iter()
            .zip(&self.nodes)
            .filter_map(|(r, n)| lock(&r.error).clone().map(|e| (n.clone(), e)))
            .collect()
    }

    /// Waits until every stream has received a response matching `marker`, or `timeout`
    /// passed, or every stream still waiting has ended; reports when each arrived.
    pub async fn wait(&self, marker: &Marker, timeout: Duration) -> Arrivals {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending_alive = 0;
            let at: Vec<Option<Instant>> = self
                .records
                .iter()
                .map(|r| {
                    let found = lock(&r.arrivals)
                        .iter()
                        .find(|a| marker.matches(a))
                        .map(|a| a.at);
                    if found.is_none() && lock(&r.error).is_none() {
                        pending_alive += 1;
                    }
                    found
                })
                .collect();
            if pending_alive == 0 || Instant::now() >= deadline {
                return Arrivals { at };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "shoal-loadgen".into(),
        user_agent_name: "shoal-loadgen".into(),
        ..Default::default()
    }
}

/// A stream's record and the task that follows it.
type Opened = (Arc<Record>, tokio::task::JoinHandle<()>);

async fn open(
    endpoint: Endpoint,
    node_id: String,
    protocol: Protocol,
) -> Result<Opened, LoadError> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| LoadError::Connect {
            node: node_id.clone(),
            source,
        })?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let record = Arc::new(Record {
        arrivals: Mutex::default(),
        error: Mutex::default(),
    });
    let refused = |status| LoadError::Refused {
        node: node_id.clone(),
        status,
    };
    let task = match protocol {
        Protocol::StateOfTheWorld => {
            let (tx, rx) = mpsc::unbounded_channel();
            let sotw = Sotw {
                tx,
                types: HashMap::new(),
            };
            sotw.request(ResourceType::Cluster, Some(&node_id));
            sotw.request(ResourceType::Listener, None);
            let responses = client
                .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
                .await
                .map_err(refused)?
                .into_inner();
            tokio::spawn(sotw.run(responses, record.clone()))
        }
        Protocol::Delta => {
            let (tx, rx) = mpsc::unbounded_channel();
            let delta = Delta {
                tx,
                known: HashMap::new(),
                subscribed: HashMap::new(),
            };
            delta.subscribe(ResourceType::Cluster, vec![], vec![], Some(&node_id));
            delta.subscribe(ResourceType::Listener, vec![], vec![], None);
            let responses = client
                .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
                .await
                .map_err(refused)?
                .into_inner();
            tokio::spawn(delta.run(responses, record.clone()))
        }
    };
    Ok((record, task))
}

/// The names a resource makes Envoy subscribe to: a cluster's EDS name, a listener's RDS names.
fn dependencies(any: &Any) -> (Option<ResourceType>, Vec<String>) {
    if any.type_url == Cluster::type_url() {
        let Ok(c) = Cluster::decode(any.value.as_slice()) else {
            return (None, vec![]);
        };
        let eds = c.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(
                envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32,
            ));
        if !eds {
            return (Some(ResourceType::Endpoint), vec![]);
        }
        let service = c
            .eds_cluster_config
            .map(|e| e.service_name)
            .filter(|s| !s.is_empty())
            .unwrap_or(c.name);
        return (Some(ResourceType::Endpoint), vec![service]);
    }
    if any.type_url == Listener::type_url() {
        let Ok(l) = Listener::decode(any.value.as_slice()) else {
            return (None, vec![]);
        };
        let mut names = Vec::new();
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in &fc.filters {
                let Some(ConfigType::TypedConfig(tc)) = &f.config_type else {
                    continue;
                };
                if tc.type_url != HttpConnectionManager::type_url() {
                    continue;
                }
                if let Ok(hcm) = HttpConnectionManager::decode(tc.value.as_slice()) {
                    if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                        names.push(rds.route_config_name);
                    }
                }
            }
        }
        return (Some(ResourceType::Route), names);
    }
    (None, vec![])
}

fn record_arrival(
    record: &Record,
    ty: ResourceType,
    version: &str,
    resources: usize,
    removed: usize,
) {
    lock(&record.arrivals).push(Arrival {
        at: Instant::now(),
        ty,
        version: version.to_string(),
        resources,
        removed,
    });
}

#[derive(Debug, Default)]
struct SotwType {
    names: Vec<String>,
    version: String,
    nonce: String,
}

struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    types: HashMap<ResourceType, SotwType>,
}

/// The stream's next response; `None` (with the reason kept in `record`) when it ended.
async fn next_response<T>(responses: &mut Streaming<T>, record: &Record) -> Option<T> {
    match responses.message().await {
        Ok(Some(r)) => Some(r),
        Ok(None) => {
            *lock(&record.error) = Some("the server ended the stream".into());
            None
        }
        Err(status) => {
            *lock(&record.error) = Some(status.to_string());
            None
        }
    }
}

impl Sotw {
    fn request(&self, ty: ResourceType, node_id: Option<&str>) {
        let st = self.types.get(&ty);
        let _ = self.tx.send(DiscoveryRequest {
            version_info: st.map(|s| s.version.clone()).unwrap_or_default(),
            node: node_id.map(node),
            resource_names: st.map(|s| s.names.clone()).unwrap_or_default(),
            type_url: ty.type_url(),
            response_nonce: st.map(|s| s.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        });
    }

    async fn run(mut self, mut responses: Streaming<DiscoveryResponse>, record: Arc<Record>) {
        loop {
            let Some(resp) = next_response(&mut responses, &record).await else {
                return;
            };
            let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
                continue;
            };
            record_arrival(&record, ty, &resp.version_info, resp.resources.len(), 0);
            let st = self.types.entry(ty).or_default();
            st.version = resp.version_info;
            st.nonce = resp.nonce;
            self.request(ty, None); // ACK
            let mut dep = None;
            let mut names = BTreeSet::new();
            for any in &resp.resources {
                let (t, n) = dependencies(any);
                dep = dep.or(t);
                names.extend(n);
            }
            if let Some(dep) = dep.or(match ty {
                ResourceType::Cluster => Some(ResourceType::Endpoint),
                ResourceType::Listener => Some(ResourceType::Route),
                _ => None,
            }) {
                let names: Vec<String> = names.into_iter().collect();
                let st = self.types.entry(dep).or_default();
                if st.names != names {
                    st.names = names;
                    self.request(dep, None);
                }
            }
        }
    }
}

struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    /// Per type of container (clusters, listeners), the names each one makes Envoy subscribe to.
    known: HashMap<ResourceType, HashMap<String, Vec<String>>>,
    subscribed: HashMap<ResourceType, BTreeSet<String>>,
}

impl Delta {
    fn subscribe(
        &self,
        ty: ResourceType,
        sub: Vec<String>,
        unsub: Vec<String>,
        node_id: Option<&str>,
    ) {
        let _ = self.tx.send(DeltaDiscoveryRequest {
            node: node_id.map(node),
            type_url: ty.type_url(),
            resource_names_subscribe: sub,
            resource_names_unsubscribe: unsub,
            ..Default::default()
        });
    }

    async fn run(mut self, mut responses: Streaming<DeltaDiscoveryResponse>, record: Arc<Record>) {
        loop {
            let Some(resp) = next_response(&mut responses, &record).await else {
                return;
            };
            let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
                continue;
            };
            record_arrival(
                &record,
                ty,
                &resp.system_version_info,
                resp.resources.len(),
                resp.removed_resources.len(),
            );
            let _ = self.tx.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            });
            let dep = match ty {
                ResourceType::Cluster => ResourceType::Endpoint,
                ResourceType::Listener => ResourceType::Route,
                _ => continue,
            };
            let known = self.known.entry(ty).or_default();
            for r in &resp.resources {
                if let Some(any) = &r.resource {
                    known.insert(r.name.clone(), dependencies(any).1);
                }
            }
            for n in &resp.removed_resources {
                known.remove(n);
            }
            let want: BTreeSet<String> = known.values().flatten().cloned().collect();
            let have = self.subscribed.entry(dep).or_default();
            let sub: Vec<String> = want.difference(have).cloned().collect();
            let unsub: Vec<String> = have.difference(&want).cloned().collect();
            if !sub.is_empty() || !unsub.is_empty() {
                *have = want;
                self.subscribe(dep, sub, unsub, None);
            }
        }
    }
}
