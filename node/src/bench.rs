//! `shoal bench writes`: a closed-loop write benchmark against a running server's App Mesh
//! API. Each client owns one virtual node and updates it back to back (each update is one
//! Raft commit with the log flushed to disk before the answer); the run stops by itself after
//! `--seconds` and prints writes/s and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::cli::Target;
use crate::client::Client;

/// `shoal bench writes`.
#[derive(Debug, Args)]
pub struct WriteBenchArgs {
    /// Concurrent clients (repeatable: one run per value).
    #[arg(long = "clients", default_values_t = vec![1, 16])]
    pub clients: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Mesh to create for the run (must not exist).
    #[arg(long, default_value = "bench")]
    pub mesh: String,
    #[command(flatten)]
    pub target: Target,
}

/// Latency figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Completed writes.
    pub writes: usize,
    /// Writes per second over the run.
    pub per_second: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest write.
    pub max: Duration,
}

/// Percentile `p` (0–100) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn node_spec(port: u64) -> serde_json::Value {
    // A realistic virtual node (~600 bytes of JSON): listener with health check and timeouts,
    // Cloud Map discovery, two backends.
    json!({
        "listeners": [{
            "portMapping": {"port": 8000 + (port % 1000), "protocol": "http"},
            "healthCheck": {"protocol": "http", "path": "/health", "healthyThreshold": 2,
                            "unhealthyThreshold": 3, "timeoutMillis": 2000, "intervalMillis": 5000},
            "timeout": {"http": {"perRequest": {"value": 15, "unit": "s"}, "idle": {"value": 300, "unit": "s"}}}
        }],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "bench.local", "serviceName": "svc",
                                             "attributes": [{"key": "version", "value": "v1"}]}},
        "backends": [{"virtualService": {"virtualServiceName": "a.bench.local"}},
                     {"virtualService": {"virtualServiceName": "b.bench.local"}}]
    })
}

/// Runs one closed-loop run with `clients` writers for `seconds`.
pub async fn run_once(
    addr: &str,
    mesh: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let setup = Client::new(addr)?;
    for c in 0..clients {
        let doc = crate::client::Doc::from_json(
            &json!({"meshName": mesh, "virtualNodeName": format!("writer-{c}"), "spec": node_spec(0)}),
            "bench",
        )?;
        setup.apply(&doc).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        let mesh = mesh.to_string();
        tasks.push(tokio::spawn(async move {
            let client = Client::new(&addr)?;
            let segs = {
                let mut s = crate::client::collection(shoal_model::Kind::VirtualNode, &mesh, "");
                s.push(format!("writer-{c}"));
                s
            };
            let mut lat = Vec::new();
            let mut i: u64 = 0;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                client
                    .call(
                        reqwest::Method::PUT,
                        &segs,
                        &[],
                        Some(json!({"spec": node_spec(i)})),
                    )
                    .await
                    .context("update failed during the benchmark")?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok(Figures {
        writes: all.len(),
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        max: all.last().copied().unwrap_or_default(),
    })
}

/// `shoal bench writes`: one run per `--clients` value, one table.
pub async fn writes(args: WriteBenchArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.target.addr)?;
    let mesh_doc = crate::client::Doc::from_json(&json!({"meshName": args.mesh}), "bench")?;
    c.apply(&mesh_doc).await?;
    println!("clients  writes  writes/s  p50_ms  p99_ms  max_ms");
    for &n in &args.clients {
        let f = run_once(&args.target.addr, &args.mesh, n, args.seconds).await?;
        println!(
            "{:>7}  {:>6}  {:>8.0}  {:>6.2}  {:>6.2}  {:>6.2}",
            n,
            f.writes,
            f.per_second,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(percentile(&s[..1], 99.0), Duration::from_millis(1));
    }
}
