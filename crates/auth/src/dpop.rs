//! DPoP proofs (RFC 9449), and the same proof format for browser sessions.
//!
//! One verifier serves two uses:
//! - API clients send an RFC 9449 proof in the `DPoP` header with every
//!   request made with a DPoP-bound access token (and to the token endpoint,
//!   where the proof's key becomes the token's binding);
//! - the browser holds a non-extractable WebCrypto ECDSA P-256 key created
//!   at login, and its script signs the same kind of proof on every request,
//!   with `ath` = base64url(SHA-256(session id)); the session stores the
//!   key's thumbprint.
//!
//! [`DpopProof::verify`] checks what RFC 9449 §4.3 lists, in that order: one
//! proof, a well-formed JWS, `typ` `dpop+jwt`, an allowed asymmetric `alg`,
//! a public `jwk` that verifies the signature, the claims and their types,
//! the server nonce if one is required, `htm`, `htu` (normalised, query and
//! fragment ignored), `iat` within the window, `ath` when a token or session
//! is presented, the key thumbprint when one is bound, and last the `jti`
//! replay check, so that a refused proof does not use up its `jti`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::{self, Write as _};
use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::jose::{
    Alg, AlgSet, ClaimError, ClaimProblem, CompactJws, Jkt, JoseError, JwkError, PublicJwk, b64url,
    claim_date, claim_str, claim_str_opt, ct_eq, sha256,
};

/// Longest proof accepted, in bytes. A P-256 proof with a long URL is under
/// 1 KiB; the limit bounds the work an attacker can ask for.
pub const MAX_PROOF_LEN: usize = 8 * 1024;
/// Longest `jti` accepted, in bytes. RFC 9449 asks for at least 96 bits of
/// randomness; a UUID is 36 characters, 256 random bits in base64url 43.
pub const MAX_JTI_LEN: usize = 128;
/// Longest `htu` accepted, in bytes (claim and expected value alike).
pub const MAX_HTU_LEN: usize = 2048;
const MAX_HTM_LEN: usize = 32;
const MAX_NONCE_LEN: usize = 256;
/// `ath` is 43 characters; anything much longer is not worth hashing.
const MAX_ATH_LEN: usize = 64;

/// Why a DPoP proof is refused. Each variant names the field and the rule;
/// none carries the proof, the token or any claim value.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DpopError {
    /// The request carries no `DPoP` header.
    #[error("DPoP: the request carries no proof")]
    Missing,
    /// The request carries more than one `DPoP` header (RFC 9449 §4.3 (1)).
    #[error("DPoP: the request carries more than one proof")]
    Multiple,
    /// The JWS itself is refused: size, structure, alg, signature.
    #[error("DPoP proof: {0}")]
    Jose(#[from] JoseError),
    /// No `typ` header.
    #[error("DPoP proof: the header has no typ")]
    TypMissing,
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof: the header's typ is not dpop+jwt")]
    TypWrong,
    /// No `jwk` header.
    #[error("DPoP proof: the header has no jwk")]
    JwkMissing,
    /// The `jwk` header is refused.
    #[error("DPoP proof: {0}")]
    Jwk(#[from] JwkError),
    /// A claim is missing or of the wrong type.
    #[error("DPoP proof: {0}")]
    Claim(#[from] ClaimError),
    /// `htm` is not the request's method.
    #[error("DPoP proof: claim htm does not match the request method")]
    HtmMismatch,
    /// `htu` is not an http(s) URI this verifier can normalise.
    #[error("DPoP proof: claim htu is not a valid URI: {0}")]
    HtuInvalid(HtuError),
    /// `htu` is not the request's URI.
    #[error("DPoP proof: claim htu does not match the request URI")]
    HtuMismatch,
    /// `iat` is older than the window allows.
    #[error("DPoP proof: claim iat is too old")]
    IatTooOld,
    /// `iat` is further in the future than the window allows.
    #[error("DPoP proof: claim iat is too far in the future")]
    IatInFuture,
    /// A token (or session) is presented but the proof has no `ath`.
    #[error("DPoP proof: claim ath is missing, and a token is presented")]
    AthMissing,
    /// `ath` is not the hash of the presented token (or session).
    #[error("DPoP proof: claim ath does not match the presented token")]
    AthMismatch,
    /// The server requires a nonce and the proof has none.
    #[error("DPoP proof: claim nonce is missing, and the server requires one")]
    NonceMissing,
    /// The proof's nonce is not one the server issued.
    #[error("DPoP proof: claim nonce is not the server's current nonce")]
    NonceMismatch,
    /// The proof's key is not the key the token (or session) is bound to.
    #[error("DPoP proof: the jwk's thumbprint does not match the key the token is bound to")]
    JktMismatch,
    /// The `jti` was already seen within the window.
    #[error("DPoP proof: claim jti was already used (replay)")]
    Replayed,
    /// The replay store could not record the `jti`; refused, fail closed.
    #[error("DPoP proof: {0}")]
    ReplayStore(#[from] ReplayStoreError),
}

impl DpopError {
    /// The OAuth error code for the `WWW-Authenticate: DPoP` answer
    /// (RFC 9449 §7.1, §8, §12): `use_dpop_nonce` when a nonce must be
    /// fetched, `invalid_token` when the proof is sound but its key is not
    /// the token's, `invalid_dpop_proof` otherwise.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            DpopError::NonceMissing | DpopError::NonceMismatch => "use_dpop_nonce",
            DpopError::JktMismatch => "invalid_token",
            _ => "invalid_dpop_proof",
        }
    }

    /// Whether the refusal is the server's fault (replay store full or
    /// unreachable): answer 503, not 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DpopError::ReplayStore(_))
    }
}

/// Why an `htu` (or the server's own request URI) is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HtuError {
    /// Longer than [`MAX_HTU_LEN`].
    #[error("longer than {MAX_HTU_LEN} bytes")]
    TooLong,
    /// Not `http://` or `https://`.
    #[error("the scheme is not http or https")]
    Scheme,
    /// Has user information (`user@host`).
    #[error("the authority has user information")]
    Userinfo,
    /// Empty host, or characters a host name or IP literal cannot have.
    #[error("the host is empty or malformed")]
    Host,
    /// The port is not a number up to 65535.
    #[error("the port is malformed")]
    Port,
    /// A character the path of a URI cannot have.
    #[error("the path has a character a URI cannot have")]
    Character,
    /// `%` not followed by two hexadecimal digits.
    #[error("the path has a malformed percent-encoding")]
    PercentEncoding,
}

/// An `http`/`https` URI normalised for comparison as RFC 9449 §4.3 asks
/// (RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation):
/// scheme and host in lower case, default port dropped, empty path as `/`,
/// percent-encodings in upper case and decoded where they stand for an
/// unreserved character, dot segments removed, query and fragment dropped.
/// Internationalised host names must arrive in their ASCII (punycode) form.
#[derive(Clone, PartialEq, Eq)]
pub struct Htu(String);

impl Htu {
    /// Parses and normalises `uri`.
    pub fn parse(uri: &str) -> Result<Htu, HtuError> {
        if uri.len() > MAX_HTU_LEN {
            return Err(HtuError::TooLong);
        }
        let (scheme, rest) = uri.split_once("://").ok_or(HtuError::Scheme)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(HtuError::Scheme),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(HtuError::Userinfo);
        }
        let (host, port) = split_host_port(authority)?;
        let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
        let path = normalise_path(&tail[..path_end])?;

        let mut out = String::with_capacity(scheme.len() + 3 + host.len() + 6 + path.len());
        out.push_str(&scheme);
        out.push_str("://");
        out.push_str(&host);
        if let Some(port) = port.filter(|p| *p != default_port) {
            // Writing to a String cannot fail.
            let _ = write!(out, ":{port}");
        }
        out.push_str(&path);
        Ok(Htu(out))
    }

    /// The normalised form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Htu({})", self.0)
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), HtuError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(HtuError::Host)?;
        let ip_chars = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        if literal.is_empty() || !literal.bytes().all(ip_chars) {
            return Err(HtuError::Host);
        }
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':').ok_or(HtuError::Host)?),
        };
        (format!("[{}]", literal.to_ascii_lowercase()), port)
    } else {
        let (h, p) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host_chars = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if h.is_empty() || !h.bytes().all(host_chars) {
            return Err(HtuError::Host);
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| HtuError::Port)?)
        }
        Some(_) => return Err(HtuError::Port),
    };
    Ok((host, port))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// RFC 3986 `pchar` less `pct-encoded`, plus `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}

fn hex_value(b: u8) -> Result<u8, HtuError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(HtuError::PercentEncoding),
    }
}

fn normalise_path(path: &str) -> Result<String, HtuError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 1);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return Err(HtuError::PercentEncoding);
            };
            let v = hex_value(hi)? << 4 | hex_value(lo)?;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 0xf)]));
            }
            i += 3;
        } else if is_path_char(b) {
            out.push(char::from(b));
            i += 1;
        } else {
            return Err(HtuError::Character);
        }
    }
    if out.is_empty() {
        return Ok("/".to_owned());
    }
    Ok(remove_dot_segments(&out))
}

/// RFC 3986 §5.2.4 for an absolute path (it starts with `/`: the authority
/// ends at the first `/`).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.get(1..).unwrap_or_default().split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // A trailing "." or ".." leaves a directory: "/a/b/.." is "/a/".
        if i == last && (segment == "." || segment == "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Why an [`IatWindow`] is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("an iat window side is at most {} seconds", IatWindow::MAX.as_secs())]
pub struct IatWindowError;

/// How far a proof's `iat` may lie before and after the server's clock.
/// The past side also sets how long a `jti` is remembered: a proof older
/// than that is refused for its age, so its `jti` need not be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IatWindow {
    past: i64,
    future: i64,
}

impl IatWindow {
    /// The largest side accepted: longer windows only widen replay chances
    /// and the replay cache.
    pub const MAX: Duration = Duration::from_secs(600);

    /// A window of `past` before and `future` after the server's clock.
    pub fn new(past: Duration, future: Duration) -> Result<IatWindow, IatWindowError> {
        if past > Self::MAX || future > Self::MAX {
            return Err(IatWindowError);
        }
        // Both are at most 600 s, so the conversions are exact.
        let secs = |d: Duration| i64::try_from(d.as_secs()).map_err(|_| IatWindowError);
        Ok(IatWindow {
            past: secs(past)?,
            future: secs(future)?,
        })
    }

    /// Seconds a proof may be old.
    pub fn past(&self) -> Duration {
        Duration::from_secs(self.past.unsigned_abs())
    }

    /// Seconds a proof may be ahead of the server's clock.
    pub fn future(&self) -> Duration {
        Duration::from_secs(self.future.unsigned_abs())
    }
}

impl Default for IatWindow {
    /// 60 s in the past (network and queueing delays), 5 s in the future
    /// (clock skew of a client slightly ahead).
    fn default() -> Self {
        IatWindow {
            past: 60,
            future: 5,
        }
    }
}

/// Why an [`Expected`] cannot be built from the server's own request data.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ExpectedError {
    /// The method is not an HTTP token.
    #[error("the request method is not an HTTP method token")]
    Htm,
    /// The request URI cannot be normalised.
    #[error("the request URI: {0}")]
    Htu(HtuError),
}

/// What the request a proof comes with must satisfy: the server's side of
/// every comparison. Holds the SHA-256 of the token (or session id), never
/// the token itself.
#[derive(Clone)]
pub struct Expected {
    htm: String,
    htu: Htu,
    jkt: Option<Jkt>,
    ath: Option<String>,
    nonces: Vec<String>,
    window: IatWindow,
    algs: AlgSet,
}

impl Expected {
    /// A request with method `htm` (e.g. `GET`) at `htu` (the absolute URI
    /// the server was reached at, as the client knows it: behind a proxy,
    /// the public scheme, host and path). No binding, no token, no nonce,
    /// the default window, ES256 and Ed25519.
    pub fn new(htm: &str, htu: &str) -> Result<Expected, ExpectedError> {
        // RFC 9110 §5.6.2 tchar.
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if htm.is_empty() || htm.len() > MAX_HTM_LEN || !htm.bytes().all(tchar) {
            return Err(ExpectedError::Htm);
        }
        Ok(Expected {
            htm: htm.to_owned(),
            htu: Htu::parse(htu).map_err(ExpectedError::Htu)?,
            jkt: None,
            ath: None,
            nonces: Vec::new(),
            window: IatWindow::default(),
            algs: AlgSet::default(),
        })
    }

    /// Requires the proof's key to have this thumbprint (the token's
    /// `cnf.jkt`, or the session's key).
    pub fn bound_to(mut self, jkt: Jkt) -> Expected {
        self.jkt = Some(jkt);
        self
    }

    /// Requires `ath` = base64url(SHA-256(`token`)): the access token sent
    /// with the request, or the browser session's id.
    pub fn with_token(mut self, token: &str) -> Expected {
        self.ath = Some(b64url(&sha256(token.as_bytes())));
        self
    }

    /// Requires the proof's `nonce` to be this one; call again to accept
    /// several (the current nonce and the one before a rotation).
    pub fn with_nonce(mut self, nonce: &str) -> Expected {
        self.nonces.push(nonce.to_owned());
        self
    }

    /// Replaces the default `iat` window.
    pub fn with_window(mut self, window: IatWindow) -> Expected {
        self.window = window;
        self
    }

    /// Replaces the allowed algorithms (e.g. [`AlgSet::ES256`] for browser
    /// sessions).
    pub fn with_algs(mut self, algs: AlgSet) -> Expected {
        self.algs = algs;
        self
    }
}

impl fmt::Debug for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expected")
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field("jkt", &self.jkt)
            .field("token", &self.ath.as_ref().map(|_| "<redacted>"))
            .field("nonces", &self.nonces.len())
            .field("window", &self.window)
            .field("algs", &self.algs)
            .finish()
    }
}

/// A proof that passed every check, its `jti` recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    jkt: Jkt,
    alg: Alg,
    iat: DateTime<Utc>,
    jti: String,
}

impl VerifiedProof {
    /// The proof key's thumbprint: what the token endpoint binds a new
    /// token to, or what login stores in the session.
    pub fn jkt(&self) -> &Jkt {
        &self.jkt
    }

    /// The algorithm the proof was signed with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// When the client says it made the proof.
    pub fn iat(&self) -> DateTime<Utc> {
        self.iat
    }

    /// The proof's unique identifier.
    pub fn jti(&self) -> &str {
        &self.jti
    }
}

/// A proof that passed every check but the replay check. For replay stores
/// that cannot be called synchronously (a shared database): record
/// [`Self::replay_key`] until [`Self::replay_expires_at`], then hand the
/// outcome to [`Self::recorded`].
#[must_use = "a proof is not verified until its jti is recorded"]
#[derive(Debug)]
pub struct UnrecordedProof {
    proof: VerifiedProof,
    key: ReplayKey,
    expires_at: DateTime<Utc>,
}

impl UnrecordedProof {
    /// The key to record in the replay store.
    pub fn replay_key(&self) -> ReplayKey {
        self.key
    }

    /// Until when the key must be remembered.
    pub fn replay_expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Completes verification with the replay store's answer to
    /// [`ReplayStore::insert_if_new`].
    pub fn recorded(
        self,
        outcome: Result<bool, ReplayStoreError>,
    ) -> Result<VerifiedProof, DpopError> {
        match outcome {
            Ok(true) => Ok(self.proof),
            Ok(false) => Err(DpopError::Replayed),
            Err(e) => Err(DpopError::ReplayStore(e)),
        }
    }
}

/// The DPoP verifier; see the module documentation.
pub enum DpopProof {}

impl DpopProof {
    /// The one proof of a request, from all its `DPoP` header values
    /// (RFC 9449 §4.3 (1): exactly one).
    pub fn single<'a>(header_values: &[&'a str]) -> Result<&'a str, DpopError> {
        match header_values {
            [] => Err(DpopError::Missing),
            [one] => Ok(one),
            _ => Err(DpopError::Multiple),
        }
    }

    /// Verifies `proof` for a request described by `expected`, at `now`,
    /// and records its `jti` in `replay`.
    pub fn verify<R: ReplayStore + ?Sized>(
        proof: &str,
        expected: &Expected,
        now: DateTime<Utc>,
        replay: &mut R,
    ) -> Result<VerifiedProof, DpopError> {
        let unrecorded = Self::check(proof, expected, now)?;
        let outcome = replay.insert_if_new(unrecorded.key, unrecorded.expires_at, now);
        unrecorded.recorded(outcome)
    }

    /// Every check of [`Self::verify`] except the replay check.
    pub fn check(
        proof: &str,
        expected: &Expected,
        now: DateTime<Utc>,
    ) -> Result<UnrecordedProof, DpopError> {
        let jws = CompactJws::parse(proof, MAX_PROOF_LEN)?;

        match jws.header.get("typ").and_then(|v| v.as_str()) {
            None => return Err(DpopError::TypMissing),
            Some(typ) if !is_dpop_typ(typ) => return Err(DpopError::TypWrong),
            Some(_) => {}
        }
        let alg = jws.alg(expected.algs)?;
        let jwk = jws.header.get("jwk").ok_or(DpopError::JwkMissing)?;
        let key = PublicJwk::from_value(jwk)?;
        jws.verify(alg, &key)?;

        // Only now are the claims the key holder's words.
        let claims = &jws.payload;
        let jti = claim_str(claims, "jti", MAX_JTI_LEN)?;
        let htm = claim_str(claims, "htm", MAX_HTM_LEN)?;
        let htu = claim_str(claims, "htu", MAX_HTU_LEN)?;
        let iat = claim_date(claims, "iat")?;

        if !expected.nonces.is_empty() {
            let nonce =
                claim_str_opt(claims, "nonce", MAX_NONCE_LEN)?.ok_or(DpopError::NonceMissing)?;
            if !expected.nonces.iter().any(|n| n == nonce) {
                return Err(DpopError::NonceMismatch);
            }
        }
        if htm != expected.htm {
            return Err(DpopError::HtmMismatch);
        }
        if Htu::parse(htu).map_err(DpopError::HtuInvalid)? != expected.htu {
            return Err(DpopError::HtuMismatch);
        }
        let now_s = now.timestamp();
        if iat < now_s.saturating_sub(expected.window.past) {
            return Err(DpopError::IatTooOld);
        }
        if iat > now_s.saturating_add(expected.window.future) {
            return Err(DpopError::IatInFuture);
        }
        if let Some(want) = &expected.ath {
            let ath = claim_str_opt(claims, "ath", MAX_ATH_LEN)?.ok_or(DpopError::AthMissing)?;
            if !ct_eq(ath.as_bytes(), want.as_bytes()) {
                return Err(DpopError::AthMismatch);
            }
        }
        let jkt = key.thumbprint();
        if expected.jkt.is_some_and(|bound| bound != jkt) {
            return Err(DpopError::JktMismatch);
        }

        let out_of_range = ClaimError {
            claim: "iat",
            problem: ClaimProblem::OutOfRange,
        };
        let iat_at = DateTime::from_timestamp(iat, 0).ok_or(out_of_range)?;
        // After iat + past the proof is refused for its age: no need to
        // remember its jti longer.
        let expires_at = DateTime::from_timestamp(iat.saturating_add(expected.window.past), 0)
            .ok_or(out_of_range)?;
        Ok(UnrecordedProof {
            key: ReplayKey::dpop(&jkt, jti),
            expires_at,
            proof: VerifiedProof {
                jkt,
                alg,
                iat: iat_at,
                jti: jti.to_owned(),
            },
        })
    }
}

/// `dpop+jwt`, compared as a media type: case-insensitive, and with the
/// `application/` prefix RFC 7515 §4.1.9 says may be omitted.
fn is_dpop_typ(typ: &str) -> bool {
    let bare = match (typ.get(..12), typ.get(12..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("application/") => rest,
        _ => typ,
    };
    bare.eq_ignore_ascii_case("dpop+jwt")
}

/// What a replay store remembers: SHA-256 over a domain tag, the proof
/// key's thumbprint (or the client id) and the `jti`. Fixed-size whatever
/// the `jti`, so memory per entry is bounded and a database column is
/// 32 bytes.
///
/// Keyed on (key, `jti`) rather than `jti` alone: a replay is the same
/// proof sent again, so it carries the same key; keying on `jti` alone
/// would let any client, with any key, burn other clients' `jti` values
/// (harmless with random `jti`s, a denial of service with predictable
/// ones), and tells nothing more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// The key of a DPoP proof.
    pub fn dpop(jkt: &Jkt, jti: &str) -> ReplayKey {
        let mut input = Vec::with_capacity(24 + 32 + jti.len());
        input.extend_from_slice(b"rempart-replay-v1\0dpop\0");
        // The thumbprint has a fixed length, so the jti needs no framing.
        input.extend_from_slice(jkt.as_bytes());
        input.extend_from_slice(jti.as_bytes());
        ReplayKey(sha256(&input))
    }

    /// The key of a client assertion (RFC 7523): per client, so two
    /// clients' `jti`s never collide.
    pub fn client_assertion(client_id: &str, jti: &str) -> ReplayKey {
        let mut input = Vec::with_capacity(40 + client_id.len() + jti.len());
        input.extend_from_slice(b"rempart-replay-v1\0client-assertion\0");
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        let len = u64::try_from(client_id.len()).unwrap_or(u64::MAX);
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(client_id.as_bytes());
        input.extend_from_slice(jti.as_bytes());
        ReplayKey(sha256(&input))
    }

    /// The 32 bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayKey({})", b64url(&self.0))
    }
}

/// A replay store could not record a key; the proof is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ReplayStoreError {
    /// The store holds its capacity of live entries.
    #[error("the replay cache is full ({capacity} live entries); refusing new proofs")]
    Full {
        /// The capacity.
        capacity: usize,
    },
    /// The store cannot be reached (a shared store's database is down).
    #[error("the replay store is unavailable")]
    Unavailable,
}

/// Where `jti`s are remembered. [`ReplayCache`] is the in-process one; a
/// store shared between server instances implements the same contract over
/// the database (insert if absent or expired, in one statement).
pub trait ReplayStore {
    /// Remembers `key` until `expires_at`. `Ok(true)`: it was not live, the
    /// proof is fresh. `Ok(false)`: it is live, the proof is a replay.
    /// `Err`: it could not be recorded, and the caller refuses the proof.
    fn insert_if_new(
        &mut self,
        key: ReplayKey,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, ReplayStoreError>;
}

/// An in-memory replay cache with a fixed capacity of live entries.
///
/// Memory: each live entry is a 32-byte key and an 8-byte expiry twice, in
/// a hash map and in an expiry heap: 81 bytes, 90 to 175 with the slack
/// both keep to grow, so the default [`ReplayCache::DEFAULT_CAPACITY`] of
/// 200,000 entries takes 18 to 35 MB when full. Entries live for the `iat`
/// window's past side (60 s by default, up to 65 s counting the future
/// side), so the default sustains about 3,000 proofs per second; size it as
/// peak proofs per second × (past + future) seconds.
///
/// When full, new proofs are refused ([`ReplayStoreError::Full`]) rather
/// than live entries evicted: evicting would let an attacker who floods
/// the cache replay a captured proof. Expired entries are purged on every
/// insertion, oldest first.
///
/// Per instance: behind several server instances, either route a client's
/// requests to one instance (sticky binding) or share a store through the
/// database ([`ReplayStore`]).
pub struct ReplayCache {
    capacity: usize,
    live: HashMap<ReplayKey, i64>,
    by_expiry: BinaryHeap<Reverse<(i64, ReplayKey)>>,
}

impl ReplayCache {
    /// The default capacity; see the type's documentation.
    pub const DEFAULT_CAPACITY: usize = 200_000;

    /// An empty cache holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            capacity,
            live: HashMap::new(),
            by_expiry: BinaryHeap::new(),
        }
    }

    /// Live entries (as of the last insertion).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// See [`ReplayStore::insert_if_new`]. An entry is live while
    /// `now <= expires_at`.
    pub fn insert_if_new(
        &mut self,
        key: ReplayKey,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, ReplayStoreError> {
        let now_s = now.timestamp();
        while let Some(Reverse((expiry, k))) = self.by_expiry.peek().copied() {
            if expiry >= now_s {
                break;
            }
            self.by_expiry.pop();
            // A key is only re-inserted after its entry was purged, so
            // the map holds this very entry.
            self.live.remove(&k);
        }
        if self.live.contains_key(&key) {
            return Ok(false);
        }
        if self.live.len() >= self.capacity {
            return Err(ReplayStoreError::Full {
                capacity: self.capacity,
            });
        }
        let expiry = expires_at.timestamp();
        self.live.insert(key, expiry);
        self.by_expiry.push(Reverse((expiry, key)));
        Ok(true)
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity)
            .field("live", &self.live.len())
            .finish()
    }
}

impl ReplayStore for ReplayCache {
    fn insert_if_new(
        &mut self,
        key: ReplayKey,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, ReplayStoreError> {
        ReplayCache::insert_if_new(self, key, expires_at, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::testkit::TestKey;
    use crate::jose::{MemberProblem, b64url_decode};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const NOW: i64 = 1_795_000_000;
    const HTU: &str = "https://api.rempart.example/api/v1/persons/1234";
    const TOKEN: &str = "rmpat_kaB8MJeD0UUGTm0R16hJmtrTXC2AOJjYRVfzQd1X0Ew";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn fresh_jti() -> String {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).unwrap();
        b64url(&b)
    }

    fn header(key: &TestKey) -> Value {
        json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.public_jwk()})
    }

    fn claims() -> Value {
        json!({
            "jti": fresh_jti(),
            "htm": "GET",
            "htu": HTU,
            "iat": NOW,
            "ath": b64url(&sha256(TOKEN.as_bytes())),
        })
    }

    /// What a resource server expects for a token bound to `key`.
    fn expected(key: &TestKey) -> Expected {
        Expected::new("GET", HTU)
            .unwrap()
            .bound_to(key.public().thumbprint())
            .with_token(TOKEN)
    }

    fn verify(proof: &str, expected: &Expected) -> Result<VerifiedProof, DpopError> {
        DpopProof::verify(proof, expected, at(NOW), &mut ReplayCache::new(16))
    }

    /// A proof signed by `key` with `edit` applied to the claims.
    fn proof_with(key: &TestKey, edit: impl FnOnce(&mut Value)) -> String {
        let mut c = claims();
        edit(&mut c);
        key.sign(&header(key), &c)
    }

    #[test]
    fn valid_es256_proof_is_accepted() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |_| {});
        let verified = verify(&proof, &expected(&key)).unwrap();
        assert_eq!(*verified.jkt(), key.public().thumbprint());
        assert_eq!(verified.alg(), Alg::Es256);
        assert_eq!(verified.iat(), at(NOW));
    }

    #[test]
    fn valid_ed25519_proof_is_accepted_unless_es256_only() {
        let key = TestKey::ed25519();
        let proof = proof_with(&key, |_| {});
        assert_eq!(verify(&proof, &expected(&key)).unwrap().alg(), Alg::Ed25519);
        let browser = expected(&key).with_algs(AlgSet::ES256);
        assert_eq!(
            verify(&proof, &browser),
            Err(DpopError::Jose(JoseError::AlgNotAllowed))
        );
    }

    #[test]
    fn token_without_proof_is_refused() {
        assert_eq!(DpopProof::single(&[]), Err(DpopError::Missing));
        assert_eq!(DpopProof::single(&["a.b.c"]), Ok("a.b.c"));
    }

    #[test]
    fn two_proofs_in_one_request_are_refused() {
        assert_eq!(
            DpopProof::single(&["a.b.c", "d.e.f"]),
            Err(DpopError::Multiple)
        );
    }

    #[test]
    fn reused_jti_is_refused() {
        let key = TestKey::p256();
        let mut cache = ReplayCache::new(16);
        let proof = proof_with(&key, |_| {});
        let exp = expected(&key);
        assert!(DpopProof::verify(&proof, &exp, at(NOW), &mut cache).is_ok());
        assert_eq!(
            DpopProof::verify(&proof, &exp, at(NOW + 1), &mut cache),
            Err(DpopError::Replayed)
        );
        // A new proof with the same jti (another request) is refused too.
        let jti = proof_claims(&proof)["jti"].clone();
        let again = proof_with(&key, |c| {
            c["jti"] = jti;
            c["iat"] = json!(NOW + 1);
        });
        assert_ne!(again, proof);
        assert_eq!(
            DpopProof::verify(&again, &exp, at(NOW + 2), &mut cache),
            Err(DpopError::Replayed)
        );
    }

    #[test]
    fn same_jti_under_another_key_is_not_a_replay() {
        let (a, b) = (TestKey::p256(), TestKey::p256());
        let mut cache = ReplayCache::new(16);
        let a_proof = proof_with(&a, |c| c["jti"] = json!("shared"));
        let b_proof = proof_with(&b, |c| c["jti"] = json!("shared"));
        assert!(DpopProof::verify(&a_proof, &expected(&a), at(NOW), &mut cache).is_ok());
        assert!(DpopProof::verify(&b_proof, &expected(&b), at(NOW), &mut cache).is_ok());
    }

    #[test]
    fn a_refused_proof_does_not_use_up_its_jti() {
        let key = TestKey::p256();
        let mut cache = ReplayCache::new(16);
        let proof = proof_with(&key, |_| {});
        let wrong = Expected::new("POST", HTU)
            .unwrap()
            .bound_to(key.public().thumbprint())
            .with_token(TOKEN);
        assert_eq!(
            DpopProof::verify(&proof, &wrong, at(NOW), &mut cache),
            Err(DpopError::HtmMismatch)
        );
        assert!(cache.is_empty());
        assert!(DpopProof::verify(&proof, &expected(&key), at(NOW), &mut cache).is_ok());
    }

    #[test]
    fn wrong_htm_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| c["htm"] = json!("POST"));
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::HtmMismatch));
        // Methods are case-sensitive (RFC 9110 §9.1).
        let proof = proof_with(&key, |c| c["htm"] = json!("get"));
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::HtmMismatch));
    }

    #[test]
    fn wrong_htu_is_refused() {
        let key = TestKey::p256();
        for other in [
            "https://api.rempart.example/api/v1/persons/1235",
            "http://api.rempart.example/api/v1/persons/1234",
            "https://api.rempart.example:8443/api/v1/persons/1234",
            "https://evil.example/api/v1/persons/1234",
            "https://api.rempart.example/api/v1/persons/1234/",
        ] {
            let proof = proof_with(&key, |c| c["htu"] = json!(other));
            assert_eq!(
                verify(&proof, &expected(&key)),
                Err(DpopError::HtuMismatch),
                "{other}"
            );
        }
        let proof = proof_with(&key, |c| c["htu"] = json!("/api/v1/persons/1234"));
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::HtuInvalid(HtuError::Scheme))
        );
    }

    #[test]
    fn htu_differing_in_query_fragment_or_spelling_is_accepted() {
        let key = TestKey::p256();
        for same in [
            "https://api.rempart.example/api/v1/persons/1234?purpose=follow_up",
            "https://api.rempart.example/api/v1/persons/1234#top",
            "HTTPS://API.Rempart.Example:443/api/v1/persons/1234",
            "https://api.rempart.example/api/v1/./persons/x/../1234",
            "https://api.rempart.example/api/v1/persons/%31%32%33%34",
        ] {
            let proof = proof_with(&key, |c| c["htu"] = json!(same));
            assert!(verify(&proof, &expected(&key)).is_ok(), "{same}");
        }
    }

    #[test]
    fn htu_normalisation_rules() {
        let n = |s: &str| Htu::parse(s).map(|h| h.as_str().to_owned());
        assert_eq!(n("HTTP://Example.COM"), Ok("http://example.com/".into()));
        assert_eq!(
            n("http://example.com:80/a"),
            Ok("http://example.com/a".into())
        );
        assert_eq!(
            n("https://example.com:/a"),
            Ok("https://example.com/a".into())
        );
        assert_eq!(
            n("https://example.com:80/a"),
            Ok("https://example.com:80/a".into())
        );
        assert_eq!(n("https://h/a/b/c/./../../g"), Ok("https://h/a/g".into()));
        assert_eq!(n("https://h/a/b/.."), Ok("https://h/a/".into()));
        assert_eq!(n("https://h/.."), Ok("https://h/".into()));
        assert_eq!(n("https://h/%7euser/%2f"), Ok("https://h/~user/%2F".into()));
        assert_eq!(n("https://h/%2E%2E/x"), Ok("https://h/x".into()));
        assert_eq!(n("https://h?x"), Ok("https://h/".into()));
        assert_eq!(n("https://[::1]:443/a"), Ok("https://[::1]/a".into()));
        assert_eq!(
            n("https://[FE80::1]:8443"),
            Ok("https://[fe80::1]:8443/".into())
        );
        assert_eq!(n("ftp://h/"), Err(HtuError::Scheme));
        assert_eq!(n("https://u:p@h/"), Err(HtuError::Userinfo));
        assert_eq!(n("https:///a"), Err(HtuError::Host));
        assert_eq!(n("https://h:99999/"), Err(HtuError::Port));
        assert_eq!(n("https://h:8o/"), Err(HtuError::Port));
        assert_eq!(n("https://h/a b"), Err(HtuError::Character));
        assert_eq!(n("https://h/%zz"), Err(HtuError::PercentEncoding));
        assert_eq!(n("https://h/%4"), Err(HtuError::PercentEncoding));
        assert_eq!(n("https://hé/"), Err(HtuError::Host));
        assert_eq!(
            n(&format!("https://h/{}", "a".repeat(MAX_HTU_LEN))),
            Err(HtuError::TooLong)
        );
    }

    #[test]
    fn proof_by_another_key_than_the_bound_one_is_refused() {
        let bound = TestKey::p256();
        let thief = TestKey::p256();
        let proof = proof_with(&thief, |_| {});
        assert_eq!(
            verify(&proof, &expected(&bound)),
            Err(DpopError::JktMismatch)
        );
        assert_eq!(DpopError::JktMismatch.oauth_error(), "invalid_token");
    }

    #[test]
    fn ath_mismatch_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| {
            c["ath"] = json!(b64url(&sha256(b"rmpat_another_token")));
        });
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::AthMismatch));
    }

    #[test]
    fn ath_missing_is_refused_when_a_token_is_presented() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| {
            c.as_object_mut().unwrap().remove("ath");
        });
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::AthMissing));
        // At the token endpoint no token is presented, and no ath needed.
        let token_endpoint = Expected::new("GET", HTU).unwrap();
        assert!(verify(&proof, &token_endpoint).is_ok());
    }

    #[test]
    fn iat_too_old_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| c["iat"] = json!(NOW - 61));
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::IatTooOld));
        let edge = proof_with(&key, |c| c["iat"] = json!(NOW - 60));
        assert!(verify(&edge, &expected(&key)).is_ok());
    }

    #[test]
    fn iat_too_far_in_future_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| c["iat"] = json!(NOW + 6));
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::IatInFuture));
        let edge = proof_with(&key, |c| c["iat"] = json!(NOW + 5));
        assert!(verify(&edge, &expected(&key)).is_ok());
    }

    #[test]
    fn iat_window_is_configurable() {
        let key = TestKey::p256();
        let window = IatWindow::new(Duration::from_secs(10), Duration::ZERO).unwrap();
        let exp = expected(&key).with_window(window);
        let old = proof_with(&key, |c| c["iat"] = json!(NOW - 11));
        assert_eq!(verify(&old, &exp), Err(DpopError::IatTooOld));
        let ahead = proof_with(&key, |c| c["iat"] = json!(NOW + 1));
        assert_eq!(verify(&ahead, &exp), Err(DpopError::IatInFuture));
        assert_eq!(
            IatWindow::new(Duration::from_secs(601), Duration::ZERO),
            Err(IatWindowError)
        );
    }

    fn signed_with_header(key: &TestKey, header: Value) -> String {
        key.sign(&header, &claims())
    }

    /// A token with `header` and an arbitrary signature (for algorithms the
    /// test has no key for).
    fn unsigned_with_header(header: Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims().to_string().as_bytes()),
            b64url(signature)
        )
    }

    #[test]
    fn alg_none_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["alg"] = json!("none");
        let proof = unsigned_with_header(h, b"");
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jose(JoseError::AlgNone))
        );
    }

    #[test]
    fn hs256_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["alg"] = json!("HS256");
        let proof = unsigned_with_header(h, &[7; 32]);
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jose(JoseError::AlgSymmetric))
        );
    }

    #[test]
    fn alg_not_matching_the_key_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["alg"] = json!("EdDSA");
        let proof = signed_with_header(&key, h);
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jose(JoseError::KeyAlgMismatch))
        );
    }

    #[test]
    fn missing_jwk_is_refused() {
        let key = TestKey::p256();
        let proof = signed_with_header(&key, json!({"typ": "dpop+jwt", "alg": "ES256"}));
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::JwkMissing));
    }

    #[test]
    fn jwk_with_private_d_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["jwk"]["d"] = json!(b64url(&[1; 32]));
        let proof = signed_with_header(&key, h);
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jwk(JwkError::PrivateMember("d")))
        );
    }

    #[test]
    fn jwk_with_bad_coordinates_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["jwk"]["x"] = json!(7);
        let proof = signed_with_header(&key, h);
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jwk(JwkError::Member {
                member: "x",
                problem: MemberProblem::NotString
            }))
        );
    }

    #[test]
    fn bad_signature_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |_| {});
        let (input, sig) = proof.rsplit_once('.').unwrap();
        let mut sig = b64url_decode(sig).unwrap();
        sig[10] ^= 1;
        let bad = format!("{input}.{}", b64url(&sig));
        assert_eq!(
            verify(&bad, &expected(&key)),
            Err(DpopError::Jose(JoseError::Signature))
        );
        // A valid signature by another key over the same header and claims.
        let other = TestKey::p256();
        let forged = format!("{input}.{}", b64url(&other.sign_bytes(input.as_bytes())));
        assert_eq!(
            verify(&forged, &expected(&key)),
            Err(DpopError::Jose(JoseError::Signature))
        );
    }

    #[test]
    fn wrong_or_missing_typ_is_refused() {
        let key = TestKey::p256();
        let mut h = header(&key);
        h["typ"] = json!("JWT");
        let proof = signed_with_header(&key, h.clone());
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::TypWrong));
        h.as_object_mut().unwrap().remove("typ");
        let proof = signed_with_header(&key, h.clone());
        assert_eq!(verify(&proof, &expected(&key)), Err(DpopError::TypMissing));
        h["typ"] = json!("application/DPoP+JWT");
        let proof = signed_with_header(&key, h);
        assert!(verify(&proof, &expected(&key)).is_ok());
    }

    #[test]
    fn claims_are_required_with_their_types() {
        let key = TestKey::p256();
        for (claim, value, problem) in [
            ("jti", Value::Null, ClaimProblem::NotString),
            ("jti", json!(""), ClaimProblem::Empty),
            (
                "jti",
                json!("j".repeat(MAX_JTI_LEN + 1)),
                ClaimProblem::TooLong(MAX_JTI_LEN),
            ),
            ("htm", json!(["GET"]), ClaimProblem::NotString),
            ("htu", json!(1), ClaimProblem::NotString),
            ("iat", json!("1795000000"), ClaimProblem::NotNumber),
        ] {
            let proof = proof_with(&key, |c| c[claim] = value);
            assert_eq!(
                verify(&proof, &expected(&key)),
                Err(DpopError::Claim(ClaimError { claim, problem })),
                "{claim}"
            );
            let proof = proof_with(&key, |c| {
                c.as_object_mut().unwrap().remove(claim);
            });
            assert_eq!(
                verify(&proof, &expected(&key)),
                Err(DpopError::Claim(ClaimError {
                    claim,
                    problem: ClaimProblem::Missing
                })),
                "{claim}"
            );
        }
    }

    #[test]
    fn oversized_proof_is_refused() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| c["pad"] = json!("p".repeat(MAX_PROOF_LEN)));
        assert_eq!(
            verify(&proof, &expected(&key)),
            Err(DpopError::Jose(JoseError::TooLarge { max: MAX_PROOF_LEN }))
        );
    }

    #[test]
    fn server_nonce_is_required_when_set() {
        let key = TestKey::p256();
        let exp = expected(&key).with_nonce("n-old").with_nonce("n-current");
        let none = proof_with(&key, |_| {});
        assert_eq!(verify(&none, &exp), Err(DpopError::NonceMissing));
        assert_eq!(DpopError::NonceMissing.oauth_error(), "use_dpop_nonce");
        let wrong = proof_with(&key, |c| c["nonce"] = json!("n-guess"));
        assert_eq!(verify(&wrong, &exp), Err(DpopError::NonceMismatch));
        let right = proof_with(&key, |c| c["nonce"] = json!("n-old"));
        assert!(verify(&right, &exp).is_ok());
    }

    #[test]
    fn replay_cache_full_refuses_new_proofs() {
        let key = TestKey::p256();
        let exp = expected(&key);
        let mut cache = ReplayCache::new(2);
        for _ in 0..2 {
            let proof = proof_with(&key, |_| {});
            assert!(DpopProof::verify(&proof, &exp, at(NOW), &mut cache).is_ok());
        }
        let third = proof_with(&key, |_| {});
        let refused = DpopProof::verify(&third, &exp, at(NOW), &mut cache);
        assert_eq!(
            refused,
            Err(DpopError::ReplayStore(ReplayStoreError::Full {
                capacity: 2
            }))
        );
        assert!(refused.unwrap_err().is_unavailable());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn replay_cache_frees_entries_once_expired() {
        let mut cache = ReplayCache::new(2);
        let k = |n: &str| ReplayKey::dpop(&TestKey::p256().public().thumbprint(), n);
        let (a, b, c) = (k("a"), k("b"), k("c"));
        assert_eq!(cache.insert_if_new(a, at(NOW + 60), at(NOW)), Ok(true));
        assert_eq!(cache.insert_if_new(b, at(NOW + 90), at(NOW)), Ok(true));
        assert_eq!(
            cache.insert_if_new(a, at(NOW + 60), at(NOW + 60)),
            Ok(false)
        );
        assert_eq!(
            cache.insert_if_new(c, at(NOW + 120), at(NOW + 60)),
            Err(ReplayStoreError::Full { capacity: 2 })
        );
        // One second after a's expiry, a is forgotten and c fits.
        assert_eq!(
            cache.insert_if_new(c, at(NOW + 121), at(NOW + 61)),
            Ok(true)
        );
        assert_eq!(
            cache.insert_if_new(b, at(NOW + 90), at(NOW + 61)),
            Ok(false)
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn replay_expiry_covers_the_whole_acceptance_window() {
        let key = TestKey::p256();
        let proof = proof_with(&key, |c| c["iat"] = json!(NOW + 5));
        let unrecorded = DpopProof::check(&proof, &expected(&key), at(NOW)).unwrap();
        // Accepted until now = iat + 60; remembered exactly as long.
        assert_eq!(unrecorded.replay_expires_at(), at(NOW + 65));
        let mut cache = ReplayCache::new(4);
        assert!(DpopProof::verify(&proof, &expected(&key), at(NOW), &mut cache).is_ok());
        assert_eq!(
            DpopProof::verify(&proof, &expected(&key), at(NOW + 65), &mut cache),
            Err(DpopError::Replayed)
        );
        assert_eq!(
            DpopProof::verify(&proof, &expected(&key), at(NOW + 66), &mut cache),
            Err(DpopError::IatTooOld)
        );
    }

    #[test]
    fn expected_debug_hides_the_token() {
        let key = TestKey::p256();
        let shown = format!("{:?}", expected(&key));
        assert!(!shown.contains(TOKEN));
        assert!(!shown.contains(&b64url(&sha256(TOKEN.as_bytes()))));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn expected_refuses_bad_request_data() {
        assert_eq!(Expected::new("GE T", HTU).err(), Some(ExpectedError::Htm));
        assert_eq!(Expected::new("", HTU).err(), Some(ExpectedError::Htm));
        assert_eq!(
            Expected::new("GET", "api/v1").err(),
            Some(ExpectedError::Htu(HtuError::Scheme))
        );
    }

    /// Produced by Python's `jwcrypto` 1.6 (an independent implementation):
    /// the P-256 key whose scalar is SHA-256("rempart dpop test vector") mod
    /// n, `jws.JWS(claims).add_signature(key, None, {"typ": "dpop+jwt",
    /// "alg": "ES256", "jwk": public_jwk})`, `serialize(compact=True)`; the
    /// thumbprint is `key.thumbprint()`. Its `jwk` carries a `kid` member,
    /// which the thumbprint ignores.
    const JWCRYPTO_ES256_PROOF: &str = "eyJhbGciOiJFUzI1NiIsImp3ayI6eyJjcnYiOiJQLTI1NiIsImtpZCI6ImktQjRkeFhKay0xaFhYdzhjcnZrSzBRT2VWaTJyZmNGaFl6NlgtYkZrZFEiLCJrdHkiOiJFQyIsIngiOiJ4bk5ERmM3UjlwVHZidE9JVEpXRlJxNXJTYy1wY0xWWmIzVDB6c3hjY0xBIiwieSI6InRRV3lJRUVDNzJwcXN2dklZVlVNWmRVQTl0blpzQlNFSjNwQ3pJbXZQNnMifSwidHlwIjoiZHBvcCtqd3QifQ.eyJqdGkiOiAiZTFqM1ZfYktpYzgtTEFFQiIsICJodG0iOiAiR0VUIiwgImh0dSI6ICJodHRwczovL2FwaS5yZW1wYXJ0LmV4YW1wbGUvYXBpL3YxL3BlcnNvbnMvMTIzNCIsICJpYXQiOiAxNzk1MDAwMDAwLCAiYXRoIjogIjIySDNlelo4UjBUQ2ZJcVA3djFrNGRDWll2TjYta3Q0WnBVUjVtMEQ1WmcifQ.zjE8MXcN_5i6G7O_6nbX7EMoFs8jhmL_Rpu17ui5cC51ULyvGZb2pbflQfrhg1fIug4R5qJcLtLDs-7c4ubuiw";
    const JWCRYPTO_ES256_JKT: &str = "i-B4dxXJk-1hXXw8crvkK0QOeVi2rfcFhYz6X-bFkdQ";
    /// The same with the Ed25519 key whose seed is SHA-256("rempart ed25519
    /// test vector"), alg EdDSA, at the token endpoint (no ath).
    const JWCRYPTO_EDDSA_PROOF: &str = "eyJhbGciOiJFZERTQSIsImp3ayI6eyJjcnYiOiJFZDI1NTE5Iiwia2lkIjoiSnFKRVNGZFh0NTc3N1pnNEV5TjBBYllKWmVmV2VYZEdtUW9NcnhzLXJjZyIsImt0eSI6Ik9LUCIsIngiOiJmMnhfaC1fSjlGazJ0dV9GQTV4bU55dlZ6Q000LUdjSjhYZzh1THNxU0ljIn0sInR5cCI6ImRwb3Arand0In0.eyJqdGkiOiAiNGQwYzFmMGUtNmEwZS00YzNiLTliMWEtMWYxZjBjOWU3YTIxIiwgImh0bSI6ICJQT1NUIiwgImh0dSI6ICJodHRwczovL2F1dGgucmVtcGFydC5leGFtcGxlL29hdXRoMi90b2tlbiIsICJpYXQiOiAxNzk1MDAwMTAwfQ.p-ag8eb1b6jcrRPJeFppRTSGukZLKFdAaDMTyhimqsKIvHIl8S0KhFTqrXTcpeql-Gd7ytwKa4SWIi8fz3h8Dw";
    const JWCRYPTO_EDDSA_JKT: &str = "JqJESFdXt5777Zg4EyN0AbYJZefWeXdGmQoMrxs-rcg";

    #[test]
    fn jwcrypto_es256_proof_verifies() {
        let jkt = Jkt::parse(JWCRYPTO_ES256_JKT).unwrap();
        let exp = Expected::new("GET", HTU)
            .unwrap()
            .bound_to(jkt)
            .with_token(TOKEN);
        let mut cache = ReplayCache::new(4);
        let verified =
            DpopProof::verify(JWCRYPTO_ES256_PROOF, &exp, at(1_795_000_000), &mut cache).unwrap();
        assert_eq!(*verified.jkt(), jkt);
        assert_eq!(verified.jti(), "e1j3V_bKic8-LAEB");
        // The same vector against another token is refused.
        let other = Expected::new("GET", HTU)
            .unwrap()
            .bound_to(jkt)
            .with_token("rmpat_other");
        assert_eq!(
            DpopProof::verify(JWCRYPTO_ES256_PROOF, &other, at(1_795_000_000), &mut cache),
            Err(DpopError::AthMismatch)
        );
    }

    #[test]
    fn jwcrypto_eddsa_proof_verifies() {
        let jkt = Jkt::parse(JWCRYPTO_EDDSA_JKT).unwrap();
        let exp = Expected::new("POST", "https://auth.rempart.example/oauth2/token")
            .unwrap()
            .bound_to(jkt);
        let verified = DpopProof::verify(
            JWCRYPTO_EDDSA_PROOF,
            &exp,
            at(1_795_000_100),
            &mut ReplayCache::new(4),
        )
        .unwrap();
        assert_eq!(verified.alg(), Alg::Ed25519);
    }

    fn proof_claims(proof: &str) -> Value {
        let payload = proof.split('.').nth(1).unwrap();
        serde_json::from_slice(&b64url_decode(payload).unwrap()).unwrap()
    }

    const B64_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_strings_never_panic_and_never_pass(s in "\\PC{0,400}") {
            let key = TestKey::p256();
            prop_assert!(verify(&s, &expected(&key)).is_err());
        }

        #[test]
        fn mutated_valid_proofs_never_panic_and_never_pass(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3, any::<prop::sample::Index>()), 1..4)
        ) {
            let key = TestKey::p256();
            let proof = proof_with(&key, |_| {});
            let mut bytes = proof.clone().into_bytes();
            for (pos, op, ch) in edits {
                let c = B64_CHARS[ch.index(B64_CHARS.len())];
                match op {
                    0 if !bytes.is_empty() => { let i = pos.index(bytes.len()); bytes[i] = c; }
                    1 => { let i = pos.index(bytes.len() + 1); bytes.insert(i, c); }
                    _ if !bytes.is_empty() => { let i = pos.index(bytes.len()); bytes.remove(i); }
                    _ => {}
                }
            }
            let mutated = String::from_utf8(bytes).unwrap();
            let outcome = verify(&mutated, &expected(&key));
            if mutated == proof {
                prop_assert!(outcome.is_ok());
            } else {
                prop_assert!(outcome.is_err(), "a mutated proof passed");
            }
        }

        #[test]
        fn htu_parse_never_panics_and_is_idempotent(s in "(https?://)?\\PC{0,80}") {
            if let Ok(h) = Htu::parse(&s) {
                prop_assert_eq!(Htu::parse(h.as_str()), Ok(h.clone()));
            }
        }
    }
}
