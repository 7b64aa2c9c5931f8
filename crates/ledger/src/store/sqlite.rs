//! SQLite backend: the file `ledger.db` in the data directory, apart from
//! the registry's file. WAL journal, `synchronous = FULL` on the writer so a
//! commit is on disk before it returns. Readers use their own read-only
//! connections on tokio's blocking pool; the single writer owns one
//! connection and the lock file `ledger.lock` for as long as it lives.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use rempart_sql::SqliteReaders;
use rusqlite::{Connection, OptionalExtension, Row, params};

mod segments;

use segments::SegmentIndexer;

use super::{
    IndexProblem, LeafRow, LedgerStore, LedgerWriter, QueryRange, RawEntry, StoreError,
    StoredCheckpoint, Subject, migrate, node_from_column, node_location, page_start, to_i64,
    to_u64,
};
use crate::leaf::{AccountId, PersonId, Timestamp};
use crate::merkle::{Hash, NodeId};

/// File name of the ledger inside the data directory.
pub const FILE_NAME: &str = "ledger.db";
/// Lock file held by the single writer.
pub const LOCK_FILE_NAME: &str = "ledger.lock";

const READERS: usize = 4;

/// Leaves per index segment, as a shift: must match the `<< 14` and
/// `>> 14` of the SQL here and of migration 0002.
const SEGMENT_SHIFT: u32 = 14;

/// The SQLite ledger.
#[derive(Clone)]
pub struct SqliteLedgerStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    path: PathBuf,
    readers: SqliteReaders,
}

fn task_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Task(e.to_string())
}

impl SqliteLedgerStore {
    /// Opens (creating if needed) `dir/ledger.db` and applies migrations.
    /// The directory must exist.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(dir))
            .await
            .map_err(task_error)?
    }

    fn open_blocking(dir: PathBuf) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        if !dir.is_dir() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                reason: "the data directory does not exist (run `rempart init` first)".into(),
            });
        }
        let mut conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 10000;",
        )?;
        migrate_sqlite(&mut conn)?;
        drop(conn);
        let readers = SqliteReaders::open(
            &path,
            READERS,
            "PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -65536;
             PRAGMA mmap_size = 1073741824;",
        )?;
        Ok(SqliteLedgerStore {
            inner: Arc::new(Inner { dir, path, readers }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(task_error)?
    }
}

fn migrate_sqlite(conn: &mut Connection) -> Result<(), StoreError> {
    rempart_sql::migrate_sqlite(conn, migrate::SQLITE)
}

fn size_of(conn: &Connection) -> Result<u64, StoreError> {
    // From the statement cache: every commit checks the size first, and
    // preparing this afresh cost more than the rest of a small batch's
    // inserts (a profile of the consultation path).
    let next: i64 = conn
        .prepare_cached("SELECT coalesce(max(idx) + 1, 0) FROM leaf")?
        .query_row([], |r| r.get(0))?;
    to_u64(next, "leaf count")
}

/// How many segments are in the segment tables: segments `0..n` are, the
/// leaves from `n << SEGMENT_SHIFT` on are the unindexed tail.
fn indexed_segments(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(segment) + 1, 0) FROM leaf_segment")?
        .query_row([], |r| r.get(0))?)
}

/// One of the three segment tables, and how a segment's rows are read
/// back in the table's primary-key order (`stored`, with the segment as
/// `?1`: the key, time, idx, then the account table's extra columns). The
/// writer inserts them in that order (see `segments`).
struct SegmentTable {
    name: &'static str,
    stored: &'static str,
}

const SEGMENT_TABLES: [SegmentTable; 3] = [
    SegmentTable {
        name: "leaf_by_account",
        stored: "SELECT account, time_us, idx, reveals, person FROM leaf_by_account
                 WHERE segment = ?1 ORDER BY account, time_us, idx",
    },
    SegmentTable {
        name: "leaf_by_organisation",
        stored: "SELECT organisation, time_us, idx FROM leaf_by_organisation
                 WHERE segment = ?1 ORDER BY organisation, time_us, idx",
    },
    SegmentTable {
        name: "leaf_by_person",
        stored: "SELECT person, time_us, idx FROM leaf_by_person
                 WHERE segment = ?1 ORDER BY person, time_us, idx",
    },
];

/// Compares the segment tables with the leaves they were built from, one
/// segment at a time: the keys of each table must be exactly those of the
/// leaves, and every complete segment but the last must be indexed (the
/// writer fills the last one slice by slice).
fn index_problems(c: &Connection) -> Result<Vec<IndexProblem>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let indexed = indexed_segments(&tx)?;
    let complete = size_of(&tx)? >> SEGMENT_SHIFT;
    let mut problems = Vec::new();
    let listed: i64 = tx.query_row("SELECT count(*) FROM leaf_segment", [], |r| r.get(0))?;
    // The last complete segment may still be being indexed.
    let behind = complete.saturating_sub(to_u64(indexed, "segment")?);
    if listed != indexed || behind > 1 {
        problems.push(IndexProblem {
            segment: to_u64(indexed.min(listed), "segment")?,
            table: "leaf_segment",
        });
    }
    for segment in 0..indexed {
        let matches = segments::segment_matches(&tx, segment)?;
        for (t, same) in SEGMENT_TABLES.iter().zip(matches) {
            if !same {
                problems.push(IndexProblem {
                    segment: to_u64(segment, "segment")?,
                    table: t.name,
                });
            }
        }
    }
    Ok(problems)
}

fn nodes_of(conn: &Connection, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT nodes FROM leaf WHERE idx = ?1")?;
    ids.iter()
        .map(|id| {
            let (leaf, _) = node_location(*id);
            let nodes: Option<Vec<u8>> = stmt
                .query_row([to_i64(leaf, "leaf index")?], |r| r.get(0))
                .optional()?;
            match nodes {
                Some(n) => node_from_column(*id, &n),
                None => Err(StoreError::MissingNode {
                    level: id.level,
                    index: id.index,
                    leaf,
                }),
            }
        })
        .collect()
}

fn leaf_row(r: &Row<'_>) -> rusqlite::Result<(i64, LeafRow)> {
    let idx: i64 = r.get(0)?;
    Ok((
        idx,
        LeafRow {
            index: 0,
            time: r.get(1)?,
            account: r.get(2)?,
            organisation: r.get(3)?,
            person: r.get(4)?,
            reveals: r.get(5)?,
            data: r.get(6)?,
            nodes: r.get(7)?,
            receipt: None,
        },
    ))
}

fn checkpoint_row(r: &Row<'_>) -> rusqlite::Result<(i64, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn to_checkpoint((size, time, note): (i64, i64, String)) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: to_u64(size, "checkpoint size")?,
        time: Timestamp(time),
        note,
    })
}

#[async_trait]
impl LedgerStore for SqliteLedgerStore {
    fn location(&self) -> String {
        self.inner.path.display().to_string()
    }

    async fn writer(&self) -> Result<Box<dyn LedgerWriter>, StoreError> {
        let dir = self.inner.dir.clone();
        let path = self.inner.path.clone();
        let writer = tokio::task::spawn_blocking(move || SqliteWriter::open(&dir, &path))
            .await
            .map_err(task_error)??;
        Ok(Box::new(writer))
    }

    async fn size(&self) -> Result<u64, StoreError> {
        self.read(size_of).await
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| nodes_of(c, &ids)).await
    }

    async fn leaves(&self, from: u64, count: usize) -> Result<Vec<LeafRow>, StoreError> {
        let from = to_i64(from, "leaf index")?;
        let end = from.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT idx, time_us, account, organisation, person, reveals, data, nodes
                 FROM leaf WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let rows = stmt.query_map([from, end], leaf_row)?;
            rows.map(|r| {
                let (idx, mut row) = r?;
                row.index = to_u64(idx, "leaf index")?;
                Ok(row)
            })
            .collect()
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT size, time_us, note FROM checkpoint ORDER BY size")?;
            let rows = stmt.query_map([], checkpoint_row)?;
            rows.map(|r| to_checkpoint(r?)).collect()
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT size, time_us, note FROM checkpoint ORDER BY size DESC LIMIT 1",
                [],
                checkpoint_row,
            )
            .optional()?
            .map(to_checkpoint)
            .transpose()
        })
        .await
    }

    async fn query(&self, range: &QueryRange) -> Result<Vec<RawEntry>, StoreError> {
        let (table, column, id) = match range.subject {
            Subject::Account(a) => ("leaf_by_account", "account", a.get()),
            Subject::Organisation(o) => ("leaf_by_organisation", "organisation", o.get()),
            Subject::Person(p) => ("leaf_by_person", "person", p.get()),
        };
        let (after_time, after_idx) = page_start(range)?;
        let (from, to) = (range.from.0, range.to.0);
        let limit = range.limit as usize;
        self.read(move |c| {
            // One snapshot for the segment tables and the tail.
            let tx = c.unchecked_transaction()?;
            let indexed = indexed_segments(&tx)?;
            // Each segment gives its first `limit` candidates from its keys
            // alone, the tail its own; the best `limit` of all are then read.
            // Table and column names come from the match above, never from
            // input.
            let mut in_segment = tx.prepare_cached(&format!(
                "SELECT time_us, idx FROM {table}
                 WHERE segment = ?1 AND {column} = ?2
                   AND time_us >= ?3 AND time_us < ?4 AND (time_us, idx) > (?5, ?6)
                 ORDER BY time_us, idx LIMIT ?7"
            ))?;
            let mut best: Vec<(i64, i64)> = Vec::new();
            let keep = |rows: &mut dyn Iterator<Item = rusqlite::Result<(i64, i64)>>,
                        best: &mut Vec<(i64, i64)>|
             -> Result<(), StoreError> {
                for row in rows {
                    best.push(row?);
                }
                if best.len() > 4 * limit.max(1) {
                    best.sort_unstable();
                    best.truncate(limit);
                }
                Ok(())
            };
            for segment in 0..indexed {
                let mut rows = in_segment.query_map(
                    params![segment, id, from, to, after_time, after_idx, limit as i64],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
                keep(&mut rows, &mut best)?;
            }
            let mut in_tail = tx.prepare_cached(&format!(
                "SELECT time_us, idx FROM leaf
                 WHERE idx >= ?1 AND {column} = ?2
                   AND time_us >= ?3 AND time_us < ?4 AND (time_us, idx) > (?5, ?6)
                 ORDER BY time_us, idx LIMIT ?7"
            ))?;
            let mut rows = in_tail.query_map(
                params![
                    indexed << SEGMENT_SHIFT,
                    id,
                    from,
                    to,
                    after_time,
                    after_idx,
                    limit as i64
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?;
            keep(&mut rows, &mut best)?;
            drop(rows);
            best.sort_unstable();
            best.truncate(limit);
            let mut data = tx.prepare_cached("SELECT data FROM leaf WHERE idx = ?1")?;
            best.into_iter()
                .map(|(time, idx)| {
                    Ok(RawEntry {
                        index: to_u64(idx, "leaf index")?,
                        time,
                        data: data.query_row([idx], |r| r.get(0))?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn persons_revealed_to(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<PersonId>, StoreError> {
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            let indexed = indexed_segments(&tx)?;
            let mut in_segment = tx.prepare_cached(
                "SELECT person FROM leaf_by_account
                 WHERE segment = ?1 AND account = ?2
                   AND time_us >= ?3 AND time_us < ?4
                   AND reveals = 1 AND person IS NOT NULL",
            )?;
            let mut persons = BTreeSet::new();
            for segment in 0..indexed {
                let rows = in_segment
                    .query_map(params![segment, account.get(), from.0, to.0], |r| r.get(0))?;
                for person in rows {
                    persons.insert(person?);
                }
            }
            let mut in_tail = tx.prepare_cached(
                "SELECT person FROM leaf
                 WHERE idx >= ?1 AND account = ?2
                   AND time_us >= ?3 AND time_us < ?4
                   AND reveals = 1 AND person IS NOT NULL",
            )?;
            let rows = in_tail.query_map(
                params![indexed << SEGMENT_SHIFT, account.get(), from.0, to.0],
                |r| r.get(0),
            )?;
            for person in rows {
                persons.insert(person?);
            }
            Ok(persons.into_iter().map(PersonId::new).collect())
        })
        .await
    }

    async fn index_problems(&self) -> Result<Vec<IndexProblem>, StoreError> {
        self.read(index_problems).await
    }
}

/// The single writer: one connection, the lock file for its lifetime, and
/// a background thread that copies the WAL into the database file.
struct SqliteWriter {
    conn: Option<WriterConn>,
    checkpointer: Option<Checkpointer>,
    /// Set once the appender gave this writer a thread of its own: calls
    /// then run inline instead of on the blocking pool.
    inline: bool,
    _lock: File,
}

/// The writer's connection and what travels with it.
struct WriterConn {
    db: Connection,
    /// `None` until the first append, and again after a failed one (its
    /// state may then be ahead of the database): rebuilt from the database.
    segments: Option<SegmentIndexer>,
}

/// Copies committed WAL frames into the database file off the append path.
/// SQLite's automatic checkpoint runs inside the commit that crosses its
/// threshold and holds that commit (and every append queued behind it) for
/// the whole copy and sync: tens of milliseconds on a large ledger. Here a
/// thread with its own connection runs a PASSIVE checkpoint every few
/// milliseconds, which never blocks the writer. Under steady appends that
/// never quite empties the WAL, so once it is large a RESTART is tried: by
/// then only the last few milliseconds of frames remain to copy, so it holds
/// the writer briefly, and it gives up at once (busy timeout 0) rather than
/// wait for a writer or a long reader, to try again at the next tick.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// WAL frames (pages) beyond which the WAL is restarted: 64 MiB.
const RESTART_FRAMES: i64 = 16_384;

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA busy_timeout = 0; PRAGMA synchronous = FULL;")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-wal-checkpoint".into())
            .spawn(move || {
                let checkpoint = |mode: &str| -> Option<i64> {
                    // (busy, frames in the WAL, frames copied); failures are
                    // retried at the next tick, the WAL only grows meanwhile.
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                        r.get::<_, i64>(1)
                    })
                    .ok()
                };
                while !flag.load(Ordering::Acquire) {
                    if checkpoint("PASSIVE").is_some_and(|frames| frames >= RESTART_FRAMES) {
                        checkpoint("RESTART");
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start the WAL checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // At most one tick.
            let _ = t.join();
        }
    }
}

impl SqliteWriter {
    fn open(dir: &Path, path: &Path) -> Result<Self, StoreError> {
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                path: lock_path.display().to_string(),
                reason: e.to_string(),
            })?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::WriterBusy(format!(
                    "{} is locked by another process or ledger",
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Open {
                    path: lock_path.display().to_string(),
                    reason: format!("cannot lock: {e}"),
                });
            }
        }
        let conn = Connection::open(path)?;
        // FULL: in WAL mode the commit syncs the log, so an appended leaf
        // survives a power cut once `append` returns. A small page cache:
        // appends touch only the right edge of each b-tree, and SQLite walks
        // half of the cache's hash table at the end of every write
        // transaction (with 256 MiB that was a tenth of the server's CPU).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -16384;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA journal_size_limit = 67108864;",
        )?;
        Ok(SqliteWriter {
            conn: Some(WriterConn {
                db: conn,
                segments: None,
            }),
            checkpointer: Some(Checkpointer::start(path)?),
            inline: false,
            _lock: lock_file,
        })
    }

    /// Runs `f` on the connection: inline on the appender's own thread, else
    /// on the blocking pool. There the connection travels with the task and
    /// comes back; it is lost only if `f` panics, after which every call
    /// fails.
    async fn with<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut WriterConn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.inline {
            let conn = self.conn.as_mut().ok_or_else(|| {
                StoreError::Task("the ledger writer's connection was lost".into())
            })?;
            return f(conn);
        }
        let mut conn = self
            .conn
            .take()
            .ok_or_else(|| StoreError::Task("the ledger writer's connection was lost".into()))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut conn);
            (conn, r)
        })
        .await
        .map_err(task_error)?;
        self.conn = Some(conn);
        result
    }
}

#[async_trait]
impl LedgerWriter for SqliteWriter {
    async fn size(&mut self) -> Result<u64, StoreError> {
        self.with(|c| size_of(&c.db)).await
    }

    async fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let ids = ids.to_vec();
        self.with(move |c| nodes_of(&c.db, &ids)).await
    }

    async fn append(&mut self, first: u64, rows: Vec<LeafRow>) -> Result<(), StoreError> {
        self.with(move |c| {
            // BEGIN and COMMIT from the statement cache: rusqlite's
            // `Transaction` parses them afresh for every batch, which showed
            // in profiles of the consultation path (one batch per few reads).
            c.db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            let written = append_rows(c, first, &rows);
            let committed = written.and_then(|()| {
                c.db.prepare_cached("COMMIT")?.execute([])?;
                Ok(())
            });
            if committed.is_err() {
                let _ = c.db.execute_batch("ROLLBACK");
                c.segments = None;
            }
            committed
        })
        .await
    }

    async fn close(&mut self) {
        if let Some(checkpointer) = self.checkpointer.take() {
            if self.inline {
                drop(checkpointer);
            } else {
                // Joining waits at most one tick; keep it off the async threads.
                let _ = tokio::task::spawn_blocking(move || drop(checkpointer)).await;
            }
        }
    }

    fn use_own_thread(&mut self) -> bool {
        self.inline = true;
        true
    }

    async fn add_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        let cp = checkpoint.clone();
        self.with(move |c| {
            c.db.execute(
                "INSERT INTO checkpoint (size, time_us, note) VALUES (?1, ?2, ?3)",
                params![to_i64(cp.size, "checkpoint size")?, cp.time.0, cp.note],
            )?;
            Ok(())
        })
        .await
    }
}

/// Checks that the log is still `first` leaves long, then inserts `rows`
/// and the next slice of the segment tables, inside the caller's
/// transaction.
fn append_rows(w: &mut WriterConn, first: u64, rows: &[LeafRow]) -> Result<(), StoreError> {
    let c = &w.db;
    let found = size_of(c)?;
    if found != first {
        return Err(StoreError::Conflict {
            expected: first,
            found,
        });
    }
    let mut stmt = c.prepare_cached(
        "INSERT INTO leaf (idx, time_us, account, organisation, person, reveals, data, nodes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for row in rows {
        stmt.execute(params![
            to_i64(row.index, "leaf index")?,
            row.time,
            row.account,
            row.organisation,
            row.person,
            row.reveals,
            row.data,
            row.nodes
        ])?;
    }
    drop(stmt);
    let segments = match &mut w.segments {
        Some(s) => s,
        // Loaded after the insert, so it must not see the new rows twice:
        // it reads them, and is told about none.
        None => {
            return w.segments.insert(SegmentIndexer::load(c)?).appended(c, &[]);
        }
    };
    segments.appended(c, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count() as i64;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(0..n), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    /// The per-segment queries seek the segment tables by their keys,
    /// breach scoping reads the account table alone, and the tail is a
    /// range of the leaf table.
    #[tokio::test]
    async fn queries_seek_the_segment_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let c = Connection::open(store.path()).unwrap();
        let persons = plan(
            &c,
            "SELECT person FROM leaf_by_account
             WHERE segment = ?1 AND account = ?2
               AND time_us >= ?3 AND time_us < ?4
               AND reveals = 1 AND person IS NOT NULL",
        );
        assert!(
            persons.contains("SEARCH leaf_by_account USING PRIMARY KEY (segment=? AND account=? AND time_us>? AND time_us<?)"),
            "{persons}"
        );
        for (table, column) in [
            ("leaf_by_account", "account"),
            ("leaf_by_organisation", "organisation"),
            ("leaf_by_person", "person"),
        ] {
            let p = plan(
                &c,
                &format!(
                    "SELECT time_us, idx FROM {table}
                     WHERE segment = ?1 AND {column} = ?2
                       AND time_us >= ?3 AND time_us < ?4 AND (time_us, idx) > (?5, ?6)
                     ORDER BY time_us, idx LIMIT ?7"
                ),
            );
            assert!(
                p.contains(&format!("SEARCH {table} USING PRIMARY KEY")),
                "{p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
        let tail = plan(
            &c,
            "SELECT person FROM leaf
             WHERE idx >= ?1 AND account = ?2
               AND time_us >= ?3 AND time_us < ?4
               AND reveals = 1 AND person IS NOT NULL",
        );
        assert!(
            tail.contains("SEARCH leaf USING INTEGER PRIMARY KEY (rowid>?)"),
            "{tail}"
        );
    }

    /// A ledger written before the segment tables existed gets them for
    /// its complete segments when it is opened, and they hold exactly the
    /// leaves' keys; the tail stays unindexed.
    #[tokio::test]
    async fn migration_indexes_an_existing_ledger() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            let first = migrate::SQLITE[0];
            c.execute_batch(first.sql).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT;",
            )
            .unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (1, ?1, ?2, 'then')",
                params![first.name, first.checksum()],
            )
            .unwrap();
            // Not real leaves: only the columns matter here.
            c.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
                 INSERT INTO leaf SELECT i, i / 3, i % 7, i % 3,
                     CASE WHEN i % 5 = 0 THEN NULL ELSE i % 101 END, i % 2, x'00', x'00'
                 FROM n;",
            )
            .unwrap();
        }
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let c = Connection::open(store.path()).unwrap();
        assert_eq!(indexed_segments(&c).unwrap(), 2);
        assert_eq!(index_problems(&c).unwrap(), vec![]);
        let persons: i64 = c
            .query_row("SELECT count(*) FROM leaf_by_person", [], |r| r.get(0))
            .unwrap();
        assert_eq!(persons, 2 * 16_384 - 2 * 16_384 / 5 - 1);
    }

    fn row(i: u64) -> LeafRow {
        let i64_ = i as i64;
        LeafRow {
            index: i,
            time: i64_ / 3,
            account: i64_ % 7,
            organisation: i64_ % 3,
            person: (!i.is_multiple_of(5)).then_some(i64_ % 101),
            reveals: i.is_multiple_of(2),
            data: vec![0],
            nodes: vec![0],
            receipt: None,
        }
    }

    async fn append_range(w: &mut Box<dyn LedgerWriter>, from: u64, to: u64, batch: u64) {
        let mut at = from;
        while at < to {
            let end = to.min(at + batch);
            w.append(at, (at..end).map(row).collect()).await.unwrap();
            at = end;
        }
    }

    /// A segment's keys go in slice by slice after it completes; a writer
    /// that stops half-way (closed, or crashed: the tables are only ever
    /// written inside append transactions) is resumed by the next one.
    #[tokio::test]
    async fn segments_are_indexed_in_slices_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let check = || {
            let c = Connection::open(store.path()).unwrap();
            (indexed_segments(&c).unwrap(), index_problems(&c).unwrap())
        };
        let mut w = store.writer().await.unwrap();
        append_range(&mut w, 0, 16_384 + 30, 10).await;
        // Three slices of 1,024 so far: listed only once all are in.
        assert_eq!(check(), (0, vec![]));
        w.close().await;
        drop(w);
        let mut w = store.writer().await.unwrap();
        append_range(&mut w, 16_384 + 30, 16_384 + 500, 10).await;
        assert_eq!(check(), (1, vec![]));
        // One batch completing two segments at once.
        append_range(&mut w, 16_384 + 500, 3 * 16_384 + 7, 40_000).await;
        assert_eq!(check().1, vec![]);
        append_range(&mut w, 3 * 16_384 + 7, 3 * 16_384 + 100, 50).await;
        assert_eq!(check(), (3, vec![]));
    }
}
