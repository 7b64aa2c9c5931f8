//! The guard as `rempart serve` runs it: its configuration file, the sync
//! task every instance runs, the export of alerts (JSON lines, syslog
//! RFC 5424 over UDP, a webhook), and `rempart alerts`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};
use rempart_guard::store::{AlertQuery, StoredAlert};
use rempart_guard::{Format, Guard, GuardConfig, GuardStore, Verdict};
use serde::Deserialize;
use tokio::net::UdpSocket;

use crate::Location;

/// Where stored alerts are sent, from the `[export]` section of the guard
/// configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Append each alert as one JSON line to this file.
    pub jsonl: Option<PathBuf>,
    /// Send each alert as an RFC 5424 message over UDP to this `host:port`.
    pub syslog: Option<String>,
    /// POST each alert as JSON to this URL (http or https).
    pub webhook: Option<String>,
}

impl ExportConfig {
    fn is_empty(&self) -> bool {
        self.jsonl.is_none() && self.syslog.is_none() && self.webhook.is_none()
    }
}

/// The guard configuration file: the guard's thresholds and the export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerGuardConfig {
    /// Thresholds, quotas, sync.
    pub guard: GuardConfig,
    /// Alert export.
    pub export: ExportConfig,
}

/// Reads `--guard-config FILE` (TOML or JSON by extension); no file means
/// the defaults and no export. Errors name the field.
pub fn load_config(path: Option<&Path>) -> Result<ServerGuardConfig> {
    let Some(path) = path else {
        return Ok(ServerGuardConfig::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let format = Format::of_file_name(&name)
        .with_context(|| format!("{name}: the guard configuration must end in .toml or .json"))?;
    parse_config(&text, format).with_context(|| format!("guard configuration {name}"))
}

/// Parses the text of a guard configuration file.
pub fn parse_config(text: &str, format: Format) -> Result<ServerGuardConfig> {
    // The export section is ours; everything else is the guard's, parsed
    // by the guard so that its errors keep naming the field.
    let (mut doc, format_name): (serde_json::Value, _) = match format {
        Format::Json => (serde_json::from_str(text)?, "json"),
        Format::Toml => (
            serde_json::to_value(toml::from_str::<toml::Table>(text)?)?,
            "toml",
        ),
    };
    let export = match doc.as_object_mut().and_then(|o| o.remove("export")) {
        Some(v) => serde_json::from_value(v).with_context(|| format!("export ({format_name})"))?,
        None => ExportConfig::default(),
    };
    let guard = GuardConfig::parse(&doc.to_string(), Format::Json)?;
    Ok(ServerGuardConfig { guard, export })
}

/// Sends alerts to the configured sinks.
pub struct Exporter {
    config: ExportConfig,
    http: reqwest::Client,
    udp: Option<UdpSocket>,
    /// The last alert id exported.
    cursor: i64,
}

impl Exporter {
    /// An exporter that sends alerts stored after `after_id`; `None` when
    /// nothing is configured.
    pub async fn new(config: ExportConfig, after_id: i64) -> Result<Option<Exporter>> {
        if config.is_empty() {
            return Ok(None);
        }
        let udp = match &config.syslog {
            Some(addr) => {
                let socket = UdpSocket::bind("0.0.0.0:0").await?;
                socket
                    .connect(addr)
                    .await
                    .with_context(|| format!("export.syslog: cannot reach {addr}"))?;
                Some(socket)
            }
            None => None,
        };
        if let Some(url) = &config.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("export.webhook: must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            // A webhook that redirects is misconfigured; alerts go where
            // they were told to, nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(Some(Exporter {
            config,
            http,
            udp,
            cursor: after_id,
        }))
    }

    /// Exports every alert stored since the last call; returns how many.
    /// On a sink's failure the cursor stays put: the next call retries.
    pub async fn run_once(&mut self, store: &dyn GuardStore) -> Result<usize> {
        let mut sent = 0;
        loop {
            let page = store
                .alerts(&AlertQuery {
                    after_id: self.cursor,
                    limit: 500,
                    ..AlertQuery::default()
                })
                .await?;
            let Some(last) = page.last().map(|a| a.id) else {
                return Ok(sent);
            };
            self.export(&page).await?;
            sent += page.len();
            self.cursor = last;
        }
    }

    /// Sends `alerts` to every sink.
    pub async fn export(&self, alerts: &[StoredAlert]) -> Result<()> {
        if let Some(path) = &self.config.jsonl {
            let mut lines = String::new();
            for a in alerts {
                lines.push_str(&alert_json(a).to_string());
                lines.push('\n');
            }
            let target = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&target)?;
                file.write_all(lines.as_bytes())?;
                // Durable before the cursor moves past these alerts.
                file.sync_data()
            })
            .await?
            .with_context(|| format!("export.jsonl: writing {}", path.display()))?;
        }
        if let Some(udp) = &self.udp {
            for a in alerts {
                udp.send(syslog_message(a, std::process::id()).as_bytes())
                    .await
                    .context("export.syslog")?;
            }
        }
        if let Some(url) = &self.config.webhook {
            for a in alerts {
                let answer = self
                    .http
                    .post(url)
                    .json(&alert_json(a))
                    .send()
                    .await
                    .context("export.webhook")?;
                if !answer.status().is_success() {
                    bail!("export.webhook: answered HTTP {}", answer.status());
                }
            }
        }
        Ok(())
    }
}

/// An alert as exported: its id, then every field of the alert (features
/// with their values and baselines, the evidence window and ledger range).
pub fn alert_json(a: &StoredAlert) -> serde_json::Value {
    let mut v = serde_json::to_value(&a.alert).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), a.id.into());
    }
    v
}

/// An RFC 5424 message: facility security/authorization (4), severity
/// from the verdict, structured data with the alert's identifiers, and the
/// alert's JSON as the message. Identifiers only: no personal value.
pub fn syslog_message(a: &StoredAlert, pid: u32) -> String {
    let severity = match a.alert.verdict {
        Verdict::FreezeOrganisation => 1,
        Verdict::Suspend => 2,
        Verdict::Throttle => 4,
        Verdict::StepUp | Verdict::Allow => 5,
    };
    let al = &a.alert;
    let seq = |s: Option<u64>| s.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut out = format!(
        "<{}>1 {} - rempart {pid} guard-alert ",
        4 * 8 + severity,
        al.at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    // 32473 is the enterprise number RFC 5612 reserves for examples and
    // documentation: no private number is registered for Rempart.
    let _ = write!(
        out,
        "[rempart@32473 id=\"{}\" account=\"{}\" organisation=\"{}\" verdict=\"{}\" kind=\"{}\" score=\"{:.2}\" fresh=\"{}\" first_seq=\"{}\" last_seq=\"{}\"]",
        a.id,
        al.account_id,
        al.organisation_id,
        al.verdict,
        al.kind,
        al.score,
        al.fresh,
        seq(al.evidence.first_seq),
        seq(al.evidence.last_seq),
    );
    out.push_str(" \u{feff}");
    out.push_str(&alert_json(a).to_string());
    out
}

/// Runs `guard.sync` every `sync.interval_secs`, exporting the alerts
/// stored since, until the task is aborted. A failed sync is logged (its
/// text names the store, never a value); the guard refuses everything once
/// no sync has succeeded for `sync.max_staleness_secs`.
pub fn spawn_sync(
    guard: Guard,
    store: Arc<dyn GuardStore>,
    mut exporter: Option<Exporter>,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(u64::from(guard.config().sync.interval_secs));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if let Err(e) = guard.sync(Utc::now()).await {
                tracing::warn!(error = %e, "guard sync failed");
                continue;
            }
            if let Some(x) = exporter.as_mut()
                && let Err(e) = x.run_once(store.as_ref()).await
            {
                tracing::warn!(error = %format!("{e:#}"), "alert export failed; retried next sync");
            }
        }
    })
}

/// The id of the last alert stored, so a starting server exports only what
/// is raised from now on.
pub async fn last_alert_id(store: &dyn GuardStore) -> Result<i64> {
    let mut after = 0;
    loop {
        let page = store
            .alerts(&AlertQuery {
                after_id: after,
                limit: 10_000,
                ..AlertQuery::default()
            })
            .await?;
        match page.last() {
            Some(a) => after = a.id,
            None => return Ok(after),
        }
    }
}

/// Output formats of `rempart alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertFormat {
    /// One block per alert, its top features indented below.
    Text,
    /// One JSON object per line (as exported).
    Jsonl,
}

#[derive(Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub location: Location,
    /// Alerts of this account id only.
    #[arg(long)]
    pub account: Option<i64>,
    /// Alerts of this organisation id only.
    #[arg(long)]
    pub organisation: Option<i64>,
    /// From this day (YYYY-MM-DD, UTC) or instant (RFC 3339).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// At most this many alerts (oldest first).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// `text` for people, `jsonl` for tools (the export's format).
    #[arg(long, value_enum, default_value_t = AlertFormat::Text)]
    pub format: AlertFormat,
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| "must be a date YYYY-MM-DD or an RFC 3339 instant".to_string())
}

/// `rempart alerts`: the stored alerts with their top features.
pub async fn alerts(args: &AlertsArgs) -> Result<()> {
    let stores = crate::accounts::open_stores(&args.location).await?;
    let mut after = 0;
    let mut shown = 0u32;
    while shown < args.limit {
        let page = stores
            .guard
            .alerts(&AlertQuery {
                from: args.since,
                to: None,
                account_id: args.account,
                organisation_id: args.organisation,
                after_id: after,
                limit: (args.limit - shown).min(500),
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for a in &page {
            match args.format {
                AlertFormat::Jsonl => println!("{}", alert_json(a)),
                AlertFormat::Text => print!("{}", alert_text(a)),
            }
        }
        shown += page.len() as u32;
    }
    if args.format == AlertFormat::Text {
        println!("{shown} alert(s)");
    }
    Ok(())
}

/// An alert's features on one line: `feature value (baseline b)`, joined
/// by commas.
pub fn features_line(explanation: &[rempart_guard::Explanation]) -> String {
    explanation
        .iter()
        .map(|e| format!("{} {:.1} (baseline {:.1})", e.feature, e.value, e.baseline))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One alert as `rempart alerts` prints it.
pub fn alert_text(a: &StoredAlert) -> String {
    let al = &a.alert;
    let range = match (al.evidence.first_seq, al.evidence.last_seq) {
        (Some(f), Some(l)) => format!("leaves {f}..={l}"),
        (None, Some(l)) => format!("leaves ..={l}"),
        (Some(f), None) => format!("leaves {f}.."),
        (None, None) => "no ledger leaf".to_string(),
    };
    let mut out = format!(
        "#{} {} account {} (organisation {}) {} [{}] score {:.2}{}; {} between {} and {}\n",
        a.id,
        al.at.format("%Y-%m-%d %H:%M:%SZ"),
        al.account_id,
        al.organisation_id,
        al.verdict,
        al.kind,
        al.score,
        if al.fresh { "" } else { " (repeat)" },
        range,
        al.evidence.from.format("%Y-%m-%d %H:%M:%SZ"),
        al.evidence.to.format("%H:%M:%SZ"),
    );
    for e in &al.explanation {
        let _ = writeln!(
            out,
            "    {:<20} value {:>8.2}  baseline {:>8.2}  +{:.2}",
            e.feature.as_str(),
            e.value,
            e.baseline,
            e.contribution
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rempart_guard::{Alert, AlertKind, Evidence, Explanation, Feature};
    use tokio::io::AsyncWriteExt;

    /// The load-test thresholds parse, and every quota and score is out of
    /// a benchmark's reach while the other thresholds keep their defaults.
    #[test]
    fn the_load_test_configuration_is_far_from_the_defaults() {
        let c = crate::serve::bench_guard_config().unwrap();
        let d = GuardConfig::default();
        for q in [
            c.account.persons,
            c.account.nir_reveals,
            c.organisation.persons,
            c.organisation.nir_reveals,
        ] {
            assert!(q.per_hour >= 100_000_000 && q.per_day >= 100_000_000);
        }
        assert!(c.scoring.step_up >= 100.0 * d.scoring.step_up);
        assert!(c.containment.suspend_after_refusals >= 100_000);
        assert_eq!(c.sync, d.sync);
        assert_eq!(c.risky, d.risky);
    }

    fn sample(id: i64) -> StoredAlert {
        let at = DateTime::from_timestamp(1_768_300_000, 0).unwrap();
        StoredAlert {
            id,
            alert: Alert {
                at,
                kind: AlertKind::AccountQuota,
                account_id: 17,
                organisation_id: 3,
                verdict: Verdict::Throttle,
                score: 7.0,
                explanation: vec![Explanation {
                    feature: Feature::PersonsPerHour,
                    value: 41.0,
                    baseline: 40.0,
                    contribution: 7.0,
                }],
                fresh: true,
                evidence: Evidence {
                    from: at - chrono::TimeDelta::hours(1),
                    to: at,
                    first_seq: None,
                    last_seq: Some(1234),
                },
                accounts: Vec::new(),
            },
        }
    }

    #[test]
    fn the_config_file_holds_the_guard_and_the_export_in_both_formats() {
        let toml = "[account.persons]\nper_hour = 30\nper_day = 100\n[export]\nsyslog = \"127.0.0.1:514\"\n";
        let c = parse_config(toml, Format::Toml).unwrap();
        assert_eq!(c.guard.account.persons.per_hour, 30);
        assert_eq!(c.export.syslog.as_deref(), Some("127.0.0.1:514"));
        let json =
            r#"{"containment":{"throttle_minutes":5},"export":{"webhook":"http://127.0.0.1:9/x"}}"#;
        let c = parse_config(json, Format::Json).unwrap();
        assert_eq!(c.guard.containment.throttle_minutes, 5);
        assert_eq!(c.export.webhook.as_deref(), Some("http://127.0.0.1:9/x"));
        let e = parse_config("[scoring]\nthrottle = 1.0\n", Format::Toml).unwrap_err();
        assert!(format!("{e:#}").contains("scoring.throttle"), "{e:#}");
        let e = parse_config("[export]\nsyslg = \"x\"\n", Format::Toml).unwrap_err();
        assert!(format!("{e:#}").contains("syslg"), "{e:#}");
    }

    #[test]
    fn text_names_features_values_baselines_and_the_ledger_range() {
        let t = alert_text(&sample(5));
        assert!(t.contains("throttle [account_quota]"), "{t}");
        assert!(t.contains("leaves ..=1234"), "{t}");
        assert!(
            t.contains("persons_per_hour") && t.contains("41.00") && t.contains("40.00"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn alerts_reach_a_real_syslog_socket_a_real_webhook_and_a_file() {
        // Syslog: a real UDP socket.
        let syslog = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Webhook: a real HTTP listener that answers 204 and hands the body over.
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook = format!("http://{}/alerts", http.local_addr().unwrap());
        let (body_tx, body_rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut conn, _) = http.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the body");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap();
                    if body.len() >= len {
                        assert!(head.starts_with("POST /alerts HTTP/1.1"), "{head}");
                        break body.to_string();
                    }
                }
            };
            conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = body_tx.send(body);
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.jsonl");
        let config = ExportConfig {
            jsonl: Some(file.clone()),
            syslog: Some(syslog.local_addr().unwrap().to_string()),
            webhook: Some(webhook),
        };
        let exporter = Exporter::new(config, 0).await.unwrap().unwrap();
        exporter.export(&[sample(9)]).await.unwrap();

        let mut datagram = [0u8; 8192];
        let n = syslog.recv(&mut datagram).await.unwrap();
        let msg = std::str::from_utf8(&datagram[..n]).unwrap();
        // PRI = facility 4 × 8 + severity 4 (warning, a throttle); version 1.
        assert!(
            msg.starts_with("<36>1 2026-01-13T10:26:40.000000Z - rempart "),
            "{msg}"
        );
        assert!(
            msg.contains(" guard-alert [rempart@32473 id=\"9\" account=\"17\""),
            "{msg}"
        );
        assert!(msg.contains("last_seq=\"1234\"]"), "{msg}");
        let json = msg.split_once('\u{feff}').unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["explanation"][0]["feature"], "persons_per_hour");

        let posted: serde_json::Value = serde_json::from_str(&body_rx.await.unwrap()).unwrap();
        assert_eq!(posted["id"], 9);
        assert_eq!(posted["evidence"]["last_seq"], 1234);
        assert_eq!(posted["explanation"][0]["baseline"], 40.0);

        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
        assert_eq!(line, posted);
    }

    #[tokio::test]
    async fn a_failing_webhook_is_an_error_not_a_silent_loss() {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook = format!("http://{}/alerts", http.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut conn, _) = http.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = conn.read(&mut chunk).await;
            let _ = conn
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let config = ExportConfig {
            webhook: Some(webhook),
            ..ExportConfig::default()
        };
        let exporter = Exporter::new(config, 0).await.unwrap().unwrap();
        let e = exporter.export(&[sample(1)]).await.unwrap_err();
        assert!(format!("{e:#}").contains("500"), "{e:#}");
    }
}
