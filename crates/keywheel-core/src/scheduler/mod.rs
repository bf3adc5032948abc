//! Policies at work (the [runbook](crate::manual#12-operator-runbook)): a pure evaluation of what is due and why, a
//! scheduler loop that runs it, retires what may be retired, and a status report.

mod due;
mod runner;
mod status;

use std::collections::BTreeMap;

use crate::{KeyringId, KeyringRecord, Policy, Timestamp};

pub use due::{
    DisabledVersion, Due, DueReason, RetirementCandidate, destruction_candidates, evaluate, retirement_candidates,
};
pub use runner::{Scheduler, SchedulerConfig, SchedulerTotals, TickReport};
pub use status::{JobSummary, KeyringStatus, StatusReport, VersionsByState, Warning, status_report};

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
