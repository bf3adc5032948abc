//! The CLI's JSON conventions: times are RFC 3339 strings in UTC with
//! milliseconds (`"2026-12-02T09:27:27.123Z"`), durations are numbers of
//! seconds in fields named `…_secs`.
//!
//! The core types keep their own serde form (epoch milliseconds, seconds
//! without a unit in the name): the stores persist several of them. The CLI
//! prints them through the views below instead. Every view destructures its
//! core type without `..`, so a field added to the core type is a compile
//! error here rather than a field missing from the output.

use std::collections::BTreeMap;
use std::time::Duration;

use keywheel_core::{
    AfterRotation, AuditEntry, AuditEvent, DisabledVersion, JobCounts, JobFailure, JobPhase, JobSummary, KeyVersion,
    KeyringId, KeyringStatus, MaintenanceWindow, Policy, RollbackReport, RotationReport, SchedulerTotals, StatusReport,
    TickReport, Timestamp, VersionsByState, Warning,
};
use serde::{Serialize, Serializer};

/// A time, serialized as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time(pub(crate) Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An optional time as RFC 3339 (or `null`).
pub(crate) fn time(t: Option<Timestamp>) -> Option<Time> {
    t.map(Time)
}

/// A policy: every duration in seconds, named `…_secs`.
#[derive(Debug, Serialize)]
pub(crate) struct PolicyJson {
    interval_secs: u64,
    grace_period_secs: u64,
    rollback_window_secs: u64,
    activation_delay_secs: u64,
    quarantine_secs: u64,
    after_rotation: AfterRotation,
    usage_limit: Option<u64>,
    maintenance_window: Option<WindowJson>,
    priority: i32,
}

/// A maintenance window: its start as seconds after 00:00 UTC and its length.
#[derive(Debug, Serialize)]
struct WindowJson {
    start_secs: u64,
    duration_secs: u64,
}

impl From<&Policy> for PolicyJson {
    fn from(p: &Policy) -> Self {
        let Policy {
            interval,
            grace_period,
            rollback_window,
            activation_delay,
            quarantine,
            after_rotation,
            usage_limit,
            maintenance_window,
            priority,
        } = p;
        PolicyJson {
            interval_secs: interval.as_secs(),
            grace_period_secs: grace_period.as_secs(),
            rollback_window_secs: rollback_window.as_secs(),
            activation_delay_secs: activation_delay.as_secs(),
            quarantine_secs: quarantine.as_secs(),
            after_rotation: *after_rotation,
            usage_limit: *usage_limit,
            maintenance_window: maintenance_window.map(|MaintenanceWindow { start, duration }| WindowJson {
                start_secs: start.as_secs(),
                duration_secs: duration.as_secs(),
            }),
            priority: *priority,
        }
    }
}

/// A rotation, dry run or resume.
#[derive(Debug, Serialize)]
pub(crate) struct RotationJson<'a> {
    job_id: &'a Option<String>,
    keyring: &'a KeyringId,
    dry_run: bool,
    from: Option<KeyVersion>,
    to: Option<KeyVersion>,
    phase: JobPhase,
    counts: &'a JobCounts,
    failures: &'a [JobFailure],
    remaining: u64,
    duration_secs: f64,
    /// Legacy values migrated per format (omitted when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    legacy: &'a std::collections::BTreeMap<String, u64>,
}

impl<'a> From<&'a RotationReport> for RotationJson<'a> {
    fn from(r: &'a RotationReport) -> Self {
        let RotationReport { job_id, keyring, dry_run, from, to, phase, counts, failures, remaining, duration, legacy } =
            r;
        RotationJson {
            job_id,
            keyring,
            dry_run: *dry_run,
            from: *from,
            to: *to,
            phase: *phase,
            counts,
            failures,
            remaining: *remaining,
            duration_secs: secs_f64(*duration),
            legacy,
        }
    }
}

fn secs_f64(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A rollback and its optional re-encryption.
#[derive(Debug, Serialize)]
pub(crate) struct RollbackJson<'a> {
    from: KeyVersion,
    to: KeyVersion,
    reencrypt: Option<RotationJson<'a>>,
}

impl<'a> From<&'a RollbackReport> for RollbackJson<'a> {
    fn from(r: &'a RollbackReport) -> Self {
        let RollbackReport { from, to, reencrypt } = r;
        RollbackJson { from: *from, to: *to, reencrypt: reencrypt.as_ref().map(RotationJson::from) }
    }
}

/// The status report.
#[derive(Debug, Serialize)]
pub(crate) struct StatusJson<'a> {
    generated_at: Time,
    scheduler_paused: bool,
    keyrings: Vec<KeyringStatusJson<'a>>,
    totals: &'a SchedulerTotals,
    /// `status --all`: keyrings keywheel.toml names that the store does not hold yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_created: Option<&'a [KeyringId]>,
}

impl<'a> StatusJson<'a> {
    /// The report, and with `status --all` the named keyrings not created yet.
    pub(crate) fn new(r: &'a StatusReport, not_created: Option<&'a [KeyringId]>) -> Self {
        let StatusReport { generated_at, scheduler_paused, keyrings, totals } = r;
        StatusJson {
            generated_at: Time(*generated_at),
            scheduler_paused: *scheduler_paused,
            keyrings: keyrings.iter().map(KeyringStatusJson::from).collect(),
            totals,
            not_created,
        }
    }
}

#[derive(Debug, Serialize)]
struct KeyringStatusJson<'a> {
    keyring: &'a KeyringId,
    current_version: Option<u32>,
    current_age_secs: Option<u64>,
    next_due: Option<Time>,
    overdue_ratio: Option<f64>,
    versions: &'a VersionsByState,
    active_encryptions: u64,
    policy: PolicyJson,
    last_job: Option<JobSummaryJson<'a>>,
    census: &'a Option<BTreeMap<u32, u64>>,
    erased_at: Option<Time>,
    disabled: Vec<DisabledVersionJson<'a>>,
    warnings: Vec<WarningJson<'a>>,
}

/// A Disabled version and when its quarantine ends.
#[derive(Debug, Serialize)]
struct DisabledVersionJson<'a> {
    keyring: &'a KeyringId,
    version: KeyVersion,
    disabled_at: Option<Time>,
    destroy_after: Option<Time>,
    due: bool,
}

impl<'a> From<&'a DisabledVersion> for DisabledVersionJson<'a> {
    fn from(d: &'a DisabledVersion) -> Self {
        let DisabledVersion { keyring, version, disabled_at, destroy_after, due } = d;
        DisabledVersionJson {
            keyring,
            version: *version,
            disabled_at: time(*disabled_at),
            destroy_after: time(*destroy_after),
            due: *due,
        }
    }
}

impl<'a> From<&'a KeyringStatus> for KeyringStatusJson<'a> {
    fn from(k: &'a KeyringStatus) -> Self {
        let KeyringStatus {
            keyring,
            current_version,
            current_age_secs,
            next_due,
            overdue_ratio,
            versions,
            active_encryptions,
            policy,
            last_job,
            census,
            erased_at,
            disabled,
            warnings,
        } = k;
        KeyringStatusJson {
            keyring,
            current_version: *current_version,
            current_age_secs: *current_age_secs,
            next_due: time(*next_due),
            overdue_ratio: *overdue_ratio,
            versions,
            active_encryptions: *active_encryptions,
            policy: PolicyJson::from(policy),
            last_job: last_job.as_ref().map(JobSummaryJson::from),
            census,
            erased_at: time(*erased_at),
            disabled: disabled.iter().map(DisabledVersionJson::from).collect(),
            warnings: warnings.iter().map(WarningJson::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct JobSummaryJson<'a> {
    id: &'a str,
    phase: JobPhase,
    from: Option<u32>,
    to: Option<u32>,
    started_at: Time,
    finished_at: Option<Time>,
    processed: u64,
    rewritten: u64,
    failed: u64,
}

impl<'a> From<&'a JobSummary> for JobSummaryJson<'a> {
    fn from(j: &'a JobSummary) -> Self {
        let JobSummary { id, phase, from, to, started_at, finished_at, processed, rewritten, failed } = j;
        JobSummaryJson {
            id,
            phase: *phase,
            from: *from,
            to: *to,
            started_at: Time(*started_at),
            finished_at: time(*finished_at),
            processed: *processed,
            rewritten: *rewritten,
            failed: *failed,
        }
    }
}

/// A status warning; the same tags and fields as the core's, times as RFC 3339.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WarningJson<'a> {
    Approaching { due_at: Time },
    Overdue { ratio: f64 },
    GraceExpired { version: u32, values: Option<u64> },
    FailuresPending { job_id: &'a str, failed: u64 },
    NoActiveKey,
    UsageNearLimit { encryptions: u64, limit: u64 },
    SchedulerPaused,
    NoSourceCovers,
    StalledJob { job_id: &'a str, lease_expired_at: Option<Time> },
    CompromisedNotRetired { version: u32 },
}

impl<'a> From<&'a Warning> for WarningJson<'a> {
    fn from(w: &'a Warning) -> Self {
        match w {
            Warning::Approaching { due_at } => WarningJson::Approaching { due_at: Time(*due_at) },
            Warning::Overdue { ratio } => WarningJson::Overdue { ratio: *ratio },
            Warning::GraceExpired { version, values } => {
                WarningJson::GraceExpired { version: *version, values: *values }
            }
            Warning::FailuresPending { job_id, failed } => WarningJson::FailuresPending { job_id, failed: *failed },
            Warning::NoActiveKey => WarningJson::NoActiveKey,
            Warning::UsageNearLimit { encryptions, limit } => {
                WarningJson::UsageNearLimit { encryptions: *encryptions, limit: *limit }
            }
            Warning::SchedulerPaused => WarningJson::SchedulerPaused,
            Warning::NoSourceCovers => WarningJson::NoSourceCovers,
            Warning::StalledJob { job_id, lease_expired_at } => {
                WarningJson::StalledJob { job_id, lease_expired_at: time(*lease_expired_at) }
            }
            Warning::CompromisedNotRetired { version } => WarningJson::CompromisedNotRetired { version: *version },
        }
    }
}

/// What one scheduler tick did.
#[derive(Debug, Serialize)]
pub(crate) struct TickJson<'a> {
    at: Time,
    paused: bool,
    due: &'a [keywheel_core::Due],
    rotations: Vec<RotationJson<'a>>,
    skipped: &'a [KeyringId],
    failed: &'a [(KeyringId, String)],
    retired: &'a [(KeyringId, KeyVersion)],
    destroyed: &'a [(KeyringId, KeyVersion)],
}

impl<'a> From<&'a TickReport> for TickJson<'a> {
    fn from(t: &'a TickReport) -> Self {
        let TickReport { at, paused, due, rotations, skipped, failed, retired, destroyed } = t;
        TickJson {
            at: Time(*at),
            paused: *paused,
            due,
            rotations: rotations.iter().map(RotationJson::from).collect(),
            skipped,
            failed,
            retired,
            destroyed,
        }
    }
}

/// An audit trail entry as stored, but its time as RFC 3339 (the chain's
/// hashes and MACs cover the stored form, which `audit verify` checks).
#[derive(Debug, Serialize)]
pub(crate) struct AuditEntryJson<'a> {
    seq: u64,
    prev_hash: &'a str,
    hash: &'a str,
    key_id: &'a str,
    mac: &'a str,
    event: AuditEventJson<'a>,
}

#[derive(Debug, Serialize)]
struct AuditEventJson<'a> {
    at: Time,
    actor: &'a str,
    keyring: &'a Option<KeyringId>,
    kind: serde_json::Value,
    reason: &'a Option<String>,
    correlation_id: &'a str,
    outcome: keywheel_core::Outcome,
}

impl<'a> From<&'a AuditEntry> for AuditEntryJson<'a> {
    fn from(e: &'a AuditEntry) -> Self {
        let AuditEntry { seq, prev_hash, hash, key_id, mac, event } = e;
        let AuditEvent { at, actor, keyring, kind, reason, correlation_id, outcome } = event;
        AuditEntryJson {
            seq: *seq,
            prev_hash,
            hash,
            key_id,
            mac,
            event: AuditEventJson {
                at: Time(*at),
                actor,
                keyring,
                kind: audit_kind_json(kind),
                reason,
                correlation_id,
                outcome: *outcome,
            },
        }
    }
}

/// An audit event's kind as JSON, its times as RFC 3339 (`destroy_after`)
/// instead of the stored epoch milliseconds. The stored form, which the
/// chain's hashes and MACs cover, is unchanged.
pub(crate) fn audit_kind_json(kind: &keywheel_core::AuditKind) -> serde_json::Value {
    /// The fields of audit kinds that hold a `Timestamp`.
    const TIME_FIELDS: [&str; 1] = ["destroy_after"];
    let mut value = serde_json::to_value(kind).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for name in TIME_FIELDS {
            if let Some(ms) = fields.get(name).and_then(serde_json::Value::as_i64) {
                let rfc3339 = Timestamp::from_millis(ms).to_string();
                fields.insert(name.to_owned(), serde_json::Value::String(rfc3339));
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_durations_secs() {
        let t = serde_json::to_value(Time(Timestamp::from_millis(1_795_000_000_123))).expect("json");
        assert_eq!(t, "2026-11-18T11:06:40.123Z");
        let mut policy = Policy::for_purpose(&keywheel_core::Purpose::Token);
        policy.maintenance_window =
            Some(MaintenanceWindow { start: Duration::from_secs(7200), duration: Duration::from_secs(3600) });
        let p = serde_json::to_value(PolicyJson::from(&policy)).expect("json");
        assert_eq!(p["interval_secs"], 90 * 86_400);
        assert_eq!(p["grace_period_secs"], 30 * 86_400);
        assert_eq!(p["maintenance_window"]["start_secs"], 7200);
        assert!(p.get("interval").is_none());
        let disabled = keywheel_core::AuditKind::KeyDisabled {
            version: keywheel_core::KeyVersion::new(3).expect("version"),
            forced: false,
            destroy_after: Timestamp::from_millis(1_795_000_000_123),
        };
        assert_eq!(audit_kind_json(&disabled)["destroy_after"], "2026-11-18T11:06:40.123Z");
    }
}
