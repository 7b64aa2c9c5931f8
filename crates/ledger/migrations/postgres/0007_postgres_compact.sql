-- The compact ledger on PostgreSQL, as SQLite's 0004 to 0006 made it: a
-- leaf row keeps its canonical bytes and nothing else the queries need.
--
-- 1. The query index. The per-leaf columns and their three b-tree indexes
--    (an index entry per leaf each, about 160 of the 371 bytes a leaf took)
--    give way to runs of postings, the log-structured merge of
--    `store/runs.rs`, built by the integrator's indexer apart from the
--    appends (a slice per transaction). Queries read the live runs and scan
--    the leaves after them. The posting tables are derived data, not
--    history: the role may delete the chunks of merged runs, and `rempart
--    audit verify` compares every live run with the leaves it was built
--    from.
DROP INDEX leaf_account;
DROP INDEX leaf_organisation;
DROP INDEX leaf_person;
ALTER TABLE leaf
    DROP COLUMN time_us,
    DROP COLUMN account,
    DROP COLUMN organisation,
    DROP COLUMN person,
    DROP COLUMN reveals;

-- state: 0 being built (queries ignore it), 1 live, 2 merged into a live
-- run and being deleted; format: 1, consecutive postings of any keys.
CREATE TABLE run (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    level BIGINT NOT NULL CHECK (level BETWEEN 0 AND 3),
    first_leaf BIGINT NOT NULL CHECK (first_leaf >= 0),
    end_leaf BIGINT NOT NULL CHECK (end_leaf > first_leaf),
    min_time BIGINT NOT NULL,
    max_time BIGINT NOT NULL CHECK (max_time >= min_time),
    state BIGINT NOT NULL CHECK (state IN (0, 1, 2)),
    format BIGINT NOT NULL CHECK (format IN (0, 1))
);

CREATE TABLE posting_account (
    run BIGINT NOT NULL,
    key BIGINT NOT NULL,
    time_last BIGINT NOT NULL,
    idx_last BIGINT NOT NULL,
    postings BYTEA NOT NULL,
    PRIMARY KEY (run, key, time_last, idx_last)
);
CREATE TABLE posting_organisation (LIKE posting_account INCLUDING ALL);
CREATE TABLE posting_person (LIKE posting_account INCLUDING ALL);

-- 2. Subtree hashes. Those of level 8 and up move to one row per complete
--    256-leaf tile (like SQLite's 0006); those below are recomputed from
--    the tile's leaves when a proof needs them. New leaves leave `nodes`
--    NULL; the copies earlier leaves hold are no longer read.
CREATE TABLE subtree (
    tile BIGINT PRIMARY KEY CHECK (tile >= 0),
    nodes BYTEA NOT NULL
);
-- One primary-key lookup per tile's last leaf, not a scan of every leaf.
INSERT INTO subtree (tile, nodes)
    SELECT leaf.idx >> 8, substring(leaf.nodes FROM 257)
    FROM generate_series(255, (SELECT coalesce(max(idx), -1) FROM leaf), 256) AS last(idx)
    JOIN leaf ON leaf.idx = last.idx
    WHERE length(leaf.nodes) > 256;
ALTER TABLE leaf ALTER COLUMN nodes DROP NOT NULL;

CREATE TRIGGER subtree_append_only BEFORE UPDATE OR DELETE ON subtree
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER subtree_no_truncate BEFORE TRUNCATE ON subtree
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
