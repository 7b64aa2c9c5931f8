//! The HTTP edge of Rempart: the JSON API under `/api/v1`, and the
//! browser's login, portal pages and fragments ([`pages`]).
//!
//! Handlers only translate: they parse the request into typed values (a
//! bad value is a 400 naming the field, never an echo of the value), call
//! one operation of [`rempart_consult::Consultation`], and turn its answer
//! or [`rempart_consult::Refusal`] into JSON or a page; a refusal's status
//! is decided once, in `refusal.rs`, for every surface. Every rule about
//! who may see what lives in the consultation path, not here.
//!
//! Limits: body size, URI length, total header size and request time
//! ([`Limits`]), checked at the edge before any handler runs, for every
//! route alike: a body shorter than its `Content-Length` is a 400, one that
//! does not arrive in time a 408, an oversized one a 413, a long URI a 414,
//! large headers a 431, invalid UTF-8 in the path or query a 400. Every
//! error, including unknown routes, wrong methods, oversized requests and
//! heads hyper itself refuses ([`conn`]), has the shape `{"error": {"code",
//! "message", "field"}}`, except at the OAuth token endpoint (`POST
//! /api/v1/token`), whose errors are RFC 6749 §5.2's `{"error",
//! "error_description"}`.

mod accounts;
mod activation;
mod api;
mod client;
mod conn;
mod error;
mod html;
mod incidents;
pub mod pages;
mod refusal;
mod request;
mod token;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rempart_consult::Consultation;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use client::{BadProxy, TrustedProxies};
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
    /// Longest request URI (path and query), in bytes.
    pub uri_bytes: usize,
    /// Longest a request may take: a body not received by then is a 408
    /// (the client's delay), an answer not ready by then a 503.
    pub request_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 64 * 1024,
            header_bytes: 16 * 1024,
            uri_bytes: 8 * 1024,
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
    pub health: Health,
    /// Load balancers believed about the client they forward for.
    pub proxies: TrustedProxies,
}

/// What `/readyz` adds to the parts' own checks: whether this process was
/// told to stop and is draining (still serving, no longer ready).
#[derive(Debug, Clone, Default)]
pub struct Health {
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    /// From now on `/readyz` answers 503 `draining`.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }
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

/// The limits, the body received whole, and headers every answer carries.
async fn guard_rails(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = state.limits;
    let deadline = Instant::now() + limits.request_time;
    let token = request.uri().path() == TOKEN_PATH;
    let admitted = match forwarded_client(&state.proxies, request) {
        Ok(request) => admit(request, &limits, deadline).await,
        Err(refused) => Err(refused),
    };
    let mut response = match admitted {
        Err(refused) => refused.into_response_for(token),
        Ok(request) => match tokio::time::timeout_at(deadline, next.run(request)).await {
            Ok(response) => response,
            Err(_) if token => crate::refusal::oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the request took too long; no token was issued",
            ),
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; nothing was released",
            )
            .into_response(),
        },
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

/// Replaces the peer's address (`ConnectInfo`) by the client's when the
/// peer is a trusted proxy (see [`TrustedProxies`]).
fn forwarded_client(proxies: &TrustedProxies, mut request: Request) -> Result<Request, Refused> {
    if proxies.is_empty() {
        return Ok(request);
    }
    let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .copied()
    else {
        return Ok(request);
    };
    let client = proxies.client(peer, request.headers()).map_err(Refused)?;
    request.extensions_mut().insert(ConnectInfo(client));
    Ok(request)
}

/// The one endpoint whose errors take the OAuth shape.
const TOKEN_PATH: &str = "/api/v1/token";

/// A request refused at the edge, before any handler: the same for every
/// route and every caller, so it says nothing about the API or accounts,
/// and leaves no ledger leaf (no operation was attempted).
struct Refused(ApiError);

impl Refused {
    fn into_response_for(self, token_endpoint: bool) -> Response {
        if token_endpoint {
            crate::refusal::oauth_error(self.0.status, "invalid_request", &self.0.message)
        } else {
            self.0.into_response()
        }
    }
}

/// Checks the head against the limits and receives the body whole (within
/// its size and the request's time), so that handlers only ever see
/// complete, bounded requests.
async fn admit(request: Request, limits: &Limits, deadline: Instant) -> Result<Request, Refused> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.header_bytes {
        return Err(Refused(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers exceed {} bytes", limits.header_bytes),
        )));
    }
    let uri = request.uri();
    let uri_bytes = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
    if uri_bytes > limits.uri_bytes {
        return Err(Refused(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI exceeds {} bytes", limits.uri_bytes),
        )));
    }
    check_utf8(uri.path(), uri.query()).map_err(Refused)?;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return Ok(Request::from_parts(parts, body));
    }
    match tokio::time::timeout_at(deadline, receive(body, limits.body_bytes)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(Refused(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                limits.request_time.as_secs()
            ),
        ))),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is too large",
    )
}

/// The whole body, at most `limit` bytes.
async fn receive(mut body: Body, limit: usize) -> Result<Bytes, Refused> {
    let mut received = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        // The connection ended (or the chunked encoding broke) before the
        // length the head announced.
        let frame = frame.map_err(|_| {
            Refused(ApiError::invalid(
                "body",
                "ends before the length its Content-Length (or chunked encoding) announced",
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            if received.len() + data.len() > limit {
                return Err(Refused(too_large()));
            }
            received.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(received))
}

/// Path and query must decode to UTF-8: every handler reads them as text.
/// A query error names the parameter when its name is readable.
fn check_utf8(path: &str, query: Option<&str>) -> Result<(), ApiError> {
    if std::str::from_utf8(&percent_decode(path.as_bytes())).is_err() {
        return Err(ApiError::invalid(
            "path",
            "is not valid UTF-8 once percent-decoded",
        ));
    }
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name.as_bytes());
        let Ok(name) = String::from_utf8(name) else {
            return Err(ApiError::invalid(
                "query",
                "has a parameter name that is not valid UTF-8 once percent-decoded",
            ));
        };
        if std::str::from_utf8(&percent_decode(value.as_bytes())).is_err() {
            let field = if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                name
            } else {
                "query".to_string()
            };
            return Err(ApiError::invalid(
                field,
                "is not valid UTF-8 once percent-decoded",
            ));
        }
    }
    Ok(())
}

/// `%XX` sequences decoded; anything else, a stray `%` included, kept.
fn percent_decode(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                text.get(i + 1).copied().and_then(hex),
                text.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish, and returns. Every answer
/// given was ledgered before it left; the caller closes the ledger after.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    conn::serve(listener, router(state), limits, shutdown).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_utf8() {
        assert_eq!(percent_decode(b"a%20b%zz%4"), b"a b%zz%4".to_vec());
        assert_eq!(percent_decode(b"%C3%A9"), "é".as_bytes().to_vec());
        assert!(check_utf8("/api/v1/persons/%C3%A9", Some("purpose=%C3%A9")).is_ok());
        let e = check_utf8("/api/v1/persons/%FF", None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("path"));
        let e = check_utf8("/api/v1/caseload", Some("limit=1&purpose=%FF%FE")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("purpose"));
        let e = check_utf8("/x", Some("%FF=1")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("query"));
        assert!(!e.message.contains("%FF"));
    }
}
