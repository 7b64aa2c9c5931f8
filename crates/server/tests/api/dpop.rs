//! API clients over HTTP: `private_key_jwt` at the token endpoint and
//! DPoP-bound access tokens on every call, on both backends.
//!
//! The test plays a partner's software with real keys: an Ed25519 key it
//! registered (it signs the client assertions) and a P-256 key of its own
//! (it signs the DPoP proofs, and the token is bound to it). Proofs name
//! the server's public URL (`http://localhost:<port>`), not the address the
//! test connects to (`127.0.0.1`), as a client behind any proxy would.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use rempart_auth::client_assertion::{ASSERTION_TYPE, ClientKey};
use rempart_auth::jose::PublicJwk;
use rempart_consult::ClientSettings;
use rempart_domain::{AccountId, AccountState, PersonId, Purpose};
use rempart_ledger::{Action as LeafAction, AuditLeaf, Decision, DenyReason};
use rempart_server::{App, GuardChoice, LedgerSource, RegistryAt, Running, ServerConfig, Storage};
use rempart_vault::KeySource;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Backend, TestApp, WITH_BALANCER, spawn_app, today};

/// What the test server's API clients are configured with.
pub fn client_settings(port: u16) -> ClientSettings {
    ClientSettings::new(&format!("http://localhost:{port}")).unwrap()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key a client registers and signs its assertions with.
struct AssertionKey(ed25519_dalek::SigningKey);

impl AssertionKey {
    fn new() -> AssertionKey {
        AssertionKey(ed25519_dalek::SigningKey::from_bytes(&random::<32>()))
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.0.verifying_key().as_bytes())})
    }

    /// A client assertion (RFC 7523 §3) for `client_id`, to `aud`, at `at`.
    fn assertion(&self, client_id: &str, aud: &str, at: DateTime<Utc>) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT"});
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "jti": b64(random::<16>()),
            "iat": at.timestamp(),
            "exp": at.timestamp() + 60,
        });
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = ed25519_dalek::Signer::sign(&self.0, input.as_bytes());
        format!("{input}.{}", b64(sig.to_bytes()))
    }
}

/// The client's own DPoP key (P-256), never registered: the token is
/// bound to it at the token endpoint.
struct DpopKey(p256::ecdsa::SigningKey);

impl DpopKey {
    fn new() -> DpopKey {
        DpopKey(p256::ecdsa::SigningKey::generate())
    }

    fn jwk(&self) -> Value {
        let point = self.0.verifying_key().to_sec1_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(point.x().unwrap()),
            "y": b64(point.y().unwrap()),
        })
    }

    /// An RFC 9449 proof for `method` on `htu` at `at`; with `token`, its
    /// `ath`.
    fn proof(&self, method: &str, htu: &str, token: Option<&str>, at: DateTime<Utc>) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let mut claims = json!({
            "htm": method,
            "htu": htu,
            "iat": at.timestamp(),
            "jti": b64(random::<16>()),
        });
        if let Some(t) = token {
            claims["ath"] = json!(b64(Sha256::digest(t.as_bytes())));
        }
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.to_bytes()))
    }
}

/// A partner's software: its client id, its registered key, its DPoP key.
struct Client {
    id: String,
    key: AssertionKey,
    dpop: DpopKey,
}

/// Registers a client acting as `login`, as `rempart client register`
/// does.
async fn register(app: &TestApp, login: &str) -> Client {
    let key = AssertionKey::new();
    let jwk = PublicJwk::from_value(&key.jwk()).unwrap();
    let id = rempart_consult::clients::register_client(
        app.auth.as_ref(),
        app.account(login),
        vec![ClientKey { kid: None, jwk }],
        Utc::now(),
    )
    .await
    .unwrap();
    Client {
        id: id.as_str().to_string(),
        key,
        dpop: DpopKey::new(),
    }
}

/// The URL the server says it is at, for `path` (no query).
fn public(app: &TestApp, path: &str) -> String {
    format!("http://localhost:{}{path}", app.port)
}

struct Reply {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
    cache_control: Option<String>,
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let www_authenticate = header("www-authenticate");
    let cache_control = header("cache-control");
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        www_authenticate,
        cache_control,
    }
}

/// `POST /api/v1/token` with `assertion` and, if given, `proof`.
async fn token_request(app: &TestApp, base: &str, assertion: &str, proof: Option<&str>) -> Reply {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", ASSERTION_TYPE)
        .append_pair("client_assertion", assertion)
        .finish();
    let mut req = app
        .http
        .post(format!("{base}/api/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    reply(req.send().await.unwrap()).await
}

impl Client {
    fn assertion(&self, app: &TestApp) -> String {
        self.key
            .assertion(&self.id, &public(app, "/api/v1/token"), app.clock.now())
    }

    fn token_proof(&self, app: &TestApp) -> String {
        self.dpop
            .proof("POST", &public(app, "/api/v1/token"), None, app.clock.now())
    }

    /// A token, the way a client gets one: a fresh assertion and a proof.
    async fn token(&self, app: &TestApp) -> String {
        let r = token_request(
            app,
            &app.base,
            &self.assertion(app),
            Some(&self.token_proof(app)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["access_token"].as_str().unwrap().to_string()
    }
}

/// `GET path` on `base` with `authorization` and, if given, `proof`.
async fn call(base: &str, path: &str, authorization: &str, proof: Option<&str>) -> Reply {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http
        .get(format!("{base}{path}"))
        .header("authorization", authorization);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    reply(req.send().await.unwrap()).await
}

/// A person in `t.ce1`'s caseload (a mandate of its organisation).
async fn in_caseload(app: &TestApp, n: usize) -> (PersonId, String) {
    let p = app.fresh_person(n);
    app.mandate("T-CE1", None, p, Purpose::FollowUp, today(), None)
        .await;
    (p, format!("/api/v1/persons/{p}"))
}

fn assert_dpop_401(r: &Reply, error: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(
        r.body["error"]["code"], "unauthenticated",
        "{what}: our error shape"
    );
    let challenge = r.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with(&format!("DPoP error=\"{error}\"")),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

/// The last leaf: one refusal of `action` for `account` with `note`.
async fn assert_refusal_ledgered(
    app: &TestApp,
    from: u64,
    action: LeafAction,
    account: AccountId,
    reason: DenyReason,
    note: &str,
) {
    let leaves: Vec<AuditLeaf> = app.leaves(from).await;
    assert_eq!(leaves.len(), 1, "one leaf: {leaves:?}");
    let leaf = &leaves[0];
    assert_eq!(leaf.action, action);
    assert_eq!(leaf.account, account);
    assert_eq!(leaf.decision, Decision::Deny(reason));
    assert_eq!(leaf.note.as_deref(), Some(note));
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_a_dpop_token_and_reads_its_caseload_with_it() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let agent = app.account("t.ce1").clone();
        let client = register(&app, "t.ce1").await;
        let (p, path) = in_caseload(&app, 20).await;
        let before = app.ledger_size().await;

        let r = token_request(
            &app,
            &app.base,
            &client.assertion(&app),
            Some(&client.token_proof(&app)),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        assert_eq!(r.body["token_type"], "DPoP");
        assert_eq!(r.body["expires_in"], 300);
        assert_eq!(r.body["scope"], "api");
        assert_eq!(r.cache_control.as_deref(), Some("no-store"));
        let token = r.body["access_token"].as_str().unwrap().to_string();
        assert!(token.starts_with("rmpat_"), "{backend:?}");
        // Issuance is ledgered, and counts as the account's activity.
        let issued = app.leaves(before).await;
        assert_eq!(issued.len(), 1, "{backend:?}");
        assert_eq!(
            (issued[0].action, issued[0].decision, issued[0].account),
            (LeafAction::TokenIssue, Decision::Allow, agent.account_id)
        );
        assert_eq!(
            issued[0].note.as_deref(),
            Some(format!("client {}", client.id).as_str())
        );
        let lifecycle = app.auth.lifecycle(agent.account_id).await.unwrap().unwrap();
        assert!(
            lifecycle
                .last_login_at
                .is_some_and(|t| (Utc::now() - t).num_seconds() < 60),
            "{backend:?}: the token counts as activity"
        );

        // The consultation: the token under the DPoP scheme, a proof by the
        // bound key for this method and URL (no query), with ath.
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let before = app.ledger_size().await;
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        assert_eq!(r.body["id"], json!(p));
        assert_eq!(r.body["nir"]["view"], "masked", "the account's own policy");
        let read = app.leaves(before).await;
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].action, read[0].decision, read[0].account),
            (LeafAction::ReadPerson, Decision::Allow, agent.account_id)
        );
        assert_eq!(
            read[0].session, issued[0].session,
            "{backend:?}: the read names the token its issuance named"
        );

        // Another call needs another proof; the same token works with it.
        let proof = client.dpop.proof(
            "GET",
            &public(&app, "/api/v1/me"),
            Some(&token),
            app.clock.now(),
        );
        let r = call(
            &app.base,
            "/api/v1/me",
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        assert_eq!(r.body["login"], "t.ce1");

        // A person outside the account's caseload is the same 404 as ever.
        let other = app.fresh_person(21);
        let path = format!("/api/v1/persons/{other}");
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_eq!(r.status, 404, "{backend:?}: {}", r.body);

        // The document describes the endpoint and the scheme.
        let (_, doc) = app.get(None, "/api/v1/openapi.json").await;
        assert!(doc["paths"]["/api/v1/token"]["post"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["dpop"]["scheme"],
            "dpop"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_its_proof_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 22).await;
        let token = client.token(&app).await;
        let before = app.ledger_size().await;
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            None,
        )
        .await;
        assert_dpop_401(&r, "invalid_dpop_proof", &format!("{backend:?}"));
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::ReadPerson,
            app.account("t.ce1").account_id,
            DenyReason::SessionInvalid,
            "dpop: no single proof",
        )
        .await;
        // Nor does a token request without a proof get a token.
        let r = token_request(&app, &app.base, &client.assertion(&app), None).await;
        assert_eq!(r.status, 400, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"], "invalid_dpop_proof", "OAuth shape");
        assert!(r.body["error_description"].is_string());
        app.stop().await;
    }
}

/// A second server instance on the same database (its own connections,
/// its own process state), sharing the ledger as instances do.
async fn second_instance(app: &TestApp, backend: Backend) -> (String, Running) {
    let data = app._dir.path().join("data");
    let registry = match backend {
        Backend::Sqlite => RegistryAt::Sqlite(data.clone()),
        Backend::Postgres | Backend::Balanced => RegistryAt::Postgres {
            url: app.pg_schemas[0].url.clone(),
            schema: app.pg_schemas[0].schema.clone(),
        },
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The same public URL: both instances stand behind one name.
    let config = ServerConfig::new(Storage {
        registry,
        ledger: LedgerSource::Shared {
            ledger: app.ledger.clone(),
            store: app.ledger_store.clone(),
        },
        keys: KeySource::File(data.join("keys.json")),
    })
    .with_guard(GuardChoice::PassThrough)
    .with_clock(app.clock.clock())
    .with_login(super::browser::login_settings(app.port))
    .with_api_clients(client_settings(app.port));
    let server = App::build(config).await.unwrap().spawn(listener).unwrap();
    (format!("http://{}", server.addr), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_proof_jti_is_refused_by_every_instance() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let (second, stop_second) = second_instance(&app, backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 23).await;
        let token = client.token(&app).await;
        let query = format!("{path}?purpose=follow_up");
        let authorization = format!("DPoP {token}");
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let r = call(&app.base, &query, &authorization, Some(&proof)).await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        // The same proof again: to the same instance, then to the other.
        for base in [&app.base, &second] {
            let before = app.ledger_size().await;
            let r = call(base, &query, &authorization, Some(&proof)).await;
            assert_dpop_401(&r, "invalid_dpop_proof", &format!("{backend:?} {base}"));
            assert_refusal_ledgered(
                &app,
                before,
                LeafAction::ReadPerson,
                app.account("t.ce1").account_id,
                DenyReason::SessionInvalid,
                "dpop: replayed",
            )
            .await;
        }
        // The other instance serves a fresh proof: it is the jti it refused.
        let fresh = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let r = call(&second, &query, &authorization, Some(&fresh)).await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        stop_second.stop().await.unwrap();
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_for_another_method_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 24).await;
        let token = client.token(&app).await;
        let proof = client
            .dpop
            .proof("POST", &public(&app, &path), Some(&token), app.clock.now());
        let before = app.ledger_size().await;
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_dpop_401(&r, "invalid_dpop_proof", &format!("{backend:?}"));
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::ReadPerson,
            app.account("t.ce1").account_id,
            DenyReason::SessionInvalid,
            "dpop: another method",
        )
        .await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_for_another_url_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 25).await;
        let token = client.token(&app).await;
        let query = format!("{path}?purpose=follow_up");
        let wrong = [
            // Another endpoint of the same server.
            public(&app, "/api/v1/me"),
            // The address the client actually connected to, as the Host
            // header says: not the server's public URL.
            format!("{}{path}", app.base),
            // Another server.
            format!("https://elsewhere.example{path}"),
        ];
        for htu in wrong {
            let proof = client
                .dpop
                .proof("GET", &htu, Some(&token), app.clock.now());
            let before = app.ledger_size().await;
            let r = call(&app.base, &query, &format!("DPoP {token}"), Some(&proof)).await;
            assert_dpop_401(&r, "invalid_dpop_proof", &format!("{backend:?} {htu}"));
            assert_refusal_ledgered(
                &app,
                before,
                LeafAction::ReadPerson,
                app.account("t.ce1").account_id,
                DenyReason::SessionInvalid,
                "dpop: another url",
            )
            .await;
        }
        // The query is not part of htu (RFC 9449 §4.3): naming it is still
        // the same URL once normalised, and omitting it is the rule.
        let proof = client
            .dpop
            .proof("GET", &public(&app, &query), Some(&token), app.clock.now());
        let r = call(&app.base, &query, &format!("DPoP {token}"), Some(&proof)).await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replayed_with_another_key_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 26).await;
        let token = client.token(&app).await;
        // The thief has the token and a key of its own, not the client's.
        let thief = DpopKey::new();
        let proof = thief.proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let before = app.ledger_size().await;
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_dpop_401(&r, "invalid_token", &format!("{backend:?}"));
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::ReadPerson,
            app.account("t.ce1").account_id,
            DenyReason::SessionInvalid,
            "dpop: another key",
        )
        .await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 27).await;
        let token = client.token(&app).await;
        let query = format!("{path}?purpose=follow_up");
        let proof = |app: &TestApp| {
            client
                .dpop
                .proof("GET", &public(app, &path), Some(&token), app.clock.now())
        };
        app.advance(299).await;
        let r = call(
            &app.base,
            &query,
            &format!("DPoP {token}"),
            Some(&proof(&app)),
        )
        .await;
        assert_eq!(
            r.status, 200,
            "{backend:?}: still live at 299 s: {}",
            r.body
        );
        app.advance(1).await;
        let before = app.ledger_size().await;
        let r = call(
            &app.base,
            &query,
            &format!("DPoP {token}"),
            Some(&proof(&app)),
        )
        .await;
        assert_dpop_401(&r, "invalid_token", &format!("{backend:?}"));
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::ReadPerson,
            app.account("t.ce1").account_id,
            DenyReason::BadCredentials,
            "access token: expired",
        )
        .await;
        // A new assertion gets a new token.
        let fresh = client.token(&app).await;
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&fresh), app.clock.now());
        let r = call(&app.base, &query, &format!("DPoP {fresh}"), Some(&proof)).await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        app.stop().await;
    }
}

/// An API client is a program: it never breaks the glass, even for a
/// France Travail agent with a good reason. Before, its proof was checked
/// twice (break-glass, then the read inside it): the mandate was created
/// and the answer was a 401 for a "replay".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_client_cannot_break_the_glass() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ft").await;
        let token = client.token(&app).await;
        let p = app.fresh_person(29);
        let path = format!("/api/v1/persons/{p}/break-glass");
        let before = app.ledger_size().await;
        let proof = client
            .dpop
            .proof("POST", &public(&app, &path), Some(&token), app.clock.now());
        let r = reply(
            app.http
                .post(format!("{}{path}", app.base))
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .json(&json!({
                    "purpose": "follow_up",
                    "reason": "Appel du conseiller référent absent, rendez-vous à 9 h",
                }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 403, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "browser_session_required");
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::BreakGlass,
            app.account("t.ft").account_id,
            DenyReason::StepUpRequired,
            "break-glass: access token, browser session required",
        )
        .await;
        assert!(
            app.store.mandates_of_person(p).await.unwrap().is_empty(),
            "{backend:?}: no mandate"
        );
        assert!(app.store.break_glass_reasons(p).await.unwrap().is_empty());
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_use_of_a_dpop_token_is_refused() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 28).await;
        let token = client.token(&app).await;
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        // With or without its proof: the scheme alone refuses it.
        for proof in [None, Some(proof.as_str())] {
            let before = app.ledger_size().await;
            let r = call(
                &app.base,
                &format!("{path}?purpose=follow_up"),
                &format!("Bearer {token}"),
                proof,
            )
            .await;
            assert_dpop_401(&r, "invalid_token", &format!("{backend:?}"));
            assert_refusal_ledgered(
                &app,
                before,
                LeafAction::ReadPerson,
                app.account("t.ce1").account_id,
                DenyReason::BadCredentials,
                "access token: used as Bearer",
            )
            .await;
        }
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_client_assertion_gets_no_token() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let assertion = client.assertion(&app);
        let r = token_request(&app, &app.base, &assertion, Some(&client.token_proof(&app))).await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        // The same assertion, with a fresh proof: its jti is spent.
        let before = app.ledger_size().await;
        let r = token_request(&app, &app.base, &assertion, Some(&client.token_proof(&app))).await;
        assert_eq!(r.status, 401, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"], "invalid_client");
        assert!(
            r.body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("replay")),
            "{}",
            r.body
        );
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::TokenIssue,
            app.account("t.ce1").account_id,
            DenyReason::BadCredentials,
            "client assertion: replayed",
        )
        .await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_by_an_unregistered_key_gets_no_token() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        // Same client id, same claims, another Ed25519 key.
        let impostor = AssertionKey::new();
        let assertion =
            impostor.assertion(&client.id, &public(&app, "/api/v1/token"), app.clock.now());
        let before = app.ledger_size().await;
        let r = token_request(&app, &app.base, &assertion, Some(&client.token_proof(&app))).await;
        assert_eq!(r.status, 401, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"], "invalid_client");
        assert_refusal_ledgered(
            &app,
            before,
            LeafAction::TokenIssue,
            app.account("t.ce1").account_id,
            DenyReason::BadCredentials,
            "client assertion: bad signature or form",
        )
        .await;
        // An unknown client id reads the same to the caller.
        let assertion = impostor.assertion(
            "rmpc_nobody",
            &public(&app, "/api/v1/token"),
            app.clock.now(),
        );
        let unknown =
            token_request(&app, &app.base, &assertion, Some(&client.token_proof(&app))).await;
        assert_eq!(unknown.status, 401);
        assert_eq!(unknown.body, r.body, "{backend:?}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_accounts_and_revoked_clients_get_nothing() {
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 29).await;
        let token = client.token(&app).await;
        let agent = app.account("t.ce1").account_id;
        let query = format!("{path}?purpose=follow_up");
        let proof = |token: &str| {
            client
                .dpop
                .proof("GET", &public(&app, &path), Some(token), app.clock.now())
        };

        // Suspended: the token stops at once, and no new one is issued.
        app.store
            .set_account_state(agent, AccountState::Suspended)
            .await
            .unwrap();
        let r = call(
            &app.base,
            &query,
            &format!("DPoP {token}"),
            Some(&proof(&token)),
        )
        .await;
        assert_eq!(r.status, 403, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "account_suspended");
        let r = token_request(
            &app,
            &app.base,
            &client.assertion(&app),
            Some(&client.token_proof(&app)),
        )
        .await;
        assert_eq!(r.status, 400, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"], "unauthorized_client");
        app.store
            .set_account_state(agent, AccountState::Active)
            .await
            .unwrap();
        let r = call(
            &app.base,
            &query,
            &format!("DPoP {token}"),
            Some(&proof(&token)),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);

        // Revoked: its tokens stop, and its assertions are refused.
        rempart_consult::clients::revoke_client(app.auth.as_ref(), &client.id, Utc::now())
            .await
            .unwrap();
        let r = call(
            &app.base,
            &query,
            &format!("DPoP {token}"),
            Some(&proof(&token)),
        )
        .await;
        assert_dpop_401(&r, "invalid_token", &format!("{backend:?}"));
        let r = token_request(
            &app,
            &app.base,
            &client.assertion(&app),
            Some(&client.token_proof(&app)),
        )
        .await;
        assert_eq!(r.status, 401, "{backend:?}: {}", r.body);
        assert_eq!(r.body["error"], "invalid_client");
        app.stop().await;
    }
}

/// Issue 17, item 6: an officer's suspension ends, at once and on every
/// instance, the account's browser sessions, its `rmp_` credentials and
/// its API clients' DPoP tokens; reactivation restores none of them (the
/// owner logs in again; credentials and clients are issued anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_suspension_ends_every_session_and_token_on_every_instance() {
    use super::browser::{
        DeviceKey, PASSWORD, client_from, code_at, cookie_value, password_login, seed_factors,
        session_get,
    };
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        let (second, stop_second) = second_instance(&app, backend).await;
        let agent = app.account("t.ce1").account_id;
        let secret = seed_factors(&app, "t.ce1").await;
        let key = DeviceKey::new();
        let login = password_login(
            &app,
            &client_from([127, 0, 0, 9]),
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
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 31).await;
        let token = client.token(&app).await;
        let query = format!("{path}?purpose=follow_up");
        let dpop = |base: &str| {
            let proof =
                client
                    .dpop
                    .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
            let (base, query, authorization) =
                (base.to_string(), query.clone(), format!("DPoP {token}"));
            async move {
                call(&base, &query, &authorization, Some(&proof))
                    .await
                    .status
            }
        };
        let credential = |base: &str| {
            let req = app
                .http
                .get(format!("{base}/api/v1/me"))
                .bearer_auth(app.token("t.ce1"));
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let fragment = "/portail/f/dossiers";
        for base in [app.base.as_str(), second.as_str()] {
            assert_eq!(
                session_get(&app, base, session, fragment).await,
                200,
                "{backend:?} {base}"
            );
            assert_eq!(credential(base).await, 200, "{backend:?} {base}");
            assert_eq!(dpop(base).await, 200, "{backend:?} {base}");
        }

        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/accounts/{agent}/suspend"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        // The very next request, on either instance, is refused.
        for base in [second.as_str(), app.base.as_str()] {
            let s = session_get(&app, base, session, fragment).await;
            assert!(matches!(s, 401 | 403), "{backend:?} {base}: session {s}");
            let s = credential(base).await;
            assert!(matches!(s, 401 | 403), "{backend:?} {base}: credential {s}");
            let s = dpop(base).await;
            assert!(matches!(s, 401 | 403), "{backend:?} {base}: token {s}");
        }
        let digest = rempart_consult::authenticate::parse_session(&cookie)
            .unwrap()
            .0;
        let (row, _) = app.auth.session(digest).await.unwrap().unwrap();
        assert_eq!(row.end_reason.as_deref(), Some("suspension"), "{backend:?}");

        // Reactivated: the account may log in again, but nothing it held
        // before the suspension works any more, on either instance.
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/accounts/{agent}/reactivate"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        for base in [app.base.as_str(), second.as_str()] {
            assert_eq!(
                session_get(&app, base, session, fragment).await,
                401,
                "{backend:?} {base}"
            );
            assert_eq!(credential(base).await, 401, "{backend:?} {base}");
            assert_eq!(dpop(base).await, 401, "{backend:?} {base}");
        }
        let r = token_request(
            &app,
            &second,
            &client.assertion(&app),
            Some(&client.token_proof(&app)),
        )
        .await;
        assert_eq!(
            r.status, 401,
            "{backend:?}: the client was revoked: {}",
            r.body
        );
        app.advance(30).await;
        let again = password_login(
            &app,
            &client_from([127, 0, 0, 9]),
            &key,
            "t.ce1",
            PASSWORD,
            &code_at(&secret, app.clock.now()),
        )
        .await;
        assert_eq!(
            again.status, 200,
            "{backend:?}: a new login works: {:?}",
            again.body
        );
        stop_second.stop().await.unwrap();
        app.stop().await;
    }
}

/// Issue 17, item 4: the purge task the server runs (the function `rempart
/// serve` starts, on the server's clock and store) removes what anonymous
/// login starts and API calls leave behind once it has expired, in bounded
/// runs, and nothing live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_purge_removes_expired_ceremonies_replay_keys_and_tokens() {
    use super::browser::{DeviceKey, client_from, send};
    for backend in WITH_BALANCER {
        let app = spawn_app(backend).await;
        // 150 anonymous login starts: one ceremony row each.
        let anonymous = client_from([127, 0, 0, 10]);
        let start = |key: &DeviceKey| {
            anonymous
                .post(format!("{}/connexion/defi", app.base))
                .header(
                    "DPoP",
                    key.proof(
                        "POST",
                        &public(&app, "/connexion/defi"),
                        None,
                        app.clock.now(),
                    ),
                )
                .json(&json!({"kind": "password"}))
        };
        for _ in 0..150 {
            let r = send(start(&DeviceKey::new())).await;
            assert_eq!(r.status, 200, "{backend:?}: {:?}", r.body);
        }
        assert_eq!(app.registry_rows("ceremony").await, 150, "{backend:?}");
        // A token (two replay keys: assertion and proof) and a call (one).
        let client = register(&app, "t.ce1").await;
        let (_, path) = in_caseload(&app, 33).await;
        let token = client.token(&app).await;
        let proof = client
            .dpop
            .proof("GET", &public(&app, &path), Some(&token), app.clock.now());
        let r = call(
            &app.base,
            &format!("{path}?purpose=follow_up"),
            &format!("DPoP {token}"),
            Some(&proof),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.body);
        assert!(app.registry_rows("replay_key").await >= 3, "{backend:?}");
        assert_eq!(app.registry_rows("access_token").await, 1, "{backend:?}");

        // Past every expiry (ceremonies 5 min, tokens 5 min, proofs less).
        app.advance(15 * 60).await;
        let settings = rempart_consult::PurgeSettings {
            interval: std::time::Duration::from_millis(50),
            batch: 40,
            rounds: 2,
            ..rempart_consult::PurgeSettings::default()
        };
        let task = rempart_consult::purge::spawn(app.auth.clone(), settings, app.clock.clock());
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = (
                app.registry_rows("ceremony").await,
                app.registry_rows("replay_key").await,
                app.registry_rows("access_token").await,
            );
            seen.push(left.0);
            if left == (0, 0, 0) {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "{backend:?}: still {left:?} after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Ceremonies go in statements of at most 40 rows.
        assert!(
            seen.iter().all(|&n| n == 0 || (150 - n) % 40 == 0),
            "{backend:?}: counts seen {seen:?}"
        );
        // A live ceremony survives the runs that follow.
        let r = send(start(&DeviceKey::new())).await;
        assert_eq!(r.status, 200, "{backend:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(app.registry_rows("ceremony").await, 1, "{backend:?}");
        task.abort();
        app.stop().await;
    }
}
