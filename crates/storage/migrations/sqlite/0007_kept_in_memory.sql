-- Registry v7: what the consultation path may keep in memory, and the
-- index it reads a person's mandates from.
--
-- access_version counts the changes to what an API credential's check
-- reads (the credential, its account, the account's organisation). The
-- store keeps checked credentials in memory with the version it read
-- before them, and uses a copy only while the version it reads now, in the
-- same snapshot as the rest of the request, is the same: a revocation, a
-- suspension or a role change by any process counts from the next request.
-- The version changes in the same transaction as the row.
CREATE TABLE access_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO access_version (id, version) VALUES (1, 1);

CREATE TRIGGER api_credential_changed AFTER UPDATE ON api_credential
BEGIN UPDATE access_version SET version = version + 1; END;

CREATE TRIGGER api_credential_removed AFTER DELETE ON api_credential
BEGIN UPDATE access_version SET version = version + 1; END;

CREATE TRIGGER account_access_changed
AFTER UPDATE OF organisation_id, role, state, created_at ON account
WHEN NEW.organisation_id IS NOT OLD.organisation_id OR NEW.role IS NOT OLD.role
  OR NEW.state IS NOT OLD.state OR NEW.created_at IS NOT OLD.created_at
BEGIN UPDATE access_version SET version = version + 1; END;

CREATE TRIGGER organisation_access_changed AFTER UPDATE OF kind, departement ON organisation
WHEN NEW.kind IS NOT OLD.kind OR NEW.departement IS NOT OLD.departement
BEGIN UPDATE access_version SET version = version + 1; END;
--
-- An organisation's code and an account's login never change, and neither
-- row is ever deleted (accounts are disabled, not removed): the store keeps
-- both names by id in memory and reads a person's mandates without joining
-- the two tables. These triggers make the database itself refuse what
-- would make that copy wrong, whoever the writer.
CREATE TRIGGER organisation_code_never_changes
BEFORE UPDATE OF code ON organisation WHEN NEW.code IS NOT OLD.code
BEGIN SELECT RAISE(ABORT, 'an organisation''s code never changes'); END;

CREATE TRIGGER organisation_never_deleted BEFORE DELETE ON organisation
BEGIN SELECT RAISE(ABORT, 'organisations are never deleted'); END;

CREATE TRIGGER account_login_never_changes
BEFORE UPDATE OF login ON account WHEN NEW.login IS NOT OLD.login
BEGIN SELECT RAISE(ABORT, 'an account''s login never changes'); END;

CREATE TRIGGER account_never_deleted BEFORE DELETE ON account
BEGIN SELECT RAISE(ABORT, 'accounts are never deleted'); END;

-- Every column the consultation path reads of a person's mandates, so that
-- the lookup is one index seek (no row fetched per mandate). Same leading
-- columns as the index it replaces.
DROP INDEX mandate_person;
CREATE INDEX mandate_person ON mandate (person_id, organisation_id, id, account_id, purpose,
    valid_from, valid_to, revoked_at, source, reference);
