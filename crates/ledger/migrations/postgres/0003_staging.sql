-- Several appenders, one integrator.
--
-- Every server process appends its leaves here, durably, before it answers
-- (one transaction per group commit, no lock shared with the other
-- processes). The one process holding the writer's advisory lock, the
-- integrator, moves staged leaves into the log: it gives them the next
-- indices, extends the tree and deletes them from `staged` in the same
-- transaction that inserts them into `leaf`, then signs checkpoints.
--
-- A receipt is `batch * 65536 + ordinal`: a staging transaction takes one
-- number from `staged_batch` (never waits for another session) and numbers
-- its leaves from there, so the leaves of one batch have consecutive
-- receipts. The integrator takes staged leaves in receipt order.
CREATE SEQUENCE staged_batch;

CREATE TABLE staged (
    id BIGINT PRIMARY KEY CHECK (id >= 65536),
    data BYTEA NOT NULL
);

-- The index each staged leaf got, so that whoever holds a receipt finds
-- its leaf (and its proof) once it is integrated. Only staged leaves have
-- a row: the integrator's own were answered with their index, and their
-- appends stay what they were (no column more in `leaf`).
CREATE TABLE integrated (
    receipt BIGINT PRIMARY KEY,
    idx BIGINT NOT NULL UNIQUE REFERENCES leaf (idx)
);
-- A receipt is recorded only against the leaf that holds its staged bytes:
-- no process can retire a staged leaf by pointing it at another one.
CREATE FUNCTION ledger_integrated_is_the_staged_leaf() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM staged s JOIN leaf l ON l.idx = NEW.idx
                   WHERE s.id = NEW.receipt AND s.data = l.data) THEN
        RAISE EXCEPTION 'leaf % does not hold staged leaf %', NEW.idx, NEW.receipt;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER integrated_matches_staged BEFORE INSERT ON integrated
    FOR EACH ROW EXECUTE FUNCTION ledger_integrated_is_the_staged_leaf();
CREATE TRIGGER integrated_append_only BEFORE UPDATE OR DELETE ON integrated
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER integrated_no_truncate BEFORE TRUNCATE ON integrated
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- A staged leaf leaves `staged` only into the log: a process that could
-- delete it otherwise could hide a read it made. Never updated, never
-- truncated.
CREATE FUNCTION ledger_staged_leaves_only_into_the_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM integrated WHERE receipt = OLD.id) THEN
        RAISE EXCEPTION 'staged leaf % is not in the log: it may not be deleted', OLD.id;
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER staged_delete_only_integrated BEFORE DELETE ON staged
    FOR EACH ROW EXECUTE FUNCTION ledger_staged_leaves_only_into_the_log();
CREATE TRIGGER staged_no_update BEFORE UPDATE ON staged
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER staged_no_truncate BEFORE TRUNCATE ON staged
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
