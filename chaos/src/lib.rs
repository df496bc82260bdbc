//! shoal-chaos: the chaos suite (issue 6). It runs real `shoal` servers and agents, real
//! Envoys and `shoal-backend`s as hosts in network namespaces, injects faults while a workload
//! of writes, linearizable reads and data-plane requests runs, and checks the recorded history
//! and the system's state afterwards.
//!
//! Why it exists: shoal promises that control-plane failures never become data-plane failures
//! and that no acknowledged write is lost; unit and e2e tests cannot show that under real
//! partitions, pauses, loss and crashes. The pieces:
//!
//! - [`net`]: namespaces, bridge, veths, nftables faults (partitions, loss), DNAT to the proxy;
//! - [`proxy`]: the fault-injecting TCP proxy (delay) on server and agent→server links;
//! - [`harness`]: the processes (3 or 5 servers, 2 agent hosts with Envoy and backends), the model,
//!   convergence and config checks;
//! - [`workload`]: the clients and the history they record;
//! - [`linearize`]: a Knossos/Porcupine-style linearizability checker for registers;
//! - [`checks`]: lost writes, linearizability per register, one leader per term;
//! - [`scenario`]: the faults and the per-scenario procedure; [`report`]: table and JSON.
//!
//! The runner is the `shoal-chaos` binary (`--quick` in CI, `--long --seed S --duration D`).

pub mod checks;
pub mod harness;
pub mod linearize;
pub mod net;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod workload;

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived: every loop of the suite stops early when it did, so that
/// the harness is dropped and cleans up its processes and namespaces.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Catches SIGINT and SIGTERM (instead of dying with the namespaces left behind) and sets the
/// flag [`interrupted`] reads.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("chaos-signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                tracing::warn!("interrupted: stopping the load and cleaning up");
                INTERRUPTED.store(true, Ordering::SeqCst);
            });
        })?;
    Ok(())
}
