//! The account state machine: the one description of how an account's state
//! may move, which the store's conditional statements and the documentation
//! follow. No account is born alone, and none comes back by a side door.
//!
//! | from | action | who may | to |
//! |---|---|---|---|
//! | requested | approve | four-eyes officer | active |
//! | requested | reject | four-eyes officer | rejected |
//! | active | suspend | administrator, or the guard | suspended |
//! | suspended | reactivate | administrator | active |
//! | active | disable | the inactivity job | disabled |
//! | active, suspended | approve a reset | four-eyes officer (of the reset) | unchanged |
//! | active | issue an activation code | an active officer, not the account | unchanged |
//!
//! `rejected` and `disabled` are final: a person refused or gone for good
//! comes back only through a new request, decided under four eyes. The
//! registry stores a rejected account as `disabled` with a decider and no
//! approver ([`LifecycleState::of`]); both being final, the store needs no
//! column of its own to tell them apart.

use crate::AccountState;

/// Where an account is in its life, as the state machine sees it: the
/// stored [`AccountState`] with `disabled` split into its two final causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleState {
    /// Asked for, awaiting a decision.
    Requested,
    /// Approved under four eyes (or imported as such): may work.
    Active,
    /// Stopped by an administrator or the guard; may be reactivated.
    Suspended,
    /// A request an officer refused. Final.
    Rejected,
    /// Closed (inactivity). Final.
    Disabled,
}

impl LifecycleState {
    /// Every state, in declaration order.
    pub const ALL: &'static [LifecycleState] = &[
        LifecycleState::Requested,
        LifecycleState::Active,
        LifecycleState::Suspended,
        LifecycleState::Rejected,
        LifecycleState::Disabled,
    ];

    /// The state of a stored account: a `disabled` account that was
    /// decided and never approved is a rejected request.
    pub fn of(state: AccountState, decided: bool, approved: bool) -> LifecycleState {
        match state {
            AccountState::Requested => LifecycleState::Requested,
            AccountState::Active => LifecycleState::Active,
            AccountState::Suspended => LifecycleState::Suspended,
            AccountState::Disabled if decided && !approved => LifecycleState::Rejected,
            AccountState::Disabled => LifecycleState::Disabled,
        }
    }

    /// The state the registry stores.
    pub fn stored(self) -> AccountState {
        match self {
            LifecycleState::Requested => AccountState::Requested,
            LifecycleState::Active => AccountState::Active,
            LifecycleState::Suspended => AccountState::Suspended,
            LifecycleState::Rejected | LifecycleState::Disabled => AccountState::Disabled,
        }
    }

    /// Whether no action leaves this state.
    pub fn is_final(self) -> bool {
        AccountAction::ALL
            .iter()
            .all(|a| !a.from_states().contains(&self))
    }

    /// Lowercase code, for messages and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Requested => "requested",
            LifecycleState::Active => "active",
            LifecycleState::Suspended => "suspended",
            LifecycleState::Rejected => "rejected",
            LifecycleState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can be done to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountAction {
    /// Approve a requested account.
    Approve,
    /// Reject a requested account.
    Reject,
    /// Stop an active account.
    Suspend,
    /// Let a suspended account work again.
    Reactivate,
    /// Close an account nobody uses.
    Disable,
    /// Approve a reset of the account's factors.
    ApproveReset,
    /// Hand over a code that sets the account's first (or reset) factors.
    IssueActivation,
}

/// Who may take an action (the store checks it on the facts it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhoMay {
    /// An active officer who is neither the account nor the one who asked
    /// (for the account, or for the reset), and who belongs neither to the
    /// asker's organisation (France Travail agencies included) nor to a
    /// partner account's organisation.
    FourEyesOfficer,
    /// An active officer other than the account; for a suspension, also
    /// the guard (no caller).
    Administrator,
    /// An active officer other than the account, for an account with a
    /// recorded four-eyes approval.
    Issuer,
    /// The inactivity job, no caller.
    InactivityJob,
}

impl WhoMay {
    /// Lowercase description, for documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            WhoMay::FourEyesOfficer => "four-eyes officer",
            WhoMay::Administrator => "administrator",
            WhoMay::Issuer => "issuing officer",
            WhoMay::InactivityJob => "inactivity job",
        }
    }
}

/// Why [`transition`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("state: an account that is {from} cannot be subject to {action}")]
pub struct TransitionError {
    /// The state the account is in.
    pub from: LifecycleState,
    /// What was asked.
    pub action: AccountAction,
}

impl AccountAction {
    /// Every action, in declaration order.
    pub const ALL: &'static [AccountAction] = &[
        AccountAction::Approve,
        AccountAction::Reject,
        AccountAction::Suspend,
        AccountAction::Reactivate,
        AccountAction::Disable,
        AccountAction::ApproveReset,
        AccountAction::IssueActivation,
    ];

    /// The states the action may start from.
    pub fn from_states(self) -> &'static [LifecycleState] {
        use LifecycleState::*;
        match self {
            AccountAction::Approve | AccountAction::Reject => &[Requested],
            AccountAction::Suspend | AccountAction::Disable => &[Active],
            AccountAction::Reactivate => &[Suspended],
            // A suspended account may have its factors reset before it is
            // let back in (the usual course after a theft).
            AccountAction::ApproveReset => &[Active, Suspended],
            AccountAction::IssueActivation => &[Active],
        }
    }

    /// Where the action leads; `None` when it leaves the state alone.
    pub fn to_state(self) -> Option<LifecycleState> {
        match self {
            AccountAction::Approve | AccountAction::Reactivate => Some(LifecycleState::Active),
            AccountAction::Reject => Some(LifecycleState::Rejected),
            AccountAction::Suspend => Some(LifecycleState::Suspended),
            AccountAction::Disable => Some(LifecycleState::Disabled),
            AccountAction::ApproveReset | AccountAction::IssueActivation => None,
        }
    }

    /// Who may take it.
    pub fn who_may(self) -> WhoMay {
        match self {
            AccountAction::Approve | AccountAction::Reject | AccountAction::ApproveReset => {
                WhoMay::FourEyesOfficer
            }
            AccountAction::Suspend | AccountAction::Reactivate => WhoMay::Administrator,
            AccountAction::IssueActivation => WhoMay::Issuer,
            AccountAction::Disable => WhoMay::InactivityJob,
        }
    }

    /// Whether the account must carry a recorded four-eyes approval (an
    /// approver, neither itself nor its requester) besides being in one of
    /// [`AccountAction::from_states`]. Reactivation asks it of accounts
    /// whose request is recorded (an imported account of unknown history
    /// has none): a request never approved does not become active by a
    /// detour through a suspension.
    pub fn needs_approval(self) -> bool {
        matches!(
            self,
            AccountAction::Reactivate
                | AccountAction::ApproveReset
                | AccountAction::IssueActivation
        )
    }

    /// Lowercase code, for messages and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountAction::Approve => "approve",
            AccountAction::Reject => "reject",
            AccountAction::Suspend => "suspend",
            AccountAction::Reactivate => "reactivate",
            AccountAction::Disable => "disable",
            AccountAction::ApproveReset => "reset-approve",
            AccountAction::IssueActivation => "issue-activation",
        }
    }
}

impl std::fmt::Display for AccountAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state an action takes an account to, or why it may not.
pub fn transition(
    from: LifecycleState,
    action: AccountAction,
) -> Result<LifecycleState, TransitionError> {
    if action.from_states().contains(&from) {
        Ok(action.to_state().unwrap_or(from))
    } else {
        Err(TransitionError { from, action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountAction::*;
    use LifecycleState::*;

    /// The whole machine, written out: every (state, action) pair.
    #[test]
    fn every_state_and_action() {
        let expected = |s: LifecycleState, a: AccountAction| -> Option<LifecycleState> {
            match (s, a) {
                (Requested, Approve) => Some(Active),
                (Requested, Reject) => Some(Rejected),
                (Active, Suspend) => Some(Suspended),
                (Suspended, Reactivate) => Some(Active),
                (Active, Disable) => Some(Disabled),
                (Active, ApproveReset) => Some(Active),
                (Suspended, ApproveReset) => Some(Suspended),
                (Active, IssueActivation) => Some(Active),
                _ => None,
            }
        };
        let mut allowed = 0;
        for &s in LifecycleState::ALL {
            for &a in AccountAction::ALL {
                let got = transition(s, a);
                assert_eq!(got.ok(), expected(s, a), "{s} × {a}");
                if let Err(e) = got {
                    assert_eq!(e, TransitionError { from: s, action: a });
                    assert!(e.to_string().starts_with("state: "), "{e}");
                } else {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 8);
    }

    #[test]
    fn rejected_and_disabled_are_final_and_nothing_leads_to_requested() {
        for &s in LifecycleState::ALL {
            assert_eq!(s.is_final(), matches!(s, Rejected | Disabled), "{s}");
        }
        assert!(
            AccountAction::ALL
                .iter()
                .all(|a| a.to_state() != Some(Requested))
        );
        // Only an approval or a reactivation makes an account active, and a
        // reactivation only from a suspension.
        for &a in AccountAction::ALL {
            if a.to_state() == Some(Active) {
                assert!(matches!(a, Approve | Reactivate), "{a}");
            }
        }
    }

    #[test]
    fn stored_states_round_trip() {
        for &s in LifecycleState::ALL {
            let decided = s == Rejected;
            assert_eq!(LifecycleState::of(s.stored(), decided, false), s);
        }
        assert_eq!(
            LifecycleState::of(AccountState::Disabled, true, true),
            Disabled,
            "approved, then disabled for inactivity"
        );
        assert_eq!(
            LifecycleState::of(AccountState::Disabled, false, false),
            Disabled
        );
    }

    #[test]
    fn deciders() {
        assert_eq!(Approve.who_may(), WhoMay::FourEyesOfficer);
        assert_eq!(ApproveReset.who_may(), WhoMay::FourEyesOfficer);
        assert_eq!(Reactivate.who_may(), WhoMay::Administrator);
        assert_eq!(Disable.who_may(), WhoMay::InactivityJob);
        assert!(IssueActivation.needs_approval() && !Approve.needs_approval());
    }
}
