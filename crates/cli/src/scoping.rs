//! What the incident commands share: an open incident of the register,
//! and its scope bound to a signed checkpoint of the ledger (used by
//! `incident scope`, and by `report` and `notify`).

use anyhow::{Context, Result, bail};
use rempart_breach::Scope;
use rempart_domain::incident::{Incident, IncidentId};
use rempart_storage::Stores;

use crate::location::Location;

/// An open incident of the register: unknown and closed ones are refused
/// (a closed incident's scope and notices were fixed while it was open).
pub(crate) async fn open_incident(stores: &Stores, id: IncidentId) -> Result<Incident> {
    let incident = stores
        .incidents
        .incident(id)
        .await?
        .with_context(|| format!("incident {id}: no such incident"))?;
    if incident.is_closed() {
        bail!("incident {id} is closed: its scope was fixed when it was open");
    }
    Ok(incident)
}

/// An incident's scope bound to a signed checkpoint.
pub(crate) struct BoundScope {
    pub scope: Scope,
    /// The checkpoint, as a signed note.
    pub checkpoint: String,
    /// Leaves appended after it, not covered.
    pub later: u64,
    /// How long the scoping took.
    pub seconds: f64,
}

pub(crate) async fn bound_scope(location: &Location, incident: &Incident) -> Result<BoundScope> {
    let store = location.open_ledger_store().await?;
    let (size, checkpoint) = crate::audit::evidence(location, store.as_ref()).await?;
    let started = std::time::Instant::now();
    let scope =
        rempart_breach::scope_at(store.as_ref(), &incident.compromised, incident.window, size)
            .await?;
    let seconds = started.elapsed().as_secs_f64();
    let later = store.size().await?.saturating_sub(size);
    Ok(BoundScope {
        scope,
        checkpoint,
        later,
        seconds,
    })
}
