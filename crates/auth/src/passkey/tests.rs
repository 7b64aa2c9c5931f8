//! Ceremonies end to end against a software authenticator
//! (`webauthn-authenticator-rs`'s `SoftPasskey`, real P-256 keys and
//! signatures), with JSON crossing the boundary as it does with a browser.
//!
//! `SoftPasskey` keeps no discoverable credentials and returns no user
//! handle, so `Browser` below plays the part of a platform authenticator
//! for username-less logins: it remembers the user handle it was given at
//! registration, answers an empty allow list with its own credential and
//! returns the handle, as a real passkey provider does. The signature is
//! still the soft key's.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use super::*;

const RP_ID: &str = "rempart.example";
const ORIGIN: &str = "https://rempart.example";
const ALICE: AccountId = AccountId::new(41);
const BOB: AccountId = AccountId::new(42);

fn rp() -> Passkeys {
    Passkeys::new(RP_ID, ORIGIN, RP_NAME).unwrap()
}

/// A fixed instant plus `secs`: tests never read the clock.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// The browser and its authenticator.
struct Browser {
    key: SoftPasskey,
    origin: Url,
    /// Credential id (base64url) → user handle (base64url), as a passkey
    /// provider stores them.
    resident: HashMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        Self::with(SoftPasskey::new(true), ORIGIN)
    }

    /// An authenticator that performs no user verification.
    fn without_uv() -> Self {
        Self::with(SoftPasskey::new(false), ORIGIN)
    }

    fn with(key: SoftPasskey, origin: &str) -> Self {
        Self {
            key,
            origin: Url::parse(origin).unwrap(),
            resident: HashMap::new(),
        }
    }

    /// Runs `navigator.credentials.create` on the server's options (as
    /// JSON) and returns the JSON the page posts back.
    fn create(&mut self, options: &Value) -> String {
        let handle = options["publicKey"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let options = serde_json::from_value(options.clone()).unwrap();
        let answer = self
            .key
            .do_registration(self.origin.clone(), options)
            .unwrap();
        self.resident.insert(answer.id.clone(), handle);
        serde_json::to_string(&answer).unwrap()
    }

    /// Runs `navigator.credentials.get` and returns the JSON posted back.
    fn get(&mut self, options: &Value) -> String {
        let mut options = options.clone();
        let username_less = options["publicKey"]["allowCredentials"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        if username_less {
            // A discoverable credential: the authenticator picks its own.
            let ids: Vec<Value> = self
                .resident
                .keys()
                .map(|id| json!({"type": "public-key", "id": id}))
                .collect();
            options["publicKey"]["allowCredentials"] = Value::Array(ids);
        }
        let options = serde_json::from_value(options).unwrap();
        let answer = self
            .key
            .do_authentication(self.origin.clone(), options)
            .unwrap();
        let mut answer = serde_json::to_value(&answer).unwrap();
        if username_less {
            let id = answer["id"].as_str().unwrap().to_owned();
            answer["response"]["userHandle"] = Value::String(self.resident[&id].clone());
        }
        answer.to_string()
    }

    /// A client that ignores the allow list and signs with its own
    /// credential anyway.
    fn get_with_own_credential(&mut self, options: &Value) -> String {
        let mut options = options.clone();
        options["publicKey"]["allowCredentials"] = json!([]);
        self.get(&options)
    }
}

/// One stored passkey as the slice the API takes.
fn one(passkey: &StoredPasskey) -> &[StoredPasskey] {
    std::slice::from_ref(passkey)
}

fn to_json<T: serde::Serialize>(options: &T) -> Value {
    serde_json::to_value(options).unwrap()
}

/// Registers a passkey for `account` with `browser`, returning it as stored.
fn register(
    rp: &Passkeys,
    browser: &mut Browser,
    account: AccountId,
    existing: &[StoredPasskey],
) -> StoredPasskey {
    let (options, state) = rp
        .start_registration(account, "claire.martin", "Claire Martin", existing, at(0))
        .unwrap();
    let answer = browser.create(&to_json(&options));
    rp.finish_registration(&state, &answer, existing, at(5))
        .unwrap()
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

#[test]
fn register_then_log_in_for_a_known_account() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = round_trip(&register(&rp, &mut browser, ALICE, &[]));
    assert_eq!(passkey.account_id(), ALICE);
    assert_eq!(passkey.registered_at(), at(5));

    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let state = round_trip(&state);
    let answer = browser.get(&to_json(&options));
    let ok = rp
        .finish_authentication(&state, &answer, one(&passkey), at(110))
        .unwrap();
    assert_eq!(ok.account_id, ALICE);
    assert_eq!(&ok.credential_id, passkey.credential_id());
    assert_eq!(ok.kind, CeremonyKind::Account);
    assert!(ok.user_verified);
    assert_eq!(ok.ceremony_started_at, at(100));
    assert!(ok.updated.sign_count() > passkey.sign_count());
    assert_eq!(ok.updated.last_used_at(), Some(at(110)));

    // The written-back passkey serves the next login.
    let updated = round_trip(&ok.updated);
    let (options, state) = rp
        .start_authentication(ALICE, one(&updated), at(200))
        .unwrap();
    let answer = browser.get(&to_json(&options));
    let again = rp
        .finish_authentication(&state, &answer, &[updated], at(201))
        .unwrap();
    assert!(again.updated.sign_count() > ok.updated.sign_count());
}

#[test]
fn username_less_login_finds_the_account_from_the_credential() {
    let rp = rp();
    let mut alice = Browser::new();
    let mut bob = Browser::new();
    let alice_key = register(&rp, &mut alice, ALICE, &[]);
    let bob_key = register(&rp, &mut bob, BOB, &[]);
    let store = [alice_key, bob_key];

    let (options, state) = rp.start_discoverable_authentication(at(50)).unwrap();
    let options = to_json(&options);
    assert!(
        options.get("mediation").is_none(),
        "modal prompt, not autofill"
    );
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let answer = bob.get(&options);

    let id = credential_id_of(&answer).unwrap();
    let found: Vec<_> = store
        .iter()
        .filter(|p| p.credential_id() == &id)
        .cloned()
        .collect();
    let ok = rp
        .finish_authentication(&state, &answer, &found, at(60))
        .unwrap();
    assert_eq!(ok.account_id, BOB);
    assert_eq!(ok.kind, CeremonyKind::Discoverable);
    assert_eq!(state.account_id(), None);
}

#[test]
fn the_user_handle_must_be_the_credentials() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, state) = rp.start_discoverable_authentication(at(50)).unwrap();
    let answer: Value = serde_json::from_str(&browser.get(&to_json(&options))).unwrap();

    let mut other_handle = answer.clone();
    other_handle["response"]["userHandle"] = json!(URL_SAFE_NO_PAD.encode([7u8; 16]));
    let err = rp
        .finish_authentication(&state, &other_handle.to_string(), one(&passkey), at(51))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UserHandleMismatch);

    let mut no_handle = answer;
    no_handle["response"]["userHandle"] = Value::Null;
    let err = rp
        .finish_authentication(&state, &no_handle.to_string(), one(&passkey), at(51))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UserHandleMissing);

    // Optional in an account login, but checked when sent.
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(60))
        .unwrap();
    let mut answer: Value = serde_json::from_str(&browser.get(&to_json(&options))).unwrap();
    answer["response"]["userHandle"] = json!(URL_SAFE_NO_PAD.encode([7u8; 16]));
    let err = rp
        .finish_authentication(&state, &answer.to_string(), one(&passkey), at(61))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UserHandleMismatch);
}

#[test]
fn registration_options_require_verification_and_prefer_discoverable_keys() {
    let rp = rp();
    let (options, state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let options = to_json(&options);
    let public_key = &options["publicKey"];
    assert_eq!(public_key["rp"]["name"], "Rempart");
    assert_eq!(public_key["rp"]["id"], RP_ID);
    assert_eq!(
        public_key["authenticatorSelection"]["userVerification"],
        "required"
    );
    assert_eq!(
        public_key["authenticatorSelection"]["residentKey"],
        "preferred"
    );
    assert_eq!(public_key["timeout"], 300_000);
    assert_eq!(state.account_id(), ALICE);
    assert_eq!(state.started_at(), at(0));
}

#[test]
fn a_second_passkey_keeps_the_user_handle_and_excludes_the_first() {
    let rp = rp();
    let mut phone = Browser::new();
    let first = register(&rp, &mut phone, ALICE, &[]);
    let (options, _) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", one(&first), at(10))
        .unwrap();
    let options = to_json(&options);
    let excluded = options["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap();
    assert_eq!(excluded.len(), 1);
    assert_eq!(excluded[0]["id"], first.credential_id().to_base64url());

    let mut laptop = Browser::new();
    let answer = laptop.create(&options);
    let handle = options["publicKey"]["user"]["id"].as_str().unwrap();
    assert_eq!(
        laptop.resident.values().next().map(String::as_str),
        Some(handle)
    );
    assert_eq!(
        phone.resident.values().next().map(String::as_str),
        Some(handle)
    );
    assert!(!answer.is_empty());
}

#[test]
fn registration_without_user_verification_is_refused() {
    let rp = rp();
    let (options, state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    // A client that lowers the requirement before asking its authenticator.
    let mut options = to_json(&options);
    options["publicKey"]["authenticatorSelection"]["userVerification"] = json!("discouraged");
    let answer = Browser::without_uv().create(&options);
    let err = rp
        .finish_registration(&state, &answer, &[], at(1))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UserVerificationMissing);
}

#[test]
fn login_without_user_verification_is_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let mut options = to_json(&options);
    // A client that lowers the requirement: the authenticator then signs
    // without asking for a PIN or biometric.
    options["publicKey"]["userVerification"] = json!("discouraged");
    let answer = browser.get(&options);
    let err = rp
        .finish_authentication(&state, &answer, &[passkey], at(101))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UserVerificationMissing);
}

#[test]
fn a_page_on_another_origin_is_refused() {
    let rp = rp();
    // A sibling subdomain passes the browser's RP id check, not ours.
    let evil = "https://phish.rempart.example";
    let (options, state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let mut phished = Browser::with(SoftPasskey::new(true), evil);
    let answer = phished.create(&to_json(&options));
    let err = rp
        .finish_registration(&state, &answer, &[], at(1))
        .unwrap_err();
    assert_eq!(err, PasskeyError::OriginMismatch);

    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    browser.origin = Url::parse(evil).unwrap();
    let answer = browser.get(&to_json(&options));
    let err = rp
        .finish_authentication(&state, &answer, &[passkey], at(101))
        .unwrap_err();
    assert_eq!(err, PasskeyError::OriginMismatch);
}

#[test]
fn finishing_the_same_login_twice_is_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let options = to_json(&options);
    let answer = browser.get(&options);
    let ok = rp
        .finish_authentication(&state, &answer, &[passkey], at(101))
        .unwrap();
    let stored = [ok.updated];

    // The very same answer again.
    let err = rp
        .finish_authentication(&state, &answer, &stored, at(102))
        .unwrap_err();
    assert_eq!(err, PasskeyError::CeremonyReplayed);
    // A fresh signature over the same challenge: refused on the ceremony,
    // not on the counter, so synced passkeys (counter 0) are covered too.
    let answer = browser.get(&options);
    let err = rp
        .finish_authentication(&state, &answer, &stored, at(103))
        .unwrap_err();
    assert_eq!(err, PasskeyError::CeremonyReplayed);
}

#[test]
fn finishing_the_same_registration_twice_is_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let (options, state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let answer = browser.create(&to_json(&options));
    let first = rp.finish_registration(&state, &answer, &[], at(1)).unwrap();
    let err = rp
        .finish_registration(&state, &answer, &[first], at(2))
        .unwrap_err();
    assert_eq!(err, PasskeyError::CredentialAlreadyRegistered);
}

#[test]
fn another_accounts_credential_is_refused_for_an_account_login() {
    let rp = rp();
    let mut alice = Browser::new();
    let mut bob = Browser::new();
    let alice_key = register(&rp, &mut alice, ALICE, &[]);
    let bob_key = register(&rp, &mut bob, BOB, &[]);

    let (options, state) = rp
        .start_authentication(ALICE, one(&alice_key), at(100))
        .unwrap();
    assert_eq!(state.account_id(), Some(ALICE));
    let answer = bob.get_with_own_credential(&to_json(&options));

    // The caller loaded Alice's passkeys: Bob's credential is unknown.
    let err = rp
        .finish_authentication(&state, &answer, one(&alice_key), at(101))
        .unwrap_err();
    assert_eq!(err, PasskeyError::UnknownCredential);
    // Even handed Bob's passkey by mistake, the ceremony stays Alice's.
    let err = rp
        .finish_authentication(&state, &answer, &[alice_key, bob_key], at(101))
        .unwrap_err();
    assert_eq!(
        err,
        PasskeyError::WrongAccount {
            ceremony_account: ALICE,
            credential_account: BOB
        }
    );
}

#[test]
fn a_stale_step_up_is_refused() {
    let rp = rp()
        .with_max_ages(Duration::from_secs(300), Duration::from_secs(60))
        .unwrap();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);

    let (options, state) = rp.start_step_up(ALICE, one(&passkey), at(1000)).unwrap();
    assert_eq!(state.kind(), CeremonyKind::StepUp);
    let answer = browser.get(&to_json(&options));
    let err = rp
        .finish_authentication(&state, &answer, one(&passkey), at(1061))
        .unwrap_err();
    assert_eq!(
        err,
        PasskeyError::StaleCeremony {
            age_secs: 61,
            max_secs: 60
        }
    );
    let ok = rp
        .finish_authentication(&state, &answer, one(&passkey), at(1060))
        .unwrap();
    assert_eq!(ok.kind, CeremonyKind::StepUp);
    assert_eq!(ok.ceremony_started_at, at(1000));

    // The same age is fine for an ordinary login, which has 300 s.
    let (options, state) = rp
        .start_authentication(ALICE, one(&ok.updated), at(2000))
        .unwrap();
    let answer = browser.get(&to_json(&options));
    rp.finish_authentication(&state, &answer, &[ok.updated], at(2061))
        .unwrap();
}

#[test]
fn stale_or_future_ceremonies_are_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let (options, state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let answer = browser.create(&to_json(&options));
    assert!(matches!(
        rp.finish_registration(&state, &answer, &[], at(301)),
        Err(PasskeyError::StaleCeremony { max_secs: 300, .. })
    ));
    let passkey = rp
        .finish_registration(&state, &answer, &[], at(300))
        .unwrap();

    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let answer = browser.get(&to_json(&options));
    let err = rp
        .finish_authentication(&state, &answer, &[passkey], at(99))
        .unwrap_err();
    assert_eq!(err, PasskeyError::CeremonyInFuture);
}

#[test]
fn an_answer_to_another_ceremony_is_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, _first) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let (_, second) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let answer = browser.get(&to_json(&options));
    let err = rp
        .finish_authentication(&second, &answer, one(&passkey), at(101))
        .unwrap_err();
    assert_eq!(err, PasskeyError::ChallengeMismatch);

    // A registration answer is not an assertion, and the reverse.
    let (options, reg_state) = rp
        .start_registration(
            ALICE,
            "claire.martin",
            "Claire Martin",
            one(&passkey),
            at(0),
        )
        .unwrap();
    let creation = Browser::new().create(&to_json(&options));
    let (_, login_state) = rp
        .start_authentication(ALICE, one(&passkey), at(0))
        .unwrap();
    assert!(
        rp.finish_authentication(&login_state, &creation, one(&passkey), at(1))
            .is_err()
    );
    let (options, _) = rp
        .start_authentication(ALICE, one(&passkey), at(0))
        .unwrap();
    let assertion = browser.get(&to_json(&options));
    assert!(
        rp.finish_registration(&reg_state, &assertion, &[passkey], at(1))
            .is_err()
    );
}

#[test]
fn a_counter_behind_the_stored_one_is_refused() {
    let rp = rp();
    let mut browser = Browser::new();
    let mut passkey = register(&rp, &mut browser, ALICE, &[]);
    // The row says a copy of the key already signed with counter 100.
    passkey.sign_count = 100;
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let answer = browser.get(&to_json(&options));
    let err = rp
        .finish_authentication(&state, &answer, &[passkey], at(101))
        .unwrap_err();
    assert_eq!(err, PasskeyError::CounterRegression);
}

#[test]
fn a_ceremony_needs_the_accounts_own_passkeys() {
    let rp = rp();
    let mut browser = Browser::new();
    let bob_key = register(&rp, &mut browser, BOB, &[]);
    assert_eq!(
        rp.start_authentication(ALICE, &[], at(0)).unwrap_err(),
        PasskeyError::NoPasskey
    );
    assert_eq!(
        rp.start_step_up(ALICE, one(&bob_key), at(0)).unwrap_err(),
        PasskeyError::WrongAccount {
            ceremony_account: ALICE,
            credential_account: BOB
        }
    );
    assert!(matches!(
        rp.start_registration(ALICE, "a", "A", one(&bob_key), at(0)),
        Err(PasskeyError::WrongAccount { .. })
    ));
    let (options, state) = rp.start_registration(ALICE, "a", "A", &[], at(0)).unwrap();
    let answer = Browser::new().create(&to_json(&options));
    assert!(matches!(
        rp.finish_registration(&state, &answer, &[bob_key], at(1)),
        Err(PasskeyError::WrongAccount { .. })
    ));
    assert_eq!(
        rp.start_registration(ALICE, " ", "A", &[], at(0))
            .unwrap_err(),
        PasskeyError::InvalidInput {
            field: "login",
            reason: "empty"
        }
    );
    assert_eq!(
        rp.start_registration(ALICE, "a", "A\u{7}", &[], at(0))
            .unwrap_err(),
        PasskeyError::InvalidInput {
            field: "display_name",
            reason: "contains control characters"
        }
    );
    assert_eq!(
        rp.start_discoverable_authentication(UNIX_EPOCH - Duration::from_secs(1))
            .unwrap_err(),
        PasskeyError::ClockBeforeEpoch
    );
}

#[test]
fn settings_are_checked_and_errors_name_the_field() {
    let field = |r: Result<Passkeys, PasskeyConfigError>| r.unwrap_err().to_string();
    assert!(Passkeys::new("localhost", "http://localhost:8080", RP_NAME).is_ok());
    assert!(Passkeys::new(RP_ID, "https://app.rempart.example", RP_NAME).is_ok());
    for bad_id in [
        "",
        "Rempart.example",
        "https://rempart.example",
        "rempart.example:443",
        "10.0.0.1",
        "a..b",
    ] {
        assert!(
            field(Passkeys::new(bad_id, ORIGIN, RP_NAME)).starts_with("rp_id: "),
            "{bad_id}"
        );
    }
    for bad_origin in [
        "rempart.example",
        "http://rempart.example",
        "https://rempart.example/login",
        "https://other.example",
        "https://notrempart.example",
        "ftp://rempart.example",
    ] {
        assert!(
            field(Passkeys::new(RP_ID, bad_origin, RP_NAME)).starts_with("rp_origin: "),
            "{bad_origin}"
        );
    }
    assert_eq!(field(Passkeys::new(RP_ID, ORIGIN, "")), "rp_name: empty");
    let too_short = rp().with_max_ages(Duration::from_secs(5), Duration::from_secs(60));
    assert_eq!(
        too_short.unwrap_err(),
        PasskeyConfigError::MaxAge {
            field: "ceremony_max_age",
            reason: "shorter than 30 s"
        }
    );
    let too_long = rp().with_max_ages(Duration::from_secs(60), Duration::from_secs(3600));
    assert!(matches!(
        too_long,
        Err(PasskeyConfigError::MaxAge {
            field: "step_up_max_age",
            ..
        })
    ));
}

#[test]
fn debug_output_shows_no_challenge() {
    let rp = rp();
    let mut browser = Browser::new();
    let (options, reg) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let options = to_json(&options);
    let challenge = options["publicKey"]["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    let debug = format!("{reg:?}");
    assert!(
        !debug.contains(&challenge) && debug.contains("<redacted>"),
        "{debug}"
    );
    // The state's own JSON holds the challenge (it must, to be checked).
    assert!(serde_json::to_string(&reg).unwrap().contains(&challenge));

    let answer = browser.create(&options);
    let passkey = rp.finish_registration(&reg, &answer, &[], at(1)).unwrap();
    let (options, auth) = rp
        .start_authentication(ALICE, one(&passkey), at(2))
        .unwrap();
    let challenge = to_json(&options)["publicKey"]["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    let debug = format!("{auth:?}");
    assert!(
        !debug.contains(&challenge) && debug.contains("<redacted>"),
        "{debug}"
    );
    let debug = format!("{passkey:?}");
    assert!(
        debug.contains("StoredPasskey") && !debug.contains("public"),
        "{debug}"
    );
}

#[test]
fn a_stored_passkey_whose_id_was_edited_does_not_load() {
    let rp = rp();
    let passkey = register(&rp, &mut Browser::new(), ALICE, &[]);
    let mut row: Value = serde_json::to_value(&passkey).unwrap();
    row["credential_id"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
    let err = serde_json::from_value::<StoredPasskey>(row).unwrap_err();
    assert!(err.to_string().contains("credential_id differs"), "{err}");
}

#[test]
fn malformed_answers_name_the_field() {
    let rp = rp();
    let mut browser = Browser::new();
    let passkey = register(&rp, &mut browser, ALICE, &[]);
    let (options, state) = rp
        .start_authentication(ALICE, one(&passkey), at(100))
        .unwrap();
    let answer: Value = serde_json::from_str(&browser.get(&to_json(&options))).unwrap();
    let finish = |v: &Value| {
        rp.finish_authentication(&state, &v.to_string(), one(&passkey), at(101))
            .unwrap_err()
    };

    let mut no_raw_id = answer.clone();
    no_raw_id.as_object_mut().unwrap().remove("rawId");
    assert_eq!(
        finish(&no_raw_id),
        PasskeyError::MalformedClientJson {
            field: "rawId".into(),
            reason: "missing"
        }
    );
    let mut wrong_type = answer.clone();
    wrong_type["response"]["clientDataJSON"] = json!(12);
    assert_eq!(
        finish(&wrong_type),
        PasskeyError::MalformedClientJson {
            field: "response.clientDataJSON".into(),
            reason: "wrong type"
        }
    );
    let mut bad_base64 = answer.clone();
    bad_base64["response"]["signature"] = json!("not base64 !");
    let err = finish(&bad_base64);
    assert_eq!(
        err,
        PasskeyError::MalformedClientJson {
            field: "response.signature".into(),
            reason: "invalid value"
        }
    );
    assert!(!err.to_string().contains("not base64"), "never echo input");
    assert_eq!(
        rp.finish_authentication(&state, &format!("{answer} x"), one(&passkey), at(101))
            .unwrap_err(),
        PasskeyError::MalformedClientJson {
            field: "(body)".into(),
            reason: "trailing characters after the JSON"
        }
    );
    let huge = " ".repeat(MAX_CLIENT_JSON + 1);
    assert!(matches!(
        credential_id_of(&huge),
        Err(PasskeyError::MalformedClientJson {
            reason: "larger than 64 KiB",
            ..
        })
    ));
}

/// A registration answer and an assertion, with everything needed to
/// finish them, shared by the property tests.
struct Fixture {
    rp: Passkeys,
    reg_state: RegistrationState,
    reg_answer: Value,
    passkey: StoredPasskey,
    auth_state: AuthenticationState,
    auth_answer: Value,
}

fn fixture() -> Fixture {
    let rp = rp();
    let mut browser = Browser::new();
    let (options, reg_state) = rp
        .start_registration(ALICE, "claire.martin", "Claire Martin", &[], at(0))
        .unwrap();
    let reg_answer = browser.create(&to_json(&options));
    let passkey = rp
        .finish_registration(&reg_state, &reg_answer, &[], at(1))
        .unwrap();
    let (options, auth_state) = rp
        .start_authentication(ALICE, one(&passkey), at(2))
        .unwrap();
    let auth_answer = browser.get(&to_json(&options));
    // Both answers verify untouched: the mutations below are the only
    // reason for a refusal.
    rp.finish_authentication(&auth_state, &auth_answer, one(&passkey), at(3))
        .unwrap();
    Fixture {
        rp,
        reg_state,
        reg_answer: serde_json::from_str(&reg_answer).unwrap(),
        passkey,
        auth_state,
        auth_answer: serde_json::from_str(&auth_answer).unwrap(),
    }
}

impl Fixture {
    fn finish_auth(&self, json: &str) -> Result<Authenticated, PasskeyError> {
        self.rp
            .finish_authentication(&self.auth_state, json, one(&self.passkey), at(3))
    }

    fn finish_reg(&self, json: &str) -> Result<StoredPasskey, PasskeyError> {
        self.rp
            .finish_registration(&self.reg_state, json, &[], at(3))
    }
}

/// Flips one bit of a base64url field, as a tampering client would.
fn flip_bit(answer: &Value, field: &str, index: prop::sample::Index, bit: u8) -> Value {
    let mut answer = answer.clone();
    let encoded = answer["response"][field].as_str().unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(encoded).unwrap();
    let i = index.index(bytes.len());
    bytes[i] ^= 1 << bit;
    answer["response"][field] = json!(URL_SAFE_NO_PAD.encode(bytes));
    answer
}

/// Any JSON document, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,40}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| json!(URL_SAFE_NO_PAD.encode(b))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("rawId".to_owned()),
                    Just("type".to_owned()),
                    Just("response".to_owned()),
                    Just("clientDataJSON".to_owned()),
                    Just("authenticatorData".to_owned()),
                    Just("attestationObject".to_owned()),
                    Just("signature".to_owned()),
                    Just("userHandle".to_owned()),
                    "[a-zA-Z]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn flipping_any_signed_bit_of_an_assertion_is_refused() {
    let fx = fixture();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    });
    let fields = prop::sample::select(vec!["authenticatorData", "clientDataJSON", "signature"]);
    runner
        .run(
            &(fields, any::<prop::sample::Index>(), 0u8..8),
            |(field, i, bit)| {
                let tampered = flip_bit(&fx.auth_answer, field, i, bit);
                prop_assert!(fx.finish_auth(&tampered.to_string()).is_err());
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn flipping_any_bit_of_a_registration_never_registers_something_else() {
    let fx = fixture();
    let genuine =
        serde_json::to_string(&fx.finish_reg(&fx.reg_answer.to_string()).unwrap()).unwrap();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    });
    let fields = prop::sample::select(vec!["attestationObject", "clientDataJSON"]);
    runner
        .run(
            &(fields, any::<prop::sample::Index>(), 0u8..8),
            |(field, i, bit)| {
                let tampered = flip_bit(&fx.reg_answer, field, i, bit);
                // The outer CBOR map of the attestation object is not signed,
                // and its decoder takes a byte-string key for a text one: such
                // a flip may pass, but only as the very same credential.
                if let Ok(passkey) = fx.finish_reg(&tampered.to_string()) {
                    prop_assert_eq!(&serde_json::to_string(&passkey).unwrap(), &genuine);
                    prop_assert_eq!(field, "attestationObject");
                }
                Ok(())
            },
        )
        .unwrap();
}

proptest! {
    #[test]
    fn random_text_is_refused(text in "\\PC{0,300}") {
        let fx = fixture_once();
        prop_assert!(fx.finish_auth(&text).is_err());
        prop_assert!(fx.finish_reg(&text).is_err());
        prop_assert!(credential_id_of(&text).is_err());
    }

    #[test]
    fn random_json_is_refused(doc in any_json()) {
        let fx = fixture_once();
        let text = doc.to_string();
        prop_assert!(fx.finish_auth(&text).is_err());
        prop_assert!(fx.finish_reg(&text).is_err());
    }

    #[test]
    fn a_valid_answer_with_one_field_replaced_never_panics(
        which in 0usize..16,
        replacement in any_json(),
        registration in any::<bool>(),
    ) {
        let fx = fixture_once();
        let base = if registration { &fx.reg_answer } else { &fx.auth_answer };
        let mut doc = base.clone();
        replace_nth_leaf(&mut doc, which, replacement.clone());
        let text = doc.to_string();
        let outcome = if registration {
            fx.finish_reg(&text).map(|_| ())
        } else {
            fx.finish_auth(&text).map(|_| ())
        };
        // Unsigned decorations (`id`, `type`, extensions, transports) may
        // change without harm; anything the verification covers may not.
        if outcome.is_ok() {
            prop_assert!(doc == *base || touches_only_unsigned(base, &doc), "{text}");
        }
    }
}

fn fixture_once() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(fixture)
}

/// Replaces the `n`-th leaf (depth-first, modulo the count) with `value`.
fn replace_nth_leaf(doc: &mut Value, n: usize, value: Value) {
    fn count(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.values().map(count).sum(),
            Value::Array(a) => a.iter().map(count).sum(),
            _ => 1,
        }
    }
    fn visit(v: &mut Value, target: &mut usize, value: &mut Option<Value>) {
        match v {
            Value::Object(m) => m.values_mut().for_each(|c| visit(c, target, value)),
            Value::Array(a) => a.iter_mut().for_each(|c| visit(c, target, value)),
            leaf => {
                if *target == 0
                    && let Some(new) = value.take()
                {
                    *leaf = new;
                }
                *target = target.wrapping_sub(1);
            }
        }
    }
    let leaves = count(doc);
    if leaves > 0 {
        visit(doc, &mut (n % leaves), &mut Some(value));
    }
}

fn touches_only_unsigned(base: &Value, doc: &Value) -> bool {
    let signed = |v: &Value| {
        (
            v["rawId"].clone(),
            v["response"]["clientDataJSON"].clone(),
            v["response"]["authenticatorData"].clone(),
            v["response"]["signature"].clone(),
            v["response"]["attestationObject"].clone(),
        )
    };
    signed(base) == signed(doc)
}
