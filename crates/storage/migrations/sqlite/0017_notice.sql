-- The notices of the breach register (GDPR Art. 34). `notice_run` fixes,
-- once per incident, what every notice shares; `notice` holds one row per
-- person and incident (the primary key is what makes a person notified
-- once): codes of what was shown, counts, instants in microseconds since
-- the Unix epoch, the département, the digest of the text. No personal
-- value. A delivery is begun and recorded each by one statement that
-- finds the notice undelivered: beginning claims it until
-- `claimed_until` (no other dispatcher takes it meanwhile; a dispatcher
-- killed mid-delivery leaves a claim that lapses), recording sets
-- `sent_at`.
CREATE TABLE notice_run (
    incident_id INTEGER NOT NULL PRIMARY KEY REFERENCES incident (id),
    controller  TEXT    NOT NULL CHECK (length(controller) BETWEEN 1 AND 2000),
    dpo         TEXT    NOT NULL CHECK (length(dpo) BETWEEN 1 AND 2000),
    measures    TEXT    NOT NULL CHECK (length(measures) BETWEEN 1 AND 2000),
    wording     INTEGER NOT NULL,
    prepared_at INTEGER NOT NULL
) STRICT;

CREATE TABLE notice (
    incident_id INTEGER NOT NULL REFERENCES notice_run (incident_id),
    person_id   INTEGER NOT NULL,
    channel     INTEGER NOT NULL CHECK (channel IN (1, 2)),
    departement TEXT    NOT NULL CHECK (length(departement) BETWEEN 2 AND 3),
    groups      INTEGER NOT NULL,
    kinds       INTEGER NOT NULL,
    reads       INTEGER NOT NULL CHECK (reads >= 1),
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL CHECK (last_at >= first_at),
    digest      BLOB    NOT NULL CHECK (length(digest) = 32),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_until INTEGER,
    sent_at     INTEGER,
    PRIMARY KEY (incident_id, person_id)
) STRICT, WITHOUT ROWID;

-- A person's space lists their notices.
CREATE INDEX notice_of_person ON notice (person_id);
