//! A job seeker's record and the validated values it is made of.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::FieldGroup;
use crate::nir::Nir;

/// Why a field value was refused. Messages never echo the value: they end up
/// in reject reports and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is required")]
    Missing,
    #[error("is too long ({found} characters, at most {max})")]
    TooLong { found: usize, max: usize },
    #[error("contains a character that is not allowed (position {position})")]
    BadCharacter { position: usize },
    #[error("must be 7 digits followed by a letter")]
    FtIdFormat,
    #[error("is not a valid e-mail address")]
    Email,
    #[error("is not a French phone number (10 digits starting with 0, or +33…)")]
    Phone,
    #[error("must be 5 digits")]
    PostalCode,
    #[error("is not a date in YYYY-MM-DD form")]
    DateFormat,
    #[error("must be between {min} and {max}")]
    DateRange { min: NaiveDate, max: NaiveDate },
    #[error("is not one of: {expected}")]
    NotInList { expected: &'static str },
    #[error("{0}")]
    Nir(#[from] crate::nir::NirError),
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// France Travail identifier: 7 digits and a letter, e.g. `1234567A`.
///
/// It maps one-to-one onto a number below 260 million ([`FtId::ordinal`]),
/// which lets an import keep a compact bitmap of the identifiers it saw.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FtId([u8; 8]);

impl FtId {
    /// Number of distinct identifiers.
    pub const SPACE: u32 = 10_000_000 * 26;

    /// Parses `1234567A` (letter case ignored, surrounding spaces trimmed).
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        let b = s.as_bytes();
        if b.len() != 8 || !b[..7].iter().all(u8::is_ascii_digit) || !b[7].is_ascii_alphabetic() {
            return Err(ValueError::FtIdFormat);
        }
        let mut out = [0u8; 8];
        out.copy_from_slice(b);
        out[7] = out[7].to_ascii_uppercase();
        Ok(FtId(out))
    }

    /// Builds the identifier of a given ordinal (inverse of [`FtId::ordinal`]).
    pub fn from_ordinal(ordinal: u32) -> Option<Self> {
        if ordinal >= Self::SPACE {
            return None;
        }
        let digits = ordinal % 10_000_000;
        let letter = (ordinal / 10_000_000) as u8;
        let mut out = [0u8; 8];
        let s = format!("{digits:07}");
        out[..7].copy_from_slice(s.as_bytes());
        out[7] = b'A' + letter;
        Some(FtId(out))
    }

    /// A dense number in `0..SPACE`.
    pub fn ordinal(&self) -> u32 {
        let digits = self.0[..7]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        u32::from(self.0[7] - b'A') * 10_000_000 + digits
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for FtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FtId(<redacted>)")
    }
}

/// A family or given name: 1–100 characters, letters (any script, accents),
/// spaces, hyphens, apostrophes and dots.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub const MAX: usize = 100;

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        let count = s.chars().count();
        if count > Self::MAX {
            return Err(ValueError::TooLong {
                found: count,
                max: Self::MAX,
            });
        }
        if let Some((position, _)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_alphabetic() || matches!(c, ' ' | '-' | '\'' | '’' | '.')))
        {
            return Err(ValueError::BadCharacter {
                position: position + 1,
            });
        }
        Ok(Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Name(<redacted>)")
    }
}

/// An e-mail address, checked for shape only (one `@`, a dotted domain, no spaces).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX: usize = 254;

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        let count = s.chars().count();
        if count > Self::MAX {
            return Err(ValueError::TooLong {
                found: count,
                max: Self::MAX,
            });
        }
        let (local, domain) = s.split_once('@').ok_or(ValueError::Email)?;
        let ok = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(ValueError::Email);
        }
        Ok(Email(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

/// A French phone number, stored as 10 digits (`0612345678`). Accepts
/// spaces, dots and dashes, and the `+33`/`0033` prefixes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        if s.len() > 32 {
            return Err(ValueError::Phone);
        }
        let compact: String = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .collect();
        let national = if let Some(rest) = compact.strip_prefix("+33") {
            format!("0{rest}")
        } else if let Some(rest) = compact.strip_prefix("0033") {
            format!("0{rest}")
        } else {
            compact
        };
        let b = national.as_bytes();
        if b.len() != 10 || b[0] != b'0' || b[1] == b'0' || !b.iter().all(u8::is_ascii_digit) {
            return Err(ValueError::Phone);
        }
        Ok(Phone(national))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phone(<redacted>)")
    }
}

/// Bounded free text (street line, commune name): no control characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    pub fn parse(input: &str, max: usize) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        let count = s.chars().count();
        if count > max {
            return Err(ValueError::TooLong { found: count, max });
        }
        if let Some((position, _)) = s.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(ValueError::BadCharacter {
                position: position + 1,
            });
        }
        Ok(Text(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Text(<redacted>)")
    }
}

/// A French postal code, 5 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PostalCode([u8; 5]);

impl PostalCode {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ValueError::Missing);
        }
        let b = s.as_bytes();
        if b.len() != 5 || !b.iter().all(u8::is_ascii_digit) {
            return Err(ValueError::PostalCode);
        }
        let mut out = [0u8; 5];
        out.copy_from_slice(b);
        Ok(PostalCode(out))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The département it lies in: its first two digits; three for the
    /// overseas départements (971 to 976); 2A or 2B for Corsica (codes
    /// 20000 to 20199 are Corse-du-Sud, the rest Haute-Corse).
    pub fn departement(&self) -> String {
        let code = self.as_str();
        // Five ASCII digits by construction: the slices cannot fail.
        match code.get(..2).unwrap_or_default() {
            "97" | "98" => code.get(..3).unwrap_or_default().to_string(),
            "20" if code < "20200" => "2A".to_string(),
            "20" => "2B".to_string(),
            two => two.to_string(),
        }
    }
}

/// A postal address: street line, postal code, commune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostalAddress {
    pub ligne: Text,
    pub code_postal: PostalCode,
    pub commune: Text,
}

/// Registration status with France Travail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Statut {
    /// Currently registered as a job seeker.
    Inscrit,
    /// Struck off the list (sanction or failure to update).
    Radie,
    /// Left the list (found work, training, moved away…).
    Sorti,
}

impl Statut {
    pub const ALL: [Statut; 3] = [Statut::Inscrit, Statut::Radie, Statut::Sorti];

    pub fn as_str(self) -> &'static str {
        match self {
            Statut::Inscrit => "inscrit",
            Statut::Radie => "radie",
            Statut::Sorti => "sorti",
        }
    }

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        match input.trim() {
            "" => Err(ValueError::Missing),
            "inscrit" => Ok(Statut::Inscrit),
            "radie" | "radié" => Ok(Statut::Radie),
            "sorti" => Ok(Statut::Sorti),
            _ => Err(ValueError::NotInList {
                expected: "inscrit, radie, sorti",
            }),
        }
    }
}

/// Field group `identity`: who the person is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ft_id: FtId,
    pub nom: Name,
    pub prenom: Name,
    #[serde(with = "date_serde")]
    pub date_naissance: NaiveDate,
}

/// Field group `contact`: how to reach the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub email: Option<Email>,
    pub telephone: Option<Phone>,
    pub adresse: PostalAddress,
}

/// Field group `status`: where the person stands with France Travail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub statut: Statut,
    #[serde(with = "date_serde")]
    pub inscrit_le: NaiveDate,
    #[serde(with = "date_serde::option")]
    pub fin_le: Option<NaiveDate>,
}

impl Registration {
    /// Years a record is kept once the registration has ended, after which
    /// the person may be crypto-shredded.
    pub const RETENTION_YEARS: u32 = 10;

    /// Day after which the record may be shredded: `None` while registered.
    pub fn retain_until(&self) -> Option<NaiveDate> {
        self.fin_le
            .and_then(|end| end.checked_add_months(chrono::Months::new(12 * Self::RETENTION_YEARS)))
    }
}

/// A job seeker's full record, as imported. Each part is one [`FieldGroup`]
/// and is encrypted on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub identity: Identity,
    pub nir: Nir,
    pub contact: Contact,
    pub status: Registration,
}

impl Person {
    /// Checks rules that span fields: NIR against birth date, dates in order.
    pub fn check_consistency(&self) -> Result<(), (FieldGroup, &'static str, ValueError)> {
        use chrono::Datelike;
        let born = self.identity.date_naissance;
        if !self.nir.is_provisional() {
            if u32::from(self.nir.birth_year_2()) != (born.year() as u32) % 100 {
                return Err((
                    FieldGroup::Nir,
                    "nir",
                    ValueError::Inconsistent("birth year does not match date_naissance"),
                ));
            }
            if let Some(m) = self.nir.birth_month()
                && u32::from(m) != born.month()
            {
                return Err((
                    FieldGroup::Nir,
                    "nir",
                    ValueError::Inconsistent("birth month does not match date_naissance"),
                ));
            }
        }
        if self.status.inscrit_le < born {
            return Err((
                FieldGroup::Status,
                "date_inscription",
                ValueError::Inconsistent("is before date_naissance"),
            ));
        }
        match (self.status.statut, self.status.fin_le) {
            (Statut::Inscrit, Some(_)) => Err((
                FieldGroup::Status,
                "date_fin",
                ValueError::Inconsistent("must be empty while statut is inscrit"),
            )),
            (Statut::Radie | Statut::Sorti, None) => Err((
                FieldGroup::Status,
                "date_fin",
                ValueError::Inconsistent("is required when statut is radie or sorti"),
            )),
            (_, Some(end)) if end < self.status.inscrit_le => Err((
                FieldGroup::Status,
                "date_fin",
                ValueError::Inconsistent("is before date_inscription"),
            )),
            _ => Ok(()),
        }
    }
}

/// Dates as `YYYY-MM-DD` for human-readable formats (JSON) and as a day
/// number for binary ones (the vault's encoding), where formatting and
/// parsing text would cost more than the rest of a record.
pub mod date_serde {
    use chrono::{Datelike, NaiveDate};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            d.serialize(s)
        } else {
            d.num_days_from_ce().serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
        if d.is_human_readable() {
            NaiveDate::deserialize(d)
        } else {
            let n = i32::deserialize(d)?;
            NaiveDate::from_num_days_from_ce_opt(n)
                .ok_or_else(|| D::Error::custom("day out of range"))
        }
    }

    /// The same for `Option<NaiveDate>`.
    pub mod option {
        use super::*;

        #[derive(Serialize, Deserialize)]
        struct Wrap(#[serde(with = "super")] NaiveDate);

        pub fn serialize<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
            d.map(Wrap).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Writes `YYYY-MM-DD` into a fixed buffer (no allocation, no formatter).
pub fn iso_date(d: NaiveDate) -> [u8; 10] {
    use chrono::Datelike;
    let mut out = *b"0000-00-00";
    let (y, m, dd) = (d.year().clamp(0, 9999) as u32, d.month(), d.day());
    for (i, v) in [
        (0, y / 1000),
        (1, y / 100 % 10),
        (2, y / 10 % 10),
        (3, y % 10),
    ] {
        out[i] = b'0' + v as u8;
    }
    out[5] = b'0' + (m / 10) as u8;
    out[6] = b'0' + (m % 10) as u8;
    out[8] = b'0' + (dd / 10) as u8;
    out[9] = b'0' + (dd % 10) as u8;
    out
}

/// Parses a `YYYY-MM-DD` date within `[min, max]`.
pub fn parse_date(input: &str, min: NaiveDate, max: NaiveDate) -> Result<NaiveDate, ValueError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(ValueError::Missing);
    }
    // Hand-parsed: chrono's format parser is a hot spot of large imports.
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(ValueError::DateFormat);
    }
    let d = match (digits(0..4), digits(5..7), digits(8..10)) {
        (Some(y), Some(m), Some(dd)) => NaiveDate::from_ymd_opt(y as i32, m, dd),
        _ => None,
    }
    .ok_or(ValueError::DateFormat)?;
    if d < min || d > max {
        return Err(ValueError::DateRange { min, max });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postal_codes_name_their_departement() {
        for (code, dep) in [
            ("75020", "75"),
            ("01000", "01"),
            ("20000", "2A"),
            ("20199", "2A"),
            ("20200", "2B"),
            ("97400", "974"),
            ("97180", "971"),
        ] {
            assert_eq!(PostalCode::parse(code).unwrap().departement(), dep);
        }
    }

    #[test]
    fn ft_id_roundtrips_through_its_ordinal() {
        let id = FtId::parse(" 1234567b ").unwrap();
        assert_eq!(id.as_str(), "1234567B");
        assert_eq!(FtId::from_ordinal(id.ordinal()), Some(id));
        assert_eq!(
            FtId::from_ordinal(FtId::SPACE - 1).unwrap().as_str(),
            "9999999Z"
        );
        assert_eq!(FtId::from_ordinal(FtId::SPACE), None);
        assert_eq!(FtId::parse("123456A"), Err(ValueError::FtIdFormat));
        assert_eq!(FtId::parse("12345678"), Err(ValueError::FtIdFormat));
        assert_eq!(FtId::parse("1234567é"), Err(ValueError::FtIdFormat));
    }

    #[test]
    fn names_accept_french_spelling_and_refuse_digits() {
        for ok in [
            "Lefèvre",
            "N'Diaye",
            "Jean-François",
            "Ærøskøbing",
            "d’Artagnan",
            "St. Pierre",
        ] {
            Name::parse(ok).unwrap();
        }
        assert_eq!(
            Name::parse("R2D2"),
            Err(ValueError::BadCharacter { position: 2 })
        );
        assert_eq!(Name::parse("  "), Err(ValueError::Missing));
        assert!(matches!(
            Name::parse(&"a".repeat(101)),
            Err(ValueError::TooLong { .. })
        ));
    }

    #[test]
    fn phones_normalise_to_ten_digits() {
        assert_eq!(
            Phone::parse("06 12 34 56 78").unwrap().as_str(),
            "0612345678"
        );
        assert_eq!(
            Phone::parse("+33 6 12 34 56 78").unwrap().as_str(),
            "0612345678"
        );
        assert_eq!(
            Phone::parse("0033612345678").unwrap().as_str(),
            "0612345678"
        );
        assert_eq!(Phone::parse("0012345678"), Err(ValueError::Phone));
        assert_eq!(Phone::parse("061234567"), Err(ValueError::Phone));
    }

    #[test]
    fn emails_are_checked_for_shape() {
        Email::parse("camille.martin@exemple.fr").unwrap();
        for bad in [
            "camille",
            "@exemple.fr",
            "a@b",
            "a b@c.fr",
            "a@@c.fr",
            "a@.fr",
        ] {
            assert_eq!(Email::parse(bad), Err(ValueError::Email), "{bad}");
        }
    }

    #[test]
    fn dates_are_strict() {
        let min = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        let max = NaiveDate::from_ymd_opt(2030, 1, 1).unwrap();
        assert!(parse_date("2001-02-28", min, max).is_ok());
        assert_eq!(
            parse_date("2001-02-29", min, max),
            Err(ValueError::DateFormat)
        );
        assert_eq!(
            parse_date("2001-2-3", min, max),
            Err(ValueError::DateFormat)
        );
        assert!(matches!(
            parse_date("1850-01-01", min, max),
            Err(ValueError::DateRange { .. })
        ));
    }

    #[test]
    fn iso_date_matches_chrono() {
        for d in ["1950-01-01", "2009-12-31", "2024-02-29", "0999-07-04"] {
            let date = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
            assert_eq!(&iso_date(date), d.as_bytes());
        }
    }

    #[test]
    fn debug_output_is_redacted() {
        let n = Name::parse("Dupont").unwrap();
        let e = Email::parse("x.dupont@exemple.fr").unwrap();
        let p = Phone::parse("0612345678").unwrap();
        let dbg = format!("{n:?} {e:?} {p:?}");
        assert!(!dbg.contains("Dupont") && !dbg.contains("dupont") && !dbg.contains("0612"));
    }
}

macro_rules! string_serde {
    ($ty:ty, $parse:expr) => {
        impl TryFrom<String> for $ty {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                $parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.as_str().to_string()
            }
        }
    };
}
string_serde!(FtId, FtId::parse);
string_serde!(Name, Name::parse);
string_serde!(Email, Email::parse);
string_serde!(Phone, Phone::parse);
string_serde!(PostalCode, PostalCode::parse);
// Stored text was bounded when imported; the bound here only refuses garbage.
string_serde!(Text, |s: &str| Text::parse(s, 4096));
