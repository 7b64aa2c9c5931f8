//! The key ring: versioned key-encryption keys and the blind-index key, kept
//! in a JSON key file with mode 0600 (or passed whole in an environment
//! variable), never in the database.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::CryptoError;
use crate::blind::BlindIndexer;
use crate::envelope::{Kek, SecretKey};

const FORMAT: &str = "rempart-keys/1";

/// On-disk form. Keys are base64; the struct is wiped after use.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    current_kek: u32,
    keks: BTreeMap<u32, String>,
    index_key: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.index_key.zeroize();
        for v in self.keks.values_mut() {
            v.zeroize();
        }
    }
}

/// All keys Rempart's registry needs.
pub struct KeyRing {
    current: u32,
    keks: BTreeMap<u32, (SecretKey, Kek)>,
    index_key: SecretKey,
    indexer: BlindIndexer,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current_kek", &self.current)
            .field("kek_versions", &self.kek_versions())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A new ring with KEK version 1 and a fresh blind-index key.
    pub fn generate() -> Result<Self, CryptoError> {
        let kek = SecretKey::random()?;
        let index_key = SecretKey::random()?;
        let mut keks = BTreeMap::new();
        keks.insert(1, (kek.clone(), Kek::new(1, &kek)));
        Ok(Self::assemble(1, keks, index_key))
    }

    fn assemble(current: u32, keks: BTreeMap<u32, (SecretKey, Kek)>, index_key: SecretKey) -> Self {
        let indexer = BlindIndexer::new(&index_key);
        KeyRing {
            current,
            keks,
            index_key,
            indexer,
        }
    }

    /// The KEK that wraps new data keys.
    pub fn current_kek(&self) -> &Kek {
        // `current` is always a key of `keks`: enforced by every constructor.
        &self.keks[&self.current].1
    }

    /// A KEK by version, to unwrap keys wrapped before a rotation finished.
    pub fn kek(&self, version: u32) -> Result<&Kek, CryptoError> {
        self.keks
            .get(&version)
            .map(|(_, k)| k)
            .ok_or(CryptoError::UnknownKek { version })
    }

    /// Versions held, oldest first.
    pub fn kek_versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    /// The blind-index computer.
    pub fn indexer(&self) -> &BlindIndexer {
        &self.indexer
    }

    /// Adds a new KEK version and makes it current. Older versions stay
    /// until [`KeyRing::retire_older_keks`], so reads keep working while
    /// data keys are being rewrapped.
    pub fn add_kek(&mut self) -> Result<u32, CryptoError> {
        let version = self.current + 1;
        let key = SecretKey::random()?;
        let kek = Kek::new(version, &key);
        self.keks.insert(version, (key, kek));
        self.current = version;
        Ok(version)
    }

    /// Forgets every KEK older than the current one. Call only once no data
    /// key is wrapped under them any more.
    pub fn retire_older_keks(&mut self) -> Vec<u32> {
        let old: Vec<u32> = self.keks.range(..self.current).map(|(v, _)| *v).collect();
        for v in &old {
            self.keks.remove(v);
        }
        old
    }

    /// Serialises the ring to its JSON key-file form.
    fn to_json(&self) -> Result<Vec<u8>, CryptoError> {
        let file = KeyFile {
            format: FORMAT.into(),
            current_kek: self.current,
            keks: self
                .keks
                .iter()
                .map(|(v, (k, _))| (*v, B64.encode(k.as_bytes())))
                .collect(),
            index_key: B64.encode(self.index_key.as_bytes()),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| CryptoError::KeyFormat {
            source_name: "key ring".into(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        Ok(json)
    }

    /// Parses a key file's contents. `source_name` only names the origin in errors.
    pub fn from_json(bytes: &[u8], source_name: &str) -> Result<Self, CryptoError> {
        let bad = |reason: String| CryptoError::KeyFormat {
            source_name: source_name.into(),
            reason,
        };
        // serde_json errors quote input; keep only the position.
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "not a Rempart key file (JSON error at line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if file.format != FORMAT {
            return Err(bad(format!("format must be \"{FORMAT}\"")));
        }
        let decode = |what: &str, s: &str| -> Result<SecretKey, CryptoError> {
            let mut raw = B64
                .decode(s)
                .map_err(|_| bad(format!("{what} is not valid base64")))?;
            let arr: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("{what} must be 32 bytes")))?;
            raw.zeroize();
            Ok(SecretKey::from_bytes(arr))
        };
        let mut keks = BTreeMap::new();
        for (v, s) in &file.keks {
            let key = decode(&format!("kek {v}"), s)?;
            keks.insert(*v, (key.clone(), Kek::new(*v, &key)));
        }
        if !keks.contains_key(&file.current_kek) {
            return Err(bad(format!(
                "current_kek {} is not among the keys",
                file.current_kek
            )));
        }
        let index_key = decode("index_key", &file.index_key)?;
        Ok(Self::assemble(file.current_kek, keks, index_key))
    }

    /// Loads a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CryptoError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let mut bytes = fs::read(path).map_err(io)?;
        let ring = Self::from_json(&bytes, &path.display().to_string());
        bytes.zeroize();
        ring
    }

    /// Writes a new key file with mode 0600; refuses to replace an existing one.
    pub fn save_new(&self, path: &Path) -> Result<(), CryptoError> {
        let mut json = self.to_json()?;
        let res = write_private(path, &json, true);
        json.zeroize();
        res
    }

    /// Atomically replaces the key file (write aside, sync, rename), mode 0600.
    pub fn save_replace(&self, path: &Path) -> Result<(), CryptoError> {
        let mut json = self.to_json()?;
        let tmp = sibling(path, ".new");
        let _ = fs::remove_file(&tmp);
        let res = write_private(&tmp, &json, true).and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| CryptoError::KeyFile {
                path: path.to_path_buf(),
                source,
            })?;
            sync_dir(path)
        });
        json.zeroize();
        res
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> Result<(), CryptoError> {
    let io = |source| CryptoError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(create_new);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), CryptoError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| CryptoError::KeyFile {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Binding;

    #[test]
    fn save_load_roundtrip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let ring = KeyRing::generate().unwrap();
        ring.save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let b = Binding {
            person: 1,
            dek_version: 1,
        };
        let (_, wrapped) = ring.current_kek().new_data_key(b).unwrap();
        let loaded = KeyRing::load(&path).unwrap();
        loaded.current_kek().unwrap_data_key(b, &wrapped).unwrap();
        assert_eq!(
            loaded.indexer().compute(crate::BlindKind::Nir, &[b"x"]),
            ring.indexer().compute(crate::BlindKind::Nir, &[b"x"])
        );
        // Never overwrites.
        assert!(matches!(
            ring.save_new(&path),
            Err(CryptoError::KeyFile { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_key_file_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeyRing::generate().unwrap().save_new(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::load(&path).unwrap_err();
        assert!(matches!(err, CryptoError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn rotation_keeps_old_versions_until_retired() {
        let mut ring = KeyRing::generate().unwrap();
        assert_eq!(ring.add_kek().unwrap(), 2);
        assert_eq!(ring.kek_versions(), vec![1, 2]);
        assert_eq!(ring.current_kek().version, 2);
        let json = ring.to_json().unwrap();
        let mut again = KeyRing::from_json(&json, "test").unwrap();
        assert_eq!(again.kek_versions(), vec![1, 2]);
        assert_eq!(again.retire_older_keks(), vec![1]);
        assert!(matches!(
            again.kek(1),
            Err(CryptoError::UnknownKek { version: 1 })
        ));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong_without_echoing_keys() {
        let ring = KeyRing::generate().unwrap();
        let json = String::from_utf8(ring.to_json().unwrap()).unwrap();
        let broken = json.replace("\"current_kek\": 1", "\"current_kek\": 9");
        let err = KeyRing::from_json(broken.as_bytes(), "env")
            .unwrap_err()
            .to_string();
        assert!(err.contains("current_kek 9"), "{err}");
        let err = KeyRing::from_json(b"{not json", "env")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(format!("{ring:?}").len() < 100);
    }
}
