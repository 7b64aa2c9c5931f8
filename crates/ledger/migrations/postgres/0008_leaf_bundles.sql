-- Leaves in bundles of 16 (PostgreSQL).
--
-- A row per leaf cost 24 bytes of tuple header, 4 of line pointer and an
-- index entry of 16 to 20 bytes on top of its 60 to 70 bytes of data; a row
-- of 16 leaves pays those once. (C2SP tlog-tiles packs entries the same
-- way; 16 leaves, about 1.1 KB, stay under the 2 KB beyond which PostgreSQL
-- compresses or moves a value out of line, and seven rows fill a page.)
--
-- `first` is the index of the bundle's first leaf (a multiple of 16),
-- `count` how many leaves it holds, `data` each leaf's canonical bytes
-- preceded by their length (2 bytes, big-endian). Only the last bundle may
-- hold fewer than 16: the writer grows it with the next appends, and the
-- trigger lets an update only append leaves to a bundle that is not full
-- (the bytes already there never change). Nothing is ever deleted.
CREATE TABLE leaf_bundle (
    first BIGINT PRIMARY KEY CHECK (first >= 0 AND first % 16 = 0),
    count INTEGER NOT NULL CHECK (count BETWEEN 1 AND 16),
    data BYTEA NOT NULL
);

-- A ledger with a hole in its leaf rows (altered, or damaged) is not
-- packed: its leaves would shift to other indices. Verify it first.
DO $$
BEGIN
    IF (SELECT coalesce(max(idx) + 1, 0) FROM leaf) <> (SELECT count(*) FROM leaf) THEN
        RAISE EXCEPTION 'the ledger''s leaf rows are not contiguous from 0: '
            'run "rempart audit verify" and restore the ledger before upgrading';
    END IF;
    IF EXISTS (SELECT 1 FROM leaf WHERE length(data) > 65535) THEN
        RAISE EXCEPTION 'a leaf is longer than 65535 bytes and cannot be packed';
    END IF;
END
$$;

INSERT INTO leaf_bundle (first, count, data)
    SELECT idx - idx % 16, count(*),
           string_agg(substring(int4send(length(data)) FROM 3) || data, ''::bytea ORDER BY idx)
    FROM leaf
    GROUP BY idx - idx % 16;

-- Leaf `i`'s bytes, for the checks below (NULL if there is no such leaf).
CREATE FUNCTION ledger_leaf(i BIGINT) RETURNS BYTEA LANGUAGE plpgsql STABLE AS $$
DECLARE
    bundle BYTEA;
    pos INTEGER := 0;
    len INTEGER;
BEGIN
    SELECT data INTO bundle FROM leaf_bundle WHERE first = i - i % 16 AND count > i % 16;
    IF bundle IS NULL THEN
        RETURN NULL;
    END IF;
    FOR k IN 0 .. i % 16 LOOP
        len := get_byte(bundle, pos) * 256 + get_byte(bundle, pos + 1);
        IF k = i % 16 THEN
            RETURN substring(bundle FROM pos + 3 FOR len);
        END IF;
        pos := pos + 2 + len;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION ledger_integrated_is_the_staged_leaf() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM staged s
                   WHERE s.id = NEW.receipt AND s.data = ledger_leaf(NEW.idx)) THEN
        RAISE EXCEPTION 'leaf % does not hold staged leaf %', NEW.idx, NEW.receipt;
    END IF;
    RETURN NEW;
END
$$;
ALTER TABLE integrated DROP CONSTRAINT integrated_idx_fkey;
DROP TABLE leaf;

CREATE FUNCTION ledger_bundle_only_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.first <> OLD.first OR OLD.count >= 16 OR NEW.count <= OLD.count
       OR length(NEW.data) <= length(OLD.data)
       OR substring(NEW.data FROM 1 FOR length(OLD.data)) <> OLD.data THEN
        RAISE EXCEPTION 'the audit ledger is append-only (a bundle of leaves may only grow)';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER leaf_bundle_only_grows BEFORE UPDATE ON leaf_bundle
    FOR EACH ROW EXECUTE FUNCTION ledger_bundle_only_grows();
CREATE TRIGGER leaf_bundle_no_delete BEFORE DELETE ON leaf_bundle
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER leaf_bundle_no_truncate BEFORE TRUNCATE ON leaf_bundle
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
