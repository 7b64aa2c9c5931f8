-- Registry v11: mandate grants waiting for a second officer.
--
-- An officer never grants a mandate to its own organisation alone: the
-- grant is recorded here and an officer of another organisation approves
-- it (then the mandate is inserted, with the usual checks) or rejects it.
-- Ids only, no personal value.
CREATE TABLE mandate_request (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    reference       TEXT NOT NULL UNIQUE,
    organisation_id INTEGER NOT NULL REFERENCES organisation (id),
    account_id      INTEGER REFERENCES account (id),
    person_id       INTEGER NOT NULL REFERENCES person (id),
    purpose         TEXT NOT NULL,
    valid_from      TEXT NOT NULL,
    valid_to        TEXT,
    source          TEXT NOT NULL,
    requested_by    INTEGER NOT NULL REFERENCES account (id),
    requested_at    TEXT NOT NULL,
    decided_by      INTEGER REFERENCES account (id),
    decided_at      TEXT,
    approved        INTEGER,
    mandate_id      INTEGER REFERENCES mandate (id)
) STRICT;
CREATE INDEX mandate_request_pending ON mandate_request (id) WHERE decided_at IS NULL;
