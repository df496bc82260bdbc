//! The system under test: three (or, with `--servers 5`, five) `shoal server`s, two agent hosts each with a `shoal agent`, a
//! real Envoy and two `shoal-backend`s, every host in its own network namespace.
//!
//! Why this shape: three servers are the smallest cluster where a majority survives one fault
//! (five, the other size users run, survive two and are selectable);
//! two agent hosts make endpoints cross hosts (an Envoy on one host routes to backends on both,
//! so gossip and health matter), while keeping a two-core CI machine able to run it all next to
//! the workload. Every process is started through `ip netns exec` in its host, logs to
//! `<run dir>/<name>.log`, and is killed when the [`Harness`] is dropped (processes before the
//! namespaces they live in).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_e2e::{http_call, http_request, node_status, NodeStatus, Process};

use crate::net::{Host, Net, NetError};
use crate::proxy::FaultProxy;

/// API port of every node.
pub const API_PORT: u16 = 7070;
/// Raft and watch gRPC port of every server.
pub const RAFT_PORT: u16 = 7071;
/// Gossip port of every node.
pub const GOSSIP_PORT: u16 = 7946;
/// xDS port of every agent.
pub const XDS_PORT: u16 = 18000;
/// Envoy admin port.
pub const ENVOY_ADMIN_PORT: u16 = 9901;
/// Envoy egress listener port.
pub const EGRESS_PORT: u16 = 15001;
/// The mesh the suite builds.
pub const MESH: &str = "chaos";
/// The virtual service clients call through Envoy.
pub const SERVICE_HOST: &str = "svc.chaos.local:8080";
/// The Envoys' node id.
pub const PROXY_ID: &str = "mesh/chaos/virtualNode/client";
/// How many register virtual nodes (`reg-<i>`) the workload writes.
pub const REGISTERS: usize = 6;
/// The mesh of the automatic-mTLS scenario, tagged `shoal:mtls` = `STRICT`: on each agent host,
/// a `vault` backend behind its own sidecar, and a `caller` sidecar that calls it.
pub const SECURE_MESH: &str = "secure";
/// The virtual service the callers call.
pub const SECURE_HOST: &str = "vault.secure.local:8080";
/// The vault sidecar's ingress listener (where its instance is registered) and the other ports
/// of the two sidecars (beside the chaos mesh's Envoy on the same host).
const VAULT_INGRESS: u16 = 15100;
const VAULT_EGRESS: u16 = 15101;
const VAULT_ADMIN: u16 = 9911;
const CALLER_INGRESS: u16 = 15200;
const CALLER_EGRESS: u16 = 15201;
const CALLER_ADMIN: u16 = 9912;
/// Upper bound on how long a dead backend may stay in the Envoys' endpoints: two failed
/// health checks 5 s apart with a 2 s timeout, plus gossip and xDS propagation.
pub const DETECTION_BOUND: Duration = Duration::from_secs(20);

/// What can go wrong while running the system.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Building or changing the network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Something did not happen in time, or answered wrongly.
    #[error("{0}")]
    Failed(String),
}

/// Creates a cluster CA and certificates for servers `s1..s<servers>` and agents `a1`, `a2`
/// in `dir/pki` with `shoal tls`, and the gossip key (`gossip.key`) with `shoal gossip keygen`.
fn make_pki(shoal: &Path, dir: &Path, servers: u64) -> Result<PathBuf, HarnessError> {
    let pki = dir.join("pki");
    let p = pki.display().to_string();
    let run = |args: &[&str]| -> Result<(), HarnessError> {
        let out = std::process::Command::new(shoal)
            .args(args)
            .output()
            .map_err(|source| HarnessError::Io {
                what: format!("run shoal {args:?}"),
                source,
            })?;
        if out.status.success() {
            if args == ["gossip", "keygen"] {
                std::fs::write(pki.join("gossip.key"), &out.stdout).map_err(|source| {
                    HarnessError::Io {
                        what: "write the gossip key".into(),
                        source,
                    }
                })?;
            }
            Ok(())
        } else {
            Err(HarnessError::Failed(format!(
                "shoal {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    run(&["tls", "ca", "create", "--dir", &p])?;
    run(&["gossip", "keygen"])?;
    let members = (1..=servers)
        .map(|id| ("server", format!("s{id}")))
        .chain((1..=2).map(|n| ("agent", format!("a{n}"))));
    for (role, name) in members {
        run(&[
            "tls", "cert", "create", "--role", role, "--name", &name, "--ca-dir", &p, "--dir", &p,
        ])?;
    }
    Ok(pki)
}

/// The TLS and gossip-key flags of member `name` (files from [`make_pki`]).
fn tls_args(pki: &Path, name: &str) -> Vec<String> {
    let f = |file: String| pki.join(file).display().to_string();
    vec![
        "--tls-ca".into(),
        f("shoal-ca.pem".into()),
        "--tls-cert".into(),
        f(format!("{name}.pem")),
        "--tls-key".into(),
        f(format!("{name}-key.pem")),
        "--gossip-key-file".into(),
        f("gossip.key".into()),
        // The workload and the checks speak plain, unsigned HTTP to the APIs, which listen on
        // the namespaces' addresses: this permits exactly that (Raft and the watch stream stay
        // on mutual TLS and gossip stays sealed, since their material is given).
        "--insecure".into(),
    ]
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `shoal`.
    pub shoal: PathBuf,
    /// `shoal-backend`.
    pub backend: PathBuf,
    /// Envoy 1.40.
    pub envoy: PathBuf,
}

impl Binaries {
    /// `SHOAL_BIN`, `SHOAL_BACKEND`, `SHOAL_ENVOY`, else the workspace's `target/debug/shoal`,
    /// `target/debug/shoal-backend` and `target/tools/envoy/envoy`. Errors name the missing
    /// one and how to get it.
    pub fn locate() -> Result<Binaries, String> {
        let root = shoal_e2e::workspace_root();
        let pick = |var: &str, default: PathBuf, how: &str| -> Result<PathBuf, String> {
            let p = std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or(default);
            if p.is_file() {
                Ok(p.canonicalize().unwrap_or(p))
            } else {
                Err(format!("{} is missing ({how}, or set {var})", p.display()))
            }
        };
        Ok(Binaries {
            shoal: pick(
                "SHOAL_BIN",
                root.join("target/debug/shoal"),
                "cargo build -p shoal",
            )?,
            backend: pick(
                "SHOAL_BACKEND",
                root.join("target/debug/shoal-backend"),
                "cargo build -p shoal-e2e --bin shoal-backend",
            )?,
            envoy: pick(
                "SHOAL_ENVOY",
                root.join("target/tools/envoy/envoy"),
                "scripts/install-tools",
            )?,
        })
    }
}

/// A process in a host that can be stopped and started again with the same command line.
pub struct Node {
    /// Label (also the log file's name).
    pub name: String,
    /// The host it runs in.
    pub host: Host,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Process>,
    paused: bool,
}

impl Node {
    fn new(name: &str, host: &Host, program: &Path, args: Vec<String>, dir: &Path) -> Node {
        Node {
            name: name.to_string(),
            host: host.clone(),
            program: program.to_path_buf(),
            args,
            log: dir.join(format!("{name}.log")),
            proc: None,
            paused: false,
        }
    }

    /// Starts the process (no-op when it runs).
    pub fn start(&mut self) {
        if self.proc.is_none() {
            let args = self
                .host
                .exec_args(&self.program.display().to_string(), &self.args);
            self.proc = Some(Process::spawn(
                &self.name,
                Path::new("ip"),
                &args,
                &self.log,
            ));
            self.paused = false;
        }
    }

    /// SIGKILL (no-op when it does not run).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        self.paused = false;
    }

    /// SIGTERM and wait for the exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(mut p) = self.proc.take() {
            if self.paused {
                p.signal("CONT");
            }
            p.signal("TERM");
            let deadline = Instant::now() + timeout;
            while p.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            p.kill9();
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        if let Some(p) = &self.proc {
            p.signal("STOP");
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(p) = &self.proc {
            if self.paused {
                p.signal("CONT");
            }
        }
        self.paused = false;
    }

    /// Whether it was started and not killed (a paused process counts as running).
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        shoal_e2e::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), n)
    }
}

/// One server.
pub struct Server {
    /// Raft node id.
    pub id: u64,
    /// The process.
    pub node: Node,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Server {
    /// Its API address.
    pub fn api(&self) -> SocketAddr {
        SocketAddr::from((self.node.host.ip, API_PORT))
    }
}

/// One agent host: the agent, its Envoy and its backends.
pub struct AgentHost {
    /// The agent process.
    pub agent: Node,
    /// The Envoy.
    pub envoy: Node,
    /// The backends: (instance id, color, port, process).
    pub backends: Vec<Backend>,
}

/// One backend instance.
pub struct Backend {
    /// Instance id, also the version it answers (`red-1`).
    pub id: String,
    /// Its color (the `version` attribute its virtual node selects).
    pub color: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The process.
    pub node: Node,
}

/// One agent host's part of the automatic-mTLS mesh.
pub struct SecureHost {
    /// The `caller` sidecar (mutual TLS to the vaults).
    pub caller: Node,
    /// The `vault` sidecar (mutual TLS only, RBAC from the model).
    pub vault: Node,
    /// The vault's application.
    pub backend: Node,
}

impl SecureHost {
    /// The caller sidecar's egress listener.
    pub fn caller_egress(&self) -> SocketAddr {
        SocketAddr::from((self.caller.host.ip, CALLER_EGRESS))
    }
    /// The vault sidecar's admin API.
    pub fn vault_admin(&self) -> SocketAddr {
        SocketAddr::from((self.vault.host.ip, VAULT_ADMIN))
    }
}

impl AgentHost {
    /// The agent's API.
    pub fn api(&self) -> SocketAddr {
        SocketAddr::from((self.agent.host.ip, API_PORT))
    }
    /// Envoy's egress listener.
    pub fn egress(&self) -> SocketAddr {
        SocketAddr::from((self.agent.host.ip, EGRESS_PORT))
    }
    /// Envoy's admin API.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.agent.host.ip, ENVOY_ADMIN_PORT))
    }
}

/// The whole system. Field order matters: processes are dropped (killed) before the proxy and
/// the network.
pub struct Harness {
    /// Servers by id.
    pub servers: BTreeMap<u64, Server>,
    /// Agent hosts.
    pub agents: Vec<AgentHost>,
    /// The automatic-mTLS mesh's processes, once its scenario started them.
    pub secure: Vec<SecureHost>,
    /// The binaries, for processes started later.
    pub bins: Binaries,
    /// The fault-injecting proxy on server links.
    pub proxy: FaultProxy,
    /// The network.
    pub net: Net,
    /// Where logs and data live.
    pub dir: PathBuf,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Polls `f` every 100 ms until `Ok`, for at most `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline || crate::interrupted() => {
                return Err(HarnessError::Failed(format!(
                    "{what} did not happen within {timeout:?}: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `PUT path` on `api`, retried (a fresh cluster may still settle); an "already exists" answer
/// after a lost reply counts as done.
fn put_retried(api: SocketAddr, path: &str, body: Value) -> Result<(), HarnessError> {
    poll(&format!("PUT {path}"), secs(30), || {
        let r = http_request(api, "PUT", path, Some(&body.to_string()), secs(10))
            .map_err(|e| e.to_string())?;
        if r.code == 200 || r.code == 409 {
            Ok(())
        } else {
            Err(format!("{} {}", r.code, r.body))
        }
    })
}

/// An Envoy 1.40 sidecar for `node` of `mesh` on `host`, bootstrapped by `shoal envoy bootstrap`
/// against the host's agent (not started).
#[allow(clippy::too_many_arguments)]
fn sidecar(
    bins: &Binaries,
    dir: &Path,
    host: &Host,
    name: &str,
    mesh: &str,
    node: &str,
    (ingress, egress, admin): (u16, u16, u16),
    app: Option<Ipv4Addr>,
) -> Result<Node, HarnessError> {
    let ip = host.ip.to_string();
    let ports = [ingress, egress, admin].map(|p| p.to_string());
    let xds = format!("{ip}:{XDS_PORT}");
    let mut args: Vec<&str> = vec![
        "envoy",
        "bootstrap",
        "--mesh",
        mesh,
        "--virtual-node",
        node,
        "--xds",
        &xds,
        "--listen-address",
        &ip,
        "--ingress-port",
        &ports[0],
        "--egress-port",
        &ports[1],
        "--admin-address",
        &ip,
        "--admin-port",
        &ports[2],
    ];
    let app = app.map(|a| a.to_string());
    if let Some(a) = &app {
        args.extend(["--app-address", a]);
    }
    let boot = shoal_e2e::run_shoal(&args, secs(20));
    if !boot.status.success() {
        return Err(HarnessError::Failed(format!(
            "shoal envoy bootstrap: {}",
            String::from_utf8_lossy(&boot.stderr)
        )));
    }
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, &boot.stdout).map_err(|source| HarnessError::Io {
        what: "write an Envoy bootstrap".into(),
        source,
    })?;
    let envoy_args: Vec<String> = vec![
        "-c".into(),
        file.display().to_string(),
        "--log-level".into(),
        "warn".into(),
        "--drain-time-s".into(),
        "1".into(),
        "--disable-hot-restart".into(),
    ];
    Ok(Node::new(name, host, &bins.envoy, envoy_args, dir))
}

/// `GET /` through `egress` for the automatic-mTLS mesh's vault: the vault that answered, or
/// the failure.
pub fn secure_call(egress: SocketAddr, timeout: Duration) -> Result<String, String> {
    match http_call(egress, "GET", "/", &[("host", SECURE_HOST)], None, timeout) {
        Ok(r) if r.code == 200 => Ok(r.body.trim().to_string()),
        Ok(r) => Err(format!("HTTP {} {}", r.code, r.body.trim())),
        Err(e) => Err(format!("error {e}")),
    }
}

/// `method path` with a JSON body on `addr`; the JSON answer when 200.
pub fn call_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let b = body.map(Value::to_string);
    let r = http_request(addr, method, path, b.as_deref(), timeout)
        .map_err(|e| format!("{method} {path} on {addr}: {e}"))?;
    if r.code != 200 {
        return Err(format!("{method} {path} on {addr}: {} {}", r.code, r.body));
    }
    r.json()
        .ok_or_else(|| format!("{method} {path} on {addr}: not JSON: {}", r.body))
}

/// The hostname a register virtual node holds for `value`.
pub fn register_hostname(value: u64) -> String {
    format!("v{value}.reg.chaos.local")
}

/// The spec body that sets register `reg-<i>` to `value`.
pub fn register_spec(value: u64) -> Value {
    json!({"serviceDiscovery": {"dns": {"hostname": register_hostname(value)}}})
}

/// The value in a described register virtual node.
pub fn register_value(described: &Value) -> Option<u64> {
    let vn = described.get("virtualNode").unwrap_or(described);
    vn["spec"]["serviceDiscovery"]["dns"]["hostname"]
        .as_str()?
        .strip_prefix('v')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The weighted route's spec.
pub fn route_spec(red: u32) -> Value {
    json!({"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
        {"virtualNode": "red", "weight": red}, {"virtualNode": "blue", "weight": 100 - red}]}}})
}

/// The path of the weighted route.
pub const ROUTE_PATH: &str = "/v20190125/meshes/chaos/virtualRouter/svc-vr/routes/split";

impl Harness {
    /// Builds the network, starts every process and waits until the data plane answers.
    /// `server_count` is the Raft cluster's size (3 or 5; hosts `s1`…`sN`).
    pub fn start(
        dir: &Path,
        subnet: u8,
        bins: &Binaries,
        server_count: u64,
    ) -> Result<Harness, HarnessError> {
        std::fs::create_dir_all(dir).map_err(|source| HarnessError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let names: Vec<(String, u8)> = (1..=server_count)
            .map(|id| (format!("s{id}"), 10 + id as u8))
            .chain([("a1".to_string(), 21u8), ("a2".to_string(), 22)])
            .collect();
        let hosts: Vec<(&str, u8)> = names.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        let net = Net::create(subnet, &hosts)?;
        let sip = |id: u64| Ipv4Addr::new(198, 18, subnet, 10 + id as u8);
        // One proxy listener per (server, port): 20000 + 10 * id + {0 raft, 1 api}.
        let mut routes = Vec::new();
        for id in 1..=server_count {
            for (k, port) in [(0u16, RAFT_PORT), (1, API_PORT)] {
                routes.push((
                    SocketAddrV4::new(net.proxy_ip(), 20000 + 10 * id as u16 + k),
                    SocketAddr::from((sip(id), port)),
                ));
            }
        }
        let proxy =
            FaultProxy::start(&routes, net.proxy_ip()).map_err(|source| HarnessError::Io {
                what: "start the fault proxy".into(),
                source,
            })?;
        // Every host reaches the other servers through the proxy.
        for h in net.hosts() {
            let mut rules = Vec::new();
            for id in 1..=server_count {
                if h.ip == sip(id) {
                    continue;
                }
                for (k, port) in [(0u16, RAFT_PORT), (1, API_PORT)] {
                    rules.push((
                        sip(id),
                        port,
                        SocketAddrV4::new(net.proxy_ip(), 20000 + 10 * id as u16 + k),
                    ));
                }
            }
            h.redirect(&rules)?;
        }
        let joins: Vec<String> = (1..=server_count)
            .map(|id| SocketAddr::from((sip(id), GOSSIP_PORT)).to_string())
            .collect();
        // Security on, as in production: servers talk Raft and agents follow the watch stream
        // over mutual TLS, with certificates from `shoal tls`.
        let pki = make_pki(&bins.shoal, dir, server_count)?;
        let mut servers = BTreeMap::new();
        for id in 1..=server_count {
            let host = net.host(&format!("s{id}")).clone();
            let data_dir = dir.join(format!("s{id}-data"));
            let mut args: Vec<String> = vec![
                "server".into(),
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--api".into(),
                format!("{}:{API_PORT}", host.ip),
                "--raft".into(),
                format!("{}:{RAFT_PORT}", host.ip),
                "--gossip".into(),
                format!("{}:{GOSSIP_PORT}", host.ip),
                "--bootstrap-expect".into(),
                server_count.to_string(),
            ];
            args.extend(tls_args(&pki, &format!("s{id}")));
            for (j, g) in joins.iter().enumerate() {
                if j as u64 + 1 != id {
                    args.push("--join".into());
                    args.push(g.clone());
                }
            }
            let node = Node::new(&format!("server-{id}"), &host, &bins.shoal, args, dir);
            servers.insert(id, Server { id, node, data_dir });
        }
        let mut agents = Vec::new();
        for n in 1..=2u8 {
            let host = net.host(&format!("a{n}")).clone();
            let ip = host.ip;
            let mut args: Vec<String> = [
                "agent",
                "--name",
                &format!("agent-{n}"),
                "--data-dir",
                &dir.join(format!("a{n}-data")).display().to_string(),
                "--api",
                &format!("{ip}:{API_PORT}"),
                "--gossip",
                &format!("{ip}:{GOSSIP_PORT}"),
                "--dns",
                &format!("{ip}:8600"),
                "--xds",
                &format!("{ip}:{XDS_PORT}"),
            ]
            .map(String::from)
            .to_vec();
            args.extend(tls_args(&pki, &format!("a{n}")));
            for g in &joins {
                args.push("--join".into());
                args.push(g.clone());
            }
            let agent = Node::new(&format!("agent-{n}"), &host, &bins.shoal, args, dir);
            let boot = shoal_e2e::run_shoal(
                &[
                    "envoy",
                    "bootstrap",
                    "--mesh",
                    MESH,
                    "--virtual-node",
                    "client",
                    "--xds",
                    &format!("{ip}:{XDS_PORT}"),
                    "--listen-address",
                    &ip.to_string(),
                    "--egress-port",
                    &EGRESS_PORT.to_string(),
                    "--ingress-port",
                    "15000",
                    "--admin-address",
                    &ip.to_string(),
                    "--admin-port",
                    &ENVOY_ADMIN_PORT.to_string(),
                ],
                secs(20),
            );
            if !boot.status.success() {
                return Err(HarnessError::Failed(format!(
                    "shoal envoy bootstrap: {}",
                    String::from_utf8_lossy(&boot.stderr)
                )));
            }
            let boot_file = dir.join(format!("envoy-{n}.json"));
            std::fs::write(&boot_file, &boot.stdout).map_err(|source| HarnessError::Io {
                what: "write the Envoy bootstrap".into(),
                source,
            })?;
            let envoy_args: Vec<String> = vec![
                "-c".into(),
                boot_file.display().to_string(),
                "--log-level".into(),
                "warn".into(),
                "--drain-time-s".into(),
                "1".into(),
                "--disable-hot-restart".into(),
            ];
            let envoy = Node::new(&format!("envoy-{n}"), &host, &bins.envoy, envoy_args, dir);
            let mut backends = Vec::new();
            for (color, port) in [("red", 8081u16), ("blue", 8082)] {
                let id = format!("{color}-{n}");
                let addr = SocketAddr::from((ip, port));
                let args = vec![
                    "--listen".to_string(),
                    addr.to_string(),
                    "--version".into(),
                    id.clone(),
                ];
                let node = Node::new(&format!("backend-{id}"), &host, &bins.backend, args, dir);
                backends.push(Backend {
                    id,
                    color: color.into(),
                    addr,
                    node,
                });
            }
            agents.push(AgentHost {
                agent,
                envoy,
                backends,
            });
        }
        let mut h = Harness {
            servers,
            agents,
            secure: Vec::new(),
            bins: bins.clone(),
            proxy,
            net,
            dir: dir.to_path_buf(),
        };
        for s in h.servers.values_mut() {
            s.node.start();
        }
        let leader = h.wait_leader(secs(60))?;
        h.create_model(h.servers[&leader].api())?;
        for a in &mut h.agents {
            a.agent.start();
            for b in &mut a.backends {
                b.node.start();
            }
        }
        for i in 0..h.agents.len() {
            h.register_backends(i)?;
            h.agents[i].envoy.start();
        }
        for i in 0..h.agents.len() {
            h.wait_data_plane(i, secs(90))?;
        }
        Ok(h)
    }

    fn create_model(&self, api: SocketAddr) -> Result<(), HarnessError> {
        let put = |path: &str, body: Value| put_retried(api, path, body);
        put("/v20190125/meshes", json!({"meshName": MESH}))?;
        for c in ["red", "blue"] {
            put(
                "/v20190125/meshes/chaos/virtualNodes",
                json!({"virtualNodeName": c, "spec": {
                    "serviceDiscovery": {"awsCloudMap": {"namespaceName": "chaos.local",
                        "serviceName": "svc", "attributes": [{"key": "version", "value": c}]}},
                    "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                        "healthCheck": {"protocol": "http", "path": "/health", "intervalMillis": 5000,
                            "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}}]}}),
            )?;
        }
        put(
            "/v20190125/meshes/chaos/virtualNodes",
            json!({"virtualNodeName": "client", "spec": {
                "serviceDiscovery": {"dns": {"hostname": "client.chaos.local"}},
                "backends": [{"virtualService": {"virtualServiceName": "svc.chaos.local"}}]}}),
        )?;
        put(
            "/v20190125/meshes/chaos/virtualRouters",
            json!({"virtualRouterName": "svc-vr", "spec": {
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}),
        )?;
        put(
            "/v20190125/meshes/chaos/virtualRouter/svc-vr/routes",
            json!({"routeName": "split", "spec": route_spec(50)}),
        )?;
        put(
            "/v20190125/meshes/chaos/virtualServices",
            json!({"virtualServiceName": "svc.chaos.local", "spec": {
                "provider": {"virtualRouter": {"virtualRouterName": "svc-vr"}}}}),
        )?;
        for i in 0..REGISTERS {
            put(
                "/v20190125/meshes/chaos/virtualNodes",
                json!({"virtualNodeName": format!("reg-{i}"), "spec": register_spec(0)}),
            )?;
        }
        Ok(())
    }

    /// Registers agent host `i`'s backends with its agent (they persist across its restarts).
    pub fn register_backends(&self, i: usize) -> Result<(), HarnessError> {
        let a = &self.agents[i];
        for b in &a.backends {
            let body = json!({"namespace": "chaos.local", "service": "svc", "instanceId": b.id,
                "address": b.addr.ip().to_string(), "port": b.addr.port(),
                "attributes": {"version": b.color}});
            poll("the agent's registration API", secs(30), || {
                call_json(a.api(), "PUT", "/v1/agent/instances", Some(&body), secs(3)).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// Waits until every backend answers through agent host `i`'s Envoy.
    pub fn wait_data_plane(&self, i: usize, timeout: Duration) -> Result<(), HarnessError> {
        let want: BTreeSet<String> = self
            .agents
            .iter()
            .flat_map(|a| a.backends.iter())
            .filter(|b| b.node.running())
            .map(|b| b.id.clone())
            .collect();
        let egress = self.agents[i].egress();
        poll(
            &format!("every backend behind envoy-{}", i + 1),
            timeout,
            || {
                let seen: BTreeSet<String> = (0..40).map(|_| data_call(egress)).collect();
                if seen == want {
                    Ok(())
                } else {
                    Err(format!("saw {seen:?}, want {want:?}"))
                }
            },
        )
    }

    /// Starts the automatic-mTLS mesh once (later calls return at once): the mesh tagged
    /// `shoal:mtls` = `STRICT`, on each agent host a vault (backend and sidecar, registered at
    /// the sidecar's ingress) and a caller sidecar; returns when every caller reaches every
    /// vault over mutual TLS.
    pub fn ensure_secure(&mut self) -> Result<(), HarnessError> {
        if !self.secure.is_empty() {
            return Ok(());
        }
        let leader = self.wait_leader(secs(60))?;
        let api = self.servers[&leader].api();
        put_retried(
            api,
            "/v20190125/meshes",
            json!({"meshName": SECURE_MESH, "tags": [{"key": "shoal:mtls", "value": "STRICT"}]}),
        )?;
        put_retried(
            api,
            "/v20190125/meshes/secure/virtualNodes",
            json!({"virtualNodeName": "vault", "spec": {
                "serviceDiscovery": {"awsCloudMap": {"namespaceName": "secure.local", "serviceName": "vault"}},
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                    "healthCheck": {"protocol": "http", "path": "/health", "intervalMillis": 5000,
                        "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}}]}}),
        )?;
        put_retried(
            api,
            "/v20190125/meshes/secure/virtualServices",
            json!({"virtualServiceName": "vault.secure.local", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "vault"}}}}),
        )?;
        put_retried(
            api,
            "/v20190125/meshes/secure/virtualNodes",
            json!({"virtualNodeName": "caller", "spec": {
                "serviceDiscovery": {"dns": {"hostname": "caller.secure.local"}},
                "backends": [{"virtualService": {"virtualServiceName": "vault.secure.local"}}]}}),
        )?;
        for (i, a) in self.agents.iter().enumerate() {
            let host = a.agent.host.clone();
            let n = i + 1;
            let id = format!("vault-{n}");
            let mut backend = Node::new(
                &format!("backend-{id}"),
                &host,
                &self.bins.backend,
                vec![
                    "--listen".into(),
                    SocketAddr::from((host.ip, 8080)).to_string(),
                    "--version".into(),
                    id.clone(),
                ],
                &self.dir,
            );
            let mut vault = sidecar(
                &self.bins,
                &self.dir,
                &host,
                &format!("envoy-vault-{n}"),
                SECURE_MESH,
                "vault",
                (VAULT_INGRESS, VAULT_EGRESS, VAULT_ADMIN),
                Some(host.ip),
            )?;
            let mut caller = sidecar(
                &self.bins,
                &self.dir,
                &host,
                &format!("envoy-caller-{n}"),
                SECURE_MESH,
                "caller",
                (CALLER_INGRESS, CALLER_EGRESS, CALLER_ADMIN),
                None,
            )?;
            backend.start();
            vault.start();
            caller.start();
            let body = json!({"namespace": "secure.local", "service": "vault", "instanceId": id,
                "address": host.ip.to_string(), "port": VAULT_INGRESS});
            poll("the agent's registration API", secs(30), || {
                call_json(a.api(), "PUT", "/v1/agent/instances", Some(&body), secs(3)).map(|_| ())
            })?;
            self.secure.push(SecureHost {
                caller,
                vault,
                backend,
            });
        }
        for i in 0..self.secure.len() {
            self.wait_secure(i, secs(90))?;
        }
        Ok(())
    }

    /// Waits until caller `i` reaches every vault (over mutual TLS).
    pub fn wait_secure(&self, i: usize, timeout: Duration) -> Result<(), HarnessError> {
        let want: BTreeSet<String> = (1..=self.secure.len())
            .map(|n| format!("vault-{n}"))
            .collect();
        let egress = self.secure[i].caller_egress();
        poll(
            &format!("caller-{} to reach every vault over mutual TLS", i + 1),
            timeout,
            || {
                let seen: BTreeSet<String> = (0..20)
                    .map(|_| secure_call(egress, secs(2)).unwrap_or_else(|e| e))
                    .collect();
                (seen == want)
                    .then_some(())
                    .ok_or(format!("saw {seen:?}, want {want:?}"))
            },
        )
    }

    /// Ids of the servers.
    pub fn server_ids(&self) -> Vec<u64> {
        self.servers.keys().copied().collect()
    }

    /// `/v1/status` of every server (None: no answer).
    pub fn statuses(&self) -> Vec<(u64, Option<NodeStatus>)> {
        self.servers
            .iter()
            .map(|(id, s)| {
                let st = if s.node.running() && !s.node.paused() {
                    node_status(s.api())
                } else {
                    None
                };
                (*id, st)
            })
            .collect()
    }

    /// Waits until every running, unpaused server names the same leader. Returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Result<u64, HarnessError> {
        poll("a leader all running servers agree on", timeout, || {
            let st = self.statuses();
            let live: Vec<&(u64, Option<NodeStatus>)> = st
                .iter()
                .filter(|(id, _)| {
                    let s = &self.servers[id].node;
                    s.running() && !s.paused()
                })
                .collect();
            let leaders: BTreeSet<Option<u64>> = live
                .iter()
                .map(|(_, s)| s.as_ref().and_then(|s| s.leader_id))
                .collect();
            match leaders.into_iter().collect::<Vec<_>>()[..] {
                [Some(l)] if live.iter().any(|(id, _)| *id == l) => Ok(l),
                _ => Err(format!("{st:?}")),
            }
        })
    }

    /// The leader now (as the first answering server sees it).
    pub fn leader(&self) -> Option<u64> {
        self.statuses()
            .into_iter()
            .find_map(|(_, s)| s.and_then(|s| s.leader_id))
    }

    /// Brings everything back: faults removed, every process running, the cluster with every
    /// server a healthy voter and every node converged. Returns how long convergence took.
    pub fn heal_everything(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let t = Instant::now();
        self.net.heal_all()?;
        self.proxy.set_delay(Duration::ZERO);
        for s in self.servers.values_mut() {
            s.node.resume();
            s.node.start();
        }
        for a in &mut self.agents {
            a.agent.start();
            for b in &mut a.backends {
                b.node.start();
            }
            a.envoy.start();
        }
        self.wait_converged(timeout)?;
        Ok(t.elapsed())
    }

    /// Waits until the whole system agrees (see [`Harness::converged`]).
    pub fn wait_converged(&self, timeout: Duration) -> Result<u64, HarnessError> {
        poll(
            "convergence of every server, agent and Envoy",
            timeout,
            || self.converged(),
        )
    }

    /// One check that the system has converged: every server answers with the same leader,
    /// every server a healthy voter, the same applied = committed index and revision; every agent has
    /// that revision; every server and agent sees the same endpoints, each backend healthy;
    /// every Envoy's applied config matches its agent's snapshot. Returns the revision.
    pub fn converged(&self) -> Result<u64, String> {
        let st = self.statuses();
        let mut seen = BTreeSet::new();
        for (id, s) in &st {
            let s = s.as_ref().ok_or(format!("server {id} does not answer"))?;
            if s.applied_index != s.commit_index {
                return Err(format!(
                    "server {id} applied {} of {}",
                    s.applied_index, s.commit_index
                ));
            }
            // Only the leader knows whether the others are healthy (it replicates to them).
            let is_leader = s.leader_id == Some(s.node_id);
            if s.voters().len() != self.servers.len()
                || (is_leader && s.members.iter().any(|m| !m.healthy))
            {
                return Err(format!("server {id} sees members {:?}", s.members));
            }
            seen.insert((s.leader_id, s.revision, s.applied_index));
        }
        let [(Some(_), revision, _)] = seen.iter().copied().collect::<Vec<_>>()[..] else {
            return Err(format!("servers disagree: {seen:?}"));
        };
        for (i, a) in self.agents.iter().enumerate() {
            let v = call_json(a.api(), "GET", "/v1/agent/status", None, secs(3))?;
            let r = v["revision"].as_u64().unwrap_or(0);
            if r != revision {
                return Err(format!(
                    "agent-{} is at revision {r}, servers at {revision}",
                    i + 1
                ));
            }
        }
        // Every backend healthy, the automatic-mTLS mesh's vaults too once they run.
        let want: BTreeSet<(String, bool)> = self
            .agents
            .iter()
            .flat_map(|a| a.backends.iter())
            .map(|b| (b.id.clone(), true))
            .chain((1..=self.secure.len()).map(|n| (format!("vault-{n}"), true)))
            .collect();
        let apis: Vec<(String, SocketAddr)> = self
            .servers
            .values()
            .map(|s| (s.node.name.clone(), s.api()))
            .chain(self.agents.iter().map(|a| (a.agent.name.clone(), a.api())))
            .collect();
        for (name, api) in apis {
            let v = call_json(api, "GET", "/v1/endpoints", None, secs(3))?;
            let got: BTreeSet<(String, bool)> = v["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        e["instance"]["id"].as_str().unwrap_or_default().to_string(),
                        e["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            if got != want {
                return Err(format!("{name} sees endpoints {got:?}, want {want:?}"));
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            config_matches(a).map_err(|e| format!("envoy-{}: {e}", i + 1))?;
        }
        Ok(revision)
    }

    /// The tails of every log, for failure reports.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        let nodes = self
            .servers
            .values()
            .map(|s| &s.node)
            .chain(self.agents.iter().flat_map(|a| [&a.agent, &a.envoy]));
        for node in nodes {
            out.push_str(&format!(
                "----- {} -----\n{}\n",
                node.name,
                node.log_tail(n)
            ));
        }
        out
    }
}

/// One data-plane request through `egress`: the answering backend's version, or the error.
pub fn data_call(egress: SocketAddr) -> String {
    match http_call(
        egress,
        "GET",
        "/",
        &[("host", SERVICE_HOST)],
        None,
        Duration::from_secs(5),
    ) {
        Ok(r) if r.code == 200 => r.body.trim().to_string(),
        Ok(r) => format!("HTTP {} {}", r.code, r.body.trim()),
        Err(e) => format!("error {e}"),
    }
}

/// What a configuration consists of, in a form both the agent's rendered snapshot and
/// Envoy's `/config_dump` can be reduced to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSummary {
    /// Listener names.
    pub listeners: BTreeSet<String>,
    /// Cluster names.
    pub clusters: BTreeSet<String>,
    /// Route configuration names.
    pub routes: BTreeSet<String>,
    /// Every weighted-cluster weight in the route configurations, sorted.
    pub weights: Vec<u64>,
    /// (cluster, address:port) of every endpoint.
    pub endpoints: BTreeSet<(String, String)>,
}

/// Reduces the agent's text rendering (`/v1/agent/xds/config`) to a summary.
pub fn summarize_render(text: &str) -> ConfigSummary {
    let mut s = ConfigSummary::default();
    let weight = regex::Regex::new(r"weight: Some\(UInt32Value \{ value: (\d+) \}\)").expect("re");
    let addr = regex::Regex::new(r#"^\s*address: "([^"]+)","#).expect("re");
    let port = regex::Regex::new(r"PortValue\((\d+)\)").expect("re");
    let mut kind = String::new();
    let mut name = String::new();
    let mut pending_addr: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("=== ") {
            let (k, n) = rest.split_once(' ').unwrap_or((rest, ""));
            kind = k.to_string();
            name = n.to_string();
            match kind.as_str() {
                "Listener" => {
                    s.listeners.insert(name.clone());
                }
                "Cluster" => {
                    s.clusters.insert(name.clone());
                }
                "Route" => {
                    s.routes.insert(name.clone());
                }
                _ => {}
            }
            continue;
        }
        match kind.as_str() {
            "Route" => {
                if let Some(c) = weight.captures(line) {
                    s.weights.push(c[1].parse().unwrap_or(0));
                }
            }
            "Endpoint" => {
                if let Some(c) = addr.captures(line) {
                    pending_addr = Some(c[1].to_string());
                } else if let (Some(c), Some(a)) = (port.captures(line), pending_addr.take()) {
                    s.endpoints.insert((name.clone(), format!("{a}:{}", &c[1])));
                }
            }
            _ => {}
        }
    }
    s.weights.sort();
    s
}

/// Reduces Envoy's `/config_dump?include_eds` to a summary (active dynamic resources only).
pub fn summarize_dump(dump: &Value) -> ConfigSummary {
    let mut s = ConfigSummary::default();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
            if !l["active_state"].is_null() {
                if let Some(n) = l["name"].as_str() {
                    s.listeners.insert(n.to_string());
                }
            }
        }
        for cl in c["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(n) = cl["cluster"]["name"].as_str() {
                s.clusters.insert(n.to_string());
            }
        }
        for r in c["dynamic_route_configs"].as_array().into_iter().flatten() {
            if let Some(n) = r["route_config"]["name"].as_str() {
                s.routes.insert(n.to_string());
            }
            collect_weights(&r["route_config"], &mut s.weights);
        }
        for e in c["dynamic_endpoint_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let cfg = &e["endpoint_config"];
            let cluster = cfg["cluster_name"].as_str().unwrap_or_default().to_string();
            for loc in cfg["endpoints"].as_array().into_iter().flatten() {
                for lb in loc["lb_endpoints"].as_array().into_iter().flatten() {
                    let sa = &lb["endpoint"]["address"]["socket_address"];
                    if let (Some(a), Some(p)) = (sa["address"].as_str(), sa["port_value"].as_u64())
                    {
                        s.endpoints.insert((cluster.clone(), format!("{a}:{p}")));
                    }
                }
            }
        }
    }
    s.weights.sort();
    s
}

fn collect_weights(v: &Value, out: &mut Vec<u64>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(cs)) =
                m.get("weighted_clusters").and_then(|w| w.get("clusters"))
            {
                out.extend(cs.iter().filter_map(|c| c["weight"].as_u64()));
            }
            m.values().for_each(|x| collect_weights(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_weights(x, out)),
        _ => {}
    }
}

/// Whether agent host `a`'s Envoy applied exactly what its agent would send it now.
pub fn config_matches(a: &AgentHost) -> Result<(), String> {
    let path = format!(
        "/v1/agent/xds/config?proxy={}&listen_address={}&egress_port={EGRESS_PORT}&ingress_port=15000",
        shoal_e2e::percent_encode(PROXY_ID),
        a.agent.host.ip
    );
    let r = http_request(a.api(), "GET", &path, None, Duration::from_secs(5))
        .map_err(|e| format!("agent config: {e}"))?;
    if r.code != 200 {
        return Err(format!("agent config: {} {}", r.code, r.body));
    }
    let want = summarize_render(&r.body);
    let dump = http_request(
        a.admin(),
        "GET",
        "/config_dump?include_eds",
        None,
        Duration::from_secs(5),
    )
    .map_err(|e| format!("config_dump: {e}"))?;
    if dump.code != 200 {
        return Err(format!("config_dump: HTTP {}", dump.code));
    }
    let got = summarize_dump(&dump.json().ok_or("config_dump is not JSON")?);
    if want.listeners.is_empty() || want.clusters.is_empty() {
        return Err(format!("the agent's snapshot is empty: {want:?}"));
    }
    if got != want {
        return Err(format!(
            "Envoy's config differs from the agent's snapshot:\n envoy {got:?}\n agent {want:?}"
        ));
    }
    Ok(())
}

/// The linearizable value of register `i` read through `api`.
pub fn read_register(api: SocketAddr, i: usize, timeout: Duration) -> Result<u64, String> {
    let v = call_json(
        api,
        "GET",
        &format!("/v20190125/meshes/{MESH}/virtualNodes/reg-{i}"),
        None,
        timeout,
    )?;
    register_value(&v).ok_or(format!("no register value in {v}"))
}

/// The revision each agent serves (None: no answer), for checks while servers are down.
pub fn agent_revision(a: &AgentHost) -> Option<u64> {
    call_json(a.api(), "GET", "/v1/agent/status", None, secs(3))
        .ok()
        .and_then(|v| v["revision"].as_u64())
}

/// Envoy's endpoints (`/clusters`) contain `addr`.
pub fn envoy_lists(a: &AgentHost, addr: SocketAddr) -> Result<bool, String> {
    let r =
        http_request(a.admin(), "GET", "/clusters", None, secs(3)).map_err(|e| e.to_string())?;
    if r.code != 200 {
        return Err(format!("HTTP {}", r.code));
    }
    Ok(r.body.contains(&format!("{addr}::")))
}
