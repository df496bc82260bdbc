//! The load generator against an in-process ADS server (127.0.0.1:0) whose snapshots the test
//! sets by hand: it must subscribe the way Envoy does (clusters and listeners, then the
//! endpoints and routes they name), ACK everything, and time a change per stream, in both
//! protocol variants; otherwise the fan-out benchmarks measure something Envoy never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ConfigSource, Node,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds,
};
use shoal_bench::loadgen::{LoadConfig, LoadGen, Marker, Protocol};
use shoal_xds::server::AdsStats;
use shoal_xds::ResourceType::{self, *};
use shoal_xds::{AdsServer, ProxyId, ProxyOptions, Snapshot, SnapshotSource};
use tokio::sync::{oneshot, watch};

/// How long the test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

/// A snapshot source the test drives: one watch per proxy, created on first use.
#[derive(Default)]
struct TestSource {
    senders: Mutex<HashMap<ProxyId, watch::Sender<Arc<Snapshot>>>>,
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

    /// Replaces `node`'s snapshot.
    fn set(&self, node: &str, snap: Snapshot) {
        self.sender(&ProxyId::parse(node).unwrap())
            .send_replace(Arc::new(snap));
    }
}

impl SnapshotSource for TestSource {
    fn subscribe(
        &self,
        proxy: &ProxyId,
        _opts: &ProxyOptions,
        _node: &Node,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        Ok(self.sender(proxy).subscribe())
    }
}

/// An in-process ADS server over a [`TestSource`].
struct Harness {
    ads: AdsServer,
    source: Arc<TestSource>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), shoal_xds::server::AdsError>>,
}

impl Harness {
    async fn start() -> Harness {
        let source = Arc::new(TestSource::default());
        let ads = AdsServer::new(source.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ads.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Harness {
            ads,
            source,
            addr,
            stop,
            task,
        }
    }

    /// Waits (bounded) until `f` holds of the server's counters.
    async fn until(&self, what: &str, f: impl Fn(&AdsStats) -> bool) {
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

    /// Stops the server and waits (bounded) until it has stopped.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops within the bound")
            .unwrap()
            .unwrap();
    }
}

/// A snapshot shaped like a translated one: `clusters` EDS clusters with their endpoints, an
/// egress listener whose HTTP connection manager takes its routes from RDS ("egress"), and
/// that route configuration; `v` changes only the route configuration.
fn eds_mesh(clusters: usize, v: u32) -> Snapshot {
    let ads = || ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    };
    let mut s = Snapshot::default();
    s.add(
        Route,
        "egress",
        &RouteConfiguration {
            name: "egress".into(),
            virtual_hosts: vec![VirtualHost {
                name: format!("v{v}"),
                domains: vec!["*".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    for i in 0..clusters {
        let name = format!("c{i}");
        s.add(
            Cluster,
            &name,
            &cds::Cluster {
                name: name.clone(),
                cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
                    cds::cluster::DiscoveryType::Eds as i32,
                )),
                eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                ..Default::default()
            },
        );
        s.add(
            Endpoint,
            &name,
            &ClusterLoadAssignment {
                cluster_name: name.clone(),
                ..Default::default()
            },
        );
    }
    let hcm = HttpConnectionManager {
        stat_prefix: "egress".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: "egress".into(),
        })),
        ..Default::default()
    };
    s.add(
        Listener,
        "egress",
        &lds::Listener {
            name: "egress".into(),
            filter_chains: vec![lds::FilterChain {
                filters: vec![lds::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(lds::filter::ConfigType::TypedConfig(
                        envoy_types::util::pack_any(hcm),
                    )),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_subscribes_like_envoy_and_times_a_change() {
    let h = Harness::start().await;
    let nodes: Vec<String> = (0..20)
        .map(|i| format!("mesh/m/virtualNode/n{i}"))
        .collect();
    for proto in [Protocol::StateOfTheWorld, Protocol::Delta] {
        for n in &nodes {
            h.source.set(n, eds_mesh(5, 1));
        }
        let gen = LoadGen::start(LoadConfig::new(
            format!("http://{}", h.addr),
            nodes.clone(),
            proto,
        ))
        .await
        .unwrap();
        assert_eq!(gen.len(), nodes.len());
        let synced = gen.wait(&Marker::Any(Route), WAIT).await;
        assert_eq!(synced.missing(), 0, "{:?}", gen.failures());
        for i in 0..gen.len() {
            let a = gen.arrivals(i);
            let count = |ty| {
                a.iter()
                    .filter(|x| x.ty == ty)
                    .map(|x| x.resources)
                    .sum::<usize>()
            };
            assert_eq!(count(Cluster), 5, "{proto:?} {a:?}");
            assert_eq!(count(Endpoint), 5, "{proto:?} {a:?}");
            assert_eq!(count(Listener), 1, "{proto:?} {a:?}");
            assert_eq!(count(Route), 1, "{proto:?} {a:?}");
        }
        h.until("every ACK", |s| s.acks.total() == s.responses.total())
            .await;

        let t0 = tokio::time::Instant::now();
        for n in &nodes {
            h.source.set(n, eds_mesh(5, 2));
        }
        let changed = gen.wait(&Marker::After(Route, t0), WAIT).await;
        assert_eq!(changed.missing(), 0, "{:?}", gen.failures());
        let summary = changed.summary(t0);
        assert_eq!(summary.streams, nodes.len());
        assert!(summary.p50 <= summary.p99 && summary.p99 <= summary.max && summary.max < WAIT);
        // Only the route configuration went out.
        for i in 0..gen.len() {
            let after: Vec<ResourceType> = gen
                .arrivals(i)
                .into_iter()
                .filter(|a| a.at >= t0)
                .map(|a| a.ty)
                .collect();
            assert_eq!(after, [Route], "{proto:?}");
        }
        // A version marker finds the same responses.
        let version = gen
            .arrivals(0)
            .into_iter()
            .rfind(|a| a.ty == Route)
            .unwrap()
            .version;
        let by_version = gen.wait(&Marker::Version(Route, version), WAIT).await;
        assert_eq!(by_version.at, changed.at, "{proto:?}");
        h.until("every ACK", |s| s.acks.total() == s.responses.total())
            .await;
        drop(gen);
        h.until("the streams to close", |s| s.streams_open == 0)
            .await;
    }
    h.stop().await;
}
