//! The guard as `rempart serve` runs it: its configuration file, the sync
//! task every instance runs, the export of alerts (JSON lines, syslog
//! RFC 5424 over UDP, a webhook), and `rempart alerts`.

use std::fmt::Write as _;

use anyhow::Result;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};
use rempart_domain::{AccountId, OrganisationId};
use rempart_guard::store::{AlertQuery, StoredAlert};

use rempart_server::alerts::alert_json;

use crate::location::Location;

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
    let stores = args.location.open_stores().await?;
    let mut after = 0;
    let mut shown = 0u32;
    while shown < args.limit {
        let page = stores
            .guard
            .alerts(&AlertQuery {
                from: args.since,
                to: None,
                account_id: args.account.map(AccountId::new),
                organisation_id: args.organisation.map(OrganisationId::new),
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
    use rempart_guard::{Alert, AlertKind, Evidence, Explanation, Feature, GuardConfig, Verdict};

    /// The load-test thresholds parse, and every quota and score is out of
    /// a benchmark's reach while the other thresholds keep their defaults.
    #[test]
    fn the_load_test_configuration_is_far_from_the_defaults() {
        let c = crate::bench::bench_guard_config().unwrap();
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
                account_id: AccountId::new(17),
                organisation_id: OrganisationId::new(3),
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
    fn text_names_features_values_baselines_and_the_ledger_range() {
        let t = alert_text(&sample(5));
        assert!(t.contains("throttle [account_quota]"), "{t}");
        assert!(t.contains("leaves ..=1234"), "{t}");
        assert!(
            t.contains("persons_per_hour") && t.contains("41.00") && t.contains("40.00"),
            "{t}"
        );
    }
}
