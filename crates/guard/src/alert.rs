//! Alerts and their explanations: every verdict other than allow comes
//! with one, naming its top features with their values and baselines.

use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId};
use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable code used in the store and in exports.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            /// Parses a code written by [`Self::as_str`].
            pub fn parse(code: &str) -> Option<Self> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes!(
    /// The guard's answer, from the mildest to the strongest.
    Verdict {
        /// Go on.
        Allow => "allow",
        /// Ask the session for a fresh second factor first.
        StepUp => "step_up",
        /// Refuse for now; the account may try again later.
        Throttle => "throttle",
        /// Refuse and suspend the account; the caller ends its sessions.
        Suspend => "suspend",
        /// Refuse every account of the organisation until an officer lifts it.
        FreezeOrganisation => "freeze_organisation",
    }
);

impl Verdict {
    /// Whether the attempt may go on to the vault.
    pub fn lets_through(self) -> bool {
        self == Verdict::Allow
    }
}

codes!(
    /// What made the guard speak.
    AlertKind {
        /// An account's hard quota.
        AccountQuota => "account_quota",
        /// An organisation's hard quota.
        OrganisationQuota => "organisation_quota",
        /// The behaviour score.
        Behaviour => "behaviour",
        /// Attempts kept coming after refusals.
        Persistence => "persistence",
        /// Several accounts of one organisation were suspended.
        OrganisationContainment => "organisation_containment",
        /// The organisation is frozen: every attempt is refused.
        Frozen => "frozen",
        /// Failed logins locked an account or a source address.
        FailedLogins => "failed_logins",
        /// The organisation's own features: several of its accounts
        /// together, each ordinary alone.
        OrganisationBehaviour => "organisation_behaviour",
    }
);

codes!(
    /// A reason the guard gives, with its value and baseline.
    Feature {
        /// Distinct persons in the last hour (quota).
        PersonsPerHour => "persons_per_hour",
        /// Distinct persons in the last day (quota).
        PersonsPerDay => "persons_per_day",
        /// NIRs shown in clear in the last hour (quota).
        NirPerHour => "nir_per_hour",
        /// NIRs shown in clear in the last day (quota).
        NirPerDay => "nir_per_day",
        /// Searches in the last hour (quota).
        SearchesPerHour => "searches_per_hour",
        /// Searches in the last day (quota).
        SearchesPerDay => "searches_per_day",
        /// Break-glass accesses in the last hour (quota).
        BreakGlassPerHour => "break_glass_per_hour",
        /// Break-glass accesses in the last day (quota).
        BreakGlassPerDay => "break_glass_per_day",
        /// Mandates granted in the last hour (quota).
        MandateGrantsPerHour => "mandate_grants_per_hour",
        /// Mandates granted in the last day (quota).
        MandateGrantsPerDay => "mandate_grants_per_day",
        /// Persons in the last hour against the account's own usual hour.
        VolumeVsOwn => "volume_vs_own",
        /// Persons in the last hour against the peer group's usual hour.
        VolumeVsPeers => "volume_vs_peers",
        /// Attempts at night, in the evening or at the weekend.
        OffHours => "off_hours",
        /// Share of denied or not-found attempts in the last hour.
        DeniedShare => "denied_share",
        /// Refused reads of ids next to the previous one, in the last hour.
        SequentialIds => "sequential_ids",
        /// Searches that found nothing, in the last hour.
        SearchMisses => "search_misses",
        /// A device first seen less than a day ago.
        NewDevice => "new_device",
        /// A network first seen less than a day ago.
        NewNetwork => "new_network",
        /// Days since the account was created.
        AccountAge => "account_age",
        /// The first session after a credential reset.
        PostReset => "post_reset",
        /// Break-glass accesses in the last day against the usual rate.
        BreakGlassRate => "break_glass_rate",
        /// Attempts refused by the guard in the last hour.
        Refusals => "refusals",
        /// Accounts of the organisation suspended in the last day.
        Suspensions => "suspensions",
        /// The organisation was frozen.
        FrozenOrganisation => "frozen_organisation",
        /// A throttle or suspension decided earlier still runs: minutes
        /// left (the baseline is the throttle's length).
        Blocked => "blocked",
        /// Consecutive failed logins that locked the account (the baseline
        /// is the lock threshold).
        AccountLoginFailures => "account_login_failures",
        /// Failed logins from one source address that locked it (the
        /// baseline is the lock threshold).
        AddressLoginFailures => "address_login_failures",
        /// Accounts of the organisation working off hours within the hour
        /// (the baseline: the most it had in such an hour before).
        OffHoursAccounts => "off_hours_accounts",
        /// Accounts of the organisation active within the hour (the
        /// baseline: the most it usually has).
        ActiveAccounts => "active_accounts",
        /// Accounts of the organisation that started working within the
        /// same two minutes.
        SynchronisedStarts => "synchronised_starts",
        /// Accounts of the organisation reading faster than a person can,
        /// within ten minutes.
        BurstingAccounts => "bursting_accounts",
        /// The organisation's distinct persons in the last hour (the
        /// baseline: its busiest usual hour, or its peers').
        OrganisationVolume => "organisation_volume",
        /// Accounts of the organisation that started using the same network
        /// within a day.
        SharedNewNetwork => "shared_new_network",
        /// Accounts of the organisation that started using the same device
        /// within a day.
        SharedNewDevice => "shared_new_device",
        /// Organisations whose accounts started using the same network
        /// within a day.
        CrossOrganisationNetwork => "cross_organisation_network",
        /// Organisations whose accounts started using the same device
        /// within a day.
        CrossOrganisationDevice => "cross_organisation_device",
        /// The organisation's step-up still runs: minutes left (the
        /// baseline is its length). Every session steps up once.
        OrganisationStepUp => "organisation_step_up",
    }
);

/// One line of an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// What is measured.
    pub feature: Feature,
    /// Its value now.
    pub value: f64,
    /// What is usual (the baseline), or the limit for a quota.
    pub baseline: f64,
    /// Points it adds to the score. A quota that alone decides the verdict
    /// contributes the score threshold of that verdict.
    pub contribution: f64,
}

/// The ledger range that evidences an alert: the guard fills the window,
/// the caller the leaf sequence numbers it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Start of the window the features measured.
    pub from: DateTime<Utc>,
    /// The attempt that raised the alert.
    pub to: DateTime<Utc>,
    /// First ledger leaf of the evidence, if known.
    pub first_seq: Option<u64>,
    /// Last ledger leaf of the evidence (the refusal's own leaf), if known.
    pub last_seq: Option<u64>,
}

/// What the guard reports with every verdict other than allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When (the attempt's instant).
    pub at: DateTime<Utc>,
    /// What made the guard speak.
    pub kind: AlertKind,
    /// The account.
    pub account_id: AccountId,
    /// Its organisation.
    pub organisation_id: OrganisationId,
    /// The verdict given.
    pub verdict: Verdict,
    /// The behaviour score at that moment.
    pub score: f64,
    /// Top features, largest contribution first (at most [`TOP_FEATURES`]).
    pub explanation: Vec<Explanation>,
    /// False for a repetition of the same verdict on the same account
    /// within the cooldown: the incident is already open.
    pub fresh: bool,
    /// The evidence range.
    pub evidence: Evidence,
    /// For an organisation's alert, the accounts involved (active in its
    /// window, or sharing its network or device), in id order; empty for
    /// an account's own alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountId>,
}

/// How many features an alert names at most.
pub const TOP_FEATURES: usize = 5;

impl Alert {
    /// Sets the ledger leaves that evidence the alert.
    pub fn with_ledger_range(mut self, first_seq: Option<u64>, last_seq: Option<u64>) -> Alert {
        self.evidence.first_seq = first_seq;
        self.evidence.last_seq = last_seq;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.as_str()), Some(*v));
        }
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(*k));
        }
        for f in Feature::ALL {
            assert_eq!(Feature::parse(f.as_str()), Some(*f));
        }
        assert_eq!(Feature::parse("nope"), None);
        assert!(Verdict::Allow.lets_through());
        for v in &Verdict::ALL[1..] {
            assert!(!v.lets_through(), "{v}");
        }
        assert!(
            Verdict::Throttle > Verdict::StepUp && Verdict::FreezeOrganisation > Verdict::Suspend
        );
    }
}
