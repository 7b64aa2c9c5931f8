//! Federated login (ProConnect) over plain HTTP, against a real OpenID
//! provider: `tools/oidc-provider` (the npm package `oidc-provider`, run
//! with node), one process for this whole test binary, started by the
//! first scenario that needs it. Each server registers a client of its own
//! there (RFC 7591), for its own redirect URI, known once it listens.
//!
//! reqwest plays the page (with its own P-256 device key, as in mod
//! browser) and the browser at the provider (redirects followed by hand,
//! cookies kept, the person and the acr/amr posted to the provider's
//! interaction, as the auth crate's tests do), then calls the callback
//! page and posts what its script would. Once more in a real headless
//! Chromium (as mod browser drives it), where the pages' own script makes
//! the key, goes to the provider, and finishes on the callback page. Node
//! and npm are required: the
//! provider's pinned packages are installed (`npm ci`) when missing, and
//! without node these tests fail; they never skip.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration as StdDuration;

use chrono::Utc;
use rempart_auth::oidc::{AcceptedAssurance, Federation};
use rempart_domain::{AccountId, AccountState, Purpose};
use rempart_ledger::{Action as LeafAction, AuditLeaf, Decision, DenyReason};
use rempart_storage::FederationLink;
use rempart_web::pages::FEDERATION_CALLBACK_PATH;
use serde_json::{Value, json};

use super::browser::{
    Answer, DeviceKey, browser, cookie_value, fragment, public, send, start_driver, wait_for,
    wait_for_path,
};
use super::{BACKENDS, TestApp, spawn_app_full, test_guard_config, today};

/// Synthetic agents the provider knows (`tools/oidc-provider/provider.mjs`).
const CAMILLE: &str = "camille.roux";
const CAMILLE_SUB: &str = "5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01";
const YANIS: &str = "yanis.benali";
const YANIS_SUB: &str = "a9e41b07-3c55-4d2e-8f60-7b9d0c1e2f34";

/// A multi-factor login as ProConnect reports one, and a one-factor one.
const MFA_ACR: &str = "https://proconnect.gouv.fr/assurance/self-asserted-2fa";
const MFA_AMR: &[&str] = &["pwd", "totp"];
const ONE_FACTOR_ACR: &str = "eidas1";
const ONE_FACTOR_AMR: &[&str] = &["pwd"];

/// The `claims` parameter asking only for amr, not for a multi-factor acr.
const AMR_ONLY: &str = r#"{"id_token":{"amr":{"essential":true}}}"#;

/// The URL with the query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    url.to_string()
}

/// What the page shows for every refused federated login.
const REFUSED: &str =
    "La connexion par ProConnect n'a pas abouti. Recommencez depuis la page de connexion.";

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

/// A running provider; it exits with this process (it holds our stdin).
struct Provider {
    _child: Child,
    issuer: String,
}

impl Provider {
    fn shared() -> &'static Provider {
        static SHARED: OnceLock<Provider> = OnceLock::new();
        SHARED.get_or_init(Provider::start)
    }

    fn start() -> Provider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/oidc-provider");
        if !dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run `npm` ({e}): Node.js 20.19+ is required"));
            assert!(
                out.status.success(),
                "`npm ci --prefix tools/oidc-provider` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The static clients' redirect URI is never used here: every
        // server registers its own client.
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .args([
                "--port",
                "0",
                "--redirect-uri",
                "http://127.0.0.1:9/unused",
                "--exit-with-stdin",
            ])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): Node.js 20.19+ is required"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = child_stderr.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(StdDuration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "the OIDC provider printed no `listening` line within 120 s; its stderr:\n{}",
                    stderr.lock().unwrap()
                )
            });
        Provider {
            _child: child,
            issuer,
        }
    }
}

/// The federation a test server on `port` runs with: a client registered
/// at the shared provider for `http://localhost:<port>/connexion/federation/retour`
/// (the redirect URI `rempart serve` derives from its public URL), and
/// Rempart's ProConnect assurance rule.
pub(super) async fn for_server(port: u16) -> Federation {
    let provider = Provider::shared();
    let redirect_uri = format!("http://localhost:{port}{FEDERATION_CALLBACK_PATH}");
    let registered: Value = reqwest::Client::new()
        .post(format!("{}/reg", provider.issuer))
        .json(&json!({
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "RS256",
            "userinfo_signed_response_alg": "RS256",
        }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    Federation::discover(
        &provider.issuer,
        registered["client_id"].as_str().unwrap(),
        registered["client_secret"].as_str().unwrap(),
        &redirect_uri,
        AcceptedAssurance::proconnect(),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------
// The browser at the provider, and the page's two requests
// ---------------------------------------------------------------------------

/// Follows the authorization URL to the provider's interaction, logs
/// `login` in with `acr`/`amr`, and returns where the provider sends the
/// browser back (the server's callback page, with code and state).
async fn at_the_provider(authorization_url: &str, login: &str, acr: &str, amr: &[&str]) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut redirect_of = async |request: reqwest::RequestBuilder, base: &str| -> String {
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = request.header("cookie", cookie).send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            cookies.insert(name.to_owned(), value.to_owned());
        }
        let status = response.status();
        match response.headers().get("location") {
            Some(location) if status.is_redirection() => reqwest::Url::parse(base)
                .unwrap()
                .join(location.to_str().unwrap())
                .unwrap()
                .to_string(),
            _ => panic!(
                "expected a redirect, got {status}: {}",
                response.text().await.unwrap()
            ),
        }
    };
    let interaction = redirect_of(http.get(authorization_url), authorization_url).await;
    assert!(interaction.contains("/interaction/"), "{interaction}");
    let submit = format!("{interaction}/login");
    let body = json!({ "login": login, "acr": acr, "amr": amr });
    let resume = redirect_of(http.post(&submit).json(&body), &submit).await;
    redirect_of(http.get(&resume), &resume).await
}

/// The login page's button: a proof by the new key, the provider's URL back.
async fn begin(app: &TestApp, key: &DeviceKey) -> String {
    let path = "/connexion/federation/debut";
    let started = send(app.http.post(format!("{}{path}", app.base)).header(
        "DPoP",
        key.proof("POST", &public(app, path), None, app.clock.now()),
    ))
    .await;
    assert_eq!(started.status, 200, "{:?}", started.body);
    let url = started.body["redirect"].as_str().unwrap().to_string();
    assert!(url.starts_with(&Provider::shared().issuer), "{url}");
    url
}

/// What the provider sent back to the callback page.
#[derive(Clone)]
struct Callback {
    code: String,
    state: String,
}

/// The callback page as the browser loads it (the code in its address
/// only), and the code and state its script reads from there.
async fn callback_page(app: &TestApp, callback: &str) -> Callback {
    let prefix = public(app, FEDERATION_CALLBACK_PATH);
    let query = callback
        .strip_prefix(&format!("{prefix}?"))
        .unwrap_or_else(|| panic!("the provider did not come back to {prefix}: {callback}"));
    let pairs: BTreeMap<String, String> = form_urlencoded_pairs(query);
    let page = app
        .http
        .get(format!("{}{FEDERATION_CALLBACK_PATH}?{query}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-page=\"federation\""), "{html}");
    assert!(
        !html.contains(&pairs["code"]) && !html.contains(&pairs["state"]),
        "nothing of the callback is written into the page: {html}"
    );
    Callback {
        code: pairs["code"].clone(),
        state: pairs["state"].clone(),
    }
}

fn form_urlencoded_pairs(query: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// The callback page's script: code and state, with a proof by `key`.
async fn finish(app: &TestApp, key: &DeviceKey, callback: &Callback) -> Answer {
    let path = "/connexion/federation/fin";
    send(
        app.http
            .post(format!("{}{path}", app.base))
            .header(
                "DPoP",
                key.proof("POST", &public(app, path), None, app.clock.now()),
            )
            .json(&json!({ "code": callback.code, "state": callback.state })),
    )
    .await
}

/// A whole federated login by `login` with `acr`/`amr`, begun and finished
/// by `key`; the answer and what the provider sent back.
async fn federated_login(
    app: &TestApp,
    key: &DeviceKey,
    login: &str,
    acr: &str,
    amr: &[&str],
) -> (Answer, Callback) {
    let url = begin(app, key).await;
    let back = at_the_provider(&url, login, acr, amr).await;
    let callback = callback_page(app, &back).await;
    (finish(app, key, &callback).await, callback)
}

/// Links the provider's identity `subject` to `login`, by `t.officer`.
async fn link(app: &TestApp, subject: &str, login: &str) {
    app.auth
        .link_federation(FederationLink {
            issuer: Provider::shared().issuer.clone(),
            subject: subject.to_owned(),
            account_id: app.account(login).account_id,
            linked_by: app.account("t.officer").account_id,
            linked_at: Utc::now(),
        })
        .await
        .unwrap();
}

/// Failed logins ledgered since `from`: (account, reason, note).
async fn failures(app: &TestApp, from: u64) -> Vec<(AccountId, DenyReason, String)> {
    app.leaves(from)
        .await
        .into_iter()
        .filter(|l: &AuditLeaf| l.action == LeafAction::LoginFailed)
        .filter_map(|l| match l.decision {
            Decision::Deny(reason) => Some((l.account, reason, l.note.unwrap_or_default())),
            Decision::Allow => None,
        })
        .collect()
}

fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(
        (answer.status, &answer.body),
        (401, &json!({ "message": REFUSED })),
        "{what}"
    );
    assert!(answer.set_cookie.is_none(), "{what}: no session");
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_login_opens_a_device_bound_session_that_reads_the_caseload() {
    for backend in BACKENDS {
        let app = spawn_app_full(backend, test_guard_config(), true).await;
        let page = send(app.http.get(format!("{}/connexion", app.base))).await;
        let page = page.body.as_str().unwrap_or_default().to_string();
        assert!(
            page.contains("id=\"proconnect\"") && page.contains("Se connecter avec ProConnect"),
            "{backend:?}: {page}"
        );
        link(&app, CAMILLE_SUB, "t.ce1").await;
        let person = app.fresh_person(0);
        app.mandate("T-CE1", None, person, Purpose::FollowUp, today(), None)
            .await;
        let key = DeviceKey::new();
        let before = app.ledger_size().await;

        let (ok, callback) = federated_login(&app, &key, CAMILLE, MFA_ACR, MFA_AMR).await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        assert_eq!(ok.body["next"], "/portail", "{backend:?}");
        assert_eq!(ok.body["high_risk"], false, "{backend:?}");
        let set = ok.set_cookie.clone().unwrap();
        for attr in [
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=36000",
        ] {
            assert!(set.contains(attr), "{backend:?}: {set}");
        }
        let cookie = cookie_value(&set);
        let handle = ok.body["handle"].as_str().unwrap().to_string();

        // The caseload, through the session and the key that began.
        let caseload = |key: &DeviceKey| {
            key.proof(
                "GET",
                &public(&app, "/portail/f/dossiers"),
                Some(&handle),
                app.clock.now(),
            )
        };
        let (status, html) =
            fragment(&app, &cookie, "/portail/f/dossiers", Some(caseload(&key))).await;
        assert_eq!(status, 200, "{backend:?}: {html}");
        assert!(
            html.contains(&format!("/portail/f/personne/{person}?finalite=follow_up")),
            "{backend:?}: {html}"
        );
        // The cookie without the key: nothing; with another key: nothing.
        let (status, _) = fragment(&app, &cookie, "/portail/f/dossiers", None).await;
        assert_eq!(status, 401, "{backend:?}: the cookie alone");
        let (status, _) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(&DeviceKey::new())),
        )
        .await;
        assert_eq!(status, 401, "{backend:?}: another key");

        // The login is ledgered like the others: method oidc, the session.
        let account = app.account("t.ce1").account_id;
        let leaves = app.leaves(before).await;
        let login = leaves
            .iter()
            .find(|l| l.action == LeafAction::Login)
            .unwrap_or_else(|| panic!("{backend:?}: no login leaf in {leaves:?}"));
        assert_eq!(login.account, account, "{backend:?}");
        assert_eq!(login.decision, Decision::Allow, "{backend:?}");
        assert_eq!(login.note.as_deref(), Some("oidc"), "{backend:?}");
        assert!(login.session.is_some(), "{backend:?}");
        let lifecycle = app.auth.lifecycle(account).await.unwrap().unwrap();
        assert!(lifecycle.last_login_at.is_some(), "{backend:?}: last login");

        // The same state again, even with the same key and a fresh proof:
        // refused, and ledgered as a replay of the state.
        let before = app.ledger_size().await;
        let replay = finish(&app, &key, &callback).await;
        assert_refused(&replay, &format!("{backend:?}: a replayed state"));
        let noted = failures(&app, before).await;
        assert_eq!(
            noted,
            vec![(
                AccountId::UNKNOWN,
                DenyReason::InvalidRequest,
                "oidc: state unknown, used or expired".to_string()
            )],
            "{backend:?}"
        );

        // An officer unlinks the identity: its federated session ends.
        let ended = app
            .auth
            .unlink_federation(
                &Provider::shared().issuer,
                CAMILLE_SUB,
                app.account("t.officer").account_id,
                app.clock.now(),
            )
            .await
            .unwrap();
        assert_eq!(ended, Some(account), "{backend:?}");
        let (status, _) =
            fragment(&app, &cookie, "/portail/f/dossiers", Some(caseload(&key))).await;
        assert_eq!(status, 401, "{backend:?}: after the unlink");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_logins_are_refused_alike_and_ledgered_each_with_its_reason() {
    for backend in BACKENDS {
        let app = spawn_app_full(backend, test_guard_config(), true).await;
        link(&app, CAMILLE_SUB, "t.ce1").await;
        let key = DeviceKey::new();

        // One factor at the provider: asked for a multi-factor acr, the
        // provider would prompt again, so a thief holding only the password
        // edits the demand out of the authorization URL (the browser's to
        // edit); the provider then vouches for one factor, and the login is
        // refused, though the identity is linked.
        let before = app.ledger_size().await;
        let url = begin(&app, &key).await;
        let edited = with_param(&url, "claims", AMR_ONLY);
        let back = at_the_provider(&edited, CAMILLE, ONE_FACTOR_ACR, ONE_FACTOR_AMR).await;
        let callback = callback_page(&app, &back).await;
        let one_factor = finish(&app, &key, &callback).await;
        assert_refused(&one_factor, &format!("{backend:?}: one factor"));
        let noted = failures(&app, before).await;
        assert_eq!(noted.len(), 1, "{backend:?}: {noted:?}");
        assert_eq!(noted[0].1, DenyReason::BadCredentials, "{backend:?}");
        assert!(
            noted[0]
                .2
                .starts_with("oidc: acr/amr: no multi-factor authentication"),
            "{backend:?}: {noted:?}"
        );

        // Multi-factor, but an identity no officer linked.
        let before = app.ledger_size().await;
        let (unlinked, _) = federated_login(&app, &key, YANIS, MFA_ACR, MFA_AMR).await;
        assert_refused(&unlinked, &format!("{backend:?}: unlinked identity"));
        assert_eq!(
            failures(&app, before).await,
            vec![(
                AccountId::UNKNOWN,
                DenyReason::BadCredentials,
                "oidc: no account linked to this identity".to_string()
            )],
            "{backend:?}"
        );

        // Begun by one key, finished by another (a callback pushed into
        // another browser): refused, and the state is used up.
        let before = app.ledger_size().await;
        let url = begin(&app, &key).await;
        let back = at_the_provider(&url, CAMILLE, MFA_ACR, MFA_AMR).await;
        let callback = callback_page(&app, &back).await;
        let other = finish(&app, &DeviceKey::new(), &callback).await;
        assert_refused(&other, &format!("{backend:?}: another key"));
        let again = finish(&app, &key, &callback).await;
        assert_refused(&again, &format!("{backend:?}: the state is used up"));
        let noted = failures(&app, before).await;
        assert_eq!(
            noted.iter().map(|n| n.2.as_str()).collect::<Vec<_>>(),
            vec![
                "oidc: callback with another device key than the one that began the login",
                "oidc: state unknown, used or expired",
            ],
            "{backend:?}"
        );
        assert_eq!(noted[0].1, DenyReason::SessionInvalid, "{backend:?}");

        // A state the server never gave.
        let before = app.ledger_size().await;
        let forged = finish(
            &app,
            &key,
            &Callback {
                code: "SplxlOBeZQQYbYS6WxSbIA".into(),
                state: "forged-state".into(),
            },
        )
        .await;
        assert_refused(&forged, &format!("{backend:?}: a forged state"));
        assert_eq!(
            failures(&app, before).await[0].2,
            "oidc: state unknown, used or expired",
            "{backend:?}"
        );

        // A linked identity whose account was suspended: refused, ledgered
        // under the account.
        link(&app, YANIS_SUB, "t.ce2").await;
        let ce2 = app.account("t.ce2").account_id;
        app.store
            .set_account_state(ce2, AccountState::Suspended)
            .await
            .unwrap();
        let before = app.ledger_size().await;
        let (suspended, _) = federated_login(&app, &key, YANIS, MFA_ACR, MFA_AMR).await;
        assert_refused(&suspended, &format!("{backend:?}: suspended account"));
        assert_eq!(
            failures(&app, before).await,
            vec![(
                ce2,
                DenyReason::BadCredentials,
                "oidc: account not active".to_string()
            )],
            "{backend:?}"
        );
        app.stop().await;
    }
}

/// The whole flow in Chromium, through the pages' own script: the button
/// makes the device key and goes to the provider; there the test submits
/// who logs in (the provider has no login page: a form posts the same JSON
/// the HTTP scenarios post); the provider sends the browser back to the
/// callback page, whose script finishes the login with the same key; the
/// portal then loads the caseload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_proconnect_button_ends_in_the_portal() {
    let driver = start_driver().await;
    for backend in BACKENDS {
        let app = spawn_app_full(backend, test_guard_config(), true).await;
        link(&app, CAMILLE_SUB, "t.ce1").await;
        let person = app.fresh_person(2);
        app.mandate("T-CE1", None, person, Purpose::FollowUp, today(), None)
            .await;
        let before = app.ledger_size().await;
        let client = browser(&driver).await;
        client.goto(&public(&app, "/connexion")).await.unwrap();
        wait_for(&client, "#proconnect")
            .await
            .click()
            .await
            .unwrap();

        // At the provider's interaction (no page there: the test logs in).
        let mut at = String::new();
        for _ in 0..200 {
            at = client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            if at.starts_with(&Provider::shared().issuer) && at.contains("/interaction/") {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        assert!(
            at.contains("/interaction/"),
            "{backend:?}: never reached the provider: {at}"
        );
        // text/plain form encoding writes `name=value` unescaped: the name
        // opens the JSON, the value closes it.
        let json_head =
            format!(r#"{{"login":"{CAMILLE}","acr":"{MFA_ACR}","amr":["pwd","totp"],"pad":""#);
        client
            .execute(
                "const f = document.createElement('form');
                 f.method = 'POST';
                 f.enctype = 'text/plain';
                 f.action = location.pathname + '/login';
                 const i = document.createElement('input');
                 i.name = arguments[0];
                 i.value = arguments[1];
                 f.appendChild(i);
                 document.documentElement.appendChild(f);
                 f.submit();",
                vec![json!(json_head), json!("\"}")],
            )
            .await
            .unwrap();

        // Back on the callback page, then in the portal, with the caseload.
        wait_for_path(&client, "/portail").await;
        let link = wait_for(
            &client,
            &format!("a.dossier[href=\"/portail/f/personne/{person}?finalite=follow_up\"]"),
        )
        .await;
        assert!(
            link.text().await.unwrap().contains(&person.to_string()),
            "{backend:?}"
        );
        let login = app
            .leaves(before)
            .await
            .into_iter()
            .find(|l| l.action == LeafAction::Login);
        assert_eq!(
            login.and_then(|l| l.note).as_deref(),
            Some("oidc"),
            "{backend:?}: the login is ledgered as a federated one"
        );
        client.close().await.unwrap();
        app.stop().await;
    }
}
