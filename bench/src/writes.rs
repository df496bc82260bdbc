//! `shoal-bench writes` and `shoal-bench reads`: closed-loop benchmarks. Each client owns one
//! key and, back to back, updates it (`writes`) or reads it linearizably (`reads`); each run
//! stops by itself after `--seconds`.
//!
//! * shoal: a write updates the client's virtual node through the App Mesh REST API (one Raft
//!   commit, the log flushed to disk before the answer); a read describes it (`GET`, which is
//!   linearizable by default: a ReadIndex round through the leader).
//! * etcd, through its native gRPC API: a write is a `Put` of the very same bytes as shoal's
//!   request body (the ~560-byte JSON) at the client's key (WAL fsynced before the answer); a
//!   read is a `Range` of that key with etcd's default, linearizable consistency.
//!
//! Each client has its own connection (HTTP/1.1 to shoal, HTTP/2 to etcd). Both send every
//! request to the leader unless `--spread` is given. With `--target both`, every
//! configuration runs `--runs` times per system, the two alternating which goes first (see
//! [`crate::fair`]), and one table shows the medians with the ratio shoal/etcd, followed by
//! every run's figures.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::etcd::etcd_view;
use crate::fair::{self, Figures};
use crate::stats::percentile;
use crate::system::{
    base_url, control_http, cpus_allowed, host_port, node_spec, shoal_setup, shoal_view, Sink,
    System,
};

/// What `shoal-bench writes|reads` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Targets {
    /// shoal only (`--addr`).
    Shoal,
    /// etcd only (`--addr`).
    Etcd,
    /// shoal (`--addr`) and etcd (`--etcd-addr`), side by side.
    Both,
}

/// The operation a closed-loop client repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Update the client's key.
    Write,
    /// Read the client's key, linearizably.
    Read,
}

impl Op {
    /// The plural noun the output uses ("writes/s").
    fn noun(self) -> &'static str {
        match self {
            Op::Write => "writes",
            Op::Read => "reads",
        }
    }
}

/// `shoal-bench writes` and `shoal-bench reads`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// What to benchmark.
    #[arg(long, value_enum, default_value = "shoal")]
    pub target: Targets,
    /// Endpoints of the target, any member (repeatable; shoal's with `--target both`).
    /// Default: $SHOAL_ADDR or http://127.0.0.1:7070 for shoal, http://127.0.0.1:2379 for etcd.
    #[arg(long = "addr")]
    pub addr: Vec<String>,
    /// etcd endpoints with `--target both` (repeatable).
    #[arg(long = "etcd-addr")]
    pub etcd_addr: Vec<String>,
    /// Spread the clients over every member (round-robin) instead of sending to the leader.
    #[arg(long)]
    pub spread: bool,
    /// Concurrent clients (repeatable: one configuration per value).
    #[arg(long = "clients", default_values_t = vec![1, 16])]
    pub clients: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Runs of each configuration per system; the table shows their medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Mesh the shoal clients' virtual nodes live in (created if missing).
    #[arg(long, default_value = "bench")]
    pub mesh: String,
    /// An untimed run of this many seconds (16 clients) per system before the first
    /// measured one, so that connections, caches and files are warm.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

/// The body of the benchmark's `i`-th update: shoal gets it as the request, etcd as the value.
fn write_body(i: u64) -> Value {
    json!({ "spec": node_spec(i) })
}

/// Every client repeats `op` back to back through its own sink until `seconds` have passed.
async fn closed_loop(sinks: Vec<Sink>, seconds: u64, op: Op) -> anyhow::Result<Figures> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = sinks
        .into_iter()
        .map(|sink| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i: u64 = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    match op {
                        Op::Write => sink.write(write_body(i)).await,
                        Op::Read => sink.read().await,
                    }
                    .with_context(|| format!("{} failed during the benchmark", op.noun()))?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok(Figures {
        ops: all.len(),
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        max: all.last().copied().unwrap_or_default(),
    })
}

/// Where one system's clients send their requests.
struct Plan {
    system: System,
    /// Endpoint of client `c` is `endpoints[c % len]`.
    endpoints: Vec<String>,
}

async fn plan(
    http: &reqwest::Client,
    system: System,
    addrs: &[String],
    spread: bool,
) -> anyhow::Result<Plan> {
    let view = match system {
        System::Shoal => shoal_view(http, addrs).await?,
        System::Etcd => etcd_view(addrs).await,
    };
    let endpoints = if spread {
        if addrs.len() > 1 || view.all.is_empty() {
            addrs.iter().map(|a| base_url(a)).collect()
        } else {
            view.all.clone()
        }
    } else {
        vec![view
            .leader
            .with_context(|| format!("{system:?}: no leader is known"))?]
    };
    Ok(Plan { system, endpoints })
}

/// One run of `plan`'s system with `clients` clients. Each client's key exists before the
/// clock starts (shoal: its virtual node; etcd: the same body put at its key), so that reads
/// find what they read and the first write is an update on both.
async fn run_system(
    plan: &Plan,
    mesh: &str,
    clients: usize,
    seconds: u64,
    op: Op,
) -> anyhow::Result<Figures> {
    let names: Vec<String> = (0..clients).map(|c| format!("writer-{c}")).collect();
    let endpoint = |c: usize| plan.endpoints[c % plan.endpoints.len()].as_str();
    let mut sinks = Vec::with_capacity(clients);
    match plan.system {
        System::Shoal => {
            shoal_setup(endpoint(0), mesh, &names).await?;
            for (c, name) in names.iter().enumerate() {
                sinks.push(Sink::shoal(endpoint(c), mesh, name)?);
            }
        }
        System::Etcd => {
            for (c, name) in names.iter().enumerate() {
                let sink = Sink::etcd(endpoint(c), &format!("/bench/{mesh}/{name}")).await?;
                sink.write(write_body(0)).await?;
                sinks.push(sink);
            }
        }
    }
    closed_loop(sinks, seconds, op).await
}

/// `shoal-bench writes|reads`: `--runs` runs per `--clients` value and system, in the order
/// of [`fair::schedule`]; one table of medians, then every run.
pub async fn run(args: LoadArgs, op: Op) -> anyhow::Result<()> {
    let http = control_http()?;
    let default_shoal =
        || vec![std::env::var("SHOAL_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7070".into())];
    let or_default = |v: &Vec<String>, d: Vec<String>| if v.is_empty() { d } else { v.clone() };
    let (shoal_addrs, etcd_addrs) = match args.target {
        Targets::Shoal => (Some(or_default(&args.addr, default_shoal())), None),
        Targets::Etcd => (
            None,
            Some(or_default(&args.addr, vec!["http://127.0.0.1:2379".into()])),
        ),
        Targets::Both => {
            if args.etcd_addr.is_empty() {
                bail!("--target both needs the etcd endpoints in --etcd-addr");
            }
            (
                Some(or_default(&args.addr, default_shoal())),
                Some(args.etcd_addr.clone()),
            )
        }
    };
    let mut plans = Vec::new();
    if let Some(a) = &shoal_addrs {
        plans.push(plan(&http, System::Shoal, a, args.spread).await?);
    }
    if let Some(a) = &etcd_addrs {
        plans.push(plan(&http, System::Etcd, a, args.spread).await?);
    }
    let size = serde_json::to_vec(&write_body(1))?.len();
    let noun = op.noun();
    let what = match op {
        Op::Write => format!(
            "closed-loop writes: each client updates its own key with a {size}-byte JSON body \
             (shoal: App Mesh PUT of a virtual node; etcd: gRPC Put of the same bytes)"
        ),
        Op::Read => format!(
            "closed-loop linearizable reads: each client reads its own key, {size} bytes of JSON \
             (shoal: App Mesh GET, ReadIndex; etcd: gRPC Range, default linearizable)"
        ),
    };
    println!("{what}");
    println!(
        "{} s per run, {} run(s) per configuration and system, medians shown; {}; \
         one connection per client; {}",
        args.seconds,
        args.runs,
        if plans.len() > 1 {
            "the systems alternate which runs first (ABBA)"
        } else {
            "one system"
        },
        if args.spread {
            "clients spread over every member"
        } else {
            "every client sends to the leader"
        }
    );
    println!(
        "this client runs on CPUs {}",
        cpus_allowed("self").unwrap_or_else(|| "?".into())
    );
    for p in &plans {
        println!(
            "  {:?}: {}",
            p.system,
            p.endpoints
                .iter()
                .map(|e| host_port(e))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.warmup > 0 {
        for p in &plans {
            run_system(p, &args.mesh, 16, args.warmup, op)
                .await
                .with_context(|| format!("{:?}: warm-up", p.system))?;
        }
    }
    let systems: Vec<System> = plans.iter().map(|p| p.system).collect();
    let mut results = Vec::new();
    for slot in fair::schedule(&args.clients, args.runs as usize, &systems) {
        let p = plans
            .iter()
            .find(|p| p.system == slot.system)
            .expect("the schedule names only planned systems");
        let f = run_system(p, &args.mesh, slot.clients, args.seconds, op)
            .await
            .with_context(|| {
                format!(
                    "{:?} with {} clients, run {}",
                    slot.system,
                    slot.clients,
                    slot.run + 1
                )
            })?;
        results.push((slot, f));
    }
    let rows = fair::collect(results);
    print!("{}", fair::table(&rows, noun));
    println!("every run, in the order run (* = ran first of its pair):");
    print!("{}", fair::details(&rows, noun));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_body_is_about_600_bytes() {
        let n = serde_json::to_vec(&write_body(123)).unwrap().len();
        assert!((500..800).contains(&n), "{n}");
    }

    #[test]
    fn each_write_differs_from_the_last() {
        // A write that repeated the stored value could be cheaper on one system than the other.
        assert_ne!(write_body(1), write_body(2));
    }
}
