//! One suite, two backends: every scenario runs on SQLite (in a temporary
//! directory) and on PostgreSQL (in a fresh schema of the database named by
//! `REMPART_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! dropped afterwards). PostgreSQL being unreachable is a failure, not a skip.
//!
//! Tampering goes around the store's protections on purpose: a direct
//! SQLite connection (dropping the append-only triggers), or a PostgreSQL
//! connection as the connecting user with triggers disabled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rempart_domain::{FieldGroup, Purpose};
use rempart_ledger::bench;
use rempart_ledger::history::{AccessBundle, BundleError, HistoryPage, person_history};
use rempart_ledger::merkle::{
    Frontier, Hash, MemoryTree, NodeId, NodeSource, leaf_hash, verify_consistency,
};
use rempart_ledger::proof::{prove_consistency, prove_inclusion, prove_inclusions, root};
use rempart_ledger::query::{persons_read_by_account, query};
use rempart_ledger::store::postgres::{PgLedgerConfig, PgLedgerStore};
use rempart_ledger::store::sqlite::{FILE_NAME, SqliteLedgerStore};
use rempart_ledger::store::{LeafRow, LedgerStore, QueryRange, StoreError, Subject};
use rempart_ledger::{
    AccountId, Action, AuditLeaf, Checkpoint, Decision, DenyReason, FieldGroups, GuardVerdict,
    LeafRef, Ledger, LedgerConfig, LedgerError, LedgerKey, OrganisationId, PersonId, Problem,
    ProofError, SessionId, Timestamp, VerifierKey, VerifyFailure, VerifyOptions, verify,
    verify_with,
};
use rempart_testdb::TestSchema;
use tempfile::TempDir;

const ORIGIN: &str = "rempart.test/ledger";

// ---------------------------------------------------------------- harness

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Env {
    backend: Backend,
    store: Arc<dyn LedgerStore>,
    dir: Option<TempDir>,
    pg: Option<(PgLedgerConfig, TestSchema)>,
}

impl Env {
    async fn new(backend: Backend) -> Env {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
                Env {
                    backend,
                    store: Arc::new(store),
                    dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let guard = TestSchema::new("lt");
                let url = guard.url.clone();
                let config = PgLedgerConfig::new(&url).with_schema(&guard.schema);
                let store = PgLedgerStore::connect(&config)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required: {e}"));
                Env {
                    backend,
                    store: Arc::new(store),
                    dir: None,
                    pg: Some((config, guard)),
                }
            }
        }
    }

    /// A second, independent store object on the same ledger.
    async fn reopen(&self) -> Arc<dyn LedgerStore> {
        match self.backend {
            Backend::Sqlite => Arc::new(
                SqliteLedgerStore::open(self.dir.as_ref().unwrap().path())
                    .await
                    .unwrap(),
            ),
            Backend::Postgres => Arc::new(
                PgLedgerStore::connect(&self.pg.as_ref().unwrap().0)
                    .await
                    .unwrap(),
            ),
        }
    }

    fn sqlite_raw(&self) -> rusqlite::Connection {
        let c =
            rusqlite::Connection::open(self.dir.as_ref().unwrap().path().join(FILE_NAME)).unwrap();
        c.execute_batch(
            "DROP TRIGGER IF EXISTS leaf_no_update; DROP TRIGGER IF EXISTS leaf_no_delete;
             DROP TRIGGER IF EXISTS checkpoint_no_update; DROP TRIGGER IF EXISTS checkpoint_no_delete;
             DROP TRIGGER IF EXISTS subtree_no_update; DROP TRIGGER IF EXISTS subtree_no_delete;
             DROP TRIGGER IF EXISTS tile_level4_no_update;
             DROP TRIGGER IF EXISTS tile_level4_no_delete;",
        )
        .unwrap();
        c
    }

    async fn pg_raw(&self) -> tokio_postgres::Client {
        let (config, _) = self.pg.as_ref().unwrap();
        let (client, conn) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "SET search_path TO \"{}\"; SET session_replication_role = replica;",
                config.schema
            ))
            .await
            .unwrap();
        client
    }

    /// Rewrites the leaves from bundle `first` on (PostgreSQL keeps them
    /// 16 to a `leaf_bundle` row, each length-prefixed) around every
    /// protection: `edit` gets them in order and changes, removes or adds
    /// some; they are packed again from `first`.
    async fn pg_rewrite_leaves(&self, first: i64, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let c = self.pg_raw().await;
        let mut leaves = Vec::new();
        for r in c
            .query(
                "SELECT data FROM leaf_bundle WHERE first >= $1 ORDER BY first",
                &[&first],
            )
            .await
            .unwrap()
        {
            let mut rest: &[u8] = r.get(0);
            while let [hi, lo, tail @ ..] = rest {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                leaves.push(tail[..len].to_vec());
                rest = &tail[len..];
            }
        }
        edit(&mut leaves);
        c.execute("DELETE FROM leaf_bundle WHERE first >= $1", &[&first])
            .await
            .unwrap();
        for (n, bundle) in leaves.chunks(16).enumerate() {
            let mut data = Vec::new();
            for l in bundle {
                data.extend_from_slice(&(l.len() as u16).to_be_bytes());
                data.extend_from_slice(l);
            }
            c.execute(
                "INSERT INTO leaf_bundle (first, count, data) VALUES ($1, $2, $3)",
                &[&(first + 16 * n as i64), &(bundle.len() as i32), &data],
            )
            .await
            .unwrap();
        }
    }

    /// Removes the leaves from `from` on, around every protection.
    async fn truncate_leaves(&self, from: i64) {
        match self.backend {
            Backend::Sqlite => self
                .sqlite_raw()
                .execute("DELETE FROM leaf WHERE idx >= ?1", [from])
                .map(drop)
                .unwrap(),
            Backend::Postgres => {
                self.pg_rewrite_leaves(from - from % 16, |leaves| {
                    leaves.truncate((from % 16) as usize)
                })
                .await
            }
        }
    }

    /// Runs a statement around every protection.
    async fn tamper(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => self.sqlite_raw().execute_batch(sql).unwrap(),
            Backend::Postgres => self.pg_raw().await.batch_execute(sql).await.unwrap(),
        }
    }

    /// Overwrites a leaf row around every protection. Rows hold only the
    /// bytes; the hashes of level 8 and up (`row.nodes` as read back; a
    /// full list is cut) are its tile's `subtree` row.
    async fn overwrite(&self, row: &LeafRow) {
        let idx = row.index as i64;
        // A full list (every level from 0) is cut to level 8 up.
        let full = 32 * (row.index.trailing_ones() as usize + 1);
        let kept = if row.nodes.len() == full {
            row.nodes.get(256..).unwrap_or_default()
        } else {
            &row.nodes[..]
        };
        match self.backend {
            Backend::Sqlite => {
                let c = self.sqlite_raw();
                c.execute(
                    "UPDATE leaf SET data = ?1 WHERE idx = ?2",
                    rusqlite::params![row.data, idx],
                )
                .unwrap();
                c.execute(
                    "DELETE FROM subtree WHERE tile = ?1 AND ?2 % 256 = 255",
                    [idx >> 8, idx],
                )
                .unwrap();
                if !kept.is_empty() {
                    c.execute(
                        "INSERT INTO subtree (tile, nodes) VALUES (?1, ?2)",
                        rusqlite::params![idx >> 8, kept],
                    )
                    .unwrap();
                }
            }
            Backend::Postgres => {
                self.pg_rewrite_leaves(idx - idx % 16, |leaves| {
                    leaves[(idx % 16) as usize] = row.data.clone()
                })
                .await;
                let c = self.pg_raw().await;
                c.execute(
                    "DELETE FROM subtree WHERE tile = $1 AND $2::bigint % 256 = 255",
                    &[&(idx >> 8), &idx],
                )
                .await
                .unwrap();
                if !kept.is_empty() {
                    c.execute(
                        "INSERT INTO subtree (tile, nodes) VALUES ($1, $2)",
                        &[&(idx >> 8), &kept],
                    )
                    .await
                    .unwrap();
                }
            }
        }
    }

    async fn insert_checkpoint(&self, size: u64, note: &str) {
        let size = size as i64;
        match self.backend {
            Backend::Sqlite => {
                self.sqlite_raw()
                    .execute(
                        "INSERT INTO checkpoint (size, time_us, note) VALUES (?1, 0, ?2)",
                        rusqlite::params![size, note],
                    )
                    .unwrap();
            }
            Backend::Postgres => {
                self.pg_raw()
                    .await
                    .execute(
                        "INSERT INTO checkpoint (size, time_us, note) VALUES ($1, 0, $2)",
                        &[&size, &note],
                    )
                    .await
                    .unwrap();
            }
        }
    }

    async fn rows(&self) -> Vec<LeafRow> {
        self.store.leaves(0, 1_000_000).await.unwrap()
    }

    /// The stored leaves' hashes, and the tree they make (to compare roots,
    /// proofs and subtree hashes with).
    async fn leaf_hashes(&self) -> (Vec<Hash>, MemoryTree) {
        let hashes: Vec<Hash> = self
            .rows()
            .await
            .iter()
            .map(|r| leaf_hash(&r.data))
            .collect();
        let mut tree = MemoryTree::new();
        for h in &hashes {
            tree.push(*h);
        }
        (hashes, tree)
    }
}

fn key() -> LedgerKey {
    LedgerKey::generate(ORIGIN).unwrap()
}

fn copy(key: &LedgerKey) -> LedgerKey {
    LedgerKey::from_text(&key.signer().to_text()).unwrap()
}

fn t(seconds: i64) -> Timestamp {
    Timestamp(1_780_000_000_000_000 + seconds * 1_000_000)
}

fn leaf(i: i64) -> AuditLeaf {
    AuditLeaf {
        time: t(i),
        account: AccountId::new(100 + i % 3),
        organisation: OrganisationId::new(10 + i % 2),
        session: Some(SessionId([i as u8; 16])),
        person: Some(PersonId::new(1000 + i % 5)),
        action: Action::ReadPerson,
        field_groups: FieldGroups::of(&[FieldGroup::Identity]),
        purpose: Some(Purpose::FollowUp),
        decision: Decision::Allow,
        guard: Some(GuardVerdict::Allow),
        note: None,
    }
}

fn no_auto_checkpoints() -> LedgerConfig {
    LedgerConfig {
        checkpoint_every: 0,
        checkpoint_interval: Duration::ZERO,
        ..LedgerConfig::default()
    }
}

/// 20 leaves, checkpoints at sizes 8, 16 and (on close) 20.
async fn standard_ledger(env: &Env, key: &LedgerKey) {
    let config = LedgerConfig {
        checkpoint_every: 8,
        checkpoint_interval: Duration::ZERO,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(env.store.clone(), copy(key), config)
        .await
        .unwrap();
    for i in 0..20 {
        assert_eq!(
            ledger.append(&leaf(i)).await.unwrap(),
            LeafRef::Index(i as u64)
        );
    }
    ledger.close().await.unwrap();
    let sizes: Vec<u64> = env
        .store
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| c.size)
        .collect();
    assert_eq!(sizes, vec![8, 16, 20]);
    verify(&env.store, &key.verifier()).await.unwrap();
}

async fn failure(env: &Env, key: &LedgerKey) -> VerifyFailure {
    match verify(&env.store, &key.verifier()).await {
        Err(LedgerError::Tampered(f)) => *f,
        other => panic!("verification should fail, got {other:?}"),
    }
}

macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await;
            }
        }
    )+};
}

both!(
    append_prove_verify,
    proofs_over_upper_levels,
    level4_hashes_of_tiles,
    many_proofs_at_once,
    concurrent_appends_group_commit,
    one_appender_per_store,
    fail_closed,
    open_refuses_a_store_behind_its_checkpoint,
    queries,
    queries_across_segments,
    append_only_rights,
    tamper_deleted_leaf,
    tamper_changed_byte,
    tamper_swapped_leaves,
    tamper_truncated_tail,
    tamper_tile_hashes,
    tamper_forged_signature,
    a_replaced_key_is_told_apart,
    tamper_inconsistent_checkpoint,
    bench_functions_run,
    person_histories_and_their_bundles,
);

// ---------------------------------------------------------------- scenarios

async fn append_prove_verify(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let config = LedgerConfig {
        checkpoint_every: 8,
        checkpoint_interval: Duration::ZERO,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(env.store.clone(), copy(&key), config.clone())
        .await
        .unwrap();
    let first = ledger
        .append_batch(&(0..10).map(leaf).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(first, Some(LeafRef::Index(0)));
    for i in 10..37 {
        assert_eq!(
            ledger.append(&leaf(i)).await.unwrap(),
            LeafRef::Index(i as u64)
        );
    }
    assert_eq!(ledger.size(), 37);
    let cp = ledger.checkpoint_now().await.unwrap();
    assert_eq!(cp.checkpoint.size, 37);
    assert_eq!(cp.checkpoint.origin, ORIGIN);
    // Nothing new: the same checkpoint.
    assert_eq!(ledger.checkpoint_now().await.unwrap(), cp);
    ledger.close().await.unwrap();

    // The stored tree is the tree of the stored leaves, in index order.
    let rows = env.rows().await;
    assert_eq!(rows.len(), 37);
    let mut tree = MemoryTree::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.index, i as u64);
        assert_eq!(AuditLeaf::decode(&row.data).unwrap(), leaf(i as i64));
        tree.push(leaf_hash(&row.data));
    }
    for size in 0..=37 {
        assert_eq!(
            root(env.store.as_ref(), size).await.unwrap(),
            tree.root(size).unwrap(),
            "root {size}"
        );
    }
    assert_eq!(cp.checkpoint.root, tree.root(37).unwrap());

    // Every inclusion proof verifies, within ⌈log2 n⌉ hashes.
    for size in [1u64, 2, 5, 8, 13, 37] {
        let r = tree.root(size).unwrap();
        let bound = (64 - (size.max(2) - 1).leading_zeros()) as usize;
        for index in 0..size {
            let p = prove_inclusion(env.store.as_ref(), index, size)
                .await
                .unwrap();
            assert!(p.hashes.len() <= bound);
            p.verify(&leaf_hash(&rows[index as usize].data), &r)
                .unwrap();
        }
    }
    // Consistency between every pair of stored checkpoints.
    let cps: Vec<Checkpoint> = env
        .store
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| Checkpoint::open(&c.note, &key.verifier()).unwrap())
        .collect();
    assert_eq!(
        cps.iter().map(|c| c.size).collect::<Vec<_>>(),
        vec![10, 18, 26, 34, 37]
    );
    for a in &cps {
        for b in cps.iter().filter(|b| b.size >= a.size) {
            let p = prove_consistency(env.store.as_ref(), a.size, b.size)
                .await
                .unwrap();
            verify_consistency(a.size, b.size, &p.hashes, &a.root, &b.root).unwrap();
        }
    }
    assert!(matches!(
        prove_inclusion(env.store.as_ref(), 3, 40).await,
        Err(LedgerError::Proof(ProofError::BeyondLog {
            size: 40,
            leaves: 37
        }))
    ));

    let report = verify(&env.store, &key.verifier()).await.unwrap();
    assert_eq!(report.leaves, 37);
    assert_eq!(report.checkpoints, 5);
    assert_eq!(report.latest_checkpoint, Some(37));
    assert_eq!(report.root, tree.root(37).unwrap());
    // Small pages read the same.
    let small = VerifyOptions {
        page_size: 3,
        ..VerifyOptions::default()
    };
    assert_eq!(
        verify_with(&env.store, &key.verifier(), &small)
            .await
            .unwrap(),
        report
    );

    // Reopened, the ledger carries on where it stopped.
    let ledger = Ledger::open(env.reopen().await, copy(&key), config)
        .await
        .unwrap();
    assert_eq!(ledger.append(&leaf(37)).await.unwrap(), LeafRef::Index(37));
    ledger.close().await.unwrap();
    assert_eq!(
        verify(&env.store, &key.verifier()).await.unwrap().leaves,
        38
    );
    // Another key does not verify this ledger's checkpoints: each one is
    // named as signed by a key that is not the trusted one.
    let other = LedgerKey::generate(ORIGIN).unwrap();
    let f = failure(&env, &other).await;
    assert!(
        f.problems
            .iter()
            .all(|p| matches!(p, Problem::CheckpointKeyChanged { .. })),
        "{f}"
    );
}

/// Proofs and roots that need hashes of every kind: recomputed inside a
/// tile, read from `subtree` (levels 8 to 11) and from the covering index
/// of the upper ones (level 12 and up, from 4,096 leaves), at the right
/// edge of complete and incomplete trees.
async fn proofs_over_upper_levels(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    let all: Vec<AuditLeaf> = (0..9_000).map(leaf).collect();
    for batch in all.chunks(1_000) {
        ledger.append_batch(batch).await.unwrap();
    }
    ledger.close().await.unwrap();
    let (hashes, tree) = env.leaf_hashes().await;
    let sizes = [4_095u64, 4_096, 4_097, 8_191, 8_192, 8_193, 9_000];
    for &size in &sizes {
        let r = tree.root(size).unwrap();
        assert_eq!(root(env.store.as_ref(), size).await.unwrap(), r, "{size}");
        for index in [0u64, 255, 256, 4_095, 4_096, 5_000, 8_191, 8_192, 8_999] {
            if index >= size {
                continue;
            }
            let p = prove_inclusion(env.store.as_ref(), index, size)
                .await
                .unwrap();
            p.verify(&hashes[index as usize], &r)
                .unwrap_or_else(|e| panic!("leaf {index} in {size}: {e}"));
        }
        for &old in sizes.iter().filter(|&&old| old <= size) {
            let p = prove_consistency(env.store.as_ref(), old, size)
                .await
                .unwrap();
            verify_consistency(old, size, &p.hashes, &tree.root(old).unwrap(), &r).unwrap();
        }
    }
}

/// The level-4 hashes a complete tile's `tile_level4` row keeps (proofs
/// read them instead of the tile's leaves): written whatever the batches
/// and writer restarts in the middle of a tile, checked by `audit verify`,
/// and not needed (proofs recompute from the leaves without them).
async fn level4_hashes_of_tiles(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let all: Vec<AuditLeaf> = (0..1_000).map(leaf).collect();
    // Three writers, each starting in the middle of a tile and of a group.
    for part in [&all[..300], &all[300..701], &all[701..]] {
        let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
            .await
            .unwrap();
        for batch in part.chunks(37) {
            ledger.append_batch(batch).await.unwrap();
        }
        ledger.checkpoint_now().await.unwrap();
        ledger.close().await.unwrap();
    }
    let (hashes, tree) = env.leaf_hashes().await;
    let expected = |tile: u64| -> Vec<u8> {
        (tile * 16..tile * 16 + 16)
            .flat_map(|g| NodeSource::node(&tree, NodeId::new(4, g)).unwrap())
            .collect()
    };
    let sql = "SELECT tile, hashes FROM tile_level4 ORDER BY tile";
    let stored: Vec<(i64, Vec<u8>)> = match b {
        Backend::Sqlite => {
            // Not `sqlite_raw`: the triggers are tried below.
            let c = rusqlite::Connection::open(env.dir.as_ref().unwrap().path().join(FILE_NAME))
                .unwrap();
            let mut s = c.prepare(sql).unwrap();
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Backend::Postgres => env
            .pg_raw()
            .await
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    };
    assert_eq!(
        stored,
        (0..3).map(|t| (t as i64, expected(t))).collect::<Vec<_>>()
    );
    let size = 1_000;
    let root = tree.root(size).unwrap();
    let proofs_hold = || async {
        for index in (0..size).step_by(7).chain([255, 256, 511, 767, 768, 999]) {
            let p = prove_inclusion(env.store.as_ref(), index, size)
                .await
                .unwrap();
            if p.verify(&hashes[index as usize], &root).is_err() {
                return false;
            }
        }
        for old in [1, 16, 255, 256, 300, 513, 767, 768, 999] {
            let p = prove_consistency(env.store.as_ref(), old, size)
                .await
                .unwrap();
            let old_root = tree.root(old).unwrap();
            if verify_consistency(old, size, &p.hashes, &old_root, &root).is_err() {
                return false;
            }
        }
        true
    };
    assert!(proofs_hold().await);
    verify(&env.store, &key.verifier()).await.unwrap();

    // Append-only, for the store's role and the owner alike.
    match b {
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.dir.as_ref().unwrap().path().join(FILE_NAME))
                .unwrap();
            for sql in [
                "UPDATE tile_level4 SET hashes = zeroblob(512) WHERE tile = 1",
                "DELETE FROM tile_level4 WHERE tile = 1",
            ] {
                let err = c.execute_batch(sql).expect_err(sql).to_string();
                assert!(err.contains("append-only"), "{sql}: {err}");
            }
        }
        Backend::Postgres => {
            let (config, _) = env.pg.as_ref().unwrap();
            let store = PgLedgerStore::connect(config).await.unwrap();
            let role = store.pooled_client().await.unwrap();
            let (owner, conn) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for sql in [
                "UPDATE tile_level4 SET hashes = hashes WHERE tile = 1",
                "DELETE FROM tile_level4 WHERE tile = 1",
                "TRUNCATE tile_level4",
            ] {
                let err = role.batch_execute(sql).await.expect_err(sql);
                let err = err.as_db_error().map(|e| e.message().to_string());
                assert!(
                    err.as_deref()
                        .unwrap_or_default()
                        .contains("permission denied"),
                    "{sql}: {err:?}"
                );
                let sql = sql.replace("tile_level4", &format!("\"{}\".tile_level4", config.schema));
                let err = owner.batch_execute(&sql).await.expect_err(&sql);
                let err = err.as_db_error().map(|e| e.message().to_string());
                assert!(
                    err.as_deref().unwrap_or_default().contains("append-only"),
                    "{sql}: {err:?}"
                );
            }
        }
    }

    // One hash of tile 1 altered (group 5, leaves 336 to 351): proofs that
    // use it no longer verify, and `audit verify` names the group.
    let mut altered = expected(1);
    altered[5 * 32] ^= 1;
    match b {
        Backend::Sqlite => {
            env.sqlite_raw()
                .execute(
                    "UPDATE tile_level4 SET hashes = ?1 WHERE tile = 1",
                    [&altered],
                )
                .unwrap();
        }
        Backend::Postgres => {
            env.pg_raw()
                .await
                .execute(
                    "UPDATE tile_level4 SET hashes = $1 WHERE tile = 1",
                    &[&altered],
                )
                .await
                .unwrap();
        }
    }
    assert!(!proofs_hold().await);
    let f = failure(&env, &key).await;
    assert!(
        f.problems.iter().any(|p| matches!(
            p,
            Problem::NodeMismatch {
                level: 4,
                first_leaf: 336,
                index: 351
            }
        )),
        "{f}"
    );

    // A ledger written before these rows existed: proofs recompute the
    // hashes from the leaves, and verify.
    env.tamper("DELETE FROM tile_level4").await;
    assert!(proofs_hold().await);
    verify(&env.store, &key.verifier()).await.unwrap();
}

/// Far more proofs at once than the store has connections (on PostgreSQL a
/// proof holds one of each of its two pools): none waits forever for a
/// connection another one holds, and every proof verifies.
async fn many_proofs_at_once(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    let all: Vec<AuditLeaf> = (0..1_000).map(leaf).collect();
    ledger.append_batch(&all).await.unwrap();
    ledger.close().await.unwrap();
    let (hashes, tree) = env.leaf_hashes().await;
    let size = 1_000u64;
    let root = tree.root(size).unwrap();
    let proofs = join_all((0..200u64).map(|i| {
        let store = env.store.clone();
        tokio::spawn(async move { prove_inclusion(store.as_ref(), i * 5, size).await })
    }));
    let proofs = tokio::time::timeout(Duration::from_secs(60), proofs)
        .await
        .expect("proofs waited on each other's connections");
    for (i, p) in (0u64..).zip(proofs) {
        let p = p.unwrap().unwrap();
        p.verify(&hashes[(i * 5) as usize], &root).unwrap();
    }
}

async fn concurrent_appends_group_commit(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Arc::new(
        Ledger::open(env.store.clone(), copy(&key), LedgerConfig::default())
            .await
            .unwrap(),
    );
    let n = 400;
    let results = join_all((0..n).map(|i| {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.append(&leaf(i)).await })
    }))
    .await;
    let mut indices: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().unwrap().index().unwrap())
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..n as u64).collect::<Vec<_>>());
    // Durable before return: the store already has them all.
    assert_eq!(env.store.size().await.unwrap(), n as u64);
    let batches = ledger.batches();
    assert!(
        batches < n as u64,
        "group commit should merge appends: {batches} transactions for {n} appends"
    );
    Arc::try_unwrap(ledger).unwrap().close().await.unwrap();
    verify(&env.store, &key.verifier()).await.unwrap();
}

/// One writer per store: on SQLite a second appender is refused; on
/// PostgreSQL it stages, and only the first gives indices.
async fn one_appender_per_store(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    assert!(ledger.is_integrating());
    for store in [env.store.clone(), env.reopen().await] {
        match (
            b,
            Ledger::open(store, copy(&key), no_auto_checkpoints()).await,
        ) {
            (Backend::Sqlite, Err(LedgerError::Store(StoreError::WriterBusy(_)))) => {}
            (Backend::Postgres, Ok(second)) => {
                assert!(!second.is_integrating());
                assert!(matches!(
                    second.checkpoint_now().await,
                    Err(LedgerError::NotIntegrating)
                ));
                second.close().await.unwrap();
            }
            (_, other) => panic!("{b:?}: unexpected second appender {other:?}"),
        }
    }
    ledger.append(&leaf(0)).await.unwrap();
    ledger.close().await.unwrap();
    let again = Ledger::open(env.reopen().await, copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    assert_eq!(again.append(&leaf(1)).await.unwrap(), LeafRef::Index(1));
    again.close().await.unwrap();
}

async fn fail_closed(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    ledger.append(&leaf(0)).await.unwrap();

    // An invalid leaf is refused before anything is written.
    let mut bad = leaf(1);
    bad.note = Some("x".repeat(1001));
    assert!(matches!(
        ledger.append(&bad).await,
        Err(LedgerError::Leaf(_))
    ));
    assert!(matches!(
        ledger.append_batch(&[leaf(1), bad]).await,
        Err(LedgerError::Leaf(_))
    ));
    assert_eq!(env.store.size().await.unwrap(), 1);

    // Someone writes behind the appender's back: its next batch cannot
    // commit, and every caller of it gets an error.
    let foreign = LeafRow {
        index: 1,
        time: 0,
        account: 0,
        organisation: 0,
        person: None,
        reveals: false,
        data: vec![1],
        nodes: vec![0; 3],
        level4: Vec::new(),
        receipt: None,
    };
    match b {
        Backend::Sqlite => {
            env.sqlite_raw()
                .execute(
                    "INSERT INTO leaf VALUES (1, ?1, ?2)",
                    rusqlite::params![foreign.data, foreign.nodes],
                )
                .unwrap();
        }
        Backend::Postgres => {
            env.pg_rewrite_leaves(0, |leaves| leaves.push(foreign.data.clone()))
                .await;
        }
    }
    let ledger = Arc::new(ledger);
    let results = join_all((2..6).map(|i| {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.append(&leaf(i)).await })
    }))
    .await;
    for r in results {
        assert!(
            matches!(r.unwrap(), Err(LedgerError::AppendFailed(_))),
            "every caller of a failed batch gets an error"
        );
    }
    // The damaged store stays closed to appends.
    assert!(matches!(
        ledger.append(&leaf(9)).await,
        Err(LedgerError::AppendFailed(_))
    ));
    assert_eq!(env.store.size().await.unwrap(), 2);
    drop(ledger);
}

async fn open_refuses_a_store_behind_its_checkpoint(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    env.truncate_leaves(18).await;
    match Ledger::open(env.reopen().await, copy(&key), no_auto_checkpoints()).await {
        Err(LedgerError::Inconsistent { reason, .. }) => {
            assert!(reason.contains("20"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A key of another log is refused too.
    let env = Env::new(b).await;
    standard_ledger(&env, &key).await;
    let stranger = LedgerKey::generate("rempart.test/other").unwrap();
    assert!(matches!(
        Ledger::open(env.reopen().await, stranger, no_auto_checkpoints()).await,
        Err(LedgerError::Inconsistent { .. })
    ));
}

async fn queries(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    let mut leaves: Vec<AuditLeaf> = (0..30).map(leaf).collect();
    // Account 100 was refused person 2000 and searched without a person.
    leaves[3].decision = Decision::Deny(DenyReason::NoMandate);
    leaves[3].person = Some(PersonId::new(2000));
    leaves[6].person = None;
    leaves[6].action = Action::Search;
    // Same time, two leaves: ordered by index.
    leaves[9].time = leaves[12].time;
    ledger.append_batch(&leaves).await.unwrap();
    ledger.close().await.unwrap();

    let store = env.store.as_ref();
    let mut all = Vec::new();
    let mut range = QueryRange {
        subject: Subject::Account(AccountId::new(100)),
        from: t(0),
        to: t(100),
        after: None,
        limit: 3,
    };
    loop {
        let page = query(store, &range).await.unwrap();
        assert!(page.entries.len() <= 3);
        all.extend(page.entries);
        match page.next {
            Some(next) => range.after = Some(next),
            None => break,
        }
    }
    let got: Vec<u64> = all.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
    for e in &all {
        assert_eq!(e.leaf, leaves[e.index as usize]);
    }

    // Window [t1, t2): t(12) is in, t(15) is out; leaf 9 has t(12) too.
    let page = query(
        store,
        &QueryRange {
            subject: Subject::Account(AccountId::new(100)),
            from: t(3),
            to: t(15),
            after: None,
            limit: 100,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![3, 6, 9, 12]
    );
    assert_eq!(page.next, None);

    let page = query(
        store,
        &QueryRange {
            subject: Subject::Organisation(OrganisationId::new(11)),
            from: t(0),
            to: t(10),
            after: None,
            limit: 100,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 3, 5, 7]
    );
    let page = query(
        store,
        &QueryRange {
            subject: Subject::Person(PersonId::new(1002)),
            from: t(0),
            to: t(100),
            after: None,
            limit: 100,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![2, 7, 12, 17, 22, 27]
    );

    // Breach scoping: persons whose data account 100 was shown.
    let persons = persons_read_by_account(store, AccountId::new(100), t(0), t(100))
        .await
        .unwrap();
    // Leaves 0, 9, 12, 15, 18, 21, 24, 27 (3 was denied, 6 had no person).
    let mut want: Vec<PersonId> = [0, 9, 12, 15, 18, 21, 24, 27]
        .iter()
        .map(|i| PersonId::new(1000 + i % 5))
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(persons, want);
    let persons = persons_read_by_account(store, AccountId::new(100), t(1), t(12))
        .await
        .unwrap();
    // Only leaf 9 (at t(12)) — excluded, the window ends at t(12).
    assert_eq!(persons, vec![]);
    let persons = persons_read_by_account(store, AccountId::new(100), t(1), t(13))
        .await
        .unwrap();
    assert_eq!(persons, vec![PersonId::new(1002), PersonId::new(1004)]);
}

/// Two complete segments (on SQLite, read from their runs) and a
/// tail (scanned): every query answers what a scan of the leaves answers,
/// and pages cross the boundaries.
async fn queries_across_segments(b: Backend) {
    // Enough after the second segment for its slices to be all in.
    const LEAVES: i64 = 2 * 16_384 + 12_000;
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    let leaves: Vec<AuditLeaf> = (0..LEAVES)
        .map(|i| {
            let mut l = leaf(i / 7);
            l.account = AccountId::new(100 + (i * 7919) % 13);
            l.organisation = OrganisationId::new(10 + i % 4);
            l.person = (i % 11 != 0).then_some(PersonId::new(1000 + (i * 104_729) % 997));
            if i % 17 == 0 {
                l.decision = Decision::Deny(DenyReason::NoMandate);
            }
            l
        })
        .collect();
    // In batches that do not align with segments.
    for chunk in leaves.chunks(3_001) {
        ledger.append_batch(chunk).await.unwrap();
    }
    ledger.close().await.unwrap();
    let store = env.store.as_ref();
    let (from, to) = (t(100), t(4_000));
    let subjects = [
        Subject::Account(AccountId::new(105)),
        Subject::Organisation(OrganisationId::new(12)),
        Subject::Person(PersonId::new(1500)),
    ];
    for subject in subjects {
        let wanted: Vec<u64> = (0..LEAVES as usize)
            .filter(|&i| {
                let l = &leaves[i];
                l.time >= from
                    && l.time < to
                    && match subject {
                        Subject::Account(a) => l.account == a,
                        Subject::Organisation(o) => l.organisation == o,
                        Subject::Person(p) => l.person == Some(p),
                    }
            })
            .map(|i| i as u64)
            .collect();
        assert!(wanted.len() > 20, "{subject:?}: {}", wanted.len());
        let mut range = QueryRange {
            subject,
            from,
            to,
            after: None,
            limit: 97,
        };
        let mut got = Vec::new();
        loop {
            let page = query(store, &range).await.unwrap();
            got.extend(page.entries.iter().map(|e| e.index));
            match page.next {
                Some(next) => range.after = Some(next),
                None => break,
            }
        }
        // Leaves at the same time come by index, so time order is index order.
        assert_eq!(got, wanted, "{subject:?}");
    }
    let mut revealed: Vec<PersonId> = leaves
        .iter()
        .filter(|l| {
            l.account == AccountId::new(105)
                && l.time >= from
                && l.time < to
                && l.reveals_person_data()
        })
        .filter_map(|l| l.person)
        .collect();
    revealed.sort();
    revealed.dedup();
    assert!(revealed.len() > 50);
    assert_eq!(
        persons_read_by_account(store, AccountId::new(105), from, to)
            .await
            .unwrap(),
        revealed
    );
    verify(&env.store, &key.verifier()).await.unwrap();

    {
        // A leaf hidden from "who looked at my file" by removing its
        // postings from a run is caught, and so is an invented one, and a
        // read passed off as showing nothing (a `reveals` flag cleared in
        // the breach-scoping table, the only copy queries read).
        // PostgreSQL's indexer works behind the appends: let it finish.
        env.store.settle_index().await.unwrap();
        let hide =
            "DELETE FROM posting_person WHERE run = (SELECT id FROM run WHERE first_leaf = 16384)
                 AND key = (SELECT min(key) FROM posting_person WHERE run = (
                     SELECT id FROM run WHERE first_leaf = 16384));";
        let clear_flag = match b {
            Backend::Sqlite => {
                "INSERT INTO posting_organisation VALUES (
                     (SELECT id FROM run WHERE first_leaf = 0), 99, 0, 5, x'00');
                 UPDATE posting_account SET postings = CAST(replace(postings, x'03', x'02') AS BLOB)
                     WHERE run = (SELECT id FROM run WHERE first_leaf = 0) AND key = 105;"
            }
            Backend::Postgres => {
                "INSERT INTO posting_organisation VALUES (
                     (SELECT id FROM run WHERE first_leaf = 0), 99, 0, 5, '\\x00');
                 UPDATE posting_account
                     SET postings = set_byte(postings, position('\\x03'::bytea IN postings) - 1, 2)
                     WHERE run = (SELECT id FROM run WHERE first_leaf = 0) AND key = 105;"
            }
        };
        env.tamper(&format!("{hide}{clear_flag}")).await;
        let f = failure(&env, &key).await;
        assert_eq!(
            f.problems,
            vec![
                Problem::IndexMismatch {
                    segment: 0,
                    table: "posting_account"
                },
                Problem::IndexMismatch {
                    segment: 0,
                    table: "posting_organisation"
                },
                Problem::IndexMismatch {
                    segment: 4,
                    table: "posting_person"
                },
            ],
            "{f}"
        );
    }
}

async fn append_only_rights(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    match b {
        Backend::Postgres => {
            let pg = env.store.clone();
            // The store's own connections work as the INSERT-only role.
            let store = PgLedgerStore::connect(&env.pg.as_ref().unwrap().0)
                .await
                .unwrap();
            let client = store.pooled_client().await.unwrap();
            let who: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, "rempart_ledger_writer");
            for sql in [
                "DELETE FROM leaf_bundle WHERE first = 0",
                "TRUNCATE leaf_bundle",
                "UPDATE leaf_bundle SET first = 16 WHERE first = 0",
                "UPDATE subtree SET nodes = '\\x00'",
                "DELETE FROM subtree",
                "TRUNCATE subtree",
                "UPDATE checkpoint SET note = '' WHERE size = 8",
                "DELETE FROM checkpoint",
                "DROP TABLE leaf_bundle",
                "ALTER TABLE leaf_bundle DISABLE TRIGGER ALL",
            ] {
                let err = client
                    .batch_execute(sql)
                    .await
                    .expect_err(sql)
                    .as_db_error()
                    .map(|e| e.message().to_string())
                    .unwrap_or_default();
                assert!(
                    err.contains("permission denied") || err.contains("must be owner"),
                    "{sql}: {err}"
                );
            }
            // The role may grow the last bundle (that is appending), and
            // nothing else: bytes already there never change, a full
            // bundle takes no more.
            for sql in [
                "UPDATE leaf_bundle SET data = '\\x00' WHERE first = 0",
                "UPDATE leaf_bundle SET count = 16 WHERE first = 16",
                "UPDATE leaf_bundle SET count = 16, data = '\\x0000' || data WHERE first = 16",
                "UPDATE leaf_bundle SET count = count + 1, data = data || '\\x0000' WHERE first = 0",
            ] {
                let err = client
                    .batch_execute(sql)
                    .await
                    .expect_err(sql)
                    .as_db_error()
                    .map(|e| e.message().to_string())
                    .unwrap_or_default();
                assert!(err.contains("append-only"), "{sql}: {err}");
            }
            verify(&pg, &key.verifier()).await.unwrap();
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.dir.as_ref().unwrap().path().join(FILE_NAME))
                .unwrap();
            for sql in [
                "UPDATE leaf SET data = x'00' WHERE idx = 1",
                "DELETE FROM leaf WHERE idx = 1",
                "DELETE FROM checkpoint",
            ] {
                let err = c.execute_batch(sql).expect_err(sql).to_string();
                assert!(err.contains("append-only"), "{sql}: {err}");
            }
        }
    }
    // The owner (the connecting user) is stopped by triggers as well.
    if b == Backend::Postgres {
        let (config, _) = env.pg.as_ref().unwrap();
        let (client, conn) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let err = client
            .batch_execute(&format!(
                "UPDATE \"{}\".leaf_bundle SET data = '\\x00' WHERE first = 0",
                config.schema
            ))
            .await
            .unwrap_err();
        let message = err.as_db_error().map(|e| e.message().to_string());
        assert!(
            message
                .as_deref()
                .unwrap_or_default()
                .contains("append-only"),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------- several appenders

/// Quick takeovers and integrations, for tests.
fn replicas_config() -> LedgerConfig {
    LedgerConfig {
        takeover_every: Duration::from_millis(100),
        integrate_every: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(200),
        ..LedgerConfig::default()
    }
}

/// Waits until every leaf has an index; returns them, in the leaves' order.
async fn indices_of(ledger: &Ledger, refs: &[LeafRef]) -> Vec<u64> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        match ledger.index_of(*r, Duration::from_secs(10)).await.unwrap() {
            Some(i) => out.push(i),
            None => panic!("{r:?} not integrated within 10 s"),
        }
    }
    out
}

/// Three processes (three stores, three pools) append at once: the one
/// holding the writer answers with indices, the others with receipts; every
/// leaf ends in the log once, as appended, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_appenders_one_integrator() {
    let env = Env::new(Backend::Postgres).await;
    let key = key();
    let mut ledgers = Vec::new();
    for _ in 0..3 {
        let store = env.reopen().await;
        ledgers.push(Arc::new(
            Ledger::open(store, copy(&key), replicas_config())
                .await
                .unwrap(),
        ));
    }
    assert_eq!(
        ledgers.iter().filter(|l| l.is_integrating()).count(),
        1,
        "exactly one integrates"
    );
    let per = 150i64;
    let tasks = (0..3 * per).map(|i| {
        let ledger = ledgers[(i % 3) as usize].clone();
        tokio::spawn(async move { (i, ledger.append(&leaf(i)).await.unwrap()) })
    });
    let appended: Vec<(i64, LeafRef)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for (i, r) in &appended {
        let integrating = ledgers[(*i % 3) as usize].is_integrating();
        assert_eq!(
            matches!(r, LeafRef::Index(_)),
            integrating,
            "leaf {i}: {r:?}"
        );
    }
    let refs: Vec<LeafRef> = appended.iter().map(|(_, r)| *r).collect();
    let indices = indices_of(&ledgers[0], &refs).await;
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..3 * per as u64).collect::<Vec<_>>());
    let rows = env.rows().await;
    for ((i, _), index) in appended.iter().zip(&indices) {
        let stored = AuditLeaf::decode(&rows[*index as usize].data).unwrap();
        assert_eq!(stored, leaf(*i), "leaf {i} at {index}");
    }
    assert_eq!(env.store.staged_backlog().await.unwrap(), 0);
    for l in ledgers {
        Arc::try_unwrap(l).unwrap().close().await.unwrap();
    }
    let report = verify(&env.store, &key.verifier()).await.unwrap();
    assert_eq!(report.leaves, 3 * per as u64);
}

/// The integrating process dies (its runtime is dropped, connections and
/// all, as with `kill -9`): another takes over within a bound, integrates
/// what was staged and signs; a process started afterwards stages. Nothing
/// that was answered is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrator_dies_another_takes_over() {
    let env = Env::new(Backend::Postgres).await;
    let key = key();
    // The first "process": a runtime of its own, dropped below.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = env.reopen().await;
    let k = copy(&key);
    let first = doomed
        .spawn(async move { Ledger::open(store, k, replicas_config()).await })
        .await
        .unwrap()
        .unwrap();
    let second = Ledger::open(env.reopen().await, copy(&key), replicas_config())
        .await
        .unwrap();
    assert!(first.is_integrating() && !second.is_integrating());
    let mut refs = Vec::new();
    for i in 0..20 {
        refs.push(first.append(&leaf(i)).await.unwrap());
        refs.push(second.append(&leaf(100 + i)).await.unwrap());
    }
    doomed.shutdown_background();
    assert!(matches!(
        first.append(&leaf(0)).await,
        Err(LedgerError::Closed)
    ));
    let started = std::time::Instant::now();
    // Appends go on through the second while it takes over.
    while !second.is_integrating() {
        refs.push(second.append(&leaf(500)).await.unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no takeover in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("takeover after {} ms", started.elapsed().as_millis());
    let third = Ledger::open(env.reopen().await, copy(&key), replicas_config())
        .await
        .unwrap();
    assert!(!third.is_integrating());
    refs.push(third.append(&leaf(300)).await.unwrap());
    assert!(matches!(refs.last(), Some(LeafRef::Receipt(_))));
    let indices = indices_of(&second, &refs).await;
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), refs.len(), "every answered leaf once");
    // The new integrator signs a checkpoint covering them.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let latest = env.store.latest_checkpoint().await.unwrap();
        if latest.is_some_and(|c| c.size > *sorted.last().unwrap()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after takeover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    third.close().await.unwrap();
    second.close().await.unwrap();
    verify(&env.store, &key.verifier()).await.unwrap();
}

/// The integrator's session is ended by the server (a network cut, an
/// administrator): its next write fails (nothing released), and one of the
/// processes integrates again; nothing answered is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrators_connection_is_cut() {
    let env = Env::new(Backend::Postgres).await;
    let key = key();
    let first = Ledger::open(env.reopen().await, copy(&key), replicas_config())
        .await
        .unwrap();
    let second = Ledger::open(env.reopen().await, copy(&key), replicas_config())
        .await
        .unwrap();
    let mut refs = Vec::new();
    for i in 0..10 {
        refs.push(first.append(&leaf(i)).await.unwrap());
        refs.push(second.append(&leaf(100 + i)).await.unwrap());
    }
    let schema = &env.pg.as_ref().unwrap().0.schema;
    let lock = rempart_sql::lock_key(&format!("rempart ledger writer {schema}")) as u64;
    let killed: i64 = env
        .pg_raw()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
            &[&((lock >> 32) as i64), &((lock & 0xffff_ffff) as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the writer's session was found");
    let mut failed = 0;
    for i in 0..40 {
        for l in [&first, &second] {
            match l.append(&leaf(200 + i)).await {
                Ok(r) => refs.push(r),
                Err(LedgerError::AppendFailed(_)) => failed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failed <= 2, "{failed} appends failed");
    assert_eq!(
        u8::from(first.is_integrating()) + u8::from(second.is_integrating()),
        1
    );
    let indices = indices_of(&first, &refs).await;
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), refs.len(), "every answered leaf once");
    first.close().await.unwrap();
    second.close().await.unwrap();
    verify(&env.store, &key.verifier()).await.unwrap();
}

/// A staged leaf leaves staging only into the log: the store's role cannot
/// delete or change one that is not integrated, even though it may delete
/// integrated ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_leaves_leave_only_into_the_log() {
    let env = Env::new(Backend::Postgres).await;
    let key = key();
    // One leaf in the log, of the integrator's own.
    let first = Ledger::open(env.reopen().await, copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    assert_eq!(first.append(&leaf(0)).await.unwrap(), LeafRef::Index(0));
    first.close().await.unwrap();
    // Hold the writer without integrating.
    let store = env.reopen().await;
    let mut writer = store.writer().await.unwrap();
    let stager = Ledger::open(env.reopen().await, copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    let r = stager.append(&leaf(1)).await.unwrap();
    let LeafRef::Receipt(receipt) = r else {
        panic!("{r:?}")
    };
    assert!(receipt >= 65_536);
    assert_eq!(env.store.staged_backlog().await.unwrap(), 1);
    let pg = PgLedgerStore::connect(&env.pg.as_ref().unwrap().0)
        .await
        .unwrap();
    let client = pg.pooled_client().await.unwrap();
    for sql in [
        "DELETE FROM staged".to_string(),
        format!("UPDATE staged SET data = '\\x00' WHERE id = {receipt}"),
        "TRUNCATE staged".to_string(),
    ] {
        let err = client.batch_execute(&sql).await.expect_err(&sql);
        let message = err.as_db_error().map(|e| e.message().to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("not in the log")
                    || m.contains("append-only")
                    || m.contains("permission denied")),
            "{sql}: {err:?}"
        );
    }
    // Nor retire it by recording it against a leaf that does not hold it.
    let sql = format!("INSERT INTO integrated (receipt, idx) VALUES ({receipt}, 0)");
    let err = client.batch_execute(&sql).await.expect_err(&sql);
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("does not hold")),
        "{sql}: {err:?}"
    );
    assert_eq!(env.store.staged_backlog().await.unwrap(), 1);
    let staged = writer.staged(10).await.unwrap();
    assert_eq!(staged.len(), 1);
    assert_eq!(staged[0].receipt, receipt);
    writer.close().await;
    drop(writer);
    stager.close().await.unwrap();
}

// ---------------------------------------------------------------- tampering

async fn tamper_deleted_leaf(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    if b == Backend::Postgres {
        // Leaves are 16 to a row: one taken out and the rows packed again
        // shifts every later leaf down one index; the checkpoints catch
        // both the changed leaves and the shortened log.
        env.pg_rewrite_leaves(0, |leaves| drop(leaves.remove(5)))
            .await;
        let f = failure(&env, &key).await;
        assert_eq!(f.first_bad_checkpoint, Some(8), "{f}");
        assert!(
            f.problems.iter().any(|p| matches!(
                p,
                Problem::CheckpointRootMismatch { checkpoint, last_good: 0 } if checkpoint.size == 8
            )),
            "{f}"
        );
        assert!(
            f.problems
                .iter()
                .any(|p| matches!(p, Problem::Truncated { leaves: 19, .. })),
            "{f}"
        );
        return;
    }
    env.tamper("DELETE FROM leaf WHERE idx = 5").await;
    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_leaf, Some(5), "{f}");
    assert_eq!(f.first_bad_checkpoint, Some(8), "{f}");
    assert!(
        f.problems
            .contains(&Problem::MissingLeaves { from: 5, to: 6 }),
        "{f}"
    );
    let text = f.to_string();
    assert!(text.contains("leaf 5 is missing"), "{text}");
}

async fn tamper_changed_byte(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    let mut row = env.rows().await.remove(11);
    // A byte of the session id: the leaf still decodes, its columns agree.
    row.data[30] ^= 0x01;
    env.overwrite(&row).await;
    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_checkpoint, Some(16), "{f}");
    assert!(
        f.problems.iter().any(|p| matches!(
            p,
            Problem::CheckpointRootMismatch { checkpoint, last_good: 8 } if checkpoint.size == 16
        )),
        "{f}"
    );
    // Inside a tile no hash is stored (on either backend): the checkpoints
    // bound it.
    assert_eq!(f.first_bad_leaf, Some(8), "{f}");
    assert!(f.to_string().contains("leaves 8 to 15"), "{f}");
}

async fn tamper_swapped_leaves(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    let rows = env.rows().await;
    // Whole rows swapped, hashes included: each leaf still matches its own
    // hash, the subtrees above them do not.
    let (mut a, mut c) = (rows[2].clone(), rows[4].clone());
    std::mem::swap(&mut a.index, &mut c.index);
    env.overwrite(&a).await;
    env.overwrite(&c).await;
    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_checkpoint, Some(8), "{f}");
    assert_eq!(f.first_bad_leaf, Some(0), "{f}");
    assert!(f.to_string().contains("leaves 0 to 7"), "{f}");

    // Contents only swapped (stored hashes left in place): exact leaf.
    let env = Env::new(b).await;
    standard_ledger(&env, &key).await;
    let rows = env.rows().await;
    let mut a = rows[12].clone();
    let mut c = rows[14].clone();
    std::mem::swap(&mut a.data, &mut c.data);
    std::mem::swap(&mut a.time, &mut c.time);
    std::mem::swap(&mut a.account, &mut c.account);
    std::mem::swap(&mut a.organisation, &mut c.organisation);
    std::mem::swap(&mut a.person, &mut c.person);
    env.overwrite(&a).await;
    env.overwrite(&c).await;
    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_leaf, Some(8), "{f}");
    assert_eq!(f.first_bad_checkpoint, Some(16), "{f}");
}

/// The hashes of level 8 and up (a `subtree` row per tile) are
/// checked against the recomputed tree: one changed byte is found.
async fn tamper_tile_hashes(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let config = LedgerConfig {
        checkpoint_every: 64,
        checkpoint_interval: Duration::ZERO,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(env.store.clone(), copy(&key), config)
        .await
        .unwrap();
    for i in 0..600 {
        ledger.append(&leaf(i)).await.unwrap();
    }
    ledger.close().await.unwrap();
    verify(&env.store, &key.verifier()).await.unwrap();
    let mut row = env.rows().await[511].clone();
    // The last hash stored with leaf 511: its tile pair's, level 9.
    let last = row.nodes.len() - 1;
    row.nodes[last] ^= 1;
    env.overwrite(&row).await;
    // The leaves are intact (every checkpoint still matches); the stored
    // hash is named.
    let f = failure(&env, &key).await;
    assert!(
        f.problems
            .iter()
            .any(|p| matches!(p, Problem::NodeMismatch { level: 9, .. })),
        "{f}"
    );
}

async fn tamper_truncated_tail(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    env.truncate_leaves(17).await;
    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_leaf, Some(17), "{f}");
    assert_eq!(f.first_bad_checkpoint, Some(20), "{f}");
    assert!(
        matches!(
            f.problems[..],
            [Problem::Truncated { leaves: 17, checkpoint }] if checkpoint.size == 20
        ),
        "{f}"
    );
    assert!(f.to_string().contains("truncated"), "{f}");
}

async fn tamper_forged_signature(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    // A forger without the key signs a checkpoint of a larger log under the
    // log's name (and a signature byte of a real one is altered).
    let forger = LedgerKey::generate(ORIGIN).unwrap();
    let forged = Checkpoint::new(ORIGIN, 24, [7; 32])
        .sign(forger.signer())
        .unwrap();
    env.insert_checkpoint(24, &forged).await;
    let stored = env.store.checkpoints().await.unwrap();
    let real = &stored.iter().find(|c| c.size == 16).unwrap().note;
    let at = real.rfind(' ').unwrap() + 10;
    let mut bytes = real.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(bytes).unwrap();
    env.tamper("DELETE FROM checkpoint WHERE size = 16").await;
    env.insert_checkpoint(16, &altered).await;

    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_leaf, None, "{f}");
    assert_eq!(f.first_bad_checkpoint, Some(16), "{f}");
    // The altered signature is a bad signature by the log's key; the
    // forger's checkpoint is signed by another key: the key changed.
    let bad: Vec<u64> = f
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::CheckpointSignature { checkpoint, .. } => Some(checkpoint.size),
            _ => None,
        })
        .collect();
    assert_eq!(bad, vec![16], "{f}");
    assert!(f.to_string().contains("invalid signature"), "{f}");
    let changed: Vec<(u64, &str, &[String])> = f
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::CheckpointKeyChanged {
                checkpoint,
                trusted,
                found,
            } => Some((checkpoint.size, trusted.as_str(), found.as_slice())),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        vec![(
            24,
            key.verifier().name_and_id().as_str(),
            &[forger.verifier().name_and_id()][..]
        )],
        "{f}"
    );
    assert!(f.to_string().contains("the signing key changed"), "{f}");
}

/// Verification needs only the public verifier key. When the log's key is
/// replaced and the stored checkpoints re-signed with the new one, a
/// checkpoint kept outside under the old key says that the signing key
/// changed, naming both keys — not a bad signature, not a rewrite.
async fn a_replaced_key_is_told_apart(b: Backend) {
    let env = Env::new(b).await;
    let old = key();
    standard_ledger(&env, &old).await;
    // The published key's text only: no private key is involved.
    let published = VerifierKey::parse(&old.verifier().to_string()).unwrap();
    let report = verify(&env.store, &published).await.unwrap();
    assert_eq!((report.leaves, report.checkpoints), (20, 3));
    let kept = env
        .store
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.size == 16)
        .unwrap()
        .note;
    let new = key();
    for c in env.store.checkpoints().await.unwrap() {
        let cp = Checkpoint::open(&c.note, &published).unwrap();
        env.tamper(&format!("DELETE FROM checkpoint WHERE size = {}", c.size))
            .await;
        env.insert_checkpoint(c.size, &cp.sign(new.signer()).unwrap())
            .await;
    }
    let options = VerifyOptions {
        external_checkpoints: vec![kept],
        ..VerifyOptions::default()
    };
    // Trusting the key now in use: the kept checkpoint is by another key.
    match verify_with(&env.store, &new.verifier(), &options).await {
        Err(LedgerError::Tampered(f)) => {
            assert_eq!(f.problems.len(), 1, "{f}");
            assert!(
                matches!(
                    &f.problems[0],
                    Problem::CheckpointKeyChanged { checkpoint, trusted, found }
                        if checkpoint.size == 16
                            && checkpoint.external
                            && *trusted == new.verifier().name_and_id()
                            && *found == vec![old.verifier().name_and_id()]
                ),
                "{f}"
            );
            let text = f.to_string();
            assert!(text.contains("the signing key changed"), "{text}");
            assert!(!text.contains("invalid signature"), "{text}");
            assert!(!text.contains("rewritten"), "{text}");
        }
        other => panic!("the kept checkpoint must tell the key changed: {other:?}"),
    }
    // Trusting the published key: every stored checkpoint is by another
    // key, and the kept one still matches the leaves.
    match verify_with(&env.store, &published, &options).await {
        Err(LedgerError::Tampered(f)) => {
            let changed: Vec<(u64, bool)> = f
                .problems
                .iter()
                .map(|p| match p {
                    Problem::CheckpointKeyChanged { checkpoint, .. } => {
                        (checkpoint.size, checkpoint.external)
                    }
                    other => panic!("only changed keys are expected: {other}"),
                })
                .collect();
            assert_eq!(changed, vec![(8, false), (16, false), (20, false)], "{f}");
            assert_eq!(f.first_bad_checkpoint, Some(8), "{f}");
            assert_eq!(f.first_bad_leaf, None, "{f}");
        }
        other => panic!("stored checkpoints by another key must fail: {other:?}"),
    }
}

async fn tamper_inconsistent_checkpoint(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    standard_ledger(&env, &key).await;
    let old_16 = env
        .store
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.size == 16)
        .unwrap()
        .note;

    // Someone holding the key rewrites leaf 3 (another person), recomputes
    // every stored hash, and signs a new head for size 20; the checkpoints
    // of sizes 8 and 16 stay.
    let mut rows = env.rows().await;
    let mut changed = AuditLeaf::decode(&rows[3].data).unwrap();
    changed.person = Some(PersonId::new(999_999));
    rows[3].data = changed.encode().unwrap();
    rows[3].person = Some(999_999);
    let mut frontier = Frontier::new();
    for row in &mut rows {
        row.nodes.clear();
        frontier.push_into(leaf_hash(&row.data), &mut row.nodes);
    }
    for row in &rows {
        env.overwrite(row).await;
    }
    env.tamper("DELETE FROM checkpoint WHERE size = 20").await;
    let resigned = Checkpoint::new(ORIGIN, 20, frontier.root())
        .sign(key.signer())
        .unwrap();
    env.insert_checkpoint(20, &resigned).await;

    let f = failure(&env, &key).await;
    assert_eq!(f.first_bad_checkpoint, Some(8), "{f}");
    assert!(
        f.problems.iter().any(|p| matches!(
            p,
            Problem::CheckpointInconsistent { earlier, later, last_good: 0 }
                if earlier.size == 8 && later.size == 20
        )),
        "{f}"
    );
    assert!(f.to_string().contains("inconsistent"), "{f}");

    // The forger also removes the old checkpoints: the store alone now looks
    // clean, but a checkpoint kept outside (an auditor's) still catches it.
    env.tamper("DELETE FROM checkpoint WHERE size < 20").await;
    verify(&env.store, &key.verifier()).await.unwrap();
    let options = VerifyOptions {
        external_checkpoints: vec![old_16],
        ..VerifyOptions::default()
    };
    match verify_with(&env.store, &key.verifier(), &options).await {
        Err(LedgerError::Tampered(f)) => {
            assert_eq!(f.first_bad_checkpoint, Some(16), "{f}");
            assert!(
                f.problems.iter().any(|p| matches!(
                    p,
                    Problem::CheckpointInconsistent { earlier, .. } if earlier.size == 16 && earlier.external
                )),
                "{f}"
            );
        }
        other => panic!("the external checkpoint must catch the rewrite: {other:?}"),
    }
}

async fn bench_functions_run(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let populated = bench::populate(env.store.clone(), copy(&key), 300, 1000)
        .await
        .unwrap();
    assert_eq!(populated.leaves, 300);
    let t = bench::append_throughput(env.store.clone(), copy(&key), 100, 10, 1000)
        .await
        .unwrap();
    assert_eq!(t.leaves, 100);
    assert!(t.per_second > 0.0);
    let l = bench::append_latency(
        env.store.clone(),
        copy(&key),
        500,
        Duration::from_millis(100),
        1000,
    )
    .await
    .unwrap();
    assert_eq!(l.appends, 50);
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us);
    let v = bench::verify_speed(&env.store, &key.verifier())
        .await
        .unwrap();
    assert_eq!(v.leaves, 450);
    let p = bench::proof_speed(&env.store, 5, 3).await.unwrap();
    assert_eq!(p.size, 450);
    assert!(p.inclusion_max_hashes <= p.log2_bound);
    assert!(p.consistency_max_hashes <= p.log2_bound + 1);
    let q = bench::query_speed(&env.store, 3, 1000).await.unwrap();
    assert_eq!(q.leaves, 450);
    assert!(bench::hash_rate(1000).unwrap() > 0.0);
}

/// A person's history: every leaf about them up to a checkpoint, newest
/// first (ties by index), paged, each with its proof; the bundle verifies
/// with the public key alone, and every alteration of it is named.
async fn person_histories_and_their_bundles(b: Backend) {
    let env = Env::new(b).await;
    let key = key();
    let ledger = Ledger::open(env.store.clone(), copy(&key), no_auto_checkpoints())
        .await
        .unwrap();
    // Person 1002 is in leaves 2, 7, …, 37; leaves 7 and 12 at one instant.
    let mut leaves: Vec<AuditLeaf> = (0..40).map(leaf).collect();
    leaves[7].time = leaves[12].time;
    ledger.append_batch(&leaves).await.unwrap();
    let signed = ledger.checkpoint_now().await.unwrap();
    ledger.close().await.unwrap();
    let store = env.store.as_ref();
    let person = PersonId::new(1002);
    let page = |offset, limit| HistoryPage { offset, limit };
    let indexes = |h: &rempart_ledger::history::PersonHistory| -> Vec<u64> {
        h.entries.iter().map(|e| e.index).collect()
    };
    let mut seen = Vec::new();
    for offset in [0, 3, 6] {
        let h = person_history(store, person, 40, page(offset, 3))
            .await
            .unwrap();
        assert_eq!(h.total, 8);
        seen.extend(indexes(&h));
    }
    assert_eq!(seen, [37, 32, 27, 22, 17, 12, 7, 2], "{b:?}");
    assert!(
        person_history(store, person, 40, page(8, 3))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert!(
        person_history(store, person, 40, page(u64::MAX, 3))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    // Up to an older size: only what that tree holds.
    let older = person_history(store, person, 20, page(0, 100))
        .await
        .unwrap();
    assert_eq!(indexes(&older), [17, 12, 7, 2]);
    assert_eq!(older.total, 4);
    // A person never read: nothing, and no error.
    let nobody = person_history(store, PersonId::new(999_999), 40, page(0, 10))
        .await
        .unwrap();
    assert_eq!((nobody.total, nobody.entries.len()), (0, 0));
    // Batched proofs are the single proofs.
    let batch = prove_inclusions(store, &[0, 17, 39], 40).await.unwrap();
    for p in &batch {
        assert_eq!(*p, prove_inclusion(store, p.index, 40).await.unwrap());
    }

    let full = person_history(store, person, 40, page(0, 100))
        .await
        .unwrap();
    let bundle = AccessBundle::new(&full, &signed.note);
    let json = serde_json::to_string(&bundle).unwrap();
    let back: AccessBundle = serde_json::from_str(&json).unwrap();
    let verified = back.verify(&key.verifier()).unwrap();
    assert_eq!(verified.person, person);
    assert_eq!(verified.checkpoint.size, 40);
    assert_eq!(
        verified.entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [37, 32, 27, 22, 17, 12, 7, 2]
    );
    // A page verifies too.
    let first = person_history(store, person, 40, page(0, 3)).await.unwrap();
    AccessBundle::new(&first, &signed.note)
        .verify(&key.verifier())
        .unwrap();

    // Every byte of every leaf changed: refused, never a panic.
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    for n in 0..bundle.entries.len() {
        let data = B64.decode(&bundle.entries[n].leaf).unwrap();
        for at in 0..data.len() {
            let mut changed = data.clone();
            changed[at] ^= 0x01;
            let mut tampered = bundle.clone();
            tampered.entries[n].leaf = B64.encode(&changed);
            assert!(
                tampered.verify(&key.verifier()).is_err(),
                "entry {n} byte {at}"
            );
        }
    }
    let refused = |mutate: &dyn Fn(&mut AccessBundle)| {
        let mut tampered = bundle.clone();
        mutate(&mut tampered);
        tampered.verify(&key.verifier()).unwrap_err()
    };
    // Another person's entry slipped in, with its own valid proof.
    let other = person_history(store, PersonId::new(1003), 40, page(0, 1))
        .await
        .unwrap();
    let stranger = AccessBundle::new(&other, &signed.note).entries[0].clone();
    assert!(matches!(
        refused(&|b| {
            b.entries.insert(0, stranger.clone());
            b.total += 1;
        }),
        BundleError::OtherPerson { position: 1, .. }
    ));
    assert!(matches!(
        refused(&|b| b.entries.swap(0, 1)),
        BundleError::Order { position: 2, .. }
    ));
    assert!(matches!(
        refused(&|b| {
            let again = b.entries[2].clone();
            b.entries.insert(3, again);
        }),
        BundleError::Order { .. } | BundleError::Total { .. }
    ));
    assert!(matches!(
        refused(&|b| b.entries[1].index += 1),
        BundleError::NotIncluded { position: 2, .. }
    ));
    assert!(matches!(
        refused(&|b| {
            b.entries[1].proof.pop();
        }),
        BundleError::NotIncluded { position: 2, .. }
    ));
    assert!(matches!(
        refused(&|b| b.entries[1].proof[0] = "AAAA".into()),
        BundleError::Malformed { position: 2, .. }
    ));
    assert!(matches!(
        refused(&|b| b.entries[0].leaf = "%%%".into()),
        BundleError::Malformed { position: 1, .. }
    ));
    assert!(matches!(
        refused(&|b| b.total = 2),
        BundleError::Total { .. }
    ));
    assert!(matches!(
        refused(&|b| b.format = "x".into()),
        BundleError::Format
    ));
    assert!(matches!(
        refused(&|b| b.checkpoint = b.checkpoint.replace("\n40\n", "\n41\n")),
        BundleError::Checkpoint(_)
    ));
    // Signed by another key: refused, even if everything else holds.
    let stranger_key = LedgerKey::generate(ORIGIN).unwrap();
    assert!(matches!(
        bundle.verify(&stranger_key.verifier()),
        Err(BundleError::Checkpoint(_))
    ));
    // A bundle against a checkpoint the entries are not in (an older one).
    let mut stale = bundle.clone();
    stale.checkpoint = Checkpoint::new(ORIGIN, 20, root(store, 20).await.unwrap())
        .sign(key.signer())
        .unwrap();
    assert!(matches!(
        stale.verify(&key.verifier()),
        Err(BundleError::NotIncluded { position: 1, .. })
    ));
}
