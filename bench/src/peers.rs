//! `shoal-bench peers`: many gossip peers in this process against one real agent process.
//!
//! Starts `--count` gossip members (agents, each publishing `--instances` instances) that join
//! the agent at `--join`, then measures, through the agent's own API:
//! * the time until the agent sees every peer's instances;
//! * registration → visible at the agent, per round (a new instance on a random peer);
//! * host death → its instances gone from the agent's view, per round (a peer's gossip stops
//!   without a word, as a crashed host's does);
//! * the agent's resident memory (VmRSS of `--agent-pid`), the largest seen while it holds every
//!   peer and instance.
//!
//! Every wait is bounded; every peer stops at the end.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shoal_gossip::{Gossip, GossipConfig, NodeMeta, Role};
use shoal_model::discovery::Instance;

use crate::stats::percentile;

/// `shoal-bench peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Gossip address of the agent under test.
    #[arg(long)]
    pub join: SocketAddr,
    /// API of the agent under test (`http://host:port`).
    #[arg(long)]
    pub agent_api: String,
    /// Process id of the agent under test, for its memory.
    #[arg(long)]
    pub agent_pid: Option<u32>,
    /// Peers to start.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Instances each peer publishes.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Address the peers bind (each on its own port).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// First gossip port of the peers.
    #[arg(long, default_value_t = 21000)]
    pub base_port: u16,
    /// Registration and death rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
}

fn instance(peer: usize, n: usize) -> Instance {
    Instance::cloud_map(
        "peers.local",
        &format!("peer-{peer}"),
        &format!("i{n}"),
        IpAddr::from([10, 200, (peer % 256) as u8, (n % 250 + 1) as u8]),
        8080,
    )
}

/// What the agent reports: (endpoints it sees, endpoints of `service`).
async fn agent_view(
    http: &reqwest::Client,
    api: &str,
    service: &str,
) -> anyhow::Result<(usize, usize)> {
    let v: serde_json::Value = http
        .get(format!("{api}/v1/endpoints"))
        .send()
        .await?
        .json()
        .await?;
    let eps = v["endpoints"].as_array().context("no endpoints")?;
    let of = eps
        .iter()
        .filter(|e| e["instance"]["svc"] == service)
        .count();
    Ok((eps.len(), of))
}

async fn wait_view(
    http: &reqwest::Client,
    api: &str,
    service: &str,
    timeout: Duration,
    done: impl Fn(usize, usize) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok((all, of)) = agent_view(http, api, service).await {
            if done(all, of) {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > timeout {
            bail!("the agent's view did not converge within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn start_peer(args: &PeersArgs, i: usize) -> anyhow::Result<Gossip> {
    let addr = SocketAddr::new(args.ip, args.base_port + i as u16);
    let mut cfg = GossipConfig::new(format!("peer-{i}"), addr);
    cfg.seeds = vec![args.join.to_string()];
    let g = Gossip::start(cfg, NodeMeta::new(Role::Agent, env!("CARGO_PKG_VERSION")))
        .await
        .with_context(|| format!("starting peer {i} on {addr}"))?;
    for n in 0..args.instances {
        g.publish_instance(&instance(i, n), true).await?;
    }
    Ok(g)
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} rounds {:>3}  p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: PeersArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let (before, _) = agent_view(&http, &args.agent_api, "")
        .await
        .context("reading the agent's endpoints")?;
    let rss_before = args.agent_pid.and_then(rss_kib);
    let start = Instant::now();
    let mut peers = Vec::with_capacity(args.count);
    for i in 0..args.count {
        peers.push(Some(start_peer(&args, i).await?));
    }
    let total = before + args.count * args.instances;
    let converged = wait_view(
        &http,
        &args.agent_api,
        "",
        Duration::from_secs(120),
        |all, _| all >= total,
    )
    .await?;
    println!(
        "{} peers x {} instances: the agent saw all {} endpoints {:.2} s after the first peer started ({:.2} s after the last)",
        args.count,
        args.instances,
        total,
        start.elapsed().as_secs_f64(),
        converged.as_secs_f64()
    );

    let mut rss_max = 0;
    let mut registration = Vec::new();
    let mut death = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..args.rounds.min(args.count) {
        if let Some(r) = args.agent_pid.and_then(rss_kib) {
            rss_max = rss_max.max(r);
        }
        // Registration: a new instance on a live peer.
        let live: Vec<usize> = (0..peers.len()).filter(|i| peers[*i].is_some()).collect();
        let p = live[next(live.len())];
        let extra = instance(p, 1000 + round);
        let service = extra.service.clone();
        let want = args.instances + 1;
        let t = Instant::now();
        peers[p]
            .as_ref()
            .expect("live")
            .publish_instance(&extra, true)
            .await?;
        wait_view(
            &http,
            &args.agent_api,
            &service,
            Duration::from_secs(30),
            |_, of| of == want,
        )
        .await?;
        registration.push(t.elapsed());
        // Death: that peer stops gossiping without a word.
        let t = Instant::now();
        if let Some(g) = peers[p].take() {
            g.shutdown().await?;
        }
        wait_view(
            &http,
            &args.agent_api,
            &service,
            Duration::from_secs(60),
            |_, of| of == 0,
        )
        .await?;
        death.push(t.elapsed());
    }
    println!();
    summary("registration -> agent view", registration);
    summary("host death -> agent view", death);
    if let Some(pid) = args.agent_pid {
        if let Some(r) = rss_kib(pid) {
            rss_max = rss_max.max(r);
        }
        println!(
            "agent RSS: {:.1} MiB before the peers, {:.1} MiB max with {} peers and {} instances (target < 50 MiB)",
            rss_before.unwrap_or(0) as f64 / 1024.0,
            rss_max as f64 / 1024.0,
            args.count,
            args.count * args.instances
        );
    }
    for g in peers.into_iter().flatten() {
        let _ = g.shutdown().await;
    }
    Ok(())
}
