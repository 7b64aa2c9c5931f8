//! The schema and its migrations: opening again (and concurrently) is
//! harmless, a database newer than the program is refused, older versions
//! are upgraded in place with their data; PostgreSQL's schema names,
//! statistics and connection errors; the generic entry points.

use super::*;
use futures_util::future::join_all;
use rempart_storage::migrate;
use rempart_storage::{AccountLifecycle, NewAccountRequest};

/// Opening a migrated database again, or several times at once, keeps its
/// data and applies nothing twice; a database newer than the program is
/// refused.
mod migrations_are_idempotent_and_guarded {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let b = Db::open(Backend::Sqlite).await;
        let dir = b.place.dir();

        // Open the same directory again, and twice at once.
        b.store()
            .upsert_organisations(organisations())
            .await
            .on(b.store(), "orgs");
        let again = SqliteStore::open(dir).await.expect("[sqlite] second open");
        let (x, y) = tokio::join!(SqliteStore::open(dir), SqliteStore::open(dir));
        x.expect("[sqlite] concurrent open 1");
        y.expect("[sqlite] concurrent open 2");
        let inv = again.inventory().await.expect("[sqlite] inventory");
        assert_eq!(inv.organisations_by_kind.len(), 3, "[sqlite] data kept");
        let db = rusqlite::Connection::open(dir.join(rempart_storage::sqlite::FILE_NAME))
            .expect("raw sqlite");
        let applied: i64 = db
            .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
            .expect("schema_migrations");
        assert_eq!(applied as usize, migrate::SQLITE.len(), "[sqlite]");

        // A database newer than the program is refused.
        db.execute(
            "INSERT INTO schema_migrations VALUES (999, 'future', 'x', 'now')",
            [],
        )
        .expect("fake future migration");
        assert!(
            matches!(
                SqliteStore::open(dir).await,
                Err(StorageError::SchemaTooNew { found: 999, .. })
            ),
            "[sqlite] newer schema must be refused"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let b = Db::open(Backend::Postgres).await;
        let TestSchema { url, schema } = b.place.pg();

        // Connect again to the same schema, and four times at once to a
        // new one.
        b.store()
            .upsert_organisations(organisations())
            .await
            .on(b.store(), "orgs");
        let again = b.place.open().await.registry;
        let inv = again.inventory().await.expect("[postgres] inventory");
        assert_eq!(inv.organisations_by_kind.len(), 3, "[postgres] data kept");
        let fresh = TestSchema::new("t");
        let opens = join_all((0..4).map(|_| PgStore::connect(url, &fresh.schema))).await;
        for (i, o) in opens.into_iter().enumerate() {
            o.unwrap_or_else(|e| panic!("[postgres] concurrent open {i} of a new schema: {e}"));
        }
        let client = rempart_testdb::client(url).await;
        for schema in [schema, &fresh.schema] {
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
                tables, 39,
                "[postgres] registry, authentication, guard (with suspension blocks and \
                 instances), activation, federation, access-version, break-glass reason, login \
                 device, login throttle (and its count), mandate request, import progress, \
                 bulk-dropped, breach register and notice tables + schema_migrations"
            );
        }

        // A database newer than the program is refused.
        client
            .batch_execute(&format!(
                "INSERT INTO \"{schema}\".schema_migrations VALUES (999, 'future', 'x', now())"
            ))
            .await
            .expect("fake future migration");
        let newer = PgStore::connect(url, schema).await;
        assert!(
            matches!(newer, Err(StorageError::SchemaTooNew { found: 999, .. })),
            "[postgres] newer schema must be refused, got {:?}",
            newer.err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_names_are_checked_and_schemas_dropped() {
    let url = rempart_testdb::url();
    for bad in ["Registry", "a;drop table x", "a b", "pg_catalog", ""] {
        assert!(
            matches!(
                PgStore::connect(&url, bad).await,
                Err(StorageError::Open { .. })
            ),
            "schema name {bad:?} must be refused"
        );
    }
    let guard = TestSchema::new("t");
    let schema = &guard.schema;
    let store = PgStore::connect_store(&url, schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database unusable at {url}: {e}"));
    assert_eq!(store.schema(), schema);
    store.drop_schema().await.expect("drop_schema");
    let client = rempart_testdb::client(&url).await;
    let left = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
        .await
        .expect("pg_namespace");
    assert!(left.is_none(), "schema {schema} still exists");
}

/// After an import the planner has statistics for the registry's tables
/// (the consultation's mandate lookup was planned as a hash join over full
/// scans without them), in the store's own schema; SQLite has nothing to
/// refresh and says so by succeeding.
async fn statistics_are_refreshed_in_the_stores_schema(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    store
        .refresh_statistics()
        .await
        .on(store, "refresh_statistics");
    if let Place::Postgres(TestSchema { url, schema }) = &db.place {
        let client = rempart_testdb::client(url).await;
        let analyzed: Vec<String> = client
            .query(
                "SELECT relname::text FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND last_analyze IS NOT NULL ORDER BY relname",
                &[schema],
            )
            .await
            .expect("pg_stat_user_tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(analyzed, ["account", "mandate", "organisation", "person"]);
    }
}
both_backends!(statistics_are_refreshed_in_the_stores_schema);

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

/// SQLite only: the generic entry point opens PostgreSQL in its default
/// schema, never a test's. (That each store names its backend is checked
/// by [`Db::open`], in every test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_open_through_the_generic_entry_point() {
    let b = Db::open(Backend::Sqlite).await;
    assert_eq!(b.store().backend(), "sqlite");
    let dir: &Path = b.place.dir();
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

/// Version 1 data, written with version 1's SQL alone: one organisation,
/// one person, one mandate naming no account.
const V1_DATA: &str = "
    INSERT INTO organisation (id, code, kind, name) VALUES (1, 'CE-038', 'cap_emploi', 'Cap emploi');
    INSERT INTO person (id, kek_version, dek_version, wrapped_dek, identity, contact, nir, status)
        VALUES (1, 1, 1, x'01', x'02', x'03', x'04', x'05');
    INSERT INTO mandate (id, reference, organisation_id, person_id, purpose, valid_from, source)
        VALUES (1, 'M1', 1, 1, 'follow_up', '2026-01-01', 'orientation');";

async fn version_1_registries_are_upgraded_in_place(backend: Backend) {
    let place = Place::new(backend);
    match &place {
        // SQLite: a registry left at version 1, with data.
        Place::Sqlite(dir) => {
            let v1 = migrate::SQLITE[0];
            assert_eq!(v1.version, 1);
            let db =
                rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
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
        // PostgreSQL: the same, in a fresh schema (`x'…'` is a bit string there).
        Place::Postgres(TestSchema { url, schema }) => {
            let pg_v1 = migrate::POSTGRES[0];
            rempart_testdb::exec_blocking(
                url,
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
        }
    }
    let stores = place
        .try_open()
        .await
        .unwrap_or_else(|e| panic!("[{}] upgrade: {e}", backend.name()));
    let store = &*stores.registry;
    let be = store.backend();
    let held = store
        .mandates_of_person(PersonId::new(1))
        .await
        .on(store, "mandates");
    assert_eq!(held.len(), 1, "[{be}]");
    assert_eq!(
        (
            held[0].reference.as_str(),
            held[0].organisation_id,
            held[0].account_id,
            held[0].revoked_at
        ),
        ("M1", OrganisationId::new(1), None, None),
        "[{be}] kept, not revoked"
    );
    assert!(held[0].is_live_on(day(2026, 3, 1)), "[{be}]");
    assert_eq!(
        store
            .caseload(
                OrganisationId::new(1),
                AccountId::new(1),
                None,
                day(2026, 3, 1),
                PersonId::new(i64::MIN),
                10,
            )
            .await
            .on(store, "caseload")
            .iter()
            .map(|e| e.mandate_id)
            .collect::<Vec<_>>(),
        vec![MandateId::new(1)],
        "[{be}]"
    );
    assert!(
        store
            .revoke_mandate(MandateId::new(1), at("2026-03-01T00:00:00Z"))
            .await
            .on(store, "revoke"),
        "[{be}]"
    );
}
both_backends!(version_1_registries_are_upgraded_in_place);

/// An account written at version 2, before accounts had a history.
const V2_ACCOUNTS: &str = "
    INSERT INTO organisation (id, code, kind, name) VALUES (1, 'CE-038', 'cap_emploi', 'Cap emploi');
    INSERT INTO account (id, login, organisation_id, role, state)
        VALUES (1, 'ce.agent1', 1, 'agent', 'active');";

async fn accounts_of_version_2_keep_an_unknown_history(backend: Backend) {
    let place = Place::new(backend);
    match &place {
        Place::Sqlite(dir) => {
            let db =
                rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
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
        Place::Postgres(TestSchema { url, schema }) => {
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
            rempart_testdb::exec_blocking(url, &sql).expect("[postgres] version 2 registry");
        }
    }
    let stores = place
        .try_open()
        .await
        .unwrap_or_else(|e| panic!("[{}] upgrade: {e}", backend.name()));
    let (store, auth) = (&*stores.registry, &*stores.auth);
    let be = store.backend();
    assert_eq!(
        auth.lifecycle(AccountId::new(1))
            .await
            .on(store, "lifecycle"),
        Some(AccountLifecycle {
            account_id: AccountId::new(1),
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
    auth.record_login(AccountId::new(1), at("2026-03-02T09:00:00Z"))
        .await
        .on(store, "login");
    assert_eq!(
        auth.disable_inactive(at("2026-04-01T00:00:00Z"), at("2026-04-01T00:00:00Z"))
            .await
            .on(store, "disable inactive"),
        vec![AccountId::new(1)],
        "[{be}] once it has logged in, it can go stale"
    );
}
both_backends!(accounts_of_version_2_keep_an_unknown_history);

/// SQLite only, like the generic entry point.
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
