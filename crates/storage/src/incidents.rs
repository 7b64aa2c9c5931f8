//! The breach register (GDPR Art. 33(5)) behind [`IncidentStore`]: every
//! incident, notified or not, with what was compromised, the window and
//! its timeline, on the registry's database. Here what both backends
//! share: the trait, its errors, the codes stored for what was
//! compromised, the checks before a write.
//!
//! Nothing stored here is a personal value: ids, instants, an officer's
//! description of the incident (which must name no job seeker).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::incident::{
    Compromised, Event, Incident, IncidentId, MAX_TEXT_CHARS, Milestone, NewIncident, Window,
};
use rempart_domain::{AccountId, OrganisationId};

use crate::{StorageError, instant};

/// Why the register refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A value is refused; names the field and the reason.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No incident has this number.
    #[error("incident {0}: no such incident")]
    Unknown(IncidentId),
    /// The incident is closed: nothing more is recorded on it.
    #[error("incident {0} is closed: nothing more can be recorded on it")]
    Closed(IncidentId),
    /// A named account or organisation is not in the registry.
    #[error("compromised: {0} is not in the registry")]
    UnknownSubject(Compromised),
    /// The backend failed.
    #[error("breach register: {0}")]
    Backend(String),
    /// Stored data cannot be read back.
    #[error("breach register: stored data is malformed: {0}")]
    Corrupt(String),
}

/// Checks an officer's free text: present, bounded, one line or a few, no
/// control characters.
pub fn checked_text(field: &'static str, text: &str) -> Result<String, RegisterError> {
    let text = text.trim();
    let invalid = |reason: &str| RegisterError::Invalid {
        field,
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(&format!("at most {MAX_TEXT_CHARS} characters")));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid("control characters are not allowed"));
    }
    Ok(text.to_string())
}

/// The register's persistence. Every method is one transaction; a refused
/// call writes nothing.
#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Enters a new incident (its `Opened` event at `now`), after checking
    /// that every compromised account and organisation exists.
    async fn open_incident(
        &self,
        new: &NewIncident,
        now: DateTime<Utc>,
    ) -> Result<IncidentId, RegisterError>;

    /// One incident with its timeline.
    async fn incident(&self, id: IncidentId) -> Result<Option<Incident>, RegisterError>;

    /// Every incident, newest first.
    async fn incidents(&self) -> Result<Vec<Incident>, RegisterError>;

    /// Adds an event to an open incident's timeline, in one statement that
    /// finds the incident open (a `Closed` event closes it: no event is
    /// recorded after it, whatever the concurrency).
    async fn record_event(&self, id: IncidentId, event: &Event) -> Result<(), RegisterError>;
}

/// The stored kind and id of a compromised subject.
pub(crate) fn subject_columns(c: Compromised) -> (i16, i64) {
    match c {
        Compromised::Account(a) => (1, a.get()),
        Compromised::Organisation(o) => (2, o.get()),
    }
}

/// A stored subject.
pub(crate) fn subject(kind: i64, id: i64) -> Result<Compromised, StorageError> {
    match kind {
        1 => Ok(Compromised::Account(AccountId::new(id))),
        2 => Ok(Compromised::Organisation(OrganisationId::new(id))),
        _ => Err(StorageError::Corrupt(format!(
            "incident subject kind {kind}"
        ))),
    }
}

/// A stored milestone.
pub(crate) fn milestone(code: &str) -> Result<Milestone, StorageError> {
    Milestone::parse(code).ok_or_else(|| StorageError::Corrupt("incident milestone code".into()))
}

/// A stored window (microseconds since the Unix epoch, as the ledger
/// keeps time).
pub(crate) fn window(from: i64, to: i64) -> Result<Window, StorageError> {
    let at = |us: i64| {
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| StorageError::Corrupt("incident window out of range".into()))
    };
    Window::new(at(from)?, at(to)?)
        .map_err(|_| StorageError::Corrupt("incident window is empty".into()))
}

/// A window's bounds as stored.
pub(crate) fn window_columns(w: Window) -> (i64, i64) {
    (w.from().timestamp_micros(), w.to().timestamp_micros())
}

/// A new incident as it will be stored: text checked, instants in range,
/// subjects sorted and deduplicated.
pub(crate) struct Checked {
    pub title: String,
    pub opened_by: String,
    pub aware_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub subjects: Vec<Compromised>,
}

pub(crate) fn check_new(new: &NewIncident, now: DateTime<Utc>) -> Result<Checked, RegisterError> {
    let title = checked_text("title", &new.title)?;
    let opened_by = checked_text("opened_by", &new.opened_by)?;
    let aware_at = instant(new.aware_at, "aware_at").map_err(register_error)?;
    instant(new.window.from(), "from").map_err(register_error)?;
    instant(new.window.to(), "to").map_err(register_error)?;
    let now = instant(now, "now").map_err(register_error)?;
    if aware_at > now {
        return Err(RegisterError::Invalid {
            field: "aware_at",
            reason: "is in the future".into(),
        });
    }
    let mut subjects = new.compromised.clone();
    subjects.sort_unstable();
    subjects.dedup();
    if subjects.is_empty() {
        return Err(RegisterError::Invalid {
            field: "compromised",
            reason: "name at least one account or organisation".into(),
        });
    }
    Ok(Checked {
        title,
        opened_by,
        aware_at,
        now,
        subjects,
    })
}

/// Whether the register would take `new` as far as its fields go (the
/// subjects' existence is checked in its transaction): what a caller
/// rehearses before it ledgers the opening.
pub fn validate_new(new: &NewIncident, now: DateTime<Utc>) -> Result<(), RegisterError> {
    check_new(new, now).map(|_| ())
}

/// Whether the register would take `event` as far as its fields go.
pub fn validate_event(event: &Event) -> Result<(), RegisterError> {
    check_event(event).map(|_| ())
}

/// An event as it will be stored.
pub(crate) struct CheckedEvent {
    pub at: DateTime<Utc>,
    pub note: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

pub(crate) fn check_event(event: &Event) -> Result<CheckedEvent, RegisterError> {
    if event.milestone == Milestone::Opened {
        return Err(RegisterError::Invalid {
            field: "milestone",
            reason: "an incident is opened once, when it is entered".into(),
        });
    }
    let at = instant(event.at, "at").map_err(register_error)?;
    let recorded_at = instant(event.recorded_at, "recorded_at").map_err(register_error)?;
    if at > recorded_at {
        return Err(RegisterError::Invalid {
            field: "at",
            reason: "is after the moment it is recorded".into(),
        });
    }
    let note = event
        .note
        .as_deref()
        .map(|n| checked_text("note", n))
        .transpose()?;
    Ok(CheckedEvent {
        at,
        note,
        recorded_at,
    })
}

/// Assembles a stored incident.
pub(crate) struct Row {
    pub id: i64,
    pub title: String,
    pub window: (i64, i64),
    pub aware_at: DateTime<Utc>,
    pub opened_by: String,
}

impl Row {
    pub(crate) fn into_incident(
        self,
        compromised: Vec<Compromised>,
        timeline: Vec<Event>,
    ) -> Result<Incident, StorageError> {
        Ok(Incident {
            id: IncidentId::new(self.id),
            title: self.title,
            compromised,
            window: window(self.window.0, self.window.1)?,
            aware_at: self.aware_at,
            opened_by: self.opened_by,
            timeline,
        })
    }
}

/// The register's error for a store's.
pub(crate) fn register_error(e: StorageError) -> RegisterError {
    match e {
        StorageError::Corrupt(what) => RegisterError::Corrupt(what),
        e => match e.refused() {
            Some((field, reason)) => RegisterError::Invalid { field, reason },
            None => RegisterError::Backend(e.to_string()),
        },
    }
}
