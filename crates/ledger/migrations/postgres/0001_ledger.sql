-- The audit ledger, in its own schema, written through a role that may only
-- INSERT and SELECT (granted by the program after migrating).
--
-- One row per leaf. `data` is the canonical leaf encoding the Merkle tree
-- hashes; time_us, account, organisation, person and reveals repeat fields of
-- it for the indexes (verification checks they agree). `nodes` holds the
-- hashes of the complete subtrees this leaf completes, level 0 (the leaf
-- hash) upwards, 32 bytes each: subtree (level, index) is stored with leaf
-- (index + 1) * 2^level - 1 at byte offset 32 * level.
CREATE TABLE leaf (
    idx BIGINT PRIMARY KEY CHECK (idx >= 0),
    time_us BIGINT NOT NULL,
    account BIGINT NOT NULL,
    organisation BIGINT NOT NULL,
    person BIGINT,
    reveals BOOLEAN NOT NULL,
    data BYTEA NOT NULL,
    nodes BYTEA NOT NULL
);

CREATE INDEX leaf_account ON leaf (account, time_us, reveals, person);
CREATE INDEX leaf_organisation ON leaf (organisation, time_us);
CREATE INDEX leaf_person ON leaf (person, time_us) WHERE person IS NOT NULL;

CREATE TABLE checkpoint (
    size BIGINT PRIMARY KEY CHECK (size >= 0),
    time_us BIGINT NOT NULL,
    note TEXT NOT NULL
);

-- Defence in depth behind the role: even the owner cannot rewrite history
-- by mistake.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit ledger is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER leaf_append_only BEFORE UPDATE OR DELETE ON leaf
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER leaf_no_truncate BEFORE TRUNCATE ON leaf
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER checkpoint_append_only BEFORE UPDATE OR DELETE ON checkpoint
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER checkpoint_no_truncate BEFORE TRUNCATE ON checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
