//! Rotate, emergency and resume: the persisted job and its state machine.

use super::*;

impl Rotator {
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

    pub(super) async fn save(&self, job: &mut RotationJob, lease: &Lease, run: &Instant, ms_before: u64) -> Result<()> {
        job.updated_at = self.kw.now();
        job.active_ms = ms_before + u64::try_from(run.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.kw.store().save_job(job, lease).await
    }

    pub(super) async fn drive(
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

    pub(super) async fn retire_compromised(
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
}
