//! Rollback: undo of the most recent rotation inside its window.

use super::*;

impl Rotator {
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
}
