//! `shoal bench xds`: fan-out of one route change to many proxies through one real agent.
//!
//! Builds a mesh `fanout` with `--services` virtual services (each a router with one route to
//! its own virtual node, one registered instance each) and `--count` distinct client virtual
//! nodes that have every service as a backend, opens one simulated ADS stream per client
//! (`shoal_xds::loadgen`, which ACKs every response), then commits route changes through the API
//! and measures, per stream, the time from the commit to the response carrying the change (the
//! ACK follows at once). Prints p50/p99/max, the agent's CPU time per stream and its memory per
//! stream (VmRSS of `--agent-pid` with the streams open, minus before).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use shoal_xds::loadgen::{LoadConfig, LoadGen, Marker, Protocol};
use shoal_xds::ResourceType;
use tokio::time::Instant;

use crate::client::{Client, Doc};

/// `shoal bench xds`.
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
    /// Route changes measured per count.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Incremental xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
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
    let backends: Vec<Value> = (0..args.services)
        .map(|i| json!({"virtualService": {"virtualServiceName": format!("svc-{i}.fanout.local")}}))
        .collect();
    let mut docs = Vec::new();
    for j in 0..clients {
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
    let t = std::time::Instant::now();
    build_mesh(&args, max).await?;
    println!(
        "mesh {MESH}: {} virtual services, {max} client virtual nodes with every service as a backend (built in {:.1} s)",
        args.services,
        t.elapsed().as_secs_f64()
    );
    // Let the agent catch up with the last write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let protocol = if args.delta {
        Protocol::Delta
    } else {
        Protocol::StateOfTheWorld
    };
    let c = Client::new(&args.api)?;
    let tick = 100.0; // USER_HZ
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
