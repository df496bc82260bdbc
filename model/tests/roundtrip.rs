//! JSON round trips driven by the botocore model itself: for every spec structure, build
//! instances that set every member (each union member in turn), parse them with the
//! generated types, serialize them back, and require the same JSON. Then put an unknown
//! member into every object of every instance and require a rejection.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use shoal_model::api;

fn model() -> Value {
    let text = include_str!("../api/appmesh-2019-01-25.service-2.json");
    serde_json::from_str(text).unwrap()
}

/// Builds instance number `k` of shape `name`: every member present; unions take member
/// `k % n`; enums take value `k % n`. Records each structure member it sets in `seen`.
fn instance(
    shapes: &Map<String, Value>,
    name: &str,
    k: usize,
    seen: &mut BTreeSet<String>,
) -> Value {
    let s = &shapes[name];
    let min = s.get("min").and_then(Value::as_i64);
    let max = s.get("max").and_then(Value::as_i64);
    match s["type"].as_str().unwrap() {
        "string" => {
            if let Some(values) = s.get("enum").and_then(Value::as_array) {
                return values[k % values.len()].clone();
            }
            let len = min.unwrap_or(1).max(1) as usize;
            let len = max.map_or(len, |m| len.min(m as usize));
            Value::String("a".repeat(len))
        }
        "integer" | "long" => {
            let lo = min.unwrap_or(0);
            let hi = max.unwrap_or(lo + 1000);
            json!(lo + (k as i64 * 7) % (hi - lo + 1))
        }
        "boolean" => json!(k.is_multiple_of(2)),
        "list" => {
            let n = min.unwrap_or(1).max(1) as usize;
            let member = s["member"]["shape"].as_str().unwrap();
            Value::Array(
                (0..n)
                    .map(|i| instance(shapes, member, k + i, seen))
                    .collect(),
            )
        }
        "structure" => {
            let members = s["members"].as_object().unwrap();
            let mut names: Vec<&String> = members.keys().collect();
            names.sort();
            let chosen: Vec<&String> = if s.get("union").and_then(Value::as_bool) == Some(true) {
                vec![names[k % names.len()]]
            } else {
                names
            };
            let mut obj = Map::new();
            for m in chosen {
                seen.insert(format!("{name}.{m}"));
                let shape = members[m]["shape"].as_str().unwrap();
                obj.insert(m.clone(), instance(shapes, shape, k, seen));
            }
            Value::Object(obj)
        }
        other => panic!("unexpected shape type {other}"),
    }
}

fn reachable(shapes: &Map<String, Value>, name: &str, out: &mut BTreeSet<String>) {
    let s = &shapes[name];
    match s["type"].as_str().unwrap() {
        "list" => reachable(shapes, s["member"]["shape"].as_str().unwrap(), out),
        "structure" => {
            if !out.insert(name.to_string()) {
                return;
            }
            for m in s["members"].as_object().unwrap().values() {
                reachable(shapes, m["shape"].as_str().unwrap(), out);
            }
        }
        _ => {}
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(&t).unwrap())
}

type Check = fn(&Value) -> Result<Value, String>;

const ROOTS: [(&str, Check); 7] = [
    ("MeshSpec", roundtrip::<api::MeshSpec>),
    ("VirtualNodeSpec", roundtrip::<api::VirtualNodeSpec>),
    ("VirtualRouterSpec", roundtrip::<api::VirtualRouterSpec>),
    ("RouteSpec", roundtrip::<api::RouteSpec>),
    ("VirtualServiceSpec", roundtrip::<api::VirtualServiceSpec>),
    ("VirtualGatewaySpec", roundtrip::<api::VirtualGatewaySpec>),
    ("GatewayRouteSpec", roundtrip::<api::GatewayRouteSpec>),
];

/// Every object in `v`, by JSON pointer.
fn object_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            out.push(at.clone());
            for (k, x) in o {
                object_pointers(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                object_pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_member_of_every_spec_structure_round_trips() {
    let m = model();
    let shapes = m["shapes"].as_object().unwrap();
    let mut seen = BTreeSet::new();
    let mut instances = 0;
    for (root, check) in ROOTS {
        for k in 0..6 {
            let v = instance(shapes, root, k, &mut seen);
            let back =
                check(&v).unwrap_or_else(|e| panic!("{root} instance {k} rejected: {e}\n{v:#}"));
            assert_eq!(back, v, "{root} instance {k} changed in a round trip");
            instances += 1;
        }
    }
    // Every member of every structure reachable from a spec was set at least once.
    let mut structs = BTreeSet::new();
    for (root, _) in ROOTS {
        reachable(shapes, root, &mut structs);
    }
    let mut all_members = BTreeSet::new();
    for s in &structs {
        for mname in shapes[s]["members"].as_object().unwrap().keys() {
            all_members.insert(format!("{s}.{mname}"));
        }
    }
    let missing: Vec<_> = all_members.difference(&seen).collect();
    assert!(missing.is_empty(), "members never exercised: {missing:?}");
    println!(
        "round trip: {} spec structures, {} members, {} instances",
        structs.len(),
        all_members.len(),
        instances
    );
    assert!(
        structs.len() >= 119,
        "expected the whole spec tree, got {}",
        structs.len()
    );
}

#[test]
fn an_unknown_member_is_rejected_in_every_object() {
    let m = model();
    let shapes = m["shapes"].as_object().unwrap();
    let mut tried = 0;
    for (root, check) in ROOTS {
        for k in 0..6 {
            let v = instance(shapes, root, k, &mut BTreeSet::new());
            let mut pointers = Vec::new();
            object_pointers(&v, String::new(), &mut pointers);
            for p in pointers {
                let mut bad = v.clone();
                bad.pointer_mut(&p)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .insert("notAMember".into(), json!(1));
                assert!(
                    check(&bad).is_err(),
                    "{root} accepted an unknown member at {p:?}"
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 500, "only {tried} objects tried");
}

#[test]
fn generated_code_covers_the_whole_model() {
    let m = model();
    let shapes = m["shapes"].as_object().unwrap();
    let unions = shapes
        .values()
        .filter(|s| s.get("union") == Some(&json!(true)))
        .count();
    let enums = shapes.values().filter(|s| s.get("enum").is_some()).count();
    assert_eq!(api::COVERAGE.unions, unions);
    assert_eq!(api::COVERAGE.enums, enums);
    assert_eq!(
        api::COVERAGE.operations,
        m["operations"].as_object().unwrap().len()
    );
}
