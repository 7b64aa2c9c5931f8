-- Registry v10: browsers trusted for an account's password logins.
--
-- A browser that logged into an account gets a device token (a cookie);
-- its digest is kept here with a throttle counter of its own. A password
-- login from that browser counts its failures there, not on the account's
-- counter that every other browser shares: someone who fails on purpose
-- to lock an account out locks out unknown browsers only, never the
-- owner's. Rows expire; a suspension or an approved reset deletes the
-- account's rows.
CREATE TABLE login_device (
    digest     BYTEA PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES account (id),
    throttle   TEXT NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_device_account ON login_device (account_id);
CREATE INDEX login_device_expiry ON login_device (expires_at);
