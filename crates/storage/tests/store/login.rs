//! What logging in rests on: trusted login devices, passwords and TOTP
//! steps, passkeys and their ceremonies, activation codes (four eyes,
//! single use), federation links, approved resets.

use super::*;
use futures_util::future::join_all;
use rempart_storage::{
    ActivationFactors, CredentialReset, FederationLink, NewActivation, ResetKind, StoredPasskeyRow,
    StoredTotp, ThrottleEntry, ThrottleInsert, ThrottleScope,
};

const PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
const PHC2: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNob3RoZXJoYXNo";

fn passkey_of(account_id: AccountId, credential_id: &[u8], t: DateTime<Utc>) -> StoredPasskeyRow {
    StoredPasskeyRow {
        credential_id: credential_id.to_vec(),
        account_id,
        data: format!(r#"{{"cred":"{}","counter":0}}"#, credential_id.len()),
        created_at: t,
        last_used_at: None,
    }
}

/// Gives an account every factor and one live session `n`.
async fn enrol_everything(
    store: &dyn RegistryStore,
    auth: &dyn AuthStore,
    account_id: AccountId,
    n: u8,
    t: DateTime<Utc>,
) {
    auth.set_password(account_id, PHC, t)
        .await
        .on(store, "password");
    auth.set_totp(StoredTotp {
        account_id,
        sealed_secret: blob(20, i64::from(n), 48),
        last_step: Some(100),
        enrolled_at: t,
    })
    .await
    .on(store, "totp");
    for k in [n, n + 100] {
        auth.add_passkey(passkey_of(account_id, &[k; 16], t))
            .await
            .on(store, "passkey");
    }
    auth.insert_session(session_of(account_id, n, "passkey", t))
        .await
        .on(store, "session");
}

/// Trusted login browsers: a device's own throttle state, found only for
/// its account and while it lasts, moved by compare-and-set, replaced by
/// the next token, and gone with a suspension, an approved reset or its
/// expiry (issue 17, item 8).
async fn trusted_login_devices_keep_their_own_counter_until_they_go(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let (d1, d2, d3) = (key32(1), key32(2), key32(3));
    let until = plus(t0, 90 * 86_400);
    auth.trust_login_device(&d1, agent1, t0, until, None)
        .await
        .on(store, "trust");
    auth.trust_login_device(&d2, agent2, t0, until, None)
        .await
        .on(store, "trust");
    let throttle = |d: [u8; 32], account: AccountId, now| {
        let auth = &auth;
        async move {
            auth.login_device_throttle(&d, account, now)
                .await
                .on(store, "device throttle")
        }
    };
    assert_eq!(
        throttle(d1, agent1, t0).await.as_deref(),
        Some("{}"),
        "[{be}]"
    );
    assert_eq!(
        throttle(d1, agent2, t0).await,
        None,
        "[{be}] another account's"
    );
    assert_eq!(throttle(d3, agent1, t0).await, None, "[{be}] unknown");
    assert_eq!(throttle(d1, agent1, until).await, None, "[{be}] expired");
    // Compare-and-set: of parallel swaps from one state, one writes.
    let swaps = futures_util::future::join_all((0..20).map(|i| {
        let auth = &auth;
        async move {
            let next = format!(r#"{{"consecutive_failures":1,"last_failure_unix":{i}}}"#);
            auth.swap_login_device_throttle(&d1, agent1, "{}", &next)
                .await
        }
    }))
    .await;
    let won = swaps
        .into_iter()
        .map(|r| r.on(store, "swap"))
        .filter(|w| *w)
        .count();
    assert_eq!(won, 1, "[{be}]");
    assert!(
        !auth
            .swap_login_device_throttle(&d1, agent2, "{}", "{}")
            .await
            .on(store, "swap"),
        "[{be}] not through another account"
    );
    // The next token replaces the one shown.
    auth.trust_login_device(&d3, agent1, plus(t0, 60), until, Some(&d1))
        .await
        .on(store, "replace");
    assert_eq!(throttle(d1, agent1, t0).await, None, "[{be}] replaced");
    assert_eq!(
        throttle(d3, agent1, t0).await.as_deref(),
        Some("{}"),
        "[{be}]"
    );
    // A suspension ends every trust of the account, not another's.
    assert!(
        auth.suspend_account(agent1, plus(t0, 120), "suspension")
            .await
            .on(store, "suspend")
            .is_some()
    );
    assert_eq!(throttle(d3, agent1, t0).await, None, "[{be}] suspended");
    assert!(throttle(d2, agent2, t0).await.is_some(), "[{be}]");
    // Expired rows are purged.
    let purged = auth
        .purge_expired(plus(until, 1), plus(t0, -86_400), 1_000)
        .await
        .on(store, "purge");
    assert_eq!(purged.login_devices, 1, "[{be}] {purged:?}");
    assert_eq!(throttle(d2, agent2, t0).await, None, "[{be}] purged");
}
both_backends!(trusted_login_devices_keep_their_own_counter_until_they_go);

/// The throttle states that belong to no account (source addresses,
/// unknown logins): one insert per key, a bound per scope, compare-and-set
/// updates and deletes, pruning by `forget_at`, eviction of the oldest.
async fn login_throttles_are_shared_bounded_and_compared_and_set(backend: Backend) {
    let db = Db::open(backend).await;
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    let (addr, unknown) = (ThrottleScope::Address, ThrottleScope::UnknownLogin);
    let entry = |state: &str, forget_at: i64, touched: i64| ThrottleEntry {
        entry: state.to_owned(),
        forget_at,
        touched,
    };
    assert_eq!(
        auth.login_throttle(addr, b"a").await.on(store, "read"),
        None,
        "[{be}]"
    );
    // Twenty instances insert the same key at once: one writes.
    let inserts = join_all((0..20).map(|i| {
        let auth = &auth;
        let e = entry(&format!("s{i}"), 100, 10);
        async move { auth.insert_login_throttle(addr, b"a", &e, Some(2)).await }
    }))
    .await;
    let outcomes: Vec<_> = inserts.into_iter().map(|r| r.on(store, "insert")).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ThrottleInsert::Inserted)
            .count(),
        1,
        "[{be}] {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| *o != ThrottleInsert::Full),
        "[{be}]"
    );
    let first = auth
        .login_throttle(addr, b"a")
        .await
        .on(store, "read")
        .expect("stored");
    // The same key in the other scope is another state.
    assert_eq!(
        auth.login_throttle(unknown, b"a").await.on(store, "read"),
        None,
        "[{be}]"
    );
    // Compare-and-set: of parallel swaps from one state, one writes.
    let swaps = join_all((0..20).map(|i| {
        let auth = &auth;
        let (first, next) = (first.clone(), entry(&format!("t{i}"), 200, 20));
        async move {
            auth.swap_login_throttle(addr, b"a", &first, Some(&next))
                .await
        }
    }))
    .await;
    let won = swaps
        .into_iter()
        .map(|r| r.on(store, "swap"))
        .filter(|w| *w)
        .count();
    assert_eq!(won, 1, "[{be}]");
    let second = auth
        .login_throttle(addr, b"a")
        .await
        .on(store, "read")
        .expect("stored");
    assert!(second.starts_with('t'), "[{be}] {second}");
    // The bound: a second key fits, a third does not; the overflow key,
    // unbounded, does.
    let put = |key: &'static [u8], max: Option<u64>, forget_at: i64, touched: i64| {
        let auth = &auth;
        async move {
            auth.insert_login_throttle(addr, key, &entry("x", forget_at, touched), max)
                .await
                .on(store, "insert")
        }
    };
    assert_eq!(
        put(b"b", Some(2), 150, 15).await,
        ThrottleInsert::Inserted,
        "[{be}]"
    );
    assert_eq!(
        put(b"c", Some(2), 150, 15).await,
        ThrottleInsert::Full,
        "[{be}]"
    );
    assert_eq!(
        put(b"a", Some(2), 150, 15).await,
        ThrottleInsert::Exists,
        "[{be}]"
    );
    assert_eq!(
        put(b"", None, 150, 15).await,
        ThrottleInsert::Inserted,
        "[{be}]"
    );
    // Pruning deletes what may be forgotten at `now`, nothing else.
    assert_eq!(
        auth.prune_login_throttles(addr, 150)
            .await
            .on(store, "prune"),
        2,
        "[{be}]"
    );
    assert_eq!(
        auth.prune_login_throttles(unknown, 1000)
            .await
            .on(store, "prune"),
        0,
        "[{be}] another scope"
    );
    assert!(
        auth.login_throttle(addr, b"a")
            .await
            .on(store, "read")
            .is_some()
    );
    assert!(
        auth.login_throttle(addr, b"b")
            .await
            .on(store, "read")
            .is_none()
    );
    // A delete is a compare-and-set too.
    assert!(
        !auth
            .swap_login_throttle(addr, b"a", &first, None)
            .await
            .on(store, "delete"),
        "[{be}] not from a stale state"
    );
    assert!(
        auth.swap_login_throttle(addr, b"a", &second, None)
            .await
            .on(store, "delete"),
        "[{be}]"
    );
    assert!(
        auth.login_throttle(addr, b"a")
            .await
            .on(store, "read")
            .is_none()
    );
    // Eviction takes the state touched longest ago, in its scope only.
    for (key, touched) in [(&b"p"[..], 30), (b"q", 10), (b"r", 20)] {
        auth.insert_login_throttle(unknown, key, &entry("u", i64::MAX, touched), None)
            .await
            .on(store, "insert");
    }
    assert!(
        auth.evict_login_throttle(unknown).await.on(store, "evict"),
        "[{be}]"
    );
    assert!(
        auth.login_throttle(unknown, b"q")
            .await
            .on(store, "read")
            .is_none()
    );
    assert!(
        auth.login_throttle(unknown, b"p")
            .await
            .on(store, "read")
            .is_some()
    );
    assert!(
        auth.login_throttle(unknown, b"r")
            .await
            .on(store, "read")
            .is_some()
    );
    assert!(
        !auth.evict_login_throttle(addr).await.on(store, "evict"),
        "[{be}] nothing left in the other scope"
    );
    // The bound follows deletes too (prune, compare-and-set, eviction):
    // the scope is empty again, so two fit and a third does not.
    assert_eq!(
        put(b"d", Some(2), 150, 15).await,
        ThrottleInsert::Inserted,
        "[{be}]"
    );
    assert_eq!(
        put(b"e", Some(2), 150, 15).await,
        ThrottleInsert::Inserted,
        "[{be}]"
    );
    assert_eq!(
        put(b"f", Some(2), 150, 15).await,
        ThrottleInsert::Full,
        "[{be}]"
    );
}
both_backends!(login_throttles_are_shared_bounded_and_compared_and_set);

async fn passwords_and_totp_steps_are_kept_and_compared_and_set(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;

    // Password and throttle state.
    assert_eq!(auth.password(agent1).await.on(store, "password"), None);
    auth.set_password(agent1, PHC, t0)
        .await
        .on(store, "set password");
    assert_eq!(
        auth.password(agent1).await.on(store, "password"),
        Some((PHC.to_string(), "{}".to_string())),
        "[{be}] a new password starts with an empty throttle state"
    );
    let throttle = r#"{"consecutive_failures":3,"last_failure_unix":1772442000,"lock":null}"#;
    // The throttle state moves by compare-and-set only: of parallel
    // swaps from the same state exactly one writes, and a swap from a
    // state that is no longer there writes nothing.
    let swaps = futures_util::future::join_all((0..20).map(|i| async move {
        let next = format!(r#"{{"consecutive_failures":1,"last_failure_unix":{i}}}"#);
        auth.swap_throttle(agent1, "{}", &next).await
    }))
    .await;
    let won: Vec<bool> = swaps.into_iter().map(|r| r.on(store, "swap")).collect();
    assert_eq!(
        won.iter().filter(|&&w| w).count(),
        1,
        "[{be}] one parallel swap wins: {won:?}"
    );
    assert!(
        !auth
            .swap_throttle(agent1, "{}", throttle)
            .await
            .on(store, "stale swap"),
        "[{be}] a swap from a stale state writes nothing"
    );
    let (_, current) = auth.password(agent1).await.on(store, "password").unwrap();
    assert!(
        auth.swap_throttle(agent1, &current, throttle)
            .await
            .on(store, "swap"),
        "[{be}] a swap from the state read writes"
    );
    auth.set_password(agent1, PHC2, plus(t0, 60))
        .await
        .on(store, "change password");
    assert_eq!(
        auth.password(agent1).await.on(store, "password"),
        Some((PHC2.to_string(), throttle.to_string())),
        "[{be}] a changed password keeps the throttle state"
    );
    assert_invalid(
        store,
        auth.set_password(agent1, "$2b$12$abcdefghijklmnopqrstuuvwxyz", t0)
            .await,
        "phc",
        "bcrypt",
    );
    assert_invalid(
        store,
        auth.set_password(AccountId::new(999_999), PHC, t0).await,
        "account_id",
        "unknown account",
    );
    assert!(
        !auth
            .swap_throttle(agent2, "{}", throttle)
            .await
            .on(store, "throttle without password"),
        "[{be}] no password, no throttle state"
    );
    assert_eq!(
        auth.password(agent2).await.on(store, "password"),
        None,
        "[{be}]"
    );

    // TOTP.
    assert_eq!(auth.totp(agent1).await.on(store, "totp"), None);
    assert!(
        !auth
            .accept_totp_step(agent1, 5)
            .await
            .on(store, "step without totp"),
        "[{be}]"
    );
    let enrolled = StoredTotp {
        account_id: agent1,
        sealed_secret: blob(21, 1, 48),
        last_step: None,
        enrolled_at: t0,
    };
    auth.set_totp(enrolled.clone()).await.on(store, "enrol");
    assert_eq!(
        auth.totp(agent1).await.on(store, "totp"),
        Some(enrolled.clone())
    );
    let step = 59_000_000u64;
    for (s, accepted, what) in [
        (step, true, "first code"),
        (step, false, "the same step again"),
        (step - 1, false, "an earlier step"),
        (step + 1, true, "the next step"),
        (step, false, "an earlier step after the next"),
    ] {
        assert_eq!(
            auth.accept_totp_step(agent1, s)
                .await
                .on(store, "accept step"),
            accepted,
            "[{be}] {what}"
        );
    }
    assert_eq!(
        auth.totp(agent1)
            .await
            .on(store, "totp")
            .and_then(|t| t.last_step),
        Some(step + 1),
        "[{be}]"
    );
    // Two logins (here sixteen) with the same code: one wins.
    let racing = join_all((0..16).map(|_| auth.accept_totp_step(agent1, step + 10))).await;
    let wins = racing
        .into_iter()
        .map(|r| r.on(store, "racing step"))
        .filter(|&w| w)
        .count();
    assert_eq!(wins, 1, "[{be}]");
    // Re-enrolment replaces the secret and forgets the step.
    let again = StoredTotp {
        sealed_secret: blob(21, 2, 48),
        enrolled_at: plus(t0, 3600),
        ..enrolled.clone()
    };
    auth.set_totp(again.clone()).await.on(store, "re-enrol");
    assert_eq!(
        auth.totp(agent1).await.on(store, "totp"),
        Some(again.clone())
    );
    // KEK rotation: every sealed secret listed in account order, then
    // replaced only if unchanged, the last step kept.
    auth.set_totp(StoredTotp {
        account_id: agent2,
        ..enrolled.clone()
    })
    .await
    .on(store, "enrol agent2");
    let all = auth
        .totp_secrets(AccountId::new(0), 10)
        .await
        .on(store, "totp secrets");
    let mut want = vec![
        (agent1, again.sealed_secret.clone()),
        (agent2, enrolled.sealed_secret.clone()),
    ];
    want.sort();
    assert_eq!(all, want, "[{be}]");
    assert_eq!(
        auth.totp_secrets(want[0].0, 10).await.on(store, "after"),
        want[1..].to_vec(),
        "[{be}]"
    );
    assert_eq!(
        auth.totp_secrets(AccountId::new(0), 1)
            .await
            .on(store, "limit")
            .len(),
        1
    );
    auth.accept_totp_step(agent1, step + 20)
        .await
        .on(store, "step before rewrap");
    let rewrapped = blob(21, 3, 48);
    assert!(
        !auth
            .replace_totp_secret(agent1, &enrolled.sealed_secret, &rewrapped)
            .await
            .on(store, "stale replace"),
        "[{be}] a secret changed meanwhile is left alone"
    );
    assert!(
        auth.replace_totp_secret(agent1, &again.sealed_secret, &rewrapped)
            .await
            .on(store, "replace"),
        "[{be}]"
    );
    assert_eq!(
        auth.totp(agent1).await.on(store, "totp"),
        Some(StoredTotp {
            sealed_secret: rewrapped.clone(),
            last_step: Some(step + 20),
            ..again.clone()
        }),
        "[{be}] the last step survives the rewrap"
    );
    assert_invalid(
        store,
        auth.replace_totp_secret(agent1, &rewrapped, &[]).await,
        "sealed_secret",
        "empty secret",
    );
    auth.set_totp(again.clone())
        .await
        .on(store, "re-enrol again");
    for (t, field) in [
        (
            StoredTotp {
                account_id: AccountId::new(999_999),
                ..enrolled.clone()
            },
            "account_id",
        ),
        (
            StoredTotp {
                sealed_secret: vec![],
                ..enrolled.clone()
            },
            "sealed_secret",
        ),
        (
            StoredTotp {
                last_step: Some(u64::MAX),
                ..enrolled.clone()
            },
            "last_step",
        ),
    ] {
        assert_invalid(store, auth.set_totp(t).await, field, "bad enrolment");
    }
    assert_invalid(
        store,
        auth.accept_totp_step(agent1, u64::MAX).await,
        "step",
        "step out of range",
    );
}
both_backends!(passwords_and_totp_steps_are_kept_and_compared_and_set);

async fn passkeys_are_registered_once_and_updated(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let p1 = passkey_of(agent1, &[1, 2, 3], t0);
    let p2 = passkey_of(agent1, &[9; 64], plus(t0, 60));
    let p3 = StoredPasskeyRow {
        last_used_at: Some(plus(t0, 5)),
        ..passkey_of(agent2, &[4], t0)
    };
    for p in [&p1, &p2, &p3] {
        auth.add_passkey(p.clone()).await.on(store, "add passkey");
    }
    for (p, field, what) in [
        (passkey_of(agent2, &[1, 2, 3], t0), "credential_id", "taken"),
        (passkey_of(agent1, &[], t0), "credential_id", "empty"),
        (
            passkey_of(agent1, &[7; 1024], t0),
            "credential_id",
            "too long",
        ),
        (
            passkey_of(AccountId::new(999_999), &[8], t0),
            "account_id",
            "unknown account",
        ),
    ] {
        assert_invalid(store, auth.add_passkey(p).await, field, what);
    }
    assert_eq!(
        auth.passkeys(agent1).await.on(store, "passkeys"),
        vec![p1.clone(), p2.clone()],
        "[{be}]"
    );
    assert_eq!(
        auth.passkey_by_credential(&[4])
            .await
            .on(store, "by credential"),
        Some(p3.clone()),
        "[{be}]"
    );
    assert_eq!(
        auth.passkey_by_credential(&[4, 0])
            .await
            .on(store, "by credential"),
        None,
        "[{be}]"
    );
    let data = r#"{"cred":"3","counter":17}"#;
    auth.update_passkey(&[1, 2, 3], data, plus(t0, 900))
        .await
        .on(store, "update");
    auth.update_passkey(&[5, 5], data, plus(t0, 900))
        .await
        .on(store, "update of a removed passkey");
    assert_eq!(
        auth.passkey_by_credential(&[1, 2, 3])
            .await
            .on(store, "by credential"),
        Some(StoredPasskeyRow {
            data: data.into(),
            last_used_at: Some(plus(t0, 900)),
            ..p1
        }),
        "[{be}]"
    );
    assert_eq!(
        auth.passkeys(agent2).await.on(store, "passkeys"),
        vec![p3],
        "[{be}] other accounts untouched"
    );
}
both_backends!(passkeys_are_registered_once_and_updated);

async fn ceremonies_are_single_use_and_expire(backend: Backend) {
    let db = Db::open(backend).await;
    let now = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    let payload = r#"{"challenge":"c3ludGhldGlj","user":null}"#;
    auth.put_ceremony(key32(1), "webauthn_login", payload, plus(now, 300))
        .await
        .on(store, "put");
    assert_eq!(
        auth.take_ceremony(key32(1), "oidc_login", now)
            .await
            .on(store, "take as another kind"),
        None,
        "[{be}] another kind does not take it"
    );
    assert_eq!(
        auth.take_ceremony(key32(1), "webauthn_login", plus(now, 299))
            .await
            .on(store, "take"),
        Some(payload.to_string()),
        "[{be}]"
    );
    assert_eq!(
        auth.take_ceremony(key32(1), "webauthn_login", now)
            .await
            .on(store, "take again"),
        None,
        "[{be}] single use"
    );
    // Expired at its expiry instant, and gone once asked for.
    auth.put_ceremony(key32(2), "oidc_login", "{}", plus(now, 60))
        .await
        .on(store, "put");
    assert_eq!(
        auth.take_ceremony(key32(2), "oidc_login", plus(now, 60))
            .await
            .on(store, "take expired"),
        None,
        "[{be}]"
    );
    assert_eq!(
        auth.take_ceremony(key32(2), "oidc_login", now)
            .await
            .on(store, "take after expiry"),
        None,
        "[{be}] an expired ceremony is deleted when taken"
    );
    // Concurrent takes: one gets it.
    auth.put_ceremony(key32(3), "login_challenge", "x", plus(now, 60))
        .await
        .on(store, "put");
    let takes = join_all((0..8).map(|_| auth.take_ceremony(key32(3), "login_challenge", now)))
        .await
        .into_iter()
        .filter_map(|r| r.on(store, "racing take"))
        .count();
    assert_eq!(takes, 1, "[{be}]");
    auth.put_ceremony(key32(4), "login_challenge", "x", plus(now, 60))
        .await
        .on(store, "put");
    assert_invalid(
        store,
        auth.put_ceremony(key32(4), "login_challenge", "y", plus(now, 60))
            .await,
        "key",
        "a key already stored",
    );
    assert_invalid(
        store,
        auth.put_ceremony(key32(5), "WebAuthn-Login", "y", plus(now, 60))
            .await,
        "kind",
        "a malformed kind",
    );
}
both_backends!(ceremonies_are_single_use_and_expire);

/// Activation codes: only for an active account approved under four eyes
/// that lacks a factor, issued by another, active officer; used once,
/// with the factors, in one transaction; refused with another digest,
/// after expiry, after use; a new code voids the old one.
async fn activation_codes_need_four_eyes_and_are_used_once_before_expiry(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let officer = account_id(store, "ft.officer1").await;
    let boss = account_id(store, "ce.Boss").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    enrol_everything(store, auth, agent2, 7, t0).await;
    let code = |account_id, digest, issued_by| NewActivation {
        account_id,
        digest,
        issued_by,
        issued_at: t0,
        expires_at: plus(t0, 72 * 3600),
    };
    for (new, field, what) in [
        (code(officer, key32(1), officer), "account_id", "itself"),
        (
            code(boss, key32(1), agent1),
            "issued_by",
            "an agent does not issue codes",
        ),
        (
            code(agent1, key32(1), AccountId::new(999_999)),
            "issued_by",
            "unknown issuer",
        ),
        (
            code(AccountId::new(999_999), key32(1), officer),
            "account_id",
            "unknown account",
        ),
        (
            code(agent2, key32(1), officer),
            "account_id",
            "both factors already there",
        ),
        (
            NewActivation {
                expires_at: t0,
                ..code(agent1, key32(1), officer)
            },
            "expires_at",
            "expiring when issued",
        ),
    ] {
        assert_invalid(store, auth.issue_activation(new).await, field, what);
    }
    // The officer's own account was imported without an approver: no
    // code, whoever issues it.
    let (_, refused) = store
        .upsert_accounts(vec![account(
            "ft.officer2",
            "FT",
            Role::Officer,
            AccountState::Active,
            None,
            None,
        )])
        .await
        .on(store, "officer 2");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let officer2 = account_id(store, "ft.officer2").await;
    assert_invalid(
        store,
        auth.issue_activation(code(officer, key32(1), officer2))
            .await,
        "account_id",
        "never approved under four eyes",
    );

    auth.issue_activation(code(agent1, key32(1), officer))
        .await
        .on(store, "issue");
    let stored = auth
        .activation(agent1)
        .await
        .on(store, "read")
        .expect("stored code");
    assert_eq!(stored.digest, key32(1), "[{be}]");
    assert_eq!(stored.issued_by, officer, "[{be}]");
    assert_eq!(stored.used_at, None, "[{be}]");
    assert_eq!(stored.throttle, "{}", "[{be}]");
    assert!(
        auth.swap_activation_throttle(agent1, "{}", r#"{"failures":2}"#)
            .await
            .on(store, "throttle"),
        "[{be}]"
    );
    assert!(
        !auth
            .swap_activation_throttle(agent1, "{}", r#"{"failures":3}"#)
            .await
            .on(store, "stale throttle"),
        "[{be}] a stale activation throttle swap writes nothing"
    );
    // A new code replaces the old one and its throttle state.
    auth.issue_activation(code(agent1, key32(2), officer))
        .await
        .on(store, "reissue");
    let stored = auth.activation(agent1).await.on(store, "read").unwrap();
    assert_eq!((stored.digest, stored.throttle.as_str()), (key32(2), "{}"));

    let factors = || ActivationFactors {
        phc: Some(PHC.into()),
        totp: Some(StoredTotp {
            account_id: agent1,
            sealed_secret: blob(9, 1, 48),
            last_step: Some(42),
            enrolled_at: plus(t0, 60),
        }),
    };
    let later = plus(t0, 60);
    for (digest, when, what) in [
        (key32(1), later, "the replaced code"),
        (key32(3), later, "another digest"),
        (key32(2), plus(t0, 72 * 3600), "at expiry"),
    ] {
        assert!(
            !auth
                .complete_activation(agent1, digest, factors(), when)
                .await
                .on(store, what),
            "[{be}] {what}"
        );
    }
    assert!(auth.password(agent1).await.on(store, "pw").is_none());
    assert!(
        auth.complete_activation(agent1, key32(2), factors(), later)
            .await
            .on(store, "complete"),
        "[{be}]"
    );
    assert_eq!(
        auth.password(agent1).await.on(store, "pw").map(|p| p.0),
        Some(PHC.to_string()),
        "[{be}]"
    );
    let totp = auth.totp(agent1).await.on(store, "totp").unwrap();
    assert_eq!(totp.last_step, Some(42), "[{be}]");
    assert_eq!(
        auth.activation(agent1)
            .await
            .on(store, "read")
            .unwrap()
            .used_at,
        Some(later),
        "[{be}]"
    );
    assert!(
        !auth
            .complete_activation(agent1, key32(2), factors(), later)
            .await
            .on(store, "again"),
        "[{be}] used once"
    );
    // With both factors, no new code.
    assert_invalid(
        store,
        auth.issue_activation(code(agent1, key32(4), officer)).await,
        "account_id",
        "activated already",
    );
}
both_backends!(activation_codes_need_four_eyes_and_are_used_once_before_expiry);

async fn federation_links_are_made_by_officers_once_per_identity_and_unlinking_ends_sessions(
    backend: Backend,
) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    const ISS: &str = "https://auth.agentconnect.gouv.fr/api/v2";
    const SUB: &str = "5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01";
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let (_, refused) = store
        .upsert_accounts(vec![account(
            "ft.officer9",
            "FT",
            Role::Officer,
            AccountState::Suspended,
            None,
            None,
        )])
        .await
        .on(store, "suspended officer");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let officer = account_id(store, "ft.officer1").await;
    let suspended = account_id(store, "ft.officer9").await;
    let boss = account_id(store, "ce.Boss").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let link = |issuer: &str, subject: &str, account_id, linked_by| FederationLink {
        issuer: issuer.into(),
        subject: subject.into(),
        account_id,
        linked_by,
        linked_at: t0,
    };

    assert_eq!(
        auth.federation_link(ISS, SUB).await.on(store, "lookup"),
        None,
        "[{be}] nothing linked yet"
    );
    for (new, field, what) in [
        (link(ISS, SUB, agent1, boss), "linked_by", "a manager"),
        (link(ISS, SUB, agent1, agent2), "linked_by", "an agent"),
        (
            link(ISS, SUB, agent1, suspended),
            "linked_by",
            "a suspended officer",
        ),
        (
            link(ISS, SUB, agent1, AccountId::new(999_999)),
            "linked_by",
            "unknown linker",
        ),
        (
            link(ISS, SUB, officer, officer),
            "linked_by",
            "an officer linking itself",
        ),
        (
            link(ISS, SUB, AccountId::new(999_999), officer),
            "account_id",
            "unknown account",
        ),
        (link("", SUB, agent1, officer), "issuer", "empty issuer"),
        (
            link(&"h".repeat(513), SUB, agent1, officer),
            "issuer",
            "issuer too long",
        ),
        (link(ISS, "", agent1, officer), "subject", "empty subject"),
        (
            link(ISS, &"s".repeat(256), agent1, officer),
            "subject",
            "subject too long",
        ),
        (link(ISS, "a b", agent1, officer), "subject", "a space"),
        (link(ISS, "é", agent1, officer), "subject", "not ASCII"),
    ] {
        assert_invalid(store, auth.link_federation(new).await, field, what);
    }
    assert_eq!(
        auth.federation_link(ISS, SUB).await.on(store, "lookup"),
        None,
        "[{be}] no refused link was stored"
    );

    auth.link_federation(link(ISS, SUB, agent1, officer))
        .await
        .on(store, "link");
    let stored = auth
        .federation_link(ISS, SUB)
        .await
        .on(store, "lookup")
        .expect("linked");
    assert_eq!(stored, link(ISS, SUB, agent1, officer), "[{be}]");
    assert!(
        !format!("{stored:?}").contains(SUB),
        "[{be}] Debug hides the subject"
    );
    // Keyed on both halves, compared exactly.
    for (issuer, subject) in [
        (ISS, "5D2C7C3E-6F0B-4F7E-9B1A-2F8E1C4D9A01"),
        ("https://auth.agentconnect.gouv.fr/api/v2/", SUB),
        ("https://other.example", SUB),
        (ISS, &"s".repeat(300)),
    ] {
        assert_eq!(
            auth.federation_link(issuer, subject)
                .await
                .on(store, "lookup"),
            None,
            "[{be}] {issuer}"
        );
    }
    // One identity names one account: never moved, never doubled.
    for account in [agent1, agent2] {
        assert_invalid(
            store,
            auth.link_federation(link(ISS, SUB, account, officer)).await,
            "subject",
            "already linked",
        );
    }
    // An account may hold several identities.
    auth.link_federation(link("https://other.example", SUB, agent1, officer))
        .await
        .on(store, "second identity");
    auth.link_federation(link(ISS, "another-subject", agent2, officer))
        .await
        .on(store, "another subject");

    // Unlinking: an officer only; ends the account's federated sessions,
    // not its others.
    auth.insert_session(session_of(agent1, 61, "oidc", t0))
        .await
        .on(store, "oidc session");
    auth.insert_session(session_of(agent1, 62, "passkey", t0))
        .await
        .on(store, "passkey session");
    auth.insert_session(session_of(agent2, 63, "oidc", t0))
        .await
        .on(store, "other account's session");
    for by in [boss, suspended, AccountId::new(999_999)] {
        assert_invalid(
            store,
            auth.unlink_federation(ISS, SUB, by, plus(t0, 60)).await,
            "unlinked_by",
            "not an active officer",
        );
    }
    assert!(
        auth.federation_link(ISS, SUB)
            .await
            .on(store, "lookup")
            .is_some(),
        "[{be}] a refused unlink changes nothing"
    );
    assert_eq!(
        auth.unlink_federation(ISS, SUB, officer, plus(t0, 60))
            .await
            .on(store, "unlink"),
        Some(agent1),
        "[{be}]"
    );
    assert_eq!(
        auth.federation_link(ISS, SUB).await.on(store, "lookup"),
        None,
        "[{be}] gone"
    );
    let ended = |n: u8| async move {
        let (s, _) = auth
            .session(key32(n))
            .await
            .on(store, "session")
            .expect("stored session");
        (s.ended_at, s.end_reason)
    };
    assert_eq!(
        ended(61).await,
        (Some(plus(t0, 60)), Some("federation_unlink".to_string())),
        "[{be}] the federated session ends"
    );
    assert_eq!(
        ended(62).await,
        (None, None),
        "[{be}] the passkey one stays"
    );
    assert_eq!(
        ended(63).await,
        (None, None),
        "[{be}] another account's stays"
    );
    assert_eq!(
        auth.unlink_federation(ISS, SUB, officer, plus(t0, 61))
            .await
            .on(store, "unlink again"),
        None,
        "[{be}] nothing left to unlink"
    );
    // Once unlinked, the identity may be linked again, to anyone.
    auth.link_federation(link(ISS, SUB, agent2, officer))
        .await
        .on(store, "relink");
    assert_eq!(
        auth.federation_link(ISS, SUB)
            .await
            .on(store, "lookup")
            .map(|l| l.account_id),
        Some(agent2),
        "[{be}]"
    );
}
both_backends!(federation_links_are_made_by_officers_once_per_identity_and_unlinking_ends_sessions);

async fn approved_resets_remove_factors_end_sessions_and_flag_the_next_one(backend: Backend) {
    use AccountState::Active;
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let (_, refused) = store
        .upsert_accounts(vec![account(
            "ft.officer2",
            "FT",
            Role::Officer,
            Active,
            None,
            None,
        )])
        .await
        .on(store, "officer 2");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let officer = account_id(store, "ft.officer1").await;
    let officer2 = account_id(store, "ft.officer2").await;
    let boss = account_id(store, "ce.Boss").await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    enrol_everything(store, auth, agent1, 1, t0).await;
    auth.insert_session(session_of(agent1, 2, "password_totp", t0))
        .await
        .on(store, "second session");
    enrol_everything(store, auth, agent2, 3, t0).await;

    let factors = |account: AccountId| async move {
        (
            auth.password(account).await.on(store, "password").is_some(),
            auth.totp(account).await.on(store, "totp").is_some(),
            auth.passkeys(account).await.on(store, "passkeys").len(),
        )
    };
    let live = |n: u8| async move {
        auth.session(key32(n))
            .await
            .on(store, "session")
            .is_some_and(|(s, _)| s.ended_at.is_none())
    };
    let high_risk = |account: AccountId| async move {
        auth.lifecycle(account)
            .await
            .on(store, "lifecycle")
            .is_some_and(|l| l.next_session_high_risk)
    };

    // A rejected reset changes nothing.
    let r1 = auth
        .request_reset(agent1, ResetKind::All, boss, t0)
        .await
        .on(store, "request reset");
    assert_eq!(
        r1,
        CredentialReset {
            id: r1.id,
            account_id: agent1,
            kind: ResetKind::All,
            requested_by: boss,
            requested_at: t0,
            decided_by: None,
            decided_at: None,
            approved: None,
        },
        "[{be}]"
    );
    assert_eq!(
        auth.pending_resets().await.on(store, "pending"),
        vec![r1.clone()],
        "[{be}]"
    );
    for (decider, what) in [
        (boss, "the requester, a manager"),
        (agent1, "the account itself"),
        (AccountId::new(999_999), "unknown"),
    ] {
        assert_invalid(
            store,
            auth.decide_reset(r1.id, decider, true, plus(t0, 60)).await,
            "officer_id",
            what,
        );
    }
    let rejected = auth
        .decide_reset(r1.id, officer, false, plus(t0, 60))
        .await
        .on(store, "reject")
        .unwrap_or_else(|| panic!("[{be}] rejection"));
    assert_eq!(
        (rejected.approved, rejected.decided_by, rejected.decided_at),
        (Some(false), Some(officer), Some(plus(t0, 60))),
        "[{be}]"
    );
    assert_eq!(
        auth.decide_reset(r1.id, officer2, true, plus(t0, 61))
            .await
            .on(store, "decide again"),
        None,
        "[{be}] decided once"
    );
    assert_eq!(factors(agent1).await, (true, true, 2), "[{be}]");
    assert!(live(1).await && live(2).await, "[{be}]");
    assert!(!high_risk(agent1).await, "[{be}]");
    assert!(
        auth.pending_resets().await.on(store, "pending").is_empty(),
        "[{be}]"
    );

    // An approved password reset, asked by the account itself.
    let r2 = auth
        .request_reset(agent1, ResetKind::Password, agent1, plus(t0, 120))
        .await
        .on(store, "request reset");
    let approved_at = plus(t0, 180);
    let approved = auth
        .decide_reset(r2.id, officer, true, approved_at)
        .await
        .on(store, "approve")
        .unwrap_or_else(|| panic!("[{be}] approval"));
    assert_eq!(approved.approved, Some(true), "[{be}]");
    assert_eq!(
        factors(agent1).await,
        (false, true, 2),
        "[{be}] only the password"
    );
    for n in [1, 2] {
        let (s, _) = auth
            .session(key32(n))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(
            (s.ended_at, s.end_reason.as_deref()),
            (Some(approved_at), Some("reset")),
            "[{be}] session {n}"
        );
    }
    assert!(
        high_risk(agent1).await,
        "[{be}] the next session is high-risk"
    );
    assert_eq!(
        auth.decide_reset(r2.id, officer2, false, plus(approved_at, 1))
            .await
            .on(store, "decide again"),
        None,
        "[{be}]"
    );

    // Two officers racing on one reset: one decision.
    let r3 = auth
        .request_reset(agent1, ResetKind::Totp, boss, plus(t0, 200))
        .await
        .on(store, "request reset");
    let (x, y) = tokio::join!(
        auth.decide_reset(r3.id, officer, true, plus(t0, 210)),
        auth.decide_reset(r3.id, officer2, true, plus(t0, 210)),
    );
    let (x, y) = (x.on(store, "race 1"), y.on(store, "race 2"));
    assert_eq!(
        u8::from(x.is_some()) + u8::from(y.is_some()),
        1,
        "[{be}] {x:?} {y:?}"
    );
    assert_eq!(factors(agent1).await, (false, false, 2), "[{be}]");

    // Passkeys, then the flag cleared by a login.
    let r4 = auth
        .request_reset(agent1, ResetKind::Passkeys, boss, plus(t0, 220))
        .await
        .on(store, "request reset");
    auth.decide_reset(r4.id, officer2, true, plus(t0, 230))
        .await
        .on(store, "approve");
    assert_eq!(factors(agent1).await, (false, false, 0), "[{be}]");
    // An API client's token counts as activity, not as the session.
    auth.record_activity(agent1, plus(t0, 240))
        .await
        .on(store, "activity");
    assert!(high_risk(agent1).await, "[{be}] a token leaves the flag");
    assert_eq!(
        auth.lifecycle(agent1)
            .await
            .on(store, "lifecycle")
            .and_then(|l| l.last_login_at),
        Some(plus(t0, 240)),
        "[{be}] a token counts as activity"
    );
    auth.record_activity(agent1, plus(t0, 235))
        .await
        .on(store, "late activity");
    assert_eq!(
        auth.lifecycle(agent1)
            .await
            .on(store, "lifecycle")
            .and_then(|l| l.last_login_at),
        Some(plus(t0, 240)),
        "[{be}] never backwards"
    );
    assert_invalid(
        store,
        auth.record_activity(AccountId::new(999_999), t0).await,
        "account_id",
        "unknown account",
    );
    auth.record_login(agent1, plus(t0, 300))
        .await
        .on(store, "login");
    assert!(!high_risk(agent1).await, "[{be}] cleared by the next login");

    // Everything of the other account is untouched.
    assert_eq!(factors(agent2).await, (true, true, 2), "[{be}]");
    assert!(live(3).await && !high_risk(agent2).await, "[{be}]");

    // An officer's own request needs another officer.
    let r5 = auth
        .request_reset(agent2, ResetKind::All, officer, plus(t0, 400))
        .await
        .on(store, "request reset");
    assert_invalid(
        store,
        auth.decide_reset(r5.id, officer, true, plus(t0, 410)).await,
        "officer_id",
        "the requester",
    );
    // Nor from the requester's agency: four eyes means two
    // organisations, France Travail agencies included.
    assert_invalid(
        store,
        auth.decide_reset(r5.id, officer2, true, plus(t0, 410))
            .await,
        "officer_id",
        "an officer of the requester's agency",
    );
    store
        .upsert_organisations(vec![org(
            "FT-069",
            OrganisationKind::FranceTravail,
            "France Travail Lyon",
            Some("69"),
        )])
        .await
        .on(store, "second agency");
    let (_, refused) = store
        .upsert_accounts(vec![account(
            "ftl.officer",
            "FT-069",
            Role::Officer,
            Active,
            None,
            None,
        )])
        .await
        .on(store, "officer of another agency");
    assert!(refused.is_empty(), "[{be}] {refused:?}");
    let elsewhere = account_id(store, "ftl.officer").await;
    auth.decide_reset(r5.id, elsewhere, true, plus(t0, 410))
        .await
        .on(store, "approve")
        .unwrap_or_else(|| panic!("[{be}] approval"));
    assert_eq!(factors(agent2).await, (false, false, 0), "[{be}]");
    assert!(!live(3).await && high_risk(agent2).await, "[{be}]");

    assert_eq!(
        auth.decide_reset(999_999, officer, true, t0)
            .await
            .on(store, "unknown reset"),
        None,
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.request_reset(AccountId::new(999_999), ResetKind::All, boss, t0)
            .await,
        "account_id",
        "unknown account",
    );
    assert_invalid(
        store,
        auth.request_reset(agent1, ResetKind::All, AccountId::new(999_999), t0)
            .await,
        "requested_by",
        "unknown requester",
    );
}
both_backends!(approved_resets_remove_factors_end_sessions_and_flag_the_next_one);
