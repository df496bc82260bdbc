//! The hickory-server [`RequestHandler`] over a [`SharedView`], and [`serve`] on UDP + TCP.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
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

    /// Requests that reached the handler and were rejected as malformed (no or several
    /// questions). Packets hickory itself cannot parse are answered FORMERR (or dropped when
    /// shorter than a header) before the handler sees them and are not counted here.
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
pub async fn serve_with(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    handler: DnsHandler,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    let token = server.shutdown_token().clone();
    tokio::select! {
        res = server.block_until_done() => return res.map_err(|e| DnsError::Server(e.to_string())),
        () = shutdown => token.cancel(),
    }
    server
        .block_until_done()
        .await
        .map_err(|e| DnsError::Server(e.to_string()))
}
