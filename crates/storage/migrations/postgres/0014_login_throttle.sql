-- Login throttle states that belong to no account: one per source address
-- (scope 'address') and one per login that names no account (scope
-- 'unknown_login'), each under a keyed digest (no address or typed login
-- is stored), shared by every instance. `entry` is the state (JSON),
-- changed by compare-and-set; `forget_at` (Unix seconds) is when an
-- address state may be deleted; `touched` is the last change, which
-- decides what is evicted from a full unknown-login table.
CREATE TABLE login_throttle (
    scope     TEXT   NOT NULL,
    key       BYTEA  NOT NULL,
    entry     TEXT   NOT NULL,
    forget_at BIGINT NOT NULL,
    touched   BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX login_throttle_forget ON login_throttle (scope, forget_at);
CREATE INDEX login_throttle_touched ON login_throttle (scope, touched);

-- How many states each scope holds, kept by the triggers below: the bound
-- on a scope costs one row read where a count over up to `max_addresses`
-- rows cost about 13 ms on a full table, per new address, which a flood
-- from fresh addresses could turn against the database.
CREATE TABLE login_throttle_count (
    scope TEXT   NOT NULL PRIMARY KEY,
    n     BIGINT NOT NULL
);
INSERT INTO login_throttle_count (scope, n) VALUES ('address', 0), ('unknown_login', 0);
CREATE FUNCTION login_throttle_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE login_throttle_count SET n = n + 1 WHERE scope = NEW.scope;
    ELSE
        UPDATE login_throttle_count SET n = n - 1 WHERE scope = OLD.scope;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER login_throttle_counted AFTER INSERT OR DELETE ON login_throttle
    FOR EACH ROW EXECUTE FUNCTION login_throttle_counted();
