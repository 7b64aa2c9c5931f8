//! Baselines: what is usual for an account, and for its peer group, made
//! of the hourly activity rows of the last `baseline_days` days. Rates are
//! per *active hour* (an hour with at least one attempt) so that part-time
//! and full-time accounts compare fairly.

use crate::region::{LocalTime, OffHours};
use crate::store::{ActivityCounts, ActivityRow};

/// Usual rates of one account or one peer group (per account).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Baseline {
    /// Active hours (account-hours for a peer group) behind the rates.
    pub hours: f64,
    /// Distinct persons per active hour.
    pub persons_per_hour: f64,
    /// Denied and not-found attempts per attempt.
    pub miss_share: f64,
    /// Attempts in the night or evening per attempt.
    pub night_share: f64,
    /// Attempts in weekend daytime per attempt.
    pub weekend_share: f64,
    /// Searches finding nothing per active hour.
    pub search_misses_per_hour: f64,
    /// Break-glass accesses per active hour.
    pub break_glass_per_hour: f64,
}

impl Baseline {
    /// The share of attempts made in this kind of time outside work.
    pub(crate) fn off_hours_share(&self, kind: OffHours) -> f64 {
        match kind {
            OffHours::Night => self.night_share,
            OffHours::WeekendDay => self.weekend_share,
        }
    }

    /// From activity rows; `peer` rows spread over their `account_hours`.
    pub(crate) fn of(rows: &[ActivityRow], peer: bool, work_start: u8, work_end: u8) -> Baseline {
        let mut total = ActivityCounts::default();
        let mut hours = 0u64;
        let mut night = 0u64;
        let mut weekend = 0u64;
        for r in rows {
            total.add(&r.counts);
            if peer {
                hours += u64::from(r.counts.account_hours);
            } else if r.counts.attempts > 0 {
                hours += 1;
            }
            let t = LocalTime {
                day: r.day,
                hour: r.hour,
                weekday: LocalTime::weekday_of(r.day),
            };
            match t.off_hours(work_start, work_end) {
                Some(OffHours::Night) => night += u64::from(r.counts.attempts),
                Some(OffHours::WeekendDay) => weekend += u64::from(r.counts.attempts),
                None => {}
            }
        }
        let per_hour = |n: u32| {
            if hours == 0 {
                0.0
            } else {
                f64::from(n) / hours as f64
            }
        };
        let per_attempt = |n: u64| {
            if total.attempts == 0 {
                0.0
            } else {
                n as f64 / f64::from(total.attempts)
            }
        };
        Baseline {
            hours: hours as f64,
            persons_per_hour: per_hour(total.persons),
            miss_share: per_attempt(u64::from(total.misses)),
            night_share: per_attempt(night),
            weekend_share: per_attempt(weekend),
            search_misses_per_hour: per_hour(total.search_misses),
            break_glass_per_hour: per_hour(total.break_glass),
        }
    }
}

/// What is usual for an organisation, from its hourly activity rows (its
/// accounts' rows summed: `account_hours` is how many were active).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct OrgBaseline {
    /// Hours with activity behind the figures.
    pub hours: f64,
    /// Most distinct persons in one hour.
    pub peak_persons: u32,
    /// Most accounts active in one hour: the organisation's working size.
    pub peak_accounts: u32,
    /// Most accounts active in one night or evening hour.
    pub peak_night_accounts: u32,
    /// Most accounts active in one weekend daytime hour.
    pub peak_weekend_accounts: u32,
}

impl OrgBaseline {
    /// From the organisation's activity rows.
    pub(crate) fn of(rows: &[ActivityRow], work_start: u8, work_end: u8) -> OrgBaseline {
        let mut b = OrgBaseline::default();
        for r in rows.iter().filter(|r| r.counts.attempts > 0) {
            b.hours += 1.0;
            b.peak_persons = b.peak_persons.max(r.counts.persons);
            b.peak_accounts = b.peak_accounts.max(r.counts.account_hours);
            let t = LocalTime {
                day: r.day,
                hour: r.hour,
                weekday: LocalTime::weekday_of(r.day),
            };
            match t.off_hours(work_start, work_end) {
                Some(OffHours::Night) => {
                    b.peak_night_accounts = b.peak_night_accounts.max(r.counts.account_hours)
                }
                Some(OffHours::WeekendDay) => {
                    b.peak_weekend_accounts = b.peak_weekend_accounts.max(r.counts.account_hours)
                }
                None => {}
            }
        }
        b
    }

    /// The most accounts it had at work in this kind of off-hours time.
    pub(crate) fn peak_off_hours_accounts(&self, kind: OffHours) -> u32 {
        match kind {
            OffHours::Night => self.peak_night_accounts,
            OffHours::WeekendDay => self.peak_weekend_accounts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Scope;

    fn row(
        day: i32,
        hour: u8,
        attempts: u32,
        persons: u32,
        misses: u32,
        account_hours: u32,
    ) -> ActivityRow {
        ActivityRow {
            scope: Scope::Account,
            subject: 1,
            day,
            hour,
            counts: ActivityCounts {
                attempts,
                persons,
                misses,
                account_hours,
                ..ActivityCounts::default()
            },
        }
    }

    #[test]
    fn rates_are_per_active_hour_and_shares_per_attempt() {
        // Day 20_472 is Monday 2026-01-19.
        assert_eq!(LocalTime::weekday_of(20_472), 0);
        let monday = 20_472;
        let rows = [
            row(monday, 9, 10, 8, 1, 1),
            row(monday, 10, 10, 4, 1, 1),
            row(monday, 21, 5, 3, 0, 1),     // evening
            row(monday + 5, 10, 5, 1, 0, 1), // Saturday
            row(monday, 11, 0, 0, 0, 0),     // idle hour: not active
        ];
        let b = Baseline::of(&rows, false, 7, 20);
        assert_eq!(b.hours, 4.0);
        assert_eq!(b.persons_per_hour, 16.0 / 4.0);
        assert_eq!(b.miss_share, 2.0 / 30.0);
        assert_eq!(b.night_share, 5.0 / 30.0);
        assert_eq!(b.weekend_share, 5.0 / 30.0);
        let empty = Baseline::of(&[], false, 7, 20);
        assert_eq!(empty.hours, 0.0);
        assert_eq!(empty.persons_per_hour, 0.0);
    }

    #[test]
    fn an_organisations_usual_is_its_busiest_hours() {
        let monday = 20_472;
        let rows = [
            row(monday, 9, 40, 30, 0, 12),
            row(monday, 10, 60, 45, 0, 15),
            row(monday, 21, 3, 2, 0, 1),     // evening
            row(monday + 5, 10, 8, 6, 0, 2), // Saturday
            row(monday, 11, 0, 0, 0, 0),     // idle
        ];
        let b = OrgBaseline::of(&rows, 7, 20);
        assert_eq!(b.hours, 4.0);
        assert_eq!((b.peak_persons, b.peak_accounts), (45, 15));
        assert_eq!(b.peak_off_hours_accounts(OffHours::Night), 1);
        assert_eq!(b.peak_off_hours_accounts(OffHours::WeekendDay), 2);
        assert_eq!(OrgBaseline::of(&[], 7, 20), OrgBaseline::default());
    }

    #[test]
    fn peer_rates_spread_over_account_hours() {
        let rows = [row(20_472, 9, 100, 60, 5, 6)];
        let b = Baseline::of(&rows, true, 7, 20);
        assert_eq!(b.hours, 6.0);
        assert_eq!(b.persons_per_hour, 10.0);
    }
}
