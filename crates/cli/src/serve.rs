//! `rempart serve`, `rempart account credential …` and `rempart bench
//! consult`: wiring the consultation path to HTTP and measuring it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rempart_consult::{ClientSettings, Consultation, LoginSettings, PurgeSettings};
use rempart_domain::{OrganisationKind, Purpose, Reference, Role};
use rempart_guard::{Guard, GuardConfig, GuardStore};
use rempart_ledger::{Ledger, LedgerConfig};
use rempart_policy::Authorizer;
use rempart_storage::{AccountRecord, Store};
use rempart_vault::Vault;
use rempart_web::{AppState, Limits};
use tokio::net::TcpListener;

use crate::{Location, audit, guard};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub location: Location,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory holding rempart.cedarschema and *.cedar policy files
    /// (default: the policies built into this program).
    #[arg(long, env = "REMPART_POLICIES")]
    pub policies: Option<PathBuf>,
    /// The URL browsers and API clients reach this server at (scheme,
    /// host, port): the passkeys' origin (its host is their relying-party
    /// id, which cannot be an IP address), the issuer client assertions
    /// name, and the base of the URL every DPoP and device proof names
    /// (never taken from the Host header). Default:
    /// http://localhost:<port of --listen>.
    #[arg(long, env = "REMPART_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The exfiltration guard's thresholds and alert export, TOML or JSON
    /// (by extension); the built-in defaults and no export without it.
    #[arg(long, env = "REMPART_GUARD_CONFIG")]
    pub guard_config: Option<PathBuf>,
    /// Federated login (ProConnect): the OpenID provider's issuer URL
    /// (https, or http on a loopback address). The login page then offers
    /// "Se connecter avec ProConnect"; without it, federation is off. Its
    /// redirect URI is the public URL followed by
    /// /connexion/federation/retour (register that one at the provider).
    #[arg(
        long,
        env = "REMPART_OIDC_ISSUER",
        requires_all = ["oidc_client_id", "oidc_client_secret_file"]
    )]
    pub oidc_issuer: Option<String>,
    /// This server's client id at the OpenID provider.
    #[arg(long, env = "REMPART_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    /// A file holding the client secret (its only line), so that the
    /// secret appears in no command line, environment or log.
    #[arg(
        long,
        env = "REMPART_OIDC_CLIENT_SECRET_FILE",
        requires = "oidc_issuer"
    )]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Seconds between two purges of expired authentication rows
    /// (ceremonies, replay keys, access tokens, sessions 30 days past
    /// their expiry); each purge deletes at most 10 rounds of 1,000 rows
    /// per table.
    #[arg(
        long,
        env = "REMPART_PURGE_INTERVAL_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub purge_interval_secs: u64,
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// API credentials of an account.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Activation codes: the first password and TOTP of an account
    /// approved under four eyes, or whose factors were reset.
    #[command(subcommand)]
    Activation(ActivationCommand),
    /// Federated identities (ProConnect): which identity of an OpenID
    /// provider logs in as which account.
    #[command(subcommand)]
    Federation(FederationCommand),
}

#[derive(Subcommand)]
pub enum FederationCommand {
    /// Link an identity of an OpenID provider (issuer and subject, as its
    /// id_tokens carry them) to an account: a federated login with
    /// multi-factor authentication by that identity then opens a session
    /// as the account. An identity links to one account; an account may
    /// hold several. Only an active officer links, never to their own
    /// account; one ledger leaf under the officer, refused or not. Takes
    /// the ledger's writer: run it while `rempart serve` is stopped.
    Link {
        #[command(flatten)]
        location: Location,
        /// Login of the account the identity logs in as.
        #[arg(long)]
        login: String,
        /// The provider's issuer URL, exactly as given to `rempart serve
        /// --oidc-issuer`.
        #[arg(long)]
        issuer: String,
        /// The provider's stable identifier of the person (`sub`).
        #[arg(long)]
        subject: String,
        /// Login of the officer making the link.
        #[arg(long)]
        officer: String,
    },
    /// Remove the link of an identity; the sessions its account opened by
    /// federated login end at once. Only an active officer; one ledger
    /// leaf under the officer. Run it while `rempart serve` is stopped.
    Unlink {
        #[command(flatten)]
        location: Location,
        /// The provider's issuer URL.
        #[arg(long)]
        issuer: String,
        /// The provider's identifier of the person (`sub`).
        #[arg(long)]
        subject: String,
        /// Login of the officer removing the link.
        #[arg(long)]
        officer: String,
    },
}

#[derive(Subcommand)]
pub enum ActivationCommand {
    /// Issue a new activation code (voiding the previous one) for an
    /// active account that was approved under four eyes and lacks its
    /// password or TOTP: printed once, only its digest kept, valid 72 h,
    /// one ledger leaf under the officer. Refused for an account never
    /// approved by an officer. Takes the ledger's writer: run it while
    /// `rempart serve` is stopped.
    Issue {
        #[command(flatten)]
        location: Location,
        /// Login of the account to activate.
        #[arg(long)]
        login: String,
        /// Login of the officer handing the code over (an active officer,
        /// not the account).
        #[arg(long)]
        officer: String,
    },
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Issue a credential; it is printed once and only its digest is kept.
    Issue {
        #[command(flatten)]
        location: Location,
        /// Login of the account.
        #[arg(long)]
        login: String,
        /// Days until the credential expires (1–365).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=365))]
        days: u16,
    },
    /// Revoke one credential (--id) or all credentials of an account.
    Revoke {
        #[command(flatten)]
        location: Location,
        #[arg(long)]
        login: String,
        #[arg(long)]
        id: Option<i64>,
    },
}

/// Loads and validates the policies: an invalid file stops start-up here.
pub fn load_policies(dir: Option<&PathBuf>) -> Result<Authorizer> {
    match dir {
        Some(dir) => Authorizer::from_dir(dir)
            .with_context(|| format!("loading the policies in {}", dir.display())),
        None => Authorizer::defaults().context("loading the built-in policies"),
    }
}

/// Which guard a consultation path runs with.
pub enum GuardChoice {
    /// The real guard over the stores' `GuardStore`, with this configuration.
    Real(Box<GuardConfig>),
    /// Everything allowed, nothing kept (the benchmarks of other stages,
    /// jobs that are no consultation).
    PassThrough,
}

/// The consultation path over the registry, the keys and the ledger at
/// `loc`; with `login`, browser sessions and login too. With a real guard,
/// its store comes back too, for the sync task ([`guard::spawn_sync`]).
pub async fn open_consultation(
    loc: &Location,
    policies: Authorizer,
    login: Option<LoginSettings>,
    guard: GuardChoice,
) -> Result<(Consultation, Arc<dyn GuardStore>)> {
    let stores = crate::accounts::open_stores(loc).await?;
    let guard = match guard {
        GuardChoice::Real(config) => Guard::open(
            *config,
            stores.guard.clone(),
            rand::random::<i64>(),
            chrono::Utc::now(),
        )
        .await
        .context("opening the guard's state")?,
        GuardChoice::PassThrough => Guard::pass_through(),
    };
    let vault = Vault::new(crate::key_source(loc), stores.registry.clone())
        .context("loading the keys (run `rempart init` first?)")?;
    let key = audit::load_key(loc)?;
    let store = audit::open_store(loc).await?;
    let ledger = Ledger::open(store, key, LedgerConfig::default())
        .await
        .context("taking the audit ledger's writer (is another server running on it?)")?;
    let consultation = Consultation::new(
        vault,
        stores.auth,
        Arc::new(policies),
        guard,
        Arc::new(ledger),
    );
    let consultation = match login {
        Some(settings) => consultation
            .with_browser_login(settings)
            .context("browser login settings")?,
        None => consultation,
    };
    Ok((consultation, stores.guard))
}

/// Serves until Ctrl-C/SIGTERM, then drains and closes the ledger with a
/// final signed checkpoint.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    // Fail-closed causes go to stderr (RUST_LOG overrides the level), and
    // so do the purge's counts, one line per run.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rempart_consult::purge=info")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let policies = load_policies(args.policies.as_ref())?;
    println!("policies: {} loaded and validated", policies.policy_count());
    let guard_config = guard::load_config(args.guard_config.as_deref())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = match &args.public_url {
        Some(url) => url.clone(),
        None => format!("http://localhost:{}", addr.port()),
    };
    let login = LoginSettings::new(&public_url).context("--public-url")?;
    let clients = ClientSettings::new(&public_url).context("--public-url")?;
    let (consultation, guard_store) = open_consultation(
        &args.location,
        policies,
        Some(login),
        GuardChoice::Real(Box::new(guard_config.guard)),
    )
    .await?;
    let consultation = consultation
        .with_api_clients(clients)
        .context("API client settings")?;
    let consultation = match &args.oidc_issuer {
        Some(issuer) => {
            let redirect_uri = format!(
                "{}{}",
                public_url.trim_end_matches('/'),
                rempart_web::pages::FEDERATION_CALLBACK_PATH
            );
            let federation = federation(args, issuer, &redirect_uri).await?;
            println!(
                "federated login: {issuer} (client {}), redirect URI {redirect_uri}",
                federation.client_id()
            );
            consultation
                .with_federation(federation)
                .context("federated login")?
        }
        None => consultation,
    };
    let exporter = guard::Exporter::new(
        guard_config.export,
        guard::last_alert_id(guard_store.as_ref()).await?,
    )
    .await?;
    println!(
        "guard: on (sync every {} s; {})",
        guard_config.guard.sync.interval_secs,
        match &args.guard_config {
            Some(p) => format!("configuration {}", p.display()),
            None => "default thresholds".to_string(),
        }
    );
    let sync = guard::spawn_sync(consultation.guard().clone(), guard_store, exporter);
    let purge_settings = PurgeSettings {
        interval: Duration::from_secs(args.purge_interval_secs),
        ..PurgeSettings::default()
    };
    purge_settings.check().context("--purge-interval-secs")?;
    let purge = rempart_consult::purge::spawn(
        consultation.auth_store().clone(),
        purge_settings,
        Arc::new(chrono::Utc::now),
    );
    println!(
        "purge of expired authentication rows: every {} s",
        args.purge_interval_secs
    );
    println!(
        "serving http://{addr}/api/v1 (OpenAPI: http://{addr}/api/v1/openapi.json); Ctrl-C stops"
    );
    println!("browser login: {public_url}/connexion");
    println!(
        "API client tokens: {public_url}{} (DPoP proofs name {public_url}/…)",
        rempart_consult::TOKEN_PATH
    );
    let guard = consultation.guard().clone();
    let served = run_until(listener, consultation, rempart_web::shutdown_signal()).await;
    sync.abort();
    purge.abort();
    // What this instance counted and raised since the last sync.
    if let Err(e) = guard.sync(chrono::Utc::now()).await {
        eprintln!("guard: last sync failed: {e}");
    }
    served
}

/// The OpenID provider `serve` was given, discovered (metadata and keys
/// read now: an unreachable or misconfigured provider stops start-up).
async fn federation(
    args: &ServeArgs,
    issuer: &str,
    redirect_uri: &str,
) -> Result<rempart_auth::oidc::Federation> {
    let (Some(client_id), Some(secret_file)) =
        (&args.oidc_client_id, &args.oidc_client_secret_file)
    else {
        bail!("--oidc-issuer needs --oidc-client-id and --oidc-client-secret-file");
    };
    let secret = read_secret(secret_file)?;
    rempart_auth::oidc::Federation::discover(
        issuer,
        client_id,
        &secret,
        redirect_uri,
        rempart_auth::oidc::AcceptedAssurance::proconnect(),
    )
    .await
    .with_context(|| format!("--oidc-issuer {issuer}: discovering the OpenID provider"))
}

/// A client secret from its file: the first line, without its end. The
/// error names the file, never its content.
fn read_secret(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("--oidc-client-secret-file {}", path.display()))?,
    );
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        bail!(
            "--oidc-client-secret-file {}: the file is empty",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by other users than its owner (chmod 600 it)",
                path.display()
            );
        }
    }
    Ok(zeroize::Zeroizing::new(secret.to_owned()))
}

/// Serves on `listener` until `stop`, then closes the ledger.
pub async fn run_until(
    listener: TcpListener,
    consultation: Consultation,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let ledger = consultation.ledger().clone();
    let state = AppState {
        consultation: consultation.into(),
        limits: Limits::default(),
    };
    rempart_web::serve(listener, state, stop)
        .await
        .context("serving HTTP")?;
    close_ledger(ledger).await
}

pub(crate) async fn close_ledger(ledger: Arc<Ledger>) -> Result<()> {
    // Every answer already waited for its leaf to be durable; closing adds
    // the final checkpoint.
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await.context("closing the audit ledger")?,
        Err(shared) => {
            shared
                .checkpoint_now()
                .await
                .context("final checkpoint of the audit ledger")?;
        }
    }
    println!("stopped; audit ledger closed with a final checkpoint");
    Ok(())
}

pub async fn account(cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::Credential(CredentialCommand::Issue {
            location,
            login,
            days,
        }) => {
            let store = crate::open_store(&location).await?;
            let account = find_account(&store, &login).await?;
            let issued = issue(&store, &account, i64::from(days)).await?;
            println!(
                "credential {} for {} ({} of {}), expires {}:",
                issued.id,
                account.login,
                account.role,
                account.organisation,
                issued.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            println!("{}", issued.token.as_str());
            println!("It is shown only now. Use it as `Authorization: Bearer <credential>`.");
            Ok(())
        }
        AccountCommand::Activation(ActivationCommand::Issue {
            location,
            login,
            officer,
        }) => issue_activation(&location, &login, &officer).await,
        AccountCommand::Federation(FederationCommand::Link {
            location,
            login,
            issuer,
            subject,
            officer,
        }) => link_federation(&location, &login, &issuer, &subject, &officer).await,
        AccountCommand::Federation(FederationCommand::Unlink {
            location,
            issuer,
            subject,
            officer,
        }) => unlink_federation(&location, &issuer, &subject, &officer).await,
        AccountCommand::Credential(CredentialCommand::Revoke {
            location,
            login,
            id,
        }) => {
            let store = crate::open_store(&location).await?;
            let account = find_account(&store, &login).await?;
            let n = store
                .revoke_credentials(account.account_id, id, chrono::Utc::now())
                .await?;
            println!("{n} credential(s) of {} revoked", account.login);
            Ok(())
        }
    }
}

/// `rempart account activation issue`: the code is printed once; the
/// store refuses an account never approved under four eyes.
async fn issue_activation(loc: &Location, login: &str, officer: &str) -> Result<()> {
    let (consultation, _) =
        open_consultation(loc, load_policies(None)?, None, GuardChoice::PassThrough).await?;
    let account = find_account(consultation.store(), login).await?;
    let officer = find_officer(&consultation, officer).await?;
    let ledger = consultation.ledger().clone();
    let result = consultation
        .issue_activation(account.account_id, officer.account_id)
        .await;
    drop(consultation);
    let closed = close_quietly(ledger).await;
    let issued = result.with_context(|| format!("activation code for {}", account.login))?;
    closed?;
    println!(
        "activation code for {} ({} of {}), handed over by {}, valid until {} (single use):",
        account.login,
        account.role,
        account.organisation,
        officer.login,
        issued
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!("{}", issued.code.as_str());
    println!("the person enters it at /activation; only its digest is kept");
    Ok(())
}

/// `rempart account federation link`.
async fn link_federation(
    loc: &Location,
    login: &str,
    issuer: &str,
    subject: &str,
    officer: &str,
) -> Result<()> {
    let (consultation, _) =
        open_consultation(loc, load_policies(None)?, None, GuardChoice::PassThrough).await?;
    let account = find_account(consultation.store(), login).await?;
    let officer = find_officer(&consultation, officer).await?;
    let ledger = consultation.ledger().clone();
    let result = consultation
        .link_federation(account.account_id, issuer, subject, officer.account_id)
        .await;
    drop(consultation);
    let closed = close_quietly(ledger).await;
    result.with_context(|| format!("linking an identity of {issuer} to {}", account.login))?;
    closed?;
    // The subject is not repeated: it identifies a person at the provider.
    println!(
        "identity of {issuer} linked to {} ({} of {}) by {}",
        account.login, account.role, account.organisation, officer.login
    );
    Ok(())
}

/// `rempart account federation unlink`.
async fn unlink_federation(
    loc: &Location,
    issuer: &str,
    subject: &str,
    officer: &str,
) -> Result<()> {
    let (consultation, _) =
        open_consultation(loc, load_policies(None)?, None, GuardChoice::PassThrough).await?;
    let officer = find_officer(&consultation, officer).await?;
    let ledger = consultation.ledger().clone();
    let result = consultation
        .unlink_federation(issuer, subject, officer.account_id)
        .await;
    let account = match &result {
        Ok(Some(id)) => consultation.store().account_by_id(*id).await.ok().flatten(),
        _ => None,
    };
    drop(consultation);
    let closed = close_quietly(ledger).await;
    let unlinked = result.with_context(|| format!("unlinking an identity of {issuer}"))?;
    closed?;
    match (unlinked, account) {
        (Some(_), Some(account)) => println!(
            "identity of {issuer} unlinked from {} by {}; its federated sessions ended",
            account.login, officer.login
        ),
        (Some(id), None) => println!(
            "identity of {issuer} unlinked from account {id} by {}; its federated sessions ended",
            officer.login
        ),
        (None, _) => bail!("no account is linked to this identity of {issuer}"),
    }
    Ok(())
}

/// The account `--officer` names (the store checks it is an officer).
async fn find_officer(consultation: &Consultation, officer: &str) -> Result<AccountRecord> {
    let login = Reference::parse(officer).context("--officer")?;
    consultation
        .store()
        .account_by_login(&login)
        .await?
        .with_context(|| format!("--officer: no account with login {login}"))
}

/// Closes the ledger of a one-off command (final checkpoint), whatever the
/// command's outcome, which the caller reports after.
async fn close_quietly(ledger: Arc<Ledger>) -> Result<()> {
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await.context("closing the audit ledger"),
        Err(shared) => shared
            .checkpoint_now()
            .await
            .map(|_| ())
            .context("final checkpoint of the audit ledger"),
    }
}

pub async fn find_account(store: &Store, login: &str) -> Result<AccountRecord> {
    let login = Reference::parse(login).context("--login")?;
    store
        .account_by_login(&login)
        .await?
        .with_context(|| format!("no account with login {login}"))
}

/// Issues a credential to an active account; a requested, suspended or
/// disabled account gets none.
pub async fn issue(
    store: &Store,
    account: &AccountRecord,
    days: i64,
) -> Result<rempart_consult::IssuedCredential> {
    rempart_consult::issue_credential(
        store,
        account.account_id,
        chrono::Duration::days(days),
        chrono::Utc::now(),
    )
    .await
    .with_context(|| format!("no credential for {}", account.login))
}

/// The active agent of a partner organisation of `kind` with the largest
/// live caseload for `purpose`, and that caseload.
pub async fn busiest_agent(
    store: &Store,
    kind: OrganisationKind,
    purpose: Purpose,
    max_scan: usize,
) -> Result<Option<(AccountRecord, Vec<i64>)>> {
    let today = chrono::Utc::now().date_naive();
    let mut best: Option<(AccountRecord, Vec<i64>)> = None;
    let orgs = store.organisations().await?;
    for (org_id, _) in orgs.iter().filter(|(_, o)| o.kind == kind).take(max_scan) {
        let accounts = store.accounts_of_organisation(*org_id).await?;
        let Some(agent) = accounts
            .into_iter()
            .find(|a| a.role == Role::Agent && a.state == rempart_domain::AccountState::Active)
        else {
            continue;
        };
        let mut persons = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .caseload(
                    *org_id,
                    agent.account_id,
                    Some(purpose),
                    today,
                    after,
                    10_000,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = last.person_id;
            persons.extend(page.iter().map(|e| e.person_id));
        }
        persons.dedup();
        if best.as_ref().is_none_or(|(_, p)| persons.len() > p.len()) {
            best = Some((agent, persons));
        }
    }
    Ok(best)
}

#[derive(Args)]
pub struct BenchConsultArgs {
    #[command(flatten)]
    pub location: Location,
    /// Seconds per measured round (each round measures the no-op endpoint,
    /// then consultations).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

/// One measured run: requests/s and latency percentiles.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: u64,
}

/// A benchmark server's own runtime: 2 workers, like the machine, so the
/// load generator on the caller's runtime does not share them.
fn server_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?)
}

/// Waits for a benchmark server's start-up report. On failure the server's
/// runtime is shut down in the background: it must not be dropped inside
/// this async context.
async fn server_ready<T>(
    server_rt: tokio::runtime::Runtime,
    ready: tokio::sync::oneshot::Receiver<Result<T>>,
) -> Result<(tokio::runtime::Runtime, T)> {
    match ready.await {
        Ok(Ok(ready)) => Ok((server_rt, ready)),
        Ok(Err(e)) => {
            server_rt.shutdown_background();
            Err(e.context("server start-up"))
        }
        Err(_) => {
            server_rt.shutdown_background();
            bail!("the server stopped during start-up")
        }
    }
}

/// Consultations/s over HTTP with keep-alive against the server's own no-op
/// endpoint, in one process: the server on its runtime, the load generator
/// on another, both on this machine.
pub async fn bench_consult(args: &BenchConsultArgs) -> Result<()> {
    let purpose = Purpose::FollowUp;
    // The server gets its own runtime (2 workers, like the machine) and
    // opens everything on it; the load generator runs on the caller's.
    let server_rt = server_runtime()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loc = args.location.clone();
    let server = server_rt.spawn(async move {
        let opened = async {
            let (consultation, _) =
                open_consultation(&loc, load_policies(None)?, None, GuardChoice::PassThrough)
                    .await?;
            let store = consultation.store().clone();
            let Some((agent, caseload)) =
                busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
            else {
                bail!(
                    "no active Cap emploi agent with a caseload: import a generated population first"
                );
            };
            if caseload.is_empty() {
                bail!("the chosen agent's caseload is empty");
            }
            let credential = issue(&store, &agent, 1).await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            Ok((consultation, agent, caseload, credential, listener))
        }
        .await;
        match opened {
            Ok((consultation, agent, caseload, credential, listener)) => {
                let addr = listener.local_addr()?;
                let _ = ready_tx.send(Ok((agent, caseload, credential, addr)));
                run_until(listener, consultation, async move {
                    let _ = stop_rx.await;
                })
                .await
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                Ok(())
            }
        }
    });
    let (server_rt, ready) = server_ready(server_rt, ready_rx).await?;
    let (agent, caseload, credential, addr) = ready;
    println!(
        "account {} ({} agent of {}), caseload {} persons, purpose {}, {} connections, {} round(s) of {} s",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        purpose,
        args.connections,
        args.rounds,
        args.duration
    );

    let base = format!("http://{addr}");
    let token = Arc::new(credential.token.as_str().to_string());
    let caseload = Arc::new(caseload);
    let ledger_before = leaf_count(&args.location).await.unwrap_or(0);

    let mut noop = Vec::new();
    let mut consult = Vec::new();
    let measured = measure(args, &base, &token, &caseload, &mut noop, &mut consult).await;
    let _ = stop_tx.send(());
    let served = server.await;
    server_rt.shutdown_background();
    measured?;
    served.context("server task")??;

    let failures: u64 = consult.iter().map(|r| r.failures).sum();
    let med = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (n_rps, c_rps) = (med(&noop, |r| r.rps), med(&consult, |r| r.rps));
    let ledger_after = leaf_count(&args.location).await.unwrap_or(0);
    println!(
        "median: consult {c_rps:.0} req/s, no-op {n_rps:.0} req/s, ratio {:.2} (target ≥ 0.5); ledger grew by {} leaves",
        c_rps / n_rps,
        ledger_after.saturating_sub(ledger_before)
    );
    println!(
        "RESULT consult_rps={c_rps:.1} consult_p50_ms={:.3} consult_p99_ms={:.3} noop_rps={n_rps:.1} noop_p50_ms={:.3} noop_p99_ms={:.3} organisation={} account={}",
        med(&consult, |r| r.p50_ms),
        med(&consult, |r| r.p99_ms),
        med(&noop, |r| r.p50_ms),
        med(&noop, |r| r.p99_ms),
        agent.organisation,
        agent.login
    );
    if failures > 0 {
        bail!("{failures} consultation(s) did not answer 200");
    }
    Ok(())
}

/// The warm-up and the measured rounds, alternating no-op and consultations.
async fn measure(
    args: &BenchConsultArgs,
    base: &str,
    token: &Arc<String>,
    caseload: &Arc<Vec<i64>>,
    noop: &mut Vec<Run>,
    consult: &mut Vec<Run>,
) -> Result<()> {
    // Warm-up: connections, caches, the ledger's first batches.
    load(
        base,
        token,
        caseload,
        args.connections,
        Duration::from_secs(2),
        false,
    )
    .await?;
    for round in 1..=args.rounds {
        let d = Duration::from_secs(args.duration);
        let n = load(base, token, caseload, args.connections, d, false).await?;
        let c = load(base, token, caseload, args.connections, d, true).await?;
        println!(
            "round {round}: no-op {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | consult {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} failed) | ratio {:.2}",
            n.rps,
            n.p50_ms,
            n.p99_ms,
            c.rps,
            c.p50_ms,
            c.p99_ms,
            c.failures,
            c.rps / n.rps
        );
        noop.push(n);
        consult.push(c);
    }
    Ok(())
}

async fn leaf_count(loc: &Location) -> Result<u64> {
    Ok(audit::open_store(loc).await?.size().await?)
}

/// `connections` keep-alive clients hammer either the no-op endpoint or a
/// random person of the caseload for `duration`.
async fn load(
    base: &str,
    token: &Arc<String>,
    caseload: &Arc<Vec<i64>>,
    connections: usize,
    duration: Duration,
    consult: bool,
) -> Result<Run> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for worker in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .no_proxy()
            .build()?;
        let base = base.to_string();
        let token = token.clone();
        let caseload = caseload.clone();
        tasks.push(tokio::spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let url = if consult {
                    let id = caseload[rng.random_range(0..caseload.len())];
                    format!("{base}/api/v1/persons/{id}?purpose=follow_up")
                } else {
                    format!("{base}/api/v1/health/live")
                };
                let t = Instant::now();
                let ok = match client.get(&url).bearer_auth(token.as_str()).send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        ok && r.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                latencies.push(t.elapsed().as_micros() as u32);
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        all.extend(l);
        failures += f;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    Ok(Run {
        rps: all.len() as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failures,
    })
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The demo's last step: serve the generated population, make one real
/// consultation as a Cap emploi agent, and print how to make one.
pub async fn demo(loc: &Location, listen: SocketAddr, no_serve: bool) -> Result<()> {
    let config = GuardConfig::default();
    let (consultation, guard_store) = open_consultation(
        loc,
        load_policies(None)?,
        None,
        GuardChoice::Real(Box::new(config)),
    )
    .await?;
    let _sync = AbortOnDrop(guard::spawn_sync(
        consultation.guard().clone(),
        guard_store,
        None,
    ));
    let store = consultation.store().clone();
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, Purpose::FollowUp, 50).await?
    else {
        bail!("the generated population has no Cap emploi agent with a caseload");
    };
    let Some(&person) = caseload.first() else {
        bail!("the chosen agent's caseload is empty");
    };
    let credential = issue(&store, &agent, 1).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (use --listen to pick another)"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_until(listener, consultation, async move {
        let _ = stop_rx.await;
    }));

    let url = format!("http://{addr}/api/v1/persons/{person}?purpose=follow_up");
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(&url)
        .bearer_auth(credential.token.as_str())
        .send()
        .await
        .context("first consultation")?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.context("first consultation's body")?;
    let groups = body["field_groups"].to_string();
    let nir_view = body["nir"]["view"].as_str().unwrap_or("none").to_string();
    println!(
        "{} agent {} of {} (caseload {} persons) read person {person} for follow_up: HTTP {status}, field groups {groups}, NIR {nir_view}, ledger leaf {}",
        agent.kind,
        agent.login,
        agent.organisation,
        caseload.len(),
        body["ledger_index"]
    );
    println!("\nTry it yourself (the credential is valid for one day):");
    println!("  export TOKEN={}", credential.token.as_str());
    println!("  curl -H \"Authorization: Bearer $TOKEN\" '{url}'");
    println!(
        "  curl -H \"Authorization: Bearer $TOKEN\" 'http://{addr}/api/v1/caseload?purpose=follow_up&limit=5'"
    );
    println!("  curl 'http://{addr}/api/v1/openapi.json'");
    println!(
        "Then `rempart audit query --data {} --account {}` lists what this account read.",
        loc.data.display(),
        agent.account_id
    );
    if no_serve {
        let _ = stop_tx.send(());
    } else {
        println!("\nServing on http://{addr}/api/v1 until Ctrl-C.");
        rempart_web::shutdown_signal().await;
        let _ = stop_tx.send(());
    }
    server.await.context("server task")??;
    if !status.is_success() {
        bail!("the first consultation failed with HTTP {status}");
    }
    Ok(())
}

/// The guard's configuration for `bench guard` and for `bench/consult.sh`
/// (one file, `bench/guard-load-test.toml`): the real guard with every
/// quota and threshold far away, so that the figure is the cost of
/// deciding on every request (counting, scoring, the sync task flushing to
/// the store), not of refusing a benchmark that reads like a bulk reader.
pub(crate) fn bench_guard_config() -> Result<GuardConfig> {
    let text = include_str!("../../../bench/guard-load-test.toml");
    Ok(guard::parse_config(text, rempart_guard::Format::Toml)
        .context("bench/guard-load-test.toml")?
        .guard)
}

/// `rempart bench guard`: one server process with the same parts served
/// twice, on two listeners, once behind the real guard (over the real
/// store, its sync task running) and once behind the pass-through guard;
/// rounds alternate between them.
pub async fn bench_guard(args: &BenchConsultArgs) -> Result<()> {
    let purpose = Purpose::FollowUp;
    let server_rt = server_runtime()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loc = args.location.clone();
    let server = server_rt.spawn(async move {
        let opened = async {
            let (guarded, guard_store) = open_consultation(
                &loc,
                load_policies(None)?,
                None,
                GuardChoice::Real(Box::new(bench_guard_config()?)),
            )
            .await?;
            let plain = guarded.clone().with_guard(Guard::pass_through());
            let store = guarded.store().clone();
            let Some((agent, caseload)) =
                busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
            else {
                bail!(
                    "no active Cap emploi agent with a caseload: import a generated population first"
                );
            };
            if caseload.is_empty() {
                bail!("the chosen agent's caseload is empty");
            }
            let credential = issue(&store, &agent, 1).await?;
            let sync = guard::spawn_sync(guarded.guard().clone(), guard_store, None);
            let l_guarded = TcpListener::bind("127.0.0.1:0").await?;
            let l_plain = TcpListener::bind("127.0.0.1:0").await?;
            Ok((
                guarded, plain, agent, caseload, credential, sync, l_guarded, l_plain,
            ))
        }
        .await;
        match opened {
            Ok((guarded, plain, agent, caseload, credential, sync, l_guarded, l_plain)) => {
                let addrs = (l_guarded.local_addr()?, l_plain.local_addr()?);
                let _ = ready_tx.send(Ok((agent, caseload, credential, addrs)));
                let (stop_plain_tx, stop_plain_rx) = tokio::sync::oneshot::channel::<()>();
                let plain_server = tokio::spawn(rempart_web::serve(
                    l_plain,
                    AppState {
                        consultation: plain.into(),
                        limits: Limits::default(),
                    },
                    async move {
                        let _ = stop_plain_rx.await;
                    },
                ));
                let served = run_until(l_guarded, guarded, async move {
                    let _ = stop_rx.await;
                    let _ = stop_plain_tx.send(());
                })
                .await;
                sync.abort();
                plain_server.await??;
                served
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                Ok(())
            }
        }
    });
    let (server_rt, ready) = server_ready(server_rt, ready_rx).await?;
    let (agent, caseload, credential, (guarded_addr, plain_addr)) = ready;
    println!(
        "account {} ({} agent of {}), caseload {} persons, {} connections, {} round(s) of {} s each way",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        args.connections,
        args.rounds,
        args.duration
    );
    let token = Arc::new(credential.token.as_str().to_string());
    let caseload = Arc::new(caseload);
    let (guarded_base, plain_base) = (
        format!("http://{guarded_addr}"),
        format!("http://{plain_addr}"),
    );
    let measured = async {
        let warm = Duration::from_secs(2);
        load(&plain_base, &token, &caseload, args.connections, warm, true).await?;
        load(&guarded_base, &token, &caseload, args.connections, warm, true).await?;
        let mut with = Vec::new();
        let mut without = Vec::new();
        for round in 1..=args.rounds {
            let d = Duration::from_secs(args.duration);
            let p = load(&plain_base, &token, &caseload, args.connections, d, true).await?;
            let g = load(&guarded_base, &token, &caseload, args.connections, d, true).await?;
            println!(
                "round {round}: pass-through {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | guard {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | ratio {:.3}",
                p.rps,
                p.p50_ms,
                p.p99_ms,
                g.rps,
                g.p50_ms,
                g.p99_ms,
                g.rps / p.rps
            );
            if p.failures + g.failures > 0 {
                bail!(
                    "{} consultation(s) did not answer 200",
                    p.failures + g.failures
                );
            }
            without.push(p);
            with.push(g);
        }
        anyhow::Ok((with, without))
    }
    .await;
    let _ = stop_tx.send(());
    let served = server.await;
    server_rt.shutdown_background();
    let (with, without) = measured?;
    served.context("server task")??;

    let med = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (g, p) = (med(&with, |r| r.rps), med(&without, |r| r.rps));
    let check = rempart_guard::bench::check_cost(31, 20_000, 200)?;
    println!(
        "median: guard {g:.0} req/s, pass-through {p:.0} req/s, ratio {:.3}, overhead {:.1}% (target ≤ 10%)",
        g / p,
        (1.0 - g / p) * 100.0
    );
    println!(
        "check: {:.2} µs per call with the guard, {:.3} µs pass-through ({} accounts, {} samples of {} calls)",
        check.check_median.as_secs_f64() * 1e6,
        check.pass_through_median.as_secs_f64() * 1e6,
        check.accounts,
        check.samples,
        check.calls_per_sample
    );
    println!(
        "RESULT guard_rps={g:.1} guard_p50_ms={:.3} guard_p99_ms={:.3} pass_rps={p:.1} pass_p50_ms={:.3} pass_p99_ms={:.3} ratio={:.4} check_us={:.3}",
        med(&with, |r| r.p50_ms),
        med(&with, |r| r.p99_ms),
        med(&without, |r| r.p50_ms),
        med(&without, |r| r.p99_ms),
        g / p,
        check.check_median.as_secs_f64() * 1e6
    );
    Ok(())
}
