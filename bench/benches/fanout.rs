//! Fan-out benchmark (issue 5, benchmark 1): one ADS server, N simulated Envoys (N = 100, 1,000,
//! 5,000), each a distinct virtual node of a mesh with 100 virtual services (100 EDS clusters,
//! 100 endpoint assignments of 3 endpoints, one egress listener of its own, one route
//! configuration with 100 virtual hosts). The route configuration of every proxy changes at
//! once; the benchmark reports the time from the change to each proxy's response (its ACK
//! follows immediately; p50/p99/max over streams) and to the server's last ACK, and the
//! server's CPU time and resident memory per stream.
//!
//! The server runs in a child process (this same binary, re-executed with
//! `SHOAL_FANOUT_SERVER=<n>`) so that its RSS and CPU are its own and not the load generator's;
//! both share the machine's cores, as an agent and its Envoys would.
//!
//! `cargo bench -p shoal-bench --bench fanout`; `FANOUT_SIZES=100,1000` and
//! `FANOUT_PROTOCOLS=sotw` (or `delta`) narrow the run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Node, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use shoal_bench::loadgen::{LoadConfig, LoadGen, Marker, Protocol};
use shoal_xds::{AdsServer, ProxyId, ProxyOptions, ResourceType, Snapshot, SnapshotSource};
use tokio::sync::watch;

const SERVICES: usize = 100;
const ROUTE_NAME: &str = "rds_egress_http_15001";

fn main() {
    if let Ok(n) = std::env::var("SHOAL_FANOUT_SERVER") {
        server_main(n.parse().expect("SHOAL_FANOUT_SERVER is a number"));
        return;
    }
    let sizes: Vec<usize> = std::env::var("FANOUT_SIZES")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("FANOUT_SIZES: numbers"))
        .collect();
    let protocols: Vec<Protocol> = std::env::var("FANOUT_PROTOCOLS")
        .unwrap_or_else(|_| "sotw,delta".into())
        .split(',')
        .map(|s| match s.trim() {
            "sotw" => Protocol::StateOfTheWorld,
            "delta" => Protocol::Delta,
            other => panic!("FANOUT_PROTOCOLS: {other:?} is not sotw or delta"),
        })
        .collect();
    println!(
        "fan-out: {SERVICES} virtual services per proxy (100 CDS, 100 EDS, 1 LDS, 1 RDS of 100 virtual hosts); {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for protocol in &protocols {
        for &n in &sizes {
            run(n, *protocol);
        }
    }
}

/// Resident memory and CPU time of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    cpu: Duration,
}

fn usage(pid: &str) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the line, in USER_HZ (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Usage {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu: Duration::from_millis(ticks * 10),
    }
}

fn node_id(i: usize) -> String {
    format!("mesh/bench/virtualNode/vn-{i}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The parent: starts the server, opens the streams, makes the change, prints one result.
fn run(n: usize, protocol: Protocol) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("SHOAL_FANOUT_SERVER", n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server process starts");
    let pid = child.id().to_string();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read = move || from_child.next().expect("the server answers").unwrap();
    let ready = read();
    let (port, snapshots_kib): (u16, u64) = ready
        .strip_prefix("ready ")
        .and_then(|r| r.split_once(" snapshots_kib="))
        .and_then(|(p, k)| Some((p.parse().ok()?, k.parse().ok()?)))
        .unwrap_or_else(|| panic!("server said {ready:?}"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = usage(&pid);
    let node_ids: Vec<String> = (0..n).map(node_id).collect();
    let t_open = tokio::time::Instant::now();
    let gen = rt
        .block_on(LoadGen::start(LoadConfig::new(
            format!("http://127.0.0.1:{port}"),
            node_ids,
            protocol,
        )))
        .expect("every stream opens");
    let synced = rt.block_on(gen.wait(&Marker::Any(ResourceType::Route), Duration::from_secs(300)));
    let sync_summary = synced.summary(t_open);
    assert_eq!(
        sync_summary.missing,
        0,
        "streams without routes: {:?}",
        gen.failures()
    );
    // Let the last ACKs land and the allocator settle.
    std::thread::sleep(Duration::from_millis(500));
    let after_sync = usage(&pid);

    let t0 = tokio::time::Instant::now();
    writeln!(to_child, "change").unwrap();
    to_child.flush().unwrap();
    let arrivals = rt.block_on(gen.wait(
        &Marker::After(ResourceType::Route, t0),
        Duration::from_secs(120),
    ));
    let changed = read();
    let after_change = usage(&pid);
    let s = arrivals.summary(t0);
    let fields: HashMap<&str, f64> = changed
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap_or(f64::NAN)))
        .collect();

    let proto = match protocol {
        Protocol::StateOfTheWorld => "sotw",
        Protocol::Delta => "delta",
    };
    let per = |kib: u64| kib as f64 / n as f64;
    println!(
        "{proto:>5} n={n:>5}: route change → responses p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}; server: snapshots replaced in {:.1} ms, last ACK at {:.1} ms",
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        if s.missing > 0 { format!(" ({} MISSING)", s.missing) } else { String::new() },
        fields.get("rebuild_ms").copied().unwrap_or(f64::NAN),
        fields.get("last_ack_ms").copied().unwrap_or(f64::NAN),
    );
    println!(
        "{:>13}  CPU {:.3} ms/stream for the change, {:.3} ms/stream to connect and sync (all {} in {:.0} ms)",
        "",
        ms(after_change.cpu.saturating_sub(after_sync.cpu)) / n as f64,
        ms(after_sync.cpu.saturating_sub(base.cpu)) / n as f64,
        n,
        ms(sync_summary.max),
    );
    println!(
        "{:>13}  RSS per proxy: {:.1} KiB snapshot + {:.1} KiB stream = {:.1} KiB after sync; {:.1} KiB stream after the change (RSS {} → {} → {} KiB, peak {} KiB)",
        "",
        per(snapshots_kib),
        per(after_sync.rss_kib.saturating_sub(base.rss_kib)),
        per(snapshots_kib + after_sync.rss_kib.saturating_sub(base.rss_kib)),
        per(after_change.rss_kib.saturating_sub(base.rss_kib)),
        base.rss_kib,
        after_sync.rss_kib,
        after_change.rss_kib,
        after_change.hwm_kib,
    );
    drop(gen);
    let _ = writeln!(to_child, "quit");
    let _ = child.wait();
}

// ------------------------------------------------------------------------------------------
// The server side.

fn eds_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn cluster_name(i: usize) -> String {
    format!("cds_egress_bench_vs-{i}_http_8080")
}

fn cluster(i: usize) -> Cluster {
    Cluster {
        name: cluster_name(i),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(eds_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value { value: 2147483647 }),
                max_pending_requests: Some(UInt32Value { value: 2147483647 }),
                max_requests: Some(UInt32Value { value: 2147483647 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 5 }),
            interval: Some(PbDuration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn assignment(i: usize) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name(i),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: (1..=3)
                .map(|h| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&format!("10.{}.{}.{h}", i / 250, i % 250), 8080)),
                        ..Default::default()
                    })),
                    health_status: HealthStatus::Healthy as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn route_config(generation: u32) -> RouteConfiguration {
    RouteConfiguration {
        name: ROUTE_NAME.into(),
        virtual_hosts: (0..SERVICES)
            .map(|i| VirtualHost {
                name: format!("bench_vs-{i}"),
                domains: vec![
                    format!("vs-{i}.bench.local"),
                    format!("vs-{i}.bench.local:8080"),
                ],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            cluster_name(i),
                        )),
                        // The change: the per-request timeout of the first service.
                        timeout: Some(PbDuration {
                            seconds: 15 + if i == 0 { generation as i64 } else { 0 },
                            nanos: 0,
                        }),
                        retry_policy: Some(RetryPolicy {
                            retry_on: "gateway-error,connect-failure,refused-stream".into(),
                            num_retries: Some(UInt32Value { value: 2 }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn listener(proxy: &ProxyId) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("egress_{}", proxy.name),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(eds_source()),
            route_config_name: ROUTE_NAME.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: "lds_egress_0.0.0.0_15001".into(),
        address: Some(socket("0.0.0.0", 15001)),
        stat_prefix: format!("egress_{}", proxy.name),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The proxies' snapshots: clusters, endpoints and the route configuration are shared
/// (`Arc<Resource>`) by every proxy; each proxy's listener is its own. They are built before
/// the streams open (as an agent that follows a mesh would have them), so that their memory
/// and the streams' can be told apart.
struct BenchSource {
    base: Mutex<Snapshot>,
    prebuilt: Mutex<HashMap<ProxyId, Arc<Snapshot>>>,
    proxies: Mutex<Vec<watch::Sender<Arc<Snapshot>>>>,
}

impl BenchSource {
    fn build(&self, proxy: &ProxyId) -> Snapshot {
        let mut snap = self.base.lock().unwrap().clone();
        snap.add(
            ResourceType::Listener,
            "lds_egress_0.0.0.0_15001",
            &listener(proxy),
        );
        snap
    }
}

impl SnapshotSource for BenchSource {
    fn subscribe(
        &self,
        proxy: &ProxyId,
        _opts: &ProxyOptions,
        _node: &Node,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        let prebuilt = self.prebuilt.lock().unwrap().remove(proxy);
        let snap = prebuilt.unwrap_or_else(|| Arc::new(self.build(proxy)));
        let (tx, rx) = watch::channel(snap);
        self.proxies.lock().unwrap().push(tx);
        Ok(rx)
    }
}

fn server_main(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut base = Snapshot::default();
    for i in 0..SERVICES {
        base.add(ResourceType::Cluster, &cluster_name(i), &cluster(i));
        base.add(ResourceType::Endpoint, &cluster_name(i), &assignment(i));
    }
    base.add(ResourceType::Route, ROUTE_NAME, &route_config(0));
    let source = Arc::new(BenchSource {
        base: Mutex::new(base),
        prebuilt: Mutex::default(),
        proxies: Mutex::default(),
    });
    let before = usage("self");
    for i in 0..n {
        let proxy = ProxyId::parse(&node_id(i)).unwrap();
        let snap = Arc::new(source.build(&proxy));
        source.prebuilt.lock().unwrap().insert(proxy, snap);
    }
    let prebuilt = usage("self");
    let ads = AdsServer::new(source.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(ads.clone().serve(listener, std::future::pending()));
    println!(
        "ready {port} snapshots_kib={}",
        prebuilt.rss_kib.saturating_sub(before.rss_kib)
    );

    let mut generation = 0u32;
    for line in std::io::stdin().lines() {
        match line.unwrap().trim() {
            "change" => {
                generation += 1;
                let t0 = Instant::now();
                let mut route = Snapshot::default();
                route.add(ResourceType::Route, ROUTE_NAME, &route_config(generation));
                let route = route.resources(ResourceType::Route)[ROUTE_NAME].clone();
                source
                    .base
                    .lock()
                    .unwrap()
                    .insert(ResourceType::Route, route.clone());
                for tx in source.proxies.lock().unwrap().iter() {
                    let mut snap = Snapshot::clone(&tx.borrow());
                    snap.insert(ResourceType::Route, route.clone());
                    tx.send_replace(Arc::new(snap));
                }
                let rebuilt = t0.elapsed();
                let target = (n as u64) * (generation as u64 + 1);
                let deadline = t0 + Duration::from_secs(120);
                while ads.stats().acks.get(ResourceType::Route) < target
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                println!(
                    "changed rebuild_ms={:.3} last_ack_ms={:.3} acks={}",
                    ms(rebuilt),
                    ms(t0.elapsed()),
                    ads.stats().acks.get(ResourceType::Route)
                );
            }
            "quit" => break,
            other => eprintln!("fan-out server: unknown command {other:?}"),
        }
    }
    ads.shutdown();
}
