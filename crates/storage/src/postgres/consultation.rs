//! What a consultation reads: API credentials (with their kept copies) and
//! the one-round-trip read of a person's rows.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, FieldGroup, PersonId};

use super::PgStore;
use super::accounts::account_record;
use super::mandates::stored_mandate;
use super::persons::person_at;
use crate::memory::{CredentialRow, Credentials};
use crate::{
    AccountRecord, CREDENTIAL_SELECT, ConsultationRows, MANDATE_COLUMNS, StorageError,
    StoredCredential, credential_period, digest, group_column,
};

/// Columns of [`MANDATE_COLUMNS`].
const MANDATE_COLUMN_COUNT: usize = 10;

/// Everything a consultation reads about a person, in one statement: the
/// mandates on it (in id order, one row each, or one row of NULLs when
/// there is none), then on every row the access version and the person's
/// data key and sealed groups (NULL when there is no such person).
static CONSULTATION_SQL: LazyLock<String> = LazyLock::new(|| {
    let mandate: Vec<String> = MANDATE_COLUMNS
        .split(',')
        .map(|c| format!("m.{}", c.trim()))
        .collect();
    let groups: Vec<String> = FieldGroup::ALL
        .iter()
        .map(|g| format!("p.{}", group_column(*g)))
        .collect();
    format!(
        "SELECT {}, (SELECT version FROM access_version WHERE id = 1),
                p.kek_version, p.dek_version, p.wrapped_dek, {}
         FROM (SELECT $1::int8 AS id) k
         LEFT JOIN person p ON p.id = k.id
         LEFT JOIN mandate m ON m.person_id = k.id
         ORDER BY m.id",
        mandate.join(", "),
        groups.join(", ")
    )
});

pub(super) async fn insert_credential(
    store: &PgStore,
    account_id: AccountId,
    secret_digest: [u8; 32],
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let (created_at, expires_at) = credential_period(created_at, expires_at)?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO api_credential (account_id, secret_digest, created_at, expires_at)
             SELECT $1::int8, $2::bytea, $3::timestamptz, $4::timestamptz
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
             RETURNING id",
        )
        .await?;
    let digest: &[u8] = &secret_digest;
    let row = client
        .query_opt(
            &stmt,
            &[&account_id.get(), &digest, &created_at, &expires_at],
        )
        .await?
        .ok_or_else(|| crate::auth::checks::not_found("account_id", "account"))?;
    Ok(row.try_get(0)?)
}

pub(super) async fn credential(
    store: &PgStore,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    let client = store.client().await?;
    let version = access_version(&client).await?;
    checked_credential(&client, &store.credentials, version, id).await
}

pub(super) async fn consultation_rows(
    store: &PgStore,
    credential_id: i64,
    person_id: PersonId,
) -> Result<ConsultationRows, StorageError> {
    // One statement: one round trip, one (read-only) transaction, where
    // three pipelined statements were three of each and PostgreSQL's
    // largest cost per consultation. The credential comes from memory
    // while the access version has not moved (a second trip when it has).
    let client = store.client().await?;
    let stmt = client.prepare_cached(&CONSULTATION_SQL).await?;
    let rows = client.query(&stmt, &[&person_id.get()]).await?;
    let Some(first) = rows.first() else {
        return Err(StorageError::Corrupt(
            "access_version: the row is missing".into(),
        ));
    };
    let version: i64 = first.try_get(MANDATE_COLUMN_COUNT)?;
    let person = person_at(first, MANDATE_COLUMN_COUNT + 1, person_id, FieldGroup::ALL)?;
    let mut mandates = Vec::with_capacity(rows.len());
    for r in &rows {
        // No mandate: the one row has NULL for every mandate column.
        if r.try_get::<_, Option<i64>>(0)?.is_some() {
            mandates.push(stored_mandate(&client, &store.names, r).await?);
        }
    }
    let credential = match credential_id {
        // No credential has id 0: the caller came another way.
        0 => None,
        id => checked_credential(&client, &store.credentials, version, id).await?,
    };
    Ok(ConsultationRows {
        credential,
        mandates,
        person,
    })
}

pub(super) async fn revoke_credentials(
    store: &PgStore,
    account_id: AccountId,
    id: Option<i64>,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE api_credential SET revoked_at = $3
             WHERE account_id = $1 AND ($2::int8 IS NULL OR id = $2) AND revoked_at IS NULL",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&account_id.get(), &id, &at])
        .await?)
}

/// The access version (see [`Credentials`]).
pub(super) async fn access_version(
    client: &deadpool_postgres::ClientWrapper,
) -> Result<i64, StorageError> {
    let stmt = client
        .prepare_cached("SELECT version FROM access_version WHERE id = 1")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

/// A credential and its account, from [`Credentials`] if it was read under
/// `version`, else from the rows (kept for the next request). `version`
/// must have been read before this call: a change committed since moves
/// it, so the copy kept can only be newer than its version, never older.
pub(super) async fn checked_credential(
    client: &deadpool_postgres::ClientWrapper,
    credentials: &Credentials,
    version: i64,
    id: i64,
) -> Result<Option<CredentialRow>, StorageError> {
    if let Some(kept) = credentials.get(id, version) {
        return Ok(Some(kept));
    }
    let row = credential_row(client, id).await?;
    if let Some(row) = &row {
        credentials.put(version, row);
    }
    Ok(row)
}

/// A credential and its account.
pub(super) async fn credential_row(
    client: &deadpool_postgres::ClientWrapper,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    let stmt = client
        .prepare_cached(&format!("{CREDENTIAL_SELECT} WHERE c.id = $1"))
        .await?;
    let Some(r) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let credential = StoredCredential {
        id: r.try_get(0)?,
        account_id: AccountId::new(r.try_get(1)?),
        secret_digest: digest(r.try_get(2)?)?,
        created_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    };
    Ok(Some((credential, account_record(&r, 6)?)))
}
