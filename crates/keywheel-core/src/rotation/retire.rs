//! Guarded retirement: a version's material is destroyed only when nothing uses it.

use super::*;

impl Rotator {
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

    pub(super) async fn retire_unchecked(
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
}
