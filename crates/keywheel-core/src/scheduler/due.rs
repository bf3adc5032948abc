//! What is due, as pure functions of stored state: rotations ([`evaluate`], [`Due`],
//! [`DueReason`]), retirements ([`retirement_candidates`]) and destructions of
//! Disabled versions' material ([`destruction_candidates`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{age_ratio, policy_for};
use crate::{AfterRotation, KeyState, KeyVersion, KeyringId, KeyringRecord, Policy, RotationJob, Timestamp};

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
