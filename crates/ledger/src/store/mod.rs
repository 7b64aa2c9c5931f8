//! Where the ledger lives: one interface, [`LedgerStore`], and two backends,
//! [`sqlite`] (its own file `ledger.db` in the data directory) and
//! [`postgres`] (its own schema, written through an INSERT-only role).
//!
//! A store keeps four things: the leaves (their canonical bytes: a row each
//! on SQLite, 16 to a row on PostgreSQL), the hashes of the complete
//! subtrees of level 8 and up (a row per 256-leaf tile; lower ones are
//! recomputed from the tile's leaves, so a root or proof costs O(log n)
//! lookups and one tile's leaves), the query index (runs of postings,
//! [`runs`]), and every signed checkpoint.
//!
//! Appends go through a [`LedgerWriter`], of which a store hands out one at
//! a time (a lock file on SQLite, an advisory lock on PostgreSQL): two
//! appenders would race for the same leaf indices. On PostgreSQL, other
//! processes append through a [`LedgerStager`] instead: their leaves wait,
//! durable, in a staging table until the writer integrates them (gives them
//! indices in the same transaction that removes them from staging).

use async_trait::async_trait;

use crate::leaf::{AccountId, OrganisationId, PersonId, Timestamp};
use crate::merkle::{Hash, NodeId, completed_count};

pub(crate) mod migrate;
pub mod postgres;
pub(crate) mod posting;
pub(crate) mod runs;
pub mod sqlite;

/// The level below which a store may keep no subtree hashes: a subtree of
/// `2^TILE_LEVEL` leaves is a tile (C2SP tlog-tiles' width), and hashes
/// inside a tile are recomputed from its leaves.
pub(crate) const TILE_LEVEL: u8 = 8;

/// The level from which subtree hashes are read through the `subtree_upper`
/// covering index (migration 0009): the rows holding them are one in 16 and
/// lie far from the leaf, packed there into a few pages that stay cached.
pub(crate) const UPPER_LEVEL: u8 = 12;

/// The condition that puts a `subtree` row in `subtree_upper`, as written
/// in migration 0009 (a query must repeat it word for word for the planner
/// to use that partial index): rows holding a hash of [`UPPER_LEVEL`] or
/// more, those of [`TILE_LEVEL`] up to it included.
pub(crate) const UPPER_ROWS: &str = "length(nodes) >= 160";

/// The level of the hashes a complete tile's `tile_level4` row keeps
/// (migration 0010): those of its 16 subtrees of 16 leaves (a bundle each
/// on PostgreSQL). A proof reads them instead of the tile's 256 leaves.
pub(crate) const GROUP_LEVEL: u8 = 4;

/// Bytes of a `tile_level4` row's hashes.
pub(crate) const GROUP_HASHES: usize = 32 << (TILE_LEVEL - GROUP_LEVEL);

/// A storage failure. Messages carry no leaf content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the ledger at {path}: {reason}")]
    Open {
        /// File or database.
        path: String,
        /// Why.
        reason: String,
    },
    /// SQLite failed.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (with its causes).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The connection pool failed.
    #[error("connection pool: {0}")]
    Pool(String),
    /// A background task died.
    #[error("background task failed: {0}")]
    Task(String),
    /// A schema migration failed.
    #[error("ledger schema migration {version} ({name}) failed: {reason}")]
    Migration {
        /// Its version.
        version: u32,
        /// Its name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The schema is newer than this program.
    #[error("the ledger schema is at version {found}, this program knows up to {known}")]
    SchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest known.
        known: u32,
    },
    /// Another appender holds the store.
    #[error("another appender holds the ledger ({0}); only one may append at a time")]
    WriterBusy(String),
    /// The store's size is not what the appender expected.
    #[error("append conflict: the appender expected leaf {expected} next, the store is at {found}")]
    Conflict {
        /// Next index the appender expected.
        expected: u64,
        /// Next index the store has.
        found: u64,
    },
    /// A hash needed for a root or proof is not stored.
    #[error(
        "missing hash of subtree (level {level}, index {index}): leaf {leaf} is absent or damaged"
    )]
    MissingNode {
        /// Subtree level.
        level: u8,
        /// Subtree index.
        index: u64,
        /// The leaf that should hold it.
        leaf: u64,
    },
    /// Stored values make no sense.
    #[error("stored ledger data is corrupt: {0}")]
    Corrupt(String),
}

impl From<rempart_sql::MigrationError> for StoreError {
    fn from(e: rempart_sql::MigrationError) -> Self {
        use rempart_sql::MigrationError as M;
        match e {
            M::TooNew { found, known } => StoreError::SchemaTooNew { found, known },
            M::Edited { version, name } => StoreError::Migration {
                version,
                name,
                reason: "was applied with different SQL (checksum mismatch)".into(),
            },
            M::Failed {
                version,
                name,
                reason,
            } => StoreError::Migration {
                version,
                name,
                reason,
            },
            corrupt @ (M::Unknown { .. } | M::BadVersion(_)) => {
                StoreError::Corrupt(corrupt.to_string())
            }
        }
    }
}

/// A query index table that does not hold exactly the postings of a run's
/// leaves (a query could miss or invent leaves), or runs that do not cover
/// the leaves without gap or overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexProblem {
    /// The first segment in doubt (leaves `segment << 12` onwards on
    /// SQLite): the start of the run in doubt.
    pub segment: u64,
    /// The table.
    pub table: &'static str,
}

/// A leaf as appended or read back: its canonical bytes, its query keys
/// (given by the appender, decoded from the bytes when read: no backend
/// stores them beside the bytes), and the hashes of the subtrees it
/// completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRow {
    /// Position in the log.
    pub index: u64,
    /// `AuditLeaf::time`, in microseconds.
    pub time: i64,
    /// `AuditLeaf::account`.
    pub account: i64,
    /// `AuditLeaf::organisation`.
    pub organisation: i64,
    /// `AuditLeaf::person`.
    pub person: Option<i64>,
    /// `AuditLeaf::reveals_person_data()`.
    pub reveals: bool,
    /// The canonical encoding.
    pub data: Vec<u8>,
    /// Hashes of the completed subtrees, 32 bytes each: level 0 up when
    /// appended (the store keeps those of level 8 and up), as
    /// read back those of level 8 and up, on a tile's last leaf
    /// only.
    pub nodes: Vec<u8>,
    /// As read back, on a tile's last leaf, the hashes of the tile's 16
    /// subtrees of level [`GROUP_LEVEL`] if the store keeps them (empty
    /// otherwise). Ignored when appended: the writer gathers them from the
    /// rows' `nodes`.
    pub level4: Vec<u8>,
    /// The receipt it was staged under, if it was staged: the integrator
    /// records its index and removes it from staging in the transaction
    /// that appends it. Not stored in the row; `None` when read back.
    pub receipt: Option<u64>,
}

/// A leaf staged by an appender that does not hold the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedLeaf {
    /// Its receipt.
    pub receipt: u64,
    /// The canonical encoding.
    pub data: Vec<u8>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size it commits to.
    pub size: u64,
    /// When it was made.
    pub time: Timestamp,
    /// The signed note.
    pub note: String,
}

/// Whose leaves a query wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Leaves of this acting account.
    Account(AccountId),
    /// Leaves of accounts of this organisation.
    Organisation(OrganisationId),
    /// Leaves about this person.
    Person(PersonId),
}

/// A page of leaves of one subject in a time window, ordered by (time, index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRange {
    /// Whose leaves.
    pub subject: Subject,
    /// Window start, inclusive.
    pub from: Timestamp,
    /// Window end, exclusive.
    pub to: Timestamp,
    /// Resume after this (time, index), from the previous page.
    pub after: Option<(Timestamp, u64)>,
    /// Page size.
    pub limit: u32,
}

/// One leaf returned by a query, still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Position in the log.
    pub index: u64,
    /// Its time column.
    pub time: i64,
    /// The canonical encoding.
    pub data: Vec<u8>,
}

/// Read access to a ledger, and the door to its single writer.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Where the ledger is, for messages (never with a password).
    fn location(&self) -> String;

    /// Takes the store's single writer; fails with
    /// [`StoreError::WriterBusy`] while another one lives.
    async fn writer(&self) -> Result<Box<dyn LedgerWriter>, StoreError>;

    /// The door of appenders that do not hold the writer, if this store has
    /// one (PostgreSQL; a SQLite ledger has a single process).
    fn stager(&self) -> Option<Box<dyn LedgerStager>> {
        None
    }

    /// The index of the leaf staged under `receipt`, once it is integrated.
    async fn index_of_receipt(&self, receipt: u64) -> Result<Option<u64>, StoreError> {
        let _ = receipt;
        Ok(None)
    }

    /// Number of leaves staged and not yet integrated.
    async fn staged_backlog(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Number of leaves (one past the highest index).
    async fn size(&self) -> Result<u64, StoreError>;

    /// The lowest level of the hashes a [`LeafRow`] read back carries in
    /// `nodes`: 0 if every completed subtree's hash is stored with its
    /// leaf, [`TILE_LEVEL`] if those inside a tile are recomputed instead.
    fn lowest_stored_level(&self) -> u8 {
        0
    }

    /// Hashes of complete subtrees, in the order asked.
    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;

    /// The leaves with an index in `[from, from + count)`, in index order
    /// (fewer if some are missing).
    async fn leaves(&self, from: u64, count: usize) -> Result<Vec<LeafRow>, StoreError>;

    /// Every checkpoint, by increasing size.
    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError>;

    /// The largest checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// One page of a subject's leaves in a window.
    async fn query(&self, range: &QueryRange) -> Result<Vec<RawEntry>, StoreError>;

    /// Brings the query index up to the leaves and returns once there is
    /// nothing left to do. PostgreSQL's indexer works apart from the
    /// appends (a slice per transaction, behind them); SQLite's index moves
    /// with the appends: nothing to do. Queries are right either way (they
    /// scan the leaves the index does not cover yet), only slower.
    async fn settle_index(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Derived query structures (the runs of postings) that disagree with
    /// the leaves they were built from.
    async fn index_problems(&self) -> Result<Vec<IndexProblem>, StoreError> {
        Ok(Vec::new())
    }

    /// Distinct persons whose data `account` was shown in `[from, to)`,
    /// ascending.
    async fn persons_revealed_to(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<PersonId>, StoreError>;
}

/// The single appender's handle on a store.
#[async_trait]
pub trait LedgerWriter: Send {
    /// Number of leaves.
    async fn size(&mut self) -> Result<u64, StoreError>;

    /// Hashes of complete subtrees, in the order asked.
    async fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;

    /// Appends `rows` (indices `first`, `first + 1`, …) in one transaction,
    /// committed durably before returning; fails with
    /// [`StoreError::Conflict`] unless the store has exactly `first` leaves.
    async fn append(&mut self, first: u64, rows: Vec<LeafRow>) -> Result<(), StoreError>;

    /// Stores a checkpoint durably.
    async fn add_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError>;

    /// Up to `limit` staged leaves, by increasing receipt. Appending a row
    /// with its `receipt` set removes that leaf from staging in the same
    /// transaction.
    async fn staged(&mut self, limit: usize) -> Result<Vec<StagedLeaf>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Releases the writer lock now (dropping the writer releases it too,
    /// but possibly a moment later).
    async fn close(&mut self) {}

    /// Offers the writer a thread of its own. A writer whose work blocks
    /// accepts (returns `true`) and from then on runs its calls inline on the
    /// thread that makes them, which must be that thread, instead of handing
    /// each one to the blocking pool. An asynchronous writer declines.
    fn use_own_thread(&mut self) -> bool {
        false
    }
}

/// Where appenders that do not hold the writer put their leaves.
#[async_trait]
pub trait LedgerStager: Send {
    /// Stages encoded leaves in one transaction, durable before returning;
    /// their receipts are consecutive from the one returned.
    async fn stage(&mut self, leaves: Vec<Vec<u8>>) -> Result<u64, StoreError>;
}

impl LeafRow {
    /// A leaf as read back from its bytes: its query columns decoded (zero
    /// for a leaf that does not decode: the verifier reports it), no
    /// hashes (the caller adds its tile's, if it is a tile's last leaf).
    pub(crate) fn decoded(idx: i64, data: Vec<u8>) -> Result<Self, StoreError> {
        let keys = posting::LeafKeys::decode(idx, &data).unwrap_or(posting::LeafKeys {
            idx,
            time: 0,
            account: 0,
            organisation: 0,
            person: None,
            reveals: false,
        });
        Ok(LeafRow {
            index: to_u64(idx, "leaf index")?,
            time: keys.time,
            account: keys.account,
            organisation: keys.organisation,
            person: keys.person,
            reveals: keys.reveals,
            data,
            nodes: Vec::new(),
            level4: Vec::new(),
            receipt: None,
        })
    }
}

/// Gathers, from the rows a writer appends, the level-4 hashes of the tile
/// being filled, so that the row completing it can store all 16 of them.
/// It follows the appends leaf by leaf; a writer that finds it elsewhere
/// (new, or after a failed append whose rows it had seen) primes it from
/// the store with the hashes of the tile's groups already complete.
#[derive(Debug, Default)]
pub(crate) struct TileGroups {
    /// The next leaf it expects, `None` when it must be primed.
    next: Option<u64>,
    /// The level-4 hashes of the current tile so far.
    hashes: Vec<u8>,
}

impl TileGroups {
    /// Whether it has followed the appends up to leaf `first`.
    pub(crate) fn follows(&self, first: u64) -> bool {
        self.next == Some(first)
    }

    /// The level-4 subtrees of `first`'s tile complete before `first`: the
    /// hashes [`TileGroups::prime`] wants.
    pub(crate) fn before(first: u64) -> Vec<NodeId> {
        let groups = first >> GROUP_LEVEL;
        let tile_start = (first >> TILE_LEVEL) << (TILE_LEVEL - GROUP_LEVEL);
        (tile_start..groups)
            .map(|g| NodeId::new(GROUP_LEVEL, g))
            .collect()
    }

    /// Starts following at leaf `first`, given the hashes of
    /// [`TileGroups::before`]`(first)`, or `None` if the store could not give
    /// them (the tile then gets no row; its proofs read its leaves).
    pub(crate) fn prime(&mut self, first: u64, before: Option<Vec<Hash>>) {
        self.hashes = before.map(|h| h.concat()).unwrap_or_default();
        let complete = self.hashes.len() == Self::before(first).len() * 32;
        self.next = complete.then_some(first);
    }

    /// Takes note of the row appended at `index` with its completed
    /// subtrees' hashes `nodes` (level 0 up); returns the tile's 16 level-4
    /// hashes when this row completes the tile.
    pub(crate) fn push(&mut self, index: u64, nodes: &[u8]) -> Option<Vec<u8>> {
        if self.next != Some(index) {
            self.next = None;
            return None;
        }
        self.next = Some(index + 1);
        let in_tile = index & ((1 << TILE_LEVEL) - 1);
        if in_tile == 0 {
            self.hashes.clear();
        }
        let group_mask = (1 << GROUP_LEVEL) - 1;
        if index & group_mask != group_mask {
            return None;
        }
        let at = usize::from(GROUP_LEVEL) * 32;
        let Some(hash) = nodes.get(at..at + 32) else {
            self.next = None;
            return None;
        };
        self.hashes.extend_from_slice(hash);
        let last = (1 << TILE_LEVEL) - 1;
        (in_tile == last && self.hashes.len() == GROUP_HASHES)
            .then(|| std::mem::take(&mut self.hashes))
    }
}

/// The hash of subtree `id`, of a level from [`GROUP_LEVEL`] to below
/// [`TILE_LEVEL`], from its tile's level-4 hashes (a `tile_level4` row).
pub(crate) fn subtree_of_groups(id: NodeId, level4: &[u8]) -> Result<Hash, StoreError> {
    let missing = || StoreError::MissingNode {
        level: id.level,
        index: id.index,
        leaf: id.last_leaf(),
    };
    if id.level < GROUP_LEVEL || id.level >= TILE_LEVEL || level4.len() != GROUP_HASHES {
        return Err(missing());
    }
    let groups = 1usize << (id.level - GROUP_LEVEL);
    let first = ((id.first_leaf() & ((1 << TILE_LEVEL) - 1)) >> GROUP_LEVEL) as usize;
    let hashes = level4
        .chunks_exact(32)
        .skip(first)
        .take(groups)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect::<Vec<Hash>>();
    fold(hashes).ok_or_else(missing)
}

/// The root of a complete subtree from its `2^k` lowest hashes in order.
fn fold(mut hashes: Vec<Hash>) -> Option<Hash> {
    if !hashes.len().is_power_of_two() {
        return None;
    }
    while hashes.len() > 1 {
        hashes = hashes
            .chunks_exact(2)
            .map(|pair| crate::merkle::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    hashes.pop()
}

/// The part of a leaf's completed-subtree hashes that is stored: levels
/// `TILE_LEVEL` and up, `None` for a leaf that completes none of them.
pub(crate) fn stored_nodes(nodes: &[u8]) -> Option<&[u8]> {
    nodes
        .get(usize::from(TILE_LEVEL) * 32..)
        .filter(|n| !n.is_empty())
}

/// The hash of subtree `id`, below [`TILE_LEVEL`], from the hashes of its
/// leaves in order; missing unless there are exactly `2^level` of them.
pub(crate) fn subtree_of(id: NodeId, hashes: Vec<Hash>) -> Result<Hash, StoreError> {
    let missing = || StoreError::MissingNode {
        level: id.level,
        index: id.index,
        leaf: id.last_leaf(),
    };
    if hashes.len() != 1 << id.level {
        return Err(missing());
    }
    fold(hashes).ok_or_else(missing)
}

/// The leaf that stores subtree `id`, and where in its `nodes`.
pub(crate) fn node_location(id: NodeId) -> (u64, usize) {
    (id.last_leaf(), usize::from(id.level) * 32)
}

/// Extracts subtree `id` from the `nodes` column of its leaf, which holds
/// the hashes from level `lowest` up.
pub(crate) fn node_from_column(id: NodeId, nodes: &[u8], lowest: u8) -> Result<Hash, StoreError> {
    let (leaf, offset) = node_location(id);
    let missing = StoreError::MissingNode {
        level: id.level,
        index: id.index,
        leaf,
    };
    let skipped = usize::from(lowest) * 32;
    if id.level < lowest || nodes.len() + skipped != completed_count(leaf).max(lowest.into()) * 32 {
        return Err(missing);
    }
    let offset = offset - skipped;
    nodes
        .get(offset..offset + 32)
        .and_then(|s| s.try_into().ok())
        .ok_or(missing)
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is out of range")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative")))
}

/// The (time, index) after which a page starts: before the window when no
/// cursor is given.
pub(crate) fn page_start(range: &QueryRange) -> Result<(i64, i64), StoreError> {
    match range.after {
        Some((t, i)) => Ok((t.0, to_i64(i, "cursor index")?)),
        None => Ok((range.from.0, -1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_index_holds_the_rows_of_upper_hashes() {
        let bytes = (usize::from(UPPER_LEVEL - TILE_LEVEL) + 1) * 32;
        assert_eq!(UPPER_ROWS, format!("length(nodes) >= {bytes}"));
        for sql in [
            include_str!("../../migrations/sqlite/0009_upper_subtrees.sql"),
            include_str!("../../migrations/postgres/0009_upper_subtrees.sql"),
        ] {
            assert!(sql.contains(&format!("WHERE {UPPER_ROWS};")), "{sql}");
        }
        assert!(postgres::TILES_QUERY.contains(&format!("AND {UPPER_ROWS}\n")));
    }

    /// Leaf hashes and each leaf's completed-subtree hashes (level 0 up),
    /// as an appender makes them.
    fn appended(n: u64) -> (Vec<Hash>, Vec<Vec<u8>>) {
        let mut frontier = crate::merkle::Frontier::default();
        (0..n)
            .map(|i| {
                let h = crate::merkle::leaf_hash(&i.to_be_bytes());
                let mut nodes = Vec::new();
                frontier.push_into(h, &mut nodes);
                (h, nodes)
            })
            .unzip()
    }

    #[test]
    fn tile_groups_gather_a_tiles_level4_hashes() {
        let (leaves, nodes) = appended(768);
        let level4 = |tile: u64| -> Vec<u8> {
            (0..16)
                .flat_map(|g| {
                    let id = NodeId::new(4, tile * 16 + g);
                    let below = leaves[id.first_leaf() as usize..=id.last_leaf() as usize].to_vec();
                    subtree_of(id, below).unwrap()
                })
                .collect()
        };
        // Followed from the start: tiles 0 and 1 complete at leaves 255, 511.
        let mut g = TileGroups::default();
        g.prime(0, Some(Vec::new()));
        let got: Vec<(u64, Vec<u8>)> = (0..600)
            .filter_map(|i| g.push(i, &nodes[i as usize]).map(|h| (i, h)))
            .collect();
        assert_eq!(got, vec![(255, level4(0)), (511, level4(1))]);
        // Primed in the middle of a group of tile 2, with the two groups
        // before it: the tile still gets its 16 hashes.
        assert_eq!(
            TileGroups::before(512 + 37),
            vec![NodeId::new(4, 32), NodeId::new(4, 33)]
        );
        assert!(TileGroups::before(512).is_empty());
        let before: Vec<Hash> = level4(2)[..64]
            .chunks(32)
            .map(|c| c.try_into().unwrap())
            .collect();
        let mut g = TileGroups::default();
        g.prime(512 + 37, Some(before.clone()));
        assert!(g.follows(549));
        let got: Vec<Vec<u8>> = (549..768)
            .filter_map(|i| g.push(i, &nodes[i as usize]))
            .collect();
        assert_eq!(got, vec![level4(2)]);
        // A gap, a short prime or a failed one: no row rather than a wrong one.
        let mut g = TileGroups::default();
        g.prime(512 + 37, Some(before[..1].to_vec()));
        assert!(!g.follows(549));
        assert!((549..768).all(|i| g.push(i, &nodes[i as usize]).is_none()));
        g.prime(549, None);
        assert!((549..768).all(|i| g.push(i, &nodes[i as usize]).is_none()));
        g.prime(512 + 37, Some(before));
        assert!(g.push(600, &nodes[600]).is_none());
        assert!(!g.follows(601));
        assert!((601..768).all(|i| g.push(i, &nodes[i as usize]).is_none()));
    }

    #[test]
    fn subtrees_from_level4_hashes_match_those_from_leaves() {
        let (leaves, _) = appended(512);
        let level4: Vec<u8> = (16..32)
            .flat_map(|g| {
                subtree_of(NodeId::new(4, g), leaves[g as usize * 16..][..16].to_vec()).unwrap()
            })
            .collect();
        for level in 4..8u8 {
            for index in (256u64 >> level)..(512 >> level) {
                let id = NodeId::new(level, index);
                let below = leaves[id.first_leaf() as usize..=id.last_leaf() as usize].to_vec();
                assert_eq!(
                    subtree_of_groups(id, &level4).unwrap(),
                    subtree_of(id, below).unwrap()
                );
            }
        }
        assert!(subtree_of_groups(NodeId::new(3, 32), &level4).is_err());
        assert!(subtree_of_groups(NodeId::new(8, 1), &level4).is_err());
        assert!(subtree_of_groups(NodeId::new(5, 8), &level4[32..]).is_err());
    }

    #[test]
    fn node_locations() {
        assert_eq!(node_location(NodeId::new(0, 5)), (5, 0));
        assert_eq!(node_location(NodeId::new(1, 2)), (5, 32));
        assert_eq!(node_location(NodeId::new(3, 0)), (7, 96));
        let nodes: Vec<u8> = (0..4u8).flat_map(|l| [l; 32]).collect();
        assert_eq!(
            node_from_column(NodeId::new(2, 1), &nodes, 0).unwrap(),
            [2; 32]
        );
        assert!(node_from_column(NodeId::new(0, 6), &nodes, 0).is_err());
        // Leaf 1023 completes levels 0 to 10; from level 8, three are kept.
        let upper: Vec<u8> = (8..11u8).flat_map(|l| [l; 32]).collect();
        assert_eq!(
            node_from_column(NodeId::new(9, 1), &upper, 8).unwrap(),
            [9; 32]
        );
        assert!(node_from_column(NodeId::new(7, 7), &upper, 8).is_err());
        assert!(node_from_column(NodeId::new(8, 3), &upper[32..], 8).is_err());
    }
}
