//! Property tests: any model built from random combinations of valid resources translates
//! without error into consistent snapshots, and the real Envoy accepts them.

#[path = "translate_common.rs"]
mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use shoal_model::discovery::{Endpoint, EndpointIndex};
use shoal_model::Model;
use shoal_xds::translate::{translate, translate_many};
use shoal_xds::{ProxyId, ProxyOptions};

/// A small deterministic generator (splitmix64), driven by the seed proptest picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const PROTOCOLS: [&str; 4] = ["http", "http2", "grpc", "tcp"];
const PORTS: [u16; 4] = [80, 8080, 9000, 5432];
const SERVICES: [&str; 4] = ["a.m.local", "b.m.local", "c.m.local", "d.m.local"];

fn duration(r: &mut Rng) -> Value {
    if r.chance(50) {
        json!({"value": r.below(30), "unit": "s"})
    } else {
        json!({"value": r.below(5000), "unit": "ms"})
    }
}

fn cert(r: &mut Rng, certs: &str) -> Value {
    if r.chance(50) {
        json!({"file": {"certificateChain": format!("{certs}/n.crt"), "privateKey": format!("{certs}/n.key")}})
    } else {
        json!({"sds": {"secretName": "spiffe://m/n"}})
    }
}

fn trust(r: &mut Rng, certs: &str) -> Value {
    if r.chance(50) {
        json!({"file": {"certificateChain": format!("{certs}/ca.crt")}})
    } else {
        json!({"sds": {"secretName": "spiffe://m"}})
    }
}

fn header_match(r: &mut Rng) -> Value {
    match r.below(6) {
        0 => json!({"exact": "x"}),
        1 => json!({"prefix": "p"}),
        2 => json!({"suffix": "s"}),
        3 => json!({"regex": "^[a-z]+$"}),
        4 => json!({"range": {"start": 1, "end": 5}}),
        _ => Value::Null,
    }
}

fn headers(r: &mut Rng) -> Value {
    let n = r.below(3);
    Value::Array(
        (0..n)
            .map(|i| {
                let mut h = json!({"name": format!("h{i}")});
                let m = header_match(r);
                if !m.is_null() {
                    h["match"] = m;
                }
                if r.chance(20) {
                    h["invert"] = json!(true);
                }
                h
            })
            .collect(),
    )
}

fn listener(r: &mut Rng, port: u16, proto: &str, certs: &str) -> Value {
    let mut l = json!({"portMapping": {"port": port, "protocol": proto}});
    if r.chance(40) {
        l["timeout"] = match proto {
            "tcp" => json!({"tcp": {"idle": duration(r)}}),
            p => json!({p: {"perRequest": duration(r), "idle": duration(r)}}),
        };
    }
    if r.chance(40) {
        l["connectionPool"] = match proto {
            "http" => {
                json!({"http": {"maxConnections": 1 + r.below(100), "maxPendingRequests": 1 + r.below(100)}})
            }
            "tcp" => json!({"tcp": {"maxConnections": 1 + r.below(100)}}),
            p => json!({p: {"maxRequests": 1 + r.below(100)}}),
        };
    }
    if r.chance(40) {
        l["outlierDetection"] = json!({"maxServerErrors": 1 + r.below(10), "interval": duration(r),
            "baseEjectionDuration": duration(r), "maxEjectionPercent": r.below(101)});
    }
    if r.chance(40) {
        let hp = *r.pick(&PROTOCOLS);
        let mut hc = json!({"protocol": hp, "healthyThreshold": 2, "unhealthyThreshold": 2,
                            "timeoutMillis": 2000, "intervalMillis": 5000});
        if hp == "http" || hp == "http2" {
            hc["path"] = json!("/ping");
        }
        if r.chance(30) {
            hc["port"] = json!(port);
        }
        l["healthCheck"] = hc;
    }
    if r.chance(30) {
        let mode = *r.pick(&["STRICT", "PERMISSIVE", "DISABLED"]);
        let mut tls = json!({"mode": mode, "certificate": cert(r, certs)});
        if r.chance(50) {
            tls["validation"] = json!({"trust": trust(r, certs),
                "subjectAlternativeNames": {"match": {"exact": ["a.m.local"]}}});
        }
        l["tls"] = tls;
    }
    l
}

fn client_policy(r: &mut Rng, certs: &str) -> Value {
    let mut tls = json!({"validation": {"trust": trust(r, certs)}});
    if r.chance(50) {
        tls["certificate"] = cert(r, certs);
    }
    if r.chance(30) {
        tls["ports"] = json!([*r.pick(&PORTS)]);
    }
    if r.chance(20) {
        tls["enforce"] = json!(false);
    }
    json!({"tls": tls})
}

fn targets(r: &mut Rng, nodes: usize) -> Value {
    let n = 1 + r.below(3);
    let mut t: Vec<Value> = (0..n)
        .map(|_| {
            let mut w =
                json!({"virtualNode": format!("n{}", r.below(nodes)), "weight": r.below(101)});
            if r.chance(20) {
                w["port"] = json!(*r.pick(&PORTS));
            }
            w
        })
        .collect();
    t[0]["weight"] = json!(1 + r.below(100));
    Value::Array(t)
}

fn route_spec(r: &mut Rng, proto: &str, nodes: usize, port: u16) -> Value {
    let mut spec = json!({});
    if r.chance(60) {
        spec["priority"] = json!(r.below(1001));
    }
    let action = json!({"weightedTargets": targets(r, nodes)});
    let retry = |r: &mut Rng, grpc: bool| {
        let mut p = json!({"maxRetries": r.below(5), "perRetryTimeout": duration(r),
                           "httpRetryEvents": ["server-error", "gateway-error"]});
        if r.chance(50) {
            p["tcpRetryEvents"] = json!(["connection-error"]);
        }
        if grpc {
            p["grpcRetryEvents"] = json!(["unavailable", "cancelled"]);
        }
        p
    };
    match proto {
        "tcp" => {
            let mut t = json!({"action": action});
            if r.chance(30) {
                t["match"] = json!({"port": port});
            }
            if r.chance(30) {
                t["timeout"] = json!({"idle": duration(r)});
            }
            spec["tcpRoute"] = t;
        }
        "grpc" => {
            let mut m = json!({});
            if r.chance(60) {
                m["serviceName"] = json!("pkg.Svc");
                if r.chance(50) {
                    m["methodName"] = json!("Do");
                }
            }
            m["metadata"] = headers(r);
            if r.chance(30) {
                m["port"] = json!(port);
            }
            let mut g = json!({"match": m, "action": action});
            if r.chance(40) {
                g["retryPolicy"] = retry(r, true);
            }
            if r.chance(30) {
                g["timeout"] = json!({"perRequest": duration(r)});
            }
            spec["grpcRoute"] = g;
        }
        p => {
            let mut m = match r.below(4) {
                0 => json!({"prefix": *r.pick(&["/", "/api", "/api/", "/v1/items"])}),
                1 => json!({"path": {"exact": "/exact"}}),
                2 => json!({"path": {"regex": "/re/[0-9]+"}}),
                _ => json!({}),
            };
            m["headers"] = headers(r);
            if r.chance(30) {
                m["method"] = json!(*r.pick(&["GET", "POST"]));
            }
            if r.chance(20) {
                m["scheme"] = json!("http");
            }
            if r.chance(30) {
                m["queryParameters"] =
                    json!([{"name": "q", "match": {"exact": "1"}}, {"name": "flag"}]);
            }
            if r.chance(30) {
                m["port"] = json!(port);
            }
            let mut h = json!({"match": m, "action": action});
            if r.chance(40) {
                h["retryPolicy"] = retry(r, false);
            }
            if r.chance(30) {
                h["timeout"] = json!({"perRequest": duration(r), "idle": duration(r)});
            }
            let member = if p == "http" {
                "httpRoute"
            } else {
                "http2Route"
            };
            spec[member] = h;
        }
    }
    spec
}

fn gateway_route(r: &mut Rng, proto: &str) -> Value {
    let mut target = json!({"virtualService": {"virtualServiceName": *r.pick(&SERVICES)}});
    if r.chance(20) {
        target["port"] = json!(*r.pick(&PORTS));
    }
    let mut spec = json!({});
    if r.chance(50) {
        spec["priority"] = json!(r.below(1001));
    }
    let hostname = |r: &mut Rng| {
        if r.chance(50) {
            json!({"exact": "www.example.com"})
        } else {
            json!({"suffix": ".example.com"})
        }
    };
    if proto == "grpc" {
        let mut m = json!({"serviceName": "pkg.Svc"});
        if r.chance(30) {
            m["hostname"] = hostname(r);
        }
        let mut action = json!({"target": target});
        if r.chance(30) {
            action["rewrite"] = json!({"hostname": {"defaultTargetHostname": "DISABLED"}});
        }
        spec["grpcRoute"] = json!({"match": m, "action": action});
        return spec;
    }
    let prefix = r.chance(70);
    let mut m = if prefix {
        json!({"prefix": *r.pick(&["/", "/app", "/app/"])})
    } else if r.chance(50) {
        json!({"path": {"exact": "/exact"}})
    } else {
        json!({"path": {"regex": "/re/.*"}})
    };
    if r.chance(30) {
        m["hostname"] = hostname(r);
    }
    m["headers"] = headers(r);
    if r.chance(20) {
        m["method"] = json!("GET");
    }
    if r.chance(20) {
        m["queryParameters"] = json!([{"name": "q"}]);
    }
    let mut action = json!({"target": target});
    let mut rewrite = json!({});
    if prefix && r.chance(50) {
        rewrite["prefix"] = if r.chance(50) {
            json!({"defaultPrefix": *r.pick(&["ENABLED", "DISABLED"])})
        } else {
            json!({"value": "/new/"})
        };
    }
    if r.chance(20) {
        rewrite["path"] = json!({"exact": "/rewritten"});
    }
    if r.chance(30) {
        rewrite["hostname"] = json!({"defaultTargetHostname": *r.pick(&["ENABLED", "DISABLED"])});
    }
    if rewrite != json!({}) {
        action["rewrite"] = rewrite;
    }
    let member = if proto == "http" {
        "httpRoute"
    } else {
        "http2Route"
    };
    spec[member] = json!({"match": m, "action": action});
    spec
}

/// A random mesh: create-request bodies in an order that lets references resolve; some are
/// refused by validation and skipped.
fn random_docs(seed: u64, certs: &str) -> Vec<Value> {
    let r = &mut Rng(seed);
    let mut docs = Vec::new();
    let egress = *r.pick(&["ALLOW_ALL", "DROP_ALL"]);
    docs.push(json!({"meshName": "m", "spec": {"egressFilter": {"type": egress}}}));
    let nodes = 1 + r.below(4);
    for i in 0..nodes {
        let mut spec = json!({});
        let n = r.below(3);
        let mut ports: Vec<u16> = (0..n).map(|_| *r.pick(&PORTS)).collect();
        ports.sort();
        ports.dedup();
        spec["listeners"] = Value::Array(
            ports
                .iter()
                .map(|p| {
                    let proto = *r.pick(&PROTOCOLS);
                    listener(r, *p, proto, certs)
                })
                .collect(),
        );
        spec["serviceDiscovery"] = match r.below(3) {
            0 => {
                json!({"awsCloudMap": {"namespaceName": "m.local", "serviceName": format!("s{}", r.below(3)),
                                        "attributes": [{"key": "v", "value": format!("{}", r.below(2))}]}})
            }
            1 => {
                json!({"dns": {"hostname": format!("n{i}.m.local"), "responseType": *r.pick(&["LOADBALANCER", "ENDPOINTS"])}})
            }
            _ => json!({"dns": {"hostname": "external.example.com"}}),
        };
        let nb = r.below(4);
        spec["backends"] = Value::Array(
            (0..nb)
                .map(|_| {
                    let mut b = json!({"virtualServiceName": *r.pick(&SERVICES)});
                    if r.chance(20) {
                        b["clientPolicy"] = client_policy(r, certs);
                    }
                    json!({"virtualService": b})
                })
                .collect(),
        );
        if r.chance(30) {
            spec["backendDefaults"] = json!({"clientPolicy": client_policy(r, certs)});
        }
        if r.chance(30) {
            spec["logging"] = if r.chance(50) {
                json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%START_TIME% %RESPONSE_CODE%"}}}})
            } else {
                json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [
                    {"key": "code", "value": "%RESPONSE_CODE%"}, {"key": "path", "value": "%REQ(:PATH)%"}]}}}})
            };
        }
        docs.push(json!({"meshName": "m", "virtualNodeName": format!("n{i}"), "spec": spec}));
    }
    let routers = r.below(3);
    for i in 0..routers {
        let n = 1 + r.below(2);
        let mut ls: Vec<(u16, &str)> = (0..n)
            .map(|_| (*r.pick(&PORTS), *r.pick(&PROTOCOLS)))
            .collect();
        ls.sort();
        ls.dedup_by_key(|l| l.0);
        docs.push(json!({"meshName": "m", "virtualRouterName": format!("r{i}"), "spec": {
            "listeners": ls.iter().map(|(p, proto)| json!({"portMapping": {"port": p, "protocol": proto}})).collect::<Vec<_>>()}}));
        for j in 0..r.below(4) {
            let (port, proto) = *r.pick(&ls);
            docs.push(json!({"meshName": "m", "virtualRouterName": format!("r{i}"), "routeName": format!("rt{j}"),
                             "spec": route_spec(r, proto, nodes, port)}));
        }
    }
    for s in SERVICES {
        if r.chance(20) {
            continue;
        }
        let provider = if routers > 0 && r.chance(60) {
            json!({"virtualRouter": {"virtualRouterName": format!("r{}", r.below(routers))}})
        } else {
            json!({"virtualNode": {"virtualNodeName": format!("n{}", r.below(nodes))}})
        };
        docs.push(
            json!({"meshName": "m", "virtualServiceName": s, "spec": {"provider": provider}}),
        );
    }
    if r.chance(70) {
        let n = 1 + r.below(2);
        let mut ls: Vec<(u16, &str)> = (0..n)
            .map(|_| {
                (
                    *r.pick(&[8443u16, 8444]),
                    *r.pick(&["http", "http2", "grpc"]),
                )
            })
            .collect();
        ls.sort();
        ls.dedup_by_key(|l| l.0);
        let listeners: Vec<Value> = ls
            .iter()
            .map(|(p, proto)| {
                let mut l = json!({"portMapping": {"port": p, "protocol": proto}});
                if r.chance(30) {
                    l["tls"] = json!({"mode": *r.pick(&["STRICT", "PERMISSIVE"]), "certificate": cert(r, certs)});
                }
                if r.chance(30) {
                    l["connectionPool"] = match *proto {
                        "http" => json!({"http": {"maxConnections": 10}}),
                        p => json!({p: {"maxRequests": 10}}),
                    };
                }
                l
            })
            .collect();
        let mut spec = json!({"listeners": listeners});
        if r.chance(30) {
            spec["backendDefaults"] =
                json!({"clientPolicy": {"tls": {"validation": {"trust": trust(r, certs)}}}});
        }
        docs.push(json!({"meshName": "m", "virtualGatewayName": "g", "spec": spec}));
        for j in 0..r.below(5) {
            let (_, proto) = *r.pick(&ls);
            docs.push(json!({"meshName": "m", "virtualGatewayName": "g", "gatewayRouteName": format!("gr{j}"),
                             "spec": gateway_route(r, proto)}));
        }
    }
    docs
}

fn random_endpoints(seed: u64) -> Vec<Endpoint> {
    let r = &mut Rng(seed ^ 0x5eed);
    let n = r.below(8);
    (0..n)
        .map(|i| {
            let ip = format!("10.0.{}.{}", r.below(3), 1 + r.below(3));
            if r.chance(50) {
                let v = format!("{}", r.below(2));
                cloud_map(
                    "m.local",
                    &format!("s{}", r.below(3)),
                    &format!("i{i}"),
                    &ip,
                    *r.pick(&PORTS),
                    &[("v", v.as_str())],
                    r.chance(70),
                )
            } else {
                for_node(
                    "m",
                    &format!("n{}", r.below(4)),
                    &format!("i{i}"),
                    &ip,
                    *r.pick(&PORTS),
                    r.chance(70),
                )
            }
        })
        .collect()
}

/// Applies what validation accepts; returns the model and how many documents were accepted.
fn build(docs: &[Value]) -> (Model, usize) {
    let mut m = Model::default();
    let mut ok = 0;
    for d in docs {
        if try_put(&mut m, d).is_ok() {
            ok += 1;
        }
    }
    (m, ok)
}

fn certs_dir() -> &'static str {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        write_certs(d.path(), &["n"]);
        d
    })
    .path()
    .to_str()
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every proxy of a random model translates, and its snapshot is consistent.
    #[test]
    fn random_models_translate_consistently(seed in any::<u64>()) {
        let docs = random_docs(seed, "/certs");
        let (model, _) = build(&docs);
        let eps = random_endpoints(seed);
        for p in proxies(&model) {
            // `snapshot` panics (failing the case) on an error or an inconsistency.
            let s = snapshot(&model, &eps, &p);
            prop_assert!(!s.resources(shoal_xds::ResourceType::Listener).is_empty() || p.contains("virtualGateway"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Translating every proxy with one shared translator (as the agent does) gives exactly
    /// what translating each alone gives, whatever the proxies share, with several options.
    #[test]
    fn shared_translation_equals_translating_alone(seed in any::<u64>()) {
        let docs = random_docs(seed, "/certs");
        let (model, _) = build(&docs);
        let eps = random_endpoints(seed);
        let other = ProxyOptions { egress_port: 16001, ..ProxyOptions::default() };
        let mut batch = Vec::new();
        for p in proxies(&model) {
            let id = ProxyId::parse(&p).unwrap();
            batch.push((id.clone(), ProxyOptions::default()));
            batch.push((id.clone(), other.clone()));
            batch.push((id, ProxyOptions::default()));
        }
        let index = EndpointIndex::new(&eps);
        let shared = translate_many(&model, &eps, &index, &batch);
        for ((id, opts), got) in batch.iter().zip(shared) {
            let alone = translate(&model, &eps, id, opts);
            prop_assert_eq!(&got, &alone, "{}", id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The real Envoy accepts every proxy of random models (with real certificate files).
    #[test]
    fn envoy_accepts_random_models(seed in any::<u64>()) {
        let docs = random_docs(seed, certs_dir());
        let (model, _) = build(&docs);
        let eps = random_endpoints(seed);
        for p in proxies(&model) {
            let s = snapshot(&model, &eps, &p);
            if let Err(e) = envoy_validate(&s, &p) {
                let mut m = Model::default();
                let accepted: Vec<&Value> = docs.iter().filter(|d| try_put(&mut m, d).is_ok()).collect();
                prop_assert!(false, "seed {seed}, proxy {p}: Envoy refused:\n{e}\nmodel: {}",
                    serde_json::to_string(&accepted).unwrap());
            }
        }
    }
}

#[test]
fn random_models_are_not_mostly_refused() {
    // The generator is only useful if validation accepts most of what it makes.
    let mut accepted = 0;
    let mut total = 0;
    let mut proxies_seen = 0;
    for seed in 0..200 {
        let docs = random_docs(seed, "/certs");
        let (model, ok) = build(&docs);
        accepted += ok;
        total += docs.len();
        proxies_seen += proxies(&model).len();
    }
    assert!(accepted * 10 >= total * 7, "{accepted} of {total} accepted");
    assert!(proxies_seen > 300, "{proxies_seen}");
}
