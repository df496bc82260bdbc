//! The seven App Mesh resource kinds, their keys, metadata and ARNs, and the conversion of a
//! stored resource into the API's `…Data` and `…Ref` shapes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api;

/// The kinds of resource, in dependency order: a kind may only refer to kinds before it,
/// except that virtual nodes' backends name virtual services (which may not exist yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A service mesh: the namespace every other kind lives in.
    Mesh,
    /// A logical pointer to a task group (an Envoy sidecar and its app).
    VirtualNode,
    /// Routes traffic for virtual services to virtual nodes.
    VirtualRouter,
    /// A rule of a virtual router.
    Route,
    /// An abstraction of a real service, provided by a node or a router.
    VirtualService,
    /// An ingress Envoy for traffic from outside the mesh.
    VirtualGateway,
    /// A rule of a virtual gateway.
    GatewayRoute,
}

impl Kind {
    /// Every kind, in dependency order (the order `shoal apply` creates them in).
    pub const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::VirtualNode,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualService,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
    ];

    /// The kind's segment in an ARN (`virtualNode`), also its name in node ids.
    pub fn arn_segment(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualService => "virtualService",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
        }
    }

    /// The words used in error messages ("Virtual node").
    pub fn title(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualNode => "Virtual node",
            Kind::VirtualRouter => "Virtual router",
            Kind::Route => "Route",
            Kind::VirtualService => "Virtual service",
            Kind::VirtualGateway => "Virtual gateway",
            Kind::GatewayRoute => "Gateway route",
        }
    }

    /// The member that names a resource of this kind in request and response bodies
    /// (`virtualNodeName`).
    pub fn name_member(self) -> &'static str {
        match self {
            Kind::Mesh => "meshName",
            Kind::VirtualNode => "virtualNodeName",
            Kind::VirtualRouter => "virtualRouterName",
            Kind::Route => "routeName",
            Kind::VirtualService => "virtualServiceName",
            Kind::VirtualGateway => "virtualGatewayName",
            Kind::GatewayRoute => "gatewayRouteName",
        }
    }

    /// The member holding the items of a `List…` answer (`virtualNodes`).
    pub fn list_member(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::VirtualNode => "virtualNodes",
            Kind::VirtualRouter => "virtualRouters",
            Kind::Route => "routes",
            Kind::VirtualService => "virtualServices",
            Kind::VirtualGateway => "virtualGateways",
            Kind::GatewayRoute => "gatewayRoutes",
        }
    }

    /// The kind that a resource of this kind lives under, besides its mesh.
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Route => Some(Kind::VirtualRouter),
            Kind::GatewayRoute => Some(Kind::VirtualGateway),
            _ => None,
        }
    }

    /// Parses the names users type (`virtualnode`, `vn`, `virtual-node`, `routes`, …).
    pub fn parse(s: &str) -> Option<Kind> {
        let k = s.to_ascii_lowercase().replace(['-', '_'], "");
        let singular = |k: &str| -> Option<Kind> {
            Some(match k {
                "mesh" => Kind::Mesh,
                "virtualnode" | "vn" | "node" => Kind::VirtualNode,
                "virtualrouter" | "vr" | "router" => Kind::VirtualRouter,
                "route" => Kind::Route,
                "virtualservice" | "vs" | "service" => Kind::VirtualService,
                "virtualgateway" | "vg" | "gateway" => Kind::VirtualGateway,
                "gatewayroute" | "gr" => Kind::GatewayRoute,
                _ => return None,
            })
        };
        singular(&k)
            .or_else(|| k.strip_suffix("es").and_then(singular))
            .or_else(|| k.strip_suffix('s').and_then(singular))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.arn_segment())
    }
}

/// Identifies one resource. Ordering groups a mesh's resources together, by kind, then parent,
/// then name, which is the order the API lists them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The mesh (for a mesh, its own name).
    pub mesh: String,
    /// The kind.
    pub kind: Kind,
    /// The router of a route or the gateway of a gateway route; empty otherwise.
    pub parent: String,
    /// The resource's own name.
    pub name: String,
}

impl ResourceKey {
    /// The key of a mesh.
    pub fn mesh(name: &str) -> Self {
        ResourceKey {
            mesh: name.into(),
            kind: Kind::Mesh,
            parent: String::new(),
            name: name.into(),
        }
    }

    /// The key of a resource that lives directly in a mesh.
    pub fn in_mesh(mesh: &str, kind: Kind, name: &str) -> Self {
        ResourceKey {
            mesh: mesh.into(),
            kind,
            parent: String::new(),
            name: name.into(),
        }
    }

    /// The key of a route or gateway route.
    pub fn child(mesh: &str, kind: Kind, parent: &str, name: &str) -> Self {
        ResourceKey {
            mesh: mesh.into(),
            kind,
            parent: parent.into(),
            name: name.into(),
        }
    }

    /// The key of the router or gateway this resource lives under, if any.
    pub fn parent_key(&self) -> Option<ResourceKey> {
        self.kind
            .parent()
            .map(|k| ResourceKey::in_mesh(&self.mesh, k, &self.parent))
    }

    /// The resource path inside an ARN: `mesh/m/virtualRouter/r/route/x`.
    pub fn arn_resource(&self) -> String {
        let mut s = format!("mesh/{}", self.mesh);
        if let Some(p) = self.kind.parent() {
            s.push_str(&format!("/{}/{}", p.arn_segment(), self.parent));
        }
        if self.kind != Kind::Mesh {
            s.push_str(&format!("/{}/{}", self.kind.arn_segment(), self.name));
        }
        s
    }

    /// Parses the resource part of an ARN (`arn:aws:appmesh:REGION:ACCOUNT:mesh/…`).
    pub fn from_arn(arn: &str) -> Option<ResourceKey> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(_partition), Some("appmesh"), Some(_), Some(_), Some(res)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let segs: Vec<&str> = res.split('/').collect();
        let kind_of = |s: &str| Kind::ALL.into_iter().find(|k| k.arn_segment() == s);
        match segs.as_slice() {
            ["mesh", m] => Some(ResourceKey::mesh(m)),
            ["mesh", m, k, n] => {
                let kind = kind_of(k)?;
                (kind.parent().is_none() && kind != Kind::Mesh)
                    .then(|| ResourceKey::in_mesh(m, kind, n))
            }
            ["mesh", m, pk, p, k, n] => {
                let kind = kind_of(k)?;
                (kind.parent() == kind_of(pk)).then(|| ResourceKey::child(m, kind, p, n))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn_resource())
    }
}

/// A resource's specification, typed by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Spec {
    /// A mesh's spec (every member optional).
    Mesh(api::MeshSpec),
    /// A virtual node's spec.
    VirtualNode(api::VirtualNodeSpec),
    /// A virtual router's spec.
    VirtualRouter(api::VirtualRouterSpec),
    /// A route's spec.
    Route(api::RouteSpec),
    /// A virtual service's spec.
    VirtualService(api::VirtualServiceSpec),
    /// A virtual gateway's spec.
    VirtualGateway(api::VirtualGatewaySpec),
    /// A gateway route's spec.
    GatewayRoute(api::GatewayRouteSpec),
}

impl Spec {
    /// The kind this spec belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Mesh(_) => Kind::Mesh,
            Spec::VirtualNode(_) => Kind::VirtualNode,
            Spec::VirtualRouter(_) => Kind::VirtualRouter,
            Spec::Route(_) => Kind::Route,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::VirtualGateway(_) => Kind::VirtualGateway,
            Spec::GatewayRoute(_) => Kind::GatewayRoute,
        }
    }

    /// The spec as the API's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Spec::Mesh(s) => serde_json::to_value(s),
            Spec::VirtualNode(s) => serde_json::to_value(s),
            Spec::VirtualRouter(s) => serde_json::to_value(s),
            Spec::Route(s) => serde_json::to_value(s),
            Spec::VirtualService(s) => serde_json::to_value(s),
            Spec::VirtualGateway(s) => serde_json::to_value(s),
            Spec::GatewayRoute(s) => serde_json::to_value(s),
        };
        v.expect("specs serialize")
    }
}

/// Metadata that the control plane assigns, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The resource's ARN.
    pub arn: String,
    /// Unique id, fixed at creation.
    pub uid: String,
    /// Starts at 1 and grows by one on every update.
    pub version: i64,
    /// Seconds since the epoch.
    pub created_at: f64,
    /// Seconds since the epoch.
    pub last_updated_at: f64,
    /// Account that owns the mesh.
    pub mesh_owner: String,
    /// Account that owns the resource.
    pub resource_owner: String,
}

/// One stored resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Which resource.
    pub key: ResourceKey,
    /// What the user asked for.
    pub spec: Spec,
    /// What the control plane assigned.
    pub meta: Metadata,
    /// User tags, in the order they were given.
    pub tags: Vec<api::TagRef>,
}

impl Resource {
    fn api_metadata(&self) -> api::ResourceMetadata {
        let m = &self.meta;
        api::ResourceMetadata {
            arn: m.arn.clone(),
            created_at: m.created_at,
            last_updated_at: m.last_updated_at,
            mesh_owner: m.mesh_owner.clone(),
            resource_owner: m.resource_owner.clone(),
            uid: m.uid.clone(),
            version: m.version,
        }
    }

    /// The `…Data` shape that describe/create/update/delete return, as JSON. `status` is
    /// `ACTIVE` for stored resources and `DELETED` for the answer to a delete.
    pub fn to_data(&self, deleted: bool) -> serde_json::Value {
        let k = &self.key;
        let metadata = self.api_metadata();
        let status = if deleted { "DELETED" } else { "ACTIVE" };
        // The status shapes differ only in name (and in whether `status` is optional), so
        // build them from their JSON.
        macro_rules! status {
            ($t:ident) => {
                serde_json::from_value::<api::$t>(serde_json::json!({ "status": status }))
                    .expect("status shape")
            };
        }
        let v = match &self.spec {
            Spec::Mesh(spec) => serde_json::to_value(api::MeshData {
                mesh_name: k.name.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(MeshStatus),
            }),
            Spec::VirtualNode(spec) => serde_json::to_value(api::VirtualNodeData {
                mesh_name: k.mesh.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(VirtualNodeStatus),
                virtual_node_name: k.name.clone(),
            }),
            Spec::VirtualRouter(spec) => serde_json::to_value(api::VirtualRouterData {
                mesh_name: k.mesh.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(VirtualRouterStatus),
                virtual_router_name: k.name.clone(),
            }),
            Spec::Route(spec) => serde_json::to_value(api::RouteData {
                mesh_name: k.mesh.clone(),
                metadata,
                route_name: k.name.clone(),
                spec: spec.clone(),
                status: status!(RouteStatus),
                virtual_router_name: k.parent.clone(),
            }),
            Spec::VirtualService(spec) => serde_json::to_value(api::VirtualServiceData {
                mesh_name: k.mesh.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(VirtualServiceStatus),
                virtual_service_name: k.name.clone(),
            }),
            Spec::VirtualGateway(spec) => serde_json::to_value(api::VirtualGatewayData {
                mesh_name: k.mesh.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(VirtualGatewayStatus),
                virtual_gateway_name: k.name.clone(),
            }),
            Spec::GatewayRoute(spec) => serde_json::to_value(api::GatewayRouteData {
                gateway_route_name: k.name.clone(),
                mesh_name: k.mesh.clone(),
                metadata,
                spec: spec.clone(),
                status: status!(GatewayRouteStatus),
                virtual_gateway_name: k.parent.clone(),
            }),
        };
        v.expect("resource data serializes")
    }

    /// The `…Ref` shape that list operations return, as JSON.
    pub fn to_ref(&self) -> serde_json::Value {
        let k = &self.key;
        let m = &self.meta;
        let mut v = serde_json::json!({
            "arn": m.arn,
            "createdAt": m.created_at,
            "lastUpdatedAt": m.last_updated_at,
            "meshName": k.mesh,
            "meshOwner": m.mesh_owner,
            "resourceOwner": m.resource_owner,
            "version": m.version,
        });
        let obj = v.as_object_mut().expect("object");
        let name_member = (k.kind != Kind::Mesh).then(|| k.kind.name_member());
        if let Some(n) = name_member {
            obj.insert(n.into(), k.name.clone().into());
        }
        match k.kind {
            Kind::Route => {
                obj.insert("virtualRouterName".into(), k.parent.clone().into());
            }
            Kind::GatewayRoute => {
                obj.insert("virtualGatewayName".into(), k.parent.clone().into());
            }
            _ => {}
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_round_trip_for_every_kind() {
        let keys = [
            ResourceKey::mesh("m"),
            ResourceKey::in_mesh("m", Kind::VirtualNode, "vn"),
            ResourceKey::in_mesh("m", Kind::VirtualRouter, "vr"),
            ResourceKey::child("m", Kind::Route, "vr", "r"),
            ResourceKey::in_mesh("m", Kind::VirtualService, "svc.local"),
            ResourceKey::in_mesh("m", Kind::VirtualGateway, "gw"),
            ResourceKey::child("m", Kind::GatewayRoute, "gw", "gr"),
        ];
        for k in keys {
            let arn = format!(
                "arn:aws:appmesh:us-east-1:000000000000:{}",
                k.arn_resource()
            );
            assert_eq!(ResourceKey::from_arn(&arn), Some(k.clone()), "{arn}");
        }
        assert_eq!(
            ResourceKey::child("m", Kind::Route, "vr", "r").arn_resource(),
            "mesh/m/virtualRouter/vr/route/r"
        );
    }

    #[test]
    fn malformed_arns_are_rejected() {
        for arn in [
            "",
            "arn:aws:s3:::bucket",
            "arn:aws:appmesh:r:a:mesh",
            "arn:aws:appmesh:r:a:mesh/m/route/x",
            "arn:aws:appmesh:r:a:mesh/m/virtualNode/a/route/x",
            "arn:aws:appmesh:r:a:mesh/m/mesh/x",
        ] {
            assert_eq!(ResourceKey::from_arn(arn), None, "{arn}");
        }
    }

    #[test]
    fn kind_names_parse() {
        assert_eq!(Kind::parse("virtual-nodes"), Some(Kind::VirtualNode));
        assert_eq!(Kind::parse("meshes"), Some(Kind::Mesh));
        assert_eq!(Kind::parse("GatewayRoute"), Some(Kind::GatewayRoute));
        assert_eq!(Kind::parse("vs"), Some(Kind::VirtualService));
        assert_eq!(Kind::parse("bogus"), None);
    }
}
