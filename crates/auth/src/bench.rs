//! Figures for `rempart bench auth`: what a password verification, a
//! device-bound proof and (feature `bench-passkey`) a passkey assertion's
//! verification cost on this machine with the parameters in force. Not a
//! test: it reads the clock and prints nothing; the command prints the
//! figures.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use sha2::{Digest, Sha256};

use crate::dpop::{DpopError, DpopProof, Expected, ReplayCache};
use crate::jose::{AlgSet, PublicJwk};
use crate::password::{HashError, HashParams, Password, PasswordHasher};

/// Median times of argon2id operations with one set of parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgonFigures {
    /// The parameters measured.
    pub params: HashParams,
    /// Runs per operation.
    pub samples: usize,
    /// Hashing a new password (fresh salt).
    pub hash_median: Duration,
    /// Verifying a correct password against its hash.
    pub verify_median: Duration,
    /// `verify_or_dummy` for an unknown account: should match `verify_median`.
    pub unknown_account_median: Duration,
}

/// Measures [`HashParams::RECOMMENDED`] (see [`argon2_figures_with`]).
pub fn argon2_figures(samples: usize) -> Result<ArgonFigures, HashError> {
    argon2_figures_with(HashParams::RECOMMENDED, samples)
}

/// Hashes, verifies and dummy-verifies a synthetic password `samples` times
/// each (at least 1) and returns the medians.
pub fn argon2_figures_with(params: HashParams, samples: usize) -> Result<ArgonFigures, HashError> {
    let samples = samples.max(1);
    let hasher = PasswordHasher::new(params)?;
    let password = Password::new("Bench-Passerelle-2031".to_owned())
        .map_err(|_| HashError::Params("benchmark password refused"))?;
    let mut hash_times = Vec::with_capacity(samples);
    let mut verify_times = Vec::with_capacity(samples);
    let mut unknown_times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let hash = hasher.hash(&password)?;
        hash_times.push(start.elapsed());

        let start = Instant::now();
        let ok = hasher.verify(&hash, &password);
        verify_times.push(start.elapsed());
        if !ok {
            return Err(HashError::Argon2);
        }

        let start = Instant::now();
        let ok = hasher.verify_or_dummy(None, &password);
        unknown_times.push(start.elapsed());
        if ok {
            return Err(HashError::Argon2);
        }
    }
    Ok(ArgonFigures {
        params,
        samples,
        hash_median: median(&mut hash_times),
        verify_median: median(&mut verify_times),
        unknown_account_median: median(&mut unknown_times),
    })
}

/// Median cost of checking one device-bound proof (ES256: the browser's
/// WebCrypto key, and API clients' DPoP keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofFigures {
    /// Proofs verified.
    pub samples: usize,
    /// `DpopProof::verify`: parsing, claims, thumbprint, signature, replay.
    pub verify_median: Duration,
}

/// Signs `samples` fresh proofs (outside the timing) with a key made here,
/// as the browser would for one session, and times their verification.
pub fn proof_figures(samples: usize) -> Result<ProofFigures, DpopError> {
    const URL: &str = "https://rempart.example/portail/f/dossiers";
    const HANDLE: &str = "bench-session-handle";
    let samples = samples.max(1);
    let key = p256::ecdsa::SigningKey::generate();
    let public = PublicJwk::from_p256(*key.verifying_key());
    let jwk: serde_json::Value =
        serde_json::from_str(&public.to_json()).map_err(|_| DpopError::Missing)?;
    let now: DateTime<Utc> = Utc::now();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let ath = b64(&Sha256::digest(HANDLE.as_bytes()));
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string();
    let proofs: Vec<String> = (0..samples)
        .map(|i| {
            let claims = serde_json::json!({
                "htm": "GET", "htu": URL, "iat": now.timestamp(),
                "jti": format!("bench-{i}"), "ath": ath,
            })
            .to_string();
            let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            format!("{input}.{}", b64(&sig.to_bytes()))
        })
        .collect();
    let expected = |method: &str| -> Result<Expected, DpopError> {
        Ok(Expected::new(method, URL)
            .map_err(|_| DpopError::Missing)?
            .bound_to(public.thumbprint())
            .with_token(HANDLE)
            .with_algs(AlgSet::ES256))
    };
    let get = expected("GET")?;
    let mut replay = ReplayCache::new(samples + 16);
    let mut verify_times = Vec::with_capacity(samples);
    for proof in &proofs {
        let start = Instant::now();
        DpopProof::verify(proof, &get, now, &mut replay)?;
        verify_times.push(start.elapsed());
    }
    // A replay is refused: the figures are of real checks.
    if proofs
        .first()
        .is_some_and(|p| DpopProof::verify(p, &get, now, &mut replay).is_ok())
    {
        return Err(DpopError::Missing);
    }
    Ok(ProofFigures {
        samples,
        verify_median: median(&mut verify_times),
    })
}

/// Median cost of verifying one passkey assertion on the server (with
/// the `bench-passkey` feature, which brings the software authenticator).
#[cfg(any(feature = "bench-passkey", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasskeyFigures {
    /// Assertions verified.
    pub samples: usize,
    /// `Passkeys::finish_authentication`: client JSON parsing, challenge,
    /// origin and RP id checks, ES256 signature, counter update.
    pub verify_median: Duration,
}

/// Why [`passkey_figures`] could not measure.
#[cfg(any(feature = "bench-passkey", test))]
#[derive(Debug, thiserror::Error)]
pub enum PasskeyBenchError {
    /// The relying party refused a ceremony (a real refusal: no figure).
    #[error(transparent)]
    Passkey(#[from] crate::passkey::PasskeyError),
    /// The relying party's own settings were refused.
    #[error(transparent)]
    Config(#[from] crate::passkey::PasskeyConfigError),
    /// The software authenticator failed.
    #[error("software authenticator: {0}")]
    Authenticator(String),
    /// Options or answers could not cross the JSON boundary.
    #[error("ceremony JSON: {0}")]
    Json(String),
}

/// Registers one passkey with webauthn-authenticator-rs's `SoftPasskey`
/// (real P-256 keys), then `samples` times: starts an account-bound login
/// and lets the soft key sign it (outside the timing), and times the
/// server's `finish_authentication` of the JSON a browser would post. Each
/// round uses the passkey as updated by the previous one (signature
/// counter), as the server stores it.
#[cfg(any(feature = "bench-passkey", test))]
pub fn passkey_figures(samples: usize) -> Result<PasskeyFigures, PasskeyBenchError> {
    use std::time::SystemTime;
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::prelude::Url;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;

    use crate::passkey::{Passkeys, RP_NAME};

    const ORIGIN: &str = "https://rempart.example";
    const ACCOUNT: rempart_domain::AccountId = rempart_domain::AccountId::new(1);
    let samples = samples.max(1);
    let rp = Passkeys::new("rempart.example", ORIGIN, RP_NAME)?;
    let origin = Url::parse(ORIGIN).map_err(|e| PasskeyBenchError::Json(e.to_string()))?;
    let json = |e: serde_json::Error| PasskeyBenchError::Json(e.to_string());
    let soft = |e: webauthn_authenticator_rs::prelude::WebauthnCError| {
        PasskeyBenchError::Authenticator(format!("{e:?}"))
    };
    let mut authenticator = SoftPasskey::new(true);
    let now = SystemTime::now();
    let (options, state) = rp.start_registration(ACCOUNT, "bench", "bench", &[], now)?;
    let options =
        serde_json::from_value(serde_json::to_value(&options).map_err(json)?).map_err(json)?;
    let answer = authenticator
        .do_registration(origin.clone(), options)
        .map_err(soft)?;
    let answer = serde_json::to_string(&answer).map_err(json)?;
    let mut passkey = rp.finish_registration(&state, &answer, &[], now)?;
    let mut times = Vec::with_capacity(samples);
    for round in 1..=samples {
        // A ceremony must start after the passkey's previous one (replay
        // check, in milliseconds): rounds are faster than that here.
        let now = now + Duration::from_millis(round as u64);
        let (options, state) =
            rp.start_authentication(ACCOUNT, std::slice::from_ref(&passkey), now)?;
        let options =
            serde_json::from_value(serde_json::to_value(&options).map_err(json)?).map_err(json)?;
        let answer = authenticator
            .do_authentication(origin.clone(), options)
            .map_err(soft)?;
        let answer = serde_json::to_string(&answer).map_err(json)?;
        let start = Instant::now();
        let done =
            rp.finish_authentication(&state, &answer, std::slice::from_ref(&passkey), now)?;
        times.push(start.elapsed());
        passkey = done.updated;
    }
    Ok(PasskeyFigures {
        samples,
        verify_median: median(&mut times),
    })
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_back_for_small_parameters() {
        let small = HashParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let figures = argon2_figures_with(small, 3).unwrap();
        assert_eq!(figures.params, small);
        assert_eq!(figures.samples, 3);
        assert!(figures.hash_median > Duration::ZERO);
        assert_eq!(argon2_figures_with(small, 0).unwrap().samples, 1);
    }

    #[test]
    fn proof_figures_verify_real_proofs() {
        let f = proof_figures(5).unwrap();
        assert_eq!(f.samples, 5);
        assert!(f.verify_median > Duration::ZERO);
    }

    #[test]
    fn passkey_figures_verify_real_assertions() {
        let f = passkey_figures(3).unwrap();
        assert_eq!(f.samples, 3);
        assert!(f.verify_median > Duration::ZERO);
    }

    #[test]
    fn median_picks_the_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
