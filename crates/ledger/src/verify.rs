//! Verification: recompute the whole tree from the stored leaves, in index
//! order and page by page (never all in memory), and check
//!
//! - that indices are contiguous from 0 (a deleted leaf leaves a gap),
//! - that each leaf decodes and its indexed columns agree with it (a leaf
//!   hidden from queries by an edited column is caught),
//! - that the stored subtree hashes are the recomputed ones,
//! - every checkpoint: its signature, its origin, and its root against the
//!   root recomputed at its size; a checkpoint beyond the last leaf means a
//!   truncated tail; an earlier checkpoint that no longer matches while a
//!   later one does means history was rewritten and re-signed;
//! - optionally, checkpoints held outside the store (by an auditor, a
//!   witness, a person who was shown one), checked the same way.
//!
//! Only the public verifier key is needed. A checkpoint signed by other
//! keys than the trusted one is reported as a changed signing key, apart
//! from a bad signature and from rewritten history.
//!
//! A failure names what and where: the first bad leaf, the first failing
//! checkpoint, and one line per problem.

use std::fmt;
use std::sync::Arc;

use std::collections::VecDeque;

use crate::LedgerError;
use crate::checkpoint::Checkpoint;
use crate::leaf::{AuditLeaf, LeafError};
use crate::merkle::{EMPTY_ROOT, Frontier, Hash, leaf_hash};
use crate::note::VerifierKey;
use crate::store::{GROUP_HASHES, GROUP_LEVEL, LeafRow, LedgerStore, StoreError, TILE_LEVEL};

/// Pages read ahead of the one being hashed.
const READ_AHEAD: usize = 3;

/// Most problems listed; the rest are counted.
const MAX_PROBLEMS: usize = 64;

/// How to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Signed checkpoints kept outside the store, checked like stored ones.
    pub external_checkpoints: Vec<String>,
    /// Leaves read per page.
    pub page_size: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            external_checkpoints: Vec::new(),
            page_size: 50_000,
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Leaves read and rehashed.
    pub leaves: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: usize,
    /// Size of the largest checkpoint.
    pub latest_checkpoint: Option<u64>,
    /// Root of the whole log.
    pub root: Hash,
}

/// A checkpoint, as problems name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRef {
    /// The tree size it commits to.
    pub size: u64,
    /// Whether it came from outside the store.
    pub external: bool,
}

impl fmt::Display for CheckpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.external {
            write!(f, "external checkpoint at size {}", self.size)
        } else {
            write!(f, "checkpoint at size {}", self.size)
        }
    }
}

/// One thing verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Indices jump: leaves `from..to` are missing.
    #[error("{}", describe_missing(*from, *to))]
    MissingLeaves {
        /// First missing index.
        from: u64,
        /// Next index present.
        to: u64,
    },
    /// The log ends before a checkpoint's size.
    #[error("the log ends after {leaves} leaves but the {checkpoint} commits to {}: leaves {leaves} onwards were removed (truncated tail)", checkpoint.size)]
    Truncated {
        /// Leaves present.
        leaves: u64,
        /// The smallest checkpoint beyond them.
        checkpoint: CheckpointRef,
    },
    /// A leaf's bytes do not decode.
    #[error("leaf {index} does not decode: {reason}")]
    UndecodableLeaf {
        /// Its index.
        index: u64,
        /// Why.
        reason: LeafError,
    },
    /// A query table does not hold exactly the keys of a segment's leaves.
    #[error(
        "the query table {table} disagrees with leaves {} to {} (queries would misreport them); the leaves themselves are intact",
        segment << 14, ((segment + 1) << 14) - 1
    )]
    IndexMismatch {
        /// The segment (leaves `segment << 14` onwards).
        segment: u64,
        /// The table.
        table: &'static str,
    },
    /// An indexed column disagrees with the leaf's content.
    #[error(
        "leaf {index}: its {column} column disagrees with its content (queries would misreport it)"
    )]
    ColumnMismatch {
        /// Its index.
        index: u64,
        /// Which column.
        column: &'static str,
    },
    /// A stored subtree hash is not the recomputed one.
    #[error("{}", describe_node_mismatch(*index, *level, *first_leaf))]
    NodeMismatch {
        /// The subtree's last leaf (whose row holds the hash, or whose
        /// tile's row for hashes of level 4).
        index: u64,
        /// The subtree's level (0: the leaf's own hash).
        level: u8,
        /// The subtree's first leaf.
        first_leaf: u64,
    },
    /// A checkpoint's note does not parse.
    #[error("{checkpoint} is unreadable: {reason}")]
    CheckpointUnreadable {
        /// Which.
        checkpoint: CheckpointRef,
        /// Why.
        reason: String,
    },
    /// A checkpoint's signature does not verify with the ledger's key.
    #[error("{checkpoint} has an invalid signature (forged or altered): {reason}")]
    CheckpointSignature {
        /// Which.
        checkpoint: CheckpointRef,
        /// Why.
        reason: String,
    },
    /// A checkpoint is signed, but only by other keys than the trusted one:
    /// the signing key changed (the key in the data directory was replaced,
    /// or someone else signed it). Neither a bad signature by the trusted
    /// key nor, by itself, a rewrite: its root could not be trusted, so it
    /// was not compared.
    #[error(
        "{checkpoint} is signed by key {}, not by the trusted key {trusted}: the signing key changed (the ledger's key was replaced, or someone else signed this checkpoint); its root was not checked",
        found.join(", ")
    )]
    CheckpointKeyChanged {
        /// Which.
        checkpoint: CheckpointRef,
        /// The trusted key, `name+id`.
        trusted: String,
        /// The keys that signed it, `name+id`.
        found: Vec<String>,
    },
    /// A checkpoint row's size is not its note's.
    #[error("the checkpoint row for size {row_size} holds a signed note for size {note_size}")]
    CheckpointSizeMismatch {
        /// Size column.
        row_size: u64,
        /// Size in the note.
        note_size: u64,
    },
    /// A checkpoint's root is not the root recomputed from the leaves.
    #[error("{checkpoint}: its signed root is not the root of the stored leaves; the leaves up to size {last_good} match, so leaves {last_good} to {} were altered", checkpoint.size - 1)]
    CheckpointRootMismatch {
        /// Which.
        checkpoint: CheckpointRef,
        /// Largest size at which a checkpoint matched (0 if none).
        last_good: u64,
    },
    /// An earlier checkpoint no longer matches while a later one does: the
    /// history it covered was rewritten and the later head re-signed.
    #[error("{earlier} is inconsistent with the later {later}: the later one matches the stored leaves, the earlier one does not, so leaves {last_good} to {} were rewritten after the earlier was signed", earlier.size - 1)]
    CheckpointInconsistent {
        /// The checkpoint that no longer matches.
        earlier: CheckpointRef,
        /// A later checkpoint that matches.
        later: CheckpointRef,
        /// Largest size below `earlier` at which a checkpoint matched.
        last_good: u64,
    },
}

fn describe_missing(from: u64, to: u64) -> String {
    let which = if to == from + 1 {
        format!("leaf {from} is missing")
    } else {
        format!("leaves {from} to {} are missing", to - 1)
    };
    if from == 0 {
        format!("{which} (deleted): the log starts at leaf {to}")
    } else {
        format!(
            "{which} (deleted): the log goes from leaf {} to leaf {to}",
            from - 1
        )
    }
}

fn describe_node_mismatch(index: u64, level: u8, first_leaf: u64) -> String {
    if level == 0 {
        format!(
            "leaf {index}: its content does not match its stored hashes (content changed or row moved)"
        )
    } else {
        format!(
            "leaves {first_leaf} to {index}: their recomputed subtree hash (level {level}) is not the stored one (leaves changed, moved or swapped)"
        )
    }
}

impl Problem {
    /// The first leaf this problem puts in doubt, if it is about leaves.
    pub fn first_leaf(&self) -> Option<u64> {
        match self {
            Problem::MissingLeaves { from, .. } => Some(*from),
            Problem::Truncated { leaves, .. } => Some(*leaves),
            Problem::UndecodableLeaf { index, .. } | Problem::ColumnMismatch { index, .. } => {
                Some(*index)
            }
            Problem::NodeMismatch { first_leaf, .. } => Some(*first_leaf),
            _ => None,
        }
    }

    /// The checkpoint this problem makes fail, if any.
    pub fn checkpoint(&self) -> Option<u64> {
        match self {
            Problem::Truncated { checkpoint, .. }
            | Problem::CheckpointUnreadable { checkpoint, .. }
            | Problem::CheckpointSignature { checkpoint, .. }
            | Problem::CheckpointKeyChanged { checkpoint, .. }
            | Problem::CheckpointRootMismatch { checkpoint, .. } => Some(checkpoint.size),
            Problem::CheckpointSizeMismatch { row_size, .. } => Some(*row_size),
            Problem::CheckpointInconsistent { earlier, .. } => Some(earlier.size),
            _ => None,
        }
    }
}

/// Verification failed: what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Where the ledger is.
    pub location: String,
    /// Leaves read.
    pub leaves_read: u64,
    /// Checkpoints in the store (and given from outside).
    pub checkpoints: usize,
    /// The first leaf in doubt.
    pub first_bad_leaf: Option<u64>,
    /// The smallest size of a checkpoint that failed or could not be
    /// checked because of the problems.
    pub first_bad_checkpoint: Option<u64>,
    /// The problems, in the order found (at most 64).
    pub problems: Vec<Problem>,
    /// Problems found beyond the listed ones (mostly consequences of them).
    pub omitted: u64,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "audit ledger verification FAILED for {} ({} leaves read, {} checkpoints)",
            self.location, self.leaves_read, self.checkpoints
        )?;
        if let Some(l) = self.first_bad_leaf {
            write!(f, "; first bad leaf: {l}")?;
        }
        if let Some(c) = self.first_bad_checkpoint {
            write!(f, "; first failing checkpoint: size {c}")?;
        }
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        if self.omitted > 0 {
            write!(
                f,
                "\n  - and {} more problems following from these",
                self.omitted
            )?;
        }
        Ok(())
    }
}

/// Verifies the whole ledger with the default options.
pub async fn verify(
    store: &Arc<dyn LedgerStore>,
    key: &VerifierKey,
) -> Result<VerifyReport, LedgerError> {
    verify_with(store, key, &VerifyOptions::default()).await
}

struct Cp {
    at: CheckpointRef,
    root: Hash,
    matched: Option<bool>,
}

/// The streaming recomputation, moved to a blocking thread page by page.
struct Checker {
    frontier: Frontier,
    expected: u64,
    cps: Vec<Cp>,
    next_cp: usize,
    problems: Vec<Problem>,
    omitted: u64,
    node_mismatch_seen: bool,
    stopped: bool,
    buf: Vec<u8>,
    /// The store keeps the hashes of this level and up with each leaf.
    lowest: u8,
    /// The recomputed level-4 hashes of the current tile, to compare with
    /// those its last leaf's row carries.
    level4: Vec<u8>,
}

impl Checker {
    fn problem(&mut self, p: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        } else {
            self.omitted += 1;
        }
    }

    fn check_checkpoints(&mut self) {
        while let Some(cp) = self.cps.get_mut(self.next_cp) {
            if cp.at.size != self.expected {
                break;
            }
            cp.matched = Some(cp.root == self.frontier.root());
            self.next_cp += 1;
        }
    }

    fn process(&mut self, rows: Vec<LeafRow>) {
        for row in rows {
            if self.stopped {
                return;
            }
            if row.index != self.expected {
                // Rows come by increasing unique index: a jump is a gap.
                // Everything after it is shifted, so stop recomputing.
                self.problem(Problem::MissingLeaves {
                    from: self.expected,
                    to: row.index,
                });
                self.stopped = true;
                return;
            }
            match AuditLeaf::decode(&row.data) {
                Ok(leaf) => {
                    if let Some(column) = mismatched_column(&leaf, &row) {
                        self.problem(Problem::ColumnMismatch {
                            index: row.index,
                            column,
                        });
                    }
                }
                Err(reason) => self.problem(Problem::UndecodableLeaf {
                    index: row.index,
                    reason,
                }),
            }
            self.buf.clear();
            self.frontier.push_into(leaf_hash(&row.data), &mut self.buf);
            let kept = self
                .buf
                .get(usize::from(self.lowest) * 32..)
                .unwrap_or_default();
            let group = (1u64 << GROUP_LEVEL) - 1;
            if row.index & ((1 << TILE_LEVEL) - 1) == 0 {
                self.level4.clear();
            }
            if row.index & group == group {
                let at = usize::from(GROUP_LEVEL) * 32;
                self.level4
                    .extend_from_slice(self.buf.get(at..at + 32).unwrap_or_default());
            }
            // A row carries level-4 hashes only as its tile's last leaf.
            let level4_differs = !row.level4.is_empty() && row.level4 != self.level4;
            if kept != row.nodes || level4_differs {
                if self.node_mismatch_seen {
                    // Consequences of the first one: the recomputation goes
                    // on from the leaves, and checkpoints will tell.
                    self.omitted += 1;
                } else {
                    self.node_mismatch_seen = true;
                    let problem = if kept != row.nodes {
                        let level = first_difference(kept, &row.nodes).saturating_add(self.lowest);
                        Problem::NodeMismatch {
                            index: row.index,
                            level,
                            first_leaf: row.index + 1 - (1u64 << level),
                        }
                    } else {
                        // Groups of 16 leaves from the tile's first.
                        let g = u64::from(first_difference(&self.level4, &row.level4));
                        let first_leaf =
                            (row.index & !((1 << TILE_LEVEL) - 1)) + (g << GROUP_LEVEL);
                        Problem::NodeMismatch {
                            index: first_leaf + group,
                            level: GROUP_LEVEL,
                            first_leaf,
                        }
                    };
                    self.problem(problem);
                }
            }
            self.expected += 1;
            self.check_checkpoints();
        }
    }
}

/// Level of the first 32-byte hash where the stored list differs; 0 when
/// the stored list has the wrong length (the row's hashes were made for
/// another position).
fn first_difference(recomputed: &[u8], stored: &[u8]) -> u8 {
    if recomputed.len() != stored.len() {
        return 0;
    }
    let level = recomputed
        .chunks(32)
        .zip(stored.chunks(32))
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    // At most 64 levels.
    u8::try_from(level.min(63)).unwrap_or(63)
}

fn mismatched_column(leaf: &AuditLeaf, row: &LeafRow) -> Option<&'static str> {
    if leaf.time.0 != row.time {
        Some("time")
    } else if leaf.account.get() != row.account {
        Some("account")
    } else if leaf.organisation.get() != row.organisation {
        Some("organisation")
    } else if leaf.person.map(|p| p.get()) != row.person {
        Some("person")
    } else if leaf.reveals_person_data() != row.reveals {
        Some("reveals")
    } else {
        None
    }
}

/// Verifies the whole ledger.
pub async fn verify_with(
    store: &Arc<dyn LedgerStore>,
    key: &VerifierKey,
    options: &VerifyOptions,
) -> Result<VerifyReport, LedgerError> {
    let mut problems = Vec::new();
    let mut cps = Vec::new();
    let stored = store.checkpoints().await?;
    let notes = stored.into_iter().map(|c| (c.size, c.note, false)).chain(
        options
            .external_checkpoints
            .iter()
            .map(|n| (u64::MAX, n.clone(), true)),
    );
    let mut total_checkpoints = 0;
    for (row_size, note, external) in notes {
        total_checkpoints += 1;
        // An external note's size is only known once it parses.
        let at = CheckpointRef {
            size: if external {
                size_in_note(&note).unwrap_or(0)
            } else {
                row_size
            },
            external,
        };
        match Checkpoint::open(&note, key) {
            Ok(cp) if !external && cp.size != row_size => {
                problems.push(Problem::CheckpointSizeMismatch {
                    row_size,
                    note_size: cp.size,
                });
            }
            Ok(cp) => cps.push(Cp {
                at: CheckpointRef {
                    size: cp.size,
                    external,
                },
                root: cp.root,
                matched: None,
            }),
            Err(crate::CheckpointError::KeyChanged { trusted, found }) => {
                problems.push(Problem::CheckpointKeyChanged {
                    checkpoint: at,
                    trusted,
                    found,
                });
            }
            Err(crate::CheckpointError::Note(e)) => {
                use crate::note::NoteError;
                let reason = e.to_string();
                match e {
                    NoteError::InvalidSignature { .. } | NoteError::NoKnownSignature => problems
                        .push(Problem::CheckpointSignature {
                            checkpoint: at,
                            reason,
                        }),
                    _ => problems.push(Problem::CheckpointUnreadable {
                        checkpoint: at,
                        reason,
                    }),
                }
            }
            Err(e) => problems.push(Problem::CheckpointUnreadable {
                checkpoint: at,
                reason: e.to_string(),
            }),
        }
    }
    cps.sort_by_key(|c| (c.at.size, c.at.external));

    let mut checker = Checker {
        frontier: Frontier::new(),
        expected: 0,
        cps,
        next_cp: 0,
        problems,
        omitted: 0,
        node_mismatch_seen: false,
        stopped: false,
        buf: Vec::with_capacity(64 * 32),
        lowest: store.lowest_stored_level(),
        level4: Vec::with_capacity(GROUP_HASHES),
    };
    checker.check_checkpoints();

    // The size is read after the checkpoints: every checkpoint read covers
    // leaves below it, even while an appender keeps writing.
    let size = store.size().await?;
    let page_size = options.page_size.max(1) as u64;
    let pages = size.div_ceil(page_size);
    // Pages are index ranges, independent of each other: a few are read
    // ahead, concurrently, while the current one is hashed.
    // The query tables' check reads its own snapshot, independent of the
    // pages: it runs beside them on another core, and is reported below
    // only if the leaves turn out intact.
    let mut index_check = AbortOnDrop(Some({
        let store = store.clone();
        tokio::spawn(async move { store.index_problems().await })
    }));
    let mut inflight = VecDeque::new();
    let mut next_page = 0u64;
    let mut read: u64 = 0;
    loop {
        while inflight.len() < READ_AHEAD && next_page < pages {
            let reader = store.clone();
            let from = next_page * page_size;
            let len = page_size.min(size - from) as usize;
            inflight.push_back(tokio::spawn(async move { reader.leaves(from, len).await }));
            next_page += 1;
        }
        let Some(task) = inflight.pop_front() else {
            break;
        };
        let rows = task.await.map_err(|e| StoreError::Task(e.to_string()))??;
        read += rows.len() as u64;
        checker = tokio::task::spawn_blocking(move || {
            checker.process(rows);
            checker
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        if checker.stopped {
            break;
        }
    }
    for task in inflight {
        task.abort();
    }
    // Only once the leaves are known good does comparing what queries read
    // with them mean anything; a problem here hides leaves from queries
    // (or shows invented ones) but leaves the log itself intact.
    if let (false, Some(task)) = (checker.stopped, index_check.0.take()) {
        let problems = task.await.map_err(|e| StoreError::Task(e.to_string()))??;
        for p in problems {
            checker.problem(Problem::IndexMismatch {
                segment: p.segment,
                table: p.table,
            });
        }
    }

    finish(checker, store.location(), read, total_checkpoints)
}

/// A task whose result is dropped if no longer wanted (verification
/// stopped early or failed). Aborting ends the task; a store read already
/// running on a blocking thread finishes there and is discarded.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The size line of a checkpoint note, without checking anything.
fn size_in_note(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

fn finish(
    mut c: Checker,
    location: String,
    read: u64,
    total_checkpoints: usize,
) -> Result<VerifyReport, LedgerError> {
    let leaves = c.expected;
    // Checkpoints never reached: beyond the end (truncated), or after a gap
    // (unchecked).
    let unreached: Vec<CheckpointRef> = c.cps[c.next_cp..].iter().map(|cp| cp.at).collect();
    if let Some(first) = unreached.first()
        && !c.stopped
    {
        c.problem(Problem::Truncated {
            leaves,
            checkpoint: *first,
        });
    }
    let matched: Vec<u64> = c
        .cps
        .iter()
        .filter(|cp| cp.matched == Some(true))
        .map(|cp| cp.at.size)
        .collect();
    let mismatched: Vec<CheckpointRef> = c
        .cps
        .iter()
        .filter(|cp| cp.matched == Some(false))
        .map(|cp| cp.at)
        .collect();
    for cp in mismatched {
        let last_good = matched
            .iter()
            .copied()
            .filter(|s| *s < cp.size)
            .max()
            .unwrap_or(0);
        let later = c
            .cps
            .iter()
            .find(|x| x.matched == Some(true) && x.at.size > cp.size)
            .map(|x| x.at);
        c.problem(match later {
            Some(later) => Problem::CheckpointInconsistent {
                earlier: cp,
                later,
                last_good,
            },
            None => Problem::CheckpointRootMismatch {
                checkpoint: cp,
                last_good,
            },
        });
    }

    if c.problems.is_empty() {
        return Ok(VerifyReport {
            leaves,
            checkpoints: matched.len(),
            latest_checkpoint: c.cps.last().map(|cp| cp.at.size),
            root: if leaves == 0 {
                EMPTY_ROOT
            } else {
                c.frontier.root()
            },
        });
    }
    // Without a problem naming a leaf (a store that keeps no hash below the
    // tile level names none inside a tile), the first leaf in doubt is the
    // one after the last checkpoint that matched.
    let first_bad_leaf = c
        .problems
        .iter()
        .filter_map(Problem::first_leaf)
        .min()
        .or_else(|| {
            c.problems
                .iter()
                .filter_map(|p| match p {
                    Problem::CheckpointRootMismatch { last_good, .. } => Some(*last_good),
                    _ => None,
                })
                .min()
        });
    let first_unchecked = if c.stopped {
        unreached.first().map(|cp| cp.size)
    } else {
        None
    };
    let first_bad_checkpoint = c
        .problems
        .iter()
        .filter_map(Problem::checkpoint)
        .chain(first_unchecked)
        .min();
    Err(LedgerError::Tampered(Box::new(VerifyFailure {
        location,
        leaves_read: read,
        checkpoints: total_checkpoints,
        first_bad_leaf,
        first_bad_checkpoint,
        problems: c.problems,
        omitted: c.omitted,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_well() {
        let p = Problem::MissingLeaves { from: 4, to: 5 };
        assert_eq!(
            p.to_string(),
            "leaf 4 is missing (deleted): the log goes from leaf 3 to leaf 5"
        );
        let p = Problem::NodeMismatch {
            index: 3,
            level: 1,
            first_leaf: 2,
        };
        assert!(p.to_string().contains("leaves 2 to 3"), "{p}");
        assert_eq!(p.first_leaf(), Some(2));
        let cp = CheckpointRef {
            size: 16,
            external: false,
        };
        let p = Problem::Truncated {
            leaves: 12,
            checkpoint: cp,
        };
        assert!(p.to_string().contains("truncated"), "{p}");
        assert_eq!(p.checkpoint(), Some(16));
    }

    #[test]
    fn first_difference_levels() {
        let a: Vec<u8> = [[1u8; 32], [2; 32], [3; 32]].concat();
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b[..64]), 0);
        b[40] ^= 1;
        assert_eq!(first_difference(&a, &b), 1);
    }
}
