//! The report: one row per scenario run, printed as a table and written as JSON.

use serde::Serialize;

/// One scenario run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Which repetition (long mode repeats scenarios).
    pub round: u32,
    /// The fault in words (victim, amount, hold time).
    pub fault: String,
    /// How long the fault was in place, in seconds.
    pub fault_s: f64,
    /// Wall time of the whole scenario (baseline, load, fault, healing, checks), in seconds.
    pub wall_s: f64,
    /// Acknowledged register writes.
    pub writes_acked: u64,
    /// Register writes with an unknown outcome (timeouts, errors during the fault).
    pub writes_unknown: u64,
    /// Acknowledged writes missing afterwards.
    pub writes_lost: u64,
    /// Linearizable reads checked.
    pub reads_checked: u64,
    /// Data-plane requests sent through the Envoys.
    pub dp_sent: u64,
    /// Data-plane requests that failed.
    pub dp_failed: u64,
    /// Fault start to a new leader (a claim in a higher term), in ms; absent when
    /// leadership did not change.
    pub new_leader_ms: Option<u64>,
    /// Fault start to the first acknowledged write invoked after it, in ms.
    pub first_write_ms: Option<u64>,
    /// From the end of the load (after healing) to every server, agent and Envoy agreeing, ms.
    pub converge_ms: Option<u64>,
    /// Backend kill to its address leaving every Envoy's endpoints, in ms.
    pub detect_ms: Option<u64>,
    /// Whether every check passed.
    pub pass: bool,
    /// Why not, and other observations.
    pub notes: Vec<String>,
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

/// The rows as a Markdown table (times in seconds).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | round | fault | fault s | wall s | writes acked | unknown | lost | reads checked | dp sent | dp failed | new leader s | first write s | converge s | detect s | result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.round,
            r.fault,
            r.fault_s,
            r.wall_s,
            r.writes_acked,
            r.writes_unknown,
            r.writes_lost,
            r.reads_checked,
            r.dp_sent,
            r.dp_failed,
            opt(r.new_leader_ms),
            opt(r.first_write_ms),
            opt(r.converge_ms),
            opt(r.detect_ms),
            if r.pass { "pass" } else { "FAIL" }
        ));
    }
    out
}

/// Totals over rows, in one line.
pub fn totals(rows: &[Row]) -> String {
    let sum = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    format!(
        "{} scenario runs, {} failed; writes acked {}, lost {}; reads checked {}; data plane {} sent, {} failed",
        rows.len(),
        rows.iter().filter(|r| !r.pass).count(),
        sum(|r| r.writes_acked),
        sum(|r| r.writes_lost),
        sum(|r| r.reads_checked),
        sum(|r| r.dp_sent),
        sum(|r| r.dp_failed),
    )
}
