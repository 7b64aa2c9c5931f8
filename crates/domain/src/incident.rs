//! Incidents of the breach register (GDPR Art. 33(5)): what was
//! compromised, the window, the timeline. Types only; the register is kept
//! by `rempart-storage` and the scope computed by `rempart-breach`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::{AccountId, OrganisationId, PersonId};

/// Why a window is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// It ends before it starts, or where it starts.
    #[error("window: it must end after it starts")]
    Empty,
}

/// A half-open time window `[from, to)`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Window {
    /// The window `[from, to)`; refused if it is empty or reversed.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, WindowError> {
        if to <= from {
            return Err(WindowError::Empty);
        }
        Ok(Window { from, to })
    }

    /// Its start, inclusive.
    pub fn from(self) -> DateTime<Utc> {
        self.from
    }

    /// Its end, exclusive.
    pub fn to(self) -> DateTime<Utc> {
        self.to
    }
}

/// What an incident says was in the attacker's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compromised {
    /// One account (its credentials, session or device).
    Account(AccountId),
    /// Every account of an organisation.
    Organisation(OrganisationId),
}

impl fmt::Display for Compromised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compromised::Account(a) => write!(f, "account {a}"),
            Compromised::Organisation(o) => write!(f, "organisation {o}"),
        }
    }
}

/// Longest title or note, in characters.
pub const MAX_TEXT_CHARS: usize = 500;

/// An incident's number in the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncidentId(i64);

impl IncidentId {
    /// The id of a stored number.
    pub const fn new(id: i64) -> Self {
        IncidentId(id)
    }

    /// The stored number.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A step of an incident's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Milestone {
    /// Entered in the register.
    Opened,
    /// The compromised access was cut (accounts suspended, credentials
    /// revoked…).
    Contained,
    /// Its scope was computed from the ledger.
    Scoped,
    /// The supervisory authority (the CNIL) was notified (Art. 33).
    AuthorityNotified,
    /// The persons concerned were informed (Art. 34).
    PersonsInformed,
    /// Closed: nothing more is recorded.
    Closed,
}

impl Milestone {
    /// Every milestone.
    pub const ALL: &'static [Milestone] = &[
        Milestone::Opened,
        Milestone::Contained,
        Milestone::Scoped,
        Milestone::AuthorityNotified,
        Milestone::PersonsInformed,
        Milestone::Closed,
    ];

    /// Its stable text code.
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::Opened => "opened",
            Milestone::Contained => "contained",
            Milestone::Scoped => "scoped",
            Milestone::AuthorityNotified => "authority_notified",
            Milestone::PersonsInformed => "persons_informed",
            Milestone::Closed => "closed",
        }
    }

    /// Parses a text code.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.as_str() == text)
    }
}

impl fmt::Display for Milestone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened (as the officer says; recorded at `recorded_at`).
    pub at: DateTime<Utc>,
    /// What.
    pub milestone: Milestone,
    /// The officer's note.
    pub note: Option<String>,
    /// When it was entered.
    pub recorded_at: DateTime<Utc>,
}

impl Event {
    /// An event entered as it happens.
    pub fn happening(at: DateTime<Utc>, milestone: Milestone, note: Option<String>) -> Self {
        Event {
            at,
            milestone,
            note,
            recorded_at: at,
        }
    }
}

/// An incident to enter in the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    /// What happened, in a line (no job seeker named).
    pub title: String,
    /// What was in the attacker's hands.
    pub compromised: Vec<Compromised>,
    /// When it was.
    pub window: Window,
    /// When the controller became aware: the 72 hours of Art. 33 run from
    /// here.
    pub aware_at: DateTime<Utc>,
    /// Who enters it.
    pub opened_by: String,
}

/// An incident as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// Its number.
    pub id: IncidentId,
    /// What happened.
    pub title: String,
    /// What was compromised.
    pub compromised: Vec<Compromised>,
    /// When.
    pub window: Window,
    /// When the controller became aware.
    pub aware_at: DateTime<Utc>,
    /// Who entered it.
    pub opened_by: String,
    /// Its timeline, in the order entered.
    pub timeline: Vec<Event>,
}

impl Incident {
    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.reached(Milestone::Closed).is_some()
    }

    /// When a milestone was first reached.
    pub fn reached(&self, m: Milestone) -> Option<DateTime<Utc>> {
        self.timeline
            .iter()
            .filter(|e| e.milestone == m)
            .map(|e| e.at)
            .min()
    }

    /// The Art. 33 deadline: 72 hours after awareness.
    pub fn notification_deadline(&self) -> DateTime<Utc> {
        self.aware_at + chrono::Duration::hours(72)
    }
}

/// How a person's notice reaches them, besides their personal space
/// (where every notice is shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoticeChannel {
    /// By e-mail, to the address the registry holds.
    Email,
    /// By post, a printed letter: for persons with no e-mail address.
    Letter,
}

impl NoticeChannel {
    /// Both channels.
    pub const ALL: [NoticeChannel; 2] = [NoticeChannel::Email, NoticeChannel::Letter];

    /// Its stable text code.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeChannel::Email => "email",
            NoticeChannel::Letter => "letter",
        }
    }

    /// Parses a text code.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for NoticeChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every notice of an incident shares, fixed when the first one is
/// queued: a notice is rendered again, identical, from it and the
/// person's [`QueuedNotice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRun {
    /// The controller's name.
    pub controller: String,
    /// How to reach the DPO.
    pub dpo: String,
    /// What was done, in a sentence for the persons.
    pub measures: String,
    /// The version of the notice's wording.
    pub wording: i64,
    /// When the notices were first prepared.
    pub prepared_at: DateTime<Utc>,
}

/// One person's notice, queued: what the ledger recorded of their
/// exposure (codes, not data), where it goes, and the digest of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedNotice {
    /// The person.
    pub person: PersonId,
    /// E-mail or letter.
    pub channel: NoticeChannel,
    /// Their département (counts for the authority).
    pub departement: String,
    /// The field groups and NIR view shown, as a code.
    pub groups: i64,
    /// The kinds of organisation shown it, as a code.
    pub kinds: i64,
    /// Consultations that revealed their data.
    pub reads: u64,
    /// The first of them.
    pub first: DateTime<Utc>,
    /// The last of them.
    pub last: DateTime<Utc>,
    /// SHA-256 of the notice's text.
    pub digest: [u8; 32],
}

/// A queued notice with its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotice {
    /// The incident.
    pub incident: IncidentId,
    /// The notice.
    pub notice: QueuedNotice,
    /// Deliveries begun (more than one: a dispatcher stopped between
    /// beginning and recording it).
    pub attempts: u32,
    /// When its delivery was recorded.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Where an incident's notices stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoticeProgress {
    /// Queued, by channel.
    pub queued: BTreeMap<NoticeChannel, u64>,
    /// Delivered, by channel.
    pub sent: BTreeMap<NoticeChannel, u64>,
    /// Begun and not recorded delivered: a dispatcher stopped during
    /// their delivery (they are delivered again, with the same identity).
    pub interrupted: u64,
    /// Queued, by the person's département.
    pub by_departement: BTreeMap<String, u64>,
}

impl NoticeProgress {
    /// Every notice queued.
    pub fn total_queued(&self) -> u64 {
        self.queued.values().sum()
    }

    /// Every notice delivered.
    pub fn total_sent(&self) -> u64 {
        self.sent.values().sum()
    }
}
