//! The ADS server against the real Envoy 1.40 (`target/tools/envoy/envoy`, or `SHOAL_ENVOY`),
//! state of the world and delta: Envoy started from shoal's bootstrap gets a cluster (EDS), its
//! endpoints, a listener and a route over ADS, serves traffic with them, follows a route change,
//! rejects a bad cluster without a resend loop while it keeps its last good configuration, and
//! resumes against a restarted server without being sent anything again. What Envoy applied is
//! read from its admin `/config_dump`, not only inferred from traffic.

mod ads_support;
#[path = "translate_common.rs"]
mod translate_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ads_support::Harness;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use serde_json::Value;
use shoal_xds::bootstrap::{bootstrap, BootstrapParams};
use shoal_xds::{ProxyId, ProxyOptions, ResourceType, Snapshot};

const NODE: &str = ads_support::NODE;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Envoy, killed when dropped.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn start(xds: SocketAddr, delta: bool) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let b = bootstrap(&BootstrapParams {
            proxy: ProxyId::parse(NODE).unwrap(),
            options: ProxyOptions::default(),
            xds: xds.to_string(),
            admin_address: "127.0.0.1".into(),
            admin_port,
            delta,
            sds_socket: shoal_xds::translate::SDS_SOCKET.into(),
            proxy_token: None,
        });
        let config = dir.path().join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&b).unwrap()).unwrap();
        let log = dir.path().join("envoy.log");
        let child = Command::new(translate_common::envoy())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info", "--log-path"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Envoy starts");
        Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log,
            _dir: dir,
        }
    }

    /// The last lines of Envoy's log.
    fn log(&self) -> String {
        let all = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `/config_dump` (with endpoints), or `None` while the admin port is not up.
    fn config_dump(&self) -> Option<Value> {
        let (status, resp) = http_get(self.admin, "/config_dump?include_eds", "admin").ok()?;
        (status == 200).then(|| serde_json::from_str(body_of(&resp)).ok())?
    }

    /// Waits (bounded) until `f` holds of the config dump.
    async fn until(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(dump) = self.config_dump() {
                if f(&dump) {
                    return dump;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for Envoy: {what}\nconfig dump: {}\nEnvoy log:\n{}",
                        serde_json::to_string_pretty(&dump).unwrap(),
                        self.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("Envoy's admin never answered\nEnvoy log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One HTTP/1.1 GET: the status and the whole response (headers and body).
fn http_get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, format!("{head}\r\n\r\n{body}")))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// A backend that answers every request with 200 "hello from the backend".
async fn backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello from the backend";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(addr.port() as u32)),
            ..Default::default()
        })),
    }
}

/// The cluster, with a connect timeout in seconds (a negative one is what Envoy rejects).
fn cluster(connect_timeout: i64) -> Cluster {
    Cluster {
        name: "backend".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: connect_timeout,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn snapshot(backend: SocketAddr, listen: SocketAddr, connect_timeout: i64, tag: &str) -> Snapshot {
    let mut s = Snapshot::default();
    s.add(ResourceType::Cluster, "backend", &cluster(connect_timeout));
    s.add(
        ResourceType::Endpoint,
        "backend",
        &ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(backend)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let hcm = HttpConnectionManager {
        stat_prefix: "egress".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: "egress".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    s.add(
        ResourceType::Listener,
        "egress",
        &Listener {
            name: "egress".into(),
            address: Some(socket(listen)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    s.add(
        ResourceType::Route,
        "egress",
        &RouteConfiguration {
            name: "egress".into(),
            response_headers_to_add: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "x-shoal-tag".into(),
                    value: tag.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            "backend".into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    s
}

/// The config dump section of a type (`ClustersConfigDump`, …).
fn section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{kind}"))
        .unwrap_or(&Value::Null)
}

/// The connect timeout of the active dynamic cluster "backend", as Envoy reports it.
fn cluster_timeout(dump: &Value) -> Option<String> {
    section(dump, "ClustersConfigDump")["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"]["name"] == "backend")
        .and_then(|c| c["cluster"]["connect_timeout"].as_str())
        .map(str::to_string)
}

fn listener_active(dump: &Value) -> bool {
    section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .is_some_and(|ls| {
            ls.iter()
                .any(|l| l["name"] == "egress" && !l["active_state"].is_null())
        })
}

/// The tag the active route configuration adds to responses.
fn route_tag(dump: &Value) -> Option<String> {
    section(dump, "RoutesConfigDump")["dynamic_route_configs"]
        .as_array()?
        .iter()
        .find(|r| r["route_config"]["name"] == "egress")
        .and_then(|r| r["route_config"]["response_headers_to_add"][0]["header"]["value"].as_str())
        .map(str::to_string)
}

fn endpoints_port(dump: &Value) -> Option<u64> {
    section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"]
        .as_array()?
        .iter()
        .find(|e| e["endpoint_config"]["cluster_name"] == "backend")
        .and_then(|e| {
            e["endpoint_config"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"]
                .as_u64()
        })
}

/// Requests through Envoy's listener until one answers with `tag` (bounded).
async fn traffic_with(listen: SocketAddr, tag: &str, envoy: &Envoy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = http_get(listen, "/", "backend.local");
        if let Ok((200, resp)) = &last {
            if resp.contains("hello from the backend")
                && resp
                    .to_ascii_lowercase()
                    .contains(&format!("x-shoal-tag: {tag}"))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no response with x-shoal-tag {tag} through Envoy (last: {last:?})\nEnvoy log:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn envoy_follows_the_server(delta: bool) {
    let backend = backend().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let h = Harness::start().await;
    h.source.set(NODE, snapshot(backend, listen, 1, "one"));
    let envoy = Envoy::start(h.addr, delta);

    // Initial configuration: every type, applied, and traffic flows.
    envoy
        .until("cluster, endpoints, listener and route", |d| {
            cluster_timeout(d).as_deref() == Some("1s")
                && endpoints_port(d) == Some(backend.port() as u64)
                && listener_active(d)
                && route_tag(d).as_deref() == Some("one")
        })
        .await;
    traffic_with(listen, "one", &envoy).await;
    h.until("Envoy's ACKs of all four types", |s| {
        [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Route,
        ]
        .iter()
        .all(|t| s.acks.get(*t) >= 1)
    })
    .await;
    assert_eq!(h.ads.stats().nacks.total(), 0, "{:?}", h.ads.stats());
    let before = h.ads.stats();

    // A route change: only RDS is sent, and Envoy serves with it.
    h.source.set(NODE, snapshot(backend, listen, 1, "two"));
    envoy
        .until("the new route", |d| route_tag(d).as_deref() == Some("two"))
        .await;
    traffic_with(listen, "two", &envoy).await;
    h.until("the route ACK", |s| {
        s.acks.get(ResourceType::Route) == before.acks.get(ResourceType::Route) + 1
    })
    .await;
    let after = h.ads.stats();
    assert_eq!(
        after.responses.total(),
        before.responses.total() + 1,
        "{after:?}"
    );

    // A cluster Envoy rejects, with a route change behind it: one NACK, no resend, the route
    // held back, and Envoy keeps serving its last good configuration.
    h.source.set(NODE, snapshot(backend, listen, -1, "three"));
    h.until("Envoy's NACK", |s| s.nacks.get(ResourceType::Cluster) == 1)
        .await;
    let nack = h.ads.stats().last_nack.expect("a NACK is recorded");
    assert_eq!(nack.ty, ResourceType::Cluster);
    assert!(!nack.message.is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = h.ads.stats();
    assert_eq!(held.nacks.total(), 1, "no NACK loop: {held:?}");
    assert_eq!(
        held.responses.total(),
        after.responses.total() + 1,
        "only the rejected CDS was sent: {held:?}"
    );
    let dump = envoy.config_dump().unwrap();
    assert_eq!(cluster_timeout(&dump).as_deref(), Some("1s"));
    assert_eq!(route_tag(&dump).as_deref(), Some("two"));
    traffic_with(listen, "two", &envoy).await;

    // Fixed: the cluster and then the held route go out.
    h.source.set(NODE, snapshot(backend, listen, 2, "three"));
    envoy
        .until("the fixed cluster and the route", |d| {
            cluster_timeout(d).as_deref() == Some("2s") && route_tag(d).as_deref() == Some("three")
        })
        .await;
    traffic_with(listen, "three", &envoy).await;

    // The server restarts on the same port: Envoy keeps serving meanwhile, resumes with what it
    // has, and is sent nothing again.
    let addr = h.addr;
    let snap = snapshot(backend, listen, 2, "three");
    h.stop().await;
    traffic_with(listen, "three", &envoy).await;
    let h2 = Harness::start_on(addr).await;
    h2.source.set(NODE, snap);
    h2.until("Envoy to reconnect", |s| s.streams_open == 1)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = h2.ads.stats();
    assert_eq!(
        resumed.responses.total(),
        0,
        "a resuming Envoy with current versions is sent nothing: {resumed:?}"
    );
    traffic_with(listen, "three", &envoy).await;
    // And it still follows changes.
    h2.source.set(NODE, snapshot(backend, listen, 2, "four"));
    traffic_with(listen, "four", &envoy).await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_state_of_the_world() {
    envoy_follows_the_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_delta() {
    envoy_follows_the_server(true).await;
}
