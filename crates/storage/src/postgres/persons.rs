//! Sealed persons: ids, import lookups and writes, reads, searches by blind
//! index, crypto-shredding and bulk loads.

use std::collections::HashSet;
use std::pin::pin;

use chrono::NaiveDate;
use rempart_domain::{FieldGroup, PersonId};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::PgStore;
use super::values::{contention, has_duplicates, is_unique_violation, to_i32, to_u32};
use crate::{
    Blind, ExistingPerson, ImportMark, PersonIndex, SealedPerson, StorageError, StoredPerson,
    UpsertCount, blind, group_column, index_column,
};

/// Binary COPY of new persons; its columns are, in order, [`PERSON_TYPES`].
pub(super) const COPY_PERSONS: &str = "COPY person (id, ft_blind, nir_blind, name_blind, fingerprint, \
     kek_version, dek_version, wrapped_dek, identity, contact, nir, status, retain_until) \
     FROM STDIN (FORMAT binary)";
const PERSON_TYPES: &[Type] = &[
    Type::INT8,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::DATE,
];

/// Inserts persons with one binary COPY.
pub(super) async fn copy_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    inserts: &[SealedPerson],
) -> Result<(), StorageError> {
    let conflict = |e: tokio_postgres::Error| {
        if is_unique_violation(&e) {
            // COPY does not say which row: the whole batch is refused.
            StorageError::Conflict(
                "a person of this batch was stored meanwhile by another writer".into(),
            )
        } else {
            e.into()
        }
    };
    let stmt = tx.prepare_cached(COPY_PERSONS).await?;
    let sink = tx.copy_in(&stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, PERSON_TYPES));
    for p in inserts {
        let kek_version = to_i32(p.kek_version, "kek_version")?;
        let dek_version = to_i32(p.dek_version, "dek_version")?;
        let (ft, nir_b) = (&p.ft_blind[..], &p.nir_blind[..]);
        let (name_b, fp) = (&p.name_blind[..], &p.fingerprint[..]);
        writer
            .as_mut()
            .write(&[
                &p.id.get(),
                &ft,
                &nir_b,
                &name_b,
                &fp,
                &kek_version,
                &dek_version,
                &p.wrapped_dek,
                &p.identity,
                &p.contact,
                &p.nir,
                &p.status,
                &p.retain_until,
            ])
            .await
            .map_err(conflict)?;
    }
    writer.as_mut().finish().await.map_err(conflict)?;
    Ok(())
}

pub(super) const UPDATE_ONE_PERSON: &str =
    "UPDATE person SET nir_blind = $2, name_blind = $3, fingerprint = $4,
         identity = $5, contact = $6, nir = $7, status = $8, retain_until = $9
     WHERE id = $1 AND fingerprint = $10 AND dek_version = $11::int8
       AND wrapped_dek IS NOT NULL";

pub(super) const UPDATE_PERSONS: &str =
    "UPDATE person AS p SET nir_blind = u.nir_blind, name_blind = u.name_blind,
         fingerprint = u.fingerprint, identity = u.identity, contact = u.contact, nir = u.nir,
         status = u.status, retain_until = u.retain_until
     FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[],
                 $7::bytea[], $8::bytea[], $9::date[], $10::bytea[], $11::int8[])
          AS u(id, nir_blind, name_blind, fingerprint, identity, contact, nir, status,
               retain_until, previous, dek_version)
     WHERE p.id = u.id AND p.fingerprint = u.previous AND p.dek_version = u.dek_version
       AND p.wrapped_dek IS NOT NULL
     RETURNING p.id";

/// Applies updates, each only if the stored fingerprint and data key
/// version are still the ones read. The data key and its wrapping are left
/// alone: a concurrent key rotation may have rewrapped it.
pub(super) async fn update_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    updates: &[(SealedPerson, Blind)],
) -> Result<(), StorageError> {
    let changed = |id: i64| {
        StorageError::Conflict(format!("person {id} changed while this batch was prepared"))
    };
    if has_duplicates(updates.iter().map(|(p, _)| p.id.get())) {
        // One statement would apply only one of the rows of an id: go row
        // by row, in order, as SQLite does.
        let stmt = tx.prepare_cached(UPDATE_ONE_PERSON).await?;
        for (p, previous) in updates {
            let (nir_b, name_b) = (&p.nir_blind[..], &p.name_blind[..]);
            let (fp, prev) = (&p.fingerprint[..], &previous[..]);
            let n = tx
                .execute(
                    &stmt,
                    &[
                        &p.id.get(),
                        &nir_b,
                        &name_b,
                        &fp,
                        &p.identity,
                        &p.contact,
                        &p.nir,
                        &p.status,
                        &p.retain_until,
                        &prev,
                        &i64::from(p.dek_version),
                    ],
                )
                .await?;
            if n != 1 {
                return Err(changed(p.id.get()));
            }
        }
        return Ok(());
    }
    let ids: Vec<i64> = updates.iter().map(|(p, _)| p.id.get()).collect();
    let col = |f: fn(&SealedPerson) -> &[u8]| -> Vec<&[u8]> {
        updates.iter().map(|(p, _)| f(p)).collect()
    };
    let nir_blinds = col(|p| &p.nir_blind);
    let name_blinds = col(|p| &p.name_blind);
    let fingerprints = col(|p| &p.fingerprint);
    let identities = col(|p| &p.identity);
    let contacts = col(|p| &p.contact);
    let nirs = col(|p| &p.nir);
    let statuses = col(|p| &p.status);
    let retain: Vec<Option<NaiveDate>> = updates.iter().map(|(p, _)| p.retain_until).collect();
    let previous: Vec<&[u8]> = updates.iter().map(|(_, b)| &b[..]).collect();
    let dek_versions: Vec<i64> = updates
        .iter()
        .map(|(p, _)| i64::from(p.dek_version))
        .collect();
    let stmt = tx.prepare_cached(UPDATE_PERSONS).await?;
    let params: [&(dyn ToSql + Sync); 11] = [
        &ids,
        &nir_blinds,
        &name_blinds,
        &fingerprints,
        &identities,
        &contacts,
        &nirs,
        &statuses,
        &retain,
        &previous,
        &dek_versions,
    ];
    let done = tx.query(&stmt, &params).await?;
    if done.len() != updates.len() {
        let done: HashSet<i64> = done
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let id = ids
            .iter()
            .copied()
            .find(|id| !done.contains(id))
            .unwrap_or_default();
        return Err(changed(id));
    }
    Ok(())
}

pub(super) async fn reserve_person_ids(store: &PgStore, n: u64) -> Result<PersonId, StorageError> {
    let n = i64::try_from(n).map_err(|_| {
        crate::auth::checks::refuse("count", format!("cannot reserve {n} ids at once"))
    })?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE id_counter SET next = next + $1 WHERE name = 'person' RETURNING next - $1",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&n])
        .await?
        .ok_or_else(|| StorageError::Corrupt("id_counter has no 'person' row".into()))?;
    Ok(PersonId::new(row.try_get(0)?))
}

pub(super) async fn lookup_persons(
    store: &PgStore,
    ft_blinds: &[Blind],
) -> Result<Vec<Option<ExistingPerson>>, StorageError> {
    let mut out = vec![None; ft_blinds.len()];
    if ft_blinds.is_empty() {
        return Ok(out);
    }
    let blinds: Vec<&[u8]> = ft_blinds.iter().map(|b| &b[..]).collect();
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT q.i, p.id, p.fingerprint, p.kek_version, p.dek_version, p.wrapped_dek
             FROM UNNEST($1::bytea[]) WITH ORDINALITY AS q(b, i)
             JOIN person AS p ON p.ft_blind = q.b
             WHERE p.wrapped_dek IS NOT NULL",
        )
        .await?;
    for r in client.query(&stmt, &[&blinds]).await? {
        *slot(&mut out, r.try_get(0)?)? = Some(ExistingPerson {
            id: PersonId::new(r.try_get(1)?),
            fingerprint: blind(r.try_get(2)?, "fingerprint")?,
            kek_version: to_u32(r.try_get(3)?, "kek_version")?,
            dek_version: to_u32(r.try_get(4)?, "dek_version")?,
            wrapped_dek: r.try_get(5)?,
        });
    }
    Ok(out)
}

pub(super) async fn lookup_person_ids(
    store: &PgStore,
    ft_blinds: &[Blind],
) -> Result<Vec<Option<PersonId>>, StorageError> {
    let mut out = vec![None; ft_blinds.len()];
    if ft_blinds.is_empty() {
        return Ok(out);
    }
    let blinds: Vec<&[u8]> = ft_blinds.iter().map(|b| &b[..]).collect();
    let client = store.client().await?;
    // A shredded person's ft_blind is NULL, so it is not found.
    let stmt = client
        .prepare_cached(
            "SELECT q.i, p.id
             FROM UNNEST($1::bytea[]) WITH ORDINALITY AS q(b, i)
             JOIN person AS p ON p.ft_blind = q.b",
        )
        .await?;
    for r in client.query(&stmt, &[&blinds]).await? {
        *slot(&mut out, r.try_get(0)?)? = Some(PersonId::new(r.try_get(1)?));
    }
    Ok(out)
}

/// The answer's place for `UNNEST … WITH ORDINALITY`'s ordinal `i` (from 1).
fn slot<T>(out: &mut [Option<T>], i: i64) -> Result<&mut Option<T>, StorageError> {
    usize::try_from(i - 1)
        .ok()
        .and_then(|i| out.get_mut(i))
        .ok_or_else(|| StorageError::Corrupt(format!("lookup ordinal {i} out of range")))
}

pub(super) async fn write_persons(
    store: &PgStore,
    inserts: Vec<SealedPerson>,
    updates: Vec<(SealedPerson, Blind)>,
    mark: Option<ImportMark>,
) -> Result<(), StorageError> {
    if inserts.is_empty() && updates.is_empty() && mark.is_none() {
        return Ok(());
    }
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(contention)?;
    if !inserts.is_empty() {
        copy_persons(&tx, &inserts).await.map_err(contention)?;
    }
    if !updates.is_empty() {
        update_persons(&tx, &updates).await.map_err(contention)?;
    }
    if let Some(mark) = &mark {
        let written = UpsertCount {
            inserted: inserts.len() as u64,
            updated: updates.len() as u64,
            unchanged: 0,
        };
        super::import::advance(&tx, mark, written, 0)
            .await
            .map_err(contention)?;
    }
    tx.commit().await.map_err(contention)?;
    Ok(())
}

pub(super) async fn read_person(
    store: &PgStore,
    id: PersonId,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    let client = store.client().await?;
    person_row(&client, id, groups).await
}

pub(super) async fn find_persons(
    store: &PgStore,
    index: PersonIndex,
    value: Blind,
) -> Result<Vec<PersonId>, StorageError> {
    let sql = format!(
        "SELECT id FROM person WHERE {} = $1 ORDER BY id",
        index_column(index)
    );
    let client = store.client().await?;
    let stmt = client.prepare_cached(&sql).await?;
    let value: &[u8] = &value;
    client
        .query(&stmt, &[&value])
        .await?
        .iter()
        .map(|r| Ok(PersonId::new(r.try_get(0)?)))
        .collect()
}

pub(super) async fn shred_person(store: &PgStore, id: PersonId) -> Result<bool, StorageError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE person SET wrapped_dek = NULL, ft_blind = NULL, nir_blind = NULL,
                 name_blind = NULL, fingerprint = NULL, shredded_at = now()
             WHERE id = $1 AND wrapped_dek IS NOT NULL",
            &[&id.get()],
        )
        .await?;
    // Sealed under the key just destroyed, and gone with it. A
    // break-glass holding the person's row (FOR SHARE) has committed
    // before the update above could run: its reason is deleted here.
    tx.execute(
        "DELETE FROM break_glass_reason WHERE person_id = $1",
        &[&id.get()],
    )
    .await?;
    tx.commit().await?;
    Ok(n == 1)
}

pub(super) async fn begin_bulk_load(store: &PgStore, resuming: bool) -> Result<bool, StorageError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // Blocks concurrent writers until the decision is committed.
    tx.batch_execute("LOCK TABLE person IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let empty: bool = resuming
        || tx
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM person)", &[])
            .await?
            .try_get(0)?;
    if empty {
        tx.batch_execute(
            "DROP INDEX IF EXISTS person_ft;
             DROP INDEX IF EXISTS person_nir;
             DROP INDEX IF EXISTS person_name;",
        )
        .await?;
    }
    tx.commit().await?;
    Ok(empty)
}

pub(super) async fn refresh_statistics(store: &PgStore) -> Result<(), StorageError> {
    store
        .client()
        .await?
        .batch_execute("ANALYZE organisation, account, person, mandate")
        .await?;
    Ok(())
}

pub(super) async fn end_bulk_load(store: &PgStore) -> Result<(), StorageError> {
    let client = store.client().await?;
    // Sorting memory for the index builds of a large first load.
    client
        .batch_execute(
            "SET maintenance_work_mem = '256MB';
             CREATE UNIQUE INDEX IF NOT EXISTS person_ft ON person (ft_blind);
             CREATE INDEX IF NOT EXISTS person_nir ON person (nir_blind);
             CREATE INDEX IF NOT EXISTS person_name ON person (name_blind);
             RESET maintenance_work_mem;",
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                StorageError::Conflict(
                    "two persons with the same France Travail id were loaded at once".into(),
                )
            }
            _ => e.into(),
        })?;
    super::import::rebuild_dropped_indexes(store).await
}

pub(super) async fn person_ids(
    store: &PgStore,
    after: PersonId,
    limit: u32,
) -> Result<Vec<PersonId>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT id FROM person WHERE id > $1 ORDER BY id LIMIT $2")
        .await?;
    client
        .query(&stmt, &[&after.get(), &i64::from(limit)])
        .await?
        .iter()
        .map(|r| Ok(PersonId::new(r.try_get(0)?)))
        .collect()
}

/// A person's key material and the sealed groups asked for.
pub(super) async fn person_row(
    client: &deadpool_postgres::ClientWrapper,
    id: PersonId,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    let mut sql = String::from("SELECT kek_version, dek_version, wrapped_dek");
    for g in groups {
        sql.push_str(", ");
        sql.push_str(group_column(*g));
    }
    sql.push_str(" FROM person WHERE id = $1");
    let stmt = client.prepare_cached(&sql).await?;
    match client.query_opt(&stmt, &[&id.get()]).await? {
        Some(r) => person_at(&r, 0, id, groups),
        None => Ok(None),
    }
}

/// The person whose `kek_version, dek_version, wrapped_dek` and then
/// `groups`' columns start at column `first` of `r`; `None` if they are
/// NULL (a left join that found no person).
pub(super) fn person_at(
    r: &tokio_postgres::Row,
    first: usize,
    id: PersonId,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    let Some(kek_version) = r.try_get::<_, Option<i32>>(first)? else {
        return Ok(None);
    };
    let mut sealed = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        sealed.push((*g, r.try_get::<_, Vec<u8>>(first + 3 + i)?));
    }
    Ok(Some(StoredPerson {
        id,
        kek_version: to_u32(kek_version, "kek_version")?,
        dek_version: to_u32(r.try_get(first + 1)?, "dek_version")?,
        wrapped_dek: r.try_get(first + 2)?,
        groups: sealed,
    }))
}
