//! One error shape everywhere: `{"error": {"code", "message", "field"}}`
//! (the token endpoint excepted: it speaks OAuth, see `token.rs`). A
//! consultation's `Refusal` becomes an [`ApiError`] in `refusal.rs`, where
//! every surface's mapping is decided.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// For a 401: the OAuth error of the `WWW-Authenticate: DPoP` challenge
    /// (`invalid_token`, `invalid_dpop_proof`), if a DPoP-bound token was
    /// refused; other 401s carry a plain challenge.
    pub dpop_error: Option<&'static str>,
    /// Seconds for a `Retry-After` header (throttled requests).
    pub retry_after: Option<u32>,
}

/// The signature algorithms DPoP proofs may use (RFC 9449 §7.1 `algs`).
const DPOP_ALGS: &str = "ES256 EdDSA";

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            dpop_error: None,
            retry_after: None,
        }
    }

    /// A 400 naming the field at fault and why.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: format!("{field}: {}", reason.into()),
            field: Some(field),
            dpop_error: None,
            retry_after: None,
        }
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub fn not_found_route() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
    }
}

impl ApiError {
    fn body(&self) -> Body<'_> {
        Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        }
    }

    /// The JSON body alone, for answers written below the router.
    pub(crate) fn json_body(&self) -> Vec<u8> {
        // Serialising strings into a Vec cannot fail; the fallback keeps
        // the shape all the same.
        serde_json::to_vec(&self.body()).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"","field":null}}"#.to_vec()
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the schemes that would work;
            // RFC 9449 §7.1: a refused DPoP-bound token says why.
            let challenge = match self.dpop_error {
                Some(error) => format!("DPoP error=\"{error}\", algs=\"{DPOP_ALGS}\""),
                None => format!("Bearer, DPoP algs=\"{DPOP_ALGS}\""),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}
