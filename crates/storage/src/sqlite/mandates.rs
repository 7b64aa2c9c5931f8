//! Mandates: imports, reads by person or id, grants, break-glass,
//! revocation and caseloads.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{AccountId, MandateId, OrganisationId, PersonId, Purpose, Reference};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::values::{day, instant_text, optional_instant, parse_instant, text};
use crate::memory::{Named, Names};
use crate::rules::{
    check_mandate_account, check_mandate_person, mandate_row_links, reference_taken,
};
use crate::{
    CaseloadEntry, ImportMark, MANDATE_COLUMNS, MandateRow, NewBreakGlassReason, NewMandate,
    RowRefusal, StorageError, StoredBreakGlassReason, StoredMandate, UpsertCount, caseload_page,
    check_mandate_period, parse_code,
};

// Compares with `+?1`: see "Hot lookups" in the backend's root.
/// Every mandate on one person, from the covering index `mandate_person`
/// alone (one seek, no row fetched). In index order: `mandates_rows` sorts
/// the few rows by id itself, which spares SQLite a temporary B-tree per
/// call.
pub(super) static MANDATES_OF_PERSON_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE person_id = +?1"));

/// Every mandate on one person, live or not.
pub(super) fn mandates_rows(
    c: &Connection,
    names: &Names,
    person_id: PersonId,
) -> Result<Vec<StoredMandate>, StorageError> {
    let mut rows: Vec<StoredMandate> = c
        .prepare_cached(&MANDATES_OF_PERSON_SQL)?
        .query_and_then([person_id.get()], |r| stored_mandate(c, names, r))?
        .collect::<Result<_, StorageError>>()?;
    rows.sort_unstable_by_key(|m| m.id);
    Ok(rows)
}

/// An organisation's code or an account's login, from [`Names`] or else
/// from its row (which the foreign key says exists).
pub(super) fn name(
    c: &Connection,
    names: &Names,
    kind: Named,
    id: i64,
) -> Result<Reference, StorageError> {
    if let Some(known) = names.get(kind, id) {
        return Ok(known);
    }
    let sql = match kind {
        Named::Organisation => "SELECT code FROM organisation WHERE id = ?1",
        Named::Account => "SELECT login FROM account WHERE id = ?1",
    };
    let found: Option<String> = c
        .prepare_cached(sql)?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(found) = found else {
        return Err(StorageError::Corrupt(format!(
            "a mandate names {kind:?} {id}, which does not exist"
        )));
    };
    let found = parse_code(found, Reference::parse)?;
    names.put(kind, id, &found);
    Ok(found)
}

/// Reads a row of [`MANDATE_COLUMNS`], with the names from [`Names`].
pub(super) fn stored_mandate(
    c: &Connection,
    names: &Names,
    r: &Row<'_>,
) -> Result<StoredMandate, StorageError> {
    let organisation_id = OrganisationId::new(r.get(2)?);
    let account_id: Option<AccountId> = r.get::<_, Option<i64>>(3)?.map(AccountId::new);
    Ok(StoredMandate {
        id: MandateId::new(r.get(0)?),
        reference: parse_code(r.get(1)?, Reference::parse)?,
        organisation: name(c, names, Named::Organisation, organisation_id.get())?,
        organisation_id,
        account: account_id
            .map(|a| name(c, names, Named::Account, a.get()))
            .transpose()?,
        account_id,
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
        revoked_at: optional_instant(r.get(9)?, "revoked_at")?,
    })
}

/// One mandate by id.
pub(super) static MANDATE_BY_ID_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE id = ?1"));

/// The checks and the insertion of [`RegistryStore::grant_mandate`], in
/// the caller's transaction. With `dek_version` (break-glass), the person
/// must still hold a data key of that version.
pub(super) fn insert_mandate(
    tx: &rusqlite::Transaction<'_>,
    names: &Names,
    m: &NewMandate,
    dek_version: Option<u32>,
) -> Result<StoredMandate, StorageError> {
    let known = tx
        .prepare_cached("SELECT 1 FROM organisation WHERE id = ?1")?
        .query_row([m.organisation_id.get()], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Err(crate::auth::checks::not_found(
            "organisation_id",
            "organisation",
        ));
    }
    if let Some(account_id) = m.account_id {
        let org = tx
            .prepare_cached("SELECT organisation_id FROM account WHERE id = ?1")?
            .query_row([account_id.get()], |r| r.get::<_, i64>(0))
            .optional()?
            .map(OrganisationId::new);
        check_mandate_account(org, m)?;
    }
    let person: Option<u32> = tx
        .prepare_cached("SELECT dek_version FROM person WHERE id = ?1 AND wrapped_dek IS NOT NULL")?
        .query_row([m.person_id.get()], |r| r.get(0))
        .optional()?;
    check_mandate_person(person, dek_version, m.person_id)?;
    let taken = tx
        .prepare_cached("SELECT 1 FROM mandate WHERE reference = ?1")?
        .query_row([m.reference.as_str()], |_| Ok(()))
        .optional()?;
    if taken.is_some() {
        return Err(reference_taken());
    }
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO mandate (reference, organisation_id, account_id, person_id,
                 purpose, valid_from, valid_to, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
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
                m.source.as_str()
            ],
            |r| r.get(0),
        )?;
    let stored = mandate_by_id(tx, names, id)?.ok_or_else(|| {
        StorageError::Corrupt(format!("mandate {id} vanished after its insertion"))
    })?;
    Ok(stored)
}

pub(super) fn mandate_by_id(
    c: &Connection,
    names: &Names,
    id: i64,
) -> Result<Option<StoredMandate>, StorageError> {
    c.prepare_cached(&MANDATE_BY_ID_SQL)?
        .query_and_then([id], |r| stored_mandate(c, names, r))?
        .next()
        .transpose()
}

/// The caseload: mandates held by the organisation as a whole, merged
/// with those naming the account, each part in person order from its own
/// index (`mandate_org_wide`, `mandate_account_person`), so a page costs
/// what it returns whatever the size of the organisation. Without
/// statistics SQLite would take `mandate_org` for both parts (same cost
/// to its eyes): the indexes are named.
pub(super) const CASELOAD: &str = "
    SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m INDEXED BY mandate_org_wide
    JOIN person p ON p.id = m.person_id
    WHERE m.organisation_id = ?1 AND m.account_id IS NULL AND m.person_id > ?3
      AND m.revoked_at IS NULL AND m.valid_from <= ?4
      AND (m.valid_to IS NULL OR m.valid_to > ?4)
      AND (?5 IS NULL OR m.purpose = ?5) AND p.wrapped_dek IS NOT NULL
    UNION ALL
    SELECT m.person_id, m.purpose, m.id, m.valid_to
    FROM mandate m INDEXED BY mandate_account_person
    JOIN person p ON p.id = m.person_id
    WHERE m.account_id = ?2 AND m.organisation_id = ?1 AND m.person_id > ?3
      AND m.revoked_at IS NULL AND m.valid_from <= ?4
      AND (m.valid_to IS NULL OR m.valid_to > ?4)
      AND (?5 IS NULL OR m.purpose = ?5) AND p.wrapped_dek IS NOT NULL
    ORDER BY 1, 3 LIMIT ?6";

pub(super) async fn upsert_mandates(
    store: &SqliteStore,
    mandates: Vec<MandateRow>,
    mark: Option<ImportMark>,
) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
    store.write(move |c| {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut count = UpsertCount::default();
        let mut refused = Vec::new();
        {
            // A batch names few organisations and accounts, many times each.
            let mut orgs: HashMap<String, Option<OrganisationId>> = HashMap::new();
            let mut accounts: HashMap<String, Option<(AccountId, OrganisationId)>> =
                HashMap::new();
            let mut org = tx.prepare_cached("SELECT id FROM organisation WHERE code = ?1")?;
            let mut acc =
                tx.prepare_cached("SELECT id, organisation_id FROM account WHERE login = ?1")?;
            let mut person = tx.prepare_cached(
                "SELECT 1 FROM person WHERE id = ?1 AND wrapped_dek IS NOT NULL",
            )?;
            let mut get = tx.prepare_cached(
                "SELECT organisation_id, account_id, person_id, purpose, valid_from, valid_to, source
                 FROM mandate WHERE reference = ?1",
            )?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                     valid_from, valid_to, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut upd = tx.prepare_cached(
                "UPDATE mandate SET organisation_id = ?2, account_id = ?3, person_id = ?4,
                     purpose = ?5, valid_from = ?6, valid_to = ?7, source = ?8
                 WHERE reference = ?1",
            )?;
            for (index, m) in mandates.iter().enumerate() {
                let links = mandate_row_links(
                    index,
                    m,
                    |code| {
                        if let Some(known) = orgs.get(code) {
                            return Ok(*known);
                        }
                        let found = org
                            .query_row([code], |r| r.get::<_, i64>(0).map(OrganisationId::new))
                            .optional()?;
                        orgs.insert(code.to_string(), found);
                        Ok(found)
                    },
                    |login| {
                        if let Some(known) = accounts.get(login) {
                            return Ok(*known);
                        }
                        let found = acc
                            .query_row([login], |r| {
                                Ok((
                                    AccountId::new(r.get(0)?),
                                    OrganisationId::new(r.get(1)?),
                                ))
                            })
                            .optional()?;
                        accounts.insert(login.to_string(), found);
                        Ok(found)
                    },
                    |id| Ok(person.query_row([id.get()], |_| Ok(())).optional()?.is_some()),
                )?;
                let (org_id, account_id) = match links {
                    Ok(links) => links,
                    Err(refusal) => {
                        refused.push(refusal);
                        continue;
                    }
                };
                let new = (
                    org_id.get(),
                    account_id.map(AccountId::get),
                    m.person_id.get(),
                    m.purpose.as_str().to_string(),
                    m.valid_from,
                    m.valid_to,
                    m.source.as_str().to_string(),
                );
                type Fields = (i64, Option<i64>, i64, String, NaiveDate, Option<NaiveDate>, String);
                let current: Option<Fields> =
                    get.query_row([m.reference.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })
                    .optional()?;
                let p = params![
                    m.reference.as_str(),
                    new.0,
                    new.1,
                    new.2,
                    new.3,
                    new.4,
                    new.5,
                    new.6
                ];
                match current {
                    None => {
                        ins.execute(p)?;
                        count.inserted += 1;
                    }
                    Some(cur) if cur == new => count.unchanged += 1,
                    Some(_) => {
                        upd.execute(p)?;
                        count.updated += 1;
                    }
                }
            }
        }
        if let Some(mark) = &mark {
            super::import::advance(&tx, mark, count, refused.len() as u64)?;
        }
        tx.commit()?;
        Ok((count, refused))
    })
    .await
}

pub(super) async fn mandates_of_person(
    store: &SqliteStore,
    person_id: PersonId,
) -> Result<Vec<StoredMandate>, StorageError> {
    let inner = store.inner.clone();
    store
        .read_point(move |c| mandates_rows(c, &inner.names, person_id))
        .await
}

pub(super) async fn grant_mandate(
    store: &SqliteStore,
    m: NewMandate,
) -> Result<StoredMandate, StorageError> {
    check_mandate_period(&m)?;
    let inner = store.inner.clone();
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = insert_mandate(&tx, &inner.names, &m, None)?;
            tx.commit()?;
            Ok(stored)
        })
        .await
}

pub(super) async fn rehearse_grant(
    store: &SqliteStore,
    m: &NewMandate,
) -> Result<(), StorageError> {
    check_mandate_period(m)?;
    let inner = store.inner.clone();
    let m = m.clone();
    store
        .write(move |c| {
            // Dropped, not committed: rolled back.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_mandate(&tx, &inner.names, &m, None)?;
            Ok(())
        })
        .await
}

pub(super) async fn grant_break_glass(
    store: &SqliteStore,
    m: NewMandate,
    reason: NewBreakGlassReason,
) -> Result<StoredMandate, StorageError> {
    check_mandate_period(&m)?;
    let created_at = instant_text(reason.created_at, "created_at")?;
    let inner = store.inner.clone();
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = insert_mandate(&tx, &inner.names, &m, Some(reason.dek_version))?;
            tx.prepare_cached(
                "INSERT INTO break_glass_reason
                     (mandate_id, person_id, account_id, created_at, dek_version, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                stored.id.get(),
                m.person_id.get(),
                reason.account_id.get(),
                created_at,
                reason.dek_version,
                reason.sealed
            ])?;
            tx.commit()?;
            Ok(stored)
        })
        .await
}

pub(super) async fn break_glass_reasons(
    store: &SqliteStore,
    person_id: PersonId,
) -> Result<Vec<StoredBreakGlassReason>, StorageError> {
    store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, mandate_id, person_id, account_id, created_at, dek_version, sealed
                 FROM break_glass_reason WHERE person_id = ?1 ORDER BY id",
            )?;
            let rows = stmt
                .query_and_then([person_id.get()], |r| {
                    Ok::<_, StorageError>(StoredBreakGlassReason {
                        id: r.get(0)?,
                        mandate_id: MandateId::new(r.get(1)?),
                        person_id: PersonId::new(r.get(2)?),
                        account_id: AccountId::new(r.get(3)?),
                        created_at: parse_instant(&r.get::<_, String>(4)?, "created_at")?,
                        dek_version: r.get(5)?,
                        sealed: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
}

pub(super) async fn revoke_mandate(
    store: &SqliteStore,
    id: MandateId,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE mandate SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![id.get(), at])?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn mandate(
    store: &SqliteStore,
    id: MandateId,
) -> Result<Option<StoredMandate>, StorageError> {
    let inner = store.inner.clone();
    store
        .read(move |c| mandate_by_id(c, &inner.names, id.get()))
        .await
}

pub(super) async fn caseload(
    store: &SqliteStore,
    organisation_id: OrganisationId,
    account_id: AccountId,
    purpose: Option<Purpose>,
    on: NaiveDate,
    after: PersonId,
    limit: u32,
) -> Result<Vec<CaseloadEntry>, StorageError> {
    store
        .read(move |c| {
            // One row more than asked, to see whether the page splits a person.
            let rows = c
                .prepare_cached(CASELOAD)?
                .query_and_then(
                    params![
                        organisation_id.get(),
                        account_id.get(),
                        after.get(),
                        on,
                        purpose.map(Purpose::as_str),
                        i64::from(limit) + 1
                    ],
                    |r| {
                        Ok::<_, StorageError>(CaseloadEntry {
                            person_id: PersonId::new(r.get(0)?),
                            purpose: parse_code(r.get(1)?, Purpose::parse)?,
                            mandate_id: MandateId::new(r.get(2)?),
                            valid_to: r.get(3)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(caseload_page(rows, limit))
        })
        .await
}
