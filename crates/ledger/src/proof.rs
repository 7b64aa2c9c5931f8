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
    Ok(fetch_all(store, std::slice::from_ref(plan), size)
        .await?
        .pop()
        .unwrap_or_default())
}

/// Fetches the hashes several plans need, together, in one store call,
/// and assembles each.
async fn fetch_all(
    store: &dyn LedgerStore,
    plans: &[ProofPlan],
    size: u64,
) -> Result<Vec<Vec<Hash>>, LedgerError> {
    let ids: Vec<NodeId> = plans
        .iter()
        .flat_map(ProofPlan::node_ids)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return plans.iter().map(|p| assemble(p, &ids, &[])).collect();
    }
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
    plans.iter().map(|p| assemble(p, &ids, &hashes)).collect()
}

/// A plan's hashes from those fetched for `ids` (sorted: looked up by
/// binary search).
fn assemble(plan: &ProofPlan, ids: &[NodeId], hashes: &[Hash]) -> Result<Vec<Hash>, LedgerError> {
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

/// Inclusion proofs of several leaves in the tree of `size`, from one
/// lookup of the stored hashes they need together (what a page of a
/// person's history needs).
pub async fn prove_inclusions(
    store: &dyn LedgerStore,
    indexes: &[u64],
    size: u64,
) -> Result<Vec<InclusionProof>, LedgerError> {
    let plans = indexes
        .iter()
        .map(|i| inclusion_plan(*i, size))
        .collect::<Result<Vec<_>, _>>()?;
    let hashes = fetch_all(store, &plans, size).await?;
    Ok(indexes
        .iter()
        .zip(hashes)
        .map(|(index, hashes)| InclusionProof {
            index: *index,
            size,
            hashes,
        })
        .collect())
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
