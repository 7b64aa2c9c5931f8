//! The activation pages: first factors with the code an officer handed
//! over (see `rempart_consult::activation` for the rules).
//!
//! | route | what |
//! |---|---|
//! | `GET /activation` | step 1: login + activation code |
//! | `POST /activation` | checks them; step 2's page: new password, TOTP secret |
//! | `POST /activation/facteurs` | sets the factors; done, or step 2 again with the reasons |
//!
//! Plain HTML forms, no script: nothing here is bound to a session or a
//! device (activation opens none; the person logs in afterwards at
//! `/connexion`, where the device key is made). A cross-site form post
//! gains nothing: it would need the victim's code, and the answer, the
//! only place the TOTP secret appears, is read by the browser that posted.
//! The secret and the ceremony id travel in the page and its form only.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use rempart_consult::Refusal;
use rempart_consult::activation::{ActivationForm, ActivationStep, Enrolment, FactorsForm};
use zeroize::Zeroizing;

use crate::AppState;
use crate::html::{Html, page_end, page_start};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/activation", get(code_page).post(check_code))
        .route("/activation/facteurs", post(set_factors))
}

/// The form's fields by name; a field given twice keeps the first value.
fn fields(body: &Bytes, names: &[&str]) -> Vec<Zeroizing<String>> {
    let mut out: Vec<Option<Zeroizing<String>>> = vec![None; names.len()];
    for (k, v) in form_urlencoded::parse(body) {
        if let Some(i) = names.iter().position(|n| *n == k)
            && out[i].is_none()
        {
            out[i] = Some(Zeroizing::new(v.into_owned()));
        }
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

fn messages(h: &mut Html, messages: &[String]) {
    if messages.is_empty() {
        return;
    }
    h.raw("<div id=\"message\" role=\"alert\"><ul>");
    for m in messages {
        h.raw("<li>").text(m).raw("</li>");
    }
    h.raw("</ul></div>");
}

fn step_one(status: StatusCode, errors: &[String]) -> Response {
    let mut h = Html::new();
    page_start(&mut h, "Activation du compte", "activation", None);
    h.raw("<main><h1>Activer votre compte</h1>")
        .raw("<p>Saisissez votre identifiant et le code d'activation que vous a remis ")
        .raw("l'officier qui a approuvé votre compte ou la réinitialisation de vos facteurs. ")
        .raw("Ce code ne sert qu'une fois et expire 72 heures après sa remise.</p>");
    messages(&mut h, errors);
    h.raw("<form id=\"activation\" method=\"post\" action=\"/activation\" autocomplete=\"off\">")
        .raw("<label for=\"login\">Identifiant</label>")
        .raw("<input id=\"login\" name=\"login\" autocomplete=\"username\" required maxlength=\"128\">")
        .raw("<label for=\"code\">Code d'activation</label>")
        .raw("<input id=\"code\" name=\"code\" required maxlength=\"64\" autocapitalize=\"characters\" spellcheck=\"false\">")
        .raw("<button id=\"envoyer\" type=\"submit\">Continuer</button></form></main>");
    page_end(&mut h);
    h.into_response(status)
}

fn step_two(status: StatusCode, e: &Enrolment, errors: &[String]) -> Response {
    let mut h = Html::new();
    page_start(&mut h, "Activation du compte", "activation", None);
    h.raw(
        "<main><h1>Choisir vos facteurs d'authentification</h1><p>Compte : <strong id=\"compte\">",
    )
    .text(&e.login)
    .raw("</strong></p>");
    messages(&mut h, errors);
    h.raw("<form id=\"facteurs\" method=\"post\" action=\"/activation/facteurs\" autocomplete=\"off\">")
        .raw("<input type=\"hidden\" name=\"ceremonie\" value=\"")
        .text(&e.ceremony)
        .raw("\">");
    if e.needs_password {
        h.raw("<fieldset><legend>Mot de passe</legend>")
            .raw("<p>Au moins 12 caractères, mélangeant au moins trois types parmi : minuscules, ")
            .raw("majuscules, chiffres, caractères spéciaux. Ni mot de passe courant, ni votre identifiant.</p>")
            .raw("<label for=\"password\">Nouveau mot de passe</label>")
            .raw("<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required maxlength=\"128\">")
            .raw("<label for=\"confirm\">Confirmez le mot de passe</label>")
            .raw("<input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required maxlength=\"128\">")
            .raw("</fieldset>");
    }
    if let Some(totp) = &e.totp {
        h.raw("<fieldset><legend>Application d'authentification</legend>")
            .raw("<p>Ajoutez ce compte à votre application d'authentification (TOTP), ")
            .raw("en collant le lien ci-dessous ou en saisissant la clé à la main, ")
            .raw("puis saisissez le code à six chiffres qu'elle affiche.</p>")
            .raw("<p>Lien : <code id=\"otpauth\">")
            .text(&totp.uri)
            .raw("</code></p><p>Clé : <code id=\"secret\">")
            .text(&totp.secret)
            .raw("</code></p>")
            .raw("<label for=\"totp\">Code à six chiffres</label>")
            .raw("<input id=\"totp\" name=\"totp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required pattern=\"[0-9]{6}\" maxlength=\"6\">")
            .raw("</fieldset>");
    }
    h.raw("<button id=\"enregistrer\" type=\"submit\">Activer le compte</button></form></main>");
    page_end(&mut h);
    h.into_response(status)
}

fn done() -> Response {
    let mut h = Html::new();
    page_start(&mut h, "Compte activé", "activation", None);
    h.raw("<main><h1>Votre compte est activé</h1>")
        .raw("<p id=\"fait\">Connectez-vous avec votre identifiant, votre mot de passe et le code ")
        .raw(
            "de votre application. Vous pourrez ensuite enregistrer une clé d'accès (passkey).</p>",
        )
        .raw("<p><a href=\"/connexion\">Se connecter</a></p></main>");
    page_end(&mut h);
    h.into_response(StatusCode::OK)
}

/// A refused step: step 1 again, with the status and messages decided in
/// `refusal.rs`.
fn failed(r: &Refusal) -> Response {
    let (status, text) = crate::refusal::activation(r);
    step_one(status, &text)
}

async fn code_page() -> Response {
    step_one(StatusCode::OK, &[])
}

async fn check_code(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let f = fields(&body, &["login", "code"]);
    let form = ActivationForm {
        login: &f[0],
        code: &f[1],
    };
    // The client's address, as for password logins (the peer's, or the
    // one a trusted proxy forwards for: `client.rs`).
    match state.consultation.start_activation(form, peer.ip()).await {
        Ok(enrolment) => step_two(StatusCode::OK, &enrolment, &[]),
        Err(r) => failed(&r),
    }
}

async fn set_factors(State(state): State<AppState>, body: Bytes) -> Response {
    let f = fields(&body, &["ceremonie", "password", "confirm", "totp"]);
    let form = FactorsForm {
        ceremony: &f[0],
        password: &f[1],
        confirm: &f[2],
        totp_code: &f[3],
    };
    match state.consultation.finish_activation(form).await {
        Ok(ActivationStep::Done(_)) => done(),
        // Not a refusal: step 2 again with the same secret and the reasons.
        Ok(ActivationStep::Retry {
            enrolment,
            messages,
        }) => step_two(StatusCode::UNPROCESSABLE_ENTITY, &enrolment, &messages),
        Err(r) => failed(&r),
    }
}
