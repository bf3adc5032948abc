//! The re-encryption pipeline: scan in batches, re-encrypt on blocking
//! threads, compare-and-set replace, checkpoint after every batch.

use super::*;

impl Rotator {
    /// Re-encrypt every source of `job` from its checkpoints. Returns whether it
    /// stopped because of cancellation.
    pub(super) async fn reencrypt(
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
                running: false,
            });
        }
        let processed_at_start = job.counts.processed;
        // A verification sweep meets the values that failed before again: list
        // each (source, cursor) once, so failures count values, not attempts.
        let mut listed: std::collections::HashSet<(String, crate::Cursor)> =
            job.failures.iter().map(|f| (f.source.clone(), f.cursor.clone())).collect();
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
                    let scan_started = Instant::now();
                    let batch = source.scan(&request).await?;
                    let Some(last) = batch.last() else {
                        scan_done = true;
                        break;
                    };
                    let last_cursor = crate::source::advanced(source.as_ref(), &request, last)?;
                    after = Some(last_cursor.clone());
                    // Re-encryption starts at once on a blocking thread; a task per
                    // batch then writes it, while this loop scans ahead or checkpoints.
                    let at = self.kw.now();
                    let rows = batch.len();
                    let crypto =
                        start_reencryption(source.as_ref(), Arc::clone(&ring), id.clone(), to, batch, slot, at);
                    let task = write_batch(Arc::clone(source), last_cursor, crypto, Arc::clone(&writers));
                    let task = observed_batch(&id, source.name(), to, &job.id, rows, scan_started, task);
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
                if !result.legacy.is_empty() {
                    for (format, n) in &result.legacy {
                        *job.legacy.entry(format.clone()).or_default() += n;
                    }
                    // Every acceptance of a legacy value (plaintext included) is
                    // audited, batch by batch, before its checkpoint.
                    let kind = AuditKind::LegacyMigrated {
                        job_id: job.id.clone(),
                        source: source.name().to_owned(),
                        counts: result.legacy.clone(),
                    };
                    self.kw.record_all(&[self.kw.event(Some(&job.keyring), kind, &job.id)]).await?;
                }
                for mut f in result.failures {
                    f.location = source.locate(&f.cursor);
                    if !listed.insert((f.source.clone(), f.cursor.clone())) {
                        job.counts.failed -= 1;
                        continue;
                    }
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
}

/// What the re-encryption of one batch produced: counts (processed,
/// failed), failures, replacements, and the legacy values among the
/// replacements: the last ones, in segments of `(format name, count)`.
pub(super) struct BatchWork {
    pub(super) counts: JobCounts,
    pub(super) failures: Vec<JobFailure>,
    pub(super) replacements: Vec<Replacement>,
    pub(super) legacy: Vec<(String, usize)>,
}

/// Decrypt and re-encrypt the values of one batch that belong to `id` and are
/// not on `to`, all in one batch call of the keyring (one fork check and one
/// usage-counter update per batch, see [`Keyring::reencrypt_many`]), with
/// their blind index tags recomputed under `to` from the same plaintext (a
/// value already on `to` whose tag is not, or is empty, gets its tag alone).
/// The batch's legacy values (`legacy`, see [`LegacyPlan`]) are decrypted by
/// their format (at time `at`) and encrypted under `to`, the Active version
/// of `ring`, in the form of their column.
pub(super) fn reencrypt_values(
    ring: &Keyring,
    id: &KeyringId,
    to: KeyVersion,
    source: &str,
    batch: Vec<StoredValue>,
    legacy: LegacyPlan,
    at: crate::Timestamp,
) -> BatchWork {
    let ours = |v: &StoredValue| &v.keyring == id;
    let mut counts = JobCounts::default();
    let mut failures = Vec::new();
    let mut fail = |counts: &mut JobCounts, v: StoredValue, reason: String| {
        counts.failed += 1;
        failures.push(JobFailure {
            source: source.to_owned(),
            version: crate::version_of(&v.value).ok(),
            cursor: v.cursor,
            reason,
            location: None,
        });
    };
    // This thread's buffer for the new values, kept from batch to batch: a
    // fresh 48 KB allocation per batch would make the allocator consolidate its
    // free lists every time, slowing every small allocation after it.
    let buffer = VALUES_BUFFER.take();
    let done = match ring.reencrypt_batch(&batch, Some(to), buffer, |v| batch_item(v, id, to)) {
        Ok(done) => done,
        Err(error) => {
            // No result at all (the nonce source failed): every value of ours failed.
            for v in batch.into_iter().filter(ours) {
                counts.processed += 1;
                fail(&mut counts, v, error.to_string());
            }
            return BatchWork { counts, failures, replacements: Vec::new(), legacy: Vec::new() };
        }
    };
    let mut errors = done.errors.into_iter().peekable();
    let mut skipped = done.skipped.into_iter().peekable();
    let mut tags = done.tags.into_iter().peekable();
    let mut planned = legacy.entries.into_iter().peekable();
    let mut migrated: Vec<(Arc<dyn LegacyFormat>, Replacement)> = Vec::new();
    let mut values = done.values;
    // Collected in place: the batch's buffer becomes the replacements' buffer
    // (no second large allocation per batch), and cursors and values move.
    let mut replacements: Vec<Replacement> = batch
        .into_iter()
        .zip(values.drain(..))
        .enumerate()
        .filter_map(|(index, (v, new))| {
            if skipped.next_if_eq(&index).is_some() {
                return None;
            }
            if let Some((_, error)) = errors.next_if(|(i, _)| *i == index) {
                counts.processed += 1;
                // A value that is not keywheel (so the keyring failed on it)
                // and that a legacy format of its column recognised.
                match planned.next_if(|e| e.index == index) {
                    Some(entry) => {
                        let format = Arc::clone(&entry.format);
                        match migrate(ring, &v, entry, at) {
                            Ok((new, index)) => {
                                let r = Replacement { cursor: v.cursor, old: v.value, new, index };
                                migrated.push((format, r));
                            }
                            Err(e) => fail(&mut counts, v, format!("{} value: {e}", format.name())),
                        }
                    }
                    None => fail(&mut counts, v, error.to_string()),
                }
                return None;
            }
            // A re-encrypted value is never empty (it starts with its header),
            // so an empty one here is a value of another keyring, left alone.
            if new.is_empty() {
                return None;
            }
            counts.processed += 1;
            let tag = tags.next_if(|(i, _)| *i == index).map(|(_, tag)| tag);
            let new_tag = v.index.zip(tag).map(|(stored, tag)| crate::IndexReplacement {
                old: stored.tag,
                new: match stored.form {
                    crate::Form::Binary => tag,
                    crate::Form::Text => crate::wire::to_text(to, &tag).into_bytes(),
                },
            });
            Some(Replacement { cursor: v.cursor, old: v.value, new, index: new_tag })
        })
        .collect();
    VALUES_BUFFER.set(values);
    // The migrated legacy values go last, grouped by format.
    migrated.sort_by(|a, b| a.0.name().cmp(b.0.name()));
    let mut legacy: Vec<(String, usize)> = Vec::new();
    for (format, r) in migrated {
        match legacy.last_mut() {
            Some((name, n)) if name == format.name() => *n += 1,
            _ => legacy.push((format.name().to_owned(), 1)),
        }
        replacements.push(r);
    }
    BatchWork { counts, failures, replacements, legacy }
}

/// The legacy values of one batch: values of the keyring that are not
/// keywheel and that a legacy format declared for their column
/// ([`RecordSource::legacy_formats`]) recognises, in batch order; for
/// async formats (Vault transit) the plaintext, once awaited.
#[derive(Default)]
pub(super) struct LegacyPlan {
    entries: Vec<LegacyEntry>,
}

struct LegacyEntry {
    /// The value's index in the batch.
    index: usize,
    /// Its column's formats (they say the column's form).
    formats: Arc<LegacyFormats>,
    /// The format that recognised it.
    format: Arc<dyn LegacyFormat>,
    /// The plaintext (or failure) of an async format, awaited before the
    /// blocking re-encryption.
    decrypted: Option<Result<Plaintext>>,
}

impl LegacyPlan {
    /// Classify a batch (cheap: recognition reads the bytes only, and only
    /// values that are not keywheel are looked at).
    pub(super) fn of(source: &dyn RecordSource, id: &KeyringId, batch: &[StoredValue]) -> Self {
        let mut entries = Vec::new();
        for (index, v) in batch.iter().enumerate() {
            if &v.keyring != id || crate::looks_like_keywheel(&v.value) {
                continue;
            }
            let Some(formats) = source.legacy_formats(&v.cursor) else { continue };
            let Some(format) = formats.recognize_arc(&v.value).cloned() else { continue };
            entries.push(LegacyEntry { index, formats, format, decrypted: None });
        }
        LegacyPlan { entries }
    }

    /// Whether some value is in an async format.
    fn needs_await(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.format.decryptor(), LegacyDecryptor::Async(_)))
    }

    /// The plan with the values of async formats decrypted.
    pub(super) async fn awaited(mut self, batch: &[StoredValue], at: crate::Timestamp) -> Self {
        if self.needs_await() {
            self.await_async(batch, at).await;
        }
        self
    }

    /// Decrypt the values of async formats, one awaited batch per format.
    async fn await_async(&mut self, batch: &[StoredValue], at: crate::Timestamp) {
        for first in 0..self.entries.len() {
            let format = Arc::clone(&self.entries[first].format);
            let LegacyDecryptor::Async(decrypt) = format.decryptor() else { continue };
            if self.entries[first].decrypted.is_some() {
                continue;
            }
            let group: Vec<usize> = (first..self.entries.len())
                .filter(|j| Arc::ptr_eq(&self.entries[*j].format, &format) && self.entries[*j].decrypted.is_none())
                .collect();
            let values: Vec<LegacyValue<'_>> = group
                .iter()
                .map(|j| {
                    let v = &batch[self.entries[*j].index];
                    LegacyValue::new(&v.value, &v.context)
                })
                .collect();
            let mut results = decrypt.decrypt_batch(&values, at).await.into_iter();
            for j in group {
                // A format that returns too few results fails the rest.
                self.entries[j].decrypted = Some(results.next().unwrap_or(Err(Error::Decrypt)));
            }
        }
    }
}

/// The new value (under the Active version `to` of `ring`, in the column's
/// form) and blind index tag of a legacy value.
fn migrate(
    ring: &Keyring,
    v: &StoredValue,
    entry: LegacyEntry,
    at: crate::Timestamp,
) -> Result<(Vec<u8>, Option<crate::IndexReplacement>)> {
    let plaintext = match entry.decrypted {
        Some(decrypted) => decrypted?,
        None => match entry.format.decryptor() {
            LegacyDecryptor::Blocking(d) => d.decrypt_one(&LegacyValue::new(&v.value, &v.context), at)?,
            LegacyDecryptor::Async(_) => return Err(Error::Decrypt),
        },
    };
    let plaintext = plaintext.as_bytes();
    let new = match entry.formats.stored_form() {
        crate::Form::Binary => ring.encrypt(plaintext, &v.context)?,
        crate::Form::Text => ring.encrypt_text(plaintext, &v.context)?.into_bytes(),
    };
    let index = match &v.index {
        Some(stored) => Some(crate::IndexReplacement {
            old: stored.tag.clone(),
            new: match stored.form {
                crate::Form::Binary => ring.blind_index(plaintext, &stored.spec)?,
                crate::Form::Text => ring.blind_index_text(plaintext, &stored.spec)?.into_bytes(),
            },
        }),
        None => None,
    };
    Ok((new, index))
}

/// What the keyring re-encrypts of a stored value: nothing for another
/// keyring's, else the value, its context and its blind index (with whether
/// the stored tag is on `to` already).
fn batch_item<'v>(v: &'v StoredValue, id: &KeyringId, to: KeyVersion) -> Option<crate::keyring::BatchItem<'v>> {
    (&v.keyring == id).then(|| crate::keyring::BatchItem {
        value: &v.value,
        context: &v.context,
        index: v.index.as_ref().map(|i| {
            let current = i.tag.as_deref().is_some_and(|t| crate::version_of(t) == Ok(to));
            (i.spec.as_ref(), current)
        }),
    })
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

/// One batch's task in its trace span, with its metrics (see
/// [`rotation_batch`](crate::observability::rotation_batch)).
fn observed_batch(
    id: &KeyringId,
    source: &str,
    to: KeyVersion,
    job_id: &str,
    rows: usize,
    started: Instant,
    task: impl std::future::Future<Output = Result<BatchResult>> + Send + 'static,
) -> impl std::future::Future<Output = Result<BatchResult>> + Send + 'static {
    let counts = |r: &BatchResult| crate::observability::BatchCounts {
        processed: r.counts.processed,
        rewritten: r.counts.rewritten,
        skipped: r.counts.skipped,
        failed: r.counts.failed,
    };
    crate::observability::rotation_batch(id, source, to, job_id, rows, started, counts, task)
}

fn slots_closed() -> Error {
    Error::backend("rotation engine", "the batch slots were closed", false)
}

/// The re-encryption of one batch, running on a blocking thread (after an
/// async pre-pass for values of async legacy formats).
type Reencryption = std::pin::Pin<Box<dyn std::future::Future<Output = Result<BatchWork>> + Send>>;

fn reencryption_failed(e: tokio::task::JoinError) -> Error {
    Error::backend("rotation engine", format!("re-encryption task failed: {e}"), false)
}

/// Start re-encrypting a batch on a blocking thread (crypto overlaps the next
/// scan); `slot` is released as soon as the re-encryption ends. A batch with
/// values of an async legacy format (Vault transit) first awaits their
/// decryption on a task of its own, then re-encrypts on a blocking thread.
fn start_reencryption(
    source: &dyn RecordSource,
    ring: Arc<Keyring>,
    id: KeyringId,
    to: KeyVersion,
    batch: Vec<StoredValue>,
    slot: tokio::sync::OwnedSemaphorePermit,
    at: crate::Timestamp,
) -> Reencryption {
    let name = source.name().to_owned();
    let mut plan = LegacyPlan::of(source, &id, &batch);
    let work = move |plan: LegacyPlan, batch: Vec<StoredValue>| {
        move || {
            let done = reencrypt_values(&ring, &id, to, &name, batch, plan, at);
            drop(slot);
            done
        }
    };
    if plan.needs_await() {
        let task = tokio::spawn(async move {
            plan.await_async(&batch, at).await;
            tokio::task::spawn_blocking(work(plan, batch)).await
        });
        Box::pin(async move { task.await.map_err(reencryption_failed)?.map_err(reencryption_failed) })
    } else {
        let task = tokio::task::spawn_blocking(work(plan, batch));
        Box::pin(async move { task.await.map_err(reencryption_failed) })
    }
}

/// Wait for a batch's re-encryption, then compare-and-set replace it while
/// holding one of the `writers` slots.
async fn write_batch(
    source: Arc<dyn RecordSource>,
    last_cursor: crate::Cursor,
    reencryption: Reencryption,
    writers: Arc<tokio::sync::Semaphore>,
) -> Result<BatchResult> {
    let BatchWork { mut counts, failures, replacements, legacy } = reencryption.await?;
    let _writing = writers.acquire_owned().await.map_err(|_| slots_closed())?;
    let mut migrated = BTreeMap::new();
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
        // The legacy values are the last replacements, by format.
        let mut tail = outcomes.len() - legacy.iter().map(|(_, n)| n).sum::<usize>().min(outcomes.len());
        for (format, n) in legacy {
            let end = (tail + n).min(outcomes.len());
            let replaced = outcomes[tail..end].iter().filter(|o| **o == ReplaceOutcome::Replaced).count() as u64;
            if replaced > 0 {
                *migrated.entry(format).or_default() += replaced;
            }
            tail = end;
        }
    }
    Ok(BatchResult { last_cursor, counts, failures, legacy: migrated })
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
            index: None,
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
            let work =
                reencrypt_values(&ring, &id, to, "src", batch.clone(), LegacyPlan::default(), crate::Timestamp::EPOCH);
            let (counts, failures, replacements) = (work.counts, work.failures, work.replacements);
            assert!(work.legacy.is_empty());
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
