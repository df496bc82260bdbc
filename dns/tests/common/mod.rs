//! Helpers shared by the integration tests: servers on loopback, queries over raw sockets.

#![allow(dead_code)] // each test file uses a different part

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shoal_dns::proto::op::{Edns, Message, Query};
use shoal_dns::proto::rr::{Name, RData, RecordType};
use shoal_dns::{serve_with, DnsConfig, DnsHandler, Endpoint, SharedView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        address: ip.parse().unwrap(),
        port,
        healthy: true,
    }
}

/// `n` endpoints 10.9.x.y:80, enough to overflow a 512-byte answer.
pub fn many(n: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| ep(&format!("10.9.{}.{}", i / 200, i % 200 + 1), 80))
        .collect()
}

/// Binds UDP and TCP on the same loopback port (a recursor address serves both) and starts a
/// server on them. Returns the address and a handler clone for its counters.
pub async fn start(view: SharedView, cfg: DnsConfig) -> (SocketAddr, DnsHandler) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let handler = DnsHandler::new(view, cfg);
    let h = handler.clone();
    tokio::spawn(async move { serve_with(udp, tcp, h, std::future::pending()).await });
    (addr, handler)
}

pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.edns = Some(e);
    }
    m
}

/// Sends `bytes` over UDP from a fresh socket and returns the raw answer.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf))
        .await
        .expect("udp answer in time")
        .unwrap();
    buf.truncate(n);
    buf
}

pub async fn udp_ask(server: SocketAddr, msg: &Message) -> Message {
    let raw = udp_raw(server, &msg.to_vec().unwrap(), Duration::from_secs(5)).await;
    let resp = Message::from_vec(&raw).unwrap();
    assert_eq!(resp.metadata.id, msg.metadata.id);
    resp
}

pub async fn tcp_ask(server: SocketAddr, msg: &Message) -> Message {
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
    let resp = Message::from_vec(&buf).unwrap();
    assert_eq!(resp.metadata.id, msg.metadata.id);
    resp
}

pub fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
