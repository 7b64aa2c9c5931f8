//! `rempart bench replicas`: several `rempart serve` processes (this very
//! binary) on one PostgreSQL, behind a real HAProxy, under load, with one
//! thing killed on purpose halfway: a staging replica (`kill -9`), the
//! integrating one, or the database (its connections cut and refused for a
//! few seconds by a TCP proxy in front of it, as a restart would).
//!
//! Afterwards it checks what the design promises and fails if it does not
//! hold: every answer 200 carries its leaf (an index or a receipt) and that
//! leaf is in the log exactly once, about the person read; a takeover comes
//! within 10 s; the log verifies from the public key. It prints
//! consultations/s, p50/p99, the errors the clients saw, the takeover or
//! outage time, and the integration lag (answer → index, answer → signed
//! checkpoint), p50/p99, in one `RESULT` line.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rempart_domain::{OrganisationKind, PersonId, Purpose};
use rempart_ledger::{AuditLeaf, LeafRef, LedgerStore};

use crate::accounts::issue;
use crate::bench::busiest_agent;
use crate::location::Location;

/// What is killed halfway through the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kill {
    /// Nothing.
    None,
    /// A replica that stages (`kill -9`).
    Replica,
    /// The replica that integrates the ledger (`kill -9`).
    Integrator,
    /// The database, for `--outage-secs`: every connection cut, new ones
    /// refused.
    Database,
}

/// Which guard configuration the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuardKind {
    /// bench/guard-load-test.toml.
    Bench,
    /// The defaults.
    Real,
}

/// `rempart bench replicas`.
#[derive(Args)]
pub struct BenchReplicasArgs {
    /// The data directory (keys) and the PostgreSQL database, set up and
    /// imported beforehand (`rempart init`, `rempart import`).
    #[command(flatten)]
    pub location: Location,
    /// Replicas to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// Clients talk to the first replica directly, with no balancer.
    #[arg(long)]
    pub direct: bool,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// What to kill halfway.
    #[arg(long, value_enum, default_value = "none")]
    pub kill: Kill,
    /// How long the database stays away with `--kill database`.
    #[arg(long, default_value_t = 3)]
    pub outage_secs: u64,
    /// The replicas' guard: `bench` (bench/guard-load-test.toml, every
    /// quota far away: the cost of deciding, not of refusing) or `real`
    /// (the defaults: one credential reading in bulk is contained; the
    /// RESULT line counts the records it read before).
    #[arg(long, value_enum, default_value = "bench")]
    pub guard: GuardKind,
    /// A guard configuration file for the replicas instead (`--guard` is
    /// then ignored).
    #[arg(long)]
    pub guard_config: Option<PathBuf>,
    /// Also print p50/p99/max and the rate for each interval of this many
    /// seconds (a soak: the tail over time, minute by minute); 0: none.
    #[arg(long, default_value_t = 0)]
    pub report_secs: u64,
    /// Check the leaves of this many answers, spread over the run (0: every
    /// one; a soak's millions of answers are sampled).
    #[arg(long, default_value_t = 0)]
    pub check_answers: usize,
    /// The HAProxy binary (Debian's `haproxy` package puts it here).
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    pub haproxy: PathBuf,
}

/// How long the load waits for every replica's guard to have synced once
/// since the last replica started (the default sync interval and a second).
const GUARD_SETTLE: Duration = Duration::from_secs(6);

/// A child process, killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `wait` for the exit; `kill -9` after that.
    async fn terminate(&mut self, wait: Duration) -> Result<bool> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill9();
        Ok(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> Result<Proc> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { child })
}

/// One HAProxy: HTTP in front of the replicas, or TCP in front of the
/// database.
fn haproxy(args: &BenchReplicasArgs, name: &str, config: &str, logs: &Path) -> Result<Proc> {
    let path = logs.join(format!("{name}.cfg"));
    std::fs::write(&path, config)?;
    let check = Command::new(&args.haproxy)
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .with_context(|| {
            format!(
                "running {} (Debian's haproxy package; scripts/test installs it)",
                args.haproxy.display()
            )
        })?;
    if !check.status.success() {
        bail!(
            "HAProxy refuses {}: {}",
            path.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    spawn(
        name,
        Command::new(&args.haproxy).arg("-db").arg("-f").arg(&path),
        logs,
    )
}

fn balancer_config(port: u16, replicas: &[u16]) -> String {
    let mut s = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
         \x20   retries 3\n    option redispatch\n    retry-on conn-failure\n\
         frontend rempart\n    bind 127.0.0.1:{port}\n    option forwardfor\n\
         \x20   default_backend replicas\n\
         backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n    default-server inter 500ms fall 2 rise 1\n"
    );
    for (i, p) in replicas.iter().enumerate() {
        s.push_str(&format!("    server r{i} 127.0.0.1:{p} check\n"));
    }
    s
}

fn database_proxy_config(port: u16, target: &str) -> String {
    format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n\
         listen postgres\n    bind 127.0.0.1:{port}\n    server db {target}\n"
    )
}

/// The database URL (`postgres://[user@]host:port/…`) with its
/// `host:port` replaced by the proxy's, and the `host:port` it named.
fn through_proxy(url: &str, port: u16) -> Result<(String, String)> {
    let needs =
        || anyhow::anyhow!("--kill database needs --database as postgres://[user@]host:port/db");
    let after_scheme = url.find("://").ok_or_else(needs)? + 3;
    let rest = &url[after_scheme..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let target = &authority[host_start..];
    if !target.contains(':') {
        return Err(needs());
    }
    let start = after_scheme + host_start;
    let proxied = format!(
        "{}127.0.0.1:{port}{}",
        &url[..start],
        &url[start + target.len()..]
    );
    Ok((proxied, target.to_string()))
}

/// What one answer said.
struct Answer {
    person: PersonId,
    leaf: Option<LeafRef>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    /// When each request started, in milliseconds from the load's start
    /// (beside `latencies_us`).
    starts_ms: Vec<u32>,
    answers: Vec<Answer>,
    /// Status (0: no answer at all) → count, for answers other than 200.
    errors: HashMap<u16, u64>,
    /// 200s whose body named no leaf.
    unledgered: u64,
}

/// `/readyz`'s body through `base`, if it answers 200.
async fn readyz(http: &reqwest::Client, base: &str) -> Option<serde_json::Value> {
    let r = http.get(format!("{base}/readyz")).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

async fn wait_ready(http: &reqwest::Client, base: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if readyz(http, base).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{base} not ready within {} s", within.as_secs())
}

fn leaf_of(body: &serde_json::Value) -> Option<LeafRef> {
    match (
        body["ledger_index"].as_u64(),
        body["ledger_receipt"].as_u64(),
    ) {
        (Some(i), None) => Some(LeafRef::Index(i)),
        (None, Some(r)) => Some(LeafRef::Receipt(r)),
        _ => None,
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |&us| f64::from(us) / 1000.0)
}

/// Runs the benchmark; fails if a promise does not hold.
pub async fn bench_replicas(args: &BenchReplicasArgs) -> Result<()> {
    // SQLite is one process: one replica, clients on it directly.
    let url = args.location.database.clone();
    if url.is_none() && !(args.replicas == 1 && args.direct && args.kill == Kill::None) {
        bail!("several replicas, a balancer or a kill need PostgreSQL: give --database");
    }
    let store = args.location.open_stores().await?.registry;
    let purpose = Purpose::FollowUp;
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
    else {
        bail!("no active Cap emploi agent with a caseload: import a generated population first");
    };
    if caseload.is_empty() {
        bail!("the chosen agent's caseload is empty");
    }
    let credential = issue(&store, &agent, 1).await?;
    let token = Arc::new(credential.token.as_str().to_string());
    let ledger = args.location.open_ledger_store().await?;
    let verifier = args.location.load_ledger_key()?.verifier();
    // Kept when something fails, for its logs.
    let logs = std::env::temp_dir().join(format!("rempart-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;

    // The database, through a TCP proxy that can be taken away.
    let mut db_proxy = None;
    // The proxy's configuration, to start it again after the outage.
    let mut db_proxy_config = String::new();
    let replica_url = if let (Kill::Database, Some(url)) = (args.kill, &url) {
        let port = free_port()?;
        let (proxied, target) = through_proxy(url, port)?;
        db_proxy_config = database_proxy_config(port, &target);
        db_proxy = Some(haproxy(args, "db-proxy", &db_proxy_config, &logs)?);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some(proxied)
    } else {
        url.clone()
    };

    let guard_config = logs.join("guard.toml");
    if args.guard == GuardKind::Bench {
        std::fs::write(&guard_config, crate::bench::BENCH_GUARD_TOML)?;
    }
    let lb_port = free_port()?;
    // The balancer's address as browsers would name it (WebAuthn refuses
    // an IP address), and as the clients here reach it.
    let public = format!("http://localhost:{lb_port}");
    let lb = format!("http://127.0.0.1:{lb_port}");
    let mut ports = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..args.replicas {
        let port = free_port()?;
        let mut cmd = Command::new(&exe);
        cmd.args(["serve", "--data"])
            .arg(&args.location.data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--public-url", &public])
            .args(["--drain-grace-ms", "1000"])
            .args(["--trusted-proxy", "127.0.0.1"])
            .env_remove("REMPART_GUARD_CONFIG")
            .env_remove("REMPART_DATABASE_URL")
            .env("RUST_LOG", "warn");
        if let Some(url) = &replica_url {
            cmd.args(["--database", url]);
        }
        if let Some(file) = &args.guard_config {
            cmd.arg("--guard-config").arg(file);
        } else if args.guard == GuardKind::Bench {
            cmd.arg("--guard-config").arg(&guard_config);
        }
        replicas.push(spawn(&format!("replica-{i}"), &mut cmd, &logs)?);
        // One at a time, so that the first integrates.
        wait_ready(
            &http,
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("replica {i} (its log: {}/replica-{i}.log)", &logs.display()))?;
        ports.push(port);
    }
    let mut balancer = None;
    let base = if args.direct {
        format!("http://127.0.0.1:{}", ports[0])
    } else {
        balancer = Some(haproxy(
            args,
            "balancer",
            &balancer_config(lb_port, &ports),
            &logs,
        )?);
        wait_ready(&http, &lb, Duration::from_secs(10)).await?;
        lb.clone()
    };
    if args.guard_config.is_some() || args.guard == GuardKind::Real {
        // A guard alone in the store does not exchange counts; the first
        // replica learns of the others at its next sync (5 s by default):
        // the load starts in the steady state, every guard knowing of all.
        tokio::time::sleep(GUARD_SETTLE).await;
    }
    let integrating = |body: &serde_json::Value| body["ledger"] == "integrating";
    let mut roles = Vec::new();
    for p in &ports {
        let body = readyz(&http, &format!("http://127.0.0.1:{p}")).await;
        roles.push(body.as_ref().is_some_and(integrating));
    }
    println!(
        "{} replica(s){}, {} client(s), {} s, kill {:?}; account {} ({} agent of {}), caseload {} persons; integrating: replica {}",
        args.replicas,
        if args.direct {
            ", clients on the first directly"
        } else {
            " behind HAProxy"
        },
        args.connections,
        args.seconds,
        args.kill,
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        roles
            .iter()
            .position(|r| *r)
            .map_or("none".to_string(), |i| i.to_string())
    );

    // The load.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let caseload = Arc::new(caseload);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for worker in 0..args.connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let (base, token, caseload, tally) =
            (base.clone(), token.clone(), caseload.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let mut mine = Tally::default();
            while Instant::now() < deadline {
                let person = caseload[rng.random_range(0..caseload.len())];
                let url = format!("{base}/api/v1/persons/{person}?purpose=follow_up");
                let t = Instant::now();
                let status = match client.get(&url).bearer_auth(token.as_str()).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value =
                            r.json().await.unwrap_or(serde_json::Value::Null);
                        if status == 200 {
                            let leaf = leaf_of(&body);
                            if leaf.is_none() {
                                mine.unledgered += 1;
                            }
                            mine.answers.push(Answer { person, leaf });
                        }
                        status
                    }
                    Err(_) => 0,
                };
                mine.latencies_us
                    .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                mine.starts_ms
                    .push(u32::try_from((t - start).as_millis()).unwrap_or(u32::MAX));
                if status != 200 {
                    *mine.errors.entry(status).or_default() += 1;
                    // A client that failed waits a little and tries again.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
            all.latencies_us.extend(mine.latencies_us);
            all.starts_ms.extend(mine.starts_ms);
            all.answers.extend(mine.answers);
            all.unledgered += mine.unledgered;
            for (s, n) in mine.errors {
                *all.errors.entry(s).or_default() += n;
            }
        }));
    }

    // Halfway, the kill.
    tokio::time::sleep_until((start + Duration::from_secs(args.seconds / 2)).into()).await;
    let killed_at = Instant::now();
    let mut takeover_ms = None;
    let mut outage_ms = None;
    match args.kill {
        Kill::None => {}
        Kill::Replica => {
            let i = roles
                .iter()
                .rposition(|r| !*r)
                .context("no staging replica to kill")?;
            replicas[i].kill9();
            println!("killed replica {i} (kill -9, staging)");
        }
        Kill::Integrator => {
            let i = roles
                .iter()
                .position(|r| *r)
                .context("no integrating replica")?;
            replicas[i].kill9();
            println!("killed replica {i} (kill -9, integrating)");
            let others: Vec<u16> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            'wait: while killed_at.elapsed() < Duration::from_secs(30) {
                for p in &others {
                    if readyz(&http, &format!("http://127.0.0.1:{p}"))
                        .await
                        .as_ref()
                        .is_some_and(integrating)
                    {
                        takeover_ms = Some(killed_at.elapsed().as_millis());
                        break 'wait;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Kill::Database => {
            if let Some(mut p) = db_proxy.take() {
                p.kill9();
            }
            println!("database away for {} s", args.outage_secs);
            tokio::time::sleep(Duration::from_secs(args.outage_secs)).await;
            db_proxy = Some(haproxy(args, "db-proxy-again", &db_proxy_config, &logs)?);
            // Until a consultation is answered again.
            let back = Instant::now();
            while back.elapsed() < Duration::from_secs(60) {
                let r = http
                    .get(format!(
                        "{base}/api/v1/persons/{}?purpose=follow_up",
                        caseload[0]
                    ))
                    .bearer_auth(token.as_str())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    outage_ms = Some(killed_at.elapsed().as_millis());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));

    // Every answer's leaf: integrated, once, about the person read.
    let mut indices = HashSet::new();
    let mut lost = 0u64;
    let mut wrong = 0u64;
    let mut duplicate = 0u64;
    let settle_deadline = Instant::now() + Duration::from_secs(15);
    let step = match args.check_answers {
        0 => 1,
        n => (tally.answers.len() / n).max(1),
    };
    for a in tally.answers.iter().step_by(step) {
        let Some(leaf) = a.leaf else { continue };
        let index = match leaf {
            LeafRef::Index(i) => Some(i),
            LeafRef::Receipt(r) => loop {
                if let Some(i) = ledger.index_of_receipt(r).await? {
                    break Some(i);
                }
                if Instant::now() > settle_deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
        };
        let Some(index) = index else {
            lost += 1;
            continue;
        };
        if !indices.insert(index) {
            duplicate += 1;
        }
        match ledger.leaves(index, 1).await?.first() {
            Some(row) => match AuditLeaf::decode(&row.data) {
                Ok(l) if l.person == Some(a.person) && l.reveals_person_data() => {}
                _ => wrong += 1,
            },
            None => lost += 1,
        }
    }
    let lags = checkpoint_lags(&ledger, &tally.answers).await?;

    // Stop the replicas gracefully (drain), then the balancers.
    let mut clean = 0;
    for r in replicas.iter_mut() {
        if matches!(r.child.try_wait(), Ok(None)) && r.terminate(Duration::from_secs(20)).await? {
            clean += 1;
        }
    }
    drop(balancer);
    drop(db_proxy);
    let report = rempart_ledger::verify(&ledger, &verifier)
        .await
        .context("the ledger does not verify")?;

    if args.report_secs > 0 {
        for line in intervals(&tally, args.report_secs, elapsed) {
            println!("{line}");
        }
    }
    tally.latencies_us.sort_unstable();
    let ok = tally.answers.len() as u64;
    let persons: HashSet<PersonId> = tally.answers.iter().map(|a| a.person).collect();
    let errors: u64 = tally.errors.values().sum();
    let mut error_list: Vec<String> = tally
        .errors
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    error_list.sort();
    println!(
        "RESULT replicas={} direct={} kill={:?} seconds={:.1} ok={ok} persons_read={} errors={errors} error_statuses={} consult_rps={:.1} p50_ms={:.3} p99_ms={:.3} unledgered={} lost={lost} wrong={wrong} duplicate={duplicate} takeover_ms={} outage_ms={} checkpoint_lag_p50_ms={:.1} checkpoint_lag_p99_ms={:.1} leaves={} clean_exits={clean}",
        args.replicas,
        args.direct,
        args.kill,
        elapsed,
        persons.len(),
        if error_list.is_empty() {
            "none".to_string()
        } else {
            error_list.join(",")
        },
        ok as f64 / elapsed,
        percentile(&tally.latencies_us, 0.50),
        percentile(&tally.latencies_us, 0.99),
        tally.unledgered,
        takeover_ms.map_or("-".to_string(), |t| t.to_string()),
        outage_ms.map_or("-".to_string(), |t| t.to_string()),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        report.leaves,
    );
    if tally.unledgered > 0 || lost > 0 || wrong > 0 || duplicate > 0 {
        bail!(
            "answers without their leaf: {} unledgered, {lost} not in the log, {wrong} wrong, {duplicate} twice (logs in {})",
            tally.unledgered,
            logs.display()
        );
    }
    if args.kill == Kill::Integrator && takeover_ms.is_none_or(|t| t > 10_000) {
        bail!("no takeover within 10 s");
    }
    if args.kill == Kill::Database && outage_ms.is_none() {
        bail!("consultations did not resume after the database came back");
    }
    if ok == 0 {
        bail!("no consultation answered");
    }
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}

/// One line per interval of `secs` seconds of the load: requests started
/// in it, their rate, p50, p99 and slowest.
fn intervals(tally: &Tally, secs: u64, elapsed: f64) -> Vec<String> {
    let width_ms = secs.saturating_mul(1000).max(1);
    // Whole intervals: the last few milliseconds go to the last one.
    let n = ((elapsed * 1000.0) as u64 / width_ms).max(1);
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    for (&start, &lat) in tally.starts_ms.iter().zip(&tally.latencies_us) {
        let i = (u64::from(start) / width_ms).min(n - 1) as usize;
        buckets[i].push(lat);
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut b)| {
            b.sort_unstable();
            format!(
                "INTERVAL n={} from_s={} requests={} rps={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
                i + 1,
                i as u64 * secs,
                b.len(),
                b.len() as f64 / secs as f64,
                percentile(&b, 0.50),
                percentile(&b, 0.99),
                b.last().map_or(0.0, |&us| f64::from(us) / 1000.0),
            )
        })
        .collect()
}

/// The integration lag of a sample of the answers (500 at most): from the
/// leaf's own time (the request's instant) to the time of the first signed
/// checkpoint that covers it, in microseconds, sorted. Both instants come
/// from this machine's clock.
async fn checkpoint_lags(ledger: &Arc<dyn LedgerStore>, answers: &[Answer]) -> Result<Vec<u32>> {
    let mut lags = Vec::new();
    let checkpoints = ledger.checkpoints().await?;
    let step = (answers.len() / 500).max(1);
    for a in answers.iter().step_by(step) {
        let Some(leaf) = a.leaf else { continue };
        let index = match leaf {
            LeafRef::Index(i) => i,
            LeafRef::Receipt(r) => match ledger.index_of_receipt(r).await? {
                Some(i) => i,
                None => continue,
            },
        };
        let Some(row) = ledger.leaves(index, 1).await?.into_iter().next() else {
            continue;
        };
        if let Some(c) = checkpoints.iter().find(|c| c.size > index) {
            let lag_us = c.time.0.saturating_sub(row.time).max(0);
            lags.push(u32::try_from(lag_us).unwrap_or(u32::MAX));
        }
    }
    lags.sort_unstable();
    Ok(lags)
}
