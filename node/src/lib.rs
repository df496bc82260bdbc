//! shoal: the server, agent and CLI that the `shoal` binary runs. Everything is here so
//! that tests can start a server in-process; `main.rs` only parses the command line.
//!
//! # Layout
//! - `agent`: agent mode (instances, health checks, gossip, the model cache, DNS).
//! - `health`: the health checks agents run on their instances.
//! - `cli`: flags of every subcommand and the client commands' output.
//! - `client`: HTTP client for the App Mesh API (used by `apply`, `get`, `delete`, `dev`, and
//!   by the `shoal-bench` drivers).
//! - `server`: server mode (Raft store + HTTP API), its configuration and `/v1/status`.
//! - `appmesh`: the App Mesh REST API handlers.
//! - `forward`: followers forward writes and read-index requests to the leader.
//! - `cluster`: forming and growing the Raft cluster from gossip (`plan` is pure).
//! - `metrics`: Prometheus metrics.
//! - `watch`: the `Watch` gRPC stream agents follow the model with; `proto`: its messages.
//! - `dev`: `shoal dev` and its example mesh.

pub mod agent;
pub mod cli;
pub mod client;
pub mod dev;
mod http;
pub mod registration;
pub mod server;
pub mod watch;

/// Resolves on Ctrl-C or SIGTERM: the signal every mode shuts down on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
