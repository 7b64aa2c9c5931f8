//! The consultation path of DESIGN.md, written once:
//!
//! ```text
//! request ─▶ authenticate ─▶ authorize ─▶ guard ─▶ vault ─▶ ledger ─▶ response
//! ```
//!
//! Each stage is a module with one job ([`authenticate`], [`authorize`],
//! the `rempart-guard` crate, the `rempart-vault` crate, the
//! `rempart-ledger` crate); [`Consultation`] strings them together in
//! `path.rs`, one operation per function, read top to bottom; the account
//! lifecycle (requests, four-eyes decisions, resets, reviews) follows the
//! same pattern in `accounts.rs`. Nothing here
//! knows HTTP: the web crate turns requests into calls and [`Refusal`]s
//! into status codes.
//!
//! Two rules hold on every path:
//! - **Denials travel the same path to the ledger.** A refusal after
//!   authentication is appended before the caller hears of it.
//! - **Fail closed.** If the store, the policy, the guard or the ledger
//!   errs, the caller gets [`Refusal::Unavailable`] and no personal data;
//!   data is released only after its ledger leaf is durable.

mod accounts;
pub mod activation;
pub mod authenticate;
pub mod authorize;
pub mod clients;
pub mod federation;
pub mod login;
mod path;
pub mod purge;
mod throttle;

pub use accounts::{
    ALERT_PREFIX, AccountDecision, AccountRequest, BURST_REQUESTS, BURST_WINDOW_MINUTES,
    INACTIVITY_DAYS, IssueError, REQUESTABLE_ROLES, ResetDecision, SYSTEM_PREFIX, dormant,
    is_alert, issue_credential,
};
pub use authenticate::{Caller, IssuedCredential, ProofRequest, Rejected, Via};
pub use clients::{
    ClientConfigError, ClientSettings, RegisterError, TOKEN_PATH, TokenRefusal, TokenRequest,
};
pub use federation::{FederatedCallback, FederatedStart};
pub use login::{LoginAnswer, LoginError, LoginSettings, PasswordForm, Started};
pub use path::{
    AccountState, BreakGlass, CaseloadPage, Clock, Consultation, Grant, Granted,
    MAX_LIFT_REASON_BYTES, MAX_PAGE, MAX_REASON_BYTES, MIN_REASON_CHARS, NirShown,
    OrganisationEntry, Organisations, SearchBy, SearchResults, Shown,
};
pub use purge::{PurgeConfigError, PurgeSettings};

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
    /// Something failed; nothing was released. The text is for operators
    /// (it names the failing stage, never a personal value).
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Refusal::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
