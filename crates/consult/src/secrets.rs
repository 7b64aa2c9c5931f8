//! Accounts' own secrets that more than one operation handles.
//!
//! - **TOTP secrets at rest**: sealed by the vault under the key ring like
//!   persons' data ([`seal_totp_secret`], [`open_totp_secret`]); activation
//!   enrols them, login checks them, a key rotation rewraps them
//!   (`rempart_vault::AccountSecrets`).
//! - **Activation codes**: issued on an officer's approval or reset
//!   (`accounts`) and from the command line (`activation`), redeemed at
//!   activation; only their digest is stored
//!   ([`Consultation::new_activation`]).
//!
//! These items are public under `login` and `activation` too.

use chrono::{DateTime, Duration, Utc};
use rempart_auth::activation::ActivationCode;
use rempart_auth::totp::TotpSecret;
use rempart_domain::AccountId;
use rempart_storage::{NewActivation, StorageError};
use rempart_vault::Vault;
use zeroize::Zeroizing;

use crate::kernel::Consultation;

// -------------------------------------------------------------------------
// TOTP secrets at rest
// -------------------------------------------------------------------------

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

/// Seals an account's TOTP secret for [`rempart_storage::AuthStore::set_totp`], through the
/// vault (the only holder of the keys).
pub fn seal_totp_secret(
    vault: &Vault,
    account_id: AccountId,
    secret: &TotpSecret,
) -> Result<Vec<u8>, TotpSealError> {
    vault
        .seal_account_secret(account_id, secret.expose_bytes())
        .map_err(|_| TotpSealError::Seal)
}

/// Opens what [`seal_totp_secret`] sealed for this account.
pub fn open_totp_secret(
    vault: &Vault,
    account_id: AccountId,
    sealed: &[u8],
) -> Result<TotpSecret, TotpSealError> {
    let plain = vault
        .open_account_secret(account_id, sealed)
        .map_err(|_| TotpSealError::Open)?;
    TotpSecret::from_bytes(&plain).map_err(|_| TotpSealError::Open)
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
        account_id: AccountId,
        officer_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<IssuedActivation, StorageError> {
        let code = ActivationCode::generate().map_err(|e| StorageError::Refused {
            field: "code",
            reason: e.to_string(),
        })?;
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
