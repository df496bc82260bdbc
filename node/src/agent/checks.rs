//! Which health check an instance registered on this host gets: a pure function of the model.

use std::net::SocketAddr;

use shoal_model::api::HealthCheckPolicy;
use shoal_model::discovery::{selects, Instance};
use shoal_model::{Kind, Model, Spec};

/// The check to run for `inst`, and where: the `healthCheck` of a listener of the first virtual
/// node (in key order) that selects the instance — the listener on the instance's port if it
/// has a check, else the first listener that has one. The target is the instance's address on
/// the check's `port` (default: the instance's port). `None`: no check; the instance is
/// healthy while its host is alive.
pub fn check_for(model: &Model, inst: &Instance) -> Option<(SocketAddr, HealthCheckPolicy)> {
    for r in model.iter().filter(|r| r.key.kind == Kind::VirtualNode) {
        let Spec::VirtualNode(spec) = &r.spec else {
            continue;
        };
        if !selects(&r.key, spec, inst) {
            continue;
        }
        let listeners = spec.listeners.as_deref().unwrap_or_default();
        let on_port = listeners
            .iter()
            .find(|l| l.port_mapping.port == i32::from(inst.port) && l.health_check.is_some());
        let chosen = on_port.or_else(|| listeners.iter().find(|l| l.health_check.is_some()));
        if let Some(policy) = chosen.and_then(|l| l.health_check.clone()) {
            let port = policy
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or(inst.port);
            return Some((SocketAddr::new(inst.address, port), policy));
        }
        // The first selecting node decides, even when it has no check.
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_model::request::parse_create;
    use shoal_model::{Command, PutMode, ResourceKey, Stamp};

    fn model_with(nodes: &[(&str, serde_json::Value)]) -> Model {
        let mut m = Model::default();
        let mut run = |key: ResourceKey, kind: Kind, body: serde_json::Value| {
            let r = parse_create(kind, body.to_string().as_bytes()).unwrap();
            let i = m.revision() + 1;
            m.apply(
                i,
                &Command::Put {
                    key,
                    spec: Box::new(r.spec),
                    mode: PutMode::Create,
                    tags: vec![],
                    client_token: None,
                    stamp: Stamp {
                        now: 1.0,
                        uid: format!("u{i}"),
                        account: "000000000000".into(),
                        region: "us-east-1".into(),
                    },
                },
            )
            .outcome
            .unwrap();
        };
        run(
            ResourceKey::mesh("m"),
            Kind::Mesh,
            json!({"meshName": "m", "spec": {}}),
        );
        for (name, spec) in nodes {
            run(
                ResourceKey::in_mesh("m", Kind::VirtualNode, name),
                Kind::VirtualNode,
                json!({"virtualNodeName": name, "spec": spec}),
            );
        }
        m
    }

    fn hc(port: Option<u16>, path: &str) -> serde_json::Value {
        let mut v = json!({"protocol": "http", "path": path, "intervalMillis": 5000,
            "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2});
        if let Some(p) = port {
            v["port"] = json!(p);
        }
        v
    }

    fn inst(port: u16) -> Instance {
        Instance::cloud_map("apps.local", "web", "i1", "10.0.0.5".parse().unwrap(), port)
    }

    fn cloud_map() -> serde_json::Value {
        json!({"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "web"}})
    }

    #[test]
    fn the_listener_on_the_instance_port_wins() {
        let m = model_with(&[(
            "web",
            json!({"serviceDiscovery": cloud_map(), "listeners": [
                {"portMapping": {"port": 8080, "protocol": "http"}, "healthCheck": hc(None, "/a")},
                {"portMapping": {"port": 9090, "protocol": "http"}, "healthCheck": hc(Some(9999), "/b")},
            ]}),
        )]);
        let (target, p) = check_for(&m, &inst(9090)).unwrap();
        assert_eq!(target, "10.0.0.5:9999".parse().unwrap());
        assert_eq!(p.path.as_deref(), Some("/b"));
        // No listener on the port: the first one with a check, on the instance's port.
        let (target, p) = check_for(&m, &inst(7000)).unwrap();
        assert_eq!(target, "10.0.0.5:7000".parse().unwrap());
        assert_eq!(p.path.as_deref(), Some("/a"));
    }

    #[test]
    fn no_selecting_node_or_no_check_means_none() {
        let m = model_with(&[(
            "web",
            json!({"serviceDiscovery": cloud_map(), "listeners": [
                {"portMapping": {"port": 8080, "protocol": "http"}}]}),
        )]);
        assert!(check_for(&m, &inst(8080)).is_none());
        let mut other = inst(8080);
        other.service = "api".into();
        assert!(check_for(&Model::default(), &other).is_none());
    }
}
