//! The guard as the consultation path sees it: attempts in, decisions
//! out, over the in-memory store (the database backends run the same
//! store scenarios in `rempart-storage`).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rempart_domain::{
    AccountId, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};

use super::*;
use crate::store::SuspensionBlock;
use crate::store::memory::MemoryStore;

/// Tuesday 13 January 2026, 09:00 in Paris.
fn day0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-13T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn mins(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}

fn facts(account: i64, org: i64) -> AccountFacts {
    AccountFacts {
        account_id: AccountId::new(account),
        organisation_id: OrganisationId::new(org),
        role: Role::Agent,
        created_at: Some(day0() - TimeDelta::days(400)),
        peer: PeerGroup::of(OrganisationKind::CapEmploi, Some("38")),
    }
}

fn session(device: u8) -> SessionFacts {
    SessionFacts {
        session_id: [device; 16],
        high_risk: false,
        device: Some([device; 16]),
        network: Some([100 + device; 16]),
        stepped_up_at: None,
    }
}

/// The account's own workstation: a device and a network no other
/// account uses (accounts sharing a new one is a signal of its own).
fn home(account: i64) -> SessionFacts {
    let digest = |tag: u8| {
        let mut d = [tag; 16];
        d[8..].copy_from_slice(&account.to_be_bytes());
        d
    };
    SessionFacts {
        session_id: digest(0xC0),
        high_risk: false,
        device: Some(digest(0xD0)),
        network: Some(digest(0xE0)),
        stepped_up_at: None,
    }
}

const SHOWN: [FieldGroup; 3] = [
    FieldGroup::Identity,
    FieldGroup::Contact,
    FieldGroup::Status,
];

fn read(account: i64, person: i64, at: DateTime<Utc>) -> Attempt {
    Attempt {
        at,
        account: facts(account, 10),
        session: home(account),
        kind: AttemptKind::ReadPerson,
        person_id: Some(PersonId::new(person)),
        purpose: Some(Purpose::FollowUp),
        fields: Fields::of(&SHOWN, false),
        new_mandate: false,
    }
}

fn search(account: i64, at: DateTime<Utc>) -> Attempt {
    Attempt {
        kind: AttemptKind::Search(SearchKind::Nir),
        person_id: None,
        fields: Fields::NONE,
        ..read(account, 0, at)
    }
}

fn lenient_sync() -> GuardConfig {
    let mut c = GuardConfig::default();
    // Tests move simulated time by hours between syncs.
    c.sync.max_staleness_secs = u32::MAX;
    c
}

async fn open(config: GuardConfig) -> (Guard, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let guard = Guard::open(config, store.clone(), 1, day0() - TimeDelta::days(60))
        .await
        .unwrap();
    (guard, store)
}

async fn verdict(g: &Guard, a: &Attempt) -> Verdict {
    g.check(a).await.unwrap().verdict
}

fn features(d: &GuardDecision) -> Vec<Feature> {
    d.alert
        .as_ref()
        .map(|a| a.explanation.iter().map(|e| e.feature).collect())
        .unwrap_or_default()
}

fn line(d: &GuardDecision, f: Feature) -> Explanation {
    *d.alert
        .as_ref()
        .and_then(|a| a.explanation.iter().find(|e| e.feature == f))
        .unwrap_or_else(|| panic!("{f} not in {:?}", d.alert))
}

/// A normal working day of one advisor: `persons` persons of a caseload of
/// 250, between 9:00 and 17:00 local, with re-reads, a few searches and
/// caseload pages. Returns the decisions that were not Allow.
async fn working_day(
    g: &Guard,
    account: i64,
    start: DateTime<Utc>,
    persons: i64,
) -> Vec<GuardDecision> {
    let mut refused = Vec::new();
    let step = 8 * 60 / persons; // minutes between new persons
    for i in 0..persons {
        let at = start + mins(i * step);
        let person = account * 1000 + (i * 37 + start.timestamp() / 86_400) % 250;
        for a in [
            read(account, person, at),
            read(account, person, at + mins(2)),
        ] {
            let d = g.check(&a).await.unwrap();
            if d.verdict != Verdict::Allow {
                refused.push(d);
            }
        }
        if i % 6 == 0 {
            let d = g.check(&search(account, at + mins(3))).await.unwrap();
            if d.verdict != Verdict::Allow {
                refused.push(d);
            }
        }
        if i % 20 == 0 {
            let list = Attempt {
                kind: AttemptKind::ListCaseload,
                person_id: None,
                fields: Fields::NONE,
                ..read(account, 0, at)
            };
            assert_eq!(verdict(g, &list).await, Verdict::Allow);
        }
        if i % 10 == 9 {
            g.sync(at).await.unwrap();
        }
    }
    g.sync(start + TimeDelta::hours(9)).await.unwrap();
    refused
}

#[tokio::test]
async fn a_normal_working_day_is_allowed_without_any_alert() {
    let (g, store) = open(lenient_sync()).await;
    // First day ever (no history at all), then three weeks of history.
    for d in 0..22 {
        let start = day0() + TimeDelta::days(d);
        if LocalTime::of(start, 84).weekday >= 5 {
            continue;
        }
        let refused = working_day(&g, 7, start, 60).await;
        assert!(refused.is_empty(), "day {d}: {refused:?}");
    }
    let stored = g
        .alerts(&AlertQuery {
            limit: 100,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert!(stored.is_empty());
    drop(store);
}

#[tokio::test]
async fn a_burst_within_the_caseload_is_throttled_within_50_records() {
    let (g, _) = open(lenient_sync()).await;
    working_day(&g, 7, day0(), 60).await;
    // The next morning, the account reads its own caseload as fast as it can.
    let start = day0() + TimeDelta::days(1);
    let mut shown = 0;
    let mut first_refusal = None;
    for i in 0..300 {
        let d = g
            .check(&read(7, 7000 + i % 250, start + TimeDelta::seconds(i * 2)))
            .await
            .unwrap();
        if d.lets_through() {
            shown += 1;
        } else if first_refusal.is_none() {
            first_refusal = Some(d);
        }
    }
    assert!(shown <= 50, "{shown} records read before containment");
    let d = first_refusal.expect("the burst was stopped");
    let alert = d.alert.expect("a refusal comes with an alert");
    assert!(alert.fresh && !alert.explanation.is_empty());
    assert!(
        alert.explanation.iter().any(|e| matches!(
            e.feature,
            Feature::PersonsPerHour | Feature::VolumeVsOwn | Feature::VolumeVsPeers
        )),
        "{alert:?}"
    );
}

#[tokio::test]
async fn a_script_that_keeps_going_after_refusals_is_suspended() {
    let (g, _) = open(lenient_sync()).await;
    let mut last = Verdict::Allow;
    let mut shown = 0;
    for i in 0..200 {
        let d = g
            .check(&read(7, 7000 + i, day0() + TimeDelta::seconds(i)))
            .await
            .unwrap();
        shown += u32::from(d.lets_through());
        last = d.verdict;
        if last >= Verdict::Suspend {
            let a = d.alert.unwrap();
            assert_eq!(a.kind, AlertKind::Persistence);
            assert_eq!(
                line(
                    &GuardDecision {
                        verdict: last,
                        alert: Some(a.clone()),
                        suspends_account: true,
                    },
                    Feature::Refusals
                )
                .baseline,
                20.0
            );
            break;
        }
    }
    assert_eq!(last, Verdict::Suspend);
    assert!(shown <= 40, "{shown}");
    // Still suspended on the next attempt, even for a person already shown.
    assert_eq!(
        verdict(&g, &read(7, 7000, day0() + mins(5))).await,
        Verdict::Suspend
    );
}

#[tokio::test]
async fn quotas_count_distinct_persons_and_reset_with_the_window() {
    let (g, _) = open(lenient_sync()).await;
    for i in 0..40 {
        assert_eq!(
            verdict(&g, &read(7, i, day0() + TimeDelta::seconds(i * 60))).await,
            Verdict::Allow,
            "{i}"
        );
    }
    // Re-reading someone already shown gives nothing new: allowed.
    assert_eq!(
        verdict(&g, &read(7, 3, day0() + mins(41))).await,
        Verdict::Allow
    );
    let d = g.check(&read(7, 40, day0() + mins(42))).await.unwrap();
    assert_eq!(d.verdict, Verdict::Throttle);
    let l = line(&d, Feature::PersonsPerHour);
    assert_eq!((l.value, l.baseline), (41.0, 40.0));
    assert_eq!(
        d.alert.as_ref().map(|a| a.kind),
        Some(AlertKind::AccountQuota)
    );
    // An hour after the first reads, there is room again.
    assert_eq!(
        verdict(&g, &read(7, 40, day0() + mins(62))).await,
        Verdict::Allow
    );
    // Another account is not affected.
    assert_eq!(
        verdict(&g, &read(8, 40, day0() + mins(42))).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn the_day_quota_holds_across_hours() {
    let mut c = lenient_sync();
    c.account.persons = Limit {
        per_hour: 30,
        per_day: 50,
    };
    let (g, _) = open(c).await;
    let mut shown = 0;
    for i in 0..80 {
        // 10 per hour: never the hour limit.
        let d = g.check(&read(7, i, day0() + mins(i * 6))).await.unwrap();
        if d.lets_through() {
            shown += 1;
        } else {
            assert!(features(&d).contains(&Feature::PersonsPerDay), "{d:?}");
        }
    }
    assert_eq!(shown, 50);
}

#[tokio::test]
async fn young_accounts_and_post_reset_sessions_get_lower_limits() {
    let (g, _) = open(lenient_sync()).await;
    let young = |person: i64, at| Attempt {
        account: AccountFacts {
            created_at: Some(day0() - TimeDelta::days(3)),
            ..facts(20, 10)
        },
        ..read(20, person, at)
    };
    let post_reset = |person: i64, at| Attempt {
        session: SessionFacts {
            high_risk: true,
            ..home(21)
        },
        ..read(21, person, at)
    };
    let count = |v: Vec<Verdict>| v.iter().take_while(|v| v.lets_through()).count();
    let mut y = Vec::new();
    let mut r = Vec::new();
    for i in 0..40 {
        let at = day0() + TimeDelta::seconds(i * 60);
        y.push(verdict(&g, &young(i, at)).await);
        r.push(g.check(&post_reset(i, at)).await.unwrap());
    }
    assert_eq!(count(y), 16, "40% of 40");
    let allowed = r.iter().take_while(|d| d.lets_through()).count();
    // The post-reset feature alone asks for nothing; the quota is 25% of 40.
    assert_eq!(allowed, 10);
    assert!(features(&r[10]).contains(&Feature::PersonsPerHour));
    assert!(features(&r[10]).contains(&Feature::PostReset));
}

#[tokio::test]
async fn nir_searches_and_break_glass_have_their_own_quotas() {
    let (g, _) = open(lenient_sync()).await;
    let nir = |p: i64, at| Attempt {
        fields: Fields::of(&[FieldGroup::Identity, FieldGroup::Nir], true),
        ..read(30, p, at)
    };
    let mut c = GuardConfig::default();
    c.account.nir_reveals = Limit {
        per_hour: 5,
        per_day: 10,
    };
    let (g2, _) = open(GuardConfig {
        sync: lenient_sync().sync,
        ..c
    })
    .await;
    let mut shown = 0;
    for i in 0..8 {
        shown += u32::from(
            g2.check(&nir(i, day0() + mins(i)))
                .await
                .unwrap()
                .lets_through(),
        );
    }
    assert_eq!(shown, 5);
    // Masked NIRs are not reveals.
    let masked = |p: i64, at| Attempt {
        fields: Fields::of(&[FieldGroup::Identity, FieldGroup::Nir], false),
        ..read(31, p, at)
    };
    for i in 0..8 {
        assert!(
            g2.check(&masked(i, day0() + mins(i)))
                .await
                .unwrap()
                .lets_through()
        );
    }
    // Searches: 60 per hour by default.
    let mut searches = 0;
    for i in 0..70 {
        searches += u32::from(
            g.check(&search(32, day0() + TimeDelta::seconds(i * 30)))
                .await
                .unwrap()
                .lets_through(),
        );
    }
    assert_eq!(searches, 60);
    // Break-glass: 3 per hour.
    let bg = |p: i64, at| Attempt {
        kind: AttemptKind::BreakGlass,
        fields: Fields::NONE,
        ..read(33, p, at)
    };
    let mut glass = Vec::new();
    for i in 0..5 {
        glass.push(g.check(&bg(i, day0() + mins(i * 10))).await.unwrap());
    }
    assert_eq!(glass.iter().filter(|d| d.lets_through()).count(), 3);
    assert!(
        features(&glass[3]).contains(&Feature::BreakGlassPerHour),
        "{:?}",
        glass[3]
    );
    assert!(
        features(&glass[3]).contains(&Feature::BreakGlassRate),
        "{:?}",
        glass[3]
    );
}

#[tokio::test]
async fn evening_bulk_reading_from_a_new_device_asks_for_a_step_up() {
    let (g, _) = open(lenient_sync()).await;
    for d in 0..3 {
        working_day(&g, 7, day0() + TimeDelta::days(d), 40).await;
    }
    // Evening of day 3, 21:00 local, another device.
    let evening = day0() + TimeDelta::days(3) + TimeDelta::hours(12);
    let from_thief = |p: i64, at| Attempt {
        session: session(9),
        ..read(7, p, at)
    };
    let mut decisions = Vec::new();
    for i in 0..10 {
        decisions.push(
            g.check(&from_thief(7000 + i, evening + mins(i)))
                .await
                .unwrap(),
        );
    }
    let first_stop = decisions
        .iter()
        .position(|d| !d.lets_through())
        .expect("stopped");
    assert!(first_stop <= 5, "{first_stop}");
    let d = &decisions[first_stop];
    assert_eq!(d.verdict, Verdict::StepUp);
    let off = line(d, Feature::OffHours);
    assert_eq!(off.baseline, 0.0, "this account never works in the evening");
    let dev = line(d, Feature::NewDevice);
    assert_eq!(dev.baseline, 1.0, "one established device");
    assert!(features(d).contains(&Feature::NewNetwork));
    // The explanation is ordered by contribution and short.
    let a = d.alert.as_ref().unwrap();
    assert!(a.explanation.len() <= TOP_FEATURES);
    assert!(
        a.explanation
            .windows(2)
            .all(|w| w[0].contribution >= w[1].contribution)
    );
    assert_eq!(a.evidence.to, a.at);
    assert_eq!(a.evidence.from, a.at - TimeDelta::hours(1));
    // Once the session stepped up, the same reading goes on.
    let stepped = Attempt {
        session: SessionFacts {
            stepped_up_at: Some(evening + mins(10)),
            ..session(9)
        },
        ..read(7, 7100, evening + mins(11))
    };
    assert_eq!(verdict(&g, &stepped).await, Verdict::Allow);
}

#[tokio::test]
async fn denials_and_enumeration_are_observed_and_contained() {
    let (g, _) = open(lenient_sync()).await;
    // Probing ids one after the other, outside the caseload: all denied.
    let mut last = None;
    for i in 0..30 {
        let d = g
            .observe(
                &read(7, 50_000 + i, day0() + TimeDelta::seconds(i * 20)),
                Observed::Denied,
            )
            .await
            .unwrap();
        if d.verdict >= Verdict::Throttle {
            last = Some((i, d));
            break;
        }
    }
    let (i, d) = last.expect("enumeration contained");
    assert!(i < 20, "{i}");
    let seq = line(&d, Feature::SequentialIds);
    assert!(seq.value >= 3.0 && seq.baseline == 0.0);
    let denied = line(&d, Feature::DeniedShare);
    assert_eq!(denied.value, 1.0);
    // The behaviour throttle lasts: an allowed read is refused now.
    assert_eq!(
        verdict(&g, &read(7, 7001, day0() + mins(12))).await,
        Verdict::Throttle
    );
    // The denials weigh as long as they are in the last hour; then the
    // account works again.
    assert_eq!(
        verdict(&g, &read(7, 7001, day0() + mins(40))).await,
        Verdict::Throttle
    );
    assert_eq!(
        verdict(&g, &read(7, 7001, day0() + mins(80))).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn searches_that_find_nothing_look_like_enumeration() {
    let (g, _) = open(lenient_sync()).await;
    let mut worst = Verdict::Allow;
    let mut decision = None;
    // Alone, they must reach step-up: 3 + 7 × 4/3 ≈ 13 an hour.
    for i in 0..15 {
        let at = day0() + mins(i);
        let q = search(7, at);
        for d in [
            g.check(&q).await.unwrap(),
            g.observe(&q, Observed::NotFound).await.unwrap(),
        ] {
            if d.verdict > worst {
                worst = d.verdict;
                decision = Some(d);
            }
        }
    }
    let d = decision.expect("noticed");
    assert!(worst >= Verdict::StepUp, "{worst}");
    let sm = line(&d, Feature::SearchMisses);
    assert_eq!(sm.baseline, 1.0, "the prior: one empty search an hour");
}

#[tokio::test]
async fn organisations_are_frozen_after_two_suspensions_and_lifted_by_an_officer() {
    let (g, store) = open(lenient_sync()).await;
    let mut suspended = 0;
    for account in [40, 41] {
        for i in 0..100 {
            let d = g
                .check(&read(account, i, day0() + TimeDelta::seconds(i)))
                .await
                .unwrap();
            if d.verdict >= Verdict::Suspend {
                suspended += 1;
                // The account that freezes its organisation is suspended
                // all the same (it was not, in the registry, before).
                assert!(d.suspends_account, "{account}");
                if account == 41 {
                    assert_eq!(d.verdict, Verdict::FreezeOrganisation);
                    let a = d.alert.unwrap();
                    assert_eq!(a.kind, AlertKind::OrganisationContainment);
                    assert_eq!(a.explanation[0].feature, Feature::Suspensions);
                    assert_eq!(a.evidence.from, a.at - TimeDelta::days(1));
                }
                break;
            }
        }
    }
    assert_eq!(suspended, 2);
    // Everyone in the organisation is refused, even a quiet account.
    let quiet = g.check(&read(42, 1, day0() + mins(5))).await.unwrap();
    assert_eq!(quiet.verdict, Verdict::FreezeOrganisation);
    assert_eq!(quiet.alert.map(|a| a.kind), Some(AlertKind::Frozen));
    // Another organisation is not.
    let other = Attempt {
        account: facts(50, 11),
        ..read(50, 1, day0() + mins(5))
    };
    assert_eq!(verdict(&g, &other).await, Verdict::Allow);
    // The freeze is shared through the store: a second instance sees it.
    g.sync(day0() + mins(6)).await.unwrap();
    let g2 = Guard::open(lenient_sync(), store.clone(), 2, day0() + mins(6))
        .await
        .unwrap();
    assert_eq!(
        verdict(&g2, &read(43, 1, day0() + mins(7))).await,
        Verdict::FreezeOrganisation
    );
    assert!(
        g2.lift_freeze(OrganisationId::new(10), day0() + mins(8))
            .await
            .unwrap()
    );
    assert_eq!(
        verdict(&g2, &read(43, 1, day0() + mins(9))).await,
        Verdict::Allow
    );
    g.sync(day0() + mins(9)).await.unwrap();
    assert_eq!(
        verdict(&g, &read(42, 2, day0() + mins(10))).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn a_freeze_lifted_before_its_sync_stays_lifted() {
    let (g, store) = open(lenient_sync()).await;
    for account in [40, 41] {
        for i in 0..100 {
            let d = g
                .check(&read(account, i, day0() + TimeDelta::seconds(i)))
                .await
                .unwrap();
            if d.verdict >= Verdict::Suspend {
                break;
            }
        }
    }
    assert_eq!(
        verdict(&g, &read(42, 1, day0() + mins(3))).await,
        Verdict::FreezeOrganisation
    );
    // Decided here, not flushed yet: nothing stored, but it was frozen.
    assert!(store.frozen_organisations().await.unwrap().is_empty());
    assert!(
        g.lift_freeze(OrganisationId::new(10), day0() + mins(4))
            .await
            .unwrap()
    );
    assert_eq!(
        verdict(&g, &read(42, 2, day0() + mins(5))).await,
        Verdict::Allow
    );
    // The sync flushes no stale freeze, and reads back none.
    g.sync(day0() + mins(6)).await.unwrap();
    assert!(store.frozen_organisations().await.unwrap().is_empty());
    assert_eq!(
        verdict(&g, &read(42, 3, day0() + mins(7))).await,
        Verdict::Allow
    );
    // Lifting again: nothing to lift.
    assert!(
        !g.lift_freeze(OrganisationId::new(10), day0() + mins(8))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn one_suspended_account_hammering_on_does_not_freeze_its_organisation() {
    let (g, _) = open(lenient_sync()).await;
    let mut worst = Verdict::Allow;
    for i in 0..500 {
        let d = g
            .check(&read(7, i, day0() + TimeDelta::seconds(i)))
            .await
            .unwrap();
        worst = worst.max(d.verdict);
    }
    assert_eq!(worst, Verdict::Suspend);
    assert_eq!(
        verdict(&g, &read(8, 1, day0() + mins(9))).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn instances_sharing_a_store_add_up_each_others_counts() {
    let store = Arc::new(MemoryStore::new());
    let t0 = day0();
    let a = Guard::open(lenient_sync(), store.clone(), 1, t0)
        .await
        .unwrap();
    let b = Guard::open(lenient_sync(), store.clone(), 2, t0)
        .await
        .unwrap();
    for i in 0..30 {
        assert!(
            a.check(&read(7, i, t0 + TimeDelta::seconds(i)))
                .await
                .unwrap()
                .lets_through()
        );
    }
    a.sync(t0 + mins(1)).await.unwrap();
    b.sync(t0 + mins(1)).await.unwrap();
    let mut on_b = 0;
    for i in 30..60 {
        on_b += u32::from(
            b.check(&read(7, i, t0 + mins(2) + TimeDelta::seconds(i)))
                .await
                .unwrap()
                .lets_through(),
        );
    }
    assert_eq!(on_b, 10, "40 per hour across both instances");
}

/// Three guards on one store that know of each other (each has synced
/// after all opened).
async fn three_instances(config: GuardConfig) -> (Vec<Guard>, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let t0 = day0();
    let mut guards = Vec::new();
    for instance in 1..=3 {
        guards.push(
            Guard::open(config, store.clone(), instance, t0)
                .await
                .unwrap(),
        );
    }
    for g in &guards {
        g.sync(t0).await.unwrap();
    }
    (guards, store)
}

#[tokio::test]
async fn one_account_read_round_robin_over_three_instances_meets_its_quota_between_syncs() {
    // The 2024 scenario spread over three replicas: one account reading a
    // new person every 100 ms, each request on the next instance, no sync
    // in between. Without the exchange each instance lets 40 through.
    let (guards, _) = three_instances(lenient_sync()).await;
    let mut allowed = 0;
    for i in 0..150 {
        let at = day0() + TimeDelta::milliseconds(100 * i);
        let d = guards[i as usize % 3].check(&read(7, i, at)).await.unwrap();
        allowed += u32::from(d.lets_through());
    }
    // Each decision misses at most the latest decision of each other
    // instance (not exchanged yet).
    assert!(
        (40..=42).contains(&allowed),
        "{allowed} persons for a quota of 40"
    );
}

#[tokio::test]
async fn one_organisations_accounts_spread_over_three_instances_meet_its_quota() {
    // The same attack spread over many accounts: 30 accounts of one
    // organisation, each under its own quota, round-robin over three
    // instances, no sync in between. The organisation's quota (60 an
    // hour here) holds across them.
    let mut c = lenient_sync();
    c.organisation.persons = Limit::new(60, 600);
    let (guards, _) = three_instances(c).await;
    let mut allowed = 0;
    let mut n = 0;
    for _ in 0..10 {
        for account in 0..30 {
            n += 1;
            let at = day0() + TimeDelta::milliseconds(50 * n);
            let g = &guards[n as usize % 3];
            let d = g.check(&read(100 + account, n, at)).await.unwrap();
            allowed += u32::from(d.lets_through());
        }
    }
    assert!(
        (60..=66).contains(&allowed),
        "{allowed} persons for an organisation quota of 60"
    );
}

#[tokio::test]
async fn reads_hidden_on_other_instances_are_bounded_by_exchange_after() {
    // The attacker reads a little on two instances, below what makes them
    // exchange, then as much as it can on the third.
    let (guards, _) = three_instances(lenient_sync()).await;
    let after = GuardConfig::default().sync.exchange_after;
    let mut allowed = 0;
    let mut i = 0;
    for g in &guards[1..] {
        for _ in 0..after {
            i += 1;
            allowed += u32::from(
                g.check(&read(7, i, day0() + TimeDelta::seconds(i)))
                    .await
                    .unwrap()
                    .lets_through(),
            );
        }
    }
    for _ in 0..100 {
        i += 1;
        allowed += u32::from(
            guards[0]
                .check(&read(7, i, day0() + TimeDelta::seconds(i)))
                .await
                .unwrap()
                .lets_through(),
        );
    }
    assert!(
        allowed <= 40 + 2 * after,
        "{allowed} persons for a quota of 40"
    );
}

#[tokio::test]
async fn an_exchange_that_fails_refuses_and_loses_no_count() {
    let (guards, store) = three_instances(lenient_sync()).await;
    let (a, b) = (&guards[0], &guards[1]);
    let after = i64::from(GuardConfig::default().sync.exchange_after);
    for i in 0..after {
        assert!(
            a.check(&read(7, i, day0() + TimeDelta::seconds(i)))
                .await
                .unwrap()
                .lets_through()
        );
    }
    // The next decision exchanges first: the store fails, the attempt is
    // refused (fail closed).
    store.fail(true);
    let at = day0() + TimeDelta::seconds(after);
    assert!(matches!(
        a.check(&read(7, after, at)).await,
        Err(GuardError::Store(_))
    ));
    store.fail(false);
    // The counts it had taken are shared by the next sync.
    a.sync(at).await.unwrap();
    let seen: u64 = store
        .remote_counts(2, 0, 0)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.scope == Scope::Account && r.subject == 7 && r.metric == Metric::PersonsHour)
        .map(|r| r.hour)
        .sum();
    assert_eq!(seen, after as u64);
    b.sync(at).await.unwrap();
    // The failed exchange left the account free to exchange again: the
    // next one due reaches the store (which fails again here).
    store.fail(true);
    let mut refused = false;
    for i in 0..=after {
        let at = at + TimeDelta::seconds(1 + i);
        if a.check(&read(7, 100 + i, at)).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "no exchange after a failed one");
}

#[tokio::test]
async fn a_fast_reader_far_below_its_limits_costs_no_exchange() {
    // A bulk client under high limits: what it keeps unshared is a small
    // share of the room left, so no decision waits for the store.
    let mut c = lenient_sync();
    let high = Limit::new(1_000_000, 1_000_000);
    c.account.persons = high;
    c.organisation.persons = high;
    c.organisation_scaled.persons_per_account = high;
    let (guards, store) = three_instances(c).await;
    // Each instance loads the account's history once.
    for (i, g) in guards.iter().enumerate() {
        assert!(
            g.check(&read(7, 1000 + i as i64, day0()))
                .await
                .unwrap()
                .lets_through()
        );
    }
    store.fail(true);
    for i in 0..300 {
        let at = day0() + TimeDelta::milliseconds(10 * i);
        // Decided without the store (its behaviour may still stop it).
        assert!(
            guards[i as usize % 3].check(&read(7, i, at)).await.is_ok(),
            "attempt {i}"
        );
    }
}

#[tokio::test]
async fn an_instance_alone_makes_no_store_call_to_decide() {
    // One server: no exchange, whatever the pace (the store failing is
    // not seen until the next sync).
    let (g, store) = open(lenient_sync()).await;
    assert_eq!(verdict(&g, &read(7, 0, day0())).await, Verdict::Allow);
    store.fail(true);
    for i in 1..30 {
        assert_eq!(
            verdict(&g, &read(7, i, day0() + TimeDelta::milliseconds(10 * i))).await,
            Verdict::Allow
        );
    }
}

/// Runs a script on `g` reading new persons every second from `t` until
/// the guard suspends `account`; returns the suspending attempt's instant.
async fn suspend_by_script(g: &Guard, account: i64, t: DateTime<Utc>) -> DateTime<Utc> {
    for i in 0..200 {
        let at = t + TimeDelta::seconds(i);
        if verdict(g, &read(account, account * 1000 + i, at)).await == Verdict::Suspend {
            return at;
        }
    }
    panic!("never suspended");
}

#[tokio::test]
async fn a_suspension_on_one_instance_is_honoured_by_the_others() {
    let store = Arc::new(MemoryStore::new());
    let t0 = day0();
    let a = Guard::open(lenient_sync(), store.clone(), 1, t0)
        .await
        .unwrap();
    let b = Guard::open(lenient_sync(), store.clone(), 2, t0)
        .await
        .unwrap();
    // B already holds the account: it read there first.
    assert_eq!(verdict(&b, &read(7, 1, t0)).await, Verdict::Allow);
    let t1 = suspend_by_script(&a, 7, t0 + mins(1)).await;
    // Stored before A answered, with no sync of A.
    assert_eq!(
        store.suspension_blocks(t1).await.unwrap(),
        vec![SuspensionBlock {
            account_id: AccountId::new(7),
            until: t1 + TimeDelta::days(1),
        }]
    );
    // Whatever the registry says meanwhile (an officer may reactivate the
    // account at once), C, which meets the account for the first time,
    // refuses it at once (no instance has synced: nothing else tells C of
    // the account), and B refuses it after its next sync, even for a
    // person it already showed.
    let c = Guard::open(lenient_sync(), store.clone(), 3, t1)
        .await
        .unwrap();
    b.sync(t1 + mins(1)).await.unwrap();
    let on_b = b.check(&read(7, 1, t1 + mins(2))).await.unwrap();
    assert_eq!(on_b.verdict, Verdict::Suspend);
    assert_eq!(line(&on_b, Feature::Blocked).value, 1438.0, "minutes left");
    let on_c = c.check(&read(7, 2, t1 + mins(3))).await.unwrap();
    assert_eq!(on_c.verdict, Verdict::Suspend);
    assert_eq!(line(&on_c, Feature::Blocked).value, 1437.0);
    // B's refusal lengthened the block (a day from its attempt); its sync
    // shares that, and A follows (at its sync, or when it loads the
    // account the next day): a block never shortens.
    b.sync(t1 + mins(5)).await.unwrap();
    a.sync(t1 + mins(6)).await.unwrap();
    let until = t1 + mins(2) + TimeDelta::days(1);
    assert_eq!(store.suspension_blocks(t1).await.unwrap()[0].until, until);
    store
        .block_account(SuspensionBlock {
            account_id: AccountId::new(7),
            until: t1,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .load_account(AccountId::new(7), 0)
            .await
            .unwrap()
            .blocked_until,
        Some(until)
    );
    let late = a.check(&read(7, 7001, until - mins(1))).await.unwrap();
    assert_eq!(late.verdict, Verdict::Suspend, "past A's own block");
    assert_eq!(line(&late, Feature::Blocked).value, 1.0);
    // The organisation counted one suspension, not one per instance that
    // refused the account (a second one would freeze it).
    c.sync(t1 + mins(6)).await.unwrap();
    let suspensions: Vec<u64> = store
        .remote_counts(0, 0, 0)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.scope == Scope::Organisation && r.metric == Metric::Suspensions)
        .map(|r| r.day)
        .collect();
    assert_eq!(suspensions, vec![1]);
}

#[tokio::test]
async fn a_suspension_block_the_store_missed_is_stored_by_the_next_sync() {
    let (g, store) = open(lenient_sync()).await;
    assert_eq!(verdict(&g, &read(7, 1, day0())).await, Verdict::Allow);
    // The account's history is loaded: no store call until the
    // suspension's write, which fails.
    store.fail(true);
    let t1 = suspend_by_script(&g, 7, day0() + mins(1)).await;
    store.fail(false);
    assert!(store.suspension_blocks(t1).await.unwrap().is_empty());
    // Still a suspension here meanwhile.
    assert_eq!(
        verdict(&g, &read(7, 1, t1 + mins(1))).await,
        Verdict::Suspend
    );
    g.sync(t1 + mins(2)).await.unwrap();
    assert_eq!(
        store.suspension_blocks(t1).await.unwrap(),
        vec![SuspensionBlock {
            account_id: AccountId::new(7),
            until: t1 + mins(1) + TimeDelta::days(1),
        }]
    );
}

#[tokio::test]
async fn baselines_survive_a_restart() {
    let (g, store) = open(lenient_sync()).await;
    for d in 0..3 {
        for account in [7, 8] {
            working_day(&g, account, day0() + TimeDelta::days(d), 40).await;
        }
    }
    drop(g);
    let t = day0() + TimeDelta::days(3);
    let g = Guard::open(lenient_sync(), store.clone(), 3, t)
        .await
        .unwrap();
    // A burst: the own baseline (5 persons an hour) is known after restart.
    let mut d = None;
    for i in 0..40 {
        let x = g
            .check(&read(7, 7000 + i, t + TimeDelta::seconds(i * 30)))
            .await
            .unwrap();
        if !x.lets_through() {
            d = Some(x);
            break;
        }
    }
    let d = d.expect("stopped");
    let own = line(&d, Feature::VolumeVsOwn);
    assert!((4.0..7.0).contains(&own.baseline), "{own:?}");
    let peers = line(&d, Feature::VolumeVsPeers);
    assert!(
        (4.0..7.0).contains(&peers.baseline),
        "the peer group is these two accounts: {peers:?}"
    );
}

#[tokio::test]
async fn trainees_of_a_session_starting_are_explained_by_their_new_mandates() {
    let (g, _) = open(lenient_sync()).await;
    for d in 0..3 {
        for account in [7, 8] {
            working_day(&g, account, day0() + TimeDelta::days(d), 40).await;
        }
    }
    let t = day0() + TimeDelta::days(3);
    g.sync(t).await.unwrap();
    // 35 new persons in an hour: seven times the usual hour, under the quota.
    let burst = |account: i64, new_mandate: bool| {
        (0..35).map(move |i| Attempt {
            new_mandate,
            ..read(
                account,
                account * 1000 + 500 + i,
                t + TimeDelta::seconds(i * 100),
            )
        })
    };
    for a in burst(7, true) {
        let d = g.check(&a).await.unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.alert);
    }
    // The same hour with old mandates is a volume anomaly.
    let mut stopped = None;
    for a in burst(8, false) {
        let d = g.check(&a).await.unwrap();
        if !d.lets_through() {
            stopped = Some(d);
            break;
        }
    }
    let d = stopped.expect("stopped");
    assert!(line(&d, Feature::VolumeVsOwn).value >= 20.0);
}

#[tokio::test]
async fn an_attempt_refused_by_a_running_throttle_says_so() {
    // A new device alone throttles here, so that the next attempt, from the
    // usual device, has nothing of its own to show.
    let mut config = lenient_sync();
    config.scoring.weights.new_device = 8.0;
    let (g, _) = open(config).await;
    for d in 0..3 {
        working_day(&g, 7, day0() + TimeDelta::days(d), 40).await;
    }
    let t = day0() + TimeDelta::days(3);
    g.sync(t).await.unwrap();
    let thief = Attempt {
        session: session(9),
        ..read(7, 7001, t)
    };
    let d = g.check(&thief).await.unwrap();
    assert_eq!(d.verdict, Verdict::Throttle);
    let d = g.check(&read(7, 7002, t + mins(5))).await.unwrap();
    assert_eq!(d.verdict, Verdict::Throttle);
    let n = d.alert.as_ref().map_or(0, |a| a.explanation.len());
    assert_eq!(n, 1, "{:?}", d.alert);
    let blocked = line(&d, Feature::Blocked);
    assert_eq!(blocked.value, 10.0, "minutes left");
    assert_eq!(blocked.baseline, 15.0);
}

#[tokio::test]
async fn a_failing_store_fails_closed_and_recovers() {
    let (g, store) = open(lenient_sync()).await;
    assert!(g.check(&read(7, 1, day0())).await.unwrap().lets_through());
    store.fail(true);
    // A new account needs its baseline: refused.
    assert!(matches!(
        g.check(&read(8, 1, day0())).await,
        Err(GuardError::Store(_))
    ));
    // A failed sync makes every check fail, known accounts too.
    assert!(g.sync(day0() + mins(1)).await.is_err());
    assert!(matches!(
        g.check(&read(7, 2, day0() + mins(1))).await,
        Err(GuardError::Stale(_))
    ));
    assert!(
        g.observe(&read(7, 2, day0() + mins(1)), Observed::Denied)
            .await
            .is_err()
    );
    store.fail(false);
    let report = g.sync(day0() + mins(2)).await.unwrap();
    assert!(
        report.counters > 0,
        "what the failed sync held was kept: {report:?}"
    );
    assert!(
        g.check(&read(7, 3, day0() + mins(2)))
            .await
            .unwrap()
            .lets_through()
    );
}

#[tokio::test]
async fn a_guard_that_stops_syncing_fails_closed() {
    let (g, _) = open(GuardConfig::default()).await;
    let t = day0() - TimeDelta::days(60);
    assert!(
        g.check(&read(7, 1, t + TimeDelta::seconds(30)))
            .await
            .is_ok()
    );
    assert_eq!(
        g.check(&read(7, 1, t + TimeDelta::seconds(61))).await,
        Err(GuardError::Stale(61))
    );
    g.sync(t + TimeDelta::seconds(62)).await.unwrap();
    assert!(
        g.check(&read(7, 1, t + TimeDelta::seconds(63)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn raised_alerts_are_stored_with_their_ledger_range() {
    let (g, _) = open(lenient_sync()).await;
    let mut raised = 0;
    for i in 0..45 {
        let d = g
            .check(&read(7, i, day0() + TimeDelta::seconds(i)))
            .await
            .unwrap();
        if let Some(a) = d.alert {
            g.raise(a.with_ledger_range(Some(100), Some(100 + i as u64)));
            raised += 1;
        }
    }
    assert_eq!(raised, 5);
    let report = g.sync(day0() + mins(1)).await.unwrap();
    assert_eq!(report.alerts, 5);
    let stored = g
        .alerts(&AlertQuery {
            account_id: Some(AccountId::new(7)),
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 5);
    assert!(
        stored[0].alert.fresh && !stored[1].alert.fresh,
        "one incident, then repetitions"
    );
    assert_eq!(stored[0].alert.evidence.last_seq, Some(140));
}

#[tokio::test]
async fn account_age_and_post_reset_are_explained() {
    let (g, _) = open(lenient_sync()).await;
    let fresh_account = |p: i64, at| Attempt {
        account: AccountFacts {
            created_at: Some(day0() - TimeDelta::days(1)),
            ..facts(60, 12)
        },
        session: SessionFacts {
            high_risk: true,
            ..home(60)
        },
        ..read(60, p, at)
    };
    // Young (1.5 × 13/14) + post-reset (2.5) stays under the step-up
    // score: such an account may work, within a quarter of the quota.
    let mut d = None;
    for i in 0..11 {
        let x = g.check(&fresh_account(i, day0() + mins(i))).await.unwrap();
        if !x.lets_through() {
            d = Some((i, x));
            break;
        }
    }
    let (i, d) = d.expect("quota");
    assert_eq!((i, d.verdict), (10, Verdict::Throttle));
    let age = line(&d, Feature::AccountAge);
    assert!((age.value - (1.0 + 10.0 / 1440.0)).abs() < 1e-9, "{age:?}");
    assert_eq!(age.baseline, 14.0);
    assert!(age.contribution > 1.3 && age.contribution < 1.5);
    assert_eq!(line(&d, Feature::PostReset).contribution, 2.5);
    let q = line(&d, Feature::PersonsPerHour);
    assert_eq!((q.value, q.baseline), (11.0, 10.0));
    assert_eq!(d.alert.map(|a| a.score), Some(age.contribution + 2.5));
}

#[tokio::test]
async fn the_pass_through_allows_everything_and_keeps_nothing() {
    let g = Guard::pass_through();
    for i in 0..100 {
        assert_eq!(g.check(&read(1, i, day0())).await, Ok(GuardDecision::ALLOW));
    }
    assert!(g.sync(day0()).await.is_ok());
}

#[test]
fn the_benchmark_measures_something() {
    let f = bench::check_cost(3, 200, 10).unwrap();
    assert!(f.check_median > std::time::Duration::ZERO);
    assert_eq!((f.samples, f.calls_per_sample, f.accounts), (3, 200, 10));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever the rhythm, no sliding hour ever shows more distinct
    /// persons than the hourly quota.
    #[test]
    fn no_sliding_hour_exceeds_the_quota(gaps in proptest::collection::vec(0i64..400, 1..300), persons in proptest::collection::vec(0i64..120, 300)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (g, _) = open(lenient_sync()).await;
            let mut t = day0();
            let mut shown: Vec<(i64, i64)> = Vec::new(); // (time, person) of allowed reads
            for (gap, p) in gaps.iter().zip(&persons) {
                t += TimeDelta::seconds(*gap);
                let d = g.check(&read(7, *p, t)).await.unwrap();
                if d.lets_through() {
                    shown.push((t.timestamp(), *p));
                }
                // Distinct persons shown in the hour ending now, counting each
                // person from its first showing after a gap of an hour.
                let now = t.timestamp();
                let mut distinct: Vec<i64> = shown.iter().filter(|(s, _)| now - s < 3600).map(|(_, p)| *p).collect();
                distinct.sort();
                distinct.dedup();
                prop_assert!(distinct.len() <= 40 + 1, "{} distinct in an hour", distinct.len());
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_peer_account_hour_is_counted_once_however_often_it_syncs() {
    let (g, store) = open(lenient_sync()).await;
    let t = day0() + TimeDelta::hours(9);
    for i in 0..6 {
        let at = t + mins(i * 5);
        assert_eq!(verdict(&g, &read(7, 100 + i, at)).await, Verdict::Allow);
        g.sync(at).await.unwrap();
    }
    let rows = store.load_peers(i32::MIN).await.unwrap();
    let hours: u32 = rows.iter().map(|r| r.counts.account_hours).sum();
    let persons: u32 = rows.iter().map(|r| r.counts.persons).sum();
    assert_eq!((hours, persons), (1, 6), "{rows:?}");
}

/// Issue 17, item 8: many officers of one organisation, each under its own
/// grant quota, are still a bulk grant: the organisation's quota throttles
/// them together, with an organisation-quota alert.
#[tokio::test]
async fn an_organisations_officers_grants_add_up_to_its_quota() {
    let (g, _) = open(lenient_sync()).await;
    let t = day0() + TimeDelta::hours(10);
    let grant = |officer: i64, person: i64, i: i64| Attempt {
        kind: AttemptKind::MandateGrant,
        fields: Fields::NONE,
        ..read(officer, person, t + TimeDelta::seconds(i))
    };
    let mut granted = 0;
    let mut stopped = None;
    'officers: for officer in 60..64 {
        for k in 0..8 {
            let d = g
                .check(&grant(officer, officer * 100 + k, granted))
                .await
                .unwrap();
            if !d.lets_through() {
                stopped = Some(d);
                break 'officers;
            }
            granted += 1;
        }
    }
    assert_eq!(granted, 30, "the organisation's hourly quota");
    let d = stopped.expect("stopped");
    assert_eq!(d.verdict, Verdict::Throttle);
    let a = d.alert.expect("alert");
    assert_eq!(a.kind, AlertKind::OrganisationQuota);
    assert!(
        features(&GuardDecision {
            verdict: d.verdict,
            alert: Some(a),
            suspends_account: false
        })
        .contains(&Feature::MandateGrantsPerHour)
    );
}

/// An account of organisation `org` reading `person` through `session`.
fn read_in(org: i64, account: i64, person: i64, at: DateTime<Utc>, s: SessionFacts) -> Attempt {
    Attempt {
        account: facts(account, org),
        session: s,
        ..read(account, person, at)
    }
}

/// Each account of `accounts`, one after the other, reads `each` persons
/// of its own caseload one second apart from `t0` (from its own machine
/// unless `shared` is given). Returns the reads served and every decision.
async fn fleet(
    g: &Guard,
    org: i64,
    accounts: std::ops::Range<i64>,
    each: i64,
    t0: DateTime<Utc>,
    shared: Option<SessionFacts>,
) -> (usize, Vec<GuardDecision>) {
    let mut served = 0;
    let mut all = Vec::new();
    let mut t = t0;
    for account in accounts {
        for p in 0..each {
            let s = shared.clone().unwrap_or_else(|| home(account));
            let d = g
                .check(&read_in(org, account, account * 1000 + p, t, s))
                .await
                .unwrap();
            served += usize::from(d.lets_through());
            all.push(d);
            t += TimeDelta::seconds(1);
        }
    }
    (served, all)
}

fn org_alerts(all: &[GuardDecision]) -> Vec<&Alert> {
    all.iter()
        .filter_map(|d| d.alert.as_ref())
        .filter(|a| a.kind == AlertKind::OrganisationBehaviour)
        .collect()
}

#[tokio::test]
async fn a_whole_agency_reading_a_little_each_at_night_is_stopped_within_a_few_records() {
    let (g, _) = open(lenient_sync()).await;
    // Saturday 17 January, 21:00 in Paris: 22 accounts of one agency, no
    // history, each reading 19 persons of its own caseload from its own
    // machine (under every account quota and the volume features).
    let saturday_evening = day0() + TimeDelta::days(4) + TimeDelta::hours(12);
    let alone = fleet(&g, 31, 500..501, 19, saturday_evening, None).await;
    assert_eq!(alone.0, 19, "one account alone reads its 19: {:?}", alone.1);
    let (served, all) = fleet(&g, 30, 600..622, 19, saturday_evening, None).await;
    assert!(served <= 25, "{served} records served");
    let orgs = org_alerts(&all);
    let first = orgs.first().expect("an organisation alert");
    assert!(first.fresh);
    assert!(
        first
            .explanation
            .iter()
            .any(|l| l.feature == Feature::OffHoursAccounts && l.contribution > 0.0),
        "{first:?}"
    );
    assert!(first.accounts.len() >= 2 && first.accounts.contains(&AccountId::new(600)));
    // The accounts after it are refused from their first read.
    assert!(all[19 * 3..].iter().all(|d| !d.lets_through()));
    // One incident, not one per read: a few fresh alerts at most.
    let fresh = all
        .iter()
        .filter(|d| d.alert.as_ref().is_some_and(|a| a.fresh))
        .count();
    assert!(fresh <= 6, "{fresh} fresh alerts");
}

#[tokio::test]
async fn office_hours_bursts_across_accounts_step_up_the_whole_organisation() {
    let (g, _) = open(lenient_sync()).await;
    // Tuesday 14:00: each account reads 19 persons in 19 seconds, which
    // alone stays under every account feature.
    let t0 = day0() + TimeDelta::hours(5);
    let alone = fleet(&g, 31, 500..501, 19, t0, None).await;
    assert_eq!(alone.0, 19);
    assert!(alone.1.iter().all(|d| d.alert.is_none()));
    let (served, all) = fleet(&g, 30, 600..609, 19, t0, None).await;
    assert!(served <= 19 * 2 + 10, "{served} records served");
    let first = org_alerts(&all)[0];
    assert!(
        first
            .explanation
            .iter()
            .any(|l| l.feature == Feature::BurstingAccounts),
        "{first:?}"
    );
    // A colleague who did nothing unusual steps up once, after which the
    // organisation's step-up no longer stops her.
    let later = t0 + mins(30);
    let colleague = read_in(30, 650, 650_001, later, home(650));
    let d = g.check(&colleague).await.unwrap();
    assert_eq!(d.verdict, Verdict::StepUp);
    assert_eq!(
        line(&d, Feature::OrganisationStepUp).baseline,
        60.0,
        "the step-up's length"
    );
    let before = SessionFacts {
        stepped_up_at: Some(t0 - mins(5)),
        ..home(650)
    };
    assert_eq!(
        verdict(&g, &read_in(30, 650, 650_002, later, before)).await,
        Verdict::StepUp,
        "a step-up older than the organisation's does not count"
    );
    let after = SessionFacts {
        stepped_up_at: Some(later),
        ..home(650)
    };
    assert_eq!(
        verdict(&g, &read_in(30, 650, 650_003, later, after)).await,
        Verdict::Allow
    );
    // Another organisation is untouched.
    assert_eq!(
        verdict(&g, &read_in(31, 500, 500_100, later, home(500))).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn a_new_network_shared_by_several_accounts_stays_suspect_until_they_vouch_for_it() {
    let attacker = SessionFacts {
        network: Some([0xAA; 16]),
        ..SessionFacts::default()
    };
    // A week before: each account works from its own network; on day 0
    // six of them read two persons each from one new network.
    let setup = async || {
        let (g, store) = open(lenient_sync()).await;
        for account in 700..706 {
            let a = read_in(
                40,
                account,
                account * 1000,
                day0() - TimeDelta::days(7),
                home(account),
            );
            assert_eq!(verdict(&g, &a).await, Verdict::Allow);
        }
        g.sync(day0() - TimeDelta::days(7)).await.unwrap();
        (g, store)
    };
    let dose = |account: i64, p: i64, at, s: &SessionFacts| {
        read_in(
            40,
            account,
            account * 1000 + p,
            at,
            SessionFacts {
                session_id: [account as u8; 16],
                ..s.clone()
            },
        )
    };
    // The attacker never steps up.
    let (g, _) = setup().await;
    let mut served = 0;
    let mut first_alert = None;
    for (i, account) in (700..706).enumerate() {
        for p in 1..3 {
            let at = day0() + mins(i as i64 * 2 + p);
            let d = g.check(&dose(account, p, at, &attacker)).await.unwrap();
            served += usize::from(d.lets_through());
            if first_alert.is_none() && d.alert.is_some() {
                first_alert = d.alert;
            }
        }
    }
    let a = first_alert.expect("alerted on the first day");
    assert!(
        a.explanation
            .iter()
            .any(|l| l.feature == Feature::SharedNewNetwork),
        "{a:?}"
    );
    assert!(served <= 8, "{served}");
    // Three days later (a weekend in between), the network is no longer
    // new to any of them, and still refused: nobody vouched for it.
    let later = day0() + TimeDelta::days(3);
    g.sync(later).await.unwrap();
    let d = g.check(&dose(700, 9, later, &attacker)).await.unwrap();
    assert_eq!(d.verdict, Verdict::StepUp, "{:?}", d.alert);
    assert!(d.alert.unwrap().accounts.len() >= 5);

    // An agency's new office network: its advisors step up from it, and
    // it is theirs.
    let (g, _) = setup().await;
    for (i, account) in (700..706).enumerate() {
        let at = day0() + mins(i as i64 * 2);
        let mut d = g.check(&dose(account, 1, at, &attacker)).await.unwrap();
        if d.verdict == Verdict::StepUp {
            let vouched = SessionFacts {
                stepped_up_at: Some(at),
                ..attacker.clone()
            };
            d = g.check(&dose(account, 1, at, &vouched)).await.unwrap();
        }
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.alert);
    }
    let later = day0() + TimeDelta::days(3);
    g.sync(later).await.unwrap();
    for account in 700..706 {
        let d = g.check(&dose(account, 5, later, &attacker)).await.unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.alert);
    }
}

#[tokio::test]
async fn one_machine_new_to_accounts_of_two_organisations_is_stopped_at_the_second() {
    let (g, _) = open(lenient_sync()).await;
    let machine = SessionFacts {
        device: Some([0xBB; 16]),
        network: Some([0xBC; 16]),
        ..SessionFacts::default()
    };
    // A deployment's first day: accounts of several organisations without
    // any history all come through one proxy. Nothing is new *beside*
    // something known: no alert.
    let launch = day0() - TimeDelta::days(7);
    for (org, account) in [(50, 800), (51, 900), (52, 901), (53, 902)] {
        let d = g
            .check(&read_in(
                org,
                account,
                account * 1000,
                launch,
                machine.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.alert);
    }
    // A week later both accounts work from their own machines, then one
    // new machine serves them both.
    for (org, account) in [(50, 800), (51, 900)] {
        let at = launch + TimeDelta::hours(1);
        assert_eq!(
            verdict(
                &g,
                &read_in(org, account, account * 1000 + 1, at, home(account))
            )
            .await,
            Verdict::Allow
        );
    }
    let machine = SessionFacts {
        device: Some([0xBD; 16]),
        network: Some([0xBE; 16]),
        ..SessionFacts::default()
    };
    let t0 = day0() + TimeDelta::hours(2);
    let (first, _) = fleet(&g, 50, 800..801, 5, t0, Some(machine.clone())).await;
    assert_eq!(first, 5, "one organisation's account alone is ordinary");
    let d = g
        .check(&read_in(51, 900, 900_001, t0 + mins(1), machine))
        .await
        .unwrap();
    // A device and a network both new to two organisations: a throttle.
    assert_eq!(d.verdict, Verdict::Throttle);
    let a = d.alert.unwrap();
    assert_eq!(a.kind, AlertKind::OrganisationBehaviour);
    assert!(
        a.explanation
            .iter()
            .any(|l| l.feature == Feature::CrossOrganisationDevice),
        "{a:?}"
    );
    assert!(
        a.accounts.contains(&AccountId::new(800)) && a.accounts.contains(&AccountId::new(900)),
        "{:?}",
        a.accounts
    );
}

#[tokio::test]
async fn an_organisations_quota_follows_its_usual_size() {
    let mut c = lenient_sync();
    c.organisation_scaled.persons_per_account = Limit::new(5, 100);
    let (g, _) = open(c).await;
    // Four days of three accounts at work: its usual size is three.
    for d in 0..4 {
        for account in 1..4 {
            working_day(&g, account, day0() + TimeDelta::days(d), 8).await;
        }
    }
    let t0 = day0() + TimeDelta::days(4) + TimeDelta::hours(1);
    let mut served = 0;
    let mut quota = None;
    for i in 0..30i64 {
        let account = 1 + i % 3;
        let d = g
            .check(&read(account, 90_000 + i, t0 + TimeDelta::seconds(i * 100)))
            .await
            .unwrap();
        if d.lets_through() {
            served += 1;
        } else if quota.is_none() {
            quota = d.alert;
        }
    }
    let a = quota.expect("throttled");
    assert_eq!(a.kind, AlertKind::OrganisationQuota);
    let l = a
        .explanation
        .iter()
        .find(|l| l.feature == Feature::PersonsPerHour)
        .unwrap();
    assert_eq!(l.baseline, 15.0, "5 per account × 3 accounts");
    assert_eq!(served, 15);
    assert_eq!(
        c.organisation_scaled
            .persons(OrganisationKind::Processor, 3, Limit::new(1_000, 8_000)),
        Limit::new(30, 600),
        "processors read twice as much"
    );
    assert_eq!(
        c.organisation_scaled
            .persons(OrganisationKind::CapEmploi, 1_000, Limit::new(1_000, 8_000)),
        Limit::new(1_000, 8_000),
        "never above the absolute ceiling"
    );
}
