//! Rotate, emergency and resume: the persisted job and its state machine.

use super::*;

impl Rotator {
    /// Rotate: store the next version as Pending, wait the policy's activation
    /// delay, activate it, re-encrypt every source, verify by census, complete.
    ///
    /// Errors: [`Error::RotationInProgress`] if a rotator holds the keyring's
    /// lease or an unfinished job exists (resume it instead); a refusal writes
    /// nothing (no lease is taken, no expiry moved).
    pub async fn rotate(&self, id: &KeyringId, policy: &Policy, opts: &RotateOptions) -> Result<RotationReport> {
        crate::observability::lifecycle("rotate", Some(id), None, self.start(id, policy, opts, JobKind::Rotation)).await
    }

    /// Emergency rotation away from the current Active version, flagged as
    /// compromised in the same atomic update that activates its successor (so
    /// it can never be Active again): no activation delay, immediate
    /// re-encryption, then a wait until no instance can still encrypt under
    /// the compromised version ([`RotateOptions::emergency_settle`], the
    /// refresh interval by default) and a final sweep. The compromised version
    /// is retired (grace period waived, audited as forced with `reason`), its
    /// material destroyed at once without a quarantine, as soon
    /// as no *decryptable* value uses it: values that fail to decrypt (forgeries
    /// under the leaked key, corrupt values) are listed in the job's failures
    /// and never hold it back. If values remain, the scheduler retries.
    pub async fn emergency(&self, id: &KeyringId, reason: &str, opts: &RotateOptions) -> Result<RotationReport> {
        crate::observability::lifecycle("emergency_rotate", Some(id), None, async {
            if reason.trim().is_empty() {
                return Err(Error::ReasonRequired("emergency rotation"));
            }
            let record = self.kw.record(id).await?;
            record.check_not_erased()?;
            let compromised = record.active_version().ok_or_else(|| Error::NoActiveVersion { keyring: id.clone() })?;
            let policy = Policy { activation_delay: Duration::ZERO, ..self.kw.policy(id).await? };
            self.start(id, &policy, opts, JobKind::Emergency { compromised, reason: reason.to_owned() }).await
        })
        .await
    }

    async fn start(
        &self,
        id: &KeyringId,
        policy: &Policy,
        opts: &RotateOptions,
        kind: JobKind,
    ) -> Result<RotationReport> {
        // Refused before anything is written: an unfinished job is resumed, not
        // doubled, and the hint says whether someone is running it.
        if let Some(job) = self.unfinished_job(id).await? {
            return Err(self.unfinished_refusal(id, &job).await?);
        }
        let lease = self.lease(id, opts).await?;
        let result = async {
            if let Some(job) = self.unfinished_job(id).await? {
                return Err(self.unfinished_refusal(id, &job).await?);
            }
            let record = self.kw.record(id).await?;
            record.check_not_erased()?;
            let expected = match &kind {
                JobKind::Emergency { compromised, .. } => Some(*compromised),
                _ => opts.expected_active,
            };
            if let Some(expected) = expected
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
            self.drive(&mut job, policy, opts, &lease, false).await
        }
        .await;
        self.finish_lease(&lease).await;
        result
    }

    /// The refusal for an unfinished `job`: running (its lease is live) or
    /// stalled (resume it).
    async fn unfinished_refusal(&self, id: &KeyringId, job: &RotationJob) -> Result<Error> {
        let now = self.kw.now();
        let (detail, running) = match self.kw.store().load_lease(id).await? {
            Some(lease) if lease.expires_at > now => (
                format!(
                    "job {} is running ({:?}) under the lease of {} until {}",
                    job.id, job.phase, lease.holder, lease.expires_at
                ),
                true,
            ),
            _ => (format!("job {} is unfinished ({:?}) and nobody holds its lease", job.id, job.phase), false),
        };
        Ok(Error::RotationInProgress { keyring: id.clone(), detail, running })
    }

    /// Continue the unfinished (or cancelled) job of a keyring from its
    /// checkpoint. `Ok(None)` if there is nothing to resume (nothing is
    /// written then). A job whose lease is live is running somewhere: refused
    /// with [`Error::RotationInProgress`], its lease untouched; the job of an
    /// erased keyring is never resumed ([`Error::KeyringErased`]).
    pub async fn resume(&self, id: &KeyringId, opts: &RotateOptions) -> Result<Option<RotationReport>> {
        crate::observability::lifecycle("resume", Some(id), None, async {
            if self.unfinished_job(id).await?.is_none() {
                return Ok(None);
            }
            // An erased keyring encrypts nothing: re-encrypting under it would only fail value by value.
            self.kw.record(id).await?.check_not_erased()?;
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
                self.drive(&mut job, &policy, opts, &lease, true).await.map(Some)
            }
            .await;
            self.finish_lease(&lease).await;
            result
        })
        .await
    }

    pub(super) async fn save(&self, job: &mut RotationJob, lease: &Lease, run: &Instant, ms_before: u64) -> Result<()> {
        job.updated_at = self.kw.now();
        job.active_ms = ms_before + u64::try_from(run.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.kw.store().save_job(job, lease).await
    }

    /// Run `job` from its stored phase to the end. `resumed`: a run of this
    /// job may have crashed, so a step's audit events that are already in the
    /// trail are not recorded again.
    pub(super) async fn drive(
        &self,
        job: &mut RotationJob,
        policy: &Policy,
        opts: &RotateOptions,
        lease: &Lease,
        resumed: bool,
    ) -> Result<RotationReport> {
        let run = Instant::now();
        let ms_before = job.active_ms;
        let id = job.keyring.clone();
        let mut lease = lease.clone();
        let mut verify_passes = 0;
        let to = job.to.ok_or_else(|| Error::InvalidArgument(format!("job {} has no target version", job.id)))?;
        let span = crate::observability::job_span(job, resumed);
        let outcome: Result<()> = async {
            if job.phase.is_finished() {
                // Resumed after a crash between "finished" and its audit event.
                return self.finish(job, &lease).await;
            }
            loop {
                match job.phase {
                    JobPhase::Prepare => {
                        let record = self.kw.record(&id).await?;
                        if record.version(to).is_none() {
                            if record.next_version()? != to {
                                return Err(Error::RotationInProgress {
                                    keyring: id.clone(),
                                    detail: format!("another version was added while job {} prepared {to}", job.id),
                                    running: false,
                                });
                            }
                            self.kw.add_version_for(&id, &job.id, resumed).await?;
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
                            self.wait(until.since(now), opts, &mut lease).await?;
                            continue;
                        }
                        job.phase = JobPhase::Activate;
                    }
                    JobPhase::Activate => {
                        let record = self.kw.record(&id).await?;
                        if record.active_version() != Some(to) {
                            // An emergency flags the old version in the activation's
                            // own update: it is never Active while flagged, and never again.
                            let flag: Vec<KeyringChange> = match &job.kind {
                                JobKind::Emergency { compromised, .. } if *compromised != to => {
                                    vec![KeyringChange::MarkCompromised { version: *compromised }]
                                }
                                _ => Vec::new(),
                            };
                            self.kw.activate_with(&id, to, &flag, &job.id, resumed).await?;
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
                        if let Some(until) = self.emergency_settled_at(job, to, opts).await?
                            && self.kw.now() < until
                        {
                            // Instances may still encrypt under the compromised version
                            // until their snapshots expire: wait that out, then sweep
                            // again so the final census sees everything they wrote.
                            // (`wait` returns once the clock has passed `until`.)
                            self.wait(until.since(self.kw.now()), opts, &mut lease).await?;
                            job.sources = self.checkpoints();
                            job.phase = JobPhase::Reencrypt;
                            self.save(job, &lease, &run, ms_before).await?;
                            continue;
                        }
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
                    // Saved as finished with its completion event pending, then
                    // audited, then saved again: after a crash anywhere in
                    // between, `finish` records the event exactly once.
                    job.completion_pending = true;
                    job.active_ms = ms_before + u64::try_from(run.elapsed().as_millis()).unwrap_or(u64::MAX);
                }
                self.save(job, &lease, &run, ms_before).await?;
                if job.phase.is_finished() {
                    self.finish(job, &lease).await?;
                }
            }
        }
        .instrument(span.clone())
        .await;
        crate::observability::job_finished(&span, job, &outcome);
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

    /// Record the completion event of a finished job exactly once (looking in
    /// the audit trail when a crash may have recorded it already), then retire
    /// an emergency's compromised version if nothing decryptable uses it.
    async fn finish(&self, job: &mut RotationJob, lease: &Lease) -> Result<()> {
        if job.completion_pending {
            let c = job.counts;
            let done = AuditKind::RotationCompleted {
                job_id: job.id.clone(),
                processed: c.processed,
                rewritten: c.rewritten,
                skipped: c.skipped,
                failed: c.failed,
                duration_ms: job.active_ms,
            };
            let job_id = job.id.clone();
            let already = self
                .kw
                .recorded(
                    &job.id,
                    |kind| matches!(kind, AuditKind::RotationCompleted { job_id: j, .. } if *j == job_id),
                )
                .await?;
            if !already {
                self.kw.record_all(&[self.kw.event(Some(&job.keyring), done, &job.id)]).await?;
            }
            job.completion_pending = false;
            job.updated_at = self.kw.now();
            self.kw.store().save_job(job, lease).await?;
        }
        if let (JobKind::Emergency { compromised, reason }, Some(to)) = (&job.kind, job.to)
            && *compromised != to
        {
            self.retire_compromised(&job.keyring, *compromised, reason).await?;
        }
        Ok(())
    }

    /// When an emergency job may take its final census: the bound after the
    /// activation past which no instance encrypts under the compromised version.
    /// `None` for other jobs (and before the activation).
    async fn emergency_settled_at(
        &self,
        job: &RotationJob,
        to: KeyVersion,
        opts: &RotateOptions,
    ) -> Result<Option<crate::Timestamp>> {
        if !matches!(job.kind, JobKind::Emergency { .. }) {
            return Ok(None);
        }
        let record = self.kw.record(&job.keyring).await?;
        let activated = record.version(to).and_then(|v| v.activated_at);
        Ok(activated.map(|at| at.plus(opts.emergency_settle.unwrap_or_else(|| self.kw.stale_snapshot_bound()))))
    }

    /// Wait `duration` on the facade's clock ([`Clock::sleep`](crate::Clock::sleep)),
    /// renewing the lease on the way so a long wait (an activation delay, an
    /// emergency's settle time) never loses it.
    async fn wait(&self, duration: Duration, opts: &RotateOptions, lease: &mut Lease) -> Result<()> {
        let step = (opts.lease_ttl / 3).max(Duration::from_millis(10));
        let end = self.kw.now().plus(duration);
        loop {
            let now = self.kw.now();
            if now >= end {
                return Ok(());
            }
            self.kw.clock().sleep(end.since(now).min(step)).await;
            *lease = self.kw.store().renew_lease(lease, opts.lease_ttl, self.kw.now()).await?;
        }
    }

    /// Retire a compromised version (grace waived, forced, audited with the
    /// emergency's reason) once no decryptable value uses it. Values that fail
    /// to decrypt do not hold it back; a keyring that no registered source
    /// covers keeps it (nothing proves it unused) and the refusal is audited.
    pub(super) async fn retire_compromised(&self, id: &KeyringId, compromised: KeyVersion, reason: &str) -> Result<()> {
        let policy = self.kw.policy(id).await?;
        match self.retire_leased(id, compromised, &policy, None, true, Some(reason), true).await {
            // Refused (audited) or retired already: the scheduler retries what is left.
            Ok(_)
            | Err(
                Error::RetirementUnproven { .. } | Error::RetirementRefused { .. } | Error::IllegalTransition { .. },
            ) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
