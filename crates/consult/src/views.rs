//! What the operations hand back to their callers: views of the store's
//! rows, converted here, so that the web edge reads accounts, mandates,
//! grant requests, resets and caseloads without knowing the store.
//!
//! A view carries what a caller may be shown of a row and nothing the
//! store keeps for itself (an account's département or creation instant
//! for the guard, a mandate's revocation). Ids stay `i64`, as in the rows.
//! This module depends on no other of the crate: every module may use it.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rempart_domain::{
    AccountId, AccountState, MandateId, OrganisationId, OrganisationKind, PersonId, Purpose,
    Reference, Role,
};

/// An account with its organisation, as an operation shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Its id in the registry.
    pub account_id: AccountId,
    /// Its login.
    pub login: Reference,
    /// Its role.
    pub role: Role,
    /// Its state.
    pub state: AccountState,
    /// Its organisation's id.
    pub organisation_id: OrganisationId,
    /// Its organisation's code.
    pub organisation: Reference,
    /// Its organisation's kind.
    pub kind: OrganisationKind,
}

impl From<&rempart_storage::AccountRecord> for AccountView {
    fn from(a: &rempart_storage::AccountRecord) -> Self {
        AccountView {
            account_id: a.account_id,
            login: a.login.clone(),
            role: a.role,
            state: a.state,
            organisation_id: a.organisation_id,
            organisation: a.organisation.clone(),
            kind: a.kind,
        }
    }
}

impl From<rempart_storage::AccountRecord> for AccountView {
    fn from(a: rempart_storage::AccountRecord) -> Self {
        AccountView::from(&a)
    }
}

/// An account's history, as far as it is known: imported accounts have
/// none (`None` throughout, never invented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountHistory {
    /// When it was requested (or created).
    pub created_at: Option<DateTime<Utc>>,
    /// Who asked for it.
    pub requested_by: Option<AccountId>,
    /// The officer who approved or rejected the request.
    pub decided_by: Option<AccountId>,
    /// When the request was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// The last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
}

impl AccountHistory {
    /// Whether the account has gone `days` without a login at `now` (see
    /// [`crate::dormant`]); `None` when its history is unknown.
    pub fn dormant(&self, now: DateTime<Utc>, days: u32) -> Option<bool> {
        dormant_since(
            self.last_login_at.or(self.decided_at).or(self.created_at),
            now,
            days,
        )
    }
}

impl From<rempart_storage::AccountLifecycle> for AccountHistory {
    fn from(h: rempart_storage::AccountLifecycle) -> Self {
        AccountHistory {
            created_at: h.created_at,
            requested_by: h.requested_by,
            decided_by: h.decided_by,
            decided_at: h.decided_at,
            last_login_at: h.last_login_at,
        }
    }
}

/// Whether `last`, the last known instant of an account's activity, is
/// more than `days` before `now`; `None` when there is none.
pub(crate) fn dormant_since(
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    days: u32,
) -> Option<bool> {
    let last = last?;
    // A window reaching before the representable past: nothing is older.
    let cutoff = now.checked_sub_signed(Duration::days(i64::from(days)));
    Some(cutoff.is_some_and(|cutoff| last < cutoff))
}

/// An account with its history: approval queues and periodic reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountReview {
    /// The account and its organisation.
    pub account: AccountView,
    /// Its history.
    pub history: AccountHistory,
}

impl From<rempart_storage::ReviewEntry> for AccountReview {
    fn from(e: rempart_storage::ReviewEntry) -> Self {
        AccountReview {
            account: AccountView::from(e.account),
            history: AccountHistory::from(e.lifecycle),
        }
    }
}

/// What a mandate says: on whom, for which organisation (and account),
/// what for, when, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateTerms {
    /// Its reference.
    pub reference: Reference,
    /// The person it is on.
    pub person_id: PersonId,
    /// The organisation it lets read.
    pub organisation_id: OrganisationId,
    /// The one account of it that may read, or all of them.
    pub account_id: Option<AccountId>,
    /// What for.
    pub purpose: Purpose,
    /// First day.
    pub valid_from: NaiveDate,
    /// Exclusive end; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
    /// Where the mandate comes from.
    pub source: Reference,
}

impl From<rempart_storage::NewMandate> for MandateTerms {
    fn from(m: rempart_storage::NewMandate) -> Self {
        MandateTerms {
            reference: m.reference,
            person_id: m.person_id,
            organisation_id: m.organisation_id,
            account_id: m.account_id,
            purpose: m.purpose,
            valid_from: m.valid_from,
            valid_to: m.valid_to,
            source: m.source,
        }
    }
}

/// A mandate as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateView {
    /// Its id in the registry.
    pub id: MandateId,
    /// What it says.
    pub terms: MandateTerms,
}

impl From<rempart_storage::StoredMandate> for MandateView {
    fn from(m: rempart_storage::StoredMandate) -> Self {
        MandateView {
            id: m.id,
            terms: MandateTerms {
                reference: m.reference,
                person_id: m.person_id,
                organisation_id: m.organisation_id,
                account_id: m.account_id,
                purpose: m.purpose,
                valid_from: m.valid_from,
                valid_to: m.valid_to,
                source: m.source,
            },
        }
    }
}

/// A grant to the granting officer's own organisation, waiting for an
/// officer of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequestView {
    /// Its id.
    pub id: i64,
    /// The mandate it would make.
    pub terms: MandateTerms,
    /// The officer who asked.
    pub requested_by: AccountId,
    /// When.
    pub requested_at: DateTime<Utc>,
}

impl From<rempart_storage::GrantRequest> for GrantRequestView {
    fn from(r: rempart_storage::GrantRequest) -> Self {
        GrantRequestView {
            id: r.id,
            terms: MandateTerms::from(r.mandate),
            requested_by: r.requested_by,
            requested_at: r.requested_at,
        }
    }
}

/// How a grant request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantDecision {
    /// Approved: the mandate, as made.
    Granted(MandateView),
    /// Rejected: no mandate.
    Rejected,
}

impl From<rempart_storage::GrantDecision> for GrantDecision {
    fn from(d: rempart_storage::GrantDecision) -> Self {
        match d {
            rempart_storage::GrantDecision::Granted(m) => GrantDecision::Granted(m.into()),
            rempart_storage::GrantDecision::Rejected => GrantDecision::Rejected,
        }
    }
}

/// Which factors a credential reset removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// The password (and its throttle state).
    Password,
    /// The TOTP factor.
    Totp,
    /// Every passkey.
    Passkeys,
    /// All of the above.
    All,
}

impl ResetKind {
    /// Every kind.
    pub const ALL: [ResetKind; 4] = [
        ResetKind::Password,
        ResetKind::Totp,
        ResetKind::Passkeys,
        ResetKind::All,
    ];

    /// Its code, as requests name it.
    pub fn as_str(self) -> &'static str {
        self.stored().as_str()
    }

    /// The store's kind: one for one.
    pub(crate) fn stored(self) -> rempart_storage::ResetKind {
        match self {
            ResetKind::Password => rempart_storage::ResetKind::Password,
            ResetKind::Totp => rempart_storage::ResetKind::Totp,
            ResetKind::Passkeys => rempart_storage::ResetKind::Passkeys,
            ResetKind::All => rempart_storage::ResetKind::All,
        }
    }
}

impl From<rempart_storage::ResetKind> for ResetKind {
    fn from(k: rempart_storage::ResetKind) -> Self {
        match k {
            rempart_storage::ResetKind::Password => ResetKind::Password,
            rempart_storage::ResetKind::Totp => ResetKind::Totp,
            rempart_storage::ResetKind::Passkeys => ResetKind::Passkeys,
            rempart_storage::ResetKind::All => ResetKind::All,
        }
    }
}

/// A request to reset an account's factors, and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetView {
    /// Its id.
    pub id: i64,
    /// Whose factors.
    pub account_id: AccountId,
    /// Which factors.
    pub kind: ResetKind,
    /// Who asked.
    pub requested_by: AccountId,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// The officer who decided, once decided.
    pub decided_by: Option<AccountId>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// `Some(true)` approved, `Some(false)` rejected, `None` pending.
    pub approved: Option<bool>,
}

impl From<rempart_storage::CredentialReset> for ResetView {
    fn from(r: rempart_storage::CredentialReset) -> Self {
        ResetView {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind.into(),
            requested_by: r.requested_by,
            requested_at: r.requested_at,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
            approved: r.approved,
        }
    }
}

/// One row of a caseload page: a live mandate on a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseloadEntry {
    /// The person.
    pub person_id: PersonId,
    /// What for.
    pub purpose: Purpose,
    /// The mandate.
    pub mandate_id: MandateId,
    /// Exclusive end of the mandate; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
}

impl From<rempart_storage::CaseloadEntry> for CaseloadEntry {
    fn from(e: rempart_storage::CaseloadEntry) -> Self {
        CaseloadEntry {
            person_id: e.person_id,
            purpose: e.purpose,
            mandate_id: e.mandate_id,
            valid_to: e.valid_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_kinds_match_the_stores_one_for_one() {
        for k in ResetKind::ALL {
            assert_eq!(ResetKind::from(k.stored()), k);
            assert_eq!(k.as_str(), k.stored().as_str());
        }
        assert_eq!(
            ResetKind::ALL.len(),
            rempart_storage::ResetKind::ALL.len(),
            "a new kind in the store needs one here"
        );
    }
}
