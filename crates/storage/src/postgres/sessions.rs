//! Browser sessions (opened only for an active account), suspension, login
//! ceremonies and the purge of what expired.

use rempart_domain::AccountId;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::account_record;
use super::clients::end_api_clients;
use crate::auth::checks::{check_code, check_session, digest32, not_found, refuse};
use crate::auth::sql::SESSION_SELECT;
use crate::auth::{INACTIVE_SESSION, PURGE_SQL, Purged, StoredSession, Suspension};
use crate::{AccountRecord, StorageError};

/// A session and its account, by digest.
pub(super) static SESSION_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_SELECT} WHERE s.id_digest = $1"));

pub(super) fn session_row(r: &Row) -> Result<(StoredSession, AccountRecord), StorageError> {
    let session = StoredSession {
        id_digest: digest32(r.try_get(0)?, "session id digest")?,
        account_id: AccountId::new(r.try_get(1)?),
        jkt: r.try_get(2)?,
        method: r.try_get(3)?,
        created_at: r.try_get(4)?,
        last_seen_at: r.try_get(5)?,
        absolute_expiry: r.try_get(6)?,
        idle_timeout_secs: r.try_get(7)?,
        high_risk: r.try_get(8)?,
        step_up_at: r.try_get(9)?,
        ended_at: r.try_get(10)?,
        end_reason: r.try_get(11)?,
    };
    Ok((session, account_record(r, 12)?))
}

pub(super) async fn put_ceremony(
    store: &PgStore,
    key: [u8; 32],
    kind: &str,
    payload: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    check_code("kind", kind)?;
    let expires_at = crate::instant(expires_at, "expires_at")?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO ceremony (id, kind, payload, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let key: &[u8] = &key;
    let n = client
        .execute(&stmt, &[&key, &kind, &payload, &expires_at])
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(refuse("key", "a ceremony with this key is already stored"))
    }
}

pub(super) async fn take_ceremony(
    store: &PgStore,
    key: [u8; 32],
    kind: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, StorageError> {
    let now = crate::instant(now, "now")?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM ceremony WHERE id = $1 AND kind = $2 RETURNING payload, expires_at",
        )
        .await?;
    let key: &[u8] = &key;
    let Some(row) = client.query_opt(&stmt, &[&key, &kind]).await? else {
        return Ok(None);
    };
    let expires_at: DateTime<Utc> = row.try_get(1)?;
    // Expired: gone all the same.
    Ok((expires_at > now).then(|| row.try_get(0)).transpose()?)
}

pub(super) async fn purge_expired(
    store: &PgStore,
    now: DateTime<Utc>,
    sessions_before: DateTime<Utc>,
    limit: u32,
) -> Result<Purged, StorageError> {
    if limit == 0 {
        return Err(refuse("limit", "must be at least 1"));
    }
    let now = crate::instant(now, "now")?;
    let sessions_before = crate::instant(sessions_before, "sessions_before")?;
    let limit = i64::from(limit);
    let client = store.client().await?;
    let mut purged = Purged::default();
    // One statement per table, each its own transaction: no lock is
    // held across tables or for a whole backlog.
    for (table, sql) in PURGE_SQL {
        let before = if table == "sessions" {
            &sessions_before
        } else {
            &now
        };
        let stmt = client.prepare_cached(sql).await?;
        let n = client.execute(&stmt, &[before, &limit]).await?;
        match table {
            "ceremonies" => purged.ceremonies = n,
            "replay_keys" => purged.replay_keys = n,
            "access_tokens" => purged.access_tokens = n,
            "login_devices" => purged.login_devices = n,
            _ => purged.sessions = n,
        }
    }
    Ok(purged)
}

pub(super) async fn insert_session(store: &PgStore, s: StoredSession) -> Result<(), StorageError> {
    let (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at) = check_session(&s)?;
    let client = store.client().await?;
    let digest: &[u8] = &s.id_digest;
    let n = client
        .execute(
            "INSERT INTO web_session (id_digest, account_id, jkt, method, created_at,
                 last_seen_at, absolute_expiry, idle_timeout_secs, high_risk, step_up_at,
                 ended_at, end_reason)
             SELECT $1::bytea, $2::int8, $3::text, $4::text, $5::timestamptz,
                 $6::timestamptz, $7::timestamptz, $8::int8, $9::bool, $10::timestamptz,
                 $11::timestamptz, $12::text
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $2 AND state = 'active'
                           FOR SHARE)
             ON CONFLICT DO NOTHING",
            &[
                &digest,
                &s.account_id.get(),
                &s.jkt,
                &s.method,
                &created_at,
                &last_seen_at,
                &absolute_expiry,
                &s.idle_timeout_secs,
                &s.high_risk,
                &step_up_at,
                &ended_at,
                &s.end_reason,
            ],
        )
        .await?;
    if n == 1 {
        return Ok(());
    }
    // FOR SHARE above waits for a suspension under way and reads its
    // outcome: the session is inserted before it (and ended by it) or
    // not at all.
    let state: Option<String> = client
        .query_opt(
            "SELECT state FROM account WHERE id = $1",
            &[&s.account_id.get()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match state.as_deref() {
        None => Err(not_found("account_id", "account")),
        Some("active") => Err(refuse(
            "id_digest",
            "a session with this id is already stored",
        )),
        Some(_) => Err(refuse("account_id", INACTIVE_SESSION)),
    }
}

pub(super) async fn session(
    store: &PgStore,
    id_digest: [u8; 32],
) -> Result<Option<(StoredSession, AccountRecord)>, StorageError> {
    let client = store.client().await?;
    let stmt = client.prepare_cached(&SESSION_SQL).await?;
    let digest: &[u8] = &id_digest;
    client
        .query_opt(&stmt, &[&digest])
        .await?
        .map(|r| session_row(&r))
        .transpose()
}

pub(super) async fn touch_session(
    store: &PgStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE web_session SET last_seen_at = GREATEST(last_seen_at, $2)
             WHERE id_digest = $1 AND ended_at IS NULL
               AND EXISTS (SELECT 1 FROM account a
                           WHERE a.id = web_session.account_id AND a.state = 'active')",
        )
        .await?;
    let digest: &[u8] = &id_digest;
    client.execute(&stmt, &[&digest, &at]).await?;
    Ok(())
}

pub(super) async fn mark_step_up(
    store: &PgStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let digest: &[u8] = &id_digest;
    client
        .execute(
            "UPDATE web_session SET step_up_at = $2 WHERE id_digest = $1 AND ended_at IS NULL",
            &[&digest, &at],
        )
        .await?;
    Ok(())
}

pub(super) async fn end_session(
    store: &PgStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
    reason: &str,
) -> Result<bool, StorageError> {
    check_code("reason", reason)?;
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let digest: &[u8] = &id_digest;
    let n = client
        .execute(
            "UPDATE web_session SET ended_at = $2, end_reason = $3
             WHERE id_digest = $1 AND ended_at IS NULL",
            &[&digest, &at, &reason],
        )
        .await?;
    Ok(n == 1)
}

pub(super) async fn end_sessions_of_account(
    store: &PgStore,
    account_id: AccountId,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<u64, StorageError> {
    check_code("reason", reason)?;
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    Ok(client
        .execute(
            "UPDATE web_session SET ended_at = $2, end_reason = $3
             WHERE account_id = $1 AND ended_at IS NULL",
            &[&account_id.get(), &at, &reason],
        )
        .await?)
}

pub(super) async fn suspend_account(
    store: &PgStore,
    account_id: AccountId,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<Option<Suspension>, StorageError> {
    check_code("reason", reason)?;
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // The compare-and-set first: it locks the account's row, so of two
    // racing suspensions one ends everything and the other is `None`.
    let changed = tx
        .execute(
            "UPDATE account SET state = 'suspended' WHERE id = $1 AND state = 'active'",
            &[&account_id.get()],
        )
        .await?;
    if changed != 1 {
        return Ok(None);
    }
    let sessions = tx
        .execute(
            "UPDATE web_session SET ended_at = $2, end_reason = $3
             WHERE account_id = $1 AND ended_at IS NULL",
            &[&account_id.get(), &at, &reason],
        )
        .await?;
    let credentials = tx
        .execute(
            "UPDATE api_credential SET revoked_at = $2
             WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id.get(), &at],
        )
        .await?;
    let (access_tokens, api_clients) = end_api_clients(&tx, account_id, at).await?;
    // No browser stays trusted through a suspension.
    tx.execute(
        "DELETE FROM login_device WHERE account_id = $1",
        &[&account_id.get()],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Suspension {
        sessions,
        credentials,
        api_clients,
        access_tokens,
    }))
}
