-- Where an import of a large file stands, so that one killed half-way
-- resumes at its last committed batch instead of reading the file again
-- from the start. One row per kind of file being imported, written in the
-- same transaction as each batch: `file_id` names the file (a digest of
-- its size, modification time and first bytes; another file starts
-- afresh), `next_byte` and `next_line` where the next batch starts, the
-- counts so far, and whether the load began on an empty registry (then the
-- person indexes stay dropped until the end). The row is deleted when the
-- file is done.
CREATE TABLE import_progress (
    kind       TEXT    NOT NULL PRIMARY KEY CHECK (kind IN ('persons', 'mandates')),
    file_id    BLOB    NOT NULL,
    next_byte  INTEGER NOT NULL CHECK (next_byte >= 0),
    next_line  INTEGER NOT NULL CHECK (next_line >= 0),
    records    INTEGER NOT NULL DEFAULT 0,
    inserted   INTEGER NOT NULL DEFAULT 0,
    updated    INTEGER NOT NULL DEFAULT 0,
    unchanged  INTEGER NOT NULL DEFAULT 0,
    rejected   INTEGER NOT NULL DEFAULT 0,
    bulk       INTEGER NOT NULL CHECK (bulk IN (0, 1))
) STRICT;

-- What a first load of mandates dropped, with the statement that makes
-- each again: their secondary indexes (and on PostgreSQL their foreign
-- keys, whose checks lock every referenced person row). The load makes
-- them again at its end, and opening the store makes any still listed (a
-- load that was killed), so a store is never left without them. Sorting
-- once is several times faster than inserting millions of rows into
-- indexes keyed by organisation and account, whose pages the writes would
-- visit at random.
CREATE TABLE bulk_dropped (
    name TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('index', 'constraint')),
    sql  TEXT NOT NULL
) STRICT;
