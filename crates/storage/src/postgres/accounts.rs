//! Accounts: their rows and the decision facts read from them, imports,
//! lookups, state changes, account requests and their history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rempart_domain::{
    Account, AccountAction, AccountId, AccountState, OrganisationId, OrganisationKind, Reference,
    Role,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::PgStore;
use crate::auth::checks::{Decider, Subject, not_found, refuse, transition_sql};
use crate::auth::sql::REVIEW_SELECT;
use crate::auth::{AccountLifecycle, NewAccountRequest, ReviewEntry};
use crate::{
    ACCOUNT_SELECT, AccountRecord, AccountWrite, RowRefusal, StorageError, StoredAccountRow,
    UpsertCount, account_upsert, parse_code,
};

/// Reads the account columns of [`ACCOUNT_SELECT`], starting at column `at`.
pub(super) fn account_record(r: &Row, at: usize) -> Result<AccountRecord, StorageError> {
    Ok(AccountRecord {
        account_id: AccountId::new(r.try_get(at)?),
        login: parse_code(r.try_get(at + 1)?, Reference::parse)?,
        role: parse_code(r.try_get(at + 2)?, Role::parse)?,
        state: parse_code(r.try_get(at + 3)?, AccountState::parse)?,
        organisation_id: OrganisationId::new(r.try_get(at + 4)?),
        organisation: parse_code(r.try_get(at + 5)?, Reference::parse)?,
        kind: parse_code(r.try_get(at + 6)?, OrganisationKind::parse)?,
        created_at: r.try_get(at + 7)?,
        departement: r.try_get(at + 8)?,
    })
}

pub(super) async fn upsert_accounts(
    store: &PgStore,
    accounts: Vec<Account>,
) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
    let mut count = UpsertCount::default();
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE account IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    // The link checks are synchronous: fetch what they may ask first.
    let codes: Vec<&str> = accounts.iter().map(|a| a.organisation.as_str()).collect();
    let org_ids: HashMap<String, (i64, String)> = tx
        .query(
            "SELECT code, id, kind FROM organisation WHERE code = ANY($1)",
            &[&codes],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, StorageError>>()?;
    let linked: Vec<&str> = accounts
        .iter()
        .flat_map(|a| [&a.requested_by, &a.approved_by])
        .flatten()
        .map(Reference::as_str)
        .collect();
    let stored_accounts: HashMap<String, (i64, String)> = tx
        .query(
            "SELECT login, organisation_id, role FROM account WHERE login = ANY($1)",
            &[&linked],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, StorageError>>()?;
    let stored_code = |s: &str| StorageError::Corrupt(format!("stored code {s:?} is unknown"));
    let (valid, mut refused) = crate::check_account_links(
        &accounts,
        |code| {
            org_ids
                .get(code)
                .map(|(id, kind)| {
                    Ok((
                        OrganisationId::new(*id),
                        OrganisationKind::parse(kind).map_err(|_| stored_code(kind))?,
                    ))
                })
                .transpose()
        },
        |login| {
            stored_accounts
                .get(login)
                .map(|(org, role)| {
                    Ok((
                        OrganisationId::new(*org),
                        Role::parse(role).map_err(|_| stored_code(role))?,
                    ))
                })
                .transpose()
        },
    )?;
    let get = tx
        .prepare_cached(
            "SELECT a.organisation_id, a.role, a.state, r.login, p.login FROM account a
             LEFT JOIN account r ON r.id = a.requested_by
             LEFT JOIN account p ON p.id = a.approved_by
             WHERE a.login = $1",
        )
        .await?;
    let ins = tx
        .prepare_cached(
            "INSERT INTO account (login, organisation_id, role, state) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    let upd = tx
        .prepare_cached(
            "UPDATE account SET organisation_id = $2, role = $3, state = $4 WHERE login = $1",
        )
        .await?;
    let mut changed = Vec::new();
    for &(index, a, org_id) in &valid {
        let stored = tx
            .query_opt(&get, &[&a.login.as_str()])
            .await?
            .map(|r| {
                Ok::<_, StorageError>(StoredAccountRow {
                    organisation_id: OrganisationId::new(r.try_get(0)?),
                    role: r.try_get(1)?,
                    state: r.try_get(2)?,
                    requested_by: r.try_get(3)?,
                    approved_by: r.try_get(4)?,
                })
            })
            .transpose()?;
        let p: [&(dyn ToSql + Sync); 4] = [
            &a.login.as_str(),
            &org_id.get(),
            &a.role.as_str(),
            &a.state.as_str(),
        ];
        // Under the table lock: nothing moves between this decision and
        // the write.
        let write =
            account_upsert(a, org_id, stored.as_ref()).tally(index, &mut count, &mut refused);
        match write {
            Some(AccountWrite::Insert) => tx.execute(&ins, &p).await?,
            Some(AccountWrite::Update) => tx.execute(&upd, &p).await?,
            None => continue,
        };
        changed.push(a);
    }
    // Links last, so requester and approver may appear anywhere in the batch.
    let set = tx
        .prepare_cached(
            "UPDATE account SET
                 requested_by = (SELECT id FROM account WHERE login = $2),
                 approved_by = (SELECT id FROM account WHERE login = $3)
             WHERE login = $1",
        )
        .await?;
    for a in changed {
        tx.execute(
            &set,
            &[
                &a.login.as_str(),
                &a.requested_by.as_ref().map(Reference::as_str),
                &a.approved_by.as_ref().map(Reference::as_str),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    refused.sort_by_key(|r| r.index);
    Ok((count, refused))
}

pub(super) async fn account_by_login(
    store: &PgStore,
    login: &Reference,
) -> Result<Option<AccountRecord>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.login = $1"))
        .await?;
    client
        .query_opt(&stmt, &[&login.as_str()])
        .await?
        .map(|r| account_record(&r, 0))
        .transpose()
}

pub(super) async fn account_by_id(
    store: &PgStore,
    id: AccountId,
) -> Result<Option<AccountRecord>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = $1"))
        .await?;
    client
        .query_opt(&stmt, &[&id.get()])
        .await?
        .map(|r| account_record(&r, 0))
        .transpose()
}

pub(super) async fn accounts_of_organisation(
    store: &PgStore,
    organisation_id: OrganisationId,
) -> Result<Vec<AccountRecord>, StorageError> {
    let client = store.client().await?;
    // Logins are ASCII: the C collation orders them as SQLite does.
    let stmt = client
        .prepare_cached(&format!(
            "{ACCOUNT_SELECT} WHERE a.organisation_id = $1 ORDER BY a.login COLLATE \"C\""
        ))
        .await?;
    client
        .query(&stmt, &[&organisation_id.get()])
        .await?
        .iter()
        .map(|r| account_record(r, 0))
        .collect()
}

pub(super) async fn set_account_state(
    store: &PgStore,
    account_id: AccountId,
    state: AccountState,
) -> Result<bool, StorageError> {
    let action = crate::auth::checks::state_change(state)?;
    let client = store.client().await?;
    // One compare-and-set carrying the state machine's rule.
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE account SET state = $2 WHERE id = $1 AND {}",
            crate::auth::checks::transition_sql("account", action)
        ))
        .await?;
    let n = client
        .execute(&stmt, &[&account_id.get(), &state.as_str()])
        .await?;
    if n == 1 {
        return Ok(true);
    }
    match subject(&**client, account_id).await? {
        None => Ok(false),
        Some(facts) => Err(crate::auth::checks::refused_change(facts, action)),
    }
}

/// Reads a row of [`REVIEW_SELECT`].
pub(super) fn review_entry(r: &Row) -> Result<ReviewEntry, StorageError> {
    let account = account_record(r, 0)?;
    let lifecycle = AccountLifecycle {
        account_id: account.account_id,
        created_at: r.try_get(9)?,
        requested_by: r.try_get::<_, Option<i64>>(10)?.map(AccountId::new),
        decided_by: r.try_get::<_, Option<i64>>(11)?.map(AccountId::new),
        decided_at: r.try_get(12)?,
        last_login_at: r.try_get(13)?,
        next_session_high_risk: r.try_get(14)?,
    };
    Ok(ReviewEntry { account, lifecycle })
}

pub(super) async fn account_exists(c: &impl GenericClient, id: i64) -> Result<bool, StorageError> {
    Ok(c.query_opt("SELECT 1 FROM account WHERE id = $1", &[&id])
        .await?
        .is_some())
}

pub(super) async fn account_row(
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
    account_id: AccountId,
) -> Result<Option<Subject>, StorageError> {
    c.query_opt(
        "SELECT a.organisation_id, o.kind, a.state, a.requested_by, a.approved_by,
             a.decided_by IS NOT NULL
         FROM account a JOIN organisation o ON o.id = a.organisation_id
         WHERE a.id = $1 FOR UPDATE OF a",
        &[&account_id.get()],
    )
    .await?
    .map(|r| {
        Ok(Subject {
            account_id,
            organisation_id: OrganisationId::new(r.try_get(0)?),
            kind: parse_code(r.try_get(1)?, OrganisationKind::parse)?,
            state: parse_code(r.try_get(2)?, AccountState::parse)?,
            requested_by: r.try_get::<_, Option<i64>>(3)?.map(AccountId::new),
            approved_by: r.try_get::<_, Option<i64>>(4)?.map(AccountId::new),
            decided: r.try_get(5)?,
        })
    })
    .transpose()
}

/// What the four-eyes rule checks about a decider, its row locked against
/// a concurrent change of role or state until the decision commits.
pub(super) async fn decider(
    c: &impl GenericClient,
    officer_id: AccountId,
) -> Result<Option<Decider>, StorageError> {
    c.query_opt(
        "SELECT organisation_id, role, state FROM account WHERE id = $1 FOR SHARE",
        &[&officer_id.get()],
    )
    .await?
    .map(|r| {
        Ok(Decider {
            account_id: officer_id,
            organisation_id: OrganisationId::new(r.try_get(0)?),
            role: parse_code(r.try_get(1)?, Role::parse)?,
            state: parse_code(r.try_get(2)?, AccountState::parse)?,
        })
    })
    .transpose()
}

pub(super) async fn request_account(
    store: &PgStore,
    r: NewAccountRequest,
) -> Result<AccountRecord, StorageError> {
    let created_at = crate::instant(r.at, "at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    if tx
        .query_opt(
            "SELECT 1 FROM organisation WHERE id = $1",
            &[&r.organisation_id.get()],
        )
        .await?
        .is_none()
    {
        return Err(not_found("organisation_id", "organisation"));
    }
    let requester = tx
        .query_opt(
            "SELECT state FROM account WHERE id = $1 FOR SHARE",
            &[&r.requested_by.get()],
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
                &r.organisation_id.get(),
                &r.role.as_str(),
                &r.requested_by.get(),
                &created_at,
            ],
        )
        .await?
        .ok_or_else(|| refuse("login", "already used by another account"))?
        .try_get(0)?;
    let account = account_row(&*tx, id).await?.ok_or_else(|| {
        StorageError::Corrupt(format!("account {id} vanished after its insertion"))
    })?;
    tx.commit().await?;
    Ok(account)
}

pub(super) async fn requests_since(
    store: &PgStore,
    requested_by: AccountId,
    since: DateTime<Utc>,
) -> Result<u32, StorageError> {
    let since = crate::instant(since, "since")?;
    let client = store.client().await?;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM account WHERE requested_by = $1 AND created_at >= $2",
            &[&requested_by.get(), &since],
        )
        .await?
        .try_get(0)?;
    u32::try_from(n).map_err(|_| StorageError::Corrupt("request count out of range".into()))
}

pub(super) async fn pending_requests(store: &PgStore) -> Result<Vec<ReviewEntry>, StorageError> {
    let client = store.client().await?;
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

pub(super) async fn lifecycle(
    store: &PgStore,
    account_id: AccountId,
) -> Result<Option<AccountLifecycle>, StorageError> {
    let client = store.client().await?;
    client
        .query_opt(
            "SELECT id, created_at, requested_by, decided_by, decided_at, last_login_at,
                 next_session_high_risk
             FROM account WHERE id = $1",
            &[&account_id.get()],
        )
        .await?
        .map(|r| {
            Ok(AccountLifecycle {
                account_id: AccountId::new(r.try_get(0)?),
                created_at: r.try_get(1)?,
                requested_by: r.try_get::<_, Option<i64>>(2)?.map(AccountId::new),
                decided_by: r.try_get::<_, Option<i64>>(3)?.map(AccountId::new),
                decided_at: r.try_get(4)?,
                last_login_at: r.try_get(5)?,
                next_session_high_risk: r.try_get(6)?,
            })
        })
        .transpose()
}

pub(super) async fn record_login(
    store: &PgStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    // GREATEST ignores NULL; never moves back.
    let n = client
        .execute(
            "UPDATE account SET last_login_at = GREATEST(last_login_at, $2),
                 next_session_high_risk = false
             WHERE id = $1",
            &[&account_id.get(), &at],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn record_activity(
    store: &PgStore,
    account_id: AccountId,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let at = crate::instant(at, "at")?;
    let client = store.client().await?;
    let n = client
        .execute(
            "UPDATE account SET last_login_at = GREATEST(last_login_at, $2) WHERE id = $1",
            &[&account_id.get(), &at],
        )
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(not_found("account_id", "account"))
    }
}

pub(super) async fn disable_inactive(
    store: &PgStore,
    last_login_before: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<Vec<AccountId>, StorageError> {
    let cutoff = crate::instant(last_login_before, "last_login_before")?;
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
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
    Ok(ids.into_iter().map(AccountId::new).collect())
}

pub(super) async fn accounts_to_review(
    store: &PgStore,
    organisation_id: Option<OrganisationId>,
) -> Result<Vec<ReviewEntry>, StorageError> {
    let client = store.client().await?;
    client
        .query(
            &format!(
                "{REVIEW_SELECT} WHERE a.state <> 'disabled'
                   AND ($1::int8 IS NULL OR a.organisation_id = $1)
                 ORDER BY o.code COLLATE \"C\", a.login COLLATE \"C\""
            ),
            &[&organisation_id.map(OrganisationId::get)],
        )
        .await?
        .iter()
        .map(review_entry)
        .collect()
}
