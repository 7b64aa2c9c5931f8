//! What can go wrong with passkeys, each variant naming what failed.
//!
//! No variant carries a challenge, a signature or any value sent by the
//! client: only field names, account ids and fixed reasons, so errors can be
//! logged and written to the ledger as they are.

use rempart_domain::AccountId;
use webauthn_rs::prelude::WebauthnError;

/// A relying-party setting given to [`super::Passkeys::new`] or
/// [`super::Passkeys::with_max_ages`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyConfigError {
    /// `rp_id` must be a bare lowercase domain name (no scheme, port or path).
    #[error("rp_id: {reason}")]
    RpId {
        /// Why the value was refused.
        reason: &'static str,
    },
    /// `rp_origin` must be an https origin (http only for localhost) on
    /// `rp_id` or one of its subdomains.
    #[error("rp_origin: {reason}")]
    RpOrigin {
        /// Why the value was refused.
        reason: &'static str,
    },
    /// `rp_name` is shown by browsers and authenticators.
    #[error("rp_name: {reason}")]
    RpName {
        /// Why the value was refused.
        reason: &'static str,
    },
    /// A ceremony lifetime is out of range.
    #[error("{field}: {reason}")]
    MaxAge {
        /// `ceremony_max_age` or `step_up_max_age`.
        field: &'static str,
        /// Why the value was refused.
        reason: &'static str,
    },
}

/// A passkey ceremony was refused.
///
/// Callers show the person one generic message ("la clé d'accès n'a pas pu
/// être vérifiée") whatever the variant; the variant is for logs and the
/// ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyError {
    /// A value given when starting a ceremony is unusable.
    #[error("{field}: {reason}")]
    InvalidInput {
        /// `login`, `display_name` or `passkeys`.
        field: &'static str,
        /// Why the value was refused.
        reason: &'static str,
    },
    /// The account has no passkey, so no account-bound ceremony can start.
    #[error("passkeys: the account has no passkey")]
    NoPasskey,
    /// `now` lies before 1970: the caller's clock is broken.
    #[error("now: before the Unix epoch")]
    ClockBeforeEpoch,
    /// The client's JSON could not be read.
    #[error("client response: {field}: {reason}")]
    MalformedClientJson {
        /// Dotted path of the offending field (`response.clientDataJSON`),
        /// or `(body)` for the document itself.
        field: String,
        /// What was wrong with it, never the value itself.
        reason: &'static str,
    },
    /// The JSON was well formed but a binary part inside it was not.
    #[error("client response: {reason}")]
    MalformedAuthenticatorData {
        /// Which part could not be decoded.
        reason: &'static str,
    },
    /// The ceremony was started longer ago than allowed.
    #[error("ceremony: started {age_secs} s ago, at most {max_secs} s allowed")]
    StaleCeremony {
        /// Seconds since the ceremony started.
        age_secs: u64,
        /// The limit that applies to this kind of ceremony.
        max_secs: u64,
    },
    /// The ceremony claims to start after `now` (clock skew or forged state).
    #[error("ceremony: starts in the future")]
    CeremonyInFuture,
    /// This credential already completed a ceremony started at the same
    /// time or later: the same state is being finished twice.
    #[error("ceremony: already finished (replay)")]
    CeremonyReplayed,
    /// A registration response was given to an authentication or the reverse.
    #[error("clientDataJSON.type: not the expected ceremony type")]
    WrongCeremonyType,
    /// The signed challenge is not the one this ceremony issued.
    #[error("clientDataJSON.challenge: does not match the ceremony")]
    ChallengeMismatch,
    /// The page that ran the ceremony is not our origin (phishing, or a
    /// misconfigured `rp_origin`).
    #[error("clientDataJSON.origin: not an allowed origin")]
    OriginMismatch,
    /// The authenticator signed for another relying party id.
    #[error("authenticatorData.rpIdHash: not our relying party id")]
    RpIdMismatch,
    /// The user-present flag is not set.
    #[error("authenticatorData.flags: user presence missing")]
    UserPresenceMissing,
    /// The user-verified flag is not set: no PIN or biometric was checked,
    /// so the passkey is not a factor on its own.
    #[error("authenticatorData.flags: user verification missing")]
    UserVerificationMissing,
    /// The credential is not one this ceremony allows, or not among the
    /// stored passkeys handed to the finish call.
    #[error("rawId: unknown credential")]
    UnknownCredential,
    /// The credential belongs to another account than the ceremony's.
    #[error(
        "rawId: credential of account {credential_account}, ceremony for account {ceremony_account}"
    )]
    WrongAccount {
        /// The account the ceremony was started for.
        ceremony_account: AccountId,
        /// The account the credential is registered to.
        credential_account: AccountId,
    },
    /// A username-less assertion came without `response.userHandle`.
    #[error("response.userHandle: missing")]
    UserHandleMissing,
    /// `response.userHandle` is not the one stored with the credential.
    #[error("response.userHandle: does not match the credential")]
    UserHandleMismatch,
    /// The signature does not verify with the stored public key.
    #[error("response.signature: does not verify")]
    SignatureInvalid,
    /// The signature counter did not increase: the authenticator may have
    /// been cloned. The credential should be reviewed before further use.
    #[error("authenticatorData.signCount: did not increase (possible cloned authenticator)")]
    CounterRegression,
    /// The backup flags changed in a way a genuine authenticator does not.
    #[error("authenticatorData.flags: backup state inconsistent with registration")]
    BackupStateInconsistent,
    /// The credential is already registered (to this account, or the same
    /// registration is being finished twice).
    #[error("rawId: credential already registered")]
    CredentialAlreadyRegistered,
    /// The credential's algorithm was not offered or is not accepted.
    #[error("credential public key: algorithm refused")]
    AlgorithmRefused,
    /// The attestation statement does not verify.
    #[error("response.attestationObject: attestation statement invalid")]
    AttestationInvalid,
    /// A stored passkey could not be read back (corrupt or edited row).
    #[error("stored passkey: {reason}")]
    CorruptStoredPasskey {
        /// What is inconsistent.
        reason: &'static str,
    },
    /// Any other refusal from the WebAuthn library.
    #[error("webauthn: {reason}")]
    Refused {
        /// The library's fixed description of the failure.
        reason: String,
    },
}

impl From<WebauthnError> for PasskeyError {
    fn from(error: WebauthnError) -> Self {
        use WebauthnError as W;
        match error {
            W::InvalidClientDataType => Self::WrongCeremonyType,
            W::MismatchedChallenge => Self::ChallengeMismatch,
            W::InvalidRPOrigin | W::CredentialCrossOrigin => Self::OriginMismatch,
            W::InvalidRPIDHash => Self::RpIdMismatch,
            W::UserNotPresent => Self::UserPresenceMissing,
            W::UserNotVerified => Self::UserVerificationMissing,
            W::CredentialNotFound => Self::UnknownCredential,
            W::CredentialPossibleCompromise => Self::CounterRegression,
            W::CredentialBackupEligibilityInconsistent | W::CredentialMayNotBeHardwareBound => {
                Self::BackupStateInconsistent
            }
            W::AuthenticationFailure => Self::SignatureInvalid,
            W::CredentialExcludedFromRequest | W::CredentialAlreadyExists => {
                Self::CredentialAlreadyRegistered
            }
            W::CredentialInsecureCryptography
            | W::CredentialAlteredAlgFromRequest
            | W::COSEKeyInvalidAlgorithm
            | W::COSEKeyEDUnsupported => Self::AlgorithmRefused,
            W::InvalidUserUniqueId => Self::UserHandleMismatch,
            W::ParseBase64Failure(_) => Self::MalformedAuthenticatorData {
                reason: "a base64 field does not decode",
            },
            W::ParseCBORFailure(_) => Self::MalformedAuthenticatorData {
                reason: "a CBOR structure does not decode",
            },
            W::ParseJSONFailure(_) => Self::MalformedAuthenticatorData {
                reason: "response.clientDataJSON is not the expected JSON",
            },
            W::ParseNOMFailure | W::ParseInsufficientBytesAvailable => {
                Self::MalformedAuthenticatorData {
                    reason: "authenticator data is truncated or invalid",
                }
            }
            W::COSEKeyInvalidCBORValue
            | W::COSEKeyInvalidType
            | W::COSEKeyECDSAXYInvalid
            | W::COSEKeyRSANEInvalid
            | W::COSEKeyECDSAInvalidCurve
            | W::COSEKeyEDDSAXInvalid
            | W::COSEKeyEDDSAInvalidCurve => Self::MalformedAuthenticatorData {
                reason: "credential public key is invalid",
            },
            W::MissingAttestationCredentialData
            | W::AttestationNotSupported
            | W::AttestationStatementMapInvalid
            | W::AttestationStatementResponseMissing
            | W::AttestationStatementResponseInvalid
            | W::AttestationStatementSigMissing
            | W::AttestationStatementSigInvalid
            | W::AttestationStatementVerMissing
            | W::AttestationStatementVerInvalid
            | W::AttestationStatementVerUnsupported
            | W::AttestationStatementX5CMissing
            | W::AttestationStatementX5CInvalid
            | W::AttestationStatementAlgMissing
            | W::AttestationStatementCertInfoMissing
            | W::AttestationStatementMissingExtension
            | W::AttestationStatementPubAreaMissing
            | W::AttestationStatementAlgMismatch
            | W::AttestationStatementAlgInvalid
            | W::AttestationTrustFailure
            | W::AttestationCredentialSubjectKeyMismatch => Self::AttestationInvalid,
            // The library's messages are fixed texts, never input values.
            other => Self::Refused {
                reason: other.to_string(),
            },
        }
    }
}
