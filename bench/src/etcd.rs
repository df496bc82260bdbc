//! etcd through its native v3 gRPC API, as etcd's own clients reach it: `KV/Put`, `KV/Range`
//! (linearizable, etcd's default) and `Maintenance/Status` (who leads, how far a member's log
//! is). Native rather than the JSON gateway, so that etcd pays no JSON, base64 or gateway hop
//! that its users would not, and the comparison with shoal's REST API does not flatter shoal.

use std::time::Duration;

use anyhow::{bail, Context};
use tonic::transport::{Channel, Endpoint};

use crate::system::{base_url, View};

/// The messages of etcd's `rpc.proto` the benchmarks use, only the fields they set or read
/// (protobuf skips the others), and the generated clients (`build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    /// `etcdserverpb.ResponseHeader`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    /// `mvccpb.KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }

    /// `etcdserverpb.PutRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// `etcdserverpb.PutResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    /// `etcdserverpb.RangeRequest`: one key; `serializable` false is a linearizable read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bool, tag = "7")]
        pub serializable: bool,
    }

    /// `etcdserverpb.RangeResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
        #[prost(int64, tag = "4")]
        pub count: i64,
    }

    /// `etcdserverpb.StatusRequest` (empty).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    /// `etcdserverpb.StatusResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
        #[prost(uint64, tag = "5")]
        pub raft_index: u64,
        #[prost(uint64, tag = "6")]
        pub raft_term: u64,
        #[prost(string, repeated, tag = "8")]
        pub errors: Vec<String>,
    }

    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.KV.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Maintenance.rs"));
}

use pb::k_v_client::KVClient as KvClient;
use pb::maintenance_client::MaintenanceClient;

/// The endpoint of an etcd member's client URL; `request` bounds each call.
fn endpoint(addr: &str, request: Duration) -> anyhow::Result<Endpoint> {
    let url = base_url(addr);
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| format!("{url:?} is not an etcd client URL"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(request)
        .tcp_nodelay(true))
}

/// One client's connection (one HTTP/2 connection, like each shoal client's one HTTP
/// connection) to one etcd member.
#[derive(Clone)]
pub(crate) struct Etcd {
    kv: KvClient<Channel>,
}

impl Etcd {
    /// Connects now, so that a wrong address fails before any run starts.
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Etcd> {
        let channel = endpoint(addr, Duration::from_secs(30))?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {}", base_url(addr)))?;
        Ok(Etcd {
            kv: KvClient::new(channel),
        })
    }

    /// Connects on first use (and again after a failure), for members that may be down.
    pub(crate) fn lazy(addr: &str, request: Duration) -> anyhow::Result<Etcd> {
        Ok(Etcd {
            kv: KvClient::new(endpoint(addr, request)?.connect_lazy()),
        })
    }

    /// `KV/Put` of `value` at `key`: answered once a quorum has the entry in its fsynced WAL
    /// and the leader has applied it.
    pub(crate) async fn put(&self, key: &[u8], value: Vec<u8>) -> anyhow::Result<()> {
        self.kv
            .clone()
            .put(pb::PutRequest {
                key: key.to_vec(),
                value,
            })
            .await
            .context("etcd Put")?;
        Ok(())
    }

    /// `KV/Range` of one key with etcd's default, linearizable consistency (a ReadIndex
    /// round through the leader); its value, or `None` if the key does not exist.
    pub(crate) async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let resp = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: key.to_vec(),
                serializable: false,
            })
            .await
            .context("etcd Range")?
            .into_inner();
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }
}

/// `Maintenance/Status` of one member, over a connection of its own with short timeouts: the
/// failover driver asks members that may just have been killed or restarted.
pub(crate) async fn status(addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let channel = endpoint(addr, Duration::from_secs(2))?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .with_context(|| format!("connecting to etcd at {}", base_url(addr)))?;
    let st = MaintenanceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .with_context(|| format!("etcd Status of {}", base_url(addr)))?
        .into_inner();
    if st.header.is_none() {
        bail!("etcd Status of {}: no header", base_url(addr));
    }
    Ok(st)
}

/// Whether a member's status says it is the leader.
pub(crate) fn leads(st: &pb::StatusResponse) -> bool {
    st.leader != 0 && st.header.as_ref().map(|h| h.member_id) == Some(st.leader)
}

/// etcd's view: every given endpoint, and the one whose member id is the leader's.
pub(crate) async fn etcd_view(addrs: &[String]) -> View {
    let mut leader = None;
    for a in addrs {
        if let Ok(st) = status(a).await {
            if leads(&st) {
                leader = Some(base_url(a));
            }
        }
    }
    View {
        leader,
        all: addrs.iter().map(|a| base_url(a)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_put_encodes_as_etcd_expects() {
        // Field 1 (key), length-delimited: tag 0x0a; field 2 (value): tag 0x12.
        let bytes = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"vv".to_vec(),
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x12, 2, b'v', b'v']);
    }

    #[test]
    fn a_default_range_is_linearizable() {
        // serializable=false is protobuf's default and so is not on the wire at all: the
        // request etcd sees is exactly a default (linearizable) Range of the key.
        let bytes = pb::RangeRequest {
            key: b"k".to_vec(),
            serializable: false,
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k']);
        let stale = pb::RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
        }
        .encode_to_vec();
        assert_eq!(stale, [0x0a, 1, b'k', 0x38, 1]);
    }

    #[test]
    fn the_leader_is_the_member_that_names_itself() {
        let st = |me: u64, leader: u64| pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                member_id: me,
                ..Default::default()
            }),
            leader,
            ..Default::default()
        };
        assert!(leads(&st(7, 7)));
        assert!(!leads(&st(7, 9)));
        assert!(!leads(&st(0, 0)), "no leader known");
    }
}
