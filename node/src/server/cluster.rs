//! Forming and growing the Raft cluster from what gossip says, as Consul does: servers find
//! each other through gossip, the cluster bootstraps once `--bootstrap-expect` servers are
//! seen, and the leader adds every other live server it sees (as a learner, then a voter).
//!
//! The decisions are a pure function, [`plan`], of (what gossip sees, what Raft says); the
//! loop in [`run`] only gathers those facts and carries the plan out. Restarting a server with
//! the same command line is safe: an initialized store never bootstraps again, and a store
//! that finds a formed cluster in gossip waits to be added instead of bootstrapping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use shoal_gossip::{Gossip, Member, NodeMeta, Role};
use shoal_raft::{NodeInfo, RaftNode};

/// Most voters the leader keeps; further servers stay learners (reads and watches scale,
/// commits do not slow down).
pub const MAX_VOTERS: usize = 5;

/// How long the leader waits for a new learner to catch up before it moves on (a learner
/// that died meanwhile is then dropped by the next step).
pub const LEARNER_CATCH_UP: Duration = Duration::from_secs(10);

/// A server as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Raft node id.
    pub id: u64,
    /// Its Raft identity (gRPC address, API address, incarnation).
    pub node: NodeInfo,
    /// Whether it says its store is part of a cluster.
    pub initialized: bool,
    /// Its gossip generation (changes when the process restarts).
    pub generation: u64,
    /// The cluster it says it belongs to, once that cluster named itself.
    pub cluster_id: Option<String>,
}

/// Servers an operator removed, by Raft id, with the gossip generation they had then. The
/// leader does not add such a server back until it restarts (a new generation): otherwise a
/// server removed right after it died would be re-added before gossip notices the death.
pub type Removed = std::sync::Arc<std::sync::Mutex<BTreeMap<u64, u64>>>;

/// Records that an operator removed server `node_id`, with the gossip generation it has now, so
/// that this server's membership loop (should it lead) does not add it back until it restarts.
/// Called before the removal, so the loop cannot re-add it in between.
pub fn mark_removed(gossip: Option<&Gossip>, removed: &Removed, node_id: u64) {
    let generation = gossip.and_then(|g| {
        g.members()
            .iter()
            .find(|m| m.meta.raft_id == Some(node_id))
            .map(|m| m.generation)
    });
    if let Some(generation) = generation {
        removed
            .lock()
            .expect("removed lock")
            .insert(node_id, generation);
    }
}

/// What Raft says about the cluster, from this server's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftView {
    /// This server's id.
    pub me: u64,
    /// Whether this server's store belongs to a cluster.
    pub initialized: bool,
    /// Whether this server is the leader.
    pub leader: bool,
    /// Voters with their Raft identity.
    pub voters: BTreeMap<u64, NodeInfo>,
    /// Learners with their Raft identity.
    pub learners: BTreeMap<u64, NodeInfo>,
    /// Members the leader replicates to that have caught up (a matched index within the
    /// healthy lag of its log) and answered recently: only these learners become voters.
    pub caught_up: BTreeSet<u64>,
    /// This server's cluster id, once the cluster named itself.
    pub cluster_id: Option<String>,
}

/// Servers gossip shows that belong to another Raft cluster (they name a cluster id that is
/// not this server's): never added, removed or counted, and reported by [`run`].
pub fn foreign<'a>(raft: &RaftView, peers: &'a [Peer]) -> Vec<&'a Peer> {
    peers
        .iter()
        .filter(|p| match (&raft.cluster_id, &p.cluster_id) {
            (Some(own), Some(theirs)) => own != theirs,
            _ => false,
        })
        .collect()
}

/// One step the manager takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Initialize a new cluster with these members.
    Bootstrap(BTreeMap<u64, NodeInfo>),
    /// Add a live server as a learner (it catches up before it can vote).
    AddLearner(u64, NodeInfo),
    /// Make these the voters.
    SetVoters(BTreeSet<u64>),
    /// Remove a member whose store was wiped (its incarnation changed); it is added again
    /// under its new incarnation on a later step.
    Remove(u64),
}

/// Server peers from gossip members.
pub fn peers(members: &[Member]) -> Vec<Peer> {
    members
        .iter()
        .filter(|m| m.meta.role == Role::Server)
        .filter_map(|m| {
            let id = m.meta.raft_id?;
            Some(Peer {
                id,
                node: NodeInfo {
                    raft_addr: m.meta.grpc_addr.clone()?,
                    api_addr: m.meta.api_addr.clone()?,
                    incarnation: m.meta.incarnation.clone().unwrap_or_default(),
                },
                initialized: m.meta.raft_initialized,
                generation: m.generation,
                cluster_id: m.meta.cluster_id.clone(),
            })
        })
        .collect()
}

/// Decides the next step. Pure: every rule of cluster formation is here and unit-tested.
/// `expect` 0: this server never forms a cluster, it waits to be added to the one it joined.
pub fn plan(raft: &RaftView, peers: &[Peer], expect: usize) -> Option<Action> {
    let foreign = foreign(raft, peers);
    let own: Vec<Peer> = peers
        .iter()
        .filter(|p| !foreign.iter().any(|f| std::ptr::eq(*f, *p)))
        .cloned()
        .collect();
    let peers = own.as_slice();
    if !raft.initialized {
        if expect == 0 {
            return None;
        }
        if expect == 1 {
            let me = peers.iter().find(|p| p.id == raft.me)?;
            return Some(Action::Bootstrap(BTreeMap::from([(
                me.id,
                me.node.clone(),
            )])));
        }
        // Someone already formed a cluster: wait for its leader to add us.
        if peers.iter().any(|p| p.initialized) {
            return None;
        }
        let mut candidates: Vec<&Peer> = peers.iter().collect();
        candidates.sort_by_key(|p| p.id);
        candidates.dedup_by_key(|p| p.id);
        if candidates.len() < expect {
            return None;
        }
        let chosen: BTreeMap<u64, NodeInfo> = candidates
            .iter()
            .take(expect)
            .map(|p| (p.id, p.node.clone()))
            .collect();
        // One server bootstraps: the lowest id among the first `expect`. The others are
        // then added by the leader it elects.
        if chosen.keys().next() == Some(&raft.me) {
            return Some(Action::Bootstrap(chosen));
        }
        return None;
    }
    if !raft.leader {
        return None;
    }
    let members: BTreeMap<u64, &NodeInfo> = raft
        .voters
        .iter()
        .chain(raft.learners.iter())
        .map(|(k, v)| (*k, v))
        .collect();
    // A member whose store was wiped comes back with a new incarnation: remove it first.
    for p in peers {
        if let Some(known) = members.get(&p.id) {
            if p.id != raft.me
                && !known.incarnation.is_empty()
                && !p.node.incarnation.is_empty()
                && known.incarnation != p.node.incarnation
            {
                return Some(Action::Remove(p.id));
            }
        }
    }
    // Learners that gossip no longer sees are dropped: they do not count for quorum, so this
    // is always safe, and it undoes an add that raced with an operator's removal of a server
    // that had just died (gossip had not noticed yet). Voters are never removed here; that is
    // the operator's call (`shoal operator remove-server`).
    let alive: BTreeSet<u64> = peers.iter().map(|p| p.id).collect();
    if let Some(dead) = raft.learners.keys().find(|id| !alive.contains(id)) {
        return Some(Action::Remove(*dead));
    }
    // A server is added when its store is new (nothing to lose), or when it says it belongs
    // to this cluster (an operator removed it, and it came back). A store that belongs to a
    // cluster not yet named, or to another, would have its log overwritten: it is left alone.
    for p in peers {
        let ours = !p.initialized
            || (raft.cluster_id.is_some() && p.cluster_id.as_deref() == raft.cluster_id.as_deref());
        if !members.contains_key(&p.id) && ours {
            return Some(Action::AddLearner(p.id, p.node.clone()));
        }
    }
    // Promote learners that gossip sees alive and that have caught up, up to MAX_VOTERS. A
    // learner the leader cannot replicate to (unreachable, or refused by mutual TLS: a server
    // without a certificate from the cluster CA) stays a learner, so it never counts towards
    // a quorum it cannot help form.
    let mut voters: BTreeSet<u64> = raft.voters.keys().copied().collect();
    for id in raft.learners.keys() {
        if voters.len() >= MAX_VOTERS {
            break;
        }
        if alive.contains(id) && raft.caught_up.contains(id) {
            voters.insert(*id);
        }
    }
    if voters.len() != raft.voters.len() {
        return Some(Action::SetVoters(voters));
    }
    None
}

fn raft_view(raft: &RaftNode) -> RaftView {
    let m = raft.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
    let mut voters = BTreeMap::new();
    let mut learners = BTreeMap::new();
    for (id, node) in membership.nodes() {
        if voter_ids.contains(id) {
            voters.insert(*id, node.clone());
        } else {
            learners.insert(*id, node.clone());
        }
    }
    let caught_up = raft
        .status()
        .members
        .iter()
        .filter(|s| s.healthy)
        .map(|s| s.node_id)
        .collect();
    RaftView {
        cluster_id: raft.cluster_id(),
        me: m.id,
        initialized: !voters.is_empty(),
        leader: m.current_leader == Some(m.id),
        voters,
        learners,
        caught_up,
    }
}

/// This server's gossip metadata.
pub fn server_meta(raft: &RaftNode, initialized: bool, dns: Option<SocketAddr>) -> NodeMeta {
    let info = raft.node_info();
    NodeMeta {
        role: Role::Server,
        raft_id: Some(raft.status().node_id),
        api_addr: Some(info.api_addr.clone()),
        grpc_addr: Some(info.raft_addr.clone()),
        xds_addr: None,
        dns_addr: dns.map(|a| a.to_string()),
        zone: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        incarnation: Some(info.incarnation.clone()),
        raft_initialized: initialized,
        cluster_id: raft.cluster_id(),
    }
}

/// Runs the manager until `stop` flips to true.
pub async fn run(
    raft: RaftNode,
    gossip: Gossip,
    dns: Option<SocketAddr>,
    expect: usize,
    removed: Removed,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut members = gossip.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = None;
    let mut reported: BTreeSet<(u64, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = members.changed() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let view = raft_view(&raft);
        let state = (view.initialized, view.cluster_id.clone());
        if announced.as_ref() != Some(&state) {
            gossip
                .set_meta(server_meta(&raft, view.initialized, dns))
                .await;
            announced = Some(state);
        }
        let mut peers = peers(&gossip.members());
        {
            let removed = removed.lock().expect("removed lock");
            peers.retain(|p| removed.get(&p.id) != Some(&p.generation));
        }
        for p in foreign(&view, &peers) {
            let theirs = p.cluster_id.clone().unwrap_or_default();
            if reported.insert((p.id, theirs.clone())) {
                tracing::error!(
                    server = p.id,
                    raft_addr = %shoal_model::logsafe::LogSafe(&p.node.raft_addr),
                    their_cluster = %shoal_model::logsafe::LogSafe(&theirs),
                    our_cluster = view.cluster_id.as_deref().unwrap_or_default(),
                    "a server of another cluster is in this gossip pool: it is not added, and \
                     it does not join this cluster (two clusters share a gossip key and seeds; \
                     separate them)"
                );
            }
        }
        let Some(action) = plan(&view, &peers, expect) else {
            continue;
        };
        tracing::info!(?action, "cluster membership step");
        let result = match action {
            Action::Bootstrap(members) => raft.initialize(members).await.map_err(|e| e.to_string()),
            Action::AddLearner(id, node) => raft
                .add_learner(id, node, LEARNER_CATCH_UP)
                .await
                .map_err(|e| e.to_string()),
            Action::SetVoters(voters) => {
                raft.change_voters(voters).await.map_err(|e| e.to_string())
            }
            Action::Remove(id) => raft.remove_node(id).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cluster membership step failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, inc: &str) -> NodeInfo {
        NodeInfo {
            raft_addr: format!("127.0.0.{id}:7071"),
            api_addr: format!("127.0.0.{id}:7070"),
            incarnation: inc.into(),
        }
    }

    fn peer(id: u64, initialized: bool) -> Peer {
        Peer {
            id,
            node: node(id, "i"),
            initialized,
            generation: 1,
            cluster_id: None,
        }
    }

    fn fresh(me: u64) -> RaftView {
        RaftView {
            me,
            ..Default::default()
        }
    }

    fn leader(me: u64, voters: &[u64], learners: &[u64]) -> RaftView {
        RaftView {
            me,
            initialized: true,
            leader: true,
            voters: voters.iter().map(|i| (*i, node(*i, "i"))).collect(),
            learners: learners.iter().map(|i| (*i, node(*i, "i"))).collect(),
            caught_up: voters.iter().chain(learners).copied().collect(),
            cluster_id: Some("c1".into()),
        }
    }

    #[test]
    fn a_learner_that_has_not_caught_up_is_not_promoted() {
        let mut view = leader(1, &[1, 2, 3], &[4]);
        let peers = [peer(1, true), peer(2, true), peer(3, true), peer(4, true)];
        view.caught_up.remove(&4);
        assert_eq!(plan(&view, &peers, 3), None, "4 stays a learner");
        view.caught_up.insert(4);
        assert_eq!(
            plan(&view, &peers, 3),
            Some(Action::SetVoters(BTreeSet::from([1, 2, 3, 4])))
        );
    }

    #[test]
    fn bootstrap_waits_for_the_expected_servers_and_only_the_lowest_id_does_it() {
        let two = [peer(1, false), peer(2, false)];
        assert_eq!(plan(&fresh(1), &two, 3), None);
        let three = [peer(3, false), peer(1, false), peer(2, false)];
        let Some(Action::Bootstrap(m)) = plan(&fresh(1), &three, 3) else {
            panic!()
        };
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(plan(&fresh(2), &three, 3), None);
        assert_eq!(plan(&fresh(3), &three, 3), None);
    }

    #[test]
    fn a_server_that_finds_a_formed_cluster_never_bootstraps() {
        let seen = [peer(1, true), peer(2, true), peer(3, true), peer(4, false)];
        assert_eq!(plan(&fresh(4), &seen, 3), None);
        // ... also when it is the lowest id: a restarted server with a wiped store.
        let seen = [peer(1, false), peer(2, true), peer(3, true)];
        assert_eq!(plan(&fresh(1), &seen, 3), None);
    }

    #[test]
    fn an_initialized_store_never_bootstraps_again() {
        let three = [peer(1, false), peer(2, false), peer(3, false)];
        let mut follower = leader(1, &[1, 2, 3], &[]);
        follower.leader = false;
        assert_eq!(plan(&follower, &three, 3), None);
    }

    #[test]
    fn single_server_bootstraps_alone() {
        let Some(Action::Bootstrap(m)) = plan(&fresh(7), &[peer(7, false)], 1) else {
            panic!()
        };
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn the_leader_adds_new_servers_as_learners_then_voters() {
        let seen = [peer(1, true), peer(2, true), peer(3, true), peer(4, false)];
        assert_eq!(
            plan(&leader(1, &[1, 2, 3], &[]), &seen, 3),
            Some(Action::AddLearner(4, node(4, "i")))
        );
        assert_eq!(
            plan(&leader(1, &[1, 2, 3], &[4]), &seen, 3),
            Some(Action::SetVoters([1, 2, 3, 4].into()))
        );
        assert_eq!(plan(&leader(1, &[1, 2, 3, 4], &[]), &seen, 3), None);
    }

    #[test]
    fn voters_are_capped_and_dead_learners_are_not_promoted() {
        let seen: Vec<Peer> = (1..=7).map(|i| peer(i, true)).collect();
        let l = leader(1, &[1, 2, 3, 4, 5], &[6, 7]);
        assert_eq!(plan(&l, &seen, 3), None);
        // A learner gossip does not see is never promoted (it is dropped instead).
        let seen = [peer(1, true), peer(2, true), peer(3, true)];
        assert_eq!(
            plan(&leader(1, &[1, 2, 3], &[4]), &seen, 3),
            Some(Action::Remove(4))
        );
    }

    #[test]
    fn a_wiped_member_is_removed_then_added_back() {
        let mut seen = vec![peer(1, true), peer(2, true), peer(3, false)];
        seen[2].node.incarnation = "new".into();
        let l = leader(1, &[1, 2, 3], &[]);
        assert_eq!(plan(&l, &seen, 3), Some(Action::Remove(3)));
        let after = leader(1, &[1, 2], &[]);
        assert_eq!(
            plan(&after, &seen, 3),
            Some(Action::AddLearner(3, seen[2].node.clone()))
        );
    }

    #[test]
    fn dead_learners_are_dropped_but_dead_voters_are_kept() {
        let seen = [peer(1, true), peer(2, true)];
        assert_eq!(
            plan(&leader(1, &[1, 2, 3], &[4]), &seen, 3),
            Some(Action::Remove(4))
        );
        assert_eq!(plan(&leader(1, &[1, 2, 3], &[]), &seen, 3), None);
    }

    #[test]
    fn followers_do_nothing() {
        let seen = [peer(1, true), peer(2, true), peer(3, true), peer(4, false)];
        let mut f = leader(2, &[1, 2, 3], &[]);
        f.leader = false;
        assert_eq!(plan(&f, &seen, 3), None);
    }

    #[test]
    fn a_server_given_join_without_expect_never_bootstraps() {
        let peers = [peer(1, false), peer(2, false), peer(3, false)];
        assert_eq!(
            plan(&fresh(1), &peers, 0),
            None,
            "even alone with fresh peers"
        );
        assert_eq!(plan(&fresh(1), &peers[..1], 0), None);
        assert!(matches!(
            plan(&fresh(1), &peers[..1], 1),
            Some(Action::Bootstrap(_))
        ));
    }

    #[test]
    fn servers_of_another_cluster_are_never_added_nor_removed() {
        let view = leader(1, &[1, 2, 3], &[]);
        let mut stranger = peer(4, true);
        stranger.cluster_id = Some("c2".into());
        // A member of ours whose id another cluster reuses, with another incarnation.
        let mut twin = peer(2, true);
        twin.node.incarnation = "other".into();
        twin.cluster_id = Some("c2".into());
        let peers = [peer(1, true), twin, peer(3, true), stranger];
        assert_eq!(plan(&view, &peers, 3), None);
        assert_eq!(
            foreign(&view, &peers)
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            [2, 4]
        );
        // A new server (no id yet) and one of our own are added.
        let mut ours = peer(5, false);
        ours.cluster_id = Some("c1".into());
        let peers = [peer(1, true), peer(2, true), peer(3, true), ours.clone()];
        assert_eq!(
            plan(&view, &peers, 3),
            Some(Action::AddLearner(5, ours.node.clone()))
        );
        let new = peer(6, false);
        assert_eq!(
            plan(
                &view,
                &[peer(1, true), peer(2, true), peer(3, true), new.clone()],
                3
            ),
            Some(Action::AddLearner(6, new.node))
        );
        // Before the cluster is named nothing is foreign.
        let mut unnamed = view.clone();
        unnamed.cluster_id = None;
        assert!(foreign(&unnamed, &peers).is_empty());
        // A server whose store belongs to a cluster not named yet (just bootstrapped
        // elsewhere) is not added either: only new stores and our own are.
        let elsewhere = peer(7, true);
        assert_eq!(
            plan(
                &view,
                &[peer(1, true), peer(2, true), peer(3, true), elsewhere],
                3
            ),
            None
        );
    }
}
