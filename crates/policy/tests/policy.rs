//! The shipped policies, their failure modes at start-up, and the full
//! decision table.

use rempart_domain::{
    AccountId, AccountState, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};
use rempart_policy::{
    Action, Authorizer, DEFAULT_POLICIES, DEFAULT_SCHEMA, MandateFact, NirView, PolicyError,
    PolicySet, What, Who,
};

const ORG: OrganisationId = OrganisationId::new(10);
const ACCOUNT: AccountId = AccountId::new(100);

fn who(kind: OrganisationKind, role: Role, state: AccountState) -> Who {
    Who {
        account_id: ACCOUNT,
        login: "agent.test".into(),
        role,
        state,
        organisation_id: ORG,
        kind,
    }
}

fn what(purpose: Purpose, mandates: Vec<MandateFact>) -> What {
    What {
        person_id: PersonId::new(42),
        purpose,
        mandates,
        reason_len: 0,
    }
}

fn defaults() -> Authorizer {
    match Authorizer::defaults() {
        Ok(a) => a,
        Err(e) => panic!("shipped policies must load: {e}"),
    }
}

#[test]
fn shipped_policies_validate_against_the_schema() {
    let a = PolicySet::load(DEFAULT_SCHEMA, DEFAULT_POLICIES).unwrap();
    assert!(a.policy_count() >= 10, "{}", a.policy_count());
    // The files on disk are the embedded ones.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let from_dir = Authorizer::from_dir(dir).unwrap();
    assert_eq!(from_dir.policy_count(), a.policy_count());
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/default.cedar")).unwrap(),
        DEFAULT_POLICIES
    );
}

#[test]
fn a_syntax_error_stops_start_up_naming_file_line_and_column() {
    let broken = DEFAULT_POLICIES.replacen(
        "unless { principal.state == \"active\" };",
        "unless { principal.state == \"active\" ",
        1,
    );
    assert_ne!(broken, DEFAULT_POLICIES);
    let err = PolicySet::load(DEFAULT_SCHEMA, &broken).unwrap_err();
    assert!(matches!(err, PolicyError::Syntax(_)), "{err:?}");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.starts_with("syntax error in a policy file"), "{text}");
    assert!(text.contains("default.cedar:"), "{text}");
    // The problem is located (line:column) on the broken guardrail or after it.
    let PolicyError::Syntax(problems) = &err else {
        unreachable!()
    };
    let at = problems.0[0].location.expect("located");
    let guard_line = DEFAULT_POLICIES
        .lines()
        .position(|l| l.contains("principal.state == \"active\""))
        .unwrap()
        + 1;
    assert!(at.line >= guard_line, "{text}");
    assert!(
        text.contains(&format!("default.cedar:{}:", at.line)),
        "{text}"
    );
}

#[test]
fn a_broken_file_in_the_policy_directory_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rempart.cedarschema"), DEFAULT_SCHEMA).unwrap();
    std::fs::write(dir.path().join("default.cedar"), DEFAULT_POLICIES).unwrap();
    std::fs::write(
        dir.path().join("local.cedar"),
        "// local additions\npermit (principal, action, resource) when { principal.role = \"agent\" };\n",
    )
    .unwrap();
    let err = Authorizer::from_dir(dir.path()).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, PolicyError::Syntax(_)), "{text}");
    assert!(text.contains("local.cedar:2:"), "{text}");

    std::fs::remove_file(dir.path().join("local.cedar")).unwrap();
    std::fs::remove_file(dir.path().join("default.cedar")).unwrap();
    let err = Authorizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err}");

    let err = Authorizer::from_dir(dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("rempart.cedarschema"), "{err}");
}

#[test]
fn a_policy_that_does_not_type_check_stops_start_up() {
    // `principal.grade` does not exist; `context.purpose` is a String, not a Long.
    let extra = "\n@id(\"typo\")\npermit (principal, action == Action::\"read_identity\", resource)\nwhen { principal.grade == \"agent\" };\n\
                 @id(\"wrong-type\")\npermit (principal, action == Action::\"read_contact\", resource)\nwhen { context.purpose > 3 };\n";
    let policies = format!("{DEFAULT_POLICIES}{extra}");
    let err = PolicySet::load(DEFAULT_SCHEMA, &policies).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    let PolicyError::Validation(problems) = &err else {
        panic!("expected a validation error, got {text}")
    };
    assert!(text.contains("do not type-check"), "{text}");
    let typo = problems
        .0
        .iter()
        .find(|p| p.policy.as_deref() == Some("typo"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(typo.message.contains("grade"), "{text}");
    let typo_line = policies
        .lines()
        .position(|l| l.contains("principal.grade"))
        .unwrap()
        + 1;
    assert_eq!(typo.location.map(|l| l.line), Some(typo_line), "{text}");
    assert!(
        problems
            .0
            .iter()
            .any(|p| p.policy.as_deref() == Some("wrong-type")),
        "{text}"
    );
    assert!(
        text.contains(&format!("default.cedar:{typo_line}:")),
        "{text}"
    );
}

#[test]
fn an_invalid_schema_or_a_schema_without_our_actions_stops_start_up() {
    let err = PolicySet::load("entity Account = { role: Strin };", DEFAULT_POLICIES).unwrap_err();
    assert!(matches!(err, PolicyError::Schema(_)), "{err}");
    assert!(err.to_string().contains("rempart.cedarschema"), "{err}");

    let err = PolicySet::load("entity Account = { role: String", DEFAULT_POLICIES).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, PolicyError::Schema(_)), "{err}");
    assert!(err.to_string().contains("rempart.cedarschema:1:"), "{err}");

    let without = DEFAULT_SCHEMA.replace("grant_mandate, ", "");
    let err = PolicySet::load(&without, DEFAULT_POLICIES).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::MissingAction {
                action: "grant_mandate"
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_policy_ids_are_refused() {
    let policies = format!(
        "{DEFAULT_POLICIES}\n@id(\"partner-follow-up\")\npermit (principal, action == Action::\"search\", resource);\n"
    );
    let err = PolicySet::load(DEFAULT_SCHEMA, &policies).unwrap_err();
    assert!(matches!(err, PolicyError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("partner-follow-up"), "{err}");
}

/// How the mandate on the person stands for the requesting account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MandateState {
    /// Live, held by the organisation, no account named.
    LiveOrganisation,
    /// Live, names this account.
    LiveThisAccount,
    /// Held by the organisation, ended.
    Expired,
    /// No mandate at all.
    Absent,
    /// Live, held by the organisation but naming another account.
    OtherAccount,
    /// Live, held by another organisation.
    OtherOrganisation,
    /// Live, held by the organisation, for another purpose.
    OtherPurpose,
}

const MANDATE_STATES: &[MandateState] = &[
    MandateState::LiveOrganisation,
    MandateState::LiveThisAccount,
    MandateState::Expired,
    MandateState::Absent,
    MandateState::OtherAccount,
    MandateState::OtherOrganisation,
    MandateState::OtherPurpose,
];

fn mandates(state: MandateState, purpose: Purpose) -> Vec<MandateFact> {
    let other_purpose = if purpose == Purpose::FollowUp {
        Purpose::Training
    } else {
        Purpose::FollowUp
    };
    let m = |organisation_id, account_id, purpose, live| MandateFact {
        organisation_id,
        account_id,
        purpose,
        live,
    };
    match state {
        MandateState::LiveOrganisation => vec![m(ORG, None, purpose, true)],
        MandateState::LiveThisAccount => vec![m(ORG, Some(ACCOUNT), purpose, true)],
        MandateState::Expired => vec![m(ORG, None, purpose, false)],
        MandateState::Absent => vec![],
        MandateState::OtherAccount => vec![m(
            ORG,
            Some(AccountId::new(ACCOUNT.get() + 1)),
            purpose,
            true,
        )],
        MandateState::OtherOrganisation => {
            vec![m(OrganisationId::new(ORG.get() + 1), None, purpose, true)]
        }
        MandateState::OtherPurpose => vec![m(ORG, None, other_purpose, true)],
    }
}

/// The policy table: what an active agent holding a live mandate for the
/// purpose may read.
fn expected_with_live_mandate(
    kind: OrganisationKind,
    purpose: Purpose,
) -> (Vec<FieldGroup>, NirView) {
    use FieldGroup::*;
    use OrganisationKind::*;
    use Purpose::*;
    match (kind, purpose) {
        (FranceTravail, FollowUp) => (vec![Identity, Contact, Nir, Status], NirView::Clear),
        (FranceTravail, Compensation) => (vec![Identity, Nir, Status], NirView::Clear),
        (CapEmploi | MissionLocale, FollowUp) => {
            (vec![Identity, Contact, Nir, Status], NirView::Masked)
        }
        (TrainingProvider, Training) => (vec![Identity, Contact], NirView::None),
        (Processor, DocumentProcessing) => (vec![Nir], NirView::Token),
        _ => (vec![], NirView::None),
    }
}

#[test]
fn decision_table_kind_purpose_mandate_and_account_state() {
    let a = defaults();
    let mut checked = 0;
    for kind in OrganisationKind::ALL {
        for purpose in Purpose::ALL {
            for mandate in MANDATE_STATES {
                for state in AccountState::ALL {
                    let holds = matches!(
                        mandate,
                        MandateState::LiveOrganisation | MandateState::LiveThisAccount
                    );
                    let expected = if holds && *state == AccountState::Active {
                        expected_with_live_mandate(*kind, *purpose)
                    } else {
                        (vec![], NirView::None)
                    };
                    let w = who(*kind, Role::Agent, *state);
                    let q = what(*purpose, mandates(*mandate, *purpose));
                    let d = a.allowed_field_groups(&w, &q).unwrap();
                    assert_eq!(
                        (d.groups.clone(), d.nir),
                        expected,
                        "{kind} {purpose} {mandate:?} {state}"
                    );
                    assert_eq!(d.allows(FieldGroup::Nir), d.nir != NirView::None);
                    // The per-action answers agree with the summary.
                    assert_eq!(
                        a.is_allowed(&w, Action::ReadIdentity, &q).unwrap(),
                        d.allows(FieldGroup::Identity)
                    );
                    // Partners never get the NIR in clear, whatever else holds.
                    if *kind != OrganisationKind::FranceTravail {
                        assert!(!a.is_allowed(&w, Action::ReadNirClear, &q).unwrap());
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 4 * MANDATE_STATES.len() * 4);
}

#[test]
fn a_live_mandate_among_others_is_found_and_the_rest_do_not_matter() {
    let a = defaults();
    let w = who(
        OrganisationKind::CapEmploi,
        Role::Agent,
        AccountState::Active,
    );
    let mut all = Vec::new();
    for state in MANDATE_STATES {
        if *state != MandateState::LiveThisAccount && *state != MandateState::LiveOrganisation {
            all.extend(mandates(*state, Purpose::FollowUp));
        }
    }
    let denied = a
        .allowed_field_groups(&w, &what(Purpose::FollowUp, all.clone()))
        .unwrap();
    assert!(denied.is_denied(), "{denied:?}");
    all.extend(mandates(MandateState::LiveThisAccount, Purpose::FollowUp));
    let d = a
        .allowed_field_groups(&w, &what(Purpose::FollowUp, all))
        .unwrap();
    assert_eq!(d.nir, NirView::Masked);
    assert_eq!(d.groups.len(), 4);
}

#[test]
fn roles_other_than_agent_read_nothing() {
    let a = defaults();
    for kind in OrganisationKind::ALL {
        for role in Role::ALL.iter().filter(|r| **r != Role::Agent) {
            for purpose in Purpose::ALL {
                let w = who(*kind, *role, AccountState::Active);
                let q = what(*purpose, mandates(MandateState::LiveThisAccount, *purpose));
                let d = a.allowed_field_groups(&w, &q).unwrap();
                assert!(d.is_denied(), "{kind} {role} {purpose}: {d:?}");
            }
        }
    }
}

#[test]
fn officer_actions_need_an_active_agency_officer_and_break_glass_an_agency_agent_and_a_reason() {
    let a = defaults();
    let none = what(Purpose::FollowUp, vec![]);
    let with_reason = What {
        reason_len: 40,
        ..none.clone()
    };
    let short_reason = What {
        reason_len: 19,
        ..none.clone()
    };
    let officer = who(
        OrganisationKind::FranceTravail,
        Role::Officer,
        AccountState::Active,
    );
    for action in [
        Action::GrantMandate,
        Action::RevokeMandate,
        Action::ManageAccounts,
    ] {
        assert!(a.is_allowed(&officer, action, &none).unwrap(), "{action:?}");
    }
    // Break-glass is for agency agents, never officers (who read nothing).
    let ft_agent = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Active,
    );
    assert!(
        a.is_allowed(&ft_agent, Action::BreakGlass, &with_reason)
            .unwrap()
    );
    assert!(
        !a.is_allowed(&ft_agent, Action::BreakGlass, &short_reason)
            .unwrap()
    );
    assert!(!a.is_allowed(&ft_agent, Action::BreakGlass, &none).unwrap());
    assert!(
        !a.is_allowed(&officer, Action::BreakGlass, &with_reason)
            .unwrap()
    );
    let training = What {
        purpose: Purpose::Training,
        ..with_reason.clone()
    };
    assert!(
        !a.is_allowed(&ft_agent, Action::BreakGlass, &training)
            .unwrap()
    );

    // A suspended officer, a partner "officer", an agent, a manager: no.
    let suspended = who(
        OrganisationKind::FranceTravail,
        Role::Officer,
        AccountState::Suspended,
    );
    let partner = who(
        OrganisationKind::MissionLocale,
        Role::Officer,
        AccountState::Active,
    );
    let agent = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Active,
    );
    let manager = who(
        OrganisationKind::MissionLocale,
        Role::Manager,
        AccountState::Active,
    );
    let partner_agent = who(
        OrganisationKind::CapEmploi,
        Role::Agent,
        AccountState::Active,
    );
    let suspended_agent = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Suspended,
    );
    for w in [
        &suspended,
        &partner,
        &manager,
        &partner_agent,
        &suspended_agent,
    ] {
        assert!(!a.is_allowed(w, Action::BreakGlass, &with_reason).unwrap());
    }
    for w in [&suspended, &partner, &agent, &manager] {
        for action in [
            Action::GrantMandate,
            Action::RevokeMandate,
            Action::ManageAccounts,
        ] {
            assert!(
                !a.is_allowed(w, action, &with_reason).unwrap(),
                "{:?} {:?} {action:?}",
                w.kind,
                w.role
            );
        }
    }
}

/// No account is born alone: which roles may ask for accounts and resets,
/// decide on them and review accounts, over every kind, role and state.
#[test]
fn the_account_lifecycle_actions_follow_the_four_eyes_roles() {
    let a = defaults();
    let none = what(Purpose::FollowUp, vec![]);
    for kind in OrganisationKind::ALL {
        for role in Role::ALL {
            for state in AccountState::ALL {
                let w = who(*kind, *role, *state);
                let active = *state == AccountState::Active;
                let agency_officer =
                    *kind == OrganisationKind::FranceTravail && *role == Role::Officer;
                let expected = [
                    (Action::RequestAccount, *role == Role::Manager),
                    (
                        Action::RequestReset,
                        *role == Role::Manager || agency_officer,
                    ),
                    (Action::DecideAccount, agency_officer),
                    (
                        Action::ReviewAccounts,
                        *kind == OrganisationKind::FranceTravail
                            && matches!(role, Role::Officer | Role::Security),
                    ),
                ];
                for (action, allowed) in expected {
                    assert_eq!(
                        a.is_allowed(&w, action, &none).unwrap(),
                        allowed && active,
                        "{kind} {role} {state} {action:?}"
                    );
                    // The memo and Cedar agree.
                    assert_eq!(
                        a.is_allowed_uncached(&w, action, &none).unwrap(),
                        allowed && active
                    );
                }
            }
        }
    }
}

/// Lifting the guard's freeze of an organisation: agency security and
/// agency officers, active, with a written reason of 20 characters or more;
/// nobody else, over every kind, role and state.
#[test]
fn lifting_a_freeze_needs_agency_security_or_an_officer_and_a_reason() {
    let a = defaults();
    let none = what(Purpose::FollowUp, vec![]);
    let reason = |n| What {
        reason_len: n,
        ..none.clone()
    };
    for kind in OrganisationKind::ALL {
        for role in Role::ALL {
            for state in AccountState::ALL {
                let w = who(*kind, *role, *state);
                let entitled = *kind == OrganisationKind::FranceTravail
                    && matches!(role, Role::Officer | Role::Security)
                    && *state == AccountState::Active;
                for (len, enough) in [(0, false), (19, false), (20, true), (400, true)] {
                    let expected = entitled && enough;
                    assert_eq!(
                        a.is_allowed(&w, Action::LiftFreeze, &reason(len)).unwrap(),
                        expected,
                        "{kind} {role} {state} reason of {len}"
                    );
                    assert_eq!(
                        a.is_allowed_uncached(&w, Action::LiftFreeze, &reason(len))
                            .unwrap(),
                        expected
                    );
                }
            }
        }
    }
}

/// The breach register: agency security and the DPO, active; nobody else,
/// over every kind, role and state (a partner's security officer or DPO
/// included: the controller keeps the register).
#[test]
fn the_breach_register_is_kept_by_agency_security_and_the_dpo() {
    let a = defaults();
    let none = what(Purpose::FollowUp, vec![]);
    let mut entitled = 0;
    for kind in OrganisationKind::ALL {
        for role in Role::ALL {
            for state in AccountState::ALL {
                let w = who(*kind, *role, *state);
                let expected = *kind == OrganisationKind::FranceTravail
                    && matches!(role, Role::Security | Role::Dpo)
                    && *state == AccountState::Active;
                entitled += usize::from(expected);
                assert_eq!(
                    a.is_allowed(&w, Action::ManageIncidents, &none).unwrap(),
                    expected,
                    "{kind} {role} {state}"
                );
                assert_eq!(
                    a.is_allowed_uncached(&w, Action::ManageIncidents, &none)
                        .unwrap(),
                    expected
                );
            }
        }
    }
    assert_eq!(entitled, 2);
}

#[test]
fn search_and_caseload_follow_the_purposes_of_the_organisation_kind() {
    let a = defaults();
    for kind in OrganisationKind::ALL {
        for purpose in Purpose::ALL {
            let expected = !expected_with_live_mandate(*kind, *purpose).0.is_empty();
            for state in AccountState::ALL {
                let w = who(*kind, Role::Agent, *state);
                for action in [Action::Search, Action::ListCaseload] {
                    assert_eq!(
                        a.is_allowed(&w, action, &what(*purpose, vec![])).unwrap(),
                        expected && *state == AccountState::Active,
                        "{kind} {purpose} {state} {action:?}"
                    );
                }
            }
            let manager = who(*kind, Role::Manager, AccountState::Active);
            assert!(
                !a.is_allowed(&manager, Action::Search, &what(*purpose, vec![]))
                    .unwrap()
            );
        }
    }
}

#[test]
fn every_request_is_evaluated_on_its_own_entities() {
    // The same authorizer answers differently as soon as an observable fact
    // changes: remembered answers are keyed on every one of them.
    let a = defaults();
    let mut w = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Active,
    );
    let live = what(
        Purpose::FollowUp,
        mandates(MandateState::LiveOrganisation, Purpose::FollowUp),
    );
    assert_eq!(
        a.allowed_field_groups(&w, &live).unwrap().nir,
        NirView::Clear
    );
    w.state = AccountState::Suspended;
    assert!(a.allowed_field_groups(&w, &live).unwrap().is_denied());
    w.state = AccountState::Active;
    w.kind = OrganisationKind::CapEmploi;
    assert_eq!(
        a.allowed_field_groups(&w, &live).unwrap().nir,
        NirView::Masked
    );
    let expired = what(
        Purpose::FollowUp,
        mandates(MandateState::Expired, Purpose::FollowUp),
    );
    assert!(a.allowed_field_groups(&w, &expired).unwrap().is_denied());
    assert_eq!(
        a.allowed_field_groups(&w, &live).unwrap().nir,
        NirView::Masked
    );
}

#[test]
fn bench_returns_figures() {
    let a = defaults();
    let r = rempart_policy::bench::bench(&a, 200, 3).unwrap();
    assert_eq!(r.evaluations, 200);
    assert!(r.evaluations_per_second > 0.0);
}

// ---------------------------------------------------------------------------
// Memoization
// ---------------------------------------------------------------------------

fn load_with(extra: &str) -> Authorizer {
    match PolicySet::load(DEFAULT_SCHEMA, &format!("{DEFAULT_POLICIES}\n{extra}\n")) {
        Ok(a) => a,
        Err(e) => panic!("{extra}: {e}"),
    }
}

fn live_follow_up() -> What {
    what(
        Purpose::FollowUp,
        mandates(MandateState::LiveOrganisation, Purpose::FollowUp),
    )
}

#[test]
fn the_shipped_policies_are_memoized() {
    let a = defaults();
    assert!(a.memoizes());
    assert_eq!(a.memo_blocker(), None);
    assert_eq!(a.cached_decisions(), 0);
    let w = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Active,
    );
    let first = a.allowed_field_groups(&w, &live_follow_up()).unwrap();
    assert_eq!(a.cached_decisions(), 1);
    // Another account of another organisation, another person, same facts:
    // the remembered answer, which is Cedar's.
    let other = Who {
        account_id: AccountId::new(7),
        login: "someone.else".into(),
        organisation_id: OrganisationId::new(3),
        ..w.clone()
    };
    let q = What {
        person_id: PersonId::new(9_999),
        mandates: vec![MandateFact {
            organisation_id: OrganisationId::new(3),
            account_id: None,
            purpose: Purpose::FollowUp,
            live: true,
        }],
        ..live_follow_up()
    };
    assert_eq!(a.allowed_field_groups(&other, &q).unwrap(), first);
    assert_eq!(a.cached_decisions(), 1);
    assert_eq!(a.allowed_field_groups_uncached(&other, &q).unwrap(), first);
    assert!(a.is_allowed(&other, Action::ReadNirClear, &q).unwrap());
    assert_eq!(a.cached_decisions(), 2);
}

#[test]
fn a_policy_naming_an_account_turns_memoization_off_and_is_obeyed() {
    let a = load_with("@id(\"ban-7\")\nforbid (principal == Account::\"7\", action, resource);");
    assert!(!a.memoizes());
    let why = a.memo_blocker().unwrap_or_default();
    assert!(why.contains("ban-7") && why.contains("Account"), "{why}");

    // Same role, state, kind, purpose and mandate records: a cache keyed on
    // those facts would give account 7 the answer of account 8 (or the
    // reverse). Both orders, several times.
    let q = live_follow_up();
    let account = |id: i64| Who {
        account_id: AccountId::new(id),
        ..who(
            OrganisationKind::FranceTravail,
            Role::Agent,
            AccountState::Active,
        )
    };
    for _ in 0..3 {
        for id in [8, 7, 8, 7] {
            let d = a.allowed_field_groups(&account(id), &q).unwrap();
            if id == 7 {
                assert!(d.is_denied(), "{d:?}");
                for action in Action::ALL {
                    assert!(!a.is_allowed(&account(7), *action, &q).unwrap());
                }
            } else {
                assert_eq!(d.nir, NirView::Clear);
                assert!(a.is_allowed(&account(8), Action::Search, &q).unwrap());
            }
        }
    }
    assert_eq!(a.cached_decisions(), 0);
}

#[test]
fn any_literal_organisation_account_or_person_turns_memoization_off() {
    for policy in [
        "forbid (principal in Organisation::\"3\", action, resource);",
        "forbid (principal is Account in Organisation::\"3\", action, resource);",
        "forbid (principal, action == Action::\"read_identity\", resource == Person::\"42\");",
        "forbid (principal, action in Action::\"person_read\", resource in Person::\"42\");",
        "forbid (principal, action, resource) when { principal.organisation == Organisation::\"3\" };",
        "forbid (principal, action, resource) when { [Account::\"1\", Account::\"2\"].contains(principal) };",
        "forbid (principal, action, resource) unless { principal != Account::\"9\" };",
        "forbid (principal, action, resource) when { principal in Organisation::\"3\" };",
    ] {
        let a = load_with(policy);
        assert!(!a.memoizes(), "{policy}");
        assert!(a.memo_blocker().is_some(), "{policy}");
    }
    // Actions and the registry are the same in every request.
    for policy in [
        "forbid (principal, action == Action::\"search\", resource == Registry::\"rempart\") when { context.purpose == \"training\" };",
        "forbid (principal, action, resource) when { action in [Action::\"manage_accounts\"] && principal.state == \"suspended\" };",
    ] {
        let a = load_with(policy);
        assert!(a.memoizes(), "{policy}: {:?}", a.memo_blocker());
    }
}

#[test]
fn a_policy_reading_the_login_turns_memoization_off_and_is_obeyed() {
    for policy in [
        "@id(\"ban-mallory\")\nforbid (principal, action, resource) when { principal.login == \"mallory\" };",
        "@id(\"ban-mallory\")\nforbid (principal, action, resource) when { principal has login && principal[\"login\"] like \"mall*\" };",
    ] {
        let a = load_with(policy);
        assert!(!a.memoizes(), "{policy}");
        let why = a.memo_blocker().unwrap_or_default();
        assert!(why.contains("login"), "{why}");
        let q = live_follow_up();
        let login = |login: &str| Who {
            login: login.into(),
            ..who(
                OrganisationKind::CapEmploi,
                Role::Agent,
                AccountState::Active,
            )
        };
        for _ in 0..2 {
            assert_eq!(
                a.allowed_field_groups(&login("alice"), &q).unwrap().nir,
                NirView::Masked
            );
            assert!(
                a.allowed_field_groups(&login("mallory"), &q)
                    .unwrap()
                    .is_denied()
            );
        }
    }
}

#[test]
fn the_cache_is_bounded() {
    let a = defaults();
    let officer = who(
        OrganisationKind::FranceTravail,
        Role::Agent,
        AccountState::Active,
    );
    for reason_len in 0..Authorizer::CACHE_CAPACITY + 500 {
        let q = What {
            reason_len,
            ..what(Purpose::FollowUp, vec![])
        };
        assert_eq!(
            a.is_allowed(&officer, Action::BreakGlass, &q).unwrap(),
            reason_len >= 20
        );
        assert!(a.cached_decisions() <= Authorizer::CACHE_CAPACITY);
    }
    // Still exact after evictions.
    for reason_len in [0, 19, 20, 21, 4_000] {
        let q = What {
            reason_len,
            ..what(Purpose::FollowUp, vec![])
        };
        assert_eq!(
            a.is_allowed(&officer, Action::BreakGlass, &q).unwrap(),
            reason_len >= 20
        );
    }
}

#[test]
fn bench_compares_uncached_and_memoized() {
    let a = defaults();
    let c = rempart_policy::bench::compare(
        &a,
        rempart_policy::bench::BenchConfig {
            uncached_evaluations: 50,
            memoized_evaluations: 400,
            mandates_per_person: 2,
            threads: 2,
        },
    )
    .unwrap();
    assert!(c.memoizes);
    assert_eq!(c.uncached.evaluations, 50);
    assert_eq!(c.memoized.evaluations, 400);
    let concurrent = c.memoized_concurrent.unwrap();
    assert_eq!((concurrent.threads, concurrent.evaluations), (2, 400));
    assert!(c.cached_decisions > 0);
    // The mix is varied: every kind, allowed and denied requests.
    let cases = rempart_policy::bench::sample_cases(3);
    for kind in OrganisationKind::ALL {
        assert!(cases.iter().any(|(w, _)| w.kind == *kind), "{kind}");
    }
    let denied = cases
        .iter()
        .filter(|(w, q)| a.allowed_field_groups(w, q).unwrap().is_denied())
        .count();
    assert!(denied > 0 && denied < cases.len() / 2, "{denied}");
}
