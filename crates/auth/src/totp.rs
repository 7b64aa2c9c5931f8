//! TOTP second factor (RFC 6238), the fallback when a person has no passkey.
//!
//! HMAC-SHA-1, 6 digits, 30-second steps: what Google Authenticator,
//! FreeOTP, Aegis and most other apps assume, and what they use when a
//! provisioning URI asks for something else and they silently ignore it.
//! (HMAC-SHA-1 is not weakened by SHA-1 collisions; RFC 4226 appendix B.2.)
//!
//! Codes are computed by the `totp-rs` crate; this module adds what it
//! leaves to the caller: strict parsing, the ±1-step window searched in
//! full, and replay refusal. The caller stores the last accepted time step
//! per account (`last_step`) and passes it back; a code for that step or an
//! earlier one is refused, even a different code that is still inside the
//! window, so each code opens at most one login (RFC 6238 §5.2).
//!
//! Nothing here reads the clock: callers pass `now` as Unix seconds.

use std::fmt;

use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "Rempart";
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Seconds per time step.
pub const PERIOD_SECS: u64 = 30;
/// Steps accepted either side of the current one (clock drift, typing time).
pub const WINDOW_STEPS: u64 = 1;
/// Bytes in a secret: 160 bits, RFC 4226 §4's recommendation.
pub const SECRET_LEN: usize = 20;
/// Longest account label put in a provisioning URI.
const MAX_LABEL_CHARS: usize = 100;

/// Why a TOTP operation failed. Never carries a code or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// The code typed is not of the expected form.
    #[error("code: {0}")]
    MalformedCode(CodeProblem),
    /// No step in the window has this code.
    #[error("code: does not match")]
    Mismatch,
    /// The code matches a step already used (or an earlier one).
    #[error("code: already used; wait for the next code")]
    Replayed,
    /// A stored secret of the wrong size.
    #[error("totp_secret: must be {SECRET_LEN} bytes, found {found}")]
    SecretLength {
        /// Bytes found.
        found: usize,
    },
    /// The operating system's random source failed.
    #[error("totp_secret: the operating system's random source failed")]
    Random,
    /// The label for the provisioning URI is unusable.
    #[error("account_label: {0}")]
    Label(&'static str),
}

impl TotpError {
    /// The input field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            TotpError::MalformedCode(_) | TotpError::Mismatch | TotpError::Replayed => "code",
            TotpError::SecretLength { .. } | TotpError::Random => "totp_secret",
            TotpError::Label(_) => "account_label",
        }
    }
}

/// What is wrong with the form of a typed code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeProblem {
    /// Nothing typed.
    #[error("is required")]
    Empty,
    /// Not the expected number of characters.
    #[error("must have exactly {expected} digits")]
    WrongLength {
        /// Digits expected.
        expected: usize,
    },
    /// A character other than an ASCII digit (letters, spaces, signs, and
    /// digits of other scripts, which no authenticator app shows).
    #[error("must contain only the digits 0–9")]
    NotDigits,
}

/// A 160-bit TOTP secret, wiped when dropped. `Debug` is redacted.
/// No `PartialEq`: secrets are never compared, only used to compute codes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl TotpSecret {
    /// A new random secret from the operating system's generator.
    pub fn generate() -> Result<Self, TotpError> {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(|_| TotpError::Random)?;
        let secret = TotpSecret(bytes);
        bytes.zeroize();
        Ok(secret)
    }

    /// A secret as stored (after the caller unsealed it).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TotpError> {
        let array: [u8; SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| TotpError::SecretLength { found: bytes.len() })?;
        Ok(TotpSecret(array))
    }

    /// The raw bytes, to seal and store.
    pub fn expose_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Base32 (RFC 4648, no padding): what a person types into an app that
    /// cannot scan the QR code.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(Secret::new_stack(self.0).to_base32())
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// A typed code of the right form (exactly [`DIGITS`] ASCII digits).
/// `Debug` is redacted: a code is a credential for as long as it is valid.
#[derive(Clone)]
pub struct TotpCode(Zeroizing<String>);

impl TotpCode {
    /// Parses a typed code. Strict: no spaces, no signs, ASCII digits only.
    pub fn parse(input: &str) -> Result<Self, TotpError> {
        parse_code(input, DIGITS)
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode(<redacted>)")
    }
}

fn parse_code(input: &str, digits: usize) -> Result<TotpCode, TotpError> {
    if input.is_empty() {
        return Err(TotpError::MalformedCode(CodeProblem::Empty));
    }
    // Characters, not bytes, so "١٢٣٤٥٦" is reported as non-digits rather
    // than as too long.
    if input.chars().count() != digits {
        return Err(TotpError::MalformedCode(CodeProblem::WrongLength {
            expected: digits,
        }));
    }
    if !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::MalformedCode(CodeProblem::NotDigits));
    }
    Ok(TotpCode(Zeroizing::new(input.to_owned())))
}

/// An `otpauth://` URI (the QR code's content). It holds the secret, so
/// `Debug` is redacted and the string is wiped when dropped.
pub struct ProvisioningUri(Zeroizing<String>);

impl ProvisioningUri {
    /// The URI, to render as a QR code.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProvisioningUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProvisioningUri(<redacted>)")
    }
}

/// The provisioning URI for `secret`, issuer [`ISSUER`], labelled with the
/// account (e.g. its login): `otpauth://totp/Rempart:<label>?secret=…&issuer=Rempart`.
/// Algorithm, digits and period are the apps' defaults, so they are left out.
pub fn provisioning_uri(
    secret: &TotpSecret,
    account_label: &str,
) -> Result<ProvisioningUri, TotpError> {
    if account_label.trim().is_empty() {
        return Err(TotpError::Label("is required"));
    }
    if account_label.chars().count() > MAX_LABEL_CHARS {
        return Err(TotpError::Label("is longer than 100 characters"));
    }
    // The URI label is "issuer:account", so a colon would be ambiguous.
    if account_label.contains(':') {
        return Err(TotpError::Label("must not contain ':'"));
    }
    if account_label.chars().any(char::is_control) {
        return Err(TotpError::Label("must not contain control characters"));
    }
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_step_duration(PERIOD_SECS)
        .with_secret(Secret::new_stack(secret.0))
        .with_issuer(Some(ISSUER))
        .with_account_name(account_label)
        .build()
        .map_err(|_| TotpError::Label("is not accepted in an otpauth URI"))?;
    let uri = totp
        .to_url()
        .map_err(|_| TotpError::Label("is not accepted in an otpauth URI"))?;
    Ok(ProvisioningUri(Zeroizing::new(uri)))
}

/// Checks `code` at time `now_unix` (seconds) against the current step and
/// one step either side. Returns the matched time step, which the caller
/// stores as the account's new `last_step`.
///
/// Refused: a code matching no step in the window ([`TotpError::Mismatch`]),
/// and a code matching only steps ≤ `last_step` ([`TotpError::Replayed`]).
/// Every step of the window is computed and compared (constant-time, by
/// `totp-rs`'s `Token`), so the time does not depend on which one matched.
/// Both refusals must count as a failed login for [`crate::lockout`].
pub fn verify(
    secret: &TotpSecret,
    code: &TotpCode,
    now_unix: u64,
    last_step: Option<u64>,
) -> Result<u64, TotpError> {
    verify_with_digits(secret, code, DIGITS, now_unix, last_step)
}

/// One code generator per digit count; `skew` 0 because the window is
/// walked here, to see every matching step, not only the first.
fn generator(secret: &TotpSecret, digits: usize) -> Result<Totp, TotpError> {
    let digits = u8::try_from(digits).map_err(|_| TotpError::Mismatch)?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(digits)
        .with_skew(0)
        .with_step_duration(PERIOD_SECS)
        .with_secret(Secret::new_stack(secret.0))
        .build()
        // Only reachable with a digit count outside 6..=8, which this
        // module never uses; refusing the code keeps it failing closed.
        .map_err(|_| TotpError::Mismatch)
}

fn verify_with_digits(
    secret: &TotpSecret,
    code: &TotpCode,
    digits: usize,
    now_unix: u64,
    last_step: Option<u64>,
) -> Result<u64, TotpError> {
    if code.as_str().len() != digits {
        return Err(TotpError::MalformedCode(CodeProblem::WrongLength {
            expected: digits,
        }));
    }
    let totp = generator(secret, digits)?;
    let current = now_unix / PERIOD_SECS;
    let first = current.saturating_sub(WINDOW_STEPS);
    let last = current.saturating_add(WINDOW_STEPS);
    let mut matched_any = false;
    let mut accepted: Option<u64> = None;
    for step in first..=last {
        // A step whose start time overflows u64 cannot be the current one.
        let Some(start) = step.checked_mul(PERIOD_SECS) else {
            continue;
        };
        if totp.check(code.as_str(), start).is_some() {
            matched_any = true;
            if last_step.is_none_or(|used| step > used) {
                accepted = Some(step);
            }
        }
    }
    match (accepted, matched_any) {
        (Some(step), _) => Ok(step),
        (None, true) => Err(TotpError::Replayed),
        (None, false) => Err(TotpError::Mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6238 appendix B's SHA-1 seed.
    const RFC_SEED: &[u8; 20] = b"12345678901234567890";

    fn secret() -> TotpSecret {
        TotpSecret::from_bytes(&[7u8; 20]).unwrap()
    }

    /// The code the generator gives for `step`, as an app would show it.
    fn code_at(secret: &TotpSecret, step: u64) -> TotpCode {
        let totp = generator(secret, DIGITS).unwrap();
        TotpCode::parse(&totp.generate(step * PERIOD_SECS).to_string()).unwrap()
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let secret = TotpSecret::from_bytes(RFC_SEED).unwrap();
        let totp = generator(&secret, 8).unwrap();
        for (time, expected) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(totp.generate(time).to_string(), expected, "T = {time}");
            let code = parse_code(expected, 8).unwrap();
            let step = verify_with_digits(&secret, &code, 8, time, None).unwrap();
            assert_eq!(step, time / PERIOD_SECS);
        }
    }

    #[test]
    fn a_valid_code_is_accepted_and_returns_its_step() {
        let s = secret();
        let now = 1_790_000_015;
        let step = now / PERIOD_SECS;
        assert_eq!(verify(&s, &code_at(&s, step), now, None), Ok(step));
        assert_eq!(
            verify(&s, &code_at(&s, step), now, Some(step - 1)),
            Ok(step)
        );
    }

    #[test]
    fn the_same_code_replayed_is_refused() {
        let s = secret();
        let now = 1_790_000_015;
        let code = code_at(&s, now / PERIOD_SECS);
        let step = verify(&s, &code, now, None).unwrap();
        assert_eq!(verify(&s, &code, now, Some(step)), Err(TotpError::Replayed));
        // Still refused 20 s later, while the code is inside the window.
        assert_eq!(
            verify(&s, &code, now + 20, Some(step)),
            Err(TotpError::Replayed)
        );
    }

    #[test]
    fn an_earlier_step_in_the_window_is_refused_after_a_later_one() {
        let s = secret();
        let now = 1_790_000_015;
        let current = now / PERIOD_SECS;
        // The next code was used (clock ahead); the current one, still in the
        // window and different, is refused too.
        let used = verify(&s, &code_at(&s, current + 1), now, None).unwrap();
        assert_eq!(used, current + 1);
        assert_eq!(
            verify(&s, &code_at(&s, current), now, Some(used)),
            Err(TotpError::Replayed)
        );
    }

    #[test]
    fn one_step_either_side_is_accepted() {
        let s = secret();
        let now = 1_790_000_015;
        let current = now / PERIOD_SECS;
        assert_eq!(
            verify(&s, &code_at(&s, current - 1), now, None),
            Ok(current - 1)
        );
        assert_eq!(
            verify(&s, &code_at(&s, current + 1), now, None),
            Ok(current + 1)
        );
    }

    #[test]
    fn codes_two_or_more_steps_away_are_refused() {
        let s = secret();
        let now = 1_790_000_015;
        let current = now / PERIOD_SECS;
        for step in [current - 3, current - 2, current + 2, current + 3] {
            let code = code_at(&s, step);
            // Guard against a chance collision with a code inside the window.
            let inside: Vec<String> = (current - 1..=current + 1)
                .map(|st| code_at(&s, st).as_str().to_owned())
                .collect();
            assert!(!inside.contains(&code.as_str().to_owned()));
            assert_eq!(
                verify(&s, &code, now, None),
                Err(TotpError::Mismatch),
                "step {step}"
            );
        }
    }

    #[test]
    fn another_secret_does_not_verify() {
        let now = 1_790_000_015;
        let code = code_at(&secret(), now / PERIOD_SECS);
        let other = TotpSecret::from_bytes(&[8u8; 20]).unwrap();
        assert_eq!(verify(&other, &code, now, None), Err(TotpError::Mismatch));
    }

    #[test]
    fn window_at_the_epoch_does_not_underflow() {
        let s = secret();
        assert_eq!(verify(&s, &code_at(&s, 0), 5, None), Ok(0));
        assert_eq!(verify(&s, &code_at(&s, 1), 5, None), Ok(1));
        // Far future: steps whose start overflows are skipped, no panic.
        let _ = verify(&s, &code_at(&s, 0), u64::MAX, None);
    }

    #[test]
    fn malformed_codes_are_refused_naming_the_field() {
        for (input, problem) in [
            ("", CodeProblem::Empty),
            ("12345", CodeProblem::WrongLength { expected: 6 }),
            ("1234567", CodeProblem::WrongLength { expected: 6 }),
            ("12a456", CodeProblem::NotDigits),
            ("12 456", CodeProblem::NotDigits),
            ("+12345", CodeProblem::NotDigits),
            ("-12345", CodeProblem::NotDigits),
            // Arabic-Indic and full-width digits.
            ("١٢٣٤٥٦", CodeProblem::NotDigits),
            ("１２３４５６", CodeProblem::NotDigits),
        ] {
            let err = TotpCode::parse(input).unwrap_err();
            assert_eq!(err, TotpError::MalformedCode(problem), "{input:?}");
            assert_eq!(err.field(), "code");
            assert!(err.to_string().starts_with("code: "), "{err}");
        }
    }

    #[test]
    fn provisioning_uri_has_issuer_label_and_secret() {
        let s = secret();
        let uri = provisioning_uri(&s, "ce038-ag-0042").unwrap();
        let text = uri.expose();
        assert!(
            text.starts_with("otpauth://totp/Rempart:ce038-ag-0042?"),
            "{text}"
        );
        assert!(text.contains("issuer=Rempart"), "{text}");
        assert!(
            text.contains(&format!("secret={}", s.to_base32().as_str())),
            "{text}"
        );
        // An authenticator reading the URI derives the same codes.
        let parsed = Totp::from_url(text).unwrap();
        let now = 1_790_000_015;
        let code = TotpCode::parse(&parsed.generate(now).to_string()).unwrap();
        assert_eq!(verify(&s, &code, now, None), Ok(now / PERIOD_SECS));
        assert_eq!(format!("{uri:?}"), "ProvisioningUri(<redacted>)");
    }

    #[test]
    fn provisioning_uri_label_is_checked() {
        let s = secret();
        for label in ["", "  ", "a:b", "a\nb", &"x".repeat(101)] {
            let err = provisioning_uri(&s, label).unwrap_err();
            assert_eq!(err.field(), "account_label", "{label:?}");
        }
        // Spaces and accents are percent-encoded, not refused.
        let uri = provisioning_uri(&s, "Hélène D").unwrap();
        assert!(
            uri.expose()
                .starts_with("otpauth://totp/Rempart:H%C3%A9l%C3%A8ne%20D?"),
            "{}",
            uri.expose()
        );
    }

    #[test]
    fn secrets_are_random_160_bit_and_redacted() {
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        assert_eq!(a.expose_bytes().len(), 20);
        assert_eq!(format!("{a:?}"), "TotpSecret(<redacted>)");
        assert_eq!(
            TotpSecret::from_bytes(&[0u8; 16]).unwrap_err(),
            TotpError::SecretLength { found: 16 }
        );
        assert_eq!(
            TotpSecret::from_bytes(a.expose_bytes())
                .unwrap()
                .expose_bytes(),
            a.expose_bytes()
        );
        let code = TotpCode::parse("123456").unwrap();
        assert_eq!(format!("{code:?}"), "TotpCode(<redacted>)");
    }

    proptest! {
        #[test]
        fn code_parser_never_panics(s in any::<String>()) {
            let _ = TotpCode::parse(&s);
        }

        #[test]
        fn parsed_codes_are_six_ascii_digits(s in "\\PC{0,10}") {
            if let Ok(code) = TotpCode::parse(&s) {
                prop_assert_eq!(code.as_str().len(), 6);
                prop_assert!(code.as_str().bytes().all(|b| b.is_ascii_digit()));
            }
        }

        #[test]
        fn verify_never_panics(code in "[0-9]{6}", now in any::<u64>(), last in any::<Option<u64>>()) {
            let code = TotpCode::parse(&code).unwrap();
            let _ = verify(&secret(), &code, now, last);
        }
    }
}
