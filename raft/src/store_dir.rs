//! The Raft store's directory (`<data dir>/raft`) and what it must hold to be trusted.
//!
//! ```text
//! raft/identity.json   who the store belongs to: node id, incarnation (written once, checksummed)
//! raft/wal/            the log, vote and committed id (`wal.rs`)
//! raft/snapshots/      the newest snapshot (`snapshot_store.rs`)
//! ```
//!
//! A store is created in that order of durability: the WAL's first segment, then the identity
//! (synced, renamed into place, directory synced). Opening refuses any state that no crash can
//! leave behind, with the path, instead of starting empty: an identity without a log (the log
//! was deleted), a log with records but no identity, an identity whose checksum fails, and a
//! store of an older format (sled, before issue 12). Only a directory with none of these files
//! is new; a wiped data dir is a new incarnation by design, which the cluster tells apart.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The store format this build writes and reads: 4 is the WAL with MessagePack records (3 was
/// the WAL with JSON records, 2 sled with single-term votes, 1 sled before them).
pub(crate) const FORMAT: u32 = 4;

/// How to move a cluster to a build of another store format (said with every refusal).
const MOVE_OVER: &str = "Move the cluster over by snapshot: `shoal snapshot save FILE` on the old cluster, \
     start the new servers on empty data dirs, `shoal snapshot restore FILE` (README, \"Upgrading\")";

/// Who a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The node id the store was created for.
    pub(crate) node_id: u64,
    /// A random id made when the store was created: a server whose store is wiped comes back
    /// with the same node id but a new incarnation, which its peers can tell apart.
    pub(crate) incarnation: String,
    /// Always false for this format; kept for the RPC check that accepts RPCs without an
    /// incarnation from stores made before incarnations existed (which this build refuses).
    pub(crate) legacy: bool,
}

/// Why a store directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirError {
    /// The file system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The directory holds something that cannot be trusted.
    #[error("{path}: {reason}")]
    Refused {
        /// The file or directory at fault.
        path: PathBuf,
        /// Why, and what the operator can do.
        reason: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    format: u32,
    node_id: u64,
    incarnation: String,
    /// CRC-32 of `"{format}/{node_id}/{incarnation}"`.
    crc32: u32,
}

fn crc(format: u32, node_id: u64, incarnation: &str) -> u32 {
    crc32fast::hash(format!("{format}/{node_id}/{incarnation}").as_bytes())
}

/// The paths of a store rooted at `root` (`<data dir>/raft`).
#[derive(Debug, Clone)]
pub(crate) struct StoreDir {
    /// The directory itself.
    pub(crate) root: PathBuf,
}

impl StoreDir {
    /// The store under `root`.
    pub(crate) fn new(root: PathBuf) -> StoreDir {
        StoreDir { root }
    }

    /// The identity file.
    pub(crate) fn identity(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// The WAL's directory.
    pub(crate) fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }

    /// The snapshots' directory.
    pub(crate) fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Refuses a store written by an older build (its sled files, or an identity of format 3,
    /// whose log records are JSON), with how to move over; before the log is read, so that the
    /// refusal says why rather than that a record does not decode.
    pub(crate) fn refuse_old_format(&self) -> Result<(), DirError> {
        for old in ["db", "conf", "blobs"] {
            let p = self.root.join(old);
            if p.exists() {
                return Err(DirError::Refused {
                    path: self.root.clone(),
                    reason: format!(
                        "this Raft store has format 2 (sled, found {old}); this build reads format {FORMAT} only. {MOVE_OVER}"
                    ),
                });
            }
        }
        if let Ok(bytes) = std::fs::read(self.identity()) {
            let format = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["format"].as_u64());
            if format == Some(3) {
                return Err(DirError::Refused {
                    path: self.root.clone(),
                    reason: format!(
                        "this Raft store has format 3 (log records in JSON, earlier builds); this build reads format {FORMAT} only. {MOVE_OVER}"
                    ),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn identity_for(
        &self,
        node_id: u64,
        wal_has_records: bool,
    ) -> Result<Identity, DirError> {
        let path = self.identity();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let f: IdentityFile =
                    serde_json::from_slice(&bytes).map_err(|e| DirError::Refused {
                        path: path.clone(),
                        reason: format!("unreadable ({e}); the store cannot be trusted"),
                    })?;
                if f.format != FORMAT {
                    return Err(DirError::Refused {
                        path,
                        reason: format!("store format {}, this build reads {FORMAT}", f.format),
                    });
                }
                if crc(f.format, f.node_id, &f.incarnation) != f.crc32 {
                    return Err(DirError::Refused {
                        path,
                        reason: "its checksum does not match; the store cannot be trusted".into(),
                    });
                }
                Ok(Identity {
                    node_id: f.node_id,
                    incarnation: f.incarnation,
                    legacy: false,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if wal_has_records {
                    return Err(DirError::Refused {
                        path,
                        reason: "missing, but the log holds records: the store cannot be trusted"
                            .into(),
                    });
                }
                let incarnation = uuid::Uuid::new_v4().to_string();
                let file = IdentityFile {
                    format: FORMAT,
                    node_id,
                    crc32: crc(FORMAT, node_id, &incarnation),
                    incarnation: incarnation.clone(),
                };
                let tmp = self.root.join("identity.json.tmp");
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(io_at(&tmp))?;
                f.write_all(&serde_json::to_vec(&file).expect("plain data serializes"))
                    .map_err(io_at(&tmp))?;
                f.sync_all().map_err(io_at(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
                File::open(&self.root)
                    .and_then(|d| d.sync_all())
                    .map_err(io_at(&self.root))?;
                Ok(Identity {
                    node_id,
                    incarnation,
                    legacy: false,
                })
            }
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Refuses an identity without a log: the log of an existing store was removed.
    pub(crate) fn require_log(&self) -> Result<(), DirError> {
        let wal = self.wal();
        let has_segment = match std::fs::read_dir(&wal) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".wal")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_at(&wal)(e)),
        };
        if self.identity().exists() && !has_segment {
            return Err(DirError::Refused {
                path: wal,
                reason:
                    "the store has an identity but its log is missing: the store cannot be trusted"
                        .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let s = StoreDir::new(d.path().to_path_buf());
        let first = s.identity_for(3, false).unwrap();
        assert_eq!(first.node_id, 3);
        assert_eq!(first.incarnation.len(), 36);
        assert_eq!(
            s.identity_for(4, true).unwrap(),
            first,
            "kept, whatever is configured"
        );
        let text = std::fs::read_to_string(s.identity()).unwrap();
        let edited = text.replace("\"node_id\":3", "\"node_id\":5");
        assert_ne!(edited, text);
        std::fs::write(s.identity(), edited).unwrap();
        let e = s.identity_for(3, true).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn a_missing_identity_or_log_and_an_old_store_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = StoreDir::new(d.path().to_path_buf());
        let e = s.identity_for(1, true).unwrap_err();
        assert!(
            e.to_string().contains("missing, but the log holds records"),
            "{e}"
        );
        s.identity_for(1, false).unwrap();
        let e = s.require_log().unwrap_err();
        assert!(e.to_string().contains("its log is missing"), "{e}");
        s.refuse_old_format().unwrap();
        // A store of format 3 (JSON log records), as the previous build wrote its identity.
        let text = std::fs::read_to_string(s.identity()).unwrap();
        let v3 = text.replace(&format!("\"format\":{FORMAT}"), "\"format\":3");
        assert_ne!(v3, text);
        std::fs::write(s.identity(), v3).unwrap();
        let e = s.refuse_old_format().unwrap_err().to_string();
        assert!(
            e.contains("format 3") && e.contains("shoal snapshot save"),
            "{e}"
        );
        std::fs::write(d.path().join("db"), b"sled").unwrap();
        let e = s.refuse_old_format().unwrap_err();
        assert!(e.to_string().contains("format 2"), "{e}");
    }
}
