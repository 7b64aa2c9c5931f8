//! Mandates: imports, reads by person or id, grants, break-glass,
//! revocation and caseloads.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{AccountId, MandateId, OrganisationId, PersonId, Purpose, Reference};
use tokio_postgres::Row;

use super::PgStore;
use super::values::{is_unique_violation, to_i32, to_u32};
use crate::memory::{Named, Names};
use crate::rules::{
    check_mandate_account, check_mandate_person, mandate_row_links, reference_taken,
};
use crate::{
    CaseloadEntry, ImportMark, MANDATE_COLUMNS, MandateRow, NewBreakGlassReason, NewMandate,
    RowRefusal, StorageError, StoredBreakGlassReason, StoredMandate, UpsertCount, caseload_page,
    check_mandate_period, parse_code,
};

/// Reads a row of [`MANDATE_COLUMNS`], with the names from [`Names`].
pub(super) async fn stored_mandate(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    r: &Row,
) -> Result<StoredMandate, StorageError> {
    let organisation_id: OrganisationId = OrganisationId::new(r.try_get(2)?);
    let account_id: Option<AccountId> = r.try_get::<_, Option<i64>>(3)?.map(AccountId::new);
    let account = match account_id {
        Some(a) => Some(name(client, names, Named::Account, a.get()).await?),
        None => None,
    };
    Ok(StoredMandate {
        id: MandateId::new(r.try_get(0)?),
        reference: parse_code(r.try_get(1)?, Reference::parse)?,
        organisation: name(client, names, Named::Organisation, organisation_id.get()).await?,
        organisation_id,
        account,
        account_id,
        person_id: PersonId::new(r.try_get(4)?),
        purpose: parse_code(r.try_get(5)?, Purpose::parse)?,
        valid_from: r.try_get(6)?,
        valid_to: r.try_get(7)?,
        source: parse_code(r.try_get(8)?, Reference::parse)?,
        revoked_at: r.try_get(9)?,
    })
}

/// One mandate by id.
pub(super) static MANDATE_BY_ID_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE id = $1"));

/// Every mandate on one person, on the consultation path: built once, not
/// per request.
pub(super) static MANDATES_OF_PERSON_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE person_id = $1 ORDER BY id")
});

/// The checks and the insertion of [`RegistryStore::grant_mandate`], in
/// the caller's transaction. With `dek_version` (break-glass), the person
/// must still hold a data key of that version.
pub(super) async fn insert_mandate(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &Names,
    m: &NewMandate,
    dek_version: Option<u32>,
) -> Result<StoredMandate, StorageError> {
    // Mandate writers go one at a time (see upsert_mandates); the
    // account and person rows checked are locked so that the account
    // stays in its organisation and the person unshredded until this
    // commits.
    tx.batch_execute("LOCK TABLE mandate IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    if tx
        .query_opt(
            "SELECT 1 FROM organisation WHERE id = $1",
            &[&m.organisation_id.get()],
        )
        .await?
        .is_none()
    {
        return Err(crate::auth::checks::not_found(
            "organisation_id",
            "organisation",
        ));
    }
    if let Some(account_id) = m.account_id {
        let org: Option<OrganisationId> = tx
            .query_opt(
                "SELECT organisation_id FROM account WHERE id = $1 FOR SHARE",
                &[&account_id.get()],
            )
            .await?
            .map(|r| r.try_get(0).map(OrganisationId::new))
            .transpose()?;
        check_mandate_account(org, m)?;
    }
    let person: Option<i32> = tx
        .query_opt(
            "SELECT dek_version FROM person WHERE id = $1 AND wrapped_dek IS NOT NULL FOR SHARE",
            &[&m.person_id.get()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let person = person.map(|v| to_u32(v, "dek_version")).transpose()?;
    check_mandate_person(person, dek_version, m.person_id)?;
    let taken = |e: tokio_postgres::Error| {
        if is_unique_violation(&e) {
            reference_taken()
        } else {
            e.into()
        }
    };
    if tx
        .query_opt(
            "SELECT 1 FROM mandate WHERE reference = $1",
            &[&m.reference.as_str()],
        )
        .await?
        .is_some()
    {
        return Err(reference_taken());
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                 valid_from, valid_to, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &m.reference.as_str(),
                &m.organisation_id.get(),
                &m.account_id.map(AccountId::get),
                &m.person_id.get(),
                &m.purpose.as_str(),
                &m.valid_from,
                &m.valid_to,
                &m.source.as_str(),
            ],
        )
        .await
        .map_err(taken)?
        .try_get(0)?;
    let stored = mandate_by_id(tx, names, id).await?.ok_or_else(|| {
        StorageError::Corrupt(format!("mandate {id} vanished after its insertion"))
    })?;
    Ok(stored)
}

/// One mandate by id.
pub(super) async fn mandate_by_id(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    id: i64,
) -> Result<Option<StoredMandate>, StorageError> {
    let stmt = client.prepare_cached(&MANDATE_BY_ID_SQL).await?;
    match client.query_opt(&stmt, &[&id]).await? {
        Some(r) => Ok(Some(stored_mandate(client, names, &r).await?)),
        None => Ok(None),
    }
}

/// The caseload: mandates held by the organisation as a whole, merged
/// with those naming the account, each part in person order from its own
/// index (`mandate_org_wide`, `mandate_account_person`), so a page costs
/// what it returns whatever the size of the organisation. `p.id > $3`
/// repeats the bound for the person side of a merge join.
pub(super) const CASELOAD: &str = "
    (SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m
     JOIN person p ON p.id = m.person_id
     WHERE m.organisation_id = $1 AND m.account_id IS NULL AND m.person_id > $3 AND p.id > $3
       AND m.revoked_at IS NULL AND m.valid_from <= $4
       AND (m.valid_to IS NULL OR m.valid_to > $4)
       AND ($5::text IS NULL OR m.purpose = $5) AND p.wrapped_dek IS NOT NULL
     ORDER BY m.person_id, m.id LIMIT $6)
    UNION ALL
    (SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m
     JOIN person p ON p.id = m.person_id
     WHERE m.account_id = $2 AND m.organisation_id = $1 AND m.person_id > $3 AND p.id > $3
       AND m.revoked_at IS NULL AND m.valid_from <= $4
       AND (m.valid_to IS NULL OR m.valid_to > $4)
       AND ($5::text IS NULL OR m.purpose = $5) AND p.wrapped_dek IS NOT NULL
     ORDER BY m.person_id, m.id LIMIT $6)
    ORDER BY 1, 3 LIMIT $6";

pub(super) async fn upsert_mandates(
    store: &PgStore,
    mandates: Vec<MandateRow>,
    mark: Option<ImportMark>,
) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
    let mut count = UpsertCount::default();
    let mut refused = Vec::new();
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // Accounts may not move to another organisation while mandates are
    // checked against them; mandate writers go one at a time; and no
    // person is shredded until the batch commits. A table lock, not FOR
    // SHARE on each person: locking rows writes every one of them (8,192
    // heap tuples per batch, and their pages to the WAL), which made the
    // import of mandates crawl.
    tx.batch_execute(
        "LOCK TABLE account IN SHARE MODE;
         LOCK TABLE mandate IN SHARE ROW EXCLUSIVE MODE;
         LOCK TABLE person IN SHARE MODE;",
    )
    .await?;
    // Everything the checks need, in four round trips whatever the
    // batch size (row-by-row queries made large imports crawl).
    let codes: Vec<&str> = mandates.iter().map(|m| m.organisation.as_str()).collect();
    let orgs: HashMap<String, i64> = tx
        .query(
            "SELECT code, id FROM organisation WHERE code = ANY($1)",
            &[&codes],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, StorageError>>()?;
    let logins: Vec<&str> = mandates
        .iter()
        .filter_map(|m| m.account.as_ref().map(Reference::as_str))
        .collect();
    let accounts: HashMap<String, (i64, i64)> = tx
        .query(
            "SELECT login, id, organisation_id FROM account WHERE login = ANY($1)",
            &[&logins],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, StorageError>>()?;
    let person_ids: Vec<i64> = mandates.iter().map(|m| m.person_id.get()).collect();
    let live: std::collections::HashSet<i64> = tx
        .query(
            "SELECT id FROM person WHERE id = ANY($1) AND wrapped_dek IS NOT NULL",
            &[&person_ids],
        )
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<_, StorageError>>()?;
    type Fields = (
        i64,
        Option<i64>,
        i64,
        String,
        NaiveDate,
        Option<NaiveDate>,
        String,
    );
    let refs: Vec<&str> = mandates.iter().map(|m| m.reference.as_str()).collect();
    let mut state: HashMap<String, Fields> = tx
        .query(
            "SELECT reference, organisation_id, account_id, person_id, purpose, valid_from,
                    valid_to, source
             FROM mandate WHERE reference = ANY($1)",
            &[&refs],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                (
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                ),
            ))
        })
        .collect::<Result<_, StorageError>>()?;
    // Rows are decided in batch order, as SQLite does one by one; what
    // is written is each reference's final state.
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut is_new: HashMap<String, bool> = HashMap::new();
    for (index, m) in mandates.iter().enumerate() {
        let links = mandate_row_links(
            index,
            m,
            |code| Ok(orgs.get(code).copied().map(OrganisationId::new)),
            |login| {
                Ok(accounts
                    .get(login)
                    .map(|&(a, o)| (AccountId::new(a), OrganisationId::new(o))))
            },
            |id| Ok(live.contains(&id.get())),
        )?;
        let (org_id, account_id) = match links {
            Ok(links) => links,
            Err(refusal) => {
                refused.push(refusal);
                continue;
            }
        };
        let new: Fields = (
            org_id.get(),
            account_id.map(AccountId::get),
            m.person_id.get(),
            m.purpose.as_str().to_string(),
            m.valid_from,
            m.valid_to,
            m.source.as_str().to_string(),
        );
        let key = m.reference.as_str().to_string();
        match state.get(&key) {
            Some(cur) if *cur == new => {
                count.unchanged += 1;
                continue;
            }
            Some(_) => count.updated += 1,
            None => count.inserted += 1,
        }
        if !is_new.contains_key(&key) {
            is_new.insert(key.clone(), !state.contains_key(&key));
            pending.push((key.clone(), !state.contains_key(&key)));
        }
        state.insert(key, new);
    }
    let mut cols: [Vec<&Fields>; 2] = [Vec::new(), Vec::new()];
    let mut keys: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
    for (key, fresh) in &pending {
        if let Some(f) = state.get(key) {
            let side = usize::from(!fresh);
            cols[side].push(f);
            keys[side].push(key);
        }
    }
    for (side, sql) in [
        "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
             valid_from, valid_to, source)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
             $5::text[], $6::date[], $7::date[], $8::text[])",
        "UPDATE mandate m SET organisation_id = u.o, account_id = u.a, person_id = u.p,
             purpose = u.pu, valid_from = u.f, valid_to = u.t, source = u.s
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
             $5::text[], $6::date[], $7::date[], $8::text[]) AS u(r, o, a, p, pu, f, t, s)
         WHERE m.reference = u.r",
    ]
    .into_iter()
    .enumerate()
    {
        let rows = &cols[side];
        if rows.is_empty() {
            continue;
        }
        let o: Vec<i64> = rows.iter().map(|f| f.0).collect();
        let a: Vec<Option<i64>> = rows.iter().map(|f| f.1).collect();
        let p: Vec<i64> = rows.iter().map(|f| f.2).collect();
        let pu: Vec<&str> = rows.iter().map(|f| f.3.as_str()).collect();
        let fr: Vec<NaiveDate> = rows.iter().map(|f| f.4).collect();
        let to: Vec<Option<NaiveDate>> = rows.iter().map(|f| f.5).collect();
        let so: Vec<&str> = rows.iter().map(|f| f.6.as_str()).collect();
        tx.execute(sql, &[&keys[side], &o, &a, &p, &pu, &fr, &to, &so])
            .await?;
    }
    if let Some(mark) = &mark {
        super::import::advance(&tx, mark, count, refused.len() as u64).await?;
    }
    tx.commit().await?;
    Ok((count, refused))
}

pub(super) async fn mandates_of_person(
    store: &PgStore,
    person_id: PersonId,
) -> Result<Vec<StoredMandate>, StorageError> {
    let client = store.client().await?;
    mandates_rows(&client, &store.names, person_id).await
}

pub(super) async fn grant_mandate(
    store: &PgStore,
    m: NewMandate,
) -> Result<StoredMandate, StorageError> {
    check_mandate_period(&m)?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let stored = insert_mandate(&tx, &store.names, &m, None).await?;
    tx.commit().await?;
    Ok(stored)
}

pub(super) async fn rehearse_grant(store: &PgStore, m: &NewMandate) -> Result<(), StorageError> {
    check_mandate_period(m)?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    insert_mandate(&tx, &store.names, m, None).await?;
    tx.rollback().await?;
    Ok(())
}

pub(super) async fn grant_break_glass(
    store: &PgStore,
    m: NewMandate,
    reason: NewBreakGlassReason,
) -> Result<StoredMandate, StorageError> {
    check_mandate_period(&m)?;
    let created_at = crate::instant(reason.created_at, "created_at")?;
    let dek_version = to_i32(reason.dek_version, "dek_version")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let stored = insert_mandate(&tx, &store.names, &m, Some(reason.dek_version)).await?;
    tx.execute(
        "INSERT INTO break_glass_reason
             (mandate_id, person_id, account_id, created_at, dek_version, sealed)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &stored.id.get(),
            &m.person_id.get(),
            &reason.account_id.get(),
            &created_at,
            &dek_version,
            &reason.sealed,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(stored)
}

pub(super) async fn break_glass_reasons(
    store: &PgStore,
    person_id: PersonId,
) -> Result<Vec<StoredBreakGlassReason>, StorageError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, mandate_id, person_id, account_id, created_at, dek_version, sealed
             FROM break_glass_reason WHERE person_id = $1 ORDER BY id",
            &[&person_id.get()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok::<_, StorageError>(StoredBreakGlassReason {
                id: r.try_get(0)?,
                mandate_id: MandateId::new(r.try_get(1)?),
                person_id: PersonId::new(r.try_get(2)?),
                account_id: AccountId::new(r.try_get(3)?),
                created_at: r.try_get(4)?,
                dek_version: to_u32(r.try_get(5)?, "dek_version")?,
                sealed: r.try_get(6)?,
            })
        })
        .collect()
}

pub(super) async fn revoke_mandate(
    store: &PgStore,
    id: MandateId,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("UPDATE mandate SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .await?;
    Ok(client.execute(&stmt, &[&id.get(), &at]).await? == 1)
}

pub(super) async fn mandate(
    store: &PgStore,
    id: MandateId,
) -> Result<Option<StoredMandate>, StorageError> {
    let client = store.client().await?;
    mandate_by_id(&client, &store.names, id.get()).await
}

pub(super) async fn caseload(
    store: &PgStore,
    organisation_id: OrganisationId,
    account_id: AccountId,
    purpose: Option<Purpose>,
    on: NaiveDate,
    after: PersonId,
    limit: u32,
) -> Result<Vec<CaseloadEntry>, StorageError> {
    let client = store.client().await?;
    let stmt = client.prepare_cached(CASELOAD).await?;
    // One row more than asked, to see whether the page splits a person.
    let rows = client
        .query(
            &stmt,
            &[
                &organisation_id.get(),
                &account_id.get(),
                &after.get(),
                &on,
                &purpose.map(Purpose::as_str),
                &(i64::from(limit) + 1),
            ],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(CaseloadEntry {
                person_id: PersonId::new(r.try_get(0)?),
                purpose: parse_code(r.try_get(1)?, Purpose::parse)?,
                mandate_id: MandateId::new(r.try_get(2)?),
                valid_to: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    Ok(caseload_page(rows, limit))
}

/// Every mandate on one person, live or not.
pub(super) async fn mandates_rows(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    person_id: PersonId,
) -> Result<Vec<StoredMandate>, StorageError> {
    let stmt = client.prepare_cached(&MANDATES_OF_PERSON_SQL).await?;
    let rows = client.query(&stmt, &[&person_id.get()]).await?;
    let mut mandates = Vec::with_capacity(rows.len());
    for r in &rows {
        mandates.push(stored_mandate(client, names, r).await?);
    }
    Ok(mandates)
}

/// An organisation's code or an account's login, from [`Names`] or else
/// from its row (which the foreign key says exists).
pub(super) async fn name(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    kind: Named,
    id: i64,
) -> Result<Reference, StorageError> {
    if let Some(known) = names.get(kind, id) {
        return Ok(known);
    }
    let sql = match kind {
        Named::Organisation => "SELECT code FROM organisation WHERE id = $1",
        Named::Account => "SELECT login FROM account WHERE id = $1",
    };
    let stmt = client.prepare_cached(sql).await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Err(StorageError::Corrupt(format!(
            "a mandate names {kind:?} {id}, which does not exist"
        )));
    };
    let found = parse_code(row.try_get(0)?, Reference::parse)?;
    names.put(kind, id, &found);
    Ok(found)
}
