//! One suite, two backends: every scenario runs on SQLite (in a temporary
//! directory) and on PostgreSQL (in a fresh schema of the database named by
//! `REMPART_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! dropped afterwards). PostgreSQL being unreachable is a failure, not a skip.
//!
//! Blobs and blind indexes are synthetic byte patterns: no personal data.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::join_all;
use rempart_domain::{
    Account, AccountState, FieldGroup, Organisation, OrganisationKind, Purpose, Reference, Role,
};
use rempart_storage::postgres::PgStore;
use rempart_storage::sqlite::SqliteStore;
use rempart_storage::{
    AccountChange, AccountRecord, Blind, CaseloadEntry, ConsultationRows, ExistingPerson,
    MandateRow, NewBreakGlassReason, NewMandate, PersonIndex, RegistryStore, Rehearsal, RowRefusal,
    SealedPerson, StorageError, StoredCredential, StoredMandate, UpsertCount, WrappedKeyRow,
    migrate,
};
use tempfile::TempDir;

// ---------------------------------------------------------------- harness

fn pg_url() -> String {
    std::env::var("REMPART_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Runs one statement on its own connection, on its own runtime (usable
/// from `Drop`, even while a test unwinds).
fn pg_exec_blocking(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(conn);
            // The server's message, not only "db error".
            let r = client
                .batch_execute(&sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => e.to_string(),
                });
            drop(client);
            let _ = task.await;
            r
        })
    })
    .join()
    .map_err(|_| "thread panicked".to_string())?
}

/// Drops a test schema when the test ends, pass or fail.
struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        // The stores' connections run on the test runtime's worker threads
        // (multi-thread flavour), so their pending rollbacks go through
        // while this thread waits; the lock timeout keeps a bug from hanging.
        let sql = format!(
            "SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        if let Err(e) = pg_exec_blocking(&self.url, &sql) {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

async fn connect_pg(url: &str, schema: &str) -> Arc<dyn RegistryStore> {
    PgStore::connect(url, schema).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL test database unusable at {url} (schema {schema}): {e}\n\
             Start PostgreSQL or set REMPART_TEST_DATABASE_URL; these tests never skip."
        )
    })
}

/// A SQLite store and a PostgreSQL store, both empty and migrated.
struct Both {
    dir: TempDir,
    sqlite: Arc<dyn RegistryStore>,
    pg: Arc<dyn RegistryStore>,
    url: String,
    schema: String,
    _guard: SchemaGuard,
}

impl Both {
    fn stores(&self) -> [&dyn RegistryStore; 2] {
        [&*self.sqlite, &*self.pg]
    }
}

async fn both() -> Both {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite: Arc<dyn RegistryStore> = Arc::new(
        SqliteStore::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("SQLite store in {}: {e}", dir.path().display())),
    );
    let url = pg_url();
    let schema = unique_schema();
    let guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let pg = connect_pg(&url, &schema).await;
    Both {
        dir,
        sqlite,
        pg,
        url,
        schema,
        _guard: guard,
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
fn sealed(id: i64, n: i64) -> SealedPerson {
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
        .map(|k| sealed(first + k, n0 + k))
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
    person_id: i64,
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
async fn org_id(store: &dyn RegistryStore, code: &str) -> i64 {
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
async fn account_id(store: &dyn RegistryStore, login: &str) -> i64 {
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

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_guarded() {
    let b = both().await;

    // SQLite: open the same directory again, and twice at once.
    b.sqlite
        .upsert_organisations(organisations())
        .await
        .on(&*b.sqlite, "orgs");
    let again = SqliteStore::open(b.dir.path())
        .await
        .expect("[sqlite] second open");
    let (x, y) = tokio::join!(
        SqliteStore::open(b.dir.path()),
        SqliteStore::open(b.dir.path())
    );
    x.expect("[sqlite] concurrent open 1");
    y.expect("[sqlite] concurrent open 2");
    let inv = again.inventory().await.expect("[sqlite] inventory");
    assert_eq!(inv.organisations_by_kind.len(), 3, "[sqlite] data kept");
    let db = rusqlite::Connection::open(b.dir.path().join(rempart_storage::sqlite::FILE_NAME))
        .expect("raw sqlite");
    let applied: i64 = db
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .expect("schema_migrations");
    assert_eq!(applied as usize, migrate::SQLITE.len(), "[sqlite]");

    // PostgreSQL: connect again to the same schema, and twice at once.
    b.pg.upsert_organisations(organisations())
        .await
        .on(&*b.pg, "orgs");
    let again = connect_pg(&b.url, &b.schema).await;
    let inv = again.inventory().await.expect("[postgres] inventory");
    assert_eq!(inv.organisations_by_kind.len(), 3, "[postgres] data kept");
    let fresh = unique_schema();
    let _guard = SchemaGuard {
        url: b.url.clone(),
        schema: fresh.clone(),
    };
    let opens = join_all((0..4).map(|_| PgStore::connect(&b.url, &fresh))).await;
    for (i, o) in opens.into_iter().enumerate() {
        o.unwrap_or_else(|e| panic!("[postgres] concurrent open {i} of a new schema: {e}"));
    }
    let (client, conn) = tokio_postgres::connect(&b.url, tokio_postgres::NoTls)
        .await
        .expect("raw postgres");
    tokio::spawn(conn);
    for schema in [&b.schema, &fresh] {
        let applied: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".schema_migrations"),
                &[],
            )
            .await
            .expect("schema_migrations")
            .get(0);
        assert_eq!(applied as usize, migrate::POSTGRES.len(), "[postgres]");
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
                &[schema],
            )
            .await
            .expect("pg_tables")
            .get(0);
        assert_eq!(
            tables, 29,
            "[postgres] registry, authentication, guard (with suspension blocks), activation, \
             federation, access-version, break-glass reason, login device and mandate request \
             tables + schema_migrations"
        );
    }

    // A database newer than the program is refused by both.
    db.execute(
        "INSERT INTO schema_migrations VALUES (999, 'future', 'x', 'now')",
        [],
    )
    .expect("fake future migration");
    assert!(
        matches!(
            SqliteStore::open(b.dir.path()).await,
            Err(StorageError::SchemaTooNew { found: 999, .. })
        ),
        "[sqlite] newer schema must be refused"
    );
    client
        .batch_execute(&format!(
            "INSERT INTO \"{}\".schema_migrations VALUES (999, 'future', 'x', now())",
            b.schema
        ))
        .await
        .expect("fake future migration");
    let newer = PgStore::connect(&b.url, &b.schema).await;
    assert!(
        matches!(newer, Err(StorageError::SchemaTooNew { found: 999, .. })),
        "[postgres] newer schema must be refused, got {:?}",
        newer.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_names_are_checked_and_schemas_dropped() {
    let url = pg_url();
    for bad in ["Registry", "a;drop table x", "a b", "pg_catalog", ""] {
        assert!(
            matches!(
                PgStore::connect(&url, bad).await,
                Err(StorageError::Open { .. })
            ),
            "schema name {bad:?} must be refused"
        );
    }
    let schema = unique_schema();
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let store = PgStore::connect_store(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database unusable at {url}: {e}"));
    assert_eq!(store.schema(), schema);
    store.drop_schema().await.expect("drop_schema");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw postgres");
    tokio::spawn(conn);
    let left = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .expect("pg_namespace");
    assert!(left.is_none(), "schema {schema} still exists");
}

/// After an import the planner has statistics for the registry's tables
/// (the consultation's mandate lookup was planned as a hash join over full
/// scans without them), in the store's own schema; SQLite has nothing to
/// refresh and says so by succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_are_refreshed_in_the_stores_schema() {
    let b = both().await;
    b.sqlite.refresh_statistics().await.expect("sqlite");
    b.pg.refresh_statistics().await.expect("postgres");
    let (client, conn) = tokio_postgres::connect(&b.url, tokio_postgres::NoTls)
        .await
        .expect("raw postgres");
    tokio::spawn(conn);
    let analyzed: Vec<String> = client
        .query(
            "SELECT relname::text FROM pg_stat_user_tables
             WHERE schemaname = $1 AND last_analyze IS NOT NULL ORDER BY relname",
            &[&b.schema],
        )
        .await
        .expect("pg_stat_user_tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(analyzed, ["account", "mandate", "organisation", "person"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_clear_error() {
    let r = PgStore::connect(
        "postgres://nobody:secret@127.0.0.1:1/test?connect_timeout=5",
        "registry",
    )
    .await;
    let Err(e) = r else {
        panic!("connecting to port 1 should fail")
    };
    let text = e.to_string();
    assert!(matches!(e, StorageError::Open { .. }), "{text}");
    assert!(text.contains("connect"), "{text}");
    assert!(!text.contains("secret"), "password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_id_ranges_are_disjoint() {
    let b = both().await;
    for store in b.stores() {
        let a = store.reserve_person_ids(10).await.on(store, "reserve 10");
        let c = store.reserve_person_ids(1).await.on(store, "reserve 1");
        let d = store.reserve_person_ids(0).await.on(store, "reserve 0");
        let e = store
            .reserve_person_ids(1000)
            .await
            .on(store, "reserve 1000");
        assert_eq!(a, 1, "[{}] first id", store.backend());
        assert_eq!(c, a + 10, "[{}]", store.backend());
        assert_eq!(d, c + 1, "[{}]", store.backend());
        assert_eq!(e, d, "[{}] reserving 0 takes nothing", store.backend());
        let mut starts: Vec<i64> = join_all((0..16).map(|_| store.reserve_person_ids(5)))
            .await
            .into_iter()
            .map(|r| r.on(store, "concurrent reserve"))
            .collect();
        starts.sort_unstable();
        assert_eq!(starts[0], e + 1000, "[{}]", store.backend());
        for w in starts.windows(2) {
            assert_eq!(
                w[1] - w[0],
                5,
                "[{}] ranges overlap or leave gaps: {starts:?}",
                store.backend()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_persons_are_found_by_lookup() {
    let b = both().await;
    for store in b.stores() {
        let ps = insert_persons(store, 3, 0).await;
        let unknown = blind(1, 999);
        let found = store
            .lookup_persons(&[
                ps[1].ft_blind,
                unknown,
                ps[0].ft_blind,
                ps[2].ft_blind,
                ps[0].ft_blind,
            ])
            .await
            .on(store, "lookup");
        assert_eq!(
            found,
            vec![
                Some(existing(&ps[1])),
                None,
                Some(existing(&ps[0])),
                Some(existing(&ps[2])),
                Some(existing(&ps[0])),
            ],
            "[{}]",
            store.backend()
        );
        assert!(
            store
                .lookup_persons(&[])
                .await
                .on(store, "empty lookup")
                .is_empty()
        );
        // Blinds of other kinds are not France Travail ids.
        let other = store
            .lookup_persons(&[ps[0].nir_blind, ps[0].fingerprint])
            .await
            .on(store, "lookup");
        assert_eq!(other, vec![None, None], "[{}]", store.backend());
        for p in &ps {
            assert_stored(store, p, "after insert").await;
        }
        store
            .write_persons(vec![], vec![])
            .await
            .on(store, "empty write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_round_trip() {
    let b = both().await;
    for store in b.stores() {
        let ps = insert_persons(store, 5000, 10_000).await;
        let blinds: Vec<Blind> = ps.iter().rev().map(|p| p.ft_blind).collect();
        let found = store.lookup_persons(&blinds).await.on(store, "lookup");
        let expected: Vec<_> = ps.iter().rev().map(|p| Some(existing(p))).collect();
        assert!(found == expected, "[{}] lookup of 5000", store.backend());

        let updates: Vec<(SealedPerson, Blind)> = ps
            .iter()
            .map(|p| (changed(p, p.id + 50_000), p.fingerprint))
            .collect();
        // One stale row among 5000: nothing applies.
        let mut bad = updates.clone();
        bad[4321].1 = blind(4, -1);
        assert_conflict(
            store,
            store.write_persons(vec![], bad).await,
            "one stale row",
        );
        let found = store.lookup_persons(&blinds).await.on(store, "lookup");
        assert!(
            found == expected,
            "[{}] failed batch wrote",
            store.backend()
        );

        store
            .write_persons(vec![], updates.clone())
            .await
            .on(store, "update 5000");
        let found = store.lookup_persons(&blinds).await.on(store, "lookup");
        let expected: Vec<_> = updates
            .iter()
            .rev()
            .map(|(p, _)| Some(existing(p)))
            .collect();
        assert!(
            found == expected,
            "[{}] lookup after update",
            store.backend()
        );
        assert_stored(store, &updates[2500].0, "after bulk update").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_apply_only_on_the_expected_fingerprint() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let ps = insert_persons(store, 2, 0).await;
        let p = &ps[0];

        // Right fingerprint: applies, but never touches the key material.
        let mut p2 = changed(p, 100);
        p2.kek_version = 7;
        p2.wrapped_dek = blob(5, 777, 60);
        store
            .write_persons(vec![], vec![(p2.clone(), p.fingerprint)])
            .await
            .on(store, "update");
        let mut want = p2.clone();
        want.kek_version = p.kek_version;
        want.wrapped_dek = p.wrapped_dek.clone();
        assert_stored(store, &want, "after update").await;
        assert!(
            store
                .find_persons(PersonIndex::Nir, p.nir_blind)
                .await
                .on(store, "find")
                .is_empty(),
            "[{be}] old NIR index still finds the person"
        );

        // Wrong fingerprint, or a data key changed meanwhile: conflict, no change.
        let p3 = changed(p, 200);
        assert_conflict(
            store,
            store
                .write_persons(vec![], vec![(p3.clone(), p.fingerprint)])
                .await,
            "stale fingerprint",
        );
        let mut p3_dek = p3.clone();
        p3_dek.dek_version = 2;
        assert_conflict(
            store,
            store
                .write_persons(vec![], vec![(p3_dek, want.fingerprint)])
                .await,
            "stale data key version",
        );
        let ghost = sealed(999_999, 999);
        assert_conflict(
            store,
            store
                .write_persons(vec![], vec![(ghost, blind(4, 999))])
                .await,
            "unknown id",
        );
        assert_stored(store, &want, "after refused updates").await;

        // Atomicity: a good insert with a conflicting update leaves no trace.
        let id = store.reserve_person_ids(1).await.on(store, "reserve");
        let q = sealed(id, 300);
        assert_conflict(
            store,
            store
                .write_persons(vec![q.clone()], vec![(p3.clone(), p.fingerprint)])
                .await,
            "insert + stale update",
        );
        assert_eq!(
            store
                .lookup_persons(&[q.ft_blind])
                .await
                .on(store, "lookup"),
            vec![None],
            "[{be}] insert of a failed batch is visible"
        );
        assert!(
            store
                .read_person(id, &[FieldGroup::Identity])
                .await
                .on(store, "read")
                .is_none(),
            "[{be}] insert of a failed batch is readable"
        );
        // ... and a good update before a bad one is undone too.
        let other = changed(&ps[1], 400);
        assert_conflict(
            store,
            store
                .write_persons(
                    vec![],
                    vec![
                        (other.clone(), ps[1].fingerprint),
                        (p3.clone(), p.fingerprint),
                    ],
                )
                .await,
            "good update + stale update",
        );
        assert_stored(store, &ps[1], "first update of a failed batch").await;

        // Two updates of one person in one batch chain, in order.
        let p4 = changed(p, 500);
        store
            .write_persons(
                vec![],
                vec![(p3.clone(), want.fingerprint), (p4.clone(), p3.fingerprint)],
            )
            .await
            .on(store, "chained updates");
        let mut want = p4.clone();
        want.wrapped_dek = p.wrapped_dek.clone();
        assert_stored(store, &want, "after chained updates").await;

        // Insert and update of the same new person in one batch.
        let id = store.reserve_person_ids(1).await.on(store, "reserve");
        let n = sealed(id, 600);
        let n2 = changed(&n, 601);
        store
            .write_persons(vec![n.clone()], vec![(n2.clone(), n.fingerprint)])
            .await
            .on(store, "insert then update");
        assert_stored(store, &n2, "inserted then updated").await;

        // A shredded person cannot be updated.
        assert!(store.shred_person(id).await.on(store, "shred"));
        assert_conflict(
            store,
            store
                .write_persons(vec![], vec![(changed(&n, 602), n2.fingerprint)])
                .await,
            "update of a shredded person",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_conflict_instead_of_overwriting() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let ps = insert_persons(store, 1, 0).await;
        let p = &ps[0];
        // Two writers read the same fingerprint and race: one wins.
        let (a, c) = (changed(p, 1), changed(p, 2));
        let (ra, rc) = tokio::join!(
            store.write_persons(vec![], vec![(a.clone(), p.fingerprint)]),
            store.write_persons(vec![], vec![(c.clone(), p.fingerprint)]),
        );
        let winner = match (&ra, &rc) {
            (Ok(()), Err(StorageError::Conflict(_))) => &a,
            (Err(StorageError::Conflict(_)), Ok(())) => &c,
            other => panic!("[{be}] expected one winner and one conflict, got {other:?}"),
        };
        let mut want = winner.clone();
        want.wrapped_dek = p.wrapped_dek.clone();
        assert_stored(store, &want, "after a race").await;
        // Two writers register the same new person under two ids: one wins.
        let id = store.reserve_person_ids(2).await.on(store, "reserve");
        let x = sealed(id, 10);
        let mut y = sealed(id + 1, 11);
        y.ft_blind = x.ft_blind;
        let (rx, ry) = tokio::join!(
            store.write_persons(vec![x.clone()], vec![]),
            store.write_persons(vec![y.clone()], vec![]),
        );
        let winner = match (&rx, &ry) {
            (Ok(()), Err(StorageError::Conflict(_))) => &x,
            (Err(StorageError::Conflict(_)), Ok(())) => &y,
            other => panic!("[{be}] expected one winner and one conflict, got {other:?}"),
        };
        assert_stored(store, winner, "after a registration race").await;
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(inv.persons, 2, "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_inserts_conflict() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let ps = insert_persons(store, 1, 0).await;
        let ids = store.reserve_person_ids(4).await.on(store, "reserve");

        let mut dup = sealed(ids, 1);
        dup.ft_blind = ps[0].ft_blind;
        assert_conflict(
            store,
            store.write_persons(vec![dup], vec![]).await,
            "stored ft_blind",
        );
        let a = sealed(ids + 1, 2);
        let mut a2 = sealed(ids + 2, 3);
        a2.ft_blind = a.ft_blind;
        assert_conflict(
            store,
            store.write_persons(vec![a.clone(), a2], vec![]).await,
            "ft_blind twice in a batch",
        );
        assert_conflict(
            store,
            store.write_persons(vec![sealed(ps[0].id, 4)], vec![]).await,
            "stored id",
        );
        // Nothing of the failed batches, and the store still works.
        assert_eq!(
            store
                .lookup_persons(&[a.ft_blind, blind(1, 1), blind(1, 4)])
                .await
                .on(store, "lookup"),
            vec![None, None, None],
            "[{be}]"
        );
        store
            .write_persons(vec![a.clone()], vec![])
            .await
            .on(store, "insert after conflicts");
        assert_stored(store, &a, "after conflicts").await;
        assert_stored(store, &ps[0], "first person after conflicts").await;
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(inv.persons, 2, "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_person_returns_the_groups_asked_in_order() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let ps = insert_persons(store, 2, 7).await;
        let p = &ps[1];
        let got = store
            .read_person(p.id, &[FieldGroup::Status, FieldGroup::Identity])
            .await
            .on(store, "read")
            .expect("person");
        assert_eq!(
            got.groups,
            vec![
                (FieldGroup::Status, p.status.clone()),
                (FieldGroup::Identity, p.identity.clone())
            ],
            "[{be}]"
        );
        assert_eq!(
            (got.id, got.kek_version, got.dek_version),
            (p.id, 1, 1),
            "[{be}]"
        );
        assert_eq!(got.wrapped_dek, Some(p.wrapped_dek.clone()), "[{be}]");
        let got = store
            .read_person(p.id, &[])
            .await
            .on(store, "read")
            .expect("person");
        assert!(got.groups.is_empty(), "[{be}]");
        let got = store
            .read_person(p.id, &[FieldGroup::Nir, FieldGroup::Contact])
            .await
            .on(store, "read")
            .expect("person");
        assert_eq!(
            got.groups,
            vec![
                (FieldGroup::Nir, p.nir.clone()),
                (FieldGroup::Contact, p.contact.clone())
            ],
            "[{be}]"
        );
        for id in [0, -1, p.id + 1000] {
            assert!(
                store
                    .read_person(id, FieldGroup::ALL)
                    .await
                    .on(store, "read")
                    .is_none(),
                "[{be}] id {id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_persons_by_each_index() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let first = store.reserve_person_ids(3).await.on(store, "reserve");
        let (mut x, mut y, mut z) = (
            sealed(first, 20),
            sealed(first + 1, 21),
            sealed(first + 2, 22),
        );
        // x and y share a NIR index, x and z a name index.
        y.nir_blind = x.nir_blind;
        z.name_blind = x.name_blind;
        x.retain_until = None;
        // Inserted out of id order: results come in id order anyway.
        store
            .write_persons(vec![z.clone(), y.clone(), x.clone()], vec![])
            .await
            .on(store, "insert");
        let find = |i, v| store.find_persons(i, v);
        assert_eq!(
            find(PersonIndex::Nir, x.nir_blind).await.on(store, "find"),
            vec![x.id, y.id],
            "[{be}]"
        );
        assert_eq!(
            find(PersonIndex::NameBirth, x.name_blind)
                .await
                .on(store, "find"),
            vec![x.id, z.id],
            "[{be}]"
        );
        assert_eq!(
            find(PersonIndex::NameBirth, y.name_blind)
                .await
                .on(store, "find"),
            vec![y.id],
            "[{be}]"
        );
        assert_eq!(
            find(PersonIndex::FtId, z.ft_blind).await.on(store, "find"),
            vec![z.id],
            "[{be}]"
        );
        assert_eq!(
            find(PersonIndex::Nir, z.nir_blind).await.on(store, "find"),
            vec![z.id],
            "[{be}]"
        );
        for i in [PersonIndex::FtId, PersonIndex::Nir, PersonIndex::NameBirth] {
            assert!(
                find(i, blind(0, 0)).await.on(store, "find").is_empty(),
                "[{be}] {i:?}"
            );
        }
        // The fingerprint is not an index.
        assert!(
            find(PersonIndex::FtId, x.fingerprint)
                .await
                .on(store, "find")
                .is_empty(),
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_to_rewrap_pages_and_store_rewrapped_compares_and_sets() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let first = store.reserve_person_ids(7).await.on(store, "reserve");
        let mut ps: Vec<SealedPerson> = (0..7).map(|k| sealed(first + k, 40 + k)).collect();
        ps[2].kek_version = 2; // already at the target
        ps[4].dek_version = 3;
        store
            .write_persons(ps.clone(), vec![])
            .await
            .on(store, "insert");
        assert!(store.shred_person(ps[5].id).await.on(store, "shred"));

        // Pages of 2, in id order, without the target version nor the shredded.
        let mut work = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .keys_to_rewrap(2, after, 2)
                .await
                .on(store, "keys_to_rewrap");
            assert!(page.len() <= 2, "[{be}] page too long");
            let Some(last) = page.last() else { break };
            after = last.id;
            work.extend(page);
        }
        let want: Vec<WrappedKeyRow> = [0, 1, 3, 4, 6]
            .iter()
            .map(|&k| WrappedKeyRow {
                id: ps[k].id,
                kek_version: ps[k].kek_version,
                dek_version: ps[k].dek_version,
                wrapped_dek: ps[k].wrapped_dek.clone(),
            })
            .collect();
        assert_eq!(work, want, "[{be}] work list");
        assert!(
            store
                .keys_to_rewrap(2, ps[6].id, 10)
                .await
                .on(store, "past the end")
                .is_empty(),
            "[{be}]"
        );
        assert_eq!(
            store
                .keys_to_rewrap(2, 0, 0)
                .await
                .on(store, "limit 0")
                .len(),
            0,
            "[{be}]"
        );

        let rewrap = |row: &WrappedKeyRow, version: u32| WrappedKeyRow {
            id: row.id,
            kek_version: version,
            dek_version: row.dek_version,
            wrapped_dek: blob(11, row.id * 10 + i64::from(version), 60),
        };
        // Stale reads change nothing: wrong old KEK version, wrong DEK
        // version, shredded person.
        let mut wrong_dek = rewrap(&work[0], 2);
        wrong_dek.dek_version = 9;
        let shredded = WrappedKeyRow {
            id: ps[5].id,
            kek_version: 2,
            dek_version: 1,
            wrapped_dek: blob(11, 0, 60),
        };
        let n = store
            .store_rewrapped(vec![
                (rewrap(&work[0], 2), 3),
                (wrong_dek, 1),
                (shredded, 1),
            ])
            .await
            .on(store, "stale rewrap");
        assert_eq!(n, 0, "[{be}] stale rows applied");
        assert_eq!(
            store.store_rewrapped(vec![]).await.on(store, "empty"),
            0,
            "[{be}]"
        );

        let rows: Vec<(WrappedKeyRow, u32)> =
            work.iter().map(|w| (rewrap(w, 2), w.kek_version)).collect();
        let n = store
            .store_rewrapped(rows.clone())
            .await
            .on(store, "rewrap");
        assert_eq!(n, 5, "[{be}]");
        // Replaying the same batch: every row is now stale.
        let n = store
            .store_rewrapped(rows.clone())
            .await
            .on(store, "replay");
        assert_eq!(n, 0, "[{be}] replay applied");
        assert!(
            store
                .keys_to_rewrap(2, 0, 100)
                .await
                .on(store, "after")
                .is_empty(),
            "[{be}] rotation not finished"
        );
        for (row, _) in &rows {
            let got = store
                .read_person(row.id, &[])
                .await
                .on(store, "read")
                .expect("person");
            assert_eq!(
                (got.kek_version, got.wrapped_dek.as_ref()),
                (2, Some(&row.wrapped_dek)),
                "[{be}] person {}",
                row.id
            );
        }
        // Two steps for one person in one batch apply in order.
        let step1 = rewrap(&rows[0].0, 3);
        let step2 = rewrap(&step1, 4);
        let n = store
            .store_rewrapped(vec![(step1, 2), (step2.clone(), 3)])
            .await
            .on(store, "two steps");
        assert_eq!(n, 2, "[{be}] chained rewraps");
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(inv.keys_by_kek_version, vec![(2, 5), (4, 1)], "[{be}]");
        // Rewrapping kept every sealed group.
        let mut p0 = ps[0].clone();
        p0.kek_version = 4;
        p0.wrapped_dek = step2.wrapped_dek.clone();
        assert_stored(store, &p0, "after rotation").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredding_destroys_key_and_indexes_only() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let ps = insert_persons(store, 2, 60).await;
        let (gone, kept) = (&ps[0], &ps[1]);
        assert!(store.shred_person(gone.id).await.on(store, "shred"));
        let got = store
            .read_person(gone.id, FieldGroup::ALL)
            .await
            .on(store, "read")
            .expect("a shredded person is still there");
        assert_eq!(got.wrapped_dek, None, "[{be}] key survived");
        assert_eq!(got.groups, groups_of(gone), "[{be}] sealed groups stay");
        assert_eq!(
            store
                .lookup_persons(&[gone.ft_blind, kept.ft_blind])
                .await
                .on(store, "lookup"),
            vec![None, Some(existing(kept))],
            "[{be}]"
        );
        for (i, v) in [
            (PersonIndex::FtId, gone.ft_blind),
            (PersonIndex::Nir, gone.nir_blind),
            (PersonIndex::NameBirth, gone.name_blind),
        ] {
            assert!(
                store.find_persons(i, v).await.on(store, "find").is_empty(),
                "[{be}] {i:?} still finds a shredded person"
            );
        }
        assert!(
            !store.shred_person(gone.id).await.on(store, "shred again"),
            "[{be}] second shred"
        );
        assert!(
            !store.shred_person(kept.id + 100).await.on(store, "shred"),
            "[{be}] unknown id"
        );
        assert_stored(store, kept, "neighbour of a shredded person").await;
        // The id stays taken; the ft_blind is free for a new registration.
        assert_eq!(
            store.person_ids(0, 10).await.on(store, "ids"),
            vec![gone.id, kept.id],
            "[{be}]"
        );
        let id = store.reserve_person_ids(1).await.on(store, "reserve");
        let mut again = sealed(id, 62);
        again.ft_blind = gone.ft_blind;
        store
            .write_persons(vec![again.clone()], vec![])
            .await
            .on(store, "re-register");
        assert_stored(store, &again, "re-registered").await;
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!((inv.persons, inv.shredded), (3, 1), "[{be}]");
        assert_eq!(inv.keys_by_kek_version, vec![(1, 2)], "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisations_and_accounts_upsert_idempotently_with_refusals() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let orgs = organisations();
        assert_eq!(
            store
                .upsert_organisations(orgs.clone())
                .await
                .on(store, "orgs"),
            count(3, 0, 0),
            "[{be}]"
        );
        assert_eq!(
            store
                .upsert_organisations(orgs.clone())
                .await
                .on(store, "orgs again"),
            count(0, 0, 3),
            "[{be}]"
        );
        let mut renamed = orgs.clone();
        renamed[1].name = "Cap emploi 38".into();
        renamed[2].departement = None;
        assert_eq!(
            store
                .upsert_organisations(renamed)
                .await
                .on(store, "orgs renamed"),
            count(0, 2, 1),
            "[{be}]"
        );
        assert_eq!(
            store
                .upsert_organisations(vec![])
                .await
                .on(store, "no orgs"),
            count(0, 0, 0),
            "[{be}]"
        );

        use AccountState::*;
        use Role::*;
        let accounts = vec![
            // Approved by an officer of France Travail, listed after them.
            account(
                "ce.manager1",
                "CE-038",
                Manager,
                Active,
                None,
                Some("ft.officer1"),
            ),
            account("ft.officer1", "FT", Officer, Active, None, None),
            account(
                "ce.agent1",
                "CE-038",
                Agent,
                Requested,
                Some("ce.manager1"),
                Some("ft.officer1"),
            ),
            account("x.agent", "NOPE", Agent, Active, None, None),
            account("ce.agent2", "CE-038", Agent, Requested, Some("ghost"), None),
            account("ce.agent3", "CE-038", Agent, Active, None, Some("ghost")),
            account(
                "ce.agent4",
                "CE-038",
                Agent,
                Active,
                None,
                Some("ce.manager1"),
            ),
            // Its requester is refused above: refused in turn.
            account(
                "ce.agent5",
                "CE-038",
                Agent,
                Requested,
                Some("ce.agent2"),
                None,
            ),
            // An officer inside a partner organisation…
            account(
                "ce.officer",
                "CE-038",
                Officer,
                Active,
                None,
                Some("ft.officer1"),
            ),
            // …cannot approve accounts of that organisation.
            account(
                "ce.agent6",
                "CE-038",
                Agent,
                Active,
                None,
                Some("ce.officer"),
            ),
            // Nobody approves themselves, nor what they requested.
            account(
                "ft.officer2",
                "FT",
                Officer,
                Active,
                None,
                Some("ft.officer2"),
            ),
            account(
                "ft.agent2",
                "FT",
                Agent,
                Active,
                Some("ft.officer1"),
                Some("ft.officer1"),
            ),
        ];
        let want_refusals = vec![
            (3, "organisation"),
            (4, "requested_by"),
            (5, "approved_by"),
            (6, "approved_by"),
            (7, "requested_by"),
            (9, "approved_by"),
            (10, "approved_by"),
            (11, "approved_by"),
        ];
        let (c, refused) = store
            .upsert_accounts(accounts.clone())
            .await
            .on(store, "accounts");
        assert_eq!(c, count(4, 0, 0), "[{be}]");
        assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");
        assert!(
            refused[3].reason.contains("only an officer"),
            "[{be}] {:?}",
            refused[3]
        );
        for r in &refused[5..] {
            assert!(r.reason.contains("four eyes"), "[{be}] {r:?}");
        }
        assert_eq!(refused[0].reason, "no such organisation", "[{be}]");
        assert_eq!(refused[2].reason, "no such account", "[{be}]");

        let (c, refused) = store
            .upsert_accounts(accounts.clone())
            .await
            .on(store, "accounts again");
        assert_eq!(c, count(0, 0, 4), "[{be}] second identical call");
        assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");

        // Changes of state or of links are updates; stored approvers count.
        let batch = vec![
            account(
                "ce.agent1",
                "CE-038",
                Agent,
                Active,
                Some("ce.manager1"),
                Some("ft.officer1"),
            ),
            account("ce.manager1", "CE-038", Manager, Active, None, None),
            account(
                "ml.agent1",
                "ML-069",
                Agent,
                Active,
                Some("ce.manager1"),
                Some("ft.officer1"),
            ),
            account("ft.agent1", "FT", Agent, Active, None, Some("ft.officer1")),
            account("ft.officer1", "FT", Officer, Active, None, None),
        ];
        let (c, refused) = store
            .upsert_accounts(batch.clone())
            .await
            .on(store, "account changes");
        // France Travail officers may approve colleagues of their own agency.
        // A requested account is not approved by an import, though: that
        // row is refused and the account stays requested.
        assert_eq!(c, count(2, 1, 1), "[{be}]");
        assert_eq!(refusal_fields(&refused), vec![(0, "state")], "[{be}]");
        assert!(
            refused[0].reason.contains("four eyes"),
            "[{be}] {refused:?}"
        );
        let (c, _) = store
            .upsert_accounts(batch)
            .await
            .on(store, "account changes again");
        assert_eq!(c, count(0, 0, 4), "[{be}]");

        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(
            inv.organisations_by_kind,
            vec![
                (OrganisationKind::CapEmploi, 1),
                (OrganisationKind::FranceTravail, 1),
                (OrganisationKind::MissionLocale, 1)
            ],
            "[{be}]"
        );
        assert_eq!(
            inv.accounts_by_role,
            vec![(Agent, 3), (Manager, 1), (Officer, 2)],
            "[{be}]"
        );
        assert_eq!(
            inv.accounts_by_state,
            vec![(Active, 5), (Requested, 1)],
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandates_upsert_idempotently_with_refusals() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        store
            .upsert_organisations(organisations())
            .await
            .on(store, "orgs");
        let (_, refused) = store
            .upsert_accounts(vec![
                account(
                    "ft.officer1",
                    "FT",
                    Role::Officer,
                    AccountState::Active,
                    None,
                    None,
                ),
                account(
                    "ce.agent1",
                    "CE-038",
                    Role::Agent,
                    AccountState::Active,
                    None,
                    Some("ft.officer1"),
                ),
            ])
            .await
            .on(store, "accounts");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let ps = insert_persons(store, 3, 80).await;
        let (live, other, shredded) = (ps[0].id, ps[1].id, ps[2].id);
        assert!(store.shred_person(shredded).await.on(store, "shred"));

        let mut open_ended = mandate("M2", "ML-069", None, live, Purpose::Training);
        open_ended.valid_to = None;
        let batch = vec![
            mandate("M1", "CE-038", Some("ce.agent1"), live, Purpose::FollowUp),
            open_ended.clone(),
            mandate("M3", "NOPE", None, live, Purpose::FollowUp),
            mandate("M4", "CE-038", Some("ghost"), live, Purpose::FollowUp),
            mandate("M5", "ML-069", Some("ce.agent1"), live, Purpose::FollowUp),
            mandate("M6", "CE-038", None, live + 1000, Purpose::FollowUp),
            mandate("M7", "CE-038", None, shredded, Purpose::FollowUp),
            mandate("M8", "FT", None, other, Purpose::Compensation),
        ];
        let want_refusals = vec![
            (2, "organisation"),
            (3, "account"),
            (4, "account"),
            (5, "ft_id"),
            (6, "ft_id"),
        ];
        let (c, refused) = store
            .upsert_mandates(batch.clone())
            .await
            .on(store, "mandates");
        assert_eq!(c, count(3, 0, 0), "[{be}]");
        assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");
        // Stored mandates carry the ids of their organisation and account.
        let held = store.mandates_of_person(live).await.on(store, "mandates");
        let agent1 = account_id(store, "ce.agent1").await;
        assert_eq!(
            held.iter()
                .map(|m| (m.organisation_id, m.account_id, m.revoked_at))
                .collect::<Vec<_>>(),
            vec![
                (org_id(store, "CE-038").await, Some(agent1), None),
                (org_id(store, "ML-069").await, None, None)
            ],
            "[{be}]"
        );
        assert_eq!(refused[1].reason, "no such account", "[{be}]");
        assert_eq!(
            refused[2].reason, "belongs to another organisation than the mandate",
            "[{be}]"
        );
        let (c, refused) = store
            .upsert_mandates(batch.clone())
            .await
            .on(store, "mandates again");
        assert_eq!(c, count(0, 0, 3), "[{be}] second identical call");
        assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");

        let mut moved = batch[..2].to_vec();
        moved[1].valid_to = Some(day(2027, 1, 1));
        moved[0].account = None;
        let (c, refused) = store
            .upsert_mandates(moved.clone())
            .await
            .on(store, "mandate changes");
        assert_eq!(c, count(0, 2, 0), "[{be}]");
        assert!(refused.is_empty(), "[{be}]");

        let held = store.mandates_of_person(live).await.on(store, "mandates");
        let strip = |m: &StoredMandate| {
            (
                m.reference.clone(),
                m.organisation.clone(),
                m.account.clone(),
                m.person_id,
                m.purpose,
                m.valid_from,
                m.valid_to,
                m.source.clone(),
            )
        };
        let want: Vec<_> = moved
            .iter()
            .map(|m| {
                (
                    m.reference.clone(),
                    m.organisation.clone(),
                    m.account.clone(),
                    m.person_id,
                    m.purpose,
                    m.valid_from,
                    m.valid_to,
                    m.source.clone(),
                )
            })
            .collect();
        assert_eq!(
            held.iter().map(strip).collect::<Vec<_>>(),
            want,
            "[{be}] mandates_of_person"
        );
        assert!(held[0].id < held[1].id, "[{be}] id order");
        assert_eq!(held[0].account_id, None, "[{be}] account removed");
        let held = store.mandates_of_person(other).await.on(store, "mandates");
        assert_eq!(held.len(), 1, "[{be}]");
        assert_eq!(held[0].reference, r("M8"), "[{be}]");
        assert_eq!(held[0].account, None, "[{be}]");
        for id in [shredded, live + 1000] {
            assert!(
                store
                    .mandates_of_person(id)
                    .await
                    .on(store, "mandates")
                    .is_empty(),
                "[{be}] person {id}"
            );
        }
        // A mandate ending before it starts is an error, not a refusal.
        let mut inverted = mandate("M9", "CE-038", None, live, Purpose::FollowUp);
        inverted.valid_to = Some(inverted.valid_from);
        assert!(
            store.upsert_mandates(vec![inverted]).await.is_err(),
            "[{be}] inverted period"
        );
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(
            inv.mandates_by_purpose,
            vec![
                (Purpose::Compensation, 1),
                (Purpose::FollowUp, 1),
                (Purpose::Training, 1)
            ],
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_counts_and_sizes() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        let empty = store.inventory().await.on(store, "inventory");
        assert_eq!(
            (empty.persons, empty.shredded),
            (0, 0),
            "[{be}] empty store"
        );
        assert!(empty.keys_by_kek_version.is_empty(), "[{be}]");
        assert!(empty.organisations_by_kind.is_empty(), "[{be}]");
        assert!(empty.mandates_by_purpose.is_empty(), "[{be}]");

        let first = store.reserve_person_ids(300).await.on(store, "reserve");
        let ps: Vec<SealedPerson> = (0..300)
            .map(|k| {
                let mut p = sealed(first + k, 200 + k);
                p.kek_version = if k < 100 { 1 } else { 3 };
                p
            })
            .collect();
        store.write_persons(ps, vec![]).await.on(store, "insert");
        assert!(store.shred_person(first).await.on(store, "shred"));
        assert!(store.shred_person(first + 150).await.on(store, "shred"));
        store
            .upsert_organisations(organisations())
            .await
            .on(store, "orgs");
        let (_, refused) = store
            .upsert_accounts(vec![
                account(
                    "ft.officer1",
                    "FT",
                    Role::Officer,
                    AccountState::Active,
                    None,
                    None,
                ),
                account(
                    "ce.manager1",
                    "CE-038",
                    Role::Manager,
                    AccountState::Suspended,
                    None,
                    Some("ft.officer1"),
                ),
                account(
                    "ce.agent1",
                    "CE-038",
                    Role::Agent,
                    AccountState::Requested,
                    Some("ce.manager1"),
                    None,
                ),
            ])
            .await
            .on(store, "accounts");
        assert!(refused.is_empty(), "[{be}]");
        store
            .upsert_mandates(vec![
                mandate("M1", "CE-038", None, first + 1, Purpose::FollowUp),
                mandate("M2", "CE-038", None, first + 2, Purpose::FollowUp),
                mandate("M3", "FT", None, first + 3, Purpose::DocumentProcessing),
            ])
            .await
            .on(store, "mandates");

        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!((inv.persons, inv.shredded), (300, 2), "[{be}]");
        assert_eq!(inv.keys_by_kek_version, vec![(1, 99), (3, 199)], "[{be}]");
        assert_eq!(
            inv.accounts_by_role,
            vec![(Role::Agent, 1), (Role::Manager, 1), (Role::Officer, 1)],
            "[{be}]"
        );
        assert_eq!(
            inv.accounts_by_state,
            vec![
                (AccountState::Active, 1),
                (AccountState::Requested, 1),
                (AccountState::Suspended, 1)
            ],
            "[{be}]"
        );
        assert_eq!(
            inv.mandates_by_purpose,
            vec![(Purpose::DocumentProcessing, 1), (Purpose::FollowUp, 2)],
            "[{be}]"
        );
        assert_eq!(inv.organisations_by_kind.len(), 3, "[{be}]");
        // 300 persons of ~400 sealed bytes each, at least.
        assert!(
            inv.bytes > 300 * 400,
            "[{be}] bytes = {} too small",
            inv.bytes
        );
        assert!(inv.bytes >= empty.bytes, "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_ids_page_in_order() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        assert!(
            store.person_ids(0, 10).await.on(store, "ids").is_empty(),
            "[{be}]"
        );
        let first = store.reserve_person_ids(20).await.on(store, "reserve");
        // Every other id of the range, inserted in reverse order.
        let ps: Vec<SealedPerson> = (0..10)
            .rev()
            .map(|k| sealed(first + 2 * k, 300 + k))
            .collect();
        store.write_persons(ps, vec![]).await.on(store, "insert");
        let all: Vec<i64> = (0..10).map(|k| first + 2 * k).collect();
        let mut seen = Vec::new();
        let mut after = i64::MIN;
        loop {
            let page = store.person_ids(after, 3).await.on(store, "page");
            assert!(page.len() <= 3, "[{be}]");
            let Some(&last) = page.last() else { break };
            after = last;
            seen.extend(page);
        }
        assert_eq!(seen, all, "[{be}]");
        assert_eq!(
            store.person_ids(all[4], 2).await.on(store, "page"),
            vec![all[5], all[6]],
            "[{be}] `after` is exclusive"
        );
        assert_eq!(
            store.person_ids(all[4] + 1, 1).await.on(store, "page"),
            vec![all[5]],
            "[{be}]"
        );
        assert!(
            store.person_ids(0, 0).await.on(store, "limit 0").is_empty(),
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_open_through_the_generic_entry_point() {
    let b = both().await;
    assert_eq!(b.sqlite.backend(), "sqlite");
    assert_eq!(b.pg.backend(), "postgres");
    let dir: &Path = b.dir.path();
    let s = rempart_storage::open(&dir.display().to_string())
        .await
        .expect("open sqlite by path");
    assert_eq!(s.backend(), "sqlite");
    assert_eq!(
        s.inventory().await.expect("inventory").persons,
        0,
        "same empty registry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_organisations_are_looked_up() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        assert!(
            store.organisations().await.on(store, "orgs").is_empty(),
            "[{be}]"
        );
        consultation_accounts(store).await;

        // Organisations by code order (byte order: C < F < M), with ids.
        let orgs = store.organisations().await.on(store, "orgs");
        let mut want = organisations();
        want.sort_by(|a, b| a.code.as_str().cmp(b.code.as_str()));
        assert_eq!(
            orgs.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
            want,
            "[{be}]"
        );
        let ce = org_id(store, "CE-038").await;
        let ml = org_id(store, "ML-069").await;
        assert!(ce != ml, "[{be}] distinct ids");

        let agent1 = store
            .account_by_login(&r("ce.agent1"))
            .await
            .on(store, "by login")
            .unwrap_or_else(|| panic!("[{be}] ce.agent1 missing"));
        assert_eq!(
            agent1,
            AccountRecord {
                account_id: agent1.account_id,
                login: r("ce.agent1"),
                role: Role::Agent,
                state: AccountState::Active,
                organisation_id: ce,
                organisation: r("CE-038"),
                kind: OrganisationKind::CapEmploi,
                // Imported: no request, so no creation instant.
                created_at: None,
                departement: Some("38".into()),
            },
            "[{be}]"
        );
        assert_eq!(
            store
                .account_by_id(agent1.account_id)
                .await
                .on(store, "by id"),
            Some(agent1.clone()),
            "[{be}]"
        );
        let officer = store
            .account_by_login(&r("ft.officer1"))
            .await
            .on(store, "by login")
            .unwrap_or_else(|| panic!("[{be}] ft.officer1 missing"));
        assert_eq!(
            (officer.role, officer.kind, officer.organisation.as_str()),
            (Role::Officer, OrganisationKind::FranceTravail, "FT"),
            "[{be}]"
        );
        assert_eq!(
            store
                .account_by_login(&r("nobody"))
                .await
                .on(store, "by login"),
            None,
            "[{be}]"
        );
        assert_eq!(
            store.account_by_id(999_999).await.on(store, "by id"),
            None,
            "[{be}]"
        );

        // Accounts of an organisation, by login in byte order (upper case first).
        let logins = |accounts: Vec<AccountRecord>| {
            accounts
                .into_iter()
                .map(|a| (a.login.as_str().to_string(), a.organisation_id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            logins(
                store
                    .accounts_of_organisation(ce)
                    .await
                    .on(store, "accounts of CE")
            ),
            vec![
                ("ce.Boss".to_string(), ce),
                ("ce.agent1".to_string(), ce),
                ("ce.agent2".to_string(), ce)
            ],
            "[{be}]"
        );
        assert_eq!(
            logins(
                store
                    .accounts_of_organisation(ml)
                    .await
                    .on(store, "accounts of ML")
            ),
            vec![("ml.agent1".to_string(), ml)],
            "[{be}]"
        );
        assert!(
            store
                .accounts_of_organisation(999_999)
                .await
                .on(store, "accounts of nothing")
                .is_empty(),
            "[{be}]"
        );

        // States change by id; an unknown id changes nothing.
        let agent2 = account_id(store, "ce.agent2").await;
        assert!(
            store
                .set_account_state(agent2, AccountState::Suspended)
                .await
                .on(store, "suspend"),
            "[{be}]"
        );
        let got = store.account_by_id(agent2).await.on(store, "by id");
        assert_eq!(
            got.map(|a| a.state),
            Some(AccountState::Suspended),
            "[{be}]"
        );
        assert!(
            !store
                .set_account_state(999_999, AccountState::Suspended)
                .await
                .on(store, "unknown"),
            "[{be}]"
        );
        // Only a suspension or a reactivation goes through this door.
        for to in [AccountState::Disabled, AccountState::Requested] {
            assert_invalid(
                store,
                store.set_account_state(agent2, to).await,
                "state",
                "not a suspension or reactivation",
            );
        }
        let inv = store.inventory().await.on(store, "inventory");
        assert_eq!(
            inv.accounts_by_state,
            vec![(AccountState::Active, 4), (AccountState::Suspended, 1)],
            "[{be}] only that account changed"
        );
        assert!(
            store
                .set_account_state(agent2, AccountState::Active)
                .await
                .on(store, "reactivate"),
            "[{be}]"
        );
        assert_eq!(
            store
                .account_by_login(&r("ce.agent2"))
                .await
                .on(store, "by login")
                .map(|a| a.state),
            Some(AccountState::Active),
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_round_trip_and_revoke() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let record1 = store
            .account_by_id(agent1)
            .await
            .on(store, "record")
            .unwrap_or_else(|| panic!("[{be}] agent1"));
        let digest = |tag: u8| -> [u8; 32] { std::array::from_fn(|i| tag ^ (i as u8 * 7)) };

        // Nanoseconds are cut to microseconds on both backends.
        let created = at("2026-03-01T10:00:00.123456789Z");
        let expires = at("2026-05-30T10:00:00Z");
        let id1 = store
            .insert_credential(agent1, digest(1), created, expires)
            .await
            .on(store, "insert 1");
        let id2 = store
            .insert_credential(agent1, digest(2), created, expires)
            .await
            .on(store, "insert 2");
        // Long expired, still stored and returned as such.
        let id3 = store
            .insert_credential(
                agent2,
                digest(3),
                at("2025-01-01T00:00:00Z"),
                at("2025-02-01T00:00:00Z"),
            )
            .await
            .on(store, "insert 3");
        assert!(id1 < id2 && id2 < id3, "[{be}] {id1} {id2} {id3}");

        let (c1, a1) = store
            .credential(id1)
            .await
            .on(store, "credential 1")
            .unwrap_or_else(|| panic!("[{be}] credential {id1} missing"));
        assert_eq!(
            c1,
            StoredCredential {
                id: id1,
                account_id: agent1,
                secret_digest: digest(1),
                created_at: at("2026-03-01T10:00:00.123456Z"),
                expires_at: expires,
                revoked_at: None,
            },
            "[{be}]"
        );
        assert_eq!(a1, record1, "[{be}] the credential's account");
        let (c3, a3) = store
            .credential(id3)
            .await
            .on(store, "credential 3")
            .unwrap_or_else(|| panic!("[{be}] credential {id3} missing"));
        assert_eq!(
            (
                c3.account_id,
                c3.secret_digest,
                c3.expires_at,
                c3.revoked_at
            ),
            (agent2, digest(3), at("2025-02-01T00:00:00Z"), None),
            "[{be}] expired but returned"
        );
        assert!(c3.expires_at < created, "[{be}]");
        assert_eq!(a3.login, r("ce.agent2"), "[{be}]");
        assert_eq!(
            store.credential(999_999).await.on(store, "unknown"),
            None,
            "[{be}]"
        );

        // Refusals: unknown account, empty or inverted period.
        assert_invalid(
            store,
            store
                .insert_credential(999_999, digest(4), created, expires)
                .await,
            "account_id",
            "unknown account",
        );
        assert_invalid(
            store,
            store
                .insert_credential(agent1, digest(4), created, created)
                .await,
            "expires_at",
            "empty period",
        );
        assert_invalid(
            store,
            store
                .insert_credential(agent1, digest(4), expires, created)
                .await,
            "expires_at",
            "inverted period",
        );

        // The account's state shows through the credential.
        store
            .set_account_state(agent1, AccountState::Suspended)
            .await
            .on(store, "suspend");
        let (_, a1) = store
            .credential(id1)
            .await
            .on(store, "credential 1")
            .unwrap_or_else(|| panic!("[{be}] credential {id1} missing"));
        assert_eq!(a1.state, AccountState::Suspended, "[{be}]");

        // Revoking one: only that one, once; another account's is left alone.
        let t1 = at("2026-03-02T08:00:00.000001Z");
        assert_eq!(
            store
                .revoke_credentials(agent1, Some(id1), t1)
                .await
                .on(store, "revoke 1"),
            1,
            "[{be}]"
        );
        assert_eq!(
            store
                .revoke_credentials(agent1, Some(id1), t1)
                .await
                .on(store, "revoke 1 again"),
            0,
            "[{be}]"
        );
        assert_eq!(
            store
                .revoke_credentials(agent2, Some(id2), t1)
                .await
                .on(store, "revoke another's"),
            0,
            "[{be}]"
        );
        let revoked_at = |id| async move {
            store
                .credential(id)
                .await
                .on(store, "credential")
                .unwrap_or_else(|| panic!("[{be}] credential {id} missing"))
                .0
                .revoked_at
        };
        assert_eq!(revoked_at(id1).await, Some(t1), "[{be}]");
        assert_eq!(revoked_at(id2).await, None, "[{be}]");

        // Revoking all of an account: the ones not yet revoked.
        let t2 = at("2026-03-03T08:00:00Z");
        assert_eq!(
            store
                .revoke_credentials(agent1, None, t2)
                .await
                .on(store, "revoke all"),
            1,
            "[{be}]"
        );
        assert_eq!(
            revoked_at(id1).await,
            Some(t1),
            "[{be}] first revocation kept"
        );
        assert_eq!(revoked_at(id2).await, Some(t2), "[{be}]");
        assert_eq!(
            revoked_at(id3).await,
            None,
            "[{be}] other account untouched"
        );
        assert_eq!(
            store
                .revoke_credentials(agent1, None, t2)
                .await
                .on(store, "revoke all again"),
            0,
            "[{be}]"
        );
        assert_eq!(
            store
                .revoke_credentials(agent2, None, t2)
                .await
                .on(store, "revoke agent2"),
            1,
            "[{be}]"
        );
        assert_eq!(revoked_at(id3).await, Some(t2), "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_reasons_come_with_their_mandate_and_go_with_the_person() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        consultation_accounts(store).await;
        let ce = org_id(store, "CE-038").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let ps = insert_persons(store, 3, 700).await;
        let (glass, other, gone) = (ps[0].id, ps[1].id, ps[2].id);
        assert!(store.shred_person(gone).await.on(store, "shred"));
        let at = DateTime::from_timestamp(1_790_000_000, 123_456_000).unwrap();
        let grant = |reference: &str, person_id: i64| NewMandate {
            reference: r(reference),
            organisation_id: ce,
            account_id: Some(agent1),
            person_id,
            purpose: Purpose::FollowUp,
            valid_from: day(2026, 12, 5),
            valid_to: Some(day(2026, 12, 6)),
            source: r("break_glass"),
        };
        let reason = |n: u8| NewBreakGlassReason {
            account_id: agent1,
            created_at: at,
            dek_version: 1,
            sealed: vec![n; 80],
        };

        // Refused like a grant, and then nothing is written.
        assert_invalid(
            store,
            store
                .grant_break_glass(grant("BG-0", gone), reason(0))
                .await,
            "person_id",
            "shredded person",
        );
        assert_invalid(
            store,
            store
                .grant_break_glass(grant("BG-0", other + 1000), reason(0))
                .await,
            "person_id",
            "unknown person",
        );
        // Sealed under another data key than the person's: a conflict.
        assert_conflict(
            store,
            store
                .grant_break_glass(
                    grant("BG-0", glass),
                    NewBreakGlassReason {
                        dek_version: 2,
                        ..reason(0)
                    },
                )
                .await,
            "another data key version",
        );
        // A reference already used: the reason is not kept either.
        store
            .grant_mandate(grant("BG-USED", other))
            .await
            .on(store, "grant");
        assert_invalid(
            store,
            store
                .grant_break_glass(grant("BG-USED", glass), reason(0))
                .await,
            "reference",
            "duplicate reference",
        );
        for p in [glass, gone] {
            assert!(
                store
                    .break_glass_reasons(p)
                    .await
                    .on(store, "reasons")
                    .is_empty(),
                "[{be}] refusals keep no reason"
            );
        }
        assert!(
            store
                .mandates_of_person(glass)
                .await
                .on(store, "mandates")
                .is_empty(),
            "[{be}] refusals grant nothing"
        );

        // Two break-glasses on one person, one on another.
        let m1 = store
            .grant_break_glass(grant("BG-1", glass), reason(1))
            .await
            .on(store, "break-glass 1");
        let m2 = store
            .grant_break_glass(grant("BG-2", glass), reason(2))
            .await
            .on(store, "break-glass 2");
        let m3 = store
            .grant_break_glass(grant("BG-3", other), reason(3))
            .await
            .on(store, "break-glass 3");
        assert_eq!(
            store.mandates_of_person(glass).await.on(store, "mandates"),
            vec![m1.clone(), m2.clone()],
            "[{be}]"
        );
        let kept = store.break_glass_reasons(glass).await.on(store, "reasons");
        assert_eq!(kept.len(), 2, "[{be}]");
        assert_eq!(
            (
                kept[0].mandate_id,
                kept[0].person_id,
                kept[0].account_id,
                kept[0].created_at,
                kept[0].dek_version,
                kept[0].sealed.clone()
            ),
            (m1.id, glass, agent1, at, 1, vec![1; 80]),
            "[{be}]"
        );
        assert_eq!(
            (kept[1].mandate_id, kept[1].sealed.clone()),
            (m2.id, vec![2; 80]),
            "[{be}]"
        );
        assert!(kept[0].id < kept[1].id, "[{be}]");

        // Shredding the person takes their reasons, and only theirs; the
        // mandates stay (they name no one in clear).
        assert!(store.shred_person(glass).await.on(store, "shred"));
        assert!(
            store
                .break_glass_reasons(glass)
                .await
                .on(store, "reasons")
                .is_empty(),
            "[{be}] shredded with the person"
        );
        assert_eq!(
            store.break_glass_reasons(other).await.on(store, "reasons")[0].mandate_id,
            m3.id,
            "[{be}] another person's reason stays"
        );
        assert_eq!(
            store
                .mandates_of_person(glass)
                .await
                .on(store, "mandates")
                .len(),
            2,
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_mandates_are_checked_and_revocable() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        consultation_accounts(store).await;
        let ce = org_id(store, "CE-038").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let ml_agent = account_id(store, "ml.agent1").await;
        let ps = insert_persons(store, 3, 500).await;
        let (live, other, shredded) = (ps[0].id, ps[1].id, ps[2].id);
        assert!(store.shred_person(shredded).await.on(store, "shred"));
        // An imported mandate, whose reference a grant may not reuse.
        let (_, refused) = store
            .upsert_mandates(vec![mandate(
                "M1",
                "CE-038",
                None,
                other,
                Purpose::FollowUp,
            )])
            .await
            .on(store, "import");
        assert!(refused.is_empty(), "[{be}] {refused:?}");

        let base = NewMandate {
            reference: r("G1"),
            organisation_id: ce,
            account_id: Some(agent1),
            person_id: live,
            purpose: Purpose::FollowUp,
            valid_from: day(2026, 1, 1),
            valid_to: Some(day(2026, 7, 1)),
            source: r("break-glass"),
        };
        let refusals: Vec<(&str, &str, NewMandate)> = vec![
            (
                "unknown person",
                "person_id",
                NewMandate {
                    person_id: live + 1000,
                    ..base.clone()
                },
            ),
            (
                "shredded person",
                "person_id",
                NewMandate {
                    person_id: shredded,
                    ..base.clone()
                },
            ),
            (
                "unknown organisation",
                "organisation_id",
                NewMandate {
                    organisation_id: 999_999,
                    ..base.clone()
                },
            ),
            (
                "unknown account",
                "account_id",
                NewMandate {
                    account_id: Some(999_999),
                    ..base.clone()
                },
            ),
            (
                "account of another organisation",
                "account_id",
                NewMandate {
                    account_id: Some(ml_agent),
                    ..base.clone()
                },
            ),
            (
                "empty period",
                "valid_to",
                NewMandate {
                    valid_to: Some(base.valid_from),
                    ..base.clone()
                },
            ),
            (
                "inverted period",
                "valid_to",
                NewMandate {
                    valid_to: Some(day(2025, 12, 31)),
                    ..base.clone()
                },
            ),
            (
                "imported reference",
                "reference",
                NewMandate {
                    reference: r("M1"),
                    ..base.clone()
                },
            ),
        ];
        for (what, field, m) in refusals {
            // Rehearsed first, as the consultation path does: the same refusal.
            assert_invalid(store, store.rehearse_grant(&m).await, field, what);
            assert_invalid(store, store.grant_mandate(m).await, field, what);
        }
        // A rehearsal of a valid grant refuses nothing and writes nothing.
        store
            .rehearse_grant(&base)
            .await
            .on(store, "rehearse a grant");
        assert!(
            store
                .mandates_of_person(live)
                .await
                .on(store, "mandates")
                .is_empty(),
            "[{be}] refusals and rehearsals write nothing"
        );

        let g1 = store.grant_mandate(base.clone()).await.on(store, "grant");
        assert_eq!(
            g1,
            StoredMandate {
                id: g1.id,
                reference: r("G1"),
                organisation: r("CE-038"),
                organisation_id: ce,
                account: Some(r("ce.agent1")),
                account_id: Some(agent1),
                person_id: live,
                purpose: Purpose::FollowUp,
                valid_from: day(2026, 1, 1),
                valid_to: Some(day(2026, 7, 1)),
                source: r("break-glass"),
                revoked_at: None,
            },
            "[{be}]"
        );
        assert_invalid(
            store,
            store.grant_mandate(base.clone()).await,
            "reference",
            "duplicate reference",
        );
        let g2 = store
            .grant_mandate(NewMandate {
                reference: r("G2"),
                account_id: None,
                purpose: Purpose::Training,
                valid_to: None,
                ..base.clone()
            })
            .await
            .on(store, "grant open-ended");
        assert_eq!(
            (g2.account.clone(), g2.account_id, g2.valid_to),
            (None, None, None),
            "[{be}]"
        );
        assert!(g1.id < g2.id, "[{be}]");
        assert_eq!(
            store.mandates_of_person(live).await.on(store, "mandates"),
            vec![g1.clone(), g2.clone()],
            "[{be}] granted mandates show with their ids"
        );
        assert_eq!(
            store.mandate(g1.id).await.on(store, "mandate"),
            Some(g1.clone()),
            "[{be}]"
        );
        assert_eq!(
            store.mandate(999_999).await.on(store, "mandate"),
            None,
            "[{be}]"
        );

        // Revocation: not live any more, out of the caseload at once.
        let on = day(2026, 3, 1);
        let caseload = || async {
            store
                .caseload(ce, agent1, None, on, i64::MIN, 100)
                .await
                .on(store, "caseload")
                .iter()
                .map(|e| e.mandate_id)
                .collect::<Vec<_>>()
        };
        let m1 = store.mandates_of_person(other).await.on(store, "mandates")[0].clone();
        assert_eq!(caseload().await, vec![g1.id, g2.id, m1.id], "[{be}]");
        let t = at("2026-03-01T09:30:00.5Z");
        assert!(
            store.revoke_mandate(g1.id, t).await.on(store, "revoke"),
            "[{be}]"
        );
        let revoked = store
            .mandate(g1.id)
            .await
            .on(store, "mandate")
            .unwrap_or_else(|| panic!("[{be}] revoked mandate missing"));
        assert_eq!(revoked.revoked_at, Some(t), "[{be}]");
        assert!(!revoked.is_live_on(on), "[{be}]");
        assert!(
            g1.is_live_on(on),
            "[{be}] the same mandate before revocation"
        );
        assert_eq!(caseload().await, vec![g2.id, m1.id], "[{be}]");
        assert!(
            !store
                .revoke_mandate(g1.id, at("2026-03-02T00:00:00Z"))
                .await
                .on(store, "revoke again"),
            "[{be}]"
        );
        assert!(
            !store
                .revoke_mandate(999_999, t)
                .await
                .on(store, "revoke unknown"),
            "[{be}]"
        );
        let held = store.mandates_of_person(live).await.on(store, "mandates");
        assert_eq!(
            held.iter()
                .map(|m| (m.id, m.revoked_at))
                .collect::<Vec<_>>(),
            vec![(g1.id, Some(t)), (g2.id, None)],
            "[{be}] revoked mandates stay listed, first revocation kept"
        );

        // An import never brings a revoked mandate back to life.
        assert!(store.revoke_mandate(m1.id, t).await.on(store, "revoke M1"));
        assert_eq!(caseload().await, vec![g2.id], "[{be}]");
        let mut changed = mandate("M1", "CE-038", None, other, Purpose::FollowUp);
        changed.valid_to = Some(day(2027, 1, 1));
        let (c, _) = store
            .upsert_mandates(vec![changed])
            .await
            .on(store, "re-import");
        assert_eq!(c, count(0, 1, 0), "[{be}]");
        let m1 = store
            .mandate(m1.id)
            .await
            .on(store, "mandate")
            .unwrap_or_else(|| panic!("[{be}] M1 missing"));
        assert_eq!(
            (m1.valid_to, m1.revoked_at),
            (Some(day(2027, 1, 1)), Some(t)),
            "[{be}]"
        );
        assert!(!m1.is_live_on(on), "[{be}]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caseload_pages_through_live_mandates_once() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        consultation_accounts(store).await;
        let ce = org_id(store, "CE-038").await;
        let ml = org_id(store, "ML-069").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let ml_agent = account_id(store, "ml.agent1").await;
        let on = day(2026, 3, 1);
        let ps = insert_persons(store, 40, 700).await;

        // What each mandate is, and whether agent1's caseload on `on` shows it.
        struct Spec {
            reference: String,
            person: i64,
            row: MandateRow,
            revoke: bool,
            shown: bool,
        }
        let mut specs: Vec<Spec> = Vec::new();
        let mut add =
            |k: usize, tag: &str, org: &str, acc: Option<&str>, purpose, from, to, shown| {
                let reference = format!("C{k}-{tag}");
                let mut row = mandate(&reference, org, acc, ps[k].id, purpose);
                row.valid_from = from;
                row.valid_to = to;
                specs.push(Spec {
                    reference,
                    person: ps[k].id,
                    row,
                    revoke: tag == "revoked",
                    shown,
                });
            };
        let (jan, jul) = (day(2026, 1, 1), Some(day(2026, 7, 1)));
        let shredded = [9, 16];
        for k in 0..40 {
            let gone = shredded.contains(&k);
            if k % 4 == 0 {
                add(k, "org", "CE-038", None, Purpose::FollowUp, jan, jul, !gone);
            }
            if k % 3 == 0 {
                let open = day(2025, 6, 1);
                add(
                    k,
                    "a1",
                    "CE-038",
                    Some("ce.agent1"),
                    Purpose::Training,
                    open,
                    None,
                    !gone,
                );
            }
            if k % 5 == 0 {
                add(
                    k,
                    "a2",
                    "CE-038",
                    Some("ce.agent2"),
                    Purpose::FollowUp,
                    jan,
                    jul,
                    false,
                );
            }
            if k % 7 == 0 {
                add(k, "ml", "ML-069", None, Purpose::FollowUp, jan, jul, false);
            }
            if k % 6 == 1 {
                // Ends on `on`: the end is exclusive.
                add(
                    k,
                    "expired",
                    "CE-038",
                    None,
                    Purpose::FollowUp,
                    day(2025, 1, 1),
                    Some(on),
                    false,
                );
            }
            if k % 8 == 2 {
                add(
                    k,
                    "future",
                    "CE-038",
                    None,
                    Purpose::FollowUp,
                    day(2026, 3, 2),
                    jul,
                    false,
                );
            }
            if k % 9 == 4 {
                add(
                    k,
                    "revoked",
                    "CE-038",
                    None,
                    Purpose::FollowUp,
                    jan,
                    jul,
                    false,
                );
            }
            if k == 12 || k == 25 {
                // Several live mandates on one person.
                add(
                    k,
                    "comp",
                    "CE-038",
                    None,
                    Purpose::Compensation,
                    on,
                    None,
                    true,
                );
            }
        }
        let rows: Vec<MandateRow> = specs.iter().map(|s| s.row.clone()).collect();
        let (c, refused) = store.upsert_mandates(rows).await.on(store, "mandates");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        assert_eq!(c.inserted as usize, specs.len(), "[{be}]");
        for k in shredded {
            assert!(store.shred_person(ps[k].id).await.on(store, "shred"));
        }

        // The stored mandates, by reference.
        let mut stored = std::collections::HashMap::new();
        for p in &ps {
            for m in store.mandates_of_person(p.id).await.on(store, "mandates") {
                stored.insert(m.reference.as_str().to_string(), m);
            }
        }
        assert_eq!(stored.len(), specs.len(), "[{be}]");
        let id_of = |s: &Spec| -> Option<i64> { stored.get(&s.reference).map(|m| m.id) };
        for s in specs.iter().filter(|s| s.revoke) {
            let id = id_of(s).unwrap_or_else(|| panic!("[{be}] {} missing", s.reference));
            assert!(
                store
                    .revoke_mandate(id, at("2026-02-01T00:00:00Z"))
                    .await
                    .on(store, "revoke")
            );
        }
        let entry = |s: &Spec| CaseloadEntry {
            person_id: s.person,
            purpose: s.row.purpose,
            mandate_id: id_of(s).unwrap_or_else(|| panic!("[{be}] {} missing", s.reference)),
            valid_to: s.row.valid_to,
        };
        // What a caseload should hold, worked out from the specs.
        let expected = |org: &str, login: &str| {
            let mut v: Vec<CaseloadEntry> = specs
                .iter()
                .filter(|s| {
                    !s.revoke
                        && !shredded.iter().any(|&k| ps[k].id == s.person)
                        && s.row.valid_from <= on
                        && s.row.valid_to.is_none_or(|t| on < t)
                        && s.row.organisation.as_str() == org
                        && s.row.account.as_ref().is_none_or(|a| a.as_str() == login)
                })
                .map(entry)
                .collect();
            v.sort_by_key(|e| (e.person_id, e.mandate_id));
            v
        };
        let want = expected("CE-038", "ce.agent1");
        let mut shown: Vec<CaseloadEntry> = specs.iter().filter(|s| s.shown).map(entry).collect();
        shown.sort_by_key(|e| (e.person_id, e.mandate_id));
        assert_eq!(want, shown, "[{be}] the two oracles agree");
        assert!(
            want.len() > 20,
            "[{be}] a caseload worth paging: {}",
            want.len()
        );
        assert!(
            want.windows(3).any(|w| w[0].person_id == w[2].person_id),
            "[{be}] a person with three live mandates"
        );

        // Every page size returns every live mandate exactly once, pages
        // never split a person, and only an empty page ends.
        let all_pages = |organisation: i64, account: i64, purpose: Option<Purpose>, limit: u32| async move {
            let mut pages: Vec<Vec<CaseloadEntry>> = Vec::new();
            let mut after = i64::MIN;
            loop {
                let page = store
                    .caseload(organisation, account, purpose, on, after, limit)
                    .await
                    .on(store, "caseload");
                assert!(page.len() <= limit as usize, "[{be}] limit {limit}");
                let Some(last) = page.last() else { break };
                after = last.person_id;
                pages.push(page);
                assert!(pages.len() < 1000, "[{be}] paging does not end");
            }
            pages
        };
        for limit in [3, 4, 7, 1000] {
            let pages = all_pages(ce, agent1, None, limit).await;
            if limit < 1000 {
                assert!(
                    pages.len() > 3,
                    "[{be}] limit {limit}: {} pages",
                    pages.len()
                );
            }
            for w in pages.windows(2) {
                let last = w[0].last().map(|e| e.person_id);
                assert!(
                    w[1].iter().all(|e| Some(e.person_id) != last),
                    "[{be}] limit {limit}: a person split across pages"
                );
            }
            assert_eq!(pages.concat(), want, "[{be}] limit {limit}");
        }

        // The purpose filter.
        for purpose in [
            Purpose::Training,
            Purpose::Compensation,
            Purpose::DocumentProcessing,
        ] {
            let got = all_pages(ce, agent1, Some(purpose), 5).await.concat();
            let filtered: Vec<CaseloadEntry> = want
                .iter()
                .filter(|e| e.purpose == purpose)
                .cloned()
                .collect();
            assert_eq!(got, filtered, "[{be}] {purpose}");
        }
        assert!(
            !all_pages(ce, agent1, Some(Purpose::Training), 5)
                .await
                .is_empty(),
            "[{be}]"
        );

        // Another account sees the organisation's mandates and its own.
        let want2 = expected("CE-038", "ce.agent2");
        assert!(
            want2.len()
                > want
                    .iter()
                    .filter(|e| e.purpose == Purpose::FollowUp)
                    .count(),
            "[{be}] agent2 has mandates of its own"
        );
        assert_eq!(
            all_pages(ce, agent2, None, 4).await.concat(),
            want2,
            "[{be}] agent2"
        );
        let want_ml = expected("ML-069", "ml.agent1");
        assert!(!want_ml.is_empty(), "[{be}]");
        assert_eq!(
            all_pages(ml, ml_agent, None, 4).await.concat(),
            want_ml,
            "[{be}] ML-069"
        );
        // An account of another organisation only gets the organisation's
        // own mandates (held as a whole).
        assert_eq!(
            all_pages(ce, ml_agent, None, 4).await.concat(),
            expected("CE-038", "nobody"),
            "[{be}] CE-038 with an account of ML-069"
        );

        // Before any mandate starts, and after the last page: nothing.
        assert!(
            store
                .caseload(ce, agent1, None, day(2020, 1, 1), i64::MIN, 10)
                .await
                .on(store, "caseload")
                .is_empty(),
            "[{be}]"
        );
        let last_person = want.last().map(|e| e.person_id).unwrap_or_default();
        assert!(
            store
                .caseload(ce, agent1, None, on, last_person, 10)
                .await
                .on(store, "caseload")
                .is_empty(),
            "[{be}]"
        );
        assert!(
            store
                .caseload(ce, agent1, None, on, i64::MIN, 0)
                .await
                .on(store, "caseload")
                .is_empty(),
            "[{be}] limit 0"
        );

        // A person whose live mandates alone exceed the page: the first ones.
        let crowded = want
            .windows(3)
            .find(|w| w[0].person_id == w[2].person_id)
            .map(|w| w[0].person_id)
            .unwrap_or_default();
        let page = store
            .caseload(ce, agent1, None, on, crowded - 1, 2)
            .await
            .on(store, "caseload");
        let theirs: Vec<CaseloadEntry> = want
            .iter()
            .filter(|e| e.person_id == crowded)
            .take(2)
            .cloned()
            .collect();
        assert_eq!(page, theirs, "[{be}]");

        // A revocation takes effect on the next page asked.
        let first = want[0].clone();
        assert!(
            store
                .revoke_mandate(first.mandate_id, at("2026-03-01T12:00:00Z"))
                .await
                .on(store, "revoke")
        );
        let got = all_pages(ce, agent1, None, 5).await.concat();
        assert_eq!(got, want[1..].to_vec(), "[{be}] after revocation");
    }
}

/// Version 1 data, written with version 1's SQL alone: one organisation,
/// one person, one mandate naming no account.
const V1_DATA: &str = "
    INSERT INTO organisation (id, code, kind, name) VALUES (1, 'CE-038', 'cap_emploi', 'Cap emploi');
    INSERT INTO person (id, kek_version, dek_version, wrapped_dek, identity, contact, nir, status)
        VALUES (1, 1, 1, x'01', x'02', x'03', x'04', x'05');
    INSERT INTO mandate (id, reference, organisation_id, person_id, purpose, valid_from, source)
        VALUES (1, 'M1', 1, 1, 'follow_up', '2026-01-01', 'orientation');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_registries_are_upgraded_in_place() {
    let url = pg_url();
    let v1 = migrate::SQLITE[0];
    assert_eq!(v1.version, 1);

    // SQLite: a registry left at version 1, with data.
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let db = rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
            .expect("raw sqlite");
        db.execute_batch(
            "CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT;",
        )
        .expect("schema_migrations");
        db.execute_batch(v1.sql).expect("version 1");
        db.execute(
            "INSERT INTO schema_migrations VALUES (1, ?1, ?2, datetime('now'))",
            rusqlite::params![v1.name, v1.checksum()],
        )
        .expect("version 1 applied");
        db.execute_batch(V1_DATA).expect("version 1 data");
    }
    let sqlite: Arc<dyn RegistryStore> = Arc::new(
        SqliteStore::open(dir.path())
            .await
            .expect("[sqlite] upgrade"),
    );

    // PostgreSQL: the same, in a fresh schema (`x'…'` is a bit string there).
    let schema = unique_schema();
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let pg_v1 = migrate::POSTGRES[0];
    pg_exec_blocking(
        &url,
        &format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\";
             CREATE TABLE schema_migrations (
                 version INT PRIMARY KEY, name TEXT NOT NULL,
                 checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL);
             {}
             INSERT INTO schema_migrations VALUES (1, '{}', '{}', now());
             {}",
            pg_v1.sql,
            pg_v1.name,
            pg_v1.checksum(),
            V1_DATA.replace("x'", "'\\x")
        ),
    )
    .expect("[postgres] version 1 registry");
    let pg = connect_pg(&url, &schema).await;

    for store in [&*sqlite, &*pg] {
        let be = store.backend();
        let held = store.mandates_of_person(1).await.on(store, "mandates");
        assert_eq!(held.len(), 1, "[{be}]");
        assert_eq!(
            (
                held[0].reference.as_str(),
                held[0].organisation_id,
                held[0].account_id,
                held[0].revoked_at
            ),
            ("M1", 1, None, None),
            "[{be}] kept, not revoked"
        );
        assert!(held[0].is_live_on(day(2026, 3, 1)), "[{be}]");
        assert_eq!(
            store
                .caseload(1, 1, None, day(2026, 3, 1), i64::MIN, 10)
                .await
                .on(store, "caseload")
                .iter()
                .map(|e| e.mandate_id)
                .collect::<Vec<_>>(),
            vec![1],
            "[{be}]"
        );
        assert!(
            store
                .revoke_mandate(1, at("2026-03-01T00:00:00Z"))
                .await
                .on(store, "revoke"),
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_rows_answer_like_the_three_lookups() {
    let b = both().await;
    for store in b.stores() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let cred = store
            .insert_credential(
                agent1,
                [9; 32],
                at("2026-03-01T10:00:00Z"),
                at("2026-05-30T10:00:00Z"),
            )
            .await
            .on(store, "credential");
        let ps = insert_persons(store, 2, 700).await;
        let (kept, shredded) = (ps[0].id, ps[1].id);
        let (_, refused) = store
            .upsert_mandates(vec![
                mandate("R1", "CE-038", None, kept, Purpose::FollowUp),
                mandate("R2", "CE-038", Some("ce.agent1"), kept, Purpose::Training),
            ])
            .await
            .on(store, "mandates");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        assert!(store.shred_person(shredded).await.on(store, "shred"));
        for (c, p) in [
            (cred, kept),
            (cred, shredded),
            (cred + 1000, kept),
            (cred, 999_999),
        ] {
            let rows = store
                .consultation_rows(c, p)
                .await
                .on(store, "consultation rows");
            assert_eq!(
                rows.credential,
                store.credential(c).await.on(store, "credential"),
                "[{be}] {c} {p}"
            );
            assert_eq!(
                rows.mandates,
                store.mandates_of_person(p).await.on(store, "mandates"),
                "[{be}] {c} {p}"
            );
            assert_eq!(
                rows.person,
                store
                    .read_person(p, FieldGroup::ALL)
                    .await
                    .on(store, "person"),
                "[{be}] {c} {p}"
            );
        }
        let rows = store
            .consultation_rows(cred, kept)
            .await
            .on(store, "consultation rows");
        assert_eq!(rows.mandates.len(), 2, "[{be}]");
        assert!(rows.credential.is_some() && rows.person.is_some(), "[{be}]");
    }
}

/// What a store keeps in memory (credentials checked, organisation codes and
/// account logins) never outlives a change made by another process: a
/// second store on the same database plays the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_copies_follow_every_writer() {
    let b = both().await;
    let sqlite_cli: Arc<dyn RegistryStore> = Arc::new(
        SqliteStore::open(b.dir.path())
            .await
            .expect("second SQLite store"),
    );
    let pg_cli = connect_pg(&b.url, &b.schema).await;
    for (store, cli) in [(&*b.sqlite, &*sqlite_cli), (&*b.pg, &*pg_cli)] {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let new_credential = |n: u8| {
            store.insert_credential(
                agent1,
                [n; 32],
                at("2026-03-01T10:00:00Z"),
                at("2026-05-30T10:00:00Z"),
            )
        };
        let cred = new_credential(1).await.on(store, "credential");
        let p = insert_persons(store, 1, 900).await[0].id;
        let (_, refused) = store
            .upsert_mandates(vec![mandate(
                "K1",
                "CE-038",
                Some("ce.agent1"),
                p,
                Purpose::FollowUp,
            )])
            .await
            .on(store, "mandates");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let seen = |store: &'static str| format!("[{be}] {store}");
        let caller = |rows: &ConsultationRows| rows.credential.clone().expect("credential");

        // Read twice: the second answer is the kept copy, and equal.
        let first = store.consultation_rows(cred, p).await.on(store, "rows");
        let again = store.consultation_rows(cred, p).await.on(store, "rows");
        assert_eq!(first, again, "{}", seen("twice"));
        assert_eq!(
            store.credential(cred).await.on(store, "credential"),
            first.credential,
            "{}",
            seen("credential()")
        );
        let m = &first.mandates[0];
        assert_eq!(m.organisation.as_str(), "CE-038", "{}", seen("org code"));
        assert_eq!(
            m.account.as_ref().map(Reference::as_str),
            Some("ce.agent1"),
            "{}",
            seen("login")
        );
        assert_eq!(caller(&first).0.revoked_at, None, "{}", seen("fresh"));

        // Another process revokes: the very next read says so.
        let revoked_at = at("2026-03-02T08:00:00Z");
        assert_eq!(
            cli.revoke_credentials(agent1, Some(cred), revoked_at)
                .await
                .on(cli, "revoke"),
            1
        );
        let rows = store.consultation_rows(cred, p).await.on(store, "rows");
        assert_eq!(
            caller(&rows).0.revoked_at,
            Some(revoked_at),
            "{}",
            seen("revoked")
        );
        let alone = store.credential(cred).await.on(store, "credential");
        assert_eq!(
            alone.map(|c| c.0.revoked_at),
            Some(Some(revoked_at)),
            "{}",
            seen("revoked()")
        );

        // A suspension, a change of role, a move of the organisation.
        let cred2 = new_credential(2).await.on(store, "credential");
        let kept = store.consultation_rows(cred2, p).await.on(store, "rows");
        assert_eq!(
            caller(&kept).1.state,
            AccountState::Active,
            "{}",
            seen("active")
        );
        assert!(
            cli.set_account_state(agent1, AccountState::Suspended)
                .await
                .on(cli, "suspend")
        );
        let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
        assert_eq!(
            caller(&rows).1.state,
            AccountState::Suspended,
            "{}",
            seen("suspended")
        );
        let (_, refused) = cli
            .upsert_accounts(vec![account(
                "ce.agent1",
                "CE-038",
                Role::Manager,
                AccountState::Active,
                None,
                Some("ft.officer1"),
            )])
            .await
            .on(cli, "accounts");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
        assert_eq!(caller(&rows).1.role, Role::Manager, "{}", seen("role"));
        assert_eq!(
            caller(&rows).1.state,
            AccountState::Active,
            "{}",
            seen("reactivated")
        );
        let before = caller(&rows).1.departement.clone();
        cli.upsert_organisations(vec![org(
            "CE-038",
            OrganisationKind::CapEmploi,
            "Cap emploi Isère",
            Some("73"),
        )])
        .await
        .on(cli, "organisation");
        let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
        assert_ne!(before.as_deref(), Some("73"), "{}", seen("setup"));
        assert_eq!(
            caller(&rows).1.departement.as_deref(),
            Some("73"),
            "{}",
            seen("moved")
        );

        // The names kept in memory cannot change under the copy.
        let refusals = match be {
            "sqlite" => {
                let c = rusqlite::Connection::open(b.dir.path().join("registry.db"))
                    .expect("raw SQLite connection");
                [
                    "UPDATE organisation SET code = 'CE-999' WHERE code = 'CE-038'",
                    "UPDATE account SET login = 'ce.other' WHERE login = 'ce.agent1'",
                    "DELETE FROM account WHERE login = 'ce.agent2'",
                    "DELETE FROM organisation WHERE code = 'ML-069'",
                ]
                .map(|sql| c.execute_batch(sql).err().map(|e| e.to_string()))
            }
            _ => {
                let sch = &b.schema;
                [
                    format!("UPDATE {sch}.organisation SET code = 'CE-999' WHERE code = 'CE-038'"),
                    format!(
                        "UPDATE {sch}.account SET login = 'ce.other' WHERE login = 'ce.agent1'"
                    ),
                    format!("DELETE FROM {sch}.account WHERE login = 'ce.agent2'"),
                    format!("DELETE FROM {sch}.organisation WHERE code = 'ML-069'"),
                ]
                .map(|sql| pg_exec_blocking(&b.url, &sql).err())
            }
        };
        for (refusal, says) in refusals.iter().zip([
            "code never",
            "login never",
            "never deleted",
            "never deleted",
        ]) {
            let refusal = refusal.as_deref().unwrap_or("accepted");
            assert!(refusal.contains(says), "[{be}] {refusal}");
        }
        let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
        assert_eq!(
            rows.mandates[0].organisation.as_str(),
            "CE-038",
            "{}",
            seen("code kept")
        );
    }
}

// ---------------------------------------------------------------- authentication

use chrono::TimeDelta;
use rempart_storage::{
    AccessTokenRow, AccountLifecycle, ActivationFactors, ApiClientRow, AuthStore, CredentialReset,
    FederationLink, NewAccountRequest, NewActivation, ResetKind, StoredPasskeyRow, StoredSession,
    StoredTotp, Stores,
};

/// Both backends, each opened once and seen through both interfaces (the
/// same connections behind both).
struct BothAuth {
    _dir: TempDir,
    sqlite: Stores,
    pg: Stores,
    _guard: SchemaGuard,
}

impl BothAuth {
    fn each(&self) -> [(&dyn RegistryStore, &dyn AuthStore); 2] {
        [
            (&*self.sqlite.registry, &*self.sqlite.auth),
            (&*self.pg.registry, &*self.pg.auth),
        ]
    }
}

async fn both_auth() -> BothAuth {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = Stores::from(
        SqliteStore::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("SQLite store in {}: {e}", dir.path().display())),
    );
    let url = pg_url();
    let schema = unique_schema();
    let guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let pg = Stores::from(
        PgStore::connect_store(&url, &schema)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL test database unusable at {url} (schema {schema}): {e}\n\
             Start PostgreSQL or set REMPART_TEST_DATABASE_URL; these tests never skip."
                )
            }),
    );
    BothAuth {
        _dir: dir,
        sqlite,
        pg,
        _guard: guard,
    }
}

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

const PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
const PHC2: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNob3RoZXJoYXNo";

fn plus(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    t + TimeDelta::seconds(secs)
}

fn session_of(account_id: i64, n: u8, method: &str, t: DateTime<Utc>) -> StoredSession {
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

fn passkey_of(account_id: i64, credential_id: &[u8], t: DateTime<Utc>) -> StoredPasskeyRow {
    StoredPasskeyRow {
        credential_id: credential_id.to_vec(),
        account_id,
        data: format!(r#"{{"cred":"{}","counter":0}}"#, credential_id.len()),
        created_at: t,
        last_used_at: None,
    }
}

/// Gives an account every factor and one live session `n`.
async fn enrol_everything(
    store: &dyn RegistryStore,
    auth: &dyn AuthStore,
    account_id: i64,
    n: u8,
    t: DateTime<Utc>,
) {
    auth.set_password(account_id, PHC, t)
        .await
        .on(store, "password");
    auth.set_totp(StoredTotp {
        account_id,
        sealed_secret: blob(20, i64::from(n), 48),
        last_step: Some(100),
        enrolled_at: t,
    })
    .await
    .on(store, "totp");
    for k in [n, n + 100] {
        auth.add_passkey(passkey_of(account_id, &[k; 16], t))
            .await
            .on(store, "passkey");
    }
    auth.insert_session(session_of(account_id, n, "passkey", t))
        .await
        .on(store, "session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_requests_are_decided_once_by_an_outside_officer() {
    use AccountState::{Active, Disabled, Requested, Suspended};
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let (_, refused) = store
            .upsert_accounts(vec![
                account(
                    "ce.officer",
                    "CE-038",
                    Role::Officer,
                    Active,
                    None,
                    Some("ft.officer1"),
                ),
                account("ft.officer2", "FT", Role::Officer, Active, None, None),
            ])
            .await
            .on(store, "officers");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let ce = org_id(store, "CE-038").await;
        let boss = account_id(store, "ce.Boss").await;
        let officer = account_id(store, "ft.officer1").await;
        let officer2 = account_id(store, "ft.officer2").await;
        let ce_officer = account_id(store, "ce.officer").await;
        let request = |login: &str, minutes: i64| NewAccountRequest {
            organisation_id: ce,
            login: r(login),
            role: Role::Agent,
            requested_by: boss,
            at: plus(t0, 60 * minutes),
        };

        let new1 = auth
            .request_account(request("ce.new1", 0))
            .await
            .on(store, "request");
        assert_eq!(
            (
                new1.login.as_str(),
                new1.state,
                new1.role,
                new1.organisation_id
            ),
            ("ce.new1", Requested, Role::Agent, ce),
            "[{be}]"
        );
        assert_eq!(
            auth.lifecycle(new1.account_id).await.on(store, "lifecycle"),
            Some(AccountLifecycle {
                account_id: new1.account_id,
                created_at: Some(t0),
                requested_by: Some(boss),
                decided_by: None,
                decided_at: None,
                last_login_at: None,
                next_session_high_risk: false,
            }),
            "[{be}]"
        );
        assert_eq!(
            store
                .account_by_id(new1.account_id)
                .await
                .on(store, "by id"),
            Some(new1.clone()),
            "[{be}] the registry sees the same account"
        );

        // Refused requests.
        for (req, field, what) in [
            (request("ce.new1", 1), "login", "a login already requested"),
            (
                request("ce.agent1", 1),
                "login",
                "an imported account's login",
            ),
            (
                NewAccountRequest {
                    organisation_id: 999_999,
                    ..request("ce.x", 1)
                },
                "organisation_id",
                "unknown organisation",
            ),
            (
                NewAccountRequest {
                    requested_by: 999_999,
                    ..request("ce.x", 1)
                },
                "requested_by",
                "unknown requester",
            ),
        ] {
            assert_invalid(store, auth.request_account(req).await, field, what);
        }
        let agent2 = account_id(store, "ce.agent2").await;
        assert!(
            store
                .set_account_state(agent2, Suspended)
                .await
                .on(store, "suspend")
        );
        assert_invalid(
            store,
            auth.request_account(NewAccountRequest {
                requested_by: agent2,
                ..request("ce.x", 1)
            })
            .await,
            "requested_by",
            "a suspended requester",
        );

        let new2 = auth
            .request_account(request("ce.new2", 2))
            .await
            .on(store, "request 2");
        let new3 = auth
            .request_account(request("ce.new3", 3))
            .await
            .on(store, "request 3");
        let new4 = auth
            .request_account(NewAccountRequest {
                organisation_id: org_id(store, "FT").await,
                requested_by: officer2,
                ..request("ft.new4", 4)
            })
            .await
            .on(store, "request 4");

        // Deciders who may not decide.
        for (decider, account, what) in [
            (boss, new1.account_id, "a manager"),
            (
                ce_officer,
                new1.account_id,
                "an officer of the partner itself",
            ),
            (new2.account_id, new1.account_id, "a requested account"),
            (999_999, new1.account_id, "an unknown account"),
            (officer2, new4.account_id, "the requester"),
        ] {
            assert_invalid(
                store,
                auth.decide_account(account, decider, true, plus(t0, 600))
                    .await,
                "officer_id",
                what,
            );
        }
        assert_eq!(
            store
                .account_by_id(new1.account_id)
                .await
                .on(store, "by id")
                .map(|a| a.state),
            Some(Requested),
            "[{be}] refusals change nothing"
        );

        // Approval and rejection, each once.
        let decided_at = plus(t0, 3600);
        let approved = auth
            .decide_account(new1.account_id, officer, true, decided_at)
            .await
            .on(store, "approve")
            .unwrap_or_else(|| panic!("[{be}] approval"));
        assert_eq!(approved.state, Active, "[{be}]");
        let rejected = auth
            .decide_account(new2.account_id, officer, false, decided_at)
            .await
            .on(store, "reject")
            .unwrap_or_else(|| panic!("[{be}] rejection"));
        assert_eq!(rejected.state, Disabled, "[{be}]");
        for (id, approve) in [
            (new1.account_id, true),
            (new1.account_id, false),
            (new2.account_id, true),
            (account_id(store, "ce.agent1").await, true),
            (999_999, true),
        ] {
            assert_eq!(
                auth.decide_account(id, officer2, approve, plus(decided_at, 1))
                    .await
                    .on(store, "decide again"),
                None,
                "[{be}] account {id} is not awaiting a decision"
            );
        }
        let states = [new1.account_id, new2.account_id].map(|id| async move {
            store
                .account_by_id(id)
                .await
                .on(store, "by id")
                .map(|a| a.state)
        });
        assert_eq!(
            join_all(states).await,
            vec![Some(Active), Some(Disabled)],
            "[{be}] a decision is final"
        );
        let life = auth
            .lifecycle(new1.account_id)
            .await
            .on(store, "lifecycle")
            .unwrap_or_else(|| panic!("[{be}] lifecycle"));
        assert_eq!(
            (life.decided_by, life.decided_at, life.requested_by),
            (Some(officer), Some(decided_at), Some(boss)),
            "[{be}]"
        );

        // Two officers deciding at once: exactly one decision lands.
        let (x, y) = tokio::join!(
            auth.decide_account(new3.account_id, officer, true, decided_at),
            auth.decide_account(new3.account_id, officer2, false, decided_at),
        );
        let (x, y) = (x.on(store, "race 1"), y.on(store, "race 2"));
        assert_eq!(
            u8::from(x.is_some()) + u8::from(y.is_some()),
            1,
            "[{be}] {x:?} {y:?}"
        );
        let winner = auth
            .lifecycle(new3.account_id)
            .await
            .on(store, "lifecycle")
            .and_then(|l| l.decided_by);
        let state = store
            .account_by_id(new3.account_id)
            .await
            .on(store, "by id")
            .map(|a| a.state);
        assert!(
            (winner == Some(officer) && state == Some(Active))
                || (winner == Some(officer2) && state == Some(Disabled)),
            "[{be}] {winner:?} {state:?}"
        );

        // What is left to decide.
        let pending = auth.pending_requests().await.on(store, "pending");
        assert_eq!(
            pending
                .iter()
                .map(|e| (e.account.login.as_str(), e.lifecycle.requested_by))
                .collect::<Vec<_>>(),
            vec![("ft.new4", Some(officer2))],
            "[{be}]"
        );

        // A burst of requests shows (refused requests are not counted).
        for (since, n) in [(t0, 3), (plus(t0, 120), 2), (plus(t0, 181), 0)] {
            assert_eq!(
                auth.requests_since(boss, since)
                    .await
                    .on(store, "requests since"),
                n,
                "[{be}] since {since}"
            );
        }
        assert_eq!(
            auth.requests_since(officer2, t0)
                .await
                .on(store, "requests since"),
            1,
            "[{be}]"
        );

        // Logins are recorded, never backwards.
        let login = plus(t0, 7200);
        auth.record_login(new1.account_id, login)
            .await
            .on(store, "login");
        auth.record_login(new1.account_id, plus(login, -60))
            .await
            .on(store, "late login");
        assert_eq!(
            auth.lifecycle(new1.account_id)
                .await
                .on(store, "lifecycle")
                .and_then(|l| l.last_login_at),
            Some(login),
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.record_login(999_999, login).await,
            "account_id",
            "unknown account",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_accounts_are_disabled_and_the_rest_reviewed() {
    use AccountState::{Active, Disabled, Suspended};
    let b = both_auth().await;
    let t0 = at("2026-01-05T08:00:00Z");
    let cutoff = at("2026-03-01T00:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let officer = account_id(store, "ft.officer1").await;
        let boss = account_id(store, "ce.Boss").await;
        let ce = org_id(store, "CE-038").await;
        let mut ids = std::collections::HashMap::new();
        for (n, login) in [
            "ce.never",
            "ce.stale",
            "ce.recent",
            "ce.pending",
            "ce.suspended",
        ]
        .into_iter()
        .enumerate()
        {
            let a = auth
                .request_account(NewAccountRequest {
                    organisation_id: ce,
                    login: r(login),
                    role: Role::Agent,
                    requested_by: boss,
                    at: plus(t0, n as i64),
                })
                .await
                .on(store, "request");
            if login != "ce.pending" {
                auth.decide_account(a.account_id, officer, true, plus(t0, 3600))
                    .await
                    .on(store, "approve");
            }
            ids.insert(login, a.account_id);
        }
        auth.record_login(ids["ce.stale"], at("2026-02-01T10:00:00Z"))
            .await
            .on(store, "login");
        auth.record_login(ids["ce.recent"], at("2026-03-10T10:00:00Z"))
            .await
            .on(store, "login");
        auth.record_login(ids["ce.suspended"], at("2026-01-10T10:00:00Z"))
            .await
            .on(store, "login");
        assert!(
            store
                .set_account_state(ids["ce.suspended"], Suspended)
                .await
                .on(store, "suspend")
        );
        // A session still open on a stale account (an idle one never ended).
        let sweep = at("2026-03-15T00:00:00Z");
        auth.insert_session(session_of(
            ids["ce.stale"],
            1,
            "passkey",
            at("2026-02-01T10:00:00Z"),
        ))
        .await
        .on(store, "session");

        let mut want = vec![ids["ce.never"], ids["ce.stale"]];
        want.sort_unstable();
        assert_eq!(
            auth.disable_inactive(cutoff, sweep)
                .await
                .on(store, "disable inactive"),
            want,
            "[{be}] exactly the stale active accounts (imported ones have no history)"
        );
        assert_eq!(
            auth.disable_inactive(cutoff, sweep)
                .await
                .on(store, "again"),
            Vec::<i64>::new(),
            "[{be}]"
        );
        for (login, state) in [
            ("ce.never", Disabled),
            ("ce.stale", Disabled),
            ("ce.recent", Active),
            ("ce.pending", AccountState::Requested),
            ("ce.suspended", Suspended),
            ("ce.agent1", Active),
        ] {
            assert_eq!(
                store
                    .account_by_login(&r(login))
                    .await
                    .on(store, "by login")
                    .map(|a| a.state),
                Some(state),
                "[{be}] {login}"
            );
        }
        let (s, _) = auth
            .session(key32(1))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(
            (s.ended_at, s.end_reason.as_deref()),
            (Some(sweep), Some("inactive")),
            "[{be}]"
        );

        // The review: every account not disabled, by organisation code then
        // login (byte order: upper case first).
        let review = auth.accounts_to_review(None).await.on(store, "review");
        assert_eq!(
            review
                .iter()
                .map(|e| (e.account.organisation.as_str(), e.account.login.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("CE-038", "ce.Boss"),
                ("CE-038", "ce.agent1"),
                ("CE-038", "ce.agent2"),
                ("CE-038", "ce.pending"),
                ("CE-038", "ce.recent"),
                ("CE-038", "ce.suspended"),
                ("FT", "ft.officer1"),
                ("ML-069", "ml.agent1"),
            ],
            "[{be}]"
        );
        for e in &review {
            assert_eq!(
                Some(&e.lifecycle),
                auth.lifecycle(e.account.account_id)
                    .await
                    .on(store, "lifecycle")
                    .as_ref(),
                "[{be}] {}",
                e.account.login
            );
        }
        let recent = review
            .iter()
            .find(|e| e.account.login.as_str() == "ce.recent")
            .map(|e| e.lifecycle.clone());
        assert_eq!(
            recent.map(|l| (l.decided_by, l.last_login_at)),
            Some((Some(officer), Some(at("2026-03-10T10:00:00Z")))),
            "[{be}]"
        );
        let ml = org_id(store, "ML-069").await;
        assert_eq!(
            auth.accounts_to_review(Some(ml))
                .await
                .on(store, "review ML")
                .iter()
                .map(|e| e.account.login.as_str())
                .collect::<Vec<_>>(),
            vec!["ml.agent1"],
            "[{be}]"
        );
        assert!(
            auth.accounts_to_review(Some(999_999))
                .await
                .on(store, "review of nothing")
                .is_empty(),
            "[{be}]"
        );
    }
}

/// Trusted login browsers: a device's own throttle state, found only for
/// its account and while it lasts, moved by compare-and-set, replaced by
/// the next token, and gone with a suspension, an approved reset or its
/// expiry (issue 17, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_login_devices_keep_their_own_counter_until_they_go() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let (d1, d2, d3) = (key32(1), key32(2), key32(3));
        let until = plus(t0, 90 * 86_400);
        auth.trust_login_device(&d1, agent1, t0, until, None)
            .await
            .on(store, "trust");
        auth.trust_login_device(&d2, agent2, t0, until, None)
            .await
            .on(store, "trust");
        let throttle = |d: [u8; 32], account: i64, now| {
            let auth = &auth;
            async move {
                auth.login_device_throttle(&d, account, now)
                    .await
                    .on(store, "device throttle")
            }
        };
        assert_eq!(
            throttle(d1, agent1, t0).await.as_deref(),
            Some("{}"),
            "[{be}]"
        );
        assert_eq!(
            throttle(d1, agent2, t0).await,
            None,
            "[{be}] another account's"
        );
        assert_eq!(throttle(d3, agent1, t0).await, None, "[{be}] unknown");
        assert_eq!(throttle(d1, agent1, until).await, None, "[{be}] expired");
        // Compare-and-set: of parallel swaps from one state, one writes.
        let swaps = futures_util::future::join_all((0..20).map(|i| {
            let auth = &auth;
            async move {
                let next = format!(r#"{{"consecutive_failures":1,"last_failure_unix":{i}}}"#);
                auth.swap_login_device_throttle(&d1, agent1, "{}", &next)
                    .await
            }
        }))
        .await;
        let won = swaps
            .into_iter()
            .map(|r| r.on(store, "swap"))
            .filter(|w| *w)
            .count();
        assert_eq!(won, 1, "[{be}]");
        assert!(
            !auth
                .swap_login_device_throttle(&d1, agent2, "{}", "{}")
                .await
                .on(store, "swap"),
            "[{be}] not through another account"
        );
        // The next token replaces the one shown.
        auth.trust_login_device(&d3, agent1, plus(t0, 60), until, Some(&d1))
            .await
            .on(store, "replace");
        assert_eq!(throttle(d1, agent1, t0).await, None, "[{be}] replaced");
        assert_eq!(
            throttle(d3, agent1, t0).await.as_deref(),
            Some("{}"),
            "[{be}]"
        );
        // A suspension ends every trust of the account, not another's.
        assert!(
            auth.suspend_account(agent1, plus(t0, 120), "suspension")
                .await
                .on(store, "suspend")
                .is_some()
        );
        assert_eq!(throttle(d3, agent1, t0).await, None, "[{be}] suspended");
        assert!(throttle(d2, agent2, t0).await.is_some(), "[{be}]");
        // Expired rows are purged.
        let purged = auth
            .purge_expired(plus(until, 1), plus(t0, -86_400), 1_000)
            .await
            .on(store, "purge");
        assert_eq!(purged.login_devices, 1, "[{be}] {purged:?}");
        assert_eq!(throttle(d2, agent2, t0).await, None, "[{be}] purged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_totp_steps_are_kept_and_compared_and_set() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;

        // Password and throttle state.
        assert_eq!(auth.password(agent1).await.on(store, "password"), None);
        auth.set_password(agent1, PHC, t0)
            .await
            .on(store, "set password");
        assert_eq!(
            auth.password(agent1).await.on(store, "password"),
            Some((PHC.to_string(), "{}".to_string())),
            "[{be}] a new password starts with an empty throttle state"
        );
        let throttle = r#"{"consecutive_failures":3,"last_failure_unix":1772442000,"lock":null}"#;
        // The throttle state moves by compare-and-set only: of parallel
        // swaps from the same state exactly one writes, and a swap from a
        // state that is no longer there writes nothing.
        let swaps = futures_util::future::join_all((0..20).map(|i| async move {
            let next = format!(r#"{{"consecutive_failures":1,"last_failure_unix":{i}}}"#);
            auth.swap_throttle(agent1, "{}", &next).await
        }))
        .await;
        let won: Vec<bool> = swaps.into_iter().map(|r| r.on(store, "swap")).collect();
        assert_eq!(
            won.iter().filter(|&&w| w).count(),
            1,
            "[{be}] one parallel swap wins: {won:?}"
        );
        assert!(
            !auth
                .swap_throttle(agent1, "{}", throttle)
                .await
                .on(store, "stale swap"),
            "[{be}] a swap from a stale state writes nothing"
        );
        let (_, current) = auth.password(agent1).await.on(store, "password").unwrap();
        assert!(
            auth.swap_throttle(agent1, &current, throttle)
                .await
                .on(store, "swap"),
            "[{be}] a swap from the state read writes"
        );
        auth.set_password(agent1, PHC2, plus(t0, 60))
            .await
            .on(store, "change password");
        assert_eq!(
            auth.password(agent1).await.on(store, "password"),
            Some((PHC2.to_string(), throttle.to_string())),
            "[{be}] a changed password keeps the throttle state"
        );
        assert_invalid(
            store,
            auth.set_password(agent1, "$2b$12$abcdefghijklmnopqrstuuvwxyz", t0)
                .await,
            "phc",
            "bcrypt",
        );
        assert_invalid(
            store,
            auth.set_password(999_999, PHC, t0).await,
            "account_id",
            "unknown account",
        );
        assert!(
            !auth
                .swap_throttle(agent2, "{}", throttle)
                .await
                .on(store, "throttle without password"),
            "[{be}] no password, no throttle state"
        );
        assert_eq!(
            auth.password(agent2).await.on(store, "password"),
            None,
            "[{be}]"
        );

        // TOTP.
        assert_eq!(auth.totp(agent1).await.on(store, "totp"), None);
        assert!(
            !auth
                .accept_totp_step(agent1, 5)
                .await
                .on(store, "step without totp"),
            "[{be}]"
        );
        let enrolled = StoredTotp {
            account_id: agent1,
            sealed_secret: blob(21, 1, 48),
            last_step: None,
            enrolled_at: t0,
        };
        auth.set_totp(enrolled.clone()).await.on(store, "enrol");
        assert_eq!(
            auth.totp(agent1).await.on(store, "totp"),
            Some(enrolled.clone())
        );
        let step = 59_000_000u64;
        for (s, accepted, what) in [
            (step, true, "first code"),
            (step, false, "the same step again"),
            (step - 1, false, "an earlier step"),
            (step + 1, true, "the next step"),
            (step, false, "an earlier step after the next"),
        ] {
            assert_eq!(
                auth.accept_totp_step(agent1, s)
                    .await
                    .on(store, "accept step"),
                accepted,
                "[{be}] {what}"
            );
        }
        assert_eq!(
            auth.totp(agent1)
                .await
                .on(store, "totp")
                .and_then(|t| t.last_step),
            Some(step + 1),
            "[{be}]"
        );
        // Two logins (here sixteen) with the same code: one wins.
        let racing = join_all((0..16).map(|_| auth.accept_totp_step(agent1, step + 10))).await;
        let wins = racing
            .into_iter()
            .map(|r| r.on(store, "racing step"))
            .filter(|&w| w)
            .count();
        assert_eq!(wins, 1, "[{be}]");
        // Re-enrolment replaces the secret and forgets the step.
        let again = StoredTotp {
            sealed_secret: blob(21, 2, 48),
            enrolled_at: plus(t0, 3600),
            ..enrolled.clone()
        };
        auth.set_totp(again.clone()).await.on(store, "re-enrol");
        assert_eq!(
            auth.totp(agent1).await.on(store, "totp"),
            Some(again.clone())
        );
        // KEK rotation: every sealed secret listed in account order, then
        // replaced only if unchanged, the last step kept.
        auth.set_totp(StoredTotp {
            account_id: agent2,
            ..enrolled.clone()
        })
        .await
        .on(store, "enrol agent2");
        let all = auth.totp_secrets(0, 10).await.on(store, "totp secrets");
        let mut want = vec![
            (agent1, again.sealed_secret.clone()),
            (agent2, enrolled.sealed_secret.clone()),
        ];
        want.sort();
        assert_eq!(all, want, "[{be}]");
        assert_eq!(
            auth.totp_secrets(want[0].0, 10).await.on(store, "after"),
            want[1..].to_vec(),
            "[{be}]"
        );
        assert_eq!(auth.totp_secrets(0, 1).await.on(store, "limit").len(), 1);
        auth.accept_totp_step(agent1, step + 20)
            .await
            .on(store, "step before rewrap");
        let rewrapped = blob(21, 3, 48);
        assert!(
            !auth
                .replace_totp_secret(agent1, &enrolled.sealed_secret, &rewrapped)
                .await
                .on(store, "stale replace"),
            "[{be}] a secret changed meanwhile is left alone"
        );
        assert!(
            auth.replace_totp_secret(agent1, &again.sealed_secret, &rewrapped)
                .await
                .on(store, "replace"),
            "[{be}]"
        );
        assert_eq!(
            auth.totp(agent1).await.on(store, "totp"),
            Some(StoredTotp {
                sealed_secret: rewrapped.clone(),
                last_step: Some(step + 20),
                ..again.clone()
            }),
            "[{be}] the last step survives the rewrap"
        );
        assert_invalid(
            store,
            auth.replace_totp_secret(agent1, &rewrapped, &[]).await,
            "sealed_secret",
            "empty secret",
        );
        auth.set_totp(again.clone())
            .await
            .on(store, "re-enrol again");
        for (t, field) in [
            (
                StoredTotp {
                    account_id: 999_999,
                    ..enrolled.clone()
                },
                "account_id",
            ),
            (
                StoredTotp {
                    sealed_secret: vec![],
                    ..enrolled.clone()
                },
                "sealed_secret",
            ),
            (
                StoredTotp {
                    last_step: Some(u64::MAX),
                    ..enrolled.clone()
                },
                "last_step",
            ),
        ] {
            assert_invalid(store, auth.set_totp(t).await, field, "bad enrolment");
        }
        assert_invalid(
            store,
            auth.accept_totp_step(agent1, u64::MAX).await,
            "step",
            "step out of range",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_are_registered_once_and_updated() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let p1 = passkey_of(agent1, &[1, 2, 3], t0);
        let p2 = passkey_of(agent1, &[9; 64], plus(t0, 60));
        let p3 = StoredPasskeyRow {
            last_used_at: Some(plus(t0, 5)),
            ..passkey_of(agent2, &[4], t0)
        };
        for p in [&p1, &p2, &p3] {
            auth.add_passkey(p.clone()).await.on(store, "add passkey");
        }
        for (p, field, what) in [
            (passkey_of(agent2, &[1, 2, 3], t0), "credential_id", "taken"),
            (passkey_of(agent1, &[], t0), "credential_id", "empty"),
            (
                passkey_of(agent1, &[7; 1024], t0),
                "credential_id",
                "too long",
            ),
            (
                passkey_of(999_999, &[8], t0),
                "account_id",
                "unknown account",
            ),
        ] {
            assert_invalid(store, auth.add_passkey(p).await, field, what);
        }
        assert_eq!(
            auth.passkeys(agent1).await.on(store, "passkeys"),
            vec![p1.clone(), p2.clone()],
            "[{be}]"
        );
        assert_eq!(
            auth.passkey_by_credential(&[4])
                .await
                .on(store, "by credential"),
            Some(p3.clone()),
            "[{be}]"
        );
        assert_eq!(
            auth.passkey_by_credential(&[4, 0])
                .await
                .on(store, "by credential"),
            None,
            "[{be}]"
        );
        let data = r#"{"cred":"3","counter":17}"#;
        auth.update_passkey(&[1, 2, 3], data, plus(t0, 900))
            .await
            .on(store, "update");
        auth.update_passkey(&[5, 5], data, plus(t0, 900))
            .await
            .on(store, "update of a removed passkey");
        assert_eq!(
            auth.passkey_by_credential(&[1, 2, 3])
                .await
                .on(store, "by credential"),
            Some(StoredPasskeyRow {
                data: data.into(),
                last_used_at: Some(plus(t0, 900)),
                ..p1
            }),
            "[{be}]"
        );
        assert_eq!(
            auth.passkeys(agent2).await.on(store, "passkeys"),
            vec![p3],
            "[{be}] other accounts untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceremonies_are_single_use_and_expire() {
    let b = both_auth().await;
    let now = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        let payload = r#"{"challenge":"c3ludGhldGlj","user":null}"#;
        auth.put_ceremony(key32(1), "webauthn_login", payload, plus(now, 300))
            .await
            .on(store, "put");
        assert_eq!(
            auth.take_ceremony(key32(1), "oidc_login", now)
                .await
                .on(store, "take as another kind"),
            None,
            "[{be}] another kind does not take it"
        );
        assert_eq!(
            auth.take_ceremony(key32(1), "webauthn_login", plus(now, 299))
                .await
                .on(store, "take"),
            Some(payload.to_string()),
            "[{be}]"
        );
        assert_eq!(
            auth.take_ceremony(key32(1), "webauthn_login", now)
                .await
                .on(store, "take again"),
            None,
            "[{be}] single use"
        );
        // Expired at its expiry instant, and gone once asked for.
        auth.put_ceremony(key32(2), "oidc_login", "{}", plus(now, 60))
            .await
            .on(store, "put");
        assert_eq!(
            auth.take_ceremony(key32(2), "oidc_login", plus(now, 60))
                .await
                .on(store, "take expired"),
            None,
            "[{be}]"
        );
        assert_eq!(
            auth.take_ceremony(key32(2), "oidc_login", now)
                .await
                .on(store, "take after expiry"),
            None,
            "[{be}] an expired ceremony is deleted when taken"
        );
        // Concurrent takes: one gets it.
        auth.put_ceremony(key32(3), "login_challenge", "x", plus(now, 60))
            .await
            .on(store, "put");
        let takes = join_all((0..8).map(|_| auth.take_ceremony(key32(3), "login_challenge", now)))
            .await
            .into_iter()
            .filter_map(|r| r.on(store, "racing take"))
            .count();
        assert_eq!(takes, 1, "[{be}]");
        auth.put_ceremony(key32(4), "login_challenge", "x", plus(now, 60))
            .await
            .on(store, "put");
        assert_invalid(
            store,
            auth.put_ceremony(key32(4), "login_challenge", "y", plus(now, 60))
                .await,
            "key",
            "a key already stored",
        );
        assert_invalid(
            store,
            auth.put_ceremony(key32(5), "WebAuthn-Login", "y", plus(now, 60))
                .await,
            "kind",
            "a malformed kind",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_read_touched_stepped_up_and_ended() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let record1 = store
            .account_by_id(agent1)
            .await
            .on(store, "account")
            .unwrap_or_else(|| panic!("[{be}] account"));
        let s1 = session_of(agent1, 1, "passkey", t0);
        auth.insert_session(s1.clone()).await.on(store, "insert");
        assert_eq!(
            auth.session(key32(1)).await.on(store, "session"),
            Some((s1.clone(), record1.clone())),
            "[{be}] read back with its account"
        );
        assert_eq!(
            auth.session(key32(99)).await.on(store, "no session"),
            None,
            "[{be}]"
        );
        for (s, field) in [
            (session_of(agent2, 1, "passkey", t0), "id_digest"),
            (session_of(999_999, 9, "passkey", t0), "account_id"),
            (session_of(agent1, 9, "password", t0), "method"),
            (
                StoredSession {
                    jkt: "short".into(),
                    ..session_of(agent1, 9, "oidc", t0)
                },
                "jkt",
            ),
            (
                StoredSession {
                    idle_timeout_secs: 0,
                    ..session_of(agent1, 9, "oidc", t0)
                },
                "idle_timeout_secs",
            ),
        ] {
            assert_invalid(store, auth.insert_session(s).await, field, "bad session");
        }

        // Activity moves forward only; step-up is recorded.
        auth.touch_session(key32(1), plus(t0, 600))
            .await
            .on(store, "touch");
        auth.touch_session(key32(1), plus(t0, 300))
            .await
            .on(store, "late touch");
        auth.mark_step_up(key32(1), plus(t0, 660))
            .await
            .on(store, "step-up");
        let (read, _) = auth
            .session(key32(1))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(
            (read.last_seen_at, read.step_up_at),
            (plus(t0, 600), Some(plus(t0, 660))),
            "[{be}]"
        );
        assert!(read.is_live_at(plus(t0, 600 + 1799)), "[{be}]");
        assert!(
            !read.is_live_at(plus(t0, 600 + 1800)),
            "[{be}] idle timeout"
        );

        for (n, method) in [(2, "password_totp"), (3, "oidc")] {
            auth.insert_session(session_of(agent1, n, method, t0))
                .await
                .on(store, "insert");
        }
        auth.insert_session(session_of(agent2, 4, "passkey", t0))
            .await
            .on(store, "insert");

        // Ending one, then all of an account.
        let end = plus(t0, 720);
        assert!(
            auth.end_session(key32(1), end, "logout")
                .await
                .on(store, "end"),
            "[{be}]"
        );
        assert!(
            !auth
                .end_session(key32(1), plus(end, 1), "logout")
                .await
                .on(store, "end again"),
            "[{be}] already ended"
        );
        assert!(
            !auth
                .end_session(key32(99), end, "logout")
                .await
                .on(store, "end unknown"),
            "[{be}]"
        );
        auth.touch_session(key32(1), plus(end, 60))
            .await
            .on(store, "touch ended");
        auth.mark_step_up(key32(1), plus(end, 60))
            .await
            .on(store, "step-up ended");
        let (ended, _) = auth
            .session(key32(1))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(
            (
                ended.ended_at,
                ended.end_reason.as_deref(),
                ended.last_seen_at,
                ended.step_up_at
            ),
            (
                Some(end),
                Some("logout"),
                plus(t0, 600),
                Some(plus(t0, 660))
            ),
            "[{be}] an ended session does not change"
        );
        assert!(!ended.is_live_at(plus(end, 1)), "[{be}]");
        assert_invalid(
            store,
            auth.end_session(key32(2), end, "Log out").await,
            "reason",
            "a malformed reason",
        );
        assert_eq!(
            auth.end_sessions_of_account(agent1, end, "suspended")
                .await
                .on(store, "end all"),
            2,
            "[{be}] the two live ones"
        );
        assert_eq!(
            auth.end_sessions_of_account(agent1, end, "suspended")
                .await
                .on(store, "end all again"),
            0,
            "[{be}]"
        );
        let (other, _) = auth
            .session(key32(4))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(other.ended_at, None, "[{be}] other accounts untouched");
    }
}

/// Activation codes: only for an active account approved under four eyes
/// that lacks a factor, issued by another, active officer; used once,
/// with the factors, in one transaction; refused with another digest,
/// after expiry, after use; a new code voids the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_codes_need_four_eyes_and_are_used_once_before_expiry() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let officer = account_id(store, "ft.officer1").await;
        let boss = account_id(store, "ce.Boss").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        enrol_everything(store, auth, agent2, 7, t0).await;
        let code = |account_id, digest, issued_by| NewActivation {
            account_id,
            digest,
            issued_by,
            issued_at: t0,
            expires_at: plus(t0, 72 * 3600),
        };
        for (new, field, what) in [
            (code(officer, key32(1), officer), "account_id", "itself"),
            (
                code(boss, key32(1), agent1),
                "issued_by",
                "an agent does not issue codes",
            ),
            (
                code(agent1, key32(1), 999_999),
                "issued_by",
                "unknown issuer",
            ),
            (
                code(999_999, key32(1), officer),
                "account_id",
                "unknown account",
            ),
            (
                code(agent2, key32(1), officer),
                "account_id",
                "both factors already there",
            ),
            (
                NewActivation {
                    expires_at: t0,
                    ..code(agent1, key32(1), officer)
                },
                "expires_at",
                "expiring when issued",
            ),
        ] {
            assert_invalid(store, auth.issue_activation(new).await, field, what);
        }
        // The officer's own account was imported without an approver: no
        // code, whoever issues it.
        let (_, refused) = store
            .upsert_accounts(vec![account(
                "ft.officer2",
                "FT",
                Role::Officer,
                AccountState::Active,
                None,
                None,
            )])
            .await
            .on(store, "officer 2");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let officer2 = account_id(store, "ft.officer2").await;
        assert_invalid(
            store,
            auth.issue_activation(code(officer, key32(1), officer2))
                .await,
            "account_id",
            "never approved under four eyes",
        );

        auth.issue_activation(code(agent1, key32(1), officer))
            .await
            .on(store, "issue");
        let stored = auth
            .activation(agent1)
            .await
            .on(store, "read")
            .expect("stored code");
        assert_eq!(stored.digest, key32(1), "[{be}]");
        assert_eq!(stored.issued_by, officer, "[{be}]");
        assert_eq!(stored.used_at, None, "[{be}]");
        assert_eq!(stored.throttle, "{}", "[{be}]");
        assert!(
            auth.swap_activation_throttle(agent1, "{}", r#"{"failures":2}"#)
                .await
                .on(store, "throttle"),
            "[{be}]"
        );
        assert!(
            !auth
                .swap_activation_throttle(agent1, "{}", r#"{"failures":3}"#)
                .await
                .on(store, "stale throttle"),
            "[{be}] a stale activation throttle swap writes nothing"
        );
        // A new code replaces the old one and its throttle state.
        auth.issue_activation(code(agent1, key32(2), officer))
            .await
            .on(store, "reissue");
        let stored = auth.activation(agent1).await.on(store, "read").unwrap();
        assert_eq!((stored.digest, stored.throttle.as_str()), (key32(2), "{}"));

        let factors = || ActivationFactors {
            phc: Some(PHC.into()),
            totp: Some(StoredTotp {
                account_id: agent1,
                sealed_secret: blob(9, 1, 48),
                last_step: Some(42),
                enrolled_at: plus(t0, 60),
            }),
        };
        let later = plus(t0, 60);
        for (digest, when, what) in [
            (key32(1), later, "the replaced code"),
            (key32(3), later, "another digest"),
            (key32(2), plus(t0, 72 * 3600), "at expiry"),
        ] {
            assert!(
                !auth
                    .complete_activation(agent1, digest, factors(), when)
                    .await
                    .on(store, what),
                "[{be}] {what}"
            );
        }
        assert!(auth.password(agent1).await.on(store, "pw").is_none());
        assert!(
            auth.complete_activation(agent1, key32(2), factors(), later)
                .await
                .on(store, "complete"),
            "[{be}]"
        );
        assert_eq!(
            auth.password(agent1).await.on(store, "pw").map(|p| p.0),
            Some(PHC.to_string()),
            "[{be}]"
        );
        let totp = auth.totp(agent1).await.on(store, "totp").unwrap();
        assert_eq!(totp.last_step, Some(42), "[{be}]");
        assert_eq!(
            auth.activation(agent1)
                .await
                .on(store, "read")
                .unwrap()
                .used_at,
            Some(later),
            "[{be}]"
        );
        assert!(
            !auth
                .complete_activation(agent1, key32(2), factors(), later)
                .await
                .on(store, "again"),
            "[{be}] used once"
        );
        // With both factors, no new code.
        assert_invalid(
            store,
            auth.issue_activation(code(agent1, key32(4), officer)).await,
            "account_id",
            "activated already",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_links_are_made_by_officers_once_per_identity_and_unlinking_ends_sessions() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    const ISS: &str = "https://auth.agentconnect.gouv.fr/api/v2";
    const SUB: &str = "5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01";
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let (_, refused) = store
            .upsert_accounts(vec![account(
                "ft.officer9",
                "FT",
                Role::Officer,
                AccountState::Suspended,
                None,
                None,
            )])
            .await
            .on(store, "suspended officer");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let officer = account_id(store, "ft.officer1").await;
        let suspended = account_id(store, "ft.officer9").await;
        let boss = account_id(store, "ce.Boss").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let link = |issuer: &str, subject: &str, account_id, linked_by| FederationLink {
            issuer: issuer.into(),
            subject: subject.into(),
            account_id,
            linked_by,
            linked_at: t0,
        };

        assert_eq!(
            auth.federation_link(ISS, SUB).await.on(store, "lookup"),
            None,
            "[{be}] nothing linked yet"
        );
        for (new, field, what) in [
            (link(ISS, SUB, agent1, boss), "linked_by", "a manager"),
            (link(ISS, SUB, agent1, agent2), "linked_by", "an agent"),
            (
                link(ISS, SUB, agent1, suspended),
                "linked_by",
                "a suspended officer",
            ),
            (
                link(ISS, SUB, agent1, 999_999),
                "linked_by",
                "unknown linker",
            ),
            (
                link(ISS, SUB, officer, officer),
                "linked_by",
                "an officer linking itself",
            ),
            (
                link(ISS, SUB, 999_999, officer),
                "account_id",
                "unknown account",
            ),
            (link("", SUB, agent1, officer), "issuer", "empty issuer"),
            (
                link(&"h".repeat(513), SUB, agent1, officer),
                "issuer",
                "issuer too long",
            ),
            (link(ISS, "", agent1, officer), "subject", "empty subject"),
            (
                link(ISS, &"s".repeat(256), agent1, officer),
                "subject",
                "subject too long",
            ),
            (link(ISS, "a b", agent1, officer), "subject", "a space"),
            (link(ISS, "é", agent1, officer), "subject", "not ASCII"),
        ] {
            assert_invalid(store, auth.link_federation(new).await, field, what);
        }
        assert_eq!(
            auth.federation_link(ISS, SUB).await.on(store, "lookup"),
            None,
            "[{be}] no refused link was stored"
        );

        auth.link_federation(link(ISS, SUB, agent1, officer))
            .await
            .on(store, "link");
        let stored = auth
            .federation_link(ISS, SUB)
            .await
            .on(store, "lookup")
            .expect("linked");
        assert_eq!(stored, link(ISS, SUB, agent1, officer), "[{be}]");
        assert!(
            !format!("{stored:?}").contains(SUB),
            "[{be}] Debug hides the subject"
        );
        // Keyed on both halves, compared exactly.
        for (issuer, subject) in [
            (ISS, "5D2C7C3E-6F0B-4F7E-9B1A-2F8E1C4D9A01"),
            ("https://auth.agentconnect.gouv.fr/api/v2/", SUB),
            ("https://other.example", SUB),
            (ISS, &"s".repeat(300)),
        ] {
            assert_eq!(
                auth.federation_link(issuer, subject)
                    .await
                    .on(store, "lookup"),
                None,
                "[{be}] {issuer}"
            );
        }
        // One identity names one account: never moved, never doubled.
        for account in [agent1, agent2] {
            assert_invalid(
                store,
                auth.link_federation(link(ISS, SUB, account, officer)).await,
                "subject",
                "already linked",
            );
        }
        // An account may hold several identities.
        auth.link_federation(link("https://other.example", SUB, agent1, officer))
            .await
            .on(store, "second identity");
        auth.link_federation(link(ISS, "another-subject", agent2, officer))
            .await
            .on(store, "another subject");

        // Unlinking: an officer only; ends the account's federated sessions,
        // not its others.
        auth.insert_session(session_of(agent1, 61, "oidc", t0))
            .await
            .on(store, "oidc session");
        auth.insert_session(session_of(agent1, 62, "passkey", t0))
            .await
            .on(store, "passkey session");
        auth.insert_session(session_of(agent2, 63, "oidc", t0))
            .await
            .on(store, "other account's session");
        for by in [boss, suspended, 999_999] {
            assert_invalid(
                store,
                auth.unlink_federation(ISS, SUB, by, plus(t0, 60)).await,
                "unlinked_by",
                "not an active officer",
            );
        }
        assert!(
            auth.federation_link(ISS, SUB)
                .await
                .on(store, "lookup")
                .is_some(),
            "[{be}] a refused unlink changes nothing"
        );
        assert_eq!(
            auth.unlink_federation(ISS, SUB, officer, plus(t0, 60))
                .await
                .on(store, "unlink"),
            Some(agent1),
            "[{be}]"
        );
        assert_eq!(
            auth.federation_link(ISS, SUB).await.on(store, "lookup"),
            None,
            "[{be}] gone"
        );
        let ended = |n: u8| async move {
            let (s, _) = auth
                .session(key32(n))
                .await
                .on(store, "session")
                .expect("stored session");
            (s.ended_at, s.end_reason)
        };
        assert_eq!(
            ended(61).await,
            (Some(plus(t0, 60)), Some("federation_unlink".to_string())),
            "[{be}] the federated session ends"
        );
        assert_eq!(
            ended(62).await,
            (None, None),
            "[{be}] the passkey one stays"
        );
        assert_eq!(
            ended(63).await,
            (None, None),
            "[{be}] another account's stays"
        );
        assert_eq!(
            auth.unlink_federation(ISS, SUB, officer, plus(t0, 61))
                .await
                .on(store, "unlink again"),
            None,
            "[{be}] nothing left to unlink"
        );
        // Once unlinked, the identity may be linked again, to anyone.
        auth.link_federation(link(ISS, SUB, agent2, officer))
            .await
            .on(store, "relink");
        assert_eq!(
            auth.federation_link(ISS, SUB)
                .await
                .on(store, "lookup")
                .map(|l| l.account_id),
            Some(agent2),
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_resets_remove_factors_end_sessions_and_flag_the_next_one() {
    use AccountState::Active;
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let (_, refused) = store
            .upsert_accounts(vec![account(
                "ft.officer2",
                "FT",
                Role::Officer,
                Active,
                None,
                None,
            )])
            .await
            .on(store, "officer 2");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let officer = account_id(store, "ft.officer1").await;
        let officer2 = account_id(store, "ft.officer2").await;
        let boss = account_id(store, "ce.Boss").await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        enrol_everything(store, auth, agent1, 1, t0).await;
        auth.insert_session(session_of(agent1, 2, "password_totp", t0))
            .await
            .on(store, "second session");
        enrol_everything(store, auth, agent2, 3, t0).await;

        let factors = |account: i64| async move {
            (
                auth.password(account).await.on(store, "password").is_some(),
                auth.totp(account).await.on(store, "totp").is_some(),
                auth.passkeys(account).await.on(store, "passkeys").len(),
            )
        };
        let live = |n: u8| async move {
            auth.session(key32(n))
                .await
                .on(store, "session")
                .is_some_and(|(s, _)| s.ended_at.is_none())
        };
        let high_risk = |account: i64| async move {
            auth.lifecycle(account)
                .await
                .on(store, "lifecycle")
                .is_some_and(|l| l.next_session_high_risk)
        };

        // A rejected reset changes nothing.
        let r1 = auth
            .request_reset(agent1, ResetKind::All, boss, t0)
            .await
            .on(store, "request reset");
        assert_eq!(
            r1,
            CredentialReset {
                id: r1.id,
                account_id: agent1,
                kind: ResetKind::All,
                requested_by: boss,
                requested_at: t0,
                decided_by: None,
                decided_at: None,
                approved: None,
            },
            "[{be}]"
        );
        assert_eq!(
            auth.pending_resets().await.on(store, "pending"),
            vec![r1.clone()],
            "[{be}]"
        );
        for (decider, what) in [
            (boss, "the requester, a manager"),
            (agent1, "the account itself"),
            (999_999, "unknown"),
        ] {
            assert_invalid(
                store,
                auth.decide_reset(r1.id, decider, true, plus(t0, 60)).await,
                "officer_id",
                what,
            );
        }
        let rejected = auth
            .decide_reset(r1.id, officer, false, plus(t0, 60))
            .await
            .on(store, "reject")
            .unwrap_or_else(|| panic!("[{be}] rejection"));
        assert_eq!(
            (rejected.approved, rejected.decided_by, rejected.decided_at),
            (Some(false), Some(officer), Some(plus(t0, 60))),
            "[{be}]"
        );
        assert_eq!(
            auth.decide_reset(r1.id, officer2, true, plus(t0, 61))
                .await
                .on(store, "decide again"),
            None,
            "[{be}] decided once"
        );
        assert_eq!(factors(agent1).await, (true, true, 2), "[{be}]");
        assert!(live(1).await && live(2).await, "[{be}]");
        assert!(!high_risk(agent1).await, "[{be}]");
        assert!(
            auth.pending_resets().await.on(store, "pending").is_empty(),
            "[{be}]"
        );

        // An approved password reset, asked by the account itself.
        let r2 = auth
            .request_reset(agent1, ResetKind::Password, agent1, plus(t0, 120))
            .await
            .on(store, "request reset");
        let approved_at = plus(t0, 180);
        let approved = auth
            .decide_reset(r2.id, officer, true, approved_at)
            .await
            .on(store, "approve")
            .unwrap_or_else(|| panic!("[{be}] approval"));
        assert_eq!(approved.approved, Some(true), "[{be}]");
        assert_eq!(
            factors(agent1).await,
            (false, true, 2),
            "[{be}] only the password"
        );
        for n in [1, 2] {
            let (s, _) = auth
                .session(key32(n))
                .await
                .on(store, "session")
                .unwrap_or_else(|| panic!("[{be}] session"));
            assert_eq!(
                (s.ended_at, s.end_reason.as_deref()),
                (Some(approved_at), Some("reset")),
                "[{be}] session {n}"
            );
        }
        assert!(
            high_risk(agent1).await,
            "[{be}] the next session is high-risk"
        );
        assert_eq!(
            auth.decide_reset(r2.id, officer2, false, plus(approved_at, 1))
                .await
                .on(store, "decide again"),
            None,
            "[{be}]"
        );

        // Two officers racing on one reset: one decision.
        let r3 = auth
            .request_reset(agent1, ResetKind::Totp, boss, plus(t0, 200))
            .await
            .on(store, "request reset");
        let (x, y) = tokio::join!(
            auth.decide_reset(r3.id, officer, true, plus(t0, 210)),
            auth.decide_reset(r3.id, officer2, true, plus(t0, 210)),
        );
        let (x, y) = (x.on(store, "race 1"), y.on(store, "race 2"));
        assert_eq!(
            u8::from(x.is_some()) + u8::from(y.is_some()),
            1,
            "[{be}] {x:?} {y:?}"
        );
        assert_eq!(factors(agent1).await, (false, false, 2), "[{be}]");

        // Passkeys, then the flag cleared by a login.
        let r4 = auth
            .request_reset(agent1, ResetKind::Passkeys, boss, plus(t0, 220))
            .await
            .on(store, "request reset");
        auth.decide_reset(r4.id, officer2, true, plus(t0, 230))
            .await
            .on(store, "approve");
        assert_eq!(factors(agent1).await, (false, false, 0), "[{be}]");
        // An API client's token counts as activity, not as the session.
        auth.record_activity(agent1, plus(t0, 240))
            .await
            .on(store, "activity");
        assert!(high_risk(agent1).await, "[{be}] a token leaves the flag");
        assert_eq!(
            auth.lifecycle(agent1)
                .await
                .on(store, "lifecycle")
                .and_then(|l| l.last_login_at),
            Some(plus(t0, 240)),
            "[{be}] a token counts as activity"
        );
        auth.record_activity(agent1, plus(t0, 235))
            .await
            .on(store, "late activity");
        assert_eq!(
            auth.lifecycle(agent1)
                .await
                .on(store, "lifecycle")
                .and_then(|l| l.last_login_at),
            Some(plus(t0, 240)),
            "[{be}] never backwards"
        );
        assert_invalid(
            store,
            auth.record_activity(999_999, t0).await,
            "account_id",
            "unknown account",
        );
        auth.record_login(agent1, plus(t0, 300))
            .await
            .on(store, "login");
        assert!(!high_risk(agent1).await, "[{be}] cleared by the next login");

        // Everything of the other account is untouched.
        assert_eq!(factors(agent2).await, (true, true, 2), "[{be}]");
        assert!(live(3).await && !high_risk(agent2).await, "[{be}]");

        // An officer's own request needs another officer.
        let r5 = auth
            .request_reset(agent2, ResetKind::All, officer, plus(t0, 400))
            .await
            .on(store, "request reset");
        assert_invalid(
            store,
            auth.decide_reset(r5.id, officer, true, plus(t0, 410)).await,
            "officer_id",
            "the requester",
        );
        // Nor from the requester's agency: four eyes means two
        // organisations, France Travail agencies included.
        assert_invalid(
            store,
            auth.decide_reset(r5.id, officer2, true, plus(t0, 410))
                .await,
            "officer_id",
            "an officer of the requester's agency",
        );
        store
            .upsert_organisations(vec![org(
                "FT-069",
                OrganisationKind::FranceTravail,
                "France Travail Lyon",
                Some("69"),
            )])
            .await
            .on(store, "second agency");
        let (_, refused) = store
            .upsert_accounts(vec![account(
                "ftl.officer",
                "FT-069",
                Role::Officer,
                Active,
                None,
                None,
            )])
            .await
            .on(store, "officer of another agency");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let elsewhere = account_id(store, "ftl.officer").await;
        auth.decide_reset(r5.id, elsewhere, true, plus(t0, 410))
            .await
            .on(store, "approve")
            .unwrap_or_else(|| panic!("[{be}] approval"));
        assert_eq!(factors(agent2).await, (false, false, 0), "[{be}]");
        assert!(!live(3).await && high_risk(agent2).await, "[{be}]");

        assert_eq!(
            auth.decide_reset(999_999, officer, true, t0)
                .await
                .on(store, "unknown reset"),
            None,
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.request_reset(999_999, ResetKind::All, boss, t0).await,
            "account_id",
            "unknown account",
        );
        assert_invalid(
            store,
            auth.request_reset(agent1, ResetKind::All, 999_999, t0)
                .await,
            "requested_by",
            "unknown requester",
        );
    }
}

/// The account state machine, table-driven over every (state, action,
/// actor) triple, for two families of requests: a Cap emploi account asked
/// for by an officer of Cap emploi, and a France Travail agency's account
/// asked for by the agency's manager (the review's detour (d)). Each triple
/// acts on a fresh account brought to its state through the machine itself.
///
/// The store takes an actor for approve, reject, reset-approve and
/// issue-activation, and applies the four-eyes rule to it; suspension and
/// reactivation (administrators, checked by the policy before the store)
/// and disabling (the inactivity job) take none: their outcome must not
/// depend on who is named, which the table checks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_states_move_only_along_the_machine_for_every_actor() {
    use AccountState::Active;
    use rempart_domain::{AccountAction, LifecycleState};
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Actor {
        Requester,
        OfficerOfRequestingOrg,
        FtOfficerOfSameAgency,
        OutsideOfficer,
        NonOfficer,
        Itself,
    }
    const ACTORS: [Actor; 6] = [
        Actor::Requester,
        Actor::OfficerOfRequestingOrg,
        Actor::FtOfficerOfSameAgency,
        Actor::OutsideOfficer,
        Actor::NonOfficer,
        Actor::Itself,
    ];
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Done,
        /// `None` from a decision: not awaiting one.
        NotFound,
        /// Refused, naming this field.
        Refused(&'static str),
    }
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        store
            .upsert_organisations(vec![
                org(
                    "FT",
                    OrganisationKind::FranceTravail,
                    "France Travail Grenoble",
                    Some("38"),
                ),
                org(
                    "FT-069",
                    OrganisationKind::FranceTravail,
                    "France Travail Lyon",
                    Some("69"),
                ),
                org(
                    "CE-038",
                    OrganisationKind::CapEmploi,
                    "Cap emploi Isère",
                    Some("38"),
                ),
            ])
            .await
            .on(store, "orgs");
        let (_, refused) = store
            .upsert_accounts(vec![
                account("ft.officer1", "FT", Role::Officer, Active, None, None),
                account("ft.officer2", "FT", Role::Officer, Active, None, None),
                account("ftl.officer", "FT-069", Role::Officer, Active, None, None),
                account(
                    "ce.officer",
                    "CE-038",
                    Role::Officer,
                    Active,
                    None,
                    Some("ftl.officer"),
                ),
                account(
                    "ce.officer2",
                    "CE-038",
                    Role::Officer,
                    Active,
                    None,
                    Some("ftl.officer"),
                ),
                account(
                    "ft.manager",
                    "FT",
                    Role::Manager,
                    Active,
                    None,
                    Some("ftl.officer"),
                ),
                account(
                    "ft.agent",
                    "FT",
                    Role::Agent,
                    Active,
                    None,
                    Some("ftl.officer"),
                ),
            ])
            .await
            .on(store, "accounts");
        assert!(refused.is_empty(), "[{be}] {refused:?}");
        let id = |login: &'static str| account_id(store, login);
        let outside = id("ftl.officer").await;
        // (organisation, requester, officer of the requesting organisation,
        // France Travail officer of the requester's agency if any)
        let families = [
            (
                org_id(store, "CE-038").await,
                id("ce.officer").await,
                id("ce.officer2").await,
                None,
            ),
            (
                org_id(store, "FT").await,
                id("ft.manager").await,
                id("ft.officer1").await,
                Some(id("ft.officer2").await),
            ),
        ];
        let non_officer = id("ft.agent").await;
        let mut n = 0u32;
        let mut counted = std::collections::HashMap::<&str, u32>::new();
        for (family, (org, requester, org_officer, same_agency)) in families.iter().enumerate() {
            for &state in LifecycleState::ALL {
                for &action in AccountAction::ALL {
                    for actor in ACTORS {
                        let actor_id = match actor {
                            Actor::Requester => Some(*requester),
                            Actor::OfficerOfRequestingOrg => Some(*org_officer),
                            Actor::FtOfficerOfSameAgency => *same_agency,
                            Actor::OutsideOfficer => Some(outside),
                            Actor::NonOfficer => Some(non_officer),
                            Actor::Itself => None,
                        };
                        if actor == Actor::FtOfficerOfSameAgency && actor_id.is_none() {
                            continue; // a partner has no agency
                        }
                        // A fresh account, brought to `state` by the machine.
                        n += 1;
                        let t = plus(t0, i64::from(n) * 10);
                        let subject = auth
                            .request_account(NewAccountRequest {
                                organisation_id: *org,
                                login: r(&format!("sm.{n}")),
                                role: Role::Agent,
                                requested_by: *requester,
                                at: t,
                            })
                            .await
                            .on(store, "request")
                            .account_id;
                        match state {
                            LifecycleState::Requested => {}
                            LifecycleState::Rejected => {
                                auth.decide_account(subject, outside, false, t)
                                    .await
                                    .on(store, "reject")
                                    .unwrap_or_else(|| panic!("[{be}] rejection"));
                            }
                            _ => {
                                auth.decide_account(subject, outside, true, t)
                                    .await
                                    .on(store, "approve")
                                    .unwrap_or_else(|| panic!("[{be}] approval"));
                            }
                        }
                        if state == LifecycleState::Suspended {
                            assert!(
                                store
                                    .set_account_state(subject, AccountState::Suspended)
                                    .await
                                    .on(store, "suspend"),
                                "[{be}]"
                            );
                        }
                        if state == LifecycleState::Disabled {
                            let gone = auth
                                .disable_inactive(plus(t, 1), plus(t, 2))
                                .await
                                .on(store, "disable");
                            assert!(gone.contains(&subject), "[{be}]");
                        }
                        let actor_id = actor_id.unwrap_or(subject);
                        let before = store.account_by_id(subject).await.on(store, "before");
                        let at_ = plus(t, 3);
                        let is_four_eyes = actor == Actor::OutsideOfficer;
                        let from_ok = action.from_states().contains(&state);
                        let refusal = |r: Result<(), StorageError>| match r {
                            Ok(()) => Outcome::Done,
                            Err(e) if e.refused().is_some() => Outcome::Refused(
                                ["officer_id", "state", "issued_by", "account_id"]
                                    .into_iter()
                                    .find(|f| e.refused().is_some_and(|(field, _)| field == *f))
                                    .unwrap_or_else(|| panic!("[{be}] unnamed field: {e}")),
                            ),
                            Err(e) => panic!("[{be}] {e}"),
                        };
                        // What the consultation path rehearses before it
                        // ledgers: the same outcome, nothing moved.
                        let rehearsed = |r: Result<Option<Rehearsal>, StorageError>| match r {
                            Ok(Some(_)) => Outcome::Done,
                            Ok(None) => Outcome::NotFound,
                            Err(e) => refusal(Err(e)),
                        };
                        let unmoved = || async {
                            let now = store.account_by_id(subject).await.on(store, "rehearsed");
                            assert_eq!(
                                now.map(|a| a.state),
                                before.as_ref().map(|a| a.state),
                                "[{be}] a rehearsal moves nothing"
                            );
                        };
                        let mut rehearsal = None;
                        let (got, expected) = match action {
                            AccountAction::Approve | AccountAction::Reject => {
                                let change = AccountChange::Decide {
                                    account_id: subject,
                                    officer_id: actor_id,
                                    approve: action == AccountAction::Approve,
                                };
                                rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                                unmoved().await;
                                let got = match auth
                                    .decide_account(
                                        subject,
                                        actor_id,
                                        action == AccountAction::Approve,
                                        at_,
                                    )
                                    .await
                                {
                                    Ok(Some(_)) => Outcome::Done,
                                    Ok(None) => Outcome::NotFound,
                                    Err(e) => refusal(Err(e)),
                                };
                                let expected = match (from_ok, is_four_eyes) {
                                    (false, _) => Outcome::NotFound,
                                    (true, false) => Outcome::Refused("officer_id"),
                                    (true, true) => Outcome::Done,
                                };
                                (got, expected)
                            }
                            AccountAction::Suspend | AccountAction::Reactivate => {
                                let to = if action == AccountAction::Suspend {
                                    AccountState::Suspended
                                } else {
                                    Active
                                };
                                let change = AccountChange::State {
                                    account_id: subject,
                                    state: to,
                                };
                                rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                                unmoved().await;
                                let got = match store.set_account_state(subject, to).await {
                                    Ok(true) => Outcome::Done,
                                    Ok(false) => Outcome::NotFound,
                                    Err(e) => refusal(Err(e)),
                                };
                                let expected = if from_ok {
                                    Outcome::Done
                                } else {
                                    Outcome::Refused("state")
                                };
                                (got, expected)
                            }
                            AccountAction::Disable => {
                                let gone = auth
                                    .disable_inactive(plus(at_, 1), plus(at_, 2))
                                    .await
                                    .on(store, "disable");
                                let got = if gone.contains(&subject) {
                                    Outcome::Done
                                } else {
                                    Outcome::NotFound
                                };
                                let expected = if from_ok {
                                    Outcome::Done
                                } else {
                                    Outcome::NotFound
                                };
                                (got, expected)
                            }
                            AccountAction::ApproveReset => {
                                let reset = auth
                                    .request_reset(subject, ResetKind::All, *requester, at_)
                                    .await
                                    .on(store, "request reset");
                                let change = AccountChange::DecideReset {
                                    reset_id: reset.id,
                                    officer_id: actor_id,
                                    approve: true,
                                };
                                rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                                unmoved().await;
                                let got =
                                    match auth.decide_reset(reset.id, actor_id, true, at_).await {
                                        Ok(Some(_)) => Outcome::Done,
                                        Ok(None) => Outcome::NotFound,
                                        Err(e) => refusal(Err(e)),
                                    };
                                let expected = match (is_four_eyes, from_ok) {
                                    (false, _) => Outcome::Refused("officer_id"),
                                    (true, false) => Outcome::Refused("state"),
                                    (true, true) => Outcome::Done,
                                };
                                (got, expected)
                            }
                            AccountAction::IssueActivation => {
                                let got = refusal(
                                    auth.issue_activation(NewActivation {
                                        account_id: subject,
                                        digest: key32(7),
                                        issued_by: actor_id,
                                        issued_at: at_,
                                        expires_at: plus(at_, 3600),
                                    })
                                    .await,
                                );
                                // The account is checked first, then its issuer,
                                // who stands where a decider would.
                                let expected = match (from_ok, is_four_eyes) {
                                    (false, _) => Outcome::Refused("account_id"),
                                    (true, false) => Outcome::Refused("issued_by"),
                                    (true, true) => Outcome::Done,
                                };
                                (got, expected)
                            }
                        };
                        assert_eq!(
                            got, expected,
                            "[{be}] family {family}, {state} × {action} × {actor:?}"
                        );
                        if let Some(rehearsal) = rehearsal {
                            assert_eq!(
                                rehearsal, got,
                                "[{be}] rehearsed: family {family}, {state} × {action} × {actor:?}"
                            );
                            *counted.entry("rehearsed").or_default() += 1;
                        }
                        // On a refusal nothing moved; on success, where the
                        // machine says.
                        let after = store.account_by_id(subject).await.on(store, "after");
                        let after = after.map(|a| a.state);
                        let want = if got == Outcome::Done {
                            action.to_state().unwrap_or(state).stored()
                        } else {
                            state.stored()
                        };
                        assert_eq!(
                            after,
                            Some(want),
                            "[{be}] family {family}, {state} × {action} × {actor:?}: {before:?}"
                        );
                        if got == Outcome::Done && action == AccountAction::IssueActivation {
                            assert!(auth.activation(subject).await.on(store, "code").is_some());
                        } else if action == AccountAction::IssueActivation {
                            assert!(
                                auth.activation(subject).await.on(store, "code").is_none(),
                                "[{be}] no code left behind"
                            );
                        }
                        *counted
                            .entry(if got == Outcome::Done {
                                "done"
                            } else {
                                "refused"
                            })
                            .or_default() += 1;
                    }
                }
            }
        }
        // 5 states × 7 actions × (6 + 5) actors.
        assert_eq!(n, 5 * 7 * 11, "[{be}]");
        eprintln!("[{be}] {n} triples: {counted:?}");

        // An import follows the machine too: it suspends, reactivates and
        // disables, but never approves, revives or re-requests. Fresh
        // accounts, the disabled one first (disabling takes every active
        // account of known history).
        let (org, requester, _, _) = families[0];
        let mut samples = Vec::new();
        for state in [
            LifecycleState::Disabled,
            LifecycleState::Requested,
            LifecycleState::Active,
            LifecycleState::Suspended,
            LifecycleState::Rejected,
        ] {
            n += 1;
            let t = plus(t0, i64::from(n) * 10);
            let login = format!("sm.{n}");
            let subject = auth
                .request_account(NewAccountRequest {
                    organisation_id: org,
                    login: r(&login),
                    role: Role::Agent,
                    requested_by: requester,
                    at: t,
                })
                .await
                .on(store, "request")
                .account_id;
            if state != LifecycleState::Requested {
                auth.decide_account(subject, outside, state != LifecycleState::Rejected, t)
                    .await
                    .on(store, "decide")
                    .unwrap_or_else(|| panic!("[{be}] decision"));
            }
            match state {
                LifecycleState::Suspended => {
                    store
                        .set_account_state(subject, AccountState::Suspended)
                        .await
                        .on(store, "suspend");
                }
                LifecycleState::Disabled => {
                    auth.disable_inactive(plus(t, 1), plus(t, 2))
                        .await
                        .on(store, "disable");
                }
                _ => {}
            }
            samples.push((state, login, subject));
        }
        for (state, login, subject) in samples {
            for to in [Active, AccountState::Suspended, AccountState::Requested] {
                let row = account(
                    &login,
                    "CE-038",
                    Role::Agent,
                    to,
                    Some("ce.officer"),
                    Some("ftl.officer"),
                );
                let before = store.account_by_id(subject).await.on(store, "before");
                let (count, refused) = store.upsert_accounts(vec![row]).await.on(store, "import");
                let from = state.stored();
                let allowed = from == to
                    || matches!(
                        (state, to),
                        (LifecycleState::Active, AccountState::Suspended)
                            | (LifecycleState::Suspended, AccountState::Active)
                    );
                let after = store.account_by_id(subject).await.on(store, "after");
                if allowed {
                    assert!(refused.is_empty(), "[{be}] {state} → {to}: {refused:?}");
                    assert_eq!(after.map(|a| a.state), Some(to), "[{be}] {state} → {to}");
                } else {
                    assert_eq!(
                        refusal_fields(&refused),
                        vec![(0, "state")],
                        "[{be}] {state} → {to}"
                    );
                    assert_eq!(count.updated, 0, "[{be}]");
                    assert_eq!(after, before, "[{be}] {state} → {to}: unchanged");
                }
                // Back where it was, for the next target (through the
                // machine: only active ↔ suspended ever moved).
                if allowed && from != to {
                    store
                        .set_account_state(subject, from)
                        .await
                        .on(store, "back");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_api_clients_lose_their_tokens() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        let record1 = store
            .account_by_id(agent1)
            .await
            .on(store, "account")
            .unwrap_or_else(|| panic!("[{be}] account"));
        let client = |id: &str, account_id: i64| ApiClientRow {
            client_id: id.into(),
            account_id,
            keys: r#"[{"kid":"k1","jwk":{"kty":"OKP","crv":"Ed25519","x":"c3ludGhldGlj"}}]"#.into(),
            created_at: t0,
            revoked_at: None,
        };
        let token = |n: u8, client_id: &str, account_id: i64| AccessTokenRow {
            digest: key32(n),
            client_id: client_id.into(),
            account_id,
            jkt: jkt(n),
            scope: "persons:read caseload:read".into(),
            issued_at: t0,
            expires_at: plus(t0, 300),
        };
        auth.insert_api_client(client("partner-app", agent1))
            .await
            .on(store, "client");
        auth.insert_api_client(client("partner-batch", agent1))
            .await
            .on(store, "client 2");
        for (c, field) in [
            (client("partner-app", agent2), "client_id"),
            (client("a b", agent1), "client_id"),
            (client("", agent1), "client_id"),
            (client("orphan", 999_999), "account_id"),
        ] {
            assert_invalid(store, auth.insert_api_client(c).await, field, "bad client");
        }
        assert_eq!(
            auth.api_client("partner-app").await.on(store, "client"),
            Some((client("partner-app", agent1), record1.clone())),
            "[{be}]"
        );
        assert_eq!(
            auth.api_client("nobody").await.on(store, "client"),
            None,
            "[{be}]"
        );

        auth.insert_access_token(token(1, "partner-app", agent1))
            .await
            .on(store, "token");
        auth.insert_access_token(token(2, "partner-app", agent1))
            .await
            .on(store, "token 2");
        auth.insert_access_token(token(3, "partner-batch", agent1))
            .await
            .on(store, "token 3");
        assert_eq!(
            auth.access_token(key32(1)).await.on(store, "token"),
            Some((token(1, "partner-app", agent1), record1.clone())),
            "[{be}]"
        );
        for (t, field, what) in [
            (
                token(1, "partner-app", agent1),
                "digest",
                "a digest already stored",
            ),
            (
                token(9, "partner-app", agent2),
                "client_id",
                "another account",
            ),
            (token(9, "nobody", agent1), "client_id", "unknown client"),
            (
                AccessTokenRow {
                    expires_at: t0,
                    ..token(9, "partner-app", agent1)
                },
                "expires_at",
                "expiring when issued",
            ),
            (
                AccessTokenRow {
                    jkt: "nope".into(),
                    ..token(9, "partner-app", agent1)
                },
                "jkt",
                "a malformed thumbprint",
            ),
        ] {
            assert_invalid(store, auth.insert_access_token(t).await, field, what);
        }

        let revoked_at = plus(t0, 60);
        assert!(
            auth.revoke_api_client("partner-app", revoked_at)
                .await
                .on(store, "revoke"),
            "[{be}]"
        );
        assert!(
            !auth
                .revoke_api_client("partner-app", plus(revoked_at, 1))
                .await
                .on(store, "revoke again"),
            "[{be}] already revoked"
        );
        assert!(
            !auth
                .revoke_api_client("nobody", revoked_at)
                .await
                .on(store, "revoke unknown"),
            "[{be}]"
        );
        assert_eq!(
            auth.api_client("partner-app")
                .await
                .on(store, "client")
                .and_then(|(c, _)| c.revoked_at),
            Some(revoked_at),
            "[{be}] the client stays, revoked"
        );
        for n in [1, 2] {
            assert_eq!(
                auth.access_token(key32(n)).await.on(store, "token"),
                None,
                "[{be}] token {n} of the revoked client"
            );
        }
        assert_invalid(
            store,
            auth.insert_access_token(token(4, "partner-app", agent1))
                .await,
            "client_id",
            "a revoked client",
        );
        assert_eq!(
            auth.access_token(key32(3))
                .await
                .on(store, "token")
                .map(|(t, _)| t.client_id),
            Some("partner-batch".to_string()),
            "[{be}] another client of the account keeps its tokens"
        );

        // A reset of every factor revokes the account's remaining clients
        // at once, with their tokens; another account's are untouched.
        auth.insert_api_client(client("other-app", agent2))
            .await
            .on(store, "client of agent 2");
        assert_eq!(
            auth.revoke_api_clients_of_account(agent1, plus(revoked_at, 5))
                .await
                .on(store, "revoke all"),
            1,
            "[{be}] partner-batch only: partner-app was revoked already"
        );
        assert_eq!(
            auth.access_token(key32(3)).await.on(store, "token"),
            None,
            "[{be}] token of the client revoked with the account"
        );
        assert_eq!(
            auth.revoke_api_clients_of_account(agent1, plus(revoked_at, 6))
                .await
                .on(store, "revoke all again"),
            0,
            "[{be}]"
        );
        assert_eq!(
            auth.api_client("other-app")
                .await
                .on(store, "client")
                .and_then(|(c, _)| c.revoked_at),
            None,
            "[{be}] another account's client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keys_admit_exactly_one_of_concurrent_inserts() {
    let b = both_auth().await;
    let now = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        let key = key32(7);
        let fresh = join_all((0..32).map(|_| auth.insert_replay_if_new(key, plus(now, 60), now)))
            .await
            .into_iter()
            .map(|r| r.on(store, "concurrent insert"))
            .filter(|&fresh| fresh)
            .count();
        assert_eq!(fresh, 1, "[{be}] 32 concurrent inserts of one key");
        assert!(
            !auth
                .insert_replay_if_new(key, plus(now, 90), plus(now, 59))
                .await
                .on(store, "replay"),
            "[{be}] live until its expiry"
        );
        assert!(
            auth.insert_replay_if_new(key, plus(now, 120), plus(now, 60))
                .await
                .on(store, "after expiry"),
            "[{be}] an expired key is taken over"
        );
        assert!(
            !auth
                .insert_replay_if_new(key, plus(now, 150), plus(now, 61))
                .await
                .on(store, "replay of the new one"),
            "[{be}] and its new expiry holds"
        );
        // The same race on a key that has expired: still one.
        let again = join_all(
            (0..32).map(|_| auth.insert_replay_if_new(key, plus(now, 300), plus(now, 200))),
        )
        .await
        .into_iter()
        .map(|r| r.on(store, "concurrent takeover"))
        .filter(|&fresh| fresh)
        .count();
        assert_eq!(again, 1, "[{be}] 32 concurrent takeovers of one key");
        assert!(
            auth.insert_replay_if_new(key32(8), plus(now, 60), now)
                .await
                .on(store, "other key"),
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.insert_replay_if_new(key32(9), now, now).await,
            "expires_at",
            "a key that protects nothing",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_expired_counts_what_it_removes() {
    let b = both_auth().await;
    let now = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        // Expired: 2 ceremonies, 3 replay keys, 1 token. Live: one of each.
        for (n, expires) in [(1, -10), (2, 0), (3, 10)] {
            auth.put_ceremony(key32(n), "login_challenge", "{}", plus(now, expires))
                .await
                .on(store, "ceremony");
        }
        for (n, expires) in [(1, -60), (2, -1), (3, 0), (4, 60)] {
            assert!(
                auth.insert_replay_if_new(key32(n), plus(now, expires), plus(now, -120))
                    .await
                    .on(store, "replay key")
            );
        }
        auth.insert_api_client(ApiClientRow {
            client_id: "partner-app".into(),
            account_id: agent1,
            keys: "[]".into(),
            created_at: plus(now, -3600),
            revoked_at: None,
        })
        .await
        .on(store, "client");
        for (n, expires) in [(1, -1), (2, 300)] {
            auth.insert_access_token(AccessTokenRow {
                digest: key32(n),
                client_id: "partner-app".into(),
                account_id: agent1,
                jkt: jkt(n),
                scope: "persons:read".into(),
                issued_at: plus(now, -600),
                expires_at: plus(now, expires),
            })
            .await
            .on(store, "token");
        }
        let long_ago = plus(now, -30 * 86_400);
        assert_eq!(
            auth.purge_expired(now, long_ago, 1_000)
                .await
                .on(store, "purge")
                .total(),
            6,
            "[{be}]"
        );
        assert_eq!(
            auth.purge_expired(now, long_ago, 1_000)
                .await
                .on(store, "purge again")
                .total(),
            0,
            "[{be}]"
        );
        assert_eq!(
            auth.take_ceremony(key32(3), "login_challenge", now)
                .await
                .on(store, "live ceremony"),
            Some("{}".to_string()),
            "[{be}]"
        );
        assert!(
            !auth
                .insert_replay_if_new(key32(4), plus(now, 60), now)
                .await
                .on(store, "live key"),
            "[{be}]"
        );
        assert!(
            auth.access_token(key32(2))
                .await
                .on(store, "live token")
                .is_some(),
            "[{be}]"
        );
        assert!(
            auth.access_token(key32(1))
                .await
                .on(store, "purged token")
                .is_none(),
            "[{be}]"
        );
    }
}

impl BothAuth {
    /// The first byte of each key stored in `table.column` (the tests'
    /// digests are [`key32`]), sorted: which rows are there, read in raw
    /// SQL since the interface shows no expired row.
    async fn keys_in(&self, store: &dyn RegistryStore, table: &str, column: &str) -> Vec<u8> {
        let sql = format!("SELECT {column} FROM {table}");
        let keys: Vec<Vec<u8>> = if store.backend() == "sqlite" {
            let db = rusqlite::Connection::open(
                self._dir.path().join(rempart_storage::sqlite::FILE_NAME),
            )
            .expect("raw sqlite");
            let mut stmt = db.prepare(&sql).expect("prepare");
            stmt.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        } else {
            let (client, conn) = tokio_postgres::connect(&self._guard.url, tokio_postgres::NoTls)
                .await
                .expect("raw postgres");
            tokio::spawn(conn);
            let sql = format!("SELECT {column} FROM \"{}\".{table}", self._guard.schema);
            client
                .query(&sql, &[])
                .await
                .expect("rows")
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let mut firsts: Vec<u8> = keys.iter().map(|k| k[0]).collect();
        firsts.sort_unstable();
        firsts
    }
}

/// The purge does bounded work: at most `limit` rows per table and round,
/// only what expired (sessions: only those past the kept period), and the
/// rounds together delete exactly the expired rows, replay keys included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_bounded_and_takes_exactly_what_expired() {
    let b = both_auth().await;
    let now = at("2026-03-02T09:00:00Z");
    let kept_until = plus(now, -30 * 86_400);
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        // Ceremonies 1–5 expired (5 at `now` exactly), 6–7 live.
        for (n, expires) in [
            (1, -900),
            (2, -60),
            (3, -1),
            (4, -3600),
            (5, 0),
            (6, 1),
            (7, 300),
        ] {
            auth.put_ceremony(key32(n), "login_challenge", "{}", plus(now, expires))
                .await
                .on(store, "ceremony");
        }
        // Replay keys 1–5 expired, 6–7 live.
        for (n, expires) in [
            (1, -60),
            (2, -1),
            (3, 0),
            (4, -30),
            (5, -59),
            (6, 1),
            (7, 60),
        ] {
            assert!(
                auth.insert_replay_if_new(key32(n), plus(now, expires), plus(now, -120))
                    .await
                    .on(store, "replay key")
            );
        }
        auth.insert_api_client(ApiClientRow {
            client_id: "partner-app".into(),
            account_id: agent1,
            keys: "[]".into(),
            created_at: plus(now, -3600),
            revoked_at: None,
        })
        .await
        .on(store, "client");
        // Access tokens 1–3 expired, 4 live.
        for (n, expires) in [(1, -1), (2, 0), (3, -300), (4, 300)] {
            auth.insert_access_token(AccessTokenRow {
                digest: key32(n),
                client_id: "partner-app".into(),
                account_id: agent1,
                jkt: jkt(n),
                scope: "persons:read".into(),
                issued_at: plus(now, -600),
                expires_at: plus(now, expires),
            })
            .await
            .on(store, "token");
        }
        // Sessions 1–3 ended long ago (absolute expiry at or before the
        // kept period), 4 expired yesterday (kept), 5 live.
        for (n, login_secs_ago) in [
            (1, 40 * 86_400),
            (2, 31 * 86_400),
            (3, 30 * 86_400 + 10 * 3600),
            (4, 86_400),
            (5, 60),
        ] {
            auth.insert_session(session_of(agent1, n, "passkey", plus(now, -login_secs_ago)))
                .await
                .on(store, "session");
        }

        let rounds = [(2, 2, 2, 2), (2, 2, 1, 1), (1, 1, 0, 0), (0, 0, 0, 0)];
        for (i, (c, r, t, s)) in rounds.into_iter().enumerate() {
            let p = auth
                .purge_expired(now, kept_until, 2)
                .await
                .on(store, "bounded purge");
            assert_eq!(
                (p.ceremonies, p.replay_keys, p.access_tokens, p.sessions),
                (c, r, t, s),
                "[{be}] round {i}: at most 2 rows per table"
            );
            assert_eq!(p.full(2), i < 2, "[{be}] round {i}: more may be left");
        }
        assert_eq!(b.keys_in(store, "ceremony", "id").await, [6, 7], "[{be}]");
        assert_eq!(
            b.keys_in(store, "replay_key", "digest").await,
            [6, 7],
            "[{be}] expired replay keys went, live ones stay"
        );
        assert_eq!(
            b.keys_in(store, "access_token", "digest").await,
            [4],
            "[{be}]"
        );
        assert_eq!(
            b.keys_in(store, "web_session", "id_digest").await,
            [4, 5],
            "[{be}] sessions are kept 30 days past their absolute expiry"
        );
        // The live replay key still refuses its replay.
        assert!(
            !auth
                .insert_replay_if_new(key32(7), plus(now, 60), now)
                .await
                .on(store, "live key"),
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.purge_expired(now, kept_until, 0).await,
            "limit",
            "a purge that deletes nothing",
        );
    }
}

/// A suspension ends, in the same transaction, every session, API
/// credential, API client and access token of the account, and nothing of
/// another account; reactivation restores none of them; of concurrent
/// suspensions exactly one does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_ends_every_session_credential_and_token_of_the_account() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        let agent2 = account_id(store, "ce.agent2").await;
        for (n, account) in [(1, agent1), (2, agent1), (3, agent1), (4, agent2)] {
            auth.insert_session(session_of(account, n, "passkey", t0))
                .await
                .on(store, "session");
        }
        assert!(
            auth.end_session(key32(3), plus(t0, 10), "logout")
                .await
                .on(store, "logout"),
            "[{be}]"
        );
        let expires = plus(t0, 86_400);
        let c1 = store
            .insert_credential(agent1, key32(11), t0, expires)
            .await
            .on(store, "credential");
        let c2 = store
            .insert_credential(agent2, key32(12), t0, expires)
            .await
            .on(store, "credential");
        for (client, account) in [("app-1", agent1), ("app-2", agent2)] {
            auth.insert_api_client(ApiClientRow {
                client_id: client.into(),
                account_id: account,
                keys: "[]".into(),
                created_at: t0,
                revoked_at: None,
            })
            .await
            .on(store, "client");
        }
        for (n, client, account) in [
            (21, "app-1", agent1),
            (22, "app-1", agent1),
            (23, "app-2", agent2),
        ] {
            auth.insert_access_token(AccessTokenRow {
                digest: key32(n),
                client_id: client.into(),
                account_id: account,
                jkt: jkt(n),
                scope: "persons:read".into(),
                issued_at: t0,
                expires_at: plus(t0, 600),
            })
            .await
            .on(store, "token");
        }
        // Read once, so that the store keeps the checked credential.
        let kept = store.credential(c1).await.on(store, "credential");
        assert!(kept.is_some_and(|(c, _)| c.revoked_at.is_none()), "[{be}]");

        let at1 = plus(t0, 60);
        let raced = join_all((0..8).map(|_| auth.suspend_account(agent1, at1, "suspension"))).await;
        let done: Vec<_> = raced
            .into_iter()
            .filter_map(|r| r.on(store, "suspend"))
            .collect();
        assert_eq!(
            done,
            [rempart_storage::Suspension {
                sessions: 2,
                credentials: 1,
                api_clients: 1,
                access_tokens: 2,
            }],
            "[{be}] 8 concurrent suspensions: one ends everything"
        );
        let account = store
            .account_by_id(agent1)
            .await
            .on(store, "account")
            .unwrap_or_else(|| panic!("[{be}] account"));
        assert_eq!(account.state, AccountState::Suspended, "[{be}]");
        for n in [1, 2] {
            let (s, _) = auth
                .session(key32(n))
                .await
                .on(store, "session")
                .unwrap_or_else(|| panic!("[{be}] session {n}"));
            assert_eq!(
                (s.ended_at, s.end_reason.as_deref()),
                (Some(at1), Some("suspension")),
                "[{be}] session {n}"
            );
        }
        let (logged_out, _) = auth
            .session(key32(3))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session 3"));
        assert_eq!(
            logged_out.end_reason.as_deref(),
            Some("logout"),
            "[{be}] an ended session keeps its reason"
        );
        let revoked = store.credential(c1).await.on(store, "credential");
        assert_eq!(
            revoked.map(|(c, _)| c.revoked_at),
            Some(Some(at1)),
            "[{be}] the kept copy is not used after the change"
        );
        for n in [21, 22] {
            assert!(
                auth.access_token(key32(n))
                    .await
                    .on(store, "token")
                    .is_none(),
                "[{be}] token {n}"
            );
        }
        let (client, _) = auth
            .api_client("app-1")
            .await
            .on(store, "client")
            .unwrap_or_else(|| panic!("[{be}] client"));
        assert_eq!(client.revoked_at, Some(at1), "[{be}]");

        // Another account is untouched.
        let (other, _) = auth
            .session(key32(4))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session 4"));
        assert_eq!(other.ended_at, None, "[{be}]");
        assert!(
            store
                .credential(c2)
                .await
                .on(store, "credential")
                .is_some_and(|(c, _)| c.revoked_at.is_none()),
            "[{be}]"
        );
        assert!(
            auth.access_token(key32(23))
                .await
                .on(store, "token")
                .is_some(),
            "[{be}]"
        );

        // Not active any more: nothing to suspend, nothing changes.
        assert_eq!(
            auth.suspend_account(agent1, plus(t0, 120), "suspension")
                .await
                .on(store, "suspend again"),
            None,
            "[{be}]"
        );
        assert_eq!(
            auth.suspend_account(999_999, plus(t0, 120), "suspension")
                .await
                .on(store, "suspend unknown"),
            None,
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.suspend_account(agent2, plus(t0, 120), "Suspended")
                .await,
            "reason",
            "a malformed reason",
        );

        // Reactivation restores the state alone.
        assert!(
            store
                .set_account_state(agent1, AccountState::Active)
                .await
                .on(store, "reactivate"),
            "[{be}]"
        );
        let (s, _) = auth
            .session(key32(1))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert!(!s.is_live_at(plus(t0, 180)), "[{be}] no session comes back");
        assert!(
            store
                .credential(c1)
                .await
                .on(store, "credential")
                .is_some_and(|(c, _)| c.revoked_at.is_some()),
            "[{be}] no credential comes back"
        );
        assert!(
            auth.access_token(key32(21))
                .await
                .on(store, "token")
                .is_none(),
            "[{be}] no token comes back"
        );
    }
}

/// No session opens for an account that is not active, and a login
/// racing a suspension never leaves a live session behind: the insert
/// waits for the suspension under way and either comes before it (and is
/// ended by it) or is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_outlives_a_suspension_it_raced() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        // Suspended (the only way out of active a registry write may take
        // besides the inactivity job): no session opens.
        assert!(
            store
                .set_account_state(agent1, AccountState::Suspended)
                .await
                .on(store, "state"),
            "[{be}]"
        );
        assert_invalid(
            store,
            auth.insert_session(session_of(agent1, 1, "passkey", t0))
                .await,
            "account_id",
            "a session for an inactive account",
        );
        for round in 0..20u8 {
            assert!(
                store
                    .set_account_state(agent1, AccountState::Active)
                    .await
                    .on(store, "reactivate"),
                "[{be}]"
            );
            let n = 100 + round;
            let (inserted, suspended) = tokio::join!(
                auth.insert_session(session_of(agent1, n, "password_totp", t0)),
                auth.suspend_account(agent1, plus(t0, 1), "suspension"),
            );
            assert!(
                suspended.on(store, "suspend").is_some(),
                "[{be}] round {round}"
            );
            match inserted {
                Ok(()) => {}
                Err(
                    StorageError::NotFound {
                        field: "account_id",
                        ..
                    }
                    | StorageError::Refused {
                        field: "account_id",
                        ..
                    },
                ) => continue,
                Err(e) => panic!("[{be}] round {round}: {e}"),
            }
            let (row, _) = auth
                .session(key32(n))
                .await
                .on(store, "session")
                .unwrap_or_else(|| panic!("[{be}] session"));
            assert_eq!(
                row.end_reason.as_deref(),
                Some("suspension"),
                "[{be}] round {round}: a session inserted before the suspension is ended by it"
            );
        }
    }
}

/// A session's idle clock moves only while its account is active: polling
/// a suspended account's session extends nothing, in one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_account_never_touches_its_sessions() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (store, auth) in b.each() {
        let be = store.backend();
        consultation_accounts(store).await;
        let agent1 = account_id(store, "ce.agent1").await;
        auth.insert_session(session_of(agent1, 1, "passkey", t0))
            .await
            .on(store, "session");
        let last_seen = || async {
            auth.session(key32(1))
                .await
                .on(store, "session")
                .unwrap_or_else(|| panic!("[{be}] session"))
                .0
                .last_seen_at
        };
        auth.touch_session(key32(1), plus(t0, 600))
            .await
            .on(store, "touch");
        assert_eq!(last_seen().await, plus(t0, 600), "[{be}]");
        // Suspended by the registry alone (as an import or a tool could).
        assert!(
            store
                .set_account_state(agent1, AccountState::Suspended)
                .await
                .on(store, "state"),
            "[{be}]"
        );
        for secs in [1_200, 1_500, 1_790] {
            auth.touch_session(key32(1), plus(t0, secs))
                .await
                .on(store, "polling");
        }
        assert_eq!(
            last_seen().await,
            plus(t0, 600),
            "[{be}] suspended: polling moves nothing"
        );
        assert!(
            store
                .set_account_state(agent1, AccountState::Active)
                .await
                .on(store, "reactivate"),
            "[{be}]"
        );
        auth.touch_session(key32(1), plus(t0, 1_799))
            .await
            .on(store, "touch");
        assert_eq!(last_seen().await, plus(t0, 1_799), "[{be}] active again");
    }
}

/// An account written at version 2, before accounts had a history.
const V2_ACCOUNTS: &str = "
    INSERT INTO organisation (id, code, kind, name) VALUES (1, 'CE-038', 'cap_emploi', 'Cap emploi');
    INSERT INTO account (id, login, organisation_id, role, state)
        VALUES (1, 'ce.agent1', 1, 'agent', 'active');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_of_version_2_keep_an_unknown_history() {
    let url = pg_url();
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let db = rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
            .expect("raw sqlite");
        db.execute_batch(
            "CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT;",
        )
        .expect("schema_migrations");
        for m in &migrate::SQLITE[..2] {
            db.execute_batch(m.sql).expect("versions 1 and 2");
            db.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, ?3, datetime('now'))",
                rusqlite::params![m.version, m.name, m.checksum()],
            )
            .expect("applied");
        }
        db.execute_batch(V2_ACCOUNTS).expect("version 2 data");
    }
    let sqlite = Stores::from(
        SqliteStore::open(dir.path())
            .await
            .expect("[sqlite] upgrade"),
    );
    let schema = unique_schema();
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let mut sql = format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\";
         CREATE TABLE schema_migrations (
             version INT PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL);"
    );
    for m in &migrate::POSTGRES[..2] {
        sql.push_str(m.sql);
        sql.push_str(&format!(
            "\nINSERT INTO schema_migrations VALUES ({}, '{}', '{}', now());",
            m.version,
            m.name,
            m.checksum()
        ));
    }
    sql.push_str(V2_ACCOUNTS);
    pg_exec_blocking(&url, &sql).expect("[postgres] version 2 registry");
    let pg = Stores::from(
        PgStore::connect_store(&url, &schema)
            .await
            .expect("[postgres] upgrade"),
    );

    for stores in [&sqlite, &pg] {
        let (store, auth) = (&*stores.registry, &*stores.auth);
        let be = store.backend();
        assert_eq!(
            auth.lifecycle(1).await.on(store, "lifecycle"),
            Some(AccountLifecycle {
                account_id: 1,
                created_at: None,
                requested_by: None,
                decided_by: None,
                decided_at: None,
                last_login_at: None,
                next_session_high_risk: false,
            }),
            "[{be}] nothing invented"
        );
        assert!(
            auth.disable_inactive(at("2030-01-01T00:00:00Z"), at("2030-01-01T00:00:00Z"))
                .await
                .on(store, "disable inactive")
                .is_empty(),
            "[{be}] an unknown history is not a stale one"
        );
        auth.record_login(1, at("2026-03-02T09:00:00Z"))
            .await
            .on(store, "login");
        assert_eq!(
            auth.disable_inactive(at("2026-04-01T00:00:00Z"), at("2026-04-01T00:00:00Z"))
                .await
                .on(store, "disable inactive"),
            vec![1],
            "[{be}] once it has logged in, it can go stale"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_stores_gives_both_interfaces_on_one_database() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().display().to_string();
    let stores = rempart_storage::open_stores(&path)
        .await
        .expect("open sqlite by path");
    let (store, auth) = (&*stores.registry, &*stores.auth);
    assert_eq!(store.backend(), "sqlite");
    consultation_accounts(store).await;
    let boss = account_id(store, "ce.Boss").await;
    let ce = org_id(store, "CE-038").await;
    let asked = auth
        .request_account(NewAccountRequest {
            organisation_id: ce,
            login: r("ce.new"),
            role: Role::Agent,
            requested_by: boss,
            at: at("2026-03-02T09:00:00Z"),
        })
        .await
        .on(store, "request");
    assert_eq!(
        store
            .account_by_login(&r("ce.new"))
            .await
            .on(store, "by login"),
        Some(asked),
        "written through one interface, read through the other"
    );
    let again = rempart_storage::open(&path).await.expect("open again");
    assert!(
        again
            .account_by_login(&r("ce.new"))
            .await
            .on(&*again, "by login")
            .is_some(),
        "the same file"
    );
}

// ---------------------------------------------------------------- guard

use rempart_guard::store::{
    ActivityCounts, ActivityRow, AlertQuery, CounterDelta, FlushBatch, Freeze, GuardStore, Known,
    KnownKind, Metric, RemoteCount, Scope, SuspensionBlock,
};
use rempart_guard::{
    AccountFacts, Alert, AlertKind, Attempt, AttemptKind, BUCKET_SECS, Evidence, Explanation,
    Feature, Fields, Guard, GuardConfig, GuardError, PeerGroup, SessionFacts, Verdict,
};

impl BothAuth {
    fn guards(&self) -> [(&'static str, Arc<dyn GuardStore>); 2] {
        [
            ("sqlite", self.sqlite.guard.clone()),
            ("postgres", self.pg.guard.clone()),
        ]
    }
}

fn delta(scope: Scope, subject: i64, metric: Metric, bucket: i64, count: u32) -> CounterDelta {
    CounterDelta {
        scope,
        subject,
        metric,
        bucket,
        count,
    }
}

fn hour_row(
    scope: Scope,
    subject: i64,
    day: i32,
    hour: u8,
    attempts: u32,
    persons: u32,
) -> ActivityRow {
    ActivityRow {
        scope,
        subject,
        day,
        hour,
        counts: ActivityCounts {
            attempts,
            persons,
            misses: 1,
            searches: 2,
            search_misses: 3,
            nir: 4,
            break_glass: 5,
            account_hours: 1,
        },
    }
}

fn alert_of(account_id: i64, organisation_id: i64, at: DateTime<Utc>, score: f64) -> Alert {
    Alert {
        at,
        kind: AlertKind::Behaviour,
        account_id,
        organisation_id,
        verdict: Verdict::StepUp,
        score,
        explanation: vec![
            Explanation {
                feature: Feature::OffHours,
                value: 5.0,
                baseline: 0.01,
                contribution: 2.5,
            },
            Explanation {
                feature: Feature::NewDevice,
                value: 1.0,
                baseline: 2.0,
                contribution: 2.0,
            },
        ],
        fresh: true,
        evidence: Evidence {
            from: at - TimeDelta::hours(1),
            to: at,
            first_seq: Some(10),
            last_seq: Some(42),
        },
        accounts: Vec::new(),
    }
}

fn remote(rows: Vec<RemoteCount>) -> Vec<(Scope, i64, Metric, u64, u64)> {
    let mut v: Vec<_> = rows
        .into_iter()
        .map(|r| (r.scope, r.subject, r.metric, r.hour, r.day))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_counters_add_up_across_instances_and_are_pruned() {
    let b = both_auth().await;
    for (be, g) in b.guards() {
        let batch = |instance, counters| FlushBatch {
            instance,
            counters,
            ..FlushBatch::default()
        };
        let a = Scope::Account;
        // Instance 1 writes twice to one key (and once within one batch:
        // a retried batch joined to the next one).
        g.flush(&batch(
            1,
            vec![
                delta(a, 7, Metric::PersonsHour, 1000, 3),
                delta(a, 7, Metric::PersonsHour, 1000, 2),
                delta(a, 7, Metric::PersonsHour, 990, 4),
            ],
        ))
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        g.flush(&batch(1, vec![delta(a, 7, Metric::PersonsHour, 1000, 1)]))
            .await
            .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        g.flush(&batch(
            2,
            vec![
                delta(a, 7, Metric::PersonsHour, 1000, 10),
                delta(Scope::Organisation, 3, Metric::Refusals, 995, 7),
                delta(a, 8, Metric::Nir, 700, 9), // older than a day
            ],
        ))
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        // Instance 3 sees both; instance 1 only instance 2's; the hour
        // covers buckets from 995, the day from 713.
        let seen = |instance| {
            let g = g.clone();
            async move { remote(g.remote_counts(instance, 995, 713).await.unwrap()) }
        };
        assert_eq!(
            seen(3).await,
            vec![
                (a, 7, Metric::PersonsHour, 16, 20),
                (Scope::Organisation, 3, Metric::Refusals, 7, 7),
            ],
            "[{be}]"
        );
        assert_eq!(
            seen(1).await,
            vec![
                (a, 7, Metric::PersonsHour, 10, 10),
                (Scope::Organisation, 3, Metric::Refusals, 7, 7),
            ],
            "[{be}]"
        );
        assert_eq!(
            g.prune(991, 0).await.unwrap(),
            2,
            "[{be}] buckets 990 and 700"
        );
        assert_eq!(
            remote(g.remote_counts(3, 0, 0).await.unwrap()).len(),
            2,
            "[{be}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_activity_and_devices_round_trip() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (be, g) in b.guards() {
        let (a, p) = (Scope::Account, Scope::Peer);
        let known = |digest: u8, first_seen| Known {
            account_id: 7,
            kind: KnownKind::Device,
            digest: [digest; 16],
            first_seen,
        };
        g.flush(&FlushBatch {
            instance: 1,
            activity: vec![
                hour_row(a, 7, 20_000, 9, 10, 5),
                hour_row(a, 7, 20_001, 10, 4, 2),
                hour_row(a, 8, 20_001, 10, 1, 1),
                hour_row(p, 184, 20_001, 10, 5, 3),
                hour_row(a, 7, 19_000, 9, 1, 1),
                hour_row(Scope::Organisation, 3, 20_001, 10, 12, 7),
                hour_row(Scope::Organisation, 3, 20_001, 11, 2, 1),
            ],
            known: vec![known(1, t0), known(2, t0)],
            ..FlushBatch::default()
        })
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        // Another instance adds to the same hours and saw device 1 earlier.
        g.flush(&FlushBatch {
            instance: 2,
            activity: vec![
                hour_row(a, 7, 20_001, 10, 6, 3),
                hour_row(p, 184, 20_001, 10, 5, 3),
            ],
            known: vec![
                known(1, t0 - TimeDelta::days(3)),
                Known {
                    kind: KnownKind::Network,
                    ..known(9, t0)
                },
            ],
            ..FlushBatch::default()
        })
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        let h = g
            .load_account(7, 19_500)
            .await
            .unwrap_or_else(|e| panic!("[{be}] load: {e}"));
        assert_eq!(h.activity.len(), 2, "[{be}] the day-19000 row is too old");
        assert_eq!(h.activity[0], hour_row(a, 7, 20_000, 9, 10, 5), "[{be}]");
        let merged = h.activity[1].counts;
        assert_eq!(
            (
                merged.attempts,
                merged.persons,
                merged.nir,
                merged.account_hours
            ),
            (10, 5, 8, 1),
            "[{be}] counts add up; one account is active once in an hour, \
             whichever instances it used"
        );
        assert_eq!(
            h.known,
            vec![
                known(1, t0 - TimeDelta::days(3)),
                known(2, t0),
                Known {
                    kind: KnownKind::Network,
                    ..known(9, t0)
                },
            ],
            "[{be}] the earliest sighting wins"
        );
        let peers = g.load_peers(20_001).await.unwrap();
        assert_eq!(peers.len(), 1, "[{be}] organisation rows are not a peer's");
        let org = g.load_organisation(3, 20_001).await.unwrap();
        assert_eq!(
            org.iter()
                .map(|r| (r.scope, r.subject, r.hour, r.counts.attempts))
                .collect::<Vec<_>>(),
            vec![
                (Scope::Organisation, 3, 10, 12),
                (Scope::Organisation, 3, 11, 2)
            ],
            "[{be}] an organisation's hours, in order"
        );
        assert!(
            g.load_organisation(4, 0).await.unwrap().is_empty(),
            "[{be}]"
        );
        assert_eq!(
            (peers[0].subject, peers[0].counts.attempts),
            (184, 10),
            "[{be}]"
        );
        assert!(
            g.load_account(99, 0).await.unwrap().activity.is_empty(),
            "[{be}]"
        );
        assert_eq!(
            g.prune(0, 20_001).await.unwrap(),
            2,
            "[{be}] days 19000 and 20000"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_alerts_are_stored_whole_and_listed_by_filter() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    for (be, g) in b.guards() {
        let alerts = vec![
            alert_of(7, 3, t0, 4.5),
            // An organisation's alert names the accounts involved.
            Alert {
                kind: AlertKind::OrganisationBehaviour,
                accounts: vec![7, 8, 12],
                ..alert_of(8, 3, t0 + TimeDelta::minutes(5), 5.0)
            },
            alert_of(7, 4, t0 + TimeDelta::minutes(10), 6.0),
        ];
        g.flush(&FlushBatch {
            instance: 1,
            alerts: alerts.clone(),
            freezes: vec![Freeze {
                organisation_id: 3,
                frozen_at: t0,
            }],
            ..FlushBatch::default()
        })
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        let list = |q: AlertQuery| {
            let g = g.clone();
            async move { g.alerts(&q).await.unwrap() }
        };
        let all = list(AlertQuery {
            limit: 10,
            ..AlertQuery::default()
        })
        .await;
        assert_eq!(
            all.iter().map(|a| a.alert.clone()).collect::<Vec<_>>(),
            alerts,
            "[{be}] whole, in order"
        );
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let of_7 = list(AlertQuery {
            account_id: Some(7),
            limit: 10,
            ..AlertQuery::default()
        })
        .await;
        assert_eq!(of_7.len(), 2, "[{be}]");
        let of_org_3_late = list(AlertQuery {
            organisation_id: Some(3),
            from: Some(t0 + TimeDelta::minutes(1)),
            to: Some(t0 + TimeDelta::minutes(6)),
            limit: 10,
            ..AlertQuery::default()
        })
        .await;
        assert_eq!(of_org_3_late.len(), 1, "[{be}]");
        assert_eq!(of_org_3_late[0].alert.account_id, 8, "[{be}]");
        let page = list(AlertQuery {
            after_id: all[0].id,
            limit: 1,
            ..AlertQuery::default()
        })
        .await;
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, all[1].id, "[{be}] paging");
        // A batch with one bad alert writes nothing at all.
        let bad = FlushBatch {
            instance: 1,
            counters: vec![delta(Scope::Account, 7, Metric::Attempts, 5, 1)],
            alerts: vec![alert_of(9, 3, t0, 1.0), alert_of(9, 3, t0, f64::NAN)],
            ..FlushBatch::default()
        };
        assert!(g.flush(&bad).await.is_err(), "[{be}]");
        assert_eq!(
            list(AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .len(),
            3,
            "[{be}]"
        );
        assert!(
            g.remote_counts(2, 0, 0).await.unwrap().is_empty(),
            "[{be}] all or nothing"
        );
        // Freezes: listed until lifted, once; re-frozen later.
        let frozen = |g: Arc<dyn GuardStore>| async move {
            g.frozen_organisations()
                .await
                .unwrap()
                .iter()
                .map(|f| f.organisation_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(frozen(g.clone()).await, vec![3], "[{be}]");
        assert!(
            g.lift_freeze(3, t0 + TimeDelta::hours(1)).await.unwrap(),
            "[{be}]"
        );
        assert!(
            !g.lift_freeze(3, t0 + TimeDelta::hours(1)).await.unwrap(),
            "[{be}] once"
        );
        assert!(frozen(g.clone()).await.is_empty(), "[{be}]");
        g.flush(&FlushBatch {
            instance: 1,
            freezes: vec![Freeze {
                organisation_id: 3,
                frozen_at: t0 + TimeDelta::hours(2),
            }],
            ..FlushBatch::default()
        })
        .await
        .unwrap();
        let f = g.frozen_organisations().await.unwrap();
        assert_eq!(
            (f[0].organisation_id, f[0].frozen_at),
            (3, t0 + TimeDelta::hours(2)),
            "[{be}]"
        );
        // A freeze decided before a lift but flushed after it (another
        // instance's sync in flight) does not undo the lift, even when the
        // lift found nothing stored yet; a freeze after the lift does.
        let freeze_at = |org: i64, at| FlushBatch {
            instance: 2,
            freezes: vec![Freeze {
                organisation_id: org,
                frozen_at: at,
            }],
            ..FlushBatch::default()
        };
        assert!(
            g.lift_freeze(3, t0 + TimeDelta::hours(3)).await.unwrap(),
            "[{be}]"
        );
        g.flush(&freeze_at(3, t0 + TimeDelta::minutes(150)))
            .await
            .unwrap();
        assert!(frozen(g.clone()).await.is_empty(), "[{be}] stale freeze");
        assert!(
            !g.lift_freeze(4, t0 + TimeDelta::hours(3)).await.unwrap(),
            "[{be}] nothing stored for 4"
        );
        g.flush(&freeze_at(4, t0 + TimeDelta::minutes(170)))
            .await
            .unwrap();
        assert!(frozen(g.clone()).await.is_empty(), "[{be}] stale freeze");
        g.flush(&freeze_at(4, t0 + TimeDelta::hours(4)))
            .await
            .unwrap();
        assert_eq!(frozen(g.clone()).await, vec![4], "[{be}] a new freeze");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_suspension_blocks_are_shared_never_shortened_and_pruned() {
    let b = both_auth().await;
    let t0 = at("2026-03-02T09:00:00Z");
    let block = |account_id, until| SuspensionBlock { account_id, until };
    let day = TimeDelta::days(1);
    for (be, g) in b.guards() {
        g.block_account(block(7, t0 + day))
            .await
            .unwrap_or_else(|e| panic!("[{be}] block: {e}"));
        g.block_account(block(7, t0 + TimeDelta::hours(1)))
            .await
            .unwrap_or_else(|e| panic!("[{be}] block: {e}"));
        // Through flushes too: a later end for 7 (another instance's
        // refusal lengthened it), an earlier one (a flush in flight), and a
        // short block of 8.
        let flush = |instance, blocks| FlushBatch {
            instance,
            blocks,
            ..FlushBatch::default()
        };
        let later = t0 + day + TimeDelta::minutes(5);
        g.flush(&flush(
            2,
            vec![block(7, later), block(8, t0 + TimeDelta::minutes(30))],
        ))
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        g.flush(&flush(1, vec![block(7, t0)]))
            .await
            .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
        assert_eq!(
            g.suspension_blocks(t0).await.unwrap(),
            vec![block(7, later), block(8, t0 + TimeDelta::minutes(30))],
            "[{be}] the later end wins, in account order"
        );
        assert_eq!(
            g.suspension_blocks(t0 + TimeDelta::minutes(30))
                .await
                .unwrap(),
            vec![block(7, later)],
            "[{be}] 8's block is over"
        );
        assert!(
            g.suspension_blocks(later).await.unwrap().is_empty(),
            "[{be}]"
        );
        // An account's history carries its block, over or not.
        let blocked = |id| {
            let g = g.clone();
            async move { g.load_account(id, 0).await.unwrap().blocked_until }
        };
        assert_eq!(blocked(7).await, Some(later), "[{be}]");
        assert_eq!(
            blocked(8).await,
            Some(t0 + TimeDelta::minutes(30)),
            "[{be}]"
        );
        assert_eq!(blocked(9).await, None, "[{be}]");
        // Pruning removes the blocks that ended before the bucket began.
        let bucket = (t0 + TimeDelta::hours(1)).timestamp() / BUCKET_SECS;
        assert_eq!(g.prune(bucket, 0).await.unwrap(), 1, "[{be}] 8's block");
        assert_eq!(blocked(8).await, None, "[{be}]");
        assert_eq!(blocked(7).await, Some(later), "[{be}]");
        // A batch that fails writes no block either.
        let bad = FlushBatch {
            alerts: vec![alert_of(9, 3, t0, f64::NAN)],
            ..flush(1, vec![block(9, later)])
        };
        assert!(g.flush(&bad).await.is_err(), "[{be}]");
        assert_eq!(blocked(9).await, None, "[{be}] all or nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_on_one_database_share_suspensions() {
    let b = both_auth().await;
    // Tuesday 13 January 2026, 09:00 in Paris.
    let t0 = at("2026-01-13T08:00:00Z");
    let mut config = GuardConfig::default();
    config.sync.max_staleness_secs = 24 * 3600;
    for (be, store) in b.guards() {
        let one = Guard::open(config, store.clone(), 1, t0).await.unwrap();
        let two = Guard::open(config, store.clone(), 2, t0).await.unwrap();
        // Two met the account before; one suspends it.
        let d = two.check(&guarded_read(7, 1, t0)).await.unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "[{be}]");
        let mut suspended = None;
        for i in 0..200 {
            let t = t0 + TimeDelta::minutes(1) + TimeDelta::seconds(i);
            let d = one.check(&guarded_read(7, 7000 + i, t)).await.unwrap();
            if d.verdict == Verdict::Suspend {
                suspended = Some(t);
                break;
            }
        }
        let t1 = suspended.unwrap_or_else(|| panic!("[{be}] never suspended"));
        // No instance has synced since: a third instance loads the account
        // with its block at its first attempt.
        let three = Guard::open(config, store.clone(), 3, t1).await.unwrap();
        let d = three
            .check(&guarded_read(7, 2, t1 + TimeDelta::minutes(1)))
            .await
            .unwrap();
        assert_eq!(d.verdict, Verdict::Suspend, "[{be}] {d:?}");
        // Two, after its sync, refuses it, even for the person it showed.
        two.sync(t1 + TimeDelta::minutes(1)).await.unwrap();
        let d = two
            .check(&guarded_read(7, 1, t1 + TimeDelta::minutes(2)))
            .await
            .unwrap();
        assert_eq!(d.verdict, Verdict::Suspend, "[{be}] {d:?}");
    }
}

/// A read by a Cap emploi advisor of the Isère, at `at`.
fn guarded_read(account: i64, person: i64, at: DateTime<Utc>) -> Attempt {
    Attempt {
        at,
        account: AccountFacts {
            account_id: account,
            organisation_id: 3,
            role: Role::Agent,
            created_at: None,
            peer: PeerGroup::of(OrganisationKind::CapEmploi, Some("38")),
        },
        session: SessionFacts {
            device: Some([account as u8; 16]),
            ..SessionFacts::default()
        },
        kind: AttemptKind::ReadPerson,
        person_id: Some(person),
        purpose: Some(Purpose::FollowUp),
        fields: Fields::of(&[FieldGroup::Identity, FieldGroup::Contact], false),
        new_mandate: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_on_one_database_share_counts_baselines_and_alerts() {
    let b = both_auth().await;
    // Tuesday 13 January 2026, 09:00 in Paris.
    let t0 = at("2026-01-13T08:00:00Z");
    let mut config = GuardConfig::default();
    config.sync.max_staleness_secs = 24 * 3600;
    for (be, store) in b.guards() {
        let one = Guard::open(config, store.clone(), 1, t0).await.unwrap();
        let two = Guard::open(config, store.clone(), 2, t0).await.unwrap();
        // Three working days on instance one: 5 persons an hour.
        for d in 0..3 {
            for h in 0..8 {
                for i in 0..5 {
                    let t =
                        t0 + TimeDelta::days(d) + TimeDelta::hours(h) + TimeDelta::minutes(i * 10);
                    let r = one
                        .check(&guarded_read(7, 7000 + (d * 40 + h * 5 + i) % 200, t))
                        .await
                        .unwrap();
                    assert_eq!(r.verdict, Verdict::Allow, "[{be}] day {d} hour {h}");
                }
                one.sync(t0 + TimeDelta::days(d) + TimeDelta::hours(h + 1))
                    .await
                    .unwrap();
            }
        }
        // Day 4: 45 reads on instance one (the hourly quota of 40 refuses
        // the last ones), then the account moves to two.
        let t4 = t0 + TimeDelta::days(3);
        two.sync(t4).await.unwrap();
        for i in 0..45 {
            let r = one
                .check(&guarded_read(7, 8000 + i, t4 + TimeDelta::seconds(i * 12)))
                .await
                .unwrap();
            if r.verdict != Verdict::Allow {
                assert!(i >= 20, "[{be}] {i}: {r:?}");
                one.raise(r.alert.unwrap().with_ledger_range(None, Some(i as u64)));
            }
        }
        one.sync(t4 + TimeDelta::minutes(11)).await.unwrap();
        two.sync(t4 + TimeDelta::minutes(11)).await.unwrap();
        let mut on_two = Vec::new();
        for i in 30..60 {
            on_two.push(
                two.check(&guarded_read(
                    7,
                    8000 + i,
                    t4 + TimeDelta::minutes(12) + TimeDelta::seconds(i),
                ))
                .await
                .unwrap(),
            );
        }
        let refused = on_two
            .iter()
            .position(|d| !d.lets_through())
            .unwrap_or_else(|| panic!("[{be}] never stopped"));
        assert!(
            refused <= 10,
            "[{be}] the counts of instance one count on two: {refused}"
        );
        // The refusal names the account's own baseline, read from the store
        // by an instance that never served it before: 5 an hour for three
        // days, and today's hour of 40 (160 persons over 25 active hours).
        let alert = on_two[refused].alert.clone().unwrap();
        let own = alert
            .explanation
            .iter()
            .find(|e| e.feature == Feature::VolumeVsOwn);
        assert!(
            own.is_some_and(|e| (4.0..7.0).contains(&e.baseline)),
            "[{be}] {alert:?}"
        );
        // A restart keeps it all.
        two.sync(t4 + TimeDelta::minutes(13)).await.unwrap();
        drop(one);
        let three = Guard::open(config, store.clone(), 3, t4 + TimeDelta::minutes(13))
            .await
            .unwrap();
        let stored = three
            .alerts(&AlertQuery {
                account_id: Some(7),
                limit: 100,
                ..AlertQuery::default()
            })
            .await
            .unwrap();
        assert!(!stored.is_empty(), "[{be}] alerts raised on one are stored");
        assert!(
            stored.iter().all(|a| !a.alert.explanation.is_empty()),
            "[{be}]"
        );
        let d = three
            .check(&guarded_read(7, 9000, t4 + TimeDelta::minutes(14)))
            .await
            .unwrap();
        assert!(
            !d.lets_through(),
            "[{be}] a restarted instance still counts the hour: {d:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_whose_database_fails_refuses() {
    let b = both_auth().await;
    let t0 = at("2026-01-13T08:00:00Z");
    for (be, store) in b.guards() {
        let g = Guard::open(GuardConfig::default(), store.clone(), 1, t0)
            .await
            .unwrap();
        assert!(
            g.check(&guarded_read(7, 1, t0))
                .await
                .unwrap()
                .lets_through(),
            "[{be}]"
        );
        // The guard's tables disappear under it (a real failure of the
        // backend, not a simulated one).
        let sql = "DROP TABLE guard_counter";
        match be {
            "sqlite" => {
                let c = rusqlite::Connection::open(
                    b._dir.path().join(rempart_storage::sqlite::FILE_NAME),
                )
                .unwrap();
                c.execute_batch(sql).unwrap();
            }
            _ => {
                let schema = &b._guard.schema;
                pg_exec_blocking(
                    &b._guard.url,
                    &format!("SET search_path TO \"{schema}\"; {sql}"),
                )
                .unwrap();
            }
        }
        let e = g.sync(t0 + TimeDelta::seconds(5)).await;
        assert!(matches!(e, Err(GuardError::Store(_))), "[{be}] {e:?}");
        let refused = g
            .check(&guarded_read(7, 2, t0 + TimeDelta::seconds(6)))
            .await;
        assert!(refused.is_err(), "[{be}] fail closed: {refused:?}");
        assert!(
            g.check(&guarded_read(8, 2, t0 + TimeDelta::seconds(6)))
                .await
                .is_err(),
            "[{be}] a new account too"
        );
    }
}
