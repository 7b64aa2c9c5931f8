//! Digests of written reasons (break-glass) for the append-only ledger.
//!
//! A reason is free text: an agent may type a person's name, an address or
//! a health detail into it. The ledger is public to auditors and can never
//! be edited, so it keeps only `HMAC-SHA-256(salt, tag ‖ reason)` with a
//! random 32-byte salt per reason; the text and its salt live in the
//! registry, sealed under the person's data key, where they can be erased.
//!
//! Why a salt per reason rather than one server key: a guessable reason
//! ("urgence, appel de la personne") cannot be confirmed from the ledger by
//! anyone, operators included, since the salt is as secret as the text;
//! while the registry row lives, an auditor opens it and checks that the
//! text is the one the ledger committed to; once the person is shredded
//! the salt is gone with the data key, and the digest is unlinkable to
//! any text forever.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Domain tag, so that this digest never equals one made for another use.
const TAG: &[u8] = b"rempart/break-glass-reason/1\0";

/// Length of a reason's salt.
pub const SALT_LEN: usize = 32;

/// A reason's random salt (the HMAC key of its digest); wiped when dropped.
pub struct ReasonSalt(Zeroizing<[u8; SALT_LEN]>);

impl ReasonSalt {
    /// A fresh salt from the process's CSPRNG (seeded by the operating
    /// system).
    pub fn random() -> ReasonSalt {
        use rand::RngCore;
        let mut s = Zeroizing::new([0u8; SALT_LEN]);
        rand::rng().fill_bytes(s.as_mut());
        ReasonSalt(s)
    }

    /// A salt read back from its sealed row.
    pub fn from_bytes(bytes: [u8; SALT_LEN]) -> ReasonSalt {
        ReasonSalt(Zeroizing::new(bytes))
    }

    /// The salt's bytes, to seal beside the text.
    pub fn as_bytes(&self) -> &[u8; SALT_LEN] {
        &self.0
    }

    /// The digest the ledger keeps of `reason`.
    pub fn digest(&self, reason: &str) -> [u8; 32] {
        // HMAC takes keys of any length: a 32-byte key cannot be refused.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(TAG);
        mac.update(reason.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for ReasonSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReasonSalt(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_the_salt_and_the_text() {
        let reason = "Appel urgent de la personne, dossier bloqué";
        let a = ReasonSalt::random();
        let b = ReasonSalt::random();
        assert_eq!(a.digest(reason), a.digest(reason));
        assert_ne!(a.digest(reason), b.digest(reason), "salted: no dictionary");
        assert_ne!(a.digest(reason), a.digest("Appel urgent de la personne"));
        let again = ReasonSalt::from_bytes(*a.as_bytes());
        assert_eq!(again.digest(reason), a.digest(reason));
        assert_eq!(format!("{a:?}"), "ReasonSalt(<redacted>)");
    }

    #[test]
    fn it_is_hmac_sha256_over_the_tagged_text() {
        // RFC 4231 test case 1's key; the message is the tag then the text.
        let salt = ReasonSalt::from_bytes([0x0b; 32]);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[0x0b; 32]).unwrap();
        mac.update(b"rempart/break-glass-reason/1\0motif");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(salt.digest("motif"), want);
    }
}
