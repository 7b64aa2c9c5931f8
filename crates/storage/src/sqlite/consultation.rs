//! What a consultation reads: API credentials (with their kept copies) and
//! the one-round-trip read of a person's rows.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, FieldGroup, PersonId};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::accounts::account_record;
use super::mandates::mandates_rows;
use super::persons::person_row;
use super::values::{instant_text, optional_instant, parse_instant};
use crate::memory::{CredentialRow, Credentials};
use crate::{
    AccountRecord, CREDENTIAL_SELECT, ConsultationRows, StorageError, StoredCredential,
    credential_period, digest,
};

// Compares with `+?1`: see "Hot lookups" in the backend's root.

/// The credential and its account, by credential id.
pub(super) static CREDENTIAL_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{CREDENTIAL_SELECT} WHERE c.id = +?1"));

/// A credential and its account.
pub(super) fn credential_row(
    c: &Connection,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    c.prepare_cached(&CREDENTIAL_SQL)?
        .query_and_then([id], |r| {
            let credential = StoredCredential {
                id: r.get(0)?,
                account_id: AccountId::new(r.get(1)?),
                secret_digest: digest(r.get(2)?)?,
                created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
                expires_at: parse_instant(&r.get::<_, String>(4)?, "expires_at")?,
                revoked_at: optional_instant(r.get(5)?, "revoked_at")?,
            };
            Ok((credential, account_record(r, 6)?))
        })?
        .next()
        .transpose()
}

/// A credential and its account, from [`Credentials`] while the access
/// version has not moved, else from the rows (kept for the next request).
/// The version is read first: a change committed between the two reads
/// moves it, so the copy can only be newer than its version, never older.
pub(super) fn checked_credential(
    c: &Connection,
    credentials: &Credentials,
    id: i64,
) -> Result<Option<CredentialRow>, StorageError> {
    let version: i64 = c
        .prepare_cached("SELECT version FROM access_version WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    if let Some(kept) = credentials.get(id, version) {
        return Ok(Some(kept));
    }
    let row = credential_row(c, id)?;
    if let Some(row) = &row {
        credentials.put(version, row);
    }
    Ok(row)
}

pub(super) async fn insert_credential(
    store: &SqliteStore,
    account_id: AccountId,
    secret_digest: [u8; 32],
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let (created_at, expires_at) = credential_period(created_at, expires_at)?;
    let created_at = instant_text(created_at, "created_at")?;
    let expires_at = instant_text(expires_at, "expires_at")?;
    store
        .write(move |c| {
            c.prepare_cached(
                "INSERT INTO api_credential (account_id, secret_digest, created_at, expires_at)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                 RETURNING id",
            )?
            .query_row(
                params![account_id.get(), &secret_digest[..], created_at, expires_at],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .ok_or_else(|| crate::auth::checks::not_found("account_id", "account"))
        })
        .await
}

pub(super) async fn credential(
    store: &SqliteStore,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    let inner = store.inner.clone();
    store
        .read_point(move |c| checked_credential(c, &inner.credentials, id))
        .await
}

pub(super) async fn consultation_rows(
    store: &SqliteStore,
    credential_id: i64,
    person_id: PersonId,
) -> Result<ConsultationRows, StorageError> {
    let inner = store.inner.clone();
    store
        .read_point(move |c| {
            // One read transaction: one snapshot, one round of WAL locks
            // instead of three.
            c.prepare_cached("BEGIN")?.execute([])?;
            let rows = (|| -> Result<ConsultationRows, StorageError> {
                Ok(ConsultationRows {
                    credential: match credential_id {
                        // No credential has id 0: the caller came another way.
                        0 => None,
                        id => checked_credential(c, &inner.credentials, id)?,
                    },
                    mandates: mandates_rows(c, &inner.names, person_id)?,
                    person: person_row(c, person_id, FieldGroup::ALL)?,
                })
            })();
            let end = c.prepare_cached("COMMIT").and_then(|mut s| s.execute([]));
            let rows = rows?;
            end?;
            Ok(rows)
        })
        .await
}

pub(super) async fn revoke_credentials(
    store: &SqliteStore,
    account_id: AccountId,
    id: Option<i64>,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE api_credential SET revoked_at = ?3
                     WHERE account_id = ?1 AND (?2 IS NULL OR id = ?2) AND revoked_at IS NULL",
                )?
                .execute(params![account_id.get(), id, at])?;
            Ok(n as u64)
        })
        .await
}
