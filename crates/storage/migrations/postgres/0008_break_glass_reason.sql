-- Registry v8: break-glass reasons.
--
-- The written reason of a break-glass is free text, and may hold personal
-- data: the append-only ledger keeps only a salted digest of it, and the
-- text lives here, sealed under the person's data key with its salt (the
-- store cannot read it). Shredding the person destroys that key and
-- deletes these rows in the same transaction.
CREATE TABLE break_glass_reason (
    id          BIGSERIAL PRIMARY KEY,
    mandate_id  BIGINT NOT NULL UNIQUE REFERENCES mandate (id),
    person_id   BIGINT NOT NULL REFERENCES person (id),
    account_id  BIGINT NOT NULL REFERENCES account (id),
    created_at  TIMESTAMPTZ NOT NULL,
    dek_version INTEGER NOT NULL,
    sealed      BYTEA NOT NULL
);
CREATE INDEX break_glass_reason_person ON break_glass_reason (person_id);
