//! `POST /api/v1/token`: the OAuth token endpoint for API clients
//! (client credentials, `private_key_jwt`, DPoP).
//!
//! This endpoint alone answers errors in the OAuth shape of RFC 6749 §5.2,
//! `{"error": "<code>", "error_description": "<text>"}`, because OAuth
//! client libraries read exactly that here; every other endpoint keeps
//! `{"error": {"code", "message", "field"}}`, including 401s for refused
//! tokens, which add `WWW-Authenticate: DPoP error="…"` (RFC 9449 §7.1).
//! A refusal's status and body are decided in `refusal.rs`
//! (`refusal::token`): `invalid_client` is a 401, a failure on our side a
//! 503 (`temporarily_unavailable`), everything else a 400.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rempart_consult::TokenRequest;

use crate::AppState;
use crate::refusal::oauth_error;
use crate::request::single_proof;

/// The form fields read; others are ignored (RFC 6749 §3.2).
const FIELDS: [&str; 5] = [
    "grant_type",
    "client_assertion_type",
    "client_assertion",
    "client_id",
    "scope",
];

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

pub(crate) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return invalid_request("content-type: must be application/x-www-form-urlencoded");
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body: is too large",
            );
        }
        Err(_) => return invalid_request("body: cannot be read"),
    };
    let mut values: [Option<String>; FIELDS.len()] = Default::default();
    for (k, v) in form_urlencoded::parse(&body) {
        if let Some(i) = FIELDS.iter().position(|f| *f == k) {
            if values[i].is_some() {
                // RFC 6749 §3.2: no parameter more than once.
                return invalid_request(&format!("{k}: is given more than once"));
            }
            values[i] = Some(v.into_owned());
        }
    }
    let [
        grant_type,
        client_assertion_type,
        client_assertion,
        client_id,
        scope,
    ] = &values;
    let request = TokenRequest {
        grant_type: grant_type.as_deref(),
        client_assertion_type: client_assertion_type.as_deref(),
        client_assertion: client_assertion.as_deref(),
        client_id: client_id.as_deref(),
        scope: scope.as_deref(),
        proof: single_proof(&headers),
    };
    match state.consultation.issue_token(request).await {
        Ok(answer) => {
            let mut response = Json(answer).into_response();
            response
                .headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(refusal) => crate::refusal::token(refusal),
    }
}
