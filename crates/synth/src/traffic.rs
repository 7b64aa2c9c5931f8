//! A month of normal work: what thousands of accounts of every organisation
//! kind read, and when, to measure the exfiltration guard's false alerts.
//!
//! Pure logic, deterministic from a seed: no I/O, no clock (the caller
//! gives the first day). The rhythms are those of an office: arrival
//! between 8:00 and 9:30 local time, a lunch break of 45–75 minutes from
//! about noon, departure between 16:30 and 18:00, a late evening (until
//! 19:00–19:45) on about one day in sixteen; weekends are almost always
//! off (2% of accounts work a short Saturday or Sunday morning), and so
//! are French public holidays; leave and sick days (8% of working days),
//! part-time Wednesdays. Caseloads churn: every working day about 2% of an
//! account's persons leave and as many arrive, and arrivals are read on
//! their first day. Legitimate spikes: a training provider starts a new
//! session once a month, for all its trainers on the same day (50–70 new
//! trainees read by each), and advisors cover for an absent colleague (3%
//! of their working days: the colleague's caseload read beside their own).
//! Organisation-wide days, which the guard's organisation stage must take
//! in its stride: once a month an agency (France Travail, Cap emploi,
//! Mission Locale) holds a campaign day when every advisor calls their
//! caseload (twice the usual reads, at most 40 more: calls take minutes;
//! `Reason::Campaign`); and the first
//! working day after a public holiday everybody arrives between 8:00 and
//! 8:30 with a backlog (one and a half times the usual reads).
//!
//! Local times are metropolitan French time (the EU summer-time rule);
//! organisations are placed in metropolitan départements only.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc, Weekday};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rempart_domain::{AccountId, OrganisationId, OrganisationKind, PersonId, Purpose};

use crate::data::DEPTS;

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficOptions {
    /// Accounts working (agents of every organisation kind).
    pub accounts: u32,
    /// The first simulated day.
    pub start: NaiveDate,
    /// Days simulated.
    pub days: u32,
    /// Same seed, same month.
    pub seed: u64,
}

/// Why a month cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
    /// No account to simulate.
    #[error("at least one account is needed")]
    NoAccounts,
    /// Too many accounts for the person id space used.
    #[error("at most {max} accounts can be simulated")]
    TooManyAccounts {
        /// The largest number accepted.
        max: u32,
    },
    /// No day, or more than a year.
    #[error("between 1 and 366 days can be simulated")]
    Days,
}

/// The most accounts a simulation takes (each owns a range of person ids).
pub const MAX_ACCOUNTS: u32 = 100_000;

/// Person ids each account's caseload is drawn from.
const IDS_PER_ACCOUNT: i64 = 20_000;

/// One simulated account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficAccount {
    /// Its id (1-based, dense).
    pub account_id: AccountId,
    /// Its organisation's id (1-based, dense).
    pub organisation_id: OrganisationId,
    /// Its organisation's kind.
    pub kind: OrganisationKind,
    /// Its organisation's département.
    pub departement: &'static str,
    /// The purpose it reads for.
    pub purpose: Purpose,
}

/// Why a person is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Day-to-day work on the caseload.
    Routine,
    /// A person who joined the caseload today.
    Arrival,
    /// A trainee of a session starting today.
    NewSession,
    /// A person of an absent colleague's caseload.
    Covering,
    /// A person called on the organisation's campaign day.
    Campaign,
}

/// One read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    /// When.
    pub at: DateTime<Utc>,
    /// Index of the account in [`NormalMonth::accounts`].
    pub account: usize,
    /// The person read.
    pub person_id: PersonId,
    /// Why.
    pub reason: Reason,
}

/// A simulated month of normal traffic, produced one day at a time.
#[derive(Debug, Clone)]
pub struct NormalMonth {
    options: TrafficOptions,
    accounts: Vec<TrafficAccount>,
    state: Vec<AccountWork>,
    rng: ChaCha8Rng,
}

#[derive(Debug, Clone)]
struct AccountWork {
    caseload: Vec<i64>,
    next_id: i64,
    /// Persons read per ordinary working day (mean).
    daily: u32,
    wednesday_off: bool,
    /// Day index of the month's session start (training providers, the
    /// same for every trainer of the organisation).
    session_day: Option<u32>,
    /// Day index of the organisation's campaign day (advisors).
    campaign_day: Option<u32>,
}

impl NormalMonth {
    /// Lays out the accounts, organisations and caseloads.
    pub fn new(options: TrafficOptions) -> Result<NormalMonth, TrafficError> {
        if options.accounts == 0 {
            return Err(TrafficError::NoAccounts);
        }
        if options.accounts > MAX_ACCOUNTS {
            return Err(TrafficError::TooManyAccounts { max: MAX_ACCOUNTS });
        }
        if options.days == 0 || options.days > 366 {
            return Err(TrafficError::Days);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let metro: Vec<&'static str> = DEPTS
            .iter()
            .map(|d| d.code)
            .filter(|c| c.len() == 2)
            .collect();
        let mut accounts = Vec::with_capacity(options.accounts as usize);
        let mut state = Vec::with_capacity(options.accounts as usize);
        let mut organisation_id = 0i64;
        let mut left_in_org = 0u32;
        let mut org = (OrganisationKind::FranceTravail, "75");
        let mut org_days: (Option<u32>, Option<u32>) = (None, None);
        for i in 0..options.accounts {
            if left_in_org == 0 {
                organisation_id += 1;
                let kind = pick_kind(&mut rng);
                let dept = metro[rng.random_range(0..metro.len())];
                org = (kind, dept);
                // From a stream of its own: the accounts' layout stays
                // what the seed gave before organisations had days.
                let day = ChaCha8Rng::seed_from_u64(
                    options.seed ^ (organisation_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
                .random_range(0..options.days);
                org_days = match kind {
                    OrganisationKind::TrainingProvider => (Some(day), None),
                    OrganisationKind::FranceTravail
                    | OrganisationKind::CapEmploi
                    | OrganisationKind::MissionLocale => (None, Some(day)),
                    OrganisationKind::Processor => (None, None),
                };
                left_in_org = match kind {
                    OrganisationKind::FranceTravail => rng.random_range(20..60),
                    OrganisationKind::CapEmploi | OrganisationKind::MissionLocale => {
                        rng.random_range(5..25)
                    }
                    OrganisationKind::TrainingProvider => rng.random_range(2..10),
                    OrganisationKind::Processor => rng.random_range(5..20),
                };
            }
            left_in_org -= 1;
            let (kind, departement) = org;
            let (purpose, caseload_size, daily) = match kind {
                OrganisationKind::FranceTravail => (
                    if rng.random_bool(0.15) {
                        Purpose::Compensation
                    } else {
                        Purpose::FollowUp
                    },
                    rng.random_range(150..350),
                    rng.random_range(20..45),
                ),
                OrganisationKind::CapEmploi | OrganisationKind::MissionLocale => (
                    Purpose::FollowUp,
                    rng.random_range(100..250),
                    rng.random_range(15..35),
                ),
                OrganisationKind::TrainingProvider => (
                    Purpose::Training,
                    rng.random_range(30..120),
                    rng.random_range(8..25),
                ),
                OrganisationKind::Processor => (
                    Purpose::DocumentProcessing,
                    rng.random_range(400..900),
                    rng.random_range(40..90),
                ),
            };
            let base = i64::from(i) * IDS_PER_ACCOUNT + 1;
            let caseload: Vec<i64> = (base..base + caseload_size).collect();
            let (session_day, campaign_day) = org_days;
            accounts.push(TrafficAccount {
                account_id: AccountId::new(i64::from(i) + 1),
                organisation_id: OrganisationId::new(organisation_id),
                kind,
                departement,
                purpose,
            });
            state.push(AccountWork {
                next_id: base + caseload_size,
                caseload,
                daily,
                wednesday_off: rng.random_bool(0.1),
                session_day,
                campaign_day,
            });
        }
        Ok(NormalMonth {
            options,
            accounts,
            state,
            rng,
        })
    }

    /// The simulated accounts.
    pub fn accounts(&self) -> &[TrafficAccount] {
        &self.accounts
    }

    /// The options it was made with.
    pub fn options(&self) -> TrafficOptions {
        self.options
    }

    /// The reads of day `index` (0-based) in time order, caseloads churned
    /// first. Days must be asked for in order for the churn to follow.
    pub fn day(&mut self, index: u32) -> Vec<Visit> {
        let date = self.options.start + TimeDelta::days(i64::from(index));
        let off_day = is_weekend(date) || is_public_holiday(date);
        let after_holiday = !off_day && {
            // Back from a holiday (a weekend may come in between).
            let mut d = date - TimeDelta::days(1);
            while is_weekend(d) && !is_public_holiday(d) {
                d -= TimeDelta::days(1);
            }
            is_public_holiday(d)
        };
        let mut visits = Vec::new();
        // Who is absent today: their caseload may be covered by a colleague.
        let n = self.accounts.len();
        let mut absent = vec![false; n];
        for (i, a) in absent.iter_mut().enumerate() {
            let st = &self.state[i];
            *a = off_day
                || (date.weekday() == Weekday::Wed && st.wednesday_off)
                || self.rng.random_bool(0.08);
        }
        for i in 0..n {
            let arrivals = self.churn(i, off_day);
            if absent[i] {
                // A rare short weekend or holiday morning.
                if off_day && self.rng.random_bool(0.02) {
                    let reads = self.rng.random_range(2..8);
                    for _ in 0..reads {
                        let t = minutes(self.rng.random_range(9 * 60..12 * 60));
                        let p = self.pick(i);
                        visits.push(self.visit(i, date, t, p, Reason::Routine));
                    }
                }
                continue;
            }
            let mut day = self.working_day();
            if after_holiday {
                day.start = self.rng.random_range(8 * 60..8 * 60 + 30);
            }
            let st = &self.state[i];
            let mean = if after_holiday {
                st.daily + st.daily / 2
            } else {
                st.daily
            };
            let campaign = st.campaign_day == Some(index);
            let mut reads: Vec<(i64, Reason)> = Vec::new();
            let routine = self.rng.random_range(mean / 2..=mean + mean / 2);
            if campaign {
                // Calls take minutes: at most 40 more in a day.
                for _ in 0..routine.min(40) {
                    let p = self.pick(i);
                    reads.push((p, Reason::Campaign));
                }
            }
            for _ in 0..routine {
                let p = self.pick(i);
                reads.push((p, Reason::Routine));
            }
            reads.extend(arrivals.into_iter().map(|p| (p, Reason::Arrival)));
            if self.state[i].session_day == Some(index) {
                let trainees = self.rng.random_range(50..70);
                for _ in 0..trainees {
                    let p = self.arrive(i);
                    reads.push((p, Reason::NewSession));
                }
            }
            let org = self.accounts[i].organisation_id;
            let advisor = matches!(
                self.accounts[i].kind,
                OrganisationKind::FranceTravail
                    | OrganisationKind::CapEmploi
                    | OrganisationKind::MissionLocale
            );
            if advisor && self.rng.random_bool(0.03) {
                // Cover for an absent colleague of the same organisation.
                let colleague = (0..n)
                    .find(|&j| j != i && absent[j] && self.accounts[j].organisation_id == org);
                if let Some(j) = colleague {
                    let count = self.rng.random_range(mean / 2..=mean);
                    for _ in 0..count {
                        let p = self.pick(j);
                        reads.push((p, Reason::Covering));
                    }
                }
            }
            for (p, why) in reads {
                let t = day.sample(&mut self.rng);
                visits.push(self.visit(i, date, t, p, why));
            }
        }
        visits.sort_by_key(|v| (v.at, v.account));
        visits
    }

    fn visit(&self, i: usize, date: NaiveDate, t: NaiveTime, p: i64, why: Reason) -> Visit {
        Visit {
            at: paris_to_utc(date.and_time(t)),
            account: i,
            person_id: PersonId::new(p),
            reason: why,
        }
    }

    /// About 2% of the caseload leaves and as many arrive (working days).
    fn churn(&mut self, i: usize, off_day: bool) -> Vec<i64> {
        if off_day {
            return Vec::new();
        }
        let size = self.state[i].caseload.len();
        let moves = (size / 50).max(1);
        let moves = self.rng.random_range(0..=moves);
        let mut arrivals = Vec::with_capacity(moves);
        for _ in 0..moves {
            let k = self.rng.random_range(0..self.state[i].caseload.len());
            self.state[i].caseload.swap_remove(k);
            arrivals.push(self.arrive(i));
        }
        arrivals
    }

    fn arrive(&mut self, i: usize) -> i64 {
        let st = &mut self.state[i];
        let p = st.next_id;
        st.next_id += 1;
        st.caseload.push(p);
        p
    }

    fn pick(&mut self, i: usize) -> i64 {
        let c = &self.state[i].caseload;
        c[self.rng.random_range(0..c.len())]
    }

    fn working_day(&mut self) -> WorkingDay {
        let start = self.rng.random_range(8 * 60..9 * 60 + 30);
        let lunch = self.rng.random_range(11 * 60 + 45..12 * 60 + 45);
        let lunch_end = lunch + self.rng.random_range(45..75);
        let end = if self.rng.random_bool(1.0 / 16.0) {
            self.rng.random_range(19 * 60..19 * 60 + 45)
        } else {
            self.rng.random_range(16 * 60 + 30..18 * 60)
        };
        WorkingDay {
            start,
            lunch,
            lunch_end,
            end,
        }
    }
}

/// One account's working hours, in minutes after local midnight.
struct WorkingDay {
    start: u32,
    lunch: u32,
    lunch_end: u32,
    end: u32,
}

impl WorkingDay {
    /// A moment of work: mornings a little busier than afternoons, the
    /// last hour of a late evening quieter still.
    fn sample(&self, rng: &mut ChaCha8Rng) -> NaiveTime {
        let morning = f64::from(self.lunch - self.start) * 1.2;
        let regular_end = self.end.min(18 * 60);
        let afternoon = f64::from(regular_end.saturating_sub(self.lunch_end));
        let evening = f64::from(self.end.saturating_sub(regular_end)) * 0.5;
        let x = rng.random::<f64>() * (morning + afternoon + evening);
        let m = if x < morning {
            rng.random_range(self.start..self.lunch)
        } else if x < morning + afternoon || evening == 0.0 {
            rng.random_range(self.lunch_end..regular_end.max(self.lunch_end + 1))
        } else {
            rng.random_range(regular_end..self.end)
        };
        minutes(m) + TimeDelta::seconds(rng.random_range(0..60))
    }
}

fn minutes(m: u32) -> NaiveTime {
    NaiveTime::MIN + TimeDelta::minutes(i64::from(m))
}

fn pick_kind(rng: &mut ChaCha8Rng) -> OrganisationKind {
    // Shares of organisations (France Travail agencies are larger, so their
    // share of accounts is larger still).
    match rng.random_range(0..100) {
        0..25 => OrganisationKind::FranceTravail,
        25..45 => OrganisationKind::CapEmploi,
        45..70 => OrganisationKind::MissionLocale,
        70..92 => OrganisationKind::TrainingProvider,
        _ => OrganisationKind::Processor,
    }
}

/// Saturday or Sunday.
pub fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The eleven French public holidays (metropolitan, without Alsace-Moselle's
/// two extra days): the fixed ones, Easter Monday, Ascension, Whit Monday.
pub fn is_public_holiday(date: NaiveDate) -> bool {
    let fixed = [
        (1, 1),
        (5, 1),
        (5, 8),
        (7, 14),
        (8, 15),
        (11, 1),
        (11, 11),
        (12, 25),
    ];
    if fixed.contains(&(date.month(), date.day())) {
        return true;
    }
    let Some(easter) = easter_sunday(date.year()) else {
        return false;
    };
    [1, 39, 50]
        .iter()
        .any(|d| easter + TimeDelta::days(*d) == date)
}

/// Easter Sunday in the Gregorian calendar (anonymous algorithm).
fn easter_sunday(year: i32) -> Option<NaiveDate> {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32)
}

/// Metropolitan French local time to UTC: UTC+2 from the last Sunday of
/// March to the last Sunday of October (changes at 01:00 UTC), else UTC+1.
pub fn paris_to_utc(local: NaiveDateTime) -> DateTime<Utc> {
    let winter = local - TimeDelta::hours(1);
    let year = local.year();
    let change = |month: u32| {
        last_sunday(year, month).map(|d| d.and_time(NaiveTime::MIN) + TimeDelta::hours(1))
    };
    let summer = match (change(3), change(10)) {
        (Some(from), Some(to)) => {
            let as_summer = local - TimeDelta::hours(2);
            as_summer >= from && as_summer < to
        }
        _ => false,
    };
    let utc = if summer {
        local - TimeDelta::hours(2)
    } else {
        winter
    };
    utc.and_utc()
}

fn last_sunday(year: i32, month: u32) -> Option<NaiveDate> {
    let last = NaiveDate::from_ymd_opt(year, month + 1, 1)? - TimeDelta::days(1);
    let back = last.weekday().num_days_from_sunday();
    Some(last - TimeDelta::days(i64::from(back)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    fn month(seed: u64) -> NormalMonth {
        NormalMonth::new(TrafficOptions {
            accounts: 300,
            start: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            days: 28,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn same_seed_same_month() {
        let (mut a, mut b) = (month(3), month(3));
        for d in 0..5 {
            assert_eq!(a.day(d), b.day(d));
        }
        assert_ne!(month(3).day(0), month(4).day(0));
    }

    #[test]
    fn offices_keep_office_hours() {
        let mut m = NormalMonth::new(TrafficOptions {
            accounts: 600,
            ..month(1).options()
        })
        .unwrap();
        let kinds: std::collections::HashSet<_> = m.accounts().iter().map(|a| a.kind).collect();
        assert_eq!(kinds.len(), 5, "every organisation kind works");
        let (mut weekday, mut weekend, mut holiday, mut late, mut total) = (0, 0, 0, 0, 0);
        let mut reasons = std::collections::HashSet::new();
        for d in 0..28 {
            let date = m.options().start + TimeDelta::days(i64::from(d));
            let visits = m.day(d);
            assert!(visits.windows(2).all(|w| w[0].at <= w[1].at));
            for v in &visits {
                let local = v.at + TimeDelta::hours(1);
                assert_eq!(local.date_naive(), date, "no work past midnight");
                assert!((8..20).contains(&local.hour()), "{local}");
                if local.hour() >= 19 {
                    late += 1;
                }
                reasons.insert(v.reason);
            }
            total += visits.len();
            if is_public_holiday(date) {
                holiday += visits.len();
            } else if is_weekend(date) {
                weekend += visits.len();
            } else {
                weekday += visits.len();
            }
        }
        assert!(
            weekday > 100 * (weekend + holiday),
            "{weekday} {weekend} {holiday}"
        );
        assert!(holiday * 20 * 19 < weekday, "11 November is off: {holiday}");
        assert!(late * 50 < total, "few evenings: {late} of {total}");
        assert_eq!(
            reasons.len(),
            5,
            "routine, arrivals, sessions, covering, campaigns"
        );
    }

    #[test]
    fn organisations_have_their_own_days() {
        let mut m = month(2);
        let accounts = m.accounts().to_vec();
        let org_of = |i: usize| accounts[i].organisation_id;
        let mut session: std::collections::HashMap<OrganisationId, std::collections::HashSet<u32>> =
            Default::default();
        let mut campaign: std::collections::HashMap<
            OrganisationId,
            std::collections::HashSet<u32>,
        > = Default::default();
        let mut first_after_holiday = Vec::new();
        for d in 0..28 {
            let date = m.options().start + TimeDelta::days(i64::from(d));
            for v in m.day(d) {
                match v.reason {
                    Reason::NewSession => {
                        session.entry(org_of(v.account)).or_default().insert(d);
                    }
                    Reason::Campaign => {
                        campaign.entry(org_of(v.account)).or_default().insert(d);
                    }
                    _ => {}
                }
                // 12 November 2026, the day after Armistice Day.
                if date == NaiveDate::from_ymd_opt(2026, 11, 12).unwrap() {
                    first_after_holiday.push(v);
                }
            }
        }
        assert!(!session.is_empty() && !campaign.is_empty());
        // One day per organisation, for all its accounts.
        assert!(session.values().all(|d| d.len() == 1), "{session:?}");
        assert!(campaign.values().all(|d| d.len() == 1), "{campaign:?}");
        // Everybody back before 8:30 local after the holiday.
        let mut first: std::collections::HashMap<usize, DateTime<Utc>> = Default::default();
        for v in &first_after_holiday {
            let t = first.entry(v.account).or_insert(v.at);
            *t = (*t).min(v.at);
        }
        assert!(first.len() > 100);
        let early = first
            .values()
            .filter(|t| (**t + TimeDelta::hours(1)).hour() < 9)
            .count();
        assert!(early * 10 >= first.len() * 9, "{early} of {}", first.len());
    }

    #[test]
    fn french_calendar() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(easter_sunday(2026), Some(d(2026, 4, 5)));
        assert!(is_public_holiday(d(2026, 4, 6)), "Easter Monday");
        assert!(is_public_holiday(d(2026, 5, 14)), "Ascension");
        assert!(is_public_holiday(d(2026, 5, 25)), "Whit Monday");
        assert!(is_public_holiday(d(2026, 11, 11)));
        assert!(!is_public_holiday(d(2026, 11, 12)));
        let noon = |y, m, dd| d(y, m, dd).and_hms_opt(12, 0, 0).unwrap();
        assert_eq!(paris_to_utc(noon(2026, 1, 15)).hour(), 11);
        assert_eq!(paris_to_utc(noon(2026, 7, 15)).hour(), 10);
    }

    #[test]
    fn refuses_what_it_cannot_simulate() {
        let o = TrafficOptions {
            accounts: 0,
            start: NaiveDate::MIN,
            days: 1,
            seed: 0,
        };
        assert_eq!(NormalMonth::new(o).unwrap_err(), TrafficError::NoAccounts);
        let o = TrafficOptions {
            accounts: 1,
            days: 0,
            ..o
        };
        assert_eq!(NormalMonth::new(o).unwrap_err(), TrafficError::Days);
    }
}
