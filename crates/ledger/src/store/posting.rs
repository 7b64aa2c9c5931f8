//! Postings: what the query index stores about a leaf, packed many to a
//! row. No I/O.
//!
//! For each of the three query subjects (account, organisation, person) a
//! leaf gives one posting: the subject's id (the key), the leaf's time and
//! index, and for the account kind whether it revealed person data and
//! about whom (breach scoping reads that kind alone). A stored row holds a
//! chunk of up to [`CHUNK`] postings (and [`BLOB_BUDGET`] bytes), sorted by
//! (key, time, index). The row's key columns are the chunk's last posting,
//! as offsets from its run's bases (small integers take fewer bytes in both
//! backends); the blob holds the others backwards, each as deltas from the
//! next one of its key, or as its key's delta and offsets from the bases
//! where the key changes.
//!
//! Runs written before [`Format::MultiKey`] hold chunks of one key each
//! ([`Format::OneKey`]): a person read once in a run then took a row of its
//! own, about 27 bytes on SQLite and far more on PostgreSQL, where every
//! row carries a 24-byte header. Both formats are read; new runs are
//! written in the multi-key one.

use crate::store::StoreError;

/// Most postings in one stored chunk (in unit tests, a few, so that keys
/// span several chunks).
#[cfg(not(test))]
pub(crate) const CHUNK: usize = 256;
#[cfg(test)]
pub(crate) const CHUNK: usize = 8;

/// Most bytes of postings in one chunk's blob. SQLite keeps at most 1,002
/// bytes of a WITHOUT ROWID row on its 4 KiB page and moves the rest to an
/// overflow page of its own, mostly empty: chunks of 256 account postings
/// (about 3 KB) took 22 bytes a posting on disk instead of 12. Under this
/// budget, with the count and the key columns, a row stays on its page.
/// (In unit tests, small enough that chunks are cut by bytes as well as by
/// count.)
#[cfg(not(test))]
pub(crate) const BLOB_BUDGET: usize = 920;
#[cfg(test)]
pub(crate) const BLOB_BUDGET: usize = 24;

/// How a run's chunks are laid out (its `format` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One key per chunk (runs built before migration 0005).
    OneKey,
    /// Consecutive postings of any keys.
    MultiKey,
}

impl Format {
    /// The format of a stored run, if known.
    pub(crate) fn from_column(v: i64) -> Option<Self> {
        match v {
            0 => Some(Format::OneKey),
            1 => Some(Format::MultiKey),
            _ => None,
        }
    }

    /// Its column value.
    pub(crate) fn column(self) -> i64 {
        match self {
            Format::OneKey => 0,
            Format::MultiKey => 1,
        }
    }

    /// Whether `p` may follow `previous` in one chunk.
    pub(crate) fn may_share(self, previous: &Posting, p: &Posting) -> bool {
        self == Format::MultiKey || previous.key == p.key
    }
}

/// The bytes posting `p` adds to a chunk's blob after `previous` (none for
/// a chunk's first posting), as [`encode`] writes it: `previous` is written
/// relative to `p`.
pub(crate) fn cost(
    kind: Kind,
    format: Format,
    bases: Bases,
    previous: Option<&Posting>,
    p: &Posting,
) -> usize {
    let deltas = previous.map_or(0, |q| {
        let (time, idx) = pair_fields(format, bases, q, p);
        let key = match format {
            Format::OneKey => 0,
            Format::MultiKey => varint_len(p.key.wrapping_sub(q.key) as u64),
        };
        key + varint_len(time) + varint_len(idx)
    });
    let extra = if kind.has_extra() {
        1 + p.person.map_or(0, |person| varint_len(zigzag(person)))
    } else {
        0
    };
    deltas + extra
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The query columns of a leaf, as the writer knows them (from its
/// [`LeafRow`](crate::store::LeafRow)) or as decoded from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeafKeys {
    pub idx: i64,
    pub time: i64,
    pub account: i64,
    pub organisation: i64,
    pub person: Option<i64>,
    pub reveals: bool,
}

impl LeafKeys {
    /// The keys of an encoded leaf, or `None` if it does not decode (the
    /// verifier reports such a leaf; the index has nothing to say of it).
    pub(crate) fn decode(idx: i64, data: &[u8]) -> Option<Self> {
        let (time, account, organisation, person, reveals) =
            crate::leaf::AuditLeaf::query_keys(data)?;
        Some(LeafKeys {
            idx,
            time,
            account,
            organisation,
            person,
            reveals,
        })
    }
}

/// One of the three query subjects, each with its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Account,
    Organisation,
    Person,
}

impl Kind {
    /// In the order a run is built.
    pub(crate) const ALL: [Kind; 3] = [Kind::Account, Kind::Organisation, Kind::Person];

    /// Its table (never from input).
    pub(crate) fn table(self) -> &'static str {
        match self {
            Kind::Account => "posting_account",
            Kind::Organisation => "posting_organisation",
            Kind::Person => "posting_person",
        }
    }

    /// Its statements, written out so that no string is built per call.
    pub(crate) fn sql(self) -> &'static KindSql {
        match self {
            Kind::Account => &ACCOUNT_SQL,
            Kind::Organisation => &ORGANISATION_SQL,
            Kind::Person => &PERSON_SQL,
        }
    }

    /// Whether its postings carry the person and the reveals flag.
    pub(crate) fn has_extra(self) -> bool {
        self == Kind::Account
    }

    /// The leaf's posting of this kind (a leaf about nobody has no person
    /// posting).
    pub(crate) fn posting(self, k: &LeafKeys) -> Option<Posting> {
        let (key, person, reveals) = match self {
            Kind::Account => (k.account, k.person, k.reveals),
            Kind::Organisation => (k.organisation, None, false),
            Kind::Person => (k.person?, None, false),
        };
        Some(Posting {
            key,
            time: k.time,
            idx: k.idx,
            person,
            reveals,
        })
    }
}

/// The statements of one posting table (SQLite), with `?1` the run.
pub(crate) struct KindSql {
    /// The chunks ending after `(key, time, idx) = (?2, ?3, ?4)`, in order
    /// (the caller stops past its key).
    /// Up to `?5` chunks after `(key, time, idx) = (?2, ?3, ?4)`, in order.
    pub fetch: &'static str,
    /// The run's last chunk.
    pub last: &'static str,
    /// One chunk: `(?2, ?3, ?4, ?5)`.
    pub insert: &'static str,
    /// The run's first `?2` keys' chunks.
    pub delete: &'static str,
}

macro_rules! kind_sql {
    ($name:ident, $table:literal) => {
        const $name: KindSql = KindSql {
            fetch: concat!(
                "SELECT key, time_last, idx_last, postings FROM ",
                $table,
                " WHERE run = ?1 AND (key, time_last, idx_last) > (?2, ?3, ?4)",
                " ORDER BY key, time_last, idx_last LIMIT ?5"
            ),
            last: concat!(
                "SELECT key, time_last, idx_last, postings FROM ",
                $table,
                " WHERE run = ?1 ORDER BY key DESC, time_last DESC, idx_last DESC LIMIT 1"
            ),
            insert: concat!(
                "INSERT INTO ",
                $table,
                " (run, key, time_last, idx_last, postings) VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            delete: concat!(
                "DELETE FROM ",
                $table,
                " WHERE run = ?1 AND key <= (SELECT max(key) FROM (",
                "SELECT key FROM ",
                $table,
                " WHERE run = ?1 ORDER BY key LIMIT ?2))"
            ),
        };
    };
}

kind_sql!(ACCOUNT_SQL, "posting_account");
kind_sql!(ORGANISATION_SQL, "posting_organisation");
kind_sql!(PERSON_SQL, "posting_person");

/// One leaf under one key. Ordered by key, then (time, index): the order
/// of a run's rows and of the postings inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Posting {
    pub key: i64,
    pub time: i64,
    pub idx: i64,
    /// Account kind only.
    pub person: Option<i64>,
    /// Account kind only.
    pub reveals: bool,
}

impl Posting {
    /// The (key, time, index) position, for resuming after it.
    pub(crate) fn position(&self) -> (i64, i64, i64) {
        (self.key, self.time, self.idx)
    }
}

/// The bases a run's key columns are offsets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bases {
    /// Subtracted from times.
    pub time: i64,
    /// Subtracted from indices: the run's first leaf.
    pub idx: i64,
}

impl Bases {
    /// Bases for a run of leaves from `first` with times in `[min, max]`:
    /// the earliest time, unless the span does not fit an `i64` (then
    /// times are stored as they are).
    pub(crate) fn new(first: i64, min_time: i64, max_time: i64) -> Self {
        let time = if max_time.checked_sub(min_time).is_some() {
            min_time
        } else {
            0
        };
        Bases { time, idx: first }
    }

    /// The stored key columns of a position. Saturating: a bound outside
    /// the run's range stays below (or above) every stored row.
    pub(crate) fn offsets(&self, time: i64, idx: i64) -> (i64, i64) {
        (time.saturating_sub(self.time), idx.saturating_sub(self.idx))
    }
}

/// A chunk of postings of one key as stored: key columns and blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredChunk {
    pub key: i64,
    pub time_off: i64,
    pub idx_off: i64,
    pub blob: Vec<u8>,
}

/// The two fields that place posting `q` given the next one, `p`: deltas
/// from `p` when they share a key (sorted, so the wrapped time difference
/// is the true one), else offsets from the bases (not zigzagged: the run's
/// postings lie above its bases; anything else still round-trips, wrapped).
fn pair_fields(format: Format, bases: Bases, q: &Posting, p: &Posting) -> (u64, u64) {
    if format == Format::OneKey || q.key == p.key {
        (
            p.time.wrapping_sub(q.time) as u64,
            zigzag(p.idx.wrapping_sub(q.idx)),
        )
    } else {
        (
            q.time.wrapping_sub(bases.time) as u64,
            q.idx.wrapping_sub(bases.idx) as u64,
        )
    }
}

/// Encodes a non-empty chunk (sorted by (key, time, index), of one key in
/// [`Format::OneKey`], postings of the run with these bases).
pub(crate) fn encode(
    kind: Kind,
    format: Format,
    bases: Bases,
    chunk: &[Posting],
) -> Option<StoredChunk> {
    let last = chunk.last()?;
    let mut blob = Vec::new();
    put(&mut blob, chunk.len() as u64 - 1);
    for pair in chunk.windows(2).rev() {
        if format == Format::MultiKey {
            put(&mut blob, pair[1].key.wrapping_sub(pair[0].key) as u64);
        }
        let (time, idx) = pair_fields(format, bases, &pair[0], &pair[1]);
        put(&mut blob, time);
        put(&mut blob, idx);
    }
    if kind.has_extra() {
        for p in chunk {
            blob.push(u8::from(p.reveals) | (u8::from(p.person.is_some()) << 1));
            if let Some(person) = p.person {
                put(&mut blob, zigzag(person));
            }
        }
    }
    Some(StoredChunk {
        key: last.key,
        time_off: last.time.wrapping_sub(bases.time),
        idx_off: last.idx.wrapping_sub(bases.idx),
        blob,
    })
}

/// Decodes a stored chunk, appending its postings (in order) to `out`.
pub(crate) fn decode(
    kind: Kind,
    format: Format,
    bases: Bases,
    chunk: &StoredChunk,
    out: &mut Vec<Posting>,
) -> Result<(), StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("a {} chunk {what}", kind.table()));
    let mut r = Reader(&chunk.blob);
    let before = r.get().ok_or_else(|| bad("has no count"))?;
    // Every earlier posting takes at least two bytes.
    if before > (chunk.blob.len() / 2) as u64 {
        return Err(bad("counts more postings than it holds"));
    }
    let n = before as usize + 1;
    let start = out.len();
    out.resize(
        start + n,
        Posting {
            key: chunk.key,
            time: 0,
            idx: 0,
            person: None,
            reveals: false,
        },
    );
    let slots = &mut out[start..];
    slots[n - 1].time = chunk.time_off.wrapping_add(bases.time);
    slots[n - 1].idx = chunk.idx_off.wrapping_add(bases.idx);
    for j in (0..n - 1).rev() {
        let dk = match format {
            Format::OneKey => 0,
            Format::MultiKey => r.get().ok_or_else(|| bad("is truncated"))?,
        };
        let time = r.get().ok_or_else(|| bad("is truncated"))?;
        let idx = r.get().ok_or_else(|| bad("is truncated"))?;
        let next = slots[j + 1];
        let slot = &mut slots[j];
        slot.key = next.key.wrapping_sub(dk as i64);
        if dk == 0 {
            slot.time = next.time.wrapping_sub(time as i64);
            slot.idx = next.idx.wrapping_sub(unzigzag(idx));
        } else {
            slot.time = bases.time.wrapping_add(time as i64);
            slot.idx = bases.idx.wrapping_add(idx as i64);
        }
    }
    if kind.has_extra() {
        for p in slots.iter_mut() {
            let flags = r.byte().ok_or_else(|| bad("is truncated"))?;
            if flags > 3 {
                return Err(bad("has unknown flags"));
            }
            p.reveals = flags & 1 == 1;
            if flags & 2 == 2 {
                p.person = Some(unzigzag(r.get().ok_or_else(|| bad("is truncated"))?));
            }
        }
    }
    if !r.0.is_empty() {
        return Err(bad("has trailing bytes"));
    }
    // Sorted, as they were written: anything else is damage.
    if slots.windows(2).any(|w| w[0].position() >= w[1].position()) {
        return Err(bad("is out of order"));
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// LEB128.
fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn get(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may only carry the top bit.
            if shift == 63 && bits > 1 {
                return None;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A chunk as a run holds one: sorted by (key, time, index), distinct
    /// positions, of one key in the one-key format; keys, times and indices
    /// anywhere in `i64` (wrapping arithmetic must round-trip them all).
    fn chunk_strategy() -> impl Strategy<Value = (Kind, Format, Bases, Vec<Posting>)> {
        (
            prop::sample::select(Kind::ALL.to_vec()),
            prop::sample::select(vec![Format::OneKey, Format::MultiKey]),
            prop::collection::vec(any::<i64>(), 1..4),
            any::<i64>(),
            prop::collection::btree_set((0usize..4, any::<i64>(), any::<i64>()), 1..40),
            prop::collection::vec((any::<Option<i64>>(), any::<bool>()), 40),
        )
            .prop_map(|(kind, format, keys, base, positions, extras)| {
                let mut postings: Vec<Posting> = positions
                    .into_iter()
                    .zip(extras)
                    .map(|((k, time, idx), (person, reveals))| Posting {
                        key: match format {
                            Format::OneKey => keys[0],
                            Format::MultiKey => keys[k % keys.len()],
                        },
                        time,
                        idx,
                        person: if kind.has_extra() { person } else { None },
                        reveals: kind.has_extra() && reveals,
                    })
                    .collect();
                postings.sort_unstable();
                postings.dedup_by_key(|p| p.position());
                (
                    kind,
                    format,
                    Bases {
                        time: base,
                        idx: base / 3,
                    },
                    postings,
                )
            })
    }

    proptest! {
        #[test]
        fn chunks_round_trip((kind, format, bases, postings) in chunk_strategy()) {
            let stored = encode(kind, format, bases, &postings).unwrap();
            let mut back = Vec::new();
            decode(kind, format, bases, &stored, &mut back).unwrap();
            prop_assert_eq!(back, postings);
        }

        /// The writer cuts chunks by this sum: it must be the blob's size.
        #[test]
        fn costs_add_up_to_the_blob((kind, format, bases, postings) in chunk_strategy()) {
            let stored = encode(kind, format, bases, &postings).unwrap();
            let costs: usize = postings
                .iter()
                .enumerate()
                .map(|(i, p)| cost(kind, format, bases, i.checked_sub(1).map(|j| &postings[j]), p))
                .sum();
            prop_assert_eq!(varint_len(postings.len() as u64 - 1) + costs, stored.blob.len());
        }

        #[test]
        fn damaged_chunks_are_errors_not_panics(
            (kind, format, bases, postings) in chunk_strategy(),
            cut in any::<prop::sample::Index>(),
            junk in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut stored = encode(kind, format, bases, &postings).unwrap();
            stored.blob.truncate(cut.index(stored.blob.len() + 1));
            stored.blob.extend_from_slice(&junk);
            let mut back = Vec::new();
            let _ = decode(kind, format, bases, &stored, &mut back);
        }
    }

    fn person(key: i64, time: i64, idx: i64) -> Posting {
        Posting {
            key,
            time,
            idx,
            person: None,
            reveals: false,
        }
    }

    #[test]
    fn a_lone_person_posting_has_an_empty_blob() {
        let p = person(42, 1_700_000_000_000_000, 123_456);
        let bases = Bases::new(100_000, 1_699_999_999_000_000, 1_700_000_100_000_000);
        for format in [Format::OneKey, Format::MultiKey] {
            let stored = encode(Kind::Person, format, bases, &[p]).unwrap();
            assert_eq!(stored.blob, [0]);
            assert_eq!((stored.time_off, stored.idx_off), (1_000_000, 23_456));
        }
    }

    /// The point of the multi-key format: persons read once in a run share
    /// rows, each taking its key's delta and two offsets.
    #[test]
    fn persons_read_once_share_a_chunk() {
        let bases = Bases::new(4_194_304, 1_700_000_000_000_000, 1_701_000_000_000_000);
        let postings: Vec<Posting> = (0..100)
            .map(|i| {
                person(
                    1_000 + 7 * i,
                    bases.time + 9_999_999 * i,
                    bases.idx + 41 * i,
                )
            })
            .collect();
        let stored = encode(Kind::Person, Format::MultiKey, bases, &postings).unwrap();
        // 1 (count) + 99 × (1 key + at most 5 time + 2 index).
        assert!(stored.blob.len() <= 1 + 99 * 8, "{}", stored.blob.len());
        let mut back = Vec::new();
        decode(Kind::Person, Format::MultiKey, bases, &stored, &mut back).unwrap();
        assert_eq!(back, postings);
        // Not a valid one-key chunk: its keys differ.
        assert!(
            decode(
                Kind::Person,
                Format::OneKey,
                bases,
                &stored,
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn formats_are_named_by_their_column() {
        for f in [Format::OneKey, Format::MultiKey] {
            assert_eq!(Format::from_column(f.column()), Some(f));
        }
        assert_eq!(Format::from_column(2), None);
    }

    #[test]
    fn bases_survive_extreme_times() {
        let b = Bases::new(0, i64::MIN, i64::MAX);
        assert_eq!(b.time, 0);
        assert_eq!(b.offsets(i64::MIN, 5), (i64::MIN, 5));
        let b = Bases::new(10, 1_000, 2_000);
        assert_eq!(b.offsets(i64::MIN, i64::MIN), (i64::MIN, i64::MIN));
        assert_eq!(b.offsets(1_500, 12), (500, 2));
    }
}
