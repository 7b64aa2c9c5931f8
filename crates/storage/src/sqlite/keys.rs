//! Key rotation: the wrapped data keys to rewrap, and their
//! compare-and-set.

use rempart_domain::PersonId;
use rusqlite::{TransactionBehavior, params};

use super::SqliteStore;
use crate::{StorageError, WrappedKeyRow};

pub(super) async fn keys_to_rewrap(
    store: &SqliteStore,
    target: u32,
    after: PersonId,
    limit: u32,
) -> Result<Vec<WrappedKeyRow>, StorageError> {
    store
        .read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, kek_version, dek_version, wrapped_dek FROM person
                     WHERE id > ?1 AND kek_version <> ?2 AND wrapped_dek IS NOT NULL
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![after.get(), target, limit], |r| {
                    Ok(WrappedKeyRow {
                        id: PersonId::new(r.get(0)?),
                        kek_version: r.get(1)?,
                        dek_version: r.get(2)?,
                        wrapped_dek: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
}

pub(super) async fn store_rewrapped(
    store: &SqliteStore,
    rows: Vec<(WrappedKeyRow, u32)>,
) -> Result<u64, StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0u64;
            {
                let mut upd = tx.prepare_cached(
                    "UPDATE person SET kek_version = ?2, wrapped_dek = ?3
                     WHERE id = ?1 AND kek_version = ?4 AND dek_version = ?5
                       AND wrapped_dek IS NOT NULL",
                )?;
                for (row, old_version) in &rows {
                    n += upd.execute(params![
                        row.id.get(),
                        row.kek_version,
                        row.wrapped_dek,
                        old_version,
                        row.dek_version
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
}
