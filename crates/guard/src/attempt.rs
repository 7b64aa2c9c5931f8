//! What the guard is told about one attempt. Identifiers, digests and
//! facts only: never a personal value.

use chrono::{DateTime, Utc};
use rempart_domain::{
    AccountId, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};

use crate::region::{PeerGroup, Region};

/// One attempt by one account, as the consultation path saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it happened (the caller's clock; the guard reads none).
    pub at: DateTime<Utc>,
    /// Who made it.
    pub account: AccountFacts,
    /// Through which session.
    pub session: SessionFacts,
    /// What was attempted.
    pub kind: AttemptKind,
    /// The person concerned, when there is one. A search's query itself has
    /// none; each person a search shows is checked with its id.
    pub person_id: Option<PersonId>,
    /// The purpose invoked.
    pub purpose: Option<Purpose>,
    /// Field groups about to be shown, and whether the NIR is shown in clear.
    pub fields: Fields,
    /// Every mandate letting the account read this person began in the
    /// last [`crate::NEW_MANDATE_DAYS`] days (a person who joined the
    /// caseload, a trainee of a session starting): the read is explained.
    /// It counts in the hard quotas, not in the volume features.
    pub new_mandate: bool,
}

/// Facts about the account and its organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    /// The account.
    pub account_id: AccountId,
    /// Its organisation.
    pub organisation_id: OrganisationId,
    /// Its role.
    pub role: Role,
    /// When the account was created (requested), if known. Accounts whose
    /// history is unknown (imported) are treated as established.
    pub created_at: Option<DateTime<Utc>>,
    /// The organisation's kind and region: the peer group.
    pub peer: PeerGroup,
}

impl AccountFacts {
    /// The organisation's kind.
    pub fn kind(&self) -> OrganisationKind {
        self.peer.kind
    }

    /// The organisation's region.
    pub fn region(&self) -> Region {
        self.peer.region
    }
}

/// A 16-byte digest (of a device key thumbprint, of an address prefix…).
/// The guard compares digests; it never sees what they digest.
pub type Digest16 = [u8; 16];

/// Facts about the session the attempt came through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// A stable identifier of the session (or API credential), for alerts.
    pub session_id: Digest16,
    /// The first session after a credential reset: high risk.
    pub high_risk: bool,
    /// Digest of the device key's thumbprint the session is bound to, if any.
    pub device: Option<Digest16>,
    /// Digest of the client's network prefix (IPv4 /24, IPv6 /48), if known.
    pub network: Option<Digest16>,
    /// When the session last passed a step-up (fresh second factor).
    pub stepped_up_at: Option<DateTime<Utc>>,
}

/// What is attempted, as the guard counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// One person read.
    ReadPerson,
    /// A search. With no person: the query itself (counted as a search);
    /// with a person: a person the search is about to show.
    Search(SearchKind),
    /// A caseload page (ids only).
    ListCaseload,
    /// Break-glass on one person.
    BreakGlass,
    /// A mandate granted by an officer on one person (to anyone): more
    /// than a few in an hour is a bulk grant, throttled and alerted.
    MandateGrant,
}

/// How a search looks persons up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchKind {
    /// By NIR.
    Nir,
    /// By name and birth date.
    NameBirth,
    /// By France Travail identifier.
    FtId,
}

/// The field groups an attempt shows: a small set, no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fields {
    groups: u8,
    nir_clear: bool,
}

impl Fields {
    /// Nothing shown.
    pub const NONE: Fields = Fields {
        groups: 0,
        nir_clear: false,
    };

    /// The groups about to be shown; `nir_clear` when the NIR group is
    /// shown in clear (not masked, not as a token).
    pub fn of(groups: &[FieldGroup], nir_clear: bool) -> Fields {
        let mut bits = 0u8;
        for g in groups {
            bits |= 1 << bit(*g);
        }
        Fields {
            groups: bits,
            nir_clear: nir_clear && bits & (1 << bit(FieldGroup::Nir)) != 0,
        }
    }

    /// Whether any group of personal data is shown.
    pub fn reveals(self) -> bool {
        self.groups != 0
    }

    /// Whether the NIR is shown in clear.
    pub fn nir_in_clear(self) -> bool {
        self.nir_clear
    }

    /// Whether `group` is shown.
    pub fn contains(self, group: FieldGroup) -> bool {
        self.groups & (1 << bit(group)) != 0
    }
}

fn bit(g: FieldGroup) -> u8 {
    FieldGroup::ALL.iter().position(|x| *x == g).unwrap_or(0) as u8
}

/// How an attempt the guard did not pass to the vault ended, for
/// [`crate::Guard::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Observed {
    /// The policy refused it (no mandate, wrong purpose, forbidden role…).
    /// It never reached [`crate::Guard::check`]: observing it counts the
    /// attempt and a miss.
    Denied,
    /// It passed [`crate::Guard::check`] but found nothing to show (missing
    /// or shredded person, a search with no visible result): observing it
    /// counts a miss only, the attempt was counted by `check`.
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_know_what_they_show() {
        let f = Fields::of(&[FieldGroup::Identity, FieldGroup::Nir], true);
        assert!(f.reveals() && f.nir_in_clear());
        assert!(f.contains(FieldGroup::Identity) && !f.contains(FieldGroup::Contact));
        let masked = Fields::of(&[FieldGroup::Identity, FieldGroup::Nir], false);
        assert!(masked.reveals() && !masked.nir_in_clear());
        let no_nir = Fields::of(&[FieldGroup::Contact], true);
        assert!(!no_nir.nir_in_clear(), "no NIR group, no NIR in clear");
        assert!(!Fields::NONE.reveals());
    }
}
