//! Sessions (read, touched, stepped up, ended), API clients and their
//! tokens, replay keys, the purge of what expired, and what a suspension
//! ends.

use super::*;
use futures_util::future::join_all;
use rempart_storage::{AccessTokenRow, ApiClientRow};

async fn sessions_are_read_touched_stepped_up_and_ended(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let record1 = store
        .account_by_id(agent1)
        .await
        .on(store, "account")
        .unwrap_or_else(|| panic!("[{be}] account"));
    let s1 = session_of(agent1, 1, "passkey", t0);
    auth.insert_session(s1.clone()).await.on(store, "insert");
    assert_eq!(
        auth.session(key32(1)).await.on(store, "session"),
        Some((s1.clone(), record1.clone())),
        "[{be}] read back with its account"
    );
    assert_eq!(
        auth.session(key32(99)).await.on(store, "no session"),
        None,
        "[{be}]"
    );
    for (s, field) in [
        (session_of(agent2, 1, "passkey", t0), "id_digest"),
        (
            session_of(AccountId::new(999_999), 9, "passkey", t0),
            "account_id",
        ),
        (session_of(agent1, 9, "password", t0), "method"),
        (
            StoredSession {
                jkt: "short".into(),
                ..session_of(agent1, 9, "oidc", t0)
            },
            "jkt",
        ),
        (
            StoredSession {
                idle_timeout_secs: 0,
                ..session_of(agent1, 9, "oidc", t0)
            },
            "idle_timeout_secs",
        ),
    ] {
        assert_invalid(store, auth.insert_session(s).await, field, "bad session");
    }

    // Activity moves forward only; step-up is recorded.
    auth.touch_session(key32(1), plus(t0, 600))
        .await
        .on(store, "touch");
    auth.touch_session(key32(1), plus(t0, 300))
        .await
        .on(store, "late touch");
    auth.mark_step_up(key32(1), plus(t0, 660))
        .await
        .on(store, "step-up");
    let (read, _) = auth
        .session(key32(1))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session"));
    assert_eq!(
        (read.last_seen_at, read.step_up_at),
        (plus(t0, 600), Some(plus(t0, 660))),
        "[{be}]"
    );
    assert!(read.is_live_at(plus(t0, 600 + 1799)), "[{be}]");
    assert!(
        !read.is_live_at(plus(t0, 600 + 1800)),
        "[{be}] idle timeout"
    );

    for (n, method) in [(2, "password_totp"), (3, "oidc")] {
        auth.insert_session(session_of(agent1, n, method, t0))
            .await
            .on(store, "insert");
    }
    auth.insert_session(session_of(agent2, 4, "passkey", t0))
        .await
        .on(store, "insert");

    // Ending one, then all of an account.
    let end = plus(t0, 720);
    assert!(
        auth.end_session(key32(1), end, "logout")
            .await
            .on(store, "end"),
        "[{be}]"
    );
    assert!(
        !auth
            .end_session(key32(1), plus(end, 1), "logout")
            .await
            .on(store, "end again"),
        "[{be}] already ended"
    );
    assert!(
        !auth
            .end_session(key32(99), end, "logout")
            .await
            .on(store, "end unknown"),
        "[{be}]"
    );
    auth.touch_session(key32(1), plus(end, 60))
        .await
        .on(store, "touch ended");
    auth.mark_step_up(key32(1), plus(end, 60))
        .await
        .on(store, "step-up ended");
    let (ended, _) = auth
        .session(key32(1))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session"));
    assert_eq!(
        (
            ended.ended_at,
            ended.end_reason.as_deref(),
            ended.last_seen_at,
            ended.step_up_at
        ),
        (
            Some(end),
            Some("logout"),
            plus(t0, 600),
            Some(plus(t0, 660))
        ),
        "[{be}] an ended session does not change"
    );
    assert!(!ended.is_live_at(plus(end, 1)), "[{be}]");
    assert_invalid(
        store,
        auth.end_session(key32(2), end, "Log out").await,
        "reason",
        "a malformed reason",
    );
    assert_eq!(
        auth.end_sessions_of_account(agent1, end, "suspended")
            .await
            .on(store, "end all"),
        2,
        "[{be}] the two live ones"
    );
    assert_eq!(
        auth.end_sessions_of_account(agent1, end, "suspended")
            .await
            .on(store, "end all again"),
        0,
        "[{be}]"
    );
    let (other, _) = auth
        .session(key32(4))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session"));
    assert_eq!(other.ended_at, None, "[{be}] other accounts untouched");
}
both_backends!(sessions_are_read_touched_stepped_up_and_ended);

async fn revoked_api_clients_lose_their_tokens(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    let record1 = store
        .account_by_id(agent1)
        .await
        .on(store, "account")
        .unwrap_or_else(|| panic!("[{be}] account"));
    let client = |id: &str, account_id: AccountId| ApiClientRow {
        client_id: id.into(),
        account_id,
        keys: r#"[{"kid":"k1","jwk":{"kty":"OKP","crv":"Ed25519","x":"c3ludGhldGlj"}}]"#.into(),
        created_at: t0,
        revoked_at: None,
    };
    let token = |n: u8, client_id: &str, account_id: AccountId| AccessTokenRow {
        digest: key32(n),
        client_id: client_id.into(),
        account_id,
        jkt: jkt(n),
        scope: "persons:read caseload:read".into(),
        issued_at: t0,
        expires_at: plus(t0, 300),
    };
    auth.insert_api_client(client("partner-app", agent1))
        .await
        .on(store, "client");
    auth.insert_api_client(client("partner-batch", agent1))
        .await
        .on(store, "client 2");
    for (c, field) in [
        (client("partner-app", agent2), "client_id"),
        (client("a b", agent1), "client_id"),
        (client("", agent1), "client_id"),
        (client("orphan", AccountId::new(999_999)), "account_id"),
    ] {
        assert_invalid(store, auth.insert_api_client(c).await, field, "bad client");
    }
    assert_eq!(
        auth.api_client("partner-app").await.on(store, "client"),
        Some((client("partner-app", agent1), record1.clone())),
        "[{be}]"
    );
    assert_eq!(
        auth.api_client("nobody").await.on(store, "client"),
        None,
        "[{be}]"
    );

    auth.insert_access_token(token(1, "partner-app", agent1))
        .await
        .on(store, "token");
    auth.insert_access_token(token(2, "partner-app", agent1))
        .await
        .on(store, "token 2");
    auth.insert_access_token(token(3, "partner-batch", agent1))
        .await
        .on(store, "token 3");
    assert_eq!(
        auth.access_token(key32(1)).await.on(store, "token"),
        Some((token(1, "partner-app", agent1), record1.clone())),
        "[{be}]"
    );
    for (t, field, what) in [
        (
            token(1, "partner-app", agent1),
            "digest",
            "a digest already stored",
        ),
        (
            token(9, "partner-app", agent2),
            "client_id",
            "another account",
        ),
        (token(9, "nobody", agent1), "client_id", "unknown client"),
        (
            AccessTokenRow {
                expires_at: t0,
                ..token(9, "partner-app", agent1)
            },
            "expires_at",
            "expiring when issued",
        ),
        (
            AccessTokenRow {
                jkt: "nope".into(),
                ..token(9, "partner-app", agent1)
            },
            "jkt",
            "a malformed thumbprint",
        ),
    ] {
        assert_invalid(store, auth.insert_access_token(t).await, field, what);
    }

    let revoked_at = plus(t0, 60);
    assert!(
        auth.revoke_api_client("partner-app", revoked_at)
            .await
            .on(store, "revoke"),
        "[{be}]"
    );
    assert!(
        !auth
            .revoke_api_client("partner-app", plus(revoked_at, 1))
            .await
            .on(store, "revoke again"),
        "[{be}] already revoked"
    );
    assert!(
        !auth
            .revoke_api_client("nobody", revoked_at)
            .await
            .on(store, "revoke unknown"),
        "[{be}]"
    );
    assert_eq!(
        auth.api_client("partner-app")
            .await
            .on(store, "client")
            .and_then(|(c, _)| c.revoked_at),
        Some(revoked_at),
        "[{be}] the client stays, revoked"
    );
    for n in [1, 2] {
        assert_eq!(
            auth.access_token(key32(n)).await.on(store, "token"),
            None,
            "[{be}] token {n} of the revoked client"
        );
    }
    assert_invalid(
        store,
        auth.insert_access_token(token(4, "partner-app", agent1))
            .await,
        "client_id",
        "a revoked client",
    );
    assert_eq!(
        auth.access_token(key32(3))
            .await
            .on(store, "token")
            .map(|(t, _)| t.client_id),
        Some("partner-batch".to_string()),
        "[{be}] another client of the account keeps its tokens"
    );

    // A reset of every factor revokes the account's remaining clients
    // at once, with their tokens; another account's are untouched.
    auth.insert_api_client(client("other-app", agent2))
        .await
        .on(store, "client of agent 2");
    assert_eq!(
        auth.revoke_api_clients_of_account(agent1, plus(revoked_at, 5))
            .await
            .on(store, "revoke all"),
        1,
        "[{be}] partner-batch only: partner-app was revoked already"
    );
    assert_eq!(
        auth.access_token(key32(3)).await.on(store, "token"),
        None,
        "[{be}] token of the client revoked with the account"
    );
    assert_eq!(
        auth.revoke_api_clients_of_account(agent1, plus(revoked_at, 6))
            .await
            .on(store, "revoke all again"),
        0,
        "[{be}]"
    );
    assert_eq!(
        auth.api_client("other-app")
            .await
            .on(store, "client")
            .and_then(|(c, _)| c.revoked_at),
        None,
        "[{be}] another account's client"
    );
}
both_backends!(revoked_api_clients_lose_their_tokens);

async fn replay_keys_admit_exactly_one_of_concurrent_inserts(backend: Backend) {
    let db = Db::open(backend).await;
    let now = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    let key = key32(7);
    let fresh = join_all((0..32).map(|_| auth.insert_replay_if_new(key, plus(now, 60), now)))
        .await
        .into_iter()
        .map(|r| r.on(store, "concurrent insert"))
        .filter(|&fresh| fresh)
        .count();
    assert_eq!(fresh, 1, "[{be}] 32 concurrent inserts of one key");
    assert!(
        !auth
            .insert_replay_if_new(key, plus(now, 90), plus(now, 59))
            .await
            .on(store, "replay"),
        "[{be}] live until its expiry"
    );
    assert!(
        auth.insert_replay_if_new(key, plus(now, 120), plus(now, 60))
            .await
            .on(store, "after expiry"),
        "[{be}] an expired key is taken over"
    );
    assert!(
        !auth
            .insert_replay_if_new(key, plus(now, 150), plus(now, 61))
            .await
            .on(store, "replay of the new one"),
        "[{be}] and its new expiry holds"
    );
    // The same race on a key that has expired: still one.
    let again =
        join_all((0..32).map(|_| auth.insert_replay_if_new(key, plus(now, 300), plus(now, 200))))
            .await
            .into_iter()
            .map(|r| r.on(store, "concurrent takeover"))
            .filter(|&fresh| fresh)
            .count();
    assert_eq!(again, 1, "[{be}] 32 concurrent takeovers of one key");
    assert!(
        auth.insert_replay_if_new(key32(8), plus(now, 60), now)
            .await
            .on(store, "other key"),
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.insert_replay_if_new(key32(9), now, now).await,
        "expires_at",
        "a key that protects nothing",
    );
}
both_backends!(replay_keys_admit_exactly_one_of_concurrent_inserts);

async fn purge_expired_counts_what_it_removes(backend: Backend) {
    let db = Db::open(backend).await;
    let now = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    // Expired: 2 ceremonies, 3 replay keys, 1 token. Live: one of each.
    for (n, expires) in [(1, -10), (2, 0), (3, 10)] {
        auth.put_ceremony(key32(n), "login_challenge", "{}", plus(now, expires))
            .await
            .on(store, "ceremony");
    }
    for (n, expires) in [(1, -60), (2, -1), (3, 0), (4, 60)] {
        assert!(
            auth.insert_replay_if_new(key32(n), plus(now, expires), plus(now, -120))
                .await
                .on(store, "replay key")
        );
    }
    auth.insert_api_client(ApiClientRow {
        client_id: "partner-app".into(),
        account_id: agent1,
        keys: "[]".into(),
        created_at: plus(now, -3600),
        revoked_at: None,
    })
    .await
    .on(store, "client");
    for (n, expires) in [(1, -1), (2, 300)] {
        auth.insert_access_token(AccessTokenRow {
            digest: key32(n),
            client_id: "partner-app".into(),
            account_id: agent1,
            jkt: jkt(n),
            scope: "persons:read".into(),
            issued_at: plus(now, -600),
            expires_at: plus(now, expires),
        })
        .await
        .on(store, "token");
    }
    let long_ago = plus(now, -30 * 86_400);
    assert_eq!(
        auth.purge_expired(now, long_ago, 1_000)
            .await
            .on(store, "purge")
            .total(),
        6,
        "[{be}]"
    );
    assert_eq!(
        auth.purge_expired(now, long_ago, 1_000)
            .await
            .on(store, "purge again")
            .total(),
        0,
        "[{be}]"
    );
    assert_eq!(
        auth.take_ceremony(key32(3), "login_challenge", now)
            .await
            .on(store, "live ceremony"),
        Some("{}".to_string()),
        "[{be}]"
    );
    assert!(
        !auth
            .insert_replay_if_new(key32(4), plus(now, 60), now)
            .await
            .on(store, "live key"),
        "[{be}]"
    );
    assert!(
        auth.access_token(key32(2))
            .await
            .on(store, "live token")
            .is_some(),
        "[{be}]"
    );
    assert!(
        auth.access_token(key32(1))
            .await
            .on(store, "purged token")
            .is_none(),
        "[{be}]"
    );
}
both_backends!(purge_expired_counts_what_it_removes);

impl Db {
    /// The first byte of each key stored in `table.column` (the tests'
    /// digests are [`key32`]), sorted: which rows are there, read in raw
    /// SQL since the interface shows no expired row.
    async fn keys_in(&self, table: &str, column: &str) -> Vec<u8> {
        let sql = format!("SELECT {column} FROM {table}");
        let keys: Vec<Vec<u8>> = match &self.place {
            Place::Sqlite(dir) => {
                let db =
                    rusqlite::Connection::open(dir.path().join(rempart_storage::sqlite::FILE_NAME))
                        .expect("raw sqlite");
                let mut stmt = db.prepare(&sql).expect("prepare");
                stmt.query_map([], |r| r.get(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            Place::Postgres(pg) => {
                let client = rempart_testdb::client(&pg.url).await;
                let sql = format!("SELECT {column} FROM \"{}\".{table}", pg.schema);
                client
                    .query(&sql, &[])
                    .await
                    .expect("rows")
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        };
        let mut firsts: Vec<u8> = keys.iter().map(|k| k[0]).collect();
        firsts.sort_unstable();
        firsts
    }
}

/// The purge does bounded work: at most `limit` rows per table and round,
/// only what expired (sessions: only those past the kept period), and the
/// rounds together delete exactly the expired rows, replay keys included.
async fn purge_is_bounded_and_takes_exactly_what_expired(backend: Backend) {
    let db = Db::open(backend).await;
    let now = at("2026-03-02T09:00:00Z");
    let kept_until = plus(now, -30 * 86_400);
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    // Ceremonies 1–5 expired (5 at `now` exactly), 6–7 live.
    for (n, expires) in [
        (1, -900),
        (2, -60),
        (3, -1),
        (4, -3600),
        (5, 0),
        (6, 1),
        (7, 300),
    ] {
        auth.put_ceremony(key32(n), "login_challenge", "{}", plus(now, expires))
            .await
            .on(store, "ceremony");
    }
    // Replay keys 1–5 expired, 6–7 live.
    for (n, expires) in [
        (1, -60),
        (2, -1),
        (3, 0),
        (4, -30),
        (5, -59),
        (6, 1),
        (7, 60),
    ] {
        assert!(
            auth.insert_replay_if_new(key32(n), plus(now, expires), plus(now, -120))
                .await
                .on(store, "replay key")
        );
    }
    auth.insert_api_client(ApiClientRow {
        client_id: "partner-app".into(),
        account_id: agent1,
        keys: "[]".into(),
        created_at: plus(now, -3600),
        revoked_at: None,
    })
    .await
    .on(store, "client");
    // Access tokens 1–3 expired, 4 live.
    for (n, expires) in [(1, -1), (2, 0), (3, -300), (4, 300)] {
        auth.insert_access_token(AccessTokenRow {
            digest: key32(n),
            client_id: "partner-app".into(),
            account_id: agent1,
            jkt: jkt(n),
            scope: "persons:read".into(),
            issued_at: plus(now, -600),
            expires_at: plus(now, expires),
        })
        .await
        .on(store, "token");
    }
    // Sessions 1–3 ended long ago (absolute expiry at or before the
    // kept period), 4 expired yesterday (kept), 5 live.
    for (n, login_secs_ago) in [
        (1, 40 * 86_400),
        (2, 31 * 86_400),
        (3, 30 * 86_400 + 10 * 3600),
        (4, 86_400),
        (5, 60),
    ] {
        auth.insert_session(session_of(agent1, n, "passkey", plus(now, -login_secs_ago)))
            .await
            .on(store, "session");
    }

    let rounds = [(2, 2, 2, 2), (2, 2, 1, 1), (1, 1, 0, 0), (0, 0, 0, 0)];
    for (i, (c, r, t, s)) in rounds.into_iter().enumerate() {
        let p = auth
            .purge_expired(now, kept_until, 2)
            .await
            .on(store, "bounded purge");
        assert_eq!(
            (p.ceremonies, p.replay_keys, p.access_tokens, p.sessions),
            (c, r, t, s),
            "[{be}] round {i}: at most 2 rows per table"
        );
        assert_eq!(p.full(2), i < 2, "[{be}] round {i}: more may be left");
    }
    assert_eq!(db.keys_in("ceremony", "id").await, [6, 7], "[{be}]");
    assert_eq!(
        db.keys_in("replay_key", "digest").await,
        [6, 7],
        "[{be}] expired replay keys went, live ones stay"
    );
    assert_eq!(db.keys_in("access_token", "digest").await, [4], "[{be}]");
    assert_eq!(
        db.keys_in("web_session", "id_digest").await,
        [4, 5],
        "[{be}] sessions are kept 30 days past their absolute expiry"
    );
    // The live replay key still refuses its replay.
    assert!(
        !auth
            .insert_replay_if_new(key32(7), plus(now, 60), now)
            .await
            .on(store, "live key"),
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.purge_expired(now, kept_until, 0).await,
        "limit",
        "a purge that deletes nothing",
    );
}
both_backends!(purge_is_bounded_and_takes_exactly_what_expired);

/// A suspension ends, in the same transaction, every session, API
/// credential, API client and access token of the account, and nothing of
/// another account; reactivation restores none of them; of concurrent
/// suspensions exactly one does it.
async fn suspension_ends_every_session_credential_and_token_of_the_account(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    let agent2 = account_id(store, "ce.agent2").await;
    for (n, account) in [(1, agent1), (2, agent1), (3, agent1), (4, agent2)] {
        auth.insert_session(session_of(account, n, "passkey", t0))
            .await
            .on(store, "session");
    }
    assert!(
        auth.end_session(key32(3), plus(t0, 10), "logout")
            .await
            .on(store, "logout"),
        "[{be}]"
    );
    let expires = plus(t0, 86_400);
    let c1 = store
        .insert_credential(agent1, key32(11), t0, expires)
        .await
        .on(store, "credential");
    let c2 = store
        .insert_credential(agent2, key32(12), t0, expires)
        .await
        .on(store, "credential");
    for (client, account) in [("app-1", agent1), ("app-2", agent2)] {
        auth.insert_api_client(ApiClientRow {
            client_id: client.into(),
            account_id: account,
            keys: "[]".into(),
            created_at: t0,
            revoked_at: None,
        })
        .await
        .on(store, "client");
    }
    for (n, client, account) in [
        (21, "app-1", agent1),
        (22, "app-1", agent1),
        (23, "app-2", agent2),
    ] {
        auth.insert_access_token(AccessTokenRow {
            digest: key32(n),
            client_id: client.into(),
            account_id: account,
            jkt: jkt(n),
            scope: "persons:read".into(),
            issued_at: t0,
            expires_at: plus(t0, 600),
        })
        .await
        .on(store, "token");
    }
    // Read once, so that the store keeps the checked credential.
    let kept = store.credential(c1).await.on(store, "credential");
    assert!(kept.is_some_and(|(c, _)| c.revoked_at.is_none()), "[{be}]");

    let at1 = plus(t0, 60);
    let raced = join_all((0..8).map(|_| auth.suspend_account(agent1, at1, "suspension"))).await;
    let done: Vec<_> = raced
        .into_iter()
        .filter_map(|r| r.on(store, "suspend"))
        .collect();
    assert_eq!(
        done,
        [rempart_storage::Suspension {
            sessions: 2,
            credentials: 1,
            api_clients: 1,
            access_tokens: 2,
        }],
        "[{be}] 8 concurrent suspensions: one ends everything"
    );
    let account = store
        .account_by_id(agent1)
        .await
        .on(store, "account")
        .unwrap_or_else(|| panic!("[{be}] account"));
    assert_eq!(account.state, AccountState::Suspended, "[{be}]");
    for n in [1, 2] {
        let (s, _) = auth
            .session(key32(n))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session {n}"));
        assert_eq!(
            (s.ended_at, s.end_reason.as_deref()),
            (Some(at1), Some("suspension")),
            "[{be}] session {n}"
        );
    }
    let (logged_out, _) = auth
        .session(key32(3))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session 3"));
    assert_eq!(
        logged_out.end_reason.as_deref(),
        Some("logout"),
        "[{be}] an ended session keeps its reason"
    );
    let revoked = store.credential(c1).await.on(store, "credential");
    assert_eq!(
        revoked.map(|(c, _)| c.revoked_at),
        Some(Some(at1)),
        "[{be}] the kept copy is not used after the change"
    );
    for n in [21, 22] {
        assert!(
            auth.access_token(key32(n))
                .await
                .on(store, "token")
                .is_none(),
            "[{be}] token {n}"
        );
    }
    let (client, _) = auth
        .api_client("app-1")
        .await
        .on(store, "client")
        .unwrap_or_else(|| panic!("[{be}] client"));
    assert_eq!(client.revoked_at, Some(at1), "[{be}]");

    // Another account is untouched.
    let (other, _) = auth
        .session(key32(4))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session 4"));
    assert_eq!(other.ended_at, None, "[{be}]");
    assert!(
        store
            .credential(c2)
            .await
            .on(store, "credential")
            .is_some_and(|(c, _)| c.revoked_at.is_none()),
        "[{be}]"
    );
    assert!(
        auth.access_token(key32(23))
            .await
            .on(store, "token")
            .is_some(),
        "[{be}]"
    );

    // Not active any more: nothing to suspend, nothing changes.
    assert_eq!(
        auth.suspend_account(agent1, plus(t0, 120), "suspension")
            .await
            .on(store, "suspend again"),
        None,
        "[{be}]"
    );
    assert_eq!(
        auth.suspend_account(AccountId::new(999_999), plus(t0, 120), "suspension")
            .await
            .on(store, "suspend unknown"),
        None,
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.suspend_account(agent2, plus(t0, 120), "Suspended")
            .await,
        "reason",
        "a malformed reason",
    );

    // Reactivation restores the state alone.
    assert!(
        store
            .set_account_state(agent1, AccountState::Active)
            .await
            .on(store, "reactivate"),
        "[{be}]"
    );
    let (s, _) = auth
        .session(key32(1))
        .await
        .on(store, "session")
        .unwrap_or_else(|| panic!("[{be}] session"));
    assert!(!s.is_live_at(plus(t0, 180)), "[{be}] no session comes back");
    assert!(
        store
            .credential(c1)
            .await
            .on(store, "credential")
            .is_some_and(|(c, _)| c.revoked_at.is_some()),
        "[{be}] no credential comes back"
    );
    assert!(
        auth.access_token(key32(21))
            .await
            .on(store, "token")
            .is_none(),
        "[{be}] no token comes back"
    );
}
both_backends!(suspension_ends_every_session_credential_and_token_of_the_account);

/// No session opens for an account that is not active, and a login
/// racing a suspension never leaves a live session behind: the insert
/// waits for the suspension under way and either comes before it (and is
/// ended by it) or is refused.
async fn no_session_outlives_a_suspension_it_raced(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    // Suspended (the only way out of active a registry write may take
    // besides the inactivity job): no session opens.
    assert!(
        store
            .set_account_state(agent1, AccountState::Suspended)
            .await
            .on(store, "state"),
        "[{be}]"
    );
    assert_invalid(
        store,
        auth.insert_session(session_of(agent1, 1, "passkey", t0))
            .await,
        "account_id",
        "a session for an inactive account",
    );
    for round in 0..20u8 {
        assert!(
            store
                .set_account_state(agent1, AccountState::Active)
                .await
                .on(store, "reactivate"),
            "[{be}]"
        );
        let n = 100 + round;
        let (inserted, suspended) = tokio::join!(
            auth.insert_session(session_of(agent1, n, "password_totp", t0)),
            auth.suspend_account(agent1, plus(t0, 1), "suspension"),
        );
        assert!(
            suspended.on(store, "suspend").is_some(),
            "[{be}] round {round}"
        );
        match inserted {
            Ok(()) => {}
            Err(
                StorageError::NotFound {
                    field: "account_id",
                    ..
                }
                | StorageError::Refused {
                    field: "account_id",
                    ..
                },
            ) => continue,
            Err(e) => panic!("[{be}] round {round}: {e}"),
        }
        let (row, _) = auth
            .session(key32(n))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"));
        assert_eq!(
            row.end_reason.as_deref(),
            Some("suspension"),
            "[{be}] round {round}: a session inserted before the suspension is ended by it"
        );
    }
}
both_backends!(no_session_outlives_a_suspension_it_raced);

/// A session's idle clock moves only while its account is active: polling
/// a suspended account's session extends nothing, in one statement.
async fn a_suspended_account_never_touches_its_sessions(backend: Backend) {
    let db = Db::open(backend).await;
    let t0 = at("2026-03-02T09:00:00Z");
    let (store, auth) = (db.store(), db.auth());
    let be = store.backend();
    consultation_accounts(store).await;
    let agent1 = account_id(store, "ce.agent1").await;
    auth.insert_session(session_of(agent1, 1, "passkey", t0))
        .await
        .on(store, "session");
    let last_seen = || async {
        auth.session(key32(1))
            .await
            .on(store, "session")
            .unwrap_or_else(|| panic!("[{be}] session"))
            .0
            .last_seen_at
    };
    auth.touch_session(key32(1), plus(t0, 600))
        .await
        .on(store, "touch");
    assert_eq!(last_seen().await, plus(t0, 600), "[{be}]");
    // Suspended by the registry alone (as an import or a tool could).
    assert!(
        store
            .set_account_state(agent1, AccountState::Suspended)
            .await
            .on(store, "state"),
        "[{be}]"
    );
    for secs in [1_200, 1_500, 1_790] {
        auth.touch_session(key32(1), plus(t0, secs))
            .await
            .on(store, "polling");
    }
    assert_eq!(
        last_seen().await,
        plus(t0, 600),
        "[{be}] suspended: polling moves nothing"
    );
    assert!(
        store
            .set_account_state(agent1, AccountState::Active)
            .await
            .on(store, "reactivate"),
        "[{be}]"
    );
    auth.touch_session(key32(1), plus(t0, 1_799))
        .await
        .on(store, "touch");
    assert_eq!(last_seen().await, plus(t0, 1_799), "[{be}] active again");
}
both_backends!(a_suspended_account_never_touches_its_sessions);
