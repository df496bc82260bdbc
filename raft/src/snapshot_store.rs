//! Snapshot files: the model at a log index, written so that a crash never leaves a partial one
//! and a damaged one is never used (issue 12).
//!
//! One file per snapshot, `<last index:020>-<term:020>.snap`, in the store's `snapshots/`
//! directory:
//!
//! ```text
//! "SHOALSNP" | u32 format | u32 reserved | u64 meta len | u64 data len | meta | data | u32 crc32(all before)
//! ```
//!
//! A snapshot is written to `<name>.tmp`, synced, renamed, and the directory synced: only then is
//! it the current snapshot, and only then may the log it covers be purged. Older snapshots are
//! removed after. [`SnapshotStore::latest`] reads the newest one and verifies its checksum; a
//! damaged newest snapshot is an error that names the file, never a silent fall-back to an older
//! one (whose log may be gone).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SHOALSNP";
/// The snapshot file format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;
const HEADER: usize = 32;

/// Why a snapshot cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// The file system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The newest snapshot is damaged: the store must not be used.
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot as stored: its metadata and data, opaque to this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The log index it covers up to.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The caller's metadata (openraft's `SnapshotMeta`, encoded).
    pub meta: Vec<u8>,
    /// The caller's data (the model, encoded).
    pub data: Vec<u8>,
}

/// The snapshots directory of a store.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
}

fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (index, term) = name.strip_suffix(".snap")?.split_once('-')?;
    Some((index.parse().ok()?, term.parse().ok()?))
}

fn encode(meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + meta.len() + data.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if bytes.len() < HEADER + 4 {
        return Err(format!("{} bytes is shorter than a snapshot", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a snapshot file".into());
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(format!("format {format}, this build reads {FORMAT}"));
    }
    let meta_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let data_len = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    let body = (HEADER as u64)
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(data_len))
        .filter(|n| *n + 4 == bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "lengths {meta_len} + {data_len} do not match the file's {} bytes",
                bytes.len()
            )
        })? as usize;
    let crc = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..body]) != crc {
        return Err("the checksum does not match".into());
    }
    let meta_end = HEADER + meta_len as usize;
    Ok((
        bytes[HEADER..meta_end].to_vec(),
        bytes[meta_end..body].to_vec(),
    ))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

impl SnapshotStore {
    /// The snapshots in `dir` (created if missing). Leftover temporary files of writes a crash
    /// interrupted are removed: they were never the current snapshot.
    pub(crate) fn open(dir: &Path) -> Result<SnapshotStore, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let e = e.map_err(io_at(dir))?;
            if e.file_name().to_string_lossy().ends_with(".snap.tmp") {
                std::fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every snapshot file's (index, term, path), newest last. Files that are not snapshots
    /// are refused: the directory holds nothing else.
    fn list(&self) -> Result<Vec<(u64, u64, PathBuf)>, SnapshotError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let e = e.map_err(io_at(&self.dir))?;
            let name = e.file_name();
            match parse_name(&name.to_string_lossy()) {
                Some((index, term)) => out.push((index, term, e.path())),
                None => {
                    return Err(SnapshotError::Corrupt {
                        path: e.path(),
                        reason: "an unknown file in the snapshots directory".into(),
                    })
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest snapshot, verified; `None` when there is none.
    pub(crate) fn latest(&self) -> Result<Option<Stored>, SnapshotError> {
        let Some((index, term, path)) = self.list()?.pop() else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_at(&path))?;
        let (meta, data) = decode(&bytes).map_err(|reason| SnapshotError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        Ok(Some(Stored {
            index,
            term,
            meta,
            data,
        }))
    }

    /// Makes `snap` the current snapshot durably, then removes the older ones. A snapshot no
    /// newer than the current one is not written (`Ok(false)`).
    pub(crate) fn save(&self, snap: &Stored) -> Result<bool, SnapshotError> {
        let existing = self.list()?;
        if existing
            .last()
            .is_some_and(|(i, t, _)| (*i, *t) >= (snap.index, snap.term))
        {
            return Ok(false);
        }
        let name = file_name(snap.index, snap.term);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        f.write_all(&encode(&snap.meta, &snap.data))
            .map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        for (_, _, old) in existing {
            std::fs::remove_file(&old).map_err(io_at(&old))?;
        }
        sync_dir(&self.dir)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(index: u64, data: &[u8]) -> Stored {
        Stored {
            index,
            term: 2,
            meta: format!("meta-{index}").into_bytes(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_newest_snapshot_round_trips_and_replaces_the_older() {
        let d = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open(d.path()).unwrap();
        assert_eq!(s.latest().unwrap(), None);
        assert!(s.save(&snap(10, b"ten")).unwrap());
        assert!(s.save(&snap(20, b"twenty")).unwrap());
        assert!(!s.save(&snap(15, b"older")).unwrap(), "never goes back");
        let again = SnapshotStore::open(d.path()).unwrap();
        assert_eq!(again.latest().unwrap(), Some(snap(20, b"twenty")));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_snapshot_is_refused_with_its_path_never_skipped() {
        for damage in ["flip", "truncate", "empty", "magic"] {
            let d = tempfile::tempdir().unwrap();
            let s = SnapshotStore::open(d.path()).unwrap();
            s.save(&snap(10, &[9u8; 1000])).unwrap();
            let path = d.path().join(file_name(10, 2));
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                "flip" => bytes[500] ^= 1,
                "truncate" => bytes.truncate(bytes.len() / 2),
                "empty" => bytes.clear(),
                _ => bytes[0] = b'X',
            }
            std::fs::write(&path, &bytes).unwrap();
            let e = s.latest().unwrap_err();
            assert!(
                matches!(&e, SnapshotError::Corrupt { path: p, .. } if *p == path),
                "{damage}: {e:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
        }
    }

    #[test]
    fn an_interrupted_write_leaves_the_current_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open(d.path()).unwrap();
        s.save(&snap(10, b"ten")).unwrap();
        std::fs::write(d.path().join(format!("{}.tmp", file_name(20, 2))), b"half").unwrap();
        let s = SnapshotStore::open(d.path()).unwrap();
        assert_eq!(s.latest().unwrap(), Some(snap(10, b"ten")));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
