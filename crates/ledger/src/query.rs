//! Searching the ledger: a subject's leaves in a time window, page by page,
//! and breach scoping ("every person whose data account A was shown between
//! T1 and T2").

use crate::leaf::{AccountId, AuditLeaf, PersonId, Timestamp};
use crate::store::{LedgerStore, QueryRange};
use crate::{LeafIndex, LedgerError};

/// A leaf and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its index in the log.
    pub index: LeafIndex,
    /// The decoded leaf.
    pub leaf: AuditLeaf,
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Leaves by (time, index).
    pub entries: Vec<LedgerEntry>,
    /// Where the next page starts (`QueryRange::after`), if there may be one.
    pub next: Option<(Timestamp, LeafIndex)>,
}

/// One page of the leaves of `range.subject` in `[range.from, range.to)`.
pub async fn query(store: &dyn LedgerStore, range: &QueryRange) -> Result<Page, LedgerError> {
    let raw = store.query(range).await?;
    let full = raw.len() == range.limit as usize && range.limit > 0;
    let entries = raw
        .into_iter()
        .map(|r| {
            AuditLeaf::decode(&r.data)
                .map(|leaf| LedgerEntry {
                    index: r.index,
                    leaf,
                })
                .map_err(|reason| LedgerError::CorruptLeaf {
                    index: r.index,
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next = if full {
        entries.last().map(|e| (e.leaf.time, e.index))
    } else {
        None
    };
    Ok(Page { entries, next })
}

/// Distinct persons whose data `account` was shown (allowed, with field
/// groups) in `[from, to)`, ascending. Answered from an index alone.
pub async fn persons_read_by_account(
    store: &dyn LedgerStore,
    account: AccountId,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<PersonId>, LedgerError> {
    Ok(store.persons_revealed_to(account, from, to).await?)
}
