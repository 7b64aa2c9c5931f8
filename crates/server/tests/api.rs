//! The API over real HTTP, on SQLite and on PostgreSQL: a real server on
//! port 0 (`spawn_app`), built by `App::build` as every command builds it,
//! a generated population imported through the real import, real keys,
//! real Cedar policies, the real guard and a real ledger. Each scenario
//! runs on both backends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, NaiveDate, Utc};
use rempart_crypto::KeyRing;
use rempart_domain::{
    Account, AccountId, AccountState, FieldGroup, MandateId, Organisation, OrganisationId,
    OrganisationKind, PersonId, Purpose, Reference, Role,
};
use rempart_guard::store::AlertQuery;
use rempart_guard::{Guard, GuardConfig, Verdict};
use rempart_ledger::store::postgres::PgLedgerConfig;
use rempart_ledger::{Action as LeafAction, AuditLeaf, Decision, Ledger, LedgerKey, LedgerStore};
use rempart_server::{
    App, GuardChoice, LedgerAt, LedgerKeyFrom, LedgerSource, RegistryAt, Running, ServerConfig,
    Storage,
};
use rempart_storage::{AccountRecord, AuthStore, NewMandate, Store, Stores};
use rempart_testdb::TestSchema;
use rempart_vault::{KeySource, Read, Vault};
use serde_json::{Value, json};

#[path = "api/activation.rs"]
mod activation;
#[path = "api/browser.rs"]
mod browser;
#[path = "api/dpop.rs"]
mod dpop;
#[path = "api/federation.rs"]
mod federation;
#[path = "api/replicas.rs"]
mod replicas;

/// A real HAProxy in front of the replicas ([`Backend::Balanced`]).
mod balancer {
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The balancer's process, killed when dropped.
    pub(super) struct Haproxy {
        child: Child,
        _dir: tempfile::TempDir,
    }

    /// A free local address for the balancer to bind.
    pub(super) fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    impl Haproxy {
        /// Starts HAProxy on `addr`, every request to the next of `ports`
        /// (round-robin, the readiness check as in README), and waits until
        /// it answers.
        pub(super) async fn start(addr: SocketAddr, ports: &[u16]) -> Haproxy {
            let dir = tempfile::tempdir().unwrap();
            let mut config = format!(
                "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n\
                 \x20   timeout server 30s\n    retries 2\n    option redispatch\n\
                 \x20   retry-on conn-failure\n\
                 frontend rempart\n    bind {addr}\n    option forwardfor\n\
                 \x20   default_backend replicas\n\
                 backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n\
                 \x20   http-check expect status 200\n    default-server inter 500ms fall 2 rise 2\n"
            );
            for (i, p) in ports.iter().enumerate() {
                config.push_str(&format!("    server r{i} 127.0.0.1:{p} check\n"));
            }
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, config).unwrap();
            let child = Command::new("/usr/sbin/haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("haproxy (Debian's package) is needed by the balanced tests");
            let h = Haproxy { child, _dir: dir };
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let started = Instant::now();
            loop {
                let ready = http
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    return h;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the balancer on {addr} did not answer within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Haproxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const PERSONS: u64 = 3_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL, three replicas behind a real HAProxy balancing every
    /// request round-robin: `base` and the public URL are the balancer's.
    Balanced,
}

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// The browser and API-client scenarios also run through the balancer:
/// whatever replica a request lands on, they must pass as on one server.
const WITH_BALANCER: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Balanced];

/// Replicas behind the balancer ([`Backend::Balanced`]), the first being
/// the app's own server.
const REPLICAS: usize = 3;

/// A running server and everything a test needs to check it from outside.
struct TestApp {
    base: String,
    http: reqwest::Client,
    store: Store,
    /// The authentication store on the same database.
    auth: Arc<dyn AuthStore>,
    vault: Vault,
    ledger_store: Arc<dyn LedgerStore>,
    /// Raw SQL on the backend holding the ledger, for fault injection.
    ledger_sql: LedgerSql,
    /// The server, built by `App::build` as every command builds it.
    server: Option<Running>,
    /// The ledger's writer, shared by a second instance (mod dpop).
    ledger: Arc<Ledger>,
    /// The ledger's signing key, as text: replicas sign with it when they
    /// integrate (mod replicas).
    ledger_key: String,
    _dir: tempfile::TempDir,
    /// The PostgreSQL schemas (registry, ledger), dropped with the app.
    pg_schemas: Vec<TestSchema>,
    /// The test's own organisations and accounts.
    orgs: HashMap<&'static str, OrganisationId>,
    accounts: HashMap<&'static str, AccountRecord>,
    tokens: HashMap<&'static str, String>,
    /// Persons stored, by id.
    person_ids: Vec<PersonId>,
    /// Browser login (mod browser): the port and the server's clock.
    port: u16,
    clock: browser::TestClock,
    /// The server's guard (real, over the real stores), for its alerts.
    guard: Guard,
    /// With [`Backend::Balanced`]: the other replicas, and the balancer.
    replicas: Vec<(Running, Guard)>,
    /// Every replica's consultation path (the first is the app's own), for
    /// the alerts they raise off the request path.
    consultations: Vec<rempart_consult::Consultation>,
    _balancer: Option<balancer::Haproxy>,
}

enum LedgerSql {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default() % 1_000_000_000_000
    )
}

async fn pg_exec(sql: &str) {
    let client = rempart_testdb::client(&rempart_testdb::url()).await;
    client.batch_execute(sql).await.expect(sql);
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// The test's organisations: one of each kind, plus a second Cap emploi.
const ORGS: &[(&str, OrganisationKind)] = &[
    ("T-FT", OrganisationKind::FranceTravail),
    ("T-CE1", OrganisationKind::CapEmploi),
    ("T-CE2", OrganisationKind::CapEmploi),
    ("T-ML", OrganisationKind::MissionLocale),
    ("T-TP", OrganisationKind::TrainingProvider),
    ("T-PR", OrganisationKind::Processor),
];

/// The test's accounts: (login, organisation, role).
const ACCOUNTS: &[(&str, &str, Role)] = &[
    ("t.officer", "T-FT", Role::Officer),
    ("t.officer2", "T-FT", Role::Officer),
    ("t.ft", "T-FT", Role::Agent),
    ("t.ce1", "T-CE1", Role::Agent),
    ("t.ce1b", "T-CE1", Role::Agent),
    ("t.ce2", "T-CE2", Role::Agent),
    ("t.ml", "T-ML", Role::Agent),
    ("t.tp", "T-TP", Role::Agent),
    ("t.pr", "T-PR", Role::Agent),
    ("t.mlm", "T-ML", Role::Manager),
    ("t.ftm", "T-FT", Role::Manager),
    ("t.sec", "T-FT", Role::Security),
    ("t.dpo", "T-FT", Role::Dpo),
];

/// The guard every test runs behind: the real one, over the real stores,
/// with the production defaults except the off-hours feature, whose weight
/// is 0 here because these tests run at whatever hour CI starts them; it
/// is tested on a fixed clock in the guard's own tests.
fn test_guard_config() -> GuardConfig {
    let mut c = GuardConfig::default();
    c.scoring.weights.off_hours = 0.0;
    c
}

async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, test_guard_config()).await
}

async fn spawn_app_with(backend: Backend, guard_config: GuardConfig) -> TestApp {
    spawn_app_full(backend, guard_config, false).await
}

/// With `federated`, the server also offers federated login through the
/// binary's shared OpenID provider (mod federation), as a client
/// registered for this server's own redirect URI.
async fn spawn_app_full(backend: Backend, guard_config: GuardConfig, federated: bool) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let csv = dir.path().join("csv");
    let today = Utc::now().date_naive();
    rempart_synth::generate(
        &rempart_synth::GenerateOptions {
            persons: PERSONS,
            seed: 7,
            today,
        },
        &csv,
        &|_| {},
    )
    .unwrap();
    let keys = data.join("keys.json");
    KeyRing::generate().unwrap().save_new(&keys).unwrap();

    let mut pg_schemas = Vec::new();
    let (registry, ledger_at, ledger_sql) = match backend {
        Backend::Sqlite => (
            RegistryAt::Sqlite(data.clone()),
            LedgerAt::Sqlite(data.clone()),
            LedgerSql::Sqlite(data.join("ledger.db")),
        ),
        Backend::Postgres | Backend::Balanced => {
            let (registry, ledger) = (TestSchema::new("web_reg"), TestSchema::new("web_led"));
            let at = (
                RegistryAt::Postgres {
                    url: registry.url.clone(),
                    schema: registry.schema.clone(),
                },
                LedgerAt::Postgres(PgLedgerConfig::new(&ledger.url).with_schema(&ledger.schema)),
                LedgerSql::Postgres(ledger.schema.clone()),
            );
            pg_schemas.push(registry);
            pg_schemas.push(ledger);
            at
        }
    };
    // Browser login and API clients name the server's address: bound
    // first, port 0.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own_addr: SocketAddr = listener.local_addr().unwrap();
    // Behind the balancer, the public address is the balancer's.
    let addr = match backend {
        Backend::Balanced => balancer::free_addr(),
        _ => own_addr,
    };
    // The server's clock: the tests move it (mod browser).
    let clock = browser::TestClock::default();
    let ledger_key = LedgerKey::generate("rempart.test/ledger")
        .unwrap()
        .signer()
        .to_text()
        .to_string();
    // Every replica gets the same configuration but its guard instance
    // (federated login is tested on one server).
    assert!(!(federated && backend == Backend::Balanced));
    let config_of = |instance: i64| {
        let mut config = ServerConfig::new(Storage {
            registry: registry.clone(),
            ledger: LedgerSource::Own {
                at: ledger_at.clone(),
                key: LedgerKeyFrom::Key(Box::new(LedgerKey::from_text(&ledger_key).unwrap())),
            },
            keys: KeySource::File(keys.clone()),
        })
        .with_guard(GuardChoice::real(guard_config))
        .with_clock(clock.clock())
        .with_login(browser::login_settings(addr.port()))
        .with_api_clients(dpop::client_settings(addr.port()));
        config.guard_instance = instance;
        // The balancer names the client (its `option forwardfor`); on one
        // server, tests play a proxy from 127.0.0.1 (mod browser). Clients
        // of other 127.x addresses are their own peers.
        config.trusted_proxies = rempart_web::TrustedProxies::new(vec![
            rempart_web::TrustedProxies::parse_one("127.0.0.1").unwrap(),
        ]);
        config
    };
    let mut config = config_of(1);
    if federated {
        config.federation = Some(federation::for_server(addr.port()).await);
    }
    // The production wiring: stores, keys, ledger, policies, the real
    // guard with its sync task on the server's clock.
    let built = App::build(config).await.unwrap();
    let stores: Stores = built.stores().clone();
    let store: Store = stores.registry.clone();
    let vault = built.consultation().vault().clone();
    let ledger = built.consultation().ledger().clone();
    let ledger_store = built.ledger_store().clone();
    let guard = built.consultation().guard().clone();
    let mut consultations = vec![built.consultation().clone()];

    let opts = rempart_import::ImportOptions::new(today);
    let rejects = rempart_import::RejectSink::in_memory();
    rempart_import::import(&vault, &[csv], &opts, &rejects, &rempart_import::Silent)
        .await
        .unwrap();
    assert_eq!(rejects.count(), 0);

    // The test's own organisations and accounts, beside the generated ones.
    store
        .upsert_organisations(
            ORGS.iter()
                .map(|(code, kind)| Organisation {
                    code: r(code),
                    kind: *kind,
                    name: format!("Test {code}"),
                    departement: Some("38".into()),
                })
                .collect(),
        )
        .await
        .unwrap();
    let mut officers = Vec::new();
    let mut others = Vec::new();
    for (login, org, role) in ACCOUNTS {
        let a = Account {
            login: r(login),
            organisation: r(org),
            role: *role,
            state: AccountState::Active,
            requested_by: None,
            approved_by: None,
        };
        if *role == Role::Officer {
            officers.push(a);
        } else {
            others.push(a);
        }
    }
    let (_, refused) = store.upsert_accounts(officers).await.unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    for a in &mut others {
        a.approved_by = Some(r(if a.organisation.as_str() == "T-FT" {
            "t.officer2"
        } else {
            "t.officer"
        }));
    }
    let (_, refused) = store.upsert_accounts(others).await.unwrap();
    assert!(refused.is_empty(), "{refused:?}");

    let mut orgs = HashMap::new();
    for (id, o) in store.organisations().await.unwrap() {
        if let Some((code, _)) = ORGS.iter().find(|(c, _)| *c == o.code.as_str()) {
            orgs.insert(*code, id);
        }
    }
    let mut accounts = HashMap::new();
    let mut tokens = HashMap::new();
    for (login, _, _) in ACCOUNTS {
        let a = store.account_by_login(&r(login)).await.unwrap().unwrap();
        let issued = rempart_consult::authenticate::issue(
            &store,
            a.account_id,
            Duration::days(1),
            Utc::now(),
        )
        .await
        .unwrap();
        tokens.insert(*login, issued.token.as_str().to_string());
        accounts.insert(*login, a);
    }
    let person_ids = store
        .person_ids(PersonId::UNKNOWN, 1_000_000)
        .await
        .unwrap();
    assert_eq!(person_ids.len() as u64, PERSONS);

    let server = built.spawn(listener).unwrap();
    let mut replicas = Vec::new();
    let mut balancer = None;
    if backend == Backend::Balanced {
        let mut ports = vec![own_addr.port()];
        for instance in 2..=REPLICAS as i64 {
            let built = App::build(config_of(instance)).await.unwrap();
            let guard = built.consultation().guard().clone();
            consultations.push(built.consultation().clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running = built.spawn(listener).unwrap();
            ports.push(running.addr.port());
            replicas.push((running, guard));
        }
        balancer = Some(balancer::Haproxy::start(addr, &ports).await);
        // Every replica has announced itself to the others' guards.
        for g in std::iter::once(&guard).chain(replicas.iter().map(|(_, g)| g)) {
            g.sync(clock.now()).await.unwrap();
        }
    }
    TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        store,
        auth: stores.auth,
        vault,
        ledger_store,
        ledger_sql,
        server: Some(server),
        ledger,
        ledger_key,
        _dir: dir,
        pg_schemas,
        orgs,
        accounts,
        tokens,
        person_ids,
        port: addr.port(),
        clock,
        guard,
        replicas,
        consultations,
        _balancer: balancer,
    }
}

impl TestApp {
    /// Stops the servers (graceful); the PostgreSQL schemas go with the app.
    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        for (server, _) in self.replicas.drain(..) {
            server.stop().await.unwrap();
        }
    }

    /// Moves the servers' clock forward, then syncs the guards at the new
    /// instant: the guard refuses attempts too far past its last sync.
    async fn advance(&self, secs: i64) {
        self.clock.advance(secs);
        self.sync_guards().await;
    }

    /// Syncs every replica's guard now: what each counted and the alerts
    /// it raised are in the store.
    async fn sync_guards(&self) {
        for c in &self.consultations {
            c.finish_alerts().await;
        }
        for g in std::iter::once(&self.guard).chain(self.replicas.iter().map(|(_, g)| g)) {
            g.sync(self.clock.now()).await.unwrap();
        }
    }

    fn token(&self, login: &str) -> &str {
        &self.tokens[login]
    }

    fn org(&self, code: &str) -> OrganisationId {
        self.orgs[code]
    }

    fn account(&self, login: &str) -> &AccountRecord {
        &self.accounts[login]
    }

    async fn get(&self, login: Option<&str>, path: &str) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(l) = login {
            req = req.bearer_auth(self.token(l));
        }
        answer(req.send().await.unwrap()).await
    }

    async fn post(&self, login: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(l) = login {
            req = req.bearer_auth(self.token(l));
        }
        answer(req.send().await.unwrap()).await
    }

    async fn delete(&self, login: &str, path: &str) -> (u16, Value) {
        let req = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(self.token(login));
        answer(req.send().await.unwrap()).await
    }

    async fn read(&self, login: &str, person: PersonId, purpose: &str) -> (u16, Value) {
        self.get(
            Some(login),
            &format!("/api/v1/persons/{person}?purpose={purpose}"),
        )
        .await
    }

    /// A mandate written straight into the store (as an import would).
    async fn mandate(
        &self,
        org: &str,
        account: Option<&str>,
        person: PersonId,
        purpose: Purpose,
        from: NaiveDate,
        to: Option<NaiveDate>,
    ) -> MandateId {
        self.store
            .grant_mandate(NewMandate {
                reference: r(&unique("TM")),
                organisation_id: self.org(org),
                account_id: account.map(|a| self.account(a).account_id),
                person_id: person,
                purpose,
                valid_from: from,
                valid_to: to,
                source: r("test"),
            })
            .await
            .unwrap()
            .id
    }

    /// The ledger's size once every leaf the replicas staged is in it
    /// (the leaves of requests already answered, wherever they landed).
    async fn ledger_size(&self) -> u64 {
        let started = std::time::Instant::now();
        while self.ledger_store.staged_backlog().await.unwrap() > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "staged leaves not integrated within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.ledger_store.size().await.unwrap()
    }

    async fn leaves(&self, from: u64) -> Vec<AuditLeaf> {
        let size = self.ledger_size().await;
        let rows = self
            .ledger_store
            .leaves(from, (size - from) as usize)
            .await
            .unwrap();
        rows.iter()
            .map(|r| AuditLeaf::decode(&r.data).unwrap())
            .collect()
    }

    /// Persons with no mandate at all from the test's organisations: the
    /// generated population's mandates name generated organisations only.
    fn fresh_person(&self, n: usize) -> PersonId {
        self.person_ids[n]
    }

    /// Rows of a registry table, read in raw SQL (the interfaces never
    /// show an expired row).
    async fn registry_rows(&self, table: &str) -> i64 {
        match self.pg_schemas.first() {
            Some(TestSchema { url, schema }) => {
                let client = rempart_testdb::client(url).await;
                client
                    .query_one(&format!("SELECT count(*) FROM {schema}.{table}"), &[])
                    .await
                    .unwrap()
                    .get(0)
            }
            None => {
                let path = self
                    ._dir
                    .path()
                    .join("data")
                    .join(rempart_storage::sqlite::FILE_NAME);
                let c = rusqlite::Connection::open(path).unwrap();
                c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap()
            }
        }
    }
}

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, body)
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(keys(body), vec!["error"], "{body}");
    assert_eq!(
        keys(&body["error"]),
        vec!["code", "field", "message"],
        "{body}"
    );
    assert_eq!(body["error"]["code"], code, "{body}");
}

// ---------------------------------------------------------------------------

/// Every instant comes from the server's clock, `whoami` included: once
/// the server's clock is past a credential's expiry, `GET /api/v1/me`
/// refuses it, as every other operation does (it used to read the system
/// clock and answer 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_reads_the_servers_clock() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let (s, body) = app.get(Some("t.ce1"), "/api/v1/me").await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        // Test credentials last one day: two days later on the server's clock.
        app.advance(2 * 86_400).await;
        let (s, body) = app.get(Some("t.ce1"), "/api/v1/me").await;
        assert_eq!(s, 401, "{backend:?}: {body}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_caseload_reads_return_exactly_the_purpose_groups() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let p = app.fresh_person(10);
        let stored = match app.vault.read(p, FieldGroup::ALL).await.unwrap() {
            Read::Found(v) => v,
            other => panic!("{other:?}"),
        };
        let nir = stored.nir.as_ref().unwrap().as_str().to_string();
        let day = today();
        for (org, _login, purpose) in [
            ("T-FT", "t.ft", Purpose::FollowUp),
            ("T-FT", "t.ft", Purpose::Compensation),
            ("T-CE1", "t.ce1", Purpose::FollowUp),
            ("T-ML", "t.ml", Purpose::FollowUp),
            ("T-TP", "t.tp", Purpose::Training),
            ("T-PR", "t.pr", Purpose::DocumentProcessing),
        ] {
            app.mandate(org, None, p, purpose, day, None).await;
        }
        // (login, purpose, expected groups, expected NIR view)
        let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
            (
                "t.ft",
                "follow_up",
                &["identity", "contact", "nir", "status"],
                Some("clear"),
            ),
            (
                "t.ft",
                "compensation",
                &["identity", "nir", "status"],
                Some("clear"),
            ),
            (
                "t.ce1",
                "follow_up",
                &["identity", "contact", "nir", "status"],
                Some("masked"),
            ),
            (
                "t.ml",
                "follow_up",
                &["identity", "contact", "nir", "status"],
                Some("masked"),
            ),
            ("t.tp", "training", &["identity", "contact"], None),
            ("t.pr", "document_processing", &["nir"], Some("token")),
        ];
        for (login, purpose, groups, nir_view) in cases {
            let before = app.ledger_size().await;
            let (status, body) = app.read(login, p, purpose).await;
            assert_eq!(status, 200, "{backend:?} {login} {purpose}: {body}");
            let expected: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            assert_eq!(body["field_groups"], json!(expected), "{login} {purpose}");
            let mut want = vec!["field_groups", "id", "ledger_index", "purpose"];
            want.extend(groups.iter().copied());
            want.sort();
            assert_eq!(keys(&body), want, "{login} {purpose}: exactly these keys");
            match nir_view {
                Some(view) => {
                    assert_eq!(body["nir"]["view"], *view);
                    let shown = body["nir"]["value"].as_str().unwrap();
                    if *view == "clear" {
                        assert_eq!(shown, nir);
                    } else {
                        // A partner never gets the NIR in clear.
                        assert_ne!(shown, nir);
                        assert!(!shown.replace(' ', "").contains(&nir[5..13]));
                    }
                }
                None => assert!(body.get("nir").is_none()),
            }
            if groups.contains(&"identity") {
                assert_eq!(
                    body["identity"]["nom"],
                    stored.identity.as_ref().unwrap().nom.as_str()
                );
            }
            // Ledgered before the answer, with the groups shown.
            let index = body["ledger_index"].as_u64().unwrap();
            assert!(index >= before);
            let leaf = app.leaves(index).await.remove(0);
            assert_eq!(leaf.action, LeafAction::ReadPerson);
            assert_eq!(leaf.decision, Decision::Allow);
            assert_eq!(leaf.account, app.account(login).account_id);
            assert_eq!(leaf.person, Some(p));
            let shown: Vec<&str> = leaf.field_groups.iter().map(|g| g.as_str()).collect();
            assert_eq!(&shown, groups);
            // With the NIR's view as shown, which breach scoping reads.
            let recorded = leaf.field_groups.nir_view().map(|v| v.as_str());
            assert_eq!(recorded, *nir_view, "{login} {purpose}");
        }
        // Tokens are stable per processor and differ from the clear NIR.
        let (_, a) = app.read("t.pr", p, "document_processing").await;
        let (_, b) = app.read("t.pr", p, "document_processing").await;
        assert_eq!(a["nir"]["value"], b["nir"]["value"]);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_caseload_expired_revoked_and_missing_look_the_same_and_are_ledgered() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let day = today();
        let other_org = app.fresh_person(20);
        let expired = app.fresh_person(21);
        let future = app.fresh_person(22);
        let revoked = app.fresh_person(23);
        let other_account = app.fresh_person(24);
        let wrong_purpose = app.fresh_person(25);
        let mine = app.fresh_person(26);
        app.mandate("T-CE2", None, other_org, Purpose::FollowUp, day, None)
            .await;
        app.mandate(
            "T-CE1",
            None,
            expired,
            Purpose::FollowUp,
            day - Duration::days(30),
            Some(day),
        )
        .await;
        app.mandate(
            "T-CE1",
            None,
            future,
            Purpose::FollowUp,
            day + Duration::days(1),
            None,
        )
        .await;
        let revoked_mandate = app
            .mandate("T-CE1", None, revoked, Purpose::FollowUp, day, None)
            .await;
        app.mandate(
            "T-CE1",
            Some("t.ce1b"),
            other_account,
            Purpose::FollowUp,
            day,
            None,
        )
        .await;
        app.mandate("T-CE1", None, wrong_purpose, Purpose::Training, day, None)
            .await;
        app.mandate("T-CE1", None, mine, Purpose::FollowUp, day, None)
            .await;

        assert_eq!(app.read("t.ce1", revoked, "follow_up").await.0, 200);
        let (status, _) = app
            .delete("t.officer", &format!("/api/v1/mandates/{revoked_mandate}"))
            .await;
        assert_eq!(status, 204);

        let missing = PersonId::new(i64::MAX - 1);
        let before = app.ledger_size().await;
        let mut answers = Vec::new();
        for p in [
            missing,
            other_org,
            expired,
            future,
            revoked,
            other_account,
            wrong_purpose,
        ] {
            answers.push((p, app.read("t.ce1", p, "follow_up").await));
        }
        let (_, first) = &answers[0];
        assert_eq!(first.0, 404);
        assert_error(&first.1, "not_found");
        for (p, a) in &answers {
            assert_eq!(
                a, first,
                "{backend:?}: person {p} must look exactly like a missing one"
            );
        }
        // Every attempt is in the ledger, denied, with the person asked for.
        let leaves = app.leaves(before).await;
        assert_eq!(leaves.len(), answers.len());
        for (leaf, (p, _)) in leaves.iter().zip(&answers) {
            assert_eq!(leaf.person, Some(*p));
            assert!(matches!(leaf.decision, Decision::Deny(_)), "{leaf:?}");
            assert!(leaf.field_groups.is_empty());
        }
        // The one in the caseload still reads.
        assert_eq!(app.read("t.ce1", mine, "follow_up").await.0, 200);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_exact_scoped_and_refuses_wildcards() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let day = today();
        let mine = app.fresh_person(30);
        let theirs = app.fresh_person(31);
        app.mandate("T-CE1", None, mine, Purpose::FollowUp, day, None)
            .await;
        app.mandate("T-CE2", None, theirs, Purpose::FollowUp, day, None)
            .await;
        let view = |id| {
            let vault = app.vault.clone();
            async move {
                match vault.read(id, FieldGroup::ALL).await.unwrap() {
                    Read::Found(v) => v,
                    other => panic!("{other:?}"),
                }
            }
        };
        let m = view(mine).await;
        let t = view(theirs).await;
        let by_nir = |nir: &str| json!({"purpose": "follow_up", "nir": nir});
        let by_name = |v: &rempart_vault::PersonView| {
            let i = v.identity.as_ref().unwrap();
            json!({
                "purpose": "follow_up",
                "nom": i.nom.as_str().to_uppercase(),
                "prenom": i.prenom.as_str(),
                "date_naissance": i.date_naissance.format("%Y-%m-%d").to_string(),
            })
        };

        let (s, body) = app
            .post(
                Some("t.ce1"),
                "/api/v1/search",
                &by_nir(m.nir.as_ref().unwrap().as_str()),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let found: Vec<PersonId> = body["persons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PersonId::new(p["id"].as_i64().unwrap()))
            .collect();
        assert_eq!(found, vec![mine]);
        assert_eq!(body["persons"][0]["nir"]["view"], "masked");

        let (s, body) = app
            .post(Some("t.ce1"), "/api/v1/search", &by_name(&m))
            .await;
        assert_eq!(s, 200);
        assert_eq!(body["persons"].as_array().unwrap().len(), 1, "{body}");

        // Another organisation's person: exactly like nobody.
        let before = app.ledger_size().await;
        let (s1, theirs_nir) = app
            .post(
                Some("t.ce1"),
                "/api/v1/search",
                &by_nir(t.nir.as_ref().unwrap().as_str()),
            )
            .await;
        let (s2, theirs_name) = app
            .post(Some("t.ce1"), "/api/v1/search", &by_name(&t))
            .await;
        let (s3, nobody) = app
            .post(Some("t.ce1"), "/api/v1/search", &by_nir("299122A12345688"))
            .await;
        assert_eq!((s1, s2, s3), (200, 200, 200));
        assert_eq!(theirs_nir, json!({"persons": []}));
        assert_eq!(theirs_name, nobody);
        assert_eq!(theirs_nir, nobody);
        // …but the ledger saw the look outside the scope.
        let leaves = app.leaves(before).await;
        assert!(
            leaves
                .iter()
                .any(|l| l.person == Some(theirs) && !l.decision.is_allow()),
            "{leaves:?}"
        );

        // Wildcards and partial values.
        let i = m.identity.as_ref().unwrap();
        for (field, nom, prenom) in [
            ("nom", "*", i.prenom.as_str().to_string()),
            ("nom", "DU%", i.prenom.as_str().to_string()),
            ("prenom", i.nom.as_str(), "J?an".to_string()),
            ("prenom", i.nom.as_str(), "_".to_string()),
        ] {
            let (s, body) = app
                .post(
                    Some("t.ce1"),
                    "/api/v1/search",
                    &json!({"purpose": "follow_up", "nom": nom, "prenom": prenom, "date_naissance": "1990-01-01"}),
                )
                .await;
            assert_eq!(s, 400, "{body}");
            assert_error(&body, "invalid_request");
            assert_eq!(body["error"]["field"], field);
        }
        let partial = {
            let nom = i.nom.as_str();
            let cut: String = nom
                .chars()
                .take(nom.chars().count().saturating_sub(1).max(1))
                .collect();
            json!({
                "purpose": "follow_up",
                "nom": cut,
                "prenom": i.prenom.as_str(),
                "date_naissance": i.date_naissance.format("%Y-%m-%d").to_string(),
            })
        };
        let (s, body) = app.post(Some("t.ce1"), "/api/v1/search", &partial).await;
        assert_eq!((s, body), (200, json!({"persons": []})));
        let (s, body) = app
            .post(Some("t.ce1"), "/api/v1/search", &by_nir("1234"))
            .await;
        assert_eq!(s, 400);
        assert_eq!(body["error"]["field"], "nir");
        // A birth date nobody can have (after the server's today, before
        // 1900) is refused naming the field, not searched for.
        let tomorrow = (app.clock.now() + Duration::days(1))
            .date_naive()
            .format("%Y-%m-%d")
            .to_string();
        let before = app.ledger_size().await;
        for born in ["2999-01-01", tomorrow.as_str(), "1899-12-31", "0001-01-01"] {
            let (s, body) = app
                .post(
                    Some("t.ce1"),
                    "/api/v1/search",
                    &json!({"purpose": "follow_up", "nom": i.nom.as_str(), "prenom": i.prenom.as_str(), "date_naissance": born}),
                )
                .await;
            assert_eq!(s, 400, "{backend:?} {born}: {body}");
            assert_error(&body, "invalid_request");
            assert_eq!(body["error"]["field"], "date_naissance", "{body}");
            assert!(!body.to_string().contains(born), "{body}");
        }
        assert!(
            app.leaves(before)
                .await
                .iter()
                .all(|l| l.action != LeafAction::Search),
            "a refused date searches nothing"
        );
        app.stop().await;
    }
}

/// One HTTP/1.1 exchange over raw TCP, for requests reqwest will not send
/// (lying `Content-Length`, raw non-ASCII bytes, hundreds of headers):
/// writes `request` (then, if `half_close`, closes the sending side), and
/// reads one answer: status, JSON body, and the time it took.
async fn raw_http(
    port: u16,
    request: &[u8],
    half_close: bool,
) -> (u16, Value, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if received.len() >= end + 4 + length {
                    let status: u16 = head[9..12].parse().unwrap();
                    let body = &received[end + 4..end + 4 + length];
                    let body = serde_json::from_slice(body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(body).into_owned())
                    });
                    return (status, body);
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the server closed without a whole answer: {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer within 30 s");
    (answer.0, answer.1, started.elapsed())
}

/// Bad input at the HTTP edge, sent as hand-made bytes: each gets the
/// documented error body with its status (400, 408, 414, 431), never a
/// 5xx or `internal_error`, and leaves no ledger leaf. These are refused
/// before any store is touched, the same whatever the backend, so one
/// backend (SQLite) is enough here; the date rule above runs on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_the_edge_gets_the_error_shape_over_raw_tcp() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.token("t.ce1").to_string();
    let search = |length: &str, body: &str| -> Vec<u8> {
        format!(
            "POST /api/v1/search HTTP/1.1\r\nHost: rempart.test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
        )
        .into_bytes()
    };
    let get = |target: &[u8], extra: &str| -> Vec<u8> {
        let mut r = b"GET ".to_vec();
        r.extend_from_slice(target);
        r.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: rempart.test\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        r
    };
    let partial = r#"{"purpose":"follow_up","nir":"29912"#;
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    // What, the bytes, whether to close the sending side, and the answer:
    // status, code, field.
    type Case<'a> = (&'a str, Vec<u8>, bool, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        // Shorter than its Content-Length, the sending side closed.
        (
            "short body",
            search("200", partial),
            true,
            400,
            "invalid_request",
            Some("body"),
        ),
        (
            "malformed Content-Length",
            search("abc", ""),
            false,
            400,
            "malformed_request",
            None,
        ),
        (
            "negative Content-Length",
            search("-5", ""),
            false,
            400,
            "malformed_request",
            None,
        ),
        (
            "raw non-ASCII byte in the path",
            get(b"/api/v1/persons/\xff\xfe?purpose=follow_up", ""),
            false,
            400,
            "malformed_request",
            None,
        ),
        (
            "invalid UTF-8 in the path",
            get(b"/api/v1/persons/%FF%FE?purpose=follow_up", ""),
            false,
            400,
            "invalid_request",
            Some("path"),
        ),
        (
            "invalid UTF-8 in the query",
            get(b"/api/v1/caseload?purpose=%C3%28", ""),
            false,
            400,
            "invalid_request",
            Some("purpose"),
        ),
        (
            "invalid UTF-8 in a parameter name",
            get(b"/api/v1/caseload?%FF=1", ""),
            false,
            400,
            "invalid_request",
            Some("query"),
        ),
        (
            "query over 8 KiB",
            get(
                format!(
                    "/api/v1/caseload?purpose=follow_up&x={}",
                    "a".repeat(9 * 1024)
                )
                .as_bytes(),
                "",
            ),
            false,
            414,
            "uri_too_long",
            None,
        ),
        (
            "URI over hyper's 64 KiB",
            get(
                format!(
                    "/api/v1/caseload?purpose=follow_up&x={}",
                    "a".repeat(70 * 1024)
                )
                .as_bytes(),
                "",
            ),
            false,
            414,
            "uri_too_long",
            None,
        ),
        (
            "one header over 16 KiB",
            get(
                b"/api/v1/me",
                &format!("x-big: {}\r\n", "a".repeat(20 * 1024)),
            ),
            false,
            431,
            "headers_too_large",
            None,
        ),
        (
            "150 headers",
            get(b"/api/v1/me", &many_headers),
            false,
            431,
            "headers_too_large",
            None,
        ),
    ];
    let size = app.ledger_size().await;
    for (what, request, half_close, status, code, field) in cases {
        let (s, body, _) = raw_http(app.port, &request, half_close).await;
        assert_eq!(s, status, "{what}: {body}");
        assert_error(&body, code);
        assert_eq!(body["error"]["field"].as_str(), field, "{what}: {body}");
        assert!(!body.to_string().contains("internal"), "{what}: {body}");
    }
    // The same body sent too slowly: the rest never comes, the connection
    // stays open. A 408 when the request time is up, not a 503.
    let (s, body, took) = raw_http(app.port, &search("200", partial), false).await;
    assert_eq!(s, 408, "{body}");
    assert_error(&body, "request_timeout");
    assert!(took >= std::time::Duration::from_secs(9), "{took:?}");
    // None of it reached an operation: no leaf at all, so no internal_error.
    assert_eq!(
        app.ledger_size().await,
        size,
        "{:?}",
        app.leaves(size).await
    );
    // And the server still answers normally.
    let (s, _) = app.get(Some("t.ce1"), "/api/v1/me").await;
    assert_eq!(s, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandates_granted_and_revoked_count_from_the_next_request() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let p = app.fresh_person(40);
        assert_eq!(app.read("t.ce1", p, "follow_up").await.0, 404);
        let grant = json!({
            "person_id": p,
            "organisation_id": app.org("T-CE1"),
            "purpose": "follow_up",
            "source": "orientation-2026-001",
        });
        // Only France Travail officers grant.
        let (s, body) = app.post(Some("t.ce1"), "/api/v1/mandates", &grant).await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "forbidden");
        let (s, body) = app
            .post(Some("t.officer"), "/api/v1/mandates", &grant)
            .await;
        assert_eq!(s, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        assert_eq!(app.read("t.ce1", p, "follow_up").await.0, 200);
        // The caseload shows it.
        let (s, page) = app
            .get(
                Some("t.ce1"),
                "/api/v1/caseload?purpose=follow_up&limit=1000",
            )
            .await;
        assert_eq!(s, 200, "{page}");
        assert!(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["person_id"] == json!(p))
        );
        let (s, _) = app
            .delete("t.officer", &format!("/api/v1/mandates/{id}"))
            .await;
        assert_eq!(s, 204);
        assert_eq!(app.read("t.ce1", p, "follow_up").await.0, 404);
        let (_, page) = app
            .get(
                Some("t.ce1"),
                "/api/v1/caseload?purpose=follow_up&limit=1000",
            )
            .await;
        assert!(
            !page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["person_id"] == json!(p))
        );
        // Revoking twice: nothing left to revoke.
        let (s, _) = app
            .delete("t.officer", &format!("/api/v1/mandates/{id}"))
            .await;
        assert_eq!(s, 404);
        // A grant naming an account of another organisation is refused.
        let mut bad = grant.clone();
        bad["account_id"] = json!(app.account("t.ce2").account_id);
        let (s, body) = app.post(Some("t.officer"), "/api/v1/mandates", &bad).await;
        assert_eq!(s, 400, "{body}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caseload_pages_cover_every_live_mandate_once() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let day = today();
        let mut expected = HashSet::new();
        for n in 100..350 {
            let p = app.fresh_person(n);
            app.mandate("T-CE1", None, p, Purpose::FollowUp, day, None)
                .await;
            expected.insert(p);
        }
        for n in 350..360 {
            app.mandate(
                "T-CE1",
                None,
                app.fresh_person(n),
                Purpose::FollowUp,
                day - Duration::days(10),
                Some(day),
            )
            .await;
        }
        let mut seen = HashSet::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let (s, page) = app
                .get(
                    Some("t.ce1"),
                    &format!("/api/v1/caseload?purpose=follow_up&limit=64&after={after}"),
                )
                .await;
            assert_eq!(s, 200, "{page}");
            pages += 1;
            for e in page["entries"].as_array().unwrap() {
                assert!(seen.insert(PersonId::new(e["person_id"].as_i64().unwrap())));
            }
            match page["next"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(seen, expected);
        assert_eq!(pages, 4);
        let (s, body) = app
            .get(Some("t.ce1"), "/api/v1/caseload?purpose=follow_up&limit=0")
            .await;
        assert_eq!(s, 400);
        assert_eq!(body["error"]["field"], "limit");
        app.stop().await;
    }
}

/// Break-glass is a human act: an API credential (a copyable `rmp_`
/// secret) never breaks the glass, whatever its reason and its account;
/// the refusal is a clear 403, ledgered, and nothing is created. The
/// session path, which works, is in the browser module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_credentials_cannot_break_the_glass() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let p = app.fresh_person(50);
        let path = format!("/api/v1/persons/{p}/break-glass");
        let before = app.ledger_size().await;
        let tries = [
            ("t.ft", "aaaaaaaaaaaaaaaaaaaa"),
            (
                "t.ft",
                "Appel du conseiller référent absent, rendez-vous à 9 h",
            ),
            (
                "t.ce1",
                "Appel du conseiller référent absent, rendez-vous à 9 h",
            ),
            ("t.ft", "urgent"),
        ];
        for (login, reason) in tries {
            let (s, body) = app
                .post(
                    Some(login),
                    &path,
                    &json!({"purpose": "follow_up", "reason": reason}),
                )
                .await;
            assert_eq!(s, 403, "{backend:?} {login}: {body}");
            assert_eq!(body["error"]["code"], "browser_session_required");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("browser session") && message.contains("second factor"),
                "{message}"
            );
        }
        let leaves = app.leaves(before).await;
        assert_eq!(leaves.len(), tries.len(), "{backend:?}: one leaf each");
        for l in &leaves {
            assert_eq!(
                (l.action, l.decision, l.person),
                (
                    LeafAction::BreakGlass,
                    Decision::Deny(rempart_ledger::DenyReason::StepUpRequired),
                    Some(p)
                ),
                "{backend:?}"
            );
            assert_eq!(
                l.note.as_deref(),
                Some("break-glass: api credential, browser session required")
            );
        }
        assert!(
            app.store.mandates_of_person(p).await.unwrap().is_empty(),
            "{backend:?}: no mandate"
        );
        assert!(app.store.break_glass_reasons(p).await.unwrap().is_empty());
        // The person stays out of reach.
        let (s, _) = app.read("t.ft", p, "follow_up").await;
        assert_eq!(s, 404, "{backend:?}");
        // Even a person who does not exist gets the same refusal.
        let (s, body) = app
            .post(
                Some("t.ft"),
                &format!("/api/v1/persons/{}/break-glass", i64::MAX - 5),
                &json!({"purpose": "follow_up", "reason": tries[1].1}),
            )
            .await;
        assert_eq!(s, 403, "{backend:?}: {body}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_account_states_are_checked_on_every_request() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let p = app.fresh_person(60);
        app.mandate("T-CE1", None, p, Purpose::FollowUp, today(), None)
            .await;
        let url = format!("{}/api/v1/persons/{p}?purpose=follow_up", app.base);
        let before = app.ledger_size().await;
        let good = app.token("t.ce1").to_string();
        // rmp_<id>_<secret>; the secret itself may hold '_'.
        let id_part: String = good.splitn(3, '_').take(2).collect::<Vec<_>>().join("_");
        let wrong_secret = format!("{id_part}_{}", "A".repeat(43));
        for auth in [
            None,
            Some("Basic dXNlcjpwYXNz".to_string()),
            Some("Bearer nonsense".to_string()),
            Some("Bearer rmp_999999_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string()),
            Some(format!("Bearer {wrong_secret}")),
        ] {
            let mut req = app.http.get(&url);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let (s, body) = answer(req.send().await.unwrap()).await;
            assert_eq!(s, 401, "{auth:?}: {body}");
            assert_error(&body, "unauthenticated");
        }
        // Every failed attempt is ledgered; the wrong secret under its account.
        let leaves = app.leaves(before).await;
        assert_eq!(leaves.len(), 5);
        assert!(leaves.iter().all(|l| !l.decision.is_allow()));
        assert_eq!(leaves[4].account, app.account("t.ce1").account_id);

        // Revoked credential.
        let extra = rempart_consult::authenticate::issue(
            &app.store,
            app.account("t.ce1").account_id,
            Duration::days(1),
            Utc::now(),
        )
        .await
        .unwrap();
        let with = |token: &str| app.http.get(&url).bearer_auth(token.to_string()).send();
        assert_eq!(with(extra.token.as_str()).await.unwrap().status(), 200);
        app.store
            .revoke_credentials(app.account("t.ce1").account_id, Some(extra.id), Utc::now())
            .await
            .unwrap();
        assert_eq!(with(extra.token.as_str()).await.unwrap().status(), 401);
        assert_eq!(with(&good).await.unwrap().status(), 200);
        // Expired credential.
        let old = rempart_consult::authenticate::issue(
            &app.store,
            app.account("t.ce1").account_id,
            Duration::seconds(1),
            Utc::now() - Duration::seconds(10),
        )
        .await
        .unwrap();
        assert_eq!(with(old.token.as_str()).await.unwrap().status(), 401);

        // Suspension by an officer takes effect at once; not on oneself.
        let ce1 = app.account("t.ce1").account_id;
        let (s, body) = app
            .post(
                Some("t.ce1"),
                &format!("/api/v1/accounts/{ce1}/suspend"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403, "{body}");
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/accounts/{ce1}/suspend"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["state"], "suspended");
        let (s, body) = answer(with(&good).await.unwrap()).await;
        assert_eq!(s, 403);
        assert_error(&body, "account_suspended");
        let officer = app.account("t.officer").account_id;
        let (s, _) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/accounts/{officer}/suspend"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403);
        let (s, _) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/accounts/{ce1}/reactivate"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200);
        // The suspension revoked the account's credentials: reactivation
        // restores none of them; a new one is issued.
        assert_eq!(with(&good).await.unwrap().status(), 401);
        let fresh =
            rempart_consult::authenticate::issue(&app.store, ce1, Duration::days(1), Utc::now())
                .await
                .unwrap();
        assert_eq!(with(fresh.token.as_str()).await.unwrap().status(), 200);
        // Administration lists.
        let (s, body) = app.get(Some("t.officer"), "/api/v1/organisations").await;
        assert_eq!(s, 200);
        assert!(body["organisations"].as_array().unwrap().len() >= ORGS.len());
        let (s, body) = app
            .get(
                Some("t.officer"),
                &format!("/api/v1/organisations/{}/accounts", app.org("T-CE1")),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(body["accounts"].as_array().unwrap().len(), 2);
        let as_ce1 = |path: &str| {
            app.http
                .get(format!("{}{path}", app.base))
                .bearer_auth(fresh.token.as_str())
                .send()
        };
        assert_eq!(as_ce1("/api/v1/organisations").await.unwrap().status(), 403);
        let (s, me) = answer(as_ce1("/api/v1/me").await.unwrap()).await;
        assert_eq!(s, 200);
        assert_eq!(me["login"], "t.ce1");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_one_shape_and_limits_hold() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
            (
                app.http.get(format!("{}/nowhere", app.base)),
                404,
                "no_route",
                None,
            ),
            (
                app.http.put(format!("{}/api/v1/search", app.base)),
                405,
                "method_not_allowed",
                None,
            ),
            (
                app.http
                    .get(format!("{}/api/v1/persons/abc?purpose=follow_up", app.base)),
                400,
                "invalid_request",
                Some("id"),
            ),
            (
                app.http.get(format!("{}/api/v1/persons/1", app.base)),
                400,
                "invalid_request",
                Some("purpose"),
            ),
            (
                app.http
                    .get(format!("{}/api/v1/persons/1?purpose=curiosity", app.base)),
                400,
                "invalid_request",
                Some("purpose"),
            ),
            (
                app.http.get(format!(
                    "{}/api/v1/persons/1?purpose=follow_up&purpose=training",
                    app.base
                )),
                400,
                "invalid_request",
                Some("purpose"),
            ),
            (
                app.http
                    .post(format!("{}/api/v1/search", app.base))
                    .body("{not json"),
                400,
                "invalid_request",
                Some("body"),
            ),
            (
                app.http
                    .post(format!("{}/api/v1/search", app.base))
                    .body("{}"),
                400,
                "invalid_request",
                Some("purpose"),
            ),
            (
                app.http
                    .post(format!("{}/api/v1/search", app.base))
                    .body(r#"{"purpose":"follow_up","nir":1}"#),
                400,
                "invalid_request",
                Some("nir"),
            ),
            (
                app.http
                    .post(format!("{}/api/v1/search", app.base))
                    .body(r#"{"purpose":"follow_up","extra":1}"#),
                400,
                "invalid_request",
                Some("extra"),
            ),
            (
                app.http
                    .post(format!("{}/api/v1/search", app.base))
                    .body(vec![b' '; 70 * 1024]),
                413,
                "body_too_large",
                None,
            ),
            (
                app.http
                    .get(format!("{}/api/v1/me", app.base))
                    .header("x-big", "a".repeat(20 * 1024)),
                431,
                "headers_too_large",
                None,
            ),
            (
                app.http.get(format!("{}/api/v1/me", app.base)),
                401,
                "unauthenticated",
                None,
            ),
        ];
        for (req, status, code, field) in cases {
            // Validation answers only authenticated callers.
            let req = if code == "unauthenticated" {
                req
            } else {
                req.bearer_auth(app.token("t.ce1"))
            };
            let (s, body) = answer(req.send().await.unwrap()).await;
            assert_eq!(s, status, "{backend:?}: {body}");
            assert_error(&body, code);
            assert_eq!(body["error"]["field"].as_str(), field, "{body}");
        }
        // Without a valid credential, bad input is a 401 like any other:
        // validation says nothing to strangers.
        let (s, body) = app
            .post(
                Some("t.ce1"),
                "/api/v1/search",
                &json!({"purpose": "follow_up"}),
            )
            .await;
        assert_eq!(s, 400, "{body}");
        let (s, body) = app
            .post(None, "/api/v1/search", &json!({"purpose": "follow_up"}))
            .await;
        assert_eq!(s, 401, "{body}");
        // The NIR typed into a wrong place is not echoed back.
        let (_, body) = app
            .post(
                None,
                "/api/v1/search",
                &json!({"purpose": "follow_up", "nir": ["299122A12345688"]}),
            )
            .await;
        assert!(!body.to_string().contains("299122A12345688"), "{body}");
        // Health and the document.
        assert_eq!(app.get(None, "/api/v1/health/live").await.0, 200);
        assert_eq!(app.get(None, "/api/v1/health/ready").await.0, 200);
        let (s, doc) = app.get(None, "/api/v1/openapi.json").await;
        assert_eq!(s, 200);
        assert_eq!(doc["openapi"], "3.0.3");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ledger_means_503_and_no_data() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let p = app.fresh_person(70);
        app.mandate("T-FT", None, p, Purpose::FollowUp, today(), None)
            .await;
        assert_eq!(app.read("t.ft", p, "follow_up").await.0, 200);
        let size = app.ledger_size().await;
        // Break the ledger from outside, as a full disk or a lost database would.
        app.break_ledger(true).await;
        let (s, body) = app.read("t.ft", p, "follow_up").await;
        assert_eq!(s, 503, "{backend:?}: {body}");
        assert_error(&body, "unavailable");
        assert!(body.get("identity").is_none() && body.get("nir").is_none());
        assert_eq!(app.ledger_size().await, size, "nothing was appended");
        // Searches and denials fail closed too.
        let (s, _) = app.read("t.ce1", p, "follow_up").await;
        assert_eq!(s, 503);
        // So do the officers' listings (issue 17, item 7: they answered
        // 200 with no leaf at all).
        let ft = app.orgs["T-FT"];
        for path in [
            "/api/v1/organisations".to_string(),
            format!("/api/v1/organisations/{ft}/accounts"),
        ] {
            let (s, body) = app.get(Some("t.officer"), &path).await;
            assert_eq!(s, 503, "{backend:?} {path}: {body}");
            assert_error(&body, "unavailable");
        }
        assert_eq!(app.ledger_size().await, size, "nothing was appended");
        app.break_ledger(false).await;
        let (s, body) = app.read("t.ft", p, "follow_up").await;
        assert_eq!(s, 200, "the ledger recovers: {body}");
        let officer = app.account("t.officer").account_id;
        for path in [
            "/api/v1/organisations".to_string(),
            format!("/api/v1/organisations/{ft}/accounts"),
        ] {
            let before = app.ledger_size().await;
            let (s, body) = app.get(Some("t.officer"), &path).await;
            assert_eq!(s, 200, "{backend:?} {path}: {body}");
            let leaves = app.leaves(before).await;
            assert!(
                leaves.iter().any(|l| l.account == officer
                    && l.action == LeafAction::AdminList
                    && l.decision == Decision::Allow),
                "{backend:?} {path}: every 200 has its leaf: {leaves:?}"
            );
        }
        app.stop().await;
    }
}

impl TestApp {
    /// Makes every append to the ledger fail (`broken`), as a full disk or
    /// a lost database would, from outside: a trigger on its leaf table;
    /// or mends it.
    async fn break_ledger(&self, broken: bool) {
        if broken {
            // What replicas staged before the failure is integrated first.
            self.ledger_size().await;
        }
        let sql = match (&self.ledger_sql, broken) {
            (LedgerSql::Sqlite(_), true) => "CREATE TRIGGER test_fail BEFORE INSERT ON leaf BEGIN SELECT RAISE(ABORT, 'injected failure'); END;".to_string(),
            (LedgerSql::Sqlite(_), false) => "DROP TRIGGER test_fail;".to_string(),
            (LedgerSql::Postgres(schema), true) => format!(
                "CREATE OR REPLACE FUNCTION {schema}.test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                 CREATE TRIGGER test_fail BEFORE INSERT OR UPDATE ON {schema}.leaf_bundle FOR EACH ROW EXECUTE FUNCTION {schema}.test_fail();
                 CREATE TRIGGER test_fail BEFORE INSERT ON {schema}.staged FOR EACH ROW EXECUTE FUNCTION {schema}.test_fail();"
            ),
            (LedgerSql::Postgres(schema), false) => format!(
                "DROP TRIGGER test_fail ON {schema}.leaf_bundle; DROP TRIGGER test_fail ON {schema}.staged;"
            ),
        };
        match &self.ledger_sql {
            LedgerSql::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                c.execute_batch(&sql).unwrap();
            }
            LedgerSql::Postgres(_) => pg_exec(&sql).await,
        }
    }
}

/// Issue 17, item 7: suspend, reactivate, mandate grant and revocation,
/// account and reset decisions changed state before their leaf, so a
/// failed append left a change with no record. Each is tried with the
/// ledger broken: 503, nothing changed, nothing appended; then with the
/// ledger mended: the change is made, its leaf before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_change_without_its_leaf() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let empty = json!({});
        let ce1 = app.account("t.ce1").account_id;
        let state = |id: AccountId| {
            let app = &app;
            async move { app.store.account_by_id(id).await.unwrap().unwrap().state }
        };
        // What each try starts from, made with the ledger working.
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!(
                    "/api/v1/accounts/{}/suspend",
                    app.account("t.ce2").account_id
                ),
                &empty,
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        let ce2 = app.account("t.ce2").account_id;
        let (s, requested) = app
            .request_account("t.mlm", "T-ML", "ml.leaf-first", "agent")
            .await;
        assert_eq!(s, 201, "{backend:?}: {requested}");
        let requested = AccountId::new(requested["id"].as_i64().unwrap());
        let (s, reset) = app
            .post(
                Some("t.mlm"),
                &format!(
                    "/api/v1/accounts/{}/reset-requests",
                    app.account("t.ml").account_id
                ),
                &json!({"kind": "all"}),
            )
            .await;
        assert_eq!(s, 201, "{backend:?}: {reset}");
        let reset_id = reset["id"].as_i64().unwrap();
        let p = app.fresh_person(71);
        let grant = json!({
            "person_id": p,
            "organisation_id": app.org("T-CE1"),
            "purpose": "follow_up",
            "source": "orientation-2026-002",
        });
        let (s, granted) = app
            .post(Some("t.officer"), "/api/v1/mandates", &grant)
            .await;
        assert_eq!(s, 201, "{backend:?}: {granted}");
        let mandate = MandateId::new(granted["id"].as_i64().unwrap());
        let q = app.fresh_person(72);
        let grant_q = json!({
            "person_id": q,
            "organisation_id": app.org("T-CE1"),
            "purpose": "follow_up",
            "source": "orientation-2026-003",
        });
        let live = |person: PersonId| {
            let app = &app;
            async move {
                app.store
                    .mandates_of_person(person)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|m| m.revoked_at.is_none())
                    .count()
            }
        };

        let (q_live, p_live) = (live(q).await, live(p).await);
        app.break_ledger(true).await;
        let size = app.ledger_size().await;
        let tries = [
            (
                "suspend",
                format!("/api/v1/accounts/{ce1}/suspend"),
                empty.clone(),
            ),
            (
                "reactivate",
                format!("/api/v1/accounts/{ce2}/reactivate"),
                empty.clone(),
            ),
            (
                "approve",
                format!("/api/v1/account-requests/{requested}/approve"),
                empty.clone(),
            ),
            (
                "reject",
                format!("/api/v1/account-requests/{requested}/reject"),
                empty.clone(),
            ),
            (
                "reset",
                format!("/api/v1/reset-requests/{reset_id}/approve"),
                empty.clone(),
            ),
            ("grant", "/api/v1/mandates".to_string(), grant_q.clone()),
        ];
        for (what, path, body) in &tries {
            let (s, answer) = app.post(Some("t.officer2"), path, body).await;
            assert_eq!(s, 503, "{backend:?} {what}: {answer}");
            assert_error(&answer, "unavailable");
        }
        let (s, answer) = app
            .delete("t.officer", &format!("/api/v1/mandates/{mandate}"))
            .await;
        assert_eq!(s, 503, "{backend:?} revoke: {answer}");
        assert_eq!(
            app.ledger_size().await,
            size,
            "{backend:?}: nothing appended"
        );
        // Nothing changed.
        assert_eq!(state(ce1).await, AccountState::Active, "{backend:?}");
        assert_eq!(
            app.read("t.ce1", app.fresh_person(73), "follow_up").await.0 / 100,
            5,
            "{backend:?}: the ledger is still broken"
        );
        assert_eq!(state(ce2).await, AccountState::Suspended, "{backend:?}");
        assert_eq!(
            state(requested).await,
            AccountState::Requested,
            "{backend:?}"
        );
        assert!(
            app.auth.activation(requested).await.unwrap().is_none(),
            "{backend:?}"
        );
        let pending = app.auth.pending_resets().await.unwrap();
        assert!(
            pending.iter().any(|r| r.id == reset_id),
            "{backend:?}: reset undecided"
        );
        let (s, me) = app.get(Some("t.ml"), "/api/v1/me").await;
        assert_eq!(s, 200, "{backend:?}: the credential was not revoked: {me}");
        assert_eq!(live(q).await, q_live, "{backend:?}: no mandate granted");
        assert_eq!(live(p).await, p_live, "{backend:?}: the mandate still live");
        assert!(
            app.store
                .mandate(mandate)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );

        // Mended: each change is made, with its allowed leaf.
        app.break_ledger(false).await;
        let officer2 = app.account("t.officer2").account_id;
        for (what, path, body) in &tries {
            if *what == "reject" {
                continue; // decided by the approval
            }
            let before = app.ledger_size().await;
            let (s, answer) = app.post(Some("t.officer2"), path, body).await;
            assert!(s == 200 || s == 201, "{backend:?} {what}: {s} {answer}");
            let leaves = app.leaves(before).await;
            assert!(
                leaves
                    .iter()
                    .any(|l| l.account == officer2 && l.decision == Decision::Allow),
                "{backend:?} {what}: {leaves:?}"
            );
        }
        assert_eq!(state(ce1).await, AccountState::Suspended, "{backend:?}");
        assert_eq!(state(ce2).await, AccountState::Active, "{backend:?}");
        assert_eq!(state(requested).await, AccountState::Active, "{backend:?}");
        assert_eq!(live(q).await, q_live + 1, "{backend:?}");
        let (s, answer) = app
            .delete("t.officer", &format!("/api/v1/mandates/{mandate}"))
            .await;
        assert!(s == 200 || s == 204, "{backend:?} revoke: {s} {answer}");
        assert_eq!(live(p).await, p_live - 1, "{backend:?}");
        app.stop().await;
    }
}

/// Issue 17, item 8: an officer handed a colleague of its own agency 45
/// mandates alone. A grant to one's own organisation is now a request
/// (202, no mandate yet) that only an officer of another organisation
/// decides: neither the requester nor an officer of its organisation may
/// (403, ledgered `four_eyes`); approved, the mandate is made (201) and
/// counts from the next request; a request is decided once; rejected, no
/// mandate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_to_ones_own_organisation_wait_for_a_second_officer() {
    use rempart_ledger::DenyReason;
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let outsider = app.other_agency_officer().await;
        let own = |i: usize, source: &str| {
            json!({
                "person_id": app.fresh_person(120 + i),
                "organisation_id": app.org("T-FT"),
                "account_id": app.account("t.ft").account_id,
                "purpose": "follow_up",
                "source": source,
            })
        };
        let p = app.fresh_person(120);
        let before = app.ledger_size().await;
        let (s, request) = app
            .post(Some("t.officer"), "/api/v1/mandates", &own(0, "colleague"))
            .await;
        assert_eq!(s, 202, "{backend:?}: {request}");
        assert_eq!(request["state"], "requested", "{backend:?}");
        let id = request["id"].as_i64().unwrap();
        let leaves = app.leaves(before).await;
        assert!(
            leaves.iter().any(|l| l.action == LeafAction::MandateGrant
                && l.decision == Decision::Allow
                && l.note.as_deref().is_some_and(|n| n.contains("requested"))),
            "{backend:?}: {leaves:?}"
        );
        let granted = |person: PersonId| {
            let app = &app;
            async move {
                app.store
                    .mandates_of_person(person)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|m| m.source.as_str() == "colleague")
                    .count()
            }
        };
        assert_eq!(granted(p).await, 0, "{backend:?}: nothing granted yet");
        let (s, list) = app.get(Some("t.officer"), "/api/v1/mandate-requests").await;
        assert_eq!(s, 200, "{backend:?}: {list}");
        assert!(
            list["requests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id),
            "{backend:?}: {list}"
        );
        // Neither the requester nor another officer of its organisation.
        let approve = format!("/api/v1/mandate-requests/{id}/approve");
        for who in ["t.officer", "t.officer2"] {
            let before = app.ledger_size().await;
            let (s, body) = app.post(Some(who), &approve, &json!({})).await;
            assert_eq!(s, 403, "{backend:?} {who}: {body}");
            assert_eq!(
                deny_reasons(&app.leaves(before).await),
                vec![DenyReason::FourEyes],
                "{backend:?} {who}"
            );
        }
        assert_eq!(granted(p).await, 0, "{backend:?}");
        // An officer of another agency approves: the mandate is made.
        let (s, mandate) = app.post_as(&outsider, &approve, &json!({})).await;
        assert_eq!(s, 201, "{backend:?}: {mandate}");
        assert_eq!(mandate["person_id"], json!(p), "{backend:?}");
        assert_eq!(granted(p).await, 1, "{backend:?}");
        assert_eq!(app.read("t.ft", p, "follow_up").await.0, 200, "{backend:?}");
        // Decided once.
        let (s, _) = app.post_as(&outsider, &approve, &json!({})).await;
        assert_eq!(s, 404, "{backend:?}");
        // Rejected: no mandate.
        let (s, request) = app
            .post(Some("t.officer"), "/api/v1/mandates", &own(1, "colleague"))
            .await;
        assert_eq!(s, 202, "{backend:?}: {request}");
        let reject = format!("/api/v1/mandate-requests/{}/reject", request["id"]);
        let (s, body) = app.post_as(&outsider, &reject, &json!({})).await;
        assert_eq!(
            (s, body["state"].clone()),
            (200, json!("rejected")),
            "{backend:?}"
        );
        assert_eq!(granted(app.fresh_person(121)).await, 0, "{backend:?}");
        // Two approvals racing: one mandate.
        let (s, request) = app
            .post(Some("t.officer"), "/api/v1/mandates", &own(2, "colleague"))
            .await;
        assert_eq!(s, 202, "{backend:?}: {request}");
        let race = format!("/api/v1/mandate-requests/{}/approve", request["id"]);
        let empty = json!({});
        let (x, y) = tokio::join!(
            app.post_as(&outsider, &race, &empty),
            app.post_as(&outsider, &race, &empty),
        );
        let mut statuses = [x.0, y.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 404], "{backend:?}");
        assert_eq!(granted(app.fresh_person(122)).await, 1, "{backend:?}");
        let (_, list) = app.get(Some("t.officer"), "/api/v1/mandate-requests").await;
        assert!(
            list["requests"].as_array().unwrap().is_empty(),
            "{backend:?}: {list}"
        );
        app.stop().await;
    }
}

/// Issue 17, item 8: an officer granted 45 mandates in 0.07 s, with no
/// quota and no alert. Grants are the guard's now: past the hourly quota
/// (10) they are refused with a 429, ledgered, and alerted; nothing more is
/// granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_mandate_grants_are_throttled_and_alerted() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let officer = app.account("t.officer").account_id;
        let grant = |i: usize| {
            json!({
                "person_id": app.fresh_person(100 + i),
                "organisation_id": app.org("T-CE1"),
                "purpose": "follow_up",
                "source": format!("bulk-{i}"),
            })
        };
        let mut answers = Vec::new();
        for i in 0..15 {
            let (s, body) = app
                .post(Some("t.officer"), "/api/v1/mandates", &grant(i))
                .await;
            answers.push(s);
            if s != 201 {
                assert_eq!(s, 429, "{backend:?} grant {i}: {body}");
                assert_error(&body, "throttled");
            }
        }
        assert_eq!(
            answers.iter().filter(|s| **s == 201).count(),
            10,
            "{backend:?}: {answers:?}"
        );
        assert!(answers[..10].iter().all(|s| *s == 201), "{backend:?}");
        let granted: usize = futures_util::future::join_all(
            (0..15).map(|i| app.store.mandates_of_person(app.fresh_person(100 + i))),
        )
        .await
        .into_iter()
        .map(|m| {
            m.unwrap()
                .iter()
                .filter(|m| m.source.as_str().starts_with("bulk-"))
                .count()
        })
        .sum();
        assert_eq!(granted, 10, "{backend:?}: nothing granted past the quota");
        app.guard.sync(Utc::now()).await.unwrap();
        let alerts = app
            .guard
            .alerts(&rempart_guard::store::AlertQuery {
                account_id: Some(officer),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            alerts
                .iter()
                .any(|a| a.alert.kind == rempart_guard::AlertKind::AccountQuota
                    && a.alert
                        .explanation
                        .iter()
                        .any(|e| e.feature == rempart_guard::Feature::MandateGrantsPerHour)),
            "{backend:?}: {alerts:?}"
        );
        app.stop().await;
    }
}

/// February 2024: one hijacked Cap emploi advisor account asks for 100,000
/// random persons. It gets only persons of its own caseload, the guard
/// contains it (refusals, then suspension) after a few dozen records, and
/// every attempt is in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2024_scenario_one_advisor_asks_for_100k_random_persons() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let day = today();
        let mut caseload = HashSet::new();
        for n in (0..PERSONS as usize).step_by(40) {
            let p = app.fresh_person(n);
            app.mandate("T-CE1", None, p, Purpose::FollowUp, day, None)
                .await;
            caseload.insert(p);
        }
        let max_id = *app.person_ids.last().unwrap();
        let before = app.ledger_size().await;
        let attempts: u64 = 100_000;
        let token = Arc::new(app.token("t.ce1").to_string());
        let base = Arc::new(app.base.clone());
        let mut tasks = Vec::new();
        let workers = 32u64;
        for w in 0..workers {
            let token = token.clone();
            let base = base.clone();
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut statuses: HashMap<(u16, String), u64> = HashMap::new();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
                for _ in 0..attempts / workers {
                    // xorshift: random ids over the id space and beyond it.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = PersonId::new(1 + (x % (max_id.get() as u64 + 500)) as i64);
                    let resp = client
                        .get(format!("{base}/api/v1/persons/{id}?purpose=follow_up"))
                        .bearer_auth(token.as_str())
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    if status == 429 {
                        assert!(resp.headers().contains_key("retry-after"));
                    }
                    let body: Value = resp.json().await.unwrap();
                    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                    match (status, code.as_str()) {
                        (200, _) => got.push(id),
                        (404, "not_found")
                        | (429, "throttled")
                        | (403, "step_up_required" | "account_suspended") => {}
                        other => panic!("unexpected answer {other:?}"),
                    }
                    *statuses.entry((status, code)).or_default() += 1;
                }
                (got, statuses)
            }));
        }
        let mut obtained = HashSet::new();
        let mut served = 0u64;
        let mut statuses: HashMap<(u16, String), u64> = HashMap::new();
        for t in tasks {
            let (got, st) = t.await.unwrap();
            served += got.len() as u64;
            obtained.extend(got);
            for (k, n) in st {
                *statuses.entry(k).or_default() += n;
            }
        }
        assert_eq!(statuses.values().sum::<u64>(), attempts);
        assert!(
            obtained.is_subset(&caseload),
            "{backend:?}: read outside the caseload"
        );
        // Contained: at most the hourly quota of distinct persons, and the
        // account ends suspended, its later requests refused unread.
        let quota = test_guard_config().account.persons.per_hour as usize;
        assert!(obtained.len() <= quota, "{backend:?}: {}", obtained.len());
        let ce1 = app.account("t.ce1").account_id;
        let state = app.store.account_by_id(ce1).await.unwrap().unwrap().state;
        assert_eq!(state, AccountState::Suspended, "{backend:?}");
        let suspended = statuses
            .get(&(403, "account_suspended".to_string()))
            .copied()
            .unwrap_or(0);
        assert!(suspended > attempts / 2, "{backend:?}: {statuses:?}");
        // Every attempt is in the ledger, served or denied.
        let leaves = app.leaves(before).await;
        assert_eq!(leaves.len() as u64, attempts, "{backend:?}");
        assert!(leaves.iter().all(|l| l.account == ce1));
        assert_eq!(
            leaves.iter().filter(|l| l.decision.is_allow()).count() as u64,
            served
        );
        let revealed: HashSet<PersonId> = leaves
            .iter()
            .filter(|l| l.reveals_person_data())
            .filter_map(|l| l.person)
            .collect();
        assert_eq!(revealed, obtained);
        // Where containment came: the first suspension leaf, and what was
        // served before it.
        let first_suspend = leaves
            .iter()
            .position(|l| l.guard == Some(rempart_ledger::GuardVerdict::Suspend))
            .expect("a suspension in the ledger");
        let served_before = leaves[..first_suspend]
            .iter()
            .filter(|l| l.reveals_person_data())
            .count();
        let distinct_before: HashSet<PersonId> = leaves[..first_suspend]
            .iter()
            .filter(|l| l.reveals_person_data())
            .filter_map(|l| l.person)
            .collect();
        app.guard.sync(app.clock.now()).await.unwrap();
        let alerts = app
            .guard
            .alerts(&AlertQuery {
                account_id: Some(ce1),
                limit: 100_000,
                ..AlertQuery::default()
            })
            .await
            .unwrap();
        let suspension = alerts
            .iter()
            .find(|a| a.alert.verdict == Verdict::Suspend)
            .expect("a suspension alert");
        let mut answers: Vec<_> = statuses.iter().collect();
        answers.sort();
        println!(
            "{backend:?}: {attempts} attempts; containment after {first_suspend} attempts: {served_before} records served before it ({} distinct persons, caseload {}), verdict suspend ({}: {}); {served} served in all; answers {answers:?}; {} alerts",
            distinct_before.len(),
            caseload.len(),
            suspension.alert.kind,
            suspension
                .alert
                .explanation
                .iter()
                .map(|e| format!("{} {} (baseline {})", e.feature, e.value, e.baseline))
                .collect::<Vec<_>>()
                .join(", "),
            alerts.len()
        );
        app.stop().await;
    }
}

/// A burst: an advisor reads its own caseload as fast as it can. The
/// hourly quota throttles it (429, Retry-After), persisting suspends the
/// account and ends its sessions, the next request is a 403, and the alerts
/// are stored with their explanation and the leaf that evidences them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_throttled_then_suspended_with_its_sessions_ended_and_alerts_stored() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let config = test_guard_config();
        let quota = config.account.persons.per_hour as usize;
        let caseload: Vec<PersonId> = (0..quota + 40).map(|n| app.fresh_person(n)).collect();
        for p in &caseload {
            app.mandate("T-CE1", None, *p, Purpose::FollowUp, today(), None)
                .await;
        }
        // A browser session of the same account, to be ended.
        let ce1 = app.account("t.ce1").account_id;
        let session_digest = [7u8; 32];
        let now = app.clock.now();
        app.auth
            .insert_session(rempart_storage::auth::StoredSession {
                id_digest: session_digest,
                account_id: ce1,
                jkt: "A".repeat(43),
                method: "passkey".into(),
                created_at: now,
                last_seen_at: now,
                absolute_expiry: now + Duration::hours(10),
                idle_timeout_secs: 1800,
                high_risk: false,
                step_up_at: None,
                ended_at: None,
                end_reason: None,
            })
            .await
            .unwrap();
        let before = app.ledger_size().await;

        let mut served = 0;
        let mut throttled = 0;
        let mut suspended_at = None;
        for (n, p) in caseload.iter().enumerate() {
            let resp = app
                .http
                .get(format!("{}/api/v1/persons/{p}?purpose=follow_up", app.base))
                .bearer_auth(app.token("t.ce1"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").cloned();
            let (_, body) = answer(resp).await;
            match status {
                200 => served += 1,
                429 => {
                    assert_error(&body, "throttled");
                    let secs: u32 = retry.unwrap().to_str().unwrap().parse().unwrap();
                    assert!((1..=3600).contains(&secs), "{secs}");
                    throttled += 1;
                }
                403 => {
                    assert_error(&body, "account_suspended");
                    suspended_at = Some(n);
                    break;
                }
                other => panic!("{backend:?}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(served, quota, "{backend:?}: exactly the hourly quota");
        let refusals = config.containment.suspend_after_refusals as usize;
        assert_eq!(throttled, refusals - 1, "{backend:?}");
        assert_eq!(suspended_at, Some(quota + refusals - 1), "{backend:?}");

        // Suspended in the registry, its session ended.
        let account = app.store.account_by_id(ce1).await.unwrap().unwrap();
        assert_eq!(account.state, AccountState::Suspended);
        let (session, _) = app.auth.session(session_digest).await.unwrap().unwrap();
        assert!(session.ended_at.is_some(), "{backend:?}");
        assert_eq!(session.end_reason.as_deref(), Some("guard_suspension"));

        // The next request, whatever it asks, is a 403: the account is
        // refused at authentication, before the guard.
        let (s, body) = app
            .get(Some("t.ce1"), "/api/v1/caseload?purpose=follow_up")
            .await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "account_suspended");
        let (s, body) = app.read("t.ce1", caseload[0], "follow_up").await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "account_suspended");
        // Another account of the same organisation is not affected.
        let (s, _) = app
            .get(Some("t.ce1b"), "/api/v1/caseload?purpose=follow_up")
            .await;
        assert_eq!(s, 200);

        // The ledger: the quota's reads, the throttles, the suspension.
        let leaves = app.leaves(before).await;
        let guard_of = |v| {
            leaves
                .iter()
                .enumerate()
                .filter(|(_, l)| l.account == ce1 && l.guard == Some(v))
                .map(|(i, _)| before + i as u64)
                .collect::<Vec<_>>()
        };
        use rempart_ledger::GuardVerdict as G;
        assert_eq!(guard_of(G::Allow).len(), quota);
        assert_eq!(guard_of(G::Throttle).len(), refusals - 1);
        let suspend_leaves = guard_of(G::Suspend);
        assert_eq!(suspend_leaves.len(), 1);

        // The alerts, once synced: explained, each pointing at its leaf.
        app.guard.sync(app.clock.now()).await.unwrap();
        let alerts = app
            .guard
            .alerts(&AlertQuery {
                account_id: Some(ce1),
                limit: 1000,
                ..AlertQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(alerts.len(), refusals, "{backend:?}: one per refusal");
        for a in &alerts {
            let al = &a.alert;
            assert!(!al.explanation.is_empty(), "{backend:?}: {al:?}");
            let last = al.evidence.last_seq.expect("the refusal's leaf");
            let leaf = &leaves[(last - before) as usize];
            assert_eq!(leaf.account, ce1);
            assert_eq!(
                leaf.guard.map(|g| g.as_str()),
                Some(al.verdict.as_str()),
                "{backend:?}: the leaf shows the alert's verdict"
            );
            assert!(al.evidence.from < al.evidence.to);
        }
        let first = &alerts[0].alert;
        assert_eq!(first.verdict, Verdict::Throttle);
        assert!(first.fresh);
        let quota_line = first
            .explanation
            .iter()
            .find(|e| e.feature == rempart_guard::Feature::PersonsPerHour)
            .expect("the quota named");
        assert_eq!(quota_line.value, (quota + 1) as f64);
        assert_eq!(quota_line.baseline, quota as f64);
        let last = &alerts.last().unwrap().alert;
        assert_eq!(last.verdict, Verdict::Suspend);
        assert_eq!(last.evidence.last_seq, Some(suspend_leaves[0]));
        assert!(
            last.explanation
                .iter()
                .any(|e| e.feature == rempart_guard::Feature::Refusals),
            "{last:?}"
        );
        println!(
            "{backend:?}: {served} served, {throttled} throttled, suspended at attempt {}; {} alerts, first: {}",
            quota + refusals,
            alerts.len(),
            first
                .explanation
                .iter()
                .map(|e| format!("{} {} (baseline {})", e.feature, e.value, e.baseline))
                .collect::<Vec<_>>()
                .join(", ")
        );
        app.stop().await;
    }
}

/// An organisation the guard froze stays refused until agency security
/// (or an agency officer) lifts the freeze with a written reason; nobody
/// else can, every attempt is ledgered, the guard's next sync keeps it
/// lifted, and the suspended account stays suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_organisation_is_lifted_by_security_with_a_reason() {
    for backend in BACKENDS {
        let mut config = test_guard_config();
        config.account.persons.per_hour = 5;
        // The first suspension freezes the organisation.
        config.containment.freeze_after_suspensions = 1;
        let app = spawn_app_with(backend, config).await;
        let ce1 = app.org("T-CE1");
        let persons: Vec<PersonId> = (0..40).map(|n| app.fresh_person(400 + n)).collect();
        for p in &persons {
            app.mandate("T-CE1", None, *p, Purpose::FollowUp, today(), None)
                .await;
        }
        // One agent bursts until it is stopped: suspended, and with it the
        // whole organisation frozen.
        let mut stopped = None;
        for p in &persons {
            let (s, body) = app.read("t.ce1", *p, "follow_up").await;
            match s {
                200 | 429 => {}
                403 => {
                    stopped = Some(body["error"]["code"].as_str().unwrap().to_string());
                    break;
                }
                other => panic!("{backend:?}: unexpected {other}: {body}"),
            }
        }
        assert!(
            stopped.is_some(),
            "{backend:?}: the burst was never stopped"
        );
        // The suspension that froze the organisation is a suspension in the
        // registry too (sessions and credentials ended), not only the
        // guard's refusal: the freeze was the verdict, and nothing
        // suspended the account before.
        let ce1_state = app
            .store
            .account_by_id(app.account("t.ce1").account_id)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(ce1_state, AccountState::Suspended, "{backend:?}");
        let (s, body) = app.read("t.ce1b", persons[0], "follow_up").await;
        assert_eq!(s, 403, "{backend:?}: {body}");
        assert_error(&body, "organisation_frozen");

        // Administration sees which organisation is frozen, and since when.
        let frozen_since = |list: &Value| -> Vec<(OrganisationId, Value)> {
            list["organisations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| !o["frozen_since"].is_null())
                .map(|o| {
                    (
                        OrganisationId::new(o["id"].as_i64().unwrap()),
                        o["frozen_since"].clone(),
                    )
                })
                .collect()
        };
        let (s, list) = app.get(Some("t.officer"), "/api/v1/organisations").await;
        assert_eq!(s, 200, "{list}");
        let frozen = frozen_since(&list);
        assert_eq!(frozen.len(), 1, "{backend:?}: {frozen:?}");
        assert_eq!(frozen[0].0, ce1);
        let since = frozen[0].1.as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(since).is_ok(),
            "{since}"
        );

        let path = format!("/api/v1/organisations/{ce1}/lift-freeze");
        let reason = "Comptes vérifiés avec le responsable de la structure";
        let before = app.ledger_size().await;
        // Nobody but agency security and officers; not with a short reason.
        for login in ["t.ce1b", "t.ft", "t.ftm", "t.mlm"] {
            let (s, body) = app
                .post(Some(login), &path, &json!({ "reason": reason }))
                .await;
            assert_eq!(s, 403, "{backend:?} {login}: {body}");
        }
        let (s, body) = app
            .post(Some("t.sec"), &path, &json!({ "reason": "vu" }))
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["field"], "reason");
        let (s, body) = app.post(Some("t.sec"), &path, &json!({})).await;
        assert_eq!(s, 400, "{body}");
        let (s, body) = app
            .post(Some("t.sec"), &path, &json!({ "reason": "x".repeat(951) }))
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["field"], "reason");
        let (s, body) = app
            .post(
                Some("t.sec"),
                "/api/v1/organisations/999999/lift-freeze",
                &json!({ "reason": reason }),
            )
            .await;
        assert_eq!(s, 404, "{body}");
        let (s, body) = app.post(None, &path, &json!({ "reason": reason })).await;
        assert_eq!(s, 401, "{body}");
        // Still frozen after all that.
        let (s, body) = app.read("t.ce1b", persons[0], "follow_up").await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "organisation_frozen");

        let (s, body) = app
            .post(Some("t.sec"), &path, &json!({ "reason": reason }))
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        assert_eq!(body, json!({ "organisation_id": ce1, "lifted": true }));
        // From the very next request; and the guard's next sync, which
        // reads the frozen organisations back from the store, agrees.
        let (s, body) = app.read("t.ce1b", persons[0], "follow_up").await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        app.advance(10).await;
        let (s, body) = app.read("t.ce1b", persons[1], "follow_up").await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        let (_, list) = app.get(Some("t.officer"), "/api/v1/organisations").await;
        assert!(frozen_since(&list).is_empty(), "{backend:?}: {list}");
        // The account that caused it is still suspended.
        let (s, body) = app.read("t.ce1", persons[0], "follow_up").await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "account_suspended");
        // Lifting again says there was nothing to lift; the longest
        // reason is kept whole.
        let longest = "x".repeat(rempart_consult::MAX_LIFT_REASON_BYTES);
        let (s, body) = app
            .post(Some("t.officer"), &path, &json!({ "reason": longest }))
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["lifted"], false);

        // The ledger: every attempt under its author, the reason with the
        // decision that used it.
        let leaves = app.leaves(before).await;
        let lifts: Vec<&AuditLeaf> = leaves
            .iter()
            .filter(|l| l.action == LeafAction::OrganisationUnfreeze)
            .collect();
        let denied = |login: &str, reason: rempart_ledger::DenyReason| {
            let id = app.account(login).account_id;
            lifts
                .iter()
                .filter(|l| l.account == id && l.decision == Decision::Deny(reason))
                .count()
        };
        use rempart_ledger::DenyReason as D;
        for login in ["t.ce1b", "t.ft", "t.ftm", "t.mlm"] {
            assert_eq!(denied(login, D::PolicyDenied), 1, "{backend:?} {login}");
        }
        assert_eq!(denied("t.sec", D::InvalidRequest), 3, "{backend:?}");
        let allowed: Vec<(AccountId, Option<&str>)> = lifts
            .iter()
            .filter(|l| l.decision.is_allow())
            .map(|l| (l.account, l.note.as_deref()))
            .collect();
        let lifted = format!("organisation {ce1} lifted: {reason}");
        let not_frozen = format!("organisation {ce1} not frozen: {longest}");
        assert_eq!(
            allowed,
            vec![
                (app.account("t.sec").account_id, Some(lifted.as_str())),
                (
                    app.account("t.officer").account_id,
                    Some(not_frozen.as_str())
                ),
            ],
            "{backend:?}"
        );
        app.stop().await;
    }
}

/// The breach register over HTTP: agency security opens an incident, the
/// DPO scopes it and follows its timeline; nobody else may; bad input is a
/// clear error with nothing written; a closed incident takes nothing more,
/// even from requests racing its close; every call is ledgered, and no
/// leaf carries the officers' text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breach_register_is_kept_over_the_api_by_security_and_the_dpo() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let ce1 = app.org("T-CE1");
        let persons: Vec<PersonId> = (0..6).map(|n| app.fresh_person(600 + n)).collect();
        for p in &persons[..4] {
            app.mandate("T-CE1", None, *p, Purpose::FollowUp, today(), None)
                .await;
        }
        app.mandate("T-ML", None, persons[4], Purpose::FollowUp, today(), None)
            .await;
        // Cap emploi 1 reads four persons over two accounts and tries a
        // fifth it has no mandate on; the Mission locale reads its own.
        for (login, p) in [
            ("t.ce1", persons[0]),
            ("t.ce1", persons[1]),
            ("t.ce1", persons[2]),
            ("t.ce1b", persons[3]),
            ("t.ml", persons[4]),
        ] {
            let (s, body) = app.read(login, p, "follow_up").await;
            assert_eq!(s, 200, "{backend:?} {login}: {body}");
        }
        let (s, _) = app.read("t.ce1", persons[5], "follow_up").await;
        assert_eq!(s, 404);
        let before = app.ledger_size().await;
        let from = (Utc::now() - Duration::hours(1)).to_rfc3339();
        let title = "Identifiants de Cap emploi 1 publiés sur un forum";
        let incident = json!({ "title": title, "organisations": [ce1], "from": from });

        // Nobody but agency security and the DPO, for any call.
        for login in ["t.ce1", "t.ft", "t.officer", "t.ftm", "t.mlm"] {
            let (s, body) = app.post(Some(login), "/api/v1/incidents", &incident).await;
            assert_eq!(s, 403, "{backend:?} {login}: {body}");
            let (s, _) = app.get(Some(login), "/api/v1/incidents").await;
            assert_eq!(s, 403, "{backend:?} {login}");
        }
        let (s, _) = app.post(None, "/api/v1/incidents", &incident).await;
        assert_eq!(s, 401);

        // Bad input: the field and the reason, nothing written.
        let future = (Utc::now() + Duration::hours(2)).to_rfc3339();
        let bad = [
            (
                json!({ "title": title, "accounts": [999999], "from": from }),
                "accounts",
            ),
            (
                json!({ "title": title, "organisations": [999999], "from": from }),
                "organisations",
            ),
            (
                json!({ "title": title, "accounts": [0], "from": from }),
                "accounts",
            ),
            (
                json!({ "title": title, "clients": ["rmpc_nope"], "from": from }),
                "clients",
            ),
            (json!({ "title": title, "from": from }), "compromised"),
            (json!({ "title": title, "organisations": [ce1] }), "from"),
            (
                json!({ "title": title, "organisations": [ce1], "from": "hier" }),
                "from",
            ),
            (
                json!({ "title": title, "organisations": [ce1], "from": future }),
                "to",
            ),
            (
                json!({ "title": title, "organisations": [ce1], "from": from, "to": from }),
                "to",
            ),
            (json!({ "organisations": [ce1], "from": from }), "title"),
            (
                json!({ "title": "  ", "organisations": [ce1], "from": from }),
                "title",
            ),
            (
                json!({ "title": "a\u{7}b", "organisations": [ce1], "from": from }),
                "title",
            ),
            (
                json!({ "title": title, "organisations": [ce1], "from": from, "aware_at": future }),
                "aware_at",
            ),
            (json!({ "title": title, "alert": 424242 }), "alert"),
            (
                json!({ "title": title, "organisations": [ce1], "from": from, "extra": 1 }),
                "extra",
            ),
        ];
        for (body, field) in &bad {
            let (s, answer) = app.post(Some("t.sec"), "/api/v1/incidents", body).await;
            assert_eq!(s, 400, "{backend:?} {body}: {answer}");
            assert_eq!(
                answer["error"]["field"], *field,
                "{backend:?} {body}: {answer}"
            );
        }
        let (s, list) = app.get(Some("t.dpo"), "/api/v1/incidents").await;
        assert_eq!(s, 200, "{list}");
        assert_eq!(list, json!({ "incidents": [] }), "{backend:?}");

        // Security opens it; the answer is the register's entry.
        let (s, opened) = app
            .post(Some("t.sec"), "/api/v1/incidents", &incident)
            .await;
        assert_eq!(s, 201, "{backend:?}: {opened}");
        let id = opened["id"].as_i64().unwrap();
        assert_eq!(opened["title"], title);
        assert_eq!(
            opened["compromised"],
            json!([{ "kind": "organisation", "id": ce1 }])
        );
        assert_eq!(opened["closed"], false);
        assert_eq!(opened["timeline"][0]["milestone"], "opened");
        assert_eq!(opened["notices"]["queued"], 0);
        let sec = app.account("t.sec");
        assert_eq!(
            opened["opened_by"],
            format!("account {} ({})", sec.account_id, sec.login.as_str())
        );

        // The DPO scopes it: exactly the four persons Cap emploi 1 read,
        // the refused attempt counted apart, bound to a signed checkpoint.
        let scope_path = format!("/api/v1/incidents/{id}/scope");
        let (s, body) = app
            .post(
                Some("t.dpo"),
                &format!("{scope_path}?persons=maybe"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["field"], "persons");
        let (s, scope) = app
            .post(
                Some("t.dpo"),
                &format!("{scope_path}?persons=true"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {scope}");
        let listed: HashSet<i64> = scope["person_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        let expected: HashSet<i64> = persons[..4].iter().map(|p| p.get()).collect();
        assert_eq!(listed, expected, "{backend:?}: {scope}");
        assert_eq!(scope["persons"], 4);
        assert_eq!(scope["reads"], 4);
        assert_eq!(scope["by_organisation"], json!({ ce1.to_string(): 4 }));
        assert_eq!(scope["refused"]["no_mandate"], 1, "{scope}");
        assert_eq!(scope["persons_only_attempted"], 1, "{scope}");
        let size = scope["tree_size"].as_u64().unwrap();
        assert!(size >= before, "{scope}");
        let checkpoint = scope["checkpoint"].as_str().unwrap();
        assert_eq!(
            checkpoint.lines().nth(1),
            Some(size.to_string().as_str()),
            "{checkpoint}"
        );
        // Without asking, no list of persons.
        let (s, again) = app.post(Some("t.sec"), &scope_path, &json!({})).await;
        assert_eq!(s, 200, "{again}");
        assert!(again.get("person_ids").is_none(), "{again}");
        assert_eq!(again["persons"], 4);

        // The timeline: steps with their notes; bad steps refused.
        let events = format!("/api/v1/incidents/{id}/events");
        for (body, field) in [
            (json!({ "milestone": "opened" }), "milestone"),
            (json!({ "milestone": "notified" }), "milestone"),
            (json!({ "milestone": "contained", "at": future }), "at"),
            (
                json!({ "milestone": "contained", "note": "a\u{0}" }),
                "note",
            ),
            (json!({ "milestone": "contained", "at": "demain" }), "at"),
        ] {
            let (s, answer) = app.post(Some("t.dpo"), &events, &body).await;
            assert_eq!(s, 400, "{backend:?} {body}: {answer}");
            assert_eq!(answer["error"]["field"], field, "{answer}");
        }
        let (s, body) = app
            .post(Some("t.ce1"), &events, &json!({ "milestone": "closed" }))
            .await;
        assert_eq!(s, 403, "{body}");
        let (s, body) = app
            .post(
                Some("t.sec"),
                "/api/v1/incidents/99999/events",
                &json!({ "milestone": "contained" }),
            )
            .await;
        assert_eq!(s, 404, "{body}");
        let (s, shown) = app
            .post(
                Some("t.sec"),
                &events,
                &json!({ "milestone": "contained", "note": "Comptes suspendus, clés révoquées" }),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {shown}");
        let steps: Vec<&str> = shown["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["milestone"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            ["opened", "scoped", "scoped", "contained"],
            "{shown}"
        );
        let (s, closed) = app
            .post(Some("t.dpo"), &events, &json!({ "milestone": "closed" }))
            .await;
        assert_eq!(s, 200, "{closed}");
        assert_eq!(closed["closed"], true);
        // Closed: nothing more, a 409 naming why.
        let (s, body) = app
            .post(Some("t.sec"), &events, &json!({ "milestone": "contained" }))
            .await;
        assert_eq!(s, 409, "{backend:?}: {body}");
        assert_error(&body, "conflict");
        let (s, body) = app.post(Some("t.sec"), &scope_path, &json!({})).await;
        assert_eq!(s, 409, "{backend:?}: {body}");
        let (s, shown) = app
            .get(Some("t.sec"), &format!("/api/v1/incidents/{id}"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(shown["timeline"].as_array().unwrap().len(), 5, "{shown}");

        // Steps racing a close: whatever the interleaving, nothing is
        // recorded after the close, and each step refused after it says so.
        let (s, second) = app
            .post(
                Some("t.sec"),
                "/api/v1/incidents",
                &json!({ "title": "Poste de travail volé", "accounts": [app.account("t.ml").account_id], "from": from }),
            )
            .await;
        assert_eq!(s, 201, "{second}");
        let events2 = format!("/api/v1/incidents/{}/events", second["id"]);
        let racing = (0..12).map(|n| {
            let milestone = if n == 6 { "closed" } else { "contained" };
            let (app, events2) = (&app, &events2);
            async move {
                app.post(Some("t.dpo"), events2, &json!({ "milestone": milestone }))
                    .await
                    .0
            }
        });
        let statuses = futures_util::future::join_all(racing).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 409),
            "{statuses:?}"
        );
        let (_, shown) = app
            .get(
                Some("t.dpo"),
                &format!("/api/v1/incidents/{}", second["id"]),
            )
            .await;
        let timeline = shown["timeline"].as_array().unwrap();
        assert_eq!(
            timeline.last().unwrap()["milestone"],
            "closed",
            "{backend:?}: {shown}"
        );
        let recorded = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(
            timeline.len(),
            1 + recorded,
            "{backend:?}: {statuses:?} {shown}"
        );

        let (s, list) = app.get(Some("t.sec"), "/api/v1/incidents").await;
        assert_eq!(s, 200);
        let ids: Vec<i64> = list["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [second["id"].as_i64().unwrap(), id], "newest first");

        // The ledger: every call under its author; refusals as such; the
        // officers' words in none.
        let leaves = app.leaves(before).await;
        let keepers = [
            app.account("t.sec").account_id,
            app.account("t.dpo").account_id,
        ];
        let recorded: Vec<&AuditLeaf> = leaves
            .iter()
            .filter(|l| l.action == LeafAction::IncidentRecord && l.decision.is_allow())
            .collect();
        assert!(recorded.iter().all(|l| keepers.contains(&l.account)));
        // Two openings, then contained and closed on the first, and the
        // second's steps that got in; a step that passed its rehearsal and
        // then lost the race to the close has its allow leaf followed by a
        // deny leaf pointing at it ("not made").
        let undone = leaves
            .iter()
            .filter(|l| {
                l.action == LeafAction::IncidentRecord
                    && !l.decision.is_allow()
                    && l.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("not made ("))
            })
            .count();
        assert_eq!(
            recorded.len() - undone,
            2 + 2 + recorded_steps(&statuses),
            "{backend:?}"
        );
        let refused_partners = leaves
            .iter()
            .filter(|l| {
                l.account == app.account("t.ce1").account_id
                    && l.decision == Decision::Deny(rempart_ledger::DenyReason::PolicyDenied)
            })
            .count();
        assert_eq!(refused_partners, 3, "open, list, event: {backend:?}");
        let scoped = leaves
            .iter()
            .filter(|l| l.action == LeafAction::Export && l.decision.is_allow())
            .count();
        assert_eq!(scoped, 2, "{backend:?}");
        for l in &leaves {
            let note = l.note.as_deref().unwrap_or("");
            assert!(
                !note.contains("Cap emploi 1") && !note.contains("Comptes"),
                "{note}"
            );
        }
        app.stop().await;
    }
}

/// Steps of the racing incident recorded (its close included).
fn recorded_steps(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

/// A working day at a normal rhythm: an advisor reads some thirty persons
/// of its caseload spread over the day, lists its caseload, searches,
/// sometimes asks for someone it does not follow. Nothing is refused and
/// no alert is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_rhythm_is_not_alerted() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let caseload: Vec<PersonId> = (0..120).map(|n| app.fresh_person(n)).collect();
        for p in &caseload {
            app.mandate("T-CE1", None, *p, Purpose::FollowUp, today(), None)
                .await;
        }
        let ce1 = app.account("t.ce1").account_id;
        for round in 0..30usize {
            // About one consultation every 12 minutes, six hours in all.
            app.advance(12 * 60).await;
            let p = caseload[(round * 7) % caseload.len()];
            let (s, body) = app.read("t.ce1", p, "follow_up").await;
            assert_eq!(s, 200, "{backend:?} round {round}: {body}");
            if round % 3 == 0 {
                let (s, body) = app
                    .get(Some("t.ce1"), "/api/v1/caseload?purpose=follow_up&limit=50")
                    .await;
                assert_eq!(s, 200, "{backend:?}: {body}");
            }
            if round % 10 == 5 {
                // Someone it does not follow: the ordinary 404.
                let (s, _) = app
                    .read("t.ce1", app.fresh_person(2000 + round), "follow_up")
                    .await;
                assert_eq!(s, 404);
            }
            if round % 5 == 2 {
                // Re-reading the same file is part of the work too.
                let (s, _) = app.read("t.ce1", p, "follow_up").await;
                assert_eq!(s, 200);
            }
        }
        app.guard.sync(app.clock.now()).await.unwrap();
        let alerts = app
            .guard
            .alerts(&AlertQuery {
                account_id: Some(ce1),
                limit: 1000,
                ..AlertQuery::default()
            })
            .await
            .unwrap();
        assert!(alerts.is_empty(), "{backend:?}: {alerts:?}");
        let state = app.store.account_by_id(ce1).await.unwrap().unwrap().state;
        assert_eq!(state, AccountState::Active);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_ledger_record() {
    for backend in BACKENDS {
        let mut app = spawn_app(backend).await;
        let p = app.fresh_person(80);
        app.mandate("T-FT", None, p, Purpose::FollowUp, today(), None)
            .await;
        let url = format!("{}/api/v1/persons/{p}?purpose=follow_up", app.base);
        let token = app.token("t.ft").to_string();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let url = url.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut indexes = Vec::new();
                for _ in 0..200 {
                    match client.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap();
                            indexes.push(v["ledger_index"].as_u64().unwrap());
                        }
                        // Refused connections once the server stops accepting.
                        _ => break,
                    }
                }
                indexes
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.server.take().unwrap().stop().await.unwrap();
        let mut answered = Vec::new();
        for t in tasks {
            answered.extend(t.await.unwrap());
        }
        assert!(!answered.is_empty());
        // Appends were durable before each answer: every answered read is there.
        let leaves = app.leaves(0).await;
        for index in &answered {
            let leaf = &leaves[*index as usize];
            assert_eq!(leaf.person, Some(p), "{backend:?}");
            assert!(leaf.reveals_person_data());
        }
        println!(
            "{backend:?}: {} answers before shutdown, all in the ledger",
            answered.len()
        );
        app.stop().await;
    }
}

// ---------------------------------------------------------------------------
// No account is born alone: requests, four-eyes decisions, resets, reviews.
// ---------------------------------------------------------------------------

impl TestApp {
    async fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        answer(req.send().await.unwrap()).await
    }

    async fn post_as(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        answer(req.send().await.unwrap()).await
    }

    /// A manager's request for an account in organisation `org`.
    async fn request_account(
        &self,
        as_login: &str,
        org: &str,
        login: &str,
        role: &str,
    ) -> (u16, Value) {
        self.post(
            Some(as_login),
            &format!("/api/v1/organisations/{}/account-requests", self.org(org)),
            &json!({"login": login, "role": role}),
        )
        .await
    }

    /// An account created straight in the store (as an import would), with
    /// a credential.
    async fn extra_account(&self, login: &str, org: &str, role: Role) -> (AccountRecord, String) {
        let (_, refused) = self
            .store
            .upsert_accounts(vec![Account {
                login: r(login),
                organisation: r(org),
                role,
                state: AccountState::Active,
                requested_by: None,
                approved_by: Some(r("t.officer")),
            }])
            .await
            .unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let a = self
            .store
            .account_by_login(&r(login))
            .await
            .unwrap()
            .unwrap();
        let issued = rempart_consult::issue_credential(
            &self.store,
            a.account_id,
            Duration::days(1),
            Utc::now(),
        )
        .await
        .unwrap();
        (a, issued.token.as_str().to_string())
    }
}

impl TestApp {
    /// An officer of a second France Travail agency (`T-FT2`), outside
    /// every test organisation: the four-eyes decider of requests made
    /// from `T-FT`. Returns its credential.
    async fn other_agency_officer(&self) -> String {
        self.store
            .upsert_organisations(vec![Organisation {
                code: r("T-FT2"),
                kind: OrganisationKind::FranceTravail,
                name: "Test T-FT2".into(),
                departement: Some("69".into()),
            }])
            .await
            .unwrap();
        self.extra_account("t.officer3", "T-FT2", Role::Officer)
            .await
            .1
    }
}

fn deny_reasons(leaves: &[AuditLeaf]) -> Vec<rempart_ledger::DenyReason> {
    leaves
        .iter()
        .filter_map(|l| match l.decision {
            Decision::Deny(r) => Some(r),
            Decision::Allow => None,
        })
        .collect()
}

/// December 2025: a Mission Locale manager's account, taken over, creates
/// accounts and reads with them. Here the accounts it asks for cannot work
/// until an officer of another organisation approves them; the burst is an
/// alert in the ledger; an officer of the same organisation cannot approve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_december_2025_scenario_a_hijacked_manager_cannot_create_working_accounts() {
    use rempart_ledger::DenyReason;
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let mlm = app.account("t.mlm").account_id;
        let officer = app.account("t.officer").account_id;

        // 1. A burst of five requests: all recorded, as requested accounts.
        let before = app.ledger_size().await;
        let mut ids = Vec::new();
        for n in 1..=5 {
            let (s, body) = app
                .request_account("t.mlm", "T-ML", &format!("ml.new{n}"), "agent")
                .await;
            assert_eq!(s, 201, "{backend:?}: {body}");
            assert_eq!(body["state"], "requested");
            assert_eq!(body["role"], "agent");
            assert_eq!(body["organisation_id"], json!(app.org("T-ML")));
            assert_eq!(body["requested_by"], json!(mlm));
            assert_eq!(body["decided_by"], Value::Null);
            assert_eq!(body["dormant"], false);
            assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
            ids.push(AccountId::new(body["id"].as_i64().unwrap()));
        }
        // …and the burst is an alert in the ledger, from the third request on.
        let leaves = app.leaves(before).await;
        assert!(leaves.iter().all(|l| l.action == LeafAction::AccountRequest
            && l.account == mlm
            && l.decision == Decision::Allow));
        let alerts: Vec<&AuditLeaf> = leaves
            .iter()
            .filter(|l| rempart_consult::is_alert(l))
            .collect();
        let expected = 5 - (rempart_consult::BURST_REQUESTS as usize - 1);
        assert_eq!(alerts.len(), expected, "{backend:?}: {leaves:?}");
        assert_eq!(leaves.len(), 5 + expected);
        assert_eq!(
            alerts.last().unwrap().note.as_deref(),
            Some("alert: burst of 5 account requests in 60 min")
        );

        // 2. None of them can work: no credential is issued to a requested
        //    account, and one planted in the store is refused at the door.
        for id in &ids {
            let refused =
                rempart_consult::issue_credential(&app.store, *id, Duration::days(1), Utc::now())
                    .await;
            assert!(
                matches!(
                    refused,
                    Err(rempart_consult::Refusal::Invalid { field: "account_id", ref reason })
                        if reason.contains("is requested")
                ),
                "{refused:?}"
            );
        }
        let planted =
            rempart_consult::authenticate::issue(&app.store, ids[4], Duration::days(1), Utc::now())
                .await
                .unwrap();
        let planted = planted.token.as_str().to_string();
        let before = app.ledger_size().await;
        for path in ["/api/v1/me", "/api/v1/caseload?purpose=follow_up"] {
            let (s, body) = app.get_as(&planted, path).await;
            assert_eq!(s, 403, "{backend:?} {path}: {body}");
            assert_error(&body, "account_inactive");
        }
        // Even a mandate naming the requested account opens nothing.
        let p = app.fresh_person(90);
        app.store
            .grant_mandate(NewMandate {
                reference: r(&unique("TM")),
                organisation_id: app.org("T-ML"),
                account_id: Some(ids[4]),
                person_id: p,
                purpose: Purpose::FollowUp,
                valid_from: today(),
                valid_to: None,
                source: r("test"),
            })
            .await
            .unwrap();
        let (s, _) = app
            .get_as(&planted, &format!("/api/v1/persons/{p}?purpose=follow_up"))
            .await;
        assert_eq!(s, 403, "a requested account reads nothing");
        let leaves = app.leaves(before).await;
        assert_eq!(deny_reasons(&leaves), vec![DenyReason::AccountInactive; 3]);
        assert!(leaves.iter().all(|l| l.account == ids[4]));

        // 3. The requester cannot approve, nor can an officer of the same
        //    Mission Locale, nor an agent; the officers' queue shows them.
        let (_, ml_officer) = app.extra_account("t.mlo", "T-ML", Role::Officer).await;
        let approve = |id: AccountId| format!("/api/v1/account-requests/{id}/approve");
        let before = app.ledger_size().await;
        let (s, body) = app.post(Some("t.mlm"), &approve(ids[0]), &json!({})).await;
        assert_eq!(s, 403, "{body}");
        assert_error(&body, "forbidden");
        let (s, _) = app.post_as(&ml_officer, &approve(ids[0]), &json!({})).await;
        assert_eq!(s, 403);
        let (s, _) = app.post(Some("t.ml"), &approve(ids[0]), &json!({})).await;
        assert_eq!(s, 403);
        let leaves = app.leaves(before).await;
        assert_eq!(leaves.len(), 3, "every refusal is ledgered");
        assert!(leaves.iter().all(|l| l.action == LeafAction::AccountApprove
            && l.note.as_deref() == Some(format!("account {}", ids[0]).as_str())));
        // The store refuses the same-organisation officer too, whoever calls it.
        let ml_officer_id = app
            .store
            .account_by_login(&r("t.mlo"))
            .await
            .unwrap()
            .unwrap()
            .account_id;
        let err = app
            .auth
            .decide_account(ids[0], ml_officer_id, true, Utc::now())
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid request: officer_id: ")
                && err.to_string().contains("organisation (four eyes)"),
            "{err}"
        );
        let (s, pending) = app.get(Some("t.officer"), "/api/v1/account-requests").await;
        assert_eq!(s, 200, "{pending}");
        // (The generated population has requested accounts of its own.)
        let pending_ids: Vec<AccountId> = pending["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| AccountId::new(e["id"].as_i64().unwrap()))
            .filter(|id| ids.contains(id))
            .collect();
        assert_eq!(pending_ids, ids, "oldest first, all still pending");
        assert_eq!(
            app.get(Some("t.mlm"), "/api/v1/account-requests").await.0,
            403
        );

        // 4. An officer of another organisation decides.
        let (s, body) = app
            .post(Some("t.officer"), &approve(ids[0]), &json!({}))
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        assert_eq!(body["state"], "active");
        let (s, _) = app
            .post(Some("t.officer2"), &approve(ids[0]), &json!({}))
            .await;
        assert_eq!(s, 404, "decided once");
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/account-requests/{}/reject", ids[1]),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["state"], "disabled");
        let history = app.auth.lifecycle(ids[0]).await.unwrap().unwrap();
        assert_eq!(history.requested_by, Some(mlm));
        assert_eq!(history.decided_by, Some(officer));

        // 5. Approved, it authenticates, with an empty caseload.
        let issued =
            rempart_consult::issue_credential(&app.store, ids[0], Duration::days(1), Utc::now())
                .await
                .unwrap();
        let token = issued.token.as_str().to_string();
        let (s, me) = app.get_as(&token, "/api/v1/me").await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(me["login"], "ml.new1");
        let (s, page) = app
            .get_as(&token, "/api/v1/caseload?purpose=follow_up&limit=1000")
            .await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(
            page["entries"],
            json!([]),
            "no mandate came with the account"
        );
        // The rejected one never works.
        assert!(matches!(
            rempart_consult::issue_credential(&app.store, ids[1], Duration::days(1), Utc::now())
                .await,
            Err(rempart_consult::Refusal::Invalid { field: "account_id", ref reason })
                if reason.contains("is disabled")
        ));

        // 6. The review shows who asked and who approved.
        let review = format!("/api/v1/organisations/{}/accounts/review", app.org("T-ML"));
        let (s, body) = app.get(Some("t.sec"), &review).await;
        assert_eq!(s, 200, "{body}");
        let rows = body["accounts"].as_array().unwrap();
        let row = |login: &str| rows.iter().find(|a| a["login"] == login).cloned();
        let new1 = row("ml.new1").unwrap();
        assert_eq!(
            (
                new1["state"].clone(),
                new1["requested_by"].clone(),
                new1["decided_by"].clone()
            ),
            (json!("active"), json!(mlm), json!(officer))
        );
        assert!(row("ml.new2").is_none(), "a rejected account is disabled");
        assert_eq!(row("ml.new3").unwrap()["state"], "requested");
        assert_eq!(
            row("t.ml").unwrap()["dormant"],
            Value::Null,
            "imported: unknown"
        );
        assert_eq!(app.get(Some("t.officer"), &review).await.0, 200);
        assert_eq!(app.get(Some("t.mlm"), &review).await.0, 403);
        app.stop().await;
    }
}

/// The review's four-eyes detours, over HTTP, each refused with a 403
/// ledgered `four_eyes` and the account left where it was: (a) suspend a
/// requested account then reactivate it; (b) reactivate a rejected one;
/// (c) a reset of every factor approved for a never-approved account,
/// hoping for its activation code; (d) an officer approving (or issuing
/// the code of) an account asked for by a manager of their own agency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_cannot_be_walked_around() {
    use rempart_ledger::DenyReason;
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let state_of = |id: AccountId| {
            let app = &app;
            async move {
                let a = app.store.account_by_id(id).await.unwrap().unwrap();
                let h = app.auth.lifecycle(id).await.unwrap().unwrap();
                (a.state, h.decided_by)
            }
        };
        let refused_four_eyes = |before: u64, action: LeafAction| {
            let app = &app;
            async move {
                let leaves = app.leaves(before).await;
                assert_eq!(
                    deny_reasons(&leaves),
                    vec![DenyReason::FourEyes],
                    "{backend:?}: {leaves:?}"
                );
                assert_eq!(leaves[0].action, action, "{backend:?}");
            }
        };
        let request = |login: &'static str| {
            let app = &app;
            async move {
                let (s, body) = app.request_account("t.mlm", "T-ML", login, "agent").await;
                assert_eq!(s, 201, "{backend:?}: {body}");
                AccountId::new(body["id"].as_i64().unwrap())
            }
        };
        let suspend = |id: AccountId| format!("/api/v1/accounts/{id}/suspend");
        let reactivate = |id: AccountId| format!("/api/v1/accounts/{id}/reactivate");

        // (a) A requested account is neither suspended nor, after that,
        //     reactivated: it stays requested, undecided.
        let a = request("ml.detour-a").await;
        for (path, action) in [
            (suspend(a), LeafAction::AccountSuspend),
            (reactivate(a), LeafAction::AccountReactivate),
        ] {
            let before = app.ledger_size().await;
            let (s, body) = app.post(Some("t.officer"), &path, &json!({})).await;
            assert_eq!(s, 403, "{backend:?} {path}: {body}");
            assert_error(&body, "forbidden");
            refused_four_eyes(before, action).await;
        }
        assert_eq!(state_of(a).await, (AccountState::Requested, None));
        // Two officers racing a suspension and a reactivation change nothing either.
        let (to_suspend, to_reactivate, empty) = (suspend(a), reactivate(a), json!({}));
        let (x, y) = tokio::join!(
            app.post(Some("t.officer"), &to_suspend, &empty),
            app.post(Some("t.officer2"), &to_reactivate, &empty),
        );
        assert_eq!((x.0, y.0), (403, 403), "{backend:?}");
        assert_eq!(state_of(a).await, (AccountState::Requested, None));

        // (b) A rejected account is final.
        let b = request("ml.detour-b").await;
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/account-requests/{b}/reject"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        let officer = app.account("t.officer").account_id;
        for (who, path, action) in [
            ("t.officer", reactivate(b), LeafAction::AccountReactivate),
            ("t.officer2", reactivate(b), LeafAction::AccountReactivate),
            ("t.officer2", suspend(b), LeafAction::AccountSuspend),
        ] {
            let before = app.ledger_size().await;
            let (s, body) = app.post(Some(who), &path, &json!({})).await;
            assert_eq!(s, 403, "{backend:?} {who} {path}: {body}");
            refused_four_eyes(before, action).await;
        }
        assert_eq!(
            state_of(b).await,
            (AccountState::Disabled, Some(officer)),
            "{backend:?}"
        );

        // (c) A reset of every factor of a never-approved account is not
        //     approved, and hands out no activation code.
        let c = request("ml.detour-c").await;
        let (s, reset) = app
            .post(
                Some("t.mlm"),
                &format!("/api/v1/accounts/{c}/reset-requests"),
                &json!({"kind": "all"}),
            )
            .await;
        assert_eq!(s, 201, "{backend:?}: {reset}");
        let before = app.ledger_size().await;
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/reset-requests/{}/approve", reset["id"]),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403, "{backend:?}: {body}");
        assert!(body.get("activation_code").is_none());
        refused_four_eyes(before, LeafAction::CredentialReset).await;
        assert!(app.auth.activation(c).await.unwrap().is_none());
        assert_eq!(state_of(c).await, (AccountState::Requested, None));
        // An account already active without an approval (what the detour
        // left behind before this rule): its reset is refused too, and no
        // code comes from the command line's door (the store's issue).
        let (_, refused) = app
            .store
            .upsert_accounts(vec![Account {
                login: r("ml.detour-c2"),
                organisation: r("T-ML"),
                role: Role::Agent,
                state: AccountState::Active,
                requested_by: Some(r("t.mlm")),
                approved_by: None,
            }])
            .await
            .unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let c2 = app
            .store
            .account_by_login(&r("ml.detour-c2"))
            .await
            .unwrap()
            .unwrap()
            .account_id;
        let (s, reset) = app
            .post(
                Some("t.mlm"),
                &format!("/api/v1/accounts/{c2}/reset-requests"),
                &json!({"kind": "all"}),
            )
            .await;
        assert_eq!(s, 201, "{backend:?}: {reset}");
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/reset-requests/{}/approve", reset["id"]),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403, "{backend:?}: {body}");
        assert!(app.auth.activation(c2).await.unwrap().is_none());
        let code = |account_id: AccountId, issued_by: AccountId| rempart_storage::NewActivation {
            account_id,
            digest: [7; 32],
            issued_by,
            issued_at: Utc::now(),
            expires_at: Utc::now() + Duration::hours(1),
        };
        let issued = app.auth.issue_activation(code(c2, officer)).await;
        assert!(issued.is_err(), "{backend:?}: {issued:?}");
        assert!(app.auth.activation(c2).await.unwrap().is_none());

        // (d) An agency manager's request: no officer of the agency
        //     approves it, or gets its code; an officer of another agency
        //     does, and alone receives the code.
        let (s, body) = app
            .request_account("t.ftm", "T-FT", "ft.detour-d", "agent")
            .await;
        assert_eq!(s, 201, "{backend:?}: {body}");
        let d = AccountId::new(body["id"].as_i64().unwrap());
        for who in ["t.officer", "t.officer2"] {
            let before = app.ledger_size().await;
            let (s, body) = app
                .post(
                    Some(who),
                    &format!("/api/v1/account-requests/{d}/approve"),
                    &json!({}),
                )
                .await;
            assert_eq!(s, 403, "{backend:?} {who}: {body}");
            assert!(body.get("activation_code").is_none());
            refused_four_eyes(before, LeafAction::AccountApprove).await;
        }
        assert_eq!(state_of(d).await, (AccountState::Requested, None));
        let elsewhere = app.other_agency_officer().await;
        let (s, body) = app
            .post_as(
                &elsewhere,
                &format!("/api/v1/account-requests/{d}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{backend:?}: {body}");
        assert!(body["activation_code"].is_string(), "{body}");
        // An officer of the agency cannot re-issue (and so take) the code.
        let insider = app.account("t.officer2").account_id;
        let issued = app.auth.issue_activation(code(d, insider)).await;
        assert!(issued.is_err(), "{backend:?}: {issued:?}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_requests_are_for_managers_in_their_own_organisation_and_lesser_roles() {
    use rempart_ledger::DenyReason;
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        // A manager cannot ask for an officer, security or DPO account.
        let before = app.ledger_size().await;
        for role in ["officer", "security", "dpo"] {
            let (s, body) = app.request_account("t.mlm", "T-ML", "ml.boss", role).await;
            assert_eq!(s, 403, "{backend:?} {role}: {body}");
            assert_error(&body, "forbidden");
        }
        // Nor an account in another organisation.
        let (s, _) = app
            .request_account("t.mlm", "T-CE1", "ce.new", "agent")
            .await;
        assert_eq!(s, 403);
        // Agents and officers cannot ask at all.
        let (s, _) = app
            .request_account("t.ml", "T-ML", "ml.friend", "agent")
            .await;
        assert_eq!(s, 403);
        let (s, _) = app
            .request_account("t.officer", "T-FT", "ft.new", "agent")
            .await;
        assert_eq!(s, 403);
        let leaves = app.leaves(before).await;
        assert_eq!(deny_reasons(&leaves), vec![DenyReason::PolicyDenied; 6]);
        assert!(
            leaves
                .iter()
                .all(|l| l.action == LeafAction::AccountRequest)
        );
        assert!(
            app.store
                .account_by_login(&r("ml.boss"))
                .await
                .unwrap()
                .is_none()
        );

        // A login already used is a 400 naming the field.
        let (s, body) = app.request_account("t.mlm", "T-ML", "t.ce1", "agent").await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["field"], "login");
        // Bad input: 400 naming the field for a caller, 401 for a stranger.
        let path = format!("/api/v1/organisations/{}/account-requests", app.org("T-ML"));
        for (body, field) in [
            (json!({"login": "ml.x", "role": "boss"}), "role"),
            (json!({"login": " ml.x", "role": "agent"}), "login"),
            (json!({"login": "ml x", "role": "agent"}), "login"),
            (json!({"login": "ml.x"}), "role"),
            (
                json!({"login": "ml.x", "role": "agent", "extra": 1}),
                "extra",
            ),
        ] {
            let (s, answer) = app.post(Some("t.mlm"), &path, &body).await;
            assert_eq!(s, 400, "{body}: {answer}");
            assert_error(&answer, "invalid_request");
            assert_eq!(answer["error"]["field"], field, "{answer}");
            assert_eq!(app.post(None, &path, &body).await.0, 401);
        }
        let (s, _) = app
            .post(
                Some("t.mlm"),
                "/api/v1/organisations/abc/account-requests",
                &json!({"login": "ml.x", "role": "agent"}),
            )
            .await;
        assert_eq!(s, 400);
        for path in [
            "/api/v1/account-requests",
            "/api/v1/reset-requests",
            "/api/v1/organisations/1/accounts/review",
        ] {
            assert_eq!(app.get(None, path).await.0, 401, "{path}");
        }
        // A France Travail manager's request is decided by an officer of
        // another agency.
        let (s, body) = app
            .request_account("t.ftm", "T-FT", "ft.new", "manager")
            .await;
        assert_eq!(s, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        let elsewhere = app.other_agency_officer().await;
        let (s, body) = app
            .post_as(
                &elsewhere,
                &format!("/api/v1/account-requests/{id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!((s, body["role"].clone()), (200, json!("manager")), "{body}");
        // Every new route is in the document.
        let (_, doc) = app.get(None, "/api/v1/openapi.json").await;
        for path in [
            "/api/v1/organisations/{id}/account-requests",
            "/api/v1/account-requests",
            "/api/v1/account-requests/{id}/approve",
            "/api/v1/account-requests/{id}/reject",
            "/api/v1/accounts/{id}/reset-requests",
            "/api/v1/reset-requests",
            "/api/v1/reset-requests/{id}/approve",
            "/api/v1/reset-requests/{id}/reject",
            "/api/v1/organisations/{id}/accounts/review",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        app.stop().await;
    }
}

/// February 2024 came through a help-desk password reset. Here a reset is
/// asked by one account and approved by an officer who is neither the
/// asker nor the account; approval ends access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_need_a_second_officer_and_end_access() {
    use rempart_ledger::DenyReason;
    use rempart_storage::{StoredSession, StoredTotp};
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let ml = app.account("t.ml").account_id;
        let reset_of = |id: AccountId| format!("/api/v1/accounts/{id}/reset-requests");
        // Who may ask.
        let before = app.ledger_size().await;
        let all = json!({"kind": "all"});
        let (s, _) = app
            .post(
                Some("t.ml"),
                &reset_of(app.account("t.ce1").account_id),
                &all,
            )
            .await;
        assert_eq!(s, 403, "agents do not ask");
        let (s, _) = app
            .post(
                Some("t.mlm"),
                &reset_of(app.account("t.ce1").account_id),
                &all,
            )
            .await;
        assert_eq!(
            s, 404,
            "another organisation's account looks missing to a manager"
        );
        let (s, _) = app
            .post(Some("t.mlm"), &reset_of(AccountId::new(i64::MAX - 1)), &all)
            .await;
        assert_eq!(s, 404);
        let (s, _) = app
            .post(
                Some("t.mlm"),
                &reset_of(app.account("t.mlm").account_id),
                &all,
            )
            .await;
        assert_eq!(s, 403, "not one's own");
        let leaves = app.leaves(before).await;
        assert_eq!(
            deny_reasons(&leaves),
            vec![
                DenyReason::PolicyDenied,
                DenyReason::InvalidRequest,
                DenyReason::InvalidRequest,
                DenyReason::FourEyes
            ]
        );
        let (s, body) = app
            .post(Some("t.mlm"), &reset_of(ml), &json!({"kind": "everything"}))
            .await;
        assert_eq!((s, body["error"]["field"].clone()), (400, json!("kind")));

        // The account has a TOTP factor, a live browser session and an API
        // credential that works.
        let now = Utc::now();
        app.auth
            .set_totp(StoredTotp {
                account_id: ml,
                sealed_secret: vec![7; 40],
                last_step: None,
                enrolled_at: now,
            })
            .await
            .unwrap();
        app.auth
            .insert_session(StoredSession {
                id_digest: [9; 32],
                account_id: ml,
                jkt: "A".repeat(43),
                method: "password_totp".into(),
                created_at: now,
                last_seen_at: now,
                absolute_expiry: now + Duration::hours(10),
                idle_timeout_secs: 1800,
                high_risk: false,
                step_up_at: None,
                ended_at: None,
                end_reason: None,
            })
            .await
            .unwrap();
        assert_eq!(app.get(Some("t.ml"), "/api/v1/me").await.0, 200);

        // Its manager asks; it still works while the request waits.
        let (s, reset) = app.post(Some("t.mlm"), &reset_of(ml), &all).await;
        assert_eq!(s, 201, "{backend:?}: {reset}");
        assert_eq!(reset["approved"], Value::Null);
        assert_eq!(
            reset["requested_by"],
            json!(app.account("t.mlm").account_id)
        );
        let reset_id = reset["id"].as_i64().unwrap();
        assert_eq!(app.get(Some("t.ml"), "/api/v1/me").await.0, 200);
        let (s, pending) = app.get(Some("t.officer"), "/api/v1/reset-requests").await;
        assert_eq!(s, 200);
        assert!(
            pending["resets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == reset_id)
        );
        assert_eq!(
            app.get(Some("t.mlm"), "/api/v1/reset-requests").await.0,
            403
        );

        // An officer who asked cannot approve: four eyes, ledgered.
        let ce1b = app.account("t.ce1b").account_id;
        let (s, own) = app
            .post(Some("t.officer"), &reset_of(ce1b), &json!({"kind": "totp"}))
            .await;
        assert_eq!(s, 201, "{own}");
        let own_id = own["id"].as_i64().unwrap();
        let before = app.ledger_size().await;
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/reset-requests/{own_id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403, "{body}");
        let leaves = app.leaves(before).await;
        assert_eq!(deny_reasons(&leaves), vec![DenyReason::FourEyes]);
        assert_eq!(leaves[0].action, LeafAction::CredentialReset);
        // Nor can an officer of the same agency: four eyes means two
        // organisations, France Travail agencies included.
        let (s, body) = app
            .post(
                Some("t.officer2"),
                &format!("/api/v1/reset-requests/{own_id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 403, "{body}");
        let elsewhere = app.other_agency_officer().await;
        let (s, body) = app
            .post_as(
                &elsewhere,
                &format!("/api/v1/reset-requests/{own_id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            (
                body["approved"].clone(),
                body["credentials_revoked"].clone()
            ),
            (json!(true), json!(0))
        );
        assert_eq!(
            app.get(Some("t.ce1b"), "/api/v1/me").await.0,
            200,
            "a TOTP reset leaves API credentials"
        );

        // An outside officer approves the manager's request: access ends.
        let (s, body) = app
            .post(
                Some("t.officer"),
                &format!("/api/v1/reset-requests/{reset_id}/approve"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["approved"], true);
        assert_eq!(
            body["decided_by"],
            json!(app.account("t.officer").account_id)
        );
        assert_eq!(body["credentials_revoked"], 1);
        let (s, body) = app.get(Some("t.ml"), "/api/v1/me").await;
        assert_eq!(s, 401, "the API credential is revoked: {body}");
        assert!(
            app.auth.totp(ml).await.unwrap().is_none(),
            "the factor is gone"
        );
        let (session, _) = app.auth.session([9; 32]).await.unwrap().unwrap();
        assert_eq!(session.end_reason.as_deref(), Some("reset"));
        assert!(
            app.auth
                .lifecycle(ml)
                .await
                .unwrap()
                .unwrap()
                .next_session_high_risk
        );
        let (s, _) = app
            .post(
                Some("t.officer2"),
                &format!("/api/v1/reset-requests/{reset_id}/reject"),
                &json!({}),
            )
            .await;
        assert_eq!(s, 404, "decided once");

        // A rejected reset changes nothing.
        let (s, body) = app
            .post(
                Some("t.officer"),
                &reset_of(ce1b),
                &json!({"kind": "passkeys"}),
            )
            .await;
        assert_eq!(s, 201);
        // (Decided, even to reject, from outside the requester's agency.)
        let (s, body) = app
            .post_as(
                &elsewhere,
                &format!("/api/v1/reset-requests/{}/reject", body["id"]),
                &json!({}),
            )
            .await;
        assert_eq!((s, body["approved"].clone()), (200, json!(false)), "{body}");
        assert_eq!(app.get(Some("t.ce1b"), "/api/v1/me").await.0, 200);
        app.stop().await;
    }
}
