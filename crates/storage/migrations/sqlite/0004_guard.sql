-- Registry v4: what the exfiltration guard shares between instances and
-- keeps across restarts. Ids, counts and digests only, no personal value.
-- No foreign keys: the guard's rows outlive nothing they name and must be
-- writable in one batch whatever else changes meanwhile.

-- Counters of the last day, one row per 5-minute bucket, subject, metric
-- and writing instance; instances read each other's rows.
CREATE TABLE guard_counter (
    bucket   INTEGER NOT NULL,               -- Unix time / 300
    instance INTEGER NOT NULL,
    scope    INTEGER NOT NULL CHECK (scope IN (1, 2, 3)),  -- account, organisation, peer
    subject  INTEGER NOT NULL,
    metric   INTEGER NOT NULL CHECK (metric BETWEEN 0 AND 63),
    count    INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (bucket, instance, scope, subject, metric)
) STRICT, WITHOUT ROWID;

-- Hourly activity per account and per peer group, in local time: the
-- baselines. Every instance adds to the same rows.
CREATE TABLE guard_activity (
    scope         INTEGER NOT NULL CHECK (scope IN (1, 3)),
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
CREATE INDEX guard_activity_day ON guard_activity (day);

-- Devices (key thumbprint digests) and networks (prefix digests) an
-- account was seen using; the earliest first sighting wins.
CREATE TABLE guard_known (
    account_id INTEGER NOT NULL,
    kind       INTEGER NOT NULL CHECK (kind IN (1, 2)),
    digest     BLOB NOT NULL CHECK (length(digest) = 16),
    first_seen TEXT NOT NULL,
    PRIMARY KEY (account_id, kind, digest)
) STRICT, WITHOUT ROWID;

CREATE TABLE guard_alert (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    account_id      INTEGER NOT NULL,
    organisation_id INTEGER NOT NULL,
    verdict         TEXT NOT NULL,
    score           REAL NOT NULL,
    fresh           INTEGER NOT NULL CHECK (fresh IN (0, 1)),
    evidence_from   TEXT NOT NULL,
    evidence_to     TEXT NOT NULL,
    first_seq       INTEGER CHECK (first_seq >= 0),
    last_seq        INTEGER CHECK (last_seq >= 0),
    instance        INTEGER NOT NULL
) STRICT;
CREATE INDEX guard_alert_at ON guard_alert (at);
CREATE INDEX guard_alert_account ON guard_alert (account_id, id);
CREATE INDEX guard_alert_organisation ON guard_alert (organisation_id, id);

-- An alert's explanation, one row per feature, in rank order.
CREATE TABLE guard_alert_feature (
    alert_id     INTEGER NOT NULL REFERENCES guard_alert (id),
    rank         INTEGER NOT NULL CHECK (rank >= 0),
    feature      TEXT NOT NULL,
    value        REAL NOT NULL,
    baseline     REAL NOT NULL,
    contribution REAL NOT NULL,
    PRIMARY KEY (alert_id, rank)
) STRICT, WITHOUT ROWID;

-- Organisations refused as a whole until an officer lifts the freeze.
CREATE TABLE guard_freeze (
    organisation_id INTEGER PRIMARY KEY,
    frozen_at       TEXT NOT NULL,
    lifted_at       TEXT                     -- NULL while frozen
) STRICT;
