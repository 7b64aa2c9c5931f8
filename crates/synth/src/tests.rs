//! Every row parses with the import rules, references resolve, the same
//! seed gives the same bytes, and the figures (caseloads, status mix, NIR
//! birth places) are what the crate documentation promises.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{Datelike, NaiveDate};
use rempart_domain::records::{
    ACCOUNT_COLUMNS, MANDATE_COLUMNS, ORGANISATION_COLUMNS, PERSON_COLUMNS, RecordRules,
};
use rempart_domain::{
    Account, AccountState, Mandate, Name, NirSex, Organisation, OrganisationKind, Person, Purpose,
    Role, Statut,
};
use sha2::{Digest, Sha256};

use super::*;
use crate::data::{DEPTS, FAMILY_NAMES, FEMALE_FIRST_NAMES, MALE_FIRST_NAMES};
use crate::orgs::{CE_CASELOAD, FT_CASELOAD, ML_CASELOAD, SESSION_SIZE};

const FILES: [&str; 4] = [
    "persons.csv",
    "organisations.csv",
    "accounts.csv",
    "mandates.csv",
];

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
}

fn opts(persons: u64, seed: u64) -> GenerateOptions {
    GenerateOptions {
        persons,
        seed,
        today: today(),
    }
}

/// The four files, parsed with the import rules; panics on the first bad
/// row with its file, line and error.
struct Loaded {
    persons: Vec<Person>,
    orgs: Vec<Organisation>,
    accounts: Vec<Account>,
    mandates: Vec<Mandate>,
}

fn parse<T>(
    dir: &Path,
    name: &str,
    columns: &[&str],
    f: impl Fn(&[&[u8]]) -> Result<T, rempart_domain::records::RecordError>,
) -> Vec<T> {
    let mut r = csv::Reader::from_path(dir.join(name)).unwrap();
    let header: Vec<&[u8]> = r.byte_headers().unwrap().iter().collect();
    let expected: Vec<&[u8]> = columns.iter().map(|c| c.as_bytes()).collect();
    assert_eq!(header, expected, "{name} header");
    r.byte_records()
        .enumerate()
        .map(|(i, rec)| {
            let rec = rec.unwrap();
            let fields: Vec<&[u8]> = rec.iter().collect();
            f(&fields).unwrap_or_else(|e| {
                panic!(
                    "{name} line {}: {e}: {:?}",
                    i + 2,
                    String::from_utf8_lossy(rec.as_slice())
                )
            })
        })
        .collect()
}

fn load(dir: &Path) -> Loaded {
    let rules = RecordRules::new(today());
    Loaded {
        persons: parse(dir, "persons.csv", &PERSON_COLUMNS, |r| rules.person(r)),
        orgs: parse(dir, "organisations.csv", &ORGANISATION_COLUMNS, |r| {
            rules.organisation(r)
        }),
        accounts: parse(dir, "accounts.csv", &ACCOUNT_COLUMNS, |r| rules.account(r)),
        mandates: parse(dir, "mandates.csv", &MANDATE_COLUMNS, |r| rules.mandate(r)),
    }
}

fn hashes(dir: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| Sha256::digest(std::fs::read(dir.join(f)).unwrap()).to_vec())
        .collect()
}

fn assert_unique<'a>(what: &str, items: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for item in items {
        assert!(seen.insert(item), "duplicate {what}");
    }
}

fn within(what: &str, value: f64, expected: f64, tolerance: f64) {
    assert!(
        (value - expected).abs() <= tolerance,
        "{what}: {value:.4}, expected {expected} ± {tolerance}"
    );
}

/// Checks that every file parses, identifiers are unique, and every
/// reference points at a row of the right kind.
fn check_integrity(l: &Loaded) {
    assert_unique("ft_id", l.persons.iter().map(|p| p.identity.ft_id.as_str()));
    assert_unique("NIR", l.persons.iter().map(|p| p.nir.as_str()));
    assert_unique(
        "email",
        l.persons
            .iter()
            .filter_map(|p| p.contact.email.as_ref().map(|e| e.as_str())),
    );
    assert_unique("organisation code", l.orgs.iter().map(|o| o.code.as_str()));
    assert_unique("organisation name", l.orgs.iter().map(|o| o.name.as_str()));
    assert_unique("login", l.accounts.iter().map(|a| a.login.as_str()));
    assert_unique("mandate", l.mandates.iter().map(|m| m.reference.as_str()));

    let orgs: HashMap<&str, &Organisation> = l.orgs.iter().map(|o| (o.code.as_str(), o)).collect();
    for kind in OrganisationKind::ALL {
        assert!(l.orgs.iter().any(|o| o.kind == *kind), "no {kind}");
    }
    for o in &l.orgs {
        assert_eq!(
            o.departement.is_none(),
            o.kind == OrganisationKind::Processor
        );
    }
    let accounts: HashMap<&str, &Account> =
        l.accounts.iter().map(|a| (a.login.as_str(), a)).collect();
    let ft_orgs_with_officers: HashSet<&str> = l
        .accounts
        .iter()
        .filter(|a| a.role == Role::Officer)
        .map(|a| a.organisation.as_str())
        .collect();
    for role in [Role::Security, Role::Dpo] {
        assert_eq!(l.accounts.iter().filter(|a| a.role == role).count(), 1);
    }
    for a in &l.accounts {
        let org = orgs[a.organisation.as_str()];
        if matches!(a.role, Role::Officer | Role::Security | Role::Dpo) {
            assert_eq!(org.kind, OrganisationKind::FranceTravail);
        }
        // Logins are handles derived from the organisation, never names.
        let login = a.login.as_str();
        assert!(
            login
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        match &a.approved_by {
            Some(approver) => {
                let approver = accounts[approver.as_str()];
                assert_eq!(
                    approver.role,
                    Role::Officer,
                    "{login} approved by a non-officer"
                );
                assert_ne!(a.state, AccountState::Requested);
                if ft_orgs_with_officers.len() > 1 {
                    assert_ne!(
                        approver.organisation, a.organisation,
                        "{login} self-approved"
                    );
                }
            }
            None => assert!(
                a.state == AccountState::Requested || a.role == Role::Officer,
                "{login} active without approval"
            ),
        }
        if a.role == Role::Agent {
            let requester = accounts[a.requested_by.as_ref().unwrap().as_str()];
            assert_eq!(requester.role, Role::Manager);
            assert_eq!(requester.organisation, a.organisation);
        }
    }
    let persons: HashMap<&str, &Person> = l
        .persons
        .iter()
        .map(|p| (p.identity.ft_id.as_str(), p))
        .collect();
    for m in &l.mandates {
        let person = persons[m.person.as_str()];
        let org = orgs[m.organisation.as_str()];
        if let Some(login) = &m.account {
            let account = accounts[login.as_str()];
            assert_eq!(account.organisation, m.organisation);
            assert_eq!(account.role, Role::Agent);
        }
        let expected = match m.purpose {
            Purpose::Training => OrganisationKind::TrainingProvider,
            Purpose::DocumentProcessing => OrganisationKind::Processor,
            _ => org.kind,
        };
        assert_eq!(org.kind, expected);
        assert!(m.valid_to.is_none_or(|to| to > m.valid_from));
        if org.kind == OrganisationKind::MissionLocale {
            let age = age(person.identity.date_naissance);
            assert!(
                (16..=25).contains(&age),
                "Mission Locale for someone aged {age}"
            );
        }
        if org.kind == OrganisationKind::FranceTravail {
            assert_eq!(person.status.statut, Statut::Inscrit);
            assert_eq!(m.valid_from, person.status.inscrit_le);
        }
    }
    // Every registered person is followed by France Travail.
    let followed: HashSet<&str> = l
        .mandates
        .iter()
        .filter(|m| orgs[m.organisation.as_str()].kind == OrganisationKind::FranceTravail)
        .map(|m| m.person.as_str())
        .collect();
    for p in &l.persons {
        assert_eq!(
            followed.contains(p.identity.ft_id.as_str()),
            p.status.statut == Statut::Inscrit
        );
    }
}

fn age(born: NaiveDate) -> i32 {
    let t = today();
    t.year() - born.year() - i32::from((t.month(), t.day()) < (born.month(), born.day()))
}

#[test]
fn every_row_parses_and_every_reference_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let reported = std::sync::Mutex::new(Vec::new());
    let summary = generate(&opts(20_000, 7), dir.path(), &|n| {
        reported.lock().unwrap().push(n)
    })
    .unwrap();
    assert_eq!(reported.into_inner().unwrap().last(), Some(&20_000));
    let l = load(dir.path());
    assert_eq!(summary.persons, l.persons.len() as u64);
    assert_eq!(summary.organisations, l.orgs.len() as u64);
    assert_eq!(summary.accounts, l.accounts.len() as u64);
    assert_eq!(summary.mandates, l.mandates.len() as u64);
    check_integrity(&l);
    // Person i has identifier i, in order.
    for (i, p) in l.persons.iter().enumerate() {
        assert_eq!(p.identity.ft_id.ordinal(), i as u32);
    }
}

#[test]
fn tiny_populations_still_get_one_organisation_of_each_kind() {
    for persons in [0, 1, 30] {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(&opts(persons, 1), dir.path(), &|_| {}).unwrap();
        let l = load(dir.path());
        assert_eq!(l.persons.len() as u64, persons);
        assert_eq!(summary.mandates, l.mandates.len() as u64);
        check_integrity(&l);
    }
}

#[test]
fn same_seed_gives_same_bytes_whatever_the_threads() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // Small chunks, so that several are generated in parallel.
    generate_chunked(&opts(5_000, 42), a.path(), &|_| {}, 512).unwrap();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    one_thread
        .install(|| generate_chunked(&opts(5_000, 42), b.path(), &|_| {}, 512))
        .unwrap();
    assert_eq!(hashes(a.path()), hashes(b.path()));
    generate_chunked(&opts(5_000, 43), c.path(), &|_| {}, 512).unwrap();
    let (ha, hc) = (hashes(a.path()), hashes(c.path()));
    assert_ne!(ha[0], hc[0], "persons.csv");
    assert_ne!(ha[3], hc[3], "mandates.csv");
}

#[test]
fn caseloads_sessions_and_proportions_are_realistic() {
    let dir = tempfile::tempdir().unwrap();
    // Several chunks, so caseloads are balanced across chunk boundaries.
    generate_chunked(&opts(50_000, 2026), dir.path(), &|_| {}, 4_096).unwrap();
    let l = load(dir.path());
    check_integrity(&l);
    let orgs: HashMap<&str, &Organisation> = l.orgs.iter().map(|o| (o.code.as_str(), o)).collect();
    let t = today();

    // Current follow-up mandates per adviser.
    let mut caseload: HashMap<&str, u64> = HashMap::new();
    let mut sessions: HashMap<(&str, NaiveDate, Option<NaiveDate>), u64> = HashMap::new();
    let mut batches: HashMap<&str, HashSet<&str>> = HashMap::new();
    for m in &l.mandates {
        let Some(account) = m.account.as_ref().map(|a| a.as_str()) else {
            continue;
        };
        match m.purpose {
            Purpose::FollowUp if m.valid_from <= t && m.valid_to.is_none_or(|to| to > t) => {
                *caseload.entry(account).or_default() += 1
            }
            Purpose::Training => {
                *sessions
                    .entry((account, m.valid_from, m.valid_to))
                    .or_default() += 1
            }
            Purpose::DocumentProcessing => {
                assert!(m.source.as_str().starts_with("lot-"));
                batches
                    .entry(account)
                    .or_default()
                    .insert(m.source.as_str());
            }
            _ => {}
        }
    }
    let mut advisers = HashMap::new();
    for a in &l.accounts {
        let kind = orgs[a.organisation.as_str()].kind;
        let range = match kind {
            OrganisationKind::FranceTravail => FT_CASELOAD,
            OrganisationKind::CapEmploi => CE_CASELOAD,
            OrganisationKind::MissionLocale => ML_CASELOAD,
            _ => continue,
        };
        // Requested and disabled agents hold nothing; the others a full caseload.
        if a.role != Role::Agent
            || matches!(a.state, AccountState::Requested | AccountState::Disabled)
        {
            assert_eq!(caseload.get(a.login.as_str()), None, "{}", a.login.as_str());
            continue;
        }
        let n = caseload.get(a.login.as_str()).copied().unwrap_or(0);
        assert!(
            (range.0..=range.2).contains(&n),
            "{} ({kind}) follows {n} people, expected {}–{}",
            a.login.as_str(),
            range.0,
            range.2
        );
        *advisers.entry(kind).or_insert(0) += 1;
    }
    assert!(advisers.len() == 3, "{advisers:?}");
    let sizes: Vec<u64> = sessions.values().copied().collect();
    assert!(sizes.len() > 50);
    for s in &sizes {
        assert!(
            (SESSION_SIZE.0..=SESSION_SIZE.2).contains(s),
            "session of {s}"
        );
    }
    assert!(
        sizes.iter().min() < sizes.iter().max(),
        "sessions all the same size"
    );
    let processor_agents = l
        .accounts
        .iter()
        .filter(|a| {
            orgs[a.organisation.as_str()].kind == OrganisationKind::Processor
                && a.role == Role::Agent
                && matches!(a.state, AccountState::Active | AccountState::Suspended)
        })
        .count();
    assert_eq!(batches.len(), processor_agents);
    // Some mandates are over, some current.
    let expired = l
        .mandates
        .iter()
        .filter(|m| m.valid_to.is_some_and(|to| to <= t))
        .count();
    assert!(expired > l.mandates.len() / 20 && expired < l.mandates.len() / 2);

    // Status mix and optional contact fields.
    let n = l.persons.len() as f64;
    let share = |f: &dyn Fn(&Person) -> bool| l.persons.iter().filter(|p| f(p)).count() as f64 / n;
    within(
        "inscrit",
        share(&|p| p.status.statut == Statut::Inscrit),
        0.35,
        0.015,
    );
    within(
        "sorti",
        share(&|p| p.status.statut == Statut::Sorti),
        0.55,
        0.015,
    );
    within(
        "radie",
        share(&|p| p.status.statut == Statut::Radie),
        0.10,
        0.01,
    );
    within("email", share(&|p| p.contact.email.is_some()), 0.85, 0.01);
    within(
        "phone",
        share(&|p| p.contact.telephone.is_some()),
        0.90,
        0.01,
    );
    // Mandate proportions, in persons.
    let per_person = |p: Purpose, k: OrganisationKind| {
        l.mandates
            .iter()
            .filter(|m| m.purpose == p && orgs[m.organisation.as_str()].kind == k)
            .count() as f64
            / n
    };
    within(
        "cap emploi",
        per_person(Purpose::FollowUp, OrganisationKind::CapEmploi),
        0.06,
        0.005,
    );
    within(
        "training",
        per_person(Purpose::Training, OrganisationKind::TrainingProvider),
        0.05,
        0.005,
    );
    within(
        "processing",
        per_person(Purpose::DocumentProcessing, OrganisationKind::Processor),
        0.03,
        0.004,
    );
    let young = share(&|p| (16..=25).contains(&age(p.identity.date_naissance)));
    let ml = per_person(Purpose::FollowUp, OrganisationKind::MissionLocale);
    within("mission locale among the young", ml / young, 0.15, 0.02);

    // NIR: sex from the first name, birth place mix.
    let male: HashSet<&str> = MALE_FIRST_NAMES.into_iter().collect();
    for p in &l.persons {
        let is_male = male.contains(p.identity.prenom.as_str());
        assert_eq!(p.nir.sex() == NirSex::Male, is_male);
        assert_eq!(
            u32::from(p.nir.birth_year_2()),
            p.identity.date_naissance.year() as u32 % 100
        );
        assert_eq!(
            p.nir.birth_month().map(u32::from),
            Some(p.identity.date_naissance.month())
        );
    }
    within("born abroad", share(&|p| p.nir.born_abroad()), 0.10, 0.01);
    within(
        "born overseas",
        share(&|p| p.nir.department().starts_with("97")),
        0.03,
        0.008,
    );
    within(
        "born in Corsica",
        share(&|p| matches!(p.nir.department(), "2A" | "2B")),
        0.02,
        0.005,
    );
    within(
        "provisional NIR",
        share(&|p| p.nir.is_provisional()),
        0.01,
        0.003,
    );
    // Births spread over 1950–2009.
    for p in &l.persons {
        let y = p.identity.date_naissance.year();
        assert!((1950..=2009).contains(&y));
    }
    within(
        "born in the 1950s",
        share(&|p| p.identity.date_naissance.year() < 1960),
        1.0 / 6.0,
        0.01,
    );
}

#[test]
fn nir_order_numbers_stay_unique_beyond_999_per_cell() {
    let t = Tables::new(1, today(), 10).unwrap();
    let mut rng = plan::rng_for(1, plan::Stream::Plan, 0);
    let mut p = plan::plan_person(&t, &mut rng);
    p.provisional = false;
    let mut seen = HashSet::new();
    for rank in 0..5_000 {
        let nir = render::nir(&t, &p, rank, &mut rng).unwrap();
        assert!(seen.insert(nir), "rank {rank}");
        // The sex and year stay right; past 999 the month becomes an INSEE pseudo-month.
        assert_eq!(nir.sex() == NirSex::Male, p.male);
        assert_eq!(nir.birth_month().is_some(), rank < 999);
    }
}

#[test]
fn embedded_lists_are_large_distinct_and_valid() {
    assert!(MALE_FIRST_NAMES.len() >= 150 && FEMALE_FIRST_NAMES.len() >= 150);
    assert!(FAMILY_NAMES.len() >= 300);
    assert_unique("male first name", MALE_FIRST_NAMES.into_iter());
    assert_unique("female first name", FEMALE_FIRST_NAMES.into_iter());
    assert_unique("family name", FAMILY_NAMES.into_iter());
    assert_unique(
        "first name of both sexes",
        MALE_FIRST_NAMES.into_iter().chain(FEMALE_FIRST_NAMES),
    );
    for n in MALE_FIRST_NAMES
        .iter()
        .chain(&FEMALE_FIRST_NAMES)
        .chain(&FAMILY_NAMES)
    {
        Name::parse(n).unwrap();
    }
    let communes: usize = DEPTS.iter().map(|d| d.communes.len()).sum();
    assert!(communes >= 150, "{communes}");
    assert_unique("département", DEPTS.iter().map(|d| d.code));
    for d in &DEPTS {
        for (pc, _) in d.communes {
            let expected = match d.code {
                "2A" | "2B" => "20",
                c => c,
            };
            assert!(
                pc.len() == 5 && pc.starts_with(expected),
                "{pc} in {}",
                d.code
            );
        }
    }
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let early = GenerateOptions {
        today: NaiveDate::from_ymd_opt(1960, 1, 1).unwrap(),
        ..opts(10, 1)
    };
    assert!(matches!(
        generate(&early, dir.path(), &|_| {}),
        Err(SynthError::Options(_))
    ));
    let many = opts(u64::from(FtId::SPACE) + 1, 1);
    assert!(matches!(
        generate(&many, dir.path(), &|_| {}),
        Err(SynthError::Options(_))
    ));
    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = generate(&opts(10, 1), &file.join("sub"), &|_| {}).unwrap_err();
    assert!(matches!(err, SynthError::CreateDir { .. }), "{err}");
    assert!(err.to_string().contains("sub"));
}
