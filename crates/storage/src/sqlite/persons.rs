//! Sealed persons: ids, import lookups and writes, reads, searches by blind
//! index, crypto-shredding and bulk loads.

use std::sync::LazyLock;

use rempart_domain::{FieldGroup, PersonId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::{
    Blind, ExistingPerson, ImportMark, PersonIndex, SealedPerson, StorageError, StoredPerson,
    UpsertCount, blind, group_column, index_column,
};

/// The person indexes, idempotent. Bulk loads drop and rebuild them.
pub(super) const PERSON_INDEXES: &str = "
    CREATE UNIQUE INDEX IF NOT EXISTS person_ft ON person (ft_blind);
    CREATE INDEX IF NOT EXISTS person_nir ON person (nir_blind);
    CREATE INDEX IF NOT EXISTS person_name ON person (name_blind);";

// Compares with `+?1`: see "Hot lookups" in the backend's root.
/// The SQL of [`person_row`] for these groups.
pub(super) fn person_sql(groups: &[FieldGroup]) -> String {
    let mut sql = String::from("SELECT kek_version, dek_version, wrapped_dek");
    for g in groups {
        sql.push_str(", ");
        sql.push_str(group_column(*g));
    }
    sql.push_str(" FROM person WHERE id = +?1");
    sql
}

/// A person's key material and the sealed groups asked for.
pub(super) fn person_row(
    c: &Connection,
    id: PersonId,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    // The consultation path asks for every group: its SQL is built once.
    static ALL_GROUPS_SQL: LazyLock<String> = LazyLock::new(|| person_sql(FieldGroup::ALL));
    let built;
    let sql = if groups == FieldGroup::ALL {
        &*ALL_GROUPS_SQL
    } else {
        built = person_sql(groups);
        &built
    };
    let mut stmt = c.prepare_cached(sql)?;
    stmt.query_row([id.get()], |r| {
        let mut sealed = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            sealed.push((*g, r.get::<_, Vec<u8>>(3 + i)?));
        }
        Ok(StoredPerson {
            id,
            kek_version: r.get(0)?,
            dek_version: r.get(1)?,
            wrapped_dek: r.get(2)?,
            groups: sealed,
        })
    })
    .optional()
    .map_err(Into::into)
}

pub(super) async fn reserve_person_ids(
    store: &SqliteStore,
    n: u64,
) -> Result<PersonId, StorageError> {
    let n = i64::try_from(n).map_err(|_| {
        crate::auth::checks::refuse("count", format!("cannot reserve {n} ids at once"))
    })?;
    store
        .write(move |c| {
            let first: i64 = c.query_row(
                "UPDATE id_counter SET next = next + ?1 WHERE name = 'person' RETURNING next - ?1",
                [n],
                |r| r.get(0),
            )?;
            Ok(PersonId::new(first))
        })
        .await
}

pub(super) async fn lookup_persons(
    store: &SqliteStore,
    ft_blinds: &[Blind],
) -> Result<Vec<Option<ExistingPerson>>, StorageError> {
    let blinds = ft_blinds.to_vec();
    store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, fingerprint, kek_version, dek_version, wrapped_dek
                 FROM person WHERE ft_blind = ?1 AND wrapped_dek IS NOT NULL",
            )?;
            let mut out = Vec::with_capacity(blinds.len());
            for b in &blinds {
                let row = stmt
                    .query_row([&b[..]], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, u32>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ))
                    })
                    .optional()?;
                out.push(match row {
                    None => None,
                    Some((id, fp, kek_version, dek_version, wrapped_dek)) => Some(ExistingPerson {
                        id: PersonId::new(id),
                        fingerprint: blind(fp, "fingerprint")?,
                        kek_version,
                        dek_version,
                        wrapped_dek,
                    }),
                });
            }
            Ok(out)
        })
        .await
}

pub(super) async fn lookup_person_ids(
    store: &SqliteStore,
    ft_blinds: &[Blind],
) -> Result<Vec<Option<PersonId>>, StorageError> {
    // In key order, so a batch walks the index once from left to right;
    // answered in the order asked.
    let mut order: Vec<usize> = (0..ft_blinds.len()).collect();
    order.sort_unstable_by_key(|&i| ft_blinds[i]);
    let blinds: Vec<(usize, Blind)> = order.into_iter().map(|i| (i, ft_blinds[i])).collect();
    store
        .read(move |c| {
            // The rowid is in the index: no table page is read. A shredded
            // person's ft_blind is NULL, so it is not found.
            let mut stmt = c.prepare_cached("SELECT id FROM person WHERE ft_blind = ?1")?;
            let mut out = vec![None; blinds.len()];
            for (i, b) in &blinds {
                out[*i] = stmt
                    .query_row([&b[..]], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(PersonId::new);
            }
            Ok(out)
        })
        .await
}

pub(super) async fn write_persons(
    store: &SqliteStore,
    inserts: Vec<SealedPerson>,
    updates: Vec<(SealedPerson, Blind)>,
    mark: Option<ImportMark>,
) -> Result<(), StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO person (id, ft_blind, nir_blind, name_blind, fingerprint,
                         kek_version, dek_version, wrapped_dek, identity, contact, nir, status,
                         retain_until)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?;
                for p in &inserts {
                    ins.execute(params![
                        p.id.get(),
                        &p.ft_blind[..],
                        &p.nir_blind[..],
                        &p.name_blind[..],
                        &p.fingerprint[..],
                        p.kek_version,
                        p.dek_version,
                        p.wrapped_dek,
                        p.identity,
                        p.contact,
                        p.nir,
                        p.status,
                        p.retain_until,
                    ])
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _)
                            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            StorageError::Conflict(
                                "a person of this batch was stored meanwhile by another writer"
                                    .into(),
                            )
                        }
                        other => other.into(),
                    })?;
                }
                // The data key and its wrapping are left alone: a concurrent
                // key rotation may have rewrapped it.
                let mut upd = tx.prepare_cached(
                    "UPDATE person SET nir_blind = ?2, name_blind = ?3, fingerprint = ?4,
                         identity = ?5, contact = ?6, nir = ?7, status = ?8, retain_until = ?9
                     WHERE id = ?1 AND fingerprint = ?10 AND dek_version = ?11
                       AND wrapped_dek IS NOT NULL",
                )?;
                for (p, previous) in &updates {
                    let n = upd.execute(params![
                        p.id.get(),
                        &p.nir_blind[..],
                        &p.name_blind[..],
                        &p.fingerprint[..],
                        p.identity,
                        p.contact,
                        p.nir,
                        p.status,
                        p.retain_until,
                        &previous[..],
                        p.dek_version,
                    ])?;
                    if n != 1 {
                        return Err(StorageError::Conflict(format!(
                            "person {} changed while this batch was prepared",
                            p.id
                        )));
                    }
                }
            }
            if let Some(mark) = &mark {
                let written = UpsertCount {
                    inserted: inserts.len() as u64,
                    updated: updates.len() as u64,
                    unchanged: 0,
                };
                super::import::advance(&tx, mark, written, 0)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn read_person(
    store: &SqliteStore,
    id: PersonId,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    let groups = groups.to_vec();
    store.read_point(move |c| person_row(c, id, &groups)).await
}

pub(super) async fn find_persons(
    store: &SqliteStore,
    index: PersonIndex,
    value: Blind,
) -> Result<Vec<PersonId>, StorageError> {
    store
        .read(move |c| {
            let sql = format!(
                "SELECT id FROM person WHERE {} = ?1 ORDER BY id",
                index_column(index)
            );
            let ids = c
                .prepare_cached(&sql)?
                .query_map([&value[..]], |r| r.get(0).map(PersonId::new))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
}

pub(super) async fn shred_person(store: &SqliteStore, id: PersonId) -> Result<bool, StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE person SET wrapped_dek = NULL, ft_blind = NULL, nir_blind = NULL,
                     name_blind = NULL, fingerprint = NULL, shredded_at = datetime('now')
                 WHERE id = ?1 AND wrapped_dek IS NOT NULL",
                [id.get()],
            )?;
            // Sealed under the key just destroyed, and gone with it.
            tx.execute(
                "DELETE FROM break_glass_reason WHERE person_id = ?1",
                [id.get()],
            )?;
            tx.commit()?;
            // secure_delete zeroes the old cells in the database file; the
            // checkpoint moves the WAL's copy there and truncates the WAL.
            // Readers may keep a snapshot alive: best effort.
            let _: (i64, i64, i64) = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn begin_bulk_load(
    store: &SqliteStore,
    resuming: bool,
) -> Result<bool, StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let empty: bool = resuming
                || tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM person)", [], |r| r.get(0))?;
            if empty {
                tx.execute_batch(
                    "DROP INDEX IF EXISTS person_ft;
                     DROP INDEX IF EXISTS person_nir;
                     DROP INDEX IF EXISTS person_name;",
                )?;
            }
            tx.commit()?;
            Ok(empty)
        })
        .await
}

pub(super) async fn end_bulk_load(store: &SqliteStore) -> Result<(), StorageError> {
    store
        .write(|c| {
            // A small sort memory makes SQLite split the sort into runs that
            // its worker threads sort in parallel: about twice as fast here
            // as one in-memory sort.
            c.execute_batch("PRAGMA threads = 2; PRAGMA cache_size = -4096;")?;
            let built = c.execute_batch(PERSON_INDEXES);
            let rebuilt = built
                .is_ok()
                .then(|| super::import::rebuild_dropped_indexes(c));
            c.execute_batch("PRAGMA cache_size = -65536;")?;
            rebuilt.transpose()?;
            built.map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StorageError::Conflict(
                        "two persons with the same France Travail id were loaded at once".into(),
                    )
                }
                other => other.into(),
            })
        })
        .await
}

pub(super) async fn person_ids(
    store: &SqliteStore,
    after: PersonId,
    limit: u32,
) -> Result<Vec<PersonId>, StorageError> {
    store
        .read(move |c| {
            let ids = c
                .prepare_cached("SELECT id FROM person WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![after.get(), limit], |r| r.get(0).map(PersonId::new))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
}
