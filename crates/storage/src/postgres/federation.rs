//! Federation links: identities of an OpenID provider linked to accounts by
//! an officer.

use chrono::{DateTime, Utc};
use rempart_domain::AccountId;

use super::PgStore;
use super::accounts::decider;
use crate::StorageError;
use crate::auth::FederationLink;
use crate::auth::checks::{
    FEDERATION_SELECT, FEDERATION_UNLINK_REASON, check_federated, check_federation_officer,
    not_found, refuse,
};

pub(super) async fn link_federation(
    store: &PgStore,
    link: FederationLink,
) -> Result<(), StorageError> {
    check_federated(&link.issuer, &link.subject)?;
    let linked_at = crate::instant(link.linked_at, "linked_at")?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // Both accounts' rows shared-locked: a concurrent demotion or
    // suspension of the officer waits for this link, or this link sees it.
    if tx
        .query_opt(
            "SELECT 1 FROM account WHERE id = $1 FOR SHARE",
            &[&link.account_id.get()],
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
                &link.account_id.get(),
                &link.linked_by.get(),
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

pub(super) async fn unlink_federation(
    store: &PgStore,
    issuer: &str,
    subject: &str,
    unlinked_by: AccountId,
    at: DateTime<Utc>,
) -> Result<Option<AccountId>, StorageError> {
    check_federated(issuer, subject)?;
    let at = crate::instant(at, "at")?;
    let mut client = store.client().await?;
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
    Ok(account.map(AccountId::new))
}

pub(super) async fn federation_link(
    store: &PgStore,
    issuer: &str,
    subject: &str,
) -> Result<Option<FederationLink>, StorageError> {
    // Nothing longer or stranger was ever stored: no need to ask.
    if check_federated(issuer, subject).is_err() {
        return Ok(None);
    }
    let client = store.client().await?;
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
                account_id: AccountId::new(r.try_get(2)?),
                linked_by: AccountId::new(r.try_get(3)?),
                linked_at: r.try_get(4)?,
            })
        })
        .transpose()
}
