//! PostgreSQL backend: the ledger's own schema (`ledger` by default), kept
//! apart from the registry's, and its own role (`rempart_ledger_writer` by
//! default, NOLOGIN) holding only USAGE on the schema and SELECT + INSERT on
//! its tables. Migrations run as the connecting user; afterwards every
//! connection of the pool, and the writer's, does `SET ROLE` to that role,
//! so no code path through this store can UPDATE, DELETE or TRUNCATE
//! history: PostgreSQL refuses. (Triggers refuse too, should the owner try.)
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
    LeafRow, LedgerStager, LedgerStore, LedgerWriter, QueryRange, RawEntry, StagedLeaf, StoreError,
    StoredCheckpoint, Subject, migrate, node_from_column, node_location, page_start, to_i64,
    to_u64,
};
use crate::leaf::{AccountId, PersonId, Timestamp};
use crate::merkle::{Hash, NodeId};

/// Schema of the ledger unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "ledger";
/// Role the ledger is written through unless told otherwise.
pub const DEFAULT_ROLE: &str = "rempart_ledger_writer";

const POOL_SIZE: usize = 8;
/// Column types of a leaf row, in `SELECT idx, time_us, …, nodes` order.
const LEAF_TYPES: &[Type] = &[
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::BOOL,
    Type::BYTEA,
    Type::BYTEA,
];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most leaves one staging transaction may hold: a receipt is
/// `batch * 65536 + ordinal`.
pub const MAX_STAGED_BATCH: usize = 65_536;
/// Session settings of the writer's and the stagers' connections: durable
/// before return even if the server defaults otherwise, and a dead peer
/// noticed (its writer lock released) within about 8 seconds.
const DURABLE_SESSION: &str = "SET synchronous_commit = on; SET tcp_keepalives_idle = 5;
     SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3;";

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

        let set_role = format!("SET ROLE \"{}\"", config.role);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                // Fast: `Clean` would run DISCARD ALL, which resets the role.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let sql = set_role.clone();
                Box::pin(
                    async move { client.batch_execute(&sql).await.map_err(HookError::Backend) },
                )
            }))
            .build()
            .map_err(|e| StoreError::Pool(describe(&e)))?;
        let store = PgLedgerStore {
            pool,
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
    /// diagnostics and tests; the store's own queries use the same).
    pub async fn pooled_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(describe(&e)))
    }
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
         GRANT SELECT, INSERT ON leaf, checkpoint TO \"{role}\";
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
    let next: i64 = client
        .query_one("SELECT coalesce(max(idx) + 1, 0) FROM leaf", &[])
        .await?
        .try_get(0)?;
    to_u64(next, "leaf count")
}

const NODES_QUERY: &str = "SELECT idx, nodes FROM leaf WHERE idx = ANY($1)";

/// Leaf indices holding the given subtrees.
fn node_leaves(ids: &[NodeId]) -> Result<Vec<i64>, StoreError> {
    ids.iter()
        .map(|id| to_i64(node_location(*id).0, "leaf index"))
        .collect()
}

/// Picks the subtrees' hashes out of rows `(idx, nodes)`.
fn nodes_from_rows(ids: &[NodeId], rows: Vec<Row>) -> Result<Vec<Hash>, StoreError> {
    let mut by_leaf: HashMap<i64, Vec<u8>> = HashMap::with_capacity(rows.len());
    for r in rows {
        by_leaf.insert(r.try_get(0)?, r.try_get(1)?);
    }
    ids.iter()
        .map(|id| {
            let leaf = node_location(*id).0;
            match i64::try_from(leaf).ok().and_then(|l| by_leaf.get(&l)) {
                Some(nodes) => node_from_column(*id, nodes, 0),
                None => Err(StoreError::MissingNode {
                    level: id.level,
                    index: id.index,
                    leaf,
                }),
            }
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

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let leaves = node_leaves(ids)?;
        let client = self.pooled_client().await?;
        let stmt = client.prepare_cached(NODES_QUERY).await?;
        let rows = client
            .query(&stmt, &[&leaves as &(dyn ToSql + Sync)])
            .await?;
        nodes_from_rows(ids, rows)
    }

    async fn leaves(&self, from: u64, count: usize) -> Result<Vec<LeafRow>, StoreError> {
        let from = to_i64(from, "leaf index")?;
        let end = from.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
        let mut client = self.pooled_client().await?;
        let tx = client.transaction().await?;
        // Rows are stored in index order: an ordered scan of the primary key
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
                "COPY (SELECT idx, time_us, account, organisation, person, reveals, data, nodes
                       FROM leaf WHERE idx >= {from} AND idx < {end} ORDER BY idx)
                 TO STDOUT (FORMAT binary)"
            ))
            .await?;
        let rows = BinaryCopyOutStream::new(stream, LEAF_TYPES);
        let mut rows = pin!(rows);
        let mut out = Vec::with_capacity(count.min(1 << 20));
        while let Some(row) = rows.next().await {
            let row = row?;
            out.push(LeafRow {
                index: to_u64(row.try_get(0)?, "leaf index")?,
                time: row.try_get(1)?,
                account: row.try_get(2)?,
                organisation: row.try_get(3)?,
                person: row.try_get(4)?,
                reveals: row.try_get(5)?,
                data: row.try_get(6)?,
                nodes: row.try_get(7)?,
                receipt: None,
            });
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
        let (column, id) = match range.subject {
            Subject::Account(a) => ("account", a.get()),
            Subject::Organisation(o) => ("organisation", o.get()),
            Subject::Person(p) => ("person", p.get()),
        };
        let (after_time, after_idx) = page_start(range)?;
        let client = self.pooled_client().await?;
        // The column name comes from the match above, never from input.
        let stmt = client
            .prepare_cached(&format!(
                "SELECT idx, time_us, data FROM leaf
                 WHERE {column} = $1 AND time_us >= $2 AND time_us < $3
                   AND (time_us, idx) > ($4, $5)
                 ORDER BY time_us, idx LIMIT $6"
            ))
            .await?;
        client
            .query(
                &stmt,
                &[
                    &id,
                    &range.from.0,
                    &range.to.0,
                    &after_time,
                    &after_idx,
                    &i64::from(range.limit),
                ],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(RawEntry {
                    index: to_u64(r.try_get(0)?, "leaf index")?,
                    time: r.try_get(1)?,
                    data: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn persons_revealed_to(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<PersonId>, StoreError> {
        let client = self.pooled_client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT person FROM leaf
                 WHERE account = $1 AND time_us >= $2 AND time_us < $3
                   AND reveals AND person IS NOT NULL
                 ORDER BY person",
            )
            .await?;
        client
            .query(&stmt, &[&account.get(), &from.0, &to.0])
            .await?
            .iter()
            .map(|r| Ok(PersonId::new(r.try_get(0)?)))
            .collect()
    }
}

/// Appends a batch if, and only if, the log has exactly `$9` leaves.
const INSERT_LEAVES: &str = "
    INSERT INTO leaf (idx, time_us, account, organisation, person, reveals, data, nodes)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                         $5::bigint[], $6::boolean[], $7::bytea[], $8::bytea[])
    WHERE (SELECT coalesce(max(idx) + 1, 0) FROM leaf) = $9";

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

/// A batch of rows, column by column, for `unnest`.
struct Columns {
    idx: Vec<i64>,
    time: Vec<i64>,
    account: Vec<i64>,
    organisation: Vec<i64>,
    person: Vec<Option<i64>>,
    reveals: Vec<bool>,
    data: Vec<Vec<u8>>,
    nodes: Vec<Vec<u8>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Columns {
            idx: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            account: Vec::with_capacity(n),
            organisation: Vec::with_capacity(n),
            person: Vec::with_capacity(n),
            reveals: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            nodes: Vec::with_capacity(n),
        }
    }
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
}

impl PgWriter {
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.insert = None;
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
        let leaves = node_leaves(ids)?;
        let rows = self.client().await?.query(NODES_QUERY, &[&leaves]).await?;
        nodes_from_rows(ids, rows)
    }

    async fn append(&mut self, first: u64, rows: Vec<LeafRow>) -> Result<(), StoreError> {
        let mut cols = Columns::with_capacity(rows.len());
        // (receipt, index) of the staged leaves among them.
        let mut staged: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
        for row in rows {
            if let Some(r) = row.receipt {
                staged.0.push(to_i64(r, "receipt")?);
                staged.1.push(to_i64(row.index, "leaf index")?);
            }
            cols.idx.push(to_i64(row.index, "leaf index")?);
            cols.time.push(row.time);
            cols.account.push(row.account);
            cols.organisation.push(row.organisation);
            cols.person.push(row.person);
            cols.reveals.push(row.reveals);
            cols.data.push(row.data);
            cols.nodes.push(row.nodes);
        }
        let expected = cols.idx.len() as u64;
        let first_i64 = to_i64(first, "leaf index")?;
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
        let params: [&(dyn ToSql + Sync); 9] = [
            &cols.idx,
            &cols.time,
            &cols.account,
            &cols.organisation,
            &cols.person,
            &cols.reveals,
            &cols.data,
            &cols.nodes,
            &first_i64,
        ];
        if staged.0.is_empty() {
            // One statement, one round trip, its own transaction: committed
            // (and, with synchronous_commit on, flushed) when it returns.
            let inserted = client.execute(stmt, &params).await?;
            if inserted != expected {
                return Err(conflict(client, first).await);
            }
            return Ok(());
        }
        // Staged leaves leave staging in the transaction that logs them.
        let tx = client.transaction().await?;
        let inserted = tx.execute(stmt, &params).await?;
        if inserted != expected {
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
    }
}
