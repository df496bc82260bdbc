//! Integration test: the DNS server on 127.0.0.1 UDP + TCP, queried with hickory-proto messages
//! over raw sockets (no `dig`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng as _;
use shoal_dns::proto::op::{Edns, Message, Query, ResponseCode};
use shoal_dns::proto::rr::{Name, RData, RecordType};
use shoal_dns::{serve_with, DnsConfig, DnsHandler, DnsView, Endpoint, SharedView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        address: ip.parse().unwrap(),
        port,
        healthy: true,
    }
}

async fn start() -> (SocketAddr, SocketAddr, DnsHandler) {
    let mut view = DnsView::new(vec!["ns.local".into()]);
    view.insert(
        "web.ns.local",
        vec![ep("10.0.0.1", 8080), ep("fd00::1", 8080)],
    );
    let big = (0..100u16)
        .map(|i| ep(&format!("10.9.{}.{}", i / 200, i % 200 + 1), 80))
        .collect();
    view.insert("big.ns.local", big);
    let handler = DnsHandler::new(SharedView::new(view), DnsConfig::default());
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let h = handler.clone();
    tokio::spawn(async move { serve_with(udp, tcp, h, std::future::pending()).await });
    (ua, ta, handler)
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.id = rand::rng().random();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.edns = Some(e);
    }
    m
}

async fn udp_ask(server: SocketAddr, msg: &Message) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("udp answer in time")
        .unwrap();
    let resp = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(resp.metadata.id, msg.metadata.id);
    resp
}

async fn tcp_ask(server: SocketAddr, msg: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len))
        .await
        .expect("tcp answer in time")
        .unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_over_the_wire() {
    let (udp, tcp, handler) = start().await;

    let r = udp_ask(udp, &query("WEB.ns.local.", RecordType::A, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(ips(&r), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);

    let r = udp_ask(udp, &query("web.ns.local.", RecordType::AAAA, false)).await;
    assert_eq!(ips(&r), vec!["fd00::1".parse::<IpAddr>().unwrap()]);

    let r = udp_ask(udp, &query("web.ns.local.", RecordType::SRV, false)).await;
    assert_eq!(r.answers.len(), 2);
    assert_eq!(r.additionals.len(), 2);
    for a in &r.answers {
        let RData::SRV(srv) = &a.data else {
            panic!("not SRV")
        };
        assert_eq!(srv.port, 8080);
        let t = srv.target.to_string();
        let qt = if t.len() > 30 {
            RecordType::AAAA
        } else {
            RecordType::A
        };
        let tr = tcp_ask(tcp, &query(&t, qt, false)).await;
        assert_eq!(ips(&tr).len(), 1, "SRV target {t} resolves");
    }

    let r = udp_ask(udp, &query("nope.ns.local.", RecordType::A, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));

    let r = udp_ask(udp, &query("web.ns.local.", RecordType::TXT, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));

    let r = udp_ask(udp, &query("example.org.", RecordType::A, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    // 100 endpoints: truncated over UDP without EDNS, complete over TCP and with EDNS 4096.
    let r = udp_ask(udp, &query("big.ns.local.", RecordType::A, false)).await;
    assert!(r.metadata.truncation, "TC set on a >512 byte UDP answer");
    let r = tcp_ask(tcp, &query("big.ns.local.", RecordType::A, false)).await;
    assert!(!r.metadata.truncation);
    assert_eq!(ips(&r).len(), 100);
    let r = udp_ask(udp, &query("big.ns.local.", RecordType::A, true)).await;
    assert!(!r.metadata.truncation);
    assert_eq!(ips(&r).len(), 100);

    // A query with two questions reaches the handler and is counted as malformed.
    let mut two = query("web.ns.local.", RecordType::A, false);
    two.add_query(Query::query(
        Name::from_ascii("web.ns.local.").unwrap(),
        RecordType::AAAA,
    ));
    let r = udp_ask(udp, &two).await;
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(handler.malformed() >= 1);
}

#[tokio::test]
async fn garbage_datagrams_do_not_crash() {
    let (udp, tcp, handler) = start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rng();
    for i in 0..1000 {
        let len = rng.random_range(0..600);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 2 == 0 && buf.len() > 2 {
            buf[2] &= 0x7f; // QR = 0: looks like a query, so hickory parses further
        }
        sock.send_to(&buf, udp).await.unwrap();
    }
    // Drain whatever came back (FORMERRs), then a valid query still answers on both transports.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = udp_ask(udp, &query("web.ns.local.", RecordType::A, false)).await;
    assert_eq!(ips(&r).len(), 1);
    let r = tcp_ask(tcp, &query("web.ns.local.", RecordType::A, false)).await;
    assert_eq!(ips(&r).len(), 1);
    let counted = handler.malformed();
    assert!(counted >= 100, "malformed datagrams counted: {counted}");
}
