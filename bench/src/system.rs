//! The systems under test, shoal or etcd: reaching a cluster's members, finding its leader,
//! and one client per key (shoal's App Mesh REST API, or etcd's native gRPC API).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::{json, Value};
use shoal::client::{self, Client, Doc};

use crate::etcd::Etcd;

/// A system the benchmarks can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// shoal servers (App Mesh API).
    Shoal,
    /// etcd members (v3 gRPC API).
    Etcd,
}

/// The spec every shoal writer writes (and etcd's writers write as their value).
pub(crate) fn node_spec(port: u64) -> Value {
    // A realistic virtual node (~600 bytes of JSON): listener with health check and timeouts,
    // Cloud Map discovery, two backends.
    json!({
        "listeners": [{
            "portMapping": {"port": 8000 + (port % 1000), "protocol": "http"},
            "healthCheck": {"protocol": "http", "path": "/health", "healthyThreshold": 2,
                            "unhealthyThreshold": 3, "timeoutMillis": 2000, "intervalMillis": 5000},
            "timeout": {"http": {"perRequest": {"value": 15, "unit": "s"}, "idle": {"value": 300, "unit": "s"}}}
        }],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "bench.local", "serviceName": "svc",
                                             "attributes": [{"key": "version", "value": "v1"}]}},
        "backends": [{"virtualService": {"virtualServiceName": "a.bench.local"}},
                     {"virtualService": {"virtualServiceName": "b.bench.local"}}]
    })
}

/// `http://host:port` without a trailing slash (a scheme is added when missing).
pub(crate) fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// `host:port` of an endpoint URL.
pub(crate) fn host_port(url: &str) -> String {
    let s = url.split_once("://").map_or(url, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s).to_string()
}

/// The CPUs process `pid` (a number, or `self`) may run on, as the kernel lists them
/// (`0-1`): the benchmarks print it, and the failover driver restarts a process on the
/// same ones, so that all processes stay pinned as the script pinned them.
pub(crate) fn cpus_allowed(pid: &str) -> Option<String> {
    cpus_allowed_in(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `Cpus_allowed_list` of a `/proc/PID/status` text.
fn cpus_allowed_in(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A short-timeout client for status queries.
pub(crate) fn control_http() -> anyhow::Result<reqwest::Client> {
    shoal::client::http_builder()?
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("GET {url}: the answer is not JSON"))
}

/// The members of a cluster as one of its endpoints sees them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    /// The leader's endpoint URL, if one is known.
    pub(crate) leader: Option<String>,
    /// Every member's endpoint URL.
    pub(crate) all: Vec<String>,
}

/// shoal's view from `/v1/status` of the first endpoint that answers.
pub(crate) async fn shoal_view(http: &reqwest::Client, addrs: &[String]) -> anyhow::Result<View> {
    let mut last = None;
    for a in addrs {
        match get_json(http, &format!("{}/v1/status", base_url(a))).await {
            // Members are reached the way the one that answered was (http or https).
            Ok(st) => {
                let scheme = if base_url(a).starts_with("https://") {
                    "https"
                } else {
                    "http"
                };
                return Ok(shoal_view_of(&st, scheme));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no shoal endpoint given")))
}

fn shoal_view_of(status: &Value, scheme: &str) -> View {
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let url = |m: &Value| {
        m["api_addr"]
            .as_str()
            .map(|a| base_url(&format!("{scheme}://{a}")))
    };
    View {
        leader: members
            .iter()
            .find(|m| !status["leader_id"].is_null() && m["node_id"] == status["leader_id"])
            .and_then(url),
        all: members.iter().filter_map(url).collect(),
    }
}

/// One client's connection to one endpoint and the key it owns.
pub(crate) enum Sink {
    Shoal { client: Client, path: Vec<String> },
    Etcd { client: Etcd, key: Vec<u8> },
}

impl Sink {
    pub(crate) fn shoal(endpoint: &str, mesh: &str, node: &str) -> anyhow::Result<Sink> {
        let mut path = client::collection(shoal_model::Kind::VirtualNode, mesh, "");
        path.push(node.to_string());
        Ok(Sink::Shoal {
            client: Client::new(endpoint)?,
            path,
        })
    }

    /// A client connected now (the benchmark runs: a bad endpoint fails before timing).
    pub(crate) async fn etcd(endpoint: &str, key: &str) -> anyhow::Result<Sink> {
        Ok(Sink::Etcd {
            client: Etcd::connect(endpoint).await?,
            key: key.as_bytes().to_vec(),
        })
    }

    /// A client that connects on first use, each call bounded by `timeout` (the failover
    /// probes, whose members come and go).
    pub(crate) fn etcd_lazy(endpoint: &str, key: &str, timeout: Duration) -> anyhow::Result<Sink> {
        Ok(Sink::Etcd {
            client: Etcd::lazy(endpoint, timeout)?,
            key: key.as_bytes().to_vec(),
        })
    }

    /// One write of `body`: shoal's update request, or etcd's value (the same bytes: both
    /// serialize the JSON with serde_json).
    pub(crate) async fn write(&self, body: Value) -> anyhow::Result<()> {
        match self {
            Sink::Shoal { client, path } => {
                client
                    .call(reqwest::Method::PUT, path, &[], Some(body))
                    .await?;
            }
            Sink::Etcd { client, key } => {
                client.put(key, serde_json::to_vec(&body)?).await?;
            }
        }
        Ok(())
    }

    /// One linearizable read of the client's key: shoal's describe (ReadIndex, the default),
    /// etcd's Range (linearizable, the default). A missing key is an error, so that a run
    /// cannot count cheap "not found" answers as reads.
    pub(crate) async fn read(&self) -> anyhow::Result<()> {
        match self {
            Sink::Shoal { client, path } => {
                client.call(reqwest::Method::GET, path, &[], None).await?;
            }
            Sink::Etcd { client, key } => {
                if client.get(key).await?.is_none() {
                    bail!("etcd has no key {:?}", String::from_utf8_lossy(key));
                }
            }
        }
        Ok(())
    }
}

/// Creates the mesh (if missing) and the virtual nodes `names` (created or updated).
pub(crate) async fn shoal_setup(
    endpoint: &str,
    mesh: &str,
    names: &[String],
) -> anyhow::Result<()> {
    let c = Client::new(endpoint)?;
    let mesh_doc = Doc::from_json(&json!({"meshName": mesh}), "bench")?;
    c.apply(&mesh_doc).await?;
    for name in names {
        let doc = Doc::from_json(
            &json!({"meshName": mesh, "virtualNodeName": name, "spec": node_spec(0)}),
            "bench",
        )?;
        c.apply(&doc).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalize() {
        assert_eq!(base_url("127.0.0.1:2379/"), "http://127.0.0.1:2379");
        assert_eq!(host_port("http://127.0.0.1:2379/v3"), "127.0.0.1:2379");
    }

    #[test]
    fn the_cpu_list_comes_from_proc_status() {
        let st = "Name:\tetcd\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(cpus_allowed_in(st).as_deref(), Some("0-1"));
        assert_eq!(cpus_allowed_in("Name:\tx\n"), None);
        // This test's own process has some CPU to run on.
        assert!(cpus_allowed("self").is_some());
    }

    #[test]
    fn the_leader_comes_from_status() {
        let st = json!({"leader_id": 2, "members": [
            {"node_id": 1, "api_addr": "127.0.0.11:7070"},
            {"node_id": 2, "api_addr": "127.0.0.12:7070"}]});
        let v = shoal_view_of(&st, "http");
        assert_eq!(v.leader.as_deref(), Some("http://127.0.0.12:7070"));
        assert_eq!(v.all.len(), 2);
        let v = shoal_view_of(
            &json!({"leader_id": null, "members": [{"node_id": 1, "api_addr": "a:1"}]}),
            "https",
        );
        assert_eq!(v.leader, None);
        assert_eq!(v.all, vec!["https://a:1".to_string()]);
    }
}
