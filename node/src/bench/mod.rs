//! `shoal bench …`: benchmarks that print their figures.
//!
//! - `shoal bench writes`: a closed-loop write benchmark. Each client owns one key and updates
//!   it back to back; each run stops by itself after `--seconds`. Against shoal a write updates a
//!   virtual node through the App Mesh API (one Raft commit, the log flushed to disk before the
//!   answer); against etcd it is a put of the very same bytes (the ~600-byte JSON body) through
//!   etcd's v3 JSON gateway. Both send every write to the leader unless `--spread` is given.
//!   `--target both` alternates the two systems at each concurrency and prints one table with the
//!   ratio shoal/etcd.
//! - `shoal bench failover`: against a running three-member cluster (shoal or etcd), kills the
//!   leader with SIGKILL, measures the time from the kill to the first write that succeeds
//!   through the other members, restarts the killed process with its own command line, waits
//!   until it has caught up, and repeats.
//! - `shoal bench xds`: one route change fanned out to many simulated proxies through one
//!   agent (see [`xds`]).
//! - `shoal bench peers`: many gossip peers against one agent process: convergence and the
//!   agent's memory (see [`peers`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

pub mod peers;
pub mod xds;

use crate::cli::BenchCommand;
use crate::client::Client;

/// A system the benchmarks can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// shoal servers (App Mesh API).
    Shoal,
    /// etcd members (v3 JSON gateway).
    Etcd,
}

/// What `shoal bench writes` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Targets {
    /// shoal only (`--addr`).
    Shoal,
    /// etcd only (`--addr`).
    Etcd,
    /// shoal (`--addr`) and etcd (`--etcd-addr`), side by side.
    Both,
}

/// `shoal bench writes`.
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

/// `shoal bench failover`.
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

/// Runs a `shoal bench` subcommand.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Writes(a) => writes(a).await,
        BenchCommand::Failover(a) => failover(a).await,
        BenchCommand::Peers(a) => peers::run(a).await,
        BenchCommand::Xds(a) => xds::run(a).await,
    }
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

fn node_spec(port: u64) -> Value {
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

/// The body of the benchmark's `i`-th update: shoal gets it as the request, etcd as the value.
fn write_body(i: u64) -> Value {
    json!({ "spec": node_spec(i) })
}

/// The body of a failover probe: a tiny virtual node.
fn probe_body(i: u64) -> Value {
    json!({"spec": {
        "listeners": [{"portMapping": {"port": 8000 + (i % 1000), "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "probe.bench.local"}}
    }})
}

/// Standard base64 with padding (etcd's JSON gateway carries keys and values so).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `http://host:port` without a trailing slash (a scheme is added when missing).
fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// `host:port` of an endpoint URL.
fn host_port(url: &str) -> String {
    let s = url.split_once("://").map_or(url, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s).to_string()
}

/// A short-timeout client for status queries.
fn control_http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("GET {url}: the answer is not JSON"))
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("POST {url}: HTTP {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: the answer is not JSON"))
}

/// The members of a cluster as one of its endpoints sees them.
#[derive(Debug, Clone, PartialEq)]
struct View {
    /// The leader's endpoint URL, if one is known.
    leader: Option<String>,
    /// Every member's endpoint URL.
    all: Vec<String>,
}

/// shoal's view from `/v1/status` of the first endpoint that answers.
async fn shoal_view(http: &reqwest::Client, addrs: &[String]) -> anyhow::Result<View> {
    let mut last = None;
    for a in addrs {
        match get_json(http, &format!("{}/v1/status", base_url(a))).await {
            Ok(st) => return Ok(shoal_view_of(&st)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no shoal endpoint given")))
}

fn shoal_view_of(status: &Value) -> View {
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let url = |m: &Value| m["api_addr"].as_str().map(base_url);
    View {
        leader: members
            .iter()
            .find(|m| !status["leader_id"].is_null() && m["node_id"] == status["leader_id"])
            .and_then(url),
        all: members.iter().filter_map(url).collect(),
    }
}

/// The v3 API prefix of an etcd member: `/v3` from 3.4 on, `/v3beta` on 3.3, `/v3alpha` before.
async fn etcd_prefix(http: &reqwest::Client, addr: &str) -> anyhow::Result<String> {
    let v = get_json(http, &format!("{}/version", base_url(addr))).await?;
    let version = v["etcdserver"].as_str().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok(match (major, minor) {
        (3, 0..=2) => "/v3alpha",
        (3, 3) => "/v3beta",
        _ => "/v3",
    }
    .to_string())
}

/// `maintenance/status` of one etcd member.
async fn etcd_status(http: &reqwest::Client, addr: &str, prefix: &str) -> anyhow::Result<Value> {
    post_json(
        http,
        &format!("{}{prefix}/maintenance/status", base_url(addr)),
        &json!({}),
    )
    .await
}

/// etcd's view: every given endpoint, and the one whose member id is the leader's.
async fn etcd_view(http: &reqwest::Client, addrs: &[String], prefix: &str) -> View {
    let mut leader = None;
    for a in addrs {
        if let Ok(st) = etcd_status(http, a, prefix).await {
            let me = &st["header"]["member_id"];
            if !me.is_null() && *me == st["leader"] {
                leader = Some(base_url(a));
            }
        }
    }
    View {
        leader,
        all: addrs.iter().map(|a| base_url(a)).collect(),
    }
}

/// One writer's connection to one endpoint and the key it updates.
enum Sink {
    Shoal {
        client: Client,
        path: Vec<String>,
    },
    Etcd {
        http: reqwest::Client,
        put_url: String,
        key: String,
    },
}

impl Sink {
    fn shoal(endpoint: &str, mesh: &str, node: &str) -> anyhow::Result<Sink> {
        let mut path = crate::client::collection(shoal_model::Kind::VirtualNode, mesh, "");
        path.push(node.to_string());
        Ok(Sink::Shoal {
            client: Client::new(endpoint)?,
            path,
        })
    }

    fn etcd(endpoint: &str, prefix: &str, key: &str) -> anyhow::Result<Sink> {
        Ok(Sink::Etcd {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            put_url: format!("{}{prefix}/kv/put", base_url(endpoint)),
            key: base64(key.as_bytes()),
        })
    }

    /// One write of `body`: shoal's update request, or etcd's value.
    async fn write(&self, body: Value) -> anyhow::Result<()> {
        match self {
            Sink::Shoal { client, path } => {
                client
                    .call(reqwest::Method::PUT, path, &[], Some(body))
                    .await?;
            }
            Sink::Etcd { http, put_url, key } => {
                let value = serde_json::to_vec(&body)?;
                post_json(http, put_url, &json!({"key": key, "value": base64(&value)})).await?;
            }
        }
        Ok(())
    }
}

/// Creates the mesh (if missing) and the virtual nodes `names` (created or updated).
async fn shoal_setup(endpoint: &str, mesh: &str, names: &[String]) -> anyhow::Result<()> {
    let c = Client::new(endpoint)?;
    let mesh_doc = crate::client::Doc::from_json(&json!({"meshName": mesh}), "bench")?;
    c.apply(&mesh_doc).await?;
    for name in names {
        let doc = crate::client::Doc::from_json(
            &json!({"meshName": mesh, "virtualNodeName": name, "spec": node_spec(0)}),
            "bench",
        )?;
        c.apply(&doc).await?;
    }
    Ok(())
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

/// Runs one closed-loop run with `clients` writers against the shoal server at `addr`.
pub async fn run_once(
    addr: &str,
    mesh: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let plan = Plan {
        system: System::Shoal,
        endpoints: vec![base_url(addr)],
        prefix: String::new(),
    };
    run_system(&plan, mesh, clients, seconds).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

/// `shoal bench writes`: one run per `--clients` value (per system), one table.
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

// ---------------------------------------------------------------------------------------------
// Failover

/// What is needed to start a process again exactly as it was started.
#[derive(Debug, Clone)]
struct ProcSpec {
    exe: PathBuf,
    argv: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
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
    let mut cmd = tokio::process::Command::new(&spec.exe);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .current_dir(&spec.cwd)
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
    prefix: String,
    mesh: String,
}

impl Cluster {
    async fn leader(&self) -> Option<String> {
        match self.system {
            System::Shoal => shoal_view(&self.http, &self.addrs).await.ok()?.leader,
            System::Etcd => {
                etcd_view(&self.http, &self.addrs, &self.prefix)
                    .await
                    .leader
            }
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
            System::Etcd => Sink::etcd(endpoint, &self.prefix, "/bench/failover-probe"),
        }
    }

    /// Whether `member` is back: the leader counts it healthy within 10 entries (shoal), or it
    /// reports healthy and its Raft index is within 10 of the leader's (etcd).
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
                let healthy = get_json(&self.http, &format!("{member}/health"))
                    .await
                    .is_ok_and(|h| h["health"] == json!("true"));
                let index = |st: &Value| {
                    st["raftIndex"]
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .or_else(|| st["raftIndex"].as_u64())
                };
                let (Ok(l), Ok(m)) = (
                    etcd_status(&self.http, &leader, &self.prefix).await,
                    etcd_status(&self.http, member, &self.prefix).await,
                ) else {
                    return false;
                };
                healthy
                    && matches!((index(&l), index(&m)), (Some(a), Some(b)) if a.saturating_sub(b) <= 10)
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

/// Median of durations (the lower middle for an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    if v.is_empty() {
        Duration::ZERO
    } else {
        v[(v.len() - 1) / 2]
    }
}

/// `shoal bench failover`.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    if args.addr.len() < 3 {
        bail!("give every member's endpoint with --addr (at least 3)");
    }
    let http = control_http()?;
    let prefix = match args.target {
        System::Shoal => String::new(),
        System::Etcd => etcd_prefix(&http, &args.addr[0]).await?,
    };
    let cluster = Cluster {
        system: args.target,
        http,
        addrs: args.addr.iter().map(|a| base_url(a)).collect(),
        prefix,
        mesh: args.mesh.clone(),
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
    if args.target == System::Shoal {
        shoal_setup(&leader, &args.mesh, &["failover-probe".to_string()]).await?;
    }
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    println!(
        "failover ({:?}): kill -9 the leader; a probe write every {} ms to the other members ({} ms timeout each)",
        args.target, args.interval_ms, args.timeout_ms
    );
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
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(percentile(&s[..1], 99.0), Duration::from_millis(1));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn endpoints_normalize() {
        assert_eq!(base_url("127.0.0.1:2379/"), "http://127.0.0.1:2379");
        assert_eq!(host_port("http://127.0.0.1:2379/v3"), "127.0.0.1:2379");
        let pids = parse_pids("http://127.0.0.11:7070=12\n127.0.0.12:7070=13\n\n").unwrap();
        assert_eq!(pids["127.0.0.11:7070"], 12);
        assert_eq!(pids["127.0.0.12:7070"], 13);
        assert!(parse_pids("127.0.0.1:7070").is_err());
    }

    #[test]
    fn the_leader_comes_from_status() {
        let st = json!({"leader_id": 2, "members": [
            {"node_id": 1, "api_addr": "127.0.0.11:7070"},
            {"node_id": 2, "api_addr": "127.0.0.12:7070"}]});
        let v = shoal_view_of(&st);
        assert_eq!(v.leader.as_deref(), Some("http://127.0.0.12:7070"));
        assert_eq!(v.all.len(), 2);
        let v = shoal_view_of(
            &json!({"leader_id": null, "members": [{"node_id": 1, "api_addr": "a:1"}]}),
        );
        assert_eq!(v.leader, None);
    }

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

    #[test]
    fn median_takes_the_middle() {
        let d = |ms: &[u64]| {
            ms.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(d(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(median(d(&[4, 1, 3, 2])), Duration::from_millis(2));
        assert_eq!(median(Vec::new()), Duration::ZERO);
    }
}
