-- Login throttle states that belong to no account: one per source address
-- (scope 'address') and one per login that names no account (scope
-- 'unknown_login'), each under a keyed digest (no address or typed login
-- is stored), shared by every instance. `entry` is the state (JSON),
-- changed by compare-and-set; `forget_at` (Unix seconds) is when an
-- address state may be deleted; `touched` is the last change, which
-- decides what is evicted from a full unknown-login table.
CREATE TABLE login_throttle (
    scope     TEXT   NOT NULL,
    key       BLOB   NOT NULL,
    entry     TEXT   NOT NULL,
    forget_at INTEGER NOT NULL,
    touched   INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
CREATE INDEX login_throttle_forget ON login_throttle (scope, forget_at);
CREATE INDEX login_throttle_touched ON login_throttle (scope, touched);

-- How many states each scope holds, kept by the triggers below: the bound
-- on a scope costs one row read, not a count over up to `max_addresses`
-- rows per new address.
CREATE TABLE login_throttle_count (
    scope TEXT    NOT NULL PRIMARY KEY,
    n     INTEGER NOT NULL
) STRICT;
INSERT INTO login_throttle_count (scope, n) VALUES ('address', 0), ('unknown_login', 0);
CREATE TRIGGER login_throttle_added AFTER INSERT ON login_throttle BEGIN
    UPDATE login_throttle_count SET n = n + 1 WHERE scope = NEW.scope;
END;
CREATE TRIGGER login_throttle_removed AFTER DELETE ON login_throttle BEGIN
    UPDATE login_throttle_count SET n = n - 1 WHERE scope = OLD.scope;
END;
