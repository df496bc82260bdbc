//! `shoal-bench writes`: a closed-loop write benchmark. Each client owns one key and updates
//! it back to back; each run stops by itself after `--seconds`. Against shoal a write updates a
//! virtual node through the App Mesh API (one Raft commit, the log flushed to disk before the
//! answer); against etcd it is a put of the very same bytes (the ~600-byte JSON body) through
//! etcd's v3 JSON gateway. Both send every write to the leader unless `--spread` is given.
//! `--target both` alternates the two systems at each concurrency and prints one table with the
//! ratio shoal/etcd.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::etcd::{etcd_prefix, etcd_view};
use crate::stats::{ms, percentile};
use crate::system::{
    base_url, control_http, host_port, node_spec, shoal_setup, shoal_view, Sink, System,
};

/// What `shoal-bench writes` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Targets {
    /// shoal only (`--addr`).
    Shoal,
    /// etcd only (`--addr`).
    Etcd,
    /// shoal (`--addr`) and etcd (`--etcd-addr`), side by side.
    Both,
}

/// `shoal-bench writes`.
#[derive(Debug, Args)]
pub struct WriteBenchArgs {
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
    /// Spread the clients over every member (round-robin) instead of writing to the leader.
    #[arg(long)]
    pub spread: bool,
    /// Concurrent clients (repeatable: one run per value).
    #[arg(long = "clients", default_values_t = vec![1, 16])]
    pub clients: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Mesh the shoal writers' virtual nodes live in (created if missing).
    #[arg(long, default_value = "bench")]
    pub mesh: String,
    /// An untimed run of this many seconds (16 clients) per system before the first
    /// measured one, so that connections, caches and files are warm.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
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

/// The body of the benchmark's `i`-th update: shoal gets it as the request, etcd as the value.
fn write_body(i: u64) -> Value {
    json!({ "spec": node_spec(i) })
}

/// Every client writes back to back through its own sink until `seconds` have passed.
async fn closed_loop(sinks: Vec<Sink>, seconds: u64) -> anyhow::Result<Figures> {
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
                    sink.write(write_body(i))
                        .await
                        .context("write failed during the benchmark")?;
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
        writes: all.len(),
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        max: all.last().copied().unwrap_or_default(),
    })
}

/// Where one system's clients send their writes.
struct Plan {
    system: System,
    /// Endpoint of client `c` is `endpoints[c % len]`.
    endpoints: Vec<String>,
    /// etcd's API prefix.
    prefix: String,
}

async fn plan(
    http: &reqwest::Client,
    system: System,
    addrs: &[String],
    spread: bool,
) -> anyhow::Result<Plan> {
    let (view, prefix) = match system {
        System::Shoal => (shoal_view(http, addrs).await?, String::new()),
        System::Etcd => {
            let prefix = etcd_prefix(http, &addrs[0]).await?;
            (etcd_view(http, addrs, &prefix).await, prefix)
        }
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
    Ok(Plan {
        system,
        endpoints,
        prefix,
    })
}

/// One run of `plan`'s system with `clients` writers.
async fn run_system(
    plan: &Plan,
    mesh: &str,
    clients: usize,
    seconds: u64,
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
                sinks.push(Sink::etcd(
                    endpoint(c),
                    &plan.prefix,
                    &format!("/bench/{mesh}/{name}"),
                )?);
            }
        }
    }
    closed_loop(sinks, seconds).await
}

/// The `writes` table: one row per concurrency, a column group per system that ran, and the
/// ratios shoal/etcd when both did.
pub fn write_table(rows: &[(usize, Option<Figures>, Option<Figures>)]) -> String {
    let has_shoal = rows.iter().any(|r| r.1.is_some());
    let has_etcd = rows.iter().any(|r| r.2.is_some());
    let both = has_shoal && has_etcd;
    let mut header = vec!["clients".to_string()];
    for (name, present) in [("shoal", has_shoal), ("etcd", has_etcd)] {
        if present {
            for col in ["writes/s", "p50_ms", "p99_ms", "max_ms"] {
                header.push(format!("{name}_{col}"));
            }
        }
    }
    if both {
        header.push("ratio_writes/s".into());
        header.push("ratio_p99".into());
    }
    let mut table = vec![header];
    for (n, s, e) in rows {
        let mut row = vec![n.to_string()];
        for (f, present) in [(s, has_shoal), (e, has_etcd)] {
            if !present {
                continue;
            }
            match f {
                Some(f) => {
                    row.push(format!("{:.0}", f.per_second));
                    row.push(format!("{:.2}", ms(f.p50)));
                    row.push(format!("{:.2}", ms(f.p99)));
                    row.push(format!("{:.2}", ms(f.max)));
                }
                None => row.extend(std::iter::repeat_n("-".to_string(), 4)),
            }
        }
        if both {
            match (s, e) {
                (Some(s), Some(e)) if e.per_second > 0.0 && !e.p99.is_zero() => {
                    row.push(format!("{:.2}", s.per_second / e.per_second));
                    row.push(format!("{:.2}", s.p99.as_secs_f64() / e.p99.as_secs_f64()));
                }
                _ => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        table.push(row);
    }
    let mut out = String::new();
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &table {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// `shoal-bench writes`: one run per `--clients` value (per system), one table.
pub async fn writes(args: WriteBenchArgs) -> anyhow::Result<()> {
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
    println!(
        "closed-loop writes, {size}-byte JSON body per write, {} s per run, {}",
        args.seconds,
        if args.spread {
            "clients spread over every member"
        } else {
            "every client writes to the leader"
        }
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
            run_system(p, &args.mesh, 16, args.warmup)
                .await
                .with_context(|| format!("{:?}: warm-up", p.system))?;
        }
    }
    let mut rows = Vec::new();
    for &n in &args.clients {
        let mut row = (n, None, None);
        for p in &plans {
            let f = run_system(p, &args.mesh, n, args.seconds)
                .await
                .with_context(|| format!("{:?} with {n} clients", p.system))?;
            match p.system {
                System::Shoal => row.1 = Some(f),
                System::Etcd => row.2 = Some(f),
            }
        }
        rows.push(row);
    }
    print!("{}", write_table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compares_both_systems() {
        let f = |w: usize, p99: u64| Figures {
            writes: w,
            per_second: w as f64,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99),
            max: Duration::from_millis(p99),
        };
        let t = write_table(&[(1, Some(f(100, 4)), Some(f(200, 2)))]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("ratio_writes/s  ratio_p99"), "{t}");
        assert!(lines[1].ends_with("0.50       2.00"), "{t}");
        let only = write_table(&[(16, Some(f(100, 4)), None)]);
        assert!(!only.contains("etcd") && !only.contains("ratio"), "{only}");
    }

    #[test]
    fn the_write_body_is_about_600_bytes() {
        let n = serde_json::to_vec(&write_body(123)).unwrap().len();
        assert!((500..800).contains(&n), "{n}");
    }
}
