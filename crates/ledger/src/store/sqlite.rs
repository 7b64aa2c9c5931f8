//! SQLite backend: the file `ledger.db` in the data directory, apart from
//! the registry's file. WAL journal, `synchronous = FULL` on the writer so a
//! commit is on disk before it returns. Readers use their own read-only
//! connections on tokio's blocking pool; the single writer owns one
//! connection and the lock file `ledger.lock` for as long as it lives.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use rempart_sql::SqliteReaders;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::runs::{self, Run, RunDb, RunIndexer};
use super::{
    GROUP_LEVEL, IndexProblem, LeafRow, LedgerStore, LedgerWriter, QueryRange, RawEntry,
    StoreError, StoredCheckpoint, TILE_LEVEL, TileGroups, UPPER_LEVEL, UPPER_ROWS, migrate,
    node_from_column, node_location, stored_nodes, subtree_of, subtree_of_groups, to_i64, to_u64,
};
use crate::leaf::{AccountId, PersonId, Timestamp};
use crate::merkle::{Hash, NodeId, leaf_hash};
use crate::store::posting::{Kind, LeafKeys, StoredChunk};

/// File name of the ledger inside the data directory.
pub const FILE_NAME: &str = "ledger.db";
/// Lock file held by the single writer.
pub const LOCK_FILE_NAME: &str = "ledger.lock";

const READERS: usize = 4;

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

/// The `subtree` row of a tile, read from the covering index of the rows
/// holding hashes of `UPPER_LEVEL` and up.
fn upper_nodes_sql() -> String {
    format!("SELECT nodes FROM subtree INDEXED BY subtree_upper WHERE tile = ?1 AND {UPPER_ROWS}")
}

/// Hashes of complete subtrees: those of level `TILE_LEVEL` and up from the
/// `subtree` row of the tile whose last leaf completes them, those of
/// levels `GROUP_LEVEL` to `TILE_LEVEL` from their tile's `tile_level4`
/// row, the others (and those of a tile without that row) recomputed from
/// their leaves (at most 128 of them: a lower subtree lies in one tile).
/// Hashes of `UPPER_LEVEL` and up are read from the covering index that
/// packs their rows (the planner would pick the table's key).
fn nodes_of(conn: &Connection, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
    let mut stored = conn.prepare_cached("SELECT nodes FROM subtree WHERE tile = ?1")?;
    let mut upper = conn.prepare_cached(&upper_nodes_sql())?;
    let mut grouped = conn.prepare_cached("SELECT hashes FROM tile_level4 WHERE tile = ?1")?;
    // A proof asks for up to four hashes of one tile's level-4 row.
    let mut level4: Option<(u64, Option<Vec<u8>>)> = None;
    let mut leaves =
        conn.prepare_cached("SELECT data FROM leaf WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")?;
    ids.iter()
        .map(|id| {
            let (leaf, _) = node_location(*id);
            let missing = || StoreError::MissingNode {
                level: id.level,
                index: id.index,
                leaf,
            };
            if id.level >= TILE_LEVEL {
                let from = if id.level >= UPPER_LEVEL {
                    &mut upper
                } else {
                    &mut stored
                };
                let nodes: Option<Vec<u8>> = from
                    .query_row([to_i64(leaf >> TILE_LEVEL, "tile index")?], |r| r.get(0))
                    .optional()?;
                return match nodes {
                    Some(n) => node_from_column(*id, &n, TILE_LEVEL),
                    None => Err(missing()),
                };
            }
            if id.level >= GROUP_LEVEL {
                let tile = leaf >> TILE_LEVEL;
                if level4.as_ref().is_none_or(|(t, _)| *t != tile) {
                    let row: Option<Vec<u8>> = grouped
                        .query_row([to_i64(tile, "tile index")?], |r| r.get(0))
                        .optional()?;
                    level4 = Some((tile, row));
                }
                if let Some((_, Some(groups))) = &level4 {
                    return subtree_of_groups(*id, groups);
                }
            }
            let mut rows = leaves.query([
                to_i64(id.first_leaf(), "leaf index")?,
                to_i64(leaf, "leaf index")?,
            ])?;
            let mut hashes = Vec::with_capacity(1 << id.level);
            while let Some(r) = rows.next()? {
                hashes.push(leaf_hash(blob(r, 0)?));
            }
            subtree_of(*id, hashes)
        })
        .collect()
}

/// The run index's statements on a SQLite connection (SQL of
/// [`Kind::sql`]).
pub(crate) struct SqliteRuns<'c>(pub &'c Connection);

fn chunk_row(r: &Row<'_>) -> rusqlite::Result<StoredChunk> {
    Ok(StoredChunk {
        key: r.get(0)?,
        time_off: r.get(1)?,
        idx_off: r.get(2)?,
        blob: r.get(3)?,
    })
}

impl RunDb for SqliteRuns<'_> {
    fn size(&mut self) -> Result<i64, StoreError> {
        to_i64(size_of(self.0)?, "leaf count")
    }

    fn runs(&mut self) -> Result<Vec<Run>, StoreError> {
        let mut stmt = self.0.prepare_cached(runs::RUNS_SQL)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(Run {
                id: r.get(0)?,
                level: r.get(1)?,
                first: r.get(2)?,
                end: r.get(3)?,
                min_time: r.get(4)?,
                max_time: r.get(5)?,
                state: r.get(6)?,
                format: runs::run_format(r.get(7)?)?,
            });
        }
        Ok(out)
    }

    fn leaf_keys(&mut self, from: i64, to: i64) -> Result<Vec<LeafKeys>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT idx, data FROM leaf WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )?;
        let mut rows = stmt.query([from, to])?;
        let mut keys = Vec::new();
        while let Some(r) = rows.next()? {
            if let Some(k) = LeafKeys::decode(r.get(0)?, blob(r, 1)?) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    fn leaf_data(&mut self, idx: &[i64]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT data FROM leaf WHERE idx = ?1")?;
        idx.iter()
            .map(|i| Ok(stmt.query_row([i], |r| r.get(0))?))
            .collect()
    }

    fn chunks_after(
        &mut self,
        kind: Kind,
        run: i64,
        after: (i64, i64, i64),
        limit: i64,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let mut stmt = self.0.prepare_cached(kind.sql().fetch)?;
        let rows = stmt.query_map(params![run, after.0, after.1, after.2, limit], chunk_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn last_chunk(&mut self, kind: Kind, run: i64) -> Result<Option<StoredChunk>, StoreError> {
        Ok(self
            .0
            .prepare_cached(kind.sql().last)?
            .query_row([run], chunk_row)
            .optional()?)
    }

    fn insert_chunk(&mut self, kind: Kind, run: i64, chunk: StoredChunk) -> Result<(), StoreError> {
        self.0.prepare_cached(kind.sql().insert)?.execute(params![
            run,
            chunk.key,
            chunk.time_off,
            chunk.idx_off,
            chunk.blob
        ])?;
        Ok(())
    }

    fn delete_chunks(&mut self, kind: Kind, run: i64, keys: i64) -> Result<usize, StoreError> {
        Ok(self
            .0
            .prepare_cached(kind.sql().delete)?
            .execute(params![run, keys])?)
    }

    fn insert_run(&mut self, run: &Run) -> Result<i64, StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO run (level, first_leaf, end_leaf, min_time, max_time, state, format)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                run.level,
                run.first,
                run.end,
                run.min_time,
                run.max_time,
                run.state,
                run.format.column()
            ])?;
        Ok(self.0.last_insert_rowid())
    }

    fn set_state(&mut self, id: i64, from: i64, to: i64) -> Result<usize, StoreError> {
        Ok(self
            .0
            .prepare_cached("UPDATE run SET state = ?3 WHERE id = ?1 AND state = ?2")?
            .execute(params![id, from, to])?)
    }

    fn delete_run(&mut self, id: i64) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM run WHERE id = ?1 AND state = 2")?
            .execute([id])?;
        Ok(())
    }
}

/// Column `i` of `r` as a blob, not copied.
fn blob<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r [u8], StoreError> {
    r.get_ref(i)?
        .as_blob()
        .map_err(|e| StoreError::Corrupt(format!("a leaf's data: {e}")))
}

fn leaf_row(r: &Row<'_>) -> Result<LeafRow, StoreError> {
    LeafRow::decoded(r.get(0)?, r.get(1)?)
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

    fn lowest_stored_level(&self) -> u8 {
        TILE_LEVEL
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| nodes_of(c, &ids)).await
    }

    async fn leaves(&self, from: u64, count: usize) -> Result<Vec<LeafRow>, StoreError> {
        let from = to_i64(from, "leaf index")?;
        let end = from.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
        self.read(move |c| {
            // One snapshot for the leaves and their tiles' hashes.
            let tx = c.unchecked_transaction()?;
            let mut stmt = tx.prepare_cached(
                "SELECT idx, data FROM leaf WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let mut rows = stmt.query([from, end])?;
            let mut leaves = Vec::new();
            while let Some(r) = rows.next()? {
                leaves.push(leaf_row(r)?);
            }
            drop(rows);
            // Each tile's hashes belong to its last leaf.
            let mut stmt = tx.prepare_cached(
                "SELECT s.tile, s.nodes, g.hashes FROM subtree s
                 LEFT JOIN tile_level4 g ON g.tile = s.tile
                 WHERE s.tile >= ?1 AND s.tile < ?2 ORDER BY s.tile",
            )?;
            // Tiles whose last leaf lies in [from, end).
            let mut rows = stmt.query([from >> TILE_LEVEL, end >> TILE_LEVEL])?;
            while let Some(r) = rows.next()? {
                let tile: i64 = r.get(0)?;
                let last = tile.saturating_mul(256).saturating_add(255);
                if let Some(row) = last
                    .checked_sub(from)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| leaves.get_mut(i))
                    .filter(|row| i64::try_from(row.index) == Ok(last))
                {
                    row.nodes = r.get(1)?;
                    row.level4 = r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
                }
            }
            Ok(leaves)
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
        let range = *range;
        // One snapshot for the runs, their postings and the tail.
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            runs::query(&mut SqliteRuns(&tx), &range)
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
            runs::persons_revealed_to(&mut SqliteRuns(&tx), account, from, to)
        })
        .await
    }

    async fn index_problems(&self) -> Result<Vec<IndexProblem>, StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            runs::index_problems(&mut SqliteRuns(&tx))
        })
        .await
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
    runs: Option<RunIndexer>,
    /// Set when the index's work failed: appends go on without it (queries
    /// scan the leaves its runs do not cover) until then, when it is
    /// reloaded from the database and tried again.
    index_paused_until: Option<std::time::Instant>,
    /// The level-4 hashes of the tile being filled.
    groups: TileGroups,
}

/// How long the index rests after its work failed.
const INDEX_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

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
                runs: None,
                index_paused_until: None,
                groups: TileGroups::default(),
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
                c.runs = None;
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
/// and moves the query index forward, inside the caller's transaction.
fn append_rows(w: &mut WriterConn, first: u64, rows: &[LeafRow]) -> Result<(), StoreError> {
    let c = &w.db;
    let found = size_of(c)?;
    if found != first {
        return Err(StoreError::Conflict {
            expected: first,
            found,
        });
    }
    if !w.groups.follows(first) {
        // Once a writer's life, or after a failed append.
        let hashes = match nodes_of(c, &TileGroups::before(first)) {
            Ok(h) => Some(h),
            // A damaged tile gets no level-4 row; `audit verify` says why.
            Err(StoreError::MissingNode { .. }) => None,
            Err(e) => return Err(e),
        };
        w.groups.prime(first, hashes);
    }
    let mut stmt = c.prepare_cached("INSERT INTO leaf (idx, data) VALUES (?1, ?2)")?;
    let mut subtree = c.prepare_cached("INSERT INTO subtree (tile, nodes) VALUES (?1, ?2)")?;
    let mut grouped = c.prepare_cached("INSERT INTO tile_level4 (tile, hashes) VALUES (?1, ?2)")?;
    for row in rows {
        let idx = to_i64(row.index, "leaf index")?;
        stmt.execute(params![idx, row.data])?;
        if let Some(nodes) = stored_nodes(&row.nodes) {
            subtree.execute(params![idx >> TILE_LEVEL, nodes])?;
        }
        if let Some(level4) = w.groups.push(row.index, &row.nodes) {
            grouped.execute(params![idx >> TILE_LEVEL, level4])?;
        }
    }
    drop((stmt, subtree, grouped));
    w.index(rows)
}

impl WriterConn {
    /// Moves the query index forward inside a savepoint of the append's
    /// transaction. The leaves do not depend on it: if its work fails, only
    /// that work is rolled back, the failure is logged, and the appends go
    /// on while it rests (queries scan what its runs do not cover yet).
    fn index(&mut self, rows: &[LeafRow]) -> Result<(), StoreError> {
        if let Some(until) = self.index_paused_until {
            if std::time::Instant::now() < until {
                return Ok(());
            }
            self.index_paused_until = None;
            self.runs = None;
        }
        let c = &self.db;
        c.prepare_cached("SAVEPOINT runs")?.execute([])?;
        let db = &mut SqliteRuns(c);
        let worked = match &mut self.runs {
            Some(r) => r.appended(db, rows),
            // Loaded after the insert, so it must not see the new rows
            // twice: it reads them, and is told about none.
            None => RunIndexer::load(db, true).and_then(|r| self.runs.insert(r).appended(db, &[])),
        };
        match worked {
            Ok(()) => {
                c.prepare_cached("RELEASE runs")?.execute([])?;
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger: the query index failed; appends go on, it retries in 30 s");
                c.execute_batch("ROLLBACK TO runs; RELEASE runs;")?;
                self.runs = None;
                self.index_paused_until = Some(std::time::Instant::now() + INDEX_RETRY);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count() as i64;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(0..n), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    /// Queries seek each run by key and cursor, merges read each source
    /// in key order, deletions go by key, the tail is a range of the leaf
    /// table, and proofs' upper hashes come from their covering index: no
    /// sort, no scan of a whole table.
    #[tokio::test]
    async fn index_statements_seek() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let c = Connection::open(store.path()).unwrap();
        for kind in crate::store::posting::Kind::ALL {
            let (table, sql) = (kind.table(), kind.sql());
            for (sql, wanted) in [
                (sql.fetch, "(run=? AND (key,time_last,idx_last)>(?,?,?))"),
                (sql.last, "(run=?)"),
                (sql.delete, "(run=? AND key<?)"),
            ] {
                let p = plan(&c, sql);
                assert!(
                    p.contains(&format!("SEARCH {table} USING PRIMARY KEY {wanted}")),
                    "{p}"
                );
                assert!(!p.contains("TEMP B-TREE"), "{p}");
            }
        }
        let tail = plan(
            &c,
            "SELECT idx, data FROM leaf WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        );
        assert!(
            tail.contains("SEARCH leaf USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{tail}"
        );
        // Proofs' upper hashes: from the index alone, not the table.
        let upper = plan(&c, &upper_nodes_sql());
        assert!(
            upper.contains("SEARCH subtree USING COVERING INDEX subtree_upper (tile=?)"),
            "{upper}"
        );
    }

    /// Leaves with few accounts, organisations and persons, and times that
    /// go back and forth (as leaves from concurrent requests do), so that
    /// keys span many chunks and time order is not index order.
    pub(crate) fn leaves(from: u64, to: u64) -> Vec<crate::leaf::AuditLeaf> {
        let mut g = crate::bench::Synthetic::new(from, from);
        (from..to)
            .map(|i| {
                let mut l = g.leaf();
                let i = i as i64;
                l.time = Timestamp(1_000_000 + (i / 5) * 1_000 - (i % 3) * 700);
                l.account = AccountId::new(1 + (i * 7919) % 7);
                l.organisation = crate::leaf::OrganisationId::new(1 + i % 3);
                l.person = (i % 11 != 0).then(|| PersonId::new(1 + (i * 104_729) % 53));
                l
            })
            .collect()
    }

    pub(crate) fn rows_of(
        first: u64,
        leaves: &[crate::leaf::AuditLeaf],
        frontier: &mut crate::merkle::Frontier,
    ) -> Vec<LeafRow> {
        leaves
            .iter()
            .zip(first..)
            .map(|(l, index)| {
                let data = l.encode().unwrap();
                let mut nodes = Vec::new();
                frontier.push_into(leaf_hash(&data), &mut nodes);
                LeafRow {
                    index,
                    time: l.time.0,
                    account: l.account.get(),
                    organisation: l.organisation.get(),
                    person: l.person.map(|p| p.get()),
                    reveals: l.reveals_person_data(),
                    data,
                    nodes,
                    level4: Vec::new(),
                    receipt: None,
                }
            })
            .collect()
    }

    /// Every subject's leaves as the index answers them, page by page,
    /// against a scan of `all`.
    /// The store holds `rows` (1,000 leaves, as appended with every hash
    /// from level 0): their bytes and query keys read back, the hashes of
    /// level 8 and up with each tile's last leaf, and every complete
    /// subtree's hash (lower ones recomputed), none beyond the log.
    pub(crate) async fn assert_leaves_and_hashes(store: &dyn LedgerStore, rows: &[LeafRow]) {
        let back = store.leaves(0, 2_000).await.unwrap();
        assert_eq!(back.len(), rows.len());
        for (b, r) in back.iter().zip(rows) {
            assert_eq!(
                (b.index, b.time, b.account, b.person, b.reveals, &b.data),
                (r.index, r.time, r.account, r.person, r.reveals, &r.data)
            );
            assert_eq!(b.nodes, r.nodes.get(256..).unwrap_or_default());
        }
        let ids: Vec<NodeId> = (0..10u8)
            .flat_map(|level| (0..(1_000u64 >> level)).map(move |i| NodeId::new(level, i)))
            .collect();
        let hashes = store.nodes(&ids).await.unwrap();
        for (id, h) in ids.iter().zip(hashes) {
            let (leaf, offset) = node_location(*id);
            assert_eq!(
                &rows[leaf as usize].nodes[offset..offset + 32],
                h.as_slice(),
                "{id:?}"
            );
        }
        assert!(store.nodes(&[NodeId::new(3, 125)]).await.is_err());
    }

    pub(crate) async fn assert_queries_match(
        store: &dyn LedgerStore,
        all: &[crate::leaf::AuditLeaf],
    ) {
        use crate::store::{QueryRange, Subject};
        let subjects = (1..8)
            .map(|a| Subject::Account(AccountId::new(a)))
            .chain((1..4).map(|o| Subject::Organisation(crate::leaf::OrganisationId::new(o))))
            .chain((1..54).map(|p| Subject::Person(PersonId::new(p))));
        let windows = [
            (Timestamp::MIN, Timestamp::MAX),
            (Timestamp(1_200_000), Timestamp(1_900_000)),
        ];
        for subject in subjects {
            for (from, to) in windows {
                let mut wanted: Vec<(i64, u64)> = all
                    .iter()
                    .zip(0u64..)
                    .filter(|(l, _)| {
                        l.time >= from
                            && l.time < to
                            && match subject {
                                Subject::Account(a) => l.account == a,
                                Subject::Organisation(o) => l.organisation == o,
                                Subject::Person(p) => l.person == Some(p),
                            }
                    })
                    .map(|(l, i)| (l.time.0, i))
                    .collect();
                wanted.sort_unstable();
                let mut range = QueryRange {
                    subject,
                    from,
                    to,
                    after: None,
                    limit: 37,
                };
                let mut got = Vec::new();
                loop {
                    let page = store.query(&range).await.unwrap();
                    for e in &page {
                        assert_eq!(e.data, all[e.index as usize].encode().unwrap());
                    }
                    got.extend(page.iter().map(|e| (e.time, e.index)));
                    match page.last() {
                        Some(e) if page.len() == 37 => {
                            range.after = Some((Timestamp(e.time), e.index))
                        }
                        _ => break,
                    }
                }
                assert_eq!(got, wanted, "{subject:?} {from:?}..{to:?}");
            }
        }
        for a in 1..8 {
            let account = AccountId::new(a);
            let (from, to) = (Timestamp(1_100_000), Timestamp(2_000_000));
            let mut wanted: Vec<PersonId> = all
                .iter()
                .filter(|l| {
                    l.account == account && l.time >= from && l.time < to && l.reveals_person_data()
                })
                .filter_map(|l| l.person)
                .collect();
            wanted.sort();
            wanted.dedup();
            assert_eq!(
                store.persons_revealed_to(account, from, to).await.unwrap(),
                wanted
            );
        }
    }

    pub(crate) fn run_levels(store: &SqliteLedgerStore) -> Vec<(i64, i64)> {
        let c = Connection::open(store.path()).unwrap();
        let mut stmt = c
            .prepare("SELECT level, state FROM run ORDER BY first_leaf, level DESC")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Runs are built a slice per commit, merged up to the top level and
    /// the merged ones deleted; a writer closed half-way, or whose index
    /// work is lost with its transaction, is resumed by the next one; and
    /// at every step queries answer exactly what a scan of the leaves does
    /// and the check finds nothing.
    #[tokio::test]
    async fn runs_are_built_merged_resumed_and_answer_like_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 9_000);
        let mut w = store.writer().await.unwrap();
        let mut at = 0usize;
        let mut step = 0;
        for batch in [1usize, 7, 50, 300, 3, 1_000, 2, 64, 900, 5_000] {
            let end = (at + batch).min(all.len());
            let rows = rows_of(at as u64, &all[at..end], &mut frontier);
            w.append(at as u64, rows).await.unwrap();
            at = end;
            step += 1;
            if step % 3 == 0 {
                // A new writer: resumes from the tables alone.
                w.close().await;
                drop(w);
                w = store.writer().await.unwrap();
            }
            assert_eq!(store.index_problems().await.unwrap(), vec![]);
            assert_queries_match(&store, &all[..at]).await;
        }
        while at < all.len() {
            let end = (at + 97).min(all.len());
            let rows = rows_of(at as u64, &all[at..end], &mut frontier);
            w.append(at as u64, rows).await.unwrap();
            at = end;
        }
        let all = settle(&store, &mut w, all, &mut frontier).await;
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        // Chunks are cut by bytes too (with the count's varint).
        let c = Connection::open(store.path()).unwrap();
        for table in ["posting_account", "posting_organisation", "posting_person"] {
            let longest: i64 = c
                .query_row(
                    &format!("SELECT max(length(postings)) FROM {table}"),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                longest as usize <= crate::store::posting::BLOB_BUDGET + 2,
                "{table}: {longest}"
            );
        }
        // Every complete segment in a live run, each level below the top
        // with fewer than 4 runs: the greedy decomposition, largest first.
        let mut wanted = Vec::new();
        let mut left = all.len() as i64 >> 6 << 6;
        for level in (0..=3).rev() {
            let size = 64i64 << (2 * level);
            while left >= size {
                wanted.push((level, 1));
                left -= size;
            }
        }
        assert_eq!(run_levels(&store), wanted);
    }

    /// Appends small batches until the index has nothing left to build,
    /// merge or delete (its work goes a slice per commit); returns `all`
    /// with the leaves added.
    pub(crate) async fn settle(
        store: &SqliteLedgerStore,
        w: &mut Box<dyn LedgerWriter>,
        mut all: Vec<crate::leaf::AuditLeaf>,
        frontier: &mut crate::merkle::Frontier,
    ) -> Vec<crate::leaf::AuditLeaf> {
        for _ in 0..2_000 {
            if run_levels(store).iter().all(|&(_, state)| state == 1) {
                return all;
            }
            let at = all.len() as u64;
            let more = leaves(at, at + 8);
            w.append(at, rows_of(at, &more, frontier)).await.unwrap();
            all.extend(more);
        }
        panic!("the index never settles: {:?}", run_levels(store));
    }

    /// The hashes of level 8 and up live in `subtree`, one row per complete
    /// tile (not scattered over the leaf rows, where proofs read them at
    /// random once the ledger outgrew memory), and are read back, for
    /// proofs and for the verifier, as the writer computed them.
    #[tokio::test]
    async fn tile_hashes_live_in_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 1_000);
        let rows = rows_of(0, &all, &mut frontier);
        let mut w = store.writer().await.unwrap();
        w.append(0, rows.clone()).await.unwrap();
        let c = Connection::open(store.path()).unwrap();
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM subtree"), 3);
        assert_eq!(
            count("SELECT count(*) FROM leaf WHERE nodes IS NOT NULL"),
            0
        );
        let back = store.leaves(0, 1_000).await.unwrap();
        for (b, r) in back.iter().zip(&rows) {
            assert_eq!(
                b.nodes,
                r.nodes.get(256..).unwrap_or_default(),
                "{}",
                b.index
            );
        }
        // A page that ends inside a tile, or starts after its last leaf.
        let page = store.leaves(300, 212).await.unwrap();
        assert_eq!(page[211].nodes, rows[511].nodes[256..]);
        assert!(
            store
                .leaves(512, 255)
                .await
                .unwrap()
                .iter()
                .all(|r| r.nodes.is_empty())
        );
        let ids = [NodeId::new(8, 1), NodeId::new(9, 0), NodeId::new(8, 2)];
        let hashes = store.nodes(&ids).await.unwrap();
        for (id, hash) in ids.iter().zip(hashes) {
            let (leaf, offset) = node_location(*id);
            let full = &rows[leaf as usize].nodes;
            assert_eq!(&hash[..], &full[offset..][..32]);
        }
        // Level 8 and up of a tile not complete yet: missing.
        assert!(store.nodes(&[NodeId::new(8, 3)]).await.is_err());
    }

    /// The leaves do not depend on the index: when its work fails (here a
    /// trigger refuses every posting), appends still commit, nothing of the
    /// failed slice stays, and queries answer from the leaves the runs do
    /// not cover.
    #[tokio::test]
    async fn a_failing_index_never_blocks_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        Connection::open(store.path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER no_postings BEFORE INSERT ON posting_person
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 600);
        let mut w = store.writer().await.unwrap();
        for at in (0..600).step_by(50) {
            let rows = rows_of(at as u64, &all[at..at + 50], &mut frontier);
            w.append(at as u64, rows).await.unwrap();
        }
        assert_eq!(store.size().await.unwrap(), 600);
        let c = Connection::open(store.path()).unwrap();
        let persons: i64 = c
            .query_row("SELECT count(*) FROM posting_person", [], |r| r.get(0))
            .unwrap();
        assert_eq!(persons, 0);
        assert!(run_levels(&store).iter().all(|&(_, state)| state == 1));
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
    }

    /// A ledger in the format before 0004 (columns and every level's
    /// hashes per leaf, segment tables) keeps its leaves and the hashes of
    /// level 8 and up, answers the same queries (from its tail until the
    /// writer indexes it) and the same subtree hashes.
    #[tokio::test]
    async fn migration_compacts_an_existing_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(0, 1_000);
        let mut frontier = crate::merkle::Frontier::new();
        let rows = rows_of(0, &all, &mut frontier);
        {
            let mut c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            rempart_sql::migrate_sqlite::<StoreError>(&mut c, &migrate::SQLITE[..3]).unwrap();
            for r in &rows {
                c.execute(
                    "INSERT INTO leaf (idx, time_us, account, organisation, person, reveals,
                                       data, nodes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        r.index as i64,
                        r.time,
                        r.account,
                        r.organisation,
                        r.person,
                        r.reveals,
                        r.data,
                        r.nodes
                    ],
                )
                .unwrap();
            }
        }
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        assert_leaves_and_hashes(&store, &rows).await;
        assert_queries_match(&store, &all).await;
        let mut w = store.writer().await.unwrap();
        let more = leaves(1_000, 1_001);
        w.append(1_000, rows_of(1_000, &more, &mut frontier))
            .await
            .unwrap();
        let all: Vec<_> = all.into_iter().chain(more).collect();
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        let all = settle(&store, &mut w, all, &mut frontier).await;
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        assert!(!run_levels(&store).is_empty());
    }
}
