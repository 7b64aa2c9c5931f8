-- The audit ledger, in its own file (ledger.db), apart from the registry.
--
-- One row per leaf. `data` is the canonical leaf encoding the Merkle tree
-- hashes; time_us, account, organisation, person and reveals repeat fields of
-- it for the indexes (verification checks they agree). `nodes` holds the
-- hashes of the complete subtrees this leaf completes, level 0 (the leaf
-- hash) upwards, 32 bytes each: subtree (level, index) is stored with leaf
-- (index + 1) * 2^level - 1 at byte offset 32 * level. Roots and proofs read
-- O(log n) of them and never walk the leaves.
CREATE TABLE leaf (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    time_us INTEGER NOT NULL,
    account INTEGER NOT NULL,
    organisation INTEGER NOT NULL,
    person INTEGER,
    reveals INTEGER NOT NULL CHECK (reveals IN (0, 1)),
    data BLOB NOT NULL,
    nodes BLOB NOT NULL
) STRICT;

-- The (account, time), (organisation, time) and (person, time) indexes lead
-- with the leaf's segment, idx >> 14 (16,384 consecutive leaves). SQLite
-- writes whole pages at each commit: without the segment, every appended
-- leaf lands on its own page in each index (one per account, per person…)
-- and a durable append costs three page writes; with it, appends only touch
-- the current segment's few pages. Queries seek each segment in turn (610
-- seeks at 10 M leaves), reading only index entries in the time window.
--
-- Breach scoping, "every person whose data account A was shown between T1
-- and T2", is answered from leaf_account alone.
CREATE INDEX leaf_account ON leaf (idx >> 14, account, time_us, reveals, person);
CREATE INDEX leaf_organisation ON leaf (idx >> 14, organisation, time_us);
-- "Who looked at my file".
CREATE INDEX leaf_person ON leaf (idx >> 14, person, time_us) WHERE person IS NOT NULL;

-- Every signed checkpoint is kept.
CREATE TABLE checkpoint (
    size INTEGER PRIMARY KEY CHECK (size >= 0),
    time_us INTEGER NOT NULL,
    note TEXT NOT NULL
) STRICT;

-- SQLite has no roles: refuse rewrites to anything going through SQL.
CREATE TRIGGER leaf_no_update BEFORE UPDATE ON leaf
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_no_delete BEFORE DELETE ON leaf
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER checkpoint_no_update BEFORE UPDATE ON checkpoint
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER checkpoint_no_delete BEFORE DELETE ON checkpoint
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
