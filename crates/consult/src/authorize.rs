//! Stage 2: what the caller may do. Turns the caller's account and the
//! mandates stored on a person into the policy's facts, asks Cedar, and
//! nothing else: no cache here (the mandates come from the store on every
//! request), so a granted or revoked mandate counts from the very next
//! request.

use chrono::NaiveDate;
use rempart_domain::Purpose;
use rempart_policy::{Action, Authorizer, Decision, MandateFact, PolicyError, What, Who};
use rempart_storage::{AccountRecord, StoredMandate};

/// The policy's view of the caller.
pub fn who(account: &AccountRecord) -> Who {
    Who {
        account_id: account.account_id,
        login: account.login.as_str().to_string(),
        role: account.role,
        state: account.state,
        organisation_id: account.organisation_id,
        kind: account.kind,
    }
}

/// The policy's view of the mandates on a person, on `today`.
pub fn facts(mandates: &[StoredMandate], today: NaiveDate) -> Vec<MandateFact> {
    mandates
        .iter()
        .map(|m| MandateFact {
            organisation_id: m.organisation_id,
            account_id: m.account_id,
            purpose: m.purpose,
            live: m.is_live_on(today),
        })
        .collect()
}

/// Which field groups of the person the caller may read for `purpose`.
pub fn read(
    policy: &Authorizer,
    who: &Who,
    person_id: i64,
    purpose: Purpose,
    mandates: &[StoredMandate],
    today: NaiveDate,
) -> Result<Decision, PolicyError> {
    policy.allowed_field_groups(
        who,
        &What {
            person_id,
            purpose,
            mandates: facts(mandates, today),
            reason_len: 0,
        },
    )
}

/// Whether the caller may perform a registry-wide action (search, caseload,
/// account management) for `purpose`.
pub fn registry_action(
    policy: &Authorizer,
    who: &Who,
    action: Action,
    purpose: Purpose,
) -> Result<bool, PolicyError> {
    registry_action_with_reason(policy, who, action, purpose, 0)
}

/// [`registry_action`] for an action that comes with a written reason of
/// `reason_len` characters (lifting a freeze).
pub fn registry_action_with_reason(
    policy: &Authorizer,
    who: &Who,
    action: Action,
    purpose: Purpose,
    reason_len: usize,
) -> Result<bool, PolicyError> {
    policy.is_allowed(
        who,
        action,
        &What {
            person_id: 0,
            purpose,
            mandates: Vec::new(),
            reason_len,
        },
    )
}

/// The facts about one person the policy decides on: the purpose, every
/// mandate on the person as of `today`, and the length of a written reason.
pub fn about_person(
    person_id: i64,
    purpose: Purpose,
    mandates: &[StoredMandate],
    today: NaiveDate,
    reason_len: usize,
) -> What {
    What {
        person_id,
        purpose,
        mandates: facts(mandates, today),
        reason_len,
    }
}

/// Whether the caller may perform an action on one person (break-glass,
/// mandate grant or revoke).
pub fn person_action(
    policy: &Authorizer,
    who: &Who,
    action: Action,
    what: &What,
) -> Result<bool, PolicyError> {
    policy.is_allowed(who, action, what)
}
