//! The AWS CLI against `shoal dev`: every kind through create, describe, update, list, tag and
//! delete; the API's error cases; and durability of acknowledged writes across `kill -9`.

use serde_json::{json, Value};
use shoal_e2e::{response_key, Aws, DevConfig, DevServer, ResourceId, ACCOUNT};

const MESH: &str = "shop";

fn spec_arg(spec: &Value) -> [String; 2] {
    ["--spec".to_string(), spec.to_string()]
}

/// Creates `id` with `spec` (plus `extra` options), checks the answer and a describe, and
/// returns the described resource.
fn create(aws: &Aws, id: &ResourceId, spec: &Value, extra: &[&str]) -> Value {
    let mut args: Vec<String> = spec_arg(spec).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = id.call(aws, "create", &args);
    assert!(
        out.success(),
        "create-{} {:?} failed:\n{}",
        id.noun,
        id.names,
        out.stderr
    );
    let created = &out.json[response_key(id.noun)];
    check_resource(created, id, spec, 1);
    let described = id.describe(aws);
    assert_eq!(
        &described, created,
        "describe-{} does not return what create returned",
        id.noun
    );
    described
}

/// Updates `id` to `spec`, checks that the version went from `before`'s to the next and that
/// uid and createdAt stayed, and returns the described resource.
fn update(aws: &Aws, id: &ResourceId, spec: &Value, before: &Value) -> Value {
    assert_ne!(
        &before["spec"], spec,
        "test bug: update of {id:?} does not change the spec"
    );
    let out = id.call(aws, "update", &spec_arg(spec));
    assert!(
        out.success(),
        "update-{} {:?} failed:\n{}",
        id.noun,
        id.names,
        out.stderr
    );
    let version = before["metadata"]["version"].as_i64().expect("version") + 1;
    let updated = &out.json[response_key(id.noun)];
    check_resource(updated, id, spec, version);
    let described = id.describe(aws);
    assert_eq!(
        &described, updated,
        "describe-{} does not return what update returned",
        id.noun
    );
    for k in ["uid", "createdAt", "arn"] {
        assert_eq!(
            described["metadata"][k], before["metadata"][k],
            "update-{} changed metadata.{k}",
            id.noun
        );
    }
    let (created, last) = (
        described["metadata"]["createdAt"]
            .as_f64()
            .expect("createdAt"),
        described["metadata"]["lastUpdatedAt"]
            .as_f64()
            .expect("lastUpdatedAt"),
    );
    assert!(
        last >= created,
        "lastUpdatedAt {last} < createdAt {created}"
    );
    described
}

/// Checks one resource object: names, spec exactly as sent, ARN, owner, version, ACTIVE.
fn check_resource(r: &Value, id: &ResourceId, spec: &Value, version: i64) {
    for ((_, member), name) in shoal_e2e::identity_params(id.noun).iter().zip(&id.names) {
        assert_eq!(r[*member], json!(name), "{member} of {r}");
    }
    assert_eq!(
        &r["spec"], spec,
        "{} spec does not come back as sent",
        id.noun
    );
    let md = &r["metadata"];
    assert_eq!(md["arn"], json!(id.arn()), "arn of {r}");
    assert!(
        md["arn"]
            .as_str()
            .unwrap()
            .starts_with(&format!("arn:aws:appmesh:us-east-1:{ACCOUNT}:mesh/{MESH}")),
        "arn format"
    );
    assert_eq!(md["version"], json!(version), "version of {r}");
    assert_eq!(md["meshOwner"], json!(ACCOUNT));
    assert_eq!(md["resourceOwner"], json!(ACCOUNT));
    let uid = md["uid"].as_str().unwrap_or_default();
    assert_eq!(uid.len(), 36, "uid {uid:?} is not a UUID");
    assert!(md["createdAt"].as_f64().is_some(), "createdAt of {r}");
    assert!(
        md["lastUpdatedAt"].as_f64().is_some(),
        "lastUpdatedAt of {r}"
    );
    if version == 1 {
        assert_eq!(md["createdAt"], md["lastUpdatedAt"], "a new resource: {md}");
    }
    assert_eq!(r["status"]["status"], json!("ACTIVE"), "status of {r}");
}

/// Deletes `id` and checks that the answer is the resource with status DELETED and that it is
/// gone afterwards.
fn delete(aws: &Aws, id: &ResourceId) {
    let out = id.call::<&str>(aws, "delete", &[]);
    assert!(
        out.success(),
        "delete-{} {:?} failed:\n{}",
        id.noun,
        id.names,
        out.stderr
    );
    let r = &out.json[response_key(id.noun)];
    assert_eq!(r["status"]["status"], json!("DELETED"), "delete answer {r}");
    assert_eq!(r["metadata"]["arn"], json!(id.arn()));
    let mut args = vec![format!("describe-{}", id.noun)];
    args.extend(id.cli_args());
    aws.fails_with(&args, "NotFoundException");
}

/// The names in a list answer, from the members named `name_member`.
fn listed(aws: &Aws, args: &[&str], list_member: &str, name_member: &str) -> Vec<String> {
    let v = aws.ok(args);
    let mut names: Vec<String> = v[list_member]
        .as_array()
        .unwrap_or_else(|| panic!("{args:?}: no {list_member} array in {v}"))
        .iter()
        .map(|e| e[name_member].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

fn node_spec(host: &str, port: u16) -> Value {
    json!({
        "listeners": [{
            "portMapping": {"port": port, "protocol": "http"},
            "healthCheck": {
                "protocol": "http", "path": "/ping", "healthyThreshold": 2,
                "unhealthyThreshold": 3, "timeoutMillis": 2000, "intervalMillis": 5000
            }
        }],
        "serviceDiscovery": {"dns": {"hostname": host}}
    })
}

fn route_spec(targets: &[(&str, i64)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(n, w)| json!({"virtualNode": n, "weight": w}))
        .collect();
    json!({"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": targets}}})
}

struct Ids {
    mesh: ResourceId,
    v1: ResourceId,
    v2: ResourceId,
    front: ResourceId,
    router: ResourceId,
    route: ResourceId,
    service: ResourceId,
    gateway: ResourceId,
    groute: ResourceId,
}

fn ids() -> Ids {
    Ids {
        mesh: ResourceId::new("mesh", &[MESH]),
        v1: ResourceId::new("virtual-node", &[MESH, "orders-v1"]),
        v2: ResourceId::new("virtual-node", &[MESH, "orders-v2"]),
        front: ResourceId::new("virtual-node", &[MESH, "frontend"]),
        router: ResourceId::new("virtual-router", &[MESH, "orders-router"]),
        route: ResourceId::new("route", &[MESH, "orders-router", "orders-route"]),
        service: ResourceId::new("virtual-service", &[MESH, "orders.shop.local"]),
        gateway: ResourceId::new("virtual-gateway", &[MESH, "ingress-gw"]),
        groute: ResourceId::new("gateway-route", &[MESH, "ingress-gw", "orders-gr"]),
    }
}

fn router_spec(port: u16) -> Value {
    json!({"listeners": [{"portMapping": {"port": port, "protocol": "http"}}]})
}

fn service_spec() -> Value {
    json!({"provider": {"virtualRouter": {"virtualRouterName": "orders-router"}}})
}

fn gateway_spec() -> Value {
    json!({"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]})
}

fn groute_spec(prefix: &str) -> Value {
    json!({"httpRoute": {
        "match": {"prefix": prefix},
        "action": {"target": {"virtualService": {"virtualServiceName": "orders.shop.local"}}}
    }})
}

fn tags_of(aws: &Aws, arn: &str) -> Vec<(String, String)> {
    let v = aws.ok(&["list-tags-for-resource", "--resource-arn", arn]);
    let mut t: Vec<(String, String)> = v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array: {v}"))
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().to_string(),
                t["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    t.sort();
    t
}

/// Every kind through create, describe, update, list, tag and delete, and the API's errors, on
/// `shoal dev --no-example`.
#[test]
fn crud_lists_tags_errors_and_deletes() {
    let root = tempfile::Builder::new()
        .prefix("shoal-e2e-awscli-")
        .tempdir()
        .unwrap();
    let server = DevServer::start(&DevConfig::in_dir(root.path()));
    let aws = Aws::new(&server.endpoint());
    let ids = ids();

    // An empty store answers an empty list.
    assert_eq!(aws.ok(&["list-meshes"]), json!({"meshes": []}));

    // ---- create and describe, all seven kinds
    let mesh_spec = json!({"egressFilter": {"type": "ALLOW_ALL"}});
    let mesh = create(
        &aws,
        &ids.mesh,
        &mesh_spec,
        &["--tags", "key=team,value=payments", "key=env,value=test"],
    );
    let v1 = create(&aws, &ids.v1, &node_spec("orders-v1.shop.local", 8080), &[]);
    let v2 = create(&aws, &ids.v2, &node_spec("orders-v2.shop.local", 8080), &[]);
    let front = create(
        &aws,
        &ids.front,
        &node_spec("frontend.shop.local", 8080),
        &[],
    );
    let router = create(&aws, &ids.router, &router_spec(8080), &[]);
    let route = create(
        &aws,
        &ids.route,
        &route_spec(&[("orders-v1", 90), ("orders-v2", 10)]),
        &[],
    );
    let service = create(&aws, &ids.service, &service_spec(), &[]);
    let gateway = create(&aws, &ids.gateway, &gateway_spec(), &[]);
    let groute = create(&aws, &ids.groute, &groute_spec("/orders"), &[]);

    // ---- update each: version 2, new spec
    update(
        &aws,
        &ids.mesh,
        &json!({"egressFilter": {"type": "DROP_ALL"}}),
        &mesh,
    );
    let mut v1_spec = node_spec("orders-v1.shop.local", 8080);
    v1_spec["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"portMapping": {"port": 8443, "protocol": "http2"}}));
    update(&aws, &ids.v1, &v1_spec, &v1);
    let mut v2_spec = node_spec("orders-v2.shop.local", 8080);
    v2_spec["listeners"][0]["timeout"] =
        json!({"http": {"perRequest": {"unit": "s", "value": 20}}});
    update(&aws, &ids.v2, &v2_spec, &v2);
    let mut front_spec = node_spec("frontend.shop.local", 8080);
    front_spec["backends"] =
        json!([{"virtualService": {"virtualServiceName": "orders.shop.local"}}]);
    let front2 = update(&aws, &ids.front, &front_spec, &front);
    update(&aws, &ids.router, &router_spec(8081), &router);
    let route2 = update(
        &aws,
        &ids.route,
        &route_spec(&[("orders-v1", 50), ("orders-v2", 50)]),
        &route,
    );
    assert_eq!(
        route2["spec"]["httpRoute"]["action"]["weightedTargets"],
        json!([{"virtualNode": "orders-v1", "weight": 50}, {"virtualNode": "orders-v2", "weight": 50}])
    );
    update(
        &aws,
        &ids.service,
        &json!({"provider": {"virtualNode": {"virtualNodeName": "orders-v1"}}}),
        &service,
    );
    let mut gw_spec = gateway_spec();
    gw_spec["listeners"][0]["connectionPool"] =
        json!({"http": {"maxConnections": 100, "maxPendingRequests": 1000}});
    update(&aws, &ids.gateway, &gw_spec, &gateway);
    update(&aws, &ids.groute, &groute_spec("/v2/orders"), &groute);
    // A second update goes to version 3.
    front_spec["backends"] = json!([]);
    update(&aws, &ids.front, &front_spec, &front2);

    // ---- lists
    assert_eq!(listed(&aws, &["list-meshes"], "meshes", "meshName"), [MESH]);
    let nodes = ["frontend", "orders-v1", "orders-v2"];
    let m = ["--mesh-name", MESH];
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-nodes", m[0], m[1]],
            "virtualNodes",
            "virtualNodeName"
        ),
        nodes
    );
    // The CLI follows nextToken: one item per page, all three in the end.
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-nodes", m[0], m[1], "--page-size", "1"],
            "virtualNodes",
            "virtualNodeName"
        ),
        nodes
    );
    // One page of one: the server honours limit and hands out a token, which leads on.
    let page = aws.ok(&[
        "list-virtual-nodes",
        m[0],
        m[1],
        "--limit",
        "1",
        "--no-paginate",
    ]);
    assert_eq!(
        page["virtualNodes"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    let token = page["nextToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no nextToken after a page of 1 of 3: {page}"))
        .to_string();
    let page2 = aws.ok(&[
        "list-virtual-nodes",
        m[0],
        m[1],
        "--limit",
        "5",
        "--next-token",
        &token,
        "--no-paginate",
    ]);
    let mut all: Vec<&str> = page["virtualNodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            page2["virtualNodes"]
                .as_array()
                .expect("second page")
                .iter(),
        )
        .map(|e| e["virtualNodeName"].as_str().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, nodes, "two pages together");
    assert!(
        page2.get("nextToken").is_none(),
        "last page has a token: {page2}"
    );
    // Each list entry carries the resource's ARN and current version.
    let vn_list = aws.ok(&["list-virtual-nodes", m[0], m[1]]);
    let front_entry = vn_list["virtualNodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["virtualNodeName"] == "frontend")
        .expect("frontend listed");
    assert_eq!(front_entry["arn"], json!(ids.front.arn()));
    assert_eq!(front_entry["version"], json!(3));
    assert_eq!(front_entry["meshName"], json!(MESH));
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-routers", m[0], m[1]],
            "virtualRouters",
            "virtualRouterName"
        ),
        ["orders-router"]
    );
    assert_eq!(
        listed(
            &aws,
            &[
                "list-routes",
                m[0],
                m[1],
                "--virtual-router-name",
                "orders-router"
            ],
            "routes",
            "routeName"
        ),
        ["orders-route"]
    );
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-services", m[0], m[1]],
            "virtualServices",
            "virtualServiceName"
        ),
        ["orders.shop.local"]
    );
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-gateways", m[0], m[1]],
            "virtualGateways",
            "virtualGatewayName"
        ),
        ["ingress-gw"]
    );
    assert_eq!(
        listed(
            &aws,
            &[
                "list-gateway-routes",
                m[0],
                m[1],
                "--virtual-gateway-name",
                "ingress-gw"
            ],
            "gatewayRoutes",
            "gatewayRouteName"
        ),
        ["orders-gr"]
    );

    // ---- tags
    let tags_of = |arn: &str| tags_of(&aws, arn);
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        tags_of(&ids.mesh.arn()),
        [pair("env", "test"), pair("team", "payments")],
        "tags given to create-mesh"
    );
    let route_arn = ids.route.arn();
    assert_eq!(tags_of(&route_arn), Vec::<(String, String)>::new());
    let out = aws.ok(&[
        "tag-resource",
        "--resource-arn",
        &route_arn,
        "--tags",
        "key=owner,value=orders-team",
        "key=tier,value=gold",
    ]);
    assert!(
        out.is_null() || out == json!({}),
        "tag-resource answers {out}"
    );
    assert_eq!(
        tags_of(&route_arn),
        [pair("owner", "orders-team"), pair("tier", "gold")]
    );
    aws.ok(&[
        "untag-resource",
        "--resource-arn",
        &route_arn,
        "--tag-keys",
        "owner",
    ]);
    assert_eq!(tags_of(&route_arn), [pair("tier", "gold")]);
    aws.fails_with(
        &[
            "list-tags-for-resource",
            "--resource-arn",
            &ResourceId::new("virtual-node", &[MESH, "nope"]).arn(),
        ],
        "NotFoundException",
    );

    // ---- errors
    aws.fails_with(
        &["describe-mesh", "--mesh-name", "nope"],
        "NotFoundException",
    );
    aws.fails_with(
        &[
            "describe-virtual-node",
            m[0],
            m[1],
            "--virtual-node-name",
            "nope",
        ],
        "NotFoundException",
    );
    aws.fails_with(
        &[
            "describe-route",
            m[0],
            m[1],
            "--virtual-router-name",
            "orders-router",
            "--route-name",
            "nope",
        ],
        "NotFoundException",
    );
    aws.fails_with(
        &[
            "describe-gateway-route",
            m[0],
            m[1],
            "--virtual-gateway-name",
            "nope",
            "--gateway-route-name",
            "orders-gr",
        ],
        "NotFoundException",
    );
    aws.fails_with(&["delete-mesh", m[0], m[1]], "ResourceInUseException");
    // A router with routes and a gateway with gateway routes cannot be deleted either.
    aws.fails_with(
        &[
            "delete-virtual-router",
            m[0],
            m[1],
            "--virtual-router-name",
            "orders-router",
        ],
        "ResourceInUseException",
    );
    aws.fails_with(
        &[
            "delete-virtual-gateway",
            m[0],
            m[1],
            "--virtual-gateway-name",
            "ingress-gw",
        ],
        "ResourceInUseException",
    );
    let bad_route = |spec: &Value| -> Vec<String> {
        let mut a: Vec<String> = [
            "create-route",
            "--mesh-name",
            MESH,
            "--virtual-router-name",
            "orders-router",
            "--route-name",
            "bad-route",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(spec_arg(spec));
        a
    };
    // botocore checks only the minimum of a number, so weight 101 reaches the server.
    aws.fails_with(
        &bad_route(&route_spec(&[("orders-v1", 101)])),
        "BadRequestException",
    );
    // Weight -1 is stopped by the CLI itself (parameter validation, before any request).
    let neg = aws.appmesh(&bad_route(&route_spec(&[("orders-v1", -1)])));
    assert!(!neg.success(), "weight -1 accepted: {}", neg.stdout);
    assert!(
        neg.stderr.contains("Parameter validation failed"),
        "weight -1: {}",
        neg.stderr
    );
    aws.fails_with(
        &bad_route(&route_spec(&[("orders-v1", 0), ("orders-v2", 0)])),
        "BadRequestException",
    );
    aws.fails_with(
        &bad_route(&route_spec(&[("orders-v1", 1), ("orders-v9", 1)])),
        "BadRequestException",
    );
    aws.fails_with(
        &[
            "describe-route",
            m[0],
            m[1],
            "--virtual-router-name",
            "orders-router",
            "--route-name",
            "bad-route",
        ],
        "NotFoundException",
    );
    // Creating what exists: mesh, node and route.
    aws.fails_with(&["create-mesh", "--mesh-name", MESH], "ConflictException");
    let mut dup = vec!["create-virtual-node".to_string()];
    dup.extend(ids.v2.cli_args());
    dup.extend(spec_arg(&node_spec("other.shop.local", 9000)));
    aws.fails_with(&dup, "ConflictException");
    let mut dup = vec!["create-route".to_string()];
    dup.extend(ids.route.cli_args());
    dup.extend(spec_arg(&route_spec(&[("orders-v2", 1)])));
    aws.fails_with(&dup, "ConflictException");
    // The failed calls changed nothing.
    assert_eq!(ids.route.describe(&aws), route2);

    // ---- delete everything, children first
    for id in [
        &ids.groute,
        &ids.gateway,
        &ids.service,
        &ids.route,
        &ids.router,
        &ids.front,
        &ids.v2,
        &ids.v1,
        &ids.mesh,
    ] {
        delete(&aws, id);
    }
    assert_eq!(aws.ok(&["list-meshes"]), json!({"meshes": []}));
    drop(server);
}

/// Resources of all seven kinds, some updated, survive `kill -9` of `shoal dev` right after the
/// last acknowledged write: after a restart on the same data directory and ports, describe
/// returns them unchanged (spec, arn, uid, version, createdAt, everything).
#[test]
fn acknowledged_writes_survive_kill_9() {
    let root = tempfile::Builder::new()
        .prefix("shoal-e2e-awscli-kill-")
        .tempdir()
        .unwrap();
    let config = DevConfig::in_dir(root.path());
    let server = DevServer::start(&config);
    let aws = Aws::new(&server.endpoint());
    let ids = ids();
    let m = ["--mesh-name", MESH];
    let mut v2_spec = node_spec("orders-v2.shop.local", 8080);
    v2_spec["listeners"][0]["timeout"] =
        json!({"http": {"perRequest": {"unit": "s", "value": 20}}});

    // What each resource must look like after the restart: the last acknowledged answer.
    let mut before: Vec<(ResourceId, Value)> = Vec::new();
    let mesh = create(&aws, &ids.mesh, &json!({}), &["--tags", "key=k,value=v"]);
    before.push((ids.mesh.clone(), mesh));
    let v1 = create(&aws, &ids.v1, &node_spec("orders-v1.shop.local", 8080), &[]);
    before.push((ids.v1.clone(), v1));
    create(&aws, &ids.v2, &node_spec("orders-v2.shop.local", 8080), &[]);
    let router = create(&aws, &ids.router, &router_spec(8080), &[]);
    before.push((ids.router.clone(), router));
    let route = create(
        &aws,
        &ids.route,
        &route_spec(&[("orders-v1", 1), ("orders-v2", 3)]),
        &[],
    );
    let route = update(
        &aws,
        &ids.route,
        &route_spec(&[("orders-v1", 3), ("orders-v2", 1)]),
        &route,
    );
    before.push((ids.route.clone(), route));
    let service = create(&aws, &ids.service, &service_spec(), &[]);
    before.push((ids.service.clone(), service));
    let gateway = create(&aws, &ids.gateway, &gateway_spec(), &[]);
    before.push((ids.gateway.clone(), gateway));
    let groute = create(&aws, &ids.groute, &groute_spec("/orders"), &[]);
    before.push((ids.groute.clone(), groute));
    let mesh_tags = tags_of(&aws, &ids.mesh.arn());
    assert_eq!(mesh_tags, [("k".to_string(), "v".to_string())]);
    // The last write, and kill -9 the moment it is acknowledged.
    let out = ids.v2.call(&aws, "update", &spec_arg(&v2_spec));
    assert!(out.success(), "update-virtual-node: {}", out.stderr);
    let pid = server.pid();
    server.kill9();
    let v2 = out.json["virtualNode"].clone();
    check_resource(&v2, &ids.v2, &v2_spec, 2);
    before.push((ids.v2.clone(), v2));

    let server = DevServer::start(&config);
    assert_ne!(server.pid(), pid);
    for (id, was) in &before {
        let now = id.describe(&aws);
        assert_eq!(&now, was, "{id:?} changed across kill -9 and restart");
    }
    assert_eq!(tags_of(&aws, &ids.mesh.arn()), mesh_tags);
    assert_eq!(
        listed(
            &aws,
            &["list-virtual-nodes", m[0], m[1]],
            "virtualNodes",
            "virtualNodeName"
        ),
        ["orders-v1", "orders-v2"]
    );
    // The restarted server takes writes.
    create(
        &aws,
        &ids.front,
        &node_spec("frontend.shop.local", 8080),
        &[],
    );
    aws.fails_with(&["create-mesh", "--mesh-name", MESH], "ConflictException");
    drop(server);
}
