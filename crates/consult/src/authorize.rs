//! Stage 2: what the caller may do. The functions turn the caller's
//! account and the mandates stored on a person into the policy's facts and
//! ask Cedar, nothing else. The [`Consultation`] methods at the end are
//! the stage on the consultation path: they read a person's mandates from
//! the store on every request (no cache, so a granted or revoked mandate
//! counts from the very next request), ask the policy, and ledger a denial
//! or a failure before it is returned. Written reasons and the references
//! of mandates made through the API are checked and made here too.

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{PersonId, Purpose, Reference};
use rempart_ledger::DenyReason;
use rempart_policy::{Action, Authorizer, Decision, MandateFact, PolicyError, What, Who};
use rempart_storage::{AccountRecord, StoredMandate};

use crate::kernel::{Consultation, Ctx, Refusal};

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
    person_id: PersonId,
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
            person_id: PersonId::new(0),
            purpose,
            mandates: Vec::new(),
            reason_len,
        },
    )
}

/// The facts about one person the policy decides on: the purpose, every
/// mandate on the person as of `today`, and the length of a written reason.
pub fn about_person(
    person_id: PersonId,
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

// -------------------------------------------------------------------------
// Stage 2 on the consultation path, and what it checks besides the policy
// -------------------------------------------------------------------------

/// Longest a written reason (break-glass, lifting a freeze) may be, in
/// bytes (a freeze's goes into its ledger leaf; a break-glass's is sealed
/// in the registry, the leaf keeping its digest).
pub const MAX_REASON_BYTES: usize = 1000;
/// Shortest written reason, in characters (the policy checks it too).
pub const MIN_REASON_CHARS: usize = 20;

/// A written reason (break-glass, lifting a freeze), trimmed, or the
/// refusal naming the field: [`MIN_REASON_CHARS`] characters to
/// `max_bytes` bytes.
pub(crate) fn written_reason(raw: &str, max_bytes: usize) -> Result<&str, Refusal> {
    let reason = raw.trim();
    if reason.chars().count() < MIN_REASON_CHARS || reason.len() > max_bytes {
        return Err(Refusal::invalid(
            "reason",
            format!("must be {MIN_REASON_CHARS} characters to {max_bytes} bytes"),
        ));
    }
    Ok(reason)
}

impl Consultation {
    /// A person's mandates as stored right now.
    pub(crate) async fn mandates_of(
        &self,
        ctx: &Ctx<'_>,
        person_id: PersonId,
    ) -> Result<Vec<StoredMandate>, Refusal> {
        self.fail_on(
            ctx,
            Some(person_id),
            "mandates",
            self.store.mandates_of_person(person_id).await,
        )
        .await
    }

    /// Stage 2 for registry-wide actions; `reason_len` is the length in
    /// characters of the written reason the action comes with (0 if none).
    pub(crate) async fn allow_registry_action(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        action: Action,
        purpose: Purpose,
        reason_len: usize,
    ) -> Result<(), Refusal> {
        let allowed = registry_action_with_reason(&self.policy, who, action, purpose, reason_len);
        if self.fail_on(ctx, None, "policy", allowed).await? {
            return Ok(());
        }
        Err(self
            .deny(ctx, None, DenyReason::PolicyDenied, Refusal::Forbidden)
            .await)
    }

    /// Stage 2 for actions on one person.
    pub(crate) async fn allow_person_action(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        action: Action,
        person_id: PersonId,
        purpose: Purpose,
        mandates: &[StoredMandate],
    ) -> Result<(), Refusal> {
        let today = ctx.now.date_naive();
        let allowed = person_action(
            &self.policy,
            who,
            action,
            &about_person(person_id, purpose, mandates, today, 0),
        );
        if self
            .fail_on(ctx, Some(person_id), "policy", allowed)
            .await?
        {
            return Ok(());
        }
        Err(self
            .deny(
                ctx,
                Some(person_id),
                DenyReason::PolicyDenied,
                Refusal::Forbidden,
            )
            .await)
    }
}

/// How the reference of a mandate an officer grants starts.
pub(crate) const GRANT_PREFIX: &str = "MG";

/// The source of every break-glass mandate.
pub(crate) fn break_glass_source() -> Reference {
    // A constant that satisfies the reference rules.
    Reference::parse("break_glass").unwrap_or_else(|_| unreachable!("valid reference"))
}

/// A unique mandate reference for mandates created through the API.
pub(crate) fn mandate_reference(prefix: &str, now: DateTime<Utc>) -> Reference {
    let mut random = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    let mut text = format!("{prefix}-{}-", now.format("%Y%m%d%H%M%S"));
    for b in random {
        use std::fmt::Write;
        let _ = write!(text, "{b:02x}");
    }
    Reference::parse(&text).unwrap_or_else(|_| unreachable!("valid reference"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_reasons_are_trimmed_and_bounded() {
        assert_eq!(
            written_reason("  vingt caractères ou plus  ", 100),
            Ok("vingt caractères ou plus")
        );
        // Characters at the bottom, bytes at the top.
        assert!(written_reason(&"é".repeat(19), 100).is_err());
        assert!(written_reason(&"é".repeat(20), 40).is_ok());
        assert!(written_reason(&"é".repeat(20), 39).is_err());
        match written_reason("court", 100) {
            Err(Refusal::Invalid { field, .. }) => assert_eq!(field, "reason"),
            other => panic!("{other:?}"),
        }
    }
}
