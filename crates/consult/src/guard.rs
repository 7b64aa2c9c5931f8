//! Stage 3, the guard, as the consultation path uses it: the attempts a
//! request makes ([`Consultation::attempts`]), screening an attempt the
//! policy allowed before anything is decrypted ([`Consultation::screen`]),
//! counting one that ended without data ([`Consultation::observed`]),
//! and containing a verdict other than allow (its leaf, its alert, a
//! suspension). The verdicts come from the `rempart-guard` crate; here
//! they become leaves and refusals. The store is touched only to suspend
//! an account the guard suspended.

use std::net::IpAddr;

use rempart_domain::{FieldGroup, PersonId};
use rempart_guard::{
    AccountFacts, Alert, Attempt, AttemptKind, BUCKET_SECS, Feature, Fields, GuardConfig,
    GuardDecision, Observed, PeerGroup, SessionFacts, Verdict,
};
use rempart_ledger::{
    AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups, GuardVerdict, LeafRef,
};
use rempart_policy::{Decision, NirView};

use crate::authenticate::Via;
use crate::kernel::{Consultation, Ctx, Refusal, session_of};

/// A leaf waiting for its batch, with the guard's decision to contain
/// when it is not allow (see [`Consultation::settle`]).
pub(crate) type Pending = (AuditLeaf, Option<GuardDecision>);

/// How long an alert waits for its staged leaf's index (a few integration
/// rounds) before it is raised without it.
pub(crate) const ALERT_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Consultation {
    /// The guard's view of this request's attempts, built once: who, from
    /// which session, device and network.
    pub(crate) fn attempts(&self, ctx: &Ctx<'_>, from: Option<IpAddr>) -> Attempts {
        let a = &ctx.caller.account;
        let (high_risk, device, stepped_up_at) = match &ctx.caller.via {
            Via::Session {
                high_risk,
                device,
                step_up_at,
                ..
            } => (*high_risk, Some(*device), *step_up_at),
            Via::AccessToken { device, .. } => (false, Some(*device), None),
            // An API credential has no session flags and no key.
            Via::Credential(_) => (false, None, None),
        };
        Attempts(Attempt {
            at: ctx.now,
            account: AccountFacts {
                account_id: a.account_id,
                organisation_id: a.organisation_id,
                role: a.role,
                created_at: a.created_at,
                peer: PeerGroup::of(a.kind, a.departement.as_deref()),
            },
            session: SessionFacts {
                session_id: session_of(&ctx.caller.via).0,
                high_risk,
                device,
                network: from.map(|ip| self.vault.network_digest(ip)),
                stepped_up_at,
            },
            kind: AttemptKind::ReadPerson,
            person_id: None,
            purpose: ctx.purpose,
            fields: Fields::NONE,
            new_mandate: false,
        })
    }

    /// Stage 3, on an attempt the policy allowed: `Ok` lets it go on to
    /// the vault. Any other verdict is refused, ledgered and contained
    /// (see [`Consultation::contain`]); a guard error fails closed.
    pub(crate) async fn screen(
        &self,
        ctx: &Ctx<'_>,
        attempt: &Attempt,
    ) -> Result<GuardVerdict, Refusal> {
        let decision = self
            .fail_on(
                ctx,
                attempt.person_id,
                "guard",
                self.guard.check(attempt).await,
            )
            .await?;
        let (reason, refusal) = match decision.verdict {
            Verdict::Allow => return Ok(GuardVerdict::Allow),
            Verdict::StepUp => (DenyReason::StepUpRequired, Refusal::StepUpRequired),
            Verdict::Throttle => (
                DenyReason::Throttled,
                Refusal::Throttled {
                    retry_after_secs: retry_after(&self.guard.config(), decision.alert.as_ref()),
                },
            ),
            Verdict::Suspend => (DenyReason::Suspended, Refusal::AccountSuspended),
            Verdict::FreezeOrganisation => {
                (DenyReason::OrganisationFrozen, Refusal::OrganisationFrozen)
            }
        };
        let mut leaf = deny_leaf(ctx, attempt, reason);
        leaf.guard = Some(ledger_verdict(decision.verdict));
        // The groups it would have shown: what was attempted.
        leaf.field_groups = FieldGroup::ALL
            .iter()
            .copied()
            .filter(|g| attempt.fields.contains(*g))
            .collect();
        self.contain(ctx, decision, leaf).await?;
        Err(refusal)
    }

    /// Stage 3 told of an attempt that ended without data (a policy
    /// denial, nothing found): the guard counts it, then `leaf` is appended
    /// with the guard's verdict. The caller's answer stays what it was; a
    /// verdict other than allow is contained from now on.
    pub(crate) async fn observed(
        &self,
        ctx: &Ctx<'_>,
        attempt: &Attempt,
        how: Observed,
        leaf: AuditLeaf,
    ) -> Result<(), Refusal> {
        let pending = self.observe(ctx, attempt, how, leaf).await?;
        self.settle(ctx, vec![pending]).await.map(|_| ())
    }

    /// [`Consultation::observed`] without the append: the leaf with the
    /// guard's verdict, and the decision to contain if it is not allow,
    /// for [`Consultation::settle`] to append with others in one batch.
    pub(crate) async fn observe(
        &self,
        ctx: &Ctx<'_>,
        attempt: &Attempt,
        how: Observed,
        mut leaf: AuditLeaf,
    ) -> Result<Pending, Refusal> {
        let decision = self
            .fail_on(
                ctx,
                attempt.person_id,
                "guard",
                self.guard.observe(attempt, how).await,
            )
            .await?;
        if decision.lets_through() {
            return Ok((leaf, None));
        }
        leaf.guard = Some(ledger_verdict(decision.verdict));
        Ok((leaf, Some(decision)))
    }

    /// A verdict other than allow: its leaf first, then its alert pointing
    /// at that leaf, then the containment it calls for.
    async fn contain(
        &self,
        ctx: &Ctx<'_>,
        decision: GuardDecision,
        leaf: AuditLeaf,
    ) -> Result<(), Refusal> {
        self.settle(ctx, vec![(leaf, Some(decision))])
            .await
            .map(|_| ())
    }

    /// Appends `pending` leaves in one batch (one durable write), then, for
    /// each verdict other than allow, its alert pointing at its leaf and
    /// the containment it calls for (a suspension ends the account's
    /// sessions; a freeze reaches the other instances at their next
    /// sync). The alerts and the suspension happen even if the ledger
    /// fails; the caller then gets `Unavailable`. The first leaf's place
    /// (`None` for no leaves).
    ///
    /// The suspension comes first: an alert names its leaf's index, which a
    /// staged leaf gets only once integrated (waited for, up to
    /// [`ALERT_INDEX_WAIT`]; the alert is raised without it after that).
    pub(crate) async fn settle(
        &self,
        ctx: &Ctx<'_>,
        pending: Vec<Pending>,
    ) -> Result<Option<LeafRef>, Refusal> {
        let (leaves, decisions): (Vec<AuditLeaf>, Vec<Option<GuardDecision>>) =
            pending.into_iter().unzip();
        let recorded = self.record_all(&leaves).await;
        let first = recorded.as_ref().ok().copied().flatten();
        let mut suspend = false;
        let mut alerts = Vec::new();
        for (i, decision) in (0u64..).zip(decisions) {
            let Some(decision) = decision else { continue };
            if let Some(alert) = decision.alert {
                alerts.push((alert, first.map(|f| f.offset(i))));
            }
            suspend |= decision.suspends_account;
        }
        let suspended = if suspend {
            self.suspend(ctx).await
        } else {
            Ok(())
        };
        for (alert, leaf) in alerts {
            self.raise_with_leaf(alert, leaf);
        }
        suspended?;
        recorded
    }

    /// Raises `alert` naming `leaf` as its last: at once when the leaf has
    /// its index; a staged leaf's index is waited for (up to
    /// [`ALERT_INDEX_WAIT`], then the alert goes without it) off the
    /// request path, so that a refusal on a staging replica does not wait
    /// for the integrator. [`Consultation::finish_alerts`] waits for those.
    pub(crate) fn raise_with_leaf(&self, alert: Alert, leaf: Option<LeafRef>) {
        match leaf {
            None => self.guard.raise(alert.with_ledger_range(None, None)),
            Some(LeafRef::Index(i)) => self.guard.raise(alert.with_ledger_range(None, Some(i))),
            Some(staged) => {
                let (ledger, guard) = (self.ledger().clone(), self.guard.clone());
                let mut late = self.late_alerts.lock().unwrap_or_else(|p| p.into_inner());
                // Forget those done, so that the set stays small.
                while late.try_join_next().is_some() {}
                late.spawn(async move {
                    let at = ledger
                        .index_of(staged, ALERT_INDEX_WAIT)
                        .await
                        .ok()
                        .flatten();
                    guard.raise(alert.with_ledger_range(None, at));
                });
            }
        }
    }

    /// Waits until every alert raised off the request path is queued for
    /// the guard's next sync: before a server's last sync, and in tests.
    pub async fn finish_alerts(&self) {
        let late = std::mem::take(&mut *self.late_alerts.lock().unwrap_or_else(|p| p.into_inner()));
        late.join_all().await;
    }

    /// The guard suspended the caller's account: in the registry, with its
    /// sessions, API credentials, API clients and access tokens ended in the
    /// same transaction, so every instance refuses them from the next
    /// request ([`AuthStore::suspend_account`]). An account no longer
    /// active (an officer was quicker) was already ended with its change.
    async fn suspend(&self, ctx: &Ctx<'_>) -> Result<(), Refusal> {
        let id = ctx.caller.account.account_id;
        let suspended = self
            .auth
            .suspend_account(id, ctx.now, "guard_suspension")
            .await;
        self.fail_on(ctx, None, "guard suspension", suspended)
            .await?;
        Ok(())
    }
}

/// This request's attempts, for the guard: one template, each attempt
/// naming its kind, person and fields.
pub(crate) struct Attempts(Attempt);

impl Attempts {
    pub(crate) fn of(
        &self,
        kind: AttemptKind,
        person_id: Option<PersonId>,
        fields: Fields,
    ) -> Attempt {
        Attempt {
            kind,
            person_id,
            fields,
            ..self.0.clone()
        }
    }
}

/// What a decision would show, for the guard.
pub(crate) fn fields(decision: &Decision) -> Fields {
    Fields::of(&decision.groups, decision.nir == NirView::Clear)
}

/// The leaf of a refused attempt.
pub(crate) fn deny_leaf(ctx: &Ctx<'_>, attempt: &Attempt, reason: DenyReason) -> AuditLeaf {
    ctx.leaf(
        attempt.person_id,
        FieldGroups::EMPTY,
        LeafDecision::Deny(reason),
        None,
        None,
    )
}

/// The ledger's code for a guard verdict.
fn ledger_verdict(v: Verdict) -> GuardVerdict {
    match v {
        Verdict::Allow => GuardVerdict::Allow,
        Verdict::StepUp => GuardVerdict::StepUp,
        Verdict::Throttle => GuardVerdict::Throttle,
        Verdict::Suspend => GuardVerdict::Suspend,
        Verdict::FreezeOrganisation => GuardVerdict::FreezeOrganisation,
    }
}

/// When a throttled account may usefully try again, in seconds: a daily
/// quota's window slides by the hour, an hourly one's by a counter bucket,
/// a behaviour throttle lasts `containment.throttle_minutes`.
fn retry_after(config: &GuardConfig, alert: Option<&Alert>) -> u32 {
    let features = alert.map_or(&[][..], |a| a.explanation.as_slice());
    let has = |fs: &[Feature]| features.iter().any(|e| fs.contains(&e.feature));
    if has(&[
        Feature::PersonsPerDay,
        Feature::NirPerDay,
        Feature::SearchesPerDay,
        Feature::BreakGlassPerDay,
    ]) {
        3600
    } else if has(&[
        Feature::PersonsPerHour,
        Feature::NirPerHour,
        Feature::SearchesPerHour,
        Feature::BreakGlassPerHour,
    ]) {
        BUCKET_SECS as u32
    } else {
        config.containment.throttle_minutes.saturating_mul(60)
    }
}
