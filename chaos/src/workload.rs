//! The load that runs while faults are injected, and the history it records.
//!
//! Why these clients: writers and linearizable readers on every server's API produce the
//! history the checker judges (one register per `reg-<i>` virtual node, each write a value no
//! other write uses, so a read names the write it saw); a route writer changes the weighted
//! route so Envoys keep receiving new configuration during faults; data-plane clients call
//! through every Envoy's egress listener and record every answer; a sampler polls every
//! server's `/v1/status` for the leader-per-term check. Every thread stops when told to (and
//! on Ctrl-C), so no loop outlives its scenario.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shoal_e2e::{http_request, node_status};

use crate::harness::{
    data_call, register_spec, register_value, route_spec, MESH, REGISTERS, ROUTE_PATH,
};

/// Nanoseconds since the run's epoch (one clock for every thread).
pub fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// One register operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// Register index.
    pub register: usize,
    /// Write (true) or read.
    pub write: bool,
    /// The value written, or read.
    pub value: u64,
    /// Invocation time (ns since the epoch).
    pub invoke: u64,
    /// Completion time for acknowledged writes and successful reads; `None` when a write's
    /// outcome is unknown (timeout, error).
    pub complete: Option<u64>,
    /// The server the client talked to.
    pub server: u64,
}

/// One data-plane request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// Which agent host's Envoy.
    pub envoy: usize,
    /// When it was sent (ns since the epoch).
    pub at: u64,
    /// The backend that answered (`red-1`), or the failure.
    pub answer: String,
    /// Whether it succeeded.
    pub ok: bool,
}

/// One `/v1/status` sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When (ns since the epoch).
    pub at: u64,
    /// The reporting server.
    pub node: u64,
    /// Its term.
    pub term: u64,
    /// The leader it names.
    pub leader: Option<u64>,
}

/// Everything recorded while the workload ran.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Register operations.
    pub ops: Vec<Op>,
    /// Data-plane requests.
    pub reqs: Vec<Req>,
    /// Status samples.
    pub samples: Vec<Sample>,
    /// Acknowledged route-weight writes.
    pub route_writes: u64,
}

/// Shared switches the scenario flips while the workload runs.
#[derive(Debug, Default)]
pub struct Switches {
    /// Per agent host: its Envoy is being restarted on purpose, do not send through it.
    pub envoy_paused: [AtomicBool; 2],
    /// Per agent host: the data-plane client has a request in flight through its Envoy.
    pub envoy_busy: [AtomicBool; 2],
}

impl Switches {
    /// Stops the data-plane client of agent host `i` and waits for its request in flight, so
    /// that killing that Envoy on purpose fails no request (a request cut by the kill would be
    /// the harness's doing, not a control-plane failure).
    pub fn pause_envoy(&self, i: usize) {
        self.envoy_paused[i].store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.envoy_busy[i].load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Where the clients send their requests.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Server API addresses by id.
    pub servers: Vec<(u64, SocketAddr)>,
    /// Envoy egress listeners, by agent host.
    pub egress: Vec<SocketAddr>,
}

/// A running workload; [`Workload::stop`] joins it and returns the history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    rec: Arc<Mutex<Recorded>>,
}

/// The source of unique write values (shared by every scenario of a run).
pub static NEXT_VALUE: AtomicU64 = AtomicU64::new(1);

const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

impl Workload {
    /// Starts every client thread.
    pub fn start(t: &Targets, epoch: Instant, seed: u64, sw: Arc<Switches>) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let rec = Arc::new(Mutex::new(Recorded::default()));
        let mut threads = Vec::new();
        let halt = {
            let stop = stop.clone();
            move || stop.load(Ordering::SeqCst) || crate::interrupted()
        };
        for (k, (id, api)) in t.servers.iter().copied().enumerate() {
            // A writer per server.
            let (rec2, halt2) = (rec.clone(), halt.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (0x1000 + k as u64));
            threads.push(std::thread::spawn(move || {
                while !halt2() {
                    let register = rng.random_range(0..REGISTERS);
                    let value = NEXT_VALUE.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({"spec": register_spec(value)}).to_string();
                    let path = format!("/v20190125/meshes/{MESH}/virtualNodes/reg-{register}");
                    let invoke = now_ns(epoch);
                    let r = http_request(api, "PUT", &path, Some(&body), WRITE_TIMEOUT);
                    let complete = now_ns(epoch);
                    let refused =
                        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
                    if !refused {
                        let acked = matches!(&r, Ok(rep) if rep.code == 200);
                        rec2.lock().expect("history").ops.push(Op {
                            register,
                            write: true,
                            value,
                            invoke,
                            complete: acked.then_some(complete),
                            server: id,
                        });
                    }
                    pause(&halt2, if refused { 200 } else { 40 });
                }
            }));
            // A linearizable reader per server.
            let (rec2, halt2) = (rec.clone(), halt.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (0x2000 + k as u64));
            threads.push(std::thread::spawn(move || {
                while !halt2() {
                    let register = rng.random_range(0..REGISTERS);
                    let path = format!("/v20190125/meshes/{MESH}/virtualNodes/reg-{register}");
                    let invoke = now_ns(epoch);
                    let r = http_request(api, "GET", &path, None, WRITE_TIMEOUT);
                    let complete = now_ns(epoch);
                    let value = r
                        .ok()
                        .filter(|rep| rep.code == 200)
                        .and_then(|rep| rep.json())
                        .and_then(|v| register_value(&v));
                    match value {
                        Some(value) => rec2.lock().expect("history").ops.push(Op {
                            register,
                            write: false,
                            value,
                            invoke,
                            complete: Some(complete),
                            server: id,
                        }),
                        None => pause(&halt2, 100),
                    }
                    pause(&halt2, 30);
                }
            }));
        }
        // The route writer: new weights every second, through the servers in turn.
        {
            let (rec2, halt2, servers) = (rec.clone(), halt.clone(), t.servers.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x3000);
            threads.push(std::thread::spawn(move || {
                let mut k = 0;
                while !halt2() {
                    let (_, api) = servers[k % servers.len()];
                    k += 1;
                    let body = serde_json::json!({"spec": route_spec(rng.random_range(10..=90))})
                        .to_string();
                    if let Ok(r) = http_request(api, "PUT", ROUTE_PATH, Some(&body), WRITE_TIMEOUT)
                    {
                        if r.code == 200 {
                            rec2.lock().expect("history").route_writes += 1;
                        }
                    }
                    pause(&halt2, 1000);
                }
            }));
        }
        // Data-plane clients, one per Envoy.
        for (envoy, egress) in t.egress.iter().copied().enumerate() {
            let (rec2, halt2, sw2) = (rec.clone(), halt.clone(), sw.clone());
            threads.push(std::thread::spawn(move || {
                while !halt2() {
                    // Busy before the pause check: `pause_envoy` sets the pause, then waits
                    // for busy to clear, so no request starts after it returns.
                    sw2.envoy_busy[envoy].store(true, Ordering::SeqCst);
                    if sw2.envoy_paused[envoy].load(Ordering::SeqCst) {
                        sw2.envoy_busy[envoy].store(false, Ordering::SeqCst);
                        pause(&halt2, 50);
                        continue;
                    }
                    let at = now_ns(epoch);
                    let answer = data_call(egress);
                    sw2.envoy_busy[envoy].store(false, Ordering::SeqCst);
                    let ok = !answer.starts_with("HTTP") && !answer.starts_with("error");
                    rec2.lock().expect("history").reqs.push(Req {
                        envoy,
                        at,
                        answer,
                        ok,
                    });
                    pause(&halt2, 10);
                }
            }));
        }
        // The status sampler.
        {
            let (rec2, halt2, servers) = (rec.clone(), halt.clone(), t.servers.clone());
            threads.push(std::thread::spawn(move || {
                while !halt2() {
                    for (id, api) in &servers {
                        let at = now_ns(epoch);
                        if let Some(st) = node_status(*api) {
                            rec2.lock().expect("history").samples.push(Sample {
                                at,
                                node: *id,
                                term: st.term,
                                leader: st.leader_id,
                            });
                        }
                    }
                    pause(&halt2, 100);
                }
            }));
        }
        Workload { stop, threads, rec }
    }

    /// Stops every client, waits for them, and returns what they recorded.
    pub fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let rec = self.rec.lock().expect("history").clone();
        rec
    }
}

/// Sleeps `ms`, waking early when `halt` says so.
fn pause(halt: &impl Fn() -> bool, ms: u64) {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end && !halt() {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}
