//! Who may act: organisations, accounts, and the mandates that link them to persons.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::person::ValueError;

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// All codes, comma-separated, for error messages.
            pub const CODES: &'static str = concat!($($code, ", "),+);

            /// The stable code used in files, the database and the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            /// Parses a code.
            pub fn parse(input: &str) -> Result<Self, ValueError> {
                match input.trim() {
                    "" => Err(ValueError::Missing),
                    $($code => Ok($name::$variant),)+
                    _ => Err(ValueError::NotInList { expected: Self::CODES.trim_end_matches(", ") }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

code_enum!(
    /// A slice of a person's record that is encrypted, authorized and logged as a unit.
    FieldGroup {
        /// France Travail identifier, nom, prénom, date de naissance.
        Identity => "identity",
        /// E-mail, telephone, postal address.
        Contact => "contact",
        /// The NIR. Partners never see it in clear.
        Nir => "nir",
        /// Registration status and dates.
        Status => "status",
    }
);

code_enum!(
    /// How the NIR is shown to a caller, from nothing to the clear value;
    /// ordered so that the larger is the more revealing.
    NirView {
        /// Not at all.
        None => "none",
        /// A pseudonymous token, keyed per organisation (processors).
        Token => "token",
        /// Masked: sex, year and month of birth only, the rest hidden
        /// (partners).
        Masked => "masked",
        /// In clear (France Travail).
        Clear => "clear",
    }
);

code_enum!(
    /// Why an organisation holds a mandate on a person; decides the field groups shown.
    Purpose {
        /// Day-to-day job-search follow-up (France Travail, Cap emploi, Mission Locale).
        FollowUp => "follow_up",
        /// A training session the person attends.
        Training => "training",
        /// Digitising and processing documents the person sent (processors).
        DocumentProcessing => "document_processing",
        /// Computing and paying benefits.
        Compensation => "compensation",
    }
);

code_enum!(
    /// The kind of organisation an account belongs to.
    OrganisationKind {
        FranceTravail => "france_travail",
        CapEmploi => "cap_emploi",
        MissionLocale => "mission_locale",
        TrainingProvider => "training_provider",
        Processor => "processor",
    }
);

code_enum!(
    /// What an account may do in its organisation.
    Role {
        /// Works a caseload.
        Agent => "agent",
        /// Runs a partner team; may request accounts, never activate them.
        Manager => "manager",
        /// France Travail officer: approves accounts, grants mandates.
        Officer => "officer",
        /// Security team: alerts, suspensions, investigations.
        Security => "security",
        /// Data protection officer: breach scoping, notifications.
        Dpo => "dpo",
    }
);

code_enum!(
    /// Lifecycle of an account.
    AccountState {
        /// Asked for by a manager, awaiting an outside officer's approval.
        Requested => "requested",
        Active => "active",
        Suspended => "suspended",
        Disabled => "disabled",
    }
);

/// An external reference (organisation code, account login, mandate reference):
/// 1–64 characters among letters, digits, `-`, `_`, `.`, `@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference(String);

impl Reference {
    pub const MAX: usize = 64;

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        if s.len() > Self::MAX {
            return Err(ValueError::TooLong {
                found: s.chars().count(),
                max: Self::MAX,
            });
        }
        if let Some((position, _)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
        {
            return Err(ValueError::BadCharacter {
                position: position + 1,
            });
        }
        Ok(Reference(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reference {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Reference::parse(&s)
    }
}

impl From<Reference> for String {
    fn from(r: Reference) -> String {
        r.0
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A partner or agency organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    /// Stable external code, e.g. `CE-038` or a SIRET.
    pub code: Reference,
    pub kind: OrganisationKind,
    pub name: String,
    /// Département the organisation works in, if local.
    pub departement: Option<String>,
}

/// A human account. Logins are pseudonymous handles, not e-mail addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub login: Reference,
    pub organisation: Reference,
    pub role: Role,
    pub state: AccountState,
    /// Login of the account that asked for this one.
    pub requested_by: Option<Reference>,
    /// Login of the officer who approved it (never from the same organisation).
    pub approved_by: Option<Reference>,
}

/// The link that lets an organisation (or one of its accounts) see a person,
/// for a purpose, during a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// Stable external reference, used to make imports idempotent.
    pub reference: Reference,
    pub organisation: Reference,
    /// When set, only this account of the organisation holds the mandate.
    pub account: Option<Reference>,
    pub person: crate::FtId,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    /// Exclusive end; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
    /// Where the mandate comes from (orientation decision, training enrolment…).
    pub source: Reference,
}

impl Mandate {
    /// Whether the mandate is in force on `day`.
    pub fn is_live_on(&self, day: NaiveDate) -> bool {
        self.valid_from <= day && self.valid_to.is_none_or(|end| day < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_errors_list_the_choices() {
        for k in OrganisationKind::ALL {
            assert_eq!(OrganisationKind::parse(k.as_str()), Ok(*k));
        }
        for g in FieldGroup::ALL {
            assert_eq!(FieldGroup::parse(g.as_str()), Ok(*g));
        }
        let err = Purpose::parse("marketing").unwrap_err().to_string();
        assert!(
            err.contains("follow_up") && err.contains("compensation"),
            "{err}"
        );
        assert!(!err.ends_with(", "), "{err}");
    }

    #[test]
    fn references_refuse_spaces_and_long_values() {
        Reference::parse("CE-038.agent_12@x").unwrap();
        assert_eq!(
            Reference::parse("a b"),
            Err(ValueError::BadCharacter { position: 2 })
        );
        assert!(matches!(
            Reference::parse(&"x".repeat(65)),
            Err(ValueError::TooLong { .. })
        ));
    }

    #[test]
    fn mandate_end_is_exclusive() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        let m = Mandate {
            reference: Reference::parse("M1").unwrap(),
            organisation: Reference::parse("CE-038").unwrap(),
            account: None,
            person: crate::FtId::parse("1234567A").unwrap(),
            purpose: Purpose::FollowUp,
            valid_from: d(2026, 1, 1),
            valid_to: Some(d(2026, 7, 1)),
            source: Reference::parse("orientation").unwrap(),
        };
        assert!(!m.is_live_on(d(2025, 12, 31)));
        assert!(m.is_live_on(d(2026, 1, 1)));
        assert!(m.is_live_on(d(2026, 6, 30)));
        assert!(!m.is_live_on(d(2026, 7, 1)));
    }
}
