//! The UDP answer cache gives byte for byte what the slow path gives: two servers over one
//! view, one with the cache off, get the same queries (letter case variants, EDNS sizes, DO,
//! RD/CD, truncated answers, error answers) and must send the same bytes.

mod common;

use std::time::Duration;

use common::{ep, many, start, udp_raw};
use shoal_dns::proto::op::{Edns, Message, Query};
use shoal_dns::proto::rr::rdata::opt::EdnsOption;
use shoal_dns::proto::rr::{DNSClass, Name, RecordType};
use shoal_dns::{DnsConfig, DnsView, SharedView};

fn view() -> SharedView {
    let mut v = DnsView::new(vec!["ns.local".into()]);
    v.insert(
        "web.ns.local",
        vec![ep("10.0.0.1", 8080), ep("fd00::1", 8080)],
    );
    v.insert("big.ns.local", many(100));
    SharedView::new(v)
}

#[derive(Clone, Copy)]
struct Shape {
    edns: Option<u16>,
    dnssec_ok: bool,
    cookie: bool,
    rd: bool,
    cd: bool,
}

fn build(name: &str, qtype: RecordType, class: DNSClass, s: Shape, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = s.rd;
    m.metadata.checking_disabled = s.cd;
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_query_class(class);
    m.add_query(q);
    if let Some(payload) = s.edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        e.set_dnssec_ok(s.dnssec_ok);
        if s.cookie {
            e.options_mut()
                .insert(EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]));
        }
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// DNS 0x20: flips the case of letters by a fixed pattern.
fn mixed(name: &str, seed: usize) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| match (i + seed) % 3 {
            0 => c.to_ascii_uppercase(),
            _ => c,
        })
        .collect()
}

#[tokio::test]
async fn cached_answers_equal_slow_path_answers() {
    let shared = view();
    let (fast, fast_h) = start(shared.clone(), DnsConfig::default()).await;
    let slow_cfg = DnsConfig {
        cache_entries: 0,
        ..DnsConfig::default()
    };
    let (slow, slow_h) = start(shared.clone(), slow_cfg).await;

    let questions: &[(&str, RecordType, DNSClass)] = &[
        ("web.ns.local.", RecordType::A, DNSClass::IN),
        ("web.ns.local.", RecordType::AAAA, DNSClass::IN),
        ("web.ns.local.", RecordType::SRV, DNSClass::IN),
        ("web.ns.local.", RecordType::TXT, DNSClass::IN),
        ("big.ns.local.", RecordType::A, DNSClass::IN),
        ("big.ns.local.", RecordType::SRV, DNSClass::IN),
        ("nope.ns.local.", RecordType::A, DNSClass::IN),
        ("ns.local.", RecordType::SOA, DNSClass::IN),
        ("0a000001.addr.ns.local.", RecordType::A, DNSClass::IN),
        ("example.org.", RecordType::A, DNSClass::IN),
        ("web.ns.local.", RecordType::A, DNSClass::CH),
    ];
    let mut shapes = Vec::new();
    for edns in [
        None,
        Some(100),
        Some(512),
        Some(1232),
        Some(4096),
        Some(65000),
    ] {
        for (rd, cd) in [(true, false), (false, false), (true, true)] {
            shapes.push(Shape {
                edns,
                dnssec_ok: false,
                cookie: false,
                rd,
                cd,
            });
        }
    }
    shapes.push(Shape {
        edns: Some(1232),
        dnssec_ok: true,
        cookie: true,
        rd: true,
        cd: false,
    });

    let mut id = 1u16;
    let mut compared = 0;
    let ask_both = |q: Vec<u8>| async move {
        let wait = Duration::from_secs(5);
        let a = udp_raw(fast, &q, wait).await;
        let b = udp_raw(slow, &q, wait).await;
        (a, b)
    };
    for round in 0..2 {
        for &(name, qtype, class) in questions {
            for (k, &shape) in shapes.iter().enumerate() {
                // Lowercase first (fills the cache), then two other letter cases (hits).
                for variant in [name.to_string(), mixed(name, k), name.to_uppercase()] {
                    id = id.wrapping_add(1);
                    let q = build(&variant, qtype, class, shape, id);
                    let (a, b) = ask_both(q).await;
                    assert_eq!(
                        a, b,
                        "round {round}: {variant} {qtype} {class} edns {:?} rd {} cd {}",
                        shape.edns, shape.rd, shape.cd
                    );
                    compared += 1;
                }
            }
        }
        // Change the view between the rounds: cached answers must follow.
        shared.update(|v| v.insert("web.ns.local", vec![ep("10.0.0.2", 8080)]));
    }
    let hits = fast_h.counters().cache_hits();
    assert!(hits > compared as u64 / 2, "{hits} hits of {compared}");
    assert_eq!(slow_h.counters().cache_hits(), 0);
    assert_eq!(
        fast_h.counters().truncated(),
        slow_h.counters().truncated(),
        "truncated answers are never served from the cache"
    );
    assert!(fast_h.counters().truncated() > 0);
    assert_eq!(fast_h.counters().answered(), slow_h.counters().answered());
    assert_eq!(fast_h.counters().nxdomain(), slow_h.counters().nxdomain());
    assert_eq!(fast_h.counters().refused(), slow_h.counters().refused());

    // And the new endpoint is what the cached server answers after the change.
    let q = build(
        "web.ns.local.",
        RecordType::A,
        DNSClass::IN,
        shapes[0],
        id.wrapping_add(1),
    );
    let a = Message::from_vec(&udp_raw(fast, &q, Duration::from_secs(5)).await).unwrap();
    assert_eq!(
        common::ips(&a),
        vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
}
