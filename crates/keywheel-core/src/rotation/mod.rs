//! The rotation engine: resumable rotation jobs, dry run, census, verify,
//! guarded retirement, rollback, emergency rotation and KEK rotation, generic
//! over the three traits. One file per operation family:
//!
//! * [`run`]: rotate, emergency, resume and the job state machine;
//! * [`reencrypt`]: the batched scan → re-encrypt → compare-and-set pipeline;
//! * [`inspect`]: census, verify, dry run;
//! * [`retire`]: guarded retirement;
//! * [`rollback`]: undo of the latest rotation;
//! * [`kek`]: KEK rotation (the [`KekRing`](crate::KekRing) that reads a store during it lives with the KEKs).

mod inspect;
mod kek;
mod reencrypt;
use reencrypt::{LegacyPlan, reencrypt_values};
mod retire;
pub use retire::RetireOptions;
mod rollback;
mod run;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use tracing::Instrument;

use crate::{
    AfterRotation, AuditKind, Census, Error, JobCounts, JobFailure, JobKind, JobPhase, KeyEncryptionKey, KeyMaterial,
    KeyState, KeyVersion, Keyring, KeyringChange, KeyringId, KeyringRecord, Keywheel, Lease, LegacyCensus,
    LegacyDecryptor, LegacyFormat, LegacyFormats, LegacyValue, MAX_STORED_FAILURES, Plaintext, Policy, RecordSource,
    ReplaceOutcome, Replacement, Result, RotationJob, RotationReport, ScanRequest, SourceCheckpoint, StoredValue,
    WrappedKey, correlation_id,
};

/// Cooperative cancellation: a running job stops after its current batch,
/// checkpointed; `resume` continues it. The scheduler loop also stops on it.
/// Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<(AtomicBool, tokio::sync::Notify)>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the job (or loop) to stop after its current step.
    pub fn cancel(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }
    /// Wait until cancellation is requested.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Progress of a running job, reported after every batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The job.
    pub job_id: String,
    /// The keyring.
    pub keyring: KeyringId,
    /// Values processed so far (across resumes).
    pub processed: u64,
    /// Estimated total (from the census at start), if known.
    pub total: Option<u64>,
    /// Values per second in this run.
    pub rate_per_sec: f64,
    /// Estimated time to completion.
    pub eta: Option<Duration>,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How a job runs.
#[derive(Clone)]
pub struct RotateOptions {
    /// Values per scan batch (default 1000).
    pub batch_size: usize,
    /// Throttle: at most this many values per second (default none).
    pub max_records_per_second: Option<u64>,
    /// Batches re-encrypted concurrently while the next is scanned (default 2);
    /// re-encryption runs on blocking threads so crypto overlaps I/O. At most
    /// this many batches are written concurrently too; a batch being written,
    /// or waiting for its checkpoint, does not hold up the re-encryption of
    /// the next ones, so up to half as many batches again (rounded down) are
    /// in memory at once.
    pub parallel_batches: usize,
    /// Cancellation.
    pub cancel: CancelToken,
    /// Called after every batch.
    pub progress: Option<ProgressFn>,
    /// Count values first for progress totals and ETA (default true; a full
    /// scan on sources without a fast census).
    pub estimate_total: bool,
    /// Lease time-to-live; renewed at every checkpoint (default 60 s).
    pub lease_ttl: Duration,
    /// Rotate only if this is still the Active version once the lease is held;
    /// otherwise [`Error::AlreadyRotated`]. Lets several schedulers decide on
    /// the same evidence without rotating twice.
    pub expected_active: Option<KeyVersion>,
    /// Emergency rotations: how long after the activation every instance is
    /// assumed to have dropped snapshots made before it, so nothing encrypts
    /// under the compromised version any more; the engine waits that long
    /// before its final sweep and census. Default (`None`):
    /// [`Keywheel::stale_snapshot_bound`] of this engine's facade (its refresh
    /// interval plus a margin for writes in flight); set it to cover the
    /// largest refresh interval of any instance.
    pub emergency_settle: Option<Duration>,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            batch_size: 1000,
            max_records_per_second: None,
            parallel_batches: 2,
            cancel: CancelToken::new(),
            progress: None,
            estimate_total: true,
            lease_ttl: Duration::from_secs(60),
            expected_active: None,
            emergency_settle: None,
        }
    }
}

impl fmt::Debug for RotateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateOptions")
            .field("batch_size", &self.batch_size)
            .field("max_records_per_second", &self.max_records_per_second)
            .field("parallel_batches", &self.parallel_batches)
            .field("estimate_total", &self.estimate_total)
            .field("lease_ttl", &self.lease_ttl)
            .field("emergency_settle", &self.emergency_settle)
            .finish_non_exhaustive()
    }
}

/// Result of [`Rotator::rollback`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    /// The version that was Active (now Deprecated).
    pub from: KeyVersion,
    /// The version that is Active again.
    pub to: KeyVersion,
    /// The re-encryption back to `to`, if requested.
    pub reencrypt: Option<RotationReport>,
}

/// Result of [`Rotator::verify`] (or of [`VerifyReport::new`] for a census
/// taken elsewhere). Values not on the Active version are split by what fixes
/// them: `on_older` (a rotation re-encrypts them), `on_unknown` (the keyring
/// has no such version: not written by this keyring), `on_disabled` (their
/// version is disabled: re-enable it inside its quarantine, then rotate) and
/// `on_retired` (their key is destroyed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The keyring.
    pub keyring: KeyringId,
    /// The Active version.
    pub active: Option<KeyVersion>,
    /// Values per version.
    pub census: BTreeMap<KeyVersion, u64>,
    /// Values on versions other than the Active one (the sum of the four below).
    pub not_on_active: u64,
    /// Values on other versions the keyring holds and has not retired
    /// (Deprecated, Pending): `keywheel rotate`/`resume` moves them.
    pub on_older: u64,
    /// Values on versions the keyring has never had (e.g. `v99` written by
    /// another system, or a store restored from an older backup): no key of
    /// this keyring decrypts them.
    pub on_unknown: u64,
    /// The versions behind `on_unknown`.
    pub unknown_versions: Vec<KeyVersion>,
    /// Values on Disabled versions (unreadable until the version is
    /// re-enabled with [`Keywheel::enable`](crate::Keywheel::enable), inside its quarantine).
    pub on_disabled: u64,
    /// The versions behind `on_disabled`.
    pub disabled_versions: Vec<KeyVersion>,
    /// Values on retired versions (unreadable: their key is destroyed).
    pub on_retired: u64,
    /// Values whose header does not parse (legacy values excepted, once
    /// [`with_legacy`](Self::with_legacy) counted them).
    pub unparseable: u64,
    /// Values in a legacy format declared for their column, per format name
    /// (see [`Rotator::legacy_census`]): a rotation migrates them.
    pub legacy: BTreeMap<String, u64>,
    /// Whether every value is on the Active version.
    pub ok: bool,
}

impl VerifyReport {
    /// The verdict on `record`'s values from a census of them (`per_version`:
    /// values per version of this keyring; `unparseable`: values whose header
    /// does not parse). A pure function: [`Rotator::verify`] uses it with a
    /// fresh census of its sources.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use keywheel_core::*;
    /// # fn main() -> Result<()> {
    /// let id = KeyringId::new("acme", Purpose::Token)?;
    /// // A keyring that never had a v99.
    /// let record = KeyringRecord::new(id, Algorithm::Aes256Gcm, Timestamp::EPOCH);
    /// let census = BTreeMap::from([(KeyVersion::new(99)?, 2)]);
    /// let report = VerifyReport::new(&record, census, 0);
    /// assert_eq!((report.on_older, report.on_unknown, report.ok), (0, 2, false));
    /// assert_eq!(report.unknown_versions, [KeyVersion::new(99)?]);
    /// # Ok(()) }
    /// ```
    pub fn new(record: &KeyringRecord, per_version: BTreeMap<KeyVersion, u64>, unparseable: u64) -> Self {
        let active = record.active_version();
        let (mut on_older, mut on_unknown, mut on_disabled, mut on_retired) = (0, 0, 0, 0);
        let (mut unknown_versions, mut disabled_versions) = (Vec::new(), Vec::new());
        for (v, n) in per_version.iter().filter(|(v, _)| Some(**v) != active) {
            match record.version(*v).map(|r| r.state) {
                None => {
                    on_unknown += n;
                    unknown_versions.push(*v);
                }
                Some(KeyState::Disabled) => {
                    on_disabled += n;
                    disabled_versions.push(*v);
                }
                Some(KeyState::Retired) => on_retired += n,
                Some(KeyState::Pending | KeyState::Active | KeyState::Deprecated) => on_older += n,
            }
        }
        let not_on_active = on_older + on_unknown + on_disabled + on_retired;
        VerifyReport {
            keyring: record.id.clone(),
            active,
            census: per_version,
            not_on_active,
            on_older,
            on_unknown,
            unknown_versions,
            on_disabled,
            disabled_versions,
            on_retired,
            unparseable,
            legacy: BTreeMap::new(),
            ok: not_on_active == 0 && unparseable == 0,
        }
    }

    /// This verdict with the values that are not keywheel split into legacy
    /// values per format (from a [`Rotator::legacy_census`] of the same
    /// values) and the rest (still [`unparseable`](Self::unparseable)).
    /// Legacy values keep the keyring from being verified.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use keywheel_core::*;
    /// # fn main() -> Result<()> {
    /// let record = KeyringRecord::new(KeyringId::new("acme", Purpose::Token)?, Algorithm::Aes256Gcm, Timestamp::EPOCH);
    /// let mut legacy = LegacyCensus::default();
    /// legacy.add("fernet", 3);
    /// let report = VerifyReport::new(&record, BTreeMap::new(), 4).with_legacy(&legacy);
    /// assert_eq!((report.unparseable, report.legacy.get("fernet"), report.ok), (1, Some(&3), false));
    /// # Ok(()) }
    /// ```
    pub fn with_legacy(mut self, census: &LegacyCensus) -> Self {
        self.unparseable = self.unparseable.saturating_sub(census.legacy_total());
        self.legacy = census.legacy.clone();
        self.ok = self.not_on_active == 0 && self.unparseable == 0 && census.legacy_total() == 0;
        self
    }
}

/// Result of [`Rotator::rotate_kek`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KekRotationReport {
    /// Ids of the KEKs keys were rewrapped from in this run.
    pub from: Vec<String>,
    /// New KEK id.
    pub to: String,
    /// Keyrings updated in this run.
    pub keyrings: u64,
    /// Versions rewrapped in this run.
    pub keys: u64,
    /// Versions already under the new KEK (from an earlier, interrupted run).
    pub already_rewrapped: u64,
}

/// The rotation engine for a [`Keywheel`] and its registered record sources.
///
/// Every job step is persisted through the [`KeyStore`](crate::KeyStore)
/// before it takes effect and is idempotent, so after a crash at any point
/// [`resume`](Self::resume) completes the job: no value is lost or written twice,
/// exactly one version stays Active.
#[derive(Clone)]
pub struct Rotator {
    kw: Keywheel,
    sources: Vec<Arc<dyn RecordSource>>,
    holder: String,
}

impl fmt::Debug for Rotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotator")
            .field("holder", &self.holder)
            .field("sources", &self.sources.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct BatchResult {
    last_cursor: crate::Cursor,
    counts: JobCounts,
    failures: Vec<JobFailure>,
    /// Legacy values rewritten, per format.
    legacy: BTreeMap<String, u64>,
}

impl Rotator {
    /// An engine over `kw` with no sources yet; its leases show the
    /// [`Keywheel`]'s actor unless named with [`holder`](Self::holder).
    pub fn new(kw: Keywheel) -> Result<Self> {
        let holder = kw.actor().to_owned();
        Ok(Rotator { kw, sources: Vec::new(), holder })
    }

    /// Register a record source (each source's values are re-encrypted).
    pub fn source(mut self, source: Arc<dyn RecordSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// The name this engine's leases show (default: the [`Keywheel`]'s actor).
    /// Each lease is granted to `{name}#{random}`, unique to that acquisition,
    /// so replicas that share a name (a `worker-1` copied into every
    /// deployment, `cli:root` in every container) never share a lease.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// The facade this engine works on.
    pub fn keywheel(&self) -> &Keywheel {
        &self.kw
    }

    /// The registered record sources.
    pub fn sources(&self) -> &[Arc<dyn RecordSource>] {
        &self.sources
    }

    /// Whether a registered source covers `id` ([`RecordSource::covers`]): only
    /// then can a census prove a version unused.
    pub fn covers(&self, id: &KeyringId) -> bool {
        self.sources.iter().any(|s| s.covers(id))
    }

    async fn lease(&self, id: &KeyringId, opts: &RotateOptions) -> Result<Lease> {
        self.kw.take_lease(id, &self.holder, opts.lease_ttl).await
    }

    /// The keyring's unfinished job: not finished, or finished with its
    /// completion event still to record (a crash came in between).
    async fn unfinished_job(&self, id: &KeyringId) -> Result<Option<RotationJob>> {
        Ok(self
            .kw
            .store()
            .list_jobs(id)
            .await?
            .into_iter()
            .rev()
            .find(|j| !j.phase.is_finished() || j.completion_pending))
    }

    /// Release the lease, whatever happened: a job that failed stays
    /// resumable by anyone (leases are never shared, so keeping it would only
    /// block the resume until it expires). Best effort: an unreleased lease
    /// expires by itself.
    async fn finish_lease(&self, lease: &Lease) {
        let _ = self.kw.store().release_lease(lease).await;
    }

    fn checkpoints(&self) -> Vec<SourceCheckpoint> {
        self.sources
            .iter()
            .map(|s| SourceCheckpoint { source: s.name().to_owned(), cursor: None, done: false })
            .collect()
    }

    fn report(&self, job: &RotationJob, dry_run: bool) -> RotationReport {
        RotationReport {
            job_id: (!dry_run).then(|| job.id.clone()),
            keyring: job.keyring.clone(),
            dry_run,
            from: job.from,
            to: job.to,
            phase: job.phase,
            counts: job.counts,
            failures: job.failures.clone(),
            remaining: job.remaining_after_verify.unwrap_or(0),
            legacy: job.legacy.clone(),
            duration: Duration::from_millis(job.active_ms),
        }
    }

    /// The most recent job of a keyring (finished or not).
    pub async fn last_job(&self, id: &KeyringId) -> Result<Option<RotationJob>> {
        Ok(self.kw.store().list_jobs(id).await?.pop())
    }
}
