//! The rotation engine (DESIGN §5): resumable rotation jobs, dry run, census,
//! verify, guarded retirement, rollback, emergency rotation and KEK rotation,
//! generic over the three traits.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;

use crate::{
    AfterRotation, AuditKind, Census, Error, JobCounts, JobFailure, JobKind, JobPhase, KeyEncryptionKey, KeyMaterial,
    KeyState, KeyVersion, Keyring, KeyringChange, KeyringId, KeyringRecord, Keywheel, Lease, MAX_STORED_FAILURES,
    Policy, RecordSource, ReplaceOutcome, Replacement, Result, RotationJob, RotationReport, ScanRequest,
    SourceCheckpoint, StoredValue, WrappedKey, correlation_id,
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

/// Result of [`Rotator::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The keyring.
    pub keyring: KeyringId,
    /// The Active version.
    pub active: Option<KeyVersion>,
    /// Values per version.
    pub census: BTreeMap<KeyVersion, u64>,
    /// Values on versions other than the Active one.
    pub not_on_active: u64,
    /// Values on retired versions (unreadable).
    pub on_retired: u64,
    /// Values whose header does not parse.
    pub unparseable: u64,
    /// Whether every value is on the Active version.
    pub ok: bool,
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

/// A KEK that wraps with a primary KEK and unwraps with whichever KEK's id a
/// wrapped key names (and, among KEKs of the same id, whose key check value
/// matches): lets readers open a store during and after a KEK rotation.
#[derive(Debug)]
pub struct KekRing {
    primary: Arc<dyn KeyEncryptionKey>,
    others: Vec<Arc<dyn KeyEncryptionKey>>,
}

impl KekRing {
    /// Wrap with `primary`; unwrap with `primary` or any of `others` by id
    /// (then by key check value).
    pub fn new(primary: Arc<dyn KeyEncryptionKey>, others: Vec<Arc<dyn KeyEncryptionKey>>) -> Self {
        KekRing { primary, others }
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for KekRing {
    fn id(&self) -> &str {
        self.primary.id()
    }
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        self.primary.wrap(keyring, version, material).await
    }
    async fn integrity_key(&self) -> Result<crate::IntegrityKey> {
        self.primary.integrity_key().await
    }
    async fn integrity_keys(&self) -> Result<Vec<crate::IntegrityKey>> {
        let mut keys = Vec::new();
        for kek in std::iter::once(&self.primary).chain(&self.others) {
            for key in kek.integrity_keys().await? {
                if !keys.iter().any(|k: &crate::IntegrityKey| k.id() == key.id()) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        // Several KEKs may share an id (a master key replaced by another under
        // the same name, as the CLI's `kek rotate` does): the key check value
        // tells them apart, so a wrong-master-key answer moves on to the next.
        let mut last = None;
        for kek in std::iter::once(&self.primary).chain(&self.others).filter(|k| k.id() == wrapped.kek_id) {
            match kek.unwrap(keyring, version, wrapped).await {
                Err(e @ Error::WrongMasterKey { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::KekMismatch {
            expected: self.primary.id().to_owned(),
            found: wrapped.kek_id.clone(),
        }))
    }
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
}

impl Rotator {
    /// An engine over `kw` with no sources yet; the lease holder name is
    /// `rotator-<random>` unless set with [`holder`](Self::holder).
    pub fn new(kw: Keywheel) -> Result<Self> {
        Ok(Rotator { kw, sources: Vec::new(), holder: format!("rotator-{}", &correlation_id()?[..12]) })
    }

    /// Register a record source (each source's values are re-encrypted).
    pub fn source(mut self, source: Arc<dyn RecordSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// Set the lease holder name (use a stable name per process to resume its
    /// own jobs without waiting for the lease to expire).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// The facade this engine works on.
    pub fn keywheel(&self) -> &Keywheel {
        &self.kw
    }

    async fn lease(&self, id: &KeyringId, opts: &RotateOptions) -> Result<Lease> {
        let store = self.kw.store();
        match store.acquire_lease(id, &self.holder, opts.lease_ttl, self.kw.now()).await {
            Err(Error::LeaseHeld { holder, expires_at, .. }) => Err(Error::RotationInProgress {
                keyring: id.clone(),
                detail: format!("lease held by {holder} until {expires_at}"),
            }),
            other => other,
        }
    }

    async fn unfinished_job(&self, id: &KeyringId) -> Result<Option<RotationJob>> {
        Ok(self.kw.store().list_jobs(id).await?.into_iter().rev().find(|j| !j.phase.is_finished()))
    }

    /// Rotate: store the next version as Pending, wait the policy's activation
    /// delay, activate it, re-encrypt every source, verify by census, complete.
    ///
    /// Errors: [`Error::RotationInProgress`] if another rotator holds the lease or
    /// an unfinished job exists (resume it instead).
    pub async fn rotate(&self, id: &KeyringId, policy: &Policy, opts: &RotateOptions) -> Result<RotationReport> {
        self.start(id, policy, opts, JobKind::Rotation).await
    }

    /// Emergency rotation away from the current Active version, flagged as
    /// compromised: no activation delay, immediate re-encryption, and the
    /// compromised version is retired (grace period waived, audited with
    /// `reason`) as soon as no value uses it.
    pub async fn emergency(&self, id: &KeyringId, reason: &str, opts: &RotateOptions) -> Result<RotationReport> {
        if reason.trim().is_empty() {
            return Err(Error::ReasonRequired("emergency rotation"));
        }
        let record = self.kw.record(id).await?;
        let compromised = record.active_version().ok_or_else(|| Error::NoActiveVersion { keyring: id.clone() })?;
        let policy = Policy { activation_delay: Duration::ZERO, ..self.kw.policy(id).await? };
        self.start(id, &policy, opts, JobKind::Emergency { compromised, reason: reason.to_owned() }).await
    }

    async fn start(
        &self,
        id: &KeyringId,
        policy: &Policy,
        opts: &RotateOptions,
        kind: JobKind,
    ) -> Result<RotationReport> {
        let lease = self.lease(id, opts).await?;
        let result = async {
            if let Some(job) = self.unfinished_job(id).await? {
                return Err(Error::RotationInProgress {
                    keyring: id.clone(),
                    detail: format!("job {} is unfinished ({:?}); resume it", job.id, job.phase),
                });
            }
            let record = self.kw.record(id).await?;
            if let Some(expected) = opts.expected_active
                && record.active_version() != Some(expected)
            {
                return Err(Error::AlreadyRotated {
                    keyring: id.clone(),
                    expected: Some(expected),
                    active: record.active_version(),
                });
            }
            let now = self.kw.now();
            let job_id = correlation_id()?;
            let from = record.active_version();
            let to = record.next_version()?;
            let mut job =
                RotationJob::new(job_id.clone(), id.clone(), kind.clone(), from, Some(to), self.checkpoints(), now);
            let mut events = vec![self.kw.event(
                Some(id),
                AuditKind::RotationStarted { job_id: job_id.clone(), from, to, dry_run: false },
                &job_id,
            )];
            if let JobKind::Emergency { compromised, reason } = &kind {
                let mut e =
                    self.kw.event(Some(id), AuditKind::EmergencyRotation { compromised: *compromised }, &job_id);
                e.reason = Some(reason.clone());
                events.insert(0, e);
            }
            self.kw.record_all(&events).await?;
            self.kw.store().save_job(&job, &lease).await?;
            if let JobKind::Emergency { compromised, .. } = &kind {
                // Flag the version before anything else; idempotent on resume.
                let change = KeyringChange::MarkCompromised { version: *compromised };
                self.kw.store().update_keyring(id, record.generation, &[change]).await?;
                self.kw.invalidate(id);
            }
            self.drive(&mut job, policy, opts, &lease).await
        }
        .await;
        self.finish_lease(&lease, result.is_ok()).await;
        result
    }

    /// Release the lease after success (`ok`); after an error keep it until it
    /// expires, so a crashed job is resumed by its own holder first. Best effort:
    /// an unreleased lease expires by itself.
    async fn finish_lease(&self, lease: &Lease, ok: bool) {
        if ok {
            // Best effort: an unreleased lease expires by itself.
            let _ = self.kw.store().release_lease(lease).await;
        }
    }

    fn checkpoints(&self) -> Vec<SourceCheckpoint> {
        self.sources
            .iter()
            .map(|s| SourceCheckpoint { source: s.name().to_owned(), cursor: None, done: false })
            .collect()
    }

    /// Continue the unfinished (or cancelled) job of a keyring from its
    /// checkpoint. `Ok(None)` if there is nothing to resume.
    pub async fn resume(&self, id: &KeyringId, opts: &RotateOptions) -> Result<Option<RotationReport>> {
        let lease = self.lease(id, opts).await?;
        let result = async {
            let Some(mut job) = self.unfinished_job(id).await? else {
                return Ok(None);
            };
            if job.phase == JobPhase::Cancelled {
                job.phase = JobPhase::Reencrypt;
            }
            let mut policy = self.kw.policy(id).await?;
            if matches!(job.kind, JobKind::Emergency { .. }) {
                policy.activation_delay = Duration::ZERO;
            }
            self.drive(&mut job, &policy, opts, &lease).await.map(Some)
        }
        .await;
        self.finish_lease(&lease, result.is_ok()).await;
        result
    }

    async fn save(&self, job: &mut RotationJob, lease: &Lease, run: &Instant, ms_before: u64) -> Result<()> {
        job.updated_at = self.kw.now();
        job.active_ms = ms_before + u64::try_from(run.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.kw.store().save_job(job, lease).await
    }

    async fn drive(
        &self,
        job: &mut RotationJob,
        policy: &Policy,
        opts: &RotateOptions,
        lease: &Lease,
    ) -> Result<RotationReport> {
        let run = Instant::now();
        let ms_before = job.active_ms;
        let id = job.keyring.clone();
        let mut lease = lease.clone();
        let mut verify_passes = 0;
        let to = job.to.ok_or_else(|| Error::InvalidArgument(format!("job {} has no target version", job.id)))?;
        let outcome: Result<()> = async {
            loop {
                match job.phase {
                    JobPhase::Prepare => {
                        let record = self.kw.record(&id).await?;
                        if record.version(to).is_none() {
                            if record.next_version()? != to {
                                return Err(Error::RotationInProgress {
                                    keyring: id.clone(),
                                    detail: format!("another version was added while job {} prepared {to}", job.id),
                                });
                            }
                            self.kw.add_version(&id).await?;
                        }
                        job.phase = if policy.activation_delay.is_zero() {
                            JobPhase::Activate
                        } else {
                            JobPhase::WaitActivation { until: self.kw.now().plus(policy.activation_delay) }
                        };
                    }
                    JobPhase::WaitActivation { until } => {
                        let now = self.kw.now();
                        if now < until {
                            tokio::time::sleep(until.since(now)).await;
                            continue;
                        }
                        job.phase = JobPhase::Activate;
                    }
                    JobPhase::Activate => {
                        let record = self.kw.record(&id).await?;
                        if record.active_version() != Some(to) {
                            self.kw.activate(&id, to).await?;
                        }
                        job.phase = match (policy.after_rotation, &job.kind) {
                            (AfterRotation::Expire, JobKind::Rotation) => JobPhase::Completed,
                            _ => JobPhase::Reencrypt,
                        };
                        if job.phase == JobPhase::Completed {
                            job.finished_at = Some(self.kw.now());
                        }
                    }
                    JobPhase::Reencrypt => {
                        if opts.estimate_total && job.total_estimate.is_none() {
                            let census = self.census(Some(&id)).await?;
                            let left: u64 = census
                                .counts
                                .get(&id)
                                .map_or(0, |m| m.iter().filter(|(v, _)| **v != to).map(|(_, n)| n).sum());
                            job.total_estimate = Some(job.counts.processed + left);
                        }
                        let cancelled = self.reencrypt(job, to, opts, &mut lease, &run, ms_before).await?;
                        job.phase = if cancelled { JobPhase::Cancelled } else { JobPhase::Verify };
                    }
                    JobPhase::Verify => {
                        let census = self.census(Some(&id)).await?;
                        let failed_on_old = job.failures.iter().filter(|f| f.version.is_some_and(|v| v != to)).count()
                            as u64
                            + job.failures_truncated;
                        let on_old: u64 = census
                            .counts
                            .get(&id)
                            .map_or(0, |m| m.iter().filter(|(v, _)| **v != to).map(|(_, n)| n).sum());
                        let remaining = on_old.saturating_sub(failed_on_old);
                        verify_passes += 1;
                        if remaining > 0 && verify_passes < 3 {
                            // Values written under an old version after the scan passed them
                            // (a process with a stale snapshot): sweep again.
                            job.sources = self.checkpoints();
                            job.phase = JobPhase::Reencrypt;
                        } else {
                            job.remaining_after_verify = Some(remaining);
                            job.phase = if job.counts.failed > 0 || remaining > 0 {
                                JobPhase::CompletedWithFailures
                            } else {
                                JobPhase::Completed
                            };
                            job.finished_at = Some(self.kw.now());
                        }
                    }
                    JobPhase::Completed | JobPhase::CompletedWithFailures | JobPhase::Cancelled => {
                        return Ok(());
                    }
                }
                if job.phase.is_finished() {
                    let c = job.counts;
                    let duration_ms = ms_before + u64::try_from(run.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let done = AuditKind::RotationCompleted {
                        job_id: job.id.clone(),
                        processed: c.processed,
                        rewritten: c.rewritten,
                        skipped: c.skipped,
                        failed: c.failed,
                        duration_ms,
                    };
                    self.kw.record_all(&[self.kw.event(Some(&id), done, &job.id)]).await?;
                }
                self.save(job, &lease, &run, ms_before).await?;
                if job.phase.is_finished()
                    && let JobKind::Emergency { compromised, reason } = &job.kind
                {
                    self.retire_compromised(&id, *compromised, to, reason, job).await?;
                }
            }
        }
        .await;
        if let Err(e) = &outcome {
            let mut event = self.kw.event(
                Some(&id),
                AuditKind::RotationFailed { job_id: job.id.clone(), error: e.to_string() },
                &job.id,
            );
            event.outcome = crate::Outcome::Failed;
            // The job stays resumable; the original error matters more than this event.
            let _ = self.kw.record_all(&[event]).await;
        }
        outcome?;
        Ok(self.report(job, false))
    }

    async fn retire_compromised(
        &self,
        id: &KeyringId,
        compromised: KeyVersion,
        to: KeyVersion,
        reason: &str,
        job: &RotationJob,
    ) -> Result<()> {
        if compromised == to || job.phase != JobPhase::Completed {
            return Ok(());
        }
        let record = self.kw.record(id).await?;
        if record.version(compromised).is_some_and(|v| v.state == KeyState::Deprecated) {
            let census = self.census(Some(id)).await?;
            if census.count(id, compromised) == 0 {
                self.retire_unchecked(id, compromised, Some(&format!("emergency: {reason}")), true).await?;
            }
        }
        Ok(())
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
            duration: Duration::from_millis(job.active_ms),
        }
    }

    /// Re-encrypt every source of `job` from its checkpoints. Returns whether it
    /// stopped because of cancellation.
    async fn reencrypt(
        &self,
        job: &mut RotationJob,
        to: KeyVersion,
        opts: &RotateOptions,
        lease: &mut Lease,
        run: &Instant,
        ms_before: u64,
    ) -> Result<bool> {
        let id = job.keyring.clone();
        let ring = self.kw.refresh(&id).await?;
        if ring.active_version() != Some(to) {
            return Err(Error::RotationInProgress {
                keyring: id.clone(),
                detail: format!("{to} is no longer the Active version (rolled back?)"),
            });
        }
        let processed_at_start = job.counts.processed;
        let mut last_renewal = Instant::now();
        for source in &self.sources {
            // A source registered after the job started gets a fresh checkpoint.
            let cp = match job.sources.iter().position(|c| c.source == source.name()) {
                Some(cp) => cp,
                None => {
                    job.sources.push(SourceCheckpoint { source: source.name().to_owned(), cursor: None, done: false });
                    job.sources.len() - 1
                }
            };
            if job.sources[cp].done {
                continue;
            }
            let mut after = job.sources[cp].cursor.clone();
            let mut in_flight = FuturesOrdered::new();
            let mut scan_done = false;
            // At most `parallel_batches` batches are re-encrypted at once (one
            // slot each, released when its re-encryption ends) and at most as
            // many are written at once (so the source sees no more concurrent
            // writes than before). A batch being written, or waiting for its
            // turn to be checkpointed, holds no re-encryption slot, so the next
            // batch is scanned and re-encrypted meanwhile: up to half as many
            // batches again (rounded down: one batch at a time stays one batch
            // at a time) are in flight, which keeps the crypto threads busy
            // across the hand-offs between the threads of the pipeline. (More
            // gains little and costs memory: measured on the rotation bench.)
            let parallel = opts.parallel_batches.max(1);
            let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
            let writers = Arc::new(tokio::sync::Semaphore::new(parallel));
            let max_in_flight = parallel + parallel / 2;
            let mut free_slot: Option<tokio::sync::OwnedSemaphorePermit> = None;
            loop {
                while !scan_done && in_flight.len() < max_in_flight {
                    let slot = match free_slot.take() {
                        Some(slot) => slot,
                        None if in_flight.is_empty() => {
                            Arc::clone(&slots).acquire_owned().await.map_err(|_| slots_closed())?
                        }
                        None => match Arc::clone(&slots).try_acquire_owned() {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    let request = ScanRequest {
                        after: after.clone(),
                        limit: opts.batch_size.max(1),
                        keyring: Some(id.clone()),
                        skip_version: Some(to),
                    };
                    let batch = source.scan(&request).await?;
                    let Some(last) = batch.last() else {
                        scan_done = true;
                        break;
                    };
                    let last_cursor = crate::source::advanced(source.as_ref(), &request, last)?;
                    after = Some(last_cursor.clone());
                    // Re-encryption starts at once on a blocking thread; a task per
                    // batch then writes it, while this loop scans ahead or checkpoints.
                    let crypto = start_reencryption(source.name(), Arc::clone(&ring), id.clone(), to, batch, slot);
                    let task = write_batch(Arc::clone(source), last_cursor, crypto, Arc::clone(&writers));
                    in_flight.push_back(BatchTask(tokio::spawn(task)));
                }
                // The oldest batch's result, or else (when more could be scanned)
                // a re-encryption slot freed by a younger batch.
                let result = if !scan_done && in_flight.len() < max_in_flight && !in_flight.is_empty() {
                    tokio::select! {
                        biased;
                        result = in_flight.next() => result,
                        slot = Arc::clone(&slots).acquire_owned() => {
                            free_slot = Some(slot.map_err(|_| slots_closed())?);
                            continue;
                        }
                    }
                } else {
                    in_flight.next().await
                };
                let Some(result) = result else {
                    break;
                };
                let result = result?;
                job.counts.processed += result.counts.processed;
                job.counts.rewritten += result.counts.rewritten;
                job.counts.skipped += result.counts.skipped;
                job.counts.failed += result.counts.failed;
                for f in result.failures {
                    if job.failures.len() < MAX_STORED_FAILURES {
                        job.failures.push(f);
                    } else {
                        job.failures_truncated += 1;
                    }
                }
                job.sources[cp].cursor = Some(result.last_cursor);
                if last_renewal.elapsed() > opts.lease_ttl / 3 {
                    *lease = self.kw.store().renew_lease(lease, opts.lease_ttl, self.kw.now()).await?;
                    last_renewal = Instant::now();
                }
                self.save(job, lease, run, ms_before).await?;
                self.report_progress(job, opts, run, processed_at_start, result.counts.processed).await?;
                if let Some(rps) = opts.max_records_per_second.filter(|r| *r > 0) {
                    let done = job.counts.processed - processed_at_start;
                    let due = Duration::from_secs_f64(done as f64 / rps as f64);
                    if let Some(wait) = due.checked_sub(run.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                if opts.cancel.is_cancelled() {
                    // Batches already in flight were not checkpointed; their
                    // rewritten values are on `to` and are filtered out on resume.
                    return Ok(true);
                }
            }
            job.sources[cp].done = true;
            self.save(job, lease, run, ms_before).await?;
        }
        Ok(false)
    }

    async fn report_progress(
        &self,
        job: &RotationJob,
        opts: &RotateOptions,
        run: &Instant,
        at_start: u64,
        batch_processed: u64,
    ) -> Result<()> {
        let done_now = job.counts.processed - at_start;
        let secs = run.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done_now as f64 / secs } else { 0.0 };
        let eta = job.total_estimate.and_then(|t| {
            (rate > 0.0).then(|| Duration::from_secs_f64(t.saturating_sub(job.counts.processed) as f64 / rate))
        });
        if let Some(cb) = &opts.progress {
            cb(&Progress {
                job_id: job.id.clone(),
                keyring: job.keyring.clone(),
                processed: job.counts.processed,
                total: job.total_estimate,
                rate_per_sec: rate,
                eta,
            });
        }
        // Audit progress at every 10 % step of the estimate (not every batch).
        if let Some(total) = job.total_estimate.filter(|t| *t > 0) {
            let step = |n: u64| n.saturating_mul(10) / total;
            if step(job.counts.processed) > step(job.counts.processed.saturating_sub(batch_processed)) {
                let kind = AuditKind::RotationProgress {
                    job_id: job.id.clone(),
                    processed: job.counts.processed,
                    total: Some(total),
                };
                self.kw.record_all(&[self.kw.event(Some(&job.keyring), kind, &job.id)]).await?;
            }
        }
        Ok(())
    }

    /// Census of values per keyring and version across all sources (one keyring if given).
    pub async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        let mut total = Census::default();
        for s in &self.sources {
            total.merge(&s.census(keyring).await?);
        }
        if let Some(k) = keyring {
            total.counts.retain(|id, _| id == k);
        }
        Ok(total)
    }

    /// Check that every value of a keyring is on its Active version.
    pub async fn verify(&self, id: &KeyringId) -> Result<VerifyReport> {
        let record = self.kw.record(id).await?;
        let census = self.census(Some(id)).await?;
        let per_version = census.counts.get(id).cloned().unwrap_or_default();
        let active = record.active_version();
        let not_on_active = per_version.iter().filter(|(v, _)| Some(**v) != active).map(|(_, n)| n).sum();
        let on_retired = per_version
            .iter()
            .filter(|(v, _)| record.version(**v).is_none_or(|r| r.state == KeyState::Retired))
            .map(|(_, n)| n)
            .sum();
        Ok(VerifyReport {
            keyring: id.clone(),
            active,
            census: per_version,
            not_on_active,
            on_retired,
            unparseable: census.unparseable,
            ok: not_on_active == 0 && census.unparseable == 0,
        })
    }

    /// Dry run of a rotation: reads every value that a rotation would move,
    /// decrypts it and re-encrypts it in memory under a throwaway version, and
    /// reports the same counts and failures. Writes nothing, changes no state,
    /// records no audit event.
    pub async fn dry_run(&self, id: &KeyringId, opts: &RotateOptions) -> Result<RotationReport> {
        let started = Instant::now();
        let record = self.kw.record(id).await?;
        let ring = Arc::new(self.dry_run_keyring(&record).await?);
        let to = record.next_version()?;
        let mut job = RotationJob {
            phase: JobPhase::Completed,
            remaining_after_verify: Some(0),
            ..RotationJob::new(
                String::new(),
                id.clone(),
                JobKind::Rotation,
                record.active_version(),
                Some(to),
                Vec::new(),
                self.kw.now(),
            )
        };
        for source in &self.sources {
            let mut request = ScanRequest {
                after: None,
                limit: opts.batch_size.max(1),
                keyring: Some(id.clone()),
                skip_version: None,
            };
            loop {
                let batch = source.scan(&request).await?;
                let Some(last) = batch.last() else { break };
                request.after = Some(crate::source::advanced(source.as_ref(), &request, last)?);
                let (counts, failures, _) = reencrypt_values(&ring, id, to, source.name(), batch);
                job.counts.processed += counts.processed;
                job.counts.rewritten += counts.processed - counts.failed;
                job.counts.failed += counts.failed;
                job.failures.extend(failures.into_iter().take(MAX_STORED_FAILURES.saturating_sub(job.failures.len())));
                if opts.cancel.is_cancelled() {
                    job.phase = JobPhase::Cancelled;
                    break;
                }
            }
        }
        if job.counts.failed > 0 && job.phase == JobPhase::Completed {
            job.phase = JobPhase::CompletedWithFailures;
        }
        job.active_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(self.report(&job, true))
    }

    /// The current snapshot plus a throwaway Active version (never stored).
    async fn dry_run_keyring(&self, record: &KeyringRecord) -> Result<Keyring> {
        let mut current = record.clone();
        for v in current.versions.iter_mut().filter(|v| v.state == KeyState::Active) {
            v.state = KeyState::Deprecated;
        }
        let mut builder = self.kw.unwrapped(&current).await?;
        builder.push(KeyState::Active, record.algorithm, Some(KeyMaterial::generate()?));
        builder.build()
    }

    /// Retire a Deprecated version, destroying its material. Refused with
    /// [`Error::RetirementRefused`] (carrying the count) while any value uses it
    /// or the last job listed failures on it, and with [`Error::GracePeriodNotOver`]
    /// before `deprecated_at + grace_period`, unless `force` gives a reason
    /// (audited). Keyrings whose policy lets old values expire (sessions) need no census.
    ///
    /// Runs under the keyring's lease, so it never races a rotation
    /// ([`Error::RotationInProgress`] while one runs).
    pub async fn retire(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        force: Option<&str>,
    ) -> Result<KeyringRecord> {
        let lease = self.lease(id, &RotateOptions::default()).await?;
        let result = self.retire_leased(id, version, policy, force).await;
        // Nothing here is resumable, so the lease goes back whatever happened.
        self.finish_lease(&lease, true).await;
        result
    }

    async fn retire_leased(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        force: Option<&str>,
    ) -> Result<KeyringRecord> {
        if let Some(reason) = force {
            if reason.trim().is_empty() {
                return Err(Error::ReasonRequired("retirement"));
            }
            return self.retire_unchecked(id, version, Some(reason), true).await;
        }
        let record = self.kw.record(id).await?;
        let v = record.version(version).ok_or(Error::VersionNotFound { keyring: id.clone(), version })?;
        v.state.check_transition(version, KeyState::Retired)?;
        let cid = correlation_id()?;
        let refuse = |remaining: u64| {
            let mut e = self.kw.event(Some(id), AuditKind::RetirementRefused { version, remaining }, &cid);
            e.outcome = crate::Outcome::Refused;
            e
        };
        if let Some(since) = v.deprecated_at {
            let until = since.plus(policy.grace_period);
            if self.kw.now() < until {
                let mut e = refuse(0);
                e.reason = Some(format!("grace period ends at {until}"));
                self.kw.record_all(&[e]).await?;
                return Err(Error::GracePeriodNotOver { version, until });
            }
        }
        if policy.after_rotation == AfterRotation::Reencrypt {
            let in_use = self.census(Some(id)).await?.count(id, version);
            let failed = self
                .kw
                .store()
                .list_jobs(id)
                .await?
                .last()
                .map_or(0, |j| j.failures.iter().filter(|f| f.version == Some(version)).count() as u64);
            let remaining = in_use.max(failed);
            if remaining > 0 {
                self.kw.record_all(&[refuse(remaining)]).await?;
                return Err(Error::RetirementRefused { version, remaining });
            }
        }
        self.retire_unchecked(id, version, None, false).await
    }

    async fn retire_unchecked(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        reason: Option<&str>,
        forced: bool,
    ) -> Result<KeyringRecord> {
        let record = self.kw.record(id).await?;
        let cid = correlation_id()?;
        let mut event = self.kw.event(Some(id), AuditKind::KeyRetired { version, forced }, &cid);
        event.reason = reason.map(str::to_owned);
        let change = KeyringChange::SetState { version, state: KeyState::Retired, at: self.kw.now() };
        self.kw.apply_audited(&record, &[change], &[event]).await
    }

    /// Roll back inside the policy's rollback window: the most recently
    /// deprecated version becomes Active again and the current one Deprecated
    /// (nothing becomes unreadable). An unfinished rotation job of the keyring is
    /// ended (marked cancelled and not resumed). With `reencrypt`, values are then
    /// re-encrypted back to the re-activated version.
    pub async fn rollback(
        &self,
        id: &KeyringId,
        policy: &Policy,
        reason: Option<&str>,
        reencrypt: bool,
        opts: &RotateOptions,
    ) -> Result<RollbackReport> {
        let lease = self.lease(id, opts).await?;
        let result = async {
            let record = self.kw.record(id).await?;
            let from = record.active_version().ok_or_else(|| Error::NoActiveVersion { keyring: id.clone() })?;
            let activated_at = record.version(from).and_then(|v| v.activated_at).unwrap_or(record.created_at);
            let closes = activated_at.plus(policy.rollback_window);
            if self.kw.now() > closes {
                return Err(Error::RollbackWindowClosed { keyring: id.clone(), closed_at: closes });
            }
            let to = record
                .versions
                .iter()
                .filter(|v| v.state == KeyState::Deprecated)
                .max_by_key(|v| (v.deprecated_at, v.version))
                .map(|v| v.version)
                .ok_or_else(|| Error::NothingToRollBack { keyring: id.clone() })?;
            let cid = correlation_id()?;
            let mut event = self.kw.event(Some(id), AuditKind::Rollback { from, to }, &cid);
            event.reason = reason.map(str::to_owned);
            let now = self.kw.now();
            let changes = [
                KeyringChange::SetState { version: from, state: KeyState::Deprecated, at: now },
                KeyringChange::SetState { version: to, state: KeyState::Active, at: now },
            ];
            self.kw.apply_audited(&record, &changes, &[event]).await?;
            for mut job in self.kw.store().list_jobs(id).await? {
                if !job.phase.is_finished() {
                    job.phase = JobPhase::CompletedWithFailures;
                    job.finished_at = Some(now);
                    job.remaining_after_verify = None;
                    self.kw.store().save_job(&job, &lease).await?;
                }
            }
            let reencrypt = if reencrypt {
                let mut job = RotationJob {
                    phase: JobPhase::Reencrypt,
                    ..RotationJob::new(
                        cid.clone(),
                        id.clone(),
                        JobKind::RollbackReencrypt,
                        Some(from),
                        Some(to),
                        self.checkpoints(),
                        now,
                    )
                };
                self.kw.store().save_job(&job, &lease).await?;
                Some(self.drive(&mut job, policy, opts, &lease).await?)
            } else {
                None
            };
            Ok(RollbackReport { from, to, reencrypt })
        }
        .await;
        self.finish_lease(&lease, result.is_ok()).await;
        result
    }

    /// Rewrap every live version of every keyring under `new` (no record is
    /// touched), one atomic update per keyring, audited. Versions are unwrapped
    /// with this engine's KEK: build it with a [`KekRing`] holding `new` and the
    /// old KEK (with distinct ids), so readers keep working during the rotation.
    /// Idempotent and resumable: keys already wrapped by `new` (same id and key
    /// check value) are skipped. Afterwards the old KEK is no longer needed.
    pub async fn rotate_kek(&self, new: Arc<dyn KeyEncryptionKey>) -> Result<KekRotationReport> {
        // The key check value of `new`, from one throwaway wrap.
        let probe = KeyringId::new("keywheel", crate::Purpose::Custom("kek-probe".into()))?;
        let new_check = new.wrap(&probe, KeyVersion::FIRST, &KeyMaterial::generate()?).await?.key_check;
        let is_new = |w: &WrappedKey| w.kek_id == new.id() && w.key_check == new_check;
        let mut report =
            KekRotationReport { from: Vec::new(), to: new.id().to_owned(), keyrings: 0, keys: 0, already_rewrapped: 0 };
        for id in self.kw.list_keyrings().await? {
            loop {
                let record = self.kw.record(&id).await?;
                let mut changes = Vec::new();
                let mut from: Vec<String> = Vec::new();
                let mut already = 0;
                for v in &record.versions {
                    let Some(w) = &v.wrapped else { continue };
                    if is_new(w) {
                        already += 1;
                        continue;
                    }
                    if !from.contains(&w.kek_id) {
                        from.push(w.kek_id.clone());
                    }
                    let material = self.kw.kek().unwrap(&id, v.version, w).await?;
                    changes.push(KeyringChange::Rewrap {
                        version: v.version,
                        wrapped: new.wrap(&id, v.version, &material).await?,
                    });
                }
                if changes.is_empty() {
                    report.already_rewrapped += already;
                    break;
                }
                let keys = changes.len() as u64;
                let cid = correlation_id()?;
                let kind = AuditKind::KekRotated { from: from.join(","), to: new.id().to_owned(), keys };
                let event = self.kw.event(Some(&id), kind, &cid);
                match self.kw.apply_audited(&record, &changes, &[event]).await {
                    Ok(_) => {
                        report.keyrings += 1;
                        report.keys += keys;
                        report.already_rewrapped += already;
                        for f in from {
                            if !report.from.contains(&f) {
                                report.from.push(f);
                            }
                        }
                        break;
                    }
                    // Someone changed the keyring meanwhile: reload and rewrap again.
                    Err(Error::GenerationConflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// The most recent job of a keyring (finished or not).
    pub async fn last_job(&self, id: &KeyringId) -> Result<Option<RotationJob>> {
        Ok(self.kw.store().list_jobs(id).await?.pop())
    }
}

/// Decrypt and re-encrypt the values of one batch that belong to `id` and are
/// not on `to`, all in one batch call of the keyring (one fork check and one
/// usage-counter update per batch, see [`Keyring::reencrypt_many`]). Returns
/// counts (processed, failed), failures and replacements.
fn reencrypt_values(
    ring: &Keyring,
    id: &KeyringId,
    to: KeyVersion,
    source: &str,
    batch: Vec<StoredValue>,
) -> (JobCounts, Vec<JobFailure>, Vec<Replacement>) {
    let ours = |v: &StoredValue| &v.keyring == id;
    let mut counts = JobCounts::default();
    let mut failures = Vec::new();
    let mut fail = |counts: &mut JobCounts, v: StoredValue, error: &Error| {
        counts.failed += 1;
        failures.push(JobFailure {
            source: source.to_owned(),
            version: crate::version_of(&v.value).ok(),
            cursor: v.cursor,
            reason: error.to_string(),
        });
    };
    // This thread's buffer for the new values, kept from batch to batch: a
    // fresh 48 KB allocation per batch would make the allocator consolidate its
    // free lists every time, slowing every small allocation after it.
    let buffer = VALUES_BUFFER.take();
    let done =
        match ring.reencrypt_batch(&batch, Some(to), buffer, |v| ours(v).then_some((v.value.as_slice(), &v.context))) {
            Ok(done) => done,
            Err(error) => {
                // No result at all (the nonce source failed): every value of ours failed.
                for v in batch.into_iter().filter(ours) {
                    counts.processed += 1;
                    fail(&mut counts, v, &error);
                }
                return (counts, failures, Vec::new());
            }
        };
    let mut errors = done.errors.into_iter().peekable();
    let mut skipped = done.skipped.into_iter().peekable();
    let mut values = done.values;
    // Collected in place: the batch's buffer becomes the replacements' buffer
    // (no second large allocation per batch), and cursors and values move.
    let replacements = batch
        .into_iter()
        .zip(values.drain(..))
        .enumerate()
        .filter_map(|(index, (v, new))| {
            if skipped.next_if_eq(&index).is_some() {
                return None;
            }
            if let Some((_, error)) = errors.next_if(|(i, _)| *i == index) {
                counts.processed += 1;
                fail(&mut counts, v, &error);
                return None;
            }
            // A re-encrypted value is never empty (it starts with its header),
            // so an empty one here is a value of another keyring, left alone.
            if new.is_empty() {
                return None;
            }
            counts.processed += 1;
            Some(Replacement { cursor: v.cursor, old: v.value, new })
        })
        .collect();
    VALUES_BUFFER.set(values);
    (counts, failures, replacements)
}

thread_local! {
    /// See [`reencrypt_values`]: an empty vector with the capacity of the last batch.
    static VALUES_BUFFER: std::cell::Cell<Vec<Vec<u8>>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A spawned batch; dropping it (an early return, a cancelled job) aborts the
/// task. Whatever it already wrote is on the target version, so a resume
/// filters it out; whatever it did not write is still the old value.
struct BatchTask(tokio::task::JoinHandle<Result<BatchResult>>);

impl std::future::Future for BatchTask {
    type Output = Result<BatchResult>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| Err(Error::backend("rotation engine", format!("batch task failed: {e}"), false)))
        })
    }
}

impl Drop for BatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn slots_closed() -> Error {
    Error::backend("rotation engine", "the batch slots were closed", false)
}

/// The re-encryption of one batch, running on a blocking thread.
type Reencryption = tokio::task::JoinHandle<(JobCounts, Vec<JobFailure>, Vec<Replacement>)>;

/// Start re-encrypting a batch on a blocking thread (crypto overlaps the next
/// scan); `slot` is released as soon as the re-encryption ends.
fn start_reencryption(
    source: &str,
    ring: Arc<Keyring>,
    id: KeyringId,
    to: KeyVersion,
    batch: Vec<StoredValue>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Reencryption {
    let name = source.to_owned();
    tokio::task::spawn_blocking(move || {
        let done = reencrypt_values(&ring, &id, to, &name, batch);
        drop(slot);
        done
    })
}

/// Wait for a batch's re-encryption, then compare-and-set replace it while
/// holding one of the `writers` slots.
async fn write_batch(
    source: Arc<dyn RecordSource>,
    last_cursor: crate::Cursor,
    reencryption: Reencryption,
    writers: Arc<tokio::sync::Semaphore>,
) -> Result<BatchResult> {
    let (mut counts, failures, replacements) = reencryption
        .await
        .map_err(|e| Error::backend("rotation engine", format!("re-encryption task failed: {e}"), false))?;
    let _writing = writers.acquire_owned().await.map_err(|_| slots_closed())?;
    if !replacements.is_empty() {
        let outcomes = source.replace(&replacements).await?;
        if outcomes.len() != replacements.len() {
            return Err(Error::backend(
                "record source",
                format!(
                    "{} returned {} outcomes for {} replacements",
                    source.name(),
                    outcomes.len(),
                    replacements.len()
                ),
                false,
            ));
        }
        counts.rewritten = outcomes.iter().filter(|o| **o == ReplaceOutcome::Replaced).count() as u64;
        counts.skipped = outcomes.len() as u64 - counts.rewritten;
    }
    Ok(BatchResult { last_cursor, counts, failures })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Context, Cursor, Purpose};

    #[test]
    fn reencrypt_values_moves_only_this_keyrings_values_off_the_target() {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let other = KeyringId::new("u", Purpose::Token).expect("id");
        let m1 = [8u8; 32];
        let old = Keyring::builder(id.clone())
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m1).expect("32"))
            .build()
            .expect("valid");
        let ring = Keyring::builder(id.clone())
            .version(KeyState::Deprecated, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m1).expect("32"))
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .build()
            .expect("valid");
        let to = KeyVersion::new(2).expect("2");
        let ctx = |row: usize| Context::field("t", "c", &row.to_string());
        let stored = |row: usize, keyring: &KeyringId, value: Vec<u8>| StoredValue {
            cursor: Cursor(format!("{row}")),
            keyring: keyring.clone(),
            context: ctx(row),
            value,
        };
        let batch = vec![
            stored(0, &id, old.encrypt(b"zero", &ctx(0)).expect("encrypt")),
            stored(1, &other, old.encrypt(b"not ours", &ctx(1)).expect("encrypt")),
            stored(2, &id, ring.encrypt(b"already on v2", &ctx(2)).expect("encrypt")),
            stored(3, &id, old.encrypt(b"wrong row", &ctx(0)).expect("encrypt")),
            stored(4, &id, b"garbage".to_vec()),
            stored(5, &id, old.encrypt_text(b"five", &ctx(5)).expect("encrypt").into_bytes()),
        ];
        // Twice: the second batch reuses this thread's buffer of new values.
        for _ in 0..2 {
            let (counts, failures, replacements) = reencrypt_values(&ring, &id, to, "src", batch.clone());
            assert_eq!((counts.processed, counts.failed), (4, 2));
            let failed: Vec<_> = failures.iter().map(|f| (f.cursor.0.as_str(), f.version)).collect();
            assert_eq!(failed, [("3", Some(KeyVersion::FIRST)), ("4", None)]);
            assert!(failures.iter().all(|f| f.source == "src"));
            let cursors: Vec<_> = replacements.iter().map(|r| r.cursor.0.as_str()).collect();
            assert_eq!(cursors, ["0", "5"]);
            for (r, row) in replacements.iter().zip([0, 5]) {
                assert_eq!(r.old, batch[row].value);
                assert_eq!(crate::version_of(&r.new).expect("parse"), to);
                assert!(ring.decrypt(&r.new, &ctx(row)).is_ok());
            }
            assert!(replacements[1].new.starts_with(b"kw:v2:"));
        }
    }
}
