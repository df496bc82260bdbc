//! The App Mesh 2019-01-25 REST API: the 38 operations of the botocore model on its request
//! URIs, with its status codes and error shapes, so `aws appmesh --endpoint-url` and the AWS
//! SDKs work unchanged. Requests signed with SigV4 are accepted as they are.
//!
//! Every handler here is a thin adapter: parse (`shoal_model::request`), build a
//! [`Command`], hand it to Raft, turn the outcome into JSON. The rules live in `shoal-model`.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::Router;
use serde_json::{json, Value};
use shoal_model::request::{self, parse_create, parse_update};
use shoal_model::{ApiError, Command, ErrorKind, Kind, PutMode, ResourceKey, Stamp};

use super::AppState;
use crate::http::{error_response, ApiResult};

/// Page size when the client gives no `limit` (App Mesh's maximum).
const DEFAULT_LIMIT: usize = 100;

fn respond(state: &AppState, op: &str, started: Instant, result: ApiResult) -> Response {
    let (status, resp) = match result {
        Ok((status, body)) => (status, (status, axum::Json(body)).into_response()),
        Err(e) => {
            if e.kind == ErrorKind::InternalServerError {
                tracing::error!(op, error = %e.message, "request failed");
            } else {
                tracing::debug!(op, error = %e, "request rejected");
            }
            (
                StatusCode::from_u16(e.kind.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                error_response(&e),
            )
        }
    };
    state
        .metrics
        .observe_request(op, status.as_u16(), started.elapsed());
    resp
}

/// The operation name for metrics and logs (`CreateVirtualNode`).
fn op_name(verb: &str, kind: Kind) -> String {
    let noun = match kind {
        Kind::Mesh => "Mesh",
        Kind::VirtualNode => "VirtualNode",
        Kind::VirtualRouter => "VirtualRouter",
        Kind::Route => "Route",
        Kind::VirtualService => "VirtualService",
        Kind::VirtualGateway => "VirtualGateway",
        Kind::GatewayRoute => "GatewayRoute",
    };
    if verb == "List" {
        let plural = if kind == Kind::Mesh {
            "Meshes".to_string()
        } else {
            format!("{noun}s")
        };
        format!("List{plural}")
    } else {
        format!("{verb}{noun}")
    }
}

/// Builds the key of the resource a request names, from its path parameters.
fn key_of(
    kind: Kind,
    p: &HashMap<String, String>,
    name: Option<&str>,
) -> Result<ResourceKey, ApiError> {
    let get = |k: &str| -> Result<&str, ApiError> {
        p.get(k)
            .map(String::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("missing path parameter {k}")))
    };
    let name = match name {
        Some(n) => n,
        None => get("name")?,
    };
    if kind == Kind::Mesh {
        return Ok(ResourceKey::mesh(name));
    }
    let mesh = get("mesh")?;
    Ok(match kind {
        Kind::Route | Kind::GatewayRoute => ResourceKey::child(mesh, kind, get("parent")?, name),
        _ => ResourceKey::in_mesh(mesh, kind, name),
    })
}

/// The mesh name of a request, for `meshOwner` checks and list scopes.
fn mesh_param(kind: Kind, p: &HashMap<String, String>) -> String {
    if kind == Kind::Mesh {
        p.get("name").cloned().unwrap_or_default()
    } else {
        p.get("mesh").cloned().unwrap_or_default()
    }
}

fn check_owner(state: &AppState, q: &HashMap<String, String>) -> Result<(), ApiError> {
    match q.get("meshOwner") {
        Some(owner) if owner != &state.identity.account => Err(ApiError::not_found(format!(
            "No mesh shared by account {owner} is known to this control plane"
        ))),
        _ => Ok(()),
    }
}

fn stamp(state: &AppState) -> Stamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    // App Mesh reports times with millisecond precision.
    let now = (now * 1000.0).round() / 1000.0;
    Stamp {
        now,
        uid: uuid::Uuid::new_v4().to_string(),
        account: state.identity.account.clone(),
        region: state.identity.region.clone(),
    }
}

use super::forward::commit;

pub(crate) async fn read_barrier(
    state: &AppState,
    q: &HashMap<String, String>,
) -> Result<(), ApiError> {
    if q.get("stale").is_some_and(|v| v != "false") {
        return Ok(());
    }
    super::forward::linearize(state).await
}

async fn create(
    state: AppState,
    kind: Kind,
    p: HashMap<String, String>,
    q: HashMap<String, String>,
    body: Bytes,
) -> ApiResult {
    check_owner(&state, &q)?;
    let req = parse_create(kind, &body)?;
    let key = key_of(kind, &p, Some(&req.name))?;
    let cmd = Command::Put {
        key,
        spec: Box::new(req.spec),
        mode: PutMode::Create,
        tags: req.tags,
        client_token: req.client_token,
        stamp: stamp(&state),
    };
    let r = commit(&state, cmd).await?;
    Ok((StatusCode::OK, r.to_data(false)))
}

async fn update(
    state: AppState,
    kind: Kind,
    p: HashMap<String, String>,
    q: HashMap<String, String>,
    body: Bytes,
) -> ApiResult {
    check_owner(&state, &q)?;
    let req = parse_update(kind, &body)?;
    let key = key_of(kind, &p, None)?;
    let cmd = Command::Put {
        key,
        spec: Box::new(req.spec),
        mode: PutMode::Update,
        tags: Vec::new(),
        client_token: req.client_token,
        stamp: stamp(&state),
    };
    let r = commit(&state, cmd).await?;
    Ok((StatusCode::OK, r.to_data(false)))
}

async fn describe(
    state: AppState,
    kind: Kind,
    p: HashMap<String, String>,
    q: HashMap<String, String>,
) -> ApiResult {
    check_owner(&state, &q)?;
    let key = key_of(kind, &p, None)?;
    read_barrier(&state, &q).await?;
    let found = state.raft.read(|m| m.get(&key).map(|r| r.to_data(false)));
    found.map(|v| (StatusCode::OK, v)).ok_or_else(|| {
        ApiError::not_found(format!(
            "{} {} not found",
            kind.title(),
            shoal_model::check::describe_key(&key)
        ))
    })
}

async fn delete(
    state: AppState,
    kind: Kind,
    p: HashMap<String, String>,
    q: HashMap<String, String>,
) -> ApiResult {
    check_owner(&state, &q)?;
    let key = key_of(kind, &p, None)?;
    let r = commit(&state, Command::Delete { key }).await?;
    Ok((StatusCode::OK, r.to_data(true)))
}

fn parse_limit(q: &HashMap<String, String>, max: usize) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}, got {s:?}"
            ))),
        },
    }
}

fn parse_token(q: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match q.get("nextToken") {
        None => Ok(None),
        Some(t) => hex::decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("nextToken is not a token this API returned")),
    }
}

async fn list(
    state: AppState,
    kind: Kind,
    p: HashMap<String, String>,
    q: HashMap<String, String>,
) -> ApiResult {
    check_owner(&state, &q)?;
    let limit = parse_limit(&q, 100)?;
    let after = parse_token(&q)?;
    read_barrier(&state, &q).await?;
    let mesh = mesh_param(kind, &p);
    let parent = p.get("parent").cloned().unwrap_or_default();
    let result = state.raft.read(|m| {
        if kind != Kind::Mesh && m.get(&ResourceKey::mesh(&mesh)).is_none() {
            return Err(ApiError::not_found(format!("Mesh {mesh} not found")));
        }
        if let Some(pk) = kind.parent() {
            if m.get(&ResourceKey::in_mesh(&mesh, pk, &parent)).is_none() {
                return Err(ApiError::not_found(format!(
                    "{} {parent} not found in mesh {mesh}",
                    pk.title()
                )));
            }
        }
        let (page, next) = m.page(kind, &mesh, &parent, after.as_deref(), limit);
        let items: Vec<Value> = page.into_iter().map(|r| r.to_ref()).collect();
        Ok((items, next))
    })?;
    let mut body = json!({ kind.list_member(): result.0 });
    if let Some(next) = result.1 {
        body["nextToken"] = Value::String(hex::encode(next));
    }
    Ok((StatusCode::OK, body))
}

fn arn_key(q: &HashMap<String, String>) -> Result<ResourceKey, ApiError> {
    let arn = q
        .get("resourceArn")
        .ok_or_else(|| ApiError::bad_request("resourceArn is required"))?;
    ResourceKey::from_arn(arn)
        .ok_or_else(|| ApiError::bad_request(format!("{arn:?} is not an App Mesh resource ARN")))
}

async fn tag(state: AppState, q: HashMap<String, String>, body: Bytes) -> ApiResult {
    let key = arn_key(&q)?;
    let input: shoal_model::api::TagResourceInput = request::json(&body)?;
    request::tag_list(&input.tags)?;
    commit(
        &state,
        Command::Tag {
            key,
            tags: input.tags,
        },
    )
    .await?;
    Ok((StatusCode::OK, json!({})))
}

async fn untag(state: AppState, q: HashMap<String, String>, body: Bytes) -> ApiResult {
    let key = arn_key(&q)?;
    let input: shoal_model::api::UntagResourceInput = request::json(&body)?;
    if input.tag_keys.len() > 50 {
        return Err(ApiError::bad_request("tagKeys: must have at most 50 items"));
    }
    commit(
        &state,
        Command::Untag {
            key,
            keys: input.tag_keys,
        },
    )
    .await?;
    Ok((StatusCode::OK, json!({})))
}

async fn list_tags(state: AppState, q: HashMap<String, String>) -> ApiResult {
    let key = arn_key(&q)?;
    let limit = parse_limit(&q, 50)?;
    let start: usize = match q.get("nextToken") {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request("nextToken is not a token this API returned"))?,
    };
    read_barrier(&state, &q).await?;
    let tags = state
        .raft
        .read(|m| m.get(&key).map(|r| r.tags.clone()))
        .ok_or_else(|| ApiError::not_found(format!("{} {} not found", key.kind.title(), key)))?;
    let page: Vec<_> = tags.iter().skip(start).take(limit).collect();
    let mut body = json!({ "tags": page });
    if start + limit < tags.len() {
        body["nextToken"] = Value::String((start + limit).to_string());
    }
    Ok((StatusCode::OK, body))
}

/// What an App Mesh operation reads from its request: the path parameters, the query and the
/// body (empty for the operations without one).
struct Call {
    params: HashMap<String, String>,
    query: HashMap<String, String>,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Call {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let body = Bytes::from_request(axum::extract::Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Call {
            params,
            query,
            body,
        })
    }
}

/// The operations of the API: five per kind, and the three on tags (which name their
/// resource by ARN, whatever its kind).
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    List,
    Describe,
    Update,
    Delete,
    Tag,
    Untag,
    ListTags,
}

impl Op {
    /// The operation's name in the botocore model, for metrics and logs
    /// (`CreateVirtualNode`, `TagResource`).
    fn name(self, kind: Kind) -> String {
        let verb = match self {
            Op::Create => "Create",
            Op::List => "List",
            Op::Describe => "Describe",
            Op::Update => "Update",
            Op::Delete => "Delete",
            Op::Tag => return "TagResource".into(),
            Op::Untag => return "UntagResource".into(),
            Op::ListTags => return "ListTagsForResource".into(),
        };
        op_name(verb, kind)
    }
}

/// The handler of `op` on `kind`: runs it, then answers, logs and counts it under its
/// operation name (`CreateVirtualNode`).
fn handler(kind: Kind, op: Op) -> MethodRouter<AppState> {
    let name = op.name(kind);
    let run = move |State(s): State<AppState>, c: Call| async move {
        let t = Instant::now();
        let r = match op {
            Op::Create => create(s.clone(), kind, c.params, c.query, c.body).await,
            Op::List => list(s.clone(), kind, c.params, c.query).await,
            Op::Describe => describe(s.clone(), kind, c.params, c.query).await,
            Op::Update => update(s.clone(), kind, c.params, c.query, c.body).await,
            Op::Delete => delete(s.clone(), kind, c.params, c.query).await,
            Op::Tag => tag(s.clone(), c.query, c.body).await,
            Op::Untag => untag(s.clone(), c.query, c.body).await,
            Op::ListTags => list_tags(s.clone(), c.query).await,
        };
        respond(&s, &name, t, r)
    };
    match op {
        Op::Create | Op::Update | Op::Tag | Op::Untag => put(run),
        Op::List | Op::Describe | Op::ListTags => get(run),
        Op::Delete => axum::routing::delete(run),
    }
}

/// Adds the routes of one kind: `collection` (create, list) and `collection/{name}`
/// (describe, update, delete).
fn kind_routes(router: Router<AppState>, kind: Kind, collection: &str) -> Router<AppState> {
    router
        .route(
            collection,
            handler(kind, Op::Create).merge(handler(kind, Op::List)),
        )
        .route(
            &format!("{collection}/{{name}}"),
            handler(kind, Op::Describe)
                .merge(handler(kind, Op::Update))
                .merge(handler(kind, Op::Delete)),
        )
}

/// The App Mesh API routes.
pub fn routes() -> Router<AppState> {
    let base = "/v20190125";
    // The collection URI of each kind, as the botocore model gives them.
    let collections = [
        (Kind::Mesh, "meshes"),
        (Kind::VirtualNode, "meshes/{mesh}/virtualNodes"),
        (Kind::VirtualRouter, "meshes/{mesh}/virtualRouters"),
        (Kind::VirtualService, "meshes/{mesh}/virtualServices"),
        (Kind::VirtualGateway, "meshes/{mesh}/virtualGateways"),
        (Kind::Route, "meshes/{mesh}/virtualRouter/{parent}/routes"),
        (
            Kind::GatewayRoute,
            "meshes/{mesh}/virtualGateway/{parent}/gatewayRoutes",
        ),
    ];
    let mut r = Router::new();
    for (kind, path) in collections {
        r = kind_routes(r, kind, &format!("{base}/{path}"));
    }
    // Tag operations name their resource by ARN: the kind given here is unused.
    r.route(&format!("{base}/tag"), handler(Kind::Mesh, Op::Tag))
        .route(&format!("{base}/untag"), handler(Kind::Mesh, Op::Untag))
        .route(&format!("{base}/tags"), handler(Kind::Mesh, Op::ListTags))
}
