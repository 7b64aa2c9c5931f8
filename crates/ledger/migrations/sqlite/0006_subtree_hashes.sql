-- The hashes of level 8 and up move from the leaf rows to a table of their
-- own, one row per complete 256-leaf tile (C2SP tlog-tiles keeps hash tiles
-- apart from entry tiles too): a proof reads up to log2(n) - 8 of them, and
-- stored with the leaf completing each subtree they lay scattered over the
-- whole leaf table, a random read each once the ledger outgrew the memory
-- (inclusion proofs p99 3.5 ms at 500 M leaves). Here they take about
-- 0.3 bytes a leaf, 150 MB at 500 M leaves, and stay cached.
--
-- `tile` is the index of the tile whose last leaf completes the subtrees,
-- `nodes` their hashes from level 8 up, 32 bytes each. The copies left in
-- `leaf.nodes` by earlier versions are no longer read; new leaves leave it
-- NULL.
CREATE TABLE subtree (
    tile INTEGER PRIMARY KEY CHECK (tile >= 0),
    nodes BLOB NOT NULL
);

-- One primary-key lookup per tile's last leaf, not a scan of every leaf
-- (a migration of 500 M leaves would read 50 GB to find 2 M rows).
WITH RECURSIVE last(idx) AS (
    SELECT 255
    UNION ALL
    SELECT idx + 256 FROM last WHERE idx + 256 <= (SELECT max(idx) FROM leaf)
)
INSERT INTO subtree (tile, nodes)
    SELECT leaf.idx >> 8, leaf.nodes FROM last JOIN leaf ON leaf.idx = last.idx
    WHERE leaf.nodes IS NOT NULL;

CREATE TRIGGER subtree_no_update BEFORE UPDATE ON subtree
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER subtree_no_delete BEFORE DELETE ON subtree
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
