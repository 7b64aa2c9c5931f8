-- An organisation's alert names the accounts involved (comma-separated
-- ids; empty for an account's own alert).
ALTER TABLE guard_alert ADD COLUMN accounts TEXT NOT NULL DEFAULT '';

-- Organisations get hourly activity rows too (scope 2): their usual is
-- what the guard's organisation stage compares with. SQLite cannot alter
-- a CHECK constraint: the table is rebuilt.
CREATE TABLE guard_activity_new (
    scope         INTEGER NOT NULL CHECK (scope IN (1, 2, 3)),
    subject       INTEGER NOT NULL,
    day           INTEGER NOT NULL,          -- local days since 1970-01-01
    hour          INTEGER NOT NULL CHECK (hour BETWEEN 0 AND 23),
    attempts      INTEGER NOT NULL CHECK (attempts >= 0),
    persons       INTEGER NOT NULL CHECK (persons >= 0),
    misses        INTEGER NOT NULL CHECK (misses >= 0),
    searches      INTEGER NOT NULL CHECK (searches >= 0),
    search_misses INTEGER NOT NULL CHECK (search_misses >= 0),
    nir           INTEGER NOT NULL CHECK (nir >= 0),
    break_glass   INTEGER NOT NULL CHECK (break_glass >= 0),
    account_hours INTEGER NOT NULL CHECK (account_hours >= 0),
    PRIMARY KEY (scope, subject, day, hour)
) STRICT, WITHOUT ROWID;
INSERT INTO guard_activity_new SELECT * FROM guard_activity;
DROP TABLE guard_activity;
ALTER TABLE guard_activity_new RENAME TO guard_activity;
CREATE INDEX guard_activity_day ON guard_activity (day);
