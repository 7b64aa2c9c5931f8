//! The organisation stage: what several accounts of one organisation do
//! together, which none of them shows alone (the 2024 attackers read
//! through many advisor accounts, each under its own quota).
//!
//! Every attempt of an account updates its organisation's [`OrgState`]
//! after the account stage, under the organisation's shard lock. The
//! organisation's features (see `ARCHITECTURE.md`, "The guard sees
//! organisations") make its own score, which
//! - is added to the account's score for this attempt (evidence shared by
//!   its accounts: a second account working at 21:00 on a Saturday makes
//!   the first one's off-hours reads more telling), and
//! - alone, from the verdict thresholds on, steps up every account of the
//!   organisation for `organisation_scoring.step_up_minutes` (each session
//!   steps up once after it began), throttles the organisation, or freezes
//!   it; one fresh alert names the accounts involved.
//!
//! Networks and devices first used by several accounts within a day are
//! counted across the organisations this instance serves, in
//! [`Sightings`].

use std::collections::HashMap;
use std::sync::Mutex;

use rempart_domain::{AccountId, OrganisationId};

use crate::alert::{AlertKind, Feature, Verdict};
use crate::attempt::{Attempt, Digest16};
use crate::baseline::{Baseline, OrgBaseline};
use crate::config::{GuardConfig, Limit};
use crate::engine::{
    AccountVerdict, DAY, HOUR, Lines, count_new_person, fresh, near, near_any, push_count, rates,
    take_counts, verdict_of,
};
use crate::store::{CounterDelta, KnownKind, METRICS, Metric, Scope};
use crate::window::Rate;

/// What the organisation stage keeps of one of its accounts.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// Its last attempt.
    last: i64,
    /// When its current run of work began (first attempt after a gap).
    run_start: i64,
    /// Its last attempt outside working time.
    last_off: i64,
    /// The last attempt at which it was reading faster than a person can.
    burst_at: i64,
}

/// How many accounts, and of how many organisations, started using one
/// network or device within the last day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sharing {
    /// Accounts of the attempt's organisation (itself included).
    pub(crate) accounts: u32,
    /// Organisations (the attempt's included).
    pub(crate) organisations: u32,
}

/// The network and device of one attempt, as [`Sightings`] saw them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Shared {
    pub(crate) network: Sharing,
    pub(crate) device: Sharing,
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    organisation_id: OrganisationId,
    account_id: AccountId,
    /// When the account first used it.
    since: i64,
    /// When it last did.
    at: i64,
    /// A session of the account passed a step-up while using it: its
    /// owner vouched for it (an agency's new office network), and it
    /// counts no more.
    cleared: bool,
}

const SIGHTING_SHARDS: usize = 16;
/// A network or device shared anew stays followed this long after its
/// last use: a weekend does not launder the attacker's machine.
const SIGHTING_SECS: i64 = 7 * DAY;
/// Accounts remembered per digest and day: beyond this many, the counts
/// are saturated anyway.
const MAX_SIGHTINGS: usize = 64;

/// Who started using one network or device, per digest.
type SightingMap = HashMap<(KnownKind, Digest16), Vec<Sighting>>;

/// Networks and devices that accounts started using (within a day of
/// their first use), with who, followed while used in the week: the first use of one machine by accounts of several
/// organisations (an infostealer operator's) or by several accounts of
/// one. Per instance: each instance sees the accounts it serves.
pub(crate) struct Sightings {
    shards: Vec<Mutex<SightingMap>>,
}

impl Sightings {
    pub(crate) fn new() -> Self {
        Sightings {
            shards: (0..SIGHTING_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, digest: &Digest16) -> &Mutex<SightingMap> {
        &self.shards[usize::from(digest[0]) % SIGHTING_SHARDS]
    }

    /// Records that `account` of `organisation` uses `digest` (`new`: it
    /// first did less than a day ago), and counts who else started using
    /// it while none of them had. A digest the account had used before is
    /// only followed when it was new to the account at its first
    /// sighting and has not been vouched for since (`stepped_up_at`): the
    /// attacker's machine stays suspicious the day after, an agency's new
    /// network does not once its advisors stepped up from it.
    pub(crate) fn sight(
        &self,
        kind: KnownKind,
        digest: Digest16,
        new: bool,
        who: (OrganisationId, AccountId),
        stepped_up_at: Option<i64>,
        now: i64,
    ) -> Sharing {
        let (organisation_id, account_id) = who;
        let mut shard = crate::lock(self.shard(&digest));
        if !new && !shard.contains_key(&(kind, digest)) {
            // The common case: an established digest nobody shares anew.
            return Sharing::default();
        }
        let seen = shard.entry((kind, digest)).or_default();
        seen.retain(|s| now.saturating_sub(s.at) < SIGHTING_SECS);
        if let Some(i) = seen.iter().position(|s| s.account_id == account_id) {
            let s = &mut seen[i];
            s.at = s.at.max(now);
            s.cleared |= stepped_up_at.is_some_and(|t| t >= s.since);
        } else if new && seen.len() < MAX_SIGHTINGS {
            seen.push(Sighting {
                organisation_id,
                account_id,
                since: now,
                at: now,
                cleared: stepped_up_at.is_some_and(|t| t >= now),
            });
        }
        if seen.is_empty() {
            shard.remove(&(kind, digest));
            return Sharing::default();
        }
        let Some(seen) = shard.get(&(kind, digest)) else {
            return Sharing::default();
        };
        if !seen
            .iter()
            .any(|s| s.account_id == account_id && !s.cleared)
        {
            return Sharing::default();
        }
        let seen: Vec<Sighting> = seen.iter().filter(|s| !s.cleared).copied().collect();
        let accounts = seen
            .iter()
            .filter(|s| s.organisation_id == organisation_id)
            .count() as u32;
        // Distinct organisations: a few sightings, no allocation.
        let organisations = seen
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                !seen[..*i]
                    .iter()
                    .any(|t| t.organisation_id == s.organisation_id)
            })
            .count() as u32;
        Sharing {
            accounts,
            organisations,
        }
    }

    /// The accounts that started using `digest` within the day (for an
    /// alert: the rare path).
    pub(crate) fn accounts(&self, kind: KnownKind, digest: Digest16, now: i64) -> Vec<AccountId> {
        crate::lock(self.shard(&digest))
            .get(&(kind, digest))
            .map(|v| {
                v.iter()
                    .filter(|s| !s.cleared && now.saturating_sub(s.at) < SIGHTING_SECS)
                    .map(|s| s.account_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets sightings not renewed for [`SIGHTING_SECS`].
    pub(crate) fn prune(&self, now: i64) {
        for shard in &self.shards {
            let mut shard = crate::lock(shard);
            shard.retain(|_, v| {
                v.retain(|s| now.saturating_sub(s.at) < SIGHTING_SECS);
                !v.is_empty()
            });
        }
    }
}

/// One organisation's hot state.
pub(crate) struct OrgState {
    pub(crate) rates: [Rate; METRICS],
    pub(crate) frozen: bool,
    last_alert: [i64; 5],
    pub(crate) pending_counts: Vec<CounterDelta>,
    pub(crate) last_seen: i64,
    members: HashMap<AccountId, Member>,
    /// Its usual, loaded once per local day.
    pub(crate) own: OrgBaseline,
    pub(crate) loaded_day: i32,
    /// An organisation-wide step-up: sessions that have not stepped up
    /// since `step_up_since` are asked to, until `step_up_until`.
    step_up_since: i64,
    step_up_until: i64,
    /// An organisation-wide throttle.
    throttled_until: i64,
}

/// The organisation stage's result.
pub(crate) struct OrgVerdict {
    pub(crate) verdict: Verdict,
    pub(crate) kind: AlertKind,
    pub(crate) lines: Lines,
    /// The organisation's own score.
    pub(crate) score: f64,
    pub(crate) newly_frozen: bool,
    pub(crate) fresh: bool,
    /// Accounts involved, when the organisation's verdict is not allow
    /// (allocated on that rare path only).
    pub(crate) accounts: Vec<AccountId>,
}

impl OrgState {
    pub(crate) fn new() -> Self {
        OrgState {
            rates: rates(),
            frozen: false,
            last_alert: [i64::MIN; 5],
            pending_counts: Vec::new(),
            last_seen: i64::MIN,
            members: HashMap::new(),
            own: OrgBaseline::default(),
            loaded_day: i32::MIN,
            step_up_since: i64::MIN,
            step_up_until: i64::MIN,
            throttled_until: i64::MIN,
        }
    }

    fn count(&mut self, metric: Metric, at: i64) {
        self.rates[metric as usize].add(at, 1);
        push_count(&mut self.pending_counts, Scope::Organisation, 0, metric, at);
    }

    /// The organisation's persons quota: scaled once its size is known
    /// from its own history, the absolute ceiling before that.
    fn persons_limit(&self, c: &GuardConfig, a: &Attempt) -> Limit {
        let q = &c.organisation;
        if self.own.hours >= f64::from(c.organisation_scoring.min_hours) {
            c.organisation_scaled
                .persons(a.account.kind(), self.own.peak_accounts, q.persons)
        } else {
            q.persons
        }
    }

    /// Whether one of the organisation's limits is near enough
    /// (`sync.exchange_near_percent`) for every decision on its accounts to
    /// exchange counts with the other instances first.
    pub(crate) fn needs_exchange(&mut self, c: &GuardConfig, a: &Attempt, now: i64) -> bool {
        if self.frozen {
            return false;
        }
        let pct = c.sync.exchange_near_percent;
        let q = &c.organisation;
        let k = &c.containment;
        let limits = [
            self.persons_limit(c, a),
            q.nir_reveals,
            q.searches,
            q.break_glass,
            q.mandate_grants,
        ];
        near_any(&mut self.rates, limits, k.freeze_after_refusals, pct, now)
            || near(
                self.rates[Metric::Suspensions as usize].day(now),
                k.freeze_after_suspensions,
                pct,
            )
    }

    /// Moves the counts not yet shared to `out` (to exchange or flush).
    pub(crate) fn take_counts(&mut self, id: i64, out: &mut Vec<CounterDelta>) {
        take_counts(&mut self.pending_counts, id, out);
    }

    /// An officer lifted the freeze: the organisation starts afresh (its
    /// step-up, throttle and what its accounts did together are the
    /// incident the officer closed).
    pub(crate) fn lift(&mut self) -> bool {
        self.members.clear();
        self.step_up_until = i64::MIN;
        self.throttled_until = i64::MIN;
        std::mem::replace(&mut self.frozen, false)
    }

    /// Forgets accounts not seen for a day.
    pub(crate) fn prune(&mut self, now: i64) {
        self.members.retain(|_, m| now.saturating_sub(m.last) < DAY);
    }

    pub(crate) fn is_idle(&mut self, now: i64) -> bool {
        !self.frozen
            && now.saturating_sub(self.last_seen) > DAY + HOUR
            && self.members.is_empty()
            && self
                .rates
                .iter()
                .all(|r| r.remote_hour == 0 && r.remote_day == 0)
            && self.pending_counts.is_empty()
            && self.rates.iter_mut().all(|r| r.locally_idle(now))
    }

    /// Decides what the organisation adds to the account's verdict, and
    /// commits the account's events.
    pub(crate) fn decide(
        &mut self,
        c: &GuardConfig,
        a: &Attempt,
        account: &AccountVerdict,
        checked: bool,
        peer: Baseline,
        shared: Shared,
    ) -> OrgVerdict {
        let now = a.at.timestamp();
        self.last_seen = self.last_seen.max(now);
        let mut lines = Lines::new();
        let throttle = c.scoring.throttle;
        if self.frozen {
            lines.push(Feature::FrozenOrganisation, 1.0, 0.0, c.scoring.suspend);
            let fresh = fresh(&mut self.last_alert, Verdict::FreezeOrganisation, now, c);
            return OrgVerdict {
                verdict: Verdict::FreezeOrganisation,
                kind: AlertKind::Frozen,
                lines,
                score: 0.0,
                newly_frozen: false,
                fresh,
                accounts: Vec::new(),
            };
        }
        let score = self.features(c, a, account, peer, shared, &mut lines);

        let mut verdict = Verdict::Allow;
        let mut kind = AlertKind::OrganisationQuota;
        let ev = account.events;
        if checked && account.verdict.lets_through() {
            let q = &c.organisation;
            let persons = self.persons_limit(c, a);
            let mut quota = Lines::new();
            let [_, ph, pd, nir, searches, _, _, _, bg, _, _, _, _, grants] = &mut self.rates;
            let mut over = |on: bool, h: u32, d: u32, l: Limit, fh: Feature, fd: Feature| {
                if on && h.saturating_add(1) > l.per_hour {
                    quota.push(fh, f64::from(h) + 1.0, f64::from(l.per_hour), throttle);
                }
                if on && d.saturating_add(1) > l.per_day {
                    quota.push(fd, f64::from(d) + 1.0, f64::from(l.per_day), throttle);
                }
            };
            over(
                ev.person_new_hour,
                ph.hour(now),
                0,
                persons,
                Feature::PersonsPerHour,
                Feature::PersonsPerDay,
            );
            over(
                ev.person_new_day,
                0,
                pd.day(now),
                persons,
                Feature::PersonsPerHour,
                Feature::PersonsPerDay,
            );
            over(
                ev.nir,
                nir.hour(now),
                nir.day(now),
                q.nir_reveals,
                Feature::NirPerHour,
                Feature::NirPerDay,
            );
            over(
                ev.search,
                searches.hour(now),
                searches.day(now),
                q.searches,
                Feature::SearchesPerHour,
                Feature::SearchesPerDay,
            );
            over(
                ev.break_glass,
                bg.hour(now),
                bg.day(now),
                q.break_glass,
                Feature::BreakGlassPerHour,
                Feature::BreakGlassPerDay,
            );
            over(
                ev.mandate_grant,
                grants.hour(now),
                grants.day(now),
                q.mandate_grants,
                Feature::MandateGrantsPerHour,
                Feature::MandateGrantsPerDay,
            );
            for l in quota.as_slice() {
                lines.push(l.feature, l.value, l.baseline, l.contribution);
            }
            if !quota.is_empty() {
                verdict = Verdict::Throttle;
            }
        }

        // The organisation's own verdict, and what it means for every one
        // of its accounts.
        let alone = verdict_of(score, c);
        let s = &c.scoring;
        let mut newly_frozen = false;
        match alone {
            Verdict::Suspend | Verdict::FreezeOrganisation => newly_frozen = true,
            Verdict::Throttle => {
                let until = now + i64::from(c.containment.throttle_minutes) * 60;
                self.throttled_until = self.throttled_until.max(until);
            }
            Verdict::StepUp => {
                if self.step_up_until <= now {
                    self.step_up_since = now;
                }
                let until = now + i64::from(c.organisation_scoring.step_up_minutes) * 60;
                self.step_up_until = self.step_up_until.max(until);
            }
            Verdict::Allow => {}
        }
        let valid = i64::from(c.containment.step_up_valid_minutes) * 60;
        let stepped_up_at = a.session.stepped_up_at.map(|t| t.timestamp());
        let stepped_up = stepped_up_at.is_some_and(|t| (0..=valid).contains(&(now - t)));
        let mut behaviour = Verdict::Allow;
        let minutes_left = |until: i64| (until - now) as f64 / 60.0;
        if self.throttled_until > now {
            behaviour = Verdict::Throttle;
            lines.push(
                Feature::Blocked,
                minutes_left(self.throttled_until),
                f64::from(c.containment.throttle_minutes),
                0.0,
            );
        } else if self.step_up_until > now
            && !stepped_up_at.is_some_and(|t| t >= self.step_up_since && stepped_up)
        {
            behaviour = Verdict::StepUp;
            lines.push(
                Feature::OrganisationStepUp,
                minutes_left(self.step_up_until),
                f64::from(c.organisation_scoring.step_up_minutes),
                0.0,
            );
        }
        // The account's score with the organisation's evidence added: at
        // most a throttle (suspensions stay the account's own decision).
        if score > 0.0 {
            let combined = account.score + score;
            let mut v = verdict_of(combined, c).min(Verdict::Throttle);
            if v == Verdict::StepUp && stepped_up {
                v = Verdict::Allow;
            }
            if combined < s.step_up {
                v = Verdict::Allow;
            }
            behaviour = behaviour.max(v);
        }
        if behaviour > verdict {
            verdict = behaviour;
            kind = AlertKind::OrganisationBehaviour;
        }

        if checked && account.verdict.lets_through() && verdict.lets_through() {
            count_new_person(
                &mut self.rates,
                &mut self.pending_counts,
                Scope::Organisation,
                ev,
                now,
            );
            if ev.explained {
                self.count(Metric::NewMandatePersons, now);
            }
            if ev.nir {
                self.count(Metric::Nir, now);
            }
            if ev.search {
                self.count(Metric::Searches, now);
            }
            if ev.break_glass {
                self.count(Metric::BreakGlass, now);
            }
            if ev.mandate_grant {
                self.count(Metric::MandateGrants, now);
            }
        }
        // An account already suspended is contained: its attempts say
        // nothing more about the organisation.
        let contained = account.verdict >= Verdict::Suspend && !account.newly_suspended;
        let refused =
            checked && !contained && (!account.verdict.lets_through() || !verdict.lets_through());
        if refused {
            let n = self.rates[Metric::Refusals as usize]
                .hour(now)
                .saturating_add(1);
            self.count(Metric::Refusals, now);
            if n >= c.containment.freeze_after_refusals {
                lines.push(
                    Feature::Refusals,
                    f64::from(n),
                    f64::from(c.containment.freeze_after_refusals),
                    c.scoring.suspend,
                );
                newly_frozen = true;
            }
        }
        if account.newly_suspended {
            let n = self.rates[Metric::Suspensions as usize]
                .day(now)
                .saturating_add(1);
            self.count(Metric::Suspensions, now);
            if n >= c.containment.freeze_after_suspensions {
                lines.push(
                    Feature::Suspensions,
                    f64::from(n),
                    f64::from(c.containment.freeze_after_suspensions),
                    c.scoring.suspend,
                );
                newly_frozen = true;
            }
        }
        if newly_frozen {
            self.frozen = true;
            verdict = Verdict::FreezeOrganisation;
            kind = if alone >= Verdict::Suspend {
                AlertKind::OrganisationBehaviour
            } else {
                AlertKind::OrganisationContainment
            };
        }
        let fresh = fresh(&mut self.last_alert, verdict, now, c);
        let accounts = if verdict.lets_through() || kind != AlertKind::OrganisationBehaviour {
            Vec::new()
        } else {
            self.involved(now)
        };
        OrgVerdict {
            verdict,
            kind,
            lines,
            score,
            newly_frozen,
            fresh,
            accounts,
        }
    }

    /// Accounts active within the hour, in id order.
    fn involved(&self, now: i64) -> Vec<AccountId> {
        let mut ids: Vec<AccountId> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last) < HOUR)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Updates the account's membership and measures the organisation's
    /// features into `lines`; returns their score.
    fn features(
        &mut self,
        c: &GuardConfig,
        a: &Attempt,
        account: &AccountVerdict,
        peer: Baseline,
        shared: Shared,
        lines: &mut Lines,
    ) -> f64 {
        let now = a.at.timestamp();
        let o = &c.organisation_scoring;
        let w = &o.weights;
        if account.counts_attempt {
            let gap = i64::from(o.run_gap_minutes) * 60;
            let m = self.members.entry(a.account.account_id).or_insert(Member {
                last: i64::MIN,
                run_start: now,
                last_off: i64::MIN,
                burst_at: i64::MIN,
            });
            if now.saturating_sub(m.last) >= gap {
                m.run_start = now;
            }
            m.last = m.last.max(now);
            if account.off_hours.is_some() {
                m.last_off = now;
            }
            if account.bursting {
                m.burst_at = now;
            }
        }
        let (mut active, mut off, mut starts, mut bursting) = (0u32, 0u32, 0u32, 0u32);
        let burst_window = 2 * i64::from(o.burst_secs);
        for m in self.members.values() {
            if now.saturating_sub(m.last) < HOUR {
                active += 1;
                if now.saturating_sub(m.run_start) < i64::from(o.synchronised_secs) {
                    starts += 1;
                }
            }
            if now.saturating_sub(m.last_off) < HOUR {
                off += 1;
            }
            if now.saturating_sub(m.burst_at) < burst_window {
                bursting += 1;
            }
        }
        let own_known = self.own.hours >= f64::from(o.min_hours);
        let usual = |v: u32| if own_known { v } else { 0 };

        // A whole agency at work at 21:00 on a Saturday is not an agency
        // working. Nights allow one account (more in a large agency: 2% of
        // its size); weekend mornings see a few accounts at work now and
        // then, 6% of a large agency, and count from two beyond that.
        let size = if own_known {
            self.own.peak_accounts
        } else {
            active
        };
        if let Some(kind) = account.off_hours.filter(|_| off >= 2) {
            let share = |p: f64| (f64::from(size) * p).ceil() as u32;
            let (floor, slack) = match kind {
                crate::region::OffHours::Night => (share(0.02).max(1), 0.0),
                crate::region::OffHours::WeekendDay => (share(0.06).max(2), 1.0),
            };
            let b = usual(self.own.peak_off_hours_accounts(kind));
            let excess = f64::from(off) - f64::from(b.max(floor)) - slack;
            lines.push(
                Feature::OffHoursAccounts,
                f64::from(off),
                f64::from(b.max(floor)),
                w.off_hours_accounts * (excess / 2.0).clamp(0.0, 1.0),
            );
        }
        // More accounts at work than it ever has: dormant accounts woken.
        if own_known && active > self.own.peak_accounts + 1 {
            let b = self.own.peak_accounts;
            let step = (f64::from(b) / 4.0).max(2.0);
            let excess = f64::from(active) - f64::from(b) - 1.0;
            lines.push(
                Feature::ActiveAccounts,
                f64::from(active),
                f64::from(b),
                w.active_accounts * (excess / step).clamp(0.0, 1.0),
            );
        }
        // Mornings see a few accounts start within the same two minutes in
        // a large agency (arrivals spread over 90 minutes): the allowance
        // grows with its usual size.
        let allowance = (f64::from(size) / 8.0).max(2.0);
        if f64::from(starts) > allowance {
            lines.push(
                Feature::SynchronisedStarts,
                f64::from(starts),
                allowance,
                w.synchronised_starts * ((f64::from(starts) - allowance) / 3.0).clamp(0.0, 1.0),
            );
        }
        if bursting >= 2 {
            lines.push(
                Feature::BurstingAccounts,
                f64::from(bursting),
                1.0,
                w.bursting_accounts * ((f64::from(bursting) - 1.0) / 2.0).clamp(0.0, 1.0),
            );
        }
        // Distinct persons no new mandate explains, in the hour.
        let v = self.rates[Metric::PersonsHour as usize]
            .hour(now)
            .saturating_add(u32::from(account.events.person_new_hour))
            .saturating_sub(
                self.rates[Metric::NewMandatePersons as usize]
                    .hour(now)
                    .saturating_add(u32::from(account.events.explained)),
            );
        if v >= o.min_volume {
            let per_account = if peer.hours >= f64::from(c.scoring.min_peer_hours) {
                peer.persons_per_hour
            } else {
                c.scoring.prior_persons_per_hour
            };
            let by_peers = per_account * f64::from(active.max(1));
            let by_own = if own_known {
                f64::from(self.own.peak_persons)
            } else {
                0.0
            };
            let e = by_own
                .max(by_peers)
                .max(f64::from(o.min_volume) / o.volume_allowance);
            let ratio = f64::from(v) / (o.volume_allowance * e);
            lines.push(
                Feature::OrganisationVolume,
                f64::from(v),
                e,
                w.volume * ratio.log2().clamp(0.0, 1.5),
            );
        }
        let mut sharing =
            |n: Sharing, within: Feature, across: Feature, wi: f64, wa: f64, per: f64| {
                if n.accounts >= 2 {
                    lines.push(
                        within,
                        f64::from(n.accounts),
                        1.0,
                        wi * ((f64::from(n.accounts) - 1.0) / per).clamp(0.0, 1.5),
                    );
                }
                if n.organisations >= 2 {
                    lines.push(
                        across,
                        f64::from(n.organisations),
                        1.0,
                        wa * (f64::from(n.organisations) - 1.0).clamp(0.0, 1.5),
                    );
                }
            };
        sharing(
            shared.network,
            Feature::SharedNewNetwork,
            Feature::CrossOrganisationNetwork,
            w.shared_new_network,
            w.cross_organisation_network,
            3.0,
        );
        sharing(
            shared.device,
            Feature::SharedNewDevice,
            Feature::CrossOrganisationDevice,
            w.shared_new_device,
            w.cross_organisation_device,
            1.0,
        );
        lines.score()
    }
}
