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
    kind       text    NOT NULL PRIMARY KEY CHECK (kind IN ('persons', 'mandates')),
    file_id    bytea   NOT NULL,
    next_byte  bigint  NOT NULL CHECK (next_byte >= 0),
    next_line  bigint  NOT NULL CHECK (next_line >= 0),
    records    bigint  NOT NULL DEFAULT 0,
    inserted   bigint  NOT NULL DEFAULT 0,
    updated    bigint  NOT NULL DEFAULT 0,
    unchanged  bigint  NOT NULL DEFAULT 0,
    rejected   bigint  NOT NULL DEFAULT 0,
    bulk       boolean NOT NULL
);

-- What a first load of mandates dropped, with the statement that makes
-- each again: their secondary indexes, and their foreign keys, whose
-- checks lock every referenced person row (a write to each, and its page
-- to the WAL: the load ran 2.3 times slower with them). The load makes
-- them again at its end (a foreign key then checks every row in one
-- join), and opening the store makes any still listed (a load that was
-- killed), so a store is never left without them. While they are away,
-- the load checks each row's organisation, account and person itself,
-- under table locks.
CREATE TABLE bulk_dropped (
    name text NOT NULL PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('index', 'constraint')),
    sql  text NOT NULL
);
