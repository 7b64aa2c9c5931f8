-- Baseline for bench/consult.sh, step 2 of 3: the staged CSVs become a
-- plaintext registry with the shape and indexes of Rempart's own schema
-- (crates/storage/migrations/postgres/0001_registry.sql), references
-- resolved to ids; then row-level security on persons and a reader role.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET search_path = bench_rls;

CREATE TABLE organisation (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    kind        text NOT NULL,
    name        text NOT NULL,
    departement text
);
INSERT INTO organisation (code, kind, name, departement)
SELECT code, kind, name, departement FROM stage_organisation;

CREATE TABLE account (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login           text NOT NULL UNIQUE,
    organisation_id bigint NOT NULL REFERENCES organisation (id),
    role            text NOT NULL,
    state           text NOT NULL,
    requested_by    bigint REFERENCES account (id),
    approved_by     bigint REFERENCES account (id)
);
INSERT INTO account (login, organisation_id, role, state)
SELECT s.login, o.id, s.role, s.state
FROM stage_account s JOIN organisation o ON o.code = s.organisation;
UPDATE account a SET requested_by = r.id
FROM stage_account s JOIN account r ON r.login = s.requested_by
WHERE s.login = a.login;
UPDATE account a SET approved_by = r.id
FROM stage_account s JOIN account r ON r.login = s.approved_by
WHERE s.login = a.login;
CREATE INDEX account_org ON account (organisation_id);

-- The same fields Rempart keeps sealed (identity, contact, nir, status), in clear.
CREATE TABLE person (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ft_id            text NOT NULL,
    nir              text NOT NULL,
    nom              text NOT NULL,
    prenom           text NOT NULL,
    date_naissance   date NOT NULL,
    email            text,
    telephone        text,
    adresse          text NOT NULL,
    code_postal      text NOT NULL,
    commune          text NOT NULL,
    statut           text NOT NULL,
    date_inscription date NOT NULL,
    date_fin         date
);
INSERT INTO person (ft_id, nir, nom, prenom, date_naissance, email, telephone, adresse,
                    code_postal, commune, statut, date_inscription, date_fin)
SELECT ft_id, replace(nir, ' ', ''), nom, prenom, date_naissance, email, telephone, adresse,
       code_postal, commune, statut, date_inscription, date_fin
FROM stage_person;
-- What Rempart indexes (blind indexes there): identifier, NIR, name.
CREATE UNIQUE INDEX person_ft ON person (ft_id);
CREATE INDEX person_nir ON person (nir);
CREATE INDEX person_name ON person (nom, prenom);

CREATE TABLE mandate (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference       text NOT NULL UNIQUE,
    organisation_id bigint NOT NULL REFERENCES organisation (id),
    account_id      bigint REFERENCES account (id),
    person_id       bigint NOT NULL REFERENCES person (id),
    purpose         text NOT NULL,
    valid_from      date NOT NULL,
    valid_to        date,
    source          text NOT NULL
);
INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                     valid_from, valid_to, source)
SELECT s.reference, o.id, a.id, p.id, s.purpose, s.valid_from, s.valid_to, s.source
FROM stage_mandate s
JOIN organisation o ON o.code = s.organisation
LEFT JOIN account a ON a.login = s.account
JOIN person p ON p.ft_id = s.ft_id;
CREATE INDEX mandate_person ON mandate (person_id, organisation_id);
CREATE INDEX mandate_org ON mandate (organisation_id, person_id);
CREATE INDEX mandate_account ON mandate (account_id) WHERE account_id IS NOT NULL;

-- Every staged line must have landed (a dangling reference would be lost
-- silently by the joins above).
DO $$
DECLARE staged bigint; stored bigint;
BEGIN
    SELECT count(*) INTO staged FROM stage_person;  SELECT count(*) INTO stored FROM person;
    IF staged <> stored THEN RAISE EXCEPTION 'persons: % staged, % stored', staged, stored; END IF;
    SELECT count(*) INTO staged FROM stage_account; SELECT count(*) INTO stored FROM account;
    IF staged <> stored THEN RAISE EXCEPTION 'accounts: % staged, % stored', staged, stored; END IF;
    SELECT count(*) INTO staged FROM stage_mandate; SELECT count(*) INTO stored FROM mandate;
    IF staged <> stored THEN RAISE EXCEPTION 'mandates: % staged, % stored', staged, stored; END IF;
END $$;
DROP TABLE stage_organisation, stage_account, stage_person, stage_mandate;

-- A person row is visible only while a mandate live today links it to the
-- session's organisation, held by the organisation as a whole or naming
-- the session's account. Unset settings read as NULL: nothing is visible.
ALTER TABLE person ENABLE ROW LEVEL SECURITY;
ALTER TABLE person FORCE ROW LEVEL SECURITY;
CREATE POLICY caseload ON person FOR SELECT USING (
    EXISTS (
        SELECT 1
        FROM mandate m
        JOIN organisation o ON o.id = m.organisation_id
        LEFT JOIN account a ON a.id = m.account_id
        WHERE m.person_id = person.id
          AND o.code = current_setting('rempart.organisation', true)
          AND (m.account_id IS NULL OR a.login = current_setting('rempart.account', true))
          AND m.valid_from <= current_date
          AND (m.valid_to IS NULL OR m.valid_to > current_date)
    )
);

-- The role pgbench connects as: no superuser, no BYPASSRLS, SELECT only.
-- (Organisations, accounts and mandates hold no personal data; the policy
-- reads them with the reader's own rights.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_rls_reader') THEN
        CREATE ROLE bench_rls_reader LOGIN PASSWORD 'bench_rls_reader';
    END IF;
END $$;
ALTER ROLE bench_rls_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD 'bench_rls_reader';
GRANT USAGE ON SCHEMA bench_rls TO bench_rls_reader;
GRANT SELECT ON organisation, account, person, mandate TO bench_rls_reader;

VACUUM ANALYZE organisation;
VACUUM ANALYZE account;
VACUUM ANALYZE person;
VACUUM ANALYZE mandate;
