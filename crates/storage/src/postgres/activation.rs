//! Activation codes: issued under four eyes, completed once with the first
//! factors.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountId, AccountState};
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::{decider, subject};
use crate::auth::checks::{
    approved_sql, check_activation_issuer, check_activation_target, digest32, four_eyes_sql,
    not_found, refuse, transition_sql,
};
use crate::auth::sql::ACTIVATION_SELECT;
use crate::auth::{ActivationFactors, NewActivation, StoredActivation};
use crate::rules::{CheckedFactors, check_activation_period, checked_factors};
use crate::{StorageError, parse_code};

pub(super) fn activation_row(r: &Row) -> Result<StoredActivation, StorageError> {
    Ok(StoredActivation {
        account_id: AccountId::new(r.try_get(0)?),
        digest: digest32(r.try_get(1)?, "activation digest")?,
        issued_by: AccountId::new(r.try_get(2)?),
        issued_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        used_at: r.try_get(5)?,
        throttle: r.try_get(6)?,
    })
}

pub(super) async fn issue_activation(
    store: &PgStore,
    a: NewActivation,
) -> Result<(), StorageError> {
    check_activation_period(a.issued_at, a.expires_at)?;
    let issued_at = crate::instant(a.issued_at, "issued_at")?;
    let expires_at = crate::instant(a.expires_at, "expires_at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // The account's row locked first (for update, as every decision
    // on it): a concurrent suspension or issue waits.
    if subject(&*tx, a.account_id).await?.is_none() {
        return Err(not_found("account_id", "account"));
    }
    let facts = tx
        .query_opt(
            &format!(
                "SELECT a.state, {},
                    EXISTS (SELECT 1 FROM account_password p WHERE p.account_id = a.id),
                    EXISTS (SELECT 1 FROM account_totp t WHERE t.account_id = a.id)
                 FROM account a WHERE a.id = $1 FOR SHARE OF a",
                approved_sql("a")
            ),
            &[&a.account_id.get()],
        )
        .await?;
    match facts {
        None => check_activation_target(None, false, false, false)?,
        Some(r) => check_activation_target(
            Some(parse_code(r.try_get(0)?, AccountState::parse)?),
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
        )?,
    }
    let Some(subject) = subject(&*tx, a.account_id).await? else {
        return Err(not_found("account_id", "account"));
    };
    let requester = match subject.requested_by {
        Some(r) => decider(&*tx, r).await?,
        None => None,
    };
    check_activation_issuer(
        &subject,
        requester.as_ref(),
        decider(&*tx, a.issued_by).await?.as_ref(),
    )?;
    // The rule again in the one statement that issues: whatever the
    // caller read, no code for an account without its approval.
    let n = tx
        .execute(
            &format!(
                "INSERT INTO activation_code (account_id, digest, issued_by, issued_at, expires_at)
                 SELECT $1::int8, $2::bytea, $3::int8, $4::timestamptz, $5::timestamptz
                 FROM account
                 WHERE account.id = $1 AND {}
                   AND {}
                 ON CONFLICT (account_id) DO UPDATE SET digest = EXCLUDED.digest,
                     issued_by = EXCLUDED.issued_by, issued_at = EXCLUDED.issued_at,
                     expires_at = EXCLUDED.expires_at, used_at = NULL, throttle = '{{}}'",
                transition_sql("account", AccountAction::IssueActivation),
                four_eyes_sql("account.id", "account.requested_by", "$3::int8"),
            ),
            &[
                &a.account_id.get(),
                &a.digest.as_slice(),
                &a.issued_by.get(),
                &issued_at,
                &expires_at,
            ],
        )
        .await?;
    if n != 1 {
        return Err(refuse(
            "account_id",
            "the account changed while the code was issued",
        ));
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn activation(
    store: &PgStore,
    account_id: AccountId,
) -> Result<Option<StoredActivation>, StorageError> {
    let client = store.client().await?;
    client
        .query_opt(
            &format!("{ACTIVATION_SELECT} WHERE account_id = $1"),
            &[&account_id.get()],
        )
        .await?
        .map(|r| activation_row(&r))
        .transpose()
}

pub(super) async fn swap_activation_throttle(
    store: &PgStore,
    account_id: AccountId,
    expected: &str,
    next: &str,
) -> Result<bool, StorageError> {
    let client = store.client().await?;
    let changed = client
        .execute(
            "UPDATE activation_code SET throttle = $3 WHERE account_id = $1 AND throttle = $2",
            &[&account_id.get(), &expected, &next],
        )
        .await?;
    Ok(changed == 1)
}

pub(super) async fn complete_activation(
    store: &PgStore,
    account_id: AccountId,
    digest: [u8; 32],
    factors: ActivationFactors,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let CheckedFactors { phc, totp } = checked_factors(account_id, factors)?;
    let now = crate::instant(now, "now")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // One conditional statement: of two racing completions, the second
    // re-evaluates on the first one's row and finds it used.
    let n = tx
        .execute(
            "UPDATE activation_code SET used_at = $3
             WHERE account_id = $1 AND digest = $2 AND used_at IS NULL AND expires_at > $3
               AND EXISTS (SELECT 1 FROM account WHERE id = $1 AND state = 'active')",
            &[&account_id.get(), &digest.as_slice(), &now],
        )
        .await?;
    if n != 1 {
        return Ok(false);
    }
    if let Some(phc) = &phc {
        tx.execute(
            "INSERT INTO account_password (account_id, phc, set_at) VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO UPDATE SET phc = EXCLUDED.phc,
                 set_at = EXCLUDED.set_at, throttle = '{}'",
            &[&account_id.get(), phc, &now],
        )
        .await?;
    }
    if let Some(t) = &totp {
        tx.execute(
            "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret,
                 last_step = EXCLUDED.last_step, enrolled_at = EXCLUDED.enrolled_at",
            &[
                &account_id.get(),
                &t.sealed_secret,
                &t.last_step,
                &t.enrolled_at,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}
