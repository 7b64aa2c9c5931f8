//! `App::build`: the server, wired once. Every way of running Rempart
//! (`rempart serve`, `demo`, `drill`, the benchmarks, the HTTP tests)
//! describes what it wants in a [`ServerConfig`] and gets its parts from
//! here, so that what is tested is what is deployed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rempart_auth::oidc::Federation;
use rempart_consult::login::LoginConfigError;
use rempart_consult::{
    ClientConfigError, ClientSettings, Clock, Consultation, LoginSettings, PurgeSettings,
};
use rempart_guard::{Guard, GuardConfig, GuardStore};
use rempart_ledger::LedgerStore;
use rempart_policy::{Authorizer, PolicyError};
use rempart_storage::Stores;
use rempart_vault::{Vault, VaultError};
use rempart_web::{AppState, Health, Limits, TrustedProxies};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::alerts::{self, AlertsError, ExportConfig, Exporter};
use crate::location::Storage;

/// Why a server could not be built. Each variant names the part; its
/// source says why.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The registry's database cannot be opened or migrated.
    #[error("opening the registry ({place})")]
    Registry {
        /// The database, without credentials.
        place: String,
        /// Why.
        #[source]
        source: rempart_storage::StorageError,
    },
    /// The key ring cannot be loaded.
    #[error("loading the keys (run `rempart init` first?)")]
    Keys(#[source] VaultError),
    /// The ledger's signing key cannot be loaded.
    #[error("loading the ledger key {} (run `rempart init` first?)", path.display())]
    LedgerKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rempart_ledger::KeyError,
    },
    /// The ledger's store cannot be opened.
    #[error("opening the audit ledger ({place})")]
    LedgerStore {
        /// The database, without credentials.
        place: String,
        /// Why.
        #[source]
        source: rempart_ledger::StoreError,
    },
    /// The ledger's single writer cannot be taken.
    #[error("taking the audit ledger's writer (is another server running on it?)")]
    Ledger(#[source] rempart_ledger::LedgerError),
    /// The policies do not load or validate.
    #[error("loading the policies{}", .dir.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default())]
    Policies {
        /// Their directory; none for the built-in ones.
        dir: Option<PathBuf>,
        /// Why.
        #[source]
        source: PolicyError,
    },
    /// The guard's state cannot be read.
    #[error("opening the guard's state")]
    Guard(#[source] rempart_guard::GuardError),
    /// Browser login or federation settings are invalid.
    #[error("browser login settings")]
    Login(#[source] LoginConfigError),
    /// API client settings are invalid.
    #[error("API client settings")]
    Clients(#[source] ClientConfigError),
    /// The alert export cannot start.
    #[error("alert export")]
    Alerts(#[source] AlertsError),
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP server failed.
    #[error("serving HTTP")]
    Http(#[source] std::io::Error),
    /// The ledger could not be closed with its final checkpoint.
    #[error("closing the audit ledger")]
    Ledger(#[source] rempart_ledger::LedgerError),
    /// The server's task panicked or was cancelled.
    #[error("server task: {0}")]
    Task(String),
}

/// Which policies decide.
#[derive(Debug, Clone, Default)]
pub enum Policies {
    /// The built-in schema and policies.
    #[default]
    Builtin,
    /// The `.cedar` files of a directory.
    Dir(PathBuf),
}

impl Policies {
    /// Loads and validates them: an invalid file stops start-up here.
    pub fn load(&self) -> Result<Authorizer, BuildError> {
        match self {
            Policies::Builtin => Authorizer::defaults(),
            Policies::Dir(dir) => Authorizer::from_dir(dir),
        }
        .map_err(|source| BuildError::Policies {
            dir: match self {
                Policies::Builtin => None,
                Policies::Dir(d) => Some(d.clone()),
            },
            source,
        })
    }
}

/// Which guard a server runs with.
#[derive(Debug, Clone)]
pub enum GuardChoice {
    /// The real guard over the registry's `GuardStore`, with this
    /// configuration; `sync` runs its sync task (and the alert export) in
    /// the background on the server's clock.
    Real {
        /// Thresholds, quotas, sync.
        config: Box<GuardConfig>,
        /// Run the sync task. A drill on a simulated clock syncs itself.
        sync: bool,
    },
    /// Everything allowed, nothing kept (benchmarks of other stages, jobs
    /// that are no consultation).
    PassThrough,
}

impl GuardChoice {
    /// The real guard with this configuration, syncing in the background.
    pub fn real(config: GuardConfig) -> GuardChoice {
        GuardChoice::Real {
            config: Box::new(config),
            sync: true,
        }
    }
}

/// What a server is made of. [`ServerConfig::new`] gives the production
/// defaults for a storage; the `with_*` methods change one part.
pub struct ServerConfig {
    /// Where the registry, the ledger and the keys are.
    pub storage: Storage,
    /// The policies.
    pub policies: Policies,
    /// The guard.
    pub guard: GuardChoice,
    /// The guard instance's id (random by default: instances sharing a
    /// store must differ).
    pub guard_instance: i64,
    /// Where stored alerts are exported (nothing by default).
    pub export: ExportConfig,
    /// Browser login (none by default).
    pub login: Option<LoginSettings>,
    /// API clients with `private_key_jwt` and DPoP (none by default).
    pub api_clients: Option<ClientSettings>,
    /// Federated login through an OpenID provider (needs `login`).
    pub federation: Option<Federation>,
    /// The clock every instant comes from (the system's by default).
    pub clock: Clock,
    /// Body, header and connection limits.
    pub limits: Limits,
    /// Load balancers believed about the client they forward for (none by
    /// default: the peer is the client).
    pub trusted_proxies: TrustedProxies,
    /// The purge of expired authentication rows (off by default).
    pub purge: Option<PurgeSettings>,
    /// How long a server told to stop keeps serving while `/readyz` says
    /// it is draining, so that load balancers take it out before it stops
    /// accepting (none by default).
    pub drain_grace: Duration,
}

impl ServerConfig {
    /// The built-in policies, the real guard with its defaults (syncing),
    /// no login, the system clock, default limits, no purge.
    pub fn new(storage: Storage) -> ServerConfig {
        ServerConfig {
            storage,
            policies: Policies::Builtin,
            guard: GuardChoice::real(GuardConfig::default()),
            guard_instance: rand::random::<i64>(),
            export: ExportConfig::default(),
            login: None,
            api_clients: None,
            federation: None,
            clock: Arc::new(chrono::Utc::now),
            limits: Limits::default(),
            trusted_proxies: TrustedProxies::default(),
            purge: None,
            drain_grace: Duration::ZERO,
        }
    }

    /// Keeps serving this long, not ready, once told to stop.
    pub fn with_drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// Other policies.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    /// Another guard.
    pub fn with_guard(mut self, guard: GuardChoice) -> Self {
        self.guard = guard;
        self
    }

    /// Browser login with these settings (they name the public URL).
    pub fn with_login(mut self, login: LoginSettings) -> Self {
        self.login = Some(login);
        self
    }

    /// API clients.
    pub fn with_api_clients(mut self, clients: ClientSettings) -> Self {
        self.api_clients = Some(clients);
        self
    }

    /// Another clock (tests and drills move time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

/// A built server: the consultation path over its opened parts, the
/// background tasks it runs, and what tests and tools read beside it.
pub struct App {
    consultation: Consultation,
    stores: Stores,
    ledger_store: Arc<dyn LedgerStore>,
    limits: Limits,
    trusted_proxies: TrustedProxies,
    policy_count: usize,
    tasks: Vec<JoinHandle<()>>,
    health: Health,
    drain_grace: Duration,
    /// Whether this server opened its ledger appender (and stops it when it
    /// closes) or shares another's.
    owns_ledger: bool,
}

impl App {
    /// Opens everything once, in this order: policies (an invalid file
    /// stops here, before any database), the registry's stores, the guard
    /// over them, the keys, the ledger (its single writer), then the login
    /// and client settings; starts the guard's sync and the purge if asked.
    /// Must run inside a Tokio runtime.
    pub async fn build(config: ServerConfig) -> Result<App, BuildError> {
        let ServerConfig {
            storage,
            policies,
            guard,
            guard_instance,
            export,
            login,
            api_clients,
            federation,
            clock,
            limits,
            trusted_proxies,
            purge,
            drain_grace,
        } = config;
        let policy = policies.load()?;
        let policy_count = policy.policy_count();
        let stores = storage.registry.open().await?;
        let (guard, sync) = match guard {
            GuardChoice::Real { config, sync } => (
                Guard::open(*config, stores.guard.clone(), guard_instance, clock())
                    .await
                    .map_err(BuildError::Guard)?,
                sync,
            ),
            GuardChoice::PassThrough => (Guard::pass_through(), false),
        };
        let vault = Vault::new(storage.keys, stores.registry.clone()).map_err(BuildError::Keys)?;
        let owns_ledger = matches!(storage.ledger, crate::LedgerSource::Own { .. });
        let (ledger, ledger_store) = storage.ledger.open().await?;
        let mut consultation =
            Consultation::new(vault, stores.auth.clone(), Arc::new(policy), guard, ledger)
                .with_clock(clock.clone());
        if let Some(login) = login {
            consultation = consultation
                .with_browser_login(login)
                .map_err(BuildError::Login)?;
        }
        if let Some(clients) = api_clients {
            consultation = consultation
                .with_api_clients(clients)
                .map_err(BuildError::Clients)?;
        }
        if let Some(federation) = federation {
            consultation = consultation
                .with_federation(federation)
                .map_err(BuildError::Login)?;
        }
        consultation = consultation.with_register(rempart_consult::Register {
            incidents: stores.incidents.clone(),
            notices: stores.notices.clone(),
        });
        let mut tasks = Vec::new();
        if sync {
            let exporter = Exporter::new(
                export,
                alerts::last_alert_id(stores.guard.as_ref())
                    .await
                    .map_err(BuildError::Alerts)?,
            )
            .await
            .map_err(BuildError::Alerts)?;
            tasks.push(alerts::spawn_sync(
                consultation.guard().clone(),
                stores.guard.clone(),
                exporter,
                clock.clone(),
            ));
        }
        if let Some(settings) = purge {
            tasks.push(rempart_consult::purge::spawn(
                stores.auth.clone(),
                settings,
                clock,
            ));
        }
        Ok(App {
            consultation,
            stores,
            ledger_store,
            limits,
            trusted_proxies,
            policy_count,
            tasks,
            health: Health::default(),
            drain_grace,
            owns_ledger,
        })
    }

    /// The consultation path.
    pub fn consultation(&self) -> &Consultation {
        &self.consultation
    }

    /// The registry's stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The guard's store.
    pub fn guard_store(&self) -> &Arc<dyn GuardStore> {
        &self.stores.guard
    }

    /// The ledger's store (read side: queries, proofs, counts).
    pub fn ledger_store(&self) -> &Arc<dyn LedgerStore> {
        &self.ledger_store
    }

    /// How many policies were loaded.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// What the router serves.
    pub fn state(&self) -> AppState {
        AppState {
            consultation: Arc::new(self.consultation.clone()),
            limits: self.limits,
            health: self.health.clone(),
            proxies: self.trusted_proxies.clone(),
        }
    }

    /// The HTTP router over this server's parts.
    pub fn router(&self) -> axum::Router {
        rempart_web::router(self.state())
    }

    /// Serves on `listener` until `stop`, then stops the background tasks,
    /// syncs the guard one last time (what this instance counted since the
    /// last sync) and closes the ledger with a final signed checkpoint.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state();
        // Told to stop: not ready first, for the grace period, then no
        // longer accepting; requests in flight finish with their leaves.
        let health = self.health.clone();
        let grace = self.drain_grace;
        let stop = async move {
            stop.await;
            health.start_draining();
            if !grace.is_zero() {
                tracing::info!(
                    grace_ms = grace.as_millis(),
                    "draining: not ready, still serving"
                );
                tokio::time::sleep(grace).await;
            }
        };
        let served = rempart_web::serve(listener, state, stop).await;
        let closed = self.close().await;
        served.map_err(ServeError::Http)?;
        closed
    }

    /// Serves on `listener` in a task of its own until [`Running::stop`].
    pub fn spawn(self, listener: TcpListener) -> Result<Running, ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Http)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Ends a server that served nothing (a job on the accounts) or has
    /// stopped serving: background tasks stopped, a last guard sync (a
    /// failure is logged: the next instance starts from the store), the
    /// ledger closed with its final checkpoint.
    pub async fn close(self) -> Result<(), ServeError> {
        for task in &self.tasks {
            task.abort();
        }
        // Alerts still waiting for a staged leaf's index join the last sync.
        self.consultation.finish_alerts().await;
        // A pass-through guard's sync does nothing.
        let guard = self.consultation.guard().clone();
        if let Err(e) = guard.sync(self.consultation.now()).await {
            tracing::warn!(error = %e, "guard: last sync failed");
        }
        let ledger = self.consultation.ledger().clone();
        drop(self.consultation);
        // Every answer already waited for its leaf to be durable. Closing
        // an appender of its own adds the final checkpoint and releases the
        // writer (another replica takes over) even if handles to it remain.
        if self.owns_ledger {
            return ledger.shutdown().await.map_err(ServeError::Ledger);
        }
        match ledger.checkpoint_now().await {
            // A staging replica signs nothing: the integrator does.
            Ok(_) | Err(rempart_ledger::LedgerError::NotIntegrating) => Ok(()),
            Err(e) => Err(ServeError::Ledger(e)),
        }
    }
}

/// A server serving in its own task.
pub struct Running {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, closes the ledger.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| ServeError::Task(e.to_string()))?
    }
}
