//! SQL that reads the same on SQLite and PostgreSQL, written once.

/// The account columns of [`crate::ACCOUNT_SELECT`], for joins.
macro_rules! account_columns {
    () => {
        "a.id, a.login, a.role, a.state, o.id, o.code, o.kind, a.created_at, o.departement"
    };
}

/// An account, its organisation and its history (same SQL on both
/// backends; account columns from 0, lifecycle columns from 9).
pub(crate) const REVIEW_SELECT: &str = concat!(
    "SELECT ",
    account_columns!(),
    ", a.created_at, a.requested_by, a.decided_by, a.decided_at, a.last_login_at,
        a.next_session_high_risk
     FROM account a JOIN organisation o ON o.id = a.organisation_id"
);

/// A session with its account (account columns from 12).
pub(crate) const SESSION_SELECT: &str = concat!(
    "SELECT s.id_digest, s.account_id, s.jkt, s.method, s.created_at, s.last_seen_at,
        s.absolute_expiry, s.idle_timeout_secs, s.high_risk, s.step_up_at, s.ended_at,
        s.end_reason, ",
    account_columns!(),
    " FROM web_session s JOIN account a ON a.id = s.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An API client with its account (account columns from 5).
pub(crate) const API_CLIENT_SELECT: &str = concat!(
    "SELECT c.client_id, c.account_id, c.public_keys, c.created_at, c.revoked_at, ",
    account_columns!(),
    " FROM api_client c JOIN account a ON a.id = c.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An access token with its account (account columns from 7). The join
/// on a live client is what hides a revoked client's tokens, even one
/// inserted while the revocation committed.
pub(crate) const ACCESS_TOKEN_SELECT: &str = concat!(
    "SELECT t.digest, t.client_id, t.account_id, t.jkt, t.scope, t.issued_at, t.expires_at, ",
    account_columns!(),
    " FROM access_token t
     JOIN api_client c ON c.client_id = t.client_id AND c.revoked_at IS NULL
     JOIN account a ON a.id = t.account_id
     JOIN organisation o ON o.id = a.organisation_id"
);

/// An activation code.
pub(crate) const ACTIVATION_SELECT: &str = "SELECT account_id, digest, issued_by, issued_at,
        expires_at, used_at, throttle FROM activation_code";

/// A passkey.
pub(crate) const PASSKEY_SELECT: &str =
    "SELECT credential_id, account_id, data, created_at, last_used_at FROM passkey";

/// A credential reset.
pub(crate) const RESET_SELECT: &str = "SELECT id, account_id, kind, requested_by, requested_at,
        decided_by, decided_at, approved FROM credential_reset";
