//! The health probes of the instances registered on an agent's host: the I/O half of health
//! checking. Which check an instance gets, the clamped [`CheckSpec`] and the threshold
//! [`Tracker`] are pure and live in `shoal_model::health`.
//!
//! - [`probe`]: one probe of one target over TCP, HTTP/1.1, HTTP/2 with prior knowledge (h2c) or
//!   the gRPC health protocol, bounded by the spec's timeout.
//! - [`spawn_check`]: a task that probes every interval and publishes the state through a
//!   [`tokio::sync::watch`] channel in a [`CheckHandle`]; dropping the handle stops it.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_model::api::PortProtocol;
pub use shoal_model::health::{CheckSpec, HealthState, Tracker};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The `User-Agent` of HTTP probes, so that an instance's logs tell checks from traffic.
const USER_AGENT_VALUE: &str = "shoal-health-check";

/// Why one probe failed; its `Display` is the human-readable reason [`probe`] returns.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("invalid request (path {path:?}): {reason}")]
    Request { path: String, reason: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0} (healthy is 2xx)")]
    Status(StatusCode),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC connect: {0}")]
    GrpcConnect(String),
    #[error("gRPC health check: {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
    #[error("gRPC health status {0} (healthy is SERVING)")]
    NotServing(String),
}

/// The message of an error followed by those of its sources: hyper's and tonic's top-level
/// messages ("transport error") say little on their own.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

/// Probes `target` once as `spec` says (its protocol, path and timeout; the port override is
/// *not* applied here, see [`CheckSpec::target_for`]).
///
/// The whole probe, connection included, is bounded by `spec.timeout`. Every probe uses a new
/// connection, so a probe also checks that the instance still accepts them. Returns the reason
/// of a failure as one readable line.
pub async fn probe(
    target: SocketAddr,
    spec: &CheckSpec,
    client_cert: Option<&ClientCert>,
) -> Result<(), String> {
    let attempt = async {
        let stream = connect(target).await?;
        match &spec.tls {
            None => over(stream, target, spec).await,
            Some(_) => {
                let tls = tls_connect(stream, target, spec.protocol, client_cert).await?;
                over(tls, target, spec).await
            }
        }
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(spec.timeout)),
    }
    .map_err(|e| e.to_string())
}

async fn connect(target: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    // Nagle only delays a probe's single small request.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A workload certificate (chain and key, PEM) a probe presents to a listener that asks for
/// one.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate chain, PEM.
    pub chain_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("ClientCert")
    }
}

/// Where a check finds the certificate of the node it probes as (the agent's current one:
/// they are renewed).
pub type ClientCertSource = Arc<dyn Fn(&str, &str) -> Option<ClientCert> + Send + Sync>;

/// Runs the protocol of `spec` over an established connection.
async fn over<IO>(io: IO, target: SocketAddr, spec: &CheckSpec) -> Result<(), ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match spec.protocol {
        // Connected (and, over TLS, handshaken): alive.
        PortProtocol::Tcp => Ok(()),
        PortProtocol::Http => probe_http1(io, target, &spec.path).await,
        PortProtocol::Http2 => probe_h2c(io, target, &spec.path).await,
        PortProtocol::Grpc => probe_grpc(io).await,
    }
}

/// A TLS handshake over `stream`, with `client_cert` when given, offering the ALPN of
/// `protocol`. The server's certificate is not verified (see [`CheckSpec::tls`]): only its
/// handshake signature is, with the certificate's key.
async fn tls_connect(
    stream: TcpStream,
    target: SocketAddr,
    protocol: PortProtocol,
    client_cert: Option<&ClientCert>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                .map_err(|e| ProbeError::Tls(format!("the workload key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ProbeError::Tls(e.to_string()))?
        }
    };
    config.alpn_protocols = match protocol {
        PortProtocol::Http2 | PortProtocol::Grpc => vec![b"h2".to_vec()],
        PortProtocol::Http => vec![b"http/1.1".to_vec()],
        PortProtocol::Tcp => Vec::new(),
    };
    let name = ServerName::IpAddress(target.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| ProbeError::Tls(chain(&e)))
}

/// Accepts any server certificate (a liveness probe; see [`CheckSpec::tls`]) but checks the
/// handshake's signatures, so the TLS exchange itself is complete.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn get_request(
    uri: String,
    path: &str,
    authority: &str,
) -> Result<Request<Empty<Bytes>>, ProbeError> {
    Request::get(uri)
        .header(HOST, authority)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::new())
        .map_err(|e| ProbeError::Request {
            path: path.to_string(),
            reason: e.to_string(),
        })
}

/// Drives `conn` (a hyper client connection) while `send` waits for the response head, so that
/// the probe needs no spawned task and everything stops when the probe's timeout drops it.
async fn exchange<C, S>(conn: C, send: S) -> Result<StatusCode, ProbeError>
where
    C: Future<Output = hyper::Result<()>>,
    S: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    tokio::pin!(conn);
    tokio::pin!(send);
    let response = tokio::select! {
        r = &mut send => r,
        r = &mut conn => {
            // The connection can end first with the response already in (HTTP/1.1 with
            // `connection: close`); if it ended without one, `send` says why.
            r.map_err(|e| ProbeError::Http(chain(&e)))?;
            send.await
        }
    }
    .map_err(|e| ProbeError::Http(chain(&e)))?;
    let status = response.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

async fn probe_http1<IO>(stream: IO, target: SocketAddr, path: &str) -> Result<(), ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let authority = target.to_string();
    let mut req = get_request(path.to_string(), path, &authority)?;
    // One request per connection: say so, and the server closes it without waiting.
    req.headers_mut()
        .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProbeError::Http(chain(&e)))?;
    exchange(conn, sender.send_request(req)).await.map(drop)
}

async fn probe_h2c<IO>(stream: IO, target: SocketAddr, path: &str) -> Result<(), ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let authority = target.to_string();
    // HTTP/2 carries scheme and authority as pseudo-headers, taken from an absolute URI.
    let req = get_request(format!("http://{authority}{path}"), path, &authority)?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| ProbeError::Http(chain(&e)))?;
    exchange(conn, sender.send_request(req)).await.map(drop)
}

async fn probe_grpc<IO>(stream: IO) -> Result<(), ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let endpoint = tonic::transport::Endpoint::from_static("http://probe")
        .user_agent(USER_AGENT_VALUE)
        .map_err(|e| ProbeError::GrpcConnect(chain(&e)))?;
    // The channel runs over the connection already made (plain or TLS), once.
    let stream = Arc::new(Mutex::new(Some(stream)));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: hyper::Uri| {
            let taken = stream.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move {
                taken.map(TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotConnected, "one connection a probe")
                })
            }
        }))
        .await
        .map_err(|e| ProbeError::GrpcConnect(chain(&e)))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| ProbeError::Grpc {
            code: s.code(),
            message: s.message().to_string(),
        })?;
    let status = response.into_inner().status;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(ProbeError::NotServing(other.as_str_name().to_string())),
        Err(_) => Err(ProbeError::NotServing(format!("unknown value {status}"))),
    }
}

/// A running health check (see [`spawn_check`]). Dropping it stops the check.
#[derive(Debug)]
pub struct CheckHandle {
    target: SocketAddr,
    state: watch::Receiver<HealthState>,
    last_failure: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl CheckHandle {
    /// The address being probed (the instance's, with the spec's port override applied).
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        *self.state.borrow()
    }

    /// A receiver of the state, to wait for transitions (it sees the check end, as a closed
    /// channel, when the handle is dropped).
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.state.clone()
    }

    /// The reason the most recent failed probe gave, kept after later passes so that a flapping
    /// instance can still be explained; `None` until a probe fails.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for CheckHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking the instance at `target` on the current tokio runtime (it panics outside
/// one, like [`tokio::spawn`]).
///
/// The first probe runs at once, then one every `spec.interval` (a probe that outlasts the
/// interval delays the next rather than overlapping it). Each result goes through a
/// [`Tracker`]; transitions are published on the handle's watch channel and logged with the
/// target and the reason.
pub fn spawn_check(
    target: SocketAddr,
    spec: CheckSpec,
    certs: Option<ClientCertSource>,
) -> CheckHandle {
    let target = spec.target_for(target);
    let (tx, rx) = watch::channel(HealthState::Unknown);
    let last_failure = Arc::new(Mutex::new(None));
    let task = tokio::spawn(run_check(target, spec, certs, tx, last_failure.clone()));
    CheckHandle {
        target,
        state: rx,
        last_failure,
        task,
    }
}

async fn run_check(
    target: SocketAddr,
    spec: CheckSpec,
    certs: Option<ClientCertSource>,
    tx: watch::Sender<HealthState>,
    last_failure: Arc<Mutex<Option<String>>>,
) {
    let mut tracker = Tracker::for_spec(&spec);
    let mut ticker = tokio::time::interval(spec.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let protocol = spec.protocol.as_str();
    loop {
        ticker.tick().await;
        // The node's current certificate, when the listener wants one (a proxy's is renewed
        // at half-life: looked up at every probe).
        let cert = spec
            .tls
            .as_ref()
            .and_then(|t| t.client_identity.as_ref())
            .and_then(|(mesh, node)| certs.as_ref().and_then(|c| c(mesh, node)));
        let result = probe(target, &spec, cert.as_ref()).await;
        if let Err(reason) = &result {
            tracing::debug!(%target, protocol, %reason, "health probe failed");
            *last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        }
        let from = tracker.state();
        let Some(to) = tracker.record(result.is_ok()) else {
            continue;
        };
        match &result {
            Err(reason) => {
                tracing::warn!(%target, protocol, %from, %to, %reason, "instance health changed")
            }
            Ok(()) => tracing::info!(%target, protocol, %from, %to, "instance health changed"),
        }
        tx.send_replace(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use axum::extract::State;
    use axum::routing::get;
    use axum::Router;
    use tokio::net::TcpListener;

    fn spec(protocol: PortProtocol, path: &str) -> CheckSpec {
        CheckSpec {
            protocol,
            path: path.to_string(),
            port: None,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            tls: None,
        }
    }

    /// Waits (at most 10 s) until the check reports `want`.
    async fn wait_state(handle: &CheckHandle, want: HealthState) {
        let mut rx = handle.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s == want))
            .await
            .map(|r| r.map(drop));
        assert!(
            matches!(waited, Ok(Ok(()))),
            "{} never became {want} (now {}, last failure {:?}, wait: {waited:?})",
            handle.target(),
            handle.state(),
            handle.last_failure()
        );
    }

    // ---- probes and the runner against real servers ----

    /// An address nothing listens on: bound, then released.
    async fn closed_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    /// A server that accepts connections and never answers (nor closes them).
    async fn silent_server() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        (addr, task)
    }

    /// An axum server (HTTP/1.1 and h2c) whose `/health` answers 200 while `ok` is set and 503
    /// otherwise; `/h2only` answers 200 to HTTP/2 requests only.
    async fn http_server(ok: Arc<AtomicBool>) -> (SocketAddr, JoinHandle<()>) {
        async fn health(State(ok): State<Arc<AtomicBool>>) -> StatusCode {
            if ok.load(Ordering::SeqCst) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
        async fn h2only(req: axum::extract::Request) -> StatusCode {
            if req.version() == hyper::Version::HTTP_2 {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::HTTP_VERSION_NOT_SUPPORTED
            }
        }
        let app = Router::new()
            .route("/health", get(health))
            .route("/h2only", get(h2only))
            .with_state(ok);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        (addr, task)
    }

    /// A tonic server with the standard health service; the reporter toggles `""`.
    async fn grpc_server() -> (
        SocketAddr,
        tonic_health::server::HealthReporter,
        JoinHandle<()>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(l);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        (addr, reporter, task)
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_listener_and_fails_on_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = spec(PortProtocol::Tcp, "/");
        assert_eq!(probe(l.local_addr().unwrap(), &s, None).await, Ok(()));
        let err = probe(closed_addr().await, &s, None).await.unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }

    #[tokio::test]
    async fn tcp_check_turns_unhealthy_when_the_listener_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let handle = spawn_check(addr, spec(PortProtocol::Tcp, "/"), None);
        assert_eq!(handle.target(), addr);
        wait_state(&handle, HealthState::Healthy).await;
        assert_eq!(handle.last_failure(), None);
        drop(l);
        wait_state(&handle, HealthState::Unhealthy).await;
        let reason = handle.last_failure().expect("a failure reason");
        assert!(reason.contains("connect"), "{reason}");
    }

    #[tokio::test]
    async fn port_override_is_probed_instead_of_the_instance_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = spec(PortProtocol::Tcp, "/");
        s.port = Some(l.local_addr().unwrap().port());
        // The instance's own port is closed; only the override listens.
        let handle = spawn_check(closed_addr().await, s, None);
        assert_eq!(handle.target(), l.local_addr().unwrap());
        wait_state(&handle, HealthState::Healthy).await;
    }

    #[tokio::test]
    async fn http_check_follows_the_health_endpoint() {
        let ok = Arc::new(AtomicBool::new(true));
        let (addr, _server) = http_server(ok.clone()).await;
        let handle = spawn_check(addr, spec(PortProtocol::Http, "/health"), None);
        wait_state(&handle, HealthState::Healthy).await;

        ok.store(false, Ordering::SeqCst);
        wait_state(&handle, HealthState::Unhealthy).await;
        let reason = handle.last_failure().expect("a failure reason");
        assert!(reason.contains("503"), "{reason}");

        ok.store(true, Ordering::SeqCst);
        wait_state(&handle, HealthState::Healthy).await;
    }

    #[tokio::test]
    async fn http_probe_fails_on_non_2xx_and_on_closed_port() {
        let (addr, _server) = http_server(Arc::new(AtomicBool::new(true))).await;
        let err = probe(addr, &spec(PortProtocol::Http, "/missing"), None)
            .await
            .unwrap_err();
        assert!(err.contains("404"), "{err}");
        let err = probe(closed_addr().await, &spec(PortProtocol::Http, "/"), None)
            .await
            .unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }

    #[tokio::test]
    async fn http_probe_reports_an_invalid_path() {
        let (addr, _server) = http_server(Arc::new(AtomicBool::new(true))).await;
        let err = probe(addr, &spec(PortProtocol::Http, "/a b"), None)
            .await
            .unwrap_err();
        assert!(err.contains("invalid request"), "{err}");
    }

    #[tokio::test]
    async fn h2c_probe_speaks_http2() {
        let ok = Arc::new(AtomicBool::new(true));
        let (addr, _server) = http_server(ok.clone()).await;
        // 204 from /h2only proves the request arrived as HTTP/2 (and that any 2xx passes).
        assert_eq!(
            probe(addr, &spec(PortProtocol::Http2, "/h2only"), None).await,
            Ok(())
        );
        let err = probe(addr, &spec(PortProtocol::Http, "/h2only"), None)
            .await
            .unwrap_err();
        assert!(err.contains("505"), "{err}");

        let handle = spawn_check(addr, spec(PortProtocol::Http2, "/health"), None);
        wait_state(&handle, HealthState::Healthy).await;
        ok.store(false, Ordering::SeqCst);
        wait_state(&handle, HealthState::Unhealthy).await;
        let reason = handle.last_failure().expect("a failure reason");
        assert!(reason.contains("503"), "{reason}");
    }

    #[tokio::test]
    async fn h2c_probe_fails_against_an_http1_only_server() {
        // A server that answers every connection with an HTTP/1.1 response and closes it.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let err = probe(addr, &spec(PortProtocol::Http2, "/"), None)
            .await
            .unwrap_err();
        assert!(err.starts_with("HTTP") || err.contains("closed"), "{err}");
    }

    #[tokio::test]
    async fn grpc_check_follows_the_serving_status() {
        let (addr, reporter, _server) = grpc_server().await;
        let s = spec(PortProtocol::Grpc, "/ignored");
        assert_eq!(probe(addr, &s, None).await, Ok(()));

        let handle = spawn_check(addr, s.clone(), None);
        wait_state(&handle, HealthState::Healthy).await;

        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let err = probe(addr, &s, None).await.unwrap_err();
        assert!(err.contains("NOT_SERVING"), "{err}");
        wait_state(&handle, HealthState::Unhealthy).await;

        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        wait_state(&handle, HealthState::Healthy).await;
    }

    #[tokio::test]
    async fn grpc_probe_fails_on_closed_port_and_on_a_non_grpc_server() {
        let s = spec(PortProtocol::Grpc, "/");
        let err = probe(closed_addr().await, &s, None).await.unwrap_err();
        assert!(err.starts_with("connect: "), "{err}");
        // An h2c server without the health service: the call itself fails.
        let (addr, _server) = http_server(Arc::new(AtomicBool::new(true))).await;
        let err = probe(addr, &s, None).await.unwrap_err();
        assert!(err.starts_with("gRPC"), "{err}");
    }

    #[tokio::test]
    async fn probes_time_out_against_a_server_that_never_answers() {
        let (addr, _server) = silent_server().await;
        for protocol in [PortProtocol::Http, PortProtocol::Http2, PortProtocol::Grpc] {
            let mut s = spec(protocol, "/health");
            s.timeout = Duration::from_millis(300);
            let started = Instant::now();
            let err = probe(addr, &s, None).await.unwrap_err();
            let took = started.elapsed();
            assert!(
                err.contains("within") || err.to_lowercase().contains("timed out"),
                "{protocol:?}: {err}"
            );
            assert!(
                took >= Duration::from_millis(250),
                "{protocol:?} took {took:?}"
            );
            assert!(took < Duration::from_secs(3), "{protocol:?} took {took:?}");
        }
        // A TCP check only needs the connection, which the silent server accepts.
        assert_eq!(
            probe(addr, &spec(PortProtocol::Tcp, "/"), None).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn check_against_a_silent_server_becomes_unhealthy() {
        let (addr, _server) = silent_server().await;
        let mut s = spec(PortProtocol::Http, "/health");
        s.timeout = Duration::from_millis(100);
        let handle = spawn_check(addr, s, None);
        wait_state(&handle, HealthState::Unhealthy).await;
        let reason = handle.last_failure().expect("a failure reason");
        assert!(reason.contains("within"), "{reason}");
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_check() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = spawn_check(l.local_addr().unwrap(), spec(PortProtocol::Tcp, "/"), None);
        wait_state(&handle, HealthState::Healthy).await;
        let mut rx = handle.subscribe();
        drop(handle);
        // The task owned the sender: once it is aborted the channel closes.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the check task kept running");
    }

    /// A mutual-TLS server (client certificates from `root` required) that answers one HTTP/1.1
    /// request per connection with 200.
    async fn mtls_server(root: &shoal_pki::Ca) -> SocketAddr {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let id = shoal_pki::mesh::SpiffeId::new(
            "shoal",
            "m",
            shoal_pki::mesh::WorkloadKind::VirtualNode,
            "server",
        )
        .unwrap();
        let (csr, key) = shoal_pki::new_csr("server").unwrap();
        let chain = root
            .issue_workload_for_csr(&csr, &id, &[], Duration::from_secs(3600))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(chain.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tls_only_listener_is_probed_over_tls_with_the_nodes_certificate() {
        let root = shoal_pki::mesh::generate_root("shoal").unwrap();
        let addr = mtls_server(&root).await;
        let mut s = spec(PortProtocol::Http, "/");
        // In plain text, the server's TLS refuses the request.
        assert!(probe(addr, &s, None).await.is_err());
        s.tls = Some(shoal_model::health::ProbeTls {
            client_identity: Some(("m".into(), "client".into())),
        });
        // Over TLS without a client certificate: refused at the handshake.
        let err = probe(addr, &s, None).await.unwrap_err();
        assert!(err.contains("TLS") || err.contains("HTTP"), "{err}");
        // With the node's certificate: healthy.
        let (csr, key) = shoal_pki::new_csr("client").unwrap();
        let id = shoal_pki::mesh::SpiffeId::new(
            "shoal",
            "m",
            shoal_pki::mesh::WorkloadKind::VirtualNode,
            "client",
        )
        .unwrap();
        let chain = root
            .issue_workload_for_csr(&csr, &id, &[], Duration::from_secs(3600))
            .unwrap();
        let cert = ClientCert {
            chain_pem: chain,
            key_pem: key,
        };
        assert_eq!(probe(addr, &s, Some(&cert)).await, Ok(()));
        // A running check finds the certificate by the node it probes as.
        let source: ClientCertSource = Arc::new(move |mesh: &str, node: &str| {
            (mesh == "m" && node == "client").then(|| cert.clone())
        });
        let handle = spawn_check(addr, s, Some(source));
        wait_state(&handle, HealthState::Healthy).await;
    }
}
