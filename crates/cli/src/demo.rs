//! `rempart demo`: everything set up on the embedded default and shown
//! working.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rempart_domain::{OrganisationKind, Purpose};
use rempart_guard::GuardConfig;
use rempart_server::{App, GuardChoice, ServerConfig};
use tokio::net::TcpListener;

use crate::accounts::issue;
use crate::audit;
use crate::bench::busiest_agent;
use crate::location::Location;
use crate::registry::{GenerateArgs, ImportArgs, generate, import, init, inventory};

#[derive(Args)]
pub struct DemoArgs {
    /// Directory for the demo's data and CSV files.
    #[arg(long, default_value = "rempart-demo")]
    pub dir: PathBuf,
    /// Number of synthetic persons.
    #[arg(long, default_value_t = 20_000)]
    pub persons: u64,
    /// Address the demo server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Stop after the first consultation instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_serve: bool,
}

pub async fn run(args: &DemoArgs) -> Result<()> {
    let data = args.dir.join("data");
    let csv = args.dir.join("csv");
    let loc = Location {
        data: data.clone(),
        database: None,
    };
    println!("== 1. init: keys and registry in {}", data.display());
    init(&loc, audit::DEFAULT_ORIGIN).await?;
    println!(
        "\n== 2. generate: {} synthetic persons into {}",
        args.persons,
        csv.display()
    );
    generate(&GenerateArgs {
        persons: args.persons,
        seed: 1,
        out: csv.clone(),
        today: None,
    })?;
    println!("\n== 3. import (run it again: everything comes back unchanged)");
    import(&ImportArgs {
        location: loc.clone(),
        strict: false,
        rejects: args.dir.join("rejects.csv"),
        batch: 8192,
        today: None,
        inputs: vec![csv],
    })
    .await?;
    println!("\n== 4. what the store holds");
    let vault = loc.open_vault().await?;
    inventory(&vault).await?;
    println!(
        "\nEvery name, NIR, e-mail and phone is sealed: try `grep -c Martin {}/registry.db` (0).",
        data.display()
    );
    drop(vault);
    println!("\n== 5. serve the API and make a first consultation");
    serve_and_consult(&loc, args.listen, args.no_serve).await
}

/// The demo's last step: serve the generated population, make one real
/// consultation as a Cap emploi agent, and print how to make one.
async fn serve_and_consult(loc: &Location, listen: SocketAddr, no_serve: bool) -> Result<()> {
    let app = App::build(
        ServerConfig::new(loc.server().storage())
            .with_guard(GuardChoice::real(GuardConfig::default())),
    )
    .await?;
    let store = app.consultation().store().clone();
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
    let server = app.spawn(listener)?;
    let addr = server.addr;

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
    if !no_serve {
        println!("\nServing on http://{addr}/api/v1 until Ctrl-C.");
        rempart_web::shutdown_signal().await;
    }
    server.stop().await?;
    if !status.is_success() {
        bail!("the first consultation failed with HTTP {status}");
    }
    Ok(())
}
