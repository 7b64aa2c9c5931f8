//! Browser sessions (opened only for an active account), suspension, login
//! ceremonies and the purge of what expired.

use rempart_domain::AccountId;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::account_record;
use super::clients::end_api_clients;
use super::values::{instant_text, optional_instant, parse_instant};
use crate::auth::checks::{check_code, check_session, digest32, not_found, refuse};
use crate::auth::sql::SESSION_SELECT;
use crate::auth::{INACTIVE_SESSION, PURGE_SQL, Purged, StoredSession, Suspension};
use crate::{AccountRecord, StorageError};

// Compares with `+?1`: see "Hot lookups" in the backend's root.
/// A session and its account, by digest.
pub(super) static SESSION_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_SELECT} WHERE s.id_digest = +?1"));

/// Moves a live session's last activity forward, only while its account
/// is active (the state read in the same statement).
pub(super) const TOUCH_SQL: &str = "UPDATE web_session SET last_seen_at = max(last_seen_at, ?2)
     WHERE id_digest = +?1 AND ended_at IS NULL
       AND EXISTS (SELECT 1 FROM account a
                   WHERE a.id = web_session.account_id AND a.state = 'active')";

pub(super) fn session_row(r: &Row<'_>) -> Result<(StoredSession, AccountRecord), StorageError> {
    let session = StoredSession {
        id_digest: digest32(r.get(0)?, "session id digest")?,
        account_id: AccountId::new(r.get(1)?),
        jkt: r.get(2)?,
        method: r.get(3)?,
        created_at: parse_instant(&r.get::<_, String>(4)?, "created_at")?,
        last_seen_at: parse_instant(&r.get::<_, String>(5)?, "last_seen_at")?,
        absolute_expiry: parse_instant(&r.get::<_, String>(6)?, "absolute_expiry")?,
        idle_timeout_secs: r.get(7)?,
        high_risk: r.get(8)?,
        step_up_at: optional_instant(r.get(9)?, "step_up_at")?,
        ended_at: optional_instant(r.get(10)?, "ended_at")?,
        end_reason: r.get(11)?,
    };
    Ok((session, account_record(r, 12)?))
}

pub(super) async fn put_ceremony(
    store: &SqliteStore,
    key: [u8; 32],
    kind: &str,
    payload: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    check_code("kind", kind)?;
    let (kind, payload) = (kind.to_string(), payload.to_string());
    let expires_at = instant_text(expires_at, "expires_at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO ceremony (id, kind, payload, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![&key[..], kind, payload, expires_at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(refuse("key", "a ceremony with this key is already stored"))
            }
        })
        .await
}

pub(super) async fn take_ceremony(
    store: &SqliteStore,
    key: [u8; 32],
    kind: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, StorageError> {
    let kind = kind.to_string();
    let now = crate::instant(now, "now")?;
    store
        .write(move |c| {
            let taken: Option<(String, String)> = c
                .prepare_cached(
                    "DELETE FROM ceremony WHERE id = ?1 AND kind = ?2
                     RETURNING payload, expires_at",
                )?
                .query_row(params![&key[..], kind], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match taken {
                Some((payload, expires_at)) if parse_instant(&expires_at, "expires_at")? > now => {
                    Ok(Some(payload))
                }
                // Expired: gone all the same.
                _ => Ok(None),
            }
        })
        .await
}

pub(super) async fn purge_expired(
    store: &SqliteStore,
    now: DateTime<Utc>,
    sessions_before: DateTime<Utc>,
    limit: u32,
) -> Result<Purged, StorageError> {
    if limit == 0 {
        return Err(refuse("limit", "must be at least 1"));
    }
    let now = instant_text(now, "now")?;
    let sessions_before = instant_text(sessions_before, "sessions_before")?;
    store
        .write(move |c| {
            let mut purged = Purged::default();
            // One statement per table, each its own transaction: the
            // writer is never held for a whole backlog.
            for (table, sql) in PURGE_SQL {
                let before = if table == "sessions" {
                    &sessions_before
                } else {
                    &now
                };
                let n = c
                    .prepare_cached(&sql.replace('$', "?"))?
                    .execute(params![before, limit])? as u64;
                match table {
                    "ceremonies" => purged.ceremonies = n,
                    "replay_keys" => purged.replay_keys = n,
                    "access_tokens" => purged.access_tokens = n,
                    "login_devices" => purged.login_devices = n,
                    _ => purged.sessions = n,
                }
            }
            Ok(purged)
        })
        .await
}

pub(super) async fn insert_session(
    store: &SqliteStore,
    s: StoredSession,
) -> Result<(), StorageError> {
    let (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at) = check_session(&s)?;
    let text = |t: DateTime<Utc>, what| instant_text(t, what);
    let created_at = text(created_at, "created_at")?;
    let last_seen_at = text(last_seen_at, "last_seen_at")?;
    let absolute_expiry = text(absolute_expiry, "absolute_expiry")?;
    let step_up_at = step_up_at.map(|t| text(t, "step_up_at")).transpose()?;
    let ended_at = ended_at.map(|t| text(t, "ended_at")).transpose()?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The single writer orders this with any suspension.
            let state: Option<String> = tx
                .prepare_cached("SELECT state FROM account WHERE id = ?1")?
                .query_row([s.account_id.get()], |r| r.get(0))
                .optional()?;
            match state.as_deref() {
                None => return Err(not_found("account_id", "account")),
                Some("active") => {}
                Some(_) => return Err(refuse("account_id", INACTIVE_SESSION)),
            }
            let n = tx
                .prepare_cached(
                    "INSERT INTO web_session (id_digest, account_id, jkt, method, created_at,
                         last_seen_at, absolute_expiry, idle_timeout_secs, high_risk, step_up_at,
                         ended_at, end_reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    &s.id_digest[..],
                    s.account_id.get(),
                    s.jkt,
                    s.method,
                    created_at,
                    last_seen_at,
                    absolute_expiry,
                    s.idle_timeout_secs,
                    s.high_risk,
                    step_up_at,
                    ended_at,
                    s.end_reason
                ])?;
            if n != 1 {
                return Err(refuse(
                    "id_digest",
                    "a session with this id is already stored",
                ));
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn session(
    store: &SqliteStore,
    id_digest: [u8; 32],
) -> Result<Option<(StoredSession, AccountRecord)>, StorageError> {
    store
        .read_point(move |c| {
            c.prepare_cached(&SESSION_SQL)?
                .query_and_then([&id_digest[..]], session_row)?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn touch_session(
    store: &SqliteStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            c.prepare_cached(TOUCH_SQL)?
                .execute(params![&id_digest[..], at])?;
            Ok(())
        })
        .await
}

pub(super) async fn mark_step_up(
    store: &SqliteStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            c.prepare_cached(
                "UPDATE web_session SET step_up_at = ?2 WHERE id_digest = ?1 AND ended_at IS NULL",
            )?
            .execute(params![&id_digest[..], at])?;
            Ok(())
        })
        .await
}

pub(super) async fn end_session(
    store: &SqliteStore,
    id_digest: [u8; 32],
    at: DateTime<Utc>,
    reason: &str,
) -> Result<bool, StorageError> {
    check_code("reason", reason)?;
    let reason = reason.to_string();
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE id_digest = ?1 AND ended_at IS NULL",
                )?
                .execute(params![&id_digest[..], at, reason])?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn end_sessions_of_account(
    store: &SqliteStore,
    account_id: AccountId,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<u64, StorageError> {
    check_code("reason", reason)?;
    let reason = reason.to_string();
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE account_id = ?1 AND ended_at IS NULL",
                )?
                .execute(params![account_id.get(), at, reason])?;
            Ok(n as u64)
        })
        .await
}

pub(super) async fn suspend_account(
    store: &SqliteStore,
    account_id: AccountId,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<Option<Suspension>, StorageError> {
    check_code("reason", reason)?;
    let reason = reason.to_string();
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE account SET state = 'suspended' WHERE id = ?1 AND state = 'active'",
                )?
                .execute([account_id.get()])?;
            if changed != 1 {
                return Ok(None);
            }
            let sessions = tx
                .prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE account_id = ?1 AND ended_at IS NULL",
                )?
                .execute(params![account_id.get(), at, reason])? as u64;
            let credentials = tx
                .prepare_cached(
                    "UPDATE api_credential SET revoked_at = ?2
                     WHERE account_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![account_id.get(), at])? as u64;
            let (access_tokens, api_clients) = end_api_clients(&tx, account_id, &at)?;
            // No browser stays trusted through a suspension.
            tx.prepare_cached("DELETE FROM login_device WHERE account_id = ?1")?
                .execute([account_id.get()])?;
            tx.commit()?;
            Ok(Some(Suspension {
                sessions,
                credentials,
                api_clients,
                access_tokens,
            }))
        })
        .await
}
