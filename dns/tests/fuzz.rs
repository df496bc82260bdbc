//! Property: whatever arrives on the UDP port (random bytes, or valid queries with bytes
//! flipped, cut or appended), the server keeps answering a valid query correctly afterwards.

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shoal_dns::proto::op::{Edns, Message, Query, ResponseCode};
use shoal_dns::proto::rr::{Name, RecordType};
use shoal_dns::{serve_with, DnsConfig, DnsHandler, DnsView, Endpoint, SharedView};

/// One server for all cases, on a runtime thread of its own (proptest cases are synchronous).
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut view = DnsView::new(vec!["ns.local".into()]);
                let ep = Endpoint {
                    address: "10.0.0.1".parse().unwrap(),
                    port: 80,
                    healthy: true,
                };
                view.insert("web.ns.local", vec![ep]);
                let handler = DnsHandler::new(SharedView::new(view), DnsConfig::default());
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(udp.local_addr().unwrap()).unwrap();
                serve_with(udp, tcp, handler, std::future::pending())
                    .await
                    .unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

fn valid(name: &str, qtype: RecordType, edns: bool, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Sends `junk`, then a valid query, and returns the answer to the valid one (skipping any
/// answers to the junk).
fn junk_then_valid(junk: &[u8], id: u16) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send(junk).unwrap();
    sock.send(&valid("web.ns.local.", RecordType::A, false, id))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65535];
    loop {
        assert!(Instant::now() < deadline, "no answer to the valid query");
        let n = sock.recv(&mut buf).expect("server still answers");
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.id == id && m.queries.len() == 1 && m.answers.len() == 1 {
                return m;
            }
        }
    }
}

/// A valid query (one of a few shapes) with edits applied: (position, new byte) flips, then a
/// cut or an appended tail.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just(valid("web.ns.local.", RecordType::A, false, 7)),
        Just(valid("web.ns.local.", RecordType::SRV, true, 7)),
        Just(valid("nope.ns.local.", RecordType::AAAA, true, 7)),
        Just(valid("example.org.", RecordType::A, false, 7)),
    ];
    (
        base,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        prop_oneof![
            Just(End::Keep),
            any::<prop::sample::Index>().prop_map(End::Cut),
            proptest::collection::vec(any::<u8>(), 1..40).prop_map(End::Append),
        ],
    )
        .prop_map(|(mut msg, flips, end)| {
            for (at, byte) in flips {
                let i = at.index(msg.len());
                msg[i] = byte;
            }
            match end {
                End::Keep => {}
                End::Cut(at) => msg.truncate(at.index(msg.len())),
                End::Append(tail) => msg.extend_from_slice(&tail),
            }
            msg
        })
}

/// What happens to the end of a near-valid query.
#[derive(Debug, Clone)]
enum End {
    Keep,
    Cut(prop::sample::Index),
    Append(Vec<u8>),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_do_not_stop_the_server(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        id in any::<u16>(),
    ) {
        let m = junk_then_valid(&junk, id);
        prop_assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn near_valid_queries_do_not_stop_the_server(junk in near_valid(), id in 8u16..) {
        let m = junk_then_valid(&junk, id);
        prop_assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        prop_assert_eq!(m.queries[0].name().to_string(), "web.ns.local.");
    }
}
