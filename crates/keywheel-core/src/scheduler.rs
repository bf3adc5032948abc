//! Policies at work (the [runbook](crate::manual#12-operator-runbook)): a pure evaluation of what is due and why, a
//! scheduler loop that runs it, retires what may be retired, and a status report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::{
    AfterRotation, CancelToken, Error, JobPhase, KeyState, KeyVersion, KeyringId, KeyringRecord, Lease, Policy, Result,
    RotateOptions, RotationJob, RotationReport, Rotator, Timestamp,
};

/// Why a rotation is due, from least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DueReason {
    /// The interval has passed and the maintenance window is open.
    Scheduled,
    /// An unfinished (crashed or cancelled) job is waiting to be resumed.
    Resume,
    /// Past 150 % of the interval: runs even outside the maintenance window.
    Overdue,
    /// The Active version reached the policy's usage limit.
    UsageLimit,
    /// The keyring has no Active version.
    NoActiveKey,
    /// An emergency rotation was requested.
    Emergency,
}

impl DueReason {
    /// Whether this reason waits for the maintenance window.
    pub fn waits_for_window(self) -> bool {
        self == DueReason::Scheduled
    }
}

/// One keyring that is due, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Due {
    /// The keyring.
    pub keyring: KeyringId,
    /// Why.
    pub reason: DueReason,
    /// Its policy's priority.
    pub priority: i32,
    /// Age of the Active version divided by the interval (0 without one).
    pub overdue_ratio: f64,
    /// The Active version the decision was based on.
    pub active: Option<KeyVersion>,
}

/// The policy of `id` from `policies`, or its purpose's preset.
fn policy_for(policies: &BTreeMap<KeyringId, Policy>, id: &KeyringId) -> Policy {
    policies.get(id).cloned().unwrap_or_else(|| Policy::for_purpose(id.purpose()))
}

/// Age of the Active version over the interval, if there is an Active version.
fn age_ratio(now: Timestamp, record: &KeyringRecord, policy: &Policy) -> Option<f64> {
    let active = record.version(record.active_version()?)?;
    let since = active.activated_at.unwrap_or(active.created_at);
    let interval = policy.interval.as_secs_f64().max(1e-3);
    Some(now.since(since).as_secs_f64() / interval)
}

/// What is due at `now`, ordered: emergencies first, then by policy priority
/// (higher first), then by urgency of the reason, then by overdue ratio.
///
/// A pure function of its inputs: `policies` (missing ones mean the purpose's
/// preset), the most recent job of each keyring, and the keyrings for which an
/// emergency was requested. Rules:
/// * unfinished last job (or one whose completion event is pending) →
///   [`DueReason::Resume`] (nothing else is started);
/// * emergency requested → [`DueReason::Emergency`];
/// * no Active version → [`DueReason::NoActiveKey`];
/// * Active version's encryptions (as in the records: the scheduler passes
///   stored + its own unflushed counts) ≥ `usage_limit` → [`DueReason::UsageLimit`];
/// * age ≥ 1.5 × interval → [`DueReason::Overdue`];
/// * age ≥ interval, inside the maintenance window (or none) → [`DueReason::Scheduled`].
///
/// Only `Scheduled` waits for the window; everything else runs at once. An
/// erased keyring is never due: it is never rotated again. Disabled versions
/// waiting for destruction are reported by [`destruction_candidates`].
pub fn evaluate(
    now: Timestamp,
    keyrings: &[KeyringRecord],
    policies: &BTreeMap<KeyringId, Policy>,
    last_jobs: &BTreeMap<KeyringId, RotationJob>,
    emergencies: &BTreeSet<KeyringId>,
) -> Vec<Due> {
    let mut due: Vec<Due> = keyrings
        .iter()
        .filter(|record| record.erased_at.is_none())
        .filter_map(|record| {
            let id = &record.id;
            let policy = policy_for(policies, id);
            let active = record.active_version();
            let ratio = age_ratio(now, record, &policy);
            let usage = active.and_then(|v| record.version(v)).map_or(0, |v| v.encryptions);
            let in_window = policy.maintenance_window.is_none_or(|w| w.contains(now));
            // A finished job whose completion event may be unrecorded (a crash
            // came in between) is resumed too: the resume records it once.
            let reason = if last_jobs.get(id).is_some_and(|j| !j.phase.is_finished() || j.completion_pending) {
                DueReason::Resume
            } else if emergencies.contains(id) {
                DueReason::Emergency
            } else if active.is_none() {
                DueReason::NoActiveKey
            } else if policy.usage_limit.is_some_and(|limit| usage >= limit) {
                DueReason::UsageLimit
            } else if ratio.is_some_and(|r| r >= 1.5) {
                DueReason::Overdue
            } else if ratio.is_some_and(|r| r >= 1.0) && in_window {
                DueReason::Scheduled
            } else {
                return None;
            };
            Some(Due {
                keyring: id.clone(),
                reason,
                priority: policy.priority,
                overdue_ratio: ratio.unwrap_or(0.0),
                active,
            })
        })
        .collect();
    due.sort_by(|a, b| {
        let emergency = |d: &Due| d.reason == DueReason::Emergency;
        emergency(b)
            .cmp(&emergency(a))
            .then(b.priority.cmp(&a.priority))
            .then(b.reason.cmp(&a.reason))
            .then(b.overdue_ratio.total_cmp(&a.overdue_ratio))
            .then(a.keyring.cmp(&b.keyring))
    });
    due
}

/// A Deprecated version whose grace period has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetirementCandidate {
    /// The keyring.
    pub keyring: KeyringId,
    /// The version.
    pub version: KeyVersion,
    /// Whether a census must show zero values first (false for expiring keyrings).
    pub needs_census: bool,
}

/// Deprecated versions whose grace period is over at `now` (a pure function).
pub fn retirement_candidates(
    now: Timestamp,
    keyrings: &[KeyringRecord],
    policies: &BTreeMap<KeyringId, Policy>,
) -> Vec<RetirementCandidate> {
    let mut out = Vec::new();
    for record in keyrings {
        let policy = policy_for(policies, &record.id);
        for v in &record.versions {
            let grace_over = v.deprecated_at.is_some_and(|at| at.plus(policy.grace_period) <= now);
            // A compromised version waits for no grace period.
            if v.state == KeyState::Deprecated && (grace_over || v.compromised) {
                out.push(RetirementCandidate {
                    keyring: record.id.clone(),
                    version: v.version,
                    needs_census: policy.after_rotation == AfterRotation::Reencrypt || v.compromised,
                });
            }
        }
    }
    out
}

/// A Disabled version: retired reversibly, its material kept until its
/// quarantine ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisabledVersion {
    /// The keyring.
    pub keyring: KeyringId,
    /// The version.
    pub version: KeyVersion,
    /// When it was disabled.
    pub disabled_at: Option<Timestamp>,
    /// When its quarantine ends: it can be re-enabled before, and the
    /// scheduler destroys its material from then on.
    pub destroy_after: Option<Timestamp>,
    /// Whether the quarantine has ended at the time of evaluation (the
    /// material is due for destruction).
    pub due: bool,
}

/// Every Disabled version of `keyrings` with the end of its quarantine, and
/// whether that end has come at `now` (a pure function; the scheduler
/// destroys the due ones).
pub fn destruction_candidates(now: Timestamp, keyrings: &[KeyringRecord]) -> Vec<DisabledVersion> {
    keyrings
        .iter()
        .flat_map(|record| {
            record.versions.iter().filter(|v| v.state == KeyState::Disabled).map(|v| DisabledVersion {
                keyring: record.id.clone(),
                version: v.version,
                disabled_at: v.disabled_at,
                destroy_after: v.destroy_after,
                due: v.destroy_after.is_some_and(|t| t <= now),
            })
        })
        .collect()
}

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

    async fn tick_with(&self, shutdown: &CancelToken) -> Result<TickReport> {
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
            return Ok(report);
        }
        let runs = due.iter().take(self.config.max_concurrent.max(1)).map(|d| self.run_due(d, &policies, shutdown));
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
                    report.rotations.push(rotation);
                }
                Err(Error::RotationInProgress { .. } | Error::AlreadyRotated { .. } | Error::LeaseHeld { .. }) => {
                    report.skipped.push(d.keyring.clone());
                }
                Err(e) => {
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
                    locked(&self.totals).destructions += versions.len() as u64;
                    destroyed.extend(versions.into_iter().map(|v| (id.clone(), v)));
                }
                // A rotation or an operator holds the lease, or another
                // instance got there first: the next tick looks again.
                Err(Error::RotationInProgress { .. } | Error::GenerationConflict { .. } | Error::LeaseHeld { .. }) => {}
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
                    continue;
                }
            }
            let policy = policy_for(policies, &c.keyring);
            match self.rotator.retire_checked(&c.keyring, c.version, &policy, audit_refusal).await {
                Ok(_) => {
                    locked(&self.totals).retirements += 1;
                    retired.push((c.keyring, c.version));
                }
                // Nothing proves the version unused, values still use it, or job
                // failures reference it: refused (audited once), status warns.
                Err(Error::RetirementUnproven { .. } | Error::RetirementRefused { .. }) => {
                    locked(&self.refusals_audited).insert(key);
                }
                // Another instance retired it, or a rotation holds the lease:
                // not this tick's business.
                Err(
                    Error::IllegalTransition { .. }
                    | Error::RotationInProgress { .. }
                    | Error::GracePeriodNotOver { .. }
                    | Error::GenerationConflict { .. },
                ) => {}
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

/// A warning on a keyring's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warning {
    /// The next rotation is due within 10 % of the interval.
    Approaching {
        /// When it is due.
        due_at: Timestamp,
    },
    /// The Active version is older than the interval.
    Overdue {
        /// Age over interval.
        ratio: f64,
    },
    /// A Deprecated version is past its grace period but still in use (or not yet censused).
    GraceExpired {
        /// The version.
        version: u32,
        /// Values still on it, if a census is known.
        values: Option<u64>,
    },
    /// The last job left values it could not decrypt.
    FailuresPending {
        /// The job.
        job_id: String,
        /// How many.
        failed: u64,
    },
    /// The keyring has no Active version.
    NoActiveKey,
    /// The Active version used 90 % or more of its usage limit.
    UsageNearLimit {
        /// Encryptions so far.
        encryptions: u64,
        /// The limit.
        limit: u64,
    },
    /// The scheduler is paused.
    SchedulerPaused,
    /// The keyring's values are re-encrypted on rotation, but no registered
    /// record source covers it: no census can prove an old version unused, so
    /// retirement is refused (register the sources that hold its values).
    NoSourceCovers,
    /// The last job is unfinished and nobody holds the keyring's lease (its
    /// holder died or was stopped): resume it.
    StalledJob {
        /// The job.
        job_id: String,
        /// When its lease expired (`None`: released or never taken).
        lease_expired_at: Option<Timestamp>,
    },
    /// A version flagged compromised still has its key material (values that
    /// decrypt still use it, or nothing proves it unused); the scheduler keeps
    /// trying to retire it.
    CompromisedNotRetired {
        /// The version.
        version: u32,
    },
}

/// Versions of a keyring by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VersionsByState {
    /// Pending versions.
    pub pending: Vec<u32>,
    /// The Active version.
    pub active: Option<u32>,
    /// Deprecated versions.
    pub deprecated: Vec<u32>,
    /// Disabled versions (decryption refused, material kept until the quarantine ends).
    pub disabled: Vec<u32>,
    /// Retired versions.
    pub retired: Vec<u32>,
}

/// Summary of the last job of a keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSummary {
    /// The job id.
    pub id: String,
    /// Its phase (the outcome once finished).
    pub phase: JobPhase,
    /// From version.
    pub from: Option<u32>,
    /// To version.
    pub to: Option<u32>,
    /// Start.
    pub started_at: Timestamp,
    /// End.
    pub finished_at: Option<Timestamp>,
    /// Values processed.
    pub processed: u64,
    /// Values rewritten.
    pub rewritten: u64,
    /// Values that could not be decrypted.
    pub failed: u64,
}

/// The status of one keyring. Field names are stable (serde).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyringStatus {
    /// The keyring.
    pub keyring: KeyringId,
    /// The Active version.
    pub current_version: Option<u32>,
    /// Its age in seconds.
    pub current_age_secs: Option<u64>,
    /// When the next rotation is due (activation + interval).
    pub next_due: Option<Timestamp>,
    /// Age over interval (≥ 1 means due; ≥ 1.5 overdue).
    pub overdue_ratio: Option<f64>,
    /// Versions by state.
    pub versions: VersionsByState,
    /// Encryptions under the Active version: stored, plus those the reporting
    /// instance counted and has not flushed yet.
    pub active_encryptions: u64,
    /// The policy applied.
    pub policy: Policy,
    /// The last job.
    pub last_job: Option<JobSummary>,
    /// Values per version from the last census, if one was taken.
    pub census: Option<BTreeMap<u32, u64>>,
    /// When the keyring was erased (crypto-shredded), if it was: it encrypts
    /// nothing and is never rotated again.
    pub erased_at: Option<Timestamp>,
    /// Its Disabled versions, with when each will be destroyed.
    pub disabled: Vec<DisabledVersion>,
    /// Warnings.
    pub warnings: Vec<Warning>,
}

/// The status report: one entry per keyring plus scheduler totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// When it was made.
    pub generated_at: Timestamp,
    /// Whether the scheduler is paused.
    pub scheduler_paused: bool,
    /// Per keyring.
    pub keyrings: Vec<KeyringStatus>,
    /// Totals of this scheduler instance.
    pub totals: SchedulerTotals,
}

/// Build the status report from stored state (a pure function).
#[allow(clippy::too_many_arguments)]
pub fn status_report(
    now: Timestamp,
    keyrings: &[KeyringRecord],
    policies: &BTreeMap<KeyringId, Policy>,
    last_jobs: &BTreeMap<KeyringId, RotationJob>,
    leases: &BTreeMap<KeyringId, Lease>,
    uncovered: &BTreeSet<KeyringId>,
    census: &BTreeMap<KeyringId, BTreeMap<KeyVersion, u64>>,
    paused: bool,
    totals: SchedulerTotals,
) -> StatusReport {
    let statuses = keyrings
        .iter()
        .map(|record| {
            let id = &record.id;
            let policy = policy_for(policies, id);
            let active = record.active_version().and_then(|v| record.version(v));
            let since = active.map(|v| v.activated_at.unwrap_or(v.created_at));
            let ratio = age_ratio(now, record, &policy);
            let next_due = since.map(|s| s.plus(policy.interval));
            let mut versions = VersionsByState::default();
            for v in &record.versions {
                match v.state {
                    KeyState::Pending => versions.pending.push(v.version.get()),
                    KeyState::Active => versions.active = Some(v.version.get()),
                    KeyState::Deprecated => versions.deprecated.push(v.version.get()),
                    KeyState::Disabled => versions.disabled.push(v.version.get()),
                    KeyState::Retired => versions.retired.push(v.version.get()),
                }
            }
            let counts = census.get(id);
            let mut warnings = Vec::new();
            match (ratio, next_due) {
                // An erased keyring has no Active version on purpose.
                (None, _) if record.erased_at.is_some() => {}
                (None, _) => warnings.push(Warning::NoActiveKey),
                (Some(r), _) if r >= 1.0 => warnings.push(Warning::Overdue { ratio: r }),
                (Some(r), Some(due_at)) if r >= 0.9 => warnings.push(Warning::Approaching { due_at }),
                _ => {}
            }
            let active_encryptions = active.map_or(0, |v| v.encryptions);
            if let Some(limit) = policy.usage_limit
                && active_encryptions.saturating_mul(10) >= limit.saturating_mul(9)
            {
                warnings.push(Warning::UsageNearLimit { encryptions: active_encryptions, limit });
            }
            for c in retirement_candidates(now, std::slice::from_ref(record), policies) {
                let values = counts.map(|m| m.get(&c.version).copied().unwrap_or(0));
                if c.needs_census && values != Some(0) {
                    warnings.push(Warning::GraceExpired { version: c.version.get(), values });
                }
            }
            // An erased keyring is never retired by census again: no source is needed.
            if policy.after_rotation == AfterRotation::Reencrypt && uncovered.contains(id) && record.erased_at.is_none()
            {
                warnings.push(Warning::NoSourceCovers);
            }
            for v in record.versions.iter().filter(|v| v.compromised && v.state != KeyState::Retired) {
                warnings.push(Warning::CompromisedNotRetired { version: v.version.get() });
            }
            let last_job = last_jobs.get(id);
            if let Some(job) = last_job.filter(|j| !j.phase.is_finished() || j.completion_pending) {
                let lease = leases.get(id);
                if lease.is_none_or(|l| l.expires_at <= now) {
                    warnings.push(Warning::StalledJob {
                        job_id: job.id.clone(),
                        lease_expired_at: lease.map(|l| l.expires_at),
                    });
                }
            }
            if let Some(job) = last_job.filter(|j| j.counts.failed > 0) {
                warnings.push(Warning::FailuresPending { job_id: job.id.clone(), failed: job.counts.failed });
            }
            if paused {
                warnings.push(Warning::SchedulerPaused);
            }
            KeyringStatus {
                erased_at: record.erased_at,
                disabled: destruction_candidates(now, std::slice::from_ref(record)),
                keyring: id.clone(),
                current_version: active.map(|v| v.version.get()),
                current_age_secs: since.map(|s| now.since(s).as_secs()),
                next_due,
                overdue_ratio: ratio,
                versions,
                active_encryptions,
                policy,
                last_job: last_job.map(|j| JobSummary {
                    id: j.id.clone(),
                    phase: j.phase,
                    from: j.from.map(KeyVersion::get),
                    to: j.to.map(KeyVersion::get),
                    started_at: j.started_at,
                    finished_at: j.finished_at,
                    processed: j.counts.processed,
                    rewritten: j.counts.rewritten,
                    failed: j.counts.failed,
                }),
                census: counts.map(|m| m.iter().map(|(v, n)| (v.get(), *n)).collect()),
                warnings,
            }
        })
        .collect();
    StatusReport { generated_at: now, scheduler_paused: paused, keyrings: statuses, totals }
}
