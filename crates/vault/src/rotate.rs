//! KEK rotation: every data key is rewrapped under a new KEK version; no
//! field is re-encrypted. Resumable: the key file holds old and new KEKs
//! until every key is rewrapped, and a rerun carries on where the last
//! one stopped. Reads keep working throughout, because every stored key
//! names its KEK version and both versions stay in the key file.
//!
//! Persons' data keys are not the only thing wrapped under the KEK: the
//! consultation path seals accounts' TOTP secrets the same way. Whoever
//! holds such secrets hands them in as [`OtherSecrets`]; a KEK is retired
//! from the key file only once neither the registry nor any of them still
//! uses it (retiring it earlier would make those secrets unreadable).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rempart_crypto::{Binding, KeyRing};
use rempart_domain::PersonId;
use rempart_storage::WrappedKeyRow;

use crate::{KeySource, Vault, VaultError};

/// Keys rewrapped per transaction.
const BATCH: u32 = 4096;

/// Called with (keys rewrapped so far, keys to rewrap in all).
pub type RotationProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// What [`OtherSecrets::rewrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtherRewrap {
    /// Secrets rewrapped under the target KEK.
    pub rewrapped: u64,
    /// Secrets still under an older KEK (changed meanwhile, or not
    /// readable): the older KEK is kept for them.
    pub left: u64,
}

/// Secrets outside the registry wrapped under the KEK (accounts' TOTP
/// secrets), rewrapped by a rotation before it retires a KEK.
#[async_trait]
pub trait OtherSecrets: Send + Sync {
    /// What they are, for reports (`TOTP secrets`).
    fn name(&self) -> &'static str;

    /// Rewraps every secret not under KEK version `target`, with the keys
    /// of `ring`, and counts those left under an older version.
    async fn rewrap(&self, ring: &KeyRing, target: u32) -> Result<OtherRewrap, VaultError>;
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// KEK version every data key is now wrapped under.
    pub target: u32,
    /// True when this run finished a rotation an earlier run had started.
    pub resumed: bool,
    pub rewrapped: u64,
    /// Other secrets rewrapped, by name (see [`OtherSecrets`]).
    pub others: Vec<(&'static str, OtherRewrap)>,
    /// Versions removed from the key file at the end.
    pub retired: Vec<u32>,
    pub elapsed: Duration,
}

impl Vault {
    /// Rotates the KEK (or finishes an interrupted rotation): persons'
    /// data keys, then `others`; older KEKs are retired only when nothing
    /// uses them any more.
    pub async fn rotate(
        &self,
        progress: RotationProgress<'_>,
        others: &[&dyn OtherSecrets],
    ) -> Result<RotationReport, VaultError> {
        let start = Instant::now();
        let KeySource::File(path) = self.key_source() else {
            return Err(VaultError::RotationNeedsFile);
        };
        let mut ring = KeyRing::load(path)?;
        let resumed = ring.kek_versions().len() > 1;
        if !resumed {
            ring.add_kek()?;
            // Durable before any key is rewrapped under it.
            ring.save_replace(path)?;
        }
        let target = ring.current_kek().version;
        let inventory = self.store().inventory().await?;
        let total: u64 = inventory
            .keys_by_kek_version
            .iter()
            .filter(|(v, _)| *v != target)
            .map(|(_, n)| n)
            .sum();
        let ring = std::sync::Arc::new(ring);
        {
            let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
            *guard = ring.clone();
        }
        let mut rewrapped = 0u64;
        progress(0, total);
        // A second pass catches keys written under an old KEK by a process
        // that had not reloaded its keys yet.
        for _pass in 0..3 {
            let mut after = PersonId::new(0);
            let mut seen = 0u64;
            loop {
                let rows = self.store().keys_to_rewrap(target, after, BATCH).await?;
                let Some(last) = rows.last() else { break };
                after = last.id;
                seen += rows.len() as u64;
                let r = ring.clone();
                let rewrapped_rows =
                    tokio::task::spawn_blocking(move || rewrap_all(&r, target, rows))
                        .await
                        .map_err(|e| rempart_storage::StorageError::Task(e.to_string()))??;
                rewrapped += self.store().store_rewrapped(rewrapped_rows).await?;
                progress(rewrapped, total.max(rewrapped));
            }
            if seen == 0 {
                break;
            }
        }
        let mut other_reports = Vec::with_capacity(others.len());
        for other in others {
            other_reports.push((other.name(), other.rewrap(&ring, target).await?));
        }
        let others_left = other_reports.iter().any(|(_, r)| r.left > 0);
        let left = self
            .store()
            .keys_to_rewrap(target, PersonId::new(0), 1)
            .await?;
        let mut retired = Vec::new();
        if left.is_empty() && !others_left {
            let mut ring = KeyRing::load(path)?;
            retired = ring.retire_older_keks();
            if !retired.is_empty() {
                ring.save_replace(path)?;
            }
            let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
            *guard = std::sync::Arc::new(ring);
        }
        Ok(RotationReport {
            target,
            resumed,
            rewrapped,
            others: other_reports,
            retired,
            elapsed: start.elapsed(),
        })
    }
}

fn rewrap_all(
    ring: &KeyRing,
    target: u32,
    rows: Vec<WrappedKeyRow>,
) -> Result<Vec<(WrappedKeyRow, u32)>, VaultError> {
    let new = ring.kek(target)?;
    rows.into_iter()
        .map(|row| {
            let old = ring.kek(row.kek_version)?;
            let binding = Binding {
                person: row.id.get(),
                dek_version: row.dek_version,
            };
            let wrapped = new.rewrap(old, binding, &row.wrapped_dek)?;
            let previous = row.kek_version;
            Ok((
                WrappedKeyRow {
                    kek_version: target,
                    wrapped_dek: wrapped,
                    ..row
                },
                previous,
            ))
        })
        .collect()
}
