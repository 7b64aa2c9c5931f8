//! `rempart bench dpop`: what a DPoP-bound consultation costs beside a
//! plain API-credential one.
//!
//! On an imported population, over HTTP (one keep-alive connection,
//! requests in sequence), in the same run and interleaved round by round:
//! - `GET /api/v1/persons/{id}` with `Authorization: Bearer rmp_…`;
//! - the same consultation with `Authorization: DPoP rmpat_…` and a fresh
//!   proof (signature, claims, token lookup, and one insert into the
//!   database's replay table per request);
//! - the token endpoint itself (assertion + proof → token), paid once per
//!   token lifetime (5 minutes).
//!
//! The bench plays a partner's software: it registers a client with its
//! own P-256 assertion key, and signs every assertion and proof before the
//! timed request, as a client signs before it sends.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use clap::Args;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use rand::RngCore;
use rempart_auth::client_assertion::{ASSERTION_TYPE, ClientKey};
use rempart_auth::jose::PublicJwk;
use rempart_consult::{ClientSettings, TOKEN_PATH};
use rempart_domain::{OrganisationKind, Purpose};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use rempart_server::{App, GuardChoice, ServerConfig};

use crate::accounts::issue;
use crate::bench::busiest_agent;
use crate::location::Location;

#[derive(Args)]
pub struct BenchDpopArgs {
    #[command(flatten)]
    pub location: Location,
    /// Consultations per measured series (3 rounds of each kind).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
}

/// A P-256 key of the bench's: one for assertions, one for proofs.
struct Key(p256::ecdsa::SigningKey);

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jti() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b64(b)
}

impl Key {
    fn new() -> Key {
        Key(p256::ecdsa::SigningKey::generate())
    }

    fn jwk(&self) -> serde_json::Value {
        let point = self.0.verifying_key().to_sec1_point(false);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": point.x().map(b64).unwrap_or_default(),
            "y": point.y().map(b64).unwrap_or_default(),
        })
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.to_bytes()))
    }

    fn assertion(&self, client_id: &str, aud: &str) -> String {
        let now = Utc::now().timestamp();
        self.sign(
            &serde_json::json!({"alg": "ES256", "typ": "JWT"}),
            &serde_json::json!({
                "iss": client_id, "sub": client_id, "aud": aud,
                "jti": jti(), "iat": now, "exp": now + 60,
            }),
        )
    }

    fn proof(&self, method: &str, htu: &str, token: Option<&str>) -> String {
        let mut claims = serde_json::json!({
            "htm": method, "htu": htu, "iat": Utc::now().timestamp(), "jti": jti(),
        });
        if let Some(t) = token {
            claims["ath"] = serde_json::json!(b64(Sha256::digest(t.as_bytes())));
        }
        self.sign(
            &serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}),
            &claims,
        )
    }
}

fn median_us(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pct_us(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1));
    v.get(i).copied().unwrap_or(0.0)
}

pub async fn bench_dpop(args: &BenchDpopArgs) -> Result<()> {
    if args.requests < 10 {
        bail!("--requests: at least 10");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let public = format!("http://localhost:{}", addr.port());
    // The guard's quotas would throttle a benchmark's burst: its cost is
    // `rempart bench guard`'s figure.
    let app = App::build(
        ServerConfig::new(args.location.server().storage())
            .with_guard(GuardChoice::PassThrough)
            .with_api_clients(ClientSettings::new(&public)?),
    )
    .await?;
    let store = app.consultation().store().clone();
    let auth = app.consultation().auth_store().clone();
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, Purpose::FollowUp, 200).await?
    else {
        bail!("no active Cap emploi agent with a caseload: import a generated population first");
    };
    if caseload.is_empty() {
        bail!("the busiest Cap emploi agent has an empty caseload");
    }
    let credential = issue(&store, &agent, 1).await?;
    let client_key = Key::new();
    let client_id = rempart_consult::clients::register_client(
        auth.as_ref(),
        &agent,
        vec![ClientKey {
            kid: None,
            jwk: PublicJwk::from_value(&client_key.jwk())?,
        }],
        Utc::now(),
    )
    .await
    .context("registering the bench's client")?;
    let dpop_key = Key::new();
    println!(
        "account {} ({} agent of {}), caseload {} persons, {} consultations per series",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        args.requests
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()?;
    let token_url = format!("{public}{TOKEN_PATH}");

    // One token request, timed.
    let get_token = async || -> Result<(String, f64)> {
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
            ASSERTION_TYPE.replace(':', "%3A"),
            client_key.assertion(client_id.as_str(), &token_url)
        );
        let proof = dpop_key.proof("POST", &token_url, None);
        let t = Instant::now();
        let response = http
            .post(format!("{base}{TOKEN_PATH}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", proof)
            .body(body)
            .send()
            .await?;
        let ok = response.status().is_success();
        let answer: serde_json::Value = response.json().await?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if !ok {
            bail!("the token endpoint refused the bench: {}", answer["error"]);
        }
        let token = answer["access_token"]
            .as_str()
            .context("no access_token in the answer")?
            .to_string();
        Ok((token, us))
    };

    let mut bearer = Vec::new();
    let mut dpop = Vec::new();
    let mut token_us = Vec::new();
    for _round in 0..3 {
        // A fresh token per round: a series stays well within its 5 minutes.
        let mut token = String::new();
        for _ in 0..20 {
            let (t, us) = get_token().await?;
            token = t;
            token_us.push(us);
        }
        for kind in [0u8, 1] {
            let mut lat = Vec::with_capacity(args.requests);
            for (i, person) in caseload
                .iter()
                .cycle()
                .take(args.requests + 100)
                .enumerate()
            {
                let path = format!("/api/v1/persons/{person}");
                let url = format!("{base}{path}?purpose=follow_up");
                let request = match kind {
                    0 => http.get(url).bearer_auth(credential.token.as_str()),
                    _ => http
                        .get(url)
                        .header("authorization", format!("DPoP {token}"))
                        .header(
                            "dpop",
                            dpop_key.proof("GET", &format!("{public}{path}"), Some(&token)),
                        ),
                };
                let t = Instant::now();
                let response = request.send().await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                // The first 100 warm the connection and the caches.
                if i >= 100 {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                if !ok {
                    bail!("a bench consultation failed (series {kind})");
                }
            }
            if kind == 0 {
                bearer.extend(lat);
            } else {
                dpop.extend(lat);
            }
        }
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    rempart_consult::clients::revoke_client(auth.as_ref(), client_id.as_str(), Utc::now())
        .await
        .context("revoking the bench's client")?;

    let (b50, d50, t50) = (median_us(&bearer), median_us(&dpop), median_us(&token_us));
    println!(
        "bearer credential  p50 {b50:>8.1} µs  p99 {:>8.1} µs  (GET /persons/{{id}})",
        pct_us(&bearer, 0.99)
    );
    println!(
        "DPoP-bound token   p50 {d50:>8.1} µs  p99 {:>8.1} µs  (same, + proof + replay insert)",
        pct_us(&dpop, 0.99)
    );
    println!(
        "token endpoint     p50 {t50:>8.1} µs  p99 {:>8.1} µs  (once per 5-minute token)",
        pct_us(&token_us, 0.99)
    );
    println!(
        "RESULT bearer_read_p50_us={b50:.1} dpop_read_p50_us={d50:.1} dpop_added_us={:.1} dpop_ratio={:.2} token_p50_us={t50:.1}",
        d50 - b50,
        if b50 > 0.0 { d50 / b50 } else { 0.0 }
    );
    Ok(())
}
