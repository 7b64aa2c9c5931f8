//! Officer administration: what France Travail officers (and, for
//! freezes, agency security) run the registry with. Mandates
//! ([`Consultation::grant_mandate`] under four eyes,
//! [`Consultation::decide_grant`], [`Consultation::revoke_mandate`]),
//! organisations and accounts ([`Consultation::organisations`],
//! [`Consultation::accounts`], [`Consultation::set_account_state`]) and
//! the guard's freezes ([`Consultation::lift_freeze`]).
//!
//! Each operation reads top to bottom like a read: authenticate →
//! authorize → guard where it counts → rehearse → ledger → change
//! ([`Consultation::leaf_then`]). The store and the guard's freezes are
//! read and changed here directly, every failure ledgered through
//! [`Consultation::fail_on`].

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{
    AccountId, AccountState, MandateId, Organisation, OrganisationId, PersonId, Purpose, Reference,
};
use rempart_guard::{AttemptKind, Fields};
use rempart_ledger::{Action as LeafAction, Decision as LeafDecision, DenyReason, FieldGroups};
use rempart_policy::Action;
use rempart_storage::{AccountChange, NewMandate};

use crate::authenticate::Caller;
use crate::authorize::{self, GRANT_PREFIX, mandate_reference, written_reason};
use crate::kernel::{ChangeRefusal, Consultation, Ctx, Presented, Refusal};
use crate::views::{AccountView, GrantDecision, GrantRequestView, MandateView};

/// Longest reason for lifting a freeze, in bytes: its leaf's note also
/// names the organisation and the outcome (at most 45 bytes more), and a
/// note holds [`MAX_REASON_BYTES`](crate::authorize::MAX_REASON_BYTES).
pub const MAX_LIFT_REASON_BYTES: usize = 950;

/// A mandate grant by an officer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The person the mandate is on.
    pub person_id: PersonId,
    /// The organisation it lets read.
    pub organisation_id: OrganisationId,
    /// The one account of it that may read, or all of them.
    pub account_id: Option<AccountId>,
    /// What for.
    pub purpose: Purpose,
    /// First day (today if absent).
    pub valid_from: Option<NaiveDate>,
    /// Exclusive end; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
    /// Where the mandate comes from (orientation decision, training
    /// enrolment…).
    pub source: Reference,
}

/// An organisation as administration sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganisationEntry {
    /// Its id in the registry.
    pub id: OrganisationId,
    /// The organisation itself.
    pub organisation: Organisation,
    /// Since when the guard has frozen every account of it, if it has.
    pub frozen_since: Option<DateTime<Utc>>,
}

/// Organisations, for account administration.
pub type Organisations = Vec<OrganisationEntry>;

/// What a grant came to.
#[derive(Debug)]
pub enum Granted {
    /// The mandate, made.
    Mandate(MandateView),
    /// A grant to the officer's own organisation, waiting for an officer of
    /// another.
    Requested(GrantRequestView),
}

/// Why the store refused a grant request's decision: the four-eyes rule
/// (`officer_id: …`) is a 403, the rest as for a grant.
fn decision_refused(e: rempart_storage::StorageError) -> ChangeRefusal {
    match e {
        rempart_storage::StorageError::Refused {
            field: "officer_id",
            ..
        }
        | rempart_storage::StorageError::NotFound {
            field: "officer_id",
            ..
        } => ChangeRefusal::new(DenyReason::FourEyes, Refusal::Forbidden),
        e => grant_refused(e),
    }
}

/// Why the store refused a mandate grant.
fn grant_refused(e: rempart_storage::StorageError) -> ChangeRefusal {
    match e {
        e @ (rempart_storage::StorageError::Refused { .. }
        | rempart_storage::StorageError::NotFound { .. }) => ChangeRefusal::new(
            DenyReason::InvalidRequest,
            Refusal::invalid(
                "mandate",
                e.refused()
                    .map_or_else(|| e.to_string(), |(f, r)| format!("{f}: {r}")),
            ),
        ),
        e => ChangeRefusal::failed("mandate", &e),
    }
}

impl Consultation {
    /// Grants a mandate (France Travail officers). A grant to the
    /// officer's own organisation is not made but requested: an officer of
    /// another organisation decides it ([`Consultation::decide_grant`]).
    pub async fn grant_mandate(
        &self,
        presented: &Presented<'_>,
        grant: Grant,
    ) -> Result<Granted, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateGrant, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::MandateGrant, now).for_purpose(grant.purpose);
        let person_id = grant.person_id;
        let mandates = self.mandates_of(&ctx, person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::GrantMandate,
            person_id,
            grant.purpose,
            &mandates,
        )
        .await?;
        // Grants are the guard's business too: a burst of them is how one
        // hands a colleague a caseload to read (quota, alert).
        let attempt =
            self.attempts(&ctx, None)
                .of(AttemptKind::MandateGrant, Some(person_id), Fields::NONE);
        self.screen(&ctx, &attempt).await?;
        let today = now.date_naive();
        let new = NewMandate {
            reference: mandate_reference(GRANT_PREFIX, now),
            organisation_id: grant.organisation_id,
            account_id: grant.account_id,
            person_id,
            purpose: grant.purpose,
            valid_from: grant.valid_from.unwrap_or(today),
            valid_to: grant.valid_to,
            source: grant.source,
        };
        // Rehearsed (an invalid grant is one denial), ledgered under its
        // reference, then made.
        if let Err(e) = self.store.rehearse_grant(&new).await {
            return Err(self
                .refuse_rehearsed(&ctx, Some(person_id), grant_refused(e), None)
                .await);
        }
        // Four eyes: an officer never hands its own organisation a
        // mandate alone (a colleague given a caseload to read): the grant
        // waits for an officer of another organisation, as account
        // decisions do.
        if grant.organisation_id == caller.account.organisation_id {
            let leaf = ctx.leaf(
                Some(person_id),
                FieldGroups::EMPTY,
                LeafDecision::Allow,
                None,
                Some(format!(
                    "mandate {} requested for the officer's own organisation: awaits an officer of another",
                    new.reference
                )),
            );
            let requested_by = caller.account.account_id;
            return self
                .leaf_then(&ctx, leaf, async {
                    self.store
                        .request_grant(new, requested_by, now)
                        .await
                        .map(|r| Granted::Requested(r.into()))
                        .map_err(grant_refused)
                })
                .await;
        }
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("mandate {}", new.reference)),
        );
        self.leaf_then(&ctx, leaf, async {
            self.store
                .grant_mandate(new)
                .await
                .map(|m| Granted::Mandate(m.into()))
                .map_err(grant_refused)
        })
        .await
    }

    /// An officer of another organisation than the requester's approves
    /// (the mandate is made) or rejects a grant request. The same checks as
    /// a grant (policy, guard quota), four eyes in the store, rehearsed,
    /// ledgered, then decided. A request decided already, or none, is
    /// `NotFound`.
    pub async fn decide_grant(
        &self,
        presented: &Presented<'_>,
        request_id: i64,
        approve: bool,
    ) -> Result<GrantDecision, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateGrant, now)
            .await?;
        let who = authorize::who(&caller.account);
        let mut ctx = Ctx::new(&caller, LeafAction::MandateGrant, now);
        let pending = self
            .fail_on(
                &ctx,
                None,
                "mandate requests",
                self.store.pending_grants().await,
            )
            .await?;
        let Some(request) = pending.into_iter().find(|r| r.id == request_id) else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        let m = &request.mandate;
        ctx.purpose = Some(m.purpose);
        let person_id = m.person_id;
        let mandates = self.mandates_of(&ctx, person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::GrantMandate,
            person_id,
            m.purpose,
            &mandates,
        )
        .await?;
        if approve {
            let attempt = self.attempts(&ctx, None).of(
                AttemptKind::MandateGrant,
                Some(person_id),
                Fields::NONE,
            );
            self.screen(&ctx, &attempt).await?;
        }
        let officer = caller.account.account_id;
        let undecided = || ChangeRefusal::new(DenyReason::InvalidRequest, Refusal::NotFound);
        let about = format!("mandate request {request_id}");
        let rehearsed = match self
            .store
            .rehearse_grant_decision(request_id, officer, approve, now)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(undecided()),
            Err(e) => Err(decision_refused(e)),
        };
        if let Err(refused) = rehearsed {
            return Err(self
                .refuse_rehearsed(&ctx, Some(person_id), refused, Some(about))
                .await);
        }
        let note = if approve {
            format!("{about} approved: mandate {}", m.reference)
        } else {
            format!("{about} rejected")
        };
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(note),
        );
        self.leaf_then(&ctx, leaf, async {
            match self
                .store
                .decide_grant(request_id, officer, approve, now)
                .await
            {
                Ok(Some(decision)) => Ok(GrantDecision::from(decision)),
                Ok(None) => Err(undecided()),
                Err(e) => Err(decision_refused(e)),
            }
        })
        .await
    }

    /// Grant requests awaiting a second officer, oldest first (officers).
    pub async fn pending_grant_requests(
        &self,
        presented: &Presented<'_>,
    ) -> Result<Vec<GrantRequestView>, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        let pending = self
            .fail_on(
                &ctx,
                None,
                "mandate requests",
                self.store.pending_grants().await,
            )
            .await?;
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("pending mandate requests ({} rows)", pending.len())),
        ))
        .await?;
        Ok(pending.into_iter().map(GrantRequestView::from).collect())
    }

    /// Revokes a mandate (France Travail officers), effective from the
    /// next request.
    pub async fn revoke_mandate(
        &self,
        presented: &Presented<'_>,
        mandate_id: MandateId,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateRevoke, now)
            .await?;
        let who = authorize::who(&caller.account);
        let mut ctx = Ctx::new(&caller, LeafAction::MandateRevoke, now);
        let mandate = self
            .fail_on(&ctx, None, "mandate", self.store.mandate(mandate_id).await)
            .await?;
        let Some(mandate) = mandate.filter(|m| m.revoked_at.is_none()) else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        ctx.purpose = Some(mandate.purpose);
        let mandates = self.mandates_of(&ctx, mandate.person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::RevokeMandate,
            mandate.person_id,
            mandate.purpose,
            &mandates,
        )
        .await?;
        // Ledgered, then made (revoked meanwhile: not made, not found).
        let leaf = ctx.leaf(
            Some(mandate.person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("mandate {mandate_id}")),
        );
        self.leaf_then(&ctx, leaf, async {
            match self.store.revoke_mandate(mandate_id, now).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ChangeRefusal::new(
                    DenyReason::InvalidRequest,
                    Refusal::NotFound,
                )),
                Err(e) => Err(ChangeRefusal::failed("mandate", &e)),
            }
        })
        .await
    }

    /// Organisations (account administration).
    pub async fn organisations(&self, presented: &Presented<'_>) -> Result<Organisations, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        let all = self
            .fail_on(
                &ctx,
                None,
                "organisations",
                self.store.organisations().await,
            )
            .await?;
        let frozen = self
            .fail_on(&ctx, None, "guard", self.guard.frozen_organisations().await)
            .await?;
        // Every answer has its leaf, durable before the answer leaves.
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("organisations ({} rows)", all.len())),
        ))
        .await?;
        Ok(all
            .into_iter()
            .map(|(id, organisation)| OrganisationEntry {
                id,
                organisation,
                frozen_since: frozen
                    .iter()
                    .find(|f| f.organisation_id == id)
                    .map(|f| f.frozen_at),
            })
            .collect())
    }

    /// Accounts of one organisation (account administration).
    pub async fn accounts(
        &self,
        presented: &Presented<'_>,
        organisation_id: OrganisationId,
    ) -> Result<Vec<AccountView>, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        let accounts = self
            .fail_on(
                &ctx,
                None,
                "accounts",
                self.store.accounts_of_organisation(organisation_id).await,
            )
            .await?;
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!(
                "accounts of organisation {organisation_id} ({} rows)",
                accounts.len()
            )),
        ))
        .await?;
        Ok(accounts.into_iter().map(AccountView::from).collect())
    }

    /// Suspends or reactivates an account (account administration). An
    /// account cannot change its own state, and a requested account is not
    /// activated here (that is an approval, with four eyes).
    pub async fn set_account_state(
        &self,
        presented: &Presented<'_>,
        account_id: AccountId,
        state: AccountState,
    ) -> Result<AccountView, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let action = match state {
            AccountState::Active => LeafAction::AccountReactivate,
            _ => LeafAction::AccountSuspend,
        };
        let ctx = Ctx::new(&caller, action, now);
        if !matches!(state, AccountState::Active | AccountState::Suspended) {
            return Err(self
                .deny(
                    &ctx,
                    None,
                    DenyReason::InvalidRequest,
                    Refusal::invalid("state", "must be active or suspended"),
                )
                .await);
        }
        if account_id == caller.account.account_id {
            return Err(self
                .deny(&ctx, None, DenyReason::FourEyes, Refusal::Forbidden)
                .await);
        }
        let target = self
            .fail_on(
                &ctx,
                None,
                "accounts",
                self.store.account_by_id(account_id).await,
            )
            .await?;
        let Some(target) = target else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        // The store moves the state only along the account state machine
        // (suspend from active, reactivate from suspended and approved
        // under four eyes): a requested or rejected account does not become
        // active by a detour through here, whoever asks. Rehearsed, so a
        // refusal is one denial; ledgered, then made.
        let moved = |r: Result<bool, rempart_storage::StorageError>| match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(ChangeRefusal::new(
                DenyReason::InvalidRequest,
                Refusal::NotFound,
            )),
            Err(rempart_storage::StorageError::Refused { field: "state", .. }) => {
                Err(ChangeRefusal::new(DenyReason::FourEyes, Refusal::Forbidden))
            }
            Err(e) => Err(ChangeRefusal::failed("accounts", &e)),
        };
        let change = AccountChange::State { account_id, state };
        let rehearsed = self.auth.rehearse(&change, now).await.map(|r| r.is_some());
        if let Err(refused) = moved(rehearsed) {
            return Err(self.refuse_rehearsed(&ctx, None, refused, None).await);
        }
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("account {account_id}")),
        );
        self.leaf_then(&ctx, leaf, async {
            moved(self.change_state(account_id, state, now).await)
        })
        .await?;
        Ok(AccountView {
            state,
            ..AccountView::from(target)
        })
    }

    /// The registry's side of [`Consultation::set_account_state`]. Suspending
    /// an active account ends, in the same transaction, its sessions, API
    /// credentials, API clients and access tokens
    /// ([`AuthStore::suspend_account`]); reactivation restores none of them.
    /// Other changes set the state alone. False if there is no such account.
    async fn change_state(
        &self,
        account_id: AccountId,
        state: AccountState,
        now: DateTime<Utc>,
    ) -> Result<bool, rempart_storage::StorageError> {
        if state == AccountState::Suspended
            && self
                .auth
                .suspend_account(account_id, now, "suspension")
                .await?
                .is_some()
        {
            return Ok(true);
        }
        self.store.set_account_state(account_id, state).await
    }

    /// Lifts the guard's freeze of an organisation: agency security or an
    /// agency officer, with a written reason kept in the ledger. Every
    /// account of the organisation may read again from its next request
    /// (on other instances, from their next guard sync); accounts the guard
    /// suspended stay suspended, each reactivated on its own. `Ok(false)`
    /// when the organisation was not frozen.
    pub async fn lift_freeze(
        &self,
        presented: &Presented<'_>,
        organisation_id: OrganisationId,
        reason: &str,
    ) -> Result<bool, Refusal> {
        let now = self.now();
        let action = LeafAction::OrganisationUnfreeze;
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, action, now);
        // The policy decides on roles; the reason's length is checked here
        // first, so that a short one is a 400 naming the field, not a 403.
        let reason = match written_reason(reason, MAX_LIFT_REASON_BYTES) {
            Ok(r) => r,
            Err(refusal) => {
                return Err(self
                    .deny(&ctx, None, DenyReason::InvalidRequest, refusal)
                    .await);
            }
        };
        // The purpose is irrelevant here; any value does.
        self.allow_registry_action(
            &ctx,
            &who,
            Action::LiftFreeze,
            Purpose::FollowUp,
            reason.chars().count(),
        )
        .await?;
        let known = self
            .fail_on(
                &ctx,
                None,
                "organisations",
                self.store.organisations().await,
            )
            .await?
            .iter()
            .any(|(id, _)| *id == organisation_id);
        if !known {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        }
        // Ledgered (saying whether it is frozen now), then lifted.
        let frozen = self
            .fail_on(&ctx, None, "guard", self.guard.frozen_organisations().await)
            .await?
            .iter()
            .any(|f| f.organisation_id == organisation_id);
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(lift_note(organisation_id, frozen, reason)),
        );
        self.leaf_then(&ctx, leaf, async {
            self.guard
                .lift_freeze(organisation_id, now)
                .await
                .map_err(|e| {
                    ChangeRefusal::new(
                        DenyReason::InternalError,
                        Refusal::Unavailable(format!("guard: {e}")),
                    )
                })
        })
        .await
    }

    /// Administration: officers of France Travail only.
    async fn admin(&self, presented: &Presented<'_>) -> Result<(Caller, DateTime<Utc>), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::AdminList, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        // The purpose is irrelevant to account management; any value does.
        self.allow_registry_action(&ctx, &who, Action::ManageAccounts, Purpose::FollowUp, 0)
            .await?;
        Ok((caller, now))
    }
}

/// The note of a lift's leaf: the organisation, the outcome and the
/// reason; at most [`MAX_REASON_BYTES`](crate::authorize::MAX_REASON_BYTES) for a reason of at most
/// [`MAX_LIFT_REASON_BYTES`].
fn lift_note(organisation_id: OrganisationId, lifted: bool, reason: &str) -> String {
    let outcome = if lifted { "lifted" } else { "not frozen" };
    format!("organisation {organisation_id} {outcome}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::MAX_REASON_BYTES;

    #[test]
    fn a_lift_note_fits_a_leaf_whatever_the_organisation() {
        let reason = "x".repeat(MAX_LIFT_REASON_BYTES);
        for id in [1, i64::MAX, i64::MIN] {
            for lifted in [true, false] {
                let note = lift_note(OrganisationId::new(id), lifted, &reason);
                assert!(note.len() <= MAX_REASON_BYTES, "{} bytes", note.len());
                assert!(note.ends_with(&reason));
            }
        }
    }
}
