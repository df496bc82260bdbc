//! `shoal-backend`: a tiny HTTP (and optionally gRPC health) server that end-to-end tests put
//! behind real Envoys, so that routing, retries, timeouts, outlier detection and health checks
//! can be observed from the outside and faults can be switched on and off at run time.
//!
//! ```text
//! shoal-backend --listen ADDR [--version TEXT] [--grpc ADDR]
//! ```
//!
//! - `--listen` (default `127.0.0.1:8080`): HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on
//!   the same port. Port 0 picks a free one.
//! - `--version` (default `v1`): the text every normal answer carries, so a test can tell which
//!   backend (which weighted target, which version of a service) answered.
//! - `--grpc` (optional): also serve `grpc.health.v1.Health` there; service `""` follows the
//!   health mode.
//!
//! Once bound it prints `grpc <addr>` (with `--grpc`) and then `listening <addr>` on stdout, so
//! a test can start it on port 0 and read the addresses; `listening` is printed last, when every
//! port is ready. It exits on SIGTERM or Ctrl-C, giving open connections a moment to finish.
//!
//! Endpoints (every answer carries `x-backend-version: <version>`):
//!
//! - `GET /health`: 200 `ok` or 503 `unhealthy`, by the health mode. Never failed or slowed.
//! - `/echo` and `/echo/...`, any method: JSON `{method, path, query, headers, protocol,
//!   version}` describing the request.
//! - any other path, any method: 200 with body `<version>\n`.
//! - `POST /control/fail?status=503&count=N`: the next N normal requests (everything but
//!   `/health` and `/control/...`) answer `status` (default 503); without `count`, all of them
//!   until changed or reset.
//! - `POST /control/slow?ms=M`: wait M ms before every normal answer (injected failures too).
//! - `POST /control/health?ok=true|false`: sets `/health` and the gRPC health status.
//! - `POST /control/reset`: back to the start: no failures, no delay, healthy, stats zeroed.
//! - `GET /control/stats`: JSON counts of requests by class (`normal`, `echo`, `health`,
//!   `control`) and of `injected_failures`.
//!
//! Control endpoints answer with the resulting settings as JSON, or 400 on a bad parameter.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How long open connections get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(3);

/// The header that tells which backend answered.
const VERSION_HEADER: &str = "x-backend-version";

/// Command line of `shoal-backend`.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-backend",
    about = "Test backend for shoal's end-to-end tests"
)]
struct Args {
    /// Address to serve HTTP/1.1 and h2c on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Text that every normal answer carries (body and `x-backend-version`).
    #[arg(long, value_name = "TEXT", default_value = "v1")]
    version: String,
    /// Also serve the gRPC health service on this address.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
}

/// Why the backend could not run.
#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error("binding {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(tonic::transport::Error),
}

/// An injected failure: the status to answer and how many more requests get it (`None`: all).
#[derive(Debug, Clone, Copy)]
struct Fail {
    status: StatusCode,
    remaining: Option<u64>,
}

/// Requests served, by class; shown by `/control/stats`.
#[derive(Debug, Default)]
struct Stats {
    normal: AtomicU64,
    echo: AtomicU64,
    health: AtomicU64,
    control: AtomicU64,
    injected_failures: AtomicU64,
}

/// The backend's state, shared by every connection.
struct Backend {
    version: String,
    fail: Mutex<Option<Fail>>,
    slow_ms: AtomicU64,
    healthy: AtomicBool,
    grpc: Option<HealthReporter>,
    stats: Stats,
}

impl Backend {
    /// The answer with the version header every response carries.
    fn respond(&self, status: StatusCode, content_type: &str, body: String) -> Response {
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        let headers = r.headers_mut();
        headers.insert(
            "content-type",
            HeaderValue::from_str(content_type).expect("static content type"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.version) {
            headers.insert(VERSION_HEADER, v);
        }
        r
    }

    fn json(&self, status: StatusCode, value: Value) -> Response {
        self.respond(status, "application/json", format!("{value}\n"))
    }

    fn text(&self, status: StatusCode, body: impl Into<String>) -> Response {
        self.respond(status, "text/plain; charset=utf-8", body.into())
    }

    /// Takes one injected failure, if any is armed.
    fn take_failure(&self) -> Option<StatusCode> {
        let mut fail = self.fail.lock().unwrap_or_else(|e| e.into_inner());
        let f = (*fail)?;
        match f.remaining {
            None => Some(f.status),
            Some(n) if n <= 1 => {
                *fail = None;
                (n == 1).then_some(f.status)
            }
            Some(n) => {
                *fail = Some(Fail {
                    remaining: Some(n - 1),
                    ..f
                });
                Some(f.status)
            }
        }
    }

    async fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
        if let Some(reporter) = &self.grpc {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
        }
    }

    fn settings(&self) -> Value {
        let fail = *self.fail.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "fail": fail.map(|f| json!({"status": f.status.as_u16(), "remaining": f.remaining})),
            "slow_ms": self.slow_ms.load(Ordering::SeqCst),
            "healthy": self.healthy.load(Ordering::SeqCst),
        })
    }

    fn stats(&self) -> Value {
        let s = &self.stats;
        json!({
            "normal": s.normal.load(Ordering::SeqCst),
            "echo": s.echo.load(Ordering::SeqCst),
            "health": s.health.load(Ordering::SeqCst),
            "control": s.control.load(Ordering::SeqCst),
            "injected_failures": s.injected_failures.load(Ordering::SeqCst),
        })
    }
}

/// The query string as name → value (no percent-decoding: the parameters are plain).
fn query_params(req: &Request) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

async fn handle(State(b): State<Arc<Backend>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/health" {
        b.stats.health.fetch_add(1, Ordering::SeqCst);
        return if b.healthy.load(Ordering::SeqCst) {
            b.text(StatusCode::OK, "ok\n")
        } else {
            b.text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
        };
    }
    if let Some(action) = path.strip_prefix("/control/") {
        b.stats.control.fetch_add(1, Ordering::SeqCst);
        let method = req.method().clone();
        return control(&b, action, &method, query_params(&req)).await;
    }

    let echo = path == "/echo" || path.starts_with("/echo/");
    if echo {
        b.stats.echo.fetch_add(1, Ordering::SeqCst);
    } else {
        b.stats.normal.fetch_add(1, Ordering::SeqCst);
    }
    let delay = b.slow_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = b.take_failure() {
        b.stats.injected_failures.fetch_add(1, Ordering::SeqCst);
        return b.text(status, format!("injected failure {}\n", status.as_u16()));
    }
    if echo {
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&value);
                }
                _ => {
                    headers.insert(name.to_string(), Value::String(value));
                }
            }
        }
        return b.json(
            StatusCode::OK,
            json!({
                "method": req.method().as_str(),
                "path": path,
                "query": req.uri().query().unwrap_or(""),
                "headers": headers,
                "protocol": format!("{:?}", req.version()),
                "version": b.version,
            }),
        );
    }
    b.text(StatusCode::OK, format!("{}\n", b.version))
}

/// A control endpoint (`action` is the path after `/control/`). Takes the method and the
/// query rather than the request, whose body is not `Sync` and so cannot be borrowed across
/// the awaits here.
async fn control(
    b: &Backend,
    action: &str,
    method: &Method,
    params: BTreeMap<String, String>,
) -> Response {
    let bad = |msg: String| b.text(StatusCode::BAD_REQUEST, format!("{msg}\n"));
    let post = *method == Method::POST;
    match (action, post) {
        ("stats", false) if *method == Method::GET => b.json(StatusCode::OK, b.stats()),
        ("fail", true) => {
            let status = match params.get("status").map(|s| s.parse::<u16>()) {
                None => StatusCode::SERVICE_UNAVAILABLE,
                Some(Ok(n)) => match StatusCode::from_u16(n) {
                    Ok(s) if (100..=599).contains(&n) => s,
                    _ => return bad(format!("status {n} is not an HTTP status")),
                },
                Some(Err(e)) => return bad(format!("status: {e}")),
            };
            let remaining = match params.get("count").map(|s| s.parse::<u64>()) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(e)) => return bad(format!("count: {e}")),
            };
            *b.fail.lock().unwrap_or_else(|e| e.into_inner()) =
                (remaining != Some(0)).then_some(Fail { status, remaining });
            b.json(StatusCode::OK, b.settings())
        }
        ("slow", true) => match params.get("ms").map(|s| s.parse::<u64>()) {
            Some(Ok(ms)) => {
                b.slow_ms.store(ms, Ordering::SeqCst);
                b.json(StatusCode::OK, b.settings())
            }
            Some(Err(e)) => bad(format!("ms: {e}")),
            None => bad("ms is required".into()),
        },
        ("health", true) => match params.get("ok").map(String::as_str) {
            Some("true") => {
                b.set_healthy(true).await;
                b.json(StatusCode::OK, b.settings())
            }
            Some("false") => {
                b.set_healthy(false).await;
                b.json(StatusCode::OK, b.settings())
            }
            _ => bad("ok must be true or false".into()),
        },
        ("reset", true) => {
            *b.fail.lock().unwrap_or_else(|e| e.into_inner()) = None;
            b.slow_ms.store(0, Ordering::SeqCst);
            b.set_healthy(true).await;
            let s = &b.stats;
            for c in [
                &s.normal,
                &s.echo,
                &s.health,
                &s.control,
                &s.injected_failures,
            ] {
                c.store(0, Ordering::SeqCst);
            }
            b.json(StatusCode::OK, b.settings())
        }
        ("stats" | "fail" | "slow" | "health" | "reset", _) => {
            b.text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => b.text(StatusCode::NOT_FOUND, "no such control endpoint\n"),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BackendError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BackendError::Bind { what, addr, source })
}

async fn run(args: Args) -> Result<(), BackendError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let reporter = match args.grpc {
        Some(addr) => {
            let listener = bind("gRPC", addr).await?;
            let local = listener.local_addr().map_err(BackendError::Http)?;
            let (reporter, service) = tonic_health::server::health_reporter();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                    .map_err(BackendError::Grpc)
            });
            println!("grpc {local}");
            Some(reporter)
        }
        None => None,
    };

    let backend = Arc::new(Backend {
        version: args.version,
        fail: Mutex::new(None),
        slow_ms: AtomicU64::new(0),
        healthy: AtomicBool::new(true),
        grpc: reporter,
        stats: Stats::default(),
    });
    let app = Router::new().fallback(handle).with_state(backend);
    let listener = bind("HTTP", args.listen).await?;
    let local = listener.local_addr().map_err(BackendError::Http)?;
    let stop = stopped(stop_rx);
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .map_err(BackendError::Http)
    });
    println!("listening {local}");
    let _ = std::io::stdout().flush();
    tracing::info!(%local, "shoal-backend ready");

    tokio::select! {
        _ = shutdown_signal() => {}
        Some(done) = tasks.join_next() => {
            // A server ended on its own: that is an error (or a panic) to report.
            match done {
                Ok(result) => result?,
                Err(e) => panic!("server task: {e}"),
            }
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; exiting anyway");
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("shoal-backend: {e}");
        std::process::exit(1);
    }
}
