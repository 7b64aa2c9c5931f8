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
//! One appender per store: the store's writer lock makes a second one (in
//! this process or another) fail at [`Ledger::open`].
//!
//! Where the appender runs depends on its writer. A writer whose calls block
//! (SQLite) gets a thread of its own, `ledger-writer`, which runs its calls
//! inline: a commit then costs no hop to the blocking pool and back, only
//! the callers' wakeups. A writer that talks to a server asynchronously
//! (PostgreSQL) runs as a task on the caller's runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::key::LedgerKey;
use crate::leaf::{AuditLeaf, Timestamp};
use crate::merkle::{ConsistencyProof, Frontier, Hash, InclusionProof, leaf_hash, root_nodes};
use crate::note::VerifierKey;
use crate::store::{LeafRow, LedgerStore, LedgerWriter, StoredCheckpoint};
use crate::{LeafIndex, LedgerError, proof};

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
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 4096,
            queue_depth: 16_384,
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

type AppendReply = oneshot::Sender<Result<LeafIndex, LedgerError>>;

enum Command {
    Append {
        leaves: Vec<Prepared>,
        reply: AppendReply,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<SignedCheckpoint, LedgerError>>,
    },
}

/// The ledger's appender. Cheap to share behind an `Arc`; all methods take
/// `&self`.
pub struct Ledger {
    commands: mpsc::Sender<Command>,
    store: Arc<dyn LedgerStore>,
    verifier: VerifierKey,
    size: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    runner: std::sync::Mutex<Option<Runner>>,
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
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Takes the store's writer, checks the store against its latest
    /// checkpoint (a ledger that no longer matches it is not appended to),
    /// and starts the appender. Must be called within a tokio runtime.
    pub async fn open(
        store: Arc<dyn LedgerStore>,
        key: LedgerKey,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        let mut writer = store.writer().await?;
        let state = load_state(writer.as_mut(), store.as_ref(), &key).await?;
        let verifier = key.verifier();
        let size = Arc::new(AtomicU64::new(state.frontier.size()));
        let batches = Arc::new(AtomicU64::new(0));
        let (commands, rx) = mpsc::channel(config.queue_depth.max(1));
        let mut appender = Appender {
            writer,
            key,
            config,
            state,
            size: size.clone(),
            batches: batches.clone(),
            resync: false,
        };
        let runner = if appender.writer.use_own_thread() {
            spawn_thread(appender, rx)?
        } else {
            Runner::Task(tokio::spawn(appender.run(rx)))
        };
        Ok(Ledger {
            commands,
            store,
            verifier,
            size,
            batches,
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

    /// Number of leaves durably appended so far.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Number of transactions that committed appends since opening (fewer
    /// than the appends when group commit merges them).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Acquire)
    }

    /// Appends one leaf; returns once it is committed and synced, with its
    /// index. On error the leaf is not in the ledger: release nothing.
    pub async fn append(&self, leaf: &AuditLeaf) -> Result<LeafIndex, LedgerError> {
        self.send_append(vec![prepare(leaf)?]).await
    }

    /// Appends leaves as consecutive indices in one transaction; returns the
    /// first index. All or none.
    pub async fn append_batch(&self, leaves: &[AuditLeaf]) -> Result<LeafIndex, LedgerError> {
        let prepared = leaves.iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(self.size());
        }
        self.send_append(prepared).await
    }

    async fn send_append(&self, leaves: Vec<Prepared>) -> Result<LeafIndex, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { leaves, reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Signs and stores a checkpoint of the current size now (or returns the
    /// latest one if no leaf was appended since).
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Checkpoint { reply })
            .await
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Stops the appender after the queued appends, with a final checkpoint;
    /// releases the writer lock.
    pub async fn close(self) -> Result<(), LedgerError> {
        let final_checkpoint = self.checkpoint_now().await;
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
        final_checkpoint.map(|_| ())
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
        row: LeafRow {
            index: 0,
            time: leaf.time.0,
            account: leaf.account.get(),
            organisation: leaf.organisation.get(),
            person: leaf.person.map(|p| p.get()),
            reveals: leaf.reveals_person_data(),
            data,
            nodes: Vec::new(),
        },
        hash,
    })
}

/// What the appender knows of the store.
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

struct Appender {
    writer: Box<dyn LedgerWriter>,
    key: LedgerKey,
    config: LedgerConfig,
    state: State,
    size: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    /// Set after a failed write: the store's state must be re-read.
    resync: bool,
}

impl Appender {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let max_batch = self.config.max_batch.max(1);
        let mut pending = Vec::new();
        loop {
            let deadline = self.checkpoint_deadline();
            let first = tokio::select! {
                biased;
                cmd = rx.recv() => cmd,
                () = sleep_until(deadline) => {
                    // A failed timed checkpoint is retried at the next
                    // occasion; appends do not depend on it.
                    let _ = self.checkpoint().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut leaves = count(&first);
            pending.push(first);
            while leaves < max_batch {
                match rx.try_recv() {
                    Ok(cmd) => {
                        leaves += count(&cmd);
                        pending.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.handle(&mut pending).await;
        }
        if self.state.frontier.size() > self.state.checkpointed_size() {
            let _ = self.checkpoint().await;
        }
        self.writer.close().await;
    }

    fn checkpoint_deadline(&self) -> Option<Instant> {
        if self.config.checkpoint_interval.is_zero() {
            return None;
        }
        self.state
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
            }
        }
        if !appends.is_empty() {
            self.write(appends).await;
        }
        let by_count = self.config.checkpoint_every > 0
            && self.state.frontier.size()
                >= self.state.checkpointed_size() + self.config.checkpoint_every;
        // Under steady load the queue is never empty and the timer in `run`
        // never fires: check the deadline here too.
        let by_time = self
            .checkpoint_deadline()
            .is_some_and(|d| d <= Instant::now());
        let due = by_count || by_time;
        if due || !checkpoints.is_empty() {
            let result = self.checkpoint().await;
            for reply in checkpoints {
                let answer = match &result {
                    Ok(c) => Ok(c.clone()),
                    Err(e) => Err(LedgerError::AppendFailed(format!("checkpoint: {e}"))),
                };
                let _ = reply.send(answer);
            }
        }
    }

    async fn write(&mut self, appends: Vec<(Vec<Prepared>, AppendReply)>) {
        if self.resync {
            match self.reload().await {
                Ok(()) => self.resync = false,
                Err(e) => {
                    let reason = format!("the ledger store is unavailable: {e}");
                    for (_, reply) in appends {
                        let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                    }
                    return;
                }
            }
        }
        let first = self.state.frontier.size();
        // Work on a copy: if the write fails, the state stays as the store is.
        let mut frontier = self.state.frontier.clone();
        let total: usize = appends.iter().map(|(l, _)| l.len()).sum();
        let mut rows = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        for (leaves, reply) in appends {
            starts.push(frontier.size());
            replies.push(reply);
            for Prepared { mut row, hash } in leaves {
                row.index = frontier.size();
                row.nodes = Vec::with_capacity(64);
                frontier.push_into(hash, &mut row.nodes);
                rows.push(row);
            }
        }
        match self.writer.append(first, rows).await {
            Ok(()) => {
                if self.state.uncovered_since.is_none() {
                    self.state.uncovered_since = Some(Instant::now());
                }
                self.state.frontier = frontier;
                self.size
                    .store(self.state.frontier.size(), Ordering::Release);
                self.batches.fetch_add(1, Ordering::AcqRel);
                for (start, reply) in starts.into_iter().zip(replies) {
                    let _ = reply.send(Ok(start));
                }
            }
            Err(e) => {
                self.resync = true;
                let reason = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::AppendFailed(reason.clone())));
                }
            }
        }
    }

    /// Re-reads size and frontier from the store (after a failed write,
    /// whose commit may or may not have happened).
    async fn reload(&mut self) -> Result<(), LedgerError> {
        let size = self.writer.size().await?;
        let nodes = self.writer.nodes(&root_nodes(size)).await?;
        self.state.frontier = Frontier::from_nodes(size, nodes)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<SignedCheckpoint, LedgerError> {
        if self.resync {
            self.reload().await?;
            self.resync = false;
        }
        let size = self.state.frontier.size();
        if let Some(last) = &self.state.last_checkpoint
            && last.checkpoint.size == size
        {
            return Ok(last.clone());
        }
        let checkpoint = Checkpoint::new(self.key.origin(), size, self.state.frontier.root());
        let note = checkpoint.sign(self.key.signer())?;
        let time = Timestamp::now();
        let stored = StoredCheckpoint {
            size,
            time,
            note: note.clone(),
        };
        if let Err(e) = self.writer.add_checkpoint(&stored).await {
            self.resync = true;
            return Err(e.into());
        }
        let signed = SignedCheckpoint {
            checkpoint,
            note,
            time,
        };
        self.state.last_checkpoint = Some(signed.clone());
        self.state.uncovered_since = None;
        Ok(signed)
    }
}

fn count(cmd: &Command) -> usize {
    match cmd {
        Command::Append { leaves, .. } => leaves.len(),
        Command::Checkpoint { .. } => 0,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
