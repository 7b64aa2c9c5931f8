//! `rempart serve`: the API over the deployment's data, through
//! `rempart_server::App`, until Ctrl-C/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rempart_consult::{ClientSettings, LoginSettings, PurgeSettings};
use rempart_server::{App, GuardChoice, Policies, ServerConfig};
use tokio::net::TcpListener;

use crate::location::Location;

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
    /// Milliseconds a server told to stop (SIGTERM, Ctrl-C) keeps serving
    /// while `/readyz` answers 503 `draining`, before it stops accepting:
    /// set it above the load balancer's health-check interval times its
    /// fall count, so that no new request is sent to a closed port.
    #[arg(
        long,
        env = "REMPART_DRAIN_GRACE_MS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=600_000)
    )]
    pub drain_grace_ms: u64,
    /// A load balancer (address or network, e.g. 127.0.0.1 or 10.0.0.0/8)
    /// whose `X-Forwarded-For` names the client: per-address login limits
    /// then count the client, not the balancer. Repeat for several. Only
    /// what connects from these is believed.
    #[arg(long = "trusted-proxy", env = "REMPART_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

fn parse_proxy(text: &str) -> Result<ipnet::IpNet, rempart_web::BadProxy> {
    rempart_web::TrustedProxies::parse_one(text)
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
    let guard_file = rempart_server::alerts::load_config(args.guard_config.as_deref())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = match &args.public_url {
        Some(url) => url.clone(),
        None => format!("http://localhost:{}", addr.port()),
    };
    let purge = PurgeSettings {
        interval: Duration::from_secs(args.purge_interval_secs),
        ..PurgeSettings::default()
    };
    purge.check().context("--purge-interval-secs")?;
    let sync_secs = guard_file.guard.sync.interval_secs;
    let mut config = ServerConfig::new(args.location.server().storage())
        .with_policies(match &args.policies {
            Some(dir) => Policies::Dir(dir.clone()),
            None => Policies::Builtin,
        })
        .with_guard(GuardChoice::real(guard_file.guard))
        .with_login(LoginSettings::new(&public_url).context("--public-url")?)
        .with_api_clients(ClientSettings::new(&public_url).context("--public-url")?)
        .with_drain_grace(Duration::from_millis(args.drain_grace_ms));
    config.trusted_proxies = rempart_web::TrustedProxies::new(args.trusted_proxies.clone());
    config.export = guard_file.export;
    config.purge = Some(purge);
    if let Some(issuer) = &args.oidc_issuer {
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
        config.federation = Some(federation);
    }
    let app = App::build(config).await?;
    println!("policies: {} loaded and validated", app.policy_count());
    println!(
        "guard: on (sync every {sync_secs} s; {})",
        match &args.guard_config {
            Some(p) => format!("configuration {}", p.display()),
            None => "default thresholds".to_string(),
        }
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
    app.serve(listener, rempart_web::shutdown_signal()).await?;
    println!("stopped; audit ledger closed with a final checkpoint");
    Ok(())
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
