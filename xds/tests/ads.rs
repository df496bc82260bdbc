//! The ADS server over real gRPC (tonic client ↔ in-process server on 127.0.0.1:0), both
//! protocol variants: push order, ACK/NACK, stale nonces, resumption, subscriptions, refusals,
//! and that a proxy whose resources did not change is sent nothing.

mod ads_support;

use std::collections::HashMap;

use ads_support::*;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use shoal_xds::ResourceType::{self, *};

/// Opens a state-of-the-world stream the way Envoy does (CDS first, then the rest once it knows
/// the clusters), checks the push order, ACKs everything, and returns the stream with the last
/// response of each type.
async fn sotw_synced(h: &Harness) -> (Sotw, HashMap<ResourceType, DiscoveryResponseLite>) {
    let mut s = Sotw::open(h, req(Cluster, &[], "", "")).await.unwrap();
    let cds = s.recv().await;
    assert_eq!(type_of(&cds.type_url), Cluster);
    assert_eq!(contents(&cds), ["c1=v1", "c2=v1"]);
    s.request(Endpoint, &["c1", "c2"], "", "");
    s.request(Listener, &[], "", "");
    s.request(Route, &["egress"], "", "");
    s.request(Secret, &["cert"], "", "");
    // Endpoints go as soon as clusters are sent; listeners and routes wait for the ACK of the
    // clusters and secrets.
    let eds = s.recv().await;
    let sds = s.recv().await;
    assert_eq!(type_of(&eds.type_url), Endpoint);
    assert_eq!(contents(&eds), ["c1=v1", "c2=v1"]);
    assert_eq!(type_of(&sds.type_url), Secret);
    s.silence().await;
    s.ack(&cds, &[]);
    s.silence().await;
    s.ack(&sds, &["cert"]);
    let lds = s.recv().await;
    let rds = s.recv().await;
    assert_eq!(type_of(&lds.type_url), Listener);
    assert_eq!(type_of(&rds.type_url), Route);
    assert_eq!(contents(&rds), ["egress=v1"]);
    s.ack(&eds, &["c1", "c2"]);
    s.ack(&lds, &[]);
    s.ack(&rds, &["egress"]);
    let mut last = HashMap::new();
    for r in [cds, eds, lds, rds, sds] {
        last.insert(type_of(&r.type_url), DiscoveryResponseLite::from(&r));
    }
    h.until("5 ACKs", |s| s.acks.total() == 5).await;
    (s, last)
}

/// What a test keeps of a response.
#[derive(Debug, Clone)]
struct DiscoveryResponseLite {
    version: String,
    nonce: String,
}

impl From<&envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>
    for DiscoveryResponseLite
{
    fn from(r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse) -> Self {
        DiscoveryResponseLite {
            version: r.version_info.clone(),
            nonce: r.nonce.clone(),
        }
    }
}

#[tokio::test]
async fn sotw_initial_fetch_goes_in_dependency_order() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, last) = sotw_synced(&h).await;
    let stats = h.ads.stats();
    assert_eq!(stats.streams_open, 1);
    assert_eq!(stats.responses.total(), 5);
    assert_eq!(stats.nacks.total(), 0);
    // Versions are the snapshot's.
    let m = mesh(1);
    for ty in ResourceType::ALL {
        assert_eq!(last[&ty].version, m.version(ty), "{ty:?}");
    }
    // Every nonce is fresh.
    let mut nonces: Vec<_> = last.values().map(|r| r.nonce.clone()).collect();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 5);
    let proxies = h.ads.proxies();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0].proxy.to_string(), NODE);
    assert_eq!(proxies[0].acked.len(), 5);
    s.silence().await;
    h.stop().await;
}

#[tokio::test]
async fn sotw_change_pushes_only_the_changed_type_and_identical_snapshots_nothing() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, _) = sotw_synced(&h).await;

    let changed = || {
        let mut m = mesh(1);
        for r in snap(&[(Route, "egress", 2)]).resources(Route).values() {
            m.insert(Route, r.clone());
        }
        m
    };
    h.source.set(NODE, changed());
    let rds = s.recv().await;
    assert_eq!(type_of(&rds.type_url), Route);
    assert_eq!(contents(&rds), ["egress=v2"]);
    s.silence().await;
    s.ack(&rds, &["egress"]);
    h.until("the route ACK", |s| s.acks.get(Route) == 2).await;

    // The same content again (a new Arc), and again: nothing is sent.
    h.source.set(NODE, changed());
    h.source.set(NODE, changed());
    s.silence().await;
    assert_eq!(h.ads.stats().responses.total(), 6);
    h.stop().await;
}

#[tokio::test]
async fn sotw_every_type_changing_is_pushed_in_order_listeners_after_cluster_ack() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, _) = sotw_synced(&h).await;
    h.source.set(NODE, mesh(2));
    let first: Vec<_> = s.recv_n(3).await;
    let types: Vec<_> = first.iter().map(|r| type_of(&r.type_url)).collect();
    assert_eq!(types, [Secret, Cluster, Endpoint]);
    s.silence().await;
    s.ack(&first[0], &["cert"]);
    s.silence().await;
    s.ack(&first[1], &[]);
    let rest = s.recv_n(2).await;
    let types: Vec<_> = rest.iter().map(|r| type_of(&r.type_url)).collect();
    assert_eq!(types, [Listener, Route]);
    assert_eq!(contents(&rest[1]), ["egress=v2"]);
    h.stop().await;
}

#[tokio::test]
async fn sotw_nack_is_counted_not_resent_and_holds_routes_until_clusters_are_fixed() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, last) = sotw_synced(&h).await;

    let with = |cluster: u32, route: u32| {
        let mut m = mesh(1);
        for (ty, name, v) in [(Cluster, "c1", cluster), (Route, "egress", route)] {
            for r in snap(&[(ty, name, v)]).resources(ty).values() {
                m.insert(ty, r.clone());
            }
        }
        m
    };
    h.source.set(NODE, with(2, 2));
    let cds = s.recv().await;
    assert_eq!(type_of(&cds.type_url), Cluster);
    s.nack(
        &cds,
        &[],
        &last[&Cluster].version,
        "cluster c1: invalid connect_timeout",
    );
    // No resend loop, and the route that may name the rejected cluster is held back.
    s.silence().await;
    let stats = h.ads.stats();
    assert_eq!(stats.nacks.get(Cluster), 1);
    assert_eq!(stats.responses.get(Cluster), 2);
    let nack = stats.last_nack.unwrap();
    assert_eq!(nack.message, "cluster c1: invalid connect_timeout");
    assert_eq!(nack.version, cds.version_info);
    assert_eq!(nack.proxy.to_string(), NODE);
    assert_eq!(
        h.ads.proxies()[0].nacked.get(&Cluster),
        Some(&cds.version_info)
    );
    // The same rejected version again: still nothing.
    h.source.set(NODE, with(2, 2));
    s.silence().await;

    // A fixed cluster goes out, and once it is ACKed the route follows.
    h.source.set(NODE, with(3, 2));
    let cds = s.recv().await;
    assert_eq!(contents(&cds), ["c1=v3", "c2=v1"]);
    s.silence().await;
    s.ack(&cds, &[]);
    let rds = s.recv().await;
    assert_eq!(contents(&rds), ["egress=v2"]);
    assert!(h.ads.proxies()[0].nacked.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn sotw_stale_nonces_are_ignored_subscription_changes_answered() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, last) = sotw_synced(&h).await;
    let acks = h.ads.stats().acks.total();

    // A request with a nonce that is not the latest: ignored, whatever it asks.
    s.request(Endpoint, &["c1"], &last[&Endpoint].version, "not-a-nonce");
    s.silence().await;
    assert_eq!(h.ads.stats().acks.total(), acks);

    // The same change with the latest nonce is a subscription change: answered.
    s.request(
        Endpoint,
        &["c1"],
        &last[&Endpoint].version,
        &last[&Endpoint].nonce,
    );
    let eds = s.recv().await;
    assert_eq!(contents(&eds), ["c1=v1"]);
    assert_ne!(eds.version_info, last[&Endpoint].version);
    s.ack(&eds, &["c1"]);
    h.until("the EDS ACK", |st| st.acks.total() == acks + 1)
        .await;

    // A change to a resource the proxy does not subscribe to sends it nothing.
    let mut m = mesh(1);
    for r in snap(&[(Endpoint, "c2", 7)]).resources(Endpoint).values() {
        m.insert(Endpoint, r.clone());
    }
    h.source.set(NODE, m);
    s.silence().await;

    // A stale ACK of an older response does not count.
    s.ack(
        &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            type_url: Endpoint.type_url(),
            version_info: last[&Endpoint].version.clone(),
            nonce: last[&Endpoint].nonce.clone(),
            ..Default::default()
        },
        &["c1"],
    );
    s.silence().await;
    assert_eq!(h.ads.stats().acks.total(), acks + 1);
    h.stop().await;
}

#[tokio::test]
async fn sotw_reconnect_with_current_versions_is_sent_nothing() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (s, last) = sotw_synced(&h).await;
    drop(s);
    h.until("the first stream to close", |s| s.streams_open == 0)
        .await;
    let responses = h.ads.stats().responses.total();

    let mut s = Sotw::open(&h, req(Cluster, &[], &last[&Cluster].version, ""))
        .await
        .unwrap();
    s.request(Endpoint, &["c1", "c2"], &last[&Endpoint].version, "");
    s.request(Listener, &[], &last[&Listener].version, "");
    s.request(Secret, &["cert"], &last[&Secret].version, "");
    s.silence().await;
    assert_eq!(h.ads.stats().responses.total(), responses);
    assert_eq!(
        h.ads.proxies()[0].acked.get(&Cluster),
        Some(&last[&Cluster].version)
    );
    // A type resumed at an old version is sent the current one.
    s.request(Route, &["egress"], "some-old-version", "");
    let rds = s.recv().await;
    assert_eq!(rds.version_info, last[&Route].version);
    s.silence().await;
    h.stop().await;
}

#[tokio::test]
async fn sotw_missing_resources_and_unknown_proxies_get_empty_answers() {
    let h = Harness::start().await;
    // Nothing set for this proxy: the source hands over an empty snapshot.
    let mut s = Sotw::open(&h, req(Listener, &[], "", "")).await.unwrap();
    let lds = s.recv().await;
    assert!(lds.resources.is_empty());
    s.ack(&lds, &[]);
    s.request(Route, &["egress"], "", "");
    let rds = s.recv().await;
    assert!(rds.resources.is_empty());
    s.ack(&rds, &["egress"]);
    s.silence().await;
    // The node comes into existence: its resources follow.
    h.source.set(NODE, mesh(1));
    let l = s.recv().await;
    let r = s.recv().await;
    assert_eq!(contents(&l), ["egress=v1"]);
    assert_eq!(contents(&r), ["egress=v1"]);
    h.stop().await;
}

#[tokio::test]
async fn refusals_name_the_problem() {
    let h = Harness::start().await;
    let mut bad = req(Cluster, &[], "", "");
    bad.node = Some(node("sidecar~10.0.0.1~x~ns"));
    let e = Sotw::open(&h, bad).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("sidecar~10.0.0.1~x~ns"), "{e}");

    let mut none = req(Cluster, &[], "", "");
    none.node = None;
    let e = Sotw::open(&h, none).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("node.id"), "{e}");

    let mut meta = node(NODE);
    meta.metadata = Some(Struct {
        fields: [(
            "shoal.ingress_port".to_string(),
            Value {
                kind: Some(Kind::StringValue("http".into())),
            },
        )]
        .into(),
    });
    let mut bad_meta = dreq(Cluster, &[], &[], "");
    bad_meta.node = Some(meta);
    let e = Delta::open(&h, bad_meta).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("shoal.ingress_port"), "{e}");

    let mut refused = req(Cluster, &[], "", "");
    refused.node = Some(node("mesh/m/virtualNode/refused"));
    let e = Sotw::open(&h, refused).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let stats = h.ads.stats();
    assert_eq!(stats.streams_refused, 4);
    assert_eq!(stats.streams_total, 0);
    h.stop().await;
}

#[tokio::test]
async fn node_metadata_reaches_the_source() {
    let h = Harness::start().await;
    let mut n = node("arn:aws:appmesh:us-east-1:111122223333:mesh/m/virtualNode/a");
    n.metadata = Some(Struct {
        fields: [
            (
                "shoal.ingress_port".to_string(),
                Value {
                    kind: Some(Kind::NumberValue(8080.0)),
                },
            ),
            (
                "shoal.listen_address".to_string(),
                Value {
                    kind: Some(Kind::StringValue("127.0.0.1".into())),
                },
            ),
        ]
        .into(),
    });
    let mut first = req(Cluster, &[], "", "");
    first.node = Some(n);
    let mut s = Sotw::open(&h, first).await.unwrap();
    s.recv().await;
    let subs = h.source.subscriptions.lock().unwrap().clone();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].0.to_string(), NODE);
    assert_eq!(subs[0].1.ingress_port, 8080);
    assert_eq!(subs[0].1.egress_port, 15001);
    assert_eq!(subs[0].1.listen_address, "127.0.0.1");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_every_stream_and_releases_the_watches() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (mut s, _) = sotw_synced(&h).await;
    let mut d = Delta::open(&h, dreq(Listener, &[], &[], "")).await.unwrap();
    d.recv().await;
    assert_eq!(h.ads.streams_open(), 2);
    assert!(h.source.watched(NODE));
    let ads = h.ads.clone();
    let source = h.source.clone();
    h.stop().await;
    let end = s.end().await.expect("ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert_eq!(ads.streams_open(), 0);
    assert!(!source.watched(NODE));
    drop(d);
}

#[tokio::test]
async fn a_dropped_client_releases_its_watch() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let (s, _) = sotw_synced(&h).await;
    assert!(h.source.watched(NODE));
    drop(s);
    h.until("the stream to close", |s| s.streams_open == 0)
        .await;
    assert!(!h.source.watched(NODE));
    assert!(h.ads.proxies().is_empty());
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Incremental (delta) xDS.

/// Opens a delta stream the way Envoy does, ACKs everything, and returns it.
async fn delta_synced(h: &Harness) -> Delta {
    let mut d = Delta::open(h, dreq(Cluster, &[], &[], "")).await.unwrap();
    let cds = d.recv().await;
    assert_eq!(delta_contents(&cds), ["c1=v1", "c2=v1"]);
    d.subscribe(Endpoint, &["c1", "c2"], &[]);
    d.subscribe(Listener, &[], &[]);
    d.subscribe(Route, &["egress"], &[]);
    d.subscribe(Secret, &["cert"], &[]);
    let eds = d.recv().await;
    let sds = d.recv().await;
    assert_eq!(type_of(&eds.type_url), Endpoint);
    assert_eq!(delta_contents(&eds), ["c1=v1", "c2=v1"]);
    assert_eq!(delta_contents(&sds), ["cert=v1"]);
    d.silence().await;
    d.ack(&cds);
    d.ack(&sds);
    let lds = d.recv().await;
    let rds = d.recv().await;
    assert_eq!(type_of(&lds.type_url), Listener);
    assert_eq!(delta_contents(&rds), ["egress=v1"]);
    d.ack(&eds);
    d.ack(&lds);
    d.ack(&rds);
    h.until("5 ACKs", |s| s.acks.total() == 5).await;
    d
}

#[tokio::test]
async fn delta_sends_changes_and_removals_only() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let mut d = delta_synced(&h).await;

    // c1 changes, c2 goes away, the route changes.
    let next = || {
        snap(&[
            (Secret, "cert", 1),
            (Cluster, "c1", 2),
            (Endpoint, "c1", 1),
            (Listener, "egress", 1),
            (Route, "egress", 2),
        ])
    };
    h.source.set(NODE, next());
    let cds = d.recv().await;
    assert_eq!(delta_contents(&cds), ["c1=v2", "-c2"]);
    let eds = d.recv().await;
    assert_eq!(delta_contents(&eds), ["-c2"]);
    d.silence().await; // the route waits for the cluster ACK
    d.ack(&cds);
    let rds = d.recv().await;
    assert_eq!(delta_contents(&rds), ["egress=v2"]);
    d.ack(&eds);
    d.ack(&rds);
    h.source.set(NODE, next());
    d.silence().await;
    let stats = h.ads.stats();
    assert_eq!(stats.responses.total(), 8);
    assert_eq!(stats.acks.total(), 8);
    h.stop().await;
}

#[tokio::test]
async fn delta_subscriptions_unsubscriptions_and_absent_names() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let mut d = delta_synced(&h).await;

    // Unsubscribing sends nothing, and changes to the dropped name are not sent.
    d.subscribe(Endpoint, &[], &["c2"]);
    d.silence().await;
    let with_c2 = |v: u32| {
        let mut m = mesh(1);
        for r in snap(&[(Endpoint, "c2", v)]).resources(Endpoint).values() {
            m.insert(Endpoint, r.clone());
        }
        m
    };
    h.source.set(NODE, with_c2(5));
    d.silence().await;
    // Subscribing again sends the current one.
    d.subscribe(Endpoint, &["c2"], &[]);
    let eds = d.recv().await;
    assert_eq!(delta_contents(&eds), ["c2=v5"]);
    d.ack(&eds);
    // A name that does not exist is reported removed, once.
    d.subscribe(Endpoint, &["nope"], &[]);
    let eds = d.recv().await;
    assert_eq!(delta_contents(&eds), ["-nope"]);
    d.ack(&eds);
    h.source.set(NODE, with_c2(5));
    d.silence().await;
    // When it appears it is sent.
    let mut m = with_c2(5);
    for r in snap(&[(Endpoint, "nope", 3)]).resources(Endpoint).values() {
        m.insert(Endpoint, r.clone());
    }
    h.source.set(NODE, m);
    let eds = d.recv().await;
    assert_eq!(delta_contents(&eds), ["nope=v3"]);
    h.stop().await;
}

#[tokio::test]
async fn delta_nack_is_counted_and_not_resent() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let mut d = delta_synced(&h).await;
    let with = |v: u32| {
        let mut m = mesh(1);
        for r in snap(&[(Listener, "egress", v)])
            .resources(Listener)
            .values()
        {
            m.insert(Listener, r.clone());
        }
        m
    };
    h.source.set(NODE, with(2));
    let lds = d.recv().await;
    assert_eq!(delta_contents(&lds), ["egress=v2"]);
    d.nack(&lds, "listener egress: bad filter");
    d.silence().await;
    h.source.set(NODE, with(2));
    d.silence().await;
    let stats = h.ads.stats();
    assert_eq!(stats.nacks.get(Listener), 1);
    assert_eq!(
        stats.last_nack.unwrap().message,
        "listener egress: bad filter"
    );
    h.source.set(NODE, with(3));
    let lds = d.recv().await;
    assert_eq!(delta_contents(&lds), ["egress=v3"]);
    d.ack(&lds);
    h.until("the LDS ACK", |s| s.acks.get(Listener) == 2).await;
    h.stop().await;
}

#[tokio::test]
async fn delta_stale_nonce_keeps_the_subscription_change() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let mut d = delta_synced(&h).await;
    d.subscribe(Endpoint, &[], &["c2"]);
    d.silence().await;
    let mut r = dreq(Endpoint, &["c2"], &[], "not-a-nonce");
    r.response_nonce = "not-a-nonce".into();
    d.send(r);
    let eds = d.recv().await;
    assert_eq!(delta_contents(&eds), ["c2=v1"]);
    assert_eq!(h.ads.stats().acks.total(), 5);
    h.stop().await;
}

#[tokio::test]
async fn delta_resume_sends_only_what_differs() {
    let h = Harness::start().await;
    h.source.set(NODE, mesh(1));
    let m = mesh(1);
    let versions = |ty: ResourceType| -> HashMap<String, String> {
        m.resources(ty)
            .values()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    };

    // Everything current: nothing is sent.
    let mut first = dreq(Cluster, &[], &[], "");
    first.initial_resource_versions = versions(Cluster);
    let mut d = Delta::open(&h, first).await.unwrap();
    let mut lds = dreq(Listener, &[], &[], "");
    lds.initial_resource_versions = versions(Listener);
    d.send(lds);
    let mut eds = dreq(Endpoint, &["c1", "c2"], &[], "");
    eds.initial_resource_versions = versions(Endpoint);
    d.send(eds);
    d.silence().await;
    assert_eq!(h.ads.stats().responses.total(), 0);
    drop(d);

    // One stale, one unknown: only those are sent.
    let mut first = dreq(Cluster, &[], &[], "");
    first.initial_resource_versions = versions(Cluster);
    first
        .initial_resource_versions
        .insert("c2".into(), "stale".into());
    first
        .initial_resource_versions
        .insert("gone".into(), "x".into());
    let mut d = Delta::open(&h, first).await.unwrap();
    let cds = d.recv().await;
    assert_eq!(delta_contents(&cds), ["c2=v1", "-gone"]);
    d.ack(&cds);
    d.silence().await;
    h.stop().await;
}

#[tokio::test]
async fn delta_first_wildcard_request_is_answered_even_when_empty() {
    let h = Harness::start().await;
    let mut d = Delta::open(&h, dreq(Listener, &[], &[], "")).await.unwrap();
    let lds = d.recv().await;
    assert!(lds.resources.is_empty() && lds.removed_resources.is_empty());
    d.ack(&lds);
    d.silence().await;
    h.source.set(NODE, mesh(1));
    let lds = d.recv().await;
    assert_eq!(delta_contents(&lds), ["egress=v1"]);
    h.stop().await;
}
