//! The small part of JOSE that Rempart's proofs need: compact JWS parsing,
//! public JWKs (EC P-256 and Ed25519), RFC 7638 thumbprints and signature
//! verification.
//!
//! Written by hand rather than taken from a general JWT library so that every
//! rule is explicit and every refusal has a name: only the compact
//! serialisation, only asymmetric algorithms from an allow-list (never
//! `none`, never HMAC), duplicate JSON member names refused, `crit` refused
//! (no extension is understood), public keys only.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Unpadded base64url, the only encoding JOSE uses. Decoding refuses padding
/// and non-canonical trailing bits, so every value has one spelling.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Unpadded base64url encoding.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality of two byte strings in time independent of where they differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A signature algorithm this crate verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA over P-256 with SHA-256 (RFC 7518 §3.4), signature `r || s`.
    Es256,
    /// Ed25519 (RFC 8037 `EdDSA` with an `Ed25519` key, or RFC 9864's
    /// fully specified `Ed25519`).
    Ed25519,
}

impl Alg {
    /// The `alg` name this crate writes for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Ed25519 => "EdDSA",
        }
    }

    /// Classifies a header's `alg` value; symmetric and `none` get their own
    /// refusals so a log says what was attempted.
    fn classify(name: &str) -> Result<Alg, JoseError> {
        match name {
            "ES256" => Ok(Alg::Es256),
            "EdDSA" | "Ed25519" => Ok(Alg::Ed25519),
            n if n.eq_ignore_ascii_case("none") => Err(JoseError::AlgNone),
            "HS256" | "HS384" | "HS512" => Err(JoseError::AlgSymmetric),
            _ => Err(JoseError::AlgUnsupported),
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The algorithms a verifier accepts. ES256 is what browsers' WebCrypto
/// offers everywhere; Ed25519 is accepted from API clients when allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgSet {
    es256: bool,
    ed25519: bool,
}

impl AlgSet {
    /// ES256 only (the browser session's proofs).
    pub const ES256: AlgSet = AlgSet {
        es256: true,
        ed25519: false,
    };
    /// ES256 and Ed25519.
    pub const ALL: AlgSet = AlgSet {
        es256: true,
        ed25519: true,
    };

    /// Whether `alg` is in the set.
    pub fn contains(self, alg: Alg) -> bool {
        match alg {
            Alg::Es256 => self.es256,
            Alg::Ed25519 => self.ed25519,
        }
    }
}

impl Default for AlgSet {
    fn default() -> Self {
        AlgSet::ALL
    }
}

/// Which of the three parts of a compact JWS an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The protected header.
    Header,
    /// The payload (the claims).
    Payload,
    /// The signature.
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        })
    }
}

/// Why a compact JWS is refused before or at its signature. Never carries
/// the token or any of its values.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum JoseError {
    /// Longer than the caller's limit.
    #[error("the JWS is longer than {max} bytes")]
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// Not three dot-separated parts (JWE, JSON serialisation, garbage).
    #[error("a compact JWS has exactly three dot-separated parts")]
    Segments,
    /// A part is not unpadded base64url.
    #[error("the {0} is not unpadded base64url")]
    Base64(Part),
    /// The header or payload is not a JSON object.
    #[error("the {0} is not a JSON object")]
    NotJsonObject(Part),
    /// A JSON object repeats a member name (RFC 7515 §4 allows refusing;
    /// refusing removes any doubt about which value was signed).
    #[error("the {0} repeats a member name")]
    DuplicateMember(Part),
    /// No `alg` header, or not a string.
    #[error("the header has no alg string")]
    AlgMissing,
    /// `alg` is `none`: an unsigned token.
    #[error("the header's alg is none: unsigned tokens are refused")]
    AlgNone,
    /// `alg` is an HMAC: a shared secret proves no possession of a key pair.
    #[error("the header's alg is symmetric (HMAC): only asymmetric algorithms are accepted")]
    AlgSymmetric,
    /// `alg` names an algorithm this crate does not implement.
    #[error("the header's alg is not a supported algorithm")]
    AlgUnsupported,
    /// `alg` is supported but not allowed here.
    #[error("the header's alg is not allowed here")]
    AlgNotAllowed,
    /// `crit` lists extensions; none is understood, so RFC 7515 §4.1.11
    /// requires refusal.
    #[error("the header has crit: no critical extension is understood")]
    Crit,
    /// The key's type does not fit `alg` (an EC key with EdDSA, …).
    #[error("the header's alg does not match the key type")]
    KeyAlgMismatch,
    /// The signature has the wrong length for `alg` or an out-of-range value.
    #[error("the signature is not a well-formed {0} signature")]
    SignatureEncoding(Alg),
    /// The signature does not verify with the key.
    #[error("the signature does not verify with the key")]
    Signature,
}

/// Why a JWK is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum JwkError {
    /// Not a JSON object.
    #[error("the jwk is not a JSON object")]
    NotObject,
    /// A private-key member (`d`, or RSA's `p`, `q`, `dp`, `dq`, `qi`,
    /// `oth`, or a symmetric `k`) is present: a proof must carry only the
    /// public key, and a leaked private key is not one to trust.
    #[error("the jwk holds the private member {0}")]
    PrivateMember(&'static str),
    /// `kty` missing or not a string.
    #[error("the jwk has no kty string")]
    KtyMissing,
    /// `kty` is `oct`: a symmetric key.
    #[error("the jwk is a symmetric key (kty oct)")]
    Symmetric,
    /// `kty` is not EC or OKP.
    #[error("the jwk's kty is not supported (EC or OKP only)")]
    KtyUnsupported,
    /// `crv` missing, or not P-256 for EC / Ed25519 for OKP.
    #[error("the jwk's crv is missing or not supported (P-256 or Ed25519 only)")]
    CrvUnsupported,
    /// A coordinate member is missing or malformed.
    #[error("the jwk's {member} is {problem}")]
    Member {
        /// `x` or `y`.
        member: &'static str,
        /// What is wrong with it.
        problem: MemberProblem,
    },
    /// The coordinates are not a valid point of the curve.
    #[error("the jwk is not a valid public key of its curve")]
    InvalidPoint,
    /// Not JSON at all (only from [`PublicJwk::from_json`]).
    #[error("the jwk is not valid JSON")]
    Json,
}

/// What is wrong with one JWK member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberProblem {
    /// Absent.
    Missing,
    /// Not a JSON string.
    NotString,
    /// Not unpadded base64url.
    NotBase64url,
    /// Decodes to the wrong number of bytes (32 for P-256 and Ed25519).
    WrongLength,
}

impl fmt::Display for MemberProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberProblem::Missing => "missing",
            MemberProblem::NotString => "not a string",
            MemberProblem::NotBase64url => "not unpadded base64url",
            MemberProblem::WrongLength => "not 32 bytes long",
        })
    }
}

/// Why one claim is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("claim {claim} is {problem}")]
pub struct ClaimError {
    /// The claim's name.
    pub claim: &'static str,
    /// What is wrong with it.
    pub problem: ClaimProblem,
}

/// What is wrong with one claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimProblem {
    /// Absent.
    Missing,
    /// Not a JSON string.
    NotString,
    /// Not a JSON number (a NumericDate).
    NotNumber,
    /// An empty string.
    Empty,
    /// Longer than the limit, in bytes.
    TooLong(usize),
    /// A number outside the range of dates this crate handles.
    OutOfRange,
}

impl fmt::Display for ClaimProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimProblem::Missing => f.write_str("missing"),
            ClaimProblem::NotString => f.write_str("not a string"),
            ClaimProblem::NotNumber => f.write_str("not a number"),
            ClaimProblem::Empty => f.write_str("empty"),
            ClaimProblem::TooLong(max) => write!(f, "longer than {max} bytes"),
            ClaimProblem::OutOfRange => f.write_str("out of range"),
        }
    }
}

/// The JWT NumericDates this crate accepts: 1970 to year 9999, so that
/// every value converts to a date and additions cannot overflow.
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A JSON object whose members were read by the strict parser.
pub(crate) type Object = Map<String, Value>;

/// Reads a required string claim, at most `max` bytes and not empty.
pub(crate) fn claim_str<'a>(
    obj: &'a Object,
    claim: &'static str,
    max: usize,
) -> Result<&'a str, ClaimError> {
    let err = |problem| ClaimError { claim, problem };
    match obj.get(claim) {
        None => Err(err(ClaimProblem::Missing)),
        Some(Value::String(s)) if s.is_empty() => Err(err(ClaimProblem::Empty)),
        Some(Value::String(s)) if s.len() > max => Err(err(ClaimProblem::TooLong(max))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(ClaimProblem::NotString)),
    }
}

/// Reads an optional string claim with the same rules as [`claim_str`].
pub(crate) fn claim_str_opt<'a>(
    obj: &'a Object,
    claim: &'static str,
    max: usize,
) -> Result<Option<&'a str>, ClaimError> {
    if obj.contains_key(claim) {
        claim_str(obj, claim, max).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads a required NumericDate claim as whole seconds since the epoch.
/// RFC 7519 allows fractions; they are dropped (floor), which never widens
/// a window by more than under a second.
pub(crate) fn claim_date(obj: &Object, claim: &'static str) -> Result<i64, ClaimError> {
    let err = |problem| ClaimError { claim, problem };
    let value = obj.get(claim).ok_or(err(ClaimProblem::Missing))?;
    let Value::Number(n) = value else {
        return Err(err(ClaimProblem::NotNumber));
    };
    let secs = if let Some(i) = n.as_i64() {
        i
    } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
        if !(0.0..=MAX_NUMERIC_DATE as f64).contains(&f) {
            return Err(err(ClaimProblem::OutOfRange));
        }
        // In range, so the conversion is exact after flooring.
        f.floor() as i64
    } else {
        return Err(err(ClaimProblem::OutOfRange));
    };
    if (0..=MAX_NUMERIC_DATE).contains(&secs) {
        Ok(secs)
    } else {
        Err(err(ClaimProblem::OutOfRange))
    }
}

/// Reads an optional NumericDate claim.
pub(crate) fn claim_date_opt(obj: &Object, claim: &'static str) -> Result<Option<i64>, ClaimError> {
    if obj.contains_key(claim) {
        claim_date(obj, claim).map(Some)
    } else {
        Ok(None)
    }
}

/// A JSON value read by a parser that refuses duplicate member names at
/// every depth (serde_json alone keeps the last one silently).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `bytes` as one JSON object with unique member names.
fn parse_object(bytes: &[u8], part: Part) -> Result<Object, JoseError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(obj))) => Ok(obj),
        Ok(_) => Err(JoseError::NotJsonObject(part)),
        // Every JSON value is accepted by the visitor, so the only data
        // error (as opposed to syntax or end of input) is the duplicate.
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(JoseError::DuplicateMember(part))
        }
        Err(_) => Err(JoseError::NotJsonObject(part)),
    }
}

/// A compact JWS split and decoded, not yet verified.
pub(crate) struct CompactJws<'a> {
    /// `base64url(header) "." base64url(payload)`, what was signed.
    pub signing_input: &'a [u8],
    /// The protected header.
    pub header: Object,
    /// The payload, a JSON object (a JWT claims set).
    pub payload: Object,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Splits and decodes `token`, refusing anything longer than `max_len`
    /// bytes, any other serialisation, and headers or payloads that are not
    /// JSON objects.
    pub fn parse(token: &'a str, max_len: usize) -> Result<Self, JoseError> {
        if token.len() > max_len {
            return Err(JoseError::TooLarge { max: max_len });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Segments);
        };
        let header_bytes = b64url_decode(h).ok_or(JoseError::Base64(Part::Header))?;
        let payload_bytes = b64url_decode(p).ok_or(JoseError::Base64(Part::Payload))?;
        let signature = b64url_decode(s).ok_or(JoseError::Base64(Part::Signature))?;
        let header = parse_object(&header_bytes, Part::Header)?;
        let payload = parse_object(&payload_bytes, Part::Payload)?;
        // The signing input is the token up to the second dot.
        let signing_input = token
            .as_bytes()
            .get(..h.len() + 1 + p.len())
            .ok_or(JoseError::Segments)?;
        Ok(CompactJws {
            signing_input,
            header,
            payload,
            signature,
        })
    }

    /// Reads `alg`, refusing `none`, HMAC, unknown and disallowed algorithms,
    /// and refuses any `crit` header.
    pub fn alg(&self, allowed: AlgSet) -> Result<Alg, JoseError> {
        if self.header.contains_key("crit") {
            return Err(JoseError::Crit);
        }
        let Some(Value::String(name)) = self.header.get("alg") else {
            return Err(JoseError::AlgMissing);
        };
        let alg = Alg::classify(name)?;
        if allowed.contains(alg) {
            Ok(alg)
        } else {
            Err(JoseError::AlgNotAllowed)
        }
    }

    /// Verifies the signature with `key` under `alg`.
    pub fn verify(&self, alg: Alg, key: &PublicJwk) -> Result<(), JoseError> {
        key.verify(alg, self.signing_input, &self.signature)
    }
}

/// An RFC 7638 JWK SHA-256 thumbprint: what a session or an access token is
/// bound to (RFC 9449 `cnf.jkt`). Public, so its `Debug` shows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Jkt([u8; 32]);

/// A thumbprint string is not 43 characters of base64url for 32 bytes.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("a JWK thumbprint is the unpadded base64url of 32 bytes")]
pub struct JktParseError;

impl Jkt {
    /// Parses the base64url form (as stored, or as sent in `dpop_jkt`).
    pub fn parse(s: &str) -> Result<Jkt, JktParseError> {
        b64url_decode(s)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Jkt)
            .ok_or(JktParseError)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64url(&self.0))
    }
}

impl fmt::Debug for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jkt({self})")
    }
}

impl From<Jkt> for String {
    fn from(j: Jkt) -> String {
        j.to_string()
    }
}

impl TryFrom<String> for Jkt {
    type Error = JktParseError;
    fn try_from(s: String) -> Result<Jkt, JktParseError> {
        Jkt::parse(&s)
    }
}

#[derive(Clone, PartialEq, Eq)]
enum KeyKind {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key read from a JWK: EC P-256 or OKP Ed25519, validated on
/// construction (a point of the curve, no private member). Stored as its
/// canonical JSON ([`PublicJwk::to_json`]) when serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicJwk(KeyKind);

/// Members that only a private (or symmetric) JWK has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn coordinate(obj: &Object, member: &'static str) -> Result<[u8; 32], JwkError> {
    let err = |problem| JwkError::Member { member, problem };
    let Some(v) = obj.get(member) else {
        return Err(err(MemberProblem::Missing));
    };
    let Value::String(s) = v else {
        return Err(err(MemberProblem::NotString));
    };
    let bytes = b64url_decode(s).ok_or(err(MemberProblem::NotBase64url))?;
    // RFC 7518 §6.2.1.2: the full coordinate length, no leading zeros cut.
    <[u8; 32]>::try_from(bytes).map_err(|_| err(MemberProblem::WrongLength))
}

impl PublicJwk {
    /// Reads a public JWK from a parsed JSON value (a proof's `jwk` header).
    /// Members other than those checked here (`kid`, `alg`, `use`, …) are
    /// ignored, as RFC 7638 ignores them for the thumbprint.
    pub fn from_value(value: &Value) -> Result<PublicJwk, JwkError> {
        let Value::Object(obj) = value else {
            return Err(JwkError::NotObject);
        };
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(JwkError::PrivateMember(m));
        }
        let Some(Value::String(kty)) = obj.get("kty") else {
            return Err(JwkError::KtyMissing);
        };
        let crv = obj.get("crv").and_then(Value::as_str);
        match (kty.as_str(), crv) {
            ("EC", Some("P-256")) => {
                let x = coordinate(obj, "x")?;
                let y = coordinate(obj, "y")?;
                let mut sec1 = [0u8; 65];
                sec1[0] = 0x04;
                sec1[1..33].copy_from_slice(&x);
                sec1[33..].copy_from_slice(&y);
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map(|k| PublicJwk(KeyKind::P256(k)))
                    .map_err(|_| JwkError::InvalidPoint)
            }
            ("OKP", Some("Ed25519")) => {
                let x = coordinate(obj, "x")?;
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map(|k| PublicJwk(KeyKind::Ed25519(k)))
                    .map_err(|_| JwkError::InvalidPoint)
            }
            ("EC" | "OKP", _) => Err(JwkError::CrvUnsupported),
            ("oct", _) => Err(JwkError::Symmetric),
            _ => Err(JwkError::KtyUnsupported),
        }
    }

    /// Reads a public JWK from its JSON text (a client's registration).
    pub fn from_json(json: &str) -> Result<PublicJwk, JwkError> {
        let value = match serde_json::from_str::<StrictValue>(json) {
            Ok(StrictValue(v)) => v,
            Err(_) => return Err(JwkError::Json),
        };
        PublicJwk::from_value(&value)
    }

    /// The algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.0 {
            KeyKind::P256(_) => Alg::Es256,
            KeyKind::Ed25519(_) => Alg::Ed25519,
        }
    }

    /// The RFC 7638 members in lexicographic order, without whitespace: the
    /// input of the thumbprint, and the form stored. base64url values need
    /// no JSON escaping, so formatting is exact.
    /// The public half of a P-256 key this program holds (benchmarks).
    pub(crate) fn from_p256(key: p256::ecdsa::VerifyingKey) -> Self {
        PublicJwk(KeyKind::P256(key))
    }

    pub fn to_json(&self) -> String {
        match &self.0 {
            KeyKind::P256(k) => {
                let point = k.to_sec1_point(false);
                // An uncompressed point of a valid key always has both
                // coordinates; empty strings would only make the thumbprint
                // differ, never match another key's.
                let x = point.x().map(|x| b64url(x)).unwrap_or_default();
                let y = point.y().map(|y| b64url(y)).unwrap_or_default();
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            KeyKind::Ed25519(k) => {
                let x = b64url(k.as_bytes());
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#)
            }
        }
    }

    /// The RFC 7638 SHA-256 thumbprint.
    pub fn thumbprint(&self) -> Jkt {
        Jkt(sha256(self.to_json().as_bytes()))
    }

    /// Verifies `signature` over `input` under `alg`, which must fit the key.
    pub fn verify(&self, alg: Alg, input: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        match (&self.0, alg) {
            (KeyKind::P256(key), Alg::Es256) => {
                use p256::ecdsa::signature::Verifier as _;
                // JWS uses the fixed 64-byte r || s form, never DER.
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| JoseError::SignatureEncoding(Alg::Es256))?;
                key.verify(input, &sig).map_err(|_| JoseError::Signature)
            }
            (KeyKind::Ed25519(key), Alg::Ed25519) => {
                let bytes = <[u8; 64]>::try_from(signature)
                    .map_err(|_| JoseError::SignatureEncoding(Alg::Ed25519))?;
                let sig = ed25519_dalek::Signature::from_bytes(&bytes);
                // Strict: refuses small-order keys and non-canonical
                // encodings, so one message has one valid signature per key.
                key.verify_strict(input, &sig)
                    .map_err(|_| JoseError::Signature)
            }
            _ => Err(JoseError::KeyAlgMismatch),
        }
    }
}

impl fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicJwk({} {})", self.alg(), self.thumbprint())
    }
}

impl serde::Serialize for PublicJwk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_json())
    }
}

impl<'de> Deserialize<'de> for PublicJwk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = String::deserialize(d)?;
        PublicJwk::from_json(&json).map_err(de::Error::custom)
    }
}

/// Helpers the other modules' tests share: keys made at run time and a
/// signer that builds compact JWS from JSON.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::elliptic_curve::Generate as _;

    /// A signing key of either kind, generated from the OS RNG.
    pub enum TestKey {
        P256(p256::ecdsa::SigningKey),
        Ed25519(ed25519_dalek::SigningKey),
    }

    impl TestKey {
        pub fn p256() -> TestKey {
            TestKey::P256(p256::ecdsa::SigningKey::generate())
        }

        pub fn ed25519() -> TestKey {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).unwrap();
            TestKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
        }

        /// The public JWK as JSON.
        pub fn public_jwk(&self) -> Value {
            serde_json::from_str(&self.public().to_json()).unwrap()
        }

        pub fn public(&self) -> PublicJwk {
            match self {
                TestKey::P256(k) => PublicJwk(KeyKind::P256(*k.verifying_key())),
                TestKey::Ed25519(k) => PublicJwk(KeyKind::Ed25519(k.verifying_key())),
            }
        }

        pub fn alg(&self) -> &'static str {
            match self {
                TestKey::P256(_) => "ES256",
                TestKey::Ed25519(_) => "EdDSA",
            }
        }

        pub fn sign_bytes(&self, input: &[u8]) -> Vec<u8> {
            match self {
                TestKey::P256(k) => {
                    let sig: p256::ecdsa::Signature = k.sign(input);
                    sig.to_bytes().to_vec()
                }
                TestKey::Ed25519(k) => {
                    use ed25519_dalek::Signer as _;
                    k.sign(input).to_bytes().to_vec()
                }
            }
        }

        /// A compact JWS of `header` and `claims`, signed with this key.
        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let sig = self.sign_bytes(input.as_bytes());
            format!("{input}.{}", b64url(&sig))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::TestKey;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // RFC 7515 Appendix A.3: the ES256 example, key and JWS.
    const RFC7515_A3_JWK: &str = r#"{"kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const RFC7515_A3_JWS: &str = concat!(
        "eyJhbGciOiJFUzI1NiJ9",
        ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
        ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    );
    // RFC 8037 Appendix A.2 (public key), A.3 (thumbprint), A.4 (JWS).
    const RFC8037_JWK: &str =
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    const RFC8037_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
    const RFC8037_A4_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    const RFC8037_A4_SIG: &str =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    #[test]
    fn rfc7515_a3_es256_example_verifies() {
        let key = PublicJwk::from_json(RFC7515_A3_JWK).unwrap();
        let jws = CompactJws::parse(RFC7515_A3_JWS, 8192).unwrap();
        assert_eq!(jws.alg(AlgSet::ES256), Ok(Alg::Es256));
        assert_eq!(jws.payload.get("iss"), Some(&json!("joe")));
        assert_eq!(jws.verify(Alg::Es256, &key), Ok(()));
        // One flipped payload bit breaks it.
        let tampered = RFC7515_A3_JWS.replacen(".eyJpc3MiOiJqb2", ".eyJpc3MiOiJqb3", 1);
        let jws = CompactJws::parse(&tampered, 8192).unwrap();
        assert_eq!(jws.verify(Alg::Es256, &key), Err(JoseError::Signature));
    }

    #[test]
    fn rfc8037_ed25519_thumbprint_and_signature() {
        let key = PublicJwk::from_json(RFC8037_JWK).unwrap();
        assert_eq!(key.thumbprint().to_string(), RFC8037_THUMBPRINT);
        let sig = b64url_decode(RFC8037_A4_SIG).unwrap();
        assert_eq!(
            key.verify(Alg::Ed25519, RFC8037_A4_INPUT.as_bytes(), &sig),
            Ok(())
        );
        assert_eq!(
            key.verify(Alg::Ed25519, b"another message", &sig),
            Err(JoseError::Signature)
        );
        assert_eq!(
            key.verify(Alg::Es256, RFC8037_A4_INPUT.as_bytes(), &sig),
            Err(JoseError::KeyAlgMismatch)
        );
    }

    /// An EC P-256 vector from an independent implementation. The key's
    /// private scalar is SHA-256("rempart dpop test vector") mod n; its
    /// public JWK and thumbprint were computed with Python's `jwcrypto` 1.6
    /// (`jwk.JWK.from_pyca(ec.derive_private_key(d, ec.SECP256R1()))`,
    /// `key.thumbprint()`), and cross-checked with `hashlib.sha256` over the
    /// canonical JSON written by hand.
    #[test]
    fn ec_thumbprint_matches_jwcrypto() {
        let key = PublicJwk::from_json(
            r#"{"crv":"P-256","kty":"EC","kid":"ignored","use":"sig",
                "x":"xnNDFc7R9pTvbtOITJWFRq5rSc-pcLVZb3T0zsxccLA",
                "y":"tQWyIEEC72pqsvvIYVUMZdUA9tnZsBSEJ3pCzImvP6s"}"#,
        )
        .unwrap();
        assert_eq!(
            key.thumbprint().to_string(),
            "i-B4dxXJk-1hXXw8crvkK0QOeVi2rfcFhYz6X-bFkdQ"
        );
    }

    #[test]
    fn rfc7515_a3_key_thumbprint_ignores_member_order_and_extras() {
        let a = PublicJwk::from_json(RFC7515_A3_JWK).unwrap();
        let b = PublicJwk::from_json(
            r#"{"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","alg":"ES256",
                "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","crv":"P-256","kty":"EC"}"#,
        )
        .unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint());
        assert_ne!(a.thumbprint(), TestKey::p256().public().thumbprint());
    }

    #[test]
    fn private_and_symmetric_keys_are_refused() {
        let mut with_d: Value = serde_json::from_str(RFC7515_A3_JWK).unwrap();
        with_d["d"] = json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI");
        assert_eq!(
            PublicJwk::from_value(&with_d),
            Err(JwkError::PrivateMember("d"))
        );
        let oct = json!({"kty": "oct", "alg": "HS256"});
        assert_eq!(PublicJwk::from_value(&oct), Err(JwkError::Symmetric));
        let oct_k = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(
            PublicJwk::from_value(&oct_k),
            Err(JwkError::PrivateMember("k"))
        );
        let rsa = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        assert_eq!(PublicJwk::from_value(&rsa), Err(JwkError::KtyUnsupported));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let p384 = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
        assert_eq!(PublicJwk::from_value(&p384), Err(JwkError::CrvUnsupported));
        let short =
            json!({"kty": "EC", "crv": "P-256", "x": b64url(&[1; 31]), "y": b64url(&[1; 32])});
        assert_eq!(
            PublicJwk::from_value(&short),
            Err(JwkError::Member {
                member: "x",
                problem: MemberProblem::WrongLength
            })
        );
        let no_y = json!({"kty": "EC", "crv": "P-256", "x": b64url(&[1; 32])});
        assert_eq!(
            PublicJwk::from_value(&no_y),
            Err(JwkError::Member {
                member: "y",
                problem: MemberProblem::Missing
            })
        );
        // (1, 1) is not on P-256.
        let off_curve = json!({"kty": "EC", "crv": "P-256",
            "x": b64url(&[[0; 31].as_slice(), &[1]].concat()),
            "y": b64url(&[[0; 31].as_slice(), &[1]].concat())});
        assert_eq!(
            PublicJwk::from_value(&off_curve),
            Err(JwkError::InvalidPoint)
        );
        assert_eq!(
            PublicJwk::from_value(&json!("EC")),
            Err(JwkError::NotObject)
        );
        assert_eq!(PublicJwk::from_json("{"), Err(JwkError::Json));
    }

    #[test]
    fn jws_structure_errors_are_named() {
        assert_eq!(
            CompactJws::parse("a.b", 100).err(),
            Some(JoseError::Segments)
        );
        assert_eq!(
            CompactJws::parse("a.b.c.d.e", 100).err(),
            Some(JoseError::Segments)
        );
        assert_eq!(
            CompactJws::parse("e30=.e30.", 100).err(),
            Some(JoseError::Base64(Part::Header))
        );
        assert_eq!(
            CompactJws::parse("e30.WzFd.", 100).err(),
            Some(JoseError::NotJsonObject(Part::Payload))
        );
        let dup = b64url(br#"{"alg":"ES256","alg":"none"}"#);
        assert_eq!(
            CompactJws::parse(&format!("{dup}.e30."), 100).err(),
            Some(JoseError::DuplicateMember(Part::Header))
        );
        let nested_dup = b64url(br#"{"jwk":{"x":"a","x":"b"}}"#);
        assert_eq!(
            CompactJws::parse(&format!("{nested_dup}.e30."), 100).err(),
            Some(JoseError::DuplicateMember(Part::Header))
        );
        assert_eq!(
            CompactJws::parse(&"a".repeat(101), 100).err(),
            Some(JoseError::TooLarge { max: 100 })
        );
    }

    #[test]
    fn alg_rules() {
        let alg_of = |header: Value| {
            let token = format!("{}.e30.", b64url(header.to_string().as_bytes()));
            CompactJws::parse(&token, 1000).unwrap().alg(AlgSet::ES256)
        };
        assert_eq!(alg_of(json!({"alg": "ES256"})), Ok(Alg::Es256));
        assert_eq!(alg_of(json!({"alg": "none"})), Err(JoseError::AlgNone));
        assert_eq!(alg_of(json!({"alg": "NONE"})), Err(JoseError::AlgNone));
        assert_eq!(
            alg_of(json!({"alg": "HS256"})),
            Err(JoseError::AlgSymmetric)
        );
        assert_eq!(
            alg_of(json!({"alg": "RS256"})),
            Err(JoseError::AlgUnsupported)
        );
        assert_eq!(
            alg_of(json!({"alg": "EdDSA"})),
            Err(JoseError::AlgNotAllowed)
        );
        assert_eq!(alg_of(json!({"alg": 7})), Err(JoseError::AlgMissing));
        assert_eq!(alg_of(json!({})), Err(JoseError::AlgMissing));
        assert_eq!(
            alg_of(json!({"alg": "ES256", "crit": ["b64"], "b64": false})),
            Err(JoseError::Crit)
        );
    }

    #[test]
    fn a_der_signature_is_refused_as_malformed() {
        let key = TestKey::p256();
        let input = b"eyJhbGciOiJFUzI1NiJ9.e30";
        let raw = key.sign_bytes(input);
        // A DER SEQUENCE of two INTEGERs is 70-72 bytes, never 64.
        let mut der = vec![0x30, 68, 0x02, 32];
        der.extend_from_slice(&raw[..32]);
        der.extend_from_slice(&[0x02, 32]);
        der.extend_from_slice(&raw[32..]);
        assert_eq!(
            key.public().verify(Alg::Es256, input, &der),
            Err(JoseError::SignatureEncoding(Alg::Es256))
        );
        assert_eq!(key.public().verify(Alg::Es256, input, &raw), Ok(()));
    }

    #[test]
    fn jkt_round_trips_and_refuses_bad_forms() {
        let jkt = TestKey::ed25519().public().thumbprint();
        assert_eq!(Jkt::parse(&jkt.to_string()), Ok(jkt));
        let json = serde_json::to_string(&jkt).unwrap();
        assert_eq!(serde_json::from_str::<Jkt>(&json).unwrap(), jkt);
        assert_eq!(Jkt::parse("abc"), Err(JktParseError));
        assert_eq!(Jkt::parse(&format!("{jkt}=")), Err(JktParseError));
    }

    #[test]
    fn public_jwk_serialises_as_canonical_json() {
        let key = TestKey::p256().public();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicJwk>(&json).unwrap(), key);
    }

    #[test]
    fn numeric_dates() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(claim_date(&obj(json!({"iat": 10})), "iat"), Ok(10));
        assert_eq!(claim_date(&obj(json!({"iat": 10.9})), "iat"), Ok(10));
        let e = |problem| {
            Err(ClaimError {
                claim: "iat",
                problem,
            })
        };
        assert_eq!(
            claim_date(&obj(json!({"iat": "10"})), "iat"),
            e(ClaimProblem::NotNumber)
        );
        assert_eq!(
            claim_date(&obj(json!({"iat": -1})), "iat"),
            e(ClaimProblem::OutOfRange)
        );
        assert_eq!(
            claim_date(&obj(json!({"iat": 1e300})), "iat"),
            e(ClaimProblem::OutOfRange)
        );
        assert_eq!(
            claim_date(&obj(json!({"iat": u64::MAX})), "iat"),
            e(ClaimProblem::OutOfRange)
        );
        assert_eq!(claim_date(&obj(json!({})), "iat"), e(ClaimProblem::Missing));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = CompactJws::parse(&s, 8192);
        }

        #[test]
        fn parse_never_panics_on_base64_parts(
            h in "[A-Za-z0-9_-]{0,80}", p in "[A-Za-z0-9_-]{0,80}", s in "[A-Za-z0-9_-]{0,90}"
        ) {
            if let Ok(jws) = CompactJws::parse(&format!("{h}.{p}.{s}"), 8192) {
                let _ = jws.alg(AlgSet::ALL);
            }
        }

        #[test]
        fn jwk_parse_never_panics(s in "\\PC{0,200}") {
            let _ = PublicJwk::from_json(&s);
        }
    }
}
