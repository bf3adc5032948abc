//! Rotation jobs: the persisted, resumable state of a rotation (the [runbook](crate::manual#12-operator-runbook)).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Cursor, KeyVersion, KeyringId, Timestamp, ValueLocation};

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// A regular rotation: new version, activation delay, re-encryption.
    Rotation,
    /// An emergency rotation away from a compromised version: no delay; the
    /// compromised version is retired as soon as no value uses it.
    Emergency {
        /// The compromised version.
        compromised: KeyVersion,
        /// Why (audited).
        reason: String,
    },
    /// Re-encryption back to the version a rollback re-activated.
    RollbackReencrypt,
}

/// Where a job is. Every phase is resumable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Storing the new version as Pending.
    Prepare,
    /// Waiting for the activation delay to pass (until the given time).
    WaitActivation {
        /// When activation may happen.
        until: Timestamp,
    },
    /// Activating the new version (old one Deprecated), atomically.
    Activate,
    /// Re-encrypting the sources in batches.
    Reencrypt,
    /// Checking with a census that no value is left on old versions.
    Verify,
    /// Done, every value on the target version.
    Completed,
    /// Done, but some values could not be decrypted (see `failures`).
    CompletedWithFailures,
    /// Stopped by cancellation; resume continues from the checkpoint.
    Cancelled,
}

impl JobPhase {
    /// Whether the job has finished (completed, with or without failures).
    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Completed | JobPhase::CompletedWithFailures)
    }
}

/// Per-source checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// The source's name.
    pub source: String,
    /// Last cursor fully processed (`None`: not started).
    pub cursor: Option<Cursor>,
    /// Whether the scan reached the end.
    pub done: bool,
}

/// Counts of a job (or a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Values examined that needed re-encryption.
    pub processed: u64,
    /// Values rewritten under the target version.
    pub rewritten: u64,
    /// Values skipped because the application changed them concurrently (its write wins).
    pub skipped: u64,
    /// Values that could not be decrypted.
    pub failed: u64,
}

/// A value that could not be re-encrypted. Nothing was written for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The source.
    pub source: String,
    /// Where the value is.
    pub cursor: Cursor,
    /// The version its header names, if it parses.
    pub version: Option<KeyVersion>,
    /// Why (an error message; never key bytes, never plaintext).
    pub reason: String,
    /// Where the value is by table, column name and primary key, as the
    /// source located it ([`RecordSource::locate`](crate::RecordSource::locate));
    /// `None` in jobs recorded before locations were kept, or from a source
    /// that cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<ValueLocation>,
}

/// A persisted rotation job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationJob {
    /// Unique id (also the audit correlation id).
    pub id: String,
    /// The keyring.
    pub keyring: KeyringId,
    /// What kind of job.
    pub kind: JobKind,
    /// Where it is.
    pub phase: JobPhase,
    /// The Active version when the job started.
    pub from: Option<KeyVersion>,
    /// The version values are moved to (known once prepared).
    pub to: Option<KeyVersion>,
    /// Per-source checkpoints.
    pub sources: Vec<SourceCheckpoint>,
    /// Counts so far.
    pub counts: JobCounts,
    /// Values that failed (bounded; see `failures_truncated`).
    pub failures: Vec<JobFailure>,
    /// Failures beyond the stored list.
    pub failures_truncated: u64,
    /// Estimated values to process, from the census at start.
    pub total_estimate: Option<u64>,
    /// Values left on old versions at verification (failures excepted).
    pub remaining_after_verify: Option<u64>,
    /// Start time.
    pub started_at: Timestamp,
    /// Last checkpoint time.
    pub updated_at: Timestamp,
    /// Finish time.
    pub finished_at: Option<Timestamp>,
    /// Time spent working, across resumes, in milliseconds.
    pub active_ms: u64,
    /// The job is finished but its completion event may not be recorded yet
    /// (set just before recording it): a resume after a crash there looks the
    /// event up in the audit trail and records it only if it is missing.
    #[serde(default)]
    pub completion_pending: bool,
    /// Legacy values migrated so far (rewritten as keywheel values), per
    /// legacy format name (`"fernet"`, `"plaintext"`…; the
    /// [migration of legacy data](crate::manual#14-migrating-legacy-data)).
    /// Included in [`JobCounts::rewritten`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub legacy: BTreeMap<String, u64>,
}

impl RotationJob {
    /// A job in phase [`JobPhase::Prepare`] with no progress yet.
    pub fn new(
        id: String,
        keyring: KeyringId,
        kind: JobKind,
        from: Option<KeyVersion>,
        to: Option<KeyVersion>,
        sources: Vec<SourceCheckpoint>,
        now: Timestamp,
    ) -> Self {
        RotationJob {
            id,
            keyring,
            kind,
            phase: JobPhase::Prepare,
            from,
            to,
            sources,
            counts: JobCounts::default(),
            failures: Vec::new(),
            failures_truncated: 0,
            total_estimate: None,
            remaining_after_verify: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
            active_ms: 0,
            completion_pending: false,
            legacy: BTreeMap::new(),
        }
    }
}

/// At most this many failures are kept in a job; the rest are counted.
pub const MAX_STORED_FAILURES: usize = 10_000;

/// The outcome of a rotation, dry run or resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// The job id (`None` for a dry run).
    pub job_id: Option<String>,
    /// The keyring.
    pub keyring: KeyringId,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Version rotated from.
    pub from: Option<KeyVersion>,
    /// Version rotated to (for a dry run: the version it would create).
    pub to: Option<KeyVersion>,
    /// Final phase.
    pub phase: JobPhase,
    /// Counts.
    pub counts: JobCounts,
    /// Values that could not be decrypted.
    pub failures: Vec<JobFailure>,
    /// Values left on old versions at verification, failures excepted.
    pub remaining: u64,
    /// Legacy values migrated (for a dry run: that would be), per legacy
    /// format name; included in the counts.
    pub legacy: BTreeMap<String, u64>,
    /// Wall time spent working.
    #[serde(with = "crate::policy::duration_secs_f64")]
    pub duration: Duration,
}
