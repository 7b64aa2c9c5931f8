-- Registry v11: mandate grants waiting for a second officer.
--
-- An officer never grants a mandate to its own organisation alone: the
-- grant is recorded here and an officer of another organisation approves
-- it (then the mandate is inserted, with the usual checks) or rejects it.
-- Ids only, no personal value.
CREATE TABLE mandate_request (
    id              BIGSERIAL PRIMARY KEY,
    reference       TEXT NOT NULL UNIQUE,
    organisation_id BIGINT NOT NULL REFERENCES organisation (id),
    account_id      BIGINT REFERENCES account (id),
    person_id       BIGINT NOT NULL REFERENCES person (id),
    purpose         TEXT NOT NULL,
    valid_from      DATE NOT NULL,
    valid_to        DATE,
    source          TEXT NOT NULL,
    requested_by    BIGINT NOT NULL REFERENCES account (id),
    requested_at    TIMESTAMPTZ NOT NULL,
    decided_by      BIGINT REFERENCES account (id),
    decided_at      TIMESTAMPTZ,
    approved        BOOLEAN,
    mandate_id      BIGINT REFERENCES mandate (id)
);
CREATE INDEX mandate_request_pending ON mandate_request (id) WHERE decided_at IS NULL;
