//! The consultation kernel: the service every operation module extends,
//! and the stage helpers they share.
//!
//! - [`Consultation`], its constructor and builders (browser login, API
//!   clients, federation, clock, guard) and its accessors; [`Clock`], the
//!   one source of "now" for every operation.
//! - What every operation takes and answers: [`Presented`] (the
//!   credential a request shows) and [`Refusal`], the one refusal of
//!   every public operation (with [`LoginFailure`] and [`OAuthError`]).
//! - [`Ctx`], what a request is about, from which its ledger leaves are
//!   made.
//! - Stage 1 (authenticate the presented credential, ledgering a
//!   rejection) and [`Consultation::whoami`], which is stage 1 alone.
//! - The ledger helpers: [`Consultation::record`] and
//!   [`Consultation::record_all`] (stage 5), [`Consultation::deny`],
//!   [`Consultation::refuse`], [`Consultation::fail`] and
//!   [`Consultation::fail_on`], [`Consultation::leaf_then`] and
//!   [`Consultation::refuse_rehearsed`] with [`ChangeRefusal`].
//!
//! Operation modules (`reads`, `admin`, `accounts`, `activation`,
//! `login`, `federation`, `clients`) depend on this module and on the
//! stage modules (`authenticate`, `authorize`, `guard`, `throttle`); this
//! module depends on none of them but `authenticate` (the caller a
//! [`Ctx`] names) and `settings` (the optional parts it holds). Here the
//! store is read by stage 1 only; the ledger is written here and by
//! whoever calls [`Consultation::record`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rempart_auth::lockout::LoginRefusal;
use rempart_auth::oidc::Federation;
use rempart_domain::Purpose;
use rempart_guard::Guard;
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    GuardVerdict, LeafRef, Ledger, OrganisationId, PersonId, SessionId, Timestamp,
};
use rempart_policy::Authorizer;
use rempart_storage::{AuthStore, Store};
use rempart_vault::Vault;

use crate::authenticate::{self, BadCredential, Caller, Via};
use crate::settings::{
    ClientConfigError, ClientSettings, Clients, LoginConfigError, LoginSettings, Web,
};
use crate::views::AccountView;

pub use rempart_domain::AccountState;

/// What a request presents to prove who is calling: the first stage's
/// input. The web edge builds it from headers; nothing else is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No credential at all.
    Nothing,
    /// An API credential `rmp_<id>_<secret>` (the `Authorization: Bearer`
    /// value).
    ApiCredential(&'a str),
    /// A browser session: the session cookie's value, the device proof
    /// (the `DPoP` header, a JWS signed by the key the session is bound
    /// to), and the request's method and public URL, which the proof must
    /// name.
    Session {
        cookie: &'a str,
        proof: Option<&'a str>,
        method: &'a str,
        url: &'a str,
    },
    /// An API client's access token (`rmpat_…`, from the token endpoint):
    /// the whole `Authorization` header value (`DPoP <token>`; a `Bearer`
    /// use of such a token is brought here too, to be refused and
    /// ledgered as such), the DPoP proof (the `DPoP` header: none if
    /// absent or repeated), and the request's method and public URL
    /// without query, which the proof must name.
    AccessToken {
        authorization: &'a str,
        proof: Option<&'a str>,
        method: &'a str,
        url: &'a str,
    },
}

impl std::fmt::Debug for Presented<'_> {
    // Credentials, cookies and proofs are bearer secrets (or close to it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Nothing => f.write_str("Presented::Nothing"),
            Presented::ApiCredential(_) => f.write_str("Presented::ApiCredential(<redacted>)"),
            Presented::Session {
                proof, method, url, ..
            } => f
                .debug_struct("Presented::Session")
                .field("cookie", &"<redacted>")
                .field("proof", &proof.map(|_| "<present>"))
                .field("method", method)
                .field("url", url)
                .finish(),
            Presented::AccessToken {
                proof, method, url, ..
            } => f
                .debug_struct("Presented::AccessToken")
                .field("authorization", &"<redacted>")
                .field("proof", &proof.map(|_| "<present>"))
                .field("method", method)
                .field("url", url)
                .finish(),
        }
    }
}

/// Why a request was not served. Messages are safe to show the caller:
/// they never hold a personal value nor say whether a person exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No valid credential (missing, malformed, unknown, expired, revoked).
    #[error("a valid credential is required")]
    Unauthenticated,
    /// A DPoP-bound access token or its proof was refused (missing,
    /// unknown, expired, another key, another request, a replay). The code
    /// is the OAuth error for `WWW-Authenticate: DPoP error="…"`
    /// (`invalid_token` or `invalid_dpop_proof`, RFC 9449 §7.1).
    #[error("a valid DPoP-bound access token, with a fresh DPoP proof, is required")]
    TokenRejected { oauth_error: &'static str },
    /// The account is requested, suspended or disabled.
    #[error("this account is not active")]
    AccountInactive,
    /// No person visible to the caller matches: it does not exist, it is not
    /// in the caller's mandates, the mandate expired or was revoked, or the
    /// purpose shows nothing. Deliberately one answer for all.
    #[error("no person visible to you matches this request")]
    NotFound,
    /// The account's role or organisation may not perform this action.
    #[error("your account may not perform this action")]
    Forbidden,
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The action needs a fresh passkey assertion (step-up) first: asked
    /// for break-glass, for adding a factor (where an account with no
    /// passkey yet logs in again instead), and by the guard when behaviour
    /// looks unusual.
    #[error("this action needs a fresh confirmation with your passkey")]
    StepUpRequired,
    /// Break-glass is a human act: it needs a device-bound browser session
    /// with a fresh second factor (passkey step-up). An API credential or
    /// an API client's access token, which a program holds and can copy,
    /// never breaks the glass.
    #[error(
        "break-glass requires a browser session with a fresh second factor (passkey step-up); \
         API credentials and API clients cannot break the glass"
    )]
    BrowserSessionRequired,
    /// The guard throttled the account: too much, too fast. Trying again
    /// after `retry_after_secs` may succeed.
    #[error("too many consultations: try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u32 },
    /// The guard suspended the account (its sessions are ended), or it was
    /// suspended before: only an officer can reactivate it.
    #[error("this account is suspended")]
    AccountSuspended,
    /// The guard froze the account's organisation: every account of it is
    /// refused until an officer lifts the freeze.
    #[error("this organisation's access is frozen")]
    OrganisationFrozen,
    /// A login (password + TOTP, passkey, federated) or an activation's
    /// first step was refused, or throttled. Why, as far as the person may
    /// be told: never whether the account exists (the ledger says which
    /// check failed).
    #[error("{0}")]
    LoginFailed(LoginFailure),
    /// A login's or an activation's ceremony, or the device proof that
    /// must come with it, is missing, stale, used or foreign: the page
    /// must start again.
    #[error("the request expired or is not valid: start again")]
    Restart,
    /// This server does not offer the operation: browser login (and with
    /// it activation) or federated login is not configured.
    #[error("this server does not offer this operation")]
    NotOffered,
    /// The token endpoint refused the request, as RFC 6749 §5.2 and RFC
    /// 9449 §5 name it. The description names the parameter or claim and
    /// the rule, never a value; a failure on our side is `Unavailable`.
    #[error("{description}")]
    OAuth {
        error: OAuthError,
        description: String,
    },
    /// The request conflicts with the state of what it acts on (an
    /// incident already closed); the text says which and why, never a
    /// personal value.
    #[error("{0}")]
    Conflict(String),
    /// Something failed; nothing was released. The text is for operators
    /// (it names the failing stage, never a personal value).
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

/// Why a login was refused ([`Refusal::LoginFailed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Password + TOTP, or an activation code: the lockout's verdict,
    /// one for every credential failure, or a throttling one.
    Credentials(LoginRefusal),
    /// The passkey could not be verified (unknown, wrong, inactive
    /// account).
    Passkey,
    /// A federated login was refused: unknown, used or expired state,
    /// another device key, the provider's answer refused (no multi-factor
    /// authentication included), no account linked to the identity, or an
    /// inactive account.
    Federation,
}

impl LoginFailure {
    /// Whether this is a throttling refusal (too many attempts).
    pub fn is_throttled(&self) -> bool {
        matches!(self, LoginFailure::Credentials(r) if r.is_throttled())
    }

    /// Seconds until another attempt may succeed, when there is a known
    /// end.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            LoginFailure::Credentials(r) => r.retry_after_secs(),
            _ => None,
        }
    }
}

impl std::fmt::Display for LoginFailure {
    // For operators and the command line; pages say it in French.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoginFailure::Credentials(r) if r.is_throttled() => "too many login attempts",
            LoginFailure::Credentials(_) => "login refused: wrong or unknown credentials",
            LoginFailure::Passkey => "the passkey could not be verified",
            LoginFailure::Federation => "the federated login was refused",
        })
    }
}

/// The token endpoint's refusals ([`Refusal::OAuth`]), by their OAuth
/// `error` code (RFC 6749 §5.2, RFC 9449 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// A parameter is missing, repeated or malformed.
    InvalidRequest,
    /// `grant_type` is not `client_credentials`.
    UnsupportedGrantType,
    /// Client authentication failed.
    InvalidClient,
    /// The client authenticated but its account is not active.
    UnauthorizedClient,
    /// `scope` asks for something this server does not grant.
    InvalidScope,
    /// The DPoP proof is missing or refused.
    InvalidDpopProof,
}

impl OAuthError {
    /// The `error` member of the answer.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidDpopProof => "invalid_dpop_proof",
        }
    }
}

impl Refusal {
    /// What a store's error means for the caller: the store refused the
    /// request (a 400 naming its field), or it failed (`Unavailable`,
    /// naming `stage`).
    pub(crate) fn from_store(stage: &str, e: &rempart_storage::StorageError) -> Self {
        match e.refused() {
            Some((field, reason)) => Refusal::Invalid { field, reason },
            None => Refusal::Unavailable(format!("{stage}: {e}")),
        }
    }

    /// A token-endpoint refusal with its description.
    pub(crate) fn oauth(error: OAuthError, description: impl Into<String>) -> Self {
        Refusal::OAuth {
            error,
            description: description.into(),
        }
    }

    /// A request field is invalid, and why.
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Refusal::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Where "now" comes from: the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The consultation path's parts, shared by every request.
#[derive(Clone)]
pub struct Consultation {
    pub(crate) store: Store,
    /// The account lifecycle, credential resets, browser sessions and
    /// logins (same database as `store`).
    pub(crate) auth: Arc<dyn AuthStore>,
    pub(crate) vault: Vault,
    pub(crate) policy: Arc<Authorizer>,
    pub(crate) guard: Guard,
    ledger: Arc<Ledger>,
    // Browser sessions and logins (see `login.rs`); absent, every session
    // is refused and no login can happen.
    pub(crate) web: Option<Arc<Web>>,
    // API clients' token endpoint and DPoP-bound tokens (see
    // `clients.rs`); absent, no token is issued.
    pub(crate) clients: Option<Arc<Clients>>,
    // Federated login through an OpenID provider (see `federation.rs`);
    // absent, the login page does not offer it.
    pub(crate) federation: Option<Arc<Federation>>,
    // The breach register (see `incidents.rs`); absent, its operations
    // are not offered.
    pub(crate) register: Option<Arc<crate::settings::Register>>,
    // Every instant an operation uses: the system clock unless a test's
    // replaces it (`with_clock`); read it through `now`.
    pub(crate) clock: Clock,
    // Alerts waiting for their staged leaf's index off the request path
    // (`raise_with_leaf`); `finish_alerts` waits for them.
    pub(crate) late_alerts: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl std::fmt::Debug for Consultation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consultation")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl Consultation {
    /// The path over a vault, the authentication store of the same
    /// database (`rempart_storage::open_stores` gives both), the policies,
    /// the guard and the ledger.
    pub fn new(
        vault: Vault,
        auth: Arc<dyn AuthStore>,
        policy: Arc<Authorizer>,
        guard: Guard,
        ledger: Arc<Ledger>,
    ) -> Self {
        Consultation {
            store: vault.store().clone(),
            auth,
            vault,
            policy,
            guard,
            ledger,
            web: None,
            clients: None,
            federation: None,
            register: None,
            clock: Arc::new(Utc::now),
            late_alerts: Arc::default(),
        }
    }

    /// Replaces the guard (a benchmark serves the same parts with and
    /// without it).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// The guard, for its sync task.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Replaces the clock (tests move time forward instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current instant, from the clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The store, for readiness checks.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The vault, for benchmarks that need the clear values they search.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Whether the registry's store answers and the ledger's store is
    /// reachable, for readiness probes. Each failure names its part, with
    /// the error's text for operators (never a value).
    pub async fn readiness(&self) -> Result<(), Vec<(&'static str, String)>> {
        let store = self.store.person_ids(PersonId::new(0), 1).await;
        let ledger = self.ledger.store().size().await;
        let mut failed = Vec::new();
        if let Err(e) = store {
            failed.push(("registry store", e.to_string()));
        }
        if let Err(e) = ledger {
            failed.push(("ledger store", e.to_string()));
        }
        if !self.ledger.is_running() {
            failed.push(("ledger appender", "stopped".to_string()));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// The ledger, for readiness checks and shutdown.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Enables browser login and sessions.
    pub fn with_browser_login(mut self, settings: LoginSettings) -> Result<Self, LoginConfigError> {
        self.web = Some(Arc::new(Web::new(settings)?));
        Ok(self)
    }

    /// The public URL browser login was configured with.
    pub fn public_url(&self) -> Option<&str> {
        self.web.as_ref().map(|w| w.settings.public_url.as_str())
    }

    /// The authentication store.
    pub fn auth_store(&self) -> &Arc<dyn AuthStore> {
        &self.auth
    }

    /// The browser-login settings, if enabled.
    pub fn login_settings(&self) -> Option<&LoginSettings> {
        self.web.as_ref().map(|w| &w.settings)
    }

    /// Enables the token endpoint and DPoP-bound tokens.
    pub fn with_api_clients(mut self, settings: ClientSettings) -> Result<Self, ClientConfigError> {
        self.clients = Some(Arc::new(Clients::new(settings)?));
        Ok(self)
    }

    /// The public URL API clients were configured with: what the web edge
    /// prefixes to a request's path to get the URL its proof must name.
    pub fn api_public_url(&self) -> Option<&str> {
        self.clients
            .as_ref()
            .map(|c| c.settings.public_url.as_str())
    }

    /// Enables federated login through `federation`. Browser login must be
    /// enabled first ([`Consultation::with_browser_login`]): the session a
    /// federated login opens is the same device-bound session.
    pub fn with_federation(mut self, federation: Federation) -> Result<Self, LoginConfigError> {
        if self.web.is_none() {
            return Err(LoginConfigError::Federation(
                "browser login must be enabled first",
            ));
        }
        self.federation = Some(Arc::new(federation));
        Ok(self)
    }

    /// The identity provider's issuer URL, if federated login is enabled
    /// (the login page then offers it).
    pub fn federation_issuer(&self) -> Option<&str> {
        self.federation.as_deref().map(Federation::issuer)
    }

    /// Who is calling (no consultation, nothing ledgered on success).
    pub async fn whoami(&self, presented: &Presented<'_>) -> Result<AccountView, Refusal> {
        let caller = self
            .authenticate(presented, LeafAction::Login, self.now())
            .await?;
        Ok(AccountView::from(caller.account))
    }

    // ---------------------------------------------------------------------
    // Stage 1, and the ledger helpers every operation uses (stage 5 among
    // them). Each refusal is ledgered before it is returned.
    // ---------------------------------------------------------------------

    /// Stage 1. A rejected credential is ledgered (under account 0 when the
    /// credential names no account) and answered `Unauthenticated`; an
    /// inactive account is ledgered and answered `AccountInactive`.
    pub(crate) async fn authenticate(
        &self,
        presented: &Presented<'_>,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Result<Caller, Refusal> {
        let checked = match *presented {
            Presented::Nothing => Ok(Err(BadCredential::Malformed)),
            Presented::ApiCredential(token) => {
                authenticate::authenticate(&self.store, Some(token), now).await
            }
            Presented::Session {
                cookie,
                proof,
                method,
                url,
            } => match &self.web {
                Some(web) => {
                    let request = authenticate::ProofRequest { proof, method, url };
                    authenticate::authenticate_session(
                        self.auth.as_ref(),
                        cookie,
                        request,
                        now,
                        &web.replay,
                    )
                    .await
                }
                // Browser login is not configured: no session exists.
                _ => Ok(Err(BadCredential::SessionUnknown)),
            },
            Presented::AccessToken {
                authorization,
                proof,
                method,
                url,
            } => {
                let request = authenticate::ProofRequest { proof, method, url };
                authenticate::authenticate_access_token(
                    self.auth.as_ref(),
                    authorization,
                    request,
                    now,
                )
                .await
            }
        };
        match checked {
            Ok(Ok(caller)) => self.admit(caller, action, now).await,
            Ok(Err(rejected)) => Err(self.reject(rejected, action, now).await),
            Err(e) => Err(self.unavailable(&e, action, now).await),
        }
    }

    /// The end of stage 1 for a good credential: an active account goes
    /// on; any other state is ledgered and refused.
    pub(crate) async fn admit(
        &self,
        caller: Caller,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Result<Caller, Refusal> {
        if caller.account.state == AccountState::Active {
            return Ok(caller);
        }
        let a = &caller.account;
        self.record(unauthenticated_leaf(
            a.account_id,
            a.organisation_id,
            action,
            DenyReason::AccountInactive,
            now,
        ))
        .await?;
        // A suspended account is told so (the guard, or an officer, did
        // it); requested and disabled ones are simply inactive.
        Err(match a.state {
            AccountState::Suspended => Refusal::AccountSuspended,
            _ => Refusal::AccountInactive,
        })
    }

    /// Stage 1 refused the credential: ledgered (under account 0 when the
    /// credential names no account), then `Unauthenticated`.
    pub(crate) async fn reject(
        &self,
        rejected: BadCredential,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Refusal {
        // The organisation is not looked up for a failed credential: the
        // account id is enough to find it, and a miss costs one query.
        let account = rejected.account_id().unwrap_or(AccountId::UNKNOWN);
        let (reason, refusal) = match rejected {
            // The replay cache could not record the proof: our failure.
            BadCredential::ProofRefused { error, .. }
            | BadCredential::TokenProofRefused { error, .. }
                if error.is_unavailable() =>
            {
                (
                    DenyReason::InternalError,
                    Refusal::Unavailable(format!("authentication: {error}")),
                )
            }
            r if r.is_session() => (DenyReason::SessionInvalid, Refusal::Unauthenticated),
            BadCredential::TokenProofRefused { .. } => (
                DenyReason::SessionInvalid,
                Refusal::TokenRejected {
                    oauth_error: rejected.oauth_error().unwrap_or("invalid_dpop_proof"),
                },
            ),
            BadCredential::TokenRefused { .. } => (
                DenyReason::BadCredentials,
                Refusal::TokenRejected {
                    oauth_error: rejected.oauth_error().unwrap_or("invalid_token"),
                },
            ),
            _ => (DenyReason::BadCredentials, Refusal::Unauthenticated),
        };
        let mut leaf = unauthenticated_leaf(account, OrganisationId::UNKNOWN, action, reason, now);
        leaf.note = Some(rejected.note().to_string());
        match self.record(leaf).await {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// The store failed before the caller was known: ledgered under account
    /// 0 (best effort, like [`Consultation::fail`]), then `Unavailable`.
    pub(crate) async fn unavailable(
        &self,
        error: &rempart_storage::StorageError,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Refusal {
        let message = format!("authentication: {error}");
        let _ = self
            .record(unauthenticated_leaf(
                AccountId::UNKNOWN,
                OrganisationId::UNKNOWN,
                action,
                DenyReason::InternalError,
                now,
            ))
            .await;
        Refusal::Unavailable(message)
    }

    /// Stage 5. A failed append is `Unavailable`: nothing may be released.
    pub(crate) async fn record(&self, leaf: AuditLeaf) -> Result<LeafRef, Refusal> {
        self.ledger
            .append(&leaf)
            .await
            .map_err(|e| Refusal::Unavailable(format!("audit ledger: {e}")))
    }

    pub(crate) async fn record_all(
        &self,
        leaves: &[AuditLeaf],
    ) -> Result<Option<LeafRef>, Refusal> {
        self.ledger
            .append_batch(leaves)
            .await
            .map_err(|e| Refusal::Unavailable(format!("audit ledger: {e}")))
    }

    /// A state change and its leaf, atomic in effect: `leaf`, the change
    /// allowed, is made durable first, and `change` runs only then, so a
    /// failed append (or a request cut short while it waits) changes
    /// nothing. The caller rehearses the change before (see
    /// [`AuthStore::rehearse`]), so that a refusal is ledgered alone, as a
    /// denial. If the change still fails (something moved since its
    /// rehearsal, or the store failed), a deny leaf pointing at the first
    /// follows (best effort) and the change's refusal is returned: the
    /// ledger may hold an allowed change undone by the next leaf, never a
    /// change without its leaf.
    pub(crate) async fn leaf_then<T>(
        &self,
        ctx: &Ctx<'_>,
        leaf: AuditLeaf,
        change: impl std::future::Future<Output = Result<T, ChangeRefusal>>,
    ) -> Result<T, Refusal> {
        let person = leaf.person;
        let recorded = self.record(leaf).await?;
        match change.await {
            Ok(done) => Ok(done),
            Err(refused) => {
                let _ = self
                    .record(ctx.leaf(
                        person,
                        FieldGroups::EMPTY,
                        LeafDecision::Deny(refused.reason),
                        None,
                        Some(format!("{} ({recorded})", refused.what)),
                    ))
                    .await;
                Err(refused.refusal)
            }
        }
    }

    /// A change refused at its rehearsal: ledgered as a denial (an internal
    /// error without note, like [`Consultation::fail`]), then its refusal.
    pub(crate) async fn refuse_rehearsed(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<PersonId>,
        refused: ChangeRefusal,
        note: Option<String>,
    ) -> Refusal {
        let note = match refused.reason {
            DenyReason::InternalError => None,
            _ => note,
        };
        let leaf = ctx.leaf(
            person_id,
            FieldGroups::EMPTY,
            LeafDecision::Deny(refused.reason),
            None,
            note,
        );
        match self.record(leaf).await {
            Ok(_) => refused.refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// Ledgers a denial, then hands back the refusal to return (or
    /// `Unavailable` if even the denial could not be ledgered).
    pub(crate) async fn deny(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<PersonId>,
        reason: DenyReason,
        refusal: Refusal,
    ) -> Refusal {
        match self
            .record(ctx.leaf(
                person_id,
                FieldGroups::EMPTY,
                LeafDecision::Deny(reason),
                None,
                None,
            ))
            .await
        {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// A stage failed: ledger it as an internal error (best effort) and fail
    /// closed.
    pub(crate) async fn fail(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<PersonId>,
        stage: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> Refusal {
        // Formatted first: the error need not live across the await.
        let message = format!("{stage}: {error}");
        let _ = self
            .record(ctx.leaf(
                person_id,
                FieldGroups::EMPTY,
                LeafDecision::Deny(DenyReason::InternalError),
                None,
                None,
            ))
            .await;
        Refusal::Unavailable(message)
    }

    /// A stage's result, or its failure ledgered and failed closed as
    /// [`Consultation::fail`] does: `Ok` passes through, `Err` becomes
    /// [`Refusal::Unavailable`] naming `stage`, after its internal-error
    /// leaf (best effort).
    pub(crate) async fn fail_on<T, E>(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<PersonId>,
        stage: &str,
        result: Result<T, E>,
    ) -> Result<T, Refusal>
    where
        E: std::fmt::Display + Sync,
    {
        match result {
            Ok(value) => Ok(value),
            Err(e) => Err(self.fail(ctx, person_id, stage, &e).await),
        }
    }

    /// Ledgers a refusal with its `note` (the account or ceremony it is
    /// about), then hands back the refusal (or `Unavailable` if even that
    /// failed).
    pub(crate) async fn refuse(
        &self,
        ctx: &Ctx<'_>,
        reason: DenyReason,
        refusal: Refusal,
        note: String,
    ) -> Refusal {
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Deny(reason),
            None,
            Some(note),
        );
        match self.record(leaf).await {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        }
    }
}

/// A state change refused, rehearsed or for real (see
/// [`Consultation::leaf_then`]): the [`Refusal`] the caller hears, with how
/// its deny leaf reads.
#[derive(Debug)]
pub(crate) struct ChangeRefusal {
    /// How its deny leaf reads.
    pub reason: DenyReason,
    /// What the caller is answered.
    pub refusal: Refusal,
    /// The follow-up leaf's note, after the change was ledgered.
    pub what: &'static str,
}

impl ChangeRefusal {
    /// Refused or not made, with the follow-up note "not made".
    pub(crate) fn new(reason: DenyReason, refusal: Refusal) -> ChangeRefusal {
        ChangeRefusal {
            reason,
            refusal,
            what: "not made",
        }
    }

    /// The store failed at `stage`: an internal error, `Unavailable`.
    pub(crate) fn failed(stage: &str, error: &rempart_storage::StorageError) -> ChangeRefusal {
        ChangeRefusal::new(
            DenyReason::InternalError,
            Refusal::Unavailable(format!("{stage}: {error}")),
        )
    }
}

/// A leaf for a request refused at stage 1, with no session.
pub(crate) fn unauthenticated_leaf(
    account: AccountId,
    organisation: OrganisationId,
    action: LeafAction,
    reason: DenyReason,
    now: DateTime<Utc>,
) -> AuditLeaf {
    AuditLeaf {
        time: Timestamp::from_datetime(now),
        account,
        organisation,
        session: None,
        person: None,
        action,
        field_groups: FieldGroups::EMPTY,
        purpose: None,
        decision: LeafDecision::Deny(reason),
        guard: None,
        note: None,
    }
}

/// What a request is about, for its ledger leaves.
pub(crate) struct Ctx<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) action: LeafAction,
    pub(crate) purpose: Option<Purpose>,
    pub(crate) now: DateTime<Utc>,
}

impl<'a> Ctx<'a> {
    /// A request by `caller` for `action` at `now`, about no purpose (set
    /// [`Ctx::purpose`] when the request names one).
    pub(crate) fn new(caller: &'a Caller, action: LeafAction, now: DateTime<Utc>) -> Ctx<'a> {
        Ctx {
            caller,
            action,
            purpose: None,
            now,
        }
    }

    /// The same request, for `purpose`.
    pub(crate) fn for_purpose(mut self, purpose: Purpose) -> Ctx<'a> {
        self.purpose = Some(purpose);
        self
    }

    /// An allowed leaf of this request about no person, with its note
    /// (what was listed, opened or changed).
    pub(crate) fn noted(&self, note: String) -> AuditLeaf {
        self.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(note),
        )
    }

    /// A leaf of this request: its time, caller, session, action and
    /// purpose, with what the caller of this helper says.
    pub(crate) fn leaf(
        &self,
        person_id: Option<PersonId>,
        field_groups: FieldGroups,
        decision: LeafDecision,
        guard: Option<GuardVerdict>,
        note: Option<String>,
    ) -> AuditLeaf {
        let a = &self.caller.account;
        AuditLeaf {
            time: Timestamp::from_datetime(self.now),
            account: a.account_id,
            organisation: a.organisation_id,
            session: Some(session_of(&self.caller.via)),
            person: person_id,
            action: self.action,
            field_groups,
            purpose: self.purpose,
            decision,
            guard,
            note,
        }
    }
}

/// The ledger's session id: for an API credential its id, so every read
/// made with one credential can be listed; for a browser session the first
/// half of its row's key (a digest of the cookie's secret, from which the
/// cookie cannot be rebuilt), so every read of one session can be listed;
/// for an access token the first half of its digest.
pub(crate) fn session_of(via: &Via) -> SessionId {
    let mut s = [0u8; 16];
    match via {
        Via::Credential(credential_id) => {
            s[..4].copy_from_slice(b"cred");
            s[8..].copy_from_slice(&credential_id.to_be_bytes());
        }
        Via::Session { id_digest, .. } => s.copy_from_slice(&id_digest[..16]),
        // A token's digest, as for sessions: the token's issuance leaf
        // carries the same id, so every read made with one token can be
        // traced back to the client assertion that obtained it.
        Via::AccessToken { digest, .. } => return token_session(digest),
    }
    SessionId(s)
}

/// The session id of reads made with the access token whose digest this is.
pub(crate) fn token_session(digest: &[u8; 32]) -> SessionId {
    let mut s = [0u8; 16];
    s.copy_from_slice(&digest[..16]);
    SessionId(s)
}

/// Handlers run on a multi-threaded runtime: the operations must be `Send`.
#[allow(dead_code)]
fn operations_are_send(c: &Consultation) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&c.whoami(&Presented::Nothing));
}
