//! SQLite backend: one file `registry.db` in the data directory, WAL mode,
//! one writer connection and a few reader connections, each used on
//! tokio's blocking pool. Writes go through the one writer connection, so
//! a check followed by a write in one closure cannot race with another
//! writer; the hot lookups (credential, mandates, person, session, access
//! token) are point reads on the calling thread.
//!
//! The operations live by concern in the submodules, with the same file
//! names as the PostgreSQL backend's; the trait impls below only delegate.
//!
//! Hot lookups (credential, mandates, person, session, access token)
//! compare with `+?1`, not `?1`. With a bare parameter in these joins,
//! SQLite marks the prepared statement as depending on the bound value and
//! re-prepares it on every call (measured under load: 17% of the server's
//! CPU for the mandates, 11% for the credential). The unary plus keeps the
//! index or rowid lookup (checked by `hot_lookups_are_never_re_prepared`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{
    Account, AccountId, AccountState, FieldGroup, MandateId, Organisation, OrganisationId,
    PersonId, Purpose, Reference,
};
use rempart_sql::SqliteReaders;
use rempart_sql::lock_connection as lock;
use rusqlite::Connection;

use crate::auth::{
    AccessTokenRow, AccountLifecycle, ActivationFactors, ApiClientRow, AuthStore, CredentialReset,
    FederationLink, NewAccountRequest, NewActivation, Purged, ResetKind, ReviewEntry,
    StoredActivation, StoredPasskeyRow, StoredSession, StoredTotp, Suspension, ThrottleEntry,
    ThrottleInsert, ThrottleScope,
};
use crate::memory::{Credentials, Names};
use crate::{
    AccountRecord, Blind, CaseloadEntry, ConsultationRows, ExistingPerson, GrantDecision,
    GrantRequest, ImportKind, ImportMark, ImportProgress, Inventory, MandateRow,
    NewBreakGlassReason, NewMandate, PersonIndex, RegistryStore, RowRefusal, SealedPerson,
    StorageError, StoredBreakGlassReason, StoredCredential, StoredMandate, StoredPerson,
    UpsertCount, WrappedKeyRow, migrate,
};

use persons::PERSON_INDEXES;
// The guard's module reads them from here.
use values::{instant_text, parse_instant};

mod accounts;
mod activation;
mod clients;
mod consultation;
mod decisions;
mod federation;
mod grants;
mod guard;
pub(crate) mod import;
mod incidents;
mod inventory;
mod keys;
mod login;
mod mandates;
mod notices;
mod organisations;
mod persons;
mod sessions;
mod values;

/// File name of the registry inside the data directory.
pub const FILE_NAME: &str = "registry.db";
const READERS: usize = 4;

/// The SQLite registry.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: SqliteReaders,
    names: Names,
    credentials: Credentials,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/registry.db` and applies migrations.
    /// The directory must exist.
    pub async fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(FILE_NAME);
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, StorageError> {
        if !path.parent().is_some_and(Path::is_dir) {
            return Err(StorageError::Open {
                path: path.display().to_string(),
                reason: "the data directory does not exist (run `rempart init` first)".into(),
            });
        }
        let mut writer = Connection::open(&path)?;
        // Larger pages: fewer page splits and less per-page overhead for
        // rows of ~400 bytes. Only takes effect when the file is created.
        writer.execute_batch("PRAGMA page_size = 16384;")?;
        writer.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -65536;
             PRAGMA secure_delete = ON;",
        )?;
        migrate_sqlite(&mut writer)?;
        writer.execute_batch(PERSON_INDEXES)?;
        import::rebuild_dropped_indexes(&mut writer)?;
        let readers = SqliteReaders::open(
            &path,
            READERS,
            "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;",
        )?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                names: Names::default(),
                credentials: Credentials::default(),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// A point read (one indexed lookup, tens of microseconds): run on the
    /// calling thread with a free reader connection, which saves the two
    /// thread hand-offs of the blocking pool on every request of the
    /// consultation path. Falls back to the pool when every reader is busy.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        match self.inner.readers.try_with(f) {
            Ok(done) => done,
            Err(f) => self.read(f).await,
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }
}

fn migrate_sqlite(conn: &mut Connection) -> Result<(), StorageError> {
    rempart_sql::migrate_sqlite(conn, migrate::SQLITE)
}

#[async_trait]
impl RegistryStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn reserve_person_ids(&self, n: u64) -> Result<PersonId, StorageError> {
        persons::reserve_person_ids(self, n).await
    }

    async fn lookup_persons(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<ExistingPerson>>, StorageError> {
        persons::lookup_persons(self, ft_blinds).await
    }

    async fn lookup_person_ids(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<PersonId>>, StorageError> {
        persons::lookup_person_ids(self, ft_blinds).await
    }

    async fn write_persons_marked(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
        mark: Option<ImportMark>,
    ) -> Result<(), StorageError> {
        persons::write_persons(self, inserts, updates, mark).await
    }

    async fn import_progress(
        &self,
        kind: ImportKind,
    ) -> Result<Option<ImportProgress>, StorageError> {
        import::import_progress(self, kind).await
    }

    async fn start_import(
        &self,
        kind: ImportKind,
        file_id: [u8; 32],
        bulk: bool,
    ) -> Result<(), StorageError> {
        import::start_import(self, kind, file_id, bulk).await
    }

    async fn finish_import(&self, kind: ImportKind) -> Result<(), StorageError> {
        import::finish_import(self, kind).await
    }

    async fn read_person(
        &self,
        id: PersonId,
        groups: &[FieldGroup],
    ) -> Result<Option<StoredPerson>, StorageError> {
        persons::read_person(self, id, groups).await
    }

    async fn find_persons(
        &self,
        index: PersonIndex,
        value: Blind,
    ) -> Result<Vec<PersonId>, StorageError> {
        persons::find_persons(self, index, value).await
    }

    async fn keys_to_rewrap(
        &self,
        target: u32,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<WrappedKeyRow>, StorageError> {
        keys::keys_to_rewrap(self, target, after, limit).await
    }

    async fn store_rewrapped(&self, rows: Vec<(WrappedKeyRow, u32)>) -> Result<u64, StorageError> {
        keys::store_rewrapped(self, rows).await
    }

    async fn shred_person(&self, id: PersonId) -> Result<bool, StorageError> {
        persons::shred_person(self, id).await
    }

    async fn upsert_organisations(
        &self,
        orgs: Vec<Organisation>,
    ) -> Result<UpsertCount, StorageError> {
        organisations::upsert_organisations(self, orgs).await
    }

    async fn upsert_accounts(
        &self,
        accounts: Vec<Account>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        accounts::upsert_accounts(self, accounts).await
    }

    async fn upsert_mandates_marked(
        &self,
        mandates: Vec<MandateRow>,
        mark: Option<ImportMark>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        mandates::upsert_mandates(self, mandates, mark).await
    }

    async fn mandates_of_person(
        &self,
        person_id: PersonId,
    ) -> Result<Vec<StoredMandate>, StorageError> {
        mandates::mandates_of_person(self, person_id).await
    }

    async fn inventory(&self) -> Result<Inventory, StorageError> {
        inventory::inventory(self).await
    }

    async fn begin_bulk_load(&self, resuming: bool) -> Result<bool, StorageError> {
        persons::begin_bulk_load(self, resuming).await
    }

    async fn begin_mandate_bulk_load(&self, resuming: bool) -> Result<bool, StorageError> {
        import::begin_mandate_bulk_load(self, resuming).await
    }

    async fn end_bulk_load(&self) -> Result<(), StorageError> {
        persons::end_bulk_load(self).await
    }

    async fn person_ids(&self, after: PersonId, limit: u32) -> Result<Vec<PersonId>, StorageError> {
        persons::person_ids(self, after, limit).await
    }

    async fn account_by_login(
        &self,
        login: &Reference,
    ) -> Result<Option<AccountRecord>, StorageError> {
        accounts::account_by_login(self, login).await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StorageError> {
        accounts::account_by_id(self, id).await
    }

    async fn accounts_of_organisation(
        &self,
        organisation_id: OrganisationId,
    ) -> Result<Vec<AccountRecord>, StorageError> {
        accounts::accounts_of_organisation(self, organisation_id).await
    }

    async fn organisations(&self) -> Result<Vec<(OrganisationId, Organisation)>, StorageError> {
        organisations::organisations(self).await
    }

    async fn set_account_state(
        &self,
        account_id: AccountId,
        state: AccountState,
    ) -> Result<bool, StorageError> {
        accounts::set_account_state(self, account_id, state).await
    }

    async fn insert_credential(
        &self,
        account_id: AccountId,
        secret_digest: [u8; 32],
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<i64, StorageError> {
        consultation::insert_credential(self, account_id, secret_digest, created_at, expires_at)
            .await
    }

    async fn credential(
        &self,
        id: i64,
    ) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
        consultation::credential(self, id).await
    }

    async fn consultation_rows(
        &self,
        credential_id: i64,
        person_id: PersonId,
    ) -> Result<ConsultationRows, StorageError> {
        consultation::consultation_rows(self, credential_id, person_id).await
    }

    async fn revoke_credentials(
        &self,
        account_id: AccountId,
        id: Option<i64>,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        consultation::revoke_credentials(self, account_id, id, at).await
    }

    async fn grant_mandate(&self, m: NewMandate) -> Result<StoredMandate, StorageError> {
        mandates::grant_mandate(self, m).await
    }

    async fn rehearse_grant(&self, m: &NewMandate) -> Result<(), StorageError> {
        mandates::rehearse_grant(self, m).await
    }

    async fn request_grant(
        &self,
        m: NewMandate,
        requested_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<GrantRequest, StorageError> {
        grants::request_grant(self, m, requested_by, at).await
    }

    async fn decide_grant(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<GrantDecision>, StorageError> {
        grants::decide_grant(self, id, officer_id, approve, at).await
    }

    async fn rehearse_grant_decision(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        grants::rehearse_grant_decision(self, id, officer_id, approve, at).await
    }

    async fn pending_grants(&self) -> Result<Vec<GrantRequest>, StorageError> {
        grants::pending_grants(self).await
    }

    async fn grant_break_glass(
        &self,
        m: NewMandate,
        reason: NewBreakGlassReason,
    ) -> Result<StoredMandate, StorageError> {
        mandates::grant_break_glass(self, m, reason).await
    }

    async fn break_glass_reasons(
        &self,
        person_id: PersonId,
    ) -> Result<Vec<StoredBreakGlassReason>, StorageError> {
        mandates::break_glass_reasons(self, person_id).await
    }

    async fn revoke_mandate(&self, id: MandateId, at: DateTime<Utc>) -> Result<bool, StorageError> {
        mandates::revoke_mandate(self, id, at).await
    }

    async fn mandate(&self, id: MandateId) -> Result<Option<StoredMandate>, StorageError> {
        mandates::mandate(self, id).await
    }

    async fn caseload(
        &self,
        organisation_id: OrganisationId,
        account_id: AccountId,
        purpose: Option<Purpose>,
        on: NaiveDate,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<CaseloadEntry>, StorageError> {
        mandates::caseload(self, organisation_id, account_id, purpose, on, after, limit).await
    }
}

#[async_trait]
impl AuthStore for SqliteStore {
    async fn request_account(&self, r: NewAccountRequest) -> Result<AccountRecord, StorageError> {
        accounts::request_account(self, r).await
    }

    async fn rehearse(
        &self,
        change: &crate::auth::AccountChange,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::auth::Rehearsal>, StorageError> {
        decisions::rehearse(self, change, at).await
    }

    async fn decide_account(
        &self,
        account_id: AccountId,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountRecord>, StorageError> {
        decisions::decide_account(self, account_id, officer_id, approve, at).await
    }

    async fn requests_since(
        &self,
        requested_by: AccountId,
        since: DateTime<Utc>,
    ) -> Result<u32, StorageError> {
        accounts::requests_since(self, requested_by, since).await
    }

    async fn pending_requests(&self) -> Result<Vec<ReviewEntry>, StorageError> {
        accounts::pending_requests(self).await
    }

    async fn lifecycle(
        &self,
        account_id: AccountId,
    ) -> Result<Option<AccountLifecycle>, StorageError> {
        accounts::lifecycle(self, account_id).await
    }

    async fn record_login(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        accounts::record_login(self, account_id, at).await
    }

    async fn record_activity(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        accounts::record_activity(self, account_id, at).await
    }

    async fn disable_inactive(
        &self,
        last_login_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<AccountId>, StorageError> {
        accounts::disable_inactive(self, last_login_before, at).await
    }

    async fn accounts_to_review(
        &self,
        organisation_id: Option<OrganisationId>,
    ) -> Result<Vec<ReviewEntry>, StorageError> {
        accounts::accounts_to_review(self, organisation_id).await
    }

    async fn password(
        &self,
        account_id: AccountId,
    ) -> Result<Option<(String, String)>, StorageError> {
        login::password(self, account_id).await
    }

    async fn set_password(
        &self,
        account_id: AccountId,
        phc: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        login::set_password(self, account_id, phc, at).await
    }

    async fn swap_throttle(
        &self,
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        login::swap_throttle(self, account_id, expected, next).await
    }

    async fn trust_login_device(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        replaces: Option<&[u8; 32]>,
    ) -> Result<(), StorageError> {
        login::trust_login_device(self, digest, account_id, at, expires_at, replaces).await
    }

    async fn login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        login::login_device_throttle(self, digest, account_id, now).await
    }

    async fn swap_login_device_throttle(
        &self,
        digest: &[u8; 32],
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        login::swap_login_device_throttle(self, digest, account_id, expected, next).await
    }

    async fn login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
    ) -> Result<Option<String>, StorageError> {
        login::login_throttle(self, scope, key).await
    }

    async fn insert_login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
        entry: &ThrottleEntry,
        max_rows: Option<u64>,
    ) -> Result<ThrottleInsert, StorageError> {
        login::insert_login_throttle(self, scope, key, entry, max_rows).await
    }

    async fn swap_login_throttle(
        &self,
        scope: ThrottleScope,
        key: &[u8],
        expected: &str,
        next: Option<&ThrottleEntry>,
    ) -> Result<bool, StorageError> {
        login::swap_login_throttle(self, scope, key, expected, next).await
    }

    async fn prune_login_throttles(
        &self,
        scope: ThrottleScope,
        now_unix: i64,
    ) -> Result<u64, StorageError> {
        login::prune_login_throttles(self, scope, now_unix).await
    }

    async fn evict_login_throttle(&self, scope: ThrottleScope) -> Result<bool, StorageError> {
        login::evict_login_throttle(self, scope).await
    }

    async fn totp(&self, account_id: AccountId) -> Result<Option<StoredTotp>, StorageError> {
        login::totp(self, account_id).await
    }

    async fn set_totp(&self, t: StoredTotp) -> Result<(), StorageError> {
        login::set_totp(self, t).await
    }

    async fn totp_secrets(
        &self,
        after: AccountId,
        limit: u32,
    ) -> Result<Vec<(AccountId, Vec<u8>)>, StorageError> {
        login::totp_secrets(self, after, limit).await
    }

    async fn replace_totp_secret(
        &self,
        account_id: AccountId,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError> {
        login::replace_totp_secret(self, account_id, old, new).await
    }

    async fn accept_totp_step(
        &self,
        account_id: AccountId,
        step: u64,
    ) -> Result<bool, StorageError> {
        login::accept_totp_step(self, account_id, step).await
    }

    async fn passkeys(&self, account_id: AccountId) -> Result<Vec<StoredPasskeyRow>, StorageError> {
        login::passkeys(self, account_id).await
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskeyRow>, StorageError> {
        login::passkey_by_credential(self, credential_id).await
    }

    async fn add_passkey(&self, p: StoredPasskeyRow) -> Result<(), StorageError> {
        login::add_passkey(self, p).await
    }

    async fn update_passkey(
        &self,
        credential_id: &[u8],
        data: &str,
        used_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        login::update_passkey(self, credential_id, data, used_at).await
    }

    async fn request_reset(
        &self,
        account_id: AccountId,
        kind: ResetKind,
        requested_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<CredentialReset, StorageError> {
        decisions::request_reset(self, account_id, kind, requested_by, at).await
    }

    async fn decide_reset(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<CredentialReset>, StorageError> {
        decisions::decide_reset(self, id, officer_id, approve, at).await
    }

    async fn pending_resets(&self) -> Result<Vec<CredentialReset>, StorageError> {
        decisions::pending_resets(self).await
    }

    async fn issue_activation(&self, a: NewActivation) -> Result<(), StorageError> {
        activation::issue_activation(self, a).await
    }

    async fn activation(
        &self,
        account_id: AccountId,
    ) -> Result<Option<StoredActivation>, StorageError> {
        activation::activation(self, account_id).await
    }

    async fn swap_activation_throttle(
        &self,
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        activation::swap_activation_throttle(self, account_id, expected, next).await
    }

    async fn complete_activation(
        &self,
        account_id: AccountId,
        digest: [u8; 32],
        factors: ActivationFactors,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        activation::complete_activation(self, account_id, digest, factors, now).await
    }

    async fn link_federation(&self, link: FederationLink) -> Result<(), StorageError> {
        federation::link_federation(self, link).await
    }

    async fn unlink_federation(
        &self,
        issuer: &str,
        subject: &str,
        unlinked_by: AccountId,
        at: DateTime<Utc>,
    ) -> Result<Option<AccountId>, StorageError> {
        federation::unlink_federation(self, issuer, subject, unlinked_by, at).await
    }

    async fn federation_link(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<FederationLink>, StorageError> {
        federation::federation_link(self, issuer, subject).await
    }

    async fn put_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sessions::put_ceremony(self, key, kind, payload, expires_at).await
    }

    async fn take_ceremony(
        &self,
        key: [u8; 32],
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        sessions::take_ceremony(self, key, kind, now).await
    }

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        sessions_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, StorageError> {
        sessions::purge_expired(self, now, sessions_before, limit).await
    }

    async fn insert_session(&self, s: StoredSession) -> Result<(), StorageError> {
        sessions::insert_session(self, s).await
    }

    async fn session(
        &self,
        id_digest: [u8; 32],
    ) -> Result<Option<(StoredSession, AccountRecord)>, StorageError> {
        sessions::session(self, id_digest).await
    }

    async fn touch_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sessions::touch_session(self, id_digest, at).await
    }

    async fn mark_step_up(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sessions::mark_step_up(self, id_digest, at).await
    }

    async fn end_session(
        &self,
        id_digest: [u8; 32],
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<bool, StorageError> {
        sessions::end_session(self, id_digest, at, reason).await
    }

    async fn end_sessions_of_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64, StorageError> {
        sessions::end_sessions_of_account(self, account_id, at, reason).await
    }

    async fn suspend_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<Suspension>, StorageError> {
        sessions::suspend_account(self, account_id, at, reason).await
    }

    async fn insert_api_client(&self, cl: ApiClientRow) -> Result<(), StorageError> {
        clients::insert_api_client(self, cl).await
    }

    async fn api_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(ApiClientRow, AccountRecord)>, StorageError> {
        clients::api_client(self, client_id).await
    }

    async fn revoke_api_clients_of_account(
        &self,
        account_id: AccountId,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        clients::revoke_api_clients_of_account(self, account_id, at).await
    }

    async fn revoke_api_client(
        &self,
        client_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        clients::revoke_api_client(self, client_id, at).await
    }

    async fn insert_access_token(&self, t: AccessTokenRow) -> Result<(), StorageError> {
        clients::insert_access_token(self, t).await
    }

    async fn access_token(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<(AccessTokenRow, AccountRecord)>, StorageError> {
        clients::access_token(self, digest).await
    }

    async fn insert_replay_if_new(
        &self,
        key: [u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        clients::insert_replay_if_new(self, key, expires_at, now).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use rusqlite::params;

    use super::clients::{ACCESS_TOKEN_SQL, REPLAY_SQL};
    use super::consultation::CREDENTIAL_SQL;
    use super::mandates::{CASELOAD, MANDATES_OF_PERSON_SQL};
    use super::sessions::{SESSION_SQL, TOUCH_SQL};
    use super::*;

    fn plan(c: &Connection, sql: &str, p: impl rusqlite::Params) -> String {
        let lines: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(p, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        lines.join("\n")
    }

    /// The read path's queries search indexes and sort nothing, whatever
    /// the size of an organisation.
    #[test]
    fn read_path_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        let c = lock(&store.inner.writer);
        let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let caseload = plan(&c, CASELOAD, params![1, 2, 0, day, None::<&str>, 51]);
        assert!(
            caseload.contains(
                "SEARCH m USING INDEX mandate_org_wide (organisation_id=? AND person_id>?)"
            ),
            "{caseload}"
        );
        assert!(
            caseload.contains(
                "SEARCH m USING INDEX mandate_account_person (account_id=? AND person_id>?)"
            ),
            "{caseload}"
        );
        assert!(!caseload.contains("B-TREE"), "{caseload}");
        // One seek in the covering index, no row fetched per mandate.
        let of_person = plan(&c, &MANDATES_OF_PERSON_SQL, [1]);
        assert!(
            of_person.contains("SEARCH mandate USING COVERING INDEX mandate_person (person_id=?)"),
            "{of_person}"
        );
        let credential = plan(&c, &CREDENTIAL_SQL, [1]);
        assert!(
            credential.contains("SEARCH c USING INTEGER PRIMARY KEY (rowid=?)"),
            "{credential}"
        );
    }

    /// The consultation path's lookups keep their compiled plan from one
    /// call to the next: SQLite re-prepares a statement whose plan it thinks
    /// depends on a bound value, which cost a sixth of the server's CPU.
    #[test]
    fn hot_lookups_are_never_re_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        store.inner.readers.with(|c| {
            for sql in [&*MANDATES_OF_PERSON_SQL, &*CREDENTIAL_SQL] {
                let mut stmt = c.prepare(sql).unwrap();
                for id in 1..=5i64 {
                    let mut rows = stmt.query([id]).unwrap();
                    while rows.next().unwrap().is_some() {}
                }
                assert_eq!(
                    stmt.get_status(rusqlite::StatementStatus::RePrepare),
                    0,
                    "{sql}"
                );
            }
        });
    }

    /// The lookups of every request search their primary key, and keep
    /// their compiled plan from one call to the next.
    #[test]
    fn hot_lookups_use_their_keys_and_are_never_re_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        let c = lock(&store.inner.writer);
        let key = [7u8; 32];
        let session = plan(&c, &SESSION_SQL, [&key[..]]);
        assert!(
            session.contains("SEARCH s USING PRIMARY KEY (id_digest=?)"),
            "{session}"
        );
        let token = plan(&c, &ACCESS_TOKEN_SQL, [&key[..]]);
        assert!(
            token.contains("SEARCH t USING PRIMARY KEY (digest=?)"),
            "{token}"
        );
        assert!(
            token.contains("SEARCH c USING PRIMARY KEY (client_id=?)"),
            "{token}"
        );
        for sql in [&*SESSION_SQL, &*ACCESS_TOKEN_SQL, TOUCH_SQL, REPLAY_SQL] {
            let mut stmt = c.prepare(sql).unwrap();
            for n in 1..=5u8 {
                let k = [n; 32];
                match stmt.parameter_count() {
                    1 => {
                        let mut rows = stmt.query([&k[..]]).unwrap();
                        while rows.next().unwrap().is_some() {}
                    }
                    2 => {
                        stmt.execute(params![&k[..], "2026-01-01T00:00:00.000000Z"])
                            .unwrap();
                    }
                    _ => {
                        stmt.execute(params![
                            &k[..],
                            "2026-01-01T00:01:00.000000Z",
                            "2026-01-01T00:00:00.000000Z"
                        ])
                        .unwrap();
                    }
                }
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }
}
