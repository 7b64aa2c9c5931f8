//! The guard's thresholds: one [`GuardConfig`], with defaults sized for
//! real caseloads, loadable from TOML or JSON and validated with errors
//! that name the field.
//!
//! Why the defaults (an advisor follows 100–300 persons and reads a few
//! dozen a day; a busy day is 60–120, a very busy hour 20–30):
//! - 40 distinct persons per hour and 200 per day per account never touch
//!   such a day, yet stop a bulk reader after at most 40 records.
//! - Accounts younger than 14 days get 40% of that (16 per hour), and the
//!   first session after a credential reset 25% (10 per hour): both are
//!   how the seed breaches started.
//! - 20 refused attempts in an hour is a script, not a person: suspension.
//! - Two accounts of one organisation suspended within a day freezes the
//!   organisation (accounts created to read, as in 2025).

use serde::{Deserialize, Serialize};

/// The most recent persons each account remembers the instant of, to tell
/// a burst (`organisation_scoring.burst_persons` is at most this).
pub(crate) const BURST_RING: usize = 16;

/// A limit per sliding hour and per sliding day (24 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// At most this many in any 60 minutes.
    pub per_hour: u32,
    /// At most this many in any 24 hours.
    pub per_day: u32,
}

impl Limit {
    pub(crate) const fn new(per_hour: u32, per_day: u32) -> Limit {
        Limit { per_hour, per_day }
    }

    /// This limit multiplied by `factor` (rounded up, at least 1, at most
    /// `u32::MAX`).
    pub fn scaled_up(self, factor: f64) -> Limit {
        let s = |n: u32| {
            (f64::from(n) * factor)
                .ceil()
                .clamp(1.0, f64::from(u32::MAX)) as u32
        };
        Limit {
            per_hour: s(self.per_hour),
            per_day: s(self.per_day),
        }
    }

    /// This limit scaled by `factor` (rounded up, at least 1).
    pub fn scaled(self, factor: f64) -> Limit {
        let s = |n: u32| ((f64::from(n) * factor).ceil() as u32).max(1);
        Limit {
            per_hour: s(self.per_hour),
            per_day: s(self.per_day),
        }
    }
}

/// Hard quotas of one account: exceeding one throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountQuotas {
    /// Distinct persons shown.
    pub persons: Limit,
    /// NIRs shown in clear.
    pub nir_reveals: Limit,
    /// Search queries.
    pub searches: Limit,
    /// Break-glass accesses.
    pub break_glass: Limit,
    /// Mandates granted (officers). Day-to-day mandates come from the
    /// referral imports; an officer grants a few by hand, and a burst of
    /// grants is how one hands a colleague a caseload to read.
    pub mandate_grants: Limit,
}

impl Default for AccountQuotas {
    fn default() -> Self {
        AccountQuotas {
            persons: Limit::new(40, 200),
            nir_reveals: Limit::new(40, 150),
            searches: Limit::new(60, 300),
            break_glass: Limit::new(3, 5),
            mandate_grants: Limit::new(10, 30),
        }
    }
}

/// Hard quotas of one organisation, all its accounts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrganisationQuotas {
    /// Distinct persons shown (summed over the accounts).
    pub persons: Limit,
    /// NIRs shown in clear.
    pub nir_reveals: Limit,
    /// Search queries.
    pub searches: Limit,
    /// Break-glass accesses.
    pub break_glass: Limit,
    /// Mandates granted by its officers (many officers each under their
    /// own quota are still a bulk grant).
    pub mandate_grants: Limit,
}

impl Default for OrganisationQuotas {
    fn default() -> Self {
        OrganisationQuotas {
            persons: Limit::new(1_500, 8_000),
            nir_reveals: Limit::new(1_500, 6_000),
            searches: Limit::new(2_000, 10_000),
            break_glass: Limit::new(20, 50),
            mandate_grants: Limit::new(30, 100),
        }
    }
}

/// Lower limits for risky accounts and sessions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskyLimits {
    /// An account is young until this many days after its creation.
    pub young_account_days: u32,
    /// Factor applied to every account quota of a young account.
    pub young_account_factor: f64,
    /// Factor applied in a high-risk session (the first after a reset).
    pub high_risk_session_factor: f64,
}

impl Default for RiskyLimits {
    fn default() -> Self {
        RiskyLimits {
            young_account_days: 14,
            young_account_factor: 0.4,
            high_risk_session_factor: 0.25,
        }
    }
}

/// What follows a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Containment {
    /// A behaviour-based throttle lasts this long.
    pub throttle_minutes: u32,
    /// Refused attempts within an hour that suspend the account.
    pub suspend_after_refusals: u32,
    /// Accounts of one organisation suspended within 24 h that freeze it.
    pub freeze_after_suspensions: u32,
    /// Refused attempts of one organisation within an hour that freeze it.
    pub freeze_after_refusals: u32,
    /// A step-up satisfies a step-up verdict for this long.
    pub step_up_valid_minutes: u32,
    /// A repeated alert of the same verdict within this long is not fresh.
    pub alert_cooldown_minutes: u32,
}

impl Default for Containment {
    fn default() -> Self {
        Containment {
            throttle_minutes: 15,
            suspend_after_refusals: 20,
            freeze_after_suspensions: 2,
            freeze_after_refusals: 200,
            step_up_valid_minutes: 30,
            alert_cooldown_minutes: 10,
        }
    }
}

/// Weight of each behaviour feature: its largest contribution to a score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Persons per hour against the account's own history (per doubling
    /// beyond the allowance, up to three doublings).
    pub volume_vs_own: f64,
    /// Persons per hour against the peer group (same scale).
    pub volume_vs_peers: f64,
    /// Work at night, in the evening or at the weekend by an account that
    /// usually does not.
    pub off_hours: f64,
    /// Share of denied and not-found attempts in the last hour (searches
    /// that matched nobody count in `search_misses` instead).
    pub denied_share: f64,
    /// Refused reads of ids next to the previous one (enumeration).
    pub sequential_ids: f64,
    /// Searches that found nothing (per 7 beyond the allowance, up to
    /// twice the weight).
    pub search_misses: f64,
    /// A device never seen before beside established ones.
    pub new_device: f64,
    /// A network never seen before beside established ones.
    pub new_network: f64,
    /// A young account (falls to 0 at `young_account_days`).
    pub account_age: f64,
    /// The first session after a credential reset.
    pub post_reset: f64,
    /// Break-glass accesses against the usual rate.
    pub break_glass_rate: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            volume_vs_own: 2.0,
            volume_vs_peers: 2.0,
            off_hours: 3.0,
            denied_share: 4.0,
            sequential_ids: 3.0,
            search_misses: 3.0,
            new_device: 2.0,
            new_network: 1.0,
            account_age: 1.5,
            post_reset: 2.5,
            break_glass_rate: 3.0,
        }
    }
}

/// Behaviour scoring: weights, verdict thresholds, priors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scoring {
    /// Score from which the session must step up.
    pub step_up: f64,
    /// Score from which the account is throttled.
    pub throttle: f64,
    /// Score from which the account is suspended.
    pub suspend: f64,
    /// Feature weights.
    pub weights: Weights,
    /// Volume features start counting from this many persons in an hour.
    pub min_volume: u32,
    /// Volume allowance: up to this multiple of the baseline counts nothing.
    pub volume_allowance: f64,
    /// Persons per active hour assumed when neither the account nor its
    /// peers have history yet.
    pub prior_persons_per_hour: f64,
    /// Active hours of history before an account's own baseline is used.
    pub min_own_hours: u32,
    /// Account-hours of history before a peer group's baseline is used.
    pub min_peer_hours: u32,
    /// Denied share features start from this many attempts in an hour.
    pub min_attempts: u32,
    /// Local working time starts at this hour (0–23)…
    pub work_start_hour: u8,
    /// …and ends at this hour (1–24); weekends are off hours.
    pub work_end_hour: u8,
    /// Days of history the baselines cover.
    pub baseline_days: u32,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            step_up: 4.0,
            throttle: 7.0,
            suspend: 11.0,
            weights: Weights::default(),
            // Measured on `rempart simulate` (300 accounts, 30 days): busy
            // ordinary hours reach 13–21 persons, training sessions 18;
            // with 12 and 2.0 a normal month raised 22 alerts per 1,000
            // account-days, with 20 and 3.0 it raises 0.17. The hourly
            // quota (40) stops bulk reading above that.
            min_volume: 20,
            volume_allowance: 3.0,
            prior_persons_per_hour: 10.0,
            // About three working days: one day of history is no habit.
            min_own_hours: 24,
            min_peer_hours: 40,
            min_attempts: 10,
            work_start_hour: 7,
            work_end_hour: 20,
            baseline_days: 28,
        }
    }
}

/// Weight of each organisation feature: its largest contribution to the
/// organisation's score (see [`OrganisationScoring`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrganisationWeights {
    /// Accounts of the organisation working off hours in the same hour,
    /// beyond the most it ever had in such an hour.
    pub off_hours_accounts: f64,
    /// Accounts active in the same hour beyond the most it usually has.
    pub active_accounts: f64,
    /// Accounts starting to work within the same two minutes.
    pub synchronised_starts: f64,
    /// Accounts reading faster than a person can, at the same time.
    pub bursting_accounts: f64,
    /// The organisation's distinct persons in the hour against its busiest
    /// hours and its peers.
    pub volume: f64,
    /// A network none of its accounts used the day before, shared by several.
    pub shared_new_network: f64,
    /// A device none of its accounts used the day before, shared by several.
    pub shared_new_device: f64,
    /// A network new to accounts of several organisations.
    pub cross_organisation_network: f64,
    /// A device new to accounts of several organisations.
    pub cross_organisation_device: f64,
}

impl Default for OrganisationWeights {
    fn default() -> Self {
        OrganisationWeights {
            off_hours_accounts: 3.0,
            active_accounts: 2.0,
            synchronised_starts: 2.0,
            bursting_accounts: 4.0,
            volume: 3.0,
            shared_new_network: 3.0,
            shared_new_device: 4.0,
            cross_organisation_network: 4.0,
            cross_organisation_device: 5.0,
        }
    }
}

/// The organisation's own score: evidence no single account shows. It is
/// added to the score of every attempt of its accounts, and on its own
/// reaching `scoring.step_up` / `throttle` / `suspend` it steps up every
/// account of the organisation, throttles it, or freezes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrganisationScoring {
    /// Feature weights.
    pub weights: OrganisationWeights,
    /// An account showing this many persons no new mandate explains
    /// within `burst_secs` is reading faster than a person does (2–16).
    pub burst_persons: u32,
    /// See `burst_persons`.
    pub burst_secs: u32,
    /// An account idle this long starts a new run at its next attempt.
    pub run_gap_minutes: u32,
    /// Runs starting within this many seconds of each other are
    /// synchronised.
    pub synchronised_secs: u32,
    /// The volume feature counts from this many persons in an hour.
    pub min_volume: u32,
    /// Up to this multiple of the usual hour counts nothing.
    pub volume_allowance: f64,
    /// Organisation-hours of history before its own baseline is used.
    pub min_hours: u32,
    /// An organisation-wide step-up holds this long: every account of the
    /// organisation steps up once after it began.
    pub step_up_minutes: u32,
}

impl Default for OrganisationScoring {
    fn default() -> Self {
        OrganisationScoring {
            weights: OrganisationWeights::default(),
            burst_persons: 10,
            burst_secs: 300,
            run_gap_minutes: 30,
            synchronised_secs: 120,
            min_volume: 40,
            volume_allowance: 2.0,
            min_hours: 24,
            step_up_minutes: 60,
        }
    }
}

/// Per-kind factors of the organisation's scaled quotas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KindFactors {
    /// France Travail agencies.
    pub france_travail: f64,
    /// Cap emploi.
    pub cap_emploi: f64,
    /// Missions Locales.
    pub mission_locale: f64,
    /// Training providers.
    pub training_provider: f64,
    /// Subcontracted processors (they read lots all day).
    pub processor: f64,
}

impl Default for KindFactors {
    fn default() -> Self {
        KindFactors {
            france_travail: 1.0,
            cap_emploi: 1.0,
            mission_locale: 1.0,
            training_provider: 1.0,
            processor: 2.0,
        }
    }
}

impl KindFactors {
    /// The factor of `kind`.
    pub fn of(&self, kind: rempart_domain::OrganisationKind) -> f64 {
        use rempart_domain::OrganisationKind as K;
        match kind {
            K::FranceTravail => self.france_travail,
            K::CapEmploi => self.cap_emploi,
            K::MissionLocale => self.mission_locale,
            K::TrainingProvider => self.training_provider,
            K::Processor => self.processor,
        }
    }
}

/// The organisation's persons quota scaled by its size and kind, beneath
/// the absolute `organisation.persons`: `persons_per_account` × its size ×
/// its kind's factor, where its size is the most accounts it had active in
/// one hour over the baseline days (at least `min_accounts`). Learnt from
/// history, so that the accounts an attacker wakes up do not raise it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaledQuotas {
    /// Distinct persons per usual account.
    pub persons_per_account: Limit,
    /// The smallest size assumed.
    pub min_accounts: u32,
    /// Factors per organisation kind.
    pub kind_factors: KindFactors,
}

impl Default for ScaledQuotas {
    fn default() -> Self {
        ScaledQuotas {
            persons_per_account: Limit::new(30, 150),
            min_accounts: 3,
            kind_factors: KindFactors::default(),
        }
    }
}

impl ScaledQuotas {
    /// The persons limit of an organisation of `kind` with `size` usual
    /// accounts, never above `ceiling`.
    pub fn persons(
        &self,
        kind: rempart_domain::OrganisationKind,
        size: u32,
        ceiling: Limit,
    ) -> Limit {
        let f = f64::from(size.max(self.min_accounts)) * self.kind_factors.of(kind);
        let l = self.persons_per_account.scaled_up(f);
        Limit {
            per_hour: l.per_hour.min(ceiling.per_hour),
            per_day: l.per_day.min(ceiling.per_day),
        }
    }
}

/// How instances share their state through the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sync {
    /// The caller runs [`crate::Guard::sync`] this often: counters of the
    /// other instances are at most this old (plus one flush).
    pub interval_secs: u32,
    /// Without a successful sync for this long, the guard refuses
    /// everything (fail closed). At least twice `interval_secs`.
    pub max_staleness_secs: u32,
    /// An instance that counted this many of one account's persons (or
    /// NIRs, searches, break-glass accesses, mandate grants, refusals)
    /// since it last shared them, and at least `exchange_room_percent` of
    /// the room left under that limit, shares them before deciding on the
    /// next attempt, and reads the other instances' counts for the account
    /// and its organisation in the same statement (the exchange): one
    /// account's reads spread over k instances are then hidden from each
    /// by at most that many per other instance (plus those in flight),
    /// however short the burst. 0 exchanges before every decision.
    pub exchange_after: u32,
    /// See `exchange_after`: with a limit far away, an instance may keep
    /// this share of the room left to itself before it exchanges (a bulk
    /// client under a high limit costs no round trip per read).
    pub exchange_room_percent: u32,
    /// From this share of any of its limits (a quota, the refusals that
    /// suspend or freeze), an account or organisation exchanges before
    /// every decision, whatever `exchange_after` says.
    pub exchange_near_percent: u32,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            interval_secs: 5,
            max_staleness_secs: 60,
            exchange_after: 2,
            exchange_room_percent: 5,
            exchange_near_percent: 50,
        }
    }
}

/// Every threshold of the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Per-account quotas.
    pub account: AccountQuotas,
    /// Per-organisation quotas.
    pub organisation: OrganisationQuotas,
    /// Lower limits for young accounts and high-risk sessions.
    pub risky: RiskyLimits,
    /// What follows refusals.
    pub containment: Containment,
    /// Behaviour scoring.
    pub scoring: Scoring,
    /// The organisation's own features and verdicts.
    pub organisation_scoring: OrganisationScoring,
    /// The organisation's quotas scaled by its size and kind.
    pub organisation_scaled: ScaledQuotas,
    /// Sharing between instances.
    pub sync: Sync,
}

/// The text formats a configuration is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file name's extension names (`.toml`, `.json`).
    pub fn of_file_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".toml") {
            Some(Format::Toml)
        } else if lower.ends_with(".json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// A configuration that cannot be used. Messages name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text does not parse, or a field has the wrong type or is unknown.
    #[error("guard configuration ({format}): {field}: {reason}")]
    Parse {
        /// `toml` or `json`.
        format: &'static str,
        /// Dotted path of the field, or `(document)`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of its range or inconsistent with another.
    #[error("guard configuration: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl GuardConfig {
    /// Parses and validates a configuration; absent fields keep their defaults.
    pub fn parse(text: &str, format: Format) -> Result<GuardConfig, ConfigError> {
        let config: GuardConfig = match format {
            Format::Json => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                    format: "json",
                    field: field_of(&e.path().to_string()),
                    reason: e.inner().to_string(),
                })?
            }
            Format::Toml => {
                let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
                    format: "toml",
                    field: "(document)".into(),
                    reason: e.message().to_string(),
                })?;
                serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                    format: "toml",
                    field: field_of(&e.path().to_string()),
                    reason: e.inner().message().to_string(),
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every range and every relation between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            ("account.persons", self.account.persons),
            ("account.nir_reveals", self.account.nir_reveals),
            ("account.searches", self.account.searches),
            ("account.break_glass", self.account.break_glass),
            ("account.mandate_grants", self.account.mandate_grants),
            ("organisation.persons", self.organisation.persons),
            ("organisation.nir_reveals", self.organisation.nir_reveals),
            ("organisation.searches", self.organisation.searches),
            ("organisation.break_glass", self.organisation.break_glass),
            (
                "organisation.mandate_grants",
                self.organisation.mandate_grants,
            ),
        ];
        for (field, l) in limits {
            if l.per_hour == 0 {
                return invalid(field_hour(field), "must be at least 1");
            }
            if l.per_day < l.per_hour {
                return invalid(field_day(field), "must be at least per_hour");
            }
        }
        let org_vs_account = [
            (
                "organisation.persons.per_hour",
                self.organisation.persons.per_hour,
                self.account.persons.per_hour,
            ),
            (
                "organisation.persons.per_day",
                self.organisation.persons.per_day,
                self.account.persons.per_day,
            ),
        ];
        for (field, org, account) in org_vs_account {
            if org < account {
                return invalid(field, "must be at least the account's limit");
            }
        }
        let r = &self.risky;
        if !(1..=365).contains(&r.young_account_days) {
            return invalid("risky.young_account_days", "must be between 1 and 365");
        }
        fraction("risky.young_account_factor", r.young_account_factor)?;
        fraction("risky.high_risk_session_factor", r.high_risk_session_factor)?;
        let c = &self.containment;
        let ranges: [(&'static str, u32, u32, u32); 6] = [
            (
                "containment.throttle_minutes",
                c.throttle_minutes,
                1,
                24 * 60,
            ),
            (
                "containment.suspend_after_refusals",
                c.suspend_after_refusals,
                1,
                100_000,
            ),
            (
                "containment.freeze_after_suspensions",
                c.freeze_after_suspensions,
                1,
                100_000,
            ),
            (
                "containment.freeze_after_refusals",
                c.freeze_after_refusals,
                1,
                1_000_000,
            ),
            (
                "containment.step_up_valid_minutes",
                c.step_up_valid_minutes,
                1,
                24 * 60,
            ),
            (
                "containment.alert_cooldown_minutes",
                c.alert_cooldown_minutes,
                0,
                24 * 60,
            ),
        ];
        for (field, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return invalid(field, format!("must be between {lo} and {hi}"));
            }
        }
        let s = &self.scoring;
        positive("scoring.step_up", s.step_up)?;
        if s.throttle.partial_cmp(&s.step_up) != Some(std::cmp::Ordering::Greater) {
            return invalid("scoring.throttle", "must be greater than scoring.step_up");
        }
        if s.suspend.partial_cmp(&s.throttle) != Some(std::cmp::Ordering::Greater) {
            return invalid("scoring.suspend", "must be greater than scoring.throttle");
        }
        if !s.suspend.is_finite() {
            return invalid("scoring.suspend", "must be a finite number");
        }
        let w = &s.weights;
        let weights = [
            ("scoring.weights.volume_vs_own", w.volume_vs_own),
            ("scoring.weights.volume_vs_peers", w.volume_vs_peers),
            ("scoring.weights.off_hours", w.off_hours),
            ("scoring.weights.denied_share", w.denied_share),
            ("scoring.weights.sequential_ids", w.sequential_ids),
            ("scoring.weights.search_misses", w.search_misses),
            ("scoring.weights.new_device", w.new_device),
            ("scoring.weights.new_network", w.new_network),
            ("scoring.weights.account_age", w.account_age),
            ("scoring.weights.post_reset", w.post_reset),
            ("scoring.weights.break_glass_rate", w.break_glass_rate),
        ];
        for (field, v) in weights {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return invalid(field, "must be a number between 0 and 100");
            }
        }
        if s.min_volume == 0 {
            return invalid("scoring.min_volume", "must be at least 1");
        }
        if !(s.volume_allowance.is_finite() && s.volume_allowance >= 1.0) {
            return invalid("scoring.volume_allowance", "must be a number of at least 1");
        }
        positive("scoring.prior_persons_per_hour", s.prior_persons_per_hour)?;
        if s.min_attempts == 0 {
            return invalid("scoring.min_attempts", "must be at least 1");
        }
        if s.work_start_hour > 23 {
            return invalid("scoring.work_start_hour", "must be between 0 and 23");
        }
        if s.work_end_hour <= s.work_start_hour || s.work_end_hour > 24 {
            return invalid(
                "scoring.work_end_hour",
                "must be after scoring.work_start_hour and at most 24",
            );
        }
        if !(1..=365).contains(&s.baseline_days) {
            return invalid("scoring.baseline_days", "must be between 1 and 365");
        }
        let o = &self.organisation_scoring;
        let ow = &o.weights;
        let org_weights = [
            (
                "organisation_scoring.weights.off_hours_accounts",
                ow.off_hours_accounts,
            ),
            (
                "organisation_scoring.weights.active_accounts",
                ow.active_accounts,
            ),
            (
                "organisation_scoring.weights.synchronised_starts",
                ow.synchronised_starts,
            ),
            (
                "organisation_scoring.weights.bursting_accounts",
                ow.bursting_accounts,
            ),
            ("organisation_scoring.weights.volume", ow.volume),
            (
                "organisation_scoring.weights.shared_new_network",
                ow.shared_new_network,
            ),
            (
                "organisation_scoring.weights.shared_new_device",
                ow.shared_new_device,
            ),
            (
                "organisation_scoring.weights.cross_organisation_network",
                ow.cross_organisation_network,
            ),
            (
                "organisation_scoring.weights.cross_organisation_device",
                ow.cross_organisation_device,
            ),
        ];
        for (field, v) in org_weights {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return invalid(field, "must be a number between 0 and 100");
            }
        }
        let org_ranges: [(&'static str, u32, u32, u32); 7] = [
            (
                "organisation_scoring.burst_persons",
                o.burst_persons,
                2,
                BURST_RING as u32,
            ),
            ("organisation_scoring.burst_secs", o.burst_secs, 1, 3600),
            (
                "organisation_scoring.run_gap_minutes",
                o.run_gap_minutes,
                1,
                24 * 60,
            ),
            (
                "organisation_scoring.synchronised_secs",
                o.synchronised_secs,
                1,
                3600,
            ),
            (
                "organisation_scoring.min_volume",
                o.min_volume,
                1,
                1_000_000,
            ),
            ("organisation_scoring.min_hours", o.min_hours, 0, 100_000),
            (
                "organisation_scoring.step_up_minutes",
                o.step_up_minutes,
                1,
                24 * 60,
            ),
        ];
        for (field, v, lo, hi) in org_ranges {
            if !(lo..=hi).contains(&v) {
                return invalid(field, format!("must be between {lo} and {hi}"));
            }
        }
        if !(o.volume_allowance.is_finite() && o.volume_allowance >= 1.0) {
            return invalid(
                "organisation_scoring.volume_allowance",
                "must be a number of at least 1",
            );
        }
        let q = &self.organisation_scaled;
        let l = q.persons_per_account;
        if l.per_hour == 0 {
            return invalid(
                "organisation_scaled.persons_per_account.per_hour",
                "must be at least 1",
            );
        }
        if l.per_day < l.per_hour {
            return invalid(
                "organisation_scaled.persons_per_account.per_day",
                "must be at least per_hour",
            );
        }
        if !(1..=100_000).contains(&q.min_accounts) {
            return invalid(
                "organisation_scaled.min_accounts",
                "must be between 1 and 100000",
            );
        }
        let k = &q.kind_factors;
        for (field, v) in [
            (
                "organisation_scaled.kind_factors.france_travail",
                k.france_travail,
            ),
            ("organisation_scaled.kind_factors.cap_emploi", k.cap_emploi),
            (
                "organisation_scaled.kind_factors.mission_locale",
                k.mission_locale,
            ),
            (
                "organisation_scaled.kind_factors.training_provider",
                k.training_provider,
            ),
            ("organisation_scaled.kind_factors.processor", k.processor),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                return invalid(field, "must be a number greater than 0 and at most 1000");
            }
        }
        let y = &self.sync;
        if !(1..=3600).contains(&y.interval_secs) {
            return invalid("sync.interval_secs", "must be between 1 and 3600");
        }
        if y.max_staleness_secs < y.interval_secs.saturating_mul(2) {
            return invalid(
                "sync.max_staleness_secs",
                "must be at least twice sync.interval_secs",
            );
        }
        if y.exchange_after > 10_000 {
            return invalid("sync.exchange_after", "must be at most 10000");
        }
        if y.exchange_room_percent > 100 {
            return invalid("sync.exchange_room_percent", "must be at most 100");
        }
        if !(1..=100).contains(&y.exchange_near_percent) {
            return invalid("sync.exchange_near_percent", "must be between 1 and 100");
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        field,
        reason: reason.into(),
    })
}

fn fraction(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        invalid(field, "must be a number greater than 0 and at most 1")
    }
}

fn positive(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        invalid(field, "must be a positive number")
    }
}

/// The `per_hour` field of a limit, as a static name.
fn field_hour(limit: &'static str) -> &'static str {
    match limit {
        "account.persons" => "account.persons.per_hour",
        "account.nir_reveals" => "account.nir_reveals.per_hour",
        "account.searches" => "account.searches.per_hour",
        "account.break_glass" => "account.break_glass.per_hour",
        "account.mandate_grants" => "account.mandate_grants.per_hour",
        "organisation.persons" => "organisation.persons.per_hour",
        "organisation.nir_reveals" => "organisation.nir_reveals.per_hour",
        "organisation.searches" => "organisation.searches.per_hour",
        "organisation.mandate_grants" => "organisation.mandate_grants.per_hour",
        _ => "organisation.break_glass.per_hour",
    }
}

/// The `per_day` field of a limit, as a static name.
fn field_day(limit: &'static str) -> &'static str {
    match limit {
        "account.persons" => "account.persons.per_day",
        "account.nir_reveals" => "account.nir_reveals.per_day",
        "account.searches" => "account.searches.per_day",
        "account.break_glass" => "account.break_glass.per_day",
        "account.mandate_grants" => "account.mandate_grants.per_day",
        "organisation.persons" => "organisation.persons.per_day",
        "organisation.nir_reveals" => "organisation.nir_reveals.per_day",
        "organisation.searches" => "organisation.searches.per_day",
        "organisation.mandate_grants" => "organisation.mandate_grants.per_day",
        _ => "organisation.break_glass.per_day",
    }
}

fn field_of(path: &str) -> String {
    if path.is_empty() || path == "." {
        "(document)".into()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_both_formats() {
        let d = GuardConfig::default();
        d.validate().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(GuardConfig::parse(&json, Format::Json).unwrap(), d);
        let toml = toml::to_string(&d).unwrap();
        assert_eq!(GuardConfig::parse(&toml, Format::Toml).unwrap(), d);
        assert_eq!(GuardConfig::parse("", Format::Toml).unwrap(), d);
        assert_eq!(GuardConfig::parse("{}", Format::Json).unwrap(), d);
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let c = GuardConfig::parse(
            "[account.persons]\nper_hour = 30\nper_day = 120\n[scoring]\nstep_up = 3.5\n",
            Format::Toml,
        )
        .unwrap();
        assert_eq!(c.account.persons, Limit::new(30, 120));
        assert_eq!(c.scoring.step_up, 3.5);
        assert_eq!(c.account.searches, AccountQuotas::default().searches);
        let c =
            GuardConfig::parse(r#"{"containment":{"throttle_minutes":5}}"#, Format::Json).unwrap();
        assert_eq!(c.containment.throttle_minutes, 5);
    }

    fn field(e: ConfigError) -> String {
        match e {
            ConfigError::Parse { field, .. } => field,
            ConfigError::Invalid { field, .. } => field.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |text: &str, format| field(GuardConfig::parse(text, format).unwrap_err());
        assert_eq!(
            bad(
                "[account.persons]\nper_hour = 0\nper_day = 10\n",
                Format::Toml
            ),
            "account.persons.per_hour"
        );
        assert_eq!(
            bad(
                r#"{"account":{"searches":{"per_hour":10,"per_day":5}}}"#,
                Format::Json
            ),
            "account.searches.per_day"
        );
        assert_eq!(
            bad(r#"{"scoring":{"throttle":3}}"#, Format::Json),
            "scoring.throttle"
        );
        assert_eq!(
            bad(r#"{"scoring":{"weights":{"off_hours":-1}}}"#, Format::Json),
            "scoring.weights.off_hours"
        );
        assert_eq!(
            bad(r#"{"scoring":{"weights":{"of_hours":1}}}"#, Format::Json),
            "scoring.weights.of_hours",
            "an unknown field is named"
        );
        assert_eq!(
            bad("[risky]\nyoung_account_factor = \"half\"\n", Format::Toml),
            "risky.young_account_factor"
        );
        assert_eq!(
            bad("[risky]\nhigh_risk_session_factor = 1.5\n", Format::Toml),
            "risky.high_risk_session_factor"
        );
        assert_eq!(
            bad(
                "[sync]\ninterval_secs = 30\nmax_staleness_secs = 40\n",
                Format::Toml
            ),
            "sync.max_staleness_secs"
        );
        assert_eq!(
            bad("[sync]\nexchange_near_percent = 0\n", Format::Toml),
            "sync.exchange_near_percent"
        );
        assert_eq!(
            bad("[sync]\nexchange_after = 20000\n", Format::Toml),
            "sync.exchange_after"
        );
        assert_eq!(bad("[account", Format::Toml), "(document)");
        assert_eq!(
            bad(
                r#"{"organisation":{"persons":{"per_hour":10,"per_day":100}}}"#,
                Format::Json
            ),
            "organisation.persons.per_hour"
        );
        let e = GuardConfig::parse(r#"{"scoring":{"throttle":3}}"#, Format::Json).unwrap_err();
        assert!(
            e.to_string().contains("greater than scoring.step_up"),
            "{e}"
        );
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of_file_name("guard.TOML"), Some(Format::Toml));
        assert_eq!(Format::of_file_name("conf/guard.json"), Some(Format::Json));
        assert_eq!(Format::of_file_name("guard.yaml"), None);
    }

    proptest! {
        #[test]
        fn any_hour_and_day_limit_validates_exactly_when_ordered(h in 0u32..500, d in 0u32..5000) {
            let mut c = GuardConfig::default();
            c.account.searches = Limit::new(h, d);
            let ok = c.validate().is_ok();
            prop_assert_eq!(ok, h >= 1 && d >= h);
        }

        #[test]
        fn scaled_limits_stay_positive_and_below_the_original(h in 1u32..10_000, d in 1u32..100_000, f in 0.001f64..=1.0) {
            let l = Limit::new(h, d.max(h)).scaled(f);
            prop_assert!(l.per_hour >= 1 && l.per_hour <= h);
            prop_assert!(l.per_day >= 1 && l.per_day <= d.max(h));
        }
    }
}
