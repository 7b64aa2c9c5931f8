//! Access tokens issued at the token endpoint after client authentication,
//! bound to the DPoP key of the request that obtained them (RFC 9449 §6,
//! `cnf.jkt`).
//!
//! A token is 256 random bits rendered `rmpat_<base64url>`, shown once; the
//! server keeps only a digest of it, with the key thumbprint, client,
//! account, scope and expiry ([`AccessTokenRecord`]). A token is accepted
//! only under the `DPoP` scheme, with a proof by the bound key: a stolen
//! token without the private key opens nothing.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rempart_domain::AccountId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::client_assertion::ClientId;
use crate::jose::{Jkt, b64url, b64url_decode, ct_eq, sha256};

/// The prefix that makes a token recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "rmpat_";
/// Default lifetime: short, as the token is checked with a proof on every
/// request and a client fetches a new one with a fresh assertion.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Longest lifetime [`issue`] accepts.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The `token_type` of the token endpoint's answer (RFC 9449 §5).
pub const TOKEN_TYPE: &str = "DPoP";
/// `rmpat_` + 43 base64url characters (32 bytes).
const TOKEN_LEN: usize = 6 + 43;
const MAX_SCOPE_LEN: usize = 1024;

/// Why a presented token is refused. Never carries the token.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AccessTokenError {
    /// The `Authorization` header's scheme is `Bearer`: a DPoP-bound token
    /// must not be accepted without its proof (RFC 9449 §7.2).
    #[error("authorization: the Bearer scheme is refused, DPoP-bound tokens use the DPoP scheme")]
    BearerScheme,
    /// The `Authorization` header is not `DPoP <token>`.
    #[error("authorization: the header is not of the form `DPoP <token>`")]
    Scheme,
    /// Not `rmpat_` followed by 43 base64url characters.
    #[error("access token: not of the form rmpat_<43 base64url characters>")]
    Malformed,
    /// Does not match the stored record (unknown or revoked token).
    #[error("access token: unknown")]
    Unknown,
    /// Past its expiry.
    #[error("access token: expired")]
    Expired,
    /// Presented with no verified DPoP proof.
    #[error("access token: presented without a DPoP proof")]
    ProofMissing,
    /// The proof's key is not the key the token is bound to.
    #[error("access token: the DPoP proof's key is not the key the token is bound to")]
    JktMismatch,
}

impl AccessTokenError {
    /// The OAuth error code for `WWW-Authenticate: DPoP error="…"`.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            AccessTokenError::Scheme | AccessTokenError::BearerScheme => "invalid_request",
            AccessTokenError::ProofMissing => "invalid_dpop_proof",
            _ => "invalid_token",
        }
    }
}

/// Why [`issue`] fails: a lifetime out of bounds or the random source,
/// the issuer's own failure (never a refusal of the client, which the
/// consultation path decides).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum TokenIssueError {
    /// The lifetime is zero or longer than [`MAX_TTL`].
    #[error("access token: the lifetime must be 1 s to {} s", MAX_TTL.as_secs())]
    Ttl,
    /// The operating system's random source failed.
    #[error("access token: the random source failed")]
    Random,
}

/// The token value, handed to the client once. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// The value to send to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// What the server stores instead of the token: SHA-256 over a domain tag
/// and the token, so the stored value is neither the token nor the `ath`
/// its proofs carry (which is SHA-256 of the token alone).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a presented token, after checking its form; what the
    /// server looks the record up by.
    pub fn of(presented: &str) -> Result<TokenDigest, AccessTokenError> {
        let encoded = presented
            .strip_prefix(TOKEN_PREFIX)
            .filter(|_| presented.len() == TOKEN_LEN)
            .ok_or(AccessTokenError::Malformed)?;
        if b64url_decode(encoded).is_none_or(|b| b.len() != 32) {
            return Err(AccessTokenError::Malformed);
        }
        let mut input = Vec::with_capacity(24 + TOKEN_LEN);
        input.extend_from_slice(b"rempart-access-token-v1\0");
        input.extend_from_slice(presented.as_bytes());
        Ok(TokenDigest(sha256(&input)))
    }

    /// The 32 bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({})", b64url(&self.0))
    }
}

impl From<TokenDigest> for String {
    fn from(d: TokenDigest) -> String {
        b64url(&d.0)
    }
}

impl TryFrom<String> for TokenDigest {
    type Error = AccessTokenError;
    fn try_from(s: String) -> Result<TokenDigest, AccessTokenError> {
        b64url_decode(&s)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(TokenDigest)
            .ok_or(AccessTokenError::Malformed)
    }
}

/// An OAuth scope (RFC 6749 §3.3): space-separated tokens of printable
/// ASCII other than `"` and `\`, single spaces, none repeated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Scope(String);

/// Why a scope is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("a scope is 1 to {MAX_SCOPE_LEN} bytes of distinct space-separated tokens (RFC 6749 §3.3)")]
pub struct ScopeError;

impl Scope {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if s.is_empty() || s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError);
        }
        let tokens: Vec<&str> = s.split(' ').collect();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() || !t.bytes().all(nqchar) || tokens[..i].contains(t) {
                return Err(ScopeError);
            }
        }
        Ok(Scope(s.to_owned()))
    }

    /// Whether `token` is one of the scope's tokens.
    pub fn contains(&self, token: &str) -> bool {
        self.0.split(' ').any(|t| t == token)
    }

    /// The scope string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;
    fn try_from(s: String) -> Result<Scope, ScopeError> {
        Scope::parse(&s)
    }
}

/// What the server persists for an issued token (looked up by `digest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    /// Digest of the token ([`TokenDigest::of`]).
    pub digest: TokenDigest,
    /// Thumbprint of the DPoP key the token is bound to (`cnf.jkt`).
    pub jkt: Jkt,
    /// The client that obtained it.
    pub client_id: ClientId,
    /// The account the client acts for.
    pub account_id: AccountId,
    /// What it may do.
    pub scope: Scope,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Issues a token bound to `jkt` (the thumbprint of the DPoP proof that
/// came with the token request, [`crate::dpop::VerifiedProof::jkt`]),
/// valid for `ttl` from `now`. Returns the value to hand over once and the
/// record to persist.
pub fn issue(
    client_id: ClientId,
    account_id: AccountId,
    scope: Scope,
    jkt: Jkt,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<(AccessToken, AccessTokenRecord), TokenIssueError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TokenIssueError::Ttl);
    }
    let ttl = TimeDelta::from_std(ttl).map_err(|_| TokenIssueError::Ttl)?;
    let expires_at = now.checked_add_signed(ttl).ok_or(TokenIssueError::Ttl)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|_| TokenIssueError::Random)?;
    let token = format!("{TOKEN_PREFIX}{}", b64url(&secret));
    // The value was just built in the expected form.
    let digest = TokenDigest::of(&token).map_err(|_| TokenIssueError::Random)?;
    let record = AccessTokenRecord {
        digest,
        jkt,
        client_id,
        account_id,
        scope,
        issued_at: now,
        expires_at,
    };
    Ok((AccessToken(token), record))
}

/// The token of an `Authorization: DPoP <token>` header value.
pub fn parse_authorization(header: &str) -> Result<&str, AccessTokenError> {
    let (scheme, rest) = header.split_once(' ').ok_or(AccessTokenError::Scheme)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Err(AccessTokenError::BearerScheme);
    }
    if !scheme.eq_ignore_ascii_case("dpop") {
        return Err(AccessTokenError::Scheme);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(AccessTokenError::Scheme);
    }
    Ok(token)
}

/// Checks a presented token against its stored record at `now`, with the
/// thumbprint of the request's verified DPoP proof (`None` when the request
/// had none). The proof itself is verified by
/// [`crate::dpop::DpopProof::verify`] with
/// `Expected::bound_to(record.jkt).with_token(presented)`; this check
/// repeats the binding so neither step alone can let a token through.
pub fn check(
    record: &AccessTokenRecord,
    presented: &str,
    proof_jkt: Option<&Jkt>,
    now: DateTime<Utc>,
) -> Result<(), AccessTokenError> {
    let digest = TokenDigest::of(presented)?;
    if !ct_eq(digest.as_bytes(), record.digest.as_bytes()) {
        return Err(AccessTokenError::Unknown);
    }
    if now >= record.expires_at {
        return Err(AccessTokenError::Expired);
    }
    let proof_jkt = proof_jkt.ok_or(AccessTokenError::ProofMissing)?;
    if !ct_eq(proof_jkt.as_bytes(), record.jkt.as_bytes()) {
        return Err(AccessTokenError::JktMismatch);
    }
    Ok(())
}

/// The token endpoint's JSON answer (RFC 6749 §5.1, RFC 9449 §5).
/// `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// The token.
    pub access_token: String,
    /// Always `DPoP`.
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// The granted scope.
    pub scope: String,
}

impl TokenResponse {
    /// The answer for a token just issued at `now`.
    pub fn new(token: &AccessToken, record: &AccessTokenRecord, now: DateTime<Utc>) -> Self {
        let expires_in = (record.expires_at - now)
            .num_seconds()
            .max(0)
            .unsigned_abs();
        TokenResponse {
            access_token: token.0.clone(),
            token_type: TOKEN_TYPE,
            expires_in,
            scope: record.scope.as_str().to_owned(),
        }
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::{DpopError, DpopProof, Expected, ReplayCache};
    use crate::jose::testkit::TestKey;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_795_000_000;
    const URL: &str = "https://api.rempart.example/api/v1/caseload";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn issued(key: &TestKey) -> (AccessToken, AccessTokenRecord) {
        issue(
            ClientId::parse("partner-ce038").unwrap(),
            AccountId::new(42),
            Scope::parse("persons:read caseload:read").unwrap(),
            key.public().thumbprint(),
            at(NOW),
            DEFAULT_TTL,
        )
        .unwrap()
    }

    /// A proof for GET `URL` with `token`, signed by `key`.
    fn proof(key: &TestKey, token: &str, jti: &str) -> String {
        key.sign(
            &json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.public_jwk()}),
            &json!({"jti": jti, "htm": "GET", "htu": URL, "iat": NOW,
                    "ath": b64url(&sha256(token.as_bytes()))}),
        )
    }

    /// The resource server's whole check: Authorization header, record,
    /// optional DPoP header.
    fn authorize(
        authorization: &str,
        dpop: &[&str],
        record: &AccessTokenRecord,
        cache: &mut ReplayCache,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let token = parse_authorization(authorization).map_err(|e| e.to_string())?;
        let proof_jkt = match DpopProof::single(dpop) {
            Err(DpopError::Missing) => None,
            Err(e) => return Err(e.to_string()),
            Ok(p) => {
                let expected = Expected::new("GET", URL)
                    .unwrap()
                    .bound_to(record.jkt)
                    .with_token(token);
                Some(
                    *DpopProof::verify(p, &expected, now, cache)
                        .map_err(|e| e.to_string())?
                        .jkt(),
                )
            }
        };
        check(record, token, proof_jkt.as_ref(), now).map_err(|e| e.to_string())
    }

    #[test]
    fn issued_token_has_the_documented_form_and_digest() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        let value = token.expose();
        assert!(value.starts_with("rmpat_"));
        assert_eq!(value.len(), TOKEN_LEN);
        assert_eq!(b64url_decode(&value[6..]).unwrap().len(), 32);
        assert_eq!(TokenDigest::of(value), Ok(record.digest));
        assert_eq!(record.expires_at, at(NOW + 300));
        assert_eq!(record.jkt, key.public().thumbprint());
        assert_ne!(issued(&key).0, token);
        assert!(!format!("{token:?}{record:?}").contains(&value[6..]));
    }

    #[test]
    fn token_with_its_proof_is_accepted() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        let auth = format!("DPoP {}", token.expose());
        let p = proof(&key, token.expose(), "j1");
        assert_eq!(
            authorize(&auth, &[&p], &record, &mut ReplayCache::new(8), at(NOW)),
            Ok(())
        );
    }

    #[test]
    fn token_without_proof_is_refused() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        assert_eq!(
            check(&record, token.expose(), None, at(NOW)),
            Err(AccessTokenError::ProofMissing)
        );
        let auth = format!("DPoP {}", token.expose());
        assert_eq!(
            authorize(&auth, &[], &record, &mut ReplayCache::new(8), at(NOW)),
            Err(AccessTokenError::ProofMissing.to_string())
        );
    }

    #[test]
    fn token_as_bearer_is_refused() {
        let key = TestKey::p256();
        let (token, _) = issued(&key);
        assert_eq!(
            parse_authorization(&format!("Bearer {}", token.expose())),
            Err(AccessTokenError::BearerScheme)
        );
        assert_eq!(
            parse_authorization(&format!("dpop  {}", token.expose())),
            Ok(token.expose())
        );
        assert_eq!(parse_authorization("DPoP"), Err(AccessTokenError::Scheme));
        assert_eq!(
            parse_authorization("Basic abc"),
            Err(AccessTokenError::Scheme)
        );
    }

    #[test]
    fn token_replayed_with_another_key_is_refused() {
        let key = TestKey::p256();
        let thief = TestKey::p256();
        let (token, record) = issued(&key);
        // The thief's own proof: the binding check refuses it.
        let auth = format!("DPoP {}", token.expose());
        let p = proof(&thief, token.expose(), "j1");
        assert_eq!(
            authorize(&auth, &[&p], &record, &mut ReplayCache::new(8), at(NOW)),
            Err(DpopError::JktMismatch.to_string())
        );
        assert_eq!(
            check(
                &record,
                token.expose(),
                Some(&thief.public().thumbprint()),
                at(NOW)
            ),
            Err(AccessTokenError::JktMismatch)
        );
    }

    #[test]
    fn proof_replayed_with_the_token_is_refused() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        let auth = format!("DPoP {}", token.expose());
        let p = proof(&key, token.expose(), "j1");
        let mut cache = ReplayCache::new(8);
        assert_eq!(
            authorize(&auth, &[&p], &record, &mut cache, at(NOW)),
            Ok(())
        );
        assert_eq!(
            authorize(&auth, &[&p], &record, &mut cache, at(NOW + 1)),
            Err(DpopError::Replayed.to_string())
        );
    }

    #[test]
    fn expired_token_is_refused() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        let jkt = key.public().thumbprint();
        assert_eq!(
            check(&record, token.expose(), Some(&jkt), at(NOW + 299)),
            Ok(())
        );
        assert_eq!(
            check(&record, token.expose(), Some(&jkt), at(NOW + 300)),
            Err(AccessTokenError::Expired)
        );
    }

    #[test]
    fn another_token_is_unknown_and_garbage_is_malformed() {
        let key = TestKey::p256();
        let (_, record) = issued(&key);
        let (other, _) = issued(&key);
        let jkt = key.public().thumbprint();
        assert_eq!(
            check(&record, other.expose(), Some(&jkt), at(NOW)),
            Err(AccessTokenError::Unknown)
        );
        for bad in [
            "",
            "rmpat_",
            "rmp_abc",
            &format!("rmpat_{}", "A".repeat(44)),
        ] {
            assert_eq!(
                check(&record, bad, Some(&jkt), at(NOW)),
                Err(AccessTokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn ttl_is_bounded() {
        let key = TestKey::p256();
        let mk = |ttl| {
            issue(
                ClientId::parse("c").unwrap(),
                AccountId::new(1),
                Scope::parse("s").unwrap(),
                key.public().thumbprint(),
                at(NOW),
                ttl,
            )
            .map(|_| ())
        };
        assert_eq!(mk(Duration::ZERO), Err(TokenIssueError::Ttl));
        assert_eq!(mk(Duration::from_secs(3601)), Err(TokenIssueError::Ttl));
        assert_eq!(mk(Duration::from_secs(3600)), Ok(()));
    }

    #[test]
    fn scopes_follow_rfc6749() {
        assert!(
            Scope::parse("persons:read")
                .unwrap()
                .contains("persons:read")
        );
        let s = Scope::parse("a b").unwrap();
        assert!(s.contains("b") && !s.contains("c"));
        for bad in ["", " a", "a ", "a  b", "a a", "a\"b", "a\\b", "é"] {
            assert_eq!(Scope::parse(bad), Err(ScopeError), "{bad:?}");
        }
    }

    #[test]
    fn token_response_says_dpop_and_hides_the_token_in_debug() {
        let key = TestKey::p256();
        let (token, record) = issued(&key);
        let response = TokenResponse::new(&token, &record, at(NOW));
        let body: serde_json::Value = serde_json::to_value(&response).unwrap();
        assert_eq!(
            body,
            json!({"access_token": token.expose(), "token_type": "DPoP",
                   "expires_in": 300, "scope": "persons:read caseload:read"})
        );
        assert!(!format!("{response:?}").contains(token.expose()));
    }

    #[test]
    fn record_round_trips_through_json() {
        let (_, record) = issued(&TestKey::ed25519());
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<AccessTokenRecord>(&json).unwrap(),
            record
        );
    }

    proptest! {
        #[test]
        fn presented_values_never_panic(s in "\\PC{0,80}") {
            let _ = parse_authorization(&s);
            let _ = TokenDigest::of(&s);
            let _ = Scope::parse(&s);
        }
    }
}
