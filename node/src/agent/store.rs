//! What an agent keeps on its local disk: the instances registered on this host and the last
//! model it received. Both are small JSON files replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory), so a crash at any moment leaves
//! either the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_model::discovery::Instance;
use shoal_model::{Model, Resource};

/// Format number of both files; a reader refuses other numbers rather than misreading them.
const FORMAT: u32 = 1;

/// Errors reading or writing the agent's files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds something else than this version of shoal writes.
    #[error("{path}: not a shoal agent file of format {FORMAT}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

#[derive(Serialize, Deserialize)]
struct InstancesFile {
    format: u32,
    instances: Vec<Instance>,
}

/// The instances registered on this host through the API (`shoal register`), persisted so that
/// a registration survives an agent restart. Instances from the config file are not stored
/// here: the file is read again at every start.
pub struct Registrations {
    path: PathBuf,
}

impl Registrations {
    /// The registrations file in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("instances.json"),
        }
    }

    /// Reads the stored registrations (none if the file does not exist yet).
    pub fn load(&self) -> Result<BTreeMap<String, Instance>, StoreError> {
        let Some(bytes) = read_optional(&self.path)? else {
            return Ok(BTreeMap::new());
        };
        let file: InstancesFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        if file.format != FORMAT {
            return Err(StoreError::Format {
                path: self.path.clone(),
                reason: format!("format {}", file.format),
            });
        }
        let mut out = BTreeMap::new();
        for inst in file.instances {
            let inst = inst.normalize().map_err(|e| StoreError::Format {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            out.insert(inst.key(), inst);
        }
        Ok(out)
    }

    /// Replaces the stored registrations with `instances`.
    pub fn save<'a>(
        &self,
        instances: impl Iterator<Item = &'a Instance>,
    ) -> Result<(), StoreError> {
        let file = InstancesFile {
            format: FORMAT,
            instances: instances.cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("instances serialize");
        write_atomic(&self.path, &bytes)
    }
}

#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: u32,
    revision: u64,
    resources: Vec<Resource>,
}

/// The last model the agent received from a server, so that it serves DNS and xDS from it when
/// every server is unreachable, also right after its own restart (fail-static).
#[derive(Clone)]
pub struct ModelCache {
    path: PathBuf,
}

impl ModelCache {
    /// The cache file in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("model.json"),
        }
    }

    /// The cached model, or `None` if there is none yet.
    pub fn load(&self) -> Result<Option<Model>, StoreError> {
        let Some(bytes) = read_optional(&self.path)? else {
            return Ok(None);
        };
        let file: ModelFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if file.format != FORMAT {
            return Err(StoreError::Format {
                path: self.path.clone(),
                reason: format!("format {}", file.format),
            });
        }
        Ok(Some(Model::from_resources(file.revision, file.resources)))
    }

    /// Stores `model`.
    pub fn save(&self, model: &Model) -> Result<(), StoreError> {
        let file = ModelFile {
            format: FORMAT,
            revision: model.revision(),
            resources: model.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("resources serialize");
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Instance {
        Instance::cloud_map("apps.local", "web", id, "10.0.0.1".parse().unwrap(), 80)
    }

    #[test]
    fn registrations_round_trip_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registrations::new(dir.path());
        assert!(r.load().unwrap().is_empty());
        let a = inst("a");
        let b = inst("b");
        r.save([&a, &b].into_iter()).unwrap();
        let loaded = r.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[&a.key()], a);
        std::fs::write(
            dir.path().join("instances.json"),
            b"{\"format\":9,\"instances\":[]}",
        )
        .unwrap();
        assert!(matches!(r.load(), Err(StoreError::Format { .. })));
        std::fs::write(dir.path().join("instances.json"), b"garbage").unwrap();
        assert!(r.load().unwrap_err().to_string().contains("instances.json"));
    }

    #[test]
    fn the_model_cache_keeps_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let c = ModelCache::new(dir.path());
        assert!(c.load().unwrap().is_none());
        let m = Model::from_resources(42, Vec::new());
        c.save(&m).unwrap();
        assert_eq!(c.load().unwrap().unwrap().revision(), 42);
        assert!(!dir.path().join("model.tmp").exists());
    }
}
