//! Activation codes: issued under four eyes, completed once with the first
//! factors.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountId, AccountState};
use rusqlite::{Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::{decider, subject};
use super::values::{instant_text, optional_instant, parse_instant};
use crate::auth::checks::{
    approved_sql, check_activation_issuer, check_activation_target, digest32, four_eyes_sql,
    not_found, refuse, transition_sql,
};
use crate::auth::sql::ACTIVATION_SELECT;
use crate::auth::{ActivationFactors, NewActivation, StoredActivation};
use crate::rules::{CheckedFactors, check_activation_period, checked_factors};
use crate::{StorageError, parse_code};

pub(super) fn activation_row(r: &Row<'_>) -> Result<StoredActivation, StorageError> {
    Ok(StoredActivation {
        account_id: AccountId::new(r.get(0)?),
        digest: digest32(r.get(1)?, "activation digest")?,
        issued_by: AccountId::new(r.get(2)?),
        issued_at: parse_instant(&r.get::<_, String>(3)?, "issued_at")?,
        expires_at: parse_instant(&r.get::<_, String>(4)?, "expires_at")?,
        used_at: optional_instant(r.get(5)?, "used_at")?,
        throttle: r.get(6)?,
    })
}

pub(super) async fn issue_activation(
    store: &SqliteStore,
    a: NewActivation,
) -> Result<(), StorageError> {
    check_activation_period(a.issued_at, a.expires_at)?;
    let issued_at = instant_text(a.issued_at, "issued_at")?;
    let expires_at = instant_text(a.expires_at, "expires_at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let facts = tx
                .prepare_cached(&format!(
                    "SELECT a.state, {},
                        EXISTS (SELECT 1 FROM account_password p WHERE p.account_id = a.id),
                        EXISTS (SELECT 1 FROM account_totp t WHERE t.account_id = a.id)
                     FROM account a WHERE a.id = ?1",
                    approved_sql("a")
                ))?
                .query_and_then([a.account_id.get()], |r| {
                    Ok::<_, StorageError>((
                        parse_code(r.get(0)?, AccountState::parse)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                })?
                .next()
                .transpose()?;
            match facts {
                None => check_activation_target(None, false, false, false)?,
                Some((state, four_eyes, pw, totp)) => {
                    check_activation_target(Some(state), four_eyes, pw, totp)?
                }
            }
            let Some(subject) = subject(&tx, a.account_id)? else {
                return Err(not_found("account_id", "account"));
            };
            let requester = subject
                .requested_by
                .map(|r| decider(&tx, r))
                .transpose()?
                .flatten();
            check_activation_issuer(
                &subject,
                requester.as_ref(),
                decider(&tx, a.issued_by)?.as_ref(),
            )?;
            // The rule again in the one statement that issues: whatever
            // the caller read, no code for an account without its approval.
            let n = tx
                .prepare_cached(&format!(
                "INSERT INTO activation_code (account_id, digest, issued_by, issued_at, expires_at)
                 SELECT ?1, ?2, ?3, ?4, ?5 FROM account
                 WHERE account.id = ?1 AND {}
                   AND {}
                 ON CONFLICT (account_id) DO UPDATE SET digest = excluded.digest,
                     issued_by = excluded.issued_by, issued_at = excluded.issued_at,
                     expires_at = excluded.expires_at, used_at = NULL, throttle = '{{}}'",
                transition_sql("account", AccountAction::IssueActivation),
                four_eyes_sql("account.id", "account.requested_by", "?3"),
            ))?
                .execute(params![
                    a.account_id.get(),
                    a.digest.as_slice(),
                    a.issued_by.get(),
                    issued_at,
                    expires_at
                ])?;
            if n != 1 {
                return Err(refuse(
                    "account_id",
                    "the account changed while the code was issued",
                ));
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

pub(super) async fn activation(
    store: &SqliteStore,
    account_id: AccountId,
) -> Result<Option<StoredActivation>, StorageError> {
    store
        .read_point(move |c| {
            c.prepare_cached(&format!("{ACTIVATION_SELECT} WHERE account_id = ?1"))?
                .query_and_then([account_id.get()], activation_row)?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn swap_activation_throttle(
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
                "UPDATE activation_code SET throttle = ?3 WHERE account_id = ?1 AND throttle = ?2",
            )?
            .execute(params![account_id.get(), expected, next])?;
            Ok(changed == 1)
        })
        .await
}

pub(super) async fn complete_activation(
    store: &SqliteStore,
    account_id: AccountId,
    digest: [u8; 32],
    factors: ActivationFactors,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let CheckedFactors { phc, totp } = checked_factors(account_id, factors)?;
    let totp = match totp {
        Some(t) => Some((
            t.sealed_secret,
            t.last_step,
            instant_text(t.enrolled_at, "enrolled_at")?,
        )),
        None => None,
    };
    let now = instant_text(now, "now")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx
                .prepare_cached(
                    "UPDATE activation_code SET used_at = ?3
                     WHERE account_id = ?1 AND digest = ?2 AND used_at IS NULL
                       AND expires_at > ?3
                       AND EXISTS (SELECT 1 FROM account WHERE id = ?1 AND state = 'active')",
                )?
                .execute(params![account_id.get(), digest.as_slice(), now])?;
            if n != 1 {
                return Ok(false);
            }
            if let Some(phc) = phc {
                tx.prepare_cached(
                    "INSERT INTO account_password (account_id, phc, set_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id) DO UPDATE SET phc = excluded.phc,
                         set_at = excluded.set_at, throttle = '{}'",
                )?
                .execute(params![account_id.get(), phc, now])?;
            }
            if let Some((sealed, step, enrolled_at)) = totp {
                tx.prepare_cached(
                    "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                         last_step = excluded.last_step, enrolled_at = excluded.enrolled_at",
                )?
                .execute(params![account_id.get(), sealed, step, enrolled_at])?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
}
