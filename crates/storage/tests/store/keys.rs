//! Key material: rewrapping data keys under a new key-encryption key
//! (paged, compared and set), shredding a person's key and indexes, and
//! the inventory that counts them.

use super::*;
use rempart_storage::WrappedKeyRow;

async fn keys_to_rewrap_pages_and_store_rewrapped_compares_and_sets(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let first = store.reserve_person_ids(7).await.on(store, "reserve");
    let mut ps: Vec<SealedPerson> = (0..7)
        .map(|k| sealed(PersonId::new(first.get() + k), 40 + k))
        .collect();
    ps[2].kek_version = 2; // already at the target
    ps[4].dek_version = 3;
    store
        .write_persons(ps.clone(), vec![])
        .await
        .on(store, "insert");
    assert!(store.shred_person(ps[5].id).await.on(store, "shred"));

    // Pages of 2, in id order, without the target version nor the shredded.
    let mut work = Vec::new();
    let mut after = PersonId::new(0);
    loop {
        let page = store
            .keys_to_rewrap(2, after, 2)
            .await
            .on(store, "keys_to_rewrap");
        assert!(page.len() <= 2, "[{be}] page too long");
        let Some(last) = page.last() else { break };
        after = last.id;
        work.extend(page);
    }
    let want: Vec<WrappedKeyRow> = [0, 1, 3, 4, 6]
        .iter()
        .map(|&k| WrappedKeyRow {
            id: ps[k].id,
            kek_version: ps[k].kek_version,
            dek_version: ps[k].dek_version,
            wrapped_dek: ps[k].wrapped_dek.clone(),
        })
        .collect();
    assert_eq!(work, want, "[{be}] work list");
    assert!(
        store
            .keys_to_rewrap(2, ps[6].id, 10)
            .await
            .on(store, "past the end")
            .is_empty(),
        "[{be}]"
    );
    assert_eq!(
        store
            .keys_to_rewrap(2, PersonId::new(0), 0)
            .await
            .on(store, "limit 0")
            .len(),
        0,
        "[{be}]"
    );

    let rewrap = |row: &WrappedKeyRow, version: u32| WrappedKeyRow {
        id: row.id,
        kek_version: version,
        dek_version: row.dek_version,
        wrapped_dek: blob(11, row.id.get() * 10 + i64::from(version), 60),
    };
    // Stale reads change nothing: wrong old KEK version, wrong DEK
    // version, shredded person.
    let mut wrong_dek = rewrap(&work[0], 2);
    wrong_dek.dek_version = 9;
    let shredded = WrappedKeyRow {
        id: ps[5].id,
        kek_version: 2,
        dek_version: 1,
        wrapped_dek: blob(11, 0, 60),
    };
    let n = store
        .store_rewrapped(vec![
            (rewrap(&work[0], 2), 3),
            (wrong_dek, 1),
            (shredded, 1),
        ])
        .await
        .on(store, "stale rewrap");
    assert_eq!(n, 0, "[{be}] stale rows applied");
    assert_eq!(
        store.store_rewrapped(vec![]).await.on(store, "empty"),
        0,
        "[{be}]"
    );

    let rows: Vec<(WrappedKeyRow, u32)> =
        work.iter().map(|w| (rewrap(w, 2), w.kek_version)).collect();
    let n = store
        .store_rewrapped(rows.clone())
        .await
        .on(store, "rewrap");
    assert_eq!(n, 5, "[{be}]");
    // Replaying the same batch: every row is now stale.
    let n = store
        .store_rewrapped(rows.clone())
        .await
        .on(store, "replay");
    assert_eq!(n, 0, "[{be}] replay applied");
    assert!(
        store
            .keys_to_rewrap(2, PersonId::new(0), 100)
            .await
            .on(store, "after")
            .is_empty(),
        "[{be}] rotation not finished"
    );
    for (row, _) in &rows {
        let got = store
            .read_person(row.id, &[])
            .await
            .on(store, "read")
            .expect("person");
        assert_eq!(
            (got.kek_version, got.wrapped_dek.as_ref()),
            (2, Some(&row.wrapped_dek)),
            "[{be}] person {}",
            row.id
        );
    }
    // Two steps for one person in one batch apply in order.
    let step1 = rewrap(&rows[0].0, 3);
    let step2 = rewrap(&step1, 4);
    let n = store
        .store_rewrapped(vec![(step1, 2), (step2.clone(), 3)])
        .await
        .on(store, "two steps");
    assert_eq!(n, 2, "[{be}] chained rewraps");
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(inv.keys_by_kek_version, vec![(2, 5), (4, 1)], "[{be}]");
    // Rewrapping kept every sealed group.
    let mut p0 = ps[0].clone();
    p0.kek_version = 4;
    p0.wrapped_dek = step2.wrapped_dek.clone();
    assert_stored(store, &p0, "after rotation").await;
}
both_backends!(keys_to_rewrap_pages_and_store_rewrapped_compares_and_sets);

async fn shredding_destroys_key_and_indexes_only(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let ps = insert_persons(store, 2, 60).await;
    let (gone, kept) = (&ps[0], &ps[1]);
    assert!(store.shred_person(gone.id).await.on(store, "shred"));
    let got = store
        .read_person(gone.id, FieldGroup::ALL)
        .await
        .on(store, "read")
        .expect("a shredded person is still there");
    assert_eq!(got.wrapped_dek, None, "[{be}] key survived");
    assert_eq!(got.groups, groups_of(gone), "[{be}] sealed groups stay");
    assert_eq!(
        store
            .lookup_persons(&[gone.ft_blind, kept.ft_blind])
            .await
            .on(store, "lookup"),
        vec![None, Some(existing(kept))],
        "[{be}]"
    );
    for (i, v) in [
        (PersonIndex::FtId, gone.ft_blind),
        (PersonIndex::Nir, gone.nir_blind),
        (PersonIndex::NameBirth, gone.name_blind),
    ] {
        assert!(
            store.find_persons(i, v).await.on(store, "find").is_empty(),
            "[{be}] {i:?} still finds a shredded person"
        );
    }
    assert!(
        !store.shred_person(gone.id).await.on(store, "shred again"),
        "[{be}] second shred"
    );
    assert!(
        !store
            .shred_person(PersonId::new(kept.id.get() + 100))
            .await
            .on(store, "shred"),
        "[{be}] unknown id"
    );
    assert_stored(store, kept, "neighbour of a shredded person").await;
    // The id stays taken; the ft_blind is free for a new registration.
    assert_eq!(
        store
            .person_ids(PersonId::new(0), 10)
            .await
            .on(store, "ids"),
        vec![gone.id, kept.id],
        "[{be}]"
    );
    let id = store.reserve_person_ids(1).await.on(store, "reserve");
    let mut again = sealed(id, 62);
    again.ft_blind = gone.ft_blind;
    store
        .write_persons(vec![again.clone()], vec![])
        .await
        .on(store, "re-register");
    assert_stored(store, &again, "re-registered").await;
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!((inv.persons, inv.shredded), (3, 1), "[{be}]");
    assert_eq!(inv.keys_by_kek_version, vec![(1, 2)], "[{be}]");
}
both_backends!(shredding_destroys_key_and_indexes_only);

async fn inventory_counts_and_sizes(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let empty = store.inventory().await.on(store, "inventory");
    assert_eq!(
        (empty.persons, empty.shredded),
        (0, 0),
        "[{be}] empty store"
    );
    assert!(empty.keys_by_kek_version.is_empty(), "[{be}]");
    assert!(empty.organisations_by_kind.is_empty(), "[{be}]");
    assert!(empty.mandates_by_purpose.is_empty(), "[{be}]");

    let first = store.reserve_person_ids(300).await.on(store, "reserve");
    let ps: Vec<SealedPerson> = (0..300)
        .map(|k| {
            let mut p = sealed(PersonId::new(first.get() + k), 200 + k);
            p.kek_version = if k < 100 { 1 } else { 3 };
            p
        })
        .collect();
    store.write_persons(ps, vec![]).await.on(store, "insert");
    assert!(store.shred_person(first).await.on(store, "shred"));
    assert!(
        store
            .shred_person(PersonId::new(first.get() + 150))
            .await
            .on(store, "shred")
    );
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
                "ce.manager1",
                "CE-038",
                Role::Manager,
                AccountState::Suspended,
                None,
                Some("ft.officer1"),
            ),
            account(
                "ce.agent1",
                "CE-038",
                Role::Agent,
                AccountState::Requested,
                Some("ce.manager1"),
                None,
            ),
        ])
        .await
        .on(store, "accounts");
    assert!(refused.is_empty(), "[{be}]");
    store
        .upsert_mandates(vec![
            mandate(
                "M1",
                "CE-038",
                None,
                PersonId::new(first.get() + 1),
                Purpose::FollowUp,
            ),
            mandate(
                "M2",
                "CE-038",
                None,
                PersonId::new(first.get() + 2),
                Purpose::FollowUp,
            ),
            mandate(
                "M3",
                "FT",
                None,
                PersonId::new(first.get() + 3),
                Purpose::DocumentProcessing,
            ),
        ])
        .await
        .on(store, "mandates");

    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!((inv.persons, inv.shredded), (300, 2), "[{be}]");
    assert_eq!(inv.keys_by_kek_version, vec![(1, 99), (3, 199)], "[{be}]");
    assert_eq!(
        inv.accounts_by_role,
        vec![(Role::Agent, 1), (Role::Manager, 1), (Role::Officer, 1)],
        "[{be}]"
    );
    assert_eq!(
        inv.accounts_by_state,
        vec![
            (AccountState::Active, 1),
            (AccountState::Requested, 1),
            (AccountState::Suspended, 1)
        ],
        "[{be}]"
    );
    assert_eq!(
        inv.mandates_by_purpose,
        vec![(Purpose::DocumentProcessing, 1), (Purpose::FollowUp, 2)],
        "[{be}]"
    );
    assert_eq!(inv.organisations_by_kind.len(), 3, "[{be}]");
    // 300 persons of ~400 sealed bytes each, at least.
    assert!(
        inv.bytes > 300 * 400,
        "[{be}] bytes = {} too small",
        inv.bytes
    );
    assert!(inv.bytes >= empty.bytes, "[{be}]");
}
both_backends!(inventory_counts_and_sizes);
