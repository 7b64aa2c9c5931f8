//! Routes, request parsing and response bodies of `/api/v1`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::NaiveDate;
use rempart_consult::{
    AccountState, BreakGlass, CaseloadPage, Grant, GrantDecision, GrantRequestView, LeafRef,
    MandateView, NirShown, SearchBy, Shown,
};
use rempart_domain::{AccountId, MandateId, Nir, OrganisationId, PersonId, Purpose, Reference};
use serde::{Deserialize, Serialize};

use crate::accounts::{self, AccountBody};
use crate::request::{Answer, Credentials, client, json_body, ok, parsed, path_id};
use crate::{ApiError, AppState, OPENAPI};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/health/live", get(live))
        .route("/api/v1/health/ready", get(ready))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .route("/api/v1/me", get(me))
        .route("/api/v1/token", post(crate::token::token))
        .route("/api/v1/persons/{id}", get(read_person))
        .route("/api/v1/persons/{id}/break-glass", post(break_glass))
        .route("/api/v1/search", post(search))
        .route("/api/v1/caseload", get(caseload))
        .route("/api/v1/mandates", post(grant_mandate))
        .route("/api/v1/mandates/{id}", delete(revoke_mandate))
        .route("/api/v1/mandate-requests", get(pending_grants))
        .route("/api/v1/mandate-requests/{id}/approve", post(approve_grant))
        .route("/api/v1/mandate-requests/{id}/reject", post(reject_grant))
        .route("/api/v1/organisations", get(organisations))
        .route("/api/v1/organisations/{id}/accounts", get(accounts))
        .route("/api/v1/organisations/{id}/lift-freeze", post(lift_freeze))
        .route(
            "/api/v1/incidents",
            get(crate::incidents::list).post(crate::incidents::open),
        )
        .route("/api/v1/incidents/{id}", get(crate::incidents::show))
        .route(
            "/api/v1/incidents/{id}/events",
            post(crate::incidents::event),
        )
        .route(
            "/api/v1/incidents/{id}/scope",
            post(crate::incidents::scope),
        )
        .route("/api/v1/accounts/{id}/suspend", post(suspend))
        .route("/api/v1/accounts/{id}/reactivate", post(reactivate))
        .route(
            "/api/v1/organisations/{id}/account-requests",
            post(accounts::request_account),
        )
        .route("/api/v1/account-requests", get(accounts::pending_requests))
        .route(
            "/api/v1/account-requests/{id}/approve",
            post(accounts::approve_account),
        )
        .route(
            "/api/v1/account-requests/{id}/reject",
            post(accounts::reject_account),
        )
        .route(
            "/api/v1/accounts/{id}/reset-requests",
            post(accounts::request_reset),
        )
        .route("/api/v1/reset-requests", get(accounts::pending_resets))
        .route(
            "/api/v1/reset-requests/{id}/approve",
            post(accounts::approve_reset),
        )
        .route(
            "/api/v1/reset-requests/{id}/reject",
            post(accounts::reject_reset),
        )
        .route(
            "/api/v1/organisations/{id}/accounts/review",
            get(accounts::review),
        )
}

// -------------------------------------------------------------------------
// Parsing. Messages name the field and the rule, never the value.
// -------------------------------------------------------------------------

struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<String>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::invalid(k.to_string(), "is given more than once"));
            }
        }
        Ok(Query(map))
    }

    fn purpose(&self) -> Result<Purpose, ApiError> {
        match self.0.get("purpose") {
            None => Err(ApiError::invalid("purpose", "is required")),
            Some(p) => parse_purpose("purpose", p),
        }
    }

    fn number(
        &self,
        field: &'static str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ApiError> {
        match self.0.get(field) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    field,
                    format!("must be an integer between {min} and {max}"),
                )),
            },
        }
    }
}

fn parse_purpose(field: &str, text: &str) -> Result<Purpose, ApiError> {
    Purpose::parse(text).map_err(|_| {
        ApiError::invalid(
            field,
            format!(
                "must be one of {}",
                Purpose::ALL
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn parse_date(field: &str, text: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(field, "must be a date YYYY-MM-DD"))
}

// -------------------------------------------------------------------------
// Response bodies
// -------------------------------------------------------------------------

#[derive(Serialize)]
struct PersonBody {
    id: PersonId,
    purpose: &'static str,
    field_groups: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact: Option<ContactBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nir: Option<NirBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_receipt: Option<u64>,
}

#[derive(Serialize)]
struct IdentityBody {
    ft_id: String,
    nom: String,
    prenom: String,
    date_naissance: String,
}

#[derive(Serialize)]
struct ContactBody {
    email: Option<String>,
    telephone: Option<String>,
    adresse: AddressBody,
}

#[derive(Serialize)]
struct AddressBody {
    ligne: String,
    code_postal: String,
    commune: String,
}

#[derive(Serialize)]
struct StatusBody {
    statut: &'static str,
    inscrit_le: String,
    fin_le: Option<String>,
}

#[derive(Serialize)]
struct NirBody {
    view: &'static str,
    value: String,
}

impl From<Shown> for PersonBody {
    fn from(s: Shown) -> Self {
        PersonBody {
            id: s.person_id,
            purpose: s.purpose.as_str(),
            field_groups: s.field_groups.iter().map(|g| g.as_str()).collect(),
            identity: s.identity.map(|i| IdentityBody {
                ft_id: i.ft_id.as_str().to_string(),
                nom: i.nom.as_str().to_string(),
                prenom: i.prenom.as_str().to_string(),
                date_naissance: i.date_naissance.format("%Y-%m-%d").to_string(),
            }),
            contact: s.contact.map(|c| ContactBody {
                email: c.email.map(|e| e.as_str().to_string()),
                telephone: c.telephone.map(|t| t.as_str().to_string()),
                adresse: AddressBody {
                    ligne: c.adresse.ligne.as_str().to_string(),
                    code_postal: c.adresse.code_postal.as_str().to_string(),
                    commune: c.adresse.commune.as_str().to_string(),
                },
            }),
            status: s.status.map(|r| StatusBody {
                statut: r.statut.as_str(),
                inscrit_le: r.inscrit_le.format("%Y-%m-%d").to_string(),
                fin_le: r.fin_le.map(|d| d.format("%Y-%m-%d").to_string()),
            }),
            nir: s.nir.map(|n| match n {
                NirShown::Clear(v) => NirBody {
                    view: "clear",
                    value: v,
                },
                NirShown::Masked(v) => NirBody {
                    view: "masked",
                    value: v,
                },
                NirShown::Token(v) => NirBody {
                    view: "token",
                    value: v,
                },
            }),
            ledger_index: s.ledger.index(),
            ledger_receipt: match s.ledger {
                LeafRef::Receipt(r) => Some(r),
                LeafRef::Index(_) => None,
            },
        }
    }
}

#[derive(Serialize)]
struct MandateBody {
    id: MandateId,
    reference: String,
    person_id: PersonId,
    organisation_id: OrganisationId,
    account_id: Option<AccountId>,
    purpose: &'static str,
    valid_from: String,
    valid_to: Option<String>,
    source: String,
}

impl From<MandateView> for MandateBody {
    fn from(MandateView { id, terms: m }: MandateView) -> Self {
        MandateBody {
            id,
            reference: m.reference.as_str().to_string(),
            person_id: m.person_id,
            organisation_id: m.organisation_id,
            account_id: m.account_id,
            purpose: m.purpose.as_str(),
            valid_from: m.valid_from.format("%Y-%m-%d").to_string(),
            valid_to: m.valid_to.map(|d| d.format("%Y-%m-%d").to_string()),
            source: m.source.as_str().to_string(),
        }
    }
}

/// A grant to the officer's own organisation, waiting for an officer of
/// another (`state` is `requested`).
#[derive(Serialize)]
struct GrantRequestBody {
    id: i64,
    state: &'static str,
    reference: String,
    person_id: PersonId,
    organisation_id: OrganisationId,
    account_id: Option<AccountId>,
    purpose: &'static str,
    valid_from: String,
    valid_to: Option<String>,
    source: String,
    requested_by: AccountId,
    requested_at: String,
}

impl From<GrantRequestView> for GrantRequestBody {
    fn from(r: GrantRequestView) -> Self {
        let m = r.terms;
        GrantRequestBody {
            id: r.id,
            state: "requested",
            reference: m.reference.as_str().to_string(),
            person_id: m.person_id,
            organisation_id: m.organisation_id,
            account_id: m.account_id,
            purpose: m.purpose.as_str(),
            valid_from: m.valid_from.format("%Y-%m-%d").to_string(),
            valid_to: m.valid_to.map(|d| d.format("%Y-%m-%d").to_string()),
            source: m.source.as_str().to_string(),
            requested_by: r.requested_by,
            requested_at: r
                .requested_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

// -------------------------------------------------------------------------
// Handlers
// -------------------------------------------------------------------------

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn live() -> Answer {
    ok(serde_json::json!({ "status": "ok" }))
}

/// Ready: not draining, the registry and the ledger's store answer, the
/// ledger's appender runs. Which part failed is logged, not told.
async fn ready(State(state): State<AppState>) -> Answer {
    if state.health.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this server is stopping: send requests to another",
        ));
    }
    match state.consultation.readiness().await {
        // Which replica integrates the ledger, for operators and tests.
        Ok(()) => ok(serde_json::json!({
            "status": "ready",
            "ledger": if state.consultation.ledger().is_integrating() {
                "integrating"
            } else {
                "staging"
            },
        })),
        Err(failed) => {
            for (part, error) in failed {
                tracing::warn!(%error, "readiness: {part}");
            }
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the registry or the ledger is not reachable",
            ))
        }
    }
}

async fn me(State(state): State<AppState>, creds: Credentials) -> Answer {
    let account = state.consultation.whoami(&creds.presented()).await?;
    ok(AccountBody::from(account))
}

async fn read_person(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let input = path_id(path).and_then(|id| Ok((id, Query::parse(raw)?.purpose()?)));
    let (id, purpose) = parsed(&state, &creds, input).await?;
    let shown = state
        .consultation
        .read_person(&creds.presented(), client(peer), PersonId::new(id), purpose)
        .await?;
    ok(PersonBody::from(shown))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassBody {
    purpose: String,
    reason: String,
}

async fn break_glass(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = path_id(path).and_then(|id| {
        let body: BreakGlassBody = json_body(body)?;
        let purpose = parse_purpose("purpose", &body.purpose)?;
        Ok((id, body, purpose))
    });
    let (person_id, body, purpose) = parsed(&state, &creds, input).await?;
    let shown = state
        .consultation
        .break_glass(
            &creds.presented(),
            client(peer),
            BreakGlass {
                person_id: PersonId::new(person_id),
                purpose,
                reason: body.reason,
            },
        )
        .await?;
    ok(PersonBody::from(shown))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    purpose: String,
    nir: Option<String>,
    nom: Option<String>,
    prenom: Option<String>,
    date_naissance: Option<String>,
}

#[derive(Serialize)]
struct SearchAnswer {
    persons: Vec<PersonBody>,
}

/// Earliest birth date a search accepts: nobody registered is older.
const EARLIEST_BIRTH: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MIN,
};

/// A birth date a person can have: not after `today`, not before 1900.
fn parse_birth_date(field: &str, text: &str, today: NaiveDate) -> Result<NaiveDate, ApiError> {
    let born = parse_date(field, text)?;
    if born > today {
        return Err(ApiError::invalid(field, "is in the future"));
    }
    if born < EARLIEST_BIRTH {
        return Err(ApiError::invalid(field, "is before 1900-01-01"));
    }
    Ok(born)
}

fn search_request(body: SearchBody, today: NaiveDate) -> Result<(SearchBy, Purpose), ApiError> {
    let purpose = parse_purpose("purpose", &body.purpose)?;
    let by = match (body.nir, body.nom, body.prenom, body.date_naissance) {
        (Some(nir), None, None, None) => {
            SearchBy::Nir(Nir::parse(&nir).map_err(|e| ApiError::invalid("nir", e.to_string()))?)
        }
        (None, Some(nom), Some(prenom), Some(born)) => {
            let born = parse_birth_date("date_naissance", &born, today)?;
            SearchBy::name_birth(&nom, &prenom, born)?
        }
        (None, _, _, _) => {
            return Err(ApiError::invalid(
                "body",
                "give either nir, or nom, prenom and date_naissance together",
            ));
        }
        (Some(_), _, _, _) => {
            return Err(ApiError::invalid(
                "nir",
                "search by NIR or by name and birth date, not both",
            ));
        }
    };
    Ok((by, purpose))
}

async fn search(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    creds: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let today = state.consultation.now().date_naive();
    let input = json_body::<SearchBody>(body).and_then(|body| search_request(body, today));
    let (by, purpose) = parsed(&state, &creds, input).await?;
    let results = state
        .consultation
        .search(&creds.presented(), client(peer), by, purpose)
        .await?;
    ok(SearchAnswer {
        persons: results.persons.into_iter().map(PersonBody::from).collect(),
    })
}

#[derive(Serialize)]
struct CaseloadAnswer {
    entries: Vec<CaseloadEntryBody>,
    next: Option<PersonId>,
}

#[derive(Serialize)]
struct CaseloadEntryBody {
    person_id: PersonId,
    mandate_id: MandateId,
    purpose: &'static str,
    valid_to: Option<String>,
}

async fn caseload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    creds: Credentials,
    RawQuery(raw): RawQuery,
) -> Answer {
    let input = Query::parse(raw).and_then(|query| {
        Ok((
            query.purpose()?,
            query.number("after", 0, 0, i64::MAX)?,
            query.number("limit", 100, 1, i64::from(rempart_consult::MAX_PAGE))?,
        ))
    });
    let (purpose, after, limit) = parsed(&state, &creds, input).await?;
    let CaseloadPage { entries, next } = state
        .consultation
        .caseload(
            &creds.presented(),
            client(peer),
            purpose,
            PersonId::new(after),
            u32::try_from(limit).unwrap_or(100),
        )
        .await?;
    ok(CaseloadAnswer {
        entries: entries
            .into_iter()
            .map(|e| CaseloadEntryBody {
                person_id: e.person_id,
                mandate_id: e.mandate_id,
                purpose: e.purpose.as_str(),
                valid_to: e.valid_to.map(|d| d.format("%Y-%m-%d").to_string()),
            })
            .collect(),
        next,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    person_id: PersonId,
    organisation_id: OrganisationId,
    account_id: Option<AccountId>,
    purpose: String,
    valid_from: Option<String>,
    valid_to: Option<String>,
    source: String,
}

fn grant_request(body: GrantBody) -> Result<Grant, ApiError> {
    Ok(Grant {
        person_id: body.person_id,
        organisation_id: body.organisation_id,
        account_id: body.account_id,
        purpose: parse_purpose("purpose", &body.purpose)?,
        valid_from: body
            .valid_from
            .as_deref()
            .map(|d| parse_date("valid_from", d))
            .transpose()?,
        valid_to: body
            .valid_to
            .as_deref()
            .map(|d| parse_date("valid_to", d))
            .transpose()?,
        source: Reference::parse(&body.source)
            .map_err(|e| ApiError::invalid("source", e.to_string()))?,
    })
}

async fn grant_mandate(
    State(state): State<AppState>,
    creds: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = json_body::<GrantBody>(body).and_then(grant_request);
    let grant = parsed(&state, &creds, input).await?;
    let granted = state
        .consultation
        .grant_mandate(&creds.presented(), grant)
        .await?;
    Ok(match granted {
        rempart_consult::Granted::Mandate(m) => {
            (StatusCode::CREATED, Json(MandateBody::from(m))).into_response()
        }
        // The officer's own organisation: another officer decides.
        rempart_consult::Granted::Requested(r) => {
            (StatusCode::ACCEPTED, Json(GrantRequestBody::from(r))).into_response()
        }
    })
}

async fn pending_grants(State(state): State<AppState>, creds: Credentials) -> Answer {
    let pending = state
        .consultation
        .pending_grant_requests(&creds.presented())
        .await?;
    ok(serde_json::json!({
        "requests": pending.into_iter().map(GrantRequestBody::from).collect::<Vec<_>>(),
    }))
}

async fn approve_grant(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    match state
        .consultation
        .decide_grant(&creds.presented(), id, true)
        .await?
    {
        GrantDecision::Granted(m) => {
            Ok((StatusCode::CREATED, Json(MandateBody::from(m))).into_response())
        }
        GrantDecision::Rejected => ok(serde_json::json!({"id": id, "state": "rejected"})),
    }
}

async fn reject_grant(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    state
        .consultation
        .decide_grant(&creds.presented(), id, false)
        .await?;
    ok(serde_json::json!({"id": id, "state": "rejected"}))
}

async fn revoke_mandate(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    state
        .consultation
        .revoke_mandate(&creds.presented(), MandateId::new(id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct OrganisationBody {
    id: OrganisationId,
    code: String,
    kind: &'static str,
    name: String,
    departement: Option<String>,
    /// RFC 3339, when the guard froze the organisation; null when it is not.
    frozen_since: Option<String>,
}

async fn organisations(State(state): State<AppState>, creds: Credentials) -> Answer {
    let list = state.consultation.organisations(&creds.presented()).await?;
    ok(serde_json::json!({
        "organisations": list
            .into_iter()
            .map(|e| OrganisationBody {
                id: e.id,
                code: e.organisation.code.as_str().to_string(),
                kind: e.organisation.kind.as_str(),
                name: e.organisation.name,
                departement: e.organisation.departement,
                frozen_since: e
                    .frozen_since
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            })
            .collect::<Vec<_>>()
    }))
}

async fn accounts(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let list = state
        .consultation
        .accounts(&creds.presented(), OrganisationId::new(id))
        .await?;
    ok(serde_json::json!({
        "accounts": list.into_iter().map(AccountBody::from).collect::<Vec<_>>()
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LiftFreezeBody {
    reason: String,
}

#[derive(Serialize)]
struct FreezeBody {
    organisation_id: OrganisationId,
    /// False when the organisation was not frozen.
    lifted: bool,
}

async fn lift_freeze(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = path_id(path).and_then(|id| {
        let body: LiftFreezeBody = json_body(body)?;
        Ok((id, body))
    });
    let (organisation_id, body) = parsed(&state, &creds, input).await?;
    let lifted = state
        .consultation
        .lift_freeze(
            &creds.presented(),
            OrganisationId::new(organisation_id),
            &body.reason,
        )
        .await?;
    ok(FreezeBody {
        organisation_id: OrganisationId::new(organisation_id),
        lifted,
    })
}

async fn suspend(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    set_state(state, creds, path, AccountState::Suspended).await
}

async fn reactivate(
    State(state): State<AppState>,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    set_state(state, creds, path, AccountState::Active).await
}

async fn set_state(
    state: AppState,
    creds: Credentials,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    to: AccountState,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let account = state
        .consultation
        .set_account_state(&creds.presented(), AccountId::new(id), to)
        .await?;
    ok(AccountBody::from(account))
}
