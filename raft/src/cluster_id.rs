//! The id of the Raft cluster a store belongs to (`raft/cluster.json`), and the check that keeps
//! clusters apart.
//!
//! The server that initializes a cluster makes a random id and saves it before it sends a
//! single RPC; every RPC carries the sender's id; a server whose store has none yet (a new
//! member being added) takes the first one it is sent, saved (fsync) before the RPC reaches
//! Raft; a server that has one refuses RPCs that name another. So a leader of one cluster can
//! never overwrite the log of a server of another, even when the two share a gossip pool, a
//! CA and a gossip key by mistake (without the check, the leader adds the stranger as a
//! learner, and the stranger's Raft core panics on the second leader, or its log is replaced).
//!
//! Stores made before this file existed have no id until their leader sends one; nothing names
//! such a cluster, so it stays unprotected (move it by snapshot to a new cluster to get one).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::store_dir::DirError;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    cluster_id: String,
    /// CRC-32 of the id.
    crc32: u32,
}

/// Longest id taken from a peer.
const MAX_LEN: usize = 64;

/// This store's cluster id, shared by the RPC client (which sends it) and server (which
/// checks it).
#[derive(Debug)]
pub(crate) struct ClusterId {
    path: PathBuf,
    id: RwLock<Option<String>>,
}

/// What [`ClusterId::admit`] decided about an RPC's cluster id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Same cluster (or the sender names none: an old peer).
    Same,
    /// This store had no id and took the sender's.
    Adopted,
    /// The sender belongs to another cluster.
    Foreign {
        /// This store's id.
        ours: String,
    },
}

impl ClusterId {
    /// Reads `root/cluster.json`; none when it does not exist. A damaged file refuses the store.
    pub(crate) fn open(root: &std::path::Path) -> Result<ClusterId, DirError> {
        let path = root.join("cluster.json");
        let id = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: ClusterFile =
                    serde_json::from_slice(&bytes).map_err(|e| DirError::Refused {
                        path: path.clone(),
                        reason: format!("unreadable ({e}); the store cannot be trusted"),
                    })?;
                if crc32fast::hash(f.cluster_id.as_bytes()) != f.crc32 || f.cluster_id.is_empty() {
                    return Err(DirError::Refused {
                        path,
                        reason: "its checksum does not match; the store cannot be trusted".into(),
                    });
                }
                Some(f.cluster_id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(DirError::Io { path, source: e }),
        };
        Ok(ClusterId {
            path,
            id: RwLock::new(id),
        })
    }

    /// The id, if the store has one.
    pub(crate) fn get(&self) -> Option<String> {
        self.id.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Gives the store a new random id unless it has one (called before initializing a
    /// cluster); returns the id in force.
    pub(crate) fn name_new(&self) -> Result<String, DirError> {
        let mut id = self.id.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = id.as_ref() {
            return Ok(existing.clone());
        }
        let new = uuid::Uuid::new_v4().to_string();
        self.save(&new)?;
        *id = Some(new.clone());
        Ok(new)
    }

    /// Decides on an RPC whose sender names `theirs` (empty: an old peer that names none). A
    /// store without an id takes `theirs`, saved before this returns.
    pub(crate) fn admit(&self, theirs: &str) -> Result<Admission, DirError> {
        if theirs.is_empty() {
            return Ok(Admission::Same);
        }
        // The common case, on every RPC: compared under the read lock, nothing copied.
        if let Some(ours) = self.id.read().unwrap_or_else(|e| e.into_inner()).as_deref() {
            return Ok(if ours == theirs {
                Admission::Same
            } else {
                Admission::Foreign {
                    ours: ours.to_string(),
                }
            });
        }
        let mut id = self.id.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ours) = id.as_ref() {
            return Ok(if ours == theirs {
                Admission::Same
            } else {
                Admission::Foreign { ours: ours.clone() }
            });
        }
        if theirs.len() > MAX_LEN || !theirs.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Ok(Admission::Foreign {
                ours: String::new(),
            });
        }
        self.save(theirs)?;
        *id = Some(theirs.to_string());
        Ok(Admission::Adopted)
    }

    fn save(&self, id: &str) -> Result<(), DirError> {
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| DirError::Io { path, source }
        };
        let file = ClusterFile {
            cluster_id: id.to_string(),
            crc32: crc32fast::hash(id.as_bytes()),
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&serde_json::to_vec(&file).expect("plain data serializes"))
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        let dir = self
            .path
            .parent()
            .expect("a file in the store")
            .to_path_buf();
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_adopts_the_first_id_then_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let c = ClusterId::open(dir.path()).unwrap();
        assert_eq!(c.get(), None);
        assert_eq!(c.admit("").unwrap(), Admission::Same);
        assert_eq!(c.admit("aaaa-1").unwrap(), Admission::Adopted);
        assert_eq!(c.admit("aaaa-1").unwrap(), Admission::Same);
        assert_eq!(
            c.admit("bbbb-2").unwrap(),
            Admission::Foreign {
                ours: "aaaa-1".into()
            }
        );
        // Kept across a restart; naming keeps an existing id.
        let again = ClusterId::open(dir.path()).unwrap();
        assert_eq!(again.get().as_deref(), Some("aaaa-1"));
        assert_eq!(again.name_new().unwrap(), "aaaa-1");
    }

    #[test]
    fn naming_saves_and_a_damaged_file_refuses_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let c = ClusterId::open(dir.path()).unwrap();
        let id = c.name_new().unwrap();
        assert_eq!(ClusterId::open(dir.path()).unwrap().get(), Some(id.clone()));
        let path = dir.path().join("cluster.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let flipped = format!(
            "{}{}",
            if id.starts_with('0') { '1' } else { '0' },
            &id[1..]
        );
        std::fs::write(&path, text.replace(&id, &flipped)).unwrap();
        assert!(ClusterId::open(dir.path()).is_err());
        std::fs::write(&path, "{").unwrap();
        assert!(ClusterId::open(dir.path()).is_err());
        // A peer's garbage is never adopted.
        let fresh = tempfile::tempdir().unwrap();
        let c = ClusterId::open(fresh.path()).unwrap();
        assert!(matches!(
            c.admit("not/an id").unwrap(),
            Admission::Foreign { .. }
        ));
        assert_eq!(c.get(), None);
    }
}
