//! Read-only operations: census, verify and dry run.

use super::*;

impl Rotator {
    /// Census of values per keyring and version across all sources (one keyring if given).
    /// Every census taken here is published in the `keywheel_census_values`
    /// gauge (the [manual](crate::manual#15-observability-tracing-and-metrics)).
    pub async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        let census = crate::census_of(&self.sources, keyring).await?;
        crate::observability::census_taken(&census, keyring);
        Ok(census)
    }

    /// Check that every value of a keyring is on its Active version. Values
    /// that are not keywheel are counted per legacy format of their column
    /// ([`VerifyReport::legacy`], through [`legacy_census`](Self::legacy_census),
    /// taken only when the census finds such values); they keep the keyring
    /// from being verified until a rotation has migrated them.
    pub async fn verify(&self, id: &KeyringId) -> Result<VerifyReport> {
        let record = self.kw.record(id).await?;
        let census = self.census(Some(id)).await?;
        let per_version = census.counts.get(id).cloned().unwrap_or_default();
        let report = VerifyReport::new(&record, per_version, census.unparseable);
        if census.unparseable == 0 {
            return Ok(report);
        }
        Ok(report.with_legacy(&self.legacy_census(Some(id)).await?))
    }

    /// The values of the registered sources (of `keyring` only, if given)
    /// counted by kind: keywheel (or looking like it), per legacy format
    /// declared for their column ([`RecordSource::legacy_formats`]), or
    /// unrecognised. A full scan of every source (no key needed, nothing
    /// decrypted): what a migration still has to do, and, once no legacy
    /// value is left, the proof that the legacy key material can go (the
    /// [migration of legacy data](crate::manual#14-migrating-legacy-data)).
    pub async fn legacy_census(&self, keyring: Option<&KeyringId>) -> Result<LegacyCensus> {
        crate::legacy_census_of(&self.sources, keyring).await
    }

    /// Dry run of a rotation: reads every value that a rotation would move,
    /// decrypts it and re-encrypts it in memory under a throwaway version, and
    /// reports the same counts and failures (legacy values per format
    /// included). Writes nothing, changes no state, records no audit event.
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
                let plan = LegacyPlan::of(source.as_ref(), id, &batch);
                let plan = plan.awaited(&batch, self.kw.now()).await;
                let work = reencrypt_values(&ring, id, to, source.name(), batch, plan, self.kw.now());
                let (counts, mut failures) = (work.counts, work.failures);
                for (format, n) in work.legacy {
                    *job.legacy.entry(format).or_default() += n as u64;
                }
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
        // A dry run encrypts under a throwaway version: nothing to count.
        builder.unmetered();
        builder.build()
    }
}
