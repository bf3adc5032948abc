//! Read-only operations: census, verify and dry run.

use super::*;

impl Rotator {
    /// Census of values per keyring and version across all sources (one keyring if given).
    pub async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        crate::census_of(&self.sources, keyring).await
    }

    /// Check that every value of a keyring is on its Active version.
    pub async fn verify(&self, id: &KeyringId) -> Result<VerifyReport> {
        let record = self.kw.record(id).await?;
        let census = self.census(Some(id)).await?;
        let per_version = census.counts.get(id).cloned().unwrap_or_default();
        Ok(VerifyReport::new(&record, per_version, census.unparseable))
    }

    /// Dry run of a rotation: reads every value that a rotation would move,
    /// decrypts it and re-encrypts it in memory under a throwaway version, and
    /// reports the same counts and failures. Writes nothing, changes no state,
    /// records no audit event.
    pub async fn dry_run(&self, id: &KeyringId, opts: &RotateOptions) -> Result<RotationReport> {
        let started = Instant::now();
        let record = self.kw.record(id).await?;
        record.check_not_erased()?;
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
                let (counts, mut failures, _) = reencrypt_values(&ring, id, to, source.name(), batch);
                for f in &mut failures {
                    f.location = source.locate(&f.cursor);
                }
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
    pub(super) async fn dry_run_keyring(&self, record: &KeyringRecord) -> Result<Keyring> {
        let mut current = record.clone();
        for v in current.versions.iter_mut().filter(|v| v.state == KeyState::Active) {
            v.state = KeyState::Deprecated;
        }
        let mut builder = self.kw.unwrapped(&current).await?;
        builder.push(KeyState::Active, record.algorithm, Some(KeyMaterial::generate()?));
        builder.build()
    }
}
