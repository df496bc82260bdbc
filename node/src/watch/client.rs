//! The agent side of the `Watch` stream: one stream from one server, decoded into
//! [`WatchUpdate`]s (snapshot parts reassembled).

use std::time::Duration;

use shoal_model::{Change, Resource};
use tonic::Status;

use super::proto::{self, WatchRequest, WatchResponse};

/// What a watcher receives, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Replace everything with these resources, now at `revision`.
    Snapshot {
        /// The snapshot's revision.
        revision: u64,
        /// Every resource.
        resources: Vec<Resource>,
    },
    /// Apply these changes, now at `revision`.
    Changes {
        /// The revision they produce.
        revision: u64,
        /// What changed.
        changes: Vec<Change>,
    },
    /// The server is at `revision` and has nothing new.
    Progress {
        /// Its revision.
        revision: u64,
    },
}

/// Why a watch stream ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The server could not be reached.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// The server's gRPC address.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The stream failed.
    #[error("watch stream failed: {0}")]
    Stream(#[from] Status),
    /// A message did not decode.
    #[error("undecodable watch message: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A watch stream from one server, decoded into [`WatchUpdate`]s.
pub struct Watcher {
    inner: tonic::Streaming<WatchResponse>,
    parts: Vec<Resource>,
}

impl Watcher {
    /// Opens a stream from `addr` (`http://host:port` of a server's gRPC address) that starts
    /// after `from_revision` (0: full snapshot).
    /// With `tls`, over mutual TLS (`addr` then starts with `https://`).
    pub async fn connect(
        addr: &str,
        from_revision: u64,
        tls: Option<&tonic::transport::ClientTlsConfig>,
    ) -> Result<Watcher, WatchError> {
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(addr.to_string()).map_err(|source| {
                WatchError::Connect {
                    addr: addr.into(),
                    source,
                }
            })?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|source| WatchError::Connect {
                    addr: addr.into(),
                    source,
                })?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| WatchError::Connect {
                addr: addr.into(),
                source,
            })?;
        let mut client = proto::watch::watch_client::WatchClient::new(channel)
            .max_decoding_message_size(64 << 20);
        let inner = client
            .watch(WatchRequest { from_revision })
            .await?
            .into_inner();
        Ok(Watcher {
            inner,
            parts: Vec::new(),
        })
    }

    /// The next update; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchUpdate>, WatchError> {
        loop {
            let Some(msg) = self.inner.message().await? else {
                return Ok(None);
            };
            match msg.kind {
                proto::KIND_SNAPSHOT_PART => {
                    let part: Vec<Resource> = serde_json::from_slice(&msg.payload)?;
                    self.parts.extend(part);
                    if msg.last {
                        return Ok(Some(WatchUpdate::Snapshot {
                            revision: msg.revision,
                            resources: std::mem::take(&mut self.parts),
                        }));
                    }
                }
                proto::KIND_CHANGES => {
                    let changes: Vec<Change> = serde_json::from_slice(&msg.payload)?;
                    return Ok(Some(WatchUpdate::Changes {
                        revision: msg.revision,
                        changes,
                    }));
                }
                proto::KIND_PROGRESS => {
                    return Ok(Some(WatchUpdate::Progress {
                        revision: msg.revision,
                    }))
                }
                other => tracing::debug!(kind = other, "ignoring an unknown watch message kind"),
            }
        }
    }
}
