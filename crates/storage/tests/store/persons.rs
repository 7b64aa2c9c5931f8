//! Persons: id ranges, sealed rows written in batches (all or nothing),
//! updates compared and set on the fingerprint, races between writers,
//! lookups and reads, the blind indexes, paging through ids.

use super::*;
use futures_util::future::join_all;

async fn reserved_id_ranges_are_disjoint(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let a = store.reserve_person_ids(10).await.on(store, "reserve 10");
    let c = store.reserve_person_ids(1).await.on(store, "reserve 1");
    let d = store.reserve_person_ids(0).await.on(store, "reserve 0");
    let e = store
        .reserve_person_ids(1000)
        .await
        .on(store, "reserve 1000");
    assert_eq!(a, PersonId::new(1), "[{}] first id", store.backend());
    assert_eq!(c, PersonId::new(a.get() + 10), "[{}]", store.backend());
    assert_eq!(d, PersonId::new(c.get() + 1), "[{}]", store.backend());
    assert_eq!(e, d, "[{}] reserving 0 takes nothing", store.backend());
    let mut starts: Vec<PersonId> = join_all((0..16).map(|_| store.reserve_person_ids(5)))
        .await
        .into_iter()
        .map(|r| r.on(store, "concurrent reserve"))
        .collect();
    starts.sort_unstable();
    assert_eq!(
        starts[0],
        PersonId::new(e.get() + 1000),
        "[{}]",
        store.backend()
    );
    for w in starts.windows(2) {
        assert_eq!(
            w[1].get() - w[0].get(),
            5,
            "[{}] ranges overlap or leave gaps: {starts:?}",
            store.backend()
        );
    }
}
both_backends!(reserved_id_ranges_are_disjoint);

async fn inserted_persons_are_found_by_lookup(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let ps = insert_persons(store, 3, 0).await;
    let unknown = blind(1, 999);
    let found = store
        .lookup_persons(&[
            ps[1].ft_blind,
            unknown,
            ps[0].ft_blind,
            ps[2].ft_blind,
            ps[0].ft_blind,
        ])
        .await
        .on(store, "lookup");
    assert_eq!(
        found,
        vec![
            Some(existing(&ps[1])),
            None,
            Some(existing(&ps[0])),
            Some(existing(&ps[2])),
            Some(existing(&ps[0])),
        ],
        "[{}]",
        store.backend()
    );
    assert!(
        store
            .lookup_persons(&[])
            .await
            .on(store, "empty lookup")
            .is_empty()
    );
    // Blinds of other kinds are not France Travail ids.
    let other = store
        .lookup_persons(&[ps[0].nir_blind, ps[0].fingerprint])
        .await
        .on(store, "lookup");
    assert_eq!(other, vec![None, None], "[{}]", store.backend());
    for p in &ps {
        assert_stored(store, p, "after insert").await;
    }
    store
        .write_persons(vec![], vec![])
        .await
        .on(store, "empty write");
}
both_backends!(inserted_persons_are_found_by_lookup);

async fn large_batches_round_trip(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let ps = insert_persons(store, 5000, 10_000).await;
    let blinds: Vec<Blind> = ps.iter().rev().map(|p| p.ft_blind).collect();
    let found = store.lookup_persons(&blinds).await.on(store, "lookup");
    let expected: Vec<_> = ps.iter().rev().map(|p| Some(existing(p))).collect();
    assert!(found == expected, "[{}] lookup of 5000", store.backend());

    let updates: Vec<(SealedPerson, Blind)> = ps
        .iter()
        .map(|p| (changed(p, p.id.get() + 50_000), p.fingerprint))
        .collect();
    // One stale row among 5000: nothing applies.
    let mut bad = updates.clone();
    bad[4321].1 = blind(4, -1);
    assert_conflict(
        store,
        store.write_persons(vec![], bad).await,
        "one stale row",
    );
    let found = store.lookup_persons(&blinds).await.on(store, "lookup");
    assert!(
        found == expected,
        "[{}] failed batch wrote",
        store.backend()
    );

    store
        .write_persons(vec![], updates.clone())
        .await
        .on(store, "update 5000");
    let found = store.lookup_persons(&blinds).await.on(store, "lookup");
    let expected: Vec<_> = updates
        .iter()
        .rev()
        .map(|(p, _)| Some(existing(p)))
        .collect();
    assert!(
        found == expected,
        "[{}] lookup after update",
        store.backend()
    );
    assert_stored(store, &updates[2500].0, "after bulk update").await;
}
both_backends!(large_batches_round_trip);

async fn updates_apply_only_on_the_expected_fingerprint(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let ps = insert_persons(store, 2, 0).await;
    let p = &ps[0];

    // Right fingerprint: applies, but never touches the key material.
    let mut p2 = changed(p, 100);
    p2.kek_version = 7;
    p2.wrapped_dek = blob(5, 777, 60);
    store
        .write_persons(vec![], vec![(p2.clone(), p.fingerprint)])
        .await
        .on(store, "update");
    let mut want = p2.clone();
    want.kek_version = p.kek_version;
    want.wrapped_dek = p.wrapped_dek.clone();
    assert_stored(store, &want, "after update").await;
    assert!(
        store
            .find_persons(PersonIndex::Nir, p.nir_blind)
            .await
            .on(store, "find")
            .is_empty(),
        "[{be}] old NIR index still finds the person"
    );

    // Wrong fingerprint, or a data key changed meanwhile: conflict, no change.
    let p3 = changed(p, 200);
    assert_conflict(
        store,
        store
            .write_persons(vec![], vec![(p3.clone(), p.fingerprint)])
            .await,
        "stale fingerprint",
    );
    let mut p3_dek = p3.clone();
    p3_dek.dek_version = 2;
    assert_conflict(
        store,
        store
            .write_persons(vec![], vec![(p3_dek, want.fingerprint)])
            .await,
        "stale data key version",
    );
    let ghost = sealed(PersonId::new(999_999), 999);
    assert_conflict(
        store,
        store
            .write_persons(vec![], vec![(ghost, blind(4, 999))])
            .await,
        "unknown id",
    );
    assert_stored(store, &want, "after refused updates").await;

    // Atomicity: a good insert with a conflicting update leaves no trace.
    let id = store.reserve_person_ids(1).await.on(store, "reserve");
    let q = sealed(id, 300);
    assert_conflict(
        store,
        store
            .write_persons(vec![q.clone()], vec![(p3.clone(), p.fingerprint)])
            .await,
        "insert + stale update",
    );
    assert_eq!(
        store
            .lookup_persons(&[q.ft_blind])
            .await
            .on(store, "lookup"),
        vec![None],
        "[{be}] insert of a failed batch is visible"
    );
    assert!(
        store
            .read_person(id, &[FieldGroup::Identity])
            .await
            .on(store, "read")
            .is_none(),
        "[{be}] insert of a failed batch is readable"
    );
    // ... and a good update before a bad one is undone too.
    let other = changed(&ps[1], 400);
    assert_conflict(
        store,
        store
            .write_persons(
                vec![],
                vec![
                    (other.clone(), ps[1].fingerprint),
                    (p3.clone(), p.fingerprint),
                ],
            )
            .await,
        "good update + stale update",
    );
    assert_stored(store, &ps[1], "first update of a failed batch").await;

    // Two updates of one person in one batch chain, in order.
    let p4 = changed(p, 500);
    store
        .write_persons(
            vec![],
            vec![(p3.clone(), want.fingerprint), (p4.clone(), p3.fingerprint)],
        )
        .await
        .on(store, "chained updates");
    let mut want = p4.clone();
    want.wrapped_dek = p.wrapped_dek.clone();
    assert_stored(store, &want, "after chained updates").await;

    // Insert and update of the same new person in one batch.
    let id = store.reserve_person_ids(1).await.on(store, "reserve");
    let n = sealed(id, 600);
    let n2 = changed(&n, 601);
    store
        .write_persons(vec![n.clone()], vec![(n2.clone(), n.fingerprint)])
        .await
        .on(store, "insert then update");
    assert_stored(store, &n2, "inserted then updated").await;

    // A shredded person cannot be updated.
    assert!(store.shred_person(id).await.on(store, "shred"));
    assert_conflict(
        store,
        store
            .write_persons(vec![], vec![(changed(&n, 602), n2.fingerprint)])
            .await,
        "update of a shredded person",
    );
}
both_backends!(updates_apply_only_on_the_expected_fingerprint);

async fn concurrent_writers_conflict_instead_of_overwriting(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let ps = insert_persons(store, 1, 0).await;
    let p = &ps[0];
    // Two writers read the same fingerprint and race: one wins.
    let (a, c) = (changed(p, 1), changed(p, 2));
    let (ra, rc) = tokio::join!(
        store.write_persons(vec![], vec![(a.clone(), p.fingerprint)]),
        store.write_persons(vec![], vec![(c.clone(), p.fingerprint)]),
    );
    let winner = match (&ra, &rc) {
        (Ok(()), Err(StorageError::Conflict(_))) => &a,
        (Err(StorageError::Conflict(_)), Ok(())) => &c,
        other => panic!("[{be}] expected one winner and one conflict, got {other:?}"),
    };
    let mut want = winner.clone();
    want.wrapped_dek = p.wrapped_dek.clone();
    assert_stored(store, &want, "after a race").await;
    // Two writers register the same new person under two ids: one wins.
    let id = store.reserve_person_ids(2).await.on(store, "reserve");
    let x = sealed(id, 10);
    let mut y = sealed(PersonId::new(id.get() + 1), 11);
    y.ft_blind = x.ft_blind;
    let (rx, ry) = tokio::join!(
        store.write_persons(vec![x.clone()], vec![]),
        store.write_persons(vec![y.clone()], vec![]),
    );
    let winner = match (&rx, &ry) {
        (Ok(()), Err(StorageError::Conflict(_))) => &x,
        (Err(StorageError::Conflict(_)), Ok(())) => &y,
        other => panic!("[{be}] expected one winner and one conflict, got {other:?}"),
    };
    assert_stored(store, winner, "after a registration race").await;
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(inv.persons, 2, "[{be}]");
}
both_backends!(concurrent_writers_conflict_instead_of_overwriting);

async fn duplicate_inserts_conflict(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let ps = insert_persons(store, 1, 0).await;
    let ids = store.reserve_person_ids(4).await.on(store, "reserve");

    let mut dup = sealed(ids, 1);
    dup.ft_blind = ps[0].ft_blind;
    assert_conflict(
        store,
        store.write_persons(vec![dup], vec![]).await,
        "stored ft_blind",
    );
    let a = sealed(PersonId::new(ids.get() + 1), 2);
    let mut a2 = sealed(PersonId::new(ids.get() + 2), 3);
    a2.ft_blind = a.ft_blind;
    assert_conflict(
        store,
        store.write_persons(vec![a.clone(), a2], vec![]).await,
        "ft_blind twice in a batch",
    );
    assert_conflict(
        store,
        store.write_persons(vec![sealed(ps[0].id, 4)], vec![]).await,
        "stored id",
    );
    // Nothing of the failed batches, and the store still works.
    assert_eq!(
        store
            .lookup_persons(&[a.ft_blind, blind(1, 1), blind(1, 4)])
            .await
            .on(store, "lookup"),
        vec![None, None, None],
        "[{be}]"
    );
    store
        .write_persons(vec![a.clone()], vec![])
        .await
        .on(store, "insert after conflicts");
    assert_stored(store, &a, "after conflicts").await;
    assert_stored(store, &ps[0], "first person after conflicts").await;
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(inv.persons, 2, "[{be}]");
}
both_backends!(duplicate_inserts_conflict);

async fn read_person_returns_the_groups_asked_in_order(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let ps = insert_persons(store, 2, 7).await;
    let p = &ps[1];
    let got = store
        .read_person(p.id, &[FieldGroup::Status, FieldGroup::Identity])
        .await
        .on(store, "read")
        .expect("person");
    assert_eq!(
        got.groups,
        vec![
            (FieldGroup::Status, p.status.clone()),
            (FieldGroup::Identity, p.identity.clone())
        ],
        "[{be}]"
    );
    assert_eq!(
        (got.id, got.kek_version, got.dek_version),
        (p.id, 1, 1),
        "[{be}]"
    );
    assert_eq!(got.wrapped_dek, Some(p.wrapped_dek.clone()), "[{be}]");
    let got = store
        .read_person(p.id, &[])
        .await
        .on(store, "read")
        .expect("person");
    assert!(got.groups.is_empty(), "[{be}]");
    let got = store
        .read_person(p.id, &[FieldGroup::Nir, FieldGroup::Contact])
        .await
        .on(store, "read")
        .expect("person");
    assert_eq!(
        got.groups,
        vec![
            (FieldGroup::Nir, p.nir.clone()),
            (FieldGroup::Contact, p.contact.clone())
        ],
        "[{be}]"
    );
    for id in [
        PersonId::new(0),
        PersonId::new(-1),
        PersonId::new(p.id.get() + 1000),
    ] {
        assert!(
            store
                .read_person(id, FieldGroup::ALL)
                .await
                .on(store, "read")
                .is_none(),
            "[{be}] id {id}"
        );
    }
}
both_backends!(read_person_returns_the_groups_asked_in_order);

async fn find_persons_by_each_index(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let first = store.reserve_person_ids(3).await.on(store, "reserve");
    let (mut x, mut y, mut z) = (
        sealed(first, 20),
        sealed(PersonId::new(first.get() + 1), 21),
        sealed(PersonId::new(first.get() + 2), 22),
    );
    // x and y share a NIR index, x and z a name index.
    y.nir_blind = x.nir_blind;
    z.name_blind = x.name_blind;
    x.retain_until = None;
    // Inserted out of id order: results come in id order anyway.
    store
        .write_persons(vec![z.clone(), y.clone(), x.clone()], vec![])
        .await
        .on(store, "insert");
    let find = |i, v| store.find_persons(i, v);
    assert_eq!(
        find(PersonIndex::Nir, x.nir_blind).await.on(store, "find"),
        vec![x.id, y.id],
        "[{be}]"
    );
    assert_eq!(
        find(PersonIndex::NameBirth, x.name_blind)
            .await
            .on(store, "find"),
        vec![x.id, z.id],
        "[{be}]"
    );
    assert_eq!(
        find(PersonIndex::NameBirth, y.name_blind)
            .await
            .on(store, "find"),
        vec![y.id],
        "[{be}]"
    );
    assert_eq!(
        find(PersonIndex::FtId, z.ft_blind).await.on(store, "find"),
        vec![z.id],
        "[{be}]"
    );
    assert_eq!(
        find(PersonIndex::Nir, z.nir_blind).await.on(store, "find"),
        vec![z.id],
        "[{be}]"
    );
    for i in [PersonIndex::FtId, PersonIndex::Nir, PersonIndex::NameBirth] {
        assert!(
            find(i, blind(0, 0)).await.on(store, "find").is_empty(),
            "[{be}] {i:?}"
        );
    }
    // The fingerprint is not an index.
    assert!(
        find(PersonIndex::FtId, x.fingerprint)
            .await
            .on(store, "find")
            .is_empty(),
        "[{be}]"
    );
}
both_backends!(find_persons_by_each_index);

async fn person_ids_page_in_order(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    assert!(
        store
            .person_ids(PersonId::new(0), 10)
            .await
            .on(store, "ids")
            .is_empty(),
        "[{be}]"
    );
    let first = store.reserve_person_ids(20).await.on(store, "reserve");
    // Every other id of the range, inserted in reverse order.
    let ps: Vec<SealedPerson> = (0..10)
        .rev()
        .map(|k| sealed(PersonId::new(first.get() + 2 * k), 300 + k))
        .collect();
    store.write_persons(ps, vec![]).await.on(store, "insert");
    let all: Vec<PersonId> = (0..10)
        .map(|k| PersonId::new(first.get() + 2 * k))
        .collect();
    let mut seen = Vec::new();
    let mut after = PersonId::new(i64::MIN);
    loop {
        let page = store.person_ids(after, 3).await.on(store, "page");
        assert!(page.len() <= 3, "[{be}]");
        let Some(&last) = page.last() else { break };
        after = last;
        seen.extend(page);
    }
    assert_eq!(seen, all, "[{be}]");
    assert_eq!(
        store.person_ids(all[4], 2).await.on(store, "page"),
        vec![all[5], all[6]],
        "[{be}] `after` is exclusive"
    );
    assert_eq!(
        store
            .person_ids(PersonId::new(all[4].get() + 1), 1)
            .await
            .on(store, "page"),
        vec![all[5]],
        "[{be}]"
    );
    assert!(
        store
            .person_ids(PersonId::new(0), 0)
            .await
            .on(store, "limit 0")
            .is_empty(),
        "[{be}]"
    );
}
both_backends!(person_ids_page_in_order);
