//! `shoal-bench xds`: fan-out of one route change to many proxies through one real agent.
//!
//! Builds a mesh `fanout` with `--services` virtual services (each a router with one route to
//! its own virtual node, one registered instance each) and `--count` distinct client virtual
//! nodes that have every service as a backend, opens one simulated ADS stream per client
//! (`shoal_bench::loadgen`, which ACKs every response), then commits route changes through the API
//! and measures, per stream, the time from the commit to the response carrying the change (the
//! ACK follows at once). Prints p50/p99/max, the agent's CPU time per stream and its memory per
//! stream (VmRSS of `--agent-pid` with the streams open, minus before).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use shoal::client::{Client, Doc};
use shoal_bench::loadgen::{LoadConfig, LoadGen, Marker, Protocol};
use shoal_xds::ResourceType;
use tokio::time::Instant;

/// `shoal-bench xds`.
#[derive(Debug, Args)]
pub struct XdsBenchArgs {
    /// The API of a server (where the mesh is written).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// The agent's API (instances are registered there).
    #[arg(long)]
    pub agent_api: String,
    /// The agent's xDS address (`http://host:port`).
    #[arg(long)]
    pub xds: String,
    /// The agent's process id, for its CPU time and memory.
    #[arg(long)]
    pub agent_pid: Option<u32>,
    /// Simulated proxies (repeatable; each count runs in turn).
    #[arg(long = "count", default_values_t = vec![100, 1000, 5000])]
    pub counts: Vec<usize>,
    /// Virtual services in the mesh (every proxy has all of them as backends).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Backends per proxy: every service by default (every proxy then has the same egress
    /// configuration, which the agent builds once); fewer gives each proxy its own set (service 0,
    /// whose route the benchmark changes, and others picked by a hash of the proxy's number), the
    /// worst case, where nothing is shared.
    #[arg(long)]
    pub backends_per_proxy: Option<usize>,
    /// Route changes measured per count.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Incremental xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// Only build the mesh (and register the instances), then exit: `scripts/bench-xds` then
    /// restarts the agent, so that its memory baseline holds the model but not the garbage of
    /// having followed the mesh being written.
    #[arg(long, conflicts_with = "built")]
    pub build_only: bool,
    /// The mesh is already built (by `--build-only`); measure only.
    #[arg(long)]
    pub built: bool,
}

const MESH: &str = "fanout";

fn doc(v: Value) -> anyhow::Result<Doc> {
    Doc::from_json(&v, "bench")
}

fn route(i: usize, prefix: &str) -> Value {
    json!({"meshName": MESH, "virtualRouterName": format!("vr-{i}"), "routeName": format!("r-{i}"),
        "spec": {"httpRoute": {"match": {"prefix": prefix}, "action": {"weightedTargets": [
            {"virtualNode": format!("svc-{i}"), "weight": 1}]}}}})
}

/// Applies `docs` with `parallel` requests in flight.
async fn apply_all(c: &Client, docs: Vec<Doc>, parallel: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(docs)
        .map(|d| async move { c.apply(&d).await.map(|_| ()) })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn build_mesh(args: &XdsBenchArgs, clients: usize) -> anyhow::Result<()> {
    let c = Client::new(&args.api)?;
    c.apply(&doc(json!({"meshName": MESH}))?).await?;
    let mut docs = Vec::new();
    for i in 0..args.services {
        docs.push(doc(json!({"meshName": MESH, "virtualNodeName": format!("svc-{i}"), "spec": {
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "fanout.local", "serviceName": format!("svc-{i}")}},
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}))?);
        docs.push(doc(
            json!({"meshName": MESH, "virtualRouterName": format!("vr-{i}"), "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}),
        )?);
    }
    apply_all(&c, docs, 16).await?;
    let mut docs = Vec::new();
    for i in 0..args.services {
        docs.push(doc(route(i, "/"))?);
        docs.push(doc(
            json!({"meshName": MESH, "virtualServiceName": format!("svc-{i}.fanout.local"),
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": format!("vr-{i}")}}}}),
        )?);
    }
    apply_all(&c, docs, 16).await?;
    let backend = |i: usize| json!({"virtualService": {"virtualServiceName": format!("svc-{i}.fanout.local")}});
    let mut docs = Vec::new();
    for j in 0..clients {
        let chosen: Vec<usize> = match args.backends_per_proxy {
            Some(k) if k < args.services => {
                let mut others: Vec<(u64, usize)> = (1..args.services)
                    .map(|i| {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::hash::DefaultHasher::new();
                        (j, i).hash(&mut h);
                        (h.finish(), i)
                    })
                    .collect();
                others.sort_unstable();
                std::iter::once(0)
                    .chain(others.into_iter().take(k.saturating_sub(1)).map(|(_, i)| i))
                    .collect()
            }
            _ => (0..args.services).collect(),
        };
        let backends: Vec<Value> = chosen.into_iter().map(backend).collect();
        docs.push(doc(
            json!({"meshName": MESH, "virtualNodeName": format!("proxy-{j}"),
            "spec": {"backends": backends}}),
        )?);
    }
    apply_all(&c, docs, 16).await?;
    let agent = Client::new(&args.agent_api)?;
    for i in 0..args.services {
        let body = json!({"namespace": "fanout.local", "service": format!("svc-{i}"),
            "instanceId": "i0", "address": format!("10.77.{}.{}", i / 250, i % 250 + 1), "port": 8080});
        agent
            .call(
                reqwest::Method::PUT,
                &["v1", "agent", "instances"].map(String::from),
                &[],
                Some(body),
            )
            .await
            .context("registering an instance with the agent")?;
    }
    Ok(())
}

/// (VmRSS KiB, utime + stime in clock ticks) of `pid`.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: XdsBenchArgs) -> anyhow::Result<()> {
    let max = args.counts.iter().copied().max().unwrap_or(0);
    if max == 0 || args.services == 0 {
        bail!("--count and --services must be positive");
    }
    if !args.built {
        let t = std::time::Instant::now();
        build_mesh(&args, max).await?;
        let backends = match args.backends_per_proxy {
            Some(k) if k < args.services => format!(
                "{k} backends each (service 0 and {} picked per node)",
                k.saturating_sub(1)
            ),
            _ => "every service as a backend".to_string(),
        };
        println!(
            "mesh {MESH}: {} virtual services, {max} client virtual nodes with {backends} (built in {:.1} s)",
            args.services,
            t.elapsed().as_secs_f64()
        );
        if args.build_only {
            return Ok(());
        }
    }
    // Let the agent catch up with the last write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let protocol = if args.delta {
        Protocol::Delta
    } else {
        Protocol::StateOfTheWorld
    };
    let c = Client::new(&args.api)?;
    let tick = 100.0; // USER_HZ
    if let Some((rss, _)) = args.agent_pid.and_then(usage) {
        println!(
            "agent RSS before the streams: {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>14} {:>14}",
        "N", "connect s", "p50 ms", "p99 ms", "max ms", "missing", "CPU ms/stream", "KiB/stream"
    );
    for &n in &args.counts {
        let before = args.agent_pid.and_then(usage);
        let nodes: Vec<String> = (0..n)
            .map(|j| format!("mesh/{MESH}/virtualNode/proxy-{j}"))
            .collect();
        let t = Instant::now();
        let load = LoadGen::start(LoadConfig::new(args.xds.clone(), nodes, protocol)).await?;
        let first = load
            .wait(&Marker::Any(ResourceType::Route), Duration::from_secs(300))
            .await;
        if first.missing() > 0 {
            bail!("{} of {n} streams got no initial routes", first.missing());
        }
        let connect = t.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = args.agent_pid.and_then(usage);
        for round in 0..args.rounds {
            let cpu0 = args.agent_pid.and_then(usage);
            let t0 = Instant::now();
            c.apply(&doc(route(0, &format!("/v{}", round + 1)))?)
                .await?;
            let got = load
                .wait(
                    &Marker::After(ResourceType::Route, t0),
                    Duration::from_secs(120),
                )
                .await;
            let s = got.summary(t0);
            let cpu1 = args.agent_pid.and_then(usage);
            let cpu = match (cpu0, cpu1) {
                (Some((_, a)), Some((_, b))) => {
                    format!("{:.3}", (b - a) as f64 * 1000.0 / tick / n as f64)
                }
                _ => "-".into(),
            };
            let mem = match (before, loaded) {
                (Some((a, _)), Some((b, _))) => format!("{:.1}", (b as f64 - a as f64) / n as f64),
                _ => "-".into(),
            };
            println!(
                "{:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>14} {:>14}",
                n,
                connect.as_secs_f64(),
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.max.as_secs_f64() * 1e3,
                s.missing,
                cpu,
                mem
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        drop(load);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    c.apply(&doc(route(0, "/"))?).await?;
    Ok(())
}
