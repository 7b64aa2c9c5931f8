//! The account lifecycle: requests decided once, under four eyes, by an
//! officer outside the requesting organisation; inactive accounts disabled
//! and the rest reviewed; the state machine for every actor.

use super::*;
use futures_util::future::join_all;
use rempart_storage::{
    AccountChange, AccountLifecycle, NewAccountRequest, NewActivation, Rehearsal, ResetKind,
};

async fn account_requests_are_decided_once_by_an_outside_officer(backend: Backend) {
    use AccountState::{Active, Disabled, Requested, Suspended};
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let (_, refused) = store
        .upsert_accounts(vec![
            account(
                "ce.officer",
                "CE-038",
                Role::Officer,
                Active,
                None,
                Some("ft.officer1"),
            ),
            account("ft.officer2", "FT", Role::Officer, Active, None, None),
        ])
        .await
        .on(store, "officers");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let ce = org_id(store, "CE-038").await;
    let boss = account_id(store, "ce.Boss").await;
    let officer = account_id(store, "ft.officer1").await;
    let officer2 = account_id(store, "ft.officer2").await;
    let ce_officer = account_id(store, "ce.officer").await;
    let request = |login: &str, minutes: i64| NewAccountRequest {
        organisation_id: ce,
        login: r(login),
        role: Role::Agent,
        requested_by: boss,
        at: plus(t0, 60 * minutes),
    };

    let new1 = auth
        .request_account(request("ce.new1", 0))
        .await
        .on(store, "request");
    assert_eq!(
        (
            new1.login.as_str(),
            new1.state,
            new1.role,
            new1.organisation_id
        ),
        ("ce.new1", Requested, Role::Agent, ce),
        "[{be}]"
    );
    assert_eq!(
        auth.lifecycle(new1.account_id).await.on(store, "lifecycle"),
        Some(AccountLifecycle {
            account_id: new1.account_id,
            created_at: Some(t0),
            requested_by: Some(boss),
            decided_by: None,
            decided_at: None,
            last_login_at: None,
            next_session_high_risk: false,
        }),
        "[{be}]"
    );
    assert_eq!(
        store
            .account_by_id(new1.account_id)
            .await
            .on(store, "by id"),
        Some(new1.clone()),
        "[{be}] the registry sees the same account"
    );

    // Refused requests.
    for (req, field, what) in [
        (request("ce.new1", 1), "login", "a login already requested"),
        (
            request("ce.agent1", 1),
            "login",
            "an imported account's login",
        ),
        (
            NewAccountRequest {
                organisation_id: OrganisationId::new(999_999),
                ..request("ce.x", 1)
            },
            "organisation_id",
            "unknown organisation",
        ),
        (
            NewAccountRequest {
                requested_by: AccountId::new(999_999),
                ..request("ce.x", 1)
            },
            "requested_by",
            "unknown requester",
        ),
    ] {
        assert_invalid(store, auth.request_account(req).await, field, what);
    }
    let agent2 = account_id(store, "ce.agent2").await;
    assert!(
        store
            .set_account_state(agent2, Suspended)
            .await
            .on(store, "suspend")
    );
    assert_invalid(
        store,
        auth.request_account(NewAccountRequest {
            requested_by: agent2,
            ..request("ce.x", 1)
        })
        .await,
        "requested_by",
        "a suspended requester",
    );

    let new2 = auth
        .request_account(request("ce.new2", 2))
        .await
        .on(store, "request 2");
    let new3 = auth
        .request_account(request("ce.new3", 3))
        .await
        .on(store, "request 3");
    let new4 = auth
        .request_account(NewAccountRequest {
            organisation_id: org_id(store, "FT").await,
            requested_by: officer2,
            ..request("ft.new4", 4)
        })
        .await
        .on(store, "request 4");

    // Deciders who may not decide.
    for (decider, account, what) in [
        (boss, new1.account_id, "a manager"),
        (
            ce_officer,
            new1.account_id,
            "an officer of the partner itself",
        ),
        (new2.account_id, new1.account_id, "a requested account"),
        (
            AccountId::new(999_999),
            new1.account_id,
            "an unknown account",
        ),
        (officer2, new4.account_id, "the requester"),
    ] {
        assert_invalid(
            store,
            auth.decide_account(account, decider, true, plus(t0, 600))
                .await,
            "officer_id",
            what,
        );
    }
    assert_eq!(
        store
            .account_by_id(new1.account_id)
            .await
            .on(store, "by id")
            .map(|a| a.state),
        Some(Requested),
        "[{be}] refusals change nothing"
    );

    // Approval and rejection, each once.
    let decided_at = plus(t0, 3600);
    let approved = auth
        .decide_account(new1.account_id, officer, true, decided_at)
        .await
        .on(store, "approve")
        .unwrap_or_else(|| panic!("[{be}] approval"));
    assert_eq!(approved.state, Active, "[{be}]");
    let rejected = auth
        .decide_account(new2.account_id, officer, false, decided_at)
        .await
        .on(store, "reject")
        .unwrap_or_else(|| panic!("[{be}] rejection"));
    assert_eq!(rejected.state, Disabled, "[{be}]");
    for (id, approve) in [
        (new1.account_id, true),
        (new1.account_id, false),
        (new2.account_id, true),
        (account_id(store, "ce.agent1").await, true),
        (AccountId::new(999_999), true),
    ] {
        assert_eq!(
            auth.decide_account(id, officer2, approve, plus(decided_at, 1))
                .await
                .on(store, "decide again"),
            None,
            "[{be}] account {id} is not awaiting a decision"
        );
    }
    let states = [new1.account_id, new2.account_id].map(|id| async move {
        store
            .account_by_id(id)
            .await
            .on(store, "by id")
            .map(|a| a.state)
    });
    assert_eq!(
        join_all(states).await,
        vec![Some(Active), Some(Disabled)],
        "[{be}] a decision is final"
    );
    let life = auth
        .lifecycle(new1.account_id)
        .await
        .on(store, "lifecycle")
        .unwrap_or_else(|| panic!("[{be}] lifecycle"));
    assert_eq!(
        (life.decided_by, life.decided_at, life.requested_by),
        (Some(officer), Some(decided_at), Some(boss)),
        "[{be}]"
    );

    // Two officers deciding at once: exactly one decision lands.
    let (x, y) = tokio::join!(
        auth.decide_account(new3.account_id, officer, true, decided_at),
        auth.decide_account(new3.account_id, officer2, false, decided_at),
    );
    let (x, y) = (x.on(store, "race 1"), y.on(store, "race 2"));
    assert_eq!(
        u8::from(x.is_some()) + u8::from(y.is_some()),
        1,
        "[{be}] {x:?} {y:?}"
    );
    let winner = auth
        .lifecycle(new3.account_id)
        .await
        .on(store, "lifecycle")
        .and_then(|l| l.decided_by);
    let state = store
        .account_by_id(new3.account_id)
        .await
        .on(store, "by id")
        .map(|a| a.state);
    assert!(
        (winner == Some(officer) && state == Some(Active))
            || (winner == Some(officer2) && state == Some(Disabled)),
        "[{be}] {winner:?} {state:?}"
    );

    // What is left to decide.
    let pending = auth.pending_requests().await.on(store, "pending");
    assert_eq!(
        pending
            .iter()
            .map(|e| (e.account.login.as_str(), e.lifecycle.requested_by))
            .collect::<Vec<_>>(),
        vec![("ft.new4", Some(officer2))],
        "[{be}]"
    );

    // A burst of requests shows (refused requests are not counted).
    for (since, n) in [(t0, 3), (plus(t0, 120), 2), (plus(t0, 181), 0)] {
        assert_eq!(
            auth.requests_since(boss, since)
                .await
                .on(store, "requests since"),
            n,
            "[{be}] since {since}"
        );
    }
    assert_eq!(
        auth.requests_since(officer2, t0)
            .await
            .on(store, "requests since"),
        1,
        "[{be}]"
    );

    // Logins are recorded, never backwards.
    let login = plus(t0, 7200);
    auth.record_login(new1.account_id, login)
        .await
        .on(store, "login");
    auth.record_login(new1.account_id, plus(login, -60))
        .await
        .on(store, "late login");
    assert_eq!(
        auth.lifecycle(new1.account_id)
            .await
            .on(store, "lifecycle")
            .and_then(|l| l.last_login_at),
        Some(login),
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.record_login(AccountId::new(999_999), login).await,
        "account_id",
        "unknown account",
    );
}
both_backends!(account_requests_are_decided_once_by_an_outside_officer);

async fn inactive_accounts_are_disabled_and_the_rest_reviewed(backend: Backend) {
    use AccountState::{Active, Disabled, Suspended};
    let db = Db::open(backend).await;
    let t0 = at("2026-01-05T08:00:00Z");
    let cutoff = at("2026-03-01T00:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let officer = account_id(store, "ft.officer1").await;
    let boss = account_id(store, "ce.Boss").await;
    let ce = org_id(store, "CE-038").await;
    let mut ids = std::collections::HashMap::new();
    for (n, login) in [
        "ce.never",
        "ce.stale",
        "ce.recent",
        "ce.pending",
        "ce.suspended",
    ]
    .into_iter()
    .enumerate()
    {
        let a = auth
            .request_account(NewAccountRequest {
                organisation_id: ce,
                login: r(login),
                role: Role::Agent,
                requested_by: boss,
                at: plus(t0, n as i64),
            })
            .await
            .on(store, "request");
        if login != "ce.pending" {
            auth.decide_account(a.account_id, officer, true, plus(t0, 3600))
                .await
                .on(store, "approve");
        }
        ids.insert(login, a.account_id);
    }
    auth.record_login(ids["ce.stale"], at("2026-02-01T10:00:00Z"))
        .await
        .on(store, "login");
    auth.record_login(ids["ce.recent"], at("2026-03-10T10:00:00Z"))
        .await
        .on(store, "login");
    auth.record_login(ids["ce.suspended"], at("2026-01-10T10:00:00Z"))
        .await
        .on(store, "login");
    assert!(
        store
            .set_account_state(ids["ce.suspended"], Suspended)
            .await
            .on(store, "suspend")
    );
    // A session still open on a stale account (an idle one never ended).
    let sweep = at("2026-03-15T00:00:00Z");
    auth.insert_session(session_of(
        ids["ce.stale"],
        1,
        "passkey",
        at("2026-02-01T10:00:00Z"),
    ))
    .await
    .on(store, "session");

    let mut want = vec![ids["ce.never"], ids["ce.stale"]];
    want.sort_unstable();
    assert_eq!(
        auth.disable_inactive(cutoff, sweep)
            .await
            .on(store, "disable inactive"),
        want,
        "[{be}] exactly the stale active accounts (imported ones have no history)"
    );
    assert_eq!(
        auth.disable_inactive(cutoff, sweep)
            .await
            .on(store, "again"),
        Vec::<AccountId>::new(),
        "[{be}]"
    );
    for (login, state) in [
        ("ce.never", Disabled),
        ("ce.stale", Disabled),
        ("ce.recent", Active),
        ("ce.pending", AccountState::Requested),
        ("ce.suspended", Suspended),
        ("ce.agent1", Active),
    ] {
        assert_eq!(
            store
                .account_by_login(&r(login))
                .await
                .on(store, "by login")
                .map(|a| a.state),
            Some(state),
            "[{be}] {login}"
        );
    }
    let (s, _) = auth
        .session(key32(1))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session"));
    assert_eq!(
        (s.ended_at, s.end_reason.as_deref()),
        (Some(sweep), Some("inactive")),
        "[{be}]"
    );

    // The review: every account not disabled, by organisation code then
    // login (byte order: upper case first).
    let review = auth.accounts_to_review(None).await.on(store, "review");
    assert_eq!(
        review
            .iter()
            .map(|e| (e.account.organisation.as_str(), e.account.login.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("CE-038", "ce.Boss"),
            ("CE-038", "ce.agent1"),
            ("CE-038", "ce.agent2"),
            ("CE-038", "ce.pending"),
            ("CE-038", "ce.recent"),
            ("CE-038", "ce.suspended"),
            ("FT", "ft.officer1"),
            ("ML-069", "ml.agent1"),
        ],
        "[{be}]"
    );
    for e in &review {
        assert_eq!(
            Some(&e.lifecycle),
            auth.lifecycle(e.account.account_id)
                .await
                .on(store, "lifecycle")
                .as_ref(),
            "[{be}] {}",
            e.account.login
        );
    }
    let recent = review
        .iter()
        .find(|e| e.account.login.as_str() == "ce.recent")
        .map(|e| e.lifecycle.clone());
    assert_eq!(
        recent.map(|l| (l.decided_by, l.last_login_at)),
        Some((Some(officer), Some(at("2026-03-10T10:00:00Z")))),
        "[{be}]"
    );
    let ml = org_id(store, "ML-069").await;
    assert_eq!(
        auth.accounts_to_review(Some(ml))
            .await
            .on(store, "review ML")
            .iter()
            .map(|e| e.account.login.as_str())
            .collect::<Vec<_>>(),
        vec!["ml.agent1"],
        "[{be}]"
    );
    assert!(
        auth.accounts_to_review(Some(OrganisationId::new(999_999)))
            .await
            .on(store, "review of nothing")
            .is_empty(),
        "[{be}]"
    );
}
both_backends!(inactive_accounts_are_disabled_and_the_rest_reviewed);

/// The account state machine, table-driven over every (state, action,
/// actor) triple, for two families of requests: a Cap emploi account asked
/// for by an officer of Cap emploi, and a France Travail agency's account
/// asked for by the agency's manager (the review's detour (d)). Each triple
/// acts on a fresh account brought to its state through the machine itself.
///
/// The store takes an actor for approve, reject, reset-approve and
/// issue-activation, and applies the four-eyes rule to it; suspension and
/// reactivation (administrators, checked by the policy before the store)
/// and disabling (the inactivity job) take none: their outcome must not
/// depend on who is named, which the table checks too.
async fn account_states_move_only_along_the_machine_for_every_actor(backend: Backend) {
    use AccountState::Active;
    use rempart_domain::{AccountAction, LifecycleState};
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Actor {
        Requester,
        OfficerOfRequestingOrg,
        FtOfficerOfSameAgency,
        OutsideOfficer,
        NonOfficer,
        Itself,
    }
    const ACTORS: [Actor; 6] = [
        Actor::Requester,
        Actor::OfficerOfRequestingOrg,
        Actor::FtOfficerOfSameAgency,
        Actor::OutsideOfficer,
        Actor::NonOfficer,
        Actor::Itself,
    ];
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Done,
        /// `None` from a decision: not awaiting one.
        NotFound,
        /// Refused, naming this field.
        Refused(&'static str),
    }
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    store
        .upsert_organisations(vec![
            org(
                "FT",
                OrganisationKind::FranceTravail,
                "France Travail Grenoble",
                Some("38"),
            ),
            org(
                "FT-069",
                OrganisationKind::FranceTravail,
                "France Travail Lyon",
                Some("69"),
            ),
            org(
                "CE-038",
                OrganisationKind::CapEmploi,
                "Cap emploi Isère",
                Some("38"),
            ),
        ])
        .await
        .on(store, "orgs");
    let (_, refused) = store
        .upsert_accounts(vec![
            account("ft.officer1", "FT", Role::Officer, Active, None, None),
            account("ft.officer2", "FT", Role::Officer, Active, None, None),
            account("ftl.officer", "FT-069", Role::Officer, Active, None, None),
            account(
                "ce.officer",
                "CE-038",
                Role::Officer,
                Active,
                None,
                Some("ftl.officer"),
            ),
            account(
                "ce.officer2",
                "CE-038",
                Role::Officer,
                Active,
                None,
                Some("ftl.officer"),
            ),
            account(
                "ft.manager",
                "FT",
                Role::Manager,
                Active,
                None,
                Some("ftl.officer"),
            ),
            account(
                "ft.agent",
                "FT",
                Role::Agent,
                Active,
                None,
                Some("ftl.officer"),
            ),
        ])
        .await
        .on(store, "accounts");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let id = |login: &'static str| account_id(store, login);
    let outside = id("ftl.officer").await;
    // (organisation, requester, officer of the requesting organisation,
    // France Travail officer of the requester's agency if any)
    let families = [
        (
            org_id(store, "CE-038").await,
            id("ce.officer").await,
            id("ce.officer2").await,
            None,
        ),
        (
            org_id(store, "FT").await,
            id("ft.manager").await,
            id("ft.officer1").await,
            Some(id("ft.officer2").await),
        ),
    ];
    let non_officer = id("ft.agent").await;
    let mut n = 0u32;
    let mut counted = std::collections::HashMap::<&str, u32>::new();
    for (family, (org, requester, org_officer, same_agency)) in families.iter().enumerate() {
        for &state in LifecycleState::ALL {
            for &action in AccountAction::ALL {
                for actor in ACTORS {
                    let actor_id = match actor {
                        Actor::Requester => Some(*requester),
                        Actor::OfficerOfRequestingOrg => Some(*org_officer),
                        Actor::FtOfficerOfSameAgency => *same_agency,
                        Actor::OutsideOfficer => Some(outside),
                        Actor::NonOfficer => Some(non_officer),
                        Actor::Itself => None,
                    };
                    if actor == Actor::FtOfficerOfSameAgency && actor_id.is_none() {
                        continue; // a partner has no agency
                    }
                    // A fresh account, brought to `state` by the machine.
                    n += 1;
                    let t = plus(t0, i64::from(n) * 10);
                    let subject = auth
                        .request_account(NewAccountRequest {
                            organisation_id: *org,
                            login: r(&format!("sm.{n}")),
                            role: Role::Agent,
                            requested_by: *requester,
                            at: t,
                        })
                        .await
                        .on(store, "request")
                        .account_id;
                    match state {
                        LifecycleState::Requested => {}
                        LifecycleState::Rejected => {
                            auth.decide_account(subject, outside, false, t)
                                .await
                                .on(store, "reject")
                                .unwrap_or_else(|| panic!("[{be}] rejection"));
                        }
                        _ => {
                            auth.decide_account(subject, outside, true, t)
                                .await
                                .on(store, "approve")
                                .unwrap_or_else(|| panic!("[{be}] approval"));
                        }
                    }
                    if state == LifecycleState::Suspended {
                        assert!(
                            store
                                .set_account_state(subject, AccountState::Suspended)
                                .await
                                .on(store, "suspend"),
                            "[{be}]"
                        );
                    }
                    if state == LifecycleState::Disabled {
                        let gone = auth
                            .disable_inactive(plus(t, 1), plus(t, 2))
                            .await
                            .on(store, "disable");
                        assert!(gone.contains(&subject), "[{be}]");
                    }
                    let actor_id = actor_id.unwrap_or(subject);
                    let before = store.account_by_id(subject).await.on(store, "before");
                    let at_ = plus(t, 3);
                    let is_four_eyes = actor == Actor::OutsideOfficer;
                    let from_ok = action.from_states().contains(&state);
                    let refusal = |r: Result<(), StorageError>| match r {
                        Ok(()) => Outcome::Done,
                        Err(e) if e.refused().is_some() => Outcome::Refused(
                            ["officer_id", "state", "issued_by", "account_id"]
                                .into_iter()
                                .find(|f| e.refused().is_some_and(|(field, _)| field == *f))
                                .unwrap_or_else(|| panic!("[{be}] unnamed field: {e}")),
                        ),
                        Err(e) => panic!("[{be}] {e}"),
                    };
                    // What the consultation path rehearses before it
                    // ledgers: the same outcome, nothing moved.
                    let rehearsed = |r: Result<Option<Rehearsal>, StorageError>| match r {
                        Ok(Some(_)) => Outcome::Done,
                        Ok(None) => Outcome::NotFound,
                        Err(e) => refusal(Err(e)),
                    };
                    let unmoved = || async {
                        let now = store.account_by_id(subject).await.on(store, "rehearsed");
                        assert_eq!(
                            now.map(|a| a.state),
                            before.as_ref().map(|a| a.state),
                            "[{be}] a rehearsal moves nothing"
                        );
                    };
                    let mut rehearsal = None;
                    let (got, expected) = match action {
                        AccountAction::Approve | AccountAction::Reject => {
                            let change = AccountChange::Decide {
                                account_id: subject,
                                officer_id: actor_id,
                                approve: action == AccountAction::Approve,
                            };
                            rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                            unmoved().await;
                            let got = match auth
                                .decide_account(
                                    subject,
                                    actor_id,
                                    action == AccountAction::Approve,
                                    at_,
                                )
                                .await
                            {
                                Ok(Some(_)) => Outcome::Done,
                                Ok(None) => Outcome::NotFound,
                                Err(e) => refusal(Err(e)),
                            };
                            let expected = match (from_ok, is_four_eyes) {
                                (false, _) => Outcome::NotFound,
                                (true, false) => Outcome::Refused("officer_id"),
                                (true, true) => Outcome::Done,
                            };
                            (got, expected)
                        }
                        AccountAction::Suspend | AccountAction::Reactivate => {
                            let to = if action == AccountAction::Suspend {
                                AccountState::Suspended
                            } else {
                                Active
                            };
                            let change = AccountChange::State {
                                account_id: subject,
                                state: to,
                            };
                            rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                            unmoved().await;
                            let got = match store.set_account_state(subject, to).await {
                                Ok(true) => Outcome::Done,
                                Ok(false) => Outcome::NotFound,
                                Err(e) => refusal(Err(e)),
                            };
                            let expected = if from_ok {
                                Outcome::Done
                            } else {
                                Outcome::Refused("state")
                            };
                            (got, expected)
                        }
                        AccountAction::Disable => {
                            let gone = auth
                                .disable_inactive(plus(at_, 1), plus(at_, 2))
                                .await
                                .on(store, "disable");
                            let got = if gone.contains(&subject) {
                                Outcome::Done
                            } else {
                                Outcome::NotFound
                            };
                            let expected = if from_ok {
                                Outcome::Done
                            } else {
                                Outcome::NotFound
                            };
                            (got, expected)
                        }
                        AccountAction::ApproveReset => {
                            let reset = auth
                                .request_reset(subject, ResetKind::All, *requester, at_)
                                .await
                                .on(store, "request reset");
                            let change = AccountChange::DecideReset {
                                reset_id: reset.id,
                                officer_id: actor_id,
                                approve: true,
                            };
                            rehearsal = Some(rehearsed(auth.rehearse(&change, at_).await));
                            unmoved().await;
                            let got = match auth.decide_reset(reset.id, actor_id, true, at_).await {
                                Ok(Some(_)) => Outcome::Done,
                                Ok(None) => Outcome::NotFound,
                                Err(e) => refusal(Err(e)),
                            };
                            let expected = match (is_four_eyes, from_ok) {
                                (false, _) => Outcome::Refused("officer_id"),
                                (true, false) => Outcome::Refused("state"),
                                (true, true) => Outcome::Done,
                            };
                            (got, expected)
                        }
                        AccountAction::IssueActivation => {
                            let got = refusal(
                                auth.issue_activation(NewActivation {
                                    account_id: subject,
                                    digest: key32(7),
                                    issued_by: actor_id,
                                    issued_at: at_,
                                    expires_at: plus(at_, 3600),
                                })
                                .await,
                            );
                            // The account is checked first, then its issuer,
                            // who stands where a decider would.
                            let expected = match (from_ok, is_four_eyes) {
                                (false, _) => Outcome::Refused("account_id"),
                                (true, false) => Outcome::Refused("issued_by"),
                                (true, true) => Outcome::Done,
                            };
                            (got, expected)
                        }
                    };
                    assert_eq!(
                        got, expected,
                        "[{be}] family {family}, {state} × {action} × {actor:?}"
                    );
                    if let Some(rehearsal) = rehearsal {
                        assert_eq!(
                            rehearsal, got,
                            "[{be}] rehearsed: family {family}, {state} × {action} × {actor:?}"
                        );
                        *counted.entry("rehearsed").or_default() += 1;
                    }
                    // On a refusal nothing moved; on success, where the
                    // machine says.
                    let after = store.account_by_id(subject).await.on(store, "after");
                    let after = after.map(|a| a.state);
                    let want = if got == Outcome::Done {
                        action.to_state().unwrap_or(state).stored()
                    } else {
                        state.stored()
                    };
                    assert_eq!(
                        after,
                        Some(want),
                        "[{be}] family {family}, {state} × {action} × {actor:?}: {before:?}"
                    );
                    if got == Outcome::Done && action == AccountAction::IssueActivation {
                        assert!(auth.activation(subject).await.on(store, "code").is_some());
                    } else if action == AccountAction::IssueActivation {
                        assert!(
                            auth.activation(subject).await.on(store, "code").is_none(),
                            "[{be}] no code left behind"
                        );
                    }
                    *counted
                        .entry(if got == Outcome::Done {
                            "done"
                        } else {
                            "refused"
                        })
                        .or_default() += 1;
                }
            }
        }
    }
    // 5 states × 7 actions × (6 + 5) actors.
    assert_eq!(n, 5 * 7 * 11, "[{be}]");
    eprintln!("[{be}] {n} triples: {counted:?}");

    // An import follows the machine too: it suspends, reactivates and
    // disables, but never approves, revives or re-requests. Fresh
    // accounts, the disabled one first (disabling takes every active
    // account of known history).
    let (org, requester, _, _) = families[0];
    let mut samples = Vec::new();
    for state in [
        LifecycleState::Disabled,
        LifecycleState::Requested,
        LifecycleState::Active,
        LifecycleState::Suspended,
        LifecycleState::Rejected,
    ] {
        n += 1;
        let t = plus(t0, i64::from(n) * 10);
        let login = format!("sm.{n}");
        let subject = auth
            .request_account(NewAccountRequest {
                organisation_id: org,
                login: r(&login),
                role: Role::Agent,
                requested_by: requester,
                at: t,
            })
            .await
            .on(store, "request")
            .account_id;
        if state != LifecycleState::Requested {
            auth.decide_account(subject, outside, state != LifecycleState::Rejected, t)
                .await
                .on(store, "decide")
                .unwrap_or_else(|| panic!("[{be}] decision"));
        }
        match state {
            LifecycleState::Suspended => {
                store
                    .set_account_state(subject, AccountState::Suspended)
                    .await
                    .on(store, "suspend");
            }
            LifecycleState::Disabled => {
                auth.disable_inactive(plus(t, 1), plus(t, 2))
                    .await
                    .on(store, "disable");
            }
            _ => {}
        }
        samples.push((state, login, subject));
    }
    for (state, login, subject) in samples {
        for to in [Active, AccountState::Suspended, AccountState::Requested] {
            let row = account(
                &login,
                "CE-038",
                Role::Agent,
                to,
                Some("ce.officer"),
                Some("ftl.officer"),
            );
            let before = store.account_by_id(subject).await.on(store, "before");
            let (count, refused) = store.upsert_accounts(vec![row]).await.on(store, "import");
            let from = state.stored();
            let allowed = from == to
                || matches!(
                    (state, to),
                    (LifecycleState::Active, AccountState::Suspended)
                        | (LifecycleState::Suspended, AccountState::Active)
                );
            let after = store.account_by_id(subject).await.on(store, "after");
            if allowed {
                assert!(refused.is_empty(), "[{be}] {state} → {to}: {refused:?}");
                assert_eq!(after.map(|a| a.state), Some(to), "[{be}] {state} → {to}");
            } else {
                assert_eq!(
                    refusal_fields(&refused),
                    vec![(0, "state")],
                    "[{be}] {state} → {to}"
                );
                assert_eq!(count.updated, 0, "[{be}]");
                assert_eq!(after, before, "[{be}] {state} → {to}: unchanged");
            }
            // Back where it was, for the next target (through the
            // machine: only active ↔ suspended ever moved).
            if allowed && from != to {
                store
                    .set_account_state(subject, from)
                    .await
                    .on(store, "back");
            }
        }
    }
}
both_backends!(account_states_move_only_along_the_machine_for_every_actor);
