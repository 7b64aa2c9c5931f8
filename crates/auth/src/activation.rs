//! Activation codes: how an account approved under four eyes (or whose
//! factors were reset) gets its first password and TOTP factor.
//!
//! A code is 26 symbols of Crockford's base32 (130 random bits from the
//! operating system), shown once to the approving officer and handed over
//! out of band; the server keeps only [`ActivationCode::digest`]. Guessing
//! is hopeless, and still throttled like passwords by the caller. The
//! code is written in groups of four (`ABCD-EFGH-…`) for reading aloud;
//! parsing ignores case, spaces and dashes and reads `O` as `0` and `I`,
//! `L` as `1`, as Crockford's alphabet intends, so a misread letter is not
//! a failed attempt.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Symbols in a code.
pub const SYMBOLS: usize = 26;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Domain separation of the stored digest.
const DIGEST_TAG: &[u8] = b"rempart activation code v1\0";

/// Why a typed code is not a code (its form only: whether it is the right
/// one is the store's digest comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActivationCodeError {
    /// Not 26 symbols of the alphabet once spaces and dashes are removed.
    #[error("code: must be 26 letters and digits (dashes and spaces allowed)")]
    Malformed,
    /// The operating system's random generator failed.
    #[error("code: the random generator failed")]
    Random,
}

/// An activation code, wiped when dropped; `Debug` is redacted.
pub struct ActivationCode(Zeroizing<String>);

impl ActivationCode {
    /// A new random code.
    pub fn generate() -> Result<Self, ActivationCodeError> {
        let mut bytes = Zeroizing::new([0u8; SYMBOLS]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| ActivationCodeError::Random)?;
        // 256 is a multiple of 32: the low five bits are uniform.
        let code: String = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
            .collect();
        Ok(ActivationCode(Zeroizing::new(code)))
    }

    /// Reads a typed code (see the module doc for what is tolerated).
    pub fn parse(input: &str) -> Result<Self, ActivationCodeError> {
        let mut out = Zeroizing::new(String::with_capacity(SYMBOLS));
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                ' ' | '-' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() >= SYMBOLS {
                return Err(ActivationCodeError::Malformed);
            }
            out.push(c);
        }
        if out.len() != SYMBOLS {
            return Err(ActivationCodeError::Malformed);
        }
        Ok(ActivationCode(out))
    }

    /// What the store keeps: SHA-256 over a domain tag and the canonical
    /// symbols. The code has 130 bits of entropy, so no salt or slow hash
    /// is needed for a stolen digest to be useless.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_TAG);
        h.update(self.0.as_bytes());
        h.finalize().into()
    }

    /// The code as shown to the officer, in groups of four.
    pub fn grouped(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(SYMBOLS + SYMBOLS / 4));
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }
}

impl fmt::Debug for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActivationCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_back_to_the_same_digest() {
        let code = ActivationCode::generate().unwrap();
        let shown = code.grouped();
        assert_eq!(shown.len(), 26 + 6);
        let typed = ActivationCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(typed.digest(), code.digest());
        assert_ne!(
            ActivationCode::generate().unwrap().digest(),
            code.digest(),
            "fresh randomness"
        );
        assert_eq!(format!("{code:?}"), "ActivationCode(<redacted>)");
    }

    #[test]
    fn misread_letters_are_forgiven_and_the_rest_refused() {
        let a = ActivationCode::parse("0000-1111-2222-3333-4444-5555-66").unwrap();
        let b = ActivationCode::parse("oooo-iiii-2222-3333-4444-5555-66").unwrap();
        let c = ActivationCode::parse("OOOO LLLL 2222 3333 4444 5555 66").unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest(), c.digest());
        for bad in [
            "",
            "0000-1111-2222-3333-4444-5555-6",
            "0000-1111-2222-3333-4444-5555-666",
            "0000-1111-2222-3333-4444-5555-6U",
            "0000-1111-2222-3333-4444-5555-6é",
            "0000_1111_2222_3333_4444_5555_66",
        ] {
            assert_eq!(
                ActivationCode::parse(bad).unwrap_err(),
                ActivationCodeError::Malformed,
                "{bad:?}"
            );
        }
    }
}
