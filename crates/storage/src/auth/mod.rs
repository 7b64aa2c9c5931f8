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
use rempart_domain::{AccountId, AccountState, OrganisationId, Reference, Role};

use crate::{AccountRecord, StorageError};

pub(crate) mod checks;
pub(crate) mod sql;

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
    /// Source addresses' login throttle states that say nothing any more
    /// (`AuthStore::prune_login_throttles`; not batched).
    pub login_throttles: u64,
}

impl Purged {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.ceremonies
            + self.replay_keys
            + self.access_tokens
            + self.sessions
            + self.login_devices
            + self.login_throttles
    }

    /// Whether some table gave `limit` rows: there may be more to delete.
    pub fn full(&self, limit: u32) -> bool {
        let limit = u64::from(limit);
        [
            self.ceremonies,
            self.replay_keys,
            self.access_tokens,
            self.sessions,
            self.login_devices,
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
        self.login_devices += other.login_devices;
        self.login_throttles += other.login_throttles;
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

/// Which login throttle states a row of the shared table holds: those that
/// belong to no account (an account's own states are stored with its
/// factors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleScope {
    /// A source address (IPv4, or IPv6 /64), or the overflow counter.
    Address,
    /// A login that names no account.
    UnknownLogin,
}

impl ThrottleScope {
    /// The scope as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleScope::Address => "address",
            ThrottleScope::UnknownLogin => "unknown_login",
        }
    }
}

/// A login throttle state to store, with what the table needs to bound
/// itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleEntry {
    /// The state (JSON), compared byte for byte by compare-and-set.
    pub entry: String,
    /// When the state may be deleted (Unix seconds; `i64::MAX` never).
    pub forget_at: i64,
    /// When it last changed (Unix seconds): a full unknown-login table
    /// evicts the oldest.
    pub touched: i64,
}

/// What [`AuthStore::insert_login_throttle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleInsert {
    /// The state is stored.
    Inserted,
    /// A state was there already: nothing written.
    Exists,
    /// The scope holds its maximum: nothing written.
    Full,
}

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

    /// The login throttle state (JSON) stored under `key` in `scope`: a
    /// source address's or a login's that names no account.
    async fn login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
    ) -> Result<Option<String>, StorageError>;

    /// Stores a first state under `key`, unless one is there already
    /// ([`ThrottleInsert::Exists`]: read it and compare-and-set) or `scope`
    /// already holds `max_rows` states ([`ThrottleInsert::Full`]), in one
    /// statement. The bound reads a count the table's triggers keep (one
    /// row, not a count of rows). Concurrent inserts of different keys may
    /// pass it by as many as run at once.
    async fn insert_login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
        entry: &ThrottleEntry,
        max_rows: Option<u64>,
    ) -> Result<ThrottleInsert, StorageError>;

    /// Replaces the state under `key` with `next` (or deletes it, `None`)
    /// only if it is still exactly `expected` (one conditional statement,
    /// as [`AuthStore::swap_throttle`]). False when another attempt changed
    /// it first, or it is gone.
    async fn swap_login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
        expected: &str,
        next: Option<&ThrottleEntry>,
    ) -> Result<bool, StorageError>;

    /// Deletes the states of `scope` whose `forget_at` is at or before
    /// `now_unix` (they say nothing any more); returns how many.
    async fn prune_login_throttles(
        &self,
        scope: ThrottleScope,
        now_unix: i64,
    ) -> Result<u64, StorageError>;

    /// Deletes the state of `scope` touched longest ago; false if there was
    /// none.
    async fn evict_login_throttle(&self, scope: ThrottleScope) -> Result<bool, StorageError>;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purged_rounds_add_up_every_table() {
        let round = Purged {
            ceremonies: 1,
            replay_keys: 2,
            access_tokens: 3,
            sessions: 4,
            login_devices: 5,
            login_throttles: 6,
        };
        let mut total = Purged::default();
        total.add(round);
        total.add(round);
        assert_eq!(
            total,
            Purged {
                ceremonies: 2,
                replay_keys: 4,
                access_tokens: 6,
                sessions: 8,
                login_devices: 10,
                login_throttles: 12,
            }
        );
        assert_eq!(total.total(), 42);
        // A table that gave a whole batch calls for another round.
        let devices = Purged {
            login_devices: 10,
            ..Purged::default()
        };
        assert!(devices.full(10));
        assert!(!devices.full(11));
    }
}
