//! The state machine is a function of its log: the same commands applied on two fresh models
//! give identical models, revisions and answers, and a model survives its snapshot encoding.

use proptest::prelude::*;
use serde_json::json;
use shoal_model::request::parse_create;
use shoal_model::{Command, Kind, Model, PutMode, ResourceKey, Stamp};

fn stamp(i: u64) -> Stamp {
    Stamp {
        now: 1_700_000_000.0 + i as f64,
        uid: format!("u{i}"),
        account: "000000000000".into(),
        region: "us-east-1".into(),
    }
}

/// Builds one command from small random choices: creates, updates and deletes of meshes,
/// nodes, routers, routes and services over a few names, so that many of them conflict,
/// refer to missing resources or are in use.
fn command(op: u8, kind: u8, name: u8, weight: u8, i: u64) -> Command {
    let mesh = format!("m{}", name % 2);
    let n = format!("n{}", name % 3);
    let (k, body) = match kind % 5 {
        0 => (Kind::Mesh, json!({"meshName": mesh})),
        1 => (
            Kind::VirtualNode,
            json!({"virtualNodeName": n, "spec": {"listeners": [{"portMapping": {"port": 80 + u16::from(weight % 3), "protocol": "http"}}]}}),
        ),
        2 => (
            Kind::VirtualRouter,
            json!({"virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
        ),
        3 => (
            Kind::Route,
            json!({"routeName": "rt", "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": n, "weight": weight % 100 + 1}]}}}}),
        ),
        _ => (
            Kind::VirtualService,
            json!({"virtualServiceName": "s", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}}),
        ),
    };
    let parsed = parse_create(k, body.to_string().as_bytes()).expect("valid body");
    let key = match k {
        Kind::Mesh => ResourceKey::mesh(&mesh),
        Kind::Route => ResourceKey::child(&mesh, k, "r", &parsed.name),
        _ => ResourceKey::in_mesh(&mesh, k, &parsed.name),
    };
    match op % 3 {
        0 => Command::Put {
            key,
            spec: Box::new(parsed.spec),
            mode: PutMode::Create,
            tags: vec![],
            client_token: None,
            stamp: stamp(i),
        },
        1 => Command::Put {
            key,
            spec: Box::new(parsed.spec),
            mode: PutMode::Update,
            tags: vec![],
            client_token: None,
            stamp: stamp(i),
        },
        _ => Command::Delete { key },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn same_log_same_model(ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..80)) {
        let log: Vec<Command> = ops.iter().enumerate()
            .map(|(i, (o, k, n, w))| command(*o, *k, *n, *w, i as u64))
            .collect();
        let (mut a, mut b) = (Model::default(), Model::default());
        for (i, cmd) in log.iter().enumerate() {
            // Commands travel through the log as JSON: replay the decoded copy on `b`.
            let wire: Command = serde_json::from_slice(&serde_json::to_vec(cmd).unwrap()).unwrap();
            // What the API builds passes the leader's re-check of forwarded commands.
            prop_assert!(shoal_model::check::command(&wire).is_ok(), "{:?}", shoal_model::check::command(&wire));
            let ra = a.apply(i as u64 + 1, cmd);
            let rb = b.apply(i as u64 + 1, &wire);
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.revision(), b.revision());
        let snap: Model = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        prop_assert_eq!(snap, a);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A replica that follows the published changes ends equal (resources and revision) to
    /// the model that applied the commands: what the watch stream carries is enough.
    #[test]
    fn replicas_built_from_changes_match(ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..60), cut in 0usize..60) {
        let mut primary = Model::default();
        let mut replica: Option<Model> = None;
        for (i, (o, k, n, w)) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            let applied = primary.apply(index, &command(*o, *k, *n, *w, index));
            if i == cut.min(ops.len() - 1) {
                // The replica starts from a snapshot taken here.
                replica = Some(Model::from_resources(primary.revision(), primary.iter().cloned()));
            } else if let Some(r) = replica.as_mut() {
                r.apply_changes(index, &applied.changes);
            }
        }
        let replica = replica.unwrap();
        prop_assert_eq!(replica.revision(), primary.revision());
        let a: Vec<_> = primary.iter().collect();
        let b: Vec<_> = replica.iter().collect();
        prop_assert_eq!(a, b);
    }
}
