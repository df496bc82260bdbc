//! `shoal-bench failover`: against a running three-member cluster (shoal or etcd), kills the
//! leader with SIGKILL, measures the time from the kill to the first write that succeeds
//! through the other members, restarts the killed process with its own command line (on the
//! CPUs it was pinned to), waits until it has caught up, and repeats. It prints the heartbeat
//! and election timeout the members run with, read from their command lines, since those
//! bound the figure and differ between the two systems' defaults.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::etcd::{etcd_view, status};
use crate::stats::{median, ms};
use crate::system::{
    base_url, control_http, cpus_allowed, get_json, host_port, shoal_setup, shoal_view, Sink,
    System,
};

/// `shoal-bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Which kind of cluster the endpoints belong to.
    #[arg(long, value_enum, default_value = "shoal")]
    pub target: System,
    /// Every member's endpoint (repeatable).
    #[arg(long = "addr", required = true)]
    pub addr: Vec<String>,
    /// File of `HOST:PORT=PID` lines mapping each endpoint to its process; rewritten with the
    /// new PID after each restart (so whoever started the cluster can still stop it).
    #[arg(long)]
    pub pids_file: PathBuf,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// A probe write starts this often.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    /// Each probe write gives up after this long.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Mesh of shoal's probe virtual node (created if missing).
    #[arg(long, default_value = "bench")]
    pub mesh: String,
    /// Also print, per round, the failed probes grouped by error.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The body of a failover probe: a tiny virtual node.
fn probe_body(i: u64) -> Value {
    json!({"spec": {
        "listeners": [{"portMapping": {"port": 8000 + (i % 1000), "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "probe.bench.local"}}
    }})
}

/// What is needed to start a process again exactly as it was started.
#[derive(Debug, Clone)]
struct ProcSpec {
    exe: PathBuf,
    argv: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    /// The CPUs it was allowed to run on (`taskset -c` list).
    cpus: Option<String>,
}

fn nul_split(bytes: Vec<u8>) -> Vec<Vec<u8>> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Reads a live process's command line, working directory, environment and output files.
fn read_proc(pid: u32) -> anyhow::Result<ProcSpec> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(dir.join("exe"))
        .with_context(|| format!("process {pid} is not running (or not ours to read)"))?;
    // A rebuilt binary shows as "… (deleted)"; start the file now at that path.
    let exe = PathBuf::from(
        exe.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    );
    let argv = nul_split(std::fs::read(dir.join("cmdline"))?)
        .into_iter()
        .map(OsString::from_vec)
        .collect::<Vec<_>>();
    if argv.is_empty() {
        bail!("process {pid} has no command line");
    }
    let env = nul_split(std::fs::read(dir.join("environ"))?)
        .into_iter()
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(kv[eq + 1..].to_vec()),
            ))
        })
        .collect();
    let file = |fd: u32| {
        std::fs::read_link(dir.join(format!("fd/{fd}")))
            .ok()
            .filter(|p| p.is_absolute() && p.is_file())
    };
    Ok(ProcSpec {
        exe,
        argv,
        cwd: std::fs::read_link(dir.join("cwd"))?,
        env,
        stdout: file(1),
        stderr: file(2),
        cpus: cpus_allowed(&pid.to_string()),
    })
}

fn spawn_proc(spec: &ProcSpec) -> anyhow::Result<tokio::process::Child> {
    let out = |p: &Option<PathBuf>| -> anyhow::Result<std::process::Stdio> {
        Ok(match p {
            Some(p) => std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?
                .into(),
            None => std::process::Stdio::null(),
        })
    };
    // Through taskset when the process was pinned, so that it comes back on the same CPUs
    // whatever this driver's own affinity (argv[0] then becomes the executable's path).
    let mut cmd = match &spec.cpus {
        Some(cpus) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&spec.exe).args(&spec.argv[1..]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&spec.exe);
            c.arg0(&spec.argv[0]).args(&spec.argv[1..]);
            c
        }
    };
    cmd.current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(out(&spec.stdout)?)
        .stderr(out(&spec.stderr)?);
    cmd.spawn()
        .with_context(|| format!("starting {}", spec.exe.display()))
}

/// `HOST:PORT=PID` lines.
pub fn parse_pids(text: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut m = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (ep, pid) = line
            .rsplit_once('=')
            .with_context(|| format!("{line:?} is not HOST:PORT=PID"))?;
        let pid: u32 = pid.parse().with_context(|| format!("{line:?}: bad PID"))?;
        m.insert(host_port(ep), pid);
    }
    Ok(m)
}

/// The value of flag `name` (given without dashes) in a command line: `--name V`,
/// `--name=V`, or Go's single-dash forms, which etcd also accepts. The last one wins, as in
/// both systems' parsers.
fn flag_value(argv: &[String], name: &str) -> Option<String> {
    let mut found = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            continue;
        };
        if flag == name {
            found = it.next().cloned();
        } else if let Some(v) = flag.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

/// A member's heartbeat and election timeout, from its command line, or the system's default
/// where it gives none (marked so): shoal's from its own `ServerConfig`, etcd's documented
/// ones (100 ms and 1000 ms).
fn timing(system: System, argv: &[String]) -> String {
    let flag = |name: &str, default: u64| match flag_value(argv, name) {
        Some(v) => format!("{v} ms"),
        None => format!("{default} ms (default)"),
    };
    match system {
        System::Shoal => {
            let d = shoal::server::ServerConfig::new(1, PathBuf::from("/"));
            let config = if flag_value(argv, "config").is_some() {
                "; its --config file may set others"
            } else {
                ""
            };
            format!(
                "heartbeat {}, election timeout {} to {} (openraft picks each election's \
                 timeout in that range){config}",
                flag("heartbeat-ms", d.heartbeat_ms),
                flag("election-timeout-min-ms", d.election_timeout_min_ms),
                flag("election-timeout-max-ms", d.election_timeout_max_ms),
            )
        }
        System::Etcd => {
            let election = flag_value(argv, "election-timeout")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000);
            format!(
                "heartbeat {}, election timeout {} (etcd's raft picks each election's timeout \
                 in [{election}, {}) ms)",
                flag("heartbeat-interval", 100),
                flag("election-timeout", 1000),
                2 * election
            )
        }
    }
}

fn write_pids(path: &Path, pids: &BTreeMap<String, u32>) -> anyhow::Result<()> {
    let text: String = pids.iter().map(|(e, p)| format!("{e}={p}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// One failover probe's outcome.
struct Probe {
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

/// Starts a probe write every `interval`, round-robin over `sinks`, each with `timeout`.
fn start_prober(
    sinks: Vec<Arc<Sink>>,
    interval: Duration,
    timeout: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Probe>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for i in 0u64.. {
            tick.tick().await;
            let sink = sinks[i as usize % sinks.len()].clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let error = match tokio::time::timeout(timeout, sink.write(probe_body(i))).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some(format!("no answer within {timeout:?}")),
                };
                let _ = tx.send(Probe {
                    started,
                    ended: Instant::now(),
                    error,
                });
            });
        }
    });
    (task, rx)
}

/// The cluster under test.
struct Cluster {
    system: System,
    http: reqwest::Client,
    addrs: Vec<String>,
    mesh: String,
    /// Each probe's limit (etcd's probe clients bound their calls with it too).
    timeout: Duration,
}

impl Cluster {
    async fn leader(&self) -> Option<String> {
        match self.system {
            System::Shoal => shoal_view(&self.http, &self.addrs).await.ok()?.leader,
            System::Etcd => etcd_view(&self.addrs).await.leader,
        }
    }

    /// The leader, waiting for one for up to `limit`.
    async fn wait_leader(&self, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("{:?}: no leader within {limit:?}", self.system);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn probe_sink(&self, endpoint: &str) -> anyhow::Result<Sink> {
        match self.system {
            System::Shoal => Sink::shoal(endpoint, &self.mesh, "failover-probe"),
            System::Etcd => Sink::etcd_lazy(endpoint, "/bench/failover-probe", self.timeout),
        }
    }

    /// Whether `member` is back: the leader counts it healthy within 10 entries (shoal), or it
    /// answers Status without errors, knows the leader, and its Raft index is within 10 of
    /// the leader's (etcd).
    async fn caught_up(&self, member: &str) -> bool {
        let Some(leader) = self.leader().await else {
            return false;
        };
        match self.system {
            System::Shoal => {
                let Ok(st) = get_json(&self.http, &format!("{leader}/v1/status")).await else {
                    return false;
                };
                st["members"].as_array().is_some_and(|ms| {
                    ms.iter().any(|m| {
                        m["api_addr"].as_str() == Some(host_port(member).as_str())
                            && m["healthy"] == json!(true)
                            && m["lag"].as_u64().is_some_and(|l| l <= 10)
                    })
                })
            }
            System::Etcd => {
                let (Ok(l), Ok(m)) = (status(&leader).await, status(member).await) else {
                    return false;
                };
                m.errors.is_empty()
                    && m.leader != 0
                    && l.raft_index.saturating_sub(m.raft_index) <= 10
            }
        }
    }
}

/// One failover round's figures.
#[derive(Debug, Clone)]
struct Round {
    killed: String,
    new_leader: String,
    first_write: Duration,
    failed: usize,
    rejoin: Duration,
}

/// The failed probes of a round grouped by error: count, when they started after the kill.
fn error_summary(errors: &[(Duration, String)]) -> Vec<String> {
    let mut groups: Vec<(String, usize, Duration, Duration)> = Vec::new();
    for (at, e) in errors {
        let msg: String = e.chars().take(110).collect();
        match groups.iter_mut().find(|g| g.0 == msg) {
            Some(g) => {
                g.1 += 1;
                g.2 = g.2.min(*at);
                g.3 = g.3.max(*at);
            }
            None => groups.push((msg, 1, *at, *at)),
        }
    }
    groups
        .into_iter()
        .map(|(msg, n, first, last)| {
            format!(
                "{n:>3}x started {:.0}-{:.0} ms after the kill: {msg}",
                ms(first),
                ms(last)
            )
        })
        .collect()
}

/// `shoal-bench failover`.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    if args.addr.len() < 3 {
        bail!("give every member's endpoint with --addr (at least 3)");
    }
    let http = control_http()?;
    let cluster = Cluster {
        system: args.target,
        http,
        addrs: args.addr.iter().map(|a| base_url(a)).collect(),
        mesh: args.mesh.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let mut pids = parse_pids(
        &std::fs::read_to_string(&args.pids_file)
            .with_context(|| format!("reading {}", args.pids_file.display()))?,
    )?;
    for a in &cluster.addrs {
        if !pids.contains_key(&host_port(a)) {
            bail!(
                "{} has no PID for {}",
                args.pids_file.display(),
                host_port(a)
            );
        }
    }
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    let leader_pid = pids[&host_port(&leader)];
    let argv: Vec<String> = read_proc(leader_pid)
        .with_context(|| format!("the leader {} (pid {leader_pid})", host_port(&leader)))?
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.target == System::Shoal {
        shoal_setup(&leader, &args.mesh, &["failover-probe".to_string()]).await?;
    }
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    println!(
        "failover ({:?}): kill -9 the leader; a probe write every {} ms to the other members ({} ms timeout each)",
        args.target, args.interval_ms, args.timeout_ms
    );
    println!("{:?} timing: {}", args.target, timing(args.target, &argv));
    println!("round  killed           new_leader       first_write_ms  failed_probes  rejoin_s");
    // Processes this tool started, so it can reap them when it kills them again.
    let mut children: BTreeMap<u32, tokio::process::Child> = BTreeMap::new();
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
        let key = host_port(&leader);
        let pid = pids[&key];
        let spec = read_proc(pid).with_context(|| format!("the leader {key} (pid {pid})"))?;
        let others: Vec<Arc<Sink>> = cluster
            .addrs
            .iter()
            .filter(|a| host_port(a) != key)
            .map(|a| cluster.probe_sink(a).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        let (prober, mut probes) = start_prober(others, interval, timeout);
        // The probes must work before the kill, or the figure would mean nothing.
        let warm = tokio::time::timeout(Duration::from_secs(10), async {
            let mut last = "no probe finished".to_string();
            while let Some(p) = probes.recv().await {
                match p.error {
                    None => return Ok(()),
                    Some(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .unwrap_or_else(|_| Err("no probe succeeded within 10 s".into()));
        if let Err(why) = warm {
            prober.abort();
            bail!("round {round}: probe writes fail before the kill: {why}");
        }
        let status = tokio::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .await
            .context("running kill")?;
        let killed_at = Instant::now();
        if !status.success() {
            prober.abort();
            bail!("round {round}: kill -9 {pid} failed");
        }
        // First success among the probes started after the kill.
        let mut errors = Vec::new();
        let first = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(p) = probes.recv().await {
                if p.started < killed_at {
                    continue;
                }
                match p.error {
                    None => return Some(p.ended - killed_at),
                    Some(e) => errors.push((p.started - killed_at, e)),
                }
            }
            None
        })
        .await;
        prober.abort();
        let first_write = match first {
            Ok(Some(d)) => d,
            _ => bail!(
                "round {round}: no write succeeded within 30 s of the kill (last error: {})",
                errors.last().map_or("none", |e| e.1.as_str())
            ),
        };
        // Reap the process if it is ours; otherwise wait until the kernel has let it go.
        if let Some(mut c) = children.remove(&pid) {
            let _ = c.wait().await;
        }
        let gone = Instant::now() + Duration::from_secs(10);
        while !exited(pid) && Instant::now() < gone {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let new_leader = cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .map(|l| host_port(&l))
            .unwrap_or_else(|_| "?".into());
        let restarted = Instant::now();
        let child = spawn_proc(&spec).with_context(|| format!("restarting {key}"))?;
        let new_pid = child.id().context("the restarted process has no PID")?;
        children.insert(new_pid, child);
        pids.insert(key.clone(), new_pid);
        write_pids(&args.pids_file, &pids)?;
        let back = Instant::now() + Duration::from_secs(60);
        while !cluster.caught_up(&leader).await {
            if Instant::now() >= back {
                bail!("round {round}: {key} did not catch up within 60 s of its restart");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = Round {
            killed: key,
            new_leader,
            first_write,
            failed: errors.len(),
            rejoin: restarted.elapsed(),
        };
        println!(
            "{:>5}  {:<15}  {:<15}  {:>14.0}  {:>13}  {:>8.1}",
            round,
            r.killed,
            r.new_leader,
            ms(r.first_write),
            r.failed,
            r.rejoin.as_secs_f64()
        );
        if args.verbose {
            for line in error_summary(&errors) {
                println!("       {line}");
            }
        }
        rounds.push(r);
        // Let the restarted member settle before the next election.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "median time from kill -9 of the leader to the first successful write: {:.0} ms over {} rounds",
        ms(median(rounds.iter().map(|r| r.first_write).collect())),
        rounds.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_name_endpoints() {
        let pids = parse_pids("http://127.0.0.11:7070=12\n127.0.0.12:7070=13\n\n").unwrap();
        assert_eq!(pids["127.0.0.11:7070"], 12);
        assert_eq!(pids["127.0.0.12:7070"], 13);
        assert!(parse_pids("127.0.0.1:7070").is_err());
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags_are_read_in_every_spelling() {
        let a = argv("etcd --name e1 -heartbeat-interval 50 --election-timeout=700 --x");
        assert_eq!(flag_value(&a, "heartbeat-interval").as_deref(), Some("50"));
        assert_eq!(flag_value(&a, "election-timeout").as_deref(), Some("700"));
        assert_eq!(flag_value(&a, "name").as_deref(), Some("e1"));
        assert_eq!(flag_value(&a, "election"), None, "a prefix is not the flag");
        assert_eq!(flag_value(&a, "x"), None, "no value follows");
        let twice = argv("shoal --heartbeat-ms 50 --heartbeat-ms 70");
        assert_eq!(flag_value(&twice, "heartbeat-ms").as_deref(), Some("70"));
    }

    #[test]
    fn timing_states_flags_and_defaults() {
        let etcd = timing(
            System::Etcd,
            &argv("etcd --heartbeat-interval 100 --election-timeout 1000"),
        );
        assert_eq!(
            etcd,
            "heartbeat 100 ms, election timeout 1000 ms (etcd's raft picks each election's \
             timeout in [1000, 2000) ms)"
        );
        let etcd = timing(System::Etcd, &argv("etcd --election-timeout 500"));
        assert!(
            etcd.starts_with("heartbeat 100 ms (default), election timeout 500 ms"),
            "{etcd}"
        );
        assert!(etcd.contains("[500, 1000)"), "{etcd}");
        let shoal = timing(
            System::Shoal,
            &argv("shoal server --node-id 1 --heartbeat-ms 50"),
        );
        let d = shoal::server::ServerConfig::new(1, PathBuf::from("/"));
        assert!(
            shoal.starts_with(&format!(
                "heartbeat 50 ms, election timeout {} ms (default) to {} ms (default)",
                d.election_timeout_min_ms, d.election_timeout_max_ms
            )),
            "{shoal}"
        );
        assert!(!shoal.contains("--config"), "{shoal}");
        let with_file = timing(
            System::Shoal,
            &argv("shoal server --config /etc/shoal.toml"),
        );
        assert!(
            with_file.ends_with("its --config file may set others"),
            "{with_file}"
        );
    }
}
