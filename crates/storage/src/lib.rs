//! Rempart's registry storage: one interface, [`RegistryStore`], two
//! backends, SQLite (embedded default, [`sqlite`]) and PostgreSQL
//! (production, [`postgres`]).
//!
//! The store never sees a clear value of a person: it keeps sealed blobs,
//! wrapped data keys and blind indexes that the vault computed. It knows
//! organisations, accounts and mandates in clear, because they hold no
//! personal data of job seekers (account logins are pseudonymous handles).
//! API credentials of accounts are kept as a digest of their secret, never
//! the secret.
//!
//! Tables: `person`, `organisation`, `account`, `mandate` (with its
//! revocation instant), `mandate_request` (grants to the granting
//! officer's own organisation, waiting for an officer of another),
//! `api_credential`, and `id_counter`; for
//! authentication ([`auth`], [`AuthStore`]): `account_password`,
//! `account_totp`, `passkey`, `web_session`, `ceremony`, `api_client`,
//! `access_token`, `replay_key`, `credential_reset` and `login_device`
//! (browsers trusted for an account's password logins), plus the account's
//! history columns (`created_at`, `decided_by`, `decided_at`,
//! `last_login_at`, `next_session_high_risk`); `break_glass_reason`; for
//! the exfiltration guard (`rempart_guard::GuardStore`): `guard_counter`,
//! `guard_activity`, `guard_known`, `guard_alert`, `guard_alert_feature`,
//! `guard_freeze` and `guard_block` (suspension blocks every instance
//! honours).
//!
//! Schema changes are versioned migrations under `migrations/<backend>/`,
//! applied in order when a store is opened; each backend has its own SQL
//! but the same tables, columns and meaning.

pub mod auth;
mod guard;
pub mod incidents;
mod memory;
pub mod migrate;
pub mod notices;
pub mod postgres;
mod rules;
pub mod sqlite;

pub use auth::{
    AccessTokenRow, AccountChange, AccountLifecycle, ActivationFactors, ApiClientRow, AuthStore,
    CredentialReset, FederationLink, NewAccountRequest, NewActivation, Purged, Rehearsal,
    ResetKind, ReviewEntry, SESSION_METHODS, StoredActivation, StoredPasskeyRow, StoredSession,
    StoredTotp, Suspension, ThrottleEntry, ThrottleInsert, ThrottleScope,
};
pub use incidents::{IncidentStore, RegisterError, validate_event, validate_new};
pub use notices::{NoticeProgress, NoticeStore};

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, SubsecRound, Utc};
use rempart_domain::{
    Account, AccountId, AccountState, FieldGroup, MandateId, Organisation, OrganisationId,
    OrganisationKind, PersonId, Purpose, Reference, Role,
};

/// A 16-byte blind index or fingerprint, computed by the vault.
pub type Blind = [u8; 16];

/// A person's row as the vault sealed it: nothing in it is readable without the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPerson {
    /// Opaque id, reserved with [`RegistryStore::reserve_person_ids`].
    pub id: PersonId,
    pub ft_blind: Blind,
    pub nir_blind: Blind,
    pub name_blind: Blind,
    /// Keyed digest of the whole record, to skip unchanged rows on re-import.
    pub fingerprint: Blind,
    pub kek_version: u32,
    pub dek_version: u32,
    pub wrapped_dek: Vec<u8>,
    /// Sealed field groups, in [`FieldGroup::ALL`] order.
    pub identity: Vec<u8>,
    pub contact: Vec<u8>,
    pub nir: Vec<u8>,
    pub status: Vec<u8>,
    /// Day after which the record may be crypto-shredded, if known.
    pub retain_until: Option<NaiveDate>,
}

/// What an import needs to know about a person already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingPerson {
    pub id: PersonId,
    pub fingerprint: Blind,
    pub kek_version: u32,
    pub dek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// A person's key material and the sealed groups asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPerson {
    pub id: PersonId,
    pub kek_version: u32,
    pub dek_version: u32,
    /// `None` once the person has been crypto-shredded.
    pub wrapped_dek: Option<Vec<u8>>,
    /// The sealed groups asked for, in the order asked.
    pub groups: Vec<(FieldGroup, Vec<u8>)>,
}

/// A wrapped data key, for rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKeyRow {
    pub id: PersonId,
    pub kek_version: u32,
    pub dek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// The kinds of file whose import resumes where it stopped (organisations
/// and accounts are small: an interrupted run is simply run again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Persons,
    Mandates,
}

impl ImportKind {
    /// The name stored in `import_progress.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportKind::Persons => "persons",
            ImportKind::Mandates => "mandates",
        }
    }
}

/// What an import of one file has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Data lines read.
    pub records: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

/// Where an interrupted import of a file stands: its last committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProgress {
    /// Names the file (see `rempart_import`): another file starts afresh.
    pub file_id: [u8; 32],
    /// Byte offset of the first line not yet imported.
    pub next_byte: u64,
    /// Its line number (1 is the header).
    pub next_line: u64,
    pub counts: ImportCounts,
    /// The load began on an empty registry: the person indexes stay
    /// dropped until the end.
    pub bulk: bool,
}

/// One batch's step in an import's progress, written in the batch's own
/// transaction, so the progress never runs ahead of or behind what is
/// stored. The store adds what it decides itself (rows inserted, updated,
/// refused) to the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportMark {
    pub kind: ImportKind,
    pub file_id: [u8; 32],
    pub next_byte: u64,
    pub next_line: u64,
    /// Data lines in this batch.
    pub records: u64,
    /// Lines of this batch found unchanged before the store saw them.
    pub unchanged: u64,
    /// Lines of this batch refused before the store saw them.
    pub rejected: u64,
}

/// A mandate with its person already resolved to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateRow {
    pub reference: Reference,
    pub organisation: Reference,
    pub account: Option<Reference>,
    pub person_id: PersonId,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
}

/// A mandate as stored, with ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMandate {
    pub id: MandateId,
    pub reference: Reference,
    /// The organisation's code.
    pub organisation: Reference,
    pub organisation_id: OrganisationId,
    /// The login of the account it names, if any.
    pub account: Option<Reference>,
    /// The id of the account it names, if any.
    pub account_id: Option<AccountId>,
    pub person_id: PersonId,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    /// Exclusive end; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
    /// When it was revoked; a revoked mandate is never live again.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl StoredMandate {
    /// Whether the mandate is in force on `day`: not revoked, started, and
    /// not yet ended (`valid_to` is exclusive).
    pub fn is_live_on(&self, day: NaiveDate) -> bool {
        self.revoked_at.is_none()
            && self.valid_from <= day
            && self.valid_to.is_none_or(|end| day < end)
    }
}

/// An account with its organisation resolved: what the consultation path knows of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub account_id: AccountId,
    pub login: Reference,
    pub role: Role,
    pub state: AccountState,
    pub organisation_id: OrganisationId,
    /// The organisation's code.
    pub organisation: Reference,
    pub kind: OrganisationKind,
    /// When the account was requested; `None` for imported accounts, whose
    /// history is unknown (the guard treats them as established).
    pub created_at: Option<DateTime<Utc>>,
    /// The organisation's département, if known (the guard's peer group
    /// and local time).
    pub departement: Option<String>,
}

/// See [`RegistryStore::consultation_rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsultationRows {
    pub credential: Option<(StoredCredential, AccountRecord)>,
    pub mandates: Vec<StoredMandate>,
    /// All four sealed groups, in [`FieldGroup::ALL`] order.
    pub person: Option<StoredPerson>,
}

/// An API credential as stored: a digest of the secret, never the secret.
///
/// Instants are kept to the microsecond on both backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub id: i64,
    pub account_id: AccountId,
    pub secret_digest: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `None` while not revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A grant to the granting officer's own organisation, waiting for a
/// second officer (see [`RegistryStore::request_grant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// Its id.
    pub id: i64,
    /// The mandate it would create.
    pub mandate: NewMandate,
    /// The officer who asked.
    pub requested_by: AccountId,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// How a grant request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantDecision {
    /// Approved: the mandate, as stored.
    Granted(StoredMandate),
    /// Rejected: no mandate.
    Rejected,
}

/// A mandate created through the API (grant or break-glass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMandate {
    pub reference: Reference,
    pub organisation_id: OrganisationId,
    /// When set, only this account of the organisation holds the mandate.
    pub account_id: Option<AccountId>,
    pub person_id: PersonId,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    /// Exclusive end; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
}

/// A break-glass's written reason as the vault sealed it: the text and
/// the salt of its ledger digest, under the person's data key (the store
/// cannot read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBreakGlassReason {
    /// The account that broke the glass.
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
    /// The version of the person's data key it is sealed under.
    pub dek_version: u32,
    pub sealed: Vec<u8>,
}

/// A stored break-glass reason, with the mandate it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBreakGlassReason {
    pub id: i64,
    /// The one-day mandate created with it.
    pub mandate_id: MandateId,
    pub person_id: PersonId,
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
    pub dek_version: u32,
    pub sealed: Vec<u8>,
}

/// One row of a caseload page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseloadEntry {
    pub person_id: PersonId,
    pub purpose: Purpose,
    pub mandate_id: MandateId,
    /// Exclusive end of the mandate; `None` means open-ended.
    pub valid_to: Option<NaiveDate>,
}

/// What is in the store, for `rempart demo` and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub persons: u64,
    pub shredded: u64,
    pub organisations_by_kind: Vec<(OrganisationKind, u64)>,
    pub accounts_by_role: Vec<(Role, u64)>,
    pub accounts_by_state: Vec<(AccountState, u64)>,
    pub mandates_by_purpose: Vec<(Purpose, u64)>,
    /// Data keys per KEK version: more than one line means a rotation is under way.
    pub keys_by_kek_version: Vec<(u32, u64)>,
    /// Bytes the registry occupies on disk, indexes included.
    pub bytes: u64,
}

/// Outcome of writing one batch of organisations, accounts or mandates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertCount {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// A row refused while writing a batch of references (unknown organisation…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRefusal {
    /// Index of the row within the batch.
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

/// Storage failures. Messages carry SQL error text and identifiers, never
/// personal values (the store does not have any in clear).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("SQLite: {0}")]
    Sqlite(rusqlite::Error),
    #[error("PostgreSQL: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("migration {version} ({name}): {reason}")]
    Migration {
        version: u32,
        name: &'static str,
        reason: String,
    },
    #[error(
        "the database schema is at version {found}, newer than this program knows ({known}): upgrade Rempart"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("concurrent change: {0}; nothing of this batch was written, run it again")]
    Conflict(String),
    /// What the request names does not exist (`account_id: no such
    /// account`): `field` names the request's field.
    #[error("invalid request: {field}: no such {what}")]
    NotFound {
        /// The request's field naming it.
        field: &'static str,
        /// What it should have named.
        what: &'static str,
    },
    /// A rule of the store refuses the request (four eyes, a state
    /// transition, a range, a value already used): `field` names the
    /// request's field, `reason` the rule, in words a caller may be shown.
    #[error("invalid request: {field}: {reason}")]
    Refused {
        /// The request's field the rule is about.
        field: &'static str,
        /// The rule, in words.
        reason: String,
    },
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("background task failed: {0}")]
    Task(String),
}

impl StorageError {
    /// The request's field and why, when the store refused the request
    /// ([`StorageError::NotFound`], [`StorageError::Refused`]); `None` when
    /// it failed.
    pub fn refused(&self) -> Option<(&'static str, String)> {
        match self {
            StorageError::NotFound { field, what } => Some((field, format!("no such {what}"))),
            StorageError::Refused { field, reason } => Some((field, reason.clone())),
            _ => None,
        }
    }
}

/// A stored value that does not decode as its Rust type (a negative
/// version, text where a number belongs) is a damaged row, as PostgreSQL's
/// side reports it: [`StorageError::Corrupt`], naming the column, never
/// the value.
impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        match e {
            E::IntegralValueOutOfRange(column, _) => {
                StorageError::Corrupt(format!("column {column} holds an out-of-range number"))
            }
            E::FromSqlConversionFailure(column, stored, _) => {
                StorageError::Corrupt(format!("column {column} ({stored}) does not decode"))
            }
            E::InvalidColumnType(column, name, stored) => {
                StorageError::Corrupt(format!("column {column} ({name}) holds {stored}"))
            }
            other => StorageError::Sqlite(other),
        }
    }
}

impl From<rempart_sql::MigrationError> for StorageError {
    fn from(e: rempart_sql::MigrationError) -> Self {
        use rempart_sql::MigrationError as M;
        match e {
            M::TooNew { found, known } => StorageError::SchemaTooNew { found, known },
            M::Edited { version, name } => StorageError::Migration {
                version,
                name,
                reason: "was applied with different SQL (checksum mismatch)".into(),
            },
            M::Failed {
                version,
                name,
                reason,
            } => StorageError::Migration {
                version,
                name,
                reason,
            },
            corrupt @ (M::Unknown { .. } | M::BadVersion(_)) => {
                StorageError::Corrupt(corrupt.to_string())
            }
        }
    }
}

/// The server's own message when there is one ("db error" alone says
/// nothing). PostgreSQL messages name constraints and columns; the DETAIL
/// line, which may quote values, is left out.
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// One interface over both backends. Every method is one transaction:
/// it either happens whole or not at all.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Backend name, for messages: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Reserves `n` consecutive person ids and returns the first.
    async fn reserve_person_ids(&self, n: u64) -> Result<PersonId, StorageError>;

    /// For each blind France Travail id, the stored person it names, if any
    /// (shredded persons are not found).
    async fn lookup_persons(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<ExistingPerson>>, StorageError>;

    /// For each blind France Travail id, the id of the stored person it
    /// names, if any (shredded persons are not found). Reads the unique
    /// index alone: the mandates import's lookup.
    async fn lookup_person_ids(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<PersonId>>, StorageError>;

    /// Inserts new persons and replaces changed ones, in one transaction.
    /// An update only applies if the stored fingerprint is still
    /// `previous` (else [`StorageError::Conflict`] and nothing is written).
    async fn write_persons(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
    ) -> Result<(), StorageError> {
        self.write_persons_marked(inserts, updates, None).await
    }

    /// [`RegistryStore::write_persons`], moving the import's progress to
    /// `mark` in the same transaction. A mark whose file is no longer the
    /// one in progress (another import of the same kind started) is
    /// [`StorageError::Conflict`], and nothing is written.
    async fn write_persons_marked(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
        mark: Option<ImportMark>,
    ) -> Result<(), StorageError>;

    /// The progress of an interrupted import of this kind of file, if any.
    async fn import_progress(
        &self,
        kind: ImportKind,
    ) -> Result<Option<ImportProgress>, StorageError>;

    /// Starts recording an import's progress from the top of the file
    /// `file_id`, replacing any other of the same kind.
    async fn start_import(
        &self,
        kind: ImportKind,
        file_id: [u8; 32],
        bulk: bool,
    ) -> Result<(), StorageError>;

    /// The file is done: forgets its progress.
    async fn finish_import(&self, kind: ImportKind) -> Result<(), StorageError>;

    /// Reads a person's key material and the sealed groups asked for.
    async fn read_person(
        &self,
        id: PersonId,
        groups: &[FieldGroup],
    ) -> Result<Option<StoredPerson>, StorageError>;

    /// Persons whose blind index of the given kind equals `blind`.
    async fn find_persons(
        &self,
        index: PersonIndex,
        blind: Blind,
    ) -> Result<Vec<PersonId>, StorageError>;

    /// Up to `limit` wrapped keys with id > `after` whose KEK version is not
    /// `target`, in id order: the work list of a rotation.
    async fn keys_to_rewrap(
        &self,
        target: u32,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<WrappedKeyRow>, StorageError>;

    /// Stores rewrapped keys. Each item is (the row with its *new* KEK
    /// version and wrapped key, the *old* KEK version it was read with); it
    /// applies only if the stored version is still the old one (so a
    /// concurrent write is never overwritten). Returns how many rows were
    /// updated.
    async fn store_rewrapped(&self, rows: Vec<(WrappedKeyRow, u32)>) -> Result<u64, StorageError>;

    /// Destroys a person's data key and blind indexes: the sealed groups
    /// stay, unreadable forever; the person's break-glass reasons (sealed
    /// under that key) are deleted in the same transaction. Returns false
    /// if there was no such person or it was already shredded.
    async fn shred_person(&self, id: PersonId) -> Result<bool, StorageError>;

    /// Upserts organisations by code.
    async fn upsert_organisations(
        &self,
        orgs: Vec<Organisation>,
    ) -> Result<UpsertCount, StorageError>;

    /// Upserts accounts by login. Rows naming an unknown organisation or
    /// requester/approver are refused, the others written.
    async fn upsert_accounts(
        &self,
        accounts: Vec<Account>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError>;

    /// Upserts mandates by reference. Rows naming an unknown organisation or
    /// account, or an account of another organisation, are refused.
    async fn upsert_mandates(
        &self,
        mandates: Vec<MandateRow>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        self.upsert_mandates_marked(mandates, None).await
    }

    /// [`RegistryStore::upsert_mandates`], moving the import's progress to
    /// `mark` in the same transaction (as `write_persons_marked`).
    async fn upsert_mandates_marked(
        &self,
        mandates: Vec<MandateRow>,
        mark: Option<ImportMark>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError>;

    /// Mandates held on a person, live or not (revoked and expired ones
    /// included: the caller decides with [`StoredMandate::is_live_on`]), in
    /// id order. One indexed query: it runs on every read request.
    async fn mandates_of_person(
        &self,
        person_id: PersonId,
    ) -> Result<Vec<StoredMandate>, StorageError>;

    /// Counts and sizes.
    async fn inventory(&self) -> Result<Inventory, StorageError>;

    /// Ids of stored persons, `after` exclusive, in id order (for sampling and scans).
    async fn person_ids(&self, after: PersonId, limit: u32) -> Result<Vec<PersonId>, StorageError>;

    /// The account with this login, with its organisation.
    async fn account_by_login(
        &self,
        login: &Reference,
    ) -> Result<Option<AccountRecord>, StorageError>;

    /// The account with this id, with its organisation.
    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StorageError>;

    /// Accounts of one organisation, by login order (empty if there is no
    /// such organisation).
    async fn accounts_of_organisation(
        &self,
        organisation_id: OrganisationId,
    ) -> Result<Vec<AccountRecord>, StorageError>;

    /// Organisations with their ids, by code order.
    async fn organisations(&self) -> Result<Vec<(OrganisationId, Organisation)>, StorageError>;

    /// Suspends (`state` suspended: only an active account) or reactivates
    /// (`state` active: only a suspended account whose recorded request, if
    /// any, was approved under four eyes) an account, in one conditional
    /// statement following the account state machine
    /// ([`rempart_domain::AccountAction`]). False if there is no such
    /// account; refuses (`state: …`) any other target and any change the
    /// machine does not allow from the account's state.
    async fn set_account_state(
        &self,
        account_id: AccountId,
        state: AccountState,
    ) -> Result<bool, StorageError>;

    /// Stores a new credential (digest only) and returns its id. Ids are
    /// never reused. Refuses, naming the field, an unknown account
    /// ([`StorageError::NotFound`]) or an `expires_at` not after
    /// `created_at` ([`StorageError::Refused`]).
    /// Instants are kept to the microsecond.
    async fn insert_credential(
        &self,
        account_id: AccountId,
        secret_digest: [u8; 32],
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<i64, StorageError>;

    /// A credential and its account, in one query (this is on every
    /// request's hot path). Expired and revoked credentials are returned
    /// too, as they are: the caller decides.
    async fn credential(
        &self,
        id: i64,
    ) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError>;

    /// What one read of one person needs, in one round trip: the credential
    /// with its account, every mandate on the person, and the person's key
    /// material with all four sealed groups. Nothing in it can be read
    /// without the keys; the caller decides on the credential and the
    /// mandates before it opens anything. Backends that can should answer
    /// in one transaction; the default asks the three questions in turn.
    async fn consultation_rows(
        &self,
        credential_id: i64,
        person_id: PersonId,
    ) -> Result<ConsultationRows, StorageError> {
        Ok(ConsultationRows {
            credential: self.credential(credential_id).await?,
            mandates: self.mandates_of_person(person_id).await?,
            person: self.read_person(person_id, FieldGroup::ALL).await?,
        })
    }

    /// Revokes one credential of the account (if `id` is Some; a credential
    /// of another account is left alone) or every credential of the
    /// account; returns how many were revoked (already revoked ones don't
    /// count).
    async fn revoke_credentials(
        &self,
        account_id: AccountId,
        id: Option<i64>,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError>;

    /// Inserts a mandate and returns it as stored. Refuses
    /// ([`StorageError::Refused`] or [`StorageError::NotFound`], naming
    /// the field) `valid_to` not after `valid_from`, an unknown
    /// `organisation_id`, an unknown `account_id` or one of another
    /// organisation, an unknown or shredded `person_id`, or a `reference`
    /// already used; the checks run in that order.
    async fn grant_mandate(&self, m: NewMandate) -> Result<StoredMandate, StorageError>;

    /// Rehearses [`RegistryStore::grant_mandate`] of `m`: the same checks
    /// and refusals, in a transaction rolled back, nothing written (see
    /// [`AuthStore::rehearse`] for why).
    async fn rehearse_grant(&self, m: &NewMandate) -> Result<(), StorageError>;

    /// Records a grant to the requesting officer's own organisation, to be
    /// decided by a second officer ([`RegistryStore::decide_grant`]).
    /// Rehearse the grant first ([`RegistryStore::rehearse_grant`]): the
    /// mandate's checks run again when it is approved.
    async fn request_grant(
        &self,
        m: NewMandate,
        requested_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<GrantRequest, StorageError>;

    /// Decides a grant request, once (compare-and-set: `None` if there is
    /// no such request or it is decided). Approval inserts its mandate, with
    /// [`RegistryStore::grant_mandate`]'s checks and refusals, in the same
    /// transaction. Refuses (`officer_id: …`) a decider who is not an
    /// active officer, is the requester, or belongs to the requester's
    /// organisation (four eyes, as for accounts).
    async fn decide_grant(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<GrantDecision>, StorageError>;

    /// [`RegistryStore::decide_grant`] in a transaction rolled back: the same
    /// answer and refusals, nothing written (`false` for `None`).
    async fn rehearse_grant_decision(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    /// Grant requests awaiting a decision, oldest first.
    async fn pending_grants(&self) -> Result<Vec<GrantRequest>, StorageError>;

    /// Break-glass: inserts the one-day mandate `m` and its sealed reason
    /// in one transaction, with the checks and refusals of
    /// [`RegistryStore::grant_mandate`]. `reason` must be sealed under the
    /// person's current data key: a person shredded or re-keyed since
    /// ([`StorageError::Conflict`]) gets neither row.
    async fn grant_break_glass(
        &self,
        m: NewMandate,
        reason: NewBreakGlassReason,
    ) -> Result<StoredMandate, StorageError>;

    /// A person's break-glass reasons, sealed, in id order (none once the
    /// person is shredded).
    async fn break_glass_reasons(
        &self,
        person_id: PersonId,
    ) -> Result<Vec<StoredBreakGlassReason>, StorageError>;

    /// Marks a mandate revoked at `at` (never live again); false if no such
    /// mandate or already revoked.
    async fn revoke_mandate(&self, id: MandateId, at: DateTime<Utc>) -> Result<bool, StorageError>;

    /// One mandate by id, live or not.
    async fn mandate(&self, id: MandateId) -> Result<Option<StoredMandate>, StorageError>;

    /// The caseload of an account: persons with a mandate live on `on` held
    /// by the organisation as a whole (no account named) or naming
    /// `account_id`, optionally for one purpose, with person_id > `after`,
    /// ordered by person_id then mandate id, at most `limit` rows; shredded
    /// persons are excluded. A person with several live mandates appears
    /// once per mandate.
    ///
    /// Pages end on a person boundary: when the limit would split a
    /// person's mandates, that person is left whole for the next page
    /// (unless it alone fills the page: then its first `limit` mandates
    /// only). So paging with `after` = the last person_id of the previous
    /// page returns every live mandate exactly once, and a page may be
    /// shorter than `limit` while more follow: only an empty page ends.
    async fn caseload(
        &self,
        organisation_id: OrganisationId,
        account_id: AccountId,
        purpose: Option<Purpose>,
        on: NaiveDate,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<CaseloadEntry>, StorageError>;

    /// Prepares a first load: if no person is stored yet, drops the person
    /// indexes (rebuilt by [`RegistryStore::end_bulk_load`], far faster
    /// than maintaining three random-key indexes row by row) and returns
    /// true. Otherwise does nothing and returns false. The caller must then
    /// insert no two persons with the same France Travail id (the unique
    /// index is back only at the end) and call `end_bulk_load` even on error.
    ///
    /// `resuming`: the rest of a first load that was interrupted (its
    /// progress says so), whose persons are the only ones stored: the
    /// indexes, rebuilt when the store was opened again, are dropped anew.
    async fn begin_bulk_load(&self, resuming: bool) -> Result<bool, StorageError> {
        let _ = resuming;
        Ok(false)
    }

    /// Prepares a first load of mandates as `begin_bulk_load` does persons:
    /// if none is stored yet (or `resuming` the rest of such a load),
    /// drops the mandates' secondary indexes (and on PostgreSQL their
    /// foreign keys), kept with the statements that make them again, and
    /// returns true. The unique reference stays.
    /// The caller calls `end_bulk_load` at the end, even on error.
    async fn begin_mandate_bulk_load(&self, resuming: bool) -> Result<bool, StorageError> {
        let _ = resuming;
        Ok(false)
    }

    /// Rebuilds any missing person index and any index a bulk load of
    /// mandates dropped. Also run when a store is opened, so an
    /// interrupted bulk load never leaves a store without them.
    async fn end_bulk_load(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Refreshes the planner's statistics after an import. Without them a
    /// freshly loaded PostgreSQL registry planned each person's mandates as
    /// 348 rows and hash-joined them against full scans of the
    /// organisations and accounts on every consultation (3,692
    /// consultations/s; 5,568 after `ANALYZE`), until autovacuum, which may
    /// be off, got to it. SQLite plans these lookups from their indexes
    /// alone (its plans are pinned by tests): nothing to do there.
    async fn refresh_statistics(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Which blind index to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonIndex {
    FtId,
    Nir,
    NameBirth,
}

/// A shared handle on either backend.
pub type Store = Arc<dyn RegistryStore>;

/// Both interfaces on one opened database, sharing its connections (the
/// SQLite writer and readers, or the PostgreSQL pool).
#[derive(Clone)]
pub struct Stores {
    /// The registry: persons, organisations, accounts, mandates.
    pub registry: Store,
    /// What authentication persists.
    pub auth: Arc<dyn AuthStore>,
    /// What the exfiltration guard shares between instances and keeps
    /// across restarts.
    pub guard: Arc<dyn rempart_guard::GuardStore>,
    /// The breach register.
    pub incidents: Arc<dyn IncidentStore>,
    /// The register's notices to persons.
    pub notices: Arc<dyn NoticeStore>,
}

impl From<sqlite::SqliteStore> for Stores {
    fn from(s: sqlite::SqliteStore) -> Stores {
        // A clone shares the connections.
        Stores {
            registry: Arc::new(s.clone()),
            auth: Arc::new(s.clone()),
            guard: Arc::new(s.clone()),
            incidents: Arc::new(s.clone()),
            notices: Arc::new(s),
        }
    }
}

impl From<postgres::PgStore> for Stores {
    fn from(s: postgres::PgStore) -> Stores {
        // A clone shares the pool.
        Stores {
            registry: Arc::new(s.clone()),
            auth: Arc::new(s.clone()),
            guard: Arc::new(s.clone()),
            incidents: Arc::new(s.clone()),
            notices: Arc::new(s),
        }
    }
}

/// Opens the store named by `url`: `postgres://…`/`postgresql://…`, or a
/// data directory path (SQLite file `registry.db` inside it). Migrations run.
pub async fn open(url_or_dir: &str) -> Result<Store, StorageError> {
    Ok(open_stores(url_or_dir).await?.registry)
}

/// Like [`open`], with the authentication interface on the same database.
pub async fn open_stores(url_or_dir: &str) -> Result<Stores, StorageError> {
    if url_or_dir.starts_with("postgres://") || url_or_dir.starts_with("postgresql://") {
        Ok(
            postgres::PgStore::connect_store(url_or_dir, postgres::DEFAULT_SCHEMA)
                .await?
                .into(),
        )
    } else {
        let dir = std::path::Path::new(url_or_dir);
        Ok(sqlite::SqliteStore::open(dir).await?.into())
    }
}

/// An instant as both backends store it: to the microsecond (PostgreSQL's
/// precision), within years 1 to 9999 (SQLite keeps RFC 3339 text).
pub(crate) fn instant(
    at: DateTime<Utc>,
    what: &'static str,
) -> Result<DateTime<Utc>, StorageError> {
    if (1..=9999).contains(&at.year()) {
        Ok(at.trunc_subsecs(6))
    } else {
        Err(auth::checks::refuse(what, "out of range (years 1 to 9999)"))
    }
}

/// A stored 32-byte secret digest.
pub(crate) fn digest(v: Vec<u8>) -> Result<[u8; 32], StorageError> {
    v.try_into()
        .map_err(|_| StorageError::Corrupt("a credential's secret digest is not 32 bytes".into()))
}

/// Checks a new credential's period.
pub(crate) fn credential_period(
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StorageError> {
    let created_at = instant(created_at, "created_at")?;
    let expires_at = instant(expires_at, "expires_at")?;
    if expires_at <= created_at {
        return Err(auth::checks::refuse(
            "expires_at",
            "must be after created_at",
        ));
    }
    Ok((created_at, expires_at))
}

/// The four-eyes rule of a grant request's decision: the decider exists,
/// is an active officer, is not the requester, and is not of the
/// requester's organisation.
pub(crate) fn check_grant_decider(
    requester: Option<&auth::checks::Decider>,
    decider: Option<&auth::checks::Decider>,
) -> Result<(), StorageError> {
    let refuse = |why: &str| Err(auth::checks::refuse("officer_id", why));
    let Some(d) = decider else {
        return Err(auth::checks::not_found("officer_id", "account"));
    };
    if d.role != Role::Officer || d.state != AccountState::Active {
        return refuse("the decider must be an active officer");
    }
    let Some(requester) = requester else {
        return Err(StorageError::Corrupt(
            "a mandate request names a missing requester".into(),
        ));
    };
    if d.account_id == requester.account_id {
        return refuse("the requester cannot decide on its own request (four eyes)");
    }
    if d.organisation_id == requester.organisation_id {
        return refuse("an officer of the requester's organisation cannot decide (four eyes)");
    }
    Ok(())
}

/// Checks the period of a new mandate.
pub(crate) fn check_mandate_period(m: &NewMandate) -> Result<(), StorageError> {
    match m.valid_to {
        Some(end) if end <= m.valid_from => Err(crate::auth::checks::refuse(
            "valid_to",
            "must be after valid_from",
        )),
        _ => Ok(()),
    }
}

/// Cuts a caseload query's rows (up to `limit + 1`, in person then
/// mandate order) to a page that does not split a person's mandates; see
/// [`RegistryStore::caseload`].
pub(crate) fn caseload_page(mut rows: Vec<CaseloadEntry>, limit: u32) -> Vec<CaseloadEntry> {
    let limit = limit as usize;
    let Some(next) = rows.get(limit).map(|e| e.person_id) else {
        return rows;
    };
    rows.truncate(limit);
    match rows.iter().position(|e| e.person_id == next) {
        // The person alone fills the page: keep what fits.
        Some(0) | None => rows,
        Some(first) => {
            rows.truncate(first);
            rows
        }
    }
}

/// A mandate's own columns, without its organisation's code and its
/// account's login, which each backend's one decoder (`stored_mandate`)
/// takes from [`memory::Names`]: no join on any mandate read. Same order on
/// both backends.
pub(crate) const MANDATE_COLUMNS: &str = "id, reference, organisation_id, account_id, person_id,
         purpose, valid_from, valid_to, source, revoked_at";

/// An account with its organisation (same SQL on both backends; each reads
/// the columns in this order).
pub(crate) const ACCOUNT_SELECT: &str =
    "SELECT a.id, a.login, a.role, a.state, o.id, o.code, o.kind, a.created_at, o.departement
     FROM account a JOIN organisation o ON o.id = a.organisation_id";

/// A credential with its account (same SQL on both backends; each adds its
/// `WHERE` and reads the account columns from column 6).
pub(crate) const CREDENTIAL_SELECT: &str =
    "SELECT c.id, c.account_id, c.secret_digest, c.created_at, c.expires_at,
            c.revoked_at, a.id, a.login, a.role, a.state, o.id, o.code, o.kind,
            a.created_at, o.departement
     FROM api_credential c JOIN account a ON a.id = c.account_id
     JOIN organisation o ON o.id = a.organisation_id";

/// A stored 16-byte blind index or fingerprint.
pub(crate) fn blind(v: Vec<u8>, what: &str) -> Result<Blind, StorageError> {
    v.try_into()
        .map_err(|_| StorageError::Corrupt(format!("{what} is not 16 bytes")))
}

/// Column holding a field group's sealed blob (same on both backends).
pub(crate) fn group_column(g: FieldGroup) -> &'static str {
    match g {
        FieldGroup::Identity => "identity",
        FieldGroup::Contact => "contact",
        FieldGroup::Nir => "nir",
        FieldGroup::Status => "status",
    }
}

/// Column holding a blind index (same on both backends).
pub(crate) fn index_column(i: PersonIndex) -> &'static str {
    match i {
        PersonIndex::FtId => "ft_blind",
        PersonIndex::Nir => "nir_blind",
        PersonIndex::NameBirth => "name_blind",
    }
}

/// A stored code (kind, role, purpose…) parsed back into its domain type.
pub(crate) fn parse_code<T>(
    s: String,
    parse: impl Fn(&str) -> Result<T, rempart_domain::ValueError>,
) -> Result<T, StorageError> {
    parse(&s).map_err(|e| StorageError::Corrupt(format!("stored code: {e}")))
}

/// An account as stored, as an import compares it with its row: the
/// requester and approver by login.
pub(crate) struct StoredAccountRow {
    pub organisation_id: OrganisationId,
    pub role: String,
    pub state: String,
    pub requested_by: Option<String>,
    pub approved_by: Option<String>,
}

/// What an import does with one account row that passed the link checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountUpsert {
    /// No such login yet.
    Insert,
    /// Stored, with another organisation, role, state or links.
    Update,
    /// Stored exactly so: nothing written.
    Unchanged,
    /// A state change the import may not make (see [`import_state_refusal`]).
    Refused(&'static str),
}

/// The statement an account row of an import needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountWrite {
    /// An `INSERT`.
    Insert,
    /// An `UPDATE`.
    Update,
}

impl AccountUpsert {
    /// Counts the row (row `index` of the batch) as this decision says and
    /// records its refusal, if refused; the write it needs, `None` when
    /// nothing is written. A write that then fails fails the batch, counts
    /// and all.
    pub(crate) fn tally(
        self,
        index: usize,
        count: &mut UpsertCount,
        refused: &mut Vec<RowRefusal>,
    ) -> Option<AccountWrite> {
        match self {
            AccountUpsert::Insert => {
                count.inserted += 1;
                Some(AccountWrite::Insert)
            }
            AccountUpsert::Update => {
                count.updated += 1;
                Some(AccountWrite::Update)
            }
            AccountUpsert::Unchanged => {
                count.unchanged += 1;
                None
            }
            AccountUpsert::Refused(reason) => {
                refused.push(RowRefusal {
                    index,
                    field: "state",
                    reason: reason.into(),
                });
                None
            }
        }
    }
}

/// Decides one account row of an import against what is stored for its
/// login (both backends read the row in the transaction that acts on it).
pub(crate) fn account_upsert(
    a: &Account,
    organisation_id: OrganisationId,
    stored: Option<&StoredAccountRow>,
) -> AccountUpsert {
    let Some(s) = stored else {
        return AccountUpsert::Insert;
    };
    fn login(r: &Option<Reference>) -> Option<&str> {
        r.as_ref().map(Reference::as_str)
    }
    if s.organisation_id == organisation_id
        && s.role == a.role.as_str()
        && s.state == a.state.as_str()
        && s.requested_by.as_deref() == login(&a.requested_by)
        && s.approved_by.as_deref() == login(&a.approved_by)
    {
        return AccountUpsert::Unchanged;
    }
    match import_state_refusal(&s.state, a.state) {
        Some(reason) => AccountUpsert::Refused(reason),
        None => AccountUpsert::Update,
    }
}

/// Why an import may not move a stored account from `stored` (its state's
/// code) to `to`, if it may not: an import follows the account state
/// machine ([`rempart_domain::AccountAction`]) for the changes that need
/// no decider (suspend, reactivate, disable); approving or rejecting a
/// request is an officer's decision under four eyes, and rejected or
/// disabled accounts are final.
pub(crate) fn import_state_refusal(stored: &str, to: AccountState) -> Option<&'static str> {
    use rempart_domain::{AccountAction, LifecycleState};
    let Ok(from) = AccountState::parse(stored) else {
        return Some("the stored state is not a known code");
    };
    if from == to {
        return None;
    }
    let from = LifecycleState::of(from, false, true);
    let allowed = [
        AccountAction::Suspend,
        AccountAction::Reactivate,
        AccountAction::Disable,
    ]
    .iter()
    .any(|a| {
        a.from_states().contains(&from) && a.to_state().map(LifecycleState::stored) == Some(to)
    });
    if allowed {
        None
    } else if from == LifecycleState::Requested {
        Some(
            "a requested account is approved or rejected by an officer under four eyes, not by an import",
        )
    } else if to == AccountState::Requested {
        Some("only a request makes an account requested")
    } else {
        Some("the account state machine has no such change (rejected and disabled are final)")
    }
}

/// Accounts accepted by [`check_account_links`] with their index in the
/// batch and their organisation id, and the refusals.
pub(crate) type LinkCheck<'a> = (Vec<(usize, &'a Account, OrganisationId)>, Vec<RowRefusal>);

/// Checks the organisation, requester and approver of each account of a
/// batch, against the batch itself and the store (through the lookups:
/// organisation code → (id, kind); stored login → (organisation id, role)).
///
/// Rules (no account is born alone):
/// - the organisation exists; requester and approver exist (in the store
///   or among the batch's valid rows);
/// - the approver is an `officer`, neither the account itself nor its
///   requester;
/// - a partner's account is approved from outside the partner
///   organisation (officers of France Travail may approve colleagues of
///   their own agency).
pub(crate) fn check_account_links(
    accounts: &[Account],
    mut org_of_code: impl FnMut(
        &str,
    ) -> Result<Option<(OrganisationId, OrganisationKind)>, StorageError>,
    mut stored_account: impl FnMut(&str) -> Result<Option<(OrganisationId, Role)>, StorageError>,
) -> Result<LinkCheck<'_>, StorageError> {
    use std::collections::HashMap;
    let mut refused = Vec::new();
    let mut orgs: Vec<Option<(OrganisationId, OrganisationKind)>> =
        Vec::with_capacity(accounts.len());
    for (index, a) in accounts.iter().enumerate() {
        let org = org_of_code(a.organisation.as_str())?;
        if org.is_none() {
            refused.push(RowRefusal {
                index,
                field: "organisation",
                reason: "no such organisation".into(),
            });
        }
        orgs.push(org);
    }
    let mut stored: HashMap<String, Option<(OrganisationId, Role)>> = HashMap::new();
    // Refusing a row may orphan rows that name it: repeat until stable.
    loop {
        let batch: HashMap<&str, (OrganisationId, Role)> = accounts
            .iter()
            .zip(&orgs)
            .filter_map(|(a, o)| o.map(|(id, _)| (a.login.as_str(), (id, a.role))))
            .collect();
        let mut newly = Vec::new();
        for (index, a) in accounts.iter().enumerate() {
            let Some((own, kind)) = orgs[index] else {
                continue;
            };
            let mut lookup = |login: &str| -> Result<Option<(OrganisationId, Role)>, StorageError> {
                if let Some(v) = batch.get(login) {
                    return Ok(Some(*v));
                }
                if let Some(v) = stored.get(login) {
                    return Ok(*v);
                }
                let v = stored_account(login)?;
                stored.insert(login.to_string(), v);
                Ok(v)
            };
            let requester = a
                .requested_by
                .as_ref()
                .map(|r| lookup(r.as_str()))
                .transpose()?;
            let approver = a
                .approved_by
                .as_ref()
                .map(|r| lookup(r.as_str()))
                .transpose()?;
            let refusal = match (requester, approver) {
                (Some(None), _) => Some(("requested_by", "no such account")),
                (_, Some(None)) => Some(("approved_by", "no such account")),
                (_, Some(Some((_, role)))) if role != Role::Officer => {
                    Some(("approved_by", "only an officer may approve an account"))
                }
                _ if a.approved_by.as_ref() == Some(&a.login) => Some((
                    "approved_by",
                    "an account cannot approve itself (four eyes)",
                )),
                _ if a.approved_by.is_some() && a.approved_by == a.requested_by => Some((
                    "approved_by",
                    "the approver cannot be the requester (four eyes)",
                )),
                (_, Some(Some((org, _))))
                    if org == own && kind != OrganisationKind::FranceTravail =>
                {
                    Some((
                        "approved_by",
                        "a partner's account must be approved from outside its organisation (four eyes)",
                    ))
                }
                _ => None,
            };
            if let Some((field, reason)) = refusal {
                newly.push(RowRefusal {
                    index,
                    field,
                    reason: reason.into(),
                });
            }
        }
        if newly.is_empty() {
            break;
        }
        for r in newly {
            orgs[r.index] = None;
            refused.push(r);
        }
    }
    refused.sort_by_key(|r| r.index);
    let valid = accounts
        .iter()
        .zip(orgs)
        .enumerate()
        .filter_map(|(index, (a, o))| o.map(|(id, _)| (index, a, id)))
        .collect();
    Ok((valid, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(person_id: i64, mandate_id: i64) -> CaseloadEntry {
        CaseloadEntry {
            person_id: PersonId::new(person_id),
            purpose: Purpose::FollowUp,
            mandate_id: MandateId::new(mandate_id),
            valid_to: None,
        }
    }

    fn ids(page: &[CaseloadEntry]) -> Vec<(i64, i64)> {
        page.iter()
            .map(|e| (e.person_id.get(), e.mandate_id.get()))
            .collect()
    }

    #[test]
    fn an_import_row_is_inserted_updated_left_or_refused() {
        let r = |s: &str| Reference::parse(s).unwrap();
        let row = Account {
            login: r("ml.agent"),
            organisation: r("ML-038"),
            role: Role::Agent,
            state: AccountState::Active,
            requested_by: Some(r("ml.manager")),
            approved_by: Some(r("ft.officer")),
        };
        let org = OrganisationId::new(3);
        let stored = StoredAccountRow {
            organisation_id: org,
            role: "agent".into(),
            state: "active".into(),
            requested_by: Some("ml.manager".into()),
            approved_by: Some("ft.officer".into()),
        };
        assert_eq!(account_upsert(&row, org, None), AccountUpsert::Insert);
        assert_eq!(
            account_upsert(&row, org, Some(&stored)),
            AccountUpsert::Unchanged
        );
        // Any field of the row differing is an update, links included.
        let moved = OrganisationId::new(4);
        assert_eq!(
            account_upsert(&row, moved, Some(&stored)),
            AccountUpsert::Update
        );
        let relinked = StoredAccountRow {
            approved_by: Some("ft.other".into()),
            ..stored
        };
        assert_eq!(
            account_upsert(&row, org, Some(&relinked)),
            AccountUpsert::Update
        );
        // An import does not approve a request: that is an officer's
        // decision under four eyes.
        let requested = StoredAccountRow {
            state: "requested".into(),
            ..relinked
        };
        assert!(matches!(
            account_upsert(&row, org, Some(&requested)),
            AccountUpsert::Refused(reason) if reason.contains("four eyes")
        ));
    }

    #[test]
    fn caseload_pages_never_split_a_person() {
        let rows = |v: &[(i64, i64)]| v.iter().map(|&(p, m)| entry(p, m)).collect::<Vec<_>>();
        // Fewer rows than the limit: the last page, whole.
        assert_eq!(
            ids(&caseload_page(rows(&[(1, 1), (2, 2)]), 3)),
            [(1, 1), (2, 2)]
        );
        // The next row is another person: cut at the limit.
        assert_eq!(
            ids(&caseload_page(rows(&[(1, 1), (2, 2), (3, 3)]), 2)),
            [(1, 1), (2, 2)]
        );
        // The next row continues person 2: person 2 goes to the next page.
        assert_eq!(
            ids(&caseload_page(rows(&[(1, 1), (2, 2), (2, 5)]), 2)),
            [(1, 1)]
        );
        assert_eq!(
            ids(&caseload_page(rows(&[(1, 1), (2, 2), (2, 4), (2, 5)]), 3)),
            [(1, 1)]
        );
        // One person fills the page: what fits.
        assert_eq!(
            ids(&caseload_page(rows(&[(7, 1), (7, 2), (7, 3)]), 2)),
            [(7, 1), (7, 2)]
        );
        assert!(caseload_page(rows(&[(1, 1)]), 0).is_empty());
        assert!(caseload_page(vec![], 5).is_empty());
    }

    #[test]
    fn live_mandates() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 3, d).unwrap_or_default();
        let reference = Reference::parse("M1").unwrap();
        let mut m = StoredMandate {
            id: MandateId::new(1),
            reference: reference.clone(),
            organisation: reference.clone(),
            organisation_id: OrganisationId::new(1),
            account: None,
            account_id: None,
            person_id: PersonId::new(1),
            purpose: Purpose::FollowUp,
            valid_from: day(10),
            valid_to: Some(day(20)),
            source: reference,
            revoked_at: None,
        };
        assert!(!m.is_live_on(day(9)));
        assert!(m.is_live_on(day(10)));
        assert!(m.is_live_on(day(19)));
        assert!(!m.is_live_on(day(20)), "valid_to is exclusive");
        m.valid_to = None;
        assert!(m.is_live_on(day(31)));
        m.revoked_at = Some(DateTime::<Utc>::UNIX_EPOCH);
        assert!(!m.is_live_on(day(15)), "revoked");
    }

    #[test]
    fn instants_keep_microseconds_within_four_digit_years() {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 123_456_789).unwrap();
        assert_eq!(
            instant(at, "at").unwrap().timestamp_subsec_nanos(),
            123_456_000
        );
        let far = DateTime::<Utc>::from_timestamp(300_000_000_000, 0).unwrap();
        assert!(matches!(
            instant(far, "at"),
            Err(StorageError::Refused { field: "at", .. })
        ));
    }
}
