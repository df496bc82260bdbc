//! End-to-end tests live in `tests/tests/`; this library holds their shared helpers.
//!
//! The helpers drive real processes only: the `shoal` binary (started as `shoal dev` on free
//! loopback ports with its own data directory), the AWS CLI and `jq`. Where each comes from:
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
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
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
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        decode_chunked(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok((code, body))
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
    /// Load the example mesh (`false` passes `--no-example`).
    pub example: bool,
    /// File that receives the process's stdout and stderr (appended to, so restarts keep history).
    pub log: PathBuf,
}

impl DevConfig {
    /// A configuration in `root` (data in `root/data`, log in `root/shoal.log`) on free ports,
    /// without the example mesh.
    pub fn in_dir(root: &Path) -> DevConfig {
        let ports = free_ports(2);
        DevConfig {
            data_dir: root.join("data"),
            api: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            raft: SocketAddr::from(([127, 0, 0, 1], ports[1])),
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
            .arg(config.raft.to_string());
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
