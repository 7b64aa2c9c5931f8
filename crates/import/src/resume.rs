//! Resuming an interrupted import of a large file at its last committed
//! batch. Each batch moves the file's progress row in its own transaction
//! (`RegistryStore::write_persons_marked`, `upsert_mandates_marked`); a
//! later run of the same file reads it and starts reading the file there.
//! What the import keeps in memory about the lines before (the
//! duplicates' sets) is rebuilt by parsing them again, which writes
//! nothing.

use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use rempart_storage::{ImportKind, ImportProgress};
use rempart_vault::Vault;
use sha2::{Digest, Sha256};

use crate::{ImportError, Span};

/// How many leading bytes of a file its id covers.
const HEAD: u64 = 64 * 1024;

/// Names a file for its progress: SHA-256 over its kind, size,
/// modification time and first 64 KiB. A file edited, replaced or
/// regenerated since gets another id, and its import starts afresh.
pub(crate) fn file_id(path: &Path, kind: ImportKind) -> Result<[u8; 32], ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut head = Vec::new();
    file.take(HEAD).read_to_end(&mut head).map_err(io)?;
    let mut h = Sha256::new();
    h.update(b"rempart import file v1\0");
    h.update(kind.as_str().as_bytes());
    h.update(meta.len().to_be_bytes());
    h.update(modified.to_be_bytes());
    h.update(&head);
    Ok(h.finalize().into())
}

/// The file's id and, if an import of this same file was interrupted,
/// where it stands.
pub(crate) async fn resume_point(
    vault: &Vault,
    path: &Path,
    kind: ImportKind,
) -> Result<([u8; 32], Option<ImportProgress>), ImportError> {
    let id = file_id(path, kind)?;
    let progress = vault
        .store()
        .import_progress(kind)
        .await?
        .filter(|p| p.file_id == id && p.next_byte > 0);
    Ok((id, progress))
}

/// The part of the file still to import.
pub(crate) fn rest(progress: Option<&ImportProgress>) -> Span {
    Span {
        from: progress.map(|p| (p.next_byte, p.next_line)),
        until: None,
    }
}

/// The part already imported, to parse again for the duplicates' sets.
pub(crate) fn done(progress: &ImportProgress) -> Span {
    Span {
        from: None,
        until: Some(progress.next_byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_in_its_head_size_or_kind_gets_another_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.csv");
        std::fs::write(&p, b"a,b\n1,2\n").unwrap();
        let first = file_id(&p, ImportKind::Persons).unwrap();
        assert_eq!(first, file_id(&p, ImportKind::Persons).unwrap());
        assert_ne!(first, file_id(&p, ImportKind::Mandates).unwrap());
        std::fs::write(&p, b"a,b\n1,3\n").unwrap();
        assert_ne!(first, file_id(&p, ImportKind::Persons).unwrap());
        std::fs::write(&p, b"a,b\n1,2\n3,4\n").unwrap();
        assert_ne!(first, file_id(&p, ImportKind::Persons).unwrap());
    }
}
