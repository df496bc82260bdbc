//! Every chitchat key this crate reads or writes, in one place.
//!
//! A node's chitchat state is a flat map of string keys to string values, gossiped to every
//! other node, so the key names are a wire contract between shoal versions: renaming a key is a
//! breaking change, adding one is not. Two families share the map:
//!
//! * **metadata keys** ([`SCHEMA`], [`ROLE`], …): bare words without a `:`, written only by
//!   [`crate::Gossip::start`] and [`crate::Gossip::set_meta`] and read back by the member parser;
//! * **application keys**: `<prefix><rest>` where the prefix is one of [`APP_PREFIXES`] (today
//!   only [`INSTANCE_PREFIX`]); written through [`crate::Gossip::set_key`], which refuses any
//!   other key so that an application key can never shadow or delete node metadata.
//!
//! Keys are short because every node's full state travels in gossip datagrams (chitchat caps a
//! datagram at 65,507 bytes and sends digests unsplit).

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

/// All metadata keys, in the order they are written.
pub const METADATA_KEYS: [&str; 11] = [
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
];

/// Prefix of the keys under which an agent publishes a registered service instance
/// (`inst:<instance key>`, one key per instance); reserved for the instance issue.
pub const INSTANCE_PREFIX: &str = "inst:";

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

    #[test]
    fn check_meta_rejects_oversized_values() {
        let mut meta = NodeMeta::new(Role::Agent, "0.1.0");
        assert_eq!(check_meta(&meta), Ok(()));
        meta.zone = Some("z".repeat(MAX_META_VALUE_LEN + 1));
        assert_eq!(check_meta(&meta), Err(ZONE));
    }
}
