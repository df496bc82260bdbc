//! The accept loop of the server's and the agent's HTTP APIs, with the limits an exposed port
//! needs (what `axum::serve` lacks):
//!
//! - **a header-read timeout**: a client that opens a connection and sends a partial request
//!   (or nothing: this loop times the first bytes, which hyper's protocol detection waits for
//!   without a timer) is dropped after [`Limits::header_read_timeout`]; hyper restarts this
//!   timer while a kept-alive connection waits for its next request, so it also closes idle
//!   HTTP/1 connections;
//! - **an idle timeout**: a connection on which no byte moved either way for
//!   [`Limits::idle_timeout`] (a stalled body, an idle HTTP/2 connection) is shut down
//!   gracefully;
//! - **a connection limit**: past [`Limits::max_connections`] a new connection is accepted and
//!   closed at once (counted and logged), so that the descriptors left over stay for DNS over
//!   TCP, health checks, Raft and the files: a flood of idle connections degrades this API,
//!   never the rest of the node;
//! - **a shutdown deadline**: once shutdown begins, connections get
//!   [`Limits::shutdown_grace`] to finish their requests, then they are dropped, so no client
//!   holds `SIGTERM` up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::Service;

/// Descriptors kept aside from the HTTP connection limit for everything else a node opens.
const RESERVED_DESCRIPTORS: u64 = 512;

/// The limits of one HTTP listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a request's headers (also between requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Longest time a connection may move no byte before it is shut down.
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// How long connections may finish their requests once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The defaults for a descriptor limit of `nofile`: 10 s for headers, 5 minutes idle
    /// (longer than botocore's and reqwest's pooled connections are kept), 5 s to finish at
    /// shutdown, and half the descriptors beyond [`RESERVED_DESCRIPTORS`] as connections
    /// (the server and the agent each serve one such API), never fewer than 16.
    pub fn for_descriptors(nofile: u64) -> Limits {
        let spare = nofile.saturating_sub(RESERVED_DESCRIPTORS) / 2;
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: usize::try_from(spare.clamp(16, 1 << 20)).unwrap_or(1 << 20),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// [`Limits::for_descriptors`] of this process's limit (after [`raise_descriptor_limit`]).
    pub fn from_process() -> Limits {
        Limits::for_descriptors(descriptor_limit())
    }
}

/// This process's soft limit on open descriptors (`u64::MAX` when unlimited).
pub fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Raises the soft limit on open descriptors to the hard limit (as Go's runtime does): the
/// soft default of 1024 is far below what a node serving many proxies and clients needs, and
/// the hard limit is what the operator allowed. Returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the descriptor limit");
        }
    }
    descriptor_limit()
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then gives the open
/// connections [`Limits::shutdown_grace`] to finish. With `tls`, every connection is TLS
/// (HTTPS). `what` names the API in logs.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut refused: u64 = 0;
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    tracing::debug!(api = what, ?limits, "HTTP limits");
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                // taken: wait a moment rather than spin.
                tracing::warn!(api = what, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            drop(stream);
            let now = Instant::now();
            if last_refusal_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                last_refusal_log = Some(now);
                tracing::warn!(
                    api = what,
                    limit = limits.max_connections,
                    refused_so_far = refused,
                    "connection limit reached: closing new connections"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let closing = closing.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app, &limits, closing).await,
                Some(cfg) => {
                    // The handshake gets the header-read timeout too.
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => serve_connection(s, peer, app, &limits, closing).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            tracing::trace!(%peer, "connection closed");
            drop(slot);
        });
    }
    let _ = closing_tx.send(true);
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let done = tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all)).await;
    if done.is_err() {
        let open = limits.max_connections - slots.available_permits();
        tracing::info!(
            api = what,
            open,
            "connections still open after the shutdown grace period; dropping them"
        );
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    app: Router,
    limits: &Limits,
    mut closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(NOTHING_YET));
    let started = Instant::now();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        started,
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let mut app = app.clone();
        // Handlers that act only for this host's operator check where the request came from.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        async move { app.call(req).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut shutting_down: Option<Instant> = None;
    loop {
        let last = activity.load(Ordering::Relaxed);
        let wake = match shutting_down {
            Some(deadline) => deadline,
            // Nothing received yet: hyper's own header timer has not started (the protocol
            // detection waits for the first bytes), so this one holds the line.
            None if last == NOTHING_YET => started + limits.header_read_timeout,
            None => started + Duration::from_millis(last) + limits.idle_timeout,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            changed = closing.wait_for(|c| *c), if shutting_down.is_none() => {
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                shutting_down = Some(Instant::now() + limits.shutdown_grace);
            }
            () = tokio::time::sleep_until(wake) => {
                match shutting_down {
                    // It had its grace period: drop it.
                    Some(_) => return,
                    None if activity.load(Ordering::Relaxed) == NOTHING_YET => {
                        tracing::debug!("closing a connection that sent nothing");
                        return;
                    }
                    None => {
                        let idle_since =
                            started + Duration::from_millis(activity.load(Ordering::Relaxed));
                        if Instant::now() >= idle_since + limits.idle_timeout {
                            tracing::debug!("closing an idle HTTP connection");
                            conn.as_mut().graceful_shutdown();
                            shutting_down = Some(Instant::now() + limits.shutdown_grace);
                        }
                    }
                }
            }
        }
    }
}

/// The activity mark of a connection on which no byte has moved yet.
const NOTHING_YET: u64 = u64::MAX;

/// A stream that notes when a byte last moved (milliseconds since `started`).
struct Tracked<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NOTHING_YET - 1);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_rest() {
        assert_eq!(Limits::for_descriptors(1024).max_connections, 256);
        assert_eq!(Limits::for_descriptors(65536).max_connections, 32512);
        // A tiny limit still serves a few clients.
        assert_eq!(Limits::for_descriptors(100).max_connections, 16);
    }
}
