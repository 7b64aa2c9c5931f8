//! The ledger's checkpoint-signing key, in its own file (mode 0600), apart
//! from the registry's key ring: whoever holds it can sign tree heads, so it
//! is neither in the database nor in the registry's keys.
//!
//! The file holds one line, the Go `note` signer key text
//! (`PRIVATE+KEY+name+id+base64`), so standard tools can use it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::note::{NoteError, SignerKey, VerifierKey};

/// File name of the key in the data directory.
pub const KEY_FILE_NAME: &str = "ledger.key";

/// Why the key file could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is invalid.
    #[error("ledger key: {0}")]
    Key(#[from] NoteError),
    /// A file operation failed.
    #[error("ledger key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists and would be overwritten.
    #[error("ledger key file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// Others than the owner may read or write the file.
    #[error(
        "ledger key file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The key that signs the ledger's checkpoints; its name is the log's origin.
pub struct LedgerKey {
    signer: SignerKey,
}

impl fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerKey")
            .field("origin", &self.signer.name())
            .field("verifier", &self.signer.verifier().to_string())
            .finish_non_exhaustive()
    }
}

impl LedgerKey {
    /// A new random key for the log named `origin` (e.g.
    /// `rempart.example/ledger`: no spaces, no `+`).
    pub fn generate(origin: &str) -> Result<Self, KeyError> {
        Ok(LedgerKey {
            signer: SignerKey::generate(origin)?,
        })
    }

    /// The key of a signer key text.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        Ok(LedgerKey {
            signer: SignerKey::parse(text.trim())?,
        })
    }

    /// The log's origin (the key's name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The signer.
    pub fn signer(&self) -> &SignerKey {
        &self.signer
    }

    /// The public key that checks the checkpoints.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.verifier()
    }

    /// Writes the key to a new file with mode 0600, synced; refuses to
    /// replace an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let mut text = self.signer.to_text();
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads a key file, refusing one that others than its owner may access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let mut text = Zeroizing::new(String::new());
        fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(io)?;
        Self::from_text(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_mode_0600_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let key = LedgerKey::generate("rempart.test/ledger").unwrap();
        key.save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = LedgerKey::load(&path).unwrap();
        assert_eq!(loaded.verifier(), key.verifier());
        assert_eq!(loaded.origin(), "rempart.test/ledger");
        assert!(matches!(key.save_new(&path), Err(KeyError::Exists(_))));
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        LedgerKey::generate("o").unwrap().save_new(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = LedgerKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = LedgerKey::generate("o").unwrap();
        let text = key.signer().to_text();
        // PRIVATE+KEY+name+hash+base64: the base64 itself may hold '+'.
        let secret = text.splitn(5, '+').nth(4).unwrap();
        assert!(secret.len() > 40, "{}", secret.len());
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(secret), "{dbg}");
        assert!(dbg.contains("origin"));
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "not a key\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(LedgerKey::load(&path), Err(KeyError::Key(_))));
    }
}
