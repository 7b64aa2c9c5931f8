//! `rempart bench search-oracle`: can a search's response time tell "this
//! NIR exists, but is not yours" from "this NIR does not exist"?
//!
//! Both answers are the same empty list; if one costs more (a registry read,
//! a second durable append), a caller timing its searches learns whether a
//! person is registered without ever being shown them. On an imported
//! population, one Cap emploi agent searches, one request at a time and in
//! shuffled order, NIRs of three kinds: persons outside its scope (held by a
//! Mission Locale), NIRs that no one has, and (the control) persons of its
//! own caseload, which are shown and so must be told apart.
//!
//! The classifier is the reviewer's: a threshold on the response time. It
//! is fitted on half the samples (every other one: the threshold and the
//! side that maximise accuracy) and scored on the other half. Chance is
//! 50%; the control shows the classifier can see a difference that exists.
//! The real guard decides on every search, with the load-test thresholds
//! (`bench/guard-load-test.toml`) so that hundreds of searches are measured,
//! not refused.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use rempart_domain::{FieldGroup, Nir, OrganisationKind, PersonId, Purpose};
use rempart_vault::Read;
use serde_json::json;
use tokio::net::TcpListener;

use rempart_server::{App, GuardChoice, ServerConfig};

use crate::accounts::issue;
use crate::bench::{bench_guard_config, busiest_agent};
use crate::location::Location;

/// Arguments of `rempart bench search-oracle`.
#[derive(Args)]
pub struct BenchOracleArgs {
    #[command(flatten)]
    pub location: Location,
    /// Searches of each kind.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(20..=100_000))]
    pub tries: u32,
}

/// What a searched NIR is, for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In its caseload: shown.
    Own,
    /// Registered, outside its scope: an empty answer.
    Elsewhere,
    /// Registered nowhere: an empty answer.
    Absent,
}

/// Runs the benchmark and prints its figures.
pub async fn bench_search_oracle(args: &BenchOracleArgs) -> Result<()> {
    let tries = args.tries as usize;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = App::build(
        ServerConfig::new(args.location.server().storage())
            .with_guard(GuardChoice::real(bench_guard_config()?)),
    )
    .await?;
    let store = app.consultation().store().clone();
    let vault = app.consultation().vault().clone();
    let purpose = Purpose::FollowUp;
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
    else {
        bail!("no active Cap emploi agent with a caseload: import a generated population first");
    };
    let Some((_, theirs)) =
        busiest_agent(&store, OrganisationKind::MissionLocale, purpose, 200).await?
    else {
        bail!(
            "no active Mission Locale agent with a caseload: import a generated population first"
        );
    };
    let elsewhere: Vec<PersonId> = theirs
        .into_iter()
        .filter(|p| !caseload.contains(p))
        .collect();
    let nirs_of = |ids: Vec<PersonId>| {
        let vault = vault.clone();
        async move {
            let mut nirs = Vec::new();
            for id in ids.into_iter().take(50) {
                if let Read::Found(view) = vault.read(id, &[FieldGroup::Nir]).await?
                    && let Some(nir) = view.nir
                {
                    nirs.push(nir);
                }
            }
            Ok::<Vec<Nir>, anyhow::Error>(nirs)
        }
    };
    let own = nirs_of(caseload.clone()).await?;
    let elsewhere = nirs_of(elsewhere).await?;
    if own.is_empty() || elsewhere.is_empty() {
        bail!("no NIR to search in the caseloads found");
    }
    let mut absent = Vec::new();
    let mut rng = rand::rng();
    while absent.len() < 50 {
        let nir = random_nir(&mut rng)?;
        if vault.find_by_nir(&nir).await?.is_empty() {
            absent.push(nir);
        }
    }
    let credential = issue(&store, &agent, 1).await?;
    println!(
        "account {} ({} agent of {}), {} searches of each kind (own caseload, elsewhere, absent), one at a time, shuffled",
        agent.login, agent.kind, agent.organisation, tries
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()?;
    let url = format!("http://{addr}/api/v1/search");
    let mut plan: Vec<(Kind, usize)> = Vec::with_capacity(3 * tries + 60);
    for i in 0..tries {
        plan.extend([(Kind::Own, i), (Kind::Elsewhere, i), (Kind::Absent, i)]);
    }
    plan.shuffle(&mut rng);
    // Warm-up: 20 of each first, not measured.
    let warm: Vec<(Kind, usize)> = (0..20)
        .flat_map(|i| [(Kind::Own, i), (Kind::Elsewhere, i), (Kind::Absent, i)])
        .collect();
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut unexpected = 0u32;
    // Kind, status, persons shown and error code of the first (no value).
    let mut first_unexpected = None;
    for (n, (kind, i)) in warm.iter().chain(plan.iter()).enumerate() {
        let nir = match kind {
            Kind::Own => &own[i % own.len()],
            Kind::Elsewhere => &elsewhere[i % elsewhere.len()],
            Kind::Absent => &absent[i % absent.len()],
        };
        let body = json!({"nir": nir.as_str(), "purpose": purpose.as_str()});
        let request = client
            .post(&url)
            .bearer_auth(credential.token.as_str())
            .json(&body);
        let t = Instant::now();
        let response = request.send().await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await?;
        let elapsed = t.elapsed().as_secs_f64() * 1e6;
        let shown = answer["persons"].as_array().map_or(0, Vec::len);
        let expected = if *kind == Kind::Own { 1 } else { 0 };
        if !status.is_success() || shown != expected {
            unexpected += 1;
            first_unexpected.get_or_insert((
                *kind,
                status.as_u16(),
                shown,
                answer["error"]["code"].as_str().unwrap_or("").to_string(),
            ));
        }
        if n >= warm.len() {
            times[*kind as usize].push(elapsed);
        }
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    if unexpected > 0 {
        bail!(
            "{unexpected} searches answered other than expected (refused, or a person shown out of scope); the first (kind, status, persons shown, error code): {first_unexpected:?}"
        );
    }

    let [own_t, elsewhere_t, absent_t] = &times;
    for (name, t) in [
        ("own caseload (shown)", own_t),
        ("elsewhere (empty)", elsewhere_t),
        ("absent (empty)", absent_t),
    ] {
        println!(
            "{name:<22} p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
            percentile(t, 0.5),
            percentile(t, 0.9),
            percentile(t, 0.99)
        );
    }
    let oracle = held_out_accuracy(elsewhere_t, absent_t);
    let control = held_out_accuracy(own_t, absent_t);
    println!(
        "threshold classifier, held-out accuracy: elsewhere vs absent {:.1}% (chance 50%), control own vs absent {:.1}%",
        oracle * 100.0,
        control * 100.0
    );
    println!(
        "RESULT elsewhere_p50_us={:.1} absent_p50_us={:.1} own_p50_us={:.1} oracle_accuracy={:.3} control_accuracy={:.3}",
        percentile(elsewhere_t, 0.5),
        percentile(absent_t, 0.5),
        percentile(own_t, 0.5),
        oracle,
        control
    );
    Ok(())
}

/// A valid NIR drawn at random (checksum right, plausible fields).
fn random_nir(rng: &mut impl RngCore) -> Result<Nir> {
    let mut digits = [0u8; 13];
    let text = format!(
        "{}{:02}{:02}75{:03}{:03}",
        rng.random_range(1..=2),
        rng.random_range(40..=99),
        rng.random_range(1..=12),
        rng.random_range(1..=999),
        rng.random_range(1..=999),
    );
    for (d, c) in digits.iter_mut().zip(text.bytes()) {
        *d = c;
    }
    Nir::with_key(&digits).context("a random NIR")
}

/// The `p`-quantile of `samples` (nearest rank).
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1));
    v.get(i).copied().unwrap_or(0.0)
}

/// A threshold on the time, fitted on every other sample of `a` and `b`
/// (the cut and side that classify them best), scored on the rest: the
/// share of held-out samples it puts in their class.
fn held_out_accuracy(a: &[f64], b: &[f64]) -> f64 {
    let half = |v: &[f64], r: usize| -> Vec<f64> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == r)
            .map(|(_, t)| *t)
            .collect()
    };
    let (train_a, train_b, test_a, test_b) = (half(a, 0), half(b, 0), half(a, 1), half(b, 1));
    // Accuracy of "a if t < cut" (or the opposite side) on two sets.
    let score = |xa: &[f64], xb: &[f64], cut: f64, a_below: bool| -> f64 {
        let right = xa.iter().filter(|t| (**t < cut) == a_below).count()
            + xb.iter().filter(|t| (**t < cut) != a_below).count();
        right as f64 / (xa.len() + xb.len()).max(1) as f64
    };
    let mut best = (0.0, f64::INFINITY, true);
    for &cut in train_a.iter().chain(&train_b) {
        for side in [true, false] {
            let s = score(&train_a, &train_b, cut, side);
            if s > best.0 {
                best = (s, cut, side);
            }
        }
    }
    score(&test_a, &test_b, best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classifier_sees_a_difference_and_no_more() {
        let slow: Vec<f64> = (0..100).map(|i| 2000.0 + f64::from(i)).collect();
        let fast: Vec<f64> = (0..100).map(|i| 1000.0 + f64::from(i)).collect();
        assert!((held_out_accuracy(&slow, &fast) - 1.0).abs() < 1e-9);
        // Interleaved, alike: no cut fitted on one half does well on the other.
        let a: Vec<f64> = (0..100).map(|i| f64::from(2 * i)).collect();
        let b: Vec<f64> = (0..100).map(|i| f64::from(2 * i + 1)).collect();
        let acc = held_out_accuracy(&a, &b);
        assert!((0.4..=0.6).contains(&acc), "{acc}");
    }

    #[test]
    fn random_nirs_are_valid() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let nir = random_nir(&mut rng).unwrap();
            assert_eq!(Nir::parse(nir.as_str()).unwrap(), nir);
        }
    }
}
