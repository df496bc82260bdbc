//! UDP throughput of the DNS server: `cargo bench -p shoal-dns --bench udp`.
//!
//! Why this shape: the agent serves DNS from one tokio worker, so the server runs here on a
//! current_thread runtime in a thread of its own, with a view of 1,000 names answering A and
//! 1,000 answering SRV. A client thread keeps many queries outstanding (a mix of A, SRV and 10%
//! unknown names, which get NXDOMAIN) and prints queries per second and how many got no answer.
//! The client shares the machine's cores with the server, so the figure is a floor for what a
//! separate load generator (dnsperf) would see.
//!
//! Settings (environment): `SHOAL_BENCH_SECS` (default 5), `SHOAL_BENCH_WINDOW` (outstanding
//! queries, default 200).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shoal_dns::proto::op::{Message, Query};
use shoal_dns::proto::rr::{Name, RecordType};
use shoal_dns::{serve_with, DnsConfig, DnsHandler, DnsView, Endpoint, SharedView};

const NAMES: usize = 1000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of the calling thread so far, from /proc (Linux; clock ticks
/// assumed to be 100 Hz); `None` elsewhere.
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn view() -> DnsView {
    let mut view = DnsView::new(vec!["bench.local".into()]);
    for i in 0..NAMES {
        let ip = |k: usize| {
            format!("10.{}.{}.{}", k, i / 250, i % 250 + 1)
                .parse()
                .unwrap()
        };
        let ep = |k: usize| Endpoint {
            address: ip(k),
            port: 8080,
            healthy: true,
        };
        view.insert(&format!("a{i}.bench.local"), vec![ep(1)]);
        view.insert(&format!("s{i}.bench.local"), vec![ep(2), ep(3)]);
    }
    view
}

/// The query mix, encoded: every tenth is an unknown name; the rest alternate A and SRV.
fn queries() -> Vec<Vec<u8>> {
    (0..10 * NAMES)
        .map(|i| {
            let (name, qtype) = match i % 10 {
                9 => (format!("u{i}.bench.local."), RecordType::A),
                k if k % 2 == 0 => (format!("a{}.bench.local.", i % NAMES), RecordType::A),
                _ => (format!("s{}.bench.local.", i % NAMES), RecordType::SRV),
            };
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(&name).unwrap(), qtype));
            m.to_vec().unwrap()
        })
        .collect()
}

struct Tally {
    sent: u64,
    received: u64,
    lost: u64,
}

/// Sends queries with up to `window` outstanding for `secs`, then waits for the stragglers.
/// A query with no answer within 1 s of the last answer counts as lost.
fn blast(server: SocketAddr, queries: &[Vec<u8>], window: usize, secs: f64) -> (Tally, f64) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server).unwrap();
    // Room for every outstanding answer, so that losses are the server's, not this socket's.
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut pending = vec![false; 65536];
    let mut outstanding = 0usize;
    let mut t = Tally {
        sent: 0,
        received: 0,
        lost: 0,
    };
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let start = Instant::now();
    let mut sending = true;
    loop {
        if sending && start.elapsed().as_secs_f64() >= secs {
            sending = false;
        }
        while sending && outstanding < window {
            let id = (t.sent % 65536) as u16;
            if pending[usize::from(id)] {
                // Still waiting for this id from 65536 queries ago: count it lost.
                pending[usize::from(id)] = false;
                outstanding -= 1;
                t.lost += 1;
            }
            out.clear();
            out.extend_from_slice(&queries[t.sent as usize % queries.len()]);
            out[..2].copy_from_slice(&id.to_be_bytes());
            sock.send(&out).unwrap();
            pending[usize::from(id)] = true;
            outstanding += 1;
            t.sent += 1;
        }
        if !sending && outstanding == 0 {
            break;
        }
        match sock.recv(&mut buf) {
            Ok(n) if n >= 2 => {
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if pending[id] {
                    pending[id] = false;
                    outstanding -= 1;
                    t.received += 1;
                }
            }
            Ok(_) => {}
            Err(_) => {
                t.lost += outstanding as u64;
                pending.iter_mut().for_each(|p| *p = false);
                outstanding = 0;
                if !sending {
                    break;
                }
            }
        }
    }
    (t, start.elapsed().as_secs_f64())
}

fn main() {
    let secs = env_or("SHOAL_BENCH_SECS", 5) as f64;
    let window = env_or("SHOAL_BENCH_WINDOW", 200) as usize;
    let handler = DnsHandler::new(SharedView::new(view()), DnsConfig::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_handler = handler.clone();
    let server = std::thread::Builder::new()
        .name("dns-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(udp.local_addr().unwrap()).unwrap();
                let stop = async {
                    let _ = stop_rx.await;
                };
                serve_with(udp, tcp, server_handler, stop).await.unwrap();
            });
            thread_cpu_secs()
        })
        .unwrap();
    let addr = rx.recv().unwrap();
    let queries = queries();

    // Warm up (fills the answer cache), then measure.
    blast(addr, &queries, window, 1.0);
    let (t, elapsed) = blast(addr, &queries, window, secs);
    let c = handler.counters();
    println!(
        "udp: {} queries in {elapsed:.2} s: {:.0} queries/s answered, {} lost (window {window}); \
         server totals: {} received, {} answered, {} nxdomain, {} malformed",
        t.sent,
        t.received as f64 / elapsed,
        t.lost,
        c.queries_udp(),
        c.answered(),
        c.nxdomain(),
        c.malformed(),
    );
    let _ = stop_tx.send(());
    if let Some(cpu) = server.join().unwrap() {
        // Warm-up included on both sides of the division.
        let per_query = cpu / c.queries_udp() as f64;
        println!(
            "server thread: {cpu:.2} s CPU for {} queries: {:.2} us/query, about {:.0} queries/s \
             on a core of its own",
            c.queries_udp(),
            per_query * 1e6,
            1.0 / per_query
        );
    }
}
