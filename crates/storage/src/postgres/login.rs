//! Login factors: passwords and their throttles, trusted login devices,
//! TOTP and passkeys.

use chrono::{DateTime, Utc};
use rempart_domain::AccountId;
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::account_exists;
use crate::StorageError;
use crate::auth::checks::{
    check_credential_id, check_phc, check_sealed_secret, not_found, refuse, step_from_i64,
    step_to_i64,
};
use crate::auth::sql::PASSKEY_SELECT;
use crate::auth::{StoredPasskeyRow, StoredTotp, ThrottleEntry, ThrottleInsert, ThrottleScope};

pub(super) fn passkey_row(r: &Row) -> Result<StoredPasskeyRow, StorageError> {
    Ok(StoredPasskeyRow {
        credential_id: r.try_get(0)?,
        account_id: AccountId::new(r.try_get(1)?),
        data: r.try_get(2)?,
        created_at: r.try_get(3)?,
        last_used_at: r.try_get(4)?,
    })
}

pub(super) async fn password(
    store: &PgStore,
    account_id: AccountId,
) -> Result<Option<(String, String)>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT phc, throttle FROM account_password WHERE account_id = $1")
        .await?;
    client
        .query_opt(&stmt, &[&account_id.get()])
        .await?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
}

pub(super) async fn set_password(
    store: &PgStore,
    account_id: AccountId,
    phc: &str,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    check_phc(phc)?;
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let n = client
        .execute(
            "INSERT INTO account_password (account_id, phc, set_at)
             SELECT $1::int8, $2::text, $3::timestamptz
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
             ON CONFLICT (account_id) DO UPDATE SET phc = EXCLUDED.phc,
                 set_at = EXCLUDED.set_at",
            &[&account_id.get(), &phc, &at],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn swap_throttle(
    store: &PgStore,
    account_id: AccountId,
    expected: &str,
    next: &str,
) -> Result<bool, StorageError> {
    let client = store.client().await?;
    let changed = client
        .execute(
            "UPDATE account_password SET throttle = $3 WHERE account_id = $1 AND throttle = $2",
            &[&account_id.get(), &expected, &next],
        )
        .await?;
    Ok(changed == 1)
}

pub(super) async fn trust_login_device(
    store: &PgStore,
    digest: &[u8; 32],
    account_id: AccountId,
    at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    replaces: Option<&[u8; 32]>,
) -> Result<(), StorageError> {
    let at = crate::instant(at, "at")?;
    let expires_at = crate::instant(expires_at, "expires_at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    if let Some(old) = replaces {
        tx.execute(
            "DELETE FROM login_device WHERE digest = $1 AND account_id = $2",
            &[&old.as_slice(), &account_id.get()],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO login_device (digest, account_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
        &[&digest.as_slice(), &account_id.get(), &at, &expires_at],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn login_device_throttle(
    store: &PgStore,
    digest: &[u8; 32],
    account_id: AccountId,
    now: DateTime<Utc>,
) -> Result<Option<String>, StorageError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT throttle FROM login_device
             WHERE digest = $1 AND account_id = $2 AND expires_at > $3",
            &[&digest.as_slice(), &account_id.get(), &now],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

pub(super) async fn swap_login_device_throttle(
    store: &PgStore,
    digest: &[u8; 32],
    account_id: AccountId,
    expected: &str,
    next: &str,
) -> Result<bool, StorageError> {
    let client = store.client().await?;
    let changed = client
        .execute(
            "UPDATE login_device SET throttle = $4
             WHERE digest = $1 AND account_id = $2 AND throttle = $3",
            &[&digest.as_slice(), &account_id.get(), &expected, &next],
        )
        .await?;
    Ok(changed == 1)
}

pub(super) async fn totp(
    store: &PgStore,
    account_id: AccountId,
) -> Result<Option<StoredTotp>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT sealed_secret, last_step, enrolled_at FROM account_totp
             WHERE account_id = $1",
        )
        .await?;
    client
        .query_opt(&stmt, &[&account_id.get()])
        .await?
        .map(|r| {
            Ok(StoredTotp {
                account_id,
                sealed_secret: r.try_get(0)?,
                last_step: step_from_i64(r.try_get(1)?)?,
                enrolled_at: r.try_get(2)?,
            })
        })
        .transpose()
}

pub(super) async fn set_totp(store: &PgStore, t: StoredTotp) -> Result<(), StorageError> {
    check_sealed_secret(&t.sealed_secret)?;
    let last_step = t
        .last_step
        .map(|s| step_to_i64(s, "last_step"))
        .transpose()?;
    let enrolled_at = crate::instant(t.enrolled_at, "enrolled_at")?;
    let client = store.client().await?;
    let n = client
        .execute(
            "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
             SELECT $1::int8, $2::bytea, $3::int8, $4::timestamptz
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
             ON CONFLICT (account_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret,
                 last_step = EXCLUDED.last_step, enrolled_at = EXCLUDED.enrolled_at",
            &[
                &t.account_id.get(),
                &t.sealed_secret,
                &last_step,
                &enrolled_at,
            ],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn totp_secrets(
    store: &PgStore,
    after: AccountId,
    limit: u32,
) -> Result<Vec<(AccountId, Vec<u8>)>, StorageError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT account_id, sealed_secret FROM account_totp
             WHERE account_id > $1 ORDER BY account_id LIMIT $2",
            &[&after.get(), &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((AccountId::new(r.try_get(0)?), r.try_get(1)?)))
        .collect()
}

pub(super) async fn replace_totp_secret(
    store: &PgStore,
    account_id: AccountId,
    old: &[u8],
    new: &[u8],
) -> Result<bool, StorageError> {
    check_sealed_secret(new)?;
    let client = store.client().await?;
    let n = client
        .execute(
            "UPDATE account_totp SET sealed_secret = $3
             WHERE account_id = $1 AND sealed_secret = $2",
            &[&account_id.get(), &old, &new],
        )
        .await?;
    Ok(n == 1)
}

pub(super) async fn accept_totp_step(
    store: &PgStore,
    account_id: AccountId,
    step: u64,
) -> Result<bool, StorageError> {
    let step = step_to_i64(step, "step")?;
    let client = store.client().await?;
    let n = client
        .execute(
            "UPDATE account_totp SET last_step = $2
             WHERE account_id = $1 AND (last_step IS NULL OR last_step < $2)",
            &[&account_id.get(), &step],
        )
        .await?;
    Ok(n == 1)
}

pub(super) async fn passkeys(
    store: &PgStore,
    account_id: AccountId,
) -> Result<Vec<StoredPasskeyRow>, StorageError> {
    let client = store.client().await?;
    client
        .query(
            &format!("{PASSKEY_SELECT} WHERE account_id = $1 ORDER BY created_at, credential_id"),
            &[&account_id.get()],
        )
        .await?
        .iter()
        .map(passkey_row)
        .collect()
}

pub(super) async fn passkey_by_credential(
    store: &PgStore,
    credential_id: &[u8],
) -> Result<Option<StoredPasskeyRow>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!("{PASSKEY_SELECT} WHERE credential_id = $1"))
        .await?;
    client
        .query_opt(&stmt, &[&credential_id])
        .await?
        .map(|r| passkey_row(&r))
        .transpose()
}

pub(super) async fn add_passkey(store: &PgStore, p: StoredPasskeyRow) -> Result<(), StorageError> {
    check_credential_id(&p.credential_id)?;
    let created_at = crate::instant(p.created_at, "created_at")?;
    let last_used_at = p
        .last_used_at
        .map(|t| crate::instant(t, "last_used_at"))
        .transpose()?;
    let client = store.client().await?;
    let n = client
        .execute(
            "INSERT INTO passkey (credential_id, account_id, data, created_at, last_used_at)
             SELECT $1::bytea, $2::int8, $3::text, $4::timestamptz, $5::timestamptz
             WHERE EXISTS (SELECT 1 FROM account WHERE id = $2)
             ON CONFLICT DO NOTHING",
            &[
                &p.credential_id,
                &p.account_id.get(),
                &p.data,
                &created_at,
                &last_used_at,
            ],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else if account_exists(&**client, p.account_id.get()).await? {
        Err(refuse("credential_id", "already registered"))
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn update_passkey(
    store: &PgStore,
    credential_id: &[u8],
    data: &str,
    used_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let used_at = crate::instant(used_at, "used_at")?;
    let client = store.client().await?;
    client
        .execute(
            "UPDATE passkey SET data = $2, last_used_at = $3 WHERE credential_id = $1",
            &[&credential_id, &data, &used_at],
        )
        .await?;
    Ok(())
}

/// Parameter 6 of the insert when the scope is not bounded.
const UNBOUNDED: i64 = i64::MAX;

pub(super) async fn login_throttle(
    store: &PgStore,
    scope: ThrottleScope,
    key: &[u8],
) -> Result<Option<String>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT entry FROM login_throttle WHERE scope = $1 AND key = $2")
        .await?;
    let row = client.query_opt(&stmt, &[&scope.as_str(), &key]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

pub(super) async fn insert_login_throttle(
    store: &PgStore,
    scope: ThrottleScope,
    key: &[u8],
    entry: &ThrottleEntry,
    max_rows: Option<u64>,
) -> Result<ThrottleInsert, StorageError> {
    let max = max_rows.map_or(UNBOUNDED, |m| i64::try_from(m).unwrap_or(UNBOUNDED));
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO login_throttle (scope, key, entry, forget_at, touched)
             SELECT $1::text, $2::bytea, $3::text, $4::int8, $5::int8
             WHERE (SELECT n FROM login_throttle_count WHERE scope = $1) < $6
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .await?;
    let n = client
        .execute(
            &stmt,
            &[
                &scope.as_str(),
                &key,
                &entry.entry,
                &entry.forget_at,
                &entry.touched,
                &max,
            ],
        )
        .await?;
    if n == 1 {
        return Ok(ThrottleInsert::Inserted);
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM login_throttle WHERE scope = $1 AND key = $2",
            &[&scope.as_str(), &key],
        )
        .await?
        .is_some();
    Ok(if exists {
        ThrottleInsert::Exists
    } else {
        ThrottleInsert::Full
    })
}

pub(super) async fn swap_login_throttle(
    store: &PgStore,
    scope: ThrottleScope,
    key: &[u8],
    expected: &str,
    next: Option<&ThrottleEntry>,
) -> Result<bool, StorageError> {
    let client = store.client().await?;
    let n = match next {
        Some(next) => {
            let stmt = client
                .prepare_cached(
                    "UPDATE login_throttle SET entry = $4, forget_at = $5, touched = $6
                     WHERE scope = $1 AND key = $2 AND entry = $3",
                )
                .await?;
            client
                .execute(
                    &stmt,
                    &[
                        &scope.as_str(),
                        &key,
                        &expected,
                        &next.entry,
                        &next.forget_at,
                        &next.touched,
                    ],
                )
                .await?
        }
        None => {
            let stmt = client
                .prepare_cached(
                    "DELETE FROM login_throttle WHERE scope = $1 AND key = $2 AND entry = $3",
                )
                .await?;
            client
                .execute(&stmt, &[&scope.as_str(), &key, &expected])
                .await?
        }
    };
    Ok(n == 1)
}

pub(super) async fn prune_login_throttles(
    store: &PgStore,
    scope: ThrottleScope,
    now_unix: i64,
) -> Result<u64, StorageError> {
    let client = store.client().await?;
    Ok(client
        .execute(
            "DELETE FROM login_throttle WHERE scope = $1 AND forget_at <= $2",
            &[&scope.as_str(), &now_unix],
        )
        .await?)
}

pub(super) async fn evict_login_throttle(
    store: &PgStore,
    scope: ThrottleScope,
) -> Result<bool, StorageError> {
    let client = store.client().await?;
    let n = client
        .execute(
            "DELETE FROM login_throttle WHERE scope = $1 AND key =
               (SELECT key FROM login_throttle WHERE scope = $1 ORDER BY touched LIMIT 1)",
            &[&scope.as_str()],
        )
        .await?;
    Ok(n == 1)
}
