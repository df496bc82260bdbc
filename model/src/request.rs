//! Parsing of the App Mesh request bodies that carry a spec: the JSON entry points of the
//! API (and of `shoal apply`). Pure and total: any byte string gives a request or an
//! `ApiError`, never a panic (fuzzed in the tests below).

use serde::de::DeserializeOwned;

use crate::api;
use crate::check;
use crate::error::ApiError;
use crate::resource::{Kind, Spec};

/// A parsed create request.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The new resource's name (from the body's `…Name` member).
    pub name: String,
    /// Its spec, already checked with [`check::spec`].
    pub spec: Spec,
    /// Tags to set at creation.
    pub tags: Vec<api::TagRef>,
    /// Idempotency token.
    pub client_token: Option<String>,
}

/// A parsed update request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The new spec, already checked with [`check::spec`].
    pub spec: Spec,
    /// Idempotency token.
    pub client_token: Option<String>,
}

/// Deserializes JSON into `T`, naming the path of the offending member on error. An empty
/// body is read as `{}`, as App Mesh does for operations whose members are all optional.
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("Invalid request body: {inner}"))
        } else {
            ApiError::bad_request(format!("Invalid request body at {path}: {inner}"))
        }
    })?;
    Ok(value)
}

fn empty_mesh_spec() -> api::MeshSpec {
    api::MeshSpec {
        egress_filter: None,
        service_discovery: None,
    }
}

/// Parses the body of `Create<Kind>`, checks the name and the spec.
pub fn parse_create(kind: Kind, body: &[u8]) -> Result<CreateRequest, ApiError> {
    macro_rules! take {
        ($input:ident, $name:ident, $variant:ident) => {{
            let b: api::$input = json(body)?;
            (b.$name, Spec::$variant(b.spec), b.tags, b.client_token)
        }};
    }
    let (name, spec, tags, client_token) = match kind {
        Kind::Mesh => {
            let b: api::CreateMeshInput = json(body)?;
            let spec = Spec::Mesh(b.spec.unwrap_or_else(empty_mesh_spec));
            (b.mesh_name, spec, b.tags, b.client_token)
        }
        Kind::VirtualNode => take!(CreateVirtualNodeInput, virtual_node_name, VirtualNode),
        Kind::VirtualRouter => take!(CreateVirtualRouterInput, virtual_router_name, VirtualRouter),
        Kind::Route => take!(CreateRouteInput, route_name, Route),
        Kind::VirtualService => take!(
            CreateVirtualServiceInput,
            virtual_service_name,
            VirtualService
        ),
        Kind::VirtualGateway => take!(
            CreateVirtualGatewayInput,
            virtual_gateway_name,
            VirtualGateway
        ),
        Kind::GatewayRoute => take!(CreateGatewayRouteInput, gateway_route_name, GatewayRoute),
    };
    check::name(kind, &name)?;
    let tags = tags.unwrap_or_default();
    tag_list(&tags)?;
    check::into_result(check::spec(&spec))?;
    Ok(CreateRequest {
        name,
        spec,
        tags,
        client_token,
    })
}

/// Parses the body of `Update<Kind>` and checks the spec.
pub fn parse_update(kind: Kind, body: &[u8]) -> Result<UpdateRequest, ApiError> {
    macro_rules! take {
        ($input:ident, $variant:ident) => {{
            let b: api::$input = json(body)?;
            (Spec::$variant(b.spec), b.client_token)
        }};
    }
    let (spec, client_token) = match kind {
        Kind::Mesh => {
            let b: api::UpdateMeshInput = json(body)?;
            (
                Spec::Mesh(b.spec.unwrap_or_else(empty_mesh_spec)),
                b.client_token,
            )
        }
        Kind::VirtualNode => take!(UpdateVirtualNodeInput, VirtualNode),
        Kind::VirtualRouter => take!(UpdateVirtualRouterInput, VirtualRouter),
        Kind::Route => take!(UpdateRouteInput, Route),
        Kind::VirtualService => take!(UpdateVirtualServiceInput, VirtualService),
        Kind::VirtualGateway => take!(UpdateVirtualGatewayInput, VirtualGateway),
        Kind::GatewayRoute => take!(UpdateGatewayRouteInput, GatewayRoute),
    };
    check::into_result(check::spec(&spec))?;
    Ok(UpdateRequest { spec, client_token })
}

/// Checks a tag list against the model's `TagRef` constraints.
pub fn tag_list(tags: &[api::TagRef]) -> Result<(), ApiError> {
    use crate::validate::Validator;
    let mut v = Validator::at("tags");
    v.list("", tags, Some(0), Some(50), |v, t| v.nested("", t));
    check::into_result(v.into_errors())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn empty_body_is_an_empty_object() {
        let e = parse_create(Kind::Mesh, b"").unwrap_err();
        assert!(
            e.message.contains("missing field `meshName`"),
            "{}",
            e.message
        );
        let r = parse_update(Kind::Mesh, b"  ").unwrap();
        assert_eq!(r.spec, Spec::Mesh(empty_mesh_spec()));
    }

    #[test]
    fn errors_name_the_member_path() {
        let body = br#"{"virtualNodeName":"a","spec":{"listeners":[{"portMapping":{"port":"x","protocol":"http"}}]}}"#;
        let e = parse_create(Kind::VirtualNode, body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.contains("spec.listeners[0].portMapping.port"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_members_are_rejected_at_any_depth() {
        let top = br#"{"meshName":"m","bogus":1}"#;
        assert!(parse_create(Kind::Mesh, top)
            .unwrap_err()
            .message
            .contains("unknown field `bogus`"));
        let deep = br#"{"meshName":"m","spec":{"egressFilter":{"type":"DROP_ALL","extra":true}}}"#;
        let e = parse_create(Kind::Mesh, deep).unwrap_err();
        assert!(
            e.message.contains("spec.egressFilter") && e.message.contains("extra"),
            "{}",
            e.message
        );
    }

    proptest! {
        // Any bytes: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), k in 0usize..7) {
            let kind = Kind::ALL[k];
            let _ = parse_create(kind, &bytes);
            let _ = parse_update(kind, &bytes);
        }

        // JSON-shaped garbage goes deeper into the deserializers than random bytes do.
        #[test]
        fn json_shaped_input_never_panics(s in r#"\{("(spec|meshName|virtualNodeName|listeners|portMapping|port|protocol|httpRoute|match|prefix|action|weightedTargets|weight|virtualNode)":(\{|\[|"[a-z/]{0,4}"|-?[0-9]{1,12}|null|true|\]|\}|,)){0,12}"#, k in 0usize..7) {
            let kind = Kind::ALL[k];
            let _ = parse_create(kind, s.as_bytes());
            let _ = parse_update(kind, s.as_bytes());
        }
    }
}
