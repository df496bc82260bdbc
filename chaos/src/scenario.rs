//! The scenarios: each injects one fault while the workload runs, heals it, and checks the
//! history and the system's state.
//!
//! Why one function per phase: every scenario follows the same steps (baseline healthy and
//! converged → initial register reads → load → fault → heal → load stops → convergence →
//! final reads → checks), so the fault itself is the only part that differs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::checks::{check_registers, check_terms, Snapshot};
use crate::harness::{
    agent_revision, config_matches, envoy_lists, poll, read_register, Harness, HarnessError,
    DETECTION_BOUND, REGISTERS,
};
use crate::report::Row;
use crate::workload::{now_ns, Recorded, Switches, Targets, Workload};

/// Every fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// kill -9 of the leader, restarted after the hold.
    KillLeader,
    /// kill -9 of a follower, restarted after the hold.
    KillFollower,
    /// SIGSTOP of the leader, SIGCONT after the hold.
    PauseLeader,
    /// A follower cut off from every other host (the majority keeps going).
    PartitionMinority,
    /// The leader cut off from every other host (the majority elects another).
    PartitionLeader,
    /// Random packet loss on the leader's link.
    PacketLoss,
    /// Added latency on every server-to-server and agent-to-server connection.
    Delay,
    /// Every server killed at once, restarted after the hold.
    AllServersDown,
    /// Every server down, an agent killed and restarted (it must serve its cached model).
    AgentRestartServersDown,
    /// Every server down, an Envoy restarted (it must get its whole config from its agent).
    EnvoyRestartServersDown,
    /// A backend instance killed (it must leave every Envoy's endpoints in time).
    BackendKill,
    /// Every server restarted (SIGTERM), one at a time.
    RollingRestart,
    /// A follower's data directory wiped; the server rejoins as a new member.
    WipeRejoin,
    /// Automatic mTLS (a mesh tagged `shoal:mtls` = `STRICT`): every server killed, a caller
    /// sidecar restarted; it must get its certificate and configuration from its agent and
    /// call the vaults over mutual TLS again, while the other caller never fails.
    MtlsServersDown,
}

impl Scenario {
    /// Every scenario, in the order quick mode runs them.
    pub const ALL: [Scenario; 14] = [
        Scenario::KillLeader,
        Scenario::KillFollower,
        Scenario::PauseLeader,
        Scenario::PartitionMinority,
        Scenario::PartitionLeader,
        Scenario::PacketLoss,
        Scenario::Delay,
        Scenario::AllServersDown,
        Scenario::AgentRestartServersDown,
        Scenario::EnvoyRestartServersDown,
        Scenario::BackendKill,
        Scenario::RollingRestart,
        Scenario::WipeRejoin,
        Scenario::MtlsServersDown,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLeader => "kill-leader",
            Scenario::KillFollower => "kill-follower",
            Scenario::PauseLeader => "pause-leader",
            Scenario::PartitionMinority => "partition-minority",
            Scenario::PartitionLeader => "partition-leader",
            Scenario::PacketLoss => "packet-loss",
            Scenario::Delay => "delay",
            Scenario::AllServersDown => "all-servers-down",
            Scenario::AgentRestartServersDown => "agent-restart-servers-down",
            Scenario::EnvoyRestartServersDown => "envoy-restart-servers-down",
            Scenario::BackendKill => "backend-kill",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::WipeRejoin => "wipe-rejoin",
            Scenario::MtlsServersDown => "mtls-servers-down",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How a run times its faults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Long mode: random hold times, victims and amounts (from the seed).
    pub random: bool,
}

/// What the fault phase observed, for the row.
#[derive(Debug, Default)]
struct FaultOutcome {
    fault: String,
    hold: Duration,
    notes: Vec<String>,
    failures: Vec<String>,
    detect_ms: Option<u64>,
    /// Data-plane requests sent before this time (ns) may fail (the backend-kill window).
    dp_grace_until: Option<u64>,
}

/// Runs one scenario and returns its row (never panics on a failed check: that is a FAIL row).
pub fn run(
    h: &mut Harness,
    sc: Scenario,
    round: u32,
    timing: Timing,
    rng: &mut StdRng,
    epoch: Instant,
    last_final: &mut Option<Vec<u64>>,
) -> Row {
    let started = Instant::now();
    let mut row = Row {
        scenario: sc.name().into(),
        round,
        ..Default::default()
    };
    // The automatic-mTLS mesh is started before its scenario's baseline, once.
    let ready = if sc == Scenario::MtlsServersDown {
        h.ensure_secure()
    } else {
        Ok(())
    };
    match ready.and_then(|()| run_inner(h, sc, timing, rng, epoch, last_final, &mut row)) {
        Ok(()) => {}
        Err(e) => {
            row.notes.push(format!("error: {e}"));
            row.pass = false;
        }
    }
    row.wall_s = started.elapsed().as_secs_f64();
    if !row.pass {
        row.notes.push(format!("logs in {}", h.dir.display()));
        tracing::warn!(scenario = sc.name(), "failed:\n{}", h.log_tails(15));
    }
    row
}

fn read_all(h: &Harness, epoch: Instant) -> Result<Vec<Snapshot>, HarnessError> {
    let mut out = Vec::new();
    for i in 0..REGISTERS {
        let snap = poll(
            &format!("a linearizable read of reg-{i}"),
            Duration::from_secs(30),
            || {
                let leader = h.leader().ok_or("no leader")?;
                let api = h.servers[&leader].api();
                let invoke = now_ns(epoch);
                let value = read_register(api, i, Duration::from_secs(5))?;
                Ok(Snapshot {
                    value,
                    invoke,
                    complete: now_ns(epoch),
                })
            },
        )?;
        out.push(snap);
    }
    Ok(out)
}

fn run_inner(
    h: &mut Harness,
    sc: Scenario,
    timing: Timing,
    rng: &mut StdRng,
    epoch: Instant,
    last_final: &mut Option<Vec<u64>>,
    row: &mut Row,
) -> Result<(), HarnessError> {
    h.heal_everything(Duration::from_secs(120))?;
    let leader_before = h.wait_leader(Duration::from_secs(30))?;
    let term_before = h
        .statuses()
        .into_iter()
        .filter_map(|(_, s)| s.map(|s| s.term))
        .max()
        .unwrap_or(0);
    let initial = read_all(h, epoch)?;
    let mut lost_between = Vec::new();
    if let Some(prev) = last_final.as_ref() {
        for (i, (p, now)) in prev.iter().zip(&initial).enumerate() {
            if *p != now.value {
                lost_between.push(format!(
                    "reg-{i} was {p} at the end of the previous scenario and is {} now",
                    now.value
                ));
            }
        }
    }
    let sw = Arc::new(Switches::default());
    let targets = Targets {
        servers: h.servers.values().map(|s| (s.id, s.api())).collect(),
        egress: h.agents.iter().map(|a| a.egress()).collect(),
    };
    let wl = Workload::start(&targets, epoch, rng.random(), sw.clone());
    let warmup = if timing.random {
        Duration::from_millis(rng.random_range(500..4000))
    } else {
        Duration::from_secs(2)
    };
    sleep(warmup);
    let t0 = now_ns(epoch);
    let fault = inject(h, sc, timing, rng, leader_before, &sw, epoch);
    let heal_ns = now_ns(epoch);
    // Let the load run on the healed system a little, so recovery shows in the history.
    sleep(Duration::from_secs(2));
    let rec = wl.stop();
    let fault = match fault {
        Ok(f) => f,
        Err(e) => {
            row.notes.push(format!("fault phase: {e}"));
            FaultOutcome {
                failures: vec![e.to_string()],
                ..Default::default()
            }
        }
    };
    let conv_start = Instant::now();
    let converged = h.heal_everything(Duration::from_secs(120));
    let converge_ms = conv_start.elapsed().as_millis() as u64;
    let finals = match converged {
        Ok(_) => read_all(h, epoch)?,
        Err(e) => {
            row.notes.push(format!("no convergence: {e}"));
            row.fault = fault.fault;
            row.pass = false;
            return Ok(());
        }
    };
    *last_final = Some(finals.iter().map(|s| s.value).collect());
    fill(
        row,
        &rec,
        &initial,
        &finals,
        t0,
        term_before,
        &fault,
        heal_ns,
    );
    if !row.pass {
        dump_history(h, row, &rec, &initial, &finals, t0, heal_ns);
    }
    row.converge_ms = Some(converge_ms);
    row.writes_lost += lost_between.len() as u64;
    row.notes.extend(lost_between.iter().cloned());
    row.notes.extend(fault.notes.iter().cloned());
    row.notes.extend(fault.failures.iter().cloned());
    row.pass = row.pass && fault.failures.is_empty() && lost_between.is_empty();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fill(
    row: &mut Row,
    rec: &Recorded,
    initial: &[Snapshot],
    finals: &[Snapshot],
    t0: u64,
    term_before: u64,
    fault: &FaultOutcome,
    heal_ns: u64,
) {
    row.fault = fault.fault.clone();
    row.fault_s = fault.hold.as_secs_f64();
    let reg = check_registers(initial, &rec.ops, finals);
    row.writes_acked = reg.acked;
    row.writes_unknown = reg.unknown;
    row.writes_lost = reg.lost.len() as u64;
    row.reads_checked = reg.reads;
    row.dp_sent = rec.reqs.len() as u64;
    let grace = fault.dp_grace_until.unwrap_or(0);
    let failed: Vec<_> = rec.reqs.iter().filter(|r| !r.ok).collect();
    row.dp_failed = failed.len() as u64;
    let counted: Vec<_> = failed.iter().filter(|r| r.at >= grace).collect();
    let terms = check_terms(&rec.samples);
    row.new_leader_ms = rec
        .samples
        .iter()
        .filter(|s| s.at >= t0 && s.term > term_before && s.leader == Some(s.node))
        .map(|s| (s.at - t0) / 1_000_000)
        .min();
    row.first_write_ms = rec
        .ops
        .iter()
        .filter(|o| o.write && o.invoke >= t0)
        .filter_map(|o| o.complete)
        .map(|c| (c - t0) / 1_000_000)
        .min();
    let _ = heal_ns;
    row.detect_ms = fault.detect_ms;
    let mut pass = true;
    for l in reg.lost.iter().take(5) {
        row.notes.push(format!("LOST {l}"));
    }
    for v in reg.violations.iter().take(5) {
        row.notes.push(format!("NOT LINEARIZABLE {v}"));
    }
    if !reg.undecided.is_empty() {
        row.notes.push(format!(
            "linearizability undecided for registers {:?}",
            reg.undecided
        ));
    }
    for t in &terms {
        row.notes.push(format!("TWO LEADERS {t}"));
    }
    if !counted.is_empty() {
        let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
        for r in &counted {
            let k: String = r.answer.chars().take(90).collect();
            *kinds
                .entry(format!("envoy-{}: {k}", r.envoy + 1))
                .or_default() += 1;
        }
        row.notes
            .push(format!("DATA-PLANE FAILURES {}: {kinds:?}", counted.len()));
        pass = false;
    }
    if failed.len() > counted.len() {
        row.notes.push(format!(
            "{} data-plane failures before the dead backend was detected (allowed)",
            failed.len() - counted.len()
        ));
    }
    if rec.reqs.is_empty() {
        row.notes.push("no data-plane request was sent".into());
        pass = false;
    }
    if reg.acked == 0 {
        row.notes.push("no write was acknowledged".into());
        pass = false;
    }
    pass &= reg.lost.is_empty()
        && reg.violations.is_empty()
        && reg.undecided.is_empty()
        && terms.is_empty();
    row.pass = pass;
}

/// Writes a failed scenario's history next to the logs, for replay and diagnosis.
fn dump_history(
    h: &Harness,
    row: &mut Row,
    rec: &Recorded,
    initial: &[Snapshot],
    finals: &[Snapshot],
    t0: u64,
    heal_ns: u64,
) {
    let ops: Vec<_> = rec
        .ops
        .iter()
        .map(|o| {
            serde_json::json!({"register": o.register, "write": o.write, "value": o.value,
                "invoke": o.invoke, "complete": o.complete, "server": o.server})
        })
        .collect();
    let snaps = |s: &[Snapshot]| -> Vec<serde_json::Value> {
        s.iter()
            .map(|s| serde_json::json!({"value": s.value, "invoke": s.invoke, "complete": s.complete}))
            .collect()
    };
    let samples: Vec<_> = rec
        .samples
        .iter()
        .map(
            |s| serde_json::json!({"at": s.at, "node": s.node, "term": s.term, "leader": s.leader}),
        )
        .collect();
    let v = serde_json::json!({"fault_at": t0, "healed_at": heal_ns, "initial": snaps(initial),
        "final": snaps(finals), "ops": ops, "samples": samples});
    let path = h
        .dir
        .join(format!("history-{}-{}.json", row.scenario, row.round));
    match std::fs::write(&path, v.to_string()) {
        Ok(()) => row.notes.push(format!("history in {}", path.display())),
        Err(e) => row.notes.push(format!("cannot write the history: {e}")),
    }
}

fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !crate::interrupted() {
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
}

fn hold(timing: Timing, rng: &mut StdRng, quick: u64, range: std::ops::Range<u64>) -> Duration {
    if timing.random {
        Duration::from_millis(rng.random_range(range))
    } else {
        Duration::from_secs(quick)
    }
}

fn follower_of(h: &Harness, leader: u64, rng: &mut StdRng) -> u64 {
    let f: Vec<u64> = h
        .server_ids()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    f[rng.random_range(0..f.len())]
}

/// Every other host's address, and the proxy's: what isolating a host cuts.
fn peers_of(h: &Harness, host_ip: std::net::Ipv4Addr) -> Vec<std::net::Ipv4Addr> {
    let mut p: Vec<_> = h
        .net
        .hosts()
        .iter()
        .map(|x| x.ip)
        .filter(|ip| *ip != host_ip)
        .collect();
    p.push(h.net.proxy_ip());
    p
}

fn inject(
    h: &mut Harness,
    sc: Scenario,
    timing: Timing,
    rng: &mut StdRng,
    leader: u64,
    sw: &Switches,
    epoch: Instant,
) -> Result<FaultOutcome, HarnessError> {
    let mut out = FaultOutcome::default();
    let t = Instant::now();
    match sc {
        Scenario::KillLeader => {
            let d = hold(timing, rng, 3, 500..10_000);
            out.fault = format!("kill -9 leader {leader}, restart after {d:?}");
            h.servers.get_mut(&leader).expect("server").node.kill9();
            sleep(d);
            out.hold = t.elapsed();
            h.servers.get_mut(&leader).expect("server").node.start();
        }
        Scenario::KillFollower => {
            let f = follower_of(h, leader, rng);
            let d = hold(timing, rng, 3, 500..10_000);
            out.fault = format!("kill -9 follower {f}, restart after {d:?}");
            h.servers.get_mut(&f).expect("server").node.kill9();
            sleep(d);
            out.hold = t.elapsed();
            h.servers.get_mut(&f).expect("server").node.start();
        }
        Scenario::PauseLeader => {
            let d = hold(timing, rng, 5, 500..10_000);
            out.fault = format!("SIGSTOP leader {leader}, SIGCONT after {d:?}");
            h.servers.get_mut(&leader).expect("server").node.pause();
            sleep(d);
            out.hold = t.elapsed();
            h.servers.get_mut(&leader).expect("server").node.resume();
        }
        Scenario::PartitionMinority | Scenario::PartitionLeader => {
            let victim = if sc == Scenario::PartitionLeader {
                leader
            } else {
                follower_of(h, leader, rng)
            };
            let d = hold(timing, rng, 5, 1000..15_000);
            let host = h.servers[&victim].node.host.clone();
            out.fault = format!(
                "server {victim} ({}) isolated from every host for {d:?}",
                if victim == leader {
                    "leader"
                } else {
                    "follower"
                }
            );
            host.isolate(&peers_of(h, host.ip))?;
            sleep(d);
            out.hold = t.elapsed();
            host.heal()?;
        }
        Scenario::PacketLoss => {
            let pct = if timing.random {
                rng.random_range(5..50)
            } else {
                30
            };
            let d = hold(timing, rng, 6, 2000..15_000);
            let host = h.servers[&leader].node.host.clone();
            out.fault = format!("{pct}% packet loss on leader {leader}'s link for {d:?}");
            host.lossy(pct)?;
            sleep(d);
            out.hold = t.elapsed();
            host.heal()?;
        }
        Scenario::Delay => {
            let ms = if timing.random {
                rng.random_range(20..300)
            } else {
                150
            };
            let d = hold(timing, rng, 6, 2000..15_000);
            out.fault =
                format!("+{ms} ms each way on every server and agent→server link for {d:?}");
            h.proxy.set_delay(Duration::from_millis(ms));
            sleep(d);
            out.hold = t.elapsed();
            h.proxy.set_delay(Duration::ZERO);
        }
        Scenario::AllServersDown => {
            let d = hold(timing, rng, 5, 1000..20_000);
            out.fault = format!("kill -9 of all servers, restart after {d:?}");
            let revs = agent_revisions(h);
            for s in h.servers.values_mut() {
                s.node.kill9();
            }
            sleep(d);
            // Agents keep serving their last model: it may still take in an update received
            // before the kill, but it never goes back or away.
            let now = agent_revisions(h);
            if now.iter().zip(&revs).any(|(n, r)| n.is_none() || n < r) {
                out.failures.push(format!(
                    "agents' models went back or away with every server down: {revs:?} → {now:?}"
                ));
            }
            out.hold = t.elapsed();
            for s in h.servers.values_mut() {
                s.node.start();
            }
        }
        Scenario::AgentRestartServersDown => {
            let i = rng.random_range(0..h.agents.len());
            out.fault = format!("all servers killed; agent-{} kill -9 and restarted", i + 1);
            let revs = agent_revisions(h);
            for s in h.servers.values_mut() {
                s.node.kill9();
            }
            h.agents[i].agent.kill9();
            sleep(Duration::from_millis(500));
            h.agents[i].agent.start();
            let a = &h.agents[i];
            let want = revs[i];
            poll(
                "the restarted agent to serve its cached model",
                Duration::from_secs(30),
                || {
                    // Its cache holds at least what it served before the kill.
                    let r = agent_revision(a);
                    (r.is_some() && r >= want)
                        .then_some(())
                        .ok_or(format!("revision {r:?}, want at least {want:?}"))
                },
            )?;
            poll(
                "Envoy's config to match the restarted agent",
                Duration::from_secs(30),
                || config_matches(a),
            )?;
            sleep(hold(timing, rng, 2, 500..10_000));
            out.hold = t.elapsed();
            for s in h.servers.values_mut() {
                s.node.start();
            }
        }
        Scenario::EnvoyRestartServersDown => {
            let i = rng.random_range(0..h.agents.len());
            out.fault = format!("all servers killed; envoy-{} kill -9 and restarted", i + 1);
            for s in h.servers.values_mut() {
                s.node.kill9();
            }
            sleep(Duration::from_millis(300));
            sw.pause_envoy(i);
            h.agents[i].envoy.kill9();
            h.agents[i].envoy.start();
            let a = &h.agents[i];
            let restarted = Instant::now();
            poll(
                "the restarted Envoy to get its whole config from its agent",
                Duration::from_secs(30),
                || config_matches(a),
            )?;
            h.wait_data_plane(i, Duration::from_secs(30))?;
            out.notes.push(format!(
                "envoy-{} configured from its agent's cache in {:.1} s with every server down",
                i + 1,
                restarted.elapsed().as_secs_f64()
            ));
            sw.envoy_paused[i].store(false, Ordering::SeqCst);
            sleep(hold(timing, rng, 2, 500..10_000));
            out.hold = t.elapsed();
            for s in h.servers.values_mut() {
                s.node.start();
            }
        }
        Scenario::BackendKill => {
            let i = rng.random_range(0..h.agents.len());
            let j = rng.random_range(0..h.agents[i].backends.len());
            let addr = h.agents[i].backends[j].addr;
            out.fault = format!("kill -9 backend {}", h.agents[i].backends[j].id);
            let killed_ns = now_ns(epoch);
            h.agents[i].backends[j].node.kill9();
            let killed = Instant::now();
            let gone = poll(
                "the dead backend to leave every Envoy",
                DETECTION_BOUND,
                || {
                    for a in &h.agents {
                        if envoy_lists(a, addr)? {
                            return Err(format!("{} still lists {addr}", a.envoy.name));
                        }
                    }
                    Ok(())
                },
            );
            match gone {
                Ok(()) => {
                    let ms = killed.elapsed().as_millis() as u64;
                    out.detect_ms = Some(ms);
                    out.dp_grace_until = Some(killed_ns + ms * 1_000_000);
                }
                Err(e) => {
                    out.failures
                        .push(format!("detection bound {DETECTION_BOUND:?}: {e}"));
                    out.dp_grace_until = Some(u64::MAX);
                }
            }
            sleep(Duration::from_secs(2));
            out.hold = t.elapsed();
            h.agents[i].backends[j].node.start();
        }
        Scenario::RollingRestart => {
            out.fault = "SIGTERM + restart of every server, one at a time (leader last)".into();
            let mut order: Vec<u64> = h
                .server_ids()
                .into_iter()
                .filter(|i| *i != leader)
                .collect();
            order.push(leader);
            for id in order {
                h.servers
                    .get_mut(&id)
                    .expect("server")
                    .node
                    .terminate(Duration::from_secs(20));
                sleep(Duration::from_millis(300));
                h.servers.get_mut(&id).expect("server").node.start();
                let api = h.servers[&id].api();
                let size = h.servers.len();
                poll(
                    &format!("server {id} back in the cluster"),
                    Duration::from_secs(60),
                    || {
                        let st = shoal_e2e::node_status(api).ok_or("no status")?;
                        // Caught up: it knows the leader and has applied what is committed.
                        let ok = st.leader_id.is_some()
                            && st.members.len() == size
                            && st.applied_index == st.commit_index;
                        ok.then_some(()).ok_or(format!("{st:?}"))
                    },
                )?;
            }
            out.hold = t.elapsed();
        }
        Scenario::WipeRejoin => {
            let f = follower_of(h, leader, rng);
            out.fault = format!("follower {f} stopped, data dir wiped, restarted");
            let s = h.servers.get_mut(&f).expect("server");
            s.node.terminate(Duration::from_secs(20));
            std::fs::remove_dir_all(&s.data_dir).map_err(|source| HarnessError::Io {
                what: format!("wipe {}", s.data_dir.display()),
                source,
            })?;
            sleep(hold(timing, rng, 1, 200..5000));
            s.node.start();
            let api = s.api();
            let size = h.servers.len();
            poll(
                &format!("wiped server {f} to rejoin as a voter"),
                Duration::from_secs(90),
                || {
                    let st = shoal_e2e::node_status(api).ok_or("no status")?;
                    let ok =
                        st.leader_id.is_some() && st.voters().len() == size && st.applied_index > 0;
                    ok.then_some(()).ok_or(format!("{st:?}"))
                },
            )?;
            out.hold = t.elapsed();
        }
        Scenario::MtlsServersDown => {
            let i = rng.random_range(0..h.secure.len());
            out.fault = format!(
                "automatic mTLS: all servers killed; caller-{} Envoy kill -9 and restarted",
                i + 1
            );
            let handshakes = |h: &Harness| -> u64 {
                h.secure
                    .iter()
                    .map(|s| envoy_stat(s.vault_admin(), &["listener.", "ssl.handshake"]))
                    .sum()
            };
            let allowed_before: u64 = h
                .secure
                .iter()
                .map(|s| envoy_stat(s.vault_admin(), &["ingress_authz.rbac.allowed"]))
                .sum();
            if handshakes(h) == 0 || allowed_before == 0 {
                out.failures.push(format!(
                    "the vaults show no mutual TLS or authorization: {} handshakes, {allowed_before} allowed",
                    handshakes(h)
                ));
            }
            let load =
                SecureLoad::start(h.secure.iter().map(|s| s.caller_egress()).collect(), epoch);
            for s in h.servers.values_mut() {
                s.node.kill9();
            }
            sleep(Duration::from_millis(300));
            let killed_at = now_ns(epoch);
            h.secure[i].caller.kill9();
            h.secure[i].caller.start();
            let restarted = Instant::now();
            h.wait_secure(i, Duration::from_secs(30))?;
            let back_at = now_ns(epoch);
            out.notes.push(format!(
                "caller-{} back on mutual TLS from its agent's cache in {:.1} s with every server down",
                i + 1,
                restarted.elapsed().as_secs_f64()
            ));
            sleep(hold(timing, rng, 2, 500..10_000));
            out.hold = t.elapsed();
            for s in h.servers.values_mut() {
                s.node.start();
            }
            let reqs = load.stop();
            // Only requests through the restarted caller while it was down may fail.
            let excused = |r: &SecureReq| r.caller == i && r.at >= killed_at && r.at <= back_at;
            let failed: Vec<&SecureReq> = reqs.iter().filter(|r| !r.ok && !excused(r)).collect();
            let window = reqs.iter().filter(|r| !r.ok && excused(r)).count();
            out.notes.push(format!(
                "mTLS data plane: {} requests, {} failed through caller-{} while it restarted",
                reqs.len(),
                window,
                i + 1
            ));
            if reqs.iter().filter(|r| r.ok).count() == 0 {
                out.failures
                    .push("no mTLS request succeeded during the fault".into());
            }
            if let Some(f) = failed.first() {
                out.failures.push(format!(
                    "MTLS DATA-PLANE FAILURES {} (first: caller-{}: {})",
                    failed.len(),
                    f.caller + 1,
                    f.answer
                ));
            }
            if handshakes(h) == 0 {
                out.failures.push("the vaults made no TLS handshake".into());
            }
        }
    }
    Ok(out)
}

/// One request through a caller sidecar of the automatic-mTLS mesh.
#[derive(Debug, Clone)]
struct SecureReq {
    caller: usize,
    at: u64,
    ok: bool,
    answer: String,
}

/// Requests through every caller sidecar, one after another every 20 ms, until stopped.
struct SecureLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<SecureReq>>,
}

impl SecureLoad {
    fn start(callers: Vec<std::net::SocketAddr>, epoch: Instant) -> SecureLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::SeqCst) && !crate::interrupted() {
                for (caller, egress) in callers.iter().enumerate() {
                    let at = now_ns(epoch);
                    let r = crate::harness::secure_call(*egress, Duration::from_secs(2));
                    out.push(SecureReq {
                        caller,
                        at,
                        ok: r.is_ok(),
                        answer: r.unwrap_or_else(|e| e),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        });
        SecureLoad { stop, thread }
    }

    fn stop(self) -> Vec<SecureReq> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// The sum of an Envoy's admin stats whose names contain every one of `parts` (0 when it does
/// not answer).
fn envoy_stat(admin: std::net::SocketAddr, parts: &[&str]) -> u64 {
    shoal_e2e::http_request(admin, "GET", "/stats", None, Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn agent_revisions(h: &Harness) -> Vec<Option<u64>> {
    h.agents.iter().map(agent_revision).collect()
}
