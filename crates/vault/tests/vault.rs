//! The vault over real stores: every scenario runs on SQLite and on
//! PostgreSQL (`REMPART_TEST_DATABASE_URL`, default the local `test`
//! database; unreachable means failure, never a skip).

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use rempart_crypto::KeyRing;
use rempart_domain::records::RecordRules;
use rempart_domain::{FieldGroup, Person, PersonId};
use rempart_storage::Store;
use rempart_storage::postgres::PgStore;
use rempart_storage::sqlite::SqliteStore;
use rempart_testdb::TestSchema;
use rempart_vault::{KeySource, OtherRewrap, OtherSecrets, Read, Sealed, Vault, VaultError};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Secrets held outside the registry, as the rotation sees them: it
/// reports what it was asked to rewrap to and how many it left behind.
#[derive(Default)]
struct Holder {
    left: AtomicU64,
    target: AtomicU32,
}

#[async_trait::async_trait]
impl OtherSecrets for Holder {
    fn name(&self) -> &'static str {
        "held secrets"
    }

    async fn rewrap(&self, ring: &KeyRing, target: u32) -> Result<OtherRewrap, VaultError> {
        assert_eq!(
            ring.current_kek().version,
            target,
            "the ring holds the target"
        );
        self.target.store(target, Ordering::SeqCst);
        Ok(OtherRewrap {
            rewrapped: 2,
            left: self.left.load(Ordering::SeqCst),
        })
    }
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
}

/// A fresh store of each backend, in `dir` (SQLite) and in a schema
/// dropped when the returned guard is (PostgreSQL).
async fn stores(dir: &Path) -> (Vec<(&'static str, Store)>, TestSchema) {
    let sqlite: Store = Arc::new(SqliteStore::open(dir).await.unwrap());
    let schema = TestSchema::new("tv");
    let pg: Store = PgStore::connect(&schema.url, &schema.schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {}: {e}", schema.url));
    (vec![("sqlite", sqlite), ("postgres", pg)], schema)
}

fn keyfile(dir: &Path) -> KeySource {
    let path = dir.join("keys.json");
    if !path.exists() {
        KeyRing::generate().unwrap().save_new(&path).unwrap();
    }
    KeySource::File(path)
}

/// A synthetic person, valid under the record rules.
fn person(i: u32) -> Person {
    let nir13 = format!("1{:02}0{}75056{:03}", 80 + i % 10, 1 + i % 9, 1 + i % 999);
    let nir = rempart_domain::Nir::with_key(nir13.as_bytes().try_into().unwrap()).unwrap();
    let row = [
        format!("{:07}A", i),
        nir.as_str().to_string(),
        format!("Lefèvre{}", ["", "-Durand", " Martin"][(i % 3) as usize]),
        "Jean-Pierre".into(),
        format!("19{:02}-0{}-15", 80 + i % 10, 1 + i % 9),
        format!("jp.lefevre{i}@exemple.fr"),
        format!("06{:08}", i),
        format!("{} rue des Lilas", 1 + i % 90),
        "75011".into(),
        "Paris".into(),
        "inscrit".into(),
        "2024-01-10".into(),
        String::new(),
    ];
    let fields: Vec<&[u8]> = row.iter().map(|s| s.as_bytes()).collect();
    RecordRules::new(today()).person(&fields).unwrap()
}

async fn store_persons(vault: &Vault, persons: &[Person]) -> Vec<PersonId> {
    let keys = vault.keys();
    let blinds: Vec<_> = persons
        .iter()
        .map(|p| vault.blind_ft(&p.identity.ft_id))
        .collect();
    let existing = vault.store().lookup_persons(&blinds).await.unwrap();
    let first = vault
        .store()
        .reserve_person_ids(persons.len() as u64)
        .await
        .unwrap();
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut ids = Vec::new();
    for (i, (p, e)) in persons.iter().zip(&existing).enumerate() {
        match Vault::seal(&keys, p, e.as_ref(), PersonId::new(first.get() + i as i64)).unwrap() {
            Sealed::Insert(s) => {
                ids.push(s.id);
                inserts.push(s)
            }
            Sealed::Update(s, prev) => {
                ids.push(s.id);
                updates.push((s, prev))
            }
            Sealed::Unchanged => ids.push(e.as_ref().unwrap().id),
        }
    }
    vault.store().write_persons(inserts, updates).await.unwrap();
    ids
}

fn found(r: Read) -> rempart_vault::PersonView {
    match r {
        Read::Found(v) => *v,
        other => panic!("expected a person, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_read_search_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (backends, _schema) = stores(dir.path()).await;
    for (backend, store) in backends {
        let vault = Vault::new(keyfile(dir.path()), store).unwrap();
        let persons: Vec<Person> = (1..=50).map(person).collect();
        let ids = store_persons(&vault, &persons).await;

        // Whole record back.
        let all = found(vault.read(ids[0], FieldGroup::ALL).await.unwrap());
        assert_eq!(
            all.identity.as_ref(),
            Some(&persons[0].identity),
            "{backend}"
        );
        assert_eq!(all.contact.as_ref(), Some(&persons[0].contact), "{backend}");
        assert_eq!(all.nir, Some(persons[0].nir), "{backend}");
        assert_eq!(all.status.as_ref(), Some(&persons[0].status), "{backend}");

        // Only the groups asked for are opened and returned.
        let some = found(
            vault
                .read(ids[1], &[FieldGroup::Status, FieldGroup::Identity])
                .await
                .unwrap(),
        );
        assert_eq!(
            some.groups(),
            vec![FieldGroup::Identity, FieldGroup::Status],
            "{backend}"
        );
        assert!(some.nir.is_none() && some.contact.is_none());
        assert_eq!(
            vault
                .read(PersonId::new(999_999), FieldGroup::ALL)
                .await
                .unwrap(),
            Read::Missing
        );

        // Exact searches, with name normalisation.
        assert_eq!(
            vault.find_by_nir(&persons[2].nir).await.unwrap(),
            vec![ids[2]],
            "{backend}"
        );
        let p = &persons[3].identity;
        let hits = vault
            .find_by_name_birth("LEFEVRE-DURAND", "jean pierre", p.date_naissance)
            .await
            .unwrap();
        assert!(hits.contains(&ids[3]), "{backend}: {hits:?}");
        assert!(hits.iter().all(|id| ids.contains(id)));
        assert_eq!(vault.find_by_ft(&p.ft_id).await.unwrap(), Some(ids[3]));
        let nobody = vault
            .find_by_name_birth("Lefèvre", "Jean", p.date_naissance)
            .await
            .unwrap();
        assert!(nobody.is_empty(), "{backend}: prefix must not match");

        // Re-sealing the same records changes nothing; a changed one is updated in place.
        let again = store_persons(&vault, &persons[..5]).await;
        assert_eq!(again, ids[..5].to_vec(), "{backend}");
        let mut moved = persons[4].clone();
        moved.contact.adresse.code_postal = rempart_domain::PostalCode::parse("69001").unwrap();
        let same_id = store_persons(&vault, std::slice::from_ref(&moved)).await;
        assert_eq!(same_id, vec![ids[4]]);
        let v = found(vault.read(ids[4], &[FieldGroup::Contact]).await.unwrap());
        assert_eq!(v.contact.unwrap().adresse.code_postal.as_str(), "69001");
        assert_eq!(
            vault.store().inventory().await.unwrap().persons,
            50,
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewraps_resumes_and_keeps_readers_working() {
    for backend in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let (backends, _schema) = stores(dir.path()).await;
        let store = backends.into_iter().find(|(b, _)| *b == backend).unwrap().1;
        let source = keyfile(dir.path());
        let vault = Vault::new(source.clone(), store.clone()).unwrap();
        let persons: Vec<Person> = (1..=300).map(person).collect();
        let ids = store_persons(&vault, &persons).await;
        // A second process that loaded the keys before the rotation.
        let stale = Vault::new(source.clone(), store.clone()).unwrap();
        assert!(vault.shred(ids[7]).await.unwrap());

        // Interrupt a rotation by hand: new KEK in the file, half the keys rewrapped.
        let KeySource::File(path) = &source else {
            unreachable!()
        };
        let mut ring = KeyRing::load(path).unwrap();
        ring.add_kek().unwrap();
        ring.save_replace(path).unwrap();
        let half = store
            .keys_to_rewrap(2, PersonId::new(0), 150)
            .await
            .unwrap();
        let rewrapped: Vec<_> = half
            .into_iter()
            .map(|row| {
                let b = rempart_crypto::Binding {
                    person: row.id.get(),
                    dek_version: row.dek_version,
                };
                let w = ring
                    .kek(2)
                    .unwrap()
                    .rewrap(ring.kek(1).unwrap(), b, &row.wrapped_dek)
                    .unwrap();
                (
                    rempart_storage::WrappedKeyRow {
                        kek_version: 2,
                        wrapped_dek: w,
                        ..row
                    },
                    1,
                )
            })
            .collect();
        assert_eq!(store.store_rewrapped(rewrapped.clone()).await.unwrap(), 150);
        // Replaying the same rewrap is refused by the version check.
        assert_eq!(store.store_rewrapped(rewrapped).await.unwrap(), 0);

        // The stale reader meets a KEK v2 key and reloads the key file.
        let v = found(stale.read(ids[0], FieldGroup::ALL).await.unwrap());
        assert_eq!(v.identity.unwrap(), persons[0].identity, "{backend}");

        let report = vault.rotate(&|_, _| {}, &[]).await.unwrap();
        assert!(report.resumed, "{backend}");
        assert_eq!(report.target, 2);
        assert_eq!(
            report.rewrapped, 149,
            "{backend}: 300 − 150 done − 1 shredded"
        );
        assert_eq!(report.retired, vec![1]);
        assert_eq!(KeyRing::load(path).unwrap().kek_versions(), vec![2]);
        let inv = store.inventory().await.unwrap();
        assert_eq!(inv.keys_by_kek_version, vec![(2, 299)], "{backend}");

        // Every person still opens, under the new KEK only; the shredded one does not.
        let fresh = Vault::new(source.clone(), store.clone()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let r = fresh.read(*id, FieldGroup::ALL).await.unwrap();
            if i == 7 {
                assert_eq!(r, Read::Shredded, "{backend}");
            } else {
                assert_eq!(found(r).identity.unwrap(), persons[i].identity, "{backend}");
            }
        }
        // A full new rotation from a clean state.
        let report = vault.rotate(&|_, _| {}, &[]).await.unwrap();
        assert!(!report.resumed);
        assert_eq!((report.target, report.rewrapped), (3, 299), "{backend}");

        // Secrets held elsewhere under the KEK keep an older KEK alive
        // while any of them is left under it, and are told the target.
        let holder = Holder::default();
        holder.left.store(1, Ordering::SeqCst);
        let report = vault.rotate(&|_, _| {}, &[&holder]).await.unwrap();
        assert_eq!(report.target, 4);
        assert_eq!(holder.target.load(Ordering::SeqCst), 4);
        assert_eq!(
            report.others,
            vec![(
                "held secrets",
                OtherRewrap {
                    rewrapped: 2,
                    left: 1
                }
            )]
        );
        assert!(report.retired.is_empty(), "{backend}: v3 still in use");
        assert_eq!(KeyRing::load(path).unwrap().kek_versions(), vec![3, 4]);
        holder.left.store(0, Ordering::SeqCst);
        let report = vault.rotate(&|_, _| {}, &[&holder]).await.unwrap();
        assert!(report.resumed, "{backend}");
        assert_eq!(report.retired, vec![3], "{backend}");
        assert_eq!(KeyRing::load(path).unwrap().kek_versions(), vec![4]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredding_one_person_leaves_the_others_and_fails_closed_with_wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (backends, _schema) = stores(dir.path()).await;
    for (backend, store) in backends {
        let vault = Vault::new(keyfile(dir.path()), store.clone()).unwrap();
        let persons: Vec<Person> = (1..=20).map(person).collect();
        let ids = store_persons(&vault, &persons).await;
        assert!(vault.shred(ids[5]).await.unwrap(), "{backend}");
        assert!(!vault.shred(ids[5]).await.unwrap(), "{backend}: twice");
        assert_eq!(
            vault.read(ids[5], FieldGroup::ALL).await.unwrap(),
            Read::Shredded
        );
        assert!(vault.find_by_nir(&persons[5].nir).await.unwrap().is_empty());
        assert_eq!(
            vault.find_by_ft(&persons[5].identity.ft_id).await.unwrap(),
            None
        );
        for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 5) {
            let v = found(vault.read(*id, FieldGroup::ALL).await.unwrap());
            assert_eq!(v.identity.unwrap(), persons[i].identity, "{backend}");
        }
        // The sealed blobs are still there, and still useless.
        let raw = store
            .read_person(ids[5], &[FieldGroup::Identity])
            .await
            .unwrap()
            .unwrap();
        assert!(raw.wrapped_dek.is_none() && !raw.groups[0].1.is_empty());
        // The same person imported again after shredding is a new person.
        let again = store_persons(&vault, std::slice::from_ref(&persons[5])).await;
        assert_ne!(again[0], ids[5], "{backend}");

        // Another key file: nothing opens, and the error says so without data.
        let other = tempfile::tempdir().unwrap();
        let wrong = Vault::new(keyfile(other.path()), store.clone()).unwrap();
        let err = wrong.read(ids[0], FieldGroup::ALL).await.unwrap_err();
        assert!(matches!(err, VaultError::Crypto(_)), "{backend}: {err}");
        assert!(!err.to_string().contains("Lef"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_reasons_are_sealed_with_the_person_and_shredded_with_them() {
    use rempart_domain::{Account, AccountState, Organisation, OrganisationKind, Purpose};
    use rempart_domain::{Reference, Role};
    use rempart_storage::{NewBreakGlassReason, NewMandate, StoredBreakGlassReason};
    let r = |s: &str| Reference::parse(s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (backends, _schema) = stores(dir.path()).await;
    for (backend, store) in backends {
        let vault = Vault::new(keyfile(dir.path()), store.clone()).unwrap();
        let persons: Vec<Person> = (1..=3).map(person).collect();
        let ids = store_persons(&vault, &persons).await;
        store
            .upsert_organisations(vec![Organisation {
                code: r("FT-38"),
                kind: OrganisationKind::FranceTravail,
                name: "Agence de test".into(),
                departement: Some("38".into()),
            }])
            .await
            .unwrap();
        let (_, refused) = store
            .upsert_accounts(vec![Account {
                login: r("ft.agent"),
                organisation: r("FT-38"),
                role: Role::Agent,
                state: AccountState::Active,
                requested_by: None,
                approved_by: None,
            }])
            .await
            .unwrap();
        assert!(refused.is_empty(), "{backend}: {refused:?}");
        let agent = store
            .account_by_login(&r("ft.agent"))
            .await
            .unwrap()
            .unwrap();
        // What an agent may type in a hurry: a name, synthetic here.
        let text = "Appel de Jean-Pierre Lefèvre, rendez-vous manqué ce matin";
        let glass = |reference: &str, sealed: &rempart_vault::SealedReason| {
            store.grant_break_glass(
                NewMandate {
                    reference: r(reference),
                    organisation_id: agent.organisation_id,
                    account_id: Some(agent.account_id),
                    person_id: ids[0],
                    purpose: Purpose::FollowUp,
                    valid_from: today(),
                    valid_to: today().succ_opt(),
                    source: r("break_glass"),
                },
                NewBreakGlassReason {
                    account_id: agent.account_id,
                    created_at: chrono::Utc::now(),
                    dek_version: sealed.dek_version,
                    sealed: sealed.sealed.clone(),
                },
            )
        };

        let sealed = vault.seal_reason(ids[0], text).await.unwrap().unwrap();
        assert!(
            !sealed
                .sealed
                .windows(8)
                .any(|w| text.as_bytes().windows(8).any(|t| t == w)),
            "{backend}: the text is sealed"
        );
        assert_eq!(
            vault
                .seal_reason(PersonId::new(999_999), text)
                .await
                .unwrap(),
            None
        );
        let mandate = glass("BG-A", &sealed).await.unwrap();
        let kept = store.break_glass_reasons(ids[0]).await.unwrap();
        assert_eq!(kept.len(), 1, "{backend}");
        assert_eq!(kept[0].mandate_id, mandate.id);
        let opened = vault.open_reason(&kept[0]).await.unwrap().unwrap();
        assert_eq!(opened.text, text, "{backend}");
        assert_eq!(
            opened.digest, sealed.digest,
            "{backend}: the ledger's digest"
        );
        assert!(!format!("{opened:?}").contains("Lefèvre"));
        // Salted: the same text sealed again has another digest, so a
        // guessed text cannot be confirmed from the ledger.
        let again = vault.seal_reason(ids[0], text).await.unwrap().unwrap();
        assert_ne!(again.digest, sealed.digest, "{backend}");
        // Bound to its person: moved to another one, it does not open.
        let moved = StoredBreakGlassReason {
            person_id: ids[1],
            ..kept[0].clone()
        };
        assert!(vault.open_reason(&moved).await.is_err(), "{backend}");

        // Shredding the person erases the reason: the row is gone, and a
        // copy kept from before can no longer be opened.
        assert!(vault.shred(ids[0]).await.unwrap());
        assert!(
            store.break_glass_reasons(ids[0]).await.unwrap().is_empty(),
            "{backend}"
        );
        assert_eq!(
            vault.open_reason(&kept[0]).await.unwrap(),
            None,
            "{backend}"
        );
        assert_eq!(vault.seal_reason(ids[0], text).await.unwrap(), None);
        assert!(glass("BG-B", &again).await.is_err(), "{backend}");
    }
}
