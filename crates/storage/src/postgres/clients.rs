//! API clients, their DPoP-bound access tokens, and replay keys.

use rempart_domain::AccountId;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::{account_exists, account_record};
use crate::auth::checks::{
    check_access_token, check_client_id, check_replay_period, digest32, not_found, refuse,
};
use crate::auth::sql::{ACCESS_TOKEN_SELECT, API_CLIENT_SELECT};
use crate::auth::{AccessTokenRow, ApiClientRow};
use crate::{AccountRecord, StorageError};

/// An access token of a live client, and its account, by digest.
pub(super) static ACCESS_TOKEN_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{ACCESS_TOKEN_SELECT} WHERE t.digest = $1"));

/// Inserts a replay key, or takes over an expired one; changes nothing if
/// a live one exists. Concurrent inserts of one key wait on the first
/// one's row, then see it live: exactly one changes a row.
pub(super) const REPLAY_SQL: &str = "INSERT INTO replay_key (digest, expires_at) VALUES ($1, $2)
     ON CONFLICT (digest) DO UPDATE SET expires_at = EXCLUDED.expires_at
     WHERE replay_key.expires_at <= $3";

pub(super) fn api_client_row(r: &Row) -> Result<(ApiClientRow, AccountRecord), StorageError> {
    let client = ApiClientRow {
        client_id: r.try_get(0)?,
        account_id: AccountId::new(r.try_get(1)?),
        keys: r.try_get(2)?,
        created_at: r.try_get(3)?,
        revoked_at: r.try_get(4)?,
    };
    Ok((client, account_record(r, 5)?))
}

pub(super) fn access_token_row(r: &Row) -> Result<(AccessTokenRow, AccountRecord), StorageError> {
    let token = AccessTokenRow {
        digest: digest32(r.try_get(0)?, "access token digest")?,
        client_id: r.try_get(1)?,
        account_id: AccountId::new(r.try_get(2)?),
        jkt: r.try_get(3)?,
        scope: r.try_get(4)?,
        issued_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
    };
    Ok((token, account_record(r, 7)?))
}

pub(super) async fn insert_api_client(
    store: &PgStore,
    cl: ApiClientRow,
) -> Result<(), StorageError> {
    check_client_id(&cl.client_id)?;
    let created_at = crate::instant(cl.created_at, "created_at")?;
    let revoked_at = cl
        .revoked_at
        .map(|t| crate::instant(t, "revoked_at"))
        .transpose()?;
    let client = store.client().await?;
    let n = client
        .execute(
            "INSERT INTO api_client (client_id, account_id, public_keys, created_at,
                 revoked_at)
             SELECT $1::text, $2::int8, $3::text, $4::timestamptz, $5::timestamptz
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $2)
             ON CONFLICT DO NOTHING",
            &[
                &cl.client_id,
                &cl.account_id.get(),
                &cl.keys,
                &created_at,
                &revoked_at,
            ],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else if account_exists(&**client, cl.account_id.get()).await? {
        Err(refuse("client_id", "already registered"))
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn api_client(
    store: &PgStore,
    client_id: &str,
) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!("{API_CLIENT_SELECT} WHERE c.client_id = $1"))
        .await?;
    client
        .query_opt(&stmt, &[&client_id])
        .await?
        .map(|r| api_client_row(&r))
        .transpose()
}

pub(super) async fn revoke_api_clients_of_account(
    store: &PgStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let (_, revoked) = end_api_clients(&tx, account_id, at).await?;
    tx.commit().await?;
    Ok(revoked)
}

pub(super) async fn revoke_api_client(
    store: &PgStore,
    client_id: &str,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE api_client SET revoked_at = $2
             WHERE client_id = $1 AND revoked_at IS NULL",
            &[&client_id, &at],
        )
        .await?;
    tx.execute(
        "DELETE FROM access_token WHERE client_id = $1",
        &[&client_id],
    )
    .await?;
    tx.commit().await?;
    Ok(n == 1)
}

pub(super) async fn insert_access_token(
    store: &PgStore,
    t: AccessTokenRow,
) -> Result<(), StorageError> {
    let (issued_at, expires_at) = check_access_token(&t)?;
    let client = store.client().await?;
    let digest: &[u8] = &t.digest;
    let stmt = client
        .prepare_cached(
            "INSERT INTO access_token (digest, client_id, account_id, jkt, scope, issued_at,
                 expires_at)
             SELECT $1::bytea, $2::text, $3::int8, $4::text, $5::text, $6::timestamptz,
                 $7::timestamptz
             WHERE EXISTS (SELECT 1 FROM api_client
                           WHERE client_id = $2 AND account_id = $3 AND revoked_at IS NULL)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let n = client
        .execute(
            &stmt,
            &[
                &digest,
                &t.client_id,
                &t.account_id.get(),
                &t.jkt,
                &t.scope,
                &issued_at,
                &expires_at,
            ],
        )
        .await?;
    if n == 1 {
        return Ok(());
    }
    let live = client
        .query_opt(
            "SELECT 1 FROM api_client
             WHERE client_id = $1 AND account_id = $2 AND revoked_at IS NULL",
            &[&t.client_id, &t.account_id.get()],
        )
        .await?;
    Err(match live {
        None => refuse(
            "client_id",
            "no such client acting for this account, or revoked",
        ),
        Some(_) => refuse("digest", "a token with this digest is already stored"),
    })
}

pub(super) async fn access_token(
    store: &PgStore,
    digest: [u8; 32],
) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError> {
    let client = store.client().await?;
    let stmt = client.prepare_cached(&ACCESS_TOKEN_SQL).await?;
    let digest: &[u8] = &digest;
    client
        .query_opt(&stmt, &[&digest])
        .await?
        .map(|r| access_token_row(&r))
        .transpose()
}

pub(super) async fn insert_replay_if_new(
    store: &PgStore,
    key: [u8; 32],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let (expires_at, now) = check_replay_period(expires_at, now)?;
    let client = store.client().await?;
    let stmt = client.prepare_cached(REPLAY_SQL).await?;
    let key: &[u8] = &key;
    let n = client.execute(&stmt, &[&key, &expires_at, &now]).await?;
    Ok(n == 1)
}

/// Ends an account's API clients inside the caller's transaction: their
/// access tokens deleted, the clients revoked. Returns (tokens, clients).
pub(super) async fn end_api_clients(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<(u64, u64), StorageError> {
    let tokens = tx
        .execute(
            "DELETE FROM access_token WHERE client_id IN
               (SELECT client_id FROM api_client WHERE account_id = $1)",
            &[&account_id.get()],
        )
        .await?;
    let clients = tx
        .execute(
            "UPDATE api_client SET revoked_at = $2
             WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id.get(), &at],
        )
        .await?;
    Ok((tokens, clients))
}
