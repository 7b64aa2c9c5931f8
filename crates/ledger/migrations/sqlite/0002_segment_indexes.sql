-- The query indexes, built one whole segment at a time instead of leaf by
-- leaf.
--
-- With 0001's indexes every appended leaf landed on a random page of the
-- current segment in each of the three indexes (one per account, per
-- organisation, per person), so a durable commit of k leaves wrote about
-- 3k index pages to the WAL: about 7 KB per consultation, a third of the
-- server's CPU. Now an append writes the leaf table at its right edge.
-- Once a segment (16,384 leaves, `idx >> 14`) is complete, its keys go
-- into the three tables below in key order, so they too grow at their
-- right edge: a slice with each following commit (the writer keeps the
-- keys in memory), and `leaf_segment` lists the segment once all are in.
-- Queries read the listed segments from these tables and scan the leaves
-- after them (at most two segments). `rempart audit verify` checks that
-- the tables hold exactly the leaves' keys.
DROP INDEX leaf_account;
DROP INDEX leaf_organisation;
DROP INDEX leaf_person;

-- Breach scoping, "every person whose data account A was shown between T1
-- and T2", is answered from this table alone.
CREATE TABLE leaf_by_account (
    segment INTEGER NOT NULL,
    account INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    reveals INTEGER NOT NULL,
    person INTEGER,
    PRIMARY KEY (segment, account, time_us, idx)
) STRICT, WITHOUT ROWID;

CREATE TABLE leaf_by_organisation (
    segment INTEGER NOT NULL,
    organisation INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (segment, organisation, time_us, idx)
) STRICT, WITHOUT ROWID;

-- "Who looked at my file".
CREATE TABLE leaf_by_person (
    segment INTEGER NOT NULL,
    person INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (segment, person, time_us, idx)
) STRICT, WITHOUT ROWID;

-- The segments whose keys are in the three tables: always 0, 1, … up to
-- the last complete segment.
CREATE TABLE leaf_segment (
    segment INTEGER PRIMARY KEY CHECK (segment >= 0)
) STRICT;

-- The complete segments of an existing ledger.
INSERT INTO leaf_segment (segment)
    WITH RECURSIVE s(n) AS (
        SELECT 0 WHERE (SELECT coalesce(max(idx) + 1, 0) FROM leaf) >= 16384
        UNION ALL
        SELECT n + 1 FROM s WHERE (n + 2) * 16384 <= (SELECT max(idx) + 1 FROM leaf)
    )
    SELECT n FROM s;
INSERT INTO leaf_by_account
    SELECT idx >> 14, account, time_us, idx, reveals, person FROM leaf
    WHERE (idx >> 14) IN (SELECT segment FROM leaf_segment)
    ORDER BY 1, 2, 3, 4;
INSERT INTO leaf_by_organisation
    SELECT idx >> 14, organisation, time_us, idx FROM leaf
    WHERE (idx >> 14) IN (SELECT segment FROM leaf_segment)
    ORDER BY 1, 2, 3, 4;
INSERT INTO leaf_by_person
    SELECT idx >> 14, person, time_us, idx FROM leaf
    WHERE person IS NOT NULL AND (idx >> 14) IN (SELECT segment FROM leaf_segment)
    ORDER BY 1, 2, 3, 4;

CREATE TRIGGER leaf_by_account_no_update BEFORE UPDATE ON leaf_by_account
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_by_account_no_delete BEFORE DELETE ON leaf_by_account
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_by_organisation_no_update BEFORE UPDATE ON leaf_by_organisation
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_by_organisation_no_delete BEFORE DELETE ON leaf_by_organisation
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_by_person_no_update BEFORE UPDATE ON leaf_by_person
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_by_person_no_delete BEFORE DELETE ON leaf_by_person
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_segment_no_update BEFORE UPDATE ON leaf_segment
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER leaf_segment_no_delete BEFORE DELETE ON leaf_segment
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
