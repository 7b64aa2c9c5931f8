//! First factors with an activation code, over plain HTTP on both
//! backends: the code comes only in the approving officer's answer; the
//! `/activation` pages refuse a wrong code and an unknown login with the
//! same words, name each broken password rule, want one valid TOTP code,
//! and then the person logs in with password + TOTP; the code works once,
//! expires, is throttled, comes back after an approved reset (whose first
//! session is high-risk), and never reaches the ledger.

use rempart_auth::totp::TotpSecret;
use rempart_ledger::Action as LeafAction;
use serde_json::{Value, json};

use super::browser::{DeviceKey, client_from, code_at, password_login};
use super::{BACKENDS, TestApp, spawn_app};

const REFUSED: &str = "Identifiant ou code d&#39;activation incorrect, expiré ou déjà utilisé.";
const PASSWORD: &str = "Tilleul-Ardoise-93-Givre";

struct Page {
    status: u16,
    html: String,
}

async fn post_form(
    client: &reqwest::Client,
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
) -> Page {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = client
        .post(format!("{}{path}", app.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    Page {
        status: resp.status().as_u16(),
        html: resp.text().await.unwrap(),
    }
}

/// The text between `start` and the next `end` in the page.
fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in {html}"))
        + start.len();
    let len = html[from..].find(end).unwrap();
    &html[from..from + len]
}

fn ceremony(page: &Page) -> String {
    between(&page.html, "name=\"ceremonie\" value=\"", "\"").to_string()
}

fn secret(page: &Page) -> TotpSecret {
    let b32 = between(&page.html, "<code id=\"secret\">", "</code>");
    let parsed = totp_rs::Secret::try_from_base32(b32).unwrap();
    TotpSecret::from_bytes(parsed.as_bytes()).unwrap()
}

/// Step 1 with this login and code.
async fn step_one(client: &reqwest::Client, app: &TestApp, login: &str, code: &str) -> Page {
    post_form(
        client,
        app,
        "/activation",
        &[("login", login), ("code", code)],
    )
    .await
}

/// Both steps, right; returns the enrolled secret.
async fn activate(client: &reqwest::Client, app: &TestApp, login: &str, code: &str) -> TotpSecret {
    let page = step_one(client, app, login, code).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let secret = secret(&page);
    let totp = code_at(&secret, app.clock.now());
    let done = post_form(
        client,
        app,
        "/activation/facteurs",
        &[
            ("ceremonie", &ceremony(&page)),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
            ("totp", &totp),
        ],
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.html);
    assert!(
        done.html.contains("Votre compte est activé"),
        "{}",
        done.html
    );
    secret
}

fn code_of(answer: &Value) -> String {
    answer["activation_code"]
        .as_str()
        .unwrap_or_else(|| panic!("no activation code in {answer}"))
        .to_string()
}

/// Notes of the ledger's activation leaves since `from`.
async fn activation_notes(app: &TestApp, from: u64) -> Vec<String> {
    app.leaves(from)
        .await
        .into_iter()
        .filter_map(|l| l.note)
        .filter(|n| n.starts_with("activation:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_codes_give_first_factors_once_after_four_eyes() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let from = app.ledger_size().await;
        let client = client_from([127, 0, 0, 21]);
        // Logins from their own address: the lockout counts per address
        // across passwords and activation codes.
        let logger = client_from([127, 0, 0, 23]);

        // The manager asks; an outside officer approves and alone sees the code.
        let (status, asked) = app
            .request_account("t.mlm", "T-ML", "t.ml-new", "agent")
            .await;
        assert_eq!(status, 201, "[{backend:?}] {asked}");
        let id = asked["id"].as_i64().unwrap();
        let (status, approved) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/account-requests/{id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "[{backend:?}] {approved}");
        let code = code_of(&approved);
        assert_eq!(code.len(), 26 + 6, "{code}");
        assert!(approved["activation_expires_at"].is_string());

        // Step 1: a wrong code and an unknown login read the same.
        let wrong = step_one(
            &client,
            &app,
            "t.ml-new",
            "0000-0000-0000-0000-0000-0000-00",
        )
        .await;
        // Past each failure's backoff (1 s, then 2 s) for this address.
        app.advance(1).await;
        let unknown = step_one(&client, &app, "t.nobody", &code).await;
        for page in [&wrong, &unknown] {
            assert_eq!(page.status, 401, "[{backend:?}] {}", page.html);
            assert!(page.html.contains(REFUSED), "[{backend:?}] {}", page.html);
        }
        app.advance(2).await;

        // Step 2: each broken rule named, then a wrong TOTP code, then right.
        let page = step_one(&client, &app, "t.ml-new", &code.to_lowercase()).await;
        assert_eq!(page.status, 200, "[{backend:?}] {}", page.html);
        assert!(
            page.html.contains("otpauth://totp/Rempart:t.ml-new"),
            "{}",
            page.html
        );
        let secret = secret(&page);
        let now_code = code_at(&secret, app.clock.now());
        let weak = post_form(
            &client,
            &app,
            "/activation/facteurs",
            &[
                ("ceremonie", &ceremony(&page)),
                ("password", "court"),
                ("confirm", "court"),
                ("totp", &now_code),
            ],
        )
        .await;
        assert_eq!(weak.status, 422, "[{backend:?}] {}", weak.html);
        assert!(
            weak.html.contains("au moins 12 caractères"),
            "{}",
            weak.html
        );
        assert!(weak.html.contains("types de caractères"), "{}", weak.html);
        // The first ceremony is spent; the page carries a new one.
        assert_ne!(ceremony(&weak), ceremony(&page));
        let stale = post_form(
            &client,
            &app,
            "/activation/facteurs",
            &[
                ("ceremonie", &ceremony(&page)),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
                ("totp", &now_code),
            ],
        )
        .await;
        assert_eq!(stale.status, 400, "[{backend:?}] a spent ceremony");
        let bad_totp = post_form(
            &client,
            &app,
            "/activation/facteurs",
            &[
                ("ceremonie", &ceremony(&weak)),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
                (
                    "totp",
                    if now_code == "000000" {
                        "111111"
                    } else {
                        "000000"
                    },
                ),
            ],
        )
        .await;
        assert_eq!(bad_totp.status, 422, "[{backend:?}] {}", bad_totp.html);
        assert!(
            bad_totp
                .html
                .contains("code à six chiffres ne correspond pas")
        );
        let done = post_form(
            &client,
            &app,
            "/activation/facteurs",
            &[
                ("ceremonie", &ceremony(&bad_totp)),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
                ("totp", &now_code),
            ],
        )
        .await;
        assert_eq!(done.status, 200, "[{backend:?}] {}", done.html);

        // Used once.
        app.advance(4).await;
        let again = step_one(&client, &app, "t.ml-new", &code).await;
        assert_eq!(again.status, 401, "[{backend:?}] used codes are refused");

        // The person logs in normally (the confirming code is used up: the
        // next step's code), in a session that is not high-risk.
        app.advance(30).await;
        let key = DeviceKey::new();
        let login = password_login(
            &app,
            &logger,
            &key,
            "t.ml-new",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(login.status, 200, "[{backend:?}] {:?}", login.body);
        assert_eq!(login.body["high_risk"], false);

        // A reset approved under four eyes brings a new code; it expires.
        let account = app
            .store
            .account_by_login(&super::r("t.ml-new"))
            .await
            .unwrap()
            .unwrap()
            .account_id;
        // Credentials issued at the test clock's instant: it moves past the
        // spawned ones' day.
        let credential = |login: &'static str| {
            let app = &app;
            async move {
                let id = app.account(login).account_id;
                rempart_consult::issue_credential(
                    &app.store,
                    id,
                    chrono::Duration::days(1),
                    app.clock.now(),
                )
                .await
                .unwrap()
                .token
                .as_str()
                .to_string()
            }
        };
        let reset_code = |n: u32| {
            let app = &app;
            async move {
                let (status, reset) = app
                    .post_as(
                        &credential("t.mlm").await,
                        &format!("/api/v1/accounts/{account}/reset-requests"),
                        &json!({"kind": "all"}),
                    )
                    .await;
                assert_eq!(status, 201, "[{backend:?}] reset {n}: {reset}");
                let (status, decided) = app
                    .post_as(
                        &credential("t.officer").await,
                        &format!("/api/v1/reset-requests/{}/approve", reset["id"]),
                        &json!({}),
                    )
                    .await;
                assert_eq!(status, 200, "[{backend:?}] reset {n}: {decided}");
                code_of(&decided)
            }
        };
        let expiring = reset_code(1).await;
        app.advance(72 * 3600).await;
        let expired = step_one(&client, &app, "t.ml-new", &expiring).await;
        assert_eq!(
            expired.status, 401,
            "[{backend:?}] expired codes are refused"
        );

        // Wrong codes are throttled like passwords, from another address.
        let fresh = reset_code(2).await;
        let guesser = client_from([127, 0, 0, 22]);
        let mut throttled = None;
        for i in 0..12 {
            let page = step_one(
                &guesser,
                &app,
                "t.ml-new",
                "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZ",
            )
            .await;
            if page.status == 429 {
                throttled = Some((i, page));
                break;
            }
            assert_eq!(page.status, 401, "[{backend:?}] guess {i}");
        }
        let (_, page) = throttled.expect("wrong codes are throttled");
        assert!(page.html.contains("Trop de tentatives"), "{}", page.html);

        // Past the backoff, the right code still works (the code was not
        // burnt by the guesses), and the first session after the reset is
        // high-risk.
        app.advance(3600).await;
        let secret = activate(&client, &app, "t.ml-new", &fresh).await;
        app.advance(30).await;
        let login = password_login(
            &app,
            &logger,
            &DeviceKey::new(),
            "t.ml-new",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(login.status, 200, "[{backend:?}] {:?}", login.body);
        assert_eq!(login.body["high_risk"], true, "[{backend:?}]");

        // Every step is in the ledger; no code ever is.
        let leaves = app.leaves(from).await;
        for c in [&code, &expiring, &fresh] {
            let bare = c.replace('-', "");
            assert!(
                leaves.iter().all(|l| l
                    .note
                    .as_deref()
                    .is_none_or(|n| !n.contains(c.as_str()) && !n.contains(&bare))),
                "[{backend:?}] a code reached the ledger"
            );
        }
        assert!(
            leaves.iter().any(|l| l.action == LeafAction::AccountApprove
                && l.note
                    .as_deref()
                    .is_some_and(|n| n.ends_with("activation code issued"))),
            "[{backend:?}]"
        );
        let notes = activation_notes(&app, from).await;
        for want in [
            "activation: wrong code",
            "activation: unknown login or no code",
            "activation: code accepted",
            "activation: factors refused (attempt 1 of 5)",
            "activation: factors refused (attempt 2 of 5)",
            "activation: password and TOTP set",
            "activation: code already used",
            "activation: code expired",
        ] {
            assert!(
                notes.iter().any(|n| n == want),
                "[{backend:?}] {want} missing in {notes:?}"
            );
        }
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("activation: throttled: ")),
            "[{backend:?}] {notes:?}"
        );
        app.stop().await;
    }
}
