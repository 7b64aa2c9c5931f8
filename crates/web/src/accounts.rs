//! The account lifecycle over HTTP: account requests and their four-eyes
//! decisions, credential resets, the periodic review. Handlers parse, call
//! one operation of the consultation path, and shape the answer; every
//! rule lives in `rempart_consult`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, SecondsFormat, Utc};
use rempart_consult::activation::IssuedActivation;
use rempart_consult::{
    AccountDecision, AccountRequest, AccountReview, AccountView, INACTIVITY_DAYS, ResetDecision,
    ResetKind, ResetView,
};
use rempart_domain::{AccountId, OrganisationId, Reference, Role};
use serde::{Deserialize, Serialize};

use crate::request::{Answer, Credentials, json_body, ok, parsed, path_id};
use crate::{ApiError, AppState};

type PathId = Result<Path<String>, PathRejection>;

// -------------------------------------------------------------------------
// Parsing
// -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRequestBody {
    login: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequestBody {
    kind: String,
}

/// A login exactly as given: surrounding spaces are refused, not trimmed
/// (the document's pattern has none).
fn parse_login(text: &str) -> Result<Reference, ApiError> {
    if text.trim() != text {
        return Err(ApiError::invalid(
            "login",
            "must not start or end with spaces",
        ));
    }
    Reference::parse(text).map_err(|e| ApiError::invalid("login", e.to_string()))
}

/// Any role code parses; which ones may be asked for is the consultation
/// path's rule (a refusal there is ledgered, a parse error is not).
fn parse_role(text: &str) -> Result<Role, ApiError> {
    Role::ALL
        .iter()
        .copied()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| ApiError::invalid("role", "must be agent or manager"))
}

fn parse_kind(text: &str) -> Result<ResetKind, ApiError> {
    ResetKind::ALL
        .iter()
        .copied()
        .find(|k| k.as_str() == text)
        .ok_or_else(|| ApiError::invalid("kind", "must be password, totp, passkeys or all"))
}

// -------------------------------------------------------------------------
// Answers
// -------------------------------------------------------------------------

fn instant(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// An account with its history.
#[derive(Serialize)]
struct AccountHistoryBody {
    #[serde(flatten)]
    account: AccountBody,
    created_at: Option<String>,
    requested_by: Option<AccountId>,
    decided_by: Option<AccountId>,
    decided_at: Option<String>,
    last_login_at: Option<String>,
    /// No login for [`INACTIVITY_DAYS`]; `null` when the history is unknown.
    dormant: Option<bool>,
}

impl AccountHistoryBody {
    fn new(e: AccountReview, now: DateTime<Utc>) -> Self {
        let dormant = e.history.dormant(now, INACTIVITY_DAYS);
        let h = e.history;
        AccountHistoryBody {
            account: AccountBody::from(e.account),
            created_at: instant(h.created_at),
            requested_by: h.requested_by,
            decided_by: h.decided_by,
            decided_at: instant(h.decided_at),
            last_login_at: instant(h.last_login_at),
            dormant,
        }
    }

    fn list(entries: Vec<AccountReview>) -> Vec<Self> {
        let now = Utc::now();
        entries.into_iter().map(|e| Self::new(e, now)).collect()
    }
}

#[derive(Serialize)]
struct ResetBody {
    id: i64,
    account_id: AccountId,
    kind: &'static str,
    requested_by: AccountId,
    requested_at: String,
    decided_by: Option<AccountId>,
    decided_at: Option<String>,
    approved: Option<bool>,
}

impl From<ResetView> for ResetBody {
    fn from(r: ResetView) -> Self {
        ResetBody {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind.as_str(),
            requested_by: r.requested_by,
            requested_at: r.requested_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            decided_by: r.decided_by,
            decided_at: instant(r.decided_at),
            approved: r.approved,
        }
    }
}

#[derive(Serialize)]
struct ResetDecisionBody {
    #[serde(flatten)]
    reset: ResetBody,
    credentials_revoked: u64,
    #[serde(flatten)]
    activation: Option<ActivationBody>,
}

/// An activation code, in the approving officer's answer only: the one
/// time it exists in clear outside the person's hands.
#[derive(Serialize)]
struct ActivationBody {
    activation_code: String,
    activation_expires_at: String,
}

impl From<IssuedActivation> for ActivationBody {
    fn from(a: IssuedActivation) -> Self {
        ActivationBody {
            activation_code: a.code.as_str().to_owned(),
            activation_expires_at: a.expires_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }
}

#[derive(Serialize)]
struct AccountDecisionBody {
    #[serde(flatten)]
    account: AccountBody,
    #[serde(flatten)]
    activation: Option<ActivationBody>,
}

// -------------------------------------------------------------------------
// Handlers
// -------------------------------------------------------------------------

pub(crate) async fn request_account(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = path_id(path).and_then(|organisation_id| {
        let body: AccountRequestBody = json_body(body)?;
        Ok(AccountRequest {
            organisation_id: OrganisationId::new(organisation_id),
            login: parse_login(&body.login)?,
            role: parse_role(&body.role)?,
        })
    });
    let request = parsed(&state, &creds, input).await?;
    let entry = state
        .consultation
        .request_account(&creds.presented(), request)
        .await?;
    let body = AccountHistoryBody::new(entry, Utc::now());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(crate) async fn pending_requests(State(state): State<AppState>, creds: Credentials) -> Answer {
    let list = state
        .consultation
        .pending_account_requests(&creds.presented())
        .await?;
    ok(serde_json::json!({ "requests": AccountHistoryBody::list(list) }))
}

pub(crate) async fn approve_account(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    decide_account(state, creds, path, true).await
}

pub(crate) async fn reject_account(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    decide_account(state, creds, path, false).await
}

async fn decide_account(
    state: AppState,
    creds: Credentials,
    path: PathId,
    approve: bool,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let AccountDecision {
        account,
        activation,
    } = state
        .consultation
        .decide_account(&creds.presented(), AccountId::new(id), approve)
        .await?;
    ok(AccountDecisionBody {
        account: AccountBody::from(account),
        activation: activation.map(ActivationBody::from),
    })
}

pub(crate) async fn request_reset(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let input = path_id(path).and_then(|id| {
        let body: ResetRequestBody = json_body(body)?;
        Ok((id, parse_kind(&body.kind)?))
    });
    let (account_id, kind) = parsed(&state, &creds, input).await?;
    let reset = state
        .consultation
        .request_reset(&creds.presented(), AccountId::new(account_id), kind)
        .await?;
    Ok((StatusCode::CREATED, Json(ResetBody::from(reset))).into_response())
}

pub(crate) async fn pending_resets(State(state): State<AppState>, creds: Credentials) -> Answer {
    let list = state
        .consultation
        .pending_resets(&creds.presented())
        .await?;
    ok(serde_json::json!({
        "resets": list.into_iter().map(ResetBody::from).collect::<Vec<_>>()
    }))
}

pub(crate) async fn approve_reset(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    decide_reset(state, creds, path, true).await
}

pub(crate) async fn reject_reset(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    decide_reset(state, creds, path, false).await
}

async fn decide_reset(state: AppState, creds: Credentials, path: PathId, approve: bool) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let ResetDecision {
        reset,
        credentials_revoked,
        activation,
    } = state
        .consultation
        .decide_reset(&creds.presented(), id, approve)
        .await?;
    ok(ResetDecisionBody {
        reset: ResetBody::from(reset),
        credentials_revoked,
        activation: activation.map(ActivationBody::from),
    })
}

pub(crate) async fn review(
    State(state): State<AppState>,
    creds: Credentials,
    path: PathId,
) -> Answer {
    let id = parsed(&state, &creds, path_id(path)).await?;
    let list = state
        .consultation
        .accounts_review(&creds.presented(), Some(OrganisationId::new(id)))
        .await?;
    ok(serde_json::json!({ "accounts": AccountHistoryBody::list(list) }))
}

#[derive(Serialize)]
pub(crate) struct AccountBody {
    id: AccountId,
    login: String,
    role: &'static str,
    state: &'static str,
    organisation_id: OrganisationId,
    organisation: String,
    organisation_kind: &'static str,
}

impl From<AccountView> for AccountBody {
    fn from(a: AccountView) -> Self {
        AccountBody {
            id: a.account_id,
            login: a.login.as_str().to_string(),
            role: a.role.as_str(),
            state: a.state.as_str(),
            organisation_id: a.organisation_id,
            organisation: a.organisation.as_str().to_string(),
            organisation_kind: a.kind.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_exactly() {
        assert_eq!(parse_login("ml.agent-7").unwrap().as_str(), "ml.agent-7");
        for bad in [" ml.agent", "ml.agent ", "", "a b", "é", &"x".repeat(65)] {
            let e = parse_login(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("login"), "{bad:?}");
            if bad.trim().len() > 2 {
                assert!(!e.message.contains(bad.trim()), "no echo: {}", e.message);
            }
        }
        assert_eq!(parse_role("manager").unwrap(), Role::Manager);
        assert_eq!(parse_role("officer").unwrap(), Role::Officer);
        assert!(parse_role(" agent").is_err());
        assert!(parse_role("Agent").is_err());
        assert_eq!(parse_kind("all").unwrap(), ResetKind::All);
        assert!(parse_kind("everything").is_err());
        assert!(parse_kind("all ").is_err());
    }
}
