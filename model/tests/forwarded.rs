//! `check::command`: what a leader checks again in a forwarded command. Commands built the way
//! the API builds them pass; the raw commands of the issue's attack do not.

use serde_json::json;
use shoal_model::request::parse_create;
use shoal_model::{check, Command, Kind, PutMode, ResourceKey, Stamp};

fn stamp() -> Stamp {
    Stamp {
        now: 1_796_300_000.0,
        uid: "0b6e8f5e-3f7a-4c1e-9d2a-5a7f0c1d2e3f".into(),
        account: "000000000000".into(),
        region: "us-east-1".into(),
    }
}

fn put(kind: Kind, key: ResourceKey, body: serde_json::Value) -> Command {
    let req = parse_create(kind, &serde_json::to_vec(&body).unwrap()).expect("a valid request");
    Command::Put {
        key,
        spec: Box::new(req.spec),
        mode: PutMode::Create,
        tags: Vec::new(),
        client_token: None,
        stamp: stamp(),
    }
}

#[test]
fn commands_the_api_builds_pass() {
    let mesh = put(
        Kind::Mesh,
        ResourceKey::mesh("colorapp"),
        json!({"meshName": "colorapp"}),
    );
    let node = put(
        Kind::VirtualNode,
        ResourceKey::in_mesh("colorapp", Kind::VirtualNode, "red"),
        json!({"virtualNodeName": "red", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
    );
    let route = put(
        Kind::Route,
        ResourceKey::child("colorapp", Kind::Route, "vr", "r"),
        json!({"routeName": "r", "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "red", "weight": 1}]}}}}),
    );
    for c in [&mesh, &node, &route] {
        check::command(c).unwrap();
    }
    check::command(&Command::Batch(vec![mesh, node, route])).unwrap();
    check::command(&Command::Delete {
        key: ResourceKey::mesh("colorapp"),
    })
    .unwrap();
}

#[test]
fn the_attacks_raw_commands_are_refused() {
    let body = json!({"meshName": "m"});
    // A mesh named evil/../\0mesh.
    let evil = put(Kind::Mesh, ResourceKey::mesh("m"), body.clone());
    let Command::Put {
        spec,
        mode,
        tags,
        client_token,
        stamp: st,
        ..
    } = evil
    else {
        unreachable!()
    };
    let named = Command::Put {
        key: ResourceKey::mesh("evil/../\0mesh"),
        spec: spec.clone(),
        mode,
        tags: tags.clone(),
        client_token: client_token.clone(),
        stamp: st.clone(),
    };
    assert!(check::command(&named).is_err());
    // createdAt -1e300.
    let mut old = st.clone();
    old.now = -1e300;
    let dated = Command::Put {
        key: ResourceKey::mesh("m"),
        spec: spec.clone(),
        mode,
        tags: tags.clone(),
        client_token: None,
        stamp: old,
    };
    assert!(check::command(&dated).is_err());
    // A stamp that names a forged owner in a non-account shape, a NaN time.
    for bad in [
        Stamp {
            account: "evil".into(),
            ..st.clone()
        },
        Stamp {
            now: f64::NAN,
            ..st.clone()
        },
        Stamp {
            region: "a:b".into(),
            ..st.clone()
        },
        Stamp {
            uid: "x\ny".into(),
            ..st.clone()
        },
    ] {
        let c = Command::Put {
            key: ResourceKey::mesh("m"),
            spec: spec.clone(),
            mode,
            tags: Vec::new(),
            client_token: None,
            stamp: bad,
        };
        assert!(check::command(&c).is_err(), "{c:?}");
    }
    // A virtual node spec under a mesh's key; a nested batch; a bad delete key.
    let node = put(
        Kind::VirtualNode,
        ResourceKey::in_mesh("m", Kind::VirtualNode, "n"),
        json!({"virtualNodeName": "n", "spec": {}}),
    );
    let Command::Put {
        spec: node_spec, ..
    } = node.clone()
    else {
        unreachable!()
    };
    let mismatched = Command::Put {
        key: ResourceKey::mesh("m"),
        spec: node_spec,
        mode,
        tags: Vec::new(),
        client_token: None,
        stamp: st,
    };
    assert!(check::command(&mismatched).is_err());
    assert!(check::command(&Command::Batch(vec![Command::Batch(vec![node])])).is_err());
    assert!(check::command(&Command::Delete {
        key: ResourceKey::mesh("../x")
    })
    .is_err());
}
