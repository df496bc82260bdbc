//! The small files shoal writes for itself (keys, certificates, credentials, keyrings): made
//! new with their mode from the start (a key is never readable by others, even for a moment),
//! written and fsynced before anything relies on them, and replaced atomically where they
//! change.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes `bytes` to a new file `path` with `mode` and fsyncs it; an existing file is an error,
/// never replaced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing file is never replaced)",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` with `bytes` (mode `mode`): a temporary file beside it, fsynced, renamed
/// over it, the directory fsynced. A crash leaves the old file or the new one.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let _ = std::fs::remove_file(&tmp); // left by a crash between create and rename
    write_new(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs the directory `dir`, so that the files created or renamed in it stay.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
