//! `rempart bench session`: what the device-bound session costs.
//!
//! Two figures, on an imported population:
//! - the device proof's verification alone (ES256 signature, claims,
//!   thumbprint, replay cache), median over many fresh proofs;
//! - over HTTP (one keep-alive connection, requests in sequence), the
//!   portal's caseload fragment with session cookie and device proof
//!   beside the same caseload page through the JSON API with a bearer
//!   credential (no proof), and the no-op endpoint as the floor.
//!
//! The session is written straight into the store, bound to the bench's
//! own P-256 key (as a login would bind the page's WebCrypto key); proofs
//! are signed before each timed request, as the browser signs before it
//! sends.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Duration, Utc};
use clap::Args;
use rempart_auth::dpop::{DpopProof, Expected, ReplayCache};
use rempart_auth::jose::AlgSet;
use rempart_consult::LoginSettings;
use rempart_domain::{OrganisationKind, Purpose};
use rempart_storage::{AuthStore, StoredSession};
use tokio::net::TcpListener;

use rempart_server::{App, GuardChoice, ServerConfig};

use crate::accounts::issue;
use crate::bench::busiest_agent;
use crate::device_key::DeviceKey;
use crate::location::Location;

#[derive(Args)]
pub struct BenchSessionArgs {
    #[command(flatten)]
    pub location: Location,
    /// Requests per measured series.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
}

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pct_us(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1));
    v.get(i).copied().unwrap_or(0.0)
}

pub async fn bench_session(args: &BenchSessionArgs) -> Result<()> {
    if args.requests < 10 {
        bail!("--requests: at least 10");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let public = format!("http://localhost:{}", addr.port());
    // The session's cost alone: no guard, as in `bench consult`.
    let app = App::build(
        ServerConfig::new(args.location.server().storage())
            .with_guard(GuardChoice::PassThrough)
            .with_login(LoginSettings::new(&public)?),
    )
    .await?;
    let store = app.consultation().store().clone();
    let auth: Arc<dyn AuthStore> = app.consultation().auth_store().clone();
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, Purpose::FollowUp, 200).await?
    else {
        bail!("no active Cap emploi agent with a caseload: import a generated population first");
    };
    let credential = issue(&store, &agent, 1).await?;
    let key = DeviceKey::new();
    let session = rempart_consult::authenticate::new_session();
    let now = Utc::now();
    auth.insert_session(StoredSession {
        id_digest: session.id_digest,
        account_id: agent.account_id,
        jkt: key.jkt(),
        method: "passkey".into(),
        created_at: now,
        last_seen_at: now,
        absolute_expiry: now + Duration::hours(1),
        idle_timeout_secs: 1800,
        high_risk: false,
        step_up_at: None,
        ended_at: None,
        end_reason: None,
    })
    .await
    .context("writing the bench's session")?;
    println!(
        "account {} ({} agent of {}), caseload {} persons, {} requests per series",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        args.requests
    );

    // 1. Verification alone.
    let url = format!("{public}/portail/f/dossiers");
    let replay = Mutex::new(ReplayCache::default());
    let mut verify = Vec::with_capacity(args.requests);
    let jkt = rempart_auth::jose::Jkt::parse(&key.jkt()).context("thumbprint")?;
    for _ in 0..args.requests {
        let proof = key.proof("GET", &url, Some(&session.handle), Utc::now());
        let t = Instant::now();
        let expected = Expected::new("GET", &url)?
            .bound_to(jkt)
            .with_token(&session.handle)
            .with_algs(AlgSet::ES256);
        let mut cache = replay.lock().unwrap_or_else(|p| p.into_inner());
        let ok = DpopProof::verify(&proof, &expected, Utc::now(), &mut *cache).is_ok();
        drop(cache);
        verify.push(t.elapsed().as_secs_f64() * 1e6);
        if !ok {
            bail!("a bench proof was refused");
        }
    }
    let verify_us = median_us(verify);
    println!("device proof verification: median {verify_us:.1} µs");

    // 2. Over HTTP.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()?;
    let cookie = format!("__Host-rempart_session={}", session.cookie.as_str());
    let series = |kind: u8| {
        let client = client.clone();
        let base = base.clone();
        let cookie = cookie.clone();
        let token = credential.token.as_str().to_string();
        let url = url.clone();
        let handle = session.handle.clone();
        let key = &key;
        async move {
            let mut lat = Vec::with_capacity(args.requests);
            for _ in 0..args.requests + 100 {
                let request = match kind {
                    0 => client.get(format!("{base}/api/v1/health/live")),
                    1 => client
                        .get(format!("{base}/api/v1/caseload?purpose=follow_up&limit=50"))
                        .bearer_auth(&token),
                    _ => client
                        .get(format!("{base}/portail/f/dossiers"))
                        .header("Cookie", &cookie)
                        .header("DPoP", key.proof("GET", &url, Some(&handle), Utc::now())),
                };
                let t = Instant::now();
                let response = request.send().await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                if !ok {
                    bail!("a bench request failed (series {kind})");
                }
            }
            // The first 100 warm the connection and the caches.
            Ok::<Vec<f64>, anyhow::Error>(lat.split_off(100))
        }
    };
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let noop = series(0).await?;
        let api = series(1).await?;
        let portal = series(2).await?;
        rounds.push((noop, api, portal));
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;

    let all = |i: usize| -> Vec<f64> {
        rounds
            .iter()
            .flat_map(|r| match i {
                0 => r.0.clone(),
                1 => r.1.clone(),
                _ => r.2.clone(),
            })
            .collect()
    };
    let (noop, api, portal) = (all(0), all(1), all(2));
    let (n50, a50, p50) = (
        median_us(noop.clone()),
        median_us(api.clone()),
        median_us(portal.clone()),
    );
    println!(
        "no-op            p50 {:>8.1} µs  p99 {:>8.1} µs",
        n50,
        pct_us(&noop, 0.99)
    );
    println!(
        "API caseload     p50 {:>8.1} µs  p99 {:>8.1} µs  (bearer credential, JSON)",
        a50,
        pct_us(&api, 0.99)
    );
    println!(
        "portal caseload  p50 {:>8.1} µs  p99 {:>8.1} µs  (session + device proof, HTML)",
        p50,
        pct_us(&portal, 0.99)
    );
    println!(
        "RESULT proof_verify_us={verify_us:.1} noop_p50_us={n50:.1} api_caseload_p50_us={a50:.1} portal_caseload_p50_us={p50:.1} portal_minus_api_us={:.1}",
        p50 - a50
    );
    auth.end_session(session.id_digest, Utc::now(), "bench")
        .await
        .context("ending the bench's session")?;
    Ok(())
}
