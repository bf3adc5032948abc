//! The [`Scheduler`] loop: its configuration, ticks (rotate what is due, retire
//! and destroy what may go), running totals and the status it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use super::due::{Due, DueReason, destruction_candidates, evaluate, retirement_candidates};
use super::policy_for;
use super::status::{StatusReport, status_report};
use crate::{
    CancelToken, Error, KeyVersion, KeyringId, KeyringRecord, Policy, Result, RotateOptions, RotationJob,
    RotationReport, Rotator, Timestamp,
};

/// How the scheduler loop runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Time between ticks (default 60 s).
    pub tick: Duration,
    /// Rotations this instance runs at once (default 1).
    pub max_concurrent: usize,
    /// Options for the rotations it starts (the loop's shutdown token is added).
    pub rotate: RotateOptions,
    /// Retire versions whose grace period passed and whose census is zero (default true).
    pub auto_retire: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            tick: Duration::from_secs(60),
            max_concurrent: 1,
            rotate: RotateOptions::default(),
            auto_retire: true,
        }
    }
}

/// Running totals of one scheduler instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SchedulerTotals {
    /// Rotations started by this instance.
    pub rotations_scheduled: u64,
    /// Rotations it completed (with or without failures).
    pub rotations_completed: u64,
    /// Rotations that ended in an error.
    pub rotations_failed: u64,
    /// Mean duration of the completed ones, in seconds.
    pub mean_duration_secs: Option<f64>,
    /// Versions it retired (disabled, or destroyed at once with a zero quarantine).
    pub retirements: u64,
    /// Disabled versions whose material it destroyed when their quarantine ended.
    pub destructions: u64,
    #[serde(skip)]
    total_duration_secs: f64,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickReport {
    /// When.
    pub at: Timestamp,
    /// Whether the scheduler was paused (nothing was started or retired).
    pub paused: bool,
    /// What was due.
    pub due: Vec<Due>,
    /// Rotations run, with their reports.
    pub rotations: Vec<RotationReport>,
    /// Due keyrings left to another instance (lease held or already rotated).
    pub skipped: Vec<KeyringId>,
    /// Rotations that failed, with the error.
    pub failed: Vec<(KeyringId, String)>,
    /// Versions retired (disabled, or destroyed at once with a zero quarantine).
    pub retired: Vec<(KeyringId, KeyVersion)>,
    /// Disabled versions whose quarantine ended, their material destroyed.
    pub destroyed: Vec<(KeyringId, KeyVersion)>,
}

/// The scheduler: evaluates policies on every tick, runs due rotations (at most
/// `max_concurrent` at once), resumes interrupted jobs and retires versions
/// whose grace period passed with a zero census.
///
/// Safe to run in every application instance on one store: the keyring lease
/// decides who rotates, and `expected_active` keeps a rotation from running
/// twice when two instances saw the same due keyring.
pub struct Scheduler {
    rotator: Rotator,
    config: SchedulerConfig,
    paused: AtomicBool,
    emergencies: Mutex<BTreeMap<KeyringId, String>>,
    totals: Mutex<SchedulerTotals>,
    last_census: Mutex<BTreeMap<KeyringId, BTreeMap<KeyVersion, u64>>>,
    refusals_audited: Mutex<BTreeSet<(KeyringId, KeyVersion)>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("rotator", &self.rotator)
            .field("config", &self.config)
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

use crate::observability::scheduler_decision as decision;

/// The `reason` label of a due rotation.
fn due_reason(reason: DueReason) -> &'static str {
    match reason {
        DueReason::Scheduled => "scheduled",
        DueReason::Resume => "resume",
        DueReason::Overdue => "overdue",
        DueReason::UsageLimit => "usage_limit",
        DueReason::NoActiveKey => "no_active_key",
        DueReason::Emergency => "emergency",
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Scheduler {
    /// A scheduler driving `rotator` (its sources are what rotations re-encrypt).
    pub fn new(rotator: Rotator, config: SchedulerConfig) -> Self {
        Scheduler {
            rotator,
            config,
            paused: AtomicBool::new(false),
            emergencies: Mutex::new(BTreeMap::new()),
            totals: Mutex::new(SchedulerTotals::default()),
            last_census: Mutex::new(BTreeMap::new()),
            refusals_audited: Mutex::new(BTreeSet::new()),
        }
    }

    /// Stop starting rotations and retirements (ticks still flush usage and evaluate).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Undo [`pause`](Self::pause).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Whether paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Ask for an emergency rotation of `id` at the next tick.
    pub fn request_emergency(&self, id: &KeyringId, reason: &str) -> Result<()> {
        if reason.trim().is_empty() {
            return Err(Error::ReasonRequired("emergency rotation"));
        }
        locked(&self.emergencies).insert(id.clone(), reason.to_owned());
        Ok(())
    }

    /// Totals so far.
    pub fn totals(&self) -> SchedulerTotals {
        locked(&self.totals).clone()
    }

    async fn gather(
        &self,
    ) -> Result<(Vec<KeyringRecord>, BTreeMap<KeyringId, Policy>, BTreeMap<KeyringId, RotationJob>)> {
        let kw = self.rotator.keywheel();
        let mut records = Vec::new();
        let mut policies = BTreeMap::new();
        let mut jobs = BTreeMap::new();
        kw.flush_all_usage().await?;
        for id in kw.list_keyrings().await? {
            let mut record = kw.record(&id).await?;
            // Stored + unflushed: encryptions this instance made since the flush
            // above count too (possibly twice if a reload flushed them in
            // between: too high, never too low).
            for v in &mut record.versions {
                v.encryptions = v.encryptions.saturating_add(kw.unflushed_usage(&id, v.version));
            }
            records.push(record);
            policies.insert(id.clone(), kw.policy(&id).await?);
            if let Some(job) = self.rotator.last_job(&id).await? {
                jobs.insert(id, job);
            }
        }
        Ok((records, policies, jobs))
    }

    /// One pass: flush usage counts, evaluate, run what is due, retire what may go.
    pub async fn tick(&self) -> Result<TickReport> {
        self.tick_with(&CancelToken::new()).await
    }

    /// A tick in its `keywheel.scheduler.tick` span, counted in the metrics.
    async fn tick_with(&self, shutdown: &CancelToken) -> Result<TickReport> {
        let span = crate::observability::tick_span();
        let result = self.tick_body(shutdown).instrument(span.clone()).await;
        crate::observability::tick_finished(&span, &result);
        result
    }

    async fn tick_body(&self, shutdown: &CancelToken) -> Result<TickReport> {
        let now = self.rotator.keywheel().now();
        let (records, policies, jobs) = self.gather().await?;
        let emergencies: BTreeSet<KeyringId> = locked(&self.emergencies).keys().cloned().collect();
        let due = evaluate(now, &records, &policies, &jobs, &emergencies);
        let mut report = TickReport {
            at: now,
            paused: self.is_paused(),
            due: due.clone(),
            rotations: Vec::new(),
            skipped: Vec::new(),
            failed: Vec::new(),
            retired: Vec::new(),
            destroyed: Vec::new(),
        };
        if report.paused {
            for d in &due {
                decision(&d.keyring, due_reason(d.reason), "paused");
            }
            return Ok(report);
        }
        let started = self.config.max_concurrent.max(1);
        for d in due.iter().skip(started) {
            decision(&d.keyring, due_reason(d.reason), "deferred");
        }
        let runs = due.iter().take(started).map(|d| self.run_due(d, &policies, shutdown));
        let results = futures::future::join_all(runs).await;
        for (d, result) in due.iter().zip(results) {
            match result {
                Ok(rotation) => {
                    let mut totals = locked(&self.totals);
                    totals.rotations_scheduled += 1;
                    if rotation.phase.is_finished() {
                        totals.rotations_completed += 1;
                        totals.total_duration_secs += rotation.duration.as_secs_f64();
                        totals.mean_duration_secs =
                            Some(totals.total_duration_secs / totals.rotations_completed as f64);
                    }
                    if d.reason == DueReason::Emergency {
                        locked(&self.emergencies).remove(&d.keyring);
                    }
                    decision(&d.keyring, due_reason(d.reason), "rotated");
                    report.rotations.push(rotation);
                }
                Err(Error::RotationInProgress { .. } | Error::AlreadyRotated { .. } | Error::LeaseHeld { .. }) => {
                    decision(&d.keyring, due_reason(d.reason), "skipped");
                    report.skipped.push(d.keyring.clone());
                }
                Err(e) => {
                    decision(&d.keyring, due_reason(d.reason), "failed");
                    let mut totals = locked(&self.totals);
                    totals.rotations_scheduled += 1;
                    totals.rotations_failed += 1;
                    report.failed.push((d.keyring.clone(), e.to_string()));
                }
            }
        }
        if self.config.auto_retire && !shutdown.is_cancelled() {
            report.retired = self.retire_due(now, &policies).await?;
            report.destroyed = self.destroy_due(now, &records).await?;
        }
        Ok(report)
    }

    async fn run_due(
        &self,
        due: &Due,
        policies: &BTreeMap<KeyringId, Policy>,
        shutdown: &CancelToken,
    ) -> Result<RotationReport> {
        let opts =
            RotateOptions { cancel: shutdown.clone(), expected_active: due.active, ..self.config.rotate.clone() };
        let id = &due.keyring;
        match due.reason {
            DueReason::Resume => self.rotator.resume(id, &opts).await?.ok_or_else(|| Error::AlreadyRotated {
                keyring: id.clone(),
                expected: due.active,
                active: None,
            }),
            DueReason::Emergency => {
                let reason = locked(&self.emergencies).get(id).cloned().unwrap_or_default();
                self.rotator.emergency(id, &reason, &opts).await
            }
            _ => {
                let policy = policy_for(policies, id);
                self.rotator.rotate(id, &policy, &opts).await
            }
        }
    }

    /// Destroy the material of Disabled versions whose quarantine has ended
    /// (audited by [`Keywheel::destroy_quarantined`](crate::Keywheel::destroy_quarantined)).
    async fn destroy_due(&self, now: Timestamp, records: &[KeyringRecord]) -> Result<Vec<(KeyringId, KeyVersion)>> {
        let mut keyrings: Vec<KeyringId> =
            destruction_candidates(now, records).into_iter().filter(|d| d.due).map(|d| d.keyring).collect();
        keyrings.dedup();
        let mut destroyed = Vec::new();
        for id in keyrings {
            match self.rotator.keywheel().destroy_quarantined(&id).await {
                Ok(versions) => {
                    for _ in &versions {
                        decision(&id, "quarantine_over", "destroyed");
                    }
                    locked(&self.totals).destructions += versions.len() as u64;
                    destroyed.extend(versions.into_iter().map(|v| (id.clone(), v)));
                }
                // A rotation or an operator holds the lease, or another
                // instance got there first: the next tick looks again.
                Err(Error::RotationInProgress { .. } | Error::GenerationConflict { .. } | Error::LeaseHeld { .. }) => {
                    decision(&id, "quarantine_over", "skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(destroyed)
    }

    async fn retire_due(
        &self,
        now: Timestamp,
        policies: &BTreeMap<KeyringId, Policy>,
    ) -> Result<Vec<(KeyringId, KeyVersion)>> {
        let kw = self.rotator.keywheel();
        let mut records = Vec::new();
        for id in policies.keys() {
            records.push(kw.record(id).await?);
        }
        let mut retired = Vec::new();
        for c in retirement_candidates(now, &records, policies) {
            let compromised = records
                .iter()
                .find(|r| r.id == c.keyring)
                .and_then(|r| r.version(c.version))
                .is_some_and(|v| v.compromised);
            // Refusals are audited once per version by this scheduler, not every tick.
            let key = (c.keyring.clone(), c.version);
            let audit_refusal = !locked(&self.refusals_audited).contains(&key);
            if c.needs_census && !compromised && self.rotator.covers(&c.keyring) {
                // Cheap pre-check; the census that decides is taken under the lease.
                let census = self.rotator.census(Some(&c.keyring)).await?;
                let per_version = census.counts.get(&c.keyring).cloned().unwrap_or_default();
                let in_use = per_version.get(&c.version).copied().unwrap_or(0);
                locked(&self.last_census).insert(c.keyring.clone(), per_version);
                if in_use > 0 {
                    decision(&c.keyring, "grace_period_over", "in_use");
                    continue;
                }
            }
            let policy = policy_for(policies, &c.keyring);
            match self.rotator.retire_checked(&c.keyring, c.version, &policy, audit_refusal).await {
                Ok(_) => {
                    decision(&c.keyring, "grace_period_over", "retired");
                    locked(&self.totals).retirements += 1;
                    retired.push((c.keyring, c.version));
                }
                // Nothing proves the version unused, values still use it, or job
                // failures reference it: refused (audited once), status warns.
                Err(Error::RetirementUnproven { .. } | Error::RetirementRefused { .. }) => {
                    decision(&c.keyring, "grace_period_over", "refused");
                    locked(&self.refusals_audited).insert(key);
                }
                // Another instance retired it, or a rotation holds the lease:
                // not this tick's business.
                Err(
                    Error::IllegalTransition { .. }
                    | Error::RotationInProgress { .. }
                    | Error::GracePeriodNotOver { .. }
                    | Error::GenerationConflict { .. },
                ) => decision(&c.keyring, "grace_period_over", "skipped"),
                Err(e) => return Err(e),
            }
        }
        Ok(retired)
    }

    /// Tick every `config.tick` until `shutdown` is cancelled; calls `on_tick`
    /// with each tick's result. A cancelled shutdown also stops rotations in
    /// flight after their current batch (checkpointed; the next start resumes them).
    ///
    /// Usage counts ([`Keywheel::flush_all_usage`](crate::Keywheel::flush_all_usage))
    /// are flushed by every tick, every `config.tick` while a tick runs (a
    /// long rotation's re-encryptions), and once more before returning.
    pub async fn run(&self, shutdown: CancelToken, mut on_tick: impl FnMut(&Result<TickReport>)) {
        let kw = self.rotator.keywheel();
        while !shutdown.is_cancelled() {
            // A tick can run a long rotation; its re-encryptions are flushed
            // every `config.tick` meanwhile (at most every 10 ms, so a zero
            // tick does not spin), so a crash loses at most that much.
            let tick = self.tick_with(&shutdown);
            tokio::pin!(tick);
            let every = self.config.tick.max(Duration::from_millis(10));
            let result = loop {
                tokio::select! {
                    result = &mut tick => break result,
                    () = tokio::time::sleep(every) => {
                        // Best effort: the counts stay pending for the next flush.
                        let _ = kw.flush_all_usage().await;
                    }
                }
            };
            on_tick(&result);
            tokio::select! {
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        // Graceful shutdown: leave no counted encryption behind. A failure has
        // no caller to go to; the counts are lost with the process, as after a kill.
        let _ = self.rotator.keywheel().flush_all_usage().await;
    }

    /// The status report of every keyring (see [`StatusReport`]). Values per
    /// version come from the last census this scheduler took, or from a fresh
    /// one when `fresh_census` is set.
    pub async fn status(&self, fresh_census: bool) -> Result<StatusReport> {
        let kw = self.rotator.keywheel();
        let now = kw.now();
        let (records, policies, jobs) = self.gather().await?;
        if fresh_census {
            let census = self.rotator.census(None).await?;
            let mut last = locked(&self.last_census);
            for record in &records {
                last.insert(record.id.clone(), census.counts.get(&record.id).cloned().unwrap_or_default());
            }
        }
        let census = locked(&self.last_census).clone();
        let mut leases = BTreeMap::new();
        let mut uncovered = BTreeSet::new();
        for record in &records {
            if let Some(lease) = kw.store().load_lease(&record.id).await? {
                leases.insert(record.id.clone(), lease);
            }
            if !self.rotator.covers(&record.id) {
                uncovered.insert(record.id.clone());
            }
        }
        Ok(status_report(
            now,
            &records,
            &policies,
            &jobs,
            &leases,
            &uncovered,
            &census,
            self.is_paused(),
            self.totals(),
        ))
    }
}
