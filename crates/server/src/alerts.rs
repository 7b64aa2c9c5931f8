//! The guard as a server runs it: its configuration file (thresholds and
//! the `[export]` section), the sync task every instance runs, and the
//! export of stored alerts (JSON lines, syslog RFC 5424 over UDP, a
//! webhook).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rempart_consult::Clock;
use rempart_guard::store::{AlertQuery, StoredAlert};
use rempart_guard::{Format, Guard, GuardConfig, GuardStore, Verdict};
use serde::Deserialize;
use tokio::net::UdpSocket;

/// Why the guard configuration file or the alert export failed. Messages
/// name the file, the section or the sink, never an alert's content.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The configuration file cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file's name says no format.
    #[error("{0}: the guard configuration must end in .toml or .json")]
    Extension(String),
    /// The text is no TOML or JSON document.
    #[error("guard configuration: {0}")]
    Syntax(String),
    /// The `[export]` section is wrong.
    #[error("export ({format})")]
    Export {
        /// `toml` or `json`.
        format: &'static str,
        /// The field and the reason.
        #[source]
        source: serde_json::Error,
    },
    /// The guard's own sections are wrong (the error names the field).
    #[error(transparent)]
    Guard(#[from] rempart_guard::ConfigError),
    /// `export.webhook` is no http(s) URL.
    #[error("export.webhook: must be an http:// or https:// URL")]
    WebhookUrl,
    /// `export.syslog` cannot be reached.
    #[error("export.syslog: cannot reach {addr}")]
    SyslogConnect {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sending over syslog failed.
    #[error("export.syslog")]
    Syslog(#[source] std::io::Error),
    /// Appending to the JSON lines file failed.
    #[error("export.jsonl: writing {path}")]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The webhook could not be called.
    #[error("export.webhook")]
    Webhook(#[source] reqwest::Error),
    /// The webhook answered something else than 2xx.
    #[error("export.webhook: answered HTTP {0}")]
    WebhookStatus(u16),
    /// The alerts could not be read from the guard's store.
    #[error("reading the stored alerts")]
    Store(#[from] rempart_guard::store::StoreError),
    /// A background task failed.
    #[error("export: {0}")]
    Task(String),
}

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
pub fn load_config(path: Option<&Path>) -> Result<ServerGuardConfig, AlertsError> {
    let Some(path) = path else {
        return Ok(ServerGuardConfig::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AlertsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let format = Format::of_file_name(&name).ok_or(AlertsError::Extension(name))?;
    parse_config(&text, format)
}

/// Parses the text of a guard configuration file.
pub fn parse_config(text: &str, format: Format) -> Result<ServerGuardConfig, AlertsError> {
    // The export section is ours; everything else is the guard's, parsed
    // by the guard so that its errors keep naming the field.
    let (mut doc, format_name): (serde_json::Value, _) = match format {
        Format::Json => (
            serde_json::from_str(text).map_err(|e| AlertsError::Syntax(e.to_string()))?,
            "json",
        ),
        Format::Toml => (
            toml::from_str::<toml::Table>(text)
                .map_err(|e| AlertsError::Syntax(e.to_string()))
                .and_then(|t| {
                    serde_json::to_value(t).map_err(|e| AlertsError::Syntax(e.to_string()))
                })?,
            "toml",
        ),
    };
    let export = match doc.as_object_mut().and_then(|o| o.remove("export")) {
        Some(v) => serde_json::from_value(v).map_err(|source| AlertsError::Export {
            format: format_name,
            source,
        })?,
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
    pub async fn new(config: ExportConfig, after_id: i64) -> Result<Option<Exporter>, AlertsError> {
        if config.is_empty() {
            return Ok(None);
        }
        let udp = match &config.syslog {
            Some(addr) => {
                let unreachable = |source| AlertsError::SyslogConnect {
                    addr: addr.clone(),
                    source,
                };
                let socket = UdpSocket::bind("0.0.0.0:0").await.map_err(unreachable)?;
                socket.connect(addr).await.map_err(unreachable)?;
                Some(socket)
            }
            None => None,
        };
        if let Some(url) = &config.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(AlertsError::WebhookUrl);
        }
        let http = reqwest::Client::builder()
            // A webhook that redirects is misconfigured; alerts go where
            // they were told to, nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(AlertsError::Webhook)?;
        Ok(Some(Exporter {
            config,
            http,
            udp,
            cursor: after_id,
        }))
    }

    /// Exports every alert stored since the last call; returns how many.
    /// On a sink's failure the cursor stays put: the next call retries.
    pub async fn run_once(&mut self, store: &dyn GuardStore) -> Result<usize, AlertsError> {
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
    pub async fn export(&self, alerts: &[StoredAlert]) -> Result<(), AlertsError> {
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
            .await
            .map_err(|e| AlertsError::Task(e.to_string()))?
            .map_err(|source| AlertsError::Jsonl {
                path: path.clone(),
                source,
            })?;
        }
        if let Some(udp) = &self.udp {
            for a in alerts {
                udp.send(syslog_message(a, std::process::id()).as_bytes())
                    .await
                    .map_err(AlertsError::Syslog)?;
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
                    .map_err(AlertsError::Webhook)?;
                if !answer.status().is_success() {
                    return Err(AlertsError::WebhookStatus(answer.status().as_u16()));
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
    clock: Clock,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(u64::from(guard.config().sync.interval_secs));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if let Err(e) = guard.sync(clock()).await {
                tracing::warn!(error = %e, "guard sync failed");
                continue;
            }
            if let Some(x) = exporter.as_mut()
                && let Err(e) = x.run_once(store.as_ref()).await
            {
                tracing::warn!(error = %e, "alert export failed; retried next sync");
            }
        }
    })
}

/// The id of the last alert stored, so a starting server exports only what
/// is raised from now on.
pub async fn last_alert_id(store: &dyn GuardStore) -> Result<i64, AlertsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use rempart_guard::{Alert, AlertKind, Evidence, Explanation, Feature};
    use tokio::io::AsyncWriteExt;

    /// An error with its causes, as the command prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    fn sample(id: i64) -> StoredAlert {
        let at = DateTime::from_timestamp(1_768_300_000, 0).unwrap();
        StoredAlert {
            id,
            alert: Alert {
                at,
                kind: AlertKind::AccountQuota,
                account_id: rempart_domain::AccountId::new(17),
                organisation_id: rempart_domain::OrganisationId::new(3),
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
        assert!(chain(&e).contains("scoring.throttle"), "{}", chain(&e));
        let e = parse_config("[export]\nsyslg = \"x\"\n", Format::Toml).unwrap_err();
        assert!(chain(&e).contains("syslg"), "{}", chain(&e));
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
        assert!(e.to_string().contains("500"), "{e}");
    }
}
