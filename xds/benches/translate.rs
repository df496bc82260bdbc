//! Translation cost per proxy (issue 5): the fan-out benchmark's mesh (100 virtual services,
//! each a router with one route to a node with one Cloud Map instance; N client nodes with
//! every service as a backend), translated for every client, as the agent does after a route
//! change. Prints the time per proxy for `translate_indexed` alone and for the agent's batch
//! path (`translate_many`, which shares resources equal across proxies).
//!
//! `cargo bench -p shoal-xds --bench translate`; `TRANSLATE_PROXIES=1000 TRANSLATE_SERVICES=100`;
//! `TRANSLATE_BACKENDS=50` gives each proxy its own set of 50 backends (nothing but the
//! clusters is then shared).

#[path = "../tests/translate_common.rs"]
mod common;

use std::time::Instant;

use serde_json::json;
use shoal_model::discovery::EndpointIndex;
use shoal_xds::translate::{translate_indexed, translate_many};
use shoal_xds::{ProxyId, ProxyKind, ProxyOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let proxies = env("TRANSLATE_PROXIES", 1000);
    let services = env("TRANSLATE_SERVICES", 100);
    let mesh = "fanout";
    let mut docs = vec![json!({"meshName": mesh})];
    for i in 0..services {
        docs.push(json!({"meshName": mesh, "virtualNodeName": format!("svc-{i}"), "spec": {
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "fanout.local", "serviceName": format!("svc-{i}")}},
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}));
        docs.push(
            json!({"meshName": mesh, "virtualRouterName": format!("vr-{i}"), "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}),
        );
        docs.push(json!({"meshName": mesh, "virtualRouterName": format!("vr-{i}"), "routeName": format!("r-{i}"),
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": format!("svc-{i}"), "weight": 1}]}}}}));
        docs.push(
            json!({"meshName": mesh, "virtualServiceName": format!("svc-{i}.fanout.local"),
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": format!("vr-{i}")}}}}),
        );
    }
    let per_proxy = env("TRANSLATE_BACKENDS", services).min(services);
    for j in 0..proxies {
        // Every service, or `per_proxy` of them picked by a hash of the proxy's number.
        let mut picked: Vec<(u64, usize)> = (0..services)
            .map(|i| {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                (j, i).hash(&mut h);
                (h.finish(), i)
            })
            .collect();
        picked.sort_unstable();
        let backends: Vec<_> = picked
            .iter()
            .take(per_proxy)
            .map(|(_, i)| json!({"virtualService": {"virtualServiceName": format!("svc-{i}.fanout.local")}}))
            .collect();
        docs.push(
            json!({"meshName": mesh, "virtualNodeName": format!("proxy-{j}"),
            "spec": {"backends": backends}}),
        );
    }
    let model = common::model_of(&docs);
    let endpoints: Vec<_> = (0..services)
        .map(|i| {
            common::cloud_map(
                "fanout.local",
                &format!("svc-{i}"),
                "i0",
                &format!("10.77.{}.{}", i / 250, i % 250 + 1),
                8080,
                &[],
                true,
            )
        })
        .collect();
    let index = EndpointIndex::new(&endpoints);
    let ids: Vec<ProxyId> = (0..proxies)
        .map(|j| ProxyId {
            mesh: mesh.into(),
            kind: ProxyKind::VirtualNode,
            name: format!("proxy-{j}"),
        })
        .collect();
    let opts = ProxyOptions::default();
    for round in 0..3 {
        let t = Instant::now();
        for id in &ids {
            translate_indexed(&model, &endpoints, &index, id, &opts).expect("translates");
        }
        let one = t.elapsed();
        let t = Instant::now();
        let batch: Vec<_> = ids.iter().map(|id| (id.clone(), opts.clone())).collect();
        let out = translate_many(&model, &endpoints, &index, &batch);
        let many = t.elapsed();
        assert!(out.iter().all(|s| s.is_ok()));
        println!(
            "round {round}: {proxies} proxies x {per_proxy} of {services} services: translate_indexed {:.3} ms/proxy, translate_many {:.3} ms/proxy",
            one.as_secs_f64() * 1e3 / proxies as f64,
            many.as_secs_f64() * 1e3 / proxies as f64,
        );
    }
}
