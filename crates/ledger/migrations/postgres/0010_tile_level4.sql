-- The 16 hashes of level 4 of each complete tile.
--
-- An inclusion proof needs the hashes of the leaf's siblings of levels 0 to
-- 7, all inside its 256-leaf tile. They were recomputed from the whole
-- tile: 16 bundles (about 17 KB, two or three pages read and 511 hashes
-- computed a proof), which once the ledger outgrew the memory made most of
-- a cold proof's time. With the hashes of the tile's 16 subtrees of level
-- 4 (one per bundle) kept here, a proof reads the leaf's own bundle and
-- this row, 512 bytes: about 2 bytes a leaf. Tiles the writer completed
-- before this version have no row; their proofs still recompute from the
-- leaves, as do those of the tile being filled. `audit verify` checks each
-- row against the leaves.
CREATE TABLE tile_level4 (
    tile BIGINT PRIMARY KEY CHECK (tile >= 0),
    hashes BYTEA NOT NULL CHECK (length(hashes) = 512)
);

CREATE TRIGGER tile_level4_append_only BEFORE UPDATE OR DELETE ON tile_level4
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER tile_level4_no_truncate BEFORE TRUNCATE ON tile_level4
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
