-- Registry v3: what authentication persists. No secret is kept in clear:
-- passwords are argon2id PHC strings, TOTP secrets arrive sealed, and
-- sessions, access tokens, ceremonies and replay keys are looked up by a
-- 32-byte digest of the value the client holds. JSON payloads (throttle
-- state, passkeys, ceremony states, client keys) belong to the
-- authentication code and are opaque text here.
-- Instants are RFC 3339 UTC text with microseconds, as in v2.

-- Four eyes on accounts: who asked when, who decided when. Accounts stored
-- before this version, and those written by imports, keep NULLs: their
-- history is unknown and is not invented. decided_by can be neither the
-- account nor its requester (checked by the store with clear messages, and
-- here as a last line).
ALTER TABLE account ADD COLUMN created_at TEXT;
ALTER TABLE account ADD COLUMN decided_by INTEGER REFERENCES account (id)
    CHECK (decided_by IS NULL OR (decided_by <> id AND decided_by IS NOT requested_by));
ALTER TABLE account ADD COLUMN decided_at TEXT
    CHECK ((decided_at IS NULL) = (decided_by IS NULL));
ALTER TABLE account ADD COLUMN last_login_at TEXT;
-- Set by an approved credential reset: the first session after it is high-risk.
ALTER TABLE account ADD COLUMN next_session_high_risk INTEGER NOT NULL DEFAULT 0
    CHECK (next_session_high_risk IN (0, 1));
-- Counting a requester's recent requests (a burst of account creations).
CREATE INDEX account_requested_by ON account (requested_by, created_at);

-- One password per account. The throttle state (failures, lock) lives with
-- it, so deleting the password on a reset also clears its lock.
CREATE TABLE account_password (
    account_id INTEGER PRIMARY KEY REFERENCES account (id),
    phc        TEXT NOT NULL CHECK (substr(phc, 1, 10) = '$argon2id$' AND length(phc) <= 512),
    throttle   TEXT NOT NULL DEFAULT '{}',
    set_at     TEXT NOT NULL
) STRICT;

-- last_step is the replay guard: a code is accepted only for a later step.
CREATE TABLE account_totp (
    account_id    INTEGER PRIMARY KEY REFERENCES account (id),
    sealed_secret BLOB NOT NULL CHECK (length(sealed_secret) BETWEEN 1 AND 1024),
    last_step     INTEGER CHECK (last_step >= 0),
    enrolled_at   TEXT NOT NULL
) STRICT;

-- WebAuthn credential ids are at most 1023 bytes and unique across
-- accounts (an authenticator's id names one credential). Random keys: no
-- rowid, the primary key is the table.
CREATE TABLE passkey (
    credential_id BLOB PRIMARY KEY CHECK (length(credential_id) BETWEEN 1 AND 1023),
    account_id    INTEGER NOT NULL REFERENCES account (id),
    data          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
) STRICT, WITHOUT ROWID;
CREATE INDEX passkey_account ON passkey (account_id);

-- Browser sessions, by digest of the cookie value, bound to the device key
-- (jkt, a 43-character JWK thumbprint). Ended sessions stay, with why.
CREATE TABLE web_session (
    id_digest         BLOB PRIMARY KEY CHECK (length(id_digest) = 32),
    account_id        INTEGER NOT NULL REFERENCES account (id),
    jkt               TEXT NOT NULL CHECK (length(jkt) = 43),
    method            TEXT NOT NULL CHECK (method IN ('passkey','password_totp','oidc')),
    created_at        TEXT NOT NULL,
    last_seen_at      TEXT NOT NULL,
    absolute_expiry   TEXT NOT NULL,
    idle_timeout_secs INTEGER NOT NULL CHECK (idle_timeout_secs > 0),
    high_risk         INTEGER NOT NULL CHECK (high_risk IN (0, 1)),
    step_up_at        TEXT,
    ended_at          TEXT,
    end_reason        TEXT CHECK (end_reason GLOB '[a-z]*' AND end_reason NOT GLOB '*[^a-z_]*'
                                  AND length(end_reason) <= 32),
    CHECK (absolute_expiry > created_at),
    CHECK (last_seen_at >= created_at),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
) STRICT, WITHOUT ROWID;
CREATE INDEX web_session_account ON web_session (account_id);

-- Single-use ceremony states (WebAuthn challenges, OIDC pending logins,
-- login challenges). Kinds are lowercase codes the authentication code
-- names: a format, not a list, so a new ceremony needs no migration.
CREATE TABLE ceremony (
    id         BLOB PRIMARY KEY CHECK (length(id) = 32),
    kind       TEXT NOT NULL CHECK (kind GLOB '[a-z]*' AND kind NOT GLOB '*[^a-z_]*'
                                    AND length(kind) <= 32),
    payload    TEXT NOT NULL,
    expires_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- API clients (private_key_jwt): their public keys, never a secret.
CREATE TABLE api_client (
    client_id   TEXT PRIMARY KEY CHECK (length(client_id) BETWEEN 1 AND 128),
    account_id  INTEGER NOT NULL REFERENCES account (id),
    public_keys TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT                                   -- NULL while usable
) STRICT, WITHOUT ROWID;
CREATE INDEX api_client_account ON api_client (account_id);

-- DPoP-bound access tokens, by digest of the token value. Revoking a
-- client deletes its tokens (by the client index).
CREATE TABLE access_token (
    digest     BLOB PRIMARY KEY CHECK (length(digest) = 32),
    client_id  TEXT NOT NULL REFERENCES api_client (client_id),
    account_id INTEGER NOT NULL REFERENCES account (id),
    jkt        TEXT NOT NULL CHECK (length(jkt) = 43),
    scope      TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    CHECK (expires_at > issued_at)
) STRICT, WITHOUT ROWID;
CREATE INDEX access_token_client ON access_token (client_id);

-- Replay keys (DPoP proof and client assertion jti), shared by every
-- server instance on this database. No index on expires_at: the purge
-- scans a table bounded by the proof window, while every API request
-- writes here.
CREATE TABLE replay_key (
    digest     BLOB PRIMARY KEY CHECK (length(digest) = 32),
    expires_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- Credential resets, four eyes: a request, then an officer's decision.
CREATE TABLE credential_reset (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    account_id   INTEGER NOT NULL REFERENCES account (id),
    kind         TEXT NOT NULL CHECK (kind IN ('password','totp','passkeys','all')),
    requested_by INTEGER NOT NULL REFERENCES account (id),
    requested_at TEXT NOT NULL,
    decided_by   INTEGER REFERENCES account (id),
    decided_at   TEXT,
    approved     INTEGER CHECK (approved IN (0, 1)),
    CHECK ((decided_at IS NULL) = (decided_by IS NULL)),
    CHECK ((decided_at IS NULL) = (approved IS NULL)),
    CHECK (decided_by <> requested_by AND decided_by <> account_id)
) STRICT;
-- The queue of undecided resets.
CREATE INDEX credential_reset_pending ON credential_reset (id) WHERE decided_at IS NULL;
