//! Files the commands write for people to keep (notice letters, history
//! bundles): whole or not at all, for their owner's eyes only.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a file whole or not at all, readable by its owner only: a
/// letter written again after an interruption replaces the same file, so
/// the batch holds one per person; a history bundle is never half there.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = std::path::PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    // A letter holds a name and an address, a bundle a person's history:
    // for their owner's eyes only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
