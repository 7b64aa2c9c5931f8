//! Organisations and accounts as imported: idempotent upserts with
//! refusals per row, and the lookups.

use super::*;
use rempart_storage::AccountRecord;

async fn organisations_and_accounts_upsert_idempotently_with_refusals(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    let orgs = organisations();
    assert_eq!(
        store
            .upsert_organisations(orgs.clone())
            .await
            .on(store, "orgs"),
        count(3, 0, 0),
        "[{be}]"
    );
    assert_eq!(
        store
            .upsert_organisations(orgs.clone())
            .await
            .on(store, "orgs again"),
        count(0, 0, 3),
        "[{be}]"
    );
    let mut renamed = orgs.clone();
    renamed[1].name = "Cap emploi 38".into();
    renamed[2].departement = None;
    assert_eq!(
        store
            .upsert_organisations(renamed)
            .await
            .on(store, "orgs renamed"),
        count(0, 2, 1),
        "[{be}]"
    );
    assert_eq!(
        store
            .upsert_organisations(vec![])
            .await
            .on(store, "no orgs"),
        count(0, 0, 0),
        "[{be}]"
    );

    use AccountState::*;
    use Role::*;
    let accounts = vec![
        // Approved by an officer of France Travail, listed after them.
        account(
            "ce.manager1",
            "CE-038",
            Manager,
            Active,
            None,
            Some("ft.officer1"),
        ),
        account("ft.officer1", "FT", Officer, Active, None, None),
        account(
            "ce.agent1",
            "CE-038",
            Agent,
            Requested,
            Some("ce.manager1"),
            Some("ft.officer1"),
        ),
        account("x.agent", "NOPE", Agent, Active, None, None),
        account("ce.agent2", "CE-038", Agent, Requested, Some("ghost"), None),
        account("ce.agent3", "CE-038", Agent, Active, None, Some("ghost")),
        account(
            "ce.agent4",
            "CE-038",
            Agent,
            Active,
            None,
            Some("ce.manager1"),
        ),
        // Its requester is refused above: refused in turn.
        account(
            "ce.agent5",
            "CE-038",
            Agent,
            Requested,
            Some("ce.agent2"),
            None,
        ),
        // An officer inside a partner organisation…
        account(
            "ce.officer",
            "CE-038",
            Officer,
            Active,
            None,
            Some("ft.officer1"),
        ),
        // …cannot approve accounts of that organisation.
        account(
            "ce.agent6",
            "CE-038",
            Agent,
            Active,
            None,
            Some("ce.officer"),
        ),
        // Nobody approves themselves, nor what they requested.
        account(
            "ft.officer2",
            "FT",
            Officer,
            Active,
            None,
            Some("ft.officer2"),
        ),
        account(
            "ft.agent2",
            "FT",
            Agent,
            Active,
            Some("ft.officer1"),
            Some("ft.officer1"),
        ),
    ];
    let want_refusals = vec![
        (3, "organisation"),
        (4, "requested_by"),
        (5, "approved_by"),
        (6, "approved_by"),
        (7, "requested_by"),
        (9, "approved_by"),
        (10, "approved_by"),
        (11, "approved_by"),
    ];
    let (c, refused) = store
        .upsert_accounts(accounts.clone())
        .await
        .on(store, "accounts");
    assert_eq!(c, count(4, 0, 0), "[{be}]");
    assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");
    assert!(
        refused[3].reason.contains("only an officer"),
        "[{be}] {:?}",
        refused[3]
    );
    for r in &refused[5..] {
        assert!(r.reason.contains("four eyes"), "[{be}] {r:?}");
    }
    assert_eq!(refused[0].reason, "no such organisation", "[{be}]");
    assert_eq!(refused[2].reason, "no such account", "[{be}]");

    let (c, refused) = store
        .upsert_accounts(accounts.clone())
        .await
        .on(store, "accounts again");
    assert_eq!(c, count(0, 0, 4), "[{be}] second identical call");
    assert_eq!(refusal_fields(&refused), want_refusals, "[{be}]");

    // Changes of state or of links are updates; stored approvers count.
    let batch = vec![
        account(
            "ce.agent1",
            "CE-038",
            Agent,
            Active,
            Some("ce.manager1"),
            Some("ft.officer1"),
        ),
        account("ce.manager1", "CE-038", Manager, Active, None, None),
        account(
            "ml.agent1",
            "ML-069",
            Agent,
            Active,
            Some("ce.manager1"),
            Some("ft.officer1"),
        ),
        account("ft.agent1", "FT", Agent, Active, None, Some("ft.officer1")),
        account("ft.officer1", "FT", Officer, Active, None, None),
    ];
    let (c, refused) = store
        .upsert_accounts(batch.clone())
        .await
        .on(store, "account changes");
    // France Travail officers may approve colleagues of their own agency.
    // A requested account is not approved by an import, though: that
    // row is refused and the account stays requested.
    assert_eq!(c, count(2, 1, 1), "[{be}]");
    assert_eq!(refusal_fields(&refused), vec![(0, "state")], "[{be}]");
    assert!(
        refused[0].reason.contains("four eyes"),
        "[{be}] {refused:?}"
    );
    let (c, _) = store
        .upsert_accounts(batch)
        .await
        .on(store, "account changes again");
    assert_eq!(c, count(0, 0, 4), "[{be}]");

    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(
        inv.organisations_by_kind,
        vec![
            (OrganisationKind::CapEmploi, 1),
            (OrganisationKind::FranceTravail, 1),
            (OrganisationKind::MissionLocale, 1)
        ],
        "[{be}]"
    );
    assert_eq!(
        inv.accounts_by_role,
        vec![(Agent, 3), (Manager, 1), (Officer, 2)],
        "[{be}]"
    );
    assert_eq!(
        inv.accounts_by_state,
        vec![(Active, 5), (Requested, 1)],
        "[{be}]"
    );
}
both_backends!(organisations_and_accounts_upsert_idempotently_with_refusals);

async fn accounts_and_organisations_are_looked_up(backend: Backend) {
    let db = Db::open(backend).await;
    let store = db.store();
    let be = store.backend();
    assert!(
        store.organisations().await.on(store, "orgs").is_empty(),
        "[{be}]"
    );
    consultation_accounts(store).await;

    // Organisations by code order (byte order: C < F < M), with ids.
    let orgs = store.organisations().await.on(store, "orgs");
    let mut want = organisations();
    want.sort_by(|a, b| a.code.as_str().cmp(b.code.as_str()));
    assert_eq!(
        orgs.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        want,
        "[{be}]"
    );
    let ce = org_id(store, "CE-038").await;
    let ml = org_id(store, "ML-069").await;
    assert!(ce != ml, "[{be}] distinct ids");

    let agent1 = store
        .account_by_login(&r("ce.agent1"))
        .await
        .on(store, "by login")
        .unwrap_or_else(|| panic!("[{be}] ce.agent1 missing"));
    assert_eq!(
        agent1,
        AccountRecord {
            account_id: agent1.account_id,
            login: r("ce.agent1"),
            role: Role::Agent,
            state: AccountState::Active,
            organisation_id: ce,
            organisation: r("CE-038"),
            kind: OrganisationKind::CapEmploi,
            // Imported: no request, so no creation instant.
            created_at: None,
            departement: Some("38".into()),
        },
        "[{be}]"
    );
    assert_eq!(
        store
            .account_by_id(agent1.account_id)
            .await
            .on(store, "by id"),
        Some(agent1.clone()),
        "[{be}]"
    );
    let officer = store
        .account_by_login(&r("ft.officer1"))
        .await
        .on(store, "by login")
        .unwrap_or_else(|| panic!("[{be}] ft.officer1 missing"));
    assert_eq!(
        (officer.role, officer.kind, officer.organisation.as_str()),
        (Role::Officer, OrganisationKind::FranceTravail, "FT"),
        "[{be}]"
    );
    assert_eq!(
        store
            .account_by_login(&r("nobody"))
            .await
            .on(store, "by login"),
        None,
        "[{be}]"
    );
    assert_eq!(
        store
            .account_by_id(AccountId::new(999_999))
            .await
            .on(store, "by id"),
        None,
        "[{be}]"
    );

    // Accounts of an organisation, by login in byte order (upper case first).
    let logins = |accounts: Vec<AccountRecord>| {
        accounts
            .into_iter()
            .map(|a| (a.login.as_str().to_string(), a.organisation_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        logins(
            store
                .accounts_of_organisation(ce)
                .await
                .on(store, "accounts of CE")
        ),
        vec![
            ("ce.Boss".to_string(), ce),
            ("ce.agent1".to_string(), ce),
            ("ce.agent2".to_string(), ce)
        ],
        "[{be}]"
    );
    assert_eq!(
        logins(
            store
                .accounts_of_organisation(ml)
                .await
                .on(store, "accounts of ML")
        ),
        vec![("ml.agent1".to_string(), ml)],
        "[{be}]"
    );
    assert!(
        store
            .accounts_of_organisation(OrganisationId::new(999_999))
            .await
            .on(store, "accounts of nothing")
            .is_empty(),
        "[{be}]"
    );

    // States change by id; an unknown id changes nothing.
    let agent2 = account_id(store, "ce.agent2").await;
    assert!(
        store
            .set_account_state(agent2, AccountState::Suspended)
            .await
            .on(store, "suspend"),
        "[{be}]"
    );
    let got = store.account_by_id(agent2).await.on(store, "by id");
    assert_eq!(
        got.map(|a| a.state),
        Some(AccountState::Suspended),
        "[{be}]"
    );
    assert!(
        !store
            .set_account_state(AccountId::new(999_999), AccountState::Suspended)
            .await
            .on(store, "unknown"),
        "[{be}]"
    );
    // Only a suspension or a reactivation goes through this door.
    for to in [AccountState::Disabled, AccountState::Requested] {
        assert_invalid(
            store,
            store.set_account_state(agent2, to).await,
            "state",
            "not a suspension or reactivation",
        );
    }
    let inv = store.inventory().await.on(store, "inventory");
    assert_eq!(
        inv.accounts_by_state,
        vec![(AccountState::Active, 4), (AccountState::Suspended, 1)],
        "[{be}] only that account changed"
    );
    assert!(
        store
            .set_account_state(agent2, AccountState::Active)
            .await
            .on(store, "reactivate"),
        "[{be}]"
    );
    assert_eq!(
        store
            .account_by_login(&r("ce.agent2"))
            .await
            .on(store, "by login")
            .map(|a| a.state),
        Some(AccountState::Active),
        "[{be}]"
    );
}
both_backends!(accounts_and_organisations_are_looked_up);
