//! API authentication and authorization (`--api-auth`): every request but `GET /v1/status`
//! and the one-time `POST /v1/acl/bootstrap` carries an AWS Signature Version 4 made with a key
//! shoal issued, verified against the key's secret in the replicated model, and is allowed by
//! the key's policy for the action it asks (`appmesh:CreateVirtualNode` on the node's ARN,
//! `shoal:SnapshotRestore`, …). What followers ask of the leader goes over the cluster gRPC
//! port (mutual TLS, server certificates only: `rpc.rs`), never through this API.
//!
//! Also the access-key endpoints: `POST /v1/acl/bootstrap`, `POST|GET /v1/acl/keys`,
//! `DELETE /v1/acl/keys/{id}`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shoal_auth::policy::{Decision, Policy};
use shoal_auth::sigv4;
use shoal_model::store::AccessKey;
use shoal_model::{ApiError, Command, Kind};

use super::{AppState, Identity};
use crate::http::{aws_error, error_response};

/// What a request needs before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health checks and the one-time bootstrap.
    Open,
    /// A key whose policy allows `action` on `resource`.
    Action {
        /// `appmesh:CreateMesh`, `shoal:SnapshotSave`, …
        action: String,
        /// An ARN, or `*`.
        resource: String,
    },
}

fn act(action: &str, resource: impl Into<String>) -> Need {
    Need::Action {
        action: action.to_string(),
        resource: resource.into(),
    }
}

fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&seg[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

/// What `method path?query` (with `body`, for the names a create carries) needs. Pure.
pub fn need(method: &Method, path: &str, query: &str, body: &[u8], id: &Identity) -> Need {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let arn = |res: String| format!("arn:aws:appmesh:{}:{}:{res}", id.region, id.account);
    let body_name = |member: &str| -> String {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get(member).and_then(|n| n.as_str()).map(str::to_string))
            .unwrap_or_else(|| "*".into())
    };
    match s.as_slice() {
        ["v1", "status"] if method == Method::GET => Need::Open,
        ["v1", "acl", "bootstrap"] if method == Method::POST => Need::Open,
        // The token in the body is the credential; the CA certificate is public.
        ["v1", "tls", "join" | "renew"] if method == Method::POST => Need::Open,
        ["v1", "tls", "ca"] if method == Method::GET => Need::Open,
        ["v1", "tls", "tokens", ..] => act("shoal:ManageJoinTokens", "*"),
        ["v1", "ca", "mesh", "sign"] => act("shoal:IssueWorkloadCertificate", "*"),
        ["v1", "ca", "mesh", "rotate"] => act("shoal:RotateMeshCa", "*"),
        // Replacing the signer with the operator's: the same power as a rotation.
        ["v1", "ca", "mesh", "import"] => act("shoal:RotateMeshCa", "*"),
        ["v1", "acl", ..] => act("shoal:ManageAccessKeys", "*"),
        ["v1", "snapshot"] => act("shoal:SnapshotSave", "*"),
        ["v1", "snapshot", "restore"] => act("shoal:SnapshotRestore", "*"),
        ["v1", "operator", ..] => act("shoal:RemoveServer", "*"),
        ["v1", "agent", "gossip", "keyring"] => act("shoal:ManageGossipKeyring", "*"),
        ["v1", "agent", ..] => act("shoal:AgentApi", "*"),
        ["v1", ..] | ["metrics"] => act("shoal:ReadCluster", "*"),
        ["v20190125", "tag"] => tag_need("TagResource", query),
        ["v20190125", "untag"] => tag_need("UntagResource", query),
        ["v20190125", "tags"] => tag_need("ListTagsForResource", query),
        ["v20190125", "meshes"] => match *method {
            Method::GET => act("appmesh:ListMeshes", "*"),
            _ => act(
                "appmesh:CreateMesh",
                arn(format!("mesh/{}", body_name("meshName"))),
            ),
        },
        ["v20190125", "meshes", mesh] => act(
            &format!("appmesh:{}Mesh", one_verb(method)),
            arn(format!("mesh/{mesh}")),
        ),
        ["v20190125", "meshes", mesh, coll] => match kind_of_collection(coll) {
            Some(kind) => {
                let (list, noun) = (kind.list_member(), title(kind));
                if method == Method::GET {
                    act(
                        &format!("appmesh:List{}", upper_first(list)),
                        arn(format!("mesh/{mesh}")),
                    )
                } else {
                    act(
                        &format!("appmesh:Create{noun}"),
                        arn(format!(
                            "mesh/{mesh}/{}/{}",
                            kind.arn_segment(),
                            body_name(kind.name_member())
                        )),
                    )
                }
            }
            None => act("appmesh:Unknown", "*"),
        },
        ["v20190125", "meshes", mesh, coll, name] => match kind_of_collection(coll) {
            Some(kind) => act(
                &format!("appmesh:{}{}", one_verb(method), title(kind)),
                arn(format!("mesh/{mesh}/{}/{name}", kind.arn_segment())),
            ),
            None => act("appmesh:Unknown", "*"),
        },
        ["v20190125", "meshes", mesh, parent_seg, parent, coll] => {
            match child_kind(parent_seg, coll) {
                Some(kind) => {
                    let base = format!("mesh/{mesh}/{parent_seg}/{parent}");
                    if method == Method::GET {
                        act(
                            &format!("appmesh:List{}", upper_first(kind.list_member())),
                            arn(base),
                        )
                    } else {
                        act(
                            &format!("appmesh:Create{}", title(kind)),
                            arn(format!(
                                "{base}/{}/{}",
                                kind.arn_segment(),
                                body_name(kind.name_member())
                            )),
                        )
                    }
                }
                None => act("appmesh:Unknown", "*"),
            }
        }
        ["v20190125", "meshes", mesh, parent_seg, parent, coll, name] => {
            match child_kind(parent_seg, coll) {
                Some(kind) => act(
                    &format!("appmesh:{}{}", one_verb(method), title(kind)),
                    arn(format!(
                        "mesh/{mesh}/{parent_seg}/{parent}/{}/{name}",
                        kind.arn_segment()
                    )),
                ),
                None => act("appmesh:Unknown", "*"),
            }
        }
        _ => act("shoal:Unknown", "*"),
    }
}

fn tag_need(op: &str, query: &str) -> Need {
    act(
        &format!("appmesh:{op}"),
        query_param(query, "resourceArn").unwrap_or_else(|| "*".into()),
    )
}

fn one_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "Describe",
        Method::PUT => "Update",
        Method::DELETE => "Delete",
        _ => "Unknown",
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `VirtualNode` for the operation names.
fn title(kind: Kind) -> String {
    upper_first(kind.arn_segment())
}

fn kind_of_collection(coll: &str) -> Option<Kind> {
    match coll {
        "virtualNodes" => Some(Kind::VirtualNode),
        "virtualRouters" => Some(Kind::VirtualRouter),
        "virtualServices" => Some(Kind::VirtualService),
        "virtualGateways" => Some(Kind::VirtualGateway),
        _ => None,
    }
}

fn child_kind(parent_seg: &str, coll: &str) -> Option<Kind> {
    match (parent_seg, coll) {
        ("virtualRouter", "routes") => Some(Kind::Route),
        ("virtualGateway", "gatewayRoutes") => Some(Kind::GatewayRoute),
        _ => None,
    }
}

/// The largest body a signed request may carry (it is read whole to be hashed): the restore
/// cap.
const MAX_SIGNED_BODY: usize = super::admin::MAX_RESTORE_BYTES;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The middleware: authenticates and authorizes every request when `--api-auth` is on.
pub async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !s.auth {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_string();
    let path = parts.uri.path().to_string();
    // Open endpoints need nothing, not even their body read here.
    if need(&parts.method, &path, &query, b"", &s.identity) == Need::Open {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let bytes = match super::admin::read_capped(body, MAX_SIGNED_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let pairs = crate::sign::header_pairs(&parts.headers);
    let hs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sreq = sigv4::Request {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &hs,
        body: &bytes,
    };
    let mut found: Option<AccessKey> = None;
    let verified = sigv4::verify(&sreq, now_secs(), |id| {
        found = s.raft.read(|m| m.access_key(id).cloned());
        found.as_ref().map(|k| k.secret.clone())
    });
    if let Err(e) = verified {
        tracing::debug!(
            method = %parts.method,
            path = %shoal_model::logsafe::LogSafe(&path),
            code = e.code(),
            "request refused: not authenticated"
        );
        return aws_error(StatusCode::FORBIDDEN, e.code(), &e.to_string());
    }
    let key = found.expect("a verified request has a key");
    match need(&parts.method, &path, &query, &bytes, &s.identity) {
        Need::Open => {}
        Need::Action { action, resource } => {
            let decision = Policy::parse(&key.policy)
                .map(|p| p.decide(&action, &resource))
                .unwrap_or(Decision::ImplicitDeny);
            if !decision.allowed() {
                return aws_error(
                    StatusCode::FORBIDDEN,
                    "AccessDeniedException",
                    &format!(
                        "Key {} is not authorized to perform: {action} on resource: {resource}",
                        key.id
                    ),
                );
            }
        }
    }
    let mut parts = parts;
    parts.extensions.insert(crate::http::Authorized);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The access-key routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/acl/bootstrap", post(bootstrap))
        .route("/v1/acl/keys", post(create).get(list))
        .route("/v1/acl/keys/{id}", delete(revoke))
}

/// A new key: id `SHOAL` + 16 upper-case letters and digits, secret of 40 characters, both
/// from the OS's random source.
fn new_key(policy: &Policy, description: &str) -> AccessKey {
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let pick = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| alphabet[usize::from(rand::random::<u8>()) % alphabet.len()] as char)
            .collect()
    };
    AccessKey {
        id: format!("SHOAL{}", pick(ID, 15)),
        secret: pick(SECRET, 40),
        policy: serde_json::to_string(policy).expect("a policy serializes"),
        description: description.to_string(),
        created_at: u64::try_from(now_secs()).unwrap_or(0),
    }
}

fn key_answer(k: &AccessKey) -> serde_json::Value {
    json!({ "AccessKeyId": k.id, "SecretAccessKey": k.secret, "Description": k.description })
}

/// The first key (every action), committed on this server (the leader) if no key exists yet.
pub async fn bootstrap_keys(
    raft: &shoal_raft::RaftNode,
) -> Result<Result<AccessKey, ApiError>, shoal_raft::WriteError> {
    let admin = new_key(&Policy::admin(), "bootstrap (every action)");
    let cmd = Command::BootstrapAccessKeys {
        keys: vec![admin.clone()],
    };
    let w = raft.write(cmd).await?;
    Ok(w.outcome.map(|_| admin))
}

/// `POST /v1/acl/bootstrap`: the first key (every action), once per cluster, unauthenticated;
/// refused once any key exists.
async fn bootstrap(State(s): State<AppState>) -> Response {
    match bootstrap_keys(&s.raft).await {
        Ok(outcome) => match outcome {
            Ok(admin) => {
                tracing::info!(access_key = %admin.id, "access keys bootstrapped");
                (StatusCode::OK, Json(key_answer(&admin))).into_response()
            }
            Err(e) => error_response(&e),
        },
        Err(shoal_raft::WriteError::ForwardToLeader { leader, .. }) => {
            let at = leader
                .map(|l| l.api_addr)
                .unwrap_or_else(|| "unknown".into());
            error_response(&ApiError::new(
                shoal_model::ErrorKind::ServiceUnavailable,
                format!("Bootstrap on the leader: this server is a follower; the leader's API is at {at}"),
            ))
        }
        Err(e) => error_response(&ApiError::new(
            shoal_model::ErrorKind::ServiceUnavailable,
            e.to_string(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKey {
    policy: serde_json::Value,
    #[serde(default)]
    description: String,
}

/// `POST /v1/acl/keys` `{"Policy": {…}, "Description": "…"}`: a new key; answers its secret
/// (the only time it is shown).
async fn create(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: CreateKey = match shoal_model::request::json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let policy = match Policy::parse(&req.policy.to_string()) {
        Ok(p) => p,
        Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
    };
    let key = new_key(&policy, &req.description);
    match super::forward::commit_reply(&s, Command::PutAccessKey { key: key.clone() }).await {
        Ok(_) => (StatusCode::OK, Json(key_answer(&key))).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/acl/keys`: every key without its secret.
async fn list(State(s): State<AppState>) -> Response {
    if let Err(e) = super::forward::linearize(&s).await {
        return error_response(&e);
    }
    let keys: Vec<serde_json::Value> = s.raft.read(|m| {
        m.access_keys()
            .map(|k| {
                json!({
                    "AccessKeyId": k.id,
                    "Description": k.description,
                    "Policy": serde_json::from_str::<serde_json::Value>(&k.policy).unwrap_or_default(),
                    "CreatedAt": k.created_at,
                })
            })
            .collect()
    });
    (StatusCode::OK, Json(json!({ "AccessKeys": keys }))).into_response()
}

/// `DELETE /v1/acl/keys/{id}`: revokes a key.
async fn revoke(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match super::forward::commit_reply(&s, Command::RevokeAccessKey { id: id.clone() }).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "AccessKeyId": id }))).into_response(),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            account: "000000000000".into(),
            region: "us-east-1".into(),
        }
    }

    #[test]
    fn every_route_maps_to_its_action_and_resource() {
        let arn = |r: &str| format!("arn:aws:appmesh:us-east-1:000000000000:{r}");
        let cases: Vec<(Method, &str, &str, &str, Need)> = vec![
            (Method::GET, "/v1/status", "", "", Need::Open),
            (Method::POST, "/v1/acl/bootstrap", "", "", Need::Open),
            (
                Method::GET,
                "/v1/ca/mesh",
                "",
                "",
                act("shoal:ReadCluster", "*"),
            ),
            (
                Method::POST,
                "/v1/ca/mesh/sign",
                "",
                "",
                act("shoal:IssueWorkloadCertificate", "*"),
            ),
            (
                Method::POST,
                "/v1/ca/mesh/rotate",
                "",
                "",
                act("shoal:RotateMeshCa", "*"),
            ),
            (
                Method::POST,
                "/v1/ca/mesh/import",
                "",
                "",
                act("shoal:RotateMeshCa", "*"),
            ),
            (
                Method::GET,
                "/v1/acl/keys",
                "",
                "",
                act("shoal:ManageAccessKeys", "*"),
            ),
            (
                Method::POST,
                "/v1/snapshot/restore",
                "",
                "",
                act("shoal:SnapshotRestore", "*"),
            ),
            (
                Method::GET,
                "/v1/snapshot",
                "",
                "",
                act("shoal:SnapshotSave", "*"),
            ),
            (
                Method::POST,
                "/v1/operator/remove-server",
                "",
                "",
                act("shoal:RemoveServer", "*"),
            ),
            (
                Method::GET,
                "/metrics",
                "",
                "",
                act("shoal:ReadCluster", "*"),
            ),
            (
                Method::GET,
                "/v20190125/meshes",
                "",
                "",
                act("appmesh:ListMeshes", "*"),
            ),
            (
                Method::PUT,
                "/v20190125/meshes",
                "",
                r#"{"meshName":"m"}"#,
                act("appmesh:CreateMesh", arn("mesh/m")),
            ),
            (
                Method::GET,
                "/v20190125/meshes/m",
                "",
                "",
                act("appmesh:DescribeMesh", arn("mesh/m")),
            ),
            (
                Method::DELETE,
                "/v20190125/meshes/m",
                "",
                "",
                act("appmesh:DeleteMesh", arn("mesh/m")),
            ),
            (
                Method::GET,
                "/v20190125/meshes/m/virtualNodes",
                "",
                "",
                act("appmesh:ListVirtualNodes", arn("mesh/m")),
            ),
            (
                Method::PUT,
                "/v20190125/meshes/m/virtualNodes",
                "",
                r#"{"virtualNodeName":"n"}"#,
                act("appmesh:CreateVirtualNode", arn("mesh/m/virtualNode/n")),
            ),
            (
                Method::PUT,
                "/v20190125/meshes/m/virtualNodes/n%20x",
                "",
                "",
                act("appmesh:UpdateVirtualNode", arn("mesh/m/virtualNode/n x")),
            ),
            (
                Method::GET,
                "/v20190125/meshes/m/virtualServices/s.local",
                "",
                "",
                act(
                    "appmesh:DescribeVirtualService",
                    arn("mesh/m/virtualService/s.local"),
                ),
            ),
            (
                Method::PUT,
                "/v20190125/meshes/m/virtualRouter/r/routes",
                "",
                r#"{"routeName":"x"}"#,
                act("appmesh:CreateRoute", arn("mesh/m/virtualRouter/r/route/x")),
            ),
            (
                Method::DELETE,
                "/v20190125/meshes/m/virtualGateway/g/gatewayRoutes/x",
                "",
                "",
                act(
                    "appmesh:DeleteGatewayRoute",
                    arn("mesh/m/virtualGateway/g/gatewayRoute/x"),
                ),
            ),
            (
                Method::GET,
                "/v20190125/meshes/m/virtualGateway/g/gatewayRoutes",
                "",
                "",
                act("appmesh:ListGatewayRoutes", arn("mesh/m/virtualGateway/g")),
            ),
            (
                Method::PUT,
                "/v20190125/tag",
                "resourceArn=arn%3Aaws%3Aappmesh%3Aus-east-1%3A000000000000%3Amesh%2Fm",
                "",
                act("appmesh:TagResource", arn("mesh/m")),
            ),
        ];
        for (method, path, query, body, want) in cases {
            assert_eq!(
                need(&method, path, query, body.as_bytes(), &id()),
                want,
                "{method} {path}"
            );
        }
    }
}
