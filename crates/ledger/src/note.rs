//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, in the key
//! text formats of Go's `golang.org/x/mod/sumdb/note`, so that checkpoints
//! can be checked with standard tools:
//!
//! - verifier key: `name+hhhhhhhh+base64(0x01 ‖ public key)`
//! - signer key: `PRIVATE+KEY+name+hhhhhhhh+base64(0x01 ‖ seed)`
//! - key ID `hhhhhhhh`: the first four bytes, big-endian, of
//!   `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`
//! - a note: text ending in a newline, a blank line, then one line per
//!   signature: `— name base64(key ID ‖ signature)`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Signature type byte of Ed25519 in signed notes.
pub const ALG_ED25519: u8 = 0x01;

/// Most signatures read from one note (as Go's implementation).
const MAX_SIGNATURES: usize = 100;

/// Why a key or a note was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty, or holds a space or a `+`.
    #[error("key name must be non-empty and contain no spaces and no '+'")]
    BadKeyName,
    /// A key text does not have the expected shape.
    #[error("malformed {0} key")]
    MalformedKey(&'static str),
    /// The key's algorithm byte is not Ed25519.
    #[error("unsupported key algorithm {0:#04x} (only Ed25519, 0x01, is supported)")]
    UnsupportedAlgorithm(u8),
    /// The key ID in the text does not match the key.
    #[error("key ID does not match the key")]
    KeyIdMismatch,
    /// The text to sign does not end with a newline or holds control characters.
    #[error("note text must end with a newline and contain no control characters but newlines")]
    BadText,
    /// The note does not follow the signed-note syntax.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A signature by a known key does not verify.
    #[error("invalid signature by key {name}+{id:08x}")]
    InvalidSignature {
        /// Key name.
        name: String,
        /// Key ID.
        id: u32,
    },
    /// No signature by a known key.
    #[error("note has no signature by a known key")]
    NoKnownSignature,
    /// The system's random source failed.
    #[error("random source: {0}")]
    Random(String),
}

/// Whether `name` may name a key: non-empty, no Unicode space, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key ID of an Ed25519 public key under `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn parse_id(hex: &str, what: &'static str) -> Result<u32, NoteError> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey(what));
    }
    u32::from_str_radix(hex, 16).map_err(|_| NoteError::MalformedKey(what))
}

/// Splits `name+id+key` (the key part may not contain `+`... but base64 may,
/// so only the first two `+` split).
fn split_key(text: &str, what: &'static str) -> Result<(String, u32, Vec<u8>), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::MalformedKey(what));
    };
    if !is_valid_key_name(name) {
        return Err(NoteError::BadKeyName);
    }
    let id = parse_id(id, what)?;
    let key = B64
        .decode(key.as_bytes())
        .map_err(|_| NoteError::MalformedKey(what))?;
    Ok((name.to_string(), id, key))
}

/// A private Ed25519 note key and its name.
pub struct SignerKey {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignerKey")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl SignerKey {
    /// A fresh key from the system's random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| NoteError::Random(e.to_string()))?;
        Self::from_seed(name, &seed)
    }

    /// The key of a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKeyName);
        }
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(SignerKey {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// Parses `PRIVATE+KEY+name+id+base64(0x01 ‖ seed)`, checking the ID.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim_end_matches(['\n', '\r'])
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::MalformedKey("signer"))?;
        let (name, id, key) = split_key(rest, "signer")?;
        let key = Zeroizing::new(key);
        match key.first() {
            Some(&ALG_ED25519) => {}
            Some(&alg) => return Err(NoteError::UnsupportedAlgorithm(alg)),
            None => return Err(NoteError::MalformedKey("signer")),
        }
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            key[1..]
                .try_into()
                .map_err(|_| NoteError::MalformedKey("signer"))?,
        );
        let signer = Self::from_seed(&name, &seed)?;
        if signer.id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+…` text (secret: wiped when dropped).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 33]);
        raw[0] = ALG_ED25519;
        raw[1..].copy_from_slice(self.key.as_bytes());
        let b64 = Zeroizing::new(B64.encode(raw.as_ref()));
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            b64.as_str()
        ))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The matching public key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs a note text, returning the whole signed note.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&self.id.to_be_bytes());
        sig.extend_from_slice(&self.key.sign(text.as_bytes()).to_bytes());
        Ok(format!("{text}\n— {} {}\n", self.name, B64.encode(&sig)))
    }
}

/// A public Ed25519 note key and its name.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; 33];
        raw[0] = ALG_ED25519;
        raw[1..].copy_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

impl VerifierKey {
    /// Parses `name+id+base64(0x01 ‖ public key)`, checking the ID.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = split_key(text.trim_end_matches(['\n', '\r']), "verifier")?;
        match key.first() {
            Some(&ALG_ED25519) => {}
            Some(&alg) => return Err(NoteError::UnsupportedAlgorithm(alg)),
            None => return Err(NoteError::MalformedKey("verifier")),
        }
        let public: [u8; 32] = key[1..]
            .try_into()
            .map_err(|_| NoteError::MalformedKey("verifier"))?;
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| NoteError::MalformedKey("verifier"))?;
        if key_id(&name, &public) != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(VerifierKey { name, id, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `name+hhhhhhhh`: the key's name and ID, which name a key in messages
    /// without its material (the form of a signature line's key).
    pub fn name_and_id(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// Whether `signature` (without the key ID) signs `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.key
            .verify_strict(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') || text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::BadText);
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signing key's name.
    pub name: String,
    /// The signing key's ID.
    pub id: u32,
    /// The signature bytes, without the key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// `name+hhhhhhhh`, as [`VerifierKey::name_and_id`] names a key.
    pub fn name_and_id(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }
}

/// A parsed note: its text and signature lines, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

/// Parses a signed note without checking any signature.
pub fn parse_note(message: &str) -> Result<Note, NoteError> {
    if message.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    let split = message
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = &message[..split + 1];
    let mut sigs = &message[split + 2..];
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed(
            "signature block missing or not ended by a newline",
        ));
    }
    let mut signatures = Vec::new();
    while let Some(end) = sigs.find('\n') {
        let line = &sigs[..end];
        sigs = &sigs[end + 1..];
        let line = line.strip_prefix("— ").ok_or(NoteError::Malformed(
            "signature line does not start with '— '",
        ))?;
        let (name, b64) = line
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line has no space"))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::Malformed("bad key name in a signature line"));
        }
        let raw = B64
            .decode(b64.as_bytes())
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        if signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        signatures.push(NoteSignature {
            name: name.to_string(),
            id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            signature: raw[4..].to_vec(),
        });
    }
    Ok(Note {
        text: text.to_string(),
        signatures,
    })
}

/// A note whose signatures by known keys all verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text.
    pub text: String,
    /// Signatures by known keys (all valid).
    pub verified: Vec<NoteSignature>,
    /// Signatures by unknown keys (ignored, as the spec requires).
    pub unverified: Vec<NoteSignature>,
}

/// Parses a note and checks it: every signature by a known key (same name
/// and ID) must verify, and at least one must exist. Signatures by unknown
/// keys are set aside.
pub fn open_note(message: &str, known: &[VerifierKey]) -> Result<OpenedNote, NoteError> {
    let note = parse_note(message)?;
    let mut opened = OpenedNote {
        text: note.text,
        verified: Vec::new(),
        unverified: Vec::new(),
    };
    for sig in note.signatures {
        match known.iter().find(|k| k.name == sig.name && k.id == sig.id) {
            None => {
                if !opened.unverified.contains(&sig) {
                    opened.unverified.push(sig);
                }
            }
            Some(key) => {
                if opened
                    .verified
                    .iter()
                    .any(|v| v.name == sig.name && v.id == sig.id)
                {
                    continue;
                }
                if !key.verify(opened.text.as_bytes(), &sig.signature) {
                    return Err(NoteError::InvalidSignature {
                        name: sig.name,
                        id: sig.id,
                    });
                }
                opened.verified.push(sig);
            }
        }
    }
    if opened.verified.is_empty() {
        return Err(NoteError::NoKnownSignature);
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from golang.org/x/mod/sumdb/note (note_test.go): the
    // PeterNeumann and EnochRoot keys and their signatures of this text.
    const PETER_SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VERIFIER: &str =
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VERIFIER: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    #[test]
    fn go_vectors_keys() {
        let signer = SignerKey::parse(PETER_SIGNER).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.id(), 0xc74f20a3);
        assert_eq!(signer.verifier().to_string(), PETER_VERIFIER);
        assert_eq!(signer.to_text().as_str(), PETER_SIGNER);
        let verifier = VerifierKey::parse(PETER_VERIFIER).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert_eq!(verifier.to_string(), PETER_VERIFIER);
    }

    #[test]
    fn go_vectors_sign_is_deterministic_and_exact() {
        let signer = SignerKey::parse(PETER_SIGNER).unwrap();
        let signed = signer.sign_note(TEXT).unwrap();
        assert_eq!(signed, format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn go_vectors_open() {
        let peter = VerifierKey::parse(PETER_VERIFIER).unwrap();
        let enoch = VerifierKey::parse(ENOCH_VERIFIER).unwrap();
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let one = open_note(&msg, std::slice::from_ref(&peter)).unwrap();
        assert_eq!(one.text, TEXT);
        assert_eq!(one.verified.len(), 1);
        assert_eq!(one.verified[0].id, 0xc74f20a3);
        assert_eq!(one.unverified.len(), 1);
        assert_eq!(one.unverified[0].name, "EnochRoot");
        assert_eq!(one.unverified[0].id, 0xaf0cfe78);
        let both = open_note(&msg, &[peter.clone(), enoch]).unwrap();
        assert_eq!(both.verified.len(), 2);
        assert_eq!(open_note(&msg, &[]), Err(NoteError::NoKnownSignature));
        // A corrupted signature by a known key rejects the whole note.
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(
            open_note(&bad, std::slice::from_ref(&peter)),
            Err(NoteError::InvalidSignature { .. }) | Err(NoteError::Malformed(_))
        ));
        // Go's malformed messages.
        for m in [
            TEXT.to_string(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!(
                "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n{}", PETER_SIG.repeat(101)),
        ] {
            assert!(
                matches!(
                    open_note(&m, std::slice::from_ref(&peter)),
                    Err(NoteError::Malformed(_))
                ),
                "{m:?}"
            );
        }
    }

    #[test]
    fn mangled_keys_are_refused() {
        // Every proper substring and every one-byte change of the keys fails,
        // as in Go's TestNewVerifier / TestNewSigner.
        for key in [PETER_VERIFIER, PETER_SIGNER] {
            let parse = |k: &str| {
                if key.starts_with("PRIVATE") {
                    SignerKey::parse(k).map(|_| ())
                } else {
                    VerifierKey::parse(k).map(|_| ())
                }
            };
            assert!(parse(key).is_ok());
            let b = key.as_bytes();
            for i in 0..b.len() {
                for j in i + 1..=b.len() {
                    if (i, j) != (0, b.len()) {
                        assert!(parse(&key[i..j]).is_err(), "{}", &key[i..j]);
                    }
                }
                let mut m = b.to_vec();
                m[i] = m[i].wrapping_add(1);
                if let Ok(s) = std::str::from_utf8(&m) {
                    assert!(parse(s).is_err(), "{s}");
                }
            }
        }
        // Wrong length with an adjusted ID; unknown algorithm.
        assert!(
            VerifierKey::parse(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert!(
            VerifierKey::parse(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
    }

    /// The example of c2sp.org/signed-note: a text with a blank line inside,
    /// separated from its signature by the last blank line.
    #[test]
    fn c2sp_example_parses() {
        let msg = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n\n— quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
        let note = parse_note(msg).unwrap();
        assert_eq!(
            note.text,
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
        );
        assert_eq!(note.signatures.len(), 1);
        assert_eq!(note.signatures[0].name, "quasimodo.example/salvatore");
        assert_eq!(note.signatures[0].signature.len(), 64);
    }

    #[test]
    fn generated_keys_roundtrip_and_sign() {
        let k = SignerKey::generate("rempart.example/ledger").unwrap();
        let again = SignerKey::parse(&k.to_text()).unwrap();
        assert_eq!(again.verifier(), k.verifier());
        let v = VerifierKey::parse(&k.verifier().to_string()).unwrap();
        let note = k.sign_note("hello\n").unwrap();
        assert!(open_note(&note, std::slice::from_ref(&v)).is_ok());
        let other = SignerKey::generate("rempart.example/ledger").unwrap();
        // Same name, another key: an unknown signature, so no known one.
        assert_eq!(
            open_note(&other.sign_note("hello\n").unwrap(), &[v]),
            Err(NoteError::NoKnownSignature)
        );
        assert!(!format!("{k:?}").contains(&k.to_text()[12..]));
        assert_eq!(k.sign_note("no newline"), Err(NoteError::BadText));
        assert_eq!(k.sign_note("tab\there\n"), Err(NoteError::BadText));
        assert_eq!(
            SignerKey::generate("bad name").unwrap_err(),
            NoteError::BadKeyName
        );
        assert_eq!(
            SignerKey::generate("a+b").unwrap_err(),
            NoteError::BadKeyName
        );
    }
}
