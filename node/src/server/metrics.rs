//! Prometheus metrics served at `GET /metrics`: API requests by operation and status, Raft
//! write latency, and resources by kind (read from the model at scrape time, so the figure
//! can never drift from the store).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shoal_model::Kind;
use shoal_raft::RaftNode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The node's metrics. Cheap to update from any task (atomics inside).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<OperationLabel, Histogram, fn() -> Histogram>,
    apply_seconds: Histogram,
    resources: Family<KindLabel, Gauge>,
    revision: Gauge,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    is_leader: Gauge,
    workload_certificates: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "App Mesh API requests by operation and HTTP status",
            requests.clone(),
        );
        let request_seconds =
            Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "api_request_duration_seconds",
            "App Mesh API request latency by operation",
            request_seconds.clone(),
        );
        let apply_seconds = latency_histogram();
        registry.register(
            "raft_apply_duration_seconds",
            "Time from proposing a write to Raft until it is committed and applied",
            apply_seconds.clone(),
        );
        let resources = Family::<KindLabel, Gauge>::default();
        registry.register(
            "resources",
            "Resources in the model by kind",
            resources.clone(),
        );
        let revision = Gauge::default();
        registry.register(
            "model_revision",
            "Revision of the model on this node",
            revision.clone(),
        );
        let term = Gauge::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        let commit_index = Gauge::default();
        registry.register(
            "raft_commit_index",
            "Last committed Raft log index",
            commit_index.clone(),
        );
        let applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Last applied Raft log index",
            applied_index.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "raft_is_leader",
            "1 if this node is the Raft leader",
            is_leader.clone(),
        );
        let workload_certificates = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "mesh_ca_workload_certificates",
            "Workload certificate requests this server answered, by outcome (issued, refused)",
            workload_certificates.clone(),
        );
        Metrics {
            registry,
            workload_certificates,
            requests,
            request_seconds,
            apply_seconds,
            resources,
            revision,
            term,
            commit_index,
            applied_index,
            is_leader,
        }
    }

    /// Counts one workload certificate request: issued, or refused (a missing node, a bad
    /// CSR, no mesh CA).
    pub fn observe_workload_certificate(&self, issued: bool) {
        let outcome = if issued { "issued" } else { "refused" };
        self.workload_certificates
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one API request.
    pub fn observe_request(&self, operation: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                code,
            })
            .inc();
        self.request_seconds
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records the latency of one Raft write.
    pub fn observe_apply(&self, took: Duration) {
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// Renders the text exposition format, refreshing the gauges read from `raft` first.
    pub fn render(&self, raft: &RaftNode) -> String {
        let counts = raft.read(|m| m.counts());
        for kind in Kind::ALL {
            self.resources
                .get_or_create(&KindLabel {
                    kind: kind.arn_segment().to_string(),
                })
                .set(counts.get(&kind).copied().unwrap_or(0) as i64);
        }
        let s = raft.status();
        self.revision.set(s.revision as i64);
        self.term.set(s.term as i64);
        self.commit_index.set(s.commit_index as i64);
        self.applied_index.set(s.applied_index as i64);
        self.is_leader
            .set(i64::from(s.leader_id == Some(s.node_id)));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
