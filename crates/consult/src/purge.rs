//! The scheduled purge of what authentication leaves behind: expired
//! ceremonies (every anonymous login start writes one), replay keys (every
//! API request writes one), access tokens, and sessions long past their
//! absolute expiry. Without it these tables grow for ever.
//!
//! Each run does bounded work: rounds of [`AuthStore::purge_expired`], each
//! deleting at most [`PurgeSettings::batch`] rows per table in short
//! statements, at most [`PurgeSettings::rounds`] rounds; what is left waits
//! for the next run. Each run logs its counts, never a row. Every instance
//! may run it: deleting an expired row twice is deleting nothing.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rempart_storage::{AuthStore, Purged, StorageError, ThrottleScope};

use crate::kernel::Clock;

/// How often and how much the purge deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// Time between two runs (5 min).
    pub interval: std::time::Duration,
    /// Rows deleted at most per table and statement (1,000).
    pub batch: u32,
    /// Rounds at most per run (10): a run deletes at most `batch × rounds`
    /// rows of each table.
    pub rounds: u32,
    /// How long a session row is kept after its absolute expiry, for
    /// investigations (30 days): the ledger's leaves name the session.
    pub sessions_kept: Duration,
}

impl Default for PurgeSettings {
    fn default() -> Self {
        PurgeSettings {
            interval: std::time::Duration::from_secs(300),
            batch: 1_000,
            rounds: 10,
            sessions_kept: Duration::days(30),
        }
    }
}

/// A [`PurgeSettings`] value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeConfigError {
    /// A setting is zero or negative.
    #[error("{0}: must be positive")]
    NotPositive(&'static str),
}

impl PurgeSettings {
    /// Checks that every setting is usable.
    pub fn check(&self) -> Result<(), PurgeConfigError> {
        if self.interval.is_zero() {
            return Err(PurgeConfigError::NotPositive("interval"));
        }
        if self.batch == 0 {
            return Err(PurgeConfigError::NotPositive("batch"));
        }
        if self.rounds == 0 {
            return Err(PurgeConfigError::NotPositive("rounds"));
        }
        if self.sessions_kept <= Duration::zero() {
            return Err(PurgeConfigError::NotPositive("sessions_kept"));
        }
        Ok(())
    }
}

/// One run: rounds of at most `batch` rows per table until no table comes
/// back full, at most `rounds` of them. Returns what went in all.
pub async fn purge_once(
    auth: &dyn AuthStore,
    settings: &PurgeSettings,
    now: DateTime<Utc>,
) -> Result<Purged, StorageError> {
    let sessions_before = now
        .checked_sub_signed(settings.sessions_kept)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut total = Purged::default();
    for _ in 0..settings.rounds {
        let round = auth
            .purge_expired(now, sessions_before, settings.batch)
            .await?;
        total.add(round);
        if !round.full(settings.batch) {
            break;
        }
    }
    // Addresses whose failures may be forgotten: kept no longer than the
    // throttle needs them, table full or not.
    let now_unix = now.timestamp();
    total.login_throttles = auth
        .prune_login_throttles(ThrottleScope::Address, now_unix)
        .await?;
    Ok(total)
}

/// Starts the purge on its schedule, on `clock` (the server's): a first run
/// at once, then one every [`PurgeSettings::interval`]. A failed run is
/// logged and tried again at the next tick. Abort the handle to stop it.
pub fn spawn(
    auth: Arc<dyn AuthStore>,
    settings: PurgeSettings,
    clock: Clock,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match purge_once(auth.as_ref(), &settings, clock()).await {
                Ok(p) => tracing::info!(
                    ceremonies = p.ceremonies,
                    replay_keys = p.replay_keys,
                    access_tokens = p.access_tokens,
                    sessions = p.sessions,
                    login_devices = p.login_devices,
                    login_throttles = p.login_throttles,
                    "purge of expired authentication rows"
                ),
                Err(e) => tracing::warn!(error = %e, "purge of expired authentication rows failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_what_cannot_work() {
        assert_eq!(PurgeSettings::default().check(), Ok(()));
        let zero = |f: fn(&mut PurgeSettings)| {
            let mut s = PurgeSettings::default();
            f(&mut s);
            s.check()
        };
        assert_eq!(
            zero(|s| s.interval = std::time::Duration::ZERO),
            Err(PurgeConfigError::NotPositive("interval"))
        );
        assert_eq!(
            zero(|s| s.batch = 0),
            Err(PurgeConfigError::NotPositive("batch"))
        );
        assert_eq!(
            zero(|s| s.rounds = 0),
            Err(PurgeConfigError::NotPositive("rounds"))
        );
        assert_eq!(
            zero(|s| s.sessions_kept = Duration::zero()),
            Err(PurgeConfigError::NotPositive("sessions_kept"))
        );
    }
}
