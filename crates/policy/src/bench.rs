//! Evaluation throughput of [`Authorizer::allowed_field_groups`], memoized
//! and uncached, on a realistic mix of requests (for `rempart bench …` and
//! the `policy_bench` example). Returns figures; asserts nothing about time.

use std::time::{Duration, Instant};

use rempart_domain::{
    AccountId, AccountState, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};

use crate::{Authorizer, MandateFact, PolicyError, What, Who};

/// How decisions are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// [`Authorizer::allowed_field_groups_uncached`]: entities built and six
    /// Cedar requests evaluated on every call.
    Uncached,
    /// [`Authorizer::allowed_field_groups`], as the consultation path calls
    /// it: memoized when [`Authorizer::memoizes`]. The run starts with the
    /// cache as it finds it, so first occurrences of a key are misses.
    Memoized,
}

/// Figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub mode: Mode,
    /// Threads calling the authorizer at once.
    pub threads: usize,
    /// Calls to `allowed_field_groups`, all threads together.
    pub evaluations: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Decisions per second, all threads together.
    pub evaluations_per_second: f64,
    /// Mean time of one call as seen by its thread, in microseconds
    /// (`elapsed × threads / evaluations`).
    pub micros_per_evaluation: f64,
}

/// What [`compare`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// Calls in the uncached run (≈ 100–200 µs each).
    pub uncached_evaluations: u64,
    /// Calls in each memoized run (well under a microsecond each).
    pub memoized_evaluations: u64,
    /// Mandates on each person of the mix.
    pub mandates_per_person: usize,
    /// Threads of the concurrent memoized run (0 or 1: none).
    pub threads: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            uncached_evaluations: 20_000,
            memoized_evaluations: 2_000_000,
            mandates_per_person: 3,
            threads: 2,
        }
    }
}

/// Uncached against memoized, on the same mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Whether the authorizer memoizes at all (if not, the memoized runs
    /// measure Cedar too).
    pub memoizes: bool,
    /// Distinct requests in the mix (differing at least by an id).
    pub requests: usize,
    pub uncached: BenchReport,
    /// One thread.
    pub memoized: BenchReport,
    /// `threads` threads sharing the authorizer, if asked.
    pub memoized_concurrent: Option<BenchReport>,
    /// Decisions remembered after the runs: the distinct keys of the mix.
    pub cached_decisions: usize,
}

/// Runs `allowed_field_groups` (memoized when the authorizer memoizes, as
/// the consultation path does) `evaluations` times on one thread over the
/// mix of [`sample_cases`].
pub fn bench(
    authorizer: &Authorizer,
    evaluations: u64,
    mandates_per_person: usize,
) -> Result<BenchReport, PolicyError> {
    run(
        authorizer,
        Mode::Memoized,
        1,
        evaluations,
        &sample_cases(mandates_per_person),
    )
}

/// Runs one mode on `threads` threads (at least one) over the mix of
/// [`sample_cases`].
pub fn bench_mode(
    authorizer: &Authorizer,
    mode: Mode,
    threads: usize,
    evaluations: u64,
    mandates_per_person: usize,
) -> Result<BenchReport, PolicyError> {
    run(
        authorizer,
        mode,
        threads,
        evaluations,
        &sample_cases(mandates_per_person),
    )
}

/// The uncached run, then the memoized run on one thread, then on
/// `config.threads` threads.
pub fn compare(authorizer: &Authorizer, config: BenchConfig) -> Result<Comparison, PolicyError> {
    let cases = sample_cases(config.mandates_per_person);
    let uncached = run(
        authorizer,
        Mode::Uncached,
        1,
        config.uncached_evaluations,
        &cases,
    )?;
    let memoized = run(
        authorizer,
        Mode::Memoized,
        1,
        config.memoized_evaluations,
        &cases,
    )?;
    let memoized_concurrent = if config.threads > 1 {
        Some(run(
            authorizer,
            Mode::Memoized,
            config.threads,
            config.memoized_evaluations,
            &cases,
        )?)
    } else {
        None
    };
    Ok(Comparison {
        memoizes: authorizer.memoizes(),
        requests: cases.len(),
        uncached,
        memoized,
        memoized_concurrent,
        cached_decisions: authorizer.cached_decisions(),
    })
}

fn run(
    authorizer: &Authorizer,
    mode: Mode,
    threads: usize,
    evaluations: u64,
    cases: &[(Who, What)],
) -> Result<BenchReport, PolicyError> {
    let threads = threads.max(1);
    let per_thread = evaluations / threads as u64;
    let evaluations = per_thread * threads as u64;
    let start = Instant::now();
    let results: Vec<Result<usize, PolicyError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    // Threads start at different places of the mix.
                    let offset = t * cases.len() / threads;
                    calls(authorizer, mode, per_thread, cases, offset)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(PolicyError::Evaluation("benchmark thread panicked".into()))
                })
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut allowed = 0usize;
    for r in results {
        allowed += r?;
    }
    std::hint::black_box(allowed);
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let n = evaluations as f64;
    Ok(BenchReport {
        mode,
        threads,
        evaluations,
        elapsed,
        evaluations_per_second: n / secs,
        micros_per_evaluation: if evaluations == 0 {
            0.0
        } else {
            secs * threads as f64 * 1e6 / n
        },
    })
}

fn calls(
    authorizer: &Authorizer,
    mode: Mode,
    evaluations: u64,
    cases: &[(Who, What)],
    offset: usize,
) -> Result<usize, PolicyError> {
    let mut allowed = 0usize;
    if cases.is_empty() {
        return Ok(0);
    }
    let mut index = offset % cases.len();
    for _ in 0..evaluations {
        if let Some((who, what)) = cases.get(index) {
            let decision = match mode {
                Mode::Uncached => authorizer.allowed_field_groups_uncached(who, what)?,
                Mode::Memoized => authorizer.allowed_field_groups(who, what)?,
            };
            allowed += decision.groups.len();
        }
        index += 1;
        if index == cases.len() {
            index = 0;
        }
    }
    Ok(allowed)
}

/// A small deterministic generator (xorshift64*), so that every run
/// measures the same mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 32) % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T], fallback: T) -> T {
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(i).copied().unwrap_or(fallback)
    }
}

/// 4096 requests as the consultation path sees them, every one with its
/// own person and `mandates_per_person` mandates:
///
/// - organisations: France Travail 40 %, Missions Locales 20 %, Cap emploi
///   15 %, training providers 15 %, processors 10 %; 20 organisations of
///   each kind, 50 accounts each;
/// - accounts: 90 % agents, the rest managers, officers, security, DPO;
///   97 % active;
/// - purpose: the organisation's own 95 % of the time, any other 5 %;
/// - mandates: one held by the organisation (by it, 60 %; naming this
///   account, 25 %; naming another account, 15 %) for the declared purpose
///   in 85 % of requests, live 90 % of the time; the others held by other
///   organisations, any purpose, live or not;
/// - a written reason (break-glass length 10–60) in 2 % of requests.
pub fn sample_cases(mandates_per_person: usize) -> Vec<(Who, What)> {
    use OrganisationKind::*;
    let mut rng = Rng(0x5EED_CAFE_F00D_1234);
    let mut cases = Vec::with_capacity(4096);
    for _ in 0..4096 {
        let kind = match rng.below(100) {
            0..40 => FranceTravail,
            40..60 => MissionLocale,
            60..75 => CapEmploi,
            75..90 => TrainingProvider,
            _ => Processor,
        };
        let own_purposes: &[Purpose] = match kind {
            FranceTravail => &[Purpose::FollowUp, Purpose::FollowUp, Purpose::Compensation],
            CapEmploi | MissionLocale => &[Purpose::FollowUp],
            TrainingProvider => &[Purpose::Training],
            Processor => &[Purpose::DocumentProcessing],
        };
        let kind_index = OrganisationKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0) as i64;
        let organisation_id = 1_000 * (kind_index + 1) + rng.below(20) as i64;
        let account_id = organisation_id * 100 + rng.below(50) as i64;
        let role = if rng.percent(90) {
            Role::Agent
        } else {
            rng.pick(Role::ALL, Role::Manager)
        };
        let state = if rng.percent(97) {
            AccountState::Active
        } else {
            rng.pick(AccountState::ALL, AccountState::Suspended)
        };
        let purpose = if rng.percent(95) {
            rng.pick(own_purposes, Purpose::FollowUp)
        } else {
            rng.pick(Purpose::ALL, Purpose::FollowUp)
        };
        let mut mandates = Vec::with_capacity(mandates_per_person);
        if mandates_per_person > 0 && rng.percent(85) {
            let account = match rng.below(100) {
                0..60 => None,
                60..85 => Some(account_id),
                _ => Some(account_id + 1),
            };
            mandates.push(MandateFact {
                organisation_id: OrganisationId::new(organisation_id),
                account_id: account.map(AccountId::new),
                purpose,
                live: rng.percent(90),
            });
        }
        while mandates.len() < mandates_per_person {
            mandates.push(MandateFact {
                organisation_id: OrganisationId::new(90_000 + rng.below(500) as i64),
                account_id: None,
                purpose: rng.pick(Purpose::ALL, Purpose::FollowUp),
                live: rng.percent(50),
            });
        }
        let reason_len = if rng.percent(2) {
            10 + rng.below(51) as usize
        } else {
            0
        };
        cases.push((
            Who {
                account_id: AccountId::new(account_id),
                login: format!("agent-{account_id}"),
                role,
                state,
                organisation_id: OrganisationId::new(organisation_id),
                kind,
            },
            What {
                person_id: PersonId::new(1 + rng.below(5_000_000) as i64),
                purpose,
                mandates,
                reason_len,
            },
        ));
    }
    cases
}
