//! `shoal-bench mesh-ca`: the mesh CA's speed, through the path agents use (the cluster port's
//! `shoal.v1.MeshCa/SignWorkload`, one connection per agent).
//!
//! 1. **Throughput**: `--clients` closed-loop clients sign for `--seconds`: certificates per
//!    second one server issues, and the latency of one.
//! 2. **Cold start**: `--agents` simulated agents with `--proxies-per-agent` proxies each start
//!    at once; each asks for its proxies' certificates one after another over one connection,
//!    as an agent does. Time until the last proxy holds its certificate.
//!
//! The keys and CSRs are made before the clock starts (an agent makes a proxy's key once and
//! keeps it); what is measured is the servers' work and the wire. The mesh must exist, with
//! virtual nodes `n0`…`n{N-1}` (see `scripts/bench-mesh-ca`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use shoal::watch::ca::grpc::mesh_ca_client::MeshCaClient;
use shoal::watch::ca::{SignInput, SignOutput, SignRequest};
use tonic::transport::Channel;

use crate::stats::percentile;

/// `shoal-bench mesh-ca`.
#[derive(Debug, Args)]
pub struct MeshCaArgs {
    /// The server's cluster gRPC URL (e.g. `http://127.0.0.81:7071`).
    #[arg(long)]
    pub cluster: String,
    /// The mesh.
    #[arg(long, default_value = "bench")]
    pub mesh: String,
    /// Virtual nodes `n0`…: how many the mesh has.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Throughput clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Throughput duration.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Simulated agents of the cold start.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Proxies on each simulated agent.
    #[arg(long, default_value_t = 10)]
    pub proxies_per_agent: usize,
}

async fn connect(url: &str) -> anyhow::Result<MeshCaClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(MeshCaClient::new(channel))
}

async fn sign(
    client: &mut MeshCaClient<Channel>,
    mesh: &str,
    node: &str,
    csr: &str,
) -> anyhow::Result<()> {
    let input = SignInput {
        mesh: mesh.to_string(),
        virtual_node: Some(node.to_string()),
        virtual_gateway: None,
        csr: csr.to_string(),
        validity_seconds: None,
    };
    let reply = client
        .sign_workload(SignRequest {
            request: serde_json::to_vec(&input)?,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let outcome: Result<SignOutput, serde_json::Value> =
        serde_json::from_slice(&reply.outcome).context("the answer is not JSON")?;
    outcome
        .map(drop)
        .map_err(|e| anyhow::anyhow!("refused: {e}"))
}

/// Runs both measurements and prints their figures.
pub async fn run(a: MeshCaArgs) -> anyhow::Result<()> {
    let total = a.agents * a.proxies_per_agent;
    eprintln!("making {total} keys and CSRs (not timed)");
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..total.max(a.clients))
            .map(|i| shoal_pki::new_csr(&format!("p{i}")).map(|(csr, _key)| csr))
            .collect::<Result<_, _>>()?,
    );

    // 1. Throughput.
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (url, mesh, csrs, nodes) = (a.cluster.clone(), a.mesh.clone(), csrs.clone(), a.nodes);
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await?;
            let mut lat = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let t = Instant::now();
                sign(&mut client, &mesh, &format!("n{}", i % nodes), &csrs[c]).await?;
                lat.push(t.elapsed());
                i += a.clients;
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let took = started.elapsed();
    lat.sort();
    println!(
        "throughput: {} clients, {} certificates in {:.1} s: {:.0} certificates/s, latency p50 {:.2} ms p99 {:.2} ms",
        a.clients,
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        percentile(&lat, 50.0).as_secs_f64() * 1e3,
        percentile(&lat, 99.0).as_secs_f64() * 1e3,
    );

    // 2. Cold start: every agent at once, each proxy in turn.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for g in 0..a.agents {
        let (url, mesh, csrs, nodes, per) = (
            a.cluster.clone(),
            a.mesh.clone(),
            csrs.clone(),
            a.nodes,
            a.proxies_per_agent,
        );
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await?;
            let mut done = Vec::new();
            for p in 0..per {
                let i = g * per + p;
                sign(&mut client, &mesh, &format!("n{}", i % nodes), &csrs[i]).await?;
                done.push(started.elapsed());
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.extend(t.await??);
    }
    done.sort();
    println!(
        "cold start: {} agents x {} proxies: all {} certificates in {:.2} s (half by {:.2} s, 99% by {:.2} s)",
        a.agents,
        a.proxies_per_agent,
        done.len(),
        done.last().copied().unwrap_or_default().as_secs_f64(),
        percentile(&done, 50.0).as_secs_f64(),
        percentile(&done, 99.0).as_secs_f64(),
    );
    Ok(())
}
