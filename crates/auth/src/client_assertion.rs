//! Client authentication at the token endpoint with `private_key_jwt`
//! (RFC 7523 §2.2 and §3, OpenID Connect Core §9): the partner's software
//! registered a public key, and proves it holds the private one by signing a
//! short-lived JWT naming itself (`iss` = `sub` = its client id) and this
//! server (`aud`), used once (`jti`).
//!
//! `aud` must be exactly this server's issuer identifier or its token
//! endpoint URL, as a single value: an array of several audiences is
//! refused, which closes the 2025 "audience injection" attack on
//! `private_key_jwt` where an assertion made for one server is accepted by
//! another listed beside it.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::dpop::{MAX_JTI_LEN, ReplayKey, ReplayStore, ReplayStoreError};
use crate::jose::{
    AlgSet, ClaimError, ClaimProblem, CompactJws, Jkt, JoseError, PublicJwk, claim_date,
    claim_date_opt, claim_str,
};

/// The `client_assertion_type` form value that goes with a JWT assertion
/// (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion accepted, in bytes.
pub const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// Longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;
const MAX_AUD_LEN: usize = 2048;
const MAX_KID_LEN: usize = 128;

/// An OAuth client identifier: 1 to 128 visible ASCII characters
/// (RFC 6749 appendix A.1 `VSCHAR`, less the space).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ClientId(String);

/// Why a client id is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("a client id is 1 to {MAX_CLIENT_ID_LEN} visible ASCII characters")]
pub struct ClientIdError;

impl ClientId {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<ClientId, ClientIdError> {
        if s.is_empty() || s.len() > MAX_CLIENT_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientIdError);
        }
        Ok(ClientId(s.to_owned()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ClientId> for String {
    fn from(c: ClientId) -> String {
        c.0
    }
}

impl TryFrom<String> for ClientId {
    type Error = ClientIdError;
    fn try_from(s: String) -> Result<ClientId, ClientIdError> {
        ClientId::parse(&s)
    }
}

/// One public key a client registered, with its optional `kid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientKey {
    /// The key id the client puts in its assertions' header, if any.
    pub kid: Option<String>,
    /// The public key (ES256 or Ed25519).
    pub jwk: PublicJwk,
}

/// What the server stores about a client using `private_key_jwt`: its id
/// and its public keys (more than one only while rotating).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClient {
    /// The client id.
    pub client_id: ClientId,
    /// Its public keys.
    pub keys: Vec<ClientKey>,
}

/// Why the limits of an [`AssertionPolicy`] are refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("an assertion lifetime is 1 s to 1 h and the clock skew at most 60 s")]
pub struct PolicyError;

/// The server's side of the checks: who it is, and how long assertions may
/// live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionPolicy {
    issuer: String,
    token_endpoint: String,
    max_lifetime: i64,
    skew: i64,
    algs: AlgSet,
}

impl AssertionPolicy {
    /// Accepts `aud` = `issuer` or `token_endpoint`; assertions expire at
    /// most 5 minutes ahead, with 5 seconds of clock skew either way.
    pub fn new(issuer: &str, token_endpoint: &str) -> AssertionPolicy {
        AssertionPolicy {
            issuer: issuer.to_owned(),
            token_endpoint: token_endpoint.to_owned(),
            max_lifetime: 300,
            skew: 5,
            algs: AlgSet::ALL,
        }
    }

    /// Replaces the longest accepted lifetime (`exp` − now) and the clock
    /// skew tolerated on `exp`, `iat` and `nbf`.
    pub fn with_limits(
        mut self,
        max_lifetime: Duration,
        skew: Duration,
    ) -> Result<AssertionPolicy, PolicyError> {
        if max_lifetime < Duration::from_secs(1)
            || max_lifetime > Duration::from_secs(3600)
            || skew > Duration::from_secs(60)
        {
            return Err(PolicyError);
        }
        let secs = |d: Duration| i64::try_from(d.as_secs()).map_err(|_| PolicyError);
        self.max_lifetime = secs(max_lifetime)?;
        self.skew = secs(skew)?;
        Ok(self)
    }

    /// Replaces the allowed algorithms.
    pub fn with_algs(mut self, algs: AlgSet) -> AssertionPolicy {
        self.algs = algs;
        self
    }
}

/// Why a client assertion is refused. Names the field and the rule, never
/// the assertion or a claim value.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ClientAssertionError {
    /// The JWS itself is refused: size, structure, alg, signature.
    #[error("client assertion: {0}")]
    Jose(#[from] JoseError),
    /// `typ` is present and not `JWT` or `client-authentication+jwt` (a
    /// DPoP proof or an access token is not a client assertion).
    #[error("client assertion: the header's typ is not JWT or client-authentication+jwt")]
    TypWrong,
    /// `kid` is present and not a string.
    #[error("client assertion: the header's kid is not a short string")]
    KidMalformed,
    /// The client registered no key for this `kid` and `alg`.
    #[error("client assertion: the client has no registered key for this kid and alg")]
    NoKey,
    /// A claim is missing or of the wrong type.
    #[error("client assertion: {0}")]
    Claim(#[from] ClaimError),
    /// `iss` is not the client id.
    #[error("client assertion: claim iss is not the client id")]
    IssMismatch,
    /// `sub` is not the client id.
    #[error("client assertion: claim sub is not the client id")]
    SubMismatch,
    /// `aud` is neither the issuer nor the token endpoint.
    #[error("client assertion: claim aud is neither this server's issuer nor its token endpoint")]
    AudMismatch,
    /// `aud` is an array of more or fewer than one audience.
    #[error("client assertion: claim aud must name exactly one audience")]
    AudNotSingle,
    /// `exp` has passed.
    #[error("client assertion: claim exp has passed")]
    Expired,
    /// `exp` is further ahead than the policy allows.
    #[error("client assertion: claim exp is too far in the future")]
    LifetimeTooLong,
    /// `iat` is in the future.
    #[error("client assertion: claim iat is in the future")]
    IatInFuture,
    /// `nbf` is in the future.
    #[error("client assertion: claim nbf is in the future")]
    NotYetValid,
    /// The `jti` was already used by this client.
    #[error("client assertion: claim jti was already used (replay)")]
    Replayed,
    /// The replay store could not record the `jti`; refused, fail closed.
    #[error("client assertion: {0}")]
    ReplayStore(#[from] ReplayStoreError),
}

impl ClientAssertionError {
    /// Whether the refusal is the server's fault (answer 503, not
    /// `invalid_client`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientAssertionError::ReplayStore(_))
    }
}

/// A client that proved possession of one of its registered keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedClient {
    client_id: ClientId,
    key: Jkt,
}

impl VerifiedClient {
    /// The authenticated client.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The thumbprint of the registered key that signed (for the audit).
    pub fn key(&self) -> &Jkt {
        &self.key
    }
}

/// An assertion that passed every check but the replay check; see
/// [`crate::dpop::UnrecordedProof`] for when to use it.
#[must_use = "an assertion is not verified until its jti is recorded"]
#[derive(Debug)]
pub struct UnrecordedAssertion {
    client: VerifiedClient,
    key: ReplayKey,
    expires_at: DateTime<Utc>,
}

impl UnrecordedAssertion {
    /// The key to record in the replay store.
    pub fn replay_key(&self) -> ReplayKey {
        self.key
    }

    /// Until when the key must be remembered.
    pub fn replay_expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Completes verification with the replay store's answer.
    pub fn recorded(
        self,
        outcome: Result<bool, ReplayStoreError>,
    ) -> Result<VerifiedClient, ClientAssertionError> {
        match outcome {
            Ok(true) => Ok(self.client),
            Ok(false) => Err(ClientAssertionError::Replayed),
            Err(e) => Err(ClientAssertionError::ReplayStore(e)),
        }
    }
}

/// The `private_key_jwt` verifier.
pub enum ClientAssertion {}

impl ClientAssertion {
    /// The client id an assertion claims (`iss`), read without verifying
    /// anything else, to look up the registration when the request has no
    /// `client_id` parameter. Trust nothing until [`Self::verify`] passes.
    pub fn claimed_client_id(assertion: &str) -> Result<ClientId, ClientAssertionError> {
        let jws = CompactJws::parse(assertion, MAX_ASSERTION_LEN)?;
        let iss = claim_str(&jws.payload, "iss", MAX_CLIENT_ID_LEN)?;
        ClientId::parse(iss).map_err(|_| ClientAssertionError::IssMismatch)
    }

    /// Verifies `assertion` for `client` under `policy` at `now`, and
    /// records its `jti` in `replay`.
    pub fn verify<R: ReplayStore + ?Sized>(
        assertion: &str,
        client: &RegisteredClient,
        policy: &AssertionPolicy,
        now: DateTime<Utc>,
        replay: &mut R,
    ) -> Result<VerifiedClient, ClientAssertionError> {
        let unrecorded = Self::check(assertion, client, policy, now)?;
        let outcome = replay.insert_if_new(unrecorded.key, unrecorded.expires_at, now);
        unrecorded.recorded(outcome)
    }

    /// Every check of [`Self::verify`] except the replay check.
    pub fn check(
        assertion: &str,
        client: &RegisteredClient,
        policy: &AssertionPolicy,
        now: DateTime<Utc>,
    ) -> Result<UnrecordedAssertion, ClientAssertionError> {
        let jws = CompactJws::parse(assertion, MAX_ASSERTION_LEN)?;
        if let Some(typ) = jws.header.get("typ")
            && !typ.as_str().is_some_and(is_assertion_typ)
        {
            return Err(ClientAssertionError::TypWrong);
        }
        let alg = jws.alg(policy.algs)?;
        let kid = match jws.header.get("kid") {
            None => None,
            Some(Value::String(k)) if k.len() <= MAX_KID_LEN => Some(k.as_str()),
            Some(_) => return Err(ClientAssertionError::KidMalformed),
        };
        // The registered keys for this alg (and kid, when named); the
        // header's own jwk, jku or x5u, if any, are never used.
        let mut candidates = client
            .keys
            .iter()
            .filter(|k| k.jwk.alg() == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(ClientAssertionError::NoKey);
        }
        let key = candidates
            .find(|k| jws.verify(alg, &k.jwk).is_ok())
            .ok_or(ClientAssertionError::Jose(JoseError::Signature))?;

        let claims = &jws.payload;
        let client_id = client.client_id.as_str();
        if claim_str(claims, "iss", MAX_CLIENT_ID_LEN)? != client_id {
            return Err(ClientAssertionError::IssMismatch);
        }
        if claim_str(claims, "sub", MAX_CLIENT_ID_LEN)? != client_id {
            return Err(ClientAssertionError::SubMismatch);
        }
        let aud = single_audience(claims.get("aud"))?;
        if aud != policy.issuer && aud != policy.token_endpoint {
            return Err(ClientAssertionError::AudMismatch);
        }
        let jti = claim_str(claims, "jti", MAX_JTI_LEN)?;
        let exp = claim_date(claims, "exp")?;
        let now_s = now.timestamp();
        if exp.saturating_add(policy.skew) <= now_s {
            return Err(ClientAssertionError::Expired);
        }
        if exp > now_s.saturating_add(policy.max_lifetime + policy.skew) {
            return Err(ClientAssertionError::LifetimeTooLong);
        }
        if claim_date_opt(claims, "iat")?.is_some_and(|iat| iat > now_s.saturating_add(policy.skew))
        {
            return Err(ClientAssertionError::IatInFuture);
        }
        if claim_date_opt(claims, "nbf")?.is_some_and(|nbf| nbf > now_s.saturating_add(policy.skew))
        {
            return Err(ClientAssertionError::NotYetValid);
        }

        // Refused as expired from exp + skew on: remembered until then.
        let expires_at =
            DateTime::from_timestamp(exp.saturating_add(policy.skew), 0).ok_or(ClaimError {
                claim: "exp",
                problem: ClaimProblem::OutOfRange,
            })?;
        Ok(UnrecordedAssertion {
            key: ReplayKey::client_assertion(client_id, jti),
            expires_at,
            client: VerifiedClient {
                client_id: client.client_id.clone(),
                key: key.jwk.thumbprint(),
            },
        })
    }
}

/// `JWT` or `client-authentication+jwt` (the media type the successor of
/// RFC 7523 registers), compared as media types.
fn is_assertion_typ(typ: &str) -> bool {
    let bare = match (typ.get(..12), typ.get(12..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("application/") => rest,
        _ => typ,
    };
    bare.eq_ignore_ascii_case("jwt") || bare.eq_ignore_ascii_case("client-authentication+jwt")
}

/// `aud` as one string: a string, or an array holding exactly one.
fn single_audience(aud: Option<&Value>) -> Result<&str, ClientAssertionError> {
    let err = |problem| {
        ClientAssertionError::Claim(ClaimError {
            claim: "aud",
            problem,
        })
    };
    let value = match aud {
        None => return Err(err(ClaimProblem::Missing)),
        Some(Value::Array(items)) => match items.as_slice() {
            [one] => one,
            _ => return Err(ClientAssertionError::AudNotSingle),
        },
        Some(v) => v,
    };
    match value {
        Value::String(s) if s.len() > MAX_AUD_LEN => Err(err(ClaimProblem::TooLong(MAX_AUD_LEN))),
        Value::String(s) => Ok(s),
        _ => Err(err(ClaimProblem::NotString)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::ReplayCache;
    use crate::jose::testkit::TestKey;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_795_000_000;
    const ISSUER: &str = "https://auth.rempart.example";
    const TOKEN_ENDPOINT: &str = "https://auth.rempart.example/oauth2/token";
    const CLIENT: &str = "partner-ce038";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn policy() -> AssertionPolicy {
        AssertionPolicy::new(ISSUER, TOKEN_ENDPOINT)
    }

    fn registered(key: &TestKey, kid: Option<&str>) -> RegisteredClient {
        RegisteredClient {
            client_id: ClientId::parse(CLIENT).unwrap(),
            keys: vec![ClientKey {
                kid: kid.map(str::to_owned),
                jwk: key.public(),
            }],
        }
    }

    fn claims() -> Value {
        let mut jti = [0u8; 12];
        getrandom::fill(&mut jti).unwrap();
        json!({
            "iss": CLIENT, "sub": CLIENT, "aud": TOKEN_ENDPOINT,
            "jti": crate::jose::b64url(&jti), "iat": NOW, "exp": NOW + 60,
        })
    }

    fn assertion_with(key: &TestKey, edit: impl FnOnce(&mut Value)) -> String {
        let mut c = claims();
        edit(&mut c);
        key.sign(&json!({"alg": key.alg()}), &c)
    }

    fn verify(
        assertion: &str,
        client: &RegisteredClient,
    ) -> Result<VerifiedClient, ClientAssertionError> {
        ClientAssertion::verify(
            assertion,
            client,
            &policy(),
            at(NOW),
            &mut ReplayCache::new(16),
        )
    }

    #[test]
    fn valid_assertion_is_accepted_for_both_audiences() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        for aud in [json!(TOKEN_ENDPOINT), json!(ISSUER), json!([ISSUER])] {
            let a = assertion_with(&key, |c| c["aud"] = aud.clone());
            let verified = verify(&a, &client).unwrap();
            assert_eq!(verified.client_id().as_str(), CLIENT);
            assert_eq!(*verified.key(), key.public().thumbprint());
        }
        let ed = TestKey::ed25519();
        assert!(verify(&assertion_with(&ed, |_| {}), &registered(&ed, None)).is_ok());
    }

    #[test]
    fn other_audiences_are_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let a = assertion_with(&key, |c| c["aud"] = json!("https://other.example/token"));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::AudMismatch));
        let a = assertion_with(&key, |c| {
            c["aud"] = json!([ISSUER, "https://other.example"])
        });
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::AudNotSingle));
        let a = assertion_with(&key, |c| c["aud"] = json!(format!("{ISSUER}/")));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::AudMismatch));
    }

    #[test]
    fn iss_and_sub_must_be_the_client() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let a = assertion_with(&key, |c| c["iss"] = json!("partner-other"));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::IssMismatch));
        let a = assertion_with(&key, |c| c["sub"] = json!("ce038-ag-0042"));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::SubMismatch));
    }

    #[test]
    fn expired_assertion_is_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let a = assertion_with(&key, |c| c["exp"] = json!(NOW - 5));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::Expired));
        // Within the 5 s skew.
        let a = assertion_with(&key, |c| c["exp"] = json!(NOW - 4));
        assert!(verify(&a, &client).is_ok());
    }

    #[test]
    fn long_lived_assertion_is_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let a = assertion_with(&key, |c| c["exp"] = json!(NOW + 306));
        assert_eq!(
            verify(&a, &client),
            Err(ClientAssertionError::LifetimeTooLong)
        );
        let a = assertion_with(&key, |c| c["exp"] = json!(NOW + 305));
        assert!(verify(&a, &client).is_ok());
    }

    #[test]
    fn iat_and_nbf_in_the_future_are_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let a = assertion_with(&key, |c| c["iat"] = json!(NOW + 6));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::IatInFuture));
        let a = assertion_with(&key, |c| c["nbf"] = json!(NOW + 6));
        assert_eq!(verify(&a, &client), Err(ClientAssertionError::NotYetValid));
        // iat is optional (RFC 7523 §3).
        let a = assertion_with(&key, |c| {
            c.as_object_mut().unwrap().remove("iat");
        });
        assert!(verify(&a, &client).is_ok());
    }

    #[test]
    fn reused_jti_is_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let mut cache = ReplayCache::new(16);
        let a = assertion_with(&key, |_| {});
        assert!(ClientAssertion::verify(&a, &client, &policy(), at(NOW), &mut cache).is_ok());
        assert_eq!(
            ClientAssertion::verify(&a, &client, &policy(), at(NOW + 30), &mut cache),
            Err(ClientAssertionError::Replayed)
        );
    }

    #[test]
    fn signature_by_an_unregistered_key_is_refused() {
        let key = TestKey::p256();
        let thief = TestKey::p256();
        let a = assertion_with(&thief, |_| {});
        assert_eq!(
            verify(&a, &registered(&key, None)),
            Err(ClientAssertionError::Jose(JoseError::Signature))
        );
        // An Ed25519 assertion for a client that registered only P-256.
        let ed = TestKey::ed25519();
        let a = assertion_with(&ed, |_| {});
        assert_eq!(
            verify(&a, &registered(&key, None)),
            Err(ClientAssertionError::NoKey)
        );
    }

    #[test]
    fn a_jwk_in_the_header_is_never_trusted() {
        let key = TestKey::p256();
        let thief = TestKey::p256();
        let a = thief.sign(
            &json!({"alg": "ES256", "jwk": thief.public_jwk()}),
            &claims(),
        );
        assert_eq!(
            verify(&a, &registered(&key, None)),
            Err(ClientAssertionError::Jose(JoseError::Signature))
        );
    }

    #[test]
    fn kid_selects_the_registered_key() {
        let (old, new) = (TestKey::p256(), TestKey::p256());
        let client = RegisteredClient {
            client_id: ClientId::parse(CLIENT).unwrap(),
            keys: vec![
                ClientKey {
                    kid: Some("2025".into()),
                    jwk: old.public(),
                },
                ClientKey {
                    kid: Some("2026".into()),
                    jwk: new.public(),
                },
            ],
        };
        let signed =
            |k: &TestKey, kid: &str| k.sign(&json!({"alg": "ES256", "kid": kid}), &claims());
        assert!(verify(&signed(&new, "2026"), &client).is_ok());
        assert!(verify(&signed(&old, "2025"), &client).is_ok());
        assert_eq!(
            verify(&signed(&old, "2026"), &client),
            Err(ClientAssertionError::Jose(JoseError::Signature))
        );
        assert_eq!(
            verify(&signed(&new, "2027"), &client),
            Err(ClientAssertionError::NoKey)
        );
    }

    #[test]
    fn alg_none_hs256_and_wrong_typ_are_refused() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        let forge = |header: Value| {
            format!(
                "{}.{}.",
                crate::jose::b64url(header.to_string().as_bytes()),
                crate::jose::b64url(claims().to_string().as_bytes())
            )
        };
        assert_eq!(
            verify(&forge(json!({"alg": "none"})), &client),
            Err(ClientAssertionError::Jose(JoseError::AlgNone))
        );
        assert_eq!(
            verify(&forge(json!({"alg": "HS256"})), &client),
            Err(ClientAssertionError::Jose(JoseError::AlgSymmetric))
        );
        let dpop_typed = key.sign(&json!({"alg": "ES256", "typ": "dpop+jwt"}), &claims());
        assert_eq!(
            verify(&dpop_typed, &client),
            Err(ClientAssertionError::TypWrong)
        );
        let typed = key.sign(
            &json!({"alg": "ES256", "typ": "client-authentication+jwt"}),
            &claims(),
        );
        assert!(verify(&typed, &client).is_ok());
    }

    #[test]
    fn claims_are_required() {
        let key = TestKey::p256();
        let client = registered(&key, None);
        for claim in ["iss", "sub", "aud", "jti", "exp"] {
            let a = assertion_with(&key, |c| {
                c.as_object_mut().unwrap().remove(claim);
            });
            assert_eq!(
                verify(&a, &client),
                Err(ClientAssertionError::Claim(ClaimError {
                    claim,
                    problem: ClaimProblem::Missing
                })),
                "{claim}"
            );
        }
        let a = assertion_with(&key, |c| c["exp"] = json!("soon"));
        assert_eq!(
            verify(&a, &client),
            Err(ClientAssertionError::Claim(ClaimError {
                claim: "exp",
                problem: ClaimProblem::NotNumber
            }))
        );
    }

    #[test]
    fn claimed_client_id_reads_iss() {
        let key = TestKey::p256();
        let a = assertion_with(&key, |_| {});
        assert_eq!(
            ClientAssertion::claimed_client_id(&a).map(|c| c.to_string()),
            Ok(CLIENT.to_owned())
        );
        assert!(ClientAssertion::claimed_client_id("x.y.z").is_err());
    }

    #[test]
    fn client_ids_are_validated() {
        assert!(ClientId::parse("partner-ce038").is_ok());
        assert_eq!(ClientId::parse(""), Err(ClientIdError));
        assert_eq!(ClientId::parse("a b"), Err(ClientIdError));
        assert_eq!(ClientId::parse(&"c".repeat(129)), Err(ClientIdError));
    }

    #[test]
    fn registration_round_trips_through_json() {
        let client = registered(&TestKey::p256(), Some("k1"));
        let json = serde_json::to_string(&client).unwrap();
        assert_eq!(
            serde_json::from_str::<RegisteredClient>(&json).unwrap(),
            client
        );
    }

    #[test]
    fn policy_limits_are_bounded() {
        assert!(
            policy()
                .with_limits(Duration::from_secs(60), Duration::ZERO)
                .is_ok()
        );
        assert_eq!(
            policy().with_limits(Duration::ZERO, Duration::ZERO),
            Err(PolicyError)
        );
        assert_eq!(
            policy().with_limits(Duration::from_secs(60), Duration::from_secs(61)),
            Err(PolicyError)
        );
    }

    /// Produced by Python's `jwcrypto` 1.6 with the P-256 key of
    /// `jose::tests::ec_thumbprint_matches_jwcrypto` (scalar
    /// SHA-256("rempart dpop test vector") mod n): header
    /// `{"alg": "ES256", "kid": "ce038-2026"}`, claims iss = sub =
    /// partner-ce038, aud = the token endpoint, jti ca-7f3e2b,
    /// iat 1795000000, exp 1795000120.
    const JWCRYPTO_ASSERTION: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImNlMDM4LTIwMjYifQ.eyJpc3MiOiAicGFydG5lci1jZTAzOCIsICJzdWIiOiAicGFydG5lci1jZTAzOCIsICJhdWQiOiAiaHR0cHM6Ly9hdXRoLnJlbXBhcnQuZXhhbXBsZS9vYXV0aDIvdG9rZW4iLCAianRpIjogImNhLTdmM2UyYiIsICJpYXQiOiAxNzk1MDAwMDAwLCAiZXhwIjogMTc5NTAwMDEyMH0.FqxFxwovOJxQk1ozdG_uPoWY4z6Ayle2m8oi_pcY01kvoZE91dLYqtSK2OnSaefhWPYi-8InZLiOalDkkG4nqA";

    #[test]
    fn jwcrypto_assertion_verifies() {
        let jwk = PublicJwk::from_json(
            r#"{"crv":"P-256","kty":"EC",
                "x":"xnNDFc7R9pTvbtOITJWFRq5rSc-pcLVZb3T0zsxccLA",
                "y":"tQWyIEEC72pqsvvIYVUMZdUA9tnZsBSEJ3pCzImvP6s"}"#,
        )
        .unwrap();
        let client = RegisteredClient {
            client_id: ClientId::parse(CLIENT).unwrap(),
            keys: vec![ClientKey {
                kid: Some("ce038-2026".into()),
                jwk,
            }],
        };
        let mut cache = ReplayCache::new(4);
        assert!(
            ClientAssertion::verify(JWCRYPTO_ASSERTION, &client, &policy(), at(NOW), &mut cache)
                .is_ok()
        );
        assert_eq!(
            ClientAssertion::verify(JWCRYPTO_ASSERTION, &client, &policy(), at(NOW), &mut cache),
            Err(ClientAssertionError::Replayed)
        );
    }

    proptest! {
        #[test]
        fn random_assertions_never_panic_and_never_pass(s in "\\PC{0,300}") {
            let key = TestKey::p256();
            prop_assert!(verify(&s, &registered(&key, None)).is_err());
            let _ = ClientAssertion::claimed_client_id(&s);
        }
    }
}
