-- Registry v1: persons (sealed), organisations, accounts, mandates.
-- Persons hold no clear personal value: blind indexes, a wrapped data key
-- and one sealed blob per field group.

CREATE TABLE id_counter (
    name TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);
INSERT INTO id_counter (name, next) VALUES ('person', 1);

CREATE TABLE person (
    id           BIGINT PRIMARY KEY,
    ft_blind     BYTEA,                 -- NULL once shredded
    nir_blind    BYTEA,
    name_blind   BYTEA,
    fingerprint  BYTEA,
    kek_version  INTEGER NOT NULL,
    dek_version  INTEGER NOT NULL,
    wrapped_dek  BYTEA,                 -- NULL once shredded
    identity     BYTEA NOT NULL,
    contact      BYTEA NOT NULL,
    nir          BYTEA NOT NULL,
    status       BYTEA NOT NULL,
    retain_until DATE,
    shredded_at  TIMESTAMPTZ
);
-- Sealed blobs are random bytes: compression only costs time.
ALTER TABLE person ALTER COLUMN identity SET STORAGE EXTERNAL,
                   ALTER COLUMN contact SET STORAGE EXTERNAL,
                   ALTER COLUMN nir SET STORAGE EXTERNAL,
                   ALTER COLUMN status SET STORAGE EXTERNAL;
-- Named indexes (not column constraints) so a first bulk load can drop
-- and rebuild them; see RegistryStore::begin_bulk_load.
CREATE UNIQUE INDEX person_ft ON person (ft_blind);
CREATE INDEX person_nir ON person (nir_blind);
CREATE INDEX person_name ON person (name_blind);

CREATE TABLE organisation (
    id          BIGSERIAL PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('france_travail','cap_emploi','mission_locale','training_provider','processor')),
    name        TEXT NOT NULL,
    departement TEXT
);

CREATE TABLE account (
    id              BIGSERIAL PRIMARY KEY,
    login           TEXT NOT NULL UNIQUE,
    organisation_id BIGINT NOT NULL REFERENCES organisation (id),
    role            TEXT NOT NULL CHECK (role IN ('agent','manager','officer','security','dpo')),
    state           TEXT NOT NULL CHECK (state IN ('requested','active','suspended','disabled')),
    requested_by    BIGINT REFERENCES account (id),
    approved_by     BIGINT REFERENCES account (id)
);
CREATE INDEX account_org ON account (organisation_id);

CREATE TABLE mandate (
    id              BIGSERIAL PRIMARY KEY,
    reference       TEXT NOT NULL UNIQUE,
    organisation_id BIGINT NOT NULL REFERENCES organisation (id),
    account_id      BIGINT REFERENCES account (id),
    person_id       BIGINT NOT NULL REFERENCES person (id),
    purpose         TEXT NOT NULL CHECK (purpose IN ('follow_up','training','document_processing','compensation')),
    valid_from      DATE NOT NULL,
    valid_to        DATE,
    source          TEXT NOT NULL,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX mandate_person ON mandate (person_id, organisation_id);
CREATE INDEX mandate_org ON mandate (organisation_id, person_id);
CREATE INDEX mandate_account ON mandate (account_id) WHERE account_id IS NOT NULL;
