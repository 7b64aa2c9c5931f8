//! An import's progress (`import_progress`): where a large file's import
//! stands, moved in the same transaction as each batch it describes.

use tokio_postgres::Transaction;

use super::PgStore;
use crate::sqlite::import::{count, gone, progress};
use crate::{ImportKind, ImportMark, ImportProgress, StorageError, UpsertCount};

pub(super) async fn import_progress(
    store: &PgStore,
    kind: ImportKind,
) -> Result<Option<ImportProgress>, StorageError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT file_id, next_byte, next_line, records, inserted, updated, unchanged,
                    rejected, bulk
             FROM import_progress WHERE kind = $1",
            &[&kind.as_str()],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let file_id: Vec<u8> = r.try_get(0)?;
    let mut n = [0i64; 7];
    for (i, v) in n.iter_mut().enumerate() {
        *v = r.try_get(i + 1)?;
    }
    progress(&file_id, n, r.try_get(8)?).map(Some)
}

pub(super) async fn start_import(
    store: &PgStore,
    kind: ImportKind,
    file_id: [u8; 32],
    bulk: bool,
) -> Result<(), StorageError> {
    let client = store.client().await?;
    client
        .execute(
            "INSERT INTO import_progress (kind, file_id, next_byte, next_line, bulk)
             VALUES ($1, $2, 0, 0, $3)
             ON CONFLICT (kind) DO UPDATE SET file_id = EXCLUDED.file_id, next_byte = 0,
                 next_line = 0, records = 0, inserted = 0, updated = 0, unchanged = 0,
                 rejected = 0, bulk = EXCLUDED.bulk",
            &[&kind.as_str(), &&file_id[..], &bulk],
        )
        .await?;
    Ok(())
}

pub(super) async fn finish_import(store: &PgStore, kind: ImportKind) -> Result<(), StorageError> {
    let client = store.client().await?;
    client
        .execute(
            "DELETE FROM import_progress WHERE kind = $1",
            &[&kind.as_str()],
        )
        .await?;
    Ok(())
}

/// Moves the progress to `mark` inside the batch's transaction, adding
/// what the store decided (`written`, and `refused` rows).
pub(super) async fn advance(
    tx: &Transaction<'_>,
    mark: &ImportMark,
    written: UpsertCount,
    refused: u64,
) -> Result<(), StorageError> {
    let n = tx
        .execute(
            "UPDATE import_progress SET next_byte = $3, next_line = $4, records = records + $5,
                 inserted = inserted + $6, updated = updated + $7, unchanged = unchanged + $8,
                 rejected = rejected + $9
             WHERE kind = $1 AND file_id = $2",
            &[
                &mark.kind.as_str(),
                &&mark.file_id[..],
                &count(mark.next_byte)?,
                &count(mark.next_line)?,
                &count(mark.records)?,
                &count(written.inserted)?,
                &count(written.updated)?,
                &count(mark.unchanged.saturating_add(written.unchanged))?,
                &count(mark.rejected.saturating_add(refused))?,
            ],
        )
        .await?;
    if n != 1 {
        return Err(gone(mark.kind));
    }
    Ok(())
}

/// Prepares a first load of mandates (see the SQLite version): keeps each
/// secondary index and foreign key of `mandate` with its definition and
/// drops it. The rows' references are checked by the load itself meanwhile
/// (`upsert_mandates`, under table locks), and again by the foreign keys
/// when they come back.
pub(super) async fn begin_mandate_bulk_load(
    store: &PgStore,
    resuming: bool,
) -> Result<bool, StorageError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // Blocks concurrent writers until the decision is committed.
    tx.batch_execute("LOCK TABLE mandate IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let empty: bool = resuming
        || tx
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM mandate)", &[])
            .await?
            .try_get(0)?;
    if empty {
        // The primary key's and the unique reference's indexes stay.
        let indexes = tx
            .query(
                "SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'mandate'::regclass AND NOT i.indisunique
                   AND NOT i.indisprimary",
                &[],
            )
            .await?;
        let keys = tx
            .query(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = 'mandate'::regclass AND contype = 'f'",
                &[],
            )
            .await?;
        for r in indexes {
            let (name, sql): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            keep(&tx, &name, "index", &sql).await?;
            tx.batch_execute(&format!("DROP INDEX {}", quoted(&name)))
                .await?;
        }
        for r in keys {
            let (name, def): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let sql = format!("ALTER TABLE mandate ADD CONSTRAINT {} {def}", quoted(&name));
            keep(&tx, &name, "constraint", &sql).await?;
            tx.batch_execute(&format!(
                "ALTER TABLE mandate DROP CONSTRAINT {}",
                quoted(&name)
            ))
            .await?;
        }
    }
    tx.commit().await?;
    Ok(empty)
}

/// An identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Records what is about to be dropped, unless a load already did.
async fn keep(tx: &Transaction<'_>, name: &str, kind: &str, sql: &str) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO bulk_dropped (name, kind, sql) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
        &[&name, &kind, &sql],
    )
    .await?;
    Ok(())
}

/// Makes again everything a bulk load dropped (at its end, and when a
/// store is opened), indexes first, each in its own transaction with its
/// row's removal.
pub(super) async fn rebuild_dropped_indexes(store: &PgStore) -> Result<(), StorageError> {
    let mut client = store.client().await?;
    let dropped = client
        .query(
            "SELECT name, kind, sql FROM bulk_dropped ORDER BY kind DESC, name",
            &[],
        )
        .await?;
    let dropped_none = dropped.is_empty();
    if !dropped_none {
        // Sorting memory for the index builds of a large first load.
        client
            .batch_execute("SET maintenance_work_mem = '256MB'")
            .await?;
    }
    for r in dropped {
        let (name, kind, sql): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let tx = client.transaction().await?;
        let exists: bool = tx
            .query_one(
                "SELECT CASE WHEN $2 = 'index' THEN to_regclass($1) IS NOT NULL
                        ELSE EXISTS (SELECT 1 FROM pg_constraint
                                     WHERE conname = $1 AND conrelid = 'mandate'::regclass)
                        END",
                &[&name, &kind],
            )
            .await?
            .try_get(0)?;
        if !exists {
            tx.batch_execute(&sql).await?;
        }
        tx.execute("DELETE FROM bulk_dropped WHERE name = $1", &[&name])
            .await?;
        tx.commit().await?;
    }
    if !dropped_none {
        client.batch_execute("RESET maintenance_work_mem").await?;
    }
    Ok(())
}
