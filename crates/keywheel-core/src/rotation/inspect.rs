//! Read-only operations: census, verify and dry run.

use super::*;

impl Rotator {
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
