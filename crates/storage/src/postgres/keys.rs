//! Key rotation: the wrapped data keys to rewrap, and their
//! compare-and-set.

use rempart_domain::PersonId;
use tokio_postgres::Row;

use super::PgStore;
use super::values::{contention, has_duplicates, to_i32, to_u32};
use crate::{StorageError, WrappedKeyRow};

pub(super) fn wrapped_key_row(r: &Row) -> Result<WrappedKeyRow, StorageError> {
    Ok(WrappedKeyRow {
        id: PersonId::new(r.try_get(0)?),
        kek_version: to_u32(r.try_get(1)?, "kek_version")?,
        dek_version: to_u32(r.try_get(2)?, "dek_version")?,
        wrapped_dek: r.try_get(3)?,
    })
}

pub(super) const STORE_ONE_REWRAPPED: &str = "UPDATE person SET kek_version = $2, wrapped_dek = $3
     WHERE id = $1 AND kek_version = $4::int8 AND dek_version = $5::int8
       AND wrapped_dek IS NOT NULL";

pub(super) const STORE_REWRAPPED: &str =
    "UPDATE person AS p SET kek_version = u.kek_version, wrapped_dek = u.wrapped_dek
     FROM UNNEST($1::int8[], $2::int4[], $3::bytea[], $4::int8[], $5::int8[])
          AS u(id, kek_version, wrapped_dek, old_kek_version, dek_version)
     WHERE p.id = u.id AND p.kek_version = u.old_kek_version AND p.dek_version = u.dek_version
       AND p.wrapped_dek IS NOT NULL";

/// Stores rewrapped keys, each only if its KEK and data key versions are
/// still the ones read; returns how many applied.
pub(super) async fn rewrap_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(WrappedKeyRow, u32)],
) -> Result<u64, StorageError> {
    Ok(if has_duplicates(rows.iter().map(|(r, _)| r.id.get())) {
        // Row by row, in order, as SQLite does.
        let stmt = tx.prepare_cached(STORE_ONE_REWRAPPED).await?;
        let mut n = 0;
        for (row, old_version) in rows {
            n += tx
                .execute(
                    &stmt,
                    &[
                        &row.id.get(),
                        &to_i32(row.kek_version, "kek_version")?,
                        &row.wrapped_dek,
                        &i64::from(*old_version),
                        &i64::from(row.dek_version),
                    ],
                )
                .await?;
        }
        n
    } else {
        let ids: Vec<i64> = rows.iter().map(|(r, _)| r.id.get()).collect();
        let versions = rows
            .iter()
            .map(|(r, _)| to_i32(r.kek_version, "kek_version"))
            .collect::<Result<Vec<i32>, _>>()?;
        let keys: Vec<&[u8]> = rows.iter().map(|(r, _)| &r.wrapped_dek[..]).collect();
        let old: Vec<i64> = rows.iter().map(|(_, v)| i64::from(*v)).collect();
        let deks: Vec<i64> = rows.iter().map(|(r, _)| i64::from(r.dek_version)).collect();
        let stmt = tx.prepare_cached(STORE_REWRAPPED).await?;
        tx.execute(&stmt, &[&ids, &versions, &keys, &old, &deks])
            .await?
    })
}

pub(super) async fn keys_to_rewrap(
    store: &PgStore,
    target: u32,
    after: PersonId,
    limit: u32,
) -> Result<Vec<WrappedKeyRow>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, kek_version, dek_version, wrapped_dek FROM person
             WHERE id > $1 AND kek_version <> $2::int8 AND wrapped_dek IS NOT NULL
             ORDER BY id LIMIT $3",
        )
        .await?;
    client
        .query(
            &stmt,
            &[&after.get(), &i64::from(target), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(wrapped_key_row)
        .collect()
}

pub(super) async fn store_rewrapped(
    store: &PgStore,
    rows: Vec<(WrappedKeyRow, u32)>,
) -> Result<u64, StorageError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(contention)?;
    let n = rewrap_persons(&tx, &rows).await.map_err(contention)?;
    tx.commit().await.map_err(contention)?;
    Ok(n)
}
