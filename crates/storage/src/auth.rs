//! What authentication persists, behind its own interface, [`AuthStore`],
//! implemented by both backends on the registry's database and connections.
//!
//! The store never sees a secret in clear: TOTP secrets arrive sealed by the
//! caller, passwords as PHC argon2id strings, sessions, access tokens,
//! ceremonies and replay keys as 32-byte digests. The payloads the
//! authentication code owns (throttle state, passkeys, ceremony states,
//! client keys) are opaque JSON text here: this crate does not know their
//! shape.
//!
//! Four eyes: an account is *requested* by one account and *decided* by an
//! active officer who is neither the requester nor the account, and (for a
//! partner's account) from outside its organisation; credential resets
//! follow the same rule. The store enforces these invariants itself, so no
//! caller can forget them; who may *request* is the caller's policy.
//!
//! Instants are kept to the microsecond, as everywhere in the store.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use rempart_domain::{
    AccountAction, AccountId, AccountState, LifecycleState, OrganisationId, OrganisationKind,
    Reference, Role,
};

use crate::{AccountRecord, StorageError};

/// A manager's (or officer's) request for a new account; see
/// [`AuthStore::request_account`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccountRequest {
    /// The organisation the account will belong to.
    pub organisation_id: OrganisationId,
    /// Its login, unique in the registry.
    pub login: Reference,
    /// Its role once approved.
    pub role: Role,
    /// The account asking for it (must be active).
    pub requested_by: AccountId,
    /// When it was asked for: the account's `created_at`.
    pub at: DateTime<Utc>,
}

/// The history of an account that authentication and reviews need.
///
/// Accounts stored before this schema version, and accounts written by an
/// import, have no `created_at`, `decided_by` or `decided_at` (their
/// history is unknown): they are `None`, never invented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLifecycle {
    /// The account.
    pub account_id: AccountId,
    /// When it was requested (or created), if known.
    pub created_at: Option<DateTime<Utc>>,
    /// Who asked for it, if known.
    pub requested_by: Option<AccountId>,
    /// The officer who approved or rejected the request.
    pub decided_by: Option<AccountId>,
    /// When the request was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// The last successful login, if any.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Set by an approved credential reset: the next session opened is
    /// high-risk. Cleared by [`AuthStore::record_login`].
    pub next_session_high_risk: bool,
}

/// How a browser session was opened (the column's only values).
pub const SESSION_METHODS: &[&str] = &["passkey", "password_totp", "oidc"];

/// A browser session, looked up by the digest of its cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// SHA-256 (or similar) digest of the session id the cookie carries.
    pub id_digest: [u8; 32],
    /// The account logged in.
    pub account_id: AccountId,
    /// Thumbprint (43 characters of base64url) of the device key the
    /// session is bound to: every request carries a proof signed with it.
    pub jkt: String,
    /// One of [`SESSION_METHODS`].
    pub method: String,
    /// Login instant.
    pub created_at: DateTime<Utc>,
    /// Last request seen; idle expiry counts from here.
    pub last_seen_at: DateTime<Utc>,
    /// The session ends then, whatever the activity.
    pub absolute_expiry: DateTime<Utc>,
    /// Idle timeout, in seconds (positive).
    pub idle_timeout_secs: i64,
    /// First session after a credential reset (or otherwise flagged).
    pub high_risk: bool,
    /// Last fresh passkey assertion (step-up) in this session.
    pub step_up_at: Option<DateTime<Utc>>,
    /// When it was ended (logout, reset…); `None` while not ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it was ended (a lowercase code such as `logout` or `reset`).
    pub end_reason: Option<String>,
}

impl StoredSession {
    /// Whether the session may serve a request at `now`: not ended, before
    /// its absolute expiry, and not idle for its timeout or longer. A
    /// timeout too large to add to an instant fails closed (not live).
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        let idle_end = TimeDelta::try_seconds(self.idle_timeout_secs)
            .and_then(|d| self.last_seen_at.checked_add_signed(d));
        self.ended_at.is_none()
            && now < self.absolute_expiry
            && idle_end.is_some_and(|end| now < end)
    }
}

/// A registered passkey (WebAuthn credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskeyRow {
    /// The credential id the authenticator chose (1 to 1023 bytes).
    pub credential_id: Vec<u8>,
    /// Its owner.
    pub account_id: AccountId,
    /// The passkey as the authentication code serialises it (JSON).
    pub data: String,
    /// Registration instant.
    pub created_at: DateTime<Utc>,
    /// Last successful assertion.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An account's TOTP factor.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTotp {
    /// The account.
    pub account_id: AccountId,
    /// The secret, sealed by the caller (opaque bytes, 1 to 1024).
    pub sealed_secret: Vec<u8>,
    /// The last time step a code was accepted for: a code is only accepted
    /// for a later step ([`AuthStore::accept_totp_step`]).
    pub last_step: Option<u64>,
    /// Enrolment instant.
    pub enrolled_at: DateTime<Utc>,
}

impl std::fmt::Debug for StoredTotp {
    // The sealed secret is not readable, but it has no business in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTotp")
            .field("account_id", &self.account_id)
            .field(
                "sealed_secret",
                &format_args!("<{} bytes>", self.sealed_secret.len()),
            )
            .field("last_step", &self.last_step)
            .field("enrolled_at", &self.enrolled_at)
            .finish()
    }
}

/// An API client authenticating with `private_key_jwt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClientRow {
    /// OAuth client id (1 to 128 visible ASCII characters).
    pub client_id: String,
    /// The account the client acts for.
    pub account_id: AccountId,
    /// Its registered public keys, as the authentication code serialises
    /// them (JSON).
    pub keys: String,
    /// Registration instant.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; `None` while usable.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A DPoP-bound access token, looked up by the digest of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    /// Digest of the token value.
    pub digest: [u8; 32],
    /// The client it was issued to.
    pub client_id: String,
    /// The account the client acts for (the client's own).
    pub account_id: AccountId,
    /// Thumbprint (43 characters) of the DPoP key it is bound to.
    pub jkt: String,
    /// What it may do (space-separated scope tokens).
    pub scope: String,
    /// Issue instant.
    pub issued_at: DateTime<Utc>,
    /// When it stops working (after `issued_at`).
    pub expires_at: DateTime<Utc>,
}

/// Why [`AuthStore::insert_session`] refuses an account that is not active.
pub(crate) const INACTIVE_SESSION: &str = "the account is not active: no session opens for it";

/// What [`AuthStore::suspend_account`] ended with the suspension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspension {
    /// Live browser sessions ended.
    pub sessions: u64,
    /// API credentials (`rmp_…`) revoked.
    pub credentials: u64,
    /// API clients revoked (their access tokens deleted with them).
    pub api_clients: u64,
    /// Access tokens deleted.
    pub access_tokens: u64,
}

/// What one round of [`AuthStore::purge_expired`] deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired ceremonies.
    pub ceremonies: u64,
    /// Expired replay keys.
    pub replay_keys: u64,
    /// Expired access tokens.
    pub access_tokens: u64,
    /// Sessions past their absolute expiry for the kept period.
    pub sessions: u64,
    /// Trusted login devices past their expiry.
    pub login_devices: u64,
}

impl Purged {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.ceremonies + self.replay_keys + self.access_tokens + self.sessions + self.login_devices
    }

    /// Whether some table gave `limit` rows: there may be more to delete.
    pub fn full(&self, limit: u32) -> bool {
        let limit = u64::from(limit);
        [
            self.ceremonies,
            self.replay_keys,
            self.access_tokens,
            self.sessions,
        ]
        .iter()
        .any(|&n| n >= limit)
    }

    /// Adds another round's counts.
    pub fn add(&mut self, other: Purged) {
        self.ceremonies += other.ceremonies;
        self.replay_keys += other.replay_keys;
        self.access_tokens += other.access_tokens;
        self.sessions += other.sessions;
    }
}

/// The purge's statements, one per table, the same on both backends: at
/// most `limit` rows chosen by primary key, the condition checked again on
/// the row deleted (a replay key taken over meanwhile is live again).
/// Parameters: 1 the instant compared with, 2 the limit.
pub(crate) const PURGE_SQL: [(&str, &str); 5] = [
    (
        "ceremonies",
        "DELETE FROM ceremony WHERE id IN
           (SELECT id FROM ceremony WHERE expires_at <= $1 LIMIT $2) AND expires_at <= $1",
    ),
    (
        "replay_keys",
        "DELETE FROM replay_key WHERE digest IN
           (SELECT digest FROM replay_key WHERE expires_at <= $1 LIMIT $2) AND expires_at <= $1",
    ),
    (
        "access_tokens",
        "DELETE FROM access_token WHERE digest IN
           (SELECT digest FROM access_token WHERE expires_at <= $1 LIMIT $2)
         AND expires_at <= $1",
    ),
    (
        "sessions",
        "DELETE FROM web_session WHERE id_digest IN
           (SELECT id_digest FROM web_session WHERE absolute_expiry <= $1 LIMIT $2)
         AND absolute_expiry <= $1",
    ),
    (
        "login_devices",
        "DELETE FROM login_device WHERE digest IN
           (SELECT digest FROM login_device WHERE expires_at <= $1 LIMIT $2)
         AND expires_at <= $1",
    ),
];

/// Which factors a credential reset removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// The password (and its throttle state).
    Password,
    /// The TOTP factor.
    Totp,
    /// Every passkey.
    Passkeys,
    /// All of the above.
    All,
}

impl ResetKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [ResetKind] = &[
        ResetKind::Password,
        ResetKind::Totp,
        ResetKind::Passkeys,
        ResetKind::All,
    ];

    /// The stable code kept in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetKind::Password => "password",
            ResetKind::Totp => "totp",
            ResetKind::Passkeys => "passkeys",
            ResetKind::All => "all",
        }
    }

    /// Parses a stored code.
    pub fn parse(s: &str) -> Result<ResetKind, StorageError> {
        ResetKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StorageError::Corrupt("stored reset kind is not a known code".into()))
    }

    /// Whether the password row goes.
    pub fn removes_password(self) -> bool {
        matches!(self, ResetKind::Password | ResetKind::All)
    }

    /// Whether the TOTP row goes.
    pub fn removes_totp(self) -> bool {
        matches!(self, ResetKind::Totp | ResetKind::All)
    }

    /// Whether the passkeys go.
    pub fn removes_passkeys(self) -> bool {
        matches!(self, ResetKind::Passkeys | ResetKind::All)
    }
}

/// A request to reset an account's factors, and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialReset {
    /// Never reused.
    pub id: i64,
    /// Whose factors.
    pub account_id: AccountId,
    /// Which factors.
    pub kind: ResetKind,
    /// Who asked.
    pub requested_by: AccountId,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// The officer who decided, once decided.
    pub decided_by: Option<AccountId>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// `Some(true)` approved, `Some(false)` rejected, `None` pending.
    pub approved: Option<bool>,
}

/// A new activation code for [`AuthStore::issue_activation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivation {
    /// The account the code activates.
    pub account_id: AccountId,
    /// SHA-256 digest of the code (the code itself is never stored).
    pub digest: [u8; 32],
    /// The officer handing the code over.
    pub issued_by: AccountId,
    /// Issue instant.
    pub issued_at: DateTime<Utc>,
    /// The code is refused from then on (after `issued_at`).
    pub expires_at: DateTime<Utc>,
}

/// An account's activation code, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredActivation {
    /// The account.
    pub account_id: AccountId,
    /// SHA-256 digest of the code.
    pub digest: [u8; 32],
    /// The officer who issued it.
    pub issued_by: AccountId,
    /// Issue instant.
    pub issued_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was used; `None` while unused.
    pub used_at: Option<DateTime<Utc>>,
    /// Throttle state of wrong codes (JSON, `{}` when new).
    pub throttle: String,
}

/// The factors [`AuthStore::complete_activation`] sets, in one transaction
/// with the code's use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationFactors {
    /// The new password (argon2id PHC string), if the account had none.
    pub phc: Option<String>,
    /// The new TOTP factor, if the account had none.
    pub totp: Option<StoredTotp>,
}

/// A federated identity (an external OpenID provider's `iss` and `sub`)
/// linked by an officer to an account: the only way a federated login
/// names an account. See [`AuthStore::link_federation`].
#[derive(Clone, PartialEq, Eq)]
pub struct FederationLink {
    /// The provider's issuer URL, exactly as its id_tokens carry it (1 to
    /// 512 visible ASCII characters).
    pub issuer: String,
    /// The provider's stable identifier of the person (1 to 255 visible
    /// ASCII characters, OpenID Connect's bound).
    pub subject: String,
    /// The account the identity logs in as.
    pub account_id: AccountId,
    /// The officer who made the link.
    pub linked_by: AccountId,
    /// When the link was made.
    pub linked_at: DateTime<Utc>,
}

impl std::fmt::Debug for FederationLink {
    // The subject identifies a person at the provider: not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationLink")
            .field("issuer", &self.issuer)
            .field("subject", &"<redacted>")
            .field("account_id", &self.account_id)
            .field("linked_by", &self.linked_by)
            .field("linked_at", &self.linked_at)
            .finish()
    }
}

/// An account with its history, for approval queues and periodic reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewEntry {
    /// The account and its organisation.
    pub account: AccountRecord,
    /// Its history.
    pub lifecycle: AccountLifecycle,
}

/// Authentication's storage, on the registry's database. Every method is
/// one transaction: it happens whole or not at all. Refusals name the
/// request's field: [`StorageError::NotFound`] for what does not exist,
/// [`StorageError::Refused`] for a rule (`login: already used…`).
#[async_trait]
pub trait AuthStore: Send + Sync {
    // ------------------------------------------------------------ accounts

    /// Records a request for a new account, in state `requested`, with
    /// `requested_by` and `created_at` set, and returns it. Refuses an
    /// unknown `organisation_id`, an unknown or inactive `requested_by`,
    /// and a `login` already used.
    async fn request_account(&self, r: NewAccountRequest) -> Result<AccountRecord, StorageError>;

    /// Decides a requested account (compare-and-set: only from
    /// `requested`): approval makes it `active` with `approved_by`,
    /// rejection `disabled`; both set `decided_by` and `decided_at`.
    /// `None` if there is no such account or it is not in `requested` (so
    /// a request is decided once). Refuses (`officer_id: …`) a decider who
    /// is not an active officer, is the account or its requester, or (for
    /// a partner's account) belongs to its organisation.
    async fn decide_account(
        &self,
        account_id: AccountId,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountRecord>, StorageError>;

    /// Rehearses `change` as its method would make it at `at`, in a
    /// transaction that is rolled back: the same checks, the same
    /// refusals, nothing written. `Ok(None)` where the method would answer
    /// `None` (no such account or reset, or nothing to decide). The
    /// consultation path rehearses a change, ledgers it, and only then
    /// makes it, so that no change is ever made without its leaf; the
    /// change's own compare-and-set still decides if anything moved in
    /// between.
    async fn rehearse(
        &self,
        change: &AccountChange,
        at: DateTime<Utc>,
    ) -> Result<Option<Rehearsal>, StorageError>;

    /// How many accounts `requested_by` has asked for at or after `since`
    /// (to notice a burst of requests).
    async fn requests_since(
        &self,
        requested_by: AccountId,
        since: DateTime<Utc>,
    ) -> Result<u32, StorageError>;

    /// Accounts awaiting a decision, oldest request first.
    async fn pending_requests(&self) -> Result<Vec<ReviewEntry>, StorageError>;

    /// An account's history; `None` if there is no such account.
    async fn lifecycle(
        &self,
        account_id: AccountId,
    ) -> Result<Option<AccountLifecycle>, StorageError>;

    /// Records a successful login: sets `last_login_at` and clears
    /// `next_session_high_risk` (read [`AuthStore::lifecycle`] first to
    /// know whether the session being opened is high-risk).
    async fn record_login(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Records activity that is not a session: an API client obtaining an
    /// access token. Moves `last_login_at` forward (never back), as a
    /// login would for the inactivity rule, but leaves
    /// `next_session_high_risk` alone: a partner's software fetching
    /// tokens every few minutes must not clear the flag a reset set for
    /// the next human session. Refuses (`account_id: …`) an unknown
    /// account.
    async fn record_activity(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Disables every active account whose last login (or, never logged
    /// in, its decision or creation instant) is before `last_login_before`,
    /// and returns their ids in order; their live sessions end at `at`
    /// (reason `inactive`). Accounts with none of these instants (imported,
    /// history unknown) are left alone.
    async fn disable_inactive(
        &self,
        last_login_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<AccountId>, StorageError>;

    /// Every account not disabled (of one organisation, or all), with its
    /// history, ordered by organisation code then login: the periodic
    /// review of who still has access.
    async fn accounts_to_review(
        &self,
        organisation_id: Option<OrganisationId>,
    ) -> Result<Vec<ReviewEntry>, StorageError>;

    // ------------------------------------------------------------ factors

    /// The account's password (PHC string) and throttle state (JSON), if it
    /// has a password.
    async fn password(
        &self,
        account_id: AccountId,
    ) -> Result<Option<(String, String)>, StorageError>;

    /// Sets the account's password (an argon2id PHC string). A new row
    /// starts with an empty throttle state (`{}`); replacing a password
    /// keeps the throttle state (failures are about the account, not the
    /// password). Refuses an unknown account or a non-argon2id `phc`.
    async fn set_password(
        &self,
        account_id: AccountId,
        phc: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Replaces the throttle state (JSON) of the account's password logins
    /// with `next` only if it is still exactly `expected`, the text read
    /// before (one conditional statement). False when another attempt
    /// changed it first, or the account has no password: the caller reads
    /// again. This is how a login attempt is reserved before any hash is
    /// computed, and how a success clears it without erasing a lock it did
    /// not see.
    async fn swap_throttle(
        &self,
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError>;

    /// The account's TOTP factor, if enrolled.
    async fn totp(&self, account_id: AccountId) -> Result<Option<StoredTotp>, StorageError>;

    /// Enrols (or replaces) the account's TOTP factor. Refuses an unknown
    /// account.
    async fn set_totp(&self, t: StoredTotp) -> Result<(), StorageError>;

    /// Sealed TOTP secrets of accounts with an id above `after`, in id
    /// order, at most `limit` (for KEK rotation, which rewraps them).
    async fn totp_secrets(
        &self,
        after: AccountId,
        limit: u32,
    ) -> Result<Vec<(AccountId, Vec<u8>)>, StorageError>;

    /// Compare-and-set of a sealed TOTP secret: replaces it with `new` only
    /// if it is still `old` (a concurrent re-enrolment wins); the last
    /// accepted step is left alone, so no code becomes usable again.
    /// Refuses a malformed `new`.
    async fn replace_totp_secret(
        &self,
        account_id: AccountId,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError>;

    /// Compare-and-set of the last accepted step: records `step` and
    /// returns true only if it is later than the stored one (or none is
    /// stored); false otherwise, and if the account has no TOTP. Of two
    /// logins racing with the same code, exactly one gets true.
    async fn accept_totp_step(
        &self,
        account_id: AccountId,
        step: u64,
    ) -> Result<bool, StorageError>;

    /// The account's passkeys, oldest first.
    async fn passkeys(&self, account_id: AccountId) -> Result<Vec<StoredPasskeyRow>, StorageError>;

    /// The passkey with this credential id.
    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskeyRow>, StorageError>;

    /// Registers a passkey. Refuses a `credential_id` already registered
    /// (to any account), empty or longer than 1023 bytes, and an unknown
    /// account.
    async fn add_passkey(&self, p: StoredPasskeyRow) -> Result<(), StorageError>;

    /// Stores a passkey's updated data (signature counter, backup state)
    /// after a successful assertion; nothing if it was removed meanwhile.
    async fn update_passkey(
        &self,
        credential_id: &[u8],
        data: &str,
        used_at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    // ------------------------------------------------------------ login devices

    /// Trusts a browser for `account_id`'s password logins until
    /// `expires_at`: `digest` is the digest of the device token in its
    /// cookie, with a throttle state of its own, starting empty. The row
    /// `replaces` (the token the browser showed, if it was this account's)
    /// is deleted in the same transaction.
    async fn trust_login_device(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        replaces: Option<&[u8; 32]>,
    ) -> Result<(), StorageError>;

    /// A trusted browser's throttle state, if `digest` is a device of
    /// `account_id` still trusted at `now`; `None` otherwise (unknown,
    /// another account's, expired).
    async fn login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError>;

    /// Replaces a trusted browser's throttle state if it is still
    /// `expected` (compare-and-set, as [`AuthStore::swap_throttle`]).
    async fn swap_login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError>;

    // ------------------------------------------------------------ resets

    /// Records a request to reset factors of `account_id`. Refuses an
    /// unknown account or requester.
    async fn request_reset(
        &self,
        account_id: AccountId,
        kind: ResetKind,
        requested_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<CredentialReset, StorageError>;

    /// Decides a reset, only if undecided (`None` otherwise, or if there is
    /// no such reset). On approval, in the same transaction: deletes the
    /// factors of its kind, ends every live session of the account (reason
    /// `reset`) and marks its next session high-risk. Refuses
    /// (`officer_id: …`) like [`AuthStore::decide_account`].
    async fn decide_reset(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<CredentialReset>, StorageError>;

    /// Resets awaiting a decision, oldest first.
    async fn pending_resets(&self) -> Result<Vec<CredentialReset>, StorageError>;

    // ------------------------------------------------------------ activation

    /// Issues (or replaces: a new code voids the old one) an account's
    /// activation code. Refuses (`account_id: …`) an unknown or inactive
    /// account, one never approved under four eyes (no `approved_by` and
    /// no approved reset), one that already has both a password and a
    /// TOTP factor (nothing to activate); refuses (`issued_by: …`) an
    /// issuer who is not an active officer, or is the account; refuses an
    /// `expires_at` not after `issued_at`.
    async fn issue_activation(&self, a: NewActivation) -> Result<(), StorageError>;

    /// The account's activation code, used or not, expired or not.
    async fn activation(
        &self,
        account_id: AccountId,
    ) -> Result<Option<StoredActivation>, StorageError>;

    /// [`Self::swap_throttle`] for the throttle state of the account's
    /// activation code (false if it has none).
    async fn swap_activation_throttle(
        &self,
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError>;

    /// Uses the account's activation code and sets its new factors, in one
    /// transaction: only if the stored digest is `digest`, the code is
    /// unused and not expired at `now`, and the account is active (false
    /// otherwise, and nothing changes). Of two racing completions exactly
    /// one gets true. The password row starts with an empty throttle state.
    async fn complete_activation(
        &self,
        account_id: AccountId,
        digest: [u8; 32],
        factors: ActivationFactors,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    // ------------------------------------------------------------ federation

    /// Links a federated identity to an account. Refuses (`issuer: …`,
    /// `subject: …`) values that are empty, too long or not visible ASCII;
    /// (`account_id: …`) an unknown account; (`linked_by: …`) a linker who
    /// is not an active officer, or is the account itself; (`subject: …`)
    /// an identity already linked, to this account or another (unlink it
    /// first: a link is never silently moved).
    async fn link_federation(&self, link: FederationLink) -> Result<(), StorageError>;

    /// Removes the link of an identity and, in the same transaction, ends
    /// the live sessions its account opened through a federated login
    /// (method `oidc`, reason `federation_unlink`), so an identity
    /// withdrawn because it was compromised stops at once. Returns the
    /// account it named, `None` if there was no such link. Refuses
    /// (`unlinked_by: …`) an account that is not an active officer.
    async fn unlink_federation(
        &self,
        issuer: &str,
        subject: &str,
        unlinked_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountId>, StorageError>;

    /// The link of an identity, if an officer made one. One indexed
    /// lookup: it runs on every federated login.
    async fn federation_link(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<FederationLink>, StorageError>;

    // ------------------------------------------------------------ ceremonies

    /// Stores a single-use ceremony state (WebAuthn challenge, OIDC pending
    /// login, login challenge) under `key` (a digest of what the browser
    /// holds). `kind` is a lowercase code (`[a-z][a-z_]*`, at most 32).
    /// Refuses a key already stored.
    async fn put_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Takes a ceremony state: deletes it and returns its payload, in one
    /// statement, so it is used once. `None` if absent, of another kind
    /// (then left in place), or expired at `now` (then deleted).
    async fn take_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError>;

    /// One bounded round of the purge: deletes at most `limit` rows of each
    /// table, one short statement per table (so a large backlog never holds
    /// the writer for long): ceremonies, replay keys and access tokens
    /// expired at `now`, and sessions whose absolute expiry is at or before
    /// `sessions_before` (kept that long after they could last serve, for
    /// investigations). The caller loops while a table comes back full
    /// ([`Purged::full`]). Refuses a `limit` of 0.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        sessions_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, StorageError>;

    // ------------------------------------------------------------ sessions

    /// Stores a new session. Refuses an unknown account, an account that is
    /// not active (checked in the same statement, waiting for a suspension
    /// under way: a login racing a suspension never leaves a session that
    /// the suspension did not end), a duplicate id, an unknown method, a
    /// malformed `jkt`, a non-positive idle timeout, an absolute expiry not
    /// after creation.
    async fn insert_session(&self, s: StoredSession) -> Result<(), StorageError>;

    /// The session and its account, ended or not (the caller decides with
    /// [`StoredSession::is_live_at`] and the account's state). One indexed
    /// lookup: it runs on every browser request.
    async fn session(
        &self,
        id_digest: [u8; 32],
    ) -> Result<Option<(StoredSession, AccountRecord)>, StorageError>;

    /// Moves a live session's `last_seen_at` forward to `at` (never back),
    /// only while its account is active, in one statement: a suspended or
    /// disabled account's requests never extend its sessions.
    async fn touch_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Records a step-up (fresh passkey assertion) in a live session.
    async fn mark_step_up(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    /// Ends a session; false if there is none or it had already ended.
    /// `reason` is a lowercase code like a ceremony kind.
    async fn end_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<bool, StorageError>;

    /// Ends every live session of the account; returns how many.
    async fn end_sessions_of_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64, StorageError>;

    /// Suspends an active account and ends everything it could act with,
    /// in one transaction: state `active` → `suspended` (compare-and-set),
    /// its live sessions ended (`reason`), its API credentials revoked, its
    /// API clients revoked and their access tokens deleted. `None`, and
    /// nothing changes, if there is no such account or it is not active.
    /// Reactivation restores none of it: the owner logs in again and gets
    /// new credentials. `reason` is a lowercase code like a ceremony kind.
    async fn suspend_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<Suspension>, StorageError>;

    // ------------------------------------------------------------ API clients

    /// Registers an API client. Refuses a client id already used or
    /// malformed, and an unknown account.
    async fn insert_api_client(&self, c: ApiClientRow) -> Result<(), StorageError>;

    /// The client and its account, revoked or not (the caller refuses a
    /// revoked one).
    async fn api_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError>;

    /// Revokes a client and deletes its access tokens; false if there is
    /// no such client or it was already revoked.
    async fn revoke_api_client(
        &self,
        client_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    /// Revokes every live client of an account and deletes their access
    /// tokens (an approved reset of every factor); returns how many
    /// clients were revoked.
    async fn revoke_api_clients_of_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError>;

    /// Stores an issued token. Refuses (`client_id: …`) a client that does
    /// not exist, is revoked or acts for another account than
    /// `account_id`, and a duplicate digest.
    async fn insert_access_token(&self, t: AccessTokenRow) -> Result<(), StorageError>;

    /// The token and its account, expired or not (the caller checks
    /// `expires_at`), but never one of a revoked client. One indexed
    /// lookup: it runs on every API request.
    async fn access_token(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError>;

    // ------------------------------------------------------------ replay keys

    /// Remembers a replay key (DPoP proof or client assertion `jti`) until
    /// `expires_at`, for every server instance on the database: true if it
    /// was not live at `now` (inserted, or an expired row taken over),
    /// false if it is live (a replay). One statement, so of concurrent
    /// inserts of one key exactly one gets true. Refuses an `expires_at`
    /// not after `now` (such a key would protect nothing).
    async fn insert_replay_if_new(
        &self,
        key: [u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;
}

/// A change of an account's lifecycle, as [`AuthStore::rehearse`] checks
/// it before it is ledgered and made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// [`AuthStore::decide_account`].
    Decide {
        /// The requested account.
        account_id: AccountId,
        /// The deciding officer.
        officer_id: AccountId,
        /// Approval (else rejection).
        approve: bool,
    },
    /// [`AuthStore::decide_reset`].
    DecideReset {
        /// The reset.
        reset_id: i64,
        /// The deciding officer.
        officer_id: AccountId,
        /// Approval (else rejection).
        approve: bool,
    },
    /// A suspension or a reactivation ([`AuthStore::suspend_account`],
    /// [`crate::RegistryStore::set_account_state`]).
    State {
        /// The account.
        account_id: AccountId,
        /// `suspended` or `active`.
        state: AccountState,
    },
}

/// What a rehearsed change would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rehearsal {
    /// The account it is about.
    pub account_id: AccountId,
    /// For a reset's decision, the reset's kind.
    pub reset_kind: Option<ResetKind>,
}

// ---------------------------------------------------------------- shared checks

/// A refusal naming the field and the rule, as elsewhere in the store.
pub(crate) fn refuse(field: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::Refused {
        field,
        reason: reason.into(),
    }
}

/// What `field` names does not exist.
pub(crate) fn not_found(field: &'static str, what: &'static str) -> StorageError {
    StorageError::NotFound { field, what }
}

/// Ceremony kinds and session end reasons: lowercase codes the database
/// checks too (`[a-z][a-z_]{0,31}`).
pub(crate) fn check_code(field: &'static str, value: &str) -> Result<(), StorageError> {
    let mut bytes = value.bytes();
    let ok = value.len() <= 32
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            "must be 1 to 32 lowercase letters or underscores, starting with a letter",
        ))
    }
}

/// A session's method.
pub(crate) fn check_method(method: &str) -> Result<(), StorageError> {
    if SESSION_METHODS.contains(&method) {
        Ok(())
    } else {
        Err(refuse("method", "must be passkey, password_totp or oidc"))
    }
}

/// A JWK SHA-256 thumbprint: 43 characters of unpadded base64url.
pub(crate) fn check_jkt(jkt: &str) -> Result<(), StorageError> {
    if jkt.len() == 43
        && jkt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(refuse(
            "jkt",
            "must be a JWK thumbprint (43 characters of base64url)",
        ))
    }
}

/// An OAuth client id: 1 to 128 visible ASCII characters.
pub(crate) fn check_client_id(client_id: &str) -> Result<(), StorageError> {
    if (1..=128).contains(&client_id.len()) && client_id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(refuse(
            "client_id",
            "must be 1 to 128 visible ASCII characters",
        ))
    }
}

/// A federated identity's issuer (1 to 512) or subject (1 to 255): visible
/// ASCII only, as issuer URLs and OpenID Connect subjects are. The value
/// is never echoed: a subject names a person at the provider.
pub(crate) fn check_federated(issuer: &str, subject: &str) -> Result<(), StorageError> {
    let visible = |v: &str, max: usize| {
        (1..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
    };
    if !visible(issuer, 512) {
        return Err(refuse(
            "issuer",
            "must be 1 to 512 visible ASCII characters",
        ));
    }
    if !visible(subject, 255) {
        return Err(refuse(
            "subject",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

/// Who may link or unlink a federated identity: an active officer, never
/// the account linked (`account_id`, when linking).
pub(crate) fn check_federation_officer(
    field: &'static str,
    account_id: Option<AccountId>,
    officer: Option<&Decider>,
) -> Result<(), StorageError> {
    match officer {
        None => Err(not_found(field, "account")),
        Some(d) if d.role != Role::Officer => Err(refuse(
            field,
            "only an officer links or unlinks federated identities",
        )),
        Some(d) if d.state != AccountState::Active => {
            Err(refuse(field, "the officer's account is not active"))
        }
        Some(d) if Some(d.account_id) == account_id => Err(refuse(
            field,
            "an account cannot link an identity to itself (four eyes)",
        )),
        Some(_) => Ok(()),
    }
}

/// Ends the sessions federated logins opened, when their link goes.
pub(crate) const FEDERATION_UNLINK_REASON: &str = "federation_unlink";

/// A federation link.
pub(crate) const FEDERATION_SELECT: &str =
    "SELECT issuer, subject, account_id, linked_by, linked_at FROM federation_link";

/// A WebAuthn credential id: 1 to 1023 bytes (the specification's bound).
pub(crate) fn check_credential_id(id: &[u8]) -> Result<(), StorageError> {
    if (1..=1023).contains(&id.len()) {
        Ok(())
    } else {
        Err(refuse("credential_id", "must be 1 to 1023 bytes"))
    }
}

/// A password hash: an argon2id PHC string, nothing weaker.
pub(crate) fn check_phc(phc: &str) -> Result<(), StorageError> {
    if phc.starts_with("$argon2id$") && phc.len() <= 512 {
        Ok(())
    } else {
        Err(refuse(
            "phc",
            "must be an argon2id PHC string of at most 512 bytes",
        ))
    }
}

/// A sealed TOTP secret: 1 to 1024 opaque bytes.
pub(crate) fn check_sealed_secret(sealed: &[u8]) -> Result<(), StorageError> {
    if (1..=1024).contains(&sealed.len()) {
        Ok(())
    } else {
        Err(refuse("sealed_secret", "must be 1 to 1024 bytes"))
    }
}

/// A TOTP step as both databases keep it (a signed 64-bit integer).
pub(crate) fn step_to_i64(step: u64, field: &'static str) -> Result<i64, StorageError> {
    i64::try_from(step).map_err(|_| refuse(field, "out of range"))
}

/// A stored TOTP step back.
pub(crate) fn step_from_i64(step: Option<i64>) -> Result<Option<u64>, StorageError> {
    step.map(|s| {
        u64::try_from(s).map_err(|_| StorageError::Corrupt("stored last_step is negative".into()))
    })
    .transpose()
}

/// Checks a new session's fields and returns its instants, truncated:
/// (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at).
pub(crate) type SessionInstants = (
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Checks a new session (see [`AuthStore::insert_session`]).
pub(crate) fn check_session(s: &StoredSession) -> Result<SessionInstants, StorageError> {
    check_jkt(&s.jkt)?;
    check_method(&s.method)?;
    if s.idle_timeout_secs <= 0 {
        return Err(refuse("idle_timeout_secs", "must be positive"));
    }
    let created_at = crate::instant(s.created_at, "created_at")?;
    let last_seen_at = crate::instant(s.last_seen_at, "last_seen_at")?;
    let absolute_expiry = crate::instant(s.absolute_expiry, "absolute_expiry")?;
    if absolute_expiry <= created_at {
        return Err(refuse("absolute_expiry", "must be after created_at"));
    }
    if last_seen_at < created_at {
        return Err(refuse("last_seen_at", "must not be before created_at"));
    }
    let step_up_at = s
        .step_up_at
        .map(|t| crate::instant(t, "step_up_at"))
        .transpose()?;
    let ended_at = s
        .ended_at
        .map(|t| crate::instant(t, "ended_at"))
        .transpose()?;
    match &s.end_reason {
        None if ended_at.is_some() => return Err(refuse("end_reason", "needed with ended_at")),
        Some(_) if ended_at.is_none() => {
            return Err(refuse("end_reason", "only with ended_at"));
        }
        Some(r) => check_code("end_reason", r)?,
        None => {}
    }
    Ok((
        created_at,
        last_seen_at,
        absolute_expiry,
        step_up_at,
        ended_at,
    ))
}

/// Checks a new access token and returns its instants, truncated.
pub(crate) fn check_access_token(
    t: &AccessTokenRow,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StorageError> {
    check_client_id(&t.client_id)?;
    check_jkt(&t.jkt)?;
    let issued_at = crate::instant(t.issued_at, "issued_at")?;
    let expires_at = crate::instant(t.expires_at, "expires_at")?;
    if expires_at <= issued_at {
        return Err(refuse("expires_at", "must be after issued_at"));
    }
    Ok((issued_at, expires_at))
}

/// Checks a replay key's period and returns (expires_at, now), truncated.
pub(crate) fn check_replay_period(
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StorageError> {
    let expires_at = crate::instant(expires_at, "expires_at")?;
    let now = crate::instant(now, "now")?;
    if expires_at <= now {
        return Err(refuse("expires_at", "must be after now"));
    }
    Ok((expires_at, now))
}

/// What a decision checks about the account decided on: where it
/// belongs, and its place in the state machine.
pub(crate) struct Subject {
    pub account_id: AccountId,
    pub organisation_id: OrganisationId,
    pub kind: OrganisationKind,
    /// Its stored state.
    pub state: AccountState,
    /// Who asked for it, if recorded.
    pub requested_by: Option<AccountId>,
    /// Who approved it (a four-eyes decision, or an import's checked
    /// approver).
    pub approved_by: Option<AccountId>,
    /// Whether a decision on its request is recorded.
    pub decided: bool,
}

impl Subject {
    /// Its state as the machine sees it (a decided, unapproved `disabled`
    /// account is a rejected request).
    pub fn lifecycle(&self) -> LifecycleState {
        LifecycleState::of(self.state, self.decided, self.approved_by.is_some())
    }

    /// Whether it carries a recorded four-eyes approval: an approver who
    /// is neither the account nor its requester.
    pub fn approved_under_four_eyes(&self) -> bool {
        self.approved_by
            .is_some_and(|a| a != self.account_id && Some(a) != self.requested_by)
    }
}

/// What a decision checks about the decider (or the requester).
pub(crate) struct Decider {
    pub account_id: AccountId,
    pub organisation_id: OrganisationId,
    pub role: Role,
    pub state: AccountState,
}

/// The four-eyes rule of decisions on accounts and resets: an active
/// officer, neither the account nor the requester, never of the
/// requester's organisation (France Travail agencies included), and from
/// outside a partner's organisation (the rule of imports,
/// [`crate::check_account_links`]). `requester` is the one who asked for
/// the account or the reset, `None` when unrecorded.
pub(crate) fn check_decider(
    subject: &Subject,
    requester: Option<&Decider>,
    decider: Option<&Decider>,
) -> Result<(), StorageError> {
    let field = "officer_id";
    let Some(d) = decider else {
        return Err(not_found(field, "account"));
    };
    if d.role != Role::Officer {
        return Err(refuse(field, "only an officer may decide"));
    }
    if d.state != AccountState::Active {
        return Err(refuse(field, "the officer's account is not active"));
    }
    if d.account_id == subject.account_id {
        return Err(refuse(
            field,
            "an account cannot decide on itself (four eyes)",
        ));
    }
    check_outside(field, subject, requester, d)
}

/// The part of the four-eyes rule about where the officer stands: not the
/// requester, not of the requester's organisation, and outside a
/// partner's organisation.
fn check_outside(
    field: &'static str,
    subject: &Subject,
    requester: Option<&Decider>,
    d: &Decider,
) -> Result<(), StorageError> {
    if requester.is_some_and(|r| r.account_id == d.account_id) {
        return Err(refuse(
            field,
            "the requester cannot decide on its own request (four eyes)",
        ));
    }
    if requester.is_some_and(|r| r.organisation_id == d.organisation_id) {
        return Err(refuse(
            field,
            "the decider cannot belong to the requester's organisation (four eyes)",
        ));
    }
    if d.organisation_id == subject.organisation_id
        && subject.kind != OrganisationKind::FranceTravail
    {
        return Err(refuse(
            field,
            "a partner's account is decided from outside its organisation (four eyes)",
        ));
    }
    Ok(())
}

/// Whether the state machine lets `action` happen to the subject: its
/// state, and the recorded approval the action needs
/// ([`AccountAction::needs_approval`]). Refuses naming `state`.
pub(crate) fn check_transition(
    subject: &Subject,
    action: AccountAction,
) -> Result<(), StorageError> {
    let from = subject.lifecycle();
    if let Err(e) = rempart_domain::transition(from, action) {
        return Err(refuse(
            "state",
            format!(
                "an account that is {} cannot be subject to {}",
                e.from, e.action
            ),
        ));
    }
    let approved = subject.approved_under_four_eyes();
    let needed = match action {
        AccountAction::IssueActivation => !approved,
        _ if action.needs_approval() => subject.requested_by.is_some() && !approved,
        _ => false,
    };
    if needed {
        return Err(refuse(
            "state",
            format!("the account was never approved under four eyes: no {action} without it"),
        ));
    }
    Ok(())
}

/// The SQL condition of `action` on an account row whose columns are
/// reached through `row` (a table name or alias): the same rule as
/// [`check_transition`], for the one conditional statement that makes the
/// change, so a change that raced the check does not slip through.
pub(crate) fn transition_sql(row: &str, action: AccountAction) -> String {
    let states: Vec<String> = action
        .from_states()
        .iter()
        .map(|s| format!("'{}'", s.stored().as_str()))
        .collect();
    // Final states share `disabled`; the machine never starts from them,
    // which the domain's tests hold.
    let mut sql = format!("{row}.state IN ({})", states.join(", "));
    let approved = approved_sql(row);
    if action == AccountAction::IssueActivation {
        sql.push_str(&format!(" AND {approved}"));
    } else if action.needs_approval() {
        sql.push_str(&format!(" AND ({row}.requested_by IS NULL OR {approved})"));
    }
    sql
}

/// The action that moves an account to `state` by suspension or
/// reactivation, the only changes [`crate::RegistryStore::set_account_state`]
/// makes; refuses (`state: …`) any other target.
pub(crate) fn state_change(state: AccountState) -> Result<AccountAction, StorageError> {
    match state {
        AccountState::Suspended => Ok(AccountAction::Suspend),
        AccountState::Active => Ok(AccountAction::Reactivate),
        AccountState::Requested => Err(refuse(
            "state",
            "an account is requested once, when it is asked for",
        )),
        AccountState::Disabled => Err(refuse(
            "state",
            "an account is disabled by a rejection or the inactivity job only",
        )),
    }
}

/// Why a state change's conditional statement changed nothing on an
/// account that exists: the machine's refusal on the facts read after it
/// (or, if those now allow it, a concurrent change).
pub(crate) fn refused_change(facts: Subject, action: AccountAction) -> StorageError {
    match check_transition(&facts, action) {
        Err(e) => e,
        Ok(()) => refuse("state", "the account changed meanwhile; try again"),
    }
}

/// The SQL condition of a recorded four-eyes approval
/// ([`Subject::approved_under_four_eyes`]) of the account row `row`.
pub(crate) fn approved_sql(row: &str) -> String {
    format!(
        "({row}.approved_by IS NOT NULL AND {row}.approved_by <> {row}.id
          AND ({row}.requested_by IS NULL OR {row}.approved_by <> {row}.requested_by))"
    )
}

/// The SQL condition of the four-eyes rule ([`check_decider`]) for the
/// one conditional statement of a decision: `subject`, `requester` and
/// `decider` are SQL expressions (columns or typed parameters) naming the
/// account decided on, the one who asked (may be NULL) and the officer.
pub(crate) fn four_eyes_sql(subject: &str, requester: &str, decider: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM account fe_d
            JOIN account fe_s ON fe_s.id = {subject}
            JOIN organisation fe_o ON fe_o.id = fe_s.organisation_id
          WHERE fe_d.id = {decider} AND fe_d.role = 'officer' AND fe_d.state = 'active'
            AND fe_d.id <> fe_s.id
            AND ({requester} IS NULL OR (fe_d.id <> {requester}
                 AND fe_d.organisation_id <>
                     (SELECT fe_r.organisation_id FROM account fe_r WHERE fe_r.id = {requester})))
            AND (fe_o.kind = 'france_travail' OR fe_d.organisation_id <> fe_s.organisation_id))"
    )
}

/// A stored 32-byte digest.
pub(crate) fn digest32(v: Vec<u8>, what: &str) -> Result<[u8; 32], StorageError> {
    v.try_into()
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not 32 bytes")))
}

/// Why an account cannot receive an activation code, if it cannot (the
/// rule of [`AuthStore::issue_activation`], on facts both backends read).
pub(crate) fn check_activation_target(
    state: Option<AccountState>,
    four_eyes: bool,
    has_password: bool,
    has_totp: bool,
) -> Result<(), StorageError> {
    let field = "account_id";
    match state {
        None => Err(not_found(field, "account")),
        Some(s) if s != AccountState::Active => Err(refuse(
            field,
            "the account is not active (an account is approved before it is activated)",
        )),
        Some(_) if !four_eyes => Err(refuse(
            field,
            "the account was never approved under four eyes: no activation code without it",
        )),
        Some(_) if has_password && has_totp => Err(refuse(
            field,
            "the account already has its password and TOTP: nothing to activate",
        )),
        Some(_) => Ok(()),
    }
}

/// The issuer of an activation code: an active officer, not the account,
/// and standing where a decider on its request would (the code opens the
/// account: an insider re-issuing it would take over an approved account
/// before its holder activates it).
pub(crate) fn check_activation_issuer(
    subject: &Subject,
    requester: Option<&Decider>,
    issuer: Option<&Decider>,
) -> Result<(), StorageError> {
    let field = "issued_by";
    match issuer {
        None => Err(not_found(field, "account")),
        Some(d) if d.role != Role::Officer => Err(refuse(field, "only an officer issues codes")),
        Some(d) if d.state != AccountState::Active => {
            Err(refuse(field, "the officer's account is not active"))
        }
        Some(d) if d.account_id == subject.account_id => Err(refuse(
            field,
            "an account cannot issue its own activation code (four eyes)",
        )),
        Some(d) => check_outside(field, subject, requester, d),
    }
}

// ---------------------------------------------------------------- shared SQL

/// The account columns of [`crate::ACCOUNT_SELECT`], for joins.
macro_rules! account_columns {
    () => {
        "a.id, a.login, a.role, a.state, o.id, o.code, o.kind, a.created_at, o.departement"
    };
}

/// An account, its organisation and its history (same SQL on both
/// backends; account columns from 0, lifecycle columns from 9).
pub(crate) const REVIEW_SELECT: &str = concat!(
    "SELECT ",
    account_columns!(),
    ", a.created_at, a.requested_by, a.decided_by, a.decided_at, a.last_login_at,
        a.next_session_high_risk
     FROM account a JOIN organisation o ON o.id = a.organisation_id"
);

/// A session with its account (account columns from 12).
pub(crate) const SESSION_SELECT: &str = concat!(
    "SELECT s.id_digest, s.account_id, s.jkt, s.method, s.created_at, s.last_seen_at,
        s.absolute_expiry, s.idle_timeout_secs, s.high_risk, s.step_up_at, s.ended_at,
        s.end_reason, ",
    account_columns!(),
    " FROM web_session s JOIN account a ON a.id = s.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An API client with its account (account columns from 5).
pub(crate) const API_CLIENT_SELECT: &str = concat!(
    "SELECT c.client_id, c.account_id, c.public_keys, c.created_at, c.revoked_at, ",
    account_columns!(),
    " FROM api_client c JOIN account a ON a.id = c.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An access token with its account (account columns from 7). The join
/// on a live client is what hides a revoked client's tokens, even one
/// inserted while the revocation committed.
pub(crate) const ACCESS_TOKEN_SELECT: &str = concat!(
    "SELECT t.digest, t.client_id, t.account_id, t.jkt, t.scope, t.issued_at, t.expires_at, ",
    account_columns!(),
    " FROM access_token t
     JOIN api_client c ON c.client_id = t.client_id AND c.revoked_at IS NULL
     JOIN account a ON a.id = t.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An activation code.
pub(crate) const ACTIVATION_SELECT: &str = "SELECT account_id, digest, issued_by, issued_at,
        expires_at, used_at, throttle FROM activation_code";

/// A passkey.
pub(crate) const PASSKEY_SELECT: &str =
    "SELECT credential_id, account_id, data, created_at, last_used_at FROM passkey";

/// A credential reset.
pub(crate) const RESET_SELECT: &str = "SELECT id, account_id, kind, requested_by, requested_at,
        decided_by, decided_at, approved FROM credential_reset";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(secs, 0).unwrap()
    }

    fn session() -> StoredSession {
        StoredSession {
            id_digest: [1; 32],
            account_id: AccountId::new(1),
            jkt: "A".repeat(43),
            method: "passkey".into(),
            created_at: at(1_000),
            last_seen_at: at(1_000),
            absolute_expiry: at(1_000 + 36_000),
            idle_timeout_secs: 1_800,
            high_risk: false,
            step_up_at: None,
            ended_at: None,
            end_reason: None,
        }
    }

    #[test]
    fn sessions_live_until_idle_absolute_or_ended() {
        let mut s = session();
        assert!(s.is_live_at(at(1_000)));
        assert!(s.is_live_at(at(2_799)));
        assert!(!s.is_live_at(at(2_800)), "idle for the whole timeout");
        s.last_seen_at = at(36_000);
        assert!(s.is_live_at(at(36_999)));
        assert!(!s.is_live_at(at(37_000)), "absolute expiry");
        s.ended_at = Some(at(36_500));
        assert!(!s.is_live_at(at(36_600)), "ended");
        s.ended_at = None;
        s.idle_timeout_secs = i64::MAX;
        assert!(
            !s.is_live_at(at(36_001)),
            "an unrepresentable timeout fails closed"
        );
        s.idle_timeout_secs = -5;
        assert!(
            !s.is_live_at(at(36_000)),
            "a negative timeout is never live"
        );
    }

    #[test]
    fn session_checks_name_their_field() {
        let field = |s: StoredSession| match check_session(&s) {
            Err(StorageError::Refused { field, .. } | StorageError::NotFound { field, .. }) => {
                field.to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(check_session(&session()).is_ok());
        assert_eq!(
            field(StoredSession {
                jkt: "x".into(),
                ..session()
            }),
            "jkt"
        );
        assert_eq!(
            field(StoredSession {
                jkt: format!("{}=", "A".repeat(42)),
                ..session()
            }),
            "jkt"
        );
        assert_eq!(
            field(StoredSession {
                method: "password".into(),
                ..session()
            }),
            "method"
        );
        assert_eq!(
            field(StoredSession {
                idle_timeout_secs: 0,
                ..session()
            }),
            "idle_timeout_secs"
        );
        assert_eq!(
            field(StoredSession {
                absolute_expiry: at(1_000),
                ..session()
            }),
            "absolute_expiry"
        );
        assert_eq!(
            field(StoredSession {
                last_seen_at: at(999),
                ..session()
            }),
            "last_seen_at"
        );
        assert_eq!(
            field(StoredSession {
                ended_at: Some(at(1_001)),
                ..session()
            }),
            "end_reason"
        );
        assert_eq!(
            field(StoredSession {
                end_reason: Some("logout".into()),
                ..session()
            }),
            "end_reason"
        );
        assert_eq!(
            field(StoredSession {
                ended_at: Some(at(1_001)),
                end_reason: Some("Logout".into()),
                ..session()
            }),
            "end_reason"
        );
    }

    #[test]
    fn codes_are_lowercase_words() {
        for ok in ["reset", "logout", "webauthn_login", "a", &"a".repeat(32)] {
            assert!(check_code("kind", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Reset", "_x", "1x", "x-y", "x y", "é", &"a".repeat(33)] {
            assert!(
                matches!(
                    check_code("kind", bad),
                    Err(StorageError::Refused { field: "kind", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_field_checks() {
        assert!(check_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_ok());
        assert!(check_phc("$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_err());
        assert!(check_phc("$2b$12$abcdefghijklmnopqrstuu").is_err());
        assert!(check_client_id("partner-app.1").is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("a b").is_err());
        assert!(check_client_id(&"c".repeat(129)).is_err());
        assert!(check_credential_id(&[0; 1023]).is_ok());
        assert!(check_credential_id(&[]).is_err());
        assert!(check_credential_id(&[0; 1024]).is_err());
        assert!(check_sealed_secret(&[]).is_err());
        assert!(step_to_i64(u64::MAX, "step").is_err());
        assert_eq!(step_to_i64(59_000_000, "step").unwrap(), 59_000_000);
        assert!(step_from_i64(Some(-1)).is_err());
        assert!(
            check_replay_period(at(10), at(10)).is_err(),
            "a key expiring now protects nothing"
        );
        for k in ResetKind::ALL {
            assert_eq!(ResetKind::parse(k.as_str()).unwrap(), *k);
        }
        assert!(ResetKind::parse("everything").is_err());
        let debug = format!(
            "{:?}",
            StoredTotp {
                account_id: AccountId::new(1),
                sealed_secret: vec![0x5a; 40],
                last_step: None,
                enrolled_at: at(0),
            }
        );
        assert!(
            debug.contains("<40 bytes>") && !debug.contains("90"),
            "{debug}"
        );
    }

    #[test]
    fn the_four_eyes_rule() {
        let partner = Subject {
            account_id: AccountId::new(10),
            organisation_id: OrganisationId::new(2),
            kind: OrganisationKind::MissionLocale,
            state: AccountState::Requested,
            requested_by: Some(AccountId::new(11)),
            approved_by: None,
            decided: false,
        };
        let officer = |id, org, role, state| Decider {
            account_id: AccountId::new(id),
            organisation_id: OrganisationId::new(org),
            role,
            state,
        };
        let manager = officer(11, 2, Role::Manager, AccountState::Active);
        let reason = |d: Option<&Decider>, requester: Option<&Decider>| match check_decider(
            &partner, requester, d,
        ) {
            Ok(()) => "ok".to_string(),
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => e
                .refused()
                .map(|(f, r)| format!("{f}: {r}"))
                .unwrap_or_default(),
            Err(e) => panic!("{e}"),
        };
        let ft = officer(1, 1, Role::Officer, AccountState::Active);
        assert_eq!(reason(Some(&ft), Some(&manager)), "ok");
        assert!(reason(None, None).contains("no such account"));
        assert!(
            reason(
                Some(&officer(1, 1, Role::Manager, AccountState::Active)),
                None
            )
            .contains("only an officer")
        );
        assert!(
            reason(
                Some(&officer(1, 1, Role::Officer, AccountState::Suspended)),
                None
            )
            .contains("not active")
        );
        assert!(
            reason(
                Some(&officer(10, 1, Role::Officer, AccountState::Active)),
                None
            )
            .contains("itself")
        );
        assert!(reason(Some(&ft), Some(&ft)).contains("requester"));
        assert!(
            reason(
                Some(&officer(1, 2, Role::Officer, AccountState::Active)),
                None
            )
            .contains("outside")
        );
        // A France Travail account: an officer of the agency may decide on
        // a colleague, unless the agency asked for it (four eyes means two
        // organisations, France Travail agencies included).
        let colleague = Subject {
            kind: OrganisationKind::FranceTravail,
            organisation_id: OrganisationId::new(1),
            requested_by: None,
            ..partner
        };
        assert!(check_decider(&colleague, None, Some(&ft)).is_ok());
        let agency_manager = officer(12, 1, Role::Manager, AccountState::Active);
        assert!(matches!(
            check_decider(&colleague, Some(&agency_manager), Some(&ft)),
            Err(StorageError::Refused { field: "officer_id", reason }) if reason.contains("requester's organisation")
        ));
        assert!(matches!(
            check_activation_issuer(&colleague, Some(&agency_manager), Some(&ft)),
            Err(StorageError::Refused {
                field: "issued_by",
                ..
            })
        ));
        let outside = officer(3, 5, Role::Officer, AccountState::Active);
        assert!(check_decider(&colleague, Some(&agency_manager), Some(&outside)).is_ok());
        assert!(check_activation_issuer(&colleague, Some(&agency_manager), Some(&outside)).is_ok());
        assert!(reason(Some(&ft), Some(&ft)).starts_with("officer_id: "));
    }

    #[test]
    fn transitions_follow_the_machine_and_the_sql_names_its_states() {
        let subject =
            |state, requested_by: Option<i64>, approved_by: Option<i64>, decided| Subject {
                account_id: AccountId::new(10),
                organisation_id: OrganisationId::new(2),
                kind: OrganisationKind::CapEmploi,
                state,
                requested_by: requested_by.map(AccountId::new),
                approved_by: approved_by.map(AccountId::new),
                decided,
            };
        use AccountAction::*;
        use AccountState::*;
        let approved = subject(Active, Some(11), Some(1), true);
        for a in [Suspend, Disable, ApproveReset, IssueActivation] {
            assert!(check_transition(&approved, a).is_ok(), "{a}");
        }
        // Active without an approval (walked around before this rule):
        // no code, no reset, and once suspended no way back.
        let walked = subject(Active, Some(11), None, false);
        for a in [ApproveReset, IssueActivation] {
            assert!(
                matches!(
                    check_transition(&walked, a),
                    Err(StorageError::Refused { field: "state", .. })
                ),
                "{a}"
            );
        }
        let walked = subject(Suspended, Some(11), None, false);
        assert!(check_transition(&walked, Reactivate).is_err());
        // Imported, history unknown: may be reactivated, gets no code.
        let imported = subject(Suspended, None, None, false);
        assert!(check_transition(&imported, Reactivate).is_ok());
        let imported = subject(Active, None, None, false);
        assert!(check_transition(&imported, IssueActivation).is_err());
        // Rejected is final.
        let rejected = subject(Disabled, Some(11), None, true);
        assert_eq!(rejected.lifecycle(), LifecycleState::Rejected);
        for &a in AccountAction::ALL {
            assert!(check_transition(&rejected, a).is_err(), "{a}");
        }
        assert_eq!(
            transition_sql("a", Suspend),
            "a.state IN ('active')",
            "states from the domain's table"
        );
        assert!(
            transition_sql("a", ApproveReset).starts_with("a.state IN ('active', 'suspended') AND")
        );
        assert!(transition_sql("a", IssueActivation).contains("a.approved_by IS NOT NULL"));
        assert!(state_change(Requested).is_err() && state_change(Disabled).is_err());
    }
}
