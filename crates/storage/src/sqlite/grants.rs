//! Grant requests: grants to the requesting officer's own organisation,
//! decided by an officer of another (four eyes).

use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId, PersonId, Purpose, Reference};
use rusqlite::{Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::decider;
use super::mandates::insert_mandate;
use super::values::{day, instant_text, parse_instant, text};
use crate::memory::Names;
use crate::{
    GrantDecision, GrantRequest, NewMandate, StorageError, check_grant_decider,
    check_mandate_period, parse_code,
};

/// The columns of a grant request, in [`grant_request_row`]'s order.
pub(super) const GRANT_REQUEST_SELECT: &str =
    "SELECT id, reference, organisation_id, account_id, person_id,
         purpose, valid_from, valid_to, source, requested_by, requested_at FROM mandate_request";

pub(super) fn grant_request_row(r: &Row<'_>) -> Result<GrantRequest, StorageError> {
    Ok(GrantRequest {
        id: r.get(0)?,
        mandate: NewMandate {
            reference: parse_code(r.get(1)?, Reference::parse)?,
            organisation_id: OrganisationId::new(r.get(2)?),
            account_id: r.get::<_, Option<i64>>(3)?.map(AccountId::new),
            person_id: PersonId::new(r.get(4)?),
            purpose: parse_code(r.get(5)?, Purpose::parse)?,
            valid_from: match text(r, 6, "valid_from")? {
                Some(s) => day(s, "valid_from")?,
                None => return Err(StorageError::Corrupt("stored valid_from is NULL".into())),
            },
            valid_to: text(r, 7, "valid_to")?
                .map(|s| day(s, "valid_to"))
                .transpose()?,
            source: parse_code(r.get(8)?, Reference::parse)?,
        },
        requested_by: AccountId::new(r.get(9)?),
        requested_at: parse_instant(&r.get::<_, String>(10)?, "requested_at")?,
    })
}

/// [`RegistryStore::decide_grant`] in `tx`, which the caller commits (or
/// drops, to rehearse).
pub(super) fn decide_grant_in(
    tx: &rusqlite::Transaction<'_>,
    names: &Names,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: &str,
) -> Result<Option<GrantDecision>, StorageError> {
    let request = tx
        .prepare_cached(&format!(
            "{GRANT_REQUEST_SELECT} WHERE id = ?1 AND decided_at IS NULL"
        ))?
        .query_and_then([id], grant_request_row)?
        .next()
        .transpose()?;
    let Some(request) = request else {
        return Ok(None);
    };
    check_grant_decider(
        decider(tx, request.requested_by)?.as_ref(),
        decider(tx, officer_id)?.as_ref(),
    )?;
    let n = tx
        .prepare_cached(
            "UPDATE mandate_request SET decided_by = ?2, decided_at = ?3, approved = ?4
             WHERE id = ?1 AND decided_at IS NULL",
        )?
        .execute(params![id, officer_id.get(), at, approve])?;
    if n != 1 {
        return Ok(None);
    }
    if !approve {
        return Ok(Some(GrantDecision::Rejected));
    }
    check_mandate_period(&request.mandate)?;
    let stored = insert_mandate(tx, names, &request.mandate, None)?;
    tx.prepare_cached("UPDATE mandate_request SET mandate_id = ?2 WHERE id = ?1")?
        .execute([id, stored.id.get()])?;
    Ok(Some(GrantDecision::Granted(stored)))
}

pub(super) async fn request_grant(
    store: &SqliteStore,
    m: NewMandate,
    requested_by: AccountId,
    at: DateTime<Utc>,
) -> Result<GrantRequest, StorageError> {
    check_mandate_period(&m)?;
    let at_text = instant_text(at, "at")?;
    store
        .write(move |c| {
            let id: i64 = c
                .prepare_cached(
                    "INSERT INTO mandate_request (reference, organisation_id, account_id,
                         person_id, purpose, valid_from, valid_to, source, requested_by,
                         requested_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                )?
                .query_row(
                    params![
                        m.reference.as_str(),
                        m.organisation_id.get(),
                        m.account_id.map(AccountId::get),
                        m.person_id.get(),
                        m.purpose.as_str(),
                        m.valid_from,
                        m.valid_to,
                        m.source.as_str(),
                        requested_by.get(),
                        at_text
                    ],
                    |r| r.get(0),
                )?;
            Ok(GrantRequest {
                id,
                mandate: m,
                requested_by,
                requested_at: at,
            })
        })
        .await
}

pub(super) async fn decide_grant(
    store: &SqliteStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<GrantDecision>, StorageError> {
    let at = instant_text(at, "at")?;
    let inner = store.inner.clone();
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let decided = decide_grant_in(&tx, &inner.names, id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(decided)
        })
        .await
}

pub(super) async fn rehearse_grant_decision(
    store: &SqliteStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let at = instant_text(at, "at")?;
    let inner = store.inner.clone();
    store
        .write(move |c| {
            // Dropped, not committed: rolled back.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            Ok(decide_grant_in(&tx, &inner.names, id, officer_id, approve, &at)?.is_some())
        })
        .await
}

pub(super) async fn pending_grants(store: &SqliteStore) -> Result<Vec<GrantRequest>, StorageError> {
    store
        .read(|c| {
            c.prepare_cached(&format!(
                "{GRANT_REQUEST_SELECT} WHERE decided_at IS NULL ORDER BY id"
            ))?
            .query_and_then([], grant_request_row)?
            .collect()
        })
        .await
}
