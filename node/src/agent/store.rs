//! What an agent keeps on its local disk: the instances registered on this host and the last
//! model it received. Both are small JSON files replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory), so a crash at any moment leaves
//! either the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_model::discovery::Instance;
use shoal_model::{Change, Model, Resource};

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

/// One line of the journal: the changes a server published at `revision`, on top of the base
/// of revision `base`.
#[derive(Serialize, Deserialize)]
struct JournalEntry<'a> {
    /// The revision of the `model.json` this line extends. A crash between writing a new base
    /// and removing the old journal leaves lines of another base behind; they are skipped
    /// (lower revisions would be anyway, but a re-created cluster starts again from low
    /// revisions).
    base: u64,
    revision: u64,
    changes: std::borrow::Cow<'a, [Change]>,
}

/// The journal is folded into a new base once it is larger than the base or than this.
const JOURNAL_MIN_COMPACT: u64 = 4 << 20;

#[derive(Default)]
struct CacheState {
    base_revision: u64,
    base_bytes: u64,
    journal_bytes: u64,
}

/// The last model the agent received from a server, so that it serves DNS and xDS from it when
/// every server is unreachable, also right after its own restart (fail-static).
///
/// Two files: `model.json`, a whole model replaced atomically, and `model.log`, the changes
/// received since, one JSON line each, appended and fsynced. Writing a route change to a mesh
/// of thousands of nodes then costs a line, not the whole model; the journal is folded into a
/// new base once it outgrows it. Cheap to clone; clones share the files.
#[derive(Clone)]
pub struct ModelCache {
    path: PathBuf,
    journal: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<CacheState>>,
}

impl ModelCache {
    /// The cache files in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("model.json"),
            journal: data_dir.join("model.log"),
            state: Default::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn format_error(&self, path: &Path, reason: impl Into<String>) -> StoreError {
        StoreError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The cached model (the base with the journal replayed), or `None` if there is none yet.
    /// A torn last journal line (a crash in the middle of an append) is ignored: nothing used
    /// that update before it was written whole.
    pub fn load(&self) -> Result<Option<Model>, StoreError> {
        let Some(bytes) = read_optional(&self.path)? else {
            return Ok(None);
        };
        let file: ModelFile = serde_json::from_slice(&bytes)
            .map_err(|e| self.format_error(&self.path, e.to_string()))?;
        if file.format != FORMAT {
            return Err(self.format_error(&self.path, format!("format {}", file.format)));
        }
        let mut model = Model::from_resources(file.revision, file.resources);
        let journal = read_optional(&self.journal)?.unwrap_or_default();
        let mut lines = journal.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<JournalEntry<'_>>(line) {
                Ok(e) if e.base == file.revision => model.apply_changes(e.revision, &e.changes),
                Ok(_) => {}
                Err(e) if lines.peek().is_none_or(|rest| rest.is_empty()) => {
                    tracing::warn!(path = %self.journal.display(), error = %e, "ignoring a torn last line of the model journal");
                }
                Err(e) => return Err(self.format_error(&self.journal, e.to_string())),
            }
        }
        let mut st = self.state();
        st.base_revision = file.revision;
        st.base_bytes = bytes.len() as u64;
        st.journal_bytes = journal.len() as u64;
        Ok(Some(model))
    }

    /// Stores the whole of `model` and empties the journal.
    pub fn save(&self, model: &Model) -> Result<(), StoreError> {
        let file = ModelFile {
            format: FORMAT,
            revision: model.revision(),
            resources: model.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("resources serialize");
        write_atomic(&self.path, &bytes)?;
        // The base now holds every journaled change (replaying them would skip them anyway:
        // their revisions are not above the base's).
        match std::fs::remove_file(&self.journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&self.journal)(e)),
        }
        let mut st = self.state();
        st.base_revision = model.revision();
        st.base_bytes = bytes.len() as u64;
        st.journal_bytes = 0;
        Ok(())
    }

    /// Stores the changes that turned the cached model into `model` (`updates`: revision and
    /// changes, in order), appending them to the journal, or the whole model when the journal
    /// has outgrown the base or there is no base yet.
    pub fn append(&self, updates: &[(u64, &[Change])], model: &Model) -> Result<(), StoreError> {
        let base = self.state().base_revision;
        let mut lines = Vec::new();
        for (revision, changes) in updates {
            serde_json::to_writer(
                &mut lines,
                &JournalEntry {
                    base,
                    revision: *revision,
                    changes: std::borrow::Cow::Borrowed(changes),
                },
            )
            .expect("changes serialize");
            lines.push(b'\n');
        }
        let compact = {
            let st = self.state();
            st.base_bytes == 0
                || st.journal_bytes + lines.len() as u64 > st.base_bytes.max(JOURNAL_MIN_COMPACT)
        };
        if compact || !self.path.exists() {
            return self.save(model);
        }
        let created = !self.journal.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .map_err(io(&self.journal))?;
        f.write_all(&lines).map_err(io(&self.journal))?;
        f.sync_data().map_err(io(&self.journal))?;
        if created {
            // A new file is durable once its directory entry is.
            let dir = self.journal.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.state().journal_bytes += lines.len() as u64;
        Ok(())
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

    /// A server's model and the changes that made it, as a watch stream delivers them.
    struct Server {
        model: Model,
    }

    impl Server {
        fn put_mesh(&mut self, name: &str) -> (u64, Vec<Change>) {
            use shoal_model::{Command, PutMode, ResourceKey, Spec, Stamp};
            let rev = self.model.revision() + 1;
            let applied = self.model.apply(
                rev,
                &Command::Put {
                    key: ResourceKey::mesh(name),
                    spec: Box::new(Spec::Mesh(serde_json::from_str("{}").unwrap())),
                    mode: PutMode::Create,
                    tags: vec![],
                    client_token: None,
                    stamp: Stamp {
                        now: 1.0,
                        uid: name.into(),
                        account: "1".into(),
                        region: "r".into(),
                    },
                },
            );
            assert!(!applied.changes.is_empty());
            (rev, applied.changes)
        }
    }

    /// A cache holding an empty model, and a server to make changes with.
    fn saved_empty() -> (tempfile::TempDir, ModelCache, Server, Model) {
        let dir = tempfile::tempdir().unwrap();
        let c = ModelCache::new(dir.path());
        let replica = Model::default();
        c.save(&replica).unwrap();
        let server = Server {
            model: Model::default(),
        };
        (dir, c, server, replica)
    }

    #[test]
    fn changes_go_to_the_journal_and_come_back_with_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let c = ModelCache::new(dir.path());
        let mut server = Server {
            model: Model::default(),
        };
        let (r, ch) = server.put_mesh("a");
        let mut replica = Model::default();
        replica.apply_changes(r, &ch);
        // No base yet: the first write is a whole model.
        c.append(&[(r, &ch)], &replica).unwrap();
        assert!(!dir.path().join("model.log").exists());
        for name in ["b", "c", "d"] {
            let (r, ch) = server.put_mesh(name);
            replica.apply_changes(r, &ch);
            c.append(&[(r, &ch)], &replica).unwrap();
        }
        let journal = std::fs::read_to_string(dir.path().join("model.log")).unwrap();
        assert_eq!(journal.lines().count(), 3);
        let loaded = ModelCache::new(dir.path()).load().unwrap().unwrap();
        assert_eq!(loaded, replica);
        assert_eq!(loaded.revision(), 4);
        // A whole save folds the journal in.
        c.save(&replica).unwrap();
        assert!(!dir.path().join("model.log").exists());
        assert_eq!(c.load().unwrap().unwrap(), replica);
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_base() {
        let (dir, c, mut server, mut replica) = saved_empty();
        let mut compactions = 0;
        for i in 0..20_000 {
            let (r, ch) = server.put_mesh(&format!("mesh-{i}"));
            replica.apply_changes(r, &ch);
            c.append(&[(r, &ch)], &replica).unwrap();
            if !dir.path().join("model.log").exists() {
                compactions += 1;
            }
            if i % 5000 == 4999 {
                assert_eq!(
                    ModelCache::new(dir.path()).load().unwrap().unwrap(),
                    replica
                );
            }
        }
        let base = std::fs::metadata(dir.path().join("model.json"))
            .unwrap()
            .len();
        let journal = std::fs::metadata(dir.path().join("model.log"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(compactions >= 1, "the journal was never folded in");
        assert!(
            journal <= base.max(JOURNAL_MIN_COMPACT),
            "{journal} > {base}"
        );
    }

    /// A crash after a new base was written but before the old journal was removed: the old
    /// lines belong to another base (here a cluster re-created from revision 0) and are not
    /// replayed on top of the new one.
    #[test]
    fn journal_lines_of_another_base_are_skipped() {
        let (dir, c, mut server, mut replica) = saved_empty();
        for name in ["a", "b", "c"] {
            let (r, ch) = server.put_mesh(name);
            replica.apply_changes(r, &ch);
            c.append(&[(r, &ch)], &replica).unwrap();
        }
        let old_journal = std::fs::read(dir.path().join("model.log")).unwrap();
        // A new cluster: one mesh "z" at revision 1.
        let mut fresh = Server {
            model: Model::default(),
        };
        let (r, ch) = fresh.put_mesh("z");
        let mut new_model = Model::default();
        new_model.apply_changes(r, &ch);
        c.save(&new_model).unwrap();
        std::fs::write(dir.path().join("model.log"), &old_journal).unwrap();
        assert_eq!(c.load().unwrap().unwrap(), new_model);
    }

    #[test]
    fn a_torn_last_journal_line_is_ignored_and_a_torn_middle_is_an_error() {
        let (dir, c, mut server, mut replica) = saved_empty();
        let (r, ch) = server.put_mesh("a");
        replica.apply_changes(r, &ch);
        c.append(&[(r, &ch)], &replica).unwrap();
        let log = dir.path().join("model.log");
        let whole = std::fs::read(&log).unwrap();
        // A crash in the middle of the next append.
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 2]);
        std::fs::write(&log, &torn).unwrap();
        assert_eq!(c.load().unwrap().unwrap(), replica);
        // Garbage followed by a whole line cannot come from a crash.
        let mut bad = b"{garbage\n".to_vec();
        bad.extend_from_slice(&whole);
        std::fs::write(&log, &bad).unwrap();
        assert!(matches!(c.load(), Err(StoreError::Format { .. })));
    }
}
