//! Roots and proofs from a store, using stored subtree hashes only: one
//! batched lookup of O(log n) hashes, never a walk over the leaves.

use crate::LedgerError;
use crate::merkle::{
    ConsistencyProof, EMPTY_ROOT, Hash, InclusionProof, NodeId, ProofError, ProofPlan,
    consistency_plan, inclusion_plan, root_plan,
};
use crate::store::{LedgerStore, StoreError};

/// Fetches the hashes a plan needs in one store call and assembles it.
async fn fetch(
    store: &dyn LedgerStore,
    plan: &ProofPlan,
    size: u64,
) -> Result<Vec<Hash>, LedgerError> {
    let ids = plan.node_ids();
    let hashes = match store.nodes(&ids).await {
        Ok(h) => h,
        Err(e @ StoreError::MissingNode { .. }) => {
            // Say "beyond the log" rather than "damaged" when that is why.
            let leaves = store.size().await?;
            if size > leaves {
                return Err(ProofError::BeyondLog { size, leaves }.into());
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // `ids` is sorted: look hashes up by binary search.
    plan.assemble(|id: NodeId| {
        ids.binary_search(&id)
            .ok()
            .and_then(|i| hashes.get(i).copied())
            .ok_or_else(|| {
                LedgerError::Store(StoreError::Corrupt(
                    "the store returned fewer hashes than asked".into(),
                ))
            })
    })
}

/// Root of the tree of the first `size` leaves.
pub async fn root(store: &dyn LedgerStore, size: u64) -> Result<Hash, LedgerError> {
    let plan = root_plan(size)?;
    Ok(fetch(store, &plan, size)
        .await?
        .first()
        .copied()
        .unwrap_or(EMPTY_ROOT))
}

/// Inclusion proof of leaf `index` in the tree of `size` leaves.
pub async fn prove_inclusion(
    store: &dyn LedgerStore,
    index: u64,
    size: u64,
) -> Result<InclusionProof, LedgerError> {
    let plan = inclusion_plan(index, size)?;
    Ok(InclusionProof {
        index,
        size,
        hashes: fetch(store, &plan, size).await?,
    })
}

/// Consistency proof from the tree of `old` leaves to the tree of `new`.
pub async fn prove_consistency(
    store: &dyn LedgerStore,
    old: u64,
    new: u64,
) -> Result<ConsistencyProof, LedgerError> {
    let plan = consistency_plan(old, new)?;
    Ok(ConsistencyProof {
        old_size: old,
        new_size: new,
        hashes: fetch(store, &plan, new).await?,
    })
}
