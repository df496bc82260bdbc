//! The gossip keyring on disk and its rotation.
//!
//! A member's keyring lives in `<data-dir>/gossip-keyring.json` (mode 0600): the installed keys
//! in base64, the primary first. The first start creates it from `--gossip-key-file` (a file
//! holding one key, as `shoal gossip keygen` prints it; a key never goes on a command line,
//! where `ps` shows it); from then on the file in the data dir is the truth, because rotations
//! change it (Serf and Consul keep their keyring the same way). Every rotation step is saved
//! (temporary file, fsync, rename, directory fsync) before it is acknowledged, so a restarted
//! member comes back with the keys it had.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shoal_gossip::{GossipKey, Keyring};

/// The keyring file's name in a data dir.
pub const FILE: &str = "gossip-keyring.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    /// Installed keys in base64, the primary first.
    keys: Vec<String>,
}

/// A member's keyring and the file it is saved to.
#[derive(Clone, Debug)]
pub struct GossipKeys {
    /// The live keyring (the gossip transport reads it for every datagram).
    pub keyring: Keyring,
    /// Where every change is saved.
    pub file: PathBuf,
    /// Serializes changes (each is a read, a save and a write).
    changing: Arc<Mutex<()>>,
}

/// What one rotation step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyOp {
    /// Accept datagrams sealed with this key too (step 1, on every member).
    Install,
    /// Seal with this key (step 2, once every member has it installed).
    Use,
    /// Stop accepting this key (step 3, once no member seals with it).
    Remove,
}

/// The keyring as the API lists it: fingerprints only, never the keys.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listing {
    /// Fingerprint of the key this member seals with.
    pub primary: String,
    /// Fingerprints of every installed key, the primary first.
    pub keys: Vec<String>,
}

impl GossipKeys {
    /// Loads the keyring of `data_dir`, creating it from `key_file` at first start. None when
    /// neither exists (plaintext gossip). A damaged keyring file is refused, never replaced.
    pub fn open(data_dir: &Path, key_file: Option<&Path>) -> anyhow::Result<Option<GossipKeys>> {
        let file = data_dir.join(FILE);
        let from_flag = key_file.map(read_key_file).transpose()?;
        let keyring = match std::fs::read(&file) {
            Ok(bytes) => {
                let ring = parse(&bytes).with_context(|| {
                    format!(
                        "the gossip keyring {} is damaged (restore it from a member's copy, or \
                         remove it to start again from --gossip-key-file)",
                        file.display()
                    )
                })?;
                if let Some(key) = &from_flag {
                    if !ring.keys().contains(key) {
                        tracing::warn!(
                            keyring = %file.display(),
                            flag_key = %key.fingerprint(),
                            "--gossip-key-file holds a key that is not in this member's keyring: \
                             the keyring in the data dir is used (it changes with rotations; the \
                             flag only seeds it at first start)"
                        );
                    }
                }
                ring
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match from_flag {
                None => return Ok(None),
                Some(key) => {
                    let ring = Keyring::new(key, []);
                    save(&file, &ring)?;
                    ring
                }
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Some(GossipKeys {
            keyring,
            file,
            changing: Arc::default(),
        }))
    }

    /// Applies one rotation step and saves the keyring before returning: the step is tried on
    /// a copy, the copy saved, and only then the live keyring changed (a step that cannot be
    /// saved changes nothing).
    pub fn apply(&self, op: KeyOp, key: GossipKey) -> anyhow::Result<Listing> {
        let _one_at_a_time = self.changing.lock().expect("keyring change lock");
        let keys = self.keyring.keys();
        let next = Keyring::new(keys[0].clone(), keys[1..].iter().cloned());
        step(&next, op, &key)?;
        save(&self.file, &next)?;
        step(&self.keyring, op, &key)?;
        tracing::info!(op = ?op, key = %key.fingerprint(), primary = %self.keyring.primary().fingerprint(), "gossip keyring changed");
        Ok(self.listing())
    }

    /// Fingerprints of the installed keys.
    pub fn listing(&self) -> Listing {
        let keys = self.keyring.keys();
        Listing {
            primary: keys[0].fingerprint(),
            keys: keys.iter().map(GossipKey::fingerprint).collect(),
        }
    }
}

/// [`GossipKeys::open`] for a member gossiping on `addr`: beyond loopback, a member without a
/// key refuses to start unless `insecure`, and says so at every start when it is.
pub fn open_for(
    data_dir: &Path,
    key_file: Option<&Path>,
    addr: std::net::SocketAddr,
    insecure: bool,
) -> anyhow::Result<Option<GossipKeys>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let keys = GossipKeys::open(data_dir, key_file)?;
    if keys.is_none() && !addr.ip().is_loopback() {
        if !insecure {
            bail!(
                "gossip on {addr} is reachable beyond this host, and without a key anyone who \
                 reaches it can read it and inject members and instances: give \
                 --gossip-key-file (a key from `shoal gossip keygen`, the same on every member), \
                 or --insecure to run without"
            );
        }
        tracing::warn!(gossip = %addr, "--insecure: gossip beyond this host without a key; anyone who reaches it can read it and inject members and instances");
    }
    Ok(keys)
}

/// Reads a key file (one base64 key; surrounding whitespace ignored).
pub fn read_key_file(path: &Path) -> anyhow::Result<GossipKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the gossip key file {}", path.display()))?;
    GossipKey::from_base64(&text).with_context(|| format!("in {}", path.display()))
}

fn step(ring: &Keyring, op: KeyOp, key: &GossipKey) -> Result<(), shoal_gossip::KeyringError> {
    match op {
        KeyOp::Install => ring.install(key.clone()).map(|_| ()),
        KeyOp::Use => ring.use_key(key),
        KeyOp::Remove => ring.remove(key),
    }
}

fn parse(bytes: &[u8]) -> anyhow::Result<Keyring> {
    let on_disk: OnDisk = serde_json::from_slice(bytes)?;
    let keys = on_disk
        .keys
        .iter()
        .map(|k| GossipKey::from_base64(k))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((primary, others)) = keys.split_first() else {
        bail!("it holds no key");
    };
    Ok(Keyring::new(primary.clone(), others.iter().cloned()))
}

/// Saves `ring` to `file`: a temporary file readable by its owner only, fsynced, renamed over
/// the old one, the directory fsynced.
fn save(file: &Path, ring: &Keyring) -> anyhow::Result<()> {
    let on_disk = OnDisk {
        keys: ring.keys().iter().map(GossipKey::to_base64).collect(),
    };
    crate::files::replace(file, &serde_json::to_vec_pretty(&on_disk)?, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_seeds_from_the_flag_then_the_data_dir_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GossipKeys::open(dir.path(), None).unwrap().is_none());
        let first = GossipKey::generate();
        let key_file = dir.path().join("gossip.key");
        std::fs::write(&key_file, format!("{}\n", first.to_base64())).unwrap();
        let keys = GossipKeys::open(dir.path(), Some(&key_file))
            .unwrap()
            .unwrap();
        assert_eq!(keys.keyring.keys(), vec![first.clone()]);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A rotation is saved, and a restart with the old flag keeps the rotated ring.
        let second = GossipKey::generate();
        keys.apply(KeyOp::Install, second.clone()).unwrap();
        keys.apply(KeyOp::Use, second.clone()).unwrap();
        let listing = keys.apply(KeyOp::Remove, first.clone()).unwrap();
        assert_eq!(listing.primary, second.fingerprint());
        assert_eq!(listing.keys, vec![second.fingerprint()]);
        let again = GossipKeys::open(dir.path(), Some(&key_file))
            .unwrap()
            .unwrap();
        assert_eq!(again.keyring.keys(), vec![second]);
        // The file never holds anything but base64 keys.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains(&first.to_base64()));
    }

    #[test]
    fn refused_steps_change_nothing_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = GossipKey::generate();
        let key_file = dir.path().join("gossip.key");
        std::fs::write(&key_file, key.to_base64()).unwrap();
        let keys = GossipKeys::open(dir.path(), Some(&key_file))
            .unwrap()
            .unwrap();
        let stranger = GossipKey::generate();
        assert!(keys.apply(KeyOp::Use, stranger.clone()).is_err());
        assert!(keys.apply(KeyOp::Remove, key.clone()).is_err());
        assert_eq!(keys.keyring.keys(), vec![key]);
        for damage in ["", "{", "{\"keys\":[]}", "{\"keys\":[\"short\"]}"] {
            std::fs::write(dir.path().join(FILE), damage).unwrap();
            let err = GossipKeys::open(dir.path(), Some(&key_file)).unwrap_err();
            assert!(
                format!("{err:#}").contains("damaged"),
                "{damage:?}: {err:#}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
                damage
            );
        }
        std::fs::write(&key_file, "not a key").unwrap();
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        assert!(GossipKeys::open(dir.path(), Some(&key_file)).is_err());
    }

    #[test]
    fn gossip_beyond_loopback_needs_a_key_or_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let wide: std::net::SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let err = open_for(dir.path(), None, wide, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("--gossip-key-file")
                && format!("{err:#}").contains("--insecure"),
            "{err:#}"
        );
        assert!(open_for(dir.path(), None, wide, true).unwrap().is_none());
        assert!(open_for(dir.path(), None, local, false).unwrap().is_none());
        let key_file = dir.path().join("gossip.key");
        std::fs::write(&key_file, GossipKey::generate().to_base64()).unwrap();
        assert!(open_for(dir.path(), Some(&key_file), wide, false)
            .unwrap()
            .is_some());
    }
}
