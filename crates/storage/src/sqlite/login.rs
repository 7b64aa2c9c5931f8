//! Login factors: passwords and their throttles, trusted login devices,
//! TOTP and passkeys.

use chrono::{DateTime, Utc};
use rempart_domain::AccountId;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::account_exists;
use super::values::{instant_text, optional_instant, parse_instant};
use crate::StorageError;
use crate::auth::checks::{
    check_credential_id, check_phc, check_sealed_secret, not_found, refuse, step_from_i64,
    step_to_i64,
};
use crate::auth::sql::PASSKEY_SELECT;
use crate::auth::{StoredPasskeyRow, StoredTotp, ThrottleEntry, ThrottleInsert, ThrottleScope};

pub(super) fn passkey_row(r: &Row<'_>) -> Result<StoredPasskeyRow, StorageError> {
    Ok(StoredPasskeyRow {
        credential_id: r.get(0)?,
        account_id: AccountId::new(r.get(1)?),
        data: r.get(2)?,
        created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
        last_used_at: optional_instant(r.get(4)?, "last_used_at")?,
    })
}

pub(super) async fn password(
    store: &SqliteStore,
    account_id: AccountId,
) -> Result<Option<(String, String)>, StorageError> {
    store
        .read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT phc, throttle FROM account_password WHERE account_id = ?1",
            )?
            .query_row([account_id.get()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
        })
        .await
}

pub(super) async fn set_password(
    store: &SqliteStore,
    account_id: AccountId,
    phc: &str,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    check_phc(phc)?;
    let phc = phc.to_string();
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO account_password (account_id, phc, set_at)
                     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                     ON CONFLICT (account_id) DO UPDATE SET phc = excluded.phc,
                         set_at = excluded.set_at",
                )?
                .execute(params![account_id.get(), phc, at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
}

pub(super) async fn swap_throttle(
    store: &SqliteStore,
    account_id: AccountId,
    expected: &str,
    next: &str,
) -> Result<bool, StorageError> {
    let (expected, next) = (expected.to_owned(), next.to_owned());
    store
        .write(move |c| {
            let changed = c
            .prepare_cached(
                "UPDATE account_password SET throttle = ?3 WHERE account_id = ?1 AND throttle = ?2",
            )?
            .execute(params![account_id.get(), expected, next])?;
            Ok(changed == 1)
        })
        .await
}

pub(super) async fn trust_login_device(
    store: &SqliteStore,
    digest: &[u8; 32],
    account_id: AccountId,
    at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    replaces: Option<&[u8; 32]>,
) -> Result<(), StorageError> {
    let (digest, replaces) = (*digest, replaces.copied());
    let at = instant_text(at, "at")?;
    let expires_at = instant_text(expires_at, "expires_at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(old) = replaces {
                tx.prepare_cached(
                    "DELETE FROM login_device WHERE digest = ?1 AND account_id = ?2",
                )?
                .execute(params![old.as_slice(), account_id.get()])?;
            }
            tx.prepare_cached(
                "INSERT INTO login_device (digest, account_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![digest.as_slice(), account_id.get(), at, expires_at])?;
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn login_device_throttle(
    store: &SqliteStore,
    digest: &[u8; 32],
    account_id: AccountId,
    now: DateTime<Utc>,
) -> Result<Option<String>, StorageError> {
    let digest = *digest;
    let now = instant_text(now, "now")?;
    store
        .read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT throttle FROM login_device
                 WHERE digest = ?1 AND account_id = ?2 AND expires_at > ?3",
            )?
            .query_row(params![digest.as_slice(), account_id.get(), now], |r| {
                r.get(0)
            })
            .optional()?)
        })
        .await
}

pub(super) async fn swap_login_device_throttle(
    store: &SqliteStore,
    digest: &[u8; 32],
    account_id: AccountId,
    expected: &str,
    next: &str,
) -> Result<bool, StorageError> {
    let (digest, expected, next) = (*digest, expected.to_owned(), next.to_owned());
    store
        .write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE login_device SET throttle = ?4
                     WHERE digest = ?1 AND account_id = ?2 AND throttle = ?3",
                )?
                .execute(params![digest.as_slice(), account_id.get(), expected, next])?;
            Ok(changed == 1)
        })
        .await
}

pub(super) async fn totp(
    store: &SqliteStore,
    account_id: AccountId,
) -> Result<Option<StoredTotp>, StorageError> {
    store
        .read_point(move |c| {
            c.prepare_cached(
                "SELECT sealed_secret, last_step, enrolled_at FROM account_totp
                 WHERE account_id = ?1",
            )?
            .query_and_then([account_id.get()], |r| {
                Ok(StoredTotp {
                    account_id,
                    sealed_secret: r.get(0)?,
                    last_step: step_from_i64(r.get(1)?)?,
                    enrolled_at: parse_instant(&r.get::<_, String>(2)?, "enrolled_at")?,
                })
            })?
            .next()
            .transpose()
        })
        .await
}

pub(super) async fn set_totp(store: &SqliteStore, t: StoredTotp) -> Result<(), StorageError> {
    check_sealed_secret(&t.sealed_secret)?;
    let last_step = t
        .last_step
        .map(|s| step_to_i64(s, "last_step"))
        .transpose()?;
    let enrolled_at = instant_text(t.enrolled_at, "enrolled_at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                     ON CONFLICT (account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                         last_step = excluded.last_step, enrolled_at = excluded.enrolled_at",
                )?
                .execute(params![
                    t.account_id.get(),
                    t.sealed_secret,
                    last_step,
                    enrolled_at
                ])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
}

pub(super) async fn totp_secrets(
    store: &SqliteStore,
    after: AccountId,
    limit: u32,
) -> Result<Vec<(AccountId, Vec<u8>)>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(
                "SELECT account_id, sealed_secret FROM account_totp
                 WHERE account_id > ?1 ORDER BY account_id LIMIT ?2",
            )?
            .query_and_then(params![after.get(), limit], |r| {
                Ok((AccountId::new(r.get(0)?), r.get(1)?))
            })?
            .collect()
        })
        .await
}

pub(super) async fn replace_totp_secret(
    store: &SqliteStore,
    account_id: AccountId,
    old: &[u8],
    new: &[u8],
) -> Result<bool, StorageError> {
    check_sealed_secret(new)?;
    let (old, new) = (old.to_vec(), new.to_vec());
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account_totp SET sealed_secret = ?3
                     WHERE account_id = ?1 AND sealed_secret = ?2",
                )?
                .execute(params![account_id.get(), old, new])?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn accept_totp_step(
    store: &SqliteStore,
    account_id: AccountId,
    step: u64,
) -> Result<bool, StorageError> {
    let step = step_to_i64(step, "step")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account_totp SET last_step = ?2
                     WHERE account_id = ?1 AND (last_step IS NULL OR last_step < ?2)",
                )?
                .execute(params![account_id.get(), step])?;
            Ok(n == 1)
        })
        .await
}

pub(super) async fn passkeys(
    store: &SqliteStore,
    account_id: AccountId,
) -> Result<Vec<StoredPasskeyRow>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(&format!(
                "{PASSKEY_SELECT} WHERE account_id = ?1 ORDER BY created_at, credential_id"
            ))?
            .query_and_then([account_id.get()], passkey_row)?
            .collect()
        })
        .await
}

pub(super) async fn passkey_by_credential(
    store: &SqliteStore,
    credential_id: &[u8],
) -> Result<Option<StoredPasskeyRow>, StorageError> {
    let id = credential_id.to_vec();
    store
        .read_point(move |c| {
            c.prepare_cached(&format!("{PASSKEY_SELECT} WHERE credential_id = ?1"))?
                .query_and_then([id], passkey_row)?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn add_passkey(
    store: &SqliteStore,
    p: StoredPasskeyRow,
) -> Result<(), StorageError> {
    check_credential_id(&p.credential_id)?;
    let created_at = instant_text(p.created_at, "created_at")?;
    let last_used_at = p
        .last_used_at
        .map(|t| instant_text(t, "last_used_at"))
        .transpose()?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, p.account_id.get())? {
                return Err(not_found("account_id", "account"));
            }
            let n = tx
            .prepare_cached(
                "INSERT INTO passkey (credential_id, account_id, data, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                p.credential_id,
                p.account_id.get(),
                p.data,
                created_at,
                last_used_at
            ])?;
            if n != 1 {
                return Err(refuse("credential_id", "already registered"));
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn update_passkey(
    store: &SqliteStore,
    credential_id: &[u8],
    data: &str,
    used_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let (id, data) = (credential_id.to_vec(), data.to_string());
    let used_at = instant_text(used_at, "used_at")?;
    store
        .write(move |c| {
            c.prepare_cached(
                "UPDATE passkey SET data = ?2, last_used_at = ?3 WHERE credential_id = ?1",
            )?
            .execute(params![id, data, used_at])?;
            Ok(())
        })
        .await
}

/// Parameter 6 of the insert when the scope is not bounded.
const UNBOUNDED: i64 = i64::MAX;

pub(super) async fn login_throttle(
    store: &SqliteStore,
    scope: ThrottleScope,
    key: &[u8],
) -> Result<Option<String>, StorageError> {
    let key = key.to_vec();
    store
        .read_point(move |c| {
            Ok(
                c.prepare_cached("SELECT entry FROM login_throttle WHERE scope = ?1 AND key = ?2")?
                    .query_row(params![scope.as_str(), key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
}

pub(super) async fn insert_login_throttle(
    store: &SqliteStore,
    scope: ThrottleScope,
    key: &[u8],
    entry: &ThrottleEntry,
    max_rows: Option<u64>,
) -> Result<ThrottleInsert, StorageError> {
    let (key, entry) = (key.to_vec(), entry.clone());
    let max = max_rows.map_or(UNBOUNDED, |m| i64::try_from(m).unwrap_or(UNBOUNDED));
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO login_throttle (scope, key, entry, forget_at, touched)
                     SELECT ?1, ?2, ?3, ?4, ?5
                     WHERE (SELECT n FROM login_throttle_count WHERE scope = ?1) < ?6
                     ON CONFLICT (scope, key) DO NOTHING",
                )?
                .execute(params![
                    scope.as_str(),
                    key,
                    entry.entry,
                    entry.forget_at,
                    entry.touched,
                    max
                ])?;
            if n == 1 {
                return Ok(ThrottleInsert::Inserted);
            }
            let exists = c
                .prepare_cached("SELECT 1 FROM login_throttle WHERE scope = ?1 AND key = ?2")?
                .exists(params![scope.as_str(), key])?;
            Ok(if exists {
                ThrottleInsert::Exists
            } else {
                ThrottleInsert::Full
            })
        })
        .await
}

pub(super) async fn swap_login_throttle(
    store: &SqliteStore,
    scope: ThrottleScope,
    key: &[u8],
    expected: &str,
    next: Option<&ThrottleEntry>,
) -> Result<bool, StorageError> {
    let (key, expected, next) = (key.to_vec(), expected.to_owned(), next.cloned());
    store
        .write(move |c| {
            let n = match next {
                Some(next) => c
                    .prepare_cached(
                        "UPDATE login_throttle SET entry = ?4, forget_at = ?5, touched = ?6
                         WHERE scope = ?1 AND key = ?2 AND entry = ?3",
                    )?
                    .execute(params![
                        scope.as_str(),
                        key,
                        expected,
                        next.entry,
                        next.forget_at,
                        next.touched
                    ])?,
                None => c
                    .prepare_cached(
                        "DELETE FROM login_throttle WHERE scope = ?1 AND key = ?2 AND entry = ?3",
                    )?
                    .execute(params![scope.as_str(), key, expected])?,
            };
            Ok(n == 1)
        })
        .await
}

pub(super) async fn prune_login_throttles(
    store: &SqliteStore,
    scope: ThrottleScope,
    now_unix: i64,
) -> Result<u64, StorageError> {
    store
        .write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM login_throttle WHERE scope = ?1 AND forget_at <= ?2")?
                .execute(params![scope.as_str(), now_unix])?;
            Ok(n as u64)
        })
        .await
}

pub(super) async fn evict_login_throttle(
    store: &SqliteStore,
    scope: ThrottleScope,
) -> Result<bool, StorageError> {
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM login_throttle WHERE scope = ?1 AND key =
                       (SELECT key FROM login_throttle WHERE scope = ?1 ORDER BY touched LIMIT 1)",
                )?
                .execute(params![scope.as_str()])?;
            Ok(n == 1)
        })
        .await
}
