-- Registry v7: what the consultation path may keep in memory.
--
-- access_version counts the changes to what an API credential's check
-- reads (the credential, its account, the account's organisation). The
-- store keeps checked credentials in memory with the version it read
-- before them, and uses a copy only while the version it reads now is the
-- same: a revocation, a suspension or a role change by any process counts
-- from the next request. The version changes in the same transaction as
-- the row. The functions keep the search path of their creation, this
-- schema's, whoever runs the statement that fires them.
CREATE TABLE access_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO access_version (id, version) VALUES (1, 1);

CREATE FUNCTION bump_access_version() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE access_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_credential_changed AFTER UPDATE OR DELETE OR TRUNCATE ON api_credential
FOR EACH STATEMENT EXECUTE FUNCTION bump_access_version();

CREATE TRIGGER account_access_changed
AFTER UPDATE OF organisation_id, role, state, created_at ON account FOR EACH ROW
WHEN (NEW.organisation_id IS DISTINCT FROM OLD.organisation_id OR NEW.role IS DISTINCT FROM OLD.role
   OR NEW.state IS DISTINCT FROM OLD.state OR NEW.created_at IS DISTINCT FROM OLD.created_at)
EXECUTE FUNCTION bump_access_version();

CREATE TRIGGER organisation_access_changed AFTER UPDATE OF kind, departement ON organisation
FOR EACH ROW WHEN (NEW.kind IS DISTINCT FROM OLD.kind OR NEW.departement IS DISTINCT FROM OLD.departement)
EXECUTE FUNCTION bump_access_version();
--
-- An organisation's code and an account's login never change, and neither
-- row is ever deleted (accounts are disabled, not removed): the store keeps
-- both names by id in memory and reads a person's mandates without joining
-- the two tables. These triggers make the database itself refuse what
-- would make that copy wrong, whoever the writer.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER organisation_code_never_changes
BEFORE UPDATE OF code ON organisation FOR EACH ROW WHEN (NEW.code IS DISTINCT FROM OLD.code)
EXECUTE FUNCTION refuse_change('an organisation''s code never changes');

CREATE TRIGGER organisation_never_deleted BEFORE DELETE ON organisation FOR EACH ROW
EXECUTE FUNCTION refuse_change('organisations are never deleted');

CREATE TRIGGER organisation_never_truncated BEFORE TRUNCATE ON organisation
EXECUTE FUNCTION refuse_change('organisations are never deleted');

CREATE TRIGGER account_login_never_changes
BEFORE UPDATE OF login ON account FOR EACH ROW WHEN (NEW.login IS DISTINCT FROM OLD.login)
EXECUTE FUNCTION refuse_change('an account''s login never changes');

CREATE TRIGGER account_never_deleted BEFORE DELETE ON account FOR EACH ROW
EXECUTE FUNCTION refuse_change('accounts are never deleted');

CREATE TRIGGER account_never_truncated BEFORE TRUNCATE ON account
EXECUTE FUNCTION refuse_change('accounts are never deleted');
