-- Registry v5: activation codes. An account approved under four eyes, or
-- whose password or TOTP was reset, gets its first factors through a code
-- an officer hands over out of band. One live code per account (a new one
-- replaces the old); only its SHA-256 digest is kept. used_at is the
-- single-use guard (a compare-and-set); throttle is the lockout state of
-- wrong codes, as for passwords (opaque JSON of the authentication code).
CREATE TABLE activation_code (
    account_id INTEGER PRIMARY KEY REFERENCES account (id),
    digest     BLOB NOT NULL CHECK (length(digest) = 32),
    issued_by  INTEGER NOT NULL REFERENCES account (id),
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    throttle   TEXT NOT NULL DEFAULT '{}',
    CHECK (expires_at > issued_at),
    CHECK (issued_by <> account_id)
) STRICT;
