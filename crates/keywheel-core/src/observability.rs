//! The names of keywheel's metrics, and the helpers behind its tracing spans,
//! events and metrics. Everything here goes through the `tracing` and
//! `metrics` facades: nothing is written anywhere until the application
//! installs a subscriber or a recorder. The reference (every span, event,
//! metric, unit and label, and what is never recorded) is the
//! [manual](crate::manual#15-observability-tracing-and-metrics).
//!
//! Only identifiers, version numbers, states, counts, durations and error
//! *kinds* ([`Error::kind`]) are ever recorded: never key bytes, plaintext,
//! ciphertext, context values (row ids) or error messages.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use metrics::{Counter, Unit};
use tracing::Instrument;
use tracing::field::Empty;

use crate::{Census, Error, JobKind, JobPhase, KeyVersion, KeyringId, Result, RotationJob};

/// Counter: values encrypted, per `keyring` and `version` (re-encryptions by
/// the rotation engine included).
pub const ENCRYPTIONS_TOTAL: &str = "keywheel_encryptions_total";
/// Counter: values decrypted, per `keyring` and `version` (the rotation
/// engine's decryptions included).
pub const DECRYPTIONS_TOTAL: &str = "keywheel_decryptions_total";
/// Counter: failed decryptions ([`Keyring::decrypt`](crate::Keyring::decrypt)
/// and [`reencrypt`](crate::Keyring::reencrypt)), per `keyring` and `reason`
/// (an [`Error::kind`], e.g. `decrypt` for a failed authentication).
pub const DECRYPT_FAILURES_TOTAL: &str = "keywheel_decrypt_failures_total";
/// Counter: values a rotation job rewrote, per `keyring` and `source`.
pub const ROTATION_VALUES_REWRITTEN_TOTAL: &str = "keywheel_rotation_values_rewritten_total";
/// Counter: values a rotation job left alone because the application wrote
/// them meanwhile (its compare-and-set lost), per `keyring` and `source`.
pub const ROTATION_VALUES_SKIPPED_TOTAL: &str = "keywheel_rotation_values_skipped_total";
/// Counter: values a rotation job could not move (listed in the job's
/// failures), per `keyring` and `source`.
pub const ROTATION_VALUES_FAILED_TOTAL: &str = "keywheel_rotation_values_failed_total";
/// Histogram, seconds: one observation per rotation batch (scan, re-encryption
/// and write), per `keyring` and `source`.
pub const ROTATION_BATCH_DURATION_SECONDS: &str = "keywheel_rotation_batch_duration_seconds";
/// Counter: runs of rotation jobs that ended, per `keyring`, `kind`
/// (`rotation`, `emergency`, `rollback_reencrypt`) and `outcome`
/// (`completed`, `completed_with_failures`, `cancelled`, `failed`).
pub const ROTATION_JOBS_TOTAL: &str = "keywheel_rotation_jobs_total";
/// Gauge: values per `keyring` and `version` in the last census this process
/// took (a rotation's, the scheduler's, or one asked for).
pub const CENSUS_VALUES: &str = "keywheel_census_values";
/// Gauge: the Active version of each `keyring` in the last snapshot this
/// process loaded (0 when it has none).
pub const ACTIVE_VERSION: &str = "keywheel_active_version";
/// Counter: lifecycle operations, per `keyring` (empty for operations over
/// every keyring), `operation` and `outcome` (`ok`, `refused`, `failed`).
pub const LIFECYCLE_OPERATIONS_TOTAL: &str = "keywheel_lifecycle_operations_total";
/// Counter: scheduler decisions, per `keyring`, `reason` and `decision`.
pub const SCHEDULER_DECISIONS_TOTAL: &str = "keywheel_scheduler_decisions_total";
/// Counter: scheduler ticks, per `outcome` (`ok`, `failed`).
pub const SCHEDULER_TICKS_TOTAL: &str = "keywheel_scheduler_ticks_total";
/// Counter: keyring snapshot loads from the store, per `keyring`, `reason`
/// (`first_load`, `refresh_interval`, `invalidated`, `announced`,
/// `unknown_version`, `explicit`) and `outcome` (`ok`, `failed`).
pub const KEYRING_RELOADS_TOTAL: &str = "keywheel_keyring_reloads_total";
/// Counter: accesses served by a snapshot whose reload had just failed with a
/// retryable error (a KMS or HSM outage), per `keyring`.
pub const KEYRING_OUTAGE_SERVES_TOTAL: &str = "keywheel_keyring_outage_serves_total";

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter.
    Counter,
    /// A gauge (set to the latest value).
    Gauge,
    /// A histogram (one observation per event).
    Histogram,
}

/// One metric keywheel records: name, kind, unit, label keys and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    /// The metric's name (Prometheus conventions: `_total` counters, base units).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its unit, if it has one.
    pub unit: Option<Unit>,
    /// Its label keys.
    pub labels: &'static [&'static str],
    /// One line of help text.
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: MetricKind,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricSpec {
    MetricSpec { name, kind, unit, labels, help }
}

/// Every metric keywheel records. The names, kinds, units and label keys are
/// stable: a change is a breaking change of the crate.
pub const METRICS: &[MetricSpec] = &[
    spec(
        ENCRYPTIONS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "version"],
        "Values encrypted, re-encryptions included.",
    ),
    spec(
        DECRYPTIONS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "version"],
        "Values decrypted, the rotation engine's included.",
    ),
    spec(
        DECRYPT_FAILURES_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "reason"],
        "Failed decryptions, by error kind.",
    ),
    spec(
        ROTATION_VALUES_REWRITTEN_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "source"],
        "Values rewritten by rotation jobs.",
    ),
    spec(
        ROTATION_VALUES_SKIPPED_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "source"],
        "Values rotation jobs left to a concurrent application write.",
    ),
    spec(
        ROTATION_VALUES_FAILED_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "source"],
        "Values rotation jobs could not move.",
    ),
    spec(
        ROTATION_BATCH_DURATION_SECONDS,
        MetricKind::Histogram,
        Some(Unit::Seconds),
        &["keyring", "source"],
        "Duration of one rotation batch: scan, re-encryption and write.",
    ),
    spec(
        ROTATION_JOBS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "kind", "outcome"],
        "Runs of rotation jobs that ended.",
    ),
    spec(
        CENSUS_VALUES,
        MetricKind::Gauge,
        Some(Unit::Count),
        &["keyring", "version"],
        "Values per key version in the last census.",
    ),
    spec(ACTIVE_VERSION, MetricKind::Gauge, None, &["keyring"], "Active key version of the last loaded snapshot."),
    spec(
        LIFECYCLE_OPERATIONS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "operation", "outcome"],
        "Lifecycle operations by outcome.",
    ),
    spec(
        SCHEDULER_DECISIONS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "reason", "decision"],
        "Scheduler decisions about due rotations, retirements and destructions.",
    ),
    spec(SCHEDULER_TICKS_TOTAL, MetricKind::Counter, Some(Unit::Count), &["outcome"], "Scheduler ticks."),
    spec(
        KEYRING_RELOADS_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring", "reason", "outcome"],
        "Keyring snapshot loads from the store.",
    ),
    spec(
        KEYRING_OUTAGE_SERVES_TOTAL,
        MetricKind::Counter,
        Some(Unit::Count),
        &["keyring"],
        "Accesses served by a snapshot whose reload failed with a retryable error.",
    ),
];

/// Describe every metric of [`METRICS`] (unit and help text) to the installed
/// recorder, so that an exporter can publish them (Prometheus `# HELP` and
/// `# TYPE` lines). Call it once, after installing the recorder.
pub fn describe_metrics() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(unit)) => metrics::describe_histogram!(m.name, unit, m.help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The `version` label of a key version: its number.
fn version_label(version: KeyVersion) -> String {
    version.get().to_string()
}

/// The counters of one key version in a snapshot, registered when the
/// snapshot is built: the hot path increments a stored handle (one atomic
/// add with a recorder installed, a branch without one).
#[derive(Debug)]
pub(crate) struct VersionMeter {
    pub(crate) encryptions: Counter,
    pub(crate) decryptions: Counter,
}

impl VersionMeter {
    /// Counters that count nothing: versions that neither encrypt nor
    /// decrypt (Disabled, Retired) and snapshots that are not metered.
    pub(crate) const fn noop() -> Self {
        VersionMeter { encryptions: Counter::noop(), decryptions: Counter::noop() }
    }

    pub(crate) fn new(keyring: &str, version: KeyVersion) -> Self {
        let labels = [("keyring", keyring.to_owned()), ("version", version_label(version))];
        VersionMeter {
            encryptions: metrics::counter!(ENCRYPTIONS_TOTAL, &labels),
            decryptions: metrics::counter!(DECRYPTIONS_TOTAL, &labels),
        }
    }
}

/// The error kinds a decryption can fail with, each with its own counter.
const DECRYPT_FAILURE_REASONS: [&str; 8] = [
    "decrypt",
    "format",
    "unknown_key_version",
    "key_disabled",
    "key_retired",
    "algorithm_mismatch",
    "wrong_value_kind",
    "invalid_context",
];

/// The decryption-failure counters of a snapshot, one per reason (plus
/// `other`), registered when it is built.
#[derive(Debug, Default)]
pub(crate) struct KeyringMeter {
    /// Empty for a snapshot that is not metered.
    failures: Vec<(&'static str, Counter)>,
}

impl KeyringMeter {
    pub(crate) fn new(keyring: &str) -> Self {
        let failures = DECRYPT_FAILURE_REASONS
            .iter()
            .chain(&["other"])
            .map(|&reason| {
                let labels = [("keyring", keyring.to_owned()), ("reason", reason.to_owned())];
                (reason, metrics::counter!(DECRYPT_FAILURES_TOTAL, &labels))
            })
            .collect();
        KeyringMeter { failures }
    }

    /// Count a failed decryption; returns the error.
    pub(crate) fn failed(&self, error: Error) -> Error {
        let kind = error.kind();
        if let Some((_, counter)) = self.failures.iter().find(|(reason, _)| *reason == kind).or(self.failures.last()) {
            counter.increment(1);
        }
        error
    }
}

/// The outcome label of a result: `ok`, `refused` (a lifecycle rule said no,
/// [`Error::is_refusal`]) or `failed`.
fn outcome_of<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) if e.is_refusal() => "refused",
        Err(_) => "failed",
    }
}

/// Run a lifecycle operation in a `keywheel.lifecycle` span (fields
/// `operation`, `keyring`, `version`, then `outcome` and `error_kind`),
/// count it in [`LIFECYCLE_OPERATIONS_TOTAL`] and report refusals (INFO)
/// and failures (WARN) as events.
pub(crate) async fn lifecycle<T>(
    operation: &'static str,
    keyring: Option<&KeyringId>,
    version: Option<KeyVersion>,
    operation_future: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::info_span!(
        "keywheel.lifecycle",
        operation,
        keyring = Empty,
        version = Empty,
        outcome = Empty,
        error_kind = Empty,
    );
    if let Some(id) = keyring {
        span.record("keyring", tracing::field::display(id));
    }
    if let Some(v) = version {
        span.record("version", v.get());
    }
    let result = operation_future.instrument(span.clone()).await;
    let outcome = outcome_of(&result);
    span.record("outcome", outcome);
    let _entered = span.enter();
    match &result {
        Ok(_) => tracing::debug!(operation, "lifecycle operation done"),
        Err(e) => {
            span.record("error_kind", e.kind());
            if e.is_refusal() {
                tracing::info!(operation, error_kind = e.kind(), "lifecycle operation refused");
            } else {
                tracing::warn!(operation, error_kind = e.kind(), "lifecycle operation failed");
            }
        }
    }
    let keyring = keyring.map(KeyringId::canonical).unwrap_or_default();
    metrics::counter!(LIFECYCLE_OPERATIONS_TOTAL, "keyring" => keyring, "operation" => operation, "outcome" => outcome)
        .increment(1);
    result
}

/// The `kind` label of a job.
fn job_kind(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Rotation => "rotation",
        JobKind::Emergency { .. } => "emergency",
        JobKind::RollbackReencrypt => "rollback_reencrypt",
    }
}

/// The span of one run of a rotation job: `keywheel.rotation.job` with its
/// keyring, id, kind, source and target versions and whether it resumes; the
/// phase, counts and outcome are recorded when it ends ([`job_finished`]).
pub(crate) fn job_span(job: &RotationJob, resumed: bool) -> tracing::Span {
    let span = tracing::info_span!(
        "keywheel.rotation.job",
        keyring = %job.keyring,
        job_id = %job.id,
        kind = job_kind(&job.kind),
        from = Empty,
        to = Empty,
        resumed,
        phase = Empty,
        processed = Empty,
        rewritten = Empty,
        skipped = Empty,
        failed = Empty,
        outcome = Empty,
        error_kind = Empty,
    );
    if let Some(from) = job.from {
        span.record("from", from.get());
    }
    if let Some(to) = job.to {
        span.record("to", to.get());
    }
    span
}

/// A run of a job ended: record its phase, counts and outcome on its span,
/// report it as an event (WARN for a failure) and count it in
/// [`ROTATION_JOBS_TOTAL`].
pub(crate) fn job_finished(span: &tracing::Span, job: &RotationJob, result: &Result<()>) {
    let outcome = match (result, job.phase) {
        (Err(_), _) => "failed",
        (Ok(()), JobPhase::Completed) => "completed",
        (Ok(()), JobPhase::CompletedWithFailures) => "completed_with_failures",
        (Ok(()), _) => "cancelled",
    };
    let c = job.counts;
    span.record("phase", tracing::field::debug(job.phase));
    span.record("processed", c.processed);
    span.record("rewritten", c.rewritten);
    span.record("skipped", c.skipped);
    span.record("failed", c.failed);
    span.record("outcome", outcome);
    let _entered = span.enter();
    match result {
        Ok(()) => tracing::info!(outcome, processed = c.processed, failed = c.failed, "rotation job run ended"),
        Err(e) => {
            span.record("error_kind", e.kind());
            tracing::warn!(error_kind = e.kind(), "rotation job failed (resumable)");
        }
    }
    metrics::counter!(
        ROTATION_JOBS_TOTAL,
        "keyring" => job.keyring.canonical(),
        "kind" => job_kind(&job.kind),
        "outcome" => outcome
    )
    .increment(1);
}

/// The counts of one written batch, as the engine reports them.
pub(crate) struct BatchCounts {
    pub(crate) processed: u64,
    pub(crate) rewritten: u64,
    pub(crate) skipped: u64,
    pub(crate) failed: u64,
}

/// Run one rotation batch (`task`: its re-encryption and write) in a
/// `keywheel.rotation.batch` span (keyring, source, target version, job id
/// and rows scanned; then the counts and its duration in milliseconds), and
/// record its metrics: values rewritten, skipped and failed, and its
/// duration from `started` (before its scan) in
/// [`ROTATION_BATCH_DURATION_SECONDS`]. No event per value. The span is
/// created here, as a child of the caller's (the job's), even though the
/// returned future runs on a task of its own.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotation_batch<T>(
    keyring: &KeyringId,
    source: &str,
    to: KeyVersion,
    job_id: &str,
    rows: usize,
    started: Instant,
    counts_of: impl FnOnce(&T) -> BatchCounts + Send + 'static,
    task: impl Future<Output = Result<T>> + Send + 'static,
) -> impl Future<Output = Result<T>> + Send + 'static {
    let span = tracing::info_span!(
        "keywheel.rotation.batch",
        keyring = %keyring,
        source,
        to = to.get(),
        job_id,
        rows,
        processed = Empty,
        rewritten = Empty,
        skipped = Empty,
        failed = Empty,
        duration_ms = Empty,
        error_kind = Empty,
    );
    let labels = [("keyring", keyring.canonical()), ("source", source.to_owned())];
    async move {
        let result = task.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        span.record("duration_ms", u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        match &result {
            Ok(done) => {
                let c = counts_of(done);
                span.record("processed", c.processed);
                span.record("rewritten", c.rewritten);
                span.record("skipped", c.skipped);
                span.record("failed", c.failed);
                metrics::counter!(ROTATION_VALUES_REWRITTEN_TOTAL, &labels).increment(c.rewritten);
                metrics::counter!(ROTATION_VALUES_SKIPPED_TOTAL, &labels).increment(c.skipped);
                metrics::counter!(ROTATION_VALUES_FAILED_TOTAL, &labels).increment(c.failed);
                metrics::histogram!(ROTATION_BATCH_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
            }
            Err(e) => {
                span.record("error_kind", e.kind());
                let _entered = span.enter();
                tracing::warn!(error_kind = e.kind(), "rotation batch failed");
            }
        }
        result
    }
}

/// The versions per keyring whose census gauge this process has set, so a
/// version that no value uses any more is set back to zero.
static CENSUS_REPORTED: Mutex<BTreeMap<KeyringId, BTreeSet<KeyVersion>>> = Mutex::new(BTreeMap::new());

/// Publish a census in [`CENSUS_VALUES`]: of `keyring` alone, or of every
/// keyring when `None`. Versions (and keyrings) reported before and missing
/// now are set to zero.
pub(crate) fn census_taken(census: &Census, keyring: Option<&KeyringId>) {
    let mut reported = CENSUS_REPORTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let in_scope: Vec<KeyringId> = reported.keys().filter(|id| keyring.is_none_or(|k| k == *id)).cloned().collect();
    for id in in_scope {
        let now = census.counts.get(&id);
        if let Some(versions) = reported.get_mut(&id) {
            versions.retain(|v| {
                let gone = now.is_none_or(|m| !m.contains_key(v));
                if gone {
                    census_gauge(&id, *v).set(0.0);
                }
                !gone
            });
        }
    }
    for (id, versions) in census.counts.iter().filter(|(id, _)| keyring.is_none_or(|k| k == *id)) {
        let entry = reported.entry(id.clone()).or_default();
        for (&version, &n) in versions {
            census_gauge(id, version).set(n as f64);
            entry.insert(version);
        }
    }
    tracing::debug!(
        keyring = keyring.map(tracing::field::display),
        keyrings = census.counts.len(),
        unparseable = census.unparseable,
        "census taken"
    );
}

fn census_gauge(keyring: &KeyringId, version: KeyVersion) -> metrics::Gauge {
    metrics::gauge!(CENSUS_VALUES, "keyring" => keyring.canonical(), "version" => version_label(version))
}

/// A keyring snapshot was loaded from the store (or its load failed), for
/// `reason`: an event (DEBUG when loaded, WARN when not) and
/// [`KEYRING_RELOADS_TOTAL`]; a loaded snapshot also sets [`ACTIVE_VERSION`].
pub(crate) fn keyring_loaded(id: &KeyringId, reason: &'static str, result: Result<&crate::Keyring, &Error>) {
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    match result {
        Ok(ring) => {
            let active = ring.active_version().map_or(0, KeyVersion::get);
            tracing::debug!(
                keyring = %id,
                reason,
                generation = ring.generation(),
                versions = ring.versions().count(),
                active,
                "keyring snapshot loaded"
            );
            metrics::gauge!(ACTIVE_VERSION, "keyring" => id.canonical()).set(f64::from(active));
        }
        Err(e) => {
            tracing::warn!(keyring = %id, reason, error_kind = e.kind(), retryable = e.is_retryable(), "keyring reload failed");
        }
    }
    metrics::counter!(KEYRING_RELOADS_TOTAL, "keyring" => id.canonical(), "reason" => reason, "outcome" => outcome)
        .increment(1);
}

/// An access was served by a snapshot whose reload just failed with a
/// retryable error.
pub(crate) fn outage_serve(id: &KeyringId, failed_reloads: u32) {
    tracing::warn!(keyring = %id, failed_reloads, "serving the cached snapshot during a KEK or store outage");
    metrics::counter!(KEYRING_OUTAGE_SERVES_TOTAL, "keyring" => id.canonical()).increment(1);
}

/// Count a scheduler decision about `keyring`.
pub(crate) fn scheduler_decision(keyring: &KeyringId, reason: &'static str, decision: &'static str) {
    tracing::debug!(keyring = %keyring, reason, decision, "scheduler decision");
    metrics::counter!(
        SCHEDULER_DECISIONS_TOTAL,
        "keyring" => keyring.canonical(),
        "reason" => reason,
        "decision" => decision
    )
    .increment(1);
}

/// The span of one scheduler tick; [`tick_finished`] records what it did.
pub(crate) fn tick_span() -> tracing::Span {
    tracing::info_span!(
        "keywheel.scheduler.tick",
        paused = Empty,
        due = Empty,
        rotations = Empty,
        skipped = Empty,
        failed = Empty,
        retired = Empty,
        destroyed = Empty,
        outcome = Empty,
        error_kind = Empty,
    )
}

/// A tick ended: its counts on its span, a WARN event if it failed, and
/// [`SCHEDULER_TICKS_TOTAL`].
pub(crate) fn tick_finished(span: &tracing::Span, result: &Result<crate::TickReport>) {
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    span.record("outcome", outcome);
    match result {
        Ok(r) => {
            span.record("paused", r.paused);
            span.record("due", r.due.len());
            span.record("rotations", r.rotations.len());
            span.record("skipped", r.skipped.len());
            span.record("failed", r.failed.len());
            span.record("retired", r.retired.len());
            span.record("destroyed", r.destroyed.len());
        }
        Err(e) => {
            span.record("error_kind", e.kind());
            let _entered = span.enter();
            tracing::warn!(error_kind = e.kind(), "scheduler tick failed");
        }
    }
    metrics::counter!(SCHEDULER_TICKS_TOTAL, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_the_manual_and_named_by_convention() {
        let manual = include_str!("manual.rs");
        let mut names = BTreeSet::new();
        for m in METRICS {
            assert!(names.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("keywheel_"), "{}", m.name);
            assert!(manual.contains(&format!("`{}`", m.name)), "{} is not in the manual", m.name);
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if m.unit == Some(Unit::Seconds) {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            for label in m.labels {
                assert!(manual.contains(&format!("`{label}`")), "label {label} of {} is not in the manual", m.name);
            }
        }
    }

    #[test]
    fn every_error_kind_is_distinct_snake_case() {
        let samples = [
            Error::Decrypt,
            Error::Rng,
            Error::from(crate::FormatError::BadMagic),
            Error::InvalidContext("x"),
            Error::ReasonRequired("x"),
        ];
        let kinds: BTreeSet<&str> = samples.iter().map(Error::kind).collect();
        assert_eq!(kinds.len(), samples.len());
        for k in kinds.iter().chain(&DECRYPT_FAILURE_REASONS) {
            assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{k}");
        }
        assert!(Error::ReasonRequired("x").is_refusal() && !Error::Rng.is_refusal());
    }
}
