//! Federation: log in through an external OpenID Connect identity provider
//! (ProConnect-style), accepted only when the provider vouches for a
//! multi-factor authentication.
//!
//! The relying party side of the authorization code flow with PKCE:
//! [`Federation::discover`] reads the provider's metadata and keys once,
//! [`Federation::begin`] makes the authorization URL and the
//! [`PendingLogin`] the caller keeps server-side (keyed by its `state`), and
//! [`Federation::complete`] checks the returned state, exchanges the code,
//! checks the id_token (issuer, audience, signature, expiry, nonce), requires
//! multi-factor authentication ([`AcceptedAssurance`]) and reads the e-mail
//! from the user info endpoint, as ProConnect gives it there.
//!
//! The HTTP client follows no redirect (as `openidconnect` recommends: a
//! redirect could send the code or the client secret elsewhere), refuses
//! plain HTTP unless the issuer is on a loopback address, and reads at most
//! [`MAX_RESPONSE_BYTES`] of any answer. No error text carries a token, a
//! code, a secret or a raw response body.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreIdToken,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::url::Url;
use openidconnect::{
    AccessTokenHash, AsyncHttpClient, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, DiscoveryError, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, TokenResponse, UserInfoError, http,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The scopes asked for, as ProConnect names them: `email`, `given_name`
/// and `usual_name` each give the claim of the same name.
pub const SCOPES: [&str; 3] = ["email", "given_name", "usual_name"];

/// How long a [`PendingLogin`] may wait for the provider's answer. Ten
/// minutes covers a slow second factor; an older attempt starts again.
pub const PENDING_LOGIN_MAX_AGE: Duration = Duration::from_secs(600);

/// The most the client reads of any answer from the provider (metadata,
/// keys, tokens, user info are all a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Per-request limit: a provider that hangs must not hold a login forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How far apart the server that began a login and the one completing it
/// may disagree about the time.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a federated login was refused. Never carries a token, a code, a
/// secret or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// A configuration value given to [`Federation::discover`] is unusable.
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// The argument at fault.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The `state` returned with the code is not the one this login attempt
    /// stored: a forged or crossed callback.
    #[error("state: the returned state is not the one this login attempt stored")]
    WrongState,
    /// The login attempt waited longer than [`PENDING_LOGIN_MAX_AGE`].
    #[error("login attempt: older than {max_secs} s, start again")]
    PendingExpired {
        /// The limit, in seconds.
        max_secs: u64,
    },
    /// The provider's metadata or its id_token names another issuer than the
    /// configured one.
    #[error("iss: the identity provider is not the configured issuer")]
    WrongIssuer,
    /// The id_token was issued to another client.
    #[error("aud: the id_token was issued to another client")]
    WrongAudience,
    /// The id_token answers another login attempt (its nonce differs).
    #[error("nonce: the id_token belongs to another login attempt")]
    WrongNonce,
    /// The id_token's signature is invalid, made with a disallowed algorithm
    /// or by a key the provider does not publish.
    #[error("id_token: signature invalid or not made by a key of the identity provider")]
    BadSignature,
    /// The id_token's `exp` is past.
    #[error("exp: the id_token has expired")]
    Expired,
    /// The provider vouches for no multi-factor authentication.
    #[error("acr/amr: no multi-factor authentication (acr {acr:?}, amr {amr:?})")]
    NoMultiFactor {
        /// The `acr` the id_token carried.
        acr: Option<String>,
        /// The `amr` the id_token carried.
        amr: Vec<String>,
    },
    /// The user info describes another subject than the id_token.
    #[error("sub: the user info describes another subject than the id_token")]
    SubjectMismatch,
    /// Something the login needs is absent from the provider's metadata or
    /// answers (an endpoint, the id_token, the e-mail).
    #[error("{field}: missing from the identity provider's answer")]
    Missing {
        /// The metadata field or claim's name.
        field: &'static str,
    },
    /// The id_token is malformed or uses something this client refuses.
    #[error("id_token: {reason}")]
    InvalidIdToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The provider could not be reached or refused a request.
    #[error("identity provider: {0}")]
    Provider(String),
}

/// Which `acr`/`amr` values count as multi-factor authentication.
///
/// A login is accepted when (1) its `acr` is one of [`acr`](Self::new), or
/// (2) its `amr` holds a value that alone means several factors (`mfa`), or
/// (3) its `amr` holds a second factor together with at least one other
/// method (e.g. `["pwd", "totp"]`).
///
/// ProConnect's values: `acr` is `eidas1` (historical, means nothing),
/// `eidas2`/`eidas3` (relayed from identity providers at those eIDAS
/// levels), `https://proconnect.gouv.fr/assurance/self-asserted` and
/// `…/consistency-checked` (one factor), their `-2fa` variants (two
/// factors) and `…/certification-dirigeant`; `amr`, returned only when
/// asked for, combines `pwd` (password, browser confirmed by an e-mailed
/// code), `mail` (magic link), `totp`, `pop` (passkey) and `mfa`.
/// [`AcceptedAssurance::proconnect`] holds what Rempart accepts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedAssurance {
    acr: BTreeSet<String>,
    amr_multi_factor: BTreeSet<String>,
    amr_second_factor: BTreeSet<String>,
}

impl AcceptedAssurance {
    /// Accepts the given `acr` values, the `amr` values that alone mean
    /// several factors, and the `amr` values that are a second factor when
    /// another method is listed beside them.
    pub fn new<A, M, S>(acr: A, amr_multi_factor: M, amr_second_factor: S) -> Self
    where
        A: IntoIterator,
        A::Item: Into<String>,
        M: IntoIterator,
        M::Item: Into<String>,
        S: IntoIterator,
        S::Item: Into<String>,
    {
        Self {
            acr: acr.into_iter().map(Into::into).collect(),
            amr_multi_factor: amr_multi_factor.into_iter().map(Into::into).collect(),
            amr_second_factor: amr_second_factor.into_iter().map(Into::into).collect(),
        }
    }

    /// Rempart's choice for ProConnect. `acr`: `eidas2`, `eidas3` and the
    /// two `-2fa` assurance URIs. `amr` alone: `mfa`. Second factors:
    /// `totp`, `otp`, `pop` (passkey), `hwk` (hardware key) and `sc` (smart
    /// card), each needing another method beside it; never `sms` or `tel`
    /// (SIM swap and help-desk social engineering defeat them) nor `mail`
    /// (ProConnect's first-factor magic link).
    pub fn proconnect() -> Self {
        Self::new(
            [
                "eidas2",
                "eidas3",
                "https://proconnect.gouv.fr/assurance/self-asserted-2fa",
                "https://proconnect.gouv.fr/assurance/consistency-checked-2fa",
            ],
            ["mfa"],
            ["totp", "otp", "pop", "hwk", "sc"],
        )
    }

    /// Whether this `acr`/`amr` pair shows multi-factor authentication.
    pub fn is_multi_factor(&self, acr: Option<&str>, amr: &[String]) -> bool {
        if acr.is_some_and(|acr| self.acr.contains(acr)) {
            return true;
        }
        if amr.iter().any(|m| self.amr_multi_factor.contains(m)) {
            return true;
        }
        let methods: BTreeSet<&str> = amr.iter().map(String::as_str).collect();
        methods.len() >= 2 && methods.iter().any(|m| self.amr_second_factor.contains(*m))
    }

    /// The `claims` request parameter asking the provider for a
    /// multi-factor `acr` (essential, so ProConnect steps up to a second
    /// factor) and for the `amr` claim (which ProConnect only returns when
    /// asked). The answer is checked all the same: the browser carries this
    /// parameter and can drop it.
    fn claims_request(&self) -> String {
        let mut id_token = serde_json::Map::new();
        if !self.acr.is_empty() {
            id_token.insert(
                "acr".into(),
                serde_json::json!({ "essential": true, "values": self.acr }),
            );
        }
        id_token.insert("amr".into(), serde_json::json!({ "essential": true }));
        serde_json::json!({ "id_token": id_token }).to_string()
    }
}

impl fmt::Debug for AcceptedAssurance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedAssurance")
            .field("acr", &self.acr)
            .field("amr_multi_factor", &self.amr_multi_factor)
            .field("amr_second_factor", &self.amr_second_factor)
            .finish()
    }
}

/// A login attempt waiting for the provider's answer. Keep it server-side,
/// keyed by [`state`](Self::state), and hand it to
/// [`Federation::complete`] once; delete it then, whatever the outcome.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    state: String,
    nonce: String,
    pkce_verifier: String,
    /// Unix seconds.
    created_at: u64,
}

impl PendingLogin {
    /// The `state` sent to the provider, the key to store this under.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// When the attempt began, in Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }
}

impl fmt::Debug for PendingLogin {
    // The nonce and the PKCE verifier are secrets until the login ends.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("state", &"[redacted]")
            .field("nonce", &"[redacted]")
            .field("pkce_verifier", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// What a checked id_token says about the login.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedLogin {
    /// The provider's issuer URL.
    pub issuer: String,
    /// The provider's stable, opaque identifier of the person (`sub`).
    pub subject: String,
    /// Authentication context class (`acr`).
    pub acr: Option<String>,
    /// Authentication methods (`amr`).
    pub amr: Vec<String>,
}

impl fmt::Debug for VerifiedLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedLogin")
            .field("issuer", &self.issuer)
            .field("subject", &"[redacted]")
            .field("acr", &self.acr)
            .field("amr", &self.amr)
            .finish()
    }
}

/// A person the provider vouches for, after a multi-factor login. Match
/// accounts on (`issuer`, `subject`), never on the e-mail alone: an e-mail
/// can change hands, the subject does not.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedIdentity {
    /// The provider's issuer URL.
    pub issuer: String,
    /// The provider's stable, opaque identifier of the person (`sub`).
    pub subject: String,
    /// The e-mail address from the user info.
    pub email: String,
    /// Authentication context class (`acr`).
    pub acr: Option<String>,
    /// Authentication methods (`amr`).
    pub amr: Vec<String>,
}

impl fmt::Debug for FederatedIdentity {
    // The subject and the e-mail identify a person.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederatedIdentity")
            .field("issuer", &self.issuer)
            .field("subject", &"[redacted]")
            .field("email", &"[redacted]")
            .field("acr", &self.acr)
            .field("amr", &self.amr)
            .finish()
    }
}

/// The client as discovery leaves it, with the token and user info
/// endpoints required.
type ProviderClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointSet,
>;

/// One configured identity provider: its metadata and keys, read once by
/// [`Federation::discover`], and this service's registration with it.
pub struct Federation {
    client: ProviderClient,
    issuer: IssuerUrl,
    http: HttpClient,
    accepted: AcceptedAssurance,
}

impl fmt::Debug for Federation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federation")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client.client_id().as_str())
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Reads the provider's metadata at
    /// `{issuer_url}/.well-known/openid-configuration` and its signing keys.
    /// Refuses metadata naming another issuer ([`OidcError::WrongIssuer`])
    /// and plain HTTP unless the issuer is on a loopback address. The client
    /// authenticates with `client_secret_basic`.
    pub async fn discover(
        issuer_url: &str,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        accepted: AcceptedAssurance,
    ) -> Result<Self, OidcError> {
        let issuer_parsed = checked_url("issuer_url", issuer_url)?;
        checked_url("redirect_uri", redirect_uri)?;
        if client_id.is_empty() {
            return Err(OidcError::InvalidConfig {
                field: "client_id",
                reason: "empty",
            });
        }
        if client_secret.is_empty() {
            return Err(OidcError::InvalidConfig {
                field: "client_secret",
                reason: "empty",
            });
        }
        let http = HttpClient::new(issuer_parsed.scheme() == "https")?;
        let issuer =
            IssuerUrl::new(issuer_url.to_owned()).map_err(|_| OidcError::InvalidConfig {
                field: "issuer_url",
                reason: "not an absolute URL",
            })?;
        let redirect =
            RedirectUrl::new(redirect_uri.to_owned()).map_err(|_| OidcError::InvalidConfig {
                field: "redirect_uri",
                reason: "not an absolute URL",
            })?;

        let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(discovery_error)?;
        let token_url = metadata
            .token_endpoint()
            .cloned()
            .ok_or(OidcError::Missing {
                field: "token_endpoint",
            })?;
        let userinfo_url = metadata
            .userinfo_endpoint()
            .cloned()
            .ok_or(OidcError::Missing {
                field: "userinfo_endpoint",
            })?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(client_id.to_owned()),
            Some(ClientSecret::new(client_secret.to_owned())),
        )
        .set_redirect_uri(redirect)
        .set_token_uri(token_url)
        .set_user_info_url(userinfo_url);
        Ok(Self {
            client,
            issuer,
            http,
            accepted,
        })
    }

    /// The provider's issuer URL, as configured and confirmed by discovery.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// This service's client id at the provider.
    pub fn client_id(&self) -> &str {
        self.client.client_id().as_str()
    }

    /// Starts a login: the URL to send the browser to, and the attempt to
    /// keep server-side until the provider answers. Fresh random `state`,
    /// `nonce` and PKCE verifier (S256) every time.
    pub fn begin(&self, now: SystemTime) -> (Url, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(SCOPES.iter().map(|s| Scope::new((*s).to_owned())))
            .add_extra_param("claims", self.accepted.claims_request())
            .set_pkce_challenge(challenge)
            .url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            created_at: unix_seconds(now),
        };
        (url, pending)
    }

    /// Finishes a login with what the provider sent back to the redirect
    /// URI. In order: the state, the attempt's age, the code exchange (with
    /// the PKCE verifier), the id_token ([`Federation::verify_id_token`]),
    /// then the user info, whose subject must be the id_token's.
    pub async fn complete(
        &self,
        pending: &PendingLogin,
        code: &str,
        returned_state: &str,
        now: SystemTime,
    ) -> Result<FederatedIdentity, OidcError> {
        // Before any request: a forged callback costs the provider nothing.
        check_pending(pending, returned_state, now)?;

        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = tokens
            .id_token()
            .ok_or(OidcError::Missing { field: "id_token" })?;
        let login = self.check_id_token(pending, id_token, now, Some(tokens.access_token()))?;

        let user_info: CoreUserInfoClaims = self
            .client
            .user_info(
                tokens.access_token().clone(),
                Some(openidconnect::SubjectIdentifier::new(login.subject.clone())),
            )
            .request_async(&self.http)
            .await
            .map_err(user_info_error)?;
        let email = user_info
            .email()
            .ok_or(OidcError::Missing { field: "email" })?;
        Ok(FederatedIdentity {
            issuer: login.issuer,
            subject: login.subject,
            email: email.as_str().to_owned(),
            acr: login.acr,
            amr: login.amr,
        })
    }

    /// The checks [`Federation::complete`] applies to the id_token it
    /// receives, for an id_token obtained any other way: issuer, audience,
    /// signature (RS256 or ES256 by a published key, never a shared secret),
    /// expiry at `now`, the attempt's nonce, then multi-factor
    /// authentication.
    pub fn verify_id_token(
        &self,
        pending: &PendingLogin,
        id_token: &str,
        now: SystemTime,
    ) -> Result<VerifiedLogin, OidcError> {
        let id_token: CoreIdToken = id_token.parse().map_err(|_| OidcError::InvalidIdToken {
            reason: "not a signed JWT with ID token claims",
        })?;
        self.check_id_token(pending, &id_token, now, None)
    }

    fn check_id_token(
        &self,
        pending: &PendingLogin,
        id_token: &CoreIdToken,
        now: SystemTime,
        access_token: Option<&openidconnect::AccessToken>,
    ) -> Result<VerifiedLogin, OidcError> {
        let now = openidconnect_time(now);
        let verifier = self
            .client
            .id_token_verifier()
            .set_allowed_algs([
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            ])
            .set_time_fn(move || now);
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = id_token.claims(&verifier, &nonce).map_err(claims_error)?;

        // at_hash binds the access token (used for the user info) to this
        // id_token when the provider sets it.
        if let (Some(expected), Some(access_token)) = (claims.access_token_hash(), access_token) {
            let alg = id_token
                .signing_alg()
                .map_err(|_| OidcError::BadSignature)?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|_| OidcError::BadSignature)?;
            let actual = AccessTokenHash::from_token(access_token, alg, key).map_err(|_| {
                OidcError::InvalidIdToken {
                    reason: "at_hash uses an unsupported algorithm",
                }
            })?;
            if actual != *expected {
                return Err(OidcError::InvalidIdToken {
                    reason: "at_hash does not match the access token",
                });
            }
        }

        let acr = claims.auth_context_ref().map(|acr| acr.as_str().to_owned());
        let amr: Vec<String> = claims
            .auth_method_refs()
            .map(|amr| amr.iter().map(|m| m.as_str().to_owned()).collect())
            .unwrap_or_default();
        if !self.accepted.is_multi_factor(acr.as_deref(), &amr) {
            return Err(OidcError::NoMultiFactor { acr, amr });
        }
        Ok(VerifiedLogin {
            issuer: self.issuer.as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            acr,
            amr,
        })
    }
}

/// The callback answers this attempt (same state) and is not stale. An
/// attempt dated more than [`CLOCK_SKEW`] in the future is refused too: a
/// clock gone wrong must not make an old attempt look fresh.
fn check_pending(
    pending: &PendingLogin,
    returned_state: &str,
    now: SystemTime,
) -> Result<(), OidcError> {
    if !bool::from(pending.state.as_bytes().ct_eq(returned_state.as_bytes())) {
        return Err(OidcError::WrongState);
    }
    let now = unix_seconds(now);
    let from_the_future = pending.created_at > now.saturating_add(CLOCK_SKEW.as_secs());
    let age = now.saturating_sub(pending.created_at);
    if from_the_future || age > PENDING_LOGIN_MAX_AGE.as_secs() {
        return Err(OidcError::PendingExpired {
            max_secs: PENDING_LOGIN_MAX_AGE.as_secs(),
        });
    }
    Ok(())
}

/// An absolute URL, HTTPS unless the host is a loopback address (tests and
/// local development run the provider there).
fn checked_url(field: &'static str, value: &str) -> Result<Url, OidcError> {
    let url = Url::parse(value).map_err(|_| OidcError::InvalidConfig {
        field,
        reason: "not an absolute URL",
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(OidcError::InvalidConfig {
            field,
            reason: "must use https (plain http only on a loopback address)",
        }),
        _ => Err(OidcError::InvalidConfig {
            field,
            reason: "must be an https URL",
        }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(openidconnect::url::Host::Domain(name)) => name == "localhost",
        Some(openidconnect::url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    // A time before 1970 is a broken clock; 0 makes every attempt look old.
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time as openidconnect's verifier takes it. A broken clock (before
/// 1970, or past chrono's range) reads as the end of time, so every token
/// looks expired: fail closed, and never panic (chrono's `From<SystemTime>`
/// would).
fn openidconnect_time(time: SystemTime) -> DateTime<Utc> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| {
            let secs = i64::try_from(d.as_secs()).ok()?;
            DateTime::from_timestamp(secs, d.subsec_nanos())
        })
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn discovery_error(err: DiscoveryError<HttpError>) -> OidcError {
    match err {
        // The only validation discovery does: the metadata's issuer must be
        // the one asked for.
        DiscoveryError::Validation(_) => OidcError::WrongIssuer,
        DiscoveryError::Request(err) => OidcError::Provider(format!("metadata or keys: {err}")),
        DiscoveryError::Response(status, _, _) => {
            OidcError::Provider(format!("metadata or keys: HTTP status {status}"))
        }
        DiscoveryError::Parse(err) => {
            OidcError::Provider(format!("metadata or keys: unreadable at `{}`", err.path()))
        }
        DiscoveryError::UrlParse(_) => OidcError::InvalidConfig {
            field: "issuer_url",
            reason: "no metadata URL can be made from it",
        },
        _ => OidcError::Provider("metadata or keys: request failed".into()),
    }
}

fn token_error(
    err: RequestTokenError<HttpError, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> OidcError {
    match err {
        // Only the standard error code: its description is free text the
        // provider may fill with what it was sent.
        RequestTokenError::ServerResponse(response) => OidcError::Provider(format!(
            "token endpoint refused the code: {}",
            response.error().as_ref()
        )),
        RequestTokenError::Request(err) => OidcError::Provider(format!("token endpoint: {err}")),
        // The body may hold tokens: never echoed.
        RequestTokenError::Parse(_, _) => {
            OidcError::Provider("token endpoint: unreadable token response".into())
        }
        RequestTokenError::Other(_) => {
            OidcError::Provider("token endpoint: unexpected response".into())
        }
    }
}

fn claims_error(err: ClaimsVerificationError) -> OidcError {
    match err {
        ClaimsVerificationError::InvalidIssuer(_) => OidcError::WrongIssuer,
        ClaimsVerificationError::InvalidAudience(_) => OidcError::WrongAudience,
        ClaimsVerificationError::InvalidNonce(_) => OidcError::WrongNonce,
        ClaimsVerificationError::SignatureVerification(_) => OidcError::BadSignature,
        ClaimsVerificationError::Expired(_) => OidcError::Expired,
        ClaimsVerificationError::Unsupported(_) => OidcError::InvalidIdToken {
            reason: "uses an unsupported JWT feature",
        },
        _ => OidcError::InvalidIdToken {
            reason: "claims refused",
        },
    }
}

fn user_info_error(err: UserInfoError<HttpError>) -> OidcError {
    match err {
        UserInfoError::ClaimsVerification(ClaimsVerificationError::InvalidSubject(_)) => {
            OidcError::SubjectMismatch
        }
        UserInfoError::ClaimsVerification(err) => match claims_error(err) {
            OidcError::InvalidIdToken { .. } => {
                OidcError::Provider("user info: claims refused".into())
            }
            other => other,
        },
        UserInfoError::Request(err) => OidcError::Provider(format!("user info: {err}")),
        UserInfoError::Response(status, _, _) => {
            OidcError::Provider(format!("user info: HTTP status {status}"))
        }
        _ => OidcError::Provider("user info: unreadable response".into()),
    }
}

/// The HTTP client `openidconnect` talks through: the workspace's reqwest
/// (openidconnect's own reqwest support pins an older major version).
#[derive(Clone)]
struct HttpClient(reqwest::Client);

/// A transport failure, described without URL or body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

impl HttpError {
    fn from_reqwest(err: reqwest::Error) -> Self {
        // The URL may carry query parameters; the causes say what failed.
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self(text)
    }
}

impl HttpClient {
    fn new(https_only: bool) -> Result<Self, OidcError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(https_only)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map(Self)
            .map_err(|err| {
                OidcError::Provider(format!("HTTP client: {}", HttpError::from_reqwest(err)))
            })
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(HttpError::from_reqwest)?;
        let mut response = self
            .0
            .execute(request)
            .await
            .map_err(HttpError::from_reqwest)?;
        let mut answer = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(HttpError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        answer
            .body(body)
            .map_err(|err| HttpError(format!("answer unusable: {err}")))
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::StandardErrorResponse;
    use openidconnect::core::CoreErrorResponseType;
    use proptest::prelude::*;

    const SELF_ASSERTED_2FA: &str = "https://proconnect.gouv.fr/assurance/self-asserted-2fa";

    fn amr(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn pending(created_at: u64) -> PendingLogin {
        PendingLogin {
            state: "state-123".into(),
            nonce: "nonce-456".into(),
            pkce_verifier: "verifier-789".into(),
            created_at,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn proconnect_multi_factor_acr_values_are_accepted_whatever_the_amr() {
        let accepted = AcceptedAssurance::proconnect();
        for acr in [
            "eidas2",
            "eidas3",
            SELF_ASSERTED_2FA,
            "https://proconnect.gouv.fr/assurance/consistency-checked-2fa",
        ] {
            assert!(accepted.is_multi_factor(Some(acr), &[]), "{acr}");
            assert!(accepted.is_multi_factor(Some(acr), &amr(&["pwd"])), "{acr}");
        }
    }

    #[test]
    fn proconnect_single_factor_logins_are_refused() {
        let accepted = AcceptedAssurance::proconnect();
        let one_factor_acr = [
            None,
            Some("eidas1"),
            Some("https://proconnect.gouv.fr/assurance/self-asserted"),
            Some("https://proconnect.gouv.fr/assurance/consistency-checked"),
            Some("https://proconnect.gouv.fr/assurance/certification-dirigeant"),
            // Case and prefix matter: no fuzzy match.
            Some("EIDAS2"),
            Some("eidas2 "),
        ];
        let one_factor_amr: [&[&str]; 7] = [
            &[],
            &["pwd"],
            &["mail"],
            &["pwd", "mail"],
            &["pwd", "sms"],
            &["totp"],
            &["totp", "totp"],
        ];
        for acr in one_factor_acr {
            for methods in one_factor_amr {
                assert!(
                    !accepted.is_multi_factor(acr, &amr(methods)),
                    "{acr:?} {methods:?}"
                );
            }
        }
    }

    #[test]
    fn amr_shows_multi_factor_by_mfa_or_by_a_second_factor_beside_another_method() {
        let accepted = AcceptedAssurance::proconnect();
        for methods in [
            &["mfa"][..],
            &["pwd", "totp"],
            &["pwd", "pop"],
            &["mail", "totp"],
            &["pwd", "otp"],
            &["pwd", "hwk"],
            &["pin", "sc"],
        ] {
            assert!(
                accepted.is_multi_factor(Some("eidas1"), &amr(methods)),
                "{methods:?}"
            );
        }
        // A second factor alone is one factor.
        assert!(!accepted.is_multi_factor(None, &amr(&["pop"])));
    }

    #[test]
    fn assurance_can_be_narrowed_to_acr_only() {
        let strict = AcceptedAssurance::new(["eidas3"], [] as [&str; 0], [] as [&str; 0]);
        assert!(strict.is_multi_factor(Some("eidas3"), &[]));
        assert!(!strict.is_multi_factor(Some("eidas2"), &amr(&["pwd", "totp", "mfa"])));
    }

    #[test]
    fn claims_request_asks_for_an_essential_multi_factor_acr_and_for_amr() {
        let request: serde_json::Value =
            serde_json::from_str(&AcceptedAssurance::proconnect().claims_request()).unwrap();
        let acr = &request["id_token"]["acr"];
        assert_eq!(acr["essential"], true);
        let values: BTreeSet<&str> = acr["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            values,
            BTreeSet::from([
                "eidas2",
                "eidas3",
                SELF_ASSERTED_2FA,
                "https://proconnect.gouv.fr/assurance/consistency-checked-2fa"
            ])
        );
        assert_eq!(request["id_token"]["amr"]["essential"], true);

        let amr_only = AcceptedAssurance::new([] as [&str; 0], ["mfa"], ["totp"]);
        let request: serde_json::Value = serde_json::from_str(&amr_only.claims_request()).unwrap();
        assert!(request["id_token"].get("acr").is_none());
        assert_eq!(request["id_token"]["amr"]["essential"], true);
    }

    #[test]
    fn urls_must_be_https_except_on_loopback() {
        for ok in [
            "https://auth.example.gouv.fr/api/v2",
            "http://127.0.0.1:8080",
            "http://127.3.4.5/x",
            "http://localhost:3000/cb",
            "http://[::1]:9/cb",
        ] {
            assert!(checked_url("issuer_url", ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            (
                "http://auth.example.gouv.fr",
                "must use https (plain http only on a loopback address)",
            ),
            (
                "http://10.0.0.1/cb",
                "must use https (plain http only on a loopback address)",
            ),
            ("ftp://127.0.0.1/", "must be an https URL"),
            ("auth.example.gouv.fr", "not an absolute URL"),
            ("", "not an absolute URL"),
        ] {
            assert_eq!(
                checked_url("issuer_url", bad).unwrap_err(),
                OidcError::InvalidConfig {
                    field: "issuer_url",
                    reason
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn pending_login_checks_state_then_age() {
        let p = pending(1_000_000);
        assert_eq!(check_pending(&p, "state-123", at(1_000_000)), Ok(()));
        assert_eq!(check_pending(&p, "state-123", at(1_000_600)), Ok(()));
        assert_eq!(
            check_pending(&p, "state-124", at(1_000_000)),
            Err(OidcError::WrongState)
        );
        assert_eq!(
            check_pending(&p, "", at(1_000_000)),
            Err(OidcError::WrongState)
        );
        let stale = Err(OidcError::PendingExpired { max_secs: 600 });
        assert_eq!(check_pending(&p, "state-123", at(1_000_601)), stale);
        // Begun "in the future": tolerated within the skew, refused beyond.
        assert_eq!(check_pending(&p, "state-123", at(999_940)), Ok(()));
        assert_eq!(check_pending(&p, "state-123", at(999_939)), stale);
        // A clock before 1970 reads as 0: refused, not fresh.
        let before_1970 = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(check_pending(&p, "state-123", before_1970), stale);
    }

    #[test]
    fn broken_clocks_make_tokens_look_expired_and_never_panic() {
        assert_eq!(
            openidconnect_time(UNIX_EPOCH - Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(openidconnect_time(at(0)), DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(
            openidconnect_time(at(1_795_000_000)).timestamp(),
            1_795_000_000
        );
    }

    proptest! {
        #[test]
        fn time_conversion_never_panics(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            if let Some(time) = UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) {
                let converted = openidconnect_time(time);
                prop_assert!(converted >= DateTime::<Utc>::UNIX_EPOCH);
            }
        }

        /// Only first-factor methods and a non-listed acr: always refused,
        /// however many and in whatever order.
        #[test]
        fn first_factors_alone_are_never_multi_factor(
            acr in proptest::option::of("[a-z0-9:/.-]{0,40}"),
            methods in proptest::collection::vec(
                prop::sample::select(vec!["pwd", "mail", "sms", "tel", "kba", "pin", "user", "wia"]),
                0..6,
            ),
        ) {
            let accepted = AcceptedAssurance::proconnect();
            prop_assume!(acr.as_deref().is_none_or(|a| !accepted.acr.contains(a)));
            prop_assert!(!accepted.is_multi_factor(acr.as_deref(), &amr(&methods)));
        }

        /// More evidence never turns an acceptance into a refusal, and the
        /// order of amr does not matter.
        #[test]
        fn acceptance_is_monotonic_and_order_free(
            acr in proptest::option::of(prop::sample::select(vec!["eidas1", "eidas2", SELF_ASSERTED_2FA, "other"])),
            methods in proptest::collection::vec(
                prop::sample::select(vec!["pwd", "mail", "totp", "pop", "mfa", "sms", "x"]),
                0..5,
            ),
            extra in prop::sample::select(vec!["pwd", "mail", "totp", "pop", "mfa", "sms", "x"]),
        ) {
            let accepted = AcceptedAssurance::proconnect();
            let before = accepted.is_multi_factor(acr, &amr(&methods));
            let mut more = methods.clone();
            more.push(extra);
            if before {
                prop_assert!(accepted.is_multi_factor(acr, &amr(&more)));
            }
            let mut reversed = methods.clone();
            reversed.reverse();
            prop_assert_eq!(before, accepted.is_multi_factor(acr, &amr(&reversed)));
        }
    }

    #[test]
    fn pending_login_round_trips_and_its_debug_shows_no_secret() {
        let p = pending(42);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PendingLogin>(&json).unwrap(), p);
        let debug = format!("{p:?}");
        for secret in ["state-123", "nonce-456", "verifier-789"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("42"));
    }

    #[test]
    fn identities_debug_names_no_one() {
        let identity = FederatedIdentity {
            issuer: "https://idp.example".into(),
            subject: "sub-0042".into(),
            email: "agent@example.org".into(),
            acr: Some("eidas2".into()),
            amr: amr(&["pwd", "totp"]),
        };
        let debug = format!("{identity:?}");
        assert!(!debug.contains("sub-0042") && !debug.contains("agent@example.org"));
        assert!(debug.contains("eidas2") && debug.contains("totp"));
        let login = VerifiedLogin {
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            acr: identity.acr.clone(),
            amr: identity.amr.clone(),
        };
        assert!(!format!("{login:?}").contains("sub-0042"));
    }

    #[test]
    fn token_endpoint_refusals_keep_the_code_but_not_the_description() {
        let response = StandardErrorResponse::new(
            CoreErrorResponseType::InvalidGrant,
            Some("code SplxlOBeZQQYbYS6WxSbIA is invalid".into()),
            None,
        );
        let err = token_error(RequestTokenError::ServerResponse(response));
        assert_eq!(
            err.to_string(),
            "identity provider: token endpoint refused the code: invalid_grant"
        );
    }

    #[test]
    fn claim_check_failures_map_to_their_reason_without_echoing_values() {
        let cases = [
            (
                ClaimsVerificationError::InvalidIssuer("found `https://evil`".into()),
                OidcError::WrongIssuer,
            ),
            (
                ClaimsVerificationError::InvalidAudience("found `x`".into()),
                OidcError::WrongAudience,
            ),
            (
                ClaimsVerificationError::InvalidNonce("nonce mismatch".into()),
                OidcError::WrongNonce,
            ),
            (
                ClaimsVerificationError::Expired("at 3".into()),
                OidcError::Expired,
            ),
            (
                ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoSignature,
                ),
                OidcError::BadSignature,
            ),
            (
                ClaimsVerificationError::Other("eyJhbGciOi.secret".into()),
                OidcError::InvalidIdToken {
                    reason: "claims refused",
                },
            ),
        ];
        for (from, to) in cases {
            let mapped = claims_error(from);
            assert!(!mapped.to_string().contains("evil") && !mapped.to_string().contains("eyJ"));
            assert_eq!(mapped, to);
        }
    }

    #[test]
    fn federation_and_its_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Federation>();
        send_sync::<PendingLogin>();
        // Type-checked, never run: axum handlers need Send futures.
        let _ = |federation: &Federation, pending: &PendingLogin| {
            send(&federation.complete(pending, "", "", UNIX_EPOCH));
            send(&Federation::discover(
                "",
                "",
                "",
                "",
                AcceptedAssurance::proconnect(),
            ));
        };
    }
}
