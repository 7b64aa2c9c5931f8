//! Rempart's cryptography, with no knowledge of storage or HTTP:
//! - [`KeyRing`]: versioned key-encryption keys and the blind-index key,
//!   loaded from a 0600 key file or an environment variable;
//! - [`envelope`]: per-person data keys wrapped by a KEK, and AES-256-GCM
//!   sealing of field groups with person, group and key version bound as
//!   associated data;
//! - [`blind`]: HMAC-SHA-256 blind indexes for exact-match lookup;
//! - [`reason`]: salted digests of written reasons, for the ledger.

pub mod blind;
pub mod envelope;
mod keys;
pub mod reason;

use std::path::PathBuf;

pub use blind::{Blind, BlindIndexer, BlindKind};
pub use envelope::{Binding, DataKey, Kek};
pub use keys::KeyRing;

/// Everything that can go wrong with keys and ciphertexts. No variant ever
/// carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the operating system's random generator failed")]
    Random,
    #[error("encryption failed")]
    Seal,
    #[error("data key of person {person} does not authenticate under KEK version {kek_version}")]
    Unwrap { person: i64, kek_version: u32 },
    #[error("field group {group} of person {person} does not authenticate")]
    Open { person: i64, group: u8 },
    #[error("KEK version {version} is not in the key ring")]
    UnknownKek { version: u32 },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} can be read by others (mode {mode:o}): run chmod 600 on it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("keys from {source_name}: {reason}")]
    KeyFormat { source_name: String, reason: String },
}
