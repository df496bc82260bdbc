//! The DNS server: [`DnsHandler`] turns a query's bytes into a response's bytes (from the view,
//! or from the recursors), [`serve_with`] runs it on a UDP socket and a TCP listener.
//!
//! Both transports are this crate's own loops over tokio sockets; hickory is used to decode
//! queries and to encode answers. UDP has a fast path: a cache of encoded responses keyed by the
//! lowercased question and the request bits that shape the response (see `wire::parse_query`),
//! emptied whenever the view's version moves. A hit copies the cached bytes and patches in the
//! client's id and question bytes, which gives exactly the bytes the slow path would: hickory
//! writes the question as the client sent it and never compresses later names against it, so
//! the rest of the response does not depend on the question's letter case.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::answer::{answer, Answer};
use crate::cache::{Cache, Kind};
use crate::config::DnsConfig;
use crate::counters::{bump, DnsCounters};
use crate::forward::forward;
use crate::shared::SharedView;
use crate::wire::{self, udp_limit, KEY_MAX};

/// How long a TCP connection may stay idle (or take to send one message) before it is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// TCP connections served at once; more are closed on accept, so that idle clients cannot
/// exhaust file descriptors.
const MAX_TCP_CONNECTIONS: usize = 1024;

/// Receive buffer asked for on the UDP socket: room for a few thousand queries in a burst, so
/// that a load generator with hundreds of queries outstanding loses none while the server is
/// busy (the kernel's default, about 200 KiB, holds only a few hundred small datagrams). The
/// kernel caps it at `net.core.rmem_max`.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// Errors of [`serve`] and [`serve_with`].
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A receive loop ended unexpectedly (it panicked).
    #[error("dns server: {0}")]
    Server(String),
}

/// The DNS request handler: the view, the settings and the counters. Cheap to clone; clones
/// share all three, so keep one to read [`counters`](Self::counters) while the server runs.
#[derive(Clone)]
pub struct DnsHandler {
    inner: Arc<Inner>,
}

struct Inner {
    view: SharedView,
    cfg: DnsConfig,
    counters: DnsCounters,
    forwards: Arc<Semaphore>,
}

/// Whether a response may be cached, and against which view version.
#[derive(Debug, Clone, Copy)]
enum CacheTag {
    No,
    /// Computed from the view at this version.
    View(u64),
    /// Does not depend on the view.
    Any,
}

/// What to do with one received message.
enum Outcome {
    /// Send these bytes.
    Reply {
        bytes: Vec<u8>,
        kind: Kind,
        tag: CacheTag,
        truncated: bool,
    },
    /// The name is outside every zone and recursors are set: forward the query.
    Forward {
        /// End of the question section.
        q_end: usize,
        /// The client sent EDNS.
        edns: bool,
        /// Largest response the client takes (UDP limit; 65535 over TCP).
        limit: usize,
    },
    /// Send nothing.
    Drop,
}

impl DnsHandler {
    /// A handler answering from `view` with `cfg`.
    pub fn new(view: SharedView, cfg: DnsConfig) -> Self {
        let forwards = Arc::new(Semaphore::new(cfg.max_forwards));
        Self {
            inner: Arc::new(Inner {
                view,
                cfg,
                counters: DnsCounters::default(),
                forwards,
            }),
        }
    }

    /// What this handler (and its clones) did so far, for metrics.
    pub fn counters(&self) -> &DnsCounters {
        &self.inner.counters
    }

    /// Malformed messages; the same as `counters().malformed()`.
    pub fn malformed(&self) -> u64 {
        self.inner.counters.malformed()
    }

    /// The settings this handler serves with.
    pub fn config(&self) -> &DnsConfig {
        &self.inner.cfg
    }

    /// The view this handler answers from.
    pub fn view(&self) -> &SharedView {
        &self.inner.view
    }

    fn count(&self, kind: Kind) {
        let c = &self.inner.counters;
        match kind {
            Kind::Answered => bump(&c.answered),
            Kind::NxDomain => {
                bump(&c.answered);
                bump(&c.nxdomain);
            }
            Kind::Refused => bump(&c.refused),
            Kind::Other => {}
        }
    }

    /// The slow path: decodes `msg` with hickory and answers it from the view (or says to
    /// forward it). Counts malformed messages; the caller counts the rest.
    fn respond(&self, msg: &[u8], src: SocketAddr, tcp: bool) -> Outcome {
        let counters = &self.inner.counters;
        if msg.len() < 12 {
            bump(&counters.malformed);
            return Outcome::Drop;
        }
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let request = match Request::from_bytes(msg.to_vec(), src, protocol) {
            Ok(r) if r.metadata.message_type == MessageType::Query => r,
            Ok(_) => {
                bump(&counters.malformed);
                return Outcome::Drop;
            }
            Err(_) => {
                bump(&counters.malformed);
                // Over UDP an undecodable datagram is dropped (no reflection of garbage); over
                // TCP the client is told.
                if tcp && msg[2] & 0x80 == 0 {
                    return Outcome::Reply {
                        bytes: wire::formerr_header(msg),
                        kind: Kind::Other,
                        tag: CacheTag::No,
                        truncated: false,
                    };
                }
                return Outcome::Drop;
            }
        };
        let client_payload = request.edns.as_ref().map(Edns::max_payload);
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            udp_limit(client_payload)
        };
        // Answer EDNS with EDNS (RFC 6891), always advertising the same size so that a cached
        // response fits every client whose limit it is within.
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(wire::ADVERTISED_PAYLOAD);
            e
        });
        let error = |code: ResponseCode, kind: Kind, tag: CacheTag| {
            let meta = {
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = code;
                m
            };
            let (bytes, truncated) = encode(&request, edns.as_ref(), meta, &[], &[], &[], limit);
            Outcome::Reply {
                bytes,
                kind,
                tag,
                truncated,
            }
        };
        if request.metadata.op_code != OpCode::Query {
            return error(ResponseCode::NotImp, Kind::Other, CacheTag::No);
        }
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                bump(&counters.malformed);
                return error(ResponseCode::FormErr, Kind::Other, CacheTag::No);
            }
        };
        if info.query.query_class() != DNSClass::IN {
            return error(ResponseCode::Refused, Kind::Refused, CacheTag::Any);
        }
        let cfg = &self.inner.cfg;
        let qname: Name = info.query.name().clone().into();
        let (version, view) = self.inner.view.load_versioned();
        let ans = answer(&view, cfg, &qname, info.query.query_type());
        drop(view);

        let forwarding = !cfg.recursors.is_empty();
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = forwarding;
        let (kind, answers, authority, additionals) = match ans {
            Answer::Records {
                answers,
                authority,
                additionals,
            } => (Kind::Answered, answers, authority, additionals),
            Answer::NxDomain { soa } => {
                meta.response_code = ResponseCode::NXDomain;
                (Kind::NxDomain, Vec::new(), vec![soa], Vec::new())
            }
            Answer::Refused if forwarding => {
                return Outcome::Forward {
                    q_end: 12 + request.queries.as_bytes().len(),
                    edns: request.edns.is_some(),
                    limit,
                };
            }
            Answer::Refused => {
                meta.authoritative = false;
                meta.response_code = ResponseCode::Refused;
                (Kind::Refused, Vec::new(), Vec::new(), Vec::new())
            }
        };
        let (bytes, truncated) = encode(
            &request,
            edns.as_ref(),
            meta,
            &answers,
            &authority,
            &additionals,
            limit,
        );
        Outcome::Reply {
            bytes,
            kind,
            tag: CacheTag::View(version),
            truncated,
        }
    }

    /// Forwards `query` and returns the response for the client: the recursor's, with the
    /// client's id and question bytes, cut to a TC header if larger than `limit`; SERVFAIL if no
    /// recursor answered.
    async fn forwarded(&self, query: &[u8], q_end: usize, edns: bool, limit: usize) -> Vec<u8> {
        let cfg = &self.inner.cfg;
        let counters = &self.inner.counters;
        let resp = match forward(&cfg.recursors, cfg.forward_timeout, query, q_end).await {
            Some(mut resp) => {
                resp[..2].copy_from_slice(&query[..2]);
                if wire::qdcount(&resp) == 1 {
                    resp[12..q_end].copy_from_slice(&query[12..q_end]);
                }
                if resp.len() > limit {
                    resp = wire::truncate_relay(&resp, query, q_end, edns);
                }
                resp
            }
            None => {
                bump(&counters.forward_failures);
                wire::servfail(query, q_end, edns)
            }
        };
        if wire::truncated(&resp) {
            bump(&counters.truncated);
        }
        resp
    }

    /// A permit to forward one more query, or `None` (counted as a failure) at the bound.
    fn forward_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.inner.forwards.clone().try_acquire_owned() {
            Ok(permit) => {
                bump(&self.inner.counters.forwarded);
                Some(permit)
            }
            Err(_) => {
                bump(&self.inner.counters.forward_failures);
                None
            }
        }
    }
}

/// Encodes a response, truncated with TC to `limit` bytes if it does not fit. Returns the bytes
/// and whether they were truncated. The full encoding is tried first so that an answer that
/// fits is the same bytes whatever the limit (what the cache relies on).
fn encode(
    request: &Request,
    edns: Option<&Edns>,
    meta: Metadata,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
    limit: usize,
) -> (Vec<u8>, bool) {
    let emit = |max: u16| {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = edns {
            builder.edns(e);
        }
        let resp = builder.build(
            meta,
            answers.iter(),
            std::iter::empty(),
            authority.iter(),
            additionals.iter(),
        );
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        if let Err(e) = resp.destructive_emit(&mut encoder) {
            tracing::warn!(error = %e, "encoding dns response");
            bytes = servfail_header(meta.id);
        }
        bytes
    };
    let full = emit(u16::MAX);
    if full.len() <= limit {
        return (full, false);
    }
    let cut = emit(u16::try_from(limit).unwrap_or(u16::MAX));
    let truncated = wire::truncated(&cut);
    (cut, truncated)
}

fn servfail_header(id: u16) -> Vec<u8> {
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    if header.emit(&mut encoder).is_err() {
        bytes.clear();
    }
    bytes
}

/// Serves `view` on `udp` and `tcp` until `shutdown` completes, with a fresh [`DnsHandler`].
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    view: SharedView,
    cfg: DnsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    serve_with(udp, tcp, DnsHandler::new(view, cfg), shutdown).await
}

/// Serves with `handler` (keep a clone to read its [`counters`](DnsHandler::counters)) on `udp`
/// and `tcp` until `shutdown` completes; then stops, dropping queries in flight (forwarded
/// ones included) and open TCP connections. Enlarges the UDP socket's receive buffer (best
/// effort, see `net.core.rmem_max`).
pub async fn serve_with(
    udp: UdpSocket,
    tcp: TcpListener,
    handler: DnsHandler,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let sock = socket2::SockRef::from(&udp);
    if sock.recv_buffer_size().unwrap_or(0) < UDP_RECV_BUFFER {
        if let Err(e) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
            tracing::debug!(error = %e, "dns udp receive buffer");
        }
    }
    let mut udp_task = tokio::spawn(udp_loop(Arc::new(udp), handler.clone()));
    let mut tcp_task = tokio::spawn(tcp_loop(tcp, handler));
    let res = tokio::select! {
        () = shutdown => Ok(()),
        r = &mut udp_task => Err(DnsError::Server(format!("udp loop ended: {r:?}"))),
        r = &mut tcp_task => Err(DnsError::Server(format!("tcp loop ended: {r:?}"))),
    };
    udp_task.abort();
    tcp_task.abort();
    res
}

/// Receives UDP queries and answers them: from the cache, else from the slow path (filling the
/// cache), else by forwarding in a task of its own so that a slow recursor holds up nobody.
async fn udp_loop(sock: Arc<UdpSocket>, handler: DnsHandler) {
    let h = &*handler.inner;
    let mut buf = vec![0u8; 65535];
    let mut out: Vec<u8> = Vec::with_capacity(usize::from(wire::MAX_UDP_RESPONSE));
    let mut key = [0u8; KEY_MAX];
    let mut cache = Cache::new(h.cfg.cache_entries);
    // Forwarding tasks; dropped (aborted) with this loop when the server stops.
    let mut tasks = JoinSet::new();
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable from an earlier reply and the like: keep serving.
                tracing::debug!(error = %e, "dns udp recv");
                continue;
            }
        };
        bump(&h.counters.queries_udp);
        if src.port() == 0 {
            bump(&h.counters.malformed);
            continue;
        }
        let msg = &buf[..n];
        let fast = if cache.enabled() {
            wire::parse_query(msg, &mut key)
        } else {
            None
        };
        if let Some(q) = fast {
            cache.sync(h.view.version());
            if let Some(entry) = cache.get(&key[..q.key_len]) {
                if entry.bytes.len() <= udp_limit(q.edns_payload) {
                    out.clear();
                    out.extend_from_slice(&entry.bytes);
                    wire::patch(&mut out, msg, q.q_end);
                    handler.count(entry.kind);
                    bump(&h.counters.cache_hits);
                    send(&sock, &out, src).await;
                    continue;
                }
            }
        }
        match handler.respond(msg, src, false) {
            Outcome::Reply {
                bytes,
                kind,
                tag,
                truncated,
            } => {
                handler.count(kind);
                if truncated {
                    bump(&h.counters.truncated);
                }
                if let (Some(q), false) = (fast, truncated) {
                    let version = match tag {
                        CacheTag::No => None,
                        CacheTag::View(v) => Some(v),
                        CacheTag::Any => Some(cache.version()),
                    };
                    if let Some(v) = version {
                        cache.insert(&key[..q.key_len], v, &bytes, kind);
                    }
                }
                send(&sock, &bytes, src).await;
            }
            Outcome::Forward { q_end, edns, limit } => {
                let query = msg.to_vec();
                let Some(permit) = handler.forward_permit() else {
                    send(&sock, &wire::servfail(&query, q_end, edns), src).await;
                    continue;
                };
                let (handler, sock) = (handler.clone(), sock.clone());
                tasks.spawn(async move {
                    let resp = handler.forwarded(&query, q_end, edns, limit).await;
                    drop(permit);
                    send(&sock, &resp, src).await;
                });
                while tasks.try_join_next().is_some() {}
            }
            Outcome::Drop => {}
        }
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, dst).await {
        tracing::debug!(error = %e, %dst, "dns udp send");
    }
}

/// Accepts TCP connections (at most [`MAX_TCP_CONNECTIONS`] at once), one task each.
async fn tcp_loop(listener: TcpListener, handler: DnsHandler) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Connection tasks; dropped (aborted) with this loop when the server stops.
    let mut conns = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::debug!(error = %e, "dns tcp accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%src, "dns tcp: too many connections");
            continue;
        };
        let handler = handler.clone();
        conns.spawn(async move {
            tcp_conn(stream, src, &handler).await;
            drop(slot);
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Serves one TCP connection: length-prefixed messages answered in order, until the client
/// closes it, sends garbage, or stays idle for [`TCP_IDLE`].
async fn tcp_conn(mut stream: TcpStream, src: SocketAddr, handler: &DnsHandler) {
    let counters = &handler.inner.counters;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "dns tcp nodelay");
    }
    let mut msg = Vec::new();
    let mut framed = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        bump(&counters.queries_tcp);
        let reply = match handler.respond(&msg, src, true) {
            Outcome::Reply {
                bytes,
                kind,
                truncated,
                ..
            } => {
                handler.count(kind);
                if truncated {
                    bump(&counters.truncated);
                }
                bytes
            }
            Outcome::Forward { q_end, edns, limit } => match handler.forward_permit() {
                Some(_permit) => handler.forwarded(&msg, q_end, edns, limit).await,
                None => wire::servfail(&msg, q_end, edns),
            },
            Outcome::Drop if msg.len() < 12 => return,
            Outcome::Drop => continue,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        framed.clear();
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
