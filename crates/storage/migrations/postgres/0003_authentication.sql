-- Registry v3: what authentication persists. No secret is kept in clear:
-- passwords are argon2id PHC strings, TOTP secrets arrive sealed, and
-- sessions, access tokens, ceremonies and replay keys are looked up by a
-- 32-byte digest of the value the client holds. JSON payloads (throttle
-- state, passkeys, ceremony states, client keys) belong to the
-- authentication code and are opaque text here.

-- Four eyes on accounts: who asked when, who decided when. Accounts stored
-- before this version, and those written by imports, keep NULLs: their
-- history is unknown and is not invented. decided_by can be neither the
-- account nor its requester (checked by the store with clear messages, and
-- here as a last line).
ALTER TABLE account ADD COLUMN created_at TIMESTAMPTZ,
                    ADD COLUMN decided_by BIGINT REFERENCES account (id),
                    ADD COLUMN decided_at TIMESTAMPTZ,
                    ADD COLUMN last_login_at TIMESTAMPTZ,
                    -- Set by an approved credential reset: the first session after it is high-risk.
                    ADD COLUMN next_session_high_risk BOOLEAN NOT NULL DEFAULT false,
                    ADD CONSTRAINT account_decided_by_four_eyes CHECK (decided_by IS NULL
                        OR (decided_by <> id AND decided_by IS DISTINCT FROM requested_by)),
                    ADD CONSTRAINT account_decided_at CHECK ((decided_at IS NULL) = (decided_by IS NULL));
-- Counting a requester's recent requests (a burst of account creations).
CREATE INDEX account_requested_by ON account (requested_by, created_at);

-- One password per account. The throttle state (failures, lock) lives with
-- it, so deleting the password on a reset also clears its lock.
CREATE TABLE account_password (
    account_id BIGINT PRIMARY KEY REFERENCES account (id),
    phc        TEXT NOT NULL CHECK (substr(phc, 1, 10) = '$argon2id$' AND octet_length(phc) <= 512),
    throttle   TEXT NOT NULL DEFAULT '{}',
    set_at     TIMESTAMPTZ NOT NULL
);

-- last_step is the replay guard: a code is accepted only for a later step.
CREATE TABLE account_totp (
    account_id    BIGINT PRIMARY KEY REFERENCES account (id),
    sealed_secret BYTEA NOT NULL CHECK (octet_length(sealed_secret) BETWEEN 1 AND 1024),
    last_step     BIGINT CHECK (last_step >= 0),
    enrolled_at   TIMESTAMPTZ NOT NULL
);

-- WebAuthn credential ids are at most 1023 bytes and unique across
-- accounts (an authenticator's id names one credential).
CREATE TABLE passkey (
    credential_id BYTEA PRIMARY KEY CHECK (octet_length(credential_id) BETWEEN 1 AND 1023),
    account_id    BIGINT NOT NULL REFERENCES account (id),
    data          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ
);
CREATE INDEX passkey_account ON passkey (account_id);

-- Browser sessions, by digest of the cookie value, bound to the device key
-- (jkt, a 43-character JWK thumbprint). Ended sessions stay, with why.
CREATE TABLE web_session (
    id_digest         BYTEA PRIMARY KEY CHECK (octet_length(id_digest) = 32),
    account_id        BIGINT NOT NULL REFERENCES account (id),
    jkt               TEXT NOT NULL CHECK (octet_length(jkt) = 43),
    method            TEXT NOT NULL CHECK (method IN ('passkey','password_totp','oidc')),
    created_at        TIMESTAMPTZ NOT NULL,
    last_seen_at      TIMESTAMPTZ NOT NULL,
    absolute_expiry   TIMESTAMPTZ NOT NULL,
    idle_timeout_secs BIGINT NOT NULL CHECK (idle_timeout_secs > 0),
    high_risk         BOOLEAN NOT NULL,
    step_up_at        TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ,
    end_reason        TEXT CHECK (end_reason ~ '^[a-z][a-z_]{0,31}$'),
    CHECK (absolute_expiry > created_at),
    CHECK (last_seen_at >= created_at),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX web_session_account ON web_session (account_id);

-- Single-use ceremony states (WebAuthn challenges, OIDC pending logins,
-- login challenges). Kinds are lowercase codes the authentication code
-- names: a format, not a list, so a new ceremony needs no migration.
CREATE TABLE ceremony (
    id         BYTEA PRIMARY KEY CHECK (octet_length(id) = 32),
    kind       TEXT NOT NULL CHECK (kind ~ '^[a-z][a-z_]{0,31}$'),
    payload    TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- API clients (private_key_jwt): their public keys, never a secret.
CREATE TABLE api_client (
    client_id   TEXT PRIMARY KEY CHECK (octet_length(client_id) BETWEEN 1 AND 128),
    account_id  BIGINT NOT NULL REFERENCES account (id),
    public_keys TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ                            -- NULL while usable
);
CREATE INDEX api_client_account ON api_client (account_id);

-- DPoP-bound access tokens, by digest of the token value. Revoking a
-- client deletes its tokens (by the client index).
CREATE TABLE access_token (
    digest     BYTEA PRIMARY KEY CHECK (octet_length(digest) = 32),
    client_id  TEXT NOT NULL REFERENCES api_client (client_id),
    account_id BIGINT NOT NULL REFERENCES account (id),
    jkt        TEXT NOT NULL CHECK (octet_length(jkt) = 43),
    scope      TEXT NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    CHECK (expires_at > issued_at)
);
CREATE INDEX access_token_client ON access_token (client_id);

-- Replay keys (DPoP proof and client assertion jti), shared by every
-- server instance on this database. No index on expires_at: the purge
-- scans a table bounded by the proof window, while every API request
-- writes here.
CREATE TABLE replay_key (
    digest     BYTEA PRIMARY KEY CHECK (octet_length(digest) = 32),
    expires_at TIMESTAMPTZ NOT NULL
);

-- Credential resets, four eyes: a request, then an officer's decision.
CREATE TABLE credential_reset (
    id           BIGSERIAL PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES account (id),
    kind         TEXT NOT NULL CHECK (kind IN ('password','totp','passkeys','all')),
    requested_by BIGINT NOT NULL REFERENCES account (id),
    requested_at TIMESTAMPTZ NOT NULL,
    decided_by   BIGINT REFERENCES account (id),
    decided_at   TIMESTAMPTZ,
    approved     BOOLEAN,
    CHECK ((decided_at IS NULL) = (decided_by IS NULL)),
    CHECK ((decided_at IS NULL) = (approved IS NULL)),
    CHECK (decided_by <> requested_by AND decided_by <> account_id)
);
-- The queue of undecided resets.
CREATE INDEX credential_reset_pending ON credential_reset (id) WHERE decided_at IS NULL;
