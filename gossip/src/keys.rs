//! Every chitchat key this crate reads or writes, in one place.
//!
//! A node's chitchat state is a flat map of string keys to string values, gossiped to every
//! other node, so the key names are a wire contract between shoal versions: renaming a key is a
//! breaking change, adding one is not. Two families share the map:
//!
//! * **metadata keys** ([`SCHEMA`], [`ROLE`], …): bare words without a `:`, written only by
//!   [`crate::Gossip::start`] and [`crate::Gossip::set_meta`] and read back by the member parser;
//! * **application keys**: `<prefix><rest>` where the prefix is one of [`APP_PREFIXES`] (today
//!   only [`INSTANCE_PREFIX`]); written through [`crate::Gossip::publish_instance`] /
//!   [`crate::Gossip::withdraw_instance`] or the raw [`crate::Gossip::set_key`] /
//!   [`crate::Gossip::delete_key`], which refuse any other key so that an application key can
//!   never shadow or delete node metadata.
//!
//! Keys are short because every node's full state travels in gossip datagrams (see
//! [below](#how-large-a-nodes-state-may-be)).
//!
//! # Instance keys
//!
//! An agent publishes each service instance registered on its host, with the result of its
//! health checks, as one key-value ([`crate::Gossip::publish_instance`]):
//!
//! ```text
//! inst:<instance key>  =  <health><instance JSON>
//! inst:apps.local/web/web-1  =  1{"ns":"apps.local","svc":"web","id":"web-1","ip":"10.0.1.5","port":8080}
//! ```
//!
//! * `<instance key>` is [`Instance::key`] of the (normalized) instance: `<namespace>/<service>/<id>`
//!   for a Cloud Map instance, `@<mesh>/<virtual node>/<id>` for one registered only for a
//!   virtual node. At most 195 bytes, so the whole key stays under [`MAX_KEY_LEN`].
//! * `<health>` is one ASCII byte: [`HEALTHY`] (`1`, checks pass) or [`UNHEALTHY`] (`0`).
//! * `<instance JSON>` is [`Instance::encode`]: compact JSON with short member names, at most
//!   [`shoal_model::discovery::MAX_RECORD`] bytes.
//!
//! Health and record share one key on purpose. chitchat versions and ships whole key-values, so
//! a health flip re-sends this one key-value (key + value + 12 bytes of framing, about 150 bytes
//! for a typical instance, zstd-compressed with the rest of the delta). A separate health key
//! would make a flip a few dozen bytes cheaper but double the keys per instance and let a reader
//! see an instance without its health. Publishing an unchanged value sends nothing (chitchat
//! keeps the version of a key whose value does not change), so an agent may re-publish every
//! instance after every health check round.
//!
//! A reader skips (and counts, see [`crate::Gossip::invalid_instance_values`]) a value that is
//! empty, starts with another byte, holds JSON that [`Instance::decode`] refuses, or describes an
//! instance whose key is not the one it is stored under. A future health state therefore needs a
//! new leading byte and must be rolled out to readers before writers use it.
//!
//! Withdrawing an instance deletes its key ([`crate::Gossip::withdraw_instance`]): chitchat keeps
//! a tombstone, gossiped like a write so that every reader drops the instance, for
//! [`crate::GossipConfig::marked_for_deletion_grace`] (default 15 minutes) and then forgets it.
//! A peer that was cut off for longer than that cannot replay the deletion; chitchat detects
//! this (its digest is older than the tombstones collected since) and resends that node's
//! whole state, so a withdrawn instance cannot come back.
//!
//! # How large a node's state may be
//!
//! What chitchat 0.13 does on the wire (read from its source, `server.rs`, `state.rs`,
//! `delta.rs`):
//!
//! * Every message is one UDP datagram of at most [`MAX_DATAGRAM`] = 65,507 bytes. On a network
//!   with a 1,500-byte MTU a full datagram travels as about 45 IP fragments and is lost if one
//!   fragment is; on loopback it is one packet. chitchat does not set the socket buffer sizes.
//! * A SYN carries the digest of every node the sender knows, never split: per node its id
//!   (2 + name + 8 + 7 bytes for IPv4 or 19 for IPv6) plus 24 bytes of heartbeat and versions,
//!   about 70 bytes with a 30-byte name. The digest therefore caps the cluster at roughly 900
//!   nodes, and the reply (SYN-ACK: digest + delta) has less room for data as the cluster grows.
//! * A delta is **not** limited to one datagram's worth of state: the sender puts in the
//!   key-values the peer lacks in version order, nodes the peer does not know first, and stops
//!   at the datagram budget; the peer asks for the rest in its next exchanges. Deltas are
//!   zstd-compressed in 16 KiB blocks (the budget counts the open block uncompressed). Only a
//!   single key-value must fit whole, which [`MAX_VALUE_LEN`] guarantees.
//! * Each gossip round a node starts exchanges with 3 random live peers (plus sometimes a seed
//!   and a dead node) and answers the exchanges others start; each exchange moves at most one
//!   delta each way.
//!
//! So the size of a node's state is a matter of time and memory, not of packet size: a host
//! with 1,000 typical instances (about 150 bytes per key-value, 150 KB raw, a few datagrams once
//! compressed) reaches a new peer within a few exchanges, and every node keeps every node's
//! instances in memory. shoal bounds both with [`MAX_INSTANCES_PER_NODE`] and
//! [`MAX_INSTANCE_BYTES_PER_NODE`]: at most 1,000 instances and 1 MiB of instance keys and
//! values per host; even incompressible, 1 MiB is 19 full datagrams in a 100-node cluster (a few
//! rounds of exchanges), and 100 full hosts cost each node about 100 MiB. Publishing beyond either cap fails with
//! [`crate::Error::TooManyInstances`] or [`crate::Error::InstanceBytesExceeded`].

use shoal_model::discovery::{Instance, InvalidInstance};

use crate::member::{NodeMeta, Role};

/// Version of the metadata schema below. Readers accept any version `>= 1` and read the keys
/// they know, so adding keys is compatible; a breaking change must use new key names.
pub const SCHEMA_VERSION: u32 = 1;

/// Metadata schema version of the node (decimal). Required: a node without it is not a shoal
/// member (yet) and is skipped.
pub const SCHEMA: &str = "schema";
/// `server` or `agent`. Required.
pub const ROLE: &str = "role";
/// Raft node id (decimal u64), servers only.
pub const RAFT_ID: &str = "raft";
/// Address of the HTTP API (`host:port`).
pub const API_ADDR: &str = "api";
/// Address of the server-to-server gRPC endpoint (Raft RPC, watch streams).
pub const GRPC_ADDR: &str = "grpc";
/// Address of the agent's xDS (ADS) server.
pub const XDS_ADDR: &str = "xds";
/// Address of the agent's DNS server.
pub const DNS_ADDR: &str = "dns";
/// Availability zone of the host.
pub const ZONE: &str = "zone";
/// shoal version of the node. Required.
pub const VERSION: &str = "ver";
/// Opaque incarnation of the node's data (e.g. the Raft cluster id it belongs to).
pub const INCARNATION: &str = "inc";
/// `1` once the node's Raft state is initialized (member of a formed cluster), else `0`.
pub const RAFT_INITIALIZED: &str = "rinit";
/// The id of the Raft cluster a server belongs to, once that cluster named itself.
pub const CLUSTER_ID: &str = "cid";

/// All metadata keys, in the order they are written.
pub const METADATA_KEYS: [&str; 12] = [
    SCHEMA,
    ROLE,
    RAFT_ID,
    API_ADDR,
    GRPC_ADDR,
    XDS_ADDR,
    DNS_ADDR,
    ZONE,
    VERSION,
    INCARNATION,
    RAFT_INITIALIZED,
    CLUSTER_ID,
];

/// Prefix of the keys under which an agent publishes a registered service instance
/// (`inst:<instance key>`, one key per instance; see the [module docs](self#instance-keys)).
pub const INSTANCE_PREFIX: &str = "inst:";

/// First byte of an instance value whose health checks pass.
pub const HEALTHY: u8 = b'1';
/// First byte of an instance value whose health checks fail.
pub const UNHEALTHY: u8 = b'0';

/// Most instances one node may publish (see the [module docs](self#how-large-a-nodes-state-may-be)).
pub const MAX_INSTANCES_PER_NODE: usize = 1_000;
/// Most bytes of instance keys and values (prefix included) one node may publish.
pub const MAX_INSTANCE_BYTES_PER_NODE: usize = 1 << 20;
/// Largest UDP payload chitchat 0.13 sends or receives (its `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`).
pub const MAX_DATAGRAM: usize = 65_507;

/// Prefixes [`crate::Gossip::set_key`] accepts. A new family of application keys gets its
/// prefix here, so that every key on the wire is listed in this module.
pub const APP_PREFIXES: [&str; 1] = [INSTANCE_PREFIX];

/// Longest key [`crate::Gossip::set_key`] accepts, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Longest value [`crate::Gossip::set_key`] accepts, in bytes. chitchat encodes lengths as u16
/// and never splits one key-value across datagrams, so a value must stay far below 64 KiB; an
/// instance record is a few hundred bytes.
pub const MAX_VALUE_LEN: usize = 8 * 1024;

/// Longest metadata value (an address, a zone, a version string), in bytes.
pub const MAX_META_VALUE_LEN: usize = 255;

/// True if `key` may be written by [`crate::Gossip::set_key`]: it starts with one of
/// [`APP_PREFIXES`], has something after the prefix, and is at most [`MAX_KEY_LEN`] bytes.
pub fn is_app_key(key: &str) -> bool {
    key.len() <= MAX_KEY_LEN
        && APP_PREFIXES
            .iter()
            .any(|prefix| key.len() > prefix.len() && key.starts_with(prefix))
}

/// The chitchat key of the instance whose [`Instance::key`] is `instance_key`.
pub fn instance_key(instance_key: &str) -> String {
    format!("{INSTANCE_PREFIX}{instance_key}")
}

/// The value published for `instance`: the health byte, then [`Instance::encode`].
pub fn encode_instance(instance: &Instance, healthy: bool) -> String {
    let health = if healthy { HEALTHY } else { UNHEALTHY };
    let json = instance.encode();
    let mut value = String::with_capacity(1 + json.len());
    value.push(char::from(health));
    value.push_str(&json);
    value
}

/// Reads an instance value back: the instance and whether it is healthy. `key` is the full
/// chitchat key (with [`INSTANCE_PREFIX`]); the decoded instance must be the one that key names.
pub fn decode_instance(key: &str, value: &str) -> Result<(Instance, bool), InvalidInstance> {
    let Some(name) = key.strip_prefix(INSTANCE_PREFIX) else {
        return Err(InvalidInstance(format!("{key:?} is not an instance key")));
    };
    let healthy = match value.as_bytes().first() {
        Some(&HEALTHY) => true,
        Some(&UNHEALTHY) => false,
        Some(other) => {
            return Err(InvalidInstance(format!(
                "unknown health byte {:?}",
                char::from(*other)
            )))
        }
        None => return Err(InvalidInstance("empty instance value".into())),
    };
    // The first byte is ASCII, so slicing after it stays on a char boundary.
    let instance = Instance::decode(&value[1..])?;
    if instance.key() != name {
        return Err(InvalidInstance(format!(
            "instance {} published under key {name:?}",
            instance.key()
        )));
    }
    Ok((instance, healthy))
}

/// Checks that this node may store `value` under the instance key `key`, given the instance
/// key-values it already publishes (`published`, which may include `key` itself): the count
/// stays within [`MAX_INSTANCES_PER_NODE`] and the bytes within [`MAX_INSTANCE_BYTES_PER_NODE`].
pub(crate) fn check_instance_budget<'a>(
    published: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &str,
    value: &str,
) -> Result<(), crate::Error> {
    let mut count = 1;
    let mut bytes = key.len() + value.len();
    for (k, v) in published {
        if k != key {
            count += 1;
            bytes += k.len() + v.len();
        }
    }
    if count > MAX_INSTANCES_PER_NODE {
        return Err(crate::Error::TooManyInstances {
            max: MAX_INSTANCES_PER_NODE,
        });
    }
    if bytes > MAX_INSTANCE_BYTES_PER_NODE {
        return Err(crate::Error::InstanceBytesExceeded {
            key: key.to_string(),
            bytes,
            max: MAX_INSTANCE_BYTES_PER_NODE,
        });
    }
    Ok(())
}

/// The metadata key-values of `meta`; `None` means "the key must be absent" (an optional field
/// that is unset), so that clearing a field is gossiped as a deletion.
pub(crate) fn encode_meta(meta: &NodeMeta) -> Vec<(&'static str, Option<String>)> {
    vec![
        (SCHEMA, Some(SCHEMA_VERSION.to_string())),
        (ROLE, Some(meta.role.as_str().to_string())),
        (RAFT_ID, meta.raft_id.map(|id| id.to_string())),
        (API_ADDR, meta.api_addr.clone()),
        (GRPC_ADDR, meta.grpc_addr.clone()),
        (XDS_ADDR, meta.xds_addr.clone()),
        (DNS_ADDR, meta.dns_addr.clone()),
        (ZONE, meta.zone.clone()),
        (VERSION, Some(meta.version.clone())),
        (INCARNATION, meta.incarnation.clone()),
        (
            RAFT_INITIALIZED,
            Some(if meta.raft_initialized { "1" } else { "0" }.to_string()),
        ),
        (CLUSTER_ID, meta.cluster_id.clone()),
    ]
}

/// Checks that `meta` can be gossiped: every string value is at most [`MAX_META_VALUE_LEN`]
/// bytes. Returns the name of the first offending key.
pub(crate) fn check_meta(meta: &NodeMeta) -> Result<(), &'static str> {
    for (key, value) in encode_meta(meta) {
        if value.is_some_and(|v| v.len() > MAX_META_VALUE_LEN) {
            return Err(key);
        }
    }
    Ok(())
}

/// Reads the metadata keys back; `get` returns the live (non-deleted) value of a key. `None` if
/// a required key is missing or any present key holds garbage.
pub(crate) fn decode_meta<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<NodeMeta> {
    let schema: u32 = get(SCHEMA)?.parse().ok()?;
    if schema < 1 {
        return None;
    }
    let role: Role = get(ROLE)?.parse().ok()?;
    let raft_id = match get(RAFT_ID) {
        Some(raw) => Some(raw.parse::<u64>().ok()?),
        None => None,
    };
    let raft_initialized = match get(RAFT_INITIALIZED) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return None,
    };
    let text = |key: &str| get(key).map(str::to_string);
    Some(NodeMeta {
        role,
        raft_id,
        api_addr: text(API_ADDR),
        grpc_addr: text(GRPC_ADDR),
        xds_addr: text(XDS_ADDR),
        dns_addr: text(DNS_ADDR),
        zone: text(ZONE),
        version: text(VERSION)?,
        incarnation: text(INCARNATION),
        raft_initialized,
        cluster_id: text(CLUSTER_ID),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Bytes one key-value takes in a chitchat delta: op tag (1) + key (u16 length + bytes) +
    /// value (u16 length + bytes) + version (8) + deletion status (1).
    fn kv_wire_len(key: &str, value: &str) -> usize {
        1 + 2 + key.len() + 2 + value.len() + 8 + 1
    }

    fn big_meta() -> NodeMeta {
        let v6 = "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:65535".to_string();
        NodeMeta {
            role: Role::Server,
            raft_id: Some(u64::MAX),
            api_addr: Some(v6.clone()),
            grpc_addr: Some(v6.clone()),
            xds_addr: Some(v6.clone()),
            dns_addr: Some(v6),
            zone: Some("ap-southeast-2-akl-1a".into()),
            version: "0.1.0-rc.12+g0123456789ab".into(),
            incarnation: Some("4f9c2a2e-5b1d-4e0a-9a53-7c1f0e2d3b4a".into()),
            raft_initialized: true,
            cluster_id: Some("0b4e7c1a-93d2-4f55-8a1e-2c6d9f30b7e4".into()),
        }
    }

    #[test]
    fn metadata_of_one_node_is_well_under_the_datagram_cap() {
        let meta = big_meta();
        // The node's id (name, generation, address) travels next to its key-values.
        let id_len = 2 + 255 + 8 + 19;
        let kv_len: usize = encode_meta(&meta)
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| kv_wire_len(k, v)))
            .sum();
        let total = id_len + kv_len;
        assert!(total < 1024, "metadata of one node takes {total} bytes");
        assert!(total < 65_507 / 32);
    }

    #[test]
    fn meta_round_trips_through_the_keys() {
        for meta in [
            big_meta(),
            NodeMeta::new(Role::Agent, "0.1.0"),
            NodeMeta {
                raft_id: Some(0),
                ..NodeMeta::new(Role::Server, "x")
            },
        ] {
            let map: BTreeMap<&str, String> = encode_meta(&meta)
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            let decoded = decode_meta(|k| map.get(k).map(String::as_str));
            assert_eq!(decoded, Some(meta));
        }
    }

    #[test]
    fn every_metadata_key_is_listed_and_none_looks_like_an_app_key() {
        let written: Vec<&str> = encode_meta(&big_meta()).iter().map(|(k, _)| *k).collect();
        assert_eq!(written, METADATA_KEYS);
        for key in METADATA_KEYS {
            assert!(!key.contains(':'), "{key}");
            assert!(!is_app_key(key), "{key}");
        }
        let mut sorted = METADATA_KEYS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), METADATA_KEYS.len(), "duplicate metadata key");
    }

    #[test]
    fn app_keys_need_a_reserved_prefix_and_a_bounded_length() {
        assert!(is_app_key("inst:web/web-1"));
        assert!(!is_app_key("inst:"));
        assert!(!is_app_key("role"));
        assert!(!is_app_key("other:x"));
        assert!(!is_app_key(""));
        assert!(is_app_key(&format!("inst:{}", "a".repeat(MAX_KEY_LEN - 5))));
        assert!(!is_app_key(&format!("inst:{}", "a".repeat(MAX_KEY_LEN))));
    }

    fn web(id: &str) -> Instance {
        Instance {
            namespace: "apps.local".into(),
            service: "web".into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: id.into(),
            address: "10.0.1.5".parse().unwrap(),
            port: 8080,
            attributes: BTreeMap::from([("AZ".to_string(), "eu-west-1a".to_string())]),
        }
    }

    /// An instance with every name at its longest and the largest record allowed.
    fn largest() -> Instance {
        let name = |c: char| c.to_string().repeat(shoal_model::discovery::MAX_NAME);
        let mut inst = Instance {
            namespace: name('n'),
            service: name('s'),
            mesh: name('m'),
            virtual_node: name('v'),
            id: name('i'),
            address: "2001:db8::1".parse().unwrap(),
            port: 65535,
            attributes: BTreeMap::new(),
        };
        let mut i = 0;
        while inst.encode().len() + 170 < shoal_model::discovery::MAX_RECORD {
            inst.attributes.insert(format!("k{i:02}"), "x".repeat(150));
            i += 1;
        }
        inst.normalize().expect("largest instance is valid")
    }

    #[test]
    fn instance_values_round_trip() {
        let node_only = Instance {
            namespace: String::new(),
            service: String::new(),
            mesh: "m1".into(),
            virtual_node: "vn-a".into(),
            attributes: BTreeMap::new(),
            ..web("a-1")
        };
        for inst in [web("web-1"), node_only, largest()] {
            let key = instance_key(&inst.key());
            assert!(is_app_key(&key), "{key}");
            for healthy in [true, false] {
                let value = encode_instance(&inst, healthy);
                assert!(value.len() <= MAX_VALUE_LEN);
                assert_eq!(decode_instance(&key, &value), Ok((inst.clone(), healthy)));
            }
        }
        assert_eq!(
            encode_instance(&web("web-1"), true),
            r#"1{"ns":"apps.local","svc":"web","id":"web-1","ip":"10.0.1.5","port":8080,"attrs":{"AZ":"eu-west-1a"}}"#
        );
        assert!(encode_instance(&web("web-1"), false).starts_with("0{"));
    }

    #[test]
    fn garbage_instance_values_are_refused() {
        let key = instance_key("apps.local/web/web-1");
        let json = web("web-1").encode();
        let garbage = [
            String::new(),
            "1".into(),
            "2".to_string() + &json,
            "h".to_string() + &json,
            json.clone(),
            "1not json".into(),
            "1{}".into(),
            "1[1,2]".into(),
            "1".to_string() + &json.replace("8080", "0"),
            "1".to_string() + &json.replace("web-1", "web 1"),
            "1".to_string() + &json + "x",
            "\u{e9}".to_string() + &json,
            "1".to_string() + &"{".repeat(10_000),
        ];
        for value in &garbage {
            assert!(decode_instance(&key, value).is_err(), "{value:?}");
        }
        // A valid record under another instance's key, or under a non-instance key.
        let other = encode_instance(&web("web-2"), true);
        assert!(decode_instance(&key, &other).is_err());
        assert!(decode_instance("apps.local/web/web-1", &other).is_err());
        assert!(decode_instance("role", "1{}").is_err());
    }

    #[test]
    fn the_instance_budget_caps_count_and_bytes() {
        let kvs: Vec<(String, String)> = (0..MAX_INSTANCES_PER_NODE)
            .map(|i| {
                let inst = web(&format!("web-{i}"));
                (instance_key(&inst.key()), encode_instance(&inst, true))
            })
            .collect();
        let published = || kvs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let (last_key, last_value) = kvs.last().unwrap();
        // Publishing the 1,000th is fine, the 1,001st is refused; re-publishing one is fine.
        let (first, rest) = kvs.split_last().unwrap();
        let rest = || rest.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(check_instance_budget(rest(), &first.0, &first.1).is_ok());
        let new = instance_key("apps.local/web/web-new");
        assert!(matches!(
            check_instance_budget(published(), &new, last_value),
            Err(crate::Error::TooManyInstances {
                max: MAX_INSTANCES_PER_NODE
            })
        ));
        assert!(check_instance_budget(published(), last_key, "0{}").is_ok());
        // Large records hit the byte cap first.
        let big = encode_instance(&largest(), true);
        let big_kvs: Vec<(String, String)> = (0..MAX_INSTANCE_BYTES_PER_NODE / big.len())
            .map(|i| (instance_key(&format!("x/y/{i}")), big.clone()))
            .collect();
        let err = check_instance_budget(
            big_kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &new,
            &big,
        );
        assert!(
            matches!(err, Err(crate::Error::InstanceBytesExceeded { bytes, .. }) if bytes > MAX_INSTANCE_BYTES_PER_NODE),
            "{err:?}"
        );
    }

    /// Bytes of one node's entry in a V0 digest: id (name, generation, address) + heartbeat,
    /// last GC version and max version.
    fn digest_entry_len(name_len: usize, ipv6: bool) -> usize {
        2 + name_len + 8 + if ipv6 { 19 } else { 7 } + 24
    }

    #[test]
    fn limits_of_a_node_state_on_the_wire() {
        // The message header is 4 bytes; a SYN-ACK also carries the sender's digest.
        let budget = |nodes: usize| MAX_DATAGRAM - 4 - 2 - nodes * digest_entry_len(30, true);

        // The digest of the whole cluster travels unsplit: it caps the cluster size.
        let max_nodes = (MAX_DATAGRAM - 4 - 2) / digest_entry_len(30, false);
        assert!((800..1_000).contains(&max_nodes), "{max_nodes}");

        // One key-value always fits one delta (chitchat never splits a key-value), even with
        // the digest of a 500-node cluster in the same datagram and in one 16 KiB zstd block.
        let inst = largest();
        let key = instance_key(&inst.key());
        let value = encode_instance(&inst, true);
        assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
        let node_op = 1 + digest_entry_len(MAX_KEY_LEN, true) - 8;
        assert!(node_op + kv_wire_len(&key, &value) < 16 * 1024);
        assert!(node_op + kv_wire_len(&key, &value) < budget(500));

        // A host with the most instances of a typical size: about 150 KB raw, a handful of
        // datagrams even before compression.
        let typical: usize = (0..MAX_INSTANCES_PER_NODE)
            .map(|i| {
                let inst = web(&format!("web-{i:04}"));
                kv_wire_len(&instance_key(&inst.key()), &encode_instance(&inst, true))
            })
            .sum();
        assert!(typical < MAX_INSTANCE_BYTES_PER_NODE);
        assert!(typical.div_ceil(budget(100)) <= 3, "{typical} bytes");

        // The byte cap, incompressible, in a 100-node cluster: 19 full datagrams (each exchange
        // moves one).
        let worst = MAX_INSTANCE_BYTES_PER_NODE + MAX_INSTANCES_PER_NODE * 12;
        assert_eq!(worst.div_ceil(budget(100)), 19, "{worst} bytes");
    }

    #[test]
    fn check_meta_rejects_oversized_values() {
        let mut meta = NodeMeta::new(Role::Agent, "0.1.0");
        assert_eq!(check_meta(&meta), Ok(()));
        meta.zone = Some("z".repeat(MAX_META_VALUE_LEN + 1));
        assert_eq!(check_meta(&meta), Err(ZONE));
    }
}
