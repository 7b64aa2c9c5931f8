//! Benchmarks behind `rempart bench ledger`: each function runs one
//! measurement on a given store and returns its figures; the CLI prints
//! them. Leaves are synthetic (deterministic ids, no personal data).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::leaf::{
    AccountId, Action, AuditLeaf, Decision, DenyReason, FieldGroups, GuardVerdict, OrganisationId,
    PersonId, SessionId, Timestamp,
};
use crate::merkle::{NodeId, leaf_hash, verify_consistency, verify_inclusion};
use crate::note::VerifierKey;
use crate::query::{self, persons_read_by_account};
use crate::store::postgres::{PgLedgerConfig, PgLedgerStore};
use crate::store::sqlite::SqliteLedgerStore;
use crate::store::{LedgerStore, QueryRange, StoreError, Subject};
use crate::{Ledger, LedgerConfig, LedgerError, LedgerKey, proof, verify};

/// Where a benchmark runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchTarget {
    /// A data directory holding (or to hold) `ledger.db`.
    Sqlite {
        /// The directory.
        dir: PathBuf,
    },
    /// A PostgreSQL database and schema.
    Postgres {
        /// Connection URL.
        url: String,
        /// Schema to use.
        schema: String,
    },
}

/// What every benchmark schema's name starts with: a benchmark drops its
/// schema (when fresh, and at the end unless kept), and is never let near
/// a real ledger's (`ledger`).
pub const BENCH_SCHEMA_PREFIX: &str = "ledger_bench";

/// The file that marks a directory's `ledger.db` as a benchmark's: a fresh
/// benchmark deletes only a ledger a benchmark made, never the audit
/// ledger of a data directory it was pointed at by mistake.
pub const BENCH_MARK: &str = "ledger.bench";

/// Opens the target's store; with `fresh`, first removes any ledger there
/// (the SQLite files, or the PostgreSQL schema), provided a benchmark made
/// it: a directory's `ledger.db` without [`BENCH_MARK`] beside it is
/// refused and left as it is. A schema whose name does not start with
/// [`BENCH_SCHEMA_PREFIX`] is refused whether fresh or not (a benchmark
/// drops its schema at the end).
pub async fn open_target(
    target: &BenchTarget,
    fresh: bool,
) -> Result<Arc<dyn LedgerStore>, LedgerError> {
    match target {
        BenchTarget::Sqlite { dir } => {
            let db = dir.join(crate::store::sqlite::FILE_NAME);
            if fresh && db.exists() && !dir.join(BENCH_MARK).exists() {
                return Err(StoreError::Open {
                    path: db.display().to_string(),
                    reason: format!(
                        "it holds a ledger no benchmark made (no {BENCH_MARK} beside it): \
                         refusing to delete it"
                    ),
                }
                .into());
            }
            if fresh {
                for suffix in ["", "-wal", "-shm"] {
                    let path = dir.join(format!("{}{suffix}", crate::store::sqlite::FILE_NAME));
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(StoreError::Open {
                                path: path.display().to_string(),
                                reason: e.to_string(),
                            }
                            .into());
                        }
                    }
                }
            }
            let store = SqliteLedgerStore::open(dir).await?;
            if fresh {
                std::fs::write(
                    dir.join(BENCH_MARK),
                    "a benchmark's ledger: any data here is synthetic\n",
                )
                .map_err(|e| StoreError::Open {
                    path: dir.join(BENCH_MARK).display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            Ok(Arc::new(store))
        }
        BenchTarget::Postgres { url, schema } => {
            let config = PgLedgerConfig::new(url).with_schema(schema);
            bench_schema(schema)?;
            if fresh {
                // Validates the names first (connect refuses bad ones).
                let store = PgLedgerStore::connect(&config).await?;
                drop(store);
                drop_pg_schema(url, schema).await?;
            }
            Ok(Arc::new(PgLedgerStore::connect(&config).await?))
        }
    }
}

/// Bytes the target's ledger takes: the SQLite database file (not its
/// WAL, a transient copy of recent pages that the checkpointer empties),
/// or the PostgreSQL schema's tables with their indexes and TOAST.
pub async fn bytes_used(target: &BenchTarget) -> Result<u64, LedgerError> {
    match target {
        BenchTarget::Sqlite { dir } => {
            Ok(std::fs::metadata(dir.join(crate::store::sqlite::FILE_NAME)).map_or(0, |m| m.len()))
        }
        BenchTarget::Postgres { url, schema } => {
            let pg = |e: tokio_postgres::Error| LedgerError::Store(e.into());
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(pg)?;
            let task = tokio::spawn(conn);
            let r = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[&schema],
                )
                .await
                .map_err(pg)
                .map(|row| row.get::<_, i64>(0));
            drop(client);
            let _ = task.await;
            Ok(u64::try_from(r?).unwrap_or(0))
        }
    }
}

/// On PostgreSQL, the bytes of each of the ledger's tables (with its
/// indexes and TOAST), largest first; on SQLite, nothing (one file).
pub async fn bytes_by_table(target: &BenchTarget) -> Result<Vec<(String, u64)>, LedgerError> {
    let BenchTarget::Postgres { url, schema } = target else {
        return Ok(Vec::new());
    };
    let pg = |e: tokio_postgres::Error| LedgerError::Store(e.into());
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg)?;
    let task = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT c.relname::text, pg_total_relation_size(c.oid)::int8
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 2 DESC",
            &[&schema],
        )
        .await
        .map_err(pg);
    drop(client);
    let _ = task.await;
    Ok(rows?
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect())
}

/// Removes what [`open_target`] made on PostgreSQL: the schema with its
/// leaves (gigabytes at national sizes, which a finished bench has no use
/// for). SQLite's files stay where the caller put them.
pub async fn close_target(target: &BenchTarget) -> Result<(), LedgerError> {
    match target {
        BenchTarget::Sqlite { .. } => Ok(()),
        BenchTarget::Postgres { url, schema } => drop_pg_schema(url, schema).await,
    }
}

/// Refuses a schema a benchmark may not drop.
fn bench_schema(schema: &str) -> Result<(), LedgerError> {
    if schema.starts_with(BENCH_SCHEMA_PREFIX) {
        return Ok(());
    }
    Err(StoreError::Open {
        path: schema.to_string(),
        reason: format!(
            "a benchmark's schema is dropped and recreated: its name must start with \
             {BENCH_SCHEMA_PREFIX}"
        ),
    }
    .into())
}

/// Drops a benchmark's schema as the connecting user (the store's own role
/// cannot).
async fn drop_pg_schema(url: &str, schema: &str) -> Result<(), LedgerError> {
    bench_schema(schema)?;
    let pg = |e: tokio_postgres::Error| LedgerError::Store(e.into());
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg)?;
    let task = tokio::spawn(conn);
    // The name passed PgLedgerStore::connect's check: plain identifier.
    let r = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(pg);
    drop(client);
    let _ = task.await;
    r
}

/// Deterministic synthetic leaves resembling consultation traffic: 10,000
/// accounts in 1,000 organisations, one "hot" account (id 1) doing 1 % of
/// all reads (a compromised account), 1,000,000 persons, one leaf every
/// 250 ms of simulated time.
#[derive(Debug, Clone)]
pub struct Synthetic {
    state: u64,
    next: u64,
    persons: u64,
    hot_percent: u64,
}

/// Start of the synthetic time line (2026-01-01T00:00:00Z).
pub const SYNTHETIC_START: Timestamp = Timestamp(1_767_225_600_000_000);
/// Simulated time between two synthetic leaves.
pub const SYNTHETIC_STEP_US: i64 = 250_000;
/// Number of synthetic accounts.
pub const SYNTHETIC_ACCOUNTS: u64 = 10_000;
/// Number of synthetic persons unless told otherwise: few enough that every
/// person is read many times over a million leaves. At national scale
/// (`with_persons(43_000_000)`) most persons are read a few times a year,
/// which is what the person postings' size depends on.
pub const SYNTHETIC_PERSONS: u64 = 1_000_000;
/// The account doing 1 % of the reads.
pub const HOT_ACCOUNT: AccountId = AccountId::new(1);

impl Synthetic {
    /// A generator; `first` is the index of its first leaf (sets its time).
    pub fn new(seed: u64, first: u64) -> Self {
        Synthetic {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            next: first,
            persons: SYNTHETIC_PERSONS,
            hot_percent: 1,
        }
    }

    /// The same generator giving `percent` of the leaves (1 by default) to
    /// [`HOT_ACCOUNT`]: a compromised account of a breach benchmark.
    pub fn with_hot_percent(mut self, percent: u64) -> Self {
        self.hot_percent = percent.min(100);
        self
    }

    /// The same generator reading persons `1..=persons` (at least one).
    pub fn with_persons(mut self, persons: u64) -> Self {
        self.persons = persons.max(1);
        self
    }

    fn random(&mut self) -> u64 {
        // splitmix64: fast, deterministic, good enough for test data.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next leaf.
    pub fn leaf(&mut self) -> AuditLeaf {
        let i = self.next;
        self.next += 1;
        let r = self.random();
        let account = if r % 100 < self.hot_percent {
            HOT_ACCOUNT.get()
        } else {
            (2 + (r >> 8) % (SYNTHETIC_ACCOUNTS - 1)) as i64
        };
        let person = 1 + (r >> 24) % self.persons;
        let kind = (r >> 48) % 100;
        let (action, person, groups) = match kind {
            0..80 => (
                Action::ReadPerson,
                Some(person),
                FieldGroups::of(&[
                    rempart_domain::FieldGroup::Identity,
                    rempart_domain::FieldGroup::Contact,
                ]),
            ),
            80..95 => (
                Action::Search,
                Some(person),
                FieldGroups::of(&[rempart_domain::FieldGroup::Identity]),
            ),
            95..98 => (Action::ListCaseload, None, FieldGroups::EMPTY),
            _ => (Action::Login, None, FieldGroups::EMPTY),
        };
        let decision = if (r >> 40).is_multiple_of(20) {
            Decision::Deny(DenyReason::NoMandate)
        } else {
            Decision::Allow
        };
        let mut session = [0u8; 16];
        session[..8].copy_from_slice(&(account as u64).to_be_bytes());
        session[8..].copy_from_slice(&(i / 1000).to_be_bytes());
        AuditLeaf {
            time: Timestamp(SYNTHETIC_START.0 + (i as i64) * SYNTHETIC_STEP_US),
            account: AccountId::new(account),
            organisation: OrganisationId::new(1 + account / 10),
            session: Some(SessionId(session)),
            person: person.map(|p| PersonId::new(p as i64)),
            action,
            field_groups: groups,
            purpose: Some(rempart_domain::Purpose::FollowUp),
            decision,
            guard: Some(GuardVerdict::Allow),
            note: None,
        }
    }
}

/// Durable append throughput.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendFigures {
    /// Leaves appended.
    pub leaves: u64,
    /// Concurrent callers.
    pub callers: usize,
    /// Wall time.
    pub seconds: f64,
    /// Leaves per second.
    pub per_second: f64,
}

/// Appends `leaves` single leaves from `callers` concurrent tasks, each
/// waiting for durability before its next append (group commit at work).
pub async fn append_throughput(
    store: Arc<dyn LedgerStore>,
    key: LedgerKey,
    leaves: u64,
    callers: usize,
    persons: u64,
) -> Result<AppendFigures, LedgerError> {
    let callers = callers.max(1);
    let start_index = store.size().await?;
    let ledger = Arc::new(Ledger::open(store, key, LedgerConfig::default()).await?);
    let per = leaves / callers as u64;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let ledger = ledger.clone();
        let n = per + u64::from((c as u64) < leaves % callers as u64);
        tasks.push(tokio::spawn(async move {
            let mut g =
                Synthetic::new(c as u64, start_index + c as u64 * per).with_persons(persons);
            for _ in 0..n {
                ledger.append(&g.leaf()).await?;
            }
            Ok::<(), LedgerError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| LedgerError::AppendFailed(format!("bench task: {e}")))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    close(ledger).await?;
    Ok(AppendFigures {
        leaves,
        callers,
        seconds,
        per_second: leaves as f64 / seconds,
    })
}

async fn close(ledger: Arc<Ledger>) -> Result<(), LedgerError> {
    match Arc::try_unwrap(ledger) {
        Ok(l) => l.close().await,
        Err(_) => Ok(()),
    }
}

/// Loads `leaves` synthetic leaves in batches (one caller), for the
/// read-side benchmarks; returns the throughput.
pub async fn populate(
    store: Arc<dyn LedgerStore>,
    key: LedgerKey,
    leaves: u64,
    persons: u64,
) -> Result<AppendFigures, LedgerError> {
    populate_with(store, key, leaves, |first| {
        Synthetic::new(7, first).with_persons(persons)
    })
    .await
}

/// [`populate`] with the generator `make` returns for the first index.
pub async fn populate_with(
    store: Arc<dyn LedgerStore>,
    key: LedgerKey,
    leaves: u64,
    make: impl FnOnce(u64) -> Synthetic,
) -> Result<AppendFigures, LedgerError> {
    let start_index = store.size().await?;
    let ledger = Ledger::open(store, key, LedgerConfig::default()).await?;
    let mut g = make(start_index);
    let started = Instant::now();
    let mut left = leaves;
    let mut batch = Vec::with_capacity(4096);
    while left > 0 {
        batch.clear();
        let n = left.min(4096);
        batch.extend((0..n).map(|_| g.leaf()));
        ledger.append_batch(&batch).await?;
        left -= n;
    }
    let seconds = started.elapsed().as_secs_f64();
    ledger.close().await?;
    Ok(AppendFigures {
        leaves,
        callers: 1,
        seconds,
        per_second: leaves as f64 / seconds,
    })
}

/// Append latency at a steady offered rate.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyFigures {
    /// Offered rate, appends per second.
    pub rate: u32,
    /// Appends made.
    pub appends: u64,
    /// Rate achieved.
    pub achieved_rate: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Worst, microseconds.
    pub max_us: u64,
}

/// Offers `rate` single appends per second for `duration` (each from its
/// own task, as concurrent requests would) and measures how long each waits
/// for durability.
pub async fn append_latency(
    store: Arc<dyn LedgerStore>,
    key: LedgerKey,
    rate: u32,
    duration: Duration,
    persons: u64,
) -> Result<LatencyFigures, LedgerError> {
    let start_index = store.size().await?;
    let ledger = Arc::new(Ledger::open(store, key, LedgerConfig::default()).await?);
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<u64, LedgerError>>();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut g = Synthetic::new(11, start_index).with_persons(persons);
    let mut ticks: u64 = 0;
    let total_ticks = duration.as_millis().max(1) as u64;
    while ticks < total_ticks {
        ticker.tick().await;
        ticks += 1;
        let due = ticks * u64::from(rate) / 1000;
        while sent < due {
            sent += 1;
            let leaf = g.leaf();
            let ledger = ledger.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = ledger
                    .append(&leaf)
                    .await
                    .map(|_| t.elapsed().as_micros() as u64);
                let _ = tx.send(r);
            });
        }
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(sent as usize);
    while let Some(r) = rx.recv().await {
        latencies.push(r?);
    }
    let seconds = started.elapsed().as_secs_f64();
    close(ledger).await?;
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    Ok(LatencyFigures {
        rate,
        appends: latencies.len() as u64,
        achieved_rate: latencies.len() as f64 / seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().copied().unwrap_or(0),
    })
}

/// Verification speed.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyFigures {
    /// Leaves verified.
    pub leaves: u64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Wall time.
    pub seconds: f64,
    /// Leaves per second.
    pub per_second: f64,
}

/// Verifies the whole store and times it.
pub async fn verify_speed(
    store: &Arc<dyn LedgerStore>,
    key: &VerifierKey,
) -> Result<VerifyFigures, LedgerError> {
    let started = Instant::now();
    let report = verify(store, key).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(VerifyFigures {
        leaves: report.leaves,
        checkpoints: report.checkpoints,
        seconds,
        per_second: report.leaves as f64 / seconds,
    })
}

/// Timing of one operation over samples, microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Samples taken.
    pub samples: usize,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Worst.
    pub max_us: u64,
}

fn timing(mut micros: Vec<u64>) -> Timing {
    micros.sort_unstable();
    let n = micros.len();
    let at = |p: f64| {
        if n == 0 {
            0
        } else {
            micros[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
        }
    };
    Timing {
        samples: n,
        mean_us: if n == 0 {
            0.0
        } else {
            micros.iter().sum::<u64>() as f64 / n as f64
        },
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: micros.last().copied().unwrap_or(0),
    }
}

/// Proof generation time and size.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofFigures {
    /// Tree size proven against.
    pub size: u64,
    /// ⌈log2 size⌉: the bound on inclusion proof length (+1 for consistency).
    pub log2_bound: usize,
    /// Inclusion proof generation.
    pub inclusion: Timing,
    /// Longest inclusion proof, in hashes.
    pub inclusion_max_hashes: usize,
    /// Consistency proof generation.
    pub consistency: Timing,
    /// Longest consistency proof, in hashes.
    pub consistency_max_hashes: usize,
}

/// Generates `samples` inclusion and consistency proofs at the store's
/// size from stored hashes, times them, and checks each one. The leaves are
/// drawn at random from `seed`: the same seed proves the same leaves again
/// (their pages cached), another one other leaves.
pub async fn proof_speed(
    store: &Arc<dyn LedgerStore>,
    samples: usize,
    seed: u64,
) -> Result<ProofFigures, LedgerError> {
    let size = store.size().await?;
    if size == 0 {
        return Err(crate::ProofError::IndexOutOfRange { index: 0, size: 0 }.into());
    }
    let root = proof::root(store.as_ref(), size).await?;
    let mut g = Synthetic::new(seed, 0);
    let (mut inc, mut con) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let (mut inc_max, mut con_max) = (0, 0);
    for _ in 0..samples {
        let index = g.random() % size;
        let t = Instant::now();
        let p = proof::prove_inclusion(store.as_ref(), index, size).await?;
        inc.push(t.elapsed().as_micros() as u64);
        inc_max = inc_max.max(p.hashes.len());
        let leaf = store.nodes(&[NodeId::new(0, index)]).await?;
        if let Some(h) = leaf.first() {
            verify_inclusion(h, index, size, &p.hashes, &root)?;
        }

        let old = 1 + g.random() % size;
        let t = Instant::now();
        let c = proof::prove_consistency(store.as_ref(), old, size).await?;
        con.push(t.elapsed().as_micros() as u64);
        con_max = con_max.max(c.hashes.len());
        let old_root = proof::root(store.as_ref(), old).await?;
        verify_consistency(old, size, &c.hashes, &old_root, &root)?;
    }
    Ok(ProofFigures {
        size,
        log2_bound: (64 - (size.max(2) - 1).leading_zeros()) as usize,
        inclusion: timing(inc),
        inclusion_max_hashes: inc_max,
        consistency: timing(con),
        consistency_max_hashes: con_max,
    })
}

/// Query times.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryFigures {
    /// Leaves in the store.
    pub leaves: u64,
    /// "Every person shown to the hot account (1 % of all reads) over the
    /// whole log": persons found.
    pub hot_persons: usize,
    /// Its time.
    pub hot_us: u64,
    /// The same question for ordinary accounts over one week.
    pub account_week: Timing,
    /// First page (100 leaves) of an ordinary account's leaves over the log.
    pub account_page: Timing,
    /// First page (100 leaves) of a person's leaves over the log.
    pub person_page: Timing,
    /// A person's history as their page shows it: every leaf about them,
    /// newest first, the first 20 with their inclusion proofs against the
    /// whole log.
    pub person_history: Timing,
}

/// Times the breach-scoping question and paged queries.
pub async fn query_speed(
    store: &Arc<dyn LedgerStore>,
    samples: usize,
    population: u64,
) -> Result<QueryFigures, LedgerError> {
    let leaves = store.size().await?;
    let end = Timestamp(SYNTHETIC_START.0 + leaves as i64 * SYNTHETIC_STEP_US + 1);
    let t = Instant::now();
    let hot = persons_read_by_account(store.as_ref(), HOT_ACCOUNT, SYNTHETIC_START, end).await?;
    let hot_us = t.elapsed().as_micros() as u64;

    let week = 7 * 24 * 3600 * 1_000_000i64;
    let mut g = Synthetic::new(5, 0);
    let (mut weeks, mut pages, mut persons) = (Vec::new(), Vec::new(), Vec::new());
    let mut histories = Vec::new();
    for _ in 0..samples {
        let account = AccountId::new(2 + (g.random() % (SYNTHETIC_ACCOUNTS - 1)) as i64);
        let from = Timestamp(SYNTHETIC_START.0 + (g.random() % 4) as i64 * week);
        let to = Timestamp(from.0 + week);
        let t = Instant::now();
        persons_read_by_account(store.as_ref(), account, from, to).await?;
        weeks.push(t.elapsed().as_micros() as u64);

        let t = Instant::now();
        query::query(
            store.as_ref(),
            &QueryRange {
                subject: Subject::Account(account),
                from: SYNTHETIC_START,
                to: end,
                after: None,
                limit: 100,
            },
        )
        .await?;
        pages.push(t.elapsed().as_micros() as u64);

        let person = PersonId::new(1 + (g.random() % population.max(1)) as i64);
        let t = Instant::now();
        query::query(
            store.as_ref(),
            &QueryRange {
                subject: Subject::Person(person),
                from: SYNTHETIC_START,
                to: end,
                after: None,
                limit: 100,
            },
        )
        .await?;
        persons.push(t.elapsed().as_micros() as u64);

        let t = Instant::now();
        crate::history::person_history(
            store.as_ref(),
            person,
            leaves,
            crate::history::HistoryPage {
                offset: 0,
                limit: 20,
            },
        )
        .await?;
        histories.push(t.elapsed().as_micros() as u64);
    }
    Ok(QueryFigures {
        leaves,
        hot_persons: hot.len(),
        hot_us,
        account_week: timing(weeks),
        account_page: timing(pages),
        person_page: timing(persons),
        person_history: timing(histories),
    })
}

/// Hashing alone, for comparison: SHA-256 leaf hashes of synthetic leaves
/// per second on this machine (one core).
pub fn hash_rate(leaves: u64) -> Result<f64, LedgerError> {
    let mut g = Synthetic::new(1, 0);
    let encoded = (0..leaves.min(100_000))
        .map(|_| g.leaf().encode())
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut acc = 0u8;
    while n < leaves {
        for e in &encoded {
            acc ^= leaf_hash(e)[0];
            n += 1;
            if n == leaves {
                break;
            }
        }
    }
    std::hint::black_box(acc);
    Ok(leaves as f64 / started.elapsed().as_secs_f64())
}
