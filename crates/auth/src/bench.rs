//! Figures for `rempart bench auth`: what a password verification costs on
//! this machine with the parameters in force. Not a test: it reads the
//! clock and prints nothing; the command prints the figures.

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
    fn median_picks_the_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
