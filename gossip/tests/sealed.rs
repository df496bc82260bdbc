//! Sealed gossip between real members on 127.0.0.1 UDP ports: members without the key (or with
//! another one) are never seen and never see, their datagrams are dropped and counted, garbage
//! does not stop a member, and a key rotation across a running cluster loses no member.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_gossip::{Gossip, GossipConfig, GossipKey, Keyring, NodeMeta, Role};

const INTERVAL: Duration = Duration::from_millis(100);
const CONVERGE: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind :0");
    socket.local_addr().expect("local addr").port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(name: &str, port: u16, seeds: &[u16], keyring: Option<Keyring>) -> GossipConfig {
    GossipConfig {
        seeds: seeds.iter().map(|p| addr(*p).to_string()).collect(),
        cluster_id: "sealed".into(),
        gossip_interval: INTERVAL,
        keyring,
        ..GossipConfig::new(name, addr(port))
    }
}

fn meta() -> NodeMeta {
    NodeMeta::new(Role::Agent, "0.1.0")
}

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

fn names(node: &Gossip) -> Vec<String> {
    node.members().into_iter().map(|m| m.name).collect()
}

/// Three members sharing `key`, converged.
async fn sealed_trio(key: &GossipKey) -> (Vec<Gossip>, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let seeds: &[u16] = if i == 0 { &[] } else { &ports[..1] };
        let ring = Keyring::new(key.clone(), []);
        let cfg = config(&format!("n{}", i + 1), *port, seeds, Some(ring));
        nodes.push(Gossip::start(cfg, meta()).await.expect("start"));
    }
    wait_until("the sealed members see each other", CONVERGE, || {
        nodes.iter().all(|n| names(n) == ["n1", "n2", "n3"])
    })
    .await;
    (nodes, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_key_are_neither_seen_nor_see() {
    let key = GossipKey::generate();
    let (nodes, ports) = sealed_trio(&key).await;
    // A plaintext member and one with another key, both seeded with n1, both publishing an
    // instance under a service name the honest members might serve.
    let plain = Gossip::start(
        config("rogue-plain", free_port(), &ports[..1], None),
        meta(),
    )
    .await
    .unwrap();
    let other = Keyring::new(GossipKey::generate(), []);
    let wrong = Gossip::start(
        config("rogue-key", free_port(), &ports[..1], Some(other)),
        meta(),
    )
    .await
    .unwrap();
    // Twenty gossip rounds: every honest view stays the trio, every rogue sees itself only.
    let start = Instant::now();
    while start.elapsed() < 20 * INTERVAL {
        for n in &nodes {
            assert_eq!(names(n), ["n1", "n2", "n3"], "{}", n.local_name());
        }
        assert_eq!(names(&plain), ["rogue-plain"]);
        assert_eq!(names(&wrong), ["rogue-key"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // n1 dropped both rogues' datagrams before decoding them, and counted them.
    let dropped = nodes[0].dropped_datagrams();
    assert!(
        dropped.unauthenticated >= 10,
        "n1 counted {dropped:?} from two rogues gossiping every 100 ms"
    );
    assert_eq!(dropped.malformed, 0);
    for n in nodes.into_iter().chain([plain, wrong]) {
        n.shutdown().await.unwrap();
    }
}

/// Sends `datagrams` to `node` (listening on `port`) from a plain UDP socket, 50 at a time,
/// waiting after each batch until `counted` has grown by as many (so that no datagram is lost
/// to a full socket buffer and every one must be counted).
async fn send_counted(
    node: &Gossip,
    port: u16,
    datagrams: &[Vec<u8>],
    counted: fn(&Gossip) -> u64,
) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let base = counted(node);
    for (i, batch) in datagrams.chunks(50).enumerate() {
        for d in batch {
            socket.send_to(d, addr(port)).await.unwrap();
        }
        let expected = base + (i * 50 + batch.len()) as u64;
        wait_until("every datagram counted", CONVERGE, || {
            counted(node) >= expected
        })
        .await;
        assert_eq!(counted(node), expected, "counted more than was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_sealed_garbage_are_dropped_and_counted() {
    let key = GossipKey::generate();
    let (nodes, ports) = sealed_trio(&key).await;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Unsealed noise, including what looks like a sealed datagram of this version.
    let mut noise: Vec<Vec<u8>> = vec![vec![], vec![1], vec![1; 29], vec![0xff; 60_000]];
    for _ in 0..1_000 {
        let len = (next() % 1_500) as usize;
        noise.push((0..len).map(|_| next() as u8).collect());
    }
    // Properly sealed bytes that are not chitchat messages (as from a member of another
    // version): authenticated, then refused by the decoder.
    let ring = Keyring::new(key.clone(), []);
    let mut sealed_garbage = Vec::new();
    for _ in 0..300 {
        let len = (next() % 500) as usize;
        let plain: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut out = Vec::new();
        ring.seal(&plain, &mut out);
        sealed_garbage.push(out);
    }
    send_counted(&nodes[0], ports[0], &noise, |n| {
        n.dropped_datagrams().unauthenticated
    })
    .await;
    send_counted(&nodes[0], ports[0], &sealed_garbage, |n| {
        n.dropped_datagrams().malformed
    })
    .await;
    let dropped = nodes[0].dropped_datagrams();
    assert_eq!(dropped.unauthenticated, noise.len() as u64);
    assert_eq!(dropped.malformed, sealed_garbage.len() as u64);
    println!("n1 dropped {:?}", nodes[0].dropped_datagrams());
    // n1 still gossips: a newcomer with the key joins through it.
    let p4 = free_port();
    let n4 = Gossip::start(
        config("n4", p4, &ports[..1], Some(Keyring::new(key.clone(), []))),
        meta(),
    )
    .await
    .unwrap();
    wait_until("a newcomer joins through n1", CONVERGE, || {
        names(&nodes[0]) == ["n1", "n2", "n3", "n4"]
    })
    .await;
    for n in nodes.into_iter().chain([n4]) {
        n.shutdown()
            .await
            .expect("gossip loop survived the garbage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_across_a_running_cluster_loses_no_member() {
    let old = GossipKey::generate();
    let new = GossipKey::generate();
    let (nodes, ports) = sealed_trio(&old).await;
    let nodes = Arc::new(nodes);
    // Watch every view, every 10 ms, for the whole rotation: count any view without all three.
    let stop = Arc::new(AtomicBool::new(false));
    let short_views = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (nodes, stop, short_views, checks) = (
            nodes.clone(),
            stop.clone(),
            short_views.clone(),
            checks.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for n in nodes.iter() {
                    if n.members().len() != 3 {
                        short_views.fetch_add(1, Ordering::Relaxed);
                    }
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let ring = |i: usize| nodes[i].keyring().expect("sealed").clone();
    // Each step is applied to one member at a time, with gossip rounds in between, as an
    // operator's tool going host by host would.
    let pause = 5 * INTERVAL;
    for i in 0..3 {
        assert!(ring(i).install(new.clone()).unwrap());
        tokio::time::sleep(pause).await;
    }
    for i in 0..3 {
        ring(i).use_key(&new).unwrap();
        tokio::time::sleep(pause).await;
    }
    for i in 0..3 {
        ring(i).remove(&old).unwrap();
        tokio::time::sleep(pause).await;
    }
    // Gossip still flows on the new key alone: a metadata change reaches everyone.
    let mut changed = meta();
    changed.zone = Some("after-rotation".into());
    nodes[2].set_meta(changed.clone()).await;
    wait_until("a change after the rotation propagates", CONVERGE, || {
        nodes.iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.name == "n3" && m.meta == changed)
        })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let checks = checks.load(Ordering::Relaxed);
    assert!(checks > 100, "the watcher ran {checks} times");
    assert_eq!(
        short_views.load(Ordering::Relaxed),
        0,
        "a view lacked a member during the rotation ({checks} checks)"
    );
    for i in 0..3 {
        assert_eq!(ring(i).keys(), vec![new.clone()]);
    }
    // A member still on the old key is now shut out; one with the new key gets in.
    let stale = Gossip::start(
        config(
            "stale",
            free_port(),
            &ports[..1],
            Some(Keyring::new(old, [])),
        ),
        meta(),
    )
    .await
    .unwrap();
    let fresh = Gossip::start(
        config(
            "fresh",
            free_port(),
            &ports[..1],
            Some(Keyring::new(new, [])),
        ),
        meta(),
    )
    .await
    .unwrap();
    wait_until("the member with the new key joins", CONVERGE, || {
        names(&nodes[0]) == ["fresh", "n1", "n2", "n3"]
    })
    .await;
    assert_eq!(names(&stale), ["stale"]);
    stale.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
    let nodes = Arc::try_unwrap(nodes).ok().expect("watcher finished");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
