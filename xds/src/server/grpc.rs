//! The ADS methods as a gRPC service, written against tonic's building blocks rather than
//! generated from the protos, for memory: tonic's generated service encodes responses through a
//! per-stream buffer that keeps the size of the largest response it ever sent (tens of KiB
//! for a mesh's CDS), for the life of the stream. Here each response is encoded into a buffer of
//! exactly its size that is freed once HTTP/2 has written it, so an idle stream holds no
//! response buffer at all. Requests are still decoded by tonic's `Streaming`, starting from a
//! small buffer. On the wire it is the same service (`envoy.service.discovery.v3.
//! AggregatedDiscoveryService`), so Envoy and tonic clients cannot tell the difference.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body::Frame;
use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{Bytes, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::delta::DeltaSession;
use super::sotw::SotwSession;
use super::{AdsServer, BoxStream, MAX_REQUEST_BYTES};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service, for tonic's `Server::add_service` (see [`AdsServer::into_service`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    pub(crate) server: AdsServer,
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type ResponseFuture = Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, Infallible>>
            + Send,
    >,
>;

impl Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            if let Some(enc) = req.headers().get("grpc-encoding") {
                if enc.as_bytes() != b"identity" {
                    return Ok(Status::unimplemented(
                        "compressed requests are not supported by shoal's ADS server",
                    )
                    .into_http());
                }
            }
            // gRPC initial metadata travels as HTTP/2 headers.
            let token = req
                .headers()
                .get(crate::proxy::PROXY_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let response = match req.uri().path() {
                SOTW_PATH => {
                    let requests = decode::<DiscoveryRequest>(req.into_body());
                    server
                        .stream::<SotwSession>(requests, token)
                        .await
                        .map(respond)
                }
                DELTA_PATH => {
                    let requests = decode::<DeltaDiscoveryRequest>(req.into_body());
                    server
                        .stream::<DeltaSession>(requests, token)
                        .await
                        .map(respond)
                }
                other => Err(Status::unimplemented(format!("no method {other}"))),
            };
            Ok(response.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// Decodes protobuf requests, starting from a 1 KiB buffer (tonic's default is 8 KiB per
/// stream; ADS requests are small except a delta resumption's list of versions).
struct SmallDecoder<T>(PhantomData<fn() -> T>);

impl<T: Message + Default> Decoder for SmallDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

fn decode<T: Message + Default + Send + 'static>(body: tonic::body::Body) -> Streaming<T> {
    Streaming::new_request(
        SmallDecoder::<T>(PhantomData),
        body,
        None,
        Some(MAX_REQUEST_BYTES),
    )
}

fn respond<M: Message + 'static>(responses: BoxStream<M>) -> http::Response<tonic::body::Body> {
    let mut r = http::Response::new(tonic::body::Body::new(ResponseBody {
        responses: Some(responses),
    }));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// A gRPC response body: one length-prefixed message per data frame, then the trailers with
/// the status.
struct ResponseBody<M> {
    responses: Option<BoxStream<M>>,
}

fn frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0); // not compressed
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf).expect("the buffer has room");
    Bytes::from(buf)
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert(Status::GRPC_STATUS, HeaderValue::from_static("13"));
    }
    map
}

impl<M: Message + 'static> http_body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(responses) = self.responses.as_mut() else {
            return Poll::Ready(None);
        };
        match responses.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(msg))) => Poll::Ready(Some(Ok(Frame::data(frame(&msg))))),
            Poll::Ready(Some(Err(status))) => {
                self.responses = None;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.responses = None;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.responses.is_none()
    }
}
