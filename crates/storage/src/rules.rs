//! Decisions both backends take around their own SQL, written once: what
//! an account, reset or activation decision checks, the refusals of a new
//! or imported mandate. Each backend keeps only its statements, its
//! transaction and its row reading, and calls these with what it read.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountAction, AccountId, AccountState, OrganisationId, PersonId};

use crate::auth::ActivationFactors;
use crate::auth::checks::{
    Decider, Subject, check_decider, check_phc, check_sealed_secret, check_transition, not_found,
    refuse, step_to_i64,
};
use crate::{MandateRow, NewMandate, RowRefusal, StorageError};

/// What deciding an account request does, once the four-eyes rule and the
/// state machine allow it: the machine's action and the state written.
pub(crate) fn account_decision(
    subject: &Subject,
    requester: Option<&Decider>,
    decider: Option<&Decider>,
    approve: bool,
) -> Result<(AccountAction, AccountState), StorageError> {
    check_decider(subject, requester, decider)?;
    let (action, state) = if approve {
        (AccountAction::Approve, AccountState::Active)
    } else {
        (AccountAction::Reject, AccountState::Disabled)
    };
    check_transition(subject, action)?;
    Ok((action, state))
}

/// The checks of a reset decision: four eyes, and (to approve) an account
/// the machine lets be reset.
pub(crate) fn check_reset_decision(
    subject: &Subject,
    requester: Option<&Decider>,
    decider: Option<&Decider>,
    approve: bool,
) -> Result<(), StorageError> {
    check_decider(subject, requester, decider)?;
    if approve {
        check_transition(subject, AccountAction::ApproveReset)?;
    }
    Ok(())
}

/// An activation code's period: it must end after it is issued.
pub(crate) fn check_activation_period(
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    if expires_at <= issued_at {
        return Err(refuse("expires_at", "must be after issued_at"));
    }
    Ok(())
}

/// The first factors of an activation, checked and as stored.
pub(crate) struct CheckedFactors {
    /// The password's PHC string.
    pub phc: Option<String>,
    /// The TOTP factor.
    pub totp: Option<CheckedTotp>,
}

/// A TOTP factor as both backends store it.
pub(crate) struct CheckedTotp {
    pub sealed_secret: Vec<u8>,
    pub last_step: Option<i64>,
    /// To the microsecond (see [`crate::instant`]).
    pub enrolled_at: DateTime<Utc>,
}

/// Checks the factors an activation sets for `account_id`, in this order:
/// the password, the TOTP secret, its account, its last step, its instant.
pub(crate) fn checked_factors(
    account_id: AccountId,
    factors: ActivationFactors,
) -> Result<CheckedFactors, StorageError> {
    if let Some(phc) = &factors.phc {
        check_phc(phc)?;
    }
    let totp = match factors.totp {
        Some(t) => {
            check_sealed_secret(&t.sealed_secret)?;
            if t.account_id != account_id {
                return Err(refuse("totp", "belongs to another account"));
            }
            let last_step = t
                .last_step
                .map(|s| step_to_i64(s, "last_step"))
                .transpose()?;
            Some(CheckedTotp {
                sealed_secret: t.sealed_secret,
                last_step,
                enrolled_at: crate::instant(t.enrolled_at, "enrolled_at")?,
            })
        }
        None => None,
    };
    Ok(CheckedFactors {
        phc: factors.phc,
        totp,
    })
}

/// Checks the account a new mandate names, given that account's
/// organisation as stored (`None`: no such account).
pub(crate) fn check_mandate_account(
    account_organisation: Option<OrganisationId>,
    m: &NewMandate,
) -> Result<(), StorageError> {
    match account_organisation {
        None => Err(not_found("account_id", "account")),
        Some(o) if o != m.organisation_id => Err(refuse(
            "account_id",
            "belongs to another organisation than the mandate",
        )),
        Some(_) => Ok(()),
    }
}

/// Checks the person of a new mandate, given its data key version as
/// stored (`None`: no such person, or shredded): with `sealed` (a
/// break-glass reason sealed under that version), the key must not have
/// changed since.
pub(crate) fn check_mandate_person(
    stored: Option<u32>,
    sealed: Option<u32>,
    person_id: PersonId,
) -> Result<(), StorageError> {
    match (stored, sealed) {
        (None, _) => Err(not_found("person_id", "person in the registry")),
        (Some(stored), Some(sealed)) if stored != sealed => Err(StorageError::Conflict(format!(
            "person {person_id}'s data key changed while the reason was sealed"
        ))),
        _ => Ok(()),
    }
}

/// The refusal of a mandate reference already used.
pub(crate) fn reference_taken() -> StorageError {
    refuse("reference", "already used by another mandate")
}

/// Resolves an imported mandate's organisation and account and checks its
/// person, asking each lookup only when the previous checks passed: the
/// organisation (by code), the account (by login: its id and
/// organisation), then whether the person is in the registry. A refusal
/// names the batch's `index`.
pub(crate) fn mandate_row_links(
    index: usize,
    m: &MandateRow,
    organisation: impl FnOnce(&str) -> Result<Option<OrganisationId>, StorageError>,
    account: impl FnOnce(&str) -> Result<Option<(AccountId, OrganisationId)>, StorageError>,
    person_live: impl FnOnce(PersonId) -> Result<bool, StorageError>,
) -> Result<Result<(OrganisationId, Option<AccountId>), RowRefusal>, StorageError> {
    let refuse = |field, reason: &str| {
        Ok(Err(RowRefusal {
            index,
            field,
            reason: reason.into(),
        }))
    };
    let Some(org_id) = organisation(m.organisation.as_str())? else {
        return refuse("organisation", "no such organisation");
    };
    let account_id = match &m.account {
        None => None,
        Some(login) => match account(login.as_str())? {
            None => return refuse("account", "no such account"),
            Some((_, o)) if o != org_id => {
                return refuse(
                    "account",
                    "belongs to another organisation than the mandate",
                );
            }
            Some((id, _)) => Some(id),
        },
    };
    if !person_live(m.person_id)? {
        return refuse("ft_id", "no such person in the registry");
    }
    Ok(Ok((org_id, account_id)))
}
