-- The subtree hashes of level 12 and up, packed together.
--
-- A proof reads one hash per level. Those of levels 8 to 11 lie in the
-- `subtree` rows of the 16 tiles around the leaf's own, a page or two; but
-- each hash of level 12 and up lies in the row of a tile thousands of
-- tiles away, one row in 16 or fewer, so that at 100 M leaves a proof read
-- some 15 pages of `subtree` scattered over the table, each a miss once
-- the cache turned over (inclusion proofs p99 1.7 ms cold, 1.0 ms warm).
-- The rows that hold a hash of level 12 or more (5 hashes or more: one row
-- in 16) are copied into a covering index of their own, about 0.05 bytes a
-- leaf: a proof reads its upper hashes there by an index-only scan from a
-- few pages that stay cached. Nothing new is stored: the index is another
-- path to the same rows (`audit verify` checks them in `subtree`).
CREATE INDEX subtree_upper ON subtree (tile) INCLUDE (nodes)
    WHERE length(nodes) >= 160;
