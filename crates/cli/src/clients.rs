//! `rempart client …`: registering and revoking API clients (partner
//! software using `private_key_jwt` and DPoP-bound tokens).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Subcommand};
use rempart_auth::client_assertion::ClientKey;
use rempart_auth::jose::PublicJwk;
use serde_json::Value;

use crate::accounts::find_account;
use crate::location::Location;

/// Largest key file read, in bytes: a JWK is a few hundred bytes.
const MAX_KEY_FILE: u64 = 64 * 1024;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Register an API client acting as an active account, with the public
    /// key(s) its assertions are signed with; prints the client id. The
    /// client then gets short-lived DPoP-bound tokens at POST
    /// /api/v1/token.
    #[command(group(ArgGroup::new("key").required(true).args(["jwk", "jwks"])))]
    Register {
        #[command(flatten)]
        location: Location,
        /// Login of the account the client acts for (same mandates, same
        /// policy).
        #[arg(long)]
        login: String,
        /// A file holding one public JWK (EC P-256 or OKP Ed25519; its
        /// `kid`, if any, is kept).
        #[arg(long)]
        jwk: Option<PathBuf>,
        /// A file holding a JWK set, `{"keys": [...]}`, of up to 4 public
        /// keys (while the client rotates its key).
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// Revoke an API client: its assertions are refused and its access
    /// tokens stop working at once.
    Revoke {
        #[command(flatten)]
        location: Location,
        /// The client id `rempart client register` printed.
        #[arg(long)]
        client_id: String,
    },
}

pub async fn run(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Register {
            location,
            login,
            jwk,
            jwks,
        } => {
            let keys = match (jwk, jwks) {
                (Some(file), None) => vec![client_key(&read_json(&file)?, &file, "--jwk")?],
                (None, Some(file)) => key_set(&read_json(&file)?, &file)?,
                _ => bail!("give exactly one of --jwk and --jwks"),
            };
            let stores = location.open_stores().await?;
            let account = find_account(&stores.registry, &login).await?;
            let client_id = rempart_consult::clients::register_client(
                stores.auth.as_ref(),
                &account,
                keys,
                chrono::Utc::now(),
            )
            .await
            .with_context(|| format!("no API client for {}", account.login))?;
            println!(
                "API client registered for {} ({} of {}):",
                account.login, account.role, account.organisation
            );
            println!("{client_id}");
            println!(
                "Use it as iss and sub of the client assertions it signs (aud: the server's \
                 public URL + {}).",
                rempart_consult::TOKEN_PATH
            );
            Ok(())
        }
        ClientCommand::Revoke {
            location,
            client_id,
        } => {
            let stores = location.open_stores().await?;
            rempart_consult::clients::revoke_client(
                stores.auth.as_ref(),
                &client_id,
                chrono::Utc::now(),
            )
            .await
            .context("--client-id")?;
            println!("API client {client_id} revoked; its access tokens are deleted");
            Ok(())
        }
    }
}

fn read_json(file: &Path) -> Result<Value> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if len > MAX_KEY_FILE {
        bail!("{}: larger than {MAX_KEY_FILE} bytes", file.display());
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
}

/// One JWK object: the public key, and its `kid` if it has one. A private
/// key is refused (the JWK checks name the member), never echoed.
fn client_key(value: &Value, file: &Path, what: &str) -> Result<ClientKey> {
    let jwk = PublicJwk::from_value(value)
        .with_context(|| format!("{what} {}: not a usable public JWK", file.display()))?;
    let kid = match value.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 128 => Some(k.clone()),
        Some(_) => bail!(
            "{what} {}: kid must be a string of 1 to 128 bytes",
            file.display()
        ),
    };
    Ok(ClientKey { kid, jwk })
}

fn key_set(value: &Value, file: &Path) -> Result<Vec<ClientKey>> {
    let Some(Value::Array(keys)) = value.get("keys") else {
        bail!(
            "--jwks {}: must be a JWK set, {{\"keys\": [...]}}",
            file.display()
        );
    };
    keys.iter()
        .enumerate()
        .map(|(i, k)| client_key(k, file, &format!("--jwks keys[{i}]")))
        .collect()
}
