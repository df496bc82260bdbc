//! The HTTP edge shared by the server's and the agent's APIs: the App Mesh error shape every
//! refusal takes, the Prometheus exposition response, and the gossip member listing both
//! serve. Errors are typed (`shoal_model::ApiError`) everywhere else and become HTTP here only.

mod serve;

pub use serve::{raise_descriptor_limit, serve, Limits};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_model::ApiError;

/// An API answer: a JSON body with a status, or an App Mesh error.
/// Put in a request's extensions by the API's authentication once the request's key was
/// authorized for the action; handlers that otherwise act only for this host's operator (a
/// loopback peer) take it as permission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authorized;

/// Whether a request may change this member's private settings (its gossip keyring): it was
/// authorized by an access key, or it comes from this host.
pub(crate) fn from_operator(ext: &axum::http::Extensions) -> bool {
    ext.get::<Authorized>().is_some()
        || ext
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .is_some_and(|p| p.0.ip().is_loopback())
}

pub(crate) type ApiResult = Result<(StatusCode, serde_json::Value), ApiError>;

/// Turns an [`ApiError`] into the rest-json error shape botocore parses: the exception name in
/// `x-amzn-ErrorType` and in `__type`, and the text in `message`.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    aws_error(status, e.kind.code(), &e.message)
}

/// An error in the rest-json shape with any exception name (the authentication errors are not
/// App Mesh's own kinds: `InvalidSignatureException`, `AccessDeniedException`, …).
pub(crate) fn aws_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({ "__type": code, "message": message })),
    )
        .into_response();
    resp.headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(code));
    resp
}

/// The answer to a path no route serves.
pub(crate) async fn no_such_operation() -> Response {
    error_response(&ApiError::not_found("No such operation"))
}

/// A `/metrics` answer: `body` in the OpenMetrics text format.
pub(crate) fn openmetrics(body: String) -> Response {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `/v1/members`: the gossip members `gossip` sees (servers and agents alike); none without
/// gossip.
pub(crate) fn members(gossip: Option<&shoal_gossip::Gossip>) -> Response {
    let members: Vec<serde_json::Value> = gossip
        .map(|g| g.members())
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name,
                "generation": m.generation,
                "gossip_addr": m.gossip_addr.to_string(),
                "role": m.meta.role.as_str(),
                "raft_id": m.meta.raft_id,
                "api_addr": m.meta.api_addr,
                "grpc_addr": m.meta.grpc_addr,
                "dns_addr": m.meta.dns_addr,
                "xds_addr": m.meta.xds_addr,
                "zone": m.meta.zone,
                "version": m.meta.version,
                "is_self": m.is_self,
            })
        })
        .collect();
    axum::Json(json!({ "members": members })).into_response()
}
