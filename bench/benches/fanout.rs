//! Fan-out benchmark (issue 5, benchmark 1): one ADS server over the real per-proxy cache
//! (`shoal_xds::Proxies`, as the agent runs it), N simulated Envoys (N = 100, 1,000, 5,000),
//! each a distinct client virtual node `vn-<i>` of a mesh `bench` with 100 virtual services
//! (each a virtual router with one route to its own virtual node, Cloud Map discovery, 3
//! endpoints), every service a backend of every client. One route changes (a new model
//! revision); the benchmark reports the time from the change to each proxy's response (its ACK
//! follows immediately; p50/p99/max over streams), the server's time to rebuild every proxy's
//! snapshot and to its last ACK, and the server's CPU time and resident memory per stream.
//!
//! The server runs in a child process (this same binary, re-executed with
//! `SHOAL_FANOUT_SERVER=<n>`) so that its RSS and CPU are its own and not the load generator's;
//! both share the machine's cores, as an agent and its Envoys would.
//!
//! `cargo bench -p shoal-bench --bench fanout`; `FANOUT_SIZES=100,1000` and
//! `FANOUT_PROTOCOLS=sotw` (or `delta`) narrow the run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use serde_json::{json, Value};
use shoal_bench::loadgen::{LoadConfig, LoadGen, Marker, Protocol};
use shoal_model::discovery::{Endpoint, Instance};
use shoal_model::request::{parse_create, parse_update};
use shoal_model::{Kind, Model, PutMode, ResourceKey, Stamp};
use shoal_xds::{AdsServer, Inputs, Proxies, ProxyId, ProxyOptions, ResourceType};
use tokio::sync::watch;

const SERVICES: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 3;
const MESH: &str = "bench";

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
        "fan-out: {SERVICES} virtual services per proxy ({}); {} cores",
        shape(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for protocol in &protocols {
        for &n in &sizes {
            run(n, *protocol);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The mesh, built as a server's log builds it (create requests applied to a `Model`).

/// Applies one App Mesh request body to `model` as its next revision: `Create…` or `Update…`
/// input, parsed and checked as the API does, then `Model::apply`. Panics if it is refused.
fn put(model: &mut Model, key: ResourceKey, body: Value, mode: PutMode) {
    let bytes = body.to_string();
    let spec = match mode {
        PutMode::Create => parse_create(key.kind, bytes.as_bytes()).map(|r| r.spec),
        PutMode::Update => parse_update(key.kind, bytes.as_bytes()).map(|r| r.spec),
    }
    .unwrap_or_else(|e| panic!("{}: {body}", e.message));
    let index = model.revision() + 1;
    let applied = model.apply(
        index,
        &shoal_model::Command::Put {
            key,
            spec: Box::new(spec),
            mode,
            tags: vec![],
            client_token: None,
            stamp: Stamp {
                now: 1.0,
                uid: format!("u{index}"),
                account: "000000000000".into(),
                region: "us-east-1".into(),
            },
        },
    );
    if let Err(e) = applied.outcome {
        panic!("{}: {body}", e.message);
    }
}

fn route_key(i: usize) -> ResourceKey {
    ResourceKey::child(MESH, Kind::Route, &format!("vr-{i}"), &format!("r-{i}"))
}

/// Route `r-<i>`: everything to `svc-<i>`; its per-request timeout is what the change changes.
fn route_spec(i: usize, timeout_s: u64) -> Value {
    json!({"httpRoute": {
        "match": {"prefix": "/"},
        "action": {"weightedTargets": [{"virtualNode": format!("svc-{i}"), "weight": 1}]},
        "timeout": {"perRequest": {"value": timeout_s, "unit": "s"}}}})
}

/// The mesh with `clients` client virtual nodes `vn-<j>`, each with every service as a backend.
fn model(clients: usize) -> Model {
    let mut m = Model::default();
    put(
        &mut m,
        ResourceKey::mesh(MESH),
        json!({"meshName": MESH}),
        PutMode::Create,
    );
    let http_8080 = || json!([{"portMapping": {"port": 8080, "protocol": "http"}}]);
    for i in 0..SERVICES {
        let (node, router) = (format!("svc-{i}"), format!("vr-{i}"));
        put(
            &mut m,
            ResourceKey::in_mesh(MESH, Kind::VirtualNode, &node),
            json!({"virtualNodeName": node, "spec": {
                "serviceDiscovery": {"awsCloudMap": {"namespaceName": "bench.local", "serviceName": node}},
                "listeners": http_8080()}}),
            PutMode::Create,
        );
        put(
            &mut m,
            ResourceKey::in_mesh(MESH, Kind::VirtualRouter, &router),
            json!({"virtualRouterName": router, "spec": {"listeners": http_8080()}}),
            PutMode::Create,
        );
        put(
            &mut m,
            route_key(i),
            json!({"routeName": format!("r-{i}"), "spec": route_spec(i, 15)}),
            PutMode::Create,
        );
        let service = format!("vs-{i}.bench.local");
        put(
            &mut m,
            ResourceKey::in_mesh(MESH, Kind::VirtualService, &service),
            json!({"virtualServiceName": service,
                "spec": {"provider": {"virtualRouter": {"virtualRouterName": router}}}}),
            PutMode::Create,
        );
    }
    let backends: Vec<Value> = (0..SERVICES)
        .map(|i| json!({"virtualService": {"virtualServiceName": format!("vs-{i}.bench.local")}}))
        .collect();
    for j in 0..clients {
        let name = format!("vn-{j}");
        put(
            &mut m,
            ResourceKey::in_mesh(MESH, Kind::VirtualNode, &name),
            json!({"virtualNodeName": name, "spec": {"backends": backends}}),
            PutMode::Create,
        );
    }
    m
}

/// The instances of every service's virtual node, as gossip would report them.
fn endpoints() -> Vec<Endpoint> {
    (0..SERVICES)
        .flat_map(|i| {
            (1..=ENDPOINTS_PER_SERVICE).map(move |h| Endpoint {
                instance: Instance::cloud_map(
                    "bench.local",
                    &format!("svc-{i}"),
                    &format!("i{h}"),
                    IpAddr::from([10, (i / 250) as u8, (i % 250) as u8, h as u8]),
                    8080,
                ),
                host: "bench-host".into(),
                healthy: true,
            })
        })
        .collect()
}

/// What one client's snapshot holds, per type, from a real translation (so the header says
/// what the streams carry, not what this file assumes).
fn shape() -> String {
    let proxy = ProxyId::parse(&node_id(0)).expect("a node id");
    let snap = shoal_xds::translate(&model(1), &endpoints(), &proxy, &ProxyOptions::default())
        .expect("the mesh translates");
    let count = |ty| snap.resources(ty).len();
    let hosts: usize = snap
        .resources(ResourceType::Route)
        .values()
        .map(|r| {
            RouteConfiguration::decode(r.any.value.as_slice())
                .expect("a route configuration")
                .virtual_hosts
                .len()
        })
        .sum();
    format!(
        "{} CDS, {} EDS, {} LDS, {} RDS of {hosts} virtual hosts",
        count(ResourceType::Cluster),
        count(ResourceType::Endpoint),
        count(ResourceType::Listener),
        count(ResourceType::Route),
    )
}

// ------------------------------------------------------------------------------------------
// The parent: the load generator and the figures.

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

/// The child: the mesh's [`Inputs`] in a watch channel, the real [`Proxies`] cache over it, an
/// [`AdsServer`] serving it. Commands on stdin: `change` (one route's new revision) and `quit`.
fn server_main(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoints = Arc::new(endpoints());
    let mut model = model(n);
    let (inputs, watched) = watch::channel(Inputs::new(Arc::new(model.clone()), endpoints.clone()));
    let proxies = Proxies::new(watched);
    let before = usage("self");
    // Every proxy's snapshot is built before the streams open, through the very call a stream's
    // first request makes (the load generator's nodes carry no metadata, so their options are
    // the defaults), so that the snapshots' memory and the streams' can be told apart; each
    // stream then finds its snapshot in the cache. Holding the receivers keeps them there.
    let opts = ProxyOptions::default();
    let _held: Vec<_> = (0..n)
        .map(|i| proxies.subscribe(&ProxyId::parse(&node_id(i)).unwrap(), &opts))
        .collect();
    let prebuilt = usage("self");
    let ads = AdsServer::new(proxies.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(ads.clone().serve(listener, std::future::pending()));
    println!(
        "ready {port} snapshots_kib={}",
        prebuilt.rss_kib.saturating_sub(before.rss_kib)
    );

    let mut generation = 0u64;
    for line in std::io::stdin().lines() {
        match line.unwrap().trim() {
            "change" => {
                generation += 1;
                let t0 = Instant::now();
                // A new revision of the model with route r-0's timeout changed, as the agent
                // gets it from its watch stream; then every proxy's snapshot is recomputed.
                put(
                    &mut model,
                    route_key(0),
                    json!({"spec": route_spec(0, 15 + generation)}),
                    PutMode::Update,
                );
                inputs.send_replace(Inputs::new(Arc::new(model.clone()), endpoints.clone()));
                proxies.refresh();
                let rebuilt = t0.elapsed();
                assert_eq!(
                    proxies.count(),
                    n,
                    "the streams subscribed other proxies than the ones built in advance"
                );
                let target = (n as u64) * (generation + 1);
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
