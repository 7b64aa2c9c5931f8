//! Federation links: identities of an OpenID provider linked to accounts by
//! an officer.

use chrono::{DateTime, Utc};
use rempart_domain::AccountId;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use super::accounts::{account_exists, decider};
use super::values::{instant_text, parse_instant};
use crate::StorageError;
use crate::auth::FederationLink;
use crate::auth::checks::{
    FEDERATION_SELECT, FEDERATION_UNLINK_REASON, check_federated, check_federation_officer,
    not_found, refuse,
};

pub(super) async fn link_federation(
    store: &SqliteStore,
    link: FederationLink,
) -> Result<(), StorageError> {
    check_federated(&link.issuer, &link.subject)?;
    let linked_at = instant_text(link.linked_at, "linked_at")?;
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !account_exists(&tx, link.account_id.get())? {
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
                link.account_id.get(),
                link.linked_by.get(),
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

pub(super) async fn unlink_federation(
    store: &SqliteStore,
    issuer: &str,
    subject: &str,
    unlinked_by: AccountId,
    at: DateTime<Utc>,
) -> Result<Option<AccountId>, StorageError> {
    check_federated(issuer, subject)?;
    let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
    let at = instant_text(at, "at")?;
    store
        .write(move |c| {
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
            Ok(account.map(AccountId::new))
        })
        .await
}

pub(super) async fn federation_link(
    store: &SqliteStore,
    issuer: &str,
    subject: &str,
) -> Result<Option<FederationLink>, StorageError> {
    // Nothing longer or stranger was ever stored: no need to ask.
    if check_federated(issuer, subject).is_err() {
        return Ok(None);
    }
    let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
    store
        .read_point(move |c| {
            c.prepare_cached(&format!(
                "{FEDERATION_SELECT} WHERE issuer = ?1 AND subject = ?2"
            ))?
            .query_and_then(params![issuer, subject], |r| {
                Ok::<_, StorageError>(FederationLink {
                    issuer: r.get(0)?,
                    subject: r.get(1)?,
                    account_id: AccountId::new(r.get(2)?),
                    linked_by: AccountId::new(r.get(3)?),
                    linked_at: parse_instant(&r.get::<_, String>(4)?, "linked_at")?,
                })
            })?
            .next()
            .transpose()
        })
        .await
}
