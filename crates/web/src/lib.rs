//! The HTTP edge of Rempart: the JSON API under `/api/v1`, and the
//! browser's login, portal pages and fragments ([`pages`]).
//!
//! Handlers only translate: they parse the request into typed values (a
//! bad value is a 400 naming the field, never an echo of the value), call
//! one operation of [`rempart_consult::Consultation`], and turn its answer
//! or [`rempart_consult::Refusal`] into JSON. Every rule about who may see
//! what lives in the consultation path, not here.
//!
//! Limits: body size, total header size and request time
//! ([`Limits`]); every error, including unknown routes, wrong methods and
//! oversized requests, has the shape `{"error": {"code", "message", "field"}}`,
//! except at the OAuth token endpoint (`POST /api/v1/token`), whose errors
//! are RFC 6749 §5.2's `{"error", "error_description"}`.

mod accounts;
mod activation;
mod api;
mod error;
pub mod pages;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rempart_consult::Consultation;
use tokio::net::TcpListener;

pub use error::ApiError;

/// The OpenAPI document served at `/api/v1/openapi.json`, written by hand
/// and checked against the router by the tests and by schemathesis.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub body_bytes: usize,
    /// Largest total size of the request's header names and values, in bytes.
    pub header_bytes: usize,
    /// Longest a request may take before it is abandoned with a 503.
    pub request_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 64 * 1024,
            header_bytes: 16 * 1024,
            request_time: Duration::from_secs(10),
        }
    }
}

/// What every handler shares. Cloned for every request (by axum, for each
/// extractor and the middleware): the consultation behind one `Arc` costs
/// one count instead of one per part it holds, which showed in profiles.
#[derive(Debug, Clone)]
pub struct AppState {
    pub consultation: Arc<Consultation>,
    pub limits: Limits,
}

/// The whole API, with its limits and error shapes.
pub fn router(state: AppState) -> Router {
    let limits = state.limits;
    api::routes()
        .merge(pages::routes())
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept this method",
            )
        })
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), guard_rails))
        .with_state(state)
}

/// Header size and request time limits, and headers every answer carries.
async fn guard_rails(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = state.limits;
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let mut response = if header_bytes > limits.header_bytes {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers exceed {} bytes", limits.header_bytes),
        )
        .into_response()
    } else {
        match tokio::time::timeout(limits.request_time, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; nothing was released",
            )
            .into_response(),
        }
    };
    let headers = response.headers_mut();
    // Answers may hold personal data: never cached, never sniffed.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish, and returns. Every answer
/// given was ledgered before it left; the caller closes the ledger after.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
