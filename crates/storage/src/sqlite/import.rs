//! An import's progress (`import_progress`): where a large file's import
//! stands, moved in the same transaction as each batch it describes.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::SqliteStore;
use crate::{ImportCounts, ImportKind, ImportMark, ImportProgress, StorageError, UpsertCount};

pub(super) async fn import_progress(
    store: &SqliteStore,
    kind: ImportKind,
) -> Result<Option<ImportProgress>, StorageError> {
    store
        .read(move |c| {
            let row = c
                .query_row(
                    "SELECT file_id, next_byte, next_line, records, inserted, updated,
                            unchanged, rejected, bulk
                     FROM import_progress WHERE kind = ?1",
                    [kind.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            [
                                r.get::<_, i64>(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                            ],
                            r.get::<_, bool>(8)?,
                        ))
                    },
                )
                .optional()?;
            row.map(|(file_id, n, bulk)| progress(&file_id, n, bulk))
                .transpose()
        })
        .await
}

/// The row's values as a progress (shared with PostgreSQL).
pub(crate) fn progress(
    file_id: &[u8],
    n: [i64; 7],
    bulk: bool,
) -> Result<ImportProgress, StorageError> {
    let file_id = <[u8; 32]>::try_from(file_id)
        .map_err(|_| StorageError::Corrupt("import_progress.file_id is not 32 bytes".into()))?;
    let mut u = [0u64; 7];
    for (out, v) in u.iter_mut().zip(n) {
        *out = u64::try_from(v)
            .map_err(|_| StorageError::Corrupt("import_progress holds a negative count".into()))?;
    }
    let [
        next_byte,
        next_line,
        records,
        inserted,
        updated,
        unchanged,
        rejected,
    ] = u;
    Ok(ImportProgress {
        file_id,
        next_byte,
        next_line,
        counts: ImportCounts {
            records,
            inserted,
            updated,
            unchanged,
            rejected,
        },
        bulk,
    })
}

pub(super) async fn start_import(
    store: &SqliteStore,
    kind: ImportKind,
    file_id: [u8; 32],
    bulk: bool,
) -> Result<(), StorageError> {
    store
        .write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO import_progress (kind, file_id, next_byte, next_line, bulk)
                 VALUES (?1, ?2, 0, 0, ?3)",
                params![kind.as_str(), &file_id[..], bulk],
            )?;
            Ok(())
        })
        .await
}

pub(super) async fn finish_import(
    store: &SqliteStore,
    kind: ImportKind,
) -> Result<(), StorageError> {
    store
        .write(move |c| {
            c.execute(
                "DELETE FROM import_progress WHERE kind = ?1",
                [kind.as_str()],
            )?;
            Ok(())
        })
        .await
}

/// Moves the progress to `mark` inside the batch's transaction, adding
/// what the store decided (`written`, and `refused` rows).
pub(super) fn advance(
    tx: &Transaction<'_>,
    mark: &ImportMark,
    written: UpsertCount,
    refused: u64,
) -> Result<(), StorageError> {
    let n = tx.execute(
        "UPDATE import_progress SET next_byte = ?3, next_line = ?4, records = records + ?5,
             inserted = inserted + ?6, updated = updated + ?7, unchanged = unchanged + ?8,
             rejected = rejected + ?9
         WHERE kind = ?1 AND file_id = ?2",
        params![
            mark.kind.as_str(),
            &mark.file_id[..],
            count(mark.next_byte)?,
            count(mark.next_line)?,
            count(mark.records)?,
            count(written.inserted)?,
            count(written.updated)?,
            count(mark.unchanged.saturating_add(written.unchanged))?,
            count(mark.rejected.saturating_add(refused))?,
        ],
    )?;
    if n != 1 {
        return Err(gone(mark.kind));
    }
    Ok(())
}

/// A count as SQL's integer.
pub(crate) fn count(n: u64) -> Result<i64, StorageError> {
    i64::try_from(n).map_err(|_| StorageError::Corrupt(format!("count {n} out of range")))
}

/// The progress row of a batch's file is no longer there.
pub(crate) fn gone(kind: ImportKind) -> StorageError {
    StorageError::Conflict(format!(
        "another import of {} started meanwhile: this one stops",
        kind.as_str()
    ))
}

/// Prepares a first load of mandates: if none is stored yet (or the rest
/// of such a load resumes), records each secondary index of `mandate`
/// with its statement in `bulk_dropped` and drops it.
pub(super) async fn begin_mandate_bulk_load(
    store: &SqliteStore,
    resuming: bool,
) -> Result<bool, StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let empty: bool = resuming
                || tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM mandate)", [], |r| {
                    r.get(0)
                })?;
            if empty {
                // `sql` is NULL for the UNIQUE constraint's own index.
                let indexes: Vec<(String, String)> = tx
                    .prepare(
                        "SELECT name, sql FROM sqlite_schema
                         WHERE type = 'index' AND tbl_name = 'mandate' AND sql IS NOT NULL",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (name, sql) in indexes {
                    tx.execute(
                        "INSERT OR IGNORE INTO bulk_dropped (name, kind, sql)
                         VALUES (?1, 'index', ?2)",
                        params![name, sql],
                    )?;
                    tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
                }
            }
            tx.commit()?;
            Ok(empty)
        })
        .await
}

/// Makes again every index a bulk load dropped (at its end, and when a
/// store is opened), each in its own transaction with its row's removal.
pub(super) fn rebuild_dropped_indexes(c: &mut Connection) -> Result<(), StorageError> {
    let dropped: Vec<(String, String)> = c
        .prepare("SELECT name, sql FROM bulk_dropped ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, sql) in dropped {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = ?1)",
            [&name],
            |r| r.get(0),
        )?;
        if !exists {
            tx.execute_batch(&sql)?;
        }
        tx.execute("DELETE FROM bulk_dropped WHERE name = ?1", [&name])?;
        tx.commit()?;
    }
    Ok(())
}
