//! Stage 1: who is calling. Today: per-account API credentials issued by
//! `rempart account credential issue`. Passkeys, second factors and device
//! binding will come in behind the same [`Caller`].
//!
//! A credential reads `rmp_<id>_<secret>`: the id finds the stored row, the
//! secret (32 random bytes, base64url) is kept only as its SHA-256 digest.
//! A fast hash is enough here because the secret has 256 bits of entropy;
//! passwords, which do not, will get argon2id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rempart_storage::{AccountRecord, StorageError, Store, StoredCredential};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every credential starts with this, so secret scanners can spot leaks.
pub const PREFIX: &str = "rmp_";

/// Longest credential accepted before any parsing.
const MAX_LEN: usize = 128;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountRecord,
    /// The credential (later: the session) the request came through.
    pub credential_id: i64,
}

/// A newly issued credential. The token is shown once and never stored.
pub struct IssuedCredential {
    pub id: i64,
    pub token: Zeroizing<String>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a credential was not accepted. The client is never told which
/// (all are "401 unauthenticated"); the ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No credential, or not of the `rmp_<id>_<secret>` form.
    Malformed,
    /// No stored credential has this id.
    Unknown,
    /// The secret does not match.
    WrongSecret {
        account_id: i64,
    },
    Expired {
        account_id: i64,
    },
    Revoked {
        account_id: i64,
    },
}

impl Rejected {
    /// The account the credential belongs to, when known.
    pub fn account_id(self) -> Option<i64> {
        match self {
            Rejected::Malformed | Rejected::Unknown => None,
            Rejected::WrongSecret { account_id }
            | Rejected::Expired { account_id }
            | Rejected::Revoked { account_id } => Some(account_id),
        }
    }
}

/// Splits a presented credential into (id, digest of the secret).
pub fn parse(token: &str) -> Result<(i64, [u8; 32]), Rejected> {
    if token.len() > MAX_LEN {
        return Err(Rejected::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(Rejected::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(Rejected::Malformed)?;
    if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejected::Malformed);
    }
    let id: i64 = id.parse().map_err(|_| Rejected::Malformed)?;
    let secret = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| Rejected::Malformed)?,
    );
    if secret.len() != 32 {
        return Err(Rejected::Malformed);
    }
    Ok((id, digest(&secret)))
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Compares two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Issues a credential for `account_id`, valid for `ttl` from `now`.
pub async fn issue(
    store: &Store,
    account_id: i64,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<IssuedCredential, StorageError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(secret.as_mut());
    let expires_at = now + ttl;
    let id = store
        .insert_credential(account_id, digest(secret.as_ref()), now, expires_at)
        .await?;
    let token = Zeroizing::new(format!(
        "{PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    ));
    Ok(IssuedCredential {
        id,
        token,
        expires_at,
    })
}

/// Checks a presented credential against the store. `Ok(Err(_))` is a
/// rejection; `Err(_)` means the store could not answer.
pub async fn authenticate(
    store: &Store,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Result<Caller, Rejected>, StorageError> {
    let Some(token) = token else {
        return Ok(Err(Rejected::Malformed));
    };
    let (id, presented) = match parse(token) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let stored = store.credential(id).await?;
    Ok(check(stored, id, &presented, now))
}

/// Decides on a presented credential (its id and the digest of its secret)
/// given what the store holds under that id.
pub fn check(
    stored: Option<(StoredCredential, AccountRecord)>,
    id: i64,
    presented: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Caller, Rejected> {
    let Some((stored, account)) = stored else {
        return Err(Rejected::Unknown);
    };
    let account_id = account.account_id;
    if stored.id != id || !same(&stored.secret_digest, presented) {
        Err(Rejected::WrongSecret { account_id })
    } else if stored.revoked_at.is_some_and(|t| t <= now) {
        Err(Rejected::Revoked { account_id })
    } else if stored.expires_at <= now {
        Err(Rejected::Expired { account_id })
    } else {
        Ok(Caller {
            account,
            credential_id: id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn well_formed_tokens_parse_and_others_do_not() {
        let secret = [7u8; 32];
        let token = format!("rmp_42_{}", URL_SAFE_NO_PAD.encode(secret));
        assert_eq!(parse(&token), Ok((42, digest(&secret))));
        for bad in [
            "",
            "rmp_",
            "rmp_42",
            "rmp__abc",
            "xyz_42_AAAA",
            "rmp_-1_AAAA",
            "rmp_4x_AAAA",
            "rmp_42_!!!!",
            "rmp_42_AAAA",
            "rmp_99999999999999999999_AAAA",
        ] {
            assert_eq!(parse(bad), Err(Rejected::Malformed), "{bad}");
        }
        let long = format!("{token}{}", "A".repeat(200));
        assert_eq!(parse(&long), Err(Rejected::Malformed));
    }

    #[test]
    fn digests_compare_exactly() {
        let a = digest(b"a");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn any_issued_shape_round_trips(id in 0i64..i64::MAX, secret in any::<[u8; 32]>()) {
            let token = format!("rmp_{id}_{}", URL_SAFE_NO_PAD.encode(secret));
            prop_assert_eq!(parse(&token), Ok((id, digest(&secret))));
        }
    }
}
