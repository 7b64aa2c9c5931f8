//! The PostgreSQL test harness, written once for every test binary.
//!
//! The test database is `REMPART_TEST_DATABASE_URL`, by default the local
//! server's `test` database. Tests never skip when it is missing: every
//! helper here panics with a message that says what to start, because a
//! test that quietly passes without its backend proves nothing.
//!
//! A test gets its own [`TestSchema`] (most tests: the stores take a schema)
//! or its own [`TestDatabase`] (the command-line tests, which take a URL);
//! both are dropped when the value is, including while a failed test
//! unwinds, so a red run leaves nothing behind.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that overrides the test database's address.
pub const URL_VARIABLE: &str = "REMPART_TEST_DATABASE_URL";

/// The test database's address.
pub fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test of any running binary uses: the prefix, the
/// process, a counter and the clock's nanoseconds (lower case, so that it
/// needs no quoting).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Runs `sql` on a connection and a runtime of its own, on a thread of its
/// own, so it works from `Drop` and from synchronous tests, even inside a
/// test's runtime. A refusal comes back with the server's own message
/// ([`rempart_sql::describe`]), not only "db error".
pub fn exec_blocking(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| rempart_sql::describe(&e))?;
            let task = tokio::spawn(connection);
            let result = client
                .batch_execute(&sql)
                .await
                .map_err(|e| rempart_sql::describe(&e));
            drop(client);
            let _ = task.await;
            result
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

/// A raw connection on the caller's runtime, to see what the interfaces
/// do not show or to inject a fault; panics, naming the address, when the
/// test database cannot be reached.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(url, &rempart_sql::describe(&e))));
    tokio::spawn(connection);
    client
}

/// A raw connection whose `search_path` is `schema`.
pub async fn client_in(url: &str, schema: &str) -> tokio_postgres::Client {
    let client = client(url).await;
    if let Err(e) = client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
    {
        panic!(
            "could not enter test schema {schema}: {}",
            rempart_sql::describe(&e)
        );
    }
    client
}

fn unreachable(url: &str, why: &str) -> String {
    format!(
        "PostgreSQL is required at {url} ({why}). Start it or set {URL_VARIABLE}; \
         these tests never skip."
    )
}

/// A fresh schema name in the test database, dropped (with everything in
/// it) when this value is. The schema itself is created by whoever opens a
/// store in it; dropping a schema never created is harmless.
#[derive(Debug)]
pub struct TestSchema {
    /// The test database's address.
    pub url: String,
    /// The schema's name (plain: letters, digits, underscores).
    pub schema: String,
}

impl TestSchema {
    /// A new schema name starting with `prefix`.
    pub fn new(prefix: &str) -> TestSchema {
        TestSchema {
            url: url(),
            schema: unique_name(prefix),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // A store's connections may still be rolling back on the test
        // runtime's workers; the lock timeout keeps a bug from hanging the
        // run instead of failing it.
        let sql = format!(
            "SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        if let Err(e) = exec_blocking(&self.url, &sql) {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// A fresh database on the test server, for code that takes a whole URL
/// (the command line); dropped, with its connections, when this value is.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// Its address: the test database's, with this database's name.
    pub url: String,
}

impl TestDatabase {
    /// Creates a database whose name starts with `prefix`; panics when the
    /// test server cannot be reached.
    pub fn create(prefix: &str) -> TestDatabase {
        let base = url();
        let name = unique_name(prefix);
        if let Err(e) = exec_blocking(&base, &format!("CREATE DATABASE {name}")) {
            panic!("{}", unreachable(&base, &e));
        }
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("{URL_VARIABLE} has no database part: cannot name a test database"),
        };
        TestDatabase { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = exec_blocking(&url(), &sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plain() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn a_schema_is_dropped_with_its_guard() {
        let schema = TestSchema::new("testdb");
        let name = schema.schema.clone();
        let create = format!("CREATE SCHEMA \"{name}\"; CREATE TABLE \"{name}\".t (x int)");
        exec_blocking(&schema.url, &create)
            .unwrap_or_else(|e| panic!("{}", unreachable(&url(), &e)));
        drop(schema);
        // Creating it again succeeds only if the guard dropped it.
        let again = TestSchema {
            url: url(),
            schema: name.clone(),
        };
        exec_blocking(&again.url, &format!("CREATE SCHEMA \"{name}\""))
            .expect("the schema was dropped with its guard");
    }

    #[test]
    fn a_database_is_created_reachable_and_dropped() {
        let db = TestDatabase::create("testdb");
        exec_blocking(&db.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .expect("the new database is reachable at its URL");
        let name = db.name.clone();
        drop(db);
        let left = exec_blocking(&url(), &format!("CREATE DATABASE {name}"));
        assert!(left.is_ok(), "the database was dropped: {left:?}");
        exec_blocking(&url(), &format!("DROP DATABASE {name}")).expect("clean up");
    }

    #[test]
    fn a_refusal_names_the_servers_reason() {
        let e = exec_blocking(&url(), "SELECT * FROM no_such_table_here").unwrap_err();
        assert!(e.contains("no_such_table_here"), "{e}");
    }
}
