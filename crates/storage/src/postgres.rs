//! PostgreSQL backend: a pool of connections (deadpool-postgres, no TLS:
//! the server is expected on a trusted network or a local socket), all
//! working in one schema (`registry` by default) through their
//! `search_path`. Same tables, columns and meaning as the SQLite backend.
//!
//! Bulk person inserts go through binary `COPY`, bulk updates and lookups
//! through one statement over `UNNEST`ed arrays, so an import batch costs a
//! handful of round trips whatever its size.
//!
//! SQLite has one writer; here writers run concurrently, so the few
//! read-then-write sequences (upserts of organisations, accounts and
//! mandates) take table locks that serialise them against each other while
//! leaving readers alone, and every other compare-and-set is one
//! conditional statement (`UPDATE … WHERE <expected state>`, `INSERT … ON
//! CONFLICT`), which READ COMMITTED re-evaluates on the latest row version
//! after a concurrent writer commits: of two racing writers, one wins.
//!
//! The operations live by concern in the submodules, with the same file
//! names as the SQLite backend's; the trait impls below only delegate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rempart_domain::{
    Account, AccountId, AccountState, FieldGroup, MandateId, Organisation, OrganisationId,
    PersonId, Purpose, Reference,
};
use rempart_sql::{describe, redact_url};
use tokio_postgres::NoTls;

use crate::auth::{
    AccessTokenRow, AccountLifecycle, ActivationFactors, ApiClientRow, AuthStore, CredentialReset,
    FederationLink, NewAccountRequest, NewActivation, Purged, ResetKind, ReviewEntry,
    StoredActivation, StoredPasskeyRow, StoredSession, StoredTotp, Suspension, ThrottleEntry,
    ThrottleInsert, ThrottleScope,
};
use crate::memory::{Credentials, Names};
use crate::{
    AccountRecord, Blind, CaseloadEntry, ConsultationRows, ExistingPerson, ImportKind, ImportMark,
    ImportProgress, Inventory, MandateRow, NewBreakGlassReason, NewMandate, PersonIndex,
    RegistryStore, RowRefusal, SealedPerson, StorageError, StoredBreakGlassReason,
    StoredCredential, StoredMandate, StoredPerson, UpsertCount, WrappedKeyRow, migrate,
};

mod accounts;
mod activation;
mod clients;
mod consultation;
mod decisions;
mod federation;
mod grants;
mod guard;
mod import;
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

/// Schema the registry lives in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "registry";

/// Connections kept by the pool.
const POOL_SIZE: usize = 16;
/// Applied when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL registry.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    schema: String,
    names: Arc<Names>,
    credentials: Arc<Credentials>,
}

impl PgStore {
    /// Connects to `url`, creates `schema` if needed, applies migrations
    /// and returns a shared handle.
    pub async fn connect(url: &str, schema: &str) -> Result<Arc<dyn RegistryStore>, StorageError> {
        Ok(Arc::new(Self::connect_store(url, schema).await?))
    }

    /// Same as [`PgStore::connect`], returning the concrete type.
    pub async fn connect_store(url: &str, schema: &str) -> Result<PgStore, StorageError> {
        check_schema_name(schema)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StorageError::Open {
            path: redact_url(url),
            reason: describe(&e),
        })?;
        // Every connection of the pool works in the schema. The name was
        // checked above, so it needs neither quoting nor escaping here.
        let mut options = config.get_options().unwrap_or_default().to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c search_path=");
        options.push_str(schema);
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("rempart");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StorageError::Pool(describe(&e)))?;
        let store = PgStore {
            pool,
            schema: schema.to_string(),
            names: Arc::default(),
            credentials: Arc::default(),
        };
        store.migrate().await.map_err(|e| match e {
            StorageError::Pool(reason) => StorageError::Open {
                path: redact_url(url),
                reason,
            },
            other => other,
        })?;
        store.end_bulk_load().await?;
        Ok(store)
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema and everything in it (for tests).
    pub async fn drop_schema(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StorageError> {
        self.pool
            .get()
            .await
            .map_err(|e| StorageError::Pool(describe(&e)))
    }

    /// Creates the schema if missing and applies pending migrations, in one
    /// transaction under an advisory lock proper to the schema, so that
    /// concurrent openers wait for each other instead of racing.
    async fn migrate(&self) -> Result<(), StorageError> {
        let schema = self.schema.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        rempart_sql::migrate_postgres::<StorageError>(
            &tx,
            schema,
            lock_key(schema),
            migrate::POSTGRES,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Schema names are spliced into SQL and connection options: lowercase
/// ASCII letters, digits and underscores only, not starting with a digit,
/// at most 63 bytes, and not a system schema.
fn check_schema_name(schema: &str) -> Result<(), StorageError> {
    if rempart_sql::is_plain_name(schema) {
        Ok(())
    } else {
        Err(StorageError::Open {
            path: format!("schema {schema:?}"),
            reason: "a schema name is 1 to 63 lowercase letters, digits or underscores, \
                     not starting with a digit, and not a system schema"
                .into(),
        })
    }
}

/// Advisory lock key of a schema's migrations.
fn lock_key(schema: &str) -> i64 {
    rempart_sql::lock_key(&format!("rempart migrations {schema}"))
}

#[async_trait]
impl RegistryStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
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

    async fn refresh_statistics(&self) -> Result<(), StorageError> {
        persons::refresh_statistics(self).await
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
    ) -> Result<crate::GrantRequest, StorageError> {
        grants::request_grant(self, m, requested_by, at).await
    }

    async fn decide_grant(
        &self,
        id: i64,
        officer_id: AccountId,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::GrantDecision>, StorageError> {
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

    async fn pending_grants(&self) -> Result<Vec<crate::GrantRequest>, StorageError> {
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
impl AuthStore for PgStore {
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
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for ok in ["registry", "t_1_2_3", "_x", "a9"] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Registry",
            "a-b",
            "a;drop",
            "a b",
            "9a",
            "pg_catalog",
            "information_schema",
            "\"x\"",
            &"a".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("host=h password=x"),
            "PostgreSQL connection string"
        );
    }

    #[test]
    fn lock_keys_differ_by_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("a"), lock_key("a"));
    }
}
