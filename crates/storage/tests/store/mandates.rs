//! Mandates: idempotent upserts with refusals, break-glass reasons,
//! mandates granted in the application (checked and revocable), and the
//! caseload paged through live mandates.

use super::*;
use rempart_storage::{
    CaseloadEntry, ImportKind, ImportMark, NewBreakGlassReason, NewMandate, StoredMandate,
};

async fn mandates_upsert_idempotently_with_refusals(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    store
        .upsert_organisations(organisations())
        .await
        .on(store, "orgs");
    let (_, refused) = store
        .upsert_accounts(vec![
            account(
                "ft.officer1",
                "FT",
                Role::Officer,
                AccountState::Active,
                None,
                None,
            ),
            account(
                "ce.agent1",
                "CE-038",
                Role::Agent,
                AccountState::Active,
                None,
                Some("ft.officer1"),
            ),
        ])
        .await
        .on(store, "accounts");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let ps = insert_persons(store, 3, 80).await;
    let (live, other, shredded) = (ps[0].id, ps[1].id, ps[2].id);
    assert!(store.shred_person(shredded).await.on(store, "shred"));

    let mut open_ended = mandate("M2", "ML-069", None, live, Purpose::Training);
    open_ended.valid_to = None;
    let batch = vec![
        mandate("M1", "CE-038", Some("ce.agent1"), live, Purpose::FollowUp),
        open_ended.clone(),
        mandate("M3", "NOPE", None, live, Purpose::FollowUp),
        mandate("M4", "CE-038", Some("ghost"), live, Purpose::FollowUp),
        mandate("M5", "ML-069", Some("ce.agent1"), live, Purpose::FollowUp),
        mandate(
            "M6",
            "CE-038",
            None,
            PersonId::new(live.get() + 1000),
            Purpose::FollowUp,
        ),
        mandate("M7", "CE-038", None, shredded, Purpose::FollowUp),
        mandate("M8", "FT", None, other, Purpose::Compensation),
    ];
    let want_refusals = vec![
        (2, "organisation"),
        (3, "account"),
        (4, "account"),
        (5, "ft_id"),
        (6, "ft_id"),
    ];
    let (c, refused) = store
        .upsert_mandates(batch.clone())
        .await
        .on(store, "mandates");
    assert_eq!(c, count(3, 0, 0), "[{be}]");
    assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");
    // Stored mandates carry the ids of their organisation and account.
    let held = store.mandates_of_person(live).await.on(store, "mandates");
    let agent1 = account_id(store, "ce.agent1").await;
    assert_eq!(
        held.iter()
            .map(|m| (m.organisation_id, m.account_id, m.revoked_at))
            .collect::<Vec<_>>(),
        vec![
            (org_id(store, "CE-038").await, Some(agent1), None),
            (org_id(store, "ML-069").await, None, None)
        ],
        "[{be}]"
    );
    assert_eq!(refused[1].reason, "no such account", "[{be}]");
    assert_eq!(
        refused[2].reason, "belongs to another organisation than the mandate",
        "[{be}]"
    );
    let (c, refused) = store
        .upsert_mandates(batch.clone())
        .await
        .on(store, "mandates again");
    assert_eq!(c, count(0, 0, 3), "[{be}] second identical call");
    assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");

    let mut moved = batch[..2].to_vec();
    moved[1].valid_to = Some(day(2027, 1, 1));
    moved[0].account = None;
    let (c, refused) = store
        .upsert_mandates(moved.clone())
        .await
        .on(store, "mandate changes");
    assert_eq!(c, count(0, 2, 0), "[{be}]");
    assert!(refused.is_empty(), "[{be}]");

    let held = store.mandates_of_person(live).await.on(store, "mandates");
    let strip = |m: &StoredMandate| {
        (
            m.reference.clone(),
            m.organisation.clone(),
            m.account.clone(),
            m.person_id,
            m.purpose,
            m.valid_from,
            m.valid_to,
            m.source.clone(),
        )
    };
    let want: Vec<_> = moved
        .iter()
        .map(|m| {
            (
                m.reference.clone(),
                m.organisation.clone(),
                m.account.clone(),
                m.person_id,
                m.purpose,
                m.valid_from,
                m.valid_to,
                m.source.clone(),
            )
        })
        .collect();
    assert_eq!(
        held.iter().map(strip).collect::<Vec<_>>(),
        want,
        "[{be}] mandates_of_person"
    );
    assert!(held[0].id < held[1].id, "[{be}] id order");
    assert_eq!(held[0].account_id, None, "[{be}] account removed");
    let held = store.mandates_of_person(other).await.on(store, "mandates");
    assert_eq!(held.len(), 1, "[{be}]");
    assert_eq!(held[0].reference, r("M8"), "[{be}]");
    assert_eq!(held[0].account, None, "[{be}]");
    for id in [shredded, PersonId::new(live.get() + 1000)] {
        assert!(
            store
                .mandates_of_person(id)
                .await
                .on(store, "mandates")
                .is_empty(),
            "[{be}] person {id}"
        );
    }
    // A mandate ending before it starts is an error, not a refusal.
    let mut inverted = mandate("M9", "CE-038", None, live, Purpose::FollowUp);
    inverted.valid_to = Some(inverted.valid_from);
    assert!(
        store.upsert_mandates(vec![inverted]).await.is_err(),
        "[{be}] inverted period"
    );
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(
        inv.mandates_by_purpose,
        vec![
            (Purpose::Compensation, 1),
            (Purpose::FollowUp, 1),
            (Purpose::Training, 1)
        ],
        "[{be}]"
    );
}
both_backends!(mandates_upsert_idempotently_with_refusals);

/// An import's progress moves with each batch in the batch's transaction,
/// a batch of a file no longer in progress is refused whole, and the
/// indexes a first load of mandates drops come back at its end or, when
/// the load was killed, when the store is opened again.
async fn an_import_progress_moves_with_its_batches_and_bulk_indexes_come_back(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    store
        .upsert_organisations(organisations())
        .await
        .on(store, "orgs");
    let ps = insert_persons(store, 2, 90).await;
    // Whether what a bulk load drops is there: an index of each backend,
    // and on PostgreSQL a foreign key.
    let index_there = || {
        let key = match backend {
            Backend::Sqlite => "",
            Backend::Postgres => "ALTER TABLE mandate DROP CONSTRAINT mandate_person_id_fkey;",
        };
        db.place
            .exec(&format!(
                "BEGIN; DROP INDEX mandate_person; {key} ROLLBACK;"
            ))
            .is_ok()
    };
    assert!(index_there(), "[{be}] mandate_person");
    assert_eq!(
        store
            .import_progress(ImportKind::Mandates)
            .await
            .on(store, "progress"),
        None
    );

    assert!(
        store.begin_mandate_bulk_load(false).await.on(store, "bulk"),
        "[{be}] an empty mandate table loads in bulk"
    );
    assert!(!index_there(), "[{be}] dropped for the load");
    let file = [7u8; 32];
    store
        .start_import(ImportKind::Mandates, file, true)
        .await
        .on(store, "start");
    let mark = |file_id, next_byte| ImportMark {
        kind: ImportKind::Mandates,
        file_id,
        next_byte,
        next_line: next_byte / 10,
        records: 4,
        unchanged: 0,
        rejected: 1,
    };
    let rows = vec![
        mandate("M1", "CE-038", None, ps[0].id, Purpose::FollowUp),
        mandate("M2", "CE-038", None, ps[1].id, Purpose::Training),
        mandate("M3", "NO-SUCH", None, ps[1].id, Purpose::Training),
    ];
    let (c, refused) = store
        .upsert_mandates_marked(rows, Some(mark(file, 100)))
        .await
        .on(store, "batch");
    assert_eq!((c, refused.len()), (count(2, 0, 0), 1), "[{be}]");
    let p = store
        .import_progress(ImportKind::Mandates)
        .await
        .on(store, "progress")
        .expect("in progress");
    assert_eq!(
        (p.file_id, p.next_byte, p.next_line, p.bulk),
        (file, 100, 10, true),
        "[{be}]"
    );
    let n = p.counts;
    assert_eq!(
        (n.records, n.inserted, n.updated, n.unchanged, n.rejected),
        (4, 2, 0, 0, 2),
        "[{be}] the store's own refusal counts with the caller's"
    );

    // Another import of mandates started: this one's next batch is refused
    // whole, its rows included.
    let late = vec![mandate("M4", "CE-038", None, ps[0].id, Purpose::Training)];
    assert_conflict(
        store,
        store
            .upsert_mandates_marked(late, Some(mark([8u8; 32], 200)))
            .await,
        "a batch of a file no longer in progress",
    );
    assert_eq!(
        store
            .mandates_of_person(ps[0].id)
            .await
            .on(store, "held")
            .len(),
        1,
        "[{be}] nothing of the refused batch is stored"
    );

    // Killed here: the next open makes the indexes again.
    let reopened = db.place.open().await;
    assert!(index_there(), "[{be}] rebuilt when the store is opened");
    let again = &*reopened.registry;
    assert!(
        !again.begin_mandate_bulk_load(false).await.on(again, "bulk"),
        "[{be}] mandates are stored: no bulk load"
    );
    assert!(index_there(), "[{be}] left alone");
    // Resuming such a load drops them again, and its end restores them.
    assert!(
        again
            .begin_mandate_bulk_load(true)
            .await
            .on(again, "resume")
    );
    assert!(!index_there(), "[{be}] dropped again");
    again.end_bulk_load().await.on(again, "end");
    assert!(index_there(), "[{be}] restored at the end");
    assert_eq!(
        again
            .mandates_of_person(ps[0].id)
            .await
            .on(again, "held")
            .len(),
        1
    );

    again
        .finish_import(ImportKind::Mandates)
        .await
        .on(again, "finish");
    assert_eq!(
        again
            .import_progress(ImportKind::Mandates)
            .await
            .on(again, "progress"),
        None
    );
    // A persons batch with no import of persons in progress is refused too.
    let p = sealed(PersonId::new(9_000), 9_000);
    let orphan = ImportMark {
        kind: ImportKind::Persons,
        ..mark(file, 10)
    };
    assert_conflict(
        again,
        again
            .write_persons_marked(vec![p.clone()], vec![], Some(orphan))
            .await,
        "a persons batch without its import",
    );
    assert_eq!(
        again
            .lookup_person_ids(&[p.ft_blind, ps[0].ft_blind])
            .await
            .on(again, "ids"),
        vec![None, Some(ps[0].id)],
        "[{be}]"
    );
}
both_backends!(an_import_progress_moves_with_its_batches_and_bulk_indexes_come_back);

async fn break_glass_reasons_come_with_their_mandate_and_go_with_the_person(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    consultation_accounts(store).await;
    let ce = org_id(store, "CE-038").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let ps = insert_persons(store, 4, 700).await;
    let (glass, other, gone, bad) = (ps[0].id, ps[1].id, ps[2].id, ps[3].id);
    assert!(store.shred_person(gone).await.on(store, "shred"));
    let at = DateTime::from_timestamp(1_790_000_000, 123_456_000).unwrap();
    let grant = |reference: &str, person_id: PersonId| NewMandate {
        reference: r(reference),
        organisation_id: ce,
        account_id: Some(agent1),
        person_id,
        purpose: Purpose::FollowUp,
        valid_from: day(2026, 12, 5),
        valid_to: Some(day(2026, 12, 6)),
        source: r("break_glass"),
    };
    let reason = |n: u8| NewBreakGlassReason {
        account_id: agent1,
        created_at: at,
        dek_version: 1,
        sealed: vec![n; 80],
    };

    // Refused like a grant, and then nothing is written.
    assert_invalid(
        store,
        store
            .grant_break_glass(grant("BG-0", gone), reason(0))
            .await,
        "person_id",
        "shredded person",
    );
    assert_invalid(
        store,
        store
            .grant_break_glass(grant("BG-0", PersonId::new(other.get() + 1000)), reason(0))
            .await,
        "person_id",
        "unknown person",
    );
    // Sealed under another data key than the person's: a conflict.
    assert_conflict(
        store,
        store
            .grant_break_glass(
                grant("BG-0", glass),
                NewBreakGlassReason {
                    dek_version: 2,
                    ..reason(0)
                },
            )
            .await,
        "another data key version",
    );
    // A stored data-key version that is no version (a damaged row): the
    // store says so and writes neither row.
    db.place
        .exec(&format!(
            "UPDATE person SET dek_version = -1 WHERE id = {bad}"
        ))
        .unwrap_or_else(|e| panic!("[{be}] damaging the row: {e}"));
    let damaged = store
        .grant_break_glass(grant("BG-BAD", bad), reason(0))
        .await;
    assert!(
        matches!(damaged, Err(StorageError::Corrupt(_))),
        "[{be}] {damaged:?}"
    );
    assert!(
        store
            .mandates_of_person(bad)
            .await
            .on(store, "mandates")
            .is_empty()
            && store
                .break_glass_reasons(bad)
                .await
                .on(store, "reasons")
                .is_empty(),
        "[{be}] a damaged row got a mandate"
    );
    // A reference already used: the reason is not kept either.
    store
        .grant_mandate(grant("BG-USED", other))
        .await
        .on(store, "grant");
    assert_invalid(
        store,
        store
            .grant_break_glass(grant("BG-USED", glass), reason(0))
            .await,
        "reference",
        "duplicate reference",
    );
    for p in [glass, gone] {
        assert!(
            store
                .break_glass_reasons(p)
                .await
                .on(store, "reasons")
                .is_empty(),
            "[{be}] refusals keep no reason"
        );
    }
    assert!(
        store
            .mandates_of_person(glass)
            .await
            .on(store, "mandates")
            .is_empty(),
        "[{be}] refusals grant nothing"
    );

    // Two break-glasses on one person, one on another.
    let m1 = store
        .grant_break_glass(grant("BG-1", glass), reason(1))
        .await
        .on(store, "break-glass 1");
    let m2 = store
        .grant_break_glass(grant("BG-2", glass), reason(2))
        .await
        .on(store, "break-glass 2");
    let m3 = store
        .grant_break_glass(grant("BG-3", other), reason(3))
        .await
        .on(store, "break-glass 3");
    assert_eq!(
        store.mandates_of_person(glass).await.on(store, "mandates"),
        vec![m1.clone(), m2.clone()],
        "[{be}]"
    );
    let kept = store.break_glass_reasons(glass).await.on(store, "reasons");
    assert_eq!(kept.len(), 2, "[{be}]");
    assert_eq!(
        (
            kept[0].mandate_id,
            kept[0].person_id,
            kept[0].account_id,
            kept[0].created_at,
            kept[0].dek_version,
            kept[0].sealed.clone()
        ),
        (m1.id, glass, agent1, at, 1, vec![1; 80]),
        "[{be}]"
    );
    assert_eq!(
        (kept[1].mandate_id, kept[1].sealed.clone()),
        (m2.id, vec![2; 80]),
        "[{be}]"
    );
    assert!(kept[0].id < kept[1].id, "[{be}]");

    // Shredding the person takes their reasons, and only theirs; the
    // mandates stay (they name no one in clear).
    assert!(store.shred_person(glass).await.on(store, "shred"));
    assert!(
        store
            .break_glass_reasons(glass)
            .await
            .on(store, "reasons")
            .is_empty(),
        "[{be}] shredded with the person"
    );
    assert_eq!(
        store.break_glass_reasons(other).await.on(store, "reasons")[0].mandate_id,
        m3.id,
        "[{be}] another person's reason stays"
    );
    assert_eq!(
        store
            .mandates_of_person(glass)
            .await
            .on(store, "mandates")
            .len(),
        2,
        "[{be}]"
    );
}
both_backends!(break_glass_reasons_come_with_their_mandate_and_go_with_the_person);

async fn granted_mandates_are_checked_and_revocable(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    consultation_accounts(store).await;
    let ce = org_id(store, "CE-038").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let ml_agent = account_id(store, "ml.agent1").await;
    let ps = insert_persons(store, 3, 500).await;
    let (live, other, shredded) = (ps[0].id, ps[1].id, ps[2].id);
    assert!(store.shred_person(shredded).await.on(store, "shred"));
    // An imported mandate, whose reference a grant may not reuse.
    let (_, refused) = store
        .upsert_mandates(vec![mandate(
            "M1",
            "CE-038",
            None,
            other,
            Purpose::FollowUp,
        )])
        .await
        .on(store, "import");
    assert!(refused.is_empty(), "[{be}] {refused:?}");

    let base = NewMandate {
        reference: r("G1"),
        organisation_id: ce,
        account_id: Some(agent1),
        person_id: live,
        purpose: Purpose::FollowUp,
        valid_from: day(2026, 1, 1),
        valid_to: Some(day(2026, 7, 1)),
        source: r("break-glass"),
    };
    let refusals: Vec<(&str, &str, NewMandate)> = vec![
        (
            "unknown person",
            "person_id",
            NewMandate {
                person_id: PersonId::new(live.get() + 1000),
                ..base.clone()
            },
        ),
        (
            "shredded person",
            "person_id",
            NewMandate {
                person_id: shredded,
                ..base.clone()
            },
        ),
        (
            "unknown organisation",
            "organisation_id",
            NewMandate {
                organisation_id: OrganisationId::new(999_999),
                ..base.clone()
            },
        ),
        (
            "unknown account",
            "account_id",
            NewMandate {
                account_id: Some(AccountId::new(999_999)),
                ..base.clone()
            },
        ),
        (
            "account of another organisation",
            "account_id",
            NewMandate {
                account_id: Some(ml_agent),
                ..base.clone()
            },
        ),
        (
            "empty period",
            "valid_to",
            NewMandate {
                valid_to: Some(base.valid_from),
                ..base.clone()
            },
        ),
        (
            "inverted period",
            "valid_to",
            NewMandate {
                valid_to: Some(day(2025, 12, 31)),
                ..base.clone()
            },
        ),
        (
            "imported reference",
            "reference",
            NewMandate {
                reference: r("M1"),
                ..base.clone()
            },
        ),
    ];
    for (what, field, m) in refusals {
        // Rehearsed first, as the consultation path does: the same refusal.
        assert_invalid(store, store.rehearse_grant(&m).await, field, what);
        assert_invalid(store, store.grant_mandate(m).await, field, what);
    }
    // A rehearsal of a valid grant refuses nothing and writes nothing.
    store
        .rehearse_grant(&base)
        .await
        .on(store, "rehearse a grant");
    assert!(
        store
            .mandates_of_person(live)
            .await
            .on(store, "mandates")
            .is_empty(),
        "[{be}] refusals and rehearsals write nothing"
    );

    let g1 = store.grant_mandate(base.clone()).await.on(store, "grant");
    assert_eq!(
        g1,
        StoredMandate {
            id: g1.id,
            reference: r("G1"),
            organisation: r("CE-038"),
            organisation_id: ce,
            account: Some(r("ce.agent1")),
            account_id: Some(agent1),
            person_id: live,
            purpose: Purpose::FollowUp,
            valid_from: day(2026, 1, 1),
            valid_to: Some(day(2026, 7, 1)),
            source: r("break-glass"),
            revoked_at: None,
        },
        "[{be}]"
    );
    assert_invalid(
        store,
        store.grant_mandate(base.clone()).await,
        "reference",
        "duplicate reference",
    );
    let g2 = store
        .grant_mandate(NewMandate {
            reference: r("G2"),
            account_id: None,
            purpose: Purpose::Training,
            valid_to: None,
            ..base.clone()
        })
        .await
        .on(store, "grant open-ended");
    assert_eq!(
        (g2.account.clone(), g2.account_id, g2.valid_to),
        (None, None, None),
        "[{be}]"
    );
    assert!(g1.id < g2.id, "[{be}]");
    assert_eq!(
        store.mandates_of_person(live).await.on(store, "mandates"),
        vec![g1.clone(), g2.clone()],
        "[{be}] granted mandates show with their ids"
    );
    assert_eq!(
        store.mandate(g1.id).await.on(store, "mandate"),
        Some(g1.clone()),
        "[{be}]"
    );
    assert_eq!(
        store
            .mandate(MandateId::new(999_999))
            .await
            .on(store, "mandate"),
        None,
        "[{be}]"
    );

    // Revocation: not live any more, out of the caseload at once.
    let on = day(2026, 3, 1);
    let caseload = || async {
        store
            .caseload(ce, agent1, None, on, PersonId::new(i64::MIN), 100)
            .await
            .on(store, "caseload")
            .iter()
            .map(|e| e.mandate_id)
            .collect::<Vec<_>>()
    };
    let m1 = store.mandates_of_person(other).await.on(store, "mandates")[0].clone();
    assert_eq!(caseload().await, vec![g1.id, g2.id, m1.id], "[{be}]");
    let t = at("2026-03-01T09:30:00.5Z");
    assert!(
        store.revoke_mandate(g1.id, t).await.on(store, "revoke"),
        "[{be}]"
    );
    let revoked = store
        .mandate(g1.id)
        .await
        .on(store, "mandate")
        .unwrap_or_else(|| panic!("[{be}] revoked mandate missing"));
    assert_eq!(revoked.revoked_at, Some(t), "[{be}]");
    assert!(!revoked.is_live_on(on), "[{be}]");
    assert!(
        g1.is_live_on(on),
        "[{be}] the same mandate before revocation"
    );
    assert_eq!(caseload().await, vec![g2.id, m1.id], "[{be}]");
    assert!(
        !store
            .revoke_mandate(g1.id, at("2026-03-02T00:00:00Z"))
            .await
            .on(store, "revoke again"),
        "[{be}]"
    );
    assert!(
        !store
            .revoke_mandate(MandateId::new(999_999), t)
            .await
            .on(store, "revoke unknown"),
        "[{be}]"
    );
    let held = store.mandates_of_person(live).await.on(store, "mandates");
    assert_eq!(
        held.iter()
            .map(|m| (m.id, m.revoked_at))
            .collect::<Vec<_>>(),
        vec![(g1.id, Some(t)), (g2.id, None)],
        "[{be}] revoked mandates stay listed, first revocation kept"
    );

    // An import never brings a revoked mandate back to life.
    assert!(store.revoke_mandate(m1.id, t).await.on(store, "revoke M1"));
    assert_eq!(caseload().await, vec![g2.id], "[{be}]");
    let mut changed = mandate("M1", "CE-038", None, other, Purpose::FollowUp);
    changed.valid_to = Some(day(2027, 1, 1));
    let (c, _) = store
        .upsert_mandates(vec![changed])
        .await
        .on(store, "re-import");
    assert_eq!(c, count(0, 1, 0), "[{be}]");
    let m1 = store
        .mandate(m1.id)
        .await
        .on(store, "mandate")
        .unwrap_or_else(|| panic!("[{be}] M1 missing"));
    assert_eq!(
        (m1.valid_to, m1.revoked_at),
        (Some(day(2027, 1, 1)), Some(t)),
        "[{be}]"
    );
    assert!(!m1.is_live_on(on), "[{be}]");
}
both_backends!(granted_mandates_are_checked_and_revocable);

async fn caseload_pages_through_live_mandates_once(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    consultation_accounts(store).await;
    let ce = org_id(store, "CE-038").await;
    let ml = org_id(store, "ML-069").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let ml_agent = account_id(store, "ml.agent1").await;
    let on = day(2026, 3, 1);
    let ps = insert_persons(store, 40, 700).await;

    // What each mandate is, and whether agent1's caseload on `on` shows it.
    struct Spec {
        reference: String,
        person: PersonId,
        row: MandateRow,
        revoke: bool,
        shown: bool,
    }
    let mut specs: Vec<Spec> = Vec::new();
    let mut add = |k: usize, tag: &str, org: &str, acc: Option<&str>, purpose, from, to, shown| {
        let reference = format!("C{k}-{tag}");
        let mut row = mandate(&reference, org, acc, ps[k].id, purpose);
        row.valid_from = from;
        row.valid_to = to;
        specs.push(Spec {
            reference,
            person: ps[k].id,
            row,
            revoke: tag == "revoked",
            shown,
        });
    };
    let (jan, jul) = (day(2026, 1, 1), Some(day(2026, 7, 1)));
    let shredded = [9, 16];
    for k in 0..40 {
        let gone = shredded.contains(&k);
        if k % 4 == 0 {
            add(k, "org", "CE-038", None, Purpose::FollowUp, jan, jul, !gone);
        }
        if k % 3 == 0 {
            let open = day(2025, 6, 1);
            add(
                k,
                "a1",
                "CE-038",
                Some("ce.agent1"),
                Purpose::Training,
                open,
                None,
                !gone,
            );
        }
        if k % 5 == 0 {
            add(
                k,
                "a2",
                "CE-038",
                Some("ce.agent2"),
                Purpose::FollowUp,
                jan,
                jul,
                false,
            );
        }
        if k % 7 == 0 {
            add(k, "ml", "ML-069", None, Purpose::FollowUp, jan, jul, false);
        }
        if k % 6 == 1 {
            // Ends on `on`: the end is exclusive.
            add(
                k,
                "expired",
                "CE-038",
                None,
                Purpose::FollowUp,
                day(2025, 1, 1),
                Some(on),
                false,
            );
        }
        if k % 8 == 2 {
            add(
                k,
                "future",
                "CE-038",
                None,
                Purpose::FollowUp,
                day(2026, 3, 2),
                jul,
                false,
            );
        }
        if k % 9 == 4 {
            add(
                k,
                "revoked",
                "CE-038",
                None,
                Purpose::FollowUp,
                jan,
                jul,
                false,
            );
        }
        if k == 12 || k == 25 {
            // Several live mandates on one person.
            add(
                k,
                "comp",
                "CE-038",
                None,
                Purpose::Compensation,
                on,
                None,
                true,
            );
        }
    }
    let rows: Vec<MandateRow> = specs.iter().map(|s| s.row.clone()).collect();
    let (c, refused) = store.upsert_mandates(rows).await.on(store, "mandates");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    assert_eq!(c.inserted as usize, specs.len(), "[{be}]");
    for k in shredded {
        assert!(store.shred_person(ps[k].id).await.on(store, "shred"));
    }

    // The stored mandates, by reference.
    let mut stored = std::collections::HashMap::new();
    for p in &ps {
        for m in store.mandates_of_person(p.id).await.on(store, "mandates") {
            stored.insert(m.reference.as_str().to_string(), m);
        }
    }
    assert_eq!(stored.len(), specs.len(), "[{be}]");
    let id_of = |s: &Spec| -> Option<MandateId> { stored.get(&s.reference).map(|m| m.id) };
    for s in specs.iter().filter(|s| s.revoke) {
        let id = id_of(s).unwrap_or_else(|| panic!("[{be}] {} missing", s.reference));
        assert!(
            store
                .revoke_mandate(id, at("2026-02-01T00:00:00Z"))
                .await
                .on(store, "revoke")
        );
    }
    let entry = |s: &Spec| CaseloadEntry {
        person_id: s.person,
        purpose: s.row.purpose,
        mandate_id: id_of(s).unwrap_or_else(|| panic!("[{be}] {} missing", s.reference)),
        valid_to: s.row.valid_to,
    };
    // What a caseload should hold, worked out from the specs.
    let expected = |org: &str, login: &str| {
        let mut v: Vec<CaseloadEntry> = specs
            .iter()
            .filter(|s| {
                !s.revoke
                    && !shredded.iter().any(|&k| ps[k].id == s.person)
                    && s.row.valid_from <= on
                    && s.row.valid_to.is_none_or(|t| on < t)
                    && s.row.organisation.as_str() == org
                    && s.row.account.as_ref().is_none_or(|a| a.as_str() == login)
            })
            .map(entry)
            .collect();
        v.sort_by_key(|e| (e.person_id, e.mandate_id));
        v
    };
    let want = expected("CE-038", "ce.agent1");
    let mut shown: Vec<CaseloadEntry> = specs.iter().filter(|s| s.shown).map(entry).collect();
    shown.sort_by_key(|e| (e.person_id, e.mandate_id));
    assert_eq!(want, shown, "[{be}] the two oracles agree");
    assert!(
        want.len() > 20,
        "[{be}] a caseload worth paging: {}",
        want.len()
    );
    assert!(
        want.windows(3).any(|w| w[0].person_id == w[2].person_id),
        "[{be}] a person with three live mandates"
    );

    // Every page size returns every live mandate exactly once, pages
    // never split a person, and only an empty page ends.
    let all_pages = |organisation: OrganisationId,
                     account: AccountId,
                     purpose: Option<Purpose>,
                     limit: u32| async move {
        let mut pages: Vec<Vec<CaseloadEntry>> = Vec::new();
        let mut after = PersonId::new(i64::MIN);
        loop {
            let page = store
                .caseload(organisation, account, purpose, on, after, limit)
                .await
                .on(store, "caseload");
            assert!(page.len() <= limit as usize, "[{be}] limit {limit}");
            let Some(last) = page.last() else { break };
            after = last.person_id;
            pages.push(page);
            assert!(pages.len() < 1000, "[{be}] paging does not end");
        }
        pages
    };
    for limit in [3, 4, 7, 1000] {
        let pages = all_pages(ce, agent1, None, limit).await;
        if limit < 1000 {
            assert!(
                pages.len() > 3,
                "[{be}] limit {limit}: {} pages",
                pages.len()
            );
        }
        for w in pages.windows(2) {
            let last = w[0].last().map(|e| e.person_id);
            assert!(
                w[1].iter().all(|e| Some(e.person_id) != last),
                "[{be}] limit {limit}: a person split across pages"
            );
        }
        assert_eq!(pages.concat(), want, "[{be}] limit {limit}");
    }

    // The purpose filter.
    for purpose in [
        Purpose::Training,
        Purpose::Compensation,
        Purpose::DocumentProcessing,
    ] {
        let got = all_pages(ce, agent1, Some(purpose), 5).await.concat();
        let filtered: Vec<CaseloadEntry> = want
            .iter()
            .filter(|e| e.purpose == purpose)
            .cloned()
            .collect();
        assert_eq!(got, filtered, "[{be}] {purpose}");
    }
    assert!(
        !all_pages(ce, agent1, Some(Purpose::Training), 5)
            .await
            .is_empty(),
        "[{be}]"
    );

    // Another account sees the organisation's mandates and its own.
    let want2 = expected("CE-038", "ce.agent2");
    assert!(
        want2.len()
            > want
                .iter()
                .filter(|e| e.purpose == Purpose::FollowUp)
                .count(),
        "[{be}] agent2 has mandates of its own"
    );
    assert_eq!(
        all_pages(ce, agent2, None, 4).await.concat(),
        want2,
        "[{be}] agent2"
    );
    let want_ml = expected("ML-069", "ml.agent1");
    assert!(!want_ml.is_empty(), "[{be}]");
    assert_eq!(
        all_pages(ml, ml_agent, None, 4).await.concat(),
        want_ml,
        "[{be}] ML-069"
    );
    // An account of another organisation only gets the organisation's
    // own mandates (held as a whole).
    assert_eq!(
        all_pages(ce, ml_agent, None, 4).await.concat(),
        expected("CE-038", "nobody"),
        "[{be}] CE-038 with an account of ML-069"
    );

    // Before any mandate starts, and after the last page: nothing.
    assert!(
        store
            .caseload(
                ce,
                agent1,
                None,
                day(2020, 1, 1),
                PersonId::new(i64::MIN),
                10
            )
            .await
            .on(store, "caseload")
            .is_empty(),
        "[{be}]"
    );
    let last_person = want.last().map(|e| e.person_id).unwrap_or(PersonId::new(0));
    assert!(
        store
            .caseload(ce, agent1, None, on, last_person, 10)
            .await
            .on(store, "caseload")
            .is_empty(),
        "[{be}]"
    );
    assert!(
        store
            .caseload(ce, agent1, None, on, PersonId::new(i64::MIN), 0)
            .await
            .on(store, "caseload")
            .is_empty(),
        "[{be}] limit 0"
    );

    // A person whose live mandates alone exceed the page: the first ones.
    let crowded = want
        .windows(3)
        .find(|w| w[0].person_id == w[2].person_id)
        .map(|w| w[0].person_id)
        .unwrap_or(PersonId::new(0));
    let page = store
        .caseload(ce, agent1, None, on, PersonId::new(crowded.get() - 1), 2)
        .await
        .on(store, "caseload");
    let theirs: Vec<CaseloadEntry> = want
        .iter()
        .filter(|e| e.person_id == crowded)
        .take(2)
        .cloned()
        .collect();
    assert_eq!(page, theirs, "[{be}]");

    // A revocation takes effect on the next page asked.
    let first = want[0].clone();
    assert!(
        store
            .revoke_mandate(first.mandate_id, at("2026-03-01T12:00:00Z"))
            .await
            .on(store, "revoke")
    );
    let got = all_pages(ce, agent1, None, 5).await.concat();
    assert_eq!(got, want[1..].to_vec(), "[{be}] after revocation");
}
both_backends!(caseload_pages_through_live_mandates_once);
