//! API clients, their DPoP-bound access tokens, and replay keys.

use rempart_domain::AccountId;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::{account_exists, account_record};
use super::values::{instant_text, optional_instant, parse_instant};
use crate::auth::checks::{
    check_access_token, check_client_id, check_replay_period, digest32, not_found, refuse,
};
use crate::auth::sql::{ACCESS_TOKEN_SELECT, API_CLIENT_SELECT};
use crate::auth::{AccessTokenRow, ApiClientRow};
use crate::{AccountRecord, StorageError};

// Compares with `+?1`: see "Hot lookups" in the backend's root.
/// An access token of a live client, and its account, by digest.
pub(super) static ACCESS_TOKEN_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{ACCESS_TOKEN_SELECT} WHERE t.digest = +?1"));

/// Inserts a replay key, or takes over an expired one; changes nothing if
/// a live one exists. The single writer serialises it.
pub(super) const REPLAY_SQL: &str = "INSERT INTO replay_key (digest, expires_at) VALUES (?1, ?2)
     ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at
     WHERE replay_key.expires_at <= ?3";

pub(super) fn api_client_row(r: &Row<'_>) -> Result<(ApiClientRow, AccountRecord), StorageError> {
    let client = ApiClientRow {
        client_id: r.get(0)?,
        account_id: AccountId::new(r.get(1)?),
        keys: r.get(2)?,
        created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
        revoked_at: optional_instant(r.get(4)?, "revoked_at")?,
    };
    Ok((client, account_record(r, 5)?))
}

pub(super) fn access_token_row(
    r: &Row<'_>,
) -> Result<(AccessTokenRow, AccountRecord), StorageError> {
    let token = AccessTokenRow {
        digest: digest32(r.get(0)?, "access token digest")?,
        client_id: r.get(1)?,
        account_id: AccountId::new(r.get(2)?),
        jkt: r.get(3)?,
        scope: r.get(4)?,
        issued_at: parse_instant(&r.get::<_, String>(5)?, "issued_at")?,
        expires_at: parse_instant(&r.get::<_, String>(6)?, "expires_at")?,
    };
    Ok((token, account_record(r, 7)?))
}

pub(super) async fn insert_api_client(
    store: &SqliteStore,
    cl: ApiClientRow,
) -> Result<(), StorageError> {
    check_client_id(&cl.client_id)?;
    let created_at = instant_text(cl.created_at, "created_at")?;
    let revoked_at = cl
        .revoked_at
        .map(|t| instant_text(t, "revoked_at"))
        .transpose()?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, cl.account_id.get())? {
                return Err(not_found("account_id", "account"));
            }
            let n = tx
                .prepare_cached(
                    "INSERT INTO api_client (client_id, account_id, public_keys, created_at,
                         revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    cl.client_id,
                    cl.account_id.get(),
                    cl.keys,
                    created_at,
                    revoked_at
                ])?;
            if n != 1 {
                return Err(refuse("client_id", "already registered"));
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn api_client(
    store: &SqliteStore,
    client_id: &str,
) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError> {
    let client_id = client_id.to_string();
    store
        .read_point(move |c| {
            c.prepare_cached(&format!("{API_CLIENT_SELECT} WHERE c.client_id = ?1"))?
                .query_and_then([client_id], api_client_row)?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn revoke_api_clients_of_account(
    store: &SqliteStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (_, revoked) = end_api_clients(&tx, account_id, &at)?;
            tx.commit()?;
            Ok(revoked)
        })
        .await
}

pub(super) async fn revoke_api_client(
    store: &SqliteStore,
    client_id: &str,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let client_id = client_id.to_string();
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx
                .prepare_cached(
                    "UPDATE api_client SET revoked_at = ?2
                     WHERE client_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![client_id, at])?;
            tx.prepare_cached("DELETE FROM access_token WHERE client_id = ?1")?
                .execute([&client_id])?;
            tx.commit()?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn insert_access_token(
    store: &SqliteStore,
    t: AccessTokenRow,
) -> Result<(), StorageError> {
    let (issued_at, expires_at) = check_access_token(&t)?;
    let issued_at = instant_text(issued_at, "issued_at")?;
    let expires_at = instant_text(expires_at, "expires_at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = tx
                .prepare_cached(
                    "SELECT 1 FROM api_client
                     WHERE client_id = ?1 AND account_id = ?2 AND revoked_at IS NULL",
                )?
                .query_row(params![t.client_id, t.account_id.get()], |_| Ok(()))
                .optional()?;
            if live.is_none() {
                return Err(refuse(
                    "client_id",
                    "no such client acting for this account, or revoked",
                ));
            }
            let n = tx
                .prepare_cached(
                    "INSERT INTO access_token (digest, client_id, account_id, jkt, scope,
                         issued_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    &t.digest[..],
                    t.client_id,
                    t.account_id.get(),
                    t.jkt,
                    t.scope,
                    issued_at,
                    expires_at
                ])?;
            if n != 1 {
                return Err(refuse(
                    "digest",
                    "a token with this digest is already stored",
                ));
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn access_token(
    store: &SqliteStore,
    digest: [u8; 32],
) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError> {
    store
        .read_point(move |c| {
            c.prepare_cached(&ACCESS_TOKEN_SQL)?
                .query_and_then([&digest[..]], access_token_row)?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn insert_replay_if_new(
    store: &SqliteStore,
    key: [u8; 32],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let (expires_at, now) = check_replay_period(expires_at, now)?;
    let expires_at = instant_text(expires_at, "expires_at")?;
    let now = instant_text(now, "now")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(REPLAY_SQL)?
                .execute(params![&key[..], expires_at, now])?;
            Ok(n == 1)
        })
        .await
}

/// Ends an account's API clients inside the caller's transaction: their
/// access tokens deleted, the clients revoked. Returns (tokens, clients).
pub(super) fn end_api_clients(
    tx: &rusqlite::Transaction<'_>,
    account_id: AccountId,
    at: &str,
) -> Result<(u64, u64), StorageError> {
    let tokens = tx
        .prepare_cached(
            "DELETE FROM access_token WHERE client_id IN
               (SELECT client_id FROM api_client WHERE account_id = ?1)",
        )?
        .execute([account_id.get()])?;
    let clients = tx
        .prepare_cached(
            "UPDATE api_client SET revoked_at = ?2
             WHERE account_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![account_id.get(), at])?;
    Ok((tokens as u64, clients as u64))
}
