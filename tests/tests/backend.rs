//! The `shoal-backend` test server: starts the built binary on free ports and drives every
//! control endpoint with plain HTTP/1.1 requests (and the gRPC health service with a tonic
//! client), so that the end-to-end tests that put it behind Envoy can trust what it does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the backend may take to print its addresses, and one request to be answered.
const WAIT: Duration = Duration::from_secs(20);

/// A running backend; killed when dropped (a test that passed has already stopped it).
struct Backend {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(version: &str) -> Backend {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-backend"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--version",
            version,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start shoal-backend");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut backend = Backend {
        child,
        http: "0.0.0.0:0".parse().unwrap(),
        grpc: "0.0.0.0:0".parse().unwrap(),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("shoal-backend printed `listening <addr>` in time");
        if let Some(addr) = line.strip_prefix("grpc ") {
            backend.grpc = addr.parse().expect("gRPC address");
        } else if let Some(addr) = line.strip_prefix("listening ") {
            backend.http = addr.parse().expect("HTTP address");
            break;
        }
    }
    assert_ne!(
        backend.grpc.port(),
        0,
        "no `grpc <addr>` line before `listening`"
    );
    backend
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn request(addr: SocketAddr, method: &str, target: &str, extra: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to shoal-backend");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if method == "POST" {
        head.push_str("content-length: 0\r\n");
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(b: &Backend, target: &str) -> Answer {
    request(b.http, "GET", target, &[])
}

fn post(b: &Backend, target: &str) -> Answer {
    let a = request(b.http, "POST", target, &[]);
    assert_eq!(a.status, 200, "POST {target}: {a:?}");
    a
}

/// The gRPC health status of service `""`, as its name (`SERVING`, `NOT_SERVING`).
fn grpc_health(addr: SocketAddr) -> String {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let call = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let mut client = HealthClient::new(channel);
            let r = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok::<_, Box<dyn std::error::Error>>(r.into_inner().status)
        };
        let status = tokio::time::timeout(WAIT, call)
            .await
            .expect("gRPC health answered in time")
            .expect("gRPC health check");
        ServingStatus::try_from(status)
            .expect("a known status")
            .as_str_name()
            .to_string()
    })
}

#[test]
fn backend_serves_versions_echo_and_faults_on_command() {
    let mut b = start("test-v1");

    // Normal answers carry the version in the body and a header.
    let a = get(&b, "/");
    assert_eq!((a.status, a.body.as_str()), (200, "test-v1\n"));
    assert_eq!(a.headers.get("x-backend-version").unwrap(), "test-v1");
    assert_eq!(get(&b, "/any/other/path?x=1").body, "test-v1\n");
    assert_eq!(request(b.http, "DELETE", "/thing", &[]).status, 200);

    // Echo describes the request.
    let a = request(b.http, "PUT", "/echo/a/b?x=1&y=2", &[("x-test", "yes")]);
    assert_eq!(a.status, 200);
    let echo = a.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["headers"]["x-test"], "yes");
    assert_eq!(echo["protocol"], "HTTP/1.1");
    assert_eq!(echo["version"], "test-v1");

    // Health: HTTP and gRPC follow the mode.
    assert_eq!(get(&b, "/health").status, 200);
    assert_eq!(grpc_health(b.grpc), "SERVING");
    post(&b, "/control/health?ok=false");
    assert_eq!(get(&b, "/health").status, 503);
    assert_eq!(grpc_health(b.grpc), "NOT_SERVING");
    assert_eq!(
        get(&b, "/").status,
        200,
        "health mode does not fail traffic"
    );
    post(&b, "/control/health?ok=true");
    assert_eq!(get(&b, "/health").status, 200);
    assert_eq!(grpc_health(b.grpc), "SERVING");

    // A counted failure: exactly N normal requests fail; /health and control do not count.
    let settings = post(&b, "/control/fail?status=502&count=2").json();
    assert_eq!(settings["fail"]["status"], 502);
    assert_eq!(get(&b, "/").status, 502);
    assert_eq!(get(&b, "/health").status, 200);
    assert_eq!(get(&b, "/control/stats").status, 200);
    let a = get(&b, "/echo/x");
    assert_eq!(a.status, 502);
    assert_eq!(a.headers.get("x-backend-version").unwrap(), "test-v1");
    assert_eq!(get(&b, "/").status, 200);

    // Without a count, every request fails until reset; the default status is 503.
    post(&b, "/control/fail");
    for _ in 0..3 {
        assert_eq!(get(&b, "/").status, 503);
    }
    let stats = get(&b, "/control/stats").json();
    assert_eq!(stats["injected_failures"], 5, "{stats}");

    // Slow: every normal answer waits.
    post(&b, "/control/slow?ms=300");
    let started = Instant::now();
    assert_eq!(get(&b, "/").status, 503, "slow and fail combine");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&b, "/health").status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "/health is never slowed"
    );

    // Reset: no failure, no delay, healthy, stats zeroed.
    post(&b, "/control/health?ok=false");
    let settings = post(&b, "/control/reset").json();
    assert_eq!(settings["fail"], Value::Null);
    assert_eq!(settings["slow_ms"], 0);
    assert_eq!(settings["healthy"], true);
    assert_eq!(get(&b, "/health").status, 200);
    assert_eq!(grpc_health(b.grpc), "SERVING");
    let started = Instant::now();
    assert_eq!(get(&b, "/").status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Stats count by class since the reset (the stats request counts itself).
    get(&b, "/echo");
    let stats = get(&b, "/control/stats").json();
    assert_eq!(stats["normal"], 1, "{stats}");
    assert_eq!(stats["echo"], 1, "{stats}");
    assert_eq!(stats["health"], 1, "{stats}");
    assert_eq!(stats["control"], 1, "{stats}");
    assert_eq!(stats["injected_failures"], 0, "{stats}");

    // Bad control requests are refused.
    for target in [
        "/control/fail?status=abc",
        "/control/fail?status=1000",
        "/control/fail?count=-1",
        "/control/slow",
        "/control/health?ok=maybe",
    ] {
        let a = request(b.http, "POST", target, &[]);
        assert_eq!(a.status, 400, "{target}: {a:?}");
    }
    assert_eq!(get(&b, "/control/reset").status, 405);
    assert_eq!(request(b.http, "POST", "/control/nope", &[]).status, 404);

    // SIGTERM stops it.
    let pid = b.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "shoal-backend ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
