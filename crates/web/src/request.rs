//! What every handler module shares: the caller's credentials as the
//! request presents them, body, path and query parsing with errors that
//! name the field, and the answer type. Handler modules (`api`,
//! `accounts`, `token`, `pages`, `activation`) depend on this module and
//! never on each other's helpers.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rempart_auth::access_token::TOKEN_PREFIX;
use rempart_consult::Presented;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// What a request presents to prove who is calling, read from its parts
/// once: the `Authorization` header, and for a DPoP-bound access token
/// also the one `DPoP` header, the method and the URL the proof must name.
///
/// That URL is the configured public URL ([`Consultation::api_public_url`],
/// `rempart serve --public-url`) followed by the request's path, never
/// one built from the `Host` header: a client must not choose what its
/// proofs are checked against, and behind a proxy the server would not
/// know its own public name anyway. The query is left out (RFC 9449 §4.3).
///
/// [`Consultation::api_public_url`]: rempart_consult::Consultation::api_public_url
pub(crate) struct Credentials {
    authorization: Option<String>,
    proof: Option<String>,
    method: Method,
    url: String,
}

impl Credentials {
    /// The credential as the consultation path takes it. A header that is
    /// neither `Bearer <credential>` nor an access token counts as a
    /// malformed credential (401), like a missing one.
    pub(crate) fn presented(&self) -> Presented<'_> {
        let Some(authorization) = self.authorization.as_deref() else {
            return Presented::Nothing;
        };
        if is_access_token(authorization) {
            return Presented::AccessToken {
                authorization,
                proof: self.proof.as_deref(),
                method: self.method.as_str(),
                url: &self.url,
            };
        }
        match authorization.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Presented::ApiCredential(token.trim())
            }
            _ => Presented::Nothing,
        }
    }
}

/// `DPoP <anything>`, or `Bearer rmpat_…` (a DPoP-bound token used as a
/// bearer token: handed to the path so that it is refused as such and
/// ledgered, RFC 9449 §7.2).
fn is_access_token(authorization: &str) -> bool {
    match authorization.split_once(' ') {
        Some((scheme, rest)) => {
            scheme.eq_ignore_ascii_case("dpop")
                || (scheme.eq_ignore_ascii_case("bearer")
                    && rest.trim_start().starts_with(TOKEN_PREFIX))
        }
        None => false,
    }
}

/// The request's one `DPoP` header; `None` if absent, repeated (RFC 9449
/// §4.3: exactly one) or not visible ASCII.
pub(crate) fn single_proof(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all("dpop").iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// The client's address as the guard sees it: the connection's peer.
/// Forwarding headers are not trusted (anyone can write them); a proxy in
/// front must be taught to this server before they are.
pub(crate) fn client(peer: SocketAddr) -> Option<std::net::IpAddr> {
    Some(peer.ip())
}

/// A JSON body, with errors naming the field (by its path) and the rule.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            )
        } else {
            ApiError::invalid("body", "cannot be read")
        }
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            serde_json::error::Category::Data => {
                let text = inner.to_string();
                if text.starts_with("missing field") {
                    return missing_field(&text);
                } else if text.starts_with("unknown field") {
                    "is not a known field"
                } else {
                    "has the wrong type or an invalid value"
                }
            }
            serde_json::error::Category::Io => "cannot be read",
        };
        let field = if path == "." || path == "?" || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, reason)
    })?;
    de.end()
        .map_err(|_| ApiError::invalid("body", "has trailing characters after the JSON value"))?;
    Ok(value)
}

/// serde's "missing field `x` at line…" → field `x`, "is required".
fn missing_field(text: &str) -> ApiError {
    let name = text
        .split('`')
        .nth(1)
        .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or("body");
    ApiError::invalid(name.to_string(), "is required")
}

pub(crate) fn path_id(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<i64, ApiError> {
    match path {
        Ok(Path(text)) => parse_id("id", &text),
        Err(_) => Err(ApiError::invalid("id", "must be a positive integer")),
    }
}

/// A request that does not parse is answered 400 only once its credential
/// is known good: an unauthenticated caller learns nothing about the API's
/// validation, and gets the same 401 (ledgered) as any other.
pub(crate) async fn parsed<T>(
    state: &AppState,
    creds: &Credentials,
    input: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match input {
        Ok(v) => Ok(v),
        Err(invalid) => {
            state.consultation.whoami(&creds.presented()).await?;
            Err(invalid)
        }
    }
}

pub(crate) type Answer = Result<Response, ApiError>;

pub(crate) fn ok<T: Serialize>(body: T) -> Answer {
    Ok(Json(body).into_response())
}

impl FromRequestParts<AppState> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Credentials, Infallible> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (proof, url) = if authorization.as_deref().is_some_and(is_access_token) {
            let url = state
                .consultation
                .api_public_url()
                .map(|base| format!("{base}{}", parts.uri.path()))
                .unwrap_or_default();
            (single_proof(&parts.headers).map(str::to_owned), url)
        } else {
            (None, String::new())
        };
        Ok(Credentials {
            authorization,
            proof,
            method: parts.method.clone(),
            url,
        })
    }
}

pub(crate) fn parse_id(field: &str, text: &str) -> Result<i64, ApiError> {
    match text.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::invalid(field, "must be a positive integer")),
    }
}
