//! Peer groups and local time, from an organisation's kind and département.
//!
//! Behaviour is compared with the account's *peer group*: accounts of the
//! same organisation kind in the same region (INSEE region code). Hours of
//! the day and weekdays are those of the organisation's place: Europe/Paris
//! (with the EU summer-time rule) for metropolitan France and Corsica, the
//! fixed offsets of the overseas regions otherwise.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc, Weekday};
use rempart_domain::OrganisationKind;

/// An INSEE region code (11 Île-de-France … 94 Corse, 1–6 overseas); 0
/// when the département is unknown or outside every region.
pub type Region = u8;

/// The INSEE region of a département code (`01`–`95`, `2A`, `2B`,
/// `971`–`978`); 0 for anything else.
pub fn region_of(departement: &str) -> Region {
    match departement.trim() {
        "01" | "03" | "07" | "15" | "26" | "38" | "42" | "43" | "63" | "69" | "73" | "74" => 84,
        "21" | "25" | "39" | "58" | "70" | "71" | "89" | "90" => 27,
        "22" | "29" | "35" | "56" => 53,
        "18" | "28" | "36" | "37" | "41" | "45" => 24,
        "2A" | "2B" | "2a" | "2b" => 94,
        "08" | "10" | "51" | "52" | "54" | "55" | "57" | "67" | "68" | "88" => 44,
        "02" | "59" | "60" | "62" | "80" => 32,
        "75" | "77" | "78" | "91" | "92" | "93" | "94" | "95" => 11,
        "14" | "27" | "50" | "61" | "76" => 28,
        "16" | "17" | "19" | "23" | "24" | "33" | "40" | "47" | "64" | "79" | "86" | "87" => 75,
        "09" | "11" | "12" | "30" | "31" | "32" | "34" | "46" | "48" | "65" | "66" | "81"
        | "82" => 76,
        "44" | "49" | "53" | "72" | "85" => 52,
        "04" | "05" | "06" | "13" | "83" | "84" => 93,
        "971" => 1,
        "972" => 2,
        "973" => 3,
        "974" => 4,
        "976" => 6,
        _ => 0,
    }
}

/// Accounts compared with each other: same organisation kind, same region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerGroup {
    /// The organisation kind.
    pub kind: OrganisationKind,
    /// The organisation's region (0 when unknown: a national group).
    pub region: Region,
}

impl PeerGroup {
    /// The peer group of an organisation of `kind` working in `departement`.
    pub fn of(kind: OrganisationKind, departement: Option<&str>) -> Self {
        PeerGroup {
            kind,
            region: departement.map_or(0, region_of),
        }
    }

    /// A stable integer key, for the store: kind × 100 + region.
    pub fn key(self) -> i64 {
        let kind = OrganisationKind::ALL
            .iter()
            .position(|k| *k == self.kind)
            .unwrap_or(0) as i64;
        kind * 100 + i64::from(self.region)
    }
}

/// An instant in an organisation's local time, as the guard counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Local calendar day, as days since 1970-01-01.
    pub day: i32,
    /// Local hour, 0–23.
    pub hour: u8,
    /// Local weekday, 0 = Monday … 6 = Sunday.
    pub weekday: u8,
}

impl LocalTime {
    /// `at` in the local time of `region`.
    pub fn of(at: DateTime<Utc>, region: Region) -> Self {
        let local = at + TimeDelta::minutes(offset_minutes(at, region));
        let date = local.date_naive();
        LocalTime {
            day: days_since_epoch(date),
            hour: local.hour() as u8,
            weekday: date.weekday().num_days_from_monday() as u8,
        }
    }

    /// The weekday of a local day number (0 = Monday).
    pub fn weekday_of(day: i32) -> u8 {
        // 1970-01-01 was a Thursday.
        (i64::from(day) + 3).rem_euclid(7) as u8
    }

    /// Whether this is outside working time: before `start` or from `end`
    /// on, or a Saturday or Sunday.
    pub fn is_off_hours(self, start: u8, end: u8) -> bool {
        self.off_hours(start, end).is_some()
    }

    /// Which kind of time outside work this is, if any: the night and
    /// evening (any day) are one kind, weekend daytime the other, so that
    /// an advisor who works some Saturday mornings has no evening habit.
    pub fn off_hours(self, start: u8, end: u8) -> Option<OffHours> {
        if self.hour < start || self.hour >= end {
            Some(OffHours::Night)
        } else if self.weekday >= 5 {
            Some(OffHours::WeekendDay)
        } else {
            None
        }
    }
}

/// Time outside work, by kind (see [`LocalTime::off_hours`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffHours {
    /// Before the working day starts or from its end on, any day.
    Night,
    /// Working hours of a Saturday or Sunday.
    WeekendDay,
}

fn days_since_epoch(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - 719_163
}

/// Minutes to add to UTC for local time in `region`.
fn offset_minutes(at: DateTime<Utc>, region: Region) -> i64 {
    match region {
        1 | 2 => -240, // Guadeloupe, Martinique
        3 => -180,     // Guyane
        4 => 240,      // La Réunion
        6 => 180,      // Mayotte
        _ => {
            if is_eu_summer_time(at) {
                120
            } else {
                60
            }
        }
    }
}

/// EU rule: summer time from the last Sunday of March 01:00 UTC to the last
/// Sunday of October 01:00 UTC.
fn is_eu_summer_time(at: DateTime<Utc>) -> bool {
    let year = at.year();
    let (Some(start), Some(end)) = (last_sunday_1am(year, 3), last_sunday_1am(year, 10)) else {
        return false;
    };
    start <= at && at < end
}

fn last_sunday_1am(year: i32, month: u32) -> Option<DateTime<Utc>> {
    let last = NaiveDate::from_ymd_opt(year, month, 31)?;
    let back = match last.weekday() {
        Weekday::Sun => 0,
        w => i64::from(w.num_days_from_sunday()),
    };
    let sunday = last - TimeDelta::days(back);
    Some(sunday.and_hms_opt(1, 0, 0)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_metropolitan_departement_has_a_region() {
        let mut n = 0;
        for d in 1..=95 {
            if d == 20 {
                continue;
            }
            assert_ne!(region_of(&format!("{d:02}")), 0, "{d:02}");
            n += 1;
        }
        assert_ne!(region_of("2A"), 0);
        assert_ne!(region_of("2B"), 0);
        assert_eq!(n + 2, 96);
        assert_eq!(region_of("20"), 0);
        assert_eq!(region_of("974"), 4);
        assert_eq!(region_of(""), 0);
    }

    #[test]
    fn peer_keys_separate_kinds_and_regions() {
        let a = PeerGroup::of(OrganisationKind::CapEmploi, Some("38"));
        let b = PeerGroup::of(OrganisationKind::CapEmploi, Some("69"));
        let c = PeerGroup::of(OrganisationKind::MissionLocale, Some("38"));
        let d = PeerGroup::of(OrganisationKind::CapEmploi, Some("75"));
        assert_eq!(a.key(), b.key(), "same region (84)");
        assert_ne!(a.key(), c.key());
        assert_ne!(a.key(), d.key());
    }

    #[test]
    fn paris_time_follows_summer_time_and_overseas_is_fixed() {
        // 2026: summer time from 29 March to 25 October.
        let winter = LocalTime::of(at("2026-01-15T08:30:00Z"), 84);
        assert_eq!((winter.hour, winter.weekday), (9, 3));
        let summer = LocalTime::of(at("2026-06-15T08:30:00Z"), 84);
        assert_eq!((summer.hour, summer.weekday), (10, 0));
        assert_eq!(LocalTime::of(at("2026-03-29T00:59:00Z"), 11).hour, 1);
        assert_eq!(LocalTime::of(at("2026-03-29T01:00:00Z"), 11).hour, 3);
        assert_eq!(LocalTime::of(at("2026-10-25T00:59:00Z"), 11).hour, 2);
        assert_eq!(LocalTime::of(at("2026-10-25T01:00:00Z"), 11).hour, 2);
        let reunion = LocalTime::of(at("2026-06-15T22:30:00Z"), 4);
        assert_eq!((reunion.hour, reunion.weekday), (2, 1), "next day there");
        assert_eq!(
            LocalTime::weekday_of(reunion.day),
            reunion.weekday,
            "day numbers and weekdays agree"
        );
    }

    #[test]
    fn off_hours_are_evenings_nights_and_weekends() {
        let t = |s| LocalTime::of(at(s), 11);
        assert!(!t("2026-01-14T08:00:00Z").is_off_hours(7, 20), "Wed 9:00");
        assert!(t("2026-01-14T19:30:00Z").is_off_hours(7, 20), "Wed 20:30");
        assert!(t("2026-01-14T05:00:00Z").is_off_hours(7, 20), "Wed 6:00");
        assert!(t("2026-01-17T10:00:00Z").is_off_hours(7, 20), "Saturday");
    }
}
