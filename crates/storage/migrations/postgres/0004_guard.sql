-- Registry v4: what the exfiltration guard shares between instances and
-- keeps across restarts. Ids, counts and digests only, no personal value.
-- No foreign keys: the guard's rows outlive nothing they name and must be
-- writable in one batch whatever else changes meanwhile.

-- Counters of the last day, one row per 5-minute bucket, subject, metric
-- and writing instance; instances read each other's rows.
CREATE TABLE guard_counter (
    bucket   BIGINT NOT NULL,                -- Unix time / 300
    instance BIGINT NOT NULL,
    scope    SMALLINT NOT NULL CHECK (scope IN (1, 2, 3)),  -- account, organisation, peer
    subject  BIGINT NOT NULL,
    metric   SMALLINT NOT NULL CHECK (metric BETWEEN 0 AND 63),
    count    BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (bucket, instance, scope, subject, metric)
);

-- Hourly activity per account and per peer group, in local time: the
-- baselines. Every instance adds to the same rows.
CREATE TABLE guard_activity (
    scope         SMALLINT NOT NULL CHECK (scope IN (1, 3)),
    subject       BIGINT NOT NULL,
    day           INT NOT NULL,              -- local days since 1970-01-01
    hour          SMALLINT NOT NULL CHECK (hour BETWEEN 0 AND 23),
    attempts      BIGINT NOT NULL CHECK (attempts >= 0),
    persons       BIGINT NOT NULL CHECK (persons >= 0),
    misses        BIGINT NOT NULL CHECK (misses >= 0),
    searches      BIGINT NOT NULL CHECK (searches >= 0),
    search_misses BIGINT NOT NULL CHECK (search_misses >= 0),
    nir           BIGINT NOT NULL CHECK (nir >= 0),
    break_glass   BIGINT NOT NULL CHECK (break_glass >= 0),
    account_hours BIGINT NOT NULL CHECK (account_hours >= 0),
    PRIMARY KEY (scope, subject, day, hour)
);
CREATE INDEX guard_activity_day ON guard_activity (day);

-- Devices (key thumbprint digests) and networks (prefix digests) an
-- account was seen using; the earliest first sighting wins.
CREATE TABLE guard_known (
    account_id BIGINT NOT NULL,
    kind       SMALLINT NOT NULL CHECK (kind IN (1, 2)),
    digest     BYTEA NOT NULL CHECK (octet_length(digest) = 16),
    first_seen TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, kind, digest)
);

CREATE TABLE guard_alert (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL,
    kind            TEXT NOT NULL,
    account_id      BIGINT NOT NULL,
    organisation_id BIGINT NOT NULL,
    verdict         TEXT NOT NULL,
    score           DOUBLE PRECISION NOT NULL,
    fresh           BOOLEAN NOT NULL,
    evidence_from   TIMESTAMPTZ NOT NULL,
    evidence_to     TIMESTAMPTZ NOT NULL,
    first_seq       BIGINT CHECK (first_seq >= 0),
    last_seq        BIGINT CHECK (last_seq >= 0),
    instance        BIGINT NOT NULL
);
CREATE INDEX guard_alert_at ON guard_alert (at);
CREATE INDEX guard_alert_account ON guard_alert (account_id, id);
CREATE INDEX guard_alert_organisation ON guard_alert (organisation_id, id);

-- An alert's explanation, one row per feature, in rank order.
CREATE TABLE guard_alert_feature (
    alert_id     BIGINT NOT NULL REFERENCES guard_alert (id),
    rank         SMALLINT NOT NULL CHECK (rank >= 0),
    feature      TEXT NOT NULL,
    value        DOUBLE PRECISION NOT NULL,
    baseline     DOUBLE PRECISION NOT NULL,
    contribution DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (alert_id, rank)
);

-- Organisations refused as a whole until an officer lifts the freeze.
CREATE TABLE guard_freeze (
    organisation_id BIGINT PRIMARY KEY,
    frozen_at       TIMESTAMPTZ NOT NULL,
    lifted_at       TIMESTAMPTZ                -- NULL while frozen
);
