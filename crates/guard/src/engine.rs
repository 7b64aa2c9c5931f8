//! The per-account and per-organisation state and the decision on one
//! attempt. Everything here runs under one shard lock, allocates nothing
//! on the allow path, and does no I/O.

use std::collections::HashMap;

use rempart_domain::{OrganisationId, PersonId};

use crate::alert::{AlertKind, Explanation, Feature, Verdict};
use crate::attempt::{Attempt, AttemptKind, Digest16, Observed};
use crate::baseline::Baseline;
use crate::config::{GuardConfig, Limit};
use crate::region::{LocalTime, OffHours};
use crate::store::{
    ActivityCounts, ActivityRow, CounterDelta, Known, KnownKind, METRICS, Metric, Scope,
};
use crate::window::{Rate, bucket_of};

pub(crate) const HOUR: i64 = 3600;
pub(crate) const DAY: i64 = 86_400;

pub(crate) use crate::config::BURST_RING;

/// Explanation lines of one decision, on the stack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lines {
    items: [Explanation; 24],
    len: usize,
}

impl Lines {
    pub(crate) fn new() -> Self {
        Lines {
            items: [Explanation {
                feature: Feature::PersonsPerHour,
                value: 0.0,
                baseline: 0.0,
                contribution: 0.0,
            }; 24],
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push(&mut self, feature: Feature, value: f64, baseline: f64, contribution: f64) {
        if self.len < self.items.len() {
            self.items[self.len] = Explanation {
                feature,
                value,
                baseline,
                contribution,
            };
            self.len += 1;
        }
    }

    pub(crate) fn as_slice(&self) -> &[Explanation] {
        &self.items[..self.len]
    }

    /// Sum of the behaviour features' contributions (quota lines excluded).
    pub(crate) fn score(&self) -> f64 {
        self.as_slice()
            .iter()
            .filter(|l| !is_quota(l.feature))
            .map(|l| l.contribution)
            .sum()
    }
}

/// The verdict a behaviour score reaches (account or organisation).
pub(crate) fn verdict_of(score: f64, c: &GuardConfig) -> Verdict {
    let s = &c.scoring;
    if score >= s.suspend {
        Verdict::Suspend
    } else if score >= s.throttle {
        Verdict::Throttle
    } else if score >= s.step_up {
        Verdict::StepUp
    } else {
        Verdict::Allow
    }
}

pub(crate) fn is_quota(f: Feature) -> bool {
    matches!(
        f,
        Feature::PersonsPerHour
            | Feature::PersonsPerDay
            | Feature::NirPerHour
            | Feature::NirPerDay
            | Feature::SearchesPerHour
            | Feature::SearchesPerDay
            | Feature::BreakGlassPerHour
            | Feature::BreakGlassPerDay
            | Feature::MandateGrantsPerHour
            | Feature::MandateGrantsPerDay
    )
}

/// What this attempt adds, decided before it is committed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Events {
    pub(crate) person_new_hour: bool,
    pub(crate) person_new_day: bool,
    pub(crate) nir: bool,
    pub(crate) search: bool,
    pub(crate) break_glass: bool,
    pub(crate) mandate_grant: bool,
    /// The new person is explained by a new mandate.
    pub(crate) explained: bool,
}

/// The account stage's result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccountVerdict {
    pub(crate) verdict: Verdict,
    pub(crate) kind: AlertKind,
    pub(crate) score: f64,
    pub(crate) lines: Lines,
    pub(crate) events: Events,
    /// The account went into suspension with this attempt.
    pub(crate) newly_suspended: bool,
    /// The end of the suspension block this attempt set or lengthened
    /// (Unix time), for every instance to honour.
    pub(crate) block: Option<i64>,
    pub(crate) fresh: bool,
    /// The attempt counts as one (checked or denied; not a not-found
    /// after a check).
    pub(crate) counts_attempt: bool,
    /// The attempt is outside working time, and of which kind.
    pub(crate) off_hours: Option<OffHours>,
    /// The account read faster than a person can (see
    /// `organisation_scoring.burst_persons`), this attempt included.
    pub(crate) bursting: bool,
    /// The network, if the account first used it less than a day ago
    /// beside an established one.
    pub(crate) new_network: Option<Digest16>,
    /// The device, likewise.
    pub(crate) new_device: Option<Digest16>,
}

/// One account's hot state.
pub(crate) struct AccountState {
    pub(crate) organisation_id: OrganisationId,
    pub(crate) peer: i64,
    pub(crate) rates: [Rate; METRICS],
    /// Persons shown, with the last time each was shown (pruned at sync).
    persons: HashMap<PersonId, i64>,
    last_person: Option<PersonId>,
    /// The local (day, hour) last counted as one account-hour: pending
    /// rows are drained by every sync, so the first row of an hour is not
    /// the first attempt of that hour.
    hour_counted: Option<(i32, u8)>,
    pub(crate) known: Vec<Known>,
    pub(crate) own: Baseline,
    pub(crate) loaded_day: i32,
    blocked_until: i64,
    blocked_verdict: Verdict,
    last_alert: [i64; 5],
    /// Instants of the last persons shown that no new mandate explains
    /// (a ring, oldest overwritten).
    recent: [i64; BURST_RING],
    recent_head: usize,
    pub(crate) last_seen: i64,
    pub(crate) pending_counts: Vec<CounterDelta>,
    /// An exchange of this account is in flight on this instance.
    pub(crate) exchanging: bool,
    pub(crate) pending_activity: Vec<ActivityRow>,
    pub(crate) pending_known: Vec<Known>,
}

pub(crate) fn rates() -> [Rate; METRICS] {
    std::array::from_fn(|_| Rate::new())
}

/// The factor an attempt's account quotas are scaled by (at most 1):
/// young accounts and high-risk sessions get less.
pub(crate) fn quota_factor(c: &GuardConfig, a: &Attempt) -> f64 {
    let young = a.account.created_at.is_some_and(|t| {
        ((a.at - t).num_seconds() as f64 / DAY as f64) < f64::from(c.risky.young_account_days)
    });
    let mut factor = 1.0f64;
    if young {
        factor = factor.min(c.risky.young_account_factor);
    }
    if a.session.high_risk {
        factor = factor.min(c.risky.high_risk_session_factor);
    }
    factor
}

/// Whether `count` reached `percent` % of `limit`.
pub(crate) fn near(count: u32, limit: u32, percent: u32) -> bool {
    u64::from(count) * 100 >= u64::from(limit) * u64::from(percent)
}

/// Whether a rate's hour or day count reached `percent` % of its limit.
fn near_limit(rate: &mut Rate, limit: Limit, percent: u32, now: i64) -> bool {
    near(rate.hour(now), limit.per_hour, percent) || near(rate.day(now), limit.per_day, percent)
}

/// Whether a subject is near one of its limits: `limits` are its persons,
/// NIRs, searches, break-glass and mandate-grant quotas, `refusals` the
/// refusals in an hour that suspend or freeze it.
pub(crate) fn near_any(
    rates: &mut [Rate; METRICS],
    limits: [Limit; 5],
    refusals: u32,
    percent: u32,
    now: i64,
) -> bool {
    let [persons, nir, searches, bg, grants] = limits;
    let m = |metric: Metric| metric as usize;
    near(
        rates[m(Metric::PersonsHour)].hour(now),
        persons.per_hour,
        percent,
    ) || near(
        rates[m(Metric::PersonsDay)].day(now),
        persons.per_day,
        percent,
    ) || near_limit(&mut rates[m(Metric::Nir)], nir, percent, now)
        || near_limit(&mut rates[m(Metric::Searches)], searches, percent, now)
        || near_limit(&mut rates[m(Metric::BreakGlass)], bg, percent, now)
        || near_limit(&mut rates[m(Metric::MandateGrants)], grants, percent, now)
        || near(rates[m(Metric::Refusals)].hour(now), refusals, percent)
}

/// Moves counts not yet shared to `out`, naming their subject.
pub(crate) fn take_counts(
    pending: &mut Vec<CounterDelta>,
    subject: i64,
    out: &mut Vec<CounterDelta>,
) {
    out.extend(pending.drain(..).map(|d| CounterDelta { subject, ..d }));
}

/// A person new to this hour's or this day's distinct count: the local
/// rate moves now and the delta waits for the next sync.
pub(crate) fn count_new_person(
    rates: &mut [Rate; METRICS],
    pending: &mut Vec<CounterDelta>,
    scope: Scope,
    ev: Events,
    now: i64,
) {
    if ev.person_new_hour {
        rates[Metric::PersonsHour as usize].add_hour(now, 1);
        push_count(pending, scope, 0, Metric::PersonsHour, now);
    }
    if ev.person_new_day {
        rates[Metric::PersonsDay as usize].add_day(now, 1);
        push_count(pending, scope, 0, Metric::PersonsDay, now);
    }
}

pub(crate) fn push_count(
    pending: &mut Vec<CounterDelta>,
    scope: Scope,
    subject: i64,
    metric: Metric,
    at: i64,
) {
    let bucket = bucket_of(at);
    // The deltas of one bucket sit together at the end: look back a little.
    for d in pending.iter_mut().rev().take(METRICS) {
        if d.bucket == bucket && d.metric == metric {
            d.count = d.count.saturating_add(1);
            return;
        }
    }
    pending.push(CounterDelta {
        scope,
        subject,
        metric,
        bucket,
        count: 1,
    });
}

impl AccountState {
    pub(crate) fn new(a: &Attempt) -> Self {
        Self::blank(a.account.organisation_id, a.account.peer.key())
    }

    /// A state known only from other instances' counts until its first
    /// attempt here fills in the rest.
    pub(crate) fn blank(organisation_id: OrganisationId, peer: i64) -> Self {
        AccountState {
            organisation_id,
            peer,
            rates: rates(),
            persons: HashMap::new(),
            last_person: None,
            hour_counted: None,
            known: Vec::new(),
            own: Baseline::default(),
            loaded_day: i32::MIN,
            blocked_until: i64::MIN,
            blocked_verdict: Verdict::Allow,
            last_alert: [i64::MIN; 5],
            recent: [i64::MIN; BURST_RING],
            recent_head: 0,
            last_seen: i64::MIN,
            pending_counts: Vec::new(),
            exchanging: false,
            pending_activity: Vec::new(),
            pending_known: Vec::new(),
        }
    }

    /// Whether this instance must share the account's counts and read the
    /// others' before deciding on `a` (see `sync.exchange_after`): one of
    /// the account's limits is near, or it counted, towards one of them,
    /// enough the others have not seen for the room left under it.
    pub(crate) fn needs_exchange(&mut self, c: &GuardConfig, a: &Attempt, now: i64) -> bool {
        let s = &c.sync;
        if s.exchange_after == 0 {
            return true;
        }
        let factor = quota_factor(c, a);
        let scale = |l: Limit| if factor < 1.0 { l.scaled(factor) } else { l };
        let q = &c.account;
        let limits = [
            scale(q.persons),
            scale(q.nir_reveals),
            scale(q.searches),
            scale(q.break_glass),
            scale(q.mandate_grants),
        ];
        let refusals = c.containment.suspend_after_refusals;
        if near_any(
            &mut self.rates,
            limits,
            refusals,
            s.exchange_near_percent,
            now,
        ) {
            return true;
        }
        let [persons, nir, searches, bg, grants] = limits;
        let hour = |l: u32| Limit {
            per_hour: l,
            per_day: u32::MAX,
        };
        let day = |l: u32| Limit {
            per_hour: u32::MAX,
            per_day: l,
        };
        [
            (Metric::PersonsHour, hour(persons.per_hour)),
            (Metric::PersonsDay, day(persons.per_day)),
            (Metric::Nir, nir),
            (Metric::Searches, searches),
            (Metric::BreakGlass, bg),
            (Metric::MandateGrants, grants),
            (Metric::Refusals, hour(refusals)),
        ]
        .into_iter()
        .any(|(metric, limit)| {
            let unshared: u32 = self
                .pending_counts
                .iter()
                .filter(|d| d.metric == metric)
                .map(|d| d.count)
                .fold(0, u32::saturating_add);
            if unshared < s.exchange_after {
                return false;
            }
            let r = &mut self.rates[metric as usize];
            let room = limit
                .per_hour
                .saturating_sub(r.hour(now))
                .min(limit.per_day.saturating_sub(r.day(now)));
            u64::from(unshared) * 100 >= u64::from(room) * u64::from(s.exchange_room_percent)
        })
    }

    /// Moves the counts not yet shared to `out` (to exchange or flush).
    pub(crate) fn take_counts(&mut self, id: i64, out: &mut Vec<CounterDelta>) {
        take_counts(&mut self.pending_counts, id, out);
    }

    /// Merges devices and networks loaded from the store.
    pub(crate) fn merge_known(&mut self, loaded: &[Known]) {
        for k in loaded {
            match self
                .known
                .iter_mut()
                .find(|x| x.kind == k.kind && x.digest == k.digest)
            {
                Some(x) => x.first_seen = x.first_seen.min(k.first_seen),
                None => self.known.push(*k),
            }
        }
    }

    fn count(&mut self, metric: Metric, at: i64) {
        self.rates[metric as usize].add(at, 1);
        push_count(&mut self.pending_counts, Scope::Account, 0, metric, at);
    }

    fn activity(&mut self, local: LocalTime, add: impl FnOnce(&mut ActivityCounts)) {
        let row = match self
            .pending_activity
            .iter_mut()
            .rev()
            .find(|r| r.day == local.day && r.hour == local.hour)
        {
            Some(r) => r,
            None => {
                self.pending_activity.push(ActivityRow {
                    scope: Scope::Account,
                    subject: 0,
                    day: local.day,
                    hour: local.hour,
                    counts: ActivityCounts::default(),
                });
                let last = self.pending_activity.len() - 1;
                &mut self.pending_activity[last]
            }
        };
        add(&mut row.counts);
    }

    /// Whether `digest` of `kind` is new to the account (first seen less
    /// than a day ago), and beside how many established ones; records it
    /// if never seen.
    fn novelty(
        &mut self,
        kind: KnownKind,
        digest: Option<[u8; 16]>,
        a: &Attempt,
        now: i64,
    ) -> Option<(bool, u32)> {
        let digest = digest?;
        let mut established = 0u32;
        let mut first_seen = None;
        for k in self.known.iter().filter(|k| k.kind == kind) {
            if k.digest == digest {
                first_seen = Some(k.first_seen.timestamp());
            } else if now - k.first_seen.timestamp() >= DAY {
                established += 1;
            }
        }
        if first_seen.is_none() {
            let k = Known {
                account_id: a.account.account_id,
                kind,
                digest,
                first_seen: a.at,
            };
            self.known.push(k);
            self.pending_known.push(k);
        }
        let is_new = first_seen.is_none_or(|t| now - t < DAY);
        Some((is_new, established))
    }

    /// Remembers a person shown that no new mandate explains, and says
    /// whether the last `n` of them were shown within `secs`.
    fn burst(&mut self, counted: bool, now: i64, n: u32, secs: u32) -> bool {
        if counted {
            self.recent[self.recent_head] = now;
            self.recent_head = (self.recent_head + 1) % BURST_RING;
        }
        let n = (n as usize).clamp(1, BURST_RING);
        let nth = self.recent[(self.recent_head + BURST_RING - n) % BURST_RING];
        nth != i64::MIN && now.saturating_sub(nth) < i64::from(secs)
    }

    /// Honours a suspension block stored by any instance: suspend until
    /// `until` (Unix time). A block never shortens; one already over
    /// changes nothing.
    pub(crate) fn apply_block(&mut self, until: i64, now: i64) {
        if until <= now {
            return;
        }
        let suspended = self.blocked_until > now && self.blocked_verdict == Verdict::Suspend;
        self.blocked_until = if suspended {
            self.blocked_until.max(until)
        } else {
            until
        };
        self.blocked_verdict = Verdict::Suspend;
    }

    /// Drops persons not shown for a day.
    pub(crate) fn prune(&mut self, now: i64) {
        self.persons.retain(|_, t| now - *t < DAY);
    }

    /// Whether the state holds nothing that matters any more.
    pub(crate) fn is_idle(&mut self, now: i64) -> bool {
        now.saturating_sub(self.last_seen) > DAY + HOUR
            && self.blocked_until < now
            && self
                .rates
                .iter()
                .all(|r| r.remote_hour == 0 && r.remote_day == 0)
            && self.pending_counts.is_empty()
            && self.pending_activity.is_empty()
            && self.pending_known.is_empty()
            && self.rates.iter_mut().all(|r| r.locally_idle(now))
    }

    /// Decides on one attempt and commits what it adds.
    pub(crate) fn decide(
        &mut self,
        c: &GuardConfig,
        a: &Attempt,
        observed: Option<Observed>,
        local: LocalTime,
        peer: Baseline,
    ) -> AccountVerdict {
        let now = a.at.timestamp();
        let s = &c.scoring;
        let w = &s.weights;
        self.last_seen = self.last_seen.max(now);
        let checked = observed.is_none();
        let counts_attempt = observed != Some(Observed::NotFound);
        let off_kind = local.off_hours(s.work_start_hour, s.work_end_hour);
        let off = off_kind.is_some();
        let is_query = matches!(a.kind, AttemptKind::Search(_)) && a.person_id.is_none();

        // What the attempt would add if let through.
        let mut ev = Events::default();
        if checked {
            if let Some(p) = a.person_id.filter(|_| a.fields.reveals()) {
                let last = self.persons.get(&p).copied();
                ev.person_new_hour = last.is_none_or(|t| now - t >= HOUR);
                ev.person_new_day = last.is_none_or(|t| now - t >= DAY);
                ev.nir = a.fields.nir_in_clear();
            }
            ev.search = is_query;
            ev.break_glass = a.kind == AttemptKind::BreakGlass;
            ev.mandate_grant = a.kind == AttemptKind::MandateGrant;
        }
        let sequential_miss = observed.is_some()
            && matches!((a.person_id, self.last_person), (Some(p), Some(l)) if (1..=2).contains(&p.get().abs_diff(l.get())));
        let search_miss =
            observed == Some(Observed::NotFound) && matches!(a.kind, AttemptKind::Search(_));
        // A search that matched nobody is `search_misses`' business only: an
        // advisor looking up a walk-in who is not on file yet is no denial.
        // A search that matched someone outside the caller's scope is.
        let counts_miss = observed.is_some() && !search_miss;

        let mut lines = Lines::new();

        // Hard quotas: only what this attempt would add can exceed one.
        let age_days = a
            .account
            .created_at
            .map(|t| (a.at - t).num_seconds() as f64 / DAY as f64);
        let young = age_days.is_some_and(|d| d < f64::from(c.risky.young_account_days));
        let factor = quota_factor(c, a);
        let q = &c.account;
        let scale = |l: Limit| if factor < 1.0 { l.scaled(factor) } else { l };
        let quota = |lines: &mut Lines,
                     on: bool,
                     rate: &mut Rate,
                     limit: Limit,
                     fh: Feature,
                     fd: Feature| {
            if !on {
                return;
            }
            let limit = scale(limit);
            let h = rate.hour(now).saturating_add(1);
            let d = rate.day(now).saturating_add(1);
            if h > limit.per_hour {
                lines.push(fh, f64::from(h), f64::from(limit.per_hour), s.throttle);
            }
            if d > limit.per_day {
                lines.push(fd, f64::from(d), f64::from(limit.per_day), s.throttle);
            }
        };
        {
            let [_, ph, pd, nir, searches, _, _, _, bg, _, _, _, _, grants] = &mut self.rates;
            // Persons: the hour stream counts persons new in the hour, the
            // day stream persons new in the day.
            if ev.person_new_hour {
                let l = scale(q.persons);
                let h = ph.hour(now).saturating_add(1);
                if h > l.per_hour {
                    lines.push(
                        Feature::PersonsPerHour,
                        f64::from(h),
                        f64::from(l.per_hour),
                        s.throttle,
                    );
                }
            }
            if ev.person_new_day {
                let l = scale(q.persons);
                let d = pd.day(now).saturating_add(1);
                if d > l.per_day {
                    lines.push(
                        Feature::PersonsPerDay,
                        f64::from(d),
                        f64::from(l.per_day),
                        s.throttle,
                    );
                }
            }
            quota(
                &mut lines,
                ev.nir,
                nir,
                q.nir_reveals,
                Feature::NirPerHour,
                Feature::NirPerDay,
            );
            quota(
                &mut lines,
                ev.search,
                searches,
                q.searches,
                Feature::SearchesPerHour,
                Feature::SearchesPerDay,
            );
            quota(
                &mut lines,
                ev.break_glass,
                bg,
                q.break_glass,
                Feature::BreakGlassPerHour,
                Feature::BreakGlassPerDay,
            );
            quota(
                &mut lines,
                ev.mandate_grant,
                grants,
                q.mandate_grants,
                Feature::MandateGrantsPerHour,
                Feature::MandateGrantsPerDay,
            );
        }
        let quota_hit = lines.len > 0;

        // Behaviour features.
        let own_known = self.own.hours >= f64::from(s.min_own_hours);
        let peer_known = peer.hours >= f64::from(s.min_peer_hours);
        // Volume counts the persons no new mandate explains: the day a
        // training session starts, its trainees are no anomaly.
        let explained = ev.person_new_hour && a.new_mandate;
        ev.explained = explained;
        let persons_h = self.rates[Metric::PersonsHour as usize]
            .hour(now)
            .saturating_add(u32::from(ev.person_new_hour))
            .saturating_sub(
                self.rates[Metric::NewMandatePersons as usize]
                    .hour(now)
                    .saturating_add(u32::from(explained)),
            );
        if persons_h >= s.min_volume {
            let v = f64::from(persons_h);
            let volume = |e: f64| {
                (v / (s.volume_allowance * e.max(1.0)))
                    .log2()
                    .clamp(0.0, 3.0)
            };
            if own_known {
                let e = self.own.persons_per_hour;
                lines.push(Feature::VolumeVsOwn, v, e, w.volume_vs_own * volume(e));
            }
            let e = if peer_known {
                peer.persons_per_hour
            } else {
                s.prior_persons_per_hour
            };
            lines.push(Feature::VolumeVsPeers, v, e, w.volume_vs_peers * volume(e));
        }
        if let Some(kind) = off_kind.filter(|_| counts_attempt) {
            let v = f64::from(
                self.rates[Metric::OffHours as usize]
                    .hour(now)
                    .saturating_add(1),
            );
            // The habit of this kind of off-hours time: working Saturday
            // mornings says nothing about 21:30 on a Tuesday.
            let b = if own_known {
                self.own.off_hours_share(kind)
            } else if peer_known {
                peer.off_hours_share(kind)
            } else {
                0.0
            };
            // Full weight from the third off-hours attempt in an hour: an
            // account that never works evenings and reads one person every
            // 20 s from a new network is stopped within a minute.
            let c = w.off_hours * (v / 3.0).min(1.0) * (1.0 - (b / 0.15).min(1.0));
            lines.push(Feature::OffHours, v, b, c);
        }
        let attempts_h = self.rates[Metric::Attempts as usize]
            .hour(now)
            .saturating_add(u32::from(counts_attempt));
        let misses_h = self.rates[Metric::Misses as usize]
            .hour(now)
            .saturating_add(u32::from(counts_miss));
        if attempts_h >= s.min_attempts && misses_h > 0 {
            let v = f64::from(misses_h) / f64::from(attempts_h);
            let b = if own_known {
                self.own.miss_share
            } else if peer_known {
                peer.miss_share
            } else {
                0.05
            };
            let c = w.denied_share * ((v - (2.0 * b).max(0.2)) / 0.3).clamp(0.0, 1.0);
            lines.push(Feature::DeniedShare, v, b, c);
        }
        let seq_h = self.rates[Metric::SequentialMisses as usize]
            .hour(now)
            .saturating_add(u32::from(sequential_miss));
        if seq_h > 0 {
            let v = f64::from(seq_h);
            lines.push(
                Feature::SequentialIds,
                v,
                0.0,
                w.sequential_ids * ((v - 2.0) / 8.0).clamp(0.0, 1.0),
            );
        }
        let sm_h = self.rates[Metric::SearchMisses as usize]
            .hour(now)
            .saturating_add(u32::from(search_miss));
        if sm_h > 0 {
            let v = f64::from(sm_h);
            let b = if own_known {
                self.own.search_misses_per_hour
            } else if peer_known {
                peer.search_misses_per_hour
            } else {
                1.0
            };
            // Up to twice the weight: searches that match nobody are no denial
            // (see `counts_miss`), so a flood of them must reach step-up alone.
            let c = w.search_misses * ((v - (3.0 * b).max(3.0)) / 7.0).clamp(0.0, 2.0);
            lines.push(Feature::SearchMisses, v, b, c);
        }
        let device = self.novelty(KnownKind::Device, a.session.device, a, now);
        if let Some((true, established)) = device.filter(|d| d.1 > 0) {
            lines.push(
                Feature::NewDevice,
                1.0,
                f64::from(established),
                w.new_device,
            );
        }
        let network = self.novelty(KnownKind::Network, a.session.network, a, now);
        if let Some((true, established)) = network.filter(|d| d.1 > 0) {
            lines.push(
                Feature::NewNetwork,
                1.0,
                f64::from(established),
                w.new_network,
            );
        }
        if let Some(days) = age_days.filter(|_| young) {
            let young_days = f64::from(c.risky.young_account_days);
            let days = days.max(0.0);
            lines.push(
                Feature::AccountAge,
                days,
                young_days,
                w.account_age * (1.0 - days / young_days),
            );
        }
        if a.session.high_risk {
            lines.push(Feature::PostReset, 1.0, 0.0, w.post_reset);
        }
        if ev.break_glass {
            let v = f64::from(
                self.rates[Metric::BreakGlass as usize]
                    .day(now)
                    .saturating_add(1),
            );
            let per_hour = if own_known {
                self.own.break_glass_per_hour
            } else if peer_known {
                peer.break_glass_per_hour
            } else {
                0.025
            };
            let b = per_hour * 8.0;
            let c = w.break_glass_rate * ((v - (3.0 * b).max(1.0)) / 2.0).clamp(0.0, 1.0);
            lines.push(Feature::BreakGlassRate, v, b, c);
        }
        let score = lines.score();

        // The verdict: the strongest of score, quotas and an ongoing block.
        let mut verdict = verdict_of(score, c);
        let mut kind = AlertKind::Behaviour;
        if quota_hit && verdict < Verdict::Throttle {
            verdict = Verdict::Throttle;
            kind = AlertKind::AccountQuota;
        }
        if self.blocked_until > now && verdict < self.blocked_verdict {
            verdict = self.blocked_verdict;
            kind = AlertKind::Behaviour;
            // The alert says why even when this attempt alone is ordinary.
            let has_reason = lines
                .as_slice()
                .iter()
                .any(|l| l.contribution > 0.0 || is_quota(l.feature));
            if !has_reason {
                lines.push(
                    Feature::Blocked,
                    (self.blocked_until - now) as f64 / 60.0,
                    f64::from(c.containment.throttle_minutes),
                    0.0,
                );
            }
        }
        let stepped_up = a.session.stepped_up_at.is_some_and(|t| {
            let age = now - t.timestamp();
            (0..=i64::from(c.containment.step_up_valid_minutes) * 60).contains(&age)
        });
        // A stepped-up session goes on. An attempt already refused keeps
        // its step-up verdict: it changes nothing for the answer, but the
        // alert tells the security officer that someone is probing (a
        // manager's account reading random persons outside its scope never
        // reaches `check`).
        if verdict == Verdict::StepUp && stepped_up {
            verdict = Verdict::Allow;
        }
        if checked && !verdict.lets_through() && verdict < Verdict::Suspend {
            let refusals = self.rates[Metric::Refusals as usize]
                .hour(now)
                .saturating_add(1);
            if refusals >= c.containment.suspend_after_refusals {
                lines.push(
                    Feature::Refusals,
                    f64::from(refusals),
                    f64::from(c.containment.suspend_after_refusals),
                    s.suspend,
                );
                verdict = Verdict::Suspend;
                kind = AlertKind::Persistence;
            }
        }
        let was_suspended = self.blocked_until > now && self.blocked_verdict == Verdict::Suspend;
        let mut block = None;
        if verdict == Verdict::Suspend {
            // A running suspension may end later than a day from now: one
            // another instance stored from a clock slightly ahead.
            self.blocked_until = if was_suspended {
                self.blocked_until.max(now + DAY)
            } else {
                now + DAY
            };
            self.blocked_verdict = Verdict::Suspend;
            block = Some(self.blocked_until);
        } else if score >= s.throttle && !was_suspended {
            // A behaviour throttle lasts; a quota throttle lifts as soon as
            // the window has room again.
            let until = now + i64::from(c.containment.throttle_minutes) * 60;
            self.blocked_until = self.blocked_until.max(until);
            self.blocked_verdict = Verdict::Throttle;
        }

        // Commit.
        if counts_attempt {
            self.count(Metric::Attempts, now);
            if off {
                self.count(Metric::OffHours, now);
            }
        }
        if counts_miss {
            self.count(Metric::Misses, now);
        }
        if observed.is_some() {
            if search_miss {
                self.count(Metric::SearchMisses, now);
            }
            if sequential_miss {
                self.count(Metric::SequentialMisses, now);
            }
        }
        let allowed = checked && verdict.lets_through();
        if allowed {
            count_new_person(
                &mut self.rates,
                &mut self.pending_counts,
                Scope::Account,
                ev,
                now,
            );
            if explained {
                self.count(Metric::NewMandatePersons, now);
            }
            if let Some(p) = a.person_id.filter(|_| a.fields.reveals()) {
                self.persons.insert(p, now);
            }
            if ev.nir {
                self.count(Metric::Nir, now);
            }
            if ev.search {
                self.count(Metric::Searches, now);
            }
            if ev.mandate_grant {
                self.count(Metric::MandateGrants, now);
            }
            if ev.break_glass {
                self.count(Metric::BreakGlass, now);
            }
        } else if checked {
            self.count(Metric::Refusals, now);
        }
        if a.person_id.is_some() {
            self.last_person = a.person_id;
        }
        let first_of_hour = self.hour_counted != Some((local.day, local.hour));
        self.hour_counted = Some((local.day, local.hour));
        self.activity(local, |r| {
            if first_of_hour {
                r.account_hours = 1;
            }
            r.attempts += u32::from(counts_attempt);
            r.misses += u32::from(counts_miss);
            r.search_misses += u32::from(search_miss);
            if allowed {
                r.persons += u32::from(ev.person_new_hour);
                r.nir += u32::from(ev.nir);
                r.searches += u32::from(ev.search);
                r.break_glass += u32::from(ev.break_glass);
            }
        });

        let o = &c.organisation_scoring;
        let bursting = self.burst(
            allowed && ev.person_new_hour && !explained,
            now,
            o.burst_persons,
            o.burst_secs,
        );
        let fresh = self.fresh(verdict, now, c);
        // New beside an established one: on an account's first day, or a
        // deployment's, every network is new and says nothing.
        let new = |d: Option<(bool, u32)>, digest: Option<Digest16>| {
            digest.filter(|_| d.is_some_and(|(new, established)| new && established > 0))
        };
        AccountVerdict {
            verdict,
            kind,
            score,
            lines,
            events: if allowed { ev } else { Events::default() },
            newly_suspended: verdict == Verdict::Suspend && !was_suspended,
            block,
            fresh,
            counts_attempt,
            off_hours: off_kind,
            bursting,
            new_network: new(network, a.session.network),
            new_device: new(device, a.session.device),
        }
    }

    /// Whether an alert of `verdict` opens a new incident; remembers it.
    pub(crate) fn fresh(&mut self, verdict: Verdict, now: i64, c: &GuardConfig) -> bool {
        fresh(&mut self.last_alert, verdict, now, c)
    }
}

pub(crate) fn fresh(last: &mut [i64; 5], verdict: Verdict, now: i64, c: &GuardConfig) -> bool {
    let i = Verdict::ALL.iter().position(|v| *v == verdict).unwrap_or(0);
    if verdict == Verdict::Allow {
        return false;
    }
    let cooldown = i64::from(c.containment.alert_cooldown_minutes) * 60;
    let is_fresh = last[i] == i64::MIN || now - last[i] >= cooldown;
    if is_fresh {
        last[i] = now;
    }
    is_fresh
}
