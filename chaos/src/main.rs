//! `shoal-chaos`: runs the chaos suite and prints its report.
//!
//! ```text
//! shoal-chaos --quick                                   # every scenario once (CI, < 10 min)
//! shoal-chaos --long --seed 42 --duration 30m           # random scenarios and timing, replayable
//! shoal-chaos --only kill-leader --only delay           # just these, once each
//! ```
//!
//! `SHOAL_CHAOS_LONG=1` means `--long`, `SHOAL_CHAOS_SEED` gives the seed. The report (a
//! Markdown table and `report.json`) and every process's log go to `--out` (default
//! `target/chaos/<mode>-<time>`). Exits 1 when any scenario failed. Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use shoal_chaos::harness::{Binaries, Harness};
use shoal_chaos::report::{table, totals, Row};
use shoal_chaos::scenario::{self, Scenario, Timing};

#[derive(Debug, Parser)]
#[command(name = "shoal-chaos", about = "The shoal chaos suite")]
struct Args {
    /// Every scenario once with fixed timing (the default unless --long).
    #[arg(long)]
    quick: bool,
    /// Scenarios in random order with random timing until --duration is used up.
    #[arg(long, env = "SHOAL_CHAOS_LONG", value_parser = clap::builder::FalseyValueParser::new())]
    long: bool,
    /// Seed for the fault schedule (random when absent; printed for replay).
    #[arg(long, env = "SHOAL_CHAOS_SEED")]
    seed: Option<u64>,
    /// Long mode's length: `90s`, `30m`, `1h`.
    #[arg(long, default_value = "30m")]
    duration: String,
    /// Only these scenarios (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Where the report and the logs go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Servers in the Raft cluster: 3 (the default) or 5.
    #[arg(long, default_value_t = 3)]
    servers: u64,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad duration unit in {s:?} (s, m, h)"),
    }))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_CHAOS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !matches!(args.servers, 3 | 5) {
        bail!("--servers is 3 or 5, not {}", args.servers);
    }
    let long = args.long && !args.quick;
    let mut only = Vec::new();
    for n in &args.only {
        only.push(Scenario::parse(n).with_context(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("unknown scenario {n:?}; known: {names:?}")
        })?);
    }
    let scenarios = if only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        only
    };
    let duration = parse_duration(&args.duration)?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    if let Err(e) = shoal_chaos::net::preflight() {
        bail!("the chaos suite cannot run here: {e}");
    }
    let bins = Binaries::locate().map_err(|e| anyhow::anyhow!(e))?;
    for stale in shoal_chaos::net::sweep_stale() {
        tracing::info!(%stale, "removed a namespace or interface left by an earlier run");
    }
    shoal_chaos::install_interrupt_handler().context("install the signal handler")?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mode = if long { "long" } else { "quick" };
    let out = args.out.unwrap_or_else(|| {
        shoal_e2e::workspace_root()
            .join("target/chaos")
            .join(format!("{mode}-{stamp}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    println!(
        "shoal-chaos: {mode} mode, seed {seed} (replay: --{mode} --seed {seed}), output in {}",
        out.display()
    );
    let started = Instant::now();
    let subnet = (std::process::id() % 200) as u8 + 20;
    // A fresh system every run: data from an earlier run names other addresses.
    let run_dir = out.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("remove the earlier run in {}", run_dir.display()))?;
    }
    let mut harness = match Harness::start(&run_dir, subnet, &bins, args.servers) {
        Ok(h) => h,
        Err(e) => bail!("the system did not start: {e}"),
    };
    println!("system up in {:.1} s", started.elapsed().as_secs_f64());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let epoch = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut last_final = None;
    let mut round = 0;
    let deadline = started + duration;
    'rounds: loop {
        round += 1;
        let mut order = scenarios.clone();
        if long {
            order.shuffle(&mut rng);
        }
        for sc in order {
            if shoal_chaos::interrupted() || (long && Instant::now() > deadline) {
                break 'rounds;
            }
            println!("== {} (round {round})", sc.name());
            let row = scenario::run(
                &mut harness,
                sc,
                round,
                Timing { random: long },
                &mut rng,
                epoch,
                &mut last_final,
            );
            println!(
                "   {} in {:.1} s: {}; writes acked {} lost {}; reads {}; data plane {} sent {} failed{}",
                if row.pass { "pass" } else { "FAIL" },
                row.wall_s,
                row.fault,
                row.writes_acked,
                row.writes_lost,
                row.reads_checked,
                row.dp_sent,
                row.dp_failed,
                if row.notes.is_empty() {
                    String::new()
                } else {
                    format!("\n   notes: {}", row.notes.join("\n          "))
                }
            );
            rows.push(row);
            write_report(&out, mode, seed, started, &rows)?;
        }
        if !long {
            break;
        }
    }
    drop(harness);
    let report = write_report(&out, mode, seed, started, &rows)?;
    println!("\n{report}");
    if shoal_chaos::interrupted() {
        bail!("interrupted");
    }
    if rows.is_empty() || rows.iter().any(|r| !r.pass) {
        bail!("the chaos suite failed (report in {})", out.display());
    }
    Ok(())
}

/// Writes `report.json` and `report.md`; returns the Markdown.
fn write_report(
    out: &std::path::Path,
    mode: &str,
    seed: u64,
    started: Instant,
    rows: &[Row],
) -> anyhow::Result<String> {
    let wall = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "mode": mode, "seed": seed, "wall_s": wall, "rows": rows,
        "pass": !rows.is_empty() && rows.iter().all(|r| r.pass),
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let md = format!(
        "shoal chaos suite, {mode} mode, seed {seed}, wall time {wall:.0} s\n\n{}\n{}\n",
        table(rows),
        totals(rows)
    );
    std::fs::write(out.join("report.md"), &md)?;
    Ok(md)
}
