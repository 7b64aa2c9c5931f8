//! Keyed blind indexes: HMAC-SHA-256 of a normalised value under a key used
//! for nothing else, truncated to 16 bytes. They allow exact-match lookup
//! (by NIR, by nom + prénom + date de naissance, by France Travail id)
//! without storing the value, and cannot be brute-forced without the key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::envelope::SecretKey;

/// Length of a blind index, in bytes. 128 bits: no accidental collisions
/// over any realistic population.
pub const BLIND_LEN: usize = 16;

/// A blind index value.
pub type Blind = [u8; BLIND_LEN];

/// What a blind index is computed over; each kind has its own domain
/// separation tag, so equal inputs of different kinds never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlindKind {
    /// France Travail identifier.
    FtId,
    /// The 15-character NIR.
    Nir,
    /// `normalise(nom) \0 normalise(prénom) \0 YYYY-MM-DD`.
    NameBirth,
    /// A fingerprint of a person's whole record, to skip unchanged rows on re-import.
    Fingerprint,
    /// `organisation id \0 NIR`: the pseudonymous token a processor receives
    /// instead of the NIR. Keyed per organisation, so two processors cannot
    /// join their files, and different from the stored NIR blind index, so a
    /// processor holding a copy of the registry cannot link it either.
    ProcessorToken,
    /// A client's network prefix (IPv4 /24, IPv6 /48), as the guard sees
    /// it: keyed, because a prefix has so few values that a plain hash
    /// would give the address back.
    GuardNetwork,
    /// A login attempt's source address (IPv4, or IPv6 /64) as the login
    /// throttle counts it: keyed, so the stored counters name no address.
    LoginAddress,
    /// A login that names no account (trimmed, lower-cased) as the login
    /// throttle counts it: keyed, because what people type in the login
    /// field is sometimes their password.
    UnknownLogin,
}

impl BlindKind {
    fn tag(self) -> &'static [u8] {
        match self {
            BlindKind::FtId => b"rempart/blind/ft_id/1\0",
            BlindKind::Nir => b"rempart/blind/nir/1\0",
            BlindKind::NameBirth => b"rempart/blind/name_birth/1\0",
            BlindKind::Fingerprint => b"rempart/blind/fingerprint/1\0",
            BlindKind::ProcessorToken => b"rempart/token/processor_nir/1\0",
            BlindKind::GuardNetwork => b"rempart/guard/network/1\0",
            BlindKind::LoginAddress => b"rempart/login/address/1\0",
            BlindKind::UnknownLogin => b"rempart/login/unknown/1\0",
        }
    }
}

/// Computes blind indexes. Cheap to clone: the keyed HMAC state is
/// precomputed once and copied for each value.
#[derive(Clone)]
pub struct BlindIndexer {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexer(<redacted>)")
    }
}

impl BlindIndexer {
    pub(crate) fn new(key: &SecretKey) -> Self {
        // A 32-byte key always fits HMAC-SHA-256; the error branch cannot happen.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        BlindIndexer { keyed }
    }

    /// The blind index of `parts`, joined by NUL bytes.
    pub fn compute(&self, kind: BlindKind, parts: &[&[u8]]) -> Blind {
        let mut mac = self.keyed.clone();
        mac.update(kind.tag());
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; BLIND_LEN];
        out.copy_from_slice(&full[..BLIND_LEN]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2_through_the_same_hmac() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out = mac.finalize().into_bytes();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn kinds_and_keys_separate() {
        let a = BlindIndexer::new(&SecretKey::from_bytes([1; 32]));
        let b = BlindIndexer::new(&SecretKey::from_bytes([2; 32]));
        let v: &[&[u8]] = &[b"255081416802538"];
        assert_eq!(a.compute(BlindKind::Nir, v), a.compute(BlindKind::Nir, v));
        assert_ne!(a.compute(BlindKind::Nir, v), a.compute(BlindKind::FtId, v));
        assert_ne!(a.compute(BlindKind::Nir, v), b.compute(BlindKind::Nir, v));
        // Part boundaries matter.
        assert_ne!(
            a.compute(BlindKind::NameBirth, &[b"ab", b"c"]),
            a.compute(BlindKind::NameBirth, &[b"a", b"bc"])
        );
    }
}
