//! The hickory-server [`RequestHandler`] over a [`SharedView`], and [`serve`] on UDP + TCP.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::net::SocketAddr;

use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use hickory_server::Server;

use crate::answer::{answer, Answer, DnsConfig, DnsView};

/// The view shared between whoever updates it and the DNS handler. Writers replace or edit it
/// under the write lock; the handler holds the read lock only while computing an answer.
pub type SharedView = Arc<RwLock<DnsView>>;

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The hickory server failed.
    #[error("dns server: {0}")]
    Server(String),
}

/// The DNS request handler. Cheap to clone; clones share the view and the counters.
#[derive(Clone)]
pub struct DnsHandler {
    view: SharedView,
    cfg: DnsConfig,
    malformed: Arc<AtomicU64>,
}

impl DnsHandler {
    /// A handler answering from `view` with `cfg`.
    pub fn new(view: SharedView, cfg: DnsConfig) -> Self {
        Self {
            view,
            cfg,
            malformed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Malformed queries: UDP datagrams that do not decode as a DNS query (dropped), and queries
    /// on either transport with no or several questions (answered FORMERR). Undecodable TCP
    /// messages are answered FORMERR by hickory itself and are not counted.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    fn compute(&self, qname: &Name, qtype: hickory_server::proto::rr::RecordType) -> Answer {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        answer(&view, &self.cfg, qname, qtype)
    }
}

fn servfail(request: &Request) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata: m,
        counts: HeaderCounts::default(),
    })
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    mut rh: R,
    code: ResponseCode,
) -> ResponseInfo {
    let builder = MessageResponseBuilder::from_message_request(request);
    rh.send_response(builder.error_msg(&request.metadata, code))
        .await
        .unwrap_or_else(|_| servfail(request))
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut rh: R,
    ) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, rh, ResponseCode::NotImp).await;
        }
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                return send_error(request, rh, ResponseCode::FormErr).await;
            }
        };
        if info.query.query_class() != DNSClass::IN {
            return send_error(request, rh, ResponseCode::Refused).await;
        }
        let qname: Name = info.query.name().clone().into();
        let qtype = info.query.query_type();
        let ans = self.compute(&qname, qtype);

        let mut builder = MessageResponseBuilder::from_message_request(request);
        // Echo EDNS so that a client's larger UDP payload size is honoured; without it hickory
        // limits UDP answers to 512 bytes and sets TC.
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, 4096));
            e
        });
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let (answers, authority, additionals) = match ans {
            Answer::Records {
                answers,
                authority,
                additionals,
            } => (answers, authority, additionals),
            Answer::NxDomain { soa } => {
                meta.response_code = ResponseCode::NXDomain;
                (Vec::new(), vec![soa], Vec::new())
            }
            Answer::Refused => {
                meta.authoritative = false;
                meta.response_code = ResponseCode::Refused;
                (Vec::new(), Vec::new(), Vec::new())
            }
        };
        let empty: Vec<Record> = Vec::new();
        let resp = builder.build(
            meta,
            answers.iter(),
            empty.iter(),
            authority.iter(),
            additionals.iter(),
        );
        rh.send_response(resp)
            .await
            .unwrap_or_else(|_| servfail(request))
    }
}

/// Serves `view` on `udp` and `tcp` until `shutdown` completes, with a fresh [`DnsHandler`].
pub async fn serve(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    view: SharedView,
    cfg: DnsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    serve_with(udp, tcp, DnsHandler::new(view, cfg), shutdown).await
}

/// Serves with `handler` (keep a clone to read [`DnsHandler::malformed`]) until `shutdown`
/// completes, then shuts the hickory server down gracefully.
///
/// TCP goes through hickory's `Server`; UDP goes through this crate's own receive loop (same
/// handler, same encoding and truncation) so that every undecodable datagram is counted.
pub async fn serve_with(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    handler: DnsHandler,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let udp_task = tokio::spawn(udp_loop(Arc::new(udp), handler.clone()));
    let mut server = Server::new(handler);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    let token = server.shutdown_token().clone();
    let res = tokio::select! {
        res = server.block_until_done() => res,
        () = shutdown => {
            token.cancel();
            server.block_until_done().await
        }
    };
    udp_task.abort();
    res.map_err(|e| DnsError::Server(e.to_string()))
}

/// Receives UDP queries; undecodable datagrams and responses are counted and dropped.
async fn udp_loop(sock: Arc<tokio::net::UdpSocket>, handler: DnsHandler) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable from an earlier reply and the like: keep serving.
                tracing::debug!(error = %e, "dns udp recv");
                continue;
            }
        };
        if src.port() == 0 {
            handler.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let request = match Request::from_bytes(buf[..n].to_vec(), src, Protocol::Udp) {
            Ok(r) if r.metadata.message_type == MessageType::Query => r,
            _ => {
                handler.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let responder = UdpResponder {
            sock: sock.clone(),
            dst: src,
        };
        handler
            .handle_request::<_, TokioTime>(&request, responder)
            .await;
    }
}

/// Encodes a response within the UDP size limit (512 bytes, or the EDNS payload size the
/// response carries; hickory sets TC when records do not fit) and sends it to `dst`.
#[derive(Clone)]
struct UdpResponder {
    sock: Arc<tokio::net::UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "encoding dns response");
                bytes.clear();
                let mut encoder = BinEncoder::new(&mut bytes);
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header
                    .emit(&mut encoder)
                    .map_err(|e| NetError::from(e.to_string()))?;
                ResponseInfo::from(header)
            }
        };
        self.sock.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}
