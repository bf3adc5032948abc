//! The status report: per keyring its versions, age, policy, last job and
//! warnings ([`status_report`], [`StatusReport`], [`KeyringStatus`], [`Warning`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::due::{DisabledVersion, destruction_candidates, retirement_candidates};
use super::runner::SchedulerTotals;
use super::{age_ratio, policy_for};
use crate::{
    AfterRotation, JobPhase, KeyState, KeyVersion, KeyringId, KeyringRecord, Lease, Policy, RotationJob, Timestamp,
};

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
            // In an erased keyring every value is meant to be unreadable: its
            // failures hold nothing back any more.
            if let Some(job) = last_job.filter(|j| j.counts.failed > 0 && record.erased_at.is_none()) {
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
