//! The recent changes of the model, by revision, so a watcher that reconnects can resume
//! from its last revision instead of downloading the whole model again. Bounded: when a
//! revision has been evicted, [`History::since`] says so and the watcher gets a snapshot.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::Change;

/// The changes made by one committed command, with its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The revision the changes produced (the Raft log index of the command).
    pub revision: u64,
    /// What changed, in order.
    pub changes: Arc<Vec<Change>>,
}

/// A bounded, ordered log of recent change batches.
#[derive(Debug, Clone)]
pub struct History {
    batches: VecDeque<Batch>,
    capacity: usize,
    /// Every change with a revision above `floor` is in `batches`.
    floor: u64,
}

impl History {
    /// An empty history that knows every change after revision `floor` (the model's
    /// revision when recording starts). Keeps at most `capacity` batches (at least 1).
    pub fn new(capacity: usize, floor: u64) -> Self {
        History {
            batches: VecDeque::new(),
            capacity: capacity.max(1),
            floor,
        }
    }

    /// Records a batch. Batches at or below the latest revision are ignored (replays).
    pub fn push(&mut self, batch: Batch) {
        if batch.revision <= self.latest() {
            return;
        }
        if self.batches.len() == self.capacity {
            if let Some(old) = self.batches.pop_front() {
                self.floor = old.revision;
            }
        }
        self.batches.push_back(batch);
    }

    /// The newest revision known (the floor when nothing was recorded).
    pub fn latest(&self) -> u64 {
        self.batches.back().map_or(self.floor, |b| b.revision)
    }

    /// Every batch after `revision`, or `None` if some of them were evicted (or `revision`
    /// is in the future, which means the asker saw another history: it must resync).
    pub fn since(&self, revision: u64) -> Option<Vec<Batch>> {
        if revision < self.floor || revision > self.latest() {
            return None;
        }
        Some(
            self.batches
                .iter()
                .filter(|b| b.revision > revision)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshSpec;
    use crate::resource::{Metadata, Resource, ResourceKey, Spec};

    fn batch(revision: u64) -> Batch {
        let r = Resource {
            key: ResourceKey::mesh(&format!("m{revision}")),
            spec: Spec::Mesh(MeshSpec {
                egress_filter: None,
                service_discovery: None,
            }),
            meta: Metadata {
                arn: String::new(),
                uid: String::new(),
                version: 1,
                created_at: 0.0,
                last_updated_at: 0.0,
                mesh_owner: String::new(),
                resource_owner: String::new(),
            },
            tags: vec![],
        };
        Batch {
            revision,
            changes: Arc::new(vec![Change::Put(r)]),
        }
    }

    fn revs(b: Option<Vec<Batch>>) -> Option<Vec<u64>> {
        b.map(|v| v.iter().map(|b| b.revision).collect())
    }

    #[test]
    fn resumes_while_the_revision_is_kept_and_refuses_after_eviction() {
        let mut h = History::new(3, 10);
        assert_eq!(revs(h.since(10)), Some(vec![]));
        for r in [12, 15, 16] {
            h.push(batch(r));
        }
        assert_eq!(revs(h.since(10)), Some(vec![12, 15, 16]));
        assert_eq!(revs(h.since(13)), Some(vec![15, 16]));
        assert_eq!(revs(h.since(16)), Some(vec![]));
        assert_eq!(revs(h.since(9)), None, "before the floor");
        assert_eq!(revs(h.since(17)), None, "from the future");
        h.push(batch(20)); // evicts 12
        assert_eq!(revs(h.since(10)), None);
        assert_eq!(revs(h.since(12)), Some(vec![15, 16, 20]));
        h.push(batch(20));
        h.push(batch(19));
        assert_eq!(h.latest(), 20, "replays and old batches are ignored");
    }
}
