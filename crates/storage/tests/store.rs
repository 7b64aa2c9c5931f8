//! One suite, two backends: every scenario runs on SQLite (in a temporary
//! directory) and on PostgreSQL (in a fresh schema of the database named by
//! `REMPART_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! dropped afterwards), as two tests, `<scenario>::sqlite` and
//! `<scenario>::postgres`: each backend passes or fails on its own.
//! PostgreSQL being unreachable is a failure, not a skip.
//!
//! This file is the root of the crate's one integration-test binary: the
//! harness and the fixtures the scenarios share. The scenarios live in
//! `store/<concern>.rs`.
//!
//! Blobs and blind indexes are synthetic byte patterns: no personal data.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rempart_domain::{
    Account, AccountId, AccountState, FieldGroup, MandateId, Organisation, OrganisationId,
    OrganisationKind, PersonId, Purpose, Reference, Role,
};
use rempart_guard::store::GuardStore;
use rempart_storage::postgres::PgStore;
use rempart_storage::sqlite::SqliteStore;
use rempart_storage::{
    AuthStore, Blind, ExistingPerson, MandateRow, PersonIndex, RegistryStore, RowRefusal,
    SealedPerson, StorageError, StoredSession, Stores, UpsertCount,
};
use rempart_testdb::TestSchema;
use tempfile::TempDir;

// ---------------------------------------------------------------- harness

/// Runs each scenario `async fn scenario(backend: Backend)` as two tests,
/// `scenario::sqlite` and `scenario::postgres`, so that a failure on one
/// backend never hides the other's result. Used right after the scenario,
/// in the same module.
macro_rules! both_backends {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario($crate::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario($crate::Backend::Postgres).await;
            }
        }
    };
}

#[path = "store/accounts.rs"]
mod accounts;
#[path = "store/consultation.rs"]
mod consultation;
#[path = "store/guard.rs"]
mod guard;
#[path = "store/incidents.rs"]
mod incidents;
#[path = "store/keys.rs"]
mod keys;
#[path = "store/login.rs"]
mod login;
#[path = "store/mandates.rs"]
mod mandates;
#[path = "store/notices.rs"]
mod notices;
#[path = "store/organisations.rs"]
mod organisations;
#[path = "store/persons.rs"]
mod persons;
#[path = "store/schema.rs"]
mod schema;
#[path = "store/sessions.rs"]
mod sessions;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The name its stores give ([`RegistryStore::backend`]), which
    /// failure messages carry.
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where a test's database lives: a temporary directory (SQLite), or a
/// fresh schema of the test database, dropped when the test ends
/// (PostgreSQL). Nothing is opened yet: a test may first write an older
/// version's tables by hand.
enum Place {
    Sqlite(TempDir),
    Postgres(TestSchema),
}

impl Place {
    fn new(backend: Backend) -> Place {
        match backend {
            Backend::Sqlite => Place::Sqlite(tempfile::tempdir().expect("temporary directory")),
            Backend::Postgres => Place::Postgres(TestSchema::new("t")),
        }
    }

    /// The SQLite data directory.
    fn dir(&self) -> &Path {
        match self {
            Place::Sqlite(dir) => dir.path(),
            Place::Postgres(_) => panic!("a PostgreSQL test has no data directory"),
        }
    }

    /// The PostgreSQL database and schema.
    fn pg(&self) -> &TestSchema {
        match self {
            Place::Postgres(pg) => pg,
            Place::Sqlite(_) => panic!("a SQLite test has no PostgreSQL schema"),
        }
    }

    /// Opens a store on this database, migrating it; each call opens
    /// another one, as another process would.
    async fn try_open(&self) -> Result<Stores, StorageError> {
        Ok(match self {
            Place::Sqlite(dir) => SqliteStore::open(dir.path()).await?.into(),
            Place::Postgres(pg) => PgStore::connect_store(&pg.url, &pg.schema).await?.into(),
        })
    }

    /// [`Place::try_open`], which must succeed.
    async fn open(&self) -> Stores {
        self.try_open().await.unwrap_or_else(|e| match self {
            Place::Sqlite(dir) => panic!("SQLite store in {}: {e}", dir.path().display()),
            Place::Postgres(TestSchema { url, schema }) => panic!(
                "PostgreSQL test database unusable at {url} (schema {schema}): {e}\n\
                 Start PostgreSQL or set REMPART_TEST_DATABASE_URL; these tests never skip."
            ),
        })
    }

    /// Runs `sql` on a connection of its own, beside the stores (in the
    /// test's schema on PostgreSQL); a refusal comes back as the database's
    /// message.
    fn exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Place::Sqlite(dir) => {
                rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
                    .and_then(|db| db.execute_batch(sql))
                    .map_err(|e| e.to_string())
            }
            Place::Postgres(TestSchema { url, schema }) => rempart_testdb::exec_blocking(
                url,
                &format!("SET search_path TO \"{schema}\"; {sql}"),
            ),
        }
    }
}

/// One backend's store, empty and migrated, seen through its three
/// interfaces (the same connections behind all three).
struct Db {
    stores: Stores,
    /// Last, so that the stores close before their schema is dropped.
    place: Place,
}

impl Db {
    /// `backend` on a fresh database. Every test checks here that the
    /// store is the backend asked for, under the name messages carry.
    async fn open(backend: Backend) -> Db {
        let place = Place::new(backend);
        let stores = place.open().await;
        assert_eq!(stores.registry.backend(), backend.name());
        Db { stores, place }
    }

    fn store(&self) -> &dyn RegistryStore {
        &*self.stores.registry
    }

    fn auth(&self) -> &dyn AuthStore {
        &*self.stores.auth
    }

    fn guard(&self) -> Arc<dyn GuardStore> {
        self.stores.guard.clone()
    }
}

/// Unwraps with the backend's name in the message.
trait On<T> {
    fn on(self, store: &dyn RegistryStore, what: &str) -> T;
}

impl<T> On<T> for Result<T, StorageError> {
    fn on(self, store: &dyn RegistryStore, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("[{}] {what}: {e}", store.backend()))
    }
}

fn assert_conflict<T: std::fmt::Debug>(
    store: &dyn RegistryStore,
    r: Result<T, StorageError>,
    what: &str,
) {
    assert!(
        matches!(r, Err(StorageError::Conflict(_))),
        "[{}] {what}: expected a conflict, got {r:?}",
        store.backend()
    );
}

// ---------------------------------------------------------------- data

/// A 16-byte pattern: `tag` then `n`.
fn blind(tag: u8, n: i64) -> Blind {
    let mut b = [tag; 16];
    b[8..].copy_from_slice(&n.to_le_bytes());
    b
}

/// A patterned blob of `len` bytes.
fn blob(tag: u8, n: i64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (u64::from(tag) * 131 + (n as u64) * 31 + i as u64) as u8)
        .collect()
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

/// A synthetic sealed person; `n` varies every field.
fn sealed(id: PersonId, n: i64) -> SealedPerson {
    SealedPerson {
        id,
        ft_blind: blind(1, n),
        nir_blind: blind(2, n),
        name_blind: blind(3, n),
        fingerprint: blind(4, n),
        kek_version: 1,
        dek_version: 1,
        wrapped_dek: blob(5, n, 60),
        identity: blob(6, n, 90),
        contact: blob(7, n, 150),
        nir: blob(8, n, 43),
        status: blob(9, n, 70),
        retain_until: if n % 2 == 0 {
            Some(day(2030, 1, 1) + chrono::Days::new(n.unsigned_abs() % 365))
        } else {
            None
        },
    }
}

/// The same person (id, ft_blind) with new contents and fingerprint.
fn changed(p: &SealedPerson, n: i64) -> SealedPerson {
    let mut q = sealed(p.id, n);
    q.ft_blind = p.ft_blind;
    q.kek_version = p.kek_version;
    q.dek_version = p.dek_version;
    q.wrapped_dek = p.wrapped_dek.clone();
    q
}

fn existing(p: &SealedPerson) -> ExistingPerson {
    ExistingPerson {
        id: p.id,
        fingerprint: p.fingerprint,
        kek_version: p.kek_version,
        dek_version: p.dek_version,
        wrapped_dek: p.wrapped_dek.clone(),
    }
}

fn groups_of(p: &SealedPerson) -> Vec<(FieldGroup, Vec<u8>)> {
    vec![
        (FieldGroup::Identity, p.identity.clone()),
        (FieldGroup::Contact, p.contact.clone()),
        (FieldGroup::Nir, p.nir.clone()),
        (FieldGroup::Status, p.status.clone()),
    ]
}

/// Reserves ids and inserts `count` persons, `n` starting at `n0`.
async fn insert_persons(store: &dyn RegistryStore, count: usize, n0: i64) -> Vec<SealedPerson> {
    let first = store
        .reserve_person_ids(count as u64)
        .await
        .on(store, "reserve");
    let ps: Vec<SealedPerson> = (0..count as i64)
        .map(|k| sealed(PersonId::new(first.get() + k), n0 + k))
        .collect();
    store
        .write_persons(ps.clone(), vec![])
        .await
        .on(store, "insert persons");
    ps
}

/// Checks the stored state of `p`: key material and every group.
async fn assert_stored(store: &dyn RegistryStore, p: &SealedPerson, what: &str) {
    let got = store
        .read_person(p.id, FieldGroup::ALL)
        .await
        .on(store, "read_person")
        .unwrap_or_else(|| panic!("[{}] {what}: person {} missing", store.backend(), p.id));
    assert_eq!(got.id, p.id, "[{}] {what}", store.backend());
    assert_eq!(
        got.kek_version,
        p.kek_version,
        "[{}] {what}",
        store.backend()
    );
    assert_eq!(
        got.dek_version,
        p.dek_version,
        "[{}] {what}",
        store.backend()
    );
    assert_eq!(
        got.wrapped_dek.as_deref(),
        Some(&p.wrapped_dek[..]),
        "[{}] {what}",
        store.backend()
    );
    assert_eq!(got.groups, groups_of(p), "[{}] {what}", store.backend());
    let found = store
        .lookup_persons(&[p.ft_blind])
        .await
        .on(store, "lookup");
    assert_eq!(
        found,
        vec![Some(existing(p))],
        "[{}] {what}",
        store.backend()
    );
    for (index, b) in [
        (PersonIndex::FtId, p.ft_blind),
        (PersonIndex::Nir, p.nir_blind),
        (PersonIndex::NameBirth, p.name_blind),
    ] {
        let ids = store.find_persons(index, b).await.on(store, "find");
        assert!(
            ids.contains(&p.id),
            "[{}] {what}: {index:?} does not find {}",
            store.backend(),
            p.id
        );
    }
}

fn r(s: &str) -> Reference {
    Reference::parse(s).expect("valid reference")
}

fn org(code: &str, kind: OrganisationKind, name: &str, dep: Option<&str>) -> Organisation {
    Organisation {
        code: r(code),
        kind,
        name: name.into(),
        departement: dep.map(Into::into),
    }
}

fn account(
    login: &str,
    organisation: &str,
    role: Role,
    state: AccountState,
    requested_by: Option<&str>,
    approved_by: Option<&str>,
) -> Account {
    Account {
        login: r(login),
        organisation: r(organisation),
        role,
        state,
        requested_by: requested_by.map(r),
        approved_by: approved_by.map(r),
    }
}

fn mandate(
    reference: &str,
    organisation: &str,
    account: Option<&str>,
    person_id: PersonId,
    purpose: Purpose,
) -> MandateRow {
    MandateRow {
        reference: r(reference),
        organisation: r(organisation),
        account: account.map(r),
        person_id,
        purpose,
        valid_from: day(2026, 1, 1),
        valid_to: Some(day(2026, 7, 1)),
        source: r("orientation"),
    }
}

fn organisations() -> Vec<Organisation> {
    vec![
        org(
            "FT",
            OrganisationKind::FranceTravail,
            "France Travail",
            None,
        ),
        org(
            "CE-038",
            OrganisationKind::CapEmploi,
            "Cap emploi Isère",
            Some("38"),
        ),
        org(
            "ML-069",
            OrganisationKind::MissionLocale,
            "Mission Locale Lyon",
            Some("69"),
        ),
    ]
}

fn refusal_fields(refused: &[RowRefusal]) -> Vec<(usize, &'static str)> {
    refused.iter().map(|r| (r.index, r.field)).collect()
}

fn count(inserted: u64, updated: u64, unchanged: u64) -> UpsertCount {
    UpsertCount {
        inserted,
        updated,
        unchanged,
    }
}

/// An instant, from RFC 3339 text.
fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid instant")
        .with_timezone(&Utc)
}

/// The id of a stored organisation.
async fn org_id(store: &dyn RegistryStore, code: &str) -> OrganisationId {
    store
        .organisations()
        .await
        .on(store, "organisations")
        .into_iter()
        .find(|(_, o)| o.code.as_str() == code)
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("[{}] no organisation {code}", store.backend()))
}

/// The id of a stored account.
async fn account_id(store: &dyn RegistryStore, login: &str) -> AccountId {
    store
        .account_by_login(&r(login))
        .await
        .on(store, "account_by_login")
        .unwrap_or_else(|| panic!("[{}] no account {login}", store.backend()))
        .account_id
}

fn assert_invalid<T: std::fmt::Debug>(
    store: &dyn RegistryStore,
    r: Result<T, StorageError>,
    field: &str,
    what: &str,
) {
    match r {
        Err(e) if e.refused().is_some_and(|(f, _)| f == field) => {}
        other => panic!(
            "[{}] {what}: expected a refusal naming {field}, got {other:?}",
            store.backend()
        ),
    }
}

/// Organisations and accounts of the consultation scenarios: three
/// organisations; in CE-038 two agents and a manager, in ML-069 one agent.
async fn consultation_accounts(store: &dyn RegistryStore) {
    use AccountState::Active;
    store
        .upsert_organisations(organisations())
        .await
        .on(store, "orgs");
    let (_, refused) = store
        .upsert_accounts(vec![
            account("ft.officer1", "FT", Role::Officer, Active, None, None),
            account(
                "ce.agent1",
                "CE-038",
                Role::Agent,
                Active,
                None,
                Some("ft.officer1"),
            ),
            account(
                "ce.agent2",
                "CE-038",
                Role::Agent,
                Active,
                None,
                Some("ft.officer1"),
            ),
            account(
                "ce.Boss",
                "CE-038",
                Role::Manager,
                Active,
                None,
                Some("ft.officer1"),
            ),
            account(
                "ml.agent1",
                "ML-069",
                Role::Agent,
                Active,
                None,
                Some("ft.officer1"),
            ),
        ])
        .await
        .on(store, "accounts");
    assert!(refused.is_empty(), "[{}] {refused:?}", store.backend());
}

// ---------------------------------------------------------------- authentication

/// A synthetic 32-byte digest.
fn key32(n: u8) -> [u8; 32] {
    let mut k = [0xA5; 32];
    k[0] = n;
    k
}

/// A synthetic JWK thumbprint: 43 base64url characters.
fn jkt(n: u8) -> String {
    format!("{}{}", "Q".repeat(42), char::from(b'a' + n % 26))
}

fn plus(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    t + TimeDelta::seconds(secs)
}

fn session_of(account_id: AccountId, n: u8, method: &str, t: DateTime<Utc>) -> StoredSession {
    StoredSession {
        id_digest: key32(n),
        account_id,
        jkt: jkt(n),
        method: method.into(),
        created_at: t,
        last_seen_at: t,
        absolute_expiry: plus(t, 10 * 3600),
        idle_timeout_secs: 1800,
        high_risk: false,
        step_up_at: None,
        ended_at: None,
        end_reason: None,
    }
}
