-- Registry v2: what the consultation API needs.
-- API credentials are kept as a digest of their secret, never the secret.

CREATE TABLE api_credential (
    id            BIGSERIAL PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES account (id),
    secret_digest BYTEA NOT NULL CHECK (octet_length(secret_digest) = 32),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ,                        -- NULL while not revoked
    CHECK (expires_at > created_at)
);
CREATE INDEX api_credential_account ON api_credential (account_id);

-- A revoked mandate is never live again: nothing clears revoked_at (imports
-- update a mandate's other columns only).
ALTER TABLE mandate ADD COLUMN revoked_at TIMESTAMPTZ;

-- The caseload pages through an organisation's mandates in person order,
-- in two parts merged: those held by the organisation as a whole, and
-- those naming the account. Each part has its own index, in that order
-- (mandate id last: the tie-break of the page order).
DROP INDEX mandate_account;
CREATE INDEX mandate_account_person ON mandate (account_id, person_id, id)
    WHERE account_id IS NOT NULL;
CREATE INDEX mandate_org_wide ON mandate (organisation_id, person_id, id)
    WHERE account_id IS NULL;
