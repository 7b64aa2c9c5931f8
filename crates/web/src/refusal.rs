//! A [`Refusal`] as HTTP, decided in one place.
//!
//! [`status`] gives each refusal its status once, for every surface. Each
//! surface then writes its own body and headers from that status:
//!
//! | surface | body | `Retry-After` |
//! |---|---|---|
//! | JSON API (`From<Refusal> for ApiError`) | `{"error": {"code", "message", "field"}}`, `WWW-Authenticate` on a 401 | yes, for a guard throttle |
//! | portal messages and fragments ([`portal_json`], [`portal_fragment`]) | `{"message": …}` or `<p class="erreur">`, French | no (kept as it was: the page's script shows the message and never retries by itself) |
//! | login ([`login`]) | `{"message": …}`, French | yes, for a throttled login with a known end |
//! | activation ([`activation`]) | step 1's page with French messages | no (kept as it was: a plain form the person submits again by hand) |
//! | token endpoint ([`token`]) | RFC 6749 §5.2 `{"error", "error_description"}`, `Pragma: no-cache` | no |
//!
//! A refusal that cannot come from a surface's operations still gets the
//! decided status there, with that surface's nearest message. The cause
//! of an `Unavailable` goes to the log here, never to the caller.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rempart_auth::lockout::INVALID_CREDENTIALS_FR;
use rempart_consult::activation::ACTIVATION_REFUSED_FR;
use rempart_consult::{LoginFailure, OAuthError, Refusal};
use serde::Serialize;

use crate::error::ApiError;
use crate::html::Html;

/// The status every surface answers `r` with.
pub(crate) fn status(r: &Refusal) -> StatusCode {
    match r {
        Refusal::Unauthenticated | Refusal::TokenRejected { .. } => StatusCode::UNAUTHORIZED,
        Refusal::AccountInactive
        | Refusal::Forbidden
        | Refusal::StepUpRequired
        | Refusal::BrowserSessionRequired
        | Refusal::AccountSuspended
        | Refusal::OrganisationFrozen => StatusCode::FORBIDDEN,
        Refusal::NotFound | Refusal::NotOffered => StatusCode::NOT_FOUND,
        Refusal::Invalid { .. } | Refusal::Restart => StatusCode::BAD_REQUEST,
        Refusal::Conflict(_) => StatusCode::CONFLICT,
        Refusal::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::LoginFailed(f) if f.is_throttled() => StatusCode::TOO_MANY_REQUESTS,
        Refusal::LoginFailed(_) => StatusCode::UNAUTHORIZED,
        Refusal::OAuth {
            error: OAuthError::InvalidClient,
            ..
        } => StatusCode::UNAUTHORIZED,
        Refusal::OAuth { .. } => StatusCode::BAD_REQUEST,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Logs the operator's cause of a fail-closed refusal (`what` says where);
/// the caller learns only that nothing was released.
fn log_cause(r: &Refusal, what: &'static str) {
    if let Refusal::Unavailable(cause) = r {
        tracing::error!(%cause, "{what} failed closed");
    }
}

fn retry_after(response: &mut Response, secs: u64) {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
}

// -------------------------------------------------------------------------
// JSON API
// -------------------------------------------------------------------------

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        log_cause(&r, "request");
        let status = status(&r);
        let code = match &r {
            Refusal::Unauthenticated | Refusal::TokenRejected { .. } => "unauthenticated",
            Refusal::AccountInactive => "account_inactive",
            Refusal::NotFound => "not_found",
            Refusal::Forbidden => "forbidden",
            Refusal::Invalid { field, reason } => return ApiError::invalid(*field, reason.clone()),
            Refusal::StepUpRequired => "step_up_required",
            Refusal::BrowserSessionRequired => "browser_session_required",
            Refusal::Throttled { .. } => "throttled",
            Refusal::AccountSuspended => "account_suspended",
            Refusal::OrganisationFrozen => "organisation_frozen",
            Refusal::Conflict(_) => "conflict",
            // Browser login and the token endpoint answer on their own
            // surfaces; should one reach the API, it reads as what it is.
            Refusal::LoginFailed(f) if f.is_throttled() => "throttled",
            Refusal::LoginFailed(_) => "unauthenticated",
            Refusal::Restart => "invalid_request",
            Refusal::NotOffered => "no_route",
            Refusal::OAuth { error, .. } => error.as_str(),
            Refusal::Unavailable(_) => {
                return ApiError::new(
                    status,
                    "unavailable",
                    "the service cannot answer right now; nothing was released",
                );
            }
        };
        let mut e = ApiError::new(status, code, r.to_string());
        match r {
            Refusal::TokenRejected { oauth_error } => e.dpop_error = Some(oauth_error),
            Refusal::Throttled { retry_after_secs } => e.retry_after = Some(retry_after_secs),
            _ => {}
        }
        e
    }
}

// -------------------------------------------------------------------------
// Portal: the page script's JSON messages and the HTML fragments
// -------------------------------------------------------------------------

/// What the portal says of a refusal, in French.
pub(crate) fn portal_text(r: &Refusal) -> &'static str {
    match r {
        // Pages never present a token; the same answer if one ever does.
        Refusal::Unauthenticated | Refusal::TokenRejected { .. } | Refusal::LoginFailed(_) => {
            "Votre session a expiré ou n'est pas valable sur cet appareil. Reconnectez-vous."
        }
        Refusal::AccountInactive => "Ce compte n'est pas actif.",
        Refusal::NotFound => "Aucun dossier visible pour vous ne correspond à cette demande.",
        Refusal::Forbidden => "Votre compte ne permet pas cette action.",
        Refusal::Invalid { .. } | Refusal::Restart | Refusal::OAuth { .. } => {
            "La demande n'est pas valable."
        }
        Refusal::Conflict(_) => "La demande ne peut plus être faite : l'état a changé.",
        Refusal::StepUpRequired => {
            "Cette action demande une confirmation avec votre clé d'accès \
             (sans clé d'accès : reconnectez-vous)."
        }
        Refusal::BrowserSessionRequired => {
            "Le bris de glace se fait depuis le portail, après confirmation avec votre clé d'accès."
        }
        Refusal::Throttled { .. } => "Trop de consultations : réessayez plus tard.",
        Refusal::AccountSuspended => "Ce compte est suspendu ; un responsable doit le réactiver.",
        Refusal::OrganisationFrozen => "Les accès de votre organisation sont gelés.",
        Refusal::NotOffered => NOT_OFFERED_FR,
        Refusal::Unavailable(_) => {
            "Le service ne peut pas répondre pour le moment ; rien n'a été communiqué."
        }
    }
}

/// A JSON answer `{"message": …}` for a page's script.
pub(crate) fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(serde_json::json!({ "message": text }))).into_response()
}

/// A refusal of a portal operation, for the page's script.
pub(crate) fn portal_json(r: Refusal) -> Response {
    log_cause(&r, "request");
    message(status(&r), portal_text(&r))
}

/// A refusal of a portal fragment, as the fragment.
pub(crate) fn portal_fragment(r: Refusal) -> Response {
    log_cause(&r, "request");
    let mut h = Html::new();
    h.raw("<p class=\"erreur\" role=\"alert\">")
        .text(portal_text(&r))
        .raw("</p>");
    h.into_response(status(&r))
}

// -------------------------------------------------------------------------
// Login
// -------------------------------------------------------------------------

/// What the login page shows when the service fails.
pub(crate) const LOGIN_UNAVAILABLE_FR: &str =
    "Le service ne peut pas répondre pour le moment. Réessayez plus tard.";

/// What a page says when this server does not offer browser login.
const NOT_OFFERED_FR: &str = "La connexion n'est pas disponible sur ce serveur.";

/// What the login page says of a refusal, in French: one message for every
/// credential failure, so it never tells whether an account exists.
pub(crate) fn login_text(r: &Refusal) -> String {
    match r {
        Refusal::LoginFailed(LoginFailure::Credentials(l)) => l.message_fr(),
        Refusal::LoginFailed(LoginFailure::Passkey) => {
            "La clé d'accès n'a pas pu être vérifiée.".to_owned()
        }
        Refusal::LoginFailed(LoginFailure::Federation) => {
            "La connexion par ProConnect n'a pas abouti. Recommencez depuis la page de connexion."
                .to_owned()
        }
        Refusal::Restart => {
            "La demande a expiré ou n'est pas valable. Rechargez la page et recommencez.".to_owned()
        }
        // A field too long to be anything real reads as a wrong credential.
        Refusal::Invalid { .. } => INVALID_CREDENTIALS_FR.to_owned(),
        Refusal::NotOffered => NOT_OFFERED_FR.to_owned(),
        Refusal::Unavailable(_) => LOGIN_UNAVAILABLE_FR.to_owned(),
        other => portal_text(other).to_owned(),
    }
}

/// A refused login, for the login page's script; a throttled one with a
/// known end carries `Retry-After`.
pub(crate) fn login(r: Refusal) -> Response {
    log_cause(&r, "login");
    let mut response = message(status(&r), &login_text(&r));
    if let Refusal::LoginFailed(f) = &r
        && let Some(secs) = f.retry_after_secs()
    {
        retry_after(&mut response, secs);
    }
    response
}

// -------------------------------------------------------------------------
// Activation
// -------------------------------------------------------------------------

/// A refused activation step: the status and step 1's French messages
/// (the activation page renders them; no `Retry-After`, see the module
/// doc).
pub(crate) fn activation(r: &Refusal) -> (StatusCode, Vec<String>) {
    log_cause(r, "activation");
    let text = match r {
        Refusal::LoginFailed(LoginFailure::Credentials(l)) if l.is_throttled() => l.message_fr(),
        // One message for every failure of step 1.
        Refusal::LoginFailed(_) => ACTIVATION_REFUSED_FR.to_owned(),
        Refusal::NotOffered => "L'activation n'est pas disponible sur ce serveur.".to_owned(),
        Refusal::Unavailable(_) => LOGIN_UNAVAILABLE_FR.to_owned(),
        // The ceremony is unknown, used, expired or out of attempts; and
        // anything else activation cannot be refused with: start again.
        _ => "La demande a expiré ou n'est plus valable : saisissez de nouveau votre \
              identifiant et votre code d'activation."
            .to_owned(),
    };
    (status(r), vec![text])
}

// -------------------------------------------------------------------------
// Token endpoint
// -------------------------------------------------------------------------

#[derive(Serialize)]
struct OAuthBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// An error of the token endpoint, in the shape of RFC 6749 §5.2.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = OAuthBody {
        error,
        error_description: description,
    };
    let mut response = (status, Json(body)).into_response();
    // RFC 6749 §5.1 asks for both on token answers; `no-store` is also
    // set for every answer by the router.
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A refused token request: `invalid_client` a 401, a failure on our side
/// a 503 `temporarily_unavailable`, everything else a 400.
pub(crate) fn token(r: Refusal) -> Response {
    log_cause(&r, "token request");
    let status = status(&r);
    match &r {
        Refusal::OAuth { error, description } => oauth_error(status, error.as_str(), description),
        Refusal::Unavailable(_) => oauth_error(
            status,
            "temporarily_unavailable",
            "the service cannot answer right now; no token was issued",
        ),
        // The token endpoint refuses only in OAuth's words; anything else
        // would be a request it cannot take.
        other => oauth_error(status, "invalid_request", &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rempart_auth::lockout::LoginRefusal;

    fn credentials(r: LoginRefusal) -> Refusal {
        Refusal::LoginFailed(LoginFailure::Credentials(r))
    }

    #[test]
    fn login_failures_never_tell_which_credential_failed() {
        let same = [
            credentials(LoginRefusal::UnknownAccount),
            credentials(LoginRefusal::WrongPassword),
            credentials(LoginRefusal::WrongCode),
            credentials(LoginRefusal::AccountUnavailable),
            Refusal::Invalid {
                field: "login",
                reason: "is too long".into(),
            },
        ];
        for r in &same {
            assert_eq!(login_text(r), INVALID_CREDENTIALS_FR);
        }
    }

    #[test]
    fn activation_step_one_failures_read_the_same() {
        for r in [
            LoginRefusal::UnknownAccount,
            LoginRefusal::WrongCode,
            LoginRefusal::AccountUnavailable,
        ] {
            let (status, text) = activation(&credentials(r));
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(text, vec![ACTIVATION_REFUSED_FR.to_owned()]);
        }
        let throttled = credentials(LoginRefusal::TooManyAttempts {
            retry_after_secs: 30,
        });
        let (status, text) = activation(&throttled);
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(text[0].contains("Trop de tentatives"));
    }

    #[test]
    fn retry_after_is_sent_where_it_was() {
        let throttled = credentials(LoginRefusal::TooManyAttempts {
            retry_after_secs: 30,
        });
        let login = login(throttled.clone());
        assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(login.headers()[header::RETRY_AFTER], "30");
        let guard = Refusal::Throttled {
            retry_after_secs: 60,
        };
        assert_eq!(ApiError::from(guard.clone()).retry_after, Some(60));
        assert!(
            portal_json(guard.clone())
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
        assert!(
            portal_fragment(guard)
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
        assert_eq!(activation(&throttled).0, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn token_refusals_keep_their_oauth_shape() {
        let client = token(Refusal::OAuth {
            error: OAuthError::InvalidClient,
            description: "x".into(),
        });
        assert_eq!(client.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(client.headers()[header::PRAGMA], "no-cache");
        let proof = token(Refusal::OAuth {
            error: OAuthError::InvalidDpopProof,
            description: "x".into(),
        });
        assert_eq!(proof.status(), StatusCode::BAD_REQUEST);
        let down = token(Refusal::Unavailable("cause".into()));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
