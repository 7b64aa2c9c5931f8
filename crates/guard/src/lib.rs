//! The guard stage of the consultation path.
//!
//! It sits after authorization (the request is allowed by policy) and
//! before the vault (nothing has been decrypted yet), so that it can stop
//! an allowed-but-abnormal read before any data leaves. Today it is a
//! pass-through: every attempt gets [`Verdict::Allow`]. Quotas and
//! behaviour scoring will fill [`Guard::check`] without changing its
//! place in the path or its signature.

use rempart_domain::{FieldGroup, Purpose};

/// What the guard is asked about: one attempt by one account, after the
/// policy decided. Identifiers only, never personal values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub account_id: i64,
    pub organisation_id: i64,
    /// What is attempted.
    pub kind: AttemptKind,
    /// The person concerned, when there is one.
    pub person_id: Option<i64>,
    pub purpose: Option<Purpose>,
    /// Field groups about to be shown.
    pub field_groups: Vec<FieldGroup>,
}

/// The kinds of attempts the guard counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    ReadPerson,
    Search,
    ListCaseload,
    BreakGlass,
}

/// The guard's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Go on.
    Allow,
    /// Ask the account for a fresh second factor first.
    StepUp,
    /// Refuse for now; the account may try again later.
    Throttle,
    /// Refuse and suspend the account.
    Suspend,
}

impl Verdict {
    /// Whether the attempt may go on to the vault.
    pub fn lets_through(self) -> bool {
        self == Verdict::Allow
    }
}

/// Failures of the guard itself (its counters or baselines unreachable).
/// The consultation path treats any of them as a refusal: fail closed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("guard state unavailable: {0}")]
    Unavailable(String),
}

/// The guard. Cheap to share between request handlers.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    _private: (),
}

impl Guard {
    /// A guard that lets every authorized attempt through.
    pub fn pass_through() -> Self {
        Guard { _private: () }
    }

    /// Decides on one attempt.
    pub async fn check(&self, attempt: &Attempt) -> Result<Verdict, GuardError> {
        let _ = attempt;
        Ok(Verdict::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pass_through_allows_and_only_allow_lets_through() {
        let g = Guard::pass_through();
        let a = Attempt {
            account_id: 1,
            organisation_id: 2,
            kind: AttemptKind::ReadPerson,
            person_id: Some(3),
            purpose: Some(Purpose::FollowUp),
            field_groups: vec![FieldGroup::Identity],
        };
        assert_eq!(g.check(&a).await.ok(), Some(Verdict::Allow));
        assert!(Verdict::Allow.lets_through());
        for v in [Verdict::StepUp, Verdict::Throttle, Verdict::Suspend] {
            assert!(!v.lets_through());
        }
    }
}
