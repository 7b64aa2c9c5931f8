//! `rempart accounts …`: the periodic review of who holds an account, and
//! the disabling of accounts nobody uses.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use rempart_consult::{INACTIVITY_DAYS, dormant};
use rempart_domain::AccountState;
use rempart_storage::{Store, Stores};

use crate::{Location, describe, serve};

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

/// Both store interfaces on the registry at `loc`.
pub async fn open_stores(loc: &Location) -> Result<Stores> {
    let target = match &loc.database {
        Some(url) => url.clone(),
        None => loc.data.display().to_string(),
    };
    rempart_storage::open_stores(&target)
        .await
        .with_context(|| format!("opening the registry ({})", describe(loc)))
}

async fn review(loc: &Location, organisation: Option<&str>) -> Result<()> {
    let stores = open_stores(loc).await?;
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
    let (consultation, _) = serve::open_consultation(
        loc,
        serve::load_policies(None)?,
        None,
        serve::GuardChoice::PassThrough,
    )
    .await?;
    let ledger = consultation.ledger().clone();
    let result = consultation.disable_inactive(Utc::now(), days).await;
    drop(consultation);
    // The ledger is closed (final checkpoint) whatever happened.
    let closed = match std::sync::Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await.context("closing the audit ledger"),
        Err(shared) => shared
            .checkpoint_now()
            .await
            .map(|_| ())
            .context("final checkpoint of the audit ledger"),
    };
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
    known: HashMap<i64, String>,
}

impl<'a> Logins<'a> {
    fn new(store: &'a Store) -> Self {
        Logins {
            store,
            known: HashMap::new(),
        }
    }

    async fn of(&mut self, id: Option<i64>) -> Result<String> {
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
