//! The browser's side: server-rendered pages in French, the login and
//! session endpoints their script calls, and the portal's fragments.
//!
//! | route | what |
//! |---|---|
//! | `GET /connexion` | login page: passkey button, password + code form |
//! | `POST /connexion/defi` | starts a login ceremony (device proof) |
//! | `POST /connexion/mot-de-passe` | password + TOTP login (device proof) |
//! | `POST /connexion/cle?ceremonie=…` | passkey login (device proof) |
//! | `POST /connexion/federation/debut` | starts a ProConnect login (device proof): the provider's URL |
//! | `GET /connexion/federation/retour` | the provider's redirect: a page whose script posts code and state |
//! | `POST /connexion/federation/fin` | finishes a ProConnect login (device proof, same key) |
//! | `GET /portail` | the portal's shell: the session handle, no personal data |
//! | `GET /portail/f/dossiers` | fragment: my caseload's first page |
//! | `GET /portail/f/personne/{id}?finalite=…` | fragment: one person, allowed groups only |
//! | `POST /portail/f/personne/{id}/bris-de-glace` | break-glass (needs a step-up within 5 min) |
//! | `POST /portail/cle/debut`, `/portail/cle/fin?ceremonie=…` | register a passkey |
//! | `POST /portail/verification/debut`, `/fin?ceremonie=…` | step-up |
//! | `GET /deconnexion`, `POST /deconnexion` | logout page, logout |
//! | `GET /activation`, `POST /activation`, `/activation/facteurs` | first factors with an activation code (`crate::activation`) |
//! | `GET /static/*.js`, `/static/rempart.css` | scripts and style, from the binary |
//!
//! Every request after login carries the session cookie and a device
//! proof made by the key the session is bound to; the shell (a navigation,
//! which cannot carry one) holds nothing but the session's public handle.
//! CSRF: every state-changing request is a `fetch()` with a `DPoP` header a
//! cross-site page cannot produce for our key (and cannot even send without
//! a CORS preflight we never grant), and the cookie is `SameSite=Strict`.
//!
//! HTML is written by hand through [`Html`], whose only way to add a
//! dynamic value escapes it (`raw` takes `&'static str` only): a handful
//! of small pages did not justify a template engine and its build time.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rempart_consult::login::LoginKind;
use rempart_consult::{
    LeafRef, LoginAnswer, LoginFailure, NirShown, PasswordForm, Presented, ProofRequest, Refusal,
    Shown,
};
use rempart_domain::{FieldGroup, PersonId, Purpose};
use serde::Deserialize;

use crate::AppState;
use crate::html::{Html, page_end, page_start};
use crate::refusal::{self, LOGIN_UNAVAILABLE_FR, message};

/// The session cookie's name. `__Host-` makes the browser refuse it unless
/// it is `Secure`, has `Path=/` and no `Domain` (no subdomain can set it).
pub const SESSION_COOKIE: &str = "__Host-rempart_session";
/// The trusted-browser cookie: a device token, long-lived, that gives this
/// browser's password logins a failure counter of their own (so that
/// someone failing elsewhere cannot lock the owner out). It opens nothing
/// by itself.
pub const DEVICE_COOKIE: &str = "__Host-rempart_device";

/// Where the identity provider sends the browser back after a federated
/// login: the redirect URI registered with it is the public URL followed by
/// this path.
pub const FEDERATION_CALLBACK_PATH: &str = "/connexion/federation/retour";

/// Rows in the caseload fragment.
const CASELOAD_PAGE: u32 = 50;

const DEVICE_JS: &str = include_str!("../assets/device.js");
const PASSKEY_JS: &str = include_str!("../../auth/assets/passkey.js");
const PORTAL_JS: &str = include_str!("../assets/portail.js");
const STYLE_CSS: &str = include_str!("../assets/rempart.css");

/// The policy every page and fragment carries: scripts only from this
/// origin (no inline script at all), no framing, nothing else loaded.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/connexion", get(login_page))
        .route("/connexion/defi", post(start_login))
        .route("/connexion/mot-de-passe", post(password_login))
        .route("/connexion/cle", post(passkey_login))
        .route("/connexion/federation/debut", post(start_federated_login))
        .route(FEDERATION_CALLBACK_PATH, get(federation_return_page))
        .route("/connexion/federation/fin", post(federated_login))
        .route("/portail", get(portal_page))
        .route("/portail/f/dossiers", get(caseload_fragment))
        .route("/portail/f/personne/{id}", get(person_fragment))
        .route(
            "/portail/f/personne/{id}/bris-de-glace",
            post(break_glass_fragment),
        )
        .route("/portail/cle/debut", post(start_registration))
        .route("/portail/cle/fin", post(finish_registration))
        .route("/portail/verification/debut", post(start_step_up))
        .route("/portail/verification/fin", post(finish_step_up))
        .route("/deconnexion", get(logout_page).post(logout))
        .route("/static/device.js", get(|| script(DEVICE_JS)))
        .route("/static/passkey.js", get(|| script(PASSKEY_JS)))
        .route("/static/portail.js", get(|| script(PORTAL_JS)))
        .route(
            "/static/rempart.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .merge(crate::activation::routes())
        .layer(middleware::from_fn(security_headers))
}

async fn script(text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Headers of every page, fragment and script (`no-store` and `nosniff`
/// come from the router's guard rails).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

// -------------------------------------------------------------------------
// HTML, escaped by construction
// -------------------------------------------------------------------------

// -------------------------------------------------------------------------
// Requests
// -------------------------------------------------------------------------

/// The session cookie's value, if the request has exactly one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, SESSION_COOKIE)
}

/// The one cookie named `wanted`, if exactly one is present.
fn named_cookie<'h>(headers: &'h HeaderMap, wanted: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == wanted
            {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// The one `DPoP` header, if exactly one is present.
fn proof_header(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all("dpop").iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// The public URL of this request (what the device proof names).
fn public_url(state: &AppState, path: &str) -> Option<String> {
    state
        .consultation
        .public_url()
        .map(|base| format!("{base}{path}"))
}

/// Runs `f` with the request's session as presented (cookie, proof,
/// method, public URL); a request without a cookie presents nothing.
async fn with_session<T, F>(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    f: F,
) -> T
where
    F: AsyncFnOnce(&Presented<'_>) -> T,
{
    let url = public_url(state, path).unwrap_or_default();
    let presented = match session_cookie(headers) {
        Some(cookie) => Presented::Session {
            cookie,
            proof: proof_header(headers),
            method: method.as_str(),
            url: &url,
        },
        None => Presented::Nothing,
    };
    f(&presented).await
}

fn proof_request<'a>(headers: &'a HeaderMap, method: &'a Method, url: &'a str) -> ProofRequest<'a> {
    ProofRequest {
        proof: proof_header(headers),
        method: method.as_str(),
        url,
    }
}

fn query_value(raw: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// -------------------------------------------------------------------------
// Answers
// -------------------------------------------------------------------------

/// Sets the session cookie and tells the page where to go and its handle.
fn logged_in(answer: LoginAnswer) -> Response {
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        answer.cookie.as_str(),
        answer.max_age_secs
    );
    // `__Host-` cookies must name `Path=/`; the device token is of use to
    // the password form only, but is as safe sent everywhere: it opens
    // nothing by itself.
    let device = format!(
        "{DEVICE_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        answer.device_token.as_str(),
        answer.device_max_age_secs
    );
    let mut response = axum::Json(serde_json::json!({
        "next": "/portail",
        "handle": answer.handle,
        "high_risk": answer.high_risk,
        "failed_attempts_elsewhere": answer.failed_elsewhere,
    }))
    .into_response();
    match (
        HeaderValue::from_str(&cookie),
        HeaderValue::from_str(&device),
    ) {
        (Ok(v), Ok(d)) => {
            response.headers_mut().insert(header::SET_COOKIE, v);
            response.headers_mut().append(header::SET_COOKIE, d);
            response
        }
        _ => message(StatusCode::SERVICE_UNAVAILABLE, LOGIN_UNAVAILABLE_FR),
    }
}

fn clear_cookie(response: &mut Response) {
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-rempart_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
}

// -------------------------------------------------------------------------
// Pages
// -------------------------------------------------------------------------

async fn login_page(State(state): State<AppState>) -> Response {
    let mut h = Html::new();
    page_start(&mut h, "Connexion", "connexion", None);
    h.raw("<main><h1>Connexion à Rempart</h1>")
        .raw("<section><h2>Avec une clé d'accès</h2>")
        .raw("<p>Votre clé d'accès (passkey) suffit : elle est liée à cet appareil ou à votre clé de sécurité.</p>")
        .raw("<button id=\"cle\" type=\"button\">Se connecter avec une clé d'accès</button></section>");
    // Offered only when a provider is configured (`rempart serve --oidc-…`).
    if state.consultation.federation_issuer().is_some() {
        h.raw("<section><h2>Avec ProConnect</h2>")
            .raw("<p>L'identité de votre organisation, avec sa double authentification.</p>")
            .raw("<button id=\"proconnect\" type=\"button\">Se connecter avec ProConnect</button></section>");
    }
    h
        .raw("<section><h2>Avec un mot de passe et un code</h2>")
        .raw("<form id=\"mot-de-passe\" autocomplete=\"on\">")
        .raw("<label for=\"login\">Identifiant</label>")
        .raw("<input id=\"login\" name=\"login\" autocomplete=\"username\" required maxlength=\"128\">")
        .raw("<label for=\"password\">Mot de passe</label>")
        .raw("<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required maxlength=\"128\">")
        .raw("<label for=\"code\">Code à usage unique (application d'authentification)</label>")
        .raw("<input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required pattern=\"[0-9]{6}\" maxlength=\"6\">")
        .raw("<button id=\"envoyer\" type=\"submit\">Se connecter</button></form></section>")
        .raw("<p id=\"message\" role=\"alert\"></p>")
        .raw("<p>Compte nouvellement approuvé, ou facteurs réinitialisés ? ")
        .raw("<a href=\"/activation\">Activer votre compte avec le code reçu</a></p></main>");
    page_end(&mut h);
    h.into_response(StatusCode::OK)
}

/// Where the identity provider sends the browser back. The code and the
/// state stay in the address for the page's script, which posts them with
/// a proof by the device key made before leaving (a navigation cannot
/// carry one) and then removes them from the address and the history;
/// nothing of them is written into the page.
async fn federation_return_page() -> Response {
    let mut h = Html::new();
    page_start(&mut h, "Connexion", "federation", None);
    h.raw("<main><h1>Connexion avec ProConnect</h1>")
        .raw("<p id=\"message\" role=\"alert\">Connexion en cours…</p>")
        .raw("<p><a href=\"/connexion\">Retour à la page de connexion</a></p></main>");
    page_end(&mut h);
    h.into_response(StatusCode::OK)
}

/// The portal's shell. Served to any request with a well-formed session
/// cookie (a navigation cannot carry a device proof, so nothing here is
/// personal: the handle only ties proofs to the session); everything
/// else is loaded with proofs. Without a cookie: to the login page.
async fn portal_page(headers: HeaderMap) -> Response {
    let handle = session_cookie(&headers)
        .and_then(|c| rempart_consult::authenticate::parse_session(c).ok())
        .map(|(_, handle)| handle);
    let Some(handle) = handle else {
        return to_login();
    };
    let mut h = Html::new();
    page_start(&mut h, "Portail", "portail", Some(&handle));
    h.raw("<header><h1>Rempart — portail des partenaires</h1><nav>")
        .raw("<a id=\"lien-dossiers\" href=\"/portail/f/dossiers\" data-fragment>Mes dossiers</a> ")
        .raw("<button id=\"ajouter-cle\" type=\"button\">Ajouter une clé d'accès</button> ")
        .raw("<button id=\"verifier\" type=\"button\">Confirmer avec ma clé</button> ")
        .raw("<button id=\"deconnexion\" type=\"button\">Se déconnecter</button>")
        .raw("</nav></header><p id=\"message\" role=\"status\"></p>")
        .raw("<main id=\"contenu\" aria-live=\"polite\"><p>Chargement…</p></main>");
    page_end(&mut h);
    h.into_response(StatusCode::OK)
}

fn to_login() -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/connexion")],
        "",
    )
        .into_response()
}

/// The logout page: its script ends the session (with a proof, if this
/// browser still holds the key) and forgets the device key.
async fn logout_page(headers: HeaderMap) -> Response {
    let handle = session_cookie(&headers)
        .and_then(|c| rempart_consult::authenticate::parse_session(c).ok())
        .map(|(_, handle)| handle);
    let mut h = Html::new();
    page_start(&mut h, "Déconnexion", "deconnexion", handle.as_deref());
    h.raw("<main><h1>Déconnexion</h1><p id=\"message\" role=\"status\">Déconnexion en cours…</p>")
        .raw("<p><a href=\"/connexion\">Se connecter à nouveau</a></p></main>");
    page_end(&mut h);
    h.into_response(StatusCode::OK)
}

// -------------------------------------------------------------------------
// Login
// -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    kind: String,
}

async fn start_login(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<StartBody>(&body) else {
        return refusal::login(Refusal::Restart);
    };
    let kind = match body.kind.as_str() {
        "password" => LoginKind::Password,
        "passkey" => LoginKind::Passkey,
        _ => return refusal::login(Refusal::Restart),
    };
    let Some(url) = public_url(&state, "/connexion/defi") else {
        return refusal::login(Refusal::NotOffered);
    };
    let proof = proof_request(&headers, &method, &url);
    match state.consultation.start_login(kind, proof).await {
        Ok(started) => axum::Json(serde_json::json!({
            "ceremony": started.ceremony,
            "options": started.options,
        }))
        .into_response(),
        Err(e) => refusal::login(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    ceremony: String,
    login: String,
    password: String,
    code: String,
}

async fn password_login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<PasswordBody>(&body) else {
        return refusal::login(Refusal::Restart);
    };
    let Some(url) = public_url(&state, "/connexion/mot-de-passe") else {
        return refusal::login(Refusal::NotOffered);
    };
    let form = PasswordForm {
        ceremony: &body.ceremony,
        login: &body.login,
        password: &body.password,
        code: &body.code,
        device: named_cookie(&headers, DEVICE_COOKIE),
    };
    let proof = proof_request(&headers, &method, &url);
    // The client's address: the peer's, or the one a proxy listed in
    // `--trusted-proxy` forwards for (`client.rs`); none is by default.
    match state
        .consultation
        .login_password(form, proof, peer.ip())
        .await
    {
        Ok(answer) => logged_in(answer),
        Err(e) => refusal::login(e),
    }
}

async fn passkey_login(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let Some(ceremony) = query_value(raw.as_deref(), "ceremonie") else {
        return refusal::login(Refusal::Restart);
    };
    let Ok(json) = std::str::from_utf8(&body) else {
        return refusal::login(Refusal::LoginFailed(LoginFailure::Passkey));
    };
    let Some(url) = public_url(&state, "/connexion/cle") else {
        return refusal::login(Refusal::NotOffered);
    };
    let proof = proof_request(&headers, &method, &url);
    match state
        .consultation
        .login_passkey(
            &ceremony,
            json,
            proof,
            named_cookie(&headers, DEVICE_COOKIE),
        )
        .await
    {
        Ok(answer) => logged_in(answer),
        Err(e) => refusal::login(e),
    }
}

/// Begins a ProConnect login for the page's new device key; the page then
/// goes to the provider's URL.
async fn start_federated_login(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(url) = public_url(&state, "/connexion/federation/debut") else {
        return refusal::login(Refusal::NotOffered);
    };
    let proof = proof_request(&headers, &method, &url);
    match state.consultation.start_federated_login(proof).await {
        Ok(started) => {
            axum::Json(serde_json::json!({ "redirect": started.authorization_url })).into_response()
        }
        Err(e) => refusal::login(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FederatedBody {
    code: String,
    state: String,
}

/// Finishes a ProConnect login: the callback's code and state, with a
/// proof by the key that began it.
async fn federated_login(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(url) = public_url(&state, "/connexion/federation/fin") else {
        return refusal::login(Refusal::NotOffered);
    };
    let proof = proof_request(&headers, &method, &url);
    // A body that is not the page's is refused like any other bad callback,
    // by the consultation path, which ledgers it.
    let body = serde_json::from_slice::<FederatedBody>(&body).unwrap_or(FederatedBody {
        code: String::new(),
        state: String::new(),
    });
    let callback = rempart_consult::FederatedCallback {
        code: &body.code,
        state: &body.state,
        device: named_cookie(&headers, DEVICE_COOKIE),
    };
    match state.consultation.login_federated(callback, proof).await {
        Ok(answer) => logged_in(answer),
        Err(e) => refusal::login(e),
    }
}

// -------------------------------------------------------------------------
// Session operations
// -------------------------------------------------------------------------

async fn start_registration(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let started = with_session(&state, &headers, &method, "/portail/cle/debut", async |p| {
        state.consultation.start_passkey_registration(p).await
    })
    .await;
    match started {
        Ok(s) => axum::Json(serde_json::json!({ "ceremony": s.ceremony, "options": s.options }))
            .into_response(),
        Err(r) => refusal::portal_json(r),
    }
}

async fn finish_registration(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let ceremony = query_value(raw.as_deref(), "ceremonie").unwrap_or_default();
    let json = String::from_utf8_lossy(&body);
    let done = with_session(&state, &headers, &method, "/portail/cle/fin", async |p| {
        state
            .consultation
            .finish_passkey_registration(p, &ceremony, &json)
            .await
    })
    .await;
    match done {
        Ok(()) => message(StatusCode::OK, "Votre clé d'accès est enregistrée."),
        Err(r) => refusal::portal_json(r),
    }
}

async fn start_step_up(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let started = with_session(
        &state,
        &headers,
        &method,
        "/portail/verification/debut",
        async |p| state.consultation.start_step_up(p).await,
    )
    .await;
    match started {
        Ok(s) => axum::Json(serde_json::json!({ "ceremony": s.ceremony, "options": s.options }))
            .into_response(),
        Err(r) => refusal::portal_json(r),
    }
}

async fn finish_step_up(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let ceremony = query_value(raw.as_deref(), "ceremonie").unwrap_or_default();
    let json = String::from_utf8_lossy(&body);
    let done = with_session(
        &state,
        &headers,
        &method,
        "/portail/verification/fin",
        async |p| state.consultation.finish_step_up(p, &ceremony, &json).await,
    )
    .await;
    match done {
        Ok(()) => message(StatusCode::OK, "Confirmation enregistrée pour 5 minutes."),
        Err(r) => refusal::portal_json(r),
    }
}

async fn logout(State(state): State<AppState>, method: Method, headers: HeaderMap) -> Response {
    let done = with_session(&state, &headers, &method, "/deconnexion", async |p| {
        state.consultation.logout(p).await
    })
    .await;
    let mut response = match done {
        Ok(()) => message(StatusCode::OK, "Vous êtes déconnecté."),
        Err(r) => refusal::portal_json(r),
    };
    // Whatever happened, this browser forgets the cookie.
    clear_cookie(&mut response);
    response
}

// -------------------------------------------------------------------------
// Fragments
// -------------------------------------------------------------------------

fn purpose_fr(p: Purpose) -> &'static str {
    match p {
        Purpose::FollowUp => "suivi",
        Purpose::Training => "formation",
        Purpose::DocumentProcessing => "traitement de documents",
        Purpose::Compensation => "indemnisation",
    }
}

fn group_fr(g: FieldGroup) -> &'static str {
    match g {
        FieldGroup::Identity => "Identité",
        FieldGroup::Contact => "Coordonnées",
        FieldGroup::Status => "Situation",
        FieldGroup::Nir => "NIR",
    }
}

fn purpose_param(raw: Option<&str>) -> Option<Purpose> {
    match query_value(raw, "finalite") {
        None => Some(Purpose::FollowUp),
        Some(text) => Purpose::parse(&text).ok(),
    }
}

async fn caseload_fragment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let purpose = purpose_param(raw.as_deref());
    let page = with_session(
        &state,
        &headers,
        &method,
        "/portail/f/dossiers",
        async |p| {
            match purpose {
                Some(purpose) => {
                    state
                        .consultation
                        .caseload(
                            p,
                            crate::request::client(peer),
                            purpose,
                            PersonId::new(0),
                            CASELOAD_PAGE,
                        )
                        .await
                }
                // Authenticate first: an anonymous caller learns nothing
                // about validation.
                None => match state.consultation.whoami(p).await {
                    Ok(_) => Err(Refusal::Invalid {
                        field: "finalite",
                        reason: "unknown purpose".into(),
                    }),
                    Err(r) => Err(r),
                },
            }
        },
    )
    .await;
    let page = match page {
        Ok(page) => page,
        Err(r) => return refusal::portal_fragment(r),
    };
    let purpose = purpose.unwrap_or(Purpose::FollowUp);
    let mut h = Html::new();
    h.raw("<section id=\"dossiers\"><h2>Mes dossiers — ")
        .text(purpose_fr(purpose))
        .raw("</h2>");
    if page.entries.is_empty() {
        h.raw("<p>Aucun dossier en cours pour cette finalité.</p>");
    } else {
        h.raw("<ul>");
        let mut last = None;
        for e in &page.entries {
            // One line per person, even with several mandates.
            if last == Some(e.person_id) {
                continue;
            }
            last = Some(e.person_id);
            h.raw("<li><a class=\"dossier\" data-fragment href=\"/portail/f/personne/")
                .num(e.person_id.get())
                .raw("?finalite=")
                .text(e.purpose.as_str())
                .raw("\">Dossier n° ")
                .num(e.person_id.get())
                .raw("</a>");
            if let Some(to) = e.valid_to {
                h.raw(" — mandat jusqu'au ")
                    .text(&to.format("%d/%m/%Y").to_string());
            }
            h.raw("</li>");
        }
        h.raw("</ul>");
        if page.next.is_some() {
            h.raw("<p>D'autres dossiers suivent.</p>");
        }
    }
    h.raw("</section>");
    h.into_response(StatusCode::OK)
}

async fn person_fragment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let id = path
        .ok()
        .and_then(|Path(text)| text.parse::<i64>().ok())
        .filter(|n| *n > 0);
    let purpose = purpose_param(raw.as_deref());
    let url_path = match id {
        Some(id) => format!("/portail/f/personne/{id}"),
        None => "/portail/f/personne/0".to_string(),
    };
    let shown = with_session(&state, &headers, &method, &url_path, async |p| {
        match (id, purpose) {
            (Some(id), Some(purpose)) => {
                state
                    .consultation
                    .read_person(p, crate::request::client(peer), PersonId::new(id), purpose)
                    .await
            }
            _ => match state.consultation.whoami(p).await {
                Ok(_) => Err(Refusal::Invalid {
                    field: "id",
                    reason: "invalid request".into(),
                }),
                Err(r) => Err(r),
            },
        }
    })
    .await;
    match (shown, id, purpose) {
        (Ok(shown), _, _) => person_html(&shown).into_response(StatusCode::OK),
        // Not visible: a France Travail agent may break the glass from here
        // (the form says who may; the path decides).
        (Err(Refusal::NotFound), Some(id), Some(purpose)) => {
            not_found_with_break_glass(id, purpose)
        }
        (Err(r), _, _) => refusal::portal_fragment(r),
    }
}

/// The person view's miss, with the break-glass form: a written reason
/// and one button, whose script asks for the passkey (step-up) and then
/// breaks the glass.
fn not_found_with_break_glass(id: i64, purpose: Purpose) -> Response {
    let status = refusal::status(&Refusal::NotFound);
    let text = refusal::portal_text(&Refusal::NotFound);
    let mut h = Html::new();
    h.raw("<p class=\"erreur\" role=\"alert\">")
        .text(text)
        .raw("</p><form id=\"bris-de-glace\" data-personne=\"")
        .num(id)
        .raw("\" data-finalite=\"")
        .text(purpose.as_str())
        .raw("\"><h3>Accès exceptionnel (bris de glace)</h3>")
        .raw("<p>Réservé aux agents France Travail, en cas d'urgence. Un mandat d'un jour à votre nom est créé ; l'accès est signalé et inscrit au journal d'audit. Une confirmation avec votre clé d'accès vous est demandée. N'écrivez pas de données personnelles dans le motif.</p>")
        .raw("<label for=\"motif\">Motif (20 caractères au moins)</label>")
        .raw("<textarea id=\"motif\" name=\"motif\" required minlength=\"20\" maxlength=\"1000\"></textarea>")
        .raw("<button id=\"briser\" type=\"submit\">Confirmer avec ma clé et accéder au dossier</button></form>");
    h.into_response(status)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassBody {
    finalite: String,
    motif: String,
}

/// Break-glass through a session, the only way to it: the consultation
/// path refuses it unless the session holds a step-up from the last five
/// minutes.
async fn break_glass_fragment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Response {
    let id = path
        .ok()
        .and_then(|Path(text)| text.parse::<i64>().ok())
        .filter(|n| *n > 0);
    let request = serde_json::from_slice::<BreakGlassBody>(&body)
        .ok()
        .and_then(|b| Some((Purpose::parse(&b.finalite).ok()?, b.motif)));
    let url_path = format!("/portail/f/personne/{}/bris-de-glace", id.unwrap_or(0));
    let shown = with_session(&state, &headers, &method, &url_path, async |p| {
        match (id, request) {
            (Some(person_id), Some((purpose, reason))) => {
                let request = rempart_consult::BreakGlass {
                    person_id: PersonId::new(person_id),
                    purpose,
                    reason,
                };
                state
                    .consultation
                    .break_glass(p, crate::request::client(peer), request)
                    .await
            }
            _ => match state.consultation.whoami(p).await {
                Ok(_) => Err(Refusal::Invalid {
                    field: "body",
                    reason: "invalid request".into(),
                }),
                Err(r) => Err(r),
            },
        }
    })
    .await;
    match shown {
        Ok(shown) => person_html(&shown).into_response(StatusCode::OK),
        Err(r) => refusal::portal_fragment(r),
    }
}

/// One person as shown: only the groups present in `shown`.
fn person_html(s: &Shown) -> Html {
    let mut h = Html::new();
    h.raw("<article id=\"personne\" data-person=\"")
        .num(s.person_id.get())
        .raw("\"><h2>Dossier n° ")
        .num(s.person_id.get())
        .raw("</h2><p>Finalité : ")
        .text(purpose_fr(s.purpose))
        .raw("</p><p>Données affichées : ");
    for (i, g) in s.field_groups.iter().enumerate() {
        if i > 0 {
            h.raw(", ");
        }
        h.text(group_fr(*g));
    }
    h.raw("</p>");
    if let Some(i) = &s.identity {
        h.raw("<section class=\"groupe\" data-groupe=\"identity\"><h3>Identité</h3><dl>")
            .raw("<dt>Nom</dt><dd>")
            .text(i.nom.as_str())
            .raw("</dd><dt>Prénom</dt><dd>")
            .text(i.prenom.as_str())
            .raw("</dd><dt>Date de naissance</dt><dd>")
            .text(&i.date_naissance.format("%d/%m/%Y").to_string())
            .raw("</dd><dt>Identifiant France Travail</dt><dd>")
            .text(i.ft_id.as_str())
            .raw("</dd></dl></section>");
    }
    if let Some(c) = &s.contact {
        h.raw("<section class=\"groupe\" data-groupe=\"contact\"><h3>Coordonnées</h3><dl>");
        if let Some(e) = &c.email {
            h.raw("<dt>Courriel</dt><dd>").text(e.as_str()).raw("</dd>");
        }
        if let Some(t) = &c.telephone {
            h.raw("<dt>Téléphone</dt><dd>")
                .text(t.as_str())
                .raw("</dd>");
        }
        h.raw("<dt>Adresse</dt><dd>")
            .text(c.adresse.ligne.as_str())
            .raw(", ")
            .text(c.adresse.code_postal.as_str())
            .raw(" ")
            .text(c.adresse.commune.as_str())
            .raw("</dd></dl></section>");
    }
    if let Some(r) = &s.status {
        h.raw("<section class=\"groupe\" data-groupe=\"status\"><h3>Situation</h3><dl>")
            .raw("<dt>Statut</dt><dd>")
            .text(r.statut.as_str())
            .raw("</dd><dt>Inscrit le</dt><dd>")
            .text(&r.inscrit_le.format("%d/%m/%Y").to_string())
            .raw("</dd>");
        if let Some(end) = r.fin_le {
            h.raw("<dt>Fin le</dt><dd>")
                .text(&end.format("%d/%m/%Y").to_string())
                .raw("</dd>");
        }
        h.raw("</dl></section>");
    }
    if let Some(n) = &s.nir {
        let (view, label, value) = match n {
            NirShown::Clear(v) => ("clear", "en clair", v),
            NirShown::Masked(v) => ("masked", "masqué", v),
            NirShown::Token(v) => ("token", "pseudonyme", v),
        };
        h.raw("<section class=\"groupe\" data-groupe=\"nir\"><h3>NIR</h3><p>")
            .raw("<span id=\"nir-valeur\" data-vue=\"")
            .raw(view)
            .raw("\">")
            .text(value)
            .raw("</span> (")
            .raw(label)
            .raw(")</p></section>");
    }
    let (what, n) = match s.ledger {
        LeafRef::Index(i) => ("n° ", i),
        LeafRef::Receipt(r) => ("reçu n° ", r),
    };
    h.raw("<p class=\"trace\">Consultation inscrite au journal d'audit (")
        .raw(what)
        .num(i64::try_from(n).unwrap_or(i64::MAX))
        .raw(").</p><p><a href=\"/portail/f/dossiers\" data-fragment>Retour à mes dossiers</a></p></article>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_once_or_not_at_all() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-rempart_session=rms_x; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("rms_x"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-rempart_session=rms_y"),
        );
        assert_eq!(session_cookie(&headers), None, "two cookies: neither");
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
