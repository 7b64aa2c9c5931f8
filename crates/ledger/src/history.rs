//! One person's history in the ledger, with the proofs that let anyone
//! check it (the right of access, GDPR Art. 15; the person's own page).
//!
//! [`person_history`] reads every leaf about a person from the query index
//! up to a checkpoint's size, newest first, and proves a page of them
//! against that checkpoint in one batched lookup of the tree's stored
//! hashes. [`AccessBundle`] is its portable form (JSON: the signed
//! checkpoint, each leaf's canonical bytes and its inclusion proof), and
//! [`AccessBundle::verify`] checks it from the ledger's public key alone:
//! the checkpoint's signature, each proof against the checkpoint's root,
//! each leaf about the person named. A bundle proves that each entry is in
//! the log the checkpoint commits to; the list being whole rests on the
//! person index, which `audit verify` checks against the leaves.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::LedgerError;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::leaf::{AuditLeaf, PersonId, Timestamp};
use crate::merkle::{Hash, InclusionProof, leaf_hash};
use crate::note::VerifierKey;
use crate::store::{LedgerStore, QueryRange, StoreError, Subject};

/// Leaves asked of the index per page while reading a history.
const READ_PAGE: u32 = 5_000;

/// The format tag of a bundle.
pub const BUNDLE_FORMAT: &str = "rempart-access-bundle/1";

/// A leaf about the person, with its bytes and its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenEntry {
    /// Its index in the log.
    pub index: u64,
    /// Its canonical encoding (what the tree hashes).
    pub data: Vec<u8>,
    /// Decoded.
    pub leaf: AuditLeaf,
    /// Its inclusion in the tree of the history's size.
    pub proof: InclusionProof,
}

/// A page of a person's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonHistory {
    /// Whose.
    pub person: PersonId,
    /// The tree size every proof is against.
    pub size: u64,
    /// Leaves about the person in that tree, in all.
    pub total: u64,
    /// This page, newest first.
    pub entries: Vec<ProvenEntry>,
}

/// Which page of a history, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    /// Entries skipped from the newest.
    pub offset: u64,
    /// Most entries (0: none, only the total).
    pub limit: u32,
}

/// Every leaf about `person` in the tree of `size` leaves, newest first,
/// and the page asked for with its inclusion proofs.
pub async fn person_history(
    store: &dyn LedgerStore,
    person: PersonId,
    size: u64,
    page: HistoryPage,
) -> Result<PersonHistory, LedgerError> {
    // The index serves a subject oldest first; a person has few leaves
    // (tens, rarely thousands), so all of them are listed and the page cut
    // from the end.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let range = QueryRange {
            subject: Subject::Person(person),
            from: Timestamp(i64::MIN),
            to: Timestamp(i64::MAX),
            after,
            limit: READ_PAGE,
        };
        let rows = store.query(&range).await?;
        let full = rows.len() == READ_PAGE as usize;
        after = rows.last().map(|r| (Timestamp(r.time), r.index));
        all.extend(rows.into_iter().filter(|r| r.index < size));
        if !full {
            break;
        }
    }
    // Newest first: by time, then by index (the log's order).
    all.sort_unstable_by_key(|r| std::cmp::Reverse((r.time, r.index)));
    let total = all.len() as u64;
    let start = usize::try_from(page.offset)
        .unwrap_or(usize::MAX)
        .min(all.len());
    let end = start.saturating_add(page.limit as usize).min(all.len());
    let chosen = &all[start..end];
    let indexes: Vec<u64> = chosen.iter().map(|r| r.index).collect();
    let proofs = crate::proof::prove_inclusions(store, &indexes, size).await?;
    let mut entries = Vec::with_capacity(chosen.len());
    for (row, proof) in chosen.iter().zip(proofs) {
        let leaf = AuditLeaf::decode(&row.data).map_err(|reason| LedgerError::CorruptLeaf {
            index: row.index,
            reason,
        })?;
        if leaf.person != Some(person) {
            // The index named a leaf that is not about the person: the
            // index is damaged, and a history from it cannot be trusted.
            return Err(StoreError::Corrupt(format!(
                "the person index names leaf {} for a person it is not about",
                row.index
            ))
            .into());
        }
        entries.push(ProvenEntry {
            index: row.index,
            data: row.data.clone(),
            leaf,
            proof,
        });
    }
    Ok(PersonHistory {
        person,
        size,
        total,
        entries,
    })
}

/// A person's history as a portable, verifiable file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessBundle {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The person's id in the registry.
    pub person: i64,
    /// The signed checkpoint (a C2SP signed note) every proof is against.
    pub checkpoint: String,
    /// Leaves about the person in that tree, in all (the bundle may hold
    /// a page of them).
    pub total: u64,
    /// The entries, newest first.
    pub entries: Vec<BundleEntry>,
}

/// One entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    /// The leaf's index in the log.
    pub index: u64,
    /// The leaf's canonical encoding, base64 (RFC 4648, padded).
    pub leaf: String,
    /// The inclusion proof's hashes, base64, from the leaf up.
    pub proof: Vec<String>,
}

/// Why a bundle does not verify. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle of this format.
    #[error("format: expected {BUNDLE_FORMAT}")]
    Format,
    /// The checkpoint does not open with the trusted key.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// An entry's fields are malformed.
    #[error("entry {position} (leaf {index}): {reason}")]
    Malformed {
        /// Its position in the bundle, from 1.
        position: usize,
        /// The leaf index it claims.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry's proof does not lead to the checkpoint's root.
    #[error("entry {position} (leaf {index}): not in the log the checkpoint signs ({reason})")]
    NotIncluded {
        /// Its position in the bundle, from 1.
        position: usize,
        /// The leaf index it claims.
        index: u64,
        /// Why.
        reason: String,
    },
    /// An entry is not about the bundle's person.
    #[error("entry {position} (leaf {index}): not about person {person}")]
    OtherPerson {
        /// Its position in the bundle, from 1.
        position: usize,
        /// The leaf index.
        index: u64,
        /// The bundle's person.
        person: i64,
    },
    /// Entries repeat or are not newest first.
    #[error("entry {position} (leaf {index}): entries must be distinct and newest first")]
    Order {
        /// Its position in the bundle, from 1.
        position: usize,
        /// The leaf index.
        index: u64,
    },
    /// More entries than the total the bundle states.
    #[error("total: {total} is fewer than the {entries} entries")]
    Total {
        /// The stated total.
        total: u64,
        /// The entries held.
        entries: usize,
    },
}

/// A bundle that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// Whose history.
    pub person: PersonId,
    /// The checkpoint every entry is proven against.
    pub checkpoint: Checkpoint,
    /// The entries, newest first, decoded.
    pub entries: Vec<(u64, AuditLeaf)>,
}

impl AccessBundle {
    /// The bundle of a history page bound to `checkpoint` (the signed note
    /// of the history's size).
    pub fn new(history: &PersonHistory, checkpoint: &str) -> Self {
        AccessBundle {
            format: BUNDLE_FORMAT.to_string(),
            person: history.person.get(),
            checkpoint: checkpoint.to_string(),
            total: history.total,
            entries: history
                .entries
                .iter()
                .map(|e| BundleEntry {
                    index: e.index,
                    leaf: B64.encode(&e.data),
                    proof: e.proof.hashes.iter().map(|h| B64.encode(h)).collect(),
                })
                .collect(),
        }
    }

    /// Checks the bundle with the ledger's public key alone: the
    /// checkpoint's signature and origin, then each entry (its bytes
    /// decode, it is about the person, its proof leads to the
    /// checkpoint's root), entries distinct and newest first. The first
    /// failure is named.
    pub fn verify(&self, key: &VerifierKey) -> Result<VerifiedBundle, BundleError> {
        if self.format != BUNDLE_FORMAT {
            return Err(BundleError::Format);
        }
        let checkpoint = Checkpoint::open(&self.checkpoint, key)?;
        if (self.entries.len() as u64) > self.total {
            return Err(BundleError::Total {
                total: self.total,
                entries: self.entries.len(),
            });
        }
        let person = PersonId::new(self.person);
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut previous: Option<(Timestamp, u64)> = None;
        for (n, e) in self.entries.iter().enumerate() {
            let position = n + 1;
            let malformed = |reason: String| BundleError::Malformed {
                position,
                index: e.index,
                reason,
            };
            let data = B64
                .decode(&e.leaf)
                .map_err(|_| malformed("leaf: not base64".into()))?;
            let leaf = AuditLeaf::decode(&data).map_err(|r| malformed(format!("leaf: {r}")))?;
            let hashes = e
                .proof
                .iter()
                .map(|h| {
                    B64.decode(h)
                        .ok()
                        .and_then(|b| Hash::try_from(b.as_slice()).ok())
                        .ok_or_else(|| malformed("proof: each hash is 32 bytes in base64".into()))
                })
                .collect::<Result<Vec<Hash>, _>>()?;
            let proof = InclusionProof {
                index: e.index,
                size: checkpoint.size,
                hashes,
            };
            proof
                .verify(&leaf_hash(&data), &checkpoint.root)
                .map_err(|r| BundleError::NotIncluded {
                    position,
                    index: e.index,
                    reason: r.to_string(),
                })?;
            if leaf.person != Some(person) {
                return Err(BundleError::OtherPerson {
                    position,
                    index: e.index,
                    person: self.person,
                });
            }
            let key = (leaf.time, e.index);
            if previous.is_some_and(|p| p <= key) {
                return Err(BundleError::Order {
                    position,
                    index: e.index,
                });
            }
            previous = Some(key);
            entries.push((e.index, leaf));
        }
        Ok(VerifiedBundle {
            person,
            checkpoint,
            entries,
        })
    }
}
