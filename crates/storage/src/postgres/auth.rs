//! [`AuthStore`] on PostgreSQL: the registry's schema and pool. Writers
//! run concurrently here, so every compare-and-set is one conditional
//! statement (`UPDATE … WHERE <expected state>`, `INSERT … ON CONFLICT`),
//! which READ COMMITTED re-evaluates on the latest row version after a
//! concurrent writer commits: of two racing writers, one wins.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountState, OrganisationKind, Role};
use tokio_postgres::{GenericClient, Row};

use super::{PgStore, account_record};
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

/// A session and its account, by digest.
static SESSION_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_SELECT} WHERE s.id_digest = $1"));

/// An access token of a live client, and its account, by digest.
static ACCESS_TOKEN_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{ACCESS_TOKEN_SELECT} WHERE t.digest = $1"));

/// Inserts a replay key, or takes over an expired one; changes nothing if
/// a live one exists. Concurrent inserts of one key wait on the first
/// one's row, then see it live: exactly one changes a row.
const REPLAY_SQL: &str = "INSERT INTO replay_key (digest, expires_at) VALUES ($1, $2)
     ON CONFLICT (digest) DO UPDATE SET expires_at = EXCLUDED.expires_at
     WHERE replay_key.expires_at <= $3";

/// Reads a row of [`REVIEW_SELECT`].
fn review_entry(r: &Row) -> Result<ReviewEntry, StorageError> {
    let account = account_record(r, 0)?;
    let lifecycle = AccountLifecycle {
        account_id: account.account_id,
        created_at: r.try_get(9)?,
        requested_by: r.try_get(10)?,
        decided_by: r.try_get(11)?,
        decided_at: r.try_get(12)?,
        last_login_at: r.try_get(13)?,
        next_session_high_risk: r.try_get(14)?,
    };
    Ok(ReviewEntry { account, lifecycle })
}

fn session_row(r: &Row) -> Result<(StoredSession, AccountRecord), StorageError> {
    let session = StoredSession {
        id_digest: digest32(r.try_get(0)?, "session id digest")?,
        account_id: r.try_get(1)?,
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

fn passkey_row(r: &Row) -> Result<StoredPasskeyRow, StorageError> {
    Ok(StoredPasskeyRow {
        credential_id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        data: r.try_get(2)?,
        created_at: r.try_get(3)?,
        last_used_at: r.try_get(4)?,
    })
}

fn reset_row(r: &Row) -> Result<CredentialReset, StorageError> {
    Ok(CredentialReset {
        id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        kind: ResetKind::parse(r.try_get(2)?)?,
        requested_by: r.try_get(3)?,
        requested_at: r.try_get(4)?,
        decided_by: r.try_get(5)?,
        decided_at: r.try_get(6)?,
        approved: r.try_get(7)?,
    })
}

fn api_client_row(r: &Row) -> Result<(ApiClientRow, AccountRecord), StorageError> {
    let client = ApiClientRow {
        client_id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        keys: r.try_get(2)?,
        created_at: r.try_get(3)?,
        revoked_at: r.try_get(4)?,
    };
    Ok((client, account_record(r, 5)?))
}

fn access_token_row(r: &Row) -> Result<(AccessTokenRow, AccountRecord), StorageError> {
    let token = AccessTokenRow {
        digest: digest32(r.try_get(0)?, "access token digest")?,
        client_id: r.try_get(1)?,
        account_id: r.try_get(2)?,
        jkt: r.try_get(3)?,
        scope: r.try_get(4)?,
        issued_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
    };
    Ok((token, account_record(r, 7)?))
}

async fn account_exists(c: &impl GenericClient, id: i64) -> Result<bool, StorageError> {
    Ok(c.query_opt("SELECT 1 FROM account WHERE id = $1", &[&id])
        .await?
        .is_some())
}

async fn account_by_id(
    c: &impl GenericClient,
    id: i64,
) -> Result<Option<AccountRecord>, StorageError> {
    c.query_opt(&format!("{ACCOUNT_SELECT} WHERE a.id = $1"), &[&id])
        .await?
        .map(|r| account_record(&r, 0))
        .transpose()
}

/// The facts of the account a decision is about (organisation, state,
/// request and approval), its row locked for update: a concurrent decision
/// on the same account waits, then sees this one's outcome.
pub(super) async fn subject(
    c: &impl GenericClient,
    account_id: i64,
) -> Result<Option<Subject>, StorageError> {
    c.query_opt(
        "SELECT a.organisation_id, o.kind, a.state, a.requested_by, a.approved_by,
             a.decided_by IS NOT NULL
         FROM account a JOIN organisation o ON o.id = a.organisation_id
         WHERE a.id = $1 FOR UPDATE OF a",
        &[&account_id],
    )
    .await?
    .map(|r| {
        Ok(Subject {
            account_id,
            organisation_id: r.try_get(0)?,
            kind: parse_code(r.try_get(1)?, OrganisationKind::parse)?,
            state: parse_code(r.try_get(2)?, AccountState::parse)?,
            requested_by: r.try_get(3)?,
            approved_by: r.try_get(4)?,
            decided: r.try_get(5)?,
        })
    })
    .transpose()
}

/// What the four-eyes rule checks about a decider, its row locked against
/// a concurrent change of role or state until the decision commits.
pub(super) async fn decider(
    c: &impl GenericClient,
    officer_id: i64,
) -> Result<Option<Decider>, StorageError> {
    c.query_opt(
        "SELECT organisation_id, role, state FROM account WHERE id = $1 FOR SHARE",
        &[&officer_id],
    )
    .await?
    .map(|r| {
        Ok(Decider {
            account_id: officer_id,
            organisation_id: r.try_get(0)?,
            role: parse_code(r.try_get(1)?, Role::parse)?,
            state: parse_code(r.try_get(2)?, AccountState::parse)?,
        })
    })
    .transpose()
}

fn activation_row(r: &Row) -> Result<StoredActivation, StorageError> {
    Ok(StoredActivation {
        account_id: r.try_get(0)?,
        digest: digest32(r.try_get(1)?, "activation digest")?,
        issued_by: r.try_get(2)?,
        issued_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        used_at: r.try_get(5)?,
        throttle: r.try_get(6)?,
    })
}

/// [`AuthStore::decide_account`] in `tx`, which the caller commits (or
/// rolls back, to rehearse).
async fn decide_account_in(
    tx: &deadpool_postgres::Transaction<'_>,
    account_id: i64,
    officer_id: i64,
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
    check_decider(
        &subject,
        requester.as_ref(),
        decider(&**tx, officer_id).await?.as_ref(),
    )?;
    let (action, state) = if approve {
        (AccountAction::Approve, AccountState::Active)
    } else {
        (AccountAction::Reject, AccountState::Disabled)
    };
    check_transition(&subject, action)?;
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
            &[&account_id, &state.as_str(), &officer_id, &at, &approve],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    account_by_id(&**tx, account_id).await
}

/// [`AuthStore::decide_reset`] in `tx`, which the caller commits (or rolls
/// back, to rehearse).
async fn decide_reset_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: i64,
    officer_id: i64,
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
    check_decider(
        &subject,
        decider(&**tx, reset.requested_by).await?.as_ref(),
        decider(&**tx, officer_id).await?.as_ref(),
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
            &[&id, &officer_id, &at, &approve],
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
                &[&account],
            )
            .await?;
        }
        if reset.kind.removes_totp() {
            tx.execute(
                "DELETE FROM account_totp WHERE account_id = $1",
                &[&account],
            )
            .await?;
        }
        if reset.kind.removes_passkeys() {
            tx.execute("DELETE FROM passkey WHERE account_id = $1", &[&account])
                .await?;
        }
        tx.execute(
            "UPDATE web_session SET ended_at = $2, end_reason = 'reset'
             WHERE account_id = $1 AND ended_at IS NULL",
            &[&account, &at],
        )
        .await?;
        tx.execute(
            "UPDATE account SET next_session_high_risk = true WHERE id = $1",
            &[&account],
        )
        .await?;
        // A reset assumes someone else held a factor: no browser stays
        // trusted.
        tx.execute(
            "DELETE FROM login_device WHERE account_id = $1",
            &[&account],
        )
        .await?;
    }
    tx.query_opt(&format!("{RESET_SELECT} WHERE id = $1"), &[&id])
        .await?
        .map(|r| reset_row(&r))
        .transpose()
}

/// [`AuthStore::rehearse`]: `change` in a transaction rolled back.
async fn rehearse_in(
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
            let action = crate::auth::state_change(state)?;
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

#[async_trait]
impl AuthStore for PgStore {
    async fn request_account(&self, r: NewAccountRequest) -> Result<AccountRecord, StorageError> {
        let created_at = crate::instant(r.at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx
            .query_opt(
                "SELECT 1 FROM organisation WHERE id = $1",
                &[&r.organisation_id],
            )
            .await?
            .is_none()
        {
            return Err(not_found("organisation_id", "organisation"));
        }
        let requester = tx
            .query_opt(
                "SELECT state FROM account WHERE id = $1 FOR SHARE",
                &[&r.requested_by],
            )
            .await?;
        match requester {
            None => return Err(not_found("requested_by", "account")),
            Some(row) if row.try_get::<_, &str>(0)? != AccountState::Active.as_str() => {
                return Err(refuse(
                    "requested_by",
                    "the requester's account is not active",
                ));
            }
            Some(_) => {}
        }
        let id: i64 = tx
            .query_opt(
                "INSERT INTO account (login, organisation_id, role, state, requested_by,
                     created_at)
                 VALUES ($1, $2, $3, 'requested', $4, $5)
                 ON CONFLICT (login) DO NOTHING RETURNING id",
                &[
                    &r.login.as_str(),
                    &r.organisation_id,
                    &r.role.as_str(),
                    &r.requested_by,
                    &created_at,
                ],
            )
            .await?
            .ok_or_else(|| refuse("login", "already used by another account"))?
            .try_get(0)?;
        let account = account_by_id(&*tx, id).await?.ok_or_else(|| {
            StorageError::Corrupt(format!("account {id} vanished after its insertion"))
        })?;
        tx.commit().await?;
        Ok(account)
    }

    async fn rehearse(
        &self,
        change: &crate::auth::AccountChange,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rehearsed = rehearse_in(&tx, change, at).await;
        tx.rollback().await?;
        rehearsed
    }

    async fn decide_account(
        &self,
        account_id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountRecord>, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let account = decide_account_in(&tx, account_id, officer_id, approve, at).await?;
        tx.commit().await?;
        Ok(account)
    }

    async fn requests_since(
        &self,
        requested_by: i64,
        since: DateTime<Utc>,
    ) -> Result<u32, StorageError> {
        let since = crate::instant(since, "since")?;
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM account WHERE requested_by = $1 AND created_at >= $2",
                &[&requested_by, &since],
            )
            .await?
            .try_get(0)?;
        u32::try_from(n).map_err(|_| StorageError::Corrupt("request count out of range".into()))
    }

    async fn pending_requests(&self) -> Result<Vec<ReviewEntry>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "{REVIEW_SELECT} WHERE a.state = 'requested'
                     ORDER BY a.created_at IS NOT NULL, a.created_at, a.id"
                ),
                &[],
            )
            .await?
            .iter()
            .map(review_entry)
            .collect()
    }

    async fn lifecycle(&self, account_id: i64) -> Result<Option<AccountLifecycle>, StorageError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT id, created_at, requested_by, decided_by, decided_at, last_login_at,
                     next_session_high_risk
                 FROM account WHERE id = $1",
                &[&account_id],
            )
            .await?
            .map(|r| {
                Ok(AccountLifecycle {
                    account_id: r.try_get(0)?,
                    created_at: r.try_get(1)?,
                    requested_by: r.try_get(2)?,
                    decided_by: r.try_get(3)?,
                    decided_at: r.try_get(4)?,
                    last_login_at: r.try_get(5)?,
                    next_session_high_risk: r.try_get(6)?,
                })
            })
            .transpose()
    }

    async fn record_login(&self, account_id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        // GREATEST ignores NULL; never moves back.
        let n = client
            .execute(
                "UPDATE account SET last_login_at = GREATEST(last_login_at, $2),
                     next_session_high_risk = false
                 WHERE id = $1",
                &[&account_id, &at],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn record_activity(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE account SET last_login_at = GREATEST(last_login_at, $2) WHERE id = $1",
                &[&account_id, &at],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn disable_inactive(
        &self,
        last_login_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<i64>, StorageError> {
        let cutoff = crate::instant(last_login_before, "last_login_before")?;
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut ids = tx
            .query(
                &format!(
                    "UPDATE account SET state = 'disabled'
                     WHERE {}
                       AND COALESCE(last_login_at, decided_at, created_at) < $1
                     RETURNING id",
                    transition_sql("account", AccountAction::Disable)
                ),
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<i64>, _>>()?;
        ids.sort_unstable();
        // A disabled account keeps no open session.
        tx.execute(
            "UPDATE web_session SET ended_at = $2, end_reason = 'inactive'
             WHERE account_id = ANY($1) AND ended_at IS NULL",
            &[&ids, &at],
        )
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn accounts_to_review(
        &self,
        organisation_id: Option<i64>,
    ) -> Result<Vec<ReviewEntry>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "{REVIEW_SELECT} WHERE a.state <> 'disabled'
                       AND ($1::int8 IS NULL OR a.organisation_id = $1)
                     ORDER BY o.code COLLATE \"C\", a.login COLLATE \"C\""
                ),
                &[&organisation_id],
            )
            .await?
            .iter()
            .map(review_entry)
            .collect()
    }

    async fn password(&self, account_id: i64) -> Result<Option<(String, String)>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT phc, throttle FROM account_password WHERE account_id = $1")
            .await?;
        client
            .query_opt(&stmt, &[&account_id])
            .await?
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
    }

    async fn set_password(
        &self,
        account_id: i64,
        phc: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        check_phc(phc)?;
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO account_password (account_id, phc, set_at)
                 SELECT $1::int8, $2::text, $3::timestamptz
                 WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
                 ON CONFLICT (account_id) DO UPDATE SET phc = EXCLUDED.phc,
                     set_at = EXCLUDED.set_at",
                &[&account_id, &phc, &at],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn swap_throttle(
        &self,
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE account_password SET throttle = $3 WHERE account_id = $1 AND throttle = $2",
                &[&account_id, &expected, &next],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn trust_login_device(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        replaces: Option<&[u8; 32]>,
    ) -> Result<(), StorageError> {
        let at = crate::instant(at, "at")?;
        let expires_at = crate::instant(expires_at, "expires_at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(old) = replaces {
            tx.execute(
                "DELETE FROM login_device WHERE digest = $1 AND account_id = $2",
                &[&old.as_slice(), &account_id],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO login_device (digest, account_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[&digest.as_slice(), &account_id, &at, &expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT throttle FROM login_device
                 WHERE digest = $1 AND account_id = $2 AND expires_at > $3",
                &[&digest.as_slice(), &account_id, &now],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn swap_login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE login_device SET throttle = $4
                 WHERE digest = $1 AND account_id = $2 AND throttle = $3",
                &[&digest.as_slice(), &account_id, &expected, &next],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn totp(&self, account_id: i64) -> Result<Option<StoredTotp>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT sealed_secret, last_step, enrolled_at FROM account_totp
                 WHERE account_id = $1",
            )
            .await?;
        client
            .query_opt(&stmt, &[&account_id])
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

    async fn set_totp(&self, t: StoredTotp) -> Result<(), StorageError> {
        check_sealed_secret(&t.sealed_secret)?;
        let last_step = t
            .last_step
            .map(|s| step_to_i64(s, "last_step"))
            .transpose()?;
        let enrolled_at = crate::instant(t.enrolled_at, "enrolled_at")?;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                 SELECT $1::int8, $2::bytea, $3::int8, $4::timestamptz
                 WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
                 ON CONFLICT (account_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret,
                     last_step = EXCLUDED.last_step, enrolled_at = EXCLUDED.enrolled_at",
                &[&t.account_id, &t.sealed_secret, &last_step, &enrolled_at],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn totp_secrets(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT account_id, sealed_secret FROM account_totp
                 WHERE account_id > $1 ORDER BY account_id LIMIT $2",
                &[&after, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn replace_totp_secret(
        &self,
        account_id: i64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError> {
        check_sealed_secret(new)?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE account_totp SET sealed_secret = $3
                 WHERE account_id = $1 AND sealed_secret = $2",
                &[&account_id, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }

    async fn accept_totp_step(&self, account_id: i64, step: u64) -> Result<bool, StorageError> {
        let step = step_to_i64(step, "step")?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE account_totp SET last_step = $2
                 WHERE account_id = $1 AND (last_step IS NULL OR last_step < $2)",
                &[&account_id, &step],
            )
            .await?;
        Ok(n == 1)
    }

    async fn passkeys(&self, account_id: i64) -> Result<Vec<StoredPasskeyRow>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "{PASSKEY_SELECT} WHERE account_id = $1 ORDER BY created_at, credential_id"
                ),
                &[&account_id],
            )
            .await?
            .iter()
            .map(passkey_row)
            .collect()
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskeyRow>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{PASSKEY_SELECT} WHERE credential_id = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&credential_id])
            .await?
            .map(|r| passkey_row(&r))
            .transpose()
    }

    async fn add_passkey(&self, p: StoredPasskeyRow) -> Result<(), StorageError> {
        check_credential_id(&p.credential_id)?;
        let created_at = crate::instant(p.created_at, "created_at")?;
        let last_used_at = p
            .last_used_at
            .map(|t| crate::instant(t, "last_used_at"))
            .transpose()?;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO passkey (credential_id, account_id, data, created_at, last_used_at)
                 SELECT $1::bytea, $2::int8, $3::text, $4::timestamptz, $5::timestamptz
                 WHERE EXISTS (SELECT 1 FROM account WHERE id = $2)
                 ON CONFLICT DO NOTHING",
                &[
                    &p.credential_id,
                    &p.account_id,
                    &p.data,
                    &created_at,
                    &last_used_at,
                ],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else if account_exists(&**client, p.account_id).await? {
            Err(refuse("credential_id", "already registered"))
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn update_passkey(
        &self,
        credential_id: &[u8],
        data: &str,
        used_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let used_at = crate::instant(used_at, "used_at")?;
        let client = self.client().await?;
        client
            .execute(
                "UPDATE passkey SET data = $2, last_used_at = $3 WHERE credential_id = $1",
                &[&credential_id, &data, &used_at],
            )
            .await?;
        Ok(())
    }

    async fn request_reset(
        &self,
        account_id: i64,
        kind: ResetKind,
        requested_by: i64,
        at: DateTime<Utc>,
    ) -> Result<CredentialReset, StorageError> {
        let requested_at = crate::instant(at, "at")?;
        let client = self.client().await?;
        // Accounts are never deleted: checked, they stay.
        if !account_exists(&**client, account_id).await? {
            return Err(not_found("account_id", "account"));
        }
        if !account_exists(&**client, requested_by).await? {
            return Err(not_found("requested_by", "account"));
        }
        let id: i64 = client
            .query_one(
                "INSERT INTO credential_reset (account_id, kind, requested_by, requested_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&account_id, &kind.as_str(), &requested_by, &requested_at],
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

    async fn decide_reset(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<CredentialReset>, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let decided = decide_reset_in(&tx, id, officer_id, approve, at).await?;
        tx.commit().await?;
        Ok(decided)
    }

    async fn pending_resets(&self) -> Result<Vec<CredentialReset>, StorageError> {
        let client = self.client().await?;
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

    async fn issue_activation(&self, a: NewActivation) -> Result<(), StorageError> {
        if a.expires_at <= a.issued_at {
            return Err(refuse("expires_at", "must be after issued_at"));
        }
        let issued_at = crate::instant(a.issued_at, "issued_at")?;
        let expires_at = crate::instant(a.expires_at, "expires_at")?;
        let mut client = self.client().await?;
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
                &[&a.account_id],
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
                    &a.account_id,
                    &a.digest.as_slice(),
                    &a.issued_by,
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

    async fn activation(&self, account_id: i64) -> Result<Option<StoredActivation>, StorageError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{ACTIVATION_SELECT} WHERE account_id = $1"),
                &[&account_id],
            )
            .await?
            .map(|r| activation_row(&r))
            .transpose()
    }

    async fn swap_activation_throttle(
        &self,
        account_id: i64,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE activation_code SET throttle = $3 WHERE account_id = $1 AND throttle = $2",
                &[&account_id, &expected, &next],
            )
            .await?;
        Ok(changed == 1)
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
                    crate::instant(t.enrolled_at, "enrolled_at")?,
                ))
            }
            None => None,
        };
        let now = crate::instant(now, "now")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One conditional statement: of two racing completions, the second
        // re-evaluates on the first one's row and finds it used.
        let n = tx
            .execute(
                "UPDATE activation_code SET used_at = $3
                 WHERE account_id = $1 AND digest = $2 AND used_at IS NULL AND expires_at > $3
                   AND EXISTS (SELECT 1 FROM account WHERE id = $1 AND state = 'active')",
                &[&account_id, &digest.as_slice(), &now],
            )
            .await?;
        if n != 1 {
            return Ok(false);
        }
        if let Some(phc) = &factors.phc {
            tx.execute(
                "INSERT INTO account_password (account_id, phc, set_at) VALUES ($1, $2, $3)
                 ON CONFLICT (account_id) DO UPDATE SET phc = EXCLUDED.phc,
                     set_at = EXCLUDED.set_at, throttle = '{}'",
                &[&account_id, phc, &now],
            )
            .await?;
        }
        if let Some((sealed, step, enrolled_at)) = &totp {
            tx.execute(
                "INSERT INTO account_totp (account_id, sealed_secret, last_step, enrolled_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret,
                     last_step = EXCLUDED.last_step, enrolled_at = EXCLUDED.enrolled_at",
                &[&account_id, sealed, step, enrolled_at],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn link_federation(&self, link: FederationLink) -> Result<(), StorageError> {
        check_federated(&link.issuer, &link.subject)?;
        let linked_at = crate::instant(link.linked_at, "linked_at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Both accounts' rows shared-locked: a concurrent demotion or
        // suspension of the officer waits for this link, or this link sees it.
        if tx
            .query_opt(
                "SELECT 1 FROM account WHERE id = $1 FOR SHARE",
                &[&link.account_id],
            )
            .await?
            .is_none()
        {
            return Err(not_found("account_id", "account"));
        }
        check_federation_officer(
            "linked_by",
            Some(link.account_id),
            decider(&*tx, link.linked_by).await?.as_ref(),
        )?;
        let n = tx
            .execute(
                "INSERT INTO federation_link (issuer, subject, account_id, linked_by, linked_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &link.issuer,
                    &link.subject,
                    &link.account_id,
                    &link.linked_by,
                    &linked_at,
                ],
            )
            .await?;
        if n != 1 {
            return Err(refuse(
                "subject",
                "this identity is already linked to an account (unlink it first)",
            ));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unlink_federation(
        &self,
        issuer: &str,
        subject: &str,
        unlinked_by: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StorageError> {
        check_federated(issuer, subject)?;
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_federation_officer(
            "unlinked_by",
            None,
            decider(&*tx, unlinked_by).await?.as_ref(),
        )?;
        let account: Option<i64> = tx
            .query_opt(
                "DELETE FROM federation_link WHERE issuer = $1 AND subject = $2
                 RETURNING account_id",
                &[&issuer, &subject],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(account_id) = account {
            tx.execute(
                "UPDATE web_session SET ended_at = $2, end_reason = $3
                 WHERE account_id = $1 AND method = 'oidc' AND ended_at IS NULL",
                &[&account_id, &at, &FEDERATION_UNLINK_REASON],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(account)
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
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{FEDERATION_SELECT} WHERE issuer = $1 AND subject = $2"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&issuer, &subject])
            .await?
            .map(|r| {
                Ok(FederationLink {
                    issuer: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    account_id: r.try_get(2)?,
                    linked_by: r.try_get(3)?,
                    linked_at: r.try_get(4)?,
                })
            })
            .transpose()
    }

    async fn put_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        check_code("kind", kind)?;
        let expires_at = crate::instant(expires_at, "expires_at")?;
        let client = self.client().await?;
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

    async fn take_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        let now = crate::instant(now, "now")?;
        let client = self.client().await?;
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

    async fn purge_expired(
        &self,
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
        let client = self.client().await?;
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

    async fn insert_session(&self, s: StoredSession) -> Result<(), StorageError> {
        let (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at) = check_session(&s)?;
        let client = self.client().await?;
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
                    &s.account_id,
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
            .query_opt("SELECT state FROM account WHERE id = $1", &[&s.account_id])
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

    async fn session(
        &self,
        id_digest: [u8; 32],
    ) -> Result<Option<(StoredSession, AccountRecord)>, StorageError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&SESSION_SQL).await?;
        let digest: &[u8] = &id_digest;
        client
            .query_opt(&stmt, &[&digest])
            .await?
            .map(|r| session_row(&r))
            .transpose()
    }

    async fn touch_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
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

    async fn mark_step_up(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let digest: &[u8] = &id_digest;
        client
            .execute(
                "UPDATE web_session SET step_up_at = $2 WHERE id_digest = $1 AND ended_at IS NULL",
                &[&digest, &at],
            )
            .await?;
        Ok(())
    }

    async fn end_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<bool, StorageError> {
        check_code("reason", reason)?;
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
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

    async fn end_sessions_of_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64, StorageError> {
        check_code("reason", reason)?;
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE web_session SET ended_at = $2, end_reason = $3
                 WHERE account_id = $1 AND ended_at IS NULL",
                &[&account_id, &at, &reason],
            )
            .await?)
    }

    async fn suspend_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<Suspension>, StorageError> {
        check_code("reason", reason)?;
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The compare-and-set first: it locks the account's row, so of two
        // racing suspensions one ends everything and the other is `None`.
        let changed = tx
            .execute(
                "UPDATE account SET state = 'suspended' WHERE id = $1 AND state = 'active'",
                &[&account_id],
            )
            .await?;
        if changed != 1 {
            return Ok(None);
        }
        let sessions = tx
            .execute(
                "UPDATE web_session SET ended_at = $2, end_reason = $3
                 WHERE account_id = $1 AND ended_at IS NULL",
                &[&account_id, &at, &reason],
            )
            .await?;
        let credentials = tx
            .execute(
                "UPDATE api_credential SET revoked_at = $2
                 WHERE account_id = $1 AND revoked_at IS NULL",
                &[&account_id, &at],
            )
            .await?;
        let (access_tokens, api_clients) = end_api_clients(&tx, account_id, at).await?;
        // No browser stays trusted through a suspension.
        tx.execute(
            "DELETE FROM login_device WHERE account_id = $1",
            &[&account_id],
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

    async fn insert_api_client(&self, cl: ApiClientRow) -> Result<(), StorageError> {
        check_client_id(&cl.client_id)?;
        let created_at = crate::instant(cl.created_at, "created_at")?;
        let revoked_at = cl
            .revoked_at
            .map(|t| crate::instant(t, "revoked_at"))
            .transpose()?;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO api_client (client_id, account_id, public_keys, created_at,
                     revoked_at)
                 SELECT $1::text, $2::int8, $3::text, $4::timestamptz, $5::timestamptz
                 WHERE EXISTS (SELECT 1 FROM account WHERE id = $2)
                 ON CONFLICT DO NOTHING",
                &[
                    &cl.client_id,
                    &cl.account_id,
                    &cl.keys,
                    &created_at,
                    &revoked_at,
                ],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else if account_exists(&**client, cl.account_id).await? {
            Err(refuse("client_id", "already registered"))
        } else {
            Err(not_found("account_id", "account"))
        }
    }

    async fn api_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{API_CLIENT_SELECT} WHERE c.client_id = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&client_id])
            .await?
            .map(|r| api_client_row(&r))
            .transpose()
    }

    async fn revoke_api_clients_of_account(
        &self,
        account_id: i64,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (_, revoked) = end_api_clients(&tx, account_id, at).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn revoke_api_client(
        &self,
        client_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE api_client SET revoked_at = $2
                 WHERE client_id = $1 AND revoked_at IS NULL",
                &[&client_id, &at],
            )
            .await?;
        tx.execute(
            "DELETE FROM access_token WHERE client_id = $1",
            &[&client_id],
        )
        .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn insert_access_token(&self, t: AccessTokenRow) -> Result<(), StorageError> {
        let (issued_at, expires_at) = check_access_token(&t)?;
        let client = self.client().await?;
        let digest: &[u8] = &t.digest;
        let stmt = client
            .prepare_cached(
                "INSERT INTO access_token (digest, client_id, account_id, jkt, scope, issued_at,
                     expires_at)
                 SELECT $1::bytea, $2::text, $3::int8, $4::text, $5::text, $6::timestamptz,
                     $7::timestamptz
                 WHERE EXISTS (SELECT 1 FROM api_client
                               WHERE client_id = $2 AND account_id = $3 AND revoked_at IS NULL)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let n = client
            .execute(
                &stmt,
                &[
                    &digest,
                    &t.client_id,
                    &t.account_id,
                    &t.jkt,
                    &t.scope,
                    &issued_at,
                    &expires_at,
                ],
            )
            .await?;
        if n == 1 {
            return Ok(());
        }
        let live = client
            .query_opt(
                "SELECT 1 FROM api_client
                 WHERE client_id = $1 AND account_id = $2 AND revoked_at IS NULL",
                &[&t.client_id, &t.account_id],
            )
            .await?;
        Err(match live {
            None => refuse(
                "client_id",
                "no such client acting for this account, or revoked",
            ),
            Some(_) => refuse("digest", "a token with this digest is already stored"),
        })
    }

    async fn access_token(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&ACCESS_TOKEN_SQL).await?;
        let digest: &[u8] = &digest;
        client
            .query_opt(&stmt, &[&digest])
            .await?
            .map(|r| access_token_row(&r))
            .transpose()
    }

    async fn insert_replay_if_new(
        &self,
        key: [u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let (expires_at, now) = check_replay_period(expires_at, now)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(REPLAY_SQL).await?;
        let key: &[u8] = &key;
        let n = client.execute(&stmt, &[&key, &expires_at, &now]).await?;
        Ok(n == 1)
    }
}

/// Ends an account's API clients inside the caller's transaction: their
/// access tokens deleted, the clients revoked. Returns (tokens, clients).
async fn end_api_clients(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    at: DateTime<Utc>,
) -> Result<(u64, u64), StorageError> {
    let tokens = tx
        .execute(
            "DELETE FROM access_token WHERE client_id IN
               (SELECT client_id FROM api_client WHERE account_id = $1)",
            &[&account_id],
        )
        .await?;
    let clients = tx
        .execute(
            "UPDATE api_client SET revoked_at = $2
             WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id, &at],
        )
        .await?;
    Ok((tokens, clients))
}
