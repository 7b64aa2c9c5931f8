//! Envelope encryption: each person has a random data key; the data key is
//! stored wrapped (AES-256-GCM) under a versioned key-encryption key (KEK);
//! each field group is sealed (AES-256-GCM) under the data key.
//!
//! Associated data binds every ciphertext to where it belongs, so a blob
//! copied to another person, another field group or another key version
//! fails to open instead of showing the wrong data:
//! - wrapped key: `"rempart/dek/1" ‖ person id ‖ KEK version ‖ data key version`
//! - sealed group: `"rempart/field/1" ‖ person id ‖ group code ‖ data key version`
//!
//! The field AD carries the *data key* version, not the KEK version: that is
//! what lets a KEK rotation rewrap keys without touching any field.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;

/// Nonce length of AES-GCM.
pub const NONCE_LEN: usize = 12;
/// Tag length of AES-GCM.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed blob adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of a wrapped data key.
pub const WRAPPED_LEN: usize = 32 + SEAL_OVERHEAD;

/// A 256-bit key, wiped from memory when dropped; `Debug` shows nothing.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey(pub(crate) [u8; 32]);

impl SecretKey {
    /// A fresh random key from the operating system.
    pub fn random() -> Result<Self, CryptoError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|_| CryptoError::Random)?;
        Ok(SecretKey(k))
    }

    pub(crate) fn from_bytes(b: [u8; 32]) -> Self {
        SecretKey(b)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Where a ciphertext belongs: checked on every open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The person's opaque id.
    pub person: i64,
    /// Version of the person's data key (bumped when the data key is replaced).
    pub dek_version: u32,
}

/// A person's data key, ready to seal and open that person's field groups.
pub struct DataKey {
    cipher: Aes256Gcm,
    binding: Binding,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({:?}, <redacted>)", self.binding)
    }
}

/// A key-encryption key with its version.
pub struct Kek {
    pub version: u32,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek(v{}, <redacted>)", self.version)
    }
}

fn cipher_of(key: &SecretKey) -> Aes256Gcm {
    Aes256Gcm::new(key.as_bytes().into())
}

/// Fills `buf` from a per-thread ChaCha12 generator seeded (and regularly
/// reseeded) from the operating system: a CSPRNG, without one system call
/// per key and nonce, which the import's throughput cannot afford.
fn fill_random(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(buf);
}

fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n);
    Ok(n)
}

/// Encrypts `plaintext` into `nonce ‖ ciphertext ‖ tag`, appended to `out`.
fn seal_into(
    cipher: &Aes256Gcm,
    nonce: [u8; NONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    out.reserve(plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), ad, (&mut out[start..]).into())
        .map_err(|_| CryptoError::Seal)?;
    out.extend_from_slice(tag.as_slice());
    Ok(())
}

/// Decrypts a `nonce ‖ ciphertext ‖ tag` blob.
fn open(cipher: &Aes256Gcm, ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut buf = ct.to_vec();
    cipher
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            ad,
            buf.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .ok()?;
    Some(buf)
}

const DEK_AD: &[u8] = b"rempart/dek/1";
const FIELD_AD: &[u8] = b"rempart/field/1";

fn dek_ad(b: Binding, kek_version: u32) -> [u8; 13 + 8 + 4 + 4] {
    let mut ad = [0u8; 29];
    ad[..13].copy_from_slice(DEK_AD);
    ad[13..21].copy_from_slice(&b.person.to_le_bytes());
    ad[21..25].copy_from_slice(&kek_version.to_le_bytes());
    ad[25..29].copy_from_slice(&b.dek_version.to_le_bytes());
    ad
}

fn field_ad(b: Binding, group: u8) -> [u8; 15 + 8 + 1 + 4] {
    let mut ad = [0u8; 28];
    ad[..15].copy_from_slice(FIELD_AD);
    ad[15..23].copy_from_slice(&b.person.to_le_bytes());
    ad[23] = group;
    ad[24..28].copy_from_slice(&b.dek_version.to_le_bytes());
    ad
}

impl Kek {
    pub(crate) fn new(version: u32, key: &SecretKey) -> Self {
        Kek {
            version,
            cipher: cipher_of(key),
        }
    }

    /// Creates a fresh data key for a person and returns it with its wrapped form.
    pub fn new_data_key(&self, binding: Binding) -> Result<(DataKey, Vec<u8>), CryptoError> {
        // One system call for the key and the wrapping nonce.
        let mut rnd = [0u8; 32 + NONCE_LEN];
        fill_random(&mut rnd);
        let mut key = [0u8; 32];
        key.copy_from_slice(&rnd[..32]);
        let key = SecretKey::from_bytes(key);
        let nonce: [u8; NONCE_LEN] = rnd[32..].try_into().map_err(|_| CryptoError::Random)?;
        rnd.zeroize();
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        seal_into(
            &self.cipher,
            nonce,
            &dek_ad(binding, self.version),
            key.as_bytes(),
            &mut wrapped,
        )?;
        Ok((
            DataKey {
                cipher: cipher_of(&key),
                binding,
            },
            wrapped,
        ))
    }

    /// Unwraps a person's data key. Fails if the blob was wrapped for
    /// another person, key version, or under another KEK.
    pub fn unwrap_data_key(
        &self,
        binding: Binding,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let mut raw = open(&self.cipher, &dek_ad(binding, self.version), wrapped).ok_or(
            CryptoError::Unwrap {
                person: binding.person,
                kek_version: self.version,
            },
        )?;
        let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| CryptoError::Unwrap {
            person: binding.person,
            kek_version: self.version,
        })?;
        raw.zeroize();
        let key = SecretKey::from_bytes(bytes);
        Ok(DataKey {
            cipher: cipher_of(&key),
            binding,
        })
    }

    /// Rewraps a data key wrapped by `old` under this KEK, without ever
    /// touching the fields it protects.
    pub fn rewrap(
        &self,
        old: &Kek,
        binding: Binding,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut raw = open(&old.cipher, &dek_ad(binding, old.version), wrapped).ok_or(
            CryptoError::Unwrap {
                person: binding.person,
                kek_version: old.version,
            },
        )?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        let res = seal_into(
            &self.cipher,
            random_nonce()?,
            &dek_ad(binding, self.version),
            &raw,
            &mut out,
        );
        raw.zeroize();
        res.map(|()| out)
    }
}

impl DataKey {
    /// The person and key version this key is bound to.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// Seals one field group's encoded plaintext, appending the blob to `out`.
    pub fn seal(&self, group: u8, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        seal_into(
            &self.cipher,
            random_nonce()?,
            &field_ad(self.binding, group),
            plaintext,
            out,
        )
    }

    /// Opens one field group's blob.
    pub fn open(&self, group: u8, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.cipher, &field_ad(self.binding, group), sealed).ok_or(CryptoError::Open {
            person: self.binding.person,
            group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kek(v: u32) -> Kek {
        Kek::new(v, &SecretKey::random().unwrap())
    }

    const B: Binding = Binding {
        person: 42,
        dek_version: 1,
    };

    #[test]
    fn gcm_spec_test_case_14() {
        // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 14:
        // 256-bit zero key, zero IV, one zero block.
        let cipher = cipher_of(&SecretKey::from_bytes([0; 32]));
        let mut out = Vec::new();
        seal_into(&cipher, [0; NONCE_LEN], b"", &[0; 16], &mut out).unwrap();
        let hex: String = out[NONCE_LEN..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        assert_eq!(open(&cipher, b"", &out).unwrap(), vec![0; 16]);
    }

    #[test]
    fn seal_open_roundtrip_and_size() {
        let k = kek(1);
        let (dk, wrapped) = k.new_data_key(B).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        let mut blob = Vec::new();
        dk.seal(0, b"Dupont|Jean", &mut blob).unwrap();
        assert_eq!(blob.len(), 11 + SEAL_OVERHEAD);
        let again = k.unwrap_data_key(B, &wrapped).unwrap();
        assert_eq!(again.open(0, &blob).unwrap(), b"Dupont|Jean");
    }

    #[test]
    fn blobs_are_bound_to_person_group_and_version() {
        let k = kek(1);
        let (dk, wrapped) = k.new_data_key(B).unwrap();
        let mut blob = Vec::new();
        dk.seal(0, b"secret", &mut blob).unwrap();
        // Other group.
        assert!(dk.open(1, &blob).is_err());
        // Wrapped key moved to another person or version.
        let other = Binding { person: 43, ..B };
        assert!(k.unwrap_data_key(other, &wrapped).is_err());
        let bumped = Binding {
            dek_version: 2,
            ..B
        };
        assert!(k.unwrap_data_key(bumped, &wrapped).is_err());
        // A KEK with the same bytes but another version number.
        assert!(kek(2).unwrap_data_key(B, &wrapped).is_err());
        // Truncated and flipped blobs.
        assert!(dk.open(0, &blob[..SEAL_OVERHEAD - 1]).is_err());
        let mut flipped = blob.clone();
        flipped[NONCE_LEN] ^= 1;
        assert!(dk.open(0, &flipped).is_err());
    }

    #[test]
    fn rewrap_keeps_fields_readable() {
        let old = kek(1);
        let new = kek(2);
        let (dk, wrapped) = old.new_data_key(B).unwrap();
        let mut blob = Vec::new();
        dk.seal(3, b"inscrit", &mut blob).unwrap();
        let rewrapped = new.rewrap(&old, B, &wrapped).unwrap();
        assert!(old.unwrap_data_key(B, &rewrapped).is_err());
        let dk2 = new.unwrap_data_key(B, &rewrapped).unwrap();
        assert_eq!(dk2.open(3, &blob).unwrap(), b"inscrit");
    }

    #[test]
    fn nonces_differ_between_seals() {
        let (dk, _) = kek(1).new_data_key(B).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        dk.seal(0, b"same", &mut a).unwrap();
        dk.seal(0, b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn roundtrip_any_plaintext(data in prop::collection::vec(any::<u8>(), 0..2048), group in 0u8..8, person in any::<i64>()) {
            let k = kek(7);
            let b = Binding { person, dek_version: 3 };
            let (dk, wrapped) = k.new_data_key(b).unwrap();
            let mut blob = Vec::new();
            dk.seal(group, &data, &mut blob).unwrap();
            let dk = k.unwrap_data_key(b, &wrapped).unwrap();
            prop_assert_eq!(dk.open(group, &blob).unwrap(), data);
        }

        #[test]
        fn any_single_bit_flip_is_detected(data in prop::collection::vec(any::<u8>(), 1..256), bit in any::<prop::sample::Index>()) {
            let (dk, _) = kek(1).new_data_key(B).unwrap();
            let mut blob = Vec::new();
            dk.seal(0, &data, &mut blob).unwrap();
            let i = bit.index(blob.len() * 8);
            blob[i / 8] ^= 1 << (i % 8);
            prop_assert!(dk.open(0, &blob).is_err());
        }
    }
}
