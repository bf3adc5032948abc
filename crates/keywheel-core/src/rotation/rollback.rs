//! Rollback: undo of the most recent rotation inside its window.

use super::*;

impl Rotator {
    /// Undo the most recent rotation inside the policy's rollback window
    /// (counted from that rotation's activation): the version the Active one
    /// replaced becomes Active again and the current one Deprecated (nothing
    /// becomes unreadable). Once only: a second rollback is refused
    /// ([`Error::RollbackRefused`]: rotate to move forward), and so is a return
    /// to a version flagged compromised ([`Error::CompromisedVersion`]); see
    /// [`KeyringRecord::rollback_target`]. An unfinished rotation job of the
    /// keyring is ended (marked finished and not resumed). With `reencrypt`,
    /// values are then re-encrypted back to the re-activated version.
    pub async fn rollback(
        &self,
        id: &KeyringId,
        policy: &Policy,
        reason: Option<&str>,
        reencrypt: bool,
        opts: &RotateOptions,
    ) -> Result<RollbackReport> {
        crate::observability::lifecycle("rollback", Some(id), None, async {
            let lease = self.lease(id, opts).await?;
            let result = async {
                let record = self.kw.record(id).await?;
                let (from, to) = record.rollback_target()?;
                let activated_at = record.version(from).and_then(|v| v.activated_at).unwrap_or(record.created_at);
                let closes = activated_at.plus(policy.rollback_window);
                if self.kw.now() > closes {
                    return Err(Error::RollbackWindowClosed { keyring: id.clone(), closed_at: closes });
                }
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
                    Some(self.drive(&mut job, policy, opts, &lease, false).await?)
                } else {
                    None
                };
                Ok(RollbackReport { from, to, reencrypt })
            }
            .await;
            self.finish_lease(&lease).await;
            result
        })
        .await
    }
}
