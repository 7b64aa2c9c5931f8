//! rempart-auth against real parts.
//!
//! OIDC federation: the scenarios share one real OpenID provider
//! (`tools/oidc-provider`, the npm package `oidc-provider`, run with node)
//! on a free port, started by the first of them (one node process per test
//! binary: nine starting at once on a loaded two-core runner took more than
//! 30 s), and plays the browser with a plain HTTP client that
//! follows the provider's redirects by hand and posts who logs in, with
//! which acr/amr. Node and npm are required: the first scenario installs
//! the provider's pinned packages (`npm ci --prefix tools/oidc-provider`)
//! when they are missing, and without node or npm these tests fail, they
//! never skip.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::url::{Url, form_urlencoded};
use rempart_auth::oidc::{AcceptedAssurance, Federation, OidcError};

/// Rempart's callback as registered at the provider. Never contacted: the
/// browser stand-in reads the code from the provider's redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:9/oidc/callback";
const CLIENT_ID: &str = "rempart";
const CLIENT_SECRET: &str = "rempart-test-secret";
const OTHER_CLIENT_ID: &str = "other-service";
const OTHER_CLIENT_SECRET: &str = "other-service-test-secret";

/// A synthetic agent known to the provider, and what it holds about them.
const LOGIN: &str = "camille.roux";
const SUBJECT: &str = "5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01";
const EMAIL: &str = "camille.roux@cap-emploi-synth.example";

const MFA_ACR: &str = "https://proconnect.gouv.fr/assurance/self-asserted-2fa";

/// RFC 7636 appendix B's verifier and challenge, for the requests this test
/// makes by hand as another relying party.
const PKCE_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const PKCE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Installs the provider's packages, pinned by its package-lock.json, once
/// per test run when they are missing, so that `cargo test` stays the one
/// command that runs every test.
fn install_provider(dir: &std::path::Path) {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        if dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run `npm` ({e}): Node.js 20.19+ and npm are required"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`npm ci --prefix tools/oidc-provider` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}; the OIDC tests need the real provider and never skip");
    }
}

/// A running provider; dropping it kills the node process.
struct Provider {
    child: Child,
    issuer: String,
    stderr: Arc<Mutex<String>>,
}

impl Provider {
    /// The provider every scenario of this binary uses. It is never
    /// dropped: it exits when this process does, because it holds our
    /// stdin (`--exit-with-stdin`).
    fn shared() -> &'static Self {
        static SHARED: OnceLock<Provider> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/oidc-provider");
        install_provider(&dir);
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .args([
                "--port",
                "0",
                "--redirect-uri",
                REDIRECT_URI,
                "--exit-with-stdin",
            ])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run `node` ({err}): Node.js 20.19 or later must be installed")
            });

        // Collected, and shown only if the test fails.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = child_stderr.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        // Read stdout to the end so the pipe never fills; hand over the
        // issuer from the `listening URL` line.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });

        let mut provider = Self {
            child,
            issuer: String::new(),
            stderr,
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(issuer) => provider.issuer = issuer,
            Err(_) => panic!(
                "the OIDC provider printed no `listening` line within 120 s; its stderr:\n{}",
                provider.stderr.lock().unwrap()
            ),
        }
        provider
    }

    async fn federation(&self) -> Federation {
        Federation::discover(
            &self.issuer,
            CLIENT_ID,
            CLIENT_SECRET,
            REDIRECT_URI,
            AcceptedAssurance::proconnect(),
        )
        .await
        .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- OIDC provider stderr:\n{}", self.stderr.lock().unwrap());
        }
    }
}

/// What the provider sends back to the redirect URI.
struct Callback {
    code: String,
    state: String,
}

/// The browser's part, headless: redirects followed by hand, cookies kept
/// by name (the provider's cookies are scoped to paths only it uses).
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            http,
            cookies: BTreeMap::new(),
        }
    }

    /// Follows the authorization URL to the provider's interaction, logs
    /// `login` in with `acr`/`amr`, and returns the code and state the
    /// provider redirects to the relying party with.
    async fn login(
        &mut self,
        authorization_url: &Url,
        login: &str,
        acr: &str,
        amr: &[&str],
    ) -> Callback {
        let interaction = self
            .redirect_of(self.http.get(authorization_url.as_str()), authorization_url)
            .await;
        assert!(
            interaction.path().starts_with("/interaction/"),
            "{interaction}"
        );
        let body = serde_json::json!({ "login": login, "acr": acr, "amr": amr });
        let submit = interaction
            .join(&format!("{}/login", interaction.path()))
            .unwrap();
        let resume = self
            .redirect_of(self.http.post(submit.as_str()).json(&body), &submit)
            .await;
        let callback = self
            .redirect_of(self.http.get(resume.as_str()), &resume)
            .await;
        assert!(
            callback.as_str().starts_with(REDIRECT_URI),
            "the provider did not answer the relying party (login prompted again?): {}",
            callback.path()
        );
        let query: BTreeMap<String, String> = callback.query_pairs().into_owned().collect();
        Callback {
            code: query["code"].clone(),
            state: query["state"].clone(),
        }
    }

    /// Sends one request with the cookies held, keeps the ones set, and
    /// returns where the 303 points.
    async fn redirect_of(&mut self, request: reqwest::RequestBuilder, base: &Url) -> Url {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = request.header("cookie", cookie).send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        match location {
            Some(location) if status.is_redirection() => base.join(&location).unwrap(),
            _ => panic!(
                "expected a redirect, got {status}: {}",
                response.text().await.unwrap()
            ),
        }
    }
}

/// The authorization URL with one query parameter replaced (`Some`) or
/// removed (`None`): what a user controlling the browser can do.
fn with_param(url: &Url, name: &str, value: Option<&str>) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    let mut out = url.clone();
    {
        let mut query = out.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    out
}

fn param(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// Logs in through the provider as a relying party acting by hand (this
/// test's own authorization request and token exchange), and returns the
/// raw id_token the provider issued to `client_id`.
async fn raw_id_token(
    provider: &Provider,
    (client_id, client_secret): (&str, &str),
    nonce: &str,
    acr: &str,
    amr: &[&str],
) -> String {
    let mut url = Url::parse(&provider.url("/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "hand-made-state")
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", PKCE_CHALLENGE)
        .append_pair("code_challenge_method", "S256")
        .append_pair("claims", AMR_ONLY);
    let callback = Browser::new().login(&url, LOGIN, acr, amr).await;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &callback.code)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("code_verifier", PKCE_VERIFIER)
        .finish();
    let response = reqwest::Client::new()
        .post(provider.url("/token"))
        .basic_auth(client_id, Some(client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "token endpoint: {}",
        response.status()
    );
    let tokens: serde_json::Value = response.json().await.unwrap();
    tokens["id_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn oidc_mfa_login_is_accepted() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (url, pending) = rp.begin(now);
    assert_eq!(param(&url, "state"), pending.state());
    assert_eq!(param(&url, "code_challenge_method"), "S256");

    let callback = Browser::new()
        .login(&url, LOGIN, MFA_ACR, &["pwd", "totp", "mfa"])
        .await;
    let identity = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap();

    assert_eq!(identity.issuer, provider.issuer);
    assert_eq!(identity.subject, SUBJECT);
    assert_eq!(identity.email, EMAIL);
    assert_eq!(identity.acr.as_deref(), Some(MFA_ACR));
    assert_eq!(identity.amr, ["pwd", "totp", "mfa"]);
    // Debug output names no one.
    let debug = format!("{identity:?} {pending:?}");
    assert!(!debug.contains(SUBJECT) && !debug.contains(EMAIL) && !debug.contains(pending.state()));

    // A code is good once.
    let replay = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap_err();
    assert!(
        matches!(replay, OidcError::Provider(ref r) if r.contains("invalid_grant")),
        "{replay}"
    );
    assert!(!replay.to_string().contains(&callback.code));
}

/// The `claims` parameter asking only for amr, not for a multi-factor acr:
/// what a user who edits the authorization URL can send instead.
const AMR_ONLY: &str = r#"{"id_token":{"amr":{"essential":true}}}"#;

#[tokio::test]
async fn oidc_mfa_shown_by_acr_or_by_amr_is_accepted() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();

    let (url, pending) = rp.begin(now);
    let callback = Browser::new().login(&url, LOGIN, "eidas2", &["pwd"]).await;
    let identity = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap();
    assert_eq!(
        (identity.acr.as_deref(), identity.amr.as_slice()),
        (Some("eidas2"), &["pwd".to_owned()][..])
    );

    // A one-factor acr, but two methods in amr, one a second factor.
    let (url, pending) = rp.begin(now);
    let amr_only = with_param(&url, "claims", Some(AMR_ONLY));
    let callback = Browser::new()
        .login(&amr_only, LOGIN, "eidas1", &["pwd", "totp"])
        .await;
    let identity = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap();
    assert_eq!(
        (identity.acr.as_deref(), identity.amr.as_slice()),
        (Some("eidas1"), &["pwd".to_owned(), "totp".to_owned()][..])
    );
}

#[tokio::test]
async fn oidc_single_factor_login_is_refused() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (url, pending) = rp.begin(now);
    // Asked for an essential multi-factor acr, the provider insists on a
    // second factor: a password-only login just prompts again.
    let mut browser = Browser::new();
    let interaction = browser
        .redirect_of(browser.http.get(url.as_str()), &url)
        .await;
    let submit = interaction
        .join(&format!("{}/login", interaction.path()))
        .unwrap();
    let body = serde_json::json!({ "login": LOGIN, "acr": "eidas1", "amr": ["pwd"] });
    let resume = browser
        .redirect_of(browser.http.post(submit.as_str()).json(&body), &submit)
        .await;
    let again = browser
        .redirect_of(browser.http.get(resume.as_str()), &resume)
        .await;
    assert!(again.path().starts_with("/interaction/"), "{again}");

    // So a thief holding only the password edits the demand out of the URL;
    // the provider then vouches for one factor, and Rempart refuses.
    let amr_only = with_param(&url, "claims", Some(AMR_ONLY));
    let callback = Browser::new()
        .login(&amr_only, LOGIN, "eidas1", &["pwd"])
        .await;
    let err = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        OidcError::NoMultiFactor {
            acr: Some("eidas1".into()),
            amr: vec!["pwd".into()]
        }
    );

    // Without any claims request ProConnect sends no amr at all: refused too.
    let (url, pending) = rp.begin(now);
    let stripped = with_param(&url, "claims", None);
    let callback = Browser::new()
        .login(&stripped, LOGIN, "eidas1", &["pwd", "totp"])
        .await;
    let err = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        OidcError::NoMultiFactor {
            acr: Some("eidas1".into()),
            amr: vec![]
        }
    );
}

#[tokio::test]
async fn oidc_wrong_issuer_is_refused() {
    let provider = Provider::shared();
    // The metadata names the issuer 127.0.0.1:PORT; configured under
    // another name for the same server, discovery refuses it.
    let other_name = provider.issuer.replace("127.0.0.1", "localhost");
    let err = Federation::discover(
        &other_name,
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        AcceptedAssurance::proconnect(),
    )
    .await
    .unwrap_err();
    assert_eq!(err, OidcError::WrongIssuer);

    // Metadata that lies (claims `{issuer}/impostor`) passes discovery, but
    // the id_tokens still say who made them.
    let impostor = format!("{}/impostor", provider.issuer);
    let rp = Federation::discover(
        &impostor,
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        AcceptedAssurance::proconnect(),
    )
    .await
    .unwrap();
    let (url, pending) = rp.begin(SystemTime::now());
    let callback = Browser::new()
        .login(&url, LOGIN, MFA_ACR, &["pwd", "totp"])
        .await;
    let err = rp
        .complete(&pending, &callback.code, &callback.state, SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::WrongIssuer);
}

#[tokio::test]
async fn oidc_wrong_audience_is_refused() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let (url, pending) = rp.begin(SystemTime::now());
    // Another service of the same federation got an id_token for this very
    // login attempt (same nonce, multi-factor): it is not Rempart's.
    let nonce = param(&url, "nonce");
    let foreign = raw_id_token(
        provider,
        (OTHER_CLIENT_ID, OTHER_CLIENT_SECRET),
        &nonce,
        MFA_ACR,
        &["pwd", "totp"],
    )
    .await;
    let err = rp
        .verify_id_token(&pending, &foreign, SystemTime::now())
        .unwrap_err();
    assert_eq!(err, OidcError::WrongAudience);

    // The same, issued to Rempart, passes the same checks.
    let own = raw_id_token(
        provider,
        (CLIENT_ID, CLIENT_SECRET),
        &nonce,
        MFA_ACR,
        &["pwd", "totp"],
    )
    .await;
    let login = rp
        .verify_id_token(&pending, &own, SystemTime::now())
        .unwrap();
    assert_eq!(login.subject, SUBJECT);
}

#[tokio::test]
async fn oidc_wrong_nonce_is_refused() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (url, pending) = rp.begin(now);
    let (other_url, _other) = rp.begin(now);
    // The login completes with this attempt's state and PKCE challenge but
    // another attempt's nonce.
    let crossed = with_param(&url, "nonce", Some(&param(&other_url, "nonce")));
    let callback = Browser::new()
        .login(&crossed, LOGIN, MFA_ACR, &["pwd", "totp"])
        .await;
    let err = rp
        .complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::WrongNonce);
}

#[tokio::test]
async fn oidc_wrong_state_is_refused_before_the_code_is_spent() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (url, pending) = rp.begin(now);
    let callback = Browser::new()
        .login(&url, LOGIN, MFA_ACR, &["pwd", "totp"])
        .await;
    let err = rp
        .complete(&pending, &callback.code, "forged-state", now)
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::WrongState);
    // The refusal spent nothing: the genuine callback still works.
    rp.complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap();
}

#[tokio::test]
async fn oidc_code_of_another_attempt_is_refused_by_pkce() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (attacker_url, _attacker) = rp.begin(now);
    let (_, victim) = rp.begin(now);
    // A code obtained in one attempt, injected into another with that
    // attempt's state: the provider refuses the PKCE verifier.
    let callback = Browser::new()
        .login(&attacker_url, LOGIN, MFA_ACR, &["pwd", "totp"])
        .await;
    let err = rp
        .complete(&victim, &callback.code, victim.state(), now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::Provider(ref r) if r.contains("invalid_grant")),
        "{err}"
    );
}

#[tokio::test]
async fn oidc_forged_expired_and_stale_logins_are_refused() {
    let provider = Provider::shared();
    let rp = provider.federation().await;
    let now = SystemTime::now();
    let (url, pending) = rp.begin(now);
    let nonce = param(&url, "nonce");
    let token = raw_id_token(
        provider,
        (CLIENT_ID, CLIENT_SECRET),
        &nonce,
        "eidas1",
        &["pwd"],
    )
    .await;
    assert_eq!(
        rp.verify_id_token(&pending, &token, now).unwrap_err(),
        OidcError::NoMultiFactor {
            acr: Some("eidas1".into()),
            amr: vec!["pwd".into()]
        }
    );

    // Raising acr after signing breaks the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["acr"] = "eidas2".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        rp.verify_id_token(&pending, &forged, now).unwrap_err(),
        OidcError::BadSignature
    );
    // So does an unsigned copy.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    assert_eq!(
        rp.verify_id_token(&pending, &unsigned, now).unwrap_err(),
        OidcError::BadSignature
    );

    // An MFA id_token, fine now, is refused once expired (the provider
    // gives id_tokens an hour).
    let token = raw_id_token(
        provider,
        (CLIENT_ID, CLIENT_SECRET),
        &nonce,
        MFA_ACR,
        &["pwd", "totp"],
    )
    .await;
    rp.verify_id_token(&pending, &token, now).unwrap();
    let later = now + Duration::from_secs(3601);
    assert_eq!(
        rp.verify_id_token(&pending, &token, later).unwrap_err(),
        OidcError::Expired
    );

    // A login attempt answered after eleven minutes is refused before the
    // code is exchanged.
    let callback = Browser::new()
        .login(&url, LOGIN, MFA_ACR, &["pwd", "totp"])
        .await;
    let late = now + Duration::from_secs(11 * 60);
    let err = rp
        .complete(&pending, &callback.code, &callback.state, late)
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::PendingExpired { max_secs: 600 });
    rp.complete(&pending, &callback.code, &callback.state, now)
        .await
        .unwrap();
}
