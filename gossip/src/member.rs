//! Typed members: what a node says about itself, how it is parsed out of chitchat state, and
//! how two membership views differ.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chitchat::{ChitchatId, NodeState};
use serde::{Deserialize, Serialize};

use crate::keys;

/// Which kind of shoal process a member is; servers form the Raft cluster, agents serve the
/// proxies of one host and look for servers to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Raft-replicated server (3 or 5 per cluster).
    Server,
    /// A per-host agent (DNS, xDS, health checks, local instances).
    Agent,
}

impl Role {
    /// The wire and display form (`server`, `agent`), identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned when a string is not a [`Role`]; the parser treats such a node as garbage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected server or agent)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// What a node says about itself to every other node: enough for servers to find each other
/// and form the Raft cluster, and for agents to find servers. Gossiped as one short key per
/// field (see [`crate::keys`]); `None` fields are absent from the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Server or agent.
    pub role: Role,
    /// Raft node id; set by servers.
    pub raft_id: Option<u64>,
    /// HTTP API address (`host:port`), where the CLI and other nodes reach this node.
    pub api_addr: Option<String>,
    /// Server-to-server gRPC address (Raft RPC, watch streams).
    pub grpc_addr: Option<String>,
    /// Agent's xDS address.
    pub xds_addr: Option<String>,
    /// Agent's DNS address.
    pub dns_addr: Option<String>,
    /// Availability zone, for zone-aware choices (which server to watch, locality).
    pub zone: Option<String>,
    /// shoal version of the node, to spot mixed-version clusters.
    pub version: String,
    /// Opaque identity of the node's data (e.g. the Raft cluster it belongs to), so that a node
    /// wiped and restarted under the same name can be told apart from the old one.
    pub incarnation: Option<String>,
    /// True once the node's Raft state is initialized; servers waiting for `--bootstrap-expect`
    /// peers use it to join an existing cluster instead of bootstrapping a second one.
    pub raft_initialized: bool,
    /// The id of the Raft cluster a server belongs to, once that cluster named itself: a
    /// leader never adds a server of another cluster.
    pub cluster_id: Option<String>,
}

impl NodeMeta {
    /// Metadata with only the required fields set, to fill in with struct update syntax.
    pub fn new(role: Role, version: impl Into<String>) -> Self {
        NodeMeta {
            role,
            raft_id: None,
            api_addr: None,
            grpc_addr: None,
            xds_addr: None,
            dns_addr: None,
            zone: None,
            version: version.into(),
            incarnation: None,
            raft_initialized: false,
            cluster_id: None,
        }
    }
}

/// One live node as seen by this node: its identity in gossip plus what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique node name (the chitchat node id), stable across restarts.
    pub name: String,
    /// Start time of the node's current process in unix milliseconds; grows on every restart,
    /// so the newest generation of a name is the live one.
    pub generation: u64,
    /// Address other nodes gossip with (the node's advertise address).
    pub gossip_addr: SocketAddr,
    /// What the node says about itself.
    pub meta: NodeMeta,
    /// True for the member that describes the local node.
    pub is_self: bool,
}

/// A change between two membership views, as computed by [`diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A name that was not in the previous view.
    Joined(Member),
    /// A name present in both views whose member changed: metadata, address, or generation
    /// (a restart). Carries the new member.
    Updated(Member),
    /// A name that is no longer in the view (failure detector says dead, or shut down). Carries
    /// the last known member.
    Left(Member),
}

/// Parses one chitchat node into a [`Member`] (with `is_self = false`). Returns `None`, never
/// panics, when a required metadata key is missing (e.g. a node that has only been heard of in
/// a digest so far, or a non-shoal process in the cluster) or any metadata value is garbage.
pub(crate) fn parse_member(chitchat_id: &ChitchatId, node_state: &NodeState) -> Option<Member> {
    if chitchat_id.node_id.is_empty() {
        return None;
    }
    let meta = keys::decode_meta(|key| node_state.get(key));
    if meta.is_none() {
        tracing::trace!(node = ?chitchat_id, "skipping node without valid shoal metadata");
    }
    Some(Member {
        name: chitchat_id.node_id.to_string(),
        generation: chitchat_id.generation_id,
        gossip_addr: chitchat_id.gossip_advertise_addr,
        meta: meta?,
        is_self: false,
    })
}

/// Keeps one member per name, sorted by name: the newest generation at the name holder's
/// address (a restarted node's old generation lingers until the failure detector drops it),
/// never a claim from another address while the holder lives ([`crate::names::hold`]); those
/// claims come back as conflicts.
pub(crate) fn newest_per_name(
    members: impl IntoIterator<Item = Member>,
) -> (Vec<Member>, Vec<crate::names::NameConflict>) {
    crate::names::hold(members, |m| (m.name.as_str(), m.generation, m.gossip_addr))
}

/// The events that turn the view `previous` into the view `next`, in name order. Members are
/// keyed by name (if a view lists a name twice, its highest generation counts).
///
/// A node restarted with a higher generation is reported as one [`MemberEvent::Updated`], not
/// as `Left` + `Joined`: the name (and the Raft id it carries) is the node's identity, and the
/// restarted process is the same node with fresh state. Consumers that must react to restarts
/// compare [`Member::generation`] of the old and new member.
pub fn diff(previous: &[Member], next: &[Member]) -> Vec<MemberEvent> {
    let previous = by_name(previous);
    let next = by_name(next);
    let mut events = Vec::new();
    let mut names: Vec<&str> = previous.keys().chain(next.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        match (previous.get(name), next.get(name)) {
            (None, Some(new)) => events.push(MemberEvent::Joined((*new).clone())),
            (Some(old), None) => events.push(MemberEvent::Left((*old).clone())),
            (Some(old), Some(new)) if old != new => {
                events.push(MemberEvent::Updated((*new).clone()))
            }
            _ => {}
        }
    }
    events
}

fn by_name(members: &[Member]) -> BTreeMap<&str, &Member> {
    let mut map: BTreeMap<&str, &Member> = BTreeMap::new();
    for member in members {
        match map.get(member.name.as_str()) {
            Some(kept) if kept.generation >= member.generation => {}
            _ => {
                map.insert(&member.name, member);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(name: &str, generation: u64) -> Member {
        Member {
            name: name.into(),
            generation,
            gossip_addr: addr(7946),
            meta: NodeMeta::new(Role::Agent, "0.1.0"),
            is_self: false,
        }
    }

    fn state(kvs: &[(&str, &str)]) -> NodeState {
        let mut state = NodeState::for_test();
        for (k, v) in kvs {
            state.set(*k, *v);
        }
        state
    }

    fn id(name: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(name, generation, addr(7000))
    }

    const VALID: &[(&str, &str)] = &[
        (keys::SCHEMA, "1"),
        (keys::ROLE, "server"),
        (keys::RAFT_ID, "3"),
        (keys::API_ADDR, "10.0.0.3:7070"),
        (keys::VERSION, "0.1.0"),
        (keys::RAFT_INITIALIZED, "1"),
    ];

    #[test]
    fn parse_member_reads_typed_metadata() {
        let m = parse_member(&id("server-3", 42), &state(VALID)).expect("valid member");
        assert_eq!(m.name, "server-3");
        assert_eq!(m.generation, 42);
        assert_eq!(m.gossip_addr, addr(7000));
        assert!(!m.is_self);
        assert_eq!(
            m.meta,
            NodeMeta {
                raft_id: Some(3),
                api_addr: Some("10.0.0.3:7070".into()),
                raft_initialized: true,
                ..NodeMeta::new(Role::Server, "0.1.0")
            }
        );
    }

    #[test]
    fn parse_member_ignores_unknown_keys_and_app_keys() {
        let mut kvs = VALID.to_vec();
        kvs.push(("inst:web/1", "{}"));
        kvs.push(("future-key", "whatever"));
        kvs.push((keys::SCHEMA, "7")); // a newer schema is read for the keys we know
        assert!(parse_member(&id("n", 1), &state(&kvs)).is_some());
    }

    #[test]
    fn parse_member_skips_missing_required_keys() {
        assert_eq!(parse_member(&id("n", 1), &state(&[])), None);
        for required in [keys::SCHEMA, keys::ROLE, keys::VERSION] {
            let kvs: Vec<_> = VALID
                .iter()
                .copied()
                .filter(|(k, _)| *k != required)
                .collect();
            assert_eq!(parse_member(&id("n", 1), &state(&kvs)), None, "{required}");
        }
        // A deleted (tombstoned) required key counts as missing.
        let mut st = state(VALID);
        st.delete(keys::ROLE);
        assert_eq!(parse_member(&id("n", 1), &st), None);
        // An empty name is not a member.
        assert_eq!(parse_member(&id("", 1), &state(VALID)), None);
    }

    #[test]
    fn parse_member_skips_garbage_values() {
        let garbage = [
            (keys::SCHEMA, "one"),
            (keys::SCHEMA, "0"),
            (keys::SCHEMA, "-1"),
            (keys::ROLE, "Server"),
            (keys::ROLE, ""),
            (keys::RAFT_ID, "-3"),
            (keys::RAFT_ID, "18446744073709551616"),
            (keys::RAFT_ID, ""),
            (keys::RAFT_INITIALIZED, "true"),
            (keys::RAFT_INITIALIZED, "\u{0}"),
        ];
        for (key, value) in garbage {
            let mut st = state(VALID);
            st.set(key, value);
            assert_eq!(parse_member(&id("n", 1), &st), None, "{key}={value:?}");
        }
    }

    #[test]
    fn newest_generation_per_name_wins() {
        let members = vec![
            member("b", 5),
            member("a", 1),
            member("b", 9),
            member("b", 7),
        ];
        let (kept, conflicts) = newest_per_name(members);
        assert!(conflicts.is_empty());
        let kept: Vec<(&str, u64)> = kept
            .iter()
            .map(|m| (m.name.as_str(), m.generation))
            .collect();
        assert_eq!(kept, [("a", 1), ("b", 9)]);
    }

    #[test]
    fn diff_of_equal_views_is_empty() {
        let view = vec![member("a", 1), member("b", 1)];
        assert_eq!(diff(&view, &view), []);
        assert_eq!(diff(&[], &[]), []);
    }

    #[test]
    fn diff_reports_joins_leaves_and_updates_in_name_order() {
        let previous = vec![member("a", 1), member("b", 1), member("c", 1)];
        let mut b2 = member("b", 1);
        b2.meta.raft_initialized = true;
        let next = vec![member("d", 1), b2.clone(), member("c", 1)];
        assert_eq!(
            diff(&previous, &next),
            [
                MemberEvent::Left(member("a", 1)),
                MemberEvent::Updated(b2),
                MemberEvent::Joined(member("d", 1)),
            ]
        );
    }

    #[test]
    fn diff_reports_a_restart_as_one_update() {
        let previous = vec![member("a", 1)];
        let next = vec![member("a", 2)];
        assert_eq!(
            diff(&previous, &next),
            [MemberEvent::Updated(member("a", 2))]
        );
        // An address change alone is an update too.
        let mut moved = member("a", 1);
        moved.gossip_addr = addr(1);
        assert_eq!(
            diff(&previous, &[moved.clone()]),
            [MemberEvent::Updated(moved)]
        );
    }

    #[test]
    fn diff_uses_the_newest_generation_of_duplicated_names() {
        let previous = vec![member("a", 1)];
        let next = vec![member("a", 1), member("a", 2)];
        assert_eq!(
            diff(&previous, &next),
            [MemberEvent::Updated(member("a", 2))]
        );
        assert_eq!(diff(&next, &[member("a", 2)]), []);
    }

    #[test]
    fn role_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Role::Server).unwrap(), "\"server\"");
        assert_eq!(
            serde_json::from_str::<Role>("\"agent\"").unwrap(),
            Role::Agent
        );
        assert_eq!("agent".parse::<Role>(), Ok(Role::Agent));
        assert!("Agent".parse::<Role>().is_err());
        assert_eq!(Role::Server.to_string(), "server");
    }
}
