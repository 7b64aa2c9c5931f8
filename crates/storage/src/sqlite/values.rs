//! How values are written to and read from SQLite: instants, days, counts.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, Row};

use crate::{StorageError, parse_code};

pub(super) fn grouped<T>(
    conn: &Connection,
    sql: &str,
    parse: impl Fn(&str) -> Result<T, rempart_domain::ValueError>,
) -> Result<Vec<(T, u64)>, StorageError> {
    let rows: Vec<(String, i64)> = conn
        .prepare(sql)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(k, n)| Ok((parse_code(k, &parse)?, n as u64)))
        .collect()
}

/// An instant as SQLite keeps it: RFC 3339 UTC text with microseconds,
/// fixed width so that text order is time order.
pub(super) fn instant_text(at: DateTime<Utc>, what: &'static str) -> Result<String, StorageError> {
    Ok(crate::instant(at, what)?.to_rfc3339_opts(SecondsFormat::Micros, true))
}

pub(super) fn parse_instant(s: &str, what: &str) -> Result<DateTime<Utc>, StorageError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not an RFC 3339 instant")))
}

/// A text column, borrowed from the row (`None` for NULL).
pub(super) fn text<'r>(
    r: &'r Row<'_>,
    i: usize,
    what: &str,
) -> Result<Option<&'r str>, StorageError> {
    r.get_ref(i)?
        .as_str_or_null()
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not text")))
}

/// A stored `YYYY-MM-DD` day. Read by hand: chrono's format-string parser
/// (which rusqlite uses) showed in profiles of the consultation path.
pub(super) fn day(s: &str, what: &str) -> Result<NaiveDate, StorageError> {
    let corrupt = || StorageError::Corrupt(format!("stored {what} is not a YYYY-MM-DD day"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(corrupt());
    }
    let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(corrupt());
    };
    i32::try_from(y)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, m, d))
        .ok_or_else(corrupt)
}

pub(super) fn optional_instant(
    s: Option<String>,
    what: &str,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    s.map(|s| parse_instant(&s, what)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_read_as_chrono_reads_them() {
        for ok in ["2026-12-02", "0001-01-01", "2024-02-29", "9999-12-31"] {
            assert_eq!(
                day(ok, "d").unwrap(),
                NaiveDate::parse_from_str(ok, "%Y-%m-%d").unwrap(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "2026-12-2",
            "2026-13-01",
            "2025-02-29",
            "2026/12/02",
            "2026-12-02T00",
            "+026-12-02",
            "２０２６-12-02",
            "2026-00-10",
        ] {
            let e = day(bad, "valid_from").unwrap_err().to_string();
            assert!(
                e.contains("valid_from") && !e.contains(bad) || bad.is_empty(),
                "{e}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_day_exactly_when_it_is_one(s in "[0-9+-]{0,4}-?[0-9]{0,3}-?[0-9]{0,3}") {
            let ours = day(&s, "d").ok();
            let strict = (s.len() == 10)
                .then(|| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok())
                .flatten()
                .filter(|d| d.format("%Y-%m-%d").to_string() == s);
            proptest::prop_assert_eq!(ours, strict);
        }
    }
}
