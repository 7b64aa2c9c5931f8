//! What a consultation reads: API credentials (issued, checked, revoked),
//! the rows answering a consultation in one query, and the copies a store
//! keeps in memory, which follow every other writer.

use super::*;
use rempart_storage::{ConsultationRows, StoredCredential};

async fn credentials_round_trip_and_revoke(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let record1 = store
        .account_by_id(agent1)
        .await
        .on(store, "record")
        .unwrap_or_else(|| panic!("[{be}] agent1"));
    let digest = |tag: u8| -> [u8; 32] { std::array::from_fn(|i| tag ^ (i as u8 * 7)) };

    // Nanoseconds are cut to microseconds on both backends.
    let created = at("2026-03-01T10:00:00.123456789Z");
    let expires = at("2026-05-30T10:00:00Z");
    let id1 = store
        .insert_credential(agent1, digest(1), created, expires)
        .await
        .on(store, "insert 1");
    let id2 = store
        .insert_credential(agent1, digest(2), created, expires)
        .await
        .on(store, "insert 2");
    // Long expired, still stored and returned as such.
    let id3 = store
        .insert_credential(
            agent2,
            digest(3),
            at("2025-01-01T00:00:00Z"),
            at("2025-02-01T00:00:00Z"),
        )
        .await
        .on(store, "insert 3");
    assert!(id1 < id2 && id2 < id3, "[{be}] {id1} {id2} {id3}");

    let (c1, a1) = store
        .credential(id1)
        .await
        .on(store, "credential 1")
        .unwrap_or_else(|| panic!("[{be}] credential {id1} missing"));
    assert_eq!(
        c1,
        StoredCredential {
            id: id1,
            account_id: agent1,
            secret_digest: digest(1),
            created_at: at("2026-03-01T10:00:00.123456Z"),
            expires_at: expires,
            revoked_at: None,
        },
        "[{be}]"
    );
    assert_eq!(a1, record1, "[{be}] the credential's account");
    let (c3, a3) = store
        .credential(id3)
        .await
        .on(store, "credential 3")
        .unwrap_or_else(|| panic!("[{be}] credential {id3} missing"));
    assert_eq!(
        (
            c3.account_id,
            c3.secret_digest,
            c3.expires_at,
            c3.revoked_at
        ),
        (agent2, digest(3), at("2025-02-01T00:00:00Z"), None),
        "[{be}] expired but returned"
    );
    assert!(c3.expires_at < created, "[{be}]");
    assert_eq!(a3.login, r("ce.agent2"), "[{be}]");
    assert_eq!(
        store.credential(999_999).await.on(store, "unknown"),
        None,
        "[{be}]"
    );

    // Refusals: unknown account, empty or inverted period.
    assert_invalid(
        store,
        store
            .insert_credential(AccountId::new(999_999), digest(4), created, expires)
            .await,
        "account_id",
        "unknown account",
    );
    assert_invalid(
        store,
        store
            .insert_credential(agent1, digest(4), created, created)
            .await,
        "expires_at",
        "empty period",
    );
    assert_invalid(
        store,
        store
            .insert_credential(agent1, digest(4), expires, created)
            .await,
        "expires_at",
        "inverted period",
    );

    // The account's state shows through the credential.
    store
        .set_account_state(agent1, AccountState::Suspended)
        .await
        .on(store, "suspend");
    let (_, a1) = store
        .credential(id1)
        .await
        .on(store, "credential 1")
        .unwrap_or_else(|| panic!("[{be}] credential {id1} missing"));
    assert_eq!(a1.state, AccountState::Suspended, "[{be}]");

    // Revoking one: only that one, once; another account's is left alone.
    let t1 = at("2026-03-02T08:00:00.000001Z");
    assert_eq!(
        store
            .revoke_credentials(agent1, Some(id1), t1)
            .await
            .on(store, "revoke 1"),
        1,
        "[{be}]"
    );
    assert_eq!(
        store
            .revoke_credentials(agent1, Some(id1), t1)
            .await
            .on(store, "revoke 1 again"),
        0,
        "[{be}]"
    );
    assert_eq!(
        store
            .revoke_credentials(agent2, Some(id2), t1)
            .await
            .on(store, "revoke another's"),
        0,
        "[{be}]"
    );
    let revoked_at = |id| async move {
        store
            .credential(id)
            .await
            .on(store, "credential")
            .unwrap_or_else(|| panic!("[{be}] credential {id} missing"))
            .0
            .revoked_at
    };
    assert_eq!(revoked_at(id1).await, Some(t1), "[{be}]");
    assert_eq!(revoked_at(id2).await, None, "[{be}]");

    // Revoking all of an account: the ones not yet revoked.
    let t2 = at("2026-03-03T08:00:00Z");
    assert_eq!(
        store
            .revoke_credentials(agent1, None, t2)
            .await
            .on(store, "revoke all"),
        1,
        "[{be}]"
    );
    assert_eq!(
        revoked_at(id1).await,
        Some(t1),
        "[{be}] first revocation kept"
    );
    assert_eq!(revoked_at(id2).await, Some(t2), "[{be}]");
    assert_eq!(
        revoked_at(id3).await,
        None,
        "[{be}] other account untouched"
    );
    assert_eq!(
        store
            .revoke_credentials(agent1, None, t2)
            .await
            .on(store, "revoke all again"),
        0,
        "[{be}]"
    );
    assert_eq!(
        store
            .revoke_credentials(agent2, None, t2)
            .await
            .on(store, "revoke agent2"),
        1,
        "[{be}]"
    );
    assert_eq!(revoked_at(id3).await, Some(t2), "[{be}]");
}
both_backends!(credentials_round_trip_and_revoke);

async fn consultation_rows_answer_like_the_three_lookups(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let cred = store
        .insert_credential(
            agent1,
            [9; 32],
            at("2026-03-01T10:00:00Z"),
            at("2026-05-30T10:00:00Z"),
        )
        .await
        .on(store, "credential");
    let ps = insert_persons(store, 2, 700).await;
    let (kept, shredded) = (ps[0].id, ps[1].id);
    let (_, refused) = store
        .upsert_mandates(vec![
            mandate("R1", "CE-038", None, kept, Purpose::FollowUp),
            mandate("R2", "CE-038", Some("ce.agent1"), kept, Purpose::Training),
        ])
        .await
        .on(store, "mandates");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    assert!(store.shred_person(shredded).await.on(store, "shred"));
    for (c, p) in [
        (cred, kept),
        (cred, shredded),
        (cred + 1000, kept),
        (cred, PersonId::new(999_999)),
    ] {
        let rows = store
            .consultation_rows(c, p)
            .await
            .on(store, "consultation rows");
        assert_eq!(
            rows.credential,
            store.credential(c).await.on(store, "credential"),
            "[{be}] {c} {p}"
        );
        assert_eq!(
            rows.mandates,
            store.mandates_of_person(p).await.on(store, "mandates"),
            "[{be}] {c} {p}"
        );
        assert_eq!(
            rows.person,
            store
                .read_person(p, FieldGroup::ALL)
                .await
                .on(store, "person"),
            "[{be}] {c} {p}"
        );
    }
    let rows = store
        .consultation_rows(cred, kept)
        .await
        .on(store, "consultation rows");
    assert_eq!(rows.mandates.len(), 2, "[{be}]");
    assert!(rows.credential.is_some() && rows.person.is_some(), "[{be}]");
}
both_backends!(consultation_rows_answer_like_the_three_lookups);

/// What a store keeps in memory (credentials checked, organisation codes and
/// account logins) never outlives a change made by another process: a
/// second store on the same database plays the CLI.
async fn kept_copies_follow_every_writer(backend: Backend) {
    let db = Db::open(backend).await;
    let cli_stores = db.place.open().await;
    let (store, cli) = (db.store(), &*cli_stores.registry);
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let new_credential = |n: u8| {
        store.insert_credential(
            agent1,
            [n; 32],
            at("2026-03-01T10:00:00Z"),
            at("2026-05-30T10:00:00Z"),
        )
    };
    let cred = new_credential(1).await.on(store, "credential");
    let p = insert_persons(store, 1, 900).await[0].id;
    let (_, refused) = store
        .upsert_mandates(vec![mandate(
            "K1",
            "CE-038",
            Some("ce.agent1"),
            p,
            Purpose::FollowUp,
        )])
        .await
        .on(store, "mandates");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let seen = |store: &'static str| format!("[{be}] {store}");
    let caller = |rows: &ConsultationRows| rows.credential.clone().expect("credential");

    // Read twice: the second answer is the kept copy, and equal.
    let first = store.consultation_rows(cred, p).await.on(store, "rows");
    let again = store.consultation_rows(cred, p).await.on(store, "rows");
    assert_eq!(first, again, "{}", seen("twice"));
    assert_eq!(
        store.credential(cred).await.on(store, "credential"),
        first.credential,
        "{}",
        seen("credential()")
    );
    let m = &first.mandates[0];
    assert_eq!(m.organisation.as_str(), "CE-038", "{}", seen("org code"));
    assert_eq!(
        m.account.as_ref().map(Reference::as_str),
        Some("ce.agent1"),
        "{}",
        seen("login")
    );
    assert_eq!(caller(&first).0.revoked_at, None, "{}", seen("fresh"));

    // Another process revokes: the very next read says so.
    let revoked_at = at("2026-03-02T08:00:00Z");
    assert_eq!(
        cli.revoke_credentials(agent1, Some(cred), revoked_at)
            .await
            .on(cli, "revoke"),
        1
    );
    let rows = store.consultation_rows(cred, p).await.on(store, "rows");
    assert_eq!(
        caller(&rows).0.revoked_at,
        Some(revoked_at),
        "{}",
        seen("revoked")
    );
    let alone = store.credential(cred).await.on(store, "credential");
    assert_eq!(
        alone.map(|c| c.0.revoked_at),
        Some(Some(revoked_at)),
        "{}",
        seen("revoked()")
    );

    // A suspension, a change of role, a move of the organisation.
    let cred2 = new_credential(2).await.on(store, "credential");
    let kept = store.consultation_rows(cred2, p).await.on(store, "rows");
    assert_eq!(
        caller(&kept).1.state,
        AccountState::Active,
        "{}",
        seen("active")
    );
    assert!(
        cli.set_account_state(agent1, AccountState::Suspended)
            .await
            .on(cli, "suspend")
    );
    let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
    assert_eq!(
        caller(&rows).1.state,
        AccountState::Suspended,
        "{}",
        seen("suspended")
    );
    let (_, refused) = cli
        .upsert_accounts(vec![account(
            "ce.agent1",
            "CE-038",
            Role::Manager,
            AccountState::Active,
            None,
            Some("ft.officer1"),
        )])
        .await
        .on(cli, "accounts");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
    assert_eq!(caller(&rows).1.role, Role::Manager, "{}", seen("role"));
    assert_eq!(
        caller(&rows).1.state,
        AccountState::Active,
        "{}",
        seen("reactivated")
    );
    let before = caller(&rows).1.departement.clone();
    cli.upsert_organisations(vec![org(
        "CE-038",
        OrganisationKind::CapEmploi,
        "Cap emploi Isère",
        Some("73"),
    )])
    .await
    .on(cli, "organisation");
    let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
    assert_ne!(before.as_deref(), Some("73"), "{}", seen("setup"));
    assert_eq!(
        caller(&rows).1.departement.as_deref(),
        Some("73"),
        "{}",
        seen("moved")
    );

    // The names kept in memory cannot change under the copy.
    let refusals = [
        "UPDATE organisation SET code = 'CE-999' WHERE code = 'CE-038'",
        "UPDATE account SET login = 'ce.other' WHERE login = 'ce.agent1'",
        "DELETE FROM account WHERE login = 'ce.agent2'",
        "DELETE FROM organisation WHERE code = 'ML-069'",
    ]
    .map(|sql| db.place.exec(sql).err());
    for (refusal, says) in refusals.iter().zip([
        "code never",
        "login never",
        "never deleted",
        "never deleted",
    ]) {
        let refusal = refusal.as_deref().unwrap_or("accepted");
        assert!(refusal.contains(says), "[{be}] {refusal}");
    }
    let rows = store.consultation_rows(cred2, p).await.on(store, "rows");
    assert_eq!(
        rows.mandates[0].organisation.as_str(),
        "CE-038",
        "{}",
        seen("code kept")
    );
}
both_backends!(kept_copies_follow_every_writer);
