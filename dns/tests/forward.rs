//! Forwarding names outside every zone to recursors: a second in-process shoal-dns server,
//! authoritative for `other.test`, plays the recursor; silent UDP sockets play dead ones.

mod common;

use std::time::{Duration, Instant};

use common::{ep, ips, many, query, start, tcp_ask, udp_ask};
use shoal_dns::proto::op::ResponseCode;
use shoal_dns::proto::rr::{RData, RecordType};
use shoal_dns::{DnsConfig, DnsView, SharedView};
use tokio::net::UdpSocket;

fn upstream_view() -> SharedView {
    let mut v = DnsView::new(vec!["other.test".into()]);
    v.insert("x.other.test", vec![ep("10.1.1.1", 80)]);
    v.insert("big.other.test", many(100));
    SharedView::new(v)
}

fn local_view() -> SharedView {
    let mut v = DnsView::new(vec!["ns.local".into()]);
    v.insert("web.ns.local", vec![ep("10.0.0.1", 8080)]);
    SharedView::new(v)
}

fn forwarding(recursors: Vec<std::net::SocketAddr>, timeout_ms: u64) -> DnsConfig {
    DnsConfig {
        recursors,
        forward_timeout: Duration::from_millis(timeout_ms),
        ..DnsConfig::default()
    }
}

/// A UDP socket that never answers, standing for a dead recursor (kept open so that no ICMP
/// error makes it fail fast).
async fn dead() -> (UdpSocket, std::net::SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[tokio::test]
async fn forwards_over_udp_and_tcp_and_relays_everything() {
    let (up, _) = start(upstream_view(), DnsConfig::default()).await;
    let (front, h) = start(local_view(), forwarding(vec![up], 2000)).await;

    // Letter case of the question survives (DNS 0x20); the answer is the upstream's.
    let q = query("X.Other.TEST.", RecordType::A, Some(1232));
    let r = udp_ask(front, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        ips(&r),
        vec!["10.1.1.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(r.queries[0].name().to_string(), "X.Other.TEST.");
    assert!(r.metadata.recursion_desired);
    assert!(r.metadata.authoritative, "the upstream's AA bit is relayed");
    assert!(r.edns.is_some());

    let r = tcp_ask(front, &query("x.other.test.", RecordType::A, None)).await;
    assert_eq!(ips(&r).len(), 1);

    // The upstream's rcode and authority section come back too.
    let r = udp_ask(front, &query("nope.other.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    // Outside the upstream's zones as well: its REFUSED is relayed.
    let r = udp_ask(front, &query("example.org.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    // Local names stay local, and say recursion is available.
    let r = udp_ask(front, &query("web.ns.local.", RecordType::A, None)).await;
    assert_eq!(ips(&r).len(), 1);
    assert!(r.metadata.recursion_available);

    let c = h.counters();
    assert_eq!(c.forwarded(), 4);
    assert_eq!(c.forward_failures(), 0);
    assert_eq!(c.answered(), 1);
    assert_eq!((c.queries_udp(), c.queries_tcp()), (4, 1));
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let (up, up_h) = start(upstream_view(), DnsConfig::default()).await;
    let (front, h) = start(local_view(), forwarding(vec![up], 2000)).await;

    // No EDNS: the upstream truncates at 512 bytes, the front fetches the whole answer over TCP,
    // which is still too large for this UDP client, so the client gets TC and retries over TCP.
    let r = udp_ask(front, &query("big.other.test.", RecordType::A, None)).await;
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(up_h.counters().queries_tcp() >= 1, "front retried over TCP");
    assert!(h.counters().truncated() >= 1);

    let r = tcp_ask(front, &query("big.other.test.", RecordType::A, None)).await;
    assert!(!r.metadata.truncation);
    assert_eq!(ips(&r).len(), 100);

    // With EDNS 4096 the whole answer fits in one datagram end to end.
    let r = udp_ask(front, &query("big.other.test.", RecordType::A, Some(4096))).await;
    assert!(!r.metadata.truncation);
    assert_eq!(ips(&r).len(), 100);
}

#[tokio::test]
async fn dead_recursors_are_skipped_then_servfail() {
    let (up, _) = start(upstream_view(), DnsConfig::default()).await;
    let (_d1, dead1) = dead().await;
    let (_d2, dead2) = dead().await;

    // The first recursor is dead: it gets half of the 2 s, then the live one answers.
    let (front, h) = start(local_view(), forwarding(vec![dead1, up], 2000)).await;
    let t = Instant::now();
    let r = udp_ask(front, &query("x.other.test.", RecordType::A, None)).await;
    assert_eq!(ips(&r).len(), 1);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.counters().forward_failures(), 0);

    // All dead: SERVFAIL within the timeout, and meanwhile local answers are not held up.
    let (front, h) = start(local_view(), forwarding(vec![dead1, dead2], 1500)).await;
    let t = Instant::now();
    let pending = tokio::spawn(async move {
        udp_ask(front, &query("x.other.test.", RecordType::A, Some(1232))).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = udp_ask(front, &query("web.ns.local.", RecordType::A, None)).await;
    assert_eq!(ips(&r).len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "local answer waited"
    );
    let r = pending.await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.edns.is_some(), "EDNS answered with EDNS");
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t.elapsed()
    );
    // The same over TCP.
    let r = tcp_ask(front, &query("x.other.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(h.counters().forward_failures(), 2);
    assert_eq!(h.counters().forwarded(), 2);
}

#[tokio::test]
async fn forwards_in_flight_are_bounded() {
    let (_d, dead) = dead().await;
    let cfg = DnsConfig {
        max_forwards: 1,
        ..forwarding(vec![dead], 2000)
    };
    let (front, h) = start(local_view(), cfg).await;
    let first =
        tokio::spawn(
            async move { udp_ask(front, &query("a.other.test.", RecordType::A, None)).await },
        );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let r = udp_ask(front, &query("b.other.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "turned away at once"
    );
    assert_eq!(
        first.await.unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
    assert_eq!(h.counters().forwarded(), 1);
    assert_eq!(h.counters().forward_failures(), 2);
}

#[tokio::test]
async fn no_recursors_means_refused() {
    let (front, h) = start(local_view(), DnsConfig::default()).await;
    let r = udp_ask(front, &query("x.other.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.recursion_available);
    let r = tcp_ask(front, &query("x.other.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(h.counters().refused(), 2);
    assert_eq!(h.counters().forwarded(), 0);
}
