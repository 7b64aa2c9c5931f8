//! The exchange format: one CSV file per entity, its columns, and the rules
//! that turn a row of raw bytes into a validated domain value.
//!
//! Parsing is pure: it gets the row's fields and "today" and returns either
//! a value or a [`RecordError`] naming the column and the reason. The README
//! documents the same columns for people writing these files by hand.

use chrono::{Months, NaiveDate};

use crate::access::{
    Account, AccountState, Mandate, Organisation, OrganisationKind, Purpose, Reference, Role,
};
use crate::nir::Nir;
use crate::person::{
    Contact, Email, FtId, Identity, Name, Person, Phone, PostalAddress, PostalCode, Registration,
    Statut, Text, ValueError, parse_date,
};

/// Columns of `persons.csv`, in order.
pub const PERSON_COLUMNS: [&str; 13] = [
    "ft_id",
    "nir",
    "nom",
    "prenom",
    "date_naissance",
    "email",
    "telephone",
    "adresse",
    "code_postal",
    "commune",
    "statut",
    "date_inscription",
    "date_fin",
];
/// Columns of `organisations.csv`, in order.
pub const ORGANISATION_COLUMNS: [&str; 4] = ["code", "kind", "name", "departement"];
/// Columns of `accounts.csv`, in order.
pub const ACCOUNT_COLUMNS: [&str; 6] = [
    "login",
    "organisation",
    "role",
    "state",
    "requested_by",
    "approved_by",
];
/// Columns of `mandates.csv`, in order.
pub const MANDATE_COLUMNS: [&str; 8] = [
    "reference",
    "organisation",
    "account",
    "ft_id",
    "purpose",
    "valid_from",
    "valid_to",
    "source",
];

/// Longest street line, in characters.
pub const MAX_ADDRESS: usize = 200;
/// Longest commune or organisation name, in characters.
pub const MAX_PLACE: usize = 100;

/// Why one row was refused. Never contains the row's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("expected {expected} columns, found {found}")]
    ColumnCount { expected: usize, found: usize },
    #[error("{field}: is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{field}: {reason}")]
    Field {
        field: &'static str,
        reason: ValueError,
    },
    #[error("{field}: appears earlier in this import")]
    Duplicate { field: &'static str },
}

impl RecordError {
    /// The column at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RecordError::ColumnCount { .. } => None,
            RecordError::NotUtf8 { field }
            | RecordError::Field { field, .. }
            | RecordError::Duplicate { field } => Some(field),
        }
    }

    /// The reason, without the column name.
    pub fn reason(&self) -> String {
        match self {
            RecordError::ColumnCount { .. } => self.to_string(),
            RecordError::NotUtf8 { .. } => "is not valid UTF-8".into(),
            RecordError::Field { reason, .. } => reason.to_string(),
            RecordError::Duplicate { .. } => "appears earlier in this import".into(),
        }
    }
}

/// Rules that depend on the current date, fixed once per import.
#[derive(Debug, Clone, Copy)]
pub struct RecordRules {
    pub today: NaiveDate,
    earliest_birth: NaiveDate,
    latest_birth: NaiveDate,
    earliest_event: NaiveDate,
}

impl RecordRules {
    /// Rules for an import running on `today`: births from 1900 until 14
    /// years ago (the youngest Mission Locale public is 16), registration
    /// dates from 1958 (creation of unemployment insurance) until today.
    pub fn new(today: NaiveDate) -> Self {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap_or(NaiveDate::MIN);
        RecordRules {
            today,
            earliest_birth: d(1900, 1, 1),
            latest_birth: today
                .checked_sub_months(Months::new(14 * 12))
                .unwrap_or(today),
            earliest_event: d(1958, 1, 1),
        }
    }

    /// Parses one `persons.csv` row.
    pub fn person(&self, row: &[&[u8]]) -> Result<Person, RecordError> {
        let f = Fields::new(row, &PERSON_COLUMNS)?;
        let ft_id = f.parse(0, FtId::parse)?;
        let nir = f.parse(1, |s| Nir::parse(s).map_err(ValueError::from))?;
        let nom = f.parse(2, Name::parse)?;
        let prenom = f.parse(3, Name::parse)?;
        let date_naissance =
            f.parse(4, |s| parse_date(s, self.earliest_birth, self.latest_birth))?;
        let email = f.optional(5, Email::parse)?;
        let telephone = f.optional(6, Phone::parse)?;
        let ligne = f.parse(7, |s| Text::parse(s, MAX_ADDRESS))?;
        let code_postal = f.parse(8, PostalCode::parse)?;
        let commune = f.parse(9, |s| Text::parse(s, MAX_PLACE))?;
        let statut = f.parse(10, Statut::parse)?;
        let inscrit_le = f.parse(11, |s| parse_date(s, self.earliest_event, self.today))?;
        let fin_le = f.optional(12, |s| parse_date(s, self.earliest_event, self.today))?;
        let person = Person {
            identity: Identity {
                ft_id,
                nom,
                prenom,
                date_naissance,
            },
            nir,
            contact: Contact {
                email,
                telephone,
                adresse: PostalAddress {
                    ligne,
                    code_postal,
                    commune,
                },
            },
            status: Registration {
                statut,
                inscrit_le,
                fin_le,
            },
        };
        person
            .check_consistency()
            .map_err(|(_, field, reason)| RecordError::Field { field, reason })?;
        Ok(person)
    }

    /// Parses one `organisations.csv` row.
    pub fn organisation(&self, row: &[&[u8]]) -> Result<Organisation, RecordError> {
        let f = Fields::new(row, &ORGANISATION_COLUMNS)?;
        Ok(Organisation {
            code: f.parse(0, Reference::parse)?,
            kind: f.parse(1, OrganisationKind::parse)?,
            name: f
                .parse(2, |s| Text::parse(s, MAX_PLACE))?
                .as_str()
                .to_string(),
            departement: f.optional(3, parse_departement)?,
        })
    }

    /// Parses one `accounts.csv` row.
    pub fn account(&self, row: &[&[u8]]) -> Result<Account, RecordError> {
        let f = Fields::new(row, &ACCOUNT_COLUMNS)?;
        Ok(Account {
            login: f.parse(0, Reference::parse)?,
            organisation: f.parse(1, Reference::parse)?,
            role: f.parse(2, Role::parse)?,
            state: f.parse(3, AccountState::parse)?,
            requested_by: f.optional(4, Reference::parse)?,
            approved_by: f.optional(5, Reference::parse)?,
        })
    }

    /// Parses one `mandates.csv` row.
    pub fn mandate(&self, row: &[&[u8]]) -> Result<Mandate, RecordError> {
        let f = Fields::new(row, &MANDATE_COLUMNS)?;
        let far = NaiveDate::from_ymd_opt(2100, 1, 1).unwrap_or(NaiveDate::MAX);
        let valid_from = f.parse(5, |s| parse_date(s, self.earliest_event, far))?;
        let valid_to = f.optional(6, |s| parse_date(s, self.earliest_event, far))?;
        if valid_to.is_some_and(|end| end <= valid_from) {
            return Err(RecordError::Field {
                field: "valid_to",
                reason: ValueError::Inconsistent("must be after valid_from"),
            });
        }
        Ok(Mandate {
            reference: f.parse(0, Reference::parse)?,
            organisation: f.parse(1, Reference::parse)?,
            account: f.optional(2, Reference::parse)?,
            person: f.parse(3, FtId::parse)?,
            purpose: f.parse(4, Purpose::parse)?,
            valid_from,
            valid_to,
            source: f.parse(7, Reference::parse)?,
        })
    }
}

fn parse_departement(s: &str) -> Result<String, ValueError> {
    let ok = matches!(s, "2A" | "2B")
        || (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) && s != "00" && s != "20")
        || (s.len() == 3 && s.starts_with("97") && s.as_bytes()[2].is_ascii_digit());
    if ok {
        Ok(s.to_string())
    } else {
        Err(ValueError::NotInList {
            expected: "a département code (01–95, 2A, 2B, 971–978)",
        })
    }
}

/// A row's fields with their column names, decoding UTF-8 lazily.
struct Fields<'a> {
    row: &'a [&'a [u8]],
    columns: &'static [&'static str],
}

impl<'a> Fields<'a> {
    fn new(row: &'a [&'a [u8]], columns: &'static [&'static str]) -> Result<Self, RecordError> {
        if row.len() != columns.len() {
            return Err(RecordError::ColumnCount {
                expected: columns.len(),
                found: row.len(),
            });
        }
        Ok(Fields { row, columns })
    }

    fn text(&self, i: usize) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.row[i]).map_err(|_| RecordError::NotUtf8 {
            field: self.columns[i],
        })
    }

    fn parse<T>(
        &self,
        i: usize,
        p: impl FnOnce(&str) -> Result<T, ValueError>,
    ) -> Result<T, RecordError> {
        p(self.text(i)?).map_err(|reason| RecordError::Field {
            field: self.columns[i],
            reason,
        })
    }

    fn optional<T>(
        &self,
        i: usize,
        p: impl FnOnce(&str) -> Result<T, ValueError>,
    ) -> Result<Option<T>, RecordError> {
        let s = self.text(i)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        self.parse(i, p).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RecordRules {
        RecordRules::new(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
    }

    fn row(s: &str) -> Vec<Vec<u8>> {
        s.split(',').map(|f| f.as_bytes().to_vec()).collect()
    }

    fn person(s: &str) -> Result<Person, RecordError> {
        let r = row(s);
        let refs: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
        rules().person(&refs)
    }

    const GOOD: &str = "1234567A,255081416802538,Martin,Élise,1955-08-14,elise.martin@exemple.fr,06 12 34 56 78,12 rue de la Paix,75002,Paris,sorti,2019-03-01,2020-01-15";

    #[test]
    fn a_good_row_parses() {
        let p = person(GOOD).unwrap();
        assert_eq!(p.identity.prenom.as_str(), "Élise");
        assert_eq!(p.contact.telephone.unwrap().as_str(), "0612345678");
        assert_eq!(p.status.statut, Statut::Sorti);
    }

    #[test]
    fn each_bad_row_names_its_field() {
        let cases = [
            (
                GOOD.replace("255081416802538", "255081416802539"),
                Some("nir"),
            ),
            (
                GOOD.replace("1955-08-14", "1955-02-30"),
                Some("date_naissance"),
            ),
            (GOOD.replace("1955-08-14", "1956-08-14"), Some("nir")),
            (GOOD.replace(",Martin,", ",,"), Some("nom")),
            (GOOD.replace(",sorti,", ",chomeur,"), Some("statut")),
            (GOOD.replace(",2020-01-15", ","), Some("date_fin")),
            (GOOD.replace("75002", "7500"), Some("code_postal")),
            (GOOD.replace("Paris", &"P".repeat(101)), Some("commune")),
            (GOOD.replace(",sorti,", ",inscrit,"), Some("date_fin")),
            (format!("{GOOD},extra"), None),
        ];
        for (line, field) in cases {
            let err = person(&line).unwrap_err();
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn invalid_utf8_is_reported_on_its_column() {
        let mut r = row(GOOD);
        r[3] = vec![b'E', 0xff, b'l'];
        let refs: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
        assert_eq!(
            rules().person(&refs),
            Err(RecordError::NotUtf8 { field: "prenom" })
        );
    }

    #[test]
    fn empty_optional_fields_are_none() {
        let p = person(
            &GOOD
                .replace("elise.martin@exemple.fr", "")
                .replace("06 12 34 56 78", ""),
        )
        .unwrap();
        assert!(p.contact.email.is_none() && p.contact.telephone.is_none());
    }

    #[test]
    fn errors_do_not_echo_values() {
        let err = person(&GOOD.replace("255081416802538", "255081416802539")).unwrap_err();
        assert!(!err.to_string().contains("2550814"));
    }
}
