//! Filling the segment tables a little at a time.
//!
//! A complete segment's keys go into `leaf_by_account`,
//! `leaf_by_organisation` and `leaf_by_person` in key order, so each table
//! grows at its right edge. Doing the whole segment in the commit that
//! completes it stalled every append queued behind that commit for tens of
//! milliseconds (reading 16,384 wide leaf rows back and sorting them three
//! times). Instead the writer keeps the current segment's keys in memory as
//! it appends them; when the segment completes they are sorted once, and
//! every following commit inserts the next slice of them, at least twice
//! as many entries as it appends leaves, so a segment is always indexed
//! before the next one completes. The segment is listed in `leaf_segment`
//! (and queries start reading it from the tables) in the commit that
//! inserts its last key; until then queries scan its leaves.
//!
//! Every insertion happens inside the append's transaction. If that
//! transaction fails, the in-memory state may be ahead of the database, so
//! it is dropped and rebuilt from the database at the next append.

use rusqlite::Connection;

use super::{SEGMENT_SHIFT, SEGMENT_TABLES, indexed_segments, size_of};
use crate::store::{LeafRow, StoreError, to_i64};

/// Fewest entries a commit inserts while a segment is pending.
const MIN_SLICE: usize = 1024;

/// The columns of a leaf the segment tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keys {
    idx: i64,
    time: i64,
    account: i64,
    organisation: i64,
    person: Option<i64>,
    reveals: bool,
}

impl Keys {
    fn of(row: &LeafRow) -> Result<Self, StoreError> {
        Ok(Keys {
            idx: to_i64(row.index, "leaf index")?,
            time: row.time,
            account: row.account,
            organisation: row.organisation,
            person: row.person,
            reveals: row.reveals,
        })
    }
}

/// A complete segment whose keys are being inserted: per table, the keys
/// in that table's order and how many are in already.
#[derive(Debug)]
struct Pending {
    segment: i64,
    tables: [Vec<Keys>; 3],
    done: [usize; 3],
}

impl Pending {
    fn new(segment: i64, keys: Vec<Keys>) -> Self {
        // The orders of `SEGMENT_TABLES`: account, organisation, person.
        let mut by_account = keys.clone();
        by_account.sort_unstable_by_key(|k| (k.account, k.time, k.idx));
        let mut by_organisation = keys.clone();
        by_organisation.sort_unstable_by_key(|k| (k.organisation, k.time, k.idx));
        let mut by_person: Vec<Keys> = keys.into_iter().filter(|k| k.person.is_some()).collect();
        by_person.sort_unstable_by_key(|k| (k.person, k.time, k.idx));
        Pending {
            segment,
            tables: [by_account, by_organisation, by_person],
            done: [0; 3],
        }
    }

    /// Inserts up to `budget` more entries; true once every key is in and
    /// the segment is listed.
    fn advance(&mut self, c: &Connection, mut budget: usize) -> Result<bool, StoreError> {
        for (t, table) in SEGMENT_TABLES.iter().enumerate() {
            let keys = &self.tables[t];
            let end = keys.len().min(self.done[t] + budget);
            if end > self.done[t] {
                insert(c, table.name, self.segment, &keys[self.done[t]..end])?;
                budget -= end - self.done[t];
                self.done[t] = end;
            }
            if self.done[t] < keys.len() {
                return Ok(false);
            }
        }
        c.prepare_cached("INSERT INTO leaf_segment (segment) VALUES (?1)")?
            .execute([self.segment])?;
        Ok(true)
    }
}

/// Whether each segment table (in [`SEGMENT_TABLES`] order) holds exactly
/// the keys of `segment`'s leaves. The leaves are read once and their keys
/// sorted in memory as the writer sorts them; each table is read in its
/// primary-key order and compared row by row, so SQLite sorts nothing.
/// (Two `EXCEPT`s per table had SQLite sort both sides twice: with three
/// tables, twelve sorts of a segment, most of `audit verify`'s time.)
pub(super) fn segment_matches(c: &Connection, segment: i64) -> Result<[bool; 3], StoreError> {
    let keys = keys_between(c, segment << 14, (segment + 1) << 14)?;
    let expected = Pending::new(segment, keys).tables;
    let mut matches = [false; 3];
    for (t, table) in SEGMENT_TABLES.iter().enumerate() {
        let mut want = expected[t].iter();
        let mut stmt = c.prepare_cached(table.stored)?;
        let mut rows = stmt.query([segment])?;
        let mut same = true;
        while let Some(r) = rows.next()? {
            let Some(k) = want.next() else {
                same = false;
                break;
            };
            let key: i64 = r.get(0)?;
            let (time, idx): (i64, i64) = (r.get(1)?, r.get(2)?);
            same = time == k.time
                && idx == k.idx
                && match t {
                    0 => {
                        key == k.account
                            && r.get::<_, bool>(3)? == k.reveals
                            && r.get::<_, Option<i64>>(4)? == k.person
                    }
                    1 => key == k.organisation,
                    _ => Some(key) == k.person,
                };
            if !same {
                break;
            }
        }
        matches[t] = same && want.next().is_none();
    }
    Ok(matches)
}

fn insert(c: &Connection, table: &str, segment: i64, keys: &[Keys]) -> Result<(), StoreError> {
    // Table names come from `SEGMENT_TABLES`, never from input.
    match table {
        "leaf_by_account" => {
            let mut stmt = c.prepare_cached(
                "INSERT INTO leaf_by_account (segment, account, time_us, idx, reveals, person)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for k in keys {
                stmt.execute(rusqlite::params![
                    segment, k.account, k.time, k.idx, k.reveals, k.person
                ])?;
            }
        }
        "leaf_by_organisation" => {
            let mut stmt = c.prepare_cached(
                "INSERT INTO leaf_by_organisation (segment, organisation, time_us, idx)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for k in keys {
                stmt.execute(rusqlite::params![segment, k.organisation, k.time, k.idx])?;
            }
        }
        _ => {
            let mut stmt = c.prepare_cached(
                "INSERT INTO leaf_by_person (segment, person, time_us, idx)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for k in keys {
                stmt.execute(rusqlite::params![segment, k.person, k.time, k.idx])?;
            }
        }
    }
    Ok(())
}

/// The writer's view of the segment being appended to and of the one
/// being indexed.
#[derive(Debug)]
pub(super) struct SegmentIndexer {
    /// Keys of the leaves appended to the current (incomplete) segment.
    current: Vec<Keys>,
    pending: Option<Pending>,
}

impl SegmentIndexer {
    /// Rebuilds the state from the database, inside the caller's
    /// transaction: every complete segment but the last is indexed in full
    /// (only a ledger written by an older program or a failed append leaves
    /// more than one behind), the last resumes where its tables stop.
    pub(super) fn load(c: &Connection) -> Result<Self, StoreError> {
        let size = to_i64(size_of(c)?, "leaf count")?;
        let complete = size >> SEGMENT_SHIFT;
        let mut indexed = indexed_segments(c)?;
        while indexed + 1 < complete {
            let mut p = Pending::new(
                indexed,
                keys_between(c, indexed << SEGMENT_SHIFT, (indexed + 1) << SEGMENT_SHIFT)?,
            );
            p.skip_present(c)?;
            p.advance(c, usize::MAX)?;
            indexed += 1;
        }
        let pending = if indexed < complete {
            let mut p = Pending::new(
                indexed,
                keys_between(c, indexed << SEGMENT_SHIFT, complete << SEGMENT_SHIFT)?,
            );
            p.skip_present(c)?;
            Some(p)
        } else {
            None
        };
        Ok(SegmentIndexer {
            current: keys_between(c, complete << SEGMENT_SHIFT, size)?,
            pending,
        })
    }

    /// Takes note of appended rows (in index order, following the last
    /// ones) and inserts the next slice of the pending segment's keys, all
    /// inside the append's transaction.
    pub(super) fn appended(&mut self, c: &Connection, rows: &[LeafRow]) -> Result<(), StoreError> {
        for row in rows {
            let keys = Keys::of(row)?;
            self.current.push(keys);
            if (keys.idx + 1) % (1 << SEGMENT_SHIFT) == 0 {
                // A segment just completed. One pending at a time: finish
                // the previous one (only a batch of thousands of leaves
                // gets here before its slices did).
                if let Some(mut p) = self.pending.take() {
                    p.advance(c, usize::MAX)?;
                }
                let segment = keys.idx >> SEGMENT_SHIFT;
                self.pending = Some(Pending::new(segment, std::mem::take(&mut self.current)));
            }
        }
        if let Some(p) = &mut self.pending
            && p.advance(c, MIN_SLICE.max(rows.len().saturating_mul(6)))?
        {
            self.pending = None;
        }
        Ok(())
    }
}

impl Pending {
    /// Skips the keys a previous writer already inserted: they went in
    /// order, so they are a prefix of each table's list.
    fn skip_present(&mut self, c: &Connection) -> Result<(), StoreError> {
        for (t, table) in SEGMENT_TABLES.iter().enumerate() {
            let n: i64 = c
                .prepare_cached(&format!(
                    "SELECT count(*) FROM {} WHERE segment = ?1",
                    table.name
                ))?
                .query_row([self.segment], |r| r.get(0))?;
            self.done[t] = usize::try_from(n).unwrap_or(0).min(self.tables[t].len());
        }
        Ok(())
    }
}

fn keys_between(c: &Connection, from: i64, to: i64) -> Result<Vec<Keys>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT idx, time_us, account, organisation, person, reveals FROM leaf
         WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
    )?;
    let rows = stmt.query_map([from, to], |r| {
        Ok(Keys {
            idx: r.get(0)?,
            time: r.get(1)?,
            account: r.get(2)?,
            organisation: r.get(3)?,
            person: r.get(4)?,
            reveals: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
