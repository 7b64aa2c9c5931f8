-- The 16 hashes of level 4 of each complete tile.
--
-- An inclusion proof needs the hashes of the leaf's siblings of levels 0 to
-- 7, all inside its 256-leaf tile. They were recomputed from the whole
-- tile: 256 leaf rows (about 18 KB, five pages read and 511 hashes
-- computed a proof), which once the ledger outgrew the memory made most of
-- a cold proof's time. With the hashes of the tile's 16 subtrees of level
-- 4 kept here, a proof reads the 16 leaves of its own and this row, 512
-- bytes: about 2 bytes a leaf. Tiles completed before this version have
-- no row; their proofs still recompute from the leaves, as do those of the
-- tile being filled. `audit verify` checks each row against the leaves.
CREATE TABLE tile_level4 (
    tile INTEGER PRIMARY KEY CHECK (tile >= 0),
    hashes BLOB NOT NULL CHECK (length(hashes) = 512)
);

CREATE TRIGGER tile_level4_no_update BEFORE UPDATE ON tile_level4
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER tile_level4_no_delete BEFORE DELETE ON tile_level4
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
