//! Figures for `rempart bench auth`: what a password verification costs on
//! this machine with the parameters in force. Not a test: it reads the
//! clock and prints nothing; the command prints the figures.

use std::time::{Duration, Instant};

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
    fn median_picks_the_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
