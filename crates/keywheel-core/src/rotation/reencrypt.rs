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

/// Decrypt and re-encrypt the values of one batch that belong to `id` and are
/// not on `to`, all in one batch call of the keyring (one fork check and one
/// usage-counter update per batch, see [`Keyring::reencrypt_many`]), with
/// their blind index tags recomputed under `to` from the same plaintext (a
/// value already on `to` whose tag is not, or is empty, gets its tag alone).
/// Returns counts (processed, failed), failures and replacements.
pub(super) fn reencrypt_values(
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
                fail(&mut counts, v, &error);
            }
            return (counts, failures, Vec::new());
        }
    };
    let mut errors = done.errors.into_iter().peekable();
    let mut skipped = done.skipped.into_iter().peekable();
    let mut tags = done.tags.into_iter().peekable();
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
    (counts, failures, replacements)
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
