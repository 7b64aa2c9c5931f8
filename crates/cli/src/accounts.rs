//! `rempart accounts …`: the periodic review of who holds an account, and
//! the disabling of accounts nobody uses.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use rempart_consult::Consultation;
use rempart_consult::{INACTIVITY_DAYS, dormant};
use rempart_domain::Reference;
use rempart_domain::{AccountId, AccountState};
use rempart_storage::{AccountRecord, Store};

use rempart_server::{App, GuardChoice, ServerConfig};

use crate::location::Location;

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Print, per organisation, the accounts to recertify: login, role,
    /// state, when requested, decided and last logged in, who asked and who
    /// approved, and a flag for 90 days without a login.
    Review {
        #[command(flatten)]
        location: Location,
        /// Only this organisation (its code).
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Disable every active account without a login (or, never logged in,
    /// a decision or creation) for --days, end its sessions, and write one
    /// `account_disable` leaf per account to the audit ledger. Accounts of
    /// unknown history (imported) are left alone. Takes the ledger's
    /// writer: run it while `rempart serve` is stopped.
    DisableInactive {
        #[command(flatten)]
        location: Location,
        /// Days without a login (1–3650).
        #[arg(long, default_value_t = INACTIVITY_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

pub async fn run(cmd: AccountsCommand) -> Result<()> {
    match cmd {
        AccountsCommand::Review {
            location,
            organisation,
        } => review(&location, organisation.as_deref()).await,
        AccountsCommand::DisableInactive { location, days } => {
            disable_inactive(&location, days).await
        }
    }
}

async fn review(loc: &Location, organisation: Option<&str>) -> Result<()> {
    let stores = loc.open_stores().await?;
    let orgs = stores.registry.organisations().await?;
    let only = match organisation {
        None => None,
        Some(code) => match orgs.iter().find(|(_, o)| o.code.as_str() == code) {
            Some((id, _)) => Some(*id),
            None => bail!("no organisation with code {code}"),
        },
    };
    let entries = stores.auth.accounts_to_review(only).await?;
    let now = Utc::now();
    let mut logins = Logins::new(&stores.registry);
    let (mut dormant_count, mut unknown) = (0usize, 0usize);
    let mut current = None;
    for e in &entries {
        let a = &e.account;
        if current != Some(a.organisation_id) {
            current = Some(a.organisation_id);
            let n = entries
                .iter()
                .filter(|x| x.account.organisation_id == a.organisation_id)
                .count();
            println!(
                "\norganisation {} ({}), {n} account(s) to review:",
                a.organisation, a.kind
            );
            println!(
                "  {:<24} {:<8} {:<9} {:<10} {:<10} {:<10} {:<24} {:<24} flag",
                "login",
                "role",
                "state",
                "created",
                "decided",
                "last login",
                "requested by",
                "approved by"
            );
        }
        let h = &e.lifecycle;
        let flag = match dormant(h, now, INACTIVITY_DAYS) {
            Some(true) => {
                dormant_count += 1;
                format!("NO LOGIN IN {INACTIVITY_DAYS} DAYS")
            }
            Some(false) => String::new(),
            None => {
                unknown += 1;
                "history unknown".to_string()
            }
        };
        // Disabled accounts are not listed, so a decision on a listed
        // account is an approval.
        let approved_by = match a.state {
            AccountState::Requested => None,
            _ => h.decided_by,
        };
        println!(
            "  {:<24} {:<8} {:<9} {:<10} {:<10} {:<10} {:<24} {:<24} {flag}",
            a.login.as_str(),
            a.role.as_str(),
            a.state.as_str(),
            day(h.created_at),
            day(h.decided_at),
            day(h.last_login_at),
            logins.of(h.requested_by).await?,
            logins.of(approved_by).await?,
        );
    }
    println!(
        "\n{} account(s) to review, {dormant_count} without a login in {INACTIVITY_DAYS} days, {unknown} of unknown history (imported)",
        entries.len()
    );
    Ok(())
}

async fn disable_inactive(loc: &Location, days: u32) -> Result<()> {
    // A job on the accounts, not a consultation: the guard has no say.
    let app = open_job(loc).await?;
    let result = app.consultation().disable_inactive(Utc::now(), days).await;
    // The ledger is closed (final checkpoint) whatever happened.
    let closed = app.close().await;
    let disabled = result.context("disabling inactive accounts")?;
    closed?;
    for a in &disabled {
        println!(
            "disabled {} ({} of {}): no login for {days} days",
            a.login, a.role, a.organisation
        );
    }
    println!(
        "{} account(s) disabled, their sessions ended; one account_disable leaf each in the audit ledger",
        disabled.len()
    );
    Ok(())
}

fn day(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// Logins of the accounts named in the review, each looked up once.
struct Logins<'a> {
    store: &'a Store,
    known: HashMap<AccountId, String>,
}

impl<'a> Logins<'a> {
    fn new(store: &'a Store) -> Self {
        Logins {
            store,
            known: HashMap::new(),
        }
    }

    async fn of(&mut self, id: Option<AccountId>) -> Result<String> {
        let Some(id) = id else {
            return Ok("-".to_string());
        };
        if let Some(login) = self.known.get(&id) {
            return Ok(login.clone());
        }
        let login = match self.store.account_by_id(id).await? {
            Some(a) => a.login.as_str().to_string(),
            None => format!("#{id} (gone)"),
        };
        self.known.insert(id, login.clone());
        Ok(login)
    }
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

pub async fn account(cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::Credential(CredentialCommand::Issue {
            location,
            login,
            days,
        }) => {
            let store = location.open_store().await?;
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
            let store = location.open_store().await?;
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
    let app = open_job(loc).await?;
    let consultation = app.consultation();
    let account = find_account(consultation.store(), login).await?;
    let officer = find_officer(consultation, officer).await?;
    let result = consultation
        .issue_activation(account.account_id, officer.account_id)
        .await;
    let closed = app.close().await;
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
    let app = open_job(loc).await?;
    let consultation = app.consultation();
    let account = find_account(consultation.store(), login).await?;
    let officer = find_officer(consultation, officer).await?;
    let result = consultation
        .link_federation(account.account_id, issuer, subject, officer.account_id)
        .await;
    let closed = app.close().await;
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
    let app = open_job(loc).await?;
    let consultation = app.consultation();
    let officer = find_officer(consultation, officer).await?;
    let result = consultation
        .unlink_federation(issuer, subject, officer.account_id)
        .await;
    let account = match &result {
        Ok(Some(id)) => consultation.store().account_by_id(*id).await.ok().flatten(),
        _ => None,
    };
    let closed = app.close().await;
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

/// The parts of a one-off job on the accounts: not a consultation, so the
/// guard has no say. [`App::close`] closes its ledger (final checkpoint)
/// whatever the job's outcome, which the caller reports after.
async fn open_job(loc: &Location) -> Result<App> {
    Ok(
        App::build(ServerConfig::new(loc.server().storage()).with_guard(GuardChoice::PassThrough))
            .await?,
    )
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
