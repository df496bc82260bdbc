//! The agent's HTTP API: registration (`shoal register` / `deregister`), the local instances,
//! the endpoint view, members, status and metrics. Errors use the App Mesh error shape.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shoal_model::ApiError;

use super::AgentState;
use crate::http::error_response;
use crate::registration::{InstanceName, Registration};

/// The agent's routes. `standalone`: also `/v1/status`, `/v1/members` and `/metrics`, which a
/// server embedding the agent serves itself.
pub fn routes(state: AgentState, standalone: bool) -> Router {
    let mut r = Router::new()
        .route(
            "/v1/agent/instances",
            get(list_local)
                .put(register)
                .post(register)
                .delete(deregister),
        )
        .route("/v1/agent/status", get(status))
        .route("/v1/agent/metrics", get(metrics))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/agent/xds", get(xds_status))
        .route("/v1/agent/xds/config", get(xds_config))
        .route("/v1/agent/xds/static-bootstrap", get(xds_static_bootstrap))
        .route(
            "/v1/agent/gossip/keyring",
            get(keyring_list).post(keyring_change),
        );
    if standalone {
        r = r
            .route("/v1/status", get(status))
            .route("/v1/members", get(members))
            .route("/metrics", get(metrics))
            .fallback(crate::http::no_such_operation);
    }
    r.with_state(state)
}

fn bad(msg: impl Into<String>) -> Response {
    let msg = msg.into();
    tracing::info!(error = %msg, "bad agent API request");
    error_response(&ApiError::bad_request(msg))
}

async fn register(State(s): State<AgentState>, body: axum::body::Bytes) -> Response {
    let req: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid registration: {e}")),
    };
    let inst = match req.to_instance() {
        Ok(i) => i,
        Err(e) => return bad(e.0),
    };
    let key = inst.key();
    match s.local.register(inst.clone()) {
        Ok(()) => {
            tracing::info!(instance = %key, address = %inst.address, port = inst.port, "registered");
            (StatusCode::OK, Json(json!({"key": key, "instance": inst}))).into_response()
        }
        Err(e @ super::local::RegisterError::Full { .. }) => error_response(&ApiError::new(
            shoal_model::ErrorKind::LimitExceeded,
            e.to_string(),
        )),
        Err(super::local::RegisterError::Store(e)) => {
            tracing::error!(error = %e, "cannot persist a registration");
            error_response(&ApiError::new(
                shoal_model::ErrorKind::InternalServerError,
                format!("cannot persist the registration: {e}"),
            ))
        }
    }
}

async fn deregister(State(s): State<AgentState>, q: Query<InstanceName>) -> Response {
    let key = q.key();
    match s.local.deregister(&key) {
        Ok(true) => {
            tracing::info!(instance = %key, "deregistered");
            (StatusCode::OK, Json(json!({"key": key}))).into_response()
        }
        Ok(false) => error_response(&ApiError::not_found(format!(
            "No instance {key} is registered on this agent"
        ))),
        Err(e) => error_response(&ApiError::new(
            shoal_model::ErrorKind::InternalServerError,
            format!("cannot persist the deregistration: {e}"),
        )),
    }
}

async fn list_local(State(s): State<AgentState>) -> Response {
    Json(json!({ "instances": s.local.list() })).into_response()
}

async fn endpoints(State(s): State<AgentState>) -> Response {
    let eps: Vec<_> = s
        .view
        .endpoints()
        .iter()
        .map(|e| {
            json!({
                "host": e.host,
                "healthy": e.healthy,
                "key": e.instance.key(),
                "instance": e.instance,
            })
        })
        .collect();
    Json(json!({ "revision": s.view.revision(), "endpoints": eps })).into_response()
}

async fn xds_status(State(s): State<AgentState>) -> Response {
    let Some(ads) = &s.ads else {
        return Json(json!({"enabled": false})).into_response();
    };
    let st = ads.stats();
    let last_nack = st.last_nack.as_ref().map(|n| {
        json!({
            "proxy": n.proxy.to_string(),
            "type": n.ty.type_url(),
            "version": n.version,
            "message": n.message,
        })
    });
    Json(json!({
        "enabled": true,
        "address": s.bound.xds,
        "proxies": s.proxies.count(),
        "streams_open": st.streams_open,
        "streams_total": st.streams_total,
        "streams_refused": st.streams_refused,
        "responses": st.responses.total(),
        "acks": st.acks.total(),
        "nacks": st.nacks.total(),
        "last_nack": last_nack,
        // Files a proxy's TLS configuration names that this host cannot read, by proxy.
        "missing_files": *s.missing_files.lock().unwrap_or_else(|e| e.into_inner()),
    }))
    .into_response()
}

/// `?proxy=<node id>[&listen_address=…&ingress_port=…&egress_port=…]`: the listener options
/// are those of the proxy's bootstrap (`shoal envoy bootstrap --listen-address …`); without
/// them the defaults, as for a proxy bootstrapped without those flags.
#[derive(Debug, Deserialize)]
struct ProxyQuery {
    proxy: String,
    #[serde(default)]
    listen_address: Option<String>,
    #[serde(default)]
    ingress_port: Option<u16>,
    #[serde(default)]
    egress_port: Option<u16>,
}

impl ProxyQuery {
    fn options(&self) -> shoal_xds::ProxyOptions {
        proxy_options(&self.listen_address, self.ingress_port, self.egress_port)
    }
}

/// A proxy's listener options from a query: the defaults, overridden by what is given.
fn proxy_options(
    listen_address: &Option<String>,
    ingress_port: Option<u16>,
    egress_port: Option<u16>,
) -> shoal_xds::ProxyOptions {
    let mut opts = shoal_xds::ProxyOptions::default();
    if let Some(a) = listen_address {
        opts.listen_address = a.clone();
    }
    if let Some(p) = ingress_port {
        opts.ingress_port = p;
    }
    if let Some(p) = egress_port {
        opts.egress_port = p;
    }
    opts
}

/// The configuration a proxy gets (or would get) from this agent, in the translation's text
/// form: what to compare with Envoy's `/config_dump`. Listener names and addresses depend on
/// the proxy's listen address and ports, so a proxy bootstrapped with other than the defaults
/// is compared with the options it was started with (the chaos suite does so).
async fn xds_config(State(s): State<AgentState>, q: Query<ProxyQuery>) -> Response {
    let proxy = match shoal_xds::ProxyId::parse(&q.proxy) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    match s.proxies.snapshot(&proxy, &q.options()) {
        Some(snap) => (
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8")],
            shoal_xds::translate::render(&snap),
        )
            .into_response(),
        None => error_response(&ApiError::not_found(format!(
            "{proxy} cannot be translated (see the agent's log)"
        ))),
    }
}

/// `?proxy=<node id>&listen_address=…&ingress_port=…&egress_port=…&admin_address=…&admin_port=…`.
#[derive(Debug, Deserialize)]
struct StaticQuery {
    proxy: String,
    #[serde(default)]
    listen_address: Option<String>,
    #[serde(default)]
    ingress_port: Option<u16>,
    #[serde(default)]
    egress_port: Option<u16>,
    #[serde(default = "localhost")]
    admin_address: String,
    #[serde(default = "admin_port")]
    admin_port: u16,
}

fn localhost() -> String {
    "127.0.0.1".into()
}

fn admin_port() -> u16 {
    9901
}

/// The configuration a proxy gets, as a binary-protobuf Envoy bootstrap with only static
/// resources (`envoy -c file.pb`): the "equivalent static config" the data-plane benchmark runs
/// an Envoy with, and a way to run an Envoy with no control plane at all.
async fn xds_static_bootstrap(State(s): State<AgentState>, q: Query<StaticQuery>) -> Response {
    use envoy_types::pb::envoy::config::bootstrap::v3::Admin;
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, SocketAddress,
    };
    use prost::Message;
    let proxy = match shoal_xds::ProxyId::parse(&q.proxy) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    let opts = proxy_options(&q.listen_address, q.ingress_port, q.egress_port);
    let Some(snap) = s.proxies.snapshot(&proxy, &opts) else {
        return error_response(&ApiError::not_found(format!(
            "{proxy} cannot be translated (see the agent's log)"
        )));
    };
    let mut b = match shoal_xds::translate::static_bootstrap(&snap, &proxy.to_string()) {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ApiError::new(
                shoal_model::ErrorKind::InternalServerError,
                format!("cannot build the bootstrap: {e}"),
            ))
        }
    };
    b.admin = Some(Admin {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: q.admin_address.clone(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    q.admin_port,
                ))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    (
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        b.encode_to_vec(),
    )
        .into_response()
}

async fn members(State(s): State<AgentState>) -> Response {
    crate::http::members(Some(&s.gossip))
}

async fn status(State(s): State<AgentState>) -> Response {
    let follow = s.follow.lock().map(|f| f.clone()).unwrap_or_default();
    let model = s.model.borrow().clone();
    let eps = s.view.endpoints();
    Json(json!({
        "role": "agent",
        "name": s.gossip.local_name(),
        "revision": model.revision(),
        "server": follow.server,
        "from_cache": follow.from_cache,
        "last_error": follow.last_error,
        "streams_opened": follow.streams_opened,
        "cache_error": follow.cache_error,
        "members": s.gossip.members().len(),
        "local_instances": s.local.list().len(),
        "endpoints": eps.len(),
        "healthy_endpoints": eps.iter().filter(|e| e.healthy).count(),
        "workload_certificates": s.identity.lock().map(|i| i.clone()).unwrap_or_default(),
        "bound": *s.bound,
    }))
    .into_response()
}

async fn metrics(State(s): State<AgentState>) -> Response {
    crate::http::openmetrics(super::metrics::render(&s))
}

#[cfg(test)]
mod tests {
    use super::ProxyQuery;

    /// Regression (chaos suite): `/v1/agent/xds/config` rendered every proxy with the default
    /// listen address, so an Envoy bootstrapped with `--listen-address` never matched its
    /// agent's snapshot (listener `lds_egress_0.0.0.0_15001` against `lds_egress_<ip>_15001`).
    #[test]
    fn xds_config_takes_the_proxys_listener_options() {
        let q: ProxyQuery = serde_json::from_value(serde_json::json!({
            "proxy": "mesh/m/virtualNode/vn", "listen_address": "10.1.2.3",
            "ingress_port": 15100, "egress_port": 15101}))
        .expect("query");
        let o = q.options();
        assert_eq!(
            (o.listen_address.as_str(), o.ingress_port, o.egress_port),
            ("10.1.2.3", 15100, 15101)
        );
        let q: ProxyQuery =
            serde_json::from_value(serde_json::json!({"proxy": "mesh/m/virtualNode/vn"}))
                .expect("query");
        let d = shoal_xds::ProxyOptions::default();
        let o = q.options();
        assert_eq!(
            (o.listen_address, o.ingress_port, o.egress_port),
            (d.listen_address, d.ingress_port, d.egress_port)
        );
    }
}

/// A rotation step of `POST /v1/agent/gossip/keyring`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringChange {
    op: crate::gossip_keys::KeyOp,
    /// The key, base64.
    key: String,
}

/// The keyring's fingerprints, or why there is none. Only for this host's operator or an
/// authorized key: the fingerprints tell nothing about the keys, but which key a member uses is
/// nobody else's business.
async fn keyring_list(State(s): State<AgentState>, ext: axum::http::Extensions) -> Response {
    if !crate::http::from_operator(&ext) {
        return forbidden_keyring();
    }
    match &s.gossip_keys {
        Some(keys) => Json(keys.listing()).into_response(),
        None => no_keyring(),
    }
}

/// One rotation step, saved before it is answered.
async fn keyring_change(
    State(s): State<AgentState>,
    ext: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    if !crate::http::from_operator(&ext) {
        return forbidden_keyring();
    }
    let Some(keys) = &s.gossip_keys else {
        return no_keyring();
    };
    let change: KeyringChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad(format!("invalid keyring change: {e}")),
    };
    let key = match shoal_gossip::GossipKey::from_base64(&change.key) {
        Ok(k) => k,
        Err(e) => return bad(e.to_string()),
    };
    match keys.apply(change.op, key) {
        Ok(listing) => Json(listing).into_response(),
        Err(e) => bad(format!("{e:#}")),
    }
}

fn forbidden_keyring() -> Response {
    tracing::warn!(
        "gossip keyring request refused: not from this host and not signed by an authorized key"
    );
    crate::http::aws_error(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        "the gossip keyring is managed from this host, or with a key allowed shoal:ManageGossipKeyring on a server with --api-auth",
    )
}

fn no_keyring() -> Response {
    bad("gossip is not encrypted on this member: start it with --gossip-key-file to use a keyring")
}
