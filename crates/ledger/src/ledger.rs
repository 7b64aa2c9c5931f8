//! The appender: the consultation path's door into the ledger.
//!
//! One background task owns the store's single writer. Callers encode and
//! hash their leaf themselves (so a bad leaf is refused before it queues and
//! the CPU work spreads over the callers), send it, and wait. The task takes
//! whatever has queued — up to `max_batch` leaves — computes the subtree
//! hashes, writes the lot in one transaction (one sync), and only then
//! answers every caller of the batch: group commit. If the transaction
//! fails, every caller of the batch gets an error and must release nothing
//! (fail closed); the task re-reads the store's state before the next batch.
//!
//! Checkpoints are signed and stored every `checkpoint_every` leaves or
//! `checkpoint_interval`, whichever comes first, after the batch's callers
//! were answered, and when the ledger closes.
//!
//! One writer per store: the store's writer lock makes a second one (in
//! this process or another) fail at [`Ledger::open`] — unless the store
//! takes staged leaves (PostgreSQL). Then the appender that does not get
//! the writer *stages*: each batch is committed durably to the store's
//! staging table, its callers answered with receipts instead of indices
//! ([`LeafRef::Receipt`]), and every `takeover_every` it tries to take the
//! writer. The appender holding the writer *integrates*: with each batch
//! of its own, and every `integrate_every` when it has none, it takes the
//! staged leaves (oldest receipt first), gives them the next indices in the
//! transaction that removes them from staging, and signs the checkpoints.
//! When the integrating process dies or loses its connection, the store
//! releases the lock and the next stager to try takes over.
//!
//! Where the appender runs depends on its writer. A writer whose calls block
//! (SQLite) gets a thread of its own, `ledger-writer`, which runs its calls
//! inline: a commit then costs no hop to the blocking pool and back, only
//! the callers' wakeups. A writer that talks to a server asynchronously
//! (PostgreSQL) runs as a task on the caller's runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::key::LedgerKey;
use crate::leaf::{AuditLeaf, Timestamp};
use crate::merkle::{ConsistencyProof, Frontier, Hash, InclusionProof, leaf_hash, root_nodes};
use crate::note::VerifierKey;
use crate::store::{
    LeafRow, LedgerStager, LedgerStore, LedgerWriter, StoreError, StoredCheckpoint,
};
use crate::{LeafIndex, LedgerError, proof};

/// Where an appended leaf is, as known when its append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafRef {
    /// In the log at this index.
    Index(LeafIndex),
    /// Staged under this receipt for the integrating process, which gives
    /// it an index ([`LedgerStore::index_of_receipt`]) within
    /// `integrate_every` at nominal load.
    Receipt(u64),
}

impl std::fmt::Display for LeafRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafRef::Index(i) => write!(f, "leaf {i}"),
            LeafRef::Receipt(r) => write!(f, "staged leaf {r}"),
        }
    }
}

impl LeafRef {
    /// The leaf `i` places after this one in the same append.
    pub fn offset(self, i: u64) -> LeafRef {
        match self {
            LeafRef::Index(x) => LeafRef::Index(x + i),
            LeafRef::Receipt(r) => LeafRef::Receipt(r + i),
        }
    }

    /// The index, if known.
    pub fn index(self) -> Option<LeafIndex> {
        match self {
            LeafRef::Index(x) => Some(x),
            LeafRef::Receipt(_) => None,
        }
    }
}

/// When checkpoints are made and how appends are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Sign a checkpoint once this many leaves were appended since the last
    /// one (0: never by count).
    pub checkpoint_every: u64,
    /// Sign a checkpoint this long after the first leaf not yet covered by
    /// one (zero: never by time).
    pub checkpoint_interval: Duration,
    /// Most leaves written in one transaction.
    pub max_batch: usize,
    /// Requests that may wait for the writer before callers are held back.
    pub queue_depth: usize,
    /// How often an integrating appender with no batch of its own looks
    /// for staged leaves (stores that stage only).
    pub integrate_every: Duration,
    /// How often a staging appender tries to take the writer.
    pub takeover_every: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            checkpoint_every: 10_000,
            // A leaf is in a signed checkpoint within about a second (plus
            // `integrate_every` if it was staged); an idle ledger signs
            // nothing.
            checkpoint_interval: Duration::from_secs(1),
            max_batch: 4096,
            queue_depth: 16_384,
            integrate_every: Duration::from_millis(100),
            takeover_every: Duration::from_secs(1),
        }
    }
}

/// A checkpoint the ledger signed and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The tree head.
    pub checkpoint: Checkpoint,
    /// The signed note, as stored.
    pub note: String,
    /// When it was made.
    pub time: Timestamp,
}

/// A leaf ready to queue: encoded and hashed by its caller.
struct Prepared {
    row: LeafRow,
    hash: Hash,
}

type AppendReply = oneshot::Sender<Result<LeafRef, LedgerError>>;

enum Command {
    Append {
        leaves: Vec<Prepared>,
        reply: AppendReply,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<SignedCheckpoint, LedgerError>>,
    },
    /// Stop after what was queued before: answered once the writer is
    /// released.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The ledger's appender. Cheap to share behind an `Arc`; all methods take
/// `&self`.
pub struct Ledger {
    commands: mpsc::Sender<Command>,
    store: Arc<dyn LedgerStore>,
    verifier: VerifierKey,
    status: Arc<Status>,
    runner: std::sync::Mutex<Option<Runner>>,
}

/// What the appender tells the handles.
#[derive(Default)]
struct Status {
    /// Leaves in the log, as last known by the integrating appender.
    size: AtomicU64,
    /// Transactions that committed appends or staged leaves.
    batches: AtomicU64,
    /// Whether this appender holds the writer.
    integrating: AtomicBool,
    /// Staged leaves this appender integrated.
    integrated: AtomicU64,
}

/// What runs the appender, to wait for at close.
enum Runner {
    /// A task on the caller's runtime.
    Task(JoinHandle<()>),
    /// A thread of its own; the receiver resolves when it has finished
    /// (awaited rather than joined, so that no async thread blocks).
    Thread(oneshot::Receiver<()>),
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("store", &self.store.location())
            .field("size", &self.size())
            .field("integrating", &self.is_integrating())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Takes the store's writer, checks the store against its latest
    /// checkpoint (a ledger that no longer matches it is not appended to),
    /// and starts the appender. On a store that stages (PostgreSQL), an
    /// appender that cannot take the writer because another holds it
    /// starts staging instead. Must be called within a tokio runtime.
    pub async fn open(
        store: Arc<dyn LedgerStore>,
        key: LedgerKey,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        let stager = store.stager();
        let integrator = match store.writer().await {
            Ok(mut writer) => {
                let state = load_state(writer.as_mut(), store.as_ref(), &key).await?;
                Some(Integrator {
                    writer,
                    state,
                    resync: false,
                    pending: None,
                })
            }
            Err(StoreError::WriterBusy(_)) if stager.is_some() => None,
            Err(e) => return Err(e.into()),
        };
        let verifier = key.verifier();
        let status = Arc::new(Status::default());
        if let Some(i) = &integrator {
            status
                .size
                .store(i.state.frontier.size(), Ordering::Release);
            status.integrating.store(true, Ordering::Release);
        }
        let (commands, rx) = mpsc::channel(config.queue_depth.max(1));
        let mut appender = Appender {
            store: store.clone(),
            key,
            takeover_at: Instant::now() + config.takeover_every,
            integrate_at: Instant::now() + config.integrate_every,
            config,
            integrator,
            stager,
            status: status.clone(),
        };
        let own_thread = appender
            .integrator
            .as_mut()
            .is_some_and(|i| i.writer.use_own_thread());
        let runner = if own_thread {
            spawn_thread(appender, rx)?
        } else {
            Runner::Task(tokio::spawn(appender.run(rx)))
        };
        Ok(Ledger {
            commands,
            store,
            verifier,
            status,
            runner: std::sync::Mutex::new(Some(runner)),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// The public key checking this ledger's checkpoints.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Number of leaves in the log, as last known by this appender (0 while
    /// it has only staged).
    pub fn size(&self) -> u64 {
        self.status.size.load(Ordering::Acquire)
    }

    /// Number of transactions that committed appends since opening (fewer
    /// than the appends when group commit merges them).
    pub fn batches(&self) -> u64 {
        self.status.batches.load(Ordering::Acquire)
    }

    /// Whether this appender holds the writer: gives indices, integrates
    /// staged leaves, signs checkpoints.
    pub fn is_integrating(&self) -> bool {
        self.status.integrating.load(Ordering::Acquire)
    }

    /// Staged leaves (of any process) this appender has integrated.
    pub fn integrated(&self) -> u64 {
        self.status.integrated.load(Ordering::Acquire)
    }

    /// Whether the appender still takes leaves.
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Appends one leaf; returns once it is committed and synced, with its
    /// index or, when staged, its receipt. On error the leaf is not in the
    /// ledger: release nothing.
    pub async fn append(&self, leaf: &AuditLeaf) -> Result<LeafRef, LedgerError> {
        self.send_append(vec![prepare(leaf)?]).await
    }

    /// Appends leaves in one transaction, as consecutive indices (or
    /// receipts); returns the first one (`None` for no leaves). All or none.
    pub async fn append_batch(&self, leaves: &[AuditLeaf]) -> Result<Option<LeafRef>, LedgerError> {
        let prepared = leaves.iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(None);
        }
        self.send_append(prepared).await.map(Some)
    }

    async fn send_append(&self, leaves: Vec<Prepared>) -> Result<LeafRef, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { leaves, reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// The index of a leaf, waiting up to `wait` for a staged one to be
    /// integrated; `None` if it was not by then.
    pub async fn index_of(
        &self,
        leaf: LeafRef,
        wait: Duration,
    ) -> Result<Option<LeafIndex>, LedgerError> {
        let receipt = match leaf {
            LeafRef::Index(i) => return Ok(Some(i)),
            LeafRef::Receipt(r) => r,
        };
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.store.index_of_receipt(receipt).await? {
                return Ok(Some(i));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signs and stores a checkpoint of the current size now (or returns the
    /// latest one if no leaf was appended since). An appender that only
    /// stages signs nothing: [`LedgerError::NotIntegrating`].
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Checkpoint { reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Stops the appender after the queued appends, as [`Ledger::close`],
    /// through any handle: later appends get [`LedgerError::Closed`]. For a
    /// server that shares the handle with others and closes; a stopped
    /// appender's writer lock is released, so another process may take over.
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        let final_checkpoint = self.checkpoint_now().await;
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
        match final_checkpoint {
            Ok(_) | Err(LedgerError::NotIntegrating | LedgerError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops the appender after the queued appends; an integrating one
    /// integrates what is staged and signs a final checkpoint, then
    /// releases the writer lock.
    pub async fn close(self) -> Result<(), LedgerError> {
        let stopped = self.shutdown().await;
        let runner = self.runner.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(self.commands);
        match runner {
            Some(Runner::Task(task)) => task
                .await
                .map_err(|e| LedgerError::AppendFailed(format!("appender task: {e}")))?,
            Some(Runner::Thread(done)) => done.await.map_err(|_| {
                LedgerError::AppendFailed("the appender thread stopped abnormally".into())
            })?,
            None => {}
        }
        stopped
    }

    /// Root of the tree of `size` leaves.
    pub async fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        proof::root(self.store.as_ref(), size).await
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub async fn prove_inclusion(
        &self,
        index: LeafIndex,
        size: u64,
    ) -> Result<InclusionProof, LedgerError> {
        proof::prove_inclusion(self.store.as_ref(), index, size).await
    }

    /// Consistency proof from the tree of `old` leaves to the tree of `new`.
    pub async fn prove_consistency(
        &self,
        old: u64,
        new: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        proof::prove_consistency(self.store.as_ref(), old, new).await
    }
}

/// Starts the appender on a thread of its own, driving it with a
/// single-threaded runtime (timers only: the writer's calls are inline).
fn spawn_thread(appender: Appender, rx: mpsc::Receiver<Command>) -> Result<Runner, LedgerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| LedgerError::AppendFailed(format!("cannot start the appender: {e}")))?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            runtime.block_on(appender.run(rx));
            // Dropped unsent if `run` panics: `close` then reports it.
            let _ = done.send(());
        })
        .map_err(|e| LedgerError::AppendFailed(format!("cannot start the appender: {e}")))?;
    Ok(Runner::Thread(finished))
}

fn prepare(leaf: &AuditLeaf) -> Result<Prepared, LedgerError> {
    let data = leaf.encode()?;
    let hash = leaf_hash(&data);
    Ok(Prepared {
        row: row_of(leaf, data),
        hash,
    })
}

/// A leaf's row before it has an index, with its indexed columns.
fn row_of(leaf: &AuditLeaf, data: Vec<u8>) -> LeafRow {
    LeafRow {
        index: 0,
        time: leaf.time.0,
        account: leaf.account.get(),
        organisation: leaf.organisation.get(),
        person: leaf.person.map(|p| p.get()),
        reveals: leaf.reveals_person_data(),
        data,
        nodes: Vec::new(),
        level4: Vec::new(),
        receipt: None,
    }
}

/// What the integrating appender knows of the store.
struct State {
    frontier: Frontier,
    last_checkpoint: Option<SignedCheckpoint>,
    /// When the first leaf not covered by a checkpoint was appended.
    uncovered_since: Option<Instant>,
}

impl State {
    fn checkpointed_size(&self) -> u64 {
        self.last_checkpoint
            .as_ref()
            .map_or(0, |c| c.checkpoint.size)
    }
}

async fn load_state(
    writer: &mut dyn LedgerWriter,
    store: &dyn LedgerStore,
    key: &LedgerKey,
) -> Result<State, LedgerError> {
    let size = writer.size().await?;
    let nodes = writer.nodes(&root_nodes(size)).await?;
    let frontier = Frontier::from_nodes(size, nodes)?;
    let inconsistent = |reason: String| LedgerError::Inconsistent {
        location: store.location(),
        reason,
    };
    let last_checkpoint = match store.latest_checkpoint().await? {
        None => None,
        Some(stored) => {
            let checkpoint = Checkpoint::open(&stored.note, &key.verifier())
                .map_err(|e| inconsistent(format!("checkpoint {}: {e}", stored.size)))?;
            if checkpoint.size != stored.size {
                return Err(inconsistent(format!(
                    "checkpoint row {} holds a note for size {}",
                    stored.size, checkpoint.size
                )));
            }
            if checkpoint.size > size {
                return Err(inconsistent(format!(
                    "the latest checkpoint commits to {} leaves, the store has {size}",
                    checkpoint.size
                )));
            }
            let nodes = writer.nodes(&root_nodes(checkpoint.size)).await?;
            let root = Frontier::from_nodes(checkpoint.size, nodes)?.root();
            if root != checkpoint.root {
                return Err(inconsistent(format!(
                    "the stored tree's root at size {} is not the checkpoint's",
                    checkpoint.size
                )));
            }
            Some(SignedCheckpoint {
                checkpoint,
                note: stored.note,
                time: stored.time,
            })
        }
    };
    let uncovered = frontier.size() > last_checkpoint.as_ref().map_or(0, |c| c.checkpoint.size);
    Ok(State {
        frontier,
        last_checkpoint,
        uncovered_since: uncovered.then(Instant::now),
    })
}

/// The writer and what it knows, while this appender integrates.
struct Integrator {
    writer: Box<dyn LedgerWriter>,
    state: State,
    /// Set after a failed write: the store's state must be re-read.
    resync: bool,
    /// The tree a failed write would have made: its commit may have
    /// happened, so the store may be there instead of at `state`.
    pending: Option<Frontier>,
}

struct Appender {
    store: Arc<dyn LedgerStore>,
    key: LedgerKey,
    config: LedgerConfig,
    /// `Some` while this appender holds the writer.
    integrator: Option<Integrator>,
    /// The store's staging door, if it has one.
    stager: Option<Box<dyn LedgerStager>>,
    status: Arc<Status>,
    /// When a staging appender next tries to take the writer.
    takeover_at: Instant,
    /// When an integrating appender next looks for staged leaves.
    integrate_at: Instant,
}

impl Appender {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let max_batch = self.config.max_batch.max(1);
        let mut pending = Vec::new();
        let mut shutdown = Vec::new();
        while shutdown.is_empty() {
            let deadline = self.next_deadline();
            let first = tokio::select! {
                biased;
                cmd = rx.recv() => cmd,
                () = sleep_until(deadline) => {
                    self.tick().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut leaves = count(&first);
            match first {
                Command::Shutdown { reply } => shutdown.push(reply),
                cmd => pending.push(cmd),
            }
            while leaves < max_batch && shutdown.is_empty() {
                match rx.try_recv() {
                    Ok(Command::Shutdown { reply }) => shutdown.push(reply),
                    Ok(cmd) => {
                        leaves += count(&cmd);
                        pending.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.handle(&mut pending).await;
        }
        // Nothing is taken after a shutdown: later senders get `Closed`.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Append { reply, .. } => {
                    let _ = reply.send(Err(LedgerError::Closed));
                }
                Command::Checkpoint { reply } => {
                    let _ = reply.send(Err(LedgerError::Closed));
                }
                Command::Shutdown { reply } => shutdown.push(reply),
            }
        }
        if self.integrator.is_some() {
            // What is staged now would wait for the next integrator.
            self.integrate_staged().await;
            if let Some(i) = &self.integrator
                && i.state.frontier.size() > i.state.checkpointed_size()
            {
                let _ = self.checkpoint().await;
            }
        }
        if let Some(mut i) = self.integrator.take() {
            i.writer.close().await;
        }
        self.status.integrating.store(false, Ordering::Release);
        for reply in shutdown {
            let _ = reply.send(());
        }
    }

    /// The next timed duty: a checkpoint or a look at staging while
    /// integrating, a try at the writer while staging.
    fn next_deadline(&self) -> Option<Instant> {
        match &self.integrator {
            Some(_) => {
                let integrate = self.stager.is_some().then_some(self.integrate_at);
                match (self.checkpoint_deadline(), integrate) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            None => Some(self.takeover_at),
        }
    }

    /// The timed duties that are due. Under steady load the queue is never
    /// empty and the timer in `run` never fires: `handle` calls this too.
    async fn tick(&mut self) {
        let now = Instant::now();
        if self.integrator.is_none() {
            if self.takeover_at <= now {
                self.try_takeover().await;
            }
            return;
        }
        if self.stager.is_some() && self.integrate_at <= now {
            self.integrate_staged().await;
        }
        if self.checkpoint_deadline().is_some_and(|d| d <= now) {
            // A failed timed checkpoint is retried at the next occasion;
            // appends do not depend on it.
            let _ = self.checkpoint().await;
        }
    }

    /// Takes the writer if nobody holds it, checking the store as
    /// [`Ledger::open`] does.
    async fn try_takeover(&mut self) {
        self.takeover_at = Instant::now() + self.config.takeover_every;
        let mut writer = match self.store.writer().await {
            Ok(w) => w,
            Err(StoreError::WriterBusy(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "ledger: cannot try to take the writer");
                return;
            }
        };
        match load_state(writer.as_mut(), self.store.as_ref(), &self.key).await {
            Ok(state) => {
                tracing::info!(
                    size = state.frontier.size(),
                    "ledger: this process integrates now"
                );
                self.status
                    .size
                    .store(state.frontier.size(), Ordering::Release);
                self.status.integrating.store(true, Ordering::Release);
                self.integrate_at = Instant::now();
                self.integrator = Some(Integrator {
                    writer,
                    state,
                    resync: false,
                    pending: None,
                });
            }
            Err(e) => {
                // Dropping the writer releases the lock: never integrate
                // into a store that does not match its checkpoint.
                tracing::error!(error = %e, "ledger: the store fails its checks, not integrating");
                writer.close().await;
            }
        }
    }

    /// Gives up the writer (another process holds its lock now): from the
    /// next batch on this appender stages.
    async fn step_down(&mut self) {
        if let Some(mut i) = self.integrator.take() {
            tracing::warn!("ledger: lost the writer, staging from now on");
            i.writer.close().await;
        }
        self.status.integrating.store(false, Ordering::Release);
        self.takeover_at = Instant::now() + self.config.takeover_every;
    }

    fn checkpoint_deadline(&self) -> Option<Instant> {
        if self.config.checkpoint_interval.is_zero() {
            return None;
        }
        self.integrator
            .as_ref()?
            .state
            .uncovered_since
            .map(|t| t + self.config.checkpoint_interval)
    }

    async fn handle(&mut self, pending: &mut Vec<Command>) {
        let mut appends = Vec::new();
        let mut checkpoints = Vec::new();
        for cmd in pending.drain(..) {
            match cmd {
                Command::Append { leaves, reply } => appends.push((leaves, reply)),
                Command::Checkpoint { reply } => checkpoints.push(reply),
                // Taken out by `run` before it calls this.
                Command::Shutdown { reply } => {
                    let _ = reply.send(());
                }
            }
        }
        if !appends.is_empty() {
            if self.integrator.is_some() {
                self.write(appends).await;
            } else {
                self.stage(appends).await;
            }
        }
        self.tick().await;
        let by_count = self.integrator.as_ref().is_some_and(|i| {
            self.config.checkpoint_every > 0
                && i.state.frontier.size()
                    >= i.state.checkpointed_size() + self.config.checkpoint_every
        });
        if by_count || !checkpoints.is_empty() {
            let result = self.checkpoint().await;
            for reply in checkpoints {
                let answer = match &result {
                    Ok(c) => Ok(c.clone()),
                    Err(LedgerError::NotIntegrating) => Err(LedgerError::NotIntegrating),
                    Err(e) => Err(LedgerError::AppendFailed(format!("checkpoint: {e}"))),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Stages a batch: one durable transaction, receipts for the callers.
    async fn stage(&mut self, appends: Vec<(Vec<Prepared>, AppendReply)>) {
        let Some(stager) = self.stager.as_mut() else {
            for (_, reply) in appends {
                let _ = reply.send(Err(LedgerError::Closed));
            }
            return;
        };
        let mut data = Vec::new();
        let mut starts = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        for (leaves, reply) in appends {
            starts.push(data.len() as u64);
            replies.push(reply);
            data.extend(leaves.into_iter().map(|p| p.row.data));
        }
        match stager.stage(data).await {
            Ok(first) => {
                self.status.batches.fetch_add(1, Ordering::AcqRel);
                for (start, reply) in starts.into_iter().zip(replies) {
                    let _ = reply.send(Ok(LeafRef::Receipt(first + start)));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                }
            }
        }
    }

    /// Integrates staged leaves until fewer than a batch wait (at most a
    /// few batches, so that the appender's own callers are not held up).
    async fn integrate_staged(&mut self) {
        self.integrate_at = Instant::now() + self.config.integrate_every;
        if self.stager.is_none() {
            return;
        }
        for _ in 0..4 {
            let before = self.status.integrated.load(Ordering::Acquire);
            let full = self.write(Vec::new()).await;
            if !full || self.status.integrated.load(Ordering::Acquire) == before {
                break;
            }
        }
    }

    /// Writes the callers' leaves and, on a store that stages, the oldest
    /// staged leaves, in one transaction. Returns whether staging had more
    /// leaves than were taken.
    async fn write(&mut self, appends: Vec<(Vec<Prepared>, AppendReply)>) -> bool {
        let max_batch = self.config.max_batch.max(1);
        let Some(integrator) = self.integrator.as_mut() else {
            for (_, reply) in appends {
                let _ = reply.send(Err(LedgerError::Closed));
            }
            return false;
        };
        if integrator.resync {
            match reload(integrator, &self.store.location()).await {
                Ok(()) => integrator.resync = false,
                Err(e) => {
                    let busy = matches!(e, LedgerError::Store(StoreError::WriterBusy(_)));
                    let reason = format!("the ledger store is unavailable: {e}");
                    for (_, reply) in appends {
                        let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                    }
                    if busy {
                        self.step_down().await;
                    }
                    return false;
                }
            }
        }
        let total: usize = appends.iter().map(|(l, _)| l.len()).sum();
        // Staged leaves are never starved by the integrator's own load.
        let room = max_batch.saturating_sub(total).max(max_batch / 4).max(1);
        // Staging is looked at every `integrate_every`, not at every batch
        // of the integrator's own: a round trip saved per batch.
        let now = Instant::now();
        let look = self.stager.is_some() && (appends.is_empty() || self.integrate_at <= now);
        let staged = if look {
            self.integrate_at = now + self.config.integrate_every;
            match integrator.writer.staged(room).await {
                Ok(s) => s,
                Err(e) => {
                    integrator.resync = true;
                    let reason = e.to_string();
                    for (_, reply) in appends {
                        let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                    }
                    if matches!(e, StoreError::WriterBusy(_)) {
                        self.step_down().await;
                    }
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        if appends.is_empty() && staged.is_empty() {
            return false;
        }
        let more = staged.len() == room;
        let first = integrator.state.frontier.size();
        // Work on a copy: if the write fails, the state stays as the store is.
        let mut frontier = integrator.state.frontier.clone();
        let mut rows = Vec::with_capacity(total + staged.len());
        for s in staged {
            let leaf = match AuditLeaf::decode(&s.data) {
                Ok(l) => l,
                Err(reason) => {
                    // Never guess a staged leaf's columns: it stays staged,
                    // named in the log, until someone looks.
                    tracing::error!(receipt = s.receipt, error = %reason,
                        "ledger: a staged leaf does not decode; left staged");
                    continue;
                }
            };
            let hash = leaf_hash(&s.data);
            let mut row = row_of(&leaf, s.data);
            row.receipt = Some(s.receipt);
            push_row(&mut frontier, &mut rows, row, hash);
        }
        let mut starts = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        for (leaves, reply) in appends {
            starts.push(frontier.size());
            replies.push(reply);
            for Prepared { row, hash } in leaves {
                push_row(&mut frontier, &mut rows, row, hash);
            }
        }
        if rows.is_empty() {
            return false;
        }
        let staged_count = rows.iter().filter(|r| r.receipt.is_some()).count() as u64;
        match integrator.writer.append(first, rows).await {
            Ok(()) => {
                let state = &mut integrator.state;
                if state.uncovered_since.is_none() {
                    state.uncovered_since = Some(Instant::now());
                }
                state.frontier = frontier;
                self.status
                    .size
                    .store(state.frontier.size(), Ordering::Release);
                self.status.batches.fetch_add(1, Ordering::AcqRel);
                self.status
                    .integrated
                    .fetch_add(staged_count, Ordering::AcqRel);
                for (start, reply) in starts.into_iter().zip(replies) {
                    let _ = reply.send(Ok(LeafRef::Index(start)));
                }
                more
            }
            Err(e) => {
                integrator.resync = true;
                integrator.pending = Some(frontier);
                let busy = matches!(e, StoreError::WriterBusy(_));
                let reason = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                }
                if busy {
                    self.step_down().await;
                }
                false
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<SignedCheckpoint, LedgerError> {
        let Some(integrator) = self.integrator.as_mut() else {
            return Err(LedgerError::NotIntegrating);
        };
        if integrator.resync {
            if let Err(e) = reload(integrator, &self.store.location()).await {
                if matches!(e, LedgerError::Store(StoreError::WriterBusy(_))) {
                    self.step_down().await;
                }
                return Err(e);
            }
            integrator.resync = false;
        }
        let state = &mut integrator.state;
        let size = state.frontier.size();
        if let Some(last) = &state.last_checkpoint
            && last.checkpoint.size == size
        {
            return Ok(last.clone());
        }
        let checkpoint = Checkpoint::new(self.key.origin(), size, state.frontier.root());
        let note = checkpoint.sign(self.key.signer())?;
        let time = Timestamp::now();
        let stored = StoredCheckpoint {
            size,
            time,
            note: note.clone(),
        };
        if let Err(e) = integrator.writer.add_checkpoint(&stored).await {
            integrator.resync = true;
            if matches!(e, StoreError::WriterBusy(_)) {
                self.step_down().await;
            }
            return Err(e.into());
        }
        let signed = SignedCheckpoint {
            checkpoint,
            note,
            time,
        };
        state.last_checkpoint = Some(signed.clone());
        state.uncovered_since = None;
        Ok(signed)
    }
}

/// Gives `row` the next index and its subtree hashes.
fn push_row(frontier: &mut Frontier, rows: &mut Vec<LeafRow>, mut row: LeafRow, hash: Hash) {
    row.index = frontier.size();
    row.nodes = Vec::with_capacity(64);
    frontier.push_into(hash, &mut row.nodes);
    rows.push(row);
}

/// Re-reads size and frontier from the store after a failed write, whose
/// commit may or may not have happened: the store must be where this
/// appender left it or where the failed write would have taken it. Anything
/// else was written behind the appender's back (it holds the only writer):
/// it is not adopted into the log, and appends stay refused.
async fn reload(integrator: &mut Integrator, location: &str) -> Result<(), LedgerError> {
    let size = integrator.writer.size().await?;
    let nodes = integrator.writer.nodes(&root_nodes(size)).await?;
    let found = Frontier::from_nodes(size, nodes)?;
    let same = |f: &Frontier| f.size() == found.size() && f.nodes() == found.nodes();
    if !same(&integrator.state.frontier) && !integrator.pending.as_ref().is_some_and(same) {
        return Err(LedgerError::Inconsistent {
            location: location.to_owned(),
            reason: format!(
                "the store changed behind its appender: it holds {size} leaves, the appender \
                 wrote {} (or {} if its last write committed)",
                integrator.state.frontier.size(),
                integrator
                    .pending
                    .as_ref()
                    .map_or(integrator.state.frontier.size(), Frontier::size)
            ),
        });
    }
    integrator.state.frontier = found;
    integrator.pending = None;
    Ok(())
}

fn count(cmd: &Command) -> usize {
    match cmd {
        Command::Append { leaves, .. } => leaves.len(),
        Command::Checkpoint { .. } | Command::Shutdown { .. } => 0,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
