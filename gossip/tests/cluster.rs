//! Real members on 127.0.0.1 UDP ports: discovery, metadata propagation, leave detection,
//! restart with a new generation, and garbage datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_gossip::{diff, Error, Gossip, GossipConfig, Member, MemberEvent, NodeMeta, Role};

const INTERVAL: Duration = Duration::from_millis(100);
const CONVERGE: Duration = Duration::from_secs(10);

/// A UDP port that was free a moment ago (bind to :0, read the port, release it).
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind :0");
    socket.local_addr().expect("local addr").port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(cluster: &str, name: &str, port: u16, seeds: &[u16]) -> GossipConfig {
    GossipConfig {
        seeds: seeds.iter().map(|p| addr(*p).to_string()).collect(),
        cluster_id: cluster.to_string(),
        gossip_interval: INTERVAL,
        ..GossipConfig::new(name, addr(port))
    }
}

fn server_meta(raft_id: u64) -> NodeMeta {
    NodeMeta {
        raft_id: Some(raft_id),
        api_addr: Some(format!("127.0.0.1:{}", 7070 + raft_id)),
        grpc_addr: Some(format!("127.0.0.1:{}", 7170 + raft_id)),
        zone: Some("az-a".into()),
        ..NodeMeta::new(Role::Server, "0.1.0")
    }
}

fn agent_meta() -> NodeMeta {
    NodeMeta {
        xds_addr: Some("127.0.0.1:18000".into()),
        dns_addr: Some("127.0.0.1:8600".into()),
        ..NodeMeta::new(Role::Agent, "0.1.0")
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

/// The expected view of a 3-node cluster from the point of view of `observer`.
fn sees_all(observer: &Gossip, expected: &[(&str, u16, &NodeMeta)]) -> bool {
    let members = observer.members();
    members.len() == expected.len()
        && members.iter().zip(expected).all(|(m, (name, port, meta))| {
            m.name == *name
                && m.gossip_addr == addr(*port)
                && m.meta == **meta
                && m.is_self == (*name == observer.local_name())
        })
}

struct Trio {
    nodes: Vec<Gossip>,
    ports: Vec<u16>,
    metas: Vec<NodeMeta>,
}

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

impl Trio {
    async fn start(cluster: &str) -> Trio {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let metas = vec![server_meta(1), server_meta(2), agent_meta()];
        let mut nodes = Vec::new();
        for i in 0..3 {
            let seeds: &[u16] = if i == 0 { &[] } else { &ports[..1] };
            let cfg = config(cluster, NAMES[i], ports[i], seeds);
            nodes.push(Gossip::start(cfg, metas[i].clone()).await.expect("start"));
        }
        let trio = Trio {
            nodes,
            ports,
            metas,
        };
        let took = trio.converge("all three members see each other").await;
        println!("{cluster}: three members converged in {took:?}");
        trio
    }

    fn expected(&self) -> Vec<(&'static str, u16, &NodeMeta)> {
        (0..3)
            .map(|i| (NAMES[i], self.ports[i], &self.metas[i]))
            .collect()
    }

    async fn converge(&self, what: &str) -> Duration {
        let expected = self.expected();
        wait_until(what, CONVERGE, || {
            self.nodes.iter().all(|n| sees_all(n, &expected))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_discover_each_other_and_metadata_changes_propagate() {
    let mut trio = Trio::start("discover").await;
    for node in &trio.nodes {
        let members = node.members();
        assert_eq!(names(&members), NAMES);
        assert_eq!(members.iter().filter(|m| m.is_self).count(), 1);
    }
    assert_eq!(trio.nodes[1].local_name(), "n2");

    // raft_initialized flips on n2: visible locally at once, elsewhere within a few rounds.
    let mut n1_view = trio.nodes[0].subscribe();
    n1_view.borrow_and_update();
    let before = trio.nodes[0].members();
    trio.metas[1].raft_initialized = true;
    trio.metas[1].incarnation = Some("cluster-abc".into());
    trio.metas[1].zone = None; // clearing an optional field is gossiped as a deletion
    trio.nodes[1].set_meta(trio.metas[1].clone()).await;
    let own = trio.nodes[1].members();
    assert_eq!(own[1].meta, trio.metas[1], "own view updated synchronously");
    let took = trio.converge("set_meta propagates").await;
    println!("set_meta propagated in {took:?}");
    assert!(n1_view.has_changed().unwrap(), "subscribers are notified");
    let after = n1_view.borrow_and_update().clone();
    match diff(&before, &after).as_slice() {
        [MemberEvent::Updated(m)] => {
            assert_eq!(m.name, "n2");
            assert!(m.meta.raft_initialized);
        }
        other => panic!("expected one update of n2, got {other:?}"),
    }

    // Application keys need a reserved prefix; metadata keys cannot be touched through them.
    trio.nodes[2].set_key("inst:web/web-1", "{}").await.unwrap();
    trio.nodes[2].delete_key("inst:web/web-1").await.unwrap();
    trio.nodes[2].delete_key("inst:never-set").await.unwrap();
    assert!(matches!(
        trio.nodes[2].set_key("role", "server").await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        trio.nodes[2].delete_key("ver").await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        trio.nodes[2]
            .set_key("inst:big", &"x".repeat(100_000))
            .await,
        Err(Error::ValueTooLarge { .. })
    ));
    trio.converge("app keys leave metadata alone").await;

    for node in trio.nodes {
        node.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_leaves_and_a_restarted_one_replaces_its_old_generation() {
    let trio = Trio::start("restart").await;
    let old_generation = trio.nodes[2].members()[2].generation;
    let mut n1_view = trio.nodes[0].subscribe();
    let before = n1_view.borrow_and_update().clone();

    // Stop n3: the failure detectors of n1 and n2 drop it.
    let mut nodes = trio.nodes;
    let n3 = nodes.pop().unwrap();
    n3.shutdown().await.expect("shutdown");
    let left = wait_until("n3 leaves n1 and n2", CONVERGE, || {
        nodes.iter().all(|n| names(&n.members()) == ["n1", "n2"])
    })
    .await;
    println!("leave detection after shutdown: {left:?} (gossip interval {INTERVAL:?}, phi 8)");
    let after = n1_view.borrow_and_update().clone();
    match diff(&before, &after).as_slice() {
        [MemberEvent::Left(m)] => assert_eq!(m.name, "n3"),
        other => panic!("expected n3 to leave, got {other:?}"),
    }

    // Restart n3 under the same name and port: a new, higher generation joins.
    let restart = |seed: u16| {
        let cfg = config("restart", "n3", trio.ports[2], &[seed]);
        Gossip::start(cfg, trio.metas[2].clone())
    };
    let n3 = restart(trio.ports[0]).await.expect("restart n3");
    let new_generation = n3.members()[0].generation;
    assert!(new_generation > old_generation);
    nodes.push(n3);
    let expected = trio_expected(&trio.ports, &trio.metas);
    let took = wait_until("restarted n3 rejoins", CONVERGE, || {
        nodes.iter().all(|n| {
            sees_all(n, &expected)
                && n.members()
                    .iter()
                    .all(|m| m.name != "n3" || m.generation == new_generation)
        })
    })
    .await;
    println!("restarted member visible everywhere after {took:?}");
    let rejoined = n1_view.borrow_and_update().clone();
    match diff(&after, &rejoined).as_slice() {
        [MemberEvent::Joined(m)] => {
            assert_eq!((m.name.as_str(), m.generation), ("n3", new_generation))
        }
        other => panic!("expected n3 to join, got {other:?}"),
    }

    // Restart again at once, before anyone can notice the death: the old generation is still
    // live in the failure detectors for a while, yet every view lists n3 once, and switches to
    // the newest generation.
    let n3 = nodes.pop().unwrap();
    n3.shutdown().await.expect("shutdown");
    let n3 = restart(trio.ports[1]).await.expect("restart n3 again");
    let newest = n3.members()[0].generation;
    assert!(newest > new_generation);
    nodes.push(n3);
    let switched = wait_until("quick restart converges", CONVERGE, || {
        nodes.iter().all(|n| {
            let members = n.members();
            let listed = names(&members);
            assert!(
                listed.windows(2).all(|w| w[0] < w[1]),
                "a name listed twice: {listed:?}"
            );
            listed == NAMES && members[2].generation == newest
        })
    })
    .await;
    println!("quick restart switched to the new generation after {switched:?}");
    // Keep watching through the time the old generation takes to die.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for n in &nodes {
            let members = n.members();
            assert_eq!(names(&members), NAMES);
            assert_eq!(members[2].generation, newest);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latest = n1_view.borrow_and_update().clone();
    match diff(&rejoined, &latest).as_slice() {
        [MemberEvent::Updated(m)] => assert_eq!(m.generation, newest),
        other => panic!("expected one update of n3, got {other:?}"),
    }

    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}

fn trio_expected<'a>(
    ports: &[u16],
    metas: &'a [NodeMeta],
) -> Vec<(&'static str, u16, &'a NodeMeta)> {
    (0..3).map(|i| (NAMES[i], ports[i], &metas[i])).collect()
}

/// Deterministic xorshift bytes, so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_stop_a_member() {
    let p1 = free_port();
    let p2 = free_port();
    let n1 = Gossip::start(config("garbage", "n1", p1, &[]), server_meta(1))
        .await
        .unwrap();
    let n2 = Gossip::start(config("garbage", "n2", p2, &[p1]), agent_meta())
        .await
        .unwrap();
    wait_until("n1 and n2 meet", CONVERGE, || {
        n1.members().len() == 2 && n2.members().len() == 2
    })
    .await;

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = addr(p1);
    let magic = 45_139u16.to_le_bytes(); // chitchat's message header
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        magic.to_vec(),
        vec![magic[0], magic[1], 0],
        vec![magic[0], magic[1], 9, 0],
        vec![magic[0], magic[1], 0, 200],
        vec![0xff; 65_507],
        [&magic[..], &[0, 0], &[0xff; 65_000][..]].concat(),
        [&magic[..], &[1, 1], &[0xff; 65_000][..]].concat(),
    ];
    for _ in 0..3_000 {
        let version = (noise.next() % 3) as u8;
        let kind = (noise.next() % 5) as u8;
        let len = (noise.next() % 1_500) as usize;
        let mut datagram = vec![magic[0], magic[1], version, kind];
        datagram.extend(noise.bytes(len));
        datagrams.push(datagram);
    }
    for _ in 0..200 {
        let len = (noise.next() % 2_000) as usize;
        datagrams.push(noise.bytes(len));
    }
    for (i, datagram) in datagrams.iter().enumerate() {
        socket.send_to(datagram, target).await.unwrap();
        if i % 100 == 0 {
            tokio::task::yield_now().await; // let the member drain its socket buffer
        }
    }
    println!("sent {} garbage datagrams", datagrams.len());

    // n1 still gossips: a metadata change reaches n2, and a newcomer seeded with n1 joins.
    let mut meta = server_meta(1);
    meta.raft_initialized = true;
    n1.set_meta(meta.clone()).await;
    wait_until("n1 keeps gossiping with n2", CONVERGE, || {
        n2.members()
            .iter()
            .any(|m| m.name == "n1" && m.meta == meta)
    })
    .await;
    let p3 = free_port();
    let n3 = Gossip::start(config("garbage", "n3", p3, &[p1]), agent_meta())
        .await
        .unwrap();
    wait_until("a newcomer joins through n1", CONVERGE, || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| names(&n.members()) == ["n1", "n2", "n3"])
    })
    .await;
    for node in [n1, n2, n3] {
        node.shutdown()
            .await
            .expect("gossip loop survived the garbage");
    }
}

#[tokio::test]
async fn start_rejects_bad_config_and_busy_ports() {
    let port = free_port();
    let bad = GossipConfig {
        gossip_interval: Duration::ZERO,
        ..GossipConfig::new("n", addr(port))
    };
    assert!(matches!(
        Gossip::start(bad, agent_meta()).await,
        Err(Error::Config(_))
    ));
    let long_zone = NodeMeta {
        zone: Some("z".repeat(1_000)),
        ..agent_meta()
    };
    assert!(matches!(
        Gossip::start(GossipConfig::new("n", addr(port)), long_zone).await,
        Err(Error::Config(_))
    ));

    let first = Gossip::start(GossipConfig::new("a", addr(port)), agent_meta())
        .await
        .unwrap();
    assert!(matches!(
        Gossip::start(GossipConfig::new("b", addr(port)), agent_meta()).await,
        Err(Error::Start { .. })
    ));
    // A lone member lists itself.
    let members = first.members();
    assert_eq!(names(&members), ["a"]);
    assert!(members[0].is_self);
    first.shutdown().await.unwrap();
}
