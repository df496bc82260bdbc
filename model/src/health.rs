//! Which health check an instance gets and how its results become a health state: the pure
//! half of the agents' health checking (the probes themselves are I/O and live in the agent).
//!
//! App Mesh lets a virtual node's listener carry a `healthCheck` policy (protocol, path, port,
//! interval, timeout and thresholds). Envoy runs those checks itself in App Mesh; shoal runs them
//! in the agent instead, because the result has to reach every host (through gossip) and the DNS
//! answers, not only the Envoys that route to the instance.
//!
//! - [`check_for`]: the check an instance gets, from the virtual nodes that select it.
//! - [`CheckSpec`]: a policy turned into durations and counts the runner can use, with values
//!   clamped into a sane range (see [`CheckSpec::from_policy`]).
//! - [`Tracker`]: the threshold state machine that turns probe results into a
//!   [`HealthState`], as Envoy's active health checking does.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{HealthCheckPolicy, PortProtocol};
use crate::discovery::{selects, Instance};
use crate::{api, Kind, Model, ResourceKey, Spec};

/// The shortest interval [`CheckSpec::from_policy`] accepts: probing faster than once a second
/// only loads the instance (App Mesh itself requires at least 5 s).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval [`CheckSpec::from_policy`] accepts (App Mesh's own maximum, 300 s).
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest timeout [`CheckSpec::from_policy`] accepts: below it a loaded but healthy
/// instance on the same host would flap (App Mesh itself requires at least 2 s).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest timeout [`CheckSpec::from_policy`] accepts (App Mesh's own maximum, 60 s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest threshold [`CheckSpec::from_policy`] accepts (App Mesh's own maximum); the
/// smallest is 1, since a threshold of 0 would never let a state change.
pub const MAX_THRESHOLD: u32 = 10;

/// What the checker currently believes about one instance.
///
/// Serialized in lowercase (`"unknown"`, `"healthy"`, `"unhealthy"`) so that it can be
/// published as is (gossip, status output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No probe has finished yet.
    Unknown,
    /// The thresholds say the instance answers its checks.
    Healthy,
    /// The thresholds say the instance fails its checks.
    Unhealthy,
}

impl HealthState {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One health check as the runner executes it: a listener's `healthCheck` policy in durations
/// and counts, with silly values already clamped.
///
/// The fields are public so that tests (and callers with their own defaults) can build a spec
/// with intervals shorter than a policy may carry; [`spawn_check`] and [`Tracker::new`] still
/// treat a threshold of 0 as 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// How to probe: `tcp` connects; `http` sends an HTTP/1.1 `GET` of `path` and is healthy on
    /// any 2xx status; `http2` does the same over HTTP/2 with prior knowledge (h2c); `grpc` asks
    /// `grpc.health.v1.Health/Check` for service `""` and is healthy on `SERVING`.
    pub protocol: PortProtocol,
    /// The request path of `http` and `http2` checks (always starts with `/`); unused otherwise.
    pub path: String,
    /// The port to probe instead of the instance's own port (the policy's `port`).
    pub port: Option<u16>,
    /// The time between the starts of two probes (a probe that outlasts it delays the next).
    pub interval: Duration,
    /// How long one probe may take, connection included, before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passes that turn an unhealthy instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that turn a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
    /// Whether the listener takes TLS only (set by [`check_for`]): the probe then speaks TLS
    /// to it, as every caller must.
    pub tls: Option<ProbeTls>,
}

/// How a probe reaches a listener that takes TLS only (`STRICT`, in its spec or by the mesh's
/// automatic mTLS). The probe checks liveness, not who answers (the callers' Envoys check
/// that), so the server's certificate is not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTls {
    /// The virtual node (mesh, name) whose workload certificate the probe presents, when the
    /// listener asks clients for one (mutual TLS): the node probing itself, which automatic
    /// mTLS's authorization admits.
    pub client_identity: Option<(String, String)>,
}

impl CheckSpec {
    /// Builds the spec of an App Mesh listener `healthCheck` policy.
    ///
    /// The API validates policies (interval 5–300 s, timeout 2–60 s, thresholds 2–10), but a
    /// policy may also come from a file or an older version, so every value is clamped rather
    /// than trusted: the interval into [`MIN_INTERVAL`]..=[`MAX_INTERVAL`], the timeout into
    /// [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`], the thresholds into 1..=[`MAX_THRESHOLD`]. A port
    /// outside 1–65535 is ignored (the instance's own port is probed). A missing or empty path
    /// becomes `/`, and a path without a leading `/` gets one.
    pub fn from_policy(policy: &HealthCheckPolicy) -> Self {
        let path = match policy.path.as_deref().map(str::trim) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        CheckSpec {
            protocol: policy.protocol,
            path,
            port: policy
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
            interval: clamp_millis(policy.interval_millis, MIN_INTERVAL, MAX_INTERVAL),
            timeout: clamp_millis(policy.timeout_millis, MIN_TIMEOUT, MAX_TIMEOUT),
            healthy_threshold: clamp_threshold(policy.healthy_threshold),
            unhealthy_threshold: clamp_threshold(policy.unhealthy_threshold),
            tls: None,
        }
    }

    /// The address a probe of an instance at `instance` goes to: the instance's IP with the
    /// spec's port when it has one.
    pub fn target_for(&self, instance: SocketAddr) -> SocketAddr {
        match self.port {
            Some(port) => SocketAddr::new(instance.ip(), port),
            None => instance,
        }
    }
}

fn clamp_millis(millis: i64, min: Duration, max: Duration) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0)).clamp(min, max)
}

fn clamp_threshold(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0).clamp(1, MAX_THRESHOLD)
}

/// The threshold state machine of one instance's checks; pure, so that its rules are tested
/// without sockets or clocks.
///
/// The state starts [`HealthState::Unknown`]. The first result decides directly (a pass makes
/// the instance healthy, a failure unhealthy), as Envoy does for a host it has just learned of,
/// so that a new instance takes traffic after one probe and a dead one never does. After that
/// it takes `healthy_threshold` consecutive passes to go from unhealthy to healthy and
/// `unhealthy_threshold` consecutive failures to go from healthy to unhealthy; a result that
/// agrees with the current state resets the count.
#[derive(Debug, Clone)]
pub struct Tracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    state: HealthState,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Tracker {
    /// A tracker in state `Unknown`. A threshold of 0 is taken as 1 (it could never be met).
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Tracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            state: HealthState::Unknown,
            streak: 0,
        }
    }

    /// A tracker with the thresholds of `spec`.
    pub fn for_spec(spec: &CheckSpec) -> Self {
        Tracker::new(spec.healthy_threshold, spec.unhealthy_threshold)
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Records one probe result; returns the new state when this result changed it, so that the
    /// caller publishes and logs transitions only.
    pub fn record(&mut self, passed: bool) -> Option<HealthState> {
        let (target, threshold) = match (self.state, passed) {
            (HealthState::Unknown, true) => (HealthState::Healthy, 1),
            (HealthState::Unknown, false) => (HealthState::Unhealthy, 1),
            (HealthState::Healthy, true) | (HealthState::Unhealthy, false) => {
                self.streak = 0;
                return None;
            }
            (HealthState::Healthy, false) => (HealthState::Unhealthy, self.unhealthy_threshold),
            (HealthState::Unhealthy, true) => (HealthState::Healthy, self.healthy_threshold),
        };
        self.streak += 1;
        if self.streak < threshold {
            return None;
        }
        self.state = target;
        self.streak = 0;
        Some(target)
    }
}

/// The check to run for `inst`, and where: the `healthCheck` of a listener of the first virtual
/// node (in key order) that selects the instance — the listener on the instance's port if it
/// has a check, else the first listener that has one, as a [`CheckSpec`]. The target is the
/// instance's address on the check's `port` (default: the instance's port). `None`: no check; the instance is
/// healthy while its host is alive.
pub fn check_for(model: &Model, inst: &Instance) -> Option<(SocketAddr, CheckSpec)> {
    for r in model.iter().filter(|r| r.key.kind == Kind::VirtualNode) {
        let Spec::VirtualNode(spec) = &r.spec else {
            continue;
        };
        if !selects(&r.key, spec, inst) {
            continue;
        }
        let listeners = spec.listeners.as_deref().unwrap_or_default();
        let on_port = listeners
            .iter()
            .find(|l| l.port_mapping.port == i32::from(inst.port) && l.health_check.is_some());
        let chosen = on_port.or_else(|| listeners.iter().find(|l| l.health_check.is_some()));
        if let Some(policy) = chosen.and_then(|l| l.health_check.as_ref()) {
            let mut spec = CheckSpec::from_policy(policy);
            spec.tls = chosen.and_then(|l| probe_tls(model, &r.key, l));
            let target = spec.target_for(SocketAddr::new(inst.address, inst.port));
            return Some((target, spec));
        }
        // The first selecting node decides, even when it has no check.
        return None;
    }
    None
}

/// How a probe must speak to listener `l` of virtual node `node`: TLS when the listener takes
/// nothing else, with the node's own certificate when it also asks for the client's.
fn probe_tls(model: &Model, node: &ResourceKey, l: &api::Listener) -> Option<ProbeTls> {
    let mutual = match &l.tls {
        Some(tls) => match tls.mode {
            api::ListenerTlsMode::Strict => tls.validation.is_some(),
            api::ListenerTlsMode::Permissive | api::ListenerTlsMode::Disabled => return None,
        },
        None => match crate::identity::MtlsMode::of_mesh(model, &node.mesh) {
            crate::identity::MtlsMode::Strict => true,
            _ => return None,
        },
    };
    Some(ProbeTls {
        client_identity: mutual.then(|| (node.mesh.clone(), node.name.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_create;
    use crate::{Command, PutMode, ResourceKey, Stamp};
    use serde_json::json;

    fn policy(protocol: PortProtocol) -> HealthCheckPolicy {
        HealthCheckPolicy {
            healthy_threshold: 3,
            interval_millis: 10_000,
            path: Some("/ping".into()),
            port: Some(8081),
            protocol,
            timeout_millis: 2_000,
            unhealthy_threshold: 4,
        }
    }

    // ---- Tracker ----

    fn run(tracker: &mut Tracker, results: &str) -> Vec<HealthState> {
        results
            .chars()
            .map(|c| {
                tracker.record(c == '+');
                tracker.state()
            })
            .collect()
    }

    #[test]
    fn tracker_starts_unknown() {
        assert_eq!(Tracker::new(2, 2).state(), HealthState::Unknown);
    }

    #[test]
    fn tracker_first_pass_decides_healthy() {
        let mut t = Tracker::new(5, 5);
        assert_eq!(t.record(true), Some(HealthState::Healthy));
        assert_eq!(t.state(), HealthState::Healthy);
    }

    #[test]
    fn tracker_first_failure_decides_unhealthy() {
        let mut t = Tracker::new(5, 5);
        assert_eq!(t.record(false), Some(HealthState::Unhealthy));
        assert_eq!(t.state(), HealthState::Unhealthy);
    }

    #[test]
    fn tracker_needs_unhealthy_threshold_consecutive_failures() {
        use HealthState::*;
        let mut t = Tracker::new(2, 3);
        assert_eq!(
            run(&mut t, "+---"),
            vec![Healthy, Healthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn tracker_needs_healthy_threshold_consecutive_passes() {
        use HealthState::*;
        let mut t = Tracker::new(3, 2);
        assert_eq!(
            run(&mut t, "-+++"),
            vec![Unhealthy, Unhealthy, Unhealthy, Healthy]
        );
    }

    #[test]
    fn tracker_pass_resets_failure_streak() {
        use HealthState::*;
        let mut t = Tracker::new(2, 3);
        // Two failures, a pass, two failures: never three in a row.
        assert_eq!(run(&mut t, "+--+--"), vec![Healthy; 6]);
        assert_eq!(t.record(false), Some(Unhealthy));
    }

    #[test]
    fn tracker_failure_resets_pass_streak() {
        use HealthState::*;
        let mut t = Tracker::new(3, 2);
        assert_eq!(run(&mut t, "-++-++"), vec![Unhealthy; 6]);
        assert_eq!(t.record(true), Some(Healthy));
    }

    #[test]
    fn tracker_reports_transitions_only() {
        use HealthState::*;
        let mut t = Tracker::new(2, 2);
        let got: Vec<_> = "+++--+-++--".chars().map(|c| t.record(c == '+')).collect();
        assert_eq!(
            got,
            vec![
                Some(Healthy),
                None,
                None,
                None,
                Some(Unhealthy),
                None,
                None,
                None,
                Some(Healthy),
                None,
                Some(Unhealthy),
            ]
        );
    }

    #[test]
    fn tracker_streak_starts_over_after_a_transition() {
        use HealthState::*;
        let mut t = Tracker::new(2, 2);
        // Becoming unhealthy at the 3rd result must not count its failures towards anything;
        // becoming healthy again needs two fresh passes, then two fresh failures.
        assert_eq!(
            run(&mut t, "+--++--"),
            vec![Healthy, Healthy, Unhealthy, Unhealthy, Healthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn tracker_threshold_one_flips_on_every_disagreeing_result() {
        use HealthState::*;
        let mut t = Tracker::new(1, 1);
        assert_eq!(
            run(&mut t, "+-+-"),
            vec![Healthy, Unhealthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn tracker_zero_thresholds_act_as_one() {
        use HealthState::*;
        let mut t = Tracker::new(0, 0);
        assert_eq!(run(&mut t, "+-+"), vec![Healthy, Unhealthy, Healthy]);
    }

    #[test]
    fn tracker_for_spec_uses_its_thresholds() {
        use HealthState::*;
        let mut s = CheckSpec::from_policy(&policy(PortProtocol::Tcp));
        s.healthy_threshold = 4;
        s.unhealthy_threshold = 1;
        let mut t = Tracker::for_spec(&s);
        assert_eq!(
            run(&mut t, "+-+++"),
            vec![Healthy, Unhealthy, Unhealthy, Unhealthy, Unhealthy]
        );
        assert_eq!(t.record(true), Some(Healthy));
    }

    #[test]
    fn health_state_names() {
        assert_eq!(HealthState::Healthy.to_string(), "healthy");
        assert_eq!(
            serde_json::to_string(&HealthState::Unhealthy).unwrap(),
            "\"unhealthy\""
        );
        assert_eq!(
            serde_json::from_str::<HealthState>("\"unknown\"").unwrap(),
            HealthState::Unknown
        );
    }

    // ---- CheckSpec ----

    #[test]
    fn spec_from_valid_policy() {
        let s = CheckSpec::from_policy(&policy(PortProtocol::Http));
        assert_eq!(
            s,
            CheckSpec {
                protocol: PortProtocol::Http,
                path: "/ping".into(),
                port: Some(8081),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
                healthy_threshold: 3,
                unhealthy_threshold: 4,
                tls: None,
            }
        );
    }

    #[test]
    fn spec_clamps_silly_values() {
        let mut p = policy(PortProtocol::Grpc);
        p.interval_millis = 1;
        p.timeout_millis = -5;
        p.healthy_threshold = 0;
        p.unhealthy_threshold = -3;
        p.port = Some(0);
        let s = CheckSpec::from_policy(&p);
        assert_eq!(s.interval, MIN_INTERVAL);
        assert_eq!(s.timeout, MIN_TIMEOUT);
        assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (1, 1));
        assert_eq!(s.port, None);

        p.interval_millis = i64::MAX;
        p.timeout_millis = 10_000_000;
        p.healthy_threshold = 1000;
        p.unhealthy_threshold = i32::MAX;
        p.port = Some(70_000);
        let s = CheckSpec::from_policy(&p);
        assert_eq!(s.interval, MAX_INTERVAL);
        assert_eq!(s.timeout, MAX_TIMEOUT);
        assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (10, 10));
        assert_eq!(s.port, None);
    }

    #[test]
    fn spec_normalizes_the_path() {
        let mut p = policy(PortProtocol::Http2);
        for (given, want) in [
            (None, "/"),
            (Some(""), "/"),
            (Some("  "), "/"),
            (Some("health"), "/health"),
            (Some("/a/b?x=1"), "/a/b?x=1"),
        ] {
            p.path = given.map(str::to_string);
            assert_eq!(CheckSpec::from_policy(&p).path, want, "{given:?}");
        }
    }

    #[test]
    fn spec_port_override_applies_to_the_target() {
        let s = CheckSpec::from_policy(&policy(PortProtocol::Tcp));
        let instance: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        assert_eq!(s.target_for(instance), "10.0.0.7:8081".parse().unwrap());
        let mut p = policy(PortProtocol::Tcp);
        p.port = None;
        assert_eq!(CheckSpec::from_policy(&p).target_for(instance), instance);
    }

    // ---- check_for ----

    fn model_with(nodes: &[(&str, serde_json::Value)]) -> Model {
        let mut m = Model::default();
        let mut run = |key: ResourceKey, kind: Kind, body: serde_json::Value| {
            let r = parse_create(kind, body.to_string().as_bytes()).unwrap();
            let i = m.revision() + 1;
            m.apply(
                i,
                &Command::Put {
                    key,
                    spec: Box::new(r.spec),
                    mode: PutMode::Create,
                    tags: vec![],
                    client_token: None,
                    stamp: Stamp {
                        now: 1.0,
                        uid: format!("u{i}"),
                        account: "000000000000".into(),
                        region: "us-east-1".into(),
                    },
                },
            )
            .outcome
            .unwrap();
        };
        run(
            ResourceKey::mesh("m"),
            Kind::Mesh,
            json!({"meshName": "m", "spec": {}}),
        );
        for (name, spec) in nodes {
            run(
                ResourceKey::in_mesh("m", Kind::VirtualNode, name),
                Kind::VirtualNode,
                json!({"virtualNodeName": name, "spec": spec}),
            );
        }
        m
    }

    fn hc(port: Option<u16>, path: &str) -> serde_json::Value {
        let mut v = json!({"protocol": "http", "path": path, "intervalMillis": 5000,
            "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2});
        if let Some(p) = port {
            v["port"] = json!(p);
        }
        v
    }

    fn inst(port: u16) -> Instance {
        Instance::cloud_map("apps.local", "web", "i1", "10.0.0.5".parse().unwrap(), port)
    }

    fn cloud_map() -> serde_json::Value {
        json!({"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "web"}})
    }

    #[test]
    fn the_listener_on_the_instance_port_wins() {
        let m = model_with(&[(
            "web",
            json!({"serviceDiscovery": cloud_map(), "listeners": [
                {"portMapping": {"port": 8080, "protocol": "http"}, "healthCheck": hc(None, "/a")},
                {"portMapping": {"port": 9090, "protocol": "http"}, "healthCheck": hc(Some(9999), "/b")},
            ]}),
        )]);
        let (target, p) = check_for(&m, &inst(9090)).unwrap();
        assert_eq!(target, "10.0.0.5:9999".parse().unwrap());
        assert_eq!(p.path, "/b");
        // No listener on the port: the first one with a check, on the instance's port.
        let (target, p) = check_for(&m, &inst(7000)).unwrap();
        assert_eq!(target, "10.0.0.5:7000".parse().unwrap());
        assert_eq!(p.path, "/a");
    }

    #[test]
    fn no_selecting_node_or_no_check_means_none() {
        let m = model_with(&[(
            "web",
            json!({"serviceDiscovery": cloud_map(), "listeners": [
                {"portMapping": {"port": 8080, "protocol": "http"}}]}),
        )]);
        assert!(check_for(&m, &inst(8080)).is_none());
        let mut other = inst(8080);
        other.service = "api".into();
        assert!(check_for(&Model::default(), &other).is_none());
    }

    #[test]
    fn a_listener_that_takes_tls_only_is_probed_over_tls() {
        let cert = json!({"file": {"certificateChain": "/c", "privateKey": "/k"}});
        let tls = |mode: &str, mutual: bool| {
            let mut t = json!({"mode": mode, "certificate": cert});
            if mutual {
                t["validation"] = json!({"trust": {"file": {"certificateChain": "/ca"}}});
            }
            json!({"serviceDiscovery": cloud_map(), "listeners": [{"portMapping":
                {"port": 8080, "protocol": "http"}, "healthCheck": hc(None, "/"), "tls": t}]})
        };
        let probe = |spec: serde_json::Value| {
            check_for(&model_with(&[("web", spec)]), &inst(8080))
                .unwrap()
                .1
                .tls
        };
        assert_eq!(
            probe(tls("PERMISSIVE", true)),
            None,
            "plain text still works"
        );
        assert_eq!(probe(tls("DISABLED", false)), None);
        assert_eq!(
            probe(tls("STRICT", false)),
            Some(ProbeTls {
                client_identity: None
            })
        );
        assert_eq!(
            probe(tls("STRICT", true)),
            Some(ProbeTls {
                client_identity: Some(("m".into(), "web".into()))
            })
        );
        // Automatic mTLS at STRICT: the node's own certificate.
        let mut m = model_with(&[(
            "web",
            json!({"serviceDiscovery": cloud_map(), "listeners": [{"portMapping":
                {"port": 8080, "protocol": "http"}, "healthCheck": hc(None, "/")}]}),
        )]);
        assert_eq!(check_for(&m, &inst(8080)).unwrap().1.tls, None);
        m.apply(
            100,
            &Command::Tag {
                key: ResourceKey::mesh("m"),
                tags: vec![api::TagRef {
                    key: crate::identity::MTLS_TAG.into(),
                    value: "STRICT".into(),
                }],
            },
        )
        .outcome
        .unwrap();
        assert_eq!(
            check_for(&m, &inst(8080)).unwrap().1.tls,
            Some(ProbeTls {
                client_identity: Some(("m".into(), "web".into()))
            })
        );
    }
}
