//! The breach register over HTTP, for agency security and the DPO: open
//! an incident, list and read the register, record a step of a timeline,
//! scope an incident from the ledger. Handlers parse, call one operation
//! of the consultation path, and shape the answer; every rule lives in
//! `rempart_consult::incidents`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, SecondsFormat, Utc};
use rempart_consult::{IncidentRequest, IncidentView, ScopeSummary, ScopeView};
use rempart_domain::incident::{Compromised, IncidentId, Milestone, NoticeChannel, Window};
use rempart_domain::{AccountId, OrganisationId};
use serde::{Deserialize, Serialize};

use crate::request::{Answer, Credentials, json_body, ok, parsed, path_id};
use crate::{ApiError, AppState};

type PathId = Result<Path<String>, PathRejection>;

// -------------------------------------------------------------------------
// Parsing
// -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    title: Option<String>,
    #[serde(default)]
    accounts: Vec<i64>,
    #[serde(default)]
    organisations: Vec<i64>,
    #[serde(default)]
    clients: Vec<String>,
    alert: Option<i64>,
    from: Option<String>,
    to: Option<String>,
    aware_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    milestone: String,
    at: Option<String>,
    note: Option<String>,
}

/// An instant in RFC 3339 (with its offset).
fn instant(field: &'static str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 instant with its offset"))
    })
    .transpose()
}

/// Most subjects of each kind one request names (as the document says);
/// a whole organisation is one subject.
const MAX_IDS: usize = 1000;
const MAX_CLIENTS: usize = 100;

/// Ids as the registry numbers them: positive, at most [`MAX_IDS`].
fn ids<T>(field: &'static str, raw: &[i64], make: fn(i64) -> T) -> Result<Vec<T>, ApiError> {
    if raw.len() > MAX_IDS {
        return Err(ApiError::invalid(field, format!("at most {MAX_IDS} ids")));
    }
    raw.iter()
        .map(|&id| {
            if id > 0 {
                Ok(make(id))
            } else {
                Err(ApiError::invalid(field, "ids are positive integers"))
            }
        })
        .collect()
}

impl OpenBody {
    fn request(self) -> Result<IncidentRequest, ApiError> {
        if self.clients.len() > MAX_CLIENTS {
            return Err(ApiError::invalid(
                "clients",
                format!("at most {MAX_CLIENTS} clients"),
            ));
        }
        Ok(IncidentRequest {
            accounts: ids("accounts", &self.accounts, AccountId::new)?,
            organisations: ids("organisations", &self.organisations, OrganisationId::new)?,
            from: instant("from", self.from.as_deref())?,
            to: instant("to", self.to.as_deref())?,
            aware_at: instant("aware_at", self.aware_at.as_deref())?,
            title: self.title,
            clients: self.clients,
            alert: self.alert,
        })
    }
}

fn milestone(text: &str) -> Result<Milestone, ApiError> {
    Milestone::parse(text).ok_or_else(|| {
        let all: Vec<&str> = Milestone::ALL
            .iter()
            .filter(|m| **m != Milestone::Opened)
            .map(|m| m.as_str())
            .collect();
        ApiError::invalid("milestone", format!("must be one of {}", all.join(", ")))
    })
}

/// `?persons=true` asks for the affected persons' ids with a scope.
fn with_persons(raw: Option<String>) -> Result<bool, ApiError> {
    let mut persons = false;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("persons", "true") => persons = true,
            ("persons", "false") => persons = false,
            ("persons", _) => return Err(ApiError::invalid("persons", "must be true or false")),
            _ => return Err(ApiError::invalid(k.to_string(), "is not a parameter here")),
        }
    }
    Ok(persons)
}

// -------------------------------------------------------------------------
// Bodies
// -------------------------------------------------------------------------

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Serialize)]
struct SubjectBody {
    kind: &'static str,
    id: i64,
}

impl From<Compromised> for SubjectBody {
    fn from(c: Compromised) -> Self {
        match c {
            Compromised::Account(a) => SubjectBody {
                kind: "account",
                id: a.get(),
            },
            Compromised::Organisation(o) => SubjectBody {
                kind: "organisation",
                id: o.get(),
            },
        }
    }
}

#[derive(Serialize)]
struct WindowBody {
    from: String,
    to: String,
}

impl From<Window> for WindowBody {
    fn from(w: Window) -> Self {
        WindowBody {
            from: rfc3339(w.from()),
            to: rfc3339(w.to()),
        }
    }
}

#[derive(Serialize)]
struct EventOut {
    milestone: &'static str,
    at: String,
    note: Option<String>,
    recorded_at: String,
}

#[derive(Serialize)]
struct ChannelBody {
    queued: u64,
    delivered: u64,
}

#[derive(Serialize)]
struct NoticesBody {
    queued: u64,
    delivered: u64,
    interrupted: u64,
    email: ChannelBody,
    letter: ChannelBody,
}

#[derive(Serialize)]
struct IncidentBody {
    id: i64,
    title: String,
    compromised: Vec<SubjectBody>,
    window: WindowBody,
    aware_at: String,
    /// The 72 hours of Art. 33.
    notification_deadline: String,
    authority_notified_at: Option<String>,
    closed: bool,
    opened_by: String,
    timeline: Vec<EventOut>,
    notices: NoticesBody,
}

impl From<IncidentView> for IncidentBody {
    fn from(v: IncidentView) -> Self {
        let i = v.incident;
        let p = v.notices;
        let channel = |c| ChannelBody {
            queued: p.queued.get(&c).copied().unwrap_or(0),
            delivered: p.sent.get(&c).copied().unwrap_or(0),
        };
        IncidentBody {
            id: i.id.get(),
            notification_deadline: rfc3339(i.notification_deadline()),
            authority_notified_at: i.reached(Milestone::AuthorityNotified).map(rfc3339),
            closed: i.is_closed(),
            title: i.title,
            compromised: i.compromised.into_iter().map(SubjectBody::from).collect(),
            window: i.window.into(),
            aware_at: rfc3339(i.aware_at),
            opened_by: i.opened_by,
            timeline: i
                .timeline
                .into_iter()
                .map(|e| EventOut {
                    milestone: e.milestone.as_str(),
                    at: rfc3339(e.at),
                    note: e.note,
                    recorded_at: rfc3339(e.recorded_at),
                })
                .collect(),
            notices: NoticesBody {
                queued: p.total_queued(),
                delivered: p.total_sent(),
                interrupted: p.interrupted,
                email: channel(NoticeChannel::Email),
                letter: channel(NoticeChannel::Letter),
            },
        }
    }
}

#[derive(Serialize)]
struct IncidentsBody {
    incidents: Vec<IncidentBody>,
}

#[derive(Serialize)]
struct ScopeBody {
    incident: i64,
    window: WindowBody,
    compromised: Vec<SubjectBody>,
    #[serde(flatten)]
    counts: ScopeSummary,
    leaves_after_checkpoint: u64,
    /// The signed checkpoint (C2SP signed note) the scope is bound to.
    checkpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    person_ids: Option<Vec<i64>>,
}

impl ScopeBody {
    fn new(v: ScopeView, persons: bool) -> Self {
        ScopeBody {
            incident: v.incident.id.get(),
            window: v.incident.window.into(),
            compromised: v
                .incident
                .compromised
                .iter()
                .map(|c| SubjectBody::from(*c))
                .collect(),
            counts: v.scope.summary(),
            leaves_after_checkpoint: v.later,
            checkpoint: v.checkpoint,
            person_ids: persons.then(|| v.scope.persons.iter().map(|(p, _)| p.get()).collect()),
        }
    }
}

// -------------------------------------------------------------------------
// Handlers
// -------------------------------------------------------------------------

pub(crate) async fn open(
    State(state): State<AppState>,
    creds: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = json_body::<OpenBody>(body).and_then(OpenBody::request);
    let request = parsed(&state, &creds, input).await?;
    let view = state
        .consultation
        .open_incident(&creds.presented(), &request)
        .await?;
    Ok((StatusCode::CREATED, Json(IncidentBody::from(view))).into_response())
}

pub(crate) async fn list(State(state): State<AppState>, creds: Credentials) -> Answer {
    let all = state.consultation.incidents(&creds.presented()).await?;
    ok(IncidentsBody {
        incidents: all.into_iter().map(IncidentBody::from).collect(),
    })
}

pub(crate) async fn show(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let view = state
        .consultation
        .incident(&creds.presented(), IncidentId::new(id))
        .await?;
    ok(IncidentBody::from(view))
}

pub(crate) async fn event(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = path_id(path).and_then(|id| {
        let body: EventBody = json_body(body)?;
        let milestone = milestone(&body.milestone)?;
        let at = instant("at", body.at.as_deref())?;
        Ok((id, milestone, at, body.note))
    });
    let (id, milestone, at, note) = parsed(&state, &creds, input).await?;
    let view = state
        .consultation
        .record_incident_event(&creds.presented(), IncidentId::new(id), milestone, at, note)
        .await?;
    ok(IncidentBody::from(view))
}

pub(crate) async fn scope(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
    RawQuery(query): RawQuery,
) -> Answer {
    let input = path_id(path).and_then(|id| Ok((id, with_persons(query)?)));
    let (id, persons) = parsed(&state, &creds, input).await?;
    let view = state
        .consultation
        .scope_incident(&creds.presented(), IncidentId::new(id))
        .await?;
    ok(ScopeBody::new(view, persons))
}
