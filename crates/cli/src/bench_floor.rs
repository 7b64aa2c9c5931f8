//! `rempart bench floor`: what a consultation cannot go below over HTTP.
//!
//! Every consultation appends its leaf to the audit ledger, durably, before
//! it answers. This server measures that part alone: it serves the real
//! router (so its no-op endpoint is the server's own) plus one route of its
//! own, `GET /bench/ledger-append`, that does nothing but append one leaf
//! shaped like a consultation's (one agent reading a random person of a
//! caseload of 200 for follow-up; ids only) to a throwaway ledger with the
//! same store and group commit as the real one, then answer the leaf's
//! index. A load generator on the same machine (`bench/consult.sh` drives
//! wrk) compares the two: a consultation, whatever else it skips, costs at
//! least that append. The route exists in this command only, never in `rempart serve`,
//! and the throwaway ledger (a directory inside the data directory, on the
//! same file system as the real ledger) is deleted when the server stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use rempart_domain::{FieldGroup, Purpose};
use rempart_ledger::{
    AccountId, Action, AuditLeaf, Decision, FieldGroups, GuardVerdict, Ledger, LedgerKey,
    OrganisationId, PersonId, Timestamp,
};
use rempart_server::{LedgerAt, LedgerKeyFrom, LedgerSource};
use tokio::net::TcpListener;

use crate::location::Location;
use rempart_server::{App, GuardChoice, ServerConfig};

/// Arguments of `rempart bench floor`.
#[derive(Args)]
pub struct BenchFloorArgs {
    #[command(flatten)]
    pub location: Location,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

/// The bench route's state: the throwaway ledger.
#[derive(Clone)]
struct Floor {
    ledger: Arc<Ledger>,
}

/// The caseload the bench leaves name persons from, like a partner
/// advisor's (`rempart bench consult` reads one of about 200).
const CASELOAD: u64 = 200;

/// Serves the real router and the append route until Ctrl-C/SIGTERM.
pub async fn bench_floor(args: &BenchFloorArgs) -> Result<()> {
    let app = App::build(
        ServerConfig::new(args.location.server().storage()).with_guard(GuardChoice::PassThrough),
    )
    .await?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-floor-ledger-")
        .tempdir_in(&args.location.data)
        .with_context(|| {
            format!(
                "a scratch directory in {}",
                args.location.data.as_path().display()
            )
        })?;
    let key = LedgerKey::generate("rempart.bench/floor").context("a throwaway ledger key")?;
    let (ledger, _) = LedgerSource::Own {
        at: LedgerAt::Sqlite(scratch.path().to_path_buf()),
        key: LedgerKeyFrom::Key(Box::new(key)),
    }
    .open()
    .await
    .context("the throwaway ledger")?;
    let floor = Floor { ledger };
    let router = app.router().merge(
        Router::new()
            .route("/bench/ledger-append", get(append))
            .with_state(floor.clone()),
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "bench floor: no-op http://{0}/api/v1/health/live, durable append http://{0}/bench/ledger-append; Ctrl-C stops",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(rempart_web::shutdown_signal())
    .await
    .context("serving HTTP")?;
    let appended = floor.ledger.size();
    if let Ok(ledger) = Arc::try_unwrap(floor.ledger) {
        ledger
            .close()
            .await
            .context("closing the throwaway ledger")?;
    }
    println!("{appended} throwaway leaves appended");
    // The real ledger received nothing from this command; the throwaway
    // one goes with its directory.
    app.close().await?;
    println!("stopped; audit ledger closed with a final checkpoint");
    Ok(())
}

/// One durable append of a consultation's leaf, then its index.
async fn append(State(floor): State<Floor>) -> Response {
    let leaf = AuditLeaf {
        time: Timestamp(chrono::Utc::now().timestamp_micros()),
        account: AccountId::new(1),
        organisation: OrganisationId::new(1),
        session: None,
        person: Some(PersonId::new(1 + (rand::random::<u64>() % CASELOAD) as i64)),
        action: Action::ReadPerson,
        field_groups: FieldGroups::of(FieldGroup::ALL),
        purpose: Some(Purpose::FollowUp),
        decision: Decision::Allow,
        guard: Some(GuardVerdict::Allow),
        note: None,
    };
    match floor.ledger.append(&leaf).await {
        Ok(leaf) => axum::Json(serde_json::json!({ "index": leaf.index() })).into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
