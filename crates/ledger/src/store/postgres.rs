//! PostgreSQL backend: the ledger's own schema (`ledger` by default), kept
//! apart from the registry's, and its own role (`rempart_ledger_writer` by
//! default, NOLOGIN) holding only USAGE on the schema and SELECT + INSERT on
//! its tables. Migrations run as the connecting user; afterwards every
//! connection of the pool, and the writer's, does `SET ROLE` to that role,
//! so no code path through this store can UPDATE, DELETE or TRUNCATE
//! history: PostgreSQL refuses. (Triggers refuse too, should the owner try.)
//!
//! Leaves are kept 16 to a row (`leaf_bundle`, migration 0008, see
//! `postgres/bundle.rs`); hashes of level 8 and up are
//! kept a row per 256-leaf tile, the lower ones recomputed from the tile's
//! leaves; queries read runs of postings that the writer's indexer builds
//! apart from the appends (`postgres/index.rs`, migration 0007).
//!
//! The single writer has its own connection holding a session advisory
//! lock proper to the schema; a second writer, in this process or
//! another, fails with [`StoreError::WriterBusy`]. Other processes append
//! through a [`PgStager`] into the `staged` table, which the writer
//! integrates (migration 0003 says how). The lock lives as long as the
//! writer's connection: a writer whose process dies or whose connection
//! breaks has lost it (TCP keepalives bound how long the server takes to
//! notice a silent peer), and every write goes through that connection, so
//! a writer that lost the lock can no longer write.

use std::collections::HashMap;
use std::pin::pin;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use rempart_sql::{describe, redact_url};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use super::{
    GROUP_LEVEL, IndexProblem, LeafRow, LedgerStager, LedgerStore, LedgerWriter, QueryRange,
    RawEntry, StagedLeaf, StoreError, StoredCheckpoint, TILE_LEVEL, TileGroups, UPPER_LEVEL,
    migrate, node_from_column, runs, stored_nodes, subtree_of, subtree_of_groups, to_i64, to_u64,
};
use crate::leaf::{AccountId, PersonId, Timestamp};
use crate::merkle::{Hash, NodeId, leaf_hash};

mod bundle;
mod index;

/// Schema of the ledger unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "ledger";
/// Role the ledger is written through unless told otherwise.
pub const DEFAULT_ROLE: &str = "rempart_ledger_writer";

const POOL_SIZE: usize = 8;
/// Column types of a bundle row, in `SELECT first, count, data` order.
const BUNDLE_TYPES: &[Type] = &[Type::INT8, Type::INT4, Type::BYTEA];

/// The number of leaves (one past the last bundle's last leaf).
pub(super) const SIZE_QUERY: &str =
    "SELECT coalesce((SELECT first + count FROM leaf_bundle ORDER BY first DESC LIMIT 1), 0)";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most leaves one staging transaction may hold: a receipt is
/// `batch * 65536 + ordinal`.
pub const MAX_STAGED_BATCH: usize = 65_536;
/// Session settings of the writer's and the stagers' connections: durable
/// before return even if the server defaults otherwise, and a dead peer
/// noticed (its writer lock released) within about 8 seconds.
const DURABLE_SESSION: &str = "SET synchronous_commit = on; SET tcp_keepalives_idle = 5;
     SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; SET jit = off;
     SET max_parallel_workers_per_gather = 0;";
/// Every connection of the store: no JIT compilation. The ledger's
/// statements are short index scans; a LATERAL join's generic plan is
/// estimated above `jit_above_cost` and was compiled at each execution
/// (9 ms of a 10 ms proof at 10 M leaves).
/// Nor parallel plans: a generic plan once chose a parallel scan of a whole
/// table for what an index answers.
const PLAIN_PLANS: &str = "SET jit = off; SET max_parallel_workers_per_gather = 0";

/// Plans made once per connection for a proof's statements, whatever their
/// arguments: left to choose, PostgreSQL planned them afresh at every
/// execution (the generic plan's estimate never won), 0.1 to 0.25 ms of a
/// proof's 0.35 ms when cached, for an execution of 0.05 ms. Their generic
/// plans are the ones `proofs_read_upper_hashes_from_their_index` checks:
/// lookups by key only. Not for the other statements: generic plans of
/// range queries were once scans of whole tables.
const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

/// Where and as whom the ledger is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct PgLedgerConfig {
    /// Connection URL (`postgres://user@host:port/db`).
    pub url: String,
    /// The ledger's schema.
    pub schema: String,
    /// The INSERT-only role the store works as.
    pub role: String,
}

impl std::fmt::Debug for PgLedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedgerConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("role", &self.role)
            .finish()
    }
}

impl PgLedgerConfig {
    /// The default schema and role at `url`.
    pub fn new(url: &str) -> Self {
        PgLedgerConfig {
            url: url.to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            role: DEFAULT_ROLE.to_string(),
        }
    }

    /// Same, in another schema.
    pub fn with_schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_string();
        self
    }
}

/// The PostgreSQL ledger.
#[derive(Clone)]
pub struct PgLedgerStore {
    pool: Pool,
    /// Connections for [`BUNDLES_QUERY`] and [`TILES_QUERY`] alone, one
    /// pool each (a proof runs both at once), planned once per connection
    /// (see [`GENERIC_PLANS`]).
    proofs: (Pool, Pool),
    config: tokio_postgres::Config,
    schema: String,
    role: String,
    location: String,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(describe(&e))
    }
}

impl PgLedgerStore {
    /// Connects, creates the schema, role and tables if needed (as the
    /// connecting user), grants the role its rights, and opens a pool whose
    /// connections work as that role.
    pub async fn connect(config: &PgLedgerConfig) -> Result<Self, StoreError> {
        check_name(&config.schema, "schema")?;
        check_name(&config.role, "role")?;
        let location = format!("{} (schema {})", redact_url(&config.url), config.schema);
        let open_error = |reason: String| StoreError::Open {
            path: location.clone(),
            reason,
        };
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| open_error(describe(&e)))?;
        // Names were checked above: they need no quoting in options.
        let mut options = pg.get_options().unwrap_or_default().to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c search_path=");
        options.push_str(&config.schema);
        pg.options(options);
        if pg.get_application_name().is_none() {
            pg.application_name("rempart-ledger");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }

        // Migrations and grants, as the connecting user.
        let (mut client, conn) = pg
            .connect(NoTls)
            .await
            .map_err(|e| open_error(describe(&e)))?;
        let conn_task = tokio::spawn(conn);
        let setup = setup_schema(&mut client, &config.schema, &config.role).await;
        drop(client);
        let _ = conn_task.await;
        setup?;

        let set_role = format!("SET ROLE \"{}\"; {PLAIN_PLANS}", config.role);
        let store = PgLedgerStore {
            pool: pool_of(&pg, set_role.clone())?,
            proofs: (
                pool_of(&pg, format!("{set_role}; {GENERIC_PLANS}"))?,
                pool_of(&pg, format!("{set_role}; {GENERIC_PLANS}"))?,
            ),
            config: pg,
            schema: config.schema.clone(),
            role: config.role.clone(),
            location,
        };
        // Fail now, not at the first append, if the role cannot be taken.
        drop(store.pooled_client().await?);
        Ok(store)
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A connection of the pool, working as the INSERT-only role (for
    /// diagnostics and tests; the store's own queries use the same, its
    /// proofs two pools of their own).
    pub async fn pooled_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(describe(&e)))
    }
}

/// A pool of connections to `pg` that run `setup` when opened.
fn pool_of(pg: &tokio_postgres::Config, setup: String) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            // Fast: `Clean` would run DISCARD ALL, which resets the role.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let sql = setup.clone();
            Box::pin(async move { client.batch_execute(&sql).await.map_err(HookError::Backend) })
        }))
        .build()
        .map_err(|e| StoreError::Pool(describe(&e)))
}

/// Creates the schema, its tables and the role; grants the role its rights.
/// One transaction under an advisory lock, so concurrent openers queue.
async fn setup_schema(client: &mut Client, schema: &str, role: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    rempart_sql::migrate_postgres::<StoreError>(
        &tx,
        schema,
        lock_key("migrations", schema),
        migrate::POSTGRES,
    )
    .await?;
    // Roles belong to the cluster: a lock of their own, and a creation that
    // tolerates a racing creator elsewhere.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("role", role)],
    )
    .await?;
    tx.batch_execute(&format!(
        "DO $$
         BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE \"{role}\" NOLOGIN;
             END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         DO $$
         BEGIN
             IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                 EXECUTE format('GRANT %I TO %I', '{role}', current_user);
             END IF;
         END $$;
         GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\";
         REVOKE ALL ON ALL TABLES IN SCHEMA \"{schema}\" FROM \"{role}\";
         GRANT SELECT, INSERT ON leaf_bundle, checkpoint, subtree, tile_level4 TO \"{role}\";
         GRANT UPDATE (count, data) ON leaf_bundle TO \"{role}\";
         GRANT SELECT, INSERT, UPDATE, DELETE
             ON run, posting_account, posting_organisation, posting_person TO \"{role}\";
         GRANT SELECT, INSERT ON integrated TO \"{role}\";
         GRANT SELECT, INSERT, DELETE ON staged TO \"{role}\";
         GRANT USAGE ON SEQUENCE staged_batch TO \"{role}\";
         GRANT SELECT ON schema_migrations TO \"{role}\";"
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Schema and role names are spliced into SQL and connection options:
/// lowercase ASCII letters, digits and underscores, not starting with a
/// digit, at most 63 bytes, not a system name.
fn check_name(name: &str, what: &str) -> Result<(), StoreError> {
    // Not `public` either: the ledger's grants need a schema of its own.
    if rempart_sql::is_plain_name(name) && name != "public" {
        Ok(())
    } else {
        Err(StoreError::Open {
            path: format!("{what} {name:?}"),
            reason: format!(
                "a {what} name is 1 to 63 lowercase letters, digits or underscores, \
                 not starting with a digit, and not a system name"
            ),
        })
    }
}

/// Advisory lock key of one purpose on one name.
fn lock_key(purpose: &str, name: &str) -> i64 {
    rempart_sql::lock_key(&format!("rempart ledger {purpose} {name}"))
}

async fn size_of(client: &impl tokio_postgres::GenericClient) -> Result<u64, StoreError> {
    let next: i64 = client.query_one(SIZE_QUERY, &[]).await?.try_get(0)?;
    to_u64(next, "leaf count")
}

/// The half of what [`nodes_of`] needs that lies around the proven leaf:
/// the bundles `$1`. Bundles by their first leaf, not by ranges in a
/// LATERAL join: the generic plan of that join was a parallel scan of the
/// whole table (0.5 s a proof at 100 M leaves).
pub(super) const BUNDLES_QUERY: &str =
    "SELECT 1::int2, first, count, data FROM leaf_bundle WHERE first = ANY($1)";

/// The other half, run at the same time on another connection (a cold
/// proof's page reads then overlap instead of adding up): the tiles'
/// hashes `$1` (`$2` from the covering index of the upper ones), the
/// tiles' level-4 hashes `$3`, and the bundles `$4` only if their tile has
/// no level-4 hashes (an older or unfinished tile: the array is computed
/// once, before the scan, so that no bundle is read for nothing; in the
/// statement that reads `tile_level4`, so that both answers come from one
/// snapshot).
pub(super) const TILES_QUERY: &str =
    "SELECT 0::int2, tile, 0, nodes FROM subtree WHERE tile = ANY($1)
     UNION ALL
     SELECT 0::int2, tile, 0, nodes FROM subtree WHERE tile = ANY($2) AND length(nodes) >= 160
     UNION ALL
     SELECT 2::int2, tile, 0, hashes FROM tile_level4 WHERE tile = ANY($3)
     UNION ALL
     SELECT 1::int2, first, count, data FROM leaf_bundle
     WHERE first = ANY(ARRAY(SELECT b FROM unnest($4::int8[]) AS b
                             WHERE NOT EXISTS (SELECT FROM tile_level4 WHERE tile = b / 256)))";

/// Where [`nodes_of`] runs [`BUNDLES_QUERY`] and [`TILES_QUERY`], prepared:
/// two connections of the store, or the writer's one (the two statements
/// then pipelined).
pub(super) struct NodeReaders<'c> {
    /// The connection and statement of [`BUNDLES_QUERY`].
    pub bundles: (&'c Client, &'c tokio_postgres::Statement),
    /// The connection and statement of [`TILES_QUERY`].
    pub tiles: (&'c Client, &'c tokio_postgres::Statement),
}

/// The bundles holding leaves `first..=last` of one tile.
fn bundles_over(first: u64, last: u64, into: &mut Vec<i64>) -> Result<(), StoreError> {
    let (first, last) = (to_i64(first, "leaf index")?, to_i64(last, "leaf index")?);
    let mut b = bundle::bundle_of(first);
    while b <= last {
        into.push(b);
        b += bundle::BUNDLE;
    }
    Ok(())
}

/// Hashes of complete subtrees: those of level `TILE_LEVEL` and up from the
/// `subtree` row of the tile whose last leaf completes them, those of
/// levels `GROUP_LEVEL` to `TILE_LEVEL` from their tile's `tile_level4`
/// row, the others (and those of a tile without that row) recomputed from
/// their leaves (a lower subtree lies in one tile, a proof's within one or
/// two tiles). Rows of hashes of `UPPER_LEVEL` and up are read from the
/// covering index that packs them. No common snapshot is needed: what is
/// read is never changed once written, and anything missing is an error.
async fn nodes_of(readers: NodeReaders<'_>, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
    let (mut tiles, mut upper, mut grouped): (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
    // Per tile, the range of leaves its lowest subtrees need, and the range
    // those of levels 4 to 7 need if the tile has no level-4 hashes.
    let mut ranges: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    let mut if_ungrouped: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    for id in ids {
        let last = id.last_leaf();
        let tile = last >> TILE_LEVEL;
        if id.level >= UPPER_LEVEL {
            upper.push(to_i64(tile, "tile index")?);
        } else if id.level >= TILE_LEVEL {
            tiles.push(to_i64(tile, "tile index")?);
        } else {
            if id.level >= GROUP_LEVEL {
                grouped.push(to_i64(tile, "tile index")?);
            }
            let into = if id.level >= GROUP_LEVEL {
                &mut if_ungrouped
            } else {
                &mut ranges
            };
            let r = into.entry(tile).or_insert((id.first_leaf(), last));
            *r = (r.0.min(id.first_leaf()), r.1.max(last));
        }
    }
    grouped.sort_unstable();
    grouped.dedup();
    let (mut bundles, mut maybe) = (Vec::new(), Vec::new());
    for (first, last) in ranges.values() {
        bundles_over(*first, *last, &mut bundles)?;
    }
    for (first, last) in if_ungrouped.values() {
        bundles_over(*first, *last, &mut maybe)?;
    }
    maybe.retain(|b| !bundles.contains(b));
    let mut stored: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut level4: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut hashes: HashMap<i64, Hash> = HashMap::new();
    let near = async {
        if bundles.is_empty() {
            return Ok(Vec::new());
        }
        let (client, stmt) = readers.bundles;
        client.query(stmt, &[&bundles]).await
    };
    let far = async {
        let (client, stmt) = readers.tiles;
        client
            .query(stmt, &[&tiles, &upper, &grouped, &maybe])
            .await
    };
    let (near, far) = futures_util::future::join(near, far).await;
    for r in near?.into_iter().chain(far?) {
        let (what, at): (i16, i64) = (r.try_get(0)?, r.try_get(1)?);
        if what == 0 {
            stored.insert(at, r.try_get(3)?);
        } else if what == 2 {
            level4.insert(at, r.try_get(3)?);
        } else if let Some(leaves) = bundle::split(at, r.try_get(2)?, r.try_get(3)?) {
            // A damaged bundle gives no hashes: its subtrees are missing.
            for (idx, data) in leaves {
                hashes.insert(idx, leaf_hash(data));
            }
        }
    }
    ids.iter()
        .map(|id| {
            let last = id.last_leaf();
            if id.level >= TILE_LEVEL {
                let tile = to_i64(last >> TILE_LEVEL, "tile index")?;
                return match stored.get(&tile) {
                    Some(n) => node_from_column(*id, n, TILE_LEVEL),
                    None => Err(StoreError::MissingNode {
                        level: id.level,
                        index: id.index,
                        leaf: last,
                    }),
                };
            }
            if id.level >= GROUP_LEVEL {
                let tile = to_i64(last >> TILE_LEVEL, "tile index")?;
                if let Some(groups) = level4.get(&tile) {
                    return subtree_of_groups(*id, groups);
                }
            }
            let mut below = Vec::with_capacity(1 << id.level);
            for i in id.first_leaf()..=last {
                match hashes.get(&to_i64(i, "leaf index")?) {
                    Some(h) => below.push(*h),
                    None => break,
                }
            }
            subtree_of(*id, below)
        })
        .collect()
}

fn checkpoint_row(r: &Row) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: to_u64(r.try_get(0)?, "checkpoint size")?,
        time: Timestamp(r.try_get(1)?),
        note: r.try_get(2)?,
    })
}

#[async_trait]
impl LedgerStore for PgLedgerStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn writer(&self) -> Result<Box<dyn LedgerWriter>, StoreError> {
        let mut w = PgWriter {
            config: self.config.clone(),
            role: self.role.clone(),
            lock: lock_key("writer", &self.schema),
            schema: self.schema.clone(),
            client: None,
            insert: None,
            nodes: None,
            indexer: index::Indexer::start(
                self.pool.clone(),
                self.config.clone(),
                lock_key("indexer", &self.schema),
            ),
            groups: TileGroups::default(),
        };
        w.client().await?;
        Ok(Box::new(w))
    }

    fn stager(&self) -> Option<Box<dyn LedgerStager>> {
        Some(Box::new(PgStager {
            config: self.config.clone(),
            role: self.role.clone(),
            client: None,
        }))
    }

    async fn index_of_receipt(&self, receipt: u64) -> Result<Option<u64>, StoreError> {
        let receipt = to_i64(receipt, "receipt")?;
        let client = self.pooled_client().await?;
        let stmt = client
            .prepare_cached("SELECT idx FROM integrated WHERE receipt = $1")
            .await?;
        client
            .query_opt(&stmt, &[&receipt])
            .await?
            .map(|r| to_u64(r.try_get(0)?, "leaf index"))
            .transpose()
    }

    async fn staged_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .pooled_client()
            .await?
            .query_one("SELECT count(*) FROM staged", &[])
            .await?
            .try_get(0)?;
        to_u64(n, "staged count")
    }

    async fn size(&self) -> Result<u64, StoreError> {
        size_of(&**self.pooled_client().await?).await
    }

    fn lowest_stored_level(&self) -> u8 {
        TILE_LEVEL
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        // One connection of each pool, always in this order: a task holding
        // one of the second pool's holds all it needs, so none waits in a
        // circle.
        let pool_error = |e: deadpool_postgres::PoolError| StoreError::Pool(describe(&e));
        let near = self.proofs.0.get().await.map_err(pool_error)?;
        let far = self.proofs.1.get().await.map_err(pool_error)?;
        let (bundles, tiles) = futures_util::future::join(
            near.prepare_cached(BUNDLES_QUERY),
            far.prepare_cached(TILES_QUERY),
        )
        .await;
        let (bundles, tiles) = (bundles?, tiles?);
        let readers = NodeReaders {
            bundles: (&near, &bundles),
            tiles: (&far, &tiles),
        };
        nodes_of(readers, ids).await
    }

    async fn leaves(&self, from: u64, count: usize) -> Result<Vec<LeafRow>, StoreError> {
        let from = to_i64(from, "leaf index")?;
        let end = from.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
        let mut client = self.pooled_client().await?;
        // One snapshot for the leaves and their tiles' hashes.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // Bundles are stored in index order: an ordered scan of the primary key
        // is always the right plan, but fresh statistics may suggest a bitmap
        // scan and an on-disk sort. Rule those out for this read only.
        tx.batch_execute(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off;
             SET LOCAL enable_sort = off;",
        )
        .await?;
        // Binary COPY: the cheapest way to stream many rows. COPY takes no
        // parameters; both bounds are integers formatted here.
        let stream = tx
            .copy_out(&format!(
                "COPY (SELECT first, count, data FROM leaf_bundle
                       WHERE first >= {} AND first < {end} ORDER BY first)
                 TO STDOUT (FORMAT binary)",
                bundle::bundle_of(from)
            ))
            .await?;
        let rows = BinaryCopyOutStream::new(stream, BUNDLE_TYPES);
        let mut rows = pin!(rows);
        let mut out = Vec::with_capacity(count.min(1 << 20));
        while let Some(row) = rows.next().await {
            let row = row?;
            // A damaged bundle's leaves are left out: the verifier reports
            // them missing.
            let Some(leaves) = bundle::split(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)
            else {
                continue;
            };
            for (idx, data) in leaves {
                if (from..end).contains(&idx) {
                    out.push(LeafRow::decoded(idx, data.to_vec())?);
                }
            }
        }
        // Each tile's hashes belong to its last leaf: the tiles whose last
        // leaf lies in [from, end).
        let tiles = tx
            .query(
                "SELECT s.tile, s.nodes, g.hashes FROM subtree s
                 LEFT JOIN tile_level4 g ON g.tile = s.tile
                 WHERE s.tile >= $1 AND s.tile < $2 ORDER BY s.tile",
                &[&(from >> TILE_LEVEL), &(end >> TILE_LEVEL)],
            )
            .await?;
        for r in tiles {
            let tile: i64 = r.try_get(0)?;
            let last = tile.saturating_mul(256).saturating_add(255);
            if let Some(row) = last
                .checked_sub(from)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| out.get_mut(i))
                .filter(|row| i64::try_from(row.index) == Ok(last))
            {
                row.nodes = r.try_get(1)?;
                row.level4 = r.try_get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.pooled_client()
            .await?
            .query(
                "SELECT size, time_us, note FROM checkpoint ORDER BY size",
                &[],
            )
            .await?
            .iter()
            .map(checkpoint_row)
            .collect()
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.pooled_client()
            .await?
            .query_opt(
                "SELECT size, time_us, note FROM checkpoint ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?
            .as_ref()
            .map(checkpoint_row)
            .transpose()
    }

    async fn query(&self, range: &QueryRange) -> Result<Vec<RawEntry>, StoreError> {
        let range = *range;
        index::read(&self.pool, move |db| runs::query(db, &range)).await
    }

    async fn persons_revealed_to(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<PersonId>, StoreError> {
        index::read(&self.pool, move |db| {
            runs::persons_revealed_to(db, account, from, to)
        })
        .await
    }

    async fn index_problems(&self) -> Result<Vec<IndexProblem>, StoreError> {
        index::read(&self.pool, runs::index_problems).await
    }

    async fn settle_index(&self) -> Result<(), StoreError> {
        let lock = lock_key("indexer", &self.schema);
        let mut vacuum = index::Vacuum::default();
        loop {
            let moved = index::slice(&self.pool, lock).await?;
            vacuum.moved(moved.unwrap_or(0));
            vacuum.if_due(&self.config, moved == Some(0)).await?;
            match moved {
                Some(0) => return Ok(()),
                Some(_) => {}
                // The writer's indexer is at work: wait for it.
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Appends a batch if, and only if, the log has exactly `$7` leaves: the
/// leaves `$3` that fill bundle `$1` (`$2` of them, maybe none), the new
/// bundles `($4, $5, $6)`, and the hashes of the tiles they complete
/// `($8, $9)`. Returns the bundles grown and the leaves in new bundles. One
/// statement: its own transaction when sent alone.
const INSERT_LEAVES: &str = "
    WITH expected AS (SELECT (SELECT coalesce((SELECT first + count FROM leaf_bundle
                                               ORDER BY first DESC LIMIT 1), 0)) = $7 AS ok),
    grown AS (
        UPDATE leaf_bundle SET count = count + $2, data = data || $3
        FROM expected WHERE expected.ok AND $2 > 0 AND first = $1
        RETURNING 1),
    added AS (
        INSERT INTO leaf_bundle (first, count, data)
        SELECT u.first, u.count, u.data
        FROM unnest($4::bigint[], $5::int[], $6::bytea[]) AS u(first, count, data), expected
        WHERE expected.ok
        RETURNING count),
    tiles AS (
        INSERT INTO subtree (tile, nodes)
        SELECT u.tile, u.nodes FROM unnest($8::bigint[], $9::bytea[]) AS u(tile, nodes), expected
        WHERE expected.ok
        RETURNING 1),
    groups AS (
        INSERT INTO tile_level4 (tile, hashes)
        SELECT u.tile, u.hashes
        FROM unnest($10::bigint[], $11::bytea[]) AS u(tile, hashes), expected
        WHERE expected.ok
        RETURNING 1)
    SELECT (SELECT count(*) FROM grown), (SELECT coalesce(sum(count), 0) FROM added)::int8";

/// Records the indices staged leaves got.
const RECORD_INTEGRATED: &str =
    "INSERT INTO integrated (receipt, idx) SELECT * FROM unnest($1::bigint[], $2::bigint[])";

/// Removes integrated leaves from staging (the table's trigger checks each
/// was recorded as integrated).
const UNSTAGE: &str = "DELETE FROM staged WHERE id = ANY($1)";

/// Stages a batch under one number of `staged_batch`: receipts
/// `batch * 65536 + 0, 1, …`. Returns the first receipt and the count.
const STAGE: &str = "
    WITH b AS (SELECT nextval('staged_batch') * 65536 AS base),
    ins AS (INSERT INTO staged (id, data)
            SELECT b.base + u.o - 1, u.d
            FROM b, unnest($1::bytea[]) WITH ORDINALITY AS u(d, o)
            RETURNING id)
    SELECT min(id), count(*) FROM ins";

/// Opens a connection working as `role`, durable and with keepalives.
async fn durable_session(
    config: &tokio_postgres::Config,
    role: &str,
) -> Result<Client, StoreError> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET ROLE \"{role}\"; {DURABLE_SESSION}"))
        .await?;
    Ok(client)
}

/// The hashes of the tiles a batch completes, column by column, for
/// `unnest`.
#[derive(Default)]
struct Columns {
    tiles: Vec<i64>,
    nodes: Vec<Vec<u8>>,
    grouped: Vec<i64>,
    level4: Vec<Vec<u8>>,
}

/// The single writer: its own connection, holding the schema's advisory
/// lock for as long as it lives. A lost connection is reopened (and the lock
/// retaken) at the next call.
struct PgWriter {
    config: tokio_postgres::Config,
    role: String,
    schema: String,
    lock: i64,
    client: Option<Client>,
    insert: Option<tokio_postgres::Statement>,
    /// [`BUNDLES_QUERY`] and [`TILES_QUERY`], prepared (every checkpoint
    /// asks for a root).
    nodes: Option<(tokio_postgres::Statement, tokio_postgres::Statement)>,
    /// Builds the query index behind the appends; stops with the writer.
    indexer: index::Indexer,
    /// The level-4 hashes of the tile being filled.
    groups: TileGroups,
}

impl PgWriter {
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.insert = None;
            self.nodes = None;
            let client = durable_session(&self.config, &self.role).await?;
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock])
                .await?
                .try_get(0)?;
            if !locked {
                return Err(StoreError::WriterBusy(format!(
                    "another session holds the writer lock of schema {}",
                    self.schema
                )));
            }
            self.client = Some(client);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Task(
                "the ledger writer has no connection".into(),
            )),
        }
    }
}

#[async_trait]
impl LedgerWriter for PgWriter {
    async fn size(&mut self) -> Result<u64, StoreError> {
        size_of(&*self.client().await?).await
    }

    async fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        // The writer's own connection sees every leaf it appended.
        // Prepared once per connection, like the insert.
        if self.nodes.is_none() || self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.client().await?;
            let bundles = client.prepare(BUNDLES_QUERY).await?;
            let tiles = client.prepare(TILES_QUERY).await?;
            self.nodes = Some((bundles, tiles));
        }
        let (Some(client), Some((bundles, tiles))) = (self.client.as_ref(), self.nodes.as_ref())
        else {
            return Err(StoreError::Task(
                "the ledger writer has no connection".into(),
            ));
        };
        let readers = NodeReaders {
            bundles: (client, bundles),
            tiles: (client, tiles),
        };
        nodes_of(readers, ids).await
    }

    async fn append(&mut self, first: u64, rows: Vec<LeafRow>) -> Result<(), StoreError> {
        if !self.groups.follows(first) {
            // Once a writer's life, or after a failed append.
            let before = TileGroups::before(first);
            let hashes = match LedgerWriter::nodes(self, &before).await {
                Ok(h) => Some(h),
                // A damaged tile gets no level-4 row; `audit verify` says why.
                Err(StoreError::MissingNode { .. }) => None,
                Err(e) => return Err(e),
            };
            self.groups.prime(first, hashes);
        }
        let mut cols = Columns::default();
        // (receipt, index) of the staged leaves among them.
        let mut staged: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
        let first_i64 = to_i64(first, "leaf index")?;
        for (row, idx) in rows.iter().zip(first_i64..) {
            if to_i64(row.index, "leaf index")? != idx {
                return Err(StoreError::Task(format!(
                    "rows to append must follow each other from leaf {first}"
                )));
            }
            if let Some(r) = row.receipt {
                staged.0.push(to_i64(r, "receipt")?);
                staged.1.push(idx);
            }
            if let Some(nodes) = stored_nodes(&row.nodes) {
                cols.tiles.push(idx >> TILE_LEVEL);
                cols.nodes.push(nodes.to_vec());
            }
            if let Some(level4) = self.groups.push(row.index, &row.nodes) {
                cols.grouped.push(idx >> TILE_LEVEL);
                cols.level4.push(level4);
            }
        }
        let packed = bundle::pack(first_i64, rows.iter().map(|r| r.data.as_slice()))?;
        let expected = (
            i64::from(packed.grow_count > 0),
            packed.counts.iter().map(|c| i64::from(*c)).sum::<i64>(),
        );
        if self.insert.is_none() || self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.client().await?;
            let stmt = client.prepare(INSERT_LEAVES).await?;
            self.insert = Some(stmt);
        }
        let (Some(client), Some(stmt)) = (self.client.as_mut(), self.insert.as_ref()) else {
            return Err(StoreError::Task(
                "the ledger writer has no connection".into(),
            ));
        };
        let params: [&(dyn ToSql + Sync); 11] = [
            &packed.grow_first,
            &packed.grow_count,
            &packed.grow_data,
            &packed.firsts,
            &packed.counts,
            &packed.datas,
            &first_i64,
            &cols.tiles,
            &cols.nodes,
            &cols.grouped,
            &cols.level4,
        ];
        let inserted =
            |row: Row| -> Result<(i64, i64), StoreError> { Ok((row.try_get(0)?, row.try_get(1)?)) };
        if staged.0.is_empty() {
            // One statement, one round trip, its own transaction: committed
            // (and, with synchronous_commit on, flushed) when it returns.
            if inserted(client.query_one(stmt, &params).await?)? != expected {
                return Err(conflict(client, first).await);
            }
            self.indexer.wake();
            return Ok(());
        }
        // Staged leaves leave staging in the transaction that logs them.
        let tx = client.transaction().await?;
        if inserted(tx.query_one(stmt, &params).await?)? != expected {
            drop(tx);
            return Err(conflict(client, first).await);
        }
        tx.execute(RECORD_INTEGRATED, &[&staged.0, &staged.1])
            .await?;
        let removed = tx.execute(UNSTAGE, &[&staged.0]).await?;
        if removed != staged.0.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "{} of {} integrated leaves were still staged",
                removed,
                staged.0.len()
            )));
        }
        tx.commit().await?;
        self.indexer.wake();
        Ok(())
    }

    async fn staged(&mut self, limit: usize) -> Result<Vec<StagedLeaf>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.client()
            .await?
            .query(
                "SELECT id, data FROM staged ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(StagedLeaf {
                    receipt: to_u64(r.try_get(0)?, "receipt")?,
                    data: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn close(&mut self) {
        if let Some(client) = self.client.take() {
            // Best effort: if it fails, the server releases the lock when the
            // connection ends anyway.
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&self.lock])
                .await;
        }
    }

    async fn add_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        let size = to_i64(checkpoint.size, "checkpoint size")?;
        self.client()
            .await?
            .execute(
                "INSERT INTO checkpoint (size, time_us, note) VALUES ($1, $2, $3)",
                &[&size, &checkpoint.time.0, &checkpoint.note],
            )
            .await?;
        Ok(())
    }
}

/// The conflict a refused append reports: what the writer expected, and
/// what the store has (or the error that hid it).
async fn conflict(client: &Client, expected: u64) -> StoreError {
    match size_of(client).await {
        Ok(found) => StoreError::Conflict { expected, found },
        Err(e) => e,
    }
}

/// An appender that does not hold the writer: its own connection
/// (reopened at the next call when lost), no lock.
struct PgStager {
    config: tokio_postgres::Config,
    role: String,
    client: Option<(Client, tokio_postgres::Statement)>,
}

#[async_trait]
impl LedgerStager for PgStager {
    async fn stage(&mut self, leaves: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        if leaves.len() > MAX_STAGED_BATCH {
            return Err(StoreError::Task(format!(
                "{} leaves in one staging batch, at most {MAX_STAGED_BATCH}",
                leaves.len()
            )));
        }
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.client = None;
            let client = durable_session(&self.config, &self.role).await?;
            let stmt = client.prepare(STAGE).await?;
            self.client = Some((client, stmt));
        }
        let Some((client, stmt)) = self.client.as_ref() else {
            return Err(StoreError::Task(
                "the ledger stager has no connection".into(),
            ));
        };
        // One statement in its own transaction: durable when it returns.
        let row = client.query_one(stmt, &[&leaves]).await?;
        let (first, count): (Option<i64>, i64) = (row.try_get(0)?, row.try_get(1)?);
        match first {
            Some(first) if count as usize == leaves.len() => to_u64(first, "receipt"),
            _ => Err(StoreError::Corrupt(format!(
                "staged {count} of {} leaves",
                leaves.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("ledger", "schema").is_ok());
        assert!(check_name("t_1_2", "schema").is_ok());
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "pg_x",
            "public",
            "a\"b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad, "schema").is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        let cfg = PgLedgerConfig::new("postgres://u:secret@h/db");
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn lock_keys_differ() {
        assert_ne!(lock_key("writer", "a"), lock_key("writer", "b"));
        assert_ne!(lock_key("writer", "a"), lock_key("migrations", "a"));
        assert_ne!(lock_key("writer", "a"), lock_key("indexer", "a"));
    }

    use crate::store::sqlite::tests::{
        assert_leaves_and_hashes, assert_queries_match, leaves, rows_of,
    };
    use rempart_testdb::TestSchema;

    async fn run_levels(store: &PgLedgerStore) -> Vec<(i64, i64)> {
        store
            .pooled_client()
            .await
            .unwrap()
            .query(
                "SELECT level, state FROM run ORDER BY first_leaf, level DESC",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The runs on PostgreSQL: built by the writer's indexer behind the
    /// appends (and by `settle_index`), merged up to the top level, checked
    /// against the leaves, and answering what a scan answers before,
    /// during and after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_are_built_behind_the_appends_and_answer_like_a_scan() {
        let db = TestSchema::new("lu");
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let mut w = store.writer().await.unwrap();
        let mut all = Vec::new();
        // Batches that do not align with segments (64 leaves in unit tests).
        for batch in 0..24u64 {
            let at = all.len() as u64;
            let more = leaves(at, at + 211 + batch);
            w.append(at, rows_of(at, &more, &mut frontier))
                .await
                .unwrap();
            all.extend(more);
            if batch % 8 == 0 {
                assert_queries_match(&store, &all).await;
            }
        }
        // The writer's own indexer got some of it done without being asked.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while run_levels(&store).await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the indexer never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.settle_index().await.unwrap();
        let levels = run_levels(&store).await;
        assert!(levels.iter().all(|&(_, state)| state == 1), "{levels:?}");
        assert!(levels.iter().any(|&(level, _)| level == 3), "{levels:?}");
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        // Derived data is checked: a posting removed is a problem.
        let c = store.pooled_client().await.unwrap();
        c.batch_execute(
            "DELETE FROM posting_person WHERE (run, key, time_last, idx_last) IN (
                 SELECT run, key, time_last, idx_last FROM posting_person LIMIT 1)",
        )
        .await
        .unwrap();
        assert_eq!(store.index_problems().await.unwrap().len(), 1);
        w.close().await;
    }

    /// The store's role may change runs (its indexer must), so a process
    /// working as it could hide leaves from queries by retiring a live run
    /// or shifting its bounds: the check names the run table either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_hidden_from_queries_is_found() {
        let db = TestSchema::new("lh");
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 1_000);
        let mut w = store.writer().await.unwrap();
        w.append(0, rows_of(0, &all, &mut frontier)).await.unwrap();
        w.close().await;
        store.settle_index().await.unwrap();
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        let c = store.pooled_client().await.unwrap();
        for tamper in [
            "UPDATE run SET state = 2 WHERE id = (SELECT min(id) FROM run WHERE state = 1)",
            "UPDATE run SET state = 1 WHERE state = 2;
             UPDATE run SET first_leaf = first_leaf + 1
                 WHERE id = (SELECT max(id) FROM run WHERE state = 1 AND first_leaf > 0)",
        ] {
            c.batch_execute(tamper).await.unwrap();
            let problems = store.index_problems().await.unwrap();
            assert!(
                problems.iter().any(|p| p.table == "run"),
                "{tamper}: {problems:?}"
            );
        }
    }

    /// Proofs read hashes of level 12 and up through the covering index of
    /// their rows (migration 0009), not through the table's key: the planner
    /// takes the partial index only when the query repeats its condition.
    /// Sequential scans are ruled out, as a table of 35 rows would be read
    /// whole; at scale the index is the cheapest path anyway.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proofs_read_upper_hashes_from_their_index() {
        let db = TestSchema::new("lu");
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let rows = rows_of(0, &leaves(0, 9_000), &mut frontier);
        let mut tree = crate::merkle::MemoryTree::new();
        for r in &rows {
            tree.push(leaf_hash(&r.data));
        }
        let mut w = store.writer().await.unwrap();
        w.append(0, rows).await.unwrap();
        w.close().await;
        // The indexer vacuums `subtree` too, and does so the first time it
        // falls idle (here, without the index work a settle would do): an
        // index-only scan is the cheaper plan once the visibility map says
        // the table's pages need no visit. (VACUUM can mark a page so only
        // when no transaction older than its rows runs: under other tests'
        // load it may not, and the planner then reads the same index by a
        // bitmap scan.)
        index::Vacuum::default()
            .if_due(&store.config, true)
            .await
            .unwrap();
        let c = store.pooled_client().await.unwrap();
        let pages = c
            .query_one(
                "SELECT relpages, relallvisible FROM pg_class
                 WHERE oid = 'subtree'::regclass",
                &[],
            )
            .await
            .unwrap();
        let (pages, visible): (i32, i32) = (pages.get(0), pages.get(1));
        assert!(pages > 0, "subtree was not vacuumed");
        c.batch_execute(&format!(
            "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan;
             PREPARE tiles (bigint[], bigint[], bigint[], bigint[]) AS {TILES_QUERY};
             PREPARE bundles (bigint[]) AS {BUNDLES_QUERY}"
        ))
        .await
        .unwrap();
        let explain = |sql: &'static str| {
            let c = &c;
            async move {
                let rows = c.query(sql, &[]).await.unwrap();
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        let bundles = explain("EXPLAIN EXECUTE bundles ('{0, 16}')").await;
        assert!(
            bundles.contains("leaf_bundle_pkey") && !bundles.contains("Seq Scan"),
            "{bundles}"
        );
        let plan = explain("EXPLAIN EXECUTE tiles ('{1}', '{15}', '{2}', '{512, 528}')").await;
        assert!(plan.contains("subtree_upper"), "{plan}");
        // The bundles wanted only without level-4 hashes: their list is
        // made once, before the scan (an InitPlan, whose one join is of
        // the list with `tile_level4`), and the scan reads the bundles of
        // that list only, by key: no join of the bundles with anything.
        let joins: Vec<&str> = plan.lines().filter(|l| l.contains("Join")).collect();
        assert!(
            plan.contains("InitPlan")
                && !plan.contains("Seq Scan")
                && joins.iter().all(|l| l.contains("Anti Join")),
            "{plan}"
        );
        if visible == pages {
            assert!(
                plan.contains("Index Only Scan using subtree_upper on subtree"),
                "{plan}"
            );
        }
        // Tile 15 completes the level-12 subtree of leaves 0 to 4095.
        let upper = NodeId::new(UPPER_LEVEL, 0);
        let expected = crate::merkle::NodeSource::node(&tree, upper).unwrap();
        assert_eq!(store.nodes(&[upper]).await.unwrap(), vec![expected]);
    }

    /// Every connection of the store, pooled or the writer's, plans without
    /// JIT or parallel workers: generic plans of its statements were once
    /// JIT-compiled at each execution (9 ms of a 10 ms proof) and once a
    /// parallel scan of the whole bundle table (0.5 s a proof). All work as
    /// the store's role; only the proofs' connections force generic plans.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_plan_without_jit_or_parallel_workers() {
        let db = TestSchema::new("lj");
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        let pooled = store.pooled_client().await.unwrap();
        let near = store.proofs.0.get().await.unwrap();
        let far = store.proofs.1.get().await.unwrap();
        let writer = durable_session(&store.config, &store.role).await.unwrap();
        for (client, plans) in [
            (&**pooled, "auto"),
            (&**near, "force_generic_plan"),
            (&**far, "force_generic_plan"),
            (&writer, "auto"),
        ] {
            let row = client
                .query_one(
                    "SELECT current_setting('jit'), current_setting('max_parallel_workers_per_gather'),
                            current_setting('plan_cache_mode'), current_user::text",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(
                (
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, String>(2),
                    row.get::<_, String>(3)
                ),
                (
                    "off".to_string(),
                    "0".to_string(),
                    plans.to_string(),
                    store.role.clone()
                )
            );
        }
    }

    /// An indexer far behind the appends (after a burst) merges and
    /// deletes as it goes: it does not build every level-0 run first, and
    /// merged runs are deleted before the next merge, so the posting tables
    /// never hold every posting twice or more (they did, 2.2x to 3x their
    /// live size at 3 to 10 M leaves).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_indexer_behind_merges_and_deletes_as_it_goes() {
        let db = TestSchema::new("lb");
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 6_000);
        let mut w = store.writer().await.unwrap();
        w.append(0, rows_of(0, &all, &mut frontier)).await.unwrap();
        // The writer's indexer stops with it; the slices are taken here.
        w.close().await;
        drop(w);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lock = lock_key("indexer", &db.schema);
        let complete = (all.len() as i64) >> runs::SEGMENT_SHIFT << runs::SEGMENT_SHIFT;
        let (mut most_retired, mut merged_early) = (0, false);
        loop {
            let moved = index::slice(&store.pool, lock).await.unwrap();
            let c = store.pooled_client().await.unwrap();
            let row = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 2),
                            count(*) FILTER (WHERE state = 1 AND level > 0),
                            coalesce(max(end_leaf), 0)
                     FROM run",
                    &[],
                )
                .await
                .unwrap();
            let (retired, merged, end): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            most_retired = most_retired.max(retired);
            merged_early |= merged > 0 && end < complete;
            if moved == Some(0) {
                break;
            }
        }
        assert!(merged_early, "every level-0 run was built before any merge");
        assert!(
            most_retired <= 4,
            "{most_retired} merged runs waited for deletion"
        );
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
    }

    /// A ledger written under migration 0006 (a row per leaf with query
    /// columns, every subtree hash from level 0 in `nodes`, three b-tree
    /// indexes) keeps its leaves, hashes and answers under 0007, and its
    /// index is built from the leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_compacts_an_existing_ledger() {
        let db = TestSchema::new("lm");
        let all = leaves(0, 1_000);
        let mut frontier = crate::merkle::Frontier::new();
        let rows = rows_of(0, &all, &mut frontier);
        {
            let (mut client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let tx = client.transaction().await.unwrap();
            rempart_sql::migrate_postgres::<StoreError>(
                &tx,
                &db.schema,
                lock_key("migrations", &db.schema),
                &migrate::POSTGRES[..6],
            )
            .await
            .unwrap();
            tx.batch_execute(&format!("SET LOCAL search_path TO \"{}\"", db.schema))
                .await
                .unwrap();
            for r in &rows {
                tx.execute(
                    "INSERT INTO leaf (idx, time_us, account, organisation, person, reveals,
                                       data, nodes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &(r.index as i64),
                        &r.time,
                        &r.account,
                        &r.organisation,
                        &r.person,
                        &r.reveals,
                        &r.data,
                        &r.nodes,
                    ],
                )
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
        let store = PgLedgerStore::connect(&PgLedgerConfig::new(&db.url).with_schema(&db.schema))
            .await
            .unwrap();
        assert_leaves_and_hashes(&store, &rows).await;
        // Before the index exists, queries scan; after, they read runs.
        assert_queries_match(&store, &all).await;
        store.settle_index().await.unwrap();
        assert!(!run_levels(&store).await.is_empty());
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        let mut w = store.writer().await.unwrap();
        let more = leaves(1_000, 1_001);
        w.append(1_000, rows_of(1_000, &more, &mut frontier))
            .await
            .unwrap();
        let all: Vec<_> = all.into_iter().chain(more).collect();
        assert_queries_match(&store, &all).await;
        w.close().await;
    }
}
