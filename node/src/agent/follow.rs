//! Following the model: one watch stream from a server at a time, the model in memory, and the
//! local cache on disk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_model::{Change, Model};
use tokio::sync::watch;

use super::store::ModelCache;
use crate::watch::{WatchUpdate, Watcher};

/// Where the agent's model comes from right now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FollowStatus {
    /// The server (gRPC URL) whose watch stream is open, if any.
    pub server: Option<String>,
    /// True while the model is the one read from the local cache and no server has been
    /// reached since the agent started.
    pub from_cache: bool,
    /// The last error reaching a server.
    pub last_error: Option<String>,
    /// Watch streams opened since start.
    pub streams_opened: u64,
    /// Why the last write of the model cache failed, while the cache is behind the model the
    /// agent serves (cleared by the next successful write).
    pub cache_error: Option<String>,
    /// Model cache writes that failed since start.
    pub cache_write_failures: u64,
}

/// Runs until `stop` turns true: keeps `model` equal to the servers' model, reconnecting to the
/// next of `servers()` (gRPC URLs, re-read before every attempt) when a stream fails, with a
/// backoff of 100 ms doubling to 2 s. The stream resumes from the revision the agent has, so a
/// reconnect usually costs only the changes it missed.
///
/// Every model is written to `cache` before anything sees it (write-through): while the disk
/// works, an Envoy is never sent a configuration newer than what the agent would serve after a
/// crash, so a restarted agent never takes its proxies back in time. Under a stream of commits
/// the updates of up to `COALESCE` (20 ms) go into one write, so the cache costs one sync per
/// 20 ms rather than one per commit (the sync cost as much as the Raft log's own); a lone change
/// is written and served at once.
///
/// When the write fails (a full or failing disk), the agent still serves the new model: the
/// servers have committed it, and holding the proxies on an older one would be the worse of the
/// two. It says so instead of hiding it: an error log, `cache_error` in the status
/// (`/v1/agent/status`) and the `shoal_agent_model_cache_ok` and
/// `shoal_agent_model_cache_write_failures` metrics, until a later write succeeds. A crash in
/// that window restarts the agent from the last model it did write.
/// Shortest time between two cache writes while updates keep coming (see [`run`]).
const COALESCE: Duration = Duration::from_millis(20);

pub async fn run(
    servers: impl Fn() -> Vec<String>,
    tls: Option<crate::tls::Live>,
    cache: ModelCache,
    model: watch::Sender<Arc<Model>>,
    status: Arc<Mutex<FollowStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(100);
    let mut current: Model = (**model.borrow()).clone();
    let mut last_write = tokio::time::Instant::now()
        .checked_sub(COALESCE)
        .unwrap_or_else(tokio::time::Instant::now);
    loop {
        if *stop.borrow() {
            return;
        }
        let list = servers();
        if let Some(addr) = (!list.is_empty()).then(|| list[next % list.len()].clone()) {
            next = next.wrapping_add(1);
            // The certificate in force now: a renewed one is used from the next connection.
            let client_tls = tls.as_ref().map(|t| t.current().client_config());
            match Watcher::connect(&addr, current.revision(), client_tls.as_ref()).await {
                Ok(mut w) => {
                    {
                        let mut st = status.lock().expect("status lock");
                        st.server = Some(addr.clone());
                        st.last_error = None;
                        st.streams_opened += 1;
                    }
                    tracing::info!(server = %addr, revision = current.revision(), "following the model");
                    backoff = Duration::from_millis(100);
                    let ended = loop {
                        let first = tokio::select! {
                            _ = stop.changed() => return,
                            update = w.next() => update,
                        };
                        // Take every update already received too (a burst of commits), so the
                        // cache is written and the proxies recomputed once for all of them.
                        // Within `COALESCE` of the last cache write, keep taking updates until
                        // that much time has passed: under a stream of commits the cache costs
                        // one sync per `COALESCE`, not one per commit, and a lone change after a
                        // quiet spell is written at once.
                        let mut batch = vec![first];
                        let until = last_write + COALESCE;
                        while batch.len() < 1024 && matches!(batch.last(), Some(Ok(Some(_)))) {
                            match tokio::time::timeout_at(until, w.next()).await {
                                Ok(u) => batch.push(u),
                                // (An update already there is taken even past the deadline:
                                // the timeout polls it first.)
                                Err(_) => break,
                            }
                        }
                        let mut changed = false;
                        // A snapshot replaces the cache's base; changes alone go to its journal.
                        let mut replaced = false;
                        let mut journal: Vec<(u64, Vec<Change>)> = Vec::new();
                        let mut end = None;
                        for update in batch {
                            match update {
                                Ok(Some(WatchUpdate::Snapshot {
                                    revision,
                                    resources,
                                })) => {
                                    current = Model::from_resources(revision, resources);
                                    changed = true;
                                    replaced = true;
                                }
                                Ok(Some(WatchUpdate::Changes { revision, changes })) => {
                                    if revision > current.revision() && !changes.is_empty() {
                                        current.apply_changes(revision, &changes);
                                        journal.push((revision, changes));
                                        changed = true;
                                    }
                                }
                                Ok(Some(WatchUpdate::Progress { .. })) => {
                                    status.lock().expect("status lock").from_cache = false;
                                }
                                Ok(None) => {
                                    end = Some("the server ended the stream".to_string());
                                    break;
                                }
                                Err(e) => {
                                    end = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        if !changed {
                            match end {
                                Some(e) => break e,
                                None => continue,
                            }
                        }
                        status.lock().expect("status lock").from_cache = false;
                        let next = Arc::new(current.clone());
                        let (c, m) = (cache.clone(), next.clone());
                        let write = move || {
                            if replaced {
                                c.save(&m)
                            } else {
                                let updates: Vec<(u64, &[Change])> =
                                    journal.iter().map(|(r, ch)| (*r, ch.as_slice())).collect();
                                c.append(&updates, &m)
                            }
                        };
                        last_write = tokio::time::Instant::now();
                        let failed = match tokio::task::spawn_blocking(write).await {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(e) => Some(format!("the cache writer panicked: {e}")),
                        };
                        {
                            let mut st = status.lock().expect("status lock");
                            if let Some(e) = &failed {
                                tracing::error!(error = %e, revision = next.revision(), "cannot write the model cache; serving the model from memory, a restart would go back to the last cached one");
                                st.cache_write_failures += 1;
                            } else if st.cache_error.is_some() {
                                tracing::info!(
                                    revision = next.revision(),
                                    "the model cache is written again"
                                );
                            }
                            st.cache_error = failed;
                        }
                        model.send_replace(next);
                        if let Some(e) = end {
                            break e;
                        }
                    };
                    tracing::warn!(server = %addr, reason = %ended, "watch stream ended");
                    let mut st = status.lock().expect("status lock");
                    st.server = None;
                    st.last_error = Some(ended);
                }
                Err(e) => {
                    tracing::debug!(server = %addr, error = %e, "cannot open a watch stream");
                    status.lock().expect("status lock").last_error = Some(e.to_string());
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
