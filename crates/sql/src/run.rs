//! The migration runners: one per backend, shared by the registry's and
//! the ledger's stores, each over its own list of [`Migration`]s and its
//! own error type (anything a driver error and a [`MigrationError`]
//! convert into).

use crate::{Migration, MigrationError, describe, pending};

/// Applies the pending migrations of `known` on a SQLite connection, in
/// one immediate transaction (a concurrent opener waits for it), recording
/// each in `schema_migrations` with its checksum.
pub fn migrate_sqlite<E>(conn: &mut rusqlite::Connection, known: &[Migration]) -> Result<(), E>
where
    E: From<rusqlite::Error> + From<MigrationError>,
{
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT;",
    )?;
    let applied: Vec<(u32, String)> = tx
        .prepare("SELECT version, checksum FROM schema_migrations ORDER BY version")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for m in pending(known, &applied)? {
        tx.execute_batch(m.sql)
            .map_err(|e| MigrationError::Failed {
                version: m.version,
                name: m.name,
                reason: e.to_string(),
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES (?1, ?2, ?3, datetime('now'))",
            rusqlite::params![m.version, m.name, m.checksum()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates `schema` if missing and applies the pending migrations of
/// `known` in it, inside the caller's transaction and under the advisory
/// lock `lock`, so that concurrent openers wait for each other instead of
/// racing. The caller commits (after its own steps, if any).
pub async fn migrate_postgres<E>(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    lock: i64,
    known: &[Migration],
) -> Result<(), E>
where
    E: From<tokio_postgres::Error> + From<MigrationError>,
{
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    // CREATE SCHEMA IF NOT EXISTS needs the CREATE right on the database
    // even when the schema exists: only ask for it when needed.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
    }
    // The session's search_path named the schema before it existed: set it
    // again for this transaction so unqualified names resolve.
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version INT PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL);"
    ))
    .await?;
    let mut applied = Vec::new();
    for row in tx
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
    {
        let version: i32 = row.try_get(0)?;
        let version =
            u32::try_from(version).map_err(|_| MigrationError::BadVersion(i64::from(version)))?;
        applied.push((version, row.try_get::<_, String>(1)?));
    }
    for m in pending(known, &applied)? {
        let failed = |reason: String| MigrationError::Failed {
            version: m.version,
            name: m.name,
            reason,
        };
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| failed(describe(&e)))?;
        let version =
            i32::try_from(m.version).map_err(|_| failed("version out of range".into()))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES ($1, $2, $3, now())",
            &[&version, &m.name, &m.checksum()],
        )
        .await?;
    }
    Ok(())
}
