//! Rempart's audit ledger: a tamper-evident record of every read.
//!
//! Each consultation, denial, login or mandate change becomes an
//! [`AuditLeaf`] (identifiers only, canonical binary encoding) appended to
//! an RFC 6962 / RFC 9162 Merkle log. Signed checkpoints (C2SP
//! tlog-checkpoint in a C2SP signed note, Ed25519) commit to the log's
//! state, so deleting, editing, reordering or truncating history is caught
//! by [`verify()`] and by anyone holding an old checkpoint.
//!
//! - [`leaf`]: the leaf and its encoding.
//! - [`merkle`]: hashing, proofs and their verification, no I/O.
//! - [`note`], [`checkpoint`], [`key`]: signed notes, tree heads, the key file.
//! - [`store`]: the [`LedgerStore`] interface, SQLite and PostgreSQL backends.
//! - [`Ledger`]: a process's appender (group commit, durable before
//!   return, checkpoints every N leaves or T seconds); on PostgreSQL, one
//!   per process, the writer's holder integrating what the others stage.
//! - [`verify()`], [`proof`], [`query`]: checking, proving, searching.
//! - [`bench`](mod@bench): the figures behind `rempart bench ledger`.

pub mod bench;
pub mod checkpoint;
pub mod history;
pub mod key;
pub mod leaf;
mod ledger;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod query;
pub mod store;
mod verify;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use key::{KEY_FILE_NAME, KeyError, LedgerKey};
pub use leaf::{
    AccountId, Action, AuditLeaf, Decision, DenyReason, FieldGroups, GuardVerdict, LeafError,
    OrganisationId, PersonId, SessionId, Timestamp,
};
pub use ledger::{LeafRef, Ledger, LedgerConfig, SignedCheckpoint};
pub use merkle::{ConsistencyProof, Hash, InclusionProof, ProofError};
pub use note::{NoteError, VerifierKey};
pub use query::{LedgerEntry, Page};
pub use store::{LedgerStore, QueryRange, StoreError, Subject};
pub use verify::{Problem, VerifyFailure, VerifyOptions, VerifyReport, verify, verify_with};

/// The position of a leaf in the log (its sequence number).
pub type LeafIndex = u64;

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A leaf cannot be encoded (nothing was appended).
    #[error("audit leaf refused: {0}")]
    Leaf(#[from] LeafError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint could not be made or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A proof could not be made.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    /// The key file failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The batch holding the leaf was not committed: the leaf is not in the
    /// ledger and the caller must not release the data.
    #[error("audit append failed, nothing may be released: {0}")]
    AppendFailed(String),
    /// The appender has stopped.
    #[error("the audit ledger's appender has stopped")]
    Closed,
    /// This appender stages its leaves; another process integrates them
    /// and signs the checkpoints.
    #[error("another process integrates this ledger and signs its checkpoints")]
    NotIntegrating,
    /// At opening, the store does not match its latest checkpoint.
    #[error(
        "the ledger at {location} does not match its latest checkpoint: {reason} (run the ledger verification)"
    )]
    Inconsistent {
        /// Where the ledger is.
        location: String,
        /// What does not match.
        reason: String,
    },
    /// A stored leaf does not decode.
    #[error("stored leaf {index} is corrupt: {reason}")]
    CorruptLeaf {
        /// Its index.
        index: LeafIndex,
        /// Why.
        reason: LeafError,
    },
    /// Verification found tampering or damage.
    #[error("{0}")]
    Tampered(Box<VerifyFailure>),
}
