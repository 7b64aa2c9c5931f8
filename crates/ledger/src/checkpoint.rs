//! C2SP tlog checkpoints (c2sp.org/tlog-checkpoint): the signed statement
//! "the log named *origin* has *size* leaves and this root", as a signed
//! note whose text is
//!
//! ```text
//! <origin>\n<size in decimal>\n<base64 root>\n[<extension line>\n]*
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;
use crate::note::{NoteError, SignerKey, VerifierKey, open_note, parse_note};

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note around the checkpoint is malformed or badly signed.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The body does not follow the checkpoint format.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The checkpoint is well signed, but by other keys than the trusted
    /// one: the log's signing key changed (it was replaced, or someone else
    /// signed). Keys are named by name and ID only, never their material.
    #[error(
        "signed by key {}, not by the trusted key {trusted}: the signing key changed",
        found.join(", ")
    )]
    KeyChanged {
        /// The trusted key, `name+id`.
        trusted: String,
        /// The keys whose signature lines the note carries, `name+id`.
        found: Vec<String>,
    },
    /// The checkpoint names another log than the key.
    #[error("checkpoint origin {found:?} is not the log's origin {expected:?}")]
    WrongOrigin {
        /// Origin in the checkpoint.
        found: String,
        /// Origin expected.
        expected: String,
    },
}

/// A tree head: origin, size and root hash (plus opaque extension lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `rempart.example/ledger`.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root of those leaves.
    pub root: Hash,
    /// Extension lines (not recommended by the spec; Rempart writes none).
    pub extensions: Vec<String>,
}

fn valid_line(line: &str) -> bool {
    !line.is_empty() && !line.chars().any(|c| c < ' ')
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Self {
        Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text.
    pub fn body(&self) -> Result<String, CheckpointError> {
        if !valid_line(&self.origin) {
            return Err(CheckpointError::Malformed(
                "origin must be one non-empty line",
            ));
        }
        if !self.extensions.iter().all(|l| valid_line(l)) {
            return Err(CheckpointError::Malformed(
                "extension lines must be non-empty single lines",
            ));
        }
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        Ok(text)
    }

    /// Parses a note text.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Malformed(
            "text does not end with a newline",
        ))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::Malformed("fewer than three lines"));
        };
        if !valid_line(origin) {
            return Err(CheckpointError::Malformed("empty origin"));
        }
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        if !canonical || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CheckpointError::Malformed(
                "size is not a decimal number without leading zeros",
            ));
        }
        let size = size
            .parse::<u64>()
            .map_err(|_| CheckpointError::Malformed("size out of range"))?;
        let root: Hash = B64
            .decode(root.as_bytes())
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed(
                "root is not a base64 SHA-256 hash",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(|l| l.is_empty()) {
            return Err(CheckpointError::Malformed("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// The signed note of this checkpoint. The key's name must be the origin.
    pub fn sign(&self, key: &SignerKey) -> Result<String, CheckpointError> {
        if key.name() != self.origin {
            return Err(CheckpointError::WrongOrigin {
                found: self.origin.clone(),
                expected: key.name().to_string(),
            });
        }
        Ok(key.sign_note(&self.body()?)?)
    }

    /// Opens a signed checkpoint: the signature by `key` must verify and the
    /// origin must be the key's name.
    /// A note signed only by other keys is [`CheckpointError::KeyChanged`],
    /// apart from a bad signature by the trusted key itself.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Self, CheckpointError> {
        let opened = match open_note(note, std::slice::from_ref(key)) {
            Err(NoteError::NoKnownSignature) => {
                // The note parsed (open_note parses first): name its signers.
                let mut found: Vec<String> = Vec::new();
                for sig in parse_note(note)?.signatures {
                    let named = sig.name_and_id();
                    if !found.contains(&named) {
                        found.push(named);
                    }
                }
                return Err(CheckpointError::KeyChanged {
                    trusted: key.name_and_id(),
                    found,
                });
            }
            other => other?,
        };
        let checkpoint = Self::parse_body(&opened.text)?;
        if checkpoint.origin != key.name() {
            return Err(CheckpointError::WrongOrigin {
                found: checkpoint.origin,
                expected: key.name().to_string(),
            });
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::parse_note;

    /// The example of c2sp.org/tlog-checkpoint.
    const SPEC_EXAMPLE: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

    #[test]
    fn spec_example_parses_and_reformats_identically() {
        let note = parse_note(SPEC_EXAMPLE).unwrap();
        let cp = Checkpoint::parse_body(&note.text).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert_eq!(cp.root[0], 0x0a);
        assert!(cp.extensions.is_empty());
        assert_eq!(cp.body().unwrap(), note.text);
        assert_eq!(note.signatures[0].name, cp.origin);
        assert_eq!(note.signatures[0].signature.len(), 64);
    }

    #[test]
    fn sign_and_open() {
        let key = SignerKey::generate("rempart.test/ledger").unwrap();
        let mut cp = Checkpoint::new("rempart.test/ledger", 42, [7; 32]);
        let note = cp.sign(&key).unwrap();
        assert!(note.starts_with("rempart.test/ledger\n42\nBwcH"));
        assert_eq!(Checkpoint::open(&note, &key.verifier()).unwrap(), cp);
        cp.extensions = vec!["ext one".into()];
        let note = cp.sign(&key).unwrap();
        assert_eq!(Checkpoint::open(&note, &key.verifier()).unwrap(), cp);

        let other = SignerKey::generate("rempart.test/other").unwrap();
        assert!(matches!(
            cp.sign(&other),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        // A signed checkpoint whose origin is not the key name is refused.
        let foreign = other
            .sign_note(
                &Checkpoint::new("rempart.test/ledger", 1, [0; 32])
                    .body()
                    .unwrap(),
            )
            .unwrap();
        assert!(matches!(
            Checkpoint::open(&foreign, &other.verifier()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        // Signed by another key of the same name: the key changed, and the
        // message names both keys by name and ID, never their material.
        let replaced = SignerKey::generate("rempart.test/ledger").unwrap();
        let resigned = cp.sign(&replaced).unwrap();
        match Checkpoint::open(&resigned, &key.verifier()) {
            Err(e @ CheckpointError::KeyChanged { .. }) => {
                let text = e.to_string();
                assert!(text.contains("the signing key changed"), "{text}");
                assert!(text.contains(&key.verifier().name_and_id()), "{text}");
                assert!(text.contains(&replaced.verifier().name_and_id()), "{text}");
                let material = replaced.verifier().to_string();
                let b64 = material.splitn(3, '+').nth(2).unwrap();
                assert!(!text.contains(b64), "{text}");
            }
            other => panic!("expected KeyChanged, got {other:?}"),
        }
        // A changed size breaks the signature.
        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            Checkpoint::open(&tampered, &key.verifier()),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ));
    }

    #[test]
    fn malformed_bodies() {
        let root = B64.encode([0u8; 32]);
        for body in [
            String::new(),
            format!("o\n1\n{root}"),
            format!("\n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n\n{root}\n"),
            "o\n1\nAAAA\n".to_string(),
            format!("o\n1\n{root}\n\n"),
            format!("o\n99999999999999999999999\n{root}\n"),
        ] {
            assert!(Checkpoint::parse_body(&body).is_err(), "{body:?}");
        }
        assert_eq!(
            Checkpoint::parse_body(&format!("o\n0\n{root}\n"))
                .unwrap()
                .size,
            0
        );
    }
}
