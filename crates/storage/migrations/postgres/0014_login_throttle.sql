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
