//! Accounts: their rows and the decision facts read from them, imports,
//! lookups, state changes, account requests and their history.

use chrono::{DateTime, Utc};
use rempart_domain::{
    Account, AccountAction, AccountId, AccountState, OrganisationId, OrganisationKind, Reference,
    Role,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::values::{instant_text, optional_instant};
use crate::auth::checks::{Decider, Subject, not_found, refuse, transition_sql};
use crate::auth::sql::REVIEW_SELECT;
use crate::auth::{AccountLifecycle, NewAccountRequest, ReviewEntry};
use crate::{
    ACCOUNT_SELECT, AccountRecord, AccountWrite, RowRefusal, StorageError, StoredAccountRow,
    UpsertCount, account_upsert, parse_code,
};

/// Reads the account columns of [`ACCOUNT_SELECT`], starting at column `at`.
pub(super) fn account_record(r: &Row<'_>, at: usize) -> Result<AccountRecord, StorageError> {
    Ok(AccountRecord {
        account_id: AccountId::new(r.get(at)?),
        login: parse_code(r.get(at + 1)?, Reference::parse)?,
        role: parse_code(r.get(at + 2)?, Role::parse)?,
        state: parse_code(r.get(at + 3)?, AccountState::parse)?,
        organisation_id: OrganisationId::new(r.get(at + 4)?),
        organisation: parse_code(r.get(at + 5)?, Reference::parse)?,
        kind: parse_code(r.get(at + 6)?, OrganisationKind::parse)?,
        created_at: optional_instant(r.get(at + 7)?, "created_at")?,
        departement: r.get(at + 8)?,
    })
}

pub(super) async fn upsert_accounts(
    store: &SqliteStore,
    accounts: Vec<Account>,
) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut count = UpsertCount::default();
            let mut refused;
            {
                let mut org =
                    tx.prepare_cached("SELECT id, kind FROM organisation WHERE code = ?1")?;
                let mut who = tx
                    .prepare_cached("SELECT organisation_id, role FROM account WHERE login = ?1")?;
                let (valid, r) = crate::check_account_links(
                    &accounts,
                    |code| {
                        org.query_row([code], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })
                        .optional()?
                        .map(|(id, kind)| {
                            Ok((
                                OrganisationId::new(id),
                                parse_code(kind, OrganisationKind::parse)?,
                            ))
                        })
                        .transpose()
                    },
                    |login| {
                        who.query_row([login], |r| {
                            Ok((
                                OrganisationId::new(r.get::<_, i64>(0)?),
                                r.get::<_, String>(1)?,
                            ))
                        })
                        .optional()?
                        .map(|(id, role)| Ok((id, parse_code(role, Role::parse)?)))
                        .transpose()
                    },
                )?;
                refused = r;
                let mut get = tx.prepare_cached(
                    "SELECT a.organisation_id, a.role, a.state, r.login, p.login FROM account a
                     LEFT JOIN account r ON r.id = a.requested_by
                     LEFT JOIN account p ON p.id = a.approved_by
                     WHERE a.login = ?1",
                )?;
                let mut ins = tx.prepare_cached(
                "INSERT INTO account (login, organisation_id, role, state) VALUES (?1, ?2, ?3, ?4)",
            )?;
                let mut upd = tx.prepare_cached(
                "UPDATE account SET organisation_id = ?2, role = ?3, state = ?4 WHERE login = ?1",
            )?;
                let mut changed = Vec::new();
                for &(index, a, org_id) in &valid {
                    let stored = get
                        .query_row([a.login.as_str()], |r| {
                            Ok(StoredAccountRow {
                                organisation_id: OrganisationId::new(r.get(0)?),
                                role: r.get(1)?,
                                state: r.get(2)?,
                                requested_by: r.get(3)?,
                                approved_by: r.get(4)?,
                            })
                        })
                        .optional()?;
                    let p = params![
                        a.login.as_str(),
                        org_id.get(),
                        a.role.as_str(),
                        a.state.as_str()
                    ];
                    // In the write transaction: nothing moves between this
                    // decision and the write.
                    let write = account_upsert(a, org_id, stored.as_ref()).tally(
                        index,
                        &mut count,
                        &mut refused,
                    );
                    match write {
                        Some(AccountWrite::Insert) => ins.execute(p)?,
                        Some(AccountWrite::Update) => upd.execute(p)?,
                        None => continue,
                    };
                    changed.push(a);
                }
                // Links last, so requester and approver may appear anywhere in the batch.
                let mut set = tx.prepare_cached(
                    "UPDATE account SET
                         requested_by = (SELECT id FROM account WHERE login = ?2),
                         approved_by = (SELECT id FROM account WHERE login = ?3)
                     WHERE login = ?1",
                )?;
                refused.sort_by_key(|r| r.index);
                for a in changed {
                    set.execute(params![
                        a.login.as_str(),
                        a.requested_by.as_ref().map(Reference::as_str),
                        a.approved_by.as_ref().map(Reference::as_str)
                    ])?;
                }
            }
            tx.commit()?;
            Ok((count, refused))
        })
        .await
}

pub(super) async fn account_by_login(
    store: &SqliteStore,
    login: &Reference,
) -> Result<Option<AccountRecord>, StorageError> {
    let login = login.as_str().to_string();
    store
        .read(move |c| {
            c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.login = ?1"))?
                .query_and_then([login], |r| account_record(r, 0))?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn account_by_id(
    store: &SqliteStore,
    id: AccountId,
) -> Result<Option<AccountRecord>, StorageError> {
    store
        .read_point(move |c| {
            c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = ?1"))?
                .query_and_then([id.get()], |r| account_record(r, 0))?
                .next()
                .transpose()
        })
        .await
}

pub(super) async fn accounts_of_organisation(
    store: &SqliteStore,
    organisation_id: OrganisationId,
) -> Result<Vec<AccountRecord>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(&format!(
                "{ACCOUNT_SELECT} WHERE a.organisation_id = ?1 ORDER BY a.login"
            ))?
            .query_and_then([organisation_id.get()], |r| account_record(r, 0))?
            .collect()
        })
        .await
}

pub(super) async fn set_account_state(
    store: &SqliteStore,
    account_id: AccountId,
    state: AccountState,
) -> Result<bool, StorageError> {
    let action = crate::auth::checks::state_change(state)?;
    store
        .write(move |c| {
            // One compare-and-set carrying the state machine's rule.
            let n = c
                .prepare_cached(&format!(
                    "UPDATE account SET state = ?2 WHERE id = ?1 AND {}",
                    crate::auth::checks::transition_sql("account", action)
                ))?
                .execute(params![account_id.get(), state.as_str()])?;
            if n == 1 {
                return Ok(true);
            }
            match subject(c, account_id)? {
                None => Ok(false),
                Some(facts) => Err(crate::auth::checks::refused_change(facts, action)),
            }
        })
        .await
}

pub(super) fn lifecycle_at(r: &Row<'_>, at: usize) -> Result<AccountLifecycle, StorageError> {
    Ok(AccountLifecycle {
        account_id: AccountId::new(r.get(at)?),
        created_at: optional_instant(r.get(at + 1)?, "created_at")?,
        requested_by: r.get::<_, Option<i64>>(at + 2)?.map(AccountId::new),
        decided_by: r.get::<_, Option<i64>>(at + 3)?.map(AccountId::new),
        decided_at: optional_instant(r.get(at + 4)?, "decided_at")?,
        last_login_at: optional_instant(r.get(at + 5)?, "last_login_at")?,
        next_session_high_risk: r.get(at + 6)?,
    })
}

/// Reads a row of [`REVIEW_SELECT`]: the account's id is column 0 and
/// the history follows its organisation, from column 9.
pub(super) fn review_entry(r: &Row<'_>) -> Result<ReviewEntry, StorageError> {
    let account = account_record(r, 0)?;
    let lifecycle = AccountLifecycle {
        account_id: account.account_id,
        created_at: optional_instant(r.get(9)?, "created_at")?,
        requested_by: r.get::<_, Option<i64>>(10)?.map(AccountId::new),
        decided_by: r.get::<_, Option<i64>>(11)?.map(AccountId::new),
        decided_at: optional_instant(r.get(12)?, "decided_at")?,
        last_login_at: optional_instant(r.get(13)?, "last_login_at")?,
        next_session_high_risk: r.get(14)?,
    };
    Ok(ReviewEntry { account, lifecycle })
}

pub(super) fn account_exists(c: &Connection, id: i64) -> Result<bool, StorageError> {
    Ok(c.prepare_cached("SELECT 1 FROM account WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn account_row(
    c: &Connection,
    id: AccountId,
) -> Result<Option<AccountRecord>, StorageError> {
    c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = ?1"))?
        .query_and_then([id.get()], |r| account_record(r, 0))?
        .next()
        .transpose()
}

/// The organisation facts of the account a decision is about.
pub(super) fn subject(
    c: &Connection,
    account_id: AccountId,
) -> Result<Option<Subject>, StorageError> {
    c.prepare_cached(
        "SELECT a.organisation_id, o.kind, a.state, a.requested_by, a.approved_by,
             a.decided_by IS NOT NULL
         FROM account a JOIN organisation o ON o.id = a.organisation_id WHERE a.id = ?1",
    )?
    .query_and_then([account_id.get()], |r| {
        Ok::<_, StorageError>(Subject {
            account_id,
            organisation_id: OrganisationId::new(r.get(0)?),
            kind: parse_code(r.get(1)?, OrganisationKind::parse)?,
            state: parse_code(r.get(2)?, AccountState::parse)?,
            requested_by: r.get::<_, Option<i64>>(3)?.map(AccountId::new),
            approved_by: r.get::<_, Option<i64>>(4)?.map(AccountId::new),
            decided: r.get(5)?,
        })
    })?
    .next()
    .transpose()
}

/// What the four-eyes rule checks about a decider.
pub(super) fn decider(
    c: &Connection,
    officer_id: AccountId,
) -> Result<Option<Decider>, StorageError> {
    c.prepare_cached("SELECT organisation_id, role, state FROM account WHERE id = ?1")?
        .query_and_then([officer_id.get()], |r| {
            Ok::<_, StorageError>(Decider {
                account_id: officer_id,
                organisation_id: OrganisationId::new(r.get(0)?),
                role: parse_code(r.get(1)?, Role::parse)?,
                state: parse_code(r.get(2)?, AccountState::parse)?,
            })
        })?
        .next()
        .transpose()
}

pub(super) async fn request_account(
    store: &SqliteStore,
    r: NewAccountRequest,
) -> Result<AccountRecord, StorageError> {
    let created_at = instant_text(r.at, "at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let org = tx
                .prepare_cached("SELECT 1 FROM organisation WHERE id = ?1")?
                .query_row([r.organisation_id.get()], |_| Ok(()))
                .optional()?;
            if org.is_none() {
                return Err(not_found("organisation_id", "organisation"));
            }
            let requester: Option<String> = tx
                .prepare_cached("SELECT state FROM account WHERE id = ?1")?
                .query_row([r.requested_by.get()], |r| r.get(0))
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
                        r.organisation_id.get(),
                        r.role.as_str(),
                        r.requested_by.get(),
                        created_at
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                return Err(refuse("login", "already used by another account"));
            };
            let account = account_row(&tx, AccountId::new(id))?.ok_or_else(|| {
                StorageError::Corrupt(format!("account {id} vanished after its insertion"))
            })?;
            tx.commit()?;
            Ok(account)
        })
        .await
}

pub(super) async fn requests_since(
    store: &SqliteStore,
    requested_by: AccountId,
    since: DateTime<Utc>,
) -> Result<u32, StorageError> {
    let since = instant_text(since, "since")?;
    store
        .read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM account WHERE requested_by = ?1 AND created_at >= ?2",
                )?
                .query_row(params![requested_by.get(), since], |r| r.get(0))?;
            u32::try_from(n).map_err(|_| StorageError::Corrupt("request count out of range".into()))
        })
        .await
}

pub(super) async fn pending_requests(
    store: &SqliteStore,
) -> Result<Vec<ReviewEntry>, StorageError> {
    store
        .read(|c| {
            c.prepare_cached(&format!(
                "{REVIEW_SELECT} WHERE a.state = 'requested'
                 ORDER BY a.created_at IS NOT NULL, a.created_at, a.id"
            ))?
            .query_and_then([], review_entry)?
            .collect()
        })
        .await
}

pub(super) async fn lifecycle(
    store: &SqliteStore,
    account_id: AccountId,
) -> Result<Option<AccountLifecycle>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(
                "SELECT id, created_at, requested_by, decided_by, decided_at, last_login_at,
                     next_session_high_risk
                 FROM account WHERE id = ?1",
            )?
            .query_and_then([account_id.get()], |r| lifecycle_at(r, 0))?
            .next()
            .transpose()
        })
        .await
}

pub(super) async fn record_login(
    store: &SqliteStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            // Never moves back: logins may finish out of order.
            let n = c
                .prepare_cached(
                    "UPDATE account SET last_login_at = max(coalesce(last_login_at, ?2), ?2),
                         next_session_high_risk = 0
                     WHERE id = ?1",
                )?
                .execute(params![account_id.get(), at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
}

pub(super) async fn record_activity(
    store: &SqliteStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE account SET last_login_at = max(coalesce(last_login_at, ?2), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![account_id.get(), at])?;
            if n == 1 {
                Ok(())
            } else {
                Err(not_found("account_id", "account"))
            }
        })
        .await
}

pub(super) async fn disable_inactive(
    store: &SqliteStore,
    last_login_before: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<Vec<AccountId>, StorageError> {
    let cutoff = instant_text(last_login_before, "last_login_before")?;
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
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
            let ids: Vec<AccountId> = ids.into_iter().map(AccountId::new).collect();
            Ok(ids)
        })
        .await
}

pub(super) async fn accounts_to_review(
    store: &SqliteStore,
    organisation_id: Option<OrganisationId>,
) -> Result<Vec<ReviewEntry>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(&format!(
                "{REVIEW_SELECT} WHERE a.state <> 'disabled'
                   AND (?1 IS NULL OR a.organisation_id = ?1)
                 ORDER BY o.code, a.login"
            ))?
            .query_and_then([organisation_id.map(OrganisationId::get)], review_entry)?
            .collect()
        })
        .await
}
