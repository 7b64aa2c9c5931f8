//! Accounts' own secrets (their TOTP secrets), sealed under the key ring
//! like persons' data, so that keys and sealed data meet only in the
//! vault: a fresh data key per secret, wrapped by the current KEK and
//! bound to the account in the person envelope's negative id space, so an
//! account secret can never open as a person's data, nor the reverse. A
//! rotation rewraps them ([`AccountSecrets`]) before it retires a KEK.

use std::sync::Arc;

use rempart_crypto::{Binding, KeyRing};
use rempart_domain::AccountId;
use rempart_storage::AuthStore;
use zeroize::Zeroizing;

use crate::{OtherRewrap, OtherSecrets, Vault, VaultError};

/// Format tag of a sealed account secret (the first kind was TOTP).
const FORMAT: &[u8; 2] = b"T1";
/// Field-group code used for account secrets (persons use 0 to 3).
const GROUP: u8 = 0x80;

/// Why an account secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountSecretError {
    /// The blob is not a sealed TOTP secret of this account (or it was
    /// sealed under a KEK this key ring no longer holds).
    #[error("sealed_secret: cannot be opened for this account")]
    Open,
    /// Encryption failed.
    #[error("sealed_secret: cannot be sealed")]
    Seal,
}

/// The envelope binding of an account's own secrets: the person envelope
/// in the negative id space (person ids are positive), so an account
/// secret can never open as a person's data, nor the reverse.
fn account_binding(account_id: AccountId) -> Binding {
    Binding {
        person: account_id.get().saturating_neg(),
        dek_version: 1,
    }
}

/// Seals an account's secret: a fresh data key wrapped by the current KEK,
/// bound to the account.
/// `T1 ‖ KEK version (u32 BE) ‖ wrapped key ‖ sealed secret`.
fn seal(
    keys: &KeyRing,
    account_id: AccountId,
    secret: &[u8],
) -> Result<Vec<u8>, AccountSecretError> {
    let kek = keys.current_kek();
    let (dk, wrapped) = kek
        .new_data_key(account_binding(account_id))
        .map_err(|_| AccountSecretError::Seal)?;
    let mut out = Vec::with_capacity(2 + 4 + wrapped.len() + 60);
    out.extend_from_slice(FORMAT);
    out.extend_from_slice(&kek.version.to_be_bytes());
    out.extend_from_slice(&wrapped);
    dk.seal(GROUP, secret, &mut out)
        .map_err(|_| AccountSecretError::Seal)?;
    Ok(out)
}

/// Opens what [`seal`] sealed for this account.
fn open(
    keys: &KeyRing,
    account_id: AccountId,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AccountSecretError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(FORMAT.as_slice())
        .ok_or(AccountSecretError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(AccountSecretError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| AccountSecretError::Open)?);
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(AccountSecretError::Open)?;
    let kek = keys.kek(version).map_err(|_| AccountSecretError::Open)?;
    let dk = kek
        .unwrap_data_key(account_binding(account_id), wrapped)
        .map_err(|_| AccountSecretError::Open)?;
    Ok(Zeroizing::new(
        dk.open(GROUP, blob).map_err(|_| AccountSecretError::Open)?,
    ))
}

/// Rewraps the data key of a sealed TOTP secret under KEK version
/// `target` of `keys`, leaving the sealed secret itself as it is (the
/// field AD names no KEK version, as for persons). `None` if it is already
/// under `target`.
fn rewrap(
    keys: &KeyRing,
    account_id: AccountId,
    sealed: &[u8],
    target: u32,
) -> Result<Option<Vec<u8>>, AccountSecretError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(FORMAT.as_slice())
        .ok_or(AccountSecretError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(AccountSecretError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| AccountSecretError::Open)?);
    if version == target {
        return Ok(None);
    }
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(AccountSecretError::Open)?;
    let old = keys.kek(version).map_err(|_| AccountSecretError::Open)?;
    let new = keys.kek(target).map_err(|_| AccountSecretError::Seal)?;
    let rewrapped = new
        .rewrap(old, account_binding(account_id), wrapped)
        .map_err(|_| AccountSecretError::Open)?;
    let mut out = Vec::with_capacity(sealed.len());
    out.extend_from_slice(FORMAT);
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(&rewrapped);
    out.extend_from_slice(blob);
    Ok(Some(out))
}

/// Accounts' TOTP secrets, for `rempart keys rotate`: they are sealed
/// under the KEK like persons' data keys, so a rotation rewraps them
/// before it retires a KEK.
pub struct AccountSecrets(pub Arc<dyn AuthStore>);

#[async_trait::async_trait]
impl OtherSecrets for AccountSecrets {
    fn name(&self) -> &'static str {
        "TOTP secrets"
    }

    async fn rewrap(&self, ring: &KeyRing, target: u32) -> Result<OtherRewrap, VaultError> {
        let mut report = OtherRewrap::default();
        let mut after = AccountId::new(0);
        loop {
            let rows = self.0.totp_secrets(after, 1000).await?;
            let Some((last, _)) = rows.last() else { break };
            after = *last;
            for (account_id, sealed) in rows {
                match rewrap(ring, account_id, &sealed, target) {
                    Ok(None) => {}
                    // Compare-and-set: a secret re-enrolled meanwhile is
                    // under the new KEK already, or is caught next run.
                    Ok(Some(new)) => {
                        if self
                            .0
                            .replace_totp_secret(account_id, &sealed, &new)
                            .await?
                        {
                            report.rewrapped += 1;
                        } else {
                            report.left += 1;
                        }
                    }
                    // Not readable with this ring: its KEK must stay.
                    Err(_) => report.left += 1,
                }
            }
        }
        Ok(report)
    }
}

impl Vault {
    /// Seals an account's secret (its TOTP secret) under the current KEK,
    /// bound to the account, for `AuthStore::set_totp`.
    pub fn seal_account_secret(
        &self,
        account_id: AccountId,
        secret: &[u8],
    ) -> Result<Vec<u8>, AccountSecretError> {
        seal(&self.keys(), account_id, secret)
    }

    /// Opens what [`Vault::seal_account_secret`] sealed for this account.
    pub fn open_account_secret(
        &self,
        account_id: AccountId,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AccountSecretError> {
        open(&self.keys(), account_id, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_secrets_rewrap_under_a_new_kek_and_still_open() {
        let mut keys = KeyRing::generate().unwrap();
        let secret = b"twenty bytes secret!".to_vec();
        let sealed = seal(&keys, AccountId::new(7), &secret).unwrap();
        let v1 = keys.current_kek().version;
        assert_eq!(rewrap(&keys, AccountId::new(7), &sealed, v1), Ok(None));
        keys.add_kek().unwrap();
        let v2 = keys.current_kek().version;
        let rewrapped = rewrap(&keys, AccountId::new(7), &sealed, v2)
            .unwrap()
            .unwrap();
        assert_ne!(rewrapped, sealed);
        assert_eq!(rewrapped[2..6], v2.to_be_bytes());
        // The sealed secret itself is untouched: only the key is rewrapped.
        let head = 6 + rempart_crypto::envelope::WRAPPED_LEN;
        assert_eq!(rewrapped.len(), sealed.len());
        assert_eq!(rewrapped[head..], sealed[head..]);
        assert_ne!(rewrapped[6..head], sealed[6..head]);
        assert_eq!(
            open(&keys, AccountId::new(7), &rewrapped)
                .unwrap()
                .as_slice(),
            secret.as_slice()
        );
        // Bound to its account, as before.
        assert_eq!(
            rewrap(&keys, AccountId::new(8), &sealed, v2),
            Err(AccountSecretError::Open)
        );
        assert_eq!(
            rewrap(&keys, AccountId::new(7), b"junk", v2),
            Err(AccountSecretError::Open)
        );
        // Once the old KEK is retired, only the rewrapped one opens.
        keys.retire_older_keks();
        assert!(open(&keys, AccountId::new(7), &sealed).is_err());
        assert!(open(&keys, AccountId::new(7), &rewrapped).is_ok());
    }

    #[test]
    fn account_secrets_open_only_for_their_account() {
        let keys = KeyRing::generate().unwrap();
        let secret = b"twenty bytes secret!".to_vec();
        let sealed = seal(&keys, AccountId::new(7), &secret).unwrap();
        let opened = open(&keys, AccountId::new(7), &sealed).unwrap();
        assert_eq!(opened.as_slice(), secret.as_slice());
        assert_eq!(
            open(&keys, AccountId::new(8), &sealed).unwrap_err(),
            AccountSecretError::Open
        );
        let other = KeyRing::generate().unwrap();
        assert!(open(&other, AccountId::new(7), &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open(&keys, AccountId::new(7), &flipped).is_err());
        for n in 0..sealed.len() {
            assert!(open(&keys, AccountId::new(7), &sealed[..n]).is_err(), "{n}");
        }
    }
}
