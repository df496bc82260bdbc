//! How fast the endpoint view converges, with N gossip members in one process on 127.0.0.1
//! and the DEFAULT settings of `GossipConfig::new` (gossip interval, phi threshold).
//!
//! ```text
//! cargo bench -p shoal-gossip --bench convergence                 # N = 10, 50, 100
//! cargo bench -p shoal-gossip --bench convergence -- 10 50 100 --rounds 20
//! ```
//!
//! Every member publishes one instance, all are seeded from the first three. Each round then
//! measures, for every member, the time from
//!
//! * **registration**: `publish_instance` on one member until the instance is in that member's
//!   `endpoints()`;
//! * **withdrawal**: `withdraw_instance` until it is gone from that member's view;
//! * **death**: a host crashes (its member is dropped: no shutdown; chitchat 0.13 sends no leave
//!   message anyway) until its instance is gone from that member's view (failure detection);
//!
//! and the crashed host is restarted (same name and port, new generation) before the next
//! round. Views are checked the way a consumer would use them: each member's
//! `subscribe_endpoints()` is polled every 10 ms and `endpoints()` read when it changed, so
//! the figures have a 10 ms resolution and include the time the members' own tasks take to
//! notice and rebuild their views. All members share one process (and, here, 2 cores), so a
//! large N also measures CPU contention that a real deployment spreads over N hosts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant as Clock};

use shoal_gossip::{Error, Gossip, GossipConfig, NodeMeta, Role};
use shoal_model::discovery::Instance;
use tokio::sync::watch;

const POLL: Duration = Duration::from_millis(10);
const EVENT_LIMIT: Duration = Duration::from_secs(30);
const SEEDS: usize = 3;

/// `n` distinct UDP ports that were free a moment ago (all held at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind :0"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn name(i: usize) -> String {
    format!("host-{i:03}")
}

fn instance(service: &str, id: &str, i: usize) -> Instance {
    Instance {
        namespace: "bench.local".into(),
        service: service.into(),
        mesh: String::new(),
        virtual_node: String::new(),
        id: id.into(),
        address: format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
        port: 8080,
        attributes: BTreeMap::from([("AZ".to_string(), "eu-west-1a".to_string())]),
    }
}

struct Cluster {
    id: String,
    ports: Vec<u16>,
    members: Vec<Option<Gossip>>,
    epochs: Vec<Option<watch::Receiver<u64>>>,
}

impl Cluster {
    fn config(&self, i: usize) -> GossipConfig {
        GossipConfig {
            cluster_id: self.id.clone(),
            seeds: (0..SEEDS.min(self.ports.len()))
                .filter(|s| *s != i)
                .map(|s| addr(self.ports[s]).to_string())
                .collect(),
            ..GossipConfig::new(name(i), addr(self.ports[i]))
        }
    }

    /// Starts member `i` (retrying while a crashed predecessor still holds the port) and
    /// publishes its instance.
    async fn start_member(&mut self, i: usize) {
        let deadline = Clock::now() + Duration::from_secs(10);
        let gossip = loop {
            match Gossip::start(self.config(i), NodeMeta::new(Role::Agent, "bench")).await {
                Ok(gossip) => break gossip,
                Err(Error::Start { .. }) if Clock::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(err) => panic!("start {}: {err}", name(i)),
            }
        };
        gossip
            .publish_instance(&instance("svc", &name(i), i), true)
            .await
            .expect("publish");
        self.epochs[i] = Some(gossip.subscribe_endpoints());
        self.members[i] = Some(gossip);
    }

    async fn start(n: usize) -> Cluster {
        let mut cluster = Cluster {
            id: format!("bench-{n}-{}", std::process::id()),
            ports: free_ports(n),
            members: (0..n).map(|_| None).collect(),
            epochs: (0..n).map(|_| None).collect(),
        };
        // Spread the starts over one gossip interval: members started in the same instant
        // would run their rounds in lockstep, which no real cluster does.
        let interval = GossipConfig::new("x", addr(1)).gossip_interval;
        for i in 0..n {
            cluster.start_member(i).await;
            tokio::time::sleep(interval / n as u32).await;
        }
        cluster
    }

    /// Waits until every member lists `n` members and `n + extra` endpoints.
    async fn settle(&self, extra: usize, limit: Duration) -> Result<Duration, String> {
        let n = self.members.len();
        let start = Clock::now();
        loop {
            let lagging = self
                .members
                .iter()
                .flatten()
                .filter(|m| m.members().len() != n || m.endpoints().len() != n + extra)
                .count();
            if lagging == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{lagging} of {n} members still lag after {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls every member but `skip` until `done` holds for its view; returns the per-member
    /// latencies from `t0` (members that never got there within the limit are reported).
    async fn observe(
        &mut self,
        t0: Clock,
        skip: Option<usize>,
        done: impl Fn(&Gossip) -> bool,
    ) -> (Vec<Duration>, usize) {
        let n = self.members.len();
        let mut latency: Vec<Option<Duration>> = vec![None; n];
        let mut pending: Vec<usize> = (0..n).filter(|i| Some(*i) != skip).collect();
        // Every view is read once (a member may already be there), then only when it changed.
        let mut first = true;
        loop {
            let now = Clock::now();
            pending.retain(|&i| {
                let (Some(member), Some(epoch)) = (&self.members[i], &mut self.epochs[i]) else {
                    return false;
                };
                if first || epoch.has_changed().unwrap_or(false) {
                    epoch.borrow_and_update();
                    if done(member) {
                        latency[i] = Some(now - t0);
                        return false;
                    }
                }
                true
            });
            first = false;
            if pending.is_empty() || now - t0 > EVENT_LIMIT {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        (latency.into_iter().flatten().collect(), pending.len())
    }

    async fn shutdown(self) {
        for member in self.members.into_iter().flatten() {
            let _ = member.shutdown().await;
        }
    }
}

#[derive(Default)]
struct Samples {
    per_member: Vec<Duration>,
    every_member: Vec<Duration>,
    missed: usize,
}

impl Samples {
    fn add(&mut self, (latencies, missed): (Vec<Duration>, usize)) {
        if missed == 0 {
            if let Some(max) = latencies.iter().max() {
                self.every_member.push(*max);
            }
        }
        self.missed += missed;
        self.per_member.extend(latencies);
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn run(n: usize, rounds: usize) -> Vec<(usize, &'static str, Samples)> {
    assert!(n > SEEDS, "N must be larger than the {SEEDS} seeds");
    let started = Clock::now();
    let mut cluster = Cluster::start(n).await;
    match cluster.settle(0, Duration::from_secs(120)).await {
        Ok(took) => eprintln!(
            "N={n}: cluster formed, {n} endpoints everywhere {} after the last start ({} in all)",
            secs(took),
            secs(started.elapsed())
        ),
        Err(err) => eprintln!("N={n}: cluster did not fully form: {err}"),
    }
    let mut registration = Samples::default();
    let mut withdrawal = Samples::default();
    let mut death = Samples::default();
    for round in 0..rounds {
        // Registration and withdrawal on a member that varies with the round.
        let publisher = (round * 7 + 1) % n;
        let inst = instance("reg", &format!("reg-{round}"), publisher);
        let key = inst.key();
        let t0 = Clock::now();
        let member = cluster.members[publisher].as_ref().expect("member up");
        member.publish_instance(&inst, true).await.expect("publish");
        let id = inst.id.clone();
        registration.add(
            cluster
                .observe(t0, None, |m| {
                    m.endpoints().iter().any(|e| e.instance.id == id)
                })
                .await,
        );
        let t0 = Clock::now();
        let member = cluster.members[publisher].as_ref().expect("member up");
        member.withdraw_instance(&key).await.expect("withdraw");
        withdrawal.add(
            cluster
                .observe(t0, None, |m| {
                    !m.endpoints().iter().any(|e| e.instance.id == id)
                })
                .await,
        );

        // Crash a non-seed host, wait for its instance to leave every view, restart it.
        let victim = SEEDS + round % (n - SEEDS);
        let host = name(victim);
        drop(cluster.members[victim].take());
        cluster.epochs[victim] = None;
        let t0 = Clock::now();
        death.add(
            cluster
                .observe(t0, Some(victim), |m| {
                    !m.endpoints().iter().any(|e| e.host == host)
                })
                .await,
        );
        cluster.start_member(victim).await;
        if let Err(err) = cluster.settle(0, Duration::from_secs(60)).await {
            eprintln!("N={n} round {round}: after the restart, {err}");
        }
    }
    cluster.shutdown().await;
    vec![
        (n, "registration", registration),
        (n, "withdrawal", withdrawal),
        (n, "death", death),
    ]
}

fn main() {
    let mut sizes = Vec::new();
    let mut rounds = 10;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|r| r.parse().ok())
                .expect("--rounds takes a number");
        } else if let Ok(n) = arg.parse::<usize>() {
            sizes.push(n);
        }
        // Anything else (cargo passes --bench) is ignored.
    }
    if sizes.is_empty() {
        sizes = vec![10, 50, 100];
    }
    let defaults = GossipConfig::new("x", addr(1));
    eprintln!(
        "defaults: gossip interval {:?}, phi threshold {}; {rounds} rounds per N; {} cores",
        defaults.gossip_interval,
        defaults.phi_threshold,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    for n in sizes {
        results.extend(runtime.block_on(run(n, rounds)));
    }

    println!();
    println!(
        "{:>5}  {:<13} {:>8} {:>7} {:>7} {:>7} | {:>14} {:>7} {:>7}",
        "N", "event", "samples", "p50", "p99", "max", "every member:", "p50", "max"
    );
    for (n, event, mut samples) in results {
        samples.per_member.sort();
        samples.every_member.sort();
        let missed = if samples.missed > 0 {
            format!(
                "  ({} member views never converged within {EVENT_LIMIT:?})",
                samples.missed
            )
        } else {
            String::new()
        };
        println!(
            "{:>5}  {:<13} {:>8} {:>7} {:>7} {:>7} | {:>14} {:>7} {:>7}{missed}",
            n,
            event,
            samples.per_member.len(),
            secs(percentile(&samples.per_member, 0.5)),
            secs(percentile(&samples.per_member, 0.99)),
            secs(samples.per_member.last().copied().unwrap_or_default()),
            samples.every_member.len(),
            secs(percentile(&samples.every_member, 0.5)),
            secs(samples.every_member.last().copied().unwrap_or_default()),
        );
    }
    println!();
    println!("process RSS at the end: {}", rss());
}
