//! The ledger's query index on both backends: runs of postings (SQLite
//! migration 0004, PostgreSQL 0007), a log-structured merge with a single
//! builder. The logic is here once; each backend gives its statements
//! through [`RunDb`].
//!
//! When a segment of leaves completes, a level-0 run is built from their
//! keys (on SQLite the writer kept them in memory; on PostgreSQL the
//! indexer reads them back), a slice per commit, into the three posting
//! tables in key order (so each table grows at its right edge). `FANOUT` live runs of one level are merged into one
//! run of the next level, and once that run is live the merged ones are
//! deleted, again a slice per commit. A run is built under state 0 and
//! becomes live (and its sources retired) in one commit; queries read only
//! live runs, which cover leaves 0 up to some index with no gap, and scan
//! the leaves after them (the segment being appended and at most one being
//! built).
//!
//! Every slice writes whole chunks, so what is in the tables is always a
//! prefix of the run in its order: a writer that stops (closed, crashed, or
//! its transaction failed) is resumed from the last stored chunk.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;

use crate::leaf::{AccountId, PersonId, Timestamp};
use crate::store::posting::{
    self, BLOB_BUDGET, Bases, CHUNK, Format, Kind, LeafKeys, Posting, StoredChunk,
};
use crate::store::{
    IndexProblem, LeafRow, QueryRange, RawEntry, StoreError, Subject, page_start, to_i64, to_u64,
};

/// The statements the run index needs, each run on one connection inside
/// its caller's transaction (a snapshot for reads; for writes, the commit
/// that makes a slice of work durable). Errors are the backend's.
pub(crate) trait RunDb {
    /// Number of leaves (one past the highest index).
    fn size(&mut self) -> Result<i64, StoreError>;
    /// Every run, by first leaf, then level descending, then id.
    fn runs(&mut self) -> Result<Vec<Run>, StoreError>;
    /// The keys of the leaves `[from, to)` that decode, by index.
    fn leaf_keys(&mut self, from: i64, to: i64) -> Result<Vec<LeafKeys>, StoreError>;
    /// The bytes of the given leaves, in the order asked; an error if one
    /// is missing.
    fn leaf_data(&mut self, idx: &[i64]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Up to `limit` chunks of `kind` of run `run` after the key columns
    /// `after` (key, time offset, index offset), in that order.
    fn chunks_after(
        &mut self,
        kind: Kind,
        run: i64,
        after: (i64, i64, i64),
        limit: i64,
    ) -> Result<Vec<StoredChunk>, StoreError>;
    /// For each `(run, after)`, what [`RunDb::chunks_after`] gives: one
    /// statement for all where the backend can (a round trip per run
    /// would dominate a query on PostgreSQL).
    fn chunks_after_each(
        &mut self,
        kind: Kind,
        seeks: &[(i64, (i64, i64, i64))],
        limit: i64,
    ) -> Result<Vec<Vec<StoredChunk>>, StoreError> {
        seeks
            .iter()
            .map(|(run, after)| self.chunks_after(kind, *run, *after, limit))
            .collect()
    }
    /// The run's last chunk of `kind`.
    fn last_chunk(&mut self, kind: Kind, run: i64) -> Result<Option<StoredChunk>, StoreError>;
    /// Stores one chunk (a backend may hold it back until its next
    /// statement, never past the end of the transaction).
    fn insert_chunk(&mut self, kind: Kind, run: i64, chunk: StoredChunk) -> Result<(), StoreError>;
    /// Deletes the chunks of the run's first `keys` keys of `kind`;
    /// returns how many rows went.
    fn delete_chunks(&mut self, kind: Kind, run: i64, keys: i64) -> Result<usize, StoreError>;
    /// Records a run being built; returns its id.
    fn insert_run(&mut self, run: &Run) -> Result<i64, StoreError>;
    /// Moves run `id` from state `from` to `to` in one conditional
    /// statement; returns how many rows changed (0 or 1).
    fn set_state(&mut self, id: i64, from: i64, to: i64) -> Result<usize, StoreError>;
    /// Removes a retired run's row.
    fn delete_run(&mut self, id: i64) -> Result<(), StoreError>;
}

/// Leaves per segment (the size of a level-0 run), as a shift. The unit
/// tests shrink segments and fan-out so that merges up to the top level
/// happen within a few thousand leaves.
#[cfg(not(test))]
pub(crate) const SEGMENT_SHIFT: u32 = 12;
#[cfg(test)]
pub(crate) const SEGMENT_SHIFT: u32 = 6;
const SEGMENT: i64 = 1 << SEGMENT_SHIFT;
/// Runs of one level merged into one of the next.
#[cfg(not(test))]
const FANOUT: usize = 32;
#[cfg(test)]
const FANOUT: usize = 4;
/// The highest level: runs of 2^(12 + 5·2) = 2^22 leaves, never merged.
/// Each level more would cost every posting one more write and delete;
/// each level less, more runs for a query to seek (at 500 million leaves:
/// 119 of the top level and at most 31 of each other, 181).
#[cfg(not(test))]
const MAX_LEVEL: i64 = 2;
#[cfg(test)]
const MAX_LEVEL: i64 = 3;
/// Fewest postings a commit moves while there is index work.
#[cfg(not(test))]
const MIN_SLICE: usize = 64;
#[cfg(test)]
const MIN_SLICE: usize = 16;
/// Postings a commit moves per leaf it appends. A leaf's postings are
/// written once per level and deleted once per merge: about 3 × 3 + 3 × 2
/// = 15 moves; more, so that the work never falls behind.
const WORK_PER_LEAF: usize = 32;
/// Chunks fetched at a time from a run being merged.
const FETCH: i64 = 64;
/// Run states.
const BUILDING: i64 = 0;
const LIVE: i64 = 1;
const RETIRED: i64 = 2;

/// A run as listed in the `run` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub id: i64,
    pub level: i64,
    pub first: i64,
    pub end: i64,
    pub min_time: i64,
    pub max_time: i64,
    pub state: i64,
    pub format: Format,
}

impl Run {
    fn bases(&self) -> Bases {
        Bases::new(self.first, self.min_time, self.max_time)
    }

    /// Decodes one of its chunks of `kind`, appending the postings to `out`.
    fn decode(
        &self,
        kind: Kind,
        chunk: &StoredChunk,
        out: &mut Vec<Posting>,
    ) -> Result<(), StoreError> {
        posting::decode(kind, self.format, self.bases(), chunk, out)
    }
}

/// The statement listing runs, in [`RunDb::runs`]'s order (the same SQL on
/// both backends).
pub(crate) const RUNS_SQL: &str =
    "SELECT id, level, first_leaf, end_leaf, min_time, max_time, state, format FROM run
     ORDER BY first_leaf, level DESC, id";

/// A run's format column, checked.
pub(crate) fn run_format(column: i64) -> Result<Format, StoreError> {
    Format::from_column(column)
        .ok_or_else(|| StoreError::Corrupt(format!("a run of unknown format {column}")))
}

/// The live runs, by first leaf.
fn live_runs(db: &mut dyn RunDb) -> Result<Vec<Run>, StoreError> {
    Ok(db.runs()?.into_iter().filter(|r| r.state == LIVE).collect())
}

/// Where the live runs end: leaves from here are scanned.
fn covered(live: &[Run]) -> i64 {
    live.last().map_or(0, |r| r.end)
}

/// Calls `f(i, p)` with the postings `p` of `key` in each run `runs[i]`
/// that come after `(time, idx)`, in order within each run, until it
/// returns false for that run: from the first chunk that ends after that
/// position to the first that ends past the key (in the multi-key format, a
/// chunk may start with the key and end with another). The runs are read
/// together, a batch of chunks of each per call of
/// [`RunDb::chunks_after_each`] (one round trip on PostgreSQL).
fn scan_key(
    db: &mut dyn RunDb,
    kind: Kind,
    runs: &[Run],
    key: i64,
    after: (i64, i64),
    mut f: impl FnMut(usize, &Posting) -> bool,
) -> Result<(), StoreError> {
    // Per run: where to read on from, or None once done.
    let mut positions: Vec<Option<(i64, i64, i64)>> = runs
        .iter()
        .map(|run| {
            let (t, i) = run.bases().offsets(after.0, after.1);
            Some((key, t, i))
        })
        .collect();
    let mut postings = Vec::with_capacity(CHUNK);
    // A page mostly lies in the first chunk or two: fetch a few, then more.
    let mut batch = 2;
    loop {
        let seeks: Vec<(usize, i64, (i64, i64, i64))> = positions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (i, runs[i].id, p)))
            .collect();
        if seeks.is_empty() {
            return Ok(());
        }
        let asked: Vec<(i64, (i64, i64, i64))> = seeks.iter().map(|s| (s.1, s.2)).collect();
        let fetched = db.chunks_after_each(kind, &asked, batch)?;
        for ((i, _, _), chunks) in seeks.into_iter().zip(fetched) {
            let run = &runs[i];
            let complete = chunks.len() < batch as usize;
            let mut more = true;
            for chunk in chunks {
                if chunk.key > key && run.format == Format::OneKey {
                    more = false;
                    break;
                }
                positions[i] = Some((chunk.key, chunk.time_off, chunk.idx_off));
                postings.clear();
                run.decode(kind, &chunk, &mut postings)?;
                for p in postings
                    .iter()
                    .filter(|p| p.key == key && (p.time, p.idx) > after)
                {
                    if !f(i, p) {
                        more = false;
                        break;
                    }
                }
                if !more || chunk.key > key {
                    more = false;
                    break;
                }
            }
            if !more || complete {
                positions[i] = None;
            }
        }
        batch = (batch * 2).min(FETCH);
    }
}

/// One page of a subject's leaves: each live run in the window gives its
/// first `limit` postings after the cursor, the scanned tail its own; the
/// best `limit` of all are then read.
pub(crate) fn query(db: &mut dyn RunDb, range: &QueryRange) -> Result<Vec<RawEntry>, StoreError> {
    let (kind, key) = match range.subject {
        Subject::Account(a) => (Kind::Account, a.get()),
        Subject::Organisation(o) => (Kind::Organisation, o.get()),
        Subject::Person(p) => (Kind::Person, p.get()),
    };
    let start = page_start(range)?;
    let (from, to) = (range.from.0, range.to.0);
    let limit = (range.limit as usize).max(1);
    let live = live_runs(db)?;
    let mut best: Vec<(i64, i64)> = Vec::new();
    let prune = |best: &mut Vec<(i64, i64)>| {
        if best.len() > 4 * limit {
            best.sort_unstable();
            best.truncate(limit);
        }
    };
    let runs: Vec<Run> = live
        .iter()
        .filter(|r| r.max_time >= from && r.min_time < to && r.max_time >= start.0)
        .copied()
        .collect();
    // Each run gives at most `limit` postings.
    let mut taken = vec![0; runs.len()];
    scan_key(db, kind, &runs, key, start, |i, p| {
        if p.time >= to {
            return false;
        }
        if p.time >= from {
            best.push((p.time, p.idx));
            prune(&mut best);
            taken[i] += 1;
        }
        taken[i] < limit
    })?;
    for k in db.leaf_keys(covered(&live), i64::MAX)? {
        if let Some(p) = kind.posting(&k)
            && p.key == key
            && p.time >= from
            && p.time < to
            && (p.time, p.idx) > start
        {
            best.push((p.time, p.idx));
        }
    }
    best.sort_unstable();
    best.truncate(range.limit as usize);
    let idx: Vec<i64> = best.iter().map(|(_, i)| *i).collect();
    let data = db.leaf_data(&idx)?;
    best.into_iter()
        .zip(data)
        .map(|((time, idx), data)| {
            Ok(RawEntry {
                index: to_u64(idx, "leaf index")?,
                time,
                data,
            })
        })
        .collect()
}

/// Distinct persons whose data `account` was shown in `[from, to)`, from
/// the account postings alone (and the tail).
pub(crate) fn persons_revealed_to(
    db: &mut dyn RunDb,
    account: AccountId,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<PersonId>, StoreError> {
    let live = live_runs(db)?;
    let mut persons = std::collections::BTreeSet::new();
    let mut keep = |p: &Posting| {
        if p.reveals
            && let Some(person) = p.person
        {
            persons.insert(person);
        }
    };
    let runs: Vec<Run> = live
        .iter()
        .filter(|r| r.max_time >= from.0 && r.min_time < to.0)
        .copied()
        .collect();
    scan_key(
        db,
        Kind::Account,
        &runs,
        account.get(),
        (from.0, -1),
        |_, p| {
            if p.time >= to.0 {
                return false;
            }
            keep(p);
            true
        },
    )?;
    for k in db.leaf_keys(covered(&live), i64::MAX)? {
        if let Some(p) = Kind::Account.posting(&k)
            && p.key == account.get()
            && p.time >= from.0
            && p.time < to.0
        {
            keep(&p);
        }
    }
    Ok(persons.into_iter().map(PersonId::new).collect())
}

/// Compares the live runs with the leaves they were built from: they must
/// cover leaves 0 onwards with no gap or overlap, every leaf's time must lie
/// in its run's bounds (queries skip runs by them), each table's chunks
/// must decode in order, and each table must hold exactly the postings of
/// the run's leaves. That last check compares, per run and table, the sums
/// of a hash keyed afresh for each check over the expected and the stored
/// postings: memory stays constant whatever the run's size, and no change
/// made before the check can be tuned to keep a sum.
pub(crate) fn index_problems(db: &mut dyn RunDb) -> Result<Vec<IndexProblem>, StoreError> {
    let size = db.size()?;
    let hasher = std::collections::hash_map::RandomState::new();
    let mut problems = Vec::new();
    let mut expected_first = 0;
    for run in live_runs(db)? {
        let segment = to_u64(run.first.max(0) >> SEGMENT_SHIFT, "run")?;
        if run.first != expected_first || run.end > size {
            problems.push(IndexProblem {
                segment: to_u64(expected_first >> SEGMENT_SHIFT, "run")?,
                table: "run",
            });
            break;
        }
        expected_first = run.end;
        let mut sums = [0u64; 3];
        let mut in_bounds = true;
        for k in db.leaf_keys(run.first, run.end)? {
            in_bounds &= (run.min_time..=run.max_time).contains(&k.time);
            for (t, kind) in Kind::ALL.iter().enumerate() {
                if let Some(p) = kind.posting(&k) {
                    sums[t] = sums[t].wrapping_add(hasher.hash_one((t, p)));
                }
            }
        }
        if !in_bounds {
            problems.push(IndexProblem {
                segment,
                table: "run",
            });
        }
        for (t, kind) in Kind::ALL.iter().enumerate() {
            // Damage is a problem to report; a failing store is an error,
            // not evidence of tampering.
            let matches = match stored_sum(db, *kind, &run, |p| hasher.hash_one((t, p))) {
                Ok(sum) => sum == sums[t],
                Err(StoreError::Corrupt(_)) => false,
                Err(e) => return Err(e),
            };
            if !matches {
                problems.push(IndexProblem {
                    segment,
                    table: kind.table(),
                });
            }
        }
    }
    Ok(problems)
}

/// The sum of `h` over a run's stored postings of one kind; an error if a
/// chunk does not decode, or a key's postings are not in strictly
/// increasing (time, index) order across its chunks, or one lies outside
/// the run.
fn stored_sum(
    db: &mut dyn RunDb,
    kind: Kind,
    run: &Run,
    h: impl Fn(Posting) -> u64,
) -> Result<u64, StoreError> {
    let mut sum = 0u64;
    let mut previous: Option<Posting> = None;
    let mut postings = Vec::with_capacity(CHUNK);
    let mut after = (i64::MIN, i64::MIN, i64::MIN);
    loop {
        let chunks = db.chunks_after(kind, run.id, after, FETCH)?;
        let Some(last) = chunks.last() else {
            break;
        };
        after = (last.key, last.time_off, last.idx_off);
        for chunk in &chunks {
            postings.clear();
            run.decode(kind, chunk, &mut postings)?;
            for p in &postings {
                let ordered = previous.is_none_or(|q| q.position() < p.position());
                if !ordered || !(run.first..run.end).contains(&p.idx) {
                    return Err(StoreError::Corrupt(format!(
                        "{} is out of order",
                        kind.table()
                    )));
                }
                sum = sum.wrapping_add(h(*p));
                previous = Some(*p);
            }
        }
    }
    Ok(sum)
}

fn insert_run(
    db: &mut dyn RunDb,
    level: i64,
    first: i64,
    end: i64,
    min_time: i64,
    max_time: i64,
) -> Result<Run, StoreError> {
    let mut run = Run {
        id: 0,
        level,
        first,
        end,
        min_time,
        max_time,
        state: BUILDING,
        format: Format::MultiKey,
    };
    run.id = db.insert_run(&run)?;
    Ok(run)
}

/// Changes a run's state from `from` to `to`, failing if it was not in
/// `from` (compare-and-set: two writers never both move it).
fn set_state(db: &mut dyn RunDb, run: &Run, from: i64, to: i64) -> Result<(), StoreError> {
    let changed = db.set_state(run.id, from, to)?;
    if changed != 1 {
        return Err(StoreError::Corrupt(format!(
            "run {} was not in state {from}",
            run.id
        )));
    }
    Ok(())
}

/// Where a run's postings come from, for one kind.
enum Source {
    /// A level-0 run's, from leaf keys, sorted.
    Memory { postings: Vec<Posting>, next: usize },
    /// A stored run being merged, fetched a few chunks at a time.
    Stored {
        run: Run,
        kind: Kind,
        buffer: VecDeque<Posting>,
        /// The last chunk fetched (its key columns).
        after: (i64, i64, i64),
        /// Postings at or before this position were written already.
        skip: Option<(i64, i64, i64)>,
        exhausted: bool,
    },
}

impl Source {
    fn peek(&mut self, db: &mut dyn RunDb) -> Result<Option<Posting>, StoreError> {
        match self {
            Source::Memory { postings, next } => Ok(postings.get(*next).copied()),
            Source::Stored {
                run,
                kind,
                buffer,
                after,
                skip,
                exhausted,
            } => {
                while buffer.is_empty() && !*exhausted {
                    // A chunk's worth is enough: opening a merge reads
                    // every source, and one commit's slice is small. A
                    // chunk holds at least one posting: fetch a few.
                    let chunks = db.chunks_after(*kind, run.id, *after, 4)?;
                    let fetched = chunks.len() as i64;
                    let mut postings = Vec::new();
                    let mut full = false;
                    for chunk in chunks {
                        *after = (chunk.key, chunk.time_off, chunk.idx_off);
                        run.decode(*kind, &chunk, &mut postings)?;
                        if postings.len() >= CHUNK {
                            full = true;
                            break;
                        }
                    }
                    *exhausted = !full && fetched < 4;
                    buffer.extend(
                        postings
                            .into_iter()
                            .filter(|p| skip.is_none_or(|s| p.position() > s)),
                    );
                }
                Ok(buffer.front().copied())
            }
        }
    }

    fn pop(&mut self) {
        match self {
            Source::Memory { next, .. } => *next += 1,
            Source::Stored { buffer, .. } => {
                buffer.pop_front();
            }
        }
    }
}

/// The sources of one kind being merged, and a heap of their next
/// postings (each source's front, with its place in `sources`): one
/// comparison per level of the heap for each posting, not one per source.
struct Merge {
    sources: Vec<Source>,
    heads: BinaryHeap<Reverse<(Posting, usize)>>,
}

impl Merge {
    fn open(db: &mut dyn RunDb, mut sources: Vec<Source>) -> Result<Self, StoreError> {
        let mut heads = BinaryHeap::with_capacity(sources.len());
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(p) = s.peek(db)? {
                heads.push(Reverse((p, i)));
            }
        }
        Ok(Merge { sources, heads })
    }

    /// The least posting of all sources, taken out of its source.
    fn next(&mut self, db: &mut dyn RunDb) -> Result<Option<Posting>, StoreError> {
        let Some(Reverse((p, i))) = self.heads.pop() else {
            return Ok(None);
        };
        if let Some(source) = self.sources.get_mut(i) {
            source.pop();
            if let Some(q) = source.peek(db)? {
                self.heads.push(Reverse((q, i)));
            }
        }
        Ok(Some(p))
    }
}

/// What a run is built from.
enum Inputs {
    /// A segment's leaf keys (level 0).
    Keys(Vec<LeafKeys>),
    /// The live runs it merges, in order.
    Runs(Vec<Run>),
}

/// A run being built: kind by kind, a k-way merge of its sources into
/// chunks.
struct Build {
    run: Run,
    inputs: Inputs,
    /// Index in `Kind::ALL` of the kind being written.
    kind: usize,
    /// The current kind's sources, opened after `last`.
    sources: Option<Merge>,
    /// The last posting stored for the current kind.
    last: Option<Posting>,
    chunk: Vec<Posting>,
    /// The blob bytes of `chunk`'s postings (without the count).
    chunk_bytes: usize,
}

impl Build {
    /// Resumes (or starts) building `run` after what its tables hold.
    fn resume(db: &mut dyn RunDb, run: Run, inputs: Inputs) -> Result<Self, StoreError> {
        let mut build = Build {
            run,
            inputs,
            kind: 0,
            sources: None,
            last: None,
            chunk: Vec::with_capacity(CHUNK),
            chunk_bytes: 0,
        };
        for (t, kind) in Kind::ALL.iter().enumerate().rev() {
            if let Some(chunk) = db.last_chunk(*kind, run.id)? {
                let mut postings = Vec::new();
                run.decode(*kind, &chunk, &mut postings)?;
                build.kind = t;
                build.last = postings.last().copied();
                break;
            }
        }
        Ok(build)
    }

    fn open_sources(&self, kind: Kind) -> Vec<Source> {
        let skip = self.last.map(|p| p.position());
        match &self.inputs {
            Inputs::Keys(keys) => {
                let mut postings: Vec<Posting> =
                    keys.iter().filter_map(|k| kind.posting(k)).collect();
                postings.sort_unstable();
                let next = skip.map_or(0, |s| postings.partition_point(|p| p.position() <= s));
                vec![Source::Memory { postings, next }]
            }
            Inputs::Runs(runs) => runs
                .iter()
                .map(|run| {
                    let after = match self.last {
                        None => (i64::MIN, i64::MIN, i64::MIN),
                        Some(p) => {
                            let (t, i) = run.bases().offsets(p.time, p.idx);
                            (p.key, t, i)
                        }
                    };
                    Source::Stored {
                        run: *run,
                        kind,
                        buffer: VecDeque::new(),
                        after,
                        skip,
                        exhausted: false,
                    }
                })
                .collect(),
        }
    }

    /// Moves up to `budget` postings; returns how many, and whether the run
    /// is complete (then published: live, its sources retired).
    fn advance(&mut self, db: &mut dyn RunDb, budget: usize) -> Result<(usize, bool), StoreError> {
        let mut used = 0;
        while let Some(&kind) = Kind::ALL.get(self.kind) {
            let mut sources = match self.sources.take() {
                Some(s) => s,
                None => Merge::open(db, self.open_sources(kind))?,
            };
            loop {
                if used >= budget {
                    self.flush(db, kind)?;
                    self.sources = Some(sources);
                    return Ok((used, false));
                }
                let Some(p) = sources.next(db)? else {
                    self.flush(db, kind)?;
                    self.kind += 1;
                    self.last = None;
                    break;
                };
                used += 1;
                let previous = self.chunk.last().or(self.last.as_ref());
                if previous.is_some_and(|q| q.position() == p.position()) {
                    continue;
                }
                let (format, bases) = (self.run.format, self.run.bases());
                if let Some(q) = self.chunk.last()
                    && (!format.may_share(q, &p)
                        || self.chunk.len() >= CHUNK
                        || self.chunk_bytes + posting::cost(kind, format, bases, Some(q), &p)
                            > BLOB_BUDGET)
                {
                    self.flush(db, kind)?;
                }
                // A chunk's first posting has no delta.
                self.chunk_bytes += posting::cost(kind, format, bases, self.chunk.last(), &p);
                self.chunk.push(p);
            }
        }
        set_state(db, &self.run, BUILDING, LIVE)?;
        if let Inputs::Runs(runs) = &self.inputs {
            for source in runs {
                set_state(db, source, LIVE, RETIRED)?;
            }
        }
        Ok((used, true))
    }

    fn flush(&mut self, db: &mut dyn RunDb, kind: Kind) -> Result<(), StoreError> {
        let Some(chunk) = posting::encode(kind, self.run.format, self.run.bases(), &self.chunk)
        else {
            return Ok(());
        };
        db.insert_chunk(kind, self.run.id, chunk)?;
        self.last = self.chunk.last().copied();
        self.chunk.clear();
        self.chunk_bytes = 0;
        Ok(())
    }
}

/// A merged run's postings being deleted.
struct Retire {
    run: Run,
    kind: usize,
}

impl Retire {
    fn advance(&mut self, db: &mut dyn RunDb, budget: usize) -> Result<(usize, bool), StoreError> {
        let mut used = 0;
        while let Some(kind) = Kind::ALL.get(self.kind) {
            if used >= budget {
                return Ok((used, false));
            }
            // Whole keys at a time, the first few of the run.
            let deleted = db.delete_chunks(*kind, self.run.id, (budget - used).min(4096) as i64)?;
            used += deleted;
            if deleted == 0 {
                self.kind += 1;
            }
        }
        db.delete_run(self.run.id)?;
        Ok((used, true))
    }
}

/// Merging or deleting, in the background of appends.
enum Background {
    Merge(Build),
    Retire(Retire),
}

/// The writer's view of the index: the keys of the segment being appended,
/// the complete segments waiting for their run, the level-0 run being built
/// and one merge or deletion.
pub(crate) struct RunIndexer {
    current: Vec<LeafKeys>,
    waiting: VecDeque<(i64, Option<Vec<LeafKeys>>)>,
    /// Complete segments seen so far (queued, built, or covered).
    known: i64,
    build: Option<Build>,
    background: Option<Background>,
    /// Whether runs changed since the last look for background work.
    look: bool,
}

impl RunIndexer {
    /// Rebuilds the state from the database, inside the caller's
    /// transaction; with `current`, also the keys of the segment being
    /// appended (an appender that drives the index tells it of the rest).
    pub(crate) fn load(db: &mut dyn RunDb, current: bool) -> Result<Self, StoreError> {
        let size = db.size()?;
        let complete = size >> SEGMENT_SHIFT;
        let runs = db.runs()?;
        let covered_end = runs
            .iter()
            .filter(|r| r.state != RETIRED)
            .map(|r| r.end)
            .max()
            .unwrap_or(0);
        let mut build = None;
        let mut background = None;
        for run in runs.iter().filter(|r| r.state == BUILDING) {
            if run.level == 0 {
                let keys = db.leaf_keys(run.first, run.end)?;
                build = Some(Build::resume(db, *run, Inputs::Keys(keys))?);
            } else {
                let sources = runs
                    .iter()
                    .filter(|s| s.state == LIVE && s.first >= run.first && s.end <= run.end)
                    .copied()
                    .collect();
                background = Some(Background::Merge(Build::resume(
                    db,
                    *run,
                    Inputs::Runs(sources),
                )?));
            }
        }
        Ok(RunIndexer {
            current: if current {
                db.leaf_keys(complete << SEGMENT_SHIFT, size)?
            } else {
                Vec::new()
            },
            waiting: ((covered_end >> SEGMENT_SHIFT)..complete)
                .map(|s| (s, None))
                .collect(),
            known: complete,
            build,
            background,
            look: true,
        })
    }

    /// Takes note of appended rows (in index order, following the last
    /// ones) and moves the index forward by a slice proportional to them,
    /// inside the append's transaction.
    pub(crate) fn appended(
        &mut self,
        db: &mut dyn RunDb,
        rows: &[LeafRow],
    ) -> Result<(), StoreError> {
        for row in rows {
            let keys = LeafKeys {
                idx: to_i64(row.index, "leaf index")?,
                time: row.time,
                account: row.account,
                organisation: row.organisation,
                person: row.person,
                reveals: row.reveals,
            };
            self.current.push(keys);
            if (keys.idx + 1) % SEGMENT == 0 {
                let segment = keys.idx >> SEGMENT_SHIFT;
                self.waiting
                    .push_back((segment, Some(std::mem::take(&mut self.current))));
                self.known = segment + 1;
            }
        }
        self.work(db, MIN_SLICE.max(rows.len().saturating_mul(WORK_PER_LEAF)))?;
        Ok(())
    }

    /// For an indexer apart from the appender: takes note of the segments
    /// completed since it last looked (their keys are read back from the
    /// leaves when their run is built), then does up to `budget` postings of
    /// work. Returns the work done: 0 once there is none left.
    pub(crate) fn catch_up(
        &mut self,
        db: &mut dyn RunDb,
        budget: usize,
    ) -> Result<usize, StoreError> {
        let complete = db.size()? >> SEGMENT_SHIFT;
        while self.known < complete {
            self.waiting.push_back((self.known, None));
            self.known += 1;
        }
        self.work(db, budget)
    }

    /// Does up to `budget` postings of work: level-0 runs first (queries
    /// scan the leaves they do not cover yet), then merges and deletions.
    fn work(&mut self, db: &mut dyn RunDb, budget: usize) -> Result<usize, StoreError> {
        // Level-0 runs come first (queries scan the leaves they do not
        // cover yet), but they take at most half of the budget while merges
        // wait: an indexer far behind the appends (PostgreSQL's, after a
        // burst) would otherwise build every level-0 run before merging
        // any, and the tables would hold each posting twice at the end (a
        // merged run's space is reused only once it is deleted and
        // vacuumed): 2.2x the live size at 3 M leaves.
        // A step may overshoot its share by part of a chunk.
        let mut used = self.build_level0(db, budget.div_ceil(2))?;
        used += self.background(db, budget.saturating_sub(used))?;
        used += self.build_level0(db, budget.saturating_sub(used))?;
        Ok(used)
    }

    /// Up to `budget` postings of level-0 runs.
    fn build_level0(&mut self, db: &mut dyn RunDb, budget: usize) -> Result<usize, StoreError> {
        let mut used = 0;
        while used < budget {
            if self.build.is_none() {
                let Some((segment, keys)) = self.waiting.pop_front() else {
                    break;
                };
                let (first, end) = (segment << SEGMENT_SHIFT, (segment + 1) << SEGMENT_SHIFT);
                let keys = match keys {
                    Some(k) => k,
                    None => db.leaf_keys(first, end)?,
                };
                let min = keys.iter().map(|k| k.time).min().unwrap_or(0);
                let max = keys.iter().map(|k| k.time).max().unwrap_or(0);
                let run = insert_run(db, 0, first, end, min, max)?;
                self.build = Some(Build::resume(db, run, Inputs::Keys(keys))?);
            }
            if let Some(b) = &mut self.build {
                let (u, done) = b.advance(db, budget - used)?;
                used += u;
                if done {
                    self.build = None;
                    self.look = true;
                }
            }
        }
        Ok(used)
    }

    /// Up to `budget` postings of merges and deletions.
    fn background(&mut self, db: &mut dyn RunDb, budget: usize) -> Result<usize, StoreError> {
        let mut used = 0;
        while used < budget {
            if self.background.is_none() {
                if !self.look {
                    break;
                }
                self.background = next_background(db)?;
                if self.background.is_none() {
                    self.look = false;
                    break;
                }
            }
            let (u, done) = match &mut self.background {
                Some(Background::Merge(b)) => b.advance(db, budget - used)?,
                Some(Background::Retire(r)) => r.advance(db, budget - used)?,
                None => break,
            };
            used += u.max(1);
            if done {
                self.background = None;
                self.look = true;
            }
        }
        Ok(used)
    }
}

/// The next deletion of a merged run or, failing one, the next merge (the
/// oldest `FANOUT` live runs of the lowest level that has that many).
/// Deletions first: they free the space the next runs reuse, and an
/// indexer behind the appends always has a merge to do (at 10 M leaves on
/// PostgreSQL, 2,400 merged level-0 runs waited, undeleted, and the
/// posting tables took three times their live size).
fn next_background(db: &mut dyn RunDb) -> Result<Option<Background>, StoreError> {
    let runs = db.runs()?;
    if runs.iter().any(|r| r.state == BUILDING && r.level > 0) {
        return Ok(None);
    }
    if let Some(r) = runs.iter().find(|r| r.state == RETIRED) {
        return Ok(Some(Background::Retire(Retire { run: *r, kind: 0 })));
    }
    for level in 0..MAX_LEVEL {
        let sources: Vec<Run> = runs
            .iter()
            .filter(|r| r.state == LIVE && r.level == level)
            .take(FANOUT)
            .copied()
            .collect();
        if sources.len() < FANOUT {
            continue;
        }
        if sources.windows(2).any(|w| w[0].end != w[1].first) {
            return Err(StoreError::Corrupt(format!(
                "the level-{level} runs are not contiguous"
            )));
        }
        let (first, end) = (sources[0].first, sources[FANOUT - 1].end);
        let min = sources.iter().map(|r| r.min_time).min().unwrap_or(0);
        let max = sources.iter().map(|r| r.max_time).max().unwrap_or(0);
        let run = insert_run(db, level + 1, first, end, min, max)?;
        return Ok(Some(Background::Merge(Build::resume(
            db,
            run,
            Inputs::Runs(sources),
        )?)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    use crate::store::LedgerStore;
    use crate::store::sqlite::tests::{assert_queries_match, leaves, rows_of, run_levels, settle};
    use crate::store::sqlite::{SqliteLedgerStore, SqliteRuns};

    /// Rewrites every run in the one-key format, as migration 0005 finds
    /// the runs that 0004's code built.
    fn rewrite_as_one_key(c: &Connection) {
        let db = &mut SqliteRuns(c);
        for run in db.runs().unwrap() {
            for kind in Kind::ALL {
                let mut postings = Vec::new();
                let start = (i64::MIN, i64::MIN, i64::MIN);
                for chunk in db.chunks_after(kind, run.id, start, i64::MAX).unwrap() {
                    run.decode(kind, &chunk, &mut postings).unwrap();
                }
                c.execute(
                    &format!("DELETE FROM {} WHERE run = ?1", kind.table()),
                    [run.id],
                )
                .unwrap();
                for chunk in postings.chunk_by(|a, b| a.key == b.key) {
                    for part in chunk.chunks(CHUNK) {
                        let stored =
                            posting::encode(kind, Format::OneKey, run.bases(), part).unwrap();
                        db.insert_chunk(kind, run.id, stored).unwrap();
                    }
                }
            }
        }
        c.execute("UPDATE run SET format = 0", []).unwrap();
    }

    /// Runs of both formats side by side: queries and the check read each
    /// in its own, merges of old runs write new ones in the multi-key
    /// format, and in that format persons read once share rows.
    #[tokio::test]
    async fn one_key_runs_are_read_and_merged_into_multi_key_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 2_000);
        let mut w = store.writer().await.unwrap();
        w.append(0, rows_of(0, &all, &mut frontier)).await.unwrap();
        let all = settle(&store, &mut w, all, &mut frontier).await;
        w.close().await;
        drop(w);
        let c = Connection::open(store.path()).unwrap();
        let multi_key_rows: i64 = c
            .query_row("SELECT count(*) FROM posting_person", [], |r| r.get(0))
            .unwrap();
        rewrite_as_one_key(&c);
        let one_key_rows: i64 = c
            .query_row("SELECT count(*) FROM posting_person", [], |r| r.get(0))
            .unwrap();
        assert!(
            multi_key_rows < one_key_rows,
            "{multi_key_rows} vs {one_key_rows}"
        );
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;

        // Enough leaves for merges of the old runs with new ones.
        let mut w = store.writer().await.unwrap();
        let more = leaves(all.len() as u64, 4_200);
        w.append(
            all.len() as u64,
            rows_of(all.len() as u64, &more, &mut frontier),
        )
        .await
        .unwrap();
        let mut all = all;
        all.extend(more);
        let all = settle(&store, &mut w, all, &mut frontier).await;
        assert_eq!(store.index_problems().await.unwrap(), vec![]);
        assert_queries_match(&store, &all).await;
        let formats: Vec<(i64, i64)> = c
            .prepare("SELECT level, format FROM run WHERE state = 1 ORDER BY first_leaf")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(formats.contains(&(3, 1)), "{formats:?}");
        assert_eq!(run_levels(&store).len(), formats.len());
    }

    /// Opening a merge peeks at every source, inside an append's commit:
    /// each source reads about a chunk's worth of postings at a time, not
    /// `FETCH` chunks (at a million leaves, opening a level-1 merge once
    /// decoded 32 × 64 full chunks and held a commit for 12 ms), and reads
    /// on from where it stopped, missing nothing.
    #[tokio::test]
    async fn a_stored_source_reads_a_chunk_at_a_time_and_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
        let mut frontier = crate::merkle::Frontier::new();
        let all = leaves(0, 1_100);
        let mut w = store.writer().await.unwrap();
        w.append(0, rows_of(0, &all, &mut frontier)).await.unwrap();
        settle(&store, &mut w, all, &mut frontier).await;
        let c = Connection::open(store.path()).unwrap();
        let db = &mut SqliteRuns(&c);
        let run = live_runs(db)
            .unwrap()
            .into_iter()
            .find(|r| r.level == 2)
            .unwrap();
        let mut source = Source::Stored {
            run,
            kind: Kind::Organisation,
            buffer: VecDeque::new(),
            after: (i64::MIN, i64::MIN, i64::MIN),
            skip: None,
            exhausted: false,
        };
        let mut postings = Vec::new();
        while let Some(p) = source.peek(db).unwrap() {
            let Source::Stored { buffer, .. } = &source else {
                unreachable!()
            };
            // Below a chunk's worth when the last chunk was read, plus it.
            assert!(
                buffer.len() < 2 * CHUNK,
                "{} postings read ahead",
                buffer.len()
            );
            postings.push(p);
            source.pop();
        }
        // Every leaf of the run has an organisation: all of them, in order.
        assert_eq!(postings.len() as i64, run.end - run.first);
        assert!(postings.windows(2).all(|w| w[0] < w[1]));
    }
}
