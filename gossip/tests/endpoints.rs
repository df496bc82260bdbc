//! The endpoint view over real members on 127.0.0.1 UDP ports: publication, health flips,
//! withdrawal, crashed and restarted hosts, garbage values, and a host with 1,000 instances.
//!
//! A crash is simulated by dropping the member without calling `shutdown`: its gossip loop
//! stops and its socket closes. chitchat 0.13 has no leave message (not even on `shutdown`),
//! so the peers learn nothing except that heartbeats stop, exactly as when a host dies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant as Clock};

use shoal_gossip::{keys, Error, Gossip, GossipConfig, NodeMeta, Role};
use shoal_model::discovery::{Endpoint, Instance};

const INTERVAL: Duration = Duration::from_millis(100);
const CONVERGE: Duration = Duration::from_secs(15);

/// `n` distinct UDP ports that were free a moment ago (all bound to :0 at once, released).
fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind :0"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect()
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

fn agent_meta() -> NodeMeta {
    NodeMeta::new(Role::Agent, "0.1.0")
}

async fn start(cluster: &str, name: &str, port: u16, seeds: &[u16]) -> Gossip {
    Gossip::start(config(cluster, name, port, seeds), agent_meta())
        .await
        .expect("start")
}

/// Starts `name` on `port`, retrying while the port is still held by a dropped member whose
/// gossip loop has not closed its socket yet.
async fn restart(cluster: &str, name: &str, port: u16, seeds: &[u16]) -> Gossip {
    let deadline = Clock::now() + Duration::from_secs(5);
    loop {
        match Gossip::start(config(cluster, name, port, seeds), agent_meta()).await {
            Ok(gossip) => return gossip,
            Err(Error::Start { .. }) if Clock::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => panic!("restart {name}: {err}"),
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Clock::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

fn endpoint(instance: &Instance, host: &str, healthy: bool) -> Endpoint {
    Endpoint {
        instance: instance.clone(),
        host: host.into(),
        healthy,
    }
}

/// `(host, instance id, healthy)` of a view, for readable assertions.
fn summary(view: &[Endpoint]) -> Vec<(String, String, bool)> {
    view.iter()
        .map(|e| (e.host.clone(), e.instance.id.clone(), e.healthy))
        .collect()
}

/// Starts n1, n2, n3 (n2 and n3 seeded with n1) and waits until they all see each other.
async fn trio(cluster: &str) -> (Vec<Gossip>, Vec<u16>) {
    let ports = free_ports(3);
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let seeds: &[u16] = if i == 0 { &[] } else { &ports[..1] };
        nodes.push(start(cluster, name, ports[i], seeds).await);
    }
    wait_until("three members see each other", CONVERGE, || {
        nodes.iter().all(|n| n.members().len() == 3)
    })
    .await;
    (nodes, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_health_flips_and_withdrawals_reach_every_member() {
    let (nodes, _) = trio("publish").await;
    let mut epochs = nodes[1].subscribe_endpoints();
    let before = *epochs.borrow_and_update();

    // A publication on n1 reaches n1, n2 and n3, with its health.
    let web1 = web("web-1");
    nodes[0].publish_instance(&web1, true).await.unwrap();
    let expected = vec![endpoint(&web1, "n1", true)];
    let took = wait_until("web-1 everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints() == expected)
    })
    .await;
    println!("publication visible everywhere after {took:?}");
    assert!(*epochs.borrow_and_update() > before, "subscribers notified");

    // A health flip propagates.
    nodes[0].publish_instance(&web1, false).await.unwrap();
    let expected = vec![endpoint(&web1, "n1", false)];
    let took = wait_until("web-1 unhealthy everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints() == expected)
    })
    .await;
    println!("health flip visible everywhere after {took:?}");

    // A second host publishes the same service: sorted by instance, then host.
    let web0 = web("web-0");
    nodes[2].publish_instance(&web0, true).await.unwrap();
    nodes[2].publish_instance(&web1, true).await.unwrap();
    let expected = vec![
        endpoint(&web0, "n3", true),
        endpoint(&web1, "n1", false),
        endpoint(&web1, "n3", true),
    ];
    wait_until("three endpoints everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints() == expected)
    })
    .await;

    // A withdrawal disappears everywhere, and only that instance does.
    assert!(nodes[0].withdraw_instance(&web1.key()).await.unwrap());
    assert!(!nodes[0].withdraw_instance(&web1.key()).await.unwrap());
    let expected = vec![endpoint(&web0, "n3", true), endpoint(&web1, "n3", true)];
    let took = wait_until("withdrawal everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints() == expected)
    })
    .await;
    println!("withdrawal visible everywhere after {took:?}");

    // Refused publications.
    let upper = Instance {
        namespace: "Apps.Local".into(),
        ..web("x")
    };
    let no_port = Instance {
        port: 0,
        ..web("x")
    };
    for bad in [upper, no_port] {
        assert!(matches!(
            nodes[0].publish_instance(&bad, true).await,
            Err(Error::InvalidInstance(_))
        ));
    }
    for bad in ["", &"k".repeat(300)] {
        assert!(matches!(
            nodes[0].withdraw_instance(bad).await,
            Err(Error::InvalidInstance(_))
        ));
    }
    for node in &nodes {
        assert_eq!(node.invalid_instance_values(), 0);
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_host_leaves_the_view_after_failure_detection() {
    let (mut nodes, _) = trio("crash").await;
    let web1 = web("web-1");
    nodes[2].publish_instance(&web1, true).await.unwrap();
    nodes[0]
        .publish_instance(&web("web-0"), true)
        .await
        .unwrap();
    wait_until("both instances everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints().len() == 2)
    })
    .await;

    let crashed = nodes.pop().unwrap();
    drop(crashed); // no shutdown: the host just stops
    let expected = vec![("n1".to_string(), "web-0".to_string(), true)];
    let took = wait_until("n3's instance leaves n1 and n2", CONVERGE, || {
        nodes.iter().all(|n| summary(&n.endpoints()) == expected)
    })
    .await;
    println!("crashed host's instances gone after {took:?} (interval {INTERVAL:?}, phi 8)");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_replaces_its_instances_and_never_mixes_generations() {
    let (mut nodes, ports) = trio("restart").await;
    let old = web("old");
    nodes[2].publish_instance(&old, true).await.unwrap();
    nodes[2].publish_instance(&web("kept"), true).await.unwrap();
    wait_until("n3's instances everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints().len() == 2)
    })
    .await;

    // Crash n3 and start it again at once, under the same name and port: a new generation
    // that publishes "kept" again and "new" instead of "old". The old generation is still
    // live in the failure detectors of n1 and n2 for a while.
    drop(nodes.pop().unwrap());
    let n3 = restart("restart", "n3", ports[2], &ports[..1]).await;
    n3.publish_instance(&web("kept"), false).await.unwrap();
    n3.publish_instance(&web("new"), true).await.unwrap();
    nodes.push(n3);
    let expected = vec![
        ("n3".to_string(), "kept".to_string(), false),
        ("n3".to_string(), "new".to_string(), true),
    ];
    let old_view = vec![
        ("n3".to_string(), "kept".to_string(), true),
        ("n3".to_string(), "old".to_string(), true),
    ];
    let took = wait_until("new generation replaces the old", CONVERGE, || {
        let mut all = true;
        for node in &nodes {
            let view = summary(&node.endpoints());
            // Part or all of one generation's set (the new one is published one instance at a
            // time), never a mix of both.
            let within = |set: &[(String, String, bool)]| view.iter().all(|e| set.contains(e));
            assert!(
                within(&expected) || within(&old_view),
                "{}: {view:?}",
                node.local_name()
            );
            all &= view == expected;
        }
        all
    })
    .await;
    println!("restarted host's instances replaced the old ones after {took:?}");

    // And it stays that way while the old generation dies in the failure detectors.
    let deadline = Clock::now() + Duration::from_secs(3);
    while Clock::now() < deadline {
        for node in &nodes {
            assert_eq!(summary(&node.endpoints()), expected);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instance_values_are_skipped_and_counted() {
    let (nodes, _) = trio("garbage").await;
    let valid = web("web-1");
    nodes[0].publish_instance(&valid, true).await.unwrap();
    let mismatched = keys::encode_instance(&web("web-2"), true);
    let garbage = [
        ("inst:apps.local/web/a", "garbage".to_string()),
        ("inst:apps.local/web/b", String::new()),
        ("inst:apps.local/web/c", "1{\"id\":".to_string()),
        ("inst:apps.local/web/d", "7{}".to_string()),
        ("inst:apps.local/web/e", mismatched),
    ];
    for (key, value) in &garbage {
        nodes[0].set_key(key, value).await.unwrap();
    }
    let expected = vec![endpoint(&valid, "n1", true)];
    wait_until("garbage skipped and counted everywhere", CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.endpoints() == expected && n.invalid_instance_values() == 5)
    })
    .await;

    // Replacing a garbage value with a valid one brings the instance in; nothing is counted
    // twice.
    let repaired = web("c");
    nodes[0]
        .set_key(
            "inst:apps.local/web/c",
            &keys::encode_instance(&repaired, false),
        )
        .await
        .unwrap();
    let expected = vec![
        endpoint(&repaired, "n1", false),
        endpoint(&valid, "n1", true),
    ];
    wait_until("repaired value everywhere", CONVERGE, || {
        nodes.iter().all(|n| n.endpoints() == expected)
    })
    .await;
    tokio::time::sleep(INTERVAL * 5).await; // a few more rounds: the count must not grow
    for node in &nodes {
        assert_eq!(node.invalid_instance_values(), 5, "{}", node.local_name());
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_thousand_instances_reaches_a_peer() {
    let [p1, p2] = free_ports(2)[..] else {
        unreachable!()
    };
    let a = start("thousand", "a", p1, &[]).await;
    let b = start("thousand", "b", p2, &[p1]).await;
    wait_until("a and b meet", CONVERGE, || {
        a.members().len() == 2 && b.members().len() == 2
    })
    .await;

    let instances: Vec<Instance> = (0..keys::MAX_INSTANCES_PER_NODE)
        .map(|i| Instance {
            address: format!("10.1.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
            port: 8000 + (i % 100) as u16,
            attributes: BTreeMap::from([
                (
                    "AZ".to_string(),
                    format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
                ),
                ("version".to_string(), format!("v{}", i % 7)),
            ]),
            ..web(&format!("web-{i:04}"))
        })
        .collect();
    let started = Clock::now();
    for (i, instance) in instances.iter().enumerate() {
        a.publish_instance(instance, i % 10 != 0).await.unwrap();
    }
    let published = started.elapsed();
    let took = wait_until("b sees 1,000 instances", Duration::from_secs(30), || {
        b.endpoints().len() == instances.len()
    })
    .await;
    println!(
        "1,000 instances published in {published:?}, all visible on the peer {:?} after the last",
        took
    );
    let view = b.endpoints();
    assert!(view.iter().all(|e| e.host == "a"));
    assert_eq!(view.iter().filter(|e| !e.healthy).count(), 100);
    let mut sorted = instances.clone();
    sorted.sort();
    let seen: Vec<&Instance> = view.iter().map(|e| &e.instance).collect();
    assert_eq!(seen, sorted.iter().collect::<Vec<_>>());

    // The cap: one more is refused, re-publishing one that is there is not.
    assert!(matches!(
        a.publish_instance(&web("one-too-many"), true).await,
        Err(Error::TooManyInstances { max: 1_000 })
    ));
    a.publish_instance(&instances[0], true).await.unwrap();
    assert_eq!(b.invalid_instance_values(), 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
