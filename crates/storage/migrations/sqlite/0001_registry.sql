-- Registry v1: persons (sealed), organisations, accounts, mandates.
-- Persons hold no clear personal value: blind indexes, a wrapped data key
-- and one sealed blob per field group.

CREATE TABLE id_counter (
    name TEXT PRIMARY KEY,
    next INTEGER NOT NULL
) STRICT;
INSERT INTO id_counter (name, next) VALUES ('person', 1);

CREATE TABLE person (
    id           INTEGER PRIMARY KEY,
    ft_blind     BLOB,                 -- NULL once shredded
    nir_blind    BLOB,
    name_blind   BLOB,
    fingerprint  BLOB,
    kek_version  INTEGER NOT NULL,
    dek_version  INTEGER NOT NULL,
    wrapped_dek  BLOB,                 -- NULL once shredded
    identity     BLOB NOT NULL,
    contact      BLOB NOT NULL,
    nir          BLOB NOT NULL,
    status       BLOB NOT NULL,
    retain_until TEXT,
    shredded_at  TEXT
) STRICT;
-- Named indexes (not column constraints) so a first bulk load can drop
-- and rebuild them; see RegistryStore::begin_bulk_load.
CREATE UNIQUE INDEX person_ft ON person (ft_blind);
CREATE INDEX person_nir ON person (nir_blind);
CREATE INDEX person_name ON person (name_blind);

CREATE TABLE organisation (
    id          INTEGER PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('france_travail','cap_emploi','mission_locale','training_provider','processor')),
    name        TEXT NOT NULL,
    departement TEXT
) STRICT;

CREATE TABLE account (
    id              INTEGER PRIMARY KEY,
    login           TEXT NOT NULL UNIQUE,
    organisation_id INTEGER NOT NULL REFERENCES organisation (id),
    role            TEXT NOT NULL CHECK (role IN ('agent','manager','officer','security','dpo')),
    state           TEXT NOT NULL CHECK (state IN ('requested','active','suspended','disabled')),
    requested_by    INTEGER REFERENCES account (id),
    approved_by     INTEGER REFERENCES account (id)
) STRICT;
CREATE INDEX account_org ON account (organisation_id);

CREATE TABLE mandate (
    id              INTEGER PRIMARY KEY,
    reference       TEXT NOT NULL UNIQUE,
    organisation_id INTEGER NOT NULL REFERENCES organisation (id),
    account_id      INTEGER REFERENCES account (id),
    person_id       INTEGER NOT NULL REFERENCES person (id),
    purpose         TEXT NOT NULL CHECK (purpose IN ('follow_up','training','document_processing','compensation')),
    valid_from      TEXT NOT NULL,
    valid_to        TEXT,
    source          TEXT NOT NULL,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
) STRICT;
CREATE INDEX mandate_person ON mandate (person_id, organisation_id);
CREATE INDEX mandate_org ON mandate (organisation_id, person_id);
CREATE INDEX mandate_account ON mandate (account_id) WHERE account_id IS NOT NULL;
