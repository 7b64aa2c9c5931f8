-- The compact ledger: about a hundred bytes per leaf instead of 245.
--
-- A leaf row keeps only its canonical bytes. The columns that repeated
-- fields of them for the indexes go (queries decode the bytes), and so do
-- the hashes of the subtrees below level 8: like a tiled transparency log
-- (C2SP tlog-tiles), the hashes inside a 256-leaf tile are recomputed from
-- its leaves when a proof needs them (at most 255 leaves read and hashed).
-- `nodes` holds the hashes of the subtrees of level 8 and up that this leaf
-- completes, level 8 first, 32 bytes each; NULL for the 255 leaves in 256
-- that complete none.
CREATE TABLE leaf_compact (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    data BLOB NOT NULL,
    nodes BLOB
) STRICT;
INSERT INTO leaf_compact (idx, data, nodes)
    SELECT idx, data, CASE WHEN length(nodes) > 256 THEN substr(nodes, 257) END
    FROM leaf ORDER BY idx;
DROP TABLE leaf;
ALTER TABLE leaf_compact RENAME TO leaf;
CREATE TRIGGER leaf_no_update BEFORE UPDATE ON leaf
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_no_delete BEFORE DELETE ON leaf
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;

-- The query index: postings (see `store/posting.rs`) in runs, a log-
-- structured merge. Each complete segment of 4,096 leaves becomes a run of
-- level 0, built by the writer a slice per commit from the keys it kept in
-- memory; 32 runs of one level are merged into one of the next level (at
-- most level 2, 2^22 leaves), and the merged ones deleted, again a slice
-- per commit. A subject's query seeks each live run once (at most 31 per
-- level below 2, plus one per 2^22 leaves: 181 at 500 million) where
-- 0002's tables took one seek per segment (30,000). Each table's rows are
-- chunks of one key's postings, keyed by the chunk's last (time, index) as
-- offsets from the run's bases: (key, time_last, idx_last) orders the
-- chunks of a key by time, so a page seeks straight to where it starts.
DROP TABLE leaf_by_account;
DROP TABLE leaf_by_organisation;
DROP TABLE leaf_by_person;
DROP TABLE leaf_segment;

-- state: 0 being built (queries ignore it), 1 live, 2 merged into a live
-- run and being deleted. The live runs cover leaves 0 up to some index,
-- without gaps or overlaps; queries scan the leaves after them.
CREATE TABLE run (
    id INTEGER PRIMARY KEY,
    level INTEGER NOT NULL CHECK (level BETWEEN 0 AND 3),
    first_leaf INTEGER NOT NULL CHECK (first_leaf >= 0),
    end_leaf INTEGER NOT NULL CHECK (end_leaf > first_leaf),
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL CHECK (max_time >= min_time),
    state INTEGER NOT NULL CHECK (state IN (0, 1, 2))
) STRICT;

-- Breach scoping, "every person whose data account A was shown between T1
-- and T2", is answered from this table alone (its postings carry the
-- person and whether data was revealed).
CREATE TABLE posting_account (
    run INTEGER NOT NULL,
    key INTEGER NOT NULL,
    time_last INTEGER NOT NULL,
    idx_last INTEGER NOT NULL,
    postings BLOB NOT NULL,
    PRIMARY KEY (run, key, time_last, idx_last)
) STRICT, WITHOUT ROWID;

CREATE TABLE posting_organisation (
    run INTEGER NOT NULL,
    key INTEGER NOT NULL,
    time_last INTEGER NOT NULL,
    idx_last INTEGER NOT NULL,
    postings BLOB NOT NULL,
    PRIMARY KEY (run, key, time_last, idx_last)
) STRICT, WITHOUT ROWID;

-- "Who looked at my file".
CREATE TABLE posting_person (
    run INTEGER NOT NULL,
    key INTEGER NOT NULL,
    time_last INTEGER NOT NULL,
    idx_last INTEGER NOT NULL,
    postings BLOB NOT NULL,
    PRIMARY KEY (run, key, time_last, idx_last)
) STRICT, WITHOUT ROWID;
