//! Four-eyes decisions on accounts: approving or rejecting a request,
//! credential resets, and rehearsing any account change.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountId, AccountState};
use tokio_postgres::Row;

use super::PgStore;
use super::accounts::{account_exists, account_row, decider, subject};
use crate::auth::checks::{check_transition, four_eyes_sql, not_found, transition_sql};
use crate::auth::sql::RESET_SELECT;
use crate::auth::{CredentialReset, ResetKind};
use crate::rules::{account_decision, check_reset_decision};
use crate::{AccountRecord, StorageError};

pub(super) fn reset_row(r: &Row) -> Result<CredentialReset, StorageError> {
    Ok(CredentialReset {
        id: r.try_get(0)?,
        account_id: AccountId::new(r.try_get(1)?),
        kind: ResetKind::parse(r.try_get(2)?)?,
        requested_by: AccountId::new(r.try_get(3)?),
        requested_at: r.try_get(4)?,
        decided_by: r.try_get::<_, Option<i64>>(5)?.map(AccountId::new),
        decided_at: r.try_get(6)?,
        approved: r.try_get(7)?,
    })
}

/// [`AuthStore::decide_account`] in `tx`, which the caller commits (or
/// rolls back, to rehearse).
pub(super) async fn decide_account_in(
    tx: &deadpool_postgres::Transaction<'_>,
    account_id: AccountId,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<AccountRecord>, StorageError> {
    // Decided once: an account no longer requested is not found.
    let Some(subject) = subject(&**tx, account_id).await? else {
        return Ok(None);
    };
    if subject.state != AccountState::Requested {
        return Ok(None);
    }
    let requester = match subject.requested_by {
        Some(r) => decider(&**tx, r).await?,
        None => None,
    };
    let (action, state) = account_decision(
        &subject,
        requester.as_ref(),
        decider(&**tx, officer_id).await?.as_ref(),
        approve,
    )?;
    // The compare-and-set carries the whole rule: state and four eyes.
    let n = tx
        .execute(
            &format!(
                "UPDATE account SET state = $2,
                     approved_by = CASE WHEN $5::bool THEN $3::int8 ELSE approved_by END,
                     decided_by = $3::int8, decided_at = $4
                 WHERE id = $1 AND {} AND {}",
                transition_sql("account", action),
                four_eyes_sql("account.id", "account.requested_by", "$3::int8"),
            ),
            &[
                &account_id.get(),
                &state.as_str(),
                &officer_id.get(),
                &at,
                &approve,
            ],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    account_row(&**tx, account_id.get()).await
}

/// [`AuthStore::decide_reset`] in `tx`, which the caller commits (or rolls
/// back, to rehearse).
pub(super) async fn decide_reset_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<CredentialReset>, StorageError> {
    // Locked: a concurrent decision waits, then finds it decided.
    let Some(reset) = tx
        .query_opt(&format!("{RESET_SELECT} WHERE id = $1 FOR UPDATE"), &[&id])
        .await?
        .map(|r| reset_row(&r))
        .transpose()?
    else {
        return Ok(None);
    };
    if reset.decided_at.is_some() {
        return Ok(None);
    }
    let Some(subject) = subject(&**tx, reset.account_id).await? else {
        return Err(StorageError::Corrupt(format!(
            "reset {id} names a missing account"
        )));
    };
    check_reset_decision(
        &subject,
        decider(&**tx, reset.requested_by).await?.as_ref(),
        decider(&**tx, officer_id).await?.as_ref(),
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
        .execute(
            &format!(
                "UPDATE credential_reset SET decided_by = $2, decided_at = $3, approved = $4
                 WHERE id = $1 AND decided_at IS NULL AND {} {account_ok}",
                four_eyes_sql(
                    "credential_reset.account_id",
                    "credential_reset.requested_by",
                    "$2::int8"
                ),
            ),
            &[&id, &officer_id.get(), &at, &approve],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    if approve {
        let account = reset.account_id;
        if reset.kind.removes_password() {
            tx.execute(
                "DELETE FROM account_password WHERE account_id = $1",
                &[&account.get()],
            )
            .await?;
        }
        if reset.kind.removes_totp() {
            tx.execute(
                "DELETE FROM account_totp WHERE account_id = $1",
                &[&account.get()],
            )
            .await?;
        }
        if reset.kind.removes_passkeys() {
            tx.execute(
                "DELETE FROM passkey WHERE account_id = $1",
                &[&account.get()],
            )
            .await?;
        }
        tx.execute(
            "UPDATE web_session SET ended_at = $2, end_reason = 'reset'
             WHERE account_id = $1 AND ended_at IS NULL",
            &[&account.get(), &at],
        )
        .await?;
        tx.execute(
            "UPDATE account SET next_session_high_risk = true WHERE id = $1",
            &[&account.get()],
        )
        .await?;
        // A reset assumes someone else held a factor: no browser stays
        // trusted.
        tx.execute(
            "DELETE FROM login_device WHERE account_id = $1",
            &[&account.get()],
        )
        .await?;
    }
    tx.query_opt(&format!("{RESET_SELECT} WHERE id = $1"), &[&id])
        .await?
        .map(|r| reset_row(&r))
        .transpose()
}

/// [`AuthStore::rehearse`]: `change` in a transaction rolled back.
pub(super) async fn rehearse_in(
    tx: &deadpool_postgres::Transaction<'_>,
    change: &crate::auth::AccountChange,
    at: DateTime<Utc>,
) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
    use crate::auth::{AccountChange, Rehearsal};
    let on = |account_id| Rehearsal {
        account_id,
        reset_kind: None,
    };
    Ok(match *change {
        AccountChange::Decide {
            account_id,
            officer_id,
            approve,
        } => decide_account_in(tx, account_id, officer_id, approve, at)
            .await?
            .map(|a| on(a.account_id)),
        AccountChange::DecideReset {
            reset_id,
            officer_id,
            approve,
        } => decide_reset_in(tx, reset_id, officer_id, approve, at)
            .await?
            .map(|r| Rehearsal {
                account_id: r.account_id,
                reset_kind: Some(r.kind),
            }),
        AccountChange::State { account_id, state } => {
            let action = crate::auth::checks::state_change(state)?;
            match subject(&**tx, account_id).await? {
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
    store: &PgStore,
    change: &crate::auth::AccountChange,
    at: DateTime<Utc>,
) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let rehearsed = rehearse_in(&tx, change, at).await;
    tx.rollback().await?;
    rehearsed
}

pub(super) async fn decide_account(
    store: &PgStore,
    account_id: AccountId,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<AccountRecord>, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let account = decide_account_in(&tx, account_id, officer_id, approve, at).await?;
    tx.commit().await?;
    Ok(account)
}

pub(super) async fn request_reset(
    store: &PgStore,
    account_id: AccountId,
    kind: ResetKind,
    requested_by: AccountId,
    at: DateTime<Utc>,
) -> Result<CredentialReset, StorageError> {
    let requested_at = crate::instant(at, "at")?;
    let client = store.client().await?;
    // Accounts are never deleted: checked, they stay.
    if !account_exists(&**client, account_id.get()).await? {
        return Err(not_found("account_id", "account"));
    }
    if !account_exists(&**client, requested_by.get()).await? {
        return Err(not_found("requested_by", "account"));
    }
    let id: i64 = client
        .query_one(
            "INSERT INTO credential_reset (account_id, kind, requested_by, requested_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &account_id.get(),
                &kind.as_str(),
                &requested_by.get(),
                &requested_at,
            ],
        )
        .await?
        .try_get(0)?;
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
}

pub(super) async fn decide_reset(
    store: &PgStore,
    id: i64,
    officer_id: AccountId,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<CredentialReset>, StorageError> {
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let decided = decide_reset_in(&tx, id, officer_id, approve, at).await?;
    tx.commit().await?;
    Ok(decided)
}

pub(super) async fn pending_resets(store: &PgStore) -> Result<Vec<CredentialReset>, StorageError> {
    let client = store.client().await?;
    client
        .query(
            &format!("{RESET_SELECT} WHERE decided_at IS NULL ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(reset_row)
        .collect()
}
