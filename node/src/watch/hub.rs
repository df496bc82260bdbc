//! The server side of the `Watch` stream: a full snapshot of the model, then every change in
//! commit order, resumable from any revision still in the history.
//!
//! One feeder task per server turns the Raft state machine's events into [`Batch`]es, records
//! them in a bounded [`History`] and re-broadcasts them, under one mutex, so a watcher that
//! starts (or resumes) under that mutex sees every change exactly once: those before from the
//! history or the snapshot, those after from the broadcast. Watchers never poll; a watcher
//! that falls behind the broadcast resumes from its last revision (history, else snapshot).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use shoal_model::history::{Batch, History};
use shoal_model::Resource;
use shoal_raft::RaftNode;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::proto::{self, WatchRequest, WatchResponse};

/// Resources per snapshot part: keeps messages far below gRPC's 4 MiB default limit.
const SNAPSHOT_PART: usize = 256;

struct HubState {
    history: History,
    /// Replaced (closing every receiver) when the feeder itself falls behind Raft.
    tx: broadcast::Sender<Batch>,
}

/// How a watcher starts.
enum Start {
    /// Everything after the asked revision, from the history.
    Backlog(Vec<Batch>),
    /// The whole model at a revision.
    Snapshot {
        revision: u64,
        resources: Vec<Resource>,
    },
}

/// The per-server source of watch streams.
pub struct WatchHub {
    raft: RaftNode,
    state: Mutex<HubState>,
    capacity: usize,
    progress_every: Duration,
    /// Flips to true when the server shuts down: every stream then ends, so the gRPC
    /// server's graceful shutdown does not wait on watchers that never hang up.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl WatchHub {
    /// Starts the feeder task; `capacity` batches of history are kept; streams end when
    /// `stop` becomes true.
    pub fn start(
        raft: RaftNode,
        capacity: usize,
        progress_every: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<WatchHub> {
        let mut events = raft.subscribe();
        let floor = raft.read(|m| m.revision());
        let (tx, _) = broadcast::channel(4096);
        let hub = Arc::new(WatchHub {
            raft,
            state: Mutex::new(HubState {
                history: History::new(capacity, floor),
                tx,
            }),
            capacity,
            progress_every,
            stop,
        });
        let feeder = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let ev = events.recv().await;
                let Some(hub) = feeder.upgrade() else { return };
                match ev {
                    Ok(ev) => {
                        let mut st = hub.state.lock().expect("hub lock");
                        let batch = Batch {
                            revision: ev.revision,
                            changes: Arc::new(ev.changes.clone()),
                        };
                        if batch.revision > st.history.latest() {
                            st.history.push(batch.clone());
                            let _ = st.tx.send(batch);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The history now has a hole: start it again from the model, and
                        // close every watcher's receiver so each resumes or resyncs.
                        tracing::warn!(
                            missed = n,
                            "watch feeder fell behind; watchers will resync"
                        );
                        let mut st = hub.state.lock().expect("hub lock");
                        let floor = hub.raft.read(|m| m.revision());
                        st.history = History::new(hub.capacity, floor);
                        st.tx = broadcast::channel(4096).0;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    /// Decides how a watcher that has applied `from` starts, and subscribes it, atomically.
    fn begin(&self, from: u64) -> (Start, broadcast::Receiver<Batch>) {
        let st = self.state.lock().expect("hub lock");
        let rx = st.tx.subscribe();
        if from > 0 {
            if let Some(backlog) = st.history.since(from) {
                return (Start::Backlog(backlog), rx);
            }
        }
        let (revision, resources) = self
            .raft
            .read(|m| (m.revision(), m.iter().cloned().collect()));
        (
            Start::Snapshot {
                revision,
                resources,
            },
            rx,
        )
    }

    /// Runs one watcher until its client goes away.
    async fn serve(
        self: Arc<Self>,
        mut from: u64,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
    ) {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return;
        }
        let mut ticker = tokio::time::interval(self.progress_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (start, mut rx) = self.begin(from);
            let mut last = match start {
                Start::Backlog(batches) => {
                    for b in batches {
                        if out.send(Ok(changes_msg(&b))).await.is_err() {
                            return;
                        }
                        from = b.revision;
                    }
                    from
                }
                Start::Snapshot {
                    revision,
                    resources,
                } => {
                    for msg in snapshot_msgs(revision, &resources) {
                        if out.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    revision
                }
            };
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(b) if b.revision > last => {
                            if out.send(Ok(changes_msg(&b))).await.is_err() {
                                return;
                            }
                            last = b.revision;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            // Lagged or reset: resume from what this watcher has.
                            from = last;
                            break;
                        }
                    },
                    _ = ticker.tick() => {
                        let msg = WatchResponse { kind: proto::KIND_PROGRESS, revision: last, payload: Vec::new(), last: false };
                        if out.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    _ = out.closed() => return,
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

fn changes_msg(b: &Batch) -> WatchResponse {
    WatchResponse {
        kind: proto::KIND_CHANGES,
        revision: b.revision,
        payload: serde_json::to_vec(&*b.changes).expect("changes serialize"),
        last: false,
    }
}

fn snapshot_msgs(revision: u64, resources: &[Resource]) -> Vec<WatchResponse> {
    let mut parts: Vec<WatchResponse> = resources
        .chunks(SNAPSHOT_PART)
        .map(|chunk| WatchResponse {
            kind: proto::KIND_SNAPSHOT_PART,
            revision,
            payload: serde_json::to_vec(chunk).expect("resources serialize"),
            last: false,
        })
        .collect();
    if parts.is_empty() {
        parts.push(WatchResponse {
            kind: proto::KIND_SNAPSHOT_PART,
            revision,
            payload: b"[]".to_vec(),
            last: false,
        });
    }
    if let Some(p) = parts.last_mut() {
        p.last = true;
    }
    parts
}

/// The gRPC face of a [`WatchHub`].
#[derive(Clone)]
pub struct WatchService {
    hub: Arc<WatchHub>,
}

impl WatchService {
    /// Serves watch streams from `hub`.
    pub fn new(hub: Arc<WatchHub>) -> Self {
        WatchService { hub }
    }

    /// The tonic service to mount on the gRPC server.
    pub fn into_server(self) -> proto::watch::watch_server::WatchServer<WatchService> {
        proto::watch::watch_server::WatchServer::new(self).max_encoding_message_size(64 << 20)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::watch::watch_server::Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let from = request.into_inner().from_revision;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.hub.clone().serve(from, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_model_is_one_empty_last_part() {
        let msgs = snapshot_msgs(7, &[]);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].last && msgs[0].revision == 7 && msgs[0].payload == b"[]");
    }
}
