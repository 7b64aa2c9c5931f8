//! API clients: partner software that reads through the API as one
//! account (same mandates, same policy), without a human at a browser.
//!
//! - **Registration** ([`register_client`], `rempart client register`):
//!   the partner sends its public key (a JWK, P-256 or Ed25519); Rempart
//!   stores it with the account the software acts for and hands back a
//!   random client id. No secret is ever shared.
//! - **The token endpoint** ([`Consultation::issue_token`], `POST
//!   /api/v1/token`): client credentials (RFC 6749 §4.4) authenticated by
//!   `private_key_jwt` (RFC 7523 §2.2: a short-lived JWT signed by the
//!   registered key, naming this server as `aud`, used once), with a DPoP
//!   proof (RFC 9449 §5) whose key the new `rmpat_` token is bound to
//!   (`cnf.jkt`). Tokens live [`ClientSettings::token_ttl`] (5 minutes by
//!   default); a client fetches a new one with a new assertion.
//! - **Using a token** is the authenticate stage's
//!   ([`crate::authenticate::authenticate_access_token`]): a DPoP proof by
//!   the bound key on every request.
//!
//! Both `jti`s (the assertion's and the proof's) go to the database's
//! replay table, shared by every server instance, after every other check
//! passed, so a refused request uses up neither.
//!
//! Only an active account's client gets a token, and each token issued
//! counts as activity for the inactivity rule
//! ([`rempart_storage::AuthStore::record_activity`]: it does not clear the
//! high-risk mark a reset puts on the next human session). Every issuance
//! and every refusal is a ledger leaf (action `token_issue`) appended
//! before the answer.
//!
//! # The public URL
//!
//! A proof names the URL the client called (`htu`), and an assertion names
//! this server (`aud`). Behind a proxy the server cannot know that URL from
//! the request, and taking it from the `Host` header would let a client
//! choose what its proofs are checked against; so it is configured
//! ([`ClientSettings::new`], `rempart serve --public-url`): the issuer is
//! the public URL, the token endpoint is the public URL + [`TOKEN_PATH`],
//! and a request's `htu` is the public URL + the request's path.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use rempart_auth::access_token::{self, Scope, TokenResponse};
use rempart_auth::client_assertion::{
    ASSERTION_TYPE, ClientAssertion, ClientAssertionError, ClientId, ClientKey, RegisteredClient,
};
use rempart_auth::dpop::{DpopError, DpopProof, Expected};
use rempart_domain::AccountState;
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    OrganisationId, Timestamp,
};
use rempart_storage::auth::{AccessTokenRow, ApiClientRow};
use rempart_storage::{AccountRecord, AuthStore, StorageError};

use crate::authenticate::replay_until;
use crate::kernel::{Consultation, OAuthError, Refusal, token_session, unauthenticated_leaf};

pub use crate::settings::{ClientConfigError, ClientSettings, TOKEN_PATH};

/// The only scope: the token acts as its account for the whole API, as
/// far as the account's role, mandates and the policy allow. Narrower
/// scopes can come later without changing clients that ask for this one.
pub const SCOPE_API: &str = "api";
/// How every client id starts (secret scanners, logs).
pub const CLIENT_ID_PREFIX: &str = "rmpc_";
/// At most this many keys per client (a key and its successor, and some).
pub const MAX_KEYS: usize = 4;

/// A token request's fields (RFC 6749 §4.4.2, RFC 7523 §2.2) and its
/// `DPoP` header. The web edge fills them from the form; a field given
/// twice is refused there.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenRequest<'a> {
    /// Must be `client_credentials`.
    pub grant_type: Option<&'a str>,
    /// Must be [`ASSERTION_TYPE`].
    pub client_assertion_type: Option<&'a str>,
    /// The client's signed JWT.
    pub client_assertion: Option<&'a str>,
    /// Optional; when given, must be the assertion's `iss`.
    pub client_id: Option<&'a str>,
    /// Optional; only [`SCOPE_API`].
    pub scope: Option<&'a str>,
    /// The DPoP proof; `None` when absent or repeated.
    pub proof: Option<&'a str>,
}

impl std::fmt::Debug for TokenRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("grant_type", &self.grant_type)
            .field(
                "client_assertion",
                &self.client_assertion.map(|_| "<present>"),
            )
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("proof", &self.proof.map(|_| "<present>"))
            .finish_non_exhaustive()
    }
}

/// One answer for an unknown client, a revoked one, and an assertion no
/// registered key signed: the ledger tells them apart, the caller does not
/// need to.
const CLIENT_FAILED: &str =
    "client authentication failed: unknown client, or no registered key of it signed the assertion";

/// Registers an API client for an active account, with its public keys,
/// and returns the new client id (`rmpc_` + 128 random bits). Refused with
/// [`Refusal::Invalid`] naming `login` (an account not active: requested
/// accounts await an outside officer's approval) or `jwk` (no key, too
/// many, or two alike).
pub async fn register_client(
    auth: &dyn AuthStore,
    account: &AccountRecord,
    keys: Vec<ClientKey>,
    now: DateTime<Utc>,
) -> Result<ClientId, Refusal> {
    if account.state != AccountState::Active {
        return Err(Refusal::invalid(
            "login",
            format!(
                "the account is {}, only an active account gets an API client",
                account.state
            ),
        ));
    }
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(Refusal::invalid(
            "jwk",
            format!("give 1 to {MAX_KEYS} public keys"),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        let same = |o: &ClientKey| {
            o.jwk.thumbprint() == k.jwk.thumbprint() || (o.kid.is_some() && o.kid == k.kid)
        };
        if keys[..i].iter().any(same) {
            return Err(Refusal::invalid(
                "jwk",
                "the keys must differ, and so must their kid",
            ));
        }
    }
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let client_id = ClientId::parse(&format!(
        "{CLIENT_ID_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(raw)
    ))
    .map_err(|_| Refusal::Unavailable("client_id: could not be generated".into()))?;
    let keys_json =
        serde_json::to_string(&keys).map_err(|e| Refusal::invalid("jwk", e.to_string()))?;
    auth.insert_api_client(ApiClientRow {
        client_id: client_id.as_str().to_owned(),
        account_id: account.account_id,
        keys: keys_json,
        created_at: now,
        revoked_at: None,
    })
    .await
    .map_err(|e| Refusal::from_store("API clients", &e))?;
    Ok(client_id)
}

/// Revokes a client: its assertions are refused from now on and its
/// tokens deleted (so they stop working at the next request). Refused
/// with [`Refusal::Invalid`] naming `client_id` when no live client has it.
pub async fn revoke_client(
    auth: &dyn AuthStore,
    client_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let revoked = auth
        .revoke_api_client(client_id, now)
        .await
        .map_err(|e| Refusal::from_store("API clients", &e))?;
    if revoked {
        Ok(())
    } else {
        Err(Refusal::invalid(
            "client_id",
            "no such client, or already revoked",
        ))
    }
}

/// What a refusal puts in the ledger: the account when known, the reason,
/// and a fixed note (never a value).
struct Denied {
    account: Option<(AccountId, OrganisationId)>,
    reason: DenyReason,
    note: &'static str,
    refusal: Refusal,
}

impl Consultation {
    /// The token endpoint: client credentials with `private_key_jwt` and a
    /// DPoP proof, read top to bottom: the request's form → the client and
    /// its keys → the assertion → the proof → the account → both `jti`s →
    /// the token → the ledger → the answer. Every refusal is ledgered.
    pub async fn issue_token(&self, request: TokenRequest<'_>) -> Result<TokenResponse, Refusal> {
        let now = self.now();
        match self.try_issue_token(request, now).await {
            Ok(answer) => Ok(answer),
            Err(denied) => Err(self.deny_token(denied, now).await),
        }
    }

    async fn try_issue_token(
        &self,
        request: TokenRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, Denied> {
        let Some(clients) = &self.clients else {
            return Err(anonymous(
                DenyReason::InvalidRequest,
                "token endpoint not configured",
                Refusal::oauth(
                    OAuthError::InvalidClient,
                    "this server issues no API tokens",
                ),
            ));
        };

        // 1. The form.
        let (assertion, scope) = token_form(&request)?;

        // 2. The client the assertion claims, and its registered keys.
        let claimed = ClientAssertion::claimed_client_id(assertion).map_err(|e| {
            anonymous(
                DenyReason::BadCredentials,
                assertion_note(e),
                Refusal::oauth(OAuthError::InvalidClient, e.to_string()),
            )
        })?;
        if request.client_id.is_some_and(|id| id != claimed.as_str()) {
            return Err(anonymous(
                DenyReason::BadCredentials,
                "client_id is not the assertion's iss",
                Refusal::oauth(
                    OAuthError::InvalidClient,
                    "client_id: is not the client the assertion names",
                ),
            ));
        }
        let (row, account) = match self.auth.api_client(claimed.as_str()).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(anonymous(
                    DenyReason::BadCredentials,
                    "unknown client",
                    Refusal::oauth(OAuthError::InvalidClient, CLIENT_FAILED),
                ));
            }
            Err(e) => return Err(unavailable(None, "client store", &e)),
        };
        let known = Some((account.account_id, account.organisation_id));
        let denied = |reason, note, refusal| Denied {
            account: known,
            reason,
            note,
            refusal,
        };
        if row.revoked_at.is_some_and(|t| t <= now) {
            return Err(denied(
                DenyReason::BadCredentials,
                "revoked client",
                Refusal::oauth(OAuthError::InvalidClient, CLIENT_FAILED),
            ));
        }
        let keys: Vec<ClientKey> = serde_json::from_str(&row.keys).map_err(|_| Denied {
            account: known,
            reason: DenyReason::InternalError,
            note: "stored client keys unreadable",
            refusal: Refusal::Unavailable("client keys: stored keys do not parse".into()),
        })?;
        let client = RegisteredClient {
            client_id: claimed,
            keys,
        };

        // 3. The assertion, every check but its jti.
        let assertion =
            ClientAssertion::check(assertion, &client, &clients.policy, now).map_err(|e| {
                let refusal = match e {
                    ClientAssertionError::NoKey | ClientAssertionError::Jose(_) => {
                        Refusal::oauth(OAuthError::InvalidClient, CLIENT_FAILED)
                    }
                    e => Refusal::oauth(OAuthError::InvalidClient, e.to_string()),
                };
                denied(DenyReason::BadCredentials, assertion_note(e), refusal)
            })?;

        // 4. The DPoP proof: this endpoint, POST, no token yet (RFC 9449
        //    §5), every check but its jti.
        let proof = request.proof.ok_or_else(|| {
            denied(
                DenyReason::SessionInvalid,
                "dpop: no single proof",
                Refusal::oauth(OAuthError::InvalidDpopProof, DpopError::Missing.to_string()),
            )
        })?;
        let expected = Expected::new("POST", &clients.token_endpoint).map_err(|_| {
            unavailable(
                known,
                "token endpoint url",
                &StorageError::Refused {
                    field: "public_url",
                    reason: "no token endpoint URL can be made of it".into(),
                },
            )
        })?;
        let proof = DpopProof::check(proof, &expected, now).map_err(|e| {
            denied(
                DenyReason::SessionInvalid,
                proof_note(e),
                Refusal::oauth(OAuthError::InvalidDpopProof, e.to_string()),
            )
        })?;

        // 5. The account the client acts for: active only.
        if account.state != AccountState::Active {
            return Err(denied(
                DenyReason::AccountInactive,
                "account not active",
                Refusal::oauth(
                    OAuthError::UnauthorizedClient,
                    "the account this client acts for is not active",
                ),
            ));
        }

        // 6. Both jtis, in the table every instance shares; a refused
        //    request above used up neither.
        let fresh = self
            .auth
            .insert_replay_if_new(
                *assertion.replay_key().as_bytes(),
                replay_until(assertion.replay_expires_at(), now),
                now,
            )
            .await
            .map_err(|e| unavailable(known, "replay table", &e))?;
        let verified = assertion.recorded(Ok(fresh)).map_err(|e| {
            denied(
                DenyReason::BadCredentials,
                assertion_note(e),
                Refusal::oauth(OAuthError::InvalidClient, e.to_string()),
            )
        })?;
        let fresh = self
            .auth
            .insert_replay_if_new(
                *proof.replay_key().as_bytes(),
                replay_until(proof.replay_expires_at(), now),
                now,
            )
            .await
            .map_err(|e| unavailable(known, "replay table", &e))?;
        let proof = proof.recorded(Ok(fresh)).map_err(|e| {
            denied(
                DenyReason::SessionInvalid,
                proof_note(e),
                Refusal::oauth(OAuthError::InvalidDpopProof, e.to_string()),
            )
        })?;

        // 7. The token, bound to the proof's key, stored as a digest.
        let (token, record) = access_token::issue(
            verified.client_id().clone(),
            account.account_id,
            scope,
            *proof.jkt(),
            now,
            clients.settings.token_ttl,
        )
        .map_err(|e| Denied {
            account: known,
            reason: DenyReason::InternalError,
            note: "token generation failed",
            refusal: Refusal::Unavailable(e.to_string()),
        })?;
        let digest = *record.digest.as_bytes();
        self.auth
            .insert_access_token(AccessTokenRow {
                digest,
                client_id: record.client_id.as_str().to_owned(),
                account_id: record.account_id,
                jkt: record.jkt.to_string(),
                scope: record.scope.as_str().to_owned(),
                issued_at: record.issued_at,
                expires_at: record.expires_at,
            })
            .await
            .map_err(|e| unavailable(known, "token store", &e))?;
        // Activity for the inactivity rule (not a session: the high-risk
        // mark of a reset stays for the next human login).
        self.auth
            .record_activity(account.account_id, now)
            .await
            .map_err(|e| unavailable(known, "account activity", &e))?;

        // 8. Ledger, durable before the token leaves.
        let leaf = AuditLeaf {
            time: Timestamp::from_datetime(now),
            account: account.account_id,
            organisation: account.organisation_id,
            session: Some(token_session(&digest)),
            person: None,
            action: LeafAction::TokenIssue,
            field_groups: FieldGroups::EMPTY,
            purpose: None,
            decision: LeafDecision::Allow,
            guard: None,
            note: Some(format!("client {}", record.client_id)),
        };
        self.record(leaf).await.map_err(|e| Denied {
            account: known,
            reason: DenyReason::InternalError,
            note: "ledger",
            refusal: e,
        })?;

        // 9. The answer.
        Ok(TokenResponse::new(&token, &record, now))
    }

    /// Ledgers a token refusal (under account 0 when no client was
    /// found), then hands back the refusal; `Unavailable` if even that
    /// leaf could not be appended.
    async fn deny_token(&self, denied: Denied, now: DateTime<Utc>) -> Refusal {
        let (account, organisation) = denied
            .account
            .unwrap_or((AccountId::UNKNOWN, OrganisationId::UNKNOWN));
        let mut leaf = unauthenticated_leaf(
            account,
            organisation,
            LeafAction::TokenIssue,
            denied.reason,
            now,
        );
        leaf.note = Some(denied.note.to_owned());
        match self.record(leaf).await {
            // A failed ledger append after a failure is the same failure.
            Ok(_) => denied.refusal,
            Err(e) => match denied.refusal {
                cause @ Refusal::Unavailable(_) => cause,
                _ => e,
            },
        }
    }
}

/// The form's fields: `grant_type`, client authentication by assertion,
/// and the scope (default [`SCOPE_API`]).
fn token_form<'a>(request: &TokenRequest<'a>) -> Result<(&'a str, Scope), Denied> {
    let invalid = |note, message: &str| {
        anonymous(
            DenyReason::InvalidRequest,
            note,
            Refusal::oauth(OAuthError::InvalidRequest, message.to_owned()),
        )
    };
    match request.grant_type {
        None => return Err(invalid("no grant_type", "grant_type: is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(anonymous(
                DenyReason::InvalidRequest,
                "unsupported grant_type",
                Refusal::oauth(
                    OAuthError::UnsupportedGrantType,
                    "grant_type: only client_credentials is supported",
                ),
            ));
        }
    }
    let (Some(kind), Some(assertion)) = (request.client_assertion_type, request.client_assertion)
    else {
        return Err(anonymous(
            DenyReason::BadCredentials,
            "no client assertion",
            Refusal::oauth(
                OAuthError::InvalidClient,
                "client_assertion: client authentication is required, with \
                 client_assertion_type and client_assertion (private_key_jwt)",
            ),
        ));
    };
    if kind != ASSERTION_TYPE {
        return Err(anonymous(
            DenyReason::BadCredentials,
            "unsupported client_assertion_type",
            Refusal::oauth(
                OAuthError::InvalidClient,
                format!("client_assertion_type: must be {ASSERTION_TYPE}"),
            ),
        ));
    }
    let scope = match request.scope {
        None => Scope::parse(SCOPE_API),
        Some(s) if s == SCOPE_API => Scope::parse(s),
        Some(_) => {
            return Err(anonymous(
                DenyReason::InvalidRequest,
                "unsupported scope",
                Refusal::oauth(
                    OAuthError::InvalidScope,
                    format!("scope: the only scope is {SCOPE_API}"),
                ),
            ));
        }
    }
    .map_err(|_| {
        anonymous(
            DenyReason::InternalError,
            "scope",
            Refusal::Unavailable("scope: the built-in scope does not parse".into()),
        )
    })?;
    Ok((assertion, scope))
}

fn anonymous(reason: DenyReason, note: &'static str, refusal: Refusal) -> Denied {
    Denied {
        account: None,
        reason,
        note,
        refusal,
    }
}

fn unavailable(
    account: Option<(AccountId, OrganisationId)>,
    stage: &'static str,
    e: &StorageError,
) -> Denied {
    Denied {
        account,
        reason: DenyReason::InternalError,
        note: stage,
        refusal: Refusal::Unavailable(format!("{stage}: {e}")),
    }
}

/// The ledger's note for a refused assertion (fixed texts).
fn assertion_note(e: ClientAssertionError) -> &'static str {
    match e {
        ClientAssertionError::Jose(_) => "client assertion: bad signature or form",
        ClientAssertionError::NoKey => "client assertion: no registered key",
        ClientAssertionError::Replayed => "client assertion: replayed",
        ClientAssertionError::Expired
        | ClientAssertionError::LifetimeTooLong
        | ClientAssertionError::IatInFuture
        | ClientAssertionError::NotYetValid => "client assertion: out of time",
        ClientAssertionError::AudMismatch | ClientAssertionError::AudNotSingle => {
            "client assertion: another audience"
        }
        ClientAssertionError::ReplayStore(_) => "client assertion: replay table unavailable",
        _ => "client assertion: invalid",
    }
}

/// The ledger's note for a refused token-request proof (fixed texts).
fn proof_note(e: DpopError) -> &'static str {
    match e {
        DpopError::Replayed => "dpop: replayed",
        DpopError::HtmMismatch => "dpop: another method",
        DpopError::HtuMismatch | DpopError::HtuInvalid(_) => "dpop: another url",
        DpopError::IatTooOld | DpopError::IatInFuture => "dpop: out of time",
        _ => "dpop: invalid proof",
    }
}

/// Handlers run on a multi-threaded runtime: the operations must be `Send`.
#[allow(dead_code)]
fn operations_are_send(c: &Consultation) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&c.issue_token(TokenRequest::default()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn public_urls_are_scheme_host_and_port_only() {
        let s = ClientSettings::new("https://rempart.example/").unwrap();
        assert_eq!(s.public_url, "https://rempart.example");
        assert_eq!(s.token_ttl, StdDuration::from_secs(300));
        assert!(ClientSettings::new("http://localhost:8080").is_ok());
        for bad in [
            "rempart.example",
            "ftp://rempart.example",
            "https://",
            "https://:443",
            "https://rempart.example/api",
            "https://user@rempart.example",
            "https://rempart.example?x",
        ] {
            assert!(
                matches!(
                    ClientSettings::new(bad),
                    Err(ClientConfigError::PublicUrl(_))
                ),
                "{bad}"
            );
        }
    }

    /// The OAuth code of a token refusal, if it is one.
    fn code(r: &Refusal) -> Option<&'static str> {
        match r {
            Refusal::OAuth { error, .. } => Some(error.as_str()),
            _ => None,
        }
    }

    #[test]
    fn refusals_have_their_oauth_codes() {
        let cases = [
            (OAuthError::InvalidRequest, "invalid_request"),
            (OAuthError::UnsupportedGrantType, "unsupported_grant_type"),
            (OAuthError::InvalidClient, "invalid_client"),
            (OAuthError::UnauthorizedClient, "unauthorized_client"),
            (OAuthError::InvalidScope, "invalid_scope"),
            (OAuthError::InvalidDpopProof, "invalid_dpop_proof"),
        ];
        for (error, text) in cases {
            assert_eq!(code(&Refusal::oauth(error, "x")), Some(text));
        }
        // The description is the refusal's text, as the answer shows it.
        let scope = Refusal::oauth(
            OAuthError::InvalidScope,
            format!("scope: the only scope is {SCOPE_API}"),
        );
        assert_eq!(scope.to_string(), "scope: the only scope is api");
    }

    #[test]
    fn the_form_needs_a_grant_an_assertion_and_at_most_the_api_scope() {
        let good = TokenRequest {
            grant_type: Some("client_credentials"),
            client_assertion_type: Some(ASSERTION_TYPE),
            client_assertion: Some("a.b.c"),
            ..TokenRequest::default()
        };
        let (assertion, scope) = token_form(&good).map_err(|d| d.refusal).unwrap();
        assert_eq!((assertion, scope.as_str()), ("a.b.c", SCOPE_API));
        let refused = |r: TokenRequest<'_>| token_form(&r).err().and_then(|d| code(&d.refusal));
        assert_eq!(
            refused(TokenRequest {
                grant_type: None,
                ..good
            }),
            Some("invalid_request")
        );
        assert_eq!(
            refused(TokenRequest {
                grant_type: Some("password"),
                ..good
            }),
            Some("unsupported_grant_type")
        );
        assert_eq!(
            refused(TokenRequest {
                client_assertion: None,
                ..good
            }),
            Some("invalid_client")
        );
        assert_eq!(
            refused(TokenRequest {
                client_assertion_type: Some("urn:other"),
                ..good
            }),
            Some("invalid_client")
        );
        assert_eq!(
            refused(TokenRequest {
                scope: Some("api admin"),
                ..good
            }),
            Some("invalid_scope")
        );
        assert!(
            refused(TokenRequest {
                scope: Some("api"),
                ..good
            })
            .is_none()
        );
    }
}
