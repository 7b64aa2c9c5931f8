//! The consultation path of DESIGN.md, written once:
//!
//! ```text
//! request ─▶ authenticate ─▶ authorize ─▶ guard ─▶ vault ─▶ ledger ─▶ response
//! ```
//!
//! The crate is a kernel, stage modules and operation modules.
//!
//! - `kernel` holds [`Consultation`] (its parts, builders and [`Clock`],
//!   the one source of "now"), what a request presents ([`Presented`])
//!   and is refused with ([`Refusal`]), the request context every ledger
//!   leaf is made from, stage 1 (authenticate a presented credential) and
//!   the ledger helpers every operation records, denies and fails closed
//!   with. `settings` holds what browser login and API clients are
//!   configured with.
//! - Stage modules, one job each: [`authenticate`] (credentials,
//!   sessions, access tokens), [`authorize`] (the policy over the mandates
//!   stored right now), `guard` (the `rempart-guard` crate's verdicts,
//!   ledgered and contained), `throttle` (login attempts), `session`
//!   (opening a browser session after any login), `secrets` (accounts'
//!   TOTP secrets and activation codes); then the `rempart-vault` and
//!   `rempart-ledger` crates.
//! - Operation modules, one per kind of user, one operation per function,
//!   read top to bottom: `reads` (partners reading persons: read, search,
//!   caseload, break-glass), `admin` (officers: mandates, organisations,
//!   account states, freezes), `accounts` and [`activation`] (the account
//!   lifecycle: requests, four-eyes decisions, resets, reviews, a
//!   holder's first login), [`login`] and [`federation`] (browser login,
//!   passkeys, step-up, logout; ProConnect) and [`clients`] (API clients
//!   and the token endpoint). They use the kernel and the stage modules,
//!   never one another.
//!
//! The store is read and written by stage 1 and the stage modules, and by
//! each operation for the rows only it needs; every failure there is
//! ledgered through the kernel before it is returned. [`purge`] is the
//! scheduled purge. Nothing here knows HTTP: the web crate turns requests
//! into calls and [`Refusal`]s into status codes.
//!
//! Two rules hold on every path:
//! - **Denials travel the same path to the ledger.** A refusal after
//!   authentication is appended before the caller hears of it.
//! - **Fail closed.** If the store, the policy, the guard or the ledger
//!   errs, the caller gets [`Refusal::Unavailable`] and no personal data;
//!   data is released only after its ledger leaf is durable.

mod accounts;
pub mod activation;
mod admin;
pub mod authenticate;
pub mod authorize;
pub mod clients;
pub mod federation;
mod guard;
mod incidents;
mod kernel;
pub mod login;
pub mod purge;
mod reads;
mod secrets;
mod session;
mod settings;
mod throttle;
mod views;

pub use accounts::{
    ALERT_PREFIX, AccountDecision, AccountRequest, BURST_REQUESTS, BURST_WINDOW_MINUTES,
    INACTIVITY_DAYS, REQUESTABLE_ROLES, ResetDecision, SYSTEM_PREFIX, dormant, is_alert,
    issue_credential,
};
pub use admin::{Grant, Granted, MAX_LIFT_REASON_BYTES, OrganisationEntry, Organisations};
pub use authenticate::{BadCredential, Caller, IssuedCredential, ProofRequest, Via};
pub use authorize::{MAX_REASON_BYTES, MIN_REASON_CHARS};
pub use clients::{ClientConfigError, ClientSettings, TOKEN_PATH, TokenRequest};
pub use federation::{FederatedCallback, FederatedStart};
pub use incidents::{BEFORE_ALERT, IncidentRequest, IncidentRequestError, IncidentView, ScopeView};
pub use kernel::{AccountState, Clock, Consultation, LoginFailure, OAuthError, Presented, Refusal};
pub use login::{LoginAnswer, LoginSettings, PasswordForm, Started};
pub use purge::{PurgeConfigError, PurgeSettings};
pub use reads::{BreakGlass, CaseloadPage, MAX_PAGE, NirShown, SearchBy, SearchResults, Shown};
/// A scope's counts, as the register's answers carry them.
pub use rempart_breach::ScopeSummary;
/// Where a consultation's leaf is (its index, or a staging receipt): part
/// of what a consultation returns.
pub use rempart_ledger::LeafRef;
pub use settings::Register;
pub use views::{
    AccountHistory, AccountReview, AccountView, CaseloadEntry, GrantDecision, GrantRequestView,
    MandateTerms, MandateView, ResetKind, ResetView,
};
