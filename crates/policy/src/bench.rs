//! Evaluation throughput of [`Authorizer::allowed_field_groups`], for
//! `rempart bench consult`. Returns figures; asserts nothing about time.

use std::time::{Duration, Instant};

use rempart_domain::{AccountState, OrganisationKind, Purpose, Role};

use crate::{Authorizer, MandateFact, PolicyError, What, Who};

/// Figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Calls to `allowed_field_groups` (each builds entities and evaluates
    /// six Cedar requests).
    pub evaluations: u64,
    pub elapsed: Duration,
    pub evaluations_per_second: f64,
    /// Mean time of one call, in microseconds.
    pub micros_per_evaluation: f64,
}

/// Runs `allowed_field_groups` `evaluations` times over a rotating mix of
/// requests (agency, partner, training provider, processor; live, expired,
/// other account, no mandate), each with `mandates_per_person` mandates.
pub fn bench(
    authorizer: &Authorizer,
    evaluations: u64,
    mandates_per_person: usize,
) -> Result<BenchReport, PolicyError> {
    let cases = sample_cases(mandates_per_person);
    let start = Instant::now();
    let mut allowed = 0usize;
    for i in 0..evaluations {
        let index = usize::try_from(i).unwrap_or(0) % cases.len().max(1);
        if let Some((who, what)) = cases.get(index) {
            allowed += authorizer.allowed_field_groups(who, what)?.groups.len();
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(allowed);
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let n = evaluations as f64;
    Ok(BenchReport {
        evaluations,
        elapsed,
        evaluations_per_second: n / secs,
        micros_per_evaluation: if evaluations == 0 {
            0.0
        } else {
            secs * 1e6 / n
        },
    })
}

fn sample_cases(mandates_per_person: usize) -> Vec<(Who, What)> {
    let kinds = [
        (OrganisationKind::FranceTravail, Purpose::FollowUp),
        (OrganisationKind::CapEmploi, Purpose::FollowUp),
        (OrganisationKind::MissionLocale, Purpose::FollowUp),
        (OrganisationKind::TrainingProvider, Purpose::Training),
        (OrganisationKind::Processor, Purpose::DocumentProcessing),
    ];
    let mut cases = Vec::new();
    for (k, (kind, purpose)) in kinds.into_iter().enumerate() {
        let org = 100 + k as i64;
        let who = Who {
            account_id: 1_000 + k as i64,
            login: format!("agent-{k}"),
            role: Role::Agent,
            state: AccountState::Active,
            organisation_id: org,
            kind,
        };
        for variant in 0..4i64 {
            let mut mandates: Vec<MandateFact> = (0..mandates_per_person.saturating_sub(1))
                .map(|j| MandateFact {
                    organisation_id: 900 + j as i64,
                    account_id: None,
                    purpose: Purpose::FollowUp,
                    live: j % 2 == 0,
                })
                .collect();
            if mandates_per_person > 0 && variant < 3 {
                mandates.push(MandateFact {
                    organisation_id: org,
                    account_id: (variant == 2).then_some(who.account_id + 1),
                    purpose,
                    live: variant == 0,
                });
            }
            cases.push((
                who.clone(),
                What {
                    person_id: 5_000 + variant,
                    purpose,
                    mandates,
                    reason_len: 0,
                },
            ));
        }
    }
    cases
}
