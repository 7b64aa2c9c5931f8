//! [`AuthStore`] on SQLite: the registry's file and connections. Writes go
//! through the one writer connection, so a check followed by a write in
//! one closure cannot race with another writer; the hot lookups (session,
//! access token) are point reads on the calling thread.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountState, OrganisationKind, Role};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{SqliteStore, account_record, instant_text, optional_instant, parse_instant};
use crate::auth::{
    ACCESS_TOKEN_SELECT, API_CLIENT_SELECT, AccessTokenRow, AccountLifecycle, ApiClientRow,
    AuthStore, CredentialReset, Decider, NewAccountRequest, PASSKEY_SELECT, RESET_SELECT,
    REVIEW_SELECT, ResetKind, ReviewEntry, SESSION_SELECT, StoredPasskeyRow, StoredSession,
    StoredTotp, Subject, approved_sql, check_access_token, check_client_id, check_code,
    check_credential_id, check_decider, check_phc, check_replay_period, check_sealed_secret,
    check_session, check_transition, digest32, four_eyes_sql, not_found, refuse, step_from_i64,
    step_to_i64, transition_sql,
};
use crate::auth::{
    ACTIVATION_SELECT, ActivationFactors, NewActivation, StoredActivation, check_activation_issuer,
    check_activation_target,
};
use crate::auth::{
    FEDERATION_SELECT, FEDERATION_UNLINK_REASON, FederationLink, check_federated,
    check_federation_officer,
};
use crate::auth::{INACTIVE_SESSION, PURGE_SQL, Purged, Suspension};
use crate::{ACCOUNT_SELECT, AccountRecord, StorageError, parse_code};

// Hot lookups compare with `+?1` so SQLite never re-prepares them (see
// the note above `CREDENTIAL_SQL` in the parent module).

/// A session and its account, by digest.
pub(super) static SESSION_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_SELECT} WHERE s.id_digest = +?1"));

/// An access token of a live client, and its account, by digest.
pub(super) static ACCESS_TOKEN_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{ACCESS_TOKEN_SELECT} WHERE t.digest = +?1"));

/// Moves a live session's last activity forward, only while its account
/// is active (the state read in the same statement).
pub(super) const TOUCH_SQL: &str = "UPDATE web_session SET last_seen_at = max(last_seen_at, ?2)
     WHERE id_digest = +?1 AND ended_at IS NULL
       AND EXISTS (SELECT 1 FROM account a
                   WHERE a.id = web_session.account_id AND a.state = 'active')";

/// Inserts a replay key, or takes over an expired one; changes nothing if
/// a live one exists. The single writer serialises it.
pub(super) const REPLAY_SQL: &str = "INSERT INTO replay_key (digest, expires_at) VALUES (?1, ?2)
     ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at
     WHERE replay_key.expires_at <= ?3";

fn lifecycle_at(r: &Row<'_>, at: usize) -> Result<AccountLifecycle, StorageError> {
    Ok(AccountLifecycle {
        account_id: r.get(at)?,
        created_at: optional_instant(r.get(at + 1)?, "created_at")?,
        requested_by: r.get(at + 2)?,
        decided_by: r.get(at + 3)?,
        decided_at: optional_instant(r.get(at + 4)?, "decided_at")?,
        last_login_at: optional_instant(r.get(at + 5)?, "last_login_at")?,
        next_session_high_risk: r.get(at + 6)?,
    })
}

/// Reads a row of [`REVIEW_SELECT`]: the account's id is column 0 and
/// the history follows its organisation, from column 9.
fn review_entry(r: &Row<'_>) -> Result<ReviewEntry, StorageError> {
    let account = account_record(r, 0)?;
    let lifecycle = AccountLifecycle {
        account_id: account.account_id,
        created_at: optional_instant(r.get(9)?, "created_at")?,
        requested_by: r.get(10)?,
        decided_by: r.get(11)?,
        decided_at: optional_instant(r.get(12)?, "decided_at")?,
        last_login_at: optional_instant(r.get(13)?, "last_login_at")?,
        next_session_high_risk: r.get(14)?,
    };
    Ok(ReviewEntry { account, lifecycle })
}

fn session_row(r: &Row<'_>) -> Result<(StoredSession, AccountRecord), StorageError> {
    let session = StoredSession {
        id_digest: digest32(r.get(0)?, "session id digest")?,
        account_id: r.get(1)?,
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

fn passkey_row(r: &Row<'_>) -> Result<StoredPasskeyRow, StorageError> {
    Ok(StoredPasskeyRow {
        credential_id: r.get(0)?,
        account_id: r.get(1)?,
        data: r.get(2)?,
        created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
        last_used_at: optional_instant(r.get(4)?, "last_used_at")?,
    })
}

fn reset_row(r: &Row<'_>) -> Result<CredentialReset, StorageError> {
    Ok(CredentialReset {
        id: r.get(0)?,
        account_id: r.get(1)?,
        kind: ResetKind::parse(&r.get::<_, String>(2)?)?,
        requested_by: r.get(3)?,
        requested_at: parse_instant(&r.get::<_, String>(4)?, "requested_at")?,
        decided_by: r.get(5)?,
        decided_at: optional_instant(r.get(6)?, "decided_at")?,
        approved: r.get(7)?,
    })
}

fn api_client_row(r: &Row<'_>) -> Result<(ApiClientRow, AccountRecord), StorageError> {
    let client = ApiClientRow {
        client_id: r.get(0)?,
        account_id: r.get(1)?,
        keys: r.get(2)?,
        created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
        revoked_at: optional_instant(r.get(4)?, "revoked_at")?,
    };
    Ok((client, account_record(r, 5)?))
}

fn access_token_row(r: &Row<'_>) -> Result<(AccessTokenRow, AccountRecord), StorageError> {
    let token = AccessTokenRow {
        digest: digest32(r.get(0)?, "access token digest")?,
        client_id: r.get(1)?,
        account_id: r.get(2)?,
        jkt: r.get(3)?,
        scope: r.get(4)?,
        issued_at: parse_instant(&r.get::<_, String>(5)?, "issued_at")?,
        expires_at: parse_instant(&r.get::<_, String>(6)?, "expires_at")?,
    };
    Ok((token, account_record(r, 7)?))
}

fn account_exists(c: &Connection, id: i64) -> Result<bool, StorageError> {
    Ok(c.prepare_cached("SELECT 1 FROM account WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

fn account_by_id(c: &Connection, id: i64) -> Result<Option<AccountRecord>, StorageError> {
    c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = ?1"))?
        .query_and_then([id], |r| account_record(r, 0))?
        .next()
        .transpose()
}

/// The organisation facts of the account a decision is about.
pub(super) fn subject(c: &Connection, account_id: i64) -> Result<Option<Subject>, StorageError> {
    c.prepare_cached(
        "SELECT a.organisation_id, o.kind, a.state, a.requested_by, a.approved_by,
             a.decided_by IS NOT NULL
         FROM account a JOIN organisation o ON o.id = a.organisation_id WHERE a.id = ?1",
    )?
    .query_and_then([account_id], |r| {
        Ok::<_, StorageError>(Subject {
            account_id,
            organisation_id: r.get(0)?,
            kind: parse_code(r.get(1)?, OrganisationKind::parse)?,
            state: parse_code(r.get(2)?, AccountState::parse)?,
            requested_by: r.get(3)?,
            approved_by: r.get(4)?,
            decided: r.get(5)?,
        })
    })?
    .next()
    .transpose()
}

/// What the four-eyes rule checks about a decider.
pub(super) fn decider(c: &Connection, officer_id: i64) -> Result<Option<Decider>, StorageError> {
    c.prepare_cached("SELECT organisation_id, role, state FROM account WHERE id = ?1")?
        .query_and_then([officer_id], |r| {
            Ok::<_, StorageError>(Decider {
                account_id: officer_id,
                organisation_id: r.get(0)?,
                role: parse_code(r.get(1)?, Role::parse)?,
                state: parse_code(r.get(2)?, AccountState::parse)?,
            })
        })?
        .next()
        .transpose()
}

fn activation_row(r: &Row<'_>) -> Result<StoredActivation, StorageError> {
    Ok(StoredActivation {
        account_id: r.get(0)?,
        digest: digest32(r.get(1)?, "activation digest")?,
        issued_by: r.get(2)?,
        issued_at: parse_instant(&r.get::<_, String>(3)?, "issued_at")?,
        expires_at: parse_instant(&r.get::<_, String>(4)?, "expires_at")?,
        used_at: optional_instant(r.get(5)?, "used_at")?,
        throttle: r.get(6)?,
    })
}

/// [`AuthStore::decide_account`] in `tx`, which the caller commits (or
/// drops, to rehearse).
fn decide_account_in(
    tx: &rusqlite::Transaction<'_>,
    account_id: i64,
    officer_id: i64,
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
    check_decider(
        &subject,
        requester.as_ref(),
        decider(tx, officer_id)?.as_ref(),
    )?;
    let (action, state) = if approve {
        (AccountAction::Approve, AccountState::Active)
    } else {
        (AccountAction::Reject, AccountState::Disabled)
    };
    check_transition(&subject, action)?;
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
        .execute(params![account_id, state.as_str(), officer_id, at, approve])?;
    if n != 1 {
        return Ok(None);
    }
    account_by_id(tx, account_id)
}

/// [`AuthStore::decide_reset`] in `tx`, which the caller commits (or
/// drops, to rehearse).
fn decide_reset_in(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    officer_id: i64,
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
    check_decider(
        &subject,
        decider(tx, reset.requested_by)?.as_ref(),
        decider(tx, officer_id)?.as_ref(),
    )?;
    if approve {
        check_transition(&subject, AccountAction::ApproveReset)?;
    }
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
        .execute(params![id, officer_id, at, approve])?;
    if n != 1 {
        return Ok(None);
    }
    if approve {
        let account = reset.account_id;
        if reset.kind.removes_password() {
            tx.prepare_cached("DELETE FROM account_password WHERE account_id = ?1")?
                .execute([account])?;
        }
        if reset.kind.removes_totp() {
            tx.prepare_cached("DELETE FROM account_totp WHERE account_id = ?1")?
                .execute([account])?;
        }
        if reset.kind.removes_passkeys() {
            tx.prepare_cached("DELETE FROM passkey WHERE account_id = ?1")?
                .execute([account])?;
        }
        tx.prepare_cached(
            "UPDATE web_session SET ended_at = ?2, end_reason = 'reset'
             WHERE account_id = ?1 AND ended_at IS NULL",
        )?
        .execute(params![account, at])?;
        tx.prepare_cached("UPDATE account SET next_session_high_risk = 1 WHERE id = ?1")?
            .execute([account])?;
        // A reset assumes someone else held a factor: no browser stays
        // trusted.
        tx.prepare_cached("DELETE FROM login_device WHERE account_id = ?1")?
            .execute([account])?;
    }
    tx.prepare_cached(&by_id)?
        .query_and_then([id], reset_row)?
        .next()
        .transpose()
}

/// [`AuthStore::rehearse`]: `change` in a transaction dropped, never
/// committed.
fn rehearse_in(
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
            let action = crate::auth::state_change(state)?;
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

#[async_trait]
impl AuthStore for SqliteStore {
    async fn request_account(&self, r: NewAccountRequest) -> Result<AccountRecord, StorageError> {
        let created_at = instant_text(r.at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let org = tx
                .prepare_cached("SELECT 1 FROM organisation WHERE id = ?1")?
                .query_row([r.organisation_id], |_| Ok(()))
                .optional()?;
            if org.is_none() {
                return Err(not_found("organisation_id", "organisation"));
            }
            let requester: Option<String> = tx
                .prepare_cached("SELECT state FROM account WHERE id = ?1")?
                .query_row([r.requested_by], |r| r.get(0))
                .optional()?;
            match requester.as_deref() {
                None => return Err(not_found("requested_by", "account")),
                Some(s) if s != AccountState::Active.as_str() => {
                    return Err(refuse(
                        "requested_by",
                        "the requester's account is not active",
                    ));
                }
                Some(_) => {}
            }
            let id: Option<i64> = tx
                .prepare_cached(
                    "INSERT INTO account (login, organisation_id, role, state, requested_by,
                         created_at)
                     VALUES (?1, ?2, ?3, 'requested', ?4, ?5)
                     ON CONFLICT (login) DO NOTHING RETURNING id",
                )?
                .query_row(
                    params![
                        r.login.as_str(),
                        r.organisation_id,
                        r.role.as_str(),
                        r.requested_by,
                        created_at
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                return Err(refuse("login", "already used by another account"));
            };
            let account = account_by_id(&tx, id)?.ok_or_else(|| {
                StorageError::Corrupt(format!("account {id} vanished after its insertion"))
            })?;
            tx.commit()?;
            Ok(account)
        })
        .await
    }

    async fn rehearse(
        &self,
        change: &crate::auth::AccountChange,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
        let at = instant_text(at, "at")?;
        let change = *change;
        self.write(move |c| rehearse_in(c, &change, &at)).await
    }

    async fn decide_account(
        &self,
        account_id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountRecord>, StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let account = decide_account_in(&tx, account_id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(account)
        })
        .await
    }

    async fn requests_since(
        &self,
        requested_by: i64,
        since: DateTime<Utc>,
    ) -> Result<u32, StorageError> {
        let since = instant_text(since, "since")?;
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM account WHERE requested_by = ?1 AND created_at >= ?2",
                )?
                .query_row(params![requested_by, since], |r| r.get(0))?;
            u32::try_from(n).map_err(|_| StorageError::Corrupt("request count out of range".into()))
        })
        .await
    }

    async fn pending_requests(&self) -> Result<Vec<ReviewEntry>, StorageError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "{REVIEW_SELECT} WHERE a.state = 'requested'
                 ORDER BY a.created_at IS NOT NULL, a.created_at, a.id"
            ))?
            .query_and_then([], review_entry)?
            .collect()
        })
        .await
    }

    async fn lifecycle(&self, account_id: i64) -> Result<Option<AccountLifecycle>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, created_at, requested_by, decided_by, decided_at, last_login_at,
                     next_session_high_risk
                 FROM account WHERE id = ?1",
            )?
            .query_and_then([account_id], |r| lifecycle_at(r, 0))?
            .next()
            .transpose()
        })
        .await
    }

    async fn record_login(&self, account_id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            // Never moves back: logins may finish out of order.
            let n = c
                .prepare_cached(
                    "UPDATE account SET last_login_at = max(coalesce(last_login_at, ?2), ?2),
                         next_session_high_risk = 0
                     WHERE id = ?1",
                )?
                .execute(params![account_id, at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
    }

    async fn record_activity(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account SET last_login_at = max(coalesce(last_login_at, ?2), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![account_id, at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
    }

    async fn disable_inactive(
        &self,
        last_login_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<i64>, StorageError> {
        let cutoff = instant_text(last_login_before, "last_login_before")?;
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut ids = tx
                .prepare_cached(&format!(
                    "UPDATE account SET state = 'disabled'
                         WHERE {}
                           AND coalesce(last_login_at, decided_at, created_at) < ?1
                         RETURNING id",
                    transition_sql("account", AccountAction::Disable)
                ))?
                .query_map([cutoff], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.sort_unstable();
            // A disabled account keeps no open session.
            let mut end = tx.prepare_cached(
                "UPDATE web_session SET ended_at = ?2, end_reason = 'inactive'
                 WHERE account_id = ?1 AND ended_at IS NULL",
            )?;
            for id in &ids {
                end.execute(params![id, at])?;
            }
            drop(end);
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    async fn accounts_to_review(
        &self,
        organisation_id: Option<i64>,
    ) -> Result<Vec<ReviewEntry>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{REVIEW_SELECT} WHERE a.state <> 'disabled'
                   AND (?1 IS NULL OR a.organisation_id = ?1)
                 ORDER BY o.code, a.login"
            ))?
            .query_and_then([organisation_id], review_entry)?
            .collect()
        })
        .await
    }

    async fn password(&self, account_id: i64) -> Result<Option<(String, String)>, StorageError> {
        self.read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT phc, throttle FROM account_password WHERE account_id = ?1",
            )?
            .query_row([account_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
        })
        .await
    }

    async fn set_password(
        &self,
        account_id: i64,
        phc: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        check_phc(phc)?;
        let phc = phc.to_string();
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO account_password (account_id, phc, set_at)
                     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                     ON CONFLICT (account_id) DO UPDATE SET phc = excluded.phc,
                         set_at = excluded.set_at",
                )?
                .execute(params![account_id, phc, at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
    }

    async fn swap_throttle(
        &self,
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let (expected, next) = (expected.to_owned(), next.to_owned());
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE account_password SET throttle = ?3 WHERE account_id = ?1 AND throttle = ?2",
                )?
                .execute(params![account_id, expected, next])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn trust_login_device(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        replaces: Option<&[u8; 32]>,
    ) -> Result<(), StorageError> {
        let (digest, replaces) = (*digest, replaces.copied());
        let at = instant_text(at, "at")?;
        let expires_at = instant_text(expires_at, "expires_at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(old) = replaces {
                tx.prepare_cached(
                    "DELETE FROM login_device WHERE digest = ?1 AND account_id = ?2",
                )?
                .execute(params![old.as_slice(), account_id])?;
            }
            tx.prepare_cached(
                "INSERT INTO login_device (digest, account_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![digest.as_slice(), account_id, at, expires_at])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        let digest = *digest;
        let now = instant_text(now, "now")?;
        self.read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT throttle FROM login_device
                 WHERE digest = ?1 AND account_id = ?2 AND expires_at > ?3",
            )?
            .query_row(params![digest.as_slice(), account_id, now], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn swap_login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let (digest, expected, next) = (*digest, expected.to_owned(), next.to_owned());
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE login_device SET throttle = ?4
                     WHERE digest = ?1 AND account_id = ?2 AND throttle = ?3",
                )?
                .execute(params![digest.as_slice(), account_id, expected, next])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn totp(&self, account_id: i64) -> Result<Option<StoredTotp>, StorageError> {
        self.read_point(move |c| {
            c.prepare_cached(
                "SELECT sealed_secret, last_step, enrolled_at FROM account_totp
                 WHERE account_id = ?1",
            )?
            .query_and_then([account_id], |r| {
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

    async fn set_totp(&self, t: StoredTotp) -> Result<(), StorageError> {
        check_sealed_secret(&t.sealed_secret)?;
        let last_step = t
            .last_step
            .map(|s| step_to_i64(s, "last_step"))
            .transpose()?;
        let enrolled_at = instant_text(t.enrolled_at, "enrolled_at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                     ON CONFLICT (account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                         last_step = excluded.last_step, enrolled_at = excluded.enrolled_at",
                )?
                .execute(params![
                    t.account_id,
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

    async fn totp_secrets(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT account_id, sealed_secret FROM account_totp
                 WHERE account_id > ?1 ORDER BY account_id LIMIT ?2",
            )?
            .query_and_then(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    async fn replace_totp_secret(
        &self,
        account_id: i64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError> {
        check_sealed_secret(new)?;
        let (old, new) = (old.to_vec(), new.to_vec());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account_totp SET sealed_secret = ?3
                     WHERE account_id = ?1 AND sealed_secret = ?2",
                )?
                .execute(params![account_id, old, new])?;
            Ok(n == 1)
        })
        .await
    }

    async fn accept_totp_step(&self, account_id: i64, step: u64) -> Result<bool, StorageError> {
        let step = step_to_i64(step, "step")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account_totp SET last_step = ?2
                     WHERE account_id = ?1 AND (last_step IS NULL OR last_step < ?2)",
                )?
                .execute(params![account_id, step])?;
            Ok(n == 1)
        })
        .await
    }

    async fn passkeys(&self, account_id: i64) -> Result<Vec<StoredPasskeyRow>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{PASSKEY_SELECT} WHERE account_id = ?1 ORDER BY created_at, credential_id"
            ))?
            .query_and_then([account_id], passkey_row)?
            .collect()
        })
        .await
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskeyRow>, StorageError> {
        let id = credential_id.to_vec();
        self.read_point(move |c| {
            c.prepare_cached(&format!("{PASSKEY_SELECT} WHERE credential_id = ?1"))?
                .query_and_then([id], passkey_row)?
                .next()
                .transpose()
        })
        .await
    }

    async fn add_passkey(&self, p: StoredPasskeyRow) -> Result<(), StorageError> {
        check_credential_id(&p.credential_id)?;
        let created_at = instant_text(p.created_at, "created_at")?;
        let last_used_at = p
            .last_used_at
            .map(|t| instant_text(t, "last_used_at"))
            .transpose()?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, p.account_id)? {
                return Err(not_found("account_id", "account"));
            }
            let n = tx
                .prepare_cached(
                    "INSERT INTO passkey (credential_id, account_id, data, created_at, last_used_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    p.credential_id,
                    p.account_id,
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

    async fn update_passkey(
        &self,
        credential_id: &[u8],
        data: &str,
        used_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let (id, data) = (credential_id.to_vec(), data.to_string());
        let used_at = instant_text(used_at, "used_at")?;
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE passkey SET data = ?2, last_used_at = ?3 WHERE credential_id = ?1",
            )?
            .execute(params![id, data, used_at])?;
            Ok(())
        })
        .await
    }

    async fn request_reset(
        &self,
        account_id: i64,
        kind: ResetKind,
        requested_by: i64,
        at: DateTime<Utc>,
    ) -> Result<CredentialReset, StorageError> {
        let requested_at = crate::instant(at, "at")?;
        let at = instant_text(requested_at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, account_id)? {
                return Err(not_found("account_id", "account"));
            }
            if !account_exists(&tx, requested_by)? {
                return Err(not_found("requested_by", "account"));
            }
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO credential_reset (account_id, kind, requested_by, requested_at)
                     VALUES (?1, ?2, ?3, ?4) RETURNING id",
                )?
                .query_row(params![account_id, kind.as_str(), requested_by, at], |r| {
                    r.get(0)
                })?;
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

    async fn decide_reset(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<CredentialReset>, StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let decided = decide_reset_in(&tx, id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(decided)
        })
        .await
    }

    async fn pending_resets(&self) -> Result<Vec<CredentialReset>, StorageError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "{RESET_SELECT} WHERE decided_at IS NULL ORDER BY id"
            ))?
            .query_and_then([], reset_row)?
            .collect()
        })
        .await
    }

    async fn issue_activation(&self, a: NewActivation) -> Result<(), StorageError> {
        if a.expires_at <= a.issued_at {
            return Err(refuse("expires_at", "must be after issued_at"));
        }
        let issued_at = instant_text(a.issued_at, "issued_at")?;
        let expires_at = instant_text(a.expires_at, "expires_at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let facts = tx
                .prepare_cached(
                    &format!("SELECT a.state, {},
                        EXISTS (SELECT 1 FROM account_password p WHERE p.account_id = a.id),
                        EXISTS (SELECT 1 FROM account_totp t WHERE t.account_id = a.id)
                     FROM account a WHERE a.id = ?1", approved_sql("a")),
                )?
                .query_and_then([a.account_id], |r| {
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
                    a.account_id,
                    a.digest.as_slice(),
                    a.issued_by,
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

    async fn activation(&self, account_id: i64) -> Result<Option<StoredActivation>, StorageError> {
        self.read_point(move |c| {
            c.prepare_cached(&format!("{ACTIVATION_SELECT} WHERE account_id = ?1"))?
                .query_and_then([account_id], activation_row)?
                .next()
                .transpose()
        })
        .await
    }

    async fn swap_activation_throttle(
        &self,
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let (expected, next) = (expected.to_owned(), next.to_owned());
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE activation_code SET throttle = ?3 WHERE account_id = ?1 AND throttle = ?2",
                )?
                .execute(params![account_id, expected, next])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn complete_activation(
        &self,
        account_id: i64,
        digest: [u8; 32],
        factors: ActivationFactors,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        if let Some(phc) = &factors.phc {
            check_phc(phc)?;
        }
        let totp = match &factors.totp {
            Some(t) => {
                check_sealed_secret(&t.sealed_secret)?;
                if t.account_id != account_id {
                    return Err(refuse("totp", "belongs to another account"));
                }
                let step = t
                    .last_step
                    .map(|s| step_to_i64(s, "last_step"))
                    .transpose()?;
                Some((
                    t.sealed_secret.clone(),
                    step,
                    instant_text(t.enrolled_at, "enrolled_at")?,
                ))
            }
            None => None,
        };
        let phc = factors.phc;
        let now = instant_text(now, "now")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx
                .prepare_cached(
                    "UPDATE activation_code SET used_at = ?3
                     WHERE account_id = ?1 AND digest = ?2 AND used_at IS NULL
                       AND expires_at > ?3
                       AND EXISTS (SELECT 1 FROM account WHERE id = ?1 AND state = 'active')",
                )?
                .execute(params![account_id, digest.as_slice(), now])?;
            if n != 1 {
                return Ok(false);
            }
            if let Some(phc) = phc {
                tx.prepare_cached(
                    "INSERT INTO account_password (account_id, phc, set_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id) DO UPDATE SET phc = excluded.phc,
                         set_at = excluded.set_at, throttle = '{}'",
                )?
                .execute(params![account_id, phc, now])?;
            }
            if let Some((sealed, step, enrolled_at)) = totp {
                tx.prepare_cached(
                    "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                         last_step = excluded.last_step, enrolled_at = excluded.enrolled_at",
                )?
                .execute(params![account_id, sealed, step, enrolled_at])?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn link_federation(&self, link: FederationLink) -> Result<(), StorageError> {
        check_federated(&link.issuer, &link.subject)?;
        let linked_at = instant_text(link.linked_at, "linked_at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, link.account_id)? {
                return Err(not_found("account_id", "account"));
            }
            check_federation_officer(
                "linked_by",
                Some(link.account_id),
                decider(&tx, link.linked_by)?.as_ref(),
            )?;
            let n = tx
                .prepare_cached(
                    "INSERT INTO federation_link (issuer, subject, account_id, linked_by, linked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    link.issuer,
                    link.subject,
                    link.account_id,
                    link.linked_by,
                    linked_at
                ])?;
            if n != 1 {
                return Err(refuse(
                    "subject",
                    "this identity is already linked to an account (unlink it first)",
                ));
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn unlink_federation(
        &self,
        issuer: &str,
        subject: &str,
        unlinked_by: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StorageError> {
        check_federated(issuer, subject)?;
        let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_federation_officer("unlinked_by", None, decider(&tx, unlinked_by)?.as_ref())?;
            let account: Option<i64> = tx
                .prepare_cached(
                    "DELETE FROM federation_link WHERE issuer = ?1 AND subject = ?2
                     RETURNING account_id",
                )?
                .query_row(params![issuer, subject], |r| r.get(0))
                .optional()?;
            if let Some(account_id) = account {
                tx.prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE account_id = ?1 AND method = 'oidc' AND ended_at IS NULL",
                )?
                .execute(params![account_id, at, FEDERATION_UNLINK_REASON])?;
            }
            tx.commit()?;
            Ok(account)
        })
        .await
    }

    async fn federation_link(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<FederationLink>, StorageError> {
        // Nothing longer or stranger was ever stored: no need to ask.
        if check_federated(issuer, subject).is_err() {
            return Ok(None);
        }
        let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
        self.read_point(move |c| {
            c.prepare_cached(&format!(
                "{FEDERATION_SELECT} WHERE issuer = ?1 AND subject = ?2"
            ))?
            .query_and_then(params![issuer, subject], |r| {
                Ok::<_, StorageError>(FederationLink {
                    issuer: r.get(0)?,
                    subject: r.get(1)?,
                    account_id: r.get(2)?,
                    linked_by: r.get(3)?,
                    linked_at: parse_instant(&r.get::<_, String>(4)?, "linked_at")?,
                })
            })?
            .next()
            .transpose()
        })
        .await
    }

    async fn put_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        check_code("kind", kind)?;
        let (kind, payload) = (kind.to_string(), payload.to_string());
        let expires_at = instant_text(expires_at, "expires_at")?;
        self.write(move |c| {
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

    async fn take_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        let kind = kind.to_string();
        let now = crate::instant(now, "now")?;
        self.write(move |c| {
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

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        sessions_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, StorageError> {
        if limit == 0 {
            return Err(refuse("limit", "must be at least 1"));
        }
        let now = instant_text(now, "now")?;
        let sessions_before = instant_text(sessions_before, "sessions_before")?;
        self.write(move |c| {
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

    async fn insert_session(&self, s: StoredSession) -> Result<(), StorageError> {
        let (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at) = check_session(&s)?;
        let text = |t: DateTime<Utc>, what| instant_text(t, what);
        let created_at = text(created_at, "created_at")?;
        let last_seen_at = text(last_seen_at, "last_seen_at")?;
        let absolute_expiry = text(absolute_expiry, "absolute_expiry")?;
        let step_up_at = step_up_at.map(|t| text(t, "step_up_at")).transpose()?;
        let ended_at = ended_at.map(|t| text(t, "ended_at")).transpose()?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The single writer orders this with any suspension.
            let state: Option<String> = tx
                .prepare_cached("SELECT state FROM account WHERE id = ?1")?
                .query_row([s.account_id], |r| r.get(0))
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
                    s.account_id,
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

    async fn session(
        &self,
        id_digest: [u8; 32],
    ) -> Result<Option<(StoredSession, AccountRecord)>, StorageError> {
        self.read_point(move |c| {
            c.prepare_cached(&SESSION_SQL)?
                .query_and_then([&id_digest[..]], session_row)?
                .next()
                .transpose()
        })
        .await
    }

    async fn touch_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            c.prepare_cached(TOUCH_SQL)?
                .execute(params![&id_digest[..], at])?;
            Ok(())
        })
        .await
    }

    async fn mark_step_up(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE web_session SET step_up_at = ?2 WHERE id_digest = ?1 AND ended_at IS NULL",
            )?
            .execute(params![&id_digest[..], at])?;
            Ok(())
        })
        .await
    }

    async fn end_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<bool, StorageError> {
        check_code("reason", reason)?;
        let reason = reason.to_string();
        let at = instant_text(at, "at")?;
        self.write(move |c| {
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

    async fn end_sessions_of_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64, StorageError> {
        check_code("reason", reason)?;
        let reason = reason.to_string();
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE account_id = ?1 AND ended_at IS NULL",
                )?
                .execute(params![account_id, at, reason])?;
            Ok(n as u64)
        })
        .await
    }

    async fn suspend_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<Suspension>, StorageError> {
        check_code("reason", reason)?;
        let reason = reason.to_string();
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE account SET state = 'suspended' WHERE id = ?1 AND state = 'active'",
                )?
                .execute([account_id])?;
            if changed != 1 {
                return Ok(None);
            }
            let sessions = tx
                .prepare_cached(
                    "UPDATE web_session SET ended_at = ?2, end_reason = ?3
                     WHERE account_id = ?1 AND ended_at IS NULL",
                )?
                .execute(params![account_id, at, reason])? as u64;
            let credentials = tx
                .prepare_cached(
                    "UPDATE api_credential SET revoked_at = ?2
                     WHERE account_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![account_id, at])? as u64;
            let (access_tokens, api_clients) = end_api_clients(&tx, account_id, &at)?;
            // No browser stays trusted through a suspension.
            tx.prepare_cached("DELETE FROM login_device WHERE account_id = ?1")?
                .execute([account_id])?;
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

    async fn insert_api_client(&self, cl: ApiClientRow) -> Result<(), StorageError> {
        check_client_id(&cl.client_id)?;
        let created_at = instant_text(cl.created_at, "created_at")?;
        let revoked_at = cl
            .revoked_at
            .map(|t| instant_text(t, "revoked_at"))
            .transpose()?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, cl.account_id)? {
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
                    cl.account_id,
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

    async fn api_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError> {
        let client_id = client_id.to_string();
        self.read_point(move |c| {
            c.prepare_cached(&format!("{API_CLIENT_SELECT} WHERE c.client_id = ?1"))?
                .query_and_then([client_id], api_client_row)?
                .next()
                .transpose()
        })
        .await
    }

    async fn revoke_api_clients_of_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (_, revoked) = end_api_clients(&tx, account_id, &at)?;
            tx.commit()?;
            Ok(revoked)
        })
        .await
    }

    async fn revoke_api_client(
        &self,
        client_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let client_id = client_id.to_string();
        let at = instant_text(at, "at")?;
        self.write(move |c| {
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

    async fn insert_access_token(&self, t: AccessTokenRow) -> Result<(), StorageError> {
        let (issued_at, expires_at) = check_access_token(&t)?;
        let issued_at = instant_text(issued_at, "issued_at")?;
        let expires_at = instant_text(expires_at, "expires_at")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = tx
                .prepare_cached(
                    "SELECT 1 FROM api_client
                     WHERE client_id = ?1 AND account_id = ?2 AND revoked_at IS NULL",
                )?
                .query_row(params![t.client_id, t.account_id], |_| Ok(()))
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
                    t.account_id,
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

    async fn access_token(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError> {
        self.read_point(move |c| {
            c.prepare_cached(&ACCESS_TOKEN_SQL)?
                .query_and_then([&digest[..]], access_token_row)?
                .next()
                .transpose()
        })
        .await
    }

    async fn insert_replay_if_new(
        &self,
        key: [u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let (expires_at, now) = check_replay_period(expires_at, now)?;
        let expires_at = instant_text(expires_at, "expires_at")?;
        let now = instant_text(now, "now")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(REPLAY_SQL)?
                .execute(params![&key[..], expires_at, now])?;
            Ok(n == 1)
        })
        .await
    }
}

/// Ends an account's API clients inside the caller's transaction: their
/// access tokens deleted, the clients revoked. Returns (tokens, clients).
fn end_api_clients(
    tx: &rusqlite::Transaction<'_>,
    account_id: i64,
    at: &str,
) -> Result<(u64, u64), StorageError> {
    let tokens = tx
        .prepare_cached(
            "DELETE FROM access_token WHERE client_id IN
               (SELECT client_id FROM api_client WHERE account_id = ?1)",
        )?
        .execute([account_id])?;
    let clients = tx
        .prepare_cached(
            "UPDATE api_client SET revoked_at = ?2
             WHERE account_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![account_id, at])?;
    Ok((tokens as u64, clients as u64))
}

#[cfg(test)]
mod tests {
    use super::super::{FILE_NAME, lock};
    use super::*;

    fn plan(c: &Connection, sql: &str, p: impl rusqlite::Params) -> String {
        let lines: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(p, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        lines.join("\n")
    }

    /// The lookups of every request search their primary key, and keep
    /// their compiled plan from one call to the next.
    #[test]
    fn hot_lookups_use_their_keys_and_are_never_re_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        let c = lock(&store.inner.writer);
        let key = [7u8; 32];
        let session = plan(&c, &SESSION_SQL, [&key[..]]);
        assert!(
            session.contains("SEARCH s USING PRIMARY KEY (id_digest=?)"),
            "{session}"
        );
        let token = plan(&c, &ACCESS_TOKEN_SQL, [&key[..]]);
        assert!(
            token.contains("SEARCH t USING PRIMARY KEY (digest=?)"),
            "{token}"
        );
        assert!(
            token.contains("SEARCH c USING PRIMARY KEY (client_id=?)"),
            "{token}"
        );
        for sql in [&*SESSION_SQL, &*ACCESS_TOKEN_SQL, TOUCH_SQL, REPLAY_SQL] {
            let mut stmt = c.prepare(sql).unwrap();
            for n in 1..=5u8 {
                let k = [n; 32];
                match stmt.parameter_count() {
                    1 => {
                        let mut rows = stmt.query([&k[..]]).unwrap();
                        while rows.next().unwrap().is_some() {}
                    }
                    2 => {
                        stmt.execute(params![&k[..], "2026-01-01T00:00:00.000000Z"])
                            .unwrap();
                    }
                    _ => {
                        stmt.execute(params![
                            &k[..],
                            "2026-01-01T00:01:00.000000Z",
                            "2026-01-01T00:00:00.000000Z"
                        ])
                        .unwrap();
                    }
                }
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }
}
