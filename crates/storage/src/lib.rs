//! Rempart's registry storage: one interface, [`RegistryStore`], two
//! backends, SQLite (embedded default, [`sqlite`]) and PostgreSQL
//! (production, [`postgres`]).
//!
//! The store never sees a clear value of a person: it keeps sealed blobs,
//! wrapped data keys and blind indexes that the vault computed. It knows
//! organisations, accounts and mandates in clear, because they hold no
//! personal data of job seekers (account logins are pseudonymous handles).
//!
//! Schema changes are versioned migrations under `migrations/<backend>/`,
//! applied in order when a store is opened; each backend has its own SQL
//! but the same tables, columns and meaning.

pub mod migrate;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use rempart_domain::{
    Account, AccountState, FieldGroup, Organisation, OrganisationKind, Purpose, Reference, Role,
};

/// A 16-byte blind index or fingerprint, computed by the vault.
pub type Blind = [u8; 16];

/// A person's row as the vault sealed it: nothing in it is readable without the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPerson {
    /// Opaque id, reserved with [`RegistryStore::reserve_person_ids`].
    pub id: i64,
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
    pub id: i64,
    pub fingerprint: Blind,
    pub kek_version: u32,
    pub dek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// A person's key material and the sealed groups asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPerson {
    pub id: i64,
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
    pub id: i64,
    pub kek_version: u32,
    pub dek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// A mandate with its person already resolved to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateRow {
    pub reference: Reference,
    pub organisation: Reference,
    pub account: Option<Reference>,
    pub person_id: i64,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
}

/// A mandate as stored, with ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMandate {
    pub id: i64,
    pub reference: Reference,
    pub organisation: Reference,
    pub account: Option<Reference>,
    pub person_id: i64,
    pub purpose: Purpose,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
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
    Sqlite(#[from] rusqlite::Error),
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
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("background task failed: {0}")]
    Task(String),
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
            unknown @ M::Unknown { .. } => StorageError::Corrupt(unknown.to_string()),
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
    async fn reserve_person_ids(&self, n: u64) -> Result<i64, StorageError>;

    /// For each blind France Travail id, the stored person it names, if any
    /// (shredded persons are not found).
    async fn lookup_persons(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<ExistingPerson>>, StorageError>;

    /// Inserts new persons and replaces changed ones, in one transaction.
    /// An update only applies if the stored fingerprint is still
    /// `previous` (else [`StorageError::Conflict`] and nothing is written).
    async fn write_persons(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
    ) -> Result<(), StorageError>;

    /// Reads a person's key material and the sealed groups asked for.
    async fn read_person(
        &self,
        id: i64,
        groups: &[FieldGroup],
    ) -> Result<Option<StoredPerson>, StorageError>;

    /// Persons whose blind index of the given kind equals `blind`.
    async fn find_persons(
        &self,
        index: PersonIndex,
        blind: Blind,
    ) -> Result<Vec<i64>, StorageError>;

    /// Up to `limit` wrapped keys with id > `after` whose KEK version is not
    /// `target`, in id order: the work list of a rotation.
    async fn keys_to_rewrap(
        &self,
        target: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<WrappedKeyRow>, StorageError>;

    /// Stores rewrapped keys. Each item is (the row with its *new* KEK
    /// version and wrapped key, the *old* KEK version it was read with); it
    /// applies only if the stored version is still the old one (so a
    /// concurrent write is never overwritten). Returns how many rows were
    /// updated.
    async fn store_rewrapped(&self, rows: Vec<(WrappedKeyRow, u32)>) -> Result<u64, StorageError>;

    /// Destroys a person's data key and blind indexes: the sealed groups
    /// stay, unreadable forever. Returns false if there was no such person
    /// or it was already shredded.
    async fn shred_person(&self, id: i64) -> Result<bool, StorageError>;

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
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError>;

    /// Mandates held on a person, live or not.
    async fn mandates_of_person(&self, person_id: i64) -> Result<Vec<StoredMandate>, StorageError>;

    /// Counts and sizes.
    async fn inventory(&self) -> Result<Inventory, StorageError>;

    /// Ids of stored persons, `after` exclusive, in id order (for sampling and scans).
    async fn person_ids(&self, after: i64, limit: u32) -> Result<Vec<i64>, StorageError>;

    /// Prepares a first load: if no person is stored yet, drops the person
    /// indexes (rebuilt by [`RegistryStore::end_bulk_load`], far faster
    /// than maintaining three random-key indexes row by row) and returns
    /// true. Otherwise does nothing and returns false. The caller must then
    /// insert no two persons with the same France Travail id (the unique
    /// index is back only at the end) and call `end_bulk_load` even on error.
    async fn begin_bulk_load(&self) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// Rebuilds any missing person index. Also run when a store is opened,
    /// so an interrupted bulk load never leaves a store without them.
    async fn end_bulk_load(&self) -> Result<(), StorageError> {
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

/// Opens the store named by `url`: `postgres://…`/`postgresql://…`, or a
/// data directory path (SQLite file `registry.db` inside it). Migrations run.
pub async fn open(url_or_dir: &str) -> Result<Store, StorageError> {
    if url_or_dir.starts_with("postgres://") || url_or_dir.starts_with("postgresql://") {
        postgres::PgStore::connect(url_or_dir, postgres::DEFAULT_SCHEMA).await
    } else {
        let dir = std::path::Path::new(url_or_dir);
        Ok(Arc::new(sqlite::SqliteStore::open(dir).await?))
    }
}

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

/// Accounts accepted by [`check_account_links`] with their organisation id,
/// and the refusals.
pub(crate) type LinkCheck<'a> = (Vec<(&'a Account, i64)>, Vec<RowRefusal>);

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
    mut org_of_code: impl FnMut(&str) -> Result<Option<(i64, OrganisationKind)>, StorageError>,
    mut stored_account: impl FnMut(&str) -> Result<Option<(i64, Role)>, StorageError>,
) -> Result<LinkCheck<'_>, StorageError> {
    use std::collections::HashMap;
    let mut refused = Vec::new();
    let mut orgs: Vec<Option<(i64, OrganisationKind)>> = Vec::with_capacity(accounts.len());
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
    let mut stored: HashMap<String, Option<(i64, Role)>> = HashMap::new();
    // Refusing a row may orphan rows that name it: repeat until stable.
    loop {
        let batch: HashMap<&str, (i64, Role)> = accounts
            .iter()
            .zip(&orgs)
            .filter_map(|(a, o)| o.map(|(id, _)| (a.login.as_str(), (id, a.role))))
            .collect();
        let mut newly = Vec::new();
        for (index, a) in accounts.iter().enumerate() {
            let Some((own, kind)) = orgs[index] else {
                continue;
            };
            let mut lookup = |login: &str| -> Result<Option<(i64, Role)>, StorageError> {
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
        .filter_map(|(a, o)| o.map(|(id, _)| (a, id)))
        .collect();
    Ok((valid, refused))
}
