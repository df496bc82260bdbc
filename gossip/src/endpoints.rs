//! The endpoint view: every instance published by the newest live generation of every node,
//! decoded once per key version.

use std::collections::{BTreeMap, HashMap};

use chitchat::{ChitchatId, NodeState, Version};
use shoal_model::discovery::{Endpoint, Instance};

use crate::keys;

fn id_key<'x>(id: &'x &ChitchatId) -> (&'x str, u64, std::net::SocketAddr) {
    (&id.node_id, id.generation_id, id.gossip_advertise_addr)
}

/// For each node name, the generation whose instances count: this process for our own name,
/// else the newest live generation at the name holder's address ([`crate::names::hold`]). A
/// restarted node thus replaces its previous generation as soon as the new one is live, two
/// generations of one name never mix in the view, and another host claiming a live name does
/// not take its place (the refused claims come back as conflicts, ours included: a live holder
/// of our own name elsewhere).
pub(crate) fn newest_live<'a>(
    self_id: &'a ChitchatId,
    live: impl IntoIterator<Item = &'a ChitchatId>,
) -> (Vec<&'a ChitchatId>, Vec<crate::names::NameConflict>) {
    let ids: Vec<&ChitchatId> = live
        .into_iter()
        .filter(|id| !id.node_id.is_empty())
        .chain(std::iter::once(self_id))
        .collect();
    let (others, mut conflicts) = crate::names::hold(
        ids.iter()
            .copied()
            .filter(|id| id.node_id != self_id.node_id),
        id_key,
    );
    // Our own name: this process counts here whatever happens, but a claim it loses is
    // reported (everyone else refuses it).
    let (_, own) = crate::names::hold(
        ids.iter()
            .copied()
            .filter(|id| id.node_id == self_id.node_id),
        id_key,
    );
    conflicts.extend(own);
    let mut chosen: BTreeMap<&str, &ChitchatId> =
        others.into_iter().map(|id| (&*id.node_id, id)).collect();
    chosen.insert(&self_id.node_id, self_id);
    (chosen.into_values().collect(), conflicts)
}

/// What one instance key held at one version: the decoded instance and its health, or `None`
/// if the value was garbage.
type Decoded = Option<(Instance, bool)>;

/// The decoded instances of one node, valid for one `max_version` of its state.
#[derive(Default)]
struct NodeInstances {
    max_version: Version,
    last_gc_version: Version,
    by_key: BTreeMap<String, (Version, Decoded)>,
}

/// Decoded instance values per node, so that a view rebuild decodes only the key-values that
/// changed since the last one, and a garbage value is counted once per version.
#[derive(Default)]
pub(crate) struct EndpointCache {
    nodes: HashMap<ChitchatId, NodeInstances>,
}

impl EndpointCache {
    /// The sorted endpoint view of `nodes` (the chosen generation of each live node, with its
    /// state), and the number of garbage values met for the first time. Cache entries of nodes
    /// for which `keep` is false are dropped.
    pub(crate) fn view<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (&'a ChitchatId, &'a NodeState)>,
        keep: impl Fn(&ChitchatId) -> bool,
    ) -> (Vec<Endpoint>, u64) {
        self.nodes.retain(|id, _| keep(id));
        let mut new_garbage = 0;
        let mut endpoints = Vec::new();
        for (id, state) in nodes {
            let cached = self.nodes.entry(id.clone()).or_default();
            if cached.max_version != state.max_version()
                || cached.last_gc_version != state.last_gc_version()
            {
                new_garbage += cached.update(id, state);
            }
            for (instance, healthy) in cached.by_key.values().filter_map(|(_, d)| d.as_ref()) {
                endpoints.push(Endpoint {
                    instance: instance.clone(),
                    host: id.node_id.to_string(),
                    healthy: *healthy,
                });
            }
        }
        endpoints.sort_unstable();
        (endpoints, new_garbage)
    }
}

impl NodeInstances {
    /// Re-reads the node's live instance keys, decoding only new versions. Returns how many
    /// of them were garbage.
    fn update(&mut self, id: &ChitchatId, state: &NodeState) -> u64 {
        let mut previous = std::mem::take(&mut self.by_key);
        let mut garbage = 0;
        for (key, versioned) in state.iter_prefix(keys::INSTANCE_PREFIX) {
            let entry = match previous.remove(key) {
                Some(entry) if entry.0 == versioned.version => entry,
                _ => {
                    let decoded = match keys::decode_instance(key, &versioned.value) {
                        Ok(decoded) => Some(decoded),
                        Err(err) => {
                            garbage += 1;
                            tracing::warn!(
                                node = %id.node_id, generation = id.generation_id, key,
                                error = %err, "skipping invalid instance value"
                            );
                            None
                        }
                    };
                    (versioned.version, decoded)
                }
            };
            self.by_key.insert(key.to_string(), entry);
        }
        self.max_version = state.max_version();
        self.last_gc_version = state.last_gc_version();
        garbage
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn id(name: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(name, generation, SocketAddr::from(([127, 0, 0, 1], 7000)))
    }

    fn inst(id: &str) -> Instance {
        Instance {
            namespace: "apps.local".into(),
            service: "web".into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: id.into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            attributes: BTreeMap::new(),
        }
    }

    fn publish(state: &mut NodeState, instance: &Instance, healthy: bool) {
        state.set(
            keys::instance_key(&instance.key()),
            keys::encode_instance(instance, healthy),
        );
    }

    fn summary(view: &[Endpoint]) -> Vec<(String, String, bool)> {
        view.iter()
            .map(|e| (e.host.clone(), e.instance.id.clone(), e.healthy))
            .collect()
    }

    #[test]
    fn newest_live_generation_per_name_and_always_self() {
        let me = id("me", 5);
        let live = [
            id("b", 2),
            id("a", 1),
            id("b", 7),
            id("me", 9), // an older or misconfigured twin of ours never wins
            id("", 3),
        ];
        let chosen: Vec<(String, u64)> = newest_live(&me, &live)
            .0
            .into_iter()
            .map(|id| (id.node_id.to_string(), id.generation_id))
            .collect();
        assert_eq!(chosen, [("a".into(), 1), ("b".into(), 7), ("me".into(), 5)]);
    }

    #[test]
    fn view_is_sorted_skips_deleted_and_counts_garbage_once() {
        let a = id("host-a", 1);
        let b = id("host-b", 1);
        let mut sa = NodeState::for_test();
        let mut sb = NodeState::for_test();
        publish(&mut sa, &inst("z"), true);
        publish(&mut sa, &inst("y"), false);
        publish(&mut sb, &inst("z"), true);
        sa.set("inst:apps.local/web/bad", "garbage");
        sa.set("role", "agent"); // not an instance key
        publish(&mut sb, &inst("gone"), true);
        sb.delete("inst:apps.local/web/gone");

        let mut cache = EndpointCache::default();
        let (view, garbage) = cache.view([(&a, &sa), (&b, &sb)], |_| true);
        assert_eq!(
            summary(&view),
            [
                ("host-a".into(), "y".into(), false),
                ("host-a".into(), "z".into(), true),
                ("host-b".into(), "z".into(), true),
            ]
        );
        assert_eq!(garbage, 1);

        // Unchanged states: nothing decoded or counted again.
        let (again, garbage) = cache.view([(&a, &sa), (&b, &sb)], |_| true);
        assert_eq!(again, view);
        assert_eq!(garbage, 0);

        // A health flip and a new garbage version are picked up; the old garbage is not
        // counted again.
        publish(&mut sa, &inst("y"), true);
        sb.set("inst:apps.local/web/z", "1{}");
        let (next, garbage) = cache.view([(&a, &sa), (&b, &sb)], |_| true);
        assert_eq!(
            summary(&next),
            [
                ("host-a".into(), "y".into(), true),
                ("host-a".into(), "z".into(), true),
            ]
        );
        assert_eq!(garbage, 1);

        // A node left out of the view (dead) contributes nothing; forgotten nodes leave the
        // cache.
        let (only_b, _) = cache.view([(&b, &sb)], |id| *id == b);
        assert!(only_b.is_empty());
        assert_eq!(cache.nodes.len(), 1);
    }
}
