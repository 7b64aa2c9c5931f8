//! Several servers on one PostgreSQL: each opens its own ledger appender;
//! one integrates, the others stage. Any request may land on any of them.

use std::time::{Duration as StdDuration, Instant};

use rempart_ledger::{LeafRef, verify};
use rempart_server::Storage;

use super::*;

/// A replica of `app`'s server: its own process state, connections and
/// ledger appender, on the same databases, keys and public URL.
async fn replica(app: &TestApp) -> (String, Running, Arc<Ledger>) {
    replica_draining(app, StdDuration::ZERO).await
}

/// Same, keeping on serving for `grace` once told to stop.
async fn replica_draining(app: &TestApp, grace: StdDuration) -> (String, Running, Arc<Ledger>) {
    let (base, server, ledger, _) = replica_with(app, grace, test_guard_config()).await;
    (base, server, ledger)
}

/// Same, with its own guard configuration, and its consultation path.
async fn replica_with(
    app: &TestApp,
    grace: StdDuration,
    guard: GuardConfig,
) -> (String, Running, Arc<Ledger>, rempart_consult::Consultation) {
    let data = app._dir.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig::new(Storage {
        registry: RegistryAt::Postgres {
            url: app.pg_schemas[0].url.clone(),
            schema: app.pg_schemas[0].schema.clone(),
        },
        ledger: LedgerSource::Own {
            at: LedgerAt::Postgres(
                PgLedgerConfig::new(&app.pg_schemas[1].url).with_schema(&app.pg_schemas[1].schema),
            ),
            key: LedgerKeyFrom::Key(Box::new(LedgerKey::from_text(&app.ledger_key).unwrap())),
        },
        keys: KeySource::File(data.join("keys.json")),
    })
    .with_guard(GuardChoice::real(guard))
    .with_clock(app.clock.clock())
    .with_login(browser::login_settings(app.port))
    .with_api_clients(dpop::client_settings(app.port))
    .with_drain_grace(grace);
    let built = App::build(config).await.unwrap();
    let ledger = built.consultation().ledger().clone();
    let consultation = built.consultation().clone();
    let server = built.spawn(listener).unwrap();
    (
        format!("http://{}", server.addr),
        server,
        ledger,
        consultation,
    )
}

/// A guard refusal on a staging replica is answered without waiting for
/// its leaf's index; the alert, raised off the request path, still names
/// that leaf once integrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_replicas_guard_alert_names_its_integrated_leaf() {
    let app = spawn_app(Backend::Postgres).await;
    let mut strict = test_guard_config();
    strict.account.persons = rempart_guard::Limit {
        per_hour: 1,
        per_day: 10,
    };
    let (b, b_server, _, b_consult) = replica_with(&app, StdDuration::ZERO, strict).await;
    let (p, q) = (app.fresh_person(93), app.fresh_person(94));
    for person in [p, q] {
        app.mandate("T-FT", None, person, Purpose::FollowUp, today(), None)
            .await;
    }
    assert_eq!(read_at(&app, &b, "t.ft", p).await.0, 200);
    let (status, leaf) = read_at(&app, &b, "t.ft", q).await;
    assert_eq!(status, 429, "the second person is over a quota of one");
    assert!(leaf.is_none(), "a refusal names no leaf to the client");
    b_consult.finish_alerts().await;
    b_consult.guard().sync(app.clock.now()).await.unwrap();
    let alerts = app
        .guard
        .alerts(&AlertQuery {
            account_id: Some(app.account("t.ft").account_id),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let alert = alerts.last().expect("the quota's alert");
    let index = alert
        .alert
        .evidence
        .last_seq
        .expect("the alert names the refusal's leaf");
    let leaf = &app.leaves(index).await[0];
    assert_eq!(leaf.person, Some(q));
    assert!(!leaf.reveals_person_data());
    b_server.stop().await.unwrap();
    app.stop().await;
}

/// A consultation through `base`: its status and where its leaf is.
async fn read_at(app: &TestApp, base: &str, login: &str, p: PersonId) -> (u16, Option<LeafRef>) {
    let r = app
        .http
        .get(format!("{base}/api/v1/persons/{p}?purpose=follow_up"))
        .bearer_auth(app.token(login))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let leaf = match (
        body["ledger_index"].as_u64(),
        body["ledger_receipt"].as_u64(),
    ) {
        (Some(i), None) => Some(LeafRef::Index(i)),
        (None, Some(r)) => Some(LeafRef::Receipt(r)),
        (None, None) => None,
        (Some(_), Some(_)) => panic!("both an index and a receipt: {body}"),
    };
    (status, leaf)
}

/// Three replicas: reads spread over them all leave a leaf each, in the one
/// log (indices from the integrator, receipts from the others that resolve
/// to distinct indices); a mandate revoked through one is refused by the
/// others from the next request; when the integrating replica stops,
/// another takes over and the log still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgresql_share_one_ledger() {
    let mut app = spawn_app(Backend::Postgres).await;
    let (b, b_server, b_ledger) = replica(&app).await;
    let (c, c_server, c_ledger) = replica(&app).await;
    assert!(app.ledger.is_integrating());
    assert!(!b_ledger.is_integrating() && !c_ledger.is_integrating());
    let p = app.fresh_person(90);
    let mandate = app
        .mandate("T-FT", None, p, Purpose::FollowUp, today(), None)
        .await;
    let bases = [app.base.clone(), b.clone(), c.clone()];
    let mut leaves = Vec::new();
    for i in 0..30 {
        let base = &bases[i % 3];
        let (status, leaf) = read_at(&app, base, "t.ft", p).await;
        assert_eq!(status, 200, "through {base}");
        let leaf = leaf.unwrap();
        assert_eq!(matches!(leaf, LeafRef::Index(_)), i % 3 == 0, "{leaf:?}");
        leaves.push(leaf);
    }
    // Every answered read is in the log once, about the person read.
    let started = Instant::now();
    let mut indices = Vec::new();
    for leaf in &leaves {
        let index = app
            .ledger
            .index_of(*leaf, StdDuration::from_secs(10))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{leaf:?} not integrated"));
        indices.push(index);
    }
    println!(
        "30 reads over 3 replicas, all integrated {} ms after the last answer",
        started.elapsed().as_millis()
    );
    let mut distinct = indices.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), leaves.len());
    let stored = app.leaves(0).await;
    for index in &indices {
        let leaf = &stored[*index as usize];
        assert_eq!(leaf.person, Some(p));
        assert_eq!(leaf.action, LeafAction::ReadPerson);
        assert!(leaf.reveals_person_data());
    }

    // Revoked through the first replica: refused by the others at once.
    let (status, _) = app
        .delete("t.officer2", &format!("/api/v1/mandates/{mandate}"))
        .await;
    assert_eq!(status, 204);
    for base in [&b, &c] {
        assert_eq!(read_at(&app, base, "t.ft", p).await.0, 404, "{base}");
    }

    // The integrating replica stops: one of the others takes over.
    app.server.take().unwrap().stop().await.unwrap();
    let stopped = Instant::now();
    while !(b_ledger.is_integrating() || c_ledger.is_integrating()) {
        assert!(
            stopped.elapsed() < StdDuration::from_secs(10),
            "no takeover within 10 s"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    println!(
        "takeover {} ms after the integrator stopped",
        stopped.elapsed().as_millis()
    );
    let q = app.fresh_person(91);
    app.mandate("T-FT", None, q, Purpose::FollowUp, today(), None)
        .await;
    for base in [&b, &c] {
        let (status, leaf) = read_at(&app, base, "t.ft", q).await;
        assert_eq!(status, 200);
        let index = b_ledger
            .index_of(leaf.unwrap(), StdDuration::from_secs(10))
            .await
            .unwrap();
        assert!(index.is_some(), "{base}: not integrated after takeover");
    }
    b_server.stop().await.unwrap();
    c_server.stop().await.unwrap();
    assert_eq!(app.ledger_store.staged_backlog().await.unwrap(), 0);
    verify(&app.ledger_store, app.ledger.verifier())
        .await
        .unwrap();
}

/// `/livez` and `/readyz`; told to stop, a server is first not ready
/// (`draining`) while it still serves, for its grace period, then stops
/// accepting, its in-flight requests answered and ledgered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_drains_before_it_closes() {
    let app = spawn_app(Backend::Postgres).await;
    let (base, server, ledger) = replica_draining(&app, StdDuration::from_millis(1500)).await;
    // Only the server holds its appender, so that stopping closes it.
    drop(ledger);
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, body))
        }
    };
    assert_eq!(get("/livez").await.unwrap().0, 200);
    assert_eq!(
        get("/readyz").await.unwrap(),
        (200, json!({"status": "ready", "ledger": "staging"}))
    );
    let p = app.fresh_person(92);
    app.mandate("T-FT", None, p, Purpose::FollowUp, today(), None)
        .await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let (status, body) = get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "draining", "{body}");
    assert_eq!(get("/livez").await.unwrap().0, 200);
    // Still serving, and ledgering, while draining.
    let (status, leaf) = read_at(&app, &base, "t.ft", p).await;
    assert_eq!(status, 200);
    let index = app
        .ledger
        .index_of(leaf.unwrap(), StdDuration::from_secs(10))
        .await
        .unwrap();
    assert!(index.is_some());
    stopping.await.unwrap().unwrap();
    assert!(get("/livez").await.is_err(), "no longer accepting");
    app.stop().await;
}
