//! The files a connected proxy's configuration makes its Envoy read (App Mesh `file`
//! certificates, keys and trust bundles), checked on this host: Envoy only tells of a missing
//! file by refusing the whole listener or cluster, so the agent names the proxy and the file,
//! in its log (once, when a file goes missing) and in `GET /v1/agent/xds`.
//!
//! The check assumes the proxy shares the agent's view of the filesystem (the same host, or
//! the same mounts for a container).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Missing files by proxy (node id), as last checked.
pub type Missing = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

/// How often connected proxies' files are checked.
const EVERY: Duration = Duration::from_secs(10);

/// The files of `files` that this process cannot open for reading.
pub fn missing(files: &BTreeSet<String>) -> BTreeSet<String> {
    files
        .iter()
        .filter(|f| std::fs::File::open(Path::new(f)).is_err())
        .cloned()
        .collect()
}

/// Checks every connected proxy's files every ten seconds until `stop`, keeping the result in
/// `out` and logging each file when it goes missing (and when it is back).
pub async fn run(proxies: shoal_xds::Proxies, out: Missing, mut stop: watch::Receiver<bool>) {
    loop {
        let now: BTreeMap<String, BTreeSet<String>> = proxies
            .connected_snapshots()
            .into_iter()
            .map(|(p, s)| (p.to_string(), missing(&shoal_xds::translate::tls_files(&s))))
            .filter(|(_, m)| !m.is_empty())
            .collect();
        {
            let mut held = out.lock().unwrap_or_else(|e| e.into_inner());
            for (proxy, files) in &now {
                let before = held.get(proxy);
                for f in files
                    .iter()
                    .filter(|f| !before.is_some_and(|b| b.contains(*f)))
                {
                    tracing::warn!(proxy = %proxy, file = %shoal_model::logsafe::log_safe(f), "a file the proxy's TLS configuration names cannot be read on this host; its Envoy refuses the listener or cluster that uses it");
                }
            }
            for (proxy, files) in held.iter() {
                for f in files
                    .iter()
                    .filter(|f| !now.get(proxy).is_some_and(|n| n.contains(*f)))
                {
                    tracing::info!(proxy = %proxy, file = %shoal_model::logsafe::log_safe(f), "a file the proxy's TLS configuration names is readable again");
                }
            }
            *held = now;
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_cannot_be_read_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("cert.pem");
        std::fs::write(&here, "x").unwrap();
        let gone = dir.path().join("key.pem");
        let files: BTreeSet<String> = [&here, &gone]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            missing(&files),
            [gone.display().to_string()].into_iter().collect()
        );
    }
}
