//! Browser login and device-bound sessions.
//!
//! Over plain HTTP (reqwest playing the page, with its own P-256 device
//! key): password + TOTP login, the lockout with backoff and identical
//! messages for unknown logins, sessions refused without the device proof,
//! with another key's proof, with a replayed proof or another URL, after
//! idling out, after logout.
//!
//! In a real headless Chromium (chromedriver and Chromium from Debian's
//! packages, driven by fantoccini over WebDriver, with Chrome's virtual
//! authenticator): log in with password + code, register a passkey, log
//! out, log in with the passkey, open the caseload and a person (field
//! groups and the masked NIR), then copy the session cookie into another
//! client: refused without the device key. Missing browser parts fail the
//! test, loudly.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use fantoccini::{ClientBuilder, Locator};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use rempart_auth::password::{HashParams, Password, PasswordHasher};
use rempart_auth::totp::TotpSecret;
use rempart_consult::LoginSettings;
use rempart_ledger::{Action as LeafAction, Decision, DenyReason};
use rempart_storage::StoredTotp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{BACKENDS, Backend, TestApp, WITH_BALANCER, spawn_app, today};
use rempart_domain::{AccountState, FieldGroup, Purpose};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
pub(super) const PASSWORD: &str = "Verger-Orage-47-Brume";
const INVALID: &str = "Identifiant ou mot de passe incorrect, ou code invalide.";

// ---------------------------------------------------------------------------
// The server's clock, moved by the tests instead of sleeping.
// ---------------------------------------------------------------------------

/// Real time plus an offset the test moves forward; or, once frozen, a
/// fixed instant plus that offset (for rules counted in whole seconds).
#[derive(Clone, Default)]
pub struct TestClock {
    offset_secs: Arc<AtomicI64>,
    /// Microseconds since 1970 when frozen, 0 while time flows.
    frozen_at: Arc<AtomicI64>,
}

impl TestClock {
    pub fn clock(&self) -> rempart_consult::Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }

    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn freeze(&self) {
        self.frozen_at
            .store(Utc::now().timestamp_micros(), Ordering::SeqCst);
    }

    pub fn now(&self) -> DateTime<Utc> {
        let frozen = self.frozen_at.load(Ordering::SeqCst);
        let base = if frozen == 0 {
            Utc::now()
        } else {
            DateTime::from_timestamp_micros(frozen).unwrap()
        };
        base + chrono::Duration::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
}

/// Browser login served at `http://localhost:<port>` (an IP address is not
/// a valid WebAuthn RP id).
/// The login side's replay space is smaller than in production, so that a
/// test can fill it in a second.
pub fn login_settings(port: u16) -> LoginSettings {
    let mut settings = LoginSettings::new(&format!("http://localhost:{port}")).unwrap();
    settings.login_replay_capacity = LOGIN_REPLAY_CAPACITY;
    // Small enough that a test fills them (see
    // `a_full_address_table_counts_new_addresses_together`).
    settings.lockout.max_addresses = MAX_ADDRESSES;
    settings.lockout.max_unknown_logins = MAX_ADDRESSES;
    settings
}

/// Source addresses (and unknown logins) the test servers' login throttle
/// keeps states for at most.
const MAX_ADDRESSES: usize = 8;

/// See [`login_settings`].
const LOGIN_REPLAY_CAPACITY: usize = 500;

// ---------------------------------------------------------------------------
// Factors and the test's device key
// ---------------------------------------------------------------------------

/// Gives `login` a password (argon2id through the auth crate) and a TOTP
/// secret (sealed as the server expects), through the store.
pub(super) async fn seed_factors(app: &TestApp, login: &str) -> TotpSecret {
    let account = app.account(login).account_id;
    let hasher = PasswordHasher::new(HashParams::RECOMMENDED).unwrap();
    let hash = hasher
        .hash(&Password::new(PASSWORD.to_string()).unwrap())
        .unwrap();
    app.auth
        .set_password(account, &hash.to_phc_string(), Utc::now())
        .await
        .unwrap();
    let secret = TotpSecret::generate().unwrap();
    let sealed = rempart_consult::login::seal_totp_secret(&app.vault, account, &secret).unwrap();
    app.auth
        .set_totp(StoredTotp {
            account_id: account,
            sealed_secret: sealed,
            last_step: None,
            enrolled_at: Utc::now(),
        })
        .await
        .unwrap();
    secret
}

/// The code an authenticator app shows at `at`.
pub(super) fn code_at(secret: &TotpSecret, at: DateTime<Utc>) -> String {
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(0)
        .with_secret(totp_rs::Secret::new_stack(*secret.expose_bytes()))
        .build()
        .unwrap();
    totp.generate(at.timestamp() as u64).to_string()
}

/// A device key as the page's WebCrypto key: P-256, proofs in DPoP format.
pub(super) struct DeviceKey(p256::ecdsa::SigningKey);

impl DeviceKey {
    pub(super) fn new() -> DeviceKey {
        DeviceKey(p256::ecdsa::SigningKey::generate())
    }

    fn jwk(&self) -> Value {
        let point = self.0.verifying_key().to_sec1_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        })
    }

    /// A proof for `method` on `url` at `at`, tied to the session `handle`.
    pub(super) fn proof(
        &self,
        method: &str,
        url: &str,
        handle: Option<&str>,
        at: DateTime<Utc>,
    ) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).unwrap();
        let mut claims = json!({
            "htm": method,
            "htu": url,
            "iat": at.timestamp(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        if let Some(h) = handle {
            claims["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(h.as_bytes())));
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// A client from `addr` (127.0.0.x): the lockout counts per source address.
pub(super) fn client_from(addr: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(addr))
        .build()
        .unwrap()
}

/// What the page's URL is, as the server knows it.
pub(super) fn public(app: &TestApp, path: &str) -> String {
    format!("http://localhost:{}{path}", app.port)
}

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
    retry_after: Option<String>,
    pub(super) set_cookie: Option<String>,
    /// Every `Set-Cookie` header, in order.
    set_cookies: Vec<String>,
}

pub(super) async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after");
    let set_cookie = header("set-cookie");
    let set_cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        body,
        retry_after,
        set_cookie,
        set_cookies,
    }
}

/// The page's password login: a ceremony, then the form, both with proofs.
pub(super) async fn password_login(
    app: &TestApp,
    client: &reqwest::Client,
    key: &DeviceKey,
    login: &str,
    password: &str,
    code: &str,
) -> Answer {
    password_login_with(app, client, key, login, password, code, None).await
}

/// The trusted-browser cookie a login answer sets.
fn device_cookie(answer: &Answer) -> String {
    answer
        .set_cookies
        .iter()
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix("__Host-rempart_device=")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no device cookie in {:?}", answer.set_cookies))
}

/// [`password_login`] from a browser that shows `device`, its
/// trusted-browser cookie.
async fn password_login_with(
    app: &TestApp,
    client: &reqwest::Client,
    key: &DeviceKey,
    login: &str,
    password: &str,
    code: &str,
    device: Option<&str>,
) -> Answer {
    let now = app.clock.now();
    let start = send(
        client
            .post(format!("{}/connexion/defi", app.base))
            .header(
                "DPoP",
                key.proof("POST", &public(app, "/connexion/defi"), None, now),
            )
            .json(&json!({"kind": "password"})),
    )
    .await;
    assert_eq!(start.status, 200, "{:?}", start.body);
    let ceremony = start.body["ceremony"].as_str().unwrap().to_string();
    let mut form = client
        .post(format!("{}/connexion/mot-de-passe", app.base))
        .header(
            "DPoP",
            key.proof("POST", &public(app, "/connexion/mot-de-passe"), None, now),
        )
        .json(&json!({
            "ceremony": ceremony,
            "login": login,
            "password": password,
            "code": code,
        }));
    if let Some(device) = device {
        form = form.header("Cookie", format!("__Host-rempart_device={device}"));
    }
    send(form).await
}

/// The cookie value from a `Set-Cookie` header.
pub(super) fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    let (name, value) = first.split_once('=').unwrap();
    assert_eq!(name, "__Host-rempart_session");
    value.to_string()
}

/// A fragment request as the page makes it; `proof` decides the header.
pub(super) async fn fragment(
    app: &TestApp,
    cookie: &str,
    path: &str,
    proof: Option<String>,
) -> (u16, String) {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}{path}", app.base))
        .header("Cookie", format!("__Host-rempart_session={cookie}"));
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A POST as the page's script sends it within a session, to `base` (an
/// instance): the cookie and a fresh device proof naming the public URL of
/// `path`; `query` follows the path (proofs name no query).
pub(super) async fn session_post(
    app: &TestApp,
    base: &str,
    session: (&str, &str, &DeviceKey),
    path: &str,
    query: &str,
    body: &str,
) -> Answer {
    let (cookie, handle, key) = session;
    send(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{base}{path}{query}"))
            .header("Cookie", format!("__Host-rempart_session={cookie}"))
            .header(
                "DPoP",
                key.proof("POST", &public(app, path), Some(handle), app.clock.now()),
            )
            .body(body.to_string()),
    )
    .await
}

/// A GET of a portal fragment within a session, to `base` (an instance).
pub(super) async fn session_get(
    app: &TestApp,
    base: &str,
    session: (&str, &str, &DeviceKey),
    path: &str,
) -> u16 {
    let (cookie, handle, key) = session;
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}{path}"))
        .header("Cookie", format!("__Host-rempart_session={cookie}"))
        .header(
            "DPoP",
            key.proof("GET", &public(app, path), Some(handle), app.clock.now()),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Session refusals ledgered since `from`, by note.
async fn session_refusals(app: &TestApp, from: u64) -> Vec<String> {
    app.leaves(from)
        .await
        .into_iter()
        .filter(|l| l.decision == Decision::Deny(DenyReason::SessionInvalid))
        .map(|l| l.note.unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_wrong_passwords_lock_with_backoff_and_unknown_logins_read_the_same() {
    // Through the balancer too: an address's counter, and a login that
    // names no account, are the store's, whichever replica counts them.
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let known = client_from([127, 0, 0, 2]);
        let unknown = client_from([127, 0, 0, 3]);
        let key = DeviceKey::new();
        let before = app.ledger_size().await;
        // Backoff counts whole seconds: time stands still between attempts.
        app.clock.freeze();

        let mut wait = 1;
        for attempt in 1..=10 {
            let code = code_at(&secret, app.clock.now());
            let a = password_login(&app, &known, &key, "t.ce1", "Mauvais-Mot-2-Passe", &code).await;
            let b = password_login(
                &app,
                &unknown,
                &key,
                "t.nobody",
                "Mauvais-Mot-2-Passe",
                &code,
            )
            .await;
            assert_eq!(
                (a.status, &a.body),
                (401, &json!({"message": INVALID})),
                "{backend:?}: attempt {attempt}"
            );
            assert_eq!((b.status, &b.body), (a.status, &a.body), "same answer");
            // Straight away again: held back, unevaluated, the same for both.
            let a = password_login(&app, &known, &key, "t.ce1", PASSWORD, &code).await;
            let b = password_login(&app, &unknown, &key, "t.nobody", PASSWORD, &code).await;
            assert_eq!(
                a.status, 429,
                "{backend:?}: attempt {attempt}: {:?}",
                a.body
            );
            assert_eq!((b.status, &b.body), (a.status, &a.body));
            assert_eq!(b.retry_after, a.retry_after);
            let text = a.body["message"].as_str().unwrap();
            assert!(text.starts_with("Trop de tentatives."), "{text}");
            if attempt < 10 {
                assert_eq!(a.retry_after.as_deref(), Some(wait.to_string().as_str()));
                app.advance(wait).await;
                wait *= 2;
            } else {
                // Locked: 30 minutes, whatever is typed.
                assert_eq!(a.retry_after.as_deref(), Some("1800"));
                assert_eq!(text, "Trop de tentatives. Réessayez dans 30 minutes.");
            }
        }
        let leaves = app.leaves(before).await;
        let account = app.account("t.ce1").account_id;
        let failed = |l: &&rempart_ledger::AuditLeaf| l.action == LeafAction::LoginFailed;
        assert_eq!(
            leaves
                .iter()
                .filter(failed)
                .filter(|l| l.account == account)
                .filter(|l| l.decision == Decision::Deny(DenyReason::BadCredentials))
                .count(),
            10,
            "{backend:?}: ten counted failures"
        );
        assert!(
            leaves
                .iter()
                .any(|l| l.action == LeafAction::LockedOut && l.account == account),
            "{backend:?}: the lock is its own event"
        );
        assert_eq!(
            leaves
                .iter()
                .filter(failed)
                .filter(|l| l.decision == Decision::Deny(DenyReason::LockedOut))
                .count(),
            20,
            "{backend:?}: every held-back attempt is ledgered"
        );

        // After the lock, the right password and a fresh code open a
        // session; the answer carries the cookie and the handle.
        app.advance(31 * 60).await;
        let ok = password_login(
            &app,
            &known,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let set = ok.set_cookie.unwrap();
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(cookie_value(&set).starts_with("rms_"));
        // The same code again: a replay, refused like any bad credential.
        app.advance(2).await;
        let replay = password_login(
            &app,
            &known,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now() - chrono::Duration::seconds(2)),
        )
        .await;
        assert_eq!(
            (replay.status, &replay.body),
            (401, &json!({"message": INVALID})),
            "{backend:?}"
        );
        app.stop().await;
    }
}

/// A stolen session (its cookie and its device key, as malware in the
/// browser holds them) cannot plant the thief's passkey: adding a factor
/// needs a fresh proof of the factors, within the 5-minute step-up window
/// (for the first passkey, the password + TOTP login itself; once a
/// passkey exists, a passkey step-up). Each refusal is ledgered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_session_cannot_add_a_passkey_without_a_fresh_step_up() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let account = app.account("t.ce1").account_id;
        let client = client_from([127, 0, 0, 7]);
        let key = DeviceKey::new();
        let login = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(login.status, 200, "{backend:?}: {:?}", login.body);
        let cookie = cookie_value(&login.set_cookie.unwrap());
        let handle = login.body["handle"].as_str().unwrap().to_string();
        let session = (cookie.as_str(), handle.as_str(), &key);

        // Four minutes after a password + TOTP login, the owner may start
        // enrolling a first passkey: the login is the fresh proof.
        app.advance(4 * 60).await;
        let start = session_post(&app, &app.base, session, "/portail/cle/debut", "", "").await;
        assert_eq!(start.status, 200, "{backend:?}: {:?}", start.body);
        let ceremony = start.body["ceremony"].as_str().unwrap().to_string();

        // Six minutes after it, the session alone adds nothing: neither a
        // new enrolment nor the end of the one started in time.
        app.advance(2 * 60).await;
        let before = app.ledger_size().await;
        let refused = session_post(&app, &app.base, session, "/portail/cle/debut", "", "").await;
        assert_eq!(refused.status, 403, "{backend:?}: {:?}", refused.body);
        assert!(
            refused.body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("confirmation avec votre clé"),
            "{backend:?}: {:?}",
            refused.body
        );
        let finish = session_post(
            &app,
            &app.base,
            session,
            "/portail/cle/fin",
            &format!("?ceremonie={ceremony}"),
            "{}",
        )
        .await;
        assert_eq!(finish.status, 403, "{backend:?}: {:?}", finish.body);
        let refusals: Vec<_> = app
            .leaves(before)
            .await
            .into_iter()
            .filter(|l| {
                l.action == LeafAction::FactorEnrol
                    && l.account == account
                    && l.decision == Decision::Deny(DenyReason::StepUpRequired)
                    && l.note.as_deref() == Some("factor change: no recent step-up")
            })
            .collect();
        assert_eq!(refusals.len(), 2, "{backend:?}: both refusals ledgered");
        assert!(app.auth.passkeys(account).await.unwrap().is_empty());

        // Once a passkey exists, even a fresh password + TOTP login (a
        // phished password and code) adds none without the passkey.
        app.auth
            .add_passkey(rempart_storage::StoredPasskeyRow {
                credential_id: vec![7; 16],
                account_id: account,
                data: "{}".into(),
                created_at: app.clock.now(),
                last_used_at: None,
            })
            .await
            .unwrap();
        let again = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(again.status, 200, "{backend:?}: {:?}", again.body);
        let cookie = cookie_value(&again.set_cookie.unwrap());
        let handle = again.body["handle"].as_str().unwrap().to_string();
        let refused = session_post(
            &app,
            &app.base,
            (cookie.as_str(), handle.as_str(), &key),
            "/portail/cle/debut",
            "",
            "",
        )
        .await;
        assert_eq!(refused.status, 403, "{backend:?}: {:?}", refused.body);
        app.stop().await;
    }
}

/// A suspended account's requests extend nothing: polling its session
/// (here suspended in the registry without ending it, as a change made
/// outside the officer's operation would be) never moves the idle clock,
/// so the session idles out during the suspension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_a_suspended_accounts_session_keeps_nothing_alive() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let account = app.account("t.ce1").account_id;
        let client = client_from([127, 0, 0, 8]);
        let key = DeviceKey::new();
        let login = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(login.status, 200, "{backend:?}: {:?}", login.body);
        let cookie = cookie_value(&login.set_cookie.unwrap());
        let handle = login.body["handle"].as_str().unwrap().to_string();
        let session = (cookie.as_str(), handle.as_str(), &key);
        let digest = rempart_consult::authenticate::parse_session(&cookie)
            .unwrap()
            .0;
        let path = "/portail/f/dossiers";
        app.advance(2 * 60).await;
        assert_eq!(session_get(&app, &app.base, session, path).await, 200);
        let seen = app
            .auth
            .session(digest)
            .await
            .unwrap()
            .unwrap()
            .0
            .last_seen_at;
        assert!(
            seen > app.clock.now() - chrono::Duration::seconds(5),
            "{backend:?}: touched"
        );

        app.store
            .set_account_state(account, AccountState::Suspended)
            .await
            .unwrap();
        for _ in 0..14 {
            app.advance(2 * 60).await;
            assert_eq!(
                session_get(&app, &app.base, session, path).await,
                403,
                "{backend:?}: suspended"
            );
        }
        let row = app.auth.session(digest).await.unwrap().unwrap().0;
        assert_eq!(
            row.last_seen_at, seen,
            "{backend:?}: 28 min of polling moved nothing"
        );

        // Reactivated 32 minutes after the last real request: idled out.
        app.store
            .set_account_state(account, AccountState::Active)
            .await
            .unwrap();
        app.advance(4 * 60).await;
        assert_eq!(
            session_get(&app, &app.base, session, path).await,
            401,
            "{backend:?}: the session did not outlive its idle timeout"
        );
        app.stop().await;
    }
}

/// A code the authenticator does not show now.
fn wrong_code(secret: &TotpSecret, at: DateTime<Utc>) -> String {
    let right: u32 = code_at(secret, at).parse().unwrap();
    format!("{:06}", (right + 500_000) % 1_000_000)
}

/// Issue 17, item 1: the right password with wrong codes, 50 attempts at
/// once from 50 addresses, wave after wave. Each attempt is reserved by a
/// compare-and-set before any hash is computed, so a wave evaluates one
/// attempt (the others wait the backoff it started), the account locks at
/// its tenth evaluated attempt, every attempt is either counted or
/// refused, and the lock raises a guard alert. Before, a wave of 30 was
/// evaluated whole and left one failure counted.
/// Fails password logins to `login` (with `password` and a wrong code),
/// from a new address of 127.0.`net`.x each time (so that no address
/// counter is in it) and each past the previous one's backoff, showing
/// `device` if given, until one is refused: the lock. How many were
/// evaluated (and failed) before it.
async fn fail_until_locked(
    app: &TestApp,
    login: &str,
    password: &str,
    net: u8,
    device: Option<&str>,
) -> u8 {
    for attempt in 0..40u8 {
        let a = password_login_with(
            app,
            &client_from([127, 0, net, 10 + attempt]),
            &DeviceKey::new(),
            login,
            password,
            "000000",
            device,
        )
        .await;
        if a.status == 429 {
            return attempt;
        }
        assert_eq!(a.status, 401, "{attempt}: {:?}", a.body);
        // Past any backoff, and past the life of the login proofs.
        app.advance(600).await;
    }
    panic!("{login}: never locked");
}

/// Issue 17, item 8: the lock was a remote switch. Anyone who knows a login
/// could fail ten times, then once per lock period, and keep its owner out
/// for good. Now the owner's browser (one that logged into the account
/// before) counts its failures apart: it logs in through the lock, and the
/// owner is told of the failures; every other browser, the attacker's and
/// a new one of the owner's alike, stays locked out. The guard's alert on
/// the lock stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_no_remote_switch_for_the_owners_browser() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let other = seed_factors(&app, "t.ce2").await;
        let account = app.account("t.ce1").account_id;
        app.clock.freeze();
        let owner = client_from([127, 0, 2, 1]);
        let ok = password_login(
            &app,
            &owner,
            &DeviceKey::new(),
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let trusted = device_cookie(&ok);
        // The attacker's own account, with its own trusted browser.
        let ok = password_login(
            &app,
            &owner,
            &DeviceKey::new(),
            "t.ce2",
            PASSWORD,
            &code_at(&other, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let attackers_own = device_cookie(&ok);
        app.advance(600).await;

        // The attacker does not know the password: ten failures (from as
        // many addresses, as a botnet would) lock the account for every
        // browser it does not trust.
        let locked = fail_until_locked(&app, "t.ce1", "not the password", 4, None).await;
        assert_eq!(locked, 10, "{backend:?}: ten failures lock the account");
        let code = || code_at(&secret, app.clock.now());
        // A new browser of the owner's, from another address: locked out.
        let fresh = password_login(
            &app,
            &client_from([127, 0, 2, 2]),
            &DeviceKey::new(),
            "t.ce1",
            PASSWORD,
            &code(),
        )
        .await;
        assert_eq!(fresh.status, 429, "{backend:?}: {:?}", fresh.body);
        // Another account's trusted browser is no key to this one.
        let borrowed = password_login_with(
            &app,
            &client_from([127, 0, 2, 3]),
            &DeviceKey::new(),
            "t.ce1",
            PASSWORD,
            &code(),
            Some(&attackers_own),
        )
        .await;
        assert_eq!(borrowed.status, 429, "{backend:?}: {:?}", borrowed.body);
        // The owner's browser logs in, and is told.
        let before = app.ledger_size().await;
        let mine = password_login_with(
            &app,
            &owner,
            &DeviceKey::new(),
            "t.ce1",
            PASSWORD,
            &code(),
            Some(&trusted),
        )
        .await;
        assert_eq!(mine.status, 200, "{backend:?}: {:?}", mine.body);
        assert_eq!(
            mine.body["failed_attempts_elsewhere"], 10,
            "{backend:?}: {:?}",
            mine.body
        );
        let login = app
            .leaves(before)
            .await
            .into_iter()
            .find(|l| l.action == LeafAction::Login && l.account == account)
            .expect("the login's leaf");
        assert_eq!(
            login.note.as_deref(),
            Some("password_totp; 10 failed attempts from other browsers"),
            "{backend:?}"
        );
        // Its success lifted nothing for the others.
        let (_, stored) = app.auth.password(account).await.unwrap().unwrap();
        let state: rempart_auth::lockout::AccountThrottle = serde_json::from_str(&stored).unwrap();
        assert!(
            state.is_locked(app.clock.now().timestamp() as u64),
            "{backend:?}"
        );
        // The trust moves to the new token; the old one is spent.
        let renewed = device_cookie(&mine);
        assert_ne!(renewed, trusted);
        app.advance(600).await;
        let stale = password_login_with(
            &app,
            &owner,
            &DeviceKey::new(),
            "t.ce1",
            PASSWORD,
            &code(),
            Some(&trusted),
        )
        .await;
        assert_eq!(stale.status, 429, "{backend:?}: {:?}", stale.body);
        // The trusted browser has a counter of its own: ten failures
        // there lock it too.
        let own = fail_until_locked(&app, "t.ce1", PASSWORD, 3, Some(&renewed)).await;
        assert_eq!(
            own, 10,
            "{backend:?}: a trusted browser locks on its own failures"
        );

        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_codes_are_reserved_before_any_hash_and_lock_at_ten() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let account = app.account("t.ce1").account_id;
        let key = DeviceKey::new();
        let before = app.ledger_size().await;
        app.clock.freeze();
        let clients: Vec<reqwest::Client> = (0..50u8)
            .map(|i| client_from([127, 0, 1, 10 + i]))
            .collect();
        let mut sent = 0usize;
        let mut evaluated_per_wave = Vec::new();
        let mut seen = before;
        for wave in 0..40 {
            let code = wrong_code(&secret, app.clock.now());
            let answers = futures_util::future::join_all(
                clients
                    .iter()
                    .map(|c| password_login(&app, c, &key, "t.ce1", PASSWORD, &code)),
            )
            .await;
            sent += answers.len();
            for a in &answers {
                assert!(
                    a.status == 401 || a.status == 429,
                    "{backend:?} wave {wave}: {} {:?}",
                    a.status,
                    a.body
                );
            }
            let leaves = app.leaves(seen).await;
            seen = app.ledger_size().await;
            evaluated_per_wave.push(
                leaves
                    .iter()
                    .filter(|l| l.account == account)
                    .filter(|l| l.decision == Decision::Deny(DenyReason::BadCredentials))
                    .count(),
            );
            if answers
                .iter()
                .any(|a| a.retry_after.as_deref() == Some("1800"))
            {
                break;
            }
            // Past the longest backoff any answer asked for, and past the
            // life of the wave's login proofs, whose replay space the test
            // settings keep small.
            let wait = answers
                .iter()
                .filter_map(|a| a.retry_after.as_deref())
                .filter_map(|r| r.parse::<i64>().ok())
                .max()
                .unwrap_or(1);
            app.advance(wait.max(600)).await;
        }
        assert_eq!(
            evaluated_per_wave[0], 1,
            "{backend:?}: one attempt of the first wave evaluated: {evaluated_per_wave:?}"
        );
        let evaluated: usize = evaluated_per_wave.iter().sum();
        assert_eq!(
            evaluated, 10,
            "{backend:?}: locked at the tenth evaluated attempt: {evaluated_per_wave:?}"
        );
        let (_, stored) = app.auth.password(account).await.unwrap().unwrap();
        let state: rempart_auth::lockout::AccountThrottle = serde_json::from_str(&stored).unwrap();
        assert_eq!(state.consecutive_failures, 10, "{backend:?}: {stored}");
        assert!(
            state.is_locked(app.clock.now().timestamp() as u64),
            "{backend:?}"
        );

        // Every attempt is accounted for: counted, or refused unevaluated.
        let leaves = app.leaves(before).await;
        let mine = |l: &&rempart_ledger::AuditLeaf| {
            l.account == account && l.action == LeafAction::LoginFailed
        };
        let refused = leaves
            .iter()
            .filter(mine)
            .filter(|l| l.decision == Decision::Deny(DenyReason::LockedOut))
            .count();
        assert_eq!(evaluated + refused, sent, "{backend:?}: {sent} attempts");
        assert_eq!(
            leaves
                .iter()
                .filter(|l| l.account == account && l.action == LeafAction::LockedOut)
                .count(),
            1,
            "{backend:?}: the lock is one event"
        );

        // The lock is an alert naming the account and its failures.
        app.sync_guards().await;
        let alerts = app
            .guard
            .alerts(&rempart_guard::store::AlertQuery {
                account_id: Some(account),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let alert = alerts
            .iter()
            .find(|a| a.alert.kind == rempart_guard::AlertKind::FailedLogins)
            .unwrap_or_else(|| panic!("{backend:?}: no failed-logins alert in {alerts:?}"));
        assert_eq!(
            alert.alert.explanation[0].feature,
            rempart_guard::Feature::AccountLoginFailures
        );
        assert_eq!(alert.alert.explanation[0].value, 10.0);
        assert!(alert.alert.evidence.last_seq.is_some());

        // The right code does not open a locked account, whatever the
        // address, until the lock ends.
        let ok = password_login(
            &app,
            &client_from([127, 0, 2, 1]),
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 429, "{backend:?}: {:?}", ok.body);
        app.stop().await;
    }
}

/// Behind a trusted proxy (127.0.0.1 here), the address counted is the
/// client's from `X-Forwarded-For`: one client's failure holds back that
/// client, not the others behind the same proxy. Anyone else's claim is
/// ignored, and garbage where the proxy wrote is a 400 naming the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_counted_apart() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        app.clock.freeze();
        let key = DeviceKey::new();
        let behind = |local: [u8; 4], client: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                "x-forwarded-for",
                reqwest::header::HeaderValue::from_str(client).unwrap(),
            );
            reqwest::Client::builder()
                .no_proxy()
                .local_address(IpAddr::from(local))
                .default_headers(headers)
                .build()
                .unwrap()
        };
        let proxy = [127, 0, 0, 1];
        let code = "123456";
        let status = async |client: &reqwest::Client, login: &str| {
            password_login(&app, client, &key, login, "Mauvais-Mot-2-Passe", code)
                .await
                .status
        };
        // Distinct unknown logins: only the address's counter is shared.
        let a = behind(proxy, "192.0.2.1");
        assert_eq!(status(&a, "t.nobody1").await, 401, "{backend:?}");
        assert_eq!(status(&a, "t.nobody2").await, 429, "{backend:?}: A waits");
        let b = behind(proxy, "6.6.6.6, 192.0.2.2");
        assert_eq!(
            status(&b, "t.nobody3").await,
            401,
            "{backend:?}: B, behind the same proxy, does not wait for A"
        );
        // Not a trusted proxy: its claims are not believed.
        let c = behind([127, 0, 0, 7], "192.0.2.3");
        assert_eq!(status(&c, "t.nobody4").await, 401, "{backend:?}");
        let d = behind([127, 0, 0, 7], "192.0.2.4");
        assert_eq!(
            status(&d, "t.nobody5").await,
            429,
            "{backend:?}: the same peer, whatever it claims"
        );
        let garbage = behind(proxy, "not-an-address");
        let r = send(garbage.get(format!("{}/livez", app.base))).await;
        assert_eq!(r.status, 400, "{backend:?}: {:?}", r.body);
        assert_eq!(r.body["error"]["field"], "x-forwarded-for", "{:?}", r.body);
        app.stop().await;
    }
}

/// Issue 17, item 1, the address's side: one address trying 30 accounts at
/// once gets no more evaluations than it has failures left before its lock
/// (10), its lock is an alert, and other addresses are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spraying_many_accounts_at_once_is_held_to_its_places() {
    // Through the balancer too: an address's counter, and a login that
    // names no account, are the store's, whichever replica counts them.
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let key = DeviceKey::new();
        let before = app.ledger_size().await;
        app.clock.freeze();
        let sprayer = client_from([127, 0, 3, 7]);
        let logins: Vec<String> = (0..30).map(|i| format!("t.sprayed{i}")).collect();
        let answers = futures_util::future::join_all(
            logins
                .iter()
                .map(|l| password_login(&app, &sprayer, &key, l, PASSWORD, "123456")),
        )
        .await;
        let refused = answers.iter().filter(|a| a.status == 429).count();
        let evaluated = app
            .leaves(before)
            .await
            .iter()
            .filter(|l| l.decision == Decision::Deny(DenyReason::BadCredentials))
            .count();
        assert!(
            evaluated <= 10,
            "{backend:?}: {evaluated} evaluated at once"
        );
        assert_eq!(evaluated + refused, 30, "{backend:?}");
        // Until each is evaluated, more waves: ten failures in all lock it.
        let mut total = evaluated;
        for _ in 0..20 {
            if total >= 10 {
                break;
            }
            app.advance(600).await;
            let a = password_login(&app, &sprayer, &key, "t.again", PASSWORD, "123456").await;
            if a.status == 401 {
                total += 1;
            }
        }
        assert_eq!(total, 10, "{backend:?}");
        let locked = password_login(&app, &sprayer, &key, "t.last", PASSWORD, "123456").await;
        assert_eq!(locked.status, 429, "{backend:?}");
        assert_eq!(locked.retry_after.as_deref(), Some("900"), "{backend:?}");
        let elsewhere = password_login(
            &app,
            &client_from([127, 0, 3, 8]),
            &key,
            "t.x",
            PASSWORD,
            "1",
        )
        .await;
        assert_eq!(elsewhere.status, 401, "{backend:?}");
        app.sync_guards().await;
        let alerts = app
            .guard
            .alerts(&rempart_guard::store::AlertQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            alerts
                .iter()
                .any(|a| a.alert.kind == rempart_guard::AlertKind::FailedLogins
                    && a.alert.explanation[0].feature
                        == rempart_guard::Feature::AddressLoginFailures),
            "{backend:?}: {alerts:?}"
        );
        app.stop().await;
    }
}

/// The address table is bounded and never evicts: once it holds as many
/// failing addresses as it may, every new address counts on one shared
/// state (so failing from fresh addresses resets nobody's counter), the
/// addresses already known keep their own, and once their failures may be
/// forgotten the table makes room again. Through the balancer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_address_table_counts_new_addresses_together() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let key = DeviceKey::new();
        app.clock.freeze();
        let from = |i: u8| client_from([127, 0, 4, i]);
        let fail = |client: reqwest::Client, login: String| {
            let (app, key) = (&app, &key);
            async move { password_login(app, &client, key, &login, PASSWORD, "1").await }
        };
        // Fill the table: one failure from each of as many addresses.
        for i in 1..=MAX_ADDRESSES as u8 {
            let a = fail(from(i), format!("t.full{i}")).await;
            assert_eq!(a.status, 401, "{backend:?}: address {i}");
        }
        // New addresses share one state: the second waits the first's
        // backoff although it never failed itself.
        let a = fail(from(101), "t.new1".into()).await;
        assert_eq!(a.status, 401, "{backend:?}");
        let b = fail(from(102), "t.new2".into()).await;
        assert_eq!(b.status, 429, "{backend:?}: {:?}", b.body);
        assert_eq!(b.retry_after.as_deref(), Some("1"), "{backend:?}");
        // A known address keeps its own counter (one failure: 1 s).
        app.advance(1).await;
        let known = fail(from(1), "t.full1b".into()).await;
        assert_eq!(known.status, 401, "{backend:?}");
        let c = fail(from(103), "t.new3".into()).await;
        assert_eq!(c.status, 401, "{backend:?}");
        let d = fail(from(104), "t.new4".into()).await;
        assert_eq!(d.retry_after.as_deref(), Some("2"), "{backend:?}");
        // An hour later every failure may be forgotten: room again, and
        // new addresses count apart.
        app.advance(3601).await;
        // The purge deletes them without waiting for the table to fill.
        // (8 addresses, the overflow, 8 unknown logins.)
        let before = app.registry_rows("login_throttle").await;
        assert_eq!(before, 2 * MAX_ADDRESSES as i64 + 1, "{backend:?}");
        let settings = rempart_consult::PurgeSettings::default();
        let purged =
            rempart_consult::purge::purge_once(app.auth.as_ref(), &settings, app.clock.now())
                .await
                .unwrap();
        // Every address's state, the overflow's too; unknown logins are
        // never forgotten with time (like an account's counter).
        assert_eq!(
            purged.login_throttles,
            MAX_ADDRESSES as u64 + 1,
            "{backend:?}"
        );
        let after = app.registry_rows("login_throttle").await;
        assert_eq!(after, MAX_ADDRESSES as i64, "{backend:?}");
        for i in [105, 106] {
            let a = fail(from(i), format!("t.later{i}")).await;
            assert_eq!(a.status, 401, "{backend:?}: address {i}");
        }
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_needs_its_device_proof_on_every_request() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let person = app.fresh_person(0);
        app.mandate("T-CE1", None, person, Purpose::FollowUp, today(), None)
            .await;
        let client = client_from([127, 0, 0, 4]);
        let key = DeviceKey::new();

        // No OpenID provider configured: neither the button nor the route.
        let page = send(client.get(format!("{}/connexion", app.base))).await;
        let page = page.body.as_str().unwrap_or_default().to_string();
        assert!(page.contains("id=\"cle\""), "{backend:?}: {page}");
        assert!(!page.contains("ProConnect"), "{backend:?}: {page}");
        let start = send(
            client
                .post(format!("{}/connexion/federation/debut", app.base))
                .header(
                    "DPoP",
                    key.proof(
                        "POST",
                        &public(&app, "/connexion/federation/debut"),
                        None,
                        app.clock.now(),
                    ),
                ),
        )
        .await;
        assert_eq!(start.status, 404, "{backend:?}: {:?}", start.body);

        let ok = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let cookie = cookie_value(&ok.set_cookie.unwrap());
        let handle = ok.body["handle"].as_str().unwrap().to_string();
        let path = format!("/portail/f/personne/{person}");
        let url = public(&app, &path);
        let query = format!("{path}?finalite=follow_up");
        let before = app.ledger_size().await;

        // The right key, session and request: the person, as a fragment.
        let proof = key.proof("GET", &url, Some(&handle), app.clock.now());
        let (status, html) = fragment(&app, &cookie, &query, Some(proof.clone())).await;
        assert_eq!(status, 200, "{backend:?}: {html}");
        assert!(html.contains("data-groupe=\"identity\""), "{html}");
        assert!(html.contains("data-vue=\"masked\""), "{html}");
        // The same proof again: a replay.
        assert_eq!(fragment(&app, &cookie, &query, Some(proof)).await.0, 401);
        // No proof; another key; another URL; another session's handle; too old.
        assert_eq!(fragment(&app, &cookie, &query, None).await.0, 401);
        let other = DeviceKey::new();
        let now = app.clock.now();
        let cases = [
            other.proof("GET", &url, Some(&handle), now),
            key.proof(
                "GET",
                &public(&app, "/portail/f/dossiers"),
                Some(&handle),
                now,
            ),
            key.proof("POST", &url, Some(&handle), now),
            key.proof("GET", &url, Some("autre-session"), now),
            key.proof("GET", &url, None, now),
            key.proof(
                "GET",
                &url,
                Some(&handle),
                now - chrono::Duration::seconds(120),
            ),
        ];
        for proof in cases {
            assert_eq!(fragment(&app, &cookie, &query, Some(proof)).await.0, 401);
        }
        let notes = session_refusals(&app, before).await;
        for want in [
            "device proof: replayed",
            "no device proof",
            "device proof: another key",
            "device proof: another request",
            "device proof: another session",
            "device proof: out of time",
        ] {
            assert!(
                notes.iter().any(|n| n == want),
                "{backend:?}: {want} in {notes:?}"
            );
        }

        // Idle for the whole timeout: the session is over.
        let caseload = |at: DateTime<Utc>| {
            key.proof(
                "GET",
                &public(&app, "/portail/f/dossiers"),
                Some(&handle),
                at,
            )
        };
        let (status, html) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(app.clock.now())),
        )
        .await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains(&format!("/portail/f/personne/{person}?finalite=follow_up")));
        app.advance(29 * 60).await;
        let (status, _) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(app.clock.now())),
        )
        .await;
        assert_eq!(
            status, 200,
            "{backend:?}: still within 30 min of the last request"
        );
        app.advance(29 * 60).await;
        let (status, _) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(app.clock.now())),
        )
        .await;
        assert_eq!(status, 200, "{backend:?}: requests restart the idle clock");
        app.advance(31 * 60).await;
        let (status, _) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(app.clock.now())),
        )
        .await;
        assert_eq!(status, 401, "{backend:?}: idle for 31 min");

        // Break-glass through a session needs a step-up first (a France
        // Travail agent, who may break the glass otherwise).
        let ft_secret = seed_factors(&app, "t.ft").await;
        let ft = password_login(
            &app,
            &client,
            &key,
            "t.ft",
            PASSWORD,
            &code_at(&ft_secret, app.clock.now()),
        )
        .await;
        assert_eq!(ft.status, 200, "{backend:?}: {:?}", ft.body);
        let ft_cookie = cookie_value(&ft.set_cookie.unwrap());
        let ft_handle = ft.body["handle"].as_str().unwrap().to_string();
        let target = app.fresh_person(2);
        let bg = format!("/portail/f/personne/{target}/bris-de-glace");
        let before_bg = app.ledger_size().await;
        let refused = send(
            reqwest::Client::new()
                .post(format!("{}{bg}", app.base))
                .header("Cookie", format!("__Host-rempart_session={ft_cookie}"))
                .header(
                    "DPoP",
                    key.proof(
                        "POST",
                        &public(&app, &bg),
                        Some(&ft_handle),
                        app.clock.now(),
                    ),
                )
                .json(&json!({
                    "finalite": "follow_up",
                    "motif": "Appel urgent de la personne, dossier bloqué depuis une semaine",
                })),
        )
        .await;
        assert_eq!(refused.status, 403, "{backend:?}: {:?}", refused.body);
        assert!(
            refused
                .body
                .as_str()
                .unwrap()
                .contains("confirmation avec votre clé"),
            "{:?}",
            refused.body
        );
        assert!(
            app.leaves(before_bg).await.iter().any(|l| {
                l.action == LeafAction::BreakGlass
                    && l.decision == Decision::Deny(DenyReason::StepUpRequired)
            }),
            "{backend:?}: the refusal is ledgered"
        );

        // However busy, a session ends 10 hours after login.
        let ok = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let cookie = cookie_value(&ok.set_cookie.unwrap());
        let handle = ok.body["handle"].as_str().unwrap().to_string();
        let caseload = |at: DateTime<Utc>| {
            key.proof(
                "GET",
                &public(&app, "/portail/f/dossiers"),
                Some(&handle),
                at,
            )
        };
        for _ in 0..20 {
            app.advance(29 * 60).await;
            let (status, _) = fragment(
                &app,
                &cookie,
                "/portail/f/dossiers",
                Some(caseload(app.clock.now())),
            )
            .await;
            assert_eq!(status, 200, "{backend:?}: within 10 h, never idle");
        }
        app.advance(21 * 60).await;
        let (status, _) = fragment(
            &app,
            &cookie,
            "/portail/f/dossiers",
            Some(caseload(app.clock.now())),
        )
        .await;
        assert_eq!(status, 401, "{backend:?}: 10 h 01 after login");

        // A fresh session, then logout: cookie and key no longer work.
        let ok = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let cookie = cookie_value(&ok.set_cookie.unwrap());
        let handle = ok.body["handle"].as_str().unwrap().to_string();
        let out = send(
            reqwest::Client::new()
                .post(format!("{}/deconnexion", app.base))
                .header("Cookie", format!("__Host-rempart_session={cookie}"))
                .header(
                    "DPoP",
                    key.proof(
                        "POST",
                        &public(&app, "/deconnexion"),
                        Some(&handle),
                        app.clock.now(),
                    ),
                ),
        )
        .await;
        assert_eq!(out.status, 200, "{backend:?}: {:?}", out.body);
        assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
        let proof = key.proof(
            "GET",
            &public(&app, "/portail/f/dossiers"),
            Some(&handle),
            app.clock.now(),
        );
        assert_eq!(
            fragment(&app, &cookie, "/portail/f/dossiers", Some(proof))
                .await
                .0,
            401,
            "{backend:?}: after logout"
        );
        let leaves = app.leaves(before).await;
        for action in [LeafAction::Login, LeafAction::Logout] {
            assert!(
                leaves
                    .iter()
                    .any(|l| l.action == action && l.session.is_some()),
                "{backend:?}: {action:?} ledgered with its session"
            );
        }
        app.stop().await;
    }
}

/// What the break-glass leaf's note says: `mandate <ref>; reason
/// hmac-sha256 <digest>`; the reference and the digest.
fn break_glass_note(note: &str) -> (String, Vec<u8>) {
    let rest = note.strip_prefix("mandate ").expect(note);
    let (reference, digest) = rest.split_once("; reason hmac-sha256 ").expect(note);
    (
        reference.to_string(),
        URL_SAFE_NO_PAD.decode(digest).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_through_a_stepped_up_session_reads_once_and_keeps_the_reason_out_of_the_ledger()
 {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ft").await;
        let client = client_from([127, 0, 0, 42]);
        let key = DeviceKey::new();
        let ok = password_login(
            &app,
            &client,
            &key,
            "t.ft",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let cookie = cookie_value(&ok.set_cookie.unwrap());
        let handle = ok.body["handle"].as_str().unwrap().to_string();
        let session = rempart_consult::authenticate::parse_session(&cookie)
            .unwrap()
            .0;
        let target = app.fresh_person(3);
        let bg = format!("/portail/f/personne/{target}/bris-de-glace");
        let glass = |motif: &str, proof: String| {
            send(
                reqwest::Client::new()
                    .post(format!("{}{bg}", app.base))
                    .header("Cookie", format!("__Host-rempart_session={cookie}"))
                    .header("DPoP", proof)
                    .json(&json!({"finalite": "follow_up", "motif": motif})),
            )
        };
        let proof = || key.proof("POST", &public(&app, &bg), Some(&handle), app.clock.now());
        // Free text an agent may type in a hurry, personal data included
        // (synthetic here): it must never reach the ledger.
        let reason = "Appel de Mme Martin au 06 12 34 56 78, dossier bloqué";

        // No step-up yet: refused, nothing created.
        let before = app.ledger_size().await;
        let r = glass(reason, proof()).await;
        assert_eq!(r.status, 403, "{backend:?}: {:?}", r.body);
        // The step-up, as the passkey ceremony records it (Chromium
        // plays the ceremony itself in the browser module).
        app.auth
            .mark_step_up(session, app.clock.now())
            .await
            .unwrap();
        let r = glass("trop court", proof()).await;
        assert_eq!(r.status, 400, "{backend:?}: {:?}", r.body);

        // The ledger fails: no mandate, no reason kept, nothing shown
        // (issue 17, item 7: the mandate came before its leaf).
        app.break_ledger(true).await;
        let size = app.ledger_size().await;
        let r = glass(reason, proof()).await;
        assert_eq!(r.status, 503, "{backend:?}: {:?}", r.body);
        assert_eq!(app.ledger_size().await, size, "{backend:?}");
        assert!(
            app.store
                .mandates_of_person(target)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            app.store
                .break_glass_reasons(target)
                .await
                .unwrap()
                .is_empty()
        );
        app.break_ledger(false).await;

        let sent = proof();
        let r = glass(reason, sent.clone()).await;
        assert_eq!(r.status, 200, "{backend:?}: {:?}", r.body);
        let html = r.body.as_str().unwrap();
        let nir = match app.vault.read(target, &[FieldGroup::Nir]).await.unwrap() {
            rempart_vault::Read::Found(v) => v.nir.unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(
            html.contains("data-vue=\"clear\"") && html.contains(nir.as_str()),
            "{backend:?}: the person, NIR in clear for France Travail"
        );
        let leaves = app.leaves(before).await;
        assert!(
            session_refusals(&app, before).await.is_empty(),
            "{backend:?}: one authentication per request, no replay refusal"
        );
        let glassed: Vec<_> = leaves
            .iter()
            .filter(|l| l.action == LeafAction::BreakGlass && l.decision == Decision::Allow)
            .collect();
        assert_eq!(glassed.len(), 1, "{backend:?}");
        let note = glassed[0].note.clone().unwrap();
        for word in reason.split_whitespace().filter(|w| w.len() > 3) {
            assert!(!note.contains(word), "{backend:?}: {word:?} in {note:?}");
        }
        let (reference, digest) = break_glass_note(&note);
        let reads: Vec<_> = leaves
            .iter()
            .filter(|l| l.action == LeafAction::ReadPerson)
            .collect();
        assert_eq!(reads.len(), 1, "{backend:?}");
        assert!(reads[0].reveals_person_data() && reads[0].person == Some(target));
        assert!(
            leaves
                .iter()
                .all(|l| !l.note.as_deref().unwrap_or("").contains("Martin")),
            "{backend:?}: no leaf holds the reason"
        );
        // The one-day mandate, and the reason kept sealed beside it: it
        // opens to the text the ledger's digest commits to.
        let mandates = app.store.mandates_of_person(target).await.unwrap();
        assert_eq!(mandates.len(), 1, "{backend:?}: only the successful try");
        assert_eq!(mandates[0].reference.as_str(), reference);
        assert_eq!(mandates[0].account_id, Some(app.account("t.ft").account_id));
        assert_eq!(mandates[0].valid_to, today().succ_opt());
        let kept = app.store.break_glass_reasons(target).await.unwrap();
        assert_eq!(kept.len(), 1, "{backend:?}");
        assert_eq!(kept[0].mandate_id, mandates[0].id);
        let opened = app.vault.open_reason(&kept[0]).await.unwrap().unwrap();
        assert_eq!(opened.text, reason, "{backend:?}");
        assert_eq!(opened.digest.as_slice(), digest.as_slice(), "{backend:?}");

        // The same request replayed: refused, nothing more created.
        let r = glass(reason, sent).await;
        assert_eq!(r.status, 401, "{backend:?}");
        // The step-up is 5 minutes old at most.
        app.advance(6 * 60).await;
        let r = glass(reason, proof()).await;
        assert_eq!(r.status, 403, "{backend:?}: {:?}", r.body);
        assert_eq!(app.store.mandates_of_person(target).await.unwrap().len(), 1);

        // The person is shredded: their break-glass reasons go with them.
        assert!(app.vault.shred(target).await.unwrap());
        assert!(
            app.store
                .break_glass_reasons(target)
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}"
        );
        assert_eq!(app.vault.open_reason(&kept[0]).await.unwrap(), None);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signed_login_requests_leaves_open_sessions_working() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ce1").await;
        let client = client_from([127, 0, 0, 41]);
        let key = DeviceKey::new();
        app.clock.freeze();
        let ok = password_login(
            &app,
            &client,
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(ok.status, 200, "{backend:?}: {:?}", ok.body);
        let cookie = cookie_value(&ok.set_cookie.unwrap());
        let handle = ok.body["handle"].as_str().unwrap().to_string();
        let path = "/portail/f/dossiers";
        let read = async || {
            let proof = key.proof("GET", &public(&app, path), Some(&handle), app.clock.now());
            fragment(&app, &cookie, path, Some(proof)).await.0
        };
        assert_eq!(read().await, 200, "{backend:?}");

        // Anyone: a fresh key and a valid signed proof per request, 8 at a
        // time, until the login side refuses (each replica's, behind the
        // balancer).
        let replicas = if backend == Backend::Balanced {
            super::REPLICAS
        } else {
            1
        };
        let started = std::time::Instant::now();
        let flood = |n: usize| {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                let url = format!("{}/connexion/defi", app.base);
                let proof = DeviceKey::new().proof(
                    "POST",
                    &public(&app, "/connexion/defi"),
                    None,
                    app.clock.now(),
                );
                let client = client.clone();
                tasks.spawn(async move {
                    send(
                        client
                            .post(url)
                            .header("DPoP", proof)
                            .json(&json!({"kind": "password"})),
                    )
                    .await
                    .status
                });
            }
            tasks.join_all()
        };
        let mut accepted = 0;
        let mut refused = 0;
        while refused == 0 {
            for status in flood(8).await {
                match status {
                    200 => accepted += 1,
                    503 => refused += 1,
                    other => panic!("{backend:?}: a login start answered {other}"),
                }
            }
            assert!(
                accepted <= LOGIN_REPLAY_CAPACITY * replicas,
                "{backend:?}: bounded"
            );
        }
        if replicas == 1 {
            assert_eq!(
                accepted + 2,
                LOGIN_REPLAY_CAPACITY,
                "{backend:?}: the session's own login took two entries"
            );
        } else {
            // Each replica's space is its own: the first to fill refuses
            // first; the others fill within a few more rounds.
            for _ in 0..8 {
                let statuses = flood(8).await;
                accepted += statuses.iter().filter(|s| **s == 200).count();
                if statuses.iter().all(|s| *s == 503) {
                    break;
                }
            }
            assert!(
                accepted + 2 <= LOGIN_REPLAY_CAPACITY * replicas,
                "{backend:?}: bounded by the replicas' spaces"
            );
        }
        eprintln!(
            "{backend:?}: login side full after {accepted} anonymous requests in {:?}",
            started.elapsed()
        );
        // The flood goes on; the open session keeps reading.
        for _ in 0..5 {
            assert!(flood(4).await.iter().all(|s| *s == 503), "{backend:?}");
            assert_eq!(read().await, 200, "{backend:?}: the session is unaffected");
        }
        // A new login waits for the login side to drain (65 s at most).
        let fresh = DeviceKey::new();
        let start = |at| {
            send(
                client
                    .post(format!("{}/connexion/defi", app.base))
                    .header(
                        "DPoP",
                        fresh.proof("POST", &public(&app, "/connexion/defi"), None, at),
                    )
                    .json(&json!({"kind": "password"})),
            )
        };
        assert_eq!(start(app.clock.now()).await.status, 503, "{backend:?}");
        app.advance(70).await;
        assert_eq!(start(app.clock.now()).await.status, 200, "{backend:?}");
        assert_eq!(read().await, 200, "{backend:?}");
        app.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Real Chromium
// ---------------------------------------------------------------------------

/// chromedriver on a free port, stopped when dropped.
pub(super) struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) async fn start_driver() -> Driver {
    for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: the browser tests need Debian's {package} \
             (apt-get install -y chromium chromium-driver); they never skip"
        );
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
            && r.status().is_success()
        {
            return driver;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {}", driver.url);
}

pub(super) async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut args = vec![
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--no-first-run",
    ];
    // Chromium refuses to run as root without this.
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        args.push("--no-sandbox");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": CHROMIUM, "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}"))
}

/// Chrome's virtual authenticator (WebDriver WebAuthn extension): a
/// platform authenticator with resident keys and user verification.
async fn virtual_authenticator(driver: &Driver, client: &fantoccini::Client) {
    let session = client.session_id().await.unwrap().unwrap();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!(
            "{}/session/{session}/webauthn/authenticator",
            driver.url
        ))
        .json(&json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(
        status.is_success(),
        "virtual authenticator: {status} {body}"
    );
}

pub(super) async fn wait_for(
    client: &fantoccini::Client,
    css: &str,
) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(StdDuration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waiting for {css}: {e}"))
}

async fn wait_for_text(client: &fantoccini::Client, css: &str, want: &str) {
    for _ in 0..200 {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && e.text().await.unwrap_or_default().contains(want)
        {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let got = match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => "(absent)".into(),
    };
    panic!("waiting for {css} to say {want:?}; it says {got:?}");
}

pub(super) async fn wait_for_path(client: &fantoccini::Client, path: &str) {
    for _ in 0..200 {
        if client.current_url().await.is_ok_and(|u| u.path() == path) {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    panic!(
        "the browser did not reach {path}; it is at {:?}",
        client.current_url().await.map(|u| u.to_string())
    );
}

async fn type_into(client: &fantoccini::Client, css: &str, text: &str) {
    let e = wait_for(client, css).await;
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_passkey_login_opens_the_caseload_and_a_copied_cookie_is_refused() {
    let driver = start_driver().await;
    for backend in WITH_BALANCER {
        chromium_scenario(&driver, backend).await;
    }
}

async fn chromium_scenario(driver: &Driver, backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = seed_factors(&app, "t.ce1").await;
    let person = app.fresh_person(1);
    app.mandate("T-CE1", None, person, Purpose::FollowUp, today(), None)
        .await;
    let account = app.account("t.ce1").account_id;
    let client = browser(driver).await;
    let base = public(&app, "");

    // 1. Password + code in the page.
    client.goto(&format!("{base}/connexion")).await.unwrap();
    virtual_authenticator(driver, &client).await;
    type_into(&client, "#login", "t.ce1").await;
    type_into(&client, "#password", PASSWORD).await;
    type_into(&client, "#code", &code_at(&secret, app.clock.now())).await;
    wait_for(&client, "#envoyer").await.click().await.unwrap();
    wait_for_path(&client, "/portail").await;
    wait_for(&client, "#dossiers").await;

    // The cookie as the browser keeps it.
    let cookie = client
        .get_named_cookie("__Host-rempart_session")
        .await
        .unwrap();
    assert_eq!(cookie.http_only(), Some(true), "{backend:?}");
    assert_eq!(cookie.secure(), Some(true), "{backend:?}");
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "{backend:?}"
    );

    // 2. Register a passkey with the virtual authenticator.
    wait_for(&client, "#ajouter-cle")
        .await
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "#message", "Votre clé d'accès est enregistrée.").await;
    assert_eq!(app.auth.passkeys(account).await.unwrap().len(), 1);

    // 3. Log out: the page ends the session and forgets the key.
    wait_for(&client, "#deconnexion")
        .await
        .click()
        .await
        .unwrap();
    wait_for_path(&client, "/deconnexion").await;
    wait_for_text(&client, "#message", "Vous êtes déconnecté.").await;
    let first = rempart_consult::authenticate::parse_session(cookie.value())
        .unwrap()
        .0;
    let ended = app.auth.session(first).await.unwrap().unwrap().0;
    assert_eq!(ended.end_reason.as_deref(), Some("logout"), "{backend:?}");

    // 4. Meanwhile someone failed on purpose until the password locked
    //    (issue 17, item 8; written as the tenth failure writes it: the
    //    browser's clock cannot be moved past the backoffs). The passkey
    //    path stays open. Log in with the passkey (username-less).
    let now = app.clock.now().timestamp() as u64;
    let locked = rempart_auth::lockout::AccountThrottle {
        consecutive_failures: 10,
        last_failure_unix: Some(now),
        lock: Some(rempart_auth::lockout::Lock::Until {
            until_unix: now + 1800,
        }),
    };
    let (_, stored) = app.auth.password(account).await.unwrap().unwrap();
    assert!(
        app.auth
            .swap_throttle(account, &stored, &serde_json::to_string(&locked).unwrap())
            .await
            .unwrap()
    );
    let refused = password_login(
        &app,
        &client_from([127, 0, 5, 1]),
        &DeviceKey::new(),
        "t.ce1",
        PASSWORD,
        &code_at(&secret, app.clock.now()),
    )
    .await;
    assert_eq!(refused.status, 429, "{backend:?}: the password is locked");
    client.goto(&format!("{base}/connexion")).await.unwrap();
    wait_for(&client, "#cle").await.click().await.unwrap();
    wait_for_path(&client, "/portail").await;
    // The owner is told someone failed elsewhere, whatever the way in.
    wait_for_text(
        &client,
        "#message",
        "10 tentative(s) de connexion échouée(s)",
    )
    .await;
    // The browser's trust from its password login was renewed, not doubled.
    assert_eq!(app.registry_rows("login_device").await, 1, "{backend:?}");

    // A step-up: a fresh assertion of the passkey, recorded in the session.
    wait_for(&client, "#verifier").await.click().await.unwrap();
    wait_for_text(&client, "#message", "Confirmation enregistrée").await;

    // 5. The caseload, then the person: the groups of follow_up for a
    //    Cap emploi agent, the NIR masked.
    let link = wait_for(&client, "a.dossier").await;
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some(format!("/portail/f/personne/{person}?finalite=follow_up").as_str())
    );
    link.click().await.unwrap();
    wait_for(&client, "#personne").await;
    let mut groups = Vec::new();
    for e in client
        .find_all(Locator::Css("section.groupe"))
        .await
        .unwrap()
    {
        groups.push(e.attr("data-groupe").await.unwrap().unwrap_or_default());
    }
    assert_eq!(
        groups,
        ["identity", "contact", "status", "nir"],
        "{backend:?}"
    );
    let nir = client.find(Locator::Css("#nir-valeur")).await.unwrap();
    assert_eq!(
        nir.attr("data-vue").await.unwrap().as_deref(),
        Some("masked")
    );
    let read = app
        .vault
        .read(person, &[rempart_domain::FieldGroup::Nir])
        .await
        .unwrap();
    let rempart_vault::Read::Found(view) = read else {
        panic!("person {person} not found");
    };
    let masked = view.nir.unwrap().masked();
    assert_eq!(nir.text().await.unwrap(), masked, "{backend:?}");
    assert!(masked.ends_with("** *** *** **"));
    let page = client.source().await.unwrap();
    assert!(!page.contains("rms_"), "the cookie never reaches the page");

    // 6. The cookie copied into another client, without the device key.
    let cookie = client
        .get_named_cookie("__Host-rempart_session")
        .await
        .unwrap()
        .value()
        .to_string();
    let handle = client
        .execute(
            "return document.querySelector('meta[name=\"rempart-session\"]').content",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let before = app.ledger_size().await;
    let path = "/portail/f/dossiers";
    assert_eq!(
        fragment(&app, &cookie, path, None).await.0,
        401,
        "{backend:?}"
    );
    let thief = DeviceKey::new();
    let forged = thief.proof("GET", &public(&app, path), Some(&handle), app.clock.now());
    assert_eq!(
        fragment(&app, &cookie, path, Some(forged)).await.0,
        401,
        "{backend:?}"
    );
    let mut notes = session_refusals(&app, before).await;
    if backend == Backend::Balanced {
        // Leaves staged by different replicas are in the order the
        // integrator took them, not the order of the requests.
        notes.sort();
    }
    let mut expected = vec!["no device proof", "device proof: another key"];
    if backend == Backend::Balanced {
        expected.sort();
    }
    assert_eq!(notes, expected, "{backend:?}");
    // Meanwhile the browser, with its key, still reads.
    wait_for(&client, "a[data-fragment]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&client, "#dossiers").await;

    // 7. Log out: the session row is ended; the cookie opens nothing.
    wait_for(&client, "#deconnexion")
        .await
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "#message", "Vous êtes déconnecté.").await;
    let digest = rempart_consult::authenticate::parse_session(&cookie)
        .unwrap()
        .0;
    let (row, _) = app.auth.session(digest).await.unwrap().unwrap();
    assert_eq!(row.method, "passkey");
    assert!(
        row.step_up_at.is_some(),
        "{backend:?}: the step-up is in the session"
    );
    assert_eq!(row.end_reason.as_deref(), Some("logout"), "{backend:?}");
    assert_eq!(fragment(&app, &cookie, path, None).await.0, 401);
    let leaves = app.leaves(0).await;
    for action in [
        LeafAction::Login,
        LeafAction::FactorEnrol,
        LeafAction::StepUp,
        LeafAction::Logout,
        LeafAction::ReadPerson,
    ] {
        assert!(
            leaves.iter().any(|l| l.action == action
                && l.account == account
                && l.decision == Decision::Allow),
            "{backend:?}: {action:?} in the ledger"
        );
    }
    client.close().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_agent_breaks_the_glass_with_a_step_up() {
    let driver = start_driver().await;
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let secret = seed_factors(&app, "t.ft").await;
        let account = app.account("t.ft").account_id;
        let target = app.fresh_person(5);
        let client = browser(&driver).await;
        let base = public(&app, "");

        // Log in with password + code, then register a passkey.
        client.goto(&format!("{base}/connexion")).await.unwrap();
        virtual_authenticator(&driver, &client).await;
        type_into(&client, "#login", "t.ft").await;
        type_into(&client, "#password", PASSWORD).await;
        type_into(&client, "#code", &code_at(&secret, app.clock.now())).await;
        wait_for(&client, "#envoyer").await.click().await.unwrap();
        wait_for_path(&client, "/portail").await;
        wait_for(&client, "#dossiers").await;
        wait_for(&client, "#ajouter-cle")
            .await
            .click()
            .await
            .unwrap();
        wait_for_text(&client, "#message", "Votre clé d'accès est enregistrée.").await;

        // A person outside the agent's caseload: the view says so and
        // offers the break-glass form.
        client
            .execute(
                "const a = document.createElement('a');
                 a.id = 'vers-personne';
                 a.href = arguments[0];
                 a.dataset.fragment = '';
                 a.textContent = 'Dossier';
                 document.body.appendChild(a);",
                vec![json!(format!(
                    "/portail/f/personne/{target}?finalite=follow_up"
                ))],
            )
            .await
            .unwrap();
        let before = app.ledger_size().await;
        wait_for(&client, "#vers-personne")
            .await
            .click()
            .await
            .unwrap();
        wait_for(&client, "#bris-de-glace").await;
        let reason = "Appel urgent de la personne, rendez-vous de 9 h annulé";
        type_into(&client, "#motif", reason).await;
        wait_for(&client, "#briser").await.click().await.unwrap();

        // The passkey confirms (the virtual authenticator consents), then
        // the glass is broken and the person shown, NIR in clear.
        wait_for(&client, "#personne").await;
        let nir = client.find(Locator::Css("#nir-valeur")).await.unwrap();
        assert_eq!(
            nir.attr("data-vue").await.unwrap().as_deref(),
            Some("clear"),
            "{backend:?}"
        );
        let stored = match app
            .vault
            .read(target, &[rempart_domain::FieldGroup::Nir])
            .await
            .unwrap()
        {
            rempart_vault::Read::Found(v) => v.nir.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(nir.text().await.unwrap(), stored.as_str(), "{backend:?}");

        let leaves = app.leaves(before).await;
        let allowed = |action| {
            leaves
                .iter()
                .filter(|l| {
                    l.action == action && l.account == account && l.decision == Decision::Allow
                })
                .count()
        };
        assert_eq!(allowed(LeafAction::StepUp), 1, "{backend:?}");
        assert_eq!(allowed(LeafAction::BreakGlass), 1, "{backend:?}");
        assert_eq!(allowed(LeafAction::ReadPerson), 1, "{backend:?}");
        assert!(
            leaves
                .iter()
                .all(|l| l.decision == Decision::Allow || l.action == LeafAction::ReadPerson),
            "{backend:?}: nothing refused but the first look: {leaves:?}"
        );
        let note = leaves
            .iter()
            .find(|l| l.action == LeafAction::BreakGlass)
            .and_then(|l| l.note.clone())
            .unwrap();
        assert!(!note.contains("urgent"), "{backend:?}: {note}");
        let (reference, digest) = break_glass_note(&note);
        // The generated population may hold other organisations' mandates
        // on this person; one is ours, for a day.
        let mandates: Vec<_> = app
            .store
            .mandates_of_person(target)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.account_id == Some(account))
            .collect();
        assert_eq!(mandates.len(), 1, "{backend:?}");
        assert_eq!(mandates[0].reference.as_str(), reference);
        assert_eq!(mandates[0].valid_to, today().succ_opt());
        let kept = app.store.break_glass_reasons(target).await.unwrap();
        assert_eq!(kept.len(), 1, "{backend:?}");
        let opened = app.vault.open_reason(&kept[0]).await.unwrap().unwrap();
        assert_eq!(
            (opened.text.as_str(), opened.digest.as_slice()),
            (reason, digest.as_slice()),
            "{backend:?}"
        );
        client.close().await.unwrap();
        app.stop().await;
    }
}
