//! Grant requests: grants to the requesting officer's own organisation,
//! decided by an officer of another (four eyes).

use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId, PersonId, Purpose, Reference};
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::decider;
use super::mandates::insert_mandate;
use crate::memory::Names;
use crate::{NewMandate, StorageError, check_mandate_period, parse_code};

/// The columns of a grant request, in [`grant_request_row`]'s order.
pub(super) const GRANT_REQUEST_SELECT: &str =
    "SELECT id, reference, organisation_id, account_id, person_id,
         purpose, valid_from, valid_to, source, requested_by, requested_at FROM mandate_request";

pub(super) fn grant_request_row(r: &Row) -> Result<crate::GrantRequest, StorageError> {
    Ok(crate::GrantRequest {
        id: r.try_get(0)?,
        mandate: NewMandate {
            reference: parse_code(r.try_get(1)?, Reference::parse)?,
            organisation_id: OrganisationId::new(r.try_get(2)?),
            account_id: r.try_get::<_, Option<i64>>(3)?.map(AccountId::new),
            person_id: PersonId::new(r.try_get(4)?),
            purpose: parse_code(r.try_get(5)?, Purpose::parse)?,
            valid_from: r.try_get(6)?,
            valid_to: r.try_get(7)?,
            source: parse_code(r.try_get(8)?, Reference::parse)?,
        },
        requested_by: AccountId::new(r.try_get(9)?),
        requested_at: r.try_get(10)?,
    })
}

/// [`RegistryStore::decide_grant`] in `tx`, which the caller commits (or
/// rolls back, to rehearse).
pub(super) async fn decide_grant_in(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &Names,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<crate::GrantDecision>, StorageError> {
    // Locked: a concurrent decision waits, then finds it decided.
    let request = tx
        .query_opt(
            &format!("{GRANT_REQUEST_SELECT} WHERE id = $1 AND decided_at IS NULL FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|r| grant_request_row(&r))
        .transpose()?;
    let Some(request) = request else {
        return Ok(None);
    };
    crate::check_grant_decider(
        decider(&**tx, request.requested_by).await?.as_ref(),
        decider(&**tx, officer_id).await?.as_ref(),
    )?;
    let n = tx
        .execute(
            "UPDATE mandate_request SET decided_by = $2, decided_at = $3, approved = $4
             WHERE id = $1 AND decided_at IS NULL",
            &[&id, &officer_id.get(), &at, &approve],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    if !approve {
        return Ok(Some(crate::GrantDecision::Rejected));
    }
    check_mandate_period(&request.mandate)?;
    let stored = insert_mandate(tx, names, &request.mandate, None).await?;
    tx.execute(
        "UPDATE mandate_request SET mandate_id = $2 WHERE id = $1",
        &[&id, &stored.id.get()],
    )
    .await?;
    Ok(Some(crate::GrantDecision::Granted(stored)))
}

pub(super) async fn request_grant(
    store: &PgStore,
    m: NewMandate,
    requested_by: AccountId,
    at: DateTime<Utc>,
) -> Result<crate::GrantRequest, StorageError> {
    check_mandate_period(&m)?;
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let id: i64 = client
        .query_one(
            "INSERT INTO mandate_request (reference, organisation_id, account_id,
                 person_id, purpose, valid_from, valid_to, source, requested_by,
                 requested_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &m.reference.as_str(),
                &m.organisation_id.get(),
                &m.account_id.map(AccountId::get),
                &m.person_id.get(),
                &m.purpose.as_str(),
                &m.valid_from,
                &m.valid_to,
                &m.source.as_str(),
                &requested_by.get(),
                &at,
            ],
        )
        .await?
        .try_get(0)?;
    Ok(crate::GrantRequest {
        id,
        mandate: m,
        requested_by,
        requested_at: at,
    })
}

pub(super) async fn decide_grant(
    store: &PgStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<crate::GrantDecision>, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let decided = decide_grant_in(&tx, &store.names, id, officer_id, approve, at).await?;
    tx.commit().await?;
    Ok(decided)
}

pub(super) async fn rehearse_grant_decision(
    store: &PgStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let rehearsed = decide_grant_in(&tx, &store.names, id, officer_id, approve, at).await;
    tx.rollback().await?;
    Ok(rehearsed?.is_some())
}

pub(super) async fn pending_grants(
    store: &PgStore,
) -> Result<Vec<crate::GrantRequest>, StorageError> {
    let client = store.client().await?;
    client
        .query(
            &format!("{GRANT_REQUEST_SELECT} WHERE decided_at IS NULL ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(grant_request_row)
        .collect()
}
