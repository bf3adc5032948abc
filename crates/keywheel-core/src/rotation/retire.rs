//! Guarded retirement: a version is disabled, and its material destroyed,
//! only when nothing uses it.

use super::*;

/// How [`Rotator::retire_with`] retires a version.
///
/// ```
/// let options = keywheel_core::RetireOptions::forced("key leaked in a log").now();
/// assert!(options.destroy_now);
/// assert_eq!(options.force.as_deref(), Some("key leaked in a log"));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetireOptions {
    /// Skip every check, with this reason (audited as a forced retirement).
    pub force: Option<String>,
    /// Destroy the material at once instead of after the policy's quarantine
    /// (irreversible); for a version already Disabled, destroy it now.
    pub destroy_now: bool,
}

impl RetireOptions {
    /// Guarded, with the quarantine: the default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forced with `reason`.
    pub fn forced(reason: impl Into<String>) -> Self {
        RetireOptions { force: Some(reason.into()), destroy_now: false }
    }

    /// Destroy the material at once (no quarantine).
    pub fn now(mut self) -> Self {
        self.destroy_now = true;
        self
    }
}

impl Rotator {
    /// Retire a Deprecated version: it becomes Disabled (decryption refused,
    /// material kept wrapped) and its material is destroyed when the
    /// policy's [`quarantine`](Policy::quarantine) ends — at once with a zero
    /// quarantine; see [`retire_with`](Self::retire_with) to destroy at once.
    /// Inside the quarantine [`Keywheel::enable`] undoes it. Without `force`
    /// it is refused, with a `RetirementRefused` audit event, unless every
    /// check passes:
    ///
    /// * [`Error::GracePeriodNotOver`] before `deprecated_at + grace_period`
    ///   (waived for a version flagged compromised);
    /// * [`Error::RetirementUnproven`] when no registered record source covers
    ///   the keyring ([`RecordSource::covers`]): nothing could prove the
    ///   version unused;
    /// * [`Error::RetirementRefused`] (carrying the count) while any value uses
    ///   it or the last job listed failures on it. For a compromised version
    ///   only *decryptable* values count: values that fail to decrypt under it
    ///   are forgeries or damage and never hold its destruction back.
    ///
    /// Keyrings whose policy lets old values expire (sessions) need neither
    /// sources nor census. `force` skips every check with a reason, audited
    /// as a forced retirement.
    ///
    /// The checks are made at this (disabling) step; destroying a Disabled
    /// version later needs none. Runs under the keyring's lease, so it never
    /// races a rotation ([`Error::RotationInProgress`] while one runs).
    pub async fn retire(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        force: Option<&str>,
    ) -> Result<KeyringRecord> {
        let options = RetireOptions { force: force.map(str::to_owned), destroy_now: false };
        self.retire_with(id, version, policy, &options).await
    }

    /// [`retire`](Self::retire) with options: forced with a reason, and/or
    /// destroying the material at once ([`RetireOptions::now`]). A version
    /// already Disabled is destroyed with `destroy_now` (its checks were made
    /// when it was disabled) and left to its quarantine without.
    pub async fn retire_with(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        options: &RetireOptions,
    ) -> Result<KeyringRecord> {
        crate::observability::lifecycle("retire", Some(id), Some(version), async {
            let force = options.force.as_deref();
            if force.is_some_and(|reason| reason.trim().is_empty()) {
                return Err(Error::ReasonRequired("retirement"));
            }
            let lease = self.lease(id, &RotateOptions::default()).await?;
            let result = self.retire_leased(id, version, policy, force, true, None, options.destroy_now).await;
            self.finish_lease(&lease).await;
            result
        })
        .await
    }

    /// [`retire`](Self::retire) without force, auditing a refusal only when
    /// `audit_refusal` (the scheduler audits each refusal once, not every tick).
    pub(crate) async fn retire_checked(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        audit_refusal: bool,
    ) -> Result<KeyringRecord> {
        crate::observability::lifecycle("retire", Some(id), Some(version), async {
            let lease = self.lease(id, &RotateOptions::default()).await?;
            let result = self.retire_leased(id, version, policy, None, audit_refusal, None, false).await;
            self.finish_lease(&lease).await;
            result
        })
        .await
    }

    /// The checks and the retirement, under a lease the caller holds.
    /// `emergency`: the reason of the emergency that flagged the version; the
    /// retirement is then audited as forced with it (the grace period is
    /// waived) and skips the quarantine: a compromised key's material is
    /// destroyed as soon as nothing decryptable uses it. `destroy_now`: no
    /// quarantine either.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn retire_leased(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        policy: &Policy,
        force: Option<&str>,
        audit_refusal: bool,
        emergency: Option<&str>,
        destroy_now: bool,
    ) -> Result<KeyringRecord> {
        let refuse = |remaining: u64, reason: String| async move {
            if audit_refusal { self.refuse_retirement(id, version, remaining, &reason).await } else { Ok(()) }
        };
        if let Some(reason) = force {
            return self.kw.retire_now(id, version, Some(reason), true, destroy_now).await;
        }
        let record = self.kw.record(id).await?;
        let v = record.version(version).ok_or(Error::VersionNotFound { keyring: id.clone(), version })?;
        if v.state == KeyState::Disabled {
            // Checked when it was disabled; nothing encrypts under it since.
            return match emergency {
                Some(reason) => {
                    self.kw.retire_now(id, version, Some(&format!("emergency: {reason}")), true, true).await
                }
                None => self.kw.retire_now(id, version, None, false, destroy_now).await,
            };
        }
        v.state.check_transition(version, KeyState::Disabled)?;
        let needs_census = policy.after_rotation == AfterRotation::Reencrypt || v.compromised;
        if needs_census && !self.covers(id) {
            refuse(0, "no registered record source covers this keyring".into()).await?;
            return Err(Error::RetirementUnproven { keyring: id.clone(), version });
        }
        if let Some(since) = v.deprecated_at.filter(|_| !v.compromised) {
            let until = since.plus(policy.grace_period);
            if self.kw.now() < until {
                refuse(0, format!("grace period ends at {until}")).await?;
                return Err(Error::GracePeriodNotOver { version, until });
            }
        }
        if needs_census {
            let remaining = if v.compromised {
                self.decryptable_on(id, version).await?.unwrap_or(0)
            } else {
                let in_use = self.census(Some(id)).await?.count(id, version);
                let failed = self
                    .kw
                    .store()
                    .list_jobs(id)
                    .await?
                    .last()
                    .map_or(0, |j| j.failures.iter().filter(|f| f.version == Some(version)).count() as u64);
                in_use.max(failed)
            };
            if remaining > 0 {
                refuse(remaining, "values still use the version".into()).await?;
                return Err(Error::RetirementRefused { version, remaining });
            }
        }
        match emergency {
            Some(reason) => self.kw.retire_now(id, version, Some(&format!("emergency: {reason}")), true, true).await,
            None => self.kw.retire_now(id, version, None, false, destroy_now).await,
        }
    }

    /// Audit a refused retirement (outcome `Refused`, with `reason`).
    pub(super) async fn refuse_retirement(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        remaining: u64,
        reason: &str,
    ) -> Result<()> {
        let mut e = self.kw.event(Some(id), AuditKind::RetirementRefused { version, remaining }, &correlation_id()?);
        e.outcome = crate::Outcome::Refused;
        e.reason = Some(reason.to_owned());
        self.kw.record_all(&[e]).await
    }

    /// How many values on `version` still decrypt, across the registered
    /// sources; `None` when no source covers the keyring (nothing can be
    /// counted). A census finds the candidates first, so a version nothing
    /// uses costs no scan.
    pub(super) async fn decryptable_on(&self, id: &KeyringId, version: KeyVersion) -> Result<Option<u64>> {
        if !self.covers(id) {
            return Ok(None);
        }
        if self.census(Some(id)).await?.count(id, version) == 0 {
            return Ok(Some(0));
        }
        let ring = self.kw.refresh(id).await?;
        let mut decryptable = 0;
        for source in &self.sources {
            let mut request = ScanRequest {
                after: None,
                limit: 1000,
                keyring: Some(id.clone()),
                skip_version: ring.active_version(),
            };
            loop {
                let batch = source.scan(&request).await?;
                let Some(last) = batch.last() else { break };
                request.after = Some(crate::source::advanced(source.as_ref(), &request, last)?);
                decryptable += batch
                    .iter()
                    .filter(|v| &v.keyring == id && crate::version_of(&v.value).ok() == Some(version))
                    .filter(|v| ring.decrypt(&v.value, &v.context).is_ok())
                    .count() as u64;
            }
        }
        Ok(Some(decryptable))
    }
}
