//! The exfiltration guard's store: counters shared between instances,
//! activity and devices, alerts, suspension blocks; guards sharing one
//! database, and a guard whose database fails refusing.

use super::*;

use rempart_domain::{AccountId, OrganisationId, PersonId};

use rempart_guard::store::{
    ActivityCounts, ActivityRow, AlertQuery, CounterDelta, FlushBatch, Freeze, GuardStore, Known,
    KnownKind, Metric, RemoteCount, Scope, SuspensionBlock,
};
use rempart_guard::{
    AccountFacts, Alert, AlertKind, Attempt, AttemptKind, BUCKET_SECS, Evidence, Explanation,
    Feature, Fields, Guard, GuardConfig, GuardError, PeerGroup, SessionFacts, Verdict,
};

fn delta(scope: Scope, subject: i64, metric: Metric, bucket: i64, count: u32) -> CounterDelta {
    CounterDelta {
        scope,
        subject,
        metric,
        bucket,
        count,
    }
}

fn hour_row(
    scope: Scope,
    subject: i64,
    day: i32,
    hour: u8,
    attempts: u32,
    persons: u32,
) -> ActivityRow {
    ActivityRow {
        scope,
        subject,
        day,
        hour,
        counts: ActivityCounts {
            attempts,
            persons,
            misses: 1,
            searches: 2,
            search_misses: 3,
            nir: 4,
            break_glass: 5,
            account_hours: 1,
        },
    }
}

fn alert_of(account_id: i64, organisation_id: i64, at: DateTime<Utc>, score: f64) -> Alert {
    Alert {
        at,
        kind: AlertKind::Behaviour,
        account_id: AccountId::new(account_id),
        organisation_id: OrganisationId::new(organisation_id),
        verdict: Verdict::StepUp,
        score,
        explanation: vec![
            Explanation {
                feature: Feature::OffHours,
                value: 5.0,
                baseline: 0.01,
                contribution: 2.5,
            },
            Explanation {
                feature: Feature::NewDevice,
                value: 1.0,
                baseline: 2.0,
                contribution: 2.0,
            },
        ],
        fresh: true,
        evidence: Evidence {
            from: at - TimeDelta::hours(1),
            to: at,
            first_seq: Some(10),
            last_seq: Some(42),
        },
        accounts: Vec::new(),
    }
}

fn remote(rows: Vec<RemoteCount>) -> Vec<(Scope, i64, Metric, u64, u64)> {
    let mut v: Vec<_> = rows
        .into_iter()
        .map(|r| (r.scope, r.subject, r.metric, r.hour, r.day))
        .collect();
    v.sort();
    v
}

async fn guard_counters_add_up_across_instances_and_are_pruned(backend: Backend) {
    let db = Db::open(backend).await;
    let (be, g) = (backend.name(), db.guard());
    let batch = |instance, counters| FlushBatch {
        instance,
        counters,
        ..FlushBatch::default()
    };
    let a = Scope::Account;
    // Instance 1 writes twice to one key (and once within one batch:
    // a retried batch joined to the next one).
    g.flush(&batch(
        1,
        vec![
            delta(a, 7, Metric::PersonsHour, 1000, 3),
            delta(a, 7, Metric::PersonsHour, 1000, 2),
            delta(a, 7, Metric::PersonsHour, 990, 4),
        ],
    ))
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    g.flush(&batch(1, vec![delta(a, 7, Metric::PersonsHour, 1000, 1)]))
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    g.flush(&batch(
        2,
        vec![
            delta(a, 7, Metric::PersonsHour, 1000, 10),
            delta(Scope::Organisation, 3, Metric::Refusals, 995, 7),
            delta(a, 8, Metric::Nir, 700, 9), // older than a day
        ],
    ))
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    // Instance 3 sees both; instance 1 only instance 2's; the hour
    // covers buckets from 995, the day from 713.
    let seen = |instance| {
        let g = g.clone();
        async move { remote(g.remote_counts(instance, 995, 713).await.unwrap()) }
    };
    assert_eq!(
        seen(3).await,
        vec![
            (a, 7, Metric::PersonsHour, 16, 20),
            (Scope::Organisation, 3, Metric::Refusals, 7, 7),
        ],
        "[{be}]"
    );
    assert_eq!(
        seen(1).await,
        vec![
            (a, 7, Metric::PersonsHour, 10, 10),
            (Scope::Organisation, 3, Metric::Refusals, 7, 7),
        ],
        "[{be}]"
    );
    assert_eq!(
        g.prune(991, 0).await.unwrap(),
        2,
        "[{be}] buckets 990 and 700"
    );
    assert_eq!(
        remote(g.remote_counts(3, 0, 0).await.unwrap()).len(),
        2,
        "[{be}]"
    );
}
both_backends!(guard_counters_add_up_across_instances_and_are_pruned);

async fn guard_exchange_adds_then_reads_only_the_subjects_asked(backend: Backend) {
    let db = Db::open(backend).await;
    let (be, g) = (backend.name(), db.guard());
    let (a, o) = (Scope::Account, Scope::Organisation);
    g.flush(&FlushBatch {
        instance: 2,
        counters: vec![
            delta(a, 7, Metric::PersonsHour, 1000, 10),
            delta(a, 8, Metric::PersonsHour, 1000, 5), // not asked for
            delta(o, 3, Metric::PersonsHour, 1000, 30),
        ],
        ..FlushBatch::default()
    })
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    // Instance 1's deltas, one key twice (merged, not refused), and what
    // instance 2 counted for account 7 and organisation 3.
    let got = g
        .exchange(
            1,
            &[
                delta(a, 7, Metric::PersonsHour, 1000, 2),
                delta(a, 7, Metric::PersonsHour, 1000, 1),
                delta(o, 3, Metric::PersonsHour, 1000, 3),
            ],
            &[(a, 7), (o, 3)],
            995,
            713,
        )
        .await
        .unwrap_or_else(|e| panic!("[{be}] exchange: {e}"));
    assert_eq!(
        remote(got),
        vec![
            (a, 7, Metric::PersonsHour, 10, 10),
            (o, 3, Metric::PersonsHour, 30, 30),
        ],
        "[{be}] the others' counts, not its own"
    );
    // Instance 2's exchange reads instance 1's deltas.
    let got = g
        .exchange(2, &[], &[(a, 7), (o, 3)], 995, 713)
        .await
        .unwrap_or_else(|e| panic!("[{be}] exchange: {e}"));
    assert_eq!(
        remote(got),
        vec![
            (a, 7, Metric::PersonsHour, 3, 3),
            (o, 3, Metric::PersonsHour, 3, 3),
        ],
        "[{be}]"
    );
}
both_backends!(guard_exchange_adds_then_reads_only_the_subjects_asked);

async fn guard_instances_announce_themselves_and_are_forgotten(backend: Backend) {
    let db = Db::open(backend).await;
    let (be, g) = (backend.name(), db.guard());
    let t0 = DateTime::from_timestamp(1_000 * BUCKET_SECS, 0).unwrap();
    let s = TimeDelta::seconds;
    assert_eq!(
        g.announce(1, t0, t0 - s(60)).await.unwrap(),
        0,
        "[{be}] alone"
    );
    assert_eq!(
        g.announce(2, t0 + s(1), t0 - s(59)).await.unwrap(),
        1,
        "[{be}]"
    );
    assert_eq!(
        g.announce(3, t0 + s(2), t0 - s(58)).await.unwrap(),
        2,
        "[{be}]"
    );
    // Instance 1 is not heard of for over a minute: the others forget it.
    assert_eq!(
        g.announce(2, t0 + s(61), t0 + s(1)).await.unwrap(),
        1,
        "[{be}]"
    );
    // A clock behind does not make an instance older.
    assert_eq!(
        g.announce(3, t0 - s(30), t0 - s(30)).await.unwrap(),
        2,
        "[{be}]"
    );
    assert_eq!(
        g.announce(1, t0 + s(62), t0 + s(2)).await.unwrap(),
        2,
        "[{be}]"
    );
}
both_backends!(guard_instances_announce_themselves_and_are_forgotten);

async fn guard_activity_and_devices_round_trip(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (be, g) = (backend.name(), db.guard());
    let (a, p) = (Scope::Account, Scope::Peer);
    let known = |digest: u8, first_seen| Known {
        account_id: AccountId::new(7),
        kind: KnownKind::Device,
        digest: [digest; 16],
        first_seen,
    };
    g.flush(&FlushBatch {
        instance: 1,
        activity: vec![
            hour_row(a, 7, 20_000, 9, 10, 5),
            hour_row(a, 7, 20_001, 10, 4, 2),
            hour_row(a, 8, 20_001, 10, 1, 1),
            hour_row(p, 184, 20_001, 10, 5, 3),
            hour_row(a, 7, 19_000, 9, 1, 1),
            hour_row(Scope::Organisation, 3, 20_001, 10, 12, 7),
            hour_row(Scope::Organisation, 3, 20_001, 11, 2, 1),
        ],
        known: vec![known(1, t0), known(2, t0)],
        ..FlushBatch::default()
    })
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    // Another instance adds to the same hours and saw device 1 earlier.
    g.flush(&FlushBatch {
        instance: 2,
        activity: vec![
            hour_row(a, 7, 20_001, 10, 6, 3),
            hour_row(p, 184, 20_001, 10, 5, 3),
        ],
        known: vec![
            known(1, t0 - TimeDelta::days(3)),
            Known {
                kind: KnownKind::Network,
                ..known(9, t0)
            },
        ],
        ..FlushBatch::default()
    })
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    let h = g
        .load_account(AccountId::new(7), 19_500)
        .await
        .unwrap_or_else(|e| panic!("[{be}] load: {e}"));
    assert_eq!(h.activity.len(), 2, "[{be}] the day-19000 row is too old");
    assert_eq!(h.activity[0], hour_row(a, 7, 20_000, 9, 10, 5), "[{be}]");
    let merged = h.activity[1].counts;
    assert_eq!(
        (
            merged.attempts,
            merged.persons,
            merged.nir,
            merged.account_hours
        ),
        (10, 5, 8, 1),
        "[{be}] counts add up; one account is active once in an hour, \
         whichever instances it used"
    );
    assert_eq!(
        h.known,
        vec![
            known(1, t0 - TimeDelta::days(3)),
            known(2, t0),
            Known {
                kind: KnownKind::Network,
                ..known(9, t0)
            },
        ],
        "[{be}] the earliest sighting wins"
    );
    let peers = g.load_peers(20_001).await.unwrap();
    assert_eq!(peers.len(), 1, "[{be}] organisation rows are not a peer's");
    let org = g
        .load_organisation(OrganisationId::new(3), 20_001)
        .await
        .unwrap();
    assert_eq!(
        org.iter()
            .map(|r| (r.scope, r.subject, r.hour, r.counts.attempts))
            .collect::<Vec<_>>(),
        vec![
            (Scope::Organisation, 3, 10, 12),
            (Scope::Organisation, 3, 11, 2)
        ],
        "[{be}] an organisation's hours, in order"
    );
    assert!(
        g.load_organisation(OrganisationId::new(4), 0)
            .await
            .unwrap()
            .is_empty(),
        "[{be}]"
    );
    assert_eq!(
        (peers[0].subject, peers[0].counts.attempts),
        (184, 10),
        "[{be}]"
    );
    assert!(
        g.load_account(AccountId::new(99), 0)
            .await
            .unwrap()
            .activity
            .is_empty(),
        "[{be}]"
    );
    assert_eq!(
        g.prune(0, 20_001).await.unwrap(),
        2,
        "[{be}] days 19000 and 20000"
    );
}
both_backends!(guard_activity_and_devices_round_trip);

async fn guard_alerts_are_stored_whole_and_listed_by_filter(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (be, g) = (backend.name(), db.guard());
    let alerts = vec![
        alert_of(7, 3, t0, 4.5),
        // An organisation's alert names the accounts involved.
        Alert {
            kind: AlertKind::OrganisationBehaviour,
            accounts: [7, 8, 12].map(AccountId::new).to_vec(),
            ..alert_of(8, 3, t0 + TimeDelta::minutes(5), 5.0)
        },
        alert_of(7, 4, t0 + TimeDelta::minutes(10), 6.0),
    ];
    g.flush(&FlushBatch {
        instance: 1,
        alerts: alerts.clone(),
        freezes: vec![Freeze {
            organisation_id: OrganisationId::new(3),
            frozen_at: t0,
        }],
        ..FlushBatch::default()
    })
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    let list = |q: AlertQuery| {
        let g = g.clone();
        async move { g.alerts(&q).await.unwrap() }
    };
    let all = list(AlertQuery {
        limit: 10,
        ..AlertQuery::default()
    })
    .await;
    assert_eq!(
        all.iter().map(|a| a.alert.clone()).collect::<Vec<_>>(),
        alerts,
        "[{be}] whole, in order"
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let of_7 = list(AlertQuery {
        account_id: Some(AccountId::new(7)),
        limit: 10,
        ..AlertQuery::default()
    })
    .await;
    assert_eq!(of_7.len(), 2, "[{be}]");
    let of_org_3_late = list(AlertQuery {
        organisation_id: Some(OrganisationId::new(3)),
        from: Some(t0 + TimeDelta::minutes(1)),
        to: Some(t0 + TimeDelta::minutes(6)),
        limit: 10,
        ..AlertQuery::default()
    })
    .await;
    assert_eq!(of_org_3_late.len(), 1, "[{be}]");
    assert_eq!(
        of_org_3_late[0].alert.account_id,
        AccountId::new(8),
        "[{be}]"
    );
    let page = list(AlertQuery {
        after_id: all[0].id,
        limit: 1,
        ..AlertQuery::default()
    })
    .await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id, "[{be}] paging");
    // A batch with one bad alert writes nothing at all.
    let bad = FlushBatch {
        instance: 1,
        counters: vec![delta(Scope::Account, 7, Metric::Attempts, 5, 1)],
        alerts: vec![alert_of(9, 3, t0, 1.0), alert_of(9, 3, t0, f64::NAN)],
        ..FlushBatch::default()
    };
    assert!(g.flush(&bad).await.is_err(), "[{be}]");
    assert_eq!(
        list(AlertQuery {
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .len(),
        3,
        "[{be}]"
    );
    assert!(
        g.remote_counts(2, 0, 0).await.unwrap().is_empty(),
        "[{be}] all or nothing"
    );
    // Freezes: listed until lifted, once; re-frozen later.
    let frozen = |g: Arc<dyn GuardStore>| async move {
        g.frozen_organisations()
            .await
            .unwrap()
            .iter()
            .map(|f| f.organisation_id.get())
            .collect::<Vec<_>>()
    };
    assert_eq!(frozen(g.clone()).await, vec![3], "[{be}]");
    assert!(
        g.lift_freeze(OrganisationId::new(3), t0 + TimeDelta::hours(1))
            .await
            .unwrap(),
        "[{be}]"
    );
    assert!(
        !g.lift_freeze(OrganisationId::new(3), t0 + TimeDelta::hours(1))
            .await
            .unwrap(),
        "[{be}] once"
    );
    assert!(frozen(g.clone()).await.is_empty(), "[{be}]");
    g.flush(&FlushBatch {
        instance: 1,
        freezes: vec![Freeze {
            organisation_id: OrganisationId::new(3),
            frozen_at: t0 + TimeDelta::hours(2),
        }],
        ..FlushBatch::default()
    })
    .await
    .unwrap();
    let f = g.frozen_organisations().await.unwrap();
    assert_eq!(
        (f[0].organisation_id, f[0].frozen_at),
        (OrganisationId::new(3), t0 + TimeDelta::hours(2)),
        "[{be}]"
    );
    // A freeze decided before a lift but flushed after it (another
    // instance's sync in flight) does not undo the lift, even when the
    // lift found nothing stored yet; a freeze after the lift does.
    let freeze_at = |org: i64, at| FlushBatch {
        instance: 2,
        freezes: vec![Freeze {
            organisation_id: OrganisationId::new(org),
            frozen_at: at,
        }],
        ..FlushBatch::default()
    };
    assert!(
        g.lift_freeze(OrganisationId::new(3), t0 + TimeDelta::hours(3))
            .await
            .unwrap(),
        "[{be}]"
    );
    g.flush(&freeze_at(3, t0 + TimeDelta::minutes(150)))
        .await
        .unwrap();
    assert!(frozen(g.clone()).await.is_empty(), "[{be}] stale freeze");
    assert!(
        !g.lift_freeze(OrganisationId::new(4), t0 + TimeDelta::hours(3))
            .await
            .unwrap(),
        "[{be}] nothing stored for 4"
    );
    g.flush(&freeze_at(4, t0 + TimeDelta::minutes(170)))
        .await
        .unwrap();
    assert!(frozen(g.clone()).await.is_empty(), "[{be}] stale freeze");
    g.flush(&freeze_at(4, t0 + TimeDelta::hours(4)))
        .await
        .unwrap();
    assert_eq!(frozen(g.clone()).await, vec![4], "[{be}] a new freeze");
}
both_backends!(guard_alerts_are_stored_whole_and_listed_by_filter);

async fn guard_suspension_blocks_are_shared_never_shortened_and_pruned(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let block = |id, until| SuspensionBlock {
        account_id: AccountId::new(id),
        until,
    };
    let day = TimeDelta::days(1);
    let (be, g) = (backend.name(), db.guard());
    g.block_account(block(7, t0 + day))
        .await
        .unwrap_or_else(|e| panic!("[{be}] block: {e}"));
    g.block_account(block(7, t0 + TimeDelta::hours(1)))
        .await
        .unwrap_or_else(|e| panic!("[{be}] block: {e}"));
    // Through flushes too: a later end for 7 (another instance's
    // refusal lengthened it), an earlier one (a flush in flight), and a
    // short block of 8.
    let flush = |instance, blocks| FlushBatch {
        instance,
        blocks,
        ..FlushBatch::default()
    };
    let later = t0 + day + TimeDelta::minutes(5);
    g.flush(&flush(
        2,
        vec![block(7, later), block(8, t0 + TimeDelta::minutes(30))],
    ))
    .await
    .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    g.flush(&flush(1, vec![block(7, t0)]))
        .await
        .unwrap_or_else(|e| panic!("[{be}] flush: {e}"));
    assert_eq!(
        g.suspension_blocks(t0).await.unwrap(),
        vec![block(7, later), block(8, t0 + TimeDelta::minutes(30))],
        "[{be}] the later end wins, in account order"
    );
    assert_eq!(
        g.suspension_blocks(t0 + TimeDelta::minutes(30))
            .await
            .unwrap(),
        vec![block(7, later)],
        "[{be}] 8's block is over"
    );
    assert!(
        g.suspension_blocks(later).await.unwrap().is_empty(),
        "[{be}]"
    );
    // An account's history carries its block, over or not.
    let blocked = |id: i64| {
        let g = g.clone();
        async move {
            g.load_account(AccountId::new(id), 0)
                .await
                .unwrap()
                .blocked_until
        }
    };
    assert_eq!(blocked(7).await, Some(later), "[{be}]");
    assert_eq!(
        blocked(8).await,
        Some(t0 + TimeDelta::minutes(30)),
        "[{be}]"
    );
    assert_eq!(blocked(9).await, None, "[{be}]");
    // Pruning removes the blocks that ended before the bucket began.
    let bucket = (t0 + TimeDelta::hours(1)).timestamp() / BUCKET_SECS;
    assert_eq!(g.prune(bucket, 0).await.unwrap(), 1, "[{be}] 8's block");
    assert_eq!(blocked(8).await, None, "[{be}]");
    assert_eq!(blocked(7).await, Some(later), "[{be}]");
    // A batch that fails writes no block either.
    let bad = FlushBatch {
        alerts: vec![alert_of(9, 3, t0, f64::NAN)],
        ..flush(1, vec![block(9, later)])
    };
    assert!(g.flush(&bad).await.is_err(), "[{be}]");
    assert_eq!(blocked(9).await, None, "[{be}] all or nothing");
}
both_backends!(guard_suspension_blocks_are_shared_never_shortened_and_pruned);

async fn guards_on_one_database_share_suspensions(backend: Backend) {
    let db = Db::open(backend).await;
    // Tuesday 13 January 2026, 09:00 in Paris.
    let t0 = at("2026-01-13T08:00:00Z");
    let mut config = GuardConfig::default();
    config.sync.max_staleness_secs = 24 * 3600;
    let (be, store) = (backend.name(), db.guard());
    let one = Guard::open(config, store.clone(), 1, t0).await.unwrap();
    let two = Guard::open(config, store.clone(), 2, t0).await.unwrap();
    // Two met the account before; one suspends it.
    let d = two.check(&guarded_read(7, 1, t0)).await.unwrap();
    assert_eq!(d.verdict, Verdict::Allow, "[{be}]");
    let mut suspended = None;
    for i in 0..200 {
        let t = t0 + TimeDelta::minutes(1) + TimeDelta::seconds(i);
        let d = one.check(&guarded_read(7, 7000 + i, t)).await.unwrap();
        if d.verdict == Verdict::Suspend {
            suspended = Some(t);
            break;
        }
    }
    let t1 = suspended.unwrap_or_else(|| panic!("[{be}] never suspended"));
    // No instance has synced since: a third instance loads the account
    // with its block at its first attempt.
    let three = Guard::open(config, store.clone(), 3, t1).await.unwrap();
    let d = three
        .check(&guarded_read(7, 2, t1 + TimeDelta::minutes(1)))
        .await
        .unwrap();
    assert_eq!(d.verdict, Verdict::Suspend, "[{be}] {d:?}");
    // Two, after its sync, refuses it, even for the person it showed.
    two.sync(t1 + TimeDelta::minutes(1)).await.unwrap();
    let d = two
        .check(&guarded_read(7, 1, t1 + TimeDelta::minutes(2)))
        .await
        .unwrap();
    assert_eq!(d.verdict, Verdict::Suspend, "[{be}] {d:?}");
}
both_backends!(guards_on_one_database_share_suspensions);

/// A read by a Cap emploi advisor of the Isère, at `at`.
fn guarded_read(account: i64, person: i64, at: DateTime<Utc>) -> Attempt {
    Attempt {
        at,
        account: AccountFacts {
            account_id: AccountId::new(account),
            organisation_id: OrganisationId::new(3),
            role: Role::Agent,
            created_at: None,
            peer: PeerGroup::of(OrganisationKind::CapEmploi, Some("38")),
        },
        session: SessionFacts {
            device: Some([account as u8; 16]),
            ..SessionFacts::default()
        },
        kind: AttemptKind::ReadPerson,
        person_id: Some(PersonId::new(person)),
        purpose: Some(Purpose::FollowUp),
        fields: Fields::of(&[FieldGroup::Identity, FieldGroup::Contact], false),
        new_mandate: false,
    }
}

async fn guards_on_one_database_share_counts_baselines_and_alerts(backend: Backend) {
    let db = Db::open(backend).await;
    // Tuesday 13 January 2026, 09:00 in Paris.
    let t0 = at("2026-01-13T08:00:00Z");
    let mut config = GuardConfig::default();
    config.sync.max_staleness_secs = 24 * 3600;
    let (be, store) = (backend.name(), db.guard());
    let one = Guard::open(config, store.clone(), 1, t0).await.unwrap();
    let two = Guard::open(config, store.clone(), 2, t0).await.unwrap();
    // Three working days on instance one: 5 persons an hour.
    for d in 0..3 {
        for h in 0..8 {
            for i in 0..5 {
                let t = t0 + TimeDelta::days(d) + TimeDelta::hours(h) + TimeDelta::minutes(i * 10);
                let r = one
                    .check(&guarded_read(7, 7000 + (d * 40 + h * 5 + i) % 200, t))
                    .await
                    .unwrap();
                assert_eq!(r.verdict, Verdict::Allow, "[{be}] day {d} hour {h}");
            }
            one.sync(t0 + TimeDelta::days(d) + TimeDelta::hours(h + 1))
                .await
                .unwrap();
        }
    }
    // Day 4: 45 reads on instance one (the hourly quota of 40 refuses
    // the last ones), then the account moves to two.
    let t4 = t0 + TimeDelta::days(3);
    two.sync(t4).await.unwrap();
    for i in 0..45 {
        let r = one
            .check(&guarded_read(7, 8000 + i, t4 + TimeDelta::seconds(i * 12)))
            .await
            .unwrap();
        if r.verdict != Verdict::Allow {
            assert!(i >= 20, "[{be}] {i}: {r:?}");
            one.raise(r.alert.unwrap().with_ledger_range(None, Some(i as u64)));
        }
    }
    one.sync(t4 + TimeDelta::minutes(11)).await.unwrap();
    two.sync(t4 + TimeDelta::minutes(11)).await.unwrap();
    let mut on_two = Vec::new();
    for i in 30..60 {
        on_two.push(
            two.check(&guarded_read(
                7,
                8000 + i,
                t4 + TimeDelta::minutes(12) + TimeDelta::seconds(i),
            ))
            .await
            .unwrap(),
        );
    }
    let refused = on_two
        .iter()
        .position(|d| !d.lets_through())
        .unwrap_or_else(|| panic!("[{be}] never stopped"));
    assert!(
        refused <= 10,
        "[{be}] the counts of instance one count on two: {refused}"
    );
    // The refusal names the account's own baseline, read from the store
    // by an instance that never served it before: 5 an hour for three
    // days, and today's hour of 40 (160 persons over 25 active hours).
    let alert = on_two[refused].alert.clone().unwrap();
    let own = alert
        .explanation
        .iter()
        .find(|e| e.feature == Feature::VolumeVsOwn);
    assert!(
        own.is_some_and(|e| (4.0..7.0).contains(&e.baseline)),
        "[{be}] {alert:?}"
    );
    // A restart keeps it all.
    two.sync(t4 + TimeDelta::minutes(13)).await.unwrap();
    drop(one);
    let three = Guard::open(config, store.clone(), 3, t4 + TimeDelta::minutes(13))
        .await
        .unwrap();
    let stored = three
        .alerts(&AlertQuery {
            account_id: Some(AccountId::new(7)),
            limit: 100,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert!(!stored.is_empty(), "[{be}] alerts raised on one are stored");
    assert!(
        stored.iter().all(|a| !a.alert.explanation.is_empty()),
        "[{be}]"
    );
    let d = three
        .check(&guarded_read(7, 9000, t4 + TimeDelta::minutes(14)))
        .await
        .unwrap();
    assert!(
        !d.lets_through(),
        "[{be}] a restarted instance still counts the hour: {d:?}"
    );
}
both_backends!(guards_on_one_database_share_counts_baselines_and_alerts);

async fn a_guard_whose_database_fails_refuses(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-01-13T08:00:00Z");
    let (be, store) = (backend.name(), db.guard());
    let g = Guard::open(GuardConfig::default(), store.clone(), 1, t0)
        .await
        .unwrap();
    assert!(
        g.check(&guarded_read(7, 1, t0))
            .await
            .unwrap()
            .lets_through(),
        "[{be}]"
    );
    // The guard's tables disappear under it (a real failure of the
    // backend, not a simulated one).
    let sql = "DROP TABLE guard_counter";
    db.place.exec(sql).unwrap();
    let e = g.sync(t0 + TimeDelta::seconds(5)).await;
    assert!(matches!(e, Err(GuardError::Store(_))), "[{be}] {e:?}");
    let refused = g
        .check(&guarded_read(7, 2, t0 + TimeDelta::seconds(6)))
        .await;
    assert!(refused.is_err(), "[{be}] fail closed: {refused:?}");
    assert!(
        g.check(&guarded_read(8, 2, t0 + TimeDelta::seconds(6)))
            .await
            .is_err(),
        "[{be}] a new account too"
    );
}
both_backends!(a_guard_whose_database_fails_refuses);
