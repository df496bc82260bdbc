//! A fault-injecting TCP proxy for the links between servers and from agents to servers.
//!
//! Why: this kernel has no `tc netem`, so added latency has to come from user space, as in
//! etcd's robustness tests. Each host's connections to another server's Raft/watch and API
//! ports are redirected (DNAT, see [`crate::net::Host::redirect`]) to one listener of this
//! proxy per target, which forwards them from its own address. With a delay set, every chunk
//! read on either side is written to the other side `delay` later (order is kept, throughput
//! is not limited); with no delay it is a plain relay.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The running proxy; dropping it stops every listener and connection.
pub struct FaultProxy {
    delay_ms: Arc<AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on each `listen` address and relays to its `target`, connecting from
    /// `source_ip` (so that hosts can tell the proxy's traffic from the clients').
    pub fn start(
        routes: &[(SocketAddrV4, SocketAddr)],
        source_ip: std::net::Ipv4Addr,
    ) -> std::io::Result<FaultProxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()?;
        let delay_ms = Arc::new(AtomicU64::new(0));
        for (listen, target) in routes {
            let listener = rt.block_on(TcpListener::bind(*listen))?;
            let (target, delay) = (*target, delay_ms.clone());
            rt.spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let delay = delay.clone();
                    tokio::spawn(async move {
                        if let Err(e) = relay(inbound, target, source_ip, delay).await {
                            tracing::debug!(%target, error = %e, "proxied connection ended");
                        }
                    });
                }
            });
        }
        Ok(FaultProxy {
            delay_ms,
            rt: Some(rt),
        })
    }

    /// Sets the delay added to every chunk in both directions (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    source_ip: std::net::Ipv4Addr,
    delay: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((source_ip, 0)))?;
    let outbound = tokio::time::timeout(Duration::from_secs(3), sock.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let mut a = tokio::spawn(pump(ir, ow, delay.clone()));
    let mut b = tokio::spawn(pump(or, iw, delay));
    // When one direction fails, end the other too (the connection is gone); after a clean
    // end of one direction, the other ends by itself when its peer closes.
    let first = tokio::select! {
        r = &mut a => r,
        r = &mut b => r,
    };
    if !matches!(first, Ok(Ok(()))) {
        a.abort();
        b.abort();
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk held back by the delay current when it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let at = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    writer
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}
