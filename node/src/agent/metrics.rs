//! The agent's Prometheus metrics. Every figure is read from the agent's state at scrape time
//! (a fresh registry per scrape), so none can drift from what the agent actually holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AgentState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: &'static str,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The OpenMetrics text of `state`'s metrics.
pub fn render(state: &AgentState) -> String {
    let mut r = Registry::with_prefix("shoal_agent");
    let model_revision = state.model.borrow().revision();
    let follow = state.follow.lock().map(|f| f.clone()).unwrap_or_default();
    gauge(
        &mut r,
        "model_revision",
        "Revision of the model the agent serves",
        model_revision as i64,
    );
    gauge(
        &mut r,
        "following",
        "1 while a server's watch stream is open",
        i64::from(follow.server.is_some()),
    );
    gauge(
        &mut r,
        "from_cache",
        "1 while the model comes from the local cache and no server has answered",
        i64::from(follow.from_cache),
    );
    gauge(
        &mut r,
        "model_cache_ok",
        "0 while the last write of the model cache failed (the agent serves a model its disk does not hold)",
        i64::from(follow.cache_error.is_none()),
    );
    counter(
        &mut r,
        "model_cache_write_failures",
        "Model cache writes that failed since start",
        follow.cache_write_failures,
    );
    counter(
        &mut r,
        "watch_streams_opened",
        "Watch streams opened since start",
        follow.streams_opened,
    );
    let ids = state.identity.lock().map(|i| i.clone()).unwrap_or_default();
    counter(
        &mut r,
        "workload_certificates_issued",
        "Workload certificates issued to this agent's proxies since start (renewals included)",
        ids.issued,
    );
    counter(
        &mut r,
        "workload_certificate_failures",
        "Workload certificate requests that failed since start",
        ids.failures,
    );
    gauge(
        &mut r,
        "workload_certificates",
        "Workload certificates this agent holds",
        ids.held as i64,
    );
    gauge(
        &mut r,
        "workload_certificate_soonest_expiry_seconds",
        "Unix time of the soonest expiry among them (0: none held)",
        ids.soonest_expiry.map_or(0, |e| e as i64),
    );
    gauge(
        &mut r,
        "members",
        "Gossip members this agent sees",
        state.gossip.members().len() as i64,
    );
    let dropped = state.gossip.dropped_datagrams();
    let drops = Family::<ReasonLabel, Counter<u64>>::default();
    for (reason, n) in [
        ("unauthenticated", dropped.unauthenticated),
        ("malformed", dropped.malformed),
        ("oversized", dropped.oversized),
    ] {
        drops.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }
    r.register(
        "gossip_datagrams_dropped",
        "Gossip datagrams dropped before decoding, by reason (unauthenticated: no installed key opens it)",
        drops,
    );
    gauge(
        &mut r,
        "gossip_keys",
        "Keys in the gossip keyring (0: gossip is plaintext)",
        state.gossip.keyring().map_or(0, |k| k.keys().len() as i64),
    );
    gauge(
        &mut r,
        "local_instances",
        "Instances registered on this host",
        state.local.list().len() as i64,
    );
    let eps = state.view.endpoints();
    let family = Family::<HealthLabel, Gauge>::default();
    let healthy = eps.iter().filter(|e| e.healthy).count() as i64;
    family
        .get_or_create(&HealthLabel { health: "healthy" })
        .set(healthy);
    family
        .get_or_create(&HealthLabel {
            health: "unhealthy",
        })
        .set(eps.len() as i64 - healthy);
    r.register("endpoints", "Endpoints in the view, by health", family);
    if let Some(dns) = &state.dns {
        let c = dns.counters();
        counter(
            &mut r,
            "dns_queries",
            "DNS queries received",
            c.queries_udp() + c.queries_tcp(),
        );
        counter(
            &mut r,
            "dns_malformed",
            "Malformed DNS queries dropped or refused",
            c.malformed(),
        );
        counter(
            &mut r,
            "dns_nxdomain",
            "DNS answers with NXDOMAIN",
            c.nxdomain(),
        );
        counter(&mut r, "dns_refused", "DNS queries refused", c.refused());
        counter(
            &mut r,
            "dns_forwarded",
            "DNS queries forwarded to a recursor",
            c.forwarded(),
        );
        counter(
            &mut r,
            "dns_forward_failures",
            "Forwarded DNS queries that failed",
            c.forward_failures(),
        );
        counter(
            &mut r,
            "dns_truncated",
            "DNS answers truncated (TC) over UDP",
            c.truncated(),
        );
    }
    if let Some(ads) = &state.ads {
        let st = ads.stats();
        gauge(
            &mut r,
            "xds_streams_open",
            "ADS streams open",
            st.streams_open as i64,
        );
        counter(
            &mut r,
            "xds_streams",
            "ADS streams accepted since start",
            st.streams_total,
        );
        counter(
            &mut r,
            "xds_streams_refused",
            "ADS streams refused (bad node id or metadata)",
            st.streams_refused,
        );
        gauge(
            &mut r,
            "xds_proxies",
            "Proxies with an open stream",
            state.proxies.count() as i64,
        );
        for (name, help, counts) in [
            (
                "xds_responses",
                "xDS responses sent, by type",
                &st.responses,
            ),
            ("xds_acks", "xDS ACKs received, by type", &st.acks),
            (
                "xds_nacks",
                "xDS NACKs received (Envoy rejected a config), by type",
                &st.nacks,
            ),
        ] {
            let family = Family::<TypeLabel, Counter>::default();
            for ty in shoal_xds::ResourceType::ALL {
                family
                    .get_or_create(&TypeLabel {
                        r#type: type_name(ty),
                    })
                    .inc_by(counts.get(ty));
            }
            r.register(name, help, family);
        }
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        tracing::warn!(error = %e, "encoding agent metrics");
    }
    out
}

fn type_name(ty: shoal_xds::ResourceType) -> &'static str {
    use shoal_xds::ResourceType as T;
    match ty {
        T::Cluster => "cluster",
        T::Endpoint => "endpoint",
        T::Listener => "listener",
        T::Route => "route",
        T::Secret => "secret",
    }
}
