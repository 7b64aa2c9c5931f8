//! Accounts' own secrets that more than one operation handles.
//!
//! - **TOTP secrets at rest**: sealed under the key ring like persons'
//!   data ([`seal_totp_secret`], [`open_totp_secret`]); activation enrols
//!   them, login checks them, a key rotation rewraps them
//!   ([`TotpSecrets`]).
//! - **Activation codes**: issued on an officer's approval or reset
//!   (`accounts`) and from the command line (`activation`), redeemed at
//!   activation; only their digest is stored
//!   ([`Consultation::new_activation`]).
//!
//! These items are public under `login` and `activation` too.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rempart_auth::activation::ActivationCode;
use rempart_auth::totp::TotpSecret;
use rempart_crypto::{Binding, KeyRing};
use rempart_storage::{AuthStore, NewActivation, StorageError};
use zeroize::Zeroizing;

use crate::kernel::Consultation;

// -------------------------------------------------------------------------
// TOTP secrets at rest
// -------------------------------------------------------------------------

/// Format tag of a sealed TOTP secret.
const TOTP_FORMAT: &[u8; 2] = b"T1";
/// Field-group code used for account secrets (persons use 0 to 3).
const TOTP_GROUP: u8 = 0x80;

/// Why a TOTP secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpSealError {
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
fn account_binding(account_id: i64) -> Binding {
    Binding {
        person: account_id.saturating_neg(),
        dek_version: 1,
    }
}

/// Seals an account's TOTP secret for [`AuthStore::set_totp`]: a fresh
/// data key wrapped by the current KEK, bound to the account.
/// `T1 ‖ KEK version (u32 BE) ‖ wrapped key ‖ sealed secret`.
pub fn seal_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    secret: &TotpSecret,
) -> Result<Vec<u8>, TotpSealError> {
    let kek = keys.current_kek();
    let (dk, wrapped) = kek
        .new_data_key(account_binding(account_id))
        .map_err(|_| TotpSealError::Seal)?;
    let mut out = Vec::with_capacity(2 + 4 + wrapped.len() + 60);
    out.extend_from_slice(TOTP_FORMAT);
    out.extend_from_slice(&kek.version.to_be_bytes());
    out.extend_from_slice(&wrapped);
    dk.seal(TOTP_GROUP, secret.expose_bytes(), &mut out)
        .map_err(|_| TotpSealError::Seal)?;
    Ok(out)
}

/// Opens what [`seal_totp_secret`] sealed for this account.
pub fn open_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    sealed: &[u8],
) -> Result<TotpSecret, TotpSealError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(TOTP_FORMAT.as_slice())
        .ok_or(TotpSealError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(TotpSealError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| TotpSealError::Open)?);
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(TotpSealError::Open)?;
    let kek = keys.kek(version).map_err(|_| TotpSealError::Open)?;
    let dk = kek
        .unwrap_data_key(account_binding(account_id), wrapped)
        .map_err(|_| TotpSealError::Open)?;
    let plain = Zeroizing::new(dk.open(TOTP_GROUP, blob).map_err(|_| TotpSealError::Open)?);
    TotpSecret::from_bytes(&plain).map_err(|_| TotpSealError::Open)
}

/// Rewraps the data key of a sealed TOTP secret under KEK version
/// `target` of `keys`, leaving the sealed secret itself as it is (the
/// field AD names no KEK version, as for persons). `None` if it is already
/// under `target`.
pub fn rewrap_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    sealed: &[u8],
    target: u32,
) -> Result<Option<Vec<u8>>, TotpSealError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(TOTP_FORMAT.as_slice())
        .ok_or(TotpSealError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(TotpSealError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| TotpSealError::Open)?);
    if version == target {
        return Ok(None);
    }
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(TotpSealError::Open)?;
    let old = keys.kek(version).map_err(|_| TotpSealError::Open)?;
    let new = keys.kek(target).map_err(|_| TotpSealError::Seal)?;
    let rewrapped = new
        .rewrap(old, account_binding(account_id), wrapped)
        .map_err(|_| TotpSealError::Open)?;
    let mut out = Vec::with_capacity(sealed.len());
    out.extend_from_slice(TOTP_FORMAT);
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(&rewrapped);
    out.extend_from_slice(blob);
    Ok(Some(out))
}

/// Accounts' TOTP secrets, for `rempart keys rotate`: they are sealed
/// under the KEK like persons' data keys, so a rotation rewraps them
/// before it retires a KEK ([`rempart_vault::OtherSecrets`]).
pub struct TotpSecrets(pub Arc<dyn AuthStore>);

#[async_trait::async_trait]
impl rempart_vault::OtherSecrets for TotpSecrets {
    fn name(&self) -> &'static str {
        "TOTP secrets"
    }

    async fn rewrap(
        &self,
        ring: &KeyRing,
        target: u32,
    ) -> Result<rempart_vault::OtherRewrap, rempart_vault::VaultError> {
        let mut report = rempart_vault::OtherRewrap::default();
        let mut after = 0i64;
        loop {
            let rows = self.0.totp_secrets(after, 1000).await?;
            let Some((last, _)) = rows.last() else { break };
            after = *last;
            for (account_id, sealed) in rows {
                match rewrap_totp_secret(ring, account_id, &sealed, target) {
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

// -------------------------------------------------------------------------
// Activation codes
// -------------------------------------------------------------------------

/// How long an activation code works after it is issued.
pub const ACTIVATION_HOURS: i64 = 72;

/// A code just issued: shown once to the officer, never stored in clear.
pub struct IssuedActivation {
    /// The code, in groups of four.
    pub code: Zeroizing<String>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedActivation")
            .field("code", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Consultation {
    /// Generates and stores a code (digest only) for `account_id`.
    pub(crate) async fn new_activation(
        &self,
        account_id: i64,
        officer_id: i64,
        now: DateTime<Utc>,
    ) -> Result<IssuedActivation, StorageError> {
        let code =
            ActivationCode::generate().map_err(|e| StorageError::Invalid(format!("code: {e}")))?;
        let expires_at = now + Duration::hours(ACTIVATION_HOURS);
        self.auth
            .issue_activation(NewActivation {
                account_id,
                digest: code.digest(),
                issued_by: officer_id,
                issued_at: now,
                expires_at,
            })
            .await?;
        Ok(IssuedActivation {
            code: code.grouped(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_secrets_rewrap_under_a_new_kek_and_still_open() {
        let mut keys = KeyRing::generate().unwrap();
        let secret = TotpSecret::generate().unwrap();
        let sealed = seal_totp_secret(&keys, 7, &secret).unwrap();
        let v1 = keys.current_kek().version;
        assert_eq!(rewrap_totp_secret(&keys, 7, &sealed, v1), Ok(None));
        keys.add_kek().unwrap();
        let v2 = keys.current_kek().version;
        let rewrapped = rewrap_totp_secret(&keys, 7, &sealed, v2).unwrap().unwrap();
        assert_ne!(rewrapped, sealed);
        assert_eq!(rewrapped[2..6], v2.to_be_bytes());
        // The sealed secret itself is untouched: only the key is rewrapped.
        let head = 6 + rempart_crypto::envelope::WRAPPED_LEN;
        assert_eq!(rewrapped.len(), sealed.len());
        assert_eq!(rewrapped[head..], sealed[head..]);
        assert_ne!(rewrapped[6..head], sealed[6..head]);
        assert_eq!(
            open_totp_secret(&keys, 7, &rewrapped)
                .unwrap()
                .expose_bytes(),
            secret.expose_bytes()
        );
        // Bound to its account, as before.
        assert_eq!(
            rewrap_totp_secret(&keys, 8, &sealed, v2),
            Err(TotpSealError::Open)
        );
        assert_eq!(
            rewrap_totp_secret(&keys, 7, b"junk", v2),
            Err(TotpSealError::Open)
        );
        // Once the old KEK is retired, only the rewrapped one opens.
        keys.retire_older_keks();
        assert!(open_totp_secret(&keys, 7, &sealed).is_err());
        assert!(open_totp_secret(&keys, 7, &rewrapped).is_ok());
    }

    #[test]
    fn totp_secrets_open_only_for_their_account() {
        let keys = KeyRing::generate().unwrap();
        let secret = TotpSecret::generate().unwrap();
        let sealed = seal_totp_secret(&keys, 7, &secret).unwrap();
        let opened = open_totp_secret(&keys, 7, &sealed).unwrap();
        assert_eq!(opened.expose_bytes(), secret.expose_bytes());
        assert_eq!(
            open_totp_secret(&keys, 8, &sealed).unwrap_err(),
            TotpSealError::Open
        );
        let other = KeyRing::generate().unwrap();
        assert!(open_totp_secret(&other, 7, &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_totp_secret(&keys, 7, &flipped).is_err());
        for n in 0..sealed.len() {
            assert!(open_totp_secret(&keys, 7, &sealed[..n]).is_err(), "{n}");
        }
    }
}
