//! The run index (`store/runs.rs`) on PostgreSQL: its statements, and the
//! indexer that builds the runs apart from the appends.
//!
//! The run logic is synchronous (SQLite's writer drives it inside its
//! commits); here each call runs on tokio's blocking pool and waits for its
//! statements on the runtime (`Handle::block_on`), over a pooled connection
//! working as the ledger's role.
//!
//! The indexer belongs to the writer (the integrator): a task that, after
//! appends or every second, does a slice of index work per transaction. A
//! slice starts from what the database holds (no state carried from one
//! transaction to the next) and takes a transaction-level advisory lock
//! first, so two indexers (a writer that lost its lock, and the next one)
//! never build the same run at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use std::pin::pin;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use futures_util::StreamExt;
use tokio_postgres::Statement;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{ToSql, Type};

use super::bundle;
use crate::store::StoreError;
use crate::store::posting::{Kind, LeafKeys, StoredChunk};
use crate::store::runs::{self, Run, RunDb, RunIndexer};
use rempart_sql::describe;

/// Postings a slice of the indexer moves in one transaction: a few
/// level-0 runs, or a 32nd of a level-1 merge.
#[cfg(not(test))]
const SLICE: usize = 65_536;
#[cfg(test)]
const SLICE: usize = 256;
/// How long the indexer sleeps when it has nothing to do and hears of no
/// append.
const IDLE: Duration = Duration::from_secs(1);
/// How long it rests after a failed slice.
const RETRY: Duration = Duration::from_secs(5);
/// Postings moved between two vacuums of the posting tables while the
/// indexer is busy (it vacuums whenever it falls idle after work too).
const VACUUM_EVERY: usize = 1 << 22;
/// Chunks held back before they are inserted in one statement.
const PENDING: usize = 256;

/// Statements of one posting table, in PostgreSQL's placeholders.
struct PgKindSql {
    fetch: &'static str,
    /// `fetch` for many runs: `($1, $2, $3, $4)` are the runs and the key
    /// columns to read after, `$5` the limit for each; rows come with the
    /// ordinal of their seek.
    each: &'static str,
    last: &'static str,
    insert: &'static str,
    delete: &'static str,
}

macro_rules! pg_kind_sql {
    ($name:ident, $table:literal) => {
        const $name: PgKindSql = PgKindSql {
            fetch: concat!(
                "SELECT key, time_last, idx_last, postings FROM ",
                $table,
                " WHERE run = $1 AND (key, time_last, idx_last) > ($2, $3, $4)",
                " ORDER BY key, time_last, idx_last LIMIT $5"
            ),
            each: concat!(
                "SELECT s.n, c.key, c.time_last, c.idx_last, c.postings",
                " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])",
                " WITH ORDINALITY AS s(run, key, t, i, n)",
                " CROSS JOIN LATERAL (SELECT key, time_last, idx_last, postings FROM ",
                $table,
                " p WHERE p.run = s.run AND (p.key, p.time_last, p.idx_last) > (s.key, s.t, s.i)",
                " ORDER BY p.key, p.time_last, p.idx_last LIMIT $5) AS c",
                " ORDER BY s.n, c.key, c.time_last, c.idx_last"
            ),
            last: concat!(
                "SELECT key, time_last, idx_last, postings FROM ",
                $table,
                " WHERE run = $1 ORDER BY key DESC, time_last DESC, idx_last DESC LIMIT 1"
            ),
            insert: concat!(
                "INSERT INTO ",
                $table,
                " (run, key, time_last, idx_last, postings)",
                " SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[])"
            ),
            delete: concat!(
                "DELETE FROM ",
                $table,
                " WHERE run = $1 AND key <= (SELECT max(key) FROM (",
                "SELECT key FROM ",
                $table,
                " WHERE run = $1 ORDER BY key LIMIT $2) AS first_keys)"
            ),
        };
    };
}

pg_kind_sql!(ACCOUNT, "posting_account");
pg_kind_sql!(ORGANISATION, "posting_organisation");
pg_kind_sql!(PERSON, "posting_person");

fn sql(kind: Kind) -> &'static PgKindSql {
    match kind {
        Kind::Account => &ACCOUNT,
        Kind::Organisation => &ORGANISATION,
        Kind::Person => &PERSON,
    }
}

/// The run index's statements on a pooled connection, from a thread of the
/// blocking pool. Inserted chunks are held back and sent in one statement
/// per table before the next other statement, or by [`PgRuns::flush`].
pub(super) struct PgRuns<'c> {
    handle: Handle,
    client: &'c deadpool_postgres::Client,
    pending: Vec<(Kind, i64, StoredChunk)>,
}

impl<'c> PgRuns<'c> {
    pub(super) fn new(handle: Handle, client: &'c deadpool_postgres::Client) -> Self {
        PgRuns {
            handle,
            client,
            pending: Vec::new(),
        }
    }

    fn stmt(&self, sql: &str) -> Result<Statement, StoreError> {
        Ok(self.handle.block_on(self.client.prepare_cached(sql))?)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.flush()?;
        let stmt = self.stmt(sql)?;
        Ok(self.handle.block_on(self.client.query(&stmt, params))?)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.flush()?;
        let stmt = self.stmt(sql)?;
        Ok(self.handle.block_on(self.client.execute(&stmt, params))?)
    }

    /// Runs a statement without parameters (BEGIN, COMMIT, ROLLBACK).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.flush()?;
        Ok(self.handle.block_on(self.client.batch_execute(sql))?)
    }

    /// Sends the chunks held back.
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        for kind in Kind::ALL {
            let mut runs_of_kind = pending.iter().filter(|(k, _, _)| *k == kind).peekable();
            while let Some((_, run, _)) = runs_of_kind.peek().copied() {
                let (mut keys, mut times, mut idx, mut blobs) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                while let Some((_, _, c)) = runs_of_kind.next_if(|(_, r, _)| r == run) {
                    keys.push(c.key);
                    times.push(c.time_off);
                    idx.push(c.idx_off);
                    blobs.push(c.blob.as_slice());
                }
                let stmt = self.stmt(sql(kind).insert)?;
                self.handle.block_on(
                    self.client
                        .execute(&stmt, &[run, &keys, &times, &idx, &blobs]),
                )?;
            }
        }
        Ok(())
    }

    /// Rolls back after a failure, best effort: a connection that cannot
    /// is broken, and the pool drops broken connections.
    pub(super) fn rollback(&mut self) {
        self.pending.clear();
        let _ = self.handle.block_on(self.client.batch_execute("ROLLBACK"));
    }
}

fn chunk(r: &tokio_postgres::Row) -> Result<StoredChunk, StoreError> {
    Ok(StoredChunk {
        key: r.try_get(0)?,
        time_off: r.try_get(1)?,
        idx_off: r.try_get(2)?,
        blob: r.try_get(3)?,
    })
}

impl RunDb for PgRuns<'_> {
    fn size(&mut self) -> Result<i64, StoreError> {
        let rows = self.query(super::SIZE_QUERY, &[])?;
        match rows.first() {
            Some(r) => Ok(r.try_get(0)?),
            None => Err(StoreError::Corrupt("the leaf count is missing".into())),
        }
    }

    fn runs(&mut self) -> Result<Vec<Run>, StoreError> {
        self.query(runs::RUNS_SQL, &[])?
            .iter()
            .map(|r| {
                Ok(Run {
                    id: r.try_get(0)?,
                    level: r.try_get(1)?,
                    first: r.try_get(2)?,
                    end: r.try_get(3)?,
                    min_time: r.try_get(4)?,
                    max_time: r.try_get(5)?,
                    state: r.try_get(6)?,
                    format: runs::run_format(r.try_get(7)?)?,
                })
            })
            .collect()
    }

    fn leaf_keys(&mut self, from: i64, to: i64) -> Result<Vec<LeafKeys>, StoreError> {
        self.flush()?;
        // Binary COPY: whole runs' leaves are read this way (a check reads
        // every leaf once more). COPY takes no parameters; both bounds are
        // integers formatted here.
        let sql = format!(
            "COPY (SELECT first, count, data FROM leaf_bundle
                   WHERE first >= {} AND first < {to} ORDER BY first)
             TO STDOUT (FORMAT binary)",
            bundle::bundle_of(from)
        );
        let client = self.client;
        self.handle.block_on(async move {
            let stream = client.copy_out(&sql).await?;
            let rows = BinaryCopyOutStream::new(stream, &[Type::INT8, Type::INT4, Type::BYTEA]);
            let mut rows = pin!(rows);
            let mut keys = Vec::new();
            while let Some(row) = rows.next().await {
                let row = row?;
                // A damaged bundle has no keys (like a leaf that does not
                // decode): the verifier reports its leaves.
                let leaves = bundle::split(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                for (idx, data) in leaves.unwrap_or_default() {
                    if (from..to).contains(&idx)
                        && let Some(k) = LeafKeys::decode(idx, data)
                    {
                        keys.push(k);
                    }
                }
            }
            Ok(keys)
        })
    }

    fn leaf_data(&mut self, idx: &[i64]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut bundles: Vec<i64> = idx.iter().map(|i| bundle::bundle_of(*i)).collect();
        bundles.sort_unstable();
        bundles.dedup();
        let rows = self.query(
            "SELECT first, count, data FROM leaf_bundle WHERE first = ANY($1)",
            &[&bundles],
        )?;
        let mut by_idx = std::collections::HashMap::with_capacity(rows.len() * 16);
        for r in &rows {
            let leaves = bundle::split(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            for (i, data) in leaves.unwrap_or_default() {
                by_idx.insert(i, data.to_vec());
            }
        }
        idx.iter()
            .map(|i| {
                by_idx
                    .remove(i)
                    .ok_or_else(|| StoreError::Corrupt(format!("leaf {i} is indexed but absent")))
            })
            .collect()
    }

    fn chunks_after(
        &mut self,
        kind: Kind,
        run: i64,
        after: (i64, i64, i64),
        limit: i64,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        self.query(
            sql(kind).fetch,
            &[&run, &after.0, &after.1, &after.2, &limit],
        )?
        .iter()
        .map(chunk)
        .collect()
    }

    fn chunks_after_each(
        &mut self,
        kind: Kind,
        seeks: &[(i64, (i64, i64, i64))],
        limit: i64,
    ) -> Result<Vec<Vec<StoredChunk>>, StoreError> {
        let mut out = vec![Vec::new(); seeks.len()];
        if seeks.is_empty() {
            return Ok(out);
        }
        let runs: Vec<i64> = seeks.iter().map(|s| s.0).collect();
        let keys: Vec<i64> = seeks.iter().map(|s| s.1.0).collect();
        let times: Vec<i64> = seeks.iter().map(|s| s.1.1).collect();
        let idx: Vec<i64> = seeks.iter().map(|s| s.1.2).collect();
        for r in self.query(sql(kind).each, &[&runs, &keys, &times, &idx, &limit])? {
            let n: i64 = r.try_get(0)?;
            let slot = usize::try_from(n - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| StoreError::Corrupt(format!("a chunk for seek {n}")))?;
            slot.push(StoredChunk {
                key: r.try_get(1)?,
                time_off: r.try_get(2)?,
                idx_off: r.try_get(3)?,
                blob: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    fn last_chunk(&mut self, kind: Kind, run: i64) -> Result<Option<StoredChunk>, StoreError> {
        self.query(sql(kind).last, &[&run])?
            .first()
            .map(chunk)
            .transpose()
    }

    fn insert_chunk(&mut self, kind: Kind, run: i64, chunk: StoredChunk) -> Result<(), StoreError> {
        self.pending.push((kind, run, chunk));
        if self.pending.len() >= PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn delete_chunks(&mut self, kind: Kind, run: i64, keys: i64) -> Result<usize, StoreError> {
        let n = self.execute(sql(kind).delete, &[&run, &keys])?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn insert_run(&mut self, run: &Run) -> Result<i64, StoreError> {
        let rows = self.query(
            "INSERT INTO run (level, first_leaf, end_leaf, min_time, max_time, state, format)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &run.level,
                &run.first,
                &run.end,
                &run.min_time,
                &run.max_time,
                &run.state,
                &run.format.column(),
            ],
        )?;
        match rows.first() {
            Some(r) => Ok(r.try_get(0)?),
            None => Err(StoreError::Corrupt("a new run got no id".into())),
        }
    }

    fn set_state(&mut self, id: i64, from: i64, to: i64) -> Result<usize, StoreError> {
        let n = self.execute(
            "UPDATE run SET state = $3 WHERE id = $1 AND state = $2",
            &[&id, &from, &to],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn delete_run(&mut self, id: i64) -> Result<(), StoreError> {
        self.execute("DELETE FROM run WHERE id = $1 AND state = 2", &[&id])?;
        Ok(())
    }
}

/// Runs `f` on a pooled connection from the blocking pool, inside a
/// read-only snapshot (the runs, their postings and the tail agree).
pub(super) async fn read<T: Send + 'static>(
    pool: &Pool,
    f: impl FnOnce(&mut dyn RunDb) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    transaction(
        pool,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        |db| f(db),
    )
    .await
}

/// Runs `f` on a pooled connection from the blocking pool, in a
/// transaction opened by `begin`: committed (held-back chunks sent first)
/// if `f` succeeds, rolled back otherwise.
async fn transaction<T: Send + 'static>(
    pool: &Pool,
    begin: &'static str,
    f: impl FnOnce(&mut PgRuns<'_>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(describe(&e)))?;
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut db = PgRuns::new(handle, &client);
        db.batch(begin)?;
        let result = f(&mut db).and_then(|v| {
            db.batch("COMMIT")?;
            Ok(v)
        });
        if result.is_err() {
            db.rollback();
        }
        result
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

/// The writer's indexer task: stopped when dropped.
pub(super) struct Indexer {
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Indexer {
    /// Starts the task, which takes the transaction-level advisory lock
    /// `lock` for each slice.
    pub(super) fn start(pool: Pool, owner: tokio_postgres::Config, lock: i64) -> Self {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (wake.clone(), stop.clone());
        tokio::spawn(async move {
            let mut vacuum = Vacuum::default();
            while !s.load(Ordering::Acquire) {
                let pause = match slice(&pool, lock).await {
                    Ok(Some(n)) if n > 0 => {
                        vacuum.moved(n);
                        Duration::ZERO
                    }
                    Ok(_) => IDLE,
                    Err(e) => {
                        tracing::error!(error = %e, "ledger: the query index failed; appends go on, it retries in 5 s");
                        RETRY
                    }
                };
                if let Err(e) = vacuum.if_due(&owner, !pause.is_zero()).await {
                    tracing::warn!(error = %e, "ledger: vacuuming the query index failed");
                }
                if !pause.is_zero() {
                    let _ = tokio::time::timeout(pause, w.notified()).await;
                }
            }
        });
        Indexer { wake, stop }
    }

    /// Tells the task that leaves were appended.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// When to vacuum the posting tables: every [`VACUUM_EVERY`] postings an
/// indexer moves, when it falls idle after work, and the first time it
/// falls idle (a store opened after an upgrade or a crash may have pages
/// the visibility map does not cover, which an index-only scan visits).
pub(super) struct Vacuum {
    moved: usize,
}

impl Default for Vacuum {
    fn default() -> Self {
        // As if something had moved: the first idle pass vacuums.
        Vacuum { moved: 1 }
    }
}

impl Vacuum {
    /// Counts postings moved.
    pub(super) fn moved(&mut self, n: usize) {
        self.moved = self.moved.saturating_add(n);
    }

    /// Vacuums if enough was moved, or if the indexer is `idle` after work.
    pub(super) async fn if_due(
        &mut self,
        owner: &tokio_postgres::Config,
        idle: bool,
    ) -> Result<(), StoreError> {
        if self.moved >= VACUUM_EVERY || (idle && self.moved > 0) {
            self.moved = 0;
            vacuum(owner).await?;
        }
        Ok(())
    }
}

/// Vacuums the posting tables, as the schema's owner (`owner`: the store's
/// connection settings, without the role it works as; VACUUM is the
/// owner's): merges delete the postings of the runs they replace, and
/// until a vacuum marks that space free, new runs cannot reuse it (the
/// tables grew to three times their live size at 10 M leaves). And
/// `subtree`, which only grows, for its visibility map: proofs read its
/// upper hashes by an index-only scan, which visits the table for every
/// row of a page not yet marked all-visible.
async fn vacuum(owner: &tokio_postgres::Config) -> Result<(), StoreError> {
    let (client, conn) = owner.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    // Throttled like autovacuum (a manual VACUUM is not, by default): at
    // full speed its reads and writes held appends' commits up to 100 ms
    // behind it (p99 at 5,000 appends/s, 10 M leaves).
    // (Two statements: VACUUM may not share a transaction block.)
    let done = match client.batch_execute("SET vacuum_cost_delay = '2ms'").await {
        Ok(()) => {
            client
                .batch_execute(
                    "VACUUM posting_account, posting_organisation, posting_person, subtree",
                )
                .await
        }
        Err(e) => Err(e),
    };
    drop(client);
    let _ = task.await;
    Ok(done?)
}

/// One slice of index work in its own transaction; returns the postings
/// moved (0: nothing to do), or `None` if another indexer holds the lock.
pub(super) async fn slice(pool: &Pool, lock: i64) -> Result<Option<usize>, StoreError> {
    transaction(pool, "BEGIN", move |db| {
        let locked = db
            .query("SELECT pg_try_advisory_xact_lock($1)", &[&lock])?
            .first()
            .map(|r| r.try_get::<_, bool>(0))
            .transpose()?;
        if locked != Some(true) {
            return Ok(None);
        }
        let mut indexer = RunIndexer::load(db, false)?;
        Ok(Some(indexer.catch_up(db, SLICE)?))
    })
    .await
}
