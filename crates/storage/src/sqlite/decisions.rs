//! Four-eyes decisions on accounts: approving or rejecting a request,
//! credential resets, and rehearsing any account change.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountId, AccountState};
use rusqlite::{Connection, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::{account_exists, account_row, decider, subject};
use super::values::{instant_text, optional_instant, parse_instant};
use crate::auth::checks::{check_transition, four_eyes_sql, not_found, transition_sql};
use crate::auth::sql::RESET_SELECT;
use crate::auth::{CredentialReset, ResetKind};
use crate::rules::{account_decision, check_reset_decision};
use crate::{AccountRecord, StorageError};

pub(super) fn reset_row(r: &Row<'_>) -> Result<CredentialReset, StorageError> {
    Ok(CredentialReset {
        id: r.get(0)?,
        account_id: AccountId::new(r.get(1)?),
        kind: ResetKind::parse(&r.get::<_, String>(2)?)?,
        requested_by: AccountId::new(r.get(3)?),
        requested_at: parse_instant(&r.get::<_, String>(4)?, "requested_at")?,
        decided_by: r.get::<_, Option<i64>>(5)?.map(AccountId::new),
        decided_at: optional_instant(r.get(6)?, "decided_at")?,
        approved: r.get(7)?,
    })
}

/// [`AuthStore::decide_account`] in `tx`, which the caller commits (or
/// drops, to rehearse).
pub(super) fn decide_account_in(
    tx: &rusqlite::Transaction<'_>,
    account_id: AccountId,
    officer_id: AccountId,
    approve: bool,
    at: &str,
) -> Result<Option<AccountRecord>, StorageError> {
    // Decided once: an account no longer requested is not found.
    let Some(subject) = subject(tx, account_id)? else {
        return Ok(None);
    };
    if subject.state != AccountState::Requested {
        return Ok(None);
    }
    let requester = subject
        .requested_by
        .map(|r| decider(tx, r))
        .transpose()?
        .flatten();
    let (action, state) = account_decision(
        &subject,
        requester.as_ref(),
        decider(tx, officer_id)?.as_ref(),
        approve,
    )?;
    // The compare-and-set carries the whole rule: state and four eyes.
    let n = tx
        .prepare_cached(&format!(
            "UPDATE account SET state = ?2,
                     approved_by = CASE WHEN ?5 THEN ?3 ELSE approved_by END,
                     decided_by = ?3, decided_at = ?4
                 WHERE id = ?1 AND {} AND {}",
            transition_sql("account", action),
            four_eyes_sql("account.id", "account.requested_by", "?3"),
        ))?
        .execute(params![
            account_id.get(),
            state.as_str(),
            officer_id.get(),
            at,
            approve
        ])?;
    if n != 1 {
        return Ok(None);
    }
    account_row(tx, account_id)
}

/// [`AuthStore::decide_reset`] in `tx`, which the caller commits (or
/// drops, to rehearse).
pub(super) fn decide_reset_in(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: &str,
) -> Result<Option<CredentialReset>, StorageError> {
    let by_id = format!("{RESET_SELECT} WHERE id = ?1");
    let Some(reset) = tx
        .prepare_cached(&by_id)?
        .query_and_then([id], reset_row)?
        .next()
        .transpose()?
    else {
        return Ok(None);
    };
    if reset.decided_at.is_some() {
        return Ok(None);
    }
    let Some(subject) = subject(tx, reset.account_id)? else {
        return Err(StorageError::Corrupt(format!(
            "reset {id} names a missing account"
        )));
    };
    check_reset_decision(
        &subject,
        decider(tx, reset.requested_by)?.as_ref(),
        decider(tx, officer_id)?.as_ref(),
        approve,
    )?;
    // One compare-and-set with the whole rule: undecided, four eyes,
    // and (to approve) an account the machine lets be reset.
    let account_ok = if approve {
        format!(
            "AND EXISTS (SELECT 1 FROM account WHERE account.id = credential_reset.account_id
                 AND {})",
            transition_sql("account", AccountAction::ApproveReset)
        )
    } else {
        String::new()
    };
    let n = tx
        .prepare_cached(&format!(
            "UPDATE credential_reset SET decided_by = ?2, decided_at = ?3, approved = ?4
             WHERE id = ?1 AND decided_at IS NULL AND {} {account_ok}",
            four_eyes_sql(
                "credential_reset.account_id",
                "credential_reset.requested_by",
                "?2"
            ),
        ))?
        .execute(params![id, officer_id.get(), at, approve])?;
    if n != 1 {
        return Ok(None);
    }
    if approve {
        let account = reset.account_id;
        if reset.kind.removes_password() {
            tx.prepare_cached("DELETE FROM account_password WHERE account_id = ?1")?
                .execute([account.get()])?;
        }
        if reset.kind.removes_totp() {
            tx.prepare_cached("DELETE FROM account_totp WHERE account_id = ?1")?
                .execute([account.get()])?;
        }
        if reset.kind.removes_passkeys() {
            tx.prepare_cached("DELETE FROM passkey WHERE account_id = ?1")?
                .execute([account.get()])?;
        }
        tx.prepare_cached(
            "UPDATE web_session SET ended_at = ?2, end_reason = 'reset'
             WHERE account_id = ?1 AND ended_at IS NULL",
        )?
        .execute(params![account.get(), at])?;
        tx.prepare_cached("UPDATE account SET next_session_high_risk = 1 WHERE id = ?1")?
            .execute([account.get()])?;
        // A reset assumes someone else held a factor: no browser stays
        // trusted.
        tx.prepare_cached("DELETE FROM login_device WHERE account_id = ?1")?
            .execute([account.get()])?;
    }
    tx.prepare_cached(&by_id)?
        .query_and_then([id], reset_row)?
        .next()
        .transpose()
}

/// [`AuthStore::rehearse`]: `change` in a transaction dropped, never
/// committed.
pub(super) fn rehearse_in(
    c: &mut Connection,
    change: &crate::auth::AccountChange,
    at: &str,
) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
    use crate::auth::{AccountChange, Rehearsal};
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let on = |account_id| Rehearsal {
        account_id,
        reset_kind: None,
    };
    Ok(match *change {
        AccountChange::Decide {
            account_id,
            officer_id,
            approve,
        } => decide_account_in(&tx, account_id, officer_id, approve, at)?.map(|a| on(a.account_id)),
        AccountChange::DecideReset {
            reset_id,
            officer_id,
            approve,
        } => decide_reset_in(&tx, reset_id, officer_id, approve, at)?.map(|r| Rehearsal {
            account_id: r.account_id,
            reset_kind: Some(r.kind),
        }),
        AccountChange::State { account_id, state } => {
            let action = crate::auth::checks::state_change(state)?;
            match subject(&tx, account_id)? {
                None => None,
                Some(facts) => {
                    check_transition(&facts, action)?;
                    Some(on(account_id))
                }
            }
        }
    })
}

pub(super) async fn rehearse(
    store: &SqliteStore,
    change: &crate::auth::AccountChange,
    at: DateTime<Utc>,
) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
    let at = instant_text(at, "at")?;
    let change = *change;
    store.write(move |c| rehearse_in(c, &change, &at)).await
}

pub(super) async fn decide_account(
    store: &SqliteStore,
    account_id: AccountId,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<AccountRecord>, StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let account = decide_account_in(&tx, account_id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(account)
        })
        .await
}

pub(super) async fn request_reset(
    store: &SqliteStore,
    account_id: AccountId,
    kind: ResetKind,
    requested_by: AccountId,
    at: DateTime<Utc>,
) -> Result<CredentialReset, StorageError> {
    let requested_at = crate::instant(at, "at")?;
    let at = instant_text(requested_at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, account_id.get())? {
                return Err(not_found("account_id", "account"));
            }
            if !account_exists(&tx, requested_by.get())? {
                return Err(not_found("requested_by", "account"));
            }
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO credential_reset (account_id, kind, requested_by, requested_at)
                     VALUES (?1, ?2, ?3, ?4) RETURNING id",
                )?
                .query_row(
                    params![account_id.get(), kind.as_str(), requested_by.get(), at],
                    |r| r.get(0),
                )?;
            tx.commit()?;
            Ok(CredentialReset {
                id,
                account_id,
                kind,
                requested_by,
                requested_at,
                decided_by: None,
                decided_at: None,
                approved: None,
            })
        })
        .await
}

pub(super) async fn decide_reset(
    store: &SqliteStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<CredentialReset>, StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let decided = decide_reset_in(&tx, id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(decided)
        })
        .await
}

pub(super) async fn pending_resets(
    store: &SqliteStore,
) -> Result<Vec<CredentialReset>, StorageError> {
    store
        .read(|c| {
            c.prepare_cached(&format!(
                "{RESET_SELECT} WHERE decided_at IS NULL ORDER BY id"
            ))?
            .query_and_then([], reset_row)?
            .collect()
        })
        .await
}
