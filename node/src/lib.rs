//! shoal: the server, agent and CLI that the `shoal` binary runs. Everything is here so
//! that tests can start a server in-process; `main.rs` only parses the command line.
//!
//! # Layout (one module per role)
//! - [`server`]: server mode: the Raft store, the App Mesh API, forwarding to the leader,
//!   cluster membership, the operator's endpoints, metrics.
//! - [`agent`]: agent mode: the model follower and its cache, local registrations and their
//!   health probes, the view, DNS and xDS wiring, the agent API.
//! - [`watch`]: the protocol between them: the server's hub and the agent's client.
//! - [`cli`]: the command line: flags, commands and their output.
//! - [`client`]: the HTTP client of the API (the CLI, `shoal dev` and `shoal-bench` use it).
//! - [`dev`]: `shoal dev`, a server and an agent in one process with an example mesh.
//! - [`config`]: flags over a TOML file over defaults, for the roles' configurations.
//! - [`registration`]: the registration record the CLI, the agent API and its config share.
//! - `http`: the HTTP edge both APIs share (error shape, metrics response, member listing).

pub mod agent;
pub mod cli;
pub mod client;
mod config;
pub mod dev;
pub mod enroll;
mod files;
pub mod gossip_keys;
mod http;
pub mod registration;
pub mod server;
pub mod sign;
pub mod tls;
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

/// Seconds since the Unix epoch by this host's clock (0 if the clock is before 1970): what
/// certificates, tokens and keys are dated and checked with.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
